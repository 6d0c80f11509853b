"""The alignment-tax probe's tally: which facts the tuned model keeps, and which the base said first."""

from __future__ import annotations

from types import SimpleNamespace

from plumb.pipeline import probe as probe_mod
from plumb.pipeline.probe import first_sentence, right


def test_right_takes_whole_words_and_plurals():
    assert right("Bees make honey.", ["honey"])
    assert right("A baby cat is called a kitten; kittens are small.", ["kitten"])
    assert right("Young dogs are puppies.", ["puppy"])
    assert not right("Honeycomb is wax.", ["honey"])


def test_first_sentence():
    assert first_sentence("  The Sun rises in the east. It sets in the west.") == "The Sun rises in the east."
    assert first_sentence("No end mark here") == "No end mark here"
    assert first_sentence("A list:\n- one") == "A list:"


def test_probe_counts_what_is_kept_and_what_the_base_said_first(monkeypatch):
    rows = [  # (base, tuned, accepted)
        ("Berlin is the capital.", "The capital is Berlin.", ["Berlin"]),  # said first, kept
        ("Bees are complex creatures. They make honey.", "Bees are complex creatures.", ["honey"]),  # said later, lost
        ("The heart pumps blood.", "The human body has organs.", ["heart"]),  # said first, lost
        ("A week is long.", "A week has 7 days.", ["7", "seven"]),  # the base did not know it
    ]
    result = SimpleNamespace(rows=[SimpleNamespace(prompt_id=i, prompt=f"q{i}", base=b, tuned=t)
                                   for i, (b, t, _) in enumerate(rows)])
    monkeypatch.setattr(probe_mod, "_questions", lambda session, split: {i: r[2] for i, r in enumerate(rows)})
    monkeypatch.setattr(probe_mod, "compare", lambda *a, **k: result)
    out = probe_mod.probe(None, "base.gguf", "adapter.gguf")
    assert (out.n, out.base_right, out.tuned_right) == (4, 3, 2)
    assert (out.kept.k, out.kept.n) == (1, 3) and not out.ok
    assert (out.said_first.k, out.said_first.n) == (1, 2)
    assert [(x["question"], x["base_said_first"]) for x in out.lost] == [("q1", False), ("q2", True)]
    assert out.to_dict()["said_first"]["n"] == 2

    asked = []

    def compare(session, opts, sink=None):  # the rows of the questions asked, as the compare stage gives them
        asked.append((opts.sides, opts.prompt_ids))
        return SimpleNamespace(rows=[r for r in result.rows if not opts.prompt_ids or r.prompt_id in opts.prompt_ids])

    monkeypatch.setattr(probe_mod, "compare", compare)
    first = probe_mod.probe(None, "base.gguf", "adapter.gguf", said_first_only=True)
    # the base once on every question, then base and tuned on the two it answers in its first sentence
    assert asked == [(("base",), ()), (("base", "tuned"), (0, 2))]
    assert (first.said_first.k, first.said_first.n) == (first.kept.k, first.kept.n) == (1, 2)


def test_length_matched_distinct2_counts_the_same_bigrams_on_both_sides():
    from plumb.core.diversity import distinct2, distinct2_matched

    base = ["the cat sat on the mat and the cat sat on the mat again", "a dog ran far away from the dog"]
    tuned = ["the cat sat down.", "a dog ran."]
    assert distinct2(tuned) > distinct2(base)  # shorter answers repeat fewer bigrams: pooled distinct-2 rises
    m = distinct2_matched(list(zip(base, tuned)))
    # cut to 4 and 3 words: base "the cat sat on" + "a dog ran", tuned "the cat sat down." + "a dog ran."
    assert m == {"base": 1.0, "tuned": 1.0}
    looped = distinct2_matched([("one two three four", "one two one two")])
    assert looped["tuned"] < looped["base"]  # a loop still shows at equal length


def test_a_scaled_adapter_moves_the_weights_that_share_of_the_way(tiny_model_dir, tmp_path):
    """scaled_adapter(x0.5): merged into the base, every weight the LoRA touches moves half as far as the
    adapter itself moves it (the weights between base and tuned the choice falls back to)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from plumb.pipeline.export import scaled_adapter

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at zero: no update to scale
    model.save_pretrained(tmp_path / "adapter")
    half = scaled_adapter(str(tmp_path / "adapter"), 0.5)
    assert half == str(tmp_path / "adapter-x0.5") and scaled_adapter(str(tmp_path / "adapter"), 0.5) == half

    def weights(adapter):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload() if adapter else base
        return {k: v for k, v in merged.state_dict().items() if "q_proj" in k or "down_proj" in k}

    base, full, scaled = weights(None), weights(str(tmp_path / "adapter")), weights(half)
    moved = [k for k in base if not torch.equal(base[k], full[k])]
    assert moved  # the adapter does move them
    for k in moved:
        torch.testing.assert_close(scaled[k] - base[k], 0.5 * (full[k] - base[k]), atol=1e-6, rtol=1e-4)


def test_the_choice_probes_best_first_and_scales_down_only_when_every_checkpoint_loses_facts(monkeypatch, tmp_path):
    from pathlib import Path

    from plumb.pipeline import tune_stages as st
    from plumb.pipeline.stats import Rate
    from plumb.train import checkpoint

    said_first = {}  # (checkpoint name, scale) -> facts the base says first kept, of 24
    checks = {"round1/step-4": 0.80, "round1/step-8": 0.90}
    dev, asked, scaled = [], [], []

    def dev_score(self, name, trained, adapter, gguf, scale=1.0):
        dev.append((name, scale))
        ckpt = name.split(" ")[0]
        return {"name": name, "checks": (checks[ckpt] * (0.5 + scale / 2), 0.0), "dev_base": 0.4,
                "adapter": adapter, "gguf": gguf, "scale": scale, "trained": trained}

    def facts(self, cand):
        asked.append((cand["name"], cand["scale"]))
        cand["first"] = Rate(said_first[cand["name"].split(" ")[0], cand["scale"]], 24)
        return cand

    monkeypatch.setattr(st.Run, "_dev", dev_score)
    monkeypatch.setattr(st.Run, "_facts", facts)
    monkeypatch.setattr(st, "SCALES", (0.75, 0.5))  # two scales, to see the largest that keeps them win
    monkeypatch.setattr(checkpoint, "checkpoints", lambda out: [Path(out) / "step-4", Path(out) / "step-8"])
    monkeypatch.setattr(st, "export_adapter", lambda session, adapter, base, run_id, out: Path(out))
    monkeypatch.setattr(st, "scaled_adapter", lambda adapter, s: scaled.append((adapter, s)) or f"{adapter}-x{s:g}")
    trained = SimpleNamespace(out_dir=str(tmp_path), run_id=1)

    events = []

    def run():
        events.clear()
        r = st.Run(None, SimpleNamespace(constitution=None), SimpleNamespace(dev_prompts=6), None, "base.gguf",
                   "hf:base", None, events.append)
        r.trained = [trained]
        for seen in (dev, asked, scaled):
            seen.clear()
        return r.choose()

    # the best by the checks keeps the facts: it ships, and the probe asks no other checkpoint
    said_first.update({("round1/step-4", 1.0): 24, ("round1/step-8", 1.0): 24})
    gguf, choice, _ = run()
    assert choice["chosen"] == "round1/step-8" and gguf == tmp_path / "step-8/adapter.gguf"
    assert dev == [("round1/step-4", 1.0), ("round1/step-8", 1.0)] and asked == [("round1/step-8", 1.0)]
    assert list(choice["dev_facts_said_first_kept"]) == ["round1/step-8"]
    # progress after each checkpoint, also where the output is not a terminal
    assert [(e.step, e.total) for e in events if e.kind == "progress"] == [(1, 2), (2, 2)]

    # it loses them: the next best by the checks is asked, keeps them, ships; no scale tried
    said_first[("round1/step-8", 1.0)] = 20
    gguf, choice, _ = run()
    assert choice["chosen"] == "round1/step-4" and choice["scale"] == 1.0 and gguf == tmp_path / "step-4/adapter.gguf"
    assert asked == [("round1/step-8", 1.0), ("round1/step-4", 1.0)] and not scaled

    # both lose facts: the best by the checks (step-8) is scaled down to the largest scale that keeps them
    said_first.update({("round1/step-4", 1.0): 21, ("round1/step-8", 0.75): 22, ("round1/step-8", 0.5): 23})
    gguf, choice, _ = run()
    assert asked[2:] == [("round1/step-8 x0.75", 0.75), ("round1/step-8 x0.5", 0.5)]
    assert choice["chosen"] == "round1/step-8 x0.5" and choice["scale"] == 0.5
    assert scaled == [(str(tmp_path / "step-8/adapter"), 0.5)] and gguf == tmp_path / "step-8/adapter-x0.5.gguf"

    # no scale clears the bar: the unscaled checkpoint keeping the most (a scale keeping more is not shipped)
    said_first[("round1/step-8", 0.5)] = 22
    gguf, choice, _ = run()
    assert len(asked) == 4 and not scaled
    assert choice["chosen"] == "round1/step-4" and choice["scale"] == 1.0 and "keeping the most" in choice["why"]


def test_no_probe_question_is_a_prompt_tune_trains_on():
    """The alignment-tax probe measures what tuning did not teach: its questions (both sets) are not among the
    bundled tune prompts, and the report's set shares none with the set the checkpoint is chosen by."""
    import json
    from importlib.resources import files

    def questions(name, key):
        text = (files("plumb.data") / name).read_text(encoding="utf-8")
        return {json.loads(line)[key].strip().lower() for line in text.splitlines() if line.strip()}

    tune = questions("tune_prompts.jsonl", "prompt")
    probe, dev = (questions(probe_mod.SETS[s], "q") for s in ("probe", "probe-dev"))
    assert len(probe) == len(dev) == 48
    assert not probe & tune and not dev & tune and not probe & dev
