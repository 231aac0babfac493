"""Prompt caching exactly as reference §1 describes it, observed through /v1/messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator, ManualClock
from haikucache.testing._request import (
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    SYSTEM_OVERHEAD_TOKENS,
)

MODEL = "claude-haiku-4-5"
Send = Callable[..., httpx.Response]


def body_with_system(
    system_text: str, *, ttl: str | None = None, question: str = "Summarise it."
) -> dict[str, Any]:
    marker: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        marker["ttl"] = ttl
    return {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": system_text, "cache_control": marker}],
        "messages": [{"role": "user", "content": question}],
    }


def usage_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def total_input(send: Send, body: dict[str, Any]) -> int:
    counted = {k: v for k, v in body.items() if k not in ("max_tokens", "stream")}
    response = send(counted, "/v1/messages/count_tokens")
    assert response.status_code == 200, response.text
    value: int = response.json()["input_tokens"]
    return value


def assert_split(usage: dict[str, Any], total: int) -> None:
    written = (
        usage["cache_creation"]["ephemeral_5m_input_tokens"]
        + usage["cache_creation"]["ephemeral_1h_input_tokens"]
    )
    assert usage["cache_creation_input_tokens"] == written
    assert (
        usage["input_tokens"]
        + usage["cache_creation_input_tokens"]
        + usage["cache_read_input_tokens"]
        == total
    )


def test_long_system_prompt_is_written_then_read(
    send: Send, emu: Emulator, text_of: Callable[..., str]
) -> None:
    system = text_of(5000)
    body = body_with_system(system)
    prefix = REQUEST_OVERHEAD_TOKENS + SYSTEM_OVERHEAD_TOKENS + emu.count_tokens_of(system)
    total = total_input(send, body)

    first = usage_of(send(body))
    assert first["cache_creation_input_tokens"] == prefix
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": prefix,
        "ephemeral_1h_input_tokens": 0,
    }
    assert first["cache_read_input_tokens"] == 0
    assert first["input_tokens"] == total - prefix
    assert first["service_tier"] == "standard"
    assert emu.cache_entries == 1

    second = usage_of(send(body_with_system(system, question="Now list the key points.")))
    assert second["cache_read_input_tokens"] == prefix
    assert second["cache_creation_input_tokens"] == 0
    assert second["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert_split(
        second, total_input(send, body_with_system(system, question="Now list the key points."))
    )


def test_prefix_under_the_minimum_caches_nothing_without_error(
    send: Send, emu: Emulator, text_of: Callable[..., str]
) -> None:
    body = body_with_system(text_of(3000))
    total = total_input(send, body)
    for _ in range(2):
        usage = usage_of(send(body))
        assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
        assert usage["input_tokens"] == total
    assert emu.cache_entries == 0


def test_minimum_applies_to_the_whole_prefix(send: Send, text_of: Callable[..., str]) -> None:
    # Tools + system together pass 4096 although the marked system block alone does not.
    tools = [
        {
            "name": "lookup",
            "description": text_of(2500, seed=1),
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
        }
    ]
    body = body_with_system(text_of(2500, seed=2))
    body["tools"] = tools
    usage = usage_of(send(body))
    assert usage["cache_creation_input_tokens"] > 4096


def test_five_minute_entry_expires_and_hits_refresh_it(
    send: Send, clock: ManualClock, text_of: Callable[..., str]
) -> None:
    body = body_with_system(text_of(5000))
    written = usage_of(send(body))["cache_creation_input_tokens"]
    clock.advance(299)
    assert usage_of(send(body))["cache_read_input_tokens"] == written
    clock.advance(299)  # 598 s after the write, but 299 s after the refreshing hit
    assert usage_of(send(body))["cache_read_input_tokens"] == written
    clock.advance(301)
    expired = usage_of(send(body))
    assert expired["cache_read_input_tokens"] == 0
    assert expired["cache_creation_input_tokens"] == written


def test_one_hour_entry_outlives_five_minutes_then_expires(
    send: Send, clock: ManualClock, text_of: Callable[..., str]
) -> None:
    body = body_with_system(text_of(5000), ttl="1h")
    first = usage_of(send(body))
    written = first["cache_creation"]["ephemeral_1h_input_tokens"]
    assert written == first["cache_creation_input_tokens"] > 0
    clock.advance(3599)
    assert usage_of(send(body))["cache_read_input_tokens"] == written
    clock.advance(3599)
    assert usage_of(send(body))["cache_read_input_tokens"] == written
    clock.advance(3601)
    assert usage_of(send(body))["cache_read_input_tokens"] == 0


def test_mixed_ttls_split_the_write_at_the_last_one_hour_breakpoint(
    send: Send, emu: Emulator, text_of: Callable[..., str]
) -> None:
    system = text_of(5000)
    document = text_of(2000, seed=3)
    body = body_with_system(system, ttl="1h")
    body["messages"] = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": document,
                    "cache_control": {"type": "ephemeral", "ttl": "5m"},
                },
                {"type": "text", "text": "What does the document add?"},
            ],
        }
    ]
    a = REQUEST_OVERHEAD_TOKENS + SYSTEM_OVERHEAD_TOKENS + emu.count_tokens_of(system)
    b = a + MESSAGE_OVERHEAD_TOKENS + emu.count_tokens_of(document)
    first = usage_of(send(body))
    assert first["cache_creation"] == {
        "ephemeral_1h_input_tokens": a,
        "ephemeral_5m_input_tokens": b - a,
    }
    assert_split(first, total_input(send, body))
    again = usage_of(send(body))
    assert again["cache_read_input_tokens"] == b
    assert again["cache_creation_input_tokens"] == 0

    # A different document: the 1-hour system entry is read, the new document written.
    body["messages"][0]["content"][0]["text"] = text_of(2000, seed=4)
    third = usage_of(send(body))
    assert third["cache_read_input_tokens"] == a
    assert third["cache_creation"]["ephemeral_1h_input_tokens"] == 0
    assert third["cache_creation"]["ephemeral_5m_input_tokens"] > 0


@pytest.mark.parametrize(("blocks_after", "hit"), [(20, True), (21, False)])
def test_lookback_reaches_twenty_blocks_back_and_no_further(
    send: Send, emu: Emulator, text_of: Callable[..., str], blocks_after: int, hit: bool
) -> None:
    system = text_of(5000)
    send(body_with_system(system))
    prefix = REQUEST_OVERHEAD_TOKENS + SYSTEM_OVERHEAD_TOKENS + emu.count_tokens_of(system)
    content: list[dict[str, Any]] = [
        {"type": "text", "text": f"Note number {i}."} for i in range(blocks_after)
    ]
    content[-1]["cache_control"] = {"type": "ephemeral"}
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "system": system,
        "messages": [{"role": "user", "content": content}],
    }
    usage = usage_of(send(body))
    assert usage["cache_read_input_tokens"] == (prefix if hit else 0)
    assert_split(usage, total_input(send, body))
    assert (
        usage["cache_creation_input_tokens"]
        == total_input(send, body) - usage["input_tokens"] - usage["cache_read_input_tokens"]
    )


def test_automatic_caching_moves_forward_with_the_conversation(
    send: Send, text_of: Callable[..., str]
) -> None:
    history: list[dict[str, Any]] = [{"role": "user", "content": text_of(5000)}]
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "cache_control": {"type": "ephemeral"},
        "messages": history,
    }
    first = usage_of(send(body))
    written = first["cache_creation_input_tokens"]
    assert written > 5000
    assert first["input_tokens"] == 1  # only the assistant primer follows the last block

    history += [
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "And then?"},
    ]
    second = usage_of(send(body))
    assert second["cache_read_input_tokens"] == written
    assert second["cache_creation_input_tokens"] > 0
    assert_split(second, total_input(send, body))


def test_automatic_caching_skips_thinking_blocks_and_conflicts_are_400(
    send: Send, text_of: Callable[..., str]
) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": text_of(5000),
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            }
        ],
    }
    # Same TTL on the same block: a no-op, one breakpoint.
    assert usage_of(send(body))["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    body["cache_control"] = {"type": "ephemeral"}
    conflict = send(body)
    assert conflict.status_code == 400
    assert "conflicts" in conflict.json()["error"]["message"]


def test_more_than_four_breakpoints_is_rejected(send: Send) -> None:
    blocks = [
        {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
        for i in range(5)
    ]
    response = send(
        {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": blocks}]}
    )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"] == {
        "type": "invalid_request_error",
        "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    }
    # The top-level field takes one of the four slots.
    four = {
        "model": MODEL,
        "max_tokens": 8,
        "cache_control": {"type": "ephemeral"},
        "messages": [{"role": "user", "content": blocks[:4]}],
    }
    assert "Found 5." in send(four).json()["error"]["message"]


def test_one_hour_after_five_minutes_is_rejected(send: Send) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "system": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "doc",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            }
        ],
    }
    response = send(body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "A `ttl='1h'` cache_control block must not come after a `ttl='5m'` cache_control block"
    )


@pytest.mark.parametrize(
    ("marker", "fragment"),
    [
        ({"type": "persistent"}, "cache_control.type: Input should be 'ephemeral'"),
        ({"type": "ephemeral", "ttl": "10m"}, "cache_control.ttl: Input should be '5m' or '1h'"),
        (
            {"type": "ephemeral", "scope": "global"},
            "cache_control.scope: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_cache_control_objects(send: Send, marker: dict[str, Any], fragment: str) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello", "cache_control": marker}],
            }
        ],
    }
    response = send(body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"messages.0.content.0.{fragment}"


def test_markers_on_empty_text_or_thinking_blocks_are_rejected(send: Send) -> None:
    empty = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    assert "empty text blocks" in send(empty).json()["error"]["message"]
    thinking = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [
            {"role": "user", "content": "Hi"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "hmm",
                        "signature": "sig",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "text", "text": "Hello"},
                ],
            },
            {"role": "user", "content": "Go on"},
        ],
    }
    response = send(thinking)
    assert response.status_code == 400
    assert "thinking.cache_control" in response.json()["error"]["message"]


def test_marker_inside_tool_result_is_lifted_only_from_the_last_block(
    send: Send, text_of: Callable[..., str]
) -> None:
    def body(marked: int) -> dict[str, Any]:
        inner = [{"type": "text", "text": text_of(2500, seed=i)} for i in range(2)]
        inner[marked]["cache_control"] = {"type": "ephemeral"}
        return {
            "model": MODEL,
            "max_tokens": 8,
            "messages": [
                {"role": "user", "content": "Look it up"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": inner}
                    ],
                },
            ],
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        }

    assert usage_of(send(body(1)))["cache_creation_input_tokens"] > 5000
    assert send(body(0)).status_code == 400


def test_cache_is_per_model_with_aliases_normalised(
    send: Send, text_of: Callable[..., str]
) -> None:
    body = body_with_system(text_of(5000))
    written = usage_of(send(body))["cache_creation_input_tokens"]
    dated = usage_of(send({**body, "model": "claude-haiku-4-5-20251001"}))
    assert dated["cache_read_input_tokens"] == written
    other = usage_of(send({**body, "model": "claude-opus-4-5"}))
    assert other["cache_read_input_tokens"] == 0


def test_tool_choice_change_keeps_the_tools_cache_but_not_the_system_cache(
    send: Send, text_of: Callable[..., str]
) -> None:
    tools = [
        {
            "name": "lookup",
            "description": text_of(5000, seed=5),
            "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    body = body_with_system(text_of(300, seed=6))
    body["tools"] = tools
    first = usage_of(send(body))
    tools_prefix_written = first["cache_creation_input_tokens"]
    again = usage_of(send({**body, "tool_choice": {"type": "any"}}))
    assert 0 < again["cache_read_input_tokens"] < tools_prefix_written
    assert again["cache_creation_input_tokens"] > 0


def test_cache_state_is_per_emulator(text_of: Callable[..., str]) -> None:
    system = text_of(5000)
    results = []
    for _ in range(2):
        emu = Emulator(clock=ManualClock())
        with httpx.Client(
            transport=emu.transport(),
            base_url="http://e",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as c:
            results.append(usage_of(c.post("/v1/messages", json=body_with_system(system))))
    assert results[0] == results[1]
    assert results[1]["cache_read_input_tokens"] == 0
