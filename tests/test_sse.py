"""The SSE decoder and the message accumulator, on hand-written bytes and events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from haikucache import APIResponseValidationError
from haikucache._sse import MessageAccumulator, ServerSentEvent, SSEDecoder

# --------------------------------------------------------------------------- decoder

STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n'
    b"\n"
    b": a comment, ignored\n"
    b"event: ping\n"
    b'data: {"type": "ping"}\n'
    b"\n"
    + (
        "event: content_block_delta\n"
        'data: {"type":"content_block_delta","delta":{"text":"h\u00e9llo \u2603"}}\n'
        "\n"
    ).encode()
)


def decode_all(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def test_decodes_named_events_and_skips_comments() -> None:
    events = decode_all([STREAM])
    assert [e.event for e in events] == ["message_start", "ping", "content_block_delta"]
    assert events[2].json()["delta"]["text"] == "h\u00e9llo \u2603"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_chunks_split_anywhere_give_the_same_events(size: int) -> None:
    # Every split point, including inside a multi-byte UTF-8 character and between \r and \n.
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert decode_all(chunks) == decode_all([STREAM])


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_all_line_endings(newline: bytes) -> None:
    raw = STREAM.replace(b"\n", newline)
    whole = decode_all([raw])
    assert [e.event for e in whole] == ["message_start", "ping", "content_block_delta"]
    assert decode_all([raw[i : i + 1] for i in range(len(raw))]) == whole


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []
    # "\r\n" ended the data line, "\r" + "\n" is one blank line, dispatching the event.
    assert decoder.feed(b"\n") == [ServerSentEvent(event=None, data="a")]


def test_events_are_returned_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(event="a", data="1")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    events = decode_all([b"data: first\ndata:second\ndata:  third\n\n"])
    # One optional space after the colon is stripped; more are kept.
    assert events == [ServerSentEvent(event=None, data="first\nsecond\n third")]


def test_id_persists_and_retry_is_parsed() -> None:
    events = decode_all([b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\nretry: x\ndata: c\n\n"])
    assert [(e.id, e.retry, e.data) for e in events] == [
        ("7", 1500, "a"),
        ("7", None, "b"),
        ("7", None, "c"),
    ]


def test_field_without_colon_and_unknown_fields() -> None:
    events = decode_all([b"data\nfoo: bar\n\n"])
    assert events == [ServerSentEvent(event=None, data="")]


def test_incomplete_event_at_end_of_stream_is_discarded() -> None:
    assert decode_all([b"data: complete\n\ndata: cut off\n"]) == [
        ServerSentEvent(event=None, data="complete")
    ]


def test_flush_finishes_a_trailing_lone_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r\r") == []
    assert decoder.flush() == [ServerSentEvent(event=None, data="x")]


def test_leading_bom_is_ignored() -> None:
    assert decode_all([b"\xef\xbb\xbfevent: a\ndata: 1\n\n"])[0].event == "a"


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert decode_all([b"\n\n\n: keepalive\n\n"]) == []


def test_json_of_non_json_data_raises_a_validation_error() -> None:
    with pytest.raises(APIResponseValidationError, match="not JSON"):
        ServerSentEvent(event="message_start", data="{oops").json()


# --------------------------------------------------------------------------- accumulator

USAGE_START = {
    "input_tokens": 14,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 5120,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 1,
    "service_tier": "standard",
}


def start_event(**usage: Any) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_01Ab",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**USAGE_START, **usage},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **payload: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": payload}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(usage: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage,
    }


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    acc = MessageAccumulator()
    for event in events:
        acc.feed(event)
    assert acc.done
    return acc.message()


def test_text_tool_and_thinking_blocks_accumulate_like_the_api() -> None:
    message = accumulate(
        [
            start_event(),
            {"type": "ping"},
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, type="thinking_delta", thinking="Let me "),
            delta(0, type="thinking_delta", thinking="think."),
            delta(0, type="signature_delta", signature="sig=="),
            stop(0),
            block_start(1, {"type": "text", "text": ""}),
            delta(1, type="text_delta", text="Hel"),
            delta(1, type="text_delta", text="lo"),
            stop(1),
            block_start(2, {"type": "tool_use", "id": "toolu_01Q", "name": "lookup", "input": {}}),
            delta(2, type="input_json_delta", partial_json=""),
            delta(2, type="input_json_delta", partial_json='{"id": "4'),
            delta(2, type="input_json_delta", partial_json='2", "n": [1, 2]}'),
            stop(2),
            {"type": "some_future_event", "payload": 1},
            message_delta({"output_tokens": 91}, stop_reason="tool_use"),
            {"type": "message_stop"},
        ]
    )
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig=="},
        {"type": "text", "text": "Hello"},
        {
            "type": "tool_use",
            "id": "toolu_01Q",
            "name": "lookup",
            "input": {"id": "42", "n": [1, 2]},
        },
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["stop_sequence"] is None
    # message_delta's usage is cumulative: output overwritten, the rest kept from the start.
    assert message["usage"] == {**USAGE_START, "output_tokens": 91}


def test_message_delta_overwrites_input_and_cache_counts_only_when_present() -> None:
    message = accumulate(
        [
            start_event(),
            message_delta(
                {
                    "output_tokens": 12,
                    "input_tokens": 20,
                    "cache_read_input_tokens": None,
                    "cache_creation_input_tokens": 7,
                }
            ),
            {"type": "message_stop"},
        ]
    )
    assert message["usage"]["output_tokens"] == 12
    assert message["usage"]["input_tokens"] == 20
    assert message["usage"]["cache_creation_input_tokens"] == 7
    assert message["usage"]["cache_read_input_tokens"] == 5120  # null: keep the start value


def test_tool_with_no_arguments_keeps_empty_input() -> None:
    message = accumulate(
        [
            start_event(),
            block_start(0, {"type": "tool_use", "id": "t", "name": "now", "input": {}}),
            delta(0, type="input_json_delta", partial_json=""),
            stop(0),
            {"type": "message_stop"},
        ]
    )
    assert message["content"][0]["input"] == {}


def test_citations_are_appended_to_the_text_block() -> None:
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    message = accumulate(
        [
            start_event(),
            block_start(0, {"type": "text", "text": ""}),
            delta(0, type="citations_delta", citation=citation),
            delta(0, type="text_delta", text="says x"),
            delta(0, type="citations_delta", citation={**citation, "cited_text": "y"}),
            stop(0),
            {"type": "message_stop"},
        ]
    )
    block = message["content"][0]
    assert block["text"] == "says x"
    assert [c["cited_text"] for c in block["citations"]] == ["x", "y"]


def test_events_are_not_mutated() -> None:
    events = [
        start_event(),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, type="text_delta", text="Hi"),
        block_start(1, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        delta(1, type="input_json_delta", partial_json='{"a": 1}'),
        stop(0),
        stop(1),
        message_delta({"output_tokens": 5}),
        {"type": "message_stop"},
    ]
    before = json.dumps(events)
    accumulate(events)
    assert json.dumps(events) == before


def test_snapshot_is_live_and_done_only_after_message_stop() -> None:
    acc = MessageAccumulator()
    assert acc.snapshot is None
    acc.feed(start_event())
    acc.feed(block_start(0, {"type": "text", "text": ""}))
    acc.feed(delta(0, type="text_delta", text="par"))
    assert acc.snapshot is not None
    assert acc.snapshot["content"][0]["text"] == "par"
    assert not acc.done
    acc.feed({"type": "message_stop"})
    assert acc.done


def test_mismatched_delta_type_is_ignored() -> None:
    message = accumulate(
        [
            start_event(),
            block_start(0, {"type": "text", "text": "a"}),
            delta(0, type="thinking_delta", thinking="nope"),
            delta(0, type="future_delta", x=1),
            stop(0),
            {"type": "message_stop"},
        ]
    )
    assert message["content"] == [{"type": "text", "text": "a"}]


@pytest.mark.parametrize(
    ("events", "match"),
    [
        ([block_start(0, {"type": "text", "text": ""})], "before message_start"),
        ([start_event(), delta(0, type="text_delta", text="x")], "content block 0"),
        ([start_event(), start_event()], "second message_start"),
        (
            [
                start_event(),
                block_start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
                delta(0, type="input_json_delta", partial_json='{"a": '),
                stop(0),
            ],
            "not valid JSON",
        ),
    ],
)
def test_malformed_streams_raise_validation_errors(
    events: list[dict[str, Any]], match: str
) -> None:
    with pytest.raises(APIResponseValidationError, match=match):
        feed_all(MessageAccumulator(), events)


def feed_all(acc: MessageAccumulator, events: list[dict[str, Any]]) -> None:
    for event in events:
        acc.feed(event)


def test_message_before_start_raises() -> None:
    with pytest.raises(APIResponseValidationError, match="before message_start"):
        MessageAccumulator().message()
