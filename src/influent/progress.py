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
