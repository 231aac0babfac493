"""Budgets: worst-case costs, hard and soft caps, periods, reservations that lapse; in memory
and in a real Redis hammered by real processes (spend never exceeds the cap)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from haikucache._budget import (
    Budget,
    BudgetBackend,
    BudgetEvent,
    Budgets,
    MemoryBudgetBackend,
    RedisBudgetBackend,
    request_worst_case_usd,
    worst_case_for_plan,
    worst_case_usd,
)
from haikucache._exceptions import (
    BudgetExceededError,
    ConfigurationError,
    ControlStoreError,
    UsageError,
)
from haikucache._ledger import price_usage
from haikucache._planner import Planner
from haikucache.testing import ManualClock

HAIKU = "claude-haiku-4-5"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()  # 2025-11-20T10:00:00Z


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[BudgetBackend]:
    if request.param == "memory":
        yield MemoryBudgetBackend()
        return
    url = request.getfixturevalue("redis_url")
    redis_backend = RedisBudgetBackend(url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield redis_backend
    redis_backend.close()


# --------------------------------------------------------------------------- worst case


def test_worst_case_prices_every_token_at_its_dearest() -> None:
    # Haiku 4.5: $1 / $5 per million; 5 m writes 1.25×, 1 h writes 2×.
    assert worst_case_usd(HAIKU, input_tokens=1_000, max_tokens=1_000) == pytest.approx(0.006)
    assert worst_case_usd(
        HAIKU,
        input_tokens=10_000,
        max_tokens=0,
        cache_write_1h_tokens=4_000,
        cache_write_5m_tokens=2_000,
    ) == pytest.approx((4_000 + 4_000 * 2 + 2_000 * 1.25) / 1e6)
    assert worst_case_usd(HAIKU, input_tokens=1_000, max_tokens=1_000, batch=True) == pytest.approx(
        0.003
    )
    # The same prices the ledger bills with.
    usage = {"input_tokens": 1_000, "output_tokens": 1_000}
    assert worst_case_usd(HAIKU, input_tokens=1_000, max_tokens=1_000) == pytest.approx(
        price_usage(HAIKU, usage).billed_usd
    )


def test_an_unknown_model_is_priced_as_the_dearest() -> None:
    assert worst_case_usd("my-gateway-model", input_tokens=1_000, max_tokens=1_000) == (
        pytest.approx(worst_case_usd("claude-opus-4-1", input_tokens=1_000, max_tokens=1_000))
    )


def test_worst_case_of_a_request_body() -> None:
    body: dict[str, Any] = {
        "model": HAIKU,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert request_worst_case_usd(body, input_tokens=1_000) == pytest.approx(0.0015)
    body["system"] = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]
    assert request_worst_case_usd(body, input_tokens=1_000) == pytest.approx(0.00175)
    body["system"][0]["cache_control"]["ttl"] = "1h"
    assert request_worst_case_usd(body, input_tokens=1_000) == pytest.approx(0.0025)
    with pytest.raises(UsageError):
        request_worst_case_usd({"model": HAIKU}, input_tokens=1)


def test_worst_case_of_a_plan() -> None:
    system = "The fare rules say a booking may change before departure. " * 900
    body = {
        "model": HAIKU,
        "max_tokens": 500,
        "system": [
            {"type": "text", "text": system, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [{"role": "user", "content": "Can I change my flight?"}],
    }
    plan = Planner("adaptive").plan(body)
    one_hour, tail = plan.breakpoints  # the caller's 1 h marker, then the planner's 5 m one
    assert (one_hour.ttl, tail.ttl) == ("1h", "5m")
    expected = worst_case_usd(
        HAIKU,
        input_tokens=round(plan.estimated_tokens * 1.3),
        max_tokens=500,
        cache_write_1h_tokens=round(one_hour.prefix_tokens * 1.3),
        cache_write_5m_tokens=round((tail.prefix_tokens - one_hour.prefix_tokens) * 1.3),
    )
    assert worst_case_for_plan(plan, 500) == pytest.approx(expected, rel=1e-3)
    # It bounds what the call can really cost (the whole prefix written at 2×).
    actual = price_usage(
        HAIKU,
        {
            "input_tokens": plan.estimated_tokens - one_hour.prefix_tokens,
            "cache_creation_input_tokens": one_hour.prefix_tokens,
            "cache_creation": {"ephemeral_1h_input_tokens": one_hour.prefix_tokens},
            "output_tokens": 500,
        },
    ).billed_usd
    assert worst_case_for_plan(plan, 500) > actual


# --------------------------------------------------------------------------- hard caps


def test_hard_cap_refuses_before_anything_is_spent(
    backend: BudgetBackend, clock: ManualClock
) -> None:
    budgets = Budgets([Budget(0.010)], backend=backend, clock=clock)
    first = budgets.reserve("ns", 0.004)
    budgets.reserve("ns", 0.004)
    with pytest.raises(BudgetExceededError) as info:
        budgets.reserve("ns", 0.004)
    err = info.value
    assert (err.budget, err.period, err.namespace) == ("global/total", "total", "ns")
    assert err.spent_usd == 0
    assert err.reserved_usd == pytest.approx(0.008)
    assert err.requested_usd == pytest.approx(0.004)
    assert err.cap_usd == pytest.approx(0.010)
    budgets.settle(first, 0.001)
    (status,) = budgets.status()
    assert (status.spent_usd, status.reserved_usd) == (pytest.approx(0.001), pytest.approx(0.004))
    assert status.remaining_usd == pytest.approx(0.005)
    budgets.reserve("ns", 0.005)  # exactly up to the cap is allowed
    with pytest.raises(BudgetExceededError):
        budgets.reserve("ns", 1e-9)


def test_release_and_double_settle(backend: BudgetBackend, clock: ManualClock) -> None:
    budgets = Budgets([Budget(0.01)], backend=backend, clock=clock)
    reservation = budgets.reserve("ns", 0.01)
    budgets.release(reservation)
    budgets.settle(reservation, 0.01)  # already released: a no-op
    (status,) = budgets.status()
    assert (status.spent_usd, status.reserved_usd) == (0, 0)
    again = budgets.reserve("ns", 0.01)
    budgets.settle(again, 0.002)
    budgets.settle(again, 0.002)
    assert budgets.status()[0].spent_usd == pytest.approx(0.002)


def test_namespace_budgets(backend: BudgetBackend, clock: ManualClock) -> None:
    budgets = Budgets(
        [
            Budget(1.0, namespace=None),  # global
            Budget(0.3, namespace="*"),  # each namespace
            Budget(0.1, namespace="trial"),  # one namespace
        ],
        backend=backend,
        clock=clock,
    )
    budgets.settle(budgets.reserve("a", 0.3), 0.3)
    with pytest.raises(BudgetExceededError) as info:
        budgets.reserve("a", 0.01)
    assert info.value.budget == "namespace=*/total"
    budgets.settle(budgets.reserve("b", 0.2), 0.2)  # b has its own share
    with pytest.raises(BudgetExceededError) as info:
        budgets.reserve("trial", 0.2)
    assert info.value.budget == "namespace=trial/total"
    statuses = {(s.budget, s.namespace): s.spent_usd for s in budgets.status("a")}
    assert statuses == {
        ("global/total", None): pytest.approx(0.5),
        ("namespace=*/total", "a"): pytest.approx(0.3),
    }
    assert [s.budget for s in budgets.status()] == ["global/total", "namespace=trial/total"]


def test_periods_are_utc_days_and_months(backend: BudgetBackend, clock: ManualClock) -> None:
    budgets = Budgets(
        [Budget(0.01, period="day"), Budget(0.025, period="month")], backend=backend, clock=clock
    )
    budgets.settle(budgets.reserve("ns", 0.01), 0.01)
    with pytest.raises(BudgetExceededError) as info:
        budgets.reserve("ns", 0.001)
    assert info.value.period == "2025-11-20"
    clock.advance(14 * 3600)  # 2025-11-21T00:00Z: a new day, the same month
    budgets.settle(budgets.reserve("ns", 0.01), 0.01)
    day, month = budgets.status()
    assert (day.period_key, day.spent_usd) == ("2025-11-21", pytest.approx(0.01))
    assert (month.period_key, month.spent_usd) == ("2025-11", pytest.approx(0.02))
    clock.advance(86_400)
    with pytest.raises(BudgetExceededError) as info:
        budgets.reserve("ns", 0.01)
    assert info.value.budget == "global/month"
    clock.set(1_764_547_200)  # 2025-12-01T00:00Z
    budgets.reserve("ns", 0.01)


def test_a_reservation_lapses_but_its_spend_still_counts(
    backend: BudgetBackend, clock: ManualClock
) -> None:
    budgets = Budgets([Budget(0.01)], backend=backend, clock=clock, reservation_ttl=60)
    lost = budgets.reserve("ns", 0.01)
    with pytest.raises(BudgetExceededError):
        budgets.reserve("ns", 0.001)
    clock.advance(60)
    assert budgets.status()[0].reserved_usd == 0
    late = budgets.reserve("ns", 0.004)
    budgets.settle(lost, 0.003)  # the call did finish after all: its cost is recorded
    (status,) = budgets.status()
    assert (status.spent_usd, status.reserved_usd) == (pytest.approx(0.003), pytest.approx(0.004))
    budgets.release(late)


def test_soft_budget_warns_once_and_never_refuses(
    backend: BudgetBackend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[BudgetEvent] = []
    budgets = Budgets(
        [Budget(0.01, period="day", hard=False, name="alerts")],
        backend=backend,
        clock=clock,
        on_exceeded=events.append,
    )
    with caplog.at_level(logging.WARNING, logger="haikucache"):
        for _ in range(5):
            budgets.settle(budgets.reserve("ns", 0.004), 0.004)
    assert budgets.status()[0].spent_usd == pytest.approx(0.02)
    assert len(events) == 1
    assert events[0].status.budget == "alerts"
    assert events[0].status.spent_usd + events[0].status.reserved_usd > 0.01
    assert events[0].requested_usd == pytest.approx(0.004)
    assert caplog.text.count("soft budget 'alerts'") == 1
    clock.advance(86_400)  # a new period warns again
    for _ in range(3):
        budgets.settle(budgets.reserve("ns", 0.004), 0.004)
    assert len(events) == 2


def test_a_failing_callback_is_logged_not_raised(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(event: BudgetEvent) -> None:
        raise RuntimeError("callback broke")

    budgets = Budgets([Budget(0.0, hard=False)], clock=clock, on_exceeded=boom)
    with caplog.at_level(logging.ERROR, logger="haikucache"):
        budgets.reserve("ns", 0.001)
    assert "callback failed" in caplog.text


async def test_async_twins(backend: BudgetBackend, clock: ManualClock) -> None:
    budgets = Budgets([Budget(0.01)], backend=backend, clock=clock)
    first = await budgets.areserve("ns", 0.006)
    with pytest.raises(BudgetExceededError):
        await budgets.areserve("ns", 0.006)
    await budgets.asettle(first, 0.002)
    second = await budgets.areserve("ns", 0.006)
    await budgets.arelease(second)
    (status,) = await budgets.astatus()
    assert (status.spent_usd, status.reserved_usd) == (pytest.approx(0.002), 0)
    if isinstance(backend, RedisBudgetBackend):
        await backend.aclose()


def test_bad_arguments(clock: ManualClock) -> None:
    budgets = Budgets([Budget(1.0)], clock=clock)
    with pytest.raises(UsageError):
        budgets.reserve("ns", -1)
    with pytest.raises(UsageError):
        budgets.reserve("ns", float("nan"))
    with pytest.raises(UsageError):
        budgets.settle(budgets.reserve("ns", 0.1), -0.1)
    with pytest.raises(ConfigurationError):
        Budget(-1)
    with pytest.raises(ConfigurationError):
        Budget(1, period="week")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unique"):
        Budgets([Budget(1), Budget(2)])


def test_threads_never_overspend(clock: ManualClock) -> None:
    budgets = Budgets([Budget(0.05)], clock=clock)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        barrier.wait()
        for i in range(200):
            cost = 0.0001 * (1 + (seed * 7 + i) % 5)
            try:
                reservation = budgets.reserve("ns", cost)
            except BudgetExceededError:
                continue
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            budgets.settle(reservation, cost * 0.9)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (status,) = budgets.status()
    assert status.reserved_usd == 0
    assert 0.045 < status.spent_usd <= 0.05


def test_a_dead_redis_fails_closed(clock: ManualClock) -> None:
    from haikucache.testing._redis import free_port

    dead = RedisBudgetBackend(f"redis://:hunter2@127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    budgets = Budgets([Budget(1.0)], backend=dead, clock=clock)
    with pytest.raises(ControlStoreError) as info:
        budgets.reserve("ns", 0.1)
    assert "hunter2" not in str(info.value)
    dead.close()


# --------------------------------------------------------------------------- processes

_HAMMER = textwrap.dedent(
    """
    import json, random, sys, time
    import redis
    from haikucache._budget import Budget, Budgets, RedisBudgetBackend
    from haikucache._exceptions import BudgetExceededError

    url, prefix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    budgets = Budgets([Budget(0.5, period="day"), Budget(0.2, namespace="*")],
                      backend=RedisBudgetBackend(url, prefix=prefix))
    # Every process starts hammering at once: none finds the budget spent before it began.
    gate = redis.Redis.from_url(url)
    gate.set(f"{prefix}ready:{seed}", 1)
    while not gate.exists(f"{prefix}go"):
        time.sleep(0.002)
    admitted = refused = 0
    while refused < 40:
        namespace = f"ns{rng.randrange(4)}"
        worst = rng.uniform(0.0005, 0.004)
        try:
            reservation = budgets.reserve(namespace, worst)
        except BudgetExceededError:
            refused += 1
            continue
        admitted += 1
        if rng.random() < 0.1:
            budgets.release(reservation)  # the call failed
        else:
            budgets.settle(reservation, worst * rng.uniform(0.2, 1.0))
    print(json.dumps({"admitted": admitted}))
    """
)


def test_eight_processes_hammering_one_budget_never_overspend(redis_url: str) -> None:
    import redis

    prefix = f"mp{uuid.uuid4().hex[:8]}:"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, redis_url, prefix, str(seed)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(8)
    ]
    gate = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 120
    while sum(gate.exists(f"{prefix}ready:{seed}") for seed in range(8)) < 8:
        assert time.monotonic() < deadline, "the workers never got ready"
        time.sleep(0.01)
    gate.set(f"{prefix}go", 1)
    gate.close()
    admitted = []
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0
        admitted.append(json.loads(out)["admitted"])
    assert all(a > 0 for a in admitted)
    budgets = Budgets(
        [Budget(0.5, period="day"), Budget(0.2, namespace="*")],
        backend=RedisBudgetBackend(redis_url, prefix=prefix),
    )
    (day,) = budgets.status()
    assert day.reserved_usd == 0
    assert day.spent_usd <= 0.5
    per_namespace = [budgets.status(f"ns{i}")[1] for i in range(4)]
    assert all(s.spent_usd <= 0.2 for s in per_namespace)
    assert sum(s.spent_usd for s in per_namespace) == pytest.approx(day.spent_usd)
    # The cap was used, not just respected: the last refusals were for want of room.
    assert day.spent_usd > 0.5 - 8 * 0.004 or all(s.spent_usd > 0.2 - 0.05 for s in per_namespace)


_CRASH = textwrap.dedent(
    """
    import sys, time
    from haikucache._budget import Budget, Budgets, RedisBudgetBackend

    budgets = Budgets([Budget(0.01)], backend=RedisBudgetBackend(sys.argv[1], prefix=sys.argv[2]),
                      reservation_ttl=float(sys.argv[3]))
    budgets.reserve("ns", 0.01)
    print("reserved", flush=True)
    time.sleep(60)  # killed here, mid-call
    """
)


def test_a_crashed_process_does_not_hold_its_reservation_forever(redis_url: str) -> None:
    prefix = f"cr{uuid.uuid4().hex[:8]}:"
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH, redis_url, prefix, "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reserved"
        child.kill()
        child.wait(10)
        budgets = Budgets([Budget(0.01)], backend=RedisBudgetBackend(redis_url, prefix=prefix))
        with pytest.raises(BudgetExceededError):
            budgets.reserve("ns", 0.001)
        time.sleep(1.6)
        budgets.release(budgets.reserve("ns", 0.01))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
