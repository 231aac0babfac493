"""Strictness: unknown models get the API's 404, keys outside ``api_keys`` its 401."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator, ManualClock

MODEL = "claude-haiku-4-5"
HELLO: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}
COUNT: dict[str, Any] = {k: v for k, v in HELLO.items() if k != "max_tokens"}
VERSION = {"anthropic-version": "2023-06-01"}


def api_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The error's message, after checking the exact shape the real API sends (§4.6)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "type": "error",
        "error": {"type": error_type, "message": body["error"]["message"]},
        "request_id": response.headers["request-id"],
    }
    message: str = body["error"]["message"]
    return message


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "model",
    [
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-5-20251101",
        "claude-opus-4-1",
        "claude-3-5-haiku-latest",
        "claude-sonnet-4-20250514",
        "claude-opus-4-0",
        "claude-sonnet-4-6",
    ],
)
def test_the_apis_model_ids_are_answered(client: httpx.Client, model: str) -> None:
    assert client.post("/v1/messages", json={**HELLO, "model": model}).status_code == 200
    counted = client.post("/v1/messages/count_tokens", json={**COUNT, "model": model})
    assert counted.status_code == 200


@pytest.mark.parametrize(
    "model",
    [
        "claude-haiku-4.5",  # a typo
        "claude-haiku-4-5-20250101",  # a wrong date
        "claude-haiku-4-5@20251001",  # Vertex's spelling
        "anthropic.claude-haiku-4-5-20251001-v1:0",  # Bedrock's
        "gpt-4o-mini",
        "Claude-Haiku-4-5",
    ],
)
def test_an_unknown_model_is_404_with_the_apis_shape(
    client: httpx.Client, emu: Emulator, model: str
) -> None:
    response = client.post("/v1/messages", json={**HELLO, "model": model})
    assert api_error(response, 404, "not_found_error") == f"model: {model}"
    assert emu.bill.entries == []
    assert emu.log[-1].status == 404 and emu.log[-1].endpoint == "messages"


def test_an_unknown_model_is_404_before_a_stream_starts(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/v1/messages", json={**HELLO, "model": "claude-nope", "stream": True}
    ) as response:
        response.read()
    assert api_error(response, 404, "not_found_error") == "model: claude-nope"


def test_count_tokens_checks_the_model_too(client: httpx.Client) -> None:
    response = client.post("/v1/messages/count_tokens", json={**COUNT, "model": "claude-nope"})
    assert api_error(response, 404, "not_found_error") == "model: claude-nope"


def test_a_malformed_request_is_400_whatever_its_model(client: httpx.Client) -> None:
    response = client.post("/v1/messages", json={"model": "claude-nope", "messages": []})
    assert api_error(response, 400, "invalid_request_error") == "max_tokens: Field required"


def test_a_batch_item_with_an_unknown_model_ends_errored(
    client: httpx.Client, emu: Emulator, clock: ManualClock
) -> None:
    requests = [
        {"custom_id": "good", "params": HELLO},
        {"custom_id": "bad", "params": {**HELLO, "model": "claude-nope"}},
    ]
    # Params are validated when the batch runs, not at creation (reference §3.2).
    created = client.post("/v1/messages/batches", json={"requests": requests})
    assert created.status_code == 200, created.text
    clock.advance(emu.batch_processing_seconds)
    batch = client.get(f"/v1/messages/batches/{created.json()['id']}").json()
    assert batch["processing_status"] == "ended"
    assert batch["request_counts"]["succeeded"] == 1
    assert batch["request_counts"]["errored"] == 1
    lines = client.get(batch["results_url"]).text.splitlines()
    results = {r["custom_id"]: r["result"] for r in map(json.loads, lines)}
    assert results["good"]["type"] == "succeeded"
    error = results["bad"]["error"]
    assert results["bad"]["type"] == "errored"
    assert error["type"] == "error"
    assert error["error"] == {"type": "not_found_error", "message": "model: claude-nope"}
    assert error["request_id"].startswith("req_")
    assert [e.custom_id for e in emu.bill.entries] == ["good"]


def test_extra_models_are_accepted_everywhere(clock: ManualClock) -> None:
    emu = Emulator(clock=clock, extra_models=["gateway/haiku", "my-model"])
    assert emu.extra_models == frozenset({"gateway/haiku", "my-model"})
    headers = {"x-api-key": "k", **VERSION}
    with httpx.Client(transport=emu.transport(), base_url="http://e", headers=headers) as c:
        reply = c.post("/v1/messages", json={**HELLO, "model": "gateway/haiku"})
        assert reply.status_code == 200 and reply.json()["model"] == "gateway/haiku"
        counted = c.post("/v1/messages/count_tokens", json={**COUNT, "model": "my-model"})
        assert counted.status_code == 200
        params = {**HELLO, "model": "my-model"}
        created = c.post(
            "/v1/messages/batches", json={"requests": [{"custom_id": "a", "params": params}]}
        )
        clock.advance(emu.batch_processing_seconds)
        batch = c.get(f"/v1/messages/batches/{created.json()['id']}").json()
        assert batch["request_counts"]["succeeded"] == 1
        # Extra models add to the API's; they do not replace them.
        assert c.post("/v1/messages", json=HELLO).status_code == 200
        assert c.post("/v1/messages", json={**HELLO, "model": "other"}).status_code == 404


def test_a_lone_string_is_not_taken_for_a_collection() -> None:
    with pytest.raises(TypeError):
        Emulator(extra_models="my-model")
    with pytest.raises(TypeError):
        Emulator(api_keys="sk-one")


# --------------------------------------------------------------------------- keys


ENDPOINTS = [
    ("POST", "/v1/messages", HELLO),
    ("POST", "/v1/messages/count_tokens", COUNT),
    ("POST", "/v1/messages/batches", {"requests": [{"custom_id": "a", "params": HELLO}]}),
    ("GET", "/v1/messages/batches", None),
]


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_with_api_keys_any_other_key_is_401(header: str, method: str, path: str, body: Any) -> None:
    emu = Emulator(api_keys=["sk-one", "sk-two"])

    def auth(key: str) -> dict[str, str]:
        return {header: key if header == "x-api-key" else f"Bearer {key}", **VERSION}

    with httpx.Client(transport=emu.transport(), base_url="http://e") as c:
        for key in ("sk-one", "sk-two"):
            assert c.request(method, path, json=body, headers=auth(key)).status_code == 200
        for key in ("sk-three", "sk-onex", "SK-ONE"):
            response = c.request(method, path, json=body, headers=auth(key))
            assert api_error(response, 401, "authentication_error") == "invalid x-api-key"
        response = c.request(method, path, json=body, headers=VERSION)
        assert api_error(response, 401, "authentication_error") == "x-api-key header is required"
    assert emu.requests[emu.log[-1].endpoint] == 6


def test_without_api_keys_any_non_empty_key_is_accepted(client: httpx.Client) -> None:
    for auth in ({"x-api-key": "anything"}, {"authorization": "Bearer whatever"}):
        headers = {**auth, **VERSION}
        assert client.post("/v1/messages", json=HELLO, headers=headers).status_code == 200


def test_the_sdk_raises_its_own_errors() -> None:
    anthropic = pytest.importorskip("anthropic")
    emu = Emulator(api_keys=["sk-good"])
    with emu.serve() as base_url:
        with (
            anthropic.Anthropic(api_key="sk-bad", base_url=base_url, max_retries=0) as bad,
            pytest.raises(anthropic.AuthenticationError),
        ):
            bad.messages.create(**HELLO)
        with anthropic.Anthropic(api_key="sk-good", base_url=base_url, max_retries=0) as sdk:
            with pytest.raises(anthropic.NotFoundError) as info:
                sdk.messages.create(**{**HELLO, "model": "claude-nope"})
            assert info.value.body["error"]["message"] == "model: claude-nope"
            assert sdk.messages.create(**HELLO).type == "message"
