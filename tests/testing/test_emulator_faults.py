"""Fault injection: status errors, dropped connections, latency, counting and clearing."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator

HELLO: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hi"}],
}


def test_rate_limit_has_retry_after(client: httpx.Client, emu: Emulator) -> None:
    emu.inject("rate_limit", retry_after=3)
    response = client.post("/v1/messages", json=HELLO)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    body = response.json()
    assert body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == response.headers["request-id"]
    assert client.post("/v1/messages", json=HELLO).status_code == 200


def test_rate_limit_defaults_and_retry_after_ms(client: httpx.Client, emu: Emulator) -> None:
    emu.inject("rate_limit")
    assert client.post("/v1/messages", json=HELLO).headers["retry-after"] == "1"
    emu.inject("rate_limit", retry_after_ms=250)
    response = client.post("/v1/messages", json=HELLO)
    assert response.headers["retry-after-ms"] == "250"
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [("overloaded", 529, "overloaded_error"), ("server_error", 500, "api_error")],
)
def test_server_side_failures(
    client: httpx.Client, emu: Emulator, kind: str, status: int, error_type: str
) -> None:
    emu.inject(kind)
    response = client.post("/v1/messages", json=HELLO)
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert emu.bill.entries == []


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (403, "permission_error"),
        (504, "timeout_error"),
        (418, "invalid_request_error"),
    ],
)
def test_any_status(client: httpx.Client, emu: Emulator, status: int, error_type: str) -> None:
    emu.inject("status", status=status)
    response = client.post("/v1/messages", json=HELLO)
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type


def test_times_and_forever_and_clear(client: httpx.Client, emu: Emulator) -> None:
    fault = emu.inject("overloaded", times=2)
    assert [client.post("/v1/messages", json=HELLO).status_code for _ in range(3)] == [
        529,
        529,
        200,
    ]
    assert fault.hits == 2 and not fault.active
    forever = emu.inject("overloaded", times=None)
    assert all(client.post("/v1/messages", json=HELLO).status_code == 529 for _ in range(5))
    assert forever.hits == 5 and forever.active
    emu.clear_faults()
    assert client.post("/v1/messages", json=HELLO).status_code == 200


def test_faults_apply_to_their_endpoint_only(client: httpx.Client, emu: Emulator) -> None:
    emu.inject("overloaded", endpoint="count_tokens")
    assert client.post("/v1/messages", json=HELLO).status_code == 200
    counted = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    assert client.post("/v1/messages/count_tokens", json=counted).status_code == 529
    emu.inject("server_error", endpoint="*")
    assert client.get("/v1/messages/batches").status_code == 500
    assert emu.requests["count_tokens"] == 1
    assert emu.requests["batches.list"] == 1


def test_drop_raises_a_transport_error(client: httpx.Client, emu: Emulator) -> None:
    emu.inject("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/v1/messages", json=HELLO)
    assert emu.log[-1].status == 0
    assert emu.requests["messages"] == 1
    assert client.post("/v1/messages", json=HELLO).status_code == 200


def test_latency_delays_the_answer(client: httpx.Client, emu: Emulator) -> None:
    emu.inject("latency", seconds=0.2)
    start = time.perf_counter()
    assert client.post("/v1/messages", json=HELLO).status_code == 200
    assert time.perf_counter() - start >= 0.2
    # Latency combines with an error fault.
    emu.inject("latency", seconds=0.1)
    emu.inject("overloaded")
    start = time.perf_counter()
    assert client.post("/v1/messages", json=HELLO).status_code == 529
    assert time.perf_counter() - start >= 0.1


async def test_async_latency_and_drop(emu: Emulator) -> None:
    async with httpx.AsyncClient(
        transport=emu.transport(),
        base_url="http://e",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        emu.inject("latency", seconds=0.05)
        start = time.perf_counter()
        assert (await c.post("/v1/messages", json=HELLO)).status_code == 200
        assert time.perf_counter() - start >= 0.05
        emu.inject("drop")
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post("/v1/messages", json=HELLO)


def test_bad_inject_arguments() -> None:
    emu = Emulator()
    with pytest.raises(ValueError, match="unknown fault kind"):
        emu.inject("meteor")
    with pytest.raises(ValueError, match="status"):
        emu.inject("status")


def statuses(emu: Emulator, n: int) -> list[int]:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    with httpx.Client(transport=emu.transport(), base_url="http://e", headers=headers) as c:
        return [c.post("/v1/messages", json=HELLO).status_code for _ in range(n)]


def test_transient_faults_are_529_500_or_429(client: httpx.Client, emu: Emulator) -> None:
    fault = emu.inject("transient", times=30)
    seen: dict[int, httpx.Response] = {}
    for _ in range(30):
        response = client.post("/v1/messages", json=HELLO)
        seen.setdefault(response.status_code, response)
    assert set(seen) == {429, 500, 529}
    assert fault.hits == 30 and not fault.active
    assert seen[529].json()["error"]["type"] == "overloaded_error"
    assert seen[500].json()["error"]["type"] == "api_error"
    assert seen[429].json()["error"]["type"] == "rate_limit_error"
    assert seen[429].headers["retry-after"] == "1"  # a 429 always says when to come back
    assert "retry-after" not in seen[529].headers
    assert client.post("/v1/messages", json=HELLO).status_code == 200
    assert emu.bill.entries[-1].request_id == emu.log[-1].request_id


def test_a_fault_rate_fails_that_share_of_requests_repeatably() -> None:
    def run(seed: int) -> tuple[list[int], int]:
        emu = Emulator(seed=seed)
        fault = emu.inject("transient", times=None, rate=0.25)
        return statuses(emu, 400), fault.hits

    codes, hits = run(seed=7)
    failed = sum(1 for c in codes if c != 200)
    assert set(codes) == {200, 429, 500, 529}
    assert failed == hits  # times and hits count the requests it hit, not the draws
    assert 60 <= failed <= 140
    assert run(seed=7) == (codes, hits)
    assert run(seed=8)[0] != codes


def test_a_rate_applies_to_every_kind_and_only_to_its_endpoint(emu: Emulator) -> None:
    emu.inject("overloaded", times=None, rate=0.5)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    counted = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    with httpx.Client(transport=emu.transport(), base_url="http://e", headers=headers) as c:
        codes = [c.post("/v1/messages", json=HELLO).status_code for _ in range(40)]
        assert all(
            c.post("/v1/messages/count_tokens", json=counted).status_code == 200 for _ in range(10)
        )
    assert set(codes) == {200, 529}
    never = Emulator()
    never.inject("overloaded", times=None, rate=0.0)
    assert set(statuses(never, 20)) == {200}


def test_a_bad_rate_is_refused() -> None:
    emu = Emulator()
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            emu.inject("transient", rate=rate)


def test_a_fault_for_one_model_spares_the_others(client: httpx.Client, emu: Emulator) -> None:
    emu.overload(1.0, model="claude-haiku-4-5")
    sonnet = {**HELLO, "model": "claude-sonnet-4-5"}
    dated = {**HELLO, "model": "claude-haiku-4-5-20251001"}
    assert [client.post("/v1/messages", json=b).status_code for b in (HELLO, dated, sonnet)] == [
        529,
        529,
        200,
    ]
