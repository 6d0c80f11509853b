
from plumb import hookimpl
from plumb.core.records import Reward

def digits(task, completion):
    t = "".join(completion.text.split())
    return Reward("digits", sum(c.isdigit() for c in t) / max(len(t), 1))

@hookimpl
def plumb_register_verifiers(register):
    register("digits", "fraction of digits", score=digits)
    register("always_one", "1 for everything", score=lambda task, completion: 1.0)
