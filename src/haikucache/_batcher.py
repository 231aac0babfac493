"""The batcher: small jobs that can wait go into Message Batches (50 % off), durably.

::

    with haikucache.Batcher(client) as batcher:
        futures = [batcher.submit(request) for request in requests]
        answers = [f.result() for f in futures]          # haikucache.Message, .haikucache.batch

    answers = batcher.map(requests)                      # input order; flushes at once

How a job travels (each step one method below):

1. ``submit`` runs the pipeline's stages — ``prepare`` (validate, key: a bad job fails only its
   own future), ``lookup`` (an answer already in the response cache resolves at once and is
   never enqueued) — joins an identical job already queued or in flight (same exact key), or
   routes the job realtime when its ``deadline`` is sooner than a batch would answer. A queued
   job is encoded once, as strict UTF-8 JSON — a job that cannot be fails its own future with
   :class:`~haikucache.RequestValidationError` — and the queue keeps a copy decoded from that
   JSON: what is journaled and sent is what was submitted, whatever the caller does next.
2. The worker thread flushes the queue by count (``max_batch_size`` ≤ 100,000), by bytes of
   the serialized body (``max_bytes`` ≤ 256 MB) or by age (``max_wait``). Jobs that share a
   long prefix (tools + system) get a 1-hour ``cache_control`` marker on it, so the batch
   reads it from the prompt cache; ``warm_cache=True`` first sends one of them realtime.
3. Before ``POST /v1/messages/batches`` the batch is written to the journal
   (:mod:`haikucache._batch_journal`), and its id when the POST answers.
4. The worker polls with backoff on the injectable clock, streams the JSONL results, matches
   them by ``custom_id`` and hands each answer to the pipeline's ``deliver``: accounted with
   the batch discount, stored when complete — exactly what realtime stores, so an answer cut
   at ``max_tokens`` reaches its caller but not the cache. Then the journal record is closed,
   and only then are the waiting futures resolved: a batch whose answers were handed out is
   never found open (and collected, accounted and stored again) by a later resume.
5. Per-result policy: ``errored`` with a transient type (``api_error``, ``overloaded_error``,
   ``rate_limit_error``, ``timeout_error``) is retried realtime; any other error is raised on
   that job's future only (:class:`~haikucache.BatchItemErroredError`); ``canceled`` raises
   :class:`~haikucache.BatchItemCanceledError`; ``expired`` is resubmitted once, then sent
   realtime (``on_expired``). A batch id that vanished upstream (404) fails its futures with
   :class:`~haikucache.BatchError` and is marked ``lost``, never polled forever.
6. Failures stay where they belong: one job's (it cannot be encoded, its answer cannot be
   stored by a strict store) fails that job alone; one of the batch's (no answer to the POST,
   a poll that fails, anything unexpected) is retried with backoff, and after
   ``max_poll_failures`` tries its futures fail while the journal keeps it for
   :meth:`Batcher.resume`.

After a crash, :meth:`Batcher.resume` (or ``haikucache batches resume``) finds the journal's
open batches, polls them and stores their answers in the response cache, where a re-run of
the same jobs finds them for $0. No batch is ever submitted twice: a batch whose POST never
answered is looked up upstream (by creation time, size and ``custom_id`` prefix) before
anything is sent again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import functools
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import xxhash

from ._batch_journal import (
    BatchJournal,
    JournalJob,
    JournalRecord,
    encode_jobs,
    job_row,
    open_journal,
)
from ._batch_progress import BatchProgress
from ._budget import Reservation
from ._catalog import lookup_model
from ._clock import Clock, SystemClock
from ._engine import CallOptions, Engine, PreparedCall
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    BatchError,
    BatchItemCanceledError,
    BatchItemErroredError,
    BatchItemExpiredError,
    ConfigurationError,
    ControlError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
    UsageError,
)
from ._pipeline import Outcome
from ._planner import Planner
from ._types import Message
from ._upstream import DEFAULT_API_VERSION, betas_from_headers

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["AsyncBatcher", "Batcher", "ResumeReport"]

logger = logging.getLogger("haikucache")

#: The API's limits per batch (reference §3.2).
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256_000_000
#: Bytes a request adds around its params: ``{"custom_id":"<≤64>","params":…},``.
_ENVELOPE_BYTES = 96
#: ``errored`` results worth retrying: the service failed, not the request.
TRANSIENT_ERRORS = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
_RESULT_KINDS = frozenset({"succeeded", "errored", "canceled", "expired"})
#: How far back (seconds) a batch whose POST never answered is looked for upstream.
_RECONCILE_WINDOW = 600.0
_ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}

#: Strict JSON, as the API reads it: NaN and Infinity are not JSON numbers.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: No model caches a prefix under 1,024 tokens, i.e. well over 2,000 characters.
_MIN_PREFIX_CHARS = 2048


def _utf8_len(text: str) -> int:
    """Bytes of ``text`` as UTF-8 (raises ``UnicodeEncodeError`` on a lone surrogate)."""
    return len(text) if text.isascii() else len(text.encode())


def _first_unencodable(value: Any, path: str = "") -> str | None:
    """The dotted path of the first value strict UTF-8 JSON cannot hold, if one is found."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return path
            found = _first_unencodable(key, path) or _first_unencodable(
                item, f"{path}.{key}" if path else key
            )
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _first_unencodable(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
        return None
    if value is None or isinstance(value, (bool, int)):
        return None
    return path


def _unencodable(body: Any, exc: BaseException) -> RequestValidationError:
    """The error for a request that cannot be sent as UTF-8 JSON (the API would reject it)."""
    try:
        where = _first_unencodable(body)
    except Exception:  # too deep, or a container that fails when read again
        where = None
    err = RequestValidationError(
        f"cannot be sent as JSON ({type(exc).__name__}: {exc})", param=where or "body"
    )
    err.__cause__ = exc
    return err


def _encode(body: Any) -> tuple[str, int]:
    """``body`` as strict JSON and its size in UTF-8 bytes.

    Raises:
        RequestValidationError: NaN or Infinity, a lone surrogate, a value of a type JSON
            has no form for, or nesting too deep to encode.
    """
    try:
        text = _dumps(body)
        return text, _utf8_len(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _unencodable(body, exc) from exc


def _prefix_chars(body: Mapping[str, Any]) -> int:
    """A cheap upper bound of the characters in tools + system (short ones skip hashing)."""
    size = 0
    system = body.get("system")
    if isinstance(system, str):
        size += len(system)
    elif isinstance(system, list):
        size += sum(len(str(b.get("text", ""))) if isinstance(b, Mapping) else 0 for b in system)
    tools = body.get("tools")
    if tools:
        size += len(_dumps(tools))
    return size


@dataclass(frozen=True)
class ResumeReport:
    """What :meth:`Batcher.resume` found and did.

    Attributes:
        batches: the journal records it took over, in their final state.
        delivered: answers collected and accounted; stored in the response cache when
            realtime would store them too (not an answer cut at ``max_tokens``, say).
        failed: jobs that ended without an answer (errored, canceled, expired, lost).
        skipped: ``(token, reason)`` for open records it left alone.
    """

    batches: list[JournalRecord] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _Waiter:
    __slots__ = ("call", "future")

    def __init__(self, future: Future[Message], call: PreparedCall) -> None:
        self.future = future
        self.call = call


class _Job:
    """One distinct request (one exact key), with every future waiting for it."""

    __slots__ = (
        "attempts",
        "base",
        "batch",
        "body",
        "body_json",
        "call",
        "caller_marked",
        "custom_id",
        "deadline",
        "delivered",
        "delivered_before",
        "dropped",
        "finished",
        "marker_path",
        "prefix",
        "reservation",
        "resumed",
        "size",
        "waiters",
    )

    def __init__(self, call: PreparedCall, base: dict[str, Any], waiter: _Waiter | None) -> None:
        self.call = call
        self.base = base  # the caller's request, without haikucache's markers
        self.body = base  # what goes into the batch
        self.body_json = ""
        self.size = 0
        self.prefix = 0
        self.marker_path: str | None = None
        self.waiters: list[_Waiter] = [waiter] if waiter is not None else []
        self.deadline: float | None = None
        self.attempts = 0
        self.custom_id = ""
        self.batch: _LiveBatch | None = None
        self.caller_marked = False
        self.dropped = False
        self.delivered = False
        self.delivered_before = False  # a crashed run accounted it (journal mark)
        self.reservation: Reservation | None = None  # its worst case, in the budgets
        self.finished = False
        self.resumed = False

    def live_waiters(self) -> list[_Waiter]:
        return [w for w in self.waiters if not w.future.done()]


class _LiveBatch:
    """A batch this process is responsible for until its results are stored."""

    def __init__(self, record: JournalRecord, jobs: dict[str, _Job], now: float, interval: float):
        self.record = record
        self.jobs = jobs
        self.next_poll = now + interval
        self.interval = interval
        self.failures = 0
        self.cancel_requested = False
        self.cancel_sent = False
        self.create_attempts = 1
        self.requests: list[dict[str, Any]] | None = None  # kept while the POST is unsure
        self.all_jobs: list[_Job] = list(jobs.values())

    @property
    def token(self) -> str:
        return self.record.token


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _set_marker(body: dict[str, Any], path: str) -> dict[str, Any]:
    """``body`` with a 1-hour marker on ``tools.N`` or ``system.N`` (a new dict)."""
    section, _, index = path.partition(".")
    i = int(index)
    out = dict(body)
    if section == "system":
        system = out["system"]
        if isinstance(system, str):
            out["system"] = [{"type": "text", "text": system, "cache_control": dict(_ONE_HOUR)}]
        else:
            blocks = list(system)
            blocks[i] = {**blocks[i], "cache_control": dict(_ONE_HOUR)}
            out["system"] = blocks
    else:
        tools = list(out["tools"])
        tools[i] = {**tools[i], "cache_control": dict(_ONE_HOUR)}
        out["tools"] = tools
    return out


class Batcher:
    """Merges jobs into Message Batches; results as futures of :class:`~haikucache.Message`.

    A background worker thread flushes, polls and resolves. Use it as a context manager, or
    call :meth:`close`.

    Args:
        client: the :class:`~haikucache.Client` to send through (default: one from the
            environment, with ``engine``).
        engine: the engine when no client is given (default: the client's).
        max_batch_size: flush when this many distinct jobs wait (1–100,000).
        max_bytes: flush before the serialized batch body would exceed this (≤ 256 MB).
        max_wait: seconds (on ``clock``) the oldest queued job may wait before a flush.
        poll_interval: first poll this many seconds after submission; then ``poll_backoff``
            times longer each time, up to ``max_poll_interval``.
        poll_backoff: growth factor of the poll interval.
        max_poll_interval: the longest wait between polls.
        journal: the durable record of submitted batches: a journal object, a directory
            (diskcache), a ``redis://`` URL, ``"memory"`` (nothing survives a crash), or
            ``None`` for the default on-disk journal under ``default_cache_dir()``.
        clock: the time source (ages, polls, deadlines); tests pass a ``ManualClock``.
        warm_cache: send one job of each shared-prefix group realtime before the batch,
            so every batched job reads the prefix from the prompt cache.
        cache_prefixes: put a 1-hour ``cache_control`` marker on a prefix (tools +
            system) shared by two or more jobs of a batch when it is long enough to cache.
        expected_turnaround: seconds a batch is expected to take before the first one
            ended (then the observed turnaround is used); jobs whose ``deadline`` comes
            sooner go realtime.
        on_expired: ``"resubmit"`` (once, then realtime), ``"realtime"`` or ``"raise"``.
        on_transient: what to do with a transient ``errored`` result: ``"realtime"`` or
            ``"raise"``.
        realtime_concurrency: threads for realtime retries and deadline-routed jobs.
        max_poll_failures: consecutive failed polls before the batch's futures fail (the
            journal keeps it open, so :meth:`resume` can still collect it).
        tick: real seconds between looks at an injected (non-system) clock.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        engine: Engine | None = None,
        max_batch_size: int = MAX_BATCH_REQUESTS,
        max_bytes: int = MAX_BATCH_BYTES,
        max_wait: float = 5.0,
        poll_interval: float = 5.0,
        poll_backoff: float = 1.5,
        max_poll_interval: float = 60.0,
        journal: BatchJournal | str | Any = None,
        clock: Clock | None = None,
        warm_cache: bool = False,
        cache_prefixes: bool = True,
        expected_turnaround: float = 3600.0,
        on_expired: str = "resubmit",
        on_transient: str = "realtime",
        realtime_concurrency: int = 4,
        max_poll_failures: int = 20,
        tick: float = 0.01,
    ) -> None:
        if not isinstance(max_batch_size, int) or not 1 <= max_batch_size <= MAX_BATCH_REQUESTS:
            raise ConfigurationError(f"max_batch_size must be 1..{MAX_BATCH_REQUESTS}")
        if not isinstance(max_bytes, int) or not 1024 <= max_bytes <= MAX_BATCH_BYTES:
            raise ConfigurationError(f"max_bytes must be 1024..{MAX_BATCH_BYTES}")
        for name, value in (
            ("max_wait", max_wait),
            ("poll_interval", poll_interval),
            ("max_poll_interval", max_poll_interval),
            ("expected_turnaround", expected_turnaround),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be a number of seconds >= 0")
        if poll_backoff < 1:
            raise ConfigurationError("poll_backoff must be >= 1")
        if on_expired not in ("resubmit", "realtime", "raise"):
            raise ConfigurationError("on_expired must be 'resubmit', 'realtime' or 'raise'")
        if on_transient not in ("realtime", "raise"):
            raise ConfigurationError("on_transient must be 'realtime' or 'raise'")
        if client is None:
            from ._client import Client

            client = Client(engine=engine)
        elif engine is not None and engine is not client.engine:
            raise ConfigurationError("engine must be the client's engine (or left out)")
        self.client = client
        self.engine = client.engine
        self._context = client.messages._context
        headers = self._context.headers
        self._api_version = headers.get("anthropic-version", DEFAULT_API_VERSION)
        self._betas = betas_from_headers(headers)
        self.journal: BatchJournal = open_journal(journal)
        self._own_journal = self.journal is not journal
        self.clock: Clock = clock or self.engine.clock or SystemClock()
        self.max_batch_size = max_batch_size
        self.max_bytes = max_bytes
        self.max_wait = float(max_wait)
        self.poll_interval = float(poll_interval)
        self.poll_backoff = float(poll_backoff)
        self.max_poll_interval = float(max_poll_interval)
        self.warm_cache = warm_cache
        self.cache_prefixes = cache_prefixes
        self.expected_turnaround = float(expected_turnaround)
        self.on_expired = on_expired
        self.on_transient = on_transient
        self.max_poll_failures = max_poll_failures
        self._tick = tick
        self._system_clock = isinstance(self.clock, SystemClock)
        self._observed_turnaround: float | None = None
        self._planner = Planner("always", clock=self.clock)
        self._prefix_paths: dict[int, str | None] = {}

        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[_Job] = deque()
        self._queued_bytes = 0
        self._oldest: float | None = None
        self._inflight: dict[str, _Job] = {}
        self._live: dict[str, _LiveBatch] = {}
        self._flush_requested = False
        self._submitting = 0
        self._realtime_pending = 0
        self._closing = False
        self._abandon = False
        self._closed = False
        self._stats = {"submitted_batches": 0, "submitted_jobs": 0, "deduplicated": 0, "hits": 0}
        self._realtime = ThreadPoolExecutor(
            max_workers=max(1, realtime_concurrency), thread_name_prefix="haikucache-realtime"
        )
        self._worker = threading.Thread(target=self._run, name="haikucache-batcher", daemon=True)
        self._worker.start()

    def __repr__(self) -> str:
        return f"Batcher(journal={self.journal!r}, max_batch_size={self.max_batch_size})"

    # ------------------------------------------------------------------ public API

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``submitted_batches``, ``submitted_jobs``, ``deduplicated``, ``hits``."""
        with self._cond:
            return dict(self._stats)

    def submit(
        self,
        params: Mapping[str, Any],
        options: CallOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> Future[Message]:
        """Queue one Messages request; its answer arrives on the returned future.

        Args:
            params: the Messages API body (no ``stream``).
            options: per-call controls (namespace, no_cache, no_store, ttl, tags).
            deadline: the time (on the batcher's clock, seconds since the epoch) by which
                the answer is needed; when a batch is not expected to answer by then, the
                job is sent realtime.

        Returns:
            A future of the :class:`~haikucache.Message`; a job the API would reject fails
            this future (:class:`~haikucache.RequestValidationError`) and nothing else.

        Raises:
            UsageError: the batcher is closed.
        """
        future: Future[Message] = Future()
        with self._cond:
            if self._closing:
                raise UsageError("this Batcher is closed")
        try:
            if isinstance(params, Mapping) and params.get("stream"):
                raise RequestValidationError(
                    "stream is not allowed in a batch; batch answers arrive whole", param="stream"
                )
            # Validate and key without the realtime planner (``defer_plan`` and never
            # ``plan``): the batcher places its own markers per group of jobs, and batch
            # traffic must not teach the realtime planner recurrences realtime never sees.
            call = self._context.prepare(params, options or CallOptions(), None)
            if deadline is not None and (
                isinstance(deadline, bool) or not isinstance(deadline, (int, float))
            ):
                raise UsageError(f"deadline must be a time in seconds, got {deadline!r}")
        except UsageError as exc:
            future.set_exception(exc)
            return future
        except (ValueError, TypeError, RecursionError) as exc:
            # Whatever slipped past validation: still this job's failure, not the caller's.
            future.set_exception(_unencodable(params, exc))
            return future
        hit = self._context.pipeline.lookup(call)
        if hit is not None:
            future.set_result(self._context.message(hit))
            with self._cond:
                self._stats["hits"] += 1
            return future
        waiter = _Waiter(future, call)
        with self._cond:
            twin = self._inflight.get(call.key)
            if twin is not None and not twin.finished:
                twin.waiters.append(waiter)
                self._stats["deduplicated"] += 1
                future.add_done_callback(functools.partial(self._on_done, twin))
                return future
        # With the planner off, the prepared body is the caller's request as validated
        # (``None`` fields dropped), carrying only the caller's own markers.
        caller_marked = call.plan is not None and bool(call.plan.breakpoints)
        call.plan = None
        job = _Job(call, call.body, waiter)
        job.caller_marked = caller_marked
        job.deadline = deadline
        now = self.clock.now()
        if deadline is not None and deadline < now + self.max_wait + self._turnaround():
            with self._cond:
                self._inflight[call.key] = job
            self._send_realtime(job)
            return future
        try:
            self._shape(job)
            self._reserve(job)
        except (UsageError, ControlError) as exc:  # nothing is sent, nothing is held
            future.set_exception(exc)
            return future
        with self._cond:
            twin = self._inflight.get(call.key)
            if twin is not None and not twin.finished:  # a twin arrived meanwhile
                self._unreserve(job)
                twin.waiters.append(waiter)
                self._stats["deduplicated"] += 1
                future.add_done_callback(functools.partial(self._on_done, twin))
                return future
            self._inflight[call.key] = job
            self._queue.append(job)
            self._queued_bytes += job.size
            if self._oldest is None:
                self._oldest = now
            if (
                len(self._queue) >= self.max_batch_size
                or self._queued_bytes >= self.max_bytes
                or self.max_wait == 0
            ):
                self._cond.notify_all()
        future.add_done_callback(functools.partial(self._on_done, job))
        return future

    def map(
        self,
        requests: Iterable[Mapping[str, Any]],
        options: CallOptions | None = None,
        *,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> list[Message | BaseException]:
        """Submit every request, flush, and wait: the answers in input order.

        Args:
            requests: Messages API bodies.
            options: per-call controls for all of them.
            return_exceptions: put a failed job's exception in its place instead of
                raising the first one (after every job has finished).
            progress: draw a progress bar on stderr (``rich`` when installed).
        """
        futures = [self.submit(r, options) for r in requests]
        self.flush()
        bar = BatchProgress(len(futures)) if progress else None
        if bar is not None:
            bar.__enter__()
            for f in futures:
                f.add_done_callback(
                    lambda f: bar.advance(failed=f.cancelled() or f.exception() is not None)
                )
        try:
            out: list[Message | BaseException] = []
            first: BaseException | None = None
            for f in futures:
                try:
                    out.append(f.result())
                except (Exception, CancelledError) as exc:
                    out.append(exc)
                    first = first or exc
        finally:
            if bar is not None:
                bar.close()
        if first is not None and not return_exceptions:
            raise first
        return out

    def flush(self) -> None:
        """Submit everything queued now; returns once those batches are in the journal and
        accepted upstream (or failed)."""
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while (self._queue or self._submitting) and self._worker.is_alive():
                self._cond.wait(0.05)

    def resume(
        self, *, wait: bool = True, force: bool = False, progress: bool = False
    ) -> ResumeReport:
        """Finish the journal's open batches (after a crash): poll them, store their answers.

        New submits of the same requests join these batches instead of paying again.

        Args:
            wait: block until every resumed batch is finished.
            force: also take over batches whose submitting process still runs.
            progress: draw a progress bar of the jobs collected (stderr).

        Returns:
            A :class:`ResumeReport`.
        """
        skipped: list[tuple[str, str]] = []
        taken: list[_LiveBatch] = []
        base_url = self.client.base_url.rstrip("/")
        now = self.clock.now()
        for record in self.journal.records():
            if not record.is_open:
                continue
            with self._cond:
                if record.token in self._live:
                    continue
            if record.base_url.rstrip("/") != base_url:
                skipped.append((record.token, f"sent to {record.base_url}, not {base_url}"))
                continue
            if not force and record.owner_alive():
                skipped.append((record.token, f"process {record.pid} still owns it"))
                continue
            taken.append(self._adopt(record, now))
        with self._cond:
            for live in taken:
                self._live[live.token] = live
            self._cond.notify_all()
        if not wait:
            return ResumeReport([t.record for t in taken], 0, 0, skipped)
        total = sum(len(t.all_jobs) for t in taken)
        bar = BatchProgress(total, "resumed jobs") if progress and total else None
        if bar is not None:
            bar.__enter__()
        try:
            with self._cond:
                while any(t.token in self._live for t in taken) or any(
                    not j.finished for t in taken for j in t.all_jobs
                ):
                    if not self._worker.is_alive():
                        break
                    self._cond.wait(0.2)
                    if bar is not None:
                        bar.set(sum(j.finished for t in taken for j in t.all_jobs))
        finally:
            if bar is not None:
                bar.close()
        records = [self.journal.get(t.token) or t.record for t in taken]
        delivered = sum(1 for t in taken for j in t.all_jobs if j.delivered)
        failed = sum(len(t.all_jobs) for t in taken) - delivered
        return ResumeReport(records, delivered, failed, skipped)

    def close(self, *, cancel: bool = False, wait: bool = True) -> None:
        """Stop accepting jobs and finish.

        Args:
            cancel: cancel queued jobs' futures and the upstream batches in flight; jobs
                that already ran are still delivered (and stored), the rest resolve with
                :class:`~haikucache.BatchItemCanceledError`.
            wait: wait for every batch to end and every future to resolve. With
                ``wait=False`` the batches stay open in the journal (see :meth:`resume`)
                and their futures fail with :class:`~haikucache.BatchError`.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            queued = list(self._queue) if cancel else []
            if cancel:
                for live in self._live.values():
                    live.cancel_requested = True
            if not wait:
                self._abandon = True
            self._cond.notify_all()
        for job in queued:
            for w in job.waiters:
                w.future.cancel()
        self._worker.join()
        self._realtime.shutdown(wait=True)
        with self._cond:
            self._closed = True
        close = getattr(self.journal, "close", None)
        if callable(close) and self._owns_journal():
            close()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))

    # ------------------------------------------------------------------ shaping jobs

    def _owns_journal(self) -> bool:
        return self._own_journal

    def _turnaround(self) -> float:
        return (
            self._observed_turnaround
            if self._observed_turnaround is not None
            else self.expected_turnaround
        )

    def _shape(self, job: _Job) -> None:
        """Encode the job once, keep that snapshot, choose the body the batch sends.

        The job is encoded as strict UTF-8 JSON here, on the caller's thread, so a job the
        API could not read fails its own future, never the worker or its batch. The queue
        keeps a copy decoded from that JSON, not the caller's objects: a job waits minutes
        before it is sent, and what is sent (and journaled) must be what was submitted.

        Raises:
            RequestValidationError: the job cannot be sent as JSON, or is larger than a batch.
        """
        base_json, base_size = _encode(job.base)
        base = job.base = job.body = job.call.body = json.loads(base_json)
        if job.caller_marked:
            pass  # the caller placed markers: send them as they are
        elif self.cache_prefixes and _prefix_chars(base) >= _MIN_PREFIX_CHARS:
            job.prefix = xxhash.xxh3_64_intdigest(
                _dumps([base.get("model"), base.get("tools"), base.get("system")]).encode()
            )
            path = self._prefix_paths.get(job.prefix, "?")
            if path == "?":
                path = self._marker_path(base)
                self._prefix_paths[job.prefix] = path
            if path is not None:
                job.marker_path = path
                job.body = _set_marker(base, path)
        if job.body is base:
            job.body_json, size = base_json, base_size
        else:
            job.body_json, size = _encode(job.body)
        job.size = size + _ENVELOPE_BYTES
        if job.size + 16 > self.max_bytes:
            raise RequestValidationError(
                f"this job is {job.size:,} bytes serialized; a batch holds at most "
                f"{self.max_bytes:,} bytes",
                param="body",
            )

    def _marker_path(self, body: dict[str, Any]) -> str | None:
        """Where a shared prefix of ``body`` would be cached: the deepest tools/system
        boundary long enough for the model's minimum, or ``None``."""
        plan = self._planner.plan(body)
        shared = [b for b in plan.added if b.kind in ("tools", "system")]
        if not shared:
            return None
        info = lookup_model(str(body.get("model", "")))
        minimum = info.min_cacheable_tokens if info else 1024
        best = max(shared, key=lambda b: b.prefix_tokens)
        return best.path if best.prefix_tokens >= minimum else None

    # ------------------------------------------------------------------ futures

    def _on_done(self, job: _Job, future: Future[Message]) -> None:
        if not future.cancelled():
            return
        with self._cond:
            if job.finished or job.live_waiters() or job.resumed:
                return
            if job.batch is None:
                # Still queued: drop it (the flush skips it).
                job.dropped = True
                job.finished = True
                if self._inflight.get(job.call.key) is job:
                    del self._inflight[job.call.key]
                return
            live = job.batch
            if not live.cancel_requested and not any(j.live_waiters() for j in live.jobs.values()):
                # Nothing waits on this batch any more: cancel it upstream.
                live.cancel_requested = True
                live.next_poll = self.clock.now()
                self._cond.notify_all()

    def _finish(self, job: _Job) -> list[_Waiter]:
        """Mark the job done and return who waits for it, atomically: a twin that joins
        a moment later sees it finished and starts a job of its own (or hits the cache)."""
        with self._cond:
            job.finished = True
            if self._inflight.get(job.call.key) is job:
                del self._inflight[job.call.key]
            waiters = job.live_waiters()
            self._cond.notify_all()
        return waiters

    def _resolve(self, job: _Job, message: Message, *, batch: bool, paid: bool = True) -> None:
        """Hand ``message`` to the job's first waiter; its twins get accounted copies.

        ``paid=False``: the answer was accounted before (by a run that crashed after
        storing it), so every waiter gets a copy for $0.
        """
        job.delivered = True
        waiters = self._finish(job)
        leader = paid
        for w in waiters:
            if leader:
                result = message
                leader = False
            else:
                result = self._shared(w.call, message)
                if batch and result.haikucache is not None:
                    result.haikucache = dataclasses.replace(result.haikucache, batch=True)
            try:
                w.future.set_result(result)
            except InvalidStateError:
                pass  # cancelled meanwhile
        self._release(job)

    def _shared(self, call: PreparedCall, leader: Message) -> Message:
        """A twin's copy of the answer its leader got: a hit, for $0."""
        shared = self._context.pipeline.share(
            call, Outcome(call, "miss", leader.to_dict(), leader.haikucache)
        )
        assert shared is not None
        return self._context.message(shared)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        waiters = self._finish(job)
        for w in waiters:
            try:
                w.future.set_exception(exc)
            except InvalidStateError:
                pass
        self._release(job)

    def _reserve(self, job: _Job) -> None:
        """The budgets stage for a queued job (the pipeline's; see ``BatchControls``)."""
        job.reservation = self._context.pipeline.batches.reserve(
            job.call, job.body_json, marked=job.marker_path is not None
        )

    def _unreserve(self, job: _Job) -> None:
        """Free the reservation a job still holds (it failed, or goes realtime)."""
        reservation, job.reservation = job.reservation, None
        self._context.pipeline.batches.settle(reservation, None)

    def _release(self, job: _Job) -> None:
        """A finished job keeps no request or future alive (its futures' callbacks still
        point at it, and 100,000 finished requests add up); a reservation it still holds
        (it failed, or went realtime) is freed."""
        self._unreserve(job)
        job.waiters = []
        job.base = job.body = {}
        job.call.body = {}

    # ------------------------------------------------------------------ realtime

    def _send_realtime(self, job: _Job) -> None:
        with self._cond:
            self._realtime_pending += 1
        try:
            self._realtime.submit(self._realtime_call, job)
        except RuntimeError as exc:  # the executor is shut down
            with self._cond:
                self._realtime_pending -= 1
            self._fail(job, BatchError(f"the batcher is closed: {exc}"))

    def _realtime_call(self, job: _Job) -> None:
        call = job.call
        headers: dict[str, str] = {}
        if call.api_version != self.client._upstream.anthropic_version:
            headers["anthropic-version"] = call.api_version
        if call.betas:
            headers["anthropic-beta"] = ",".join(call.betas)
        try:
            message = self.client.messages.create(
                **job.base,
                namespace=call.namespace,
                no_store=call.options.no_store,
                ttl=call.options.ttl,
                tags=call.options.tags or None,
                extra_headers=headers or None,
            )
        except BaseException as exc:
            self._fail(job, exc)
        else:
            assert isinstance(message, Message)
            self._resolve(job, message, batch=False)
        finally:
            with self._cond:
                self._realtime_pending -= 1
                self._cond.notify_all()

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                action = self._next_action()
                while action is None:
                    self._cond.wait(self._wait_seconds())
                    action = self._next_action()
            kind, payload = action
            if kind == "stop":
                return
            try:
                if kind == "flush":
                    self._flush_once()
                else:
                    self._step(payload)
            except Exception:  # the worker must not die; log and carry on
                logger.exception("haikucache: batcher step %s failed", kind)
                time.sleep(0.05)

    def _step(self, live: _LiveBatch) -> None:
        try:
            self._poll(live)
        except Exception as exc:
            # Never retried at full speed: an unexpected failure counts as a failed poll
            # (backoff, and after ``max_poll_failures`` the batch's futures fail).
            logger.exception("haikucache: polling batch %s failed", live.token)
            self._poll_failed(live, exc)

    def _flush_due(self, now: float) -> bool:
        if not self._queue:
            return False
        return (
            self._flush_requested
            or self._closing
            or len(self._queue) >= self.max_batch_size
            or self._queued_bytes >= self.max_bytes
            or (self._oldest is not None and now - self._oldest >= self.max_wait)
        )

    def _next_action(self) -> tuple[str, Any] | None:
        now = self.clock.now()
        if self._abandon:
            self._abandon_all()
            return ("stop", None)
        if self._flush_due(now):
            return ("flush", None)
        if not self._queue:
            self._flush_requested = False
        for live in self._live.values():
            if live.next_poll <= now or (live.cancel_requested and not live.cancel_sent):
                return ("poll", live)
        if (
            self._closing
            and not self._queue
            and not self._live
            and not self._realtime_pending
            and not self._submitting
        ):
            return ("stop", None)
        return None

    def _wait_seconds(self) -> float:
        if not self._system_clock:
            return self._tick
        now = self.clock.now()
        wake = [live.next_poll for live in self._live.values()]
        if self._queue and self._oldest is not None:
            wake.append(self._oldest + self.max_wait)
        if not wake:
            return 1.0
        return min(max(min(wake) - now, 0.001), 1.0)

    def _abandon_all(self) -> None:
        for job in list(self._queue):
            for w in job.waiters:
                w.future.cancel()
        self._queue.clear()
        for live in list(self._live.values()):
            exc = BatchError(
                f"the batcher was closed before batch {live.record.batch_id or live.token} "
                "ended; `haikucache batches resume` (or Batcher.resume()) collects it"
            )
            for job in live.jobs.values():
                self._fail(job, exc)
        self._live.clear()

    # ------------------------------------------------------------------ flushing

    def _take(self) -> list[_Job]:
        """Up to one batch of jobs from the queue: same headers, within count and bytes."""
        with self._cond:
            jobs: list[_Job] = []
            size = 16
            headers: tuple[str, tuple[str, ...]] | None = None
            kept: deque[_Job] = deque()
            while self._queue:
                job = self._queue.popleft()
                if job.dropped:
                    self._queued_bytes -= job.size
                    continue
                key = (job.call.api_version, job.call.betas)
                if (
                    (headers is not None and key != headers)
                    or len(jobs) >= self.max_batch_size
                    or size + job.size > self.max_bytes
                ):
                    kept.append(job)
                    continue
                headers = key
                jobs.append(job)
                size += job.size
                self._queued_bytes -= job.size
            self._queue = kept
            self._oldest = self.clock.now() if kept else None
            if jobs:
                self._submitting += 1
            return jobs

    def _flush_once(self) -> None:
        jobs = self._take()
        if not jobs:
            return
        try:
            if self.warm_cache:
                jobs = self._warm(jobs)
            if jobs:
                self._submit_batch(jobs)
        except Exception as exc:
            # Never put back and tried again blindly: a failure that travels with the jobs
            # would come back at every flush, and nothing beside them would ever resolve.
            logger.exception("haikucache: submitting a batch of %d job(s) failed", len(jobs))
            self._flush_failed(jobs, exc)
        finally:
            with self._cond:
                self._submitting -= 1
                self._cond.notify_all()

    def _flush_failed(self, jobs: list[_Job], exc: Exception) -> None:
        """Fail the jobs an unexpected error left unsent. A job already in the journal stays
        with its batch: the poll loop finds out whether it reached the API (and sends it
        once if not), with backoff and a bounded number of tries."""
        err = BatchError(f"could not submit the batch ({type(exc).__name__}: {exc})")
        err.__cause__ = exc
        for job in jobs:
            if not job.finished and job.batch is None:
                self._fail(job, err)

    def _warm(self, jobs: list[_Job]) -> list[_Job]:
        """Send one job of each shared-prefix group realtime first: it writes the prefix to
        the prompt cache (1-hour TTL), so every other job of the group reads it."""
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            if job.marker_path is not None:
                groups.setdefault(job.prefix, []).append(job)
        warmed: set[int] = set()
        for group in groups.values():
            if len(group) < 3:
                continue
            first = group[0]
            first.base = first.body  # keep the 1-hour marker on the warm-up call
            self._realtime_call_sync(first)
            warmed.add(id(first))
        return [j for j in jobs if id(j) not in warmed]

    def _realtime_call_sync(self, job: _Job) -> None:
        with self._cond:
            self._realtime_pending += 1
        self._realtime_call(job)

    def _submit_batch(self, jobs: list[_Job]) -> None:
        # Jobs sharing a prefix sit together; a marker on a prefix no other job of this
        # batch shares would only pay a write premium.
        counts: dict[int, int] = {}
        for job in jobs:
            if job.marker_path is not None:
                counts[job.prefix] = counts.get(job.prefix, 0) + 1
        sendable: list[_Job] = []
        for job in jobs:
            try:
                if job.marker_path is not None and counts[job.prefix] < 2:
                    job.marker_path = None
                    job.body = job.base
                    job.body_json = ""
                if not job.body_json:
                    job.body_json = _encode(job.body)[0]
            except UsageError as exc:
                self._fail(job, exc)  # this job only; the batch goes on without it
                continue
            sendable.append(job)
        jobs = sendable
        if not jobs:
            return
        jobs.sort(key=lambda j: j.prefix)
        token = "hc" + secrets.token_hex(6)
        rows = []
        by_id: dict[str, _Job] = {}
        for i, job in enumerate(jobs):
            job.custom_id = f"{token}-{i:x}"
            job.attempts += 1
            by_id[job.custom_id] = job
            call = job.call
            rows.append(
                job_row(
                    job.custom_id,
                    call.key,
                    call.namespace,
                    call.model,
                    job.body_json,
                    call.options.ttl,
                    call.options.tags,
                    call.options.no_store,
                )
            )
            # The row holds it now; a resubmission serializes it again (see _requeue).
            job.body_json = ""
        blob = encode_jobs(rows)
        del rows
        now = self.clock.now()
        record = JournalRecord(
            token=token,
            state="submitting",
            base_url=self.client.base_url,
            jobs=len(jobs),
            created_at=now,
            api_version=jobs[0].call.api_version,
            betas=jobs[0].call.betas,
        )
        try:
            self.journal.begin(record, blob)
        except Exception as exc:
            # Without a durable record nothing is sent: a crash could lose the batch.
            err = BatchError(f"could not write the batch journal: {exc}")
            err.__cause__ = exc
            for job in jobs:
                self._fail(job, err)
            return
        live = _LiveBatch(record, by_id, now, self.poll_interval)
        with self._cond:
            for job in jobs:
                job.batch = live
            self._live[token] = live
        requests = [{"custom_id": j.custom_id, "params": j.body} for j in jobs]
        self._create(live, requests)

    def _headers(self, record: JournalRecord) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        if record.api_version != self.client._upstream.anthropic_version:
            headers["anthropic-version"] = record.api_version
        if record.betas:
            headers["anthropic-beta"] = ",".join(record.betas)
        return headers or None

    def _create(self, live: _LiveBatch, requests: list[dict[str, Any]]) -> None:
        record = live.record
        try:
            batch = self.client.messages.batches.create(
                requests=requests, extra_headers=self._headers(record)
            )
        except RateLimitError:
            # Refused before anything was created: send it again later.
            live.requests = requests
            record.error = "rate limited; will retry"
            self._schedule(live)
            return
        except (APIConnectionError, APIStatusError) as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and status < 500 and status not in (408, 409):
                self._give_up(live, "failed", exc)
                return
            self._unconfirmed(live, requests, exc)
            return
        except Exception as exc:
            # Not an answer from the API (an answer it could not parse, a local failure):
            # the batch may exist upstream all the same.
            logger.warning("haikucache: submitting batch %s failed: %r", record.token, exc)
            self._unconfirmed(live, requests, exc)
            return
        record.batch_id = str(batch.id)
        record.state = "submitted"
        record.error = None
        record.submitted_at = self.clock.now()
        live.requests = None
        live.failures = 0
        self.journal.update(record)
        with self._cond:
            self._stats["submitted_batches"] += 1
            self._stats["submitted_jobs"] += len(requests)
        live.next_poll = self.clock.now() + live.interval

    def _unconfirmed(
        self, live: _LiveBatch, requests: list[dict[str, Any]], exc: BaseException
    ) -> None:
        """No answer to the POST: the batch may or may not exist upstream. The next poll
        finds out before anything is sent again (never submit a batch twice); after
        ``max_poll_failures`` tries the futures fail and the journal keeps it for resume."""
        live.requests = requests
        live.record.error = f"submission unconfirmed: {exc}"
        self.journal.update(live.record)
        self._poll_failed(live, exc)

    def _schedule(self, live: _LiveBatch) -> None:
        live.failures += 1
        live.interval = min(live.interval * self.poll_backoff + 0.001, self.max_poll_interval)
        live.next_poll = self.clock.now() + live.interval

    def _give_up(self, live: _LiveBatch, state: str, exc: BaseException | None) -> None:
        record = live.record
        record.state = state
        record.error = str(exc) if exc else None
        record.ended_at = self.clock.now()
        self.journal.update(record)
        if state == "lost":
            err: BaseException = BatchError(
                f"batch {record.batch_id} no longer exists upstream; its results are gone"
            )
            if exc is not None:
                err.__cause__ = exc
        else:
            err = exc if exc is not None else BatchError(f"batch {record.token} failed")
        for job in list(live.jobs.values()):
            self._fail(job, err)
        with self._cond:
            self._live.pop(live.token, None)
            self._cond.notify_all()

    # ------------------------------------------------------------------ polling

    def _poll(self, live: _LiveBatch) -> None:
        record = live.record
        if record.batch_id is None:
            self._reconcile(live)
            return
        if live.cancel_requested and not live.cancel_sent:
            live.cancel_sent = True
            try:
                self.client.messages.batches.cancel(record.batch_id)
            except APIStatusError as exc:
                logger.info("haikucache: cancel of %s: %s", record.batch_id, exc)
            except APIConnectionError:
                live.cancel_sent = False
        try:
            batch = self.client.messages.batches.retrieve(record.batch_id)
        except NotFoundError as exc:
            self._give_up(live, "lost", exc)
            return
        except (APIConnectionError, APIStatusError) as exc:
            self._poll_failed(live, exc)
            return
        if batch.processing_status != "ended":
            live.failures = 0
            live.interval = min(live.interval * self.poll_backoff, self.max_poll_interval)
            live.next_poll = self.clock.now() + live.interval
            return
        created = _parse_time(batch.created_at)
        ended = _parse_time(batch.ended_at)
        if created is not None and ended is not None and not live.cancel_requested:
            seen = max(ended - created, 0.0)
            prior = self._observed_turnaround
            self._observed_turnaround = seen if prior is None else 0.7 * prior + 0.3 * seen
        self._collect(live)

    def _poll_failed(self, live: _LiveBatch, exc: BaseException) -> None:
        self._schedule(live)
        if live.failures >= self.max_poll_failures:
            # Keep the journal record open: resume() may still collect it later.
            err = BatchError(
                f"could not reach batch {live.record.batch_id or live.token} after "
                f"{live.failures} tries ({exc}); `haikucache batches resume` collects it later"
            )
            err.__cause__ = exc
            for job in list(live.jobs.values()):
                self._fail(job, err)
            with self._cond:
                self._live.pop(live.token, None)
                self._cond.notify_all()

    def _collect(self, live: _LiveBatch) -> None:
        """Read the results: account and store each answer, close the journal record, then
        hand every job its outcome. Callers hear back only once the record is closed, so a
        batch whose answers were all handed out is never found open (and paid again)."""
        record = live.record
        assert record.batch_id is not None
        counts = dict.fromkeys(("succeeded", "errored", "canceled", "expired", "realtime"), 0)
        counts.update(record.counts)
        hand_overs: list[tuple[_Job, Callable[[], None]]] = []
        try:
            try:
                with self.client.messages.batches.results(record.batch_id) as results:
                    for item in results:
                        data = item.to_dict()
                        with self._cond:
                            job = live.jobs.pop(str(data.get("custom_id")), None)
                        if job is None:
                            logger.warning(
                                "haikucache: batch %s returned an unknown custom_id %r",
                                record.batch_id,
                                data.get("custom_id"),
                            )
                            continue
                        outcome, hand_over = self._settle(job, data.get("result") or {}, record)
                        hand_overs.append((job, hand_over))
                        counts[outcome] = counts.get(outcome, 0) + 1
                        record.counts = counts
            except NotFoundError as exc:
                self._give_up(live, "lost", exc)
                return
            except (APIConnectionError, APIStatusError, UsageError) as exc:
                # The results are kept upstream for 29 days: read the rest on the next poll.
                record.counts = counts
                self._poll_failed(live, exc)
                return
            with self._cond:
                missing = list(live.jobs.values())
                live.jobs.clear()
            for job in missing:
                # No line for it: never silently dropped.
                counts["realtime"] += 1
                hand_overs.append(
                    (job, functools.partial(self._retry, job, "the batch returned no result"))
                )
            record.state = "ended"
            record.counts = counts
            record.ended_at = self.clock.now()
            record.error = None
            self.journal.update(record)
            with self._cond:
                self._live.pop(live.token, None)
                self._cond.notify_all()
        finally:
            # Also when reading stopped half-way: what was read is accounted and stored.
            for job, hand_over in hand_overs:
                try:
                    hand_over()
                except Exception as exc:
                    logger.exception("haikucache: handing over job %s failed", job.custom_id)
                    self._fail(job, exc)

    def _settle(
        self, job: _Job, result: Mapping[str, Any], record: JournalRecord
    ) -> tuple[str, Callable[[], None]]:
        """:meth:`_outcome`, where a failure (a strict store refusing the answer, say) is
        this job's alone."""
        try:
            return self._outcome(job, result, record)
        except Exception as exc:
            logger.warning(
                "haikucache: could not deliver job %s of batch %s: %r",
                job.custom_id,
                record.batch_id,
                exc,
            )
            kind = str(result.get("type"))
            return (kind if kind in _RESULT_KINDS else "errored"), functools.partial(
                self._fail, job, exc
            )

    def _outcome(
        self, job: _Job, result: Mapping[str, Any], record: JournalRecord
    ) -> tuple[str, Callable[[], None]]:
        """Apply the per-result policy: what to count, and how to hand the job its outcome."""
        kind = result.get("type")
        batch_id = record.batch_id
        if kind == "succeeded" and isinstance(result.get("message"), Mapping):
            return "succeeded", self._succeeded(job, dict(result["message"]), record.token)
        if kind == "errored":
            error = result.get("error") if isinstance(result.get("error"), Mapping) else {}
            assert isinstance(error, Mapping)
            inner = error.get("error") if isinstance(error.get("error"), Mapping) else {}
            assert isinstance(inner, Mapping)
            etype = str(inner.get("type") or "api_error")
            if etype in TRANSIENT_ERRORS and self.on_transient == "realtime" and job.attempts < 3:
                return "realtime", functools.partial(self._retry, job, etype)
            return "errored", functools.partial(
                self._fail,
                job,
                BatchItemErroredError(
                    f"{etype}: {inner.get('message', '')}",
                    custom_id=job.custom_id,
                    batch_id=batch_id,
                    error=error,
                ),
            )
        if kind == "expired":
            if self.on_expired == "raise":
                return "expired", functools.partial(
                    self._fail,
                    job,
                    BatchItemExpiredError(
                        "the job did not run within the batch's 24 hours",
                        custom_id=job.custom_id,
                        batch_id=batch_id,
                    ),
                )
            if self.on_expired == "resubmit" and job.attempts < 2 and not self._closing:
                return "realtime", functools.partial(self._requeue, job)
            return "realtime", functools.partial(self._retry, job, "expired")
        return "canceled", functools.partial(
            self._fail,
            job,
            BatchItemCanceledError(
                "the batch was canceled before this job ran",
                custom_id=job.custom_id,
                batch_id=batch_id,
            ),
        )

    def _succeeded(self, job: _Job, data: dict[str, Any], token: str) -> Callable[[], None]:
        """Account and store the answer now (the pipeline's ``deliver``: every stop reason
        is accounted and handed to the caller, only complete ones are stored, as realtime
        does), mark it delivered in the journal; return how its waiters get it."""
        call = job.call
        # A restart may read results a crashed run already accounted: account them once.
        # The journal's per-job mark covers every answer (one that ended at max_tokens is
        # never stored); the store check covers a crash between storing and marking.
        if job.resumed and (
            job.delivered_before
            or (
                self.engine.store is not None
                and self.engine.store.get(call.key, now=self.clock.now()) is not None
            )
        ):
            return functools.partial(self._resolve, job, Message(data), batch=True, paid=False)
        reservation, job.reservation = job.reservation, None
        outcome = self._context.pipeline.deliver(call, data, batch=True, reservation=reservation)
        message = self._context.message(outcome)
        self._mark_delivered(token, job.custom_id)
        return functools.partial(self._resolve, job, message, batch=True)

    def _mark_delivered(self, token: str, custom_id: str) -> None:
        mark = getattr(self.journal, "mark_delivered", None)  # a home-made journal may lack it
        if mark is None:
            return
        try:
            mark(token, custom_id)
        except Exception as exc:  # the answer is good; a resume may account it once more
            logger.warning(
                "haikucache: could not mark job %s delivered in %r: %r",
                custom_id,
                self.journal,
                exc,
            )

    def _delivered_before(self, token: str) -> set[str]:
        delivered = getattr(self.journal, "delivered", None)
        if delivered is None:
            return set()
        try:
            return set(delivered(token))
        except Exception as exc:
            logger.warning(
                "haikucache: could not read delivered jobs from %r: %r", self.journal, exc
            )
            return set()

    def _retry(self, job: _Job, why: str) -> None:
        logger.debug("haikucache: job %s goes realtime (%s)", job.custom_id, why)
        self._unreserve(job)  # the realtime call is budgeted by the pipeline
        if job.marker_path is not None:
            job.base = job.body
        job.batch = None
        self._send_realtime(job)

    def _requeue(self, job: _Job) -> None:
        if not job.body_json:
            try:
                job.body_json, size = _encode(job.body)
            except UsageError as exc:
                self._fail(job, exc)
                return
            job.size = size + _ENVELOPE_BYTES
        with self._cond:
            job.batch = None
            self._queue.append(job)
            self._queued_bytes += job.size
            if self._oldest is None:
                self._oldest = self.clock.now()
            self._cond.notify_all()

    # ------------------------------------------------------------------ resume

    def _adopt(self, record: JournalRecord, now: float) -> _LiveBatch:
        """Make an open journal record this process's live batch again."""
        rows: list[JournalJob] = self.journal.jobs(record.token)
        done = self._delivered_before(record.token)
        jobs: dict[str, _Job] = {}
        for row in rows:
            options = CallOptions(
                namespace=row.namespace, no_store=row.no_store, ttl=row.ttl, tags=row.tags
            )
            call = PreparedCall(
                body=row.body,
                key=row.key,
                model=row.model,
                stream=False,
                options=options,
                namespace=row.namespace,
                api_version=record.api_version,
                betas=tuple(record.betas),
            )
            job = _Job(call, row.body, None)
            job.custom_id = row.custom_id
            job.resumed = True
            job.delivered_before = row.custom_id in done
            job.attempts = 1
            job.body = row.body
            jobs[row.custom_id] = job
        live = _LiveBatch(record, jobs, now, self.poll_interval)
        live.next_poll = now
        if record.batch_id is None:
            live.requests = [{"custom_id": j.custom_id, "params": j.body} for j in jobs.values()]
        with self._cond:
            for job in jobs.values():
                job.batch = live
                self._inflight.setdefault(job.call.key, job)
        record.pid = os.getpid()
        record.host = socket.gethostname()
        self.journal.update(record)
        return live

    def _reconcile(self, live: _LiveBatch) -> None:
        """A batch whose POST never answered: find it upstream, else send it (once)."""
        record = live.record
        try:
            found, pending = self._find_upstream(record)
        except (APIConnectionError, APIStatusError) as exc:
            self._poll_failed(live, exc)
            return
        if found is not None:
            record.batch_id = found
            record.state = "submitted"
            record.submitted_at = record.submitted_at or self.clock.now()
            record.error = None
            live.requests = None
            self.journal.update(record)
            live.next_poll = self.clock.now()
            return
        if pending:
            self._schedule(live)  # an unverifiable candidate is still running: wait for it
            return
        requests = live.requests or [
            {"custom_id": j.custom_id, "params": j.body} for j in live.jobs.values()
        ]
        live.create_attempts += 1
        self._create(live, requests)

    def _find_upstream(self, record: JournalRecord) -> tuple[str | None, bool]:
        """Look for the batch of ``record`` among recent upstream batches.

        Returns ``(batch_id, False)`` when found; ``(None, True)`` while a candidate of the
        right size is still processing (its ``custom_id`` s cannot be read yet);
        ``(None, False)`` when it certainly was never created.
        """
        since = record.created_at - _RECONCILE_WINDOW
        pending = False
        prefix = record.token + "-"
        for batch in self.client.messages.batches.list(limit=100):
            created = _parse_time(batch.created_at)
            if created is not None and created < since:
                break
            counts = batch.request_counts.to_dict() if batch.request_counts else {}
            if sum(int(v or 0) for v in counts.values()) != record.jobs:
                continue
            if batch.processing_status != "ended":
                pending = True
                continue
            try:
                with self.client.messages.batches.results(str(batch.id)) as results:
                    first = next(iter(results), None)
            except (UsageError, APIStatusError):
                continue
            if first is not None and str(first.to_dict().get("custom_id", "")).startswith(prefix):
                return str(batch.id), False
        return None, pending


class AsyncBatcher:
    """The async face of :class:`Batcher`: ``await submit(...)`` returns the Message.

    The upstream work runs on the batcher's worker thread (with the sync ``client``), so
    the event loop is never blocked; cancelling an awaiting task cancels its job (and the
    upstream batch when nothing else waits on it).

    Takes the same arguments as :class:`Batcher`.

    Example:
        >>> async with haikucache.AsyncBatcher(client) as batcher:  # doctest: +SKIP
        ...     answers = await batcher.amap(requests)
    """

    def __init__(self, client: Client | None = None, **kwargs: Any) -> None:
        from ._client import AsyncClient

        if isinstance(client, AsyncClient):
            raise ConfigurationError(
                "AsyncBatcher takes a sync haikucache.Client (its worker thread does the I/O)"
            )
        self._batcher = Batcher(client, **kwargs)

    @property
    def batcher(self) -> Batcher:
        """The underlying :class:`Batcher`."""
        return self._batcher

    async def submit(
        self,
        params: Mapping[str, Any],
        options: CallOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> Message:
        """Queue one request and wait for its answer; see :meth:`Batcher.submit`."""
        return await asyncio.wrap_future(self._batcher.submit(params, options, deadline=deadline))

    async def amap(
        self,
        requests: Iterable[Mapping[str, Any]],
        options: CallOptions | None = None,
        *,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> list[Message | BaseException]:
        """Every answer, in input order; see :meth:`Batcher.map`."""
        futures = [self._batcher.submit(r, options) for r in requests]
        await asyncio.to_thread(self._batcher.flush)
        bar = BatchProgress(len(futures)) if progress else None
        if bar is not None:
            bar.__enter__()
            for f in futures:
                f.add_done_callback(
                    lambda f: bar.advance(failed=f.cancelled() or f.exception() is not None)
                )
        try:
            results: Sequence[Message | BaseException] = await asyncio.gather(
                *(asyncio.wrap_future(f) for f in futures), return_exceptions=True
            )
        finally:
            if bar is not None:
                bar.close()
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return list(results)

    async def flush(self) -> None:
        """See :meth:`Batcher.flush`."""
        await asyncio.to_thread(self._batcher.flush)

    async def resume(self, *, wait: bool = True, force: bool = False) -> ResumeReport:
        """See :meth:`Batcher.resume`."""
        return await asyncio.to_thread(self._batcher.resume, wait=wait, force=force)

    async def close(self, *, cancel: bool = False, wait: bool = True) -> None:
        """See :meth:`Batcher.close`."""
        await asyncio.to_thread(self._batcher.close, cancel=cancel, wait=wait)

    async def __aenter__(self) -> AsyncBatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(
            cancel=exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        )
