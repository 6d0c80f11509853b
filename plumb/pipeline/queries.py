"""What the faces show, read from the store by name (the screens run no SQL of their own)."""

from __future__ import annotations

from typing import Any

from plumb.core.store import Store

STAMPED = ("samples", "critiques", "judgments", "labels", "rewards", "runs")  # tables with constitution_hash


def recent_adapters(store: Store, n: int = 4) -> list[Any]:
    """The newest ``n`` adapters (peft directories and GGUF LoRAs): kind, path, run_id."""
    return store.query("SELECT kind, path, run_id FROM artifacts WHERE kind IN ('adapter', 'gguf-lora')"
                       " ORDER BY id DESC LIMIT ?", (n,))


def latest_gguf_lora(store: Store) -> str | None:
    """The path of the newest GGUF LoRA a run wrote, or None."""
    row = store.one("SELECT path FROM artifacts WHERE kind = 'gguf-lora' ORDER BY id DESC LIMIT 1")
    return row["path"] if row else None


def any_run_done(store: Store) -> bool:
    return store.one("SELECT 1 FROM runs WHERE status = 'done' LIMIT 1") is not None


def runs_overview(store: Store) -> list[Any]:
    """Every run, newest first, with its last step (``steps``) and its last logged ``loss``."""
    return store.query(
        "SELECT r.*, (SELECT max(step) FROM metrics m WHERE m.run_id = r.id) AS steps,"
        " (SELECT value FROM metrics m WHERE m.run_id = r.id AND key = 'loss' ORDER BY step DESC LIMIT 1)"
        " AS loss FROM runs r ORDER BY r.id DESC")


def run_artifacts(store: Store, run_id: int) -> list[tuple[str, str]]:
    """A run's artifacts in the order it wrote them: (kind, path)."""
    return [(a["kind"], a["path"]) for a in store.query(
        "SELECT kind, path FROM artifacts WHERE run_id = ? ORDER BY id", (run_id,))]


def model_judges(store: Store) -> list[str]:
    """Every model that has judged pairs in this workspace."""
    return [r["judge"] for r in store.query("SELECT DISTINCT judge FROM judgments WHERE source = 'model'")]


def revisions(store: Store) -> list[Any]:
    """Every critique with its revision's text, oldest first: sample_id (the answer critiqued), revision_id,
    principle_id, critique, round, flags, model, text."""
    return store.query(
        "SELECT c.sample_id, c.revision_id, c.principle_id, c.critique, c.round, c.flags, c.model, s.text "
        "FROM critiques c JOIN samples s ON s.id = c.revision_id ORDER BY c.id")


def drafts(store: Store, split: str) -> list[Any]:
    """The sampled answers (not revisions, not rollouts) to ``split``'s prompts: id, text, the prompt's messages."""
    return store.query("SELECT s.id, s.text, p.messages FROM samples s JOIN prompts p ON p.id = s.prompt_id "
                       "WHERE p.split = ? AND s.kind = 'sample' ORDER BY s.id", (split,))


def stale_rows(store: Store, current: str) -> list[str]:
    """Per table, the rows made under another constitution hash than ``current``."""
    names = {r["hash"]: f"{r['name']} v{r['version']}" for r in store.query("SELECT * FROM constitutions")}
    out = []
    for table in STAMPED:
        for r in store.query(f"SELECT constitution_hash AS h, count(*) AS n FROM {table} WHERE constitution_hash"
                             " IS NOT NULL AND constitution_hash != ? GROUP BY h", (current,)):
            out.append(f"{table}: {r['n']} under {r['h']} ({names.get(r['h'], 'unknown')})")
    return out
