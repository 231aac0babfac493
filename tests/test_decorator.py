"""``@llm`` and ``@memoize`` against the emulator: caching, prompt caching, structured output."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import inspect
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator
from typing_extensions import NotRequired, TypedDict

from haikucache import (
    APIResponseValidationError,
    AsyncClient,
    Client,
    ConfigurationError,
    Engine,
    ManualClock,
    MemoryLedger,
    Message,
    RequestValidationError,
    UsageError,
)
from haikucache._batcher import AsyncBatcher, Batcher
from haikucache._decorator import (
    Args,
    AsyncLLMFunction,
    AsyncMemoized,
    LLMFunction,
    Memoized,
    llm,
    memoize,
)
from haikucache._store import DiskStore, MemoryStore
from haikucache.testing import Emulator

LONG_SYSTEM = " ".join(
    f"Policy {i}: a passenger on route {i} may bring one cabin bag and one personal item."
    for i in range(400)
)


@pytest.fixture
def emu() -> Emulator:
    return Emulator()


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engine(ledger: MemoryLedger, clock: ManualClock) -> Engine:
    return Engine(ledger=ledger, store=MemoryStore(), clock=clock)


@pytest.fixture
def client(emu: Emulator, engine: Engine) -> Iterator[Client]:
    with Client(
        api_key="sk-test", base_url="http://emulator.test", transport=emu.transport(), engine=engine
    ) as c:
        yield c


@pytest.fixture
async def aclient(emu: Emulator, engine: Engine) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        api_key="sk-test", base_url="http://emulator.test", transport=emu.transport(), engine=engine
    ) as c:
        yield c


def sent_bodies(emu: Emulator) -> list[dict[str, Any]]:
    return [r.body for r in emu.log if r.endpoint == "messages"]


# --------------------------------------------------------------------------- @llm: basics


def test_a_repeat_is_answered_from_the_cache(emu: Emulator, client: Client) -> None:
    @llm(client=client, system="Answer in one sentence.")
    def explain(term: str) -> str:
        return f"What is {term}?"

    first = explain("prompt caching")
    again = explain("prompt caching")
    assert isinstance(first, str) and first
    assert again == first
    assert emu.requests["messages"] == 1
    other = explain("a batch")
    assert other != first
    assert emu.requests["messages"] == 2
    message = explain.message("prompt caching")
    assert isinstance(message, Message)
    assert message.haikucache is not None and message.haikucache.cache == "hit"
    assert emu.requests["messages"] == 2
    body = sent_bodies(emu)[0]
    assert body["system"] == "Answer in one sentence."
    assert body["messages"] == [{"role": "user", "content": "What is prompt caching?"}]
    assert body["model"] == "claude-haiku-4-5"


def test_returns_message(emu: Emulator, client: Client) -> None:
    @llm(client=client, returns="message", max_tokens=300)
    def ask(q: str) -> str:
        return q

    message = ask("Hello?")
    assert isinstance(message, Message)
    assert message.haikucache is not None and message.haikucache.cache == "miss"
    assert message.haikucache.key == ask.cache_key("Hello?")
    assert sent_bodies(emu)[0]["max_tokens"] == 300


def test_the_prompt_may_be_messages_or_a_full_request(emu: Emulator, client: Client) -> None:
    @llm(client=client, max_tokens=200, system="Be brief.")
    def chat(history: list[dict[str, str]]) -> list[dict[str, str]]:
        return history

    @llm(client=client, max_tokens=200, system="Be brief.")
    def raw(question: str) -> dict[str, Any]:
        return {"max_tokens": 64, "messages": [{"role": "user", "content": question}]}

    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a fact."},
    ]
    assert chat(history)
    assert raw("Why is the sky blue?")
    chat_body, raw_body = sent_bodies(emu)
    assert chat_body["messages"] == history
    assert chat_body["max_tokens"] == 200
    # The request dict's own fields win over the decorator's; the rest is filled in.
    assert raw_body["max_tokens"] == 64
    assert raw_body["system"] == "Be brief."
    assert raw.request("Why?")["messages"] == [{"role": "user", "content": "Why?"}]


@pytest.mark.parametrize(
    ("prompt", "param"),
    [
        (42, "prompt"),
        (b"bytes", "prompt"),
        (["not a message"], "messages"),
        ({"max_tokens": 10}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "ttl": 5}, "ttl"),
        ("", "messages.0.content"),
    ],
)
def test_a_bad_prompt_fails_before_any_request(
    emu: Emulator, client: Client, prompt: Any, param: str
) -> None:
    @llm(client=client)
    def bad() -> Any:
        return prompt

    with pytest.raises(RequestValidationError) as info:
        bad()
    assert param in str(info.value.param)
    assert emu.requests["messages"] == 0


def test_signature_name_doc_and_wrapped_are_kept(client: Client) -> None:
    def original(topic: str, *, words: int = 50) -> str:
        """Summarise a topic."""
        return f"Summarise {topic} in {words} words."

    decorated = llm(client=client)(original)
    assert isinstance(decorated, LLMFunction)
    assert decorated.__wrapped__ is original  # type: ignore[attr-defined]
    assert decorated.__name__ == "original"  # type: ignore[attr-defined]
    assert decorated.__doc__ == "Summarise a topic."
    assert inspect.signature(decorated) == inspect.signature(original)
    assert decorated.request("tides", words=10)["messages"][0]["content"] == (
        "Summarise tides in 10 words."
    )


def test_a_method_binds_self(emu: Emulator, client: Client) -> None:
    class Helper:
        def __init__(self, tone: str) -> None:
            self.tone = tone

        @llm(client=client)
        def ask(self, question: str) -> str:
            return f"In a {self.tone} tone: {question}"

    helper = Helper("friendly")
    assert helper.ask("Why?")
    assert sent_bodies(emu)[0]["messages"][0]["content"] == "In a friendly tone: Why?"
    assert helper.ask.cache_key("Why?") != Helper("formal").ask.cache_key("Why?")


# --------------------------------------------------------------------------- cache controls


def test_invalidate_and_bypass(emu: Emulator, client: Client, ledger: MemoryLedger) -> None:
    @llm(client=client)
    def ask(q: str) -> str:
        return q

    ask("One?")
    assert ask.invalidate("One?") is True
    assert ask.invalidate("One?") is False
    ask("One?")  # a miss again
    assert emu.requests["messages"] == 2
    ask.bypass("One?")  # not read …
    assert emu.requests["messages"] == 3
    ask.bypass("Two?")  # … and not written
    ask("Two?")
    assert emu.requests["messages"] == 5
    assert [e.cache for e in ledger.entries] == ["miss", "miss", "miss", "miss", "miss"]
    ask("Two?")
    assert ledger.entries[-1].cache == "hit"


def test_ttl_namespace_and_with_options(emu: Emulator, client: Client, clock: ManualClock) -> None:
    @llm(client=client, ttl=60, tags=["faq"])
    def ask(q: str) -> str:
        return q

    ask("Q?")
    clock.advance(30)
    ask("Q?")
    assert emu.requests["messages"] == 1
    clock.advance(31)
    ask("Q?")  # expired after 60 s
    assert emu.requests["messages"] == 2

    longer = ask.with_options(ttl=3600)
    assert longer.cache_key("Q?") == ask.cache_key("Q?")
    other_tenant = ask.with_options(namespace="tenant-b")
    assert other_tenant.cache_key("Q?") != ask.cache_key("Q?")
    other_tenant("Q?")
    assert emu.requests["messages"] == 3

    refresh = ask.with_options(no_cache=True)
    refresh("Q?")  # not read, but written
    assert emu.requests["messages"] == 4
    ask("Q?")
    assert emu.requests["messages"] == 4

    shorter = ask.with_options(max_tokens=32, temperature=0.0)
    assert shorter.request("Q?")["max_tokens"] == 32
    assert shorter.cache_key("Q?") != ask.cache_key("Q?")
    assert ask.request("Q?")["max_tokens"] == 1024  # the original is unchanged

    assert client.engine.store is not None
    assert client.engine.store.invalidate(tag="faq") >= 1

    with pytest.raises(ConfigurationError):
        ask.with_options(output=dict)
    with pytest.raises(ConfigurationError):
        ask.with_options(ttl=-1)


def test_no_store_option(emu: Emulator, client: Client) -> None:
    @llm(client=client, no_store=True)
    def ask(q: str) -> str:
        return q

    ask("Q?")
    ask("Q?")
    assert emu.requests["messages"] == 2


# --------------------------------------------------------------------------- prompt caching


def test_many_calls_sharing_a_long_system_prompt_read_the_prompt_cache(
    emu: Emulator, client: Client
) -> None:
    assert emu.count_tokens_of(LONG_SYSTEM) > 4096

    @llm(client=client, system=LONG_SYSTEM, max_tokens=256)
    def answer(question: str) -> str:
        return question

    questions = [f"May passenger {i} bring a guitar?" for i in range(8)]
    for question in questions:
        answer(question)
    entries = emu.bill.entries
    assert len(entries) == len(questions)
    reads = [e.usage["cache_read_input_tokens"] for e in entries]
    assert reads[0] == 0
    assert all(r >= emu.count_tokens_of(LONG_SYSTEM) for r in reads[1:])
    assert entries[0].usage["cache_creation_input_tokens"] > 4096

    # The same calls without breakpoints cost several times more.
    plain = Emulator()
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=plain.transport(),
        engine=Engine(ledger=False, store=MemoryStore(), planner="off"),
    ) as unplanned:
        baseline = llm(client=unplanned, system=LONG_SYSTEM, max_tokens=256)(answer.__wrapped__)  # type: ignore[attr-defined]
        for question in questions:
            baseline(question)
    assert plain.bill.tokens()["cache_read_input_tokens"] == 0
    assert emu.bill.total_usd < 0.5 * plain.bill.total_usd


# --------------------------------------------------------------------------- async


async def test_async_calls_in_flight_make_one_request(
    emu: Emulator, aclient: AsyncClient, ledger: MemoryLedger
) -> None:
    @llm(client=aclient, system="Be brief.")
    async def ask(q: str) -> str:
        await asyncio.sleep(0)
        return q

    assert isinstance(ask, AsyncLLMFunction)
    emu.inject("latency", seconds=0.3)  # the first request is slow: the others join it
    answers = await asyncio.gather(*(ask("What is single-flight?") for _ in range(20)))
    assert emu.requests["messages"] == 1
    assert len(set(answers)) == 1 and answers[0]
    assert sorted(e.cache for e in ledger.entries) == ["hit"] * 19 + ["miss"]

    assert await ask("What is single-flight?") == answers[0]
    assert emu.requests["messages"] == 1
    message = await ask.message("What is single-flight?")
    assert message.haikucache is not None
    assert message.haikucache.key == await ask.cache_key("What is single-flight?")
    assert (await ask.request("x"))["messages"] == [{"role": "user", "content": "x"}]


async def test_async_controls_and_stream(emu: Emulator, aclient: AsyncClient) -> None:
    @llm(client=aclient)
    async def ask(q: str) -> str:
        return q

    deltas = [d async for d in ask.stream("Stream?")]
    assert len(deltas) > 1
    assert await ask("Stream?") == "".join(deltas)  # the streamed answer was stored
    assert emu.requests["messages"] == 1
    assert await ask.invalidate("Stream?") is True
    await ask.bypass("Stream?")
    await ask("Stream?")
    assert emu.requests["messages"] == 3
    fresh = ask.with_options(no_cache=True)
    await fresh("Stream?")
    assert emu.requests["messages"] == 4


# --------------------------------------------------------------------------- streaming


def test_stream_yields_deltas_and_replays_a_stored_answer(emu: Emulator, client: Client) -> None:
    @llm(client=client)
    def ask(q: str) -> str:
        return q

    live = list(ask.stream("Tell me about tides."))
    assert len(live) > 1
    replayed = list(ask.stream("Tell me about tides."))
    assert "".join(replayed) == "".join(live) == ask("Tell me about tides.")
    assert emu.requests["messages"] == 1
    assert sent_bodies(emu)[0]["stream"] is True


def test_stream_checks_the_prompt_before_returning(emu: Emulator, client: Client) -> None:
    @llm(client=client)
    def bad() -> Any:
        return 3

    with pytest.raises(RequestValidationError):
        bad.stream()
    assert emu.requests["messages"] == 0


# --------------------------------------------------------------------------- structured output


class City(BaseModel):
    """A city and how many people live there."""

    name: str
    population: int
    districts: list[str]


class Point(TypedDict):
    x: int
    y: int
    label: NotRequired[str]


def test_a_pydantic_return_annotation_gives_a_validated_model(
    emu: Emulator, client: Client
) -> None:
    @llm(client=client, system="Extract the city.")
    def extract(text: str) -> City:
        return text  # type: ignore[return-value]

    city = extract("Lyon has half a million people.")
    assert isinstance(city, City)
    assert isinstance(city.population, int) and city.name
    body = sent_bodies(emu)[0]
    assert body["tool_choice"] == {"type": "tool", "name": "City"}
    (tool,) = body["tools"]
    assert tool["name"] == "City"
    assert tool["description"] == "A city and how many people live there."
    assert tool["input_schema"]["required"] == ["name", "population", "districts"]
    assert extract("Lyon has half a million people.") == city  # a hit, parsed again
    assert emu.requests["messages"] == 1
    with pytest.raises(UsageError):
        extract.stream("Lyon")


def test_output_accepts_a_typeddict_and_keeps_the_callers_tools(
    emu: Emulator, client: Client
) -> None:
    weather_tool = {
        "name": "get_weather",
        "description": "Weather at a place",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }

    @llm(client=client, output=Point, tools=[weather_tool])
    def locate(text: str) -> str:
        return text

    point = locate("The point is at 3, 4.")
    assert isinstance(point, dict)
    assert isinstance(point["x"], int) and isinstance(point["y"], int)
    assert set(point) <= {"x", "y", "label"}
    body = sent_bodies(emu)[0]
    assert [t["name"] for t in body["tools"]] == ["get_weather", "Point"]
    assert body["tool_choice"] == {"type": "tool", "name": "Point"}
    assert body["tools"][1]["input_schema"]["required"] == ["x", "y"]


def test_a_typeddict_annotation_and_returns_message(emu: Emulator, client: Client) -> None:
    @llm(client=client, returns="message", output=Point)
    def raw(text: str) -> str:
        return text

    message = raw("3, 4")
    assert isinstance(message, Message)
    assert message.stop_reason == "tool_use"
    assert sent_bodies(emu)[0]["tool_choice"]["name"] == "Point"


class Strict(BaseModel):
    value: str

    @field_validator("value")
    @classmethod
    def never(cls, value: str) -> str:
        raise ValueError("no value is ever good enough")


def test_an_answer_that_does_not_validate_raises_and_is_not_served_again(
    emu: Emulator, client: Client
) -> None:
    @llm(client=client, output=Strict)
    def judge(text: str) -> str:
        return text

    with pytest.raises(APIResponseValidationError, match="does not validate as Strict"):
        judge("anything")
    with pytest.raises(APIResponseValidationError):
        judge("anything")
    assert emu.requests["messages"] == 2  # the unusable answer was dropped from the cache


def test_output_conflicts_are_configuration_errors(client: Client) -> None:
    with pytest.raises(TypeError, match="pydantic model class or a TypedDict"):
        llm(client=client, output=int)
    with pytest.raises(ConfigurationError):
        llm(client=client, output=City, tool_choice={"type": "auto"})
    with pytest.raises(ConfigurationError):
        llm(client=client, output=City, returns="text")  # type: ignore[call-overload]

    @llm(client=client, output=City, tools=[{"name": "City", "input_schema": {"type": "object"}}])
    def clash(text: str) -> str:
        return text

    with pytest.raises(RequestValidationError, match="already defined"):
        clash("x")


def test_returns_text_ignores_a_structured_annotation(emu: Emulator, client: Client) -> None:
    @llm(client=client, returns="text")
    def plain(text: str) -> City:
        return text  # type: ignore[return-value]

    assert isinstance(plain("Lyon"), str)
    assert "tools" not in sent_bodies(emu)[0]


# --------------------------------------------------------------------------- misuse


def test_misuse_is_a_clear_type_error(client: Client) -> None:
    with pytest.raises(TypeError, match=r"must be called: write @haikucache.llm\(\)"):

        @llm  # type: ignore[call-overload]
        def bare() -> str:
            return "x"

    with pytest.raises(TypeError, match="decorates a function, got int"):
        llm(client=client)(42)  # type: ignore[call-overload]

    class NotAFunction:
        pass

    with pytest.raises(TypeError, match="decorates a function, got type"):
        llm(client=client)(NotAFunction)  # type: ignore[call-overload]

    with pytest.raises(TypeError, match="below @staticmethod"):
        llm(client=client)(staticmethod(lambda: "x"))  # type: ignore[call-overload]

    with pytest.raises(TypeError, match="keyword arguments only"):
        llm("claude-haiku-4-5")  # type: ignore[call-overload]

    with pytest.raises(TypeError, match=r"must be called: write @haikucache.memoize\(\)"):

        @memoize  # type: ignore[arg-type]
        def bare_memo() -> int:
            return 1

    with pytest.raises(TypeError, match="decorates a function"):
        memoize()("not a function")  # type: ignore[call-overload]


def test_unresolvable_annotation_is_reported(client: Client) -> None:
    def later() -> Undefined:  # type: ignore[name-defined]  # noqa: F821
        return "x"

    with pytest.raises(TypeError, match="cannot resolve the return annotation"):
        llm(client=client)(later)
    assert isinstance(llm(client=client, returns="text")(later), LLMFunction)


def test_client_and_options_are_checked(client: Client) -> None:
    with pytest.raises(ConfigurationError, match=r"needs a haikucache\.AsyncClient"):

        @llm(client=client)
        async def wrong(q: str) -> str:
            return q

    with pytest.raises(ConfigurationError):
        llm(client=client, engine=client.engine)
    with pytest.raises(ConfigurationError):
        llm(client="nope")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError):
        llm(returns="json")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError):
        llm(ttl=0)
    with pytest.raises(ConfigurationError):
        llm(tags="faq")
    with pytest.raises(ConfigurationError, match="semantic"):
        llm(semantic={"threshold": 0.9})


# --------------------------------------------------------------------------- default client


def test_the_default_client_comes_from_the_environment(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    @llm(store="memory")
    def ask(q: str) -> str:
        return q

    with pytest.raises(ConfigurationError, match="no Anthropic credentials"):
        ask("Hi?")  # checked at the first call, not at decoration
    with emu.serve() as base_url:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-env")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
        try:
            assert ask("Hi?") == ask("Hi?")
            assert emu.requests["messages"] == 1
            assert emu.log[-1].headers["x-api-key"] == "sk-env"
        finally:
            ask.client.close()

        @llm(store="memory")
        async def aask(q: str) -> str:
            return q

        async def twice() -> tuple[str, str]:
            try:
                return await aask("Hi?"), await aask("Hi?")
            finally:
                await aask.client.close()  # the default async client belongs to this loop

        first, second = asyncio.run(twice())
        assert first == second
        assert emu.requests["messages"] == 2  # its own store: one more miss, then a hit


# --------------------------------------------------------------------------- batch


@pytest.fixture
def batch_emu() -> Emulator:
    # Batches end 0.2 s after they are created, so a test waits a poll or two, not hours.
    return Emulator(batch_processing_seconds=0.2)


def fast_batcher(client: Client) -> Batcher:
    return Batcher(client, journal="memory", poll_interval=0.05, max_poll_interval=0.2)


def test_batch_of_1000_calls_costs_about_half_of_realtime(batch_emu: Emulator) -> None:
    engine = Engine(ledger=MemoryLedger(), store=MemoryStore())
    with Client(
        api_key="sk-test", base_url="http://e.test", transport=batch_emu.transport(), engine=engine
    ) as client:

        @llm(client=client, system="Answer briefly.", max_tokens=300)
        def square(n: int) -> str:
            return f"What is {n} squared?"

        with fast_batcher(client) as batcher:
            answers = square.batch(range(1000), batcher=batcher)
        assert len(answers) == 1000
        assert all(isinstance(a, str) and a for a in answers)
        assert batch_emu.requests["batches.create"] == 1
        assert batch_emu.requests["messages"] == 0
        assert len(batch_emu.bill) == 1000 and all(e.batch for e in batch_emu.bill.entries)
        # Every answer was stored: the same call realtime is now a local hit.
        assert square(7) == answers[7]
        assert batch_emu.requests["messages"] == 0

    # The same 1,000 calls realtime, on a fresh emulator, without any cache.
    realtime = Emulator()
    with Client(
        api_key="sk-test",
        base_url="http://e.test",
        transport=realtime.transport(),
        engine=Engine(ledger=False),
    ) as plain_client:
        plain = square.with_options(client=plain_client)
        assert [plain(n) for n in range(1000)] == answers  # the emulator is deterministic
    ratio = batch_emu.bill.total_usd / realtime.bill.total_usd
    assert 0.45 <= ratio <= 0.55, ratio


def test_batch_with_the_default_batcher_and_args(batch_emu: Emulator, tmp_path: Path) -> None:
    engine = Engine(ledger=MemoryLedger(), store=MemoryStore())
    with Client(
        api_key="sk-test", base_url="http://e.test", transport=batch_emu.transport(), engine=engine
    ) as client:

        @llm(client=client)
        def describe(thing: str, *, words: int = 20) -> str:
            return f"Describe {thing} in {words} words."

        describe("a cat")  # already cached: answered without a batch
        answers = describe.batch(["a cat", ("a dog",), Args("a fish", words=5), "a cat"])
        assert answers[0] == answers[3] == describe("a cat")
        assert answers[2] == describe("a fish", words=5)
        # Two distinct new calls went into one batch; the cached one was not sent.
        assert batch_emu.requests["batches.create"] == 1
        assert len([e for e in batch_emu.bill.entries if e.batch]) == 2

        with pytest.raises(TypeError, match="one item per call"):
            describe.batch("not a list")
        empty = llm(client=client)(lambda: "")
        with pytest.raises(RequestValidationError):
            empty.batch([()])  # a bad prompt fails before anything is sent
        assert batch_emu.requests["batches.create"] == 1


def test_batch_structured_results_and_failures(batch_emu: Emulator) -> None:
    engine = Engine(ledger=MemoryLedger(), store=MemoryStore())
    with Client(
        api_key="sk-test", base_url="http://e.test", transport=batch_emu.transport(), engine=engine
    ) as client:

        @llm(client=client, output=City)
        def extract(text: str) -> str:
            return text

        @llm(client=client, output=Strict)
        def judge(text: str) -> str:
            return text

        with fast_batcher(client) as batcher:
            cities = extract.batch(["Lyon", "Nice"], batcher=batcher)
            judged = judge.batch(["a", "b"], batcher=batcher, return_exceptions=True)
            with pytest.raises(APIResponseValidationError):
                judge.batch(["c"], batcher=batcher)
        assert all(isinstance(c, City) for c in cities)
        assert all(isinstance(j, APIResponseValidationError) for j in judged)


async def test_abatch_through_an_async_client(batch_emu: Emulator) -> None:
    engine = Engine(ledger=MemoryLedger(), store=MemoryStore())
    async with AsyncClient(
        api_key="sk-test", base_url="http://e.test", transport=batch_emu.transport(), engine=engine
    ) as aclient:

        @llm(client=aclient)
        async def ask(q: str) -> str:
            return q

        answers = await ask.abatch(["One?", "Two?", "One?"])
        assert answers[0] == answers[2] and answers[0] != answers[1]
        assert batch_emu.requests["batches.create"] == 1
        assert await ask("Two?") == answers[1]  # stored in the same engine's cache
        assert batch_emu.requests["messages"] == 0

        sync_client = Client(
            api_key="sk-test",
            base_url="http://e.test",
            transport=batch_emu.transport(),
            engine=engine,
        )
        async with AsyncBatcher(
            sync_client, journal="memory", poll_interval=0.05, max_poll_interval=0.2
        ) as batcher:
            more = await ask.abatch(["Three?"], batcher=batcher)
        sync_client.close()
        assert more == [await ask("Three?")]
        assert batch_emu.requests["batches.create"] == 2


def test_args_of_batch_items() -> None:
    assert Args.of(("a", 1)).args == ("a", 1)
    assert Args.of("a").args == ("a",)
    explicit = Args("a", words=3)
    assert Args.of(explicit) is explicit
    assert repr(explicit) == "Args('a', words=3)"


# --------------------------------------------------------------------------- @memoize


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True)
class Box:
    width: int
    height: int


class Summary(BaseModel):
    title: str
    score: float


def test_memoize_hits_misses_and_argument_binding() -> None:
    calls: list[tuple[Any, ...]] = []

    @memoize(store="memory")
    def area(width: int, height: int = 2, *, unit: str = "m") -> str:
        calls.append((width, height, unit))
        return f"{width * height} {unit}²"

    assert isinstance(area, Memoized)
    assert area(3) == "6 m²"
    assert area(3, 2) == area(width=3) == area(3, height=2, unit="m") == "6 m²"
    assert len(calls) == 1
    assert area(3, unit="cm") == "6 cm²"
    assert len(calls) == 2
    assert area.cache_key(3) == area.cache_key(width=3, height=2)
    assert area.cache_key(3).startswith("hm1:")
    assert area.__wrapped__(4) == "8 m²"  # type: ignore[attr-defined]
    assert area.bypass(3) == "6 m²"
    assert len(calls) == 4
    assert area.invalidate(3) is True
    assert area.invalidate(3) is False
    area(3)
    assert len(calls) == 5


def test_memoize_keys_are_exact_and_stable() -> None:
    @memoize(store="memory", name="probe")
    def probe(value: Any) -> int:
        return 1

    keys = {
        probe.cache_key(v)
        for v in (
            1,
            1.0,
            True,
            "1",
            (1,),
            [1],
            {1},
            frozenset({1}),
            {"a": 1},
            {1: "a"},
            None,
            b"1",
            Colour.RED,
            Box(1, 1),
            Summary(title="t", score=1.0),
            math.inf,
        )
    }
    assert len(keys) == 16  # no two of these share a key
    assert probe.cache_key({"a": 1, "b": 2}) == probe.cache_key({"b": 2, "a": 1})
    assert probe.cache_key({3, 1, 2}) == probe.cache_key({1, 2, 3})
    # Pinned: keys must not change between releases, or every stored result is lost.
    assert probe.cache_key({"a": [1, (2, 3)]}) == "hm1:823e1e93f2f0f1d1e9b2fc01bcf31a8f"

    @memoize(store="memory", name="probe", namespace="other")
    def other(value: Any) -> int:
        return 1

    assert other.cache_key(1) != probe.cache_key(1)


def test_memoize_rejects_arguments_it_cannot_key() -> None:
    ran: list[int] = []

    @memoize(store="memory")
    def f(value: Any) -> int:
        ran.append(1)
        return 1

    with pytest.raises(TypeError, match=r"cannot key argument 'value' of type lock"):
        f(threading.Lock())
    with pytest.raises(TypeError, match=r"argument 'value'\[0\]\['k'\] of type object"):
        f([{"k": object()}])
    with pytest.raises(TypeError, match="missing a required argument"):
        f()  # type: ignore[call-arg]
    assert ran == []


def test_memoize_values_round_trip_exactly(tmp_path: Path) -> None:
    value = {
        "tuple": (1, "a"),
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "bytes": b"\x00\xff",
        "int keys": {1: "one", 2: "two"},
        "nan": math.inf,
        "tag-like": {"$hc": "tuple", "v": [1]},
        "nested": [None, True, 1.5, "s"],
    }
    store = DiskStore(tmp_path / "memo")

    @memoize(store=store, name="values")
    def make() -> dict[str, Any]:
        return value

    assert make() == value
    store.close()
    reopened = DiskStore(tmp_path / "memo")

    @memoize(store=reopened, name="values")
    def make_again() -> dict[str, Any]:
        raise AssertionError("should be served from the store")

    assert make_again() == value
    assert type(make_again()["tuple"]) is tuple
    reopened.close()


def test_memoize_a_model_result_and_reject_an_unstorable_one() -> None:
    @memoize(store="memory")
    def summarise(text: str) -> Summary:
        return Summary(title=text.upper(), score=0.5)

    first = summarise("hi")
    again = summarise("hi")
    assert isinstance(again, Summary) and again == first and again is not first

    @memoize(store="memory")
    def unstorable() -> object:
        return threading.Lock()

    with pytest.raises(TypeError, match="cannot store the result of type lock"):
        unstorable()


def test_memoize_ttl_on_an_injected_clock() -> None:
    clock = ManualClock()
    calls = []

    @memoize(store="memory", ttl=10, clock=clock)
    def now_ish(x: int) -> int:
        calls.append(x)
        return x

    now_ish(1)
    clock.advance(9)
    now_ish(1)
    assert len(calls) == 1
    clock.advance(2)
    now_ish(1)
    assert len(calls) == 2


def test_memoize_threads_compute_once() -> None:
    calls = []
    gate = threading.Event()

    @memoize(store="memory")
    def slow(x: int) -> int:
        calls.append(x)
        gate.wait(5)
        return x * 2

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(21))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert results == [42] * 8
    assert calls == [21]


async def test_memoize_async_in_flight_runs_once() -> None:
    calls = []

    @memoize(store="memory")
    async def fetch(x: int) -> list[int]:
        calls.append(x)
        await asyncio.sleep(0.1)
        return [x, x]

    assert isinstance(fetch, AsyncMemoized)
    results = await asyncio.gather(*(fetch(7) for _ in range(10)))
    assert results == [[7, 7]] * 10
    assert calls == [7]
    assert await fetch(7) == [7, 7]
    assert calls == [7]
    assert await fetch.bypass(7) == [7, 7]
    assert calls == [7, 7]
    assert await fetch.invalidate(7) is True
    await fetch(7)
    assert calls == [7, 7, 7]
    assert fetch.cache_key(7).startswith("hm1:")


def test_memoize_options_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        memoize(ttl=0)
    with pytest.raises(ConfigurationError):
        memoize(namespace="")
    with pytest.raises(ConfigurationError):
        memoize(store="cloud")
    with pytest.raises(ConfigurationError):
        memoize(store=42)  # type: ignore[arg-type]


def test_memoize_default_store_is_on_disk() -> None:
    @memoize()
    def f(x: int) -> int:
        return x + 1

    assert f(1) == 2
    assert isinstance(f.store, DiskStore)
    assert f.store.directory.name == "memoize"
    assert f.invalidate(1) is True


def test_memoize_partial_functions() -> None:
    def power(base: int, exp: int) -> int:
        return base**exp

    square = memoize(store="memory", name="square")(functools.partial(power, exp=2))
    assert square(4) == 16
    assert square.cache_key(4) == square.cache_key(base=4)


# --------------------------------------------------------------------------- semantic


def bag_of_words(texts: list[str]) -> Any:
    """A small, deterministic embedder: words hashed into 256 buckets (case and punctuation
    ignored), so rewordings with the same words score 1.0 and a changed word scores less."""
    import numpy as np
    import xxhash

    rows = np.zeros((len(texts), 256), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in "".join(c if c.isalnum() else " " for c in text.lower()).split():
            rows[i, xxhash.xxh3_64_intdigest(word.encode()) % 256] += 1.0
    return rows


def semantic_config() -> Any:
    from haikucache._semantic import SemanticConfig

    return SemanticConfig(embedder=bag_of_words, name="bag-of-words", strict=True)


def test_llm_semantic_lookup(emu: Emulator) -> None:
    @llm(semantic=semantic_config(), store=MemoryStore(), system="Answer briefly.")
    def ask(question: str) -> str:
        return question

    client = Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emu.transport(),
        engine=Engine(ledger=False, store=MemoryStore(), semantic=semantic_config()),
    )
    # semantic= belongs to the engine the decorator builds: not with client= or engine=.
    with pytest.raises(ConfigurationError, match="engine's setting"):
        llm(client=client, semantic=semantic_config())
    client.close()

    with emu.serve() as base_url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANTHROPIC_API_KEY", "sk-env")
        patch.setenv("ANTHROPIC_BASE_URL", base_url)
        try:
            first = ask("What is the capital of France?")
            same = ask.message("what is the capital of France")
            other = ask.message("What is the capital of Spain?")
        finally:
            ask.client.close()
    assert same.haikucache is not None and same.haikucache.cache == "semantic"
    assert same.haikucache.similarity == pytest.approx(1.0)
    assert same.content[0].text == first  # type: ignore[union-attr]
    assert other.haikucache is not None and other.haikucache.cache == "miss"
    assert emu.requests["messages"] == 2


def test_memoize_semantic_lookup() -> None:
    calls: list[str] = []

    @memoize(store="memory", semantic=semantic_config())
    def answer(question: str) -> str:
        calls.append(question)
        return f"answer #{len(calls)}"

    assert answer("How many moons does Mars have?") == "answer #1"
    assert answer("how many moons does mars have") == "answer #1"  # the same words
    assert answer("How many moons does Jupiter have?") == "answer #2"  # another name
    assert answer("How many moons does Mars not have?") == "answer #3"  # negated
    assert answer("  ") == "answer #4"  # blank text is matched exactly only
    assert len(calls) == 4

    with pytest.raises(ConfigurationError, match="one string argument"):

        @memoize(store="memory", semantic=semantic_config())
        def two(a: str, b: str) -> str:
            return a + b

    with pytest.raises(ConfigurationError):
        memoize(semantic="yes")  # type: ignore[arg-type]


async def test_memoize_semantic_lookup_async() -> None:
    calls: list[str] = []

    @memoize(store="memory", semantic=semantic_config())
    async def answer(question: str) -> str:
        calls.append(question)
        return question.upper()

    assert await answer("Is the museum open on Sunday?") == "IS THE MUSEUM OPEN ON SUNDAY?"
    assert await answer("is the museum open on sunday") == "IS THE MUSEUM OPEN ON SUNDAY?"
    assert await answer("Is the museum open on Monday?") == "IS THE MUSEUM OPEN ON MONDAY?"
    assert len(calls) == 2


def test_memoize_semantic_embedder_failure_is_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    from haikucache._semantic import SemanticConfig

    def broken(texts: list[str]) -> Any:
        raise RuntimeError("model not loaded")

    calls: list[str] = []

    @memoize(store="memory", semantic=SemanticConfig(embedder=broken, name="broken"))
    def answer(question: str) -> str:
        calls.append(question)
        return question

    assert answer("Hello there") == "Hello there"
    assert answer("Hello there") == "Hello there"  # the exact key still hits
    assert calls == ["Hello there"]
    assert "the embedder failed" in caplog.text


# --------------------------------------------------------------------------- Redis


async def test_memoize_async_over_redis_is_shared(redis_url: str) -> None:
    from haikucache._store import RedisStore

    prefix = f"memo-{time.monotonic_ns()}:"
    calls: list[str] = []

    def make() -> Any:
        store = RedisStore(redis_url, prefix=prefix, strict=True)

        @memoize(store=store, name="report", ttl=600)
        async def report(quarter: str) -> Summary:
            calls.append(quarter)
            return Summary(title=f"Report {quarter}", score=0.75)

        return report, store

    first, store_a = make()
    second, store_b = make()  # another "process": its own connection, the same Redis
    try:
        made = await first("Q3")
        found = await second("Q3")
        assert isinstance(found, Summary) and found == made
        assert calls == ["Q3"]
        assert await second.invalidate("Q3") is True
        await first("Q3")
        assert calls == ["Q3", "Q3"]
    finally:
        await store_a.aclose()
        await store_b.aclose()
