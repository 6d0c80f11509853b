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


def m002_judgments_both_orders_rewards_rollouts(db: sqlite3.Connection) -> None:
    """Judgments keep both orders and who made them; runs keep final metrics and an
    'interrupted' status; rewards and rollouts tables; comments that say what the code
    does (constitutions, runs and artifacts are rebuilt for that: SQLite keeps column
    comments in the CREATE statement). Runs with foreign keys off (see ``migrate``)."""
    db.executescript(
        f"""
        CREATE TABLE constitutions_new (
            hash TEXT PRIMARY KEY,    -- Constitution.hash: sha256 of `source`, first 16 hex digits
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            source TEXT NOT NULL,     -- canonical JSON of the validated constitution (what is hashed)
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        INSERT INTO constitutions_new SELECT hash, name, version, source, created FROM constitutions;
        DROP TABLE constitutions;
        ALTER TABLE constitutions_new RENAME TO constitutions;

        CREATE TABLE judgments_new (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
            a_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            b_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie')),  -- 'tie' also when the orders disagree
            p_a REAL,                 -- probability that a is better: the mean of both orders' p(a)
            source TEXT NOT NULL CHECK (source IN ('human', 'model', 'import', 'checks')),
            judge TEXT NOT NULL,      -- 'human', 'import', 'checks' (the principles' code checks), or a model spec
            principle_id TEXT,        -- NULL: judged against the whole constitution
            verdict_ab TEXT CHECK (verdict_ab IN ('a', 'b', 'tie')),  -- a shown as A
            verdict_ba TEXT CHECK (verdict_ba IN ('a', 'b', 'tie')),  -- b shown as A, mapped back to a/b
            p_a_ab REAL,              -- p(a better) in each order: option log-probs, or 1/0/0.5 from text
            p_a_ba REAL,
            raw_ab TEXT,              -- the judge's replies as given (unparseable ones too)
            raw_ba TEXT,
            consistent INTEGER,       -- 1 both orders agree, 0 they disagree, NULL judged in one order
            reason TEXT,
            {PROVENANCE}
        );
        INSERT INTO judgments_new (id, prompt_id, a_id, b_id, winner, p_a, source, judge, consistent, reason,
                                   model, backend, params, plugin, plugin_version, constitution_hash, created)
            SELECT id, prompt_id, a_id, b_id, winner, p_a,
                   CASE judge WHEN 'human' THEN 'human' WHEN 'import' THEN 'import' ELSE 'model' END,
                   judge, swap_agree, reason,
                   model, backend, params, plugin, plugin_version, constitution_hash, created FROM judgments;
        DROP TABLE judgments;
        ALTER TABLE judgments_new RENAME TO judgments;
        CREATE INDEX judgments_prompt ON judgments(prompt_id);
        CREATE INDEX judgments_pair ON judgments(a_id, b_id);

        CREATE TABLE runs_new (
            id INTEGER PRIMARY KEY,
            method TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
            config TEXT NOT NULL,     -- JSON: the run's validated options, data source and policy
            out_dir TEXT,
            error TEXT,               -- why it failed or stopped (a failed child's last log lines)
            final_metrics TEXT,       -- JSON: the metrics at the end of a finished run
            finished TEXT,
            {PROVENANCE}
        );
        INSERT INTO runs_new (id, method, status, config, out_dir, error, finished,
                              model, backend, params, plugin, plugin_version, constitution_hash, created)
            SELECT id, method, status, config, out_dir, error, finished,
                   model, backend, params, plugin, plugin_version, constitution_hash, created FROM runs;
        DROP TABLE runs;
        ALTER TABLE runs_new RENAME TO runs;

        CREATE TABLE artifacts_new (
            id INTEGER PRIMARY KEY,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            kind TEXT NOT NULL,       -- adapter (peft dir) | gguf-lora | gguf-QUANT | gguf-merged-QUANT | report
            path TEXT NOT NULL,
            sha256 TEXT,
            meta TEXT,                -- JSON: what it was made from (base model, quantization, ...)
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        INSERT INTO artifacts_new SELECT id, run_id, kind, path, sha256, meta, created FROM artifacts;
        DROP TABLE artifacts;
        ALTER TABLE artifacts_new RENAME TO artifacts;

        CREATE TABLE rewards (
            id INTEGER PRIMARY KEY,
            sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            verifier TEXT NOT NULL,
            value REAL NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'timeout')),
            detail TEXT,              -- why: the verifier's reason, truncated failure output
            seconds REAL,
            {PROVENANCE}
        );
        CREATE INDEX rewards_sample ON rewards(sample_id);

        CREATE TABLE rollouts (       -- on-policy samples of a run (GRPO): one row per completion
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            group_index INTEGER NOT NULL,  -- the prompt's group within the step
            sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
            reward REAL NOT NULL,     -- the weighted reward the advantage was computed from
            advantage REAL NOT NULL,
            created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        );
        CREATE INDEX rollouts_run ON rollouts(run_id, step);

        ALTER TABLE critiques ADD COLUMN round INTEGER NOT NULL DEFAULT 1;  -- 1 = critique of the draft
        ALTER TABLE critiques ADD COLUMN flags TEXT;  -- JSON list: why the revision is unusable as chosen
        """
    )


def m003_run_owners(db: sqlite3.Connection) -> None:
    """Runs record who owns them, so a run whose processes are gone is not shown ``running`` forever
    (``Store.reap_runs``): the process that opened the run and, when training runs in a child process,
    the child; each as pid + start time (ticks after boot) + boot id (``plumb.core.owner``). A stopped
    run names the checkpoint a rerun resumes from; ``attempts`` counts the times it was started."""
    db.executescript(
        """
        ALTER TABLE runs ADD COLUMN owner_pid INTEGER;     -- the process that opened the run (CLI, TUI, tune)
        ALTER TABLE runs ADD COLUMN owner_start INTEGER;   -- its start time: /proc/PID/stat field 22
        ALTER TABLE runs ADD COLUMN owner_boot TEXT;       -- /proc/sys/kernel/random/boot_id when it ran
        ALTER TABLE runs ADD COLUMN child_pid INTEGER;     -- the training child, when training runs in one
        ALTER TABLE runs ADD COLUMN child_start INTEGER;
        ALTER TABLE runs ADD COLUMN checkpoint TEXT;       -- the last checkpoint of a run that stopped early
        ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;  -- 2+: resumed into the same row
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [m001_initial, m002_judgments_both_orders_rewards_rollouts,
                                                          m003_run_owners]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _plumb_migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL"
        " DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    done = {r[0] for r in db.execute("SELECT name FROM _plumb_migrations")}
    applied = []
    fk = db.execute("PRAGMA foreign_keys").fetchone()[0]
    # Foreign keys off while migrating (they cannot change inside a transaction): rebuilding a
    # table (create new, copy, drop, rename) must not cascade the drop to the rows that point at it.
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            db.execute("BEGIN")
            try:
                # executescript() would commit on its own; run statements one by one instead.
                _in_transaction(db, fn)
                broken = db.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise sqlite3.IntegrityError(f"{fn.__name__} broke {len(broken)} foreign keys: {broken[:3]}")
                db.execute("INSERT INTO _plumb_migrations (name) VALUES (?)", (fn.__name__,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            applied.append(fn.__name__)
    finally:
        db.execute(f"PRAGMA foreign_keys={'ON' if fk else 'OFF'}")
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
