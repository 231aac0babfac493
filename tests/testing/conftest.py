"""Fixtures for the emulator's own tests: every test talks to it over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator, ManualClock

BASE_URL = "http://emulator.local"
HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
MODEL = "claude-haiku-4-5"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emu(clock: ManualClock) -> Emulator:
    return Emulator(clock=clock)


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(transport=emu.transport(), base_url=BASE_URL, headers=HEADERS) as c:
        yield c


@pytest.fixture
def text_of(emu: Emulator) -> Callable[..., str]:
    """``text_of(tokens, seed=0)``: English-like text the emulator counts at ``tokens`` (+ a few)."""

    def make(tokens: int, seed: int = 0) -> str:
        vocab = (
            "the passenger may change a flight booking before departure when the fare rules "
            "allow it and the agent must confirm every change with the customer first"
        ).split()
        cost = {w: emu.count_tokens_of(" " + w) for w in vocab}
        words = [f"Text{seed}"]
        total = emu.count_tokens_of(words[0])
        i = 0
        while total < tokens:
            word = vocab[(i * 7 + seed) % len(vocab)]
            words.append(word)
            total += cost[word]
            i += 1
        text = " ".join(words)
        assert emu.count_tokens_of(text) == total
        return text

    return make


@pytest.fixture
def send(client: httpx.Client) -> Callable[..., httpx.Response]:
    """``send(body, path="/v1/messages", **httpx kwargs)``: POST JSON and return the response."""

    def post(body: Any, path: str = "/v1/messages", **kwargs: Any) -> httpx.Response:
        return client.post(path, json=body, **kwargs)

    return post
