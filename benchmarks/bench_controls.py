"""The production controls (issue 15) measured against the emulator: rate limits, budgets,
fallback and the circuit breaker.

    python benchmarks/bench_controls.py --json OUT [--quick]

Everything runs in-process against :class:`haikucache.testing.Emulator` through
:class:`haikucache.Client` (``max_retries=0``, so every 429 or 529 the emulator sends is seen),
except the budget figure, which runs 8 processes and a ``redis-server`` of its own on a free
loopback port. The rate-limit figures run on a :class:`~haikucache.testing.ManualClock`
shared by the emulator, the engine and the limiter (whose ``sleep`` advances it), so minutes
of simulated traffic take seconds. No API key; nothing leaves the machine.

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``ratelimit_upstream_429_on`` / ``ratelimit_upstream_429_off`` — 429s the emulator sent to
  the same load (twice the RPM limit, offered on a fixed schedule for several simulated
  minutes; emulator limits ``rpm=50, itpm=50_000, otpm=10_000`` on Claude Haiku 4.5) with and
  without ``Controls(limiter=RateLimiter(<the same limits>))`` (targets = 0 and > 0).
* ``ratelimit_goodput_ratio`` — with the limiter, calls answered per simulated minute in the
  steady state (after the first two minutes, once the buckets' initial minute of credit is
  spent) over the binding limit (the lowest of RPM, ITPM / input tokens per call and OTPM /
  output tokens per call, from the usage the calls reported) (target >= 0.95).
* ``ratelimit_cache_aware_gain`` — an agent workload (a ~20k-token system prompt the planner
  marks, read from the prompt cache after the first call, a new question each call) run as
  fast as the limiter admits for several simulated minutes: calls per minute (steady state,
  after the first minute) with
  ``RateLimiter(cache_aware=True)`` over ``cache_aware=False``, same limits, the emulator's
  ITPM cache-aware as the API's is on Haiku 4.5 (target >= 2). Both runs must get no 429
  (``ratelimit_cache_aware_429`` reports them).
* ``budget_overshoot_usd_8proc`` — 8 processes, each with its own emulator and Client, share
  one hard ``Budget`` through ``RedisBudgetBackend`` and call until refused; total billed
  spend (the sum of the processes' ledgers) minus the cap (target <= 0).
  ``budget_used_share_8proc`` is that spend over the cap (how much of it was used).
* ``fallback_success_ratio`` — Claude Haiku 4.5 answers 529 to half its calls (seeded),
  ``Controls(fallback=("claude-sonnet-4-5",))``: the share of calls answered (target = 1).
* ``breaker_fail_fast_p50_ms`` — with ``CircuitBreaker(failure_threshold=3)`` open after
  three 529s (``overload(1.0)``), the median wall time of a call it refuses, through the
  whole Client (validation, keying, planning, the response-cache lookup) (target <= 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import haikucache
from _common import load_average, missed, print_table, write_report
from haikucache import (
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
    RateLimiter,
    RateLimitError,
    RateLimits,
)
from haikucache.testing import Emulator, ManualClock

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-5"
BASE_URL = "http://emulator.test"
LIMITS = {"rpm": 50, "itpm": 50_000, "otpm": 10_000}

TARGETS: dict[str, tuple[str, float]] = {
    "ratelimit_upstream_429_on": ("<=", 0),
    "ratelimit_upstream_429_off": (">", 0),
    "ratelimit_goodput_ratio": (">=", 0.95),
    "ratelimit_cache_aware_gain": (">=", 2),
    "ratelimit_cache_aware_429": ("<=", 0),
    "budget_overshoot_usd_8proc": ("<=", 0),
    "fallback_success_ratio": (">=", 1.0),
    "breaker_fail_fast_p50_ms": ("<=", 1),
}


def client(emu: Emulator, controls: Controls | None, **engine: Any) -> Client:
    engine.setdefault("ledger", MemoryLedger())
    return Client(
        api_key="sk-bench",
        base_url=BASE_URL,
        transport=emu.transport(),
        engine=Engine(controls=controls, **engine),
        max_retries=0,
    )


def ask(
    question: str, *, model: str = HAIKU, max_tokens: int = 256, **params: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": question}],
        **params,
    }


def billed(c: Client) -> float:
    ledger = c.engine.ledger
    assert isinstance(ledger, MemoryLedger)
    return float(sum(e.cost.billed_usd for e in ledger.entries))


# --------------------------------------------------------------------------- rate limits


def limited_emulator(clock: ManualClock) -> Emulator:
    emu = Emulator(clock=clock)
    emu.set_rate_limits(  # cache-aware ITPM: the default for Haiku 4.5
        HAIKU, rpm=LIMITS["rpm"], itpm=LIMITS["itpm"], otpm=LIMITS["otpm"]
    )
    return emu


def limiter(clock: ManualClock, *, cache_aware: bool = True) -> RateLimiter:
    return RateLimiter(
        {HAIKU: RateLimits(rpm=LIMITS["rpm"], itpm=LIMITS["itpm"], otpm=LIMITS["otpm"])},
        cache_aware=cache_aware,
        clock=clock,
        sleep=clock.advance,
    )


def offered_load(minutes: float, *, with_limiter: bool) -> dict[str, Any]:
    """Twice the RPM limit offered on a fixed schedule (one call every 0.6 s) for ``minutes``
    simulated minutes; a call the limiter holds back is sent late, the next one no earlier
    than its own slot."""
    clock = ManualClock()
    emu = limited_emulator(clock)
    controls = Controls(limiter=limiter(clock), wait=None) if with_limiter else None
    gap = 60.0 / (2 * LIMITS["rpm"])
    t0 = clock.now()
    answered: list[float] = []
    usage_in: list[int] = []
    usage_out: list[int] = []
    rejected = 0
    with client(emu, controls, clock=clock) as c:
        for i in range(int(minutes * 60 / gap)):
            slot = t0 + i * gap
            if clock.now() < slot:
                clock.set(slot)
            try:
                reply = c.messages.create(**ask(f"Question {i}: where is gate {i % 97}?"))
            except RateLimitError:
                rejected += 1
                continue
            answered.append(clock.now())
            u = reply.usage
            usage_in.append(
                u.input_tokens
                + (u.cache_creation_input_tokens or 0)
                + (u.cache_read_input_tokens or 0)
            )
            usage_out.append(u.output_tokens)
    return {
        "t0": t0,
        "end": clock.now(),
        "answered": answered,
        "rejected": rejected,
        "mean_in": statistics.fmean(usage_in) if usage_in else 0.0,
        "mean_out": statistics.fmean(usage_out) if usage_out else 0.0,
    }


def steady_rate(answered: list[float], start: float) -> float:
    """Calls per minute from the first call at or after ``start`` to the last one."""
    steady = [t for t in answered if t >= start]
    if len(steady) < 2 or steady[-1] <= steady[0]:
        return 0.0
    return (len(steady) - 1) / ((steady[-1] - steady[0]) / 60.0)


def bench_ratelimit(minutes: float) -> dict[str, float]:
    off = offered_load(minutes, with_limiter=False)
    on = offered_load(minutes, with_limiter=True)
    # Steady state: after the buckets' initial minute of credit (and a minute's margin).
    per_minute = steady_rate(on["answered"], on["t0"] + 120.0)
    binding = min(
        LIMITS["rpm"],
        LIMITS["itpm"] / max(on["mean_in"], 1e-9),
        LIMITS["otpm"] / max(on["mean_out"], 1e-9),
    )
    return {
        "ratelimit_upstream_429_on": float(on["rejected"]),
        "ratelimit_upstream_429_off": float(off["rejected"]),
        "ratelimit_answered_on": float(len(on["answered"])),
        "ratelimit_answered_off": float(len(off["answered"])),
        "ratelimit_goodput_per_min": per_minute,
        "ratelimit_binding_limit_per_min": float(binding),
        "ratelimit_goodput_ratio": per_minute / binding,
    }


def agent_system_prompt(tokens: int = 20_000) -> str:
    lines = []
    i = 0
    while True:
        lines.append(
            f"Policy {i}: when a traveller asks about booking {i}, check the fare rules, "
            f"the baggage table and the change fees before answering."
        )
        i += 1
        if i % 50 == 0 and len(" ".join(lines)) > tokens * 4.2:
            break
    return "\n".join(lines)


def agent_run(minutes: float, *, cache_aware: bool, system: str) -> dict[str, float]:
    """Calls as fast as the limiter admits them, for ``minutes`` simulated minutes."""
    clock = ManualClock()
    emu = limited_emulator(clock)
    controls = Controls(limiter=limiter(clock, cache_aware=cache_aware), wait=None)
    t0 = clock.now()
    calls = rejected = reads = 0
    answered: list[float] = []
    with client(emu, controls, clock=clock) as c:
        while clock.now() < t0 + minutes * 60:
            try:
                reply = c.messages.create(
                    **ask(f"Step {calls}: what does rule {calls % 211} say?", system=system)
                )
            except RateLimitError:
                rejected += 1
                clock.advance(1.0)
                continue
            calls += 1
            answered.append(clock.now())
            reads += (reply.usage.cache_read_input_tokens or 0) > 0
    # Steady state: after the first minute, once the buckets' initial credit is spent.
    per_min = steady_rate(answered, t0 + 60.0)
    return {"per_min": per_min, "rejected": rejected, "calls": calls, "reads": reads}


def bench_cache_aware(minutes: float) -> dict[str, float]:
    system = agent_system_prompt()
    prefix = Emulator().count_tokens_of(system)
    aware = agent_run(minutes, cache_aware=True, system=system)
    naive = agent_run(minutes, cache_aware=False, system=system)
    return {
        "ratelimit_agent_prefix_tokens": float(prefix),
        "ratelimit_cache_aware_per_min": aware["per_min"],
        "ratelimit_naive_per_min": naive["per_min"],
        "ratelimit_cache_aware_gain": aware["per_min"] / naive["per_min"],
        "ratelimit_cache_aware_429": float(aware["rejected"] + naive["rejected"]),
        "ratelimit_cache_aware_read_share": aware["reads"] / max(aware["calls"], 1),
    }


# --------------------------------------------------------------------------- budgets


def budget_worker(url: str, prefix: str, cap: float, seed: int) -> None:
    """One of the 8 processes: call until the shared budget refuses ``refusals`` times."""
    import redis

    emu = Emulator(seed=seed)
    budgets = Budgets([Budget(cap)], backend=haikucache.RedisBudgetBackend(url, prefix=prefix))
    answered = refused = 0
    with client(emu, Controls(budgets=budgets)) as c:
        # Ready, then wait for the others: all of them start hammering together.
        gate = redis.Redis.from_url(url)
        gate.set(f"{prefix}ready:{seed}", 1)
        while not gate.exists(f"{prefix}go"):
            time.sleep(0.002)
        gate.close()
        while refused < 20:
            try:
                c.messages.create(**ask(f"Process {seed}, question {answered}?"))
            except BudgetExceededError:
                refused += 1
                time.sleep(0.001)  # others' reservations may settle below their worst case
                continue
            answered += 1
        spent = billed(c)
    print(
        json.dumps({"answered": answered, "billed_usd": spent, "emulator_usd": emu.bill.total_usd})
    )


def _start_together(url: str, prefix: str, processes: int, timeout: float = 300.0) -> None:
    """Wait until every worker is ready (imports done, connected), then let them all go."""
    import redis

    gate = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    try:
        while sum(gate.exists(f"{prefix}ready:{seed}") for seed in range(processes)) < processes:
            if time.monotonic() > deadline:
                break  # a worker died: its exit code says why
            time.sleep(0.01)
        gate.set(f"{prefix}go", 1)
    finally:
        gate.close()


def bench_budget(cap: float, processes: int = 8) -> tuple[dict[str, float], str]:
    from haikucache.testing import start_redis_server

    with tempfile.TemporaryDirectory(prefix="haikucache-bench-controls-") as home:
        try:
            server = start_redis_server(os.path.join(home, "redis"))
        except (FileNotFoundError, RuntimeError) as exc:
            return {}, str(exc)
        try:
            prefix = f"bench{uuid.uuid4().hex[:8]}:"
            env = {**os.environ, "HAIKUCACHE_HOME": home}
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        os.path.abspath(__file__),
                        "--budget-worker",
                        json.dumps([server.url, prefix, cap, seed]),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                for seed in range(processes)
            ]
            _start_together(server.url, prefix, processes)
            results: list[dict[str, Any]] = []
            for worker in workers:
                out, _ = worker.communicate(timeout=600)
                if worker.returncode != 0:
                    return {}, f"a budget worker exited with {worker.returncode}"
                results.append(json.loads(out.strip().splitlines()[-1]))
            (status,) = Budgets(
                [Budget(cap)], backend=haikucache.RedisBudgetBackend(server.url, prefix=prefix)
            ).status()
        finally:
            server.stop()
    total = sum(r["billed_usd"] for r in results)
    return {
        "budget_cap_usd": cap,
        "budget_billed_usd_8proc": total,
        "budget_emulator_billed_usd_8proc": sum(r["emulator_usd"] for r in results),
        "budget_recorded_spent_usd": status.spent_usd,
        "budget_calls_8proc": float(sum(r["answered"] for r in results)),
        "budget_processes_answered_8proc": float(sum(r["answered"] > 0 for r in results)),
        "budget_overshoot_usd_8proc": total - cap,
        "budget_used_share_8proc": total / cap,
    }, ""


# --------------------------------------------------------------------------- fallback, breaker


def bench_fallback(calls: int) -> dict[str, float]:
    emu = Emulator(seed=3)
    emu.overload(0.5, model=HAIKU)
    answered = fell_back = 0
    with client(emu, Controls(fallback=(SONNET,))) as c:
        for i in range(calls):
            try:
                reply = c.messages.create(**ask(f"Where is my bag number {i}?"))
            except Exception:
                continue
            answered += 1
            fell_back += reply.model.startswith(SONNET)
    return {
        "fallback_success_ratio": answered / calls,
        "fallback_share_answered_by_fallback": fell_back / calls,
    }


def bench_breaker(calls: int) -> dict[str, float]:
    clock = ManualClock()  # stands still: the circuit never cools down
    emu = Emulator(clock=clock)
    emu.overload(1.0)
    breaker = CircuitBreaker(failure_threshold=3, cooldown=60, clock=clock)
    times: list[float] = []
    with client(emu, Controls(breaker=breaker), clock=clock, store="memory") as c:
        for _ in range(3):
            try:
                c.messages.create(**ask("Anyone there?"))
            except OverloadedError:
                pass
        sent = emu.requests["messages"]
        for i in range(calls):
            body = ask(f"Anyone there, try {i}?")
            start = time.perf_counter()
            try:
                c.messages.create(**body)
            except CircuitOpenError:
                times.append(time.perf_counter() - start)
        assert emu.requests["messages"] == sent, "an open circuit sent a call"
    times.sort()
    return {
        "breaker_fail_fast_p50_ms": statistics.median(times) * 1000,
        "breaker_fail_fast_p99_ms": times[int(0.99 * (len(times) - 1))] * 1000,
        "breaker_refused_share": len(times) / calls,
    }


# --------------------------------------------------------------------------- report


def run(*, quick: bool, redis: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    figures: dict[str, float] = {}
    notes: dict[str, str] = {}
    figures.update(bench_ratelimit(minutes=6 if quick else 20))
    figures.update(bench_cache_aware(minutes=6 if quick else 20))
    if redis:
        budget, why = bench_budget(cap=0.1 if quick else 1.0)
        figures.update(budget)
        if why:
            notes["budget_overshoot_usd_8proc"] = why
    else:
        notes["budget_overshoot_usd_8proc"] = "skipped (--no-redis)"
    log = logging.getLogger("haikucache")
    level = log.level
    log.setLevel(logging.ERROR)  # one fallback warning per 529 would drown the table
    try:
        figures.update(bench_fallback(200 if quick else 1000))
        figures.update(bench_breaker(500 if quick else 3000))
    finally:
        log.setLevel(level)
    return figures, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="shorter runs (well under a minute)")
    parser.add_argument("--no-redis", action="store_true", help="skip the 8-process budget run")
    parser.add_argument("--budget-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_worker:
        budget_worker(*json.loads(args.budget_worker))
        return 0
    load = load_average()
    figures, notes = run(quick=args.quick, redis=not args.no_redis)
    print_table(figures, TARGETS, notes)
    if args.json:
        write_report(
            args.json,
            figures,
            TARGETS,
            quick=args.quick,
            load_at_start=load,
            not_measured=notes,
            missed=missed(figures, TARGETS),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
