"""Label: the person's own preferences, one key per pair, committed the moment it is pressed.

The queue, the display order, what a label stores and undo are
``pipeline.label``'s (the same as `plumb label`): pairs the AI judge found
inconsistent or was least sure of come first; each pair is shown as A and B in
an order drawn per pair; a key is mapped back to the samples' ids and stored
as a human judgment at once; ``u`` deletes the last label made here, exactly
one row. After each label the judge's verdict on that pair is revealed, and
judge-vs-you agreement per principle (``pipeline.agreement``) is recomputed in
a worker.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.widgets import Static

from plumb.core.errors import PlumbError
from plumb.tui.screens.base import PlumbScreen
from plumb.tui.widgets.answer_pair import AnswerPair

CHOICE = {"a": "first", "b": "second", "tie": "tie"}
NO_PAIRS = ("No pairs to label: each needs two different answers to one train prompt. Make some with "
            "`plumb generate -n 2` (or press 3 and sample with 2 answers per prompt), then come back.")


class LabelScreen(PlumbScreen):
    NAME = "label"
    MIN_WIDTH = 60
    BINDINGS = [
        Binding("a", "label('a')", "A is better"),
        Binding("b", "label('b')", "B is better"),
        Binding("t", "label('tie')", "Tie"),
        Binding("s", "skip", "Skip"),
        Binding("u", "undo", "Undo"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[Any] = []  # pipeline.label.LabelPair, the one on screen first
        self.labelled: list[tuple[int, Any]] = []  # (judgment id, pair) made here, for undo
        self.seed: int | None = None  # the display order's seed, fixed while the screen lives

    def compose_body(self) -> ComposeResult:
        yield Static("Loading pairs...", id="label-status", classes="status")
        yield AnswerPair(id="pair")
        yield Static(id="reveal", classes="status")
        yield Static(id="agreement", classes="status")

    @property
    def current(self) -> Any:
        return self.queue[0] if self.queue else None

    def refresh_data(self) -> None:
        if self.seed is None:
            self.seed = self.app.rng.randrange(2**31)
        self.load()

    @work(thread=True, exclusive=True, group="label", exit_on_error=False)
    def load(self) -> None:
        from plumb.pipeline.label import queue

        try:
            pairs = queue(self.session.store, "train", self.seed)
        except Exception as exc:  # a damaged store: say so, keep the app
            self.app.call_from_thread(self.fail, "could not read the pairs", exc)
            return
        self.app.call_from_thread(self.loaded, pairs)

    def loaded(self, pairs: list[Any]) -> None:
        shown = self.current
        keep = (shown.a_id, shown.b_id) if shown is not None else None
        done = {(p.a_id, p.b_id) for _, p in self.labelled}  # labelled while the queue was being read
        self.queue = sorted((p for p in pairs if (p.a_id, p.b_id) not in done),
                            key=lambda p: (p.a_id, p.b_id) != keep)  # the pair on screen stays on screen
        self.show_pair()
        self.load_agreement()

    def show_pair(self) -> None:
        p = self.current
        view = self.query_one("#pair", AnswerPair)
        view.display = p is not None
        if p is None:
            done = f"{len(self.labelled)} labelled here. " if self.labelled else ""
            self.query_one("#label-status", Static).update(escape(done + NO_PAIRS))
            return
        view.show(p.prompt, p.first, p.second)
        unsure = p.judge_consistent is False or (p.judge_p_a is not None and abs(p.judge_p_a - 0.5) <= 0.15)
        why = "  [yellow]the AI judge was unsure here[/]" if unsure else ""
        self.query_one("#label-status", Static).update(
            f"[b]{len(self.queue)}[/] pairs to label, {len(self.labelled)} labelled here{why}")

    def action_label(self, shown: str) -> None:
        """Store the person's verdict on the pair shown: ``shown`` is a, b (as displayed) or tie."""
        from plumb.pipeline.label import record

        p = self.current
        if p is None:
            self.app.bell()
            return
        try:
            jid = record(self.session.store, p, CHOICE[shown], self._constitution_hash())
        except Exception as exc:  # not stored: the pair stays on screen
            self.fail("the label was not stored", exc)
            return
        self.labelled.append((jid, self.queue.pop(0)))
        self.reveal(p, shown)
        self.show_pair()
        self.load_agreement()

    def action_skip(self) -> None:
        if self.queue:
            self.queue.append(self.queue.pop(0))
            self.show_pair()

    def action_undo(self) -> None:
        """Delete the last label made here (exactly one row) and show its pair again, as it was shown."""
        from plumb.pipeline.label import undo

        if not self.labelled:
            self.notify("Nothing to undo: no label was made on this screen since it opened.")
            return
        jid, pair = self.labelled[-1]
        try:
            undo(self.session.store, jid)
        except Exception as exc:
            self.fail("could not undo", exc)
            return
        self.labelled.pop()
        self.queue.insert(0, pair)
        self.show_pair()
        self.query_one("#reveal", Static).update("Undone: the last label was deleted.")
        self.load_agreement()

    def _constitution_hash(self) -> str | None:
        try:
            return self.session.constitution().hash
        except PlumbError:  # a constitution with errors: the label is still the person's
            return None

    def reveal(self, p: Any, shown: str) -> None:
        """What the AI judge said about the pair just labelled, in the letters the person saw."""
        you = "a tie" if shown == "tie" else shown.upper()
        if p.judge_winner is None:
            text = f"You chose {you}. The AI judge has not judged this pair."
        else:
            first = "b" if p.swapped else "a"  # the sample shown as A
            said = "a tie" if p.judge_winner == "tie" else "A" if p.judge_winner == first else "B"
            p_first = None if p.judge_p_a is None else p.judge_p_a if first == "a" else 1 - p.judge_p_a
            sure = "" if p_first is None else f", p(A is better)={p_first:.2f}"
            orders = {False: ", its two orders disagreed", True: ", both orders agreed"}.get(p.judge_consistent, "")
            text = f"You chose {you}; the AI judge chose {said}{sure}{orders}."
        self.query_one("#reveal", Static).update(escape(text))

    @work(thread=True, exclusive=True, group="agreement", exit_on_error=False)
    def load_agreement(self) -> None:
        from plumb.pipeline.agreement import agreement
        from plumb.pipeline.queries import model_judges

        try:
            found = [agreement(self.session, judge=j) for j in model_judges(self.session.store)]
        except PlumbError as exc:  # e.g. a constitution with errors
            text = f"[dim]Judge vs you: not available ({escape(str(exc).splitlines()[0])}).[/]"
        except Exception as exc:  # a bug in a verifier plugin: say so, keep labelling
            text = f"[dim]Judge vs you: failed ({escape(type(exc).__name__)}: {escape(str(exc))}).[/]"
        else:
            lines = [f"[b]{escape(a.judge)} vs you[/]  " + "   ".join(
                f"{escape(name)} {rate}" for name, rate in sorted(a.with_person.items())) for a in found
                if a.with_person]
            text = "\n".join(lines) or "[dim]Judge vs you: no pair judged by both the AI judge and you yet.[/]"
        self.app.call_from_thread(self.query_one("#agreement", Static).update, text)
