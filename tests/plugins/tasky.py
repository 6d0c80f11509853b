
import time
from pydantic import BaseModel, ConfigDict, Field
from plumb import hookimpl
from plumb.core.method import Method
from plumb.core.records import Event, RunResult

class TaskyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = "tasky"
    steps: int = Field(4, ge=1)
    rewards: dict[str, float] = Field(default_factory=dict)
    checks: list = Field(default_factory=list)

class Tasky(Method):
    name = "tasky"
    description = "a GRPO-shaped method: tasks, reward weights, a step every 0.3 s"
    options = TaskyConfig
    data = "tasks"

    def configure(self, config, setup):  # the --reward arguments as weights, as GRPO takes them
        from plumb.core.rewards import parse_weights

        return {**config, "rewards": parse_weights(setup.rewards)}

    def train(self, run, ctx):
        return train(run, ctx)

@hookimpl
def plumb_register_methods(register):
    register(Tasky())

def train(run, ctx):
    total = run.config["steps"]
    ctx.emit(Event("log", run.run_id, message=f"{len(run.data)} tasks; rewards {run.config['rewards']}"))
    for step in range(1, total + 1):
        time.sleep(0.3)
        ctx.emit(Event("metric", run.run_id, step, total, values={"loss": 0.1 * step, "reward": 0.2 * step,
                                                                   "kl": 0.01 * step, "reward_std": 0.5}))
    return RunResult(run.out_dir, {"reward": 0.2 * total})
