"""Replay a stored message as the Messages API would have streamed it.

A cached answer is kept as the final message; a caller that asked for ``stream: true`` gets
it back as a faithful server-sent-event stream (reference §4.5, §6)::

    message_start        the message with content [], stop_reason null, and the full usage
                         except output_tokens, which is 1 (as the API sends it)
    ping
    per content block:   content_block_start (text "", tool input {}, thinking "")
                         content_block_delta …  (text_delta, citations_delta,
                                                 input_json_delta, thinking_delta,
                                                 signature_delta)
                         content_block_stop
    message_delta        stop_reason / stop_sequence, and the FULL cumulative usage
    message_stop

``message_delta`` repeats every usage field (input, cache reads and writes with their TTL
split, output): LangChain's ``ChatAnthropic`` reads usage only from ``message_delta``, and the
SDK's accumulator overwrites its counts from there. Any parser (the official SDK, LangChain,
:class:`~haikucache._sse.MessageAccumulator`) rebuilds exactly the stored message.

Block types with no streaming form (``redacted_thinking``, server tool results …) arrive
whole in their ``content_block_start``, as the API sends them. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from ._types import _copy_json

__all__ = ["DEFAULT_CHUNK_CHARS", "encode_sse", "message_to_events", "message_to_sse"]

#: Characters per text, thinking or tool-input delta: a few tokens, like the real stream.
DEFAULT_CHUNK_CHARS = 48

# Only these block types stream their input as input_json_delta (the SDK accumulates the
# partial JSON for exactly these); other blocks arrive whole.
_STREAMED_INPUT = frozenset({"tool_use", "server_tool_use"})

# Fields the API sends in message_delta.delta rather than in message_start.
_DELTA_FIELDS = ("stop_reason", "stop_sequence", "stop_details", "container")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _pieces(text: str, size: int) -> Iterator[str]:
    # Slicing a str never splits a code point, so every piece is valid UTF-8 on its own.
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _block_events(index: int, block: Mapping[str, Any], size: int) -> Iterator[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        start = _copy_json(dict(block))
        start["text"] = ""
        citations = block.get("citations")
        if isinstance(citations, list):
            start["citations"] = []
        yield {"type": "content_block_start", "index": index, "content_block": start}
        if isinstance(citations, list):
            for citation in citations:
                yield _delta(index, {"type": "citations_delta", "citation": _copy_json(citation)})
        for piece in _pieces(str(block.get("text", "")), size):
            yield _delta(index, {"type": "text_delta", "text": piece})
    elif kind in _STREAMED_INPUT and "input" in block:
        start = _copy_json(dict(block))
        start["input"] = {}
        yield {"type": "content_block_start", "index": index, "content_block": start}
        for piece in _pieces(_dumps(block["input"]), size):
            yield _delta(index, {"type": "input_json_delta", "partial_json": piece})
    elif kind == "thinking":
        start = _copy_json(dict(block))
        start["thinking"] = ""
        start["signature"] = ""
        yield {"type": "content_block_start", "index": index, "content_block": start}
        for piece in _pieces(str(block.get("thinking", "")), size):
            yield _delta(index, {"type": "thinking_delta", "thinking": piece})
        signature = block.get("signature")
        if isinstance(signature, str) and signature:
            yield _delta(index, {"type": "signature_delta", "signature": signature})
    else:
        yield {
            "type": "content_block_start",
            "index": index,
            "content_block": _copy_json(dict(block)),
        }
    yield {"type": "content_block_stop", "index": index}


def message_to_events(
    message: Mapping[str, Any], *, chunk_chars: int = DEFAULT_CHUNK_CHARS
) -> Iterator[dict[str, Any]]:
    """The stream events of ``message``, as decoded JSON dicts (for in-process clients).

    Args:
        message: a complete Messages API message (``content``, ``usage``, ``stop_reason`` …).
        chunk_chars: characters per text, thinking and tool-input delta.

    Every event is a fresh object: consumers may keep or change them without touching
    ``message``.

    Raises:
        ValueError: ``chunk_chars`` is not positive, or ``message`` has no content list.
    """
    if isinstance(chunk_chars, bool) or not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive integer, got {chunk_chars!r}")
    content = message.get("content")
    if not isinstance(content, list):
        raise ValueError("a message to replay needs a content list")
    # Checked above, at call time; the events themselves are produced lazily.
    return _events(message, content, chunk_chars)


def _events(
    message: Mapping[str, Any], content: list[Any], chunk_chars: int
) -> Iterator[dict[str, Any]]:
    usage = message.get("usage")
    usage = _copy_json(dict(usage)) if isinstance(usage, Mapping) else {}

    start: dict[str, Any] = {}
    for name, value in message.items():
        if name == "content":
            start[name] = []
        elif name == "usage":
            output = usage.get("output_tokens")
            # The API reports the first output token in message_start.
            first = min(output, 1) if isinstance(output, int) else 1
            start[name] = {**_copy_json(usage), "output_tokens": first}
        elif name in ("stop_reason", "stop_sequence"):
            start[name] = None
        elif name not in _DELTA_FIELDS:
            start[name] = _copy_json(value)
    start.setdefault("usage", {"output_tokens": 1})
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    for index, block in enumerate(content):
        yield from _block_events(index, block, chunk_chars)
    delta: dict[str, Any] = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    for name in ("stop_details", "container"):
        if name in message:
            delta[name] = _copy_json(message[name])
    yield {"type": "message_delta", "delta": delta, "usage": usage}
    yield {"type": "message_stop"}


def encode_sse(event: Mapping[str, Any]) -> bytes:
    """One SSE frame: ``event: <type>``, ``data: <compact JSON>``, a blank line."""
    return f"event: {event['type']}\ndata: {_dumps(event)}\n\n".encode("utf-8", "surrogatepass")


def message_to_sse(
    message: Mapping[str, Any], *, chunk_chars: int = DEFAULT_CHUNK_CHARS
) -> Iterator[bytes]:
    """The ``text/event-stream`` body that streams ``message``, one frame per item.

    Args:
        message: a complete Messages API message.
        chunk_chars: characters per text, thinking and tool-input delta.

    Raises:
        ValueError: as :func:`message_to_events`.
    """
    return map(encode_sse, message_to_events(message, chunk_chars=chunk_chars))
