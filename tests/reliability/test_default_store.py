"""One response-cache default at every door (issue 12, item 3).

A door given no engine builds its own, and that engine keeps answers on disk
(:data:`haikucache.DEFAULT_STORE`, ``"disk"``: ``$HAIKUCACHE_HOME/responses``, private to the
user). So a second, fresh door object — a new engine, nothing in memory — answers a repeat
from disk, for the same key only; and ``store=None`` turns the response cache off.

Each door is built exactly as its README section shows, with nothing but a key, an upstream
and (for the second half) ``store=None``. The root ``conftest.py`` gives every test its own
cache home (``$HAIKUCACHE_HOME``).
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic

import haikucache
import haikucache.anthropic as hca
from haikucache import DEFAULT_STORE, AsyncClient, Batcher, Client, DiskStore, MemoryBatchJournal
from haikucache.testing import Emulator
from langchain_haikucache import wrap as langchain_wrap
from llama_index.llms.haikucache import HaikuCache

MODEL = "claude-haiku-4-5"
BASE_URL = "http://emulator.test"
KEY_A = "sk-ant-api03-default-a"
KEY_B = "sk-ant-api03-default-b"
QUESTION = "Which gate does the morning flight leave from?"
MAX_TOKENS = 1024

#: ``store`` is the door's store argument: ``...`` leaves the default.
Door = Callable[[Emulator, str, Any], Callable[[str], str]]


def _params(question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": question}],
    }


def _store_kwargs(store: Any) -> dict[str, Any]:
    return {} if store is ... else {"store": store}


def client_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    def ask(question: str) -> str:
        engine = (
            {} if store is ... else {"engine": haikucache.Engine.for_credentials(key, store=store)}
        )
        with Client(
            api_key=key, base_url=BASE_URL, transport=emu.transport(), max_retries=0, **engine
        ) as client:
            info = client.messages.create(**_params(question)).haikucache
            assert info is not None
            return info.cache

    return ask


def async_client_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    async def aask(question: str) -> str:
        engine = (
            {} if store is ... else {"engine": haikucache.Engine.for_credentials(key, store=store)}
        )
        async with AsyncClient(
            api_key=key, base_url=BASE_URL, transport=emu.transport(), max_retries=0, **engine
        ) as client:
            info = (await client.messages.create(**_params(question))).haikucache
            assert info is not None
            return info.cache

    return lambda question: asyncio.run(aask(question))


def sdk_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    def ask(question: str) -> str:
        raw = anthropic.Anthropic(
            api_key=key,
            base_url=BASE_URL,
            http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
            max_retries=0,
        )
        client = hca.wrap(raw, **_store_kwargs(store))
        try:
            response = client.messages.with_raw_response.create(**_params(question))
            return str(response.headers[hca.CACHE_HEADER])
        finally:
            client.close()

    return ask


def langchain_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    def ask(question: str) -> str:
        model = langchain_wrap(
            ChatAnthropic(
                model=MODEL, api_key=key, base_url=BASE_URL, max_tokens=MAX_TOKENS, max_retries=0
            ),
            upstream_transport=emu.httpx2_transport(),
            **_store_kwargs(store),
        )
        return str(model.invoke(question).response_metadata["haikucache"]["cache"])

    return ask


def llamaindex_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    def ask(question: str) -> str:
        llm = HaikuCache(
            api_key=key,
            base_url=BASE_URL,
            transport=emu.transport(),
            max_tokens=MAX_TOKENS,
            max_retries=0,
            **_store_kwargs(store),
        )
        return str(llm.complete(question).additional_kwargs["haikucache"]["cache"])

    return ask


def decorator_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    """The decorator's default client is one per process, made from the environment on
    first use: each ask runs in a new process (a fresh door in the truest sense)."""
    server = emu.start_server()
    _servers.append(server)
    store_arg = "" if store is ... else f", store={store!r}"
    script = textwrap.dedent(
        f"""
        import sys, haikucache

        @haikucache.llm(returns="message", max_tokens={MAX_TOKENS}{store_arg})
        def answer(q: str) -> str:
            return q

        for question in sys.argv[1:]:
            print(answer(question).haikucache.cache)
        """
    )

    def ask(question: str) -> str:
        env = {**os.environ, "ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": str(server.base_url)}
        done = subprocess.run(
            [sys.executable, "-c", script, question],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    return ask


def batcher_door(emu: Emulator, key: str, store: Any) -> Callable[[str], str]:
    def ask(question: str) -> str:
        engine = (
            {} if store is ... else {"engine": haikucache.Engine.for_credentials(key, store=store)}
        )
        with (
            Client(
                api_key=key, base_url=BASE_URL, transport=emu.transport(), max_retries=0, **engine
            ) as client,
            Batcher(
                client, journal=MemoryBatchJournal(), max_wait=0.0, poll_interval=0.01
            ) as batcher,
        ):
            [message] = batcher.map([_params(question)])
        assert isinstance(message, haikucache.Message) and message.haikucache is not None
        return message.haikucache.cache

    return ask


_servers: list[Any] = []

DOORS: dict[str, Door] = {
    "client": client_door,
    "async-client": async_client_door,
    "sdk-wrap": sdk_door,
    "langchain-wrap": langchain_door,
    "llamaindex": llamaindex_door,
    "decorator": decorator_door,
    "batcher": batcher_door,
}


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while _servers:
        _servers.pop().stop()


def cache_home() -> Path:
    """This test's own cache home (set by the root ``conftest.py``)."""
    return Path(os.environ["HAIKUCACHE_HOME"])


def upstream_calls(emu: Emulator) -> int:
    return emu.requests["messages"] + emu.requests["batches.create"]


def test_the_default_is_the_disk_store() -> None:
    assert DEFAULT_STORE == "disk"


@pytest.mark.parametrize("name", list(DOORS))
def test_a_fresh_door_answers_a_repeat_from_disk_for_the_same_key_only(name: str) -> None:
    emu = Emulator(batch_processing_seconds=0)
    door = DOORS[name]
    assert door(emu, KEY_A, ...)(QUESTION) == "miss"
    # A new door object: a new engine, nothing in memory. Only the disk can answer.
    assert door(emu, KEY_A, ...)(QUESTION) == "hit"
    assert upstream_calls(emu) == 1
    # Another key never meets that answer, default store or not.
    assert door(emu, KEY_B, ...)(QUESTION) == "miss"
    assert upstream_calls(emu) == 2

    directory = cache_home() / "responses"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    with DiskStore(directory) as store:
        assert store.stats().entries == 2


@pytest.mark.parametrize("name", list(DOORS))
def test_store_none_turns_the_response_cache_off(name: str) -> None:
    emu = Emulator(batch_processing_seconds=0)
    door = DOORS[name]
    ask = door(emu, KEY_A, None)
    assert [ask(QUESTION), ask(QUESTION)] == ["miss", "miss"]
    assert upstream_calls(emu) == 2
    assert not (cache_home() / "responses").exists()
