
from plumb import hookimpl
from plumb.core.records import Reward

def boom(task, completion):
    raise RuntimeError("verifier bug")

def half(task, completion):
    return 0.5

@hookimpl
def plumb_register_verifiers(register):
    register("boom", "always raises", score=boom)
    register("half", "always 0.5", score=half)
