"""The generate screen's critique action, driven by Pilot: the real critique stage and CAI plugin, a scripted critic."""

from __future__ import annotations

import pytest

from plumb.core.workspace import init_workspace
from plumb.tui.factory import make_app
from tests.test_tui import run, text, until, use_plugins, with_answers
from tests.test_tui_train import record_notes
from tests.plugins import plugin_source

# A critic whose words the test knows: each critique quotes the answer it critiques; the revision of a
# draft that starts "answer 1" talks about the critique (flagged), every other revision is "Paris.".
CRITIC = plugin_source("critic.py")


@pytest.fixture
def ws(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    use_plugins(ws, {"critic.py": CRITIC})
    with_answers(ws, prompts=2, answers=2)  # "answer K to question I"
    return ws


def test_critique_stores_every_round_and_shows_the_latest_side_by_side(ws):
    from textual.widgets import Input, OptionList, ProgressBar

    from plumb.tui.widgets.critique_view import CritiqueView

    app = make_app(ws.root, "generate")

    async def body(pilot):
        screen = app.screen
        view = screen.query_one(CritiqueView)
        assert not view.display  # nothing critiqued yet
        screen.query_one("#model", Input).value = "script:critic"
        screen.query_one("#rounds", Input).value = "2"
        await pilot.press("ctrl+g")
        await until(pilot, lambda: "Critiqued" in text(app, "#gen-status"), what="the critique")
        status = text(app, "#gen-status")
        assert "Critiqued 4 drafts (8 rounds) with script:critic; 2 final revisions usable" in status
        assert "repeats-draft 2" in status and "talks-about-critique 2" in status
        bar = screen.query_one("#gen-progress", ProgressBar)
        assert bar.total == 4 and bar.progress == 4
        store = app.session.store
        rows = store.query("SELECT c.round, c.critique, s.text, s.kind FROM critiques c "
                           "JOIN samples s ON s.id = c.revision_id ORDER BY c.id")
        assert len(rows) == 8 and {r["kind"] for r in rows} == {"revision"}
        assert sorted(r["round"] for r in rows) == [1] * 4 + [2] * 4

        assert view.display and [it.draft for it in view.items] == [
            f"answer {k} to question {i}" for i in (0, 1) for k in (0, 1)]
        # draft "answer 0": round 1 revised it to "Paris.", round 2 critiqued "Paris." and repeated it
        shown = view.shown
        assert shown["draft"] == "answer 0 to question 0"
        assert shown["critique"] == "Too long: Paris." and "round 2" in shown["critique title"]
        assert shown["revision"] == "Paris." and "flagged: repeats-draft" in shown["revision title"]
        # draft "answer 1": round 1 talked about the critique (flagged), round 2 answered: usable
        screen.query_one("#crit-items", OptionList).highlighted = 1
        await pilot.pause()
        shown = view.shown
        assert shown["draft"] == "answer 1 to question 0"
        assert shown["critique"] == "Too long: I'm sorry, the previous response was too long."
        assert shown["revision"] == "Paris." and "usable" in shown["revision title"]
        assert "flagged" not in shown["revision title"]

        await pilot.press("ctrl+g")  # a rerun has nothing left to do
        await until(pilot, lambda: "already critiqued" in text(app, "#gen-status"), what="the rerun")
        assert "Critiqued 0 drafts" in text(app, "#gen-status") and bar.percentage == 1  # done, not waiting
        assert store.one("SELECT count(*) FROM critiques")[0] == 8

    run(app, body)


def test_critique_with_nothing_sampled_is_a_notification(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    use_plugins(ws, {"critic.py": CRITIC})
    with_answers(ws, prompts=1, answers=0)
    app = make_app(ws.root, "generate")

    async def body(pilot):
        from textual.widgets import Input

        notes = record_notes(app)
        app.screen.query_one("#model", Input).value = "script:critic"
        await pilot.press("ctrl+g")
        await until(pilot, lambda: "Not critiqued" in text(app, "#gen-status"), what="the refusal")
        assert any(sev == "error" and "no sampled answers" in msg for msg, sev in notes)
        assert app.screen.running is None

    run(app, body)
