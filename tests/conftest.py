"""Shared fixtures. Nothing here touches the user's real cache directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

# Set before any test can create the process-wide ledger, so it lives in a throwaway place.
_HOME = tempfile.mkdtemp(prefix="haikucache-tests-")
os.environ["HAIKUCACHE_HOME"] = _HOME
for _name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_name, None)


@pytest.fixture
def long_text() -> Iterator[object]:
    """A factory of deterministic English-like text of roughly ``words`` words."""

    def make(words: int, seed: int = 0) -> str:
        vocab = (
            "the passenger may change a flight booking before departure when the fare rules "
            "allow it and the agent must confirm every change with the customer first"
        ).split()
        return " ".join(vocab[(i * 7 + seed) % len(vocab)] for i in range(words))

    yield make
