"""What the LangChain door costs on a miss, and what a hit costs next to LangChain's own cache.

    python benchmarks/bench_langchain.py --json OUT [--quick]

Every model talks to the same in-process emulator (its httpx2 transport, no sockets).

Miss overhead, against a plain model:

* ``plain``   — ``ChatAnthropic``, SDK client on the emulator transport;
* ``wrapped`` — ``langchain_haikucache.wrap(ChatAnthropic(...))`` with a response cache
  (``MemoryStore``) and a ledger (``MemoryLedger``): every call runs prepare (validate, key),
  a cache lookup, plan, the upstream call, record and store.

Door hits, against LangChain's own cache, with the same stored answers on both sides (10,000;
1,000 with ``--quick``), each filled by invoking every prompt once through its door:

* ``haikucache`` — ``wrap(ChatAnthropic(...), engine=Engine(store=DiskStore(tmp),
  ledger=MemoryLedger()))``;
* ``langchain``  — plain ``ChatAnthropic(cache=SQLiteCache(tmp))`` (``langchain-community``).
  Its fill writes the rows ``SQLiteCache.update`` writes, in one transaction instead of one
  per answer (a commit each would take minutes for 10,000).

Prompts picked at random among the stored ones are then invoked on both models, in blocks
of 50 per model, the first model alternating; the script checks that every measured call was
a hit (none reached the emulator) and that both models gave the same answer.

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``miss_overhead_p50_ms`` — the median, over prompts, of ``wrapped.invoke`` (a miss) minus
  ``plain.invoke`` on the same prompt, the two run back to back in alternating order so that
  load from other processes hits both alike (target <= 1.0).
* ``door_hit_p50_us_haikucache_disk_10k`` and ``door_hit_p50_us_langchain_sqlite_10k`` — p50
  microseconds of a ``model.invoke`` that is a hit (``_1k`` with ``--quick``; the count is
  also ``stored_answers``).
* ``door_hit_speedup_vs_sqlite`` — the SQLite p50 ÷ the haikucache p50 (target >= 3).
* for information: ``hit_speedup`` — p50 of a wrapped miss ÷ p50 of a wrapped hit (MemoryStore).
  The miss is the in-process emulator's work, not the hundreds of milliseconds of the real
  API, so this ratio says little; ``langchain_floor_p50_ms`` — one ``invoke`` of LangChain's
  ``GenericFakeChatModel``, i.e. what LangChain's own per-call machinery (callbacks, config,
  message conversion) costs with no model behind it: no hit through ``model.invoke`` is
  faster; and ``plain_p50_ms``, ``miss_p50_ms``, ``hit_p50_ms``, ``stream_hit_p50_ms`` (a hit
  replayed as an SSE stream through ``model.stream``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The ledger and stores stay in a throwaway place, never in the user's cache directory.
os.environ.setdefault("HAIKUCACHE_HOME", tempfile.mkdtemp(prefix="bench-langchain-"))

import anthropic
from langchain_anthropic import ChatAnthropic
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from pydantic import Field

import haikucache
import langchain_haikucache
from haikucache import DiskStore, Engine, MemoryLedger, MemoryStore
from haikucache.testing import Emulator

MODEL = "claude-haiku-4-5"
TARGETS = {"miss_overhead_p50_ms": ("<=", 1.0), "door_hit_speedup_vs_sqlite": (">=", 3.0)}
# Door hits are timed in blocks of this many prompts per door.
_BLOCK = 50


def _chat(cache: BaseCache | None = None) -> ChatAnthropic:
    return ChatAnthropic(
        model=MODEL,
        api_key="bench",
        base_url="http://emulator.local",
        max_tokens=1024,
        cache=cache,
    )


def _plain(emu: Emulator, cache: BaseCache | None = None) -> ChatAnthropic:
    model = _chat(cache)
    # ChatAnthropic has no transport option: give it an SDK client on the emulator transport.
    model.__dict__["_client"] = anthropic.Client(
        api_key="bench",
        base_url="http://emulator.local",
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
    )
    return model


def _wrapped(emu: Emulator, store: Any) -> ChatAnthropic:
    return langchain_haikucache.wrap(
        _chat(),
        engine=Engine(store=store, ledger=MemoryLedger()),
        upstream_transport=emu.httpx2_transport(),
    )


def _ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def _us(fn: Callable[[str], Any], prompt: str) -> tuple[float, Any]:
    start = time.perf_counter_ns()
    reply = fn(prompt)
    return (time.perf_counter_ns() - start) / 1000.0, reply


def count_label(n: int) -> str:
    """``10k`` for 10,000: the suffix of the door-hit figures."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def bench(runs: int) -> dict[str, float]:
    """Miss overhead over a plain model, and the MemoryStore hit/miss figures."""
    emu = Emulator()
    plain, wrapped = _plain(emu), _wrapped(emu, MemoryStore())
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

    miss_p50 = statistics.median(miss_ms)
    hit_p50 = statistics.median(hit_ms)
    return {
        "plain_p50_ms": statistics.median(plain_ms),
        "miss_p50_ms": miss_p50,
        "hit_p50_ms": hit_p50,
        "stream_hit_p50_ms": statistics.median(stream_hit_ms),
        "miss_overhead_p50_ms": statistics.median(
            m - p for m, p in zip(miss_ms, plain_ms, strict=True)
        ),
        "hit_speedup": miss_p50 / hit_p50,
        "langchain_floor_p50_ms": statistics.median(floor_ms),
        "runs": float(runs),
    }


class _Ceiling(ChatAnthropic):
    """What a door hit costs when finding the answer costs nothing.

    ``ChatAnthropic`` whose ``_generate`` takes the answer from a dict filled beforehand and
    builds the result with langchain-anthropic's own ``_format_output``, as every hit
    through ``ChatAnthropic`` must: LangChain's per-call machinery (callbacks, config,
    run tracking) and the message conversion, with no key, no lookup and no accounting.
    No door hit through ``model.invoke`` is faster; ``SQLiteCache`` p50 ÷ this p50 is the
    best ``door_hit_speedup_vs_sqlite`` any cache could reach here.
    """

    answers: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def _generate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Any:
        data = self.answers[messages[-1].content]
        return self._format_output(anthropic.types.Message.model_validate(data), **kwargs)


class _Rows(BaseCache):
    """Collects what LangChain hands its cache on each miss, to write it in one transaction."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, RETURN_VAL_TYPE]] = []

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.rows.append((prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        self.rows.clear()


def _sqlite_cache_class() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the package's sunset notice
            from langchain_community.cache import SQLiteCache
    except ImportError:
        sys.exit("this benchmark needs langchain-community: pip install -e '.[bench]'")
    return SQLiteCache


def _sqlite_cache(path: Path, rows: _Rows) -> BaseCache:
    """``SQLiteCache(path)`` holding ``rows``: what ``SQLiteCache.update`` writes for each,
    in one transaction."""
    from langchain_core.load import dumps
    from sqlalchemy.orm import Session

    cache: Any = _sqlite_cache_class()(str(path))
    with Session(cache.engine) as session, session.begin():
        for prompt, llm_string, generations in rows.rows:
            for idx, generation in enumerate(generations):
                session.merge(
                    cache.cache_schema(
                        prompt=prompt, llm=llm_string, response=dumps(generation), idx=idx
                    )
                )
    return cache


def door_hits(stored: int, samples: int) -> dict[str, float]:
    """p50 of a hit through ``model.invoke``: haikucache's DiskStore vs LangChain's SQLiteCache."""
    label = count_label(stored)
    emu = Emulator()
    with tempfile.TemporaryDirectory(prefix="bench-langchain-doors-") as tmp:
        store = DiskStore(Path(tmp) / "haikucache")
        ours = _wrapped(emu, store)
        rows = _Rows()
        theirs = _plain(emu, cache=rows)
        prompts = [
            f"Stored question {i}: what is the baggage allowance on flight {i}?"
            for i in range(stored)
        ]
        for prompt in prompts:
            ours.invoke(prompt)
            theirs.invoke(prompt)
        assert emu.requests["messages"] == 2 * stored
        assert store.stats().entries == stored
        assert len(rows.rows) == stored
        theirs.cache = _sqlite_cache(Path(tmp) / "langchain.db", rows)

        rng = random.Random(0)
        picks = rng.sample(prompts, samples)
        # The ceiling's answers: the same questions, asked of an emulator of its own.
        direct = anthropic.Client(
            api_key="bench",
            base_url="http://emulator.local",
            http_client=anthropic.DefaultHttpxClient(transport=Emulator().httpx2_transport()),
        )
        ceiling = _Ceiling(
            model=MODEL, api_key="bench", base_url="http://emulator.local", max_tokens=1024
        )
        ceiling.answers = {
            p: direct.messages.create(
                model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": p}]
            ).to_dict()
            for p in picks
        }
        doors = {"ours": ours, "theirs": theirs, "ceiling": ceiling}
        times: dict[str, list[float]] = {name: [] for name in doors}
        replies: dict[str, dict[str, Any]] = {name: {} for name in doors}
        # SQLiteCache's deserialisation warns on every hit (a cost of LangChain's door too).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for prompt in rng.sample(picks, 20):  # warm-up: first-call caches, SQL compiling
                for door in doors.values():
                    door.invoke(prompt)
            # Blocks of prompts, each door in turn and the first door alternating: each runs
            # as in an application that uses one of them, and load from other processes
            # hits both alike.
            names = list(doors)
            for i, start in enumerate(range(0, samples, _BLOCK)):
                for name in names[i % 3 :] + names[: i % 3]:
                    for prompt in picks[start : start + _BLOCK]:
                        elapsed, reply = _us(doors[name].invoke, prompt)
                        times[name].append(elapsed)
                        replies[name][prompt] = reply
        assert emu.requests["messages"] == 2 * stored, "a measured call reached upstream"
        for prompt in picks:
            assert replies["ours"][prompt].response_metadata["haikucache"]["cache"] == "hit"
            assert replies["ours"][prompt].content == replies["theirs"][prompt].content
        store.close()
    ours_p50 = statistics.median(times["ours"])
    theirs_p50 = statistics.median(times["theirs"])
    ceiling_p50 = statistics.median(times["ceiling"])
    return {
        f"door_hit_p50_us_haikucache_disk_{label}": ours_p50,
        f"door_hit_p50_us_langchain_sqlite_{label}": theirs_p50,
        "door_hit_speedup_vs_sqlite": theirs_p50 / ours_p50,
        "door_hit_p50_us_ceiling": ceiling_p50,
        "door_hit_ceiling_speedup_vs_sqlite": theirs_p50 / ceiling_p50,
        "door_hit_haikucache_share_us": ours_p50 - ceiling_p50,
        "stored_answers": float(stored),
        "door_hit_samples": float(samples),
    }


def _verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, target = TARGETS[name]
    ok = value <= target if op == "<=" else value >= target
    return f"{op} {target:g}  {'ok' if ok else 'MISSED'}"


def print_table(figures: dict[str, float]) -> None:
    label = count_label(int(figures["stored_answers"]))
    rows = [
        ("plain ChatAnthropic, p50", "plain_p50_ms", "ms"),
        ("wrapped, miss, p50", "miss_p50_ms", "ms"),
        ("added latency on a miss (p50)", "miss_overhead_p50_ms", "ms"),
        ("wrapped, hit (MemoryStore), p50", "hit_p50_ms", "ms"),
        ("wrapped, hit replayed as a stream, p50", "stream_hit_p50_ms", "ms"),
        ("miss ÷ hit (information)", "hit_speedup", "x"),
        ("LangChain's own per-call cost (fake model)", "langchain_floor_p50_ms", "ms"),
        (
            f"door hit, haikucache DiskStore, {label}",
            f"door_hit_p50_us_haikucache_disk_{label}",
            "us",
        ),
        (
            f"door hit, LangChain SQLiteCache, {label}",
            f"door_hit_p50_us_langchain_sqlite_{label}",
            "us",
        ),
        ("SQLiteCache hit ÷ haikucache hit", "door_hit_speedup_vs_sqlite", "x"),
        ("door hit with a free lookup (ceiling)", "door_hit_p50_us_ceiling", "us"),
        ("SQLiteCache hit ÷ ceiling", "door_hit_ceiling_speedup_vs_sqlite", "x"),
        ("haikucache's own share of a hit", "door_hit_haikucache_share_us", "us"),
    ]
    print(
        f"langchain-haikucache vs ChatAnthropic, in-process emulator: {int(figures['runs'])} "
        f"misses each; door hits: {int(figures['door_hit_samples'])} random prompts among "
        f"{int(figures['stored_answers'])} stored answers"
    )
    print(f"{'figure':<44} {'value':>10}     target")
    for text, name, unit in rows:
        print(f"{text:<44} {figures[name]:>10.3f} {unit:<3}  {_verdict(name, figures[name])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions, 1,000 stored answers (seconds)"
    )
    args = parser.parse_args(argv)
    _sqlite_cache_class()  # a missing langchain-community fails now, not after the misses
    figures = bench(100 if args.quick else 600)
    figures.update(door_hits(1_000, 500) if args.quick else door_hits(10_000, 2_000))
    print_table(figures)
    met = {name: bool(_verdict(name, figures[name]).endswith("ok")) for name in TARGETS}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "figures": figures,
                    "targets": {
                        k: {"op": op, "value": v, "met": met[k]} for k, (op, v) in TARGETS.items()
                    },
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
