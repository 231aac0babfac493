"""Fault injection: make the emulator fail the way the real API (or the network) does."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

__all__ = ["FAULT_KINDS", "TRANSIENT_KINDS", "Fault", "FaultSet"]

FAULT_KINDS = frozenset(
    {
        "rate_limit",
        "overloaded",
        "server_error",
        "status",
        "drop",
        "stream_error",
        "stream_cut",
        "latency",
        "transient",
    }
)
# What a ``"transient"`` fault turns into, one drawn per request: the errors the SDK retries.
TRANSIENT_KINDS = ("overloaded", "server_error", "rate_limit")


@dataclass
class Fault:
    """One injected fault; returned by :meth:`Emulator.inject`.

    Attributes:
        kind: ``"rate_limit"`` (429 with ``retry-after``), ``"overloaded"`` (529),
            ``"server_error"`` (500), ``"status"`` (any ``status``), ``"drop"`` (the
            connection is closed without an answer), ``"stream_error"`` (a 200 stream that
            sends ``after_events`` events and then an ``error`` event with
            ``overloaded_error``), ``"stream_cut"`` (a 200 stream whose connection is cut
            after ``after_events`` events), ``"latency"`` (``seconds`` of added delay;
            combines with the others) or ``"transient"`` (one of ``"overloaded"``,
            ``"server_error"`` and ``"rate_limit"``, drawn per request).
        endpoint: the endpoint name it applies to (``"messages"``, ``"count_tokens"``,
            ``"batches.create"`` …) or ``"*"`` for every endpoint.
        times: how many more requests it applies to; ``None`` means forever.
        status: the HTTP status for ``"status"`` (and optionally overrides the others').
        retry_after: value of the ``retry-after`` header, in seconds.
        retry_after_ms: value of the ``retry-after-ms`` header, in milliseconds.
        after_events: for the stream faults, how many events are sent before failing.
        seconds: for ``"latency"``, the delay added before the response.
        rate: the probability that it applies to a matching request; the draws come from a
            generator seeded by the emulator's ``seed``, so a run repeats.
        start: it applies only from this time on (the emulator's clock), if set.
        until: it applies only before this time (the emulator's clock), if set.
        model: it applies only to requests for this model (alias or dated id), if set.
        hits: how many requests it has been applied to so far.
    """

    kind: str
    endpoint: str = "messages"
    times: int | None = 1
    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: float | None = None
    after_events: int = 3
    seconds: float = 0.0
    rate: float = 1.0
    start: float | None = None
    until: float | None = None
    model: str | None = None
    hits: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @property
    def active(self) -> bool:
        """Whether it will still apply to a future request."""
        return self.times is None or self.times > 0

    def matches(
        self, endpoint: str, *, streaming: bool, now: float | None = None, model: str | None = None
    ) -> bool:
        """Whether it applies to a request for ``endpoint`` (stream faults need a stream)
        arriving at ``now`` (outside its ``start``/``until`` window it does not), asking for
        ``model`` (a fault for one model skips the others)."""
        if self.endpoint not in ("*", endpoint):
            return False
        if self.model is not None and not (
            model == self.model or (model or "").startswith(self.model + "-")
        ):
            return False
        if now is not None and (
            (self.start is not None and now < self.start)
            or (self.until is not None and now >= self.until)
        ):
            return False
        if self.kind in ("stream_error", "stream_cut") and not streaming:
            return False
        return self.active

    def consume(self) -> bool:
        """Use up one application; ``False`` if another thread used the last one first."""
        with self._lock:
            if not self.active:
                return False
            if self.times is not None:
                self.times -= 1
            self.hits += 1
            return True


class FaultSet:
    """The faults of one emulator, applied first-in first-out.

    Args:
        seed: seeds the draws of faults with a ``rate`` below 1 and of ``"transient"`` kinds.
    """

    def __init__(self, seed: int = 0) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = random.Random(f"haikucache-emulator-faults:{seed}")

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(
        self, endpoint: str, *, streaming: bool, now: float | None = None, model: str | None = None
    ) -> tuple[Fault | None, str, float]:
        """The fault to apply to this request (if any), its kind, and the latency to add.

        The kind is the fault's own, except that a ``"transient"`` fault is resolved to one
        of :data:`TRANSIENT_KINDS`; it is ``""`` when no fault applies.
        """
        with self._lock:
            faults = [f for f in self._faults if f.active]
            self._faults = faults
        delay = 0.0
        chosen: Fault | None = None
        for fault in faults:
            if not fault.matches(endpoint, streaming=streaming, now=now, model=model):
                continue
            if fault.kind != "latency" and chosen is not None:
                continue
            if not self._draw(fault.rate) or not fault.consume():
                continue
            if fault.kind == "latency":
                delay += fault.seconds
            else:
                chosen = fault
        if chosen is None:
            return None, "", delay
        if chosen.kind != "transient":
            return chosen, chosen.kind, delay
        with self._lock:
            kind = self._rng.choice(TRANSIENT_KINDS)
        return chosen, kind, delay

    def _draw(self, rate: float) -> bool:
        if rate >= 1:
            return True
        with self._lock:
            return self._rng.random() < rate
