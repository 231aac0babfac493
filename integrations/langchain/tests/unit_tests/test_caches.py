"""HaikuCacheLLMCache with real LangChain models: partitions, TTL, namespaces, Redis, meaning.

The standard suites (test_cache_standard.py) check the BaseCache contract; these check what
a user relies on: an answer is only served to the same model with the same settings, and a
semantic hit never crosses a partition or a guard.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from langchain_anthropic import ChatAnthropic
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import Generation
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from haikucache import ConfigurationError, DiskStore, MemoryStore, RedisStore
from haikucache.testing import Emulator, start_redis_server
from langchain_haikucache import HaikuCacheLLMCache

MODEL = "claude-haiku-4-5"


def _anthropic(emu: Emulator, cache: HaikuCacheLLMCache, **kwargs: object) -> ChatAnthropic:
    import anthropic

    model = ChatAnthropic(
        model=MODEL, api_key="k", base_url="http://emulator.local", cache=cache, **kwargs
    )
    # ChatAnthropic has no transport option: hand it an SDK client on the emulator.
    model.__dict__["_client"] = anthropic.Client(
        api_key="k",
        base_url="http://emulator.local",
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
    )
    return model


def test_serves_chat_anthropic_and_partitions_by_model_settings() -> None:
    emu = Emulator()
    cache = HaikuCacheLLMCache(MemoryStore(strict=True))
    model = _anthropic(emu, cache, max_tokens=100)
    first = model.invoke("What is prompt caching?")
    second = model.invoke("What is prompt caching?")
    assert emu.requests["messages"] == 1
    assert second.content == first.content
    assert second.response_metadata["haikucache"]["cache"] == "hit"
    assert "haikucache" not in first.response_metadata
    # Other settings, another partition: never served the first model's answer.
    _anthropic(emu, cache, max_tokens=101).invoke("What is prompt caching?")
    _anthropic(emu, cache, max_tokens=100, stop_sequences=["END"]).invoke("What is prompt caching?")
    model.bind_tools(
        [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]
    ).invoke("What is prompt caching?")
    assert emu.requests["messages"] == 4


def test_any_langchain_model_through_set_llm_cache() -> None:
    cache = HaikuCacheLLMCache()
    set_llm_cache(cache)
    try:
        fake = GenericFakeChatModel(messages=iter([AIMessage("first"), AIMessage("second")]))
        assert fake.invoke("hi").content == "first"
        again = fake.invoke("hi")
        assert again.content == "first"  # from the cache; the fake would have said "second"
        assert again.response_metadata["haikucache"]["cache"] == "hit"
        assert fake.invoke("something else").content == "second"
    finally:
        set_llm_cache(None)


def test_ttl_on_an_injected_clock_and_namespaces() -> None:
    now = [1000.0]
    store = MemoryStore(strict=True)
    a = HaikuCacheLLMCache(store, ttl=60, clock=lambda: now[0], namespace="a")
    b = HaikuCacheLLMCache(store, clock=lambda: now[0], namespace="b")
    value = [Generation(text="answer")]
    a.update("p", "llm", value)
    b.update("p", "llm", value)
    assert a.key("p", "llm") != b.key("p", "llm")
    assert a.lookup("p", "llm") == value
    now[0] += 61
    assert a.lookup("p", "llm") is None  # expired
    assert b.lookup("p", "llm") == value  # no ttl
    b.clear()
    assert b.lookup("p", "llm") is None
    a.update("p", "llm", value)
    b.clear()  # clears only its own namespace
    assert a.lookup("p", "llm") == value


def test_disk_store_is_shared_across_instances(tmp_path: Path) -> None:
    value = [Generation(text="kept on disk")]
    with DiskStore(tmp_path / "c") as store:
        HaikuCacheLLMCache(store).update("p", "llm", value)
    with DiskStore(tmp_path / "c") as store:
        assert HaikuCacheLLMCache(store).lookup("p", "llm") == value


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        HaikuCacheLLMCache("redis")
    with pytest.raises(ConfigurationError):
        HaikuCacheLLMCache(ttl=0)
    with pytest.raises(ConfigurationError):
        HaikuCacheLLMCache(namespace="")
    with pytest.raises(ConfigurationError):
        HaikuCacheLLMCache(semantic="yes")


# --------------------------------------------------------------------------- semantic


@pytest.fixture(scope="module")
def semantic() -> object:
    pytest.importorskip("onnxruntime")
    from haikucache._embed_local import LocalEmbedder
    from haikucache._semantic import SemanticConfig

    return SemanticConfig(embedder=LocalEmbedder(), strict=True)


def _prompt(*messages: object) -> str:
    from langchain_core.load import dumps

    return dumps([m.model_copy(update={"id": None}) for m in messages])  # type: ignore[attr-defined]


def test_semantic_hits_inside_a_partition_only(semantic: object) -> None:
    cache = HaikuCacheLLMCache(MemoryStore(strict=True), semantic=semantic)
    system = SystemMessage("You are a geography tutor.")
    answer = [Generation(text="Paris")]
    cache.update(_prompt(system, HumanMessage("What is the capital of France?")), "m1", answer)

    served = cache.lookup(_prompt(system, HumanMessage("What's the capital city of France?")), "m1")
    assert served == answer
    # Another model or settings, another system prompt: never compared.
    assert (
        cache.lookup(_prompt(system, HumanMessage("What's the capital city of France?")), "m2")
        is None
    )
    other_system = SystemMessage("You are a pirate.")
    assert (
        cache.lookup(
            _prompt(other_system, HumanMessage("What's the capital city of France?")), "m1"
        )
        is None
    )
    # A different entity is guarded even when embeddings score it high.
    assert (
        cache.lookup(_prompt(system, HumanMessage("What is the capital of Spain?")), "m1") is None
    )
    assert (
        cache.lookup(_prompt(system, HumanMessage("How do I bake sourdough bread?")), "m1") is None
    )


def test_semantic_hit_carries_its_similarity(semantic: object) -> None:
    from langchain_core.outputs import ChatGeneration

    cache = HaikuCacheLLMCache(semantic=semantic)
    cache.update(
        _prompt(HumanMessage("How many legs does a spider have?")),
        "m",
        [ChatGeneration(message=AIMessage("Eight."))],
    )
    (hit,) = cache.lookup(_prompt(HumanMessage("How many legs do spiders have?")), "m")  # type: ignore[misc]
    info = hit.message.response_metadata["haikucache"]
    assert info["cache"] == "semantic" and info["similarity"] >= semantic.threshold  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own on a free loopback port."""
    pytest.importorskip("redis")
    try:
        server = start_redis_server(tmp_path_factory.mktemp("redis"))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with server:
        yield server.url


class TestRedisSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, redis_url: str) -> Iterator[HaikuCacheLLMCache]:
        store = RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", strict=True)
        yield HaikuCacheLLMCache(store)
        store.close()


class TestRedisAsync(AsyncCacheTestSuite):
    @pytest_asyncio.fixture
    async def cache(self, redis_url: str) -> AsyncIterator[HaikuCacheLLMCache]:
        store = RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", strict=True)
        yield HaikuCacheLLMCache(store)
        await store.aclose()
        store.close()
