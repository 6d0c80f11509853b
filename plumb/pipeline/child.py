"""Run an optimizer in a child process that streams its events to the parent.

A crash, an OOM kill or a SIGKILL of the child never takes the caller (the
CLI, the TUI) down: the parent reads the child's events as JSON lines, keeps
the last lines of its stderr, and turns any ending other than a final
``done`` event into an error that names what happened.

Protocol. The parent writes ``OUT/run-spec.json`` ({"run": RunSpec, "plugin_files",
"base_dir", "store"}) and starts ``python -m plumb.pipeline.child OUT/run-spec.json PARENT_PID``.
With a ``store`` (the workspace's database file) the child records itself as the
run's child process and writes the run's metrics there, each step before its
checkpoint (the parent then only shows them).
If the parent dies, the kernel sends the child SIGTERM (Linux), which stops it
like a cancel: at the next step, with a checkpoint. With its parent gone nobody
else will close the run, so the child does: ``interrupted``, naming the
checkpoint (``failed`` if it failed); its output then goes nowhere.
The child moves its own stdout to stderr (so library prints cannot corrupt the
stream), writes one event per line on the original stdout, and ends with a
``done`` event whose message is the RunResult as JSON, or an ``error`` event.
Exit code 0: done; 130: stopped on request (SIGINT, or SIGTERM from the
parent's cancel); anything else: failed.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.events import from_json, to_json
from plumb.core.records import Event, EventSink, RunResult, RunSpec
from plumb.pipeline.runs import Interrupted

STOPPED = 130
TAIL = 20  # stderr lines kept for the error message


def run_in_child(run: RunSpec, sink: EventSink, cancel: threading.Event, plugin_files: list[str],
                 base_dir: str | None, store: str | None = None) -> RunResult:
    """Train ``run`` in a child process; events go to ``sink``; setting ``cancel`` stops it cleanly.
    With ``store`` (a database file) the child writes the run's metrics there itself."""
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "run-spec.json"
    spec_path.write_text(json.dumps({"run": run.to_dict(), "plugin_files": plugin_files, "base_dir": base_dir,
                                     "store": store}))
    proc = subprocess.Popen([sys.executable, "-m", "plumb.pipeline.child", str(spec_path), str(os.getpid())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL)
    drain = threading.Thread(target=lambda: tail.extend(line.rstrip() for line in proc.stderr), daemon=True)
    drain.start()
    watch = threading.Thread(target=_forward_cancel, args=(proc, cancel), daemon=True)
    watch.start()
    result: RunResult | None = None
    error = ""
    try:
        for line in proc.stdout:
            try:
                event = from_json(line)
            except ValueError:
                tail.append(line.rstrip())
                continue
            if event.kind == "done":
                result = RunResult(**json.loads(event.message))
                event.message = ""
            elif event.kind == "error":
                error = event.message
            sink(event)
        code = proc.wait()
    except BaseException:  # Ctrl-C in the parent: the child got it too (same process group); let it stop
        _stop(proc)
        raise
    finally:
        drain.join(timeout=5)  # the cancel watcher ends by itself once the process has
    if code == 0 and result is not None:
        return result
    if code == STOPPED or cancel.is_set():
        raise Interrupted(error or "stopped on request")
    how = (f"was killed by signal {signal.Signals(-code).name}" + (" (out of memory?)" if code == -9 else "")
           if code < 0 else f"exited with code {code}")
    if code == 0:
        how = "exited without a final event"
    raise PlumbError(f"the training process {how}" + (f": {error}" if error else "") +
                     (".\nIts last log lines:\n  " + "\n  ".join(tail) if tail and not error else "."))


def _forward_cancel(proc: subprocess.Popen, cancel: threading.Event) -> None:
    while proc.poll() is None:
        if cancel.wait(0.2):
            proc.send_signal(signal.SIGTERM)
            return


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the child ----------------------------------------------------------------------------


def _stop_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM (a clean stop, with a checkpoint) when the parent dies (Linux);
    a parent that died before this call is noticed at once."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class _Orphan:
    """What the child does once its parent is gone: stop at the next step, write nowhere."""

    def __init__(self, parent: int, cancel: threading.Event) -> None:
        self.parent, self.cancel, self.gone = parent, cancel, False

    def check(self) -> bool:
        if not self.gone and os.getppid() != self.parent:
            self.leave()
        return self.gone

    def leave(self) -> None:
        self.gone = True
        self.cancel.set()
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):  # the pipes to the parent are broken: a print must not end the run
            os.dup2(null, fd)
        os.close(null)


def main(spec_path: str, parent: int) -> int:
    from plumb.core.context import Cancelled, HookContext
    from plumb.core.store import Store

    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed from here on goes to stderr, not into the event stream
    sys.stdout = sys.stderr
    cancel = threading.Event()
    orphan = _Orphan(parent, cancel)
    spec = json.loads(Path(spec_path).read_text())
    run_id = spec["run"].get("run_id")
    store = Store(spec["store"]) if spec.get("store") and run_id is not None else None
    if store is not None:
        from plumb.core.owner import Owner

        store.set_run_child(run_id, Owner.current())

    def emit(event: Event) -> None:
        if store is not None and event.kind == "metric" and event.step is not None and event.values:
            store.log_metrics(run_id, event.step, event.values)
        if orphan.gone:
            return
        try:
            events.write(to_json(event) + "\n")
        except OSError:  # EPIPE: the parent is gone
            orphan.leave()

    def on_term(*_: object) -> None:
        cancel.set()
        orphan.check()

    signal.signal(signal.SIGTERM, on_term)
    _stop_with_parent(parent)
    status, message, code = "interrupted", "", 0
    try:
        from plumb.core.plugins import get_plugin_manager
        from plumb.models.specs import parse_spec

        run = RunSpec.from_dict(spec["run"])
        pm = get_plugin_manager(spec["plugin_files"], base_dir=Path(spec["base_dir"]) if spec["base_dir"] else None)
        ctx = HookContext(pm, emit, cancel, run.run_id, resolve=parse_spec)
        result = pm.registry.check_method(run.method).impl.train(run, ctx)
    except (KeyboardInterrupt, Cancelled) as exc:
        message, code = str(exc) or "stopped on request", STOPPED
        emit(Event("error", run_id=None, message=message))
    except PlumbError as exc:
        status, message, code = "failed", str(exc), 1
        emit(Event("error", message=message))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        status, message, code = "failed", f"unexpected {type(exc).__name__}: {exc}", 1
        emit(Event("error", message=message))
    else:
        message = ("training finished, but the process that started it ended before recording the adapter; "
                   "a rerun records it")
        emit(Event("done", run_id=run.run_id, values=_numbers(result.metrics), message=json.dumps(asdict(result))))
    if store is not None and orphan.check():
        _close_orphaned(store, run_id, spec["run"]["out_dir"], status, message)
    return code


def _close_orphaned(store, run_id: int, out_dir: str, status: str, message: str) -> None:
    """The parent is gone: close the run as this child saw it end, unless another process has taken it
    over since (a rerun resumed it, or the reaper closed it after this child was started but before it
    recorded itself; then the row names another child or is no longer running)."""
    from plumb.core.checkpoints import latest

    row = store.run(run_id)
    if row is None or row["status"] != "running" or row["child_pid"] not in (None, os.getpid()):
        return
    last = latest(out_dir)
    store.finish_run(run_id, status, f"the process that started this run ended; {message}",
                     checkpoint=str(last) if last else None)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
