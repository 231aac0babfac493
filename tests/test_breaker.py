"""The circuit breaker: opens on consecutive upstream failures, probes once, closes."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from haikucache._breaker import CircuitBreaker, is_breaker_failure, upstream_key
from haikucache._exceptions import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    InternalServerError,
    OverloadedError,
    RateLimitError,
    status_error_class,
)
from haikucache._upstream import SyncUpstream
from haikucache.testing import Emulator, ManualClock

KEY = "https://api.anthropic.com|claude-haiku-4-5"


def _status(code: int) -> Exception:
    return status_error_class(code)("boom", status_code=code)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown=10.0, clock=clock)


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.before(KEY)
        breaker.failure(KEY)
    assert breaker.state(KEY) == "closed"
    breaker.before(KEY)
    breaker.failure(KEY)
    assert breaker.state(KEY) == "open"
    with pytest.raises(CircuitOpenError) as info:
        breaker.before(KEY)
    assert info.value.key == KEY
    assert 0 < info.value.retry_after <= 10


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    breaker.failure(KEY)
    breaker.failure(KEY)
    breaker.success(KEY)
    breaker.failure(KEY)
    breaker.failure(KEY)
    assert breaker.state(KEY) == "closed"
    assert breaker.failures(KEY) == 2


def test_half_open_lets_exactly_one_probe_through(
    breaker: CircuitBreaker, clock: ManualClock
) -> None:
    for _ in range(3):
        breaker.failure(KEY)
    clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        breaker.before(KEY)
    clock.advance(0.2)
    breaker.before(KEY)  # the probe
    assert breaker.state(KEY) == "half_open"
    with pytest.raises(CircuitOpenError, match="probe is in flight"):
        breaker.before(KEY)
    breaker.success(KEY)
    assert breaker.state(KEY) == "closed"
    breaker.before(KEY)


def test_a_failed_probe_reopens_for_a_full_cooldown(
    breaker: CircuitBreaker, clock: ManualClock
) -> None:
    for _ in range(3):
        breaker.failure(KEY)
    clock.advance(10)
    breaker.before(KEY)
    breaker.failure(KEY)
    assert breaker.state(KEY) == "open"
    clock.advance(9)
    with pytest.raises(CircuitOpenError):
        breaker.before(KEY)
    clock.advance(1)
    breaker.before(KEY)


def test_a_lost_probe_frees_its_slot_after_probe_timeout(clock: ManualClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, probe_timeout=2, clock=clock)
    breaker.failure(KEY)
    clock.advance(5)
    breaker.before(KEY)  # this probe never reports back
    clock.advance(1.9)
    with pytest.raises(CircuitOpenError):
        breaker.before(KEY)
    clock.advance(0.2)
    breaker.before(KEY)


def test_cancel_frees_the_probe_without_a_verdict(
    breaker: CircuitBreaker, clock: ManualClock
) -> None:
    for _ in range(3):
        breaker.failure(KEY)
    clock.advance(10)
    breaker.before(KEY)
    breaker.record(KEY, BudgetExceededError(
        "no", namespace="n", budget="b", period="total", cap_usd=1, spent_usd=1,
        reserved_usd=0, requested_usd=1,
    ))  # fmt: skip
    assert breaker.state(KEY) == "half_open"
    breaker.before(KEY)  # the slot is free again


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (_status(500), True),
        (_status(502), True),
        (_status(504), True),
        (_status(529), True),
        (APITimeoutError(), True),
        (APIConnectionError(), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (_status(400), False),
        (_status(401), False),
        (_status(404), False),
        (_status(413), False),
        (_status(429), False),
        (ValueError("x"), False),
    ],
)
def test_what_counts_as_a_failure(exc: Exception, counts: bool) -> None:
    assert is_breaker_failure(exc) is counts


def test_4xx_never_opens_and_counts_as_an_answer(breaker: CircuitBreaker) -> None:
    breaker.failure(KEY)
    breaker.failure(KEY)
    for code in (400, 401, 403, 404, 429):
        breaker.record(KEY, _status(code))
    assert breaker.failures(KEY) == 0
    for _ in range(10):
        breaker.record(KEY, _status(400))
    assert breaker.state(KEY) == "closed"


def test_keys_are_separate_and_carry_no_credentials(breaker: CircuitBreaker) -> None:
    a = upstream_key("https://user:secret@API.example.com:8443/v1/", "claude-haiku-4-5")
    assert a == "https://api.example.com:8443/v1|claude-haiku-4-5"
    assert "secret" not in a
    b = upstream_key("https://api.example.com:8443/v1", "claude-sonnet-4-5")
    for _ in range(3):
        breaker.failure(a)
    assert breaker.state(a) == "open"
    breaker.before(b)


def test_guard_records_the_outcome(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        with pytest.raises(OverloadedError), breaker.guard(KEY):
            raise OverloadedError("Overloaded", status_code=529)
    assert breaker.state(KEY) == "open"
    with pytest.raises(CircuitOpenError), breaker.guard(KEY):
        pytest.fail("the block must not run while the circuit is open")


def test_fails_fast_while_open() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60)
    breaker.failure(KEY)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        with pytest.raises(CircuitOpenError):
            breaker.before(KEY)
        times.append(time.perf_counter() - start)
    times.sort()
    assert times[len(times) // 2] < 0.001


def test_concurrent_threads_get_one_probe(clock: ManualClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    breaker.failure(KEY)
    clock.advance(1)
    allowed = []
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        try:
            breaker.before(KEY)
            allowed.append(1)
        except CircuitOpenError:
            pass

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 1


async def test_usable_from_async_code(clock: ManualClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=1, clock=clock)

    async def call(fail: bool) -> str:
        with breaker.guard(KEY):
            await asyncio.sleep(0)
            if fail:
                raise InternalServerError("boom", status_code=500)
            return "ok"

    for _ in range(2):
        with pytest.raises(InternalServerError):
            await call(True)
    with pytest.raises(CircuitOpenError):
        await call(False)
    clock.advance(1)
    assert await call(False) == "ok"
    assert breaker.state(KEY) == "closed"


def test_real_upstream_errors_from_the_emulator_open_the_circuit(clock: ManualClock) -> None:
    # The exceptions the real upstream client raises for an overloaded emulator.
    emu = Emulator(clock=clock)
    emu.inject("overloaded", times=None)
    breaker = CircuitBreaker(failure_threshold=2, cooldown=5, clock=clock)
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    upstream = SyncUpstream(
        api_key="sk-test",
        base_url="http://emulator.local",
        max_retries=0,
        transport=emu.transport(),
    )
    try:
        key = upstream_key("http://emulator.local", "claude-haiku-4-5")

        def send(payload: dict[str, object]) -> None:
            upstream.request_json("POST", "/v1/messages", json=payload)

        for _ in range(2):
            with pytest.raises(OverloadedError), breaker.guard(key):
                send(body)
        with pytest.raises(CircuitOpenError), breaker.guard(key):
            send(body)
        assert emu.requests["messages"] == 2  # the third call never left the process
        emu.clear_faults()
        clock.advance(5)
        with breaker.guard(key):
            send(body)
        assert breaker.state(key) == "closed"
        with pytest.raises(BadRequestError), breaker.guard(key):
            send({**body, "max_tokens": 0})
        assert breaker.state(key) == "closed"
    finally:
        upstream.close()


def test_rate_limit_error_is_not_a_failure() -> None:
    assert not is_breaker_failure(RateLimitError("slow down", status_code=429))


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ConfigurationError):
        CircuitBreaker(cooldown=-1)


def test_httpx_is_not_needed_to_classify() -> None:
    # Raw httpx errors are translated by the upstream client before they reach the breaker.
    assert not is_breaker_failure(httpx.ConnectError("x"))
