"""The emulator's rate limits (RPM, ITPM cache-aware, OTPM, batch RPM) and overload setting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

from haikucache.testing import Emulator, ManualClock

MODEL = "claude-haiku-4-5"
Send = Callable[..., httpx.Response]


def small(text: str = "Hello there") -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def cached(system_text: str, question: str = "Summarise it.") -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": question}],
    }


def ratelimit_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("anthropic-ratelimit-")}


def test_no_limits_no_headers(emu: Emulator, send: Send) -> None:
    response = send(small())
    assert response.status_code == 200
    assert ratelimit_headers(response) == {}


def test_rpm_429_with_retry_after_and_headers(
    emu: Emulator, clock: ManualClock, send: Send
) -> None:
    emu.set_rate_limits(MODEL, rpm=3)
    remaining = []
    for _ in range(3):
        response = send(small())
        assert response.status_code == 200
        remaining.append(response.headers["anthropic-ratelimit-requests-remaining"])
        assert response.headers["anthropic-ratelimit-requests-limit"] == "3"
    assert remaining == ["2", "1", "0"]
    refused = send(small())
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["request_id"] == refused.headers["request-id"]
    # One request comes back every 60 / 3 = 20 s.
    assert refused.headers["retry-after"] == "20"
    reset = dt.datetime.fromisoformat(
        refused.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00")
    )
    assert reset.timestamp() == pytest.approx(clock.now() + 60, abs=0.01)
    assert emu.bill.total_usd > 0
    billed = len(emu.bill.entries)
    clock.advance(19.9)
    assert send(small()).status_code == 429
    clock.advance(0.1)
    assert send(small()).status_code == 200
    assert len(emu.bill.entries) == billed + 1  # a refused request is not billed


def test_refill_is_continuous(emu: Emulator, clock: ManualClock, send: Send) -> None:
    emu.set_rate_limits(MODEL, rpm=60)
    for _ in range(60):
        assert send(small()).status_code == 200
    assert send(small()).status_code == 429
    clock.advance(5)  # 60 per minute: 5 back after 5 s, not a whole minute's worth
    assert [send(small()).status_code for _ in range(6)] == [200] * 5 + [429]


def test_itpm_counts_input_and_refuses_with_headers(
    emu: Emulator, clock: ManualClock, send: Send, text_of: Callable[..., str]
) -> None:
    emu.set_rate_limits(MODEL, itpm=5_000)
    body = small(text_of(2_000))
    first = send(body)
    assert first.status_code == 200
    used = first.json()["usage"]["input_tokens"]
    assert 2_000 <= used < 2_100
    assert first.headers["anthropic-ratelimit-input-tokens-limit"] == "5000"
    # Rounded to the nearest thousand, as the API does.
    assert first.headers["anthropic-ratelimit-input-tokens-remaining"] == str(
        round((5_000 - used) / 1000) * 1000
    )
    assert send(body).status_code == 200
    refused = send(body)
    assert refused.status_code == 429
    assert "input tokens per minute" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    clock.advance(float(refused.headers["retry-after"]))
    assert send(body).status_code == 200


def test_itpm_is_cache_aware_for_haiku_4_5(
    emu: Emulator, clock: ManualClock, send: Send, text_of: Callable[..., str]
) -> None:
    emu.set_rate_limits(MODEL, itpm=20_000)
    system = text_of(5_000)
    first = send(cached(system))
    assert first.json()["usage"]["cache_creation_input_tokens"] > 4_096
    # Each later call reads ~5,000 tokens from cache and sends ~10 new ones: reads do not
    # count, so far more than 20,000 / 5,000 = 4 calls fit in the minute.
    statuses = [send(cached(system, f"Question {i}?")).status_code for i in range(30)]
    assert statuses == [200] * 30
    usage = send(cached(system, "Last?")).json()["usage"]
    assert usage["cache_read_input_tokens"] > 4_096


def test_itpm_counts_cache_reads_when_not_cache_aware(
    emu: Emulator, send: Send, text_of: Callable[..., str]
) -> None:
    emu.set_rate_limits(MODEL, itpm=20_000, cache_aware=False)
    system = text_of(5_000)
    statuses = [send(cached(system, f"Question {i}?")).status_code for i in range(6)]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses


def test_a_refused_request_writes_nothing_to_the_prompt_cache(
    emu: Emulator, clock: ManualClock, send: Send, text_of: Callable[..., str]
) -> None:
    emu.set_rate_limits(MODEL, rpm=1)
    system = text_of(5_000)
    assert send(small()).status_code == 200
    assert send(cached(system)).status_code == 429
    assert emu.cache_entries == 0
    clock.advance(60)
    assert send(cached(system)).json()["usage"]["cache_creation_input_tokens"] > 0


def test_otpm_charges_produced_tokens_not_max_tokens(
    emu: Emulator, clock: ManualClock, send: Send
) -> None:
    emu.set_rate_limits(MODEL, otpm=1_000)
    body = {**small(), "max_tokens": 60_000}  # max_tokens does not count
    produced = 0
    statuses = []
    for _ in range(200):
        response = send(body)
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
        produced += response.json()["usage"]["output_tokens"]
    assert statuses[0] == 200
    assert statuses[-1] == 429
    # Admitted while the bucket was not empty: at most one answer's worth over the limit.
    assert 1_000 <= produced < 1_000 + 400
    assert "output tokens per minute" in response.json()["error"]["message"]


def test_alias_and_dated_id_share_buckets(emu: Emulator, send: Send) -> None:
    emu.set_rate_limits("claude-haiku-4-5-20251001", rpm=2)
    assert send(small()).status_code == 200
    assert send({**small(), "model": "claude-haiku-4-5-20251001"}).status_code == 200
    assert send(small()).status_code == 429


def test_limits_can_be_removed(emu: Emulator, send: Send) -> None:
    emu.set_rate_limits(MODEL, rpm=1)
    send(small())
    assert send(small()).status_code == 429
    emu.set_rate_limits(MODEL)
    assert send(small()).status_code == 200


def test_streams_carry_the_headers(emu: Emulator, send: Send) -> None:
    emu.set_rate_limits(MODEL, rpm=10, otpm=10_000)
    response = send({**small(), "stream": True})
    assert response.status_code == 200
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert "anthropic-ratelimit-tokens-limit" in response.headers


def test_batch_endpoints_have_their_own_rpm(
    emu: Emulator, send: Send, client: httpx.Client
) -> None:
    emu.set_rate_limits(MODEL, rpm=1)
    emu.set_batch_rate_limit(2)
    batch = {"requests": [{"custom_id": "a", "params": small()}]}
    created = send(batch, "/v1/messages/batches")
    assert created.status_code == 200
    assert created.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert client.get("/v1/messages/batches").status_code == 200
    refused = client.get(f"/v1/messages/batches/{created.json()['id']}")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    # Messages are limited separately.
    assert send(small()).status_code == 200


def test_sdk_sees_a_rate_limit_error_with_the_headers(clock: ManualClock) -> None:
    emu = Emulator(clock=clock)
    emu.set_rate_limits(MODEL, rpm=1)
    with emu.serve() as base_url:
        client = anthropic.Anthropic(api_key="sk-test", base_url=base_url, max_retries=0)
        client.messages.create(**small())
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(**small())
        assert info.value.response.headers["retry-after"] == "60"
        assert info.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


# --------------------------------------------------------------------------- overload


def test_overload_for_a_window_of_time(emu: Emulator, clock: ManualClock, send: Send) -> None:
    emu.overload(seconds=30)
    refused = send(small())
    assert refused.status_code == 529
    assert refused.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    clock.advance(29.9)
    assert send(small()).status_code == 529
    clock.advance(0.1)
    assert send(small()).status_code == 200


def test_overload_a_fraction_of_calls(emu: Emulator, send: Send) -> None:
    fault = emu.overload(0.5)
    statuses = [send(small(f"q{i}")).status_code for i in range(400)]
    overloaded = statuses.count(529)
    assert set(statuses) == {200, 529}
    assert 150 < overloaded < 250
    assert fault.hits == overloaded
    emu.clear_faults()
    assert send(small()).status_code == 200


def test_overload_starting_later(emu: Emulator, clock: ManualClock, send: Send) -> None:
    emu.overload(start=clock.now() + 10, seconds=5)
    assert send(small()).status_code == 200
    clock.advance(10)
    assert send(small()).status_code == 529
    clock.advance(5)
    assert send(small()).status_code == 200


def test_bad_settings(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="rpm"):
        emu.set_rate_limits(MODEL, rpm=0)
    with pytest.raises(ValueError, match="seconds"):
        emu.overload(seconds=0)
    with pytest.raises(ValueError, match="until"):
        emu.inject("overloaded", start=10, until=5)
