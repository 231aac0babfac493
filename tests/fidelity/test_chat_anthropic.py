"""Fidelity: langchain_anthropic.ChatAnthropic talks to the emulator with only ``base_url`` set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool

from haikucache.testing import Emulator


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator()
    with emulator.serve() as base_url:
        yield emulator, base_url


def long_system(emulator: Emulator) -> str:
    words = ("Refunds go to the original form of payment within seven days. " * 700).strip()
    assert emulator.count_tokens_of(words) > 4096
    return words


def test_invoke_stream_and_cache_usage(served: tuple[Emulator, str]) -> None:
    emulator, base_url = served
    model = ChatAnthropic(
        model="claude-haiku-4-5",
        base_url=base_url,
        api_key="test-key",
        max_tokens=64,
        max_retries=0,
    )
    system = SystemMessage(
        content=[
            {"type": "text", "text": long_system(emulator), "cache_control": {"type": "ephemeral"}}
        ]
    )
    first = model.invoke([system, HumanMessage("What is the refund policy?")])
    second = model.invoke([system, HumanMessage("What is the refund policy?")])
    assert isinstance(first, AIMessage) and first.content
    assert first.usage_metadata is not None and second.usage_metadata is not None
    written = first.usage_metadata["input_token_details"]
    read = second.usage_metadata["input_token_details"]
    assert written.get("ephemeral_5m_input_tokens", written.get("cache_creation", 0)) > 4096
    assert read["cache_read"] > 4096
    assert second.usage_metadata["input_tokens"] == first.usage_metadata["input_tokens"]

    chunks = list(model.stream([system, HumanMessage("Summarise it.")]))
    assert len(chunks) > 1
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    # Usage reaches LangChain only through message_delta, so this proves the emulator puts the
    # cumulative input and cache fields there, as the real API does.
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["input_token_details"]["cache_read"] > 4096
    assert emulator.requests["messages"] == 3


def test_tool_calling(served: tuple[Emulator, str]) -> None:
    _, base_url = served

    @tool
    def get_weather(city: str, unit: str) -> str:
        """Get the weather for a city in celsius or fahrenheit."""
        return f"20 {unit} in {city}"

    model = ChatAnthropic(
        model="claude-haiku-4-5", base_url=base_url, api_key="test-key", max_tokens=128
    )
    reply = model.bind_tools([get_weather], tool_choice="any").invoke("Weather in Oslo?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert set(reply.tool_calls[0]["args"]) >= {"city", "unit"}
