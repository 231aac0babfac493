"""``HaikuCache`` on the emulator: the LLM surface, tools, blocks, instrumentation, errors."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core import Settings
from llama_index.core.base.llms.types import (
    AudioBlock,
    CacheControl,
    CachePoint,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from haikucache import (
    Client,
    ConfigurationError,
    Engine,
    MemoryLedger,
    MemoryStore,
    RequestValidationError,
)
from haikucache.testing import Emulator
from llama_index.llms.haikucache import HaikuCache

QUESTION = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer in two sentences."),
    ChatMessage(role=MessageRole.USER, content="What is the baggage allowance?"),
]
LONG_POLICY = "You are the fare assistant of Example Air. " + " ".join(
    f"Rule {k}: passengers on fare class {chr(65 + k % 6)} show document {k} at counter {k % 9}."
    for k in range(400)
)


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def lookup_fare(route: int, fare_class: str) -> str:
    """Look up the fare of a route in a fare class."""
    return f"route {route} class {fare_class}: 120 USD"


# -------------------------------------------------------------------------- chat & complete


def test_chat_reports_usage_dollars_and_cache_status(
    llm: HaikuCache, emulator: Emulator, ledger: MemoryLedger
) -> None:
    first = llm.chat(QUESTION)
    second = llm.chat(QUESTION)

    assert emulator.requests["messages"] == 1
    assert first.raw["type"] == "message" and first.raw["usage"]["output_tokens"] > 0
    assert first.message.role == MessageRole.ASSISTANT
    assert first.message.content == first.raw["content"][0]["text"]
    info = first.additional_kwargs["haikucache"]
    assert info["cache"] == "miss"
    assert info["cost_usd"] == pytest.approx(emulator.bill.entries[-1].usd)
    usage = first.raw["usage"]
    assert first.additional_kwargs["completion_tokens"] == usage["output_tokens"]
    assert first.additional_kwargs["prompt_tokens"] == (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )
    assert second.additional_kwargs["haikucache"]["cache"] == "hit"
    assert second.additional_kwargs["haikucache"]["cost_usd"] == 0
    assert second.additional_kwargs["haikucache"]["saved_usd"] == pytest.approx(
        info["baseline_usd"]
    )
    assert second.message.content == first.message.content
    assert [e.cache for e in ledger.entries] == ["miss", "hit"]


def test_complete_and_its_stream_share_one_answer(llm: HaikuCache, emulator: Emulator) -> None:
    answer = llm.complete("Name three airports.")
    chunks = list(llm.stream_complete("Name three airports."))

    assert emulator.requests["messages"] == 1
    assert "".join(c.delta or "" for c in chunks) == answer.text
    assert [c.text for c in chunks][-1] == answer.text
    assert len([c for c in chunks if c.delta]) > 3  # replayed piece by piece, not in one go
    assert chunks[-1].additional_kwargs["haikucache"]["cache"] == "hit"
    assert answer.additional_kwargs["haikucache"]["cache"] == "miss"


def test_a_streamed_miss_is_stored_and_carries_usage_at_the_end(
    llm: HaikuCache, emulator: Emulator
) -> None:
    chunks = list(llm.stream_chat(QUESTION))
    final = chunks[-1]
    assert final.delta == ""
    assert "".join(c.delta or "" for c in chunks) == final.message.content
    assert final.additional_kwargs["haikucache"]["cache"] == "miss"
    assert final.raw["usage"] == emulator.bill.entries[-1].usage
    assert llm.chat(QUESTION).additional_kwargs["haikucache"]["cache"] == "hit"
    assert emulator.requests["messages"] == 1


async def test_async_twins(llm: HaikuCache, emulator: Emulator) -> None:
    first = await llm.achat(QUESTION)
    streamed = [c async for c in await llm.astream_chat(QUESTION)]
    completion = await llm.acomplete("Say hello.")
    completion_chunks = [c async for c in await llm.astream_complete("Say hello.")]

    assert emulator.requests["messages"] == 2
    assert streamed[-1].message.content == first.message.content
    assert streamed[-1].additional_kwargs["haikucache"]["cache"] == "hit"
    assert completion_chunks[-1].text == completion.text
    assert completion_chunks[-1].additional_kwargs["haikucache"]["cache"] == "hit"


def test_per_call_options_reach_the_engine(llm: HaikuCache, emulator: Emulator) -> None:
    llm.chat(QUESTION, no_store=True)
    assert llm.chat(QUESTION).additional_kwargs["haikucache"]["cache"] == "miss"
    assert llm.chat(QUESTION, no_cache=True).additional_kwargs["haikucache"]["cache"] == "miss"
    assert (
        llm.chat(QUESTION, namespace="tenant-b").additional_kwargs["haikucache"]["cache"] == "miss"
    )
    assert llm.chat(QUESTION).additional_kwargs["haikucache"]["cache"] == "hit"
    assert emulator.requests["messages"] == 4


def test_api_fields_per_call_and_per_instance(
    make_llm: Callable[..., HaikuCache], emulator: Emulator
) -> None:
    llm = make_llm(temperature=0.2, additional_kwargs={"stop_sequences": ["\n\nQ:"]})
    llm.chat(QUESTION, metadata={"user_id": "u-1"})
    body = emulator.log[-1].body
    assert body["temperature"] == 0.2
    assert body["stop_sequences"] == ["\n\nQ:"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["max_tokens"] == 4096 and body["model"] == "claude-haiku-4-5"


# -------------------------------------------------------------------------- prompt structure


def test_system_messages_stay_separate_blocks_with_their_cache_points(
    make_llm: Callable[..., HaikuCache], emulator: Emulator
) -> None:
    llm = make_llm(planner="off")
    messages = [
        ChatMessage(
            role=MessageRole.SYSTEM,
            blocks=[
                TextBlock(text=LONG_POLICY),
                CachePoint(cache_control=CacheControl(type="ephemeral", ttl="1h")),
            ],
        ),
        ChatMessage(role=MessageRole.SYSTEM, content="Retrieved context: route 12 allows 2 bags."),
        ChatMessage(role=MessageRole.USER, content="How many bags on route 12?"),
    ]
    llm.chat(messages)
    llm.chat([*messages[:2], ChatMessage(role=MessageRole.USER, content="And on route 13?")])

    system = emulator.log[-1].body["system"]
    assert [b["text"] for b in system] == [
        LONG_POLICY,
        "Retrieved context: route 12 allows 2 bags.",
    ]
    assert system[0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "cache_control" not in system[1]
    # The marked policy was written by the first call and read by the second.
    first, second = emulator.bill.entries
    assert first.usage["cache_creation"]["ephemeral_1h_input_tokens"] > 4096
    assert (
        second.usage["cache_read_input_tokens"]
        == (first.usage["cache_creation"]["ephemeral_1h_input_tokens"])
    )


def test_the_llms_own_long_system_prompt_gets_a_breakpoint(
    make_llm: Callable[..., HaikuCache], emulator: Emulator
) -> None:
    prompt = PromptTemplate("Question: {q}")
    llm = make_llm(planner="off", system_prompt=LONG_POLICY)
    llm.predict(prompt, q="May I bring a dog?")
    llm.predict(prompt, q="May I bring a cat?")
    assert emulator.log[-1].body["system"][0] == {
        "type": "text",
        "text": LONG_POLICY,
        "cache_control": {"type": "ephemeral"},
    }
    assert emulator.bill.entries[-1].usage["cache_read_input_tokens"] > 4096

    short = make_llm(planner="off", system_prompt="Be brief.")
    short.predict(prompt, q="Hi")
    assert emulator.log[-1].body["system"] == [{"type": "text", "text": "Be brief."}]
    off = make_llm(planner="off", system_prompt=LONG_POLICY, cache_system_prompt=False)
    off.predict(prompt, q="A third question")
    assert "cache_control" not in emulator.log[-1].body["system"][0]


def test_images_and_documents_are_content_blocks(llm: HaikuCache, emulator: Emulator) -> None:
    png = tiny_png()
    llm.chat(
        [
            ChatMessage(
                role=MessageRole.USER,
                blocks=[
                    ImageBlock(image=png),
                    ImageBlock(url="https://example.com/cat.png"),
                    DocumentBlock(
                        data=b"Route 12 allows two bags.", document_mimetype="text/plain"
                    ),
                    TextBlock(text="Describe these."),
                ],
            )
        ]
    )
    content = emulator.log[-1].body["messages"][0]["content"]
    assert [b["type"] for b in content] == ["image", "image", "document", "text"]
    assert content[0]["source"]["media_type"] == "image/png"
    assert zlib.crc32(__import__("base64").b64decode(content[0]["source"]["data"])) == zlib.crc32(
        png
    )
    assert content[1]["source"] == {"type": "url", "url": "https://example.com/cat.png"}
    assert content[2]["source"] == {
        "type": "text",
        "media_type": "text/plain",
        "data": "Route 12 allows two bags.",
    }


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [ChatMessage(role=MessageRole.USER, blocks=[AudioBlock(audio=b"RIFF0000WAVE")])],
            "messages.0.blocks.0",
        ),
        (
            [ChatMessage(role=MessageRole.TOOL, content="42")],
            "messages.0.additional_kwargs.tool_call_id",
        ),
        (
            [ChatMessage(role=MessageRole.SYSTEM, blocks=[ImageBlock(image=tiny_png())])],
            "messages.0.blocks.0",
        ),
        (
            [
                ChatMessage(
                    role=MessageRole.USER,
                    blocks=[CachePoint(cache_control=CacheControl(type="ephemeral"))],
                )
            ],
            "messages.0.blocks.0",
        ),
    ],
)
def test_messages_the_api_cannot_take_fail_before_any_request(
    llm: HaikuCache, emulator: Emulator, messages: list[ChatMessage], param: str
) -> None:
    with pytest.raises(RequestValidationError) as caught:
        llm.chat(messages)
    assert caught.value.param == param
    assert emulator.requests["messages"] == 0


def test_bad_options_fail_at_construction(emulator: Emulator) -> None:
    common: dict[str, Any] = {"api_key": "k", "transport": emulator.transport()}
    with pytest.raises(ConfigurationError, match="64000"):
        HaikuCache(max_tokens=64_001, **common)
    with pytest.raises(ConfigurationError, match="temperature"):
        HaikuCache(temperature=1.5, **common)
    with pytest.raises(ConfigurationError, match="additional_kwargs"):
        HaikuCache(additional_kwargs={"messages": []}, **common)
    with pytest.raises(ConfigurationError, match="either engine= or store="):
        HaikuCache(engine=Engine(ledger=False), store="memory", **common)
    with pytest.raises(ConfigurationError, match="credentials"):
        HaikuCache(transport=emulator.transport())
    with pytest.raises(RequestValidationError, match="max_tokens"):
        HaikuCache(max_tokens=8, **common).chat(QUESTION, max_tokens=0)
    assert emulator.requests["messages"] == 0


def test_metadata_describes_haiku_4_5() -> None:
    llm = HaikuCache(api_key="sk-secret-123", max_tokens=64_000, engine=Engine(ledger=False))
    meta = llm.metadata
    assert meta.context_window == 200_000
    assert meta.num_output == 64_000  # the room LlamaIndex keeps for the answer
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == "claude-haiku-4-5"
    assert isinstance(llm, FunctionCallingLLM)
    assert HaikuCache(api_key="k", engine=Engine(ledger=False)).metadata.num_output == 4096
    # The credential never shows in what instrumentation emits about the model.
    assert "sk-secret-123" not in json.dumps(llm.to_payload(), default=str)
    assert "sk-secret-123" not in json.dumps(llm.to_dict(), default=str)


# -------------------------------------------------------------------------- tools


def test_predict_and_call_runs_the_tool_the_model_chose(
    llm: HaikuCache, emulator: Emulator
) -> None:
    tool = FunctionTool.from_defaults(fn=multiply)
    result = llm.predict_and_call([tool], "What is 6 times 7?")
    output = result.sources[0]
    assert output.tool_name == "multiply"
    assert output.raw_output == output.raw_input["kwargs"]["a"] * output.raw_input["kwargs"]["b"]
    body = emulator.log[-1].body
    assert body["tools"][0]["name"] == "multiply"
    assert body["tools"][0]["input_schema"]["required"] == ["a", "b"]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_chat_with_tools_and_reading_the_calls(llm: HaikuCache, emulator: Emulator) -> None:
    tools = [FunctionTool.from_defaults(fn=multiply), FunctionTool.from_defaults(fn=lookup_fare)]
    response = llm.chat_with_tools(
        tools, "Fare of route 7 in class B?", tool_required=True, allow_parallel_tool_calls=True
    )
    assert emulator.log[-1].body["tool_choice"] == {"type": "any"}
    calls = llm.get_tool_calls_from_response(response)
    assert len(calls) == 1 and calls[0].tool_name in ("multiply", "lookup_fare")
    assert calls[0].tool_id.startswith("toolu_")

    forced = llm.chat_with_tools(tools, "Fare of route 7?", tool_choice="lookup_fare")
    assert emulator.log[-1].body["tool_choice"]["name"] == "lookup_fare"
    assert llm.get_tool_calls_from_response(forced)[0].tool_name == "lookup_fare"

    none = llm.chat_with_tools(tools, "Just say hi.", tool_choice="none")
    assert llm.get_tool_calls_from_response(none, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(none)
    with pytest.raises(RequestValidationError, match="no tool named"):
        llm.chat_with_tools(tools, "x", tool_choice="book_flight")


def test_a_tool_round_trip_is_sent_back_as_tool_use_and_tool_result(
    llm: HaikuCache, emulator: Emulator
) -> None:
    tool = FunctionTool.from_defaults(fn=lookup_fare)
    first = llm.chat_with_tools([tool], "Fare of route 7 in class B?")
    call = llm.get_tool_calls_from_response(first)[0]
    history = [
        ChatMessage(role=MessageRole.USER, content="Fare of route 7 in class B?"),
        first.message,
        ChatMessage(
            role=MessageRole.TOOL,
            content=lookup_fare(**call.tool_kwargs),
            additional_kwargs={"tool_call_id": call.tool_id},
        ),
    ]
    answer = llm.chat_with_tools([tool], chat_history=history)
    messages = emulator.log[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    tool_use = next(b for b in messages[1]["content"] if b["type"] == "tool_use")
    assert tool_use == {
        "type": "tool_use",
        "id": call.tool_id,
        "name": "lookup_fare",
        "input": call.tool_kwargs,
    }
    assert messages[2]["content"][0]["type"] == "tool_result"
    assert messages[2]["content"][0]["tool_use_id"] == call.tool_id
    assert answer.raw["stop_reason"] == "end_turn"  # after a tool result, the model answers
    assert not [b for b in answer.message.blocks if isinstance(b, ToolCallBlock)]


class Flight(BaseModel):
    """A flight and its free seats."""

    number: str
    seats: int


def test_structured_predict_through_forced_tool_use(llm: HaikuCache, emulator: Emulator) -> None:
    flight = llm.structured_predict(
        Flight, PromptTemplate("Extract the flight from: {text}"), text="EA 12 has 40 seats"
    )
    assert isinstance(flight, Flight)
    body = emulator.log[-1].body
    assert body["tools"][0]["name"] == "Flight"
    assert body["tool_choice"]["type"] == "any"
    again = llm.structured_predict(
        Flight, PromptTemplate("Extract the flight from: {text}"), text="EA 12 has 40 seats"
    )
    assert again == flight
    assert emulator.requests["messages"] == 1


# -------------------------------------------------------------------------- instrumentation


def test_instrumentation_events_carry_usage_and_cache_status(
    llm: HaikuCache, event_log: Any
) -> None:
    llm.chat(QUESTION)
    llm.chat(QUESTION)
    list(llm.stream_chat(QUESTION))
    llm.complete("Say hello.")

    ends = event_log.of("LLMChatEndEvent")
    assert [e.response.additional_kwargs["haikucache"]["cache"] for e in ends] == [
        "miss",
        "hit",
        "hit",
    ]
    assert ends[0].response.raw["usage"]["output_tokens"] > 0
    assert len(event_log.of("LLMChatStartEvent")) == 3
    assert len(event_log.of("LLMChatInProgressEvent")) > 3  # one per streamed chunk
    (completion_end,) = event_log.of("LLMCompletionEndEvent")
    assert completion_end.response.additional_kwargs["haikucache"]["cache"] == "miss"
    # complete() fires completion events only, not a nested chat pair.
    assert len(event_log.of("LLMChatStartEvent")) == 3
    starts = event_log.of("LLMChatStartEvent")
    assert starts[0].model_dict["class_name"] == "HaikuCache_LLM"


def test_instrumentation_spans_name_the_methods(llm: HaikuCache) -> None:
    spans = SimpleSpanHandler()
    dispatcher = get_dispatcher()
    dispatcher.add_span_handler(spans)
    try:
        llm.chat(QUESTION)
        llm.complete("Say hello.")
    finally:
        dispatcher.span_handlers.remove(spans)
    names = [span.id_.split("-")[0] for span in spans.completed_spans]
    assert names == ["HaikuCache.chat", "HaikuCache.complete"]


def test_token_counting_handler_reads_the_usage(make_llm: Callable[..., HaikuCache]) -> None:
    counter = TokenCountingHandler()
    llm = make_llm(callback_manager=CallbackManager([counter]))
    response = llm.chat(QUESTION)
    assert counter.completion_llm_token_count == response.raw["usage"]["output_tokens"]
    assert counter.prompt_llm_token_count == response.raw["usage"]["input_tokens"]


def test_settings_llm_is_used_by_llama_index(
    llm: HaikuCache, settings: Any, emulator: Emulator
) -> None:
    Settings.llm = llm
    assert Settings.llm is llm
    assert Settings.llm.predict(PromptTemplate("Say {word}."), word="hello")
    assert emulator.requests["messages"] == 1


def test_thinking_blocks_stream_and_round_trip_with_their_signature(
    make_llm: Callable[..., HaikuCache], emulator: Emulator
) -> None:
    llm = make_llm(
        max_tokens=4096, additional_kwargs={"thinking": {"type": "enabled", "budget_tokens": 1024}}
    )
    question = ChatMessage(role=MessageRole.USER, content="Plan a trip to Oslo.")
    chunks = list(llm.stream_chat([question]))
    thinking_deltas = [c.additional_kwargs.get("thinking_delta") for c in chunks]
    assert any(thinking_deltas)
    answer = chunks[-1].message
    thinking = next(b for b in answer.blocks if isinstance(b, ThinkingBlock))
    assert thinking.content == "".join(d for d in thinking_deltas if d)
    assert thinking.additional_information["signature"]

    llm.chat([question, answer, ChatMessage(role=MessageRole.USER, content="And Lima?")])
    sent = emulator.log[-1].body["messages"][1]["content"][0]
    assert sent == {
        "type": "thinking",
        "thinking": thinking.content,
        "signature": thinking.additional_information["signature"],
    }


async def test_a_ready_client_is_used_and_gets_an_async_twin(emulator: Emulator) -> None:
    engine = Engine(ledger=MemoryLedger(), store=MemoryStore())
    client = Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    )
    llm = HaikuCache(client=client, async_transport=emulator.transport())
    assert llm.client is client and llm.engine is engine
    assert llm.async_client.engine is engine and llm.async_client.base_url == client.base_url
    first = llm.chat(QUESTION)
    second = await llm.achat(QUESTION)  # the async client shares the engine's store
    assert second.additional_kwargs["haikucache"]["cache"] == "hit"
    assert second.message.content == first.message.content
    with pytest.raises(ConfigurationError, match="already has an engine"):
        HaikuCache(client=client, engine=Engine(ledger=False))
