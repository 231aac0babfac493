"""A progress bar for long batch runs: ``rich`` when it is installed, a plain line otherwise."""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

__all__ = ["BatchProgress"]


class BatchProgress:
    """Counts finished jobs out of ``total``; thread-safe (futures finish on worker threads).

    Args:
        total: how many jobs.
        description: the label.
        file: where to draw (default stderr).
    """

    def __init__(self, total: int, description: str = "batch jobs", file: TextIO | None = None):
        self.total = total
        self.done = 0
        self.failed = 0
        self._file = file or sys.stderr
        self._lock = threading.Lock()
        self._rich: Any = None
        self._task: Any = None
        self._description = description
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            self._last = -1
        else:
            from rich.console import Console

            self._rich = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self._file),
                transient=True,
            )
            self._task = self._rich.add_task(description, total=total)

    def __enter__(self) -> BatchProgress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def advance(self, failed: bool = False) -> None:
        """One more job finished."""
        with self._lock:
            self.done += 1
            self.failed += int(failed)
            done = self.done
        if self._rich is not None:
            self._rich.update(self._task, advance=1)
            return
        # A plain line, redrawn at most every percent.
        percent = done * 100 // max(self.total, 1)
        if percent != self._last or done == self.total:
            self._last = percent
            print(
                f"\r{self._description}: {done}/{self.total} ({percent}%)",
                end="",
                file=self._file,
                flush=True,
            )

    def set(self, done: int) -> None:
        """Jump to ``done`` finished jobs (for callers that count themselves)."""
        with self._lock:
            step = done - self.done
        for _ in range(max(step, 0)) if self._rich is None else ():
            self.advance()
        if self._rich is not None and step > 0:
            with self._lock:
                self.done = done
            self._rich.update(self._task, completed=done)

    def close(self) -> None:
        """Remove the bar."""
        if self._rich is not None:
            self._rich.stop()
        else:
            print(file=self._file, flush=True)
