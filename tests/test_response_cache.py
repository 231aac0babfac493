"""The exact response cache through the client: hits, stream replay, tenants, controls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from haikucache import AsyncClient, Client, Engine, ManualClock, MemoryLedger, OverloadedError
from haikucache._store import DiskStore, MemoryStore
from haikucache.testing import Emulator

REQUEST = {
    "model": "claude-haiku-4-5",
    "max_tokens": 2048,
    "system": "Answer in two sentences.",
    "messages": [{"role": "user", "content": "What is the baggage allowance?"}],
}


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskStore]:
    s = DiskStore(tmp_path / "responses")
    yield s
    s.close()


def client_for(
    emulator: Emulator,
    store: object,
    *,
    api_key: str = "sk-test",
    ledger: MemoryLedger | None = None,
) -> Client:
    engine = Engine.for_credentials(api_key, ledger=ledger or MemoryLedger(), store=store)  # type: ignore[arg-type]
    return Client(
        api_key=api_key,
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    )


def test_a_repeat_is_served_locally_with_its_saving(emulator: Emulator, store: DiskStore) -> None:
    ledger = MemoryLedger()
    with client_for(emulator, store, ledger=ledger) as client:
        first = client.messages.create(**REQUEST)
        second = client.messages.create(**REQUEST)
    assert emulator.requests["messages"] == 1
    assert first.haikucache is not None and second.haikucache is not None
    assert (first.haikucache.cache, second.haikucache.cache) == ("miss", "hit")
    assert second.content[0].text == first.content[0].text
    assert second.id != first.id  # a replay is a new response
    assert second.haikucache.cost_usd == 0
    assert second.haikucache.savings["response_cache"] == pytest.approx(
        first.haikucache.baseline_usd
    )
    assert [e.cache for e in ledger.entries] == ["miss", "hit"]


def test_a_hit_survives_a_new_process_on_disk(emulator: Emulator, tmp_path: Path) -> None:
    with client_for(emulator, DiskStore(tmp_path / "r")) as client:
        client.messages.create(**REQUEST)
    reopened = DiskStore(tmp_path / "r")
    with client_for(emulator, reopened) as client:
        assert client.messages.create(**REQUEST).haikucache.cache == "hit"  # type: ignore[union-attr]
    reopened.close()
    assert emulator.requests["messages"] == 1


def test_tenants_never_share_answers(emulator: Emulator) -> None:
    store = MemoryStore()
    with (
        client_for(emulator, store, api_key="sk-tenant-a") as a,
        client_for(emulator, store, api_key="sk-tenant-b") as b,
    ):
        a.messages.create(**REQUEST)
        assert b.messages.create(**REQUEST).haikucache.cache == "miss"  # type: ignore[union-attr]
        assert a.messages.create(**REQUEST).haikucache.cache == "hit"  # type: ignore[union-attr]
    assert emulator.requests["messages"] == 2


def test_per_call_controls(emulator: Emulator) -> None:
    clock = ManualClock()
    engine = Engine(ledger=False, store=MemoryStore(), clock=clock)
    with Client(
        api_key="k", base_url="http://e.test", transport=emulator.transport(), engine=engine
    ) as client:
        client.messages.create(**REQUEST, no_store=True)
        assert client.messages.create(**REQUEST).haikucache.cache == "miss"  # type: ignore[union-attr]
        assert client.messages.create(**REQUEST, no_cache=True).haikucache.cache == "miss"  # type: ignore[union-attr]
        assert client.messages.create(**REQUEST).haikucache.cache == "hit"  # type: ignore[union-attr]
        other = {
            **REQUEST,
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": "Another question?"}],
        }
        assert client.messages.create(**other, ttl=60, tags=["faq"]).stop_reason == "end_turn"
        assert client.messages.create(**other).haikucache.cache == "hit"  # type: ignore[union-attr]
        clock.advance(61)
        assert client.messages.create(**other, tags=["faq"]).haikucache.cache == "miss"  # type: ignore[union-attr]
        assert client.messages.create(**other).haikucache.cache == "hit"  # type: ignore[union-attr]
        assert engine.store is not None
        assert engine.store.invalidate(tag="faq") == 1
        assert client.messages.create(**other).haikucache.cache == "miss"  # type: ignore[union-attr]
    assert emulator.requests["messages"] == 6
    assert engine.store.stats().hits == 3


def test_incomplete_answers_are_not_stored(emulator: Emulator) -> None:
    with client_for(emulator, MemoryStore()) as client:
        truncated = {**REQUEST, "max_tokens": 2}
        assert client.messages.create(**truncated).stop_reason == "max_tokens"
        assert client.messages.create(**truncated).haikucache.cache == "miss"  # type: ignore[union-attr]


def test_a_hit_asked_as_a_stream_is_replayed_faithfully(emulator: Emulator) -> None:
    with client_for(emulator, MemoryStore()) as client:
        original = client.messages.create(**REQUEST)
        with client.messages.stream(**REQUEST) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
    assert emulator.requests["messages"] == 1
    assert "".join(texts) == original.content[0].text
    assert final.haikucache is not None and final.haikucache.cache == "hit"
    assert final.usage.to_dict() == original.usage.to_dict()


def test_a_streamed_miss_is_stored_once_complete(emulator: Emulator) -> None:
    with client_for(emulator, MemoryStore()) as client:
        with client.messages.stream(**REQUEST) as stream:
            streamed = stream.get_final_message()
        again = client.messages.create(**REQUEST)
    assert again.haikucache is not None and again.haikucache.cache == "hit"
    assert again.content[0].text == streamed.content[0].text


def test_a_broken_stream_is_not_stored(emulator: Emulator) -> None:
    emulator.inject("stream_error", after_events=4)
    with client_for(emulator, MemoryStore()) as client:
        with pytest.raises(OverloadedError), client.messages.stream(**REQUEST) as stream:
            stream.get_final_message()
        assert client.messages.create(**REQUEST).haikucache.cache == "miss"  # type: ignore[union-attr]


async def test_async_hits(emulator: Emulator) -> None:
    engine = Engine(ledger=False, store=MemoryStore())
    async with AsyncClient(
        api_key="k", base_url="http://e.test", transport=emulator.transport(), engine=engine
    ) as client:
        first = await client.messages.create(**REQUEST)
        second = await client.messages.create(**REQUEST)
        stream = await client.messages.create(**REQUEST, stream=True)
        texts = [
            e.delta.text
            async for e in stream
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        ]
    assert second.haikucache is not None and second.haikucache.cache == "hit"
    assert "".join(texts) == first.content[0].text
    assert emulator.requests["messages"] == 1


def test_the_replayed_bytes_parse_in_the_official_sdk(emulator: Emulator) -> None:
    # What a proxy or SDK door would send: haikucache's replay of a stored message.
    from haikucache._replay import message_to_sse

    with client_for(emulator, MemoryStore()) as client:
        original = client.messages.create(**REQUEST).to_dict()
    body = b"".join(message_to_sse(original))
    import httpx2

    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=body
        )
    )
    sdk = anthropic.Anthropic(
        api_key="k",
        base_url="http://replay.test",
        http_client=anthropic.DefaultHttpxClient(transport=transport),
    )
    with sdk.messages.stream(**REQUEST) as stream:
        final = stream.get_final_message()
    sdk.close()
    assert final.content[0].text == original["content"][0]["text"]
    assert final.usage.input_tokens == original["usage"]["input_tokens"]


def test_identical_calls_in_flight_make_one_upstream_request(emulator: Emulator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    emulator.inject("latency", seconds=0.3, times=None)
    ledger = MemoryLedger()
    with (
        client_for(emulator, MemoryStore(), ledger=ledger) as client,
        ThreadPoolExecutor(6) as pool,
    ):
        replies = list(pool.map(lambda _: client.messages.create(**REQUEST), range(6)))
    assert emulator.requests["messages"] == 1
    assert len({r.content[0].text for r in replies}) == 1
    assert len({r.id for r in replies}) == 6
    assert sorted(e.cache for e in ledger.entries) == ["hit"] * 5 + ["miss"]
    # Different requests are never merged.
    with client_for(emulator, MemoryStore()) as client, ThreadPoolExecutor(3) as pool:
        asks = [
            {**REQUEST, "messages": [{"role": "user", "content": f"Question {i}?"}]}
            for i in range(3)
        ]
        list(pool.map(lambda body: client.messages.create(**body), asks))
    assert emulator.requests["messages"] == 4


async def test_identical_async_calls_in_flight_make_one_upstream_request(
    emulator: Emulator,
) -> None:
    import asyncio

    emulator.inject("latency", seconds=0.3, times=None)
    engine = Engine(ledger=False, store=MemoryStore())
    async with AsyncClient(
        api_key="k", base_url="http://e.test", transport=emulator.transport(), engine=engine
    ) as client:
        replies = await asyncio.gather(*(client.messages.create(**REQUEST) for _ in range(5)))
        solo = await client.messages.create(**REQUEST, no_cache=True)
    assert emulator.requests["messages"] == 2
    assert [r.haikucache.cache for r in replies].count("miss") == 1  # type: ignore[union-attr]
    assert solo.haikucache is not None and solo.haikucache.cache == "miss"
