"""The workspace store: schema, migrations, transactions, and surviving a kill."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from plumb.cli import cli
from plumb.core.migrations import MIGRATIONS, migrate
from plumb.core.records import Judgment
from plumb.core.store import Provenance, Store

PROV = ["model TEXT", "backend TEXT", "params TEXT", "plugin TEXT", "plugin_version TEXT",
        "constitution_hash TEXT", "created TEXT NOT NULL DEFAULT"]
CREATED = ["created TEXT NOT NULL DEFAULT"]
# The whole schema: every table's columns in order ("name TYPE [NOT NULL] [DEFAULT] [PK]"),
# its foreign keys (column -> table.column ON DELETE) and its indexes.
SCHEMA = {
    "_plumb_migrations": (["name TEXT PK", "applied TEXT NOT NULL DEFAULT"], [],
                          ["sqlite_autoindex__plumb_migrations_1"]),
    "constitutions": (["hash TEXT PK", "name TEXT NOT NULL", "version TEXT NOT NULL", "source TEXT NOT NULL",
                       *CREATED], [], ["sqlite_autoindex_constitutions_1"]),
    "prompts": (["id INTEGER PK", "key TEXT NOT NULL", "messages TEXT NOT NULL", "text TEXT NOT NULL", "task TEXT",
                 "split TEXT NOT NULL DEFAULT", "source TEXT", *CREATED], [], ["sqlite_autoindex_prompts_1"]),
    "samples": (["id INTEGER PK", "prompt_id INTEGER NOT NULL", "text TEXT NOT NULL",
                 "kind TEXT NOT NULL DEFAULT", "parent_id INTEGER", "finish_reason TEXT", *PROV],
                ["parent_id -> samples.id SET NULL", "prompt_id -> prompts.id CASCADE"], ["samples_prompt"]),
    "critiques": (["id INTEGER PK", "sample_id INTEGER NOT NULL", "revision_id INTEGER", "principle_id TEXT NOT NULL",
                   "critique TEXT NOT NULL", *PROV, "round INTEGER NOT NULL DEFAULT", "flags TEXT"],
                  ["revision_id -> samples.id SET NULL", "sample_id -> samples.id CASCADE"], []),
    "judgments": (["id INTEGER PK", "prompt_id INTEGER NOT NULL", "a_id INTEGER NOT NULL", "b_id INTEGER NOT NULL",
                   "winner TEXT NOT NULL", "p_a REAL", "source TEXT NOT NULL", "judge TEXT NOT NULL",
                   "principle_id TEXT", "verdict_ab TEXT", "verdict_ba TEXT", "p_a_ab REAL", "p_a_ba REAL",
                   "raw_ab TEXT", "raw_ba TEXT", "consistent INTEGER", "reason TEXT", *PROV],
                  ["a_id -> samples.id CASCADE", "b_id -> samples.id CASCADE", "prompt_id -> prompts.id CASCADE"],
                  ["judgments_pair", "judgments_prompt"]),
    "labels": (["id INTEGER PK", "sample_id INTEGER NOT NULL", "label INTEGER NOT NULL", "judge TEXT NOT NULL", *PROV],
               ["sample_id -> samples.id CASCADE"], []),
    "runs": (["id INTEGER PK", "method TEXT NOT NULL", "status TEXT NOT NULL DEFAULT", "config TEXT NOT NULL",
              "out_dir TEXT", "error TEXT", "final_metrics TEXT", "finished TEXT", *PROV,
              "owner_pid INTEGER", "owner_start INTEGER", "owner_boot TEXT", "child_pid INTEGER",
              "child_start INTEGER", "checkpoint TEXT", "attempts INTEGER NOT NULL DEFAULT"], [], []),
    "metrics": (["run_id INTEGER NOT NULL PK", "step INTEGER NOT NULL PK", "key TEXT NOT NULL PK", "value REAL"],
                ["run_id -> runs.id CASCADE"], ["sqlite_autoindex_metrics_1"]),
    "artifacts": (["id INTEGER PK", "run_id INTEGER", "kind TEXT NOT NULL", "path TEXT NOT NULL", "sha256 TEXT",
                   "meta TEXT", *CREATED], ["run_id -> runs.id SET NULL"], []),
    "rewards": (["id INTEGER PK", "sample_id INTEGER NOT NULL", "verifier TEXT NOT NULL", "value REAL NOT NULL",
                 "status TEXT NOT NULL", "detail TEXT", "seconds REAL", *PROV],
                ["sample_id -> samples.id CASCADE"], ["rewards_sample"]),
    "rollouts": (["id INTEGER PK", "run_id INTEGER NOT NULL", "step INTEGER NOT NULL", "group_index INTEGER NOT NULL",
                  "sample_id INTEGER NOT NULL", "reward REAL NOT NULL", "advantage REAL NOT NULL", *CREATED],
                 ["run_id -> runs.id CASCADE", "sample_id -> samples.id CASCADE"], ["rollouts_run"]),
}


def schema(db: sqlite3.Connection) -> dict:
    out = {}
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
        cols = [" ".join(filter(None, [name, type_, "NOT NULL" if notnull else "", "DEFAULT" if default else "",
                                       "PK" if pk else ""]))
                for _, name, type_, notnull, default, pk in db.execute(f"PRAGMA table_info({table})")]
        fks = sorted(f"{r[3]} -> {r[2]}.{r[4]} {r[6]}" for r in db.execute(f"PRAGMA foreign_key_list({table})"))
        idx = sorted(r[1] for r in db.execute(f"PRAGMA index_list({table})"))
        out[table] = (cols, fks, idx)
    return out


def test_migrate_in_memory_builds_the_whole_schema():
    db = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(db) == [fn.__name__ for fn in MIGRATIONS]
    assert migrate(db) == []  # idempotent
    assert schema(db) == SCHEMA
    sql = {name: text for name, text in db.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")}
    assert "'interrupted'" in sql["runs"] and "canonical JSON" in sql["constitutions"]


def test_migrating_a_v1_workspace_keeps_its_data(tmp_path):
    """m002 rebuilds tables: rows, ids and the rows pointing at them survive (no cascade on the drop)."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    MIGRATIONS[0](db)
    db.execute("INSERT INTO prompts (id, key, messages, text) VALUES (1, 'k', '[]', 'q')")
    db.executemany("INSERT INTO samples (id, prompt_id, text) VALUES (?, 1, ?)", [(1, "a"), (2, "b")])
    db.execute("INSERT INTO judgments (prompt_id, a_id, b_id, winner, p_a, swap_agree, judge) "
               "VALUES (1, 1, 2, 'a', 0.9, 1, 'llamacpp:j.gguf'), (1, 2, 1, 'b', NULL, NULL, 'human')")
    db.execute("INSERT INTO runs (id, method, config, status) VALUES (7, 'dpo', '{}', 'done')")
    db.execute("INSERT INTO metrics VALUES (7, 1, 'loss', 0.5)")
    db.execute("INSERT INTO artifacts (run_id, kind, path) VALUES (7, 'adapter', '/a')")
    db.execute("INSERT INTO constitutions VALUES ('h', 'c', '1', '{}', 'now')")
    db.execute("CREATE TABLE _plumb_migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL DEFAULT 'x')")
    db.execute("INSERT INTO _plumb_migrations (name) VALUES ('m001_initial')")
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    rows = [tuple(r) for r in store.query("SELECT source, consistent, judge FROM judgments ORDER BY id")]
    assert rows == [("model", 1, "llamacpp:j.gguf"), ("human", None, "human")]
    assert store.metrics(7, "loss") == [(1, 0.5)]
    assert store.one("SELECT run_id FROM artifacts")[0] == 7
    assert store.one("SELECT count(*) FROM constitutions")[0] == 1
    assert store.one("PRAGMA foreign_keys")[0] == 1


def test_store_is_usable_from_threads(tmp_path):
    import threading

    store = Store(tmp_path / "s.db")
    pid = store.add_prompt([{"role": "user", "content": "q"}])
    errors = []

    def write(k):
        try:
            for i in range(50):
                with store.transaction():
                    s = store.add_sample(pid, f"{k}-{i}", Provenance())
                    store.add_label(s, True, "human", Provenance())
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.counts()["samples"] == 200 and store.counts()["labels"] == 200


def test_init_creates_wal_db_with_foreign_keys(tmp_path, runner):
    result = runner.invoke(cli, ["init", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "ws" / "plumb.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version == len(MIGRATIONS)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_sample(999, "orphan", Provenance())
    again = runner.invoke(cli, ["init", str(tmp_path / "ws")])
    assert again.exit_code != 0 and "already a plumb workspace" in again.stderr


def test_transaction_commits_all_or_nothing(tmp_path):
    store = Store(tmp_path / "s.db")
    pid = store.add_prompt([{"role": "user", "content": "hi"}])
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_sample(pid, "one", Provenance(model="m"))
            store.add_sample(pid, "two", Provenance(model="m"))
            raise RuntimeError("crash mid-batch")
    assert store.counts()["samples"] == 0
    with store.transaction():
        store.add_sample(pid, "one", Provenance(model="m"))
    assert store.counts()["samples"] == 1


def test_prompts_deduplicate_and_keep_task(tmp_path):
    store = Store(tmp_path / "s.db")
    msgs = [{"role": "user", "content": "2+2?"}]
    a = store.add_prompt(msgs)
    b = store.add_prompt(msgs, task={"answer": "4"})
    assert a == b
    assert store.prompts()[0]["task"] == '{"answer": "4"}'


def test_provenance_is_stored(tmp_path):
    store = Store(tmp_path / "s.db")
    pid = store.add_prompt([{"role": "user", "content": "q"}])
    prov = Provenance(model="llamacpp:x.gguf", backend="llamacpp", params={"temperature": 0.7},
                      plugin="plumb.plugins.llamacpp", plugin_version="0.1.0", constitution_hash="abc")
    sid = store.add_sample(pid, "answer", prov)
    row = store.db.execute("SELECT * FROM samples WHERE id = ?", (sid,)).fetchone()
    assert (row["model"], row["backend"], row["params"], row["constitution_hash"]) == (
        "llamacpp:x.gguf", "llamacpp", '{"temperature": 0.7}', "abc")


WRITER = """
import sys
from plumb.core.store import Provenance, Store
store = Store(sys.argv[1])
from plumb.core.records import Judgment
prov = Provenance(model="m", backend="b")
i = 0
print("ready", flush=True)
while True:
    with store.transaction():   # one labelled pair = prompt + 2 samples + judgment, atomically
        pid = store.add_prompt([{"role": "user", "content": f"{sys.argv[2]}-q{i}"}])
        a = store.add_sample(pid, "good", prov)
        b = store.add_sample(pid, "bad", prov)
        store.add_judgment(pid, a, b, Judgment("a", 1.0, "human", source="human"), prov)
    store.add_label(a, True, "human", prov)   # its own committed write
    i += 1
"""


def test_kill_at_any_moment_leaves_db_consistent(tmp_path):
    db = tmp_path / "kill.db"
    Store(db).close()
    for kills, delay in enumerate((0.3, 0.7, 1.1), start=1):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(delay)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = Store(db)
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
        counts = store.counts()
        assert counts["prompts"] > 0
        # Every committed pair is whole: 2 samples and 1 judgment per prompt.
        assert counts["samples"] == 2 * counts["prompts"]
        assert counts["judgments"] == counts["prompts"]
        # At most the write in flight is lost, per kill.
        assert counts["prompts"] - kills <= counts["labels"] <= counts["prompts"]
        store.close()
