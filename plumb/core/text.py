"""Model text made safe to show a person.

A model's answer (or a verifier's detail quoting it) may hold terminal control
sequences: ESC ``[2J`` clears the screen, a carriage return overwrites a line,
so a completion could print a fake score over plumb's own table. Everything
that shows model text to a person (the CLI's plain output, the TUI) passes it
through ``printable``; ``--json`` output and the store keep the exact text.
Where the text then goes into markup (Rich's or Textual's), escape it for that
markup as well, with that library's own ``escape``.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls except tab and newline, DEL, and the C1 controls (U+0080-U+009F: a terminal may read
# U+009B as CSI, like ESC [).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NAMED = {"\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v", "\0": "\\0"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def printable(text: str) -> str:
    """``text`` with every control character other than newline and tab written out as a visible
    escape (ESC -> ``\\x1b``, CR -> ``\\r``), so printing it cannot move the cursor, clear the
    screen or recolour the terminal. Text without control characters comes back unchanged."""
    return _CONTROL.sub(_visible, text)

