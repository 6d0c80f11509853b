"""Compare: the base model and the tuned one answer the same prompt, from one loaded GGUF.

llama.cpp loads the base GGUF once and applies the GGUF LoRA at scale 0 (base)
and 1 (tuned). ``ctrl+r`` shows both answers to the typed prompt, labelled.
Blind A/B (``ctrl+b``) shows them as A and B in random order, for the typed
prompt or the next eval prompt not yet judged; the person's choice is stored
as a human judgment by ``pipeline.label.record`` (a = base, b = tuned) and the
tuned model's win rate over base is kept with its counts and a 95% Wilson
interval. Answers are stored as samples with the compare stage's provenance,
so the two reuse each other's answers.

Chat (``ctrl+n``, ``widgets/chat_panel.py``) talks to one side at a time from
the same loaded GGUF, the reply streaming in as it is decoded; ``ctrl+t``
switches between base and tuned (the adapter at scale 0 or 1), ``ctrl+l``
clears the conversation. Chat turns are not stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass
class Answers:
    prompt_id: int
    prompt: str
    base_id: int
    base: str
    tuned_id: int
    tuned: str
    models: tuple[str, str]  # the samples' model names (base, tuned), as stored


def _constitution_hash(session: Any) -> str | None:
    try:
        return session.constitution().hash
    except PlumbError:  # a constitution with errors: the answers and verdicts are still worth keeping
        return None


def side_model(base_gguf: str, adapter_gguf: str, scale: float) -> tuple[Any, str]:
    """The spec of one side and the model name its samples are stored under (as the compare stage does)."""
    from plumb.core.records import ModelSpec

    spec = ModelSpec("llamacpp", base_gguf, lora=adapter_gguf, lora_scale=scale)
    return spec, f"{spec}@{scale:g}"


def next_eval_prompt(store: Any, models: tuple[str, str]) -> Any:
    """The first eval prompt without a human verdict on this base/tuned pair of models, or None."""
    return store.one(
        "SELECT * FROM prompts p WHERE p.split = 'eval' AND NOT EXISTS (SELECT 1 FROM judgments j"
        " JOIN samples sa ON sa.id = j.a_id JOIN samples sb ON sb.id = j.b_id WHERE j.prompt_id = p.id"
        " AND j.source = 'human' AND sa.model = ? AND sb.model = ?) ORDER BY p.id LIMIT 1", models)


def answer(session: Any, base_gguf: str, adapter_gguf: str, prompt: Any) -> Answers:
    """Base and tuned answers to ``prompt`` (a prompts row), reused from the store or generated and stored."""
    from plumb.core.records import Chat
    from plumb.models.specs import check_exists
    from plumb.core.store import Provenance
    from plumb.pipeline.compare import CompareOptions

    params = CompareOptions(base_gguf, adapter_gguf).params
    const_hash = _constitution_hash(session)
    chat = Chat.from_dicts(json.loads(prompt["messages"]))
    out = []
    for scale in (0.0, 1.0):
        spec, model = side_model(base_gguf, adapter_gguf, scale)
        check_exists(spec, session.root)
        prov = Provenance(model=model, backend="llamacpp", params=params.to_dict(), constitution_hash=const_hash)
        have = session.store.samples_made(prov, [prompt["id"]])[prompt["id"]]
        if have:
            out.append((have[0]["id"], have[0]["text"], model))
            continue
        batches, plugin, version = session.pm.generate(spec, [chat], params)
        made = Provenance(**{**prov.__dict__, "plugin": plugin, "plugin_version": version})
        c = batches[0][0]
        out.append((session.store.add_sample(prompt["id"], c.text, made, finish_reason=c.finish_reason), c.text,
                    model))
    (base_id, base, base_model), (tuned_id, tuned, tuned_model) = out
    return Answers(prompt["id"], prompt["text"], base_id, base, tuned_id, tuned, (base_model, tuned_model))


def win_counts(store: Any, models: tuple[str, str]) -> tuple[int, int, int]:
    """(tuned wins, base wins, ties) over the person's blind verdicts on this pair of models."""
    rows = store.query("SELECT j.winner FROM judgments j JOIN samples sa ON sa.id = j.a_id JOIN samples sb"
                       " ON sb.id = j.b_id WHERE j.source = 'human' AND sa.model = ? AND sb.model = ?", models)
    winners = [r["winner"] for r in rows]
    return winners.count("b"), winners.count("a"), winners.count("tie")


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
        self.answers: Answers | None = None
        self.blind = False  # the answers on screen are a blind trial waiting for a verdict
        self.swapped = False  # True: the tuned answer is shown as A
        self.chatting = False  # the chat is shown instead of the side-by-side answers

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
        yield ChatPanel(self.chat_models, id="chat")

    def on_mount(self) -> None:
        self.query_one("#base", Input).value = self._default_base()
        row = self.session.store.one("SELECT path FROM artifacts WHERE kind = 'gguf-lora' ORDER BY id DESC LIMIT 1")
        self.query_one("#adapter", Input).value = row["path"] if row else ""
        self.query_one("#cmp-pair", AnswerPair).display = False
        base, adapter = self.query_one("#base", Input).value, self.query_one("#adapter", Input).value
        if base and adapter:
            self.show_win_rate((side_model(base, adapter, 0.0)[1], side_model(base, adapter, 1.0)[1]))

    def _default_base(self) -> str:
        from plumb.models.specs import parse_spec

        try:
            spec = parse_spec(self.session.ws.model("generate"))
        except PlumbError:  # e.g. the starter is not pulled yet
            return ""
        return spec.target if spec.backend == "llamacpp" else ""

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
        session = self.session
        models = (side_model(base, adapter, 0.0)[1], side_model(base, adapter, 1.0)[1])
        try:
            if text:
                pid = session.store.add_prompt([{"role": "user", "content": text}], split="eval", source="tui")
                prompt = session.store.one("SELECT * FROM prompts WHERE id = ?", (pid,))
            else:
                prompt = next_eval_prompt(session.store, models)
                if prompt is None:
                    raise PlumbError("every eval prompt already has your verdict for this adapter; type a prompt, "
                                     "or import more eval prompts (`plumb data import FILE --split eval`).")
            got = answer(session, base, adapter, prompt)
        except Exception as exc:  # a model that fails to load: say which and why, keep the app
            self.app.call_from_thread(self.failed, base, adapter, exc)
            return
        self.app.call_from_thread(self.show_answers, got, blind)

    def failed(self, base: str, adapter: str, exc: Exception) -> None:
        self.status(f"[red]No answers[/]: {escape(str(exc))}")
        self.fail(f"could not answer with {base} + {adapter}", exc)

    def show_answers(self, got: Answers, blind: bool) -> None:
        self.answers = got
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
        self.show_win_rate(got.models)

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
        self.show_win_rate(got.models)

    def show_win_rate(self, models: tuple[str, str]) -> None:
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

    def set_blind(self, blind: bool) -> None:
        self.blind = blind
        self.refresh_bindings()

    def status(self, text: str) -> None:
        self.query_one("#cmp-status", Static).update(text)
