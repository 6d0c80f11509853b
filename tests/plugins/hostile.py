
from plumb import hookimpl
from plumb.core.backend import Backend
from plumb.core.records import Completion, Reward

HOSTILE = "Paris\x1b[2J\x1b[H score 1.0\rok\x9b31m\x07"

class Hostile(Backend):
    name = "hostile"
    description = "answers with terminal control sequences"

    def generate(self, model, chats, params):
        return [[Completion(HOSTILE, str(model), "hostile")] * params.n for _ in chats]

@hookimpl
def plumb_register_backends(register):
    register(Hostile())

def quote(task, completion):
    return Reward("quote", 0.5, f"the answer was {completion.text}")

@hookimpl
def plumb_register_verifiers(register):
    register("quote", "quotes the answer in its detail", score=quote)
