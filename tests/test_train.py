"""LoRA preference training on the tiny model: data layout, learning, resume, bad input.

The synthetic preference is learnable in a few steps: chosen answers are short
and always end with "so yes yes", rejected ones are long runs of other words.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plumb.core.errors import PlumbError
from plumb.core.context import HookContext
from plumb.core.records import ModelSpec, RunSpec
from plumb.train import TrainConfig, data, logps, loop
from tests.tiny import _WORDS

ROOT = Path(__file__).resolve().parents[1]


def make_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = [w for w in _WORDS if w not in ("so", "yes")]
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 6))) + "?"
        chosen = f"{rng.choice(words)} {rng.choice(words)} so yes yes"
        rejected = " ".join(rng.choice(words) for _ in range(rng.randint(8, 12)))
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def as_rows(pairs: list[dict], method: str) -> list[dict]:
    if method == "kto":
        return [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"}
                for p in pairs for k in ("chosen", "rejected")]
    if method == "sft":
        return [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    return pairs


pytestmark = pytest.mark.usefixtures("one_thread")


FAST = {"lr": 5e-3, "batch_size": 8, "warmup_ratio": 0.0, "checkpoint_every": 1000}


def run_method(tiny_model_dir, tmp_path, method, steps, pairs, held, policy=None, **config):
    events = []
    run = RunSpec(method, ModelSpec("hf", str(tiny_model_dir)), as_rows(pairs, method), str(tmp_path / method),
                  config={**FAST, "steps": steps, **config}, eval_data=held)
    result = loop.train(run, HookContext(None, events.append), policy=policy)
    return result, [e.values for e in events if e.kind == "metric"]


@pytest.fixture
def policy(tiny_model_dir):
    return loop.load_policy(str(tiny_model_dir), TrainConfig(), "cpu")


def heldout_margins(model, tok, held, normalize=False):
    """Policy-minus-reference log-ratio margin (chosen - rejected) per held-out pair."""
    ex = data.prepare(held, tok, "dpo", 512).examples
    batch = data.collate_pairs(ex, tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        pol, n, _, _ = loop.completion_logps(model, batch)
        with model.disable_adapter():
            ref = loop.completion_logps(model, batch)[0]
    ratio = (pol - ref) / (n if normalize else 1)
    c, r = ratio.chunk(2)
    return c - r


# -- data layout ------------------------------------------------------------------------------------


def test_tokenization_follows_trl(policy):
    _, tok = policy
    row = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
           "chosen": "Rayleigh scattering.", "rejected": "Because it is."}
    ex = data.prepare([row], tok, "dpo", 512).examples[0]
    text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ex.prompt == tok(text, add_special_tokens=False)["input_ids"]
    for ids, answer in zip(ex.answers, (row["chosen"], row["rejected"])):
        assert ids[-1] == tok.eos_token_id  # EOS appended once
        assert ex.prompt + ids[:-1] == tok(text + answer, add_special_tokens=False)["input_ids"]


def test_collator_stacks_chosen_then_rejected_right_padded(policy):
    model, tok = policy
    ex = data.prepare(make_pairs(3, 0), tok, "dpo", 512).examples
    b = data.collate_pairs(ex, tok.pad_token_id)
    assert b["input_ids"].shape[0] == 6
    for i, e in enumerate(ex):
        for j, ids in ((i, e.answers[0]), (i + 3, e.answers[1])):
            n = len(e.prompt) + len(ids)
            assert b["input_ids"][j, :n].tolist() == e.prompt + ids
            assert (b["input_ids"][j, n:] == tok.pad_token_id).all() and (b["attention_mask"][j, n:] == 0).all()
            assert b["completion_mask"][j].tolist() == [0] * len(e.prompt) + [1] * len(ids) + [0] * (
                b["input_ids"].shape[1] - n)
    # summed log-probs over answer tokens == the naive full-logits computation
    model.eval()
    with torch.no_grad():
        seq, counts, _, _ = loop.completion_logps(model, b)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        shared, shared_counts, _, _ = loop.completion_logps(model, data.collate_shared(ex, tok.pad_token_id))
    lp = logits.log_softmax(-1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    mask = b["completion_mask"][:, 1:]
    assert torch.allclose(seq, (lp * mask).sum(1), atol=1e-4)
    assert counts.tolist() == mask.sum(1).tolist()
    # one row per pair (prompt + chosen + rejected, rejected masked from chosen): the same numbers
    assert torch.allclose(shared, seq, atol=1e-4) and shared_counts.tolist() == counts.tolist()
    s = data.collate_shared(ex, tok.pad_token_id)
    assert s["input_ids"].shape == (3, max(e.tokens - len(e.prompt) for e in ex))


def test_head_logps_matches_autograd_through_full_logits():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight, labels = torch.randn(50, 16, dtype=torch.float64), torch.randint(0, 50, (37,))
    fused = logps.HeadLogps.apply(hidden, weight, labels, 8)  # chunks of 8 rows: 5 chunks, the last partial
    naive = (hidden @ weight.T).log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    assert torch.allclose(fused, naive.float(), atol=1e-5)
    w = torch.randn(37, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad((fused * w).sum(), hidden)
    (g_naive,) = torch.autograd.grad((naive * w).sum(), hidden)
    assert torch.allclose(g_fused, g_naive, atol=1e-5)


def test_head_logps_kl_matches_autograd_through_full_logits():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    ref_hidden = torch.randn(37, 16, dtype=torch.float64)
    weight, labels = torch.randn(50, 16, dtype=torch.float64), torch.randint(0, 50, (37,))
    tok, kl = logps.HeadLogpsKL.apply(hidden, ref_hidden, weight, labels, 8)
    lp, lq = (hidden @ weight.T).log_softmax(-1), (ref_hidden @ weight.T).log_softmax(-1)
    naive_tok = lp.gather(-1, labels[:, None]).squeeze(-1)
    naive_kl = (lq.exp() * (lq - lp)).sum(-1)
    assert torch.allclose(tok, naive_tok.float(), atol=1e-5) and torch.allclose(kl, naive_kl.float(), atol=1e-5)
    assert (kl >= 0).all()
    w, v = torch.randn(37, dtype=torch.float64), torch.randn(37, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad((tok * w).sum() + (kl * v).sum(), hidden)
    (g_naive,) = torch.autograd.grad((naive_tok * w).sum() + (naive_kl * v).sum(), hidden)
    assert torch.allclose(g_fused, g_naive, atol=1e-5)
    # at the reference itself the KL is 0 and so is its gradient
    same = hidden.detach().clone().requires_grad_(True)
    _, kl0 = logps.HeadLogpsKL.apply(same, same.detach(), weight, labels, 8)
    (g0,) = torch.autograd.grad(kl0.sum(), same)
    assert kl0.abs().max() < 1e-6 and g0.abs().max() < 1e-6


def test_truncation_drops_and_bad_rows_are_counted(policy):
    _, tok = policy
    long_prompt = " ".join(["water fire earth air"] * 40)
    rows = [{"prompt": long_prompt, "chosen": "yes", "rejected": "no no"},  # prompt alone too long: dropped
            {"prompt": "short one?", "chosen": "same", "rejected": "same"},  # teaches nothing: dropped
            {"prompt": "the long answer " * 5, "chosen": "a b c d e f g", "rejected": "h"}]  # cut from the left
    prep = data.prepare(rows, tok, "dpo", 40)
    assert prep.counts["prompt_too_long"] == 1 and prep.counts["same_answers"] == 1
    assert prep.counts["truncated"] == 1 and len(prep.examples) == 1
    e = prep.examples[0]
    full = data.tokenize(tok, [{"role": "user", "content": rows[2]["prompt"]}], [rows[2]["chosen"]])[1][0]
    assert e.answers[0] == full  # the answer is kept whole
    assert len(e.prompt) + len(e.answers[0]) <= 40
    with pytest.raises(PlumbError, match="all 1 were dropped.*1 same answers"):
        data.check_data(data.prepare(rows[1:2], tok, "dpo", 40), "dpo")
    with pytest.raises(PlumbError, match="empty"):
        data.check_data(data.prepare([], tok, "dpo", 40), "dpo")


# -- learning -------------------------------------------------------------------------------------


def test_dpo_learns_and_leaves_the_reference_untouched(tiny_model_dir, tmp_path, policy):
    model, tok = policy
    pairs, held = make_pairs(32, 0), make_pairs(16, 1)
    probe = data.collate_pairs(data.prepare(held[:4], tok, "dpo", 512).examples, tok.pad_token_id)
    with torch.no_grad():
        base_logits = model.get_base_model()(input_ids=probe["input_ids"]).logits.clone()
    before = heldout_margins(model, tok, held)
    result, steps = run_method(tiny_model_dir, tmp_path, "dpo", 20, pairs, held, policy=policy)

    losses = [s["loss"] for s in steps]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # adapter starts at zero: policy == reference
    assert sum(losses[-3:]) / 3 < 0.3 * losses[0]
    assert steps[-1]["rewards/accuracies"] >= 0.9
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "grad_norm", "learning_rate", "tokens_per_s", "peak_memory_mb"):
        assert key in steps[-1]
    after = heldout_margins(model, tok, held)
    assert before.abs().max() < 1e-4 and after.mean() > 1.0 and (after > 0).float().mean() >= 0.9
    assert result.metrics["eval/rewards/accuracies"] >= 0.9
    with torch.no_grad():
        with model.disable_adapter():
            ref_logits = model(input_ids=probe["input_ids"]).logits
        tuned_logits = model(input_ids=probe["input_ids"]).logits
    assert torch.equal(ref_logits, base_logits)  # bit for bit: the base weights never moved
    assert not torch.allclose(tuned_logits, base_logits)
    assert (Path(result.adapter_dir) / "adapter_config.json").is_file()


@pytest.mark.parametrize("method,normalize", [("kto", False), ("orpo", True), ("ipo", True), ("hinge", False)])
def test_other_methods_move_the_heldout_preference(tiny_model_dir, tmp_path, policy, method, normalize):
    model, tok = policy
    pairs, held = make_pairs(32, 0), make_pairs(16, 1)
    _, steps = run_method(tiny_model_dir, tmp_path, method, 12, pairs, [], policy=policy)
    assert steps[-1]["loss"] < steps[0]["loss"]
    margins = heldout_margins(model, tok, held, normalize)
    assert margins.mean() > 0.5 and (margins > 0).float().mean() >= 0.75, margins


def test_rpo_alpha_keeps_chosen_likely(tiny_model_dir, tmp_path):
    """DPO alone can push both answers down; RPO's NLL term on chosen keeps the chosen answers likely."""
    pairs, held = make_pairs(32, 0), make_pairs(16, 1)
    _, plain = run_method(tiny_model_dir, tmp_path / "plain", "dpo", 12, pairs, held)
    _, rpo = run_method(tiny_model_dir, tmp_path / "rpo", "dpo", 12, pairs, held, rpo_alpha=1.0)
    assert "nll_loss" in rpo[-1] and "nll_loss" not in plain[-1]
    assert rpo[-1]["logps/chosen"] > plain[-1]["logps/chosen"] + 1.0
    assert rpo[-1]["logps/chosen"] > rpo[0]["logps/chosen"]
    assert rpo[-1]["nll_loss"] < 0.5 * rpo[0]["nll_loss"]


def test_sft_lowers_heldout_nll(tiny_model_dir, tmp_path):
    held = as_rows(make_pairs(8, 1), "sft")
    _, steps = run_method(tiny_model_dir, tmp_path, "sft", 12, make_pairs(32, 0), held, eval_every=1)
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert steps[-1]["eval/loss"] < 0.5 * steps[0]["eval/loss"]


def _end_and_words(model, tok, rows):
    """(mean log-prob of each answer's last token, mean KL(base || model) over the tokens before it)."""
    ex = data.prepare(rows, tok, "sft", 512).examples
    batch = data.collate([(e.prompt, e.answers[0]) for e in ex], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        logp, owner, kl = logps.completion_logps_kl(model, batch)
    last = torch.ones_like(owner, dtype=torch.bool)
    last[:-1] = owner[1:] != owner[:-1]
    return float(logp[last].mean()), float(kl[~last].mean())


def test_sft_anchor_moves_the_end_and_keeps_the_words(tiny_model_dir, tmp_path):
    pairs, held = make_pairs(32, 0), as_rows(make_pairs(8, 1), "sft")
    runs = {}
    for anchor in (0.0, 1.0):
        model, tok = loop.load_policy(str(tiny_model_dir), TrainConfig(), "cpu")
        before = _end_and_words(model, tok, held)
        _, steps = run_method(tiny_model_dir, tmp_path / str(anchor), "sft", 12, pairs, held, policy=(model, tok),
                              content_weight=0.1, anchor=anchor)
        runs[anchor] = (before, _end_and_words(model, tok, held), steps)
    (end0, kl0), (end_free, kl_free), free = runs[0.0]
    _, (end_anchored, kl_anchored), anchored = runs[1.0]
    assert kl0 < 1e-6 and "kl" in anchored[-1] and "kl" not in free[-1]
    assert end_free > end0 + 1.0 and end_anchored > end0 + 1.0  # both learn where the answers end
    assert kl_anchored < 0.5 * kl_free  # the anchored one's words stay much nearer the base's


def test_time_limit_stops_with_a_checkpoint_and_init_adapter_continues(tiny_model_dir, tmp_path):
    """time_limit_s ends the run at the step that would pass it (checkpointed, adapter written);
    init_adapter starts a new run from that adapter's weights (on-policy rounds), not from zero."""
    from plumb.train import checkpoint

    pairs, held = make_pairs(32, 0), as_rows(make_pairs(8, 1), "sft")
    result, steps = run_method(tiny_model_dir, tmp_path / "a", "sft", 1000, pairs, held, time_limit_s=0.5)
    assert 1 <= len(steps) < 1000 and steps[-1]["epoch"] > 0
    assert [c.name for c in checkpoint.checkpoints(str(tmp_path / "a" / "sft"))] == [f"step-{len(steps)}"]
    _, again = run_method(tiny_model_dir, tmp_path / "b", "sft", 1, pairs, held, init_adapter=result.adapter_dir,
                          lr=1e-9)
    _, fresh = run_method(tiny_model_dir, tmp_path / "c", "sft", 1, pairs, held, lr=1e-9)
    assert again[0]["loss"] < fresh[0]["loss"]  # it starts where the first run ended


def test_gradient_checkpointing_gives_the_same_losses(tiny_model_dir, tmp_path):
    pairs = make_pairs(16, 0)
    _, plain = run_method(tiny_model_dir, tmp_path / "a", "dpo", 3, pairs, [], lora_dropout=0.0)
    _, ckpt = run_method(tiny_model_dir, tmp_path / "b", "dpo", 3, pairs, [], lora_dropout=0.0,
                         gradient_checkpointing=True)
    assert [s["loss"] for s in ckpt] == pytest.approx([s["loss"] for s in plain], abs=1e-5)


# -- resume after a real kill -------------------------------------------------------------------------

KILLED = """
import sys, time
from pathlib import Path
from plumb.core.context import HookContext
from plumb.core.records import ModelSpec, RunSpec
from plumb.pipeline.train import rows_from_file
from plumb.train.loop import train
model, pairs, out, marker = sys.argv[1:5]
config = {"steps": 10, "lr": 5e-3, "batch_size": 4, "checkpoint_every": 4, "seed": 3, "resume": False, "gguf": False}
def emit(e):
    if e.kind == "metric" and e.step == 6:  # step-4 checkpoint is on disk; die in the middle of the run
        Path(marker).write_text("ready")
        time.sleep(120)
train(RunSpec("dpo", ModelSpec("hf", model), rows_from_file(pairs, "pairs"), out, config), HookContext(None, emit))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "plumb", "train", "dpo", *args, "--json"], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_resume_after_kill_reaches_the_same_final_loss(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(24, 5)))
    script, marker, out = tmp_path / "killed.py", tmp_path / "ready", tmp_path / "killed"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dir), str(pairs), str(out), str(marker)],
                            env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the training subprocess never reached step 6"
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]

    flags = ["--policy", f"hf:{tiny_model_dir}", "--data", str(pairs), "--steps", "10", "--lr", "5e-3",
             "--batch-size", "4", "--seed", "3"]
    resumed = _cli(*flags, "--out", str(out), "--resume", cwd=tmp_path)
    straight = _cli(*flags, "--out", str(tmp_path / "straight"), cwd=tmp_path)
    assert resumed["metrics"]["loss"] == pytest.approx(straight["metrics"]["loss"], abs=1e-5)
    assert resumed["metrics"]["loss"] < 0.69  # it trained


# -- bad input --------------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = loop.losses.dpo_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return (out[0] * float("nan"),) + out[1:] if calls["n"] == 5 else out

    monkeypatch.setattr(loop.losses, "dpo_loss", flaky)
    with pytest.raises(PlumbError, match=r"step 5, micro-batch 0.*step-4"):
        run_method(tiny_model_dir, tmp_path, "dpo", 8, make_pairs(16, 0), [], checkpoint_every=2)
    assert sorted(p.name for p in (tmp_path / "dpo" / "checkpoints").iterdir()) == ["step-2", "step-4"]


def test_out_of_memory_names_the_knobs(tiny_model_dir, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "batch_loss", oom)
    with pytest.raises(PlumbError, match="--batch-size 8.*--max-length.*gradient_checkpointing"):
        run_method(tiny_model_dir, tmp_path, "dpo", 2, make_pairs(8, 0), [])


def test_bad_model_directories(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, T5Config

    no_tok = tmp_path / "no-tokenizer"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(no_tok)
    with pytest.raises(PlumbError, match="tokenizer"):
        loop.load_policy(str(no_tok), TrainConfig(), "cpu")
    t5 = tmp_path / "t5"
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8).save_pretrained(t5)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (t5 / f).write_bytes((tiny_model_dir / f).read_bytes())
    with pytest.raises(PlumbError, match="unsupported model architecture"):
        loop.load_policy(str(t5), TrainConfig(), "cpu")


def test_all_pairs_identical_is_an_error(tiny_model_dir, tmp_path):
    rows = [{"prompt": "q?", "chosen": "same answer", "rejected": "same answer"}] * 3
    with pytest.raises(PlumbError, match="3 same answers"):
        run_method(tiny_model_dir, tmp_path, "dpo", 2, rows, [])


# -- the command ----------------------------------------------------------------------------------


def test_plumb_train_records_the_run(tiny_model_dir, tmp_path, runner, workspace):
    from plumb.cli import cli
    from plumb.core.plugins import get_plugin_manager

    assert {"dpo", "ipo", "hinge", "kto", "orpo", "sft"} <= {
        *get_plugin_manager().registry.methods}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(16, 0)))
    res = runner.invoke(cli, ["data", "import", str(pairs)])
    assert res.exit_code == 0, res.output
    run_toml = tmp_path / "run.toml"
    run_toml.write_text("[train]\nsteps = 3\nlr = 5e-3\ngrad_accum = 2\nbatch_size = 4\n")
    res = runner.invoke(cli, ["train", "dpo", "--policy", f"hf:{tiny_model_dir}", "--config", str(run_toml),
                              "--eval", str(pairs), "--gguf", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    with workspace.store() as store:
        run = store.run(out["run_id"])
        assert run["status"] == "done" and run["method"] == "dpo"
        assert [s for s, _ in store.metrics(out["run_id"], "loss")] == [1, 2, 3]
        assert len(store.metrics(out["run_id"], "rewards/accuracies")) == 3
        kinds = [r["kind"] for r in store.query("SELECT kind FROM artifacts WHERE run_id = ?", (out["run_id"],))]
    assert kinds == ["adapter", "gguf-lora"]
    assert out["metrics"]["epoch"] == 1.5  # 3 steps x 2 micro-batches of 4 = 24 of 16 pairs
    assert json.loads(run["config"])["lr"] == 5e-3
    assert (Path(out["adapter"]) / "adapter_model.safetensors").is_file()
    assert Path(out["artifacts"][1][1]).stat().st_size > 0
    res = runner.invoke(cli, ["train", "dpo", "--policy", f"hf:{tiny_model_dir}", "--data",
                              str(tmp_path / "none.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.output
