"""What the emulated API would have charged: one entry per billed response.

The arithmetic is written out here on purpose rather than borrowed from the engine's cost
ledger, so that the benchmarks compare two independent computations (reference §2: 5-minute
write 1.25×, 1-hour write 2×, read 0.1× of base input; batch halves everything, stacking).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from haikucache._catalog import lookup_model

__all__ = ["Bill", "BillEntry", "price_usage"]


def price_usage(model: str, usage: Mapping[str, Any], *, batch: bool) -> tuple[float, bool]:
    """USD for one response's ``usage``, and whether the model's price is known."""
    info = lookup_model(model)
    if info is None:
        return 0.0, False
    split = usage.get("cache_creation") or {}
    write_5m = int(split.get("ephemeral_5m_input_tokens", 0))
    write_1h = int(split.get("ephemeral_1h_input_tokens", 0))
    # A usage without the split bills every write at the 5-minute rate, like the API default.
    unsplit = int(usage.get("cache_creation_input_tokens", 0)) - write_5m - write_1h
    write_5m += max(0, unsplit)
    base = info.input_usd_per_mtok
    micro_usd = (
        int(usage.get("input_tokens", 0)) * base
        + write_5m * base * 1.25
        + write_1h * base * 2.0
        + int(usage.get("cache_read_input_tokens", 0)) * base * 0.1
        + int(usage.get("output_tokens", 0)) * info.output_usd_per_mtok
    )
    usd = micro_usd / 1_000_000
    return (usd * 0.5 if batch else usd), True


@dataclass(frozen=True)
class BillEntry:
    """One billed response.

    Attributes:
        request_id: the ``request-id`` of the response (for batch results, the id of the
            request that fetched the results).
        path: ``/v1/messages`` or ``/v1/messages/batches``.
        model: the model as sent.
        usage: the ``usage`` object exactly as the response carried it.
        usd: what it costs, in US dollars.
        batch: whether it is a batch result (billed at 50 %).
        time: when it was processed, on the emulator's clock.
        priced: ``False`` when the model is unknown to the catalogue (``usd`` is then 0.0).
        custom_id: the batch request's ``custom_id``, for batch results.
        batch_id: the ``msgbatch_…`` id, for batch results.
    """

    request_id: str
    path: str
    model: str
    usage: dict[str, Any]
    usd: float
    batch: bool
    time: float
    priced: bool = True
    custom_id: str | None = None
    batch_id: str | None = None


class Bill:
    """The running bill of one emulator. Thread-safe."""

    def __init__(self) -> None:
        self._entries: list[BillEntry] = []
        self._lock = threading.Lock()

    def add(self, entry: BillEntry) -> None:
        """Record a billed response."""
        with self._lock:
            self._entries.append(entry)

    @property
    def entries(self) -> list[BillEntry]:
        """A snapshot of the entries, oldest first."""
        with self._lock:
            return list(self._entries)

    @property
    def total_usd(self) -> float:
        """The sum of every entry, in US dollars."""
        with self._lock:
            return sum(e.usd for e in self._entries)

    def tokens(self) -> dict[str, int]:
        """Summed token counts: input, 5m and 1h writes, reads and output."""
        totals = {
            "input_tokens": 0,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        }
        for e in self.entries:
            split = e.usage.get("cache_creation") or {}
            totals["input_tokens"] += int(e.usage.get("input_tokens", 0))
            totals["cache_write_5m_tokens"] += int(split.get("ephemeral_5m_input_tokens", 0))
            totals["cache_write_1h_tokens"] += int(split.get("ephemeral_1h_input_tokens", 0))
            totals["cache_read_input_tokens"] += int(e.usage.get("cache_read_input_tokens", 0))
            totals["output_tokens"] += int(e.usage.get("output_tokens", 0))
        return totals

    def reset(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[BillEntry]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"Bill(entries={len(self)}, total_usd={self.total_usd:.6f})"
