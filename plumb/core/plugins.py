"""Build the plugin manager: builtins, installed entry points, workspace files.

Builtin plugins are ordinary plugins listed in ``DEFAULT_PLUGINS``; third-party
ones register through the ``plumb`` entry-point group; a workspace may name
single-file plugins in ``plumb.toml`` (``plugins = ["./my_verifier.py"]``).

A plugin that fails to import, or that implements a hook plumb does not have,
is skipped with one warning naming it and the reason; the rest keeps working.
Set ``PLUMB_STRICT_PLUGINS=1`` to make such a failure fatal instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pluggy

from plumb.core import hookspecs
from plumb.core.errors import PlumbError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plumb.plugins.verifiers",
    "plumb.plugins.answers",
    "plumb.plugins.unit_tests",
    "plumb.plugins.llamacpp",
    "plumb.plugins.openai_http",
    "plumb.plugins.hf_generate",
    "plumb.plugins.anthropic_api",
    "plumb.plugins.preference",
    "plumb.plugins.cai",
    "plumb.plugins.judge",
    "plumb.plugins.grpo",
    "plumb.plugins.reward_model",
)
ENTRY_POINT_GROUP = "plumb"


class PluginWarning(UserWarning):
    pass


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point <dist> <version>", or a file path
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


class PlumbPluginManager(pluggy.PluginManager):
    """A PluginManager that remembers where each plugin came from and which failed."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str, str]] = {}
        self.failures: list[PluginInfo] = []
        self._registry: Registry | None = None

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        self._registry = None  # what is registered changes with the plugins
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._registry = None
        return super().unregister(plugin, name)

    def add(self, obj: Any, name: str, source: str, version: str) -> bool:
        """Register one plugin; on a bad hook, unregister it and record why."""
        try:
            self.register(obj, name=name)
            self._check(obj)
        except Exception as exc:  # pluggy raises PluginValidationError, plugins anything
            if self.is_registered(obj):
                self.unregister(obj)
            return self._fail(name, source, version, _reason(exc))
        self.sources[name] = (source, version)
        return True

    def _check(self, plugin: Any) -> None:
        for attr in dir(plugin):
            if not attr.startswith("plumb_"):
                continue
            opts = self.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            caller = getattr(self.hook, attr, None)
            if caller is None or not caller.has_spec():
                known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("plumb_")))
                raise pluggy.PluginValidationError(
                    plugin, f"unknown hook {attr!r} (plumb has: {known})"
                )
            if opts.get("hookwrapper") or opts.get("wrapper"):
                raise pluggy.PluginValidationError(
                    plugin, f"{attr} is a wrapper; plumb hooks take none (plumb calls each implementation "
                    "itself, to know which plugin answered)")

    def _fail(self, name: str, source: str, version: str, reason: str) -> bool:
        if os.environ.get("PLUMB_STRICT_PLUGINS"):
            raise RuntimeError(f"plugin {name} ({source}) failed: {reason}")
        self.failures.append(PluginInfo(name, source, version, error=reason))
        warnings.warn(
            f"plumb: skipped plugin {name!r} from {source}: {reason}. "
            "The rest of plumb keeps working; fix or uninstall the plugin to silence this.",
            PluginWarning,
            stacklevel=2,
        )
        return False

    def describe(self) -> list[PluginInfo]:
        """Every plugin, loaded or failed, with the hooks it implements."""
        out = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            source, version = self.sources.get(name, ("?", "?"))
            hooks = sorted(c.name for c in self.get_hookcallers(plugin) or [])
            out.append(PluginInfo(name, source, version, hooks))
        return out + list(self.failures)

    @property
    def registry(self) -> "Registry":
        """What the plugins register (backends, methods, verifiers), collected once."""
        if self._registry is None:
            self._registry = Registry.collect(self)
        return self._registry

    def first(self, hook: str, **kwargs: Any) -> tuple[Any, str, str]:
        """Call a firstresult hook (critique, judge) as pluggy does (last registered first) and say who
        answered: (result, plugin name, plugin version), or (None, "", "") when no plugin did. Provenance
        needs the answering plugin, which a plain firstresult call does not report. Like every plumb hook
        (the registration hooks in ``Registry.collect``, ``plumb_reward`` in ``core.rewards.score``), each
        implementation is called by plumb itself, so no hook takes a wrapper: ``_check`` refuses a plugin
        that declares one when it loads."""
        for impl in reversed(getattr(self.hook, hook).get_hookimpls()):
            result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            if result is not None:
                return result, impl.plugin_name, self.version_of(impl.plugin_name)
        return None, "", ""

    def backend(self, model: Any) -> tuple[Any, str, str]:
        """The backend object registered for ``model.backend``, with its plugin's name and version."""
        entry = self.registry.check_backend(model.backend)
        return entry.impl, entry.plugin, self.version_of(entry.plugin)

    def generate(self, model: Any, chats: list, params: Any) -> tuple[list, str, str]:
        """``params.n`` completions per chat from the backend of ``model``: (one list per chat, plugin, version)."""
        backend, plugin, version = self.backend(model)
        result = backend.generate(model, chats, params)
        if len(result) != len(chats):
            raise PlumbError(f"plugin {plugin} returned {len(result)} answers for {len(chats)} prompts.")
        return result, plugin, version

    def version_of(self, plugin_name: str) -> str:
        return self.sources.get(plugin_name, ("?", "?"))[1]


# -- registries: what plugins offer, by name --------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One registered backend, method or verifier, with the object that implements it: the
    ``Backend`` or ``Method`` object for backends and methods (``core/backend.py``, ``core/method.py``),
    the per-item ``score`` function (or None: the plugin's ``plumb_reward``) for verifiers."""

    kind: str
    name: str
    description: str
    plugin: str
    impl: Any = None


KINDS = {"backends": "plumb_register_backends", "methods": "plumb_register_methods",
         "verifiers": "plumb_register_verifiers"}


@dataclass
class Registry:
    backends: dict[str, Entry] = field(default_factory=dict)
    methods: dict[str, Entry] = field(default_factory=dict)
    verifiers: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def collect(cls, pm: "PlumbPluginManager") -> "Registry":
        """Call every registration hook plugin by plugin, so each name knows its plugin. Backends and
        methods are registered as objects (``register(obj)``, named ``obj.name``), verifiers as
        ``register(name, description, score=fn)``. A name registered twice is an error naming both plugins."""
        reg = cls()
        for kind, hook in KINDS.items():
            table: dict[str, Entry] = getattr(reg, kind)
            for impl in getattr(pm.hook, hook).get_hookimpls():
                def register(what: Any, description: str = "", *, score: Any = None, _kind: str = kind,
                             _plugin: str = impl.plugin_name, _table=table) -> None:
                    if _kind == "verifiers":
                        name, obj = what, score
                    else:
                        name, description, obj = getattr(what, "name", None), getattr(what, "description", ""), what
                    if not isinstance(name, str) or not name:
                        raise PlumbError(f"plugin {_plugin} registered a {_kind[:-1]} with no name"
                                         + ("" if _kind == "verifiers" else
                                            f" (register an object with a `name`, got {what!r})") + ".")
                    if name in _table:
                        raise PlumbError(f"{_kind[:-1]} {name!r} is registered by two plugins: "
                                         f"{_table[name].plugin} and {_plugin}. Uninstall or rename one of them "
                                         "(or remove it from `plugins` in plumb.toml).", exit_code=2)
                    _table[name] = Entry(_kind[:-1], name, description, _plugin, obj)

                impl.function(register=register)
        return reg

    def _unknown(self, kind: str, name: str, hint: str) -> PlumbError:
        known = ", ".join(sorted(getattr(self, kind))) or "none"
        return PlumbError(f"no installed plugin offers the {kind[:-1]} {name!r} (installed: {known}). {hint}",
                          exit_code=2)

    def check_backend(self, name: str) -> Entry:
        if name not in self.backends:
            raise self._unknown("backends", name, "A model spec is BACKEND:TARGET; `plumb plugins` lists them.")
        return self.backends[name]

    def check_method(self, name: str) -> Entry:
        if name not in self.methods:
            raise self._unknown("methods", name, "`plumb plugins` lists the training methods.")
        return self.methods[name]

    def check_verifier(self, name: str) -> Entry:
        if name not in self.verifiers:
            raise self._unknown("verifiers", name, "Fix the check's `verifier`, or add the plugin that "
                                "provides it to `plugins` in plumb.toml.")
        return self.verifiers[name]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pluggy.PluginValidationError):  # pluggy's own message says what is wrong
        return str(exc).split("\n")[0]
    return f"{type(exc).__name__}: {exc}"


def load_file_plugin(path: Path) -> ModuleType:
    """Import a single-file plugin by path."""
    name = f"plumb_file_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def get_plugin_manager(
    plugin_files: Iterable[str | Path] = (), *, base_dir: Path | None = None,
    entry_points: bool = True,
) -> PlumbPluginManager:
    """The plugin manager for one process: builtins, entry points, then files.

    ``plugin_files`` are paths from a workspace's plumb.toml, relative to
    ``base_dir`` (the workspace directory).
    """
    from plumb import __version__

    pm = PlumbPluginManager()
    for modname in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            pm._fail(modname, "builtin", __version__, _reason(exc))
            continue
        pm.add(module, modname, "builtin", __version__)

    if entry_points and not os.environ.get("PLUMB_NO_ENTRY_POINTS"):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            version = getattr(dist, "version", "?") if dist else "?"
            source = f"entry point ({dist.name if dist else ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:
                pm._fail(ep.name, source, version, _reason(exc))
                continue
            pm.add(obj, ep.name, source, version)

    for item in plugin_files:
        path = Path(item)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        path = path.resolve()
        if not path.is_file():
            pm._fail(str(item), str(path), "?", "file not found (check `plugins` in plumb.toml)")
            continue
        try:
            module = load_file_plugin(path)
        except Exception as exc:
            pm._fail(path.stem, str(path), "?", _reason(exc))
            continue
        pm.add(module, path.stem, str(path), str(getattr(module, "__version__", "file")))
    return pm
