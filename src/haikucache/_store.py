"""Response stores: where complete answers are kept, behind one interface.

The engine talks to a :class:`ResponseStore` (and, from async doors, to its ``a``-prefixed
twins, :class:`AsyncResponseStore`) and never knows which one it has:

``MemoryStore``   in-process, LRU-bounded; for tests and short scripts.
``DiskStore``     ``diskcache`` (SQLite) on local disk; the embedded default, safe for many
                  processes on one machine, private to the user (0700 directory, 0600 files).
``RedisStore``    Redis, shared by many processes and machines (``haikucache[redis]``).

Every store follows the same rules:

* **A failing store is a miss.** I/O errors, timeouts, a full disk and corrupt or truncated
  entries are logged (once per kind of failure, then at debug level until the store
  recovers), counted in :attr:`StoreStats.errors`, and the call goes on upstream. With
  ``strict=True`` they raise :class:`~haikucache.CacheStoreError` instead (for tests).
* **Entries are self-checking.** An entry is stored as a format byte, the payload length and
  an xxh3-64 checksum, then compact JSON; anything torn or altered is detected and read as a
  miss, never as a wrong or partial answer.
* **Expiry is logical.** ``get(key, now=...)`` compares the entry's ``expires_at`` with the
  caller's clock, so TTL tests run on a :class:`~haikucache.ManualClock`; the backend's own
  expiry (diskcache ``expire``, Redis ``PEXPIRE``) only reclaims space.
* **No secrets.** An entry holds the API's message, its usage and its price; never headers
  or keys (namespaces are already hashes of the key).

Besides entries, stores offer a lease lock (:meth:`ResponseStore.try_lock`, with ``renew``
to extend a lease its holder still has) for cross-process single-flight, and an index of
semantic partitions (:meth:`ResponseStore.iter_partition`, with an optional vector per entry)
for the semantic cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import xxhash

from ._exceptions import CacheStoreError, ConfigurationError, MissingDependencyError
from ._paths import PickledDataError, create_private_file, open_cache
from ._types import _copy_json

__all__ = [
    "ENTRY_FORMAT",
    "NO_LOCK",
    "STORABLE_STOP_REASONS",
    "AsyncResponseStore",
    "CacheEntry",
    "DiskStore",
    "MemoryStore",
    "PartitionMember",
    "RedisStore",
    "ResponseStore",
    "StoreStats",
    "decode_entry",
    "encode_entry",
    "is_storable",
]

logger = logging.getLogger("haikucache")

#: Version byte of the stored entry format; an entry of another version is a miss.
ENTRY_FORMAT = 1

#: Only complete answers are stored: not ``max_tokens`` (cut off), ``pause_turn`` (to be
#: continued) or ``refusal``.
STORABLE_STOP_REASONS = frozenset({"end_turn", "tool_use", "stop_sequence"})

#: The token :meth:`ResponseStore.try_lock` returns when the store itself failed: the caller
#: proceeds as if it held the lock (a broken cache must never make a call wait), and
#: ``unlock`` with it is a no-op.
NO_LOCK = "-"

# format byte, payload length, xxh3-64 of the payload; then the payload (UTF-8 JSON).
_HEADER = struct.Struct("<BIQ")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_S = TypeVar("_S", bound="_BaseStore")


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class CacheEntry:
    """One stored answer.

    Attributes:
        key: the exact key, ``hc1:<hex>``.
        namespace: the tenant it belongs to.
        response: the Messages API's message dict, as the API returned it.
        usage: the original call's ``usage``.
        cost_usd: what the original call was billed.
        baseline_usd: what the original call would have cost without haikucache.
        model: the model id.
        created_at: when it was stored, on the engine's clock.
        expires_at: when it stops being served, on the engine's clock (``None``: never).
        tags: labels for invalidation.
        hits: how often it has been served. :class:`MemoryStore` and :class:`RedisStore`
            count every hit; :class:`DiskStore` does not (a write on every read would
            serialise readers across processes) and reports the stored value.
        partition: the semantic partition (:func:`haikucache.partition_key`), or ``None``.
        text: the last user turn's text, for semantic entries.
        similarity: set on an entry found by meaning (the cosine similarity of its question
            with the one asked); never stored.
    """

    key: str
    namespace: str
    response: dict[str, Any]
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    model: str = ""
    created_at: float = 0.0
    expires_at: float | None = None
    tags: tuple[str, ...] = ()
    hits: int = 0
    partition: str | None = None
    text: str | None = None
    similarity: float | None = None

    @classmethod
    def for_message(
        cls,
        *,
        key: str,
        namespace: str,
        message: Mapping[str, Any],
        now: float,
        ttl: float | None = None,
        cost_usd: float = 0.0,
        baseline_usd: float = 0.0,
        tags: Sequence[str] = (),
        partition: str | None = None,
        text: str | None = None,
    ) -> CacheEntry:
        """Build the entry for an answer that just arrived.

        Args:
            key: the request's exact key.
            namespace: its namespace.
            message: the API's message dict (``usage`` and ``model`` are read from it).
            now: the current time on the engine's clock.
            ttl: seconds it stays valid (``None``: no expiry).
            cost_usd: what the call was billed.
            baseline_usd: what it would have cost without haikucache.
            tags: labels for invalidation.
            partition: the semantic partition, for semantic entries.
            text: the last user turn's text, for semantic entries.
        """
        usage = message.get("usage")
        model = message.get("model")
        return cls(
            key=key,
            namespace=namespace,
            response=dict(message),
            usage=dict(usage) if isinstance(usage, Mapping) else {},
            cost_usd=float(cost_usd),
            baseline_usd=float(baseline_usd),
            model=model if isinstance(model, str) else "",
            created_at=float(now),
            expires_at=None if ttl is None else float(now) + float(ttl),
            tags=tuple(tags),
            partition=partition,
            text=text,
        )

    def expired(self, now: float) -> bool:
        """Whether it is past ``expires_at`` at ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    @property
    def lifetime(self) -> float | None:
        """Seconds from ``created_at`` to ``expires_at`` (``None``: no expiry)."""
        return None if self.expires_at is None else self.expires_at - self.created_at


def is_storable(message: Mapping[str, Any]) -> bool:
    """Whether a message is a complete answer worth storing (see :data:`STORABLE_STOP_REASONS`)."""
    return (
        message.get("type") == "message"
        and message.get("stop_reason") in STORABLE_STOP_REASONS
        and isinstance(message.get("content"), list)
    )


class _CorruptEntry(ValueError):
    """A stored entry that cannot be trusted (torn, altered, or of an unknown format)."""


def encode_entry(entry: CacheEntry) -> bytes:
    """Serialise an entry: header (format, length, checksum) + compact JSON.

    Raises:
        ValueError: the entry holds something that is not JSON (``NaN``, a set …).
        TypeError: likewise.
    """
    payload = _dumps(
        {
            "key": entry.key,
            "namespace": entry.namespace,
            "response": entry.response,
            # The usage is nearly always the response's own: stored once, parsed once.
            "usage": None if entry.usage == entry.response.get("usage") else entry.usage,
            "cost_usd": entry.cost_usd,
            "baseline_usd": entry.baseline_usd,
            "model": entry.model,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "tags": list(entry.tags),
            "hits": entry.hits,
            "partition": entry.partition,
            "text": entry.text,
        }
    ).encode("utf-8", "surrogatepass")
    return _HEADER.pack(ENTRY_FORMAT, len(payload), xxhash.xxh3_64_intdigest(payload)) + payload


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # No field is a boolean, and bool is an int to isinstance().
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _CorruptEntry(f"field {name!r} has the wrong type")
    return value


def decode_entry(data: bytes, *, key: str | None = None, hits: int | None = None) -> CacheEntry:
    """Read back what :func:`encode_entry` wrote.

    Args:
        data: the stored bytes.
        key: the key it was stored under; an entry claiming another key is rejected.
        hits: the hit count to report instead of the stored one (kept apart by some stores).

    Raises:
        ValueError: the bytes are truncated, altered, of another format version, or not an
            entry (for ``key``).
    """
    if len(data) < _HEADER.size:
        raise _CorruptEntry(f"truncated: {len(data)} bytes, shorter than the header")
    version, length, digest = _HEADER.unpack_from(data)
    if version != ENTRY_FORMAT:
        raise _CorruptEntry(f"unknown entry format {version}")
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise _CorruptEntry(f"truncated: {len(payload)} of {length} payload bytes")
    if xxhash.xxh3_64_intdigest(payload) != digest:
        raise _CorruptEntry("checksum mismatch")
    try:
        obj = json.loads(data[_HEADER.size :].decode("utf-8", "surrogatepass"))
    except ValueError as exc:  # cannot happen with a valid checksum, unless written so
        raise _CorruptEntry(f"payload is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise _CorruptEntry("payload is not an object")
    response = _field(obj, "response", dict)
    usage = obj.get("usage")
    if usage is None:
        usage = response.get("usage")
        # A copy: entry.usage and entry.response["usage"] must not be one object. Usage
        # nests one level deep (cache_creation, server_tool_use).
        usage = (
            {k: dict(v) if type(v) is dict else _copy_json(v) for k, v in usage.items()}
            if isinstance(usage, dict)
            else {}
        )
    elif not isinstance(usage, dict):
        raise _CorruptEntry("field 'usage' has the wrong type")
    number = (int, float)
    expires_at = obj.get("expires_at")
    if expires_at is not None and (
        not isinstance(expires_at, number) or isinstance(expires_at, bool)
    ):
        raise _CorruptEntry("field 'expires_at' has the wrong type")
    tags = _field(obj, "tags", list)
    if not all(isinstance(t, str) for t in tags):
        raise _CorruptEntry("field 'tags' holds a non-string")
    partition = obj.get("partition")
    text = obj.get("text")
    if partition is not None and not isinstance(partition, str):
        raise _CorruptEntry("field 'partition' has the wrong type")
    if text is not None and not isinstance(text, str):
        raise _CorruptEntry("field 'text' has the wrong type")
    entry = CacheEntry(
        key=_field(obj, "key", str),
        namespace=_field(obj, "namespace", str),
        response=response,
        usage=usage,
        cost_usd=float(_field(obj, "cost_usd", number)),
        baseline_usd=float(_field(obj, "baseline_usd", number)),
        model=_field(obj, "model", str),
        created_at=float(_field(obj, "created_at", number)),
        expires_at=None if expires_at is None else float(expires_at),
        tags=tuple(tags),
        hits=_field(obj, "hits", int) if hits is None else hits,
        partition=partition,
        text=text,
    )
    if key is not None and entry.key != key:
        raise _CorruptEntry(f"entry for {entry.key!r} found under {key!r}")
    return entry


@dataclass(frozen=True)
class StoreStats:
    """What a store holds and how it has fared.

    Attributes:
        entries: entries held (may include expired ones not yet reclaimed).
        bytes: their size (for :class:`DiskStore`, the files on disk).
        hits: lookups answered, by this store object.
        misses: lookups not answered (absent, expired, unreadable or failed).
        errors: failures (I/O, timeouts, corrupt entries), each also a miss or a skipped write.
        evictions: entries removed to stay within the size limit (for :class:`RedisStore`,
            the server's ``evicted_keys``: server-wide, since it started).
    """

    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    evictions: int = 0

    def to_dict(self) -> dict[str, int]:
        """A plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class PartitionMember:
    """One semantic entry of a partition, without its answer.

    Attributes:
        key: the entry's exact key (``get`` it to serve it; it may have gone since).
        text: the last user turn's text it answered.
        vector: the embedding stored with it (``put(..., vector=...)``), or ``None``.
        expires_at: when it stops being served (``None``: never).
    """

    key: str
    text: str | None
    vector: bytes | None
    expires_at: float | None


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class ResponseStore(Protocol):
    """Where the engine keeps answers. Implementations are thread-safe and never raise on
    store failures unless ``strict`` (a failing store is a miss)."""

    strict: bool
    default_ttl: float | None

    def get(self, key: str, *, now: float) -> CacheEntry | None:
        """The live entry under ``key`` at ``now``, counting a hit; ``None`` on a miss."""
        ...

    def put(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        """Store ``entry`` (replacing any under its key); ``False`` if it was not stored."""
        ...

    def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; whether there was one."""
        ...

    def invalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        """Remove the entries matching every given filter; how many were removed."""
        ...

    def iter_partition(self, partition: str, *, now: float) -> Iterator[PartitionMember]:
        """The live semantic entries of ``partition``."""
        ...

    def partition_since(
        self, partition: str, cursor: str | None, *, now: float
    ) -> tuple[list[PartitionMember], str]:
        """The live entries stored in ``partition`` after ``cursor``, and the new cursor.

        ``cursor=None`` returns every live entry. Each process's semantic index tails this
        to see what other processes stored; an entry may be returned again (re-stored), and
        removals are not reported (a candidate is read back with ``get`` before serving).
        """
        ...

    def try_lock(self, name: str, *, ttl: float) -> str | None:
        """Take the lease ``name`` for ``ttl`` seconds: a token, or ``None`` if it is held."""
        ...

    def unlock(self, name: str, token: str) -> bool:
        """Give the lease back; ``False`` if it had expired and been taken by someone else
        (or the store failed)."""
        ...

    # Every haikucache store also has ``renew(name, token, *, ttl) -> bool`` (and its twin
    # ``arenew``): extend a lease to ``ttl`` seconds from now, if ``token`` still holds it.
    # It is optional for other stores: single-flight then takes its lease for its whole
    # length at once.

    def clear(self) -> None:
        """Remove every entry."""
        ...

    def stats(self) -> StoreStats:
        """Counters."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


@runtime_checkable
class AsyncResponseStore(Protocol):
    """The coroutine twins of :class:`ResponseStore`, for async doors (same meaning each)."""

    strict: bool
    default_ttl: float | None

    async def aget(self, key: str, *, now: float) -> CacheEntry | None:
        """Coroutine twin of :meth:`ResponseStore.get`."""
        ...

    async def aput(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        """Coroutine twin of :meth:`ResponseStore.put`."""
        ...

    async def adelete(self, key: str) -> bool:
        """Coroutine twin of :meth:`ResponseStore.delete`."""
        ...

    async def ainvalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        """Coroutine twin of :meth:`ResponseStore.invalidate`."""
        ...

    def aiter_partition(self, partition: str, *, now: float) -> AsyncIterator[PartitionMember]:
        """Async-iterator twin of :meth:`ResponseStore.iter_partition`."""
        ...

    async def atry_lock(self, name: str, *, ttl: float) -> str | None:
        """Coroutine twin of :meth:`ResponseStore.try_lock`."""
        ...

    async def aunlock(self, name: str, token: str) -> bool:
        """Coroutine twin of :meth:`ResponseStore.unlock`."""
        ...

    async def aclear(self) -> None:
        """Coroutine twin of :meth:`ResponseStore.clear`."""
        ...

    async def astats(self) -> StoreStats:
        """Coroutine twin of :meth:`ResponseStore.stats`."""
        ...

    async def aclose(self) -> None:
        """Coroutine twin of :meth:`ResponseStore.close`."""
        ...


# --------------------------------------------------------------------------- shared machinery


def _check_filters(key: str | None, tag: str | None, namespace: str | None) -> None:
    if key is None and tag is None and namespace is None:
        raise ConfigurationError(
            "invalidate() needs key=, tag= or namespace= (use clear() to remove everything)"
        )


def _check_ttl(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _matches(entry: CacheEntry, tag: str | None, namespace: str | None) -> bool:
    return (tag is None or tag in entry.tags) and (
        namespace is None or entry.namespace == namespace
    )


class _BaseStore:
    """Counters, once-per-kind failure logging, strict mode and the context-manager protocol."""

    def _encode_for_put(self, entry: CacheEntry) -> bytes | None:
        """The bytes to store, or ``None`` when there is nothing to store (already expired,
        or not encodable — logged, and raised in strict mode)."""
        lifetime = entry.lifetime
        if lifetime is not None and lifetime <= 0:
            return None
        try:
            return encode_entry(entry)
        except (TypeError, ValueError) as exc:
            self._failed("encode", exc)
            return None

    strict: bool
    default_ttl: float | None

    def __init__(self, *, strict: bool, default_ttl: float | None) -> None:
        self.strict = bool(strict)
        self.default_ttl = _check_ttl("default_ttl", default_ttl)
        self._counter_lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._errors = 0
        self._evictions = 0
        self._logged: set[tuple[str, str]] = set()

    def _hit(self) -> None:
        with self._counter_lock:
            self._hits += 1
        if self._logged:
            self._succeeded("get")

    def _miss(self) -> None:
        with self._counter_lock:
            self._misses += 1

    def _evicted(self, count: int) -> None:
        if count:
            with self._counter_lock:
                self._evictions += count

    def _failed(self, op: str, exc: BaseException) -> None:
        """Count and log a failure, once per kind; raise :class:`CacheStoreError` when strict.

        Call it from an ``except`` block so that, when strict, the store error is chained.
        """
        kind = (op, type(exc).__name__)
        with self._counter_lock:
            self._errors += 1
            first = kind not in self._logged
            self._logged.add(kind)
        if self.strict:
            raise CacheStoreError(f"{self!r}: {op} failed: {exc}") from exc
        if first:
            # A store that is down fails every call; one warning per kind keeps the log
            # readable, and the counter in stats() keeps the full count.
            logger.warning(
                "haikucache: %r: %s failed (%s: %s); the call goes on without the cache. "
                "Further failures of this kind are logged at debug level until the store "
                "recovers.",
                self,
                op,
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("haikucache: %r: %s failed again: %r", self, op, exc)

    def _failed_miss(self, op: str, exc: BaseException) -> None:
        self._miss()
        self._failed(op, exc)

    def _succeeded(self, op: str) -> None:
        """``op`` worked: after logged failures of it, say so once, and log the next one."""
        if not self._logged:
            return
        with self._counter_lock:
            cleared = {kind for kind in self._logged if kind[0] == op}
            self._logged -= cleared
        if cleared:
            logger.info("haikucache: %r: %s works again", self, op)

    def _decode(
        self, key: str, data: bytes, now: float, hits: int | None = None
    ) -> CacheEntry | None:
        try:
            entry = decode_entry(data, key=key, hits=hits)
        except ValueError as exc:
            # No delete: the miss sends the call upstream and its answer overwrites this.
            self._failed_miss("read of a corrupt entry", exc)
            return None
        if entry.expired(now):
            self._miss()
            return None
        return entry

    def _counters(self, entries: int, size: int, evictions: int | None = None) -> StoreStats:
        with self._counter_lock:
            return StoreStats(
                entries=entries,
                bytes=size,
                hits=self._hits,
                misses=self._misses,
                errors=self._errors,
                evictions=self._evictions if evictions is None else evictions,
            )

    def close(self) -> None:
        """Release connections and files."""

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _LocalAsyncMixin:
    """Async twins for stores whose I/O is local and takes microseconds (memory, SQLite).

    They run inline on the event loop: a thread hop would cost more than the operation,
    and with SQLite it would open a connection per executor thread.
    """

    if TYPE_CHECKING:

        def get(self, key: str, *, now: float) -> CacheEntry | None: ...

        def put(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool: ...

        def delete(self, key: str) -> bool: ...

        def invalidate(
            self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
        ) -> int: ...

        def iter_partition(self, partition: str, *, now: float) -> Iterator[PartitionMember]: ...

        def try_lock(self, name: str, *, ttl: float) -> str | None: ...

        def unlock(self, name: str, token: str) -> bool: ...

        def renew(self, name: str, token: str, *, ttl: float) -> bool: ...

        def clear(self) -> None: ...

        def stats(self) -> StoreStats: ...

        def close(self) -> None: ...

    async def aget(self, key: str, *, now: float) -> CacheEntry | None:
        """Coroutine twin of ``get``."""
        return self.get(key, now=now)

    async def aput(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        """Coroutine twin of ``put``."""
        return self.put(entry, vector=vector)

    async def adelete(self, key: str) -> bool:
        """Coroutine twin of ``delete``."""
        return self.delete(key)

    async def ainvalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        """Coroutine twin of ``invalidate``."""
        return self.invalidate(key=key, tag=tag, namespace=namespace)

    async def aiter_partition(
        self, partition: str, *, now: float
    ) -> AsyncIterator[PartitionMember]:
        """Async-iterator twin of ``iter_partition``."""
        for member in self.iter_partition(partition, now=now):
            yield member

    async def atry_lock(self, name: str, *, ttl: float) -> str | None:
        """Coroutine twin of ``try_lock``."""
        return self.try_lock(name, ttl=ttl)

    async def aunlock(self, name: str, token: str) -> bool:
        """Coroutine twin of ``unlock``."""
        return self.unlock(name, token)

    async def arenew(self, name: str, token: str, *, ttl: float) -> bool:
        """Coroutine twin of ``renew``."""
        return self.renew(name, token, ttl=ttl)

    async def aclear(self) -> None:
        """Coroutine twin of ``clear``."""
        self.clear()

    async def astats(self) -> StoreStats:
        """Coroutine twin of ``stats``."""
        return self.stats()

    async def aclose(self) -> None:
        """Coroutine twin of ``close``."""
        self.close()


def _new_token() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- memory


@dataclass
class _Slot:
    data: bytes
    namespace: str
    tags: tuple[str, ...]
    partition: str | None
    text: str | None
    vector: bytes | None
    expires_at: float | None
    hits: int
    seq: int = 0


class MemoryStore(_LocalAsyncMixin, _BaseStore, ResponseStore, AsyncResponseStore):
    """An in-process store, bounded by entry count (LRU) and optionally by bytes.

    Entries are kept serialised, so a caller that mutates a returned response never changes
    what the next caller gets.

    Args:
        max_entries: most entries kept; the least recently used is evicted first
            (``None``: unbounded — only for tests).
        max_bytes: most bytes kept (``None``: no byte limit).
        default_ttl: the TTL the engine applies when a call sets none (``None``: no expiry).
        strict: raise :class:`~haikucache.CacheStoreError` on failures instead of missing.
    """

    def __init__(
        self,
        *,
        max_entries: int | None = 10_000,
        max_bytes: int | None = None,
        default_ttl: float | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(strict=strict, default_ttl=default_ttl)
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"{name} must be a positive integer or None")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._bytes = 0
        self._groups: dict[str, set[str]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._seq = 0
        self._partition_seq: dict[str, int] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._log_dropped: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(max_entries={self.max_entries!r})"

    # -- index of namespaces, tags and partitions, kept exact under the lock

    @staticmethod
    def _group_names(slot: _Slot) -> list[str]:
        names = ["n:" + slot.namespace, *("t:" + t for t in slot.tags)]
        if slot.partition is not None:
            names.append("p:" + slot.partition)
        return names

    def _unlink(self, key: str) -> _Slot | None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return None
        self._bytes -= len(slot.data)
        for name in self._group_names(slot):
            members = self._groups.get(name)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._groups[name]
        return slot

    def get(self, key: str, *, now: float) -> CacheEntry | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or (slot.expires_at is not None and now >= slot.expires_at):
                if slot is not None:
                    self._unlink(key)
                self._miss()
                return None
            slot.hits += 1
            hits = slot.hits
            data = slot.data
            self._slots.move_to_end(key)
        entry = self._decode(key, data, now, hits)
        if entry is None:
            return None
        self._hit()
        return entry

    def put(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        data = self._encode_for_put(entry)
        if data is None:
            return False
        slot = _Slot(
            data=data,
            namespace=entry.namespace,
            tags=entry.tags,
            partition=entry.partition,
            text=entry.text,
            vector=vector,
            expires_at=entry.expires_at,
            hits=entry.hits,
        )
        evicted = 0
        with self._lock:
            self._unlink(entry.key)
            self._seq += 1
            slot.seq = self._seq
            if slot.partition is not None:
                self._partition_seq[slot.partition] = self._seq
            self._slots[entry.key] = slot
            self._bytes += len(data)
            for name in self._group_names(slot):
                self._groups.setdefault(name, set()).add(entry.key)
            while len(self._slots) > 1 and (
                (self.max_entries is not None and len(self._slots) > self.max_entries)
                or (self.max_bytes is not None and self._bytes > self.max_bytes)
            ):
                self._unlink(next(iter(self._slots)))
                evicted += 1
        self._evicted(evicted)
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._unlink(key) is not None

    def invalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        _check_filters(key, tag, namespace)
        with self._lock:
            if key is not None:
                candidates = {key}
            elif tag is not None:
                candidates = set(self._groups.get("t:" + tag, ()))
            else:
                candidates = set(self._groups.get("n:" + str(namespace), ()))
            removed = 0
            for candidate in candidates:
                slot = self._slots.get(candidate)
                if slot is None:
                    continue
                if (tag is None or tag in slot.tags) and (
                    namespace is None or slot.namespace == namespace
                ):
                    self._unlink(candidate)
                    removed += 1
            return removed

    def iter_partition(self, partition: str, *, now: float) -> Iterator[PartitionMember]:
        with self._lock:
            members = [
                PartitionMember(key, slot.text, slot.vector, slot.expires_at)
                for key in self._groups.get("p:" + partition, ())
                if (slot := self._slots[key]).expires_at is None or now < slot.expires_at
            ]
        return iter(members)

    def partition_since(
        self, partition: str, cursor: str | None, *, now: float
    ) -> tuple[list[PartitionMember], str]:
        after = int(cursor) if cursor else 0
        with self._lock:
            if cursor is not None and self._partition_seq.get(partition, 0) <= after:
                return [], cursor
            members = [
                PartitionMember(key, slot.text, slot.vector, slot.expires_at)
                for key in self._groups.get("p:" + partition, ())
                if (slot := self._slots[key]).seq > after
                and (slot.expires_at is None or now < slot.expires_at)
            ]
            return members, str(self._seq)

    def try_lock(self, name: str, *, ttl: float) -> str | None:
        _check_ttl("ttl", ttl)
        with self._lock:
            held = self._locks.get(name)
            clock = time.monotonic()
            if held is not None and held[1] > clock:
                return None
            token = _new_token()
            self._locks[name] = (token, clock + ttl)
            return token

    def unlock(self, name: str, token: str) -> bool:
        if token == NO_LOCK:
            return True
        with self._lock:
            held = self._locks.get(name)
            if held is None or held[0] != token:
                return False
            del self._locks[name]
            return True

    def renew(self, name: str, token: str, *, ttl: float) -> bool:
        """Extend the lease ``name`` to ``ttl`` seconds from now, if ``token`` holds it."""
        _check_ttl("ttl", ttl)
        if token == NO_LOCK:
            return True
        with self._lock:
            held = self._locks.get(name)
            if held is None or held[0] != token:
                return False
            self._locks[name] = (token, time.monotonic() + ttl)
            return True

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._groups.clear()
            self._partition_seq.clear()
            self._bytes = 0

    def stats(self) -> StoreStats:
        with self._lock:
            entries, size = len(self._slots), self._bytes
        return self._counters(entries, size)

    def close(self) -> None:
        """Nothing to release; the entries stay readable."""

    def append_log(self, name: str, records: Sequence[bytes]) -> None:
        """Append ``records`` to the shared log ``name`` (the planner's observations)."""
        with self._lock:
            log = self._logs.setdefault(name, [])
            log.extend(records)
            if len(log) > _LOG_LIMIT:
                # Readers keep a position: trimming counts what was dropped.
                drop = len(log) - _LOG_LIMIT
                del log[:drop]
                self._log_dropped[name] = self._log_dropped.get(name, 0) + drop

    def read_log(self, name: str, cursor: str | None) -> tuple[list[bytes], str]:
        """The records appended to ``name`` after ``cursor`` (``None``: all), and the new
        cursor."""
        with self._lock:
            log = self._logs.get(name, [])
            dropped = self._log_dropped.get(name, 0)
            start = max(0, (int(cursor) if cursor else 0) - dropped)
            return list(log[start:]), str(dropped + len(log))


# --------------------------------------------------------------------------- disk

_INDEX_SCHEMA = (
    # One row per (group, key): a group is "t:<tag>" or "p:<partition>". Namespaces need no
    # rows: diskcache's own (indexed) tag column holds each entry's namespace.
    "CREATE TABLE IF NOT EXISTS members ("
    " grp TEXT NOT NULL, key TEXT NOT NULL, expires REAL, added REAL NOT NULL,"
    " text TEXT, vector BLOB, PRIMARY KEY (grp, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS members_key ON members (key)",
    "CREATE INDEX IF NOT EXISTS members_added ON members (added)",
    # An append-only log of partition members, so each process's semantic index can load
    # what others stored since it last looked (rows go when their entry goes).
    "CREATE TABLE IF NOT EXISTS plog ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT NOT NULL, key TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS plog_grp ON plog (grp, seq)",
    "CREATE INDEX IF NOT EXISTS plog_key ON plog (key)",
    "CREATE TABLE IF NOT EXISTS locks ("
    " name TEXT PRIMARY KEY, token TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
)


# Shared logs (the planner's observations), apart from the index schema above: created on
# first use, so a store that never shares planner statistics never has the table.
_LOG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS logs ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, record BLOB NOT NULL)"
)
_LOG_LIMIT = 100_000  # records kept per log; a reader further behind skips the oldest


class _SQLiteIndex:
    """Tags, partitions (with vectors) and leases, in an SQLite file beside the diskcache.

    Connections are pooled, not kept per thread: a server that starts a thread per request
    would otherwise open (and keep) one connection per thread. A connection serves one
    thread at a time; :meth:`close` closes them all. After a fork the child opens its own.
    """

    def __init__(self, path: Path, *, timeout: float) -> None:
        self.path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        create_private_file(path)
        try:
            with self.write() as con:
                for statement in _INDEX_SCHEMA:
                    con.execute(statement)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        pid = os.getpid()
        con: sqlite3.Connection | None = None
        with self._lock:
            if self._pid != pid:
                # A forked child must not touch its parent's connections, not even to close.
                self._pid = pid
                self._connections, self._idle = [], []
            if self._idle:
                con = self._idle.pop()
        if con is None:
            con = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                con.close()
                raise
            with self._lock:
                self._connections.append(con)
        try:
            yield con
        finally:
            with self._lock:
                if self._pid == pid and con in self._connections:
                    self._idle.append(con)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._use() as con:
            return con.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._use() as con:
            return con.execute(sql, params).rowcount

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._use() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (a full disk): never leave a transaction
                # open on a connection that goes back to the pool.
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            connections, self._connections, self._idle = self._connections, [], []
            mine = self._pid == os.getpid()
        if mine:
            for con in connections:
                con.close()


class DiskStore(_LocalAsyncMixin, _BaseStore, ResponseStore, AsyncResponseStore):
    """A store on local disk (``diskcache``/SQLite), shared by every process of the user.

    Entries live in a ``diskcache.Cache`` (values as raw bytes, never pickled, and never
    unpickled: a pickled value found there is a corrupt entry; the namespace in diskcache's
    indexed tag column); tags, partitions, vectors and leases in an SQLite index beside it.
    A directory it creates is ``0700`` and every file it creates ``0600``; a directory that
    exists keeps its mode.

    A directory that cannot be used (a file in the way, a read-only file system, a corrupt
    database) is logged once, and the store misses every lookup and stores nothing; with
    ``strict=True`` it raises instead.

    Args:
        directory: where to keep it (default: ``default_cache_dir() / "responses"``).
        size_limit: bytes on disk before the oldest entries are evicted (default 1 GiB).
        eviction_policy: a diskcache policy. The default, ``"least-recently-stored"``,
            makes reads write nothing, so readers in many processes never queue behind each
            other; ``"least-recently-used"`` and ``"least-frequently-used"`` update every
            read (about 4× slower reads).
        default_ttl: the TTL the engine applies when a call sets none (``None``: no expiry).
        timeout: seconds to wait for SQLite's write lock before the operation fails (and is
            a miss, or a skipped write).
        strict: raise :class:`~haikucache.CacheStoreError` on failures instead of missing.
        settings: extra diskcache settings (e.g. ``{"sqlite_mmap_size": 2**28}``).

    Raises:
        ConfigurationError: invalid options.
        CacheStoreError: ``strict`` is set and the directory cannot be used.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        size_limit: int = 2**30,
        eviction_policy: str = "least-recently-stored",
        default_ttl: float | None = None,
        timeout: float = 1.0,
        strict: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(strict=strict, default_ttl=default_ttl)
        if eviction_policy not in (
            "least-recently-stored",
            "least-recently-used",
            "least-frequently-used",
        ):
            raise ConfigurationError(f"unknown eviction_policy {eviction_policy!r}")
        if not isinstance(size_limit, int) or size_limit < 1:
            raise ConfigurationError("size_limit must be a positive number of bytes")
        options: dict[str, Any] = {
            "size_limit": size_limit,
            "eviction_policy": eviction_policy,
            # Culling happens in put(), where evictions are counted (diskcache's own culling
            # inside set() reports nothing).
            "cull_limit": 0,
            "tag_index": True,
            # Every value stays inside SQLite: value files would be created with the process
            # umask, not 0600, and responses are small enough for blobs.
            "disk_min_file_size": 2**30,
            "statistics": False,
        }
        clash = sorted(set(settings or {}) & {*options, "timeout", "disk"})
        if clash:
            raise ConfigurationError(f"settings may not override {', '.join(clash)}")
        self.size_limit = size_limit
        index: list[_SQLiteIndex] = []

        def open_index(path: Path) -> None:
            index.append(_SQLiteIndex(path / "index.db", timeout=timeout))

        self.directory, self._cache = open_cache(
            directory,
            "responses",
            what="the response store",
            degraded="every lookup is a miss and nothing is stored",
            strict=self.strict,
            prepare=open_index,
            timeout=timeout,
            **options,
            **dict(settings or {}),
        )
        # None: the directory cannot be used, and every operation is a miss or a no-op.
        self._index: _SQLiteIndex | None = index[0] if index else None
        if self._index is None:
            with self._counter_lock:
                self._errors += 1

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    @property
    def available(self) -> bool:
        """Whether the directory could be opened (``False``: every lookup is a miss)."""
        return self._index is not None

    def get(self, key: str, *, now: float) -> CacheEntry | None:
        if self._index is None:
            self._miss()
            return None
        try:
            data = self._cache.get(key)
        except PickledDataError as exc:  # never unpickled: a pickle could run code
            self._failed_miss("read of a corrupt entry", exc)
            return None
        except Exception as exc:  # a cache failure is a miss (diskcache Timeout, sqlite3 …)
            self._failed_miss("get", exc)
            return None
        if type(data) is not bytes:
            if data is not None:
                self._failed_miss(
                    "read of a corrupt entry", _CorruptEntry(f"a {type(data).__name__} value")
                )
            else:
                self._miss()
            return None
        entry = self._decode(key, data, now)
        if entry is not None:
            self._hit()
        return entry

    def put(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        index = self._index
        if index is None:
            return False
        data = self._encode_for_put(entry)
        if data is None:
            return False
        rows = self._index_rows(entry, vector)
        try:
            # The entry's index rows go in before the entry, and the rows it no longer has
            # go only after it is stored: an entry is never servable without the rows that
            # invalidate(tag=...) finds it by. When the index cannot be written (locked for
            # longer than `timeout`, even after SQLite's busy retries), nothing is stored.
            stale = self._index_entry(index, entry, rows) if rows else None
            self._cache.set(entry.key, data, expire=entry.lifetime, tag=entry.namespace)
        except Exception as exc:  # e.g. sqlite3 "database or disk is full": the call goes on
            self._failed("put", exc)
            return False
        self._succeeded("put")
        if stale is not None:
            try:
                self._unindex_stale(index, entry.key, rows, stale)
            except Exception as exc:  # rows of an older entry left behind: harmless
                self._failed("index cleanup", exc)
        try:
            self._cull(index, entry.created_at)
        except Exception as exc:  # stored, but over the size limit until the next put
            self._failed("eviction", exc)
        return True

    @staticmethod
    def _index_rows(entry: CacheEntry, vector: bytes | None) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = [
            ("t:" + tag, entry.key, entry.expires_at, entry.created_at, None, None)
            for tag in entry.tags
        ]
        if entry.partition is not None:
            rows.append(
                (
                    "p:" + entry.partition,
                    entry.key,
                    entry.expires_at,
                    entry.created_at,
                    entry.text,
                    vector,
                )
            )
        return rows

    @staticmethod
    def _index_entry(
        index: _SQLiteIndex, entry: CacheEntry, rows: list[tuple[Any, ...]]
    ) -> int | None:
        """Add the entry's rows; the log sequence to clean up below, or ``None`` if the key
        has no rows but these."""
        groups = [row[0] for row in rows]
        marks = ",".join("?" * len(groups))
        with index.write() as con:
            con.executemany("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?)", rows)
            seq = 0
            if entry.partition is not None:
                cursor = con.execute(
                    "INSERT INTO plog (grp, key) VALUES (?, ?)", ("p:" + entry.partition, entry.key)
                )
                seq = int(cursor.lastrowid or 0)
            ((stale,),) = con.execute(
                f"SELECT EXISTS (SELECT 1 FROM members WHERE key = ? AND grp NOT IN ({marks}))"
                " OR EXISTS (SELECT 1 FROM plog WHERE key = ? AND seq <> ?)",
                (entry.key, *groups, entry.key, seq),
            ).fetchall()
        return seq if stale else None

    @staticmethod
    def _unindex_stale(
        index: _SQLiteIndex, key: str, rows: list[tuple[Any, ...]], seq: int
    ) -> None:
        groups = [row[0] for row in rows]
        marks = ",".join("?" * len(groups))
        with index.write() as con:
            con.execute(
                f"DELETE FROM members WHERE key = ? AND grp NOT IN ({marks})", (key, *groups)
            )
            con.execute("DELETE FROM plog WHERE key = ? AND seq <> ?", (key, seq))

    def _cull(self, index: _SQLiteIndex, now: float) -> None:
        if self._cache.volume() <= self.size_limit:
            return
        self._cache.expire()
        evicted = self._cache.cull()
        self._evicted(evicted)
        # The index cannot see diskcache's evictions; sweep its expired rows and its oldest
        # rows (the oldest entries are the ones evicted first) whose entry is gone.
        index.execute("DELETE FROM members WHERE expires IS NOT NULL AND expires <= ?", (now,))
        rows = index.read(
            "SELECT grp, key FROM members ORDER BY added LIMIT ?", (2 * evicted + 16,)
        )
        gone = [(grp, key) for grp, key in rows if key not in self._cache]
        if gone:
            with index.write() as con:
                con.executemany("DELETE FROM members WHERE grp = ? AND key = ?", gone)
                con.executemany(
                    "DELETE FROM plog WHERE grp = ? AND key = ?",
                    [(grp, key) for grp, key in gone if grp.startswith("p:")],
                )

    def delete(self, key: str) -> bool:
        if self._index is None:
            return False
        try:
            removed = bool(self._cache.delete(key))
            with self._index.write() as con:
                con.execute("DELETE FROM members WHERE key = ?", (key,))
                con.execute("DELETE FROM plog WHERE key = ?", (key,))
        except Exception as exc:
            self._failed("delete", exc)
            return False
        return removed

    def _stored_entry(self, key: str) -> tuple[bool, CacheEntry | None]:
        """Whether something is stored under ``key``, and the entry if it is readable."""
        try:
            data = self._cache.get(key)
        except PickledDataError:
            return True, None
        if data is None:
            return False, None
        try:
            return True, None if type(data) is not bytes else decode_entry(data, key=key)
        except ValueError:
            return True, None

    def invalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        _check_filters(key, tag, namespace)
        if self._index is None:
            return 0
        try:
            if key is None and tag is None:
                # diskcache's tag column holds the namespace: one indexed DELETE.
                return int(self._cache.evict(namespace))
            if key is not None:
                candidates = [key]
            else:
                rows = self._index.read("SELECT key FROM members WHERE grp = ?", ("t:" + str(tag),))
                candidates = [k for (k,) in rows]
            removed = 0
            forget: list[str] = []  # keys whose index rows no longer lead to a live entry
            for candidate in candidates:
                # Check what is stored now: a key may have been stored again without the tag.
                with self._cache.transact():
                    present, entry = self._stored_entry(candidate)
                    if not present:
                        forget.append(candidate)
                    elif entry is None or _matches(entry, tag, namespace):
                        # (An unreadable entry is removed too.)
                        removed += bool(self._cache.delete(candidate))
                        forget.append(candidate)
                    elif tag is not None and tag not in entry.tags:
                        forget.append(candidate)
            if forget:
                with self._index.write() as con:
                    if tag is None:
                        con.executemany("DELETE FROM members WHERE key = ?", [(k,) for k in forget])
                        con.executemany("DELETE FROM plog WHERE key = ?", [(k,) for k in forget])
                    else:
                        con.executemany(
                            "DELETE FROM members WHERE grp = ? AND key = ?",
                            [("t:" + tag, k) for k in forget],
                        )
            return removed
        except Exception as exc:
            self._failed("invalidate", exc)
            return 0

    def iter_partition(self, partition: str, *, now: float) -> Iterator[PartitionMember]:
        if self._index is None:
            return iter(())
        try:
            rows = self._index.read(
                "SELECT key, text, vector, expires FROM members"
                " WHERE grp = ? AND (expires IS NULL OR expires > ?)",
                ("p:" + partition, now),
            )
        except Exception as exc:
            self._failed("partition read", exc)
            return iter(())
        return iter(
            [PartitionMember(k, t, None if v is None else bytes(v), e) for k, t, v, e in rows]
        )

    def partition_since(
        self, partition: str, cursor: str | None, *, now: float
    ) -> tuple[list[PartitionMember], str]:
        if self._index is None:
            return [], "0" if cursor is None else cursor
        grp = "p:" + partition
        try:
            if cursor is None:
                # The log's end first, then the members: nothing stored in between is missed
                # (it may come twice, which is harmless).
                ((end,),) = self._index.read("SELECT COALESCE(MAX(seq), 0) FROM plog")
                return list(self.iter_partition(partition, now=now)), str(end)
            rows = self._index.read(
                "SELECT l.seq, m.key, m.text, m.vector, m.expires FROM plog l"
                " JOIN members m ON m.grp = l.grp AND m.key = l.key"
                " WHERE l.grp = ? AND l.seq > ? ORDER BY l.seq",
                (grp, int(cursor)),
            )
        except Exception as exc:
            self._failed("partition read", exc)
            return [], "0" if cursor is None else cursor
        members = [
            PartitionMember(k, t, None if v is None else bytes(v), e)
            for _, k, t, v, e in rows
            if e is None or e > now
        ]
        return members, str(rows[-1][0]) if rows else cursor

    def append_log(self, name: str, records: Sequence[bytes]) -> None:
        """Append ``records`` to the shared log ``name`` (the planner's observations), for
        every process on this machine; a failure drops them."""
        if self._index is None or not records:
            return
        try:
            self._log_table()
            with self._index.write() as con:
                con.executemany(
                    "INSERT INTO logs (name, record) VALUES (?, ?)", [(name, r) for r in records]
                )
                last = con.execute("SELECT max(seq) FROM logs").fetchone()[0] or 0
                if last % 1000 < len(records):  # now and then, keep the newest records
                    con.execute(
                        "DELETE FROM logs WHERE name = ? AND seq <= ?", (name, last - _LOG_LIMIT)
                    )
        except Exception as exc:
            self._failed("log append", exc)

    def _log_table(self) -> None:
        if not getattr(self, "_log_ready", False) and self._index is not None:
            self._index.execute(_LOG_SCHEMA)
            self._log_ready = True

    def read_log(self, name: str, cursor: str | None) -> tuple[list[bytes], str]:
        """The records appended to ``name`` after ``cursor`` (``None``: all), and the new
        cursor; nothing on a failure."""
        after = int(cursor) if cursor else 0
        if self._index is None:
            return [], str(after)
        try:
            self._log_table()
            rows = self._index.read(
                "SELECT seq, record FROM logs WHERE name = ? AND seq > ? ORDER BY seq",
                (name, after),
            )
        except Exception as exc:
            self._failed("log read", exc)
            return [], str(after)
        return [bytes(r) for _, r in rows], str(rows[-1][0] if rows else after)

    def try_lock(self, name: str, *, ttl: float) -> str | None:
        _check_ttl("ttl", ttl)
        if self._index is None:
            return NO_LOCK
        token = _new_token()
        clock = time.time()  # leases are shared across processes: wall time
        try:
            taken = self._index.execute(
                "INSERT INTO locks VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET token = excluded.token, expires = excluded.expires"
                " WHERE locks.expires <= ?",
                (name, token, clock + ttl, clock),
            )
        except Exception as exc:
            self._failed("lock", exc)
            return NO_LOCK
        return token if taken == 1 else None

    def unlock(self, name: str, token: str) -> bool:
        if token == NO_LOCK or self._index is None:
            return True
        try:
            return (
                self._index.execute("DELETE FROM locks WHERE name = ? AND token = ?", (name, token))
                == 1
            )
        except Exception as exc:
            self._failed("unlock", exc)
            return False

    def renew(self, name: str, token: str, *, ttl: float) -> bool:
        """Extend the lease ``name`` to ``ttl`` seconds from now, if ``token`` holds it."""
        _check_ttl("ttl", ttl)
        if token == NO_LOCK or self._index is None:
            return True
        try:
            return (
                self._index.execute(
                    "UPDATE locks SET expires = ? WHERE name = ? AND token = ?",
                    (time.time() + ttl, name, token),
                )
                == 1
            )
        except Exception as exc:
            self._failed("lease renewal", exc)
            return False

    def clear(self) -> None:
        if self._index is None:
            return
        try:
            self._cache.clear()
            self._index.execute("DELETE FROM members")
            self._index.execute("DELETE FROM plog")
        except Exception as exc:
            self._failed("clear", exc)

    def stats(self) -> StoreStats:
        if self._index is None:
            return self._counters(0, 0)
        try:
            entries, size = len(self._cache), int(self._cache.volume())
        except Exception as exc:
            self._failed("stats", exc)
            entries = size = 0
        return self._counters(entries, size)

    def close(self) -> None:
        """Close this thread's diskcache connection and every index connection."""
        if self._index is None:
            return
        self._cache.close()
        self._index.close()


# --------------------------------------------------------------------------- redis

# get: the blob, and the hit counter bumped in the same round trip. HINCRBY alone would
# recreate an entry that expired between two commands, without a TTL.
_GET_LUA = """
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
return {v, redis.call('HINCRBY', KEYS[1], 'h', 1)}
"""

# put: the entry hash, its TTL, its membership in the namespace/tag/partition sets and, for a
# semantic entry, a record in its partition's log (a stream other processes tail).
# Index sets are sorted by expiry so expired members are trimmed on every put, and an index
# set expires with its longest-lived member (or never, once it holds an entry without TTL).
# HSET comes first: over maxmemory (noeviction) Redis refuses it and so the whole put, while
# a script whose first write succeeded (a DEL, say) may go on writing past the limit.
_PUT_LUA = """
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'h', ARGV[9], 'n', ARGV[6], 't', ARGV[7], 's', ARGV[8])
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'x', ARGV[10])
else
  redis.call('HDEL', KEYS[1], 'x')
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
local last = #KEYS
if ARGV[11] == '1' then last = #KEYS - 1 end
for i = 2, last do
  local existed = redis.call('EXISTS', KEYS[i])
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[4])
  if ttl > 0 then
    local left = redis.call('PTTL', KEYS[i])
    if existed == 0 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', KEYS[i], ttl) end
  else
    redis.call('PERSIST', KEYS[i])
  end
end
if ARGV[11] == '1' then
  -- The partition's log of new members (the last KEY), living as long as its set.
  local log = KEYS[#KEYS]
  redis.call('XADD', log, '*', 'k', ARGV[5])
  local left = redis.call('PTTL', KEYS[last])
  if left > 0 then redis.call('PEXPIRE', log, left) else redis.call('PERSIST', log) end
end
return 1
"""

_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisStore(_BaseStore, ResponseStore, AsyncResponseStore):
    """A store in Redis, shared by every process and machine that points at it.

    Layout (``prefix`` defaults to ``hc:``): ``hc:e:<key>`` is a hash holding the entry
    (``v``), its hit counter (``h``), namespace, tags, and for semantic entries the text and
    vector; ``hc:ns:<namespace>``, ``hc:t:<tag>`` and ``hc:p:<partition>`` are sorted sets
    of keys for invalidation and semantic search; ``hc:pl:<partition>`` is a stream of the
    keys stored in a partition, which each process's semantic index tails;
    ``hc:lock:<name>`` are leases.

    Entries carry Redis TTLs when they expire, so ``maxmemory`` with a ``volatile-*`` policy
    evicts answers but never the index sets (with ``allkeys-*`` an evicted index set only
    makes a later invalidation miss some entries; each entry still expires on its own).

    Sync methods use a ``redis.Redis`` client; the ``a``-prefixed twins use a
    ``redis.asyncio`` client created on first use and bound to that event loop (call
    :meth:`aclose` before the loop ends).

    Args:
        url: a ``redis://`` or ``rediss://`` URL.
        prefix: prepended to every key, to share a database with other data.
        default_ttl: the TTL the engine applies when a call sets none (``None``: no expiry).
        socket_timeout: seconds before a Redis operation fails (and is a miss).
        cooldown: after a connection failure, seconds during which the store is not tried
            (every lookup is a miss at once instead of waiting for a timeout again).
        strict: raise :class:`~haikucache.CacheStoreError` on failures instead of missing.
        client: a ready ``redis.Redis`` to use instead of ``url`` (not closed by us).
        async_client: a ready ``redis.asyncio.Redis`` (not closed by us); without it the
            ``a``-methods connect to ``url``.

    Raises:
        MissingDependencyError: the ``redis`` package is not installed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "hc:",
        default_ttl: float | None = None,
        socket_timeout: float = 0.5,
        cooldown: float = 1.0,
        strict: bool = False,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        super().__init__(strict=strict, default_ttl=default_ttl)
        try:
            import redis
            import redis.exceptions
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis", "The Redis store") from exc
        self.url = url
        self.prefix = prefix
        self.cooldown = float(cooldown)
        self._redis_errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)
        self._connection_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self._oom_error: type[BaseException] = getattr(
            redis.exceptions, "OutOfMemoryError", redis.exceptions.ResponseError
        )
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "health_check_interval": 0,
        }
        self._owns_client = client is None
        try:
            # One attempt: a cache lookup must never hold a call up with retries; a failure
            # is a miss, and the cooldown keeps a dead server from costing a timeout per call.
            self._client: Any = (
                client
                if client is not None
                else redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **self._options)
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {url!r}: {exc}") from exc
        self._get_script = self._client.register_script(_GET_LUA)
        self._put_script = self._client.register_script(_PUT_LUA)
        self._unlock_script = self._client.register_script(_UNLOCK_LUA)
        self._renew_script = self._client.register_script(_RENEW_LUA)
        self._owns_aclient = async_client is None
        self._aclient: Any = async_client
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._ascripts: tuple[Any, Any, Any, Any] | None = None
        self._down_until = 0.0

    def __repr__(self) -> str:
        return f"RedisStore({_redact(self.url)!r}, prefix={self.prefix!r})"

    # -- keys and shared pieces of the sync and async paths

    def _ek(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _index_keys(self, entry: CacheEntry) -> list[str]:
        keys = [f"{self.prefix}ns:{entry.namespace}"]
        keys.extend(f"{self.prefix}t:{tag}" for tag in entry.tags)
        if entry.partition is not None:
            keys.append(f"{self.prefix}p:{entry.partition}")
            keys.append(f"{self.prefix}pl:{entry.partition}")
        return keys

    def _put_args(self, entry: CacheEntry, vector: bytes | None) -> list[Any] | None:
        data = self._encode_for_put(entry)
        if data is None:
            return None
        lifetime = entry.lifetime
        ttl_ms = 0 if lifetime is None else max(1, math.ceil(lifetime * 1000))
        score = "+inf" if entry.expires_at is None else repr(entry.expires_at)
        return [
            data,
            ttl_ms,
            score,
            repr(entry.created_at),
            entry.key,
            entry.namespace,
            _dumps(list(entry.tags)),
            "" if entry.text is None else entry.text,
            entry.hits,
            b"" if vector is None else vector,
            "1" if entry.partition is not None else "0",
        ]

    def _skipping(self) -> bool:
        # While a recent connection failure cools down, answer at once: a miss.
        return not self.strict and self._down_until > 0 and time.monotonic() < self._down_until

    def _error(self, op: str, exc: BaseException, *, miss: bool = False) -> None:
        if isinstance(exc, self._connection_errors):
            self._down_until = time.monotonic() + self.cooldown
        if miss:
            self._miss()
        self._failed(op, exc)

    def _ok(self) -> None:
        self._down_until = 0.0

    def _got(self, key: str, raw: Any, now: float) -> CacheEntry | None:
        self._ok()
        self._succeeded("get")
        if raw is None:
            self._miss()
            return None
        data, hits = raw
        entry = self._decode(key, bytes(data), now, int(hits))
        if entry is None:
            return None
        self._hit()
        return entry

    def _is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, self._oom_error) and "maxmemory" in str(exc)

    @staticmethod
    def _stored(fields: Sequence[Any]) -> tuple[str | None, tuple[str, ...]]:
        namespace, tags = fields
        if namespace is None:
            return None, ()
        try:
            parsed = json.loads(tags) if tags else []
        except ValueError:
            parsed = []
        return namespace.decode("utf-8", "surrogatepass"), tuple(
            t for t in parsed if isinstance(t, str)
        )

    def _victims(
        self,
        candidates: Sequence[str],
        stored: Sequence[Sequence[Any]],
        tag: str | None,
        namespace: str | None,
    ) -> tuple[list[str], list[str]]:
        """The entries to delete, and the index members to drop (deleted, gone or stale)."""
        victims: list[str] = []
        forget: list[str] = []
        for candidate, fields in zip(candidates, stored, strict=True):
            stored_namespace, stored_tags = self._stored(fields)
            if stored_namespace is None:
                forget.append(candidate)
            elif (tag is None or tag in stored_tags) and (
                namespace is None or stored_namespace == namespace
            ):
                victims.append(candidate)
                forget.append(candidate)
            elif tag is not None and tag not in stored_tags:
                forget.append(candidate)
        return victims, forget

    def _group(self, key: str | None, tag: str | None, namespace: str | None) -> str | None:
        if key is not None:
            return None
        if tag is not None:
            return f"{self.prefix}t:{tag}"
        return f"{self.prefix}ns:{namespace}"

    # -- sync

    def get(self, key: str, *, now: float) -> CacheEntry | None:
        if self._skipping():
            self._miss()
            return None
        try:
            raw = self._get_script(keys=[self._ek(key)])
        except Exception as exc:
            if not self._is_oom(exc):
                self._error("get", exc, miss=True)
                return None
            # Over maxmemory with noeviction the counter write is refused: read without it.
            try:
                data = self._client.hget(self._ek(key), "v")
            except Exception as exc2:
                self._error("get", exc2, miss=True)
                return None
            raw = None if data is None else (data, 0)
        return self._got(key, raw, now)

    def put(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        if self._skipping():
            return False
        args = self._put_args(entry, vector)
        if args is None:
            return False
        try:
            self._put_script(keys=[self._ek(entry.key), *self._index_keys(entry)], args=args)
        except Exception as exc:
            self._error("put", exc)
            return False
        self._ok()
        self._succeeded("put")
        return True

    def delete(self, key: str) -> bool:
        if self._skipping():
            return False
        try:
            return bool(self._client.delete(self._ek(key)))
        except Exception as exc:
            self._error("delete", exc)
            return False

    def invalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        _check_filters(key, tag, namespace)
        if self._skipping():
            return 0
        group = self._group(key, tag, namespace)
        try:
            if group is None:
                candidates = [str(key)]
            else:
                candidates = [m.decode() for m in self._client.zrange(group, 0, -1)]
            removed = 0
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                pipe = self._client.pipeline(transaction=False)
                for candidate in chunk:
                    pipe.hmget(self._ek(candidate), ["n", "t"])
                victims, forget = self._victims(chunk, pipe.execute(), tag, namespace)
                if victims:
                    removed += int(self._client.delete(*(self._ek(v) for v in victims)))
                if group is not None and forget:
                    self._client.zrem(group, *forget)
            return removed
        except Exception as exc:
            self._error("invalidate", exc)
            return 0

    def iter_partition(self, partition: str, *, now: float) -> Iterator[PartitionMember]:
        group = f"{self.prefix}p:{partition}"
        if self._skipping():
            return iter(())
        try:
            members = self._client.zrangebyscore(group, f"({now!r}", "+inf", withscores=True)
            pipe = self._client.pipeline(transaction=False)
            for member, _ in members:
                pipe.hmget(self._ek(member.decode()), ["s", "x"])
            rows = pipe.execute()
            gone = [m for (m, _), (s, _x) in zip(members, rows, strict=True) if s is None]
            if gone:
                self._client.zrem(group, *gone)
        except Exception as exc:
            self._error("partition read", exc)
            return iter(())
        return iter(_members(members, rows))

    def partition_since(
        self, partition: str, cursor: str | None, *, now: float
    ) -> tuple[list[PartitionMember], str]:
        log = f"{self.prefix}pl:{partition}"
        if self._skipping():
            return [], "0-0" if cursor is None else cursor
        try:
            if cursor is None:
                # The log's end first, then the members: nothing stored in between is missed.
                newest = self._client.xrevrange(log, "+", "-", count=1)
                end = newest[0][0].decode() if newest else "0-0"
                return list(self.iter_partition(partition, now=now)), end
            records = self._client.xrange(log, f"({cursor}", "+", count=10_000)
            if not records:
                return [], cursor
            keys = [fields[b"k"].decode() for _, fields in records]
            group = f"{self.prefix}p:{partition}"
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self._ek(key), ["s", "x"])
                pipe.zscore(group, key)
            replies = pipe.execute()
        except Exception as exc:
            self._error("partition read", exc)
            return [], "0-0" if cursor is None else cursor
        out = []
        for i, key in enumerate(keys):
            (text, vector), score = replies[2 * i], replies[2 * i + 1]
            if text is None or score is None or (not math.isinf(score) and score <= now):
                continue
            out.append(
                PartitionMember(
                    key=key,
                    text=text.decode("utf-8", "surrogatepass") or None,
                    vector=vector or None,
                    expires_at=None if math.isinf(score) else float(score),
                )
            )
        return out, records[-1][0].decode()

    def append_log(self, name: str, records: Sequence[bytes]) -> None:
        """Append ``records`` to the shared log ``name`` (a stream ``hc:log:<name>``, the
        planner's observations), for every process and machine; a failure drops them."""
        if self._skipping() or not records:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for record in records:
                pipe.xadd(
                    f"{self.prefix}log:{name}", {b"r": record}, maxlen=_LOG_LIMIT, approximate=True
                )
            pipe.execute()
        except Exception as exc:
            self._error("log append", exc)

    def read_log(self, name: str, cursor: str | None) -> tuple[list[bytes], str]:
        """The records appended to ``name`` after ``cursor`` (``None``: all), and the new
        cursor; nothing on a failure."""
        after = cursor or "0-0"
        if self._skipping():
            return [], after
        try:
            found = self._client.xrange(f"{self.prefix}log:{name}", f"({after}", "+")
        except Exception as exc:
            self._error("log read", exc)
            return [], after
        if not found:
            return [], after
        return [fields[b"r"] for _, fields in found], found[-1][0].decode()

    def try_lock(self, name: str, *, ttl: float) -> str | None:
        _check_ttl("ttl", ttl)
        if self._skipping():
            return NO_LOCK
        token = _new_token()
        try:
            taken = self._client.set(
                f"{self.prefix}lock:{name}", token, nx=True, px=max(1, math.ceil(ttl * 1000))
            )
        except Exception as exc:
            self._error("lock", exc)
            return NO_LOCK
        return token if taken else None

    def unlock(self, name: str, token: str) -> bool:
        if token == NO_LOCK:
            return True
        try:
            return bool(self._unlock_script(keys=[f"{self.prefix}lock:{name}"], args=[token]))
        except Exception as exc:
            self._error("unlock", exc)
            return False

    def renew(self, name: str, token: str, *, ttl: float) -> bool:
        """Extend the lease ``name`` to ``ttl`` seconds from now, if ``token`` holds it."""
        _check_ttl("ttl", ttl)
        if token == NO_LOCK:
            return True
        if self._skipping():
            return False
        try:
            return bool(
                self._renew_script(
                    keys=[f"{self.prefix}lock:{name}"],
                    args=[token, max(1, math.ceil(ttl * 1000))],
                )
            )
        except Exception as exc:
            self._error("lease renewal", exc)
            return False

    def clear(self) -> None:
        if self._skipping():
            return
        try:
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=_glob(self.prefix) + "*", count=1000):
                if name.startswith(f"{self.prefix}lock:".encode()):
                    continue  # leases of calls in flight are not cache entries
                batch.append(name)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
        except Exception as exc:
            self._error("clear", exc)

    def stats(self) -> StoreStats:
        """Counters; ``entries`` and ``bytes`` scan the prefix (O(n): for diagnostics)."""
        entries = size = evictions = 0
        if self._skipping():
            return self._counters(entries, size, evictions)
        try:
            names: list[bytes] = []
            for name in self._client.scan_iter(match=_glob(self.prefix) + "e:*", count=1000):
                names.append(name)
                if len(names) >= 1000:
                    entries, size = self._measure(names, entries, size)
                    names = []
            entries, size = self._measure(names, entries, size)
            evictions = int(self._client.info("stats").get("evicted_keys", 0))
        except Exception as exc:
            self._error("stats", exc)
        return self._counters(entries, size, evictions)

    def _measure(self, names: list[bytes], entries: int, size: int) -> tuple[int, int]:
        if not names:
            return entries, size
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hstrlen(name, "v")
        lengths = pipe.execute()
        return entries + sum(1 for n in lengths if n), size + sum(lengths)

    def close(self) -> None:
        """Close the sync client's connections (the async client needs :meth:`aclose`)."""
        if self._owns_client:
            self._client.close()

    # -- async

    async def _aredis(self) -> tuple[Any, tuple[Any, Any, Any, Any]]:
        loop = asyncio.get_running_loop()
        if self._aclient is None or (self._owns_aclient and self._aloop is not loop):
            import redis.asyncio
            import redis.asyncio.retry
            from redis.backoff import NoBackoff

            # A client's connections belong to the loop that opened them; a new loop gets a
            # new client (close the old one with aclose() before its loop ends).
            self._aclient = redis.asyncio.Redis.from_url(
                self.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0), **self._options
            )
            self._aloop = loop
            self._ascripts = None
        if self._ascripts is None:
            self._ascripts = (
                self._aclient.register_script(_GET_LUA),
                self._aclient.register_script(_PUT_LUA),
                self._aclient.register_script(_UNLOCK_LUA),
                self._aclient.register_script(_RENEW_LUA),
            )
        return self._aclient, self._ascripts

    async def aget(self, key: str, *, now: float) -> CacheEntry | None:
        """Coroutine twin of :meth:`get`."""
        if self._skipping():
            self._miss()
            return None
        try:
            client, (get_script, _, _, _) = await self._aredis()
            raw = await get_script(keys=[self._ek(key)])
        except Exception as exc:
            if not self._is_oom(exc):
                self._error("get", exc, miss=True)
                return None
            try:
                data = await client.hget(self._ek(key), "v")
            except Exception as exc2:
                self._error("get", exc2, miss=True)
                return None
            raw = None if data is None else (data, 0)
        return self._got(key, raw, now)

    async def aput(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        """Coroutine twin of :meth:`put`."""
        if self._skipping():
            return False
        args = self._put_args(entry, vector)
        if args is None:
            return False
        try:
            _, (_, put_script, _, _) = await self._aredis()
            await put_script(keys=[self._ek(entry.key), *self._index_keys(entry)], args=args)
        except Exception as exc:
            self._error("put", exc)
            return False
        self._ok()
        self._succeeded("put")
        return True

    async def adelete(self, key: str) -> bool:
        """Coroutine twin of :meth:`delete`."""
        if self._skipping():
            return False
        try:
            client, _ = await self._aredis()
            return bool(await client.delete(self._ek(key)))
        except Exception as exc:
            self._error("delete", exc)
            return False

    async def ainvalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        """Coroutine twin of :meth:`invalidate`."""
        _check_filters(key, tag, namespace)
        if self._skipping():
            return 0
        group = self._group(key, tag, namespace)
        try:
            client, _ = await self._aredis()
            if group is None:
                candidates = [str(key)]
            else:
                candidates = [m.decode() for m in await client.zrange(group, 0, -1)]
            removed = 0
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                pipe = client.pipeline(transaction=False)
                for candidate in chunk:
                    pipe.hmget(self._ek(candidate), ["n", "t"])
                victims, forget = self._victims(chunk, await pipe.execute(), tag, namespace)
                if victims:
                    removed += int(await client.delete(*(self._ek(v) for v in victims)))
                if group is not None and forget:
                    await client.zrem(group, *forget)
            return removed
        except Exception as exc:
            self._error("invalidate", exc)
            return 0

    async def aiter_partition(
        self, partition: str, *, now: float
    ) -> AsyncIterator[PartitionMember]:
        """Async-iterator twin of :meth:`iter_partition`."""
        group = f"{self.prefix}p:{partition}"
        if self._skipping():
            return
        try:
            client, _ = await self._aredis()
            members = await client.zrangebyscore(group, f"({now!r}", "+inf", withscores=True)
            pipe = client.pipeline(transaction=False)
            for member, _ in members:
                pipe.hmget(self._ek(member.decode()), ["s", "x"])
            rows = await pipe.execute()
            gone = [m for (m, _), (s, _x) in zip(members, rows, strict=True) if s is None]
            if gone:
                await client.zrem(group, *gone)
        except Exception as exc:
            self._error("partition read", exc)
            return
        for member in _members(members, rows):
            yield member

    async def atry_lock(self, name: str, *, ttl: float) -> str | None:
        """Coroutine twin of :meth:`try_lock`."""
        _check_ttl("ttl", ttl)
        if self._skipping():
            return NO_LOCK
        token = _new_token()
        try:
            client, _ = await self._aredis()
            taken = await client.set(
                f"{self.prefix}lock:{name}", token, nx=True, px=max(1, math.ceil(ttl * 1000))
            )
        except Exception as exc:
            self._error("lock", exc)
            return NO_LOCK
        return token if taken else None

    async def aunlock(self, name: str, token: str) -> bool:
        """Coroutine twin of :meth:`unlock`."""
        if token == NO_LOCK:
            return True
        try:
            _, (_, _, unlock_script, _) = await self._aredis()
            return bool(await unlock_script(keys=[f"{self.prefix}lock:{name}"], args=[token]))
        except Exception as exc:
            self._error("unlock", exc)
            return False

    async def arenew(self, name: str, token: str, *, ttl: float) -> bool:
        """Coroutine twin of :meth:`renew`."""
        _check_ttl("ttl", ttl)
        if token == NO_LOCK:
            return True
        if self._skipping():
            return False
        try:
            _, (_, _, _, renew_script) = await self._aredis()
            return bool(
                await renew_script(
                    keys=[f"{self.prefix}lock:{name}"],
                    args=[token, max(1, math.ceil(ttl * 1000))],
                )
            )
        except Exception as exc:
            self._error("lease renewal", exc)
            return False

    async def aclear(self) -> None:
        """Coroutine twin of :meth:`clear` (runs the sync scan in a worker thread)."""
        await asyncio.to_thread(self.clear)

    async def astats(self) -> StoreStats:
        """Coroutine twin of :meth:`stats` (runs the sync scan in a worker thread)."""
        return await asyncio.to_thread(self.stats)

    async def aclose(self) -> None:
        """Close the async client (and the sync one)."""
        if self._aclient is not None and self._owns_aclient:
            await self._aclient.aclose()
            self._aclient = None
            self._ascripts = None
        self.close()


def _members(
    members: Sequence[tuple[bytes, float]], rows: Sequence[Sequence[Any]]
) -> list[PartitionMember]:
    out = []
    for (member, score), (text, vector) in zip(members, rows, strict=True):
        if text is None:
            continue
        out.append(
            PartitionMember(
                key=member.decode(),
                text=text.decode("utf-8", "surrogatepass") or None,
                vector=vector or None,
                expires_at=None if math.isinf(score) else float(score),
            )
        )
    return out


def _glob(prefix: str) -> str:
    # SCAN MATCH is a glob: escape its special characters in a user-chosen prefix.
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


def _redact(url: str) -> str:
    # Never log a password that is part of the URL.
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
