"""Where a run keeps its checkpoints: ``OUT/checkpoints/step-N/`` (complete once ``state.json`` is there).

Only the layout lives here (no torch), so the store can name a stopped run's last checkpoint and the
faces can show it; writing and loading them is ``plumb.train.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "step-"


def checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=step_of)


def latest(out_dir: str | Path | None) -> Path | None:
    found = checkpoints(out_dir) if out_dir else []
    return found[-1] if found else None


def step_of(path: str | Path) -> int:
    """The step a checkpoint directory ``.../step-N`` holds."""
    return int(Path(path).name[len(PREFIX):])
