"""SSE streams: event order, ping, cumulative usage, errors and cuts mid-stream."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator

MODEL = "claude-haiku-4-5"
HELLO: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me about caching."}],
}
WEATHER = {
    "name": "get_weather",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


def stream_events(
    client: httpx.Client, body: dict[str, Any]
) -> tuple[httpx.Response, list[tuple[str, dict[str, Any]]]]:
    with client.stream("POST", "/v1/messages", json=body) as response:
        raw = response.read().decode()
    return response, parse_sse(raw)


def test_event_order_ping_and_cumulative_usage(client: httpx.Client, emu: Emulator) -> None:
    response, events = stream_events(client, HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["request-id"].startswith("req_")
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[2] == "content_block_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert names.count("content_block_delta") >= 2

    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"]["output_tokens"] == 1
    assert set(start["usage"]) >= {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "service_tier",
    }

    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
    billed = emu.bill.entries[-1].usage
    assert delta["usage"] == {
        "input_tokens": start["usage"]["input_tokens"],
        "cache_creation_input_tokens": start["usage"]["cache_creation_input_tokens"],
        "cache_read_input_tokens": start["usage"]["cache_read_input_tokens"],
        "output_tokens": billed["output_tokens"],
    }
    assert billed["output_tokens"] == emu.count_tokens_of(text)


def test_stream_and_json_answers_agree(client: httpx.Client) -> None:
    _, events = stream_events(client, HELLO)
    text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
    message = client.post("/v1/messages", json={**HELLO, "stream": False}).json()
    assert message["content"][0]["text"] == text


def test_streamed_cache_usage_is_in_message_start_and_message_delta(
    client: httpx.Client, text_of: Callable[..., str]
) -> None:
    body = {
        **HELLO,
        "system": [{"type": "text", "text": text_of(5000), "cache_control": {"type": "ephemeral"}}],
    }
    _, first = stream_events(client, body)
    _, second = stream_events(client, body)
    written = first[0][1]["message"]["usage"]["cache_creation_input_tokens"]
    assert written > 5000
    assert second[0][1]["message"]["usage"]["cache_read_input_tokens"] == written
    assert second[-2][1]["usage"]["cache_read_input_tokens"] == written


def test_tool_use_streams_partial_json(client: httpx.Client) -> None:
    body = {**HELLO, "tools": [WEATHER], "tool_choice": {"type": "any"}}
    _, events = stream_events(client, body)
    start = next(e for n, e in events if n == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["input"] == {}
    pieces = [e["delta"]["partial_json"] for n, e in events if n == "content_block_delta"]
    assert pieces[0] == ""
    assert len(pieces) >= 3
    assert set(json.loads("".join(pieces))) >= {"city", "days"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_thinking_streams_thinking_then_signature(client: httpx.Client) -> None:
    body = {**HELLO, "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    _, events = stream_events(client, body)
    kinds = [
        e["delta"]["type"] for n, e in events if n == "content_block_delta" and e["index"] == 0
    ]
    assert kinds[0] == "thinking_delta"
    assert kinds[-1] == "signature_delta"


def test_error_event_mid_stream(client: httpx.Client, emu: Emulator) -> None:
    fault = emu.inject("stream_error", after_events=4)
    response, events = stream_events(client, HELLO)
    assert response.status_code == 200
    assert [n for n, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert fault.hits == 1
    assert emu.bill.entries == []  # an answer that never completed is not billed
    # The fault was used up: the next stream completes.
    assert stream_events(client, HELLO)[1][-1][0] == "message_stop"


def test_stream_faults_leave_non_streaming_requests_alone(
    client: httpx.Client, emu: Emulator
) -> None:
    fault = emu.inject("stream_error")
    assert client.post("/v1/messages", json={**HELLO, "stream": False}).status_code == 200
    assert fault.hits == 0


def test_stream_cut_raises_a_protocol_error_mid_body(client: httpx.Client, emu: Emulator) -> None:
    emu.inject("stream_cut", after_events=3)
    received: list[bytes] = []
    with client.stream("POST", "/v1/messages", json=HELLO) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(response.iter_raw())
    assert len(received) == 3


def test_chunks_are_produced_lazily(emu: Emulator) -> None:
    answer = emu.handle(
        "POST",
        "http://e/v1/messages",
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
        json.dumps(HELLO).encode(),
    )
    assert answer.chunks is not None and answer.body == b""
    first = next(answer.chunks)
    assert first.startswith(b"event: message_start\ndata: {")
    assert first.endswith(b"\n\n")


async def test_async_stream(emu: Emulator) -> None:
    async with (
        httpx.AsyncClient(
            transport=emu.transport(),
            base_url="http://e",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as c,
        c.stream("POST", "/v1/messages", json=HELLO) as response,
    ):
        chunks = [chunk async for chunk in response.aiter_raw()]
    assert len(chunks) > 5
    assert parse_sse(b"".join(chunks).decode())[-1][0] == "message_stop"
