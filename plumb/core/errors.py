"""The one exception type a user sees.

A PlumbError carries a message written for a person: what is wrong and how to
fix it. The CLI prints it as one paragraph and exits with ``exit_code``; it
never shows a traceback for one.
"""

from __future__ import annotations


class PlumbError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ValidationFailed(PlumbError):
    """Input that failed validation; ``problems`` are ``FILE:LINE: message`` lines."""

    exit_code = 2

    def __init__(self, problems: list[str], summary: str = "") -> None:
        self.problems = problems
        super().__init__(summary or "\n".join(problems))


class BackendUnavailable(PlumbError):
    """No server of a backend can be reached, so retrying request by request is futile. ``finished`` holds,
    per chat of the call that stopped, its completions, or None where it was not done: a caller stores those
    before it stops, and a rerun tops up the rest."""

    def __init__(self, message: str, finished: list | None = None) -> None:
        super().__init__(message)
        self.finished = finished or []
