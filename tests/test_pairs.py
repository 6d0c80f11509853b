"""Judgments become pairs by one rule: one verdict per pair, a person's first, never both ways,
with counts of what is dropped and why."""

from __future__ import annotations

from plumb.core.records import Judgment
from plumb.core.store import Provenance, Store
from plumb.pipeline.pairs import build, export_rows, training_rows


def _store(tmp_path):
    store = Store(tmp_path / "s.db")
    pid = store.add_prompt([{"role": "user", "content": "q"}])
    ids = {t: store.add_sample(pid, t, Provenance()) for t in ("short", "long", "other", "same", "same ")}
    return store, pid, ids


def test_one_verdict_per_pair_person_first_and_never_both_directions(tmp_path):
    store, pid, s = _store(tmp_path)
    store.add_judgment(pid, s["short"], s["long"], Judgment("a", 0.8, "llamacpp:j", ab="a", ba="a", p_a_ab=0.7,
                                                              p_a_ba=0.9), Provenance())
    store.add_judgment(pid, s["long"], s["short"], Judgment("a", 1.0, "human", source="human"), Provenance())
    store.add_judgment(pid, s["short"], s["other"], Judgment("tie", 0.5, "llamacpp:j", ab="a", ba="b"), Provenance())
    store.add_judgment(pid, s["long"], s["other"], Judgment("tie", None, "llamacpp:j", ab=None, ba="a",
                                                              raw_ab="I think"), Provenance())
    store.add_judgment(pid, s["same"], s["same "], Judgment("a", 1.0, "human", source="human"), Provenance())
    built = build(store, by="judge")
    assert [(p["chosen"], p["rejected"], p["source"]) for p in built.pairs] == [("long", "short", "human")]
    assert built.pairs[0]["p"] == 1.0
    assert built.dropped == {"inconsistent": 1, "unparseable": 1, "identical": 1}
    model_only = store.verdicts(("model",))
    assert len(model_only) == 3  # the model's verdicts are kept, only outranked


def test_soft_label_and_checks_vs_judge(tmp_path):
    store, pid, s = _store(tmp_path)
    model = Judgment("a", 0.8, "llamacpp:j", ab="a", ba="a", p_a_ab=0.7, p_a_ba=0.9)
    store.add_judgment(pid, s["short"], s["long"], model, Provenance())
    store.add_judgment(pid, s["short"], s["other"], Judgment("b", 0.3, "llamacpp:j", ab="b", ba="b"), Provenance())
    store.add_judgment(pid, s["short"], s["long"], Judgment("b", 0.0, "checks", source="checks"), Provenance())
    store.add_judgment(pid, s["long"], s["other"], Judgment("a", 1.0, "checks", source="checks"), Provenance())
    judge = build(store, by="judge")
    assert [(p["chosen"], p["p"]) for p in judge.pairs] == [("short", 0.8), ("other", 0.7)]
    checks = build(store, by="checks")
    assert [(p["chosen"], p["rejected"]) for p in checks.pairs] == [("long", "short"), ("long", "other")]
    both = build(store, by="both")
    # short/long: judge says short, checks say long -> dropped; short/other: the judge alone; long/other: checks
    assert [(p["chosen"], p["rejected"]) for p in both.pairs] == [("other", "short"), ("long", "other")]
    assert both.dropped == {"judge and checks disagree": 1}
    dpo = export_rows(store, "dpo", by="judge")
    assert [r["p"] for r in dpo] == [0.8, 0.7]
    sft = training_rows(store, "sft", by="checks")
    assert [r["completion"] for r in sft] == ["long"]  # the chosen side, once
    kto = training_rows(store, "labels", by="checks")
    assert [(r["completion"], r["label"]) for r in kto] == [("long", True), ("short", False), ("long", True),
                                                            ("other", False)]
