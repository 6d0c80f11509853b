"""Over-optimization in view: GRPO's held-out evaluation, best checkpoint and report.

Every ``eval_every`` steps (and at the end) the policy answers held-out prompts
(``eval_samples`` each, fixed seeds so evaluations compare); the answers are
scored by every verifier and constitution check. Logged beside the proxy
reward (``eval/reward``, the weighted rewards the run optimizes):

* ``eval/signal``: the mean of the signals the run does *not* optimize: the
  verifiers and checks without a weight (their mean), and with a ``judge`` set,
  ``eval/judge_win_rate`` — each held-out answer judged against the base
  policy's answer to the same prompt with the same seed (kept from the step-0
  evaluation), both orders, a tie counting half (0.5 at step 0 by definition).
  When there are none it falls back to the held-out proxy reward
  (``eval/signal_is_proxy`` = 1), said once in the log;
* ``eval/kl``: k3 KL to the reference on the held-out answers;
* diversity: ``eval/distinct_2`` (distinct word bigrams / bigrams) and
  ``eval/entropy`` (mean token entropy of the policy on its answers).

``Watch`` warns when the held-out proxy rises while the held-out signal falls
(reward hacking's signature), keeps the best adapter by the held-out signal in
``OUT/best-adapter`` (not simply the last), and writes ``OUT/report.json`` and
``OUT/report.svg`` (proxy and held-out signal plotted against KL).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from plumb.core.constitution import Constitution
from plumb.core.errors import PlumbError
from plumb.core.diversity import distinct2
from plumb.core.records import JudgeRequest, SamplingParams
from plumb.train.logps import _plain_head
from plumb.train.rollouts import batch_of, reward_metrics, score, token_logps

EVAL_SEED = 424242
TOL = 0.01  # a change smaller than this is not a trend


@torch.no_grad()
def token_stats(model, batch: dict[str, Any], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of the policy at each completion token; logits built in row chunks."""
    base = model.get_base_model()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    labels = batch["labels"]
    if _plain_head(base):
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
        rows, weight = hidden.reshape(-1, hidden.shape[-1])[batch["src"]], base.get_output_embeddings().weight
        chunks = ((rows[i:i + 512] @ weight.T) for i in range(0, rows.shape[0], 512))
    else:
        logits = model(**inputs, use_cache=False).logits
        chunks = iter([logits.reshape(-1, logits.shape[-1])[batch["src"]]])
    lps, ents, start = [], [], 0
    for logits in chunks:
        logp = (logits.float() / temperature).log_softmax(-1)
        lps.append(logp.gather(-1, labels[start:start + logp.shape[0], None]).squeeze(-1))
        ents.append(-(logp.exp() * logp).sum(-1))
        start += logp.shape[0]
    return torch.cat(lps), torch.cat(ents)


def judge_win_rate(ctx, cfg, held, rolls, base: list[str]) -> float:
    """The share of held-out answers the judge prefers to the base policy's answer in the same place (both
    orders through ``plumb_judge``; a tie or an order-inconsistent verdict counts half)."""
    requests = [JudgeRequest(held[r.prompt].prompt, r.completion.text, b) for r, b in zip(rolls, base)]
    const = Constitution.model_validate(cfg.constitution)
    judgments = ctx.judge(const, requests, cfg.judge)
    if judgments is None:
        raise PlumbError(f"no installed plugin judges with {cfg.judge} (plumb_judge).")
    return sum(1.0 if j.winner == "a" else 0.5 if j.winner == "tie" else 0.0 for j in judgments) / len(judgments)


def evaluate(ctx, sampler, model, tokenizer, held, cfg, weights: dict[str, float], step: int,
             autocast, base: list[str] | None = None) -> tuple[dict[str, float], list[str]]:
    """Held-out metrics (``eval/...``) of the current policy, and its answers (the base's, at step 0, are
    what later answers are judged against)."""
    sp = SamplingParams(n=cfg.eval_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_tokens=cfg.max_completion_length, seed=EVAL_SEED)
    rolls = sampler.sample([t.prompt for t in held], sp)
    texts = [r.completion.text for r in rolls]
    scored = score(ctx, [held[r.prompt] for r in rolls], [r.completion for r in rolls], weights, cfg.checks)
    proxy = [s.reward for s in scored if not math.isnan(s.reward)]
    others = [sum(v.values()) / len(v) for v in (s.values(exclude=set(weights)) for s in scored) if v]
    out = {"eval/reward": sum(proxy) / len(proxy) if proxy else math.nan,
           **reward_metrics(scored, "eval/"), "eval/distinct_2": distinct2(texts),
           "eval/completions/mean_length": sum(len(r.ids) for r in rolls) / len(rolls)}
    signals = [sum(others) / len(others)] if others else []
    if cfg.judge:
        out["eval/judge_win_rate"] = 0.5 if base is None else judge_win_rate(ctx, cfg, held, rolls, base)
        signals.append(out["eval/judge_win_rate"])
    out["eval/signal"] = sum(signals) / len(signals) if signals else out["eval/reward"]
    out["eval/signal_is_proxy"] = float(not signals)
    was_training = model.training
    model.eval()
    kl, ent, n = 0.0, 0.0, 0
    rows = [r for r in rolls if r.ids]
    with autocast():
        for i in range(0, len(rows), cfg.batch_size):
            batch = batch_of(model, rows[i:i + cfg.batch_size], tokenizer.pad_token_id,
                           next(model.parameters()).device.type)
            lps, ents = token_stats(model, batch, cfg.temperature)
            with torch.no_grad(), model.disable_adapter():
                ref = token_logps(model, batch, cfg.temperature).float()
            delta = ref - lps
            kl += float((torch.exp(delta) - delta - 1).sum())
            ent += float(ents.sum())
            n += lps.numel()
    model.train(was_training)
    out.update({"eval/kl": kl / max(n, 1), "eval/entropy": ent / max(n, 1)})
    return out, texts


@dataclass
class Watch:
    """The held-out history of a run: over-optimization warnings and the best adapter by the signal."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_signal: float = -math.inf
    said_proxy: bool = False
    base: list[str] | None = None  # the base policy's held-out answers (step 0), for the judge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Watch":
        return cls(**state) if state else cls()

    def update(self, step: int, metrics: dict[str, float], model, out: Path) -> list[str]:
        """Record an evaluation; warn, and save the best adapter, as it calls for. Adds ``best/...`` and
        ``eval/overoptimization`` to ``metrics``; returns the lines to log."""
        point = {"step": step, "kl": metrics.get("kl", metrics["eval/kl"]), "eval/kl": metrics["eval/kl"],
                 **{k: metrics[k] for k in ("reward", "eval/reward", "eval/signal", "eval/judge_win_rate",
                                            "eval/distinct_2", "eval/entropy")
                    if k in metrics}}
        lines = []
        is_proxy = bool(metrics.get("eval/signal_is_proxy"))
        if is_proxy and not self.said_proxy:
            self.said_proxy = True
            lines.append("no held-out signal besides the optimized rewards (no unweighted verifier or check applies "
                         "to the held-out prompts): the best checkpoint is chosen by the held-out proxy reward.")
        warn = 0.0
        if self.history and not is_proxy:
            prev = self.history[-1]
            up = point["eval/reward"] - prev.get("eval/reward", math.nan)
            down = prev.get("eval/signal", math.nan) - point["eval/signal"]
            if up > TOL and down > TOL:
                warn = 1.0
                lines.append(f"warning: over-optimization? at step {step} the optimized reward rose on held-out "
                             f"prompts ({prev['eval/reward']:.3f} -> {point['eval/reward']:.3f}) while the signal it "
                             f"does not optimize fell ({prev['eval/signal']:.3f} -> {point['eval/signal']:.3f}), "
                             f"KL {point['kl']:.4f}. The best checkpoint by that signal is kept in best-adapter.")
        self.history.append(point)
        signal = point["eval/signal"]
        if not math.isnan(signal) and signal > self.best_signal:
            self.best_step, self.best_signal = step, signal
            tmp, best = out / ".best-adapter.tmp", out / "best-adapter"
            model.save_pretrained(tmp)
            (tmp / "best.json").write_text(json.dumps({"step": step, "signal": signal}))
            if best.exists():
                shutil.rmtree(best)
            tmp.rename(best)
        metrics.update({"eval/overoptimization": warn, "best/step": float(self.best_step),
                        "best/signal": self.best_signal})
        return lines

    def final_metrics(self) -> dict[str, float]:
        if self.best_step is None:
            return {}
        return {"best/step": float(self.best_step), "best/signal": self.best_signal}

    def finish(self, out: Path, tokenizer) -> list[tuple[str, str]]:
        """Write the report (JSON + SVG plot against KL); the artifacts to record."""
        if not self.history:
            return []
        report = {"evaluations": self.history, "best": {"step": self.best_step, "signal": self.best_signal}}
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.svg").write_text(plot(self.history))
        artifacts = [("report", str(out / "report.json")), ("report-plot", str(out / "report.svg"))]
        best = out / "best-adapter"
        if best.is_dir():
            tokenizer.save_pretrained(best)
            artifacts.insert(0, ("adapter-best", str(best)))
        return artifacts


def plot(history: list[dict[str, float]], width: int = 480, height: int = 300) -> str:
    """An SVG of the held-out proxy reward and held-out signal against KL, one point per evaluation."""
    pad = 48
    xs = [h["kl"] for h in history]
    series = [("eval/reward", "#d62728", "held-out proxy reward"), ("eval/signal", "#1f77b4", "held-out signal")]
    ys = [h[k] for h in history for k, _, _ in series if not math.isnan(h.get(k, math.nan))]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1e-6
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    y1 = y1 if y1 > y0 else y0 + 1e-6

    def at(x: float, y: float) -> str:
        return (f"{pad + (x - x0) / (x1 - x0) * (width - 2 * pad):.1f},"
                f"{height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad):.1f}")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">KL to the reference (k3)</text>',
             f'<text x="{pad}" y="{height - pad + 14}">{x0:.3g}</text>',
             f'<text x="{width - pad}" y="{height - pad + 14}" text-anchor="end">{x1:.3g}</text>',
             f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">{y0:.3g}</text>',
             f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{y1:.3g}</text>']
    for k, (key, colour, label) in enumerate(series):
        pts = [at(h["kl"], h[key]) for h in history if not math.isnan(h.get(key, math.nan))]
        if pts:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(pts)}"/>')
            parts += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" fill="{colour}"/>' for p in pts]
        parts.append(f'<text x="{pad + 8}" y="{pad - 20 + 14 * k}" fill="{colour}">{label}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def summary(m: dict[str, float]) -> str:
    """One line for the live bar."""
    text = f"reward {m['reward']:.3f}  kl {m.get('kl', 0.0):.4f}  zero-std {m['frac_reward_zero_std']:.2f}"
    if "eval/signal" in m:
        text += f"  held-out {m['eval/reward']:.3f}/{m['eval/signal']:.3f}"
    return text


def no_signal(streak: int, m: dict[str, float], cfg) -> str:
    level = m.get("reward", math.nan)
    return (f"no learning signal: in each of the last {streak} steps every group's {cfg.num_generations} answers got "
            f"the same reward (mean reward {level:.3f}), so there was nothing to train on. If every answer fails, the "
            f"tasks are too hard (or the reward never applies: check the tasks carry what the verifiers need); if "
            f"every answer passes, too easy. Raise the temperature (now {cfg.temperature:g}) or num_generations "
            f"(now {cfg.num_generations}), or use other tasks.")
