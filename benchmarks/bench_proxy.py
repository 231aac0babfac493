"""What ``haikucache serve`` costs a caller, measured over loopback beside the emulator it fronts.

    python benchmarks/bench_proxy.py --json OUT [--quick] [--no-litellm]

Every process is separate, as in production: the emulator's loopback server
(``haikucache emulator``), the proxy (``haikucache serve --upstream <emulator>``) and this
client, so no two share a GIL. Loopback only; no API key; nothing leaves the machine.

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``proxy_miss_overhead_p50_ms`` — the same keep-alive client (``http.client``) calling the
  emulator through the proxy minus calling it directly, in interleaved rounds, with the
  response cache off (``--store none``): validation, keying, planning, the ledger and the
  extra hop (target <= 1.0). ``…_direct_p50_ms`` / ``…_through_p50_ms`` are the two sides.
* ``proxy_miss_cache_on_overhead_p50_ms`` — the same with the default on-disk response cache
  and a new question each round (a lookup that misses, the single-flight lease, the store).
* ``proxy_hit_rps`` — exact hits served per second to 64 concurrent keep-alive clients by
  ``--workers 2`` (one per core of the 2-core machine the target is set for) on the default
  on-disk store (target >= 2,000), with ``proxy_hit_p50_ms`` and ``proxy_hit_p99_ms``; the
  ``…_1_worker`` figures are the same with one worker. The clients are a small asyncio
  HTTP/1.1 client in this process (it shares the machine's cores with the proxy).
* ``proxy_stream_ttfb_overhead_ms`` — time to the first SSE event of a streamed miss, through
  minus direct (target <= 1.0).
* ``litellm_proxy_miss_overhead_p50_ms`` — LiteLLM's proxy (``/v1/messages``) in front of the
  same emulator, measured the same way, when ``pip install 'litellm[proxy]'`` succeeds in a
  separate virtualenv within the time allowed; otherwise reported as not measured, with why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from _common import load_average, print_table, write_report

HEADERS = {
    "x-api-key": "bench-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}
CONCURRENCY = 64
TARGETS = {
    "proxy_miss_overhead_p50_ms": ("<=", 1.0),
    "proxy_hit_rps": (">=", 2000.0),
    "proxy_stream_ttfb_overhead_ms": ("<=", 1.0),
}


def request(text: str, *, stream: bool = False, max_tokens: int = 1024) -> bytes:
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def process(command: list[str], ready: str, env: dict[str, str]) -> Iterator[str]:
    """Run a server; yield the URL on the first stdout line that contains ``ready``."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited with {proc.returncode}")
            if ready in line:
                url = line.rsplit(" ", 1)[-1].strip()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not start")
        wait_healthy(url, proc)
        yield url
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def stop(proc: subprocess.Popen[Any]) -> None:
    # SIGTERM, not SIGINT: a shell that starts this in the background ignores SIGINT, and
    # its children inherit that.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[Any], path: str = "/healthz") -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {proc.returncode}")
        try:
            httpx.get(url + path, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def emulator(env: dict[str, str]) -> contextlib.AbstractContextManager[str]:
    command = [sys.executable, "-m", "haikucache", "emulator", "--port", "0"]
    return process(command, "listening on", env)


def proxy(upstream: str, env: dict[str, str], *args: str) -> contextlib.AbstractContextManager[str]:
    command = [
        sys.executable, "-m", "haikucache", "serve", "--port", "0", "--upstream", upstream,
        "--log-level", "warning", *args,
    ]  # fmt: skip
    return process(command, "listening on", env)


# --------------------------------------------------------------------------- one client


class Client:
    """A keep-alive connection timing one request at a time: ``http.client`` for JSON, a
    bare socket for SSE (``http.client`` reads a chunked body line by line in Python, which
    would weigh on both sides of the comparison)."""

    def __init__(self, base_url: str, *, api_key: str = HEADERS["x-api-key"]) -> None:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        self.conn = http.client.HTTPConnection(host, int(port))
        self.path = "/v1/messages"
        self.headers = {**HEADERS, "x-api-key": api_key}
        self.sock: socket.socket | None = None

    def post(self, body: bytes) -> tuple[float, bytes, dict[str, str]]:
        """Seconds for the whole answer, the answer, its headers."""
        started = time.perf_counter()
        self.conn.request("POST", self.path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        content = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {content[:300]!r}")
        return elapsed, content, {k.lower(): v for k, v in response.getheaders()}

    def first_event(self, body: bytes) -> float:
        """Seconds until the first SSE ``data:`` line of a streamed answer (then drains it).

        Both servers answer a stream with chunked encoding, which ends with a zero chunk.
        """
        if self.sock is None:
            self.sock = socket.create_connection(self.address)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.address[0]}\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        started = time.perf_counter()
        self.sock.sendall(request)
        received = b""
        first = None
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the server closed the connection")
            received += data
            if first is None and b"data:" in received.partition(b"\r\n\r\n")[2]:
                first = time.perf_counter() - started
            if received.endswith(b"\r\n0\r\n\r\n"):
                break
        if not received.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(received[:300].decode(errors="replace"))
        assert first is not None
        return first

    def close(self) -> None:
        self.conn.close()
        if self.sock is not None:
            self.sock.close()


def interleaved(rounds: int, sides: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    """Each side once per round, in a rotating order, so drift hits every side alike."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(sides[name](n))
    return times


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def overhead(times: dict[str, list[float]], side: str, base: str = "direct") -> float:
    return p50_ms(times[side]) - p50_ms(times[base])


# --------------------------------------------------------------------------- figures


def bench_miss(emulator_url: str, env: dict[str, str], rounds: int) -> dict[str, float]:
    body = request("What is the baggage allowance?")
    direct = Client(emulator_url)
    with proxy(emulator_url, env, "--store", "none") as url:
        through = Client(url)
        for _ in range(100):  # warm-up: connections, the planner, the ledger
            direct.post(body)
            through.post(body)
        times = interleaved(
            rounds,
            {"direct": lambda n: direct.post(body)[0], "through": lambda n: through.post(body)[0]},
        )
        through.close()
    with proxy(emulator_url, env, "--store", str(Path(env["HAIKUCACHE_HOME"]) / "miss")) as url:
        cached = Client(url)
        run = uuid.uuid4().hex[:8]
        for n in range(100):
            cached.post(request(f"Warm-up {run}-{n}?"))
        # A new question each round: a real miss with the response cache on.
        cache_on = interleaved(
            rounds,
            {
                "direct": lambda n: direct.post(body)[0],
                "cache_on": lambda n: cached.post(request(f"Question {run}-{n}?"))[0],
            },
        )
        cached.close()
    direct.close()
    return {
        "proxy_miss_direct_p50_ms": p50_ms(times["direct"]),
        "proxy_miss_through_p50_ms": p50_ms(times["through"]),
        "proxy_miss_overhead_p50_ms": overhead(times, "through"),
        "proxy_miss_cache_on_overhead_p50_ms": overhead(cache_on, "cache_on"),
    }


def bench_ttfb(emulator_url: str, env: dict[str, str], rounds: int) -> dict[str, float]:
    body = request("Stream the check-in rules.", stream=True)
    with proxy(emulator_url, env, "--store", "none") as off:
        direct, through = Client(emulator_url), Client(off)
        for _ in range(30):
            direct.first_event(body)
            through.first_event(body)
        times = interleaved(
            rounds,
            {
                "direct": lambda n: direct.first_event(body),
                "through": lambda n: through.first_event(body),
            },
        )
        direct.close()
        through.close()
    return {
        "proxy_stream_ttfb_direct_p50_ms": p50_ms(times["direct"]),
        "proxy_stream_ttfb_through_p50_ms": p50_ms(times["through"]),
        "proxy_stream_ttfb_overhead_ms": overhead(times, "through"),
    }


async def hammer(
    base_url: str, bodies: list[bytes], seconds: float, concurrency: int
) -> tuple[list[float], int]:
    """``concurrency`` keep-alive connections posting ``bodies`` in turn for ``seconds``;
    the latencies and the count of non-200 answers."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    requests = [
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\n{head}content-length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    ]
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(first: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        n = first
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                writer.write(requests[n % len(requests)])
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if header[9:12] != b"200":
                    errors += 1
                n += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(i * 7) for i in range(concurrency)))
    return latencies, errors


def run_loop(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def bench_hits(
    emulator_url: str, env: dict[str, str], seconds: float, workers: int
) -> dict[str, float]:
    bodies = [request(f"Frequently asked question number {i}?") for i in range(256)]
    store = str(Path(env["HAIKUCACHE_HOME"]) / f"hits-{workers}")
    with proxy(emulator_url, env, "--store", store, "--workers", str(workers)) as url:
        warm = Client(url)
        for body in bodies:  # every question answered once: the load below is all hits
            warm.post(body)
        _, _, headers = warm.post(bodies[0])
        assert headers["haikucache-cache"] == "hit", headers
        warm.close()
        run_loop(hammer(url, bodies, 1.0, CONCURRENCY))  # warm-up
        latencies, errors = run_loop(hammer(url, bodies, seconds, CONCURRENCY))
        metrics = httpx.get(url + "/metrics").text
    misses = next(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('haikucache_proxy_requests_total{outcome="miss"}')
    )
    latencies.sort()
    suffix = "" if workers == 2 else f"_{workers}_worker{'s' if workers > 1 else ''}"
    return {
        f"proxy_hit_rps{suffix}": len(latencies) / seconds,
        f"proxy_hit_p50_ms{suffix}": latencies[len(latencies) // 2] * 1000,
        f"proxy_hit_p99_ms{suffix}": latencies[int(len(latencies) * 0.99)] * 1000,
        f"proxy_hit_errors{suffix}": float(errors),
        # 0: every measured request was a hit.
        f"proxy_hit_misses{suffix}": misses - len(bodies),
    }


# --------------------------------------------------------------------------- LiteLLM


LITELLM_VENV = Path(tempfile.gettempdir()) / "haikucache-bench-litellm"
LITELLM_MASTER_KEY = "sk-bench-" + uuid.uuid4().hex  # it refuses to start without a strong one


def litellm_executable(venv: Path, install_timeout: float) -> tuple[Path | None, str]:
    """LiteLLM's proxy in a virtualenv of its own (never in ours); ``None`` and why not."""
    litellm = venv / "bin" / "litellm"
    if litellm.exists():
        return litellm, ""
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
            check=True,
            timeout=install_timeout,
            capture_output=True,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"pip install 'litellm[proxy]' took over {install_timeout:.0f} s"
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        return None, f"pip install 'litellm[proxy]' failed: {' '.join(tail)}"
    return (litellm, "") if litellm.exists() else (None, "litellm installed no executable")


def bench_litellm(
    emulator_url: str, env: dict[str, str], rounds: int, venv: Path, install_timeout: float
) -> tuple[dict[str, float], str]:
    litellm, why = litellm_executable(venv, install_timeout)
    if litellm is None:
        return {}, why
    config = Path(env["HAIKUCACHE_HOME"]) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: claude-haiku-4-5\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-haiku-4-5\n"
        f"      api_base: {emulator_url}\n"
        "      api_key: bench-key\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    litellm_env = {
        **env,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download at start-up
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
    }
    proc = subprocess.Popen(
        [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=litellm_env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc, "/health/liveliness")
        except RuntimeError as exc:
            return {}, f"LiteLLM's proxy did not start: {exc}"
        body = request("What is the baggage allowance?")
        direct, through = Client(emulator_url), Client(url, api_key=LITELLM_MASTER_KEY)
        try:
            through.post(body)
        except RuntimeError as exc:
            return {}, f"LiteLLM's /v1/messages failed: {exc}"
        for _ in range(100):
            direct.post(body)
            through.post(body)
        times = interleaved(
            rounds,
            {"direct": lambda n: direct.post(body)[0], "through": lambda n: through.post(body)[0]},
        )
        direct.close()
        through.close()
    finally:
        stop(proc)
    return {
        "litellm_proxy_miss_through_p50_ms": p50_ms(times["through"]),
        "litellm_proxy_miss_overhead_p50_ms": overhead(times, "through"),
    }, ""


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument(
        "--litellm-install-timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="give up on installing LiteLLM after this long (default 180)",
    )
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=LITELLM_VENV,
        metavar="DIR",
        help=f"LiteLLM's own virtualenv, created when missing (default {LITELLM_VENV})",
    )
    args = parser.parse_args(argv)
    rounds = 300 if args.quick else 1500
    seconds = 3.0 if args.quick else 10.0
    load = load_average()
    home = tempfile.mkdtemp(prefix="haikucache-bench-proxy-")
    env = {**os.environ, "HAIKUCACHE_HOME": home}
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        env.pop(name, None)
    figures: dict[str, float] = {}
    notes: dict[str, str] = {}
    try:
        with emulator(env) as emulator_url:
            figures.update(bench_miss(emulator_url, env, rounds))
            figures.update(bench_ttfb(emulator_url, env, rounds))
            figures.update(bench_hits(emulator_url, env, seconds, workers=2))
            figures.update(bench_hits(emulator_url, env, seconds, workers=1))
            if args.no_litellm:
                notes["litellm_proxy_miss_overhead_p50_ms"] = "skipped (--no-litellm)"
            else:
                litellm, why = bench_litellm(
                    emulator_url, env, rounds, args.litellm_venv, args.litellm_install_timeout
                )
                figures.update(litellm)
                if why:
                    notes["litellm_proxy_miss_overhead_p50_ms"] = why
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print_table(figures, TARGETS, notes)
    if args.json:
        write_report(
            args.json, figures, TARGETS, quick=args.quick, load_at_start=load, not_measured=notes
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
