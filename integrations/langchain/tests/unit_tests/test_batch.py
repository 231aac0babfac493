"""batch()/abatch() through Message Batches (use_batches=True), on the emulator.

The batcher is haikucache's own (response-cache lookups, dedup, a journal, polling); the
emulator runs the batch lifecycle and bills batch results at 50 %.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from haikucache import Client, Engine, MemoryLedger, MemoryStore, RequestValidationError
from haikucache._batcher import Batcher
from haikucache.testing import Emulator
from langchain_haikucache import wrap

MODEL = "claude-haiku-4-5"


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
    return Emulator(batch_processing_seconds=0.0)


@pytest.fixture
def engine() -> Engine:
    return Engine(store=MemoryStore(strict=True), ledger=MemoryLedger())


@pytest.fixture
def batcher(emu: Emulator, engine: Engine) -> Iterator[Batcher]:
    client = Client(api_key="test-key", transport=emu.transport(), engine=engine)
    with Batcher(client, journal="memory", max_wait=60.0, poll_interval=0.01) as batcher:
        yield batcher


@pytest.fixture
def model(emu: Emulator, engine: Engine, batcher: Batcher) -> ChatAnthropic:
    plain = ChatAnthropic(model=MODEL, api_key="test-key", base_url="http://emulator.local")
    return wrap(plain, engine=engine, batcher=batcher, upstream_transport=emu.httpx2_transport())


def test_batch_goes_through_message_batches_in_input_order(
    model: ChatAnthropic, emu: Emulator
) -> None:
    questions = [f"Question number {i}" for i in range(5)]
    replies = model.batch(questions)
    assert emu.requests["batches.create"] == 1
    assert emu.requests["messages"] == 0
    assert all(isinstance(r, AIMessage) for r in replies)
    for reply in replies:
        info = reply.response_metadata["haikucache"]
        assert info["batch"] is True and info["savings"]["batch_discount"] > 0
        assert reply.usage_metadata["output_tokens"] > 0  # type: ignore[index]
    # Input order: each answer is the one realtime gives for the same question.
    realtime = [model.invoke(q, haikucache={"no_cache": True}) for q in questions]
    assert [r.content for r in replies] == [r.content for r in realtime]
    # Answers were stored: the same batch again costs nothing and sends nothing.
    again = model.batch(questions)
    assert emu.requests["batches.create"] == 1
    assert [r.response_metadata["haikucache"]["cache"] for r in again] == ["hit"] * 5


def test_batch_keeps_bound_tools_and_structured_output(model: ChatAnthropic, emu: Emulator) -> None:
    calls = model.bind_tools([get_weather], tool_choice="any").batch(["Paris?", "Rome?"])
    assert all(c.tool_calls and c.tool_calls[0]["name"] == "get_weather" for c in calls)
    people = model.with_structured_output(Person).batch(["Alice is 30", "Bob is 40"])
    assert all(isinstance(p, Person) for p in people)
    assert emu.requests["batches.create"] == 2 and emu.requests["messages"] == 0


def test_batch_return_exceptions(model: ChatAnthropic, emu: Emulator) -> None:
    with pytest.raises(RequestValidationError):
        model.batch(["Fine", "Also fine"], max_tokens=0)
    results = model.batch(["Fine", 123, "Also fine"], return_exceptions=True)  # type: ignore[list-item]
    assert isinstance(results[0], AIMessage) and isinstance(results[2], AIMessage)
    assert isinstance(results[1], Exception)
    assert emu.requests["messages"] == 0


async def test_abatch(model: ChatAnthropic, emu: Emulator) -> None:
    replies = await model.abatch(["One", "Two", "Three"])
    assert [r.response_metadata["haikucache"]["batch"] for r in replies] == [True] * 3
    assert emu.requests["batches.create"] == 1


def test_batch_is_opt_in(emu: Emulator, engine: Engine) -> None:
    plain = ChatAnthropic(model=MODEL, api_key="test-key", base_url="http://emulator.local")
    model = wrap(plain, engine=engine, upstream_transport=emu.httpx2_transport())
    replies = model.batch(["One", "Two"])
    assert emu.requests["messages"] == 2 and emu.requests["batches.create"] == 0
    assert all(r.response_metadata["haikucache"]["batch"] is False for r in replies)
