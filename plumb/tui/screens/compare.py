"""Compare: the base model and the tuned one answer the same prompt, from one loaded GGUF.

A face over the compare stage (``pipeline.compare``): llama.cpp loads the base
GGUF once and applies the GGUF LoRA for the tuned side. ``ctrl+r`` shows both
answers to the typed prompt, labelled. Blind A/B (``ctrl+b``) shows them as A
and B in random order, for the typed prompt or the next eval prompt not yet
judged (``compare.next_unjudged``); the person's choice is stored as a human
judgment by ``pipeline.label.record`` (a = base, b = tuned) and the tuned
model's win rate over base (``compare.win_counts``) is kept with its counts and
a 95% Wilson interval. The stage stores the answers with their provenance and
reuses them, here and from ``plumb tune``/``evaluate``.

Chat (``ctrl+n``, ``widgets/chat_panel.py``) talks to one side at a time,
the reply streaming in through ``ctx.stream`` as it is decoded; ``ctrl+t``
switches between base and tuned, ``ctrl+l`` clears the conversation. Chat
turns are not stored.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.widgets import Input, Static

from plumb.core.errors import PlumbError
from plumb.tui.screens.base import PlumbScreen
from plumb.tui.widgets.answer_pair import AnswerPair
from plumb.tui.widgets.chat_panel import ChatPanel
from plumb.tui.widgets.field_row import FieldRow

CHOICE = {"a": "first", "b": "second", "tie": "tie"}
READY = "ctrl+r: base and tuned side by side.  ctrl+b: blind A/B, then a, b or t.  ctrl+n: chat."


def _constitution_hash(session: Any) -> str | None:
    try:
        return session.constitution().hash
    except PlumbError:  # a constitution with errors: the verdict is still worth keeping
        return None


def _options(base: str, adapter: str, **kw: Any) -> Any:
    from plumb.pipeline.compare import CompareOptions

    return CompareOptions(base, adapter, **kw)


def _models(base: str, adapter: str) -> tuple[str, str]:
    from plumb.pipeline.compare import side_models

    return side_models(_options(base, adapter))


class CompareScreen(PlumbScreen):
    NAME = "compare"
    MIN_WIDTH = 80
    MIN_HEIGHT = 20
    BINDINGS = [
        Binding("ctrl+r", "ask", "Ask both"),
        Binding("ctrl+b", "blind", "Blind A/B"),
        Binding("a", "choose('a')", "A is better"),
        Binding("b", "choose('b')", "B is better"),
        Binding("t", "choose('tie')", "Tie"),
        Binding("ctrl+n", "chat", "Chat"),
        Binding("ctrl+t", "chat_side", "Chat base/tuned"),
        Binding("ctrl+l", "chat_clear", "Clear chat"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.answers: Any = None  # the compared row on screen (pipeline.compare.Row)
        self.blind = False  # the answers on screen are a blind trial waiting for a verdict
        self.swapped = False  # True: the tuned answer is shown as A
        self.chatting = False  # the chat is shown instead of the side-by-side answers
        self.models: tuple[str, str] = ("", "")  # the stored model names of the answers on screen

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """a, b and t are shown (and work) only while a blind trial waits for a verdict (False hides them)."""
        return self.blind if action == "choose" else super().check_action(action, parameters)

    def compose_body(self) -> ComposeResult:
        yield FieldRow("base GGUF", id="base", placeholder="the model the adapter was trained on, .gguf")
        yield FieldRow("adapter GGUF", id="adapter", placeholder="the tuned GGUF LoRA (a run's adapter.gguf)")
        yield FieldRow("prompt", id="prompt", placeholder="blind A/B with no prompt: the next eval prompt")
        yield Static(READY, id="cmp-status", classes="status")
        yield AnswerPair(id="cmp-pair")
        yield Static(id="winrate", classes="status")
        yield ChatPanel(self.chat_models, self.chat_reply, id="chat")

    def on_mount(self) -> None:
        from plumb.pipeline.queries import latest_gguf_lora

        self.query_one("#base", Input).value = self._default_base()
        self.query_one("#adapter", Input).value = latest_gguf_lora(self.session.store) or ""
        self.query_one("#cmp-pair", AnswerPair).display = False
        base, adapter = self.query_one("#base", Input).value, self.query_one("#adapter", Input).value
        if base and adapter:
            self.show_win_rate(_models(base, adapter))

    def _default_base(self) -> str:
        """The generate model's file when its backend applies a LoRA per call (llama.cpp: a GGUF), else empty."""
        from plumb.models.specs import parse_spec

        try:
            spec = parse_spec(self.session.ws.model("generate"))
            backend = self.session.pm.backend(spec)[0]
        except PlumbError:  # e.g. the starter is not pulled yet, a backend no plugin offers
            return ""
        return spec.target if backend.lora_scale and backend.adapters == "gguf" else ""

    def _paths(self) -> tuple[str, str] | None:
        base = self.query_one("#base", Input).value.strip()
        adapter = self.query_one("#adapter", Input).value.strip()
        if not base or not adapter:
            self.fail("cannot compare", "give the base GGUF and the adapter GGUF (train with gguf checked to get one)")
            return None
        return base, adapter

    def action_ask(self) -> None:
        self._start(blind=False)

    def action_blind(self) -> None:
        self._start(blind=True)

    def _start(self, blind: bool) -> None:
        paths = self._paths()
        if paths is None:
            return
        self.show_chat(False)
        text = self.query_one("#prompt", Input).value.strip()
        if not text and not blind:
            self.fail("cannot ask", "type a prompt first")
            return
        self.set_blind(False)
        self.status(f"Asking base and tuned ({escape(paths[0])} + {escape(paths[1])})...")
        self.generate(paths[0], paths[1], text, blind)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def generate(self, base: str, adapter: str, text: str, blind: bool) -> None:
        """Both sides' answers through the compare stage: to the typed prompt, or the next unjudged eval prompt."""
        from plumb.pipeline.compare import compare, next_unjudged

        session = self.session
        try:
            prompt_ids: tuple[int, ...] = ()
            if not text:
                pid = next_unjudged(session.store, _models(base, adapter))
                if pid is None:
                    raise PlumbError("every eval prompt already has your verdict for this adapter; type a prompt, "
                                     "or import more eval prompts (`plumb data import FILE --split eval`).")
                prompt_ids = (pid,)
            opts = _options(base, adapter, prompt=text or None, prompt_ids=prompt_ids)
            (row,) = compare(session, opts).rows
        except Exception as exc:  # a model that fails to load: say which and why, keep the app
            self.app.call_from_thread(self.failed, base, adapter, exc)
            return
        self.app.call_from_thread(self.show_answers, row, _models(base, adapter), blind)

    def failed(self, base: str, adapter: str, exc: Exception) -> None:
        self.status(f"[red]No answers[/]: {escape(str(exc))}")
        self.fail(f"could not answer with {base} + {adapter}", exc)

    def show_answers(self, got: Any, models: tuple[str, str], blind: bool) -> None:
        self.answers, self.models = got, models
        self.set_blind(blind)
        pair = self.query_one("#cmp-pair", AnswerPair)
        pair.display = True
        if blind:
            self.swapped = self.app.rng.random() < 0.5
            left, right = (got.tuned, got.base) if self.swapped else (got.base, got.tuned)
            pair.show(got.prompt, left, right)
            self.status("Blind: which answer is better?  a, b or t (tie).")
            self.query_one("#pane-left").focus()
        else:
            pair.show(got.prompt, got.base, got.tuned, ("base (adapter scale 0)", "tuned (adapter scale 1)"))
            self.status("Side by side. ctrl+b for a blind A/B on the next eval prompt.")
        self.show_win_rate(models)

    def action_choose(self, shown: str) -> None:
        """Store the person's blind verdict (``pipeline.label.record``): ``shown`` is a, b (as displayed) or tie."""
        from plumb.pipeline.label import LabelPair, record

        got = self.answers
        if got is None or not self.blind:
            self.app.bell()
            return
        first, second = (got.tuned, got.base) if self.swapped else (got.base, got.tuned)
        pair = LabelPair(got.prompt_id, got.prompt, got.base_id, got.tuned_id, first, second, self.swapped,
                         None, None, None)
        try:
            record(self.session.store, pair, CHOICE[shown], _constitution_hash(self.session))
        except Exception as exc:  # not stored: keep the trial on screen
            self.fail("the verdict was not stored", exc)
            return
        self.set_blind(False)
        picked = "neither" if shown == "tie" else "tuned" if (shown == "a") == self.swapped else "base"
        a_was = "tuned" if self.swapped else "base"
        self.status(f"Stored: you preferred {picked} (A was {a_was}). ctrl+b for the next one.")
        self.show_win_rate(self.models)

    def show_win_rate(self, models: tuple[str, str]) -> None:
        from plumb.pipeline.compare import win_counts

        tuned, base, ties = win_counts(self.session.store, models)
        n = tuned + base + ties
        if not n:
            self.query_one("#winrate", Static).update("[dim]No blind verdicts for this adapter yet.[/]")
            return
        from plumb.pipeline.stats import wilson

        rate = (tuned + 0.5 * ties) / n
        lo, hi = wilson(tuned + 0.5 * ties, n)
        self.query_one("#winrate", Static).update(
            f"[b]Tuned vs base[/] (your blind verdicts): tuned {tuned}, base {base}, ties {ties}; "
            f"tuned win rate [b]{rate:.0%}[/] (95% interval {lo:.0%}-{hi:.0%}, n={n}, a tie counts half)")

    # -- chat ---------------------------------------------------------------------------------

    def action_chat(self) -> None:
        """Show the chat (its input focused), or the side-by-side answers again."""
        self.show_chat(not self.chatting)

    def show_chat(self, chatting: bool) -> None:
        self.chatting = chatting
        self.query_one(ChatPanel).display = chatting
        self.query_one("#prompt", Input).parent.display = not chatting
        self.query_one("#cmp-pair").display = not chatting and self.answers is not None
        self.query_one("#winrate").display = not chatting
        if chatting:
            self.query_one("#chat-input", Input).focus()
            self.status("Chat: the base GGUF is loaded once, its adapter on (tuned) or off (base). "
                        "ctrl+n: back to compare.")
        else:
            if self.focused is self.query_one("#chat-input"):
                self.set_focus(None)  # back to the keys of compare
            self.status(READY)

    def action_chat_side(self) -> None:
        self.query_one(ChatPanel).switch_side()
        self.show_chat(True)

    def action_chat_clear(self) -> None:
        self.query_one(ChatPanel).clear()
        self.show_chat(True)

    def chat_models(self) -> tuple[str, str]:
        """(base GGUF, adapter GGUF) as typed, for the chat."""
        return self.query_one("#base", Input).value.strip(), self.query_one("#adapter", Input).value.strip()

    def chat_reply(self, side: str, chat: Any, params: Any, on_text: Any) -> Any:
        """``side``'s reply to ``chat``, streamed through ``on_text`` (``ctx.stream`` on that side's model)."""
        from plumb.pipeline.compare import side_spec

        spec = side_spec(_options(*self.chat_models()), side)
        return self.session.context().stream(spec, chat, params, on_text)

    def set_blind(self, blind: bool) -> None:
        self.blind = blind
        self.refresh_bindings()

    def status(self, text: str) -> None:
        self.query_one("#cmp-status", Static).update(text)
