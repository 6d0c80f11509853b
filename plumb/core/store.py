"""The workspace store: one SQLite file (WAL, foreign keys on).

Every public write is its own committed transaction unless it runs inside
``with store.transaction():``, which commits the whole block or nothing. A
process killed at any moment leaves the database consistent and loses at most
the write in flight.

One Store may be shared by threads (the TUI runs long work in workers): a
lock serialises its statements, and a transaction holds the lock until it
commits. Reads go through ``query``/``one``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from plumb.core.checkpoints import latest as latest_checkpoint
from plumb.core.migrations import migrate, schema_version
from plumb.core.owner import Owner
from plumb.core.records import Critique, Judgment, Reward

SOURCES = ("human", "import", "model", "checks")  # whose verdict counts when several judged the same pair


@dataclass(frozen=True)
class Provenance:
    """Where a generated row came from."""

    model: str | None = None
    backend: str | None = None
    params: dict[str, Any] | None = None
    plugin: str | None = None
    plugin_version: str | None = None
    constitution_hash: str | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "params": json.dumps(self.params, sort_keys=True) if self.params is not None else None,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "constitution_hash": self.constitution_hash,
        }


def prompt_key(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._depth = 0
        migrate(self.db)

    @property
    def schema_version(self) -> int:
        return schema_version(self.db)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple | list = ()) -> sqlite3.Row | None:
        with self._lock:
            return self.db.execute(sql, params).fetchone()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator["Store"]:
        """All writes in the block commit together, or none do (the lock is held throughout)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                self.db.execute("ROLLBACK")
                raise
            self._depth = 0
            self.db.execute("COMMIT")

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.transaction():
            cur = self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()))
        return int(cur.lastrowid)  # type: ignore[arg-type]

    # -- constitutions and prompts ----------------------------------------------

    def add_constitution(self, hash: str, name: str, version: str, source: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO constitutions (hash, name, version, source) VALUES (?, ?, ?, ?)",
                (hash, name, version, source),
            )

    def add_prompt(
        self,
        messages: list[dict[str, str]],
        task: dict[str, Any] | None = None,
        split: str = "train",
        source: str | None = None,
    ) -> int:
        """Insert a prompt, or return the id of the identical one already there."""
        key = prompt_key(messages)
        text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        with self.transaction():
            row = self.db.execute("SELECT id FROM prompts WHERE key = ?", (key,)).fetchone()
            if row:
                if task:
                    self.db.execute("UPDATE prompts SET task = ? WHERE id = ?", (json.dumps(task), row[0]))
                return int(row[0])
            return self._insert(
                "prompts",
                {
                    "key": key,
                    "messages": json.dumps(messages),
                    "text": text,
                    "task": json.dumps(task) if task else None,
                    "split": split,
                    "source": source,
                },
            )

    def prompt(self, prompt_id: int) -> sqlite3.Row | None:
        return self.one("SELECT * FROM prompts WHERE id = ?", (prompt_id,))

    def prompts(self, split: str | None = None) -> list[sqlite3.Row]:
        if split:
            return self.query("SELECT * FROM prompts WHERE split = ? ORDER BY id", (split,))
        return self.query("SELECT * FROM prompts ORDER BY id")

    def set_split(self, prompt_ids: list[int], split: str) -> None:
        with self.transaction():
            self.db.executemany("UPDATE prompts SET split = ? WHERE id = ?", [(split, i) for i in prompt_ids])

    # -- generated rows ---------------------------------------------------------

    def add_sample(
        self,
        prompt_id: int,
        text: str,
        prov: Provenance,
        kind: str = "sample",
        parent_id: int | None = None,
        finish_reason: str | None = None,
    ) -> int:
        return self._insert(
            "samples",
            {"prompt_id": prompt_id, "text": text, "kind": kind, "parent_id": parent_id,
             "finish_reason": finish_reason, **prov.columns()},
        )

    def add_critique(self, sample_id: int, critique: Critique, revision_id: int | None, prov: Provenance) -> int:
        """One critique round of sample ``sample_id``; its revision is the sample ``revision_id``."""
        return self._insert(
            "critiques",
            {"sample_id": sample_id, "principle_id": critique.principle_id, "critique": critique.critique,
             "revision_id": revision_id, "round": critique.round,
             "flags": json.dumps(list(critique.flags)) if critique.flags else None, **prov.columns()},
        )

    def add_judgment(self, prompt_id: int, a_id: int, b_id: int, judgment: Judgment, prov: Provenance) -> int:
        """Store a judgment of samples a and b (both orders, when a model judged)."""
        j = judgment
        return self._insert(
            "judgments",
            {"prompt_id": prompt_id, "a_id": a_id, "b_id": b_id, "winner": j.winner, "p_a": j.p_a,
             "source": j.source, "judge": j.judge, "principle_id": j.principle_id, "verdict_ab": j.ab,
             "verdict_ba": j.ba, "p_a_ab": j.p_a_ab, "p_a_ba": j.p_a_ba, "raw_ab": j.raw_ab, "raw_ba": j.raw_ba,
             "consistent": None if j.consistent is None else int(j.consistent), "reason": j.reason,
             **prov.columns()},
        )

    def add_reward(self, sample_id: int, reward: Reward, prov: Provenance) -> int:
        return self._insert(
            "rewards", {"sample_id": sample_id, "verifier": reward.name, "value": float(reward.value),
                        "status": reward.status, "detail": reward.detail, "seconds": reward.seconds,
                        **prov.columns()},
        )

    def add_rollout(self, run_id: int, step: int, group_index: int, sample_id: int, reward: float,
                    advantage: float) -> int:
        return self._insert(
            "rollouts", {"run_id": run_id, "step": step, "group_index": group_index, "sample_id": sample_id,
                         "reward": float(reward), "advantage": float(advantage)},
        )

    def rollout_steps(self, run_id: int) -> set[int]:
        """The steps of run ``run_id`` whose rollouts are stored."""
        return {r[0] for r in self.query("SELECT DISTINCT step FROM rollouts WHERE run_id = ?", (run_id,))}

    def add_label(self, sample_id: int, label: bool, judge: str, prov: Provenance) -> int:
        return self._insert(
            "labels", {"sample_id": sample_id, "label": int(label), "judge": judge, **prov.columns()}
        )

    def samples_made(self, prov: Provenance, prompt_ids: list[int], kind: str = "sample") -> dict[int, list[sqlite3.Row]]:
        """Samples of these prompts already made with exactly this provenance (model, backend,
        params, constitution): what a rerun of the same stage need not make again."""
        c = prov.columns()
        found: dict[int, list[sqlite3.Row]] = {pid: [] for pid in prompt_ids}
        rows = self.query(
            "SELECT * FROM samples WHERE kind = ? AND model IS ? AND backend IS ? AND params IS ?"
            " AND constitution_hash IS ? ORDER BY id",
            (kind, c["model"], c["backend"], c["params"], c["constitution_hash"]))
        for r in rows:
            if r["prompt_id"] in found:
                found[r["prompt_id"]].append(r)
        return found

    # -- runs, metrics, artifacts --------------------------------------------------

    def start_run(self, method: str, config: dict[str, Any], out_dir: str, prov: Provenance,
                  owner: Owner | None = None) -> int:
        """A new ``running`` run owned by ``owner`` (default: this process)."""
        owner = owner or Owner.current()
        return self._insert(
            "runs", {"method": method, "config": json.dumps(config, sort_keys=True, default=str),
                     "out_dir": out_dir, "owner_pid": owner.pid, "owner_start": owner.start,
                     "owner_boot": owner.boot, **prov.columns()},
        )

    def resume_run(self, run_id: int, from_step: int, owner: Owner | None = None) -> None:
        """Run ``run_id`` again (a rerun resuming its checkpoint at ``from_step``): ``running`` again, owned
        by ``owner`` (default: this process), one more attempt; what it logged after ``from_step`` before it
        stopped is dropped, so the steps it trains again are recorded once."""
        owner = owner or Owner.current()
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status = 'running', error = NULL, final_metrics = NULL, finished = NULL,"
                " checkpoint = NULL, attempts = attempts + 1, owner_pid = ?, owner_start = ?, owner_boot = ?,"
                " child_pid = NULL, child_start = NULL WHERE id = ?",
                (owner.pid, owner.start, owner.boot, run_id))
            self.db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, from_step))
            self.db.execute("DELETE FROM rollouts WHERE run_id = ? AND step > ?", (run_id, from_step))

    def set_run_child(self, run_id: int, child: Owner) -> None:
        """Record the process that trains run ``run_id`` on behalf of its owner."""
        with self.transaction():
            self.db.execute("UPDATE runs SET child_pid = ?, child_start = ? WHERE id = ?",
                            (child.pid, child.start, run_id))

    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   metrics: dict[str, float] | None = None, checkpoint: str | None = None) -> None:
        """Close a run: ``status`` is done, failed or interrupted; ``checkpoint``: where a rerun resumes."""
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status = ?, error = ?, final_metrics = ?, checkpoint = ?,"
                " finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
                (status, error, json.dumps(metrics) if metrics is not None else None, checkpoint, run_id),
            )

    def reap_runs(self) -> list[int]:
        """Turn every ``running`` run whose processes are all gone into ``interrupted``, naming its last
        checkpoint; return their ids. A run is orphaned when neither the process that opened it nor its
        training child lives (``Owner.alive``); a run from before owners were recorded has none alive.
        A child that outlives its parent keeps the run ``running``: it stops at its next step (the
        parent-death signal) and marks the run itself."""
        orphaned = []
        for r in self.query("SELECT * FROM runs WHERE status = 'running'"):
            boot = r["owner_boot"]
            owners = [Owner(pid, start, boot) for pid, start in ((r["owner_pid"], r["owner_start"]),
                                                                 (r["child_pid"], r["child_start"])) if pid]
            if any(o.alive() for o in owners):
                continue
            last = latest_checkpoint(r["out_dir"])
            why = ("its process ended without closing it (killed, or the machine stopped)" if owners else
                   "left running by an earlier plumb that did not record its process")
            with self.transaction():  # only if still running: its child may have closed it meanwhile
                self.db.execute(
                    "UPDATE runs SET status = 'interrupted', error = ?, checkpoint = ?,"
                    " finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ? AND status = 'running'",
                    (f"{why}; " + (f"a rerun resumes from {last}" if last else "no checkpoint was written"),
                     str(last) if last else None, r["id"]))
            orphaned.append(r["id"])
        return orphaned

    def run(self, run_id: int) -> sqlite3.Row | None:
        return self.one("SELECT * FROM runs WHERE id = ?", (run_id,))

    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, key, value) VALUES (?, ?, ?, ?)",
                [(run_id, step, k, float(v)) for k, v in values.items()],
            )

    def metrics(self, run_id: int, key: str) -> list[tuple[int, float]]:
        rows = self.query("SELECT step, value FROM metrics WHERE run_id = ? AND key = ? ORDER BY step", (run_id, key))
        return [(r[0], r[1]) for r in rows]

    def add_artifact(
        self, kind: str, path: str, run_id: int | None = None, sha256: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        return self._insert(
            "artifacts", {"run_id": run_id, "kind": kind, "path": path, "sha256": sha256,
                          "meta": json.dumps(meta) if meta else None},
        )

    # -- reading training data ---------------------------------------------------

    def verdicts(self, prefer: tuple[str, ...] = SOURCES, split: str = "train") -> list[dict[str, Any]]:
        """One verdict per judged pair of samples in ``split``, decisive or not.

        A pair of samples judged several times (by a person, an import, a model
        judge, the checks; in either order) gets the verdict of the first source
        in ``prefer`` that judged it (a person's over an import's over a model's
        over the checks' by default), its latest judgment. Judgments from sources
        not in ``prefer`` are ignored. Each row: judgment_id, prompt_id,
        messages, a_id, b_id, a, b, winner, p_a, source, judge, consistent, ab, ba.
        """
        rank = {s: i for i, s in enumerate(prefer)}
        rows = self.query(
            """
            SELECT j.id AS judgment_id, j.prompt_id, j.a_id, j.b_id, j.winner, j.p_a, j.source, j.judge,
                   j.consistent, j.verdict_ab AS ab, j.verdict_ba AS ba, p.messages, sa.text AS a, sb.text AS b
            FROM judgments j
            JOIN prompts p ON p.id = j.prompt_id
            JOIN samples sa ON sa.id = j.a_id
            JOIN samples sb ON sb.id = j.b_id
            WHERE p.split = ?
            ORDER BY j.id
            """, (split,))
        chosen: dict[tuple[int, int], sqlite3.Row] = {}
        for r in rows:
            if r["source"] not in rank:
                continue
            key = (min(r["a_id"], r["b_id"]), max(r["a_id"], r["b_id"]))
            held = chosen.get(key)
            if held is None or rank[r["source"]] <= rank[held["source"]]:
                chosen[key] = r  # a later judgment of an equal source replaces an earlier one
        out = []
        for r in sorted(chosen.values(), key=lambda r: r["judgment_id"]):
            row = dict(r)
            row["messages"] = json.loads(row["messages"])
            out.append(row)
        return out

    def references(self, split: str = "train") -> list[dict[str, Any]]:
        """Reference answers (imported chats' assistant turns) as prompt messages + completion."""
        rows = self.query("SELECT p.messages, s.text FROM samples s JOIN prompts p ON p.id = s.prompt_id "
                          "WHERE p.split = ? AND s.kind = 'reference' ORDER BY s.id", (split,))
        return [{"messages": json.loads(r[0]), "completion": r[1]} for r in rows]

    def labels(self, split: str = "train") -> list[dict[str, Any]]:
        """Unpaired good/bad labels as prompt messages + completion + label."""
        rows = self.query("SELECT p.messages, s.text, l.label FROM labels l JOIN samples s ON s.id = l.sample_id"
                          " JOIN prompts p ON p.id = s.prompt_id WHERE p.split = ? ORDER BY l.id", (split,))
        return [{"messages": json.loads(r[0]), "completion": r[1], "label": bool(r[2])} for r in rows]

    def counts(self) -> dict[str, int]:
        tables = ["prompts", "samples", "critiques", "judgments", "labels", "rewards", "runs", "artifacts"]
        return {t: self.one(f"SELECT count(*) FROM {t}")[0] for t in tables}
