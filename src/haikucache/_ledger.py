"""The cost ledger: every ``usage`` turned into dollars, with the counterfactual and the saving.

For each call the ledger records what was billed, what the same call would have cost without
haikucache (the *baseline*: realtime, no prompt caching, no response cache) and the saving split
by cause:

``response_cache``       a local hit: the whole baseline of the answer that was replayed
``prompt_cache_read``    cache reads billed at 0.1× instead of 1× base input
``cache_write_premium``  negative: 5-minute writes cost 1.25×, 1-hour writes 2×
``batch_discount``       the Message Batches 50 % (it stacks on the cache multipliers)

so that ``baseline - billed == sum(savings)`` for every entry.

Totals are kept per (namespace, model, UTC day). :class:`MemoryLedger` keeps them in memory;
:class:`DiskLedger` persists them with ``diskcache`` (safe across processes, private to the
user) so ``haikucache report`` sees every run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from ._catalog import (
    BATCH_DISCOUNT,
    CACHE_READ_MULTIPLIER,
    CACHE_WRITE_1H_MULTIPLIER,
    CACHE_WRITE_5M_MULTIPLIER,
    lookup_model,
)
from ._clock import Clock, SystemClock
from ._exceptions import CacheStoreError, ConfigurationError
from ._paths import PickledDataError, UnreadableKey, default_cache_dir, open_cache

__all__ = [
    "SAVING_CAUSES",
    "Cost",
    "DiskLedger",
    "Ledger",
    "LedgerEntry",
    "LedgerTotals",
    "MemoryLedger",
    "TokenCounts",
    "default_cache_dir",
    "price_usage",
]

logger = logging.getLogger("haikucache")

SAVING_CAUSES = ("response_cache", "prompt_cache_read", "cache_write_premium", "batch_discount")
_PER_TOKEN = 1e-6


@dataclass(frozen=True)
class TokenCounts:
    """The five kinds of token the API bills."""

    input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output: int = 0

    @classmethod
    def from_usage(cls, usage: Mapping[str, Any] | None) -> TokenCounts:
        """Read a ``usage`` object as the API sends it.

        ``cache_creation`` splits writes by TTL; when it is missing (older responses), all of
        ``cache_creation_input_tokens`` counts as 5-minute writes.
        """
        if not usage:
            return cls()

        def num(mapping: Mapping[str, Any], name: str) -> int:
            value = mapping.get(name)
            return int(value) if isinstance(value, (int, float)) else 0

        written = num(usage, "cache_creation_input_tokens")
        split = usage.get("cache_creation")
        if isinstance(split, Mapping):
            w5 = num(split, "ephemeral_5m_input_tokens")
            w1 = num(split, "ephemeral_1h_input_tokens")
            if w5 + w1 != written:  # trust the total; attribute any gap to 5m
                w5 = max(written - w1, 0)
        else:
            w5, w1 = written, 0
        return cls(
            input=num(usage, "input_tokens"),
            cache_write_5m=w5,
            cache_write_1h=w1,
            cache_read=num(usage, "cache_read_input_tokens"),
            output=num(usage, "output_tokens"),
        )

    @property
    def total_input(self) -> int:
        """Every input token, however billed."""
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Cost:
    """Dollars for one call: billed, baseline and the saving by cause."""

    billed_usd: float
    baseline_usd: float
    savings: dict[str, float]
    priced: bool

    @property
    def saved_usd(self) -> float:
        return self.baseline_usd - self.billed_usd


def price_usage(
    model: str,
    usage: Mapping[str, Any] | TokenCounts | None,
    *,
    batch: bool = False,
    response_cache_hit: bool = False,
) -> Cost:
    """Turn a ``usage`` into dollars.

    Args:
        model: the model id (aliases, dated, Bedrock and Vertex ids are recognised).
        usage: the API's ``usage`` object, or :class:`TokenCounts`.
        batch: the call ran in a Message Batch (50 % off everything, stacking on cache prices).
        response_cache_hit: the answer was replayed locally: nothing billed, and the saving is
            the baseline of the original answer.

    An unknown model costs 0 with ``priced=False`` (gateways use their own names; the caller
    logs a warning).
    """
    tokens = usage if isinstance(usage, TokenCounts) else TokenCounts.from_usage(usage)
    savings = dict.fromkeys(SAVING_CAUSES, 0.0)
    info = lookup_model(model)
    if info is None:
        return Cost(0.0, 0.0, savings, priced=False)
    base = info.input_usd_per_mtok * _PER_TOKEN
    out = info.output_usd_per_mtok * _PER_TOKEN
    baseline = tokens.total_input * base + tokens.output * out
    if response_cache_hit:
        savings["response_cache"] = baseline
        return Cost(0.0, baseline, savings, priced=True)
    with_caching = (
        tokens.input * base
        + tokens.cache_write_5m * base * CACHE_WRITE_5M_MULTIPLIER
        + tokens.cache_write_1h * base * CACHE_WRITE_1H_MULTIPLIER
        + tokens.cache_read * base * CACHE_READ_MULTIPLIER
        + tokens.output * out
    )
    savings["prompt_cache_read"] = tokens.cache_read * base * (1 - CACHE_READ_MULTIPLIER)
    premium = tokens.cache_write_5m * base * (CACHE_WRITE_5M_MULTIPLIER - 1) + (
        tokens.cache_write_1h * base * (CACHE_WRITE_1H_MULTIPLIER - 1)
    )
    savings["cache_write_premium"] = -premium if premium else 0.0
    billed = with_caching
    if batch:
        billed = with_caching * BATCH_DISCOUNT
        savings["batch_discount"] = with_caching - billed
    return Cost(billed, baseline, savings, priced=True)


@dataclass(frozen=True)
class LedgerEntry:
    """One call as the ledger saw it."""

    time: float
    namespace: str
    model: str
    cache: str  # "miss" | "hit" | "semantic" | "bypass"
    tokens: TokenCounts
    cost: Cost
    batch: bool = False

    @property
    def day(self) -> str:
        return _dt.datetime.fromtimestamp(self.time, _dt.timezone.utc).date().isoformat()


@dataclass
class LedgerTotals:
    """Sums over many calls (one (namespace, model, day) bucket, or any merge of them)."""

    namespace: str = "*"
    model: str = "*"
    day: str = "*"
    calls: int = 0
    response_cache_hits: int = 0
    batch_calls: int = 0
    unpriced_calls: int = 0
    input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    billed_usd: float = 0.0
    baseline_usd: float = 0.0
    savings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SAVING_CAUSES, 0.0))

    @property
    def saved_usd(self) -> float:
        return self.baseline_usd - self.billed_usd

    @property
    def saved_fraction(self) -> float:
        """Share of the baseline that was not billed (0 when nothing was spent)."""
        return self.saved_usd / self.baseline_usd if self.baseline_usd else 0.0

    def add(self, entry: LedgerEntry) -> None:
        self.calls += 1
        self.response_cache_hits += entry.cache in ("hit", "semantic")
        self.batch_calls += entry.batch
        self.unpriced_calls += not entry.cost.priced
        t = entry.tokens
        self.input_tokens += t.input
        self.cache_write_5m_tokens += t.cache_write_5m
        self.cache_write_1h_tokens += t.cache_write_1h
        self.cache_read_tokens += t.cache_read
        self.output_tokens += t.output
        self.billed_usd += entry.cost.billed_usd
        self.baseline_usd += entry.cost.baseline_usd
        for cause, usd in entry.cost.savings.items():
            self.savings[cause] = self.savings.get(cause, 0.0) + usd

    def merge(self, other: LedgerTotals) -> None:
        for f in fields(self):
            if f.name in ("namespace", "model", "day"):
                if getattr(self, f.name) != getattr(other, f.name):
                    setattr(self, f.name, "*")
            elif f.name == "savings":
                for cause, usd in other.savings.items():
                    self.savings[cause] = self.savings.get(cause, 0.0) + usd
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["saved_usd"] = self.saved_usd
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerTotals:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Ledger(Protocol):
    """Where the engine records calls. Implementations must be thread-safe."""

    def record(self, entry: LedgerEntry) -> None: ...

    def totals(self) -> list[LedgerTotals]:
        """One :class:`LedgerTotals` per (namespace, model, day), oldest day first."""
        ...

    def clear(self) -> None: ...


def summarize(buckets: Iterable[LedgerTotals], **match: str) -> LedgerTotals:
    """Merge buckets, keeping only those whose namespace/model/day equal ``match``."""
    total = LedgerTotals()
    first = True
    for bucket in buckets:
        if any(getattr(bucket, k) != v for k, v in match.items()):
            continue
        if first:
            total = LedgerTotals.from_dict(bucket.to_dict())
            first = False
        else:
            total.merge(bucket)
    return total


class _BucketLedger:
    """Shared aggregation for the in-memory and on-disk ledgers."""

    _warned_models: set[str]

    def _warn_unpriced(self, entry: LedgerEntry) -> None:
        if not entry.cost.priced and entry.model not in self._warned_models:
            self._warned_models.add(entry.model)
            logger.warning(
                "haikucache: no price known for model %r; its calls are recorded with $0",
                entry.model,
            )


class MemoryLedger(_BucketLedger):
    """A ledger kept in memory (tests, short scripts). Keeps the last ``keep`` entries too."""

    def __init__(self, *, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], LedgerTotals] = {}
        # A bounded deque: once full, each record drops the oldest in O(1).
        self._entries: deque[LedgerEntry] = deque(maxlen=max(0, keep))
        self._keep = keep
        self._warned_models = set()

    def record(self, entry: LedgerEntry) -> None:
        self._warn_unpriced(entry)
        key = (entry.namespace, entry.model, entry.day)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = LedgerTotals(*key)
            bucket.add(entry)
            self._entries.append(entry)

    @property
    def entries(self) -> list[LedgerEntry]:
        """The most recent entries, oldest first."""
        with self._lock:
            return list(self._entries)

    def totals(self) -> list[LedgerTotals]:
        with self._lock:
            return sorted(
                (LedgerTotals.from_dict(b.to_dict()) for b in self._buckets.values()),
                key=lambda b: (b.day, b.namespace, b.model),
            )

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._entries.clear()


class _PendingTotals:
    """Ledger entries summed in memory until they are written in one transaction.

    A write that fails (a full disk, a locked database) keeps its entries here, to be
    written with the next flush; so does a ledger whose directory cannot be used at all
    (``cache`` is ``None``), for good. At most ``most_buckets`` (namespace, model, day)
    buckets wait: a call for yet another one is counted in :attr:`dropped` instead.
    """

    def __init__(self, cache: Any, directory: Path, *, strict: bool, most_buckets: int) -> None:
        self.cache = cache
        self.directory = directory
        self.strict = strict
        self.most_buckets = most_buckets
        self.lock = threading.Lock()
        # Held while pending totals are written, and while totals are read, so that a
        # reader never sees entries that are neither pending nor written.
        self.write_lock = threading.Lock()
        self.buckets: dict[tuple[str, str, str], LedgerTotals] = {}
        self.count = 0
        self.flushed_at = time.monotonic()
        self.dropped = 0
        self.failing = False

    def add(self, entry: LedgerEntry, *, most: int, every: float) -> bool:
        """Add ``entry``; whether it is time to write."""
        key = (entry.namespace, entry.model, entry.day)
        first = False
        with self.lock:
            bucket = self.buckets.get(key)
            if bucket is None:
                if len(self.buckets) >= self.most_buckets:
                    self.dropped += 1
                    first = self.dropped == 1
                else:
                    bucket = self.buckets[key] = LedgerTotals(*key)
            if bucket is not None:
                bucket.add(entry)
                self.count += 1
            due = self.cache is not None and (
                self.count >= most or time.monotonic() - self.flushed_at >= every
            )
        if bucket is None and first:
            logger.warning(
                "haikucache: the ledger at %s holds %d unwritten buckets; calls for new ones "
                "are not accounted until it can write again",
                self.directory,
                self.most_buckets,
            )
        return due

    def drop(self) -> None:
        with self.lock:
            self.buckets = {}
            self.count = 0

    def pending(self) -> list[LedgerTotals]:
        """Copies of the buckets not written yet."""
        with self.lock:
            return [LedgerTotals.from_dict(b.to_dict()) for b in self.buckets.values()]

    def flush(self) -> None:
        if self.cache is None:
            return
        with self.write_lock:
            with self.lock:
                pending, self.buckets = self.buckets, {}
                self.count = 0
                self.flushed_at = time.monotonic()
            if not pending:
                return
            try:
                self._write(pending)
            except Exception as exc:  # a ledger failure must never fail the LLM call
                self._keep(pending)
                self._failed(exc)
            else:
                if self.failing:
                    self.failing = False
                    logger.info("haikucache: the ledger at %s is written again", self.directory)

    def _write(self, pending: dict[tuple[str, str, str], LedgerTotals]) -> None:
        try:
            with self.cache.transact():
                for (namespace, model, day), delta in pending.items():
                    key = ("totals", namespace, model, day)
                    try:
                        data = self.cache.get(key)
                        bucket = (
                            LedgerTotals(namespace, model, day)
                            if data is None
                            else _stored_bucket(data)
                        )
                    except (PickledDataError, TypeError, ValueError) as exc:
                        # Damaged, or not ours: replaced, rather than blocking every write.
                        logger.warning(
                            "haikucache: replaced an unreadable ledger row at %s (%s)",
                            self.directory,
                            exc,
                        )
                        bucket = LedgerTotals(namespace, model, day)
                    bucket.merge(delta)
                    self.cache.set(key, bucket.to_dict())
        except BaseException:
            # SQLite rolls back a transaction whose COMMIT failed on a full disk; should one
            # ever be left open, every later write would fail: end it. (Reopening the
            # connection instead would need a write of its own, and the disk is full.)
            with contextlib.suppress(Exception):
                con = self.cache._con  # diskcache's connection of this thread
                if con.in_transaction:
                    con.execute("ROLLBACK")
            raise

    def _keep(self, pending: dict[tuple[str, str, str], LedgerTotals]) -> None:
        """Put entries that could not be written back, merged with those added since."""
        with self.lock:
            for key, delta in pending.items():
                newer = self.buckets.get(key)
                if newer is not None:
                    delta.merge(newer)
                self.buckets[key] = delta
            # Retried with the next flush: after flush_interval or flush_entries more calls,
            # not on every call while the disk stays full.
            self.count = 0
            self.flushed_at = time.monotonic()

    def _failed(self, exc: Exception) -> None:
        if self.strict:
            raise CacheStoreError(f"could not write the ledger at {self.directory}: {exc}") from exc
        if not self.failing:
            self.failing = True
            logger.warning(
                "haikucache: could not write the ledger at %s (%s: %s); its entries are kept "
                "in memory and written with the next flush",
                self.directory,
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("haikucache: the ledger at %s failed again: %r", self.directory, exc)


class DiskLedger(_BucketLedger):
    """A ledger persisted with ``diskcache`` (one SQLite file; many processes may share it).

    Entries are summed in memory and written in one transaction every ``flush_interval``
    seconds or ``flush_entries`` entries, whichever comes first, and whenever the ledger is
    read, closed or garbage-collected, and at exit: a SQLite write per call would cost more
    than a response-cache hit itself. A process killed outright loses at most that much
    accounting, never an answer.

    A ledger failure never fails a call. A write that fails (a full disk, a database locked
    for longer than ``timeout``) keeps its entries in memory for the next flush, and
    :meth:`totals` still counts them. A directory that cannot be used at all (a file in the
    way, a read-only file system, a corrupt database) is logged once, and the ledger counts
    in memory for the life of the object.

    Args:
        directory: where to keep it (default: ``default_cache_dir() / "ledger"``); created
            private to the user.
        flush_interval: most seconds an entry waits in memory (``0``: write every entry).
        flush_entries: most entries that wait in memory.
        timeout: seconds a write waits for SQLite's lock before it is retried later.
        strict: raise :class:`~haikucache.CacheStoreError` when the directory cannot be used
            or a write fails, instead of counting in memory (for tests).
    """

    #: Most (namespace, model, day) buckets kept in memory while the ledger cannot write.
    MAX_PENDING_BUCKETS = 10_000

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = 1.0,
        flush_entries: int = 1_000,
        timeout: float = 1.0,
        strict: bool = False,
    ) -> None:
        if (
            isinstance(flush_interval, bool)
            or not isinstance(flush_interval, (int, float))
            or flush_interval < 0
        ):
            raise ConfigurationError("flush_interval must be a number of seconds >= 0")
        if (
            isinstance(flush_entries, bool)
            or not isinstance(flush_entries, int)
            or flush_entries < 1
        ):
            raise ConfigurationError("flush_entries must be a positive integer")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self.directory, self._cache = open_cache(
            directory,
            "ledger",
            what="the ledger",
            degraded="calls are accounted in memory only, for this process",
            strict=strict,
            plain_pickles=True,
            timeout=timeout,
            # Every value stays inside SQLite (value files would follow the umask).
            disk_min_file_size=2**30,
            statistics=False,
        )
        self.strict = bool(strict)
        self._warned_models = set()
        self._warned_unreadable = False
        self.flush_interval = float(flush_interval)
        self.flush_entries = flush_entries
        self._pending = _PendingTotals(
            self._cache, self.directory, strict=self.strict, most_buckets=self.MAX_PENDING_BUCKETS
        )
        # Written when the ledger is collected or at exit, whichever comes first (the
        # finalizer holds the pending totals, not the ledger).
        self._finalizer = weakref.finalize(self, _flush_quietly, self._pending)

    def __repr__(self) -> str:
        return f"DiskLedger({str(self.directory)!r})"

    @property
    def persistent(self) -> bool:
        """Whether entries reach the disk (``False``: the directory could not be used, and
        this ledger counts in memory only)."""
        return self._cache is not None

    def record(self, entry: LedgerEntry) -> None:
        self._warn_unpriced(entry)
        if self._pending.add(entry, most=self.flush_entries, every=self.flush_interval):
            self._pending.flush()

    def flush(self) -> None:
        """Write the entries summed in memory now (those that fail stay for the next try)."""
        self._pending.flush()

    def totals(self) -> list[LedgerTotals]:
        self._pending.flush()
        buckets: dict[tuple[str, str, str], LedgerTotals] = {}
        with self._pending.write_lock:
            for bucket in self._read():
                buckets[(bucket.namespace, bucket.model, bucket.day)] = bucket
            for delta in self._pending.pending():
                key = (delta.namespace, delta.model, delta.day)
                if key in buckets:
                    buckets[key].merge(delta)
                else:
                    buckets[key] = delta
        return sorted(buckets.values(), key=lambda b: (b.day, b.namespace, b.model))

    def _read(self) -> list[LedgerTotals]:
        if self._cache is None:
            return []
        buckets = []
        unreadable = 0
        try:
            for key in self._cache.iterkeys():
                if isinstance(key, UnreadableKey):
                    unreadable += 1
                elif isinstance(key, tuple) and len(key) == 4 and key[0] == "totals":
                    try:
                        data = self._cache.get(key)
                        if data is None:  # removed since (another process cleared it)
                            continue
                        buckets.append(_stored_bucket(data))
                    except (PickledDataError, TypeError, ValueError):
                        unreadable += 1
        except Exception as exc:
            if self.strict:
                raise CacheStoreError(
                    f"could not read the ledger at {self.directory}: {exc}"
                ) from exc
            logger.warning(
                "haikucache: could not read the ledger at %s (%s: %s); totals count this "
                "process's unwritten entries only",
                self.directory,
                type(exc).__name__,
                exc,
            )
            return []
        if unreadable and not self._warned_unreadable:
            self._warned_unreadable = True
            logger.warning(
                "haikucache: the ledger at %s holds %d unreadable rows (not written by "
                "haikucache, or damaged); they are left out of the totals",
                self.directory,
                unreadable,
            )
        return buckets

    def clear(self) -> None:
        self._pending.drop()
        if self._cache is not None:
            self._cache.clear()

    def close(self) -> None:
        self._pending.flush()
        if self._cache is not None:
            self._cache.close()


def _stored_bucket(data: Any) -> LedgerTotals:
    """A bucket as read from disk, checked: a damaged one must not break every report."""
    if not isinstance(data, dict):
        raise TypeError(f"a stored bucket is a dict, not a {type(data).__name__}")
    bucket = LedgerTotals.from_dict(data)
    for f in fields(bucket):
        value = getattr(bucket, f.name)
        if f.name in ("namespace", "model", "day"):
            ok = isinstance(value, str)
        elif f.name == "savings":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and _is_number(v) for k, v in value.items()
            )
        else:
            ok = _is_number(value)
        if not ok:
            raise ValueError(f"field {f.name!r} of a stored bucket has the wrong type")
    return bucket


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flush_quietly(pending: _PendingTotals) -> None:
    # At exit or collection: a strict ledger has nobody left to raise to.
    try:
        pending.flush()
    except CacheStoreError as exc:
        logger.warning("haikucache: %s", exc)


def now_entry(
    clock: Clock | None,
    *,
    namespace: str,
    model: str,
    cache: str,
    usage: Mapping[str, Any] | None,
    batch: bool = False,
) -> LedgerEntry:
    """Build the :class:`LedgerEntry` for a call that just finished."""
    tokens = TokenCounts.from_usage(usage)
    hit = cache in ("hit", "semantic")
    cost = price_usage(model, tokens, batch=batch, response_cache_hit=hit)
    return LedgerEntry(
        time=(clock or SystemClock()).now(),
        namespace=namespace,
        model=model,
        cache=cache,
        tokens=tokens,
        cost=cost,
        batch=batch,
    )
