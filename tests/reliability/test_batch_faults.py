"""The batcher under real faults: a process SIGKILLed while it submits, an upstream that keeps
refusing batches, a response store that breaks while results come in.

Nothing is mocked: the upstream is the emulator (over loopback HTTP for the child processes),
the crash is a SIGKILL of a real child process at the moment its journal shows the batch
submitting or submitted, the store is a real SQLite file overwritten with garbage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from haikucache import (
    BatchError,
    CacheStoreError,
    CallOptions,
    Client,
    DiskStore,
    Engine,
    ManualClock,
    MemoryLedger,
    Message,
)
from haikucache._batch_journal import DiskBatchJournal, JournalRecord, MemoryBatchJournal
from haikucache._batcher import Batcher
from haikucache.testing import Emulator

KEY = "sk-batch-faults"
N = 20


def job(i: int) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": f"fault job {i}"}],
    }


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.002)


def drive(clock: ManualClock, futures: list[Future[Message]], step: float = 30.0) -> None:
    """Move the batcher's injected clock until every future is done."""
    for _ in range(1000):
        if all(f.done() for f in futures):
            return
        clock.advance(step)
        time.sleep(0.01)
    raise AssertionError("the futures never resolved")


# --------------------------------------------------------------------------- SIGKILL mid-submit

# Submits N jobs as one batch when told to, then idles (it polls once an hour): the parent
# kills it at the moment it chooses, from what the journal file shows.
_SUBMITTER = """
import sys, time
from haikucache import Client, DiskStore, Engine, MemoryLedger
from haikucache._batcher import Batcher

url, home, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
engine = Engine.for_credentials(key, store=DiskStore(home + "/responses"), ledger=MemoryLedger())
client = Client(api_key=key, base_url=url, engine=engine, max_retries=0)
batcher = Batcher(
    client, journal=home + "/batches", max_wait=3600, poll_interval=3600, max_poll_interval=3600
)
print("READY", flush=True)
sys.stdin.readline()
futures = [batcher.submit({
    "model": "claude-haiku-4-5", "max_tokens": 1024,
    "messages": [{"role": "user", "content": f"fault job {i}"}],
}) for i in range(n)]
batcher.flush()
time.sleep(600)
"""


def _submitting(emu: Emulator, record: JournalRecord) -> bool:
    # The POST reached the API (the batch exists) but its answer has not come back.
    return record.state == "submitting" and emu.batch_count == 1


def _refused(emu: Emulator, record: JournalRecord) -> bool:
    # The POST got no answer and created nothing; the record says so.
    return record.state == "submitting" and (record.error or "").startswith("submission")


def _submitted(emu: Emulator, record: JournalRecord) -> bool:
    return record.state == "submitted" and record.batch_id is not None


# moment to kill -> (fault on the child's POST, when the journal shows that moment, POSTs seen)
MOMENTS: dict[str, tuple[dict[str, Any] | None, Callable[[Emulator, JournalRecord], bool], int]] = {
    "submitted": (None, _submitted, 1),
    "submitting, the POST's answer not yet back": (
        {"kind": "latency", "seconds": 30.0},
        _submitting,
        1,
    ),
    "submitting, the POST dropped before the API": ({"kind": "drop"}, _refused, 2),
}


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emu = Emulator(batch_processing_seconds=0.3)
    with emu.serve() as url:
        yield emu, url


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_while_submitting_then_resume_stores_every_answer_once(
    served: tuple[Emulator, str], tmp_path: Path, moment: str
) -> None:
    emu, url = served
    fault, ready, posts = MOMENTS[moment]
    if fault is not None:
        emu.inject(fault["kind"], endpoint="batches.create", seconds=fault.get("seconds", 0.0))
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SUBMITTER), url, str(tmp_path), KEY, str(N)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        journal = DiskBatchJournal(tmp_path / "batches")
        child.stdin.write("go\n")
        child.stdin.flush()

        def moment_reached() -> bool:
            records = journal.records()
            return len(records) == 1 and ready(emu, records[0])

        wait_for(moment_reached, what=moment)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
    assert child.returncode == -signal.SIGKILL
    (record,) = journal.records()
    assert record.is_open and record.jobs == N

    store = DiskStore(tmp_path / "responses")
    ledger = MemoryLedger()
    engine = Engine.for_credentials(KEY, store=store, ledger=ledger)
    with Client(api_key=KEY, base_url=url, engine=engine, max_retries=0) as client:
        with Batcher(client, journal=journal, poll_interval=0.05, max_poll_interval=0.2) as batcher:
            report = batcher.resume()
        assert report.delivered == N and report.failed == 0
        assert [r.state for r in journal.records()] == ["ended"]
        # Every answer is in the store once, accounted once, and paid for once.
        assert store.stats().entries == N
        assert len(ledger.entries) == N and all(e.batch for e in ledger.entries)
        assert emu.batch_count == 1 and emu.requests["batches.create"] == posts
        assert len(emu.bill.entries) == N and emu.requests["messages"] == 0
        # A re-run of the same jobs is answered by the store, for $0.
        with Batcher(client, journal=journal, max_wait=0.01) as again:
            answers = again.map([job(i) for i in range(N)])
    assert all(a.haikucache.cache == "hit" for a in answers)  # type: ignore[union-attr]
    assert emu.batch_count == 1 and emu.requests["messages"] == 0
    store.close()
    journal.close()


# --------------------------------------------------------------------------- upstream refusing


def local_client(emu: Emulator, **engine: Any) -> Client:
    engine.setdefault("ledger", MemoryLedger())
    return Client(
        api_key=KEY,
        base_url="http://emulator.test",
        transport=emu.transport(),
        engine=Engine(**engine),
        max_retries=0,
    )


def test_an_upstream_that_keeps_failing_the_post_is_retried_with_backoff_then_given_up() -> None:
    # A job-independent failure: every POST gets a 500 (the batch may or may not exist).
    # The batcher looks before it sends again, backs off, and after max_poll_failures fails
    # the futures instead of trying forever; the journal keeps the batch for resume().
    emu = Emulator(batch_processing_seconds=0.1)
    emu.inject("server_error", endpoint="batches.create", times=None)
    clock = ManualClock()
    journal = MemoryBatchJournal()
    with local_client(emu) as client:
        with Batcher(
            client, journal=journal, clock=clock, max_wait=3600, max_poll_failures=3
        ) as batcher:
            futures = [batcher.submit(job(i)) for i in range(3)]
            batcher.flush()
            drive(clock, futures)
        for f in futures:
            with pytest.raises(BatchError, match="after 3 tries"):
                f.result()
        assert emu.requests["batches.create"] == 3 and emu.batch_count == 0
        (record,) = journal.records()
        assert record.is_open and (record.error or "").startswith("submission unconfirmed")

        emu.clear_faults()
        with Batcher(client, journal=journal, poll_interval=0.05, max_poll_interval=0.1) as later:
            report = later.resume(force=True)  # this very process wrote it
    assert report.delivered == 3 and emu.batch_count == 1
    assert [r.state for r in journal.records()] == ["ended"]


# --------------------------------------------------------------------------- a store that breaks


def test_a_store_that_breaks_while_results_arrive_fails_only_the_jobs_it_concerns(
    tmp_path: Path,
) -> None:
    # A strict store raises on a failed write (realtime calls raise it too): the jobs whose
    # answers it had to keep fail with that error; the jobs that store nothing are delivered.
    directory = tmp_path / "store"
    upstream = ManualClock()  # the batch ends when the test says so
    emu = Emulator(clock=upstream, batch_processing_seconds=60)
    store = DiskStore(directory, strict=True)
    journal = MemoryBatchJournal()
    with (
        local_client(emu, store=store) as client,
        Batcher(
            client, journal=journal, max_wait=3600, poll_interval=0.02, max_poll_interval=0.05
        ) as batcher,
    ):
        kept = [batcher.submit(job(i)) for i in range(3)]
        unkept = [batcher.submit(job(i), CallOptions(no_store=True)) for i in range(3, 6)]
        batcher.flush()
        for leftover in directory.glob("*.db-*"):  # -wal, -shm
            leftover.unlink()
        for database in directory.glob("*.db"):
            database.write_bytes(b"\x00this is not an SQLite database\n" * 256)
        upstream.advance(120)
        for f in kept:
            with pytest.raises(CacheStoreError, match="not a database"):
                f.result(10)
        assert all(f.result(10).haikucache.batch for f in unkept)  # type: ignore[union-attr]
    assert emu.batch_count == 1 and emu.requests["batches.results"] == 1
    assert [r.state for r in journal.records()] == ["ended"]
    store.close()
