"""A plain chat with a model, base or tuned: a transcript above a one-line input.

Each turn sends the whole conversation, and the reply streams into the
transcript token by token from a thread worker, posted to the UI with
``call_from_thread``. ``side`` says who answers the next turn: the base GGUF
alone or with the tuned adapter. The owning screen passes in two callables:
``models()``, the (base, adapter) GGUF paths as typed, and ``reply(side, chat,
params, on_text)``, which streams one reply (the compare screen's goes through
``ctx.stream``: llama.cpp loads the base once and only rescales the adapter).
Chat turns are not stored. Control characters in the turns are shown escaped
(``plumb.core.text.printable``); ``history`` keeps the exact text.
"""

from __future__ import annotations

from typing import Any, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Static
from textual.worker import get_current_worker

from plumb.core.errors import PlumbError
from plumb.core.records import SamplingParams
from plumb.core.text import printable

class ChatPanel(Vertical):
    def __init__(self, models: Callable[[], tuple[str, str]], reply: Callable[..., Any], *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.models = models  # () -> (base GGUF, adapter GGUF), as typed on the screen
        self.reply = reply  # (side, chat, params, on_text) -> the Completion, streamed through on_text
        self.side = "tuned"
        self.history: list[dict[str, str]] = []  # the conversation so far, as sent to the model
        self.turn = 0  # bumped by each turn and each clear: text from an older worker is dropped
        self.streaming = False
        self.params = SamplingParams(temperature=0.0, max_tokens=256)  # greedy, as compare answers

    def compose(self) -> ComposeResult:
        yield Static(id="chat-status", classes="status")
        yield VerticalScroll(id="chat-log")
        yield Input(id="chat-input", placeholder="say something; enter sends", compact=True)

    def on_mount(self) -> None:
        self._status()

    def _status(self) -> None:
        other = "base" if self.side == "tuned" else "tuned"
        self.query_one("#chat-status", Static).update(
            f"Chatting with [b]{self.side}[/]: enter sends; ctrl+t talks to {other}, ctrl+l clears.")

    def switch_side(self) -> None:
        """The next turn is answered by the other side (the conversation so far is kept)."""
        self.side = "base" if self.side == "tuned" else "tuned"
        self._status()

    def clear(self) -> None:
        """Stop a reply that is streaming and forget the conversation."""
        self.workers.cancel_group(self, "chat")
        self.history, self.turn, self.streaming = [], self.turn + 1, False
        self.query_one("#chat-log", VerticalScroll).remove_children()

    @on(Input.Submitted, "#chat-input")
    def submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.streaming:
            self.notify("The reply is still coming; ctrl+l stops it and clears the chat.")
            return
        base, adapter = self.models()
        if not base or (self.side == "tuned" and not adapter):
            need = "the base GGUF" + (" and the adapter GGUF (or ctrl+t: chat with base)" if self.side == "tuned"
                                      else "")
            self.notify(f"cannot chat: give {need}", severity="error", timeout=12, markup=False)
            return
        event.input.value = ""
        self.history.append({"role": "user", "content": text})
        self._say("you", text)
        self._say(self.side, "")
        self.turn += 1
        self.streaming = True
        self.stream_reply(self.turn, self.side, list(self.history))

    def _say(self, speaker: str, text: str) -> None:
        log = self.query_one("#chat-log", VerticalScroll)
        log.mount(Static(speaker, classes="chat-speaker", markup=False))
        log.mount(Static(printable(text), classes="chat-text", markup=False))
        log.scroll_end(animate=False)

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def stream_reply(self, turn: int, side: str, messages: list[dict[str, str]]) -> None:
        """``side``'s reply to ``messages``, streamed into the transcript."""
        from plumb.core.context import Cancelled
        from plumb.core.records import Chat

        worker = get_current_worker()

        def on_text(text: str) -> None:
            if worker.is_cancelled:
                raise Cancelled("the chat was cleared")
            self.app.call_from_thread(self._text, turn, text)

        try:
            reply = self.reply(side, Chat.from_dicts(messages), self.params, on_text)
        except Cancelled:
            return
        except PlumbError as exc:  # a model that fails to load, a conversation longer than the context
            self.app.call_from_thread(self._done, turn, None, str(exc))
        except Exception as exc:  # a bug: report it, keep the app
            self.app.call_from_thread(self._done, turn, None, f"unexpected {type(exc).__name__}: {exc}")
        else:
            self.app.call_from_thread(self._done, turn, reply.text, "")

    def _text(self, turn: int, text: str) -> None:
        """The streaming reply so far replaces the last turn's text."""
        if turn == self.turn:
            self.query(".chat-text").last(Static).update(printable(text))
            self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    def _done(self, turn: int, text: str | None, error: str) -> None:
        if turn != self.turn:
            return
        self.streaming = False
        if text is None:
            self.history.pop()  # the unanswered turn: the person can send it again
            self._text(turn, f"(no reply: {error})")
            self.notify(f"no reply: {error}", severity="error", timeout=12, markup=False)
            return
        self._text(turn, text)
        self.history.append({"role": "assistant", "content": text})

    @property
    def transcript(self) -> list[tuple[str, str]]:
        """The turns shown: (speaker, text)."""
        speakers: list[Any] = list(self.query(".chat-speaker").results(Static))
        texts: list[Any] = list(self.query(".chat-text").results(Static))
        return [(str(s.content), str(t.content)) for s, t in zip(speakers, texts)]
