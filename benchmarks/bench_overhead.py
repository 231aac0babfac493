"""How much time haikucache itself adds, measured beside its peers in the same run.

    python benchmarks/bench_overhead.py --json OUT [--quick]

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``prepare_200kb_p50_ms`` — the engine's stages on that request: validate, key, plan.
* ``key_200kb_p50_ms`` — haikucache's exact key of a ~200 KB request (target <= 1.0), next to
  the same request keyed the common ways: canonical ``json.dumps`` + SHA-256, LiteLLM's way
  (``name: value`` of each parameter, SHA-256), and LangChain's cache prompt string
  (``langchain_core.load.dumps`` of the messages; no hashing at all).
* ``roundtrip_small_p50_ms`` — ``haikucache.Client`` + the in-process emulator for a small
  request (target <= 1.0), next to the official ``anthropic`` SDK against the same emulator.
* ``emulator_loopback_rps`` — small requests per second through the emulator's loopback
  server with keep-alive clients (target >= 500).

The request mix is synthetic but shaped like agent traffic: a long system prompt, 14 tools and
a long conversation.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import print_table, write_report
from haikucache import Client, Engine, MemoryLedger, request_key
from haikucache.testing import Emulator

SMALL = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "What is the baggage allowance?"}],
}


def request_of_size(target_bytes: int) -> dict[str, Any]:
    """A Messages request of about ``target_bytes`` of JSON: system, 14 tools, a conversation."""
    vocab = [
        "the",
        "passenger",
        "may",
        "change",
        "a",
        "booking",
        "before",
        "departure",
        "when",
        "fare",
        "rules",
        "allow",
        "it",
    ]

    def text(words: int, seed: int) -> str:
        return " ".join(vocab[(i * 7 + seed) % len(vocab)] for i in range(words))

    tools = [
        {
            "name": f"tool_{t}",
            "description": text(40, t),
            "input_schema": {
                "type": "object",
                "properties": {
                    f"arg_{p}": {"type": "string", "description": text(8, p)} for p in range(6)
                },
                "required": ["arg_0"],
            },
        }
        for t in range(14)
    ]
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": text(6000, 1), "cache_control": {"type": "ephemeral"}}],
        "tools": tools,
        "messages": [],
    }
    turn = 0
    while len(json.dumps(body)) < target_bytes:
        role = "user" if turn % 2 == 0 else "assistant"
        body["messages"].append(
            {"role": role, "content": [{"type": "text", "text": text(300, turn)}]}
        )
        turn += 1
    if body["messages"][-1]["role"] != "user":
        body["messages"].append({"role": "user", "content": "Continue."})
    return body


def timings(fn: Callable[[], object], runs: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def p50(values: list[float]) -> float:
    return statistics.median(values)


def bench_keys(runs: int) -> dict[str, float]:
    body = request_of_size(200_000)
    figures = {"request_bytes": float(len(json.dumps(body)))}
    figures["key_200kb_p50_ms"] = p50(timings(lambda: request_key(body), runs))
    # The whole engine stage chain on the same request: validate, key, plan breakpoints.
    engine = Engine(namespace="bench", ledger=False)
    figures["prepare_200kb_p50_ms"] = p50(
        timings(lambda: engine.prepare(body, credential=None), runs)
    )

    def json_sha256() -> str:
        return hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def litellm_style() -> str:
        # LiteLLM's documented approach: "name: value" of each known parameter, SHA-256.
        text = "".join(
            f"{k}: {body[k]}" for k in ("model", "messages", "system", "tools", "max_tokens")
        )
        return hashlib.sha256(text.encode()).hexdigest()

    figures["peer_json_sha256_p50_ms"] = p50(timings(json_sha256, runs))
    figures["peer_litellm_style_p50_ms"] = p50(timings(litellm_style, runs))
    try:
        from langchain_core.load import dumps
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    except ImportError:
        return figures
    messages = [SystemMessage(body["system"][0]["text"])] + [
        (HumanMessage if m["role"] == "user" else AIMessage)(
            m["content"][0]["text"] if isinstance(m["content"], list) else m["content"]
        )
        for m in body["messages"]
    ]
    figures["peer_langchain_prompt_string_p50_ms"] = p50(timings(lambda: dumps(messages), runs))
    return figures


def bench_roundtrip(runs: int) -> dict[str, float]:
    emulator = Emulator()
    figures: dict[str, float] = {}
    with Client(
        api_key="bench",
        base_url="http://emulator.bench",
        transport=emulator.transport(),
        engine=Engine(namespace="bench", ledger=MemoryLedger()),
    ) as client:
        figures["roundtrip_small_p50_ms"] = p50(
            timings(lambda: client.messages.create(**SMALL), runs)
        )
    with Client(
        api_key="bench",
        base_url="http://emulator.bench",
        transport=emulator.transport(),
        engine=Engine(namespace="bench", ledger=False),
    ) as client:
        figures["roundtrip_small_no_ledger_p50_ms"] = p50(
            timings(lambda: client.messages.create(**SMALL), runs)
        )
    try:
        import anthropic
    except ImportError:
        return figures
    uses_httpx2 = anthropic.DefaultHttpxClient.__mro__[1].__module__.startswith("httpx2")
    transport = emulator.httpx2_transport() if uses_httpx2 else emulator.transport()
    sdk = anthropic.Anthropic(
        api_key="bench",
        base_url="http://emulator.bench",
        http_client=anthropic.DefaultHttpxClient(transport=transport),
        max_retries=0,
    )
    figures["peer_anthropic_sdk_roundtrip_p50_ms"] = p50(
        timings(lambda: sdk.messages.create(**SMALL), runs)  # type: ignore[call-overload]
    )
    sdk.close()
    return figures


def bench_loopback(total: int, threads: int = 4) -> dict[str, float]:
    """The loopback server in its own process (as `haikucache emulator` runs it), driven by
    keep-alive clients from this one, so client and server do not share a GIL. The clients use
    the stdlib's http.client: lighter than httpx, so the figure measures the server."""
    server = subprocess.Popen(
        [sys.executable, "-m", "haikucache", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        base_url = first.rsplit(" ", 1)[-1].strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"the emulator did not start: {first!r}")
        body = json.dumps(SMALL).encode()
        headers = {
            "x-api-key": "bench",
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
        }
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        errors = 0
        lock = threading.Lock()

        def worker(n: int) -> None:
            nonlocal errors
            conn = http.client.HTTPConnection(host, int(port))
            try:
                for _ in range(n):
                    conn.request("POST", "/v1/messages", body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        with lock:
                            errors += 1
            finally:
                conn.close()

        worker(50)  # warm-up: sockets, caches
        per_thread = total // threads
        workers = [threading.Thread(target=worker, args=(per_thread,)) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    return {
        "emulator_loopback_rps": per_thread * threads / elapsed,
        "emulator_loopback_errors": float(errors),
    }


TARGETS = {
    "key_200kb_p50_ms": ("<=", 1.0),
    "roundtrip_small_p50_ms": ("<=", 1.0),
    "emulator_loopback_rps": (">=", 500.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute)")
    args = parser.parse_args(argv)
    runs = 200 if args.quick else 1000
    figures: dict[str, float] = {}
    figures.update(bench_keys(runs))
    figures.update(bench_roundtrip(runs))
    figures.update(bench_loopback(2000 if args.quick else 6000))
    print_table(figures, TARGETS)
    if args.json:
        write_report(args.json, figures, TARGETS, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
