"""A workspace: a directory holding plumb.toml, plumb.db, adapters/ and models/.

plumb.toml names the models, the default constitution and extra plugins::

    constitution = "concise-writer"     # a shipped name or a path
    plugins = ["./my_verifier.py"]      # single-file plugins, relative to here

    [models]
    generate = "starter"                # sampling, critique, judging, serving
    train = "starter"                   # the base the LoRA adapter is trained on
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError

CONFIG = "plumb.toml"
DB = "plumb.db"

DEFAULT_CONFIG = '''# plumb workspace settings. `plumb --help` lists what reads them.

# The constitution this workspace tunes toward: a shipped name
# (`plumb constitution list`) or a path to your own TOML file.
constitution = "{constitution}"

# Extra single-file plugins (verifiers, backends), relative to this directory.
plugins = []

[models]
# "starter" is SmolLM2-135M-Instruct (`plumb models pull starter` fetches it once).
# Any model spec works: llamacpp:PATH.gguf, hf:DIR, anthropic:NAME, openai:URL.
generate = "starter"
train = "starter"
'''


@dataclass
class Workspace:
    root: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.root / DB

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def plugin_files(self) -> list[str]:
        return list(self.config.get("plugins", []))

    @property
    def constitution_name(self) -> str:
        return str(self.config.get("constitution", "concise-writer"))

    def model(self, role: str) -> str:
        return str(self.config.get("models", {}).get(role, "starter"))

    def store(self):  # -> Store, imported lazily to keep `plumb --help` light
        """The workspace's store; runs left ``running`` by processes that are gone become ``interrupted``."""
        from plumb.core.store import Store

        store = Store(self.db_path)
        store.reap_runs()
        return store

    def plugin_manager(self):
        from plumb.core.plugins import get_plugin_manager

        return get_plugin_manager(self.plugin_files, base_dir=self.root)

    def constitution(self, override: str | None = None):
        from plumb.core.constitution import load_constitution, resolve

        return load_constitution(resolve(override or self.constitution_name, self.root))


def init_workspace(path: str | Path, constitution: str = "concise-writer") -> Workspace:
    root = Path(path).resolve()
    if (root / CONFIG).exists():
        raise PlumbError(f"{root} is already a plumb workspace ({CONFIG} exists); nothing changed.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("adapters", "models"):
            (root / sub).mkdir(exist_ok=True)
        tmp = root / (CONFIG + ".tmp")
        tmp.write_text(DEFAULT_CONFIG.format(constitution=constitution), encoding="utf-8")
        os.replace(tmp, root / CONFIG)
    except OSError as exc:
        raise PlumbError(f"cannot create a workspace in {root}: {exc.strerror or exc}.") from None
    ws = open_workspace(root)
    ws.store().close()  # create plumb.db with the current schema
    return ws


def open_workspace(path: str | Path) -> Workspace:
    root = Path(path).resolve()
    cfg_path = root / CONFIG
    if not cfg_path.is_file():
        raise PlumbError(f"{root} is not a plumb workspace (no {CONFIG}). Run `plumb init {path}` first.")
    try:
        config = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PlumbError(f"{cfg_path}: invalid TOML: {exc}. Fix the file, or move it away and run `plumb init`.",
                         exit_code=2) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlumbError(f"{cfg_path}: cannot read: {exc}.", exit_code=2) from None
    plugins = config.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise PlumbError(f"{cfg_path}: `plugins` must be a list of file paths, e.g. plugins = [\"./mine.py\"].",
                         exit_code=2)
    return Workspace(root, config)


def find_workspace(start: str | Path | None = None) -> Workspace:
    """The workspace at ``start`` ($PLUMB_WORKSPACE, else the current directory) or a parent."""
    start = Path(start or os.environ.get("PLUMB_WORKSPACE") or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / CONFIG).is_file():
            return open_workspace(d)
    raise PlumbError(
        f"no plumb workspace here: no {CONFIG} in {start} or its parents. "
        "Run `plumb init DIR` to create one, then run plumb inside it or pass --workspace DIR."
    )


def set_config(root: str | Path, values: dict[str, str], section: str | None = None) -> Path:
    """Set string keys of ROOT/plumb.toml, at the top level or in ``[section]`` (made when missing), keeping
    the rest of the file, comments included. The result is read back with tomllib before it replaces the
    file (atomically); a file this cannot edit safely is an error saying what to set by hand."""
    import json
    import re

    path = Path(root) / CONFIG
    text = path.read_text(encoding="utf-8")
    if section is None:
        header = re.search(r"(?m)^\[", text)
        start, end = 0, header.start() if header else len(text)
    elif (found := re.search(rf"(?ms)^\[{re.escape(section)}\][^\n]*\n(.*?)(?=^\[|\Z)", text)) is not None:
        start, end = found.start(1), found.end(1)
    else:
        text = text.rstrip("\n") + f"\n\n[{section}]\n"
        start = end = len(text)
    body = text[start:end]
    for key, value in values.items():
        line = f"{key} = {json.dumps(value, ensure_ascii=False)}"  # a TOML basic string is JSON's string syntax
        body, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", lambda _: line, body, count=1)
        if not n:
            body = line + "\n" + body
    text = text[:start] + body + text[end:]
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        parsed = {}
    got = parsed.get(section, {}) if section else parsed
    if any(got.get(k) != v for k, v in values.items()):
        where = f"[{section}] " if section else ""
        raise PlumbError(f"could not update {path} safely; set {where}"
                         + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + " by hand.", exit_code=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
