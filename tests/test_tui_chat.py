"""Streaming chat: ``llamacpp.stream`` on the tiny GGUF, and the compare screen's chat with base and tuned."""

from __future__ import annotations

import pytest

from plumb.core.records import Chat, ModelSpec, SamplingParams
from plumb.core.workspace import init_workspace
from plumb.tui.factory import make_app
from tests.test_tui import run, until

PARAMS = SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A strong random GGUF LoRA on the tiny model: tuned answers differ from base ones, token by token."""
    from plumb.export import export_lora
    from tests.tiny import random_lora

    out = tmp_path_factory.mktemp("chat-lora")
    random_lora(tiny_model_dir, out / "a", ["q_proj", "v_proj", "down_proj"], r=4, std=1.0, seed=0, only_b=False)
    return export_lora(out / "a", out / "a.gguf", base_dir=tiny_model_dir)


def test_stream_hands_over_the_text_token_by_token_and_equals_generate(tiny_gguf, adapter):
    from plumb import llamacpp

    spec = ModelSpec("llamacpp", str(tiny_gguf), str(adapter), 1.0)
    chat = Chat.from_user("Why is the sky blue?")
    seen: list[str] = []
    got = llamacpp.stream(spec, chat, PARAMS, seen.append)
    want = llamacpp.generate(spec, [chat], PARAMS)[0][0]
    assert got.text == want.text and got.completion_tokens == want.completion_tokens
    assert len(seen) == got.completion_tokens > 1 and seen[-1] == got.text

    class Stop(Exception):
        pass

    def stop_after_two(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            raise Stop

    seen.clear()
    with pytest.raises(Stop):
        llamacpp.stream(spec, chat, PARAMS, stop_after_two)
    assert len(seen) == 2
    assert llamacpp.stream(spec, chat, PARAMS, lambda text: None).text == want.text  # still usable


def test_chat_streams_replies_with_the_history_and_switches_between_base_and_tuned(tmp_path, tiny_gguf, adapter,
                                                                                     monkeypatch):
    from textual.widgets import Input

    from plumb import llamacpp
    from plumb.tui.widgets.chat_panel import ChatPanel

    sent: list[tuple[float, list[dict[str, str]]]] = []  # (adapter scale, the conversation) of each turn
    real = llamacpp.stream

    def recording(spec, chat, params, on_text):
        sent.append((spec.lora_scale if spec.lora else 0.0, chat.to_dicts()))
        return real(spec, chat, params, on_text)

    monkeypatch.setattr(llamacpp, "stream", recording)

    def answer(scale: float, messages: list[dict[str, str]]) -> str:
        spec = ModelSpec("llamacpp", str(tiny_gguf), str(adapter), scale)
        return real(spec, Chat.from_dicts(messages), PARAMS, lambda text: None).text

    ws = init_workspace(tmp_path / "ws")
    app = make_app(ws.root, "compare")

    async def body(pilot):
        screen = app.screen
        screen.query_one("#base", Input).value = str(tiny_gguf)
        screen.query_one("#adapter", Input).value = str(adapter)
        panel = screen.query_one(ChatPanel)
        panel.params = PARAMS
        streamed: list[str] = []
        show = panel._text
        panel._text = lambda turn, text: (streamed.append(text), show(turn, text))[1]
        assert not panel.display
        await pilot.press("ctrl+n")
        assert panel.display and app.focused is screen.query_one("#chat-input", Input)

        async def say(text: str) -> None:
            screen.query_one("#chat-input", Input).value = text
            await pilot.press("enter")
            await until(pilot, lambda: not panel.streaming, timeout=60, what="the reply")

        await say("Why is the sky blue?")
        first = answer(1.0, [{"role": "user", "content": "Why is the sky blue?"}])
        assert panel.transcript == [("you", "Why is the sky blue?"), ("tuned", first)]
        assert len(streamed) > 2 and streamed[-1] == first  # token by token, then the whole reply

        await pilot.press("ctrl+t")  # base answers the next turn, with the conversation so far
        await say("And the sea?")
        history = [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": first},
                   {"role": "user", "content": "And the sea?"}]
        assert sent[-1] == (0.0, history)
        assert panel.transcript[-1] == ("base", answer(0.0, history))
        assert answer(0.0, history) != answer(1.0, history)  # so which side answered shows

        await pilot.press("ctrl+t")
        await say("Thanks.")
        assert sent[-1][0] == 1.0 and len(sent[-1][1]) == 5
        assert [speaker for speaker, _ in panel.transcript] == ["you", "tuned", "you", "base", "you", "tuned"]

        await pilot.press("ctrl+l")
        await pilot.pause()
        assert panel.transcript == [] and panel.history == []
        await say("Hello?")
        assert sent[-1] == (1.0, [{"role": "user", "content": "Hello?"}])
        assert len([k for k in llamacpp.model._LOADED if k[0] == str(tiny_gguf.resolve())]) == 1  # loaded once
        await pilot.press("ctrl+n")  # back to compare: the keys are compare's again
        assert not panel.display and app.focused is None and screen.query_one("#winrate").display

    run(app, body)


def test_chat_without_a_model_is_a_notification(tmp_path):
    from textual.widgets import Input

    from plumb.tui.widgets.chat_panel import ChatPanel
    from tests.test_tui_train import record_notes

    app = make_app(init_workspace(tmp_path / "ws").root, "compare")

    async def body(pilot):
        notes = record_notes(app)
        screen = app.screen
        screen.query_one("#base", Input).value = str(tmp_path / "missing.gguf")
        await pilot.press("ctrl+n")
        screen.query_one("#chat-input", Input).value = "hi"
        await pilot.press("enter")
        assert any(sev == "error" and "adapter GGUF" in msg for msg, sev in notes)  # tuned needs the adapter
        await pilot.press("ctrl+t", "enter")  # base needs no adapter: the input still holds "hi"
        panel = screen.query_one(ChatPanel)
        await until(pilot, lambda: not panel.streaming, what="the failure")
        assert any(sev == "error" and "missing.gguf" in msg for msg, sev in notes)
        assert panel.history == [] and "no reply" in panel.transcript[-1][1]

    run(app, body)
