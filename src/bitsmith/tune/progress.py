"""Rich progress bar of a tuning run (trials finished by all workers, best so far)."""

from __future__ import annotations

from types import TracebackType

from bitsmith.progress import make_progress


class TuneProgress:
    """Context manager: ``update(finished, best_line)`` after every trial; no-op if disabled."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self._progress = (make_progress("[bold]tune", "{task.description}")
                          if enabled else None)
        self._task = None

    def __enter__(self) -> TuneProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total)
        return self

    def update(self, finished: int, best_line: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=min(finished, self.total),
                                  description=best_line)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
