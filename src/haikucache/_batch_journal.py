"""The batch journal: a durable record of every Message Batch the batcher submits.

Before ``POST /v1/messages/batches`` is sent, the batcher writes an *intent*: a token, the
upstream it goes to, and one row per job (``custom_id`` → exact key, namespace, model,
per-call options and the body sent). When the POST returns, the batch id is added. When the
results are in the response cache, the record is closed. So after a crash — even a SIGKILL
between the POST and its answer — :meth:`haikucache.Batcher.resume` knows every batch that
may exist upstream, finds it, and stores its answers; no batch is ever submitted twice.

States::

    submitting ──POST answered──▶ submitted ──results stored──▶ ended
        │                             │
        │ (never reached the API)     └─ the id is gone upstream ──▶ lost
        └──────────────────────────────▶ failed

Backends: :class:`DiskBatchJournal` (``diskcache``, the default, under
``default_cache_dir() / "batches"``, private to the user), :class:`RedisBatchJournal`
(shared by many machines) and :class:`MemoryBatchJournal` (one process; nothing survives it).

A damaged record never stops the others: one that cannot be read (torn, altered, not a
record) is skipped, logged, and listed in the journal's ``corrupt`` attribute, so
``records()``, :meth:`haikucache.Batcher.resume` and ``haikucache batches list`` go on with
every healthy batch. A journal directory that cannot be used at all is logged once, and the
journal keeps its batches in memory (they cannot be resumed after a crash).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ._exceptions import ConfigurationError, MissingDependencyError
from ._paths import UnreadableKey, open_cache

__all__ = [
    "OPEN_STATES",
    "BatchJournal",
    "CorruptRecord",
    "DiskBatchJournal",
    "JournalJob",
    "JournalRecord",
    "MemoryBatchJournal",
    "RedisBatchJournal",
    "open_journal",
]

logger = logging.getLogger("haikucache")

#: States of a record that may still have results to collect.
OPEN_STATES = frozenset({"submitting", "submitted"})
STATES = frozenset({"submitting", "submitted", "ended", "failed", "lost"})


@dataclass
class JournalRecord:
    """One batch the batcher submitted (or was about to submit).

    Attributes:
        token: the batcher's own id for the batch; every ``custom_id`` starts with it.
        state: ``submitting``, ``submitted``, ``ended``, ``failed`` or ``lost``.
        base_url: the upstream it was sent to.
        jobs: how many requests it holds.
        created_at: when the intent was written (the batcher's clock).
        batch_id: the ``msgbatch_…`` id, once the API answered.
        submitted_at: when the API accepted it.
        ended_at: when its results were stored (or it was given up).
        api_version: the ``anthropic-version`` it was sent with.
        betas: its ``anthropic-beta`` values.
        counts: result counts once ended (``succeeded``, ``errored``, ``canceled``,
            ``expired``, ``realtime`` for jobs re-sent realtime).
        error: why it failed or was lost.
        pid: the process that submitted it, and ``host`` its machine: a live owner's
            batches are not resumed by another process.
    """

    token: str
    state: str
    base_url: str
    jobs: int
    created_at: float
    batch_id: str | None = None
    submitted_at: float | None = None
    ended_at: float | None = None
    api_version: str = "2023-06-01"
    betas: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalRecord:
        """Read back :meth:`to_dict`.

        Raises:
            ValueError: ``data`` is not a record (a field is missing or of the wrong type).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a record is an object, not a {type(data).__name__}")
        data = dict(data)
        for name, kinds, required in _RECORD_FIELDS:
            value = data.get(name)
            if value is None and not required:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"field {name!r} is missing or has the wrong type")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {name!r} is not a finite number")
        if data["state"] not in STATES:
            raise ValueError(f"unknown state {data['state']!r}")
        betas = data.get("betas") or ()
        counts = data.get("counts") or {}
        if not isinstance(betas, (list, tuple)) or not all(isinstance(b, str) for b in betas):
            raise ValueError("field 'betas' has the wrong type")
        if not isinstance(counts, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in counts.items()
        ):
            raise ValueError("field 'counts' has the wrong type")
        data["betas"] = tuple(betas)
        data["counts"] = dict(counts)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, raw: str | bytes) -> JournalRecord:
        """Read a record stored as JSON.

        Raises:
            ValueError: ``raw`` is not the JSON of a record.
        """
        if not isinstance(raw, (str, bytes)):
            raise ValueError(f"a stored record is JSON text, not a {type(raw).__name__}")
        try:
            data = json.loads(raw)
        except RecursionError as exc:  # nested deeper than any record
            raise ValueError("nested too deeply") from exc
        return cls.from_dict(data)

    @property
    def is_open(self) -> bool:
        """Whether results may still have to be collected."""
        return self.state in OPEN_STATES

    def owner_alive(self) -> bool:
        """Whether the process that submitted it is still running (on this machine)."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


_NUMBER = (int, float)
# (field, types, required): what a stored record must hold to be read back.
_RECORD_FIELDS: tuple[tuple[str, type | tuple[type, ...], bool], ...] = (
    ("token", str, True),
    ("state", str, True),
    ("base_url", str, True),
    ("jobs", int, True),
    ("created_at", _NUMBER, True),
    ("batch_id", str, False),
    ("submitted_at", _NUMBER, False),
    ("ended_at", _NUMBER, False),
    ("api_version", str, False),
    ("error", str, False),
    ("pid", int, False),
    ("host", str, False),
)


@dataclass(frozen=True)
class CorruptRecord:
    """A journal record that could not be read, and was skipped.

    Attributes:
        token: the batcher's token of the batch (``None`` when even its key is unreadable).
        error: what is wrong with it.
    """

    token: str | None
    error: str


@dataclass(frozen=True)
class JournalJob:
    """One request of a batch, as needed to store its answer without the submitter.

    Attributes:
        custom_id: its id in the batch.
        key: the exact cache key.
        namespace: the namespace it is keyed and accounted under.
        model: the requested model.
        body: the Messages body that was sent.
        ttl: seconds its stored answer stays valid (``None``: the store's default).
        tags: invalidation tags.
        no_store: do not keep its answer.
    """

    custom_id: str
    key: str
    namespace: str
    model: str
    body: dict[str, Any]
    ttl: float | None = None
    tags: tuple[str, ...] = ()
    no_store: bool = False


def encode_jobs(rows: Sequence[str]) -> bytes:
    """Rows are JSON arrays already serialized by the batcher (each body is dumped once)."""
    return zlib.compress(("[" + ",".join(rows) + "]").encode(), 1)


def job_row(
    custom_id: str,
    key: str,
    namespace: str,
    model: str,
    body_json: str,
    ttl: float | None,
    tags: Sequence[str],
    no_store: bool,
) -> str:
    """The journal row of one job, around its already-serialized body."""
    head = json.dumps([custom_id, key, namespace, model, ttl, list(tags), no_store])
    return head[:-1] + "," + body_json + "]"


def decode_jobs(blob: bytes) -> list[JournalJob]:
    """Read back :func:`encode_jobs`.

    Raises:
        ValueError: the blob is torn, altered or not job rows.
    """
    try:
        rows = json.loads(zlib.decompress(blob))
    except zlib.error as exc:
        raise ValueError(f"job rows do not decompress: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("job rows nested too deeply") from exc
    if not isinstance(rows, list):
        raise ValueError("job rows are not a list")
    jobs = []
    for r in rows:
        if not (
            isinstance(r, list)
            and len(r) == 8
            and all(isinstance(v, str) for v in r[:4])
            and (r[4] is None or (isinstance(r[4], _NUMBER) and not isinstance(r[4], bool)))
            and isinstance(r[5], list)
            and all(isinstance(t, str) for t in r[5])
            and isinstance(r[7], dict)
        ):
            raise ValueError("a job row has the wrong shape")
        jobs.append(
            JournalJob(
                custom_id=r[0],
                key=r[1],
                namespace=r[2],
                model=r[3],
                ttl=r[4],
                tags=tuple(r[5]),
                no_store=bool(r[6]),
                body=r[7],
            )
        )
    return jobs


class BatchJournal(Protocol):
    """Where the batcher keeps its batches; see the module documentation."""

    def begin(self, record: JournalRecord, rows: bytes) -> None:
        """Durably record a batch about to be submitted, with its encoded job rows."""
        ...

    def update(self, record: JournalRecord) -> None:
        """Replace a record (state changes); closing a record drops its job rows."""
        ...

    def get(self, token: str) -> JournalRecord | None: ...

    def find(self, batch_id: str) -> JournalRecord | None:
        """The record of an upstream batch id (or of a token)."""
        ...

    def jobs(self, token: str) -> list[JournalJob]: ...

    def records(self) -> list[JournalRecord]:
        """Every record, oldest first."""
        ...

    def mark_delivered(self, token: str, custom_id: str) -> None:
        """Durably note that the answer of job ``custom_id`` was accounted (and stored when
        storable): a resume after a crash hands it over for $0 instead of accounting it
        twice. Dropped with the job rows when the record closes."""
        ...

    def delivered(self, token: str) -> set[str]:
        """The ``custom_id`` s marked by :meth:`mark_delivered` while ``token`` is open."""
        ...

    def close(self) -> None: ...


class _JournalBase:
    #: The records that the last :meth:`records` (and any ``get`` or ``jobs`` since) could
    #: not read, and skipped; each is also logged. ``haikucache batches list`` reports them.
    corrupt: list[CorruptRecord]

    def __init__(self) -> None:
        self.corrupt = []
        self._reported: set[CorruptRecord] = set()

    def _damaged(self, token: str | None, what: str, exc: BaseException) -> None:
        """Note a record that cannot be read (logged once per record and fault)."""
        damage = CorruptRecord(token, f"{what}: {type(exc).__name__}: {exc}")
        if damage not in self.corrupt:
            self.corrupt.append(damage)
        if damage in self._reported:
            logger.debug("haikucache: %r: %s is still unreadable", self, damage)
            return
        self._reported.add(damage)
        logger.warning(
            "haikucache: %r: skipped the unreadable record of batch %s (%s); the other "
            "batches are listed and resumed",
            self,
            token if token is not None else "<unknown>",
            damage.error,
        )

    def _read(self, token: str, raw: Any) -> JournalRecord | None:
        """The record stored as ``raw`` under ``token``; ``None`` if absent or unreadable."""
        if raw is None:
            return None
        try:
            record = JournalRecord.from_json(raw)
            if record.token != token:
                raise ValueError(f"the record of {record.token!r} is filed under {token!r}")
        except ValueError as exc:
            self._damaged(token, "record", exc)
            return None
        return record

    def _jobs(self, token: str, blob: Any) -> list[JournalJob]:
        """The job rows stored as ``blob``; none if absent or unreadable."""
        if not blob:
            return []
        try:
            if not isinstance(blob, bytes):
                raise ValueError(f"job rows are bytes, not a {type(blob).__name__}")
            return decode_jobs(blob)
        except ValueError as exc:
            self._damaged(token, "job rows", exc)
            return []

    def find(self, batch_id: str) -> JournalRecord | None:
        for record in self.records():
            if batch_id in (record.batch_id, record.token):
                return record
        return None

    def records(self) -> list[JournalRecord]:  # pragma: no cover - overridden
        raise NotImplementedError

    def outstanding(self) -> list[JournalRecord]:
        """Records whose results may still have to be collected."""
        return [r for r in self.records() if r.is_open]


def _done_tag(token: str) -> str:
    return f"done:{token}"


def _sorted(records: Iterator[JournalRecord]) -> list[JournalRecord]:
    return sorted(records, key=lambda r: (r.created_at, r.token))


class MemoryBatchJournal(_JournalBase):
    """A journal that lives as long as the process (nothing to resume after a crash)."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, JournalRecord] = {}
        self._rows: dict[str, bytes] = {}
        self._done: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryBatchJournal()"

    def begin(self, record: JournalRecord, rows: bytes) -> None:
        with self._lock:
            self._records[record.token] = JournalRecord.from_dict(record.to_dict())
            self._rows[record.token] = rows

    def update(self, record: JournalRecord) -> None:
        with self._lock:
            self._records[record.token] = JournalRecord.from_dict(record.to_dict())
            if not record.is_open:
                self._rows.pop(record.token, None)
                self._done.pop(record.token, None)

    def get(self, token: str) -> JournalRecord | None:
        with self._lock:
            record = self._records.get(token)
            return JournalRecord.from_dict(record.to_dict()) if record else None

    def jobs(self, token: str) -> list[JournalJob]:
        with self._lock:
            blob = self._rows.get(token)
        return decode_jobs(blob) if blob else []

    def mark_delivered(self, token: str, custom_id: str) -> None:
        with self._lock:
            self._done.setdefault(token, set()).add(custom_id)

    def delivered(self, token: str) -> set[str]:
        with self._lock:
            return set(self._done.get(token, ()))

    def records(self) -> list[JournalRecord]:
        with self._lock:
            return _sorted(JournalRecord.from_dict(r.to_dict()) for r in self._records.values())

    def close(self) -> None:
        pass


class DiskBatchJournal(_JournalBase):
    """A journal on local disk (``diskcache``/SQLite), shared by every process of the user.

    A directory that cannot be used (a file in the way, a read-only file system, a corrupt
    database) is logged once, and the journal keeps its batches in memory for the life of
    the object: batches still run, but cannot be resumed after a crash.

    Args:
        directory: default ``default_cache_dir() / "batches"``; a directory it creates is
            0700 and a file it creates 0600 (one that exists keeps its mode).
        timeout: seconds to wait for SQLite's write lock.
        strict: raise :class:`~haikucache.CacheStoreError` when the directory cannot be
            used, instead of keeping batches in memory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.directory, self._cache = open_cache(
            directory,
            "batches",
            what="the batch journal",
            degraded="batches are journaled in memory only, and cannot be resumed after a crash",
            strict=strict,
            plain_pickles=True,
            timeout=timeout,
            # Every value stays inside SQLite (value files would follow the umask).
            disk_min_file_size=2**31 - 1,
            size_limit=2**40,
            cull_limit=0,
            statistics=False,
        )
        self._memory = MemoryBatchJournal() if self._cache is None else None

    def __repr__(self) -> str:
        return f"DiskBatchJournal({str(self.directory)!r})"

    @property
    def persistent(self) -> bool:
        """Whether records reach the disk (``False``: the directory could not be used, and
        this journal keeps its batches in memory)."""
        return self._memory is None

    def begin(self, record: JournalRecord, rows: bytes) -> None:
        if self._memory is not None:
            return self._memory.begin(record, rows)
        with self._cache.transact():
            self._cache.set(("rows", record.token), rows)
            self._cache.set(("batch", record.token), json.dumps(record.to_dict()))

    def update(self, record: JournalRecord) -> None:
        if self._memory is not None:
            return self._memory.update(record)
        with self._cache.transact():
            self._cache.set(("batch", record.token), json.dumps(record.to_dict()))
            if not record.is_open:
                self._cache.delete(("rows", record.token))
        if not record.is_open:
            self._cache.evict(_done_tag(record.token))

    def get(self, token: str) -> JournalRecord | None:
        if self._memory is not None:
            return self._memory.get(token)
        return self._read(token, self._cache.get(("batch", token)))

    def jobs(self, token: str) -> list[JournalJob]:
        if self._memory is not None:
            return self._memory.jobs(token)
        return self._jobs(token, self._cache.get(("rows", token)))

    def mark_delivered(self, token: str, custom_id: str) -> None:
        if self._memory is not None:
            return self._memory.mark_delivered(token, custom_id)
        # One small row per job (no read-modify-write of a growing set), tagged by batch so
        # closing the record drops them all.
        self._cache.set(("done", token, custom_id), 1, tag=_done_tag(token))

    def delivered(self, token: str) -> set[str]:
        if self._memory is not None:
            return self._memory.delivered(token)
        return {
            key[2]
            for key in self._cache.iterkeys()
            if isinstance(key, tuple)
            and len(key) == 3
            and key[0] == "done"
            and key[1] == token
            and isinstance(key[2], str)
        }

    def records(self) -> list[JournalRecord]:
        if self._memory is not None:
            return self._memory.records()
        self.corrupt = []
        out = []
        for key in self._cache.iterkeys():
            if isinstance(key, UnreadableKey):
                self._damaged(None, "key", key.error)
            elif isinstance(key, tuple) and len(key) == 2 and key[0] == "batch":
                if not isinstance(key[1], str):
                    self._damaged(None, "key", ValueError(f"token {key[1]!r} is not a string"))
                    continue
                record = self._read(key[1], self._cache.get(key))
                if record is not None:
                    out.append(record)
        return _sorted(iter(out))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


class RedisBatchJournal(_JournalBase):
    """A journal in Redis: ``<prefix>batch:<token>`` hashes and a ``<prefix>batches`` set.

    Args:
        url: a ``redis://`` URL.
        prefix: prepended to every key (default ``hc:``, as :class:`~haikucache.RedisStore`).
        client: a ready ``redis.Redis`` (not closed by :meth:`close`).
        socket_timeout: seconds before a Redis operation fails (a paused or unreachable
            server fails the journal write, never hangs the batcher).

    Raises:
        MissingDependencyError: the ``redis`` package is not installed.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "hc:",
        client: Any = None,
        socket_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        try:
            import redis
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis", "The Redis batch journal") from exc
        self.url = url
        self.prefix = prefix
        self._owns = client is None
        try:
            self._redis: Any = (
                client
                if client is not None
                else redis.Redis.from_url(
                    url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
                )
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {url!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"RedisBatchJournal(prefix={self.prefix!r})"

    def _k(self, token: str) -> str:
        return f"{self.prefix}batch:{token}"

    def begin(self, record: JournalRecord, rows: bytes) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._k(record.token), mapping={"r": json.dumps(record.to_dict()), "j": rows})
        pipe.sadd(f"{self.prefix}batches", record.token)
        pipe.execute()

    def update(self, record: JournalRecord) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._k(record.token), "r", json.dumps(record.to_dict()))
        if not record.is_open:
            pipe.hdel(self._k(record.token), "j")
            pipe.delete(self._k(record.token) + ":done")
        pipe.execute()

    def get(self, token: str) -> JournalRecord | None:
        return self._read(token, self._redis.hget(self._k(token), "r"))

    def jobs(self, token: str) -> list[JournalJob]:
        return self._jobs(token, self._redis.hget(self._k(token), "j"))

    def mark_delivered(self, token: str, custom_id: str) -> None:
        self._redis.sadd(self._k(token) + ":done", custom_id)

    def delivered(self, token: str) -> set[str]:
        return {
            m.decode("utf-8", "backslashreplace")
            for m in self._redis.smembers(self._k(token) + ":done")
        }

    def records(self) -> list[JournalRecord]:
        self.corrupt = []
        tokens = sorted(
            t.decode("utf-8", "backslashreplace")
            for t in self._redis.smembers(f"{self.prefix}batches")
        )
        out = []
        for token in tokens:
            record = self.get(token)
            if record is not None:
                out.append(record)
        return _sorted(iter(out))

    def close(self) -> None:
        if self._owns:
            self._redis.close()


def open_journal(journal: Any = None) -> BatchJournal:
    """A journal from what a user passes: ``None`` (on disk, default place), a path, a
    ``redis://`` URL, ``"memory"``, or a journal object."""
    if journal is None:
        return DiskBatchJournal()
    if isinstance(journal, str) and journal == "memory":
        return MemoryBatchJournal()
    if isinstance(journal, str) and journal.startswith(("redis://", "rediss://", "unix://")):
        return RedisBatchJournal(journal)
    if isinstance(journal, (str, os.PathLike)):
        return DiskBatchJournal(journal)
    needed = ("begin", "update", "get", "jobs", "records")
    if all(callable(getattr(journal, name, None)) for name in needed):
        return journal  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"journal must be a path, a redis:// URL, 'memory' or a BatchJournal, got {journal!r}"
    )
