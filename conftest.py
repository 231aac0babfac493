"""Fixtures for every test directory (the core suite and both integrations)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Each test gets its own cache home, so the response cache a door keeps by default
    (on disk) never answers one test with another test's answer."""
    home = tmp_path_factory.mktemp("haikucache-home")
    monkeypatch.setenv("HAIKUCACHE_HOME", str(home))
    return home
