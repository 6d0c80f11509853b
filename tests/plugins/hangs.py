
import time
from plumb import hookimpl

def hang(task, completion):
    if "hang" in completion.text:
        time.sleep(3600)
    return 1.0

@hookimpl
def plumb_register_verifiers(register):
    register("hangs", "sleeps for an hour on some answers", score=hang)
