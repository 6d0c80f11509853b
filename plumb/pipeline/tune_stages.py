"""The stages of one `plumb tune` run (``tune.py`` says their order and why).

``Run`` holds what the stages share (the session, options, sizes, constitution, models,
clock) and what they found (the headroom, whether the critic and the judge earned their
time, the learning rounds), so ``tune()`` reads as the list of stages and the report can
say why each choice was made.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb.core.checks import check_texts, has_checks
from plumb.core.errors import PlumbError
from plumb.core.records import Event, EventSink, SamplingParams
from plumb.pipeline import learn
from plumb.pipeline.agreement import agreement
from plumb.pipeline.compare import CompareOptions, compare
from plumb.pipeline.critique import CritiqueOptions, critique
from plumb.pipeline.evaluate import EvalOptions, evaluate
from plumb.export.lora_to_gguf import scaled_adapter
from plumb.pipeline.export import export_adapter
from plumb.pipeline.judge import JudgeOptions, judge
from plumb.pipeline.pairs import build
from plumb.pipeline.probe import KEEP, free_form, probe
from plumb.pipeline.recipes import RECIPES, Recipe
from plumb.pipeline.sample import SampleOptions, sample
from plumb.pipeline.session import Session
from plumb.pipeline.train import TrainOptions, Trained, train

# lora_dropout 0 (no copy of every LoRA input) and activation checkpointing: the training child's peak memory
# on the starter 5.9 GB -> 2.5 GB (bench/RESULTS.md), for ~30% more time per step
MEMORY = {"lora_dropout": 0.0, "gradient_checkpointing": True}
# a round whose samples from the adapter so far already score this well stops the rounds: on plain-speaker a
# third round moved the checks little and cost facts the first two kept (bench/RESULTS.md)
SATURATED = 0.95
# the LoRA scales the choice tries, largest first, on the best checkpoint when every checkpoint loses facts
# (0.5 cleared the dev bar once in 5 runs, field-notes s0, and that shipped x0.5 kept no more held-out facts, 21/27,
# for the smallest gain of the session, +23; each scale tried costs ~12 s of the choice)
SCALES = (0.75,)
HEADROOM = 0.95  # the base passing more of its checks than this: little to learn
SAMPLE_S = 0.6  # seconds per answer of up to 128 tokens, batched, 2 cores (the starter): sizes the reserve
MIN_ROWS = 4


def sampling_seconds(sizes: Any) -> float:
    """What sampling k answers for every train prompt costs (seconds, 2 cores, the starter)."""
    return SAMPLE_S * sizes.k * sizes.train_prompts


def reserve_seconds(sizes: Any, rounds: int = 1) -> float:
    """What the stages after training cost (seconds, 2 cores, the starter): the checkpoint choice (each
    candidate, the scaled ones too, on the dev prompts and on the dev probe's facts the base knows, greedily
    and 8 times sampled, the base once), the held-out evaluation and the probe (closed-book and free-form,
    both sides), exports and the report. The probe's terms are measured: ~9 s a side on the ~21 dev facts,
    ~22 s closed-book and ~31 s free-form for both sides of the report's 48 questions."""
    per = SAMPLE_S * sizes.max_tokens / 128
    one = per * sizes.dev_prompts + 0.3 * per * sizes.probe_questions  # one side of the choice's questions
    weighed = candidates(sizes, rounds) + len(SCALES)
    return (one * (weighed + 1) + 10 * weighed
            + 2 * per * sizes.eval_prompts + 0.9 * per * 2 * sizes.probe_questions + 25)


def candidates(sizes: Any, rounds: int) -> int:
    """Checkpoints the choice weighs: ``sizes.checkpoints`` in one round, each round's end with several."""
    return max(1, sizes.checkpoints // rounds) * rounds


@dataclass
class Round:
    model: str  # who sampled this round's answers
    prompts: int
    answers: int
    rows: int
    mean_score: float
    pass_share: float
    run_id: int | None = None


@dataclass
class Run:
    session: Session
    opts: Any
    sizes: Any
    const: Any
    base_gguf: str
    train_model: str
    clock: Any
    emit: EventSink
    found: dict[str, Any] = field(default_factory=dict)  # what the report says about each choice
    rounds: list[Round] = field(default_factory=list)
    trained: list[Trained] = field(default_factory=list)  # each round's run, in order
    trusted_judge: str | None = None
    backend: str = "llamacpp"  # serves base_gguf and the adapters (CompareOptions.backend)
    adapters: str = "gguf"  # what that backend serves an adapter from: a GGUF LoRA, or the peft directory itself

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.opts.method]

    def served(self, adapter_dir: str, run_id: int | None, gguf: str) -> str:
        """The trained adapter as the backend serves it: exported to the GGUF LoRA ``gguf`` for llama.cpp, or
        the peft directory itself for servers that load one (its absolute path: they must see it)."""
        if self.adapters == "peft":
            return str(Path(adapter_dir).resolve())
        return str(export_adapter(self.session, adapter_dir, self.train_model.removeprefix("hf:"), run_id, gguf))

    # -- 2. headroom ---------------------------------------------------------------------------
    def headroom(self) -> None:
        """The base's greedy answers to the dev prompts (the checkpoint choice reuses them), checked."""
        if not has_checks(self.const):
            return
        params = SamplingParams(n=1, temperature=0.0, max_tokens=self.sizes.max_tokens, seed=0)
        result = compare(self.session, CompareOptions(self.base_gguf, self.base_gguf, split="dev", params=params,
                                                      constitution=self.opts.constitution,
                                                      limit=self.sizes.dev_prompts, sides=("base",),
                                                      backend=self.backend), self.emit)
        rate = result.checks["base"]
        self.found["headroom"] = {"dev_checks_base": rate, "prompts": len(result.rows)}
        if rate > HEADROOM:
            self.emit(Event("log", message=f"warning: the base already passes {rate:.0%} of this constitution's "
                                           f"checks on {len(result.rows)} dev prompts: there is little to learn. "
                                           "Tighten the checks (e.g. lower word limits) to see a change."))

    # -- 3-6. sample, critique, judge, train (rounds) ----------------------------------------------
    def learn(self) -> None:
        """Each round's training run goes to ``self.trained``."""
        if self.recipe.samples_itself:
            self._grpo()
            return
        train_ids = [p["id"] for p in self.session.store.prompts("train")]
        per_round = max(MIN_ROWS, math.ceil(self.sizes.train_prompts / self.opts.rounds))  # the same sampling in all
        adapter_dir: str | None = None
        trained = None
        for r in range(self.opts.rounds):
            ids = train_ids[(r * per_round) % max(len(train_ids), 1):][:per_round] or train_ids[:per_round]
            model = self._sample(ids, r, adapter_dir)
            self.clock.lap("sample" if r == 0 else "resample")
            if r == 0:
                self._critique()
                self._audit_judge()
            ranked = learn.rank(self.session, self.const, model, ids, self.opts.prefixes)
            saturated = trained is not None and ranked.mean_score() >= SATURATED
            rows = [] if saturated else self._rows(ranked)
            self.rounds.append(Round(model, len(ranked.answers), ranked.n_answers, len(rows),
                                     round(ranked.mean_score(), 4), round(ranked.pass_share(), 4)))
            if saturated:
                self.found["rounds_stopped"] = (
                    f"after round {r}: the adapter's answers already score {ranked.mean_score():.2f} by the checks "
                    f"({ranked.pass_share():.0%} pass every check); another round would cost facts, not add style")
                self.emit(Event("log", message=f"rounds stopped {self.found['rounds_stopped']}"))
                break
            if len(rows) < MIN_ROWS:
                if trained is not None:
                    self.emit(Event("log", message=f"round {r + 1}: only {len(rows)} rows; keeping round {r}"))
                    break
                raise PlumbError(
                    f"only {len(rows)} usable training rows from {ranked.n_answers} answers (the checks tie on the "
                    f"rest: mean score {ranked.mean_score():.2f}, {ranked.pass_share():.0%} pass every check) - too "
                    f"few to train on (at least {MIN_ROWS}). Raise --budget-minutes for more prompts, tighten the "
                    "checks, or use a stronger judge (--judge anthropic:... or a larger GGUF).", exit_code=2)
            trained = self._train(rows, r, adapter_dir)
            self.trained.append(trained)
            self.rounds[-1].run_id = trained.run_id
            adapter_dir = trained.adapter_dir
            self.clock.lap("train")

    def _sample(self, ids: list[int], r: int, adapter_dir: str | None) -> str:
        """k answers per prompt from the base (round 1) or the adapter so far; returns the sampler's spec."""
        spec = self.opts.model
        if adapter_dir is not None:
            lora = self.served(adapter_dir, self.rounds[-1].run_id, str(Path(adapter_dir).parent / "adapter.gguf"))
            spec = f"{self.backend}:{self.base_gguf}+lora:{lora}"
        params = SamplingParams(n=self.sizes.k, temperature=0.8, top_p=0.95, max_tokens=self.sizes.max_tokens,
                                seed=self.opts.seed + r)
        out = sample(self.session, SampleOptions(model=spec, prompt_ids=ids, params=params,
                                                 constitution=self.opts.constitution), self.emit)
        return str(out.spec)

    def _critique(self) -> None:
        """A first look at the critic's revisions; more only when most of them are usable and better than
        the answer they revise by the checks (the ranking picks a revision only when it is the best answer)."""
        if self.opts.critic == "none":
            self.found["critic"] = "off (--critic none)"
            return
        opts = CritiqueOptions(critic=self.opts.critic or self.opts.model, rounds=1,
                               limit=self.sizes.critique_drafts, constitution=self.opts.constitution)
        first = critique(self.session, opts, self.emit)
        better = self._revisions_better()
        if first.usable * 2 < max(first.drafts, 1) or (has_checks(self.const) and better * 2 < max(first.drafts, 1)):
            self.found["critic"] = (f"set aside after a first look: of {first.drafts} revisions {first.drafts - first.usable} "
                                    f"flagged ({dict(first.flags) or 'none'}), {better} better than their draft by "
                                    "the checks")
        else:
            opts.limit = 3 * self.sizes.critique_drafts
            more = critique(self.session, opts, self.emit)
            self.found["critic"] = f"used: {first.usable + more.usable} usable revisions"
        self.emit(Event("log", message=f"critic {self.found['critic']}"))
        self.clock.lap("critique")

    def _revisions_better(self) -> int:
        """Unflagged revisions that score higher by the checks than the answer they revise."""
        rows = self.session.store.query(
            "SELECT d.text AS draft, r.text AS revision FROM critiques c JOIN samples d ON d.id = c.sample_id "
            "JOIN samples r ON r.id = c.revision_id WHERE c.flags IS NULL")
        scored = check_texts(self.session.pm, self.const, [t for r in rows for t in (r["draft"], r["revision"])])
        return sum(scored[2 * i + 1].score > scored[2 * i].score + learn.MIN_GAP for i in range(len(rows)))

    def _audit_judge(self) -> None:
        """The AI judge on a few pairs against the checks: trusted only above chance."""
        if self.opts.judge == "none":
            self.found["judge"] = "off (--judge none)"
            return
        spec = str(self.session.model("generate", self.opts.judge or self.opts.model))
        judge(self.session, JudgeOptions(spec, constitution=self.opts.constitution, limit=self.sizes.judge_audit),
              self.emit)
        if not has_checks(self.const):
            self.trusted_judge = spec
            self.found["judge"] = "the only ranker: the constitution has no code checks"
        else:
            rate = agreement(self.session, spec, self.opts.constitution).with_checks.get("overall")
            if rate is not None and rate.n and rate.interval[0] > 0.5:
                self.trusted_judge = spec
                self.found["judge"] = f"trusted: agreed with the checks {rate}"
            else:
                self.found["judge"] = (f"set aside: agreed with the checks {rate if rate else 'on no pair'}, not "
                                       "better than chance; not asked again in this run")
        self.emit(Event("log", message=f"judge {self.found['judge']}"))
        self.clock.lap("judge")

    def _rows(self, ranked: learn.Ranked) -> list[dict[str, Any]]:
        """The method's rows: from the checks' ranking, and from a trusted judge's verdicts."""
        rows = self.recipe.rows(ranked)
        if self.trusted_judge is not None:
            rows += [self.recipe.judged(p) for p in build(self.session.store, "judge").pairs]
        return rows

    def _planned_seconds(self) -> float:
        """Training seconds the budget plans for each round: what the other stages leave, at their measured
        costs. It sets the steps (and so the schedule and the run's identity: a rerun reuses the run)."""
        sampling = sampling_seconds(self.sizes) * (not self.recipe.samples_itself)
        left = (self.clock.budget - reserve_seconds(self.sizes, self.opts.rounds) - sampling
                - self.clock.seconds.get("prompts", 0))
        return max(left, 1.0) / self.opts.rounds

    def _deadline(self, rounds_left: int) -> float:
        """The seconds this round may really take: its share of what the clock says is left."""
        return max(self.clock.left - reserve_seconds(self.sizes, self.opts.rounds), 1.0) / rounds_left

    def _train(self, rows: list[dict[str, Any]], r: int, init: str | None) -> Trained:
        recipe = self.recipe
        method = recipe.method
        path = learn.write_rows(Path(self.session.root) / f"rows-{method}-round{r + 1}.jsonl", rows)
        seconds = self._deadline(self.opts.rounds - r)
        steps = max(2, min(int(self._planned_seconds() / recipe.step_s), math.ceil(recipe.epochs * len(rows) / 4)))
        config = {"steps": steps, "batch_size": 4, "lr": self.opts.lr or recipe.lr, "schedule": "constant",
                  **recipe.config,
                  "warmup_ratio": 0.0, "max_length": 384, "seed": self.opts.seed, "keep_checkpoints": 0, **MEMORY,
                  "time_limit_s": round(seconds, 1),
                  "checkpoint_every": max(1, math.ceil(steps * self.opts.rounds / candidates(self.sizes, self.opts.rounds)))}
        if recipe.anchored and self.opts.anchor is not None:
            config["anchor"] = self.opts.anchor
        if init is not None:
            config["init_adapter"] = init
        self.emit(Event("log", message=f"round {r + 1}: {method} on {len(rows)} rows for up to {seconds:.0f}s"))
        return train(self.session, TrainOptions(method, policy=self.train_model, data=str(path), config=config,
                                                constitution=self.opts.constitution, isolate=self.opts.isolate),
                     self.emit)

    def _grpo(self) -> None:
        """GRPO with the constitution's checks as rewards, on the train prompts, for the time left."""
        if not has_checks(self.const):
            raise PlumbError("--method grpo needs code checks to reward; this constitution has none (use dpo or "
                             "sft with a judge).", exit_code=2)
        tasks = [{"messages": json.loads(p["messages"])} for p in self.session.store.prompts("train")]
        path = learn.write_rows(Path(self.session.root) / "tasks-grpo.jsonl", tasks)
        seconds = self._deadline(1)
        steps = max(2, int(self._planned_seconds() / self.recipe.step_s))
        config = {"steps": steps, "lr": self.opts.lr or self.recipe.lr, "num_generations": self.sizes.k,
                  "prompts_per_step": 2, "max_completion_length": self.sizes.max_tokens, "temperature": 1.0,
                  "holdout": 0.0, "eval_every": 0, "gap_every": 0, "keep_checkpoints": 0, "seed": self.opts.seed,
                  "time_limit_s": round(seconds, 1), "checkpoint_every": max(1, math.ceil(steps / self.sizes.checkpoints)),
                  "rewards": learn.check_rewards(self.const), "zero_spread_patience": 0, **MEMORY}
        if self.adapters == "peft":  # the rollouts from the servers, each update loaded there
            config["rollouts"] = f"{self.backend}:{self.base_gguf}"
        self.clock.lap("sample")
        trained = train(self.session, TrainOptions(self.recipe.method, policy=self.train_model, tasks=str(path), config=config,
                                                   constitution=self.opts.constitution, isolate=self.opts.isolate),
                        self.emit)
        self.trained.append(trained)
        self.rounds.append(Round("grpo rollouts", len(tasks), 0, 0, 0.0, 0.0, trained.run_id))
        self.clock.lap("train")

    # -- 7. choose -----------------------------------------------------------------------------
    def choose(self) -> tuple[Path, dict[str, Any], Trained]:
        """Every round's checkpoints as GGUF LoRAs, each scored on the dev prompts by the checks, then, the best
        by the checks first, on the dev probe (facts the base knows, not the questions the report's probe asks).
        The first that answers them at least ``probe.KEEP`` as often as the base (closed-book, sampled:
        pipeline.probe) ships: the best by the checks among those that keep them, the earliest among equals
        (less drift for the same score), and the ones after it are not asked. When none keeps them, the update of
        the best by the checks is scaled down (``SCALES``: the weights between the base and it, the model
        averaging that Lin et al. 2023 found the best trade against RLHF's alignment tax) and the largest
        scale that keeps them ships; when none does, the unscaled checkpoint keeping the most. Returns its
        GGUF, the choice and its training run."""
        from plumb.train import checkpoint

        found = [(t, c) for t in self.trained for c in checkpoint.checkpoints(t.out_dir)]
        if not found:
            raise PlumbError(f"the training run left no checkpoints in {self.trained[-1].out_dir}.")
        self.emit(Event("stage", stage="choose", total=len(found),
                        message=f"{len(found)} checkpoints on {self.sizes.dev_prompts} dev prompts by the checks, "
                                f"then on the dev probe's facts the base knows"))
        unscaled = []
        for k, (t, ckpt) in enumerate(found, 1):
            lora = self.served(str(ckpt / "adapter"), t.run_id, str(ckpt / "adapter.gguf"))
            unscaled.append(self._dev(f"round{self.trained.index(t) + 1}/{ckpt.name}", t, str(ckpt / "adapter"),
                                      lora))
            self.emit(Event("progress", stage="choose", step=k, total=len(found)))
        # the probe asks the best by the checks first (the earliest among equals: a stable sort); the first that
        # keeps the facts is the choice, so the ones after it are not asked
        probed, kept = [], None
        for c in sorted(unscaled, key=lambda c: c["checks"], reverse=True):
            probed.append(self._facts(c))
            if _keeps(c):
                kept = c
                break
        if kept is None:
            top = probed[0]
            for scale in SCALES:
                probed.append(self._facts(self._dev(f"{top['name']} x{scale:g}", top["trained"], top["adapter"],
                                                    top["served"], scale)))
                if _keeps(probed[-1]):
                    kept = probed[-1]
                    break
        # with none keeping the facts, the unscaled checkpoint keeping the most: a scale that does not clear the
        # bar is not shipped (on concise-writer x0.5 kept 2 dev facts more, 21 vs 19 of 23, within the noise,
        # for -17 points on the held-out checks, bench/RESULTS.md)
        best = kept or max(unscaled, key=lambda c: (c["facts"].often.value if c["facts"].often else 0.0, c["checks"]))
        lora = best["served"]
        if best["scale"] != 1.0:
            adapter = scaled_adapter(best["adapter"], best["scale"])
            lora = self.served(adapter, best["trained"].run_id,
                               str(Path(adapter).parent / f"{Path(adapter).name}.gguf"))
        choice = {"chosen": best["name"], "scale": best["scale"],
                  "dev_checks": {c["name"]: c["checks"][0] for c in unscaled + [c for c in probed if c["scale"] != 1.0]},
                  "dev_checks_base": unscaled[0]["dev_base"],
                  "dev_facts": {c["name"]: c["facts"].to_dict()["often"] for c in probed},
                  "why": ("the most dev checks passed among the candidates answering the dev probe's facts at "
                          f"least {KEEP:.0%} as often as the base" if kept else
                          f"no candidate answered the dev probe's facts {KEEP:.0%} as often as the base, at any "
                          "scale: the checkpoint keeping the most")}
        return Path(lora), choice, best["trained"]

    def _dev(self, name: str, trained: Trained, adapter: str, served: str, scale: float = 1.0) -> dict[str, Any]:
        """One candidate (an adapter at a LoRA scale; ``served``: as the backend serves it) on the dev prompts
        by the checks."""
        params = SamplingParams(n=1, temperature=0.0, max_tokens=self.sizes.max_tokens, seed=0)
        dev = compare(self.session, CompareOptions(self.base_gguf, served, split="dev", params=params,
                                                   constitution=self.opts.constitution, limit=self.sizes.dev_prompts,
                                                   backend=self.backend, scale=scale))
        return {"name": name, "checks": (dev.checks["tuned"], dev.scores["tuned"]), "dev_base": dev.checks["base"],
                "adapter": adapter, "served": served, "scale": scale, "trained": trained}

    def _facts(self, cand: dict[str, Any]) -> dict[str, Any]:
        """The candidate on the dev probe's facts the base knows (``cand["facts"]``, a ``probe.Probe``)."""
        facts = probe(self.session, self.base_gguf, cand["served"], self.opts.constitution,
                      limit=self.sizes.probe_questions, split="facts-dev", backend=self.backend,
                      known_only=True, scale=cand["scale"])
        cand["facts"] = facts
        self.emit(Event("log", message=f"candidate {cand['name']}: dev checks {cand['checks'][0]:.0%}, facts "
                                       f"answered, tuned over base {facts.often}"))
        return cand

    # -- 9. evaluate -----------------------------------------------------------------------------
    def evaluate(self, adapter_gguf: str) -> tuple[Any, Any]:
        result = evaluate(self.session, EvalOptions(self.base_gguf, adapter_gguf, max_tokens=self.sizes.max_tokens,
                                                    judge=self.trusted_judge, constitution=self.opts.constitution,
                                                    limit=self.sizes.eval_prompts, backend=self.backend), self.emit)
        tax = probe(self.session, self.base_gguf, adapter_gguf, self.opts.constitution, self.emit,
                    self.sizes.probe_questions, backend=self.backend)
        tax.free_form = free_form(self.session, self.base_gguf, adapter_gguf, self.opts.constitution, self.emit,
                                  self.sizes.probe_questions, backend=self.backend)
        return result, tax

    def summary(self) -> dict[str, Any]:
        """What the report says about how this run learned."""
        spent = sum(self.clock.seconds.values()) or 1.0
        return {"method": self.opts.method, "rounds": [r.__dict__ for r in self.rounds],
                "why": METHOD_WHY.get(self.opts.method, ""), **self.found,
                "learning_share": round(self.clock.seconds.get("train", 0.0) / spent, 3)}


def _keeps(cand: dict[str, Any]) -> bool:
    return cand["facts"].ok


METHOD_WHY = {
    "dpo": "each prompt's best and worst answer by the graded checks (the largest gap) as a DPO pair with the "
           "RPO term",
    "sft": "each prompt's best answer of k by the graded checks (rejection sampling)",
    "grpo": "GRPO with the constitution's checks as the rewards, rollouts through llama.cpp",
}

