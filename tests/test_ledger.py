"""Prices, the counterfactual, savings by cause, and a ledger that survives across processes."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from haikucache import (
    CacheStoreError,
    ConfigurationError,
    DiskLedger,
    MemoryLedger,
    TokenCounts,
    lookup_model,
    price_usage,
)
from haikucache._ledger import LedgerEntry, now_entry, summarize

M = 1_000_000


def usage(inp: int = 0, w5: int = 0, w1: int = 0, read: int = 0, out: int = 0) -> dict[str, object]:
    return {
        "input_tokens": inp,
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "output_tokens": out,
        "service_tier": "standard",
    }


@pytest.mark.parametrize(
    ("model", "inp", "out"),
    [
        ("claude-haiku-4-5", 1.00, 5.00),
        ("claude-sonnet-4-5", 3.00, 15.00),
        ("claude-opus-4-5", 5.00, 25.00),
        ("claude-opus-4-1", 15.00, 75.00),
    ],
)
def test_price_table_matches_the_reference(model: str, inp: float, out: float) -> None:
    info = lookup_model(model)
    assert info is not None
    assert (info.input_usd_per_mtok, info.output_usd_per_mtok) == (inp, out)
    assert info.cache_write_5m_usd_per_mtok == pytest.approx(inp * 1.25)
    assert info.cache_write_1h_usd_per_mtok == pytest.approx(inp * 2)
    assert info.cache_read_usd_per_mtok == pytest.approx(inp * 0.1)


def test_haiku_limits() -> None:
    info = lookup_model("claude-haiku-4-5-20251001")
    assert info is not None
    assert (info.max_output_tokens, info.context_window, info.min_cacheable_tokens) == (
        64_000,
        200_000,
        4096,
    )


@pytest.mark.parametrize(
    ("tokens", "batch", "billed"),
    [
        (usage(inp=M), False, 1.00),
        (usage(out=M), False, 5.00),
        (usage(w5=M), False, 1.25),
        (usage(w1=M), False, 2.00),
        (usage(read=M), False, 0.10),
        (usage(inp=M, out=M), True, 3.00),
        # Batch and cache discounts stack (reference §2, DERIVED rates).
        (usage(w5=M), True, 0.625),
        (usage(w1=M), True, 1.00),
        (usage(read=M), True, 0.05),
    ],
)
def test_haiku_billing(tokens: dict[str, object], batch: bool, billed: float) -> None:
    assert price_usage("claude-haiku-4-5", tokens, batch=batch).billed_usd == pytest.approx(billed)


def test_savings_add_up_to_baseline_minus_billed() -> None:
    cost = price_usage(
        "claude-haiku-4-5", usage(inp=100, w5=5000, w1=3000, read=20000, out=400), batch=True
    )
    baseline = (100 + 5000 + 3000 + 20000) * 1e-6 + 400 * 5e-6
    assert cost.baseline_usd == pytest.approx(baseline)
    assert sum(cost.savings.values()) == pytest.approx(cost.baseline_usd - cost.billed_usd)
    assert cost.savings["prompt_cache_read"] == pytest.approx(20000 * 0.9e-6)
    assert cost.savings["cache_write_premium"] == pytest.approx(-(5000 * 0.25e-6 + 3000 * 1e-6))
    assert cost.savings["batch_discount"] == pytest.approx(cost.billed_usd)


def test_a_response_cache_hit_saves_the_whole_baseline() -> None:
    cost = price_usage("claude-haiku-4-5", usage(inp=1000, out=100), response_cache_hit=True)
    assert cost.billed_usd == 0
    assert cost.savings["response_cache"] == pytest.approx(1000e-6 + 500e-6)


def test_usage_without_the_ttl_split_counts_writes_as_five_minutes() -> None:
    counts = TokenCounts.from_usage(
        {"input_tokens": 1, "cache_creation_input_tokens": 10, "output_tokens": 2}
    )
    assert (counts.cache_write_5m, counts.cache_write_1h) == (10, 0)


def test_unknown_models_cost_nothing_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MemoryLedger()
    caplog.set_level(logging.WARNING, logger="haikucache")
    for _ in range(3):
        ledger.record(
            now_entry(None, namespace="n", model="gateway-model", cache="miss", usage=usage(inp=10))
        )
    total = summarize(ledger.totals())
    assert total.calls == 3 and total.unpriced_calls == 3 and total.billed_usd == 0
    assert [r.getMessage() for r in caplog.records].count(
        "haikucache: no price known for model 'gateway-model'; its calls are recorded with $0"
    ) == 1


def test_totals_per_namespace_model_and_day() -> None:
    ledger = MemoryLedger()
    day = 1_763_632_800.0  # 2025-11-20T10:00Z

    class At:
        def __init__(self, t: float) -> None:
            self.t = t

        def now(self) -> float:
            return self.t

    for t, ns, model in [
        (day, "a", "claude-haiku-4-5"),
        (day, "a", "claude-haiku-4-5"),
        (day, "b", "claude-haiku-4-5"),
        (day + 86400, "a", "claude-haiku-4-5"),
    ]:
        ledger.record(
            now_entry(At(t), namespace=ns, model=model, cache="miss", usage=usage(inp=1000, out=10))
        )
    buckets = ledger.totals()
    assert [(b.day, b.namespace, b.calls) for b in buckets] == [
        ("2025-11-20", "a", 2),
        ("2025-11-20", "b", 1),
        ("2025-11-21", "a", 1),
    ]
    assert summarize(buckets, namespace="a").calls == 3
    assert summarize(buckets).input_tokens == 4000


def test_disk_ledger_is_private_and_survives_other_processes(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    script = textwrap.dedent(
        f"""
        from haikucache import DiskLedger
        from haikucache._ledger import now_entry
        ledger = DiskLedger({str(directory)!r})
        u = {{"input_tokens": 1000, "cache_read_input_tokens": 5000, "output_tokens": 100}}
        for _ in range(5):
            ledger.record(now_entry(None, namespace="proc", model="claude-haiku-4-5", cache="miss", usage=u))
        """
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ})
    ledger = DiskLedger(directory)
    total = summarize(ledger.totals(), namespace="proc")
    assert total.calls == 10
    assert total.cache_read_tokens == 50_000
    assert total.savings["prompt_cache_read"] == pytest.approx(10 * 5000 * 0.9e-6)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    ledger.clear()
    assert ledger.totals() == []


def _miss() -> LedgerEntry:
    usage = {"input_tokens": 100, "output_tokens": 10}
    return now_entry(None, namespace="n", model="claude-haiku-4-5", cache="miss", usage=usage)


def _calls(directory: Path) -> int:
    reader = DiskLedger(directory)
    try:
        return summarize(reader.totals()).calls
    finally:
        reader.close()


def test_disk_ledger_writes_in_batches_and_on_read_and_close(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    ledger = DiskLedger(directory, flush_interval=3600)
    for _ in range(10):
        ledger.record(_miss())
    assert _calls(directory) == 0  # still summed in memory
    assert summarize(ledger.totals()).calls == 10  # reading writes first
    assert _calls(directory) == 10
    ledger.record(_miss())
    ledger.close()
    assert _calls(directory) == 11

    counted = DiskLedger(tmp_path / "by-count", flush_interval=3600, flush_entries=5)
    for _ in range(12):
        counted.record(_miss())
    assert _calls(tmp_path / "by-count") == 10
    counted.close()


def test_disk_ledger_pending_entries_are_written_at_exit(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    script = textwrap.dedent(
        f"""
        from haikucache import DiskLedger
        from haikucache._ledger import now_entry
        u = {{"input_tokens": 100, "output_tokens": 10}}
        e = lambda: now_entry(None, namespace="n", model="claude-haiku-4-5", cache="miss", usage=u)
        ledger = DiskLedger({str(directory)!r}, flush_interval=3600)
        for _ in range(7):
            ledger.record(e())
        del ledger                      # collected: written
        kept = DiskLedger({str(directory)!r}, flush_interval=3600)
        kept.record(e())                # never closed: written at exit
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ})
    assert _calls(directory) == 8


@pytest.mark.parametrize(("kwargs"), [{"flush_interval": -1}, {"flush_entries": 0}])
def test_disk_ledger_rejects_bad_flush_settings(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        DiskLedger(tmp_path, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- failures degrade


def test_an_unusable_ledger_directory_counts_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    directory = tmp_path / "file" / "ledger"
    with caplog.at_level(logging.DEBUG, logger="haikucache"):
        ledger = DiskLedger(directory, flush_interval=0)
        for _ in range(4):
            ledger.record(_miss())
        assert summarize(ledger.totals()).calls == 4
        ledger.close()
    assert not ledger.persistent
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(directory) in warning and "NotADirectoryError" in warning
    assert "in memory" in warning
    with pytest.raises(CacheStoreError, match="ledger"):
        DiskLedger(directory, strict=True)


class _SmallLedger(DiskLedger):
    MAX_PENDING_BUCKETS = 3


def test_unwritten_buckets_are_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    ledger = _SmallLedger(tmp_path / "file" / "ledger")
    usage = {"input_tokens": 100, "output_tokens": 10}
    with caplog.at_level(logging.WARNING, logger="haikucache"):
        for n in range(5):
            for _ in range(2):
                ledger.record(
                    now_entry(
                        None, namespace=f"n{n}", model="claude-haiku-4-5", cache="miss", usage=usage
                    )
                )
    buckets = ledger.totals()
    assert [b.namespace for b in buckets] == ["n0", "n1", "n2"]
    assert summarize(buckets).calls == 6  # the buckets kept stay exact
    assert len([r for r in caplog.records if "unwritten buckets" in r.getMessage()]) == 1


def test_an_existing_ledger_directory_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o750)
    ledger = DiskLedger(directory, flush_interval=0)
    ledger.record(_miss())
    ledger.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


class _Trap:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.path), "w"))


def test_a_ledger_never_runs_a_pickle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import diskcache

    directory = tmp_path / "ledger"
    ledger = DiskLedger(directory, flush_interval=0)
    ledger.record(_miss())
    ledger.close()
    marker = tmp_path / "code-ran"
    with diskcache.Cache(str(directory)) as raw:  # someone else writes into the directory
        raw.set(("totals", "x", "claude-haiku-4-5", "2025-01-01"), _Trap(marker))
        raw.set(_Trap(marker), 1)
    reader = DiskLedger(directory)
    try:
        assert summarize(reader.totals()).calls == 1  # the healthy bucket still counts
    finally:
        reader.close()
    assert not marker.exists()
