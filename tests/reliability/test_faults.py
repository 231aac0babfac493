"""A flaky upstream (30 % of calls fail, before or in the middle of a stream) never leaves a
partial or failed answer in the response cache, at any door.

Each question is asked until it gets an answer (without the client's own retries, so every
fault reaches the pipeline), then asked again with the faults cleared: a question that got
an answer must now be a hit with exactly that answer; a question whose every attempt failed
must be a miss (nothing of its broken attempts was stored).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

import haikucache
import haikucache.anthropic as hca
from haikucache import Engine, MemoryStore
from haikucache.testing import Emulator

BASE_URL = "http://emulator.test"
QUESTIONS = [f"Question {i}: which gate does flight {100 + i} leave from?" for i in range(30)]
ATTEMPTS = 3

#: ask(question, stream) -> (text, cache status); raises on a failed attempt.
Ask = Callable[[str, bool], tuple[str, str]]


def _request(question: str) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": question}],
    }


def _client_door(emu: Emulator, engine: Engine) -> Ask:
    client = haikucache.Client(
        api_key="sk-flaky",
        base_url=BASE_URL,
        transport=emu.transport(),
        engine=engine,
        max_retries=0,
    )

    def ask(question: str, stream: bool) -> tuple[str, str]:
        if stream:
            with client.messages.stream(**_request(question)) as events:
                message = events.get_final_message()
        else:
            message = client.messages.create(**_request(question))
        assert message.haikucache is not None
        return message.content[0].text, message.haikucache.cache  # type: ignore[union-attr]

    return ask


def _sdk_door(emu: Emulator, engine: Engine) -> Ask:
    sdk = anthropic.Anthropic(
        api_key="sk-flaky",
        base_url=BASE_URL,
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
        max_retries=0,
    )
    client = hca.wrap(sdk, engine=engine)

    def ask(question: str, stream: bool) -> tuple[str, str]:
        if stream:
            with client.messages.stream(**_request(question)) as events:
                message = events.get_final_message()
            status = hca.info(message)
        else:
            raw = client.messages.with_raw_response.create(**_request(question))
            message = raw.parse()
            status = hca.info(message)
        assert status is not None
        return message.content[0].text, status.cache  # type: ignore[union-attr]

    return ask


DOORS = {"client": _client_door, "sdk": _sdk_door}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_flaky_upstream_never_leaves_a_partial_answer_in_the_cache(
    door: str, stream: bool
) -> None:
    emu = Emulator(seed=7)
    engine = Engine(ledger=False, store=MemoryStore())
    ask = DOORS[door](emu, engine)
    if stream:
        emu.inject("stream_cut", times=None, rate=0.15)
        emu.inject("stream_error", times=None, rate=0.15)
    else:
        emu.inject("transient", times=None, rate=0.3)
        emu.inject("drop", times=None, rate=0.05)

    answered: dict[str, str] = {}
    failures = 0
    for question in QUESTIONS:
        for _ in range(ATTEMPTS):
            try:
                text, status = ask(question, stream)
            except Exception:  # the door's own error for a failed attempt
                failures += 1
                continue
            assert status == "miss"
            answered[question] = text
            break
    # The faults really fired, and most questions still got an answer.
    assert failures >= 5
    assert len(answered) >= len(QUESTIONS) // 2

    emu.clear_faults()
    upstream_before = emu.requests["messages"]
    for question in QUESTIONS:
        text, status = ask(question, False)
        if question in answered:
            assert (status, text) == ("hit", answered[question])
        else:  # every attempt broke: nothing of them was stored
            assert status == "miss"
    assert emu.requests["messages"] - upstream_before == len(QUESTIONS) - len(answered)
