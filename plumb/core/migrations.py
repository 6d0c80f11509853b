"""Schema migrations for the workspace store, as numbered functions.

Append a new ``mNNN_name(db)`` to ``MIGRATIONS``; never edit an applied one.
Applied names are recorded in ``_plumb_migrations``.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

# Columns every generated row carries, so its origin can always be traced.
PROVENANCE = """
    model TEXT,
    backend TEXT,
    params TEXT,              -- JSON sampling/training parameters
    plugin TEXT,
    plugin_version TEXT,
    constitution_hash TEXT,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
"""


def m001_initial(db: sqlite3.Connection) -> None:
    db.executescript(
        f"""
        CREATE TABLE constitutions (
            hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            source TEXT NOT NULL,     -- the TOML text as loaded
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE, -- sha256 of the messages JSON: one row per distinct prompt
            messages TEXT NOT NULL,   -- JSON list of {{role, content}}, ending with the user turn
            text TEXT NOT NULL,       -- the last user message, for display and search
            task TEXT,                -- JSON: tests / answer / schema / meta for verifiers
            split TEXT NOT NULL DEFAULT 'train',
            source TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'sample',  -- sample | revision | reference | import
            parent_id INTEGER REFERENCES samples(id) ON DELETE SET NULL,
            finish_reason TEXT,
            {PROVENANCE}
        );
        CREATE INDEX samples_prompt ON samples(prompt_id);
        CREATE TABLE critiques (
            id INTEGER PRIMARY KEY,
            sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            revision_id INTEGER REFERENCES samples(id) ON DELETE SET NULL,
            principle_id TEXT NOT NULL,
            critique TEXT NOT NULL,
            {PROVENANCE}
        );
        CREATE TABLE judgments (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
            a_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            b_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie')),
            p_a REAL,
            swap_agree INTEGER,
            judge TEXT NOT NULL,      -- 'human', 'import', or a model spec
            reason TEXT,
            {PROVENANCE}
        );
        CREATE INDEX judgments_prompt ON judgments(prompt_id);
        CREATE TABLE labels (         -- unpaired good/bad feedback (KTO shape)
            id INTEGER PRIMARY KEY,
            sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            label INTEGER NOT NULL CHECK (label IN (0, 1)),
            judge TEXT NOT NULL,
            {PROVENANCE}
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            method TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',  -- running | done | failed
            config TEXT NOT NULL,     -- JSON hyperparameters
            out_dir TEXT,
            error TEXT,
            finished TEXT,
            {PROVENANCE}
        );
        CREATE TABLE metrics (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            key TEXT NOT NULL,
            value REAL,
            PRIMARY KEY (run_id, step, key)
        );
        CREATE TABLE artifacts (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            kind TEXT NOT NULL,       -- adapter | gguf | gguf-lora | checkpoint | report
            path TEXT NOT NULL,
            sha256 TEXT,
            meta TEXT,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [m001_initial]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _plumb_migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL"
        " DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    done = {r[0] for r in db.execute("SELECT name FROM _plumb_migrations")}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        db.execute("BEGIN")
        try:
            # executescript() would commit on its own; run statements one by one instead.
            _in_transaction(db, fn)
            db.execute("INSERT INTO _plumb_migrations (name) VALUES (?)", (fn.__name__,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(fn.__name__)
    return applied


def _in_transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], None]) -> None:
    class _NoCommitScript:
        def __init__(self, inner: sqlite3.Connection) -> None:
            self._inner = inner

        def executescript(self, script: str) -> None:
            for stmt in _split_sql(script):
                self._inner.execute(stmt)

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self._inner, name)

    fn(_NoCommitScript(db))  # type: ignore[arg-type]


def _split_sql(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip():
        out.append(buf)
    return out


def schema_version(db: sqlite3.Connection) -> int:
    try:
        return db.execute("SELECT count(*) FROM _plumb_migrations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
