"""Injectable time.

TTLs, the batcher and the emulator all read time through a :class:`Clock`, so a test of
24-hour batch expiry or a 1-hour cache TTL runs in milliseconds with :class:`ManualClock`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything that tells the time in seconds since the epoch."""

    def now(self) -> float:
        """Seconds since the epoch (may be fractional)."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to; thread-safe.

    Args:
        start: the initial time, in seconds since the epoch (default: 2025-11-20T10:00:00Z,
            a fixed instant so that test output is reproducible).
    """

    def __init__(self, start: float = 1_763_632_800.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        """Jump to ``when`` (must not be in the past)."""
        with self._lock:
            if when < self._now:
                raise ValueError("a clock cannot go backwards")
            self._now = float(when)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"
