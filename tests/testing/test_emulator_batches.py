"""Message Batches: envelope validation, lifecycle on the clock, results, list, cancel, delete."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator, ManualClock

MODEL = "claude-haiku-4-5"


def job(custom_id: str, **params: Any) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"Question {custom_id}"}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


def create(client: httpx.Client, requests: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/v1/messages/batches", json={"requests": requests})
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()
    return batch


def results(client: httpx.Client, batch: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.get(batch["results_url"])
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_lifecycle_with_an_errored_item(
    client: httpx.Client, emu: Emulator, clock: ManualClock
) -> None:
    created = create(client, [job("a"), job("b", stream=True), job("c", max_tokens=0), job("d")])
    assert created["type"] == "message_batch"
    assert created["id"].startswith("msgbatch_01")
    assert created["processing_status"] == "in_progress"
    assert created["request_counts"] == {
        "processing": 4,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert created["created_at"] == "2025-11-20T10:00:00.000000Z"
    assert created["expires_at"] == "2025-11-21T10:00:00.000000Z"
    assert (
        created["ended_at"] is None
        and created["results_url"] is None
        and created["archived_at"] is None
    )

    clock.advance(59)
    assert (
        client.get(f"/v1/messages/batches/{created['id']}").json()["processing_status"]
        == "in_progress"
    )
    early = client.get(f"/v1/messages/batches/{created['id']}/results")
    assert early.status_code == 400
    assert "not available yet" in early.json()["error"]["message"]
    assert emu.bill.entries == []

    clock.advance(1)
    ended = client.get(f"/v1/messages/batches/{created['id']}").json()
    assert ended["processing_status"] == "ended"
    assert ended["ended_at"] == "2025-11-20T10:01:00.000000Z"
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 2,
        "canceled": 0,
        "expired": 0,
    }
    assert (
        ended["results_url"] == f"http://emulator.local/v1/messages/batches/{created['id']}/results"
    )

    lines = results(client, ended)
    assert sorted(r["custom_id"] for r in lines) == ["a", "b", "c", "d"]
    by_id = {r["custom_id"]: r["result"] for r in lines}
    assert by_id["a"]["type"] == "succeeded"
    message = by_id["a"]["message"]
    assert message["type"] == "message" and message["usage"]["service_tier"] == "batch"
    for bad in ("b", "c"):
        error = by_id[bad]["error"]
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["request_id"].startswith("req_")
    assert "stream" in by_id["b"]["error"]["error"]["message"]
    assert "max_tokens" in by_id["c"]["error"]["error"]["message"]
    # Results are stable, and only succeeded items are billed, at half price.
    assert results(client, ended) == lines
    assert [e.custom_id for e in emu.bill.entries] == [
        r["custom_id"] for r in lines if r["result"]["type"] == "succeeded"
    ]
    assert all(e.batch for e in emu.bill.entries)
    assert emu.requests["batches.results"] == 3


def test_result_order_is_seeded() -> None:
    def order(seed: int) -> list[str]:
        clock = ManualClock()
        emu = Emulator(clock=clock, seed=seed)
        with httpx.Client(
            transport=emu.transport(),
            base_url="http://e",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as c:
            batch = create(c, [job(f"job-{i}") for i in range(12)])
            clock.advance(60)
            ended = c.get(f"/v1/messages/batches/{batch['id']}").json()
            return [r["custom_id"] for r in results(c, ended)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != sorted(order(1))


def test_batch_results_share_the_prompt_cache(
    client: httpx.Client, clock: ManualClock, text_of: Any
) -> None:
    system = [
        {"type": "text", "text": text_of(5000), "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    batch = create(client, [job(f"j{i}", system=system) for i in range(3)])
    clock.advance(60)
    lines = results(client, client.get(f"/v1/messages/batches/{batch['id']}").json())
    usages = [r["result"]["message"]["usage"] for r in lines]
    assert usages[0]["cache_creation_input_tokens"] > 5000
    assert all(
        u["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"] for u in usages[1:]
    )


def test_2026_version_rules_apply_to_batch_params(client: httpx.Client, clock: ManualClock) -> None:
    response = client.post(
        "/v1/messages/batches",
        json={"requests": [job("t", temperature=0.2), job("ok")]},
        headers={"anthropic-version": "2026-10-21"},
    )
    batch = response.json()
    clock.advance(60)
    lines = results(client, client.get(f"/v1/messages/batches/{batch['id']}").json())
    outcome = {r["custom_id"]: r["result"]["type"] for r in lines}
    assert outcome == {"t": "errored", "ok": "succeeded"}


def test_cancel_processes_what_finished_and_cancels_the_rest(
    client: httpx.Client, clock: ManualClock
) -> None:
    batch = create(client, [job(f"j{i}") for i in range(4)])
    clock.advance(30)  # requests complete at 15, 30, 45 and 60 s
    canceling = client.post(f"/v1/messages/batches/{batch['id']}/cancel").json()
    assert canceling["processing_status"] == "canceling"
    assert canceling["cancel_initiated_at"] == "2025-11-20T10:00:30.000000Z"
    assert canceling["request_counts"]["processing"] == 4
    ended = client.get(f"/v1/messages/batches/{batch['id']}").json()
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 0,
        "canceled": 2,
        "expired": 0,
    }
    kinds = sorted(r["result"]["type"] for r in results(client, ended))
    assert kinds == ["canceled", "canceled", "succeeded", "succeeded"]
    again = client.post(f"/v1/messages/batches/{batch['id']}/cancel")
    assert again.status_code == 400


def test_unfinished_requests_expire_after_24_hours() -> None:
    clock = ManualClock()
    emu = Emulator(clock=clock, batch_processing_seconds=48 * 3600)
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://127.0.0.1:9",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        batch = create(c, [job(f"j{i}") for i in range(4)])
        clock.advance(24 * 3600 - 1)
        assert (
            c.get(f"/v1/messages/batches/{batch['id']}").json()["processing_status"]
            == "in_progress"
        )
        clock.advance(10 * 3600)
        ended = c.get(f"/v1/messages/batches/{batch['id']}").json()
        assert ended["ended_at"] == ended["expires_at"] == "2025-11-21T10:00:00.000000Z"
        assert ended["request_counts"] == {
            "processing": 0,
            "succeeded": 2,
            "errored": 0,
            "canceled": 0,
            "expired": 2,
        }
        assert ended["results_url"].startswith("http://127.0.0.1:9/")
        assert [r["result"] for r in results(c, ended) if r["result"]["type"] == "expired"] == [
            {"type": "expired"}
        ] * 2


def test_list_is_newest_first_and_paginates(client: httpx.Client, clock: ManualClock) -> None:
    ids = []
    for i in range(5):
        ids.append(create(client, [job(f"j{i}")])["id"])
        clock.advance(1)
    newest_first = ids[::-1]
    page = client.get("/v1/messages/batches", params={"limit": 2}).json()
    assert [b["id"] for b in page["data"]] == newest_first[:2]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (newest_first[0], newest_first[1])
    seen = [b["id"] for b in page["data"]]
    while page["has_more"]:
        page = client.get(
            "/v1/messages/batches", params={"limit": 2, "after_id": page["last_id"]}
        ).json()
        seen += [b["id"] for b in page["data"]]
    assert seen == newest_first
    before = client.get(
        "/v1/messages/batches", params={"limit": 2, "before_id": newest_first[3]}
    ).json()
    assert [b["id"] for b in before["data"]] == newest_first[1:3]
    assert before["has_more"] is True
    assert client.get("/v1/messages/batches").json()["has_more"] is False
    empty = client.get("/v1/messages/batches", params={"after_id": newest_first[-1]}).json()
    assert empty == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    for bad in ("0", "1001", "x"):
        assert client.get("/v1/messages/batches", params={"limit": bad}).status_code == 400


def test_delete_only_after_the_batch_ended(client: httpx.Client, clock: ManualClock) -> None:
    batch = create(client, [job("a")])
    url = f"/v1/messages/batches/{batch['id']}"
    in_progress = client.delete(url)
    assert in_progress.status_code == 400
    assert "cannot be deleted" in in_progress.json()["error"]["message"]
    clock.advance(60)
    deleted = client.delete(url)
    assert deleted.json() == {"id": batch["id"], "type": "message_batch_deleted"}
    assert client.get(url).status_code == 404
    assert client.get(url).json()["error"]["type"] == "not_found_error"
    assert client.get(url + "/results").status_code == 404
    assert client.get("/v1/messages/batches").json()["data"] == []


def test_unknown_batch_is_404(client: httpx.Client) -> None:
    assert client.get("/v1/messages/batches/msgbatch_nope").status_code == 404
    assert client.post("/v1/messages/batches/msgbatch_nope/cancel").status_code == 404


@pytest.mark.parametrize(
    ("requests", "fragment"),
    [
        ([], "requests: List should have at least 1 item"),
        ([job("x" * 65)], "requests.0.custom_id: String should have at most 64 characters"),
        ([job("")], "requests.0.custom_id: String should have at least 1 character"),
        ([job("has space")], "requests.0.custom_id: String should match pattern"),
        ([job("a"), job("a")], "requests.1.custom_id: Duplicate custom_id 'a'"),
        ([{"custom_id": "a"}], "requests.0.params: Field required"),
        (
            [{"custom_id": "a", "params": [], "extra": 1}],
            "requests.0.extra: Extra inputs are not permitted",
        ),
    ],
)
def test_envelope_validation(client: httpx.Client, requests: list[Any], fragment: str) -> None:
    response = client.post("/v1/messages/batches", json={"requests": requests})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(fragment)


def test_zero_processing_time_ends_at_first_look() -> None:
    emu = Emulator(batch_processing_seconds=0, clock=ManualClock())
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://e",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        batch = create(c, [job("a")])
        assert batch["processing_status"] == "in_progress"
        assert c.get(f"/v1/messages/batches/{batch['id']}").json()["processing_status"] == "ended"
