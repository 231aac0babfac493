"""The official anthropic SDK (2.x, httpx2, bearer auth, API version 2026-10-21) parses the emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from haikucache.testing import Emulator, ManualClock

anthropic = pytest.importorskip("anthropic")

MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "What does prompt caching do?"}]


@pytest.fixture(params=["httpx2_transport", "loopback"])
def sdk(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Emulator, ManualClock]]:
    clock = ManualClock()
    emu = Emulator(clock=clock)
    if request.param == "httpx2_transport":
        http_client = anthropic.DefaultHttpxClient(transport=emu.httpx2_transport())
        with anthropic.Anthropic(
            api_key="k", base_url="http://emulator.local", http_client=http_client
        ) as client:
            yield client, emu, clock
    else:
        with emu.serve() as base_url, anthropic.Anthropic(api_key="k", base_url=base_url) as client:
            yield client, emu, clock


def test_create_stream_and_count_tokens(
    sdk: tuple[Any, Emulator, ManualClock], text_of: Callable[..., str]
) -> None:
    client, emu, _ = sdk
    system = [{"type": "text", "text": text_of(5000), "cache_control": {"type": "ephemeral"}}]
    message = client.messages.create(model=MODEL, max_tokens=1024, system=system, messages=MESSAGES)
    assert message.type == "message"
    assert message.content[0].type == "text"
    assert message.usage.cache_creation_input_tokens > 5000
    assert (
        message.usage.cache_creation.ephemeral_5m_input_tokens
        == message.usage.cache_creation_input_tokens
    )
    assert message._request_id == emu.log[-1].request_id
    # SDK 2.x: bearer token and the new API version.
    assert emu.log[-1].headers["authorization"] == "Bearer k"
    assert emu.log[-1].headers["anthropic-version"] == "2026-10-21"

    with client.messages.stream(
        model=MODEL, max_tokens=1024, system=system, messages=MESSAGES
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == streamed_text == message.content[0].text
    assert final.usage.cache_read_input_tokens == message.usage.cache_creation_input_tokens
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.stop_reason == "end_turn"

    counted = client.messages.count_tokens(model=MODEL, system=system, messages=MESSAGES)
    usage = final.usage
    assert (
        counted.input_tokens
        == usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )


def test_tool_use_through_the_sdk(sdk: tuple[Any, Emulator, ManualClock]) -> None:
    client, _, _ = sdk
    tools = [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    with client.messages.stream(
        model=MODEL, max_tokens=256, tools=tools, messages=MESSAGES
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and isinstance(call.input["city"], str)


def test_batches_create_retrieve_results(sdk: tuple[Any, Emulator, ManualClock]) -> None:
    client, emu, clock = sdk
    batch = client.messages.batches.create(
        requests=[
            {"custom_id": "ok", "params": {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}},
            {
                "custom_id": "bad",
                "params": {
                    "model": MODEL,
                    "max_tokens": 64,
                    "messages": MESSAGES,
                    "temperature": 0.3,
                },
            },
        ]
    )
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 2
    clock.advance(emu.batch_processing_seconds)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.succeeded == 1 and ended.request_counts.errored == 1
    outcomes = {line.custom_id: line.result for line in client.messages.batches.results(batch.id)}
    assert outcomes["ok"].type == "succeeded"
    assert outcomes["ok"].message.usage.service_tier == "batch"
    # The SDK sends API version 2026-10-21, under which temperature is refused.
    assert outcomes["bad"].type == "errored"
    assert outcomes["bad"].error.error.type == "invalid_request_error"
    listed = [b.id for b in client.messages.batches.list(limit=1)]
    assert listed == [batch.id]
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"


def test_sdk_errors_and_retries(sdk: tuple[Any, Emulator, ManualClock]) -> None:
    client, emu, _ = sdk
    emu.inject("rate_limit", retry_after_ms=1)
    assert client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES).content
    assert emu.requests["messages"] == 2
    emu.inject("overloaded", times=None)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=16, messages=MESSAGES
        )
    assert info.value.status_code == 529
    emu.clear_faults()
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: 64001 > 64000"):
        client.messages.create(model=MODEL, max_tokens=64_001, messages=MESSAGES, timeout=3600)
    emu.inject("stream_error", after_events=3)
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model=MODEL, max_tokens=16, messages=MESSAGES) as stream,
    ):
        stream.get_final_message()


async def test_async_sdk_over_the_httpx2_transport() -> None:
    emu = Emulator()
    http_client = anthropic.DefaultAsyncHttpxClient(transport=emu.httpx2_transport())
    async with anthropic.AsyncAnthropic(
        api_key="k", base_url="http://emulator.local", http_client=http_client
    ) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
            final = await stream.get_final_message()
    assert final.content[0].text == message.content[0].text
