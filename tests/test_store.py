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
from plumb.core.store import Provenance, Store

TABLES = {"constitutions", "prompts", "samples", "critiques", "judgments", "labels", "runs", "metrics", "artifacts"}
PROVENANCE_COLS = {"model", "backend", "params", "plugin", "plugin_version", "constitution_hash", "created"}


def test_migrate_in_memory_builds_the_whole_schema():
    db = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(db) == [fn.__name__ for fn in MIGRATIONS]
    assert migrate(db) == []  # idempotent
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES | {"_plumb_migrations"} == tables
    for table in ("samples", "critiques", "judgments", "labels", "runs"):
        cols = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        assert PROVENANCE_COLS <= cols, table
    task_cols = {r[1] for r in db.execute("PRAGMA table_info(prompts)")}
    assert {"messages", "task", "split"} <= task_cols


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
prov = Provenance(model="m", backend="b")
i = 0
print("ready", flush=True)
while True:
    with store.transaction():   # one labelled pair = prompt + 2 samples + judgment, atomically
        pid = store.add_prompt([{"role": "user", "content": f"{sys.argv[2]}-q{i}"}])
        a = store.add_sample(pid, "good", prov)
        b = store.add_sample(pid, "bad", prov)
        store.add_judgment(pid, a, b, "a", "human", prov)
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
