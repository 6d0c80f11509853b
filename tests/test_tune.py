"""`plumb tune` in a reduced mode on the real starter: the plumbing, end to end."""

from __future__ import annotations

import json
import sqlite3

import pytest

from plumb.core.records import Event

PROVENANCE = ("model", "backend", "params", "plugin", "plugin_version", "constitution_hash", "created")


@pytest.mark.slow
def test_tune_reduced_mode_stores_trains_serves_reports_and_resumes(tmp_path, real_starter):
    from plumb.pipeline.tune import Sizes, TuneOptions, run

    sizes = Sizes(train_prompts=12, dev_prompts=3, eval_prompts=4, k=3, critique_drafts=2, max_tokens=120,
                  epochs=1.0, checkpoints=2)
    opts = TuneOptions(directory=tmp_path / "t", sizes=sizes, pairs="checks", judge="none", lr=1e-3)
    events: list[Event] = []
    out = run(opts, events.append)
    stages = [e.stage for e in events if e.kind == "stage"]
    for stage in ("prompts", "sample", "critique", "judge", "train", "choose", "compare", "report"):  # judge: checks
        assert stage in stages, (stage, stages)
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report == json.loads(json.dumps(out.report, default=str))
    for key in ("base_gguf", "adapter_gguf", "hf_base", "constitution", "counts", "train", "eval", "timings_s"):
        assert key in report
    assert (tmp_path / "t" / "report.md").read_text().startswith("# plumb tune: concise-writer")
    assert (tmp_path / "t" / "training.png").stat().st_size > 1000

    db = sqlite3.connect(tmp_path / "t" / "plumb.db")
    db.row_factory = sqlite3.Row
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("prompts", "samples", "critiques", "judgments")}
    assert {k: report["counts"][k] for k in counts} == counts  # the report's counts are the store's
    assert db.execute("SELECT count(*) FROM samples WHERE kind = 'sample' AND params LIKE ?",
                      ('%"n": 3%',)).fetchone()[0] == 36  # 12 prompts x k 3
    for table in ("samples", "critiques", "judgments", "runs"):
        for row in db.execute(f"SELECT * FROM {table} WHERE plugin IS NOT 'import'"):
            assert all(row[c] is not None for c in PROVENANCE), (table, dict(row))
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"

    # the adapter GGUF loads on the base and changes greedy output on some held-out prompt
    ev = report["eval"]
    assert ev["n"] == 4
    assert any(e["base"].strip() != e["tuned"].strip() for e in ev["examples"])

    # a rerun finds every stage done: nothing sampled, critiqued, judged or trained again
    before = counts
    again = []
    run(opts, again.append)
    after = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("prompts", "samples", "critiques")}
    assert after == {k: before[k] for k in after}
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert any("already trained" in e.message for e in again if e.kind == "log")
