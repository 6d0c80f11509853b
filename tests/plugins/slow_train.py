
import time
from plumb import hookimpl
from plumb.core.method import Method
from plumb.core.records import Event, RunResult


class Slow(Method):
    name = "slow"
    description = "a step every 50 ms until stopped"

    def train(self, run, ctx):
        return train(run, ctx)

@hookimpl
def plumb_register_methods(register):
    register(Slow())

def train(run, ctx):
    for step in range(1, 100_000):
        ctx.emit(Event("metric", step=step, values={"loss": 1.0 / step}))
        print(f"slow step {step}", flush=True)
        ctx.check_cancelled()
        time.sleep(0.05)
