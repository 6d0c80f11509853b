"""The live training bar shared by `plumb train` and `plumb quickstart`.

It is an EventSink: metric events move the bar and show loss, reward accuracy
and margin; log events print above it. Use it as a context manager.
"""

from __future__ import annotations


class TrainingBar:
    def __init__(self, label: str, quiet: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.quiet = quiet
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=quiet,
                                 console=Console(stderr=True))
        self.task = self.progress.add_task(label, total=None, info="loading model")
        self.last: dict[str, float] = {}

    def __enter__(self) -> "TrainingBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event) -> None:
        if event.kind == "metric":
            v = self.last = event.values
            info = f"loss {v.get('loss', float('nan')):.4f}"
            if "rewards/accuracies" in v:
                info += f"  acc {v['rewards/accuracies']:.2f}"
            if "rewards/margins" in v:
                info += f"  margin {v['rewards/margins']:+.3f}"
            if "eval/rewards/accuracies" in v:
                info += f"  eval acc {v['eval/rewards/accuracies']:.2f}"
            self.progress.update(self.task, completed=event.step, total=event.total, info=info)
        elif event.kind == "log" and event.message and not self.quiet:
            self.progress.console.print(f"[dim]{event.message}[/]")
