"""In-process transports: an ``httpx`` (or ``httpx2``) client talks to the emulator directly.

The code is written once and parameterised by the HTTP module, because ``httpx2`` (what
``anthropic`` >= 1.0 uses) mirrors ``httpx``'s transport API but its classes are distinct:
an ``httpx2.Client`` only accepts ``httpx2`` transports and responses.

Streams are delivered chunk by chunk through a byte stream, so a client reads SSE events as
they are produced; a dropped connection surfaces as ``RemoteProtocolError`` (before the
response) or, for a stream cut mid-way, while iterating the body — as with a real socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

from haikucache._exceptions import MissingDependencyError
from haikucache.testing._emulator import ConnectionCut, EmulatorResponse

if TYPE_CHECKING:
    from haikucache.testing._emulator import Emulator

__all__ = ["EmulatorTransport", "httpx2_transport", "httpx_transport"]

_DROPPED = "Server disconnected without sending a response."
_CUT = "peer closed connection without sending complete message body (incomplete chunked read)"

_stream_classes: dict[str, type[Any]] = {}
_transport_classes: dict[str, type[Any]] = {}


def _stream_class(mod: ModuleType) -> type[Any]:
    """A byte stream that is both sync and async, for ``mod`` (``httpx`` or ``httpx2``)."""
    cls = _stream_classes.get(mod.__name__)
    if cls is not None:
        return cls

    class _EmulatorStream(mod.SyncByteStream, mod.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: Iterator[bytes], request: Any) -> None:
            self._chunks = chunks
            self._request = request

        def __iter__(self) -> Iterator[bytes]:
            try:
                yield from self._chunks
            except ConnectionCut:
                raise mod.RemoteProtocolError(_CUT, request=self._request) from None

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                for chunk in self._chunks:
                    yield chunk
                    # Let other tasks run between events, as a socket read would.
                    await asyncio.sleep(0)
            except ConnectionCut:
                raise mod.RemoteProtocolError(_CUT, request=self._request) from None

        def close(self) -> None:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()

        async def aclose(self) -> None:
            self.close()

    _stream_classes[mod.__name__] = _EmulatorStream
    return _EmulatorStream


def _to_response(mod: ModuleType, request: Any, answer: EmulatorResponse) -> Any:
    if answer.drop:
        raise mod.RemoteProtocolError(_DROPPED, request=request)
    if answer.chunks is not None:
        stream = _stream_class(mod)(answer.chunks, request)
        return mod.Response(answer.status, headers=answer.headers, stream=stream, request=request)
    return mod.Response(answer.status, headers=answer.headers, content=answer.body, request=request)


def _call(emulator: Emulator, request: Any, body: bytes) -> EmulatorResponse:
    return emulator.handle(request.method, str(request.url), request.headers, body)


def handle_sync(mod: ModuleType, emulator: Emulator, request: Any) -> Any:
    """Serve one ``mod.Request`` synchronously."""
    answer = _call(emulator, request, request.read())
    if answer.delay > 0:
        time.sleep(answer.delay)
    return _to_response(mod, request, answer)


async def handle_async(mod: ModuleType, emulator: Emulator, request: Any) -> Any:
    """Serve one ``mod.Request`` from a coroutine."""
    answer = _call(emulator, request, await request.aread())
    if answer.delay > 0:
        await asyncio.sleep(answer.delay)
    return _to_response(mod, request, answer)


class EmulatorTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An ``httpx`` transport, sync and async, that sends every request to an emulator.

    Use it with ``httpx.Client(transport=emu.transport())`` or
    ``httpx.AsyncClient(transport=emu.transport())``.
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = handle_sync(httpx, self.emulator, request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await handle_async(httpx, self.emulator, request)
        return response


def httpx_transport(emulator: Emulator) -> EmulatorTransport:
    """The ``httpx`` transport for ``emulator``."""
    return EmulatorTransport(emulator)


def _transport_class(mod: ModuleType) -> type[Any]:
    cls = _transport_classes.get(mod.__name__)
    if cls is not None:
        return cls

    def __init__(self: Any, emulator: Emulator) -> None:
        self.emulator = emulator

    def handle_request(self: Any, request: Any) -> Any:
        return handle_sync(mod, self.emulator, request)

    async def handle_async_request(self: Any, request: Any) -> Any:
        return await handle_async(mod, self.emulator, request)

    cls = type(
        "EmulatorHttpx2Transport"
        if mod.__name__ == "httpx2"
        else f"Emulator_{mod.__name__}_Transport",
        (mod.BaseTransport, mod.AsyncBaseTransport),
        {
            "__init__": __init__,
            "handle_request": handle_request,
            "handle_async_request": handle_async_request,
            "__doc__": f"A {mod.__name__} transport, sync and async, that sends every request "
            "to an emulator.",
            "__module__": __name__,
        },
    )
    _transport_classes[mod.__name__] = cls
    return cls


def httpx2_transport(emulator: Emulator) -> Any:
    """The ``httpx2`` transport for ``emulator`` (``httpx2`` is imported only now)."""
    try:
        import httpx2
    except ImportError as exc:
        raise MissingDependencyError(
            "httpx2", "anthropic", "The emulator's httpx2 transport"
        ) from exc
    return _transport_class(httpx2)(emulator)
