"""Budgets: caps on what calls may spend, per namespace or globally, per day, month or total.

Each call reserves its worst-case cost before it is sent, atomically with the check, and
settles with what it really cost once the answer is in::

    reservation = budgets.reserve(namespace, worst_case_usd(...))   # BudgetExceededError?
    try:
        response = send(...)
    except Exception:
        budgets.release(reservation)        # nothing was billed (or nothing we know of)
        raise
    budgets.settle(reservation, price_usage(model, response["usage"]).billed_usd)

A *hard* budget refuses a call whose worst case does not fit: ``spent + reserved + worst case
<= cap`` always holds when the call is admitted, so however many calls run at once (in one
process or, with :class:`RedisBudgetBackend`, in many), spend never exceeds the cap unless a
call costs more than its own worst case. A *soft* budget admits the call and warns, through the
``haikucache`` logger and an optional callback, once per period when the cap is crossed.

Reservations expire (``reservation_ttl``) so that a process that died mid-call does not hold
its reservation forever; a settle after expiry still records the spend.

Periods are UTC: ``day`` (``2025-11-20``), ``month`` (``2025-11``) or ``total``. Amounts are
kept as integer nano-dollars, so sums are exact and comparisons never drift.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ._catalog import known_models, lookup_model
from ._clock import Clock, SystemClock
from ._exceptions import BudgetExceededError, ConfigurationError, UsageError
from ._ledger import TokenCounts, price_usage
from ._redis_link import RedisScripted

if TYPE_CHECKING:
    from ._planner import Plan

__all__ = [
    "Account",
    "Budget",
    "BudgetBackend",
    "BudgetEvent",
    "BudgetStatus",
    "Budgets",
    "MemoryBudgetBackend",
    "Period",
    "RedisBudgetBackend",
    "Reservation",
    "Reserved",
    "request_worst_case_usd",
    "worst_case_for_plan",
    "worst_case_usd",
]

logger = logging.getLogger("haikucache")

Period = Literal["day", "month", "total"]
_PERIODS = ("day", "month", "total")
_NANO = 1_000_000_000
# Period accounts are kept a while after their period ends, for reports; then Redis drops them.
_KEEP_SECONDS = {"day": 40 * 86_400, "month": 400 * 86_400, "total": 0}


# --------------------------------------------------------------------------- worst case


def _priced_model(model: str) -> str:
    # An unknown model (a gateway's own name) is priced as the dearest model known: a budget
    # must not let a call through for free because its price is missing.
    if lookup_model(model) is not None:
        return model
    return max(known_models(), key=lambda m: m.output_usd_per_mtok).name


def worst_case_usd(
    model: str,
    *,
    input_tokens: int,
    max_tokens: int,
    cache_write_5m_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    batch: bool = False,
) -> float:
    """The most a call can cost: every input token billed, nothing read from cache, all the
    tokens up to the breakpoints written at their TTL's premium, and ``max_tokens`` of output.

    Prices come from the catalogue through :func:`~haikucache.price_usage`; an unknown model
    is priced as the dearest known one.

    Args:
        model: the model id.
        input_tokens: estimated input tokens of the whole request (writes included).
        max_tokens: the request's ``max_tokens`` (thinking is part of it).
        cache_write_5m_tokens: of ``input_tokens``, how many may be written with a 5 m TTL.
        cache_write_1h_tokens: of ``input_tokens``, how many may be written with a 1 h TTL.
        batch: the call runs in a Message Batch (50 % off).
    """
    counts = (input_tokens, max_tokens, cache_write_5m_tokens, cache_write_1h_tokens)
    if any(not isinstance(n, int) or n < 0 for n in counts):
        raise UsageError("token counts must be ints >= 0")
    written = cache_write_5m_tokens + cache_write_1h_tokens
    tokens = TokenCounts(
        input=max(0, input_tokens - written),
        cache_write_5m=cache_write_5m_tokens,
        cache_write_1h=cache_write_1h_tokens,
        output=max_tokens,
    )
    return price_usage(_priced_model(model), tokens, batch=batch).billed_usd


def worst_case_for_plan(
    plan: Plan, max_tokens: int, *, margin: float = 1.3, batch: bool = False
) -> float:
    """:func:`worst_case_usd` of a planned request, from the planner's token estimates.

    With breakpoints, the API writes the tokens up to the last 1-hour breakpoint at 2× and
    those up to the last breakpoint at 1.25× when nothing is cached yet (reference §1.7).

    Args:
        plan: the :class:`~haikucache._planner.Plan` of the request about to be sent.
        max_tokens: the request's ``max_tokens``.
        margin: the token estimates are off by up to ±30 %; they are multiplied by this.
        batch: the call runs in a Message Batch.
    """
    if margin < 1:
        raise UsageError("margin must be >= 1")
    total = plan.estimated_tokens
    last = max((b.prefix_tokens for b in plan.breakpoints), default=0)
    last_1h = max((b.prefix_tokens for b in plan.breakpoints if b.ttl == "1h"), default=0)
    last = min(last, total)
    last_1h = min(last_1h, last)
    return worst_case_usd(
        plan.model,
        input_tokens=math.ceil(total * margin),
        max_tokens=max_tokens,
        cache_write_1h_tokens=math.ceil(last_1h * margin),
        cache_write_5m_tokens=math.ceil((last - last_1h) * margin),
        batch=batch,
    )


def request_worst_case_usd(
    body: Mapping[str, Any], *, input_tokens: int, batch: bool = False
) -> float:
    """:func:`worst_case_usd` of a Messages request when only its input estimate is known.

    Without a plan, every input token may be written: at 2× if any marker asks for a 1-hour
    TTL, at 1.25× if any marker (or the top-level ``cache_control``) exists, else at 1×.

    Args:
        body: the request (``model`` and ``max_tokens`` are read from it).
        input_tokens: estimated input tokens (with a safety margin: this is an upper bound).
        batch: the call runs in a Message Batch.
    """
    model = body.get("model")
    max_tokens = body.get("max_tokens")
    if not isinstance(model, str) or not isinstance(max_tokens, int):
        raise UsageError("the request needs a string 'model' and an int 'max_tokens'")
    ttls = _marker_ttls(body)
    w1 = input_tokens if "1h" in ttls else 0
    w5 = input_tokens if ttls and not w1 else 0
    return worst_case_usd(
        model,
        input_tokens=input_tokens,
        max_tokens=max_tokens,
        cache_write_5m_tokens=w5,
        cache_write_1h_tokens=w1,
        batch=batch,
    )


def _marker_ttls(value: Any) -> set[str]:
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            marker = item.get("cache_control")
            if isinstance(marker, Mapping):
                ttl = marker.get("ttl")
                found.add(ttl if isinstance(ttl, str) else "5m")
            stack.extend(v for k, v in item.items() if k != "cache_control")
        elif isinstance(item, list):
            stack.extend(item)
    return found


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Budget:
    """One cap.

    Attributes:
        cap_usd: the most the calls it covers may spend in one period.
        period: ``"day"`` or ``"month"`` (UTC), or ``"total"`` (never resets).
        namespace: ``None`` covers every call (a global budget); ``"*"`` gives each
            namespace a cap of its own; any other value covers that namespace only.
        hard: refuse calls that would exceed it (``True``), or only warn (``False``).
        name: for reports and errors; default ``"<namespace or global>/<period>"``.
    """

    cap_usd: float
    period: Period = "total"
    namespace: str | None = None
    hard: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.cap_usd, (int, float)) or not self.cap_usd >= 0:
            raise ConfigurationError("Budget.cap_usd must be a number >= 0")
        if math.isinf(self.cap_usd):
            raise ConfigurationError("Budget.cap_usd must be finite (leave the budget out)")
        if self.period not in _PERIODS:
            raise ConfigurationError(f"Budget.period must be one of {_PERIODS}")
        if "|" in self.name:
            raise ConfigurationError("Budget.name must not contain '|'")
        if not self.name:
            scope = "global" if self.namespace is None else f"namespace={self.namespace}"
            object.__setattr__(self, "name", f"{scope}/{self.period}")

    def covers(self, namespace: str) -> bool:
        """Whether a call in ``namespace`` counts toward this budget."""
        return self.namespace in (None, "*", namespace)


@dataclass(frozen=True)
class BudgetStatus:
    """Where one budget stands in its current period (one namespace's, for ``"*"``).

    Attributes:
        budget: the budget's name.
        namespace: the namespace it is for (``None`` for a global budget).
        period: ``"day"``, ``"month"`` or ``"total"``.
        period_key: the current period, e.g. ``"2025-11-20"``.
        cap_usd: its cap.
        spent_usd: settled spend in the period.
        reserved_usd: worst-case cost of the calls in flight.
        hard: whether it refuses calls.
    """

    budget: str
    namespace: str | None
    period: str
    period_key: str
    cap_usd: float
    spent_usd: float
    reserved_usd: float
    hard: bool

    @property
    def remaining_usd(self) -> float:
        """What calls may still reserve (never below 0)."""
        return max(0.0, self.cap_usd - self.spent_usd - self.reserved_usd)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "namespace": self.namespace,
            "period": self.period,
            "period_key": self.period_key,
            "cap_usd": self.cap_usd,
            "spent_usd": self.spent_usd,
            "reserved_usd": self.reserved_usd,
            "remaining_usd": self.remaining_usd,
            "hard": self.hard,
        }


@dataclass(frozen=True)
class BudgetEvent:
    """A soft budget was crossed; handed to the ``on_exceeded`` callback.

    Attributes:
        status: the budget after the reservation that crossed it.
        namespace: the namespace of that call.
        requested_usd: the call's worst-case cost.
    """

    status: BudgetStatus
    namespace: str
    requested_usd: float


@dataclass
class Reservation:
    """A call's reserved worst case; settle or release it exactly once.

    Attributes:
        id: unique id.
        namespace: the call's namespace.
        amount_usd: what was reserved.
        accounts: the budget periods it was reserved in.
        expires_at: when the reservation lapses if never settled (on the budgets' clock).
        done: settled or released already.
    """

    id: str
    namespace: str
    amount_usd: float
    accounts: tuple[str, ...]
    expires_at: float
    done: bool = field(default=False, repr=False)


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Account:
    """One budget period as a backend sees it.

    Attributes:
        key: unique per budget, namespace and period (``"<budget>|<period key>"``).
        cap: the hard cap in nano-dollars, or ``None`` (a soft budget: never refused).
        keep_seconds: how long the backend may keep it after it was last written
            (0: forever).
    """

    key: str
    cap: int | None
    keep_seconds: int = 0


@dataclass(frozen=True)
class Reserved:
    """A backend's answer to a reserve: granted or not, and each account's state.

    Attributes:
        granted: the reservation was made in every account.
        refused: the index of the account that refused it, or -1.
        state: per account, ``(spent, reserved)`` in nano-dollars (after the reservation
            when granted).
    """

    granted: bool
    refused: int
    state: list[tuple[int, int]]


class BudgetBackend(Protocol):
    """Where spend and reservations live. Every method is atomic over its accounts."""

    def reserve(
        self, now: float, rid: str, amount: int, expires_at: float, accounts: Sequence[Account]
    ) -> Reserved:
        """Drop expired reservations; reserve ``amount`` in every account if every hard one
        has room (``spent + reserved + amount <= cap``), else in none."""
        ...

    def settle(self, now: float, rid: str, actual: int, accounts: Sequence[Account]) -> None:
        """Drop the reservation and add ``actual`` to each account's spend (even if the
        reservation had expired)."""
        ...

    def release(self, now: float, rid: str, accounts: Sequence[Account]) -> None:
        """Drop the reservation; spend nothing."""
        ...

    def state(self, now: float, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        """Each account's ``(spent, reserved)`` after dropping expired reservations."""
        ...


@dataclass
class _Ledger:
    spent: int = 0
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)

    def purge(self, now: float) -> None:
        for rid in [r for r, (_, exp) in self.reservations.items() if exp <= now]:
            del self.reservations[rid]

    @property
    def reserved(self) -> int:
        return sum(amount for amount, _ in self.reservations.values())


class MemoryBudgetBackend:
    """Budgets in this process's memory; thread-safe (one lock, held for microseconds, so
    async code may call it directly)."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Ledger] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryBudgetBackend()"

    def _get(self, key: str, now: float) -> _Ledger:
        ledger = self._accounts.setdefault(key, _Ledger())
        ledger.purge(now)
        return ledger

    def reserve(
        self, now: float, rid: str, amount: int, expires_at: float, accounts: Sequence[Account]
    ) -> Reserved:
        with self._lock:
            ledgers = [self._get(a.key, now) for a in accounts]
            for i, (account, ledger) in enumerate(zip(accounts, ledgers, strict=True)):
                if (
                    account.cap is not None
                    and ledger.spent + ledger.reserved + amount > account.cap
                ):
                    return Reserved(False, i, [(lg.spent, lg.reserved) for lg in ledgers])
            for ledger in ledgers:
                ledger.reservations[rid] = (amount, expires_at)
            return Reserved(True, -1, [(lg.spent, lg.reserved) for lg in ledgers])

    def settle(self, now: float, rid: str, actual: int, accounts: Sequence[Account]) -> None:
        with self._lock:
            for account in accounts:
                ledger = self._get(account.key, now)
                ledger.reservations.pop(rid, None)
                ledger.spent += actual

    def release(self, now: float, rid: str, accounts: Sequence[Account]) -> None:
        with self._lock:
            for account in accounts:
                self._get(account.key, now).reservations.pop(rid, None)

    def state(self, now: float, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        with self._lock:
            out = []
            for account in accounts:
                ledger = self._get(account.key, now)
                out.append((ledger.spent, ledger.reserved))
            return out

    async def areserve(
        self, now: float, rid: str, amount: int, expires_at: float, accounts: Sequence[Account]
    ) -> Reserved:
        return self.reserve(now, rid, amount, expires_at, accounts)

    async def asettle(self, now: float, rid: str, actual: int, accounts: Sequence[Account]) -> None:
        self.settle(now, rid, actual, accounts)

    async def arelease(self, now: float, rid: str, accounts: Sequence[Account]) -> None:
        self.release(now, rid, accounts)

    async def astate(self, now: float, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        return self.state(now, accounts)


# Each account is three keys: a hash (s: spent, r: reserved total), a sorted set of
# reservation ids scored by expiry, and a hash of their amounts. ARGV[1] = now.
_LUA_COMMON = """
local function purge(h, z, a, now)
  while true do
    local dead = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 500)
    if #dead == 0 then return end
    local amounts = redis.call('HMGET', a, unpack(dead))
    local total = 0
    for _, v in ipairs(amounts) do total = total + (tonumber(v) or 0) end
    redis.call('HINCRBY', h, 'r', -total)
    redis.call('ZREM', z, unpack(dead))
    redis.call('HDEL', a, unpack(dead))
  end
end
local function drop(h, z, a, rid)
  local amount = tonumber(redis.call('HGET', a, rid))
  if amount then
    redis.call('HINCRBY', h, 'r', -amount)
    redis.call('HDEL', a, rid)
    redis.call('ZREM', z, rid)
  end
end
local function keep(i, seconds)
  for k = 3 * i - 2, 3 * i do
    if seconds > 0 then redis.call('EXPIRE', KEYS[k], seconds) end
  end
end
local function spent_reserved(h)
  local v = redis.call('HMGET', h, 's', 'r')
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0
end
"""

# ARGV: now, rid, amount, expires_at, then per account: cap (-1: none), keep seconds.
# Returns {granted, refused index (1-based, 0 none), spent1, reserved1, spent2, ...}.
_LUA_RESERVE = (
    _LUA_COMMON
    + """
local now, rid, amount, expires = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n = #KEYS / 3
local state = {}
local refused = 0
for i = 1, n do
  local h, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  purge(h, z, a, now)
  local spent, reserved = spent_reserved(h)
  state[2 * i - 1], state[2 * i] = spent, reserved
  local cap = tonumber(ARGV[3 + 2 * i])
  if refused == 0 and cap >= 0 and spent + reserved + amount > cap then refused = i end
end
if refused > 0 then
  local out = {0, refused}
  for _, v in ipairs(state) do out[#out + 1] = v end
  return out
end
local out = {1, 0}
for i = 1, n do
  local h, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('HINCRBY', h, 'r', amount)
  redis.call('ZADD', z, expires, rid)
  redis.call('HSET', a, rid, amount)
  keep(i, tonumber(ARGV[4 + 2 * i]))
  out[#out + 1] = state[2 * i - 1]
  out[#out + 1] = state[2 * i] + amount
end
return out
"""
)

# ARGV: now, rid, actual spend (-1: release), then per account: keep seconds.
_LUA_SETTLE = (
    _LUA_COMMON
    + """
local now, rid, actual = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS / 3 do
  local h, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  purge(h, z, a, now)
  drop(h, z, a, rid)
  if actual >= 0 then redis.call('HINCRBY', h, 's', actual) end
  keep(i, tonumber(ARGV[3 + i]))
end
return 1
"""
)

# ARGV: now. Returns {spent1, reserved1, spent2, ...}.
_LUA_STATE = (
    _LUA_COMMON
    + """
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 3 do
  local h, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  purge(h, z, a, now)
  local spent, reserved = spent_reserved(h)
  out[#out + 1] = spent
  out[#out + 1] = reserved
end
return out
"""
)


class RedisBudgetBackend(RedisScripted):
    """Budgets in Redis, shared by every process and machine that points at it.

    Every reserve, settle and release is one Lua script over all the accounts of the call, so
    a check and its reservation are atomic: many processes hammering one budget never reserve
    past its cap. Keys: ``<prefix>bg:{b}:<account>`` (a hash of spent and reserved totals)
    with ``:z`` (reservation ids by expiry) and ``:a`` (their amounts); the shared ``{b}``
    hash tag keeps them in one Redis Cluster slot. Day and month accounts expire some time
    after their period; reservations lapse at their own expiry.

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
        "reserve": _LUA_RESERVE,
        "settle": _LUA_SETTLE,
        "state": _LUA_STATE,
    }
    FEATURE = "The Redis budget backend"

    def _keys(self, accounts: Sequence[Account]) -> list[str]:
        keys: list[str] = []
        for account in accounts:
            base = f"{self.prefix}bg:{{b}}:{account.key}"
            keys += [base, base + ":z", base + ":a"]
        return keys

    def _reserve_args(
        self, now: float, rid: str, amount: int, expires_at: float, accounts: Sequence[Account]
    ) -> list[Any]:
        args: list[Any] = [repr(now), rid, amount, repr(expires_at)]
        for account in accounts:
            args += [-1 if account.cap is None else account.cap, account.keep_seconds]
        return args

    @staticmethod
    def _reserved(raw: Sequence[Any]) -> Reserved:
        values = [int(v) for v in raw]
        pairs = [(values[i], values[i + 1]) for i in range(2, len(values), 2)]
        return Reserved(values[0] == 1, values[1] - 1, pairs)

    @staticmethod
    def _pairs(raw: Sequence[Any]) -> list[tuple[int, int]]:
        values = [int(v) for v in raw]
        return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]

    def reserve(
        self, now: float, rid: str, amount: int, expires_at: float, accounts: Sequence[Account]
    ) -> Reserved:
        args = self._reserve_args(now, rid, amount, expires_at, accounts)
        return self._reserved(self._link.run("reserve", self._keys(accounts), args))

    async def areserve(
        self, now: float, rid: str, amount: int, expires_at: float, accounts: Sequence[Account]
    ) -> Reserved:
        args = self._reserve_args(now, rid, amount, expires_at, accounts)
        return self._reserved(await self._link.arun("reserve", self._keys(accounts), args))

    def _settle_args(
        self, now: float, rid: str, actual: int, accounts: Sequence[Account]
    ) -> list[Any]:
        return [repr(now), rid, actual, *(a.keep_seconds for a in accounts)]

    def settle(self, now: float, rid: str, actual: int, accounts: Sequence[Account]) -> None:
        self._link.run(
            "settle", self._keys(accounts), self._settle_args(now, rid, actual, accounts)
        )

    async def asettle(self, now: float, rid: str, actual: int, accounts: Sequence[Account]) -> None:
        args = self._settle_args(now, rid, actual, accounts)
        await self._link.arun("settle", self._keys(accounts), args)

    def release(self, now: float, rid: str, accounts: Sequence[Account]) -> None:
        self._link.run("settle", self._keys(accounts), self._settle_args(now, rid, -1, accounts))

    async def arelease(self, now: float, rid: str, accounts: Sequence[Account]) -> None:
        args = self._settle_args(now, rid, -1, accounts)
        await self._link.arun("settle", self._keys(accounts), args)

    def state(self, now: float, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        return self._pairs(self._link.run("state", self._keys(accounts), [repr(now)]))

    async def astate(self, now: float, accounts: Sequence[Account]) -> list[tuple[int, int]]:
        return self._pairs(await self._link.arun("state", self._keys(accounts), [repr(now)]))


# --------------------------------------------------------------------------- budgets


class Budgets:
    """A set of budgets, checked together before every call.

    Args:
        budgets: the caps; a call counts toward every budget that covers its namespace.
        backend: where spend lives; default :class:`MemoryBudgetBackend`.
        clock: the time periods and reservation expiry are read on.
        on_exceeded: called (with a :class:`BudgetEvent`) when a soft budget is crossed,
            once per budget, namespace and period in this process; it must not raise.
        reservation_ttl: seconds after which an unsettled reservation lapses (a process
            died mid-call); longer than the slowest call (a 64K-token stream takes minutes).

    Raises:
        ConfigurationError: two budgets share a name, or the TTL is not positive.
    """

    def __init__(
        self,
        budgets: Sequence[Budget],
        *,
        backend: BudgetBackend | None = None,
        clock: Clock | None = None,
        on_exceeded: Callable[[BudgetEvent], None] | None = None,
        reservation_ttl: float = 900.0,
    ) -> None:
        self.budgets = tuple(budgets)
        names = [b.name for b in self.budgets]
        if len(names) != len(set(names)):
            raise ConfigurationError(f"budget names must be unique: {names}")
        if not reservation_ttl > 0:
            raise ConfigurationError("reservation_ttl must be > 0")
        self.backend: BudgetBackend = backend if backend is not None else MemoryBudgetBackend()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_exceeded = on_exceeded
        self.reservation_ttl = float(reservation_ttl)
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Budgets({len(self.budgets)} budgets, backend={self.backend!r})"

    # -- accounts

    def _accounts(self, namespace: str, now: float) -> list[tuple[Budget, str, Account]]:
        out = []
        for budget in self.budgets:
            if not budget.covers(namespace):
                continue
            period_key = _period_key(budget.period, now)
            owner = namespace if budget.namespace == "*" else budget.namespace
            key = f"{budget.name}|{period_key}"
            if budget.namespace == "*":
                key = f"{budget.name}|{namespace}|{period_key}"
            cap = _to_nano_down(budget.cap_usd) if budget.hard else None
            account = Account(key, cap, _KEEP_SECONDS[budget.period])
            out.append((budget, owner or "", account))
        return out

    def _status(
        self,
        budget: Budget,
        namespace: str | None,
        account: Account,
        now: float,
        state: tuple[int, int],
    ) -> BudgetStatus:
        return BudgetStatus(
            budget=budget.name,
            namespace=namespace,
            period=budget.period,
            period_key=_period_key(budget.period, now),
            cap_usd=budget.cap_usd,
            spent_usd=state[0] / _NANO,
            reserved_usd=state[1] / _NANO,
            hard=budget.hard,
        )

    # -- reserve

    def _begin(
        self, namespace: str, worst_case_usd: float
    ) -> tuple[float, int, str, list[tuple[Budget, str, Account]]]:
        if not isinstance(namespace, str):
            raise UsageError("namespace must be a string")
        if (
            not isinstance(worst_case_usd, (int, float))
            or not worst_case_usd >= 0
            or math.isinf(worst_case_usd)
        ):
            raise UsageError(f"worst_case_usd must be a finite number >= 0, not {worst_case_usd!r}")
        now = self.clock.now()
        return now, _to_nano_up(worst_case_usd), uuid.uuid4().hex, self._accounts(namespace, now)

    def _finish(
        self,
        namespace: str,
        worst_case_usd: float,
        now: float,
        rid: str,
        entries: list[tuple[Budget, str, Account]],
        result: Reserved,
    ) -> Reservation:
        if not result.granted:
            budget, owner, account = entries[result.refused]
            status = self._status(budget, owner or None, account, now, result.state[result.refused])
            raise BudgetExceededError(
                f"budget {budget.name!r} ({status.period_key}) refuses a call of up to "
                f"${worst_case_usd:.6f}: spent ${status.spent_usd:.6f} + in flight "
                f"${status.reserved_usd:.6f} of a ${budget.cap_usd:.6f} cap",
                namespace=namespace,
                budget=budget.name,
                period=status.period_key,
                cap_usd=budget.cap_usd,
                spent_usd=status.spent_usd,
                reserved_usd=status.reserved_usd,
                requested_usd=worst_case_usd,
            )
        for (budget, owner, account), state in zip(entries, result.state, strict=True):
            if budget.hard or state[0] + state[1] <= _to_nano_down(budget.cap_usd):
                continue
            self._warn(budget, owner, account, now, state, namespace, worst_case_usd)
        return Reservation(
            id=rid,
            namespace=namespace,
            amount_usd=worst_case_usd,
            accounts=tuple(a.key for _, _, a in entries),
            expires_at=now + self.reservation_ttl,
        )

    def _warn(
        self,
        budget: Budget,
        owner: str,
        account: Account,
        now: float,
        state: tuple[int, int],
        namespace: str,
        requested: float,
    ) -> None:
        with self._warned_lock:
            if account.key in self._warned:
                return
            self._warned.add(account.key)
        status = self._status(budget, owner or None, account, now, state)
        logger.warning(
            "haikucache: soft budget %r (%s) crossed: spent $%.6f + in flight $%.6f of a $%.6f cap",
            budget.name,
            status.period_key,
            status.spent_usd,
            status.reserved_usd,
            budget.cap_usd,
        )
        if self.on_exceeded is not None:
            try:
                self.on_exceeded(BudgetEvent(status, namespace, requested))
            except Exception:
                logger.exception("haikucache: the on_exceeded budget callback failed")

    def reserve(self, namespace: str, worst_case_usd: float) -> Reservation:
        """Reserve a call's worst-case cost in every budget that covers ``namespace``.

        Args:
            namespace: the call's namespace.
            worst_case_usd: the most it can cost (:func:`worst_case_usd`).

        Returns:
            The :class:`Reservation`; pass it to :meth:`settle` or :meth:`release`.

        Raises:
            BudgetExceededError: a hard budget has no room for it; nothing was reserved.
            ControlStoreError: the backend failed (nothing can be promised: fail closed).
        """
        now, amount, rid, entries = self._begin(namespace, worst_case_usd)
        expires = now + self.reservation_ttl
        result = self.backend.reserve(now, rid, amount, expires, [a for _, _, a in entries])
        return self._finish(namespace, worst_case_usd, now, rid, entries, result)

    async def areserve(self, namespace: str, worst_case_usd: float) -> Reservation:
        """Coroutine twin of :meth:`reserve`."""
        now, amount, rid, entries = self._begin(namespace, worst_case_usd)
        expires = now + self.reservation_ttl
        accounts = [a for _, _, a in entries]
        areserve = getattr(self.backend, "areserve", None)
        if areserve is not None:
            result = await areserve(now, rid, amount, expires, accounts)
        else:
            result = self.backend.reserve(now, rid, amount, expires, accounts)
        return self._finish(namespace, worst_case_usd, now, rid, entries, result)

    # -- settle / release

    def _accounts_of(self, reservation: Reservation) -> list[Account] | None:
        if reservation.done:
            return None
        reservation.done = True
        return [Account(key, None, _keep_for(key, self.budgets)) for key in reservation.accounts]

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Record what the call really cost and free its reservation.

        Args:
            reservation: from :meth:`reserve`; a second settle or release is a no-op.
            actual_usd: the billed cost (``price_usage(...).billed_usd``); recorded in the
                periods the reservation was made in, even if it has lapsed.
        """
        if not isinstance(actual_usd, (int, float)) or not actual_usd >= 0:
            raise UsageError(f"actual_usd must be a number >= 0, not {actual_usd!r}")
        accounts = self._accounts_of(reservation)
        if accounts is not None:
            self.backend.settle(self.clock.now(), reservation.id, _to_nano(actual_usd), accounts)

    async def asettle(self, reservation: Reservation, actual_usd: float) -> None:
        """Coroutine twin of :meth:`settle`."""
        if not isinstance(actual_usd, (int, float)) or not actual_usd >= 0:
            raise UsageError(f"actual_usd must be a number >= 0, not {actual_usd!r}")
        accounts = self._accounts_of(reservation)
        if accounts is None:
            return
        asettle = getattr(self.backend, "asettle", None)
        args = (self.clock.now(), reservation.id, _to_nano(actual_usd), accounts)
        if asettle is not None:
            await asettle(*args)
        else:
            self.backend.settle(*args)

    def release(self, reservation: Reservation) -> None:
        """Free a reservation without spending (the call failed before it was billed)."""
        accounts = self._accounts_of(reservation)
        if accounts is not None:
            self.backend.release(self.clock.now(), reservation.id, accounts)

    async def arelease(self, reservation: Reservation) -> None:
        """Coroutine twin of :meth:`release`."""
        accounts = self._accounts_of(reservation)
        if accounts is None:
            return
        arelease = getattr(self.backend, "arelease", None)
        if arelease is not None:
            await arelease(self.clock.now(), reservation.id, accounts)
        else:
            self.backend.release(self.clock.now(), reservation.id, accounts)

    # -- status

    def _status_entries(
        self, namespace: str | None, now: float
    ) -> list[tuple[Budget, str, Account]]:
        if namespace is not None:
            return self._accounts(namespace, now)
        # Without a namespace: the budgets that do not depend on one ("*" needs a namespace).
        out: list[tuple[Budget, str, Account]] = []
        for budget in self.budgets:
            if budget.namespace == "*":
                continue
            out.extend(e for e in self._accounts(budget.namespace or "", now) if e[0] is budget)
        return out

    def status(self, namespace: str | None = None) -> list[BudgetStatus]:
        """Where each budget stands in its current period.

        Args:
            namespace: the budgets covering this namespace (its own share of a ``"*"``
                budget included); ``None``: every budget that is not per-namespace.
        """
        now = self.clock.now()
        entries = self._status_entries(namespace, now)
        states = self.backend.state(now, [a for _, _, a in entries])
        return [
            self._status(b, owner or None, a, now, s)
            for (b, owner, a), s in zip(entries, states, strict=True)
        ]

    async def astatus(self, namespace: str | None = None) -> list[BudgetStatus]:
        """Coroutine twin of :meth:`status`."""
        now = self.clock.now()
        entries = self._status_entries(namespace, now)
        accounts = [a for _, _, a in entries]
        astate = getattr(self.backend, "astate", None)
        states = (
            await astate(now, accounts) if astate is not None else self.backend.state(now, accounts)
        )
        return [
            self._status(b, owner or None, a, now, s)
            for (b, owner, a), s in zip(entries, states, strict=True)
        ]


def _period_key(period: str, now: float) -> str:
    if period == "total":
        return "total"
    day = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).date()
    return day.isoformat() if period == "day" else day.strftime("%Y-%m")


def _keep_for(key: str, budgets: Sequence[Budget]) -> int:
    name = key.split("|", 1)[0]
    for budget in budgets:
        if budget.name == name:
            return _KEEP_SECONDS[budget.period]
    return 0


def _to_nano(usd: float) -> int:
    return round(usd * _NANO)


def _to_nano_up(usd: float) -> int:
    # A reservation rounds up, a cap down: the cap is never exceeded by rounding.
    return math.ceil(usd * _NANO - 1e-6)


def _to_nano_down(usd: float) -> int:
    return math.floor(usd * _NANO + 1e-6)
