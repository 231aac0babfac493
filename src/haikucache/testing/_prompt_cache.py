"""The prompt cache of one workspace, following reference §1.3–§1.9 and the recipe §1.11."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from haikucache.testing._request import TTL_SECONDS, Flat

__all__ = ["REFRESH_RULES", "CacheUsage", "PromptCache"]

LOOKBACK_BLOCKS = 20
# Which entries a cache read refreshes: the docs say a hit refreshes "the cached content"
# without saying whether shorter entries on the same path (e.g. the system prompt alone, below
# a conversation tail) count. ``deepest``: only the entry that was read. ``path``: every live
# entry whose prefix the request repeats up to the one that was read.
REFRESH_RULES = ("deepest", "path")
# Expired entries are swept when the table grows past this, so memory stays bounded.
_SWEEP_AT = 50_000


@dataclass(frozen=True)
class CacheUsage:
    """How the input of one request splits between cache reads, writes and plain input."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h


@dataclass
class _Entry:
    expires_at: float
    ttl_seconds: float


class PromptCache:
    """Prefix-hash entries with an expiry on the emulator's clock. Not thread-safe on its
    own: the emulator calls it under its state lock."""

    def __init__(self, refresh: str = "deepest") -> None:
        if refresh not in REFRESH_RULES:
            raise ValueError(f"refresh must be one of {REFRESH_RULES}, got {refresh!r}")
        self.refresh = refresh
        self._entries: dict[bytes, _Entry] = {}

    def live_entries(self, now: float) -> int:
        """Entries not yet expired at ``now``."""
        return sum(1 for e in self._entries.values() if e.expires_at > now)

    def clear(self) -> None:
        self._entries.clear()

    def peek_read(
        self, blocks: Sequence[Flat], breakpoints: Sequence[tuple[int, str]], now: float
    ) -> int:
        """The tokens :meth:`apply` would read from the cache at ``now``, changing nothing
        (the rate limits decide whether a request runs before it touches the cache)."""
        hit = -1
        for index, _ttl in breakpoints:
            for j in range(index, max(-1, index - LOOKBACK_BLOCKS - 1), -1):
                if j <= hit:
                    break
                entry = self._entries.get(blocks[j].key)
                if entry is not None and entry.expires_at > now:
                    hit = j
                    break
        return blocks[hit].prefix_tokens if hit >= 0 else 0

    def apply(
        self,
        blocks: Sequence[Flat],
        breakpoints: Sequence[tuple[int, str]],
        min_tokens: int,
        now: float,
    ) -> CacheUsage:
        """Read and write the cache for one request and return the split of its input.

        For each breakpoint, the longest live prefix within ``LOOKBACK_BLOCKS`` blocks before
        it (inclusive) is a hit; the highest hit is position A. Breakpoints after A whose
        whole prefix reaches ``min_tokens`` are written; with mixed TTLs the tokens up to the
        last 1-hour breakpoint (B) are billed as 1-hour writes and the rest up to the last
        breakpoint (C) as 5-minute writes. A hit refreshes the entry's lifetime (and, with
        ``refresh="path"``, that of every live entry on the path before it).
        """
        if not breakpoints:
            return CacheUsage()
        entries = self._entries
        hit = -1
        for index, _ttl in breakpoints:
            for j in range(index, max(-1, index - LOOKBACK_BLOCKS - 1), -1):
                if j <= hit:
                    break
                entry = entries.get(blocks[j].key)
                if entry is not None:
                    if entry.expires_at > now:
                        hit = j
                        break
                    del entries[blocks[j].key]
        read = blocks[hit].prefix_tokens if hit >= 0 else 0
        if hit >= 0:
            entry = entries[blocks[hit].key]
            entry.expires_at = now + entry.ttl_seconds
            if self.refresh == "path":
                for j in range(hit):
                    shorter = entries.get(blocks[j].key)
                    if shorter is not None and shorter.expires_at > now:
                        shorter.expires_at = now + shorter.ttl_seconds

        written = [
            (i, ttl) for i, ttl in breakpoints if i > hit and blocks[i].prefix_tokens >= min_tokens
        ]
        if not written:
            return CacheUsage(read=read)
        c = blocks[written[-1][0]].prefix_tokens
        one_hour = [i for i, ttl in written if ttl == "1h"]
        b = blocks[one_hour[-1]].prefix_tokens if one_hour else read
        for i, ttl in written:
            seconds = TTL_SECONDS[ttl]
            entries[blocks[i].key] = _Entry(expires_at=now + seconds, ttl_seconds=seconds)
        if len(entries) > _SWEEP_AT:
            self._sweep(now)
        return CacheUsage(read=read, write_1h=b - read, write_5m=c - b)

    def _sweep(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[key]
