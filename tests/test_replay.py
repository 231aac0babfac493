"""A stored message replayed as SSE parses back into the identical message.

The parsers under test are real: the official ``anthropic`` SDK and LangChain's
``ChatAnthropic`` over loopback HTTP, and haikucache's own SSE decoder and accumulator.
The messages are real too: produced by the emulator (text, tool use, thinking, prompt-cache
usage with the 5m/1h split), plus hand-written shapes the emulator does not produce.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haikucache._replay import encode_sse, message_to_events, message_to_sse
from haikucache._sse import MessageAccumulator, SSEDecoder
from haikucache.testing import Emulator, ManualClock

MODEL = "claude-haiku-4-5"
SYSTEM_TEXT = "Refunds go to the original form of payment within seven days. " * 700
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    }
]


# --------------------------------------------------------------------------- messages


def _emulated() -> dict[str, dict[str, Any]]:
    emu = Emulator(clock=ManualClock())
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    system_1h = [
        {"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    # Another prefix: the 1h entry above would otherwise answer it with a read.
    system_5m = [
        {"type": "text", "text": "Policy B. " + SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}}
    ]
    question = [{"role": "user", "content": "What is the refund policy?"}]
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(
        transport=emu.transport(), base_url="http://emulator.local", headers=headers
    ) as client:

        def ask(**body: Any) -> dict[str, Any]:
            response = client.post("/v1/messages", json={"model": MODEL, "max_tokens": 512, **body})
            response.raise_for_status()
            message: dict[str, Any] = response.json()
            return message

        out["text_cache_write_1h"] = ask(system=system_1h, messages=question)
        out["text_cache_read"] = ask(system=system_1h, messages=question)
        out["text_cache_write_5m"] = ask(system=system_5m, messages=question)
        out["tool_use"] = ask(
            system=system_5m, tools=TOOLS, tool_choice={"type": "any"}, messages=question
        )
        out["thinking"] = ask(
            max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}, messages=question
        )
    assert out["text_cache_write_1h"]["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert out["text_cache_read"]["usage"]["cache_read_input_tokens"] > 0
    assert out["text_cache_write_5m"]["usage"]["cache_creation"]["ephemeral_5m_input_tokens"] > 0
    assert out["tool_use"]["content"][0]["type"] == "tool_use"
    assert out["thinking"]["content"][0]["type"] == "thinking"
    return out


def _usage(**overrides: Any) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": 21,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4200,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 57,
        "service_tier": "standard",
    }
    usage.update(overrides)
    return usage


def _message(content: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_01ReplayTest",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _usage(),
    }
    message.update(overrides)
    return message


HANDWRITTEN: dict[str, dict[str, Any]] = {
    "unicode_and_newlines": _message(
        [{"type": "text", "text": 'Grüße 🌍 — 東京\n\n"quoted" \\ back\tslash ' * 9}]
    ),
    "stop_sequence": _message(
        [{"type": "text", "text": "one, two, three"}],
        stop_reason="stop_sequence",
        stop_sequence="four",
    ),
    "empty_text_and_tool_without_arguments": _message(
        [
            {"type": "text", "text": ""},
            {"type": "tool_use", "id": "toolu_01E", "name": "now", "input": {}},
        ],
        stop_reason="tool_use",
    ),
    "nested_tool_input": _message(
        [
            {"type": "text", "text": "Let me look that up."},
            {
                "type": "tool_use",
                "id": "toolu_01N",
                "name": "search",
                "input": {
                    "query": 'naïve café "quotes" {braces} [brackets]',
                    "filters": {"year": [2024, 2025], "exact": True, "score": 0.75, "x": None},
                    "emoji": "🚀" * 30,
                },
            },
        ],
        stop_reason="tool_use",
    ),
    "citations": _message(
        [
            {
                "type": "text",
                "text": "The grass is green.",
                "citations": [
                    {
                        "type": "char_location",
                        "cited_text": "The grass is green.",
                        "document_index": 0,
                        "document_title": "Facts",
                        "start_char_index": 0,
                        "end_char_index": 20,
                    }
                ],
            }
        ]
    ),
    "container": _message(
        [{"type": "text", "text": "Ran it."}],
        container={"id": "container_011CZ", "expires_at": "2025-11-20T11:00:00Z"},
    ),
    "redacted_thinking": _message(
        [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "text", "text": "Done."},
        ]
    ),
    "server_tool": _message(
        [
            {
                "type": "server_tool_use",
                "id": "srvtoolu_01A",
                "name": "web_search",
                "input": {"query": "haiku 4.5 pricing"},
            },
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_01A",
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://example.com/pricing",
                        "title": "Pricing",
                        "encrypted_content": "abc",
                        "page_age": None,
                    }
                ],
            },
            {"type": "text", "text": "It costs $1 per million input tokens."},
        ],
        usage=_usage(server_tool_use={"web_search_requests": 1}),
    ),
}


@pytest.fixture(scope="module")
def messages() -> dict[str, dict[str, Any]]:
    return {**_emulated(), **HANDWRITTEN}


ALL_NAMES = [
    "text_cache_write_1h",
    "text_cache_read",
    "text_cache_write_5m",
    "tool_use",
    "thinking",
    *HANDWRITTEN,
]


def _accumulate(body: bytes, cuts: random.Random | None = None) -> dict[str, Any]:
    """Decode an SSE body the way a client does, optionally cut into random chunks."""
    decoder = SSEDecoder()
    accumulator = MessageAccumulator()
    position = 0
    while position < len(body):
        step = cuts.randint(1, 64) if cuts is not None else len(body)
        for event in decoder.feed(body[position : position + step]):
            accumulator.feed(event.json())
        position += step
    for event in decoder.flush():
        accumulator.feed(event.json())
    assert accumulator.done
    return accumulator.message()


# --------------------------------------------------------------------------- shape


def test_event_sequence_is_the_apis(messages: dict[str, dict[str, Any]]) -> None:
    message = messages["tool_use"]
    events = list(message_to_events(message))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    start = events[0]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["id"] == message["id"] and start["model"] == message["model"]
    # Full usage in message_start, except the output count, which starts at 1.
    assert start["usage"] == {**message["usage"], "output_tokens": 1}
    delta = events[-2]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # message_delta carries the full cumulative usage: input, cache fields, split, output.
    assert delta["usage"] == message["usage"]
    block_start = events[2]
    assert block_start == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {
            "type": "tool_use",
            "id": message["content"][0]["id"],
            "name": "get_weather",
            "input": {},
        },
    }
    partial = "".join(
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == message["content"][0]["input"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1


def test_text_and_thinking_blocks_start_empty_and_stream_in_pieces(
    messages: dict[str, dict[str, Any]],
) -> None:
    message = messages["thinking"]
    events = list(message_to_events(message, chunk_chars=16))
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[1] == {"type": "text", "text": ""}
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    thinking = [d for d in deltas if d["type"] == "thinking_delta"]
    assert all(len(d["thinking"]) <= 16 for d in thinking)
    assert "".join(d["thinking"] for d in thinking) == message["content"][0]["thinking"]
    # The signature comes last, just before the thinking block stops.
    index = next(
        i for i, e in enumerate(events) if e.get("delta", {}).get("type") == "signature_delta"
    )
    assert events[index]["delta"]["signature"] == message["content"][0]["signature"]
    assert events[index + 1] == {"type": "content_block_stop", "index": 0}


def test_sse_frames_are_named_events_with_compact_json(messages: dict[str, dict[str, Any]]) -> None:
    frames = list(message_to_sse(messages["text_cache_read"]))
    for frame in frames:
        text = frame.decode()
        name, data, blank = text.split("\n", 2)
        assert blank == "\n"
        assert name.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[len("data: ") :])["type"] == name[len("event: ") :]
    assert frames[1] == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_sse({"type": "message_stop"}) == frames[-1]


def test_events_are_fresh_objects(messages: dict[str, dict[str, Any]]) -> None:
    message = messages["nested_tool_input"]
    before = json.dumps(message, sort_keys=True)
    for event in message_to_events(message):
        for value in event.values():
            if isinstance(value, dict):
                value.clear()
    assert json.dumps(message, sort_keys=True) == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_chunk_chars_must_be_a_positive_integer(bad: Any) -> None:
    with pytest.raises(ValueError, match="chunk_chars"):
        message_to_events(HANDWRITTEN["stop_sequence"], chunk_chars=bad)


def test_a_message_without_content_cannot_be_replayed() -> None:
    with pytest.raises(ValueError, match="content"):
        message_to_sse({"type": "message", "usage": {}})


# --------------------------------------------------------------------------- haikucache's parser


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("chunk_chars", [1, 7, 48, 10_000])
def test_haikucache_accumulator_rebuilds_the_message(
    messages: dict[str, dict[str, Any]], name: str, chunk_chars: int
) -> None:
    message = messages[name]
    body = b"".join(message_to_sse(message, chunk_chars=chunk_chars))
    assert _accumulate(body, random.Random(chunk_chars)) == message


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(min_size=0, max_size=300),
    tool_input=st.dictionaries(
        st.text(max_size=12),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    ),
    chunk_chars=st.integers(min_value=1, max_value=64),
)
def test_any_text_and_tool_input_survive_a_replay(
    text: str, tool_input: dict[str, Any], chunk_chars: int
) -> None:
    message = _message(
        [
            {"type": "text", "text": text},
            {"type": "tool_use", "id": "toolu_01H", "name": "f", "input": tool_input},
        ],
        stop_reason="tool_use",
    )
    body = b"".join(message_to_sse(message, chunk_chars=chunk_chars))
    assert _accumulate(body, random.Random(len(body))) == message


# --------------------------------------------------------------------------- real clients


class _ReplayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReplayHandler)
        self.message: dict[str, Any] = {}
        self.requests = 0


class _ReplayHandler(BaseHTTPRequestHandler):
    """Answers POST /v1/messages with the server's message: JSON, or replayed SSE."""

    server: _ReplayServer

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests += 1
        if body.get("stream"):
            payload = b"".join(message_to_sse(self.server.message))
            content_type = "text/event-stream; charset=utf-8"
        else:
            payload = json.dumps(self.server.message).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.send_header("request-id", "req_replay")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def replay_server() -> Iterator[_ReplayServer]:
    server = _ReplayServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _base_url(server: _ReplayServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def _sdk_dict(message: Any, original: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = message.to_dict(mode="json")
    return {k: v for k, v in data.items() if v is not None or k in original}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_the_official_sdk_parses_a_replay_into_the_same_message(
    messages: dict[str, dict[str, Any]], name: str, replay_server: _ReplayServer
) -> None:
    anthropic = pytest.importorskip("anthropic")
    replay_server.message = messages[name]
    with anthropic.Anthropic(
        api_key="k", base_url=_base_url(replay_server), max_retries=0
    ) as client:
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 512,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        parsed = client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as stream:
            streamed_text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert replay_server.requests == 2
    # The SDK's own JSON parse of the original and its stream accumulation agree exactly
    # (the accumulator also sets fields the API omits, such as stop_details, to None).
    assert _sdk_dict(final, messages[name]) == _sdk_dict(parsed, messages[name]) == messages[name]
    assert streamed_text == "".join(
        b["text"] for b in messages[name]["content"] if b["type"] == "text"
    )


def test_the_official_sdk_sees_the_raw_events_in_order(
    messages: dict[str, dict[str, Any]], replay_server: _ReplayServer
) -> None:
    anthropic = pytest.importorskip("anthropic")
    replay_server.message = messages["text_cache_write_1h"]
    with anthropic.Anthropic(
        api_key="k", base_url=_base_url(replay_server), max_retries=0
    ) as client:
        stream = client.messages.create(
            model=MODEL,
            max_tokens=512,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
        )
        with stream:
            kinds = [event.type for event in stream]
    # The SDK drops ping; the rest arrive in the API's order.
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and "ping" not in kinds


@pytest.mark.parametrize(
    ("name", "cache_key"),
    [
        ("text_cache_write_1h", "ephemeral_1h_input_tokens"),
        ("text_cache_write_5m", "ephemeral_5m_input_tokens"),
        ("text_cache_read", "cache_read"),
    ],
)
def test_langchain_stream_over_a_replay_has_the_text_and_cache_usage(
    messages: dict[str, dict[str, Any]], replay_server: _ReplayServer, name: str, cache_key: str
) -> None:
    chat_anthropic = pytest.importorskip("langchain_anthropic").ChatAnthropic
    message = messages[name]
    replay_server.message = message
    model = chat_anthropic(
        model=MODEL, base_url=_base_url(replay_server), api_key="k", max_tokens=512, max_retries=0
    )
    chunks = list(model.stream("What is the refund policy?"))
    assert len(chunks) > 3
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.text == message["content"][0]["text"]
    usage = message["usage"]
    total_input = (
        usage["input_tokens"]
        + usage["cache_creation_input_tokens"]
        + usage["cache_read_input_tokens"]
    )
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["input_tokens"] == total_input
    assert merged.usage_metadata["output_tokens"] == usage["output_tokens"]
    details = merged.usage_metadata["input_token_details"]
    expected = (
        usage["cache_read_input_tokens"]
        if cache_key == "cache_read"
        else usage["cache_creation"][cache_key]
    )
    assert expected > 0
    assert details[cache_key] == expected
    assert merged.response_metadata["stop_reason"] == "end_turn"


def test_langchain_stream_over_a_replayed_tool_call(
    messages: dict[str, dict[str, Any]], replay_server: _ReplayServer
) -> None:
    chat_anthropic = pytest.importorskip("langchain_anthropic").ChatAnthropic
    message = messages["tool_use"]
    replay_server.message = message
    model = chat_anthropic(
        model=MODEL, base_url=_base_url(replay_server), api_key="k", max_tokens=512, max_retries=0
    ).bind_tools(TOOLS)
    chunks = list(model.stream("Weather?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    block = message["content"][0]
    assert [(c["name"], c["args"], c["id"]) for c in merged.tool_calls] == [
        (block["name"], block["input"], block["id"])
    ]
