"""The HTTP door: an ``httpx``/``httpx2`` transport that runs ``POST /v1/messages`` through the pipeline.

``ChatAnthropic`` talks to the API through the official SDK, and the SDK through an HTTP
client. This module hooks in at the bottom of that stack, where the contract is plain HTTP
and has not changed across SDK majors: a transport wrapping the SDK's own transport::

    SDK request ─▶ HaikuTransport.handle_request
                      POST /v1/messages?  no ─▶ inner transport (count_tokens, batches, …)
                      pipeline.prepare    (validate, key scoped by the request's credential)
                      pipeline.exchange   hit ─▶ the stored answer as JSON, or replayed as SSE
                                          miss ─▶ send: the inner transport (planned body)
                                          then account and store (complete answers)

This module only translates between httpx and :class:`haikucache.Pipeline`, which runs every
stage. Errors from upstream are passed through untouched, so the SDK raises its usual
exceptions and applies its usual retries (only a success is recorded).
Streams are teed: each byte is handed on as it arrives, and the message accumulated from the
events is recorded and stored when ``message_stop`` passes.

What haikucache did for a call (:class:`haikucache.CallInfo`) travels back to the LangChain
layer through a :class:`CallSlot` placed in a context variable by the caller, because the SDK
hands back only its own parsed objects.

The code is written once and parameterised by the HTTP module: ``anthropic`` >= 1 uses
``httpx2``, whose classes mirror ``httpx``'s but are distinct types.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from haikucache import (
    CallInfo,
    CallOptions,
    ControlError,
    Engine,
    Outcome,
    Pipeline,
    PreparedCall,
    Reply,
    RequestValidationError,
    StreamTap,
)
from haikucache._replay import message_to_sse
from haikucache._sdk_door import credential_in, error_reply, refusal, refused

__all__ = ["CallSlot", "current_slot", "transport_classes", "use_slot"]

log = logging.getLogger("langchain_haikucache")

# The version the SDK sends when it sends none (anthropic 0.x); the engine validates against it.
_DEFAULT_API_VERSION = "2023-06-01"
# A replayed answer is local: larger deltas than the API's (a few tokens each) mean fewer
# events for the SDK and ChatAnthropic to parse, and the same message at the end.
_REPLAY_CHUNK_CHARS = 512
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass
class CallSlot:
    """Where the transport leaves what it did for one LangChain call.

    Attributes:
        options: the per-call options the engine applies (namespace, no_cache, …).
        info: the last successful attempt's :class:`~haikucache.CallInfo`.
        error: a haikucache error that stopped the call before it was sent.
        looked_up: the key the LangChain layer already looked up and missed (the
            transport skips its own lookup of that same key).
    """

    options: CallOptions = field(default_factory=CallOptions)
    info: CallInfo | None = None
    error: Exception | None = None
    looked_up: str | None = None


_SLOT: contextvars.ContextVar[CallSlot | None] = contextvars.ContextVar(
    "langchain_haikucache_slot", default=None
)


def current_slot() -> CallSlot | None:
    """The slot of the LangChain call running in this context, if any."""
    return _SLOT.get()


def use_slot(slot: CallSlot | None) -> contextvars.Token[CallSlot | None]:
    """Make ``slot`` current; reset with ``_SLOT.reset(token)`` (see :func:`reset_slot`)."""
    return _SLOT.set(slot)


def reset_slot(token: contextvars.Token[CallSlot | None]) -> None:
    """Undo :func:`use_slot`."""
    _SLOT.reset(token)


def _is_messages_call(request: Any) -> bool:
    return bool(request.method == "POST" and request.url.path.rstrip("/").endswith("/v1/messages"))


def _betas(headers: Mapping[str, str]) -> tuple[str, ...]:
    value = headers.get("anthropic-beta")
    if not value:
        return ()
    return tuple(beta.strip() for beta in value.split(",") if beta.strip())


class _Door:
    """The I/O-free half shared by the sync and async transports of one HTTP module:
    translation between httpx exchanges and the :class:`~haikucache.Pipeline`."""

    def __init__(self, mod: ModuleType, pipeline: Pipeline) -> None:
        self.mod = mod
        self.pipeline = pipeline

    def prepare(self, request: Any, slot: CallSlot | None) -> Any:
        """``(call, params)`` — the :class:`~haikucache.PreparedCall` and the body the SDK
        sent —, ``None`` to pass the request on as it is, or an error response (the
        request would be rejected; nothing is sent)."""
        try:
            params = json.loads(request.content)
        except ValueError:
            return None  # not JSON: let the API say what is wrong with it
        if not isinstance(params, dict):
            return None
        try:
            call = self.pipeline.prepare(
                params,
                slot.options if slot is not None else None,
                credential=credential_in(request.headers),
                api_version=request.headers.get("anthropic-version", _DEFAULT_API_VERSION),
                betas=_betas(request.headers),
            )
            return call, params
        except RequestValidationError as exc:
            if slot is not None:
                slot.error = exc
            body = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": f"haikucache: {exc}"},
            }
            return self.mod.Response(
                400,
                headers={"content-type": "application/json", "x-haikucache-cache": "rejected"},
                content=_dumps(body).encode(),
                request=request,
            )

    def refuse(self, request: Any, slot: CallSlot | None, exc: ControlError) -> Any:
        """A control refused the call before it was sent: an API error response the SDK
        does not retry, and the model raises ``exc`` itself (kept in the slot)."""
        if slot is not None:
            slot.error = exc
        status, body, headers = refusal(exc, retry=False)
        return self.mod.Response(
            status, headers=headers, content=_dumps(body).encode(), request=request
        )

    def local_response(self, request: Any, outcome: Outcome[Any], slot: CallSlot | None) -> Any:
        """An answer served without the API (a hit, or a concurrent twin's answer)."""
        message = outcome.message
        assert message is not None
        if slot is not None:
            slot.info = outcome.info
        headers = {"x-haikucache-cache": "hit", "request-id": "req_haikucache_" + message["id"][4:]}
        if outcome.call.stream:
            headers["content-type"] = "text/event-stream; charset=utf-8"
            content = b"".join(message_to_sse(message, chunk_chars=_REPLAY_CHUNK_CHARS))
        else:
            headers["content-type"] = "application/json"
            content = _dumps(message).encode()
        return self.mod.Response(200, headers=headers, content=content, request=request)

    def answer(self, request: Any, outcome: Outcome[Any], slot: CallSlot | None) -> Any:
        """The response for an outcome: upstream's own for a miss, else rendered."""
        if outcome.raw is None:
            return self.local_response(request, outcome, slot)
        if slot is not None and outcome.info is not None:
            slot.info = outcome.info
        return outcome.raw

    def upstream_request(self, request: Any, body: dict[str, Any], params: dict[str, Any]) -> Any:
        if body == params:
            # Unchanged by the planner (no breakpoint added): the SDK's bytes can go as they
            # are, without encoding the body again.
            return request
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() != "content-length"
        ]
        return self.mod.Request(
            request.method,
            request.url,
            headers=headers,
            content=_dumps(body).encode(),
            extensions=request.extensions,
        )

    @staticmethod
    def is_stream(response: Any) -> bool:
        return bool(
            response.status_code == 200
            and "text/event-stream" in response.headers.get("content-type", "")
        )

    @staticmethod
    def reply(response: Any) -> Reply[Any]:
        """A successful JSON answer as the pipeline's reply (``message`` ``None`` otherwise)."""
        if response.status_code != 200:
            return error_reply(response, response)
        try:
            data = json.loads(response.content)
        except ValueError:
            return error_reply(response, response)
        message = data if isinstance(data, dict) and data.get("type") == "message" else None
        return Reply(message, response, response.status_code, response.headers)


def _follow(tap: StreamTap, slot: CallSlot | None, chunk: bytes) -> bool:
    """Feed the tap; ``True`` (once) when the answer completed and should be stored."""
    info = tap.feed(chunk)
    if info is None:
        return False
    if slot is not None:
        slot.info = info
    return True


_classes: dict[str, tuple[type[Any], type[Any]]] = {}


def transport_classes(mod: ModuleType) -> tuple[type[Any], type[Any]]:
    """The sync and async haikucache transports for ``mod`` (``httpx`` or ``httpx2``)."""
    cached = _classes.get(mod.__name__)
    if cached is not None:
        return cached

    class _TeeStream(mod.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tap: StreamTap, slot: CallSlot | None) -> None:
            self._inner = inner
            self._tap = tap
            self._slot = slot

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                if _follow(self._tap, self._slot, chunk):
                    self._tap.store()
                yield chunk

        def close(self) -> None:
            self._inner.close()

    class _AsyncTeeStream(mod.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tap: StreamTap, slot: CallSlot | None) -> None:
            self._inner = inner
            self._tap = tap
            self._slot = slot

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                if _follow(self._tap, self._slot, chunk):
                    await self._tap.astore()
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class HaikuTransport(mod.BaseTransport):  # type: ignore[name-defined,misc]
        """A sync transport that sends Messages calls through haikucache's pipeline.

        Args:
            pipeline: the pipeline every ``POST /v1/messages`` goes through (an
                :class:`~haikucache.Engine` is wrapped in one).
            inner: the transport that reaches the API (everything else goes straight to it).
        """

        def __init__(self, pipeline: Pipeline | Engine, inner: Any) -> None:
            if isinstance(pipeline, Engine):
                pipeline = Pipeline(pipeline)
            self.door = _Door(mod, pipeline)
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            if not _is_messages_call(request):
                return self.inner.handle_request(request)
            request.read()
            slot = _SLOT.get()
            prepared = self.door.prepare(request, slot)
            if prepared is None:
                return self.inner.handle_request(request)
            if isinstance(prepared, mod.Response):
                return prepared
            call, params = prepared
            try:
                return self._exchange(request, slot, call, params)
            except ControlError as exc:  # refused before sending: see _Door.refuse
                return self.door.refuse(request, slot, exc)

        def _exchange(
            self, request: Any, slot: CallSlot | None, call: PreparedCall, params: dict[str, Any]
        ) -> Any:
            pipeline = self.door.pipeline
            looked_up = slot is not None and slot.looked_up == call.key
            if call.stream:
                opened = pipeline.open_stream(call, looked_up=looked_up)
                if isinstance(opened, Outcome):
                    return self.door.local_response(request, opened, slot)
                response = self.inner.handle_request(
                    self.door.upstream_request(request, call.body, params)
                )
                if not self.door.is_stream(response):
                    refused(opened, response)
                    return response
                return mod.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_TeeStream(response.stream, opened, slot),
                    extensions=response.extensions,
                    request=request,
                )

            def send(body: dict[str, Any]) -> Reply[Any]:
                response = self.inner.handle_request(
                    self.door.upstream_request(request, body, params)
                )
                if response.status_code == 200:
                    response.read()
                return self.door.reply(response)

            outcome = pipeline.exchange(call, send, looked_up=looked_up)
            return self.door.answer(request, outcome, slot)

        def close(self) -> None:
            # The inner transport is shared (or the caller's): its owner closes it.
            pass

    class AsyncHaikuTransport(mod.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """The async twin of ``HaikuTransport``."""

        def __init__(self, pipeline: Pipeline | Engine, inner: Any) -> None:
            if isinstance(pipeline, Engine):
                pipeline = Pipeline(pipeline)
            self.door = _Door(mod, pipeline)
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            if not _is_messages_call(request):
                return await self.inner.handle_async_request(request)
            await request.aread()
            slot = _SLOT.get()
            prepared = self.door.prepare(request, slot)
            if prepared is None:
                return await self.inner.handle_async_request(request)
            if isinstance(prepared, mod.Response):
                return prepared
            call, params = prepared
            try:
                return await self._aexchange(request, slot, call, params)
            except ControlError as exc:
                return self.door.refuse(request, slot, exc)

        async def _aexchange(
            self, request: Any, slot: CallSlot | None, call: PreparedCall, params: dict[str, Any]
        ) -> Any:
            pipeline = self.door.pipeline
            looked_up = slot is not None and slot.looked_up == call.key
            if call.stream:
                opened = await pipeline.aopen_stream(call, looked_up=looked_up)
                if isinstance(opened, Outcome):
                    return self.door.local_response(request, opened, slot)
                response = await self.inner.handle_async_request(
                    self.door.upstream_request(request, call.body, params)
                )
                if not self.door.is_stream(response):
                    refused(opened, response)
                    return response
                return mod.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_AsyncTeeStream(response.stream, opened, slot),
                    extensions=response.extensions,
                    request=request,
                )

            async def send(body: dict[str, Any]) -> Reply[Any]:
                response = await self.inner.handle_async_request(
                    self.door.upstream_request(request, body, params)
                )
                if response.status_code == 200:
                    await response.aread()
                return self.door.reply(response)

            outcome = await pipeline.aexchange(call, send, looked_up=looked_up)
            return self.door.answer(request, outcome, slot)

        async def aclose(self) -> None:
            pass

    _classes[mod.__name__] = (HaikuTransport, AsyncHaikuTransport)
    return HaikuTransport, AsyncHaikuTransport
