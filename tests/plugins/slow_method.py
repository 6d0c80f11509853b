
import os, time
from plumb import hookimpl
from plumb.core.method import Method
from plumb.core.records import Event, RunResult


class Slow(Method):
    name = "slow"
    description = "a step every 50 ms until cancelled; dies on demand"

    def train(self, run, ctx):
        return train(run, ctx)

@hookimpl
def plumb_register_methods(register):
    register(Slow())

def train(run, ctx):
    for step in range(1, 10_000):
        if step == 1 or not run.config.get("quiet"):  # quiet: a long stretch with nothing to report
            ctx.emit(Event("metric", step=step, values={"loss": 1.0}))
        if run.config.get("die_at") == step:
            print("about to die", flush=True)
            os.kill(os.getpid(), 9)
        if run.config.get("exit_at") == step:
            os._exit(0)
        if ctx.cancelled():
            from plumb.core.context import Cancelled
            raise Cancelled(f"stopped at step {step}")
        if step == run.config.get("steps", 10_000):
            return RunResult(adapter_dir=run.out_dir, metrics={"loss": 1.0})
        time.sleep(0.05)
