"""Typed response objects: lazy views over the JSON the API sent."""

from __future__ import annotations

import copy
import json
import pickle
import time
from types import MappingProxyType
from typing import Any

import pytest

from haikucache import CallInfo
from haikucache._types import (
    APIObject,
    CacheCreation,
    ContentBlock,
    ContentBlockDeltaEvent,
    InputJSONDelta,
    Message,
    MessageBatch,
    MessageBatchCanceledResult,
    MessageBatchErroredResult,
    MessageBatchExpiredResult,
    MessageBatchIndividualResponse,
    MessageBatchResult,
    MessageBatchSucceededResult,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
)


def message_data() -> dict[str, Any]:
    return {
        "id": "msg_01Ab",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "toolu_01Q", "name": "lookup", "input": {"id": "42"}},
            {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 14,
            "cache_creation_input_tokens": 5120,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 5120},
            "output_tokens": 88,
            "service_tier": "standard",
        },
    }


def test_attribute_access_wraps_nested_objects_in_their_classes() -> None:
    message = Message(message_data())
    assert message.id == "msg_01Ab"
    assert isinstance(message.usage, Usage)
    assert isinstance(message.usage.cache_creation, CacheCreation)
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 5120
    thinking, text, tool, unknown = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert thinking.signature == "s"
    assert isinstance(text, TextBlock)
    assert text.text == "Hello"
    assert isinstance(tool, ToolUseBlock)
    # A tool's input is the model's arguments: a plain dict, not an API object.
    assert tool.input == {"id": "42"}
    assert type(tool.input) is dict
    # A block type this version does not know still wraps, and its fields are readable.
    assert type(unknown) is ContentBlock
    assert unknown.type == "server_tool_use"
    assert unknown.name == "web_search"


def test_nested_objects_are_wrapped_once_and_cached() -> None:
    message = Message(message_data())
    assert message.content is message.content
    assert message.usage is message.usage


def test_unknown_fields_stay_accessible_as_plain_json() -> None:
    data = message_data()
    data["container"] = {"id": "c1"}
    data["brand_new_field"] = {"nested": [1, 2]}
    message = Message(data)
    assert message.brand_new_field == {"nested": [1, 2]}
    assert message["brand_new_field"] == {"nested": [1, 2]}
    assert message.container.id == "c1"
    assert "brand_new_field" in dir(message)


def test_declared_but_absent_fields_read_none_undeclared_raise() -> None:
    block = TextBlock({"type": "text", "text": "x"})
    assert block.citations is None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = block.nope
    with pytest.raises(KeyError):
        _ = block["citations"]
    assert block.get("citations", "default") == "default"
    assert "text" in block
    assert "citations" not in block


def test_item_access_matches_attribute_access() -> None:
    message = Message(message_data())
    assert message["usage"] is message.usage
    assert message["content"][1]["text"] == "Hello"
    assert message.get("stop_reason") == "tool_use"


def test_to_dict_is_a_deep_independent_copy() -> None:
    data = message_data()
    message = Message(data)
    _ = message.content  # wrapping must not leak into the copy
    dumped = message.to_dict()
    assert dumped == data
    assert json.loads(json.dumps(dumped)) == data
    dumped["content"][2]["input"]["id"] = "changed"
    assert message.content[2].input == {"id": "42"}
    assert message.model_dump() == data
    assert message.model_dump(mode="json") == data
    assert "stop_sequence" not in message.to_dict(exclude_none=True)
    assert json.loads(message.to_json()) == data
    assert json.loads(message.model_dump_json(indent=2)) == data


def test_haikucache_attribute_is_not_part_of_the_data() -> None:
    message = Message(message_data())
    assert message.haikucache is None
    info = CallInfo(
        cache="miss",
        key="hc1:00",
        namespace="n",
        model="claude-haiku-4-5",
        cost_usd=0.1,
        baseline_usd=0.2,
        saved_usd=0.1,
    )
    message.haikucache = info
    assert message.haikucache is info
    assert "haikucache" not in message.to_dict()
    assert message == Message(message_data())  # equality is on the JSON only
    assert "haikucache=CallInfo(" in repr(message)


def test_setting_an_attribute_writes_through_to_the_json() -> None:
    message = Message(message_data())
    message.content[1].text = "Changed"
    assert message.to_dict()["content"][1]["text"] == "Changed"
    message.stop_reason = "end_turn"
    assert message["stop_reason"] == "end_turn"
    message.usage = Usage({"input_tokens": 1, "output_tokens": 2})
    assert message.usage.output_tokens == 2
    assert message.to_dict()["usage"] == {"input_tokens": 1, "output_tokens": 2}


def test_equality_and_hash() -> None:
    assert TextBlock({"type": "text", "text": "a"}) == ContentBlock({"type": "text", "text": "a"})
    assert TextBlock({"type": "text", "text": "a"}) != TextBlock({"type": "text", "text": "b"})
    assert TextBlock({"type": "text", "text": "a"}) != {"type": "text", "text": "a"}
    with pytest.raises(TypeError):
        hash(TextBlock({"type": "text", "text": "a"}))


def test_repr_shows_the_class_and_fields() -> None:
    assert repr(TextBlock({"type": "text", "text": "Hi"})) == "TextBlock(type='text', text='Hi')"
    assert repr(Message(message_data())).startswith("Message(id='msg_01Ab', type='message'")


def test_tagged_unions_dispatch_on_type() -> None:
    assert type(ContentBlock({"type": "text", "text": ""})) is TextBlock
    assert type(StreamEvent({"type": "message_stop"})) is MessageStopEvent
    assert type(StreamEvent({"type": "nobody_knows"})) is StreamEvent
    assert type(StreamEvent({})) is StreamEvent
    # Asking for a specific class keeps it, whatever the data says.
    assert type(TextBlock({"type": "tool_use"})) is TextBlock


def test_stream_events_are_typed_down_to_the_delta() -> None:
    start = StreamEvent({"type": "message_start", "message": message_data()})
    assert isinstance(start, MessageStartEvent)
    assert isinstance(start.message, Message)
    text = StreamEvent(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}
    )
    assert isinstance(text, ContentBlockDeltaEvent)
    assert isinstance(text.delta, TextDelta)
    assert text.delta.text == "x"
    json_delta = StreamEvent(
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{"},
        }
    )
    assert isinstance(json_delta, ContentBlockDeltaEvent)
    assert isinstance(json_delta.delta, InputJSONDelta)
    end = StreamEvent(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 3},
        }
    )
    assert isinstance(end, MessageDeltaEvent)
    assert end.delta.stop_reason == "end_turn"
    assert end.usage.output_tokens == 3
    assert end.usage.input_tokens is None


def test_batch_objects() -> None:
    batch = MessageBatch(
        {
            "id": "msgbatch_01H",
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": 1,
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": "2025-11-20T10:00:00.000000Z",
            "expires_at": "2025-11-21T10:00:00.000000Z",
            "ended_at": None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": None,
        }
    )
    assert batch.request_counts.processing == 1
    assert batch.results_url is None

    succeeded = MessageBatchIndividualResponse(
        {"custom_id": "a", "result": {"type": "succeeded", "message": message_data()}}
    )
    assert isinstance(succeeded.result, MessageBatchSucceededResult)
    assert isinstance(succeeded.result.message, Message)
    assert succeeded.result.message.usage.output_tokens == 88

    errored = MessageBatchIndividualResponse(
        {
            "custom_id": "b",
            "result": {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "bad"},
                    "request_id": "req_1",
                },
            },
        }
    )
    assert isinstance(errored.result, MessageBatchErroredResult)
    assert errored.result.error.error.type == "invalid_request_error"
    assert errored.result.error.request_id == "req_1"

    canceled = MessageBatchResult({"type": "canceled"})
    expired = MessageBatchResult({"type": "expired"})
    assert isinstance(canceled, MessageBatchCanceledResult)
    assert isinstance(expired, MessageBatchExpiredResult)


def test_pickle_and_copy_round_trip() -> None:
    message = Message(message_data())
    for clone in (pickle.loads(pickle.dumps(message)), copy.deepcopy(message)):
        assert clone == message
        assert type(clone.content[1]) is TextBlock
    shallow = copy.copy(ContentBlock({"type": "text", "text": "a"}))
    assert type(shallow) is TextBlock


def test_a_mapping_or_object_can_be_wrapped() -> None:
    usage = Usage(Usage({"input_tokens": 1, "output_tokens": 2}))
    assert usage.input_tokens == 1
    assert APIObject(MappingProxyType({"a": 1})).a == 1


def test_construction_is_cheap_for_large_messages() -> None:
    # The client's round trip budget is < 1 ms; wrapping must not walk the JSON.
    data = message_data()
    data["content"] = [{"type": "text", "text": "x" * 100} for _ in range(20_000)]
    started = time.perf_counter()
    for _ in range(1000):
        Message(data)
    assert time.perf_counter() - started < 0.05
