"""The cost benchmark's converters, peer placements and oracle, on tiny inline samples.

Nothing here reads ../shared/data: the samples are hand-written in the real formats (an
OpenAI-format τ-bench trajectory, BFCL lines with ``dict`` schemas).
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _oracle
import _strategies
import _workloads
import bench_cost
import haikucache
from haikucache.testing import Emulator, ManualClock
from haikucache.testing._tokenizer import Tokenizer

TAU_TRAJECTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "# Airline Agent Policy\n\nBe helpful."},
    {"role": "user", "content": "Hi, I want to cancel reservation ZFA04Y."},
    {"role": "assistant", "content": "Sure. What is your user id?"},
    {"role": "user", "content": "mia_li_3668"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {
                    "name": "get_reservation_details",
                    "arguments": '{"reservation_id":"ZFA04Y"}',
                },
            }
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "call_abc",
        "name": "get_reservation_details",
        "content": '{"reservation_id": "ZFA04Y", "user_id": "mia_li_3668"}',
    },
    {
        "role": "assistant",
        "content": "Let me think.",
        "tool_calls": [
            {
                "id": "call_def",
                "type": "function",
                "function": {"name": "think", "arguments": '{"thought":"policy check"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_def", "name": "think", "content": ""},
    {"role": "user", "content": "Any news?"},
    {"role": "assistant", "content": "The reservation is cancelled."},
]

BFCL_LIVE_LINE = {
    "id": "live_multiple_0-0-0",
    "question": [[{"role": "user", "content": "Make my latte large with coconut milk."}]],
    "function": [
        {
            "name": "ChaDri.change_drink",
            "description": "Modifies an existing drink order.",
            "parameters": {
                "type": "dict",
                "required": ["new_preferences"],
                "properties": {
                    "drink_id": {"type": "string", "description": "Drink id.", "default": "0"},
                    "new_preferences": {
                        "type": "dict",
                        "properties": {
                            "size": {"type": "string", "enum": ["small", "large"]},
                            "sweetness": {"type": "float", "description": "0 to 1"},
                            "window": {"type": "tuple", "items": {"type": "integer"}},
                            "extra": {"type": "any", "description": "Anything else."},
                        },
                    },
                },
            },
        },
        {
            "name": "ChaDri_change_drink",
            "description": "A name that collides once sanitised.",
            "parameters": {"type": "dict", "properties": {}, "required": []},
        },
    ],
}

HEADERS = {"x-api-key": "test", "anthropic-version": "2023-06-01"}


def _post(emu: Emulator, body: dict[str, Any]) -> Any:
    return emu.handle(
        "POST", "http://emulator.test/v1/messages", HEADERS, json.dumps(body).encode()
    )


# --------------------------------------------------------------------------- converters


def test_tau_trajectory_becomes_one_request_per_assistant_turn() -> None:
    requests = _workloads.tau_requests(TAU_TRAJECTORY, _workloads.TAU_AIRLINE_TOOLS)
    assert len(requests) == 4  # four assistant turns
    last = requests[-1]
    assert last["system"] == "# Airline Agent Policy\n\nBe helpful."
    assert [t["name"] for t in last["tools"]] == [t["name"] for t in _workloads.TAU_AIRLINE_TOOLS]
    assert [m["role"] for m in last["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert last["messages"][3]["content"] == [
        {
            "type": "tool_use",
            "id": "call_abc",
            "name": "get_reservation_details",
            "input": {"reservation_id": "ZFA04Y"},
        }
    ]
    # Text + tool call in one assistant turn; the tool result and the next user text merge.
    assert [b["type"] for b in last["messages"][5]["content"]] == ["text", "tool_use"]
    assert last["messages"][6]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_def"},
        {"type": "text", "text": "Any news?"},
    ]
    for body in requests:
        haikucache.validate_request(body)
        assert _post(Emulator(clock=ManualClock()), body).status == 200
    assert len(_workloads.TAU_AIRLINE_TOOLS) == 14


def test_tool_calls_are_checked_against_the_airline_tools() -> None:
    _workloads.check_tool_calls([{"traj": TAU_TRAJECTORY}], _workloads.TAU_AIRLINE_TOOLS)
    bad = copy.deepcopy(TAU_TRAJECTORY)
    bad[4]["tool_calls"][0]["function"]["arguments"] = '{"reservation": "ZFA04Y"}'
    with pytest.raises(ValueError, match="does not fit"):
        _workloads.check_tool_calls([{"traj": bad}], _workloads.TAU_AIRLINE_TOOLS)


def test_bfcl_schema_becomes_json_schema() -> None:
    tools = _workloads.bfcl_tools(BFCL_LIVE_LINE["function"])
    assert [t["name"] for t in tools] == ["ChaDri_change_drink", "ChaDri_change_drink_2"]
    schema = tools[0]["input_schema"]
    assert schema["type"] == "object"
    prefs = schema["properties"]["new_preferences"]
    assert prefs["type"] == "object"
    assert prefs["properties"]["sweetness"]["type"] == "number"
    assert prefs["properties"]["window"] == {"type": "array", "items": {"type": "integer"}}
    assert "type" not in prefs["properties"]["extra"]
    _, messages = _workloads.openai_to_anthropic(BFCL_LIVE_LINE["question"][0])
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "tools": tools, "messages": messages}
    haikucache.validate_request(body)
    answer = _post(Emulator(clock=ManualClock()), body)
    assert answer.status == 200, answer.body


def test_tool_names_are_sanitised_and_unique() -> None:
    taken: set[str] = set()
    long = "a.b" * 40
    first = _workloads.sanitize_tool_name(long, taken)
    second = _workloads.sanitize_tool_name(long, taken)
    assert len(first) == len(second) == 64
    assert first != second
    assert all(c.isalnum() or c in "_-" for c in first + second)


def test_multi_turn_session_continues_with_the_emulator_reply() -> None:
    tools = _workloads.bfcl_tools(BFCL_LIVE_LINE["function"][:1])
    spec = _workloads._MultiTurnSpec(
        "multi_turn_base_0", None, tools, [["Change my drink."], ["Now make it small."]]
    )
    (session,) = _workloads.continue_sessions([spec], seed=0)
    first, second = session.requests
    assert first["messages"] == [{"role": "user", "content": "Change my drink."}]
    reply = second["messages"][1]
    assert reply["role"] == "assistant"
    uses = [b for b in reply["content"] if b["type"] == "tool_use"]
    assert uses and uses[0]["id"] == "toolu_multi_turn_base_0_0_0"
    follow_up = second["messages"][2]["content"]
    assert follow_up[0]["type"] == "tool_result"
    assert follow_up[0]["tool_use_id"] == uses[0]["id"]
    assert follow_up[-1] == {"type": "text", "text": "Now make it small."}
    assert session.offsets[0] == 0.0 and 2.0 <= session.offsets[1] <= 10.0
    # Played again, the session is the same: the replies are deterministic.
    assert _workloads.continue_sessions([spec], seed=0)[0] == session


def test_arrivals_are_ordered_and_seeded() -> None:
    sessions = tuple(
        _workloads.Session(f"s{i}", ({"i": i, "r": 0}, {"i": i, "r": 1}), (0.0, 5.0))
        for i in range(20)
    )
    workload = _workloads.Workload("w", sessions)
    calls = _workloads.arrivals(workload, "3m", seed=1)
    assert [t for t, _, _ in calls] == sorted(t for t, _, _ in calls)
    assert len(calls) == 40
    assert calls == _workloads.arrivals(workload, "3m", seed=1)
    assert calls != _workloads.arrivals(workload, "3m", seed=2)
    moon = _workloads.arrivals(workload, "mooncake", seed=1, mooncake=[0.5, 1.5])
    starts = sorted(t for t, _, r in moon if r == 0)
    assert starts[:4] == [0.0, 0.5, 2.0, 2.5]


def test_rag_documents_are_long_and_deterministic() -> None:
    workload = _workloads.make_rag(documents=3, queries=6, seed=0)
    assert workload == _workloads.make_rag(documents=3, queries=6, seed=0)
    tok = Tokenizer()
    for session in workload.sessions:
        (body,) = session.requests
        haikucache.validate_request(body)
        doc, question = body["messages"][0]["content"]
        text = doc["source"]["data"] if doc["type"] == "document" else doc["text"]
        assert 5_000 <= tok.count(text) <= 21_000
        assert question["type"] == "text" and len(question["text"]) < 200


# --------------------------------------------------------------------------- peers


def _sample_bodies() -> list[dict[str, Any]]:
    tau = _workloads.tau_requests(TAU_TRAJECTORY, _workloads.TAU_AIRLINE_TOOLS)
    _, messages = _workloads.openai_to_anthropic(BFCL_LIVE_LINE["question"][0])
    bfcl = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "tools": _workloads.bfcl_tools(BFCL_LIVE_LINE["function"]),
        "messages": messages,
    }
    rag = _workloads.make_rag(documents=1, queries=1, seed=0).sessions[0].requests[0]
    return [*tau, bfcl, rag]


@pytest.mark.parametrize("name", list(_strategies.PEERS))
def test_peer_placements_are_valid_and_leave_the_request_alone(name: str) -> None:
    strategy = _strategies.PEERS[name]
    for body in _sample_bodies():
        before = copy.deepcopy(body)
        marked = strategy(body)
        assert body == before
        haikucache.validate_request(marked)
        assert _strategies.count_markers(marked) <= 4
        answer = _post(Emulator(clock=ManualClock()), marked)
        assert answer.status == 200, answer.body


def test_peer_placements_match_their_documentation() -> None:
    body = _workloads.tau_requests(TAU_TRAJECTORY, _workloads.TAU_AIRLINE_TOOLS)[-1]
    assert _strategies.marker_sites(_strategies.none(body)) == []
    assert _strategies.marker_sites(_strategies.anthropic_auto(body)) == [("top-level",)]
    assert _strategies.marker_sites(_strategies.langchain_mw(body)) == [
        ("top-level",),
        ("tool", "update_reservation_passengers"),
        ("system", body["system"]),
    ]
    assert _strategies.marker_sites(_strategies.litellm(body)) == [
        ("system", body["system"]),
        ("user", "text", "Any news?"),
    ]
    # LiteLLM never overwrites a marked message and never exceeds four breakpoints.
    marked = _strategies.litellm(_strategies.langchain_mw(body))
    assert _strategies.count_markers(marked) == 4


@pytest.mark.skipif(
    not bench_cost.DEFAULT_LITELLM_PYTHON.exists(), reason="no litellm virtualenv in .cache/"
)
def test_litellm_placement_matches_the_real_hook() -> None:
    tools = _workloads.openai_tools(_workloads.TAU_AIRLINE_TOOLS)
    samples = []
    for k, m in enumerate(TAU_TRAJECTORY):
        if m["role"] == "assistant":
            system, messages = _workloads.openai_to_anthropic(TAU_TRAJECTORY[:k])
            body = {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "system": system,
                "tools": _workloads.TAU_AIRLINE_TOOLS,
                "messages": messages,
            }
            samples.append((TAU_TRAJECTORY[:k], tools, body))
    result = _strategies.check_against_litellm(str(bench_cost.DEFAULT_LITELLM_PYTHON), samples)
    assert result == {"requests": 4, "agree": 4}


# --------------------------------------------------------------------------- oracle


def _tiny_workload() -> _workloads.Workload:
    """Two long shared prefixes, sessions of two or three calls; > 4,096-token prefixes."""
    rng = random.Random(7)
    tok = Tokenizer()
    policy = _workloads._document(rng, 4_500, tok, "Policy")
    manual = _workloads._document(rng, 1_500, tok, "Manual")
    tools = _workloads.TAU_AIRLINE_TOOLS[:2]
    sessions = []
    for i in range(5):
        system = [{"type": "text", "text": policy}, {"type": "text", "text": manual}]
        if i == 3:
            system = system[:1]  # a different system: shares only the policy block
        messages: list[dict[str, Any]] = []
        requests = []
        for turn in range(2 + i % 2):
            messages.append({"role": "user", "content": [{"type": "text", "text": f"q{i}.{turn}"}]})
            requests.append(
                {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 64,
                    "system": copy.deepcopy(system),
                    "tools": tools,
                    "messages": copy.deepcopy(messages),
                }
            )
            messages.append(
                {"role": "assistant", "content": [{"type": "text", "text": f"a{i}.{turn}"}]}
            )
        offsets = tuple(4.0 * k for k in range(len(requests)))
        sessions.append(_workloads.Session(f"tiny{i}", tuple(requests), offsets))
    return _workloads.Workload("tiny", tuple(sessions))


def _random_plan(rng: random.Random) -> Any:
    """A random legal placement: up to 4 markers, 1 h ones before 5 m ones."""

    def mark(body: Any) -> Any:
        out = copy.deepcopy(dict(body))
        sites = [("tools", i) for i in range(len(out["tools"]))]
        sites += [("system", i) for i in range(len(out["system"]))]
        sites += [
            ("messages", m, j)
            for m, message in enumerate(out["messages"])
            for j in range(len(message["content"]))
        ]
        chosen = sorted(rng.sample(sites, k=min(len(sites), rng.randint(0, 4))), key=sites.index)
        ttls = sorted((rng.choice(["5m", "1h"]) for _ in chosen), key=lambda t: t != "1h")
        for site, ttl in zip(chosen, ttls, strict=True):
            if site[0] == "messages":
                block = out["messages"][site[1]]["content"][site[2]]
            else:
                block = out[site[0]][site[1]]
            block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
        return out

    return mark


def _bill(workload: _workloads.Workload, gap: str, mark: Any) -> float:
    clock = ManualClock(bench_cost.BASE_TIME)
    emu = Emulator(clock=clock)
    client = bench_cost.make_client("none", emu, clock)
    for when, s, r in _workloads.arrivals(workload, gap, seed=0):
        clock.set(bench_cost.BASE_TIME + when)
        client.messages.create(**mark(workload.sessions[s].requests[r]))
    return emu.bill.total_usd


@pytest.mark.parametrize("gap", ["30s", "10m", "2h"])
def test_oracle_is_a_lower_bound_end_to_end(gap: str) -> None:
    workload = _tiny_workload()
    bills = {s: bench_cost.run_cell(workload, gap, s, ()).usd for s in bench_cost.STRATEGIES}
    reference = bench_cost.run_cell(workload, gap, "none", ())
    rng = random.Random(gap)
    for k in range(12):
        bills[f"random{k}"] = _bill(workload, gap, _random_plan(rng))
    tok = Tokenizer()
    calls = [
        (when, _oracle.flatten(workload.sessions[s].requests[r], tok))
        for when, s, r in _workloads.arrivals(workload, gap, seed=0)
    ]
    oracle = _oracle.oracle_usd(calls, sum(reference.outputs))
    assert all(oracle <= usd * (1 + 1e-9) for usd in bills.values()), (oracle, bills)
    assert oracle > 0.5 * min(bills.values())


def test_oracle_is_tight_on_a_repeated_prefix() -> None:
    tok = Tokenizer()
    text = _workloads._document(random.Random(1), 5_000, tok, "Doc")
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "system": text,
        "messages": [{"role": "user", "content": "q"}],
    }
    flat = _oracle.flatten(body, tok)
    prefix, total = flat.prefix[-1], flat.total
    # Twice a minute apart: one 5 m write, one read.
    assert _oracle.oracle_input_units([(0.0, flat), (60.0, flat)]) == pytest.approx(
        1.35 * prefix + 2 * (total - prefix)
    )
    # Twenty minutes apart, once: a 1 h write (2 + 0.1) does not beat sending it twice.
    assert _oracle.oracle_input_units([(0.0, flat), (1200.0, flat)]) == pytest.approx(
        2.0 * prefix + 2 * (total - prefix)
    )
    assert _oracle.oracle_input_units(
        [(0.0, flat), (1200.0, flat), (2400.0, flat)]
    ) == pytest.approx(2.2 * prefix + 3 * (total - prefix))
    # Two hours apart nothing can be shared.
    assert _oracle.oracle_input_units([(0.0, flat), (7200.0, flat)]) == pytest.approx(2 * total)
