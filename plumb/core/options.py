"""Validate a method's options before any model loads.

A method registers a pydantic model of its settings (``register(name, desc,
options=Model)``). ``validate_options`` checks a run's settings against it —
unknown keys, wrong types, values out of range — and reports every problem
naming the key, so ``plumb train dpo --lr -1`` fails in milliseconds instead
of after loading a model.
"""

from __future__ import annotations

from typing import Any

from plumb.core.errors import ValidationFailed


def validate_options(entry: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked and completed with defaults by the method's options model
    (``entry.impl``); returned unchanged when the method registered none."""
    model = entry.impl
    if model is None:
        return dict(values)
    from pydantic import ValidationError

    try:
        return model.model_validate(values).model_dump(mode="json")
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(options)"
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(model.model_fields))
                problems.append(f"{entry.name}: unknown option {key!r} (known: {known})")
            else:
                problems.append(f"{entry.name}: option {key!r}: {err['msg']} (got {err.get('input')!r})")
        raise ValidationFailed(problems, f"{len(problems)} bad option(s) for {entry.name}; nothing was run") from None
