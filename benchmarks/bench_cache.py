"""Exact-hit latency of the response cache, beside its peers, measured in the same run.

    python benchmarks/bench_cache.py --json OUT [--quick] [--sizes 10k,100k,1m]

What is timed is the full path of a repeated request, from the door call to the parsed
answer, with the store already holding N answers:

* haikucache: ``client.messages.create(**request)`` → a ``Message`` (validation, key, lookup,
  decode, a fresh id, accounting in the ledger), on a :class:`~haikucache.DiskStore` and on
  a :class:`~haikucache.RedisStore` (a ``redis-server`` this script starts on loopback).
  The engine is the default one a ``Client()`` gets, ledger included (on disk, in a
  temporary ``HAIKUCACHE_HOME``); ``*_ledger_off`` figures repeat it with ``ledger=False``.
* LangChain: ``ChatAnthropic.invoke(messages)`` → an ``AIMessage``, with
  ``langchain_community.cache.SQLiteCache`` as the global LLM cache (``set_llm_cache``).
* GPTCache 0.1.44, exact match (``Cache.init`` with ``get_prompt``, the map data manager,
  string "embedding" and ``ExactMatchEvaluation``): ``gptcache.adapter.api.get(prompt)`` →
  the stored answer string (GPTCache's key is the prompt text alone; its answer is not
  parsed, so its path does less work than the others).

Every upstream is the emulator (``haikucache.testing.Emulator``); on a hit nothing is sent.
Filler entries are real entries of the same shape (an emulator answer, re-keyed per
question); the timed request went through a real miss first.

Figures (``{"figures": {...}}`` in OUT, and a table on stdout), for each size N measured
(``10k`` always; ``100k`` unless ``--quick``; ``1m`` when asked with ``--sizes``):
``exact_hit_p50_us_disk_<N>``, ``exact_hit_p99_us_disk_<N>``, ``exact_hit_p50_us_redis_<N>``,
``exact_hit_p99_us_redis_<N>``, ``exact_hit_p50_us_langchain_sqlite_<N>``,
``exact_hit_p50_us_gptcache_<N>``, the ``*_ledger_off`` variants, ``bytes_per_entry`` (the
DiskStore's bytes on disk per entry at the largest N) and ``speedup_vs_fastest_peer_<N>``.
``semantic_lookup_p50_ms_100k`` is added when ``haikucache._semantic`` provides
``SemanticIndex`` (see :func:`semantic_lookup_ms`).

Targets: disk p50 <= 250 µs, Redis (loopback) p50 <= 1,000 µs, >= 3× faster than the faster
peer.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

QUESTION = "What is the checked baggage allowance on a domestic economy ticket?"
SYSTEM = "You are the help desk of a small airline. Answer in two or three sentences."
API_KEY = "sk-bench"
MODEL = "claude-haiku-4-5"

SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}


def request(question: str = QUESTION) -> dict[str, Any]:
    """The Messages request whose answer is cached (its question varies for fillers)."""
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": question}],
    }


def filler_question(i: int) -> str:
    return f"Filler question number {i}: what does fare class {i % 97} include?"


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples`` (seconds), in microseconds."""
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50 * 1e6, p99 * 1e6


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int) -> tuple[float, float]:
    """Call ``fn`` ``warmup`` times, then time ``iterations`` calls one by one."""
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    gc.collect()
    for _ in range(iterations):
        start = clock()
        fn()
        samples.append(clock() - start)
    return percentiles(samples)


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- redis


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A ``redis-server`` of our own on a free loopback port, no persistence."""
    from haikucache.testing import start_redis_server

    try:
        server = start_redis_server(directory)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(str(exc)) from exc
    with server:
        yield server.url


# --------------------------------------------------------------------------- haikucache


def fill_store(store: Any, count: int, template: dict[str, Any], namespace: str) -> None:
    """Put ``count`` filler answers, keyed as real requests of the same tenant."""
    from haikucache import request_key
    from haikucache._store import CacheEntry

    text = template["content"][0]["text"]
    now = time.time()
    for i in range(count):
        body = request(filler_question(i))
        message = {**template, "content": [{"type": "text", "text": f"({i}) {text}"}]}
        entry = CacheEntry.for_message(
            key=request_key(body, namespace=namespace),
            namespace=namespace,
            message=message,
            now=now,
            cost_usd=0.0008,
            baseline_usd=0.0008,
        )
        if not store.put(entry):
            raise RuntimeError(f"{store!r} refused filler entry {i}")
        if i and i % 50_000 == 0:
            progress(f"{i:,} entries")


def haikucache_hits(
    store: Any, emulator: Any, count: int, iterations: int, warmup: int
) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """p50/p99 of a hit through ``Client.messages.create``, default ledger and ledger off.

    Also returns the answer that was cached (the emulator's, as the client received it).
    """
    from haikucache import Client, Engine

    body = request()
    results: dict[str, tuple[float, float]] = {}
    template: dict[str, Any] = {}
    for ledger_name, ledger in (("default", None), ("off", False)):
        engine = Engine.for_credentials(API_KEY, store=store, ledger=ledger)
        with Client(
            api_key=API_KEY,
            base_url="http://emulator.bench",
            transport=emulator.transport(),
            engine=engine,
        ) as client:
            if not template:
                first = client.messages.create(**body)  # a real miss, stored
                assert first.haikucache is not None
                assert first.haikucache.cache == "miss"
                template = first.to_dict()
                fill_store(store, count - 1, template, engine.namespace)
            check = client.messages.create(**body)
            assert check.haikucache is not None
            assert check.haikucache.cache == "hit"
            assert check.content[0].text == template["content"][0]["text"]
            results[ledger_name] = time_calls(
                lambda c=client: c.messages.create(**body), iterations, warmup
            )
    return results, template


# --------------------------------------------------------------------------- LangChain


def langchain_sqlite_hits(
    directory: Path, emulator: Any, count: int, iterations: int, warmup: int
) -> tuple[float, float]:
    """p50/p99 of ``ChatAnthropic.invoke`` answered by ``SQLiteCache`` holding ``count`` rows."""
    import anthropic
    import httpx2  # type: ignore[import-not-found]
    from langchain_anthropic import ChatAnthropic
    from langchain_community.cache import SQLiteCache
    from langchain_core.globals import set_llm_cache
    from langchain_core.messages import HumanMessage, SystemMessage

    path = directory / "langchain.db"
    cache = SQLiteCache(database_path=str(path))
    set_llm_cache(cache)
    try:
        model = ChatAnthropic(model=MODEL, api_key=API_KEY, max_tokens=1024, max_retries=0)
        # ChatAnthropic builds its SDK client lazily (a cached property); give it one that
        # talks to the emulator through its in-process httpx2 transport.
        model.__dict__["_client"] = anthropic.Anthropic(
            api_key=API_KEY,
            base_url="http://emulator.bench",
            http_client=httpx2.Client(
                transport=emulator.httpx2_transport(), base_url="http://emulator.bench"
            ),
            max_retries=0,
        )
        messages = [SystemMessage(SYSTEM), HumanMessage(QUESTION)]
        sent = emulator.requests["messages"]
        first = model.invoke(messages)  # a real miss, stored by LangChain
        assert emulator.requests["messages"] == sent + 1
        # Fillers: the stored row, copied under other prompts (one transaction).
        with sqlite3.connect(path) as con:
            ((prompt, llm, response),) = con.execute(
                "SELECT prompt, llm, response FROM full_llm_cache"
            ).fetchall()
            assert QUESTION in prompt
            con.executemany(
                "INSERT INTO full_llm_cache (prompt, llm, idx, response) VALUES (?, ?, 0, ?)",
                (
                    (prompt.replace(QUESTION, filler_question(i)), llm, response)
                    for i in range(count - 1)
                ),
            )
        with warnings.catch_warnings():
            # langchain-core warns (pending deprecation of a loads() default) on every hit;
            # ignored, so that printing it is not part of what is timed.
            warnings.simplefilter("ignore")
            again = model.invoke(messages)
            assert emulator.requests["messages"] == sent + 1, "LangChain's cache did not answer"
            assert again.content == first.content
            return time_calls(lambda: model.invoke(messages), iterations, warmup)
    finally:
        set_llm_cache(None)


# --------------------------------------------------------------------------- GPTCache


def gptcache_hits(answer: str, count: int, iterations: int, warmup: int) -> tuple[float, float]:
    """p50/p99 of GPTCache's exact-match ``get`` with ``count`` answers in its map manager."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from gptcache import Cache
        from gptcache.adapter.api import get, put
        from gptcache.manager import get_data_manager
        from gptcache.processor.pre import get_prompt

    # GPTCache writes its map to data_path when the process exits (an atexit hook of
    # Cache.init): keep the file's directory until then (atexit runs hooks last-in
    # first-out, so this removal runs after GPTCache's write).
    keep = Path(tempfile.mkdtemp(prefix="hc-bench-gptcache-"))
    atexit.register(shutil.rmtree, keep, True)
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        data_manager=get_data_manager(
            data_path=str(keep / "gptcache_map.txt"), max_size=count + 10
        ),
    )
    # Fillers in bulk (GPTCache's import_data: its put() slows down as the cache grows, to
    # milliseconds per put by 6,000 entries); the timed answer through put().
    cache.import_data(
        [filler_question(i) for i in range(count - 1)],
        [f"({i}) {answer}" for i in range(count - 1)],
    )
    put(QUESTION, answer, cache_obj=cache)
    assert get(QUESTION, cache_obj=cache) == answer
    return time_calls(lambda: get(QUESTION, cache_obj=cache), iterations, warmup)


# --------------------------------------------------------------------------- semantic


def semantic_lookup_ms(
    directory: Path, count: int, iterations: int, index: str = "numpy"
) -> float | None:
    """p50 of a semantic lookup among ``count`` answers of one partition, in ms.

    The embedding is excluded: the query's vector is computed before the clock starts (it
    is cached on the prepared call, as the engine does between lookup and store). What is
    timed is ``engine.lookup(call)``: the exact miss, the index sync with the store, the
    vector search, the guards, and the winner read back from the store. The vectors come
    from a deterministic function of the text (the model does not matter for the search).

    Returns ``None`` while ``haikucache._semantic`` does not exist (the semantic cache is
    optional); its accuracy figures are ``bench_semantic.py``'s.
    """
    try:
        import numpy as np

        from haikucache import Engine
        from haikucache._semantic import CallableEmbedder, SemanticConfig
        from haikucache._store import CacheEntry, DiskStore
    except ImportError:
        return None

    dim = 384

    def vector_of(text: str) -> Any:
        import xxhash

        rng = np.random.default_rng(xxhash.xxh3_64_intdigest(text.encode()))
        v = rng.standard_normal(dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def embed(texts: list[str]) -> Any:
        return np.stack([vector_of(t) for t in texts])

    def words(i: int) -> str:
        letters = "bcdfghjklmnpqrstvwxz"
        out = ""
        while True:
            out += letters[i % 20]
            i //= 20
            if not i:
                return out

    store = DiskStore(directory / f"semantic-{index}-{count}")
    engine = Engine(
        ledger=False,
        store=store,
        semantic=SemanticConfig(embedder=CallableEmbedder(embed, name="bench"), index=index),
    )
    now = time.time()
    answer = {
        "id": "msg_0",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "An answer of ordinary length. " * 10}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 40, "output_tokens": 80},
    }
    for i in range(count):
        call = engine.prepare(
            request(f"please explain the topic {words(i)} in simple words"), credential=None
        )
        assert call.partition is not None
        assert call.text is not None
        entry = CacheEntry.for_message(
            key=call.key,
            namespace=call.namespace,
            message=answer,
            now=now,
            partition=call.partition,
            text=call.text,
        )
        store.put(entry, vector=vector_of(call.text).astype("<f4").tobytes())
        if i and i % 50_000 == 0:
            progress(f"{i:,} semantic entries")
    target = "please explain the topic " + words(count // 2) + " in simple words"
    call = engine.prepare(request(target + ", thanks"), credential=None)
    noisy = vector_of(target) + 0.01 * embed(["noise"])[0]
    call.vector = (noisy / np.linalg.norm(noisy)).astype(np.float32)
    found = engine.lookup(call)
    if found is None or found.text != target:
        raise RuntimeError("the semantic lookup did not find its near-duplicate")
    p50, _ = time_calls(lambda: engine.lookup(call), iterations, max(10, iterations // 10))
    store.close()
    return p50 / 1000.0


# --------------------------------------------------------------------------- run


def run(
    sizes: list[str],
    iterations: int,
    warmup: int,
    peers: bool,
    semantic: bool,
    notes: dict[str, str],
) -> dict[str, Any]:
    from haikucache._store import DiskStore, RedisStore
    from haikucache.testing import Emulator

    figures: dict[str, Any] = {}
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        root = Path(tmp)
        # The default ledger lives under HAIKUCACHE_HOME: keep it out of the user's home.
        os.environ["HAIKUCACHE_HOME"] = str(root / "home")
        with redis_server(root) as url:
            for size in sizes:
                count = SIZES[size]
                emulator = Emulator()

                progress(f"DiskStore, {count:,} entries")
                disk = DiskStore(root / f"disk-{size}")
                hits, answer = haikucache_hits(disk, emulator, count, iterations, warmup)
                stats = disk.stats()
                figures["bytes_per_entry"] = round(stats.bytes / max(1, stats.entries))
                figures["entries_measured_for_bytes"] = stats.entries
                disk.close()
                _record(figures, rows, f"disk_{size}", "haikucache DiskStore", hits["default"])
                _record(figures, rows, f"disk_{size}_ledger_off", "  ledger off", hits["off"])
                shutil.rmtree(root / f"disk-{size}", ignore_errors=True)

                progress(f"RedisStore, {count:,} entries")
                redis_store = RedisStore(url, prefix=f"bench-{size}:")
                hits, _ = haikucache_hits(redis_store, emulator, count, iterations, warmup)
                redis_store.clear()
                redis_store.close()
                _record(figures, rows, f"redis_{size}", "haikucache RedisStore", hits["default"])
                _record(figures, rows, f"redis_{size}_ledger_off", "  ledger off", hits["off"])

                if not peers:
                    continue
                progress(f"LangChain SQLiteCache, {count:,} entries")
                lc = langchain_sqlite_hits(root, emulator, count, iterations, warmup)
                (root / "langchain.db").unlink()
                _record(figures, rows, f"langchain_sqlite_{size}", "LangChain SQLiteCache", lc)

                progress(f"GPTCache exact, {count:,} entries")
                # The same answer, as the JSON text GPTCache keeps.
                gpt = gptcache_hits(json.dumps(answer), count, iterations, warmup)
                _record(figures, rows, f"gptcache_{size}", "GPTCache exact", gpt)

                ours = figures[f"exact_hit_p50_us_disk_{size}"]
                fastest_peer = min(
                    figures[f"exact_hit_p50_us_langchain_sqlite_{size}"],
                    figures[f"exact_hit_p50_us_gptcache_{size}"],
                )
                figures[f"speedup_vs_fastest_peer_{size}"] = round(fastest_peer / ours, 2)
        if semantic:
            # The largest size measured above (100k unless --quick).
            size = sizes[-1] if sizes[-1] != "1m" else "100k"
            progress(f"semantic lookup, {SIZES[size]:,} entries")
            for index in ("numpy", "usearch"):
                try:
                    ms = semantic_lookup_ms(root, SIZES[size], min(iterations, 1_000), index)
                except Exception as exc:  # the semantic cache is optional and still moving
                    notes[f"semantic_{index}"] = f"not measured: {type(exc).__name__}: {exc}"
                    continue
                if ms is None:
                    notes["semantic"] = "haikucache._semantic is not available"
                    break
                suffix = "" if index == "numpy" else "_usearch"
                figures[f"semantic_lookup_p50_ms_{size}{suffix}"] = round(ms, 3)
    _print_table(rows, figures)
    return figures


def _record(
    figures: dict[str, Any],
    rows: list[tuple[str, str, float, float]],
    name: str,
    label: str,
    result: tuple[float, float],
) -> None:
    p50, p99 = result
    figures[f"exact_hit_p50_us_{name}"] = round(p50, 1)
    figures[f"exact_hit_p99_us_{name}"] = round(p99, 1)
    size = name.split("_")[1] if name.startswith(("disk", "redis")) else name.split("_")[-1]
    rows.append((name, f"{label} ({size})", p50, p99))


def _print_table(rows: list[tuple[str, str, float, float]], figures: dict[str, Any]) -> None:
    print()
    print(f"{'exact hit, full path':<34} {'p50 µs':>10} {'p99 µs':>10}")
    print("-" * 56)
    for _, label, p50, p99 in rows:
        print(f"{label:<34} {p50:>10.1f} {p99:>10.1f}")
    print("-" * 56)
    for key in sorted(figures):
        if key.startswith(("speedup", "bytes", "semantic")):
            print(f"{key}: {figures[key]}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", dest="json_out", required=True, help="write figures here")
    parser.add_argument("--quick", action="store_true", help="10k entries only, fewer calls")
    parser.add_argument(
        "--sizes", help="comma-separated sizes among 10k, 100k, 1m (default 10k,100k)"
    )
    parser.add_argument("--iterations", type=int, help="timed calls per measurement")
    parser.add_argument("--no-peers", action="store_true", help="measure haikucache only")
    parser.add_argument("--no-semantic", action="store_true", help="skip the semantic lookup")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            parser.error(f"unknown size(s) {unknown}; choose among {sorted(SIZES)}")
    else:
        sizes = ["10k"] if args.quick else ["10k", "100k"]
    iterations = args.iterations or (1_000 if args.quick else 5_000)
    if iterations < 100:
        parser.error("--iterations must be at least 100")
    warmup = max(50, iterations // 10)
    # A terminated run still stops its redis-server (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    notes: dict[str, str] = {}
    figures = run(
        sizes,
        iterations,
        warmup,
        peers=not args.no_peers,
        semantic=not args.no_semantic,
        notes=notes,
    )
    out = {
        "figures": figures,
        "meta": {
            "sizes": sizes,
            "iterations": iterations,
            "quick": args.quick,
            "seconds": round(time.monotonic() - started, 1),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "notes": notes,
        },
    }
    Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
