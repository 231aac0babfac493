"""Single-flight: identical requests in flight at the same time make one upstream call.

Within a process, the first caller for a key runs the work; callers that arrive while it
runs wait and receive the same result, or the same exception. Across processes (optional),
the first caller also takes a lease in the response store (:meth:`ResponseStore.try_lock`);
a caller in another process that finds the lease taken polls ``check`` (typically "is the
answer in the store yet?") until it gets the answer, the lease is released, or ``wait``
seconds pass. It then calls upstream itself: single-flight saves money, it never deadlocks.

::

    flights = SingleFlight(store)          # store=None: this process only
    flight = flights.run(key, call_upstream, check=lambda: lookup(key))
    flight.value, flight.role              # role: leader | joined | found | fallback

The work is expected to store its result (the engine's store stage does), so that callers
in other processes find it with ``check``. :class:`AsyncSingleFlight` is the asyncio twin.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

__all__ = ["AsyncLockStore", "AsyncSingleFlight", "Flight", "LockStore", "SingleFlight"]

logger = logging.getLogger("haikucache")

T = TypeVar("T")

#: ``leader``: this caller ran the work. ``joined``: it waited for another caller in this
#: process. ``found``: another process produced the answer and ``check`` returned it.
#: ``fallback``: it waited ``wait`` seconds for another process, then ran the work itself.
Role = Literal["leader", "joined", "found", "fallback"]


class LockStore(Protocol):
    """The lease part of a response store."""

    def try_lock(self, name: str, *, ttl: float) -> str | None: ...

    def unlock(self, name: str, token: str) -> bool: ...


class AsyncLockStore(Protocol):
    """The coroutine twin of :class:`LockStore`."""

    async def atry_lock(self, name: str, *, ttl: float) -> str | None: ...

    async def aunlock(self, name: str, token: str) -> bool: ...


@dataclass(frozen=True)
class Flight(Generic[T]):
    """What one caller got.

    Attributes:
        value: the result of the work (shared by every caller of the flight).
        role: how this caller got it (see :data:`Role`).
    """

    value: T
    role: Role

    @property
    def shared(self) -> bool:
        """Whether another caller paid for it (``joined`` or ``found``)."""
        return self.role in ("joined", "found")


def _check_times(lease: float, wait: float, poll: float, max_poll: float) -> None:
    for name, value in (("lease", lease), ("wait", wait), ("poll", poll), ("max_poll", max_poll)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


class _Options:
    def __init__(self, lease: float, wait: float, poll: float, max_poll: float) -> None:
        _check_times(lease, wait, poll, max_poll)
        self.lease = float(lease)
        self.wait = float(wait)
        self.poll = float(poll)
        self.max_poll = max(float(max_poll), self.poll)


def _lease_name(key: str) -> str:
    return "sf:" + key


# --------------------------------------------------------------------------- threads


class _Call:
    __slots__ = ("abandoned", "done", "error", "value", "waiting")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiting = 0
        # The leader left with a BaseException (KeyboardInterrupt, SystemExit): nothing to
        # share, so its followers start over instead of inheriting an interrupt.
        self.abandoned = False


class SingleFlight:
    """Coalesce identical concurrent calls (threads; optionally across processes).

    Args:
        store: a store whose leases coordinate processes (any haikucache store);
            ``None`` coalesces within this process only.
        lease: seconds a cross-process lease lasts; a holder that crashed blocks nobody for
            longer. Make it longer than the slowest upstream call.
        wait: seconds a caller waits for another process before calling upstream itself.
        poll: first interval between two ``check`` calls while waiting (it grows 1.5× up
            to ``max_poll``).
        max_poll: longest interval between two checks.
    """

    def __init__(
        self,
        store: LockStore | None = None,
        *,
        lease: float = 120.0,
        wait: float = 30.0,
        poll: float = 0.005,
        max_poll: float = 0.1,
    ) -> None:
        self.store = store
        self._options = _Options(lease, wait, poll, max_poll)
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}

    def __repr__(self) -> str:
        return f"SingleFlight(store={self.store!r})"

    @property
    def in_flight(self) -> int:
        """Keys being worked on in this process right now."""
        with self._lock:
            return len(self._calls)

    def waiting(self, key: str) -> int:
        """Callers of this process waiting for the flight of ``key`` (not counting its leader)."""
        with self._lock:
            call = self._calls.get(key)
            return 0 if call is None else call.waiting

    def run(
        self, key: str, fn: Callable[[], T], *, check: Callable[[], T | None] | None = None
    ) -> Flight[T]:
        """Run ``fn`` once for all concurrent callers of ``key``.

        Args:
            key: what makes calls identical (the exact cache key).
            fn: the work (the upstream call, which stores its answer).
            check: returns the result if another process already produced it, else
                ``None``; used only with a ``store``.

        Returns:
            The result and how this caller got it.

        Raises:
            Exception: whatever ``fn`` raised, to the leader and to every joined caller.
        """
        while True:
            with self._lock:
                call = self._calls.get(key)
                leader = call is None
                if call is None:
                    call = self._calls[key] = _Call()
                else:
                    call.waiting += 1
            if leader:
                return self._lead(key, call, fn, check)
            call.done.wait()
            if call.abandoned:
                continue
            if call.error is not None:
                raise call.error
            return Flight(call.value, "joined")

    def _lead(
        self, key: str, call: _Call, fn: Callable[[], T], check: Callable[[], T | None] | None
    ) -> Flight[T]:
        try:
            flight = self._across_processes(key, fn, check)
        except Exception as exc:
            call.error = exc
            raise
        except BaseException:
            call.abandoned = True
            raise
        else:
            call.value = flight.value
            return flight
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()

    def _across_processes(
        self, key: str, fn: Callable[[], T], check: Callable[[], T | None] | None
    ) -> Flight[T]:
        store = self.store
        if store is None:
            return Flight(fn(), "leader")
        options = self._options
        name = _lease_name(key)
        deadline = time.monotonic() + options.wait
        delay = options.poll
        while True:
            token = store.try_lock(name, ttl=options.lease)
            if token is not None:
                try:
                    # The holder before us may have stored the answer just before we
                    # took the lease.
                    if check is not None and (found := check()) is not None:
                        return Flight(found, "found")
                    return Flight(fn(), "leader")
                finally:
                    store.unlock(name, token)
            if check is not None and (found := check()) is not None:
                return Flight(found, "found")
            left = deadline - time.monotonic()
            if left <= 0:
                logger.info(
                    "haikucache: waited %.1f s for another process to answer %s; calling "
                    "upstream instead",
                    options.wait,
                    key,
                )
                return Flight(fn(), "fallback")
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, options.max_poll)


# --------------------------------------------------------------------------- asyncio


class _LeaderGone(Exception):
    """The leading task was cancelled; its followers start over."""


class AsyncSingleFlight:
    """The asyncio twin of :class:`SingleFlight`.

    Callers are coalesced per event loop. A joined caller that is cancelled leaves the
    flight running for the others; a leader that is cancelled hands the flight over (one of
    its followers runs the work).

    Args:
        store: a store whose leases coordinate processes (its ``atry_lock``/``aunlock``);
            ``None`` coalesces within this process only.
        lease: seconds a cross-process lease lasts.
        wait: seconds a caller waits for another process before calling upstream itself.
        poll: first interval between two ``check`` calls while waiting.
        max_poll: longest interval between two checks.
    """

    def __init__(
        self,
        store: AsyncLockStore | None = None,
        *,
        lease: float = 120.0,
        wait: float = 30.0,
        poll: float = 0.005,
        max_poll: float = 0.1,
    ) -> None:
        self.store = store
        self._options = _Options(lease, wait, poll, max_poll)
        self._calls: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}
        self._waiting: dict[tuple[asyncio.AbstractEventLoop, str], int] = {}

    def __repr__(self) -> str:
        return f"AsyncSingleFlight(store={self.store!r})"

    @property
    def in_flight(self) -> int:
        """Keys being worked on right now (all event loops)."""
        return len(self._calls)

    def waiting(self, key: str) -> int:
        """Tasks of the running loop waiting for the flight of ``key`` (not its leader)."""
        return self._waiting.get((asyncio.get_running_loop(), key), 0)

    async def arun(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        *,
        check: Callable[[], Awaitable[T | None]] | None = None,
    ) -> Flight[T]:
        """Await ``fn()`` once for all concurrent callers of ``key``.

        Args:
            key: what makes calls identical (the exact cache key).
            fn: a coroutine function doing the work (the upstream call, which stores its
                answer).
            check: a coroutine function returning the result if another process already
                produced it, else ``None``; used only with a ``store``.

        Returns:
            The result and how this caller got it.

        Raises:
            Exception: whatever ``fn`` raised, to the leader and to every joined caller.
        """
        loop = asyncio.get_running_loop()
        slot = (loop, key)
        while True:
            future = self._calls.get(slot)
            if future is None:
                break
            self._waiting[slot] = self._waiting.get(slot, 0) + 1
            try:
                # shield: a joined caller that is cancelled must not cancel the flight.
                value = await asyncio.shield(future)
            except _LeaderGone:
                continue
            finally:
                left = self._waiting[slot] - 1
                if left:
                    self._waiting[slot] = left
                else:
                    del self._waiting[slot]
            return Flight(value, "joined")
        future = loop.create_future()
        self._calls[slot] = future
        try:
            flight = await self._across_processes(key, fn, check)
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            future.set_exception(_LeaderGone())
            raise
        else:
            future.set_result(flight.value)
            return flight
        finally:
            del self._calls[slot]
            # Nobody may be waiting: mark the outcome as seen so asyncio does not log
            # "exception was never retrieved".
            if future.done() and not future.cancelled():
                future.exception()

    async def _across_processes(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        check: Callable[[], Awaitable[T | None]] | None,
    ) -> Flight[T]:
        store = self.store
        if store is None:
            return Flight(await fn(), "leader")
        options = self._options
        name = _lease_name(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.wait
        delay = options.poll
        while True:
            token = await store.atry_lock(name, ttl=options.lease)
            if token is not None:
                try:
                    if check is not None and (found := await check()) is not None:
                        return Flight(found, "found")
                    return Flight(await fn(), "leader")
                finally:
                    await store.aunlock(name, token)
            if check is not None and (found := await check()) is not None:
                return Flight(found, "found")
            left = deadline - loop.time()
            if left <= 0:
                logger.info(
                    "haikucache: waited %.1f s for another process to answer %s; calling "
                    "upstream instead",
                    options.wait,
                    key,
                )
                return Flight(await fn(), "fallback")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, options.max_poll)
