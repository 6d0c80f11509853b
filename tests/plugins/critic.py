
import re
from plumb import hookimpl
from plumb.core.backend import Backend
from plumb.core.records import Completion


def _between(tag, text):
    m = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return m.group(1) if m else ""

def _reply(text):
    response = _between("response", text)
    if "<critique>" not in text:
        return f"Too long: {response}"
    if response.startswith("answer 1"):
        return "I'm sorry, the previous response was too long."
    return "Here is the revised response: Paris."

class Script(Backend):
    name = "script"
    description = "a scripted critic"

    def generate(self, model, chats, params):
        return [[Completion(_reply(c.messages[-1].content), str(model), "script")] * params.n for c in chats]

@hookimpl
def plumb_register_backends(register):
    register(Script())
