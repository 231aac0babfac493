"""The batcher against the emulator: flushing, dedup, results, policies, cancellation, caching."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import pytest

from haikucache import (
    BatchError,
    BatchItemCanceledError,
    BatchItemErroredError,
    Client,
    Engine,
    ManualClock,
    MemoryLedger,
    MemoryStore,
    Message,
    RequestValidationError,
    UsageError,
)
from haikucache._batch_journal import DiskBatchJournal, MemoryBatchJournal
from haikucache._batch_progress import BatchProgress
from haikucache._batcher import AsyncBatcher, Batcher
from haikucache._engine import CallOptions
from haikucache.testing import Emulator

MODEL = "claude-haiku-4-5"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def job(
    i: int, *, system: str = "Classify the review: positive, negative or mixed."
) -> dict[str, Any]:
    # max_tokens large enough that every answer is complete (and so stored).
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "system": system,
        "messages": [{"role": "user", "content": f"Review {i}: the flight was fine."}],
    }


def make_client(emu: Emulator, **engine_kwargs: Any) -> Client:
    engine_kwargs.setdefault("ledger", MemoryLedger())
    engine_kwargs.setdefault("store", MemoryStore())
    engine = Engine(namespace="tests", **engine_kwargs)
    return Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emu.transport(),
        engine=engine,
        max_retries=0,
    )


def fast(client: Client, **kwargs: Any) -> Batcher:
    kwargs.setdefault("journal", MemoryBatchJournal())
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("max_poll_interval", 0.1)
    kwargs.setdefault("max_wait", 0.05)
    return Batcher(client, **kwargs)


def created_requests(emu: Emulator) -> list[list[dict[str, Any]]]:
    """The ``requests`` of every batch the emulator accepted, in order."""
    return [
        r.body["requests"] for r in emu.log if r.endpoint == "batches.create" and r.status == 200
    ]


def drive(
    clock: ManualClock, futures: Sequence[Future[Any]], step: float = 60.0, limit: int = 3000
) -> None:
    """Move the injected clock until every future is done (the worker looks every 10 ms)."""
    for _ in range(limit):
        if all(f.done() for f in futures):
            return
        clock.advance(step)
        time.sleep(0.01)
    raise AssertionError("futures did not finish")


@pytest.fixture
def emu() -> Emulator:
    return Emulator(batch_processing_seconds=0.2)


@pytest.fixture
def client(emu: Emulator) -> Iterator[Client]:
    c = make_client(emu)
    yield c
    c.close()


# --------------------------------------------------------------------------- the happy path


def test_map_answers_in_input_order_at_half_price(emu: Emulator, client: Client) -> None:
    requests = [job(i) for i in range(40)]
    with fast(client) as batcher:
        answers = batcher.map(requests)
    assert emu.requests["batches.create"] == 1 and emu.requests["messages"] == 0
    # Input order: each answer is the emulator's deterministic answer to that very request.
    realtime = Emulator()
    with make_client(realtime) as direct:
        expected = [direct.messages.create(**r).content[0].text for r in requests[:5]]
    assert [a.content[0].text for a in answers[:5]] == expected  # type: ignore[union-attr]
    for a in answers:
        assert isinstance(a, Message) and a.haikucache is not None
        assert a.haikucache.batch and a.haikucache.cache == "miss"
        assert a.haikucache.cost_usd == pytest.approx(a.haikucache.baseline_usd / 2)
    assert emu.bill.total_usd == pytest.approx(realtime.bill.total_usd * 40 / 5 / 2, rel=0.25)
    ids = [r["custom_id"] for r in created_requests(emu)[0]]
    assert len(set(ids)) == 40 and all(CUSTOM_ID.match(i) for i in ids)


def test_identical_jobs_are_merged_and_cached_answers_never_enqueued(
    emu: Emulator, client: Client
) -> None:
    with fast(client) as batcher:
        first = batcher.map([job(i % 5) for i in range(20)])
        assert len(created_requests(emu)[0]) == 5
        assert batcher.stats["deduplicated"] == 15
        # Twins get the same answer; one is the paid "miss", the others are free.
        texts = {a.content[0].text for a in first[:5]}  # type: ignore[union-attr]
        assert [a.content[0].text for a in first[5:10]] == [a.content[0].text for a in first[:5]]  # type: ignore[union-attr]
        assert len(texts) == 5
        assert sum(a.haikucache.cost_usd for a in first[5:]) == 0  # type: ignore[union-attr]
        again = batcher.map([job(i) for i in range(5)])
    assert emu.requests["batches.create"] == 1  # answered by the response cache
    assert all(a.haikucache.cache == "hit" for a in again)  # type: ignore[union-attr]


def test_the_ledger_records_the_batch_discount(emu: Emulator) -> None:
    ledger = MemoryLedger()
    with make_client(emu, ledger=ledger) as client, fast(client) as batcher:
        batcher.map([job(i) for i in range(6)])
    assert len(ledger.entries) == 6 and all(e.batch for e in ledger.entries)
    billed = sum(e.cost.billed_usd for e in ledger.entries)
    assert billed == pytest.approx(emu.bill.total_usd, rel=1e-9)
    assert sum(e.cost.savings["batch_discount"] for e in ledger.entries) == pytest.approx(billed)


# --------------------------------------------------------------------------- flushing


def test_flush_by_count(emu: Emulator, client: Client) -> None:
    with fast(client, max_batch_size=10, max_wait=3600) as batcher:
        futures = [batcher.submit(job(i)) for i in range(25)]
        # Two full batches go without waiting; the last 5 wait for the flush.
        deadline = time.monotonic() + 10
        while emu.requests["batches.create"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [len(r) for r in created_requests(emu)] == [10, 10]
        batcher.flush()
        assert [len(r) for r in created_requests(emu)] == [10, 10, 5]
        assert all(f.result(10) for f in futures)


def test_flush_by_bytes_measured_on_the_serialized_body(emu: Emulator, client: Client) -> None:
    requests = [job(i, system="x" * 2000) for i in range(12)]
    with fast(client, max_bytes=10_000, max_wait=3600, cache_prefixes=False) as batcher:
        batcher.map(requests)
    batches = created_requests(emu)
    assert len(batches) >= 3 and sum(len(b) for b in batches) == 12
    sent = [r.body for r in emu.log if r.endpoint == "batches.create"]
    import json

    assert all(len(json.dumps(b, separators=(",", ":")).encode()) <= 10_000 for b in sent)


def test_flush_by_age_on_the_injected_clock() -> None:
    clock = ManualClock()
    emu = Emulator(clock=clock, batch_processing_seconds=60)
    with make_client(emu, clock=clock) as client:
        batcher = Batcher(client, journal="memory", clock=clock, max_wait=30, poll_interval=10)
        future = batcher.submit(job(1))
        time.sleep(0.1)
        assert emu.requests["batches.create"] == 0
        clock.advance(31)
        deadline = time.monotonic() + 5
        while emu.requests["batches.create"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emu.requests["batches.create"] == 1
        drive(clock, [future], step=5)
        assert future.result().haikucache.batch  # type: ignore[union-attr]
        # Polls back off: far fewer polls than clock steps of 5 s over 60 s would allow.
        batcher.close()
    assert emu.requests["batches.retrieve"] <= 10


# --------------------------------------------------------------------------- bad input


def test_a_job_the_api_would_reject_fails_only_its_own_future(
    emu: Emulator, client: Client
) -> None:
    bad = {"model": MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}
    streaming = {**job(2), "stream": True}
    with fast(client) as batcher:
        out = batcher.map([job(1), bad, streaming, job(3)], return_exceptions=True)
        assert isinstance(out[0], Message) and isinstance(out[3], Message)
        assert isinstance(out[1], RequestValidationError) and out[1].param == "max_tokens"
        assert isinstance(out[2], RequestValidationError) and out[2].param == "stream"
        with pytest.raises(RequestValidationError):
            batcher.map([job(4), bad])
    assert sum(len(b) for b in created_requests(emu)) == 3


def test_an_errored_result_fails_only_its_job(emu: Emulator, client: Client) -> None:
    emu.inject_batch_errors(rate=1.0, times=1, error_type="invalid_request_error")
    with fast(client) as batcher:
        out = batcher.map([job(i) for i in range(8)], return_exceptions=True)
    errors = [o for o in out if isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], BatchItemErroredError)
    assert errors[0].error_type == "invalid_request_error" and errors[0].batch_id
    assert CUSTOM_ID.match(errors[0].custom_id)
    assert sum(isinstance(o, Message) for o in out) == 7
    assert emu.requests["messages"] == 0  # not retried: the request itself is at fault


def test_a_job_larger_than_a_batch_is_rejected_locally(emu: Emulator, client: Client) -> None:
    with fast(client, max_bytes=4096) as batcher:
        big = batcher.submit(job(1, system="y" * 5000))
        small = batcher.submit(job(2))
        batcher.flush()
        with pytest.raises(RequestValidationError, match="at most 4,096 bytes"):
            big.result(5)
        assert small.result(10).haikucache.batch  # type: ignore[union-attr]


def test_a_vanished_batch_is_reported_not_polled_forever(emu: Emulator, client: Client) -> None:
    emu.inject("status", status=404, endpoint="batches.retrieve", times=None)
    journal = MemoryBatchJournal()
    with fast(client, journal=journal) as batcher:
        future = batcher.submit(job(1))
        batcher.flush()
        with pytest.raises(BatchError, match="no longer exists upstream"):
            future.result(10)
    assert emu.requests["batches.retrieve"] == 1
    (record,) = journal.records()
    assert record.state == "lost"


def test_bad_options_are_configuration_errors(client: Client) -> None:
    from haikucache import ConfigurationError

    with pytest.raises(ConfigurationError):
        Batcher(client, journal="memory", max_batch_size=100_001)
    with pytest.raises(ConfigurationError):
        Batcher(client, journal="memory", max_bytes=300_000_000)
    with pytest.raises(ConfigurationError):
        Batcher(client, journal="memory", on_expired="retry")
    with pytest.raises(ConfigurationError):
        Batcher(client, journal=42)
    batcher = fast(client)
    batcher.close()
    with pytest.raises(UsageError, match="closed"):
        batcher.submit(job(1))


# --------------------------------------------------------------------------- result policy


def test_transient_errors_are_retried_realtime(emu: Emulator, client: Client) -> None:
    failures = emu.inject_batch_errors(rate=0.3, error_type="overloaded_error")
    with fast(client) as batcher:
        out = batcher.map([job(i) for i in range(30)])
    assert failures.hits > 0
    assert emu.requests["messages"] == failures.hits
    realtime = [a for a in out if not a.haikucache.batch]  # type: ignore[union-attr]
    assert len(realtime) == failures.hits
    assert emu.requests["batches.create"] == 1


def test_transient_errors_raise_when_told_to(emu: Emulator, client: Client) -> None:
    emu.inject_batch_errors(rate=1.0, error_type="api_error")
    with fast(client, on_transient="raise") as batcher:
        (out,) = batcher.map([job(1)], return_exceptions=True)
    assert isinstance(out, BatchItemErroredError) and out.error_type == "api_error"


def test_expired_jobs_are_resubmitted_then_sent_realtime() -> None:
    clock = ManualClock()
    # Requests complete spread over the processing time; at 300 h none runs within 24 h.
    emu = Emulator(clock=clock, batch_processing_seconds=300 * 3600)
    with make_client(emu, clock=clock) as client:
        batcher = Batcher(
            client,
            journal="memory",
            clock=clock,
            max_wait=0,
            poll_interval=600,
            max_poll_interval=3600,
        )
        futures = [batcher.submit(job(i)) for i in range(3)]
        batcher.flush()
        drive(clock, futures, step=1800)
        batcher.close()
    assert emu.requests["batches.create"] == 2  # resubmitted once
    assert emu.requests["messages"] == 3  # then realtime
    assert all(not f.result().haikucache.batch for f in futures)  # type: ignore[union-attr]


def test_expired_jobs_raise_when_told_to() -> None:
    from haikucache import BatchItemExpiredError

    clock = ManualClock()
    emu = Emulator(clock=clock, batch_processing_seconds=30 * 3600)
    with make_client(emu, clock=clock) as client:
        batcher = Batcher(
            client,
            journal="memory",
            clock=clock,
            max_wait=0,
            poll_interval=3600,
            on_expired="raise",
        )
        future = batcher.submit(job(1))
        batcher.flush()
        drive(clock, [future], step=3600)
        with pytest.raises(BatchItemExpiredError):
            future.result()
        batcher.close()


def test_deadline_sooner_than_a_batch_goes_realtime(emu: Emulator, client: Client) -> None:
    with fast(client, expected_turnaround=3600) as batcher:
        now = batcher.clock.now()
        urgent = batcher.submit(job(1), deadline=now + 60)
        patient = batcher.submit(job(2), deadline=now + 86_400)
        assert not urgent.result(10).haikucache.batch  # type: ignore[union-attr]
        batcher.flush()
        assert patient.result(10).haikucache.batch  # type: ignore[union-attr]
    assert emu.requests["messages"] == 1 and emu.requests["batches.create"] == 1


# --------------------------------------------------------------------------- cancellation


def test_cancelling_every_future_cancels_the_upstream_batch() -> None:
    clock = ManualClock()
    emu = Emulator(clock=clock, batch_processing_seconds=3600)
    with make_client(emu, clock=clock) as client:
        batcher = Batcher(client, journal="memory", clock=clock, max_wait=0, poll_interval=60)
        a, b = batcher.submit(job(1)), batcher.submit(job(2))
        batcher.flush()
        assert a.cancel()
        time.sleep(0.1)
        assert emu.requests["batches.cancel"] == 0  # b still waits
        assert b.cancel()
        deadline = time.monotonic() + 5
        while emu.requests["batches.cancel"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emu.requests["batches.cancel"] == 1
        batcher.close()
    with pytest.raises(CancelledError):
        a.result()


def test_close_with_cancel_resolves_futures_with_a_cancellation_error() -> None:
    clock = ManualClock()
    emu = Emulator(clock=clock, batch_processing_seconds=3600)
    with make_client(emu, clock=clock) as client:
        batcher = Batcher(client, journal="memory", clock=clock, max_wait=0, poll_interval=60)
        running = [batcher.submit(job(i)) for i in range(4)]
        batcher.flush()
        clock.advance(1800)  # about half of the jobs have run
        queued = Batcher(client, journal="memory", clock=clock, max_wait=3600)
        waiting = queued.submit(job(99))
        queued.close(cancel=True)
        assert waiting.cancelled()
        batcher.close(cancel=True)
    outcomes = [f.exception() for f in running]
    assert emu.requests["batches.cancel"] == 1
    assert any(isinstance(e, BatchItemCanceledError) for e in outcomes)
    assert any(e is None for e in outcomes)  # what ran before the cancel is delivered


# --------------------------------------------------------------------------- prompt caching


def long_policy(emu: Emulator) -> str:
    sentence = "Agents must confirm the booking reference before changing any reservation. "
    text = sentence * 10
    while emu.count_tokens_of(text) < 5000:
        text += sentence * 10
    return text


def test_jobs_sharing_a_prefix_read_it_from_the_prompt_cache(emu: Emulator, client: Client) -> None:
    policy = long_policy(emu)
    requests = [job(i, system=policy) for i in range(10)] + [job(100)]
    with fast(client) as batcher:
        batcher.map(requests)
    (sent,) = created_requests(emu)
    marked = [r for r in sent if isinstance(r["params"]["system"], list)]
    assert len(marked) == 10  # the lone short job gets no marker
    assert all(
        r["params"]["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        for r in marked
    )
    reads = sum(e.usage.get("cache_read_input_tokens", 0) for e in emu.bill.entries)
    inputs = sum(
        e.usage.get("cache_read_input_tokens", 0)
        + e.usage.get("input_tokens", 0)
        + e.usage.get("cache_creation_input_tokens", 0)
        for e in emu.bill.entries
    )
    assert reads / inputs > 0.8


def test_warm_up_call_writes_the_prefix_before_the_batch(emu: Emulator, client: Client) -> None:
    policy = long_policy(emu)
    with fast(client, warm_cache=True) as batcher:
        out = batcher.map([job(i, system=policy) for i in range(6)])
    assert emu.requests["messages"] == 1
    assert sum(not a.haikucache.batch for a in out) == 1  # type: ignore[union-attr]
    batch_entries = [e for e in emu.bill.entries if e.batch]
    assert len(batch_entries) == 5
    assert all(e.usage["cache_read_input_tokens"] > 4096 for e in batch_entries)


# --------------------------------------------------------------------------- journal


def test_the_journal_holds_the_batch_before_submit_returns(
    emu: Emulator, client: Client, tmp_path: Path
) -> None:
    journal = DiskBatchJournal(tmp_path / "j")
    with fast(client, journal=journal, max_wait=3600, poll_interval=3600) as batcher:
        futures = [batcher.submit(job(i)) for i in range(3)]
        batcher.flush()
        (record,) = journal.records()
        assert record.state == "submitted" and record.batch_id and record.jobs == 3
        rows = journal.jobs(record.token)
        assert {r.key for r in rows} == {
            client.messages._context.prepare(job(i), CallOptions(), None).key for i in range(3)
        }
        assert all(r.custom_id.startswith(record.token + "-") for r in rows)
        assert (tmp_path / "j").stat().st_mode & 0o777 == 0o700
        batcher.close(wait=False)
    assert all(isinstance(f.exception(), BatchError) for f in futures)
    assert journal.records()[0].is_open  # resume() can still collect it


def test_a_post_without_an_answer_is_found_upstream_not_sent_twice(
    client: Client, emu: Emulator
) -> None:
    emu.inject("drop", endpoint="batches.create")  # the first POST gets no answer
    with fast(client) as batcher:
        out = batcher.map([job(i) for i in range(3)])
    assert len(out) == 3
    assert emu.batch_count == 1  # the drop happened before creation: sent again, once


def test_resume_adopts_a_batch_whose_post_answer_was_lost(
    emu: Emulator, client: Client, tmp_path: Path
) -> None:
    from haikucache._batch_journal import JournalRecord, encode_jobs, job_row

    journal = DiskBatchJournal(tmp_path / "j")
    calls = [client.messages._context.prepare(job(i), CallOptions(), None) for i in range(3)]
    import json as _json

    token = "hcdeadbeef0001"
    rows = [
        job_row(f"{token}-{i}", c.key, c.namespace, c.model, _json.dumps(c.body), None, (), False)
        for i, c in enumerate(calls)
    ]
    record = JournalRecord(
        token, "submitting", client.base_url, 3, time.time(), pid=1, host="elsewhere"
    )
    journal.begin(record, encode_jobs(rows))
    # The POST did reach the API (its answer was lost in the crash).
    client.messages.batches.create(
        requests=[{"custom_id": f"{token}-{i}", "params": c.body} for i, c in enumerate(calls)]
    )
    time.sleep(0.3)
    with fast(client, journal=journal) as batcher:
        report = batcher.resume()
    assert emu.batch_count == 1
    assert report.delivered == 3 and report.failed == 0
    assert journal.get(token).state == "ended"  # type: ignore[union-attr]
    for c in calls:
        assert client.engine.lookup(c) is not None


def test_resume_sends_a_batch_that_never_reached_the_api_exactly_once(
    emu: Emulator, client: Client
) -> None:
    from haikucache._batch_journal import JournalRecord, encode_jobs, job_row

    journal = MemoryBatchJournal()
    c = client.messages._context.prepare(job(7), CallOptions(), None)
    import json as _json

    row = job_row(
        "hcfeed00000001-0", c.key, c.namespace, c.model, _json.dumps(c.body), 60.0, ("t",), False
    )
    journal.begin(
        JournalRecord(
            "hcfeed00000001", "submitting", client.base_url, 1, time.time(), pid=1, host="elsewhere"
        ),
        encode_jobs([row]),
    )
    with fast(client, journal=journal) as batcher:
        report = batcher.resume(progress=True)
        report2 = batcher.resume()
    assert emu.batch_count == 1 and report.delivered == 1
    assert report2.batches == []


def test_resume_reports_a_vanished_batch(client: Client, emu: Emulator) -> None:
    from haikucache._batch_journal import JournalRecord, encode_jobs

    journal = MemoryBatchJournal()
    journal.begin(
        JournalRecord(
            "hcgone0000001",
            "submitted",
            client.base_url,
            2,
            time.time(),
            batch_id="msgbatch_01doesnotexist",
            pid=1,
            host="elsewhere",
        ),
        encode_jobs([]),
    )
    with fast(client, journal=journal) as batcher:
        report = batcher.resume()
    assert report.batches[0].state == "lost"
    assert emu.requests["batches.retrieve"] == 1


def test_resume_leaves_a_live_owner_and_another_upstream_alone(client: Client) -> None:
    import os

    from haikucache._batch_journal import JournalRecord, encode_jobs

    journal = MemoryBatchJournal()
    journal.begin(
        JournalRecord(
            "hcmine",
            "submitted",
            client.base_url,
            1,
            time.time(),
            batch_id="msgbatch_x",
            pid=os.getppid(),
        ),
        encode_jobs([]),
    )
    journal.begin(
        JournalRecord(
            "hcother",
            "submitted",
            "https://api.example",
            1,
            time.time(),
            batch_id="msgbatch_y",
            pid=1,
            host="elsewhere",
        ),
        encode_jobs([]),
    )
    with fast(client, journal=journal) as batcher:
        report = batcher.resume()
    assert report.batches == []
    assert {t for t, _ in report.skipped} == {"hcmine", "hcother"}


# --------------------------------------------------------------------------- async & progress


async def test_async_batcher(emu: Emulator, client: Client) -> None:
    async with AsyncBatcher(client, journal="memory", poll_interval=0.05, max_wait=0.05) as batcher:
        one = await batcher.submit(job(1))
        many = await batcher.amap([job(i) for i in range(2, 6)])
        assert one.haikucache.batch  # type: ignore[union-attr]
        assert [m.haikucache.batch for m in many] == [True] * 4  # type: ignore[union-attr]
        task = asyncio.ensure_future(batcher.submit(job(50), CallOptions(no_cache=True)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_async_batcher_wants_a_sync_client(emu: Emulator) -> None:
    from haikucache import AsyncClient, ConfigurationError

    aclient = AsyncClient(api_key="k", base_url="http://x", transport=emu.transport())
    with pytest.raises(ConfigurationError, match="sync"):
        AsyncBatcher(aclient, journal="memory")


def test_progress_bar_plain_and_in_map(
    emu: Emulator, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    bar = BatchProgress(4, file=out)
    bar._rich = None  # the plain fallback, as without rich
    bar._last = -1
    for _ in range(4):
        bar.advance()
    bar.close()
    assert "4/4 (100%)" in out.getvalue()
    with fast(client) as batcher:
        answers = batcher.map([job(i) for i in range(3)], progress=True)
    assert len(answers) == 3


# --------------------------------------------------------------------------- hostile jobs (issue 12)


def tool_turn(tool_input: dict[str, Any]) -> dict[str, Any]:
    """A conversation whose assistant turn called a tool with ``tool_input``."""
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "Look it up."},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": tool_input}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "42"}],
            },
        ],
    }


HOSTILE = {
    "nan in a tool_use input": tool_turn({"x": float("nan")}),
    "infinity in metadata": {**job(90), "metadata": {"user_id": "u", "score": float("inf")}},
    "lone surrogate in a prompt": {
        **job(91),
        "messages": [{"role": "user", "content": "bad \ud800 text"}],
    },
    "lone surrogate in a tool input": tool_turn({"q": "\udc00"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_job_fails_its_own_future_and_nothing_else(
    emu: Emulator, client: Client, case: str
) -> None:
    journal = MemoryBatchJournal()
    with fast(client, journal=journal) as batcher:
        healthy = [batcher.submit(job(i)) for i in range(5)]
        hostile = batcher.submit(HOSTILE[case])  # a future, never an exception
        batcher.flush()
        with pytest.raises(RequestValidationError):
            hostile.result(10)
        answers = [f.result(10) for f in healthy]
    assert all(a.haikucache.batch for a in answers)  # type: ignore[union-attr]
    (sent,) = created_requests(emu)
    assert len(sent) == 5
    assert [r.state for r in journal.records()] == ["ended"]


async def test_a_hostile_job_fails_alone_in_the_async_batcher(
    emu: Emulator, client: Client
) -> None:
    async with AsyncBatcher(client, journal="memory", poll_interval=0.05, max_wait=0.05) as batcher:
        with pytest.raises(RequestValidationError):
            await batcher.submit(HOSTILE["lone surrogate in a prompt"])
        out = await batcher.amap(
            [job(1), HOSTILE["nan in a tool_use input"], job(2)], return_exceptions=True
        )
    assert isinstance(out[0], Message) and isinstance(out[2], Message)
    assert isinstance(out[1], RequestValidationError)
    assert emu.batch_count == 1


def test_a_job_changed_after_submit_is_sent_as_submitted(emu: Emulator, client: Client) -> None:
    # What the batcher queued is what it validated, keyed, journaled and sends: a caller that
    # reuses (or breaks) its objects while the job waits changes nothing.
    tool_input: dict[str, Any] = {"x": 1}
    prompt = {"role": "user", "content": "Review 7: the flight was fine."}
    changing = {**job(7), "messages": [prompt]}
    journal = MemoryBatchJournal()
    with fast(client, journal=journal, max_wait=3600) as batcher:
        healthy = [batcher.submit(job(i)) for i in range(5)]
        broken = batcher.submit(tool_turn(tool_input))
        reused = batcher.submit(changing)
        tool_input["x"] = float("nan")
        prompt["content"] = "bad \ud800 text"
        batcher.flush()
        answers = [f.result(10) for f in (*healthy, broken, reused)]
    assert all(a.haikucache.batch for a in answers)  # type: ignore[union-attr]
    (sent,) = created_requests(emu)
    params = [r["params"] for r in sent]
    assert tool_turn({"x": 1}) in params and job(7) in params
    with make_client(Emulator()) as direct:
        assert answers[6].content[0].text == direct.messages.create(**job(7)).content[0].text
    assert [r.state for r in journal.records()] == ["ended"]
