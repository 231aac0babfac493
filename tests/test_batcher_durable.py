"""The batch journal across processes: SIGKILL after submission, resume, Redis, the CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from haikucache import (
    CacheStoreError,
    Client,
    DiskStore,
    Engine,
    ManualClock,
    MemoryLedger,
    MemoryStore,
)
from haikucache._batch_journal import (
    DiskBatchJournal,
    JournalRecord,
    MemoryBatchJournal,
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


# --------------------------------------------------------------------------- damaged records


class _Trap:
    """Unpickling it opens (creates) a file: proof that a pickle was run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _record(token: str, **fields: Any) -> str:
    data = JournalRecord(token, "ended", "http://x", 1, 1.7e9).to_dict()
    data.update(fields)
    return json.dumps(data)


#: What a torn write, a foreign process or a malicious user could leave in the journal.
DAMAGE: dict[str, Any] = {
    "hctorn": '{"token": "hctorn", "state": "submi',
    "hctypes": _record("hctypes", base_url=5, jobs="many"),
    "hcstate": _record("hcstate", state="exploded"),
    "hcbytes": b"\x00\x01\x02",
    "hcelse": _record("hcsomeoneelse"),
    "hcnan": _record("hcnan", created_at=float("nan")),
}


def _damage(directory: str | Path, marker: Path) -> None:
    import diskcache

    with diskcache.Cache(str(directory)) as raw:
        for token, value in DAMAGE.items():
            raw.set(("batch", token), value)
        raw.set(_Trap(marker), "a key whose pickle would run code")


def test_corrupt_journal_records_are_skipped_logged_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "j"
    journal = DiskBatchJournal(directory)
    journal.begin(JournalRecord("hcgood", "submitted", "http://x", 3, 1.7e9), encode_jobs([]))
    marker = tmp_path / "code-ran"
    _damage(directory, marker)
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        assert [r.token for r in journal.records()] == ["hcgood"]
        assert [r.token for r in journal.records()] == ["hcgood"]  # logged once, not twice
    assert not marker.exists()
    assert sorted(str(c.token) for c in journal.corrupt) == sorted([*DAMAGE, "None"])
    assert all(c.error for c in journal.corrupt)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == len(DAMAGE) + 1
    assert journal.get("hctorn") is None and journal.find("hcgood") is not None

    # Damaged job rows: no jobs, reported; the record itself still lists.
    import diskcache

    with diskcache.Cache(str(directory)) as raw:
        raw.set(("rows", "hcgood"), b"\x78\x9cnot zlib at all")
    assert journal.jobs("hcgood") == []
    assert [c.token for c in journal.corrupt if "job rows" in c.error] == ["hcgood"]
    journal.close()

    code, text = run_cli(["batches", "list", "--journal", str(directory)])
    assert code == 0 and "hcgood" in text
    assert "skipped an unreadable journal record hctorn" in text
    code, text = run_cli(["batches", "list", "--journal", str(directory), "--json"])
    listed = json.loads(text)
    assert code == 0 and [b["token"] for b in listed["batches"]] == ["hcgood"]
    assert {c["token"] for c in listed["corrupt"]} >= set(DAMAGE)


def test_healthy_batches_are_resumed_beside_corrupt_records(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emu, url = served
    directory = tmp_path / "batches"
    journal = DiskBatchJournal(directory)
    with Client(
        api_key=KEY,
        base_url=url,
        engine=Engine(ledger=MemoryLedger(), store=DiskStore(tmp_path / "r")),
    ) as client:
        first = Batcher(client, journal=journal, max_wait=3600, poll_interval=3600)
        for i in range(5):
            first.submit(crash_job(i))
        first.flush()
        first.close(wait=False)  # as if the process had died: the batch stays open
        (record,) = journal.outstanding()
        record.pid, record.host = 1, "elsewhere"
        journal.update(record)
        _damage(directory, tmp_path / "code-ran")

        second = Batcher(client, journal=journal, poll_interval=0.1, max_poll_interval=0.2)
        report = second.resume()
        second.close()
    assert (report.delivered, report.failed) == (5, 0)
    assert [r.state for r in journal.records()] == ["ended"]
    assert emu.batch_count == 1
    assert not (tmp_path / "code-ran").exists()
    journal.close()


def test_a_corrupt_redis_journal_record_is_skipped(redis_url: str) -> None:
    import redis

    journal = RedisBatchJournal(redis_url, prefix="damaged:")
    journal.begin(JournalRecord("hcok", "submitted", "http://x", 1, 1.0), encode_jobs([]))
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.hset("damaged:batch:hcbad", "r", b"{not json")
        raw.hset("damaged:batch:hcrows", mapping={"r": _record("hcrows"), "j": b"garbage"})
        raw.sadd("damaged:batches", "hcbad", "hcrows")
        assert [r.token for r in journal.records()] == ["hcok", "hcrows"]
        assert [c.token for c in journal.corrupt] == ["hcbad"]
        assert journal.jobs("hcrows") == []
        assert [c.token for c in journal.corrupt] == ["hcbad", "hcrows"]
    finally:
        for name in raw.scan_iter(match="damaged:*"):
            raw.delete(name)
        raw.close()
        journal.close()


def test_a_journal_that_cannot_be_opened_keeps_batches_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    directory = tmp_path / "file" / "batches"
    with caplog.at_level(logging.WARNING, logger="haikucache"):
        journal = DiskBatchJournal(directory)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(directory) in warning and "in memory" in warning
    assert not journal.persistent
    emu = Emulator(batch_processing_seconds=0.1)
    engine = Engine(ledger=MemoryLedger(), store="memory")
    with (
        Client(
            api_key="k", base_url="http://e.test", transport=emu.transport(), engine=engine
        ) as client,
        Batcher(client, journal=journal, poll_interval=0.05, max_wait=0.01) as batcher,
    ):
        answers = batcher.map([crash_job(i) for i in range(3)])
    assert len(answers) == 3
    assert [r.state for r in journal.records()] == ["ended"]
    with pytest.raises(CacheStoreError, match="batch journal"):
        DiskBatchJournal(directory, strict=True)


# --------------------------------------------------------------------------- issue 12: resume


def mixed_jobs() -> list[dict[str, Any]]:
    """Answers of every kind the emulator gives: complete, cut at max_tokens, stopped."""
    return [
        crash_job(0),  # end_turn
        {**crash_job(1), "max_tokens": 3},  # max_tokens
        {**crash_job(2), "max_tokens": 5},  # max_tokens
        {**crash_job(3), "stop_sequences": ["e"]},  # stop_sequence
    ]


def local_client(emu: Emulator, ledger: MemoryLedger) -> Client:
    engine = Engine(store=MemoryStore(), ledger=ledger)
    return Client(api_key=KEY, base_url="http://e.test", transport=emu.transport(), engine=engine)


def crashed_batch(client: Client, journal: MemoryBatchJournal, jobs: list[dict[str, Any]]) -> None:
    """Submit ``jobs`` as one batch, then leave it open as a crashed process would."""
    first = Batcher(client, journal=journal, max_wait=3600, poll_interval=3600)
    for params in jobs:
        first.submit(params)
    first.flush()
    first.close(wait=False)
    (record,) = journal.outstanding()
    record.pid, record.host = 1, "elsewhere"
    journal.update(record)


def cache_pattern(client: Client, jobs: list[dict[str, Any]]) -> list[str]:
    """For each job, whether a realtime re-run is answered by the response cache."""
    return [client.messages.create(**params).haikucache.cache for params in jobs]


def test_a_resumed_batch_delivers_and_stores_what_realtime_would() -> None:
    jobs = mixed_jobs()
    with local_client(Emulator(), MemoryLedger()) as realtime:
        expected = [realtime.messages.create(**params) for params in jobs]
        stored_by_realtime = cache_pattern(realtime, jobs)
    assert [m.stop_reason for m in expected] == [
        "end_turn",
        "max_tokens",
        "max_tokens",
        "stop_sequence",
    ]
    assert stored_by_realtime == ["hit", "miss", "miss", "hit"]

    emu = Emulator(batch_processing_seconds=0.1)
    ledger = MemoryLedger()
    journal = MemoryBatchJournal()
    with local_client(emu, ledger) as client:
        crashed_batch(client, journal, jobs)
        with Batcher(client, journal=journal, poll_interval=0.05, max_poll_interval=0.1) as second:
            second.resume(wait=False)
            # Callers re-running the same jobs join the resumed batch: each one gets exactly
            # the answer realtime gives, max_tokens included, at the batch price.
            answers = [f.result(10) for f in [second.submit(params) for params in jobs]]
        assert [a.to_dict()["content"] for a in answers] == [
            m.to_dict()["content"] for m in expected
        ]
        assert [a.stop_reason for a in answers] == [m.stop_reason for m in expected]
        for a in answers:
            assert a.haikucache.batch and a.haikucache.cache == "miss"  # type: ignore[union-attr]
            assert a.haikucache.cost_usd == pytest.approx(a.haikucache.baseline_usd / 2)  # type: ignore[union-attr]
        assert len(ledger.entries) == len(jobs)  # each accounted once
        assert emu.batch_count == 1 and emu.requests["messages"] == 0
        # Stored exactly as realtime stores: complete answers only.
        assert cache_pattern(client, jobs) == stored_by_realtime
    assert [r.state for r in journal.records()] == ["ended"]


def test_resume_with_nobody_waiting_accounts_every_answer_and_stores_what_realtime_would() -> None:
    jobs = mixed_jobs()
    emu = Emulator(batch_processing_seconds=0.1)
    ledger = MemoryLedger()
    journal = MemoryBatchJournal()
    with local_client(emu, ledger) as client:
        crashed_batch(client, journal, jobs)
        with Batcher(client, journal=journal, poll_interval=0.05, max_poll_interval=0.1) as second:
            report = second.resume()
        assert report.delivered == len(jobs) and report.failed == 0
        assert [e.batch for e in ledger.entries] == [True] * len(jobs)
        assert cache_pattern(client, jobs) == ["hit", "miss", "miss", "hit"]
    assert emu.batch_count == 1


def test_an_answer_another_run_already_stored_is_accounted_once_and_still_delivered() -> None:
    # Two batchers collect the same batch (``resume(force=True)`` took it over while its
    # owner still ran): the first to read the results accounts and stores them; the other
    # hands its waiters the stored answer for $0 instead of accounting it again. Each one
    # runs on a clock of its own, so the test decides who polls when.
    upstream, owner_clock, taker_clock = ManualClock(), ManualClock(), ManualClock()
    emu = Emulator(clock=upstream, batch_processing_seconds=60)
    ledger = MemoryLedger()
    journal = MemoryBatchJournal()
    with local_client(emu, ledger) as client:
        owner = Batcher(client, journal=journal, max_wait=3600, poll_interval=10, clock=owner_clock)
        taker = Batcher(client, journal=journal, poll_interval=10, clock=taker_clock)
        try:
            mine = owner.submit(crash_job(0))
            owner.flush()
            (record,) = taker.resume(wait=False, force=True).batches
            joined = taker.submit(crash_job(0))  # waits on the taken-over job
            wait_for(lambda: emu.requests["batches.retrieve"] == 1)  # the taker's first look
            upstream.advance(120)  # the batch ends
            owner_clock.advance(20)
            first = mine.result(10)  # the owner read, accounted and stored it
            taker_clock.advance(20)
            second = joined.result(10)
        finally:
            owner.close()
            taker.close()
    assert first.haikucache.cache == "miss" and first.haikucache.cost_usd > 0  # type: ignore[union-attr]
    assert second.to_dict()["content"] == first.to_dict()["content"]
    assert second.haikucache.cost_usd == 0  # type: ignore[union-attr]
    assert [e.cache for e in ledger.entries].count("miss") == 1
    assert emu.batch_count == 1 and len(emu.bill.entries) == 1
    assert emu.requests["batches.results"] == 2
    assert journal.get(record.token).state == "ended"  # type: ignore[union-attr]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class _DiesBeforeClosing(MemoryBatchJournal):
    """A journal whose process dies right before writing that a batch ended: every answer
    was already accounted (and stored when complete), the record still says it is open."""

    dying = True

    def update(self, record: JournalRecord) -> None:
        if self.dying and record.state == "ended":
            raise OSError("the process was killed here")
        super().update(record)


def test_a_resume_after_a_crash_past_delivery_accounts_nothing_twice() -> None:
    # Answers cut at max_tokens are never stored, so only the journal's per-job marks can
    # tell a second resume that they were accounted already.
    jobs = mixed_jobs()
    emu = Emulator(batch_processing_seconds=0.1)
    ledger = MemoryLedger()
    journal = _DiesBeforeClosing()
    with local_client(emu, ledger) as client:
        crashed_batch(client, journal, jobs)
        with Batcher(client, journal=journal, poll_interval=0.05, max_poll_interval=0.1) as first:
            first.resume(wait=False)
            wait_for(lambda: len(ledger.entries) == len(jobs))
            first.close(wait=False)
        (record,) = journal.outstanding()
        assert journal.delivered(record.token) == {j.custom_id for j in journal.jobs(record.token)}
        record.pid, record.host = 1, "elsewhere"
        journal.dying = False
        journal.update(record)
        with Batcher(client, journal=journal, poll_interval=0.05, max_poll_interval=0.1) as second:
            report = second.resume()
        assert report.delivered == len(jobs) and report.failed == 0
        assert len(ledger.entries) == len(jobs)  # nothing accounted twice
        assert cache_pattern(client, jobs) == ["hit", "miss", "miss", "hit"]
    assert [r.state for r in journal.records()] == ["ended"]
    assert journal.delivered(record.token) == set()  # dropped with the closed record


@pytest.mark.parametrize("kind", ["memory", "disk", "redis"])
def test_delivered_marks_are_per_batch_and_dropped_when_it_closes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "redis":
        journal = RedisBatchJournal(request.getfixturevalue("redis_url"), prefix="marks:")
    else:
        journal = open_journal("memory" if kind == "memory" else str(tmp_path / "journal"))
    try:
        for token in ("hca", "hcb"):
            journal.begin(JournalRecord(token, "submitted", "http://x", 1, 1.0), b"")
        journal.mark_delivered("hca", "hca-0")
        journal.mark_delivered("hca", "hca-1")
        journal.mark_delivered("hca", "hca-1")  # idempotent
        journal.mark_delivered("hcb", "hcb-0")
        assert journal.delivered("hca") == {"hca-0", "hca-1"}
        assert journal.delivered("hcb") == {"hcb-0"}
        assert journal.delivered("hcz") == set()
        record = journal.get("hca")
        assert record is not None
        record.state = "ended"
        journal.update(record)
        assert journal.delivered("hca") == set()
        assert journal.delivered("hcb") == {"hcb-0"}
        assert [r.token for r in journal.records()] == ["hca", "hcb"]
    finally:
        if kind == "redis":
            for token in ("hca", "hcb"):
                journal._redis.delete(journal._k(token), journal._k(token) + ":done")  # type: ignore[attr-defined]
            journal._redis.delete("marks:batches")  # type: ignore[attr-defined]
        journal.close()
