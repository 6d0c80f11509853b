"""GRPO on the tiny model: the math against the seeds' numbers, learning, the llama.cpp rollout path,
resume, bad input, and the stage that stores every rollout.

The tiny model's embeddings are scaled down (``flat_model``) so its samples spread over the vocabulary
(the bare tiny model answers with newlines only); the reward it learns quickly is the fraction of digits
in an answer (10 of its 512 tokens are digits).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from plumb import hookimpl
from plumb.core.backend import Backend
from plumb.core.context import HookContext
from plumb.core.errors import PlumbError
from plumb.core.records import ModelSpec, Reward, RunSpec, SamplingParams
from plumb.train import grpo
from plumb.train.options import GRPOConfig
from tests.plugins import plugin_source


def _chars(completion) -> str:
    return "".join(completion.text.split())


def digits(task, completion):
    t = _chars(completion)
    return Reward("digits", sum(c.isdigit() for c in t) / max(len(t), 1))


def letters(task, completion):
    t = _chars(completion)
    return Reward("letters", sum(c.isalpha() for c in t) / max(len(t), 1))


def fragile(task, completion):
    if len(_chars(completion)) % 3 == 0:
        raise ValueError("cannot score this one")
    return 0.5


class Verifiers:
    @hookimpl
    def plumb_register_verifiers(self, register):
        register("digits", "fraction of digits", score=digits)
        register("letters", "fraction of letters (not optimized: the held-out signal)", score=letters)
        register("always_one", "1 for everything", score=lambda task, completion: 1.0)
        register("fragile", "raises for some answers", score=fragile)


@pytest.fixture(scope="module")
def pm():
    from plumb.core.plugins import get_plugin_manager

    pm = get_plugin_manager(entry_points=False)
    pm.register(Verifiers(), name="test-verifiers")
    return pm


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory) -> Path:
    """The tiny model with two changes: a tokenizer whose alphabet is the corpus's characters only (every
    token is printable ASCII, so sampled text round-trips through re-tokenization more often than with
    raw bytes), and embeddings scaled down (near-uniform next-token distributions: varied samples)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny import CHAT_TEMPLATE, SPECIAL, build_model, corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIAL, show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    model = build_model(fast)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(0.2)
    out = tmp_path_factory.mktemp("flat-tiny")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def tasks(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the a answer question model water fire sun moon cat dog tree river".split()
    return [{"messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(4)) + "?"}]}
            for _ in range(n)]


FAST = {"rewards": {"digits": 1.0}, "lr": 2e-2, "max_completion_length": 8, "num_generations": 8,
        "prompts_per_step": 4, "rollouts": "hf", "checkpoint_every": 1000, "eval_every": 0}


def run_grpo(model_dir, out, pm, steps, rows=None, held=None, **config):
    events = []
    run = RunSpec("grpo", ModelSpec("hf", str(model_dir)), rows or tasks(32), str(out),
                  config={**FAST, "steps": steps, **config}, eval_data=held or [])
    result = grpo.train(run, HookContext(pm, events.append))
    return result, [e for e in events if e.kind == "metric"], [e.message for e in events if e.kind == "log"]


# -- the math --------------------------------------------------------------------------------------------


def test_group_advantages_follow_trl():
    # the seeds' group of G = 8 checked answers, half right: (r - mean) / (std + eps), unbiased std
    r = torch.tensor([[1.0, 0, 1, 1, 0, 0, 1, 0], [1.0] * 8, [0.5, math.nan, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0]])
    adv, std = grpo.advantages(r)
    s = math.sqrt(8 / 7 * 0.25)
    assert std[0] == pytest.approx(s, rel=1e-5)
    assert adv[0].tolist() == pytest.approx([(x - 0.5) / (s + 1e-4) for x in r[0].tolist()], rel=1e-5)
    assert std[1] == 0 and (adv[1] == 0).all()  # zero spread: nothing to learn from this group
    assert adv[2, 1] == 0 and adv[2, 0] < 0 < adv[2, 2]  # an unscored answer: out of the baseline, advantage 0
    assert grpo.advantages(r, "none")[0][0].tolist() == pytest.approx([x - 0.5 for x in r[0].tolist()])


def test_clipped_surrogate_matches_the_seeds_ppo_step():
    # seeds: advantage 1.4429, eps 0.2; ratio 1.1 is inside [0.8, 1.2], ratio 1.4 is clipped to 1.2
    a = 1.4429
    old = torch.log(torch.tensor([0.5, 0.5]))
    new = torch.log(torch.tensor([0.55, 0.7]))
    loss, kl, low, high = grpo.grpo_loss(new, old, None, torch.tensor([a, a]), torch.tensor([1.0, 0.0]),
                                         0.0, 0.2, 0.2)
    assert float(loss) == pytest.approx(-1.1 * a, rel=1e-5)  # -1.587: unclipped
    loss2, *_ = grpo.grpo_loss(new, old, None, torch.tensor([a, a]), torch.tensor([0.0, 1.0]), 0.0, 0.2, 0.2)
    assert float(loss2) == pytest.approx(-1.2 * a, rel=1e-5)  # -1.731: clipped
    assert kl is None and high.tolist() == [False, True] and not low.any()
    # a bad answer whose probability already fell past 1 - eps: clipped (no more push), counted low
    _, _, low, _ = grpo.grpo_loss(torch.log(torch.tensor([0.3])), torch.log(torch.tensor([0.5])), None,
                                  torch.tensor([-1.0]), torch.tensor([1.0]), 0.0, 0.2, 0.28)
    assert low.tolist() == [True]
    # k3 KL to the reference (seeds' per-token log-probs): 0 where they agree, positive elsewhere
    pol, ref = torch.tensor([-0.2, -1.1, -0.5]), torch.tensor([-0.3, -0.9, -0.6])
    _, kl, _, _ = grpo.grpo_loss(pol, pol, ref, torch.zeros(3), torch.ones(3), 0.04, 0.2, 0.2)
    d = ref - pol
    assert kl.tolist() == pytest.approx((torch.exp(d) - d - 1).tolist()) and (kl > 0).all()
    assert grpo.grpo_loss(pol, pol, pol.clone(), torch.zeros(3), torch.ones(3), 0.04, 0.2, 0.2)[1].abs().max() == 0


def test_token_weights_aggregate_as_named():
    lengths = [2, 6]
    dapo = grpo.token_weights(lengths, "dapo", 8)
    assert sum(w * n for w, n in zip(dapo, lengths)) == pytest.approx(1.0)  # a mean over the step's tokens
    seq = grpo.token_weights(lengths, "grpo", 8)
    assert [w * n for w, n in zip(seq, lengths)] == pytest.approx([0.5, 0.5])  # a mean of per-answer means
    assert grpo.token_weights(lengths, "dr_grpo", 8) == pytest.approx([1 / 16, 1 / 16])
    assert all(grpo.token_weights([], t, 8) == [] for t in ("dapo", "grpo", "dr_grpo"))  # a step with nothing kept


def test_answers_sharing_their_prompt_give_the_same_log_probs(flat_model):
    from plumb.core.records import Completion
    from plumb.train import data
    from plumb.train.loop import load_policy
    from plumb.train.rollouts import Rollout, batch_of

    model, tok = load_policy(str(flat_model), GRPOConfig(), "cpu")
    assert model.get_base_model().config._attn_implementation == "sdpa"
    rolls = []
    for k, row in enumerate(tasks(3, seed=1)):
        answers = ["cat dog", "1 2 3 4 5", "sun", "the moon and the sun"]
        prompt, answers, _ = data.tokenize(tok, row["messages"], answers)
        rolls += [Rollout(k, Completion("", "x", "x"), prompt, a) for a in answers[:2 + k]]
    shared = batch_of(model, rolls, tok.pad_token_id, "cpu")
    assert shared["input_ids"].shape[0] == 3  # one row per prompt
    plain = data.collate([(r.prompt_ids, r.ids) for r in rolls], tok.pad_token_id)
    with torch.no_grad():
        for t in (1.0, 0.7):
            a, b = grpo.token_logps(model, shared, t), grpo.token_logps(model, plain, t)
            assert torch.allclose(a, b, atol=1e-5) and shared["owner"].tolist() == plain["owner"].tolist()


# -- learning ----------------------------------------------------------------------------------------------


def test_grpo_learns_a_verifiable_reward(flat_model, tmp_path, pm):
    # the held-out gain of 16 steps is a random quantity: over seeds 6-17 it averaged 0.21 (answers seeded one by
    # one, as now) and 0.21 (one seed per sampling call, as before); seed 0's draw gains 0.045 now, seed 1's 0.27
    result, steps, logs = run_grpo(flat_model, tmp_path / "run", pm, 16, held=tasks(6, seed=9), eval_every=8,
                                   num_iterations=2, lr=4e-2, seed=1)
    before, after = steps[0].values, steps[-1].values
    assert steps[0].step == 0 and "eval/reward" in before  # the baseline, before any update
    assert after["eval/reward"] > before["eval/reward"] + 0.1  # held-out reward clearly up
    train = [e.values for e in steps[1:]]
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the adapter starts at zero: policy == reference
    assert max(t["kl"] for t in train[-4:]) > 0.01
    assert all("groups/zero_std" in t and 0 <= t["frac_reward_zero_std"] <= 1 for t in train)
    assert any(t["frac_reward_zero_std"] > 0 for t in train)  # early groups without a digit were skipped
    assert any(t["clip_ratio/region_mean"] > 0 for t in train)  # a second iteration moves past the clip
    for key in ("reward", "reward_std", "completions/mean_length", "rewards/digits/mean", "rewards/letters/mean",
                "pass_rate", "samples_per_s", "tokens_per_s", "grad_norm", "learning_rate", "eval/distinct_2",
                "eval/entropy", "eval/kl"):
        assert key in train[-1] or key in after, key
    # the held-out signal is the verifier the run does not optimize (letters), and digits crowd letters out
    assert after["eval/signal_is_proxy"] == 0 and after["eval/signal"] < before["eval/signal"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 16 * 4 * 8 and {x["step"] for x in lines} == set(range(1, 17))
    first = lines[0]
    assert {r["name"] for r in first["rewards"]} >= {"digits", "letters"} and "advantage" in first
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [e["step"] for e in report["evaluations"]] == [0, 8, 16]
    assert (tmp_path / "run" / "report.svg").read_text().startswith("<svg")
    kinds = dict(result.artifacts)
    assert Path(kinds["adapter-best"], "best.json").is_file() and Path(kinds["adapter"]).is_dir()
    assert result.metrics["best/step"] == report["best"]["step"]


def test_llamacpp_rollouts_swap_the_adapter_and_measure_the_gap(flat_model, tmp_path, pm):
    out = tmp_path / "llama"
    _, steps, _ = run_grpo(flat_model, out, pm, 3, rollouts="llamacpp", gap_every=1)
    train = [e.values for e in steps if e.step > 0]
    gaps = [t["sampling/logp_gap_per_token/max"] for t in train]
    assert max(gaps) < 0.01, gaps  # f16 GGUF + LoRA in llama.cpp vs the fp32 trainer: the same distribution
    assert all(0 <= t["sampling/retokenized_mismatch"] < 1 for t in train)
    adapters = sorted(out.glob("adapter-step-*.gguf"))
    # a new path per update, the older ones deleted; the last one carries the final weights (the held-out
    # evaluation after step 3 sampled with it)
    assert [a.name for a in adapters] == ["adapter-step-3.gguf"]
    base = out / "base.f16.gguf"
    ctx = HookContext(pm)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=5)
    chats = [grpo.task_of(t).prompt for t in tasks(3, seed=4)]
    plain = ctx.generate(ModelSpec("llamacpp", str(base)), chats, params)
    tuned = ctx.generate(ModelSpec("llamacpp", str(base), lora=str(adapters[0])), chats, params)
    assert [[c.text for c in g] for g in plain] != [[c.text for c in g] for g in tuned]  # same seeds


def test_a_killed_run_resumes_to_the_same_state(flat_model, tmp_path, pm):
    straight, s_steps, _ = run_grpo(flat_model, tmp_path / "a", pm, 5, checkpoint_every=2)

    class Killed(Exception):
        pass

    def die_at_3(event):
        if event.kind == "metric" and event.step == 3:
            raise Killed()

    run = RunSpec("grpo", ModelSpec("hf", str(flat_model)), tasks(32), str(tmp_path / "b"),
                  config={**FAST, "steps": 5, "checkpoint_every": 2})
    with pytest.raises(Killed):
        grpo.train(run, HookContext(pm, die_at_3))
    events = []
    run.config["resume"] = True
    resumed = grpo.train(run, HookContext(pm, events.append))
    r_steps = [e.values for e in events if e.kind == "metric"]
    assert [e.step for e in events if e.kind == "metric"] == [3, 4, 5]
    straight_by_step = {e.step: e.values for e in s_steps}
    assert [s["reward"] for s in r_steps] == pytest.approx([straight_by_step[k]["reward"] for k in (3, 4, 5)],
                                                           abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed.adapter_dir) / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# -- bad input ------------------------------------------------------------------------------------------


def test_a_weight_naming_a_missing_verifier_fails_before_any_rollout(flat_model, tmp_path, pm):
    with pytest.raises(PlumbError, match="no installed plugin offers the verifier 'nope'.*digits"):
        run_grpo(flat_model, tmp_path / "x", pm, 2, rewards={"digits": 1.0, "nope": 0.5})
    assert not (tmp_path / "x" / "rollouts.jsonl").exists()
    with pytest.raises(ValueError):
        GRPOConfig.from_dict({"num_generations": 1})  # a group of one has no baseline


def test_every_group_without_spread_stops_and_says_why(flat_model, tmp_path, pm):
    with pytest.raises(PlumbError, match=r"no learning signal.*last 3 steps.*mean reward 1\.000.*temperature"):
        run_grpo(flat_model, tmp_path / "z", pm, 10, rewards={"always_one": 1.0}, zero_spread_patience=3)
    assert [p.name for p in (tmp_path / "z" / "checkpoints").iterdir()] == ["step-3"]


def test_a_failing_verifier_is_counted_and_the_step_goes_on(flat_model, tmp_path, pm):
    _, steps, _ = run_grpo(flat_model, tmp_path / "f", pm, 2, rewards={"digits": 1.0, "fragile": 1.0})
    assert all(e.values["rewards/errors"] > 0 for e in steps if e.step > 0)
    lines = [json.loads(x) for x in (tmp_path / "f" / "rollouts.jsonl").read_text().splitlines()]
    failed = [r for x in lines for r in x["rewards"] if r["name"] == "fragile" and r["status"] == "error"]
    assert failed and "cannot score this one" in failed[0]["detail"]


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(flat_model, tmp_path, pm, monkeypatch):
    calls = {"n": 0}
    real = grpo.grpo_loss

    def flaky(*args):
        calls["n"] += 1
        loss, *rest = real(*args)
        return (loss * float("nan") if calls["n"] == 3 else loss, *rest)

    monkeypatch.setattr(grpo, "grpo_loss", flaky)
    with pytest.raises(PlumbError, match=r"non-finite loss or gradient at step 3.*step-2"):
        run_grpo(flat_model, tmp_path / "n", pm, 5, checkpoint_every=2, batch_size=32)
    assert [p.name for p in (tmp_path / "n" / "checkpoints").iterdir()] == ["step-2"]


# -- the stage: tasks from a file, --reward, every rollout stored ------------------------------------------

PLUGIN = plugin_source("digits.py")


def test_plumb_train_grpo_stores_every_rollout(flat_model, tmp_path, runner, workspace):
    from plumb.cli import cli

    (workspace.root / "digits.py").write_text(PLUGIN)
    toml = workspace.root / "plumb.toml"
    toml.write_text(toml.read_text().replace("plugins = []", 'plugins = ["./digits.py"]'))
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text("".join(json.dumps({"prompt": t["messages"][0]["content"], "meta": {"n": i}}) + "\n"
                                 for i, t in enumerate(tasks(12))))
    base = ["train", "grpo", "--policy", f"hf:{flat_model}", "--tasks", str(task_file), "--in-process",
            "-o", "rollouts=\"hf\"", "-o", "max_completion_length=6", "-o", "lr=0.02", "--json"]
    res = runner.invoke(cli, base[:-1] + ["--reward", "missing=2", "--steps", "2"])
    assert res.exit_code == 2 and "no installed plugin offers the verifier 'missing'" in res.output
    res = runner.invoke(cli, base + ["--reward", "digits=2", "--steps", "2", "-o", "eval_every=0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    with workspace.store() as store:
        run = store.run(out["run_id"])
        assert run["status"] == "done" and json.loads(run["config"])["rewards"] == {"digits": 2.0}
        assert [s for s, _ in store.metrics(out["run_id"], "reward")] == [1, 2]
        rollouts = store.query("SELECT * FROM rollouts WHERE run_id = ?", (out["run_id"],))
        assert len(rollouts) == 2 * 2 * 4 and {r["step"] for r in rollouts} == {1, 2}
        sample = store.one("SELECT * FROM samples WHERE id = ?", (rollouts[0]["sample_id"],))
        assert sample["kind"] == "rollout" and sample["plugin"] == "plumb.plugins.grpo"
        assert json.loads(sample["params"])["step"] == 1 and sample["backend"] == "hf"
        names = {r["verifier"] for r in store.query("SELECT verifier FROM rewards WHERE sample_id = ?",
                                                    (sample["id"],))}
        assert "digits" in names
        # a run that stops (no signal) still stores what it sampled, and is marked failed (in a child process)
        child = [a for a in base if a != "--in-process"]
        res = runner.invoke(cli, child + ["--reward", "always_one", "--steps", "9", "-o", "zero_spread_patience=2"])
        assert res.exit_code == 1 and "no learning signal" in res.output
        failed = store.one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        assert failed["status"] == "failed"
        assert store.one("SELECT count(*) FROM rollouts WHERE run_id = ?", (failed["id"],))[0] == 2 * 2 * 4


def test_the_verifier_tutorial_runs_grpo_on_the_example_plugin(flat_model, runner, workspace):
    """The README's tutorial, from the example file to a GRPO run on it: examples/typed_code.py listed in
    plumb.toml, examples/code_tasks.jsonl as the tasks, --reward typed-code; every rollout scored by it."""
    import shutil

    from plumb.cli import cli

    root = Path(__file__).resolve().parents[1] / "examples"
    shutil.copy(root / "typed_code.py", workspace.root / "typed_code.py")
    toml = workspace.root / "plumb.toml"
    toml.write_text(toml.read_text().replace("plugins = []", 'plugins = ["./typed_code.py"]'))
    res = runner.invoke(cli, ["plugins"])
    assert res.exit_code == 0 and "typed-code" in res.output
    res = runner.invoke(cli, ["train", "grpo", "--policy", f"hf:{flat_model}", "--tasks", str(root / "code_tasks.jsonl"),
                              "--reward", "typed-code", "--steps", "2", "--in-process", "-o", "rollouts=\"hf\"",
                              "-o", "max_completion_length=6", "-o", "eval_every=0", "--json"])
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.output[res.output.index("{"):])["run_id"]
    with workspace.store() as store:
        assert store.one("SELECT status FROM runs WHERE id = ?", (run_id,))[0] == "done"
        n = store.one("SELECT count(*) FROM rollouts WHERE run_id = ?", (run_id,))[0]
        scored = store.one("SELECT count(*) FROM rewards r JOIN rollouts o ON o.sample_id = r.sample_id "
                           "WHERE o.run_id = ? AND r.verifier = 'typed-code'", (run_id,))[0]
    assert n == 2 * 2 * 4 and scored == n  # every rollout carries its typed-code reward


class DigitJudge:
    """A judge that prefers the answer with more digits (it agrees with the optimized reward), with a
    backend name of its own; both orders are asked, as the real judge does."""

    class Spec(Backend):  # the judge's spec names this backend; the judge hook answers, nothing generates
        name = "digit-judge"
        description = "judges by digits (tests)"

    @hookimpl
    def plumb_register_backends(self, register):
        register(self.Spec())

    @hookimpl
    def plumb_judge(self, ctx, constitution, requests, judge):
        from plumb.core.records import Judgment

        if judge.backend != "digit-judge":
            return None
        self.calls.append((constitution.name, len(requests)))
        out = []
        for r in requests:
            a, b = (sum(c.isdigit() for c in x) for x in (r.a, r.b))
            winner = "a" if a > b else "b" if b > a else "tie"
            out.append(Judgment(winner, 1.0 if winner == "a" else 0.0 if winner == "b" else 0.5, str(judge)))
        return out

    def __init__(self):
        self.calls = []


def test_a_judge_joins_the_held_out_signal(flat_model, tmp_path):
    from plumb.core.constitution import parse_constitution
    from plumb.core.plugins import get_plugin_manager

    class DigitsOnly:  # no other verifier: the judge is the only held-out signal
        @hookimpl
        def plumb_register_verifiers(self, register):
            register("digits", "fraction of digits", score=digits)

    pm = get_plugin_manager(entry_points=False)
    pm.register(DigitsOnly(), name="digits-only")
    judge = DigitJudge()
    pm.register(judge, name="digit-judge")
    const = parse_constitution('name = "digits"\nversion = "1"\ndescription = "d"\n'
                               '[[principles]]\nid = "digits"\ntext = "Answer in digits."\n')
    with pytest.raises(PlumbError, match="needs the constitution"):
        run_grpo(flat_model, tmp_path / "none", pm, 1, judge="digit-judge:x")
    _, steps, _ = run_grpo(flat_model, tmp_path / "j", pm, 8, held=tasks(6, seed=9), eval_every=8, num_iterations=2,
                           lr=4e-2, judge="digit-judge:x", constitution=const.model_dump(mode="json"))
    first, last = steps[0].values, steps[-1].values
    assert first["eval/judge_win_rate"] == 0.5  # the base against itself: not judged
    assert last["eval/judge_win_rate"] > 0.6  # more digits than the base's answers, as the judge sees it
    assert last["eval/signal"] == last["eval/judge_win_rate"] and last["eval/signal_is_proxy"] == 0
    assert judge.calls == [("digits", 12)]  # once, after training: 6 prompts x 2 samples against the base's
