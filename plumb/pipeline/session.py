"""One workspace factory for the CLI, the TUI and the tests.

A ``Session`` is an open workspace: its directory and plumb.toml, its store,
its plugin manager (builtins, entry points, the workspace's plugin files) and
its constitution. Every stage takes one; every face opens one the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumb.core.context import HookContext
from plumb.core.records import EventSink, ModelSpec
from plumb.core.store import Store
from plumb.core.workspace import CONFIG, Workspace, find_workspace, init_workspace, open_workspace


@dataclass
class Session:
    ws: Workspace
    store: Store
    pm: Any  # plumb.core.plugins.PlumbPluginManager
    cancel: threading.Event = field(default_factory=threading.Event)
    _constitutions: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.ws.root

    def constitution(self, name: str | None = None):
        """The workspace's constitution (or ``name``: a shipped name or a path), validated,
        its checks resolved against the registry, and recorded in the store under its hash."""
        from plumb.core.rewards import validate_checks

        key = name or self.ws.constitution_name
        if key not in self._constitutions:
            const = self.ws.constitution(name)
            validate_checks(self.pm, const)
            self.store.add_constitution(const.hash, const.name, const.version, const.canonical_json())
            self._constitutions[key] = const
        return self._constitutions[key]

    def model(self, role: str, override: str | None = None, fetch: bool = True) -> ModelSpec:
        """The model spec for ``role`` ("generate" or "train"): ``override`` or plumb.toml's,
        parsed, its backend installed, its local files present (the starter pulled on first use
        unless ``fetch`` is false)."""
        from plumb.models.specs import check_exists, parse_spec

        spec = parse_spec(override or self.ws.model(role), role=role, fetch=fetch)
        self.pm.registry.check_backend(spec.backend)
        check_exists(spec, self.root)
        return spec

    def context(self, sink: EventSink | None = None, run_id: int | None = None) -> HookContext:
        from plumb.models.specs import parse_spec

        return HookContext(self.pm, sink, self.cancel, run_id, resolve=parse_spec)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(path: str | Path | None = None, *, create: bool = False,
                 constitution: str = "concise-writer") -> Session:
    """The workspace at ``path`` (else $PLUMB_WORKSPACE, the cwd or a parent), opened.
    With ``create``, a directory without plumb.toml becomes a new workspace."""
    if create and path is not None and not (Path(path) / CONFIG).exists():
        ws = init_workspace(path, constitution=constitution)
    elif path is not None:
        ws = open_workspace(path)
    else:
        ws = find_workspace()
    return Session(ws, ws.store(), ws.plugin_manager())


def scratch_session(directory: str | Path = ".") -> Session:
    """No workspace: an in-memory store and the installed plugins (``plumb train --data FILE``
    outside a workspace). Outputs go under ``directory``; nothing is kept in a database."""
    from plumb.core.plugins import get_plugin_manager

    return Session(Workspace(Path(directory).resolve()), Store(":memory:"), get_plugin_manager())
