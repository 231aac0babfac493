"""Eight processes reading and writing one DiskStore at once: no errors, no torn entries.

Every process puts, gets, deletes and invalidates (by key, by tag, and by namespace) the same
small set of keys, with answers of very different sizes, in a store small enough that puts
also evict. Each answer a process writes is a pure function of (key, writer, sequence
number, size), and the text of the answer starts with those four values. So a reader can
rebuild, from what it read, the exact entry that must have been written; and the parent can
check, from the writers' logs, that this writer really wrote it for that key. A torn, mixed
or misfiled entry fails one of the two checks; a store failure raises (``strict=True``).
"""

from __future__ import annotations

import json
import multiprocessing
import runpy
import textwrap
import time
from collections import defaultdict
from pathlib import Path

from haikucache._store import DiskStore

PROCESSES = 8
OPERATIONS = 250
KEYS = 12

# Run by runpy in spawned processes (a spawned child cannot import a test module collected
# with --import-mode=importlib). SPEC, QUEUE and BARRIER come in as globals.
_WORKER = textwrap.dedent(
    """
    import json, os, random, time
    from haikucache._store import CacheEntry, DiskStore

    KEYS = ["hc1:%032x" % i for i in range(SPEC["keys"])]
    NAMESPACES = ("tenant-a", "tenant-b")


    def message_for(key, writer, seq, size):
        # The answer is a pure function of its header, so a reader can rebuild it.
        rng = random.Random(f"{key}|{writer}|{seq}")
        body = "".join(rng.choice("abcdefghij \\n") for _ in range(size))
        return {
            "id": f"msg_{writer}_{seq}",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": f"{key}|{writer}|{seq}|{size}|" + body}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10 + seq, "output_tokens": size // 4 + 1},
        }


    def entry_for(key, writer, seq, size):
        message = message_for(key, writer, seq, size)
        return CacheEntry.for_message(
            key=key,
            namespace=NAMESPACES[(writer + seq) % 2],
            message=message,
            now=1000.0 + seq,
            ttl=None if seq % 3 else 10_000.0,
            cost_usd=0.001 * seq,
            baseline_usd=0.002 * seq,
            tags=("even" if seq % 2 == 0 else "odd", f"w{writer}"),
        )


    def check(key, got):
        # What was read must be exactly what its header says was written, for this key.
        text = got.response["content"][0]["text"]
        head_key, writer, seq, size = text.split("|", 4)[:4]
        writer, seq, size = int(writer), int(seq), int(size)
        if head_key != key or got.key != key:
            raise AssertionError(f"entry for {head_key!r} / {got.key!r} read under {key!r}")
        want = entry_for(key, writer, seq, size)
        if (got.response, got.usage, got.namespace, got.tags, got.cost_usd, got.expires_at) != (
            want.response, want.usage, want.namespace, want.tags, want.cost_usd, want.expires_at
        ):
            raise AssertionError(f"entry {key} from writer {writer} seq {seq} differs")
        return [key, writer, seq, size]


    me = SPEC["writer"]
    rng = random.Random(me)
    store = DiskStore(SPEC["directory"], size_limit=SPEC["size_limit"], timeout=60, strict=True)
    wrote, seen = [], []
    counts = {"put": 0, "get": 0, "hit": 0, "delete": 0, "invalidate": 0}
    BARRIER.wait(120)
    try:
        for seq in range(SPEC["operations"]):
            key = rng.choice(KEYS)
            roll = rng.random()
            if roll < 0.40:
                # Sizes from a few bytes to 64 KB: several SQLite pages per entry.
                size = rng.choice((8, 300, 4_000, 20_000, 64_000))
                if store.put(entry_for(key, me, seq, size)):
                    wrote.append([key, me, seq, size])
                counts["put"] += 1
            elif roll < 0.88:
                got = store.get(key, now=1000.0 + seq)
                counts["get"] += 1
                if got is not None:
                    seen.append(check(key, got))
                    counts["hit"] += 1
            elif roll < 0.93:
                store.delete(key)
                counts["delete"] += 1
            elif roll < 0.97:
                store.invalidate(tag=rng.choice(("even", "odd", f"w{rng.randrange(8)}")))
                counts["invalidate"] += 1
            elif roll < 0.99:
                store.invalidate(key=key)
                counts["invalidate"] += 1
            else:
                store.invalidate(namespace=rng.choice(NAMESPACES))
                counts["invalidate"] += 1
        stats = store.stats()
        store.close()
        QUEUE.put(json.dumps({
            "writer": me, "pid": os.getpid(), "wrote": wrote, "seen": seen,
            "counts": counts, "errors": stats.errors,
        }))
    except BaseException as exc:
        QUEUE.put(json.dumps({"writer": me, "error": repr(exc)}))
        raise
    """
)


def test_eight_processes_share_one_disk_store(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    directory = tmp_path / "store"
    # Small enough that puts evict while others read: eviction races are exercised too.
    size_limit = 512 * 1024
    DiskStore(directory, size_limit=size_limit).close()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    barrier = context.Barrier(PROCESSES)
    processes = [
        context.Process(
            target=runpy.run_path,
            args=(
                str(script),
                {
                    "SPEC": {
                        "writer": writer,
                        "directory": str(directory),
                        "size_limit": size_limit,
                        "operations": OPERATIONS,
                        "keys": KEYS,
                    },
                    "QUEUE": queue,
                    "BARRIER": barrier,
                },
            ),
            daemon=True,
        )
        for writer in range(PROCESSES)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    try:
        reports = [json.loads(queue.get(timeout=300)) for _ in range(PROCESSES)]
    finally:
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
                process.join(10)
    errors = [(r["writer"], r["error"]) for r in reports if "error" in r]
    assert not errors, errors
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    assert len({r["pid"] for r in reports}) == PROCESSES
    assert all(r["errors"] == 0 for r in reports)

    written: dict[int, set[tuple[str, int, int]]] = defaultdict(set)
    for report in reports:
        for key, writer, seq, size in report["wrote"]:
            written[writer].add((key, seq, size))
    # Every entry read was written by the writer it names, for the key it was read under.
    seen = [tuple(s) for r in reports for s in r["seen"]]
    for key, writer, seq, size in seen:
        assert (key, seq, size) in written[writer], (key, writer, seq, size)

    # The run really was concurrent and mixed: reads found other processes' answers, and
    # every kind of operation happened.
    assert len(seen) > 50
    assert len({writer for _, writer, _, _ in seen}) > 1
    assert sum(1 for r in reports for s in r["seen"] if s[1] != r["writer"]) > 0
    totals = {op: sum(r["counts"][op] for r in reports) for op in reports[0]["counts"]}
    assert all(totals[op] > 0 for op in ("put", "get", "hit", "delete", "invalidate")), totals

    # What is left is whole too.
    store = DiskStore(directory, strict=True)
    try:
        for key in {k for writes in written.values() for k, _, _ in writes}:
            got = store.get(key, now=1000.0)
            if got is not None:
                text = got.response["content"][0]["text"]
                head_key, writer, seq, size = text.split("|", 4)[:4]
                assert head_key == key
                assert (key, int(seq), int(size)) in written[int(writer)]
    finally:
        store.close()
    assert time.monotonic() - started < 300
