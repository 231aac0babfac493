"""The batcher at scale, against the emulator's loopback server in another process.

    python benchmarks/bench_batch.py --json OUT [--quick]

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``jobs`` — small jobs sent through one :class:`haikucache.Batcher` (100,000; quick 10,000).
* ``submit_wall_s`` — from the first ``submit`` to the last batch accepted upstream (and
  recorded in the journal); target <= 20 s for 100,000.
* ``peak_rss_mb`` — peak resident memory of the benchmark process through the batch run
  (target <= 1,024); the emulator runs in its own process.
* ``lost`` / ``mismatched`` — futures without an answer, and answers that are not the answer
  to their own job (checked against the same jobs sent realtime to a second emulator with
  the same seed, whose answers are deterministic per request); both must be 0.
* ``billed_ratio_vs_realtime`` — the emulator's bill for the batch run divided by its bill for
  the same jobs realtime (through haikucache, without the response cache).
* ``prefix_jobs`` / ``prefix_cache_read_share`` / ``prefix_billed_ratio_vs_realtime`` — a
  group of jobs sharing a ~5,000-token system prompt: the share of their input tokens the
  emulator billed as cache reads inside the batch, and the bill against realtime.
* ``crash_jobs`` / ``crash_resume_delivered_ratio`` / ``duplicate_submissions`` — a child
  process submits, is SIGKILLed right after its batch is accepted, and
  ``haikucache batches resume`` (a new process) collects the batch into the response cache:
  the share of jobs whose answer is then in the cache (must be 1.0), and how many batches
  the emulator received beyond those the journal records (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import xxhash

HERE = Path(__file__).resolve()
KEY = "sk-bench-batch"
SYSTEM = "Classify the airline review as positive, negative or mixed. Answer in one word."
REVIEWS = (
    "The flight was delayed four hours and nobody told us anything.",
    "Great crew, smooth landing, will fly again.",
    "My bag arrived a day late but the refund was quick.",
    "Seat 14C would not recline for the whole trip.",
    "Booking the upgrade online took two minutes.",
)


def small_job(i: int) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": f"Review #{i}: {REVIEWS[i % len(REVIEWS)]}"}],
    }


def policy_text() -> str:
    sentence = (
        "An agent must confirm the booking reference and the passenger's full name before "
        "changing a flight, and record every action in the reservation notes. "
    )
    return sentence * 180  # about 5,000 tokens


def prefix_job(i: int, policy: str) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "system": policy,
        "messages": [{"role": "user", "content": f"Ticket #{i}: can I change my flight?"}],
    }


def digest(message: Any) -> int:
    return xxhash.xxh3_64_intdigest(
        json.dumps([b.to_dict() for b in message.content], sort_keys=True).encode()
        + str(message.stop_reason).encode()
    )


# --------------------------------------------------------------------------- child processes


def serve_emulator(processing: float) -> None:
    """Child: serve an emulator; answer ``bill`` / ``quit`` commands on stdin."""
    from haikucache.testing import Emulator

    emu = Emulator(batch_processing_seconds=processing)
    server = emu.start_server()
    print(server.base_url, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "bill":
            entries = emu.bill.entries
            usage = {"input": 0, "read": 0, "write": 0}
            for e in entries:
                usage["input"] += int(e.usage.get("input_tokens", 0))
                usage["read"] += int(e.usage.get("cache_read_input_tokens", 0))
                usage["write"] += int(e.usage.get("cache_creation_input_tokens", 0))
            print(
                json.dumps(
                    {
                        "usd": emu.bill.total_usd,
                        "entries": len(entries),
                        "batches": emu.batch_count,
                        "usage": usage,
                    }
                ),
                flush=True,
            )
        elif command == "quit":
            break
    server.stop()


def crash_child(n: int) -> None:
    """Child: submit ``n`` jobs, say so once the batch is accepted, then wait to be killed."""
    from haikucache import Client, Engine, MemoryLedger
    from haikucache._batcher import Batcher

    engine = Engine.for_credentials(KEY, store="disk", ledger=MemoryLedger())
    client = Client(engine=engine)
    batcher = Batcher(client, max_wait=3600, poll_interval=3600)
    futures = [batcher.submit(small_job(1_000_000 + i)) for i in range(n)]
    batcher.flush()
    print("SUBMITTED", len(futures), flush=True)
    time.sleep(3600)


class EmulatorProcess:
    def __init__(self, processing: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--serve-emulator", str(processing)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def bill(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("bill\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- runs


def realtime_run(jobs: list[dict[str, Any]]) -> tuple[float, list[int]]:
    """The same jobs realtime through haikucache (no response cache), in-process emulator."""
    import logging

    from haikucache import Client, Engine, MemoryLedger
    from haikucache.testing import Emulator

    # The realtime planner warns that each job's tail differs; that is the point here.
    logging.getLogger("haikucache").setLevel(logging.ERROR)
    emu = Emulator()
    engine = Engine(ledger=MemoryLedger(), namespace="bench")
    digests = []
    with Client(
        api_key=KEY, base_url="http://emulator.local", transport=emu.transport(), engine=engine
    ) as client:
        for job in jobs:
            digests.append(digest(client.messages.create(**job)))
    return emu.bill.total_usd, digests


def batch_run(n: int, workdir: Path) -> dict[str, Any]:
    from haikucache import Client, Engine, MemoryLedger, MemoryStore
    from haikucache._batcher import Batcher

    emu = EmulatorProcess(processing=2.0)
    try:
        jobs = [small_job(i) for i in range(n)]
        # The response cache at its default bound (10,000 answers, least recently used out).
        engine = Engine(ledger=MemoryLedger(), namespace="bench", store=MemoryStore())
        with Client(api_key=KEY, base_url=emu.url, engine=engine) as client:
            batcher = Batcher(
                client,
                journal=workdir / "journal",
                max_wait=3600,
                poll_interval=1.0,
                max_poll_interval=2.0,
            )
            start = time.perf_counter()
            cpu = time.process_time()
            futures = [batcher.submit(job) for job in jobs]
            batcher.flush()
            submit_wall = time.perf_counter() - start
            submit_cpu = time.process_time() - cpu
            lost = 0
            batch_digests = []
            for f in futures:
                try:
                    batch_digests.append(digest(f.result(timeout=1800)))
                except Exception:
                    lost += 1
                    batch_digests.append(-1)
            total_wall = time.perf_counter() - start
            batches = batcher.stats["submitted_batches"]
            batcher.close()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        del futures
        bill = emu.bill()
    finally:
        emu.close()
    realtime_usd, realtime_digests = realtime_run(jobs)
    mismatched = sum(
        1 for a, b in zip(batch_digests, realtime_digests, strict=True) if a != b and a != -1
    )
    return {
        "jobs": n,
        "batches": batches,
        "submit_wall_s": round(submit_wall, 2),
        "submit_cpu_s": round(submit_cpu, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "results_wall_s": round(total_wall, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "lost": lost,
        "mismatched": mismatched,
        "batch_bill_usd": round(bill["usd"], 6),
        "realtime_bill_usd": round(realtime_usd, 6),
        "billed_ratio_vs_realtime": round(bill["usd"] / realtime_usd, 4),
    }


def prefix_run(n: int, workdir: Path) -> dict[str, Any]:
    """Jobs sharing a long system prompt: 1-hour markers, cache reads inside the batch."""
    from haikucache import Client, Engine, MemoryLedger
    from haikucache._batcher import Batcher

    policy = policy_text()
    jobs = [prefix_job(i, policy) for i in range(n)]
    emu = EmulatorProcess(processing=1.0)
    try:
        engine = Engine(ledger=MemoryLedger(), namespace="bench-prefix")
        with (
            Client(api_key=KEY, base_url=emu.url, engine=engine) as client,
            Batcher(
                client, journal=workdir / "journal-prefix", poll_interval=0.5, max_poll_interval=1.0
            ) as batcher,
        ):
            batcher.map(jobs)
        bill = emu.bill()
    finally:
        emu.close()
    realtime_usd, _ = realtime_run(jobs)
    usage = bill["usage"]
    total_in = usage["input"] + usage["read"] + usage["write"]
    return {
        "prefix_jobs": n,
        "prefix_cache_read_share": round(usage["read"] / total_in, 4),
        "prefix_billed_ratio_vs_realtime": round(bill["usd"] / realtime_usd, 4),
    }


def crash_run(n: int, workdir: Path) -> dict[str, Any]:
    home = workdir / "crash-home"
    emu = EmulatorProcess(processing=2.0)
    try:
        env = {**os.environ, "HAIKUCACHE_HOME": str(home), "ANTHROPIC_API_KEY": KEY}
        env["ANTHROPIC_BASE_URL"] = emu.url
        child = subprocess.Popen(
            [sys.executable, str(HERE), "--crash-child", str(n)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        if not line.startswith("SUBMITTED"):
            raise RuntimeError(f"the crash child did not submit: {line!r}")
        resume = subprocess.run(
            [
                sys.executable,
                "-m",
                "haikucache",
                "batches",
                "resume",
                "--json",
                "--poll-interval",
                "1",
                "--max-poll-interval",
                "2",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if resume.returncode not in (0, 1):
            raise RuntimeError(f"resume failed: {resume.stderr}")
        bill = emu.bill()
    finally:
        emu.close()

    from haikucache import DiskStore, Engine, MemoryLedger
    from haikucache._batch_journal import DiskBatchJournal

    journal = DiskBatchJournal(home / "batches")
    recorded = len(journal.records())
    journal.close()
    store = DiskStore(home / "responses")
    engine = Engine.for_credentials(KEY, store=store, ledger=MemoryLedger())
    now = engine.clock.now()
    delivered = sum(
        1
        for i in range(n)
        if store.get(engine.prepare(small_job(1_000_000 + i), credential=KEY).key, now=now)
        is not None
    )
    store.close()
    return {
        "crash_jobs": n,
        "crash_resume_delivered_ratio": round(delivered / n, 6),
        "duplicate_submissions": bill["batches"] - recorded,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="10,000 jobs instead of 100,000")
    parser.add_argument("--serve-emulator", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--crash-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulator is not None:
        serve_emulator(args.serve_emulator)
        return 0
    if args.crash_child is not None:
        crash_child(args.crash_child)
        return 0

    n = 10_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        workdir = Path(tmp)
        figures: dict[str, Any] = {"quick": args.quick}
        figures.update(batch_run(n, workdir))
        figures.update(prefix_run(200 if args.quick else 1000, workdir))
        figures.update(crash_run(2_000 if args.quick else 10_000, workdir))

    rows = [
        ("jobs", f"{figures['jobs']:,}", ""),
        ("submit wall (s)", f"{figures['submit_wall_s']}", "target <= 20 for 100,000"),
        ("submit CPU (s)", f"{figures['submit_cpu_s']}", "this process; the emulator is apart"),
        ("load average (1 min)", f"{figures['load_average_1m']}", f"{os.cpu_count()} CPUs"),
        ("results wall (s)", f"{figures['results_wall_s']}", "submit to last answer"),
        ("peak RSS (MB)", f"{figures['peak_rss_mb']}", "target <= 1,024"),
        ("lost", f"{figures['lost']}", "must be 0"),
        ("mismatched", f"{figures['mismatched']}", "must be 0"),
        ("billed vs realtime", f"{figures['billed_ratio_vs_realtime']}", "about 0.5 or lower"),
        ("prefix jobs: cache-read share", f"{figures['prefix_cache_read_share']}", ""),
        ("prefix jobs: billed vs realtime", f"{figures['prefix_billed_ratio_vs_realtime']}", ""),
        ("crash: delivered ratio", f"{figures['crash_resume_delivered_ratio']}", "must be 1.0"),
        ("crash: duplicate submissions", f"{figures['duplicate_submissions']}", "must be 0"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bench_batch ({'quick' if args.quick else 'full'})")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>12}  {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures}, indent=2) + "\n")
    ok = (
        figures["lost"] == 0
        and figures["mismatched"] == 0
        and figures["crash_resume_delivered_ratio"] == 1.0
        and figures["duplicate_submissions"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
