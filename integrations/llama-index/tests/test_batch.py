"""``batch_chat`` / ``batch_complete``: many prompts through Message Batches, at half price."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from haikucache import ConfigurationError, Engine, MemoryLedger, MemoryStore, RequestValidationError
from haikucache.testing import Emulator
from llama_index.llms.haikucache import HaikuCache

from .conftest import EventLog

FAST = {"journal": "memory", "poll_interval": 0.05, "max_poll_interval": 0.1, "max_wait": 0.05}
REVIEWS = [f"Classify review {i}: the flight was fine, the food was cold." for i in range(12)]


@pytest.fixture
def batch_emulator() -> Emulator:
    return Emulator(batch_processing_seconds=0.2)


@pytest.fixture
def batch_llm(batch_emulator: Emulator, ledger: MemoryLedger) -> HaikuCache:
    return HaikuCache(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=batch_emulator.transport(),
        engine=Engine(ledger=ledger, store=MemoryStore()),
        max_tokens=1024,
        batch_options=FAST,
    )


def test_batch_complete_answers_in_order_at_half_price(
    batch_llm: HaikuCache, batch_emulator: Emulator, event_log: EventLog
) -> None:
    answers = batch_llm.batch_complete(REVIEWS)

    assert batch_emulator.requests["batches.create"] == 1
    assert batch_emulator.requests["messages"] == 0
    sent = next(r for r in batch_emulator.log if r.endpoint == "batches.create").body["requests"]
    assert [r["params"]["messages"][0]["content"][0]["text"] for r in sent] == REVIEWS
    for answer in answers:
        assert not isinstance(answer, BaseException)
        info = answer.additional_kwargs["haikucache"]
        assert info["batch"] and info["cache"] == "miss"
        assert info["cost_usd"] == pytest.approx(info["baseline_usd"] / 2)
        assert answer.text
    # The same prompts later, one by one: answered by the response cache the batch filled.
    again = batch_llm.complete(REVIEWS[3])
    assert again.additional_kwargs["haikucache"]["cache"] == "hit"
    assert again.text == answers[3].text  # type: ignore[union-attr]
    assert batch_emulator.requests["messages"] == 0
    # Instrumentation sees every batched answer (the complete() above fires completion events).
    ends = event_log.of("LLMChatEndEvent")
    assert len(ends) == len(REVIEWS)
    assert all(e.response.additional_kwargs["haikucache"]["batch"] for e in ends)


def test_batch_chat_dedups_and_reports_bad_conversations_in_place(
    batch_llm: HaikuCache, batch_emulator: Emulator
) -> None:
    good = [ChatMessage(role=MessageRole.USER, content="Summarise route 12.")]
    bad = [ChatMessage(role=MessageRole.TOOL, content="42")]  # no tool_call_id
    results = batch_llm.batch_chat([good, bad, good], return_exceptions=True, no_store=True)

    assert isinstance(results[1], RequestValidationError)
    first, third = results[0], results[2]
    assert not isinstance(first, BaseException) and not isinstance(third, BaseException)
    assert first.message.content == third.message.content
    sent = next(r for r in batch_emulator.log if r.endpoint == "batches.create").body["requests"]
    assert len(sent) == 1  # identical conversations travel once; the bad one never
    with pytest.raises(RequestValidationError):
        batch_llm.batch_chat([bad])
    assert batch_emulator.requests["batches.create"] == 1


async def test_abatch_complete(batch_llm: HaikuCache, batch_emulator: Emulator) -> None:
    answers = await batch_llm.abatch_complete(REVIEWS[:4])
    assert [a.additional_kwargs["haikucache"]["batch"] for a in answers] == [True] * 4  # type: ignore[union-attr]
    assert batch_emulator.requests["batches.create"] == 1
    cached = await batch_llm.abatch_complete(REVIEWS[:4])
    assert [a.additional_kwargs["haikucache"]["cache"] for a in cached] == ["hit"] * 4  # type: ignore[union-attr]
    assert batch_emulator.requests["batches.create"] == 1


def test_batch_options_reach_the_batcher(make_llm: Callable[..., HaikuCache]) -> None:
    llm: Any = make_llm(batch_options={"max_batch_size": 0})
    with pytest.raises(ConfigurationError, match="max_batch_size"):
        llm.batch_complete(["hello"])
