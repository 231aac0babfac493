"""Workloads for ``bench_cost.py``: loaders, format converters and arrival schedules.

Every workload is a list of :class:`Session` s, each a fixed sequence of Messages requests with
their offsets (seconds after the session starts). Request bodies are *unmarked*: the strategies
in ``_strategies.py`` add their ``cache_control`` markers, haikucache its own. The data is read
from ``../shared/data`` (or ``--data``) and never copied into the repository.

``tau_airline`` — τ-bench airline transcripts (GPT-4o agent, 200 runs, MIT licence). Each
OpenAI-format message list is converted to the Anthropic Messages format: the system message
becomes ``system``, assistant ``tool_calls`` become ``tool_use`` blocks (arguments parsed,
key order kept), ``tool`` messages become user ``tool_result`` blocks, and consecutive
same-role turns are merged. Every assistant turn is one model call whose request is
everything before it. The file has no tool definitions, so :data:`TAU_AIRLINE_TOOLS` supplies
the airline domain's 14: the tool names, argument names, JSON types, nested item shapes
(``flights[].flight_number/date``, ``passengers[].first_name/last_name/dob``,
``payment_methods[].payment_id/amount``) and the enum values of ``cabin``, ``flight_type`` and
``insurance`` are those found in the transcripts' ``tool_calls``; the descriptions were
written for this benchmark in the terse style of an airline API reference.
:func:`check_tool_calls` verifies on load that every call in the data fits those schemas.
Calls inside a run follow each other 2–10 s apart (uniform, seeded).

``bfcl`` — BFCL v4 (Apache-2.0). ``live_multiple`` lines are one-call sessions with 2–4+
tools each (tool sets recur across lines); ``multi_turn_base`` lines are sessions of several
user turns whose tools are all the functions of the line's ``involved_classes`` (minus
``excluded_function``). BFCL schemas become JSON Schema (``dict`` → ``object``, ``float`` →
``number``, ``tuple`` → ``array``, ``any`` → no type, ...) and tool names are sanitised to
``^[a-zA-Z0-9_-]{1,64}$``. A multi-turn session is continued with the emulator's own reply
(assistant content appended; a ``tool_use`` gets a short deterministic ``tool_result``)
before the next user turn. The replies are produced once, up front, by an unmarked emulator
run: the emulator's answer depends only on the prompt content, never on ``cache_control``
(its ``answer_key`` hashes block material that excludes markers), so every strategy sees the
same requests. Generated ``tool_use`` ids are renamed deterministically so the transcript does
not depend on the emulator's id counter. Sessions of both kinds are shuffled together (seeded).

``rag`` — synthetic: long documents (5k–20k tokens of deterministic generated prose, by the
emulator's tokenizer) queried by short questions. Popularity is Zipf-like (s = 1.1), so a few
documents are asked about many times and the tail once or never. A request is a short system
prompt plus one user message: the document (a ``document`` block, or for every other document
a long text block) followed by the question.

Arrival times: sessions start with exponentially distributed gaps around a mean (30 s, 3 min,
10 min, 30 min, 2 h; fixed seed), or with the consecutive timestamp deltas of the Mooncake
conversation trace (``mooncake``; cycled if the workload has more sessions than the trace).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haikucache.testing import Emulator, ManualClock
from haikucache.testing._tokenizer import Tokenizer

__all__ = [
    "GAPS",
    "MODEL",
    "TAU_AIRLINE_TOOLS",
    "Session",
    "Workload",
    "arrivals",
    "bfcl_tools",
    "check_tool_calls",
    "continue_sessions",
    "convert_bfcl_schema",
    "default_data_dir",
    "load_bfcl",
    "load_mooncake_gaps",
    "load_tau",
    "make_code_agent",
    "make_rag",
    "openai_to_anthropic",
    "openai_tools",
    "parse_gaps",
    "sanitize_tool_name",
    "tau_openai_samples",
    "tau_requests",
]

MODEL = "claude-haiku-4-5"
MAX_TOKENS = 1024
# Mean session inter-arrival gap, in seconds; ``None`` = ``burst``: session starts packed by
# the Mooncake conversation trace's request-to-request deltas (~0.3 s), i.e. nearly all at once.
GAPS: dict[str, float | None] = {
    "30s": 30.0,
    "3m": 180.0,
    "10m": 600.0,
    "30m": 1800.0,
    "2h": 7200.0,
    "burst": None,
}
DEFAULT_GAPS: tuple[str, ...] = tuple(GAPS)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Think time between two calls of one session. An agent step (the request after a tool
# result) waits for the model and the tool: a few seconds. A human turn (the request after a
# person's message) waits for them to read the answer and type: tens of seconds to minutes.
TOOL_STEP_GAP = (2.0, 10.0)
HUMAN_TURN_GAP = (8.0, 150.0)  # log-uniform

Body = dict[str, Any]


@dataclass(frozen=True)
class Session:
    """One conversation: requests sent one after the other.

    Attributes:
        name: a stable identifier (used to seed its timing).
        requests: the Messages request bodies, unmarked, in order.
        offsets: seconds after the session's start at which each request is sent.
    """

    name: str
    requests: tuple[Body, ...]
    offsets: tuple[float, ...]


@dataclass(frozen=True)
class Workload:
    """A named list of sessions."""

    name: str
    sessions: tuple[Session, ...]

    @property
    def calls(self) -> int:
        return sum(len(s.requests) for s in self.sessions)


def default_data_dir() -> Path:
    """``../shared/data`` next to the repository."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def gap_seconds(name: str) -> float | None:
    """The mean gap of a regime name: ``"burst"``, or a number with ``s``, ``m`` or ``h``."""
    if name in GAPS:
        return GAPS[name]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", name)
    if match is None:
        raise ValueError(f"a gap is 'burst' or a number with s, m or h (e.g. 7m), not {name!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_gaps(text: str) -> tuple[str, ...]:
    """``"7m,20m,burst"`` → ``("7m", "20m", "burst")``, each checked."""
    names = tuple(g.strip() for g in text.split(",") if g.strip())
    for name in names:
        gap_seconds(name)
    if not names:
        raise ValueError("no gaps given")
    return names


def _after_tool(body: Mapping[str, Any]) -> bool:
    last = body["messages"][-1]["content"]
    return isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)


def _offsets(name: str, requests: Sequence[Mapping[str, Any]], seed: int) -> tuple[float, ...]:
    rng = random.Random(f"{seed}:offsets:{name}")
    out = [0.0]
    lo, hi = HUMAN_TURN_GAP
    for body in requests[1:]:
        if _after_tool(body):
            step = rng.uniform(*TOOL_STEP_GAP)
        else:
            step = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        out.append(out[-1] + step)
    return tuple(out)


# --------------------------------------------------------------------------- arrivals


def load_mooncake_gaps(path: Path) -> list[float]:
    """Consecutive deltas (seconds) of the Mooncake trace's request timestamps (ms)."""
    stamps = []
    with path.open() as f:
        for line in f:
            if line.strip():
                stamps.append(int(json.loads(line)["timestamp"]))
    stamps.sort()
    return [(b - a) / 1000.0 for a, b in itertools.pairwise(stamps)]


def session_starts(
    n: int, gap: str, *, seed: int, workload: str, mooncake: Sequence[float] = ()
) -> list[float]:
    """Start times (seconds from 0) of ``n`` sessions for the gap regime ``gap``."""
    mean = gap_seconds(gap)
    starts = [0.0]
    if mean is None:
        if not mooncake:
            raise ValueError("the burst regime needs the Mooncake trace's gaps")
        # Each seed reads the trace from a different place.
        first = random.Random(f"{seed}:burst:{workload}").randrange(len(mooncake))
        for i in range(n - 1):
            starts.append(starts[-1] + mooncake[(first + i) % len(mooncake)])
        return starts
    rng = random.Random(f"{seed}:arrivals:{workload}:{gap}")
    for _ in range(n - 1):
        starts.append(starts[-1] + rng.expovariate(1.0 / mean))
    return starts


def arrivals(
    workload: Workload, gap: str, *, seed: int, mooncake: Sequence[float] = ()
) -> list[tuple[float, int, int]]:
    """Every call of ``workload`` as ``(time, session index, request index)``, in time order.

    Sessions overlap when they last longer than the gap; ties keep session order.
    """
    starts = session_starts(
        len(workload.sessions), gap, seed=seed, workload=workload.name, mooncake=mooncake
    )
    calls = [
        (start + offset, s, r)
        for s, (start, session) in enumerate(zip(starts, workload.sessions, strict=True))
        for r, offset in enumerate(session.offsets)
    ]
    calls.sort()
    return calls


# --------------------------------------------------------------------------- OpenAI → Anthropic


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    # The Messages API wants alternating roles: a second user (or assistant) turn in a row is
    # merged into the previous one.
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _simplify(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A lone text block is sent as a plain string, the way most applications write it.
    out = []
    for m in messages:
        content = m["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            out.append({"role": m["role"], "content": content[0]["text"]})
        else:
            out.append({"role": m["role"], "content": content})
    return out


def openai_to_anthropic(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | None, list[dict[str, Any]]]:
    """Convert OpenAI chat messages to ``(system, messages)`` of the Messages API."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        content = m.get("content")
        if role == "system":
            if content:
                system.append(str(content))
        elif role == "user":
            if content:
                _append(out, "user", [{"type": "text", "text": str(content)}])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            if content:
                blocks.append({"type": "text", "text": str(content)})
            for call in m.get("tool_calls") or []:
                fn = call["function"]
                args = fn.get("arguments") or "{}"
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": fn["name"],
                        "input": json.loads(args) if isinstance(args, str) else dict(args),
                    }
                )
            if blocks:
                _append(out, "assistant", blocks)
        elif role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m["tool_call_id"]}
            if content:
                block["content"] = str(content)
            _append(out, "user", [block])
        else:
            raise ValueError(f"unknown role {role!r}")
    return ("\n\n".join(system) or None), _simplify(out)


def _request(
    system: str | None, messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> Body:
    body: Body = {"model": MODEL, "max_tokens": MAX_TOKENS}
    if system:
        body["system"] = system
    if tools:
        body["tools"] = copy.deepcopy(list(tools))
    body["messages"] = messages
    return body


# --------------------------------------------------------------------------- τ-bench airline


def _obj(properties: dict[str, Any], required: Iterable[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
    }


def _s(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


_CABINS = ["basic_economy", "economy", "business"]
_FLIGHT_ITEMS = {
    "type": "array",
    "description": "Every flight segment of the itinerary, in travel order.",
    "items": _obj(
        {
            "flight_number": _s("Flight number, such as 'HAT001'."),
            "date": _s("Departure date of the segment, 'YYYY-MM-DD', such as '2024-05-01'."),
        }
    ),
}
_PASSENGER_ITEMS = {
    "type": "array",
    "description": "Every passenger on the reservation (at most five).",
    "items": _obj(
        {
            "first_name": _s("First name, such as 'Noah'."),
            "last_name": _s("Last name, such as 'Brown'."),
            "dob": _s("Date of birth, 'YYYY-MM-DD', such as '1990-01-01'."),
        }
    ),
}
_PAYMENT_ID = _s(
    "Payment method id from the user's profile, such as 'credit_card_7815826', "
    "'gift_card_7815826' or 'certificate_7815826'."
)
_RESERVATION_ID = _s("Six-character reservation id, such as 'ZFA04Y'.")
_USER_ID = _s("The user's id, such as 'sara_doe_496'.")
_AIRPORT = "IATA code of the {} airport, such as '{}'."
_BAGS_TOTAL = {
    "type": "integer",
    "description": "Total number of checked bags on the reservation.",
}
_BAGS_NONFREE = {
    "type": "integer",
    "description": "Number of checked bags beyond the free allowance (50 dollars each).",
}


def _flight_search(kind: str) -> dict[str, Any]:
    return _obj(
        {
            "origin": _s(_AIRPORT.format("departure", "JFK")),
            "destination": _s(_AIRPORT.format("arrival", "LAX")),
            "date": _s(f"Departure date of the {kind}, 'YYYY-MM-DD', such as '2024-05-01'."),
        }
    )


TAU_AIRLINE_TOOLS: list[dict[str, Any]] = [
    {
        "name": "book_reservation",
        "description": (
            "Book a new reservation for a user. All passengers fly the same flights in the same "
            "cabin. The payment methods must already be in the user's profile and their amounts "
            "must add up to the total price (fares, 30 dollars of insurance per passenger if "
            "chosen, 50 dollars per non-free bag). Returns the created reservation."
        ),
        "input_schema": _obj(
            {
                "user_id": _USER_ID,
                "origin": _s(_AIRPORT.format("departure", "SFO")),
                "destination": _s(_AIRPORT.format("arrival", "JFK")),
                "flight_type": _s("Trip type.", enum=["one_way", "round_trip"]),
                "cabin": _s("Cabin class for every segment.", enum=_CABINS),
                "flights": _FLIGHT_ITEMS,
                "passengers": _PASSENGER_ITEMS,
                "payment_methods": {
                    "type": "array",
                    "description": (
                        "How the total is paid: at most one certificate, one credit card and "
                        "three gift cards."
                    ),
                    "items": _obj(
                        {
                            "payment_id": _PAYMENT_ID,
                            "amount": {
                                "type": "number",
                                "description": "Amount charged to this method, in dollars.",
                            },
                        }
                    ),
                },
                "total_baggages": _BAGS_TOTAL,
                "nonfree_baggages": _BAGS_NONFREE,
                "insurance": _s("Whether to buy travel insurance.", enum=["yes", "no"]),
            }
        ),
    },
    {
        "name": "calculate",
        "description": (
            "Evaluate an arithmetic expression (numbers, +, -, *, /, parentheses) and return the "
            "result rounded to two decimals. Use it for fare differences and refunds."
        ),
        "input_schema": _obj(
            {"expression": _s("The expression to evaluate, such as '2 * (350 + 125)'.")}
        ),
    },
    {
        "name": "cancel_reservation",
        "description": (
            "Cancel a whole reservation. Refunds go back to the original payment methods within "
            "5 to 7 business days. Only call it after checking the cancellation policy and "
            "getting the user's explicit confirmation."
        ),
        "input_schema": _obj({"reservation_id": _RESERVATION_ID}),
    },
    {
        "name": "get_reservation_details",
        "description": (
            "Look up a reservation: itinerary with per-segment prices, passengers, cabin, "
            "payment history, baggage, insurance and creation time."
        ),
        "input_schema": _obj({"reservation_id": _RESERVATION_ID}),
    },
    {
        "name": "get_user_details",
        "description": (
            "Look up a user's profile: name, address, email, date of birth, membership tier, "
            "saved payment methods (with gift card and certificate balances) and reservation "
            "ids."
        ),
        "input_schema": _obj({"user_id": _USER_ID}),
    },
    {
        "name": "list_all_airports",
        "description": "List the IATA codes and city names of every airport the airline serves.",
        "input_schema": {"type": "object", "properties": {}, "required": []},
    },
    {
        "name": "search_direct_flight",
        "description": (
            "Search non-stop flights between two airports on a date. Returns each flight's "
            "number, scheduled times, status, and available seats and prices per cabin."
        ),
        "input_schema": _flight_search("flight"),
    },
    {
        "name": "search_onestop_flight",
        "description": (
            "Search itineraries with exactly one connection between two airports on a date. "
            "Returns pairs of flights with their times, status, seats and prices per cabin."
        ),
        "input_schema": _flight_search("first segment"),
    },
    {
        "name": "send_certificate",
        "description": (
            "Issue a travel certificate to a user as compensation, for the amount allowed by "
            "the compensation policy. The certificate is added to the user's payment methods."
        ),
        "input_schema": _obj(
            {
                "user_id": _USER_ID,
                "amount": {
                    "type": "number",
                    "description": "Certificate value in dollars.",
                },
            }
        ),
    },
    {
        "name": "think",
        "description": (
            "Think through a step of reasoning. It changes nothing and fetches nothing; the "
            "thought is only logged. Use it when a policy decision needs careful checking."
        ),
        "input_schema": _obj({"thought": _s("The reasoning to record.")}),
    },
    {
        "name": "transfer_to_human_agents",
        "description": (
            "Hand the conversation to a human agent with a summary of the issue. Only do this "
            "when the user explicitly asks for a human, or when the request cannot be handled "
            "with the available tools under the policy."
        ),
        "input_schema": _obj({"summary": _s("A summary of the user's issue.")}),
    },
    {
        "name": "update_reservation_baggages",
        "description": (
            "Change the number of checked bags on a reservation. Bags can be added but not "
            "removed; extra bags are charged to the given payment method."
        ),
        "input_schema": _obj(
            {
                "reservation_id": _RESERVATION_ID,
                "total_baggages": _BAGS_TOTAL,
                "nonfree_baggages": _BAGS_NONFREE,
                "payment_id": _PAYMENT_ID,
            }
        ),
    },
    {
        "name": "update_reservation_flights",
        "description": (
            "Replace the flights (and optionally the cabin) of a reservation. Pass the whole new "
            "itinerary, including segments that do not change. The fare difference is charged "
            "or refunded to the given payment method; certificates cannot be used."
        ),
        "input_schema": _obj(
            {
                "reservation_id": _RESERVATION_ID,
                "cabin": _s("Cabin class for every segment.", enum=_CABINS),
                "flights": _FLIGHT_ITEMS,
                "payment_id": _PAYMENT_ID,
            }
        ),
    },
    {
        "name": "update_reservation_passengers",
        "description": (
            "Replace the passenger details of a reservation. The number of passengers cannot "
            "change; pass every passenger, changed or not."
        ),
        "input_schema": _obj({"reservation_id": _RESERVATION_ID, "passengers": _PASSENGER_ITEMS}),
    },
]

_SCALARS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _fits(value: Any, schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind is None:
        return True
    if kind == "array":
        return isinstance(value, list) and all(_fits(v, schema.get("items", {})) for v in value)
    if kind == "object":
        # Keys the schema does not name are allowed (no ``additionalProperties: false``).
        props = schema.get("properties", {})
        return isinstance(value, dict) and all(
            _fits(v, props[k]) for k, v in value.items() if k in props
        )
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _SCALARS[kind])


def check_tool_calls(runs: Iterable[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` if a ``tool_calls`` entry of ``runs`` does not fit ``tools``."""
    by_name = {t["name"]: t["input_schema"] for t in tools}
    for run in runs:
        for m in run["traj"]:
            for call in m.get("tool_calls") or []:
                name = call["function"]["name"]
                args = json.loads(call["function"].get("arguments") or "{}")
                schema = by_name.get(name)
                if (
                    schema is None
                    or not set(args) <= set(schema["properties"])
                    or not _fits(args, schema)
                ):
                    raise ValueError(f"tool call {name}({args}) does not fit the tool set")


def tau_requests(
    traj: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[Body]:
    """One request per assistant turn of ``traj``: everything before that turn."""
    out = []
    for k, m in enumerate(traj):
        if m["role"] == "assistant" and k > 0:
            system, messages = openai_to_anthropic(traj[:k])
            if messages and messages[-1]["role"] == "user":
                out.append(_request(system, messages, tools))
    return out


def load_tau(path: Path, *, runs: int | None = None, seed: int = 0) -> Workload:
    """The τ-bench airline workload (the first ``runs`` runs, or all)."""
    data = json.loads(path.read_text())
    check_tool_calls(data, TAU_AIRLINE_TOOLS)
    sessions = []
    for run in data[:runs]:
        name = f"tau-{run['task_id']}-{run['trial']}"
        requests = tau_requests(run["traj"], TAU_AIRLINE_TOOLS)
        if requests:
            sessions.append(Session(name, tuple(requests), _offsets(name, requests, seed)))
    return Workload("tau_airline", tuple(sessions))


# --------------------------------------------------------------------------- BFCL

_TYPE_MAP = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "double": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "string": "string",
    "str": "string",
    "char": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "null": "null",
}
_TOOL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def convert_bfcl_schema(schema: Any) -> Any:
    """A BFCL parameter schema as JSON Schema (``dict`` → ``object``, ``any`` → no type ...)."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            mapped = _TYPE_MAP.get(str(value).lower()) if isinstance(value, str) else None
            if mapped is not None:
                out["type"] = mapped
            # "any" and unknown types: no constraint.
        elif key == "properties" and isinstance(value, Mapping):
            out["properties"] = {k: convert_bfcl_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = convert_bfcl_schema(value)
        elif key == "optional":
            continue  # BFCL bookkeeping, not JSON Schema
        else:
            out[key] = copy.deepcopy(value)
    return out


def sanitize_tool_name(name: str, taken: set[str]) -> str:
    """``name`` made to match ``^[a-zA-Z0-9_-]{1,64}$`` and unique among ``taken``."""
    base = _TOOL_NAME_BAD.sub("_", name)[:64] or "tool"
    candidate, n = base, 2
    while candidate in taken:
        suffix = f"_{n}"
        candidate = base[: 64 - len(suffix)] + suffix
        n += 1
    taken.add(candidate)
    return candidate


def bfcl_tools(functions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function docs as Messages API tool definitions."""
    taken: set[str] = set()
    tools = []
    for fn in functions:
        schema = convert_bfcl_schema(fn.get("parameters") or {})
        schema["type"] = "object"  # the API requires an object at the top
        schema.setdefault("properties", {})
        tool: dict[str, Any] = {"name": sanitize_tool_name(str(fn["name"]), taken)}
        if fn.get("description"):
            tool["description"] = str(fn["description"])
        tool["input_schema"] = schema
        tools.append(tool)
    return tools


_BFCL_CLASS_FILES = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class _MultiTurnSpec:
    """A multi-turn session before it is played: tools, optional system, user turns."""

    name: str
    system: str | None
    tools: list[dict[str, Any]]
    turns: list[list[str]]


def _reply_tool_result(block: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": block["id"],
        "content": json.dumps({"status": "ok", "tool": block["name"]}),
    }


def continue_sessions(specs: Sequence[_MultiTurnSpec], *, seed: int) -> list[Session]:
    """Play multi-turn sessions once against an unmarked emulator, keeping its replies.

    Before each user turn after the first, the previous reply is appended as the assistant
    turn; its ``tool_use`` blocks (ids renamed ``toolu_<session>_<turn>_<k>``) get a short
    deterministic ``tool_result`` in the next user turn.
    """
    emu = Emulator(clock=ManualClock(), seed=0)
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
    sessions = []
    for spec in specs:
        messages: list[dict[str, Any]] = []
        requests: list[Body] = []
        for t, turn in enumerate(spec.turns):
            for text in turn:
                _append(messages, "user", [{"type": "text", "text": text}])
            body = _request(spec.system, copy.deepcopy(_simplify(messages)), spec.tools)
            requests.append(body)
            answer = emu.handle(
                "POST", "http://emulator.bench/v1/messages", headers, json.dumps(body).encode()
            )
            if answer.status != 200:
                raise RuntimeError(f"{spec.name}: emulator said {answer.status} {answer.body!r}")
            content = copy.deepcopy(answer.json()["content"])
            results = []
            for k, block in enumerate(b for b in content if b["type"] == "tool_use"):
                block["id"] = f"toolu_{_TOOL_NAME_BAD.sub('_', spec.name)}_{t}_{k}"
                results.append(_reply_tool_result(block))
            if content:
                _append(messages, "assistant", content)
            if results:
                _append(messages, "user", results)
        sessions.append(Session(spec.name, tuple(requests), _offsets(spec.name, requests, seed)))
    return sessions


def load_bfcl(
    root: Path, *, live: int | None = None, multi: int | None = None, seed: int = 0
) -> Workload:
    """BFCL live_multiple (one-call sessions) and multi_turn_base sessions, shuffled together."""
    sessions: list[Session] = []
    for line in _jsonl(root / "BFCL_v4_live_multiple.json")[:live]:
        system, messages = openai_to_anthropic(line["question"][0])
        body = _request(system, messages, bfcl_tools(line["function"]))
        sessions.append(Session(line["id"], (body,), (0.0,)))

    docs = {
        cls: _jsonl(root / "multi_turn_func_doc" / fname)
        for cls, fname in _BFCL_CLASS_FILES.items()
    }
    specs = []
    for line in _jsonl(root / "BFCL_v4_multi_turn_base.json")[:multi]:
        excluded = set(line.get("excluded_function") or ())
        functions = [
            fn for cls in line["involved_classes"] for fn in docs[cls] if fn["name"] not in excluded
        ]
        turns = [
            [str(m["content"]) for m in turn if m.get("role") == "user" and m.get("content")]
            for turn in line["question"]
        ]
        turns = [t for t in turns if t]
        if turns:
            specs.append(_MultiTurnSpec(line["id"], None, bfcl_tools(functions), turns))
    sessions.extend(continue_sessions(specs, seed=seed))
    random.Random(f"{seed}:bfcl-order").shuffle(sessions)
    return Workload("bfcl", tuple(sessions))


# --------------------------------------------------------------------------- synthetic RAG

_VOCABULARY = (
    "the of and to in a is that for it as with was on be by this are from or at an which "
    "have not has but were all can their more one its also been other these than into "
    "system policy customer account report quarter revenue contract clause section schedule "
    "payment supplier warranty liability notice period invoice delivery service level "
    "agreement data retention security incident response audit control owner risk review "
    "approval budget forecast region market product release version migration storage "
    "network latency throughput capacity cluster region backup recovery objective employee "
    "benefit leave travel expense reimbursement receipt manager department training safety "
    "equipment inspection maintenance vendor procurement tender evaluation criteria score "
    "threshold exception escalation committee minutes decision action item deadline "
    "milestone dependency assumption constraint requirement specification test acceptance "
    "criterion defect severity priority workaround patch deployment rollback"
)
_WORDS = _VOCABULARY.split()
_TOPICS = (
    "termination notice",
    "payment terms",
    "data retention",
    "incident escalation",
    "service credits",
    "warranty period",
    "travel reimbursement",
    "backup schedule",
    "acceptance testing",
    "liability cap",
    "audit rights",
    "capacity planning",
    "release approval",
    "vendor evaluation",
)
_QUESTIONS = (
    "What does the document say about {topic}?",
    "Summarise the rules on {topic} in section {section}.",
    "Is there a deadline related to {topic}? Quote it.",
    "Who is responsible for {topic} according to section {section}?",
    "List the exceptions to the {topic} provisions.",
    "How does section {section} change the {topic} requirements?",
)
RAG_SYSTEM = (
    "You answer questions about the document the user provides. Quote the passage you rely "
    "on, then answer in at most three sentences. If the document does not say, say so."
)


def _document(rng: random.Random, tokens: int, tok: Tokenizer, title: str) -> str:
    parts = [f"{title}\n"]
    count = tok.count(parts[0])
    section = 0
    while count < tokens:
        section += 1
        head = f"\nSection {section}. {rng.choice(_TOPICS).title()}\n"
        parts.append(head)
        count += tok.count(head)
        for _ in range(rng.randint(3, 7)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(40, 90))]
            sentence = " ".join(words).capitalize() + "."
            if rng.random() < 0.3:
                sentence += f" See clause {section}.{rng.randint(1, 12)} for {rng.choice(_TOPICS)}."
            paragraph = sentence + "\n"
            parts.append(paragraph)
            count += tok.count(paragraph)
    return "".join(parts)


RAG_LAYOUTS = ("user", "system")


def make_rag(
    *, documents: int = 40, queries: int = 400, seed: int = 0, layout: str = "user"
) -> Workload:
    """Synthetic long-document question answering with Zipf-like document popularity.

    ``layout="user"`` (``rag_user``): the document opens the user turn (a ``document`` block,
    or for every other document a long text block), followed by the question; no peer marks
    it. ``layout="system"`` (``rag_system``): the same documents and questions, with the
    document as a second system block after the instructions — where a peer's system marker
    lands on it.
    """
    if layout not in RAG_LAYOUTS:
        raise ValueError(f"layout must be one of {RAG_LAYOUTS}")
    rng = random.Random(f"{seed}:rag")
    tok = Tokenizer()
    docs = []
    for i in range(documents):
        target = int(math.exp(rng.uniform(math.log(5_000), math.log(20_000))))
        title = f"Operations handbook, volume {i + 1}"
        docs.append((title, _document(rng, target, tok, title)))
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(documents)]
    sessions = []
    for q in range(queries):
        d = rng.choices(range(documents), weights)[0]
        title, text = docs[d]
        question = rng.choice(_QUESTIONS).format(
            topic=rng.choice(_TOPICS), section=rng.randint(1, 12)
        )
        if layout == "system":
            system: Any = [
                {"type": "text", "text": RAG_SYSTEM},
                {"type": "text", "text": f'<document title="{title}">\n{text}\n</document>'},
            ]
            body = {
                "model": MODEL,
                "max_tokens": 512,
                "system": system,
                "messages": [{"role": "user", "content": question}],
            }
        else:
            if d % 2 == 0:
                doc_block: dict[str, Any] = {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": text},
                    "title": title,
                }
            else:
                doc_block = {"type": "text", "text": f"<document>\n{text}\n</document>"}
            body = _request(
                RAG_SYSTEM,
                [{"role": "user", "content": [doc_block, {"type": "text", "text": question}]}],
                [],
            )
            body["max_tokens"] = 512
        sessions.append(Session(f"rag-{q}", (body,), (0.0,)))
    return Workload(f"rag_{layout}", tuple(sessions))


# --------------------------------------------------------------------------- synthetic agent

CODE_AGENT_TOOLS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": (
            "Read a file of the repository and return its text with line numbers. Large files "
            "are returned whole; ask for a line range to read less."
        ),
        "input_schema": _obj(
            {
                "path": _s("Path relative to the repository root, such as 'src/app/main.py'."),
                "start_line": {"type": "integer", "description": "First line (1-based)."},
                "end_line": {"type": "integer", "description": "Last line (inclusive)."},
            },
            required=["path"],
        ),
    },
    {
        "name": "grep",
        "description": (
            "Search the repository with a regular expression; returns every matching line as "
            "path:line:text, up to 500 matches."
        ),
        "input_schema": _obj(
            {
                "pattern": _s("Regular expression, Python syntax."),
                "glob": _s("Only files matching this glob, such as '**/*.py'."),
            },
            required=["pattern"],
        ),
    },
    {
        "name": "list_dir",
        "description": "List a directory recursively to the given depth, with file sizes.",
        "input_schema": _obj(
            {"path": _s("Directory path."), "depth": {"type": "integer", "description": "1-4."}},
            required=["path"],
        ),
    },
    {
        "name": "run_tests",
        "description": (
            "Run the test suite or a subset and return the runner's full output, including "
            "tracebacks of failures."
        ),
        "input_schema": _obj({"selector": _s("Test path or -k expression; empty for all.")}),
    },
    {
        "name": "edit_file",
        "description": (
            "Replace one exact occurrence of old_text with new_text in a file. Fails if "
            "old_text is missing or ambiguous."
        ),
        "input_schema": _obj(
            {
                "path": _s("File to edit."),
                "old_text": _s("Exact text to replace, with enough context to be unique."),
                "new_text": _s("Replacement text."),
            }
        ),
    },
    {
        "name": "run_command",
        "description": "Run a shell command in the repository and return stdout and stderr.",
        "input_schema": _obj({"command": _s("The command line."), "timeout": {"type": "integer"}}),
    },
]
_AGENT_TASKS = (
    "The {topic} job fails on the first run after a deploy. Find out why and fix it.",
    "Add a retry with backoff around the {topic} client and cover it with a test.",
    "Users report that {topic} reports are off by one day. Investigate and fix.",
    "Refactor the {topic} module so that the parser and the writer are separate.",
    "The {topic} endpoint is slow with large inputs. Profile it and make it faster.",
)
_CODE_WORDS = [
    "def",
    "class",
    "return",
    "self",
    "import",
    "from",
    "if",
    "else",
    "elif",
    "for",
    "while",
    "in",
    "not",
    "and",
    "or",
    "None",
    "True",
    "False",
    "try",
    "except",
    "raise",
    "with",
    "as",
    "yield",
    "lambda",
    "async",
    "await",
    "assert",
    "del",
    "pass",
    "break",
    "continue",
    "config",
    "client",
    "request",
    "response",
    "payload",
    "record",
    "batch",
    "cursor",
    "session",
    "schema",
    "parser",
    "writer",
    "buffer",
    "offset",
    "limit",
    "retry",
    "timeout",
    "deadline",
    "handler",
    "logger",
    "metrics",
    "cache",
    "key",
    "value",
    "index",
]


def _code_text(rng: random.Random, tokens: int, tok: Tokenizer, header: str) -> str:
    lines = [header]
    count = tok.count(header)
    n = 0
    while count < tokens:
        n += 1
        indent = "    " * rng.randint(0, 3)
        words = [rng.choice(_CODE_WORDS) for _ in range(rng.randint(3, 14))]
        line = f"{n:5d}  {indent}{'_'.join(words[:2])}({', '.join(words[2:])})"
        lines.append(line)
        count += tok.count(line) + 1
    return "\n".join(lines)


def make_code_agent(*, sessions: int = 100, seed: int = 0) -> Workload:
    """Synthetic coding-agent runs: long tool outputs (files, grep, test logs) in a tool loop.

    A fixed ~3,500-token instruction prompt and six tools; each run is a task followed by 3–20
    tool steps whose results run 300–6,000 tokens (log-uniform), then a final answer. Every
    assistant turn is one call; a run of 20 steps is 40+ blocks long, so the 20-block lookback
    of a tail marker matters.
    """
    rng = random.Random(f"{seed}:code-agent")
    tok = Tokenizer()
    system = _document(random.Random("code-agent-system"), 3_500, tok, "Coding agent guidelines")
    out = []
    for k in range(sessions):
        topic = rng.choice(_TOPICS)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": rng.choice(_AGENT_TASKS).format(topic=topic)}
        ]
        requests: list[Body] = []
        for step in range(rng.randint(3, 20)):
            requests.append(_request(system, copy.deepcopy(messages), CODE_AGENT_TOOLS))
            tool = rng.choice(CODE_AGENT_TOOLS[:4] + CODE_AGENT_TOOLS[5:])
            call_id = f"toolu_agent_{seed}_{k}_{step}"
            args = {"path": f"src/{topic.replace(' ', '_')}/part_{rng.randint(1, 40)}.py"}
            if tool["name"] == "grep":
                args = {"pattern": rng.choice(_CODE_WORDS) + r"\(", "glob": "**/*.py"}
            elif tool["name"] in ("run_tests", "run_command"):
                key = "selector" if tool["name"] == "run_tests" else "command"
                args = {key: f"tests/test_{topic.replace(' ', '_')}.py"}
            messages.append(
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": f"Step {step + 1}: checking {args}."},
                        {"type": "tool_use", "id": call_id, "name": tool["name"], "input": args},
                    ],
                }
            )
            size = int(math.exp(rng.uniform(math.log(300), math.log(6_000))))
            result = _code_text(rng, size, tok, f"# {tool['name']} {json.dumps(args)}")
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}],
                }
            )
        requests.append(_request(system, copy.deepcopy(messages), CODE_AGENT_TOOLS))
        name = f"agent-{k}"
        out.append(Session(name, tuple(requests), _offsets(name, requests, seed)))
    return Workload("code_agent", tuple(out))


def openai_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages API tool definitions in OpenAI's ``{"type": "function", ...}`` shape."""
    return [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description", ""),
                "parameters": t["input_schema"],
            },
        }
        for t in tools
    ]


def tau_openai_samples(
    path: Path, *, runs: int = 3
) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]], Body]]:
    """``(openai messages, openai tools, converted body)`` for every call of the first runs."""
    data = json.loads(path.read_text())
    tools = openai_tools(TAU_AIRLINE_TOOLS)
    out = []
    for run in data[:runs]:
        traj = run["traj"]
        for k, m in enumerate(traj):
            if m["role"] == "assistant" and k > 0:
                msgs = [dict(x) for x in traj[:k]]
                system, messages = openai_to_anthropic(msgs)
                out.append((msgs, tools, _request(system, messages, TAU_AIRLINE_TOOLS)))
    return out
