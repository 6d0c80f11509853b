
import re
from plumb import hookimpl
from plumb.core.records import Completion

@hookimpl
def plumb_register_backends(register):
    register("script", "a scripted critic")

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

@hookimpl
def plumb_generate(model, chats, params):
    if model.backend != "script":
        return None
    return [[Completion(_reply(c.messages[-1].content), str(model), "script")] * params.n for c in chats]
