"""A backend that answers with the prompt reversed (the TUI generate test)."""
from plumb import hookimpl
from plumb.core.backend import Backend
from plumb.core.records import Completion

class Echo(Backend):
    name = "echo"
    description = "the prompt reversed"

    def generate(self, model, chats, params):
        return [[Completion(f"{c.last_user[::-1]} #{i}", str(model), "echo") for i in range(params.n)] for c in chats]

@hookimpl
def plumb_register_backends(register):
    register(Echo())
