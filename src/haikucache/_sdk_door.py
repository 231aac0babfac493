"""The SDK door's core: what the ``anthropic`` middleware and the transport fallback share.

Both hooks see one HTTP exchange at a time and hand it to the pipeline::

    call    = door.prepare(body, headers, credential)   # options from haikucache-* headers
    outcome = door.pipeline.exchange(call, send)        # send: the hook's own I/O
    outcome.raw (a miss: the upstream response) or door.render(outcome) (JSON or SSE, $0)
    door.pipeline.open_stream(call) → a hit to render, or a StreamTap that SSETee feeds

Nothing here imports ``anthropic``: the same code serves the SDK on ``httpx`` (0.x) and on
``httpx2`` (>= 1), picked by :func:`http_library`. Per-call controls travel as request
headers (:func:`option_headers`), are read here and never reach the API; the outcome travels
back as response headers (:data:`INFO_HEADERS`) and in a registry read by
:func:`lookup_info`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import ModuleType
from typing import Any

from ._engine import CallInfo, CallOptions, Engine, PreparedCall, namespace_for
from ._exceptions import (
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    ControlError,
    RateLimitedError,
)
from ._pipeline import Outcome, Pipeline, Reply, StreamTap
from ._replay import message_to_sse
from ._upstream import DEFAULT_API_VERSION, betas_from_headers

__all__ = [
    "CACHE_HEADER",
    "INFO_HEADERS",
    "OPTION_HEADERS",
    "REGISTRY",
    "Door",
    "SSETee",
    "byte_stream_classes",
    "clean_headers",
    "credential_in",
    "error_reply",
    "http_library",
    "info_from_headers",
    "info_headers",
    "is_messages_call",
    "lookup_info",
    "option_headers",
    "options_from_headers",
    "passthrough_headers",
    "refusal",
    "refused",
    "tee_async",
    "tee_sync",
]

log = logging.getLogger("haikucache")

# Request headers that carry haikucache's per-call options; stripped before the API sees them.
NAMESPACE_HEADER = "haikucache-namespace"
NO_CACHE_HEADER = "haikucache-no-cache"
NO_STORE_HEADER = "haikucache-no-store"
TTL_HEADER = "haikucache-ttl"
TAGS_HEADER = "haikucache-tags"
OPTION_HEADERS = (NAMESPACE_HEADER, NO_CACHE_HEADER, NO_STORE_HEADER, TTL_HEADER, TAGS_HEADER)

# Response headers that say what haikucache did.
CACHE_HEADER = "haikucache-cache"
KEY_HEADER = "haikucache-key"
NAMESPACE_OUT_HEADER = "haikucache-namespace"
MODEL_HEADER = "haikucache-model"
COST_HEADER = "haikucache-cost-usd"
BASELINE_HEADER = "haikucache-baseline-usd"
SAVED_HEADER = "haikucache-saved-usd"
INFO_HEADERS = (
    CACHE_HEADER,
    KEY_HEADER,
    NAMESPACE_OUT_HEADER,
    MODEL_HEADER,
    COST_HEADER,
    BASELINE_HEADER,
    SAVED_HEADER,
)

MESSAGES_PATH = "/v1/messages"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


# --------------------------------------------------------------------------- options


def option_headers(
    *,
    namespace: str | None = None,
    no_cache: bool = False,
    no_store: bool = False,
    ttl: float | None = None,
    tags: Sequence[str] | None = None,
) -> dict[str, str]:
    """Request headers that carry haikucache's per-call options (validated here)."""
    options = CallOptions.of(namespace, no_cache, no_store, ttl, tags)
    headers: dict[str, str] = {}
    if options.namespace is not None:
        if not options.namespace.isascii():
            raise ConfigurationError("namespace must be ASCII to travel in a header")
        headers[NAMESPACE_HEADER] = options.namespace
    if options.no_cache:
        headers[NO_CACHE_HEADER] = "1"
    if options.no_store:
        headers[NO_STORE_HEADER] = "1"
    if options.ttl is not None:
        headers[TTL_HEADER] = repr(float(options.ttl))
    if options.tags:
        if any("," in tag or not tag.strip() or not tag.isascii() for tag in options.tags):
            raise ConfigurationError("tags sent as headers must be non-empty ASCII without ','")
        headers[TAGS_HEADER] = ",".join(options.tags)
    return headers


def _flag(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"header {name} must be 1/0 or true/false, got {value!r}")


def options_from_headers(headers: Mapping[str, str]) -> CallOptions:
    """The :class:`CallOptions` carried by lower-cased request ``headers``.

    Raises:
        ConfigurationError: a ``haikucache-*`` header has a value that means nothing.
    """
    ttl: float | None = None
    raw_ttl = headers.get(TTL_HEADER)
    if raw_ttl is not None:
        try:
            ttl = float(raw_ttl)
        except ValueError:
            raise ConfigurationError(
                f"header {TTL_HEADER} must be a number of seconds, got {raw_ttl!r}"
            ) from None
        if not math.isfinite(ttl):
            raise ConfigurationError(f"header {TTL_HEADER} must be finite, got {raw_ttl!r}")
    raw_tags = headers.get(TAGS_HEADER)
    tags = [t.strip() for t in raw_tags.split(",") if t.strip()] if raw_tags else None
    return CallOptions.of(
        headers.get(NAMESPACE_HEADER) or None,
        _flag(headers, NO_CACHE_HEADER),
        _flag(headers, NO_STORE_HEADER),
        ttl,
        tags,
    )


def clean_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """Lower-cased ``str`` headers (the SDK's ``Omit`` markers and ``None`` dropped)."""
    return {name.lower(): value for name, value in headers.items() if isinstance(value, str)}


# --------------------------------------------------------------------------- outcome


def info_headers(info: CallInfo, *, final: bool = True) -> dict[str, str]:
    """The response headers that report ``info``; dollars only once they are known."""
    headers = {
        CACHE_HEADER: info.cache,
        KEY_HEADER: info.key,
        NAMESPACE_OUT_HEADER: info.namespace,
        MODEL_HEADER: info.model,
    }
    if final:
        headers[COST_HEADER] = f"{info.cost_usd:.10f}"
        headers[BASELINE_HEADER] = f"{info.baseline_usd:.10f}"
        headers[SAVED_HEADER] = f"{info.saved_usd:.10f}"
    return headers


def info_from_headers(headers: Mapping[str, str]) -> CallInfo | None:
    """A :class:`CallInfo` rebuilt from response headers (``None`` if they are incomplete).

    Works for any response that went through a haikucache door, e.g. one served by another
    process; the split of the saving by cause is not carried in headers.
    """
    try:
        cache = headers[CACHE_HEADER]
        cost = float(headers[COST_HEADER])
        baseline = float(headers[BASELINE_HEADER])
        saved = float(headers[SAVED_HEADER])
    except (KeyError, ValueError):
        return None
    return CallInfo(
        cache=cache,
        key=headers.get(KEY_HEADER, ""),
        namespace=headers.get(NAMESPACE_OUT_HEADER, ""),
        model=headers.get(MODEL_HEADER, ""),
        cost_usd=cost,
        baseline_usd=baseline,
        saved_usd=saved,
    )


class _Box:
    """Where a streamed answer's :class:`CallInfo` lands once its stream completes."""

    __slots__ = ("info",)

    def __init__(self, info: CallInfo | None = None) -> None:
        self.info = info


class _Registry:
    """Which :class:`CallInfo` belongs to which message id and HTTP response object.

    Message ids are kept in a bounded LRU (ids are unique: a hit gets a fresh one);
    responses weakly, so a registry entry never keeps a response alive.
    """

    def __init__(self, size: int = 16_384) -> None:
        self._size = size
        self._by_id: OrderedDict[str, CallInfo] = OrderedDict()
        self._by_response: weakref.WeakKeyDictionary[Any, _Box] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def add_message(self, message_id: Any, info: CallInfo) -> None:
        if not isinstance(message_id, str) or not message_id:
            return
        with self._lock:
            self._by_id[message_id] = info
            self._by_id.move_to_end(message_id)
            while len(self._by_id) > self._size:
                self._by_id.popitem(last=False)

    def add_response(self, response: Any, box: _Box) -> None:
        try:
            with self._lock:
                self._by_response[response] = box
        except TypeError:  # pragma: no cover - every httpx response is weak-referenceable
            pass

    def by_message(self, message_id: str) -> CallInfo | None:
        with self._lock:
            return self._by_id.get(message_id)

    def by_response(self, response: Any) -> _Box | None:
        try:
            with self._lock:
                return self._by_response.get(response)
        except TypeError:
            return None


REGISTRY = _Registry()


def lookup_info(*, message_id: str | None = None, response: Any = None) -> CallInfo | None:
    """The registered outcome of a message id, or of an HTTP response object."""
    if response is not None:
        box = REGISTRY.by_response(response)
        if box is not None and box.info is not None:
            return box.info
    if message_id:
        return REGISTRY.by_message(message_id)
    return None


# --------------------------------------------------------------------------- http library


def http_library(client_class: type) -> ModuleType:
    """``httpx`` or ``httpx2``: whichever the class (an SDK's ``DefaultHttpxClient``) is built on."""
    import sys

    for base in client_class.__mro__:
        root = base.__module__.split(".")[0]
        if root in ("httpx", "httpx2"):
            return sys.modules[root]
    raise ConfigurationError(f"{client_class!r} is not built on httpx or httpx2")


_STREAM_CLASSES: dict[str, tuple[type, type]] = {}


def byte_stream_classes(lib: ModuleType) -> tuple[type, type]:
    """A sync and an async byte-stream class of ``lib``, over an iterator and a close callback."""
    classes = _STREAM_CLASSES.get(lib.__name__)
    if classes is not None:
        return classes

    class _SyncStream(lib.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: Iterator[bytes], close: Callable[[], None]) -> None:
            self._chunks = chunks
            self._close = close

        def __iter__(self) -> Iterator[bytes]:
            yield from self._chunks

        def close(self) -> None:
            self._close()

    class _AsyncStream(lib.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: AsyncIterator[bytes], close: Callable[[], Any]) -> None:
            self._chunks = chunks
            self._close = close

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._chunks:
                yield chunk

        async def aclose(self) -> None:
            await self._close()

    classes = (_SyncStream, _AsyncStream)
    _STREAM_CLASSES[lib.__name__] = classes
    return classes


# Hop-by-hop or body-describing headers that no longer hold once a body is re-emitted decoded.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def passthrough_headers(headers: Any, extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """Upstream response headers for a re-emitted (decoded) body, plus ``extra``."""
    kept = [(k, v) for k, v in headers.items() if k.lower() not in _BODY_HEADERS]
    return kept + list(extra.items())


# --------------------------------------------------------------------------- the door


class Door:
    """What the SDK's two hooks (the middleware and the transport) share: translation
    between HTTP exchanges and the :class:`~haikucache.Pipeline`, which runs every stage.

    Args:
        engine: the engine every call goes through.
        namespace: the tenant label of every call, given explicitly by the user.
        label_by_credential: without ``namespace``, label each call with a hash of the
            credential it is made with (the engine ``wrap()`` builds for itself: a copy of
            a client with another key is accounted as another tenant); otherwise calls
            carry the engine's own namespace, as at every other door. Either way the
            pipeline scopes every key by the credential's hash, so two keys never share
            answers unless the engine was built with ``share_across_credentials=True``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        namespace: str | None = None,
        label_by_credential: bool = False,
        upstream: str = "anthropic",
    ) -> None:
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ConfigurationError("namespace must be a non-empty string")
        self.engine = engine
        self.pipeline = Pipeline(engine, upstream=upstream)
        self._namespace = namespace
        self._label_by_credential = label_by_credential
        # The SDK runs its hooks once per attempt; a retry reuses its first attempt's call.
        self._attempts: OrderedDict[str, PreparedCall] = OrderedDict()
        self._attempts_lock = threading.Lock()

    def prepare_attempt(
        self, token: Any, retries_taken: int, prepare: Callable[[], PreparedCall]
    ) -> PreparedCall:
        """``prepare()`` once per logical call: a retry (same ``token``) gets the same call.

        Planning again would count a retry as another arrival of the prefix, and could
        send a retry a different body from its first attempt.
        """
        if not isinstance(token, str) or not token:
            return prepare()
        if retries_taken > 0:
            with self._attempts_lock:
                known = self._attempts.get(token)
            if known is not None:
                return known
        call = prepare()
        with self._attempts_lock:
            self._attempts[token] = call
            while len(self._attempts) > 1024:
                self._attempts.popitem(last=False)
        return call

    def namespace(self, credential: str | None) -> str | None:
        """The tenant label of a call made with ``credential`` (``None``: the engine's)."""
        if self._namespace is not None:
            return self._namespace
        return namespace_for(credential) if self._label_by_credential else None

    def prepare(
        self, body: Mapping[str, Any], headers: Mapping[str, str], credential: str | None
    ) -> PreparedCall:
        """Validate and key; ``headers`` lower-cased (options, version and betas).

        Raises:
            RequestValidationError: the API would reject the request (nothing was sent).
            ConfigurationError: a ``haikucache-*`` header is malformed.
        """
        options = options_from_headers(headers)
        if options.namespace is None and (label := self.namespace(credential)) is not None:
            options = replace(options, namespace=label)
        return self.pipeline.prepare(
            body,
            options,
            credential=credential,
            api_version=headers.get("anthropic-version", DEFAULT_API_VERSION),
            betas=betas_from_headers(headers),
        )

    @staticmethod
    def reply(response: Any, content: bytes) -> Reply[Any]:
        """An upstream reply for the pipeline: a message when ``content`` is one."""
        return Reply(
            _decode_message(content),
            response,
            status=response.status_code,
            headers=response.headers,
        )

    @staticmethod
    def render(outcome: Outcome[Any]) -> tuple[bytes, dict[str, str], CallInfo]:
        """An answer served locally as an HTTP body and headers (SSE when the call streams)."""
        message, info = outcome.message, outcome.info
        assert message is not None
        assert info is not None
        REGISTRY.add_message(message.get("id"), info)
        headers = info_headers(info)
        if outcome.call.stream:
            headers["content-type"] = "text/event-stream; charset=utf-8"
            headers["cache-control"] = "no-cache"
            return b"".join(message_to_sse(message)), headers, info
        headers["content-type"] = "application/json"
        return json.dumps(message, ensure_ascii=False).encode(), headers, info

    @staticmethod
    def kept(outcome: Outcome[Any]) -> CallInfo | None:
        """Register an upstream answer's accounting (for :func:`lookup_info`)."""
        if outcome.message is not None and outcome.info is not None:
            REGISTRY.add_message(outcome.message.get("id"), outcome.info)
        return outcome.info


def _decode_message(content: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(content)
    except ValueError:
        log.warning("haikucache: the API answered with a body that is not JSON; not cached")
        return None
    return data if isinstance(data, dict) and data.get("type") == "message" else None


class SSETee:
    """The pipeline's :class:`~haikucache.StreamTap` on a live SSE response, with the box
    the response's :func:`lookup_info` reads once the answer is complete."""

    def __init__(self, tap: StreamTap, box: _Box) -> None:
        self.tap = tap
        self._box = box

    def feed(self, chunk: bytes) -> bool:
        """Follow one chunk; ``True`` (once) when this chunk completed the answer."""
        info = self.tap.feed(chunk)
        if info is None:
            return False
        self._box.info = info
        if self.tap.message is not None:
            REGISTRY.add_message(self.tap.message.get("id"), info)
        return True

    @property
    def info(self) -> CallInfo | None:
        """The outcome, once the stream has completed."""
        return self._box.info


def tee_sync(lib: ModuleType, response: Any, request: Any, tee: SSETee) -> Any:
    """A ``lib.Response`` that streams ``response``'s decoded body while ``tee`` follows it."""
    sync_stream, _ = byte_stream_classes(lib)

    def chunks() -> Iterator[bytes]:
        for chunk in response.iter_bytes():
            if tee.feed(chunk):
                tee.tap.store()
            yield chunk

    return lib.Response(
        response.status_code,
        headers=passthrough_headers(response.headers, _streaming_headers(tee.tap.call)),
        stream=sync_stream(chunks(), response.close),
        request=request,
        extensions=response.extensions,
    )


def tee_async(lib: ModuleType, response: Any, request: Any, tee: SSETee) -> Any:
    """The async twin of :func:`tee_sync`."""
    _, async_stream = byte_stream_classes(lib)

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in response.aiter_bytes():
            if tee.feed(chunk):
                await tee.tap.astore()
            yield chunk

    return lib.Response(
        response.status_code,
        headers=passthrough_headers(response.headers, _streaming_headers(tee.tap.call)),
        stream=async_stream(chunks(), response.aclose),
        request=request,
        extensions=response.extensions,
    )


def _streaming_headers(call: PreparedCall) -> dict[str, str]:
    # The dollars are known only once the stream ends: see info() for them.
    return {
        CACHE_HEADER: "miss",
        KEY_HEADER: call.key,
        NAMESPACE_OUT_HEADER: call.namespace,
        MODEL_HEADER: call.model,
    }


def refusal(exc: ControlError, *, retry: bool = True) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A control's refusal as the API would say it: status, error body, headers.

    A budget is a 402 ``billing_error``; a rate limit a 429 ``rate_limit_error`` and an open
    circuit a 529 ``overloaded_error``, both with ``retry-after`` (the SDKs wait and retry
    them, unless ``retry`` is off: ``x-should-retry: false``); a failed shared store a 503.
    """
    if isinstance(exc, BudgetExceededError):
        status, kind, after = 402, "billing_error", None
    elif isinstance(exc, RateLimitedError):
        status, kind, after = 429, "rate_limit_error", exc.retry_after
    elif isinstance(exc, CircuitOpenError):
        status, kind, after = 529, "overloaded_error", exc.retry_after
    else:  # ControlStoreError: the shared state is down
        status, kind, after = 503, "api_error", None
    headers = {"content-type": "application/json", CACHE_HEADER: "refused"}
    if after is not None:
        headers["retry-after"] = str(max(1, math.ceil(after)))
    if after is None or not retry:
        headers["x-should-retry"] = "false"
    body = {"type": "error", "error": {"type": kind, "message": f"haikucache: {exc}"}}
    return status, body, headers


def error_reply(raw: Any, response: Any) -> Reply[Any]:
    """An upstream error response as the pipeline's reply: no message, its status and
    headers (the controls stage learns from them), ``raw`` handed back to the door."""
    return Reply(None, raw, status=response.status_code, headers=response.headers)


def refused(tap: StreamTap, response: Any) -> None:
    """A stream request answered with an error status instead of a stream: tell the tap
    (nothing is stored; the controls stage learns it)."""
    if not 200 <= response.status_code < 300:
        tap.fail(response.status_code, response.headers)


def credential_in(headers: Mapping[str, str]) -> str | None:
    """The credential a request's own headers carry (``x-api-key`` or a bearer token)."""
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "x-api-key" and value:
            return value
        if lowered == "authorization" and value:
            return value[7:] if value.lower().startswith("bearer ") else value
    return None


def is_messages_call(method: str, path: str) -> bool:
    """``POST /v1/messages`` exactly (not count_tokens, not batches).

    The path may carry a query: SDKs before 1.0 send beta calls to ``/v1/messages?beta=true``.
    """
    return method.upper() == "POST" and path.split("?")[0].rstrip("/").endswith(MESSAGES_PATH)
