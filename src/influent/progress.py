"""Optional rich progress bars; a no-op when disabled so library calls stay quiet by default."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], total: int | None, description: str, enabled: bool) -> Iterator[T]:
    """Iterate, drawing a rich progress bar (to stderr) when `enabled`."""
    if not enabled:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.console import Console

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def stage(description: str, enabled: bool) -> Iterator[None]:
    """A spinner for a stage with no natural unit of progress."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(description):
        yield


class Bar:
    """A rich progress bar driven by hand (`advance`), for loops that are not plain iterables."""

    def __init__(self, total: int | None, description: str, enabled: bool):
        self.enabled, self._progress, self._task = enabled, None, None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                                      console=Console(stderr=True))
            self._task = self._progress.add_task(description, total=total, note="")

    def __enter__(self) -> "Bar":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1, note: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, note=note)
