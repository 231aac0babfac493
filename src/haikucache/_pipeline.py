"""The exchange pipeline: every stage, in order, in one place, for every door.

::

    door ──▶ prepare      1 validate, 2 key (scoped by the credential's hash)
             exchange     3 lookup ─ hit ─▶ the stored answer, $0
                            │ miss
                            ├ single-flight: identical calls in flight make one upstream call
                            4 plan    breakpoints, only now that the call goes upstream
                            5/6 send  the door's own I/O (JSON), or open_stream (SSE)
                            7 account the ledger, and the planner learns
                            8 store   complete answers only; a store failure is a logged miss
         ◀── Outcome      the message (a dict), its CallInfo, and where it came from

With ``Engine(telemetry=...)`` each call is also one OpenTelemetry span around all of this
(see :mod:`haikucache._telemetry`): ``exchange`` from start to outcome, a live stream until
its tap accounts the answer or fails, a batch answer when it is delivered.

A door (the client, the SDK middleware and transport, the LangChain transport, the LlamaIndex
LLM and the decorator through the client, the batcher, the proxy) translates its caller's
shapes into a Messages request, :class:`~haikucache.CallOptions`, the credential that reaches
upstream and a ``send`` function, and translates the :class:`Outcome` back. It never calls an
engine stage itself, so a guarantee written here holds at every door:

- the key and the semantic partition are scoped by a hash of the credential the call is
  sent with, whatever engine or store the door was given (see
  :meth:`Engine.scope_for <haikucache.Engine.scope_for>`);
- every bad request is a :class:`~haikucache.RequestValidationError` before any HTTP;
- concurrent identical calls make one upstream call (in this process, and across processes
  that share a store with leases);
- a store or ledger failure degrades to a logged miss, never a failed call.

The sync and async twins differ only where I/O happens.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from ._budget import Reservation
from ._controls import BatchControls, Controls, Ticket, Upstream, error_headers, error_status
from ._engine import CallInfo, CallOptions, Engine, PreparedCall
from ._exceptions import STATUS_BY_ERROR_TYPE, CacheStoreError, CircuitOpenError, UsageError
from ._singleflight import AsyncLockStore, AsyncSingleFlight, LockStore, SingleFlight
from ._sse import MessageAccumulator, SSEDecoder
from ._store import AsyncResponseStore, CacheEntry
from ._telemetry import CallSpan
from ._wire import API_VERSIONS

__all__ = ["FLIGHT_LEASE", "FLIGHT_WAIT", "Outcome", "Pipeline", "Reply", "StreamTap"]

logger = logging.getLogger("haikucache")

R = TypeVar("R")

#: Seconds a process holds the store's lease on a key while it calls upstream. A holder that
#: died blocks nobody for longer; a call that takes longer lets a waiter call upstream too.
FLIGHT_LEASE = 120.0
#: Seconds a process waits for another one's answer to the same request before it calls
#: upstream itself.
FLIGHT_WAIT = 30.0

#: ``hit``: an exact stored answer. ``semantic``: a stored answer found by meaning.
#: ``shared``: the answer a concurrent twin fetched (in this process or another). ``miss``:
#: this call's own upstream answer.
Source = Literal["hit", "semantic", "shared", "miss"]


@dataclass(frozen=True)
class Reply(Generic[R]):
    """What a door's ``send`` got back from upstream.

    Attributes:
        message: the complete Messages answer as a dict; ``None`` when the reply is not one
            (an error the door passes on as it is): nothing is then accounted or stored.
        raw: the door's own response object (headers, an HTTP response), handed back in the
            :class:`Outcome` untouched.
        status: the HTTP status (the controls stage tells an overloaded upstream from a
            refused request by it; ``None``: unknown).
        headers: the response headers (the rate limiter learns the API's limits from them).
    """

    message: dict[str, Any] | None
    raw: R
    status: int | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What the pipeline did with one call.

    Attributes:
        call: the prepared call (its key, namespace, planned body).
        source: where the answer came from (see :data:`Source`).
        message: the answer as a dict (``None`` only for a miss whose reply was not a message).
        info: its accounting (``None`` with ``message``).
        raw: the door's upstream response for a ``miss``; ``None`` for answers served
            locally, which the door renders from ``message``.
    """

    call: PreparedCall
    source: Source
    message: dict[str, Any] | None
    info: CallInfo | None
    raw: R | None = None

    @property
    def local(self) -> bool:
        """Served without this call reaching upstream (a hit, or a twin's answer)."""
        return self.source != "miss"


class StreamTap:
    """Follows a live SSE answer as it passes, accounts it once complete, then stores it.

    The door sends ``tap.call.body``, hands every event (:meth:`event`) or raw chunk
    (:meth:`feed`) over as it passes to its caller, and calls :meth:`store` (or
    :meth:`astore`) once :attr:`info` is set. It never raises into the caller's stream: an
    ``error`` event, a stream it cannot parse, or one that stops before ``message_stop``
    accounts and stores nothing.
    """

    def __init__(
        self, pipeline: Pipeline, call: PreparedCall, ticket: Ticket | None = None
    ) -> None:
        self._pipeline = pipeline
        self.call = call
        self._ticket = ticket
        self._decoder: SSEDecoder | None = None
        self._accumulator = MessageAccumulator()
        self._failed = False
        self._stored = False
        self.message: dict[str, Any] | None = None
        self.info: CallInfo | None = None
        self._span: CallSpan | None = None  # telemetry: ends with the answer or the failure

    @property
    def done(self) -> bool:
        """The answer is complete and accounted."""
        return self.info is not None

    def event(self, data: Mapping[str, Any]) -> CallInfo | None:
        """Follow one parsed SSE event; the accounting once this event completed the answer."""
        if self._failed or self.info is not None:
            return None
        try:
            kind = data.get("type")
            if kind == "error":
                self._fail(data)
                return None
            if kind == "ping":
                return None
            self._accumulator.feed(dict(data))
            if not self._accumulator.done:
                return None
            self.message = self._accumulator.message()
            self.info = self._pipeline._account(self.call, self.message)
            self._settle_controls()
            if self._span is not None:
                self._span.answered(self.message, self.info)
            return self.info
        except Exception:  # accounting must never break the caller's stream
            self._failed = True
            logger.warning(
                "haikucache: could not follow a streamed answer; not cached", exc_info=True
            )
            return None

    def feed(self, chunk: bytes) -> CallInfo | None:
        """Follow raw SSE bytes; the accounting once they completed the answer."""
        if self._failed or self.info is not None:
            return None
        if self._decoder is None:
            self._decoder = SSEDecoder()
        try:
            for sse in self._decoder.feed(chunk):
                if sse.event == "error":
                    data = sse.json() if sse.data else None
                    self._fail(data if isinstance(data, Mapping) else {})
                    return None
                data = sse.json() if sse.data else None
                if isinstance(data, dict) and self.event(data) is not None:
                    return self.info
        except Exception:
            self._failed = True
            logger.warning(
                "haikucache: could not follow a streamed answer; not cached", exc_info=True
            )
        return None

    def fail(self, status: int | None, headers: Mapping[str, str] | None = None) -> None:
        """The door's stream request got an error status instead of a stream: nothing is
        accounted or stored, and the controls learn it (the breaker counts a 5xx / 529)."""
        self._failed = True
        ticket, self._ticket = self._ticket, None
        controls = self._pipeline._controls()
        if ticket is not None and controls is not None:
            controls.failed(ticket, status=status, headers=headers)
        if self._span is not None:
            self._span.failed(status)

    def _fail(self, data: Mapping[str, Any]) -> None:
        error = data.get("error")
        kind = error.get("type") if isinstance(error, Mapping) else None
        self.fail(STATUS_BY_ERROR_TYPE.get(str(kind), 500))

    def _settle_controls(self) -> None:
        ticket, self._ticket = self._ticket, None
        controls = self._pipeline._controls()
        if ticket is not None and controls is not None and self.message is not None:
            controls.answered(
                ticket, self.message, self.info, headers=None, now=self._pipeline.engine.clock.now()
            )

    def store(self) -> bool:
        """The store stage of the completed answer (once; a no-op before completion)."""
        if self._stored or self.message is None or self.info is None:
            return False
        self._stored = True
        return self._pipeline._store(self.call, self.message, self.info)

    async def astore(self) -> bool:
        """The async twin of :meth:`store`."""
        if self._stored or self.message is None or self.info is None:
            return False
        self._stored = True
        return await self._pipeline._astore(self.call, self.message, self.info)


class Pipeline:
    """The stages of every call, sequenced once (sync and async twins).

    Args:
        engine: the engine whose stages run (planner, store, ledger, semantic index).
        flight_lease: seconds a process holds the store's lease on a key while it calls
            upstream (see :class:`~haikucache.SingleFlight`).
        flight_wait: seconds a process waits for another one's answer to the same request
            before it calls upstream itself.
        upstream: where the door sends calls (its base URL): with the model, the circuit
            breaker's key (see :class:`~haikucache.Controls`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        flight_lease: float = FLIGHT_LEASE,
        flight_wait: float = FLIGHT_WAIT,
        upstream: str = "anthropic",
    ) -> None:
        self.engine = engine
        self.upstream = upstream
        #: The controls of the Message Batches path (budgets for batch jobs, the batch
        #: endpoints' limits), for the doors that reach it: the client and the batcher.
        self.batches = BatchControls(engine)
        store = engine.store
        # Every haikucache store has leases; a home-made store without them coalesces
        # within the process only.
        leases: LockStore | None = store if _has_leases(store) else None
        self._astore_leases = store if isinstance(store, AsyncResponseStore) else None
        aleases: AsyncLockStore | None = self._astore_leases
        self._flights = SingleFlight(leases, lease=flight_lease, wait=flight_wait)
        self._aflights = AsyncSingleFlight(aleases, lease=flight_lease, wait=flight_wait)
        # A call that will not store its answer gives other processes nothing to find: it
        # coalesces within the process only and takes no lease.
        self._local_flights = SingleFlight()
        self._alocal_flights = AsyncSingleFlight()

    def __repr__(self) -> str:
        return f"Pipeline(engine={self.engine!r})"

    # -- 1 validate, 2 key ----------------------------------------------------------------

    def prepare(
        self,
        params: Mapping[str, Any],
        options: CallOptions | None = None,
        *,
        credential: str | None,
        api_version: str = API_VERSIONS[0],
        betas: Sequence[str] = (),
    ) -> PreparedCall:
        """Validate and key a Messages request for the credential it will be sent with.

        Planning waits until the call goes upstream: a hit costs no planning.

        Raises:
            RequestValidationError: the API would reject it (nothing was sent).
        """
        return self.engine.prepare(
            params,
            options,
            credential=credential,
            api_version=api_version,
            betas=betas,
            defer_plan=True,
        )

    # -- 3 lookup -------------------------------------------------------------------------

    def lookup(self, call: PreparedCall) -> Outcome[Any] | None:
        """A stored answer served as a hit, or ``None`` (a store failure is a miss).

        For a door that serves hits itself (the batcher); a hit is recorded by telemetry.
        """
        telemetry = self.engine.telemetry
        if telemetry is None:
            return self._lookup(call)
        started = time.time_ns()
        hit = self._lookup(call)
        if hit is not None:
            telemetry.record(hit, started_ns=started)
        return hit

    async def alookup(self, call: PreparedCall) -> Outcome[Any] | None:
        """The async twin of :meth:`lookup`."""
        telemetry = self.engine.telemetry
        if telemetry is None:
            return await self._alookup(call)
        started = time.time_ns()
        hit = await self._alookup(call)
        if hit is not None:
            telemetry.record(hit, started_ns=started)
        return hit

    def _lookup(self, call: PreparedCall) -> Outcome[Any] | None:
        return self._served(call, self.engine.lookup(call))

    async def _alookup(self, call: PreparedCall) -> Outcome[Any] | None:
        return self._served(call, await self.engine.alookup(call))

    def _served(self, call: PreparedCall, entry: CacheEntry | None) -> Outcome[Any] | None:
        if entry is None:
            return None
        message, info = self.engine.hit(call, entry)
        return Outcome(call, "semantic" if entry.similarity is not None else "hit", message, info)

    # -- JSON exchange --------------------------------------------------------------------

    def exchange(
        self,
        call: PreparedCall,
        send: Callable[[dict[str, Any]], Reply[R]],
        *,
        looked_up: bool = False,
        send_to: Callable[[Upstream, dict[str, Any]], Reply[R]] | None = None,
    ) -> Outcome[R]:
        """Answer a JSON call: from the cache, from a concurrent twin, or by ``send``.

        Args:
            send: the door's I/O: sends the planned body upstream and returns the
                :class:`Reply` (it may raise the door's own errors; they propagate).
            looked_up: the door already looked this call up and missed.
            send_to: how the door sends to another :class:`~haikucache.Upstream` (a
                fallback of the engine's controls); a door without it skips those.
        """
        telemetry = self.engine.telemetry
        if telemetry is None:
            return self._exchange(call, send, looked_up, send_to)
        with telemetry.start(call) as span:
            watched_to = (
                None
                if send_to is None
                else lambda target, body: span.watch(functools.partial(send_to, target))(body)
            )
            outcome = self._exchange(call, span.watch(send), looked_up, watched_to)
            span.finish(outcome)
        return outcome

    def _exchange(
        self,
        call: PreparedCall,
        send: Callable[[dict[str, Any]], Reply[R]],
        looked_up: bool,
        send_to: Callable[[Upstream, dict[str, Any]], Reply[R]] | None = None,
    ) -> Outcome[R]:
        if call.stream:
            raise UsageError("a streamed call goes through open_stream(), not exchange()")
        if not looked_up:
            hit = self._lookup(call)
            if hit is not None:
                return hit

        def lead() -> Outcome[R]:
            return self._send(call, send, send_to)

        if not self._coalesce(call):
            return lead()
        if call.options.no_store:
            flight = self._local_flights.run(call.key, lead)
        else:
            flight = self._flights.run(call.key, lead, check=lambda: self._found(call))
        if flight.role == "joined":
            return self._shared(call, flight.value) or lead()
        return flight.value

    async def aexchange(
        self,
        call: PreparedCall,
        send: Callable[[dict[str, Any]], Awaitable[Reply[R]]],
        *,
        looked_up: bool = False,
        send_to: Callable[[Upstream, dict[str, Any]], Awaitable[Reply[R]]] | None = None,
    ) -> Outcome[R]:
        """The async twin of :meth:`exchange`."""
        telemetry = self.engine.telemetry
        if telemetry is None:
            return await self._aexchange(call, send, looked_up, send_to)
        with telemetry.start(call) as span:
            watched_to = (
                None
                if send_to is None
                else lambda target, body: span.awatch(functools.partial(send_to, target))(body)
            )
            outcome = await self._aexchange(call, span.awatch(send), looked_up, watched_to)
            span.finish(outcome)
        return outcome

    async def _aexchange(
        self,
        call: PreparedCall,
        send: Callable[[dict[str, Any]], Awaitable[Reply[R]]],
        looked_up: bool,
        send_to: Callable[[Upstream, dict[str, Any]], Awaitable[Reply[R]]] | None = None,
    ) -> Outcome[R]:
        if call.stream:
            raise UsageError("a streamed call goes through aopen_stream(), not aexchange()")
        if not looked_up:
            hit = await self._alookup(call)
            if hit is not None:
                return hit

        async def lead() -> Outcome[R]:
            return await self._asend(call, send, send_to)

        if not self._coalesce(call):
            return await lead()
        if call.options.no_store:
            flight = await self._alocal_flights.arun(call.key, lead)
        else:
            flight = await self._aflights.arun(call.key, lead, check=lambda: self._afound(call))
        if flight.role == "joined":
            return self._shared(call, flight.value) or await lead()
        return flight.value

    # -- SSE exchange ---------------------------------------------------------------------

    def open_stream(
        self, call: PreparedCall, *, looked_up: bool = False
    ) -> Outcome[Any] | StreamTap:
        """A streamed call: a stored answer to replay, or a tap for the live stream.

        On a miss the call is planned: the door sends ``tap.call.body`` and feeds the tap.
        Streams are not coalesced: each caller reads its own live stream.
        """
        telemetry = self.engine.telemetry
        if telemetry is None:
            return self._open_stream(call, looked_up)
        with telemetry.start(call) as span:
            opened = self._open_stream(call, looked_up)
            if isinstance(opened, StreamTap):
                opened._span = span.keep(opened)
            else:
                span.finish(opened)
        return opened

    def _open_stream(self, call: PreparedCall, looked_up: bool) -> Outcome[Any] | StreamTap:
        if not looked_up:
            hit = self._lookup(call)
            if hit is not None:
                return hit
        self.engine.plan(call)
        controls = self._controls()
        ticket = None
        if controls is not None:
            ticket = controls.admit(call, self.upstream, now=self.engine.clock.now())
        return StreamTap(self, call, ticket)

    async def aopen_stream(
        self, call: PreparedCall, *, looked_up: bool = False
    ) -> Outcome[Any] | StreamTap:
        """The async twin of :meth:`open_stream`."""
        telemetry = self.engine.telemetry
        if telemetry is None:
            return await self._aopen_stream(call, looked_up)
        with telemetry.start(call) as span:
            opened = await self._aopen_stream(call, looked_up)
            if isinstance(opened, StreamTap):
                opened._span = span.keep(opened)
            else:
                span.finish(opened)
        return opened

    async def _aopen_stream(self, call: PreparedCall, looked_up: bool) -> Outcome[Any] | StreamTap:
        if not looked_up:
            hit = await self._alookup(call)
            if hit is not None:
                return hit
        self.engine.plan(call)
        controls = self._controls()
        ticket = None
        if controls is not None:
            ticket = await controls.aadmit(call, self.upstream, now=self.engine.clock.now())
        return StreamTap(self, call, ticket)

    # -- 7 account, 8 store (also the batcher's way in for answers it collected) ----------

    def deliver(
        self,
        call: PreparedCall,
        message: dict[str, Any],
        *,
        batch: bool = False,
        reservation: Reservation | None = None,
    ) -> Outcome[Any]:
        """Account and store an answer that reached this process some other way (a batch);
        settle the budget ``reservation`` made for it (:meth:`BatchControls.reserve`)."""
        info = self._account(call, message, batch=batch)
        self.batches.settle(reservation, info.cost_usd)
        self._store(call, message, info)
        outcome: Outcome[Any] = Outcome(call, "miss", message, info)
        if self.engine.telemetry is not None:
            self.engine.telemetry.record(outcome)
        return outcome

    async def adeliver(
        self,
        call: PreparedCall,
        message: dict[str, Any],
        *,
        batch: bool = False,
        reservation: Reservation | None = None,
    ) -> Outcome[Any]:
        """The async twin of :meth:`deliver`."""
        info = self._account(call, message, batch=batch)
        self.batches.settle(reservation, info.cost_usd)
        await self._astore(call, message, info)
        outcome: Outcome[Any] = Outcome(call, "miss", message, info)
        if self.engine.telemetry is not None:
            self.engine.telemetry.record(outcome)
        return outcome

    def share(self, call: PreparedCall, leader: Outcome[Any]) -> Outcome[Any] | None:
        """The answer a twin fetched, served to ``call`` as a hit for $0 (``None``: nothing
        to share, e.g. the twin got an error)."""
        shared = self._shared(call, leader)
        if shared is not None and self.engine.telemetry is not None:
            self.engine.telemetry.record(shared)
        return shared

    # -- the stages' plumbing -------------------------------------------------------------

    def _controls(self) -> Controls | None:
        controls = self.engine.controls
        return controls if controls is not None and controls.active else None

    def _attempts(
        self, call: PreparedCall, controls: Controls, reach: bool
    ) -> list[tuple[Callable[[], PreparedCall], Upstream | None]]:
        """The call, then the same request for each fallback, keyed for the model it asks
        (an answer is cached under the model that gave it), with the :class:`Upstream` it
        goes to (``None``: the door's own). A fallback is validated and keyed only when it is
        tried. ``reach``: the door can send to another upstream."""
        attempts: list[tuple[Callable[[], PreparedCall], Upstream | None]] = [(lambda: call, None)]
        if not controls.fallback:
            return attempts
        unplanned = dataclasses.replace(call)  # planning the call replaces its body

        def refit(model: str) -> Callable[[], PreparedCall]:
            return lambda: self.engine.refit(unplanned, model)

        for fallback in controls.fallback:
            if isinstance(fallback, str):
                if fallback != call.model:
                    attempts.append((refit(fallback), None))
            elif reach:
                attempts.append((refit(fallback.model or call.model), fallback))
        return attempts

    def _send(
        self,
        call: PreparedCall,
        send: Callable[[dict[str, Any]], Reply[R]],
        send_to: Callable[[Upstream, dict[str, Any]], Reply[R]] | None = None,
    ) -> Outcome[R]:
        """5 admit, 6 send, 7 account, 8 store; then settle the controls (and fall back)."""
        controls = self._controls()
        if controls is None:
            return self._settle(call, send(self.engine.plan(call).body))
        attempts = self._attempts(call, controls, send_to is not None)
        for index, (make, target) in enumerate(attempts):
            last = index == len(attempts) - 1
            attempt = make()
            try:
                ticket = controls.admit(attempt, self._where(attempt, target), now=self._now())
            except CircuitOpenError:
                if last:
                    raise
                continue
            try:
                if target is None or send_to is None:
                    reply = send(attempt.body)
                else:
                    reply = send_to(target, attempt.body)
            except Exception as exc:
                if self._falls_back(controls, ticket, last, exc=exc):
                    continue
                raise
            except BaseException:
                controls.abandoned(ticket)
                raise
            if reply.message is None:
                if self._falls_back(controls, ticket, last, reply=reply):
                    continue
                return Outcome(attempt, "miss", None, None, reply.raw)
            outcome = self._settle(attempt, reply)
            controls.answered(
                ticket, reply.message, outcome.info, headers=reply.headers, now=self._now()
            )
            return outcome
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def _asend(
        self,
        call: PreparedCall,
        send: Callable[[dict[str, Any]], Awaitable[Reply[R]]],
        send_to: Callable[[Upstream, dict[str, Any]], Awaitable[Reply[R]]] | None = None,
    ) -> Outcome[R]:
        """The async twin of :meth:`_send`."""
        controls = self._controls()
        if controls is None:
            return await self._asettle(call, await send(self.engine.plan(call).body))
        attempts = self._attempts(call, controls, send_to is not None)
        for index, (make, target) in enumerate(attempts):
            last = index == len(attempts) - 1
            attempt = make()
            try:
                ticket = await controls.aadmit(
                    attempt, self._where(attempt, target), now=self._now()
                )
            except CircuitOpenError:
                if last:
                    raise
                continue
            try:
                if target is None or send_to is None:
                    reply = await send(attempt.body)
                else:
                    reply = await send_to(target, attempt.body)
            except Exception as exc:
                if self._falls_back(controls, ticket, last, exc=exc):
                    continue
                raise
            except BaseException:
                controls.abandoned(ticket)
                raise
            if reply.message is None:
                if self._falls_back(controls, ticket, last, reply=reply):
                    continue
                return Outcome(attempt, "miss", None, None, reply.raw)
            outcome = await self._asettle(attempt, reply)
            controls.answered(
                ticket, reply.message, outcome.info, headers=reply.headers, now=self._now()
            )
            return outcome
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _now(self) -> float:
        return self.engine.clock.now()

    def _where(self, attempt: PreparedCall, target: Upstream | None) -> str:
        """Plan the attempt; the upstream it goes to (the breaker's key)."""
        self.engine.plan(attempt)
        return self.upstream if target is None else target.base_url

    @staticmethod
    def _falls_back(
        controls: Controls,
        ticket: Ticket,
        last: bool,
        *,
        exc: Exception | None = None,
        reply: Reply[Any] | None = None,
    ) -> bool:
        """Settle a failed attempt; whether the next fallback is tried (529, 5xx, connection
        errors, and a next one to try)."""
        if exc is not None:
            retry = controls.failed(
                ticket, status=error_status(exc), exc=exc, headers=error_headers(exc)
            )
        else:
            assert reply is not None
            retry = controls.failed(ticket, status=reply.status, headers=reply.headers)
        if retry and not last:
            _falling_back(ticket.call, exc if exc is not None else reply.status if reply else None)
            return True
        return False

    def _coalesce(self, call: PreparedCall) -> bool:
        return self.engine.store is not None and not call.options.no_cache

    def _settle(self, call: PreparedCall, reply: Reply[R]) -> Outcome[R]:
        if reply.message is None:
            return Outcome(call, "miss", None, None, reply.raw)
        info = self._account(call, reply.message)
        self._store(call, reply.message, info)
        return Outcome(call, "miss", reply.message, info, reply.raw)

    async def _asettle(self, call: PreparedCall, reply: Reply[R]) -> Outcome[R]:
        if reply.message is None:
            return Outcome(call, "miss", None, None, reply.raw)
        info = self._account(call, reply.message)
        await self._astore(call, reply.message, info)
        return Outcome(call, "miss", reply.message, info, reply.raw)

    def _account(
        self, call: PreparedCall, message: Mapping[str, Any], *, batch: bool = False
    ) -> CallInfo:
        return self.engine.record(call, message, batch=batch)

    def _store(self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo) -> bool:
        try:
            return self.engine.store_answer(call, message, info)
        except Exception as exc:  # the answer is paid for and good: a store failure is a miss
            self._store_failed(exc)
            return False

    async def _astore(self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo) -> bool:
        try:
            return await self.engine.astore_answer(call, message, info)
        except Exception as exc:
            self._store_failed(exc)
            return False

    def _store_failed(self, exc: Exception) -> None:
        semantic = self.engine.semantic
        # Strict stores (and a strict embedder) raise, for tests; otherwise a miss.
        if isinstance(exc, CacheStoreError) or (semantic is not None and semantic.strict):
            raise exc
        logger.warning(
            "haikucache: storing an answer failed (%s: %s); it is served but not cached",
            type(exc).__name__,
            exc,
        )

    def _found(self, call: PreparedCall) -> Outcome[Any] | None:
        """The answer another process stored meanwhile (exact key only: a poll stays cheap)."""
        store = self.engine.store
        if store is None:
            return None
        entry = store.get(call.key, now=self.engine.clock.now())
        return self._served(call, entry)

    async def _afound(self, call: PreparedCall) -> Outcome[Any] | None:
        store = self.engine.store
        if store is None:
            return None
        now = self.engine.clock.now()
        if self._astore_leases is not None:
            entry = await self._astore_leases.aget(call.key, now=now)
        else:
            entry = store.get(call.key, now=now)
        return self._served(call, entry)

    def _shared(self, call: PreparedCall, leader: Outcome[Any]) -> Outcome[Any] | None:
        if leader.message is None:
            return None
        entry = self.engine.shared_entry(call, leader.message, leader.info)
        message, info = self.engine.hit(call, entry)
        return Outcome(call, "shared", message, info)


def _falling_back(call: PreparedCall, why: object) -> None:
    logger.warning(
        "haikucache: %s failed (%s); trying the next fallback model",
        call.model,
        why if isinstance(why, int) else type(why).__name__,
    )


def _has_leases(store: object) -> bool:
    return callable(getattr(store, "try_lock", None)) and callable(getattr(store, "unlock", None))
