"""ChatAnthropicHaikuCache and wrap(): ChatAnthropic's features, through haikucache's engine.

The upstream is haikucache's emulator, reached through its in-process httpx2 transport (the
standard suite in integration_tests/ covers the loopback HTTP server). What reaches the
emulator is read from its request log, so these tests see the real wire JSON.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core._api import LangChainBetaWarning
from langchain_core.load import dumpd, load
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from haikucache import (
    CallOptions,
    ConfigurationError,
    Engine,
    ManualClock,
    MemoryLedger,
    MemoryStore,
    RequestValidationError,
    UsageError,
)
from haikucache.testing import Emulator
from langchain_haikucache import ChatAnthropicHaikuCache, haikucache_class, wrap

MODEL = "claude-haiku-4-5"
LONG_SYSTEM = " ".join(f"Rule {i}: answer briefly and cite the policy section." for i in range(700))


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"Sunny in {city}"


class Person(BaseModel):
    """A person."""

    name: str
    age: int


@pytest.fixture
def emu() -> Emulator:
    return Emulator(clock=ManualClock())


@pytest.fixture
def engine() -> Engine:
    return Engine(store=MemoryStore(strict=True), ledger=MemoryLedger())


@pytest.fixture
def model(emu: Emulator, engine: Engine) -> ChatAnthropicHaikuCache:
    return ChatAnthropicHaikuCache(
        model=MODEL,
        api_key="test-key",
        base_url="http://emulator.local",
        max_tokens=256,
        engine=engine,
        upstream_transport=emu.httpx2_transport(),
    )


def _wire(emu: Emulator) -> list[dict[str, Any]]:
    return [r.body for r in emu.log if r.path == "/v1/messages"]


def _markers(body: Any) -> int:
    """cache_control markers in a request body, the top-level one included."""
    return json.dumps(body).count('"cache_control"')


def _joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


# --------------------------------------------------------------------------- response cache


def test_invoke_miss_then_hit_with_metadata(model: ChatAnthropicHaikuCache, emu: Emulator) -> None:
    first = model.invoke("Tell me about caching")
    second = model.invoke("Tell me about caching")
    assert emu.requests["messages"] == 1
    assert first.content == second.content
    info1, info2 = first.response_metadata["haikucache"], second.response_metadata["haikucache"]
    assert info1["cache"] == "miss" and info1["cost_usd"] > 0
    assert info2["cache"] == "hit" and info2["cost_usd"] == 0
    assert info2["saved_usd"] == pytest.approx(info1["cost_usd"])
    assert info1["key"] == info2["key"]
    # ChatAnthropic's own metadata is intact, and the replay keeps the original usage.
    assert second.response_metadata["model_name"] == MODEL
    assert second.usage_metadata == first.usage_metadata


def test_stream_replays_a_stored_answer_as_sse(
    model: ChatAnthropicHaikuCache, emu: Emulator
) -> None:
    answer = model.invoke("Stream this back")
    chunks = list(model.stream("Stream this back"))
    assert emu.requests["messages"] == 1
    # A real event stream (message_start, text deltas of up to 512 characters, message_delta),
    # not one blob.
    text_chunks = [c for c in chunks if c.content]
    assert len(chunks) >= 3 and len(text_chunks) >= len(answer.content) // 512
    full = _joined(chunks)
    assert full.content == answer.content
    assert full.usage_metadata is not None
    assert full.usage_metadata["input_tokens"] == answer.usage_metadata["input_tokens"]  # type: ignore[index]
    assert full.usage_metadata["output_tokens"] == answer.usage_metadata["output_tokens"]  # type: ignore[index]
    assert full.response_metadata["haikucache"]["cache"] == "hit"
    assert full.response_metadata["stop_reason"] == "end_turn"


def test_streamed_miss_is_stored_and_accounted(
    model: ChatAnthropicHaikuCache, emu: Emulator, engine: Engine
) -> None:
    streamed = _joined(list(model.stream("A streamed question")))
    assert streamed.response_metadata["haikucache"]["cache"] == "miss"
    assert streamed.response_metadata["haikucache"]["cost_usd"] > 0
    again = model.invoke("A streamed question")
    assert emu.requests["messages"] == 1
    assert again.response_metadata["haikucache"]["cache"] == "hit"
    assert again.content == streamed.content
    totals = engine.ledger.totals()  # type: ignore[union-attr]
    assert sum(t.calls for t in totals) == 2
    assert sum(t.response_cache_hits for t in totals) == 1


async def test_async_invoke_and_stream(model: ChatAnthropicHaikuCache, emu: Emulator) -> None:
    first = await model.ainvoke("Async question")
    second = await model.ainvoke("Async question")
    chunks = [c async for c in model.astream("Async question")]
    assert emu.requests["messages"] == 1
    assert first.response_metadata["haikucache"]["cache"] == "miss"
    assert second.response_metadata["haikucache"]["cache"] == "hit"
    full = _joined(chunks)
    assert full.content == first.content
    assert full.response_metadata["haikucache"]["cache"] == "hit"
    streamed = _joined([c async for c in model.astream("Async streamed miss")])
    assert streamed.response_metadata["haikucache"]["cache"] == "miss"
    assert (await model.ainvoke("Async streamed miss")).content == streamed.content
    assert emu.requests["messages"] == 2


def test_per_call_options(model: ChatAnthropicHaikuCache, emu: Emulator) -> None:
    model.invoke("Options")
    fresh = model.invoke("Options", haikucache={"no_cache": True})
    assert fresh.response_metadata["haikucache"]["cache"] == "miss"
    other = model.invoke("Options", haikucache=CallOptions(namespace="tenant-b"))
    assert other.response_metadata["haikucache"]["namespace"] == "tenant-b"
    assert other.response_metadata["haikucache"]["cache"] == "miss"
    assert emu.requests["messages"] == 3
    with pytest.raises(ConfigurationError, match="unknown haikucache option"):
        model.invoke("Options", haikucache={"nocache": True})


def test_no_store_model_keeps_nothing(emu: Emulator) -> None:
    model = ChatAnthropicHaikuCache(
        model=MODEL,
        api_key="k",
        base_url="http://emulator.local",
        engine=Engine(ledger=MemoryLedger()),  # no response store: breakpoints + ledger only
        upstream_transport=emu.httpx2_transport(),
    )
    model.invoke("Hi")
    reply = model.invoke("Hi")
    assert emu.requests["messages"] == 2
    assert reply.response_metadata["haikucache"]["cache"] == "miss"


# --------------------------------------------------------------------------- ChatAnthropic features


def test_bind_tools_and_tool_calls(model: ChatAnthropicHaikuCache, emu: Emulator) -> None:
    bound = model.bind_tools([get_weather], tool_choice="any")
    reply = bound.invoke("What is the weather in Paris?")
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert isinstance(reply.tool_calls[0]["args"]["city"], str)
    assert reply.response_metadata["haikucache"]["cache"] == "miss"
    sent = _wire(emu)[-1]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "any"}
    streamed = _joined(list(bound.stream("What is the weather in Paris?")))
    assert streamed.tool_calls == reply.tool_calls  # replayed input_json_delta events
    assert streamed.response_metadata["haikucache"]["cache"] == "hit"


def test_structured_output_function_calling(model: ChatAnthropicHaikuCache) -> None:
    person = model.with_structured_output(Person).invoke("Alice is 30 years old")
    assert isinstance(person, Person)
    raw = model.with_structured_output(Person, include_raw=True).invoke("Alice is 30 years old")
    assert raw["parsed"] == person  # type: ignore[index]
    assert raw["raw"].response_metadata["haikucache"]["cache"] == "hit"  # type: ignore[index]


def test_structured_output_json_schema_reaches_the_wire(
    model: ChatAnthropicHaikuCache, emu: Emulator
) -> None:
    structured = model.with_structured_output(Person, method="json_schema", include_raw=True)
    result = structured.invoke("Alice is 30 years old")
    sent = _wire(emu)[-1]
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["output_config"]["format"]["schema"]["required"] == ["name", "age"]
    assert "tools" not in sent  # not degraded to forced tool calling
    assert result["raw"].response_metadata["haikucache"]["cache"] == "miss"  # type: ignore[index]


def test_usage_metadata_reports_prompt_cache_reads(
    model: ChatAnthropicHaikuCache, emu: Emulator
) -> None:
    system = SystemMessage(content=LONG_SYSTEM)
    first = model.invoke([system, HumanMessage("Question one")])
    second = model.invoke([system, HumanMessage("Question two")])
    # The planner put a breakpoint on the long system prompt: written once, then read.
    assert _markers(_wire(emu)[0]) >= 1
    details1 = first.usage_metadata["input_token_details"]  # type: ignore[index]
    details2 = second.usage_metadata["input_token_details"]  # type: ignore[index]
    assert details1.get("cache_read", 0) == 0
    written = sum(
        details1.get(kind, 0)
        for kind in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens", "cache_creation")
    )
    assert written > 4000  # the prefix was written (at the TTL the planner chose)
    assert details2["cache_read"] > 4000
    info = second.response_metadata["haikucache"]
    assert info["savings"]["prompt_cache_read"] > 0
    assert info["cost_usd"] < info["baseline_usd"]


def test_plain_chat_anthropic_gets_no_cache_reads(emu: Emulator) -> None:
    """The baseline: the same calls without haikucache place no breakpoint."""
    plain = ChatAnthropic(
        model=MODEL,
        api_key="k",
        base_url="http://emulator.local",
        max_tokens=256,
    )
    plain.__dict__["_client"] = anthropic.Client(
        api_key="k",
        base_url="http://emulator.local",
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
    )
    system = SystemMessage(content=LONG_SYSTEM)
    plain.invoke([system, HumanMessage("Question one")])
    second = plain.invoke([system, HumanMessage("Question two")])
    assert second.usage_metadata["input_token_details"]["cache_read"] == 0  # type: ignore[index]
    assert all(_markers(body) == 0 for body in _wire(emu))


def test_top_level_cache_control_and_markers_stay_within_four(
    model: ChatAnthropicHaikuCache, emu: Emulator
) -> None:
    system = SystemMessage(
        content=[
            {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}},
        ]
    )
    human = HumanMessage(
        content=[{"type": "text", "text": "Hi there", "cache_control": {"type": "ephemeral"}}]
    )
    model.bind_tools([get_weather]).invoke([system, human], cache_control={"type": "ephemeral"})
    sent = _wire(emu)[-1]
    assert sent["cache_control"] == {"type": "ephemeral"}  # top-level automatic caching kept
    assert _markers(sent) == 4  # the caller's four, and nothing added

    five = HumanMessage(
        content=[
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
        ]
    )
    before = emu.requests["messages"]
    with pytest.raises(RequestValidationError, match="maximum of 4"):
        model.invoke([system, five], cache_control={"type": "ephemeral"})
    assert emu.requests["messages"] == before  # refused locally: nothing sent, nothing spent


def test_bad_request_is_refused_before_sending(
    model: ChatAnthropicHaikuCache, emu: Emulator
) -> None:
    with pytest.raises(RequestValidationError) as caught:
        model.invoke([HumanMessage("x")], max_tokens=0)
    assert isinstance(caught.value.__cause__, anthropic.BadRequestError)
    assert emu.requests["messages"] == 0


def test_upstream_errors_keep_the_sdks_retries(
    model: ChatAnthropicHaikuCache, emu: Emulator
) -> None:
    emu.inject("overloaded", times=1)
    reply = model.invoke("Retry me")
    assert reply.response_metadata["haikucache"]["cache"] == "miss"
    assert emu.requests["messages"] == 2  # the 529, then the retry
    emu.inject("status", status=401, times=1)
    with pytest.raises(anthropic.AuthenticationError):
        model.invoke("Unauthorized now", haikucache={"no_cache": True})


def test_count_tokens_passes_through(model: ChatAnthropicHaikuCache, emu: Emulator) -> None:
    assert model.get_num_tokens_from_messages([HumanMessage("How many tokens?")]) > 0
    assert emu.requests["count_tokens"] == 1


# --------------------------------------------------------------------------- wrap


def test_wrap_keeps_settings_and_class(emu: Emulator, engine: Engine) -> None:
    plain = ChatAnthropic(
        model=MODEL,
        api_key="k",
        base_url="http://emulator.local",
        max_tokens=77,
        temperature=None,
        stop_sequences=["END"],
    )
    wrapped = wrap(plain, engine=engine, upstream_transport=emu.httpx2_transport())
    assert isinstance(wrapped, ChatAnthropic)
    assert isinstance(wrapped, ChatAnthropicHaikuCache)
    assert (wrapped.max_tokens, wrapped.stop_sequences, wrapped.model) == (77, ["END"], MODEL)
    assert wrapped._llm_type == plain._llm_type == "anthropic-chat"
    wrapped.invoke("Hello")
    assert _wire(emu)[-1]["max_tokens"] == 77
    with pytest.raises(UsageError, match="already wrapped"):
        wrap(wrapped)
    with pytest.raises(ConfigurationError, match="before bind_tools"):
        wrap(plain.bind_tools([get_weather]))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="either engine= or store="):
        wrap(plain, engine=engine, store="memory")


def test_wrap_with_store_and_options(emu: Emulator) -> None:
    plain = ChatAnthropic(model=MODEL, api_key="k", base_url="http://emulator.local")
    wrapped = wrap(
        plain,
        store=MemoryStore(),
        upstream_transport=emu.httpx2_transport(),
        namespace="team-a",
        tags=["docs"],
    )
    wrapped.invoke("Tagged")
    hit = wrapped.invoke("Tagged")
    assert hit.response_metadata["haikucache"]["namespace"] == "team-a"
    assert hit.response_metadata["haikucache"]["cache"] == "hit"
    store = wrapped.haikucache_engine.store  # type: ignore[attr-defined]
    assert store.invalidate(tag="docs") == 1
    assert wrapped.invoke("Tagged").response_metadata["haikucache"]["cache"] == "miss"


def test_wrap_a_chat_anthropic_subclass(emu: Emulator, engine: Engine) -> None:
    class MyChat(ChatAnthropic):
        def shout(self) -> str:
            return self.model.upper()

    wrapped = wrap(
        MyChat(model=MODEL, api_key="k", base_url="http://emulator.local"),
        engine=engine,
        upstream_transport=emu.httpx2_transport(),
    )
    assert isinstance(wrapped, MyChat) and wrapped.shout() == MODEL.upper()
    assert haikucache_class(MyChat) is type(wrapped)
    assert wrapped.invoke("Sub").response_metadata["haikucache"]["cache"] == "miss"


def test_serialization_round_trip() -> None:
    model = ChatAnthropicHaikuCache(model=MODEL, api_key="k", max_tokens=50)
    data = dumpd(model)
    assert data["id"] == ["langchain_haikucache", "chat_models", "ChatAnthropicHaikuCache"]
    assert "engine" not in data["kwargs"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainBetaWarning)
        revived = load(
            data,
            valid_namespaces=["langchain_haikucache"],
            allowed_objects=[ChatAnthropicHaikuCache],
            secrets_map={"ANTHROPIC_API_KEY": "k"},
        )
    assert isinstance(revived, ChatAnthropicHaikuCache)
    assert revived.max_tokens == 50 and revived.model == MODEL
