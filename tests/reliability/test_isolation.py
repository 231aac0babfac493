"""Tenant isolation at every door (issue 12, item 7).

The rule (DESIGN.md, "Keys"): the cache key and the semantic partition are scoped by a hash of
the credential that reaches upstream, whatever engine or store the caller passed. One engine or
one store shared by many keys is the normal case and must be safe; a namespace label alone does
not share across keys; only ``Engine(share_across_credentials=True)`` does.

Every test runs at every door (:data:`DOORS`: the client, the SDK's two hooks, LangChain,
LlamaIndex, the decorator and the batcher, sync and async, JSON and streamed). A door factory
builds "a caller for API key K on engine E": a function that asks one question and returns the
answer's text and the cache status the door reports. The cases:

- one engine shared by keys A and B; two engines on one store (memory, disk, Redis);
- one namespace label (``"team"``) for both keys, given at the door or as the engine's;
- the opt-in, ``share_across_credentials=True``: B is served A's answer;
- a key the upstream rejects is never answered from the cache: it gets the API's 401;
- semantic lookup: B never gets a hit by meaning from A's answers (and does with the opt-in);
- two processes on one DiskStore: what a child process stored for A is a miss for B.

Nothing of haikucache is mocked; the upstream is the emulator. Each key talks to its own
emulator, seeded differently, so the two answer the same question with different text: an
answer served across keys shows as the other key's text, not only as a cache status and an
upstream call that did not happen.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import BaseMessage
from llama_index.core.base.llms.types import ChatMessage, MessageRole

import haikucache
import haikucache.anthropic as hca
from haikucache import (
    AsyncClient,
    Batcher,
    CallOptions,
    Client,
    DiskStore,
    Engine,
    MemoryBatchJournal,
    MemoryStore,
    Message,
    RedisStore,
    ResponseStore,
    SemanticConfig,
)
from haikucache.testing import Emulator
from langchain_haikucache import ChatAnthropicHaikuCache
from langchain_haikucache import wrap as langchain_wrap
from llama_index.llms.haikucache import HaikuCache

MODEL = "claude-haiku-4-5"
BASE_URL = "http://emulator.test"
KEY_A = "sk-ant-api03-tenant-a"
KEY_B = "sk-ant-api03-tenant-b"
QUESTION = "What is the baggage allowance on short flights?"
# The same content words as QUESTION: the bag-of-words embedder scores the pair 1.0.
PARAPHRASE = "What is the baggage allowance on a short flight?"
# Large enough that every emulator answer ends with end_turn, so it is stored.
MAX_TOKENS = 1024


def request(question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": question}],
    }


def upstream_calls(emu: Emulator) -> int:
    """Requests that reached the emulator and could have answered a question."""
    return emu.requests["messages"] + emu.requests["batches.create"]


@dataclass(frozen=True)
class Answer:
    text: str
    cache: str  # "miss", "hit" or "semantic", as the door reports it


Ask = Callable[[str], Answer]


class Harness:
    """What door factories share within one test: an event loop for the async doors, the
    environment (for the decorator's default client) and the clean-up, in reverse order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closers: list[Callable[[], object]] = []
        self._servers: dict[int, Any] = {}

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on this test's event loop (one loop, so async clients and
        async Redis connections are closed on the loop that opened them)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def on_close(self, close: Callable[[], object]) -> None:
        """Call ``close`` at the end of the test; an awaitable it returns is run to the end."""
        self._closers.append(close)

    def base_url(self, emu: Emulator) -> str:
        """A loopback server for ``emu`` (one per emulator), for doors that open their own."""
        server = self._servers.get(id(emu))
        if server is None:
            server = self._servers[id(emu)] = emu.start_server()
            self.on_close(server.stop)
        return str(server.base_url)

    def close(self) -> None:
        try:
            for close in reversed(self._closers):
                result = close()
                if inspect.isawaitable(result):
                    self.run(result)
        finally:
            if self._loop is not None:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness(monkeypatch)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def upstreams() -> dict[str, Emulator]:
    """One emulator per key, seeded differently: their answers to one question differ."""
    return {
        KEY_A: Emulator(seed=1, batch_processing_seconds=0),
        KEY_B: Emulator(seed=2, batch_processing_seconds=0),
    }


# --------------------------------------------------------------------------- the doors
# A door factory: (harness, emulator, api key, engine, namespace label or None) -> ask.

DoorFactory = Callable[[Harness, Emulator, str, Engine, str | None], Ask]


def _text(content: Any) -> str:
    """The text blocks of a message's content (dicts or SDK objects), joined."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else getattr(block, "type", None)
        if kind == "text":
            parts.append(block["text"] if isinstance(block, dict) else block.text)
    return "".join(parts)


def _answer(message: Message) -> Answer:
    assert message.haikucache is not None
    return Answer(_text(message.to_dict()["content"]), message.haikucache.cache)


def _options(namespace: str | None) -> dict[str, Any]:
    return {"namespace": namespace} if namespace is not None else {}


def _client(emu: Emulator, key: str, engine: Engine) -> Client:
    return Client(
        api_key=key, base_url=BASE_URL, transport=emu.transport(), engine=engine, max_retries=0
    )


def client_door(*, stream: bool) -> DoorFactory:
    """``haikucache.Client``; the namespace label per call."""

    def make(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
        client = _client(emu, key, engine)
        h.on_close(client.close)

        def ask(question: str) -> Answer:
            if stream:
                with client.messages.stream(**request(question), **_options(namespace)) as s:
                    return _answer(s.get_final_message())
            message = client.messages.create(**request(question), **_options(namespace))
            return _answer(message)

        return ask

    return make


def async_client_door(*, stream: bool) -> DoorFactory:
    """``haikucache.AsyncClient``; the namespace label per call."""

    def make(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
        client = AsyncClient(
            api_key=key, base_url=BASE_URL, transport=emu.transport(), engine=engine, max_retries=0
        )
        h.on_close(client.close)

        async def aask(question: str) -> Answer:
            if stream:
                async with client.messages.stream(**request(question), **_options(namespace)) as s:
                    return _answer(await s.get_final_message())
            message = await client.messages.create(**request(question), **_options(namespace))
            return _answer(message)

        return lambda question: h.run(aask(question))

    return make


def sdk_door(*, hook: str, stream: bool, asynchronous: bool) -> DoorFactory:
    """``haikucache.anthropic.wrap(anthropic.Anthropic(...), engine=...)`` (or
    ``AsyncAnthropic``). The namespace label is the door's own (``wrap(namespace=...)``) on
    the middleware hook, and per call (``call_headers``) on the transport hook. The cache
    status is the ``haikucache-cache`` response header of that very response."""

    def make(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
        per_call = hook == "transport"
        headers = hca.call_headers(namespace=namespace) if per_call and namespace else {}
        door_namespace = None if per_call else namespace
        if asynchronous:
            araw = anthropic.AsyncAnthropic(
                api_key=key,
                base_url=BASE_URL,
                http_client=anthropic.DefaultAsyncHttpxClient(transport=emu.httpx2_transport()),
                max_retries=0,
            )
            aclient = hca.wrap(araw, engine=engine, namespace=door_namespace, hook=hook)  # type: ignore[arg-type]
            h.on_close(aclient.close)

            async def aask(question: str) -> Answer:
                params = request(question)
                if stream:
                    async with aclient.messages.stream(**params, extra_headers=headers) as s:
                        text = await s.get_final_text()
                        return Answer(text, s.response.headers[hca.CACHE_HEADER])
                raw = await aclient.messages.with_raw_response.create(
                    **params, extra_headers=headers
                )
                message = await raw.parse()
                return Answer(_text(message.content), raw.headers[hca.CACHE_HEADER])

            return lambda question: h.run(aask(question))

        sync_raw = anthropic.Anthropic(
            api_key=key,
            base_url=BASE_URL,
            http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
            max_retries=0,
        )
        client = hca.wrap(sync_raw, engine=engine, namespace=door_namespace, hook=hook)  # type: ignore[arg-type]
        h.on_close(client.close)

        def ask(question: str) -> Answer:
            params = request(question)
            if stream:
                with client.messages.stream(**params, extra_headers=headers) as s:
                    text = s.get_final_text()
                    return Answer(text, s.response.headers[hca.CACHE_HEADER])
            raw = client.messages.with_raw_response.create(**params, extra_headers=headers)
            return Answer(_text(raw.parse().content), raw.headers[hca.CACHE_HEADER])

        return ask

    return make


def _joined(chunks: Sequence[BaseMessage]) -> Any:
    full: Any = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def _lc_answer(message: Any) -> Answer:
    return Answer(_text(message.content), message.response_metadata["haikucache"]["cache"])


def langchain_door(*, style: str, mode: str) -> DoorFactory:
    """LangChain: ``langchain_haikucache.wrap(ChatAnthropic(...), engine=...)`` (the namespace
    label per door, ``wrap(namespace=...)``) or ``ChatAnthropicHaikuCache(..., engine=...)``
    (per call, ``invoke(..., haikucache={"namespace": ...})``)."""

    def make(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
        settings: dict[str, Any] = {
            "model": MODEL,
            "api_key": key,
            "base_url": BASE_URL,
            "max_tokens": MAX_TOKENS,
            "max_retries": 0,
        }
        kwargs: dict[str, Any] = {}
        model: Any
        if style == "wrap":
            model = langchain_wrap(
                ChatAnthropic(**settings),
                engine=engine,
                upstream_transport=emu.httpx2_transport(),
                namespace=namespace,
            )
        else:
            model = ChatAnthropicHaikuCache(
                **settings, engine=engine, upstream_transport=emu.httpx2_transport()
            )
            if namespace is not None:
                kwargs["haikucache"] = {"namespace": namespace}

        async def astream(question: str) -> Answer:
            return _lc_answer(_joined([c async for c in model.astream(question, **kwargs)]))

        def ask(question: str) -> Answer:
            if mode == "invoke":
                return _lc_answer(model.invoke(question, **kwargs))
            if mode == "ainvoke":
                return _lc_answer(h.run(model.ainvoke(question, **kwargs)))
            if mode == "stream":
                return _lc_answer(_joined(list(model.stream(question, **kwargs))))
            return h.run(astream(question))

        return ask

    return make


def llamaindex_door(*, mode: str) -> DoorFactory:
    """LlamaIndex: ``HaikuCache(..., engine=...)``; the namespace label per call."""

    def make(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
        llm = HaikuCache(
            api_key=key,
            base_url=BASE_URL,
            transport=emu.transport(),
            engine=engine,
            max_tokens=MAX_TOKENS,
            max_retries=0,
        )
        options = _options(namespace)

        def chat(question: str) -> list[ChatMessage]:
            return [ChatMessage(role=MessageRole.USER, content=question)]

        def of(response: Any) -> Answer:
            text = getattr(response, "text", None)
            if text is None:
                text = response.message.content
            return Answer(text, response.additional_kwargs["haikucache"]["cache"])

        async def astream_complete(question: str) -> Answer:
            chunks = [c async for c in await llm.astream_complete(question, **options)]
            return of(chunks[-1])

        def ask(question: str) -> Answer:
            if mode == "chat":
                return of(llm.chat(chat(question), **options))
            if mode == "complete":
                return of(llm.complete(question, **options))
            if mode == "stream_chat":
                return of(list(llm.stream_chat(chat(question), **options))[-1])
            if mode == "achat":
                return of(h.run(llm.achat(chat(question), **options)))
            return h.run(astream_complete(question))

        return ask

    return make


def decorator_door(*, via: str) -> DoorFactory:
    """``@haikucache.llm(...)``: given a ``Client`` (``client=``), an ``AsyncClient`` for an
    ``async def``, or only ``engine=`` (its default client then takes the key and base URL
    from the environment, and reaches the emulator over loopback HTTP). The namespace label
    is the decorator's own."""

    def make(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
        if via == "client":
            client = _client(emu, key, engine)
            h.on_close(client.close)

            @haikucache.llm(
                client=client, returns="message", max_tokens=MAX_TOKENS, namespace=namespace
            )
            def ask_sync(question: str) -> str:
                return question

            return lambda question: _answer(ask_sync(question))

        if via == "async-client":
            aclient = AsyncClient(
                api_key=key,
                base_url=BASE_URL,
                transport=emu.transport(),
                engine=engine,
                max_retries=0,
            )
            h.on_close(aclient.close)

            @haikucache.llm(
                client=aclient, returns="message", max_tokens=MAX_TOKENS, namespace=namespace
            )
            async def ask_async(question: str) -> str:
                return question

            return lambda question: _answer(h.run(ask_async(question)))

        base_url = h.base_url(emu)

        @haikucache.llm(
            engine=engine, returns="message", max_tokens=MAX_TOKENS, namespace=namespace
        )
        def ask_env(question: str) -> str:
            return question

        opened: list[Client] = []
        h.on_close(lambda: [c.close() for c in opened])

        def ask(question: str) -> Answer:
            # The default client is created on the first call, from the environment.
            with h.monkeypatch.context() as env:
                env.setenv("ANTHROPIC_API_KEY", key)
                env.setenv("ANTHROPIC_BASE_URL", base_url)
                try:
                    message = ask_env(question)
                finally:
                    if not opened:  # the client exists after a failed call too
                        opened.append(ask_env.client)
            return _answer(message)

        return ask

    return make


def batcher_door(h: Harness, emu: Emulator, key: str, engine: Engine, namespace: str | None) -> Ask:
    """``haikucache.Batcher(client)``: its lookups on submit and the results it stores; the
    namespace label per call (``CallOptions``)."""
    client = _client(emu, key, engine)
    h.on_close(client.close)
    batcher = Batcher(
        client,
        journal=MemoryBatchJournal(),
        max_wait=0.0,
        poll_interval=0.01,
        max_poll_interval=0.02,
    )
    h.on_close(batcher.close)

    def ask(question: str) -> Answer:
        [message] = batcher.map([request(question)], CallOptions(namespace=namespace))
        assert isinstance(message, Message)
        return _answer(message)

    return ask


DOORS: dict[str, DoorFactory] = {
    "client": client_door(stream=False),
    "client-stream": client_door(stream=True),
    "async-client": async_client_door(stream=False),
    "async-client-stream": async_client_door(stream=True),
    **{
        f"{'async-' if asynchronous else ''}sdk-{hook}{'-stream' if stream else ''}": sdk_door(
            hook=hook, stream=stream, asynchronous=asynchronous
        )
        for asynchronous in (False, True)
        for hook in ("middleware", "transport")
        for stream in (False, True)
    },
    "langchain-wrap-invoke": langchain_door(style="wrap", mode="invoke"),
    "langchain-wrap-ainvoke": langchain_door(style="wrap", mode="ainvoke"),
    "langchain-wrap-stream": langchain_door(style="wrap", mode="stream"),
    "langchain-class-invoke": langchain_door(style="class", mode="invoke"),
    "langchain-class-astream": langchain_door(style="class", mode="astream"),
    "llamaindex-chat": llamaindex_door(mode="chat"),
    "llamaindex-complete": llamaindex_door(mode="complete"),
    "llamaindex-stream-chat": llamaindex_door(mode="stream_chat"),
    "llamaindex-achat": llamaindex_door(mode="achat"),
    "llamaindex-astream-complete": llamaindex_door(mode="astream_complete"),
    "decorator-client": decorator_door(via="client"),
    "decorator-async-client": decorator_door(via="async-client"),
    "decorator-engine": decorator_door(via="engine"),
    "batcher": batcher_door,
}


@pytest.fixture(params=list(DOORS), ids=list(DOORS))
def door(request: pytest.FixtureRequest) -> DoorFactory:
    return DOORS[request.param]


# --------------------------------------------------------------------------- stores


@pytest.fixture(params=["memory", "disk", "redis"])
def shared_store(
    request: pytest.FixtureRequest, tmp_path: Path, h: Harness
) -> tuple[ResponseStore, ResponseStore]:
    """One store reached through two handles (two objects on one directory or one Redis
    prefix, as two processes would; one object for memory)."""
    first: ResponseStore
    second: ResponseStore
    if request.param == "memory":
        first = second = MemoryStore()
    elif request.param == "disk":
        first, second = DiskStore(tmp_path / "cache"), DiskStore(tmp_path / "cache")
    else:
        redis_url = request.getfixturevalue("redis_url")
        prefix = f"isolation-{uuid.uuid4().hex}:"
        first, second = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    for store in {id(first): first, id(second): second}.values():
        # A Redis store's async connections (if an async door opened them) need aclose().
        h.on_close(store.aclose if isinstance(store, RedisStore) else store.close)
    return first, second


# --------------------------------------------------------------------------- checks


def assert_isolated(a: Ask, b: Ask, emu_a: Emulator, emu_b: Emulator) -> Answer:
    """Key A's answer is never served to key B (and B's never replaces A's)."""
    first_a = a(QUESTION)
    assert first_a.cache == "miss" and upstream_calls(emu_a) == 1
    assert a(QUESTION) == Answer(first_a.text, "hit"), "key A's repeat is not a hit"
    assert upstream_calls(emu_a) == 1

    first_b = b(QUESTION)
    assert first_b.text != first_a.text, "key B was served key A's answer"
    assert first_b.cache == "miss", f"key B's first request was a {first_b.cache}"
    assert upstream_calls(emu_b) == 1, "key B's first request did not reach upstream"

    assert b(QUESTION) == Answer(first_b.text, "hit"), "key B's repeat is not its own hit"
    assert a(QUESTION) == Answer(first_a.text, "hit"), "key B's answer replaced key A's"
    assert (upstream_calls(emu_a), upstream_calls(emu_b)) == (1, 1)
    return first_a


# --------------------------------------------------------------------------- the tests


def test_one_engine_shared_by_two_keys(
    door: DoorFactory, h: Harness, upstreams: dict[str, Emulator]
) -> None:
    engine = Engine(store=MemoryStore(), ledger=False)
    a = door(h, upstreams[KEY_A], KEY_A, engine, None)
    b = door(h, upstreams[KEY_B], KEY_B, engine, None)
    assert_isolated(a, b, upstreams[KEY_A], upstreams[KEY_B])


def test_two_engines_on_one_store(
    door: DoorFactory,
    h: Harness,
    upstreams: dict[str, Emulator],
    shared_store: tuple[ResponseStore, ResponseStore],
) -> None:
    first_store, second_store = shared_store
    engine_1 = Engine(store=first_store, ledger=False)
    engine_2 = Engine(store=second_store, ledger=False)
    a = door(h, upstreams[KEY_A], KEY_A, engine_1, None)
    b = door(h, upstreams[KEY_B], KEY_B, engine_2, None)
    first_a = assert_isolated(a, b, upstreams[KEY_A], upstreams[KEY_B])
    # The store really is shared: key A through the other engine finds its own answer.
    a_again = door(h, upstreams[KEY_A], KEY_A, engine_2, None)
    assert a_again(QUESTION) == Answer(first_a.text, "hit")
    assert upstream_calls(upstreams[KEY_A]) == 1


@pytest.mark.parametrize("label", ["door", "engine"])
def test_one_namespace_label_does_not_share_across_keys(
    door: DoorFactory, h: Harness, upstreams: dict[str, Emulator], label: str
) -> None:
    """``namespace="team"`` given at the door (per call or per wrapped client, see each
    factory), or as the shared engine's own namespace."""
    engine = Engine(store=MemoryStore(), ledger=False, namespace="team")
    namespace = "team" if label == "door" else None
    a = door(h, upstreams[KEY_A], KEY_A, engine, namespace)
    b = door(h, upstreams[KEY_B], KEY_B, engine, namespace)
    assert_isolated(a, b, upstreams[KEY_A], upstreams[KEY_B])


def test_share_across_credentials_is_the_opt_in(
    door: DoorFactory, h: Harness, upstreams: dict[str, Emulator]
) -> None:
    engine = Engine(store=MemoryStore(), ledger=False, share_across_credentials=True)
    a = door(h, upstreams[KEY_A], KEY_A, engine, None)
    b = door(h, upstreams[KEY_B], KEY_B, engine, None)
    first_a = a(QUESTION)
    assert first_a.cache == "miss"
    assert b(QUESTION) == Answer(first_a.text, "hit")
    assert upstream_calls(upstreams[KEY_B]) == 0


def _status_codes(exc: BaseException | None) -> list[int]:
    codes = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "status_code", None)
        if isinstance(code, int):
            codes.append(code)
        exc = exc.__cause__ or exc.__context__
    return codes


def _rejection(ask: Ask) -> BaseException:
    try:
        served = ask(QUESTION)
    except Exception as exc:
        return exc
    pytest.fail(f"a key upstream rejects was answered locally ({served.cache})")


def test_a_key_upstream_rejects_is_never_answered_from_the_cache(
    door: DoorFactory, h: Harness
) -> None:
    if "api_keys" not in inspect.signature(Emulator).parameters:
        pytest.skip("this emulator accepts any key (no Emulator(api_keys=...))")
    emu = Emulator(api_keys=[KEY_A], batch_processing_seconds=0)
    engine = Engine(store=MemoryStore(), ledger=False)
    good = door(h, emu, KEY_A, engine, None)
    bad = door(h, emu, KEY_B, engine, None)
    first = good(QUESTION)
    assert first.cache == "miss"
    assert good(QUESTION) == Answer(first.text, "hit")
    assert upstream_calls(emu) == 1
    for attempt in (1, 2):
        error = _rejection(bad)
        assert 401 in _status_codes(error), repr(error)
        assert upstream_calls(emu) == 1 + attempt, "the rejected key did not reach upstream"
        assert emu.log[-1].status == 401
    assert good(QUESTION) == Answer(first.text, "hit")


# --------------------------------------------------------------------------- semantic lookup
# A deterministic bag-of-words embedder (as in tests/test_semantic.py): content words, plural
# "s" dropped, hashed to 256 dimensions; QUESTION and PARAPHRASE score exactly 1.0.

_STOP = {"a", "an", "the", "do", "does", "i", "is", "what", "how", "can", "to", "of", "in", "my"}


def bag_of_words(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        words = [
            w[:-1] if len(w) > 3 and w.endswith("s") else w
            for w in re.findall(r"[a-z0-9]+", text.lower())
            if w not in _STOP
        ]
        for w in words or ["<empty>"]:
            out[row, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1.0
    return out


def _semantic_engine(store: ResponseStore, *, share: bool) -> Engine:
    return Engine(
        store=store,
        ledger=False,
        # sync_interval=0: an engine sees vectors other handles stored at once, so a miss below
        # is isolation, not a stale index.
        semantic=SemanticConfig(embedder=bag_of_words, threshold=0.9, sync_interval=0),
        share_across_credentials=share,
    )


@pytest.mark.parametrize(
    ("shared_store", "share"),
    [("memory", False), ("disk", False), ("redis", False), ("memory", True)],
    ids=["memory-isolated", "disk-isolated", "redis-isolated", "memory-shared"],
    indirect=["shared_store"],
)
def test_semantic_hits_never_cross_keys(
    door: DoorFactory,
    h: Harness,
    upstreams: dict[str, Emulator],
    shared_store: tuple[ResponseStore, ResponseStore],
    share: bool,
) -> None:
    first_store, second_store = shared_store
    engine_a = _semantic_engine(first_store, share=share)
    engine_b = (
        engine_a if first_store is second_store else _semantic_engine(second_store, share=share)
    )
    emu_a, emu_b = upstreams[KEY_A], upstreams[KEY_B]
    a = door(h, emu_a, KEY_A, engine_a, None)
    b = door(h, emu_b, KEY_B, engine_b, None)

    first_a = a(QUESTION)
    assert first_a.cache == "miss"
    # Semantic lookup works for the key itself: its paraphrase is a semantic hit.
    assert a(PARAPHRASE) == Answer(first_a.text, "semantic")
    assert upstream_calls(emu_a) == 1

    first_b = b(PARAPHRASE)
    if share:
        assert first_b == Answer(first_a.text, "semantic")
        assert upstream_calls(emu_b) == 0
        return
    assert first_b.text != first_a.text, "key B was served key A's answer by meaning"
    assert first_b.cache == "miss", f"key B's first request was a {first_b.cache}"
    assert upstream_calls(emu_b) == 1
    # B's own answers still serve B by meaning.
    assert b(QUESTION) == Answer(first_b.text, "semantic")
    assert a(PARAPHRASE) == Answer(first_a.text, "semantic")
    assert (upstream_calls(emu_a), upstream_calls(emu_b)) == (1, 1)


# --------------------------------------------------------------------------- two processes

_CHILD = textwrap.dedent(
    """
    import json, sys
    import anthropic
    import haikucache.anthropic
    from haikucache import Client, DiskStore, Engine
    from haikucache.testing import Emulator

    key, directory, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    emu = Emulator(seed=1)
    store = DiskStore(directory)
    engine = Engine(store=store, ledger=False)
    client = Client(api_key=key, base_url="http://emulator.test", transport=emu.transport(),
                    engine=engine, max_retries=0)
    with client:
        message = client.messages.create(**body)
    # Through the SDK door too: it labels calls with the credential's hash where the Client
    # uses the engine's namespace, so its key differs and it stores an entry of its own.
    sdk = haikucache.anthropic.wrap(
        anthropic.Anthropic(
            api_key=key, base_url="http://emulator.test", max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
        ),
        engine=engine,
    )
    with sdk:
        sdk.messages.create(**body)
    store.close()
    print(json.dumps({"cache": message.haikucache.cache, "text": message.content[0].text,
                      "upstream": emu.requests["messages"]}))
    """
)


@dataclass
class ChildFill:
    directory: Path
    process: subprocess.Popen[str]
    answer: dict[str, Any] | None = None

    def wait(self) -> dict[str, Any]:
        """What the child stored: key A's answer to QUESTION, through the Client door and the
        SDK door (each test's key B is its own, and key A only reads)."""
        if self.answer is None:
            out, err = self.process.communicate(timeout=60)
            assert self.process.returncode == 0, err
            self.answer = json.loads(out.strip().splitlines()[-1])
            assert self.answer["cache"] == "miss"
        return self.answer


@pytest.fixture(scope="module", autouse=True)
def child_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildFill]:
    """The child process, started with the module so that it runs alongside the other tests."""
    directory = tmp_path_factory.mktemp("two-processes") / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, KEY_A, str(directory), json.dumps(request(QUESTION))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield ChildFill(directory, child)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()


def test_two_processes_on_one_disk_store(
    door: DoorFactory, h: Harness, child_process: ChildFill
) -> None:
    """Key A's answer, stored by another process, is a miss for key B at every door, and key
    A at the same door finds it (the store really is shared across the processes)."""
    filled = child_process.wait()
    store = DiskStore(child_process.directory)
    h.on_close(store.close)
    engine = Engine(store=store, ledger=False)
    # A key of this test's own: what it stores cannot be found by the next door's test.
    key_b = f"sk-ant-api03-{uuid.uuid4().hex}"
    emu_b = Emulator(seed=2, batch_processing_seconds=0)
    first_b = door(h, emu_b, key_b, engine, None)(QUESTION)
    assert first_b.text != filled["text"], "key B was served the other process's key-A answer"
    assert first_b.cache == "miss"
    assert upstream_calls(emu_b) == 1
    emu_a = Emulator(seed=1)
    assert door(h, emu_a, KEY_A, engine, None)(QUESTION) == Answer(filled["text"], "hit")
    assert upstream_calls(emu_a) == 0
