"""A lower bound on what any prompt-cache plan could pay for a trace known in advance.

The oracle sees every request and its arrival time before the first one is sent. It flattens
each request exactly as the emulator does (``haikucache.testing._request.parse_request``:
tools → system → message blocks, each with the emulator's token count and cumulative prefix
key) and prices every input token at the cheapest rate *any legal plan* could have achieved
for it, with these rules relaxed: no limit of 4 breakpoints, no 20-block lookback, no
"1 h before 5 m" ordering, and a hit may refresh every entry it passes. Kept: the model's
minimum cacheable prefix (4,096 tokens on Haiku 4.5), the 5-minute and 1-hour TTLs (1 h is
the longest), refresh-on-hit chains, and the prices (read 0.1×, 5 m write 1.25×, 1 h write
2×, plain 1×). Output tokens are billed as the emulator billed them.

**Units.** A block whose whole prefix is below the minimum can only ever be read or written
together with the first block of its request that reaches the minimum (the *anchor*), and at
a rate at least the anchor's; so the prefix up to the anchor is one unit, and every later
block is its own unit. Tokens after the last block (the assistant primer) are always plain.

**Per unit, a DP over its occurrences.** A unit ``u`` occurs at times ``t1 < t2 < …`` (the
requests whose prefix contains it). At each occurrence its tokens are billed as one of:
plain (1×), 5 m write (1.25×), 1 h write (2×) or read (0.1×). A write or a read *touches*
an entry covering ``u``. A read needs a live entry covering ``u``, touched at an earlier
occurrence:

* within 5 minutes (any entry), or
* within 1 hour, if ``u``'s own 1-hour entry is alive (it was written at 2× and touched
  every ≤ 1 h since), or
* within 1 hour, if the earlier occurrence continued with the same next block *and* ``u``
  was read there or written at 2× there: then the 1-hour entry may sit deeper, on a block
  shared by both requests (its premium is paid by that deeper unit), because a 1-hour entry
  written after ``u`` bills ``u`` at 2× unless ``u`` itself was read. Such an entry is on
  the path of every later occurrence that shares at least as much of the request, so when
  the latest same-next occurrence is also the deepest-sharing one and is the immediately
  preceding occurrence, the DP checks its state exactly; in the other cases it assumes the
  support exists — an optimistic shortcut that keeps the DP to four states and only lowers
  the bound.

The DP state after each occurrence is one of: untouched (plain), 5 m write, read, own 1-hour
chain alive. Every cost a legal plan pays for ``u`` is reachable in this DP at no greater
cost (a plan that leaves a supported occurrence plain or rewrites it at 1.25× is matched by
reading there instead, which is cheaper and only adds support), so the sum over units plus
the plain tail plus the billed output is a lower bound on the emulator's bill for any
placement of markers. ``bench_cost.py`` asserts that it is never above any strategy's bill,
and the tests check it against random legal plans.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from haikucache._catalog import lookup_model
from haikucache.testing._request import parse_request
from haikucache.testing._tokenizer import Tokenizer

__all__ = ["Flat", "flatten", "oracle_input_units", "oracle_usd"]

READ, WRITE_5M, WRITE_1H, PLAIN = 0.1, 1.25, 2.0, 1.0
TTL_5M, TTL_1H = 300.0, 3600.0
_INF = float("inf")
# What an occurrence left behind for later ones: nothing (billed plain), a 5 m write, a read,
# or a live own 1-hour chain (written at 2× or read from it).
_UNTOUCHED, _WRITTEN_5M, _READ, _OWN_1H = range(4)


@dataclass(frozen=True)
class Flat:
    """A request as the prompt cache sees it.

    Attributes:
        keys: the cumulative prefix key of each block.
        prefix: tokens up to and including each block.
        total: all input tokens of the request.
        min_tokens: the model's minimum cacheable prefix.
    """

    keys: tuple[bytes, ...]
    prefix: tuple[int, ...]
    total: int
    min_tokens: int


def flatten(body: Mapping[str, Any], tokenizer: Tokenizer | None = None) -> Flat:
    """Flatten ``body`` with the emulator's own parser and tokenizer."""
    parsed = parse_request(
        dict(body), version="2023-06-01", endpoint="messages", tokenizer=tokenizer or Tokenizer()
    )
    info = parsed.info
    return Flat(
        keys=tuple(b.key for b in parsed.blocks),
        prefix=tuple(b.prefix_tokens for b in parsed.blocks),
        total=parsed.total_tokens,
        min_tokens=info.min_cacheable_tokens if info is not None else 1024,
    )


@dataclass
class _Unit:
    """One unit: its tokens, its block index, and the requests it occurs in (time order)."""

    tokens: int
    depth: int
    times: list[float]
    flats: list[Flat]


def _shared_depth(a: Flat, b: Flat, depth: int) -> int:
    """The deepest block index at which ``a`` and ``b`` still share their prefix."""
    lo, hi = depth, min(len(a.keys), len(b.keys)) - 1
    while lo < hi:  # keys are cumulative: equal at k means equal at every index below k
        mid = (lo + hi + 1) // 2
        if a.keys[mid] == b.keys[mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# How the first occurrence of a unit may be billed, when it is fixed (``first_write``).
FIRST_WRITES = {
    "plain": [PLAIN, _INF, _INF, _INF],
    "5m": [_INF, WRITE_5M, _INF, _INF],
    "1h": [_INF, _INF, _INF, WRITE_1H],
}


def _unit_cost(unit: _Unit, first: str | None = None) -> float:
    """The cheapest multiplier sum over one unit's occurrences (see the module docstring);
    with ``first``, the first occurrence is billed that way (``FIRST_WRITES``)."""
    times, flats, depth = unit.times, unit.flats, unit.depth
    nexts = [f.keys[depth + 1] if depth + 1 < len(f.keys) else None for f in flats]
    # Indexed by state.
    cost = list(FIRST_WRITES[first]) if first else [PLAIN, WRITE_5M, _INF, WRITE_1H]
    # Per next block: the occurrences that continued with it, within the last hour.
    recent: dict[bytes, list[int]] = {}
    for j in range(len(times)):
        now, nxt = times[j], nexts[j]
        window: list[int] = []
        if nxt is not None:
            window = [x for x in recent.get(nxt, ()) if now - times[x] <= TTL_1H]
            recent[nxt] = [*window, j]
        if j == 0:
            continue
        gap = times[j] - times[j - 1]
        # A deeper 1-hour entry shared with an earlier occurrence ``x`` that had the same next
        # block (and was read or written at 2× there). If the latest such occurrence shares
        # at least as much with this request as any other, the entry is on its path too, so
        # it is the one to ask; when it is the previous occurrence, its state says whether it
        # could have touched the entry. Otherwise assume it could (optimistic, still a bound).
        deep_any, deep_if_previous = False, False
        if window:
            latest = window[-1]
            shared = [_shared_depth(flats[x], flats[j], depth) for x in window]
            if latest == j - 1 and shared[-1] >= max(shared):
                deep_if_previous = True
            else:
                deep_any = True
        best = min(cost)
        new = [best + PLAIN, best + WRITE_5M, _INF, best + WRITE_1H]
        for state, c in enumerate(cost):
            if c == _INF:
                continue
            own = state == _OWN_1H and gap <= TTL_1H
            supported = (
                (state != _UNTOUCHED and gap <= TTL_5M)
                or own
                or deep_any
                or (deep_if_previous and state in (_READ, _OWN_1H))
            )
            if supported:
                target = _OWN_1H if own else _READ
                new[target] = min(new[target], c + READ)
        cost = new
    return min(cost)


def oracle_input_units(
    calls: Iterable[tuple[float, Flat]], *, first_write: str | None = None
) -> float:
    """Input tokens × price multiplier summed over ``calls`` (``(time, flat)``, time order).

    ``first_write`` ("plain", "5m" or "1h") fixes how the first call bills its anchor unit
    (the prefix up to its first block that reaches the minimum): the bound for a planner that
    made that choice, at a moment when it had seen nothing.
    """
    units: dict[bytes, _Unit] = {}
    first_anchor: bytes | None = None
    plain = 0.0
    for when, flat in calls:
        n = len(flat.keys)
        anchor = next((i for i in range(n) if flat.prefix[i] >= flat.min_tokens), None)
        if anchor is None:
            plain += flat.total
            continue
        plain += flat.total - flat.prefix[-1]
        if first_anchor is None:
            first_anchor = flat.keys[anchor]
        for i in range(anchor, n):
            key = flat.keys[i]
            unit = units.get(key)
            if unit is None:
                tokens = flat.prefix[i] - (flat.prefix[i - 1] if i > anchor else 0)
                unit = units[key] = _Unit(tokens, i, [], [])
            unit.times.append(when)
            unit.flats.append(flat)
    return plain + sum(
        u.tokens * _unit_cost(u, first_write if key == first_anchor else None)
        for key, u in units.items()
    )


def oracle_usd(
    calls: Iterable[tuple[float, Flat]],
    output_tokens: int,
    *,
    model: str = "claude-haiku-4-5",
    first_write: str | None = None,
) -> float:
    """The oracle's bill in US dollars (``first_write``: see :func:`oracle_input_units`)."""
    info = lookup_model(model)
    if info is None:
        raise ValueError(f"unknown model {model!r}")
    return (
        oracle_input_units(calls, first_write=first_write) * info.input_usd_per_mtok
        + output_tokens * info.output_usd_per_mtok
    ) / 1_000_000
