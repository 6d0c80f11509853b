"""`plumb tune` in a reduced mode on the real starter: the plumbing end to end, and the direction it moves."""

from __future__ import annotations

import json
import sqlite3
import urllib.request

import pytest

from plumb.core.errors import PlumbError
from plumb.core.records import Event

PROVENANCE = ("model", "backend", "params", "plugin", "plugin_version", "constitution_hash", "created")


def _session(path, constitution="concise-writer"):
    from plumb.pipeline.session import open_session

    return open_session(path, create=True, constitution=constitution)


@pytest.mark.slow
def test_tune_reduced_mode_stores_trains_moves_the_checks_reports_and_resumes(tmp_path, real_starter):
    from plumb.pipeline.tune import Sizes, TuneOptions, tune
    from plumb.pipeline.tune_stages import SATURATED

    sizes = Sizes(train_prompts=12, dev_prompts=3, eval_prompts=8, probe_questions=8, k=4, critique_drafts=2,
                  judge_audit=4, max_tokens=96, checkpoints=2)
    opts = TuneOptions(sizes=sizes, method="sft", rounds=2, lr=1e-3, budget_minutes=6)
    events: list[Event] = []
    with _session(tmp_path / "t") as session:
        out = tune(session, opts, events.append)
    stages = [e.stage for e in events if e.kind == "stage"]
    for stage in ("prompts", "sample", "critique", "judge", "train", "choose", "compare", "report"):
        assert stage in stages, (stage, stages)
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report == json.loads(json.dumps(out.report, default=str))
    for key in ("base_gguf", "adapter_gguf", "hf_base", "constitution", "counts", "learning", "train", "eval",
                "probe", "timings_s"):
        assert key in report
    assert (tmp_path / "t" / "report.md").read_text().startswith("# plumb tune: concise-writer")
    rounds = report["learning"]["rounds"]
    assert report["learning"]["method"] == "sft" and len(rounds) == 2 and rounds[0]["rows"] >= 4
    assert "+lora:" in rounds[1]["model"]  # round 2 sampled from the adapter of round 1 (on-policy)
    if rounds[1]["rows"]:  # round 2 trained on from round 1's adapter
        trained_runs = ["done", "done"]
    else:  # or round 1's adapter already scored so well that round 2 was not trained, and the report says why
        assert rounds[1]["mean_score"] >= SATURATED and "rounds_stopped" in report["learning"]
        trained_runs = ["done"]
    assert "judge" in report["learning"] and "critic" in report["learning"]  # each said why it was used or not

    db = sqlite3.connect(tmp_path / "t" / "plumb.db")
    db.row_factory = sqlite3.Row
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("prompts", "samples", "critiques", "judgments")}
    assert {k: report["counts"][k] for k in counts} == counts  # the report's counts are the store's
    assert db.execute("SELECT count(*) FROM samples WHERE kind = 'sample' AND params LIKE ?",
                      ('%"n": 4%',)).fetchone()[0] == 48  # 2 rounds x 6 prompts x k 4
    for table in ("samples", "critiques", "judgments", "runs"):
        for row in db.execute(f"SELECT * FROM {table} WHERE plugin IS NOT 'import'"):
            assert all(row[c] is not None for c in PROVENANCE), (table, dict(row))
    assert [r[0] for r in db.execute("SELECT status FROM runs")] == trained_runs

    # the direction trained: the tuned model's held-out answers score higher on the checks and are shorter
    ev = report["eval"]
    assert ev["n"] == 8
    assert ev["tuned"]["checks"]["all"]["rate"] > ev["base"]["checks"]["all"]["rate"]
    assert ev["tuned"]["mean_words"] < ev["base"]["mean_words"]
    assert report["probe"]["n"] == 8

    # a rerun finds every stage done: nothing sampled, critiqued, judged or trained again
    again: list[Event] = []
    with _session(tmp_path / "t") as session:
        tune(session, opts, again.append)
    after = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("prompts", "samples", "critiques")}
    assert after == {k: counts[k] for k in after}
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == len(trained_runs)
    assert any("already trained" in e.message for e in again if e.kind == "log")


def test_nothing_to_rank_and_too_small_budget_are_refused_before_any_work(tmp_path):
    """No checks and no judge: refused at the start, naming the fixes; a budget too small to train names the
    minimum. Nothing is sampled (no model is even loaded)."""
    from plumb.pipeline.tune import TuneOptions, tune

    bare = tmp_path / "bare.toml"
    bare.write_text('name = "bare"\nversion = "1"\ndescription = "d"\n\n[[principles]]\nid = "one"\n'
                    'text = "Be kind."\n')
    with _session(tmp_path / "a") as session:
        with pytest.raises(PlumbError, match="nothing can rank answers.*checks.*--judge"):
            tune(session, TuneOptions(constitution=str(bare), judge="none"))
        assert session.store.one("SELECT count(*) FROM samples")[0] == 0
    with _session(tmp_path / "b") as session:
        with pytest.raises(PlumbError, match=r"leaves no time to train.*use at least \d+"):
            tune(session, TuneOptions(budget_minutes=1))
        assert session.store.one("SELECT count(*) FROM samples")[0] == 0
    with _session(tmp_path / "c") as session:  # a backend that cannot serve the tuned LoRA on the base
        with pytest.raises(PlumbError, match="backend 'hf' does not do.*llamacpp:PATH.gguf.*openai:URL"):
            tune(session, TuneOptions(model=f"hf:{tmp_path}"))
        with pytest.raises(PlumbError, match="backend 'openai' does not do"):  # servers, but with a fixed adapter
            tune(session, TuneOptions(model=f"openai:http://127.0.0.1:9/v1+lora:{tmp_path}"))
        with pytest.raises(PlumbError, match="give --train-model hf:DIR"):  # servers: which weights to train?
            tune(session, TuneOptions(model="openai:http://127.0.0.1:9/v1"))
        assert session.store.one("SELECT count(*) FROM samples")[0] == 0


@pytest.mark.slow
def test_tune_against_a_server_that_loads_each_adapter(tmp_path, real_starter):
    """`plumb tune --model openai:URL` with `plumb serve` on the starter: every answer, base and tuned, comes
    from the server, which loads round 1's adapter to sample round 2, each checkpoint to choose and the shipped
    adapter (a peft directory) to evaluate; the tuned model still moves toward the checks."""
    from plumb.pipeline.tune import Sizes, TuneOptions, tune
    from tests.local_servers import running, start_plumb_server

    gguf, hf = real_starter
    with running([start_plumb_server(gguf, tmp_path / "serve.log", hf, threads=2)], 120) as [(_, base)]:
        sizes = Sizes(train_prompts=12, dev_prompts=3, eval_prompts=8, probe_questions=8, k=4, critique_drafts=2,
                      judge_audit=4, max_tokens=96, checkpoints=2)
        opts = TuneOptions(model=f"openai:{base}", train_model=f"hf:{hf}", sizes=sizes, method="sft", rounds=2,
                           lr=1e-3, budget_minutes=6, critic="none", judge="none")
        with _session(tmp_path / "t") as session:
            out = tune(session, opts)
            adapter = tmp_path.resolve() / "t" / "adapter"
            artifact = session.store.one("SELECT kind FROM artifacts WHERE path = ?", (str(adapter),))
        report = out.report
        assert report["tuned_spec"] == f"openai:{base}+lora:{adapter}"
        assert (adapter / "adapter_model.safetensors").is_file() and artifact["kind"] == "adapter"
        rounds = report["learning"]["rounds"]
        assert rounds[0]["model"] == f"openai:{base}"
        assert rounds[1]["model"].startswith(f"openai:{base}+lora:")  # round 2 sampled with round 1's adapter
        with urllib.request.urlopen(base + "/models", timeout=5) as r:
            loaded = [m["root"] for m in json.load(r)["data"] if m["id"].startswith("plumb-")]
        assert str(adapter) in loaded  # the shipped adapter, evaluated on the server
        ev = report["eval"]
        assert ev["n"] == 8 and ev["tuned"]["checks"]["all"]["rate"] > ev["base"]["checks"]["all"]["rate"]
        assert report["probe"]["n"] == 8
