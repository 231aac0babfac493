"""Response stores: one behaviour, three backends (memory, diskcache, a real Redis).

Every store runs the same suite on a ManualClock. Failure modes are real too: bytes torn or
altered on disk and in Redis, a Redis that is down (a closed port) and comes back, a disk that
fills up (SQLite's page limit), and eight processes sharing one DiskStore.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from haikucache import CacheStoreError, ConfigurationError, ManualClock, MissingDependencyError
from haikucache._store import (
    NO_LOCK,
    AsyncResponseStore,
    CacheEntry,
    DiskStore,
    MemoryStore,
    PartitionMember,
    RedisStore,
    ResponseStore,
    decode_entry,
    encode_entry,
    is_storable,
)
from haikucache.testing import RedisServer, start_redis_server
from haikucache.testing._redis import free_port

KINDS = ["memory", "disk", "redis"]


# --------------------------------------------------------------------------- a real Redis


def _redis_binary() -> None:
    """Skip (fail in CI) where there is no redis-server or redis client."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; CI installs it in .ci/run")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis")


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    """A plain client, to look at (or damage) what the store wrote."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


# --------------------------------------------------------------------------- stores


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


Make = Callable[..., Any]


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """``make_store(kind, **options)``: a fresh, strict store (failures raise), closed after."""
    made: list[Any] = []

    def make(kind: str, **options: Any) -> Any:
        options.setdefault("strict", True)
        store: Any
        if kind == "memory":
            store = MemoryStore(**options)
        elif kind == "disk":
            store = DiskStore(tmp_path / f"responses-{len(made)}", **options)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            # A prefix of its own: tests share the server, never each other's keys.
            store = RedisStore(server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", **options)
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, RedisStore):
            store.clear()  # the server is shared by the whole session
        store.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store(kind: str, make_store: Make) -> Any:
    return make_store(kind)


def message(text: str = "Refunds take seven days.", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_01Store",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4100,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 7,
            "service_tier": "standard",
        },
    }
    body.update(overrides)
    return body


def entry(
    key: str = "hc1:" + "a" * 32,
    *,
    now: float,
    ttl: float | None = None,
    namespace: str = "key-tenant1",
    tags: tuple[str, ...] = (),
    partition: str | None = None,
    text: str | None = None,
    answer: str = "Refunds take seven days.",
) -> CacheEntry:
    return CacheEntry.for_message(
        key=key,
        namespace=namespace,
        message=message(answer),
        now=now,
        ttl=ttl,
        cost_usd=0.00042,
        baseline_usd=0.0041,
        tags=tags,
        partition=partition,
        text=text,
    )


def key(n: int) -> str:
    return f"hc1:{n:032x}"


# --------------------------------------------------------------------------- the shared suite


def test_every_store_satisfies_both_protocols(store: Any) -> None:
    assert isinstance(store, ResponseStore)
    assert isinstance(store, AsyncResponseStore)


def test_put_then_get_returns_the_entry(store: Any, kind: str, clock: ManualClock) -> None:
    stored = entry(now=clock.now(), ttl=3600, tags=("v1",))
    assert store.put(stored)
    got = store.get(stored.key, now=clock.now())
    assert got is not None
    assert replace(got, hits=0) == stored
    assert got.response == message()
    assert store.get(key(999), now=clock.now()) is None
    stats = store.stats()
    assert (stats.entries, stats.hits, stats.misses, stats.errors) == (1, 1, 1, 0)
    assert stats.bytes > 0


def test_hits_are_counted_per_entry(store: Any, kind: str, clock: ManualClock) -> None:
    stored = entry(now=clock.now())
    store.put(stored)
    hits = [store.get(stored.key, now=clock.now()).hits for _ in range(3)]
    # A DiskStore writes nothing on reads (readers in many processes never queue).
    assert hits == ([0, 0, 0] if kind == "disk" else [1, 2, 3])
    assert store.stats().hits == 3


def test_a_returned_answer_is_the_callers_own_copy(store: Any, clock: ManualClock) -> None:
    stored = entry(now=clock.now())
    store.put(stored)
    first = store.get(stored.key, now=clock.now())
    first.response["content"][0]["text"] = "tampered"
    first.response["usage"].clear()
    assert store.get(stored.key, now=clock.now()).response == message()


def test_ttl_is_read_on_the_callers_clock(store: Any, clock: ManualClock) -> None:
    stored = entry(now=clock.now(), ttl=3600)
    store.put(stored)
    clock.advance(3599)
    assert store.get(stored.key, now=clock.now()) is not None
    clock.advance(1)
    assert store.get(stored.key, now=clock.now()) is None
    assert store.stats().misses == 1


def test_an_entry_without_ttl_never_expires(store: Any, clock: ManualClock) -> None:
    stored = entry(now=clock.now())
    store.put(stored)
    clock.advance(10 * 365 * 86400)
    assert store.get(stored.key, now=clock.now()) is not None


def test_an_already_expired_entry_is_not_stored(store: Any, clock: ManualClock) -> None:
    stored = replace(entry(now=clock.now()), expires_at=clock.now())
    assert store.put(stored) is False
    assert store.get(stored.key, now=clock.now() - 1) is None


def test_put_replaces_the_entry_under_the_same_key(store: Any, clock: ManualClock) -> None:
    store.put(entry(now=clock.now(), answer="first", tags=("old",)))
    store.put(entry(now=clock.now(), answer="second"))
    got = store.get(entry(now=0).key, now=clock.now())
    assert got.response["content"][0]["text"] == "second"
    assert store.stats().entries == 1
    # The old tag no longer reaches the entry stored again without it.
    assert store.invalidate(tag="old") == 0
    assert store.get(got.key, now=clock.now()) is not None


def test_delete(store: Any, clock: ManualClock) -> None:
    stored = entry(now=clock.now())
    store.put(stored)
    assert store.delete(stored.key) is True
    assert store.delete(stored.key) is False
    assert store.get(stored.key, now=clock.now()) is None


def test_invalidate_by_key_tag_and_namespace(store: Any, clock: ManualClock) -> None:
    now = clock.now()
    store.put(entry(key(1), now=now, namespace="a", tags=("prompt-v1", "faq")))
    store.put(entry(key(2), now=now, namespace="a", tags=("prompt-v1",)))
    store.put(entry(key(3), now=now, namespace="b", tags=("prompt-v1",)))
    store.put(entry(key(4), now=now, namespace="b"))
    store.put(entry(key(5), now=now, namespace="c", tags=("faq",)))

    def alive() -> set[int]:
        return {n for n in range(1, 6) if store.get(key(n), now=now) is not None}

    assert store.invalidate(key=key(4)) == 1
    assert store.invalidate(key=key(4)) == 0
    assert alive() == {1, 2, 3, 5}
    # Filters combine: a tag within one namespace.
    assert store.invalidate(tag="prompt-v1", namespace="b") == 1
    assert alive() == {1, 2, 5}
    assert store.invalidate(tag="prompt-v1") == 2
    assert alive() == {5}
    assert store.invalidate(namespace="c") == 1
    assert alive() == set()
    assert store.invalidate(tag="no-such-tag") == 0
    assert store.invalidate(key=key(5), namespace="other") == 0


def test_invalidate_needs_a_filter(store: Any) -> None:
    with pytest.raises(ConfigurationError, match="clear"):
        store.invalidate()


def test_a_namespace_invalidation_spares_other_tenants(store: Any, clock: ManualClock) -> None:
    now = clock.now()
    for n in range(20):
        store.put(entry(key(n), now=now, namespace="even" if n % 2 == 0 else "odd"))
    assert store.invalidate(namespace="even") == 10
    assert [n for n in range(20) if store.get(key(n), now=now)] == list(range(1, 20, 2))


def test_partition_members_with_vectors(store: Any, clock: ManualClock) -> None:
    now = clock.now()
    partition = "hc1p:" + "b" * 32
    store.put(
        entry(key(1), now=now, partition=partition, text="refund policy?"), vector=b"\x01\x02"
    )
    store.put(entry(key(2), now=now, ttl=60, partition=partition, text="how do refunds work?"))
    store.put(entry(key(3), now=now, partition="hc1p:other", text="unrelated"))
    store.put(entry(key(4), now=now))
    members = sorted(store.iter_partition(partition, now=now), key=lambda m: m.key)
    assert members == [
        PartitionMember(key(1), "refund policy?", b"\x01\x02", None),
        PartitionMember(key(2), "how do refunds work?", None, now + 60),
    ]
    clock.advance(60)
    assert [m.key for m in store.iter_partition(partition, now=clock.now())] == [key(1)]
    store.delete(key(1))
    assert list(store.iter_partition(partition, now=clock.now())) == []
    assert list(store.iter_partition("hc1p:none", now=clock.now())) == []


def test_leases(store: Any) -> None:
    token = store.try_lock("flight", ttl=30)
    assert token is not None and token != NO_LOCK
    assert store.try_lock("flight", ttl=30) is None
    assert store.try_lock("other", ttl=30) is not None
    assert store.unlock("flight", "not-the-token") is False
    assert store.unlock("flight", token) is True
    assert store.unlock("flight", token) is False
    again = store.try_lock("flight", ttl=30)
    assert again is not None and again != token


def test_a_lease_expires_so_a_crashed_holder_blocks_nobody(store: Any) -> None:
    first = store.try_lock("flight", ttl=0.05)
    assert first is not None
    time.sleep(0.12)
    second = store.try_lock("flight", ttl=30)
    assert second is not None
    # The late first holder cannot release the new holder's lease.
    assert store.unlock("flight", first) is False
    assert store.try_lock("flight", ttl=30) is None


def test_a_lease_is_renewed_by_its_holder_only(store: Any) -> None:
    token = store.try_lock("flight", ttl=0.2)
    assert token is not None
    assert store.renew("flight", token, ttl=5) is True
    time.sleep(0.3)  # past the first grant: the renewal keeps it held
    assert store.try_lock("flight", ttl=5) is None
    assert store.renew("flight", "someone-else", ttl=5) is False
    assert store.unlock("flight", token) is True
    assert store.renew("flight", token, ttl=5) is False  # given back: nothing to renew
    assert store.renew("flight", NO_LOCK, ttl=5) is True  # a failed store's token: a no-op
    with pytest.raises(ConfigurationError):
        store.renew("flight", token, ttl=0)


async def test_a_lease_is_renewed_by_async_holders_too(store: Any) -> None:
    token = await store.atry_lock("flight", ttl=0.2)
    assert token is not None
    assert await store.arenew("flight", token, ttl=5) is True
    await asyncio.sleep(0.3)
    assert await store.atry_lock("flight", ttl=5) is None
    assert await store.aunlock("flight", token) is True
    assert await store.arenew("flight", token, ttl=5) is False
    await store.aclose()


def test_clear(store: Any, clock: ManualClock) -> None:
    now = clock.now()
    for n in range(5):
        store.put(entry(key(n), now=now, tags=("t",), partition="hc1p:p", text=str(n)))
    store.clear()
    assert store.stats().entries == 0
    assert all(store.get(key(n), now=now) is None for n in range(5))
    assert list(store.iter_partition("hc1p:p", now=now)) == []
    assert store.invalidate(tag="t") == 0
    store.put(entry(key(9), now=now))
    assert store.get(key(9), now=now) is not None


def test_a_store_is_a_context_manager(kind: str, make_store: Make, clock: ManualClock) -> None:
    with make_store(kind) as store:
        store.put(entry(now=clock.now()))
        assert store.get(entry(now=0).key, now=clock.now()) is not None


async def test_async_twins(store: Any, clock: ManualClock) -> None:
    now = clock.now()
    try:
        stored = entry(now=now, ttl=60, tags=("t",), partition="hc1p:x", text="q")
        assert await store.aput(stored, vector=b"v")
        got = await store.aget(stored.key, now=now)
        assert got is not None and got.response == message()
        assert await store.aget(key(77), now=now) is None
        assert [m.key async for m in store.aiter_partition("hc1p:x", now=now)] == [stored.key]
        token = await store.atry_lock("k", ttl=5)
        assert token is not None and await store.atry_lock("k", ttl=5) is None
        assert await store.aunlock("k", token)
        assert await store.ainvalidate(tag="t") == 1
        assert await store.aput(stored)
        assert await store.adelete(stored.key)
        assert (await store.astats()).hits == 1
        await store.aput(stored)
        await store.aclear()
        assert await store.aget(stored.key, now=now) is None
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- entries on the wire


def test_entries_round_trip_and_hold_only_the_answer(clock: ManualClock) -> None:
    stored = entry(now=clock.now(), ttl=5, tags=("a", "b"), partition="hc1p:p", text="q")
    data = encode_entry(stored)
    assert decode_entry(data, key=stored.key) == stored
    payload = json.loads(data[13:])
    assert set(payload) == {
        "key",
        "namespace",
        "response",
        "usage",
        "cost_usd",
        "baseline_usd",
        "model",
        "created_at",
        "expires_at",
        "tags",
        "hits",
        "partition",
        "text",
    }


def test_every_truncation_and_every_flipped_byte_is_detected(clock: ManualClock) -> None:
    stored = entry(now=clock.now(), answer="Grüße 🌍")
    data = encode_entry(stored)
    for length in range(len(data)):
        with pytest.raises(ValueError):
            decode_entry(data[:length])
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x20
        with pytest.raises(ValueError):
            decode_entry(bytes(damaged))
    with pytest.raises(ValueError, match="under"):
        decode_entry(data, key=key(1))


def test_an_entry_of_another_format_is_unreadable(clock: ManualClock) -> None:
    data = bytearray(encode_entry(entry(now=clock.now())))
    data[0] = 2
    with pytest.raises(ValueError, match="format"):
        decode_entry(bytes(data))


def test_an_entry_must_be_json(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode_entry(replace(entry(now=clock.now()), cost_usd=float("nan")))


def test_for_message_reads_usage_and_model(clock: ManualClock) -> None:
    made = entry(now=clock.now(), ttl=60)
    assert made.usage == message()["usage"]
    assert made.model == "claude-haiku-4-5"
    assert made.expires_at == clock.now() + 60
    assert made.lifetime == 60
    assert made.expired(clock.now() + 60) and not made.expired(clock.now() + 59.9)


@pytest.mark.parametrize(
    ("stop_reason", "storable"),
    [
        ("end_turn", True),
        ("tool_use", True),
        ("stop_sequence", True),
        ("max_tokens", False),
        ("pause_turn", False),
        ("refusal", False),
        (None, False),
    ],
)
def test_only_complete_answers_are_storable(stop_reason: str | None, storable: bool) -> None:
    assert is_storable(message(stop_reason=stop_reason)) is storable
    assert is_storable({"type": "error", "error": {"type": "overloaded_error"}}) is False


# --------------------------------------------------------------------------- eviction


def test_memory_store_evicts_the_least_recently_used(make_store: Make, clock: ManualClock) -> None:
    store = make_store("memory", max_entries=5)
    now = clock.now()
    for n in range(5):
        store.put(entry(key(n), now=now, tags=("t",)))
    store.get(key(0), now=now)  # used: now the most recent
    for n in range(5, 8):
        store.put(entry(key(n), now=now, tags=("t",)))
    assert {n for n in range(8) if store.get(key(n), now=now)} == {0, 5, 6, 7, 4}
    stats = store.stats()
    assert (stats.entries, stats.evictions) == (5, 3)
    assert store.invalidate(tag="t") == 5


def test_memory_store_byte_limit(make_store: Make, clock: ManualClock) -> None:
    store = make_store("memory", max_entries=None, max_bytes=20_000)
    for n in range(20):
        store.put(entry(key(n), now=clock.now(), answer="x" * 2000))
    stats = store.stats()
    assert stats.bytes <= 20_000 and stats.evictions == 20 - stats.entries > 0


def test_disk_store_evicts_the_oldest_at_its_size_limit(
    make_store: Make, clock: ManualClock
) -> None:
    store = make_store("disk", size_limit=200_000)
    now = clock.now()
    for n in range(300):
        store.put(
            entry(key(n), now=now, answer=f"{n} " + "x" * 2000, partition="hc1p:p", text=str(n)),
            vector=b"\x00" * 64,
        )
    stats = store.stats()
    assert stats.evictions > 0 and stats.errors == 0
    assert stats.bytes <= 200_000 + 16 * 4096
    assert stats.entries == 300 - stats.evictions
    assert store.get(key(0), now=now) is None
    assert store.get(key(299), now=now) is not None
    # The partition index forgets evicted entries too (swept as they go).
    members = {m.key for m in store.iter_partition("hc1p:p", now=now)}
    assert key(299) in members and len(members) < 300


def test_redis_under_maxmemory(make_store: Make, redis_client: Any, clock: ManualClock) -> None:
    store = make_store("redis", strict=False)
    now = clock.now()
    try:
        redis_client.config_set("maxmemory", "3mb")
        redis_client.config_set("maxmemory-policy", "volatile-lru")
        for n in range(3000):
            store.put(entry(key(n), now=now, ttl=3600, answer="x" * 2000))
        stats = store.stats()
        # Redis evicted answers (they have TTLs); every write succeeded, the newest are there.
        assert stats.errors == 0 and stats.evictions > 0
        assert stats.entries < 3000
        assert store.get(key(2999), now=now) is not None
        # A full Redis that evicts nothing refuses writes: a logged failure, never an
        # exception; reads go on, without bumping the hit counter.
        redis_client.config_set("maxmemory-policy", "noeviction")
        refused = [
            store.put(entry(key(10_000 + n), now=now, answer="y" * 5000)) for n in range(400)
        ]
        assert False in refused
        assert store.stats().errors > 0
        assert store.get(key(2999), now=now) is not None
    finally:
        redis_client.config_set("maxmemory", "0")
        redis_client.config_set("maxmemory-policy", "noeviction")
        store.clear()


def test_redis_reclaims_expired_answers_itself(
    make_store: Make, redis_client: Any, clock: ManualClock
) -> None:
    store = make_store("redis")
    now = clock.now()
    store.put(entry(key(1), now=now, ttl=60, tags=("t",)))
    store.put(entry(key(2), now=now))
    # Logical expiry answers on the engine's clock; Redis's own TTL frees the memory.
    assert 0 < redis_client.pttl(f"{store.prefix}e:{key(1)}") <= 60_000
    assert redis_client.pttl(f"{store.prefix}e:{key(2)}") == -1
    assert 0 < redis_client.pttl(f"{store.prefix}t:t") <= 60_000
    # An index set holding an entry that never expires never expires either.
    assert redis_client.pttl(f"{store.prefix}ns:key-tenant1") == -1
    store.put(entry(key(3), now=now, ttl=0.05))
    time.sleep(0.1)
    assert redis_client.exists(f"{store.prefix}e:{key(3)}") == 0


# --------------------------------------------------------------------------- failures


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _write_raw(kind: str, store: Any, redis_client: Any, name: str, data: Any) -> None:
    """What a torn write, a bit flip or another program could leave behind."""
    if kind == "disk":
        import diskcache

        with diskcache.Cache(str(store.directory)) as raw:
            raw.set(name, data)
    else:
        redis_client.hset(f"{store.prefix}e:{name}", mapping={"v": data, "h": 0})


@pytest.fixture
def raw_redis(kind: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("redis_client") if kind == "redis" else None


@pytest.mark.parametrize("kind", ["disk", "redis"])
@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "other_key", "not_bytes"])
def test_a_corrupt_entry_is_a_logged_miss(
    kind: str,
    damage: str,
    make_store: Make,
    raw_redis: Any,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store(kind, strict=False)
    good = encode_entry(entry(now=clock.now()))
    damaged: Any = {
        "truncated": good[: len(good) // 2],
        "flipped": good[:40] + bytes([good[40] ^ 1]) + good[41:],
        "garbage": b"\x00garbage",
        "other_key": encode_entry(entry(key(5), now=clock.now())),
        "not_bytes": "a string",
    }[damage]
    name = entry(now=0).key
    _write_raw(kind, store, raw_redis, name, damaged)
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        assert store.get(name, now=clock.now()) is None
        assert store.get(name, now=clock.now()) is None
    assert len([m for m in _warnings(caplog) if "corrupt" in m]) == 1
    stats = store.stats()
    assert (stats.errors, stats.misses, stats.hits) == (2, 2, 0)
    # The miss goes upstream; the fresh answer overwrites the damage.
    store.put(entry(now=clock.now()))
    assert store.get(name, now=clock.now()) is not None

    strict = make_store(kind)
    _write_raw(kind, strict, raw_redis, name, damaged)
    with pytest.raises(CacheStoreError, match="corrupt"):
        strict.get(name, now=clock.now())


def test_redis_down_is_a_logged_miss_and_recovers(
    make_store: Make, tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    _redis_binary()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = RedisStore(url, cooldown=0.0, socket_timeout=0.5)
    now = clock.now()
    try:
        with caplog.at_level(logging.DEBUG, logger="haikucache"):
            assert [store.get(key(n), now=now) for n in range(5)] == [None] * 5
            assert store.put(entry(now=now)) is False
            assert store.try_lock("flight", ttl=5) == NO_LOCK  # never make a call wait
            assert store.unlock("flight", NO_LOCK) is True
            assert store.delete(key(1)) is False
            assert store.invalidate(tag="t") == 0
            assert list(store.iter_partition("hc1p:p", now=now)) == []
        warnings = _warnings(caplog)
        assert len([m for m in warnings if "get failed" in m]) == 1  # once, not five times
        assert "ConnectionError" in warnings[0]
        stats = store.stats()
        assert stats.misses == 5 and stats.errors >= 11

        server = start_redis_server(tmp_path / "late-redis", port=port)
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="haikucache"):
                assert store.put(entry(now=now)) is True
                assert store.get(entry(now=0).key, now=now) is not None
            assert any("works again" in r.getMessage() for r in caplog.records)
        finally:
            store.close()
            server.stop()
    finally:
        store.close()


def test_redis_down_strict_raises() -> None:
    _redis_binary()
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", strict=True)
    try:
        with pytest.raises(CacheStoreError, match="get failed") as info:
            store.get(key(1), now=0.0)
        assert info.value.__cause__ is not None
    finally:
        store.close()


def test_after_a_connection_failure_redis_is_not_retried_during_the_cooldown() -> None:
    _redis_binary()
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", cooldown=60.0)
    try:
        started = time.perf_counter()
        assert [store.get(key(n), now=0.0) for n in range(100)] == [None] * 100
        assert time.perf_counter() - started < 0.5
        stats = store.stats()
        assert stats.misses == 100
        assert stats.errors == 1  # the first attempt; the others did not touch the network
    finally:
        store.close()


def test_a_full_disk_is_a_logged_failed_write(
    make_store: Make, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite's page limit fails writes with SQLITE_FULL, exactly as a full disk does.
    store = make_store("disk", strict=False, settings={"sqlite_max_page_count": 40})
    now = clock.now()
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        written = [store.put(entry(key(n), now=now, answer="x" * 20_000)) for n in range(12)]
    assert written[0] is True and written[-1] is False
    assert [m for m in _warnings(caplog) if "full" in m] == [
        m for m in _warnings(caplog) if "put failed" in m
    ]
    assert len(_warnings(caplog)) == 1
    assert store.stats().errors == written.count(False)
    assert store.get(key(0), now=now) is not None  # reads go on

    strict = make_store("disk", settings={"sqlite_max_page_count": 40})

    def fill() -> None:
        for n in range(12):
            strict.put(entry(key(n), now=now, answer="x" * 20_000))

    with pytest.raises(CacheStoreError, match="full"):
        fill()


def test_a_disk_store_is_private_to_the_user(make_store: Make, clock: ManualClock) -> None:
    store = make_store("disk")
    now = clock.now()
    store.put(entry(now=now, tags=("t",), partition="hc1p:p", text="q"), vector=b"v")
    store.put(entry(key(2), now=now, answer="x" * 100_000))  # large values stay private too
    token = store.try_lock("flight", ttl=5)
    store.unlock("flight", token)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    paths = list(store.directory.rglob("*"))
    assert {p.name for p in paths} >= {"cache.db", "index.db"}
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


class _Trap:
    """Unpickling it opens (creates) a file: proof that a pickle was run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("value", ["trap", "plain dict"])
def test_a_pickled_value_is_a_corrupt_entry_never_unpickled(
    value: str, tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    import diskcache

    directory = tmp_path / "shared"
    DiskStore(directory).close()
    marker = tmp_path / "code-ran"
    # Someone who can write to a shared cache directory stores a pickle under a key.
    with diskcache.Cache(str(directory)) as raw:
        raw.set(key(1), _Trap(marker) if value == "trap" else {"not": "bytes"}, tag="ns")
    store = DiskStore(directory)
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        assert store.get(key(1), now=clock.now()) is None
    assert not marker.exists()
    (warning,) = _warnings(caplog)
    assert "corrupt" in warning and "pickled" in warning
    assert store.stats().errors == 1
    assert store.invalidate(key=key(1)) == 1  # and it can be removed
    assert not marker.exists()
    store.put(entry(key(1), now=clock.now()))
    assert store.get(key(1), now=clock.now()) is not None
    store.close()

    strict = DiskStore(directory, strict=True)
    with diskcache.Cache(str(directory)) as raw:
        raw.set(key(2), _Trap(marker))
    with pytest.raises(CacheStoreError, match="corrupt"):
        strict.get(key(2), now=clock.now())
    assert not marker.exists()
    strict.close()


def test_an_existing_directory_keeps_its_mode(tmp_path: Path, clock: ManualClock) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with DiskStore(shared) as store:
        store.put(entry(now=clock.now(), tags=("t",)))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    for path in shared.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # What haikucache creates is private: the directory and every parent it had to make;
    # the parent that was there is left alone.
    before = stat.S_IMODE(tmp_path.stat().st_mode)
    with DiskStore(tmp_path / "new" / "deeper" / "store") as store:
        store.put(entry(now=clock.now()))
    for path in (tmp_path / "new", tmp_path / "new" / "deeper", store.directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(tmp_path.stat().st_mode) == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_leases_from_a_thread_per_request_do_not_leak_file_descriptors(
    make_store: Make,
) -> None:
    store = make_store("disk")

    def request(n: int) -> None:
        token = store.try_lock(f"flight-{n}", ttl=5)
        assert token is not None
        assert store.unlock(f"flight-{n}", token)
        assert list(store.iter_partition("hc1p:p", now=0.0)) == []

    def open_files() -> int:
        return len(list(Path("/proc/self/fd").iterdir()))

    request(0)
    before = open_files()
    for n in range(1, 101):
        thread = threading.Thread(target=request, args=(n,))
        thread.start()
        thread.join()
    assert open_files() - before < 5


def test_disk_store_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HAIKUCACHE_HOME", str(tmp_path / "home"))
    with DiskStore() as store:
        assert store.directory == tmp_path / "home" / "responses"


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        MemoryStore(max_entries=0)
    with pytest.raises(ConfigurationError):
        MemoryStore(default_ttl=-1)
    with pytest.raises(ConfigurationError):
        DiskStore(tmp_path / "d", eviction_policy="random")
    with pytest.raises(ConfigurationError):
        MemoryStore().try_lock("x", ttl=0)
    # Settings that would unmake the store's guarantees (private files, counted evictions,
    # nothing unpickled).
    with pytest.raises(ConfigurationError, match="disk_min_file_size"):
        DiskStore(tmp_path / "e", settings={"disk_min_file_size": 0})
    with pytest.raises(ConfigurationError, match="disk"):
        DiskStore(tmp_path / "e", settings={"disk": object})


def test_redis_repr_hides_the_password() -> None:
    pytest.importorskip("redis")
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0")
    try:
        assert "s3cret" not in repr(store)
    finally:
        store.close()


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'haikucache\[redis\]'"):
        RedisStore()


# --------------------------------------------------------------------------- many processes

_WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    from haikucache._store import CacheEntry, DiskStore

    directory, worker, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    store = DiskStore(directory, strict=True, size_limit=300_000, timeout=30)
    rng = random.Random(worker)
    time.sleep(max(0.0, start_at - time.time()))
    checked = 0
    for i in range(250):
        key = f"hc1:{rng.randrange(40):032x}"
        if rng.random() < 0.4:
            size = rng.randrange(1, 4000)
            message = {
                "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                "content": [{"type": "text", "text": (key * (size // len(key) + 1))[:size]}],
                "usage": {"output_tokens": size, "writer": worker},
            }
            tags = ("even",) if size % 2 == 0 else ()
            store.put(CacheEntry.for_message(key=key, namespace="shared", message=message,
                                             now=1000.0, tags=tags))
        else:
            got = store.get(key, now=1000.0)
            if got is not None:
                text = got.response["content"][0]["text"]
                # A torn or mixed entry would not be a prefix of the key repeated, of the
                # length its own usage claims.
                assert got.key == key, (got.key, key)
                assert len(text) == got.response["usage"]["output_tokens"] == got.usage["output_tokens"]
                assert text == (key * (len(text) // len(key) + 1))[: len(text)]
                checked += 1
    stats = store.stats()
    store.close()
    print(json.dumps({"errors": stats.errors, "hits": stats.hits, "checked": checked}))
    """
)


def test_eight_processes_share_one_disk_store(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    start_at = time.time() + 2.0
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(directory), str(worker), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for worker in range(8)
    ]
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err.decode()[-3000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert all(r["errors"] == 0 for r in reports)
    assert sum(r["checked"] for r in reports) > 100
    with DiskStore(directory) as store:
        assert 0 < store.stats().entries <= 40
