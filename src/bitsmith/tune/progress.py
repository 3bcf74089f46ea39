"""Progress of a tuning run (trials finished by all workers, best so far)."""

from __future__ import annotations

from types import TracebackType

from bitsmith.progress import ProgressBar


class TuneProgress:
    """Context manager: ``update(finished, best_line)`` after every trial; no-op if disabled.

    Off a terminal every newly finished trial gets one plain line with the elapsed time."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar = ProgressBar("tune", total, enabled=enabled, unit="trials")
        self._finished = 0

    def __enter__(self) -> TuneProgress:
        self._bar.__enter__()
        return self

    def update(self, finished: int, best_line: str) -> None:
        if finished > self._finished:
            self._bar.line(f"{finished}/{self._bar.total} trials finished; {best_line}")
            self._finished = finished
        self._bar.update(min(finished, self._bar.total or finished), best_line)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.__exit__(exc_type, exc, tb)
