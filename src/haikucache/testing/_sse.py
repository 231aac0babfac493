"""Server-sent events exactly as the Messages API streams them (reference §4.5, §6).

``message_start`` (full usage, ``output_tokens`` 1, ``stop_reason`` null) → ``ping`` → per
block ``content_block_start`` / deltas / ``content_block_stop`` → ``message_delta`` (stop
reason, and usage that is cumulative and repeats the input and cache counters, as the real
API does) → ``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["encode_event", "message_events"]

_TEXT_CHUNK_WORDS = 4
_JSON_CHUNK_CHARS = 12


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One SSE frame: an ``event:`` line, a ``data:`` line, a blank line."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def _text_chunks(text: str) -> Iterator[str]:
    # A few words per delta, like the real stream; never an empty delta.
    words = text.split(" ")
    for i in range(0, len(words), _TEXT_CHUNK_WORDS):
        chunk = " ".join(words[i : i + _TEXT_CHUNK_WORDS])
        if i + _TEXT_CHUNK_WORDS < len(words):
            chunk += " "
        if chunk:
            yield chunk


def _block_events(index: int, block: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        yield {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        }
        for chunk in _text_chunks(block["text"]):
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": chunk},
            }
    elif kind == "tool_use":
        yield {
            "type": "content_block_start",
            "index": index,
            "content_block": {
                "type": "tool_use",
                "id": block["id"],
                "name": block["name"],
                "input": {},
            },
        }
        raw = json.dumps(block["input"], ensure_ascii=False)
        # The real API's first input_json_delta is often empty.
        yield {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        }
        for i in range(0, len(raw), _JSON_CHUNK_CHARS):
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {
                    "type": "input_json_delta",
                    "partial_json": raw[i : i + _JSON_CHUNK_CHARS],
                },
            }
    elif kind == "thinking":
        yield {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        }
        for chunk in _text_chunks(block["thinking"]):
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "thinking_delta", "thinking": chunk},
            }
        yield {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "signature_delta", "signature": block["signature"]},
        }
    else:
        yield {"type": "content_block_start", "index": index, "content_block": dict(block)}
    yield {"type": "content_block_stop", "index": index}


def message_events(message: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The events that stream ``message`` (a complete Messages API response body)."""
    usage = message["usage"]
    start = {key: value for key, value in message.items() if key not in ("content", "usage")}
    start["content"] = []
    start["stop_reason"] = None
    start["stop_sequence"] = None
    start["usage"] = {**usage, "output_tokens": 1}
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    for index, block in enumerate(message["content"]):
        yield from _block_events(index, block)
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
        "usage": {
            "input_tokens": usage["input_tokens"],
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "output_tokens": usage["output_tokens"],
        },
    }
    yield {"type": "message_stop"}
