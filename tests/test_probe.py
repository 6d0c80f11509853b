"""The alignment-tax probe: how often the tuned model says the facts the base knows, closed-book and plainly;
the checkpoint choice that uses it."""

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


def _bundled(name):
    import json
    from importlib.resources import files

    text = (files("plumb.data") / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_probe_asks_closed_book_and_measures_how_often_the_facts_the_base_knows_are_said(workspace):
    """The real compare stage and store under a backend with planted knowledge: the base knows the even
    questions of the report's set; the tuned model says one of them greedily wrong and, sampled, says another
    right only half the time. Closed-book the probe counts 23 of 24 kept greedily and 0.98 as often sampled
    (ok); asked plainly, where the base reaches some facts only in a second sentence the tuned model drops,
    those show as lost in the free-form count and not in the bar. Reruns reuse every stored answer."""
    from plumb.core.backend import Backend
    from tests.fake_backend import serve_llamacpp
    from plumb.core.records import Completion
    from plumb.pipeline.probe import SAMPLED, SHOTS, free_form, probe
    from plumb.pipeline.session import open_session

    facts = {r["q"]: (i, r["a"][0]) for i, r in enumerate(_bundled("probe_questions.jsonl"))}
    asked: list[tuple[str, int, int]] = []  # (side, chats, n)

    class Planted(Backend):
        name = "llamacpp"

        def generate(self, model, chats, params):
            tuned = bool(model.lora)
            asked.append(("tuned" if tuned else "base", len(chats), params.n))
            out = []
            for chat in chats:
                i, answer = facts[chat.last_user]
                closed = len(chat.messages) == 2 * len(SHOTS) + 1
                texts = []
                for j in range(params.n):
                    knows = i % 2 == 0 and not (tuned and closed and (
                        (i == 4 and params.temperature == 0) or (i == 6 and params.temperature > 0 and j % 2)))
                    if closed:
                        texts.append(f"{answer}." if knows else "I am not sure.")
                    elif i % 4 == 0:  # the base says these first; so does the tuned model
                        texts.append(f"It is {answer}. More words follow here." if not tuned else f"It is {answer}.")
                    else:  # the base reaches these only in its second sentence; the tuned model stops before
                        texts.append(f"Good question. It is {answer}." if knows and not tuned else "Good question.")
                out.append([Completion(t, str(model), "llamacpp") for t in texts])
            return out

    with open_session(workspace.root) as session:
        serve_llamacpp(session.pm, Planted(), ("base.gguf", "tuned.gguf"), workspace.root)
        out = probe(session, "base.gguf", "tuned.gguf")
        assert (out.n, out.base_right, out.tuned_right) == (48, 24, 23)
        assert (out.kept.k, out.kept.n) == (23, 24) and [x["question"] for x in out.lost] == [
            next(q for q, (i, _) in facts.items() if i == 4)]
        assert out.often.n == 24 and out.often.base == 1.0
        assert abs(out.often.value - (23 + 0.5) / 24) < 1e-9 and out.often.lo < out.often.value <= out.often.hi
        assert out.ok and out.to_dict()["often"]["ratio"] == out.often.value
        # base greedy on all 48, tuned greedy on all 48, then both sides sampled on the 24 the base knows
        assert asked == [("base", 48, 1), ("tuned", 48, 1), ("base", 24, SAMPLED.n), ("tuned", 24, SAMPLED.n)]
        stored = session.store.one("SELECT count(*) FROM samples WHERE params LIKE ?", (f'%"n": {SAMPLED.n},%',))[0]
        assert stored == 2 * 24 * SAMPLED.n

        asked.clear()
        again = probe(session, "base.gguf", "tuned.gguf")
        assert asked == [] and again.often == out.often  # every answer stored: nothing asked again

        free = free_form(session, "base.gguf", "tuned.gguf")
        assert (free["kept"].k, free["kept"].n) == (12, 24)  # the second-sentence facts are lost...
        assert (free["said_first"].k, free["said_first"].n) == (12, 12)  # ...the ones said first are kept

        # the choice's way: the tuned model is asked only the facts the base knows (the dev set, planted the
        # same way by its own order)
        facts.update({r["q"]: (i, r["a"][0]) for i, r in enumerate(_bundled("probe_dev_questions.jsonl"))})
        asked.clear()
        dev = probe(session, "base.gguf", "tuned.gguf", split="facts-dev", known_only=True)
        assert dev.base_right == 24 and asked[1] == ("tuned", 24, 1) and dev.ok


def test_the_bar_fails_when_the_tuned_model_says_the_facts_less_often():
    from plumb.pipeline.probe import Probe
    from plumb.pipeline.stats import ratio

    often = ratio([1.0] * 20, [1.0] * 16 + [0.5] * 4)  # 18 of 20: 0.90
    assert abs(often.value - 0.9) < 1e-9 and often.lo <= 0.9 <= often.hi
    assert not Probe(often=often).ok
    assert Probe(often=ratio([1.0] * 20, [1.0] * 19 + [0.0])).ok  # 0.95: at the bar
    assert Probe().ok  # nothing the base knows: nothing to lose


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

    from plumb.export.lora_to_gguf import scaled_adapter

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
    from plumb.pipeline.probe import Probe
    from plumb.pipeline.stats import ratio
    from plumb.train import checkpoint

    kept = {}  # (checkpoint name, scale) -> facts said as often as the base, of 24 (each 1.0 or 0.0)
    checks = {"round1/step-4": 0.80, "round1/step-8": 0.90}
    dev, asked, scaled = [], [], []

    def dev_score(self, name, trained, adapter, served, scale=1.0):
        dev.append((name, scale))
        ckpt = name.split(" ")[0]
        return {"name": name, "checks": (checks[ckpt] * (0.5 + scale / 2), 0.0), "dev_base": 0.4,
                "adapter": adapter, "served": served, "scale": scale, "trained": trained}

    def facts(self, cand):
        asked.append((cand["name"], cand["scale"]))
        k = kept[cand["name"].split(" ")[0], cand["scale"]]
        cand["facts"] = Probe(often=ratio([1.0] * 24, [1.0] * k + [0.0] * (24 - k)))
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
    kept.update({("round1/step-4", 1.0): 24, ("round1/step-8", 1.0): 24})
    gguf, choice, _ = run()
    assert choice["chosen"] == "round1/step-8" and gguf == tmp_path / "step-8/adapter.gguf"
    assert dev == [("round1/step-4", 1.0), ("round1/step-8", 1.0)] and asked == [("round1/step-8", 1.0)]
    assert list(choice["dev_facts"]) == ["round1/step-8"]
    # progress after each checkpoint, also where the output is not a terminal
    assert [(e.step, e.total) for e in events if e.kind == "progress"] == [(1, 2), (2, 2)]

    # it loses them: the next best by the checks is asked, keeps them, ships; no scale tried
    kept[("round1/step-8", 1.0)] = 20
    gguf, choice, _ = run()
    assert choice["chosen"] == "round1/step-4" and choice["scale"] == 1.0 and gguf == tmp_path / "step-4/adapter.gguf"
    assert asked == [("round1/step-8", 1.0), ("round1/step-4", 1.0)] and not scaled

    # both lose facts: the best by the checks (step-8) is scaled down to the largest scale that keeps them
    kept.update({("round1/step-4", 1.0): 21, ("round1/step-8", 0.75): 22, ("round1/step-8", 0.5): 23})
    gguf, choice, _ = run()
    assert asked[2:] == [("round1/step-8 x0.75", 0.75), ("round1/step-8 x0.5", 0.5)]
    assert choice["chosen"] == "round1/step-8 x0.5" and choice["scale"] == 0.5
    assert scaled == [(str(tmp_path / "step-8/adapter"), 0.5)] and gguf == tmp_path / "step-8/adapter-x0.5.gguf"

    # no scale clears the bar: the unscaled checkpoint keeping the most (a scale keeping more is not shipped)
    kept[("round1/step-8", 0.5)] = 22
    gguf, choice, _ = run()
    assert len(asked) == 4 and not scaled
    assert choice["chosen"] == "round1/step-4" and choice["scale"] == 1.0 and "keeping the most" in choice["why"]


def test_no_probe_question_is_a_prompt_tune_trains_on():
    """The alignment-tax probe measures what tuning did not teach: its questions (both sets) are not among the
    bundled tune prompts, the report's set shares none with the set the checkpoint is chosen by, and the
    closed-book format's worked turns are none of them."""
    import json
    from importlib.resources import files

    def questions(name, key):
        text = (files("plumb.data") / name).read_text(encoding="utf-8")
        return {json.loads(line)[key].strip().lower() for line in text.splitlines() if line.strip()}

    tune = questions("tune_prompts.jsonl", "prompt")
    probe, dev = (questions(probe_mod.QUESTIONS[s], "q") for s in ("report", "dev"))
    shots = {q.lower() for q, _ in probe_mod.SHOTS}
    assert len(probe) == len(dev) == 48 and len(shots) == 4
    assert not probe & tune and not dev & tune and not probe & dev
    assert not shots & (probe | dev | tune)  # the worked turns ask nothing the probe or tuning asks
