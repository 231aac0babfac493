"""The workload behind ``haikucache demo``: realistic traffic through the engine.

Three kinds of traffic a Haiku 4.5 application sends:

* an **agent loop** — a long system prompt (a support policy of ~6,000 tokens) and 6 tools,
  several customers, each turn a tool call then an answer;
* **questions** — short Q&A, some asked again word for word;
* **small jobs** — one-line classification prompts that can wait: with ``batch=True`` they go
  through a :class:`haikucache.Batcher` as one Message Batch, at half price.

Each call goes through :class:`haikucache.Client`, so whatever the engine does (prompt
caching, the response cache, batching) shows up in the ledger table the demo prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._catalog import DEFAULT_MODEL
from ._ledger import LedgerTotals, now_entry

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["DemoReport", "run_demo", "support_policy"]

_POLICY_TOPICS = (
    "changing a flight",
    "cancelling a reservation",
    "checked baggage",
    "travel insurance",
    "upgrades between cabins",
    "compensation for delays",
    "passengers with reduced mobility",
    "unaccompanied minors",
    "pets in the cabin",
    "name corrections",
    "refunds to the original payment method",
    "loyalty points",
)
_POLICY_SENTENCES = (
    "An agent must confirm the booking reference and the passenger's full name before {t}.",
    "When a customer asks about {t}, explain the fare rules that apply to their ticket class.",
    "Basic economy fares have stricter conditions for {t} than economy or business fares.",
    "Never promise an outcome for {t} before the reservation system has confirmed it.",
    "If the request about {t} falls outside policy, offer the closest permitted alternative.",
    "Record every action taken for {t} in the reservation notes with the date and the reason.",
    "Fees for {t} are charged to the payment method on file unless the customer names another.",
    "For {t}, gold and platinum members may be granted one exception per calendar year.",
)

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_reservation",
        "description": "Look up a reservation by its six-character booking reference.",
        "input_schema": {
            "type": "object",
            "properties": {"reservation_id": {"type": "string", "description": "e.g. 8JX2QK"}},
            "required": ["reservation_id"],
        },
    },
    {
        "name": "search_flights",
        "description": "Search direct flights between two airports on a date.",
        "input_schema": {
            "type": "object",
            "properties": {
                "origin": {"type": "string", "description": "IATA code"},
                "destination": {"type": "string", "description": "IATA code"},
                "date": {"type": "string", "format": "date"},
            },
            "required": ["origin", "destination", "date"],
        },
    },
    {
        "name": "change_flight",
        "description": "Move a reservation to another flight.",
        "input_schema": {
            "type": "object",
            "properties": {
                "reservation_id": {"type": "string"},
                "flight_number": {"type": "string"},
                "cabin": {"type": "string", "enum": ["basic_economy", "economy", "business"]},
            },
            "required": ["reservation_id", "flight_number", "cabin"],
        },
    },
    {
        "name": "cancel_reservation",
        "description": "Cancel a reservation and start a refund if the fare allows it.",
        "input_schema": {
            "type": "object",
            "properties": {
                "reservation_id": {"type": "string"},
                "reason": {
                    "type": "string",
                    "enum": ["change_of_plan", "airline_cancelled", "other"],
                },
            },
            "required": ["reservation_id", "reason"],
        },
    },
    {
        "name": "add_baggage",
        "description": "Add checked bags to a reservation.",
        "input_schema": {
            "type": "object",
            "properties": {
                "reservation_id": {"type": "string"},
                "bags": {"type": "integer", "minimum": 1, "maximum": 5},
            },
            "required": ["reservation_id", "bags"],
        },
    },
    {
        "name": "transfer_to_human",
        "description": "Hand the conversation to a human agent with a summary.",
        "input_schema": {
            "type": "object",
            "properties": {"summary": {"type": "string"}},
            "required": ["summary"],
        },
    },
]

_CUSTOMERS = (
    ("I need to move my flight 8JX2QK to next Friday.", "Yes, economy is fine."),
    ("Can I add two checked bags to reservation Q7ZP3M?", "Thanks. What is the fee?"),
    ("Please cancel booking TT41LA, my plans changed.", "Will I get the refund on my card?"),
    ("My name is misspelled on reservation R2D2XY.", "It should be Maria Lopez."),
)
_QUESTIONS = (
    "What is the checked baggage allowance in economy?",
    "Can I bring my cat in the cabin?",
    "What is the checked baggage allowance in economy?",
    "How early should I arrive for an international flight?",
    "Do you refund basic economy tickets?",
    "Can I bring my cat in the cabin?",
    "What is the checked baggage allowance in economy?",
    "How do I earn loyalty points on partner airlines?",
)
_JOBS = (
    "The flight was delayed four hours and nobody told us anything.",
    "Great crew, smooth landing, will fly again.",
    "My bag arrived a day late but the refund was quick.",
    "Seat 14C would not recline for the whole trip.",
    "Booking the upgrade online took two minutes.",
    "The lounge was closed without notice.",
    "Check-in staff helped my grandmother with a wheelchair.",
    "I was charged twice for the same seat selection.",
)


def support_policy(paragraphs: int = 24) -> str:
    """A long, stable system prompt: the kind of text prompt caching pays off on."""
    lines = ["You are the customer support agent of Haiku Air. Follow this policy exactly."]
    for p in range(paragraphs):
        topic = _POLICY_TOPICS[p % len(_POLICY_TOPICS)]
        lines.append(f"\nSection {p + 1}: {topic}.")
        for s, sentence in enumerate(_POLICY_SENTENCES):
            lines.append(sentence.format(t=topic) + f" (rule {p + 1}.{s + 1})")
    return "\n".join(lines)


def _run_tool(name: str, args: dict[str, Any]) -> str:
    """Deterministic stand-ins for the airline's back end."""
    ref = str(args.get("reservation_id", "8JX2QK"))
    results: dict[str, Any] = {
        "get_reservation": {"reservation_id": ref, "cabin": "economy", "status": "confirmed"},
        "search_flights": {"flights": [{"flight_number": "HA123", "seats": 7}]},
        "change_flight": {"reservation_id": ref, "status": "changed", "fee_usd": 0},
        "cancel_reservation": {"reservation_id": ref, "status": "cancelled", "refund_usd": 312},
        "add_baggage": {"reservation_id": ref, "bags": args.get("bags", 1), "fee_usd": 70},
        "transfer_to_human": {"status": "queued"},
    }
    return json.dumps(results.get(name, {"error": f"unknown tool {name}"}))


@dataclass
class DemoSection:
    """Totals for one kind of traffic."""

    name: str
    totals: LedgerTotals = field(default_factory=LedgerTotals)

    def add(self, message: Any, model: str) -> None:
        info = getattr(message, "haikucache", None)
        usage = message.usage.to_dict() if getattr(message, "usage", None) is not None else {}
        entry = now_entry(
            None,
            namespace=info.namespace if info is not None else "demo",
            model=model,
            cache=info.cache if info is not None else "miss",
            usage=usage,
            batch=info.batch if info is not None else False,
        )
        self.totals.add(entry)


@dataclass
class DemoReport:
    """What the demo did, section by section."""

    sections: list[DemoSection]
    upstream: str

    @property
    def total(self) -> LedgerTotals:
        total = LedgerTotals()
        for section in self.sections:
            total.merge(section.totals)
        return total


def count_calls() -> int:
    """How many calls the demo makes (for the progress bar)."""
    return len(_CUSTOMERS) * 4 + len(_QUESTIONS) + len(_JOBS)


def run_demo(
    client: Client,
    *,
    model: str = DEFAULT_MODEL,
    upstream: str = "emulator",
    on_call: Callable[[str], None] | None = None,
    batch: bool = False,
    poll_interval: float = 0.5,
) -> DemoReport:
    """Run the demo workload through ``client`` and return per-section totals.

    Args:
        client: a :class:`haikucache.Client` (pointed at the emulator or the real API).
        model: the model to call.
        upstream: a label for the report ("emulator" or the API's base URL).
        on_call: called after each call with the section name (drives a progress bar).
        batch: send the small jobs as one Message Batch (50 % off) through a
            :class:`haikucache.Batcher`; batches can take minutes on the real API.
        poll_interval: seconds between polls of that batch.
    """
    tick = on_call or (lambda _name: None)
    policy = support_policy()
    agent = DemoSection("agent loop")
    questions = DemoSection("questions")
    jobs = DemoSection("small jobs")

    for opening, follow_up in _CUSTOMERS:
        messages: list[dict[str, Any]] = []
        for user_turn in (opening, follow_up):
            messages.append({"role": "user", "content": user_turn})
            # One tool call, then the answer: the emulator (and a well-behaved agent) calls a
            # tool for a fresh question and answers once it has the tool's result.
            for _step in range(2):
                reply = client.messages.create(
                    model=model, max_tokens=512, system=policy, tools=TOOLS, messages=messages
                )
                agent.add(reply, model)
                tick(agent.name)
                content = [block.to_dict() for block in reply.content]
                messages.append({"role": "assistant", "content": content})
                uses = [b for b in content if b.get("type") == "tool_use"]
                if not uses:
                    break
                messages.append(
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": use["id"],
                                "content": _run_tool(use["name"], use.get("input", {})),
                            }
                            for use in uses
                        ],
                    }
                )

    job_system = "Classify the airline review as positive, negative or mixed. One word."
    one_shot = [
        (questions, _QUESTIONS, 256, "You answer questions about Haiku Air in two sentences."),
    ]
    if batch:
        from ._batcher import Batcher

        jobs.name = "small jobs (batch)"
        requests = [
            {
                "model": model,
                "max_tokens": 16,
                "system": job_system,
                "messages": [{"role": "user", "content": prompt}],
            }
            for prompt in _JOBS
        ]
        # An in-memory journal: the demo's batch is waited for here, never resumed later.
        with Batcher(
            client,
            journal="memory",
            poll_interval=poll_interval,
            max_poll_interval=max(poll_interval, 5.0),
        ) as batcher:
            for answer in batcher.map(requests):
                jobs.add(answer, model)
                tick(jobs.name)
    else:
        one_shot.append((jobs, _JOBS, 16, job_system))
    for section, prompts, max_tokens, system in one_shot:
        for prompt in prompts:
            reply = client.messages.create(
                model=model,
                max_tokens=max_tokens,
                system=system,
                messages=[{"role": "user", "content": prompt}],
            )
            section.add(reply, model)
            tick(section.name)

    return DemoReport([agent, questions, jobs], upstream)
