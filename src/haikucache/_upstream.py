"""The HTTP layer: headers, URLs, retries, error mapping, and the sync and async senders.

Everything that does not touch the network is a plain function here (header building, URL
joining, the retry policy, error mapping), shared by :class:`SyncUpstream` and
:class:`AsyncUpstream`, which differ only where bytes move. httpx exceptions are translated
into haikucache's tree in one place, :func:`translate_transport_errors`.

Retries follow the official SDK (reference §5.1): connection errors, timeouts, 408, 409, 429
and every status >= 500 (529 included) are retried up to ``max_retries`` times; an
``x-should-retry`` header overrides the status rule; the wait is the server's
``retry-after-ms`` / ``retry-after`` hint when it is between 0 and 60 seconds, else capped
exponential backoff with jitter. A stream is retried only until its response headers
arrive: once the first event may have reached the caller, replaying it would duplicate output.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json as jsonlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx

from ._exceptions import (
    STATUS_BY_ERROR_TYPE,
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    UpstreamError,
    status_error_class,
)
from ._sse import ServerSentEvent, SSEDecoder

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "AsyncEventStream",
    "AsyncLineStream",
    "AsyncUpstream",
    "EventStream",
    "LineStream",
    "SyncUpstream",
    "betas_from_headers",
    "build_headers",
    "error_from_event",
    "error_from_response",
    "is_retryable",
    "join_url",
    "parse_retry_after",
    "resolve_base_url",
    "retry_delay",
    "should_retry_status",
    "translate_transport_errors",
]

log = logging.getLogger("haikucache")

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_API_VERSION = "2023-06-01"
# As the SDK: 10 minutes overall, but give up connecting after 5 s.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
DEFAULT_CONNECTION_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A server hint above this is ignored in favour of backoff (SDK <= 1.0 behaviour, §5.1):
# a client should not hang for minutes on one header.
MAX_RETRY_AFTER = 60.0

TimeoutTypes = float | httpx.Timeout
HeaderTypes = Mapping[str, str | None]


# --------------------------------------------------------------------------- configuration


def resolve_base_url(base_url: str | httpx.URL | None) -> str:
    """The base URL: the argument, else ``$ANTHROPIC_BASE_URL``, else the public API.

    Raises:
        ConfigurationError: the URL is not ``http://`` or ``https://``.
    """
    url = str(base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"base_url must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def join_url(base_url: str, path: str) -> str:
    """``path`` appended to ``base_url``; an absolute URL (e.g. ``results_url``) is kept as-is.

    A gateway base URL with a path prefix keeps it: ``https://gw/anthropic`` +
    ``/v1/messages`` is ``https://gw/anthropic/v1/messages``.
    """
    if path.startswith(("http://", "https://")):
        return path
    return f"{base_url}/{path.lstrip('/')}"


def as_timeout(timeout: TimeoutTypes | None) -> httpx.Timeout:
    """An :class:`httpx.Timeout` from seconds (``None``: the default, 600 s / 5 s connect)."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return httpx.Timeout(float(timeout))


def merge_headers(base: Mapping[str, str], extra: HeaderTypes | None) -> dict[str, str]:
    """``base`` updated with ``extra`` (names lower-cased); a ``None`` value removes a header."""
    merged = dict(base)
    if extra:
        for name, value in extra.items():
            key = name.lower()
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = str(value)
    return merged


def build_headers(
    *,
    api_key: str | None,
    auth_token: str | None,
    api_version: str = DEFAULT_API_VERSION,
    user_agent: str,
    default_headers: HeaderTypes | None = None,
) -> dict[str, str]:
    """The headers every request carries (reference §4.1), lower-cased.

    ``default_headers`` come last, so they can override (or, with ``None``, remove) any of
    ours; ``anthropic-beta`` is passed through from them unchanged.
    """
    headers = {
        "accept": "application/json",
        "anthropic-version": api_version,
        "user-agent": user_agent,
    }
    if api_key:
        headers["x-api-key"] = api_key
    if auth_token:
        headers["authorization"] = f"Bearer {auth_token}"
    return merge_headers(headers, default_headers)


def betas_from_headers(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The ``anthropic-beta`` values of lower-cased ``headers``, e.g. ``("a", "b")``."""
    value = headers.get("anthropic-beta")
    if not value:
        return ()
    return tuple(beta.strip() for beta in value.split(",") if beta.strip())


# --------------------------------------------------------------------------- retry policy


def should_retry_status(status_code: int, headers: Mapping[str, str] | None = None) -> bool:
    """Whether an error status is worth another attempt.

    ``x-should-retry: true|false`` wins; otherwise 408 (request timeout), 409 (lock
    conflict), 429 (rate limit) and every 5xx (529 overloaded included) are retried.
    """
    hint = headers.get("x-should-retry") if headers else None
    if hint == "true":
        return True
    if hint == "false":
        return False
    return status_code in (408, 409, 429) or status_code >= 500


def is_retryable(error: UpstreamError) -> bool:
    """Whether the attempt that raised ``error`` may be retried."""
    if isinstance(error, APIConnectionError):  # timeouts included
        return True
    if isinstance(error, APIStatusError):
        return should_retry_status(error.status_code, error.headers)
    return False


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, then ``retry-after``.

    ``retry-after`` may be seconds (a float is accepted) or an HTTP date. Returns ``None``
    when neither header is present or parseable.
    """
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed)) - (time.time() if now is None else now)


def retry_delay(
    retries_taken: int,
    headers: Mapping[str, str] | None = None,
    *,
    rand: Callable[[], float] = random.random,
    now: float | None = None,
) -> float:
    """Seconds to wait before retry number ``retries_taken + 1``.

    The server's hint when ``0 < hint <= 60``; otherwise ``min(0.5 * 2**n, 8)`` reduced by
    up to 25 % of jitter, so that many clients hit by the same outage do not retry in step.
    """
    hint = parse_retry_after(headers, now=now)
    if hint is not None and 0 < hint <= MAX_RETRY_AFTER:
        return hint
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 100), MAX_RETRY_DELAY)
    return backoff * (1.0 - 0.25 * rand())


# --------------------------------------------------------------------------- error mapping


@contextlib.contextmanager
def translate_transport_errors() -> Iterator[None]:
    """Turn httpx's transport failures into :class:`APIConnectionError` / :class:`APITimeoutError`.

    The one place where httpx exceptions cross into haikucache's tree.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError() from exc
    except httpx.RequestError as exc:  # transport errors, undecodable bodies, redirect loops
        raise APIConnectionError(
            f"Connection error: {exc}" if str(exc) else "Connection error."
        ) from exc


def _decode_body(content: bytes) -> Any:
    if not content:
        return None
    try:
        return jsonlib.loads(content)
    except ValueError:
        return content.decode("utf-8", errors="replace")


def _error_parts(body: Any) -> tuple[str | None, str | None, str | None]:
    """``(error.type, error.message, request_id)`` of an error body, as far as present."""
    if not isinstance(body, Mapping):
        return None, None, None
    error = body.get("error")
    error_type = message = None
    if isinstance(error, Mapping):
        value = error.get("type")
        error_type = value if isinstance(value, str) else None
        value = error.get("message")
        message = value if isinstance(value, str) else None
    request_id = body.get("request_id")
    return error_type, message, request_id if isinstance(request_id, str) else None


def error_from_response(
    status_code: int, content: bytes, headers: Mapping[str, str]
) -> APIStatusError:
    """The exception for an error response (its body already read).

    The class comes from the status (:func:`status_error_class`); type, message and request
    id from the body ``{"type": "error", "error": {"type", "message"}, "request_id"}`` when
    it has that shape (a proxy in the way may answer HTML or nothing at all).
    """
    body = _decode_body(content)
    error_type, message, body_request_id = _error_parts(body)
    if message is None:
        if isinstance(body, str) and body.strip():
            message = body.strip()[:500]
        elif body is not None:
            message = jsonlib.dumps(body)[:500]
        else:
            message = f"HTTP {status_code} with an empty body"
    return status_error_class(status_code)(
        message,
        status_code=status_code,
        error_type=error_type,
        request_id=headers.get("request-id") or body_request_id,
        body=body,
        headers=headers,
    )


def error_from_event(data: Mapping[str, Any], headers: Mapping[str, str]) -> APIStatusError:
    """The exception for an ``error`` event inside a 200 stream.

    The status is the one the error type implies (``overloaded_error`` → 529), so the class
    is the same as if the error had come before the stream started.
    """
    error_type, message, body_request_id = _error_parts(data)
    status_code = STATUS_BY_ERROR_TYPE.get(error_type or "", 500)
    return status_error_class(status_code)(
        message or "error event in the stream",
        status_code=status_code,
        error_type=error_type,
        request_id=body_request_id or headers.get("request-id"),
        body=dict(data),
        headers=headers,
    )


def decode_json_object(content: bytes) -> dict[str, Any]:
    """A successful response's JSON object.

    Raises:
        APIResponseValidationError: the body is not a JSON object.
    """
    try:
        data = jsonlib.loads(content)
    except ValueError as exc:
        raise APIResponseValidationError(
            f"the API answered with a body that is not JSON: {content[:200]!r}"
        ) from exc
    if not isinstance(data, dict):
        raise APIResponseValidationError(
            f"expected a JSON object from the API, got {type(data).__name__}"
        )
    return data


def decode_event(sse: ServerSentEvent, headers: Mapping[str, str]) -> dict[str, Any] | None:
    """The JSON of one SSE event; ``None`` for an event without data.

    Raises:
        APIStatusError: the event is an ``error`` event (mapped by its error type).
        APIResponseValidationError: the data is not a JSON object.
    """
    if not sse.data:
        return None
    data = sse.json()
    if not isinstance(data, dict):
        raise APIResponseValidationError(
            f"stream event data is not a JSON object: {sse.data[:200]!r}"
        )
    if sse.event == "error" or data.get("type") == "error":
        raise error_from_event(data, headers)
    if "type" not in data and sse.event:
        data["type"] = sse.event
    return data


# --------------------------------------------------------------------------- streams


class _EventStreamBase:
    """What the sync and async event streams share: decoding, and no I/O."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.headers: httpx.Headers = response.headers
        self._decoder = SSEDecoder()
        self._pending: deque[ServerSentEvent] = deque()
        self._eof = False

    @property
    def request_id(self) -> str | None:
        """The ``request-id`` response header."""
        value: str | None = self.headers.get("request-id")
        return value

    def _next_decoded(self) -> dict[str, Any] | None:
        while self._pending:
            data = decode_event(self._pending.popleft(), self.headers)
            if data is not None:
                return data
        return None

    def _feed(self, chunk: bytes | None) -> None:
        if chunk is None:
            self._eof = True
            self._pending.extend(self._decoder.flush())
        elif chunk:
            self._pending.extend(self._decoder.feed(chunk))


class EventStream(_EventStreamBase):
    """The decoded events of one SSE response, each yielded as soon as its bytes arrive.

    Yields every event's JSON (``ping`` included); raises the mapped
    :class:`~haikucache.APIStatusError` on an ``error`` event and
    :class:`~haikucache.APIConnectionError` when the connection drops. The response is
    closed when the stream ends, fails, or :meth:`close` is called.
    """

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self._chunks = response.iter_bytes()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            while True:
                data = self._next_decoded()
                if data is not None:
                    return data
                if self._eof:
                    raise StopIteration
                with translate_transport_errors():
                    chunk = next(self._chunks, None)
                self._feed(chunk)
        except BaseException:  # the end, an error event, a dropped connection: release it
            self.close()
            raise

    def close(self) -> None:
        """Release the connection (safe to call twice)."""
        closer = getattr(self._chunks, "close", None)
        if closer is not None:
            closer()
        self.response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncEventStream(_EventStreamBase):
    """The async twin of :class:`EventStream` (``async for``, ``await close()``)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self._chunks = response.aiter_bytes()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            while True:
                data = self._next_decoded()
                if data is not None:
                    return data
                if self._eof:
                    raise StopAsyncIteration
                with translate_transport_errors():
                    chunk = await anext(self._chunks, None)
                self._feed(chunk)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Release the connection (safe to call twice)."""
        closer = getattr(self._chunks, "aclose", None)
        if closer is not None:
            await closer()
        await self.response.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class LineStream:
    """The non-empty lines of a response (JSONL), read as they arrive, never all at once."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.headers: httpx.Headers = response.headers
        self._lines = response.iter_lines()

    def __iter__(self) -> LineStream:
        return self

    def __next__(self) -> str:
        try:
            while True:
                with translate_transport_errors():
                    line = next(self._lines)
                if line.strip():
                    return line
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the connection (safe to call twice)."""
        closer = getattr(self._lines, "close", None)
        if closer is not None:
            closer()
        self.response.close()

    def __enter__(self) -> LineStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncLineStream:
    """The async twin of :class:`LineStream`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.headers: httpx.Headers = response.headers
        self._lines = response.aiter_lines()

    def __aiter__(self) -> AsyncLineStream:
        return self

    async def __anext__(self) -> str:
        try:
            while True:
                with translate_transport_errors():
                    line = await anext(self._lines)
                if line.strip():
                    return line
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Release the connection (safe to call twice)."""
        closer = getattr(self._lines, "aclose", None)
        if closer is not None:
            await closer()
        await self.response.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncLineStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- senders


def _user_agent() -> str:
    # Imported late: this module is loaded while the package __init__ still runs.
    from ._version import __version__

    return f"haikucache/{__version__}"


class _BaseUpstream:
    """Configuration and the non-I/O half of sending, shared by the sync and async twins."""

    def __init__(
        self,
        *,
        api_key: str | None,
        auth_token: str | None,
        base_url: str | httpx.URL | None,
        anthropic_version: str,
        default_headers: HeaderTypes | None,
        timeout: TimeoutTypes | None,
        max_retries: int,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.api_key = api_key
        self.auth_token = auth_token
        self.base_url = resolve_base_url(base_url)
        self.anthropic_version = anthropic_version
        self.timeout = as_timeout(timeout)
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})
        self._urls: dict[str, httpx.URL] = {}
        self.headers = build_headers(
            api_key=api_key,
            auth_token=auth_token,
            api_version=anthropic_version,
            user_agent=_user_agent(),
            default_headers=default_headers,
        )

    def _request_kwargs(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: HeaderTypes | None,
        timeout: TimeoutTypes | None,
    ) -> dict[str, Any]:
        return {
            "method": method,
            "url": self._url(path),
            "json": json,
            "params": {k: v for k, v in params.items() if v is not None} if params else None,
            "headers": merge_headers(self.headers, headers),
            "timeout": self.timeout if timeout is None else as_timeout(timeout),
        }

    def _url(self, path: str) -> httpx.URL:
        # Parsing a URL is a third of httpx's per-request cost, and a client sends to a
        # handful of paths; the bound keeps per-batch paths from growing it forever.
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= 64:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(join_url(self.base_url, path))
        return url

    def _retry_after(self, error: UpstreamError, retries_taken: int) -> float | None:
        """Seconds to wait before retrying ``error``, or ``None`` to give up and raise it."""
        if retries_taken >= self.max_retries or not is_retryable(error):
            return None
        headers = error.headers if isinstance(error, APIStatusError) else None
        delay = retry_delay(retries_taken, headers)
        log.info(
            "haikucache: retrying in %.2fs (attempt %d of %d) after %s",
            delay,
            retries_taken + 2,
            self.max_retries + 1,
            error,
        )
        return delay


class SyncUpstream(_BaseUpstream):
    """Sends requests to the Messages API with a blocking :class:`httpx.Client`.

    Args:
        api_key: sent as ``x-api-key``.
        auth_token: sent as ``Authorization: Bearer``.
        base_url: see :func:`resolve_base_url`.
        anthropic_version: the ``anthropic-version`` header.
        default_headers: extra headers on every request (``None`` values remove ours).
        timeout: seconds, or an :class:`httpx.Timeout`; default 600 s (5 s to connect).
        max_retries: retries after the first attempt (so ``2`` means up to 3 attempts).
        transport: an httpx transport for the client built here (e.g. the emulator's).
        http_client: an :class:`httpx.Client` to use instead; it is not closed by
            :meth:`close`, since its owner may share it.
        sleep: how to wait between retries (tests pass a recorder, so retries take no time).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        auth_token: str | None = None,
        base_url: str | httpx.URL | None = None,
        anthropic_version: str = DEFAULT_API_VERSION,
        default_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            auth_token=auth_token,
            base_url=base_url,
            anthropic_version=anthropic_version,
            default_headers=default_headers,
            timeout=timeout,
            max_retries=max_retries,
        )
        if http_client is not None:
            if transport is not None:
                raise ConfigurationError("pass either http_client or transport, not both")
            if not isinstance(http_client, httpx.Client):
                raise ConfigurationError(
                    f"http_client must be an httpx.Client, got {type(http_client).__name__}"
                )
            self.http_client = http_client
            self._owns_http_client = False
        else:
            self.http_client = httpx.Client(
                transport=transport,
                timeout=self.timeout,
                limits=DEFAULT_CONNECTION_LIMITS,
                follow_redirects=True,
            )
            self._owns_http_client = True
        self._sleep = sleep or time.sleep

    def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> tuple[dict[str, Any], httpx.Headers]:
        """Send a request (with retries) and return its JSON object and response headers.

        Raises:
            APIStatusError: an error status (the subclass names it), after retries.
            APIConnectionError: no response, after retries.
            APIResponseValidationError: the body is not a JSON object.
        """
        kwargs = self._request_kwargs(
            method, path, json=json, params=params, headers=headers, timeout=timeout
        )
        response = self._send(self.http_client.build_request(**kwargs), stream=False)
        return decode_json_object(response.content), response.headers

    def stream_sse(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> EventStream:
        """Send a request and return its SSE events, decoded one by one as they arrive.

        Errors before the body starts (statuses, connection failures) are retried and
        raised here; errors after that are raised while iterating.
        """
        kwargs = self._request_kwargs(
            method, path, json=json, params=params, headers=headers, timeout=timeout
        )
        return EventStream(self._send(self.http_client.build_request(**kwargs), stream=True))

    def stream_lines(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> LineStream:
        """Send a request and return the non-empty lines of its body, read as they arrive."""
        kwargs = self._request_kwargs(
            method, path, json=None, params=params, headers=headers, timeout=timeout
        )
        return LineStream(self._send(self.http_client.build_request(**kwargs), stream=True))

    def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        retries_taken = 0
        while True:
            try:
                return self._attempt(request, stream=stream)
            except UpstreamError as error:
                delay = self._retry_after(error, retries_taken)
                if delay is None:
                    raise
            self._sleep(delay)
            retries_taken += 1

    def _attempt(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        with translate_transport_errors():
            response = self.http_client.send(request, stream=stream)
            if response.is_success:
                return response
            try:
                response.read()
            finally:
                response.close()
        raise error_from_response(response.status_code, response.content, response.headers)

    def close(self) -> None:
        """Close the HTTP client, if this upstream created it."""
        if self._owns_http_client:
            self.http_client.close()


class AsyncUpstream(_BaseUpstream):
    """The async twin of :class:`SyncUpstream`, on :class:`httpx.AsyncClient`.

    ``sleep`` is an async callable (default :func:`asyncio.sleep`); ``transport`` an
    :class:`httpx.AsyncBaseTransport`; ``http_client`` an :class:`httpx.AsyncClient`.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        auth_token: str | None = None,
        base_url: str | httpx.URL | None = None,
        anthropic_version: str = DEFAULT_API_VERSION,
        default_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            auth_token=auth_token,
            base_url=base_url,
            anthropic_version=anthropic_version,
            default_headers=default_headers,
            timeout=timeout,
            max_retries=max_retries,
        )
        if http_client is not None:
            if transport is not None:
                raise ConfigurationError("pass either http_client or transport, not both")
            if not isinstance(http_client, httpx.AsyncClient):
                raise ConfigurationError(
                    f"http_client must be an httpx.AsyncClient, got {type(http_client).__name__}"
                )
            self.http_client = http_client
            self._owns_http_client = False
        else:
            self.http_client = httpx.AsyncClient(
                transport=transport,
                timeout=self.timeout,
                limits=DEFAULT_CONNECTION_LIMITS,
                follow_redirects=True,
            )
            self._owns_http_client = True
        self._sleep = sleep or asyncio.sleep

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> tuple[dict[str, Any], httpx.Headers]:
        """See :meth:`SyncUpstream.request_json`."""
        kwargs = self._request_kwargs(
            method, path, json=json, params=params, headers=headers, timeout=timeout
        )
        response = await self._send(self.http_client.build_request(**kwargs), stream=False)
        return decode_json_object(response.content), response.headers

    async def stream_sse(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> AsyncEventStream:
        """See :meth:`SyncUpstream.stream_sse`."""
        kwargs = self._request_kwargs(
            method, path, json=json, params=params, headers=headers, timeout=timeout
        )
        response = await self._send(self.http_client.build_request(**kwargs), stream=True)
        return AsyncEventStream(response)

    async def stream_lines(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> AsyncLineStream:
        """See :meth:`SyncUpstream.stream_lines`."""
        kwargs = self._request_kwargs(
            method, path, json=None, params=params, headers=headers, timeout=timeout
        )
        response = await self._send(self.http_client.build_request(**kwargs), stream=True)
        return AsyncLineStream(response)

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        retries_taken = 0
        while True:
            try:
                return await self._attempt(request, stream=stream)
            except UpstreamError as error:
                delay = self._retry_after(error, retries_taken)
                if delay is None:
                    raise
            await self._sleep(delay)
            retries_taken += 1

    async def _attempt(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        with translate_transport_errors():
            response = await self.http_client.send(request, stream=stream)
            if response.is_success:
                return response
            try:
                await response.aread()
            finally:
                await response.aclose()
        raise error_from_response(response.status_code, response.content, response.headers)

    async def aclose(self) -> None:
        """Close the HTTP client, if this upstream created it."""
        if self._owns_http_client:
            await self.http_client.aclose()

    close = aclose
