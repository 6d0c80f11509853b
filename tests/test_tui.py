"""The TUI driven by Pilot: every screen, the label keys, a real training run, a killed child, blind A/B."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from tests.plugins import plugin_source

from plumb import hookimpl
from plumb.core.backend import Backend
from plumb.core.records import Completion
from plumb.core.store import Provenance
from plumb.core.workspace import init_workspace
from plumb.tui.factory import make_app
from plumb.tui.screens import SCREENS

SIZE = (120, 40)


def run(app, body, size=SIZE):
    """Run ``body(pilot)`` against ``app`` once its workspace is open."""

    async def go():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.session is not None or len(app.screen_stack) > 1)
            await pilot.pause()
            await body(pilot)

    asyncio.run(go())


async def until(pilot, cond, timeout=20.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def text(app, selector) -> str:
    return str(app.screen.query_one(selector).render())


def use_plugins(ws, files: dict[str, str]) -> None:
    for name, source in files.items():
        (ws.root / name).write_text(source)
    cfg = ws.root / "plumb.toml"
    cfg.write_text(cfg.read_text().replace("plugins = []", "plugins = [" + ", ".join(f'"./{n}"' for n in files) + "]"))


def with_answers(ws, prompts=3, answers=2, split="train") -> list[int]:
    """``prompts`` prompts with ``answers`` distinct answers each; returns the prompt ids."""
    ids = []
    with ws.store() as store:
        for i in range(prompts):
            pid = store.add_prompt([{"role": "user", "content": f"Question {i}?"}], split=split)
            for k in range(answers):
                store.add_sample(pid, f"answer {k} to question {i}", Provenance(model="m", backend="b"))
            ids.append(pid)
    return ids


@pytest.fixture
def ws(tmp_path):
    return init_workspace(tmp_path / "ws")


# -- every screen ----------------------------------------------------------------------------------


def test_every_screen_opens_by_its_key_and_by_name(ws):
    app = make_app(ws.root)

    async def keys(pilot):
        for name, info in SCREENS.items():
            await pilot.press(info.key)
            await until(pilot, lambda: app.current_mode == name, what=name)
            assert f"{info.key} {info.title}" in text(app, "NavBar")

    run(app, keys)
    app = make_app(ws.root, "plugins")

    async def by_name(pilot):
        await until(pilot, lambda: app.current_mode == "plugins", what="the plugins screen")

    run(app, by_name)
    with pytest.raises(Exception, match="no screen 'nope'"):
        make_app(ws.root, "nope")


def test_digits_type_into_a_field_and_esc_leaves_it(ws):
    from textual.widgets import Input

    app = make_app(ws.root, "generate")

    async def body(pilot):
        await until(pilot, lambda: app.current_mode == "generate")
        assert app.focused is None and "escape" not in app.screen.active_bindings
        await pilot.press("tab", "end", "4")
        assert app.screen.query_one("#model", Input).value.endswith("4") and app.current_mode == "generate"
        assert "escape" in app.screen.active_bindings  # the footer offers esc while a field has the focus
        await pilot.press("escape", "4")
        await until(pilot, lambda: app.current_mode == "label", what="the label screen")

    run(app, body)


def test_the_palette_lists_every_screen_and_action_and_runs_them(ws):
    from plumb.tui.commands import PlumbCommands
    from plumb.tui.screens import screen_class

    app = make_app(ws.root)

    async def body(pilot):
        entries = [hit.text async for hit in PlumbCommands(app.screen).discover()]
        for name, info in SCREENS.items():
            assert f"Open {info.title}" in entries
            for binding in screen_class(name).BINDINGS:
                assert f"{info.title}: {binding.description}" in entries
        await pilot.press("ctrl+p")
        await pilot.press(*"open", "space", *"runs")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "runs", what="the runs screen")

    run(app, body)


def test_home_shows_constitution_models_counts_and_next_step(ws):
    with_answers(ws, prompts=2)
    app = make_app(ws.root)

    async def body(pilot):
        await until(pilot, lambda: "hash" in text(app, "#constitution"), what="the overview")
        assert "concise-writer v" in text(app, "#constitution")
        assert "prompts 2" in text(app, "#counts") and "samples 4" in text(app, "#counts")
        assert "pairs 0" in text(app, "#counts")
        assert "generate" in text(app, "#models") and "train" in text(app, "#models")
        assert "press 4" in text(app, "#next")
        assert "ctrl+t runs `plumb tune`" in text(app, "#tune-status")

    run(app, body)


def test_home_runs_tune_with_live_stages_then_shows_its_report(ws, monkeypatch):
    """ctrl+t calls the pipeline's tune (stubbed here: the real one is tests/test_tune.py) with this
    workspace's session (its constitution and models, as `plumb -w DIR tune`), shows each stage as it
    comes, then the report."""
    from plumb.core.records import Event
    from plumb.pipeline import tune

    seen = {}

    def fake_tune(session, opts, sink):
        seen.update(root=session.root, constitution=opts.constitution, model=opts.model, cancel=session.cancel)
        for stage in ("prompts", "sample", "train"):
            sink(Event("stage", stage=stage, message=f"{stage} going"))
        sink(Event("metric", step=2, total=5, values={"loss": 0.5}, stage="train"))
        (session.root / "report.md").write_text("# plumb tune: concise-writer\n\nchecks 40% -> 80%\n")
        return tune.Tuned(str(session.root))

    monkeypatch.setattr(tune, "tune", fake_tune)
    app = make_app(ws.root)

    async def body(pilot):
        await until(pilot, lambda: "hash" in text(app, "#constitution"), what="the overview")
        await pilot.press("ctrl+t")
        await until(pilot, lambda: "done" in text(app, "#tune-status"), what="tune to finish")
        log = "\n".join(str(line.text) for line in app.screen.query_one("#tune-log").lines)
        assert "prompts" in log and "sample going" in log and "train going" in log
        assert "checks 40% -> 80%" in app.screen.query_one("#tune-report")._markdown
        # the workspace's own choices: no constitution or model forced over plumb.toml's
        assert seen["root"] == ws.root and seen["constitution"] is None and seen["model"] is None
        assert seen["cancel"] is not None

    run(app, body)


def test_a_missing_workspace_is_offered_and_created(tmp_path):
    app = make_app(tmp_path / "new")

    async def body(pilot):
        assert "not a plumb workspace" in text(app, "#reason")
        await pilot.press("y")
        await until(pilot, lambda: app.current_mode == "home", what="home")
        assert (tmp_path / "new" / "plumb.toml").is_file()

    run(app, body)
    declined = make_app(tmp_path / "other")

    async def decline(pilot):
        await pilot.press("n")
        await pilot.pause()

    run(declined, decline)
    assert not (tmp_path / "other" / "plumb.toml").exists()


def test_a_terminal_too_small_gets_a_readable_message(ws):
    app = make_app(ws.root, "label")

    async def body(pilot):
        await until(pilot, lambda: app.current_mode == "label")
        assert app.screen.has_class("-too-small")
        assert "needs a terminal of at least 60x14; this one is 40x10" in text(app, "#too-small")
        await pilot.resize_terminal(100, 30)
        await until(pilot, lambda: not app.screen.has_class("-too-small"), what="the body back")

    run(app, body, size=(40, 10))


# -- constitution --------------------------------------------------------------------------------------

BAD = '''name = "mine"
version = "1"
description = "d"

[[principles]]
id = "short"
text = "Be short."
colour = "blue"
'''


def test_a_constitution_error_shows_its_line_and_the_app_keeps_working(ws):
    from textual.widgets import OptionList, TextArea

    (ws.root / "mine.toml").write_text(BAD)
    cfg = ws.root / "plumb.toml"
    cfg.write_text(cfg.read_text().replace('constitution = "concise-writer"', 'constitution = "mine.toml"'))
    app = make_app(ws.root)

    async def body(pilot):
        await until(pilot, lambda: "mine.toml:8" in text(app, "#constitution"), what="the problem on home")
        await pilot.press("2")
        await until(pilot, lambda: app.current_mode == "constitution")
        problems = app.screen.query_one("#problems", OptionList)
        await until(pilot, lambda: problems.option_count == 1, what="one problem")
        assert str(problems.get_option_at_index(0).prompt).startswith("mine.toml:8: unknown key 'principles[0].colour'")
        problems.highlighted = 0
        problems.focus()
        await pilot.press("enter")
        editor = app.screen.query_one("#toml", TextArea)
        await until(pilot, lambda: editor.cursor_location == (7, 0), what="the cursor on line 8")
        assert editor.has_focus
        editor.load_text(BAD.replace('colour = "blue"\n', ""))  # fixed as you type
        await until(pilot, lambda: problems.option_count == 0, what="no problems")
        assert "ok" in text(app, "#verdict")
        editor.insert("oops = 1\n", (0, 0))
        await until(pilot, lambda: problems.option_count == 1, what="the new problem")
        assert str(problems.get_option_at_index(0).prompt).startswith("mine.toml:1: unknown key 'oops'")
        await pilot.press("ctrl+s")  # saving with problems is allowed, with a warning
        await pilot.pause()
        assert (ws.root / "mine.toml").read_text().startswith("oops = 1")

    run(app, body)


def test_saving_a_shipped_constitution_writes_a_workspace_copy_and_points_plumb_toml_at_it(ws):
    app = make_app(ws.root, "constitution")

    async def body(pilot):
        await until(pilot, lambda: "ok" in text(app, "#verdict"), what="the shipped constitution")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.session.ws.constitution_name == "concise-writer.toml", what="the reload")

    run(app, body)
    assert (ws.root / "concise-writer.toml").is_file()
    assert 'constitution = "concise-writer.toml"' in (ws.root / "plumb.toml").read_text()


# -- label -----------------------------------------------------------------------------------------------


def _winner_text(store, row) -> str:
    winner = {"a": row["a_id"], "b": row["b_id"]}.get(row["winner"])
    return "tie" if winner is None else store.one("SELECT text FROM samples WHERE id = ?", (winner,))["text"]


def test_label_keys_store_the_shown_choice_and_undo_removes_exactly_one(ws):
    from plumb.core.records import Judgment
    from plumb.tui.widgets.answer_pair import AnswerPair

    pids = with_answers(ws, prompts=3)
    with ws.store() as store:  # the judge's two orders disagreed on the last prompt's pair: it comes first
        a, b = [r["id"] for r in store.query("SELECT id FROM samples WHERE prompt_id = ?", (pids[2],))]
        store.add_judgment(pids[2], a, b, Judgment("tie", 0.5, "llamacpp:judge.gguf", ab="a", ba="b"),
                           Provenance(model="llamacpp:judge.gguf", constitution_hash=ws.constitution().hash))
    app = make_app(ws.root, "label")

    async def body(pilot):
        pair = app.screen.query_one(AnswerPair)
        await until(pilot, lambda: "3 pairs to label" in text(app, "#label-status"), what="the pairs")
        assert "Question 2?" in text(app, "#prompt") and "unsure" in text(app, "#label-status")
        shown = []
        for key in ("a", "b", "t"):
            shown.append(pair.texts)
            await pilot.press(key)
            await pilot.pause()
            if key == "a":
                assert "the AI judge chose a tie" in text(app, "#reveal") and "disagreed" in text(app, "#reveal")
                await until(pilot, lambda: "0/1" in text(app, "#agreement"), what="judge-vs-you agreement")
        store = app.session.store
        rows = store.query("SELECT * FROM judgments WHERE source = 'human' ORDER BY id")
        assert [_winner_text(store, r) for r in rows] == [shown[0][0], shown[1][1], "tie"]
        assert all(r["judge"] == "human" and json.loads(r["params"])["shown_first"] in "ab" for r in rows)
        await pilot.press("u")
        await pilot.pause()
        left = store.query("SELECT id FROM judgments WHERE source = 'human' ORDER BY id")
        assert [r["id"] for r in left] == [rows[0]["id"], rows[1]["id"]]
        assert pair.texts == shown[2]  # the undone pair is back, as it was shown
        await pilot.press("a", "u", "u", "u")
        await pilot.pause()
        assert store.one("SELECT count(*) FROM judgments WHERE source = 'human'")[0] == 0

    run(app, body)


def test_no_pairs_to_label_says_how_to_make_some(ws):
    with_answers(ws, prompts=2, answers=1)
    app = make_app(ws.root, "label")

    async def body(pilot):
        await until(pilot, lambda: "No pairs" in text(app, "#label-status"), what="the message")
        assert "plumb generate -n 2" in text(app, "#label-status")
        await pilot.press("a", "u")
        assert app.session.store.one("SELECT count(*) FROM judgments")[0] == 0

    run(app, body)


# -- generate ---------------------------------------------------------------------------------------------


def test_generate_samples_in_the_background_and_a_bad_model_is_named(ws):
    from textual.widgets import Input

    use_plugins(ws, {"echo_backend.py": plugin_source("echo_backend.py")})
    with_answers(ws, prompts=2, answers=0)
    app = make_app(ws.root, "generate")

    async def body(pilot):
        screen = app.screen
        screen.query_one("#model", Input).value = "echo:x"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "Stored 4 answers" in text(app, "#gen-status"), what="the samples")
        assert app.session.store.one("SELECT count(*) FROM samples WHERE backend = 'echo'")[0] == 4
        screen.query_one("#model", Input).value = "llamacpp:missing.gguf"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "Not sampled" in text(app, "#gen-status"), what="the error")
        assert "missing.gguf" in text(app, "#gen-status") and "not found" in text(app, "#gen-status")

    run(app, body)


# -- compare ----------------------------------------------------------------------------------------------


class FakeLlama:
    """A throwaway plugin standing in for llama.cpp: its backend's answers say which side (adapter scale) made them."""

    class Sides(Backend):
        name = "llamacpp"
        lora_scale = True

        def generate(self, model, chats, params):
            side = "tuned" if model.lora and model.lora_scale else "base"
            return [[Completion(f"{side} answer to {c.last_user}", str(model), "llamacpp")] for c in chats]

    @hookimpl
    def plumb_register_backends(self, register):
        register(self.Sides())


class Order:
    """A stand-in for the app's random order: True = the second answer is shown first."""

    def __init__(self, *swaps):
        self.swaps = list(swaps)

    def random(self):
        return 0.1 if self.swaps.pop(0) else 0.9


def test_blind_ab_stores_the_choice_whatever_the_display_order(ws):
    from textual.widgets import Input

    from plumb.tui.widgets.answer_pair import AnswerPair

    for name in ("models/base.gguf", "adapters/tuned.gguf"):
        (ws.root / name).write_bytes(b"stand-in")
    with_answers(ws, prompts=2, answers=0, split="eval")
    app = make_app(ws.root, "compare")

    async def body(pilot):
        app.session.pm.unregister(name="plumb.plugins.llamacpp")
        app.session.pm.register(FakeLlama(), name="fake_llama")
        app.rng = Order(False, True)
        screen = app.screen
        screen.query_one("#base", Input).value = str(ws.root / "models/base.gguf")
        screen.query_one("#adapter", Input).value = str(ws.root / "adapters/tuned.gguf")
        pair = screen.query_one(AnswerPair)
        for expected in ("base", "tuned"):  # "a" picks the left answer: base first, then tuned (swapped)
            await pilot.press("ctrl+b")
            await until(pilot, lambda: screen.blind, what="a blind trial")
            assert pair.texts[0].startswith(expected)
            await pilot.press("a")
            await until(pilot, lambda: not screen.blind, what="the verdict")
        rows = app.session.store.query("SELECT * FROM judgments WHERE source = 'human' ORDER BY id")
        assert [r["winner"] for r in rows] == ["a", "b"]  # a = base, b = tuned
        assert [json.loads(r["params"])["shown_first"] for r in rows] == ["a", "b"]
        assert "tuned 1, base 1, ties 0" in text(app, "#winrate") and "n=2" in text(app, "#winrate")
        await pilot.press("ctrl+b")
        await until(pilot, lambda: "every eval prompt" in text(app, "#cmp-status"), what="the end")
        screen.query_one("#prompt", Input).value = "Why is the sky blue?"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: pair.texts[1].startswith("tuned answer to Why"), what="side by side")

    run(app, body)


def test_a_model_that_fails_to_load_is_named_with_the_reason(ws):
    from textual.widgets import Input

    (ws.root / "models/bad.gguf").write_bytes(b"this is not a GGUF file")
    (ws.root / "adapters/a.gguf").write_bytes(b"nor this")
    app = make_app(ws.root, "compare")

    async def body(pilot):
        screen = app.screen
        screen.query_one("#base", Input).value = str(ws.root / "models/bad.gguf")
        screen.query_one("#adapter", Input).value = str(ws.root / "adapters/a.gguf")
        screen.query_one("#prompt", Input).value = "hi"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "No answers" in text(app, "#cmp-status"), timeout=60, what="the error")
        assert "bad.gguf" in text(app, "#cmp-status")

    run(app, body)


# -- runs and plugins ---------------------------------------------------------------------------------------


def test_runs_lists_runs_with_status_charts_and_error(ws):
    from textual.widgets import DataTable

    from plumb.tui.widgets.run_charts import RunCharts

    with ws.store() as store:
        done = store.start_run("dpo", {"lr": 1e-4}, "/out/1", Provenance(model="hf:x"))
        for step in (1, 2, 3):
            store.log_metrics(done, step, {"loss": 1.0 / step, "rewards/accuracies": 0.5})
        store.finish_run(done, "done", metrics={"loss": 0.4})
        failed = store.start_run("dpo", {}, "/out/2", Provenance(model="hf:x"))
        store.finish_run(failed, "failed", "the training process was killed by signal SIGKILL")
    app = make_app(ws.root, "runs")

    async def body(pilot):
        table = app.screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="two runs")
        assert "SIGKILL" in text(app, "#run-detail")
        table.move_cursor(row=1)
        await pilot.pause()
        assert app.screen.query_one(RunCharts).chart("loss").points == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
        assert "final: loss 0.4" in text(app, "#run-detail")

    run(app, body)


def test_runs_show_a_runs_report(ws, tmp_path):
    """A tune run's report.md as written; a GRPO run's report.json as a table of its held-out evaluations."""
    from textual.widgets import DataTable, Markdown

    md = tmp_path / "report.md"
    md.write_text("# plumb tune report\n\ntuned beats base")
    grpo = tmp_path / "report.json"
    grpo.write_text(json.dumps({"evaluations": [{"step": 0, "kl": 0.0, "eval/reward": 0.2, "eval/signal": 0.5},
                                                {"step": 8, "kl": 0.05, "eval/reward": 0.8, "eval/signal": 0.41}],
                                "best": {"step": 0, "signal": 0.5}}))
    with ws.store() as store:
        tuned = store.start_run("dpo", {}, "/out/1", Provenance(model="hf:x"))
        store.finish_run(tuned, "done")
        for path in (md, tmp_path / "tune-report.json", tmp_path / "training.png"):  # as plumb tune records them
            path.touch()
            store.add_artifact("report", str(path), tuned)
        rl = store.start_run("grpo", {}, "/out/2", Provenance(model="hf:x"))
        store.finish_run(rl, "done")
        store.add_artifact("report", str(grpo), rl)
        plain = store.start_run("dpo", {}, "/out/3", Provenance(model="hf:x"))
        store.finish_run(plain, "done")
    app = make_app(ws.root, "runs")

    def shown() -> str:
        report = app.screen.query_one("#run-report", Markdown)
        return report.source if report.display else ""

    async def body(pilot):
        table = app.screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 3, what="three runs")
        assert shown() == ""  # the newest run has no report
        table.move_cursor(row=1)
        await until(pilot, lambda: "Held-out evaluations" in shown(), what="the GRPO report")
        assert "| 8 | 0.05 | 0.8 | 0.41 |" in shown() and "best by the signal: step 0" in shown()
        table.move_cursor(row=2)
        await until(pilot, lambda: "tuned beats base" in shown(), what="the tune report")

    run(app, body)


@pytest.mark.filterwarnings("ignore::plumb.core.plugins.PluginWarning")
def test_plugins_lists_builtins_offers_and_a_broken_plugin_with_its_reason(ws):
    from textual.widgets import DataTable

    use_plugins(ws, {"broken.py": "import no_such_module_here\n"})
    app = make_app(ws.root, "plugins")

    async def body(pilot):
        plugins = app.screen.query_one("#plugins", DataTable)
        await until(pilot, lambda: plugins.row_count > 1, what="the plugins")
        rows = [[str(c) for c in plugins.get_row_at(i)] for i in range(plugins.row_count)]
        assert any(r[0] == "plumb.plugins.preference" and "plumb_register_methods" in r[3] for r in rows)
        assert any(r[0] == "broken" and "FAILED" in r[3] and "no_such_module_here" in r[3] for r in rows)
        offered = app.screen.query_one("#offered", DataTable)
        names = {(str(offered.get_row_at(i)[0]), str(offered.get_row_at(i)[1])) for i in range(offered.row_count)}
        assert ("method", "dpo") in names and ("backend", "llamacpp") in names and ("verifier", "max_words") in names

    run(app, body)


# -- light start ---------------------------------------------------------------------------------------------

FIRST_FRAME = r'''
import asyncio, json, sys, time
start = time.perf_counter()
from plumb.tui.factory import make_app
app = make_app(sys.argv[1])
out = {}
async def main():
    async with app.run_test(size=(100, 30)) as pilot:
        out["first_frame"] = time.perf_counter() - start
        while app.current_mode != "home":
            await pilot.pause(0.02)
        await app.workers.wait_for_complete()
asyncio.run(main())
out["heavy"] = [m for m in ("torch", "transformers", "peft", "llama_cpp") if m in sys.modules]
print(json.dumps(out))
'''


def test_the_first_frame_is_fast_and_imports_nothing_heavy(ws):
    times = []
    for _ in range(3):
        res = subprocess.run([sys.executable, "-c", FIRST_FRAME, str(ws.root)], capture_output=True, text=True,
                             timeout=120)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["heavy"] == [], res.stderr
        times.append(out["first_frame"])
    assert min(times) < 1.0, f"first frame took {times} s"
