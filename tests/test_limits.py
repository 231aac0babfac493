"""The client-side rate limiter: buckets, cache-aware ITPM, deadlines, settling, learning,
batch limits; in memory and in a real Redis shared by real processes; against the emulator."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from haikucache._exceptions import ControlStoreError, RateLimitedError, UsageError
from haikucache._limits import (
    HAIKU_4_5_TIERS,
    BatchLimits,
    LimiterBackend,
    MemoryLimiterBackend,
    RateLimiter,
    RateLimits,
    RedisLimiterBackend,
    cache_reads_count_toward_itpm,
    itpm_tokens,
)
from haikucache.testing import Emulator, ManualClock

HAIKU = "claude-haiku-4-5"


class Sleeps:
    """A sleep that moves a manual clock, and remembers how long it was asked to sleep."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sleeps(clock: ManualClock) -> Sleeps:
    return Sleeps(clock)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[LimiterBackend]:
    if request.param == "memory":
        yield MemoryLimiterBackend()
        return
    url = request.getfixturevalue("redis_url")
    redis_backend = RedisLimiterBackend(url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    yield redis_backend
    redis_backend.close()


def make(backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps, **kwargs: Any) -> RateLimiter:
    return RateLimiter(backend=backend, clock=clock, sleep=sleeps, asleep=sleeps.asleep, **kwargs)


# --------------------------------------------------------------------------- rules


def test_cache_read_rule_per_model() -> None:
    assert not cache_reads_count_toward_itpm("claude-haiku-4-5")
    assert not cache_reads_count_toward_itpm("claude-haiku-4-5-20251001")
    assert not cache_reads_count_toward_itpm("anthropic.claude-haiku-4-5-20251001-v1:0")
    assert cache_reads_count_toward_itpm("claude-sonnet-4-5")
    assert cache_reads_count_toward_itpm("some-gateway-model")
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 5000,
    }
    assert itpm_tokens(usage, model=HAIKU) == 110
    assert itpm_tokens(usage, model="claude-sonnet-4-5") == 5110
    assert itpm_tokens(usage, model=HAIKU, cache_reads_count=True) == 5110


def test_tiers_follow_the_reference() -> None:
    assert HAIKU_4_5_TIERS[1] == RateLimits(rpm=50, itpm=50_000, otpm=10_000)
    assert HAIKU_4_5_TIERS[4].itpm == 4_000_000


# --------------------------------------------------------------------------- buckets


def test_rpm_waits_for_the_refill(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(rpm=3)})
    for _ in range(3):
        assert limiter.acquire(HAIKU).waited == 0
    permit = limiter.acquire(HAIKU)
    # 3 per minute: one more request after 20 s, not after a whole minute.
    assert permit.waited == pytest.approx(20, abs=0.01)
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire(HAIKU, deadline=0)
    assert info.value.limit == "requests"
    assert info.value.model == HAIKU
    assert info.value.retry_after == pytest.approx(20, abs=0.01)


def test_deadline_shorter_than_the_wait_raises_at_once(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(itpm=6_000)})
    limiter.acquire(HAIKU, input_tokens=6_000)
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire(HAIKU, input_tokens=600, deadline=5)
    assert info.value.limit == "input_tokens"
    assert info.value.retry_after == pytest.approx(6, abs=0.01)  # 100 tokens per second
    assert sleeps.calls == []  # it did not wait in vain
    assert limiter.acquire(HAIKU, input_tokens=600, deadline=7).waited == pytest.approx(6, abs=0.01)


def test_a_call_bigger_than_the_limit_is_refused_for_good(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(itpm=50_000)})
    with pytest.raises(RateLimitedError, match="more than the limit") as info:
        limiter.acquire(HAIKU, input_tokens=60_000)
    assert info.value.retry_after is None
    assert sleeps.calls == []


def test_all_buckets_or_none_are_taken(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(rpm=100, itpm=1_000)})
    limiter.acquire(HAIKU, input_tokens=1_000)
    with pytest.raises(RateLimitedError):
        limiter.acquire(HAIKU, input_tokens=500, deadline=0)
    # The refused call took no request.
    assert limiter.available(HAIKU)["requests"] == pytest.approx(99)


def test_cache_aware_itpm_admits_many_more_calls(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limits = {HAIKU: RateLimits(itpm=50_000)}
    aware = make(backend, clock, sleeps, limits=limits)
    naive = RateLimiter(limits=limits, cache_aware=False, clock=clock, sleep=sleeps)

    def admitted(limiter: RateLimiter) -> int:
        count = 0
        while True:
            try:
                limiter.acquire(HAIKU, input_tokens=200, cache_read_tokens=9_800, deadline=0)
            except RateLimitedError:
                return count
            count += 1

    assert admitted(naive) == 5
    assert admitted(aware) == 250
    # A model whose limits count reads gets no such gain.
    sonnet = make(backend, clock, sleeps, limits={"claude-sonnet-4-5": RateLimits(itpm=50_000)})
    sonnet.acquire("claude-sonnet-4-5", input_tokens=200, cache_read_tokens=9_800)
    assert sonnet.available("claude-sonnet-4-5")["input_tokens"] == pytest.approx(40_000)


def test_per_model_rule_can_be_overridden(clock: ManualClock, sleeps: Sleeps) -> None:
    limiter = RateLimiter(
        limits={"claude-sonnet-4-5": RateLimits(itpm=50_000, cache_reads_count=False)},
        clock=clock,
        sleep=sleeps,
    )
    limiter.acquire("claude-sonnet-4-5", input_tokens=200, cache_read_tokens=9_800)
    assert limiter.available("claude-sonnet-4-5")["input_tokens"] == pytest.approx(49_800)


def test_settle_refunds_or_charges_the_difference(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(itpm=60_000, otpm=6_000)})
    permit = limiter.acquire(HAIKU, input_tokens=10_000, output_tokens=4_000)
    assert limiter.available(HAIKU)["input_tokens"] == pytest.approx(50_000)
    limiter.settle(
        permit,
        {
            "input_tokens": 1_000,
            "cache_creation_input_tokens": 500,
            "cache_read_input_tokens": 8_000,
            "output_tokens": 100,
        },
    )
    assert limiter.available(HAIKU) == {
        "input_tokens": pytest.approx(58_500),
        "output_tokens": pytest.approx(5_900),
    }
    limiter.settle(permit, {"input_tokens": 99_999})  # a second settle is a no-op
    assert limiter.available(HAIKU)["input_tokens"] == pytest.approx(58_500)
    # Under-estimated: the bucket goes into debt and the next call waits for it.
    under = limiter.acquire(HAIKU, input_tokens=1_000, output_tokens=10)
    limiter.settle(under, {"input_tokens": 65_000, "output_tokens": 10})
    assert limiter.available(HAIKU)["input_tokens"] == pytest.approx(-6_500)
    waited = limiter.acquire(HAIKU, input_tokens=1_000).waited
    assert waited == pytest.approx(7.5, abs=0.01)  # 7,500 tokens at 1,000 per second


def test_release_gives_tokens_back(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(rpm=10, itpm=10_000)})
    limiter.release(limiter.acquire(HAIKU, input_tokens=4_000))
    assert limiter.available(HAIKU) == {"requests": 9, "input_tokens": 10_000}
    limiter.release(limiter.acquire(HAIKU, input_tokens=4_000), sent=False)
    assert limiter.available(HAIKU) == {"requests": 9, "input_tokens": 10_000}


def test_learns_limits_remaining_and_retry_after(
    backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps
) -> None:
    limiter = make(backend, clock, sleeps)
    assert limiter.limits_for(HAIKU) == RateLimits()
    limiter.learn(
        "claude-haiku-4-5-20251001",
        {
            "Anthropic-RateLimit-Requests-Limit": "50",
            "anthropic-ratelimit-requests-remaining": "10",
            "anthropic-ratelimit-input-tokens-limit": "50000",
            "anthropic-ratelimit-input-tokens-remaining": "2000",
            "anthropic-ratelimit-output-tokens-limit": "10000",
            "anthropic-ratelimit-output-tokens-remaining": "10000",
        },
    )
    assert limiter.limits_for(HAIKU) == RateLimits(rpm=50, itpm=50_000, otpm=10_000)
    assert limiter.available(HAIKU) == {
        "requests": 10,
        "input_tokens": 2_000,
        "output_tokens": 10_000,
    }
    with pytest.raises(RateLimitedError):
        limiter.acquire(HAIKU, input_tokens=3_000, deadline=0)
    # A 429's retry-after holds back every call to the model until it has passed.
    limiter.learn(HAIKU, {"retry-after": "7"}, status=429)
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire(HAIKU, deadline=1)
    assert info.value.retry_after == pytest.approx(7, abs=0.01)
    assert limiter.acquire(HAIKU).waited == pytest.approx(7, abs=0.01)
    # retry-after on another status is not a rate-limit hint.
    limiter.learn(HAIKU, {"retry-after": "30"}, status=529)
    assert limiter.acquire(HAIKU).waited == 0


def test_a_configured_limit_below_the_learned_one_wins(clock: ManualClock) -> None:
    limiter = RateLimiter(limits={"*": RateLimits(rpm=10)}, clock=clock)
    limiter.learn(HAIKU, {"anthropic-ratelimit-requests-limit": "50"})
    assert limiter.limits_for(HAIKU).rpm == 10
    limiter.learn(HAIKU, {"anthropic-ratelimit-requests-limit": "5"})
    assert limiter.limits_for(HAIKU).rpm == 5
    frozen = RateLimiter(clock=clock, learn_limits=False)
    frozen.learn(HAIKU, {"anthropic-ratelimit-requests-limit": "5"})
    assert frozen.limits_for(HAIKU).rpm is None


def test_batch_rpm_and_queue(backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps) -> None:
    limiter = make(
        backend,
        clock,
        sleeps,
        limits={HAIKU: RateLimits(rpm=1)},
        batch=BatchLimits(rpm=60, queue=100),
    )
    limiter.acquire(HAIKU)
    limiter.acquire_batch(requests=80)  # batch limits are separate from the model's
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire_batch(requests=30, deadline=2.5)
    assert info.value.limit == "batch_queue"
    assert sleeps.total == pytest.approx(2.5)  # a full queue is polled until the deadline
    limiter.release_batch_queue(80)
    limiter.acquire_batch(requests=30, deadline=0)
    with pytest.raises(RateLimitedError, match="more than the limit"):
        limiter.acquire_batch(requests=101)


async def test_async_twins(backend: LimiterBackend, clock: ManualClock, sleeps: Sleeps) -> None:
    limiter = make(backend, clock, sleeps, limits={HAIKU: RateLimits(rpm=2, itpm=10_000)})
    await limiter.aacquire(HAIKU, input_tokens=5_000)
    permit = await limiter.aacquire(HAIKU, input_tokens=5_000)
    await limiter.asettle(permit, {"input_tokens": 1_000, "output_tokens": 5})
    third = await limiter.aacquire(HAIKU, input_tokens=5_000)
    assert third.waited == pytest.approx(30, abs=0.01)  # rpm binds: 2 per minute
    await limiter.arelease(third)
    await limiter.alearn(HAIKU, {"retry-after": "3"}, status=429)
    with pytest.raises(RateLimitedError):
        await limiter.aacquire(HAIKU, deadline=0)
    batch = await limiter.aacquire_batch()
    await limiter.arelease(batch, sent=False)
    if isinstance(backend, RedisLimiterBackend):
        await backend.aclose()


def test_bad_arguments(clock: ManualClock) -> None:
    limiter = RateLimiter(clock=clock)
    with pytest.raises(UsageError):
        limiter.acquire(HAIKU, input_tokens=-1)
    with pytest.raises(UsageError):
        limiter.acquire(HAIKU, output_tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        RateLimits(rpm=0)


# --------------------------------------------------------------------------- redis failures


def test_a_dead_redis_fails_open_or_closed(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    from haikucache.testing._redis import free_port

    dead = RedisLimiterBackend(f"redis://:hunter2@127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    limits = {HAIKU: RateLimits(rpm=1)}
    open_limiter = RateLimiter(limits=limits, backend=dead, clock=clock)
    with caplog.at_level(logging.WARNING, logger="haikucache"):
        permit = open_limiter.acquire(HAIKU)
    assert not permit.metered
    assert "not metered" in caplog.text
    assert "hunter2" not in caplog.text
    open_limiter.settle(permit, {"input_tokens": 1})  # nothing to do, no error
    closed = RateLimiter(limits=limits, backend=dead, clock=clock, fail_open=False)
    with pytest.raises(ControlStoreError) as info:
        closed.acquire(HAIKU)
    assert "hunter2" not in str(info.value)
    dead.close()


# --------------------------------------------------------------------------- many processes

_WORKER = textwrap.dedent(
    """
    import json, sys
    from haikucache._limits import RateLimiter, RateLimits, RedisLimiterBackend
    from haikucache._exceptions import RateLimitedError

    url, prefix, now, attempts = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])

    class Frozen:  # no refill during the run: the count is exact
        def now(self):
            return now

    limiter = RateLimiter(
        limits={"claude-haiku-4-5": RateLimits(rpm=1000, itpm=100_000)},
        backend=RedisLimiterBackend(url, prefix=prefix),
        clock=Frozen(),
        fail_open=False,
    )
    granted = 0
    for _ in range(attempts):
        try:
            limiter.acquire("claude-haiku-4-5", input_tokens=700, deadline=0)
            granted += 1
        except RateLimitedError:
            pass
    print(json.dumps({"granted": granted}))
    """
)


def test_processes_sharing_redis_never_exceed_the_limit(redis_url: str) -> None:
    prefix = f"mp{uuid.uuid4().hex[:8]}:"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, prefix, "1763632800.0", "60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    granted = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        granted.append(json.loads(out)["granted"])
    # 100,000 input tokens / 700 per call = 142 calls, however the 240 attempts interleave.
    assert sum(granted) == 142
    assert all(g < 142 for g in granted)  # they really competed


# --------------------------------------------------------------------------- emulator


def _load(emu: Emulator, limiter: RateLimiter | None, calls: int) -> tuple[int, int]:
    """Send an agent-like load (a long cached system prompt, short questions)."""
    system = " ".join(
        f"Rule {i}: be precise, cite the policy, and check the booking." for i in range(700)
    )
    ok = refused = 0
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://emulator.local",
        headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"},
    ) as client:
        body0 = {
            "model": HAIKU,
            "max_tokens": 200,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        }
        prefix = client.post(
            "/v1/messages/count_tokens",
            json={
                "model": HAIKU,
                "system": body0["system"],
                "messages": [{"role": "user", "content": "x"}],
            },
        ).json()["input_tokens"]
        for i in range(calls):
            body = {**body0, "messages": [{"role": "user", "content": f"Question {i}?"}]}
            permit = None
            if limiter is not None:
                # The estimate: the prefix is read from cache after the first call.
                read = prefix if i else 0
                permit = limiter.acquire(
                    HAIKU,
                    input_tokens=20,
                    cache_write_tokens=prefix - read,
                    cache_read_tokens=read,
                    output_tokens=200,
                )
            response = client.post("/v1/messages", json=body)
            if response.status_code == 429:
                refused += 1
                if permit is not None:
                    limiter.release(permit)  # type: ignore[union-attr]
                continue
            assert response.status_code == 200
            ok += 1
            if limiter is not None:
                limiter.settle(permit, response.json()["usage"])  # type: ignore[arg-type]
                limiter.learn(HAIKU, response.headers)
    return ok, refused


def test_the_limiter_keeps_the_emulator_from_answering_429(clock: ManualClock) -> None:
    limits = RateLimits(rpm=50, itpm=20_000, otpm=10_000)

    def emulator() -> Emulator:
        emu = Emulator(clock=clock)
        emu.set_rate_limits(HAIKU, rpm=limits.rpm, itpm=limits.itpm, otpm=limits.otpm)
        return emu

    ok, refused = _load(emulator(), None, 120)
    assert refused > 0
    clock.advance(3600)
    sleeps = Sleeps(clock)
    limiter = RateLimiter(limits={HAIKU: limits}, clock=clock, sleep=sleeps)
    start = clock.now()
    ok, refused = _load(emulator(), limiter, 120)
    assert (ok, refused) == (120, 0)
    # Goodput: the requests limit binds (50 per minute, 50 at once to start with).
    elapsed = clock.now() - start
    assert elapsed == pytest.approx((120 - 50) * 60 / 50, rel=0.05)
