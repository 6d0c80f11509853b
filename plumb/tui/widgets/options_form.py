"""A form for a training method's options, built from the pydantic model the method registered.

Numbers and text are inputs (empty means the method's default), flags are
checkboxes. For plumb's own methods the form shows the settings people change
most (GRPO's group size among them); a plugin method's simple options are
shown in full. GRPO's reward weights are not a simple option: the train
screen has a field of its own for them. ``values()`` returns what was filled
in, parsed like ``plumb train -o KEY=VALUE``.
"""

from __future__ import annotations

import tomllib
from typing import Any

from pydantic_core import PydanticUndefined
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Checkbox, Input

from plumb.tui.widgets.field_row import FieldRow

COMMON = ("steps", "epochs", "batch_size", "grad_accum", "lr", "beta", "max_length", "num_generations",
          "prompts_per_step", "lora_r", "rpo_alpha", "seed", "checkpoint_every", "gguf")
HIDDEN = ("method", "resume")  # set by the stage, not by the person
SIMPLE = (int, float, str, bool)


def parse_value(text: str) -> Any:
    """A TOML value (``5``, ``1e-4``, ``true``, ``"x"``, ``[1, 2]``), else the bare text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _simple(annotation: Any) -> bool:
    args = getattr(annotation, "__args__", None)
    return annotation in SIMPLE or bool(args) and all(a in SIMPLE or a is type(None) for a in args)


class OptionsForm(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="form")
        self.fields: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield from ()

    async def set_model(self, model: Any) -> None:
        """Show the options of ``model`` (a pydantic model class; None: a method without options)."""
        await self.remove_children()
        fields = dict(getattr(model, "model_fields", {}))
        names = [n for n in COMMON if n in fields] or [n for n, f in fields.items()
                                                      if n not in HIDDEN and _simple(f.annotation)]
        self.fields = {n: fields[n] for n in names}
        widgets = []
        for name, info in self.fields.items():
            default = None if info.default is PydanticUndefined else info.default
            if info.annotation is bool:
                widgets.append(Checkbox(name, bool(default), id=f"opt-{name}"))
                continue
            widgets.append(FieldRow(name, "" if default is None else str(default), id=f"opt-{name}",
                                    placeholder="method default"))
        await self.mount_all(widgets)

    def values(self) -> dict[str, Any]:
        """The options filled in: {name: value}, empty inputs left out."""
        out: dict[str, Any] = {}
        for name in self.fields:
            widget = self.query_one(f"#opt-{name}")
            if isinstance(widget, Checkbox):
                out[name] = widget.value
            elif isinstance(widget, Input) and widget.value.strip():
                out[name] = parse_value(widget.value.strip())
        return out
