"""Server-sent events: an incremental decoder, and the accumulator that rebuilds a message.

:class:`SSEDecoder` turns raw bytes, cut anywhere by the network, into events. It follows the
WHATWG "event stream interpretation" rules: ``\\n``, ``\\r\\n`` and ``\\r`` line ends, comment
lines (``:``), multi-line ``data``, and an event dispatched on each blank line.

:class:`MessageAccumulator` folds the Messages API's stream events (reference §4.5) into the
message dict a non-streaming call would have returned, the way the official SDK does
(``lib/streaming/_messages.py``): text and thinking deltas are concatenated, a tool's
``input_json_delta`` fragments are parsed once the block stops, and ``message_delta.usage``
is cumulative, so its counts overwrite (never add to) those of ``message_start``.

Both are pure: no I/O, so the sync and async clients share them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._exceptions import APIResponseValidationError
from ._types import _copy_json

__all__ = ["MessageAccumulator", "SSEDecoder", "ServerSentEvent"]


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event.

    Attributes:
        event: the ``event:`` name, or ``None`` when the server sent none.
        data: the ``data:`` lines joined with ``\\n``.
        id: the last ``id:`` seen on the stream (it persists across events, per the spec).
        retry: the ``retry:`` reconnection time in milliseconds, if this event carried one.
    """

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The ``data`` decoded as JSON.

        Raises:
            APIResponseValidationError: ``data`` is not JSON.
        """
        try:
            return json.loads(self.data)
        except ValueError as exc:
            raise APIResponseValidationError(
                f"stream event {self.event or 'message'!r} carries data that is not JSON: "
                f"{self.data[:200]!r}"
            ) from exc


class SSEDecoder:
    """Incremental decoder: feed it byte chunks as they arrive, get back complete events.

    Example:
        >>> decoder = SSEDecoder()
        >>> decoder.feed(b"event: ping\\ndata: {}")
        []
        >>> decoder.feed(b"\\n\\n")
        [ServerSentEvent(event='ping', data='{}', id=None, retry=None)]
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; return the events it completed (often none, sometimes many)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if not buffer:
            return []
        # Split on bytes, before decoding, so a multi-byte UTF-8 character cut between two
        # chunks is decoded whole, and only \r and \n count as line ends.
        lines = buffer.splitlines(keepends=True)
        last = lines[-1]
        # An unterminated last line waits for more bytes. So does one ending in a lone \r:
        # the \n of a \r\n may be in the next chunk, and reading it as two line ends would
        # dispatch an event too early.
        if last.endswith(b"\n"):
            self._buffer = b""
        else:
            self._buffer = last
            lines.pop()
        events: list[ServerSentEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: finish a line that ended with a lone ``\\r``.

        An event still missing its blank line is discarded, as the spec requires: a stream
        cut mid-event must not yield half an event.
        """
        buffer, self._buffer = self._buffer, b""
        events: list[ServerSentEvent] = []
        if buffer.endswith(b"\r"):
            for raw in buffer.splitlines():
                event = self._line(raw.decode("utf-8", errors="replace"))
                if event is not None:
                    events.append(event)
        self._event, self._data, self._retry = None, [], None
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not self._started:
            self._started = True
            if line.startswith("\ufeff"):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data and self._event is None and self._retry is None:
            return None
        event = ServerSentEvent(
            event=self._event or None,
            data="\n".join(self._data),
            id=self._last_id,
            retry=self._retry,
        )
        self._event, self._data, self._retry = None, [], None
        return event


# --------------------------------------------------------------------------- accumulator


class MessageAccumulator:
    """Builds the final message dict from a Messages API stream, event by event.

    Feed it every decoded event (``ping`` and unknown types are ignored, as the API asks
    clients to tolerate new event types). The events are never mutated: what the
    accumulator changes, it copied first, so events handed to a caller stay as received.

    Example:
        >>> acc = MessageAccumulator()
        >>> for event in events:  # doctest: +SKIP
        ...     acc.feed(event)
        >>> acc.message()["content"][0]["text"]  # doctest: +SKIP
        'Hello!'
    """

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._json: dict[int, list[str]] = {}
        self._done = False

    @property
    def snapshot(self) -> dict[str, Any] | None:
        """The message as accumulated so far (a live view), or ``None`` before ``message_start``."""
        return self._message

    @property
    def done(self) -> bool:
        """Whether ``message_stop`` has been seen."""
        return self._done

    def feed(self, event: Mapping[str, Any]) -> None:
        """Apply one decoded event.

        Raises:
            APIResponseValidationError: the events are out of order or malformed (e.g. a
                delta for a block that never started, or tool input that is not JSON).
        """
        kind = event.get("type")
        if kind == "message_start":
            self._start(event)
            return
        if kind not in _HANDLED:
            return
        message = self._message
        if message is None:
            raise APIResponseValidationError(f"stream event {kind!r} arrived before message_start")
        if kind == "content_block_delta":
            self._delta(message, event)
        elif kind == "content_block_start":
            block = event.get("content_block")
            if not isinstance(block, Mapping):
                raise APIResponseValidationError("content_block_start without a content_block")
            message["content"].append(_copy_block(block))
        elif kind == "content_block_stop":
            self._stop_block(message, event)
        elif kind == "message_delta":
            self._message_delta(message, event)
        else:  # message_stop
            self._done = True

    def message(self) -> dict[str, Any]:
        """The accumulated message dict (the same object on every call).

        Raises:
            APIResponseValidationError: no ``message_start`` was fed.
        """
        if self._message is None:
            raise APIResponseValidationError("the stream ended before message_start")
        return self._message

    # -- event handlers

    def _start(self, event: Mapping[str, Any]) -> None:
        if self._message is not None:
            raise APIResponseValidationError("a second message_start in one stream")
        source = event.get("message")
        if not isinstance(source, Mapping):
            raise APIResponseValidationError("message_start without a message")
        message = dict(source)
        # message_start normally has empty content; copy whatever is there so appending
        # blocks never reaches into the event the caller holds.
        message["content"] = [_copy_block(b) for b in source.get("content") or ()]
        usage = source.get("usage")
        message["usage"] = dict(usage) if isinstance(usage, Mapping) else {}
        self._message = message

    def _block(self, message: dict[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
        index = event.get("index")
        content: list[dict[str, Any]] = message["content"]
        if not isinstance(index, int) or not 0 <= index < len(content):
            raise APIResponseValidationError(
                f"stream event {event.get('type')!r} refers to content block {index!r}, "
                f"but only {len(content)} started"
            )
        return content[index]

    def _delta(self, message: dict[str, Any], event: Mapping[str, Any]) -> None:
        block = self._block(message, event)
        delta = event.get("delta")
        if not isinstance(delta, Mapping):
            raise APIResponseValidationError("content_block_delta without a delta")
        kind = delta.get("type")
        # Each delta applies only to the block type it belongs to, as in the SDK; a
        # mismatched delta is ignored rather than corrupting the block.
        if kind == "text_delta":
            if block.get("type") == "text":
                block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "input_json_delta":
            # Fragments are joined and parsed once, at content_block_stop: parsing partial
            # JSON on every delta would be quadratic in the size of the input.
            self._json.setdefault(event["index"], []).append(delta.get("partial_json", ""))
        elif kind == "thinking_delta":
            if block.get("type") == "thinking":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            if block.get("type") == "thinking":
                block["signature"] = delta.get("signature", "")
        elif kind == "citations_delta" and block.get("type") == "text":
            citations = block.get("citations") or []
            block["citations"] = [*citations, _copy_json(delta.get("citation"))]

    def _stop_block(self, message: dict[str, Any], event: Mapping[str, Any]) -> None:
        block = self._block(message, event)
        fragments = self._json.pop(event["index"], None)
        if fragments is None:
            return
        text = "".join(fragments)
        # The first fragment is often "", and a tool with no arguments may send nothing
        # but "": the block then keeps the input it started with ({}).
        if not text.strip():
            return
        try:
            block["input"] = json.loads(text)
        except ValueError as exc:
            raise APIResponseValidationError(
                f"tool input of content block {event['index']} is not valid JSON: {text[:200]!r}"
            ) from exc

    def _message_delta(self, message: dict[str, Any], event: Mapping[str, Any]) -> None:
        delta = event.get("delta")
        if isinstance(delta, Mapping):
            # stop_reason, stop_sequence, and whatever the API adds (container, …).
            for key, value in delta.items():
                message[key] = _copy_json(value)
        usage = event.get("usage")
        if isinstance(usage, Mapping):
            totals: dict[str, Any] = message["usage"]
            # Cumulative counts: output_tokens always comes; input and cache counts only
            # when they changed, so an absent or null one keeps the message_start value.
            for key, value in usage.items():
                if value is not None:
                    totals[key] = _copy_json(value)


_HANDLED = frozenset(
    {
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    }
)


def _copy_block(block: Mapping[str, Any]) -> dict[str, Any]:
    copied = dict(block)
    for key in ("input", "citations"):
        if key in copied:
            copied[key] = _copy_json(copied[key])
    return copied
