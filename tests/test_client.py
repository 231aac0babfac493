"""Client and AsyncClient against the emulator (in-process transport, or loopback HTTP)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import haikucache
from haikucache import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AsyncClient,
    CallInfo,
    Client,
    ConfigurationError,
    Engine,
    ManualClock,
    MemoryLedger,
    NotFoundError,
    OverloadedError,
    RequestValidationError,
    UsageError,
)
from haikucache._client import AsyncMessageStream
from haikucache._store import CacheEntry, DiskStore
from haikucache._types import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    DeletedMessageBatch,
    Message,
    MessageBatch,
    MessageBatchCanceledResult,
    MessageBatchErroredResult,
    MessageBatchSucceededResult,
    MessageDeltaEvent,
    MessageStartEvent,
    MessageStopEvent,
    MessageTokensCount,
    StreamEvent,
    TextBlock,
    ToolUseBlock,
)
from haikucache.testing import Emulator

MODEL = "claude-haiku-4-5"
HELLO: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello there, how are you?"}],
}
BASE_URL = "http://emulator.test"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emu(clock: ManualClock) -> Emulator:
    return Emulator(clock=clock)


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def engine(ledger: MemoryLedger, clock: ManualClock) -> Engine:
    return Engine(namespace="tests", ledger=ledger, clock=clock)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(emu: Emulator, engine: Engine, sleeps: list[float]) -> Iterator[Client]:
    with Client(
        api_key="sk-test",
        base_url=BASE_URL,
        transport=emu.transport(),
        engine=engine,
        sleep=sleeps.append,
    ) as client:
        yield client


@pytest.fixture
async def aclient(emu: Emulator, engine: Engine, sleeps: list[float]) -> AsyncIterator[AsyncClient]:
    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(
        api_key="sk-test",
        base_url=BASE_URL,
        transport=emu.transport(),
        engine=engine,
        sleep=record,
    ) as client:
        yield client


def requests_made(emu: Emulator) -> int:
    return sum(emu.requests.values())


# --------------------------------------------------------------------------- messages (JSON)


def test_create_returns_a_typed_accounted_message(
    client: Client, emu: Emulator, ledger: MemoryLedger
) -> None:
    message = client.messages.create(**HELLO)
    assert isinstance(message, Message)
    assert message.role == "assistant"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert isinstance(message.content[0], TextBlock)
    assert message.content[0].text
    assert message.usage.input_tokens > 0
    assert message._request_id == emu.log[-1].request_id
    info = message.haikucache
    assert isinstance(info, CallInfo)
    assert info.cache == "miss"
    assert info.key.startswith("hc1:")
    assert info.namespace == "tests"
    # The engine's price of the usage matches what the emulator billed for the call.
    assert info.cost_usd == pytest.approx(emu.bill.total_usd)
    assert len(ledger.entries) == 1
    assert emu.requests["messages"] == 1


def test_the_request_on_the_wire(client: Client, emu: Emulator) -> None:
    client.messages.create(
        **HELLO,
        system="Be brief.",
        temperature=0.2,
        metadata={"user_id": "u-1"},
        inference_geo="us",
        extra_body={"top_k": 5},
        extra_headers={"anthropic-beta": "some-beta-2025-01-01", "x-trace": "t1"},
        namespace="tenant-b",
        tags=["a"],
    )
    record = emu.log[-1]
    assert record.headers["x-api-key"] == "sk-test"
    assert "authorization" not in record.headers
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert record.headers["user-agent"] == f"haikucache/{haikucache.__version__}"
    assert record.headers["anthropic-beta"] == "some-beta-2025-01-01"
    assert record.headers["x-trace"] == "t1"
    assert record.body == {
        **HELLO,
        "system": "Be brief.",
        "temperature": 0.2,
        "metadata": {"user_id": "u-1"},
        "inference_geo": "us",
        "top_k": 5,
    }
    # haikucache options never reach the API.
    assert "namespace" not in record.body
    assert "tags" not in record.body


def test_call_options_reach_the_engine(client: Client) -> None:
    message = client.messages.create(**HELLO, namespace="tenant-b", ttl=60, no_store=True)
    assert message.haikucache is not None
    assert message.haikucache.namespace == "tenant-b"
    other = client.messages.create(**HELLO)
    assert other.haikucache is not None
    assert other.haikucache.key != message.haikucache.key  # the namespace is in the key


def test_betas_are_part_of_the_key(client: Client) -> None:
    plain = client.messages.create(**HELLO)
    beta = client.messages.create(**HELLO, extra_headers={"anthropic-beta": "b-1"})
    assert plain.haikucache is not None
    assert beta.haikucache is not None
    assert plain.haikucache.key != beta.haikucache.key


@pytest.mark.parametrize(
    "bad",
    [
        {"max_tokens": 0},
        {"messages": []},
        {"temperature": 3},
        {"messages": [{"role": "robot", "content": "hi"}]},
    ],
)
def test_invalid_request_is_rejected_before_any_http(
    client: Client, emu: Emulator, bad: dict[str, Any]
) -> None:
    with pytest.raises(RequestValidationError):
        client.messages.create(**{**HELLO, **bad})
    with pytest.raises(RequestValidationError):
        client.messages.create(**{**HELLO, **bad}, stream=True)
    assert requests_made(emu) == 0


def test_invalid_call_options_are_rejected_before_any_http(client: Client, emu: Emulator) -> None:
    with pytest.raises(ConfigurationError, match="ttl"):
        client.messages.create(**HELLO, ttl=-1)
    with pytest.raises(ConfigurationError, match="tags"):
        client.messages.create(**HELLO, tags="one-string")
    assert requests_made(emu) == 0


def test_tool_use_comes_back_typed(client: Client) -> None:
    message = client.messages.create(
        **HELLO,
        tools=[
            {
                "name": "lookup",
                "description": "Look up an order",
                "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
            }
        ],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    tool = message.content[-1]
    assert isinstance(tool, ToolUseBlock)
    assert tool.name == "lookup"
    assert isinstance(tool.input, dict)


def test_api_errors_carry_status_type_and_request_id(client: Client, emu: Emulator) -> None:
    emu.inject("status", status=404)
    with pytest.raises(NotFoundError) as info:
        client.messages.create(**HELLO)
    assert info.value.status_code == 404
    assert info.value.error_type == "not_found_error"
    assert info.value.request_id == emu.log[-1].request_id


def test_count_tokens(client: Client, emu: Emulator) -> None:
    count = client.messages.count_tokens(
        model=MODEL, messages=HELLO["messages"], system="Be brief."
    )
    assert isinstance(count, MessageTokensCount)
    assert count.input_tokens > 0
    assert emu.requests["count_tokens"] == 1
    with pytest.raises(RequestValidationError):
        client.messages.count_tokens(model=MODEL, messages=[])
    assert emu.requests["count_tokens"] == 1


# --------------------------------------------------------------------------- streaming


def test_stream_yields_typed_events_and_an_accounted_final_message(
    client: Client, emu: Emulator, ledger: MemoryLedger
) -> None:
    with client.messages.create(**HELLO, stream=True) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert isinstance(events[0], MessageStartEvent)
    assert isinstance(events[1], ContentBlockStartEvent)
    assert any(isinstance(e, ContentBlockDeltaEvent) for e in events)
    assert isinstance(events[-2], MessageDeltaEvent)
    assert isinstance(events[-1], MessageStopEvent)
    assert "".join(e.delta.text for e in events if isinstance(e, ContentBlockDeltaEvent)) == _text(
        final
    )
    assert final.haikucache is not None
    assert final.haikucache.cost_usd == pytest.approx(emu.bill.total_usd)
    assert len(ledger.entries) == 1
    # The same request without streaming gets the same answer from the emulator.
    plain = client.messages.create(**HELLO)
    assert plain.content == final.content
    assert plain.usage == final.usage
    assert plain.stop_reason == final.stop_reason


def _text(message: Message) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


class _CountingStream(httpx.SyncByteStream):
    """Counts the chunks the emulator has produced so far."""

    def __init__(self, inner: Any, counter: list[int]) -> None:
        self._inner = inner
        self._counter = counter

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._counter[0] += 1
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _CountingTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.produced = [0]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountingStream(response.stream, self.produced),
            request=request,
        )


def test_stream_events_are_yielded_as_they_arrive(emu: Emulator, engine: Engine) -> None:
    transport = _CountingTransport(emu.transport())
    with Client(api_key="k", transport=transport, engine=engine) as client:
        stream = client.messages.create(**HELLO, stream=True)
        first = next(stream)
        assert isinstance(first, MessageStartEvent)
        # One event has been produced by the emulator, not the whole answer.
        assert transport.produced[0] == 1
        rest = list(stream)
        # Every SSE event is one chunk: the first, the rest, and a ping (not yielded).
        assert len(rest) > 5
        assert transport.produced[0] == 1 + len(rest) + 1


def test_stream_error_event_surfaces_after_the_events_before_it(
    client: Client, emu: Emulator, ledger: MemoryLedger, sleeps: list[float]
) -> None:
    emu.inject("stream_error", after_events=4)
    stream = client.messages.create(**HELLO, stream=True)
    received: list[StreamEvent] = []
    with pytest.raises(OverloadedError) as info:
        received.extend(stream)
    # Four events were sent before the error: message_start, a ping (never yielded, as in
    # the SDK), content_block_start and the first delta.
    assert [type(e) for e in received] == [
        MessageStartEvent,
        ContentBlockStartEvent,
        ContentBlockDeltaEvent,
    ]
    assert info.value.status_code == 529
    assert info.value.error_type == "overloaded_error"
    assert info.value.request_id == emu.log[-1].request_id
    # Not retried (the caller has seen events), and an incomplete answer is not accounted.
    assert sleeps == []
    assert emu.requests["messages"] == 1
    assert ledger.entries == []
    assert stream.current_message_snapshot is not None


def test_stream_cut_mid_body_is_a_connection_error(client: Client, emu: Emulator) -> None:
    emu.inject("stream_cut", after_events=4)
    with pytest.raises(APIConnectionError), client.messages.stream(**HELLO) as stream:
        stream.get_final_message()
    assert emu.requests["messages"] == 1


def test_stream_helper_text_stream_and_final_text(client: Client) -> None:
    with client.messages.stream(**HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        assert stream.get_final_text() == "".join(pieces) == _text(final)
        assert stream.request_id
    assert final.haikucache is not None


def test_stream_closed_early_releases_the_connection(client: Client, emu: Emulator) -> None:
    with client.messages.stream(**HELLO) as stream:
        next(iter(stream))
    # The pool is usable again right away.
    assert client.messages.create(**HELLO).content


def test_stream_retries_only_before_the_body_starts(
    client: Client, emu: Emulator, sleeps: list[float]
) -> None:
    emu.inject("overloaded", times=1)
    final = client.messages.create(**HELLO, stream=True).get_final_message()
    assert final.content
    assert len(sleeps) == 1
    assert emu.requests["messages"] == 2


# --------------------------------------------------------------------------- retries & errors


def test_rate_limits_are_retried_after_retry_after(
    client: Client, emu: Emulator, sleeps: list[float]
) -> None:
    emu.inject("rate_limit", times=2, retry_after=1)
    assert client.messages.create(**HELLO).content
    assert sleeps == [1.0, 1.0]
    assert emu.requests["messages"] == 3


def test_retry_after_ms_is_preferred(client: Client, emu: Emulator, sleeps: list[float]) -> None:
    emu.inject("rate_limit", times=1, retry_after=7, retry_after_ms=250)
    client.messages.create(**HELLO)
    assert sleeps == [0.25]


def test_overloaded_until_retries_are_exhausted(
    client: Client, emu: Emulator, sleeps: list[float]
) -> None:
    emu.inject("overloaded", times=None)
    with pytest.raises(OverloadedError) as info:
        client.messages.create(**HELLO)
    assert info.value.status_code == 529
    assert emu.requests["messages"] == 3  # 1 + max_retries
    # Backoff with jitter: 0.5 s then 1 s, each reduced by up to 25 %.
    assert len(sleeps) == 2
    assert 0.375 <= sleeps[0] <= 0.5
    assert 0.75 <= sleeps[1] <= 1.0


def test_dropped_connections_are_retried_then_raised(
    client: Client, emu: Emulator, sleeps: list[float]
) -> None:
    emu.inject("drop", times=1)
    assert client.messages.create(**HELLO).content
    assert len(sleeps) == 1
    emu.inject("drop", times=None)
    with pytest.raises(APIConnectionError) as info:
        client.messages.create(**HELLO)
    assert isinstance(info.value.__cause__, httpx.TransportError)
    assert len(sleeps) == 3


def test_bad_requests_are_not_retried(client: Client, emu: Emulator, sleeps: list[float]) -> None:
    emu.inject("status", status=400)
    with pytest.raises(haikucache.BadRequestError):
        client.messages.create(**HELLO)
    assert sleeps == []
    assert emu.requests["messages"] == 1


def test_max_retries_zero_and_with_options(
    client: Client, emu: Emulator, sleeps: list[float]
) -> None:
    emu.inject("server_error", times=1)
    no_retry = client.with_options(max_retries=0)
    assert no_retry.max_retries == 0
    assert no_retry.http_client is client.http_client
    with pytest.raises(haikucache.InternalServerError):
        no_retry.messages.create(**HELLO)
    assert sleeps == []
    no_retry.close()  # does not close the shared pool
    assert client.messages.create(**HELLO).content


def test_with_options_rejects_unknown_options(client: Client) -> None:
    with pytest.raises(ConfigurationError, match="unknown client option"):
        client.with_options(retries=3)


def test_timeout_over_loopback(emu: Emulator, engine: Engine) -> None:
    emu.inject("latency", seconds=0.5)
    with (
        emu.serve() as base_url,
        Client(
            api_key="k", base_url=base_url, engine=engine, timeout=0.05, max_retries=0
        ) as client,
        pytest.raises(APITimeoutError) as info,
    ):
        client.messages.create(**HELLO)
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


# --------------------------------------------------------------------------- configuration


def test_bearer_token_instead_of_api_key(emu: Emulator, engine: Engine) -> None:
    with Client(auth_token="tok-1", transport=emu.transport(), engine=engine) as client:
        client.messages.create(**HELLO)
    headers = emu.log[-1].headers
    assert headers["authorization"] == "Bearer tok-1"
    assert "x-api-key" not in headers


def test_credentials_and_base_url_from_the_environment(
    emu: Emulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with emu.serve() as base_url:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-env")
        with Client(engine=engine) as client:
            assert client.base_url == base_url
            assert client.api_key == "sk-env"
            assert client.messages.create(**HELLO).content
            # Streaming over a real socket, too.
            assert client.messages.create(**HELLO, stream=True).get_final_message().content
    assert emu.log[-1].headers["x-api-key"] == "sk-env"


def test_no_credentials_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        Client()
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AsyncClient()


def test_token_from_the_environment(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "tok-env")
    with Client(transport=emu.transport(), engine=Engine(ledger=False)) as client:
        assert client.auth_token == "tok-env"


def test_default_engine_is_namespaced_by_a_hash_of_the_key(emu: Emulator) -> None:
    with Client(api_key="sk-secret", transport=emu.transport()) as client:
        namespace = client.engine.namespace
    assert namespace.startswith("key-")
    assert "sk-secret" not in namespace
    with Client(api_key="sk-other", transport=emu.transport()) as other:
        assert other.engine.namespace != namespace


def test_close_leaves_a_given_http_client_open(emu: Emulator, engine: Engine) -> None:
    with httpx.Client(transport=emu.transport()) as http_client:
        client = Client(api_key="k", http_client=http_client, engine=engine)
        client.close()
        assert not http_client.is_closed
        assert (
            Client(api_key="k", http_client=http_client, engine=engine)
            .messages.create(**HELLO)
            .content
        )
    owned = Client(api_key="k", transport=emu.transport(), engine=engine)
    owned.close()
    assert owned.http_client.is_closed


# --------------------------------------------------------------------------- batches


def batch_requests(n: int, *, bad: int | None = None) -> list[dict[str, Any]]:
    requests = []
    for i in range(n):
        params: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": f"Question number {i}?"}],
        }
        if i == bad:
            params["max_tokens"] = -1  # validated only when the batch runs
        requests.append({"custom_id": f"job-{i}", "params": params})
    return requests


def test_batch_lifecycle(client: Client, emu: Emulator, clock: ManualClock) -> None:
    batches = client.messages.batches
    batch = batches.create(requests=batch_requests(3, bad=1))
    assert isinstance(batch, MessageBatch)
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3
    assert batch.results_url is None
    with pytest.raises(UsageError, match="has not ended yet"):
        batches.results(batch.id)

    clock.advance(emu.batch_processing_seconds + 1)
    ended = batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.succeeded == 2
    assert ended.request_counts.errored == 1
    assert ended.results_url is not None
    assert ended.results_url.startswith(BASE_URL)

    with batches.results(batch.id) as results:
        by_id = {line.custom_id: line.result for line in results}
    assert set(by_id) == {"job-0", "job-1", "job-2"}
    ok = by_id["job-0"]
    assert isinstance(ok, MessageBatchSucceededResult)
    assert isinstance(ok.message, Message)
    assert ok.message.usage.service_tier == "batch"
    failed = by_id["job-1"]
    assert isinstance(failed, MessageBatchErroredResult)
    assert failed.error.error.type == "invalid_request_error"

    deleted = batches.delete(batch.id)
    assert isinstance(deleted, DeletedMessageBatch)
    assert deleted.id == batch.id
    with pytest.raises(NotFoundError):
        batches.retrieve(batch.id)


def test_batch_cancel(client: Client, clock: ManualClock) -> None:
    batches = client.messages.batches
    batch = batches.create(requests=batch_requests(2))
    canceling = batches.cancel(batch.id)
    assert canceling.processing_status in ("canceling", "ended")
    clock.advance(1)
    ended = batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    results = list(batches.results(batch.id))
    assert {type(r.result) for r in results} == {MessageBatchCanceledResult}


def test_batch_ids_are_checked_locally(client: Client, emu: Emulator) -> None:
    with pytest.raises(RequestValidationError, match="message_batch_id"):
        client.messages.batches.retrieve("")
    assert requests_made(emu) == 0


def test_batch_list_paginates_newest_first(client: Client, clock: ManualClock) -> None:
    created = []
    for _ in range(5):
        created.append(client.messages.batches.create(requests=batch_requests(1)).id)
        clock.advance(1)
    newest_first = created[::-1]

    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more
    assert page.first_id == newest_first[0]
    assert page.last_id == newest_first[1]
    second = page.next_page()
    assert second is not None
    assert [b.id for b in second.data] == newest_first[2:4]
    assert [b.id for b in page] == newest_first  # iterating walks every page
    assert [len(p) for p in page.iter_pages()] == [2, 2, 1]
    last = list(page.iter_pages())[-1]
    assert not last.has_more
    assert last.next_page() is None

    # Paging backwards from the oldest continues with before_id = first_id.
    back = client.messages.batches.list(limit=2, before_id=created[0])
    assert [b.id for b in back.data] == newest_first[2:4]
    assert back.has_more
    # The next page is the one before this page's first (newest) batch.
    assert [b.id for b in back] == newest_first[2:4] + newest_first[0:2]


# --------------------------------------------------------------------------- async twins


async def test_async_create(aclient: AsyncClient, emu: Emulator) -> None:
    message = await aclient.messages.create(**HELLO)
    assert message.content
    assert message.haikucache is not None
    assert message.haikucache.cost_usd == pytest.approx(emu.bill.total_usd)


async def test_async_invalid_request_sends_nothing(aclient: AsyncClient, emu: Emulator) -> None:
    with pytest.raises(RequestValidationError):
        await aclient.messages.create(**{**HELLO, "max_tokens": 0})
    assert requests_made(emu) == 0


async def test_async_stream(aclient: AsyncClient, client: Client) -> None:
    stream = await aclient.messages.create(**HELLO, stream=True)
    events = [event async for event in stream]
    final = await stream.get_final_message()
    assert isinstance(events[0], MessageStartEvent)
    assert isinstance(events[-1], MessageStopEvent)
    assert final.haikucache is not None
    assert final.content == client.messages.create(**HELLO).content


async def test_async_stream_helper(aclient: AsyncClient) -> None:
    async with aclient.messages.stream(**HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        assert await stream.get_final_text() == "".join(pieces)


async def _drain(stream: AsyncMessageStream, into: list[StreamEvent]) -> None:
    async for event in stream:
        into.append(event)


async def test_async_stream_error(aclient: AsyncClient, emu: Emulator) -> None:
    emu.inject("stream_error", after_events=4)
    stream = await aclient.messages.create(**HELLO, stream=True)
    received: list[StreamEvent] = []
    with pytest.raises(OverloadedError):
        await _drain(stream, received)
    assert len(received) == 3  # message_start, content_block_start, a delta (+ a ping)


async def test_async_retries(aclient: AsyncClient, emu: Emulator, sleeps: list[float]) -> None:
    emu.inject("rate_limit", times=2, retry_after=2)
    assert (await aclient.messages.create(**HELLO)).content
    assert sleeps == [2.0, 2.0]
    emu.inject("overloaded", times=None)
    with pytest.raises(OverloadedError):
        await aclient.messages.create(**HELLO)
    emu.clear_faults()
    emu.inject("drop", times=None)
    with pytest.raises(APIConnectionError):
        await aclient.messages.create(**HELLO)


async def test_async_count_tokens(aclient: AsyncClient) -> None:
    count = await aclient.messages.count_tokens(model=MODEL, messages=HELLO["messages"])
    assert count.input_tokens > 0


async def test_async_batches(aclient: AsyncClient, emu: Emulator, clock: ManualClock) -> None:
    batches = aclient.messages.batches
    ids = []
    for _ in range(3):
        ids.append((await batches.create(requests=batch_requests(2))).id)
        clock.advance(1)
    page = await batches.list(limit=2)
    assert [b.id async for b in page] == ids[::-1]
    assert [len(p) async for p in page.iter_pages()] == [2, 1]
    with pytest.raises(UsageError, match="no results_url"):
        await batches.results(ids[0])
    canceling = await batches.cancel(ids[1])
    assert canceling.id == ids[1]
    clock.advance(emu.batch_processing_seconds)
    assert (await batches.retrieve(ids[0])).processing_status == "ended"
    async with await batches.results(ids[0]) as results:
        lines = [line async for line in results]
    assert sorted(line.custom_id for line in lines) == ["job-0", "job-1"]
    assert all(isinstance(line.result, MessageBatchSucceededResult) for line in lines)
    assert (await batches.delete(ids[0])).type == "message_batch_deleted"


async def test_async_client_with_a_given_http_client(emu: Emulator, engine: Engine) -> None:
    async with httpx.AsyncClient(transport=emu.transport()) as http_client:
        client = AsyncClient(api_key="k", http_client=http_client, engine=engine)
        assert (await client.messages.create(**HELLO)).content
        await client.close()
        assert not http_client.is_closed


def test_the_api_version_sent_is_the_one_validated(emu: Emulator, engine: Engine) -> None:
    with Client(
        api_key="k", transport=emu.transport(), engine=engine, anthropic_version="2026-10-21"
    ) as client:
        # Version 2026-10-21 removed the sampling parameters (reference §4.10).
        with pytest.raises(RequestValidationError, match="temperature"):
            client.messages.create(**HELLO, temperature=0.5)
        assert requests_made(emu) == 0
        assert client.messages.create(**HELLO).content
    assert emu.log[-1].headers["anthropic-version"] == "2026-10-21"
    with (
        Client(api_key="k", transport=emu.transport(), engine=engine) as client,
        pytest.raises(RequestValidationError, match="temperature"),
    ):
        client.messages.create(
            **HELLO, temperature=0.5, extra_headers={"anthropic-version": "2026-10-21"}
        )


def test_snapshot_while_streaming(client: Client) -> None:
    with client.messages.stream(**HELLO) as stream:
        assert stream.current_message_snapshot is None
        for event in stream:
            if isinstance(event, ContentBlockDeltaEvent):
                break
        snapshot = stream.current_message_snapshot
        assert snapshot is not None
        assert isinstance(snapshot.content[0], TextBlock)
        assert snapshot.content[0].text
        assert snapshot.stop_reason is None


# --------------------------------------------------------------------------- broken gateways
# The emulator answers like the API; these stand-ins answer like a broken proxy in the way.


def _gateway(body: bytes, content_type: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(handler)


def test_a_gateway_answering_html_is_a_validation_error(engine: Engine) -> None:
    transport = _gateway(b"<html>login</html>", "text/html")
    with (
        Client(api_key="k", transport=transport, engine=engine) as client,
        pytest.raises(APIResponseValidationError, match="not JSON"),
    ):
        client.messages.create(**HELLO)


def test_a_garbled_stream_is_a_validation_error_and_is_released(engine: Engine) -> None:
    start = b'event: message_start\ndata: {"type":"message_start","message":{"content":[]}}\n\n'
    transport = _gateway(
        start + b"event: content_block_start\ndata: {oops\n\n", "text/event-stream"
    )
    with Client(api_key="k", transport=transport, engine=engine) as client:
        stream = client.messages.create(**HELLO, stream=True)
        with pytest.raises(APIResponseValidationError, match="not JSON"):
            stream.until_done()
        assert stream.response.is_closed


def test_a_stream_without_message_stop_is_incomplete(engine: Engine, ledger: MemoryLedger) -> None:
    start = b'event: message_start\ndata: {"type":"message_start","message":{"content":[]}}\n\n'
    with Client(
        api_key="k", transport=_gateway(start, "text/event-stream"), engine=engine
    ) as client:
        stream = client.messages.create(**HELLO, stream=True)
        with pytest.raises(APIConnectionError, match="before message_stop"):
            stream.get_final_message()
    assert ledger.entries == []


# --------------------------------------------------------------------------- response cache: store stage and flights


# Long enough for a complete answer (end_turn): only complete answers are stored.
ASK: dict[str, Any] = {**HELLO, "max_tokens": 1024}


class _RecordingStore(DiskStore):
    """A real DiskStore that records which door its writes came in by (put or aput)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, strict=True)
        self.writes: list[str] = []
        self._in_aput = False

    def put(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        if not self._in_aput:
            self.writes.append("put")
        return super().put(entry, vector=vector)

    async def aput(self, entry: CacheEntry, *, vector: bytes | None = None) -> bool:
        self.writes.append("aput")
        self._in_aput = True
        try:
            return await super().aput(entry, vector=vector)
        finally:
            self._in_aput = False


@pytest.mark.parametrize("stream", [False, True])
async def test_async_misses_are_stored_through_the_async_store_api(
    emu: Emulator, tmp_path: Path, stream: bool
) -> None:
    store = _RecordingStore(tmp_path / "r")
    engine = Engine(ledger=False, store=store)
    async with AsyncClient(
        api_key="k", base_url=BASE_URL, transport=emu.transport(), engine=engine
    ) as client:
        if stream:
            async with client.messages.stream(**ASK) as live:
                first = await live.get_final_message()
        else:
            first = await client.messages.create(**ASK)
        again = await client.messages.create(**ASK)
    store.close()
    assert store.writes == ["aput"]
    assert first.haikucache is not None and first.haikucache.cache == "miss"
    assert again.haikucache is not None and again.haikucache.cache == "hit"
    assert again.content[0].text == first.content[0].text
    assert emu.requests["messages"] == 1


def test_sync_stream_misses_are_stored_before_message_stop_is_handed_over(
    emu: Emulator, tmp_path: Path
) -> None:
    store = _RecordingStore(tmp_path / "r")
    engine = Engine(ledger=False, store=store)
    with Client(api_key="k", base_url=BASE_URL, transport=emu.transport(), engine=engine) as c:
        stream = c.messages.create(**ASK, stream=True)
        for event in stream:
            if isinstance(event, MessageStopEvent):
                # The caller may stop here: the answer is already stored.
                assert store.writes == ["put"]
        stream.close()
        assert c.messages.create(**ASK).haikucache.cache == "hit"  # type: ignore[union-attr]
    store.close()


def test_clients_sharing_a_store_share_one_flight(emu: Emulator, tmp_path: Path) -> None:
    # Two clients with their own single-flight state, as in two processes: only the store's
    # lease can make the second wait for the first one's answer.
    emu.inject("latency", seconds=0.5, times=None)
    store = DiskStore(tmp_path / "r", strict=True)
    ledger = MemoryLedger()
    clients = [
        Client(
            api_key="k",
            base_url=BASE_URL,
            transport=emu.transport(),
            engine=Engine.for_credentials("k", ledger=ledger, store=store),
        )
        for _ in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda c: c.messages.create(**ASK), clients))
    for c in clients:
        c.close()
    store.close()
    assert emu.requests["messages"] == 1
    assert sorted(r.haikucache.cache for r in replies) == ["hit", "miss"]  # type: ignore[union-attr]
    assert sorted(e.cache for e in ledger.entries) == ["hit", "miss"]
    assert replies[0].content[0].text == replies[1].content[0].text


def test_a_call_that_will_not_store_does_not_wait_for_a_lease(
    emu: Emulator, tmp_path: Path
) -> None:
    store = DiskStore(tmp_path / "r", strict=True)
    engine = Engine(ledger=False, store=store)
    with Client(api_key="k", base_url=BASE_URL, transport=emu.transport(), engine=engine) as c:
        key = engine.prepare(ASK, credential="k").key
        # Another process is in flight for this request and holds the lease...
        assert store.try_lock("sf:" + key, ttl=60) is not None
        started = time.monotonic()
        # ...but a no_store call would leave nothing for it to share: it goes at once.
        message = c.messages.create(**ASK, no_store=True)
        assert time.monotonic() - started < 5
    store.close()
    assert message.haikucache is not None and message.haikucache.cache == "miss"
    assert emu.requests["messages"] == 1
