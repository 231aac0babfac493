"""The bill: one entry per billed response, priced from the catalogue with stacked discounts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from haikucache.testing import BillEntry, Emulator, ManualClock

MODEL = "claude-haiku-4-5"


def haiku_usd(usage: dict[str, Any], *, batch: bool = False) -> float:
    split = usage["cache_creation"]
    usd = (
        usage["input_tokens"] * 1.00
        + split["ephemeral_5m_input_tokens"] * 1.25
        + split["ephemeral_1h_input_tokens"] * 2.00
        + usage["cache_read_input_tokens"] * 0.10
        + usage["output_tokens"] * 5.00
    ) / 1_000_000
    return usd / 2 if batch else usd


def test_entries_and_totals(
    client: httpx.Client, emu: Emulator, clock: ManualClock, text_of: Callable[..., str]
) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 128,
        "messages": [{"role": "user", "content": "Hi"}],
        "system": [
            {
                "type": "text",
                "text": text_of(5000),
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
    }
    responses = []
    for _ in range(2):
        responses.append(client.post("/v1/messages", json=body))
        clock.advance(10)
    entries = emu.bill.entries
    assert len(entries) == 2 == len(emu.bill)
    for entry, response in zip(entries, responses, strict=False):
        assert isinstance(entry, BillEntry)
        assert entry.request_id == response.headers["request-id"]
        assert entry.path == "/v1/messages"
        assert entry.model == MODEL
        assert entry.usage == response.json()["usage"]
        assert entry.batch is False and entry.priced is True
        assert entry.usd == pytest.approx(haiku_usd(entry.usage))
    assert entries[1].time - entries[0].time == 10
    assert entries[0].usd > entries[1].usd  # the 1h write costs 2x, the read 0.1x
    assert emu.bill.total_usd == pytest.approx(sum(haiku_usd(r.json()["usage"]) for r in responses))
    tokens = emu.bill.tokens()
    assert tokens["cache_write_1h_tokens"] == entries[0].usage["cache_creation_input_tokens"]
    assert tokens["cache_read_input_tokens"] == entries[1].usage["cache_read_input_tokens"]

    # Errors, count_tokens and list calls are free.
    client.post("/v1/messages", json={**body, "max_tokens": 0})
    client.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": body["messages"]})
    assert len(emu.bill) == 2
    emu.bill.reset()
    assert emu.bill.entries == [] and emu.bill.total_usd == 0


def test_batch_results_are_billed_at_half(
    client: httpx.Client, emu: Emulator, clock: ManualClock
) -> None:
    body = {"model": MODEL, "max_tokens": 128, "messages": [{"role": "user", "content": "Hi"}]}
    realtime = client.post("/v1/messages", json=body).json()
    batch = client.post(
        "/v1/messages/batches", json={"requests": [{"custom_id": "x", "params": body}]}
    ).json()
    clock.advance(60)
    client.get(f"/v1/messages/batches/{batch['id']}")
    online, batched = emu.bill.entries
    assert batched.batch is True
    assert batched.custom_id == "x" and batched.batch_id == batch["id"]
    assert batched.path == "/v1/messages/batches"
    assert batched.usage["output_tokens"] == realtime["usage"]["output_tokens"]  # same answer
    assert batched.usd == pytest.approx(online.usd / 2)
    assert batched.usd == pytest.approx(haiku_usd(batched.usage, batch=True))
    assert batched.time == ManualClock().now() + 60


def test_other_models_use_their_own_prices() -> None:
    emu = Emulator()
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://e",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        usage = c.post(
            "/v1/messages",
            json={
                "model": "claude-sonnet-4-5",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        ).json()["usage"]
    assert emu.bill.entries[0].usd == pytest.approx(
        (usage["input_tokens"] * 3 + usage["output_tokens"] * 15) / 1e6
    )
