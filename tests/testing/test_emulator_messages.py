"""/v1/messages and /v1/messages/count_tokens: shapes, validation, auth, versions, answers."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from haikucache.testing import Emulator, ManualClock

MODEL = "claude-haiku-4-5"
HELLO: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Hi"}],
}
Send = Callable[..., httpx.Response]


def error_of(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["request_id"] == response.headers["request-id"]
    assert set(body["error"]) == {"type", "message"}
    message: str = body["error"]["message"]
    return message


# --------------------------------------------------------------------------- shapes


def test_message_shape_and_headers(send: Send, emu: Emulator) -> None:
    response = send(HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch(r"req_01[A-Za-z0-9]{22}", response.headers["request-id"])
    assert response.headers["anthropic-organization-id"] == emu.organization_id
    message = response.json()
    assert list(message) == [
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    ]
    assert re.fullmatch(r"msg_01[A-Za-z0-9]{22}", message["id"])
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["model"] == MODEL
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    assert [b["type"] for b in message["content"]] == ["text"]
    assert message["content"][0]["text"]
    usage = message["usage"]
    assert usage == {
        # The reference example (system "Be brief" + "Hi") is 14; without the system prompt,
        # its 2 tokens and its 3 tokens of template overhead go.
        "input_tokens": 14 - 2 - 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": usage["output_tokens"],
        "service_tier": "standard",
    }
    assert usage["output_tokens"] == emu.count_tokens_of(message["content"][0]["text"])
    assert emu.requests["messages"] == 1
    record = emu.log[-1]
    assert (record.method, record.path, record.status, record.endpoint) == (
        "POST",
        "/v1/messages",
        200,
        "messages",
    )
    assert record.headers["x-api-key"] == "sk-test"
    assert record.body == HELLO
    assert record.request_id == response.headers["request-id"]


def test_count_tokens_matches_the_reference_example_and_billed_input(send: Send) -> None:
    body = {"model": MODEL, "system": "Be brief", "messages": [{"role": "user", "content": "Hi"}]}
    counted = send(body, "/v1/messages/count_tokens")
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": 14}
    billed = send({**body, "max_tokens": 32}).json()["usage"]
    assert billed["input_tokens"] == 14


def test_count_tokens_equals_billed_total_for_a_rich_request(
    send: Send, text_of: Callable[..., str]
) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "system": [{"type": "text", "text": text_of(5000), "cache_control": {"type": "ephemeral"}}],
        "tools": [
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
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}
                ],
            },
        ],
    }
    counted = send(body, "/v1/messages/count_tokens").json()["input_tokens"]
    for _ in range(2):  # a write, then a read: the total is the same
        usage = send({**body, "max_tokens": 64}).json()["usage"]
        assert (
            usage["input_tokens"]
            + usage["cache_creation_input_tokens"]
            + usage["cache_read_input_tokens"]
            == counted
        )


def test_tools_add_the_hidden_tool_prompt(send: Send) -> None:
    tool = {"name": "noop", "input_schema": {"type": "object"}}
    base = send(
        {"model": MODEL, "messages": HELLO["messages"]}, "/v1/messages/count_tokens"
    ).json()["input_tokens"]
    auto = send(
        {"model": MODEL, "messages": HELLO["messages"], "tools": [tool]},
        "/v1/messages/count_tokens",
    ).json()["input_tokens"]
    forced = send(
        {
            "model": MODEL,
            "messages": HELLO["messages"],
            "tools": [tool],
            "tool_choice": {"type": "any"},
        },
        "/v1/messages/count_tokens",
    ).json()["input_tokens"]
    assert auto - forced == 346 - 313
    assert auto - base > 346


def test_count_tokens_rejects_messages_only_fields(send: Send) -> None:
    assert (
        error_of(send(HELLO, "/v1/messages/count_tokens"))
        == "max_tokens: Extra inputs are not permitted"
    )


# --------------------------------------------------------------------------- validation

_BAD_BODIES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no model", lambda b: b.pop("model"), "model: Field required"),
    ("no max_tokens", lambda b: b.pop("max_tokens"), "max_tokens: Field required"),
    ("no messages", lambda b: b.pop("messages"), "messages: Field required"),
    (
        "max_tokens 0",
        lambda b: b.update(max_tokens=0),
        "max_tokens: Input should be greater than or equal to 1",
    ),
    (
        "max_tokens too big",
        lambda b: b.update(max_tokens=100000),
        "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for claude-haiku-4-5",
    ),
    (
        "empty messages",
        lambda b: b.update(messages=[]),
        "messages: at least one message is required",
    ),
    (
        "bad role",
        lambda b: b["messages"][0].update(role="system"),
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        "assistant first",
        lambda b: b.update(
            messages=[{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
        ),
        'messages: first message must use the "user" role',
    ),
    (
        "empty content",
        lambda b: b["messages"][0].update(content=""),
        "messages.0: all messages must have non-empty content",
    ),
    (
        "empty text block",
        lambda b: b["messages"][0].update(content=[{"type": "text", "text": ""}]),
        "messages: text content blocks must be non-empty",
    ),
    (
        "unknown block",
        lambda b: b["messages"][0].update(content=[{"type": "video", "url": "x"}]),
        "messages.0.content.0: Input tag 'video' found using 'type'",
    ),
    (
        "tool_use in user turn",
        lambda b: b["messages"][0].update(
            content=[{"type": "tool_use", "id": "t", "name": "n", "input": {}}]
        ),
        "messages.0.content.0.type: tool_use blocks are not allowed in user messages",
    ),
    ("unknown field", lambda b: b.update(ttl="5m"), "ttl: Extra inputs are not permitted"),
    (
        "bad tool name",
        lambda b: b.update(tools=[{"name": "bad name!", "input_schema": {"type": "object"}}]),
        "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
    ),
    (
        "schema not object",
        lambda b: b.update(tools=[{"name": "t", "input_schema": {"type": "string"}}]),
        "tools.0.custom.input_schema.type: Input should be 'object'",
    ),
    (
        "schema not dict",
        lambda b: b.update(tools=[{"name": "t", "input_schema": "x"}]),
        "tools.0.custom.input_schema: Input should be a valid dictionary",
    ),
    (
        "duplicate tools",
        lambda b: b.update(tools=[{"name": "t", "input_schema": {"type": "object"}}] * 2),
        "tools: Tool names must be unique.",
    ),
    (
        "unknown tool_choice tool",
        lambda b: b.update(
            tools=[{"name": "t", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "u"},
        ),
        "tool_choice.tool.name: Tool 'u' not found in provided tools",
    ),
    (
        "tool_choice without tools",
        lambda b: b.update(tool_choice={"type": "any"}),
        "tool_choice: tool_choice may only be specified while providing tools",
    ),
    (
        "thinking budget too small",
        lambda b: b.update(thinking={"type": "enabled", "budget_tokens": 100}),
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
    ),
    (
        "thinking budget over max_tokens",
        lambda b: b.update(thinking={"type": "enabled", "budget_tokens": 2048}),
        "max_tokens: `max_tokens` must be greater than `thinking.budget_tokens`",
    ),
    (
        "thinking with forced tool",
        lambda b: b.update(
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 2048},
            tools=[{"name": "t", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any"},
        ),
        "Thinking may not be enabled when tool_choice forces tool use.",
    ),
    (
        "temperature out of range",
        lambda b: b.update(temperature=1.5),
        "temperature: Input should be between 0 and 1",
    ),
    (
        "blank stop sequence",
        lambda b: b.update(stop_sequences=["  "]),
        "stop_sequences: each stop sequence must contain non-whitespace",
    ),
    (
        "orphan tool_result",
        lambda b: b["messages"][0].update(
            content=[{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]
        ),
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_x",
    ),
    (
        "tool_use without result",
        lambda b: b.update(
            messages=[
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_9", "name": "t", "input": {}}],
                },
                {"role": "user", "content": "and?"},
            ]
        ),
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_9",
    ),
    (
        "trailing whitespace prefill",
        lambda b: b["messages"].append({"role": "assistant", "content": "The answer is "}),
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    (
        "bad image media type",
        lambda b: b["messages"][0].update(
            content=[
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/bmp", "data": "AAAA"},
                }
            ]
        ),
        "messages.0.content.0.source.base64.media_type",
    ),
    (
        "stream not bool",
        lambda b: b.update(stream="yes"),
        "stream: Input should be a valid boolean",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in _BAD_BODIES], ids=[n for n, _, _ in _BAD_BODIES]
)
def test_invalid_requests_get_a_400_naming_the_field(
    send: Send, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    body = copy.deepcopy(HELLO)
    mutate(body)
    message = error_of(send(body))
    assert message.startswith(expected) or expected in message, message


def test_malformed_json_gets_the_real_error_shape(client: httpx.Client, emu: Emulator) -> None:
    response = client.post(
        "/v1/messages",
        content=b'{"model": "claude-haiku-4-5", "max_tokens": ',
        headers={"content-type": "application/json"},
    )
    body = response.json()
    assert response.status_code == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "error parsing the body" in body["error"]["message"]
    assert body["request_id"] == response.headers["request-id"]
    assert emu.log[-1].body is None
    assert emu.bill.entries == []


def test_unknown_path_and_wrong_method(client: httpx.Client) -> None:
    assert error_of(client.get("/v1/models/nope"), 404).startswith("Not found")
    assert client.get("/v1/models/nope").json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/messages").status_code == 405


def test_oversized_body_is_413(client: httpx.Client) -> None:
    huge = b'{"model": "claude-haiku-4-5", "x": "' + b"a" * (32 * 1024 * 1024) + b'"}'
    response = client.post("/v1/messages", content=huge)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


# --------------------------------------------------------------------------- auth & versions


def test_missing_auth_is_401(emu: Emulator) -> None:
    with httpx.Client(
        transport=emu.transport(), base_url="http://e", headers={"anthropic-version": "2023-06-01"}
    ) as c:
        response = c.post("/v1/messages", json=HELLO)
    assert error_of(response, 401) == "x-api-key header is required"
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("auth", [{"x-api-key": "good"}, {"authorization": "Bearer good"}])
def test_both_auth_headers_and_key_allowlist(auth: dict[str, str]) -> None:
    emu = Emulator(api_keys={"good"})
    headers = {"anthropic-version": "2023-06-01"}
    with httpx.Client(transport=emu.transport(), base_url="http://e", headers=headers) as c:
        assert c.post("/v1/messages", json=HELLO, headers=auth).status_code == 200
        bad = {k: v.replace("good", "bad") for k, v in auth.items()}
        assert error_of(c.post("/v1/messages", json=HELLO, headers=bad), 401) == "invalid x-api-key"


def test_anthropic_version_is_required_and_checked(emu: Emulator) -> None:
    with httpx.Client(
        transport=emu.transport(), base_url="http://e", headers={"x-api-key": "k"}
    ) as c:
        assert (
            error_of(c.post("/v1/messages", json=HELLO)) == "anthropic-version: header is required"
        )
        assert "invalid version" in error_of(
            c.post("/v1/messages", json=HELLO, headers={"anthropic-version": "2020-01-01"})
        )


@pytest.mark.parametrize("param", ["temperature", "top_p", "top_k"])
def test_sampling_parameters_are_rejected_only_under_2026_10_21(
    client: httpx.Client, param: str
) -> None:
    body = {**HELLO, param: 1 if param != "top_k" else 5}
    old = client.post("/v1/messages", json=body)
    assert old.status_code == 200
    new = client.post(
        "/v1/messages",
        json=body,
        headers={"anthropic-version": "2026-10-21", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    message = error_of(new)
    assert message.startswith(f"{param}: ") and "2026-10-21" in message
    assert (
        client.post(
            "/v1/messages", json=HELLO, headers={"anthropic-version": "2026-10-21"}
        ).status_code
        == 200
    )


def test_2026_version_rejects_documents_in_assistant_turns(client: httpx.Client) -> None:
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
    }
    body = {
        **HELLO,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [doc]},
            {"role": "user", "content": "More"},
        ],
    }
    assert client.post("/v1/messages", json=body).status_code == 200
    assert "document" in error_of(
        client.post("/v1/messages", json=body, headers={"anthropic-version": "2026-10-21"})
    )


def test_extra_models_are_answered_but_not_priced() -> None:
    emu = Emulator(extra_models=["my-gateway-model"])
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://e",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        response = c.post("/v1/messages", json={**HELLO, "model": "my-gateway-model"})
    assert response.status_code == 200
    assert response.json()["model"] == "my-gateway-model"
    entry = emu.bill.entries[-1]
    assert entry.priced is False
    assert entry.usd == 0.0


def test_echo_model_dated() -> None:
    emu = Emulator(echo_model="dated")
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://e",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        assert c.post("/v1/messages", json=HELLO).json()["model"] == "claude-haiku-4-5-20251001"


# --------------------------------------------------------------------------- answers


def test_same_request_same_answer_and_seed_changes_it(emu: Emulator) -> None:
    def answer(seed: int) -> list[Any]:
        e = Emulator(seed=seed, clock=ManualClock())
        with httpx.Client(
            transport=e.transport(),
            base_url="http://e",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ) as c:
            first = c.post("/v1/messages", json=HELLO).json()
            second = c.post("/v1/messages", json=HELLO).json()
        assert first["id"] != second["id"]
        assert first["content"] == second["content"]
        return list(first["content"])

    assert answer(0) == answer(0)
    assert answer(0) != answer(1)


def test_cache_markers_do_not_change_the_answer(send: Send) -> None:
    marked = {
        **HELLO,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    plain = {**HELLO, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert send(marked).json()["content"] == send(plain).json()["content"]


def test_max_tokens_caps_the_answer(send: Send, emu: Emulator) -> None:
    full = send(HELLO).json()
    capped = send({**HELLO, "max_tokens": 5}).json()
    assert capped["stop_reason"] == "max_tokens"
    assert 1 <= capped["usage"]["output_tokens"] <= 5
    assert full["content"][0]["text"].startswith(capped["content"][0]["text"])
    assert capped["usage"]["output_tokens"] == emu.count_tokens_of(capped["content"][0]["text"])


def test_stop_sequences_cut_the_answer(send: Send) -> None:
    text = send(HELLO).json()["content"][0]["text"]
    word = text.split()[3].strip(".,")
    stopped = send({**HELLO, "stop_sequences": ["ZZZ-never", word]}).json()
    assert stopped["stop_reason"] == "stop_sequence"
    assert stopped["stop_sequence"] == word
    assert word not in stopped["content"][0]["text"]
    assert text.startswith(stopped["content"][0]["text"])


def test_thinking_returns_a_signed_thinking_block_first(send: Send) -> None:
    body = {**HELLO, "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    message = send(body).json()
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["content"][0]["thinking"]
    assert message["content"][0]["signature"]


# --------------------------------------------------------------------------- tool use

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
    },
}
BOOKING = {
    "name": "create_booking",
    "description": "Book a trip",
    "input_schema": {
        "type": "object",
        "$defs": {
            "Passenger": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "email": {"type": "string", "format": "email"},
                    "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 120},
                },
                "required": ["name", "email"],
            }
        },
        "properties": {
            "kind": {"const": "flight"},
            "date": {"type": "string", "format": "date"},
            "passengers": {
                "type": "array",
                "items": {"$ref": "#/$defs/Passenger"},
                "minItems": 1,
                "maxItems": 3,
            },
            "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 5000},
            "refundable": {"type": "boolean"},
            "seat": {
                "anyOf": [
                    {"type": "string", "pattern": "^[0-9]+[A-F]$", "maxLength": 3},
                    {"type": "null"},
                ]
            },
            "notes": {"type": "null"},
            "meta": {
                "type": "object",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
                },
                "required": ["tags"],
            },
        },
        "required": ["kind", "date", "passengers", "price", "meta"],
    },
}


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    """A small JSON-schema validator for the keywords tool schemas use (jsonschema is not in .venv)."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        validate(value, target, root)
        return
    if "const" in schema:
        assert value == schema["const"]
    if "enum" in schema:
        assert value in schema["enum"]
    if "anyOf" in schema:
        errors = 0
        for option in schema["anyOf"]:
            try:
                validate(value, option, root)
            except AssertionError:
                errors += 1
        assert errors < len(schema["anyOf"]), value
        return
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        checks = {
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
        }
        assert any(checks[t](value) for t in types), (value, types)
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, (key, value)
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, root)
    if isinstance(value, list):
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9)
        if schema.get("uniqueItems"):
            assert len({repr(v) for v in value}) == len(value)
        for item in value:
            validate(item, schema.get("items", {}), root)
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9)
        if schema.get("format") == "date":
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)
        if schema.get("format") == "email":
            assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"]
        if "maximum" in schema:
            assert value <= schema["maximum"]
        if "exclusiveMinimum" in schema:
            assert value > schema["exclusiveMinimum"]


@pytest.mark.parametrize("seed", range(25))
def test_tool_input_validates_against_the_schema(seed: int) -> None:
    emu = Emulator(seed=seed)
    with httpx.Client(
        transport=emu.transport(),
        base_url="http://e",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as c:
        for tool in (WEATHER, BOOKING):
            body = {
                **HELLO,
                "tools": [WEATHER, BOOKING],
                "tool_choice": {"type": "tool", "name": tool["name"]},
                "messages": [{"role": "user", "content": f"Please do it (variant {seed})"}],
            }
            message = c.post("/v1/messages", json=body).json()
            assert message["stop_reason"] == "tool_use"
            assert [b["type"] for b in message["content"]] == ["tool_use"]
            call = message["content"][0]
            assert call["name"] == tool["name"]
            assert re.fullmatch(r"toolu_01[A-Za-z0-9]{22}", call["id"])
            validate(call["input"], tool["input_schema"], tool["input_schema"])


@pytest.mark.parametrize("where", ["output_config", "output_format"])
def test_structured_output_answers_with_json_that_follows_the_schema(
    send: Send, where: str
) -> None:
    schema = BOOKING["input_schema"]
    fmt = {"type": "json_schema", "schema": schema}
    extra = (
        {"output_config": {"format": fmt}} if where == "output_config" else {"output_format": fmt}
    )
    message = send({**HELLO, **extra}).json()
    assert message["stop_reason"] == "end_turn"
    assert [b["type"] for b in message["content"]] == ["text"]
    validate(json.loads(message["content"][0]["text"]), schema, schema)


def test_auto_calls_a_tool_then_answers_after_the_result(send: Send) -> None:
    first_turn = [{"role": "user", "content": "What's the weather in Paris?"}]
    body = {**HELLO, "tools": [WEATHER], "messages": first_turn}
    call = send(body).json()
    assert call["stop_reason"] == "tool_use"
    assert [b["type"] for b in call["content"]] == ["text", "tool_use"]
    tool_use = call["content"][1]
    follow_up = [
        *first_turn,
        {"role": "assistant", "content": call["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "Sunny"}],
        },
    ]
    answer = send({**body, "messages": follow_up}).json()
    assert answer["stop_reason"] == "end_turn"
    assert [b["type"] for b in answer["content"]] == ["text"]


def test_tool_choice_none_and_any(send: Send) -> None:
    none = send({**HELLO, "tools": [WEATHER, BOOKING], "tool_choice": {"type": "none"}}).json()
    assert none["stop_reason"] == "end_turn"
    forced = send({**HELLO, "tools": [WEATHER, BOOKING], "tool_choice": {"type": "any"}}).json()
    assert forced["stop_reason"] == "tool_use"
    assert forced["content"][0]["name"] in ("get_weather", "create_booking")


def test_tool_ids_are_unique(send: Send) -> None:
    body = {**HELLO, "tools": [WEATHER], "tool_choice": {"type": "any"}}
    ids = {send(body).json()["content"][0]["id"] for _ in range(5)}
    assert len(ids) == 5
