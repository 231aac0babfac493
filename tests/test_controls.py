"""The production controls as a stage of the pipeline (issue 15): budgets, the rate limiter,
the circuit breaker and fallback models, at the doors, against the emulator.

The controls themselves are tested on their own in ``test_budget.py``, ``test_limits.py`` and
``test_breaker.py``; here, that every call that goes upstream passes through them, and that
a refusal happens before anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from _emulated import BASE_URL, HAIKU, SONNET, ask, emulated_client
from haikucache import (
    AsyncClient,
    Budget,
    BudgetExceededError,
    Budgets,
    CircuitBreaker,
    CircuitOpenError,
    Client,
    Controls,
    Engine,
    MemoryLedger,
    OverloadedError,
    RateLimitedError,
    RateLimiter,
    RateLimits,
)
from haikucache.testing import Emulator


def client(emu: Emulator, controls: Controls, **engine: Any) -> Client:
    return emulated_client(emu, controls=controls, **engine)


def spent(c: Client) -> float:
    ledger = c.engine.ledger
    assert isinstance(ledger, MemoryLedger)
    return sum(e.cost.billed_usd for e in ledger.entries)


# --------------------------------------------------------------------------- budgets


def test_a_hard_budget_refuses_before_sending_and_spend_stays_under_the_cap() -> None:
    emu = Emulator()
    cap = 0.012  # room for two worst cases (1,024 output tokens each) of these short calls
    with client(emu, Controls(budgets=Budgets([Budget(cap)]))) as c:
        answered = 0
        refused: BudgetExceededError | None = None
        for i in range(50):
            try:
                c.messages.create(**ask(f"Question {i}?"))
            except BudgetExceededError as exc:
                refused = exc
                break
            answered += 1
        sent = emu.requests["messages"]
        assert answered == sent >= 2
        assert spent(c) <= cap
        assert refused is not None and refused.cap_usd == cap and refused.requested_usd > 0
        # A hit costs nothing and needs no budget.
        assert c.messages.create(**ask("Question 0?")).haikucache.cache == "hit"  # type: ignore[union-attr]
        assert emu.requests["messages"] == sent


def test_a_soft_budget_warns_and_lets_calls_through(caplog: pytest.LogCaptureFixture) -> None:
    emu = Emulator()
    events: list[Any] = []
    budgets = Budgets([Budget(0.001, hard=False)], on_exceeded=events.append)
    with client(emu, Controls(budgets=budgets)) as c, caplog.at_level(logging.WARNING):
        for i in range(3):
            c.messages.create(**ask(f"Question {i}?"))
    assert emu.requests["messages"] == 3
    assert events, "the callback heard of the crossing"
    assert "budget" in caplog.text.lower()


def test_a_streamed_call_is_budgeted_and_settled_with_its_real_cost() -> None:
    emu = Emulator()
    budgets = Budgets([Budget(1.0)])
    with client(emu, Controls(budgets=budgets)) as c:
        with c.messages.stream(**ask("Stream this?")) as stream:
            final = stream.get_final_message()
        (status,) = budgets.status()
        assert status.reserved_usd == 0
        assert status.spent_usd == pytest.approx(final.haikucache.cost_usd)  # type: ignore[union-attr]
    with client(emu, Controls(budgets=Budgets([Budget(0.0)]))) as c:
        before = emu.requests["messages"]
        with pytest.raises(BudgetExceededError):
            c.messages.stream(**ask("Stream another?")).__enter__()
        assert emu.requests["messages"] == before


def test_the_async_door_refuses_over_budget_too() -> None:
    emu = Emulator()

    async def run() -> int:
        async with AsyncClient(
            api_key="sk-test",
            base_url=BASE_URL,
            transport=emu.transport(),
            engine=Engine(ledger=MemoryLedger(), controls=Controls(budgets=Budgets([Budget(0.0)]))),
            max_retries=0,
        ) as c:
            with pytest.raises(BudgetExceededError):
                await c.messages.create(**ask("Async?"))
        return int(emu.requests["messages"])

    assert asyncio.run(run()) == 0


# --------------------------------------------------------------------------- rate limits


def test_the_limiter_refuses_over_rpm_before_sending() -> None:
    emu = Emulator()
    limiter = RateLimiter({HAIKU: RateLimits(rpm=2)})
    with client(emu, Controls(limiter=limiter, wait=0)) as c:
        c.messages.create(**ask("One?"))
        c.messages.create(**ask("Two?"))
        with pytest.raises(RateLimitedError) as refused:
            c.messages.create(**ask("Three?"))
    assert refused.value.limit == "requests"
    assert emu.requests["messages"] == 2


def long_system() -> str:
    # About 6,000 tokens: above Haiku 4.5's 4,096-token minimum, so the planner marks it.
    return " ".join(f"Rule {i}: answer politely and cite the fare table." for i in range(600))


@pytest.mark.parametrize("cache_aware", [True, False])
def test_cache_reads_do_not_count_toward_itpm_on_haiku(cache_aware: bool) -> None:
    # ITPM room for one write of the long prefix and a little: a naive limiter counts the
    # prefix again on every call; a cache-aware one sees the repeats read it from cache.
    emu = Emulator()
    limiter = RateLimiter({HAIKU: RateLimits(itpm=9_000)}, cache_aware=cache_aware)
    system = long_system()
    with client(emu, Controls(limiter=limiter, wait=0)) as c:
        first = c.messages.create(**ask("Question 0?", system=system))
        assert first.usage.cache_creation_input_tokens > 4_096
        admitted = 1
        try:
            for i in range(1, 6):
                reply = c.messages.create(**ask(f"Question {i}?", system=system))
                assert reply.usage.cache_read_input_tokens > 4_096
                admitted += 1
        except RateLimitedError:
            pass
    assert admitted == (6 if cache_aware else 1)


# --------------------------------------------------------------------------- breaker


def test_an_open_circuit_fails_fast_without_sending() -> None:
    emu = Emulator()
    emu.overload(1.0)
    breaker = CircuitBreaker(failure_threshold=2, cooldown=60)
    with client(emu, Controls(breaker=breaker)) as c:
        for _ in range(2):
            with pytest.raises(OverloadedError):
                c.messages.create(**ask("Anyone there?"))
        with pytest.raises(CircuitOpenError):
            c.messages.create(**ask("Anyone there?"))
    assert emu.requests["messages"] == 2


def test_a_4xx_never_opens_the_circuit() -> None:
    emu = Emulator()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    with client(emu, Controls(breaker=breaker)) as c:
        emu.inject("status", status=400, times=3)
        for _ in range(3):
            with pytest.raises(Exception) as err:
                c.messages.create(**ask("Bad?"))
            assert getattr(err.value, "status_code", None) == 400
        assert c.messages.create(**ask("Fine?")).stop_reason == "end_turn"


# --------------------------------------------------------------------------- fallback


def test_an_overloaded_model_falls_back_and_the_answer_is_the_fallbacks() -> None:
    emu = Emulator()
    emu.inject("overloaded", times=1)  # the primary's one attempt
    with client(emu, Controls(fallback=(SONNET,))) as c:
        message = c.messages.create(**ask("Where is my bag?"))
        assert message.model.startswith(SONNET)
        info = message.haikucache
        assert info is not None and info.model.startswith(SONNET) and info.cache == "miss"
        # Cached under the model that gave it: the same request to that model is a hit,
        # and the primary, healthy again, answers its own request.
        assert c.messages.create(**ask("Where is my bag?", model=SONNET)).haikucache.cache == "hit"  # type: ignore[union-attr]
        again = c.messages.create(**ask("Where is my bag?"))
        assert again.model.startswith(HAIKU) and again.haikucache.cache == "miss"  # type: ignore[union-attr]
    assert emu.requests["messages"] == 3


def test_a_4xx_never_falls_back() -> None:
    emu = Emulator()
    emu.inject("status", status=400, times=1)
    with client(emu, Controls(fallback=(SONNET,))) as c, pytest.raises(Exception) as err:
        c.messages.create(**ask("Bad?"))
    assert getattr(err.value, "status_code", None) == 400
    assert emu.requests["messages"] == 1


def test_an_open_circuit_goes_straight_to_the_fallback() -> None:
    emu = Emulator()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    emu.inject("overloaded", times=1)
    with client(emu, Controls(breaker=breaker, fallback=(SONNET,))) as c:
        assert c.messages.create(**ask("One?")).model.startswith(SONNET)  # 529, then fallback
        sent = emu.requests["messages"]
        assert c.messages.create(**ask("Two?")).model.startswith(SONNET)  # circuit open
        assert emu.requests["messages"] == sent + 1  # the primary was not tried


# --------------------------------------------------------------------------- batches


def test_batch_jobs_reserve_their_worst_case_at_the_batch_price() -> None:
    from haikucache import Batcher, MemoryBatchJournal

    emu = Emulator(batch_processing_seconds=0.05)
    # Room for a few worst cases at half price (1,024 output tokens each: ~$0.0026).
    budgets = Budgets([Budget(0.012)])
    with (
        client(emu, Controls(budgets=budgets)) as c,
        Batcher(
            c,
            journal=MemoryBatchJournal(),
            max_wait=0.05,
            poll_interval=0.02,
            max_poll_interval=0.05,
        ) as batcher,
    ):
        results = batcher.map(
            [ask(f"Batch question {i}?") for i in range(10)], return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert refused and answered and len(refused) + len(answered) == 10
    assert all(a.haikucache.batch for a in answered)  # type: ignore[union-attr]
    (status,) = budgets.status()
    assert status.reserved_usd == 0  # every reservation settled or freed
    assert status.spent_usd == pytest.approx(sum(a.haikucache.cost_usd for a in answered))  # type: ignore[union-attr]
    assert status.spent_usd <= 0.012
    sent = sum(len(r.body["requests"]) for r in emu.log if r.endpoint == "batches.create")
    assert sent == len(answered)


# --------------------------------------------------------------------------- other doors


@pytest.mark.parametrize("hook", ["middleware", "transport"])
def test_the_sdk_door_refuses_over_budget_before_sending(hook: str) -> None:
    import anthropic

    import haikucache.anthropic as hca

    emu = Emulator()
    raw = anthropic.Anthropic(
        api_key="sk-test",
        base_url=BASE_URL,
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
        max_retries=2,
    )
    engine = Engine(ledger=MemoryLedger(), controls=Controls(budgets=Budgets([Budget(0.0)])))
    sdk = hca.wrap(raw, engine=engine, hook=hook)  # type: ignore[arg-type]
    expected: type[BaseException] = (
        BudgetExceededError if hook == "middleware" else anthropic.APIStatusError
    )
    with pytest.raises(expected) as refused:
        sdk.messages.create(**ask("Over budget?"))
    if hook == "transport":  # the SDK's own error for a 402, not retried
        assert refused.value.status_code == 402  # type: ignore[attr-defined]
        assert "budget" in str(refused.value)
    assert emu.requests["messages"] == 0
    sdk.close()


def test_langchain_raises_the_refusal_itself() -> None:
    from langchain_anthropic import ChatAnthropic

    from langchain_haikucache import wrap

    emu = Emulator()
    model = wrap(
        ChatAnthropic(model=HAIKU, api_key="sk-test", base_url=BASE_URL, max_tokens=256),
        engine=Engine(ledger=MemoryLedger(), controls=Controls(budgets=Budgets([Budget(0.0)]))),
        upstream_transport=emu.httpx2_transport(),
    )
    with pytest.raises(BudgetExceededError):
        model.invoke("Over budget?")
    with pytest.raises(BudgetExceededError):
        list(model.stream("Over budget, streamed?"))
    assert emu.requests["messages"] == 0


@pytest.mark.parametrize("fault", ["overloaded", "stream_error"])
def test_a_stream_that_fails_frees_its_reservation_and_counts_for_the_breaker(fault: str) -> None:
    emu = Emulator()
    emu.inject(fault, times=1)
    budgets = Budgets([Budget(1.0)])
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    with client(emu, Controls(budgets=budgets, breaker=breaker)) as c:
        with (
            pytest.raises(Exception) as failed,
            c.messages.stream(**ask("Stream, then break?")) as stream,
        ):
            stream.get_final_message()
        assert not isinstance(failed.value, CircuitOpenError)
        (status,) = budgets.status()
        assert status.reserved_usd == 0 and status.spent_usd == 0
        with pytest.raises(CircuitOpenError):  # the failure opened the circuit
            c.messages.create(**ask("Next?"))


def test_the_batch_endpoints_have_their_own_rpm_and_queue() -> None:
    from haikucache import ManualClock
    from haikucache._limits import BatchLimits

    clock = ManualClock()
    emu = Emulator(clock=clock, batch_processing_seconds=10)
    limiter = RateLimiter(batch=BatchLimits(rpm=3, queue=5), clock=clock)
    with client(emu, Controls(limiter=limiter, wait=0)) as c:
        batches = c.messages.batches
        jobs = [{"custom_id": f"j{i}", "params": ask(f"Q{i}?")} for i in range(4)]
        first = batches.create(requests=jobs)
        with pytest.raises(RateLimitedError) as full:  # 4 + 4 > a queue of 5
            batches.create(requests=jobs)
        assert full.value.limit == "batch_queue"
        assert emu.batch_count == 1
        clock.advance(60)  # the batch ends; a minute of batch RPM refills
        assert batches.retrieve(first.id).processing_status == "ended"  # frees its places
        batches.create(requests=jobs)  # fits again
        batches.list()
        with pytest.raises(RateLimitedError) as busy:  # a 4th batch call within the minute
            batches.retrieve(first.id)
        assert busy.value.limit == "batch_requests"
    assert emu.batch_count == 2


def test_an_upstream_fallback_takes_over_with_its_own_key_and_model() -> None:
    from haikucache import Upstream

    primary = Emulator(seed=1)
    backup = Emulator(seed=2, api_keys=["sk-backup"])
    primary.overload(1.0)
    target = Upstream(
        "http://backup.test", api_key="sk-backup", model=SONNET, transport=backup.transport()
    )
    with client(primary, Controls(fallback=(target,))) as c:
        message = c.messages.create(**ask("Where is my bag?"))
        assert message.model.startswith(SONNET) and message.haikucache.cache == "miss"  # type: ignore[union-attr]
        assert backup.requests["messages"] == 1
        assert backup.log[-1].headers["x-api-key"] == "sk-backup"  # its own key, not ours
        assert "sk-backup" not in repr(target)
        # Cached for the caller under the model that answered.
        assert c.messages.create(**ask("Where is my bag?", model=SONNET)).haikucache.cache == "hit"  # type: ignore[union-attr]


def test_an_async_client_reaches_an_upstream_fallback_too() -> None:
    from haikucache import Upstream

    primary, backup = Emulator(), Emulator()
    primary.overload(1.0)
    target = Upstream("http://backup.test", transport=backup.transport())

    async def run() -> str:
        async with AsyncClient(
            api_key="sk-test",
            base_url=BASE_URL,
            transport=primary.transport(),
            engine=Engine(ledger=MemoryLedger(), controls=Controls(fallback=(target,))),
            max_retries=0,
        ) as c:
            return (await c.messages.create(**ask("Async backup?"))).model

    assert asyncio.run(run()).startswith(HAIKU)  # the same model, elsewhere
    assert backup.requests["messages"] == 1 and backup.log[-1].headers["x-api-key"] == "sk-test"
