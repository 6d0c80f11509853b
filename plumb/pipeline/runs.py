"""One run lifecycle for every caller: start -> optimize -> finish.

    with run_lifecycle(store, "dpo", config, out_dir, prov) as run:
        result = optimize(...)          # metrics stream into the store meanwhile
        run.finish(result.metrics, result.artifacts)

The run row is written at the start (status ``running``, owned by this
process) and closed exactly once: ``done`` with the final metrics and artifacts
when the block finishes, ``interrupted`` on Ctrl-C or a cancel, ``failed`` with
the error text on any other exception (which is re-raised); a stopped run names
its last checkpoint. ``resume=(run_id, step)`` continues an earlier run in the
same row instead (its metrics after ``step`` are dropped: they are trained again).

Who closes a run whose processes die (see ``plumb.core.owner``):

* the training child dies, the parent lives: the parent marks it ``failed``;
* the parent dies, the child lives: the kernel sends the child SIGTERM; it
  checkpoints at its next step and marks the run ``interrupted`` itself
  (``plumb.pipeline.child``);
* both die (or training ran in the parent): the next process that opens the
  workspace finds neither owner alive and marks it ``interrupted``
  (``Store.reap_runs``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from plumb.core.checkpoints import latest as latest_checkpoint
from plumb.core.context import Cancelled
from plumb.core.store import Provenance, Store


class Interrupted(Exception):
    """A run that stopped on a user's request (a child that exited on SIGINT/SIGTERM)."""


@dataclass
class RunHandle:
    run_id: int
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)

    def finish(self, metrics: dict[str, float], artifacts: list[tuple[str, str]] = ()) -> None:
        self.metrics = dict(metrics)
        self.artifacts = list(artifacts)


@contextmanager
def run_lifecycle(store: Store, method: str, config: dict[str, Any], out_dir: str,
                  prov: Provenance, resume: tuple[int, int] | None = None) -> Iterator[RunHandle]:
    if resume is not None:
        store.resume_run(*resume)
        handle = RunHandle(resume[0])
    else:
        handle = RunHandle(store.start_run(method, config, out_dir, prov))
    try:
        yield handle
    except (KeyboardInterrupt, Cancelled, Interrupted) as exc:
        store.finish_run(handle.run_id, "interrupted", str(exc) or "interrupted by the user",
                         checkpoint=_last(out_dir))
        raise
    except BaseException as exc:
        store.finish_run(handle.run_id, "failed", str(exc) or type(exc).__name__, checkpoint=_last(out_dir))
        raise
    with store.transaction():
        for kind, path in handle.artifacts:
            store.add_artifact(kind, path, handle.run_id)
        store.finish_run(handle.run_id, "done", metrics=handle.metrics)


def _last(out_dir: str) -> str | None:
    last = latest_checkpoint(out_dir)
    return str(last) if last else None
