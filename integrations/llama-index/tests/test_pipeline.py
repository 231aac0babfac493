"""A real LlamaIndex pipeline on ``Settings.llm = HaikuCache(...)``, against the emulator.

A ``VectorStoreIndex`` over 300 generated route documents (local hashed embedding), a query
engine, a chat engine with memory, a ``FunctionAgent`` with a tool, and streaming: repeated
questions are answered by the response cache, and the long system prompt and the retrieved
context carry breakpoints, so later turns read the cached prefix instead of paying for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.tools import FunctionTool

from haikucache.testing import Emulator
from llama_index.llms.haikucache import HaikuCache

from .conftest import HashedBagOfWords

CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Accra", "Lima", "Riga", "Seoul", "Tunis"]
# ~6,500 tokens: above Haiku 4.5's minimum cacheable prefix of 4,096.
POLICY = "You are the fare assistant of Example Air. " + " ".join(
    f"Policy rule {k}: passengers on fare class {chr(65 + k % 6)} must present document {k} "
    f"at counter {k % 9} before departure."
    for k in range(260)
)


def route_document(i: int) -> Document:
    city = CITIES[i % len(CITIES)]
    sentences = [f"Route {i} connects {city} with hub {i % 7}."]
    sentences += [
        f"Fare class {chr(65 + j % 6)} on route {i} allows {j % 4 + 1} checked bags and "
        f"changes for {10 + (i * j) % 90} dollars to {city}."
        for j in range(30)
    ]
    return Document(text=" ".join(sentences), doc_id=f"route-{i}")


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    documents = [route_document(i) for i in range(300)]
    return VectorStoreIndex.from_documents(documents, embed_model=HashedBagOfWords())


@pytest.fixture
def rag_llm(make_llm: Callable[..., HaikuCache], settings: Any) -> HaikuCache:
    llm = make_llm(system_prompt=POLICY)
    Settings.llm = llm
    return llm


def test_the_index_holds_a_few_hundred_documents(index: VectorStoreIndex) -> None:
    assert len(index.docstore.docs) >= 300
    hits = index.as_retriever(similarity_top_k=3).retrieve("route 41 Lisbon fare class C")
    assert any("Route 41 " in h.node.get_content() for h in hits)


def test_a_repeated_query_is_answered_by_the_response_cache(
    index: VectorStoreIndex, rag_llm: HaikuCache, emulator: Emulator
) -> None:
    engine = index.as_query_engine(similarity_top_k=3)  # the LLM comes from Settings
    first = engine.query("Which bags does route 12 allow to Riga?")
    assert emulator.requests["messages"] == 1
    second = engine.query("Which bags does route 12 allow to Riga?")
    assert emulator.requests["messages"] == 1
    assert str(second) == str(first)
    other = engine.query("What does a change cost on route 77?")
    assert emulator.requests["messages"] == 2
    assert str(other) != str(first)
    # The policy prefix written by the first query was read by the other question.
    assert emulator.bill.entries[-1].usage["cache_read_input_tokens"] > 4096


def test_chat_engine_turns_read_the_cached_prefix(
    index: VectorStoreIndex, rag_llm: HaikuCache, emulator: Emulator
) -> None:
    chat = index.as_chat_engine(
        chat_mode="context",
        similarity_top_k=8,
        memory=ChatMemoryBuffer.from_defaults(token_limit=50_000),
    )
    questions = [
        "What fares does route 41 to Lisbon have?",
        "And how many bags on route 41 in fare class C?",
        "What does a change cost on route 41?",
    ]
    answers = [str(chat.chat(q)) for q in questions]

    assert emulator.requests["messages"] == 3
    system = emulator.log[0].body["system"]
    # Policy, then the retrieved context (a separate system block): both end in breakpoints.
    assert system[0]["text"] == POLICY and system[0]["cache_control"]["type"] == "ephemeral"
    assert "Route 41 " in system[1]["text"] and len(system[1]["text"]) > 10_000
    # Where the context ends is the planner's call (it learns whether that prefix recurs).
    assert any("cache_control" in record.body["system"][1] for record in emulator.log)
    # Memory: each turn carries the earlier questions and answers.
    last_messages = emulator.log[-1].body["messages"]
    assert [m["role"] for m in last_messages] == ["user", "assistant"] * 2 + ["user"]
    assert last_messages[1]["content"][0]["text"] == answers[0]
    # The bill: the first turn writes, later turns read at least the policy.
    bill = emulator.bill.entries
    assert bill[0].usage["cache_read_input_tokens"] == 0
    assert bill[0].usage["cache_creation_input_tokens"] > 4096
    for entry in bill[1:]:
        assert (
            entry.usage["cache_read_input_tokens"]
            >= bill[0].usage["cache_creation_input_tokens"] // 3
        )
    # The ledger agrees with the emulator's bill, and the conversation cost less than it
    # would have without breakpoints, cache writes included.
    assert rag_llm.ledger is not None
    entries = rag_llm.ledger.entries
    billed = sum(e.cost.billed_usd for e in entries)
    assert billed == pytest.approx(sum(e.usd for e in bill), rel=1e-9)
    assert billed < 0.9 * sum(e.cost.baseline_usd for e in entries)
    assert sum(e.cost.savings["prompt_cache_read"] for e in entries) > 0


def test_a_cached_answer_streams_back(
    index: VectorStoreIndex, rag_llm: HaikuCache, emulator: Emulator
) -> None:
    question = "Which hub does route 8 use?"
    answer = str(index.as_query_engine(similarity_top_k=3).query(question))
    streaming = index.as_query_engine(similarity_top_k=3, streaming=True).query(question)
    tokens = list(streaming.response_gen)

    assert emulator.requests["messages"] == 1
    assert "".join(tokens) == answer
    assert len([t for t in tokens if t]) > 3


# llama-index-workflows walks the agent with inspect.getmembers, which touches pydantic's
# deprecated attributes (``__fields__`` …): third-party warnings, not ours.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
async def test_function_agent_calls_a_tool_and_a_rerun_is_cached(
    make_llm: Callable[..., HaikuCache], emulator: Emulator
) -> None:
    calls: list[dict[str, Any]] = []

    def lookup_fare(route: int, fare_class: str) -> str:
        """Look up the fare of a route in a fare class."""
        calls.append({"route": route, "fare_class": fare_class})
        return f"Route {route}, class {fare_class}: 120 dollars."

    llm = make_llm()
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=lookup_fare)],
        llm=llm,
        system_prompt="You look fares up with your tool before answering.",
    )

    async def run() -> tuple[str, list[Any]]:
        handler = agent.run(user_msg="What is the fare of route 7 in class B?")
        events = [event async for event in handler.stream_events()]
        result = await handler
        return str(result), events

    text, events = await run()
    assert len(calls) == 1
    tool_results = [e for e in events if isinstance(e, ToolCallResult)]
    assert tool_results and tool_results[0].tool_name == "lookup_fare"
    assert emulator.requests["messages"] == 2  # the tool call, then the answer
    second_turn = emulator.log[-1].body["messages"]
    assert second_turn[-1]["content"][0]["type"] == "tool_result"
    assert text and text == next(
        e.response.content for e in reversed(events) if isinstance(e, AgentOutput)
    )

    again, _ = await run()
    assert again == text
    assert emulator.requests["messages"] == 2  # both steps answered locally (streamed replays)
    assert len(calls) == 2  # the tool itself still ran
