"""What the LangChain door costs on a miss, and what it saves on a hit.

    python benchmarks/bench_langchain.py --json OUT [--quick]

Both models talk to the same in-process emulator (its httpx2 transport, no sockets), so the
only difference between them is langchain-haikucache:

* ``plain``   — ``ChatAnthropic``, SDK client on the emulator transport;
* ``wrapped`` — ``langchain_haikucache.wrap(ChatAnthropic(...))`` with a response cache
  (``MemoryStore``) and a ledger (``MemoryLedger``): every call runs prepare (validate, key,
  plan), a cache lookup, the upstream call, record and store.

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``miss_overhead_p50_ms`` — the median, over prompts, of ``wrapped.invoke`` (a miss) minus
  ``plain.invoke`` on the same prompt, the two run back to back in alternating order so that
  load from other processes hits both alike (target <= 2.0).
* ``hit_speedup`` — p50 of a wrapped miss ÷ p50 of a wrapped hit (target >= 50). The miss
  includes the emulator's own work (tokenizing, generating, SSE-free JSON); against the real
  API a miss takes hundreds of milliseconds, so the real ratio is far larger.
* also ``plain_p50_ms``, ``miss_p50_ms``, ``hit_p50_ms``, ``stream_hit_p50_ms`` (a hit
  replayed as an SSE stream through ``model.stream``), and ``langchain_floor_p50_ms``: one
  ``invoke`` of LangChain's ``GenericFakeChatModel``, i.e. what LangChain's own per-call
  machinery (callbacks, config, message conversion) costs with no model behind it. No hit
  through ``model.invoke`` can be faster than that, so ``miss_p50_ms / langchain_floor_p50_ms``
  (``max_hit_speedup``) bounds ``hit_speedup`` on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# The ledger and stores stay in a throwaway place, never in the user's cache directory.
os.environ.setdefault("HAIKUCACHE_HOME", tempfile.mkdtemp(prefix="bench-langchain-"))

import anthropic
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

import haikucache
import langchain_haikucache
from haikucache import Engine, MemoryLedger, MemoryStore
from haikucache.testing import Emulator

MODEL = "claude-haiku-4-5"
TARGETS = {"miss_overhead_p50_ms": ("<=", 2.0), "hit_speedup": (">=", 50.0)}


def _plain(emu: Emulator) -> ChatAnthropic:
    model = ChatAnthropic(
        model=MODEL, api_key="bench", base_url="http://emulator.local", max_tokens=1024
    )
    # ChatAnthropic has no transport option: give it an SDK client on the emulator transport.
    model.__dict__["_client"] = anthropic.Client(
        api_key="bench",
        base_url="http://emulator.local",
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
    )
    return model


def _wrapped(emu: Emulator) -> ChatAnthropic:
    model = ChatAnthropic(
        model=MODEL, api_key="bench", base_url="http://emulator.local", max_tokens=1024
    )
    return langchain_haikucache.wrap(
        model,
        engine=Engine(store=MemoryStore(), ledger=MemoryLedger()),
        upstream_transport=emu.httpx2_transport(),
    )


def _ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def bench(runs: int) -> dict[str, float]:
    emu = Emulator()
    plain, wrapped = _plain(emu), _wrapped(emu)
    # Warm up both paths (imports, connection objects, first-call caches).
    for i in range(20):
        plain.invoke(f"warm-up {i}")
        wrapped.invoke(f"warm-up {i}")

    plain_ms: list[float] = []
    miss_ms: list[float] = []
    prompts = [f"Question {i}: what is the baggage allowance on flight {i}?" for i in range(runs)]
    for i, prompt in enumerate(prompts):
        # Alternate which goes first, so neither always meets a warmer emulator.
        if i % 2:
            plain_ms.append(_ms(lambda p=prompt: plain.invoke(p)))
            miss_ms.append(_ms(lambda p=prompt: wrapped.invoke(p)))
        else:
            miss_ms.append(_ms(lambda p=prompt: wrapped.invoke(p)))
            plain_ms.append(_ms(lambda p=prompt: plain.invoke(p)))
    hit_ms = [_ms(lambda p=prompt: wrapped.invoke(p)) for prompt in prompts]
    stream_hit_ms = [
        _ms(lambda p=prompt: list(wrapped.stream(p))) for prompt in prompts[: runs // 2]
    ]

    fake = GenericFakeChatModel(messages=itertools.repeat(AIMessage("answer")))
    floor_ms = [_ms(lambda p=prompt: fake.invoke(p)) for prompt in prompts]

    reply = wrapped.invoke(prompts[0])
    assert reply.response_metadata["haikucache"]["cache"] == "hit"
    assert emu.requests["messages"] == 2 * (runs + 20), "every measured miss reached upstream"

    plain_p50 = statistics.median(plain_ms)
    miss_p50 = statistics.median(miss_ms)
    hit_p50 = statistics.median(hit_ms)
    return {
        "plain_p50_ms": plain_p50,
        "miss_p50_ms": miss_p50,
        "hit_p50_ms": hit_p50,
        "stream_hit_p50_ms": statistics.median(stream_hit_ms),
        "miss_overhead_p50_ms": statistics.median(
            m - p for m, p in zip(miss_ms, plain_ms, strict=True)
        ),
        "hit_speedup": miss_p50 / hit_p50,
        "langchain_floor_p50_ms": statistics.median(floor_ms),
        "max_hit_speedup": miss_p50 / statistics.median(floor_ms),
        "runs": float(runs),
    }


def print_table(figures: dict[str, float]) -> None:
    rows = [
        ("plain ChatAnthropic, p50", "plain_p50_ms", "ms"),
        ("wrapped, miss, p50", "miss_p50_ms", "ms"),
        ("wrapped, hit, p50", "hit_p50_ms", "ms"),
        ("wrapped, hit replayed as a stream, p50", "stream_hit_p50_ms", "ms"),
        ("added latency on a miss (p50)", "miss_overhead_p50_ms", "ms"),
        ("miss ÷ hit", "hit_speedup", "x"),
        ("LangChain's own per-call cost (fake model)", "langchain_floor_p50_ms", "ms"),
        ("miss ÷ that floor (the bound on miss ÷ hit)", "max_hit_speedup", "x"),
    ]
    print(
        f"langchain-haikucache vs ChatAnthropic, in-process emulator, {int(figures['runs'])} calls each"
    )
    print(f"{'figure':<42} {'value':>10}  target")
    for label, name, unit in rows:
        op, value = TARGETS.get(name, ("", None))
        target = f"{op} {value:g}" if value is not None else ""
        verdict = ""
        if value is not None:
            ok = figures[name] <= value if op == "<=" else figures[name] >= value
            verdict = "  ok" if ok else "  MISSED"
        print(f"{label:<42} {figures[name]:>8.3f} {unit}  {target}{verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (seconds)")
    args = parser.parse_args(argv)
    figures = bench(100 if args.quick else 600)
    print_table(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "figures": figures,
                    "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
                    "machine": {
                        "python": sys.version.split()[0],
                        "platform": platform.platform(),
                        "haikucache": haikucache.__version__,
                        "langchain-haikucache": langchain_haikucache.__version__,
                        "anthropic": anthropic.__version__,
                    },
                    "quick": args.quick,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
