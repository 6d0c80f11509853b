"""Models a person already has, registered by name: a GGUF to serve, an HF copy of it to train on.

``plumb models add NAME PATH.gguf`` checks the GGUF (a GGUF, whole, an
architecture plumb and transformers both handle, quantization types the gguf
library dequantizes, a chat template), hashes it, and makes an HF copy by
dequantizing it with transformers (``plumb.export.gguf_to_hf``), once per file
content: a second name for the same file, or the same file moved, reuses the
copy. The copy's tokenizer is checked against llama.cpp's on a chat-formatted
probe before it is kept. Everything lives in plumb's per-user cache::

    $PLUMB_HOME/models/local/registry.json         NAME -> gguf path, sha256, arch, hf copy
    $PLUMB_HOME/models/local/SHA16/hf/              the HF copy (plumb-source.json, .complete last)
    $PLUMB_HOME/models/hashes.json                  path -> size, mtime, sha256 (hash once)

The GGUF itself stays where it is: LoRA adapters trained on the copy are
applied by llama.cpp on that original file. Nothing here imports torch or
transformers at module level.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Callable

from plumb.core.cache import file_sha256, is_complete, locked, models_dir, publish_dir, read_json, write_json
from plumb.core.errors import PlumbError

NAME = re.compile(r"^[A-Za-z][\w.-]{0,63}$")
RESERVED = {"starter"}
Progress = Callable[[str], None]


def local_dir() -> Path:
    return models_dir() / "local"


def hf_copy_dir(sha: str) -> Path:
    return local_dir() / sha[:16] / "hf"


def ensure_hf_copy(gguf: Path, sha: str, dtype: str = "auto", progress: Progress | None = None) -> Path:
    """The HF copy of ``gguf`` (content ``sha``), made now unless a whole one is cached."""
    from plumb.export.gguf_to_hf import make_hf_copy

    hf = hf_copy_dir(sha)
    if is_complete(hf, sha):
        return hf
    with locked(hf.parent):
        if is_complete(hf, sha):  # made by another process while we waited
            return hf
        try:
            publish_dir(hf, sha, lambda tmp: make_hf_copy(gguf, tmp, dtype=dtype, progress=progress, sha256=sha))
        except OSError as exc:
            raise PlumbError(f"cannot write the HF copy to {hf.parent}: {exc.strerror or exc}. Free some space "
                             "or set PLUMB_HOME to another directory; nothing half-written was kept.") from None
    return hf


def registry() -> dict[str, dict]:
    return {k: v for k, v in read_json(local_dir() / "registry.json").items() if isinstance(v, dict)}


def add(name: str, gguf_path: str | Path, dtype: str = "auto", progress: Progress | None = None,
        replace: bool = False) -> dict:
    """Register ``gguf_path`` as ``name``: check it, hash it, make (or reuse) its HF copy. Returns the entry."""
    from plumb.export.gguf_to_hf import inspect_gguf

    say = progress or (lambda message: None)
    if not NAME.match(name) or name in RESERVED:
        raise PlumbError(f"bad model name {name!r}: letters, digits, '.', '_' or '-', starting with a letter"
                         f"{', and not ' + repr(name) if name in RESERVED else ''}.", exit_code=2)
    known = registry()
    gguf = Path(gguf_path).expanduser().resolve()
    if name in known and not replace and known[name].get("gguf") != str(gguf):
        raise PlumbError(f"a model named {name!r} is already registered ({known[name].get('gguf')}); pick "
                         "another name or pass --replace.", exit_code=2)
    info = inspect_gguf(gguf)
    say(f"{gguf.name}: {info.arch}, {info.n_params / 1e6:.0f}M parameters, "
        f"{', '.join(f'{k} x{v}' for k, v in sorted(info.types.items()))}; hashing")
    sha = file_sha256(gguf)
    hf = ensure_hf_copy(gguf, sha, dtype, say)
    entry = {"gguf": str(gguf), "sha256": sha, "arch": info.arch, "hf": str(hf), "size": gguf.stat().st_size,
             "added": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with locked(local_dir()):
        current = registry()
        current[name] = entry
        write_json(local_dir() / "registry.json", current)
    return entry


def get(name: str) -> dict:
    entry = registry().get(name)
    if entry is None:
        names = ", ".join(sorted(registry())) or "none yet"
        raise PlumbError(f"no local model named {name!r} (registered: {names}). "
                         f"Register one with `plumb models add {name} PATH.gguf`.", exit_code=2)
    return entry


def remove(name: str) -> dict:
    """Forget ``name``; its HF copy is deleted when no other name uses it."""
    entry = get(name)
    with locked(local_dir()):
        current = registry()
        current.pop(name, None)
        write_json(local_dir() / "registry.json", current)
    if not any(e.get("sha256") == entry.get("sha256") for e in current.values()):
        shutil.rmtree(Path(entry["hf"]).parent, ignore_errors=True)
    return entry


def hf_copy_for(gguf_path: str | Path) -> Path:
    """The training copy of a registered GGUF (by path; the file must be unchanged), or a PlumbError
    saying how to register it."""
    gguf = Path(gguf_path).expanduser().resolve()
    for entry in registry().values():
        if entry.get("gguf") == str(gguf) and Path(gguf).is_file():
            sha = file_sha256(gguf)
            if sha == entry.get("sha256") and is_complete(Path(entry["hf"]), sha):
                return Path(entry["hf"])
            raise PlumbError(f"{gguf} changed (or its HF copy is damaged) since it was registered; run "
                             f"`plumb models add NAME {gguf} --replace` again.", exit_code=2)
    raise PlumbError(f"{gguf} is not registered: run `plumb models add NAME {gguf}` once to make its HF copy "
                     "for training.", exit_code=2)


def status() -> list[dict]:
    """Registered models with whether their GGUF and HF copy are still there, for `plumb models`."""
    out = []
    for name, e in sorted(registry().items()):
        gguf, hf = Path(e.get("gguf", "")), Path(e.get("hf", ""))
        out.append({**e, "name": name, "gguf_ok": gguf.is_file() and gguf.stat().st_size == e.get("size"),
                    "hf_ok": is_complete(hf, e.get("sha256", ""))})
    return out
