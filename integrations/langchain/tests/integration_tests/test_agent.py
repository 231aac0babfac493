"""A LangChain v1 agent with tools, on the loopback emulator, through haikucache.

Shows what the package is for: on every model call after the first, the agent's long
system prompt, tools and conversation so far are read from Anthropic's prompt cache (the
emulator's bill says so), the ledger accounts the saving, and ``AnthropicPromptCachingMiddleware``
can be used at the same time without ever sending more than 4 ``cache_control`` markers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from langchain.agents import create_agent
from langchain_anthropic import ChatAnthropic
from langchain_anthropic.middleware import AnthropicPromptCachingMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool

from haikucache import Engine, MemoryLedger, MemoryStore
from haikucache.testing import Emulator, EmulatorServer
from langchain_haikucache import wrap
from langchain_haikucache.chat_models import aclose_shared_transports

MODEL = "claude-haiku-4-5"
SYSTEM = "You are a travel assistant. " + " ".join(
    f"Guideline {i}: check the weather before recommending an outdoor activity." for i in range(600)
)
QUESTIONS = [
    "What's the weather in Paris?",
    "And in Rome?",
    "Which of the two is better for a picnic?",
    "Thanks! What about Oslo?",
]

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings(
        "ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is not "
        "an async function:pytest.PytestWarning"
    ),
]


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny and 21 degrees in {city}."


@pytest.fixture
def emu() -> Emulator:
    return Emulator()


@pytest.fixture
def server(emu: Emulator) -> Iterator[EmulatorServer]:
    server = emu.start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module", autouse=True)
async def _close_pools() -> AsyncIterator[None]:
    yield
    await aclose_shared_transports()


def _chat(server: EmulatorServer) -> ChatAnthropic:
    return ChatAnthropic(model=MODEL, api_key="test-key", base_url=server.base_url, max_tokens=512)


def _converse(agent: Any) -> list[BaseMessage]:
    """Four user turns, each a tool loop, carrying the conversation forward."""
    messages: list[BaseMessage] = []
    for question in QUESTIONS:
        messages = agent.invoke(
            {"messages": [*messages, HumanMessage(question)]}, {"recursion_limit": 10}
        )["messages"]
    return messages


def _model_calls(emu: Emulator) -> list[dict[str, Any]]:
    return [e.usage for e in emu.bill.entries if e.path == "/v1/messages"]


def test_agent_reads_the_prompt_cache_on_every_turn_after_the_first(
    emu: Emulator, server: EmulatorServer
) -> None:
    ledger = MemoryLedger()
    model = wrap(_chat(server), engine=Engine(ledger=ledger))
    messages = _converse(create_agent(model, tools=[get_weather], system_prompt=SYSTEM))

    calls = _model_calls(emu)
    assert len(calls) >= len(QUESTIONS) + 1  # at least one tool round trip
    assert calls[0]["cache_read_input_tokens"] == 0
    assert calls[0]["cache_creation_input_tokens"] > 4000  # system + tools written once
    for usage in calls[1:]:
        # Every later call reads at least the system prompt and tools from the cache.
        assert usage["cache_read_input_tokens"] > 4000, usage
    # The conversation grows, and so does the cached prefix: history is cached too.
    assert calls[-1]["cache_read_input_tokens"] > calls[1]["cache_read_input_tokens"]

    replies = [m for m in messages if isinstance(m, AIMessage)]
    assert all(m.response_metadata["haikucache"]["cache"] == "miss" for m in replies)
    assert replies[-1].usage_metadata["input_token_details"]["cache_read"] > 4000  # type: ignore[index]
    (totals,) = ledger.totals()
    assert totals.calls == len(calls)
    assert totals.cache_read_tokens == sum(u["cache_read_input_tokens"] for u in calls)
    assert totals.savings["prompt_cache_read"] > 0
    assert totals.billed_usd < 0.6 * totals.baseline_usd
    # What the emulator billed is what the ledger says was billed.
    assert totals.billed_usd == pytest.approx(emu.bill.total_usd, rel=1e-9)


def test_plain_agent_baseline_reads_nothing(emu: Emulator, server: EmulatorServer) -> None:
    _converse(create_agent(_chat(server), tools=[get_weather], system_prompt=SYSTEM))
    calls = _model_calls(emu)
    assert len(calls) > len(QUESTIONS)
    assert all(u["cache_read_input_tokens"] == 0 for u in calls)


def test_with_prompt_caching_middleware_never_more_than_four_markers(
    emu: Emulator, server: EmulatorServer
) -> None:
    model = wrap(_chat(server), engine=Engine(store=MemoryStore(), ledger=MemoryLedger()))
    agent = create_agent(
        model,
        tools=[get_weather],
        system_prompt=SYSTEM,
        middleware=[AnthropicPromptCachingMiddleware(ttl="5m")],
    )
    messages: list[BaseMessage] = []
    for i, question in enumerate(QUESTIONS):
        # The caller marks its first turn too (it stays in the history): with the
        # middleware's three (top level, system, last tool) that is the limit of four.
        turn = (
            HumanMessage(
                content=[{"type": "text", "text": question, "cache_control": {"type": "ephemeral"}}]
            )
            if i == 0
            else HumanMessage(question)
        )
        messages = agent.invoke({"messages": [*messages, turn]}, {"recursion_limit": 10})[
            "messages"
        ]
    bodies = [r.body for r in emu.log if r.path == "/v1/messages"]
    assert len(bodies) > len(QUESTIONS)
    for body in bodies:
        assert body["cache_control"] == {"type": "ephemeral", "ttl": "5m"}  # the middleware's
        assert body["tools"][-1]["cache_control"]["type"] == "ephemeral"
        assert json.dumps(body).count('"cache_control"') == 4  # all kept, none added
    calls = _model_calls(emu)
    assert all(u["cache_read_input_tokens"] > 0 for u in calls[1:])


async def test_async_agent(emu: Emulator, server: EmulatorServer) -> None:
    ledger = MemoryLedger()
    model = wrap(_chat(server), engine=Engine(ledger=ledger))
    agent = create_agent(model, tools=[get_weather], system_prompt=SYSTEM)
    result = await agent.ainvoke(
        {"messages": [HumanMessage(QUESTIONS[0])]}, {"recursion_limit": 10}
    )
    assert any(getattr(m, "tool_calls", None) for m in result["messages"])
    calls = _model_calls(emu)
    assert len(calls) >= 2 and calls[1]["cache_read_input_tokens"] > 4000
    assert ledger.totals()[0].savings["prompt_cache_read"] > 0


def test_middleware_alone_and_the_planner_share_the_budget(
    emu: Emulator, server: EmulatorServer
) -> None:
    model = wrap(_chat(server), engine=Engine(ledger=MemoryLedger()))
    agent = create_agent(
        model,
        tools=[get_weather],
        system_prompt=SYSTEM,
        middleware=[AnthropicPromptCachingMiddleware()],
    )
    _converse(agent)
    bodies = [r.body for r in emu.log if r.path == "/v1/messages"]
    counts = [json.dumps(body).count('"cache_control"') for body in bodies]
    assert all(3 <= count <= 4 for count in counts), counts  # the middleware's 3, at most 1 more
    calls = _model_calls(emu)
    assert all(u["cache_read_input_tokens"] > 4000 for u in calls[1:])
