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
"""

from __future__ import annotations

import json
import os
import socket
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._exceptions import ConfigurationError, MissingDependencyError
from ._ledger import default_cache_dir, make_private_dir

__all__ = [
    "OPEN_STATES",
    "BatchJournal",
    "DiskBatchJournal",
    "JournalJob",
    "JournalRecord",
    "MemoryBatchJournal",
    "RedisBatchJournal",
    "open_journal",
]

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
        data = dict(data)
        data["betas"] = tuple(data.get("betas") or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

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
    rows = json.loads(zlib.decompress(blob))
    return [
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
        for r in rows
    ]


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

    def close(self) -> None: ...


class _JournalBase:
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


def _sorted(records: Iterator[JournalRecord]) -> list[JournalRecord]:
    return sorted(records, key=lambda r: (r.created_at, r.token))


class MemoryBatchJournal(_JournalBase):
    """A journal that lives as long as the process (nothing to resume after a crash)."""

    def __init__(self) -> None:
        self._records: dict[str, JournalRecord] = {}
        self._rows: dict[str, bytes] = {}
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

    def get(self, token: str) -> JournalRecord | None:
        with self._lock:
            record = self._records.get(token)
            return JournalRecord.from_dict(record.to_dict()) if record else None

    def jobs(self, token: str) -> list[JournalJob]:
        with self._lock:
            blob = self._rows.get(token)
        return decode_jobs(blob) if blob else []

    def records(self) -> list[JournalRecord]:
        with self._lock:
            return _sorted(JournalRecord.from_dict(r.to_dict()) for r in self._records.values())

    def close(self) -> None:
        pass


class DiskBatchJournal(_JournalBase):
    """A journal on local disk (``diskcache``/SQLite), shared by every process of the user.

    Args:
        directory: default ``default_cache_dir() / "batches"``; created 0700, files 0600.
        timeout: seconds to wait for SQLite's write lock.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        import diskcache

        path = Path(directory) if directory is not None else default_cache_dir() / "batches"
        self.directory = make_private_dir(path)
        try:
            # SQLite creates its -wal/-shm files with the database file's mode.
            fd = os.open(self.directory / "cache.db", os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            self._cache = diskcache.Cache(
                str(self.directory),
                timeout=timeout,
                # Every value stays inside SQLite (value files would follow the umask).
                disk_min_file_size=2**31 - 1,
                size_limit=2**40,
                cull_limit=0,
                statistics=False,
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot open a batch journal at {path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"DiskBatchJournal({str(self.directory)!r})"

    def begin(self, record: JournalRecord, rows: bytes) -> None:
        with self._cache.transact():
            self._cache.set(("rows", record.token), rows)
            self._cache.set(("batch", record.token), json.dumps(record.to_dict()))

    def update(self, record: JournalRecord) -> None:
        with self._cache.transact():
            self._cache.set(("batch", record.token), json.dumps(record.to_dict()))
            if not record.is_open:
                self._cache.delete(("rows", record.token))

    def get(self, token: str) -> JournalRecord | None:
        raw = self._cache.get(("batch", token))
        return JournalRecord.from_dict(json.loads(raw)) if raw else None

    def jobs(self, token: str) -> list[JournalJob]:
        blob = self._cache.get(("rows", token))
        return decode_jobs(blob) if blob else []

    def records(self) -> list[JournalRecord]:
        out = []
        for key in self._cache.iterkeys():
            if isinstance(key, tuple) and key[0] == "batch":
                raw = self._cache.get(key)
                if raw:
                    out.append(JournalRecord.from_dict(json.loads(raw)))
        return _sorted(iter(out))

    def close(self) -> None:
        self._cache.close()


class RedisBatchJournal(_JournalBase):
    """A journal in Redis: ``<prefix>batch:<token>`` hashes and a ``<prefix>batches`` set.

    Args:
        url: a ``redis://`` URL.
        prefix: prepended to every key (default ``hc:``, as :class:`~haikucache.RedisStore`).
        client: a ready ``redis.Redis`` (not closed by :meth:`close`).

    Raises:
        MissingDependencyError: the ``redis`` package is not installed.
    """

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "hc:", client: Any = None
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis", "The Redis batch journal") from exc
        self.url = url
        self.prefix = prefix
        self._owns = client is None
        try:
            self._redis: Any = client if client is not None else redis.Redis.from_url(url)
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
        pipe.execute()

    def get(self, token: str) -> JournalRecord | None:
        raw = self._redis.hget(self._k(token), "r")
        return JournalRecord.from_dict(json.loads(raw)) if raw else None

    def jobs(self, token: str) -> list[JournalJob]:
        blob = self._redis.hget(self._k(token), "j")
        return decode_jobs(blob) if blob else []

    def records(self) -> list[JournalRecord]:
        tokens = sorted(t.decode() for t in self._redis.smembers(f"{self.prefix}batches"))
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
