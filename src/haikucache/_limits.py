"""The client-side rate limiter: RPM, ITPM and OTPM token buckets, cache-aware, shareable.

The API limits each organisation per model with token buckets that refill continuously (a
bucket holds one minute of its limit and regains ``limit / 60`` per second), in three
dimensions: requests (RPM), input tokens (ITPM) and output tokens (OTPM). On Claude Haiku 4.5
only ``input_tokens + cache_creation_input_tokens`` count toward ITPM; cache reads do not
(reference §1.9, "cache-aware ITPM"). A limiter that knows this admits several times more calls
on a cache-heavy workload than one that counts every input token. The Message Batches endpoints
have their own limits, shared across models: requests per minute over all batch endpoints, and
how many batch requests may wait in the processing queue (reference §3.5).

Around one call::

    permit = limiter.acquire(model, input_tokens=n_in, cache_write_tokens=n_write,
                             cache_read_tokens=n_read, output_tokens=n_out, deadline=30)
    try:
        response = send(...)
    except Exception:
        limiter.release(permit)          # refunds the tokens; the request still counts
        raise
    limiter.settle(permit, response["usage"])   # charge or refund the difference
    limiter.learn(model, response.headers)      # after settle: the server's view wins

``acquire`` waits (on the injected clock and sleep) until every bucket holds the call's cost,
or raises :class:`~haikucache.RateLimitedError` at once when that would take longer than the
deadline. Limits are configured, learned from the ``anthropic-ratelimit-*`` response headers,
or both (the lower wins). A ``retry-after`` learned from a 429 holds back every call for that
model until it has passed.

Backends: :class:`MemoryLimiterBackend` (one process, thread-safe) and
:class:`RedisLimiterBackend` (many processes and machines; every change is one Lua script, so
the check and the take are atomic). One limiter (and one Redis prefix) per organisation: the
API's limits are per organisation, not per key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from ._catalog import lookup_model
from ._clock import Clock, SystemClock
from ._exceptions import ConfigurationError, ControlStoreError, RateLimitedError, UsageError
from ._redis_link import RedisScripted

__all__ = [
    "BATCH_SCOPE",
    "HAIKU_4_5_TIERS",
    "Admission",
    "AsyncLimiterBackend",
    "BatchLimits",
    "BucketOp",
    "LimiterBackend",
    "MemoryLimiterBackend",
    "Permit",
    "RateLimiter",
    "RateLimits",
    "RedisLimiterBackend",
    "cache_reads_count_toward_itpm",
    "itpm_tokens",
]

logger = logging.getLogger("haikucache")

#: The scope of the Message Batches limits (shared by every model).
BATCH_SCOPE = "batch"

LimitName = Literal["requests", "input_tokens", "output_tokens", "batch_requests", "batch_queue"]

# Models whose ITPM excludes cache reads. The reference confirms it for Haiku 4.5 only
# (§1.9); every other model counts reads, which errs on the safe side (fewer 429s).
_CACHE_AWARE_MODELS = frozenset({"claude-haiku-4-5"})
# A bucket with no known limit still carries the ``retry-after`` block of its scope.
_UNLIMITED = 1e15
# How often a waiter re-checks a bucket that does not refill (the batch queue).
_QUEUE_POLL_SECONDS = 1.0
# Added to each wait so that a waiter wakes just after the bucket holds enough, not before.
_WAKE_MARGIN = 0.001
_HEADER_DIMENSIONS: tuple[tuple[str, LimitName], ...] = (
    ("requests", "requests"),
    ("input-tokens", "input_tokens"),
    ("output-tokens", "output_tokens"),
)


def cache_reads_count_toward_itpm(model: str) -> bool:
    """Whether the API counts ``cache_read_input_tokens`` toward ``model``'s ITPM limit.

    ``False`` for Claude Haiku 4.5 (any spelling: alias, dated, Bedrock, Vertex); ``True`` for
    every other model, including unknown ones.
    """
    info = lookup_model(model)
    return info is None or info.name not in _CACHE_AWARE_MODELS


def itpm_tokens(
    usage: Mapping[str, Any], *, model: str | None = None, cache_reads_count: bool | None = None
) -> int:
    """The input tokens a ``usage`` object charges to ITPM.

    Args:
        usage: the API's ``usage`` (``input_tokens``, ``cache_creation_input_tokens``,
            ``cache_read_input_tokens``).
        model: decides whether cache reads count (:func:`cache_reads_count_toward_itpm`).
        cache_reads_count: overrides the model's rule.
    """
    if cache_reads_count is None:
        cache_reads_count = True if model is None else cache_reads_count_toward_itpm(model)
    total = _int(usage.get("input_tokens")) + _int(usage.get("cache_creation_input_tokens"))
    if cache_reads_count:
        total += _int(usage.get("cache_read_input_tokens"))
    return total


@dataclass(frozen=True)
class RateLimits:
    """The limits of one model, per minute; ``None`` means not limited (or not yet known).

    Attributes:
        rpm: requests per minute.
        itpm: input tokens per minute.
        otpm: output tokens per minute.
        cache_reads_count: whether cache reads count toward ITPM; ``None`` follows the
            model's rule (:func:`cache_reads_count_toward_itpm`).
    """

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    cache_reads_count: bool | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"RateLimits.{name} must be a positive int or None")


#: The API's published limits for Claude Haiku 4.5 by usage tier (reference §4.4).
HAIKU_4_5_TIERS: dict[int, RateLimits] = {
    1: RateLimits(rpm=50, itpm=50_000, otpm=10_000),
    2: RateLimits(rpm=1_000, itpm=450_000, otpm=90_000),
    3: RateLimits(rpm=2_000, itpm=1_000_000, otpm=200_000),
    4: RateLimits(rpm=4_000, itpm=4_000_000, otpm=800_000),
}


@dataclass(frozen=True)
class BatchLimits:
    """Limits of the Message Batches endpoints, shared across models (reference §3.5).

    Attributes:
        rpm: HTTP requests per minute over every batch endpoint (create, retrieve, list,
            results, cancel, delete); tier 1 is 50.
        queue: batch requests that may be in the processing queue at once; tier 1 is
            100,000. Taken by :meth:`RateLimiter.acquire_batch` and given back by
            :meth:`RateLimiter.release_batch_queue` when the batch ends.
    """

    rpm: int | None = None
    queue: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "queue"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"BatchLimits.{name} must be a positive int or None")


@dataclass(frozen=True)
class BucketOp:
    """One bucket in one backend operation.

    Attributes:
        key: the bucket's key (``"<scope>:<limit>"``).
        capacity: what a full bucket holds.
        rate: what it regains per second (0: it does not refill, like the batch queue).
        value: for a take, the cost; for an update, the operand of ``mode``.
        mode: updates only: ``"add"`` (refund if positive, charge if negative; the level is
            capped at ``capacity`` and may go below 0), ``"min"`` (lower the level to
            ``value`` if it is higher) or ``"block"`` (no take before time ``value``).
    """

    key: str
    capacity: float
    rate: float
    value: float
    mode: Literal["take", "add", "min", "block"] = "take"


@dataclass(frozen=True)
class Admission:
    """A backend's answer to a take.

    Attributes:
        granted: every bucket held its cost, and all were taken.
        wait: seconds until it could be granted (0 when granted); ``None`` when unknown (a
            bucket that does not refill is short) or never (``impossible``).
        index: the bucket that binds (into the ops passed), or -1.
        impossible: the cost exceeds that bucket's capacity: it can never be granted.
    """

    granted: bool
    wait: float | None = 0.0
    index: int = -1
    impossible: bool = False


class LimiterBackend(Protocol):
    """Where the buckets live. Every method is atomic over all the buckets it is given."""

    def take(self, now: float, ops: Sequence[BucketOp]) -> Admission:
        """Refill each bucket to ``now``; take every cost if every bucket holds it."""
        ...

    def update(self, now: float, ops: Sequence[BucketOp]) -> None:
        """Refill each bucket to ``now`` and apply each op's ``mode``."""
        ...

    def levels(self, now: float, ops: Sequence[BucketOp]) -> list[float]:
        """The current level of each bucket (for reports and tests)."""
        ...


class AsyncLimiterBackend(LimiterBackend, Protocol):
    """A backend with coroutine twins of its methods."""

    async def atake(self, now: float, ops: Sequence[BucketOp]) -> Admission: ...

    async def aupdate(self, now: float, ops: Sequence[BucketOp]) -> None: ...


@dataclass
class _Bucket:
    level: float
    stamp: float
    blocked_until: float = 0.0


class MemoryLimiterBackend:
    """Buckets in this process's memory; thread-safe, and usable from async code (its
    operations never block for longer than a lock held for microseconds)."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryLimiterBackend()"

    def _refilled(self, op: BucketOp, now: float) -> _Bucket:
        bucket = self._buckets.get(op.key)
        if bucket is None:
            bucket = self._buckets[op.key] = _Bucket(op.capacity, now)
        if now > bucket.stamp:
            bucket.level += (now - bucket.stamp) * op.rate
            bucket.stamp = now
        bucket.level = min(bucket.level, op.capacity)
        return bucket

    def take(self, now: float, ops: Sequence[BucketOp]) -> Admission:
        with self._lock:
            wait, index, unknown = 0.0, -1, False
            buckets = []
            for i, op in enumerate(ops):
                if op.value > op.capacity:
                    return Admission(False, None, i, impossible=True)
                bucket = self._refilled(op, now)
                buckets.append(bucket)
                needed = bucket.blocked_until - now if bucket.blocked_until > now else 0.0
                if bucket.level < op.value:
                    if op.rate > 0:
                        needed = max(needed, (op.value - bucket.level) / op.rate)
                    elif not unknown:
                        unknown = True
                        index = i if wait == 0 else index
                if needed > wait:
                    wait, index = needed, i
            if wait > 0:
                return Admission(False, wait, index)
            if unknown:
                return Admission(False, None, index)
            for op, bucket in zip(ops, buckets, strict=True):
                bucket.level -= op.value
            return Admission(True, 0.0)

    def update(self, now: float, ops: Sequence[BucketOp]) -> None:
        with self._lock:
            for op in ops:
                bucket = self._refilled(op, now)
                if op.mode == "add":
                    bucket.level = min(op.capacity, bucket.level + op.value)
                elif op.mode == "min":
                    bucket.level = min(bucket.level, op.value)
                elif op.mode == "block":
                    bucket.blocked_until = max(bucket.blocked_until, op.value)
                else:
                    raise ValueError(f"unknown bucket update mode {op.mode!r}")

    def levels(self, now: float, ops: Sequence[BucketOp]) -> list[float]:
        with self._lock:
            return [self._refilled(op, now).level for op in ops]

    async def atake(self, now: float, ops: Sequence[BucketOp]) -> Admission:
        return self.take(now, ops)

    async def aupdate(self, now: float, ops: Sequence[BucketOp]) -> None:
        self.update(now, ops)


# Shared by both scripts: refill bucket i to `now` (KEYS[i], capacity and rate in ARGV).
_LUA_REFILL = """
local function refill(i, cap, rate, now)
  local h = redis.call('HMGET', KEYS[i], 'l', 't', 'b')
  local level = tonumber(h[1]) or cap
  local stamp = tonumber(h[2]) or now
  local blocked = tonumber(h[3]) or 0
  if now > stamp then
    level = level + (now - stamp) * rate
    stamp = now
  end
  if level > cap then level = cap end
  return level, stamp, blocked
end
local function store(i, cap, rate, level, stamp, blocked, now)
  redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level),
             't', string.format('%.17g', stamp), 'b', string.format('%.17g', blocked))
  if rate > 0 then
    -- A full bucket is the same as no bucket: let it go once it would be full again.
    local ms = math.ceil((cap - level) / rate * 1000) + 1000
    if blocked > now then ms = math.max(ms, math.ceil((blocked - now) * 1000) + 1000) end
    redis.call('PEXPIRE', KEYS[i], ms)
  else
    redis.call('PERSIST', KEYS[i])
  end
end
"""

# ARGV[1] = now; then per bucket: capacity, rate, cost.
# Returns {status, index, wait}: 1 granted; 0 wait (wait = -1: unknown); -1 impossible.
_LUA_TAKE = (
    _LUA_REFILL
    + """
local now = tonumber(ARGV[1])
local levels, stamps, blocks = {}, {}, {}
local wait, index, unknown = 0, 0, false
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 3
  local cap, rate, cost = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if cost > cap then return {-1, i, '-1'} end
  local level, stamp, blocked = refill(i, cap, rate, now)
  levels[i], stamps[i], blocks[i] = level, stamp, blocked
  local needed = 0
  if blocked > now then needed = blocked - now end
  if level < cost then
    if rate > 0 then
      needed = math.max(needed, (cost - level) / rate)
    elseif not unknown then
      unknown = true
      if wait == 0 then index = i end
    end
  end
  if needed > wait then wait, index = needed, i end
end
if wait > 0 then return {0, index, string.format('%.17g', wait)} end
if unknown then return {0, index, '-1'} end
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 3
  local cap, rate, cost = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  store(i, cap, rate, levels[i] - cost, stamps[i], blocks[i], now)
end
return {1, 0, '0'}
"""
)

# ARGV[1] = now; then per bucket: capacity, rate, mode, value.
_LUA_UPDATE = (
    _LUA_REFILL
    + """
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local cap, rate = tonumber(ARGV[base]), tonumber(ARGV[base + 1])
  local mode, value = ARGV[base + 2], tonumber(ARGV[base + 3])
  local level, stamp, blocked = refill(i, cap, rate, now)
  if mode == 'add' then
    level = math.min(cap, level + value)
  elseif mode == 'min' then
    if value < level then level = value end
  elseif mode == 'block' then
    if value > blocked then blocked = value end
  else
    return redis.error_reply('unknown bucket update mode ' .. mode)
  end
  store(i, cap, rate, level, stamp, blocked, now)
end
return 1
"""
)

# ARGV[1] = now; then per bucket: capacity, rate. Returns each level as a string.
_LUA_LEVELS = (
    _LUA_REFILL
    + """
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 2
  local level = refill(i, tonumber(ARGV[base]), tonumber(ARGV[base + 1]), now)
  out[i] = string.format('%.17g', level)
end
return out
"""
)


class RedisLimiterBackend(RedisScripted):
    """Buckets in Redis, shared by every process and machine that points at it.

    Each take or update is one Lua script over all the buckets of a call, so the check and the
    take are atomic: many processes never admit more than the limit between them. A bucket is a
    hash ``<prefix>rl:{<scope>}:<limit>`` (the braces keep a scope's buckets in one Redis
    Cluster slot) that expires once it would be full again. Time is the callers' clock, so
    machines sharing a limiter need synchronised clocks (NTP is plenty for a per-minute limit).

    Args:
        url: a ``redis://`` or ``rediss://`` URL.
        prefix: prepended to every key.
        socket_timeout: seconds before an operation fails.
        client: a ready ``redis.Redis`` (not closed by us).
        async_client: a ready ``redis.asyncio.Redis`` (not closed by us).

    Raises:
        MissingDependencyError: the ``redis`` package is not installed.
    """

    SCRIPTS: ClassVar[Mapping[str, str]] = {
        "take": _LUA_TAKE,
        "update": _LUA_UPDATE,
        "levels": _LUA_LEVELS,
    }
    FEATURE = "The Redis rate limiter"

    def _key(self, key: str) -> str:
        scope, _, limit = key.rpartition(":")
        return f"{self.prefix}rl:{{{scope}}}:{limit}"

    def _take_args(self, now: float, ops: Sequence[BucketOp]) -> tuple[list[str], list[Any]]:
        args: list[Any] = [repr(now)]
        for op in ops:
            args += [repr(op.capacity), repr(op.rate), repr(op.value)]
        return [self._key(op.key) for op in ops], args

    def _update_args(self, now: float, ops: Sequence[BucketOp]) -> tuple[list[str], list[Any]]:
        args: list[Any] = [repr(now)]
        for op in ops:
            args += [repr(op.capacity), repr(op.rate), op.mode, repr(op.value)]
        return [self._key(op.key) for op in ops], args

    @staticmethod
    def _admission(raw: Sequence[Any]) -> Admission:
        status, index, wait = int(raw[0]), int(raw[1]) - 1, float(raw[2])
        if status == 1:
            return Admission(True, 0.0)
        if status == -1:
            return Admission(False, None, index, impossible=True)
        return Admission(False, None if wait < 0 else wait, index)

    def take(self, now: float, ops: Sequence[BucketOp]) -> Admission:
        return self._admission(self._link.run("take", *self._take_args(now, ops)))

    async def atake(self, now: float, ops: Sequence[BucketOp]) -> Admission:
        return self._admission(await self._link.arun("take", *self._take_args(now, ops)))

    def update(self, now: float, ops: Sequence[BucketOp]) -> None:
        if ops:
            self._link.run("update", *self._update_args(now, ops))

    async def aupdate(self, now: float, ops: Sequence[BucketOp]) -> None:
        if ops:
            await self._link.arun("update", *self._update_args(now, ops))

    def levels(self, now: float, ops: Sequence[BucketOp]) -> list[float]:
        args: list[Any] = [repr(now)]
        for op in ops:
            args += [repr(op.capacity), repr(op.rate)]
        raw = self._link.run("levels", [self._key(op.key) for op in ops], args)
        return [float(v) for v in raw]


@dataclass
class Permit:
    """What :meth:`RateLimiter.acquire` took for one call; settle or release it once.

    Attributes:
        scope: the bucket scope: the model's canonical name, or ``"batch"``.
        requests: requests taken (1, or 0 for an unmetered permit).
        input_tokens: ITPM tokens taken (input + cache writes, + cache reads where they count).
        output_tokens: OTPM tokens taken (the estimate given to ``acquire``, at least 1).
        batch_queue: batch-queue places taken (:meth:`RateLimiter.acquire_batch`).
        cache_reads_count: whether cache reads were counted toward ITPM.
        waited: seconds ``acquire`` waited.
        metered: ``False`` when the shared state failed and the limiter let the call through
            unmetered (``fail_open``); settling it does nothing.
        done: settled or released already.
    """

    scope: str
    requests: int
    input_tokens: int
    output_tokens: int
    batch_queue: int = 0
    cache_reads_count: bool = True
    waited: float = 0.0
    metered: bool = True
    done: bool = field(default=False, repr=False)


class RateLimiter:
    """A client-side rate limiter for the Messages API (and the Message Batches endpoints).

    Args:
        limits: per model (alias, dated, Bedrock or Vertex id; they share one bucket) or
            ``"*"`` for any other model. Nothing configured and nothing learned: not limited.
        batch: the Message Batches limits.
        backend: where the buckets live; default :class:`MemoryLimiterBackend`.
        cache_aware: count cache reads toward ITPM only for models where the API does
            (``False``: count every input token, as a naive limiter does).
        learn_limits: let :meth:`learn` adopt the limits in response headers (remaining
            tokens and ``retry-after`` are always learned).
        fail_open: when the backend fails (Redis down), log and let calls through unmetered
            (``True``, default: the API's own 429s still protect it) or raise
            :class:`~haikucache.ControlStoreError` (``False``).
        clock: the time buckets refill by.
        sleep: how the sync :meth:`acquire` waits (tests pass ``ManualClock.advance``).
        asleep: how :meth:`aacquire` waits.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimits] | None = None,
        *,
        batch: BatchLimits | None = None,
        backend: LimiterBackend | None = None,
        cache_aware: bool = True,
        learn_limits: bool = True,
        fail_open: bool = True,
        clock: Clock | None = None,
        sleep: Callable[[float], object] | None = None,
        asleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._limits: dict[str, RateLimits] = {}
        for model, value in (limits or {}).items():
            if not isinstance(value, RateLimits):
                raise ConfigurationError(f"limits[{model!r}] must be a RateLimits")
            self._limits[model if model == "*" else _scope(model)] = value
        self.batch_limits = batch or BatchLimits()
        self.backend: LimiterBackend = backend if backend is not None else MemoryLimiterBackend()
        self.cache_aware = cache_aware
        self.learn_limits = learn_limits
        self.fail_open = fail_open
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else time.sleep
        self._asleep: Callable[[float], Awaitable[object]] = (
            asleep if asleep is not None else asyncio.sleep
        )
        self._learned: dict[str, dict[str, int]] = {}
        self._learned_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RateLimiter(backend={self.backend!r}, cache_aware={self.cache_aware})"

    # ----------------------------------------------------------------- limits

    def limits_for(self, model: str) -> RateLimits:
        """The limits in force for ``model``: configured and learned, the lower of the two."""
        scope = _scope(model)
        configured = self._limits.get(scope) or self._limits.get("*") or RateLimits()
        with self._learned_lock:
            learned = dict(self._learned.get(scope, {}))

        def lower(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else min(a, b)

        return RateLimits(
            rpm=lower(configured.rpm, learned.get("requests")),
            itpm=lower(configured.itpm, learned.get("input_tokens")),
            otpm=lower(configured.otpm, learned.get("output_tokens")),
            cache_reads_count=configured.cache_reads_count,
        )

    def counts_cache_reads(self, model: str) -> bool:
        """Whether this limiter charges cache reads to ``model``'s ITPM."""
        if not self.cache_aware:
            return True
        rule = self.limits_for(model).cache_reads_count
        return cache_reads_count_toward_itpm(model) if rule is None else rule

    def _batch_limits(self) -> BatchLimits:
        with self._learned_lock:
            learned = self._learned.get(BATCH_SCOPE, {}).get("requests")
        rpm = self.batch_limits.rpm
        if learned is not None:
            rpm = learned if rpm is None else min(rpm, learned)
        return BatchLimits(rpm=rpm, queue=self.batch_limits.queue)

    def _ops(
        self, scope: str, limits: RateLimits, costs: Mapping[str, float]
    ) -> list[tuple[LimitName, BucketOp]]:
        """The buckets of a scope with a known limit, plus the requests bucket always (it
        carries the ``retry-after`` block)."""
        ops: list[tuple[LimitName, BucketOp]] = []
        per_minute: tuple[tuple[LimitName, int | None], ...] = (
            ("requests", limits.rpm),
            ("input_tokens", limits.itpm),
            ("output_tokens", limits.otpm),
        )
        for name, limit in per_minute:
            if name in costs and (limit is not None or name == "requests"):
                capacity = float(limit) if limit is not None else _UNLIMITED
                rate = capacity / 60.0
                ops.append((name, BucketOp(f"{scope}:{name}", capacity, rate, costs[name])))
        return ops

    def _batch_ops(self, requests: int, calls: int) -> list[tuple[LimitName, BucketOp]]:
        limits = self._batch_limits()
        capacity = float(limits.rpm) if limits.rpm is not None else _UNLIMITED
        ops: list[tuple[LimitName, BucketOp]] = [
            (
                "batch_requests",
                BucketOp(f"{BATCH_SCOPE}:requests", capacity, capacity / 60.0, float(calls)),
            )
        ]
        if limits.queue is not None and requests:
            ops.append(
                (
                    "batch_queue",
                    BucketOp(f"{BATCH_SCOPE}:queue", float(limits.queue), 0.0, float(requests)),
                )
            )
        return ops

    # ----------------------------------------------------------------- acquire

    def _request_ops(
        self,
        model: str,
        input_tokens: int,
        cache_write_tokens: int,
        cache_read_tokens: int,
        output_tokens: int,
    ) -> tuple[Permit, list[tuple[LimitName, BucketOp]]]:
        for name, value in (
            ("input_tokens", input_tokens),
            ("cache_write_tokens", cache_write_tokens),
            ("cache_read_tokens", cache_read_tokens),
            ("output_tokens", output_tokens),
        ):
            if not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be an int >= 0, not {value!r}")
        scope = _scope(model)
        reads = self.counts_cache_reads(model)
        itpm = input_tokens + cache_write_tokens + (cache_read_tokens if reads else 0)
        # Every answer has at least one output token; the API's OTPM check refuses a call
        # once the bucket is empty, whatever the call will produce.
        otpm = max(1, output_tokens)
        permit = Permit(scope, 1, itpm, otpm, cache_reads_count=reads)
        costs = {"requests": 1.0, "input_tokens": float(itpm), "output_tokens": float(otpm)}
        return permit, self._ops(scope, self.limits_for(model), costs)

    def acquire(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_read_tokens: int = 0,
        output_tokens: int = 0,
        deadline: float | None = None,
    ) -> Permit:
        """Take one request and its tokens from ``model``'s buckets, waiting if need be.

        Args:
            model: the model the call goes to.
            input_tokens: estimated uncached input tokens (after the last cache breakpoint,
                or all of them when nothing is cached).
            cache_write_tokens: estimated tokens the call will write to the prompt cache.
            cache_read_tokens: estimated tokens it will read from the prompt cache (they
                count toward ITPM only where the model's rule says so).
            output_tokens: estimated output tokens (``max_tokens`` is the safe bound; the API
                itself charges only what is produced, so a typical length is fine).
            deadline: seconds to wait at most; ``None`` waits as long as needed, ``0``
                refuses at once.

        Returns:
            A :class:`Permit`; pass it to :meth:`settle` with the real usage, or to
            :meth:`release` if the call failed.

        Raises:
            RateLimitedError: the call cannot be admitted within ``deadline`` (raised at
                once when the wait is known to be longer), or never (it is bigger than a
                limit).
            ControlStoreError: the backend failed and ``fail_open`` is off.
        """
        permit, ops = self._request_ops(
            model, input_tokens, cache_write_tokens, cache_read_tokens, output_tokens
        )
        return self._wait(permit, ops, model, deadline)

    async def aacquire(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_read_tokens: int = 0,
        output_tokens: int = 0,
        deadline: float | None = None,
    ) -> Permit:
        """Coroutine twin of :meth:`acquire`."""
        permit, ops = self._request_ops(
            model, input_tokens, cache_write_tokens, cache_read_tokens, output_tokens
        )
        return await self._await(permit, ops, model, deadline)

    def acquire_batch(self, *, requests: int = 0, deadline: float | None = None) -> Permit:
        """Take one call to a Message Batches endpoint (and ``requests`` queue places).

        Every HTTP call to a batch endpoint (create, poll, list, results, cancel) counts
        toward the batch RPM; a create also takes one queue place per request in the batch,
        given back with :meth:`release_batch_queue` when the batch ends.

        Raises:
            RateLimitedError: as :meth:`acquire`; a full queue is waited on by polling, as
                only the end of some batch frees it.
        """
        if not isinstance(requests, int) or requests < 0:
            raise UsageError(f"requests must be an int >= 0, not {requests!r}")
        permit = Permit(BATCH_SCOPE, 1, 0, 0, batch_queue=requests)
        return self._wait(permit, self._batch_ops(requests, 1), BATCH_SCOPE, deadline)

    async def aacquire_batch(self, *, requests: int = 0, deadline: float | None = None) -> Permit:
        """Coroutine twin of :meth:`acquire_batch`."""
        if not isinstance(requests, int) or requests < 0:
            raise UsageError(f"requests must be an int >= 0, not {requests!r}")
        permit = Permit(BATCH_SCOPE, 1, 0, 0, batch_queue=requests)
        return await self._await(permit, self._batch_ops(requests, 1), BATCH_SCOPE, deadline)

    def _next_step(
        self,
        admission: Admission,
        ops: Sequence[tuple[LimitName, BucketOp]],
        model: str,
        deadline: float | None,
        waited: float,
    ) -> float:
        """How long to sleep before trying again; raises when the deadline rules it out."""
        name, op = ops[admission.index] if admission.index >= 0 else ("requests", ops[0][1])
        if admission.impossible:
            raise RateLimitedError(
                f"rate limit: a call to {model} needs {op.value:g} {name.replace('_', ' ')}, "
                f"more than the limit of {op.capacity:g} per minute allows",
                model=model,
                limit=name,
            )
        left = None if deadline is None else deadline - waited
        if admission.wait is None:
            step = _QUEUE_POLL_SECONDS if left is None else min(_QUEUE_POLL_SECONDS, left)
            if left is not None and left <= 0:
                raise RateLimitedError(
                    f"rate limit: the Message Batches queue is full (limit {op.capacity:g} "
                    f"requests); gave up after {waited:.3g} s",
                    model=model,
                    limit=name,
                )
            return step
        if left is not None and admission.wait > left:
            raise RateLimitedError(
                f"rate limit: a call to {model} would wait {admission.wait:.3g} s for "
                f"{name.replace('_', ' ')} (deadline {deadline:g} s, waited {waited:.3g} s)",
                model=model,
                limit=name,
                retry_after=admission.wait,
            )
        return admission.wait + _WAKE_MARGIN

    def _unmetered(self, permit: Permit, exc: ControlStoreError) -> Permit:
        if not self.fail_open:
            raise exc
        logger.warning("haikucache: rate limiter backend failed, call not metered: %s", exc)
        permit.metered = False
        return permit

    def _wait(
        self,
        permit: Permit,
        ops: Sequence[tuple[LimitName, BucketOp]],
        model: str,
        deadline: float | None,
    ) -> Permit:
        start = self.clock.now()
        bucket_ops = [op for _, op in ops]
        while True:
            now = self.clock.now()
            try:
                admission = self.backend.take(now, bucket_ops)
            except ControlStoreError as exc:
                return self._unmetered(permit, exc)
            if admission.granted:
                permit.waited = now - start
                return permit
            step = self._next_step(admission, ops, model, deadline, now - start)
            logger.debug("haikucache: rate limit: %s waits %.3f s", model, step)
            self._sleep(step)

    async def _await(
        self,
        permit: Permit,
        ops: Sequence[tuple[LimitName, BucketOp]],
        model: str,
        deadline: float | None,
    ) -> Permit:
        start = self.clock.now()
        bucket_ops = [op for _, op in ops]
        atake = getattr(self.backend, "atake", None)
        while True:
            now = self.clock.now()
            try:
                if atake is not None:
                    admission = await atake(now, bucket_ops)
                else:
                    admission = self.backend.take(now, bucket_ops)
            except ControlStoreError as exc:
                return self._unmetered(permit, exc)
            if admission.granted:
                permit.waited = now - start
                return permit
            step = self._next_step(admission, ops, model, deadline, now - start)
            await self._asleep(step)

    # ----------------------------------------------------------------- settle

    def _settle_ops(
        self, permit: Permit, usage: Mapping[str, Any] | None, *, refund_request: bool
    ) -> list[BucketOp]:
        if permit.done:
            return []
        permit.done = True
        if not permit.metered:
            return []
        if permit.scope == BATCH_SCOPE:
            return [] if not refund_request else self._batch_refund(permit)
        if usage is None:
            actual_in = actual_out = 0
        else:
            actual_in = itpm_tokens(usage, cache_reads_count=permit.cache_reads_count)
            actual_out = _int(usage.get("output_tokens"))
        deltas = {
            "requests": float(permit.requests if refund_request else 0),
            "input_tokens": float(permit.input_tokens - actual_in),
            "output_tokens": float(permit.output_tokens - actual_out),
        }
        limits = self.limits_for(permit.scope)
        ops = self._ops(permit.scope, limits, deltas)
        return [
            BucketOp(op.key, op.capacity, op.rate, op.value, "add") for _, op in ops if op.value
        ]

    def _batch_refund(self, permit: Permit) -> list[BucketOp]:
        ops = self._batch_ops(permit.batch_queue, permit.requests)
        return [BucketOp(op.key, op.capacity, op.rate, op.value, "add") for _, op in ops]

    def _apply(self, ops: Sequence[BucketOp]) -> None:
        if not ops:
            return
        try:
            self.backend.update(self.clock.now(), ops)
        except ControlStoreError as exc:
            if not self.fail_open:
                raise
            logger.warning("haikucache: rate limiter backend failed: %s", exc)

    async def _aapply(self, ops: Sequence[BucketOp]) -> None:
        if not ops:
            return
        aupdate = getattr(self.backend, "aupdate", None)
        try:
            if aupdate is not None:
                await aupdate(self.clock.now(), ops)
            else:
                self.backend.update(self.clock.now(), ops)
        except ControlStoreError as exc:
            if not self.fail_open:
                raise
            logger.warning("haikucache: rate limiter backend failed: %s", exc)

    def settle(self, permit: Permit, usage: Mapping[str, Any] | None) -> None:
        """Charge (or refund) the difference between what ``acquire`` took and the real usage.

        Args:
            permit: from :meth:`acquire`; a second settle or release is a no-op.
            usage: the response's ``usage`` (a stream's final usage); cache reads are
                charged to ITPM only if the permit counted them.
        """
        self._apply(self._settle_ops(permit, usage, refund_request=False))

    async def asettle(self, permit: Permit, usage: Mapping[str, Any] | None) -> None:
        """Coroutine twin of :meth:`settle`."""
        await self._aapply(self._settle_ops(permit, usage, refund_request=False))

    def release(self, permit: Permit, *, sent: bool = True) -> None:
        """Give the tokens back after a failed call (no usage to settle with).

        Args:
            permit: from :meth:`acquire` or :meth:`acquire_batch`.
            sent: the request reached the API (it counts toward RPM then, and keeps its
                place); ``False`` gives the request back too (the call was never sent).
        """
        self._apply(self._settle_ops(permit, None, refund_request=not sent))

    async def arelease(self, permit: Permit, *, sent: bool = True) -> None:
        """Coroutine twin of :meth:`release`."""
        await self._aapply(self._settle_ops(permit, None, refund_request=not sent))

    def release_batch_queue(self, requests: int) -> None:
        """Give back ``requests`` batch-queue places (a batch ended)."""
        limits = self._batch_limits()
        if limits.queue is None or requests <= 0:
            return
        self._apply(
            [BucketOp(f"{BATCH_SCOPE}:queue", float(limits.queue), 0.0, float(requests), "add")]
        )

    async def arelease_batch_queue(self, requests: int) -> None:
        """Coroutine twin of :meth:`release_batch_queue`."""
        limits = self._batch_limits()
        if limits.queue is None or requests <= 0:
            return
        await self._aapply(
            [BucketOp(f"{BATCH_SCOPE}:queue", float(limits.queue), 0.0, float(requests), "add")]
        )

    # ----------------------------------------------------------------- learn

    def _learn_ops(
        self, model: str, headers: Mapping[str, str], status: int | None
    ) -> list[BucketOp]:
        h = {k.lower(): v for k, v in headers.items()}
        scope = BATCH_SCOPE if model == BATCH_SCOPE else _scope(model)
        seen: dict[str, tuple[int | None, int | None]] = {}
        for header, dimension in _HEADER_DIMENSIONS:
            limit = _header_int(h.get(f"anthropic-ratelimit-{header}-limit"))
            remaining = _header_int(h.get(f"anthropic-ratelimit-{header}-remaining"))
            if limit is not None or remaining is not None:
                seen[dimension] = (limit, remaining)
        if self.learn_limits:
            with self._learned_lock:
                learned = self._learned.setdefault(scope, {})
                for key, (limit, _) in seen.items():
                    if limit is not None and limit > 0:
                        learned[key] = limit
        if scope == BATCH_SCOPE:
            ops = [op for _, op in self._batch_ops(0, 0)]
            named = {"requests": ops[0]}
        else:
            costs = dict.fromkeys(("requests", "input_tokens", "output_tokens"), 0.0)
            named = {n: op for n, op in self._ops(scope, self.limits_for(scope), costs)}
        out: list[BucketOp] = []
        for key, (_, remaining) in seen.items():
            op = named.get(key)
            if op is not None and remaining is not None and op.capacity < _UNLIMITED:
                # The server's count includes every client of the organisation; ours only
                # this limiter's. The lower one is the truth that matters.
                out.append(BucketOp(op.key, op.capacity, op.rate, float(remaining), "min"))
        retry_after = _retry_after(h)
        if retry_after is not None and status in (None, 429):
            gate = named["requests"]
            until = self.clock.now() + retry_after
            out.append(BucketOp(gate.key, gate.capacity, gate.rate, until, "block"))
        return out

    def learn(self, model: str, headers: Mapping[str, str], *, status: int | None = None) -> None:
        """Learn limits and remaining capacity from a response's headers.

        Reads ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``
        (the lower of a configured and a learned limit is used; a bucket above the server's
        ``remaining`` is lowered to it) and, on a 429, ``retry-after-ms`` / ``retry-after``:
        no call to ``model`` is admitted until it has passed. Call it after :meth:`settle`.

        Args:
            model: the model the response is for, or ``"batch"`` for a batch endpoint.
            headers: the response headers (any case).
            status: the response status; ``retry-after`` is honoured on 429 (or when
                ``None``), ignored on other statuses.
        """
        self._apply(self._learn_ops(model, headers, status))

    async def alearn(
        self, model: str, headers: Mapping[str, str], *, status: int | None = None
    ) -> None:
        """Coroutine twin of :meth:`learn`."""
        await self._aapply(self._learn_ops(model, headers, status))

    # ----------------------------------------------------------------- report

    def available(self, model: str) -> dict[str, float]:
        """What ``model``'s buckets hold now, by limit (only limits that are known)."""
        costs = dict.fromkeys(("requests", "input_tokens", "output_tokens"), 0.0)
        ops = [
            (n, op)
            for n, op in self._ops(_scope(model), self.limits_for(model), costs)
            if op.capacity < _UNLIMITED
        ]
        levels = self.backend.levels(self.clock.now(), [op for _, op in ops])
        return {name: level for (name, _), level in zip(ops, levels, strict=True)}


def _scope(model: str) -> str:
    if model == BATCH_SCOPE:
        return model
    info = lookup_model(model)
    return info.name if info is not None else model


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _header_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
            if value > 0 and math.isfinite(value):
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is not None:
        try:
            value = float(raw)
            if value > 0 and math.isfinite(value):
                return value
        except ValueError:
            pass
    return None
