"""The batch journal across processes: SIGKILL after submission, resume, Redis, the CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haikucache import Client, DiskStore, Engine, MemoryLedger
from haikucache._batch_journal import (
    DiskBatchJournal,
    JournalRecord,
    RedisBatchJournal,
    encode_jobs,
    job_row,
    open_journal,
)
from haikucache._batcher import Batcher
from haikucache._cli import main
from haikucache.testing import Emulator

KEY = "sk-crash-test"
N = 60

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from haikucache import Client, Engine, MemoryLedger
    from haikucache._batcher import Batcher

    n = int(sys.argv[1])
    engine = Engine.for_credentials(
        os.environ["ANTHROPIC_API_KEY"], store="disk", ledger=MemoryLedger()
    )
    client = Client(engine=engine)
    batcher = Batcher(client, max_wait=3600, poll_interval=3600)
    futures = [batcher.submit({
        "model": "claude-haiku-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": f"crash job {i}"}],
    }) for i in range(n)]
    batcher.flush()
    print("SUBMITTED", flush=True)
    time.sleep(600)
    """
)


def crash_job(i: int) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": f"crash job {i}"}],
    }


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(argv, out=out), out.getvalue()


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emu = Emulator(batch_processing_seconds=0.5)
    with emu.serve() as url:
        yield emu, url


def test_sigkill_after_submission_then_resume_delivers_everything_once(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emu, url = served
    env = {
        **os.environ,
        "HAIKUCACHE_HOME": str(tmp_path),
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_BASE_URL": url,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(N)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "SUBMITTED"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert emu.batch_count == 1

    listing = subprocess.run(
        [sys.executable, "-m", "haikucache", "batches", "list", "--json", "--open"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    (record,) = json.loads(listing.stdout)["batches"]
    assert record["state"] == "submitted" and record["jobs"] == N and record["batch_id"]

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "haikucache",
            "batches",
            "resume",
            "--json",
            "--poll-interval",
            "0.2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["delivered"] == N and report["failed"] == 0
    assert emu.batch_count == 1  # nothing was submitted twice

    # A re-run of the same jobs costs nothing: every answer is in the response cache.
    store = DiskStore(tmp_path / "responses")
    engine = Engine.for_credentials(KEY, store=store, ledger=MemoryLedger())
    with (
        Client(api_key=KEY, base_url=url, engine=engine) as client,
        Batcher(client, journal=tmp_path / "batches") as batcher,
    ):
        answers = batcher.map([crash_job(i) for i in range(N)])
    store.close()
    assert all(a.haikucache.cache == "hit" for a in answers)  # type: ignore[union-attr]
    assert emu.batch_count == 1 and emu.requests["messages"] == 0
    assert len(emu.bill.entries) == N  # each job billed exactly once


def test_new_submits_join_a_resumed_batch_instead_of_paying_again(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emu, url = served
    journal = DiskBatchJournal(tmp_path / "batches")
    with Client(
        api_key=KEY,
        base_url=url,
        engine=Engine(ledger=MemoryLedger(), store=DiskStore(tmp_path / "r")),
    ) as client:
        first = Batcher(client, journal=journal, max_wait=3600, poll_interval=3600)
        futures = [first.submit(crash_job(i)) for i in range(5)]
        first.flush()
        first.close(wait=False)  # as if the process had died: the batch stays open
        assert all(f.exception() is not None for f in futures)
        (record,) = journal.outstanding()
        record.pid, record.host = 1, "elsewhere"
        journal.update(record)

        second = Batcher(client, journal=journal, poll_interval=0.1, max_poll_interval=0.2)
        second.resume(wait=False)
        answers = second.map([crash_job(i) for i in range(5)])
        second.close()
    assert emu.batch_count == 1
    assert all(a.haikucache.batch for a in answers)  # type: ignore[union-attr]
    assert journal.records()[0].state == "ended"


# --------------------------------------------------------------------------- Redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_redis_journal_round_trip_and_batches(redis_url: str) -> None:
    journal = open_journal(redis_url)
    assert isinstance(journal, RedisBatchJournal)
    row = job_row("hcr-0", "hc1:k", "ns", "m", json.dumps({"model": "m"}), 5.0, ("a",), True)
    journal.begin(
        JournalRecord("hcr", "submitting", "http://x", 1, 1.0, betas=("b1",)), encode_jobs([row])
    )
    (job,) = journal.jobs("hcr")
    assert (job.key, job.ttl, job.tags, job.no_store, job.body) == (
        "hc1:k",
        5.0,
        ("a",),
        True,
        {"model": "m"},
    )
    record = journal.get("hcr")
    assert record is not None and record.betas == ("b1",)
    record.state, record.batch_id = "ended", "msgbatch_r"
    journal.update(record)
    assert journal.find("msgbatch_r").state == "ended"  # type: ignore[union-attr]
    assert journal.jobs("hcr") == []  # rows dropped once closed

    emu = Emulator(batch_processing_seconds=0.1)
    engine = Engine(ledger=MemoryLedger(), store="memory")
    with (
        Client(
            api_key="k", base_url="http://e.test", transport=emu.transport(), engine=engine
        ) as client,
        Batcher(client, journal=journal, poll_interval=0.05, max_wait=0.01) as batcher,
    ):
        out = batcher.map([crash_job(i) for i in range(4)])
    assert len(out) == 4
    assert [r.state for r in journal.records()].count("ended") == 2
    journal.close()


# --------------------------------------------------------------------------- CLI


def test_cli_batches_list_status_and_errors(tmp_path: Path) -> None:
    jdir = str(tmp_path / "j")
    code, text = run_cli(["batches", "list", "--journal", jdir])
    assert code == 0 and "No batches" in text
    journal = DiskBatchJournal(jdir)
    journal.begin(
        JournalRecord("hcabc", "submitted", "http://x", 3, 1.7e9, batch_id="msgbatch_01abc"),
        encode_jobs([]),
    )
    journal.close()
    code, text = run_cli(["batches", "list", "--journal", jdir])
    assert code == 0 and "hcabc" in text and "msgbatch_01abc" in text and "still open" in text
    code, text = run_cli(["batches", "status", "hcabc", "--journal", jdir, "--offline", "--json"])
    assert code == 0 and json.loads(text)["journal"]["batch_id"] == "msgbatch_01abc"
    code, _ = run_cli(["batches", "status", "hcnope", "--journal", jdir, "--offline"])
    assert code == 2


def test_cli_status_asks_the_upstream(
    served: tuple[Emulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _emu, url = served
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    with Client(api_key="sk-x", base_url=url, engine=Engine(ledger=False)) as client:
        batch = client.messages.batches.create(
            requests=[{"custom_id": "a", "params": crash_job(1)}]
        )
    code, text = run_cli(
        ["batches", "status", str(batch.id), "--base-url", url, "--journal", str(tmp_path / "j")]
    )
    assert code == 0 and f"upstream {batch.id}" in text and "processing" in text


def test_demo_shows_the_batch_saving(tmp_path: Path) -> None:
    code, raw = run_cli(["demo", "--json", "--ledger-dir", str(tmp_path)])
    assert code == 0
    figures = json.loads(raw)
    assert figures["batched"] is True
    jobs = figures["sections"]["small jobs (batch)"]
    assert jobs["calls"] == 8
    assert jobs["billed_usd"] == pytest.approx(jobs["baseline_usd"] / 2)
    assert jobs["savings"]["batch_discount"] == pytest.approx(jobs["billed_usd"])
    # The ledger's dollars still agree with the emulator's own bill, batch included.
    assert figures["total"]["billed_usd"] == pytest.approx(figures["emulator_bill_usd"], rel=1e-9)
    code, text = run_cli(["demo", "--no-batch", "--no-progress", "--ledger-dir", str(tmp_path)])
    assert code == 0 and "small jobs" in text and "Message Batch" not in text
