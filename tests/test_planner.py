"""The prompt-cache planner: where markers go, which TTL, and what it never does.

End-to-end tests send the planned requests to the emulator, whose own tokenizer and caching
rules decide what is read and written, so nothing passes by construction.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haikucache import Client, ConfigurationError, Engine, ManualClock, validate_request
from haikucache._planner import Planner, PrefixStats
from haikucache._wire import iter_cache_markers
from haikucache.testing import Emulator

POLICY = "Refunds go to the original form of payment within seven days of approval. " * 450
TOOLS = [
    {
        "name": "get_reservation",
        "description": "Look up a reservation by its booking reference.",
        "input_schema": {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "required": ["id"],
        },
    },
    {
        "name": "cancel_reservation",
        "description": "Cancel a reservation.",
        "input_schema": {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "required": ["id"],
        },
    },
]


def request(messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "system": POLICY,
        "tools": TOOLS,
        "messages": messages or [{"role": "user", "content": "Where is my refund?"}],
    }
    body.update(extra)
    return body


def markers(body: dict[str, Any]) -> dict[str, str]:
    return {
        path.removesuffix(".cache_control"): m.get("ttl", "5m")
        for path, m in iter_cache_markers(body)
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> Emulator:
    return Emulator(clock=clock)


@pytest.fixture
def client(emulator: Emulator, clock: ManualClock) -> Iterator[Client]:
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=Engine(ledger=False, clock=clock, planner=Planner(clock=clock)),
    ) as c:
        yield c


# ------------------------------------------------------------------ wire snapshots


def test_snapshot_of_a_planned_agent_request() -> None:
    body = request(
        [
            {"role": "user", "content": "Where is my refund?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_reservation",
                        "input": {"id": "8JX2QK"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "refunded"}
                ],
            },
        ]
    )
    planned = Planner(clock=ManualClock()).plan(body).body
    expected = copy.deepcopy(body)
    # A plain-string system becomes one text block so it can carry the marker (1 h: a system
    # prompt is expected to recur, and the hour costs 0.75× once where a lapsed 5-minute
    # entry costs 1.25× each time); the tail is marked 5 m; the tools prefix alone is under
    # the 4,096-token minimum, so it is left alone.
    expected["system"] = [
        {"type": "text", "text": POLICY, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    expected["messages"][2]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert json.dumps(planned, sort_keys=False) == json.dumps(expected, sort_keys=False)


def test_policy_off_sends_the_request_as_it_is() -> None:
    body = request()
    plan = Planner("off").plan(body)
    assert plan.body == body and not plan.added


def test_short_requests_get_no_markers_and_say_why() -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    plan = Planner().plan(body)
    assert plan.body == body
    assert "4,096-token minimum" in plan.explain()


def test_the_callers_request_is_never_modified() -> None:
    body = request([{"role": "user", "content": [{"type": "text", "text": "Where is my refund?"}]}])
    before = copy.deepcopy(body)
    Planner().plan(body)
    assert body == before


def test_unknown_policy_is_a_usage_error() -> None:
    with pytest.raises(ConfigurationError, match="adaptive"):
        Planner("sometimes")


# ------------------------------------------------------------------ rules it never breaks


def test_caller_markers_are_kept_and_the_total_never_exceeds_four() -> None:
    mark = {"type": "ephemeral"}
    body = request(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a", "cache_control": mark},
                    {"type": "text", "text": "b", "cache_control": mark},
                ],
            }
        ],
        tools=[{**TOOLS[0], "cache_control": mark}, TOOLS[1]],
    )
    body["system"] = [{"type": "text", "text": POLICY, "cache_control": mark}]
    planned = Planner().plan(body).body
    assert planned == body  # four already: nothing added, nothing moved
    del body["messages"][0]["content"][1]["cache_control"]
    planned = Planner().plan(body).body
    assert len(markers(planned)) <= 4
    assert markers(planned)["tools.0"] == "5m" and markers(planned)["system.0"] == "5m"


@pytest.mark.parametrize("ttl", ["1h", "5m", None])
@pytest.mark.parametrize("policy", ["adaptive", "always"])
def test_a_callers_marker_on_a_large_system_block_reaches_the_api_unchanged(
    ttl: str | None, policy: str
) -> None:
    """A marker the planner would also place is never overwritten, moved or downgraded."""
    mark: dict[str, Any] = (
        {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}
    )
    body = request()
    body["system"] = [{"type": "text", "text": POLICY, "cache_control": dict(mark)}]
    planner = Planner(policy)
    for _ in range(3):  # also once the planner has learned that the prefix recurs
        plan = planner.plan(copy.deepcopy(body))
        assert plan.body["system"][0]["cache_control"] == mark
    emulator = Emulator()
    with Client(
        api_key="sk-test",
        base_url="http://emulator.test",
        transport=emulator.transport(),
        engine=Engine(ledger=False, planner=policy, store=None),
    ) as client:
        client.messages.create(**body)
        client.messages.create(**body, no_cache=True)
    for sent in emulator.log:
        assert sent.body["system"][0]["cache_control"] == mark
    usage = [e.usage for e in emulator.bill.entries]
    if ttl == "1h":  # billed as a 1-hour write, then read
        assert usage[0]["cache_creation"]["ephemeral_1h_input_tokens"] > 4096
        assert usage[1]["cache_read_input_tokens"] > 4096


def test_a_top_level_cache_control_covers_the_tail() -> None:
    plan = Planner().plan(request(cache_control={"type": "ephemeral"}))
    assert "messages.0.content.0" not in markers(plan.body)
    assert len(list(iter_cache_markers(plan.body))) <= 4
    assert any("top-level" in reason for _, reason in plan.skipped)


def test_nothing_may_be_marked_before_a_callers_one_hour_marker_unless_one_hour() -> None:
    body = request(
        [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "q",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            }
        ]
    )
    planned = Planner().plan(body).body
    validate_request(planned)
    for path, ttl in markers(planned).items():
        if path != "messages.0.content.0":
            assert ttl == "1h", path


def test_thinking_and_empty_blocks_are_never_marked() -> None:
    body = request(
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "hmm " * 3000, "signature": "s"}],
            },
        ],
        thinking={"type": "enabled", "budget_tokens": 1024},
        max_tokens=2048,
    )
    planned = Planner().plan(body).body
    assert "messages.1.content.0" not in markers(planned)
    validate_request(planned)


mark_st = st.sampled_from([None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
text_st = st.sampled_from(["short", "x " * 3000, "word " * 9000])


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    def block(role: str) -> dict[str, Any]:
        b: dict[str, Any] = {"type": "text", "text": draw(text_st)}
        marker = draw(mark_st)
        if marker:
            b["cache_control"] = marker
        return b

    turns = draw(st.integers(1, 30))
    messages = [
        {
            "role": r,
            "content": [block(r) for _ in range(draw(st.integers(1, 3)))]
            if draw(st.booleans())
            else draw(text_st),
        }
        for r in ("user" if i % 2 == 0 else "assistant" for i in range(turns))
    ]
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["claude-haiku-4-5", "claude-sonnet-4-5", "gw-model"])),
        "max_tokens": 64,
        "messages": messages,
    }
    if draw(st.booleans()):
        body["system"] = draw(
            st.one_of(
                text_st,
                st.lists(
                    st.builds(lambda t: {"type": "text", "text": t}, text_st),
                    min_size=1,
                    max_size=3,
                ),
            )
        )
    if draw(st.booleans()):
        body["tools"] = TOOLS
    if draw(st.booleans()):
        body["cache_control"] = {"type": "ephemeral"}
    return body


@settings(max_examples=150, deadline=None)
@given(requests(), st.sampled_from(["adaptive", "always"]))
def test_every_plan_of_a_valid_request_is_valid(body: dict[str, Any], policy: str) -> None:
    try:
        validate_request(body)
    except ValueError:
        return  # the planner only ever sees requests that passed validation
    before = copy.deepcopy(body)
    planner = Planner(policy, clock=ManualClock())
    for _ in range(2):  # the second time it has statistics to act on
        plan = planner.plan(body)
        validate_request(plan.body)
        assert len(list(iter_cache_markers(plan.body))) <= 4
        # Markers are the only difference.
        strip = json.loads(json.dumps(plan.body))
        for m in strip["messages"]:
            if isinstance(m["content"], list):
                for b in m["content"]:
                    b.pop("cache_control", None)
        assert body == before


# ------------------------------------------------------------------ end to end on the emulator


def usage(message: Any) -> tuple[int, int, int]:
    u = message.usage
    return u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens


def test_a_stable_system_prompt_before_changing_system_context_is_read(
    client: Client, emulator: Emulator, clock: ManualClock
) -> None:
    # A RAG chat engine: the fixed system prompt, then retrieved context as a second system
    # block that changes every turn.
    for turn in range(5):
        context = f"Context for turn {turn}: " + f"passage {turn} about fares and fees. " * 600
        body = request(
            system=[{"type": "text", "text": POLICY}, {"type": "text", "text": context}],
            tools=None,
        )
        body["messages"] = [{"role": "user", "content": f"Question {turn} about the fees?"}]
        reply = client.messages.create(**body)
        assert "system.0" in markers(emulator.log[-1].body)
        if turn:
            assert usage(reply)[2] >= 4096  # the system prompt is read, not written again
        clock.advance(40)


def test_an_agent_loop_reads_its_prefix_on_every_turn_after_the_first(
    client: Client, clock: ManualClock
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Cancel 8JX2QK please."}]
    reads = []
    for _turn in range(6):
        reply = client.messages.create(**request(messages))
        reads.append(usage(reply)[2])
        messages.append({"role": "assistant", "content": [b.to_dict() for b in reply.content]})
        uses = [b for b in messages[-1]["content"] if b["type"] == "tool_use"]
        if uses:
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": u["id"], "content": "done"}
                        for u in uses
                    ],
                }
            )
        else:
            messages.append({"role": "user", "content": "And the refund?"})
        clock.advance(3)
    assert reads[0] == 0
    assert all(r > 4096 for r in reads[1:])
    assert reads == sorted(reads)  # each turn reads everything the previous one wrote


def test_one_hour_ttl_when_a_prompt_recurs_every_ten_minutes(
    client: Client, clock: ManualClock, emulator: Emulator
) -> None:
    ttls = []
    for i in range(6):
        client.messages.create(**request([{"role": "user", "content": f"Question number {i}?"}]))
        ttls.append(markers(emulator.log[-1].body).get("system.0"))  # what went on the wire
        clock.advance(600)
    # A system prompt is expected to recur: 1 h from the first write, so a reuse 10 minutes
    # later reads it instead of writing it again.
    assert set(ttls) == {"1h"}
    written = [e.usage["cache_creation"]["ephemeral_1h_input_tokens"] for e in emulator.bill]
    read = [e.usage["cache_read_input_tokens"] for e in emulator.bill]
    assert written[0] > 4096 and all(r > 4096 for r in read[1:])


def test_a_prompt_that_stops_recurring_within_the_hour_is_no_longer_written_for_an_hour(
    client: Client, clock: ManualClock, emulator: Emulator
) -> None:
    for i in range(4):
        client.messages.create(**request([{"role": "user", "content": f"Question {i}?"}]))
        clock.advance(3 * 3600)
    # Three gaps of three hours: a 1 h write (2×) would never be read; the tail's 5 m entry
    # writes the prefix anyway, so no 1-hour premium is paid for it.
    assert markers(emulator.log[-1].body).get("system.0", "5m") == "5m"
    assert emulator.bill.entries[-1].usage["cache_creation"]["ephemeral_1h_input_tokens"] == 0


def _document(seed: int, words: int = 6000) -> str:
    rng = random.Random(seed)
    vocabulary = "ticket refund baggage flight crew lounge delay seat meal upgrade".split()
    return f"Document {seed}. " + " ".join(rng.choice(vocabulary) for _ in range(words))


def _rag(doc: str, question: str) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": "Answer from the document."},
            {"type": "text", "text": doc},
        ],
        "messages": [{"role": "user", "content": question}],
    }


def test_a_new_document_in_a_slot_where_documents_return_gets_one_hour_from_its_first_write(
    client: Client, clock: ManualClock, emulator: Emulator
) -> None:
    # Four documents, each asked about every 12 minutes (too late for a 5 m entry).
    for round_ in range(4):
        for d in range(4):
            client.messages.create(**_rag(_document(d), f"Question {round_}?"))
            clock.advance(180)
    # A document never seen before, in the slot the others taught: 1 h at its first write.
    client.messages.create(**_rag(_document(99), "A new question?"))
    assert markers(emulator.log[-1].body)["system.1"] == "1h"
    usage = emulator.bill.entries[-1].usage
    assert usage["cache_creation"]["ephemeral_1h_input_tokens"] > 4096
    clock.advance(15 * 60)
    client.messages.create(**_rag(_document(99), "And a second one?"))
    assert emulator.bill.entries[-1].usage["cache_read_input_tokens"] > 4096


def test_slots_learn_apart(clock: ManualClock) -> None:
    """Two applications' document slots: one whose documents come back every 12 minutes,
    one whose documents are never asked about twice. Each new document gets what its own
    slot taught, not the average of both."""
    planner = Planner(clock=clock)

    def other(doc: str) -> dict[str, Any]:
        body = _rag(doc, "A question?")
        body["system"][0]["text"] = "Another application's instructions."
        return body

    for round_ in range(4):
        for d in range(4):
            planner.plan(_rag(_document(d), f"Question {round_}?"))
            planner.plan(other(_document(1000 + 4 * round_ + d)))
            clock.advance(180)
    returning, one_off = planner.plan(_rag(_document(98), "?")), planner.plan(other(_document(99)))
    assert markers(returning.body)["system.1"] == "1h"
    assert markers(one_off.body).get("system.1") is None


def test_no_marker_for_one_shot_long_documents() -> None:
    # RAG over documents that are each asked about once: a cache write would never be read.
    clock = ManualClock()
    emulator = Emulator(clock=clock)
    rng = random.Random(7)
    words = "ticket refund baggage flight crew lounge delay seat meal upgrade".split()

    def send(engine: Engine, doc_seed: int) -> None:
        doc_rng = random.Random(doc_seed)
        doc = " ".join(doc_rng.choice(words) for _ in range(6000))
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": doc},
                        {"type": "text", "text": "Summarise."},
                    ],
                }
            ],
        }
        with Client(
            api_key="k", base_url="http://e.test", transport=emulator.transport(), engine=engine
        ) as c:
            c.messages.create(**body)

    adaptive = Engine(ledger=False, clock=clock, planner=Planner(clock=clock))
    always = Engine(ledger=False, clock=clock, planner=Planner("always", clock=clock))
    bills = {}
    for name, engine in (("adaptive", adaptive), ("always", always)):
        emulator.bill.reset()
        emulator.clear_cache()
        for i in range(40):
            send(engine, 1000 + i)
            clock.advance(rng.uniform(30, 90))
        bills[name] = emulator.bill.total_usd
        late = [e.usage["cache_creation_input_tokens"] for e in emulator.bill.entries[-10:]]
        if name == "adaptive":
            assert late == [0] * 10  # it stopped writing what is never read
    assert bills["adaptive"] < bills["always"]


def test_a_bridge_marker_keeps_a_long_tool_loop_within_the_lookback(
    client: Client, clock: ManualClock, emulator: Emulator
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Check all reservations."}]
    client.messages.create(**request(messages))
    clock.advance(2)
    # The model answers with 12 parallel tool calls: 24 new blocks before the next tail.
    uses = [
        {
            "type": "tool_use",
            "id": f"toolu_{i:02}",
            "name": "get_reservation",
            "input": {"id": f"R{i:05}"},
        }
        for i in range(12)
    ]
    messages.append({"role": "assistant", "content": uses})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": u["id"], "content": "ok"} for u in uses
            ],
        }
    )
    reply = client.messages.create(**request(messages))
    sent = markers(emulator.log[-1].body)
    assert "messages.0.content.0" in sent and "messages.2.content.11" in sent  # bridge + tail
    first_prefix = emulator.bill.entries[0].usage["cache_creation_input_tokens"]
    assert usage(reply)[2] == first_prefix  # read across 24 blocks


def test_cache_busting_is_reported_once_with_the_block_and_offset(
    client: Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="haikucache")
    for minute in range(6):
        body = request()
        body["system"] = f"The current time is 2025-11-20 10:{minute:02}:00.\n" + POLICY
        client.messages.create(**body)
        clock.advance(60)
    warnings = [r.getMessage() for r in caplog.records if "busting" in r.getMessage()]
    assert len(warnings) == 1
    offset = len("The current time is 2025-11-20 10:0")
    assert "system.0" in warnings[0] and f"character {offset}:" in warnings[0]


def test_a_new_question_after_a_fixed_prompt_is_not_cache_busting(
    client: Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The most common pattern: one long system prompt, a different (similar) question each time.
    caplog.set_level(logging.WARNING, logger="haikucache")
    for i in range(8):
        body = request(system=POLICY)
        body["messages"] = [
            {"role": "user", "content": f"What does the policy say about reservation R{i:05}?"}
        ]
        client.messages.create(**body)
        clock.advance(30)
    assert not [r for r in caplog.records if "busting" in r.getMessage()]


def _agent_turns(task: str, steps: int) -> list[list[dict[str, Any]]]:
    """The requests of one agent run: a task, then tool call after tool call."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    out = [copy.deepcopy(messages)]
    for i in range(steps):
        use = {"type": "tool_use", "id": f"toolu_{i}", "name": "get_reservation", "input": {}}
        messages.append({"role": "assistant", "content": [use]})
        result = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"step {i}"}
        messages.append({"role": "user", "content": [result]})
        out.append(copy.deepcopy(messages))
    return out


_TASK = "Fix the {} endpoint: it returns 500 when the payload is empty. " + "Context. " * 40


def test_interleaved_conversations_are_not_cache_busting(
    client: Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Agent runs whose first messages resemble each other (one template, another topic),
    # taking turns: each request continues its own conversation, nothing is rewritten.
    caplog.set_level(logging.WARNING, logger="haikucache")
    runs = [_agent_turns(_TASK.format(topic), 5) for topic in ("billing", "search", "login")]
    for step in range(6):
        for run in runs:
            client.messages.create(**request(run[step]))
            clock.advance(3)
    assert not [r for r in caplog.records if "busting" in r.getMessage()]


def test_a_conversation_rewritten_every_turn_is_reported_among_others(
    client: Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # One conversation's first message carries the time, so every turn rewrites it, while
    # another conversation runs alongside.
    caplog.set_level(logging.WARNING, logger="haikucache")
    steady = _agent_turns(_TASK.format("search"), 5)
    for step in range(6):
        stamped = _agent_turns(f"Time: 10:{step:02}. " + _TASK.format("billing"), 5)[step]
        client.messages.create(**request(stamped))
        clock.advance(3)
        client.messages.create(**request(steady[step]))
        clock.advance(3)
    warnings = [r.getMessage() for r in caplog.records if "busting" in r.getMessage()]
    assert len(warnings) == 1 and "messages.0.content.0" in warnings[0]


def test_tools_in_a_different_order_are_reported(
    client: Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="haikucache")
    many = [
        {
            "name": f"tool_{i}",
            "description": POLICY[:2000],
            "input_schema": {"type": "object", "properties": {}},
        }
        for i in range(8)
    ]
    for i in range(5):
        tools = many[i:] + many[:i]  # e.g. tools collected from a set: a new order each time
        client.messages.create(**request(tools=tools, system="Be helpful."))
        clock.advance(5)
    assert any("different order" in r.getMessage() for r in caplog.records)


def test_exact_counts_confirm_prefixes_near_the_minimum_once_each() -> None:
    emulator = Emulator()
    calls = []
    with Client(
        api_key="k",
        base_url="http://e.test",
        transport=emulator.transport(),
        engine=Engine(ledger=False, planner="off"),
    ) as counter:

        def count(body: dict[str, Any]) -> int:
            calls.append(body)
            return counter.messages.count_tokens(**body).input_tokens

        planner = Planner(count_tokens=count, clock=ManualClock())
        near = "Fares follow the published rules. " * 410  # estimated close to 4,096 tokens
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "system": near,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        plan = planner.plan(body)
        asked = len(calls)
        assert 1 <= asked <= 2  # the system prefix and the tail prefix, each near the minimum
        for _ in range(3):
            plan = planner.plan(body)
        assert len(calls) == asked  # cached per prefix
        exact = counter.messages.count_tokens(**calls[0]).input_tokens
        assert ("system.0" in markers(plan.body)) == (exact >= 4096)


def test_a_callers_markers_reach_the_api_unchanged_while_the_planner_learns(
    client: Client, clock: ManualClock, emulator: Emulator
) -> None:
    """Markers the caller placed anywhere (tools 1 h, a document 5 m, a short tail) are sent
    as they are on every call, whatever the planner learns or adds around them."""
    marks = {
        "tools.1": {"type": "ephemeral", "ttl": "1h"},
        "messages.0.content.0": {"type": "ephemeral", "ttl": "5m"},
    }
    for i in range(8):
        body = request(
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": _document(i % 2, 3000),
                            "cache_control": dict(marks["messages.0.content.0"]),
                        },
                        {"type": "text", "text": f"Question {i}?"},
                    ],
                }
            ],
            tools=[TOOLS[0], {**TOOLS[1], "cache_control": dict(marks["tools.1"])}],
        )
        before = copy.deepcopy(body)
        client.messages.create(**body)
        assert body == before
        sent = emulator.log[-1].body
        for path, mark in marks.items():
            assert dict(iter_cache_markers(sent))[f"{path}.cache_control"] == mark
        # 1 h before 5 m: nothing the planner adds after the caller's 5 m marker is 1 h.
        ttls = list(markers(sent).items())
        assert ttls == sorted(ttls, key=lambda kv: kv[1] != "1h")
        clock.advance(200 if i % 3 else 1500)


def test_stats_can_be_shared_between_planners() -> None:
    stats = PrefixStats()
    clock = ManualClock()
    a, b = Planner(stats=stats, clock=clock), Planner(stats=stats, clock=clock)
    for i in range(4):
        (a if i % 2 else b).plan(request([{"role": "user", "content": f"q{i}"}]))
        clock.advance(900)
    assert markers(a.plan(request()).body)["system.0"] == "1h"


@pytest.mark.parametrize("kind", ["memory", "disk", "redis"])
def test_stores_keep_shared_logs_in_order(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    from haikucache import DiskStore, MemoryStore, RedisStore

    store: Any
    if kind == "redis":
        store = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{tmp_path.name}:")
    else:
        store = MemoryStore() if kind == "memory" else DiskStore(tmp_path)
    assert store.read_log("planner:x", None)[0] == []
    store.append_log("planner:x", [b"a", b"b"])
    store.append_log("planner:y", [b"other"])
    records, cursor = store.read_log("planner:x", None)
    assert records == [b"a", b"b"]
    store.append_log("planner:x", [b"c"])
    assert store.read_log("planner:x", cursor)[0] == [b"c"]
    store.close()


def _learn_in_a_child(directory: str, start: float) -> None:
    from haikucache import DiskStore
    from haikucache._planner import SharedPrefixStats

    clock = ManualClock(start)
    planner = Planner(clock=clock, stats=SharedPrefixStats(DiskStore(directory)))
    for d in range(16):  # sixteen documents, each asked about once
        planner.plan(_rag(_document(d), "A question?"))
        clock.advance(180)


def test_planners_in_other_processes_learn_as_one(tmp_path: Any) -> None:
    """A worker process learns that documents in a slot are asked about once; a planner in
    another process, sharing the DiskStore, does not pay a 1 h write for a new document —
    and one that does not share has to learn it again."""
    import multiprocessing

    from haikucache import DiskStore
    from haikucache._planner import SharedPrefixStats

    start = 1_763_632_800.0
    child = multiprocessing.get_context("fork").Process(
        target=_learn_in_a_child, args=(str(tmp_path), start)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    later = ManualClock(start + 16 * 180)
    shared = Planner(clock=later, stats=SharedPrefixStats(DiskStore(tmp_path)))
    alone = Planner(clock=later)
    new_doc = _rag(_document(99), "A new question?")
    assert markers(shared.plan(new_doc).body).get("system.1") != "1h"
    assert markers(alone.plan(new_doc).body)["system.1"] == "1h"


def test_a_failing_log_store_leaves_planning_alone(clock: ManualClock) -> None:
    from haikucache._planner import SharedPrefixStats

    class Down:
        def append_log(self, name: str, records: Any) -> None:
            return None  # a store that fails drops what it is given

        def read_log(self, name: str, cursor: str | None) -> tuple[list[bytes], str]:
            return [b"not json", b'["x", "s"]'], cursor or "0"

    planner = Planner(clock=clock, stats=SharedPrefixStats(Down()))
    plan = planner.plan(request())
    validate_request(plan.body)
    assert markers(plan.body)["system.0"] == "1h"


def test_one_planner_is_safe_to_share_between_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    planner = Planner(clock=ManualClock(), count_tokens=lambda body: 5000)
    bodies = [request([{"role": "user", "content": f"Question {i}?"}]) for i in range(40)]
    bodies += [{**b, "system": "Short system. " * 1000} for b in bodies]  # near the minimum
    with ThreadPoolExecutor(8) as pool:
        plans = list(pool.map(planner.plan, bodies))
    for body, plan in zip(bodies, plans, strict=True):
        validate_request(plan.body)
        # Each plan is of its own request: markers only added, nothing else changed.
        assert plan.body["messages"][0]["content"][0]["text"] == body["messages"][0]["content"]
        assert plan.body["system"][0]["text"] == body["system"]


def test_a_conversation_continued_after_a_long_pause_counts_as_continued(
    clock: ManualClock,
) -> None:
    """A human turn after a pause longer than the planner's guess of a conversation's end is
    a continuation after all: the count of ended conversations is corrected, and the shared
    prefixes it reads through its cached tail are not counted as reused on their own."""
    planner = Planner(clock=clock)
    stats = planner.stats
    turns: list[dict[str, Any]] = [{"role": "user", "content": "Where is my refund? " * 400}]
    plans = []
    for i in range(3):
        plans.append(planner.plan(request(list(turns))))
        planner.observe(plans[-1], {"cache_creation_input_tokens": 5000})
        turns += [
            {"role": "assistant", "content": f"Answer {i}."},
            {"role": "user", "content": f"Follow-up {i}?"},
        ]
        clock.advance(20)
    system_fp = plans[0]._fps["system.0"]
    sighted = stats.record(system_fp).count
    clock.advance(200)  # past the ended-conversation horizon learned from 20 s turns
    planner.plan(request(list(turns)))
    # The tail is still cached (5 m): the system prompt is read through it, not sighted.
    assert stats.record(system_fp).count == sighted
    recur, _, _ = stats.family("tail")
    assert stats._families["tail"].lapsed == 0 and recur > 0.8


def test_a_young_slot_of_quick_returns_leaves_later_returns_to_the_prior() -> None:
    """Returns within 5 minutes say nothing about returns after 5 minutes: until sightings
    have waited that long, the share back within the hour beyond 5 minutes is the prior's."""
    from haikucache._planner import _Sightings

    seen = _Sightings()
    for i in range(40):  # one document asked about every 10 s for 400 s
        seen.add(1, 1000.0 + 10 * i)
    prior = {"5m": 0.2, "1h": 0.6}
    rates = seen.rates(prior, 3.0, now=1400.0)
    later = (rates["1h"] - rates["5m"]) / (1 - rates["5m"])
    assert rates["5m"] > 0.9
    assert later == pytest.approx(0.5)  # (0.6 − 0.2) ÷ (1 − 0.2), untouched by the quick ones
    # A document that has waited 7 minutes without coming back is evidence against a return
    # after 5 minutes; the quick returns of the other are none for it.
    seen.add(2, 1400.0 - 420)
    one_waited = seen.rates(prior, 3.0, now=1400.0)
    assert (one_waited["1h"] - one_waited["5m"]) / (1 - one_waited["5m"]) < 0.4
    # Sightings that waited past 5 minutes and not back within the hour teach the later share.
    for d in range(3, 30):
        seen.add(d, 1400.0 + d)
    late = seen.rates(prior, 3.0, now=1400.0 + 2 * 3600)
    assert (late["1h"] - late["5m"]) / (1 - late["5m"]) < 0.2


def test_a_new_prefix_is_judged_by_the_first_sightings_of_its_slot() -> None:
    """A popular document's many quick returns do not make a document seen for the first
    time look popular: its slot's first sightings are what it is judged by."""
    from haikucache._planner import _Sightings

    seen = _Sightings()
    for i in range(60):  # one popular document, back every 20 s
        seen.add(0, 20.0 * i)
    for d in range(1, 11):  # ten documents seen once, long ago, never again
        seen.add(d, 100.0 * d)
    prior = {"5m": 0.2, "1h": 0.6}
    every = seen.rates(prior, 3.0, now=2 * 3600.0)
    first = seen.rates(prior, 3.0, now=2 * 3600.0, first=True)
    assert every["5m"] > 0.8
    assert first["5m"] < 0.3 and first["1h"] < 0.4
