
import time
from typing import ClassVar
from pydantic import BaseModel, ConfigDict, Field
from plumb import hookimpl
from plumb.core.records import Event, RunResult

class TaskyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    DATA: ClassVar[str] = "tasks"
    method: str = "tasky"
    steps: int = Field(4, ge=1)
    rewards: dict[str, float] = Field(default_factory=dict)
    checks: list = Field(default_factory=list)

@hookimpl
def plumb_register_methods(register):
    register("tasky", "a GRPO-shaped method: tasks, reward weights, a step every 0.3 s", options=TaskyConfig)

@hookimpl
def plumb_optimize(ctx, method, run):
    if method != "tasky":
        return None
    total = run.config["steps"]
    ctx.emit(Event("log", run.run_id, message=f"{len(run.data)} tasks; rewards {run.config['rewards']}"))
    for step in range(1, total + 1):
        time.sleep(0.3)
        ctx.emit(Event("metric", run.run_id, step, total, values={"loss": 0.1 * step, "reward": 0.2 * step,
                                                                   "kl": 0.01 * step, "reward_std": 0.5}))
    return RunResult(run.out_dir, {"reward": 0.2 * total})
