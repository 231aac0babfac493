"""The loopback server: plain HTTP/1.1 with keep-alive, chunked SSE, faults on a real socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator, EmulatorServer, ManualClock

HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
HELLO: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}


def test_serve_yields_a_base_url_and_stops(emu: Emulator) -> None:
    with emu.serve() as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, headers=HEADERS) as c:
            response = c.post("/v1/messages", json=HELLO)
            assert response.status_code == 200
            assert response.json()["type"] == "message"
            assert response.headers["request-id"].startswith("req_")
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=base_url) as c:
        c.get("/v1/messages/batches")


def test_keep_alive_reuses_one_connection(emu: Emulator) -> None:
    ports: set[int] = set()
    with emu.serve() as base_url, httpx.Client(base_url=base_url, headers=HEADERS) as c:
        for _ in range(20):
            response = c.post("/v1/messages", json=HELLO)
            assert response.status_code == 200
            ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1
    assert emu.requests["messages"] == 20


def test_results_url_points_at_the_server() -> None:
    clock = ManualClock()
    emu = Emulator(clock=clock)
    with emu.serve() as base_url, httpx.Client(base_url=base_url, headers=HEADERS) as c:
        batch = c.post(
            "/v1/messages/batches", json={"requests": [{"custom_id": "a", "params": HELLO}]}
        ).json()
        clock.advance(60)
        ended = c.get(f"/v1/messages/batches/{batch['id']}").json()
        assert ended["results_url"] == f"{base_url}/v1/messages/batches/{batch['id']}/results"
        line = json.loads(c.get(ended["results_url"]).text)
        assert line["custom_id"] == "a"


def test_streaming_over_the_socket(emu: Emulator) -> None:
    with emu.serve() as base_url, httpx.Client(base_url=base_url, headers=HEADERS) as c:
        with c.stream("POST", "/v1/messages", json={**HELLO, "stream": True}) as response:
            assert response.headers["transfer-encoding"] == "chunked"
            text = response.read().decode()
        assert text.startswith("event: message_start\n")
        assert text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
        # The connection is still good for the next request.
        assert c.post("/v1/messages", json=HELLO).status_code == 200


def test_faults_over_the_socket(emu: Emulator) -> None:
    with emu.serve() as base_url, httpx.Client(base_url=base_url, headers=HEADERS) as c:
        emu.inject("rate_limit", retry_after=2)
        limited = c.post("/v1/messages", json=HELLO)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
        emu.inject("overloaded")
        overloaded = c.post("/v1/messages", json=HELLO)
        assert overloaded.status_code == 529
        assert overloaded.reason_phrase == "Overloaded"
        emu.inject("drop")
        with pytest.raises(httpx.RemoteProtocolError):
            c.post("/v1/messages", json=HELLO)
        emu.inject("stream_cut", after_events=2)
        with (
            pytest.raises(httpx.RemoteProtocolError),
            c.stream("POST", "/v1/messages", json={**HELLO, "stream": True}) as r,
        ):
            r.read()
        emu.inject("latency", seconds=0.2)
        start = time.perf_counter()
        assert c.post("/v1/messages", json=HELLO).status_code == 200
        assert time.perf_counter() - start >= 0.2


def test_raw_http_like_curl(emu: Emulator) -> None:
    body = json.dumps(HELLO).encode()
    server = emu.start_server()
    try:
        assert isinstance(server, EmulatorServer)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            request = (
                b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nx-api-key: k\r\n"
                b"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                + b"%x\r\n%s\r\n0\r\n\r\n"
                % (len(body), body)
            )
            sock.sendall(request)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
        head, _, payload = raw.split(b"\r\n\r\n", 1)[1].partition(b"\r\n\r\n")
        assert b"connection: close" in head
        assert json.loads(payload)["type"] == "message"
        assert emu.log[-1].headers["host"] == "localhost"
    finally:
        server.stop()
    server.stop()  # idempotent


def test_concurrent_clients_share_one_cache(emu: Emulator, text_of: Any) -> None:
    body = {
        **HELLO,
        "system": [{"type": "text", "text": text_of(5000), "cache_control": {"type": "ephemeral"}}],
    }
    usages: list[dict[str, Any]] = []
    with emu.serve() as base_url:

        def worker() -> None:
            with httpx.Client(base_url=base_url, headers=HEADERS) as c:
                for _ in range(5):
                    usages.append(c.post("/v1/messages", json=body).json()["usage"])

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(usages) == 20
    assert sum(1 for u in usages if u["cache_creation_input_tokens"]) == 1
    assert sum(1 for u in usages if u["cache_read_input_tokens"]) == 19


def test_run_server_serves_until_interrupted() -> None:
    import signal
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = f"from haikucache.testing import run_server; run_server('127.0.0.1', {port}, seed=3)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"haikucache emulator listening on http://127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS) as c:
            assert c.post("/v1/messages", json=HELLO).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
