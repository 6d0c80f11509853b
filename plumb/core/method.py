"""What a training method is: an object registered under its name.

A plugin hands plumb an instance in ``plumb_register_methods``
(``register(MyMethod())``). The train stage asks it everything it needs and
never switches on a method's name:

- ``options``: a pydantic model of its settings (checked before any model loads);
- ``data``: the shape of the rows it trains on (``DATA_SHAPES``);
- ``configure`` / ``prepare``: what it adds before a run (options from the stage's
  arguments; then, with the rows read, what the rows and options need);
- ``train(run, ctx)``: the run itself (in the training child by default);
- ``resume`` / ``ingest``: what it does with its own files when a run resumes, and
  after a run however it ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plumb.core.context import HookContext
    from plumb.core.records import RunResult, RunSpec
    from plumb.core.store import Provenance, Store

DATA_SHAPES = {
    "pairs": "judged preference pairs",  # messages, chosen, rejected, p
    "sft": "answers (references, revisions or judged winners)",  # messages, completion
    "labels": "labelled completions",  # messages, completion, label
    "tasks": "tasks",  # messages plus what verifiers need (tests, answer, schema, meta)
}


@dataclass
class Setup:
    """What a method may read while it configures and prepares a run: the hook context (model specs,
    the registry), the person's raw options and ``--reward`` arguments, the constitution (None when the
    run has none, or before it is read), and the workspace's runs directory (earlier runs' outputs)."""

    ctx: "HookContext"
    config: dict[str, Any] = field(default_factory=dict)
    rewards: list[str] = field(default_factory=list)
    constitution: Any = None
    runs_dir: Path = Path("adapters")


class Method:
    name: str = ""
    description: str = ""
    options: Any = None  # a pydantic model of the settings, or None: any options are passed on unchecked
    data: str = "pairs"  # a key of DATA_SHAPES

    def configure(self, config: dict[str, Any], setup: Setup) -> dict[str, Any]:
        """The run's options before they are validated; refuse (PlumbError) what cannot work."""
        return config

    def prepare(self, options: dict[str, Any], rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]],
                setup: Setup) -> None:
        """Before a run, with its validated options and rows read: complete them in place."""

    def train(self, run: "RunSpec", ctx: "HookContext") -> "RunResult":
        """Train and say where the adapter is; report through ``ctx`` and stop when it says cancelled."""
        raise NotImplementedError(f"method {self.name!r} does not train")

    def resume(self, out_dir: str, run_id: int, step: int) -> None:
        """Before run ``run_id`` resumes in ``out_dir`` from its checkpoint at ``step``."""

    def ingest(self, store: "Store", run_id: int, out_dir: str, prov: "Provenance") -> str | None:
        """After the run, however it ended: store what it left in ``out_dir``; a line for the log, or None."""
        return None
