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

A lease must never outlive its holder by much: a leader that dies, or whose store hiccups
just as it gives the lease back (a full disk, a paused Redis), would otherwise hold up every
identical call in every process. So a lease is granted for ``lease_ttl`` seconds only (a
few), and renewed by a heartbeat (a daemon thread, or an asyncio task) while the leader's
work runs, for at most ``lease`` seconds in all; a give-back that fails is retried in the
background until the lease would have run out anyway. A store without ``renew`` gets the
whole ``lease`` at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

__all__ = [
    "LEASE_TTL",
    "AsyncLockStore",
    "AsyncSingleFlight",
    "Flight",
    "LockStore",
    "SingleFlight",
]

#: The token a store's ``try_lock`` returns when the store itself failed (as
#: :data:`haikucache._store.NO_LOCK`): there is no lease to renew or give back.
NO_LOCK = "-"

logger = logging.getLogger("haikucache")

T = TypeVar("T")

#: ``leader``: this caller ran the work. ``joined``: it waited for another caller in this
#: process. ``found``: another process produced the answer and ``check`` returned it.
#: ``fallback``: it waited ``wait`` seconds for another process, then ran the work itself.
Role = Literal["leader", "joined", "found", "fallback"]


class LockStore(Protocol):
    """The lease part of a response store.

    A store may also have ``renew(name, token, *, ttl) -> bool`` (every haikucache store
    does): then leases are short and kept alive by a heartbeat.
    """

    def try_lock(self, name: str, *, ttl: float) -> str | None: ...

    def unlock(self, name: str, token: str) -> bool: ...


class AsyncLockStore(Protocol):
    """The coroutine twin of :class:`LockStore` (optionally with ``arenew``)."""

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


#: Seconds each grant of a lease lasts by default: how long a leader that died, or whose
#: give-back failed, can hold up the others.
LEASE_TTL = 5.0
#: Seconds before the first retry of a failed give-back; it doubles up to a second.
_UNLOCK_RETRY = 0.1


def _check_times(**times: float) -> None:
    for name, value in times.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


class _Options:
    def __init__(
        self, lease: float, wait: float, poll: float, max_poll: float, lease_ttl: float
    ) -> None:
        _check_times(lease=lease, wait=wait, poll=poll, max_poll=max_poll, lease_ttl=lease_ttl)
        self.lease = float(lease)
        self.wait = float(wait)
        self.poll = float(poll)
        self.max_poll = max(float(max_poll), self.poll)
        self.lease_ttl = min(float(lease_ttl), self.lease)

    def grant(self, renewable: bool) -> float:
        """Seconds to take the lease for: short when it can be renewed, else all of it."""
        return self.lease_ttl if renewable and self.lease_ttl < self.lease else self.lease


def _renewable(store: object, method: str) -> bool:
    return callable(getattr(store, method, None))


class _Heartbeat:
    """One daemon thread that keeps this process's leases alive and gives back, again, the
    ones whose give-back failed.

    A lease is renewed every third of its ``ttl`` until it is released or its ``until``
    passes (then it runs out on its own). A failed give-back is retried after
    :data:`_UNLOCK_RETRY` seconds, then twice as long each time (at most a second), until it
    works or the lease would have expired anyway.
    The thread ends when it has nothing to do, and starts again when needed (so a forked
    child, which has no threads, gets its own).
    """

    def __init__(self, store: LockStore, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._cond = threading.Condition()
        self._held: dict[tuple[str, str], float] = {}
        # (name, token) -> [give up at, next attempt at, delay before the one after]
        self._releasing: dict[tuple[str, str], list[float]] = {}
        self._thread: threading.Thread | None = None

    def hold(self, name: str, token: str, until: float) -> None:
        with self._cond:
            self._held[(name, token)] = until
            self._wake()

    def release(self, name: str, token: str) -> None:
        """Stop renewing the lease and give it back (retried in the background)."""
        with self._cond:
            self._held.pop((name, token), None)
        if not self._store.unlock(name, token):
            self.retry_unlock(name, token)

    def retry_unlock(self, name: str, token: str) -> None:
        # A give-back can also "fail" because the lease had already expired, or been
        # taken over: retrying is then harmless (the token no longer matches).
        now = time.monotonic()
        with self._cond:
            self._releasing[(name, token)] = [now + self._ttl, now + _UNLOCK_RETRY, _UNLOCK_RETRY]
            self._wake()

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="haikucache-lease-heartbeat", daemon=True
            )
            self._thread.start()
        else:
            self._cond.notify()

    def _run(self) -> None:
        every = self._ttl / 3
        # (Only leases of stores that can renew are held; a give-back is retried for any.)
        renew: Callable[..., bool] | None = getattr(self._store, "renew", None)
        next_renewal = time.monotonic() + every
        while True:
            with self._cond:
                while True:
                    if not self._held and not self._releasing:
                        self._thread = None
                        return
                    due = min(
                        [
                            next_renewal if self._held else math.inf,
                            *(at for _, at, _ in self._releasing.values()),
                        ]
                    )
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                held = list(self._held.items())
                now = time.monotonic()
                releasing = [lease for lease, (_, at, _) in self._releasing.items() if at <= now]
            now = time.monotonic()
            if held and now >= next_renewal:
                next_renewal = now + every
                for (name, token), until in held:
                    if renew is None or now >= until:
                        with self._cond:
                            self._held.pop((name, token), None)
                        continue
                    self._quietly("renew", renew, name, token, ttl=self._ttl)
            for name, token in releasing:
                done = self._quietly("unlock", self._store.unlock, name, token)
                with self._cond:
                    schedule = self._releasing.get((name, token))
                    if schedule is None:
                        continue
                    give_up, _, delay = schedule
                    after = time.monotonic()
                    if done or after >= give_up:
                        del self._releasing[(name, token)]
                    else:
                        schedule[1:] = [after + delay, min(delay * 2, 1.0)]

    @staticmethod
    def _quietly(what: str, op: Callable[..., bool], *args: Any, **kwargs: Any) -> bool:
        # Nobody to raise to in this thread (a strict store raises): log and go on.
        try:
            return bool(op(*args, **kwargs))
        except Exception as exc:
            logger.debug("haikucache: lease %s failed in the heartbeat: %r", what, exc)
            return False


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
        lease: most seconds a leader keeps its cross-process lease, renewed by the
            heartbeat while its work runs; a call that takes longer lets a waiter call
            upstream too. Make it longer than the slowest upstream call.
        wait: seconds a caller waits for another process before calling upstream itself.
        poll: first interval between two ``check`` calls while waiting (it grows 1.5× up
            to ``max_poll``).
        max_poll: longest interval between two checks.
        lease_ttl: seconds each grant of the lease lasts (renewed every third of that):
            a leader that crashed, or whose give-back failed, holds up the others for at
            most this long. Used with stores that can ``renew`` a lease.
    """

    def __init__(
        self,
        store: LockStore | None = None,
        *,
        lease: float = 120.0,
        wait: float = 30.0,
        poll: float = 0.005,
        max_poll: float = 0.1,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.store = store
        self._options = _Options(lease, wait, poll, max_poll, lease_ttl)
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self._renewable = _renewable(store, "renew")
        self._heartbeat = _Heartbeat(store, self._options.lease_ttl) if store is not None else None

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
        heartbeat = self._heartbeat
        assert heartbeat is not None
        name = _lease_name(key)
        deadline = time.monotonic() + options.wait
        delay = options.poll
        grant = options.grant(self._renewable)
        while True:
            token = store.try_lock(name, ttl=grant)
            if token is not None:
                beating = grant < options.lease and token != NO_LOCK
                if beating:
                    heartbeat.hold(name, token, time.monotonic() + options.lease - grant)
                try:
                    # The holder before us may have stored the answer just before we
                    # took the lease.
                    if check is not None and (found := check()) is not None:
                        return Flight(found, "found")
                    return Flight(fn(), "leader")
                finally:
                    if beating:
                        heartbeat.release(name, token)
                    elif not store.unlock(name, token):
                        heartbeat.retry_unlock(name, token)
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
        store: a store whose leases coordinate processes (its ``atry_lock``/``aunlock``,
            and ``arenew`` for the heartbeat); ``None`` coalesces within this process only.
        lease: most seconds a leader keeps its cross-process lease (see :class:`SingleFlight`).
        wait: seconds a caller waits for another process before calling upstream itself.
        poll: first interval between two ``check`` calls while waiting.
        max_poll: longest interval between two checks.
        lease_ttl: seconds each grant of the lease lasts (renewed every third of that by a
            task while the work runs).
    """

    def __init__(
        self,
        store: AsyncLockStore | None = None,
        *,
        lease: float = 120.0,
        wait: float = 30.0,
        poll: float = 0.005,
        max_poll: float = 0.1,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.store = store
        self._options = _Options(lease, wait, poll, max_poll, lease_ttl)
        self._calls: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}
        self._waiting: dict[tuple[asyncio.AbstractEventLoop, str], int] = {}
        self._renewable = _renewable(store, "arenew")
        # Heartbeats and give-back retries in flight (a task nobody references may be
        # collected before it finishes).
        self._tasks: set[asyncio.Task[None]] = set()

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
        grant = options.grant(self._renewable)
        while True:
            token = await store.atry_lock(name, ttl=grant)
            if token is not None:
                heartbeat = None
                if grant < options.lease and token != NO_LOCK:
                    heartbeat = self._spawn(self._heartbeat(store, name, token))
                try:
                    if check is not None and (found := await check()) is not None:
                        return Flight(found, "found")
                    return Flight(await fn(), "leader")
                finally:
                    if heartbeat is not None:
                        heartbeat.cancel()
                    if not await store.aunlock(name, token):
                        self._spawn(self._retry_unlock(store, name, token))
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

    def _spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _heartbeat(self, store: AsyncLockStore, name: str, token: str) -> None:
        """Renew the lease every third of its TTL, for at most ``lease`` seconds in all."""
        options = self._options
        loop = asyncio.get_running_loop()
        until = loop.time() + options.lease - options.lease_ttl
        renew = store.arenew  # type: ignore[attr-defined]
        while True:
            await asyncio.sleep(options.lease_ttl / 3)
            if loop.time() >= until:
                return
            try:
                await renew(name, token, ttl=options.lease_ttl)
            except Exception as exc:  # a strict store raises; nobody to raise to here
                logger.debug("haikucache: lease renew failed in the heartbeat: %r", exc)

    async def _retry_unlock(self, store: AsyncLockStore, name: str, token: str) -> None:
        """Give back a lease whose give-back failed, until it would have expired anyway."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._options.lease_ttl
        delay = _UNLOCK_RETRY
        while loop.time() < give_up:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            with contextlib.suppress(Exception):
                if await store.aunlock(name, token):
                    return
