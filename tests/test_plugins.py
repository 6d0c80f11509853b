"""The plugin manager: builtins, files from plumb.toml, broken plugins reported not fatal."""

from __future__ import annotations

import json
import warnings

import pytest

from plumb.cli import cli
from plumb.core.hookspecs import hookimpl
from plumb.core.plugins import PluginWarning, get_plugin_manager
from plumb.core.records import Chat, Completion, Reward, Task
from tests.plugins import plugin_source


@pytest.fixture
def pm():
    return get_plugin_manager(entry_points=False)


@pytest.fixture
def throwaway(pm):
    """Register a plugin for one test, unregister it after."""

    class Plugin:
        @hookimpl
        def plumb_reward(self, tasks, completions):
            return [Reward("shouty", float(c.text.isupper())) for c in completions]

    plugin = Plugin()
    pm.register(plugin, name="throwaway")
    try:
        yield pm
    finally:
        pm.unregister(plugin)


def _completion(text: str) -> Completion:
    return Completion(text=text, model="m", backend="test")


def test_throwaway_batch_plugin_contributes_a_reward(throwaway):
    from plumb.core.rewards import score

    pm = throwaway
    pm.check_pending()
    rewards = score(pm, [Task(prompt=Chat(()))] * 2, [_completion("HI"), _completion("hi")])
    assert [[r.value for r in row if r.name == "shouty"] for row in rewards] == [[1.0], [0.0]]


def test_builtin_verifiers_are_registered(pm):
    from plumb.core.rewards import score

    names = pm.registry.verifiers
    assert {"max_words", "no_exclamation", "starts_with_answer", "regex", "exact"} <= set(names)
    task = Task(prompt=Chat(()), meta={"check": {"verifier": "max_words", "params": {"n": 3}}})
    rewards = score(pm, [task], [_completion("a b c d e f")])
    assert [(r.name, r.value) for r in rewards[0]] == [("max_words", 0.0)]  # graded: 0 at twice the limit
    rewards = score(pm, [task], [_completion("one two three four")])
    assert [(r.name, round(r.value, 3)) for r in rewards[0]] == [("max_words", 0.667)]  # one word over: 1 - 1/3


GOOD = plugin_source("good.py")

BROKEN_IMPORT = plugin_source("broken_import.py")

UNKNOWN_HOOK = plugin_source("unknown_hook.py")

RAISES_ON_IMPORT = plugin_source("raises_on_import.py")


def _write_ws_plugins(ws, files: dict[str, str]) -> None:
    for name, text in files.items():
        (ws.root / name).write_text(text)
    cfg = (ws.root / "plumb.toml").read_text().replace(
        "plugins = []", "plugins = [" + ", ".join(f'"./{n}"' for n in files) + "]"
    )
    (ws.root / "plumb.toml").write_text(cfg)


def test_file_plugins_good_and_broken(workspace, runner):
    _write_ws_plugins(workspace, {
        "good.py": GOOD, "broken.py": BROKEN_IMPORT, "typo.py": UNKNOWN_HOOK, "raises.py": RAISES_ON_IMPORT,
    })
    from plumb.core.workspace import open_workspace

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = open_workspace(workspace.root).plugin_manager()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 3
    assert any("broken" in m and "does_not_exist_anywhere" in m for m in messages)
    assert any("typo" in m and "plumb_rewrad" in m for m in messages)
    assert any("raises" in m and "boom at import" in m for m in messages)
    # The good plugin and the builtins still work.
    from plumb.core.rewards import score

    assert pm.registry.verifiers["has_please"].plugin == "good"
    rewards = score(pm, [Task(prompt=Chat(()))], [_completion("yes please")])
    assert [(r.name, r.value, r.status) for r in rewards[0]] == [("has_please", 1.0, "ok")]

    result = runner.invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["good"]["version"] == "1.2"
    assert by_name["good"]["hooks"] == ["plumb_register_verifiers"]
    assert {"name": "has_please", "description": "1 if the answer says please", "plugin": "good"} in data["verifiers"]
    assert "plumb_rewrad" in by_name["typo"]["error"]
    assert by_name["plumb.plugins.verifiers"]["source"] == "builtin"


def test_missing_plugin_file_is_a_warning(workspace, runner):
    cfg = (workspace.root / "plumb.toml").read_text().replace("plugins = []", 'plugins = ["./nope.py"]')
    (workspace.root / "plumb.toml").write_text(cfg)
    result = runner.invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "FAILED: file not found" in result.stdout


def test_strict_mode_makes_failures_fatal(workspace, monkeypatch):
    _write_ws_plugins(workspace, {"broken.py": BROKEN_IMPORT})
    monkeypatch.setenv("PLUMB_STRICT_PLUGINS", "1")
    from plumb.core.workspace import open_workspace

    with pytest.raises(RuntimeError, match="broken"):
        open_workspace(workspace.root).plugin_manager()


def test_entry_point_plugins_load_and_fail_softly(monkeypatch):
    import importlib.metadata as md
    import sys
    import types

    mod = types.ModuleType("fake_ep_plugin")
    exec(GOOD, mod.__dict__)
    sys.modules["fake_ep_plugin"] = mod
    eps = [
        md.EntryPoint(name="fake", value="fake_ep_plugin", group="plumb"),
        md.EntryPoint(name="gone", value="no_such_module_xyz", group="plumb"),
    ]
    monkeypatch.setattr(md, "entry_points", lambda group=None: eps if group == "plumb" else [])
    monkeypatch.delenv("PLUMB_NO_ENTRY_POINTS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_plugin_manager()
    assert any("gone" in str(w.message) for w in caught)
    assert "has_please" in pm.registry.verifiers
    sys.modules.pop("fake_ep_plugin")


RAISES_AT_CALL = plugin_source("raises_at_call.py")


def test_plugin_raising_at_call_time_is_one_paragraph(workspace, tmp_path):
    import subprocess
    import sys

    _write_ws_plugins(workspace, {"angry.py": RAISES_AT_CALL})
    out = subprocess.run([sys.executable, "-m", "plumb", "plugins"], capture_output=True, text=True,
                         cwd=workspace.root, timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "verifier table is corrupt" in out.stderr and "angry.py:6" in out.stderr


def test_starts_with_answer_separates_the_concise_pairs():
    """The check used to measure tuning must tell the bundled styles apart."""
    from importlib.resources import files

    from plumb.plugins.verifiers import _starts_with_answer

    rows = [json.loads(l) for l in (files("plumb.data") / "concise_pairs.jsonl").read_text().splitlines()]
    assert len(rows) >= 100
    chosen_ok = sum(_starts_with_answer(r["chosen"])[0] for r in rows) / len(rows)
    rejected_ok = sum(_starts_with_answer(r["rejected"])[0] for r in rows) / len(rows)
    assert chosen_ok >= 0.95 and rejected_ok <= 0.1


def test_a_spec_runs_on_the_backend_object_registered_under_its_name(pm):
    """Two backends side by side: each spec goes to the object registered for its backend, and the
    answer's provenance names that object's plugin; an unregistered backend lists the installed ones."""
    from plumb.core.backend import Backend
    from plumb.core.context import HookContext
    from plumb.core.errors import PlumbError
    from plumb.core.records import ModelSpec, SamplingParams

    class Upper(Backend):
        name = "upper"

        def generate(self, model, chats, params):
            return [[Completion(c.last_user.upper(), str(model), self.name)] * params.n for c in chats]

    class Lower(Upper):
        name = "lower"

        def generate(self, model, chats, params):
            return [[Completion(c.last_user.lower(), str(model), self.name)] * params.n for c in chats]

    class Plugin:
        def __init__(self, backend):
            self.backend = backend

        @hookimpl
        def plumb_register_backends(self, register):
            register(self.backend)

    pm.register(Plugin(Upper()), name="upper-plugin")
    pm.register(Plugin(Lower()), name="lower-plugin")
    chats, params = [Chat.from_user("Hi There")], SamplingParams(n=2)
    out, plugin, _ = pm.generate(ModelSpec("lower", "x"), chats, params)
    assert [c.text for c in out[0]] == ["hi there"] * 2 and plugin == "lower-plugin"
    out, plugin, _ = pm.generate(ModelSpec("upper", "x"), chats, params)
    assert out[0][0].text == "HI THERE" and plugin == "upper-plugin"
    seen: list[str] = []  # a backend that cannot stream answers a stream once, with the whole reply
    reply = HookContext(pm).stream(ModelSpec("upper", "x"), chats[0], params, seen.append)
    assert seen == ["HI THERE"] and reply.text == "HI THERE"
    assert HookContext(pm).option_logprobs(ModelSpec("upper", "x"), chats, ["A"]) is None
    with pytest.raises(PlumbError, match="no installed plugin offers the backend 'nope'.*lower.*upper"):
        pm.generate(ModelSpec("nope", "x"), chats, params)
    pm.register(Plugin(Lower()), name="second-lower")
    with pytest.raises(PlumbError, match="'lower' is registered by two plugins: lower-plugin and second-lower"):
        pm.generate(ModelSpec("lower", "x"), chats, params)


def test_a_plugin_declaring_a_wrapper_is_refused_for_every_hook(pm, recwarn):
    """plumb calls each hook implementation itself (``first`` for critique and judge, the registry, the
    reward batch), so it would never call a wrapper: a plugin declaring one is refused when it loads,
    with the hook named, and the rest keeps working."""

    class WrapsJudge:
        @hookimpl(wrapper=True)
        def plumb_judge(self, ctx, constitution, requests, judge):
            return (yield)

    class WrapsReward:
        @hookimpl(hookwrapper=True)
        def plumb_reward(self, tasks, completions):
            yield

    for plugin, hook in ((WrapsJudge(), "plumb_judge"), (WrapsReward(), "plumb_reward")):
        assert not pm.add(plugin, hook, "test", "0")
        assert f"{hook} is a wrapper; plumb hooks take none" in pm.failures[-1].error
        assert not pm.has_plugin(hook)
    assert "max_words" in pm.registry.verifiers
