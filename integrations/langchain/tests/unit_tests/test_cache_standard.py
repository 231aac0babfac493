"""langchain-tests' standard cache suites for HaikuCacheLLMCache, on each local store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from haikucache import DiskStore, MemoryStore
from langchain_haikucache import HaikuCacheLLMCache


class TestMemorySync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self) -> HaikuCacheLLMCache:
        return HaikuCacheLLMCache(MemoryStore(strict=True))


class TestMemoryAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self) -> HaikuCacheLLMCache:
        return HaikuCacheLLMCache(MemoryStore(strict=True))


class TestDiskSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> Iterator[HaikuCacheLLMCache]:
        store = DiskStore(tmp_path / "cache", strict=True)
        yield HaikuCacheLLMCache(store)
        store.close()


class TestDiskAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, tmp_path: Path) -> AsyncIterator[HaikuCacheLLMCache]:
        store = DiskStore(tmp_path / "cache", strict=True)
        yield HaikuCacheLLMCache(store)
        store.close()
