"""Exact keys: stable, versioned, blind to exactly the non-semantic fields, never reordering."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from haikucache import KEY_VERSION, canonical_json, partition_key, request_key
from haikucache._keys import IGNORED_FIELDS

MARK = {"type": "ephemeral"}


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    }
    base.update(overrides)
    return base


def test_key_format_is_versioned_and_stable() -> None:
    key = request_key(body())
    assert key.startswith(f"{KEY_VERSION}:")
    assert len(key.split(":", 1)[1]) == 32
    # Pinned: a change to canonicalisation must bump KEY_VERSION, or stored entries are misread.
    assert request_key(
        {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    ) == ("hc1:b934b331325e288bb2e732f07b00124a")


def test_exactly_the_documented_fields_are_ignored() -> None:
    assert frozenset({"stream", "metadata", "cache_control"}) == IGNORED_FIELDS
    plain = request_key(body())
    assert request_key(body(stream=True)) == plain
    assert request_key(body(metadata={"user_id": "abc"})) == plain
    assert request_key(body(cache_control={"type": "ephemeral"})) == plain


def test_markers_anywhere_do_not_change_the_key() -> None:
    marked = body(
        tools=[
            {
                "name": "t",
                "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
        system=[{"type": "text", "text": "You are terse.", "cache_control": MARK}],
    )
    marked["messages"][1]["content"][0]["cache_control"] = MARK
    unmarked = body(tools=[{"name": "t", "input_schema": {"type": "object"}}])
    assert request_key(marked) == request_key(unmarked)


def test_markers_inside_tool_results_do_not_change_the_key() -> None:
    def request(marker: bool) -> dict[str, Any]:
        inner: dict[str, Any] = {"type": "text", "text": "42"}
        if marker:
            inner["cache_control"] = MARK
        return body(
            messages=[
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [inner]}],
                },
            ]
        )

    assert request_key(request(True)) == request_key(request(False))


def test_a_property_named_cache_control_in_a_schema_or_tool_input_is_kept() -> None:
    def with_schema(props: dict[str, Any]) -> dict[str, Any]:
        return body(tools=[{"name": "t", "input_schema": {"type": "object", "properties": props}}])

    assert request_key(with_schema({"cache_control": {"type": "string"}})) != request_key(
        with_schema({})
    )
    use = {"type": "tool_use", "id": "t1", "name": "t", "input": {"cache_control": "x"}}
    other = {"type": "tool_use", "id": "t1", "name": "t", "input": {}}
    assert request_key(
        body(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [use]}])
    ) != (
        request_key(
            body(
                messages=[
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": [other]},
                ]
            )
        )
    )


def test_everything_that_changes_the_answer_changes_the_key() -> None:
    base = request_key(body())
    variants = [
        body(model="claude-sonnet-4-5"),
        body(max_tokens=257),
        body(system="You are verbose."),
        body(temperature=0.0),
        body(top_p=0.9),
        body(top_k=5),
        body(stop_sequences=["END"]),
        body(tools=[{"name": "t", "input_schema": {"type": "object"}}]),
        body(tool_choice={"type": "auto"}),
        body(thinking={"type": "enabled", "budget_tokens": 1024}),
        body(output_config={"format": {"type": "json_schema"}}),
    ]
    keys = {request_key(v) for v in variants}
    assert base not in keys
    assert len(keys) == len(variants)
    assert request_key(body(), betas=["context-1m-2025-08-07"]) != base


def test_block_order_matters_and_is_never_changed() -> None:
    a = body(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}])
    b = body(system=[{"type": "text", "text": "B"}, {"type": "text", "text": "A"}])
    assert request_key(a) != request_key(b)
    tools = [{"name": n, "input_schema": {"type": "object"}} for n in ("x", "y")]
    assert request_key(body(tools=tools)) != request_key(body(tools=tools[::-1]))


def test_canonicalisation_never_mutates_reorders_or_moves_markers() -> None:
    request = body(
        tools=[
            {"name": "b", "input_schema": {"type": "object"}},
            {"name": "a", "input_schema": {"type": "object"}, "cache_control": MARK},
        ],
        system=[
            {"type": "text", "text": "S1"},
            {"type": "text", "text": "S2", "cache_control": MARK},
        ],
    )
    request["messages"][2]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "5m"}
    before = json.dumps(request)  # key order included: dumps without sort_keys
    snapshot = copy.deepcopy(request)
    request_key(request)
    partition_key(request)
    canonical_json(request)
    assert json.dumps(request) == before
    assert request == snapshot


def test_string_content_and_one_text_block_are_the_same_prompt() -> None:
    as_string = body(system="You are terse.")
    assert request_key(as_string) == request_key(body())
    assert canonical_json(as_string) == canonical_json(body())


def test_integral_floats_equal_ints() -> None:
    assert request_key(body(temperature=1)) == request_key(body(temperature=1.0))
    assert request_key(body(temperature=0.5)) != request_key(body(temperature=1.0))


def test_namespace_is_part_of_every_key() -> None:
    assert request_key(body(), namespace="tenant-a") != request_key(body(), namespace="tenant-b")
    assert partition_key(body(), namespace="tenant-a") != partition_key(
        body(), namespace="tenant-b"
    )


def test_partition_ignores_only_the_last_user_text() -> None:
    one = body()
    two = copy.deepcopy(one)
    two["messages"][2]["content"][0]["text"] = "a differently worded second question"
    assert partition_key(one) == partition_key(two)
    assert request_key(one) != request_key(two)
    # Anything else — history, system, sampling — separates partitions.
    three = copy.deepcopy(two)
    three["messages"][0]["content"] = "another first question"
    assert partition_key(three) != partition_key(one)
    assert partition_key(body(temperature=0.0)) != partition_key(one)


def test_no_partition_when_the_last_turn_is_not_plain_user_text() -> None:
    tool_turn = body(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
            },
        ]
    )
    assert partition_key(tool_turn) is None
    image = body(
        messages=[
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}
        ]
    )
    assert partition_key(image) is None
    prefill = body(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "The answer is"},
        ]
    )
    assert partition_key(prefill) is None


# The key is computed from a framed encoding streamed from the request (for speed); it must
# agree with the canonical JSON: equal keys exactly when the canonical JSON is equal.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
blocks = st.one_of(
    st.builds(
        lambda t, m: {"type": "text", "text": t, **({"cache_control": MARK} if m else {})},
        st.text(min_size=1, max_size=6),
        st.booleans(),
    ),
    st.dictionaries(
        st.sampled_from(["type", "text", "input", "cache_control", "x"]), json_values, max_size=4
    ),
)
contents = st.one_of(st.text(max_size=6), st.lists(blocks, max_size=3))
requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["claude-haiku-4-5", "m"]),
        "max_tokens": st.integers(1, 3),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant"]), "content": contents}
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "system": contents,
        "stream": st.booleans(),
        "temperature": st.sampled_from([0, 0.0, 0.5, 1, 1.0]),
        "tools": st.lists(
            st.dictionaries(
                st.sampled_from(["name", "input_schema", "cache_control"]), json_values, max_size=3
            ),
            max_size=2,
        ),
        "extra": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(requests, requests)
def test_key_equality_agrees_with_canonical_json(a: dict[str, Any], b: dict[str, Any]) -> None:
    def norm(text: str) -> Any:
        # JSON cannot tell 1 from 1.0 apart once parsed back as numbers; neither does the key.
        return json.loads(
            text, parse_float=lambda s: float(s) if not float(s).is_integer() else int(float(s))
        )

    same_json = norm(canonical_json(a)) == norm(canonical_json(b))
    assert (request_key(a) == request_key(b)) == same_json
    assert request_key(a) == request_key(copy.deepcopy(a))
