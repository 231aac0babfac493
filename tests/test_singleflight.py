"""Single-flight: identical requests in flight together make one upstream call.

Threads, asyncio tasks, two flights sharing a store's leases (as two processes would), and
two real processes sharing a DiskStore in front of the emulator served over loopback.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import runpy
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haikucache._clock import SystemClock
from haikucache._singleflight import LEASE_TTL, AsyncSingleFlight, Flight, SingleFlight
from haikucache._store import NO_LOCK, CacheEntry, DiskStore, MemoryStore, RedisStore
from haikucache.testing import Emulator

KEY = "hc1:" + "c" * 32


def _in_threads(count: int, target: Callable[[], Any]) -> list[Any]:
    """Run ``target`` in ``count`` threads; return each result or exception."""
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        try:
            results[i] = target()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# --------------------------------------------------------------------------- threads


def test_concurrent_callers_share_one_call() -> None:
    flights = SingleFlight()
    calls = 0
    started = threading.Event()
    release = threading.Event()
    answer = {"id": "msg_1"}

    def upstream() -> dict[str, str]:
        nonlocal calls
        calls += 1
        started.set()
        release.wait(10)
        return answer

    leader: list[Flight[dict[str, str]]] = []
    first = threading.Thread(target=lambda: leader.append(flights.run(KEY, upstream)))
    first.start()
    started.wait(10)
    followers: list[Any] = []
    thread = threading.Thread(
        target=lambda: followers.extend(_in_threads(19, lambda: flights.run(KEY, upstream)))
    )
    thread.start()
    _wait_for(lambda: flights.waiting(KEY) == 19)
    release.set()
    first.join(10)
    thread.join(10)
    assert calls == 1
    assert leader[0].role == "leader" and not leader[0].shared
    assert [f.role for f in followers] == ["joined"] * 19
    assert all(f.value is answer and f.shared for f in followers)
    assert flights.in_flight == 0


def test_every_caller_gets_the_same_exception() -> None:
    flights = SingleFlight()
    release = threading.Event()
    calls = 0

    def upstream() -> None:
        nonlocal calls
        calls += 1
        release.wait(10)
        raise ValueError("overloaded")

    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.extend(_in_threads(8, lambda: flights.run(KEY, upstream)))
    )
    thread.start()
    _wait_for(lambda: calls == 1 and flights.waiting(KEY) == 7)
    release.set()
    thread.join(10)
    assert calls == 1
    assert all(isinstance(r, ValueError) for r in results)
    assert len({id(r) for r in results}) == 1


def test_different_keys_and_later_calls_are_not_coalesced() -> None:
    flights = SingleFlight()
    calls: list[str] = []
    assert flights.run("a", lambda: calls.append("a") or 1).value == 1
    assert flights.run("b", lambda: calls.append("b") or 2).value == 2
    assert flights.run("a", lambda: calls.append("a") or 3).value == 3
    assert calls == ["a", "b", "a"]


class _Interrupt(BaseException):
    pass


def test_an_interrupted_leader_hands_the_call_over() -> None:
    flights = SingleFlight()
    started = threading.Event()
    release = threading.Event()
    calls = 0

    def upstream() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            release.wait(10)
            raise _Interrupt
        return "answer"

    outcome: list[Any] = []
    leader = threading.Thread(
        target=lambda: outcome.extend(_in_threads(1, lambda: flights.run(KEY, upstream)))
    )
    leader.start()
    started.wait(10)
    follower: list[Any] = []
    thread = threading.Thread(
        target=lambda: follower.extend(_in_threads(1, lambda: flights.run(KEY, upstream)))
    )
    thread.start()
    _wait_for(lambda: flights.waiting(KEY) == 1)
    release.set()
    leader.join(10)
    thread.join(10)
    # The interrupt stays with the leader; the follower is not handed a KeyboardInterrupt.
    assert isinstance(outcome[0], _Interrupt)
    assert follower[0].value == "answer" and follower[0].role == "leader"
    assert calls == 2


@pytest.mark.parametrize("bad", [{"lease": 0}, {"wait": -1}, {"poll": 0}, {"lease_ttl": 0}])
def test_times_must_be_positive(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SingleFlight(**bad)
    with pytest.raises(ValueError):
        AsyncSingleFlight(**bad)


# --------------------------------------------------------------------------- asyncio


async def test_concurrent_tasks_share_one_call() -> None:
    flights = AsyncSingleFlight()
    calls = 0
    release = asyncio.Event()

    async def upstream() -> dict[str, str]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"id": "msg_1"}

    tasks = [asyncio.create_task(flights.arun(KEY, upstream)) for _ in range(50)]
    await asyncio.sleep(0.01)
    assert flights.waiting(KEY) == 49
    release.set()
    flights_done = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(f.role for f in flights_done) == ["joined"] * 49 + ["leader"]
    assert len({id(f.value) for f in flights_done}) == 1
    assert flights.in_flight == 0 and flights.waiting(KEY) == 0


async def test_tasks_get_the_same_exception() -> None:
    flights = AsyncSingleFlight()
    release = asyncio.Event()

    async def upstream() -> None:
        await release.wait()
        raise ValueError("overloaded")

    tasks = [asyncio.create_task(flights.arun(KEY, upstream)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert len({id(r) for r in results}) == 1


async def test_a_cancelled_follower_leaves_the_flight_running() -> None:
    flights = AsyncSingleFlight()
    release = asyncio.Event()
    calls = 0

    async def upstream() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "answer"

    leader = asyncio.create_task(flights.arun(KEY, upstream))
    follower = asyncio.create_task(flights.arun(KEY, upstream))
    other = asyncio.create_task(flights.arun(KEY, upstream))
    await asyncio.sleep(0.01)
    follower.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert (await leader).value == "answer"
    assert (await other).role == "joined"
    assert follower.cancelled()
    assert calls == 1


async def test_a_cancelled_leader_hands_the_call_over() -> None:
    flights = AsyncSingleFlight()
    calls = 0

    async def upstream() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(30)
        return "answer"

    leader = asyncio.create_task(flights.arun(KEY, upstream))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(flights.arun(KEY, upstream))
    await asyncio.sleep(0.01)
    leader.cancel()
    flight = await asyncio.wait_for(follower, 5)
    assert flight.value == "answer" and flight.role == "leader"
    assert leader.cancelled() and calls == 2


# --------------------------------------------------------------------------- across processes


def _stored(store: Any, value: dict[str, Any]) -> None:
    store.put(
        CacheEntry.for_message(key=KEY, namespace="ns", message=value, now=SystemClock().now())
    )


def _lookup(store: Any) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        found = store.get(KEY, now=SystemClock().now())
        return None if found is None else found.response

    return check


@pytest.mark.parametrize("store_kind", ["memory", "disk"])
def test_a_waiter_finds_the_answer_another_process_stored(store_kind: str, tmp_path: Path) -> None:
    # Two SingleFlight objects sharing one store behave as two processes would.
    store: Any = (
        MemoryStore(strict=True) if store_kind == "memory" else DiskStore(tmp_path, strict=True)
    )
    first, second = SingleFlight(store), SingleFlight(store)
    started = threading.Event()
    release = threading.Event()
    answer = {"type": "message", "id": "msg_X", "content": [], "usage": {}}
    calls = 0

    def upstream() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        started.set()
        release.wait(10)
        _stored(store, answer)
        return answer

    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(first.run(KEY, upstream, check=_lookup(store)))
    )
    thread.start()
    started.wait(10)
    waiter: list[Any] = []
    other = threading.Thread(
        target=lambda: waiter.append(second.run(KEY, upstream, check=_lookup(store)))
    )
    other.start()
    time.sleep(0.1)
    release.set()
    thread.join(10)
    other.join(10)
    store.close()
    assert calls == 1
    assert results[0].role == "leader"
    assert waiter[0].role == "found" and waiter[0].value == answer


def test_a_waiter_gives_up_and_calls_upstream_itself() -> None:
    store = MemoryStore(strict=True)
    # A holder that crashed: its lease outlives the waiter's patience.
    assert store.try_lock("sf:" + KEY, ttl=60) is not None
    flights = SingleFlight(store, wait=0.2)
    started = time.monotonic()
    flight = flights.run(KEY, lambda: "mine", check=lambda: None)
    assert flight.role == "fallback" and flight.value == "mine"
    assert 0.2 <= time.monotonic() - started < 2


def test_when_the_holder_fails_a_waiter_takes_the_lease() -> None:
    store = MemoryStore(strict=True)
    holder = SingleFlight(store)
    waiter = SingleFlight(store, wait=10)
    started = threading.Event()
    release = threading.Event()

    def failing() -> str:
        started.set()
        release.wait(10)
        raise RuntimeError("upstream 500")

    outcome: list[Any] = []
    thread = threading.Thread(
        target=lambda: outcome.extend(_in_threads(1, lambda: holder.run(KEY, failing)))
    )
    thread.start()
    started.wait(10)
    result: list[Any] = []
    other = threading.Thread(
        target=lambda: result.append(waiter.run(KEY, lambda: "second try", check=lambda: None))
    )
    other.start()
    time.sleep(0.05)
    release.set()
    thread.join(10)
    other.join(10)
    assert isinstance(outcome[0], RuntimeError)
    assert result[0].role == "leader" and result[0].value == "second try"


def test_a_failing_store_never_makes_a_call_wait() -> None:
    pytest.importorskip("redis")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port: every lease request fails at once.
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    try:
        assert store.try_lock("x", ttl=1) == NO_LOCK
        started = time.monotonic()
        flight = SingleFlight(store, wait=30).run(KEY, lambda: "answer", check=lambda: None)
        assert flight.role == "leader" and time.monotonic() - started < 1
    finally:
        store.close()


@pytest.mark.parametrize("store_kind", ["memory", "disk"])
def test_a_short_lease_is_kept_alive_while_the_work_runs(store_kind: str, tmp_path: Path) -> None:
    store: Any = (
        MemoryStore(strict=True) if store_kind == "memory" else DiskStore(tmp_path, strict=True)
    )
    # Each grant lasts 0.2 s; the work takes 1 s: only the heartbeat keeps the lease held.
    leader, waiter = SingleFlight(store, lease_ttl=0.2), SingleFlight(store, lease_ttl=0.2)
    started = threading.Event()
    answer = {"type": "message", "id": "msg_H", "content": [], "usage": {}}
    calls = 0

    def upstream() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        started.set()
        time.sleep(1.0)
        _stored(store, answer)
        return answer

    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(leader.run(KEY, upstream, check=_lookup(store)))
    )
    thread.start()
    started.wait(10)
    flight = waiter.run(KEY, upstream, check=_lookup(store))
    thread.join(10)
    store.close()
    assert calls == 1
    assert results[0].role == "leader" and flight.role == "found"


def test_a_lease_is_renewed_for_lease_seconds_at_most() -> None:
    store = MemoryStore(strict=True)
    leader = SingleFlight(store, lease=0.6, lease_ttl=0.2)
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "slow"

    thread = threading.Thread(target=lambda: leader.run(KEY, slow, check=lambda: None))
    thread.start()
    try:
        started.wait(10)
        began = time.monotonic()
        # A call slower than `lease` lets a waiter call upstream too, as before.
        flight = SingleFlight(store, wait=10).run(KEY, lambda: "second", check=lambda: None)
        waited = time.monotonic() - began
    finally:
        release.set()
        thread.join(10)
    assert flight.role == "leader" and 0.3 < waited < 1.5, waited


class _LeasesOnly:
    """A home-made store with leases but no renew: it gets the whole lease at once."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    def try_lock(self, name: str, *, ttl: float) -> str | None:
        return self.inner.try_lock(name, ttl=ttl)

    def unlock(self, name: str, token: str) -> bool:
        return self.inner.unlock(name, token)


def test_a_store_that_cannot_renew_gets_the_whole_lease() -> None:
    inner = MemoryStore(strict=True)
    held: list[bool] = []

    def upstream() -> str:
        time.sleep(0.3)  # longer than one grant of lease_ttl
        held.append(inner.try_lock("sf:" + KEY, ttl=1) is None)
        return "answer"

    flight = SingleFlight(_LeasesOnly(inner), lease=5, lease_ttl=0.1).run(
        KEY, upstream, check=lambda: None
    )
    assert flight.role == "leader" and held == [True]
    assert inner.try_lock("sf:" + KEY, ttl=1) is not None  # given back


async def test_async_leases_are_kept_alive_while_the_work_runs() -> None:
    store = MemoryStore(strict=True)
    held: list[bool] = []

    async def upstream() -> str:
        await asyncio.sleep(0.7)  # 3.5 grants of lease_ttl
        held.append(await store.atry_lock("sf:" + KEY, ttl=1) is None)
        return "answer"

    flight = await AsyncSingleFlight(store, lease_ttl=0.2).arun(KEY, upstream, check=None)
    assert flight.role == "leader" and held == [True]
    assert await store.atry_lock("sf:" + KEY, ttl=1) is not None  # given back


_CRASHING_LEADER = textwrap.dedent(
    """
    import sys, time
    from haikucache._singleflight import SingleFlight
    from haikucache._store import DiskStore

    store = DiskStore(sys.argv[1])

    def upstream():
        print("LEADING", flush=True)
        time.sleep(60)

    SingleFlight(store, lease=120, lease_ttl=float(sys.argv[3])).run(sys.argv[2], upstream)
    """
)


def test_a_leader_that_died_holds_up_the_others_for_one_lease_ttl(tmp_path: Path) -> None:
    assert LEASE_TTL <= 5  # the default: "a few seconds"
    directory = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_LEADER, str(directory), KEY, "1.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "LEADING"
        time.sleep(0.5)  # the heartbeat has renewed the lease at least once
    finally:
        child.kill()
        child.communicate(timeout=30)
    began = time.monotonic()
    with DiskStore(directory) as store:
        flight = SingleFlight(store, lease=120, wait=10).run(
            KEY, lambda: "mine", check=lambda: None
        )
    waited = time.monotonic() - began
    # Not the 120 s lease, nor the 10 s wait: the lease ran out one grant after the crash.
    assert flight.role == "leader" and waited < 1.5, waited


async def test_async_waiter_finds_the_answer_another_process_stored(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, strict=True)
    first, second = AsyncSingleFlight(store), AsyncSingleFlight(store)
    release = asyncio.Event()
    answer = {"type": "message", "id": "msg_A", "content": [], "usage": {}}
    calls = 0

    async def upstream() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await release.wait()
        await store.aput(
            CacheEntry.for_message(key=KEY, namespace="ns", message=answer, now=time.time())
        )
        return answer

    async def check() -> dict[str, Any] | None:
        found = await store.aget(KEY, now=time.time())
        return None if found is None else found.response

    leading = asyncio.create_task(first.arun(KEY, upstream, check=check))
    await asyncio.sleep(0.02)
    waiting = asyncio.create_task(second.arun(KEY, upstream, check=check))
    await asyncio.sleep(0.05)
    release.set()
    lead, wait = await asyncio.gather(leading, waiting)
    await store.aclose()
    assert calls == 1
    assert lead.role == "leader" and wait.role == "found" and wait.value == answer


async def test_async_waiter_falls_back() -> None:
    store = MemoryStore()
    assert store.try_lock("sf:" + KEY, ttl=60) is not None

    async def upstream() -> str:
        return "mine"

    async def check() -> None:
        return None

    flight = await AsyncSingleFlight(store, wait=0.1).arun(KEY, upstream, check=check)
    assert flight.role == "fallback" and flight.value == "mine"


_PROCESS = textwrap.dedent(
    """
    import json, sys, time
    import httpx
    from haikucache._singleflight import SingleFlight
    from haikucache._store import CacheEntry, DiskStore

    directory, base_url, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    KEY = "hc1:" + "c" * 32
    store = DiskStore(directory, strict=True)
    flights = SingleFlight(store, wait=60)
    body = {"model": "claude-haiku-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": "What is prompt caching?"}]}

    def upstream():
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            response = client.post("/v1/messages", json=body)
            response.raise_for_status()
            message = response.json()
        store.put(CacheEntry.for_message(key=KEY, namespace="ns", message=message, now=time.time()))
        return message

    def check():
        found = store.get(KEY, now=time.time())
        return None if found is None else found.response

    time.sleep(max(0.0, start_at - time.time()))
    flight = flights.run(KEY, upstream, check=check)
    store.close()
    print(json.dumps({"role": flight.role, "id": flight.value["id"]}))
    """
)


def test_two_processes_make_one_upstream_call(tmp_path: Path) -> None:
    script = tmp_path / "flight.py"
    script.write_text(_PROCESS)
    emulator = Emulator()
    # A slow upstream, so both processes are in flight at the same time.
    emulator.inject("latency", seconds=1.0, times=None)
    with emulator.serve() as base_url:
        start_at = time.time() + 1.5
        processes = [
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "store"), base_url, str(start_at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        reports = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err.decode()[-3000:]
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert emulator.requests["messages"] == 1
    assert sorted(r["role"] for r in reports) == ["found", "leader"]
    assert reports[0]["id"] == reports[1]["id"]


# --------------------------------------------------------------------------- the client, across processes

# Each child process builds its own haikucache Client over a store shared with the others,
# waits at a barrier so that all of them ask at the same moment, makes one call, and reports
# how it was answered. The script is run with runpy in a spawned process: a spawned child
# cannot import a test module collected with --import-mode=importlib.
_CLIENT_PROCESS = textwrap.dedent(
    """
    import asyncio, os, time
    from haikucache import AsyncClient, Client, Engine, MemoryLedger
    from haikucache._store import DiskStore, RedisStore

    REQUEST = {"model": "claude-haiku-4-5", "max_tokens": 256,
               "messages": [{"role": "user", "content": "What is single-flight?"}]}


    def open_store():
        if SPEC["kind"] == "disk":
            return DiskStore(SPEC["where"], strict=True)
        return RedisStore(SPEC["where"], prefix=SPEC["prefix"], strict=True)


    def report(message, ledger):
        QUEUE.put({
            "pid": os.getpid(),
            "cache": message.haikucache.cache,
            "text": message.content[0].text,
            "ledger": [entry.cache for entry in ledger.entries],
        })


    def run_sync():
        store = open_store()
        ledger = MemoryLedger()
        engine = Engine.for_credentials("sk-shared", ledger=ledger, store=store)
        with Client(api_key="sk-shared", base_url=SPEC["base_url"], engine=engine) as client:
            BARRIER.wait(60)
            message = client.messages.create(**REQUEST)
        store.close()
        report(message, ledger)


    async def run_async():
        store = open_store()
        ledger = MemoryLedger()
        engine = Engine.for_credentials("sk-shared", ledger=ledger, store=store)
        async with AsyncClient(
            api_key="sk-shared", base_url=SPEC["base_url"], engine=engine
        ) as client:
            await asyncio.get_running_loop().run_in_executor(None, BARRIER.wait, 60)
            message = await client.messages.create(**REQUEST)
        await store.aclose()
        store.close()
        report(message, ledger)


    try:
        if SPEC["mode"] == "sync":
            run_sync()
        else:
            asyncio.run(run_async())
    except BaseException as exc:
        QUEUE.put({"pid": os.getpid(), "error": repr(exc)})
        raise
    """
)


def _run_clients(
    tmp_path: Path, spec: dict[str, Any], count: int, emulator: Emulator
) -> list[dict[str, Any]]:
    script = tmp_path / "client_process.py"
    script.write_text(_CLIENT_PROCESS)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    barrier = context.Barrier(count)
    with emulator.serve() as base_url:
        spec = {**spec, "base_url": base_url}
        processes = [
            context.Process(
                target=runpy.run_path,
                args=(str(script), {"SPEC": spec, "QUEUE": queue, "BARRIER": barrier}),
                daemon=True,
            )
            for _ in range(count)
        ]
        for process in processes:
            process.start()
        try:
            reports = [queue.get(timeout=120) for _ in range(count)]
        finally:
            for process in processes:
                process.join(30)
                if process.is_alive():
                    process.kill()
                    process.join(10)
    errors = [r["error"] for r in reports if "error" in r]
    assert not errors, errors
    assert [p.exitcode for p in processes] == [0] * count
    return reports


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["disk", "redis"])
def test_processes_sharing_a_store_make_one_upstream_call(
    kind: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "disk":
        spec: dict[str, Any] = {"kind": kind, "where": str(tmp_path / "store")}
    else:
        url = request.getfixturevalue("redis_url")
        spec = {"kind": kind, "where": url, "prefix": f"sf-{mode}-{time.monotonic_ns()}:"}
    emulator = Emulator()
    # A slow upstream: every process asks while the first one's call is still in flight.
    emulator.inject("latency", seconds=1.5, times=None)
    count = 4
    reports = _run_clients(tmp_path, {**spec, "mode": mode}, count, emulator)
    assert emulator.requests["messages"] == 1
    assert sorted(r["cache"] for r in reports) == ["hit"] * (count - 1) + ["miss"]
    assert len({r["text"] for r in reports}) == 1
    # Each follower accounted its answer as a hit (a saving), the leader as a miss.
    assert sorted(r["ledger"][0] for r in reports) == ["hit"] * (count - 1) + ["miss"]
    assert len({r["pid"] for r in reports}) == count
