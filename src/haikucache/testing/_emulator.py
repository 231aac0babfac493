"""The emulator: state, routing, messages, token counting, batches and the bill.

:meth:`Emulator.handle` is the one seam: it takes a request (method, absolute URL, headers,
body bytes) and returns an :class:`EmulatorResponse`. The httpx/httpx2 transports and the
loopback server are thin adapters around it.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import uuid
from collections import Counter, deque
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import xxhash

from haikucache._catalog import lookup_model
from haikucache._clock import Clock, SystemClock
from haikucache.testing._answers import generate_text_pieces, generate_thinking, input_from_schema
from haikucache.testing._batches import (
    BatchFailures,
    BatchRecord,
    failures,
    rfc3339,
    validate_envelope,
)
from haikucache.testing._bill import Bill, BillEntry, price_usage
from haikucache.testing._faults import FAULT_KINDS, Fault, FaultSet
from haikucache.testing._prompt_cache import CacheUsage, PromptCache
from haikucache.testing._ratelimit import EmulatorLimits, RateLimitTable
from haikucache.testing._request import (
    API_MODELS,
    API_VERSIONS,
    APIError,
    ParsedRequest,
    invalid,
    parse_request,
)
from haikucache.testing._sse import encode_event, message_events
from haikucache.testing._tokenizer import Tokenizer

if TYPE_CHECKING:
    from haikucache.testing._server import EmulatorServer
    from haikucache.testing._transports import EmulatorTransport

__all__ = ["ConnectionCut", "Emulator", "EmulatorResponse", "LogRecord"]

_MAX_MESSAGES_BODY = 32 * 1024 * 1024
_MAX_BATCH_BODY = 256 * 1024 * 1024
_UNKNOWN_MODEL_MIN_CACHEABLE = 1024
_JSON_HEADERS = (("content-type", "application/json"),)


class ConnectionCut(Exception):
    """Raised by a streamed body's iterator when the connection must be cut mid-stream."""


@dataclass
class EmulatorResponse:
    """What :meth:`Emulator.handle` answers; adapters turn it into HTTP.

    Attributes:
        status: HTTP status (0 when ``drop`` is set).
        headers: response headers, lower-case names.
        body: the JSON (or JSONL) body, when not streaming.
        chunks: the SSE body, produced lazily, one event per chunk; iterating may raise
            :class:`ConnectionCut`, upon which the adapter must drop the connection.
        delay: seconds the adapter must wait before answering.
        drop: the adapter must close the connection without answering.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: Iterator[bytes] | None = None
    delay: float = 0.0
    drop: bool = False

    @property
    def is_stream(self) -> bool:
        """Whether the body is an SSE stream (``chunks``) rather than ``body``."""
        return self.chunks is not None

    def json(self) -> Any:
        """The decoded JSON body (not for streams)."""
        return json.loads(self.body)


@dataclass(frozen=True)
class LogRecord:
    """One request the emulator served.

    Attributes:
        method: HTTP method.
        path: URL path (no query).
        status: response status (0 for a dropped connection).
        headers: request headers, lower-case names.
        body: the parsed JSON body, or ``None`` (no body, or not JSON).
        endpoint: the endpoint name, e.g. ``"messages"`` (``"unknown"`` for a 404).
        request_id: the ``request-id`` that was sent back.
        time: when it was served, on the emulator's clock.
    """

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: Any
    endpoint: str
    request_id: str
    time: float


@dataclass
class _Context:
    method: str
    path: str
    query: dict[str, list[str]]
    base_url: str
    headers: dict[str, str]
    raw: bytes
    request_id: str
    version: str = ""
    body: Any = None
    extra_headers: list[tuple[str, str]] = field(default_factory=list)


class Emulator:
    """A faithful local emulator of the Anthropic Messages API.

    Args:
        clock: what TTLs and the batch lifecycle read; default the wall clock.
        seed: makes answers, ids and batch result order deterministic.
        batch_processing_seconds: simulated time a batch takes to end, on ``clock``.
        echo_model: ``"as_sent"`` answers with the model string as sent, ``"dated"`` with
            the dated id (``claude-haiku-4-5-20251001``) when the model is known.
        api_keys: ``None`` accepts any non-empty key or token; otherwise only these, sent
            as ``x-api-key`` or ``Authorization: Bearer``; any other gets the API's 401
            ``authentication_error``.
        extra_models: model ids accepted besides the real API's (e.g. a gateway's own
            names); they are answered like any model but not priced. Any other unknown model
            gets the API's 404 ``not_found_error`` (``model: <id>``), on ``/v1/messages``,
            ``count_tokens`` and as an ``errored`` batch result.
        log_limit: how many :class:`LogRecord` s :attr:`log` keeps.
        refresh: which prompt-cache entries a read refreshes, a rule the docs leave open:
            ``"deepest"`` (default) only the entry read; ``"path"`` also every shorter live
            entry on the request's path.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        seed: int = 0,
        batch_processing_seconds: float = 60.0,
        echo_model: str = "as_sent",
        api_keys: Collection[str] | None = None,
        *,
        extra_models: Collection[str] = (),
        log_limit: int = 10_000,
        refresh: str = "deepest",
    ) -> None:
        if echo_model not in ("as_sent", "dated"):
            raise ValueError("echo_model must be 'as_sent' or 'dated'")
        if batch_processing_seconds < 0:
            raise ValueError("batch_processing_seconds must be >= 0")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.seed = seed
        self.batch_processing_seconds = float(batch_processing_seconds)
        self.echo_model = echo_model
        if isinstance(api_keys, str) or isinstance(extra_models, str):
            # A lone string would be taken letter by letter.
            raise TypeError("api_keys and extra_models take a collection of strings")
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self.extra_models = frozenset(extra_models)
        self.bill = Bill()
        self.requests: Counter[str] = Counter()
        self.log: deque[LogRecord] = deque(maxlen=log_limit)
        self.organization_id = str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4))
        self._tokenizer = Tokenizer()
        self._cache = PromptCache(refresh)
        self._faults = FaultSet(seed)
        self._rate_limits = RateLimitTable()
        self._batch_rpm: int | None = None
        self._batches: dict[str, BatchRecord] = {}
        self._batch_seq = 0
        self._batch_failures: list[BatchFailures] = []
        self._ids = random.Random(f"haikucache-emulator-ids:{seed}")
        # One lock around all state: the loopback server is threaded, and prompt-cache
        # writes must be visible to the next request in a well-defined order.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Emulator(seed={self.seed}, clock={self.clock!r})"

    # ----------------------------------------------------------------- public helpers

    def count_tokens_of(self, text: str) -> int:
        """Tokens of ``text`` by the emulator's own tokenizer."""
        return self._tokenizer.count(text)

    @property
    def cache_entries(self) -> int:
        """Number of live prompt-cache entries."""
        with self._lock:
            return self._cache.live_entries(self.clock.now())

    def clear_cache(self) -> None:
        """Forget every prompt-cache entry (the real API has no such switch)."""
        with self._lock:
            self._cache.clear()

    def inject(
        self,
        kind: str,
        *,
        times: int | None = 1,
        endpoint: str = "messages",
        status: int | None = None,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        after_events: int = 3,
        seconds: float = 0.0,
        rate: float = 1.0,
        start: float | None = None,
        until: float | None = None,
        model: str | None = None,
    ) -> Fault:
        """Make the next matching request(s) fail; see :class:`Fault` for the kinds.

        ``inject("transient", times=None, rate=0.05)`` fails about one request in twenty
        with a 529, 500 or 429, as a flaky upstream does (``haikucache emulator
        --fault-rate``).

        Args:
            kind: ``"rate_limit"``, ``"overloaded"``, ``"server_error"``, ``"status"``,
                ``"drop"``, ``"stream_error"``, ``"stream_cut"``, ``"latency"`` or
                ``"transient"`` (one of the first three, drawn per request).
            times: how many requests it applies to; ``None`` for every one until cleared.
            endpoint: endpoint name (``"messages"``, ``"count_tokens"``,
                ``"batches.create"`` …) or ``"*"``.
            status: HTTP status for ``"status"`` (required there).
            retry_after: ``retry-after`` header in seconds (``"rate_limit"`` defaults to 1).
            retry_after_ms: ``retry-after-ms`` header.
            after_events: stream faults fire after this many SSE events.
            seconds: delay for ``"latency"``.
            rate: the probability that a matching request gets it (seeded by ``seed``);
                ``times`` counts only the requests that did.
            start: it applies only from this time on (on the emulator's clock).
            until: it applies only before this time (on the emulator's clock).
            model: it applies only to requests for this model (alias or dated id).

        Returns:
            The :class:`Fault`, whose ``hits`` count how often it fired.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if kind == "status" and status is None:
            raise ValueError("inject('status') needs status=<HTTP status>")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not 0 <= rate <= 1:
            raise ValueError("rate must be between 0 and 1")
        if start is not None and until is not None and until <= start:
            raise ValueError("until must be after start")
        if kind == "rate_limit" and retry_after is None and retry_after_ms is None:
            retry_after = 1
        return self._faults.add(
            Fault(
                kind=kind,
                endpoint=endpoint,
                times=times,
                status=status,
                retry_after=retry_after,
                retry_after_ms=retry_after_ms,
                after_events=max(0, after_events),
                seconds=seconds,
                rate=rate,
                start=start,
                until=until,
                model=model,
            )
        )

    def overload(
        self,
        rate: float = 1.0,
        *,
        seconds: float | None = None,
        start: float | None = None,
        endpoint: str = "messages",
        model: str | None = None,
    ) -> Fault:
        """Answer 529 ``overloaded_error`` to a share of requests, for a while or for good.

        ``overload(0.5)`` fails half the calls (seeded draws) until :meth:`clear_faults`;
        ``overload(seconds=30)`` fails every call for the next 30 s of the emulator's clock.

        Args:
            rate: the share of matching requests that get a 529.
            seconds: how long it lasts from ``start``; ``None``: until cleared.
            start: when it begins, on the emulator's clock; default now.
            endpoint: the endpoint name, or ``"*"``.
            model: only requests for this model (alias or dated id); default every model.
        """
        begin = self.clock.now() if start is None else start
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be > 0")
        return self.inject(
            "overloaded",
            times=None,
            endpoint=endpoint,
            rate=rate,
            start=begin,
            until=None if seconds is None else begin + seconds,
            model=model,
        )

    def set_rate_limits(
        self,
        model: str = "claude-haiku-4-5",
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        cache_aware: bool | None = None,
    ) -> None:
        """Enforce the API's rate limits for one model (reference §4.4, §4.7).

        Each limit is a token bucket holding one minute of it and refilling continuously. A
        request over a limit gets the API's 429 ``rate_limit_error`` with ``retry-after``
        (whole seconds); every ``/v1/messages`` answer for the model carries
        ``anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}``
        (token counts rounded to the nearest thousand, as the API does). Alias and dated id
        share the buckets. All ``None`` removes the model's limits.

        Args:
            model: the model id.
            rpm: requests per minute.
            itpm: input tokens per minute: ``input_tokens + cache_creation_input_tokens``,
                plus cache reads unless the limit is cache-aware.
            otpm: output tokens per minute (charged as produced; ``max_tokens`` does not
                count); a request is refused while the bucket is empty.
            cache_aware: cache reads do not count toward ITPM; default: as the API, true
                for Claude Haiku 4.5 only.
        """
        for name, value in (("rpm", rpm), ("itpm", itpm), ("otpm", otpm)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None")
        scope = _limit_scope(model)
        aware = RateLimitTable.cache_aware_by_default(scope) if cache_aware is None else cache_aware
        with self._lock:
            self._rate_limits.configure(scope, EmulatorLimits(rpm, itpm, otpm, aware))

    def set_batch_rate_limit(self, rpm: int | None) -> None:
        """Requests per minute over every Message Batches endpoint, shared by all models
        (reference §3.5); ``None`` removes it. Over it, a batch call gets a 429."""
        if rpm is not None and (not isinstance(rpm, int) or rpm < 1):
            raise ValueError("rpm must be a positive int or None")
        with self._lock:
            self._batch_rpm = rpm

    def clear_faults(self) -> None:
        """Remove every injected fault (and every batch failure)."""
        self._faults.clear()
        with self._lock:
            self._batch_failures.clear()

    def inject_batch_errors(
        self,
        *,
        rate: float = 0.0,
        custom_ids: Collection[str] = (),
        error_type: str = "api_error",
        times: int | None = None,
    ) -> BatchFailures:
        """Make some batch requests end ``errored`` (a partial failure of the batch).

        Args:
            rate: share of requests that fail, chosen by a hash of the seed and the
                ``custom_id`` (so a run repeats).
            custom_ids: requests that fail whatever the rate.
            error_type: the API error type in their results, e.g. ``"api_error"``,
                ``"overloaded_error"`` (transient) or ``"invalid_request_error"``.
            times: at most this many results fail in total (``None``: no limit).

        Returns:
            The :class:`BatchFailures`; ``hits`` counts the results it failed.
        """
        plan = failures(rate, custom_ids, error_type, times)
        with self._lock:
            self._batch_failures.append(plan)
        return plan

    @property
    def batch_count(self) -> int:
        """How many batches were created (deleted ones included)."""
        with self._lock:
            return len(self._batches)

    # ----------------------------------------------------------------- adapters

    def transport(self) -> EmulatorTransport:
        """An in-process ``httpx`` transport (sync and async) talking to this emulator."""
        from haikucache.testing._transports import httpx_transport

        return httpx_transport(self)

    def httpx2_transport(self) -> Any:
        """The same for ``httpx2`` (what ``anthropic`` >= 1.0 uses).

        Raises:
            MissingDependencyError: when ``httpx2`` is not installed.
        """
        from haikucache.testing._transports import httpx2_transport

        return httpx2_transport(self)

    def start_server(self, host: str = "127.0.0.1", port: int = 0) -> EmulatorServer:
        """Serve this emulator over loopback HTTP/1.1 in a background thread.

        Returns:
            The server; ``.base_url`` is ``http://host:port``, ``.stop()`` stops it.
        """
        from haikucache.testing._server import EmulatorServer

        return EmulatorServer(self, host, port).start()

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Context manager: serve over loopback and yield the base URL."""
        server = self.start_server(host, port)
        try:
            yield server.base_url
        finally:
            server.stop()

    # ----------------------------------------------------------------- the seam

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> EmulatorResponse:
        """Answer one HTTP request.

        Args:
            method: HTTP method.
            url: the absolute URL; its scheme and host are used for ``results_url``.
            headers: request headers (any case).
            body: the raw request body.
        """
        parts = urlsplit(url)
        ctx = _Context(
            method=method.upper(),
            path=parts.path.rstrip("/") or "/",
            query=parse_qs(parts.query),
            base_url=f"{parts.scheme or 'http'}://{parts.netloc}",
            headers={k.lower(): v for k, v in headers.items()},
            raw=body,
            request_id=self._new_id("req_"),
        )
        endpoint, batch_id = _route(ctx.method, ctx.path)
        response = self._dispatch(ctx, endpoint, batch_id)
        self.log.append(
            LogRecord(
                method=ctx.method,
                path=ctx.path,
                status=response.status,
                headers=ctx.headers,
                body=ctx.body,
                endpoint=endpoint,
                request_id=ctx.request_id,
                time=self.clock.now(),
            )
        )
        return response

    def _dispatch(self, ctx: _Context, endpoint: str, batch_id: str | None) -> EmulatorResponse:
        delay = 0.0
        try:
            if endpoint == "unknown":
                raise APIError(404, "not_found_error", f"Not found: {ctx.method} {ctx.path}")
            if endpoint == "method_not_allowed":
                raise APIError(
                    405, "invalid_request_error", f"Method {ctx.method} not allowed for {ctx.path}"
                )
            with self._lock:
                self.requests[endpoint] += 1
            self._authenticate(ctx.headers)
            ctx.version = self._api_version(ctx.headers)
            limit = _MAX_BATCH_BODY if endpoint == "batches.create" else _MAX_MESSAGES_BODY
            if len(ctx.raw) > limit:
                raise APIError(
                    413,
                    "request_too_large",
                    f"Request exceeds the maximum allowed number of bytes ({limit}).",
                )
            parse_error: APIError | None = None
            if ctx.raw and ctx.method in ("POST", "PUT", "PATCH"):
                try:
                    ctx.body = json.loads(ctx.raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    parse_error = invalid(
                        f"There was an error parsing the body of your request: invalid JSON ({exc})"
                    )
            streaming = (
                endpoint == "messages"
                and isinstance(ctx.body, dict)
                and ctx.body.get("stream") is True
            )
            model = ctx.body.get("model") if isinstance(ctx.body, dict) else None
            fault, kind, delay = self._faults.take(
                endpoint,
                streaming=streaming,
                now=self.clock.now(),
                model=model if isinstance(model, str) else None,
            )
            response = self._fault_response(ctx, fault, kind) if fault is not None else None
            if response is None:
                if parse_error is not None:
                    raise parse_error
                if endpoint.startswith("batches."):
                    self._limit_batch_call(ctx)
                response = self._endpoint(ctx, endpoint, batch_id, fault)
        except APIError as err:
            response = self._error(ctx, err)
        response.delay += delay
        return response

    def _endpoint(
        self, ctx: _Context, endpoint: str, batch_id: str | None, fault: Fault | None
    ) -> EmulatorResponse:
        if endpoint == "messages":
            return self._messages(ctx, fault)
        if endpoint == "count_tokens":
            if ctx.body is None:
                raise invalid("Request body must be a JSON object")
            parsed = self._parse(ctx.body, ctx.version, "count_tokens")
            return self._json(ctx, 200, {"input_tokens": parsed.total_tokens})
        if endpoint == "batches.create":
            return self._batch_create(ctx)
        if endpoint == "batches.list":
            return self._batch_list(ctx)
        assert batch_id is not None
        if endpoint == "batches.retrieve":
            with self._lock:
                batch = self._batch(batch_id)
                return self._json(ctx, 200, batch.to_json(ctx.base_url))
        if endpoint == "batches.cancel":
            return self._batch_cancel(ctx, batch_id)
        if endpoint == "batches.delete":
            return self._batch_delete(ctx, batch_id)
        return self._batch_results(ctx, batch_id)

    def _parse(self, body: Any, version: str, endpoint: str) -> ParsedRequest:
        """Validate a request (the 400s), then its model (the 404): one path for every door."""
        parsed = parse_request(body, version=version, endpoint=endpoint, tokenizer=self._tokenizer)
        if parsed.model not in API_MODELS and parsed.model not in self.extra_models:
            raise APIError(404, "not_found_error", f"model: {parsed.model}")
        return parsed

    # ----------------------------------------------------------------- auth & errors

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        key = headers.get("x-api-key", "").strip()
        if not key:
            auth = headers.get("authorization", "").strip()
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        if not key:
            raise APIError(401, "authentication_error", "x-api-key header is required")
        if self.api_keys is not None and key not in self.api_keys:
            raise APIError(401, "authentication_error", "invalid x-api-key")

    @staticmethod
    def _api_version(headers: Mapping[str, str]) -> str:
        version = headers.get("anthropic-version", "").strip()
        if not version:
            raise invalid("anthropic-version: header is required")
        if version not in API_VERSIONS:
            raise invalid(
                f"anthropic-version: invalid version {version!r}; supported versions "
                f"are {', '.join(API_VERSIONS)}"
            )
        return version

    def _headers(self, ctx: _Context, content_type: str) -> list[tuple[str, str]]:
        return [
            ("content-type", content_type),
            ("request-id", ctx.request_id),
            ("anthropic-organization-id", self.organization_id),
            *ctx.extra_headers,
        ]

    def _json(self, ctx: _Context, status: int, payload: Any) -> EmulatorResponse:
        return EmulatorResponse(
            status=status,
            headers=self._headers(ctx, "application/json"),
            body=json.dumps(payload, ensure_ascii=False).encode(),
        )

    def _error(self, ctx: _Context, err: APIError) -> EmulatorResponse:
        ctx.extra_headers.extend(err.headers.items())
        return self._json(
            ctx,
            err.status,
            {
                "type": "error",
                "error": {"type": err.error_type, "message": err.message},
                "request_id": ctx.request_id,
            },
        )

    def _fault_response(self, ctx: _Context, fault: Fault, kind: str) -> EmulatorResponse | None:
        headers: dict[str, str] = {}
        retry_after = fault.retry_after
        if kind == "rate_limit" and retry_after is None and fault.retry_after_ms is None:
            # The real API always sends retry-after with a 429 (reference §4.7).
            retry_after = 1
        if retry_after is not None:
            headers["retry-after"] = _number(retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = _number(fault.retry_after_ms)
        if kind == "drop":
            return EmulatorResponse(status=0, headers=[], drop=True)
        if kind == "rate_limit":
            headers.update(
                {
                    "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": _reset_time(
                        self.clock.now(), retry_after
                    ),
                }
            )
            raise APIError(
                fault.status or 429,
                "rate_limit_error",
                "This request would exceed your organization's rate limit. Please try again later.",
                headers,
            )
        if kind == "overloaded":
            raise APIError(fault.status or 529, "overloaded_error", "Overloaded", headers)
        if kind == "server_error":
            raise APIError(fault.status or 500, "api_error", "Internal server error", headers)
        if kind == "status":
            status = int(fault.status or 500)
            raise APIError(
                status, _error_type_for(status), f"Injected error (HTTP {status})", headers
            )
        return None  # stream faults act inside the stream

    def _limit_batch_call(self, ctx: _Context) -> None:
        with self._lock:
            verdict = self._rate_limits.admit_batch_call(self._batch_rpm, self.clock.now())
        if verdict is None:
            return
        headers = verdict.headers or {}
        if not verdict.admitted:
            raise APIError(
                429,
                "rate_limit_error",
                f"This request would exceed the rate limit for your organization "
                f"({self.organization_id}) of {self._batch_rpm} Message Batches API requests "
                "per minute. Please try again later.",
                {**headers, "retry-after": str(verdict.retry_after)},
            )
        ctx.extra_headers.extend(headers.items())

    # ----------------------------------------------------------------- messages

    def _messages(self, ctx: _Context, fault: Fault | None) -> EmulatorResponse:
        if ctx.body is None:
            raise invalid("Request body must be a JSON object")
        parsed = self._parse(ctx.body, ctx.version, "messages")
        failing_stream = fault is not None and fault.kind in ("stream_error", "stream_cut")
        with self._lock:
            now = self.clock.now()
            scope = _limit_scope(parsed.model)
            limits = self._rate_limits.limits(scope)
            if limits is not None:
                read = self._cache.peek_read(parsed.blocks, parsed.breakpoints, now)
                cost = parsed.total_tokens - (read if limits.cache_aware else 0)
                verdict = self._rate_limits.admit(scope, now, input_cost=cost)
                if verdict is not None and not verdict.admitted:
                    raise APIError(
                        429,
                        "rate_limit_error",
                        f"This request would exceed the rate limit for your organization "
                        f"({self.organization_id}) of {_limit_words(verdict.limit, limits)}. "
                        "Please try again later.",
                        {**(verdict.headers or {}), "retry-after": str(verdict.retry_after)},
                    )
            message = self._answer(parsed, now, tier="standard")
            if limits is not None:
                charged = self._rate_limits.charge_output(
                    scope, now, message["usage"]["output_tokens"]
                )
                ctx.extra_headers.extend(charged.items())
        if not failing_stream:
            # A stream that fails is not billed: the client never got a complete answer.
            self._bill(
                ctx.request_id,
                "/v1/messages",
                parsed.model,
                message["usage"],
                batch=False,
                when=now,
            )
        if not parsed.stream:
            return self._json(ctx, 200, message)
        return EmulatorResponse(
            status=200,
            headers=[
                *self._headers(ctx, "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
            ],
            chunks=_stream(message, fault if failing_stream else None),
        )

    def _answer(self, parsed: ParsedRequest, now: float, *, tier: str) -> dict[str, Any]:
        info = parsed.info
        min_tokens = info.min_cacheable_tokens if info is not None else _UNKNOWN_MODEL_MIN_CACHEABLE
        cached: CacheUsage = self._cache.apply(parsed.blocks, parsed.breakpoints, min_tokens, now)
        content, stop_reason, stop_sequence, output_tokens = self._generate(parsed)
        usage = {
            "input_tokens": parsed.total_tokens - cached.read - cached.written,
            "cache_creation_input_tokens": cached.written,
            "cache_read_input_tokens": cached.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cached.write_5m,
                "ephemeral_1h_input_tokens": cached.write_1h,
            },
            "output_tokens": output_tokens,
            "service_tier": tier,
        }
        model = parsed.model
        if self.echo_model == "dated" and info is not None:
            model = info.dated_id
        return {
            "id": self._new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage,
        }

    def _generate(self, parsed: ParsedRequest) -> tuple[list[dict[str, Any]], str, str | None, int]:
        rng = random.Random((self.seed << 64) ^ parsed.answer_key)
        tok = self._tokenizer
        budget = parsed.max_tokens
        content: list[dict[str, Any]] = []
        used = 0
        if parsed.thinking_budget is not None:
            target = min(parsed.thinking_budget, rng.randint(40, 160))
            thinking = generate_thinking(rng, tok, target)
            cost = tok.count(thinking)
            if cost >= budget:
                thinking, cost = _truncate_to_tokens(tok, thinking, budget)
                return [self._thinking_block(parsed, thinking)], "max_tokens", None, cost
            content.append(self._thinking_block(parsed, thinking))
            used += cost

        tool = self._pick_tool(parsed, rng)
        if tool is not None:
            tool_input = input_from_schema(
                tool.get("input_schema") or {}, rng, parsed.last_user_text
            )
            tool_cost = 8 + tok.count(tool["name"]) + tok.count(json.dumps(tool_input))
            preamble = ""
            if parsed.tool_choice == "auto":
                preamble = f"I'll use the {tool['name']} tool to help with this."
            pre_cost = tok.count(preamble) if preamble else 0
            if used + pre_cost + tool_cost <= budget:
                if preamble:
                    content.append({"type": "text", "text": preamble})
                content.append(
                    {
                        "type": "tool_use",
                        "id": self._new_id("toolu_"),
                        "name": tool["name"],
                        "input": tool_input,
                    }
                )
                return content, "tool_use", None, used + pre_cost + tool_cost

        # Structured outputs: a text answer (not a tool call) is one JSON text that
        # follows the schema.
        fmt = (parsed.body.get("output_config") or {}).get("format") or parsed.body.get(
            "output_format"
        )
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            text = json.dumps(
                input_from_schema(fmt.get("schema") or {}, rng, parsed.last_user_text)
            )
            cost = tok.count(text)
            if used + cost <= budget:
                content.append({"type": "text", "text": text})
                return content, "end_turn", None, used + cost

        texts, costs = generate_text_pieces(rng, tok, rng.randint(25, 250))
        remaining = budget - used
        spent = 0
        stop_reason = "end_turn"
        kept = len(texts)
        for i, cost in enumerate(costs):
            if spent + cost > remaining:
                stop_reason = "max_tokens"
                kept = i
                break
            spent += cost
        text_parts = texts[:kept]
        text = "".join(text_parts)
        if parsed.prefill and text and not text[0].isspace():
            text = " " + text
        stop_sequence = None
        if parsed.stop_sequences:
            hits = [(text.find(s), s) for s in parsed.stop_sequences if s in text]
            if hits:
                position, stop_sequence = min(hits)
                text = text[:position]
                spent = tok.count(text)
                stop_reason = "stop_sequence"
        if not text and stop_reason == "max_tokens" and remaining > 0:
            # Even one word did not fit: the real API still returns what it produced.
            text = texts[0].strip()[: max(1, remaining * 4)]
            spent = min(remaining, tok.count(text))
        if text:
            content.append({"type": "text", "text": text})
        return content, stop_reason, stop_sequence, used + spent

    def _thinking_block(self, parsed: ParsedRequest, thinking: str) -> dict[str, Any]:
        digest = xxhash.xxh3_128_digest(f"{self.seed}:{parsed.answer_key}:{thinking}".encode())
        signature = base64.b64encode(digest * 8).decode()
        shown = "" if parsed.thinking_display == "omitted" else thinking
        return {"type": "thinking", "thinking": shown, "signature": signature}

    @staticmethod
    def _pick_tool(parsed: ParsedRequest, rng: random.Random) -> dict[str, Any] | None:
        if not parsed.tools or parsed.tool_choice == "none":
            return None
        if parsed.tool_choice == "tool":
            return next((t for t in parsed.tools if t.get("name") == parsed.tool_choice_name), None)
        if parsed.tool_choice == "any" or parsed.last_turn_is_plain_user:
            return parsed.tools[rng.randrange(len(parsed.tools))]
        # auto after a tool_result: answer in text, so agent loops end.
        return None

    def _bill(
        self,
        request_id: str,
        path: str,
        model: str,
        usage: dict[str, Any],
        *,
        batch: bool,
        when: float,
        custom_id: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        usd, priced = price_usage(model, usage, batch=batch)
        self.bill.add(
            BillEntry(
                request_id=request_id,
                path=path,
                model=model,
                usage=usage,
                usd=usd,
                batch=batch,
                time=when,
                priced=priced,
                custom_id=custom_id,
                batch_id=batch_id,
            )
        )

    # ----------------------------------------------------------------- batches

    def _batch_create(self, ctx: _Context) -> EmulatorResponse:
        requests = validate_envelope(ctx.body)
        with self._lock:
            now = self.clock.now()
            batch_id = self._new_id("msgbatch_")
            order = list(range(len(requests)))
            random.Random(f"{self.seed}:{batch_id}").shuffle(order)
            self._batch_seq += 1
            batch = BatchRecord(
                id=batch_id,
                seq=self._batch_seq,
                created_at=now,
                processing_seconds=self.batch_processing_seconds,
                version=ctx.version,
                requests=requests,
                order=order,
            )
            self._batches[batch_id] = batch
            return self._json(ctx, 200, batch.to_json(ctx.base_url))

    def _batch(self, batch_id: str) -> BatchRecord:
        """The live batch, advanced to now. Caller holds the lock."""
        batch = self._batches.get(batch_id)
        if batch is None or batch.deleted:
            raise APIError(404, "not_found_error", f"Message batch {batch_id!r} not found")
        self._advance(batch, ctx_now=self.clock.now())
        return batch

    def _advance(self, batch: BatchRecord, ctx_now: float) -> None:
        if batch.status == "ended":
            return
        if batch.status == "canceling":
            assert batch.cancel_initiated_at is not None
            stop = min(batch.cancel_initiated_at, batch.expires_at)
            self._finish(
                batch,
                ended_at=max(ctx_now, batch.cancel_initiated_at),
                until=stop,
                leftover="canceled",
            )
            return
        end = batch.created_at + batch.processing_seconds
        if end <= batch.expires_at and ctx_now >= end:
            self._finish(batch, ended_at=end, until=end, leftover="expired")
        elif end > batch.expires_at and ctx_now >= batch.expires_at:
            # Whatever did not run within 24 hours expires (reference §3.5).
            self._finish(
                batch, ended_at=batch.expires_at, until=batch.expires_at, leftover="expired"
            )

    def _finish(self, batch: BatchRecord, *, ended_at: float, until: float, leftover: str) -> None:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results: list[dict[str, Any]] = []
        for position, index in enumerate(batch.order):
            custom_id, params = batch.requests[index]
            when = batch.completion_time(position)
            if when > until + 1e-9:
                counts[leftover] += 1
                results.append({"custom_id": custom_id, "result": {"type": leftover}})
                continue
            try:
                parsed = self._parse(params, batch.version, "batch")
            except APIError as err:
                counts["errored"] += 1
                results.append(_errored(custom_id, err.error_type, err.message, self._new_id))
                continue
            injected = next(
                (t for t in (f.take(custom_id, self.seed) for f in self._batch_failures) if t),
                None,
            )
            if injected is not None:
                # A partial failure: not billed, as the real service bills no errored result.
                counts["errored"] += 1
                results.append(
                    _errored(custom_id, injected, BatchFailures.message(injected), self._new_id)
                )
                continue
            message = self._answer(parsed, when, tier="batch")
            counts["succeeded"] += 1
            results.append(
                {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
            )
            self._bill(
                batch.id,
                "/v1/messages/batches",
                parsed.model,
                message["usage"],
                batch=True,
                when=when,
                custom_id=custom_id,
                batch_id=batch.id,
            )
        batch.results = results
        batch.counts = counts
        batch.status = "ended"
        batch.ended_at = ended_at

    def _batch_list(self, ctx: _Context) -> EmulatorResponse:
        limit_raw = ctx.query.get("limit", ["20"])[-1]
        try:
            limit = int(limit_raw)
        except ValueError:
            raise invalid("limit: Input should be a valid integer") from None
        if limit < 1:
            raise invalid("limit: Input should be greater than or equal to 1")
        if limit > 1000:
            raise invalid("limit: Input should be less than or equal to 1000")
        after_id = ctx.query.get("after_id", [None])[-1]
        before_id = ctx.query.get("before_id", [None])[-1]
        if after_id and before_id:
            raise invalid("Only one of after_id and before_id may be given")
        with self._lock:
            now = self.clock.now()
            # Newest first; deleted batches keep their place so pagination stays stable.
            ordered = sorted(
                self._batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True
            )
            anchor = after_id or before_id
            if anchor:
                position = next((i for i, b in enumerate(ordered) if b.id == anchor), None)
                if position is None:
                    raise invalid(
                        f"{'after_id' if after_id else 'before_id'}: unknown message batch {anchor!r}"
                    )
                if after_id:
                    candidates = [b for b in ordered[position + 1 :] if not b.deleted]
                    page, has_more = candidates[:limit], len(candidates) > limit
                else:
                    candidates = [b for b in ordered[:position] if not b.deleted]
                    page, has_more = candidates[-limit:], len(candidates) > limit
            else:
                candidates = [b for b in ordered if not b.deleted]
                page, has_more = candidates[:limit], len(candidates) > limit
            for batch in page:
                self._advance(batch, now)
            data = [b.to_json(ctx.base_url) for b in page]
        return self._json(
            ctx,
            200,
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    def _batch_cancel(self, ctx: _Context, batch_id: str) -> EmulatorResponse:
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status == "ended":
                raise invalid(
                    f"Message batch {batch_id!r} has already ended and cannot be canceled"
                )
            if batch.status == "in_progress":
                batch.status = "canceling"
                batch.cancel_initiated_at = self.clock.now()
            return self._json(ctx, 200, batch.to_json(ctx.base_url))

    def _batch_delete(self, ctx: _Context, batch_id: str) -> EmulatorResponse:
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status != "ended":
                raise invalid(
                    f"Message batch {batch_id!r} cannot be deleted while processing_status is "
                    f"{batch.status!r}; cancel it and wait for it to end first"
                )
            batch.deleted = True
            batch.results = None
        return self._json(ctx, 200, {"id": batch_id, "type": "message_batch_deleted"})

    def _batch_results(self, ctx: _Context, batch_id: str) -> EmulatorResponse:
        with self._lock:
            batch = self._batch(batch_id)
            if batch.status != "ended" or batch.results is None:
                raise invalid(
                    f"Results for message batch {batch_id!r} are not available yet: "
                    f"processing_status is {batch.status!r}; poll until it is 'ended'"
                )
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch.results)
        return EmulatorResponse(
            status=200, headers=self._headers(ctx, "application/x-jsonl"), body=body.encode()
        )

    # ----------------------------------------------------------------- ids

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            raw = self._ids.randbytes(17)
        # Base64 with letters for its two symbols: ids look like the real base62 ones.
        return prefix + "01" + base64.b64encode(raw, altchars=b"xQ").decode()[:22]


def _errored(custom_id: str, error_type: str, message: str, new_id: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "result": {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": error_type, "message": message},
                "request_id": new_id("req_"),
            },
        },
    }


def _route(method: str, path: str) -> tuple[str, str | None]:
    if path == "/v1/messages":
        return ("messages" if method == "POST" else "method_not_allowed"), None
    if path == "/v1/messages/count_tokens":
        return ("count_tokens" if method == "POST" else "method_not_allowed"), None
    if path == "/v1/messages/batches":
        if method == "POST":
            return "batches.create", None
        return ("batches.list" if method == "GET" else "method_not_allowed"), None
    prefix = "/v1/messages/batches/"
    if path.startswith(prefix):
        rest = path[len(prefix) :].split("/")
        if len(rest) == 1 and rest[0]:
            if method == "GET":
                return "batches.retrieve", rest[0]
            if method == "DELETE":
                return "batches.delete", rest[0]
            return "method_not_allowed", None
        if len(rest) == 2 and rest[0]:
            if rest[1] == "cancel":
                return ("batches.cancel" if method == "POST" else "method_not_allowed"), rest[0]
            if rest[1] == "results":
                return ("batches.results" if method == "GET" else "method_not_allowed"), rest[0]
    return "unknown", None


def _stream(message: dict[str, Any], fault: Fault | None) -> Iterator[bytes]:
    events = list(message_events(message))
    # A stream fault fires before message_stop at the latest, so it always bites.
    fire_at = min(fault.after_events, len(events) - 1) if fault is not None else -1
    for n, event in enumerate(events):
        if n == fire_at and fault is not None:
            if fault.kind == "stream_cut":
                raise ConnectionCut("connection cut by an injected stream_cut fault")
            yield encode_event(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            )
            return
        yield encode_event(event)


def _truncate_to_tokens(tok: Tokenizer, text: str, budget: int) -> tuple[str, int]:
    words = text.split(" ")
    out: list[str] = []
    for word in words:
        candidate = " ".join([*out, word])
        if tok.count(candidate) > budget:
            break
        out.append(word)
    result = " ".join(out)
    return result, tok.count(result)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _reset_time(now: float, retry_after: float | None) -> str:
    return rfc3339(now + (retry_after or 1)) or ""


def _error_type_for(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _limit_scope(model: str) -> str:
    # The API's limits are per model, whatever it is called: alias and dated id share them.
    info = lookup_model(model)
    return info.name if info is not None else model


def _limit_words(limit: str, limits: EmulatorLimits) -> str:
    if limit == "requests":
        return f"{limits.rpm} requests per minute"
    if limit == "input-tokens":
        return f"{limits.itpm} input tokens per minute"
    return f"{limits.otpm} output tokens per minute"
