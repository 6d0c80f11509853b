"""The workspace store: one SQLite file (WAL, foreign keys on).

Every public write is its own committed transaction unless it runs inside
``with store.transaction():``, which commits the whole block or nothing. A
process killed at any moment leaves the database consistent and loses at most
the write in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from plumb.core.migrations import migrate, schema_version


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
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._depth = 0
        migrate(self.db)

    @property
    def schema_version(self) -> int:
        return schema_version(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator["Store"]:
        """All writes in the block commit together, or none do."""
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

    def prompts(self, split: str | None = None) -> list[sqlite3.Row]:
        if split:
            return self.db.execute("SELECT * FROM prompts WHERE split = ? ORDER BY id", (split,)).fetchall()
        return self.db.execute("SELECT * FROM prompts ORDER BY id").fetchall()

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

    def add_critique(
        self, sample_id: int, principle_id: str, critique: str, revision_id: int | None, prov: Provenance
    ) -> int:
        return self._insert(
            "critiques",
            {"sample_id": sample_id, "principle_id": principle_id, "critique": critique,
             "revision_id": revision_id, **prov.columns()},
        )

    def add_judgment(
        self,
        prompt_id: int,
        a_id: int,
        b_id: int,
        winner: str,
        judge: str,
        prov: Provenance,
        p_a: float | None = None,
        swap_agree: bool | None = None,
        reason: str = "",
    ) -> int:
        return self._insert(
            "judgments",
            {"prompt_id": prompt_id, "a_id": a_id, "b_id": b_id, "winner": winner, "judge": judge,
             "p_a": p_a, "swap_agree": None if swap_agree is None else int(swap_agree),
             "reason": reason, **prov.columns()},
        )

    def add_label(self, sample_id: int, label: bool, judge: str, prov: Provenance) -> int:
        return self._insert(
            "labels", {"sample_id": sample_id, "label": int(label), "judge": judge, **prov.columns()}
        )

    # -- runs, metrics, artifacts --------------------------------------------------

    def start_run(self, method: str, config: dict[str, Any], out_dir: str, prov: Provenance) -> int:
        return self._insert(
            "runs", {"method": method, "config": json.dumps(config, sort_keys=True, default=str),
                     "out_dir": out_dir, **prov.columns()},
        )

    def finish_run(self, run_id: int, status: str = "done", error: str | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status = ?, error = ?, finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                " WHERE id = ?",
                (status, error, run_id),
            )

    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, key, value) VALUES (?, ?, ?, ?)",
                [(run_id, step, k, float(v)) for k, v in values.items()],
            )

    def metrics(self, run_id: int, key: str) -> list[tuple[int, float]]:
        rows = self.db.execute(
            "SELECT step, value FROM metrics WHERE run_id = ? AND key = ? ORDER BY step", (run_id, key)
        )
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

    def preference_pairs(self) -> list[dict[str, Any]]:
        """Decided judgments as prompt messages / chosen / rejected (ties skipped)."""
        rows = self.db.execute(
            """
            SELECT p.messages, sa.text AS a, sb.text AS b, j.winner
            FROM judgments j
            JOIN prompts p ON p.id = j.prompt_id
            JOIN samples sa ON sa.id = j.a_id
            JOIN samples sb ON sb.id = j.b_id
            WHERE j.winner != 'tie' AND p.split = 'train'
            ORDER BY j.id
            """
        )
        out = []
        for r in rows:
            chosen, rejected = (r["a"], r["b"]) if r["winner"] == "a" else (r["b"], r["a"])
            out.append({"messages": json.loads(r["messages"]), "chosen": chosen, "rejected": rejected})
        return out

    def sft_examples(self) -> list[dict[str, Any]]:
        """Prompt messages with a good answer: references, revisions and judged winners."""
        rows = self.db.execute(
            """
            SELECT p.messages, s.text FROM samples s JOIN prompts p ON p.id = s.prompt_id
            WHERE p.split = 'train' AND (s.kind IN ('reference', 'revision')
               OR s.id IN (SELECT CASE winner WHEN 'a' THEN a_id ELSE b_id END
                           FROM judgments WHERE winner != 'tie')
               OR s.id IN (SELECT sample_id FROM labels WHERE label = 1))
            ORDER BY s.id
            """
        )
        return [{"messages": json.loads(r[0]), "completion": r[1]} for r in rows]

    def labelled(self) -> list[dict[str, Any]]:
        """Unpaired good/bad examples: explicit labels plus both sides of each pair."""
        out = [
            {"messages": json.loads(r[0]), "completion": r[1], "label": bool(r[2])}
            for r in self.db.execute(
                "SELECT p.messages, s.text, l.label FROM labels l JOIN samples s ON s.id = l.sample_id"
                " JOIN prompts p ON p.id = s.prompt_id WHERE p.split = 'train' ORDER BY l.id"
            )
        ]
        for pair in self.preference_pairs():
            out.append({"messages": pair["messages"], "completion": pair["chosen"], "label": True})
            out.append({"messages": pair["messages"], "completion": pair["rejected"], "label": False})
        return out

    def counts(self) -> dict[str, int]:
        tables = ["prompts", "samples", "critiques", "judgments", "labels", "runs", "artifacts"]
        return {t: self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
