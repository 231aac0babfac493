"""Store, ledger, journal and single-flight leases under real faults: they degrade, never break.

Every fault is real, nothing is mocked: a redis-server paused (SIGSTOP) or killed (SIGKILL);
a disk that fills up (``RLIMIT_FSIZE`` in a child process: every write past the first byte
of a file fails, as on a full disk); a read-only file system (a read-only tmpfs where this
machine lets us mount one, else a regular file where a directory should be); database files
full of garbage; an SQLite lock held by another process; a process SIGKILLed in the middle
of its writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haikucache import CacheStoreError
from haikucache._batch_journal import DiskBatchJournal, JournalRecord, RedisBatchJournal
from haikucache._ledger import DiskLedger, now_entry, summarize
from haikucache._singleflight import AsyncSingleFlight, SingleFlight
from haikucache._store import NO_LOCK, CacheEntry, DiskStore, RedisStore
from haikucache.testing import Emulator, RedisServer, start_redis_server

KEY = "hc1:" + "f" * 32


def entry(n: int, *, now: float, tags: tuple[str, ...] = (), size: int = 40) -> CacheEntry:
    text = (f"answer {n} " * (size // 9 + 1))[:size]
    message = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": size},
    }
    return CacheEntry.for_message(
        key=f"hc1:{n:032x}", namespace="ns", message=message, now=now, tags=tags
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _child(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(child: subprocess.Popen[str], *, kill: bool = False) -> tuple[str, str]:
    if kill and child.poll() is None:
        child.kill()
    out, err = child.communicate(timeout=60)
    return out, err


# The disk "fills up" for a child process: with RLIMIT_FSIZE at one byte, every write to a
# file past its first byte fails (EFBIG, which SQLite reports as a disk I/O error), exactly
# the writes a full disk refuses; reads go on. SIGXFSZ would kill the process: ignored.
_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_FSIZE)


def disk_full():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, _HARD))


def disk_has_room():
    resource.setrlimit(resource.RLIMIT_FSIZE, (_SOFT, _HARD))
"""


# --------------------------------------------------------------------------- file systems


def _mount_tmpfs(where: Path, *options: str) -> bool:
    """Mount a small tmpfs at ``where``; whether this machine let us."""
    if shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    settings = ",".join(("size=8m", "mode=0700", *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", settings, "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to take down after the test."""
    mounted: list[Path] = []
    yield mounted
    for where in reversed(mounted):
        _umount(where)


def _broken_home(kind: str, tmp_path: Path, mounts: list[Path]) -> Path:
    """A cache home haikucache cannot use, of the given kind."""
    if kind == "a file where the directory should be":
        home = tmp_path / "home"
        home.write_text("not a directory")
        return home
    if kind == "a read-only file system":
        where = tmp_path / "ro"
        if _mount_tmpfs(where, "ro"):
            mounts.append(where)
            return where / "home"
        # No mount allowed here: a path under a regular file fails the same way (we run
        # as root in CI, so a chmod 0o500 directory would not stop us).
        (tmp_path / "ro-file").write_text("")
        return tmp_path / "ro-file" / "home"
    if kind == "an existing home on a read-only file system":
        where = tmp_path / "ro-existing"
        if not _mount_tmpfs(where):
            pytest.skip("this machine does not let tests mount a tmpfs")
        mounts.append(where)
        home = where / "home"
        DiskStore(home / "responses").close()
        DiskLedger(home / "ledger").close()
        DiskBatchJournal(home / "batches").close()
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True
        )
        assert remount.returncode == 0, remount.stderr
        return home
    if kind == "corrupt databases":
        home = tmp_path / "home"
        for part in ("responses", "ledger", "batches"):
            (home / part).mkdir(parents=True)
            (home / part / "cache.db").write_bytes(b"\x00garbage, not SQLite\n" * 512)
        (home / "responses" / "index.db").write_bytes(b"garbage" * 512)
        return home
    raise AssertionError(kind)


HOMES = [
    "a file where the directory should be",
    "a read-only file system",
    "an existing home on a read-only file system",
    "corrupt databases",
]

_CLIENT_ON_A_BROKEN_HOME = """
import json, sys
from haikucache import Client, Engine
from haikucache._batch_journal import JournalRecord, encode_jobs, open_journal

# Everything in its default place: the process-wide ledger, the store, the batch journal.
engine = Engine(store="disk")
ask = {"model": "claude-haiku-4-5", "max_tokens": 64,
       "messages": [{"role": "user", "content": "What is a cache?"}]}
with Client(api_key="sk-home", base_url=sys.argv[1], engine=engine) as client:
    first = client.messages.create(**ask)
    second = client.messages.create(**ask)
journal = open_journal()
journal.begin(JournalRecord("hcx", "submitting", sys.argv[1], 0, 1.0), encode_jobs([]))
print(json.dumps({
    "answers": [first.content[0].text, second.content[0].text],
    "journal": [r.token for r in journal.records()],
}))
"""


@pytest.mark.parametrize("kind", HOMES)
def test_an_unusable_cache_home_never_stops_a_client(
    kind: str, tmp_path: Path, mounts: list[Path]
) -> None:
    home = _broken_home(kind, tmp_path, mounts)
    emulator = Emulator()
    with emulator.serve() as base_url:
        child = _child(
            _CLIENT_ON_A_BROKEN_HOME, base_url, env={**os.environ, "HAIKUCACHE_HOME": str(home)}
        )
        out, err = _finish(child)
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["answers"][0] == report["answers"][1]
    assert report["journal"] == ["hcx"]  # kept in memory
    assert emulator.requests["messages"] == 2  # the store misses: no answer is replayed
    # One warning per part, naming the path and the cause; nothing else.
    warnings = [line for line in err.splitlines() if "haikucache:" in line]
    for what, part in (
        ("the response store", "responses"),
        ("the ledger", "ledger"),
        ("the batch journal", "batches"),
    ):
        (line,) = [w for w in warnings if f"cannot open {what} at {home / part}" in w]
        assert "Error" in line  # the cause: NotADirectoryError, OSError, DatabaseError …
    assert len(warnings) == 3, warnings


@pytest.mark.parametrize("kind", HOMES)
def test_strict_parts_raise_on_an_unusable_home(
    kind: str, tmp_path: Path, mounts: list[Path]
) -> None:
    home = _broken_home(kind, tmp_path, mounts)
    with pytest.raises(CacheStoreError, match="response store"):
        DiskStore(home / "responses", strict=True)
    with pytest.raises(CacheStoreError, match="ledger"):
        DiskLedger(home / "ledger", strict=True)
    with pytest.raises(CacheStoreError, match="batch journal"):
        DiskBatchJournal(home / "batches", strict=True)


def test_degraded_parts_miss_and_count_in_memory(
    tmp_path: Path, mounts: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    home = _broken_home("corrupt databases", tmp_path, mounts)
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        store = DiskStore(home / "responses")
        ledger = DiskLedger(home / "ledger", flush_interval=0)
        journal = DiskBatchJournal(home / "batches")
        now = time.time()
        assert not store.available
        assert store.put(entry(1, now=now, tags=("t",))) is False
        assert store.get(entry(1, now=now).key, now=now) is None
        assert store.try_lock("flight", ttl=5) == NO_LOCK  # never makes a call wait
        assert store.unlock("flight", NO_LOCK) and store.renew("flight", NO_LOCK, ttl=5)
        assert store.invalidate(tag="t") == 0 and store.delete(entry(1, now=now).key) is False
        assert list(store.iter_partition("p", now=now)) == []
        assert store.partition_since("p", None, now=now) == ([], "0")
        store.clear()
        stats = store.stats()
        assert (stats.entries, stats.misses, stats.errors) == (0, 1, 1)
        store.close()

        assert not ledger.persistent
        usage = {"input_tokens": 100, "output_tokens": 10}
        for _ in range(3):
            ledger.record(
                now_entry(None, namespace="n", model="claude-haiku-4-5", cache="miss", usage=usage)
            )
        assert summarize(ledger.totals()).calls == 3
        ledger.close()

        assert not journal.persistent
        journal.begin(JournalRecord("hcm", "submitting", "http://x", 0, 1.0), b"")
        assert [r.token for r in journal.records()] == ["hcm"]
    warnings = _warnings(caplog)
    assert len(warnings) == 3, warnings
    assert all("DatabaseError" in w for w in warnings)


# --------------------------------------------------------------------------- a full disk


_LEASE_ON_A_FULL_DISK = (
    _DISK
    + """
import sys, threading, time
from haikucache._singleflight import AsyncSingleFlight, SingleFlight
from haikucache._store import DiskStore

store = DiskStore(sys.argv[1])


def upstream():
    # The disk fills up while the call is upstream, and has room again a second later.
    disk_full()
    threading.Timer(1.0, disk_has_room).start()
    return "answer"


# As the client does: a lease of up to 120 s, and 30 s of patience.
flight = SingleFlight(store, lease=120, wait=30).run(sys.argv[2], upstream, check=lambda: None)
print(flight.role, flight.value, flush=True)
time.sleep(60)  # a server process lives on
"""
)


def test_a_lease_whose_give_back_hit_a_full_disk_is_free_soon_after(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    child = _child(_LEASE_ON_A_FULL_DISK, str(directory), KEY)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["leader", "answer"]  # the call went on
        started = time.monotonic()
        with DiskStore(directory) as store:
            flight = SingleFlight(store, lease=120, wait=10).run(
                KEY, lambda: "mine", check=lambda: None
            )
        waited = time.monotonic() - started
    finally:
        _out, err = _finish(child, kill=True)
    assert "unlock failed" in err  # the fault really hit the give-back
    # The next identical call (another process) gets the lease once the disk has room
    # again, not after the 10 s it would wait for a lease that outlived its holder.
    assert flight.role == "leader" and waited < 3.0, (flight.role, waited)


_LEDGER_ON_A_FULL_DISK = (
    _DISK
    + """
import json, sys
from haikucache import DiskLedger
from haikucache._ledger import now_entry, summarize

ledger = DiskLedger(sys.argv[1], flush_interval=3600, flush_entries=100)
usage = {"input_tokens": 100, "output_tokens": 10}
seen = {}
for i in range(300):
    if i == 100:
        disk_full()  # the write of calls 100-199 fails
    if i == 200:
        seen["during"] = summarize(ledger.totals()).calls
        disk_has_room()
    ledger.record(now_entry(None, namespace="n", model="claude-haiku-4-5", cache="miss", usage=usage))
seen["after"] = summarize(ledger.totals()).calls
ledger.close()
print(json.dumps(seen))
"""
)


def test_the_ledger_keeps_what_a_full_disk_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    child = _child(_LEDGER_ON_A_FULL_DISK, str(directory))
    out, err = _finish(child)
    assert child.returncode == 0, err[-3000:]
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {"during": 200, "after": 300}  # 100 written, 100 kept in memory
    warnings = [line for line in err.splitlines() if "could not write the ledger" in line]
    assert len(warnings) == 1, err  # once, however many flushes fail
    reader = DiskLedger(directory)
    try:
        assert summarize(reader.totals()).calls == 300
    finally:
        reader.close()


_STORE_ON_A_FULL_DISK = (
    _DISK
    + """
import json, sys, time
from haikucache._store import CacheEntry, DiskStore

def entry(n, size):
    message = {"type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
               "content": [{"type": "text", "text": "x" * size}], "usage": {}}
    return CacheEntry.for_message(key="hc1:%032x" % n, namespace="ns", message=message,
                                  now=time.time(), tags=("t",))

store = DiskStore(sys.argv[1])
now = time.time()
seen = {"before": store.put(entry(0, 100))}
disk_full()
seen["full"] = store.put(entry(1, 50_000))
seen["read while full"] = store.get(entry(0, 1).key, now=now) is not None
seen["lock while full"] = store.try_lock("flight", ttl=5) is not None
disk_has_room()
seen["after"] = store.put(entry(1, 50_000))
seen["read after"] = store.get(entry(1, 1).key, now=now) is not None
seen["errors"] = store.stats().errors
seen["invalidated"] = store.invalidate(tag="t")
print(json.dumps(seen))
"""
)


def test_a_full_disk_is_a_skipped_write_and_the_store_recovers(tmp_path: Path) -> None:
    child = _child(_STORE_ON_A_FULL_DISK, str(tmp_path / "store"))
    out, err = _finish(child)
    assert child.returncode == 0, err[-3000:]
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {
        "before": True,
        "full": False,
        "read while full": True,
        "lock while full": True,  # a failed lease is NO_LOCK: the call goes on
        "after": True,
        "read after": True,
        "errors": 2,
        "invalidated": 2,
    }
    assert len([line for line in err.splitlines() if "put failed" in line]) == 1


# --------------------------------------------------------------------------- locks


_HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
print("UNLOCKED", flush=True)
"""


def _lock(database: Path, seconds: float) -> subprocess.Popen[str]:
    child = _child(_HOLD_LOCK, str(database), str(seconds))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "LOCKED"
    return child


def test_an_entry_is_never_stored_without_its_index_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskStore(tmp_path / "store", timeout=0.2)
    now = time.time()
    tagged = entry(1, now=now, tags=("refunds",))
    child = _lock(store.directory / "index.db", 1.5)
    try:
        with caplog.at_level(logging.WARNING, logger="haikucache"):
            assert store.put(tagged) is False
        # Not stored: it could not have been found by invalidate(tag="refunds").
        assert store.get(tagged.key, now=now) is None
        assert any("put failed" in m and "locked" in m for m in _warnings(caplog))
    finally:
        _finish(child)
    assert store.put(tagged) is True
    assert store.invalidate(tag="refunds") == 1
    assert store.get(tagged.key, now=now) is None
    store.close()


def test_an_index_lock_shorter_than_the_timeout_is_waited_out(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "store", timeout=3.0, strict=True)
    now = time.time()
    child = _lock(store.directory / "index.db", 0.3)
    try:
        started = time.monotonic()
        assert store.put(entry(1, now=now, tags=("refunds",))) is True
        assert time.monotonic() - started >= 0.1  # it did wait for the lock
    finally:
        _finish(child)
    assert store.invalidate(tag="refunds") == 1
    store.close()


def test_a_locked_ledger_keeps_its_entries_until_it_can_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "ledger"
    ledger = DiskLedger(directory, flush_interval=3600, flush_entries=10, timeout=0.1)
    usage = {"input_tokens": 100, "output_tokens": 10}

    def record(count: int) -> None:
        for _ in range(count):
            ledger.record(
                now_entry(None, namespace="n", model="claude-haiku-4-5", cache="miss", usage=usage)
            )

    record(10)  # written
    child = _lock(directory / "cache.db", 1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="haikucache"):
            record(25)  # two flushes fail
            assert summarize(ledger.totals()).calls == 35  # the right totals all along
        assert len([m for m in _warnings(caplog) if "could not write the ledger" in m]) == 1
    finally:
        _finish(child)
    record(5)
    ledger.close()
    reader = DiskLedger(directory)
    try:
        assert summarize(reader.totals()).calls == 40
    finally:
        reader.close()


# --------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("damaged", ["cache.db", "index.db"])
def test_a_corrupt_store_database_is_a_logged_miss(
    damaged: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "store"
    now = time.time()
    with DiskStore(directory, strict=True) as store:
        assert store.put(entry(1, now=now, tags=("t",)))
    for leftover in directory.glob(f"{damaged}-*"):  # -wal, -shm
        leftover.unlink()
    (directory / damaged).write_bytes(b"\x00this is not an SQLite database\n" * 256)
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        store = DiskStore(directory)
        assert store.get(entry(1, now=now).key, now=now) is None
        assert store.put(entry(2, now=now)) is False
    (warning,) = _warnings(caplog)
    assert str(directory) in warning and "DatabaseError" in warning
    store.close()
    with pytest.raises(CacheStoreError, match="not a database"):
        DiskStore(directory, strict=True)


# --------------------------------------------------------------------------- a crash


_WRITER = """
import random, sys, time
from haikucache._store import CacheEntry, DiskStore

store = DiskStore(sys.argv[1], strict=True)
rng = random.Random(7)
for i in range(100_000):
    n = rng.randrange(40)
    size = rng.choice((10, 3_000, 40_000))
    key = "hc1:%032x" % n
    text = (f"{key}|{size}|" * (size // 40 + 2))[:size]
    message = {"type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
               "content": [{"type": "text", "text": text}], "usage": {"output_tokens": size}}
    store.put(CacheEntry.for_message(key=key, namespace="ns", message=message, now=1000.0,
                                     tags=("t%d" % (n % 3), "all")))
    if i == 30:
        print("WRITING", flush=True)
"""


def test_a_process_killed_mid_write_leaves_only_whole_entries(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    child = _child(_WRITER, str(directory))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "WRITING"
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    _finish(child)
    assert child.returncode == -signal.SIGKILL
    with DiskStore(directory, strict=True) as store:  # opens fine; a torn entry would raise
        found = {}
        for n in range(40):
            key = f"hc1:{n:032x}"
            got = store.get(key, now=1000.0)
            if got is not None:
                text = got.response["content"][0]["text"]
                size = got.response["usage"]["output_tokens"]
                assert got.key == key and len(text) == size
                assert text == (f"{key}|{size}|" * (size // 40 + 2))[:size]
                found[key] = got.tags
        assert len(found) > 10
        # Every stored entry is reachable through its tags: invalidation misses none.
        assert sum(store.invalidate(tag=f"t{n}") for n in range(3)) == len(found)
        assert all(store.get(key, now=1000.0) is None for key in found)


# --------------------------------------------------------------------------- Redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is paused, or killed."""
    pytest.importorskip("redis")
    try:
        server = start_redis_server(tmp_path / "redis")
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@contextlib.contextmanager
def _paused(server: RedisServer) -> Iterator[None]:
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_lease_whose_give_back_hit_a_paused_redis_is_free_soon_after(
    own_redis: RedisServer,
) -> None:
    leader_store = RedisStore(own_redis.url, prefix="lease:")
    other_store = RedisStore(own_redis.url, prefix="lease:")  # another process's
    resumed: list[float] = []

    def resume_later() -> None:
        time.sleep(1.5)
        os.kill(own_redis.process.pid, signal.SIGCONT)
        resumed.append(time.monotonic())

    resumer = threading.Thread(target=resume_later)

    def upstream() -> str:
        # Redis pauses for 1.5 s while the call is upstream: the give-back times out.
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        resumer.start()
        return "answer"

    try:
        flight = SingleFlight(leader_store, lease=120, wait=30).run(
            KEY, upstream, check=lambda: None
        )
        assert (flight.role, flight.value) == ("leader", "answer")  # the call went on
        resumer.join(10)
        started = time.monotonic()
        other = SingleFlight(other_store, lease=120, wait=10).run(
            KEY, lambda: "mine", check=lambda: None
        )
        waited = time.monotonic() - started
    finally:
        leader_store.close()
        other_store.close()
    assert other.role == "leader" and waited < 2.0, (other.role, waited)


async def test_an_async_lease_whose_give_back_hit_a_paused_redis_is_free_soon_after(
    own_redis: RedisServer,
) -> None:
    leader_store = RedisStore(own_redis.url, prefix="alease:")
    other_store = RedisStore(own_redis.url, prefix="alease:")  # another process's
    loop = asyncio.get_running_loop()

    async def upstream() -> str:
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        loop.call_later(1.5, os.kill, own_redis.process.pid, signal.SIGCONT)
        return "answer"

    async def nothing() -> None:
        return None

    async def mine() -> str:
        return "mine"

    try:
        flight = await AsyncSingleFlight(leader_store, lease=120, wait=30).arun(
            KEY, upstream, check=nothing
        )
        assert (flight.role, flight.value) == ("leader", "answer")
        await asyncio.sleep(1.6)  # resumed by now
        started = time.monotonic()
        other = await AsyncSingleFlight(other_store, lease=120, wait=10).arun(
            KEY, mine, check=nothing
        )
        waited = time.monotonic() - started
    finally:
        await leader_store.aclose()
        await other_store.aclose()
    assert other.role == "leader" and waited < 2.0, (other.role, waited)


def test_a_paused_redis_is_a_bounded_miss_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(own_redis.url, prefix="p:", socket_timeout=0.3, cooldown=0.5)
    now = time.time()
    first, second = entry(1, now=now), entry(2, now=now)
    assert store.put(first)
    with caplog.at_level(logging.WARNING, logger="haikucache"), _paused(own_redis):
        started = time.monotonic()
        assert store.get(first.key, now=now) is None
        assert store.put(second) is False
        assert store.try_lock("flight", ttl=5) == NO_LOCK
        assert time.monotonic() - started < 1.5  # one socket timeout, then the cooldown
    assert any("get failed" in m and "Timeout" in m for m in _warnings(caplog))
    time.sleep(0.6)  # past the cooldown
    assert store.put(second) is True
    # Each reply is the one asked for: the reply the pause held back is never read as
    # the answer to a later command.
    got_first, got_second = store.get(first.key, now=now), store.get(second.key, now=now)
    assert got_first is not None and got_first.key == first.key
    assert got_second is not None and got_second.key == second.key

    strict = RedisStore(own_redis.url, prefix="p:", socket_timeout=0.3, strict=True)
    with _paused(own_redis), pytest.raises(CacheStoreError, match="Timeout"):
        strict.get(first.key, now=now)
    strict.close()
    store.close()


async def test_a_paused_redis_is_a_bounded_miss_for_async_callers(
    own_redis: RedisServer,
) -> None:
    store = RedisStore(own_redis.url, prefix="pa:", socket_timeout=0.3, cooldown=0.5)
    now = time.time()
    first, second = entry(1, now=now), entry(2, now=now)
    assert await store.aput(first)
    with _paused(own_redis):
        started = time.monotonic()
        assert await store.aget(first.key, now=now) is None
        assert await store.aput(second) is False
        assert time.monotonic() - started < 1.5
    await asyncio.sleep(0.6)
    assert await store.aput(second) is True
    got_first, got_second = (
        await store.aget(first.key, now=now),
        await store.aget(second.key, now=now),
    )
    assert got_first is not None and got_first.key == first.key
    assert got_second is not None and got_second.key == second.key
    await store.aclose()


def test_a_killed_redis_is_a_miss_and_writes_work_once_it_is_back(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    store = RedisStore(own_redis.url, prefix="k:", cooldown=0.3)
    now = time.time()
    assert store.put(entry(1, now=now))  # a pooled connection, about to break
    own_redis.process.kill()
    own_redis.process.wait(10)
    started = time.monotonic()
    assert store.get(entry(1, now=now).key, now=now) is None
    assert store.put(entry(2, now=now)) is False
    assert time.monotonic() - started < 1.0
    # (The new server starts empty: no persistence.)
    with start_redis_server(tmp_path / "redis-again", port=own_redis.port):
        time.sleep(0.4)  # past the cooldown
        assert store.put(entry(2, now=now)) is True
        got = store.get(entry(2, now=now).key, now=now)
        assert got is not None and got.key == entry(2, now=now).key
        store.close()


def test_a_paused_redis_never_hangs_the_batch_journal(own_redis: RedisServer) -> None:
    import redis

    journal = RedisBatchJournal(own_redis.url, prefix="j:", socket_timeout=0.3)
    journal.begin(JournalRecord("hcj", "submitting", "http://x", 0, 1.0), b"")
    outcome: list[Any] = []

    def read() -> None:
        try:
            outcome.append(journal.records())
        except Exception as exc:
            outcome.append(exc)

    with _paused(own_redis):
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(3)
        assert not reader.is_alive(), "the journal hung on a paused Redis"
    (failure,) = outcome
    # A journal write must be durable, so it fails loudly (the batcher handles that), and
    # quickly.
    assert isinstance(failure, redis.exceptions.TimeoutError)
    assert [r.token for r in journal.records()] == ["hcj"]
    journal.close()
