"""The circuit breaker: stop calling an upstream that keeps failing, and probe it now and then.

One circuit per upstream key (base URL + model, :func:`upstream_key`)::

               N consecutive failures              cool-down over: one probe let through
    closed ─────────────────────────────▶ open ─────────────────────────────▶ half-open
      ▲                                      ▲                                    │
      │            probe succeeds            │          probe fails               │
      └──────────────────────────────────────┼────────────────────────────────────┘
                                             └────────────────────────────────────┘

A *failure* is what says the upstream is unwell: a 5xx (529 ``overloaded_error`` included), a
timeout or a connection error — after the client's own retries. A 4xx is never one: the
upstream answered, the request was at fault (a 429 means it is busy, and the rate limiter
deals with that). While a circuit is open, :meth:`CircuitBreaker.before` raises
:class:`~haikucache.CircuitOpenError` at once, without touching the network, so a caller can
fall back to another upstream or model in microseconds.

Thread-safe, never blocks, and therefore usable as it is from async code. In-process: each
process learns about its upstreams on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ._clock import Clock, SystemClock
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    CircuitOpenError,
    ConfigurationError,
    ControlError,
)

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "is_breaker_failure",
    "upstream_key",
]

logger = logging.getLogger("haikucache")

CircuitState = Literal["closed", "open", "half_open"]


def upstream_key(base_url: str, model: str) -> str:
    """The key of one upstream: its base URL (without credentials, query or trailing slash)
    and the model, e.g. ``"https://api.anthropic.com|claude-haiku-4-5"``."""
    parts = urlsplit(base_url)
    # Never a password in a key: keys end up in logs and metrics.
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    url = urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), "", ""))
    return f"{url}|{model}"


def is_breaker_failure(exc: BaseException) -> bool:
    """Whether an exception from a call says the upstream is unwell.

    ``True`` for a status >= 500 (529 included), a timeout or a connection error (haikucache's
    own exceptions, and the built-in ``TimeoutError`` / ``ConnectionError``); ``False`` for
    any 4xx, a refusal by a local control, and anything else.
    """
    if isinstance(exc, ControlError):
        return False
    if isinstance(exc, APIStatusError):
        return exc.status_code >= 500
    return isinstance(exc, (APIConnectionError, TimeoutError, ConnectionError))


@dataclass
class _Circuit:
    state: CircuitState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_started: float | None = None


class CircuitBreaker:
    """Circuits for many upstreams, keyed by :func:`upstream_key`.

    Args:
        failure_threshold: consecutive failures that open a circuit.
        cooldown: seconds an open circuit refuses calls before it lets one probe through.
        probe_timeout: seconds after which a probe that never reported back (its caller
            died or was cancelled) no longer holds the half-open circuit; default
            ``cooldown``.
        clock: the time cool-downs are measured on.
        on_state_change: called as ``(key, old, new)`` on every transition (telemetry); it
            must be quick and must not raise.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        probe_timeout: float | None = None,
        clock: Clock | None = None,
        on_state_change: Callable[[str, CircuitState, CircuitState], None] | None = None,
    ) -> None:
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ConfigurationError("failure_threshold must be an int >= 1")
        if not cooldown >= 0:
            raise ConfigurationError("cooldown must be >= 0")
        if probe_timeout is not None and not probe_timeout > 0:
            raise ConfigurationError("probe_timeout must be > 0")
        self.failure_threshold = failure_threshold
        self.cooldown = float(cooldown)
        self.probe_timeout = float(probe_timeout if probe_timeout is not None else cooldown)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_state_change = on_state_change
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failure_threshold={self.failure_threshold}, "
            f"cooldown={self.cooldown:g})"
        )

    def _move(
        self, key: str, circuit: _Circuit, new: CircuitState
    ) -> tuple[str, CircuitState, CircuitState] | None:
        old = circuit.state
        if old == new:
            return None
        circuit.state = new
        return key, old, new

    def _announce(self, change: tuple[str, CircuitState, CircuitState] | None) -> None:
        if change is None:
            return
        key, old, new = change
        level = logging.WARNING if new == "open" else logging.INFO
        logger.log(level, "haikucache: circuit %s: %s -> %s", key, old, new)
        if self.on_state_change is not None:
            try:
                self.on_state_change(key, old, new)
            except Exception:
                logger.exception("haikucache: the on_state_change callback failed")

    def before(self, key: str) -> None:
        """Ask to call ``key``'s upstream; returns if the call may go ahead.

        In a closed circuit every call goes ahead. In an open one, the first call after the
        cool-down becomes the probe (the circuit is half-open until it reports back); every
        other call is refused.

        Raises:
            CircuitOpenError: the circuit is open (or half-open with its probe in flight).
        """
        change = None
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None or circuit.state == "closed":
                return
            now = self.clock.now()
            if circuit.state == "open":
                ready_at = circuit.opened_at + self.cooldown
                if now < ready_at:
                    raise CircuitOpenError(
                        f"circuit open for {key}: {circuit.failures} consecutive failures; "
                        f"next probe in {ready_at - now:.3g} s",
                        key=key,
                        retry_after=ready_at - now,
                    )
                change = self._move(key, circuit, "half_open")
                circuit.probe_started = now
            else:  # half-open
                started = circuit.probe_started
                if started is not None and now < started + self.probe_timeout:
                    raise CircuitOpenError(
                        f"circuit half-open for {key}: a probe is in flight",
                        key=key,
                        retry_after=started + self.probe_timeout - now,
                    )
                circuit.probe_started = now
        self._announce(change)

    def success(self, key: str) -> None:
        """The call to ``key`` got an answer: the circuit closes (and forgets failures)."""
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None:
                return
            circuit.failures = 0
            circuit.probe_started = None
            change = self._move(key, circuit, "closed")
        self._announce(change)

    def failure(self, key: str) -> None:
        """The call to ``key`` failed in a way that counts (see :func:`is_breaker_failure`).

        The failure opens the circuit when it is the ``failure_threshold``-th in a row, or
        when it is a half-open circuit's probe.
        """
        with self._lock:
            circuit = self._circuits.setdefault(key, _Circuit())
            circuit.failures += 1
            change = None
            if circuit.state == "half_open" or (
                circuit.state == "closed" and circuit.failures >= self.failure_threshold
            ):
                circuit.opened_at = self.clock.now()
                circuit.probe_started = None
                change = self._move(key, circuit, "open")
        self._announce(change)

    def cancel(self, key: str) -> None:
        """The call allowed by :meth:`before` was not sent after all (e.g. a budget refused
        it): a half-open circuit's probe slot is free again; nothing else changes."""
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is not None and circuit.state == "half_open":
                circuit.probe_started = None

    def record(self, key: str, exc: BaseException | None) -> None:
        """Report a call's outcome: ``None`` (an answer) or the exception it raised.

        A failure (:func:`is_breaker_failure`) counts as such; a refusal by a local control
        cancels the call; any other exception (a 4xx) means the upstream answered, so it
        counts as a success.
        """
        if exc is None:
            self.success(key)
        elif isinstance(exc, ControlError):
            self.cancel(key)
        elif is_breaker_failure(exc):
            self.failure(key)
        else:
            self.success(key)

    @contextmanager
    def guard(self, key: str) -> Iterator[None]:
        """``with breaker.guard(key): send()`` — :meth:`before`, then :meth:`record` of how
        the block ended. Usable around ``await`` too (it never blocks)."""
        self.before(key)
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.record(key, exc)
            else:  # cancelled or interrupted: nothing learned about the upstream
                self.cancel(key)
            raise
        self.success(key)

    def state(self, key: str) -> CircuitState:
        """The circuit's state now (``"open"`` until a probe is actually let through)."""
        with self._lock:
            circuit = self._circuits.get(key)
            return "closed" if circuit is None else circuit.state

    def failures(self, key: str) -> int:
        """Consecutive failures counted for ``key``."""
        with self._lock:
            circuit = self._circuits.get(key)
            return 0 if circuit is None else circuit.failures

    def reset(self, key: str | None = None) -> None:
        """Close one circuit (or every one) and forget its failures."""
        with self._lock:
            if key is None:
                self._circuits.clear()
            else:
                self._circuits.pop(key, None)
