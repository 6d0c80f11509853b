"""Validate a method's options before any model loads.

A method object carries a pydantic model of its settings (``Method.options``).
``check_options`` checks a run's settings against it —
unknown keys, wrong types, values out of range — and reports every problem
naming the key, so ``plumb train dpo --lr -1`` fails in milliseconds instead
of after loading a model.
"""

from __future__ import annotations

from typing import Any

from plumb.core.errors import ValidationFailed


def validate_options(entry: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``check_options`` for an object naming the method (``entry.name``) and its options model (``entry.impl``)."""
    return check_options(entry.name, entry.impl, values)


def check_options(name: str, model: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked and completed with defaults by method ``name``'s options model; returned
    unchanged when the method has none."""
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
                problems.append(f"{name}: unknown option {key!r} (known: {known})")
            else:
                problems.append(f"{name}: option {key!r}: {err['msg']} (got {err.get('input')!r})")
        raise ValidationFailed(problems, f"{len(problems)} bad option(s) for {name}; nothing was run") from None
