"""plumb's per-user cache: where it lives, how it is locked, hashed and written whole.

    $PLUMB_HOME (else $XDG_CACHE_HOME/plumb, else ~/.cache/plumb)
        models/hashes.json     path -> size, mtime, sha256 (a file is hashed once until it changes)
        models/...             the starter and local models (``plumb.models``)

Everything a cache keeps is written to a temporary path in the same directory and renamed into
place once whole (``write_json``, ``publish_dir``), under an exclusive lock (``locked``) when two
processes could write it at once. A directory made this way ends with a ``.complete`` marker that
names what it was made from and the size of every file in it (``is_complete``). No model code here:
the starter and local models (``plumb.models``) and GGUF identities (``plumb.export.identity``) use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MARKER = ".complete"  # written last into a directory made by publish_dir


def home() -> Path:
    """plumb's per-user cache: $PLUMB_HOME, else $XDG_CACHE_HOME/plumb, else ~/.cache/plumb."""
    if os.environ.get("PLUMB_HOME"):
        return Path(os.environ["PLUMB_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "plumb"
    return Path.home() / ".cache" / "plumb"


def models_dir() -> Path:
    return home() / "models"


# -- whole files ---------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically: a temp file next to ``path`` (its directory made if missing), renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(directory: Path):
    """Hold an exclusive lock on ``directory`` (made if missing) so two processes never write its cache at
    once; the starter's pull and the local-model caches share it."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic renames still keep the cache whole
        yield
        return
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def clean_leftovers(directory: Path) -> None:
    """Remove the ``.tmp-*`` files and dirs a killed write left behind (the caller holds the lock)."""
    for p in directory.glob(".tmp-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


# -- hashes --------------------------------------------------------------------------------------

def stamp_of(path: Path) -> dict:
    """Size and mtime: what says a file is unchanged since it was last hashed."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed again only when its size or mtime changed since the last time."""
    p = Path(path).resolve()
    stamp = stamp_of(p)
    cache_file = models_dir() / "hashes.json"
    cached = read_json(cache_file).get(str(p))
    if isinstance(cached, dict) and {k: cached.get(k) for k in stamp} == stamp and cached.get("sha256"):
        return cached["sha256"]
    sha = sha256_of(p)
    with contextlib.suppress(OSError):  # a read-only cache still works, it just hashes each time
        with locked(models_dir()):
            cache = read_json(cache_file)
            cache[str(p)] = {**stamp, "sha256": sha}
            write_json(cache_file, cache)
    return sha


# -- whole directories ---------------------------------------------------------------------------

def is_complete(directory: Path, source_sha: str) -> bool:
    """True when ``directory`` was made whole by ``publish_dir`` from ``source_sha`` and every file its
    marker lists still has the size it was written with."""
    marker = read_json(directory / MARKER)
    files = marker.get("files")
    if marker.get("from_sha256") != source_sha or not isinstance(files, dict) or not files:
        return False
    try:
        return all((directory / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def marked_size(directory: Path) -> int | None:
    """The total size of the files a ``.complete`` marker lists; None without one."""
    return sum(read_json(directory / MARKER).get("files", {}).values()) or None


def publish_dir(dest: Path, source_sha: str, build: Callable[[Path], None]) -> None:
    """Make ``dest`` whole or not at all: ``build(tmp)`` fills a temp dir beside it, the ``.complete``
    marker is written last, and the dir is renamed over any damaged earlier ``dest``. The caller
    holds ``locked(dest.parent)``; an OSError propagates with nothing half-written kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-hf-"))
    try:
        build(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        write_json(tmp / MARKER, {"from_sha256": source_sha, "files": files})
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
