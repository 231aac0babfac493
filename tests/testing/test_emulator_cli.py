"""``haikucache emulator``: its flags, on a real child process talking loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from haikucache._cli import main

HELLO: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
COUNT: dict[str, Any] = {k: v for k, v in HELLO.items() if k != "max_tokens"}
VERSION = {"anthropic-version": "2023-06-01"}
ENV_KEYS = "HAIKUCACHE_EMULATOR_API_KEYS"


@dataclass
class Running:
    base_url: str
    banner: list[str]


@contextmanager
def emulator(args: Sequence[str], env_keys: str | None = None) -> Iterator[Running]:
    """Start ``haikucache emulator --port 0 ARGS``, yield it, then stop it with Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if k != ENV_KEYS}
    if env_keys is not None:
        env[ENV_KEYS] = env_keys
    proc = subprocess.Popen(
        [sys.executable, "-m", "haikucache", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("haikucache emulator listening on http://127.0.0.1:"), first
        base_url = first.rsplit(" ", 1)[-1].strip()
        banner = [first.rstrip("\n")]
        # The banner ends with the batch duration line.
        while not banner[-1].lstrip().startswith("batches end after"):
            line = proc.stdout.readline()
            assert line, "the emulator exited while printing its banner"
            banner.append(line.rstrip("\n"))
        yield Running(base_url, banner)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_defaults_accept_any_key_but_only_the_apis_models() -> None:
    with emulator([]) as running, httpx.Client(base_url=running.base_url) as c:
        assert running.banner[1] == f"  export ANTHROPIC_BASE_URL={running.base_url}"
        assert running.banner[2] == "  api keys: any non-empty key accepted"
        assert running.banner[-1] == "  batches end after 60 s"
        headers = {"x-api-key": "whatever", **VERSION}
        assert c.post("/v1/messages", json=HELLO, headers=headers).status_code == 200
        unknown = c.post("/v1/messages", json={**HELLO, "model": "gw-model"}, headers=headers)
        assert unknown.status_code == 404
        assert unknown.json()["error"] == {"type": "not_found_error", "message": "model: gw-model"}


def test_keys_from_flags_and_environment_and_extra_models() -> None:
    args = ["--api-key", "sk-flag-secret-1", "--api-key", "sk-flag-secret-2"]
    args += ["--model", "gw-model", "--model", "other/model"]
    with (
        emulator(args, env_keys=" sk-env-secret-3, ,sk-env-secret-4") as running,
        httpx.Client(base_url=running.base_url) as c,
    ):
        banner = "\n".join(running.banner)
        assert "  api keys: 4 accepted (x-api-key or Authorization: Bearer)" in running.banner
        assert "secret" not in banner  # the count, never the keys
        assert "  extra models: gw-model, other/model" in running.banner
        for n, key in enumerate(["sk-flag-secret-1", "sk-flag-secret-2", "sk-env-secret-3"]):
            auth = {"x-api-key": key} if n % 2 else {"authorization": f"Bearer {key}"}
            response = c.post("/v1/messages", json=HELLO, headers={**auth, **VERSION})
            assert response.status_code == 200, response.text
        for auth in ({"x-api-key": "sk-other"}, {"authorization": "Bearer sk-other"}):
            response = c.post("/v1/messages", json=HELLO, headers={**auth, **VERSION})
            assert response.status_code == 401
            body = response.json()
            assert body == {
                "type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                "request_id": response.headers["request-id"],
            }
        headers = {"x-api-key": "sk-env-secret-4", **VERSION}
        for model in ("gw-model", "other/model", "claude-haiku-4-5"):
            response = c.post("/v1/messages", json={**HELLO, "model": model}, headers=headers)
            assert response.status_code == 200 and response.json()["model"] == model
        unknown = c.post("/v1/messages", json={**HELLO, "model": "gw-modelx"}, headers=headers)
        assert unknown.status_code == 404


def test_fault_rate_latency_and_batch_duration() -> None:
    args = ["--fault-rate", "0.5", "--seed", "3", "--latency", "150", "--batch-duration", "0.5"]
    headers = {"x-api-key": "k", **VERSION}
    with (
        emulator(args) as running,
        httpx.Client(base_url=running.base_url, headers=headers) as c,
    ):
        assert running.banner[-1] == "  batches end after 0.5 s"
        codes = [c.post("/v1/messages", json=HELLO).status_code for _ in range(16)]
        assert 200 in codes and set(codes) - {200} and set(codes) <= {200, 429, 500, 529}
        # The fault rate is for /v1/messages; latency is for every answer.
        start = time.perf_counter()
        assert c.post("/v1/messages/count_tokens", json=COUNT).status_code == 200
        assert time.perf_counter() - start >= 0.15
        created = c.post(
            "/v1/messages/batches", json={"requests": [{"custom_id": "a", "params": HELLO}]}
        ).json()
        assert created["processing_status"] == "in_progress"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            batch = c.get(f"/v1/messages/batches/{created['id']}").json()
            if batch["processing_status"] == "ended":
                break
            time.sleep(0.05)
        assert batch["processing_status"] == "ended"
        assert batch["request_counts"]["succeeded"] == 1


def test_the_same_seed_injects_the_same_faults() -> None:
    def run() -> list[int]:
        args = ["--fault-rate", "0.3", "--seed", "11"]
        headers = {"x-api-key": "k", **VERSION}
        with (
            emulator(args) as running,
            httpx.Client(base_url=running.base_url, headers=headers) as c,
        ):
            return [c.post("/v1/messages", json=HELLO).status_code for _ in range(20)]

    first = run()
    assert set(first) != {200}
    assert run() == first


@pytest.mark.parametrize(
    "argv",
    [
        ["--fault-rate", "1.5"],
        ["--fault-rate", "-0.1"],
        ["--fault-rate", "often"],
        ["--latency", "-5"],
        ["--batch-duration", "nan"],
        ["--batch-duration", "inf"],
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["emulator", *argv])
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err
