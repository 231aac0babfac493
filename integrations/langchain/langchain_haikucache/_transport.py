"""The HTTP door: an ``httpx``/``httpx2`` transport that runs ``POST /v1/messages`` through the engine.

``ChatAnthropic`` talks to the API through the official SDK, and the SDK through an HTTP
client. This module hooks in at the bottom of that stack, where the contract is plain HTTP
and has not changed across SDK majors: a transport wrapping the SDK's own transport::

    SDK request ─▶ HaikuTransport.handle_request
                      POST /v1/messages?  no ─▶ inner transport (count_tokens, batches, …)
                      engine.prepare      (validate, key, plan breakpoints)
                      engine.lookup       hit ─▶ the stored answer as JSON, or replayed as SSE
                      inner transport     (the planned body)
                      engine.record       (ledger) + engine.store_answer (complete answers)

Errors from upstream are passed through untouched, so the SDK raises its usual exceptions and
applies its usual retries (every attempt runs the stages again; only a success is recorded).
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

from haikucache import CallInfo, CallOptions, Engine, RequestValidationError
from haikucache._replay import message_to_sse
from haikucache._sse import MessageAccumulator, SSEDecoder

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
    """The I/O-free half shared by the sync and async transports of one HTTP module."""

    def __init__(self, mod: ModuleType, engine: Engine) -> None:
        self.mod = mod
        self.engine = engine

    def prepare(self, request: Any, slot: CallSlot | None) -> Any:
        """``(call, unchanged)`` — the :class:`~haikucache.PreparedCall` and whether the
        planner left the body as the SDK sent it —, ``None`` to pass the request on as it
        is, or an error response (the request would be rejected; nothing is sent)."""
        try:
            params = json.loads(request.content)
        except ValueError:
            return None  # not JSON: let the API say what is wrong with it
        if not isinstance(params, dict):
            return None
        try:
            call = self.engine.prepare(
                params,
                slot.options if slot is not None else None,
                api_version=request.headers.get("anthropic-version", _DEFAULT_API_VERSION),
                betas=_betas(request.headers),
            )
            # Unchanged by the planner (no breakpoint added): the SDK's bytes can go as they
            # are, without encoding the body again.
            return call, call.body == params
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

    def hit_response(self, request: Any, call: Any, entry: Any, slot: CallSlot | None) -> Any:
        message, info = self.engine.hit(call, entry)
        if slot is not None:
            slot.info = info
        headers = {"x-haikucache-cache": "hit", "request-id": "req_haikucache_" + message["id"][4:]}
        if call.stream:
            headers["content-type"] = "text/event-stream; charset=utf-8"
            content = b"".join(message_to_sse(message, chunk_chars=_REPLAY_CHUNK_CHARS))
        else:
            headers["content-type"] = "application/json"
            content = _dumps(message).encode()
        return self.mod.Response(200, headers=headers, content=content, request=request)

    def upstream_request(self, request: Any, call: Any, unchanged: bool) -> Any:
        if unchanged:
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
            content=_dumps(call.body).encode(),
            extensions=request.extensions,
        )

    @staticmethod
    def is_stream(response: Any) -> bool:
        return bool(
            response.status_code == 200
            and "text/event-stream" in response.headers.get("content-type", "")
        )

    def json_message(self, response: Any) -> dict[str, Any] | None:
        """The message of a successful JSON answer, or ``None``."""
        if response.status_code != 200:
            return None
        try:
            data = json.loads(response.content)
        except ValueError:
            return None
        return data if isinstance(data, dict) and data.get("type") == "message" else None

    def recorded(self, call: Any, message: dict[str, Any], slot: CallSlot | None) -> CallInfo:
        info = self.engine.record(call, message)
        if slot is not None:
            slot.info = info
        return info


class _Tee:
    """Reads SSE bytes as they pass, accumulating the message; never alters or delays them."""

    def __init__(self, door: _Door, call: Any, slot: CallSlot | None) -> None:
        self.door = door
        self.call = call
        self.slot = slot
        self.decoder: SSEDecoder | None = SSEDecoder()
        self.accumulator = MessageAccumulator()

    def feed(self, chunk: bytes) -> tuple[dict[str, Any], CallInfo] | None:
        """Feed bytes; the message and its accounting once ``message_stop`` has passed."""
        if self.decoder is None:
            return None
        try:
            for sse in self.decoder.feed(chunk):
                data = sse.json()
                if not isinstance(data, dict):
                    continue
                if data.get("type") == "error":
                    self.decoder = None  # an error mid-stream: nothing to record or store
                    return None
                self.accumulator.feed(data)
                if self.accumulator.done:
                    self.decoder = None
                    message = self.accumulator.message()
                    return message, self.door.recorded(self.call, message, self.slot)
        except Exception:  # accounting must never break the caller's stream
            log.warning("haikucache could not follow a streamed answer", exc_info=True)
            self.decoder = None
        return None


_classes: dict[str, tuple[type[Any], type[Any]]] = {}


def transport_classes(mod: ModuleType) -> tuple[type[Any], type[Any]]:
    """The sync and async haikucache transports for ``mod`` (``httpx`` or ``httpx2``)."""
    cached = _classes.get(mod.__name__)
    if cached is not None:
        return cached

    class _TeeStream(mod.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tee: _Tee) -> None:
            self._inner = inner
            self._tee = tee

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                done = self._tee.feed(chunk)
                if done is not None:
                    self._tee.door.engine.store_answer(self._tee.call, *done)
                yield chunk

        def close(self) -> None:
            self._inner.close()

    class _AsyncTeeStream(mod.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, tee: _Tee) -> None:
            self._inner = inner
            self._tee = tee

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                done = self._tee.feed(chunk)
                if done is not None:
                    await self._tee.door.engine.astore_answer(self._tee.call, *done)
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class HaikuTransport(mod.BaseTransport):  # type: ignore[name-defined,misc]
        """A sync transport that sends Messages calls through haikucache's engine.

        Args:
            engine: the engine whose stages run for every ``POST /v1/messages``.
            inner: the transport that reaches the API (everything else goes straight to it).
        """

        def __init__(self, engine: Engine, inner: Any) -> None:
            self.door = _Door(mod, engine)
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
            call, unchanged = prepared
            entry = (
                None
                if slot is not None and slot.looked_up == call.key
                else self.door.engine.lookup(call)
            )
            if entry is not None:
                return self.door.hit_response(request, call, entry, slot)
            response = self.inner.handle_request(
                self.door.upstream_request(request, call, unchanged)
            )
            if call.stream and self.door.is_stream(response):
                return mod.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_TeeStream(response.stream, _Tee(self.door, call, slot)),
                    extensions=response.extensions,
                    request=request,
                )
            if response.status_code == 200:
                response.read()
                message = self.door.json_message(response)
                if message is not None:
                    info = self.door.recorded(call, message, slot)
                    self.door.engine.store_answer(call, message, info)
            return response

        def close(self) -> None:
            # The inner transport is shared (or the caller's): its owner closes it.
            pass

    class AsyncHaikuTransport(mod.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """The async twin of ``HaikuTransport``."""

        def __init__(self, engine: Engine, inner: Any) -> None:
            self.door = _Door(mod, engine)
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
            call, unchanged = prepared
            entry = (
                None
                if slot is not None and slot.looked_up == call.key
                else await self.door.engine.alookup(call)
            )
            if entry is not None:
                return self.door.hit_response(request, call, entry, slot)
            response = await self.inner.handle_async_request(
                self.door.upstream_request(request, call, unchanged)
            )
            if call.stream and self.door.is_stream(response):
                return mod.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_AsyncTeeStream(response.stream, _Tee(self.door, call, slot)),
                    extensions=response.extensions,
                    request=request,
                )
            if response.status_code == 200:
                await response.aread()
                message = self.door.json_message(response)
                if message is not None:
                    info = self.door.recorded(call, message, slot)
                    await self.door.engine.astore_answer(call, message, info)
            return response

        async def aclose(self) -> None:
            pass

    _classes[mod.__name__] = (HaikuTransport, AsyncHaikuTransport)
    return HaikuTransport, AsyncHaikuTransport
