"""`progress`: a rich progress bar on stderr with count, rate and ETA, for long commands.

    with progress("replaying", total=1_000_000) as advance:
        for batch in batches:
            ...
            advance(len(batch))

Shown only when stderr is a terminal (or `enabled=True`); otherwise `advance` does nothing, so
logs and pipes get no control codes. `total=None` (unknown) shows the rate without an ETA.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Advance", "progress", "progress_columns"]

Advance = Callable[[int], None]


def progress_columns(unit: str = "events") -> tuple[Any, ...]:
    """The bar's columns: description, bar, done/total, rate in `unit`/s, elapsed, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-" if speed is None else f"{speed:,.0f} {unit}/s", style="cyan")

    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    unit: str = "events",
    enabled: bool | None = None,
    console: Console | None = None,
) -> Iterator[Advance]:
    """A progress bar for the block; yields `advance(n)`. Removed from the screen at the end."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        yield lambda advance: None
        return
    from rich.console import Console
    from rich.progress import Progress

    screen = console if console is not None else Console(stderr=True)
    with Progress(*progress_columns(unit), console=screen, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda advance: bar.advance(task, advance)
