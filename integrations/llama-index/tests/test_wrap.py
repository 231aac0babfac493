"""``wrap(llm)``: haikucache's response cache in front of another provider's LlamaIndex LLM.

``MockLLM`` and ``MockFunctionCallingLLM`` are real LlamaIndex LLM classes; they stand for
"another provider" here. How often the wrapped LLM really ran is read from LlamaIndex's own
instrumentation events, which carry the emitting model's class name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import MockFunctionCallingLLM, MockLLM
from llama_index.core.tools import FunctionTool

from haikucache import ConfigurationError, DiskStore, Engine, ManualClock, MemoryStore
from llama_index.llms.haikucache import (
    CachedFunctionCallingLLM,
    CachedLLM,
    HaikuCache,
    wrap,
)

from .conftest import EventLog, HashedBagOfWords

MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
    ChatMessage(role=MessageRole.USER, content="Tell me about route twelve"),
]


def runs(log: EventLog, class_name: str) -> int:
    """How many chat or completion calls the LLM named ``class_name`` itself started.

    (``MockLLM`` is a ``CustomLLM``: its ``chat`` runs its ``complete`` inside, and its async
    methods run the sync ones, so one call may count more than once; tests compare counts.)
    """
    kinds = ("LLMChatStartEvent", "LLMCompletionStartEvent")
    return sum(
        1 for kind in kinds for e in log.of(kind) if e.model_dict.get("class_name") == class_name
    )


def test_a_repeated_chat_is_answered_from_the_store(event_log: EventLog) -> None:
    llm = wrap(MockLLM())
    first = llm.chat(MESSAGES)
    upstream = runs(event_log, "MockLLM")
    second = llm.chat(MESSAGES)

    assert upstream >= 1 and runs(event_log, "MockLLM") == upstream
    assert runs(event_log, "HaikuCache_CachedLLM") == 2
    assert second.message.content == first.message.content
    assert first.additional_kwargs["haikucache"]["cache"] == "miss"
    assert second.additional_kwargs["haikucache"] == {
        "cache": "hit",
        "key": first.additional_kwargs["haikucache"]["key"],
    }
    assert first.additional_kwargs["haikucache"]["key"].startswith("hcli1:")
    assert llm.store.stats().hits == 1


def test_streams_share_answers_with_plain_calls(event_log: EventLog) -> None:
    llm = wrap(MockLLM())
    answer = llm.chat(MESSAGES)
    upstream = runs(event_log, "MockLLM")
    chunks = list(llm.stream_chat(MESSAGES))
    assert runs(event_log, "MockLLM") == upstream
    assert "".join(c.delta or "" for c in chunks) == answer.message.content
    assert len(chunks) > 3 and chunks[-1].message.content == answer.message.content

    # A streamed miss is stored once the stream completes, then served to complete().
    streamed = list(llm.stream_complete("Name a fruit"))
    upstream = runs(event_log, "MockLLM")
    completion = llm.complete("Name a fruit")
    assert completion.text == streamed[-1].text
    assert completion.additional_kwargs["haikucache"]["cache"] == "hit"
    assert runs(event_log, "MockLLM") == upstream


async def test_async_twins(event_log: EventLog) -> None:
    llm = wrap(MockLLM())
    first = await llm.achat(MESSAGES)
    upstream = runs(event_log, "MockLLM")
    replay = [c async for c in await llm.astream_chat(MESSAGES)]
    assert runs(event_log, "MockLLM") == upstream
    completion = await llm.acomplete("Name a fruit")
    upstream = runs(event_log, "MockLLM")
    streamed = [c async for c in await llm.astream_complete("Name a fruit")]
    assert runs(event_log, "MockLLM") == upstream

    assert replay[-1].message.content == first.message.content
    assert replay[-1].additional_kwargs["haikucache"]["cache"] == "hit"
    assert streamed[-1].text == completion.text
    assert streamed[-1].additional_kwargs["haikucache"]["cache"] == "hit"


def test_the_key_covers_the_request_and_the_llms_configuration() -> None:
    store = MemoryStore()
    short = wrap(MockLLM(max_tokens=3), store=store)
    longer = wrap(MockLLM(max_tokens=5), store=store)
    short.complete("hello")
    assert longer.complete("hello").additional_kwargs["haikucache"]["cache"] == "miss"
    assert (
        short.complete("hello", formatted=True).additional_kwargs["haikucache"]["cache"] == "miss"
    )
    assert short.complete("hello!").additional_kwargs["haikucache"]["cache"] == "miss"
    other_tenant = wrap(MockLLM(max_tokens=3), store=store, namespace="tenant-b")
    assert other_tenant.complete("hello").additional_kwargs["haikucache"]["cache"] == "miss"
    assert short.complete("hello").additional_kwargs["haikucache"]["cache"] == "hit"
    edited = [*MESSAGES[:1], ChatMessage(role=MessageRole.USER, content="Tell me about route 13")]
    short.chat(MESSAGES)
    assert short.chat(edited).additional_kwargs["haikucache"]["cache"] == "miss"


def test_answers_survive_a_new_process_on_disk(tmp_path: Path, event_log: EventLog) -> None:
    with DiskStore(tmp_path / "answers") as store:
        wrap(MockLLM(), store=store).chat(MESSAGES)
    upstream = runs(event_log, "MockLLM")
    with DiskStore(tmp_path / "answers") as reopened:
        again = wrap(MockLLM(), store=reopened).chat(MESSAGES)
    assert again.additional_kwargs["haikucache"]["cache"] == "hit"
    assert runs(event_log, "MockLLM") == upstream


def test_ttl_and_tags() -> None:
    clock = ManualClock()
    store = MemoryStore()
    llm = wrap(MockLLM(), store=store, ttl=60, tags=["faq"], clock=clock)
    llm.complete("hello")
    clock.advance(30)
    assert llm.complete("hello").additional_kwargs["haikucache"]["cache"] == "hit"
    clock.advance(31)
    assert llm.complete("hello").additional_kwargs["haikucache"]["cache"] == "miss"
    assert store.invalidate(tag="faq") == 1
    assert llm.complete("hello").additional_kwargs["haikucache"]["cache"] == "miss"


def test_an_llm_that_cannot_be_keyed_is_passed_through(caplog: pytest.LogCaptureFixture) -> None:
    llm = wrap(MockLLM(completion_to_prompt=lambda prompt: f"Q: {prompt}"))
    with caplog.at_level(logging.WARNING, logger="haikucache"):
        first = llm.complete("hello")
        second = llm.complete("hello")
    assert first.additional_kwargs["haikucache"] == {"cache": "bypass", "key": None}
    assert second.additional_kwargs["haikucache"]["cache"] == "bypass"
    assert len([r for r in caplog.records if "not cached" in r.getMessage()]) == 1


def test_function_calling_llms_keep_their_tools(event_log: EventLog) -> None:
    calls: list[int] = []

    def fare(route: int = 7) -> str:
        """The fare of a route."""
        calls.append(route)
        return f"route {route}: 120 USD"

    llm = wrap(MockFunctionCallingLLM())
    assert isinstance(llm, CachedFunctionCallingLLM)
    assert llm.metadata.is_function_calling_model
    tool = FunctionTool.from_defaults(fn=fare)
    first = llm.predict_and_call([tool], "What does route 7 cost?")
    upstream = runs(event_log, "MockFunctionCallingLLM")
    second = llm.predict_and_call([tool], "What does route 7 cost?")
    assert str(first) == str(second) == "route 7: 120 USD"
    assert calls == [7, 7]  # the tool runs each time; the model's choice came from the cache
    assert upstream == 1 and runs(event_log, "MockFunctionCallingLLM") == upstream


def test_a_query_engine_over_a_wrapped_llm(settings: Any, event_log: EventLog) -> None:
    Settings.llm = wrap(MockLLM(max_tokens=20))
    documents = [Document(text=f"Route {i} allows {i % 4 + 1} bags.") for i in range(200)]
    index = VectorStoreIndex.from_documents(documents, embed_model=HashedBagOfWords())
    engine = index.as_query_engine(similarity_top_k=2)
    first = engine.query("How many bags on route 12?")
    upstream = runs(event_log, "MockLLM")
    second = engine.query("How many bags on route 12?")
    assert str(first) == str(second)
    assert upstream >= 1 and runs(event_log, "MockLLM") == upstream


def test_wrapping_twice_or_wrapping_haikucache_is_refused() -> None:
    wrapped = wrap(MockLLM())
    assert isinstance(wrapped, CachedLLM) and not isinstance(wrapped, CachedFunctionCallingLLM)
    with pytest.raises(ConfigurationError, match="already wrapped"):
        wrap(wrapped)
    with pytest.raises(ConfigurationError, match="store="):
        wrap(HaikuCache(api_key="k", engine=Engine(ledger=False)))
    with pytest.raises(ConfigurationError, match="LlamaIndex LLM"):
        wrap("gpt-4o")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="store must be"):
        wrap(MockLLM(), store="redis")
