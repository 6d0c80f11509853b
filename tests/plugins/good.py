
from plumb import hookimpl
from plumb.core.records import Reward
__version__ = "1.2"

def has_please(task, completion):
    return Reward("has_please", float("please" in completion.text))

@hookimpl
def plumb_register_verifiers(register):
    register("has_please", "1 if the answer says please", score=has_please)
