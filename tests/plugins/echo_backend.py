"""A backend that answers with the prompt reversed (the TUI generate test)."""
from plumb import hookimpl
from plumb.core.records import Completion

@hookimpl
def plumb_register_backends(register):
    register("echo", "the prompt reversed")

@hookimpl
def plumb_generate(model, chats, params):
    if model.backend != "echo":
        return None
    return [[Completion(f"{c.last_user[::-1]} #{i}", str(model), "echo") for i in range(params.n)] for c in chats]
