"""batch()/abatch() through Message Batches (use_batches=True), on the emulator.

The batcher is haikucache's own (response-cache lookups, dedup, a journal, polling); the
emulator runs the batch lifecycle and bills batch results at 50 %.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from haikucache import Client, Engine, MemoryLedger, MemoryStore, RequestValidationError
from haikucache._batch_journal import DiskBatchJournal
from haikucache._batcher import Batcher
from haikucache._cli import main as cli
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


# --------------------------------------------------------------------------- the default batcher


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache home of the test's own: the default batcher journals there."""
    monkeypatch.setenv("HAIKUCACHE_HOME", str(tmp_path))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    return tmp_path


def batching(
    emu: Emulator, engine: Engine, *, base_url: str = "http://emulator.local", transport: Any = None
) -> ChatAnthropic:
    """A model with ``use_batches=True`` and no batcher of its own: it builds the default."""
    plain = ChatAnthropic(model=MODEL, api_key="test-key", base_url=base_url)
    upstream = transport if transport is not None else emu.httpx2_transport()
    model = wrap(plain, engine=engine, use_batches=True, upstream_transport=upstream)
    batcher = model.haikucache_batcher  # type: ignore[attr-defined]
    batcher.poll_interval = batcher.max_poll_interval = 0.01  # the emulator answers at once
    return model


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``, failing the test (not hanging it) if it does not return in time."""
    done: Future[Any] = Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    try:
        return done.result(seconds)
    except FutureTimeout:  # not the builtin before Python 3.11
        pytest.fail(f"no answer within {seconds} s")


@pytest.mark.parametrize("upstream", ["in-process", "loopback HTTP"])
def test_the_default_batcher_reaches_the_api_through_the_models_transport(
    emu: Emulator, engine: Engine, home: Path, upstream: str
) -> None:
    if upstream == "in-process":
        model = batching(emu, engine)
        replies = within(30, lambda: model.batch(["One", "Two", "Three"]))
    else:
        httpx2 = pytest.importorskip("httpx2")
        with emu.serve() as url, httpx2.HTTPTransport() as transport:
            model = batching(emu, engine, base_url=url, transport=transport)
            replies = within(30, lambda: model.batch(["One", "Two", "Three"]))
    assert [r.response_metadata["haikucache"]["batch"] for r in replies] == [True] * 3
    assert emu.requests["batches.create"] == 1 and emu.requests["messages"] == 0
    # The same key and engine as the model's realtime calls: those answers are now hits.
    again = model.invoke("Two")
    assert again.response_metadata["haikucache"]["cache"] == "hit"
    assert again.content == replies[1].content


async def test_the_default_batcher_serves_abatch_too(
    emu: Emulator, engine: Engine, home: Path
) -> None:
    model = batching(emu, engine)
    replies = await asyncio.wait_for(model.abatch(["One", "Two"]), 30)
    assert [r.response_metadata["haikucache"]["batch"] for r in replies] == [True] * 2
    assert emu.requests["batches.create"] == 1


def test_no_batch_is_left_open_once_batch_returns(
    emu: Emulator, engine: Engine, home: Path
) -> None:
    model = batching(emu, engine)
    journal = DiskBatchJournal(home / "batches")
    for i in range(5):
        (reply,) = within(30, functools.partial(model.batch, [f"Question {i}"]))
        assert reply.response_metadata["haikucache"]["batch"] is True
        # Closed before the answers were handed out, not some time after.
        assert [r.is_open for r in journal.records()] == [False] * (i + 1)
    journal.close()
    out = io.StringIO()
    assert cli(["batches", "list", "--open", "--json"], out=out) == 0
    assert json.loads(out.getvalue())["batches"] == []
    # A later resume (even one that takes over this live process's batches) has nothing to do.
    out = io.StringIO()
    code = cli(
        ["batches", "resume", "--json", "--force", "--base-url", "http://emulator.local"], out=out
    )
    assert code == 0 and json.loads(out.getvalue())["batches"] == []
    assert emu.requests["batches.create"] == 5 and len(emu.bill.entries) == 5
