"""Production controls as one stage of the pipeline: budgets, rate limits, circuit breaker,
fallback.

::

    plan ──▶ admit     breaker.before(upstream)   open: fail fast, or the next fallback
                       budgets.reserve(worst case) hard cap: BudgetExceededError, $0 spent
                       limiter.acquire(estimate)   waits up to ``wait`` s, or RateLimitedError
             send      the door's I/O
             settle    an answer: budgets.settle(real cost), limiter.settle(real usage) and
                       learn(headers), breaker.success
                       an error: release the reservation and the permit, breaker verdict
                       (5xx / 529 / timeouts / connection errors count; a 4xx never does),
                       and on 529 / 5xx / connection errors the next fallback model

Every door gets these because the pipeline runs them (see :mod:`haikucache._pipeline`);
a door never calls them. Configure them on the engine::

    engine = Engine(controls=Controls(
        budgets=Budgets([Budget(50.0, period="day")]),
        limiter=RateLimiter({"claude-haiku-4-5": RateLimits(rpm=50, itpm=50_000, otpm=10_000)}),
        breaker=CircuitBreaker(),
        fallback=("claude-sonnet-4-5",),
    ))

**Cache-aware ITPM.** Before a call is sent, the limiter needs its input split into
uncached tokens, cache writes and cache reads (reads do not count toward ITPM on Haiku 4.5).
The planner gives the prefix sizes up to each breakpoint; this stage remembers, per prefix
fingerprint, until when a prefix it sent is cached upstream (its marker's TTL, refreshed on
each use), and estimates a warm prefix as a read and a cold one as a write. The permit is
settled with the real usage afterwards, so an estimate that was wrong costs only the
difference for the length of one call.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._breaker import CircuitBreaker, upstream_key
from ._budget import Budgets, Reservation, worst_case_for_plan, worst_case_usd
from ._exceptions import ConfigurationError
from ._limits import Permit, RateLimiter

if TYPE_CHECKING:
    from ._engine import CallInfo, PreparedCall
    from ._planner import Plan

__all__ = ["BatchControls", "Controls", "Ticket", "Upstream"]

logger = logging.getLogger("haikucache")

#: Statuses after which the next fallback is tried (and the breaker counts a failure).
FALLBACK_STATUSES = frozenset({500, 502, 503, 504, 529})
_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class Upstream:
    """Another place the same call can go when the primary upstream fails: a second
    deployment, a gateway, or the model on another platform.

    Attributes:
        base_url: its Messages API base URL (the ``/v1/messages`` path is added).
        api_key: the key it takes (``None``: the caller's own credential). Never logged and
            never part of a cache key; the answer is keyed for the caller, as always.
        model: the model to ask there (``None``: the model asked for); an answer is
            accounted, priced and cached under the model that gave it.
        headers: extra headers it needs.
        transport: an ``httpx`` transport to reach it (tests, custom networking).
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    transport: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or "://" not in self.base_url:
            raise ConfigurationError(f"Upstream.base_url must be a URL, got {self.base_url!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigurationError("Upstream.model must be a model name or None")


#: One fallback: a model (same upstream), or an :class:`Upstream`.
Fallback = str | Upstream


@dataclass(frozen=True)
class Controls:
    """The production controls every call of an engine passes through.

    Args:
        budgets: spending caps (:class:`~haikucache.Budgets`), checked before each call
            with its worst-case cost and settled with its real cost.
        limiter: a client-side :class:`~haikucache.RateLimiter` (RPM, cache-aware ITPM,
            OTPM), in-process or shared through Redis.
        breaker: a :class:`~haikucache.CircuitBreaker`, one circuit per upstream (base URL
            and model).
        fallback: what to try, in order, when the model asked for answers 529 / 5xx or
            cannot be reached (after the door's own retries); never on a 4xx. Each is a model
            name (the same upstream) or an :class:`Upstream` (another base URL, key or
            platform; doors that send their own HTTP — the client, the decorator, LlamaIndex,
            the batcher's realtime calls, the proxy — can reach one). An answer is
            accounted, priced and cached under the model that gave it.
        tenant_limiter: a second limiter every call must also pass (a tenant's own share
            of the organisation's limits, e.g. a proxy's virtual key); learned headers go to
            ``limiter`` only, since the API's limits are the organisation's.
        wait: seconds a call may wait for the rate limiter (``None``: as long as needed;
            ``0``: refuse at once).
    """

    budgets: Budgets | None = None
    limiter: RateLimiter | None = None
    tenant_limiter: RateLimiter | None = None
    breaker: CircuitBreaker | None = None
    fallback: Sequence[Fallback] = ()
    wait: float | None = 30.0
    # Which prefixes this process sent are still cached upstream (the ITPM estimate).
    _warmth: _Warmth = field(
        default_factory=lambda: _Warmth(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.budgets is not None and not isinstance(self.budgets, Budgets):
            raise ConfigurationError(f"budgets must be a haikucache.Budgets, got {self.budgets!r}")
        for name in ("limiter", "tenant_limiter"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, RateLimiter):
                raise ConfigurationError(f"{name} must be a haikucache.RateLimiter, got {value!r}")
        if self.breaker is not None and not isinstance(self.breaker, CircuitBreaker):
            raise ConfigurationError(
                f"breaker must be a haikucache.CircuitBreaker, got {self.breaker!r}"
            )
        if isinstance(self.fallback, (str, Upstream)) or not all(
            (isinstance(m, str) and m) or isinstance(m, Upstream) for m in self.fallback
        ):
            raise ConfigurationError(
                "fallback must be a sequence of model names and haikucache.Upstream s"
            )
        object.__setattr__(self, "fallback", tuple(self.fallback))
        if self.wait is not None and not self.wait >= 0:
            raise ConfigurationError("wait must be >= 0 seconds or None")

    @property
    def active(self) -> bool:
        """Whether any control is configured."""
        return bool(
            self.budgets or self.limiter or self.tenant_limiter or self.breaker or self.fallback
        )

    def _limiters(self) -> list[RateLimiter]:
        return [x for x in (self.limiter, self.tenant_limiter) if x is not None]

    # -- admit ----------------------------------------------------------------------------

    def admit(self, call: PreparedCall, upstream: str, *, now: float) -> Ticket:
        """Let a planned call go upstream, or refuse it (nothing is then held).

        Raises:
            CircuitOpenError: the upstream's circuit is open.
            BudgetExceededError: a hard budget has no room for the call's worst case.
            RateLimitedError: the limiter cannot admit it within :attr:`wait`.
        """
        ticket = self._open(call, upstream, now)
        try:
            if self.budgets is not None:
                ticket.reservation = self.budgets.reserve(call.namespace, ticket.worst_usd)
            for limiter in self._limiters():
                ticket.permits.append((limiter, limiter.acquire(call.model, **ticket.estimate)))
        except BaseException:
            self._abandon(ticket)
            raise
        return ticket

    async def aadmit(self, call: PreparedCall, upstream: str, *, now: float) -> Ticket:
        """The async twin of :meth:`admit` (waiting for the limiter never blocks the loop)."""
        ticket = self._open(call, upstream, now)
        try:
            if self.budgets is not None:
                ticket.reservation = await self.budgets.areserve(call.namespace, ticket.worst_usd)
            for limiter in self._limiters():
                permit = await limiter.aacquire(call.model, **ticket.estimate)
                ticket.permits.append((limiter, permit))
        except BaseException:
            self._abandon(ticket)
            raise
        return ticket

    def _open(self, call: PreparedCall, upstream: str, now: float) -> Ticket:
        plan = call.plan
        key = (
            upstream_key(upstream, call.model) if _is_url(upstream) else f"{upstream}|{call.model}"
        )
        if self.breaker is not None:
            self.breaker.before(key)  # raises CircuitOpenError while open
        max_tokens = int(call.body.get("max_tokens") or 0)
        worst = worst_case_for_plan(plan, max_tokens) if plan is not None else 0.0
        estimate = self._warmth.estimate(plan, max_tokens, now)
        if self._limiters() and self.wait is not None:
            estimate["deadline"] = self.wait
        return Ticket(call=call, breaker_key=key, worst_usd=worst, estimate=estimate)

    def _abandon(self, ticket: Ticket) -> None:
        """Give back what a refused admission held (a refused call was never sent)."""
        if ticket.reservation is not None and self.budgets is not None:
            self.budgets.release(ticket.reservation)
        for limiter, permit in ticket.permits:
            limiter.release(permit, sent=False)
        ticket.permits = []
        if self.breaker is not None:
            self.breaker.cancel(ticket.breaker_key)

    # -- settle ---------------------------------------------------------------------------

    def answered(
        self,
        ticket: Ticket,
        message: Mapping[str, Any],
        info: CallInfo | None,
        *,
        headers: Mapping[str, str] | None,
        now: float,
    ) -> None:
        """The call got a complete or partial answer: settle everything with real figures."""
        try:
            if ticket.reservation is not None and self.budgets is not None:
                cost = info.cost_usd if info is not None else ticket.worst_usd
                self.budgets.settle(ticket.reservation, cost)
            usage = message.get("usage")
            for limiter, permit in ticket.permits:
                limiter.settle(permit, usage if isinstance(usage, Mapping) else None)
            if self.limiter is not None and headers is not None:
                self.limiter.learn(ticket.call.model, headers, status=200)
            if self.breaker is not None:
                self.breaker.success(ticket.breaker_key)
            self._warmth.sent(ticket.call.plan, now)
        except Exception:  # a control's store failing never fails a call that succeeded
            logger.warning("haikucache: settling a call's controls failed", exc_info=True)

    def failed(
        self,
        ticket: Ticket,
        *,
        status: int | None,
        exc: BaseException | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """The call got no answer (an error status, or ``exc``): release what it held and
        tell the breaker. Returns whether the next fallback may be tried."""
        upstream_failure = _upstream_failure(status, exc)
        try:
            if ticket.reservation is not None and self.budgets is not None:
                # An error answer is not billed; a call cut off mid-way may have been, but
                # nothing says how much: the reservation is freed, not guessed.
                self.budgets.release(ticket.reservation)
            for limiter, permit in ticket.permits:
                limiter.release(permit, sent=True)
            if self.limiter is not None and headers is not None:
                self.limiter.learn(ticket.call.model, headers, status=status)
            if self.breaker is not None:
                if upstream_failure:
                    self.breaker.failure(ticket.breaker_key)
                elif status is not None and status < 500 and status != 429:
                    self.breaker.success(ticket.breaker_key)  # it answered: it is up
                else:
                    self.breaker.cancel(ticket.breaker_key)
        except Exception:
            logger.warning("haikucache: releasing a call's controls failed", exc_info=True)
        return upstream_failure

    def abandoned(self, ticket: Ticket) -> None:
        """The call was cancelled or interrupted before an answer: nothing learned."""
        try:
            self._abandon(ticket)
        except Exception:
            logger.warning("haikucache: releasing a call's controls failed", exc_info=True)


class BatchControls:
    """The controls of the Message Batches path, which does not go through
    :meth:`~haikucache.Pipeline.exchange`: budget reservations for batch jobs, and the
    limiter's batch limits (one RPM over every batch endpoint, and the queue of requests in
    unfinished batches). Reached as :attr:`Pipeline.batches <haikucache.Pipeline.batches>`;
    every method is a no-op when the engine has no such control.

    A batch's queue places are taken when it is created and given back the first time it is
    seen ended (by ``retrieve`` or ``cancel``, as the batcher polls).
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._queued: dict[str, int] = {}
        self._lock = threading.Lock()

    def _controls(self) -> Controls | None:
        controls: Controls | None = self._engine.controls
        return controls

    # -- budgets: a batch job reserves its worst case at the batch price -------------------

    def reserve(self, call: PreparedCall, body_json: str, *, marked: bool) -> Reservation | None:
        """Reserve a queued job's worst case, as a realtime call does before it is sent.

        Raises:
            BudgetExceededError: a hard budget has no room for it (do not queue it).
        """
        controls = self._controls()
        if controls is None or controls.budgets is None:
            return None
        # An upper bound of the input: a token is rarely under 3 characters of JSON.
        tokens = len(body_json) // 3 + 1
        worst = worst_case_usd(
            call.model,
            input_tokens=tokens,
            max_tokens=int(call.body.get("max_tokens") or 0),
            cache_write_1h_tokens=tokens if marked else 0,
            batch=True,
        )
        return controls.budgets.reserve(call.namespace, worst)

    def settle(self, reservation: Reservation | None, cost_usd: float | None) -> None:
        """Settle with what the answer cost, or free the reservation (``None``: the job
        failed, or went realtime, where the pipeline budgets it anew)."""
        controls = self._controls()
        if reservation is None or controls is None or controls.budgets is None:
            return
        try:
            if cost_usd is None:
                controls.budgets.release(reservation)
            else:
                controls.budgets.settle(reservation, cost_usd)
        except Exception:  # the reservation lapses on its own
            logger.warning("haikucache: settling a batch job's budget failed", exc_info=True)

    # -- the batch endpoints' own limits ---------------------------------------------------

    def _limiter(self) -> tuple[RateLimiter | None, float | None]:
        controls = self._controls()
        if controls is None or controls.limiter is None:
            return None, None
        return controls.limiter, controls.wait

    def admit(self, requests: int = 0) -> None:
        """One call to a batch endpoint (and ``requests`` queue places, for a create).

        Raises:
            RateLimitedError: the batch limits cannot admit it within the controls' wait.
        """
        limiter, wait = self._limiter()
        if limiter is not None:
            limiter.acquire_batch(requests=requests, deadline=wait)

    async def aadmit(self, requests: int = 0) -> None:
        """The async twin of :meth:`admit`."""
        limiter, wait = self._limiter()
        if limiter is not None:
            await limiter.aacquire_batch(requests=requests, deadline=wait)

    def unqueue(self, requests: int) -> None:
        """Give back queue places (a create that failed)."""
        limiter, _ = self._limiter()
        if limiter is not None:
            limiter.release_batch_queue(requests)

    def created(self, batch_id: str, requests: int) -> None:
        if self._limiter()[0] is not None and batch_id:
            with self._lock:
                self._queued[batch_id] = requests

    def seen(self, batch_id: str, processing_status: str | None) -> None:
        """A batch's state was read: an ended one gives its queue places back (once)."""
        if processing_status == "ended":
            with self._lock:
                requests = self._queued.pop(batch_id, 0)
            self.unqueue(requests)


@dataclass
class Ticket:
    """What :meth:`Controls.admit` holds for one call until it is settled."""

    call: PreparedCall
    breaker_key: str
    worst_usd: float
    estimate: dict[str, Any]
    reservation: Reservation | None = None
    permits: list[tuple[RateLimiter, Permit]] = field(default_factory=list)


def error_status(exc: BaseException) -> int | None:
    """The HTTP status an upstream error carries (haikucache's, the SDK's, httpx's)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def error_headers(exc: BaseException) -> Mapping[str, str] | None:
    """The response headers an upstream error carries (haikucache's, the SDK's, httpx's)."""
    for headers in (
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if isinstance(headers, Mapping) or callable(getattr(headers, "get", None)):
            return headers
    return None


def _upstream_failure(status: int | None, exc: BaseException | None) -> bool:
    """529 / 5xx, a timeout or a connection error: the upstream is unwell."""
    if status is not None:
        return status in FALLBACK_STATUSES or status >= 500
    if exc is None:
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    # The connection errors of haikucache, the anthropic SDK and httpx, by family name.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names & {"APIConnectionError", "APITimeoutError", "TransportError", "TimeoutException"}
    )


def _is_url(upstream: str) -> bool:
    return "://" in upstream


class _Warmth:
    """Until when each prefix this process sent stays in the upstream's prompt cache.

    Bounded (least recently used prefixes are forgotten first) and thread-safe. It is a
    local estimate only: the limiter settles with the real usage.
    """

    def __init__(self, size: int = 50_000) -> None:
        self._until: OrderedDict[int, float] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def estimate(self, plan: Plan | None, max_tokens: int, now: float) -> dict[str, Any]:
        if plan is None:
            return {"output_tokens": max_tokens}
        total = plan.estimated_tokens
        fps = plan.fingerprints
        read = last = 0
        with self._lock:
            for bp in plan.breakpoints:
                tokens = min(bp.prefix_tokens, total)
                last = max(last, tokens)
                fp = fps.get(bp.path)
                if fp is not None and self._until.get(fp, 0.0) > now:
                    read = max(read, tokens)
        write = max(0, last - read)
        return {
            "input_tokens": max(0, total - read - write),
            "cache_write_tokens": write,
            "cache_read_tokens": read,
            "output_tokens": max_tokens,
        }

    def sent(self, plan: Plan | None, now: float) -> None:
        if plan is None:
            return
        fps = plan.fingerprints
        with self._lock:
            for bp in plan.breakpoints:
                fp = fps.get(bp.path)
                if fp is None:
                    continue
                self._until[fp] = now + _TTL_SECONDS.get(bp.ttl, 300.0)
                self._until.move_to_end(fp)
            while len(self._until) > self._size:
                self._until.popitem(last=False)
