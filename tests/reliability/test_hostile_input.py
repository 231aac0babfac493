"""Hostile requests: each is rejected locally, before any HTTP, or accepted by the API.

The local validator must never raise anything but a :class:`haikucache.HaikuCacheError`
(no ``ValueError`` from ``json.dumps``, no ``RecursionError``, no ``UnicodeEncodeError``),
and should reject locally what the API would reject: a request that travels to the
emulator only to get a 400 back is a miss of the validator. Requests are mutations of valid
ones (NaN, lone surrogates, values that are not JSON, deep nesting, unknown fields, bad
metadata, bad blocks, random values in random places …), mixed with valid ones.
"""

from __future__ import annotations

import copy
import decimal
import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import haikucache
from haikucache import (
    APIStatusError,
    Client,
    ConfigurationError,
    Engine,
    HaikuCacheError,
    Message,
    MessageStream,
    validate_request,
)
from haikucache._wire import API_VERSIONS, MESSAGES_FIELDS
from haikucache.testing import Emulator

MODEL = "claude-haiku-4-5"
# A request the emulator rejects with a 400 slipped past local validation; a few may (rules
# that cannot be checked locally), but not more than this share of all requests.
MAX_UPSTREAM_REJECTIONS = 0.02

Body = dict[str, Any]


# --------------------------------------------------------------------------- valid requests

_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def _plain() -> Body:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }


def _system_and_tools() -> Body:
    return {
        "model": MODEL,
        "max_tokens": 128,
        "system": [
            {"type": "text", "text": "You are a weather assistant. " * 20},
            {"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": copy.deepcopy(_SCHEMA),
            }
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
        "messages": [
            {"role": "user", "content": "Weather in Paris for 3 days?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {"city": "Paris", "days": 3, "detail": {"units": ["C", "F"]}},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "Sunny, 21 C"}],
                    }
                ],
            },
        ],
        "temperature": 0.3,
        "metadata": {"user_id": "user-42"},
        "stop_sequences": ["\n\nHuman:"],
    }


def _thinking() -> Body:
    return {
        "model": MODEL,
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "Is 91 prime?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "91 = 7 * 13.", "signature": "c2ln"},
                    {"type": "text", "text": "No: 91 = 7 × 13."},
                ],
            },
            {"role": "user", "content": [{"type": "text", "text": "And 97?"}]},
        ],
        "service_tier": "auto",
    }


def _prefill_and_document() -> Body:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "Notes."},
                        "title": "notes",
                    },
                    {"type": "text", "text": "Summarise as JSON."},
                ],
            },
            {"role": "assistant", "content": "{"},
        ],
        "cache_control": {"type": "ephemeral"},
    }


TEMPLATES: list[Callable[[], Body]] = [_plain, _system_and_tools, _thinking, _prefill_and_document]


# --------------------------------------------------------------------------- where to poison


def _slots(body: Body, *, schemas: bool = True) -> list[tuple[Any, Any]]:
    """Every (container, key) of the body, iteratively, optionally not inside tool schemas."""
    out: list[tuple[Any, Any]] = []
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            if node is body and key == "model":
                continue  # any other model name is a 404 (gateways have their own names)
            out.append((node, key))
            if isinstance(value, (dict, list)) and (schemas or key != "input_schema"):
                stack.append(value)
    return out


def _dicts(body: Body) -> list[dict[str, Any]]:
    out = [body]
    for node, key in _slots(body):
        if isinstance(node[key], dict):
            out.append(node[key])
    return out


def _user_turn(body: Body) -> list[Any]:
    """The content list of the first user turn (made a list if it was a string)."""
    message = body["messages"][0]
    if isinstance(message["content"], str):
        message["content"] = [{"type": "text", "text": message["content"]}]
    content: list[Any] = message["content"]
    return content


def _nested(depth: int, as_list: bool) -> Any:
    value: Any = [] if as_list else {}
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
non_json = st.sampled_from(
    [
        {1, 2},
        frozenset({"a"}),
        b"bytes",
        bytearray(b"x"),
        1j,
        decimal.Decimal("1.5"),
        object(),
        print,
    ]
)

# Any Python value at all: every JSON type, and what is not JSON (NaN, huge integers, lone
# surrogates, bytes, sets, complex, Decimal), with keys of any hashable type.
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=10)
anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | any_text
    | st.binary(max_size=4)
    | st.complex_numbers()
    | st.decimals()
    | st.sets(st.integers(), max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(any_text | st.integers() | st.none(), inner, max_size=3)
    ),
    max_leaves=10,
)

# --------------------------------------------------------------------------- mutations

Draw = Callable[[st.SearchStrategy[Any]], Any]
Mutation = Callable[[Draw, Body], None]

words = st.text(min_size=1, max_size=80).filter(lambda t: t.strip() == t and not t.isspace())


def vary_question(draw: Draw, body: Body) -> None:
    body["messages"][0]["content"] = draw(words)


def vary_max_tokens(draw: Draw, body: Body) -> None:
    low = 1025 if "thinking" in body else 1
    body["max_tokens"] = draw(st.integers(low, 8_192))


def vary_sampling(draw: Draw, body: Body) -> None:
    if "thinking" not in body:
        body[draw(st.sampled_from(["temperature", "top_p"]))] = draw(st.floats(0, 1))
        body["top_k"] = draw(st.integers(0, 500))


def vary_metadata(draw: Draw, body: Body) -> None:
    body["metadata"] = {"user_id": draw(st.none() | st.text(max_size=256))}


def vary_stop_sequences(draw: Draw, body: Body) -> None:
    body["stop_sequences"] = draw(st.lists(words, max_size=4))


def vary_tool_input(draw: Draw, body: Body) -> None:
    for message in body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else ():
            if block["type"] == "tool_use":
                block["input"] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))


def add_marker(draw: Draw, body: Body) -> None:
    ttl = draw(st.sampled_from([{}, {"ttl": "5m"}]))
    body["messages"][0] = {
        "role": "user",
        "content": [
            {
                "type": "text",
                "text": "Context. " * 50,
                "cache_control": {"type": "ephemeral", **ttl},
            }
        ]
        + (
            body["messages"][0]["content"]
            if isinstance(body["messages"][0]["content"], list)
            else [{"type": "text", "text": body["messages"][0]["content"]}]
        ),
    }


BENIGN: list[Mutation] = [
    vary_question,
    vary_max_tokens,
    vary_sampling,
    vary_metadata,
    vary_stop_sequences,
    vary_tool_input,
    add_marker,
]


def poison_number(draw: Draw, body: Body) -> None:
    node, key = draw(st.sampled_from(_slots(body)))
    node[key] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))


def poison_string(draw: Draw, body: Body) -> None:
    surrogate = draw(st.sampled_from(["\ud800", "\udfff", "\udc80x", "a\ud83d"]))
    strings = [(n, k) for n, k in _slots(body) if isinstance(n[k], str)]
    if draw(st.booleans()) and strings:
        node, key = draw(st.sampled_from(strings))
        node[key] = node[key] + surrogate
    else:
        draw(st.sampled_from(_dicts(body)))[surrogate] = "x"


def poison_type(draw: Draw, body: Body) -> None:
    node, key = draw(st.sampled_from(_slots(body)))
    node[key] = draw(non_json)


def poison_key(draw: Draw, body: Body) -> None:
    target = draw(st.sampled_from(_dicts(body)))
    target[draw(st.sampled_from([1, 2.5, None, True, ("a",)]))] = "x"


def deep_nesting(draw: Draw, body: Body) -> None:
    node, key = draw(st.sampled_from(_slots(body)))
    node[key] = _nested(draw(st.sampled_from([129, 300, 2_000, 10_000])), draw(st.booleans()))


def unknown_field(draw: Draw, body: Body) -> None:
    name = draw(
        st.sampled_from(["temprature", "max_token", "user", "stop", "extra_headers", "prompt"])
        | st.text(min_size=1, max_size=12)
    )
    body[name] = draw(json_values.filter(lambda v: v is not None))


def bad_metadata(draw: Draw, body: Body) -> None:
    body["metadata"] = draw(
        st.sampled_from(
            [
                {"user": "u"},
                {"user_id": "u", "session_id": "s"},
                {"user_id": 42},
                {"user_id": ["u"]},
                {"user_id": "x" * 257},
                {"user_id": "x" * 256},  # valid
                "user-42",
                ["user_id"],
            ]
        )
    )


def bad_service_tier(draw: Draw, body: Body) -> None:
    body["service_tier"] = draw(st.sampled_from(["priority", "standard", "batch", "", 1, ["auto"]]))


def bad_stop_sequences(draw: Draw, body: Body) -> None:
    body["stop_sequences"] = draw(
        st.sampled_from([[""], [" "], ["\n\t "], ["ok", ""], [1], "END", {"a": 1}, ["END"]])
    )


def bad_blocks(draw: Draw, body: Body) -> None:
    block = draw(
        st.sampled_from(
            [
                {"type": "thinking", "thinking": "x", "signature": "s"},
                {"type": "redacted_thinking", "data": "abc"},
                {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}},
                {"type": "video", "url": "https://example.com/v.mp4"},
                {"type": "TEXT", "text": "x"},
                {"text": "no type"},
                {"type": "text", "text": ""},
                {"type": "text", "text": "  \n"},
                {"type": "text"},
                {"type": "image", "source": {"type": "ftp", "url": "x"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/bmp", "data": "AA=="},
                },
                {"type": "image", "source": {"type": "url"}},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/html", "data": "x"},
                },
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf"}},
                {"type": "document", "source": {"type": "content", "content": [{"type": "video"}]}},
                {"type": "tool_result", "tool_use_id": "toolu_missing", "content": "x"},
                "just a string",
                ["a", "list"],
            ]
        )
    )
    content = _user_turn(body)
    content.insert(draw(st.integers(0, len(content))), block)


def bad_tool_choice(draw: Draw, body: Body) -> None:
    body.setdefault("tools", [{"name": "f", "input_schema": {"type": "object"}}])
    body["tool_choice"] = draw(
        st.sampled_from(
            [
                {"type": "auto", "disable_parallel_tool_use": "yes"},
                {"type": "any", "disable_parallel_tool_use": 1},
                {"type": "tool", "name": {}},
                {"type": "tool", "name": ["f"]},
                {"type": "tool", "name": "missing"},
                {"type": "maybe"},
                "auto",
            ]
        )
    )


def bad_tools(draw: Draw, body: Body) -> None:
    tool = draw(
        st.sampled_from(
            [
                {"name": "bad name!", "input_schema": {"type": "object"}},
                {"name": "x" * 65, "input_schema": {"type": "object"}},
                {"name": "f"},
                {"name": "f", "input_schema": {"type": "array"}},
                {"name": "f", "input_schema": {"type": "object", "anyOf": [{}]}},
                {"name": "f", "input_schema": {"type": "object", "properties": []}},
                {"name": "f", "input_schema": {"type": "object", "properties": {"a": "string"}}},
                {"name": "f", "input_schema": {"type": "object", "required": "a"}},
                {"name": "f", "description": 5, "input_schema": {"type": "object"}},
                {"name": "f", "type": 7},
            ]
        )
    )
    body.setdefault("tools", []).append(tool)


def bad_sampling(draw: Draw, body: Body) -> None:
    name, value = draw(
        st.sampled_from(
            [
                ("temperature", 1.5),
                ("temperature", -0.1),
                ("temperature", "0.5"),
                ("top_p", 2),
                ("top_k", -1),
                ("top_k", 2.5),
                ("max_tokens", 0),
                ("max_tokens", 64_001),
                ("max_tokens", True),
                ("stream", "yes"),
                ("thinking", {"type": "enabled", "budget_tokens": 100}),
                ("thinking", {"type": "on"}),
                ("thinking", {"type": "enabled", "budget_tokens": 1024, "display": "full"}),
            ]
        )
    )
    body[name] = value
    if draw(st.booleans()):
        # Sampling and forced tools are not allowed with thinking.
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        body["max_tokens"] = 2048


def bad_cache_control(draw: Draw, body: Body) -> None:
    marker = draw(
        st.sampled_from(
            [
                {"type": "persistent"},
                {"type": "ephemeral", "ttl": "2h"},
                {"type": "ephemeral", "ttl": 300},
                {"type": "ephemeral", "scope": "global"},
                "ephemeral",
                {"type": "ephemeral", "ttl": "1h"},
                {"type": "ephemeral"},
            ]
        )
    )
    content = _user_turn(body)
    for _ in range(draw(st.integers(1, 5))):
        content.append({"type": "text", "text": "more", "cache_control": marker})


def bad_pairing(draw: Draw, body: Body) -> None:
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    block["tool_use_id"] = draw(st.sampled_from(["toolu_other", "x"]))
                    return
    body["messages"][-1:] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {"role": "user", "content": "never mind"},
    ]


def bad_turns(draw: Draw, body: Body) -> None:
    body["messages"] = draw(
        st.sampled_from(
            [
                [],
                [{"role": "assistant", "content": "hi"}],
                [{"role": "system", "content": "hi"}],
                [{"role": "user", "content": ""}],
                [{"role": "user", "content": []}],
                [{"role": "user"}],
                [{"role": "user", "content": 5}],
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Sure "}],
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n"}],
                "hello",
            ]
        )
    )


def over_context_window(draw: Draw, body: Body) -> None:
    # Surely over 200K tokens whatever the tokenizer: 2.5 M characters of words.
    _user_turn(body).append({"type": "text", "text": "lorem ipsum dolor " * 140_000})


def replace_anything(draw: Draw, body: Body) -> None:
    node, key = draw(st.sampled_from(_slots(body, schemas=False)))
    node[key] = draw(json_values)


def poison_anything(draw: Draw, body: Body) -> None:
    node, key = draw(st.sampled_from(_slots(body)))
    node[key] = draw(anything)


def delete_anything(draw: Draw, body: Body) -> None:
    node, key = draw(
        st.sampled_from([(n, k) for n, k in _slots(body, schemas=False) if isinstance(n, dict)])
    )
    del node[key]


MUTATIONS: list[Mutation] = [
    poison_number,
    poison_string,
    poison_type,
    poison_key,
    deep_nesting,
    unknown_field,
    bad_metadata,
    bad_service_tier,
    bad_stop_sequences,
    bad_blocks,
    bad_tool_choice,
    bad_tools,
    bad_sampling,
    bad_cache_control,
    bad_pairing,
    bad_turns,
    over_context_window,
    replace_anything,
    replace_anything,
    poison_anything,
    delete_anything,
]


# --------------------------------------------------------------------------- sending


@pytest.fixture(scope="module")
def emu() -> Emulator:
    return Emulator(seed=1)


@pytest.fixture(scope="module")
def client(emu: Emulator) -> Iterator[Client]:
    with Client(
        api_key="sk-test", transport=emu.transport(), engine=Engine(ledger=False), max_retries=0
    ) as c:
        yield c


def send(client: Client, emu: Emulator, body: Body) -> str:
    """``"local"`` (rejected before any HTTP), ``"ok"`` (200) or ``"upstream_400"``."""
    sent_before = emu.requests["messages"]
    try:
        # Every field through extra_body, so the body reaches the engine exactly as built.
        result = client.messages.create(model=None, max_tokens=None, messages=None, extra_body=body)  # type: ignore[arg-type]
    except HaikuCacheError as exc:
        error = exc
    else:
        if isinstance(result, MessageStream):
            with result:
                for _ in result:
                    pass
        assert emu.requests["messages"] == sent_before + 1
        return "ok"
    if not isinstance(error, APIStatusError):
        assert emu.requests["messages"] == sent_before, f"rejected only after it was sent: {error}"
        return "local"
    assert emu.requests["messages"] == sent_before + 1
    assert error.status_code == 400, f"{error} for {body!r:.2000}"
    return "upstream_400"


def mutate(draw: Draw, body: Body, mutation: Mutation) -> None:
    """Apply ``mutation`` if it still applies: an earlier one may have broken the shape it needs."""
    try:
        mutation(draw, body)
    except (LookupError, TypeError, AttributeError):
        pass


def test_hostile_requests_fail_locally_or_are_accepted(client: Client, emu: Emulator) -> None:
    outcomes: Counter[str] = Counter()
    slipped: list[str] = []

    @settings(
        max_examples=600,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        body = data.draw(st.sampled_from(TEMPLATES), label="template")()
        for _ in range(data.draw(st.integers(0, 3), label="benign mutations")):
            mutate(data.draw, body, data.draw(st.sampled_from(BENIGN), label="benign"))
        for _ in range(data.draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]), label="mutations")):
            mutate(data.draw, body, data.draw(st.sampled_from(MUTATIONS), label="mutation"))
        outcome = send(client, emu, body)
        outcomes[outcome] += 1
        if outcome == "upstream_400":
            slipped.append(repr(body)[:300])

    run()
    total = sum(outcomes.values())
    assert total >= 600
    assert outcomes["local"] > total // 3 and outcomes["ok"] > total // 10, outcomes
    assert outcomes["upstream_400"] <= MAX_UPSTREAM_REJECTIONS * total, "\n".join(slipped)


@settings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(sorted(MESSAGES_FIELDS)) | any_text, anything, max_size=8
    ),
    content=anything,
    api_version=st.sampled_from(API_VERSIONS),
    count_tokens=st.booleans(),
)
def test_validation_raises_nothing_but_validation_errors(
    fields: dict[str, Any], content: Any, api_version: str, count_tokens: bool
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}
    param = "accepted"
    try:
        validate_request(body, api_version=api_version, count_tokens=count_tokens)
    except haikucache.RequestValidationError as exc:
        param = exc.param or ""
    assert param, "every rejection names the field"


# --------------------------------------------------------------------------- exact cases


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


def _with(**fields: Any) -> Body:
    return {**_plain(), **fields}


_SURROGATE = "\ud800"

EXACT_CASES: dict[str, tuple[Body, str]] = {
    "NaN in a tool_use input": (
        _with(messages=_tool_turns({"x": math.nan})),
        "messages.1.content.0.input.x",
    ),
    "Infinity in a tool schema": (
        _with(tools=[{"name": "f", "input_schema": {"type": "object", "maximum": math.inf}}]),
        "tools.0.input_schema.maximum",
    ),
    "NaN in an extra field": (_with(container={"x": -math.inf}), "container.x"),
    "NaN in metadata": (_with(metadata={"user_id": math.nan}), "metadata.user_id"),
    "NaN temperature": (_with(temperature=math.nan), "temperature"),
    "lone surrogate in text": (
        _with(messages=[{"role": "user", "content": f"a{_SURROGATE}b"}]),
        "messages.0.content",
    ),
    "lone surrogate in a key": (
        _with(messages=_tool_turns({_SURROGATE: 1})),
        "messages.1.content.0.input",
    ),
    "lone surrogate in system": (
        _with(system=[{"type": "text", "text": _SURROGATE}]),
        "system.0.text",
    ),
    "a set": (_with(messages=_tool_turns({"x": {1, 2}})), "messages.1.content.0.input.x"),
    "bytes": (_with(system=b"be brief"), "system"),
    "an arbitrary object": (_with(metadata={"user_id": object()}), "metadata.user_id"),
    "a non-string key": (_with(messages=_tool_turns({1: "x"})), "messages.1.content.0.input"),
    "a tuple key": (_with(messages=_tool_turns({(1, 2): "x"})), "messages.1.content.0.input"),
    "metadata with another key": (_with(metadata={"user": "u"}), "metadata.user"),
    "metadata.user_id not a string": (_with(metadata={"user_id": 42}), "metadata.user_id"),
    "metadata.user_id over 256 characters": (
        _with(metadata={"user_id": "u" * 257}),
        "metadata.user_id",
    ),
    "an unknown top-level field": (_with(temprature=0.2), "temprature"),
    "service_tier priority": (_with(service_tier="priority"), "service_tier"),
    "an empty stop sequence": (_with(stop_sequences=[""]), "stop_sequences.0"),
    "a whitespace stop sequence": (_with(stop_sequences=["END", " \n"]), "stop_sequences.1"),
    "a thinking block in a user turn": (
        _with(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "thinking", "thinking": "x", "signature": "s"}],
                }
            ]
        ),
        "messages.0.content.0",
    ),
    "a redacted_thinking block in a user turn": (
        _with(messages=[{"role": "user", "content": [{"type": "redacted_thinking", "data": "x"}]}]),
        "messages.0.content.0",
    ),
    "an unknown block type": (
        _with(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
        "messages.0.content.0.type",
    ),
    "disable_parallel_tool_use not a bool": (
        _with(
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
            tool_choice={"type": "auto", "disable_parallel_tool_use": "true"},
        ),
        "tool_choice.disable_parallel_tool_use",
    ),
    "a prompt surely over the context window": (
        _with(messages=[{"role": "user", "content": "lorem ipsum dolor " * 140_000}]),
        "messages",
    ),
    "a whitespace-only text block": (
        _with(messages=[{"role": "user", "content": [{"type": "text", "text": " \n"}]}]),
        "messages.0.content.0.text",
    ),
    "a prefill ending in whitespace": (
        _with(
            messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "Sure "}]
        ),
        "messages.1.content",
    ),
    "a tool_use without its tool_result": (
        _with(messages=[*_tool_turns({})[:2], {"role": "user", "content": "never mind"}]),
        "messages.1.content.0",
    ),
}


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_each_reported_case_is_rejected_locally(client: Client, emu: Emulator, case: str) -> None:
    request, param = EXACT_CASES[case]
    sent_before = emu.requests["messages"]
    with pytest.raises(haikucache.RequestValidationError) as info:
        client.messages.create(model=None, max_tokens=None, messages=None, extra_body=request)  # type: ignore[arg-type]
    assert info.value.param == param, str(info.value)
    assert emu.requests["messages"] == sent_before


@pytest.mark.parametrize("depth", [129, 1_000, 10_000])
def test_deep_nesting_is_rejected_locally(client: Client, emu: Emulator, depth: int) -> None:
    sent_before = emu.requests["messages"]
    for nested in (_nested(depth, as_list=False), _nested(depth, as_list=True)):
        with pytest.raises(haikucache.RequestValidationError, match="nested more than"):
            client.messages.create(model=MODEL, max_tokens=64, messages=_tool_turns({"x": nested}))
    assert emu.requests["messages"] == sent_before


def test_a_long_prompt_that_fits_is_sent(client: Client, emu: Emulator) -> None:
    # 7 characters a token in the emulator's count (" abcdef" is one token): ~190K tokens,
    # under the 200K window, and more characters than 4-a-token would allow.
    text = " abcdef" * 190_000
    message = client.messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": text}]
    )
    usage = message.usage
    tokens = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    assert 180_000 < tokens < 200_000


def test_valid_requests_are_accepted(client: Client) -> None:
    for template in TEMPLATES:
        assert isinstance(
            client.messages.create(
                model=None, max_tokens=None, messages=None, extra_body=template()
            ),  # type: ignore[arg-type]
            Message,
        )


# --------------------------------------------------------------------------- the decorator


@pytest.mark.parametrize(
    ("keyword", "suggestion"),
    [
        ("temprature", "temperature"),
        ("max_token", "max_tokens"),
        ("namspace", "namespace"),
        ("stop_sequence", "stop_sequences"),
    ],
)
def test_a_mistyped_decorator_keyword_fails_at_decoration_time(
    keyword: str, suggestion: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"did you mean '{suggestion}'"):
        haikucache.llm(**{keyword: 0.2})


def test_decorator_keywords_that_are_api_fields_pass() -> None:
    haikucache.llm(
        top_p=0.9, stop_sequences=["END"], metadata={"user_id": "u"}, service_tier="auto"
    )
