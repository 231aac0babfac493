"""Local validation: what the API would reject is rejected before any HTTP, naming the field."""

from __future__ import annotations

import collections
import enum
import math
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
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            top_p=0.95,
            stop_sequences=["\n\nHuman:"],
            metadata={"user_id": "u1"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="standard_only",
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


# --------------------------------------------------------------------------- JSON-ability


def _tool_turns(tool_input: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": tool_input}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
    ]


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("where", "param"),
    [
        (lambda x: {"messages": _tool_turns({"x": x})}, "messages.1.content.0.input.x"),
        (
            lambda x: {
                "tools": [
                    {
                        "name": "f",
                        "input_schema": {"type": "object", "properties": {"n": {"maximum": x}}},
                    }
                ]
            },
            "tools.0.input_schema.properties.n.maximum",
        ),
        (lambda x: {"metadata": {"user_id": x}}, "metadata.user_id"),
        (lambda x: {"temperature": x}, "temperature"),
        (lambda x: {"container": {"limit": [1, x]}}, "container.limit.1"),
    ],
)
def test_nan_and_infinity_anywhere(number: float, where: Any, param: str) -> None:
    rejects(body(**where(number)), param, "not a JSON number")


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (body(messages=[{"role": "user", "content": "a\ud800b"}]), "messages.0.content"),
        (body(system="\udfff"), "system"),
        (body(metadata={"user_id": "u\udc80"}), "metadata.user_id"),
        (body(messages=_tool_turns({"k\ud83d": 1})), "messages.1.content.0.input"),
        (body(stop_sequences=["\ud800"]), "stop_sequences.0"),
    ],
)
def test_lone_surrogates_in_any_string_or_key(request_: dict[str, Any], param: str) -> None:
    rejects(request_, param, "lone surrogate")


def test_paired_surrogates_are_just_characters() -> None:
    validate_request(body(messages=[{"role": "user", "content": "emoji \U0001f600 and é"}]))


@pytest.mark.parametrize(
    ("value", "kind"),
    [({1, 2}, "set"), (b"x", "bytes"), (object(), "object"), (1j, "complex")],
)
def test_values_that_are_not_json(value: Any, kind: str) -> None:
    rejects(body(messages=_tool_turns({"x": value})), "messages.1.content.0.input.x", kind)
    rejects(body(system=value), "system", kind)


def test_non_string_keys() -> None:
    rejects(body(messages=_tool_turns({1: "x"})), "messages.1.content.0.input", "keys")
    rejects(body(messages=_tool_turns({("a",): "x"})), "messages.1.content.0.input", "keys")
    rejects({**body(), 7: "x"}, "body", "keys")


def test_subclasses_of_json_types_pass() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str, enum.Enum):
        ADA = "ada"

    tool_input = collections.OrderedDict(level=Level.HIGH, name=Name.ADA, pair=(1, 2.5))
    validate_request(body(messages=_tool_turns(tool_input)))


@pytest.mark.parametrize("depth", [129, 1_000, 10_000])
def test_deep_nesting_is_rejected_without_recursion(depth: int) -> None:
    deep_list: list[Any] = []
    for _ in range(depth):
        deep_list = [deep_list]
    for request, prefix in [
        (body(messages=_tool_turns(_nested(depth))), "messages.1.content.0.input.a.a.a."),
        (body(metadata={"user_id": deep_list}), "metadata.user_id.0.0."),
    ]:
        with pytest.raises(RequestValidationError, match="nested more than 128 levels") as info:
            validate_request(request)
        assert info.value.param is not None
        assert info.value.param.startswith(prefix), info.value.param
        assert len(info.value.param) < 80  # a path of 10,000 keys is cut short


def test_nesting_up_to_the_limit_passes() -> None:
    # body → messages → message → content → block → input: the input is at depth 6.
    validate_request(body(messages=_tool_turns(_nested(128 - 5))))
    with pytest.raises(RequestValidationError, match="nested"):
        validate_request(body(messages=_tool_turns(_nested(128 - 4))))


def test_integers_beyond_a_json_number() -> None:
    rejects(body(messages=_tool_turns({"n": 10**400})), "messages.1.content.0.input.n", "large")
    validate_request(body(messages=_tool_turns({"n": 2**64, "m": -(2**63)})))


def test_a_body_over_the_size_limit() -> None:
    rejects(body(system="x" * (32 * 1024 * 1024 + 1)), "body", "size limit")


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize("field", ["temprature", "max_token", "user", "extra_headers"])
def test_unknown_top_level_fields(field: str) -> None:
    rejects(body(**{field: 1}), field, "Extra inputs are not permitted")


def test_unknown_fields_name_the_closest_one() -> None:
    rejects(body(temprature=0.5), "temprature", "did you mean 'temperature'?")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cache_control", {"type": "ephemeral"}),
        ("output_config", {"format": {"type": "json_schema", "schema": {"type": "object"}}}),
        ("output_format", {"type": "json_schema", "schema": {"type": "object"}}),
        ("inference_geo", "us"),
        ("container", "container_011"),
        ("context_management", {"edits": []}),
        ("mcp_servers", [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]),
        ("service_tier", "auto"),
    ],
)
def test_current_and_beta_fields_pass(field: str, value: Any) -> None:
    validate_request(body(**{field: value}))


def test_count_tokens_has_its_own_fields() -> None:
    request = body()
    rejects(request, "max_tokens", "Extra inputs", count_tokens=True)
    del request["max_tokens"]
    validate_request(
        {**request, "system": "s", "thinking": {"type": "disabled"}}, count_tokens=True
    )
    rejects({**request, "stream": True}, "stream", count_tokens=True)


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({"user": "u1"}, "metadata.user"),
        ({"user_id": "u1", "session": "s"}, "metadata.session"),
        ({"user_id": 42}, "metadata.user_id"),
        ({"user_id": "x" * 257}, "metadata.user_id"),
        (["u1"], "metadata"),
    ],
)
def test_metadata(metadata: Any, param: str) -> None:
    rejects(body(metadata=metadata), param)


def test_metadata_that_passes() -> None:
    validate_request(body(metadata={"user_id": "x" * 256}))
    validate_request(body(metadata={"user_id": None}))
    validate_request(body(metadata={}))


@pytest.mark.parametrize("tier", ["priority", "standard", "", 1])
def test_service_tier(tier: Any) -> None:
    rejects(body(service_tier=tier), "service_tier")


@pytest.mark.parametrize(
    ("stop", "param"),
    [
        ([""], "stop_sequences.0"),
        (["ok", "   "], "stop_sequences.1"),
        (["\n\t"], "stop_sequences.0"),
        ([1], "stop_sequences.0"),
        ("END", "stop_sequences"),
    ],
)
def test_stop_sequences(stop: Any, param: str) -> None:
    rejects(body(stop_sequences=stop), param)


def test_stop_sequences_may_hold_whitespace_around_text() -> None:
    validate_request(body(stop_sequences=["\n\nHuman:", " END "]))


@pytest.mark.parametrize(
    "output_config",
    ["json", {"format": "json"}, {"format": {"type": "json_schema", "schema": "{}"}}],
)
def test_output_config_shape(output_config: Any) -> None:
    with pytest.raises(RequestValidationError, match="output_config"):
        validate_request(body(output_config=output_config))


# --------------------------------------------------------------------------- content blocks

_THINKING = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
_REDACTED = {"type": "redacted_thinking", "data": "abc"}


@pytest.mark.parametrize("block", [_THINKING, _REDACTED])
def test_thinking_blocks_in_a_user_turn(block: dict[str, Any]) -> None:
    rejects(
        body(messages=[{"role": "user", "content": [block]}]),
        "messages.0.content.0",
        "only appear in assistant messages",
    )


def test_thinking_blocks_in_an_assistant_turn() -> None:
    turns = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [_THINKING, _REDACTED, {"type": "text", "text": "a"}]},
        {"role": "user", "content": "more"},
    ]
    validate_request(body(messages=turns))
    turns[1]["content"] = [{"type": "thinking", "thinking": "hmm"}]
    rejects(body(messages=turns), "messages.1.content.0.signature")


@pytest.mark.parametrize(
    ("role", "kind", "param"),
    [
        ("user", "video", "messages.0.content.0.type"),
        ("user", "server_tool_use", "messages.0.content.0"),
        ("assistant", "image", "messages.1.content.0"),
        ("assistant", "tool_result", "messages.1.content.0"),
        ("assistant", "search_result", "messages.1.content.0"),
        ("assistant", "Text", "messages.1.content.0.type"),
    ],
)
def test_block_types_allowed_per_role(role: str, kind: str, param: str) -> None:
    block = {"type": kind, "text": "x"}
    turns: list[dict[str, Any]] = [{"role": "user", "content": [block]}]
    if role == "assistant":
        turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [block]}]
    rejects(body(messages=turns), param)


def test_documents_in_assistant_turns_depend_on_the_api_version() -> None:
    document = {"type": "document", "source": {"type": "text", "data": "d"}}
    turns = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [document]},
        {"role": "user", "content": "more"},
    ]
    validate_request(body(messages=turns))
    rejects(body(messages=turns), "messages.1.content.0", "2026-10-21", api_version="2026-10-21")


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "image", "source": {"type": "base64", "data": "x"}}, "source.media_type"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png"}},
            "source.data",
        ),
        ({"type": "image", "source": {"type": "url"}}, "source.url"),
        ({"type": "image", "source": {"type": "file", "file_id": ""}}, "source.file_id"),
        (
            {"type": "document", "source": {"type": "text", "media_type": "text/html", "data": ""}},
            "source.media_type",
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}},
            "source.data",
        ),
        ({"type": "document", "source": {"type": "content", "content": 3}}, "source.content"),
        (
            {"type": "document", "source": {"type": "content", "content": [{"type": "video"}]}},
            "source.content.0",
        ),
        (
            {
                "type": "document",
                "source": {
                    "type": "content",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "b"},
                    ],
                },
            },
            "source.content.0.cache_control",
        ),
    ],
)
def test_image_and_document_sources(block: dict[str, Any], param: str) -> None:
    rejects(body(messages=[{"role": "user", "content": [block]}]), f"messages.0.content.0.{param}")


def test_tool_result_content() -> None:
    def turns(result: dict[str, Any]) -> list[dict[str, Any]]:
        return [*_tool_turns({})[:2], {"role": "user", "content": [result]}]

    base = {"type": "tool_result", "tool_use_id": "t1"}
    validate_request(body(messages=turns(base)))
    validate_request(
        body(messages=turns({**base, "content": [{"type": "tool_reference", "tool_name": "f"}]}))
    )
    rejects(body(messages=turns({**base, "is_error": "no"})), "messages.2.content.0.is_error")
    rejects(
        body(messages=turns({**base, "content": [{"type": "thinking", "thinking": "x"}]})),
        "messages.2.content.0.content.0.type",
    )
    rejects(
        body(messages=turns({**base, "content": [{"type": "text", "text": ""}]})),
        "messages.2.content.0.content.0.text",
    )


def test_tool_use_and_tool_result_must_pair_up() -> None:
    turns = _tool_turns({})
    validate_request(body(messages=turns[:2]))  # a final tool_use waits for its result
    rejects(
        body(messages=[*turns[:2], {"role": "user", "content": "never mind"}]),
        "messages.1.content.0",
        "without tool_result",
    )
    orphan = {"type": "tool_result", "tool_use_id": "t9", "content": "x"}
    rejects(
        body(messages=[*turns[:2], {"role": "user", "content": [orphan]}]),
        "messages.2.content.0.tool_use_id",
        "t9",
    )
    rejects(
        body(messages=[{"role": "user", "content": [orphan]}]), "messages.0.content.0.tool_use_id"
    )


def test_consecutive_turns_of_one_role_are_merged_for_pairing() -> None:
    turns = _tool_turns({})
    split = [turns[0], turns[1], {"role": "user", "content": "note"}, turns[2]]
    validate_request(body(messages=split))


def test_a_prefill_must_not_end_with_whitespace() -> None:
    for prefill in ("Sure ", "Sure\n", [{"type": "text", "text": "{ "}]):
        turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": prefill}]
        rejects(body(messages=turns), "messages.1.content", "trailing whitespace")
    validate_request(
        body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "{"}])
    )


def test_at_most_100000_messages() -> None:
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 50_001
    rejects(body(messages=turns), "messages", "100,000")


# --------------------------------------------------------------------------- tools and thinking


def test_disable_parallel_tool_use_must_be_a_boolean() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    for value in ("yes", 1, None):
        choice = {"type": "auto", "disable_parallel_tool_use": value}
        if value is None:
            validate_request(body(tools=tools, tool_choice=choice))
        else:
            rejects(body(tools=tools, tool_choice=choice), "tool_choice.disable_parallel_tool_use")


def test_tool_choice_names_of_any_type() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    for name in ({}, ["f"], None, 3):
        rejects(body(tools=tools, tool_choice={"type": "tool", "name": name}), "tool_choice.name")


def test_tool_schemas() -> None:
    schema = {"type": "object", "anyOf": [{"required": ["a"]}]}
    rejects(body(tools=[{"name": "f", "input_schema": schema}]), "tools.0.input_schema.anyOf")
    schema = {"type": "object", "properties": {"a": "string"}}
    rejects(
        body(tools=[{"name": "f", "input_schema": schema}]), "tools.0.input_schema.properties.a"
    )
    rejects(body(tools=[{"name": "f", "type": 5}]), "tools.0.type")


def test_thinking_constraints() -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    rejects(body(max_tokens=2048, thinking=thinking, temperature=0.5), "temperature")
    validate_request(body(max_tokens=2048, thinking=thinking, temperature=1))
    rejects(body(max_tokens=2048, thinking=thinking, top_k=5), "top_k")
    rejects(body(max_tokens=2048, thinking=thinking, top_p=0.5), "top_p")
    rejects(
        body(max_tokens=2048, thinking=thinking, tools=tools, tool_choice={"type": "any"}),
        "thinking",
        "forces tool use",
    )
    rejects(
        body(thinking={"type": "enabled", "budget_tokens": 1024, "display": "full"}),
        "thinking.display",
    )
    validate_request(body(thinking={"type": "adaptive"}))


# --------------------------------------------------------------------------- cache markers


def test_marker_extra_keys() -> None:
    marker = {"type": "ephemeral", "scope": "global"}
    rejects(
        body(system=[{"type": "text", "text": "s", "cache_control": marker}]),
        "system.0.cache_control.scope",
    )


def test_the_top_level_marker_must_agree_with_one_on_the_last_block() -> None:
    last = {"type": "text", "text": "q", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    request = body(messages=[{"role": "user", "content": [last]}])
    validate_request({**request, "cache_control": {"type": "ephemeral", "ttl": "1h"}})
    rejects({**request, "cache_control": {"type": "ephemeral"}}, "cache_control", "conflicts")


# --------------------------------------------------------------------------- context window


def test_a_prompt_surely_over_the_context_window() -> None:
    rejects(
        body(messages=[{"role": "user", "content": "word " * 400_000}]),
        "messages",
        "prompt is too long",
    )
    document = {"type": "document", "source": {"type": "text", "data": "lorem ipsum " * 200_000}}
    rejects(body(messages=[{"role": "user", "content": [document]}]), "messages", "too long")
    # count_tokens is how one finds out by how much.
    request = body(messages=[{"role": "user", "content": "word " * 400_000}])
    del request["max_tokens"]
    validate_request(request, count_tokens=True)


def test_a_prompt_that_may_fit_is_never_rejected() -> None:
    # 1.6 M characters: over the window at 4 characters a token, but not surely (long
    # words, or runs of spaces, can take many characters a token).
    validate_request(body(messages=[{"role": "user", "content": "word " * 320_000}]))
    validate_request(body(messages=[{"role": "user", "content": " " * 3_000_000 + "hi"}]))
    # Image data is not text: 5 MB of base64 is one image.
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "A" * 5_000_000},
    }
    validate_request(
        body(messages=[{"role": "user", "content": [image, {"type": "text", "text": "?"}]}])
    )
    # A model the catalogue does not know has no known window.
    validate_request(
        body(model="my-gateway/haiku", messages=[{"role": "user", "content": "w " * 1_500_000}])
    )
