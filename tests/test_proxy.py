"""``haikucache serve``: the proxy door, driven over loopback by real clients.

The upstream is the emulator's loopback server (or the proxy's own ``--emulator``); the
proxy runs in this process (uvicorn in a thread) or as ``python -m haikucache serve``.
Clients: httpx, the official Python SDK, curl and the official TypeScript SDK under node.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haikucache import ConfigurationError, MissingDependencyError
from haikucache._proxy import ProxyConfig, ProxyServer
from haikucache._sse import SSEDecoder
from haikucache.testing import Emulator

VERSION = {"anthropic-version": "2023-06-01"}
ROOT = Path(__file__).resolve().parents[1]


def ask(text: str, **extra: Any) -> dict[str, Any]:
    # max_tokens leaves room for the emulator to finish: only complete answers are stored.
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def key_headers(key: str, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, **VERSION, **extra}


def events_of(raw: bytes) -> list[dict[str, Any]]:
    return [e.json() for e in SSEDecoder().feed(raw) if e.data]


def text_of(message: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in message["content"])


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(batch_processing_seconds=0)


@pytest.fixture
def upstream(emulator: Emulator) -> Iterator[str]:
    with emulator.serve() as base_url:
        yield base_url


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., ProxyServer]]:
    servers: list[ProxyServer] = []

    def start(**settings: Any) -> ProxyServer:
        settings.setdefault("store", "memory")
        settings.setdefault("port", 0)
        settings.setdefault("ledger", False)
        server = ProxyServer(ProxyConfig(**settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def proxy(start_proxy: Callable[..., ProxyServer], upstream: str) -> ProxyServer:
    return start_proxy(upstream=upstream)


@pytest.fixture
def client(proxy: ProxyServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.base_url, timeout=30) as http:
        yield http


# --------------------------------------------------------------------------- JSON


def test_a_json_miss_then_a_hit_with_the_outcome_in_headers(
    client: httpx.Client, emulator: Emulator
) -> None:
    first = client.post("/v1/messages", json=ask("Baggage allowance?"), headers=key_headers("sk-a"))
    assert first.status_code == 200, first.text
    assert first.headers["haikucache-cache"] == "miss"
    assert first.headers["haikucache-key"].startswith("hc1:")
    assert float(first.headers["haikucache-cost-usd"]) > 0
    assert first.headers["request-id"].startswith("req_")  # upstream's own headers kept

    second = client.post(
        "/v1/messages", json=ask("Baggage allowance?"), headers=key_headers("sk-a")
    )
    assert second.status_code == 200
    assert second.headers["haikucache-cache"] == "hit"
    assert float(second.headers["haikucache-cost-usd"]) == 0
    assert float(second.headers["haikucache-saved-usd"]) > 0
    assert second.headers["haikucache-key"] == first.headers["haikucache-key"]
    assert text_of(second.json()) == text_of(first.json())
    assert second.json()["id"] != first.json()["id"]  # a hit is a new response
    assert emulator.requests["messages"] == 1


def test_the_upstream_gets_the_planned_body_without_haikucache_headers(
    client: httpx.Client, emulator: Emulator
) -> None:
    policy = "Refunds go to the original form of payment within seven days. " * 800
    body = ask("How are refunds paid?", system=policy)
    headers = key_headers("sk-a", **{"haikucache-tags": "refunds", "haikucache-ttl": "60"})
    assert client.post("/v1/messages", json=body, headers=headers).status_code == 200
    (record,) = [r for r in emulator.log if r.endpoint == "messages"]
    assert not [name for name in record.headers if name.startswith("haikucache-")]
    # The planner put a breakpoint on the long system prompt (it was a string).
    assert record.body["system"][0]["cache_control"]["type"] == "ephemeral"


def test_option_headers_are_honoured(client: httpx.Client, emulator: Emulator) -> None:
    body = ask("What time is boarding?")
    client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    fresh = client.post(
        "/v1/messages", json=body, headers=key_headers("sk-a", **{"haikucache-no-cache": "1"})
    )
    assert fresh.headers["haikucache-cache"] == "miss"
    labelled = client.post(
        "/v1/messages", json=body, headers=key_headers("sk-a", **{"haikucache-namespace": "team-x"})
    )
    assert labelled.headers["haikucache-namespace"] == "team-x"
    assert emulator.requests["messages"] == 3  # a label does not share answers


def test_two_keys_never_share(client: httpx.Client, emulator: Emulator) -> None:
    body = ask("Is the lounge open?")
    a = client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    b = client.post("/v1/messages", json=body, headers={"authorization": "Bearer sk-b", **VERSION})
    assert (a.headers["haikucache-cache"], b.headers["haikucache-cache"]) == ("miss", "miss")
    assert a.headers["haikucache-namespace"] != b.headers["haikucache-namespace"]
    assert "sk-a" not in a.headers["haikucache-namespace"]  # a hash, never the key
    again = client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    assert again.headers["haikucache-cache"] == "hit"
    assert emulator.requests["messages"] == 2


# --------------------------------------------------------------------------- SSE


def test_a_stream_goes_live_then_is_replayed(client: httpx.Client, emulator: Emulator) -> None:
    body = ask("Stream the check-in rules.", stream=True)
    with client.stream("POST", "/v1/messages", json=body, headers=key_headers("sk-a")) as live:
        assert live.status_code == 200
        assert live.headers["content-type"].startswith("text/event-stream")
        assert live.headers["haikucache-cache"] == "miss"
        live_events = events_of(live.read())
    replay = client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    assert replay.headers["haikucache-cache"] == "hit"
    assert replay.headers["content-type"].startswith("text/event-stream")
    replayed = events_of(replay.content)
    assert replayed[0]["type"] == "message_start"
    assert replayed[-1]["type"] == "message_stop"
    assert streamed_text(replayed) == streamed_text(live_events)
    assert emulator.requests["messages"] == 1


def test_a_stream_that_fails_midway_reaches_the_caller_as_it_is_and_is_not_stored(
    client: httpx.Client, emulator: Emulator
) -> None:
    body = ask("Stream, then fail.", stream=True)
    emulator.inject("stream_error", times=1, after_events=3)
    failed = client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    assert failed.status_code == 200  # the API's own shape: an error event inside a 200
    assert events_of(failed.content)[-1]["type"] == "error"
    emulator.inject("stream_cut", times=1, after_events=3)
    with pytest.raises(httpx.RemoteProtocolError):  # a cut upstream is a cut stream
        client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    whole = client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    assert whole.headers["haikucache-cache"] == "miss"  # neither broken answer was stored
    assert events_of(whole.content)[-1]["type"] == "message_stop"
    assert emulator.requests["messages"] == 3


class GatedUpstream:
    """The emulator behind a loopback server that holds each SSE stream after its first
    event until ``release`` is set: what arrives before then was forwarded live."""

    def __init__(self, emulator: Emulator) -> None:
        self.release = threading.Event()
        gate = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                answer = emulator.handle(
                    "POST", f"http://{self.headers['host']}{self.path}", dict(self.headers), body
                )
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                if answer.chunks is None:
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for n, chunk in enumerate(answer.chunks):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    if n == 0:
                        gate.wait(10)
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gated(emulator: Emulator) -> Iterator[GatedUpstream]:
    upstream = GatedUpstream(emulator)
    yield upstream
    upstream.close()


def first_event(lines: Iterator[str]) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data:"):
            data: dict[str, Any] = json.loads(line[5:])
            return data
    raise AssertionError("the stream ended before its first event")


def test_sse_chunks_are_forwarded_as_they_arrive(
    start_proxy: Callable[..., ProxyServer], gated: GatedUpstream
) -> None:
    proxy = start_proxy(upstream=gated.base_url)
    body = ask("Stream slowly.", stream=True)
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{proxy.base_url}/v1/messages", json=body, headers=key_headers("sk-a"), timeout=30
    ) as response:
        lines = response.iter_lines()
        assert first_event(lines)["type"] == "message_start"
        # The upstream still holds the rest of the answer: this event was not buffered.
        assert not gated.release.is_set()
        assert time.monotonic() - started < 5
        gated.release.set()
        rest = list(lines)
    assert any('"message_stop"' in line for line in rest)


# --------------------------------------------------------------------------- pass-through


def test_count_tokens_batches_and_models_pass_through(
    client: httpx.Client, emulator: Emulator, upstream: str, proxy: ProxyServer
) -> None:
    counted = client.post(
        "/v1/messages/count_tokens",
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi there"}]},
        headers=key_headers("sk-a"),
    )
    direct = httpx.post(
        f"{upstream}/v1/messages/count_tokens",
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi there"}]},
        headers=key_headers("sk-a"),
    )
    assert counted.status_code == 200
    assert counted.json() == direct.json()

    created = client.post(
        "/v1/messages/batches",
        json={"requests": [{"custom_id": "job-1", "params": ask("Summarise ticket 7.")}]},
        headers=key_headers("sk-a"),
    )
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    listed = client.get("/v1/messages/batches?limit=5", headers=key_headers("sk-a"))
    assert [b["id"] for b in listed.json()["data"]] == [batch_id]
    retrieved = client.get(f"/v1/messages/batches/{batch_id}", headers=key_headers("sk-a")).json()
    # results_url points at the proxy, so the SDKs fetch the results through it.
    assert retrieved["results_url"].startswith(proxy.base_url + "/v1/messages/batches/")
    results = client.get(retrieved["results_url"], headers=key_headers("sk-a"))
    assert results.status_code == 200
    (line,) = results.text.strip().splitlines()
    assert json.loads(line)["result"]["type"] == "succeeded"

    # Whatever the upstream says about an endpoint is passed on, status and body.
    models = client.get("/v1/models", headers=key_headers("sk-a"))
    direct_models = httpx.get(f"{upstream}/v1/models", headers=key_headers("sk-a"))
    assert models.status_code == direct_models.status_code
    assert models.json()["error"] == direct_models.json()["error"]
    assert emulator.requests["messages"] == 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (json.dumps({"model": "claude-haiku-4-5", "messages": []}), {}),
        (json.dumps(ask("Hi", temperature=7)), {}),
        ("{not json", {}),
        (json.dumps(ask("Hi")), {"haikucache-ttl": "soon"}),
    ],
    ids=["missing-max-tokens", "bad-temperature", "not-json", "bad-option-header"],
)
def test_a_bad_request_is_a_400_and_nothing_is_sent(
    client: httpx.Client, emulator: Emulator, content: str, headers: dict[str, str]
) -> None:
    response = client.post("/v1/messages", content=content, headers=key_headers("sk-a", **headers))
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith("haikucache: ")
    assert len(emulator.log) == 0


def test_upstream_errors_pass_through_with_status_and_body(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.inject("rate_limit", times=1, retry_after=3)
    limited = client.post("/v1/messages", json=ask("Hi"), headers=key_headers("sk-a"))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert "haikucache-cache" not in limited.headers

    emulator.inject("overloaded", times=1)
    streamed = client.post("/v1/messages", json=ask("Hi", stream=True), headers=key_headers("sk-a"))
    assert streamed.status_code == 529
    assert streamed.json()["error"]["type"] == "overloaded_error"

    unknown = client.post(
        "/v1/messages", json={**ask("Hi"), "model": "claude-nonexistent"}, headers=key_headers("a")
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"


def test_an_unreachable_upstream_is_a_502_in_the_api_shape(
    start_proxy: Callable[..., ProxyServer],
) -> None:
    with Emulator().serve() as dead:
        pass  # the port is closed again
    proxy = start_proxy(upstream=dead)
    for body in (ask("Hi"), ask("Hi", stream=True)):
        response = httpx.post(f"{proxy.base_url}/v1/messages", json=body, headers=key_headers("k"))
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "api_error"
    counted = httpx.post(
        f"{proxy.base_url}/v1/messages/count_tokens", json={}, headers=key_headers("k")
    )
    assert counted.status_code == 502


def test_a_body_over_the_limit_is_a_413(
    start_proxy: Callable[..., ProxyServer], upstream: str, emulator: Emulator
) -> None:
    proxy = start_proxy(upstream=upstream, max_body_bytes=2_000)
    big = ask("x" * 5_000)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = httpx.post(f"{proxy.base_url}{path}", json=big, headers=key_headers("k"))
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it streams
        yield b'{"model": "claude-haiku-4-5", "messages": ['
        yield b" " * 5_000
        yield b"]}"

    response = httpx.post(
        f"{proxy.base_url}/v1/messages/count_tokens", content=chunks(), headers=key_headers("k")
    )
    assert response.status_code == 413
    assert emulator.requests["count_tokens"] == 0
    assert emulator.requests["messages"] == 0


# --------------------------------------------------------------------------- operations


def test_healthz_and_prometheus_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    body = ask("Where is gate B?")
    client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    client.post("/v1/messages", json=body, headers=key_headers("sk-a"))
    client.post("/v1/messages", json={"model": "x"}, headers=key_headers("sk-a"))
    client.post(
        "/v1/messages/count_tokens",
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi"}]},
        headers=key_headers("sk-a"),
    )
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['haikucache_proxy_requests_total{outcome="miss"}'] == 1
    assert samples['haikucache_proxy_requests_total{outcome="hit"}'] == 1
    assert samples['haikucache_proxy_requests_total{outcome="invalid"}'] == 1
    assert samples['haikucache_proxy_passthrough_requests_total{endpoint="count_tokens"}'] == 1
    assert samples["haikucache_proxy_billed_usd_total"] > 0
    assert samples["haikucache_proxy_saved_usd"] == pytest.approx(
        samples["haikucache_proxy_billed_usd_total"]
    )  # the hit saved exactly what the miss cost
    assert samples['haikucache_proxy_upstream_latency_seconds_count{endpoint="messages"}'] == 1
    assert client.get("/nowhere").json()["error"]["type"] == "not_found_error"


# --------------------------------------------------------------------------- auth


@pytest.fixture
def virtual_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("TEAM_A_UPSTREAM_KEY", "sk-ant-upstream-secret-a")
    return {"hc-virtual-1": {"upstream_key_env": "TEAM_A_UPSTREAM_KEY", "namespace": "team-a"}}


def test_a_virtual_key_is_mapped_to_its_upstream_key(
    start_proxy: Callable[..., ProxyServer], virtual_keys: dict[str, Any]
) -> None:
    emulator = Emulator(api_keys=["sk-ant-upstream-secret-a"])
    with emulator.serve() as upstream:
        proxy = start_proxy(upstream=upstream, keys=virtual_keys)
        url = f"{proxy.base_url}/v1/messages"
        body = ask("Virtual hello")
        ok = httpx.post(url, json=body, headers=key_headers("hc-virtual-1"))
        assert ok.status_code == 200, ok.text
        assert ok.headers["haikucache-namespace"] == "team-a"
        bearer = httpx.post(
            url,
            json=ask("Bearer hello"),
            headers={"authorization": "Bearer hc-virtual-1", **VERSION},
        )
        assert bearer.status_code == 200
        sent = [r.headers for r in emulator.log]
        assert sent[0]["x-api-key"] == "sk-ant-upstream-secret-a"
        assert sent[1]["authorization"] == "Bearer sk-ant-upstream-secret-a"
        assert not any("hc-virtual-1" in json.dumps(h) for h in sent)
        # Callers' own keys still work by default (and reach upstream as they are).
        own = httpx.post(url, json=body, headers=key_headers("sk-own"))
        assert own.status_code == 401  # this emulator accepts only the upstream key
        assert emulator.log[-1].headers["x-api-key"] == "sk-own"


def test_only_virtual_keys_when_caller_keys_are_off(
    start_proxy: Callable[..., ProxyServer],
    virtual_keys: dict[str, Any],
    emulator: Emulator,
    upstream: str,
) -> None:
    proxy = start_proxy(upstream=upstream, keys=virtual_keys, caller_keys=False)
    for headers in (key_headers("sk-unknown"), VERSION):
        refused = httpx.post(f"{proxy.base_url}/v1/messages", json=ask("Hi"), headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{proxy.base_url}/v1/models", headers=key_headers("nope")).status_code == 401
    assert len(emulator.log) == 0


def test_a_virtual_key_without_its_variable_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("UNSET_UPSTREAM_KEY", raising=False)
    config = ProxyConfig(
        store="memory",
        keys={"hc-1": {"upstream_key_env": "UNSET_UPSTREAM_KEY", "namespace": "t"}},
    )
    with pytest.raises(ConfigurationError, match=r"\$UNSET_UPSTREAM_KEY"):
        ProxyServer(config)


def test_keys_are_never_logged(
    start_proxy: Callable[..., ProxyServer],
    virtual_keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with Emulator().serve() as upstream:
        proxy = start_proxy(upstream=upstream, keys=virtual_keys, log_level="debug")
        url = f"{proxy.base_url}/v1/messages"
        httpx.post(url, json=ask("Log me"), headers=key_headers("sk-caller-secret-1"))
        httpx.post(url, json=ask("Log me", stream=True), headers=key_headers("hc-virtual-1"))
        httpx.post(url, json={"bad": 1}, headers=key_headers("sk-caller-secret-1"))
        httpx.get(f"{proxy.base_url}/v1/models", headers=key_headers("sk-caller-secret-1"))
    # The upstream is gone now: its failure is logged too.
    httpx.post(url, json=ask("Log me too"), headers=key_headers("sk-caller-secret-1"))
    assert caplog.records  # something was logged …
    for secret in ("sk-caller-secret-1", "hc-virtual-1", "sk-ant-upstream-secret-a"):
        assert secret not in caplog.text  # … never a key
    assert "sk-ant-upstream-secret-a" not in repr(proxy.config)


# --------------------------------------------------------------------------- real clients


def test_the_official_python_sdk_through_base_url(proxy: ProxyServer, emulator: Emulator) -> None:
    anthropic = pytest.importorskip("anthropic")
    with anthropic.Anthropic(
        base_url=proxy.base_url, api_key="sk-python-sdk", max_retries=0
    ) as sdk:
        params = ask("What does the SDK see?")
        first = sdk.messages.with_raw_response.create(**params)
        second = sdk.messages.with_raw_response.create(**params)
        assert first.headers["haikucache-cache"] == "miss"
        assert second.headers["haikucache-cache"] == "hit"
        assert second.parse().content[0].text == first.parse().content[0].text

        streamed = ask("Stream to the SDK")
        with sdk.messages.stream(**streamed) as stream:
            live = stream.get_final_message()
        with sdk.messages.stream(**streamed) as stream:
            replayed = stream.get_final_message()
        assert replayed.content[0].text == live.content[0].text
        assert replayed.usage.output_tokens == live.usage.output_tokens
        count = sdk.messages.count_tokens(model="claude-haiku-4-5", messages=params["messages"])
        assert count.input_tokens > 0
        with pytest.raises(anthropic.BadRequestError, match="haikucache"):
            sdk.messages.create(model="claude-haiku-4-5", max_tokens=0, messages=params["messages"])
    assert emulator.requests["messages"] == 2


def test_curl_streams(proxy: ProxyServer, emulator: Emulator) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    command = [
        curl, "-sS", "-N", f"{proxy.base_url}/v1/messages",
        "-H", "x-api-key: sk-curl", "-H", "anthropic-version: 2023-06-01",
        "-H", "content-type: application/json",
        "-d", json.dumps(ask("curl me", stream=True)),
    ]  # fmt: skip
    live = subprocess.run(command, capture_output=True, timeout=30, check=True).stdout
    replayed = subprocess.run(command, capture_output=True, timeout=30, check=True).stdout
    assert b"event: message_stop" in live
    assert streamed_text(events_of(replayed)) == streamed_text(events_of(live))
    assert emulator.requests["messages"] == 1


TS_SCRIPT = r"""
const mod = require("@anthropic-ai/sdk");
const Anthropic = mod.default ?? mod.Anthropic ?? mod;
const [baseURL] = process.argv.slice(2);
const ask = (content) => ({
  model: "claude-haiku-4-5", max_tokens: 1024, messages: [{ role: "user", content }],
});
(async () => {
  const a = new Anthropic({ baseURL, apiKey: "sk-ts-a", maxRetries: 0 });
  const b = new Anthropic({ baseURL, apiKey: "sk-ts-b", maxRetries: 0 });
  const cache = (r) => r.response.headers.get("haikucache-cache");
  const first = await a.messages.create(ask("Hello from node")).withResponse();
  const second = await a.messages.create(ask("Hello from node")).withResponse();
  const other = await b.messages.create(ask("Hello from node")).withResponse();
  const live = await a.messages.stream(ask("Stream to node")).finalMessage();
  const replay = a.messages.stream(ask("Stream to node"));
  const replayed = await replay.finalMessage();
  const replayCache = cache(await replay.withResponse());
  const count = await a.messages.countTokens({
    model: "claude-haiku-4-5", messages: [{ role: "user", content: "Count me" }],
  });
  console.log(JSON.stringify({
    first: cache(first), second: cache(second), other: cache(other),
    same: first.data.content[0].text === second.data.content[0].text,
    streamSame: live.content[0].text === replayed.content[0].text,
    replay: replayCache, tokens: count.input_tokens,
  }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.fixture(scope="module")
def typescript_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``@anthropic-ai/sdk`` from npm, in a directory of its own (skipped when npm cannot
    install it within 60 s: no node, or no registry)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are needed for the TypeScript SDK test")
    directory = tmp_path_factory.mktemp("ts-sdk")
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "@anthropic-ai/sdk"],
            cwd=directory,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"npm could not install @anthropic-ai/sdk within 60 s: {exc}")
    (directory / "check.js").write_text(TS_SCRIPT)
    return directory


def test_the_official_typescript_sdk_under_node(
    typescript_sdk: Path, proxy: ProxyServer, emulator: Emulator
) -> None:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "check.js", proxy.base_url],
        cwd=typescript_sdk,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["first"], seen["second"], seen["other"]) == ("miss", "hit", "miss")
    assert seen["same"] and seen["streamSame"]
    assert seen["replay"] == "hit"
    assert seen["tokens"] > 0
    assert emulator.requests["messages"] == 3  # a, b, and the live stream


# --------------------------------------------------------------------------- the command


def spawn(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``python -m haikucache serve …`` on a free port; returns it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "haikucache", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise AssertionError(f"serve did not start: {line!r} {process.communicate()[1]}")
    base_url = line.rsplit(" ", 1)[-1].strip()
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base_url}/healthz").status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(f"serve is not healthy: {process.communicate()[1]}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[str]) -> bool:
    """SIGTERM; whether it shut down cleanly (uvicorn re-raises the signal once drained)."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    finally:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    return code in (0, -signal.SIGTERM)


def test_serve_emulator_from_the_command_line() -> None:
    process, base_url = spawn("--emulator", "--store", "memory")
    try:
        url = f"{base_url}/v1/messages"
        first = httpx.post(url, json=ask("From the CLI"), headers=key_headers("sk-cli"))
        second = httpx.post(url, json=ask("From the CLI"), headers=key_headers("sk-cli"))
        assert (first.headers["haikucache-cache"], second.headers["haikucache-cache"]) == (
            "miss",
            "hit",
        )
    finally:
        assert stop(process)


def test_shutdown_drains_a_stream_in_flight(gated: GatedUpstream) -> None:
    process, base_url = spawn("--upstream", gated.base_url, "--store", "memory")
    with httpx.stream(
        "POST",
        f"{base_url}/v1/messages",
        json=ask("Drain me", stream=True),
        headers=key_headers("sk-a"),
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        first_event(lines)
        process.send_signal(signal.SIGTERM)  # mid-stream
        time.sleep(0.3)
        assert process.poll() is None  # still draining
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base_url}/healthz", timeout=2)  # no new requests
        gated.release.set()
        rest = list(lines)
    assert any('"message_stop"' in line for line in rest)
    assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert stop(process)  # (already ended: only closes its pipes)


def test_several_workers_share_a_port_and_sum_their_metrics(tmp_path: Path) -> None:
    process, base_url = spawn("--emulator", "--workers", "2", "--store", str(tmp_path / "cache"))
    try:
        for n in range(6):
            response = httpx.post(
                f"{base_url}/v1/messages", json=ask(f"Worker job {n}"), headers=key_headers("k")
            )
            assert response.status_code == 200
        metrics = httpx.get(f"{base_url}/metrics").text
        assert 'haikucache_proxy_requests_total{outcome="miss"} 6.0' in metrics
    finally:
        assert stop(process)


def test_the_config_file_environment_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM_A_KEY", "sk-upstream")
    config = tmp_path / "proxy.toml"
    config.write_text(
        'port = 9001\nstore = "memory"\nworkers = 3\nupstream = "http://gateway.local:9"\n'
        '[keys]\n"hc-virtual-1" = { upstream_key_env = "TEAM_A_KEY", namespace = "team-a" }\n'
    )
    env = {"HAIKUCACHE_PORT": "9002", "HAIKUCACHE_EMULATOR": "true"}
    loaded = ProxyConfig.load(config, env=env, port=9003, workers=None)
    assert (loaded.port, loaded.workers, loaded.store, loaded.emulator) == (9003, 3, "memory", True)
    assert loaded.keys["hc-virtual-1"].namespace == "team-a"
    assert ProxyConfig.from_json(loaded.to_json()) == loaded
    assert "sk-upstream" not in loaded.to_json()  # only the variable's name travels
    assert ProxyConfig.load(env={}).upstream_url == "https://api.anthropic.com"
    assert ProxyConfig.load(env={}).store == "disk"  # the default of every door
    # $ANTHROPIC_BASE_URL is the upstream only when nothing else names one …
    pointed = {"ANTHROPIC_BASE_URL": "http://gateway.local:7"}
    assert ProxyConfig.load(env=pointed).upstream_url == "http://gateway.local:7"
    assert ProxyConfig.load(config, env=pointed).upstream_url == "http://gateway.local:9"
    # … and a shell that already points it at the proxy must not make a loop.
    with pytest.raises(ConfigurationError, match="this proxy itself"):
        ProxyConfig.load(env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:8788"})
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigurationError, match="prot"):
        ProxyConfig.load(config, env={})
    with pytest.raises(ConfigurationError, match="workers"):
        ProxyConfig.load(env={"HAIKUCACHE_WORKERS": "many"}, upstream="http://x.local")


def test_the_command_names_the_extra_when_it_is_missing() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from haikucache._cli import main\n"
        "sys.exit(main(['serve', '--emulator']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'haikucache[serve]'" in done.stderr
    assert issubclass(MissingDependencyError, ImportError)


# --------------------------------------------------------------------------- replicas


def test_two_replicas_on_one_redis_share_hits_and_single_flight(redis_url: str) -> None:
    emulator = Emulator()
    with emulator.serve() as upstream:
        a, url_a = spawn("--upstream", upstream, "--store", redis_url)
        b, url_b = spawn("--upstream", upstream, "--store", redis_url)
        try:
            tag = uuid.uuid4().hex
            stored = httpx.post(
                f"{url_a}/v1/messages", json=ask(f"Shared {tag}"), headers=key_headers("k")
            )
            served = httpx.post(
                f"{url_b}/v1/messages", json=ask(f"Shared {tag}"), headers=key_headers("k")
            )
            assert stored.headers["haikucache-cache"] == "miss"
            assert served.headers["haikucache-cache"] == "hit"  # B serves what A stored
            assert emulator.requests["messages"] == 1
            other_key = httpx.post(
                f"{url_b}/v1/messages", json=ask(f"Shared {tag}"), headers=key_headers("k2")
            )
            assert other_key.headers["haikucache-cache"] == "miss"

            # Concurrent identical requests on both replicas: one upstream call.
            emulator.inject("latency", times=None, seconds=0.5)
            body = ask(f"Stampede {tag}")

            async def stampede() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=30) as http:
                    return await asyncio.gather(
                        *(
                            http.post(f"{url}/v1/messages", json=body, headers=key_headers("k"))
                            for url in [url_a, url_b] * 4
                        )
                    )

            before = emulator.requests["messages"]
            answers = asyncio.run(stampede())
            assert {r.status_code for r in answers} == {200}
            assert emulator.requests["messages"] - before == 1
            assert len({text_of(r.json()) for r in answers}) == 1
            assert sorted(r.headers["haikucache-cache"] for r in answers).count("miss") == 1
        finally:
            assert stop(a)
            assert stop(b)


# --------------------------------------------------------------------------- controls


def test_a_virtual_keys_budget_is_its_own_and_refusals_are_402s_before_upstream(
    start_proxy: Callable[..., ProxyServer],
    monkeypatch: pytest.MonkeyPatch,
    emulator: Emulator,
    upstream: str,
) -> None:
    monkeypatch.setenv("TEAM_UPSTREAM_KEY", "sk-ant-upstream-secret")
    keys = {
        "hc-small": {
            "upstream_key_env": "TEAM_UPSTREAM_KEY",
            "namespace": "small",
            "budget_usd": 0.0,
        },
        "hc-large": {"upstream_key_env": "TEAM_UPSTREAM_KEY", "namespace": "large"},
    }
    proxy = start_proxy(upstream=upstream, keys=keys)
    url = f"{proxy.base_url}/v1/messages"
    refused = httpx.post(url, json=ask("Small team"), headers=key_headers("hc-small"))
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["type"] == "billing_error"
    assert refused.headers["x-should-retry"] == "false"
    streamed = httpx.post(url, json=ask("Small team", stream=True), headers=key_headers("hc-small"))
    assert streamed.status_code == 402
    assert len(emulator.log) == 0
    ok = httpx.post(url, json=ask("Large team"), headers=key_headers("hc-large"))
    assert ok.status_code == 200, ok.text
    assert len(emulator.log) == 1
    metrics = httpx.get(f"{proxy.base_url}/metrics").text
    assert 'haikucache_budget_cap_usd{budget="key:small",period=' in metrics
    assert 'haikucache_proxy_requests_total{outcome="refused"} 2.0' in metrics


def test_the_proxy_rate_limit_is_a_429_with_retry_after_and_nothing_sent(
    start_proxy: Callable[..., ProxyServer], emulator: Emulator, upstream: str
) -> None:
    proxy = start_proxy(upstream=upstream, rpm=2, limit_wait=0)
    url = f"{proxy.base_url}/v1/messages"
    statuses = [
        httpx.post(url, json=ask(f"Question {i}"), headers=key_headers("sk-a")).status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]
    limited = httpx.post(url, json=ask("Question 9"), headers=key_headers("sk-a"))
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    assert len(emulator.log) == 2


def test_the_proxy_falls_back_when_the_model_is_overloaded(
    start_proxy: Callable[..., ProxyServer], emulator: Emulator, upstream: str
) -> None:
    proxy = start_proxy(upstream=upstream, fallback="claude-sonnet-4-5")
    emulator.inject("overloaded", times=1)
    reply = httpx.post(
        f"{proxy.base_url}/v1/messages", json=ask("Where is my bag?"), headers=key_headers("sk-a")
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"].startswith("claude-sonnet-4-5")
    assert [r.body["model"] for r in emulator.log] == ["claude-haiku-4-5", "claude-sonnet-4-5"]


def test_the_proxy_falls_back_to_another_upstream(
    start_proxy: Callable[..., ProxyServer], emulator: Emulator, upstream: str
) -> None:
    backup = Emulator(seed=7)
    with backup.serve() as backup_url:
        proxy = start_proxy(upstream=upstream, fallback=f"{backup_url}")
        emulator.overload(1.0)
        reply = httpx.post(
            f"{proxy.base_url}/v1/messages",
            json=ask("Where is my bag?"),
            headers=key_headers("sk-a"),
        )
        assert reply.status_code == 200, reply.text
        assert len(backup.log) == 1 and backup.log[0].headers["x-api-key"] == "sk-a"


def test_a_virtual_key_has_its_own_share_of_the_rate_limits(
    start_proxy: Callable[..., ProxyServer],
    monkeypatch: pytest.MonkeyPatch,
    emulator: Emulator,
    upstream: str,
) -> None:
    monkeypatch.setenv("TEAM_UPSTREAM_KEY", "sk-ant-upstream-secret")
    keys = {
        "hc-small": {"upstream_key_env": "TEAM_UPSTREAM_KEY", "namespace": "small", "rpm": 1},
        "hc-large": {"upstream_key_env": "TEAM_UPSTREAM_KEY", "namespace": "large"},
    }
    proxy = start_proxy(upstream=upstream, keys=keys, rpm=100, limit_wait=0)
    url = f"{proxy.base_url}/v1/messages"

    def status(key: str, text: str) -> int:
        return httpx.post(url, json=ask(text), headers=key_headers(key)).status_code

    assert [status("hc-small", f"Small {i}") for i in range(2)] == [200, 429]
    assert [status("hc-large", f"Large {i}") for i in range(3)] == [200, 200, 200]
    assert len(emulator.log) == 4


def test_semantic_lookup_through_the_proxy_stays_within_a_key(
    start_proxy: Callable[..., ProxyServer], emulator: Emulator, upstream: str
) -> None:
    pytest.importorskip("onnxruntime")
    proxy = start_proxy(upstream=upstream, semantic=True)
    url = f"{proxy.base_url}/v1/messages"
    first = httpx.post(url, json=ask("How do I reset my password?"), headers=key_headers("sk-a"))
    assert first.headers["haikucache-cache"] == "miss"
    same = httpx.post(url, json=ask("How can I reset my password?"), headers=key_headers("sk-a"))
    assert same.headers["haikucache-cache"] == "semantic", same.headers
    assert same.json()["content"] == first.json()["content"]
    other = httpx.post(url, json=ask("How can I reset my password?"), headers=key_headers("sk-b"))
    assert other.headers["haikucache-cache"] == "miss"  # another key never meets it
    trap = httpx.post(url, json=ask("How do I reset my PIN?"), headers=key_headers("sk-a"))
    assert trap.headers["haikucache-cache"] == "miss"
    assert len(emulator.log) == 3


def test_semantic_needs_a_store() -> None:
    with pytest.raises(ConfigurationError, match="response cache"):
        ProxyConfig(emulator=True, store="none", semantic=True)


def test_replicas_on_a_shared_store_share_the_planners_statistics(
    tmp_path: Path, redis_url: str
) -> None:
    from haikucache._planner import SharedPrefixStats
    from haikucache._proxy import _build_store, _planner

    for settings, shared in (
        ({"store": redis_url}, True),
        ({"store": str(tmp_path / "disk"), "workers": 2}, True),
        ({"store": str(tmp_path / "disk")}, False),
    ):
        config = ProxyConfig(emulator=True, **settings)
        planner = _planner(config, _build_store(config.store))
        assert isinstance(getattr(planner, "stats", None), SharedPrefixStats) is shared, settings


def test_telemetry_is_on_when_asked(start_proxy: Callable[..., ProxyServer], upstream: str) -> None:
    pytest.importorskip("opentelemetry")
    from haikucache._proxy import _Proxy

    assert _Proxy(ProxyConfig(upstream=upstream, telemetry=True)).door.engine.telemetry is not None
    assert _Proxy(ProxyConfig(upstream=upstream)).door.engine.telemetry is None
