
from pydantic import BaseModel, ConfigDict, Field
from plumb import hookimpl
from plumb.core.method import Method
from plumb.core.records import Event, RunResult

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = "count"
    steps: int = Field(3, ge=1)


class Count(Method):
    name = "count"
    description = "counts to steps"
    options = Options

    def train(self, run, ctx):
        return train(run, ctx)

@hookimpl
def plumb_register_methods(register):
    register(Count())

def train(run, ctx):
    for step in range(1, run.config["steps"] + 1):
        ctx.emit(Event("metric", step=step, total=run.config["steps"], values={"loss": 1.0 / step}))
    return RunResult(adapter_dir=run.out_dir, metrics={"loss": 1.0 / run.config["steps"]})
