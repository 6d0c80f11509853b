"""`plumb train` under torchrun: 2 CPU ranks (gloo, real processes) on the tiny model against 1 process.

The 2-rank runs split every micro-batch of 4 rows 2 + 2 and sum the gradients; the 1-process runs
compute the same global batches whole, so the loss curves agree to float32 summation order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plumb.core.context import HookContext
from plumb.core.records import ModelSpec, RunSpec
from plumb.pipeline.train import rows_from_file
from plumb.train import loop
from tests.local_servers import free_port
from tests.test_train import make_pairs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {"steps": 4, "lr": 5e-3, "batch_size": 4, "grad_accum": 2, "seed": 3, "warmup_ratio": 0.0,
          "lora_dropout": 0.0, "checkpoint_every": 2}
FLAGS = ["--steps", "4", "--lr", "5e-3", "--batch-size", "4", "--grad-accum", "2", "--seed", "3",
         "-o", "warmup_ratio=0.0", "-o", "lora_dropout=0.0", "-o", "checkpoint_every=2"]
TOLERANCE = 1e-4  # |loss, 2 ranks - loss, 1 process| at every step (measured: under 1e-6)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _file(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_process(tiny_model_dir, tmp_path, method: str, rows: list[dict]) -> list[float]:
    """The loss of every step of the same run in this process, alone."""
    events = []
    run = RunSpec(method, ModelSpec("hf", str(tiny_model_dir)), rows, str(tmp_path / f"alone-{method}"), CONFIG)
    loop.train(run, HookContext(None, events.append))
    return [e.values["loss"] for e in events if e.kind == "metric"]


def torchrun(tiny_model_dir, method: str, data: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "plumb", "train", method, "--policy", f"hf:{tiny_model_dir}", "--data", str(data),
                           "--out", str(out), *FLAGS, "--json"],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_two_ranks_follow_the_one_process_loss_curve_and_rank_0_alone_records(tiny_model_dir, tmp_path, workspace,
                                                                              method):
    pairs = make_pairs(16, 5)
    lines = pairs if method == "dpo" else [{"messages": [{"role": "user", "content": p["prompt"]},
                                                          {"role": "assistant", "content": p["chosen"]}]}
                                           for p in pairs]
    data = _file(tmp_path, "rows.jsonl", lines)
    alone = one_process(tiny_model_dir, tmp_path, method, rows_from_file(str(data), method))  # as the CLI reads it
    out = tmp_path / "two"
    proc = torchrun(tiny_model_dir, method, data, out, workspace.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{"):])  # rank 0's answer, the only one printed
    with workspace.store() as store:
        runs = store.query("SELECT id, status FROM runs")
        assert [tuple(r) for r in runs] == [(result["run_id"], "done")]  # one run, not one per rank
        two = store.metrics(result["run_id"], "loss")
    assert [s for s, _ in two] == [1, 2, 3, 4]
    print(f"{method} loss, 1 process: {alone}\n{method} loss, 2 ranks:   {[v for _, v in two]}")
    assert [v for _, v in two] == pytest.approx(alone, abs=TOLERANCE)
    assert alone[-1] < alone[0]  # it trained
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def launch(script: list[str], tmp_path: Path, data: list[Path], **env: str) -> list[subprocess.Popen]:
    """Two ranks started by hand, as a launcher would start them but without its agent: nobody tears down the
    survivor of a dead rank but plumb itself."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, *script, "--data", str(data[rank])], cwd=tmp_path,
                             env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port, **env),
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"rank{rank}.err", "w"), text=True)
            for rank in range(2)]


KILL_RANK_1 = """
import os, signal, sys
from plumb.train import loop
real = loop.get_lr
def get_lr(step, total, cfg):
    if step == 2 and os.environ["RANK"] == "1":  # after the step-2 checkpoint, in the middle of the run
        os.kill(os.getpid(), signal.SIGKILL)
    return real(step, total, cfg)
loop.get_lr = get_lr
from plumb.cli import main
sys.argv = ["plumb", *sys.argv[1:]]
main()
"""


def test_a_killed_rank_stops_the_other_and_one_process_resumes_the_run(tiny_model_dir, tmp_path):
    rows = make_pairs(16, 5)
    alone = one_process(tiny_model_dir, tmp_path, "dpo", rows)
    data, out, script = _file(tmp_path, "pairs.jsonl", rows), tmp_path / "two", tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    args = ["train", "dpo", "--policy", f"hf:{tiny_model_dir}", "--out", str(out), *FLAGS]
    rank0, rank1 = launch([str(script), *args], tmp_path, [data, data], PLUMB_DIST_TIMEOUT="60")
    assert rank1.wait(timeout=600) == -signal.SIGKILL
    killed = time.monotonic()
    assert rank0.wait(timeout=90) != 0
    assert time.monotonic() - killed < 90
    err = (tmp_path / "rank0.err").read_text()
    assert "rank 0 of 2 lost the other ranks" in err and "resumes from its last checkpoint" in err, err[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-2"]

    proc = subprocess.run([sys.executable, "-m", "plumb", "train", "dpo", "--policy", f"hf:{tiny_model_dir}",
                           "--data", str(data), "--out", str(out), *FLAGS, "--resume", "--json"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert resumed["metrics"]["loss"] == pytest.approx(alone[-1], abs=TOLERANCE)


def test_ranks_with_different_data_stop_at_the_start(tiny_model_dir, tmp_path):
    rows = make_pairs(16, 5)
    other = [*rows[:-1], {**rows[-1], "chosen": "so yes yes yes"}]
    data = [_file(tmp_path, "pairs.jsonl", rows), _file(tmp_path, "other.jsonl", other)]
    args = ["-m", "plumb", "train", "dpo", "--policy", f"hf:{tiny_model_dir}", "--out", str(tmp_path / "two"),
            *FLAGS]
    for k, rank in enumerate(launch(args, tmp_path, data)):
        assert rank.wait(timeout=600) == 2
        assert "the ranks disagree about the training rows (rank 0: " in (tmp_path / f"rank{k}.err").read_text()
    assert not (tmp_path / "two" / "checkpoints").exists()
