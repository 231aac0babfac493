"""Local validation: what the API would reject is rejected before any HTTP, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from haikucache import RequestValidationError, UsageError, validate_request


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    base.update(overrides)
    return base


def rejects(request: Any, param: str, fragment: str = "", **kwargs: Any) -> None:
    with pytest.raises(RequestValidationError) as info:
        validate_request(request, **kwargs)
    assert info.value.param == param, str(info.value)
    assert fragment in str(info.value)


def test_a_valid_request_passes() -> None:
    validate_request(
        body(
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            tools=[
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "input_schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ],
            tool_choice={"type": "auto"},
            temperature=0.2,
            stop_sequences=["\n\nHuman:"],
            metadata={"user_id": "u1"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            max_tokens=4096,
        )
    )


def test_validation_error_is_a_usage_error_and_a_value_error() -> None:
    with pytest.raises(UsageError):
        validate_request(body(max_tokens=0))
    with pytest.raises(ValueError, match="max_tokens"):
        validate_request(body(max_tokens=0))


@pytest.mark.parametrize("field", ["model", "max_tokens", "messages"])
def test_required_fields(field: str) -> None:
    request = body()
    del request[field]
    rejects(request, field, "required")


def test_max_tokens_above_the_model_maximum() -> None:
    rejects(
        body(max_tokens=64_001),
        "max_tokens",
        "64001 > 64000, which is the maximum allowed number of output tokens for claude-haiku-4-5",
    )
    validate_request(body(max_tokens=64_000))


def test_unknown_models_are_not_capped() -> None:
    # Gateways use their own names; an unknown model is sent as is.
    validate_request(body(model="my-gateway/haiku", max_tokens=100_000))


@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True])
def test_max_tokens_must_be_a_positive_integer(value: Any) -> None:
    rejects(body(max_tokens=value), "max_tokens")


def test_roles() -> None:
    rejects(body(messages=[{"role": "system", "content": "x"}]), "messages.0.role")
    rejects(
        body(messages=[{"role": "assistant", "content": "x"}]), "messages.0.role", "first message"
    )
    rejects(body(messages=[]), "messages", "at least one")
    rejects(body(messages=[{"role": "user"}]), "messages.0.content")


def test_empty_content_only_in_a_final_assistant_prefill() -> None:
    rejects(body(messages=[{"role": "user", "content": ""}]), "messages.0.content", "empty")
    rejects(body(messages=[{"role": "user", "content": []}]), "messages.0.content", "empty")
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Hello?"},
    ]
    rejects(body(messages=turns), "messages.1.content", "empty")
    validate_request(body(messages=[*turns[:1], {"role": "assistant", "content": ""}]))


def test_content_blocks() -> None:
    rejects(
        body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages.0.content.0.type"
    )
    rejects(
        body(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
        "messages.0.content.0.text",
        "non-empty",
    )
    rejects(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}],
                }
            ]
        ),
        "messages.0.content.0",
        "assistant",
    )
    rejects(
        body(
            messages=[
                {"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]},
            ]
        ),
        "messages.0.content.0.source.type",
    )


def test_more_than_four_markers_counting_the_top_level_one() -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    request = body(
        system=[marked, marked],
        messages=[{"role": "user", "content": [marked, marked]}],
        cache_control={"type": "ephemeral"},
    )
    rejects(
        request,
        "cache_control",
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    )
    del request["cache_control"]
    validate_request(request)


def test_a_marker_on_the_last_block_inside_a_tool_result_counts() -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    tool_result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": "r"}, marked],
    }
    request = body(
        system=[marked, marked, marked, marked],
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            },
            {"role": "user", "content": [tool_result]},
        ],
    )
    rejects(request, "cache_control", "Found 5")


def test_a_marker_on_an_inner_block_other_than_the_last_is_rejected() -> None:
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    tool_result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [marked, {"type": "text", "text": "r"}],
    }
    request = body(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            },
            {"role": "user", "content": [tool_result]},
        ],
    )
    rejects(request, "messages.2.content.0.content.0.cache_control", "tool_result")


def test_one_hour_after_five_minutes_is_rejected_in_prefix_order() -> None:
    five = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    tool = {"name": "t", "input_schema": {"type": "object"}}
    rejects(
        body(
            tools=[{**tool, "cache_control": five}],
            system=[{"type": "text", "text": "s", "cache_control": hour}],
        ),
        "system.0.cache_control",
        "must not come after",
    )
    validate_request(
        body(
            tools=[{**tool, "cache_control": hour}],
            system=[{"type": "text", "text": "s", "cache_control": five}],
        )
    )


def test_marker_shapes() -> None:
    rejects(
        body(system=[{"type": "text", "text": "s", "cache_control": {"type": "persistent"}}]),
        "system.0.cache_control",
    )
    rejects(
        body(
            system=[
                {"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "2h"}}
            ]
        ),
        "system.0.cache_control.ttl",
    )


def test_markers_on_empty_text_and_thinking_blocks() -> None:
    rejects(
        body(system=[{"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}]),
        "system.0.text",
        "non-empty",
    )
    thinking = {
        "type": "thinking",
        "thinking": "hmm",
        "signature": "sig",
        "cache_control": {"type": "ephemeral"},
    }
    rejects(
        body(
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [thinking, {"type": "text", "text": "a"}]},
                {"role": "user", "content": "more"},
            ]
        ),
        "messages.1.content.0.cache_control",
        "thinking",
    )


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"name": "bad name!", "input_schema": {"type": "object"}}, "tools.0.name"),
        ({"name": "x" * 65, "input_schema": {"type": "object"}}, "tools.0.name"),
        ({"name": "ok"}, "tools.0.input_schema"),
        ({"name": "ok", "input_schema": {"type": "array"}}, "tools.0.input_schema.type"),
        (
            {"name": "ok", "input_schema": {"type": "object", "properties": []}},
            "tools.0.input_schema.properties",
        ),
        (
            {"name": "ok", "input_schema": {"type": "object", "required": "a"}},
            "tools.0.input_schema.required",
        ),
    ],
)
def test_malformed_tool_schemas(tool: dict[str, Any], param: str) -> None:
    rejects(body(tools=[tool]), param)


def test_server_tools_are_not_schema_checked() -> None:
    validate_request(
        body(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}])
    )


def test_duplicate_tool_names_and_tool_choice() -> None:
    tool = {"name": "t", "input_schema": {"type": "object"}}
    rejects(body(tools=[tool, tool]), "tools.1.name", "unique")
    rejects(body(tools=[tool], tool_choice={"type": "tool", "name": "u"}), "tool_choice.name")
    rejects(body(tool_choice={"type": "any"}), "tool_choice", "at least one tool")
    rejects(body(tool_choice={"type": "maybe"}), "tool_choice.type")


def test_sampling_parameters_depend_on_the_api_version() -> None:
    validate_request(body(temperature=0.0))
    rejects(body(temperature=0.0), "temperature", "2026-10-21", api_version="2026-10-21")
    rejects(body(top_k=5), "top_k", api_version="2026-10-21")
    validate_request(body(), api_version="2026-10-21")
    rejects(body(temperature=1.5), "temperature")
    rejects(body(), "anthropic-version", api_version="2024-01-01")


def test_thinking_budget() -> None:
    rejects(body(thinking={"type": "enabled", "budget_tokens": 512}), "thinking.budget_tokens")
    rejects(
        body(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 2000}),
        "thinking.budget_tokens",
    )


def test_count_tokens_bodies_need_no_max_tokens() -> None:
    request = body()
    del request["max_tokens"]
    validate_request(request, count_tokens=True)


def test_not_a_mapping() -> None:
    rejects([], "body")
