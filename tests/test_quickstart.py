"""The first main job, in a reduced mode, on the real starter model."""

from __future__ import annotations

import json
import sqlite3

import pytest

from plumb.core.records import Event

PROVENANCE = ("model", "backend", "params", "plugin", "plugin_version", "constitution_hash", "created")


@pytest.mark.slow
def test_quickstart_reduced_mode_tunes_serves_and_records(tmp_path, real_starter):
    from plumb.pipeline.quickstart import Options, run

    events: list[Event] = []
    opts = Options(directory=tmp_path / "qs", pairs=12, prompts=2, steps=3, batch_size=4, lr=1e-3,
                   max_length=256, max_new_tokens=24)
    summary = run(opts, events.append)

    assert [e.stage for e in events if e.kind == "stage"] == ["pull", "data", "train", "export", "compare"]
    metrics = [e for e in events if e.kind == "metric"]
    assert [e.step for e in metrics] == [1, 2, 3]
    assert metrics[-1].values["loss"] < metrics[0].values["loss"]

    # The adapter GGUF loads on the base and changes greedy output on a held-out prompt.
    assert summary.steps == 3 and summary.pairs == 12 and summary.compared == 2
    assert summary.changed >= 1
    assert any(r.base != r.tuned for r in summary.rows)

    db = sqlite3.connect(tmp_path / "qs" / "plumb.db")
    db.row_factory = sqlite3.Row
    generated = db.execute("SELECT * FROM samples WHERE kind = 'sample'").fetchall()
    assert len(generated) == 4  # 2 prompts x (base, tuned)
    for table in ("samples", "runs"):
        rows = db.execute(f"SELECT * FROM {table} WHERE plugin != 'import'").fetchall()
        for row in rows:
            assert all(row[c] is not None for c in PROVENANCE), (table, dict(row))
    assert {r["model"].rsplit("@", 1)[1] for r in generated} == {"0", "1"}  # base and tuned scales
    assert len({r["constitution_hash"] for r in generated}) == 1
    imported = db.execute("SELECT * FROM samples WHERE kind = 'import'").fetchall()
    assert imported and all(json.loads(r["params"])["source"].startswith("bundled:") for r in imported)
    kinds = {r["kind"] for r in db.execute("SELECT kind FROM artifacts")}
    assert kinds == {"adapter", "gguf-lora", "report"}
    assert db.execute("SELECT count(*) FROM metrics WHERE key = 'rewards/accuracies'").fetchone()[0] == 3
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"

    # A second run in the same workspace reuses the imported data instead of doubling it.
    before = db.execute("SELECT count(*) FROM prompts").fetchone()[0]
    run(Options(directory=tmp_path / "qs", pairs=12, prompts=1, steps=1, lr=1e-3, max_length=256,
                max_new_tokens=8))
    assert db.execute("SELECT count(*) FROM prompts").fetchone()[0] == before
