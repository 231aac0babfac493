"""The anthropic SDK door: ``haikucache.anthropic.wrap(client)`` against the emulator.

The newest SDK (httpx2) runs here, in-process through ``emu.httpx2_transport()`` and over a
loopback server; both hooks (the SDK's middleware and the transport fallback) are exercised.
The oldest supported SDK (httpx) is covered in tests/fidelity/test_sdk_door_compat.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import pytest

import haikucache
import haikucache.anthropic as hca
from haikucache import CallInfo, Engine, ManualClock, MemoryLedger, MemoryStore
from haikucache.testing import Emulator

HOOKS = ["middleware", "transport"]
MODEL = "claude-haiku-4-5"
ASK: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1024,
    "system": "Answer in two sentences.",
    "messages": [{"role": "user", "content": "What is the baggage allowance?"}],
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city", "unit"],
    },
}


@pytest.fixture
def emu() -> Emulator:
    return Emulator(batch_processing_seconds=0)


def sdk(emu: Emulator, api_key: str = "sk-test-a", **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=api_key,
        base_url="http://emulator.test",
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
        max_retries=kwargs.pop("max_retries", 0),
        **kwargs,
    )


def async_sdk(emu: Emulator, api_key: str = "sk-test-a") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url="http://emulator.test",
        http_client=anthropic.DefaultAsyncHttpxClient(transport=emu.httpx2_transport()),
        max_retries=0,
    )


def wrapped(
    emu: Emulator, hook: str = "middleware", *, api_key: str = "sk-test-a", **options: Any
) -> anthropic.Anthropic:
    options.setdefault("store", MemoryStore())
    options.setdefault("ledger", MemoryLedger())
    return hca.wrap(sdk(emu, api_key), hook=hook, **options)  # type: ignore[arg-type]


def info(obj: Any) -> CallInfo:
    found = hca.info(obj)
    assert found is not None
    return found


def long_text(emu: Emulator, tokens: int) -> str:
    vocab = "fare rules apply to every passenger who changes a booking before departure".split()
    words: list[str] = []
    while emu.count_tokens_of(" ".join(words)) < tokens:
        words.extend(vocab)
    return " ".join(words)


# --------------------------------------------------------------------------- wrap itself


def test_wrap_returns_the_same_client_type_and_leaves_the_original_alone(emu: Emulator) -> None:
    original = sdk(emu)
    client = hca.wrap(original, store=MemoryStore(), ledger=MemoryLedger())
    assert type(client) is anthropic.Anthropic
    assert original.middleware == ()
    assert [type(m) for m in client.middleware] == [hca.HaikuMiddleware]
    assert hca.engine_of(client) is not None and hca.engine_of(original) is None
    original.messages.create(**ASK)
    original.messages.create(**ASK)
    assert emu.requests["messages"] == 2  # the original still goes upstream every time


def test_the_public_names_are_pinned() -> None:
    assert sorted(hca.__all__) == [
        "CACHE_HEADER",
        "HaikuMiddleware",
        "INFO_HEADERS",
        "SDKRequestValidationError",
        "call_headers",
        "engine_of",
        "info",
        "wrap",
    ]
    assert all(hasattr(hca, name) for name in hca.__all__)


def test_the_default_engine_keeps_answers_on_disk(emu: Emulator) -> None:
    client = hca.wrap(sdk(emu), ledger=False)
    again = hca.wrap(sdk(emu), ledger=False)  # a second engine on the same cache directory
    engines = [hca.engine_of(client), hca.engine_of(again)]
    try:
        assert all(isinstance(e.store, haikucache.DiskStore) for e in engines)  # type: ignore[union-attr]
        client.messages.create(**ASK)
        assert info(again.messages.create(**ASK)).cache == "hit"
    finally:
        for engine in engines:
            engine.store.close()  # type: ignore[union-attr]


def test_async_and_platform_clients_keep_their_class() -> None:
    clients = [
        anthropic.AsyncAnthropic(api_key="k"),
        anthropic.AnthropicBedrock(
            aws_access_key="AKIA1", aws_secret_key="s", aws_region="eu-west-1"
        ),
        anthropic.AsyncAnthropicBedrock(
            aws_access_key="AKIA1", aws_secret_key="s", aws_region="eu-west-1"
        ),
        anthropic.AnthropicVertex(region="us-east5", project_id="p", access_token="t"),
    ]
    for client in clients:
        assert type(hca.wrap(client, store=None, ledger=False)) is type(client)


def test_wrapping_twice_and_bad_arguments_are_refused(emu: Emulator) -> None:
    client = wrapped(emu)
    with pytest.raises(haikucache.ConfigurationError, match="already wrapped"):
        hca.wrap(client)
    with pytest.raises(haikucache.ConfigurationError, match="already wrapped"):
        hca.wrap(wrapped(emu, "transport"))
    with pytest.raises(haikucache.ConfigurationError, match="anthropic client"):
        hca.wrap(object())
    with pytest.raises(haikucache.ConfigurationError, match="not both"):
        hca.wrap(sdk(emu), engine=Engine(ledger=False), store="memory")
    with pytest.raises(haikucache.ConfigurationError, match="hook"):
        hca.wrap(sdk(emu), hook="socket")  # type: ignore[arg-type]
    with pytest.raises(haikucache.ConfigurationError):
        hca.wrap(sdk(emu), store="floppy")
    assert emu.requests.total() == 0


# --------------------------------------------------------------------------- hits and misses


@pytest.mark.parametrize("hook", HOOKS)
def test_a_repeat_is_served_locally_with_its_saving(emu: Emulator, hook: str) -> None:
    ledger = MemoryLedger()
    client = wrapped(emu, hook, ledger=ledger)
    first = client.messages.create(**ASK)
    second = client.messages.create(**ASK)
    assert emu.requests["messages"] == 1
    assert isinstance(second, anthropic.types.Message)
    assert (info(first).cache, info(second).cache) == ("miss", "hit")
    assert second.model_dump(exclude={"id"}) == first.model_dump(exclude={"id"})
    assert second.id != first.id  # a replay is a new response
    assert info(second).cost_usd == 0
    assert info(second).saved_usd == pytest.approx(info(first).baseline_usd)
    assert info(first).cost_usd == pytest.approx(emu.bill.total_usd)
    assert [e.cache for e in ledger.entries] == ["miss", "hit"]


@pytest.mark.parametrize("hook", HOOKS)
def test_with_raw_response_carries_status_and_dollars(emu: Emulator, hook: str) -> None:
    client = wrapped(emu, hook)
    miss = client.messages.with_raw_response.create(**ASK)
    hit = client.messages.with_raw_response.create(**ASK)
    assert miss.headers["haikucache-cache"] == "miss"
    assert hit.headers["haikucache-cache"] == "hit"
    assert float(hit.headers["haikucache-saved-usd"]) == pytest.approx(info(miss).baseline_usd)
    assert float(hit.headers["haikucache-cost-usd"]) == 0
    assert hit.headers["haikucache-key"] == miss.headers["haikucache-key"] == info(hit).key
    parsed = hit.parse()
    assert isinstance(parsed, anthropic.types.Message)
    assert parsed.content == miss.parse().content
    assert info(parsed) == info(hit)  # the message and its raw response say the same
    assert hit.status_code == 200 and hit.http_request.method == "POST"


@pytest.mark.parametrize("hook", HOOKS)
def test_stream_replay_rebuilds_the_identical_message(emu: Emulator, hook: str) -> None:
    client = wrapped(emu, hook)
    with client.messages.stream(**ASK) as stream:
        first = stream.get_final_message()
    with client.messages.stream(**ASK) as stream:
        chunks = list(stream.text_stream)
        second = stream.get_final_message()
    assert emu.requests["messages"] == 1
    assert (info(first).cache, info(second).cache) == ("miss", "hit")
    assert len(chunks) > 1 and "".join(chunks) == second.content[0].text  # type: ignore[union-attr]
    assert second.model_dump(exclude={"id"}) == first.model_dump(exclude={"id"})
    assert second.usage.input_tokens > 0 and second.usage.output_tokens > 0
    # A JSON call for the same request is the same key: the streamed answer serves it too.
    assert info(client.messages.create(**ASK)).cache == "hit"


@pytest.mark.parametrize("hook", HOOKS)
def test_raw_stream_events_of_a_hit_match_the_live_ones(emu: Emulator, hook: str) -> None:
    client = wrapped(emu, hook)
    live = list(client.messages.create(**ASK, stream=True))
    replayed_raw = client.messages.with_raw_response.create(**ASK, stream=True)
    assert replayed_raw.headers["haikucache-cache"] == "hit"
    assert replayed_raw.headers["content-type"].startswith("text/event-stream")
    replayed = list(replayed_raw.parse())
    kinds = [e.type for e in replayed]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert [e.type for e in live if e.type != "ping"][-2:] == ["message_delta", "message_stop"]
    # Full usage on message_delta, as the real API sends it.
    assert replayed[-2].usage.input_tokens == live[-2].usage.input_tokens
    assert replayed[-2].usage.output_tokens == live[-2].usage.output_tokens


def test_a_streamed_miss_is_handed_over_live(emu: Emulator) -> None:
    client = wrapped(emu)
    stream = client.messages.create(**ASK, stream=True)
    first_event = next(iter(stream))
    assert first_event.type == "message_start"
    # Nothing is accounted (so nothing was buffered to the end) before the caller reads on.
    assert hca.info(stream) is None
    assert stream.response.headers["haikucache-cache"] == "miss"
    for _ in stream:
        pass
    assert info(stream).cache == "miss" and info(stream).cost_usd > 0


@pytest.mark.parametrize("fault", ["stream_cut", "stream_error"])
def test_a_broken_stream_fails_as_without_haikucache_and_is_not_stored(
    emu: Emulator, fault: str
) -> None:
    def failure(client: anthropic.Anthropic) -> type[BaseException]:
        emu.inject(fault, after_events=3)
        with pytest.raises(Exception) as caught, client.messages.stream(**ASK) as stream:
            stream.get_final_message()
        return type(caught.value)

    client = wrapped(emu)
    assert failure(client) is failure(sdk(emu))  # the SDK's own error, unchanged
    with client.messages.stream(**ASK) as stream:
        assert info(stream.get_final_message()).cache == "miss"
    assert emu.requests["messages"] == 3


# --------------------------------------------------------------------------- async


@pytest.mark.parametrize("hook", HOOKS)
async def test_async_client(emu: Emulator, hook: str) -> None:
    client = hca.wrap(async_sdk(emu), store=MemoryStore(), ledger=MemoryLedger(), hook=hook)  # type: ignore[arg-type]
    assert type(client) is anthropic.AsyncAnthropic
    first = await client.messages.create(**ASK)
    second = await client.messages.create(**ASK)
    raw = await client.messages.with_raw_response.create(**ASK)
    assert (info(first).cache, info(second).cache, raw.headers["haikucache-cache"]) == (
        "miss",
        "hit",
        "hit",
    )
    other = {**ASK, "max_tokens": 999}
    async with client.messages.stream(**other) as stream:
        live = await stream.get_final_message()
    async with client.messages.stream(**other) as stream:
        replayed = await stream.get_final_message()
    assert (info(live).cache, info(replayed).cache) == ("miss", "hit")
    assert replayed.model_dump(exclude={"id"}) == live.model_dump(exclude={"id"})
    results = await asyncio.gather(*(client.messages.create(**ASK) for _ in range(5)))
    assert {info(m).cache for m in results} == {"hit"}
    assert emu.requests["messages"] == 2


@pytest.mark.parametrize("hook", HOOKS)
def test_identical_calls_in_flight_at_once_make_one_upstream_call(emu: Emulator, hook: str) -> None:
    client = wrapped(emu, hook, ledger=(ledger := MemoryLedger()))
    emu.inject("latency", seconds=0.3, times=None)
    with ThreadPoolExecutor(4) as pool:
        messages = list(pool.map(lambda _: client.messages.create(**ASK), range(4)))
    assert emu.requests["messages"] == 1
    assert sorted(info(m).cache for m in messages) == ["hit", "hit", "hit", "miss"]
    assert len({m.content[0].text for m in messages}) == 1
    assert sorted(e.cache for e in ledger.entries) == ["hit", "hit", "hit", "miss"]


@pytest.mark.parametrize("hook", HOOKS)
async def test_identical_async_calls_in_flight_at_once_make_one_upstream_call(
    emu: Emulator, hook: str
) -> None:
    client = hca.wrap(async_sdk(emu), store=MemoryStore(), ledger=MemoryLedger(), hook=hook)  # type: ignore[arg-type]
    emu.inject("latency", seconds=0.2, times=None)
    messages = await asyncio.gather(*(client.messages.create(**ASK) for _ in range(4)))
    assert emu.requests["messages"] == 1
    assert sorted(info(m).cache for m in messages) == ["hit", "hit", "hit", "miss"]
    # Errors are not shared as answers: each caller of a failed flight gets the SDK's error.
    emu.clear_faults()
    emu.inject("overloaded", times=None)
    other = {**ASK, "max_tokens": 700}
    results = await asyncio.gather(
        *(client.messages.create(**other) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, anthropic.OverloadedError) for r in results)


def test_a_semantic_hit_says_so(emu: Emulator) -> None:
    import hashlib
    import re

    import numpy as np

    from haikucache._semantic import SemanticConfig

    def words(texts: list[str]) -> Any:
        out = np.zeros((len(texts), 128), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 128] += 1.0
        return out

    engine = Engine(
        ledger=False,
        store=MemoryStore(),
        semantic=SemanticConfig(embedder=words, threshold=0.8),
    )
    client = hca.wrap(sdk(emu), engine=engine)
    asked = {**ASK, "messages": [{"role": "user", "content": "How heavy may my checked bag be"}]}
    again = {**ASK, "messages": [{"role": "user", "content": "how heavy may my checked bag be?"}]}
    first = client.messages.create(**asked)
    raw = client.messages.with_raw_response.create(**again)
    assert info(first).cache == "miss"
    assert raw.headers["haikucache-cache"] == "semantic"
    assert info(raw).similarity == pytest.approx(1.0, abs=1e-5)
    assert raw.parse().content == first.content
    assert emu.requests["messages"] == 1


# --------------------------------------------------------------------------- request shapes


@pytest.mark.parametrize("hook", HOOKS)
def test_tool_use_round_trips_through_the_cache(emu: Emulator, hook: str) -> None:
    client = wrapped(emu, hook)
    ask = {
        **ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
    }
    first = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        replayed = stream.get_final_message()
    assert first.stop_reason == "tool_use" and info(replayed).cache == "hit"
    block = replayed.content[-1]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == first.content[-1].input
    # The conversation continues with the tool result: a new request, a new key.
    follow = {
        **ask,
        "messages": [
            *ask["messages"],
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "12 C, rain"}
                ],
            },
        ],
        "tool_choice": {"type": "auto"},
    }
    assert info(client.messages.create(**follow)).cache == "miss"
    assert emu.requests["messages"] == 2


def test_betas_are_part_of_the_key_and_reach_the_api(emu: Emulator) -> None:
    client = wrapped(emu)
    plain = client.messages.create(**ASK)
    beta = client.beta.messages.create(**ASK, betas=["token-efficient-tools-2025-02-19"])
    assert isinstance(beta, anthropic.types.beta.BetaMessage)
    assert (info(plain).cache, info(beta).cache) == ("miss", "miss")
    assert info(plain).key != info(beta).key
    again = client.beta.messages.create(**ASK, betas=["token-efficient-tools-2025-02-19"])
    assert info(again).cache == "hit" and info(again).key == info(beta).key
    assert emu.log[-1].headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"
    # A client-wide beta header counts too.
    beta_client = hca.wrap(
        sdk(emu, default_headers={"anthropic-beta": "token-efficient-tools-2025-02-19"}),
        engine=hca.engine_of(client),
    )
    assert info(beta_client.messages.create(**ASK)).key == info(beta).key


def test_extra_body_is_part_of_the_key_and_of_the_planned_body(emu: Emulator) -> None:
    client = wrapped(emu, planner="always")
    ask = {**ASK, "system": long_text(emu, 5000)}
    plain = client.messages.create(**ask)
    stopped = client.messages.create(**ask, extra_body={"stop_sequences": ["zebra"]})
    assert info(plain).key != info(stopped).key
    sent = emu.log[-1].body
    assert sent["stop_sequences"] == ["zebra"]
    assert any("cache_control" in block for block in sent["system"])


def test_tenants_are_isolated_by_api_key(emu: Emulator) -> None:
    store = MemoryStore()
    a = wrapped(emu, api_key="sk-tenant-a", store=store)
    b = wrapped(emu, api_key="sk-tenant-b", store=store)
    first = a.messages.with_raw_response.create(**ASK)
    assert info(b.messages.create(**ASK)).cache == "miss"
    assert info(a.messages.create(**ASK)).cache == "hit"
    # A copy with another key is another tenant, even through the same middleware object …
    assert info(a.with_options(api_key="sk-tenant-c").messages.create(**ASK)).cache == "miss"
    # … while a copy with other settings keeps the tenant.
    assert info(a.with_options(timeout=30).messages.create(**ASK)).cache == "hit"
    assert info(a.with_middleware().messages.create(**ASK)).cache == "hit"
    assert info(a.copy(middleware=anthropic.NOT_GIVEN).messages.create(**ASK)).cache == "hit"
    assert a.copy(middleware=[]).middleware == ()  # removing haikucache is allowed
    assert emu.requests["messages"] == 3
    namespaces = {info(first).namespace, info(b.messages.create(**ASK)).namespace}
    assert len(namespaces) == 2
    for text in (*namespaces, *first.headers.values()):
        assert "sk-tenant" not in text  # the key itself is never kept


def test_transport_hook_tells_tenants_apart_by_the_key_on_the_wire(emu: Emulator) -> None:
    client = wrapped(emu, "transport")
    client.messages.create(**ASK)
    assert info(client.with_options(api_key="sk-other").messages.create(**ASK)).cache == "miss"
    assert info(client.messages.create(**ASK)).cache == "hit"


def test_one_namespace_label_never_shares_answers_across_keys(emu: Emulator) -> None:
    store = MemoryStore()
    a = wrapped(emu, api_key="sk-a", store=store, namespace="team")
    b = wrapped(emu, api_key="sk-b", store=store, namespace="team")
    a.messages.create(**ASK)
    other = b.messages.create(**ASK)
    assert info(other).cache == "miss" and info(other).namespace == "team"
    assert emu.requests["messages"] == 2


def test_sharing_across_keys_is_an_explicit_engine_opt_in(emu: Emulator) -> None:
    engine = Engine(ledger=False, store=MemoryStore(), share_across_credentials=True)
    a = hca.wrap(sdk(emu, api_key="sk-a"), engine=engine, namespace="team")
    b = hca.wrap(sdk(emu, api_key="sk-b"), engine=engine, namespace="team")
    a.messages.create(**ASK)
    hit = b.messages.create(**ASK)
    assert info(hit).cache == "hit" and info(hit).namespace == "team"


def test_prompt_cache_breakpoints_reach_the_api(emu: Emulator) -> None:
    client = wrapped(emu)  # the default, adaptive planner
    system = long_text(emu, 6000)
    turns = []
    for question in ("What is rule 1?", "What is rule 2?", "What is rule 3?"):
        ask = {**ASK, "system": system, "messages": [{"role": "user", "content": question}]}
        turns.append(client.messages.create(**ask))
    assert all(info(m).cache == "miss" for m in turns)  # different questions: no local hit
    system_sent = emu.log[0].body["system"]
    assert isinstance(system_sent, list) and "cache_control" in system_sent[-1]
    bill = [entry.usage for entry in emu.bill.entries]
    assert bill[0]["cache_creation_input_tokens"] >= 6000
    assert bill[1]["cache_read_input_tokens"] >= 6000
    assert bill[2]["cache_read_input_tokens"] == bill[1]["cache_read_input_tokens"]
    # The SDK's own usage shows it, and the ledger counts the prompt-cache saving.
    assert turns[1].usage.cache_read_input_tokens == bill[1]["cache_read_input_tokens"]
    assert info(turns[1]).savings["prompt_cache_read"] > 0
    assert info(turns[1]).saved_usd > 0 > info(turns[0]).saved_usd  # a write costs 1.25x


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("overloaded", None, anthropic.OverloadedError),
        ("status", 401, anthropic.AuthenticationError),
        ("status", 400, anthropic.BadRequestError),
        ("server_error", None, anthropic.InternalServerError),
    ],
)
def test_upstream_errors_surface_as_the_sdks_own(
    emu: Emulator, hook: str, fault: str, status: int | None, error: type[Exception]
) -> None:
    client = wrapped(emu, hook)
    emu.inject(fault, status=status)
    with pytest.raises(error) as caught:
        client.messages.create(**ASK)
    assert not isinstance(caught.value, haikucache.HaikuCacheError)
    assert info(client.messages.create(**ASK)).cache == "miss"  # the error was not stored


def test_the_sdk_retries_through_the_door(emu: Emulator) -> None:
    client = hca.wrap(
        sdk(emu, max_retries=2), store=MemoryStore(), ledger=(ledger := MemoryLedger())
    )
    emu.inject("rate_limit", times=2, retry_after_ms=1)
    message = client.messages.create(**{**ASK, "system": long_text(emu, 5000)})
    assert info(message).cache == "miss"
    assert emu.requests["messages"] == 3
    assert [e.cache for e in ledger.entries] == ["miss"]  # accounted once
    # Every attempt sends the body planned for the first one, breakpoints included.
    bodies = [r.body for r in emu.log]
    assert bodies[0] == bodies[1] == bodies[2]
    assert "cache_control" in bodies[0]["system"][-1]


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": []}, "messages"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"extra_body": {"temperature": 0.5}}, "temperature"),  # API 2026-10-21 rejects it
        ({"extra_headers": hca.call_headers() | {"haikucache-ttl": "soon"}}, None),
    ],
)
def test_bad_input_is_rejected_before_any_request(
    emu: Emulator, hook: str, change: dict[str, Any], param: str | None
) -> None:
    client = wrapped(emu, hook, ledger=(ledger := MemoryLedger()))
    with pytest.raises(hca.SDKRequestValidationError) as caught:
        client.messages.create(**{**ASK, **change})
    error = caught.value
    assert isinstance(error, haikucache.RequestValidationError)
    assert isinstance(error, anthropic.BadRequestError) and error.status_code == 400
    if param is not None:
        assert error.param is not None and error.param.startswith(param)
    assert emu.requests.total() == 0 and ledger.entries == []


def test_call_headers_validate_their_options() -> None:
    with pytest.raises(haikucache.ConfigurationError):
        hca.call_headers(ttl=-1)
    with pytest.raises(haikucache.ConfigurationError):
        hca.call_headers(tags="one")
    with pytest.raises(haikucache.ConfigurationError):
        hca.call_headers(tags=["a,b"])
    assert hca.call_headers() == {}


# --------------------------------------------------------------------------- controls, passthrough


@pytest.mark.parametrize("hook", HOOKS)
def test_per_call_options_travel_as_headers_and_never_reach_the_api(
    emu: Emulator, hook: str
) -> None:
    clock = ManualClock()
    engine = Engine(ledger=False, store=MemoryStore(), clock=clock)
    client = hca.wrap(sdk(emu), engine=engine, hook=hook)  # type: ignore[arg-type]

    def status(**options: Any) -> str:
        return info(client.messages.create(**ASK, extra_headers=hca.call_headers(**options))).cache

    assert status(no_store=True) == "miss"
    assert status() == "miss"
    assert status(no_cache=True) == "miss"
    assert status() == "hit"
    other = {**ASK, "messages": [{"role": "user", "content": "Another question?"}]}
    client.messages.create(**other, extra_headers=hca.call_headers(ttl=60, tags=["faq"]))
    assert info(client.messages.create(**other)).cache == "hit"
    assert engine.store is not None and engine.store.invalidate(tag="faq") == 1
    assert info(client.messages.create(**other)).cache == "miss"
    third = {**ASK, "messages": [{"role": "user", "content": "A third question?"}]}
    client.messages.create(**third, extra_headers=hca.call_headers(ttl=60))
    clock.advance(59)
    assert info(client.messages.create(**third)).cache == "hit"
    clock.advance(2)
    assert info(client.messages.create(**third)).cache == "miss"
    assert status(namespace="elsewhere") == "miss"
    assert info(client.messages.create(**ASK)).namespace != "elsewhere"
    assert emu.requests["messages"] == 8
    assert all(not name.startswith("haikucache-") for r in emu.log for name in r.headers)


def test_count_tokens_and_batches_pass_through(emu: Emulator) -> None:
    client = wrapped(emu, ledger=(ledger := MemoryLedger()))
    count = client.messages.count_tokens(model=MODEL, messages=ASK["messages"])
    assert count.input_tokens > 0
    batch = client.messages.batches.create(
        requests=[{"custom_id": "job-0", "params": ASK}]  # type: ignore[typeddict-item]
    )
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    results = list(client.messages.batches.results(batch.id))
    assert [r.result.type for r in results] == ["succeeded"]
    assert emu.requests["count_tokens"] == 1 and emu.requests["messages"] == 0
    assert ledger.entries == []  # not Messages calls: nothing accounted, nothing cached
    assert "cache_control" not in str(emu.log[1].body)  # batch params are sent as given


def test_other_middleware_sees_the_hit_response(emu: Emulator) -> None:
    seen: list[str] = []

    def outer(request: anthropic.APIRequest, call_next: Any) -> Any:
        response = call_next(request)
        seen.append(response.headers.get("haikucache-cache", "-"))
        return response

    client = hca.wrap(sdk(emu).with_middleware(outer), store=MemoryStore(), ledger=MemoryLedger())
    client.messages.create(**ASK)
    client.messages.create(**ASK)
    client.messages.count_tokens(model=MODEL, messages=ASK["messages"])
    assert seen == ["miss", "hit", "-"]


def test_platform_clients_share_the_hook(emu: Emulator) -> None:
    """A Bedrock client answers from the cache a shared namespace filled (no AWS reachable),
    when the engine was told to share across credentials.

    Bedrock streams AWS event-stream frames, not SSE, so its streamed calls are not cached.
    """
    engine = Engine(ledger=False, store=MemoryStore(), share_across_credentials=True)
    filler = hca.wrap(sdk(emu), engine=engine, namespace="shared")
    filled = filler.messages.create(**ASK)
    bedrock = hca.wrap(
        anthropic.AnthropicBedrock(
            aws_access_key="AKIA1",
            aws_secret_key="secret",
            aws_region="eu-west-1",
            base_url="http://127.0.0.1:9",  # nothing listens: a miss would fail loudly
            max_retries=0,
        ),
        engine=engine,
        namespace="shared",
    )
    hit = bedrock.messages.create(**ASK)
    raw = bedrock.messages.with_raw_response.create(**ASK)
    assert info(hit).cache == raw.headers["haikucache-cache"] == "hit"
    assert hit.content == raw.parse().content == filled.content
    assert emu.requests["messages"] == 1


# --------------------------------------------------------------------------- info()


def test_info_accepts_what_the_sdk_returns_and_refuses_the_rest(emu: Emulator) -> None:
    client = wrapped(emu)
    message = client.messages.create(**ASK)
    assert info(message.model_dump()) == info(message)
    assert hca.info({"id": "msg_never_seen"}) is None
    assert info(message).to_dict()["cache"] == "miss"
    plain = sdk(emu).messages.with_raw_response.create(**ASK)
    assert hca.info(plain) is None  # did not go through haikucache
    with pytest.raises(haikucache.UsageError):
        hca.info(None)
    with pytest.raises(haikucache.UsageError):
        hca.info(42)


def test_info_from_headers_of_another_process(emu: Emulator) -> None:
    client = wrapped(emu)
    client.messages.create(**ASK)
    raw = client.messages.with_raw_response.create(**ASK)
    headers = dict(raw.headers)
    rebuilt = hca.info(_Response(headers))
    assert rebuilt is not None and rebuilt.cache == "hit"
    assert rebuilt.saved_usd == pytest.approx(info(raw).saved_usd)


class _Response:
    """A response object from elsewhere (e.g. a proxy's client): only status and headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.status_code = 200


# --------------------------------------------------------------------------- loopback


@pytest.fixture
def served(emu: Emulator) -> Iterator[str]:
    with emu.serve() as base_url:
        yield base_url


@pytest.mark.parametrize("hook", HOOKS)
def test_over_loopback_http(emu: Emulator, served: str, hook: str) -> None:
    client = hca.wrap(
        anthropic.Anthropic(api_key="sk-loop", base_url=served, max_retries=0),
        store=MemoryStore(),
        ledger=MemoryLedger(),
        hook=hook,  # type: ignore[arg-type]
    )
    with client, client.messages.stream(**ASK) as stream:
        live = stream.get_final_message()
        replayed = client.messages.create(**ASK)
        assert client.messages.count_tokens(model=MODEL, messages=ASK["messages"]).input_tokens > 0
    assert (info(live).cache, info(replayed).cache) == ("miss", "hit")
    assert replayed.content[0].text == live.content[0].text  # type: ignore[union-attr]
    assert emu.requests["messages"] == 1
