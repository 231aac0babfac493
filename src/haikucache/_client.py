"""``Client`` and ``AsyncClient``: the haikucache door shaped like the official ``anthropic`` SDK.

::

    client = haikucache.Client()            # ANTHROPIC_API_KEY from the environment
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=256,
                                     messages=[{"role": "user", "content": "Hi"}])
    message.content[0].text, message.haikucache.saved_usd

Every call runs the engine's chain in the open: ``engine.prepare`` (validate, key; raises
:class:`~haikucache.RequestValidationError` before any HTTP), the upstream request, then
``engine.record`` (account), whose :class:`~haikucache.CallInfo` is attached to the message
as ``.haikucache``. The sync and async twins share everything but the I/O: parameter
collection, stream accumulation, pagination state and result parsing live in plain helpers.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload
from urllib.parse import quote

import httpx

from ._controls import BatchControls, Upstream, error_headers, error_status
from ._engine import CallOptions, Engine, PreparedCall
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    ConfigurationError,
    RequestValidationError,
    UsageError,
)
from ._pipeline import FLIGHT_LEASE, FLIGHT_WAIT, Outcome, Pipeline, Reply, StreamTap
from ._replay import message_to_events
from ._sdk_door import credential_in
from ._sse import MessageAccumulator
from ._types import (
    ContentBlockDeltaEvent,
    DeletedMessageBatch,
    Message,
    MessageBatch,
    MessageBatchIndividualResponse,
    MessageTokensCount,
    StreamEvent,
    TextBlock,
    TextDelta,
)
from ._upstream import (
    DEFAULT_API_VERSION,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    AsyncEventStream,
    AsyncLineStream,
    AsyncUpstream,
    EventStream,
    HeaderTypes,
    LineStream,
    SyncUpstream,
    TimeoutTypes,
    betas_from_headers,
    merge_headers,
)

__all__ = [
    "AsyncBatchResults",
    "AsyncBatches",
    "AsyncClient",
    "AsyncMessageStream",
    "AsyncMessageStreamManager",
    "AsyncMessages",
    "AsyncPage",
    "BatchResults",
    "Batches",
    "Client",
    "MessageStream",
    "MessageStreamManager",
    "Messages",
    "SyncPage",
]

_T = TypeVar("_T")


# ``messages=``: a list of ``{"role", "content"}`` objects (``haikucache.MessageParam`` fits).
MessagesParam = Sequence[Mapping[str, Any]]


# --------------------------------------------------------------------------- shared helpers


def _resolve_credentials(
    api_key: str | None, auth_token: str | None, default_headers: HeaderTypes | None
) -> tuple[str | None, str | None]:
    """Credentials from the arguments, else the environment; fail early when there are none."""
    if api_key is None:
        api_key = os.environ.get("ANTHROPIC_API_KEY") or None
    if auth_token is None:
        auth_token = os.environ.get("ANTHROPIC_AUTH_TOKEN") or None
    given = {name.lower() for name, value in (default_headers or {}).items() if value}
    if not api_key and not auth_token and not given & {"x-api-key", "authorization"}:
        raise ConfigurationError(
            "no Anthropic credentials: pass api_key= (or auth_token=), or set the "
            "ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) environment variable"
        )
    return api_key, auth_token


def _request_params(
    fields: Mapping[str, Any], extra: Mapping[str, Any], extra_body: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The request body: given fields (``None`` = not given), then ``**extra``, then ``extra_body``."""
    params = {name: value for name, value in fields.items() if value is not None}
    params.update(extra)
    if extra_body:
        params.update(extra_body)
    return params


def _path_id(value: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestValidationError(f"expected a non-empty string, got {value!r}", param=name)
    return quote(value, safe="")


def _batch_body(
    requests: Sequence[Mapping[str, Any]], extra_body: Mapping[str, Any] | None
) -> dict[str, Any]:
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise RequestValidationError("expected a list of {custom_id, params}", param="requests")
    body: dict[str, Any] = {"requests": [dict(request) for request in requests]}
    if extra_body:
        body.update(extra_body)
    return body


def _parse_result_line(line: str) -> MessageBatchIndividualResponse:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise APIResponseValidationError(
            f"a batch result line is not JSON: {line[:200]!r}"
        ) from exc
    if not isinstance(data, dict):
        raise APIResponseValidationError(
            f"a batch result line is not a JSON object: {line[:200]!r}"
        )
    return MessageBatchIndividualResponse(data)


def _results_url(batch: MessageBatch) -> str:
    url = batch.results_url
    if not url:
        # Asking too early is the caller's sequencing mistake (the SDK raises locally too).
        if batch.archived_at:
            reason = f"its results were archived at {batch.archived_at}"
        else:
            reason = (
                f"it has not ended yet (processing_status={batch.processing_status!r}); poll "
                "retrieve() until it is 'ended'"
            )
        raise UsageError(f"batch {batch.id} has no results_url: {reason}")
    return url


class _CallContext:
    """What a messages call needs from its client, sync or async: the pipeline, the headers
    and the credential the request reaches upstream with. Translation only: every stage
    runs in :class:`~haikucache.Pipeline`."""

    def __init__(
        self,
        engine: Engine,
        headers: Mapping[str, str],
        credential: str | None,
        *,
        upstream: str = "anthropic",
        flight_lease: float = FLIGHT_LEASE,
        flight_wait: float = FLIGHT_WAIT,
    ) -> None:
        self.engine = engine
        self.headers = headers
        self.credential = credential
        self.pipeline = Pipeline(
            engine, flight_lease=flight_lease, flight_wait=flight_wait, upstream=upstream
        )
        self._fallbacks: dict[int, Any] = {}
        self._fallbacks_lock = threading.Lock()

    def fallback(self, target: Upstream, primary: SyncUpstream | AsyncUpstream) -> Any:
        """The connection to a fallback :class:`~haikucache.Upstream`, made like the client's
        own (version, timeout, retries), with its key or the client's (kept while open)."""
        with self._fallbacks_lock:
            upstream = self._fallbacks.get(id(target))
            if upstream is None:
                kind = AsyncUpstream if isinstance(primary, AsyncUpstream) else SyncUpstream
                upstream = self._fallbacks[id(target)] = kind(
                    api_key=target.api_key or primary.api_key,
                    auth_token=None if target.api_key else primary.auth_token,
                    base_url=target.base_url,
                    anthropic_version=primary.anthropic_version,
                    default_headers={**primary.default_headers, **target.headers},
                    timeout=primary.timeout,
                    max_retries=primary.max_retries,
                    transport=target.transport,
                )
            return upstream

    def close(self) -> None:
        with self._fallbacks_lock:
            fallbacks, self._fallbacks = list(self._fallbacks.values()), {}
        for upstream in fallbacks:
            upstream.close()

    async def aclose(self) -> None:
        with self._fallbacks_lock:
            fallbacks, self._fallbacks = list(self._fallbacks.values()), {}
        for upstream in fallbacks:
            await upstream.aclose()

    def _headers(self, extra_headers: HeaderTypes | None) -> Mapping[str, str]:
        return merge_headers(self.headers, extra_headers) if extra_headers else self.headers

    def prepare(
        self,
        params: Mapping[str, Any],
        options: CallOptions,
        extra_headers: HeaderTypes | None,
    ) -> PreparedCall:
        """Validate and key: the credential, version and betas are those the request will
        carry (a per-call ``x-api-key`` header is another tenant)."""
        headers = self._headers(extra_headers)
        return self.pipeline.prepare(
            params,
            options,
            credential=credential_in(headers) or self.credential,
            api_version=headers.get("anthropic-version", DEFAULT_API_VERSION),
            betas=betas_from_headers(headers),
        )

    def validate_count_tokens(
        self, params: Mapping[str, Any], extra_headers: HeaderTypes | None
    ) -> dict[str, Any]:
        """Validate a count_tokens body under the version the request will carry."""
        version = self._headers(extra_headers).get("anthropic-version", DEFAULT_API_VERSION)
        return self.engine.validate_count_tokens(params, api_version=version)

    @staticmethod
    def message(outcome: Outcome[httpx.Headers]) -> Message:
        """The caller's :class:`Message` for an outcome (from upstream or served locally)."""
        assert outcome.message is not None
        message = Message(outcome.message)
        if outcome.raw is not None:
            message._request_id = outcome.raw.get("request-id")
        message.haikucache = outcome.info
        return message


_S = TypeVar("_S", "MessageStream", "AsyncMessageStream")


def _replay(outcome: Outcome[Any], stream_cls: type[_S]) -> _S:
    """A stored (or shared) answer replayed as a stream of events."""
    message = _CallContext.message(outcome)
    return stream_cls(
        _ReplayEvents(message), _StreamState(_replay_headers(message), replayed=message)
    )


def _replay_headers(message: Message) -> httpx.Headers:
    info = message.haikucache
    return httpx.Headers(
        {
            "content-type": "text/event-stream; charset=utf-8",
            "x-haikucache-cache": info.cache if info is not None else "hit",
        }
    )


class _ReplayEvents:
    """The events of a stored answer, shaped like an upstream event stream."""

    def __init__(self, message: Message) -> None:
        self._events = message_to_events(message.to_dict())
        self.headers = _replay_headers(message)
        self.response = httpx.Response(200, headers=self.headers)
        self.request_id: str | None = None

    def __iter__(self) -> _ReplayEvents:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def __aiter__(self) -> _ReplayEvents:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._events = iter(())

    async def aclose(self) -> None:
        self.close()


# --------------------------------------------------------------------------- streams


class _StreamState:
    """The non-I/O half of a message stream: typing events, and the pipeline's tap."""

    def __init__(
        self,
        headers: httpx.Headers,
        tap: StreamTap | None = None,
        replayed: Message | None = None,
    ) -> None:
        self._headers = headers
        self._tap = tap
        self._replayed = replayed  # a stored answer being replayed: already accounted
        self.accumulator = MessageAccumulator()
        self.final: Message | None = None

    def on_event(self, data: dict[str, Any]) -> StreamEvent | None:
        # ping keeps the connection alive and means nothing to the caller (the SDK skips it).
        if data.get("type") == "ping":
            return None
        self.accumulator.feed(data)
        if self._tap is not None:
            self._tap.event(data)
        if self.accumulator.done and self.final is None:
            # Accounted before message_stop is handed over, so that by the time a caller's
            # loop ends, the final message and its cost are known.
            if self._replayed is not None:
                self.final = self._replayed
            else:
                self.final = Message(self.accumulator.message())
                self.final._request_id = self._headers.get("request-id")
                self.final.haikucache = self._tap.info if self._tap is not None else None
        return StreamEvent(data)

    def failed(self, exc: BaseException) -> None:
        """The live answer broke off: nothing is stored, and the controls and telemetry
        learn how (an error event's status, or none)."""
        if self._tap is not None and not self._tap.done:
            self._tap.fail(error_status(exc), error_headers(exc))

    def store(self) -> None:
        """The store stage of a completed live answer (once)."""
        if self._tap is not None:
            self._tap.store()

    async def astore(self) -> None:
        """The async twin of :meth:`store`."""
        if self._tap is not None:
            await self._tap.astore()

    def on_end(self) -> None:
        if self.final is None:
            raise APIConnectionError(
                "the stream ended before message_stop; the answer is incomplete"
            )

    def snapshot(self) -> Message | None:
        data = self.accumulator.snapshot
        return None if data is None else Message(data)

    def final_message(self) -> Message:
        if self.final is None:  # pragma: no cover - on_end raises first
            raise APIConnectionError("the stream ended before message_stop")
        return self.final


def _text_of(event: StreamEvent) -> str | None:
    if isinstance(event, ContentBlockDeltaEvent) and isinstance(event.delta, TextDelta):
        return event.delta.text
    return None


def _final_text(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


class MessageStream:
    """A streaming message: iterate for typed events, each yielded as soon as it arrives.

    Returned by ``client.messages.create(..., stream=True)``. When ``message_stop``
    arrives, the accumulated message is accounted and available from
    :meth:`get_final_message`, with ``.haikucache`` set. A stream that ends without
    ``message_stop`` raises :class:`~haikucache.APIConnectionError`; an ``error`` event
    raises the matching :class:`~haikucache.APIStatusError` (e.g. ``OverloadedError``).

    Example:
        >>> with client.messages.stream(model=..., max_tokens=..., messages=...) as stream:
        ...     for text in stream.text_stream:  # doctest: +SKIP
        ...         print(text, end="")
        ...     message = stream.get_final_message()
    """

    def __init__(self, events: EventStream | _ReplayEvents, state: _StreamState) -> None:
        self._events = events
        self._state = state
        self.response: httpx.Response = events.response

    @property
    def headers(self) -> httpx.Headers:
        """The response headers."""
        return self._events.headers

    @property
    def request_id(self) -> str | None:
        """The ``request-id`` response header."""
        return self._events.request_id

    def __iter__(self) -> MessageStream:
        return self

    def __next__(self) -> StreamEvent:
        while True:
            try:
                data = next(self._events, None)
                if data is None:
                    self._state.on_end()
                    raise StopIteration
                event = self._state.on_event(data)
                if self._state.final is not None:
                    self._state.store()
            except StopIteration:
                raise
            except BaseException as exc:  # an error event, a broken or malformed stream
                self._state.failed(exc)
                self._events.close()
                raise
            if event is not None:
                return event

    @property
    def text_stream(self) -> Iterator[str]:
        """The text deltas only, as they arrive."""
        for event in self:
            text = _text_of(event)
            if text is not None:
                yield text

    @property
    def current_message_snapshot(self) -> Message | None:
        """The message accumulated so far (``None`` before ``message_start``)."""
        return self._state.snapshot()

    def until_done(self) -> None:
        """Read the stream to its end."""
        for _ in self:
            pass

    def get_final_message(self) -> Message:
        """Read the stream to its end and return the complete, accounted message."""
        self.until_done()
        return self._state.final_message()

    def get_final_text(self) -> str:
        """Read the stream to its end and return the text of its text blocks, joined."""
        return _final_text(self.get_final_message())

    def close(self) -> None:
        """Stop reading and release the connection."""
        self._events.close()

    def __enter__(self) -> MessageStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncMessageStream:
    """The async twin of :class:`MessageStream` (``async for``; awaitable helpers)."""

    def __init__(self, events: AsyncEventStream | _ReplayEvents, state: _StreamState) -> None:
        self._events = events
        self._state = state
        self.response: httpx.Response = events.response

    @property
    def headers(self) -> httpx.Headers:
        """The response headers."""
        return self._events.headers

    @property
    def request_id(self) -> str | None:
        """The ``request-id`` response header."""
        return self._events.request_id

    def __aiter__(self) -> AsyncMessageStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            try:
                data = await anext(self._events, None)
                if data is None:
                    self._state.on_end()
                    raise StopAsyncIteration
                event = self._state.on_event(data)
                if self._state.final is not None:
                    await self._state.astore()
            except StopAsyncIteration:
                raise
            except BaseException as exc:
                self._state.failed(exc)
                await self._events.aclose()
                raise
            if event is not None:
                return event

    @property
    async def text_stream(self) -> AsyncIterator[str]:
        """The text deltas only, as they arrive."""
        async for event in self:
            text = _text_of(event)
            if text is not None:
                yield text

    @property
    def current_message_snapshot(self) -> Message | None:
        """The message accumulated so far (``None`` before ``message_start``)."""
        return self._state.snapshot()

    async def until_done(self) -> None:
        """Read the stream to its end."""
        async for _ in self:
            pass

    async def get_final_message(self) -> Message:
        """Read the stream to its end and return the complete, accounted message."""
        await self.until_done()
        return self._state.final_message()

    async def get_final_text(self) -> str:
        """Read the stream to its end and return the text of its text blocks, joined."""
        return _final_text(await self.get_final_message())

    async def close(self) -> None:
        """Stop reading and release the connection."""
        await self._events.aclose()

    async def __aenter__(self) -> AsyncMessageStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class MessageStreamManager:
    """``with client.messages.stream(...) as stream``: opens on enter, closes on exit."""

    def __init__(self, open_stream: Callable[[], MessageStream]) -> None:
        self._open = open_stream
        self._stream: MessageStream | None = None

    def __enter__(self) -> MessageStream:
        self._stream = self._open()
        return self._stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            self._stream.close()


class AsyncMessageStreamManager:
    """``async with client.messages.stream(...) as stream``: opens on enter, closes on exit."""

    def __init__(self, open_stream: Callable[[], Awaitable[AsyncMessageStream]]) -> None:
        self._open = open_stream
        self._stream: AsyncMessageStream | None = None

    async def __aenter__(self) -> AsyncMessageStream:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            await self._stream.close()


# --------------------------------------------------------------------------- pages & results


class _PageBase(Generic[_T]):
    """One page of a list endpoint: ``{data, has_more, first_id, last_id}``."""

    def __init__(
        self, body: Mapping[str, Any], item: Callable[[dict[str, Any]], _T], params: dict[str, Any]
    ) -> None:
        self.data: builtins.list[_T] = [item(entry) for entry in body.get("data") or ()]
        self.has_more: bool = bool(body.get("has_more"))
        self.first_id: str | None = body.get("first_id")
        self.last_id: str | None = body.get("last_id")
        self._item = item
        self._params = params

    def has_next_page(self) -> bool:
        """Whether another page can be fetched."""
        return self._next_params() is not None

    def _next_params(self) -> dict[str, Any] | None:
        if not self.has_more:
            return None
        params = {k: v for k, v in self._params.items() if k not in ("after_id", "before_id")}
        # Paging backwards (before_id) continues from this page's first id, as in the SDK.
        if self._params.get("before_id"):
            if not self.first_id:
                return None
            params["before_id"] = self.first_id
        else:
            if not self.last_id:
                return None
            params["after_id"] = self.last_id
        return params

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(data=[{len(self.data)} items], has_more={self.has_more}, "
            f"first_id={self.first_id!r}, last_id={self.last_id!r})"
        )


class SyncPage(_PageBase[_T]):
    """A page of results; iterating it walks every following page too.

    Example:
        >>> for batch in client.messages.batches.list(limit=100):  # doctest: +SKIP
        ...     print(batch.id)
    """

    def __init__(
        self,
        body: Mapping[str, Any],
        item: Callable[[dict[str, Any]], _T],
        params: dict[str, Any],
        fetch: Callable[[dict[str, Any]], SyncPage[_T]],
    ) -> None:
        super().__init__(body, item, params)
        self._fetch = fetch

    def next_page(self) -> SyncPage[_T] | None:
        """The following page, or ``None`` on the last one."""
        params = self._next_params()
        return None if params is None else self._fetch(params)

    def iter_pages(self) -> Iterator[SyncPage[_T]]:
        """This page and every following one."""
        page: SyncPage[_T] | None = self
        while page is not None:
            yield page
            page = page.next_page()

    def __iter__(self) -> Iterator[_T]:
        for page in self.iter_pages():
            yield from page.data


class AsyncPage(_PageBase[_T]):
    """The async twin of :class:`SyncPage` (``async for`` walks every following page)."""

    def __init__(
        self,
        body: Mapping[str, Any],
        item: Callable[[dict[str, Any]], _T],
        params: dict[str, Any],
        fetch: Callable[[dict[str, Any]], Awaitable[AsyncPage[_T]]],
    ) -> None:
        super().__init__(body, item, params)
        self._fetch = fetch

    async def next_page(self) -> AsyncPage[_T] | None:
        """The following page, or ``None`` on the last one."""
        params = self._next_params()
        return None if params is None else await self._fetch(params)

    async def iter_pages(self) -> AsyncIterator[AsyncPage[_T]]:
        """This page and every following one."""
        page: AsyncPage[_T] | None = self
        while page is not None:
            yield page
            page = await page.next_page()

    async def __aiter__(self) -> AsyncIterator[_T]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item


class BatchResults:
    """A batch's results, one :class:`MessageBatchIndividualResponse` per JSONL line.

    Lines are parsed as they arrive, so a 100,000-request batch is never held in memory.
    Results come in any order; match them to requests by ``custom_id``.
    """

    def __init__(self, lines: LineStream) -> None:
        self._lines = lines

    def __iter__(self) -> BatchResults:
        return self

    def __next__(self) -> MessageBatchIndividualResponse:
        return _parse_result_line(next(self._lines))

    def close(self) -> None:
        """Stop reading and release the connection."""
        self._lines.close()

    def __enter__(self) -> BatchResults:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncBatchResults:
    """The async twin of :class:`BatchResults`."""

    def __init__(self, lines: AsyncLineStream) -> None:
        self._lines = lines

    def __aiter__(self) -> AsyncBatchResults:
        return self

    async def __anext__(self) -> MessageBatchIndividualResponse:
        return _parse_result_line(await anext(self._lines))

    async def close(self) -> None:
        """Stop reading and release the connection."""
        await self._lines.aclose()

    async def __aenter__(self) -> AsyncBatchResults:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --------------------------------------------------------------------------- resources (sync)


def _seen_by(gate: BatchControls, batch: MessageBatch) -> MessageBatch:
    gate.seen(batch.id, batch.processing_status)
    return batch


class Batches:
    """``client.messages.batches``: the Message Batches endpoints (reference §3)."""

    def __init__(self, upstream: SyncUpstream, gate: BatchControls) -> None:
        self._upstream = upstream
        self._gate = gate

    def create(
        self,
        *,
        requests: Sequence[Mapping[str, Any]],
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> MessageBatch:
        """Submit a batch of ``{"custom_id": ..., "params": {<Messages body>}}`` requests.

        The API validates each request's ``params`` only when it runs, so a bad one shows
        up as an ``errored`` result, not as an error here.
        """
        body = _batch_body(requests, extra_body)
        self._gate.admit(len(requests))
        try:
            data, _ = self._upstream.request_json(
                "POST",
                "/v1/messages/batches",
                json=body,
                params=extra_query,
                headers=extra_headers,
                timeout=timeout,
            )
        except BaseException:
            self._gate.unqueue(len(requests))
            raise
        batch = MessageBatch(data)
        self._gate.created(batch.id, len(requests))
        return batch

    def retrieve(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> MessageBatch:
        """The batch's current state (poll this until ``processing_status == "ended"``)."""
        path = f"/v1/messages/batches/{_path_id(message_batch_id, 'message_batch_id')}"
        self._gate.admit()
        data, _ = self._upstream.request_json("GET", path, headers=extra_headers, timeout=timeout)
        return _seen_by(self._gate, MessageBatch(data))

    def cancel(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> MessageBatch:
        """Ask the API to cancel the batch (it moves to ``canceling``, then ``ended``)."""
        path = f"/v1/messages/batches/{_path_id(message_batch_id, 'message_batch_id')}/cancel"
        self._gate.admit()
        data, _ = self._upstream.request_json("POST", path, headers=extra_headers, timeout=timeout)
        return _seen_by(self._gate, MessageBatch(data))

    def delete(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> DeletedMessageBatch:
        """Delete an ended batch (cancel it first if it is still processing)."""
        path = f"/v1/messages/batches/{_path_id(message_batch_id, 'message_batch_id')}"
        self._gate.admit()
        data, _ = self._upstream.request_json(
            "DELETE", path, headers=extra_headers, timeout=timeout
        )
        return DeletedMessageBatch(data)

    def results(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> BatchResults:
        """Stream an ended batch's results from its ``results_url``, one line at a time.

        Raises:
            UsageError: the batch has no ``results_url`` (not ended yet, or archived).
        """
        url = _results_url(self.retrieve(message_batch_id, extra_headers=extra_headers))
        # The SDK asks for application/binary; the body is JSONL whatever it is labelled.
        headers = merge_headers({"accept": "application/binary"}, extra_headers)
        self._gate.admit()
        return BatchResults(
            self._upstream.stream_lines("GET", url, headers=headers, timeout=timeout)
        )

    def list(
        self,
        *,
        limit: int | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> SyncPage[MessageBatch]:
        """A page of batches, newest first; iterate it to walk every page."""
        params = {
            **(extra_query or {}),
            "limit": limit,
            "after_id": after_id,
            "before_id": before_id,
        }
        params = {k: v for k, v in params.items() if v is not None}

        def fetch(page_params: dict[str, Any]) -> SyncPage[MessageBatch]:
            self._gate.admit()
            data, _ = self._upstream.request_json(
                "GET",
                "/v1/messages/batches",
                params=page_params,
                headers=extra_headers,
                timeout=timeout,
            )
            return SyncPage(data, MessageBatch, page_params, fetch)

        return fetch(params)


class Messages:
    """``client.messages``: create (JSON or stream), stream, count_tokens, and ``batches``."""

    def __init__(self, upstream: SyncUpstream, context: _CallContext) -> None:
        self._upstream = upstream
        self._context = context
        self.batches = Batches(upstream, context.pipeline.batches)

    @overload
    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: Literal[False] = False,
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> Message: ...

    @overload
    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: Literal[True],
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> MessageStream: ...

    @overload
    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: bool,
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> Message | MessageStream: ...

    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: bool = False,
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> Message | MessageStream:
        """Create a message (``POST /v1/messages``), through haikucache's engine.

        The Messages API fields are keyword arguments as in the ``anthropic`` SDK; a
        ``None`` means "not given", and unknown keywords are sent as they are (the API
        adds fields). ``extra_headers``, ``extra_query``, ``extra_body`` and ``timeout``
        work as in the SDK.

        Args:
            namespace: the tenant this call is cached and accounted under (default: the
                engine's, derived from the API key).
            no_cache: do not answer this call from the response cache.
            no_store: do not keep this call's answer in the response cache.
            ttl: seconds the stored answer stays valid.
            tags: labels for invalidating stored answers later.

        Returns:
            The :class:`Message` with ``.haikucache`` set, or with ``stream=True`` a
            :class:`MessageStream`.

        Raises:
            RequestValidationError: the API would reject the request; nothing was sent.
            APIStatusError: the API answered with an error (after retries where they apply).
            APIConnectionError: the API could not be reached (after retries).
        """
        params = _request_params(
            {
                "model": model,
                "max_tokens": max_tokens,
                "messages": messages,
                "system": system,
                "tools": tools,
                "tool_choice": tool_choice,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "stop_sequences": stop_sequences,
                "stream": True if stream else None,
                "metadata": metadata,
                "thinking": thinking,
                "service_tier": service_tier,
                "cache_control": cache_control,
                "output_config": output_config,
            },
            extra,
            extra_body,
        )
        options = CallOptions.of(namespace, no_cache, no_store, ttl, tags)

        call = self._context.prepare(params, options, extra_headers)
        pipeline = self._context.pipeline
        if call.stream:
            opened = pipeline.open_stream(call)
            if isinstance(opened, Outcome):
                return _replay(opened, MessageStream)
            try:
                events = self._upstream.stream_sse(
                    "POST",
                    "/v1/messages",
                    json=call.body,
                    params=extra_query,
                    headers=extra_headers,
                    timeout=timeout,
                )
            except Exception as exc:  # an error status, or the upstream unreachable
                opened.fail(error_status(exc), error_headers(exc))
                raise
            return MessageStream(events, _StreamState(events.headers, opened))

        def send(body: dict[str, Any]) -> Reply[httpx.Headers]:
            return send_to(None, body)

        def send_to(target: Upstream | None, body: dict[str, Any]) -> Reply[httpx.Headers]:
            upstream = (
                self._upstream if target is None else self._context.fallback(target, self._upstream)
            )
            data, headers = upstream.request_json(
                "POST",
                "/v1/messages",
                json=body,
                params=extra_query,
                headers=extra_headers,
                timeout=timeout,
            )
            return Reply(data, headers, status=200, headers=headers)

        return self._context.message(pipeline.exchange(call, send, send_to=send_to))

    def stream(self, **params: Any) -> MessageStreamManager:
        """``create(..., stream=True)`` as a context manager that closes the stream on exit.

        Takes the same keyword arguments as :meth:`create` (without ``stream``).
        """

        def open_stream() -> MessageStream:
            stream = self.create(stream=True, **params)
            assert isinstance(stream, MessageStream)
            return stream

        return MessageStreamManager(open_stream)

    def count_tokens(
        self,
        *,
        model: str,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        **extra: Any,
    ) -> MessageTokensCount:
        """Count a request's input tokens (``POST /v1/messages/count_tokens``; free).

        Raises:
            RequestValidationError: the API would reject the request; nothing was sent.
        """
        params = _request_params(
            {
                "model": model,
                "messages": messages,
                "system": system,
                "tools": tools,
                "tool_choice": tool_choice,
                "thinking": thinking,
                "cache_control": cache_control,
                "output_config": output_config,
            },
            extra,
            extra_body,
        )
        body = self._context.validate_count_tokens(params, extra_headers)
        data, _ = self._upstream.request_json(
            "POST",
            "/v1/messages/count_tokens",
            json=body,
            params=extra_query,
            headers=extra_headers,
            timeout=timeout,
        )
        return MessageTokensCount(data)


# --------------------------------------------------------------------------- resources (async)


class AsyncBatches:
    """``client.messages.batches`` of :class:`AsyncClient`; see :class:`Batches`."""

    def __init__(self, upstream: AsyncUpstream, gate: BatchControls) -> None:
        self._upstream = upstream
        self._gate = gate

    async def create(
        self,
        *,
        requests: Sequence[Mapping[str, Any]],
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> MessageBatch:
        """See :meth:`Batches.create`."""
        body = _batch_body(requests, extra_body)
        await self._gate.aadmit(len(requests))
        try:
            data, _ = await self._upstream.request_json(
                "POST",
                "/v1/messages/batches",
                json=body,
                params=extra_query,
                headers=extra_headers,
                timeout=timeout,
            )
        except BaseException:
            self._gate.unqueue(len(requests))
            raise
        batch = MessageBatch(data)
        self._gate.created(batch.id, len(requests))
        return batch

    async def retrieve(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> MessageBatch:
        """See :meth:`Batches.retrieve`."""
        path = f"/v1/messages/batches/{_path_id(message_batch_id, 'message_batch_id')}"
        await self._gate.aadmit()
        data, _ = await self._upstream.request_json(
            "GET", path, headers=extra_headers, timeout=timeout
        )
        return _seen_by(self._gate, MessageBatch(data))

    async def cancel(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> MessageBatch:
        """See :meth:`Batches.cancel`."""
        path = f"/v1/messages/batches/{_path_id(message_batch_id, 'message_batch_id')}/cancel"
        await self._gate.aadmit()
        data, _ = await self._upstream.request_json(
            "POST", path, headers=extra_headers, timeout=timeout
        )
        return _seen_by(self._gate, MessageBatch(data))

    async def delete(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> DeletedMessageBatch:
        """See :meth:`Batches.delete`."""
        path = f"/v1/messages/batches/{_path_id(message_batch_id, 'message_batch_id')}"
        await self._gate.aadmit()
        data, _ = await self._upstream.request_json(
            "DELETE", path, headers=extra_headers, timeout=timeout
        )
        return DeletedMessageBatch(data)

    async def results(
        self,
        message_batch_id: str,
        *,
        extra_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> AsyncBatchResults:
        """See :meth:`Batches.results`."""
        url = _results_url(await self.retrieve(message_batch_id, extra_headers=extra_headers))
        headers = merge_headers({"accept": "application/binary"}, extra_headers)
        await self._gate.aadmit()
        lines = await self._upstream.stream_lines("GET", url, headers=headers, timeout=timeout)
        return AsyncBatchResults(lines)

    async def list(
        self,
        *,
        limit: int | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
    ) -> AsyncPage[MessageBatch]:
        """See :meth:`Batches.list`; iterate the page with ``async for``."""
        params = {
            **(extra_query or {}),
            "limit": limit,
            "after_id": after_id,
            "before_id": before_id,
        }
        params = {k: v for k, v in params.items() if v is not None}

        async def fetch(page_params: dict[str, Any]) -> AsyncPage[MessageBatch]:
            await self._gate.aadmit()
            data, _ = await self._upstream.request_json(
                "GET",
                "/v1/messages/batches",
                params=page_params,
                headers=extra_headers,
                timeout=timeout,
            )
            return AsyncPage(data, MessageBatch, page_params, fetch)

        return await fetch(params)


class AsyncMessages:
    """``client.messages`` of :class:`AsyncClient`; see :class:`Messages`."""

    def __init__(self, upstream: AsyncUpstream, context: _CallContext) -> None:
        self._upstream = upstream
        self._context = context
        self.batches = AsyncBatches(upstream, context.pipeline.batches)

    @overload
    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: Literal[False] = False,
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> Message: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: Literal[True],
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> AsyncMessageStream: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: bool,
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> Message | AsyncMessageStream: ...

    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        stream: bool = False,
        metadata: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        service_tier: str | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
        **extra: Any,
    ) -> Message | AsyncMessageStream:
        """See :meth:`Messages.create`; with ``stream=True`` returns an :class:`AsyncMessageStream`."""
        params = _request_params(
            {
                "model": model,
                "max_tokens": max_tokens,
                "messages": messages,
                "system": system,
                "tools": tools,
                "tool_choice": tool_choice,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "stop_sequences": stop_sequences,
                "stream": True if stream else None,
                "metadata": metadata,
                "thinking": thinking,
                "service_tier": service_tier,
                "cache_control": cache_control,
                "output_config": output_config,
            },
            extra,
            extra_body,
        )
        options = CallOptions.of(namespace, no_cache, no_store, ttl, tags)

        call = self._context.prepare(params, options, extra_headers)
        pipeline = self._context.pipeline
        if call.stream:
            opened = await pipeline.aopen_stream(call)
            if isinstance(opened, Outcome):
                return _replay(opened, AsyncMessageStream)
            try:
                events = await self._upstream.stream_sse(
                    "POST",
                    "/v1/messages",
                    json=call.body,
                    params=extra_query,
                    headers=extra_headers,
                    timeout=timeout,
                )
            except Exception as exc:
                opened.fail(error_status(exc), error_headers(exc))
                raise
            return AsyncMessageStream(events, _StreamState(events.headers, opened))

        async def send(body: dict[str, Any]) -> Reply[httpx.Headers]:
            return await send_to(None, body)

        async def send_to(target: Upstream | None, body: dict[str, Any]) -> Reply[httpx.Headers]:
            upstream = (
                self._upstream if target is None else self._context.fallback(target, self._upstream)
            )
            data, headers = await upstream.request_json(
                "POST",
                "/v1/messages",
                json=body,
                params=extra_query,
                headers=extra_headers,
                timeout=timeout,
            )
            return Reply(data, headers, status=200, headers=headers)

        return self._context.message(await pipeline.aexchange(call, send, send_to=send_to))

    def stream(self, **params: Any) -> AsyncMessageStreamManager:
        """``async with client.messages.stream(...) as stream``; see :meth:`Messages.stream`."""

        async def open_stream() -> AsyncMessageStream:
            stream = await self.create(stream=True, **params)
            assert isinstance(stream, AsyncMessageStream)
            return stream

        return AsyncMessageStreamManager(open_stream)

    async def count_tokens(
        self,
        *,
        model: str,
        messages: MessagesParam,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Mapping[str, Any] | None = None,
        thinking: Mapping[str, Any] | None = None,
        cache_control: Mapping[str, Any] | None = None,
        output_config: Mapping[str, Any] | None = None,
        extra_headers: HeaderTypes | None = None,
        extra_query: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | None = None,
        **extra: Any,
    ) -> MessageTokensCount:
        """See :meth:`Messages.count_tokens`."""
        params = _request_params(
            {
                "model": model,
                "messages": messages,
                "system": system,
                "tools": tools,
                "tool_choice": tool_choice,
                "thinking": thinking,
                "cache_control": cache_control,
                "output_config": output_config,
            },
            extra,
            extra_body,
        )
        body = self._context.validate_count_tokens(params, extra_headers)
        data, _ = await self._upstream.request_json(
            "POST",
            "/v1/messages/count_tokens",
            json=body,
            params=extra_query,
            headers=extra_headers,
            timeout=timeout,
        )
        return MessageTokensCount(data)


# --------------------------------------------------------------------------- clients


_OPTION_NAMES = frozenset(
    {
        "api_key",
        "auth_token",
        "base_url",
        "anthropic_version",
        "default_headers",
        "timeout",
        "max_retries",
        "transport",
        "http_client",
        "sleep",
        "engine",
    }
)


class _ClientBase:
    """Configuration shared by the twins (the upstream itself is the I/O part)."""

    _upstream: SyncUpstream | AsyncUpstream
    _engine: Engine
    _sleep: Any

    @property
    def api_key(self) -> str | None:
        """The API key sent as ``x-api-key``."""
        return self._upstream.api_key

    @property
    def auth_token(self) -> str | None:
        """The token sent as ``Authorization: Bearer``."""
        return self._upstream.auth_token

    @property
    def base_url(self) -> str:
        """The base URL requests go to."""
        return self._upstream.base_url

    @property
    def timeout(self) -> httpx.Timeout:
        """The default timeout of every request."""
        return self._upstream.timeout

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt."""
        return self._upstream.max_retries

    @property
    def engine(self) -> Engine:
        """The engine every call goes through."""
        return self._engine

    def _copy_options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - _OPTION_NAMES
        if unknown:
            raise ConfigurationError(f"unknown client option(s): {', '.join(sorted(unknown))}")
        upstream = self._upstream
        options: dict[str, Any] = {
            "api_key": upstream.api_key,
            "auth_token": upstream.auth_token,
            "base_url": upstream.base_url,
            "anthropic_version": upstream.anthropic_version,
            "default_headers": upstream.default_headers,
            "timeout": upstream.timeout,
            "max_retries": upstream.max_retries,
            "sleep": self._sleep,
            "engine": self._engine,
        }
        # The copy shares the connection pool (closing it is the original's job), unless it
        # is given a transport or client of its own.
        if "transport" not in overrides:
            options["http_client"] = upstream.http_client
        # Other credentials are another tenant: do not keep answering from this one's cache.
        if ({"api_key", "auth_token"} & set(overrides)) and "engine" not in overrides:
            options["engine"] = None
        options.update(overrides)
        return options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, namespace={self._engine.namespace!r})"


class Client(_ClientBase):
    """A Messages API client that makes every call go through haikucache.

    Args:
        api_key: sent as ``x-api-key``; default ``$ANTHROPIC_API_KEY``.
        auth_token: sent as ``Authorization: Bearer``; default ``$ANTHROPIC_AUTH_TOKEN``.
        base_url: default ``$ANTHROPIC_BASE_URL``, else ``https://api.anthropic.com``.
        anthropic_version: the ``anthropic-version`` header.
        default_headers: extra headers on every request (e.g. ``anthropic-beta``).
        timeout: seconds or an :class:`httpx.Timeout` (default 600 s, 5 s to connect).
        max_retries: retries after the first attempt (default 2).
        transport: an httpx transport, e.g. ``Emulator().transport()`` in tests.
        http_client: an :class:`httpx.Client` to use (not closed by :meth:`close`).
        sleep: how retries wait (default :func:`time.sleep`).
        engine: the :class:`~haikucache.Engine` to use; default one whose namespace is a
            hash of the credential and whose response cache is on disk
            (:data:`~haikucache.DEFAULT_STORE`, the same default at every door; pass
            ``engine=Engine.for_credentials(key, store=None)`` to keep no answers).

    Raises:
        ConfigurationError: no credential was given or found in the environment.

    Example:
        >>> with haikucache.Client() as client:  # doctest: +SKIP
        ...     message = client.messages.create(
        ...         model="claude-haiku-4-5", max_tokens=128,
        ...         messages=[{"role": "user", "content": "Hello"}],
        ...     )
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        auth_token: str | None = None,
        base_url: str | httpx.URL | None = None,
        anthropic_version: str = DEFAULT_API_VERSION,
        default_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        engine: Engine | None = None,
    ) -> None:
        api_key, auth_token = _resolve_credentials(api_key, auth_token, default_headers)
        # The engine first: if it fails, no connection pool is left behind.
        self._engine = (
            engine if engine is not None else Engine.for_credentials(api_key or auth_token)
        )
        self._upstream: SyncUpstream = SyncUpstream(
            api_key=api_key,
            auth_token=auth_token,
            base_url=base_url,
            anthropic_version=anthropic_version,
            default_headers=default_headers,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            http_client=http_client,
            sleep=sleep,
        )
        self._sleep = sleep
        self.messages = Messages(
            self._upstream,
            _CallContext(
                self._engine,
                self._upstream.headers,
                api_key or auth_token,
                upstream=str(self._upstream.http_client.base_url),
            ),
        )

    @property
    def http_client(self) -> httpx.Client:
        """The underlying :class:`httpx.Client`."""
        return self._upstream.http_client

    def with_options(self, **overrides: Any) -> Client:
        """A copy with some constructor options changed, sharing the connection pool.

        Example:
            >>> client.with_options(max_retries=5, timeout=30).messages.create(...)  # doctest: +SKIP
        """
        return Client(**self._copy_options(overrides))

    def close(self) -> None:
        """Close the connection pool, if this client created it."""
        self._upstream.close()
        self.messages._context.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """The async twin of :class:`Client`.

    Takes the same arguments, except that ``transport`` is an
    :class:`httpx.AsyncBaseTransport`, ``http_client`` an :class:`httpx.AsyncClient` and
    ``sleep`` an async callable (default :func:`asyncio.sleep`).

    Example:
        >>> async with haikucache.AsyncClient() as client:  # doctest: +SKIP
        ...     message = await client.messages.create(...)
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        auth_token: str | None = None,
        base_url: str | httpx.URL | None = None,
        anthropic_version: str = DEFAULT_API_VERSION,
        default_headers: HeaderTypes | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        engine: Engine | None = None,
    ) -> None:
        api_key, auth_token = _resolve_credentials(api_key, auth_token, default_headers)
        # The engine first: if it fails, no connection pool is left behind.
        self._engine = (
            engine if engine is not None else Engine.for_credentials(api_key or auth_token)
        )
        self._upstream: AsyncUpstream = AsyncUpstream(
            api_key=api_key,
            auth_token=auth_token,
            base_url=base_url,
            anthropic_version=anthropic_version,
            default_headers=default_headers,
            timeout=timeout,
            max_retries=max_retries,
            transport=transport,
            http_client=http_client,
            sleep=sleep,
        )
        self._sleep = sleep
        self.messages = AsyncMessages(
            self._upstream,
            _CallContext(
                self._engine,
                self._upstream.headers,
                api_key or auth_token,
                upstream=str(self._upstream.http_client.base_url),
            ),
        )

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The underlying :class:`httpx.AsyncClient`."""
        return self._upstream.http_client

    def with_options(self, **overrides: Any) -> AsyncClient:
        """A copy with some constructor options changed, sharing the connection pool."""
        return AsyncClient(**self._copy_options(overrides))

    async def close(self) -> None:
        """Close the connection pool, if this client created it."""
        await self._upstream.aclose()
        await self.messages._context.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
