
import time
from plumb import hookimpl
from plumb.core.records import Event, RunResult

@hookimpl
def plumb_register_methods(register):
    register("slow", "a step every 50 ms until stopped")

@hookimpl
def plumb_optimize(ctx, method, run):
    if method != "slow":
        return None
    for step in range(1, 100_000):
        ctx.emit(Event("metric", step=step, values={"loss": 1.0 / step}))
        print(f"slow step {step}", flush=True)
        ctx.check_cancelled()
        time.sleep(0.05)
