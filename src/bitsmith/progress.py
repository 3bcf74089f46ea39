"""Rich progress bars with elapsed time and ETA, shared by every long loop of bitsmith.

Library functions take ``progress: bool`` (the CLI passes ``True``); disabled, the
loops run silently (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_columns(label: str = "{task.description}", suffix: str = "") -> list[ProgressColumn]:
    """Columns of every bitsmith bar: label, bar, done/total, elapsed, ETA, optional suffix.

    ``label`` and ``suffix`` are rich format strings (e.g. ``"[bold]tune"``,
    ``"{task.description}"``).
    """
    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn()]
    if suffix:
        columns.append(TextColumn(suffix))
    return columns


def make_progress(label: str = "{task.description}", suffix: str = "",
                  enabled: bool = True) -> Progress:
    """A :class:`rich.progress.Progress` with :func:`progress_columns` (disabled: draws nothing)."""
    return Progress(*progress_columns(label, suffix), disable=not enabled, transient=False)


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool = False) -> Iterator[T]:
    """Iterate over ``items``, showing a progress bar with elapsed time and ETA if enabled."""
    if not enabled:
        yield from items
        return
    with make_progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
