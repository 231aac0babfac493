"""The prompt-cache planner: where to put ``cache_control`` breakpoints, and with which TTL.

The API caches a prefix (tools → system → messages) up to a block marked with
``cache_control``; a later request that repeats the prefix reads it at 0.1× instead of 1×. A
write costs 1.25× (5-minute TTL) or 2× (1-hour TTL), and a prefix shorter than the model's
minimum (4,096 tokens on Haiku 4.5) is silently not cached. At most 4 markers per request; a
breakpoint finds earlier cache entries only within 20 blocks before it; 1-hour markers must
come before 5-minute ones (reference §1).

For each request the planner:

1. flattens it into blocks in prefix order and estimates each block's tokens (a fast local
   estimate; an exact ``count_tokens`` can confirm prefixes near the minimum, asked once per
   distinct prefix);
2. finds the candidate boundaries — end of tools, end of system, end of large stable context
   (a long document or retrieved text), the conversation tail, and a *bridge* at the last
   prefix it knows is cached when that lies beyond the 20-block lookback of the tail;
3. prices each candidate with what it has observed (policy ``adaptive``): for a shared prefix,
   the chance it comes back within 5 minutes and within the hour — from its own returns if it
   has a history (a Poisson rate, uncertain after few returns), else from how often prefixes
   new to its *slot* came back (its kind and position after the prefix before it: "the
   document opening the user turn of this application"), else from its kind — and for the
   tail how often conversations continue and how soon. A marker is placed
   only where its expected reads pay for its write premium, with the TTL (5 m or 1 h) that
   saves the most per sighting — a 1-hour write pays off when reuses come more than 5
   minutes apart but within the hour — and none at all where a prefix is not expected to
   recur;
4. keeps every marker the caller placed, never exceeds 4 in total, keeps 1 h before 5 m,
   never marks an empty or thinking block, and changes nothing else in the request.

Policies: ``adaptive`` (default), ``always`` (every stable boundary that clears the minimum,
5 m), ``off`` (the request is sent as it is).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import xxhash

from ._catalog import CACHE_WRITE_1H_MULTIPLIER, CACHE_WRITE_5M_MULTIPLIER, lookup_model
from ._clock import Clock, SystemClock
from ._exceptions import ConfigurationError
from ._wire import iter_cache_markers

__all__ = ["Breakpoint", "Plan", "Planner", "PlannerPolicy", "PrefixStats", "SharedPrefixStats"]

logger = logging.getLogger("haikucache")

PlannerPolicy = Literal["adaptive", "always", "off"]
POLICIES: tuple[str, ...] = ("adaptive", "always", "off")

MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
READ_SAVING = 0.9  # a read costs 0.1× instead of 1×
WRITE_PREMIUM = {"5m": CACHE_WRITE_5M_MULTIPLIER - 1, "1h": CACHE_WRITE_1H_MULTIPLIER - 1}
# A model the catalogue does not know gets the smallest minimum any model has.
UNKNOWN_MODEL_MIN_TOKENS = 1024
# Hidden system prompt the API adds when tools are present (Haiku 4.5, tool_choice auto).
TOOL_USE_OVERHEAD_TOKENS = 346
# Blocks at least this long are "large stable context" (a document, retrieved passages).
LARGE_BLOCK_TOKENS = 1024
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})
_MARKABLE = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "search_result", "container_upload"}
)

# Estimator: characters per token. English prose runs ~4, JSON ~3; leaning low (more tokens)
# errs toward placing a marker, and a marker below the minimum costs nothing but its slot.
_CHARS_PER_TOKEN_TEXT = 3.4
_CHARS_PER_TOKEN_JSON = 3.0
_IMAGE_TOKENS = 1600  # the API's cap for an image of ~1.15 megapixels
_PDF_BYTES_PER_PAGE = 60_000
_PDF_TOKENS_PER_PAGE = 1500
# The estimate is off by up to ±30 % on real text. With an exact counter, prefixes estimated
# between 0.7× and 1.5× the minimum are confirmed; without one, a prefix estimated at 0.85×
# or more is marked (a marker that turns out short costs nothing but its slot).
_CONFIRM_BELOW, _CONFIRM_ABOVE, _MARK_FROM = 0.7, 1.5, 0.85

_TEXT_KEYS = frozenset({"type", "text", "cache_control"})

_dumps = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


# --------------------------------------------------------------------------- blocks


@dataclass
class _Block:
    path: tuple[Any, ...]  # ("tools", i) | ("system", i) | ("messages", m, b)
    section: str  # "tools" | "system" | "messages"
    markable: bool
    tokens: int
    cum: int = 0  # estimated tokens of the prefix up to and including this block
    fp: int = 0  # fingerprint of that prefix
    marker: Mapping[str, Any] | None = None  # the caller's own cache_control
    role: str | None = None
    large: bool = False

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.path)


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN_TEXT)


def _block_tokens(block: Mapping[str, Any], raw: bytes) -> int:
    kind = block.get("type")
    if kind == "text":
        return _text_tokens(str(block.get("text", "")))
    if kind == "image":
        return _IMAGE_TOKENS
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "text":
            return _text_tokens(str(source.get("data", "")))
        if source.get("type") == "base64":
            size = len(str(source.get("data", ""))) * 3 / 4
            return max(1, math.ceil(size / _PDF_BYTES_PER_PAGE)) * _PDF_TOKENS_PER_PAGE
        if source.get("type") != "content":
            return _PDF_TOKENS_PER_PAGE
    if kind in ("thinking", "redacted_thinking"):
        return _text_tokens(str(block.get("thinking") or block.get("data") or ""))
    # Tool calls and results, nested documents, anything else: its JSON, which is what the
    # model reads (tool results are mostly text, so JSON's ratio slightly overestimates).
    return math.ceil(len(raw) / _CHARS_PER_TOKEN_JSON)


def _block_bytes(block: Any) -> bytes:
    # The prefix fingerprint ignores markers, as the API's prefix hash does.
    if type(block) is str:
        return block.encode("utf-8", "surrogatepass")
    if isinstance(block, Mapping):
        if (
            block.get("type") == "text"
            and type(block.get("text")) is str
            and block.keys() <= _TEXT_KEYS
        ):
            return str(block["text"]).encode("utf-8", "surrogatepass")
        if "cache_control" in block:
            block = {k: v for k, v in block.items() if k != "cache_control"}
    return _dumps(block).encode("utf-8", "surrogatepass")


def _flatten(body: Mapping[str, Any], model_key: str) -> tuple[list[_Block], list[bytes]]:
    """The request's blocks in prefix order, each with its token estimate, the cumulative
    estimate and the fingerprint of the prefix it ends; and each block's bytes."""
    blocks: list[_Block] = []
    raws: list[bytes] = []

    def add(block: _Block, raw: bytes) -> None:
        blocks.append(block)
        raws.append(raw)

    tools = body.get("tools") or []
    for i, tool in enumerate(tools):
        raw = _block_bytes(tool)
        tokens = math.ceil(len(raw) / _CHARS_PER_TOKEN_JSON)
        if i == 0:
            tokens += TOOL_USE_OVERHEAD_TOKENS
        add(_Block(("tools", i), "tools", True, tokens, marker=tool.get("cache_control")), raw)
    system = body.get("system")
    if isinstance(system, str):
        add(
            _Block(("system", 0), "system", bool(system), 3 + _text_tokens(system)),
            _block_bytes(system),
        )
    elif isinstance(system, list):
        for i, block in enumerate(system):
            raw = _block_bytes(block)
            add(
                _Block(
                    ("system", i),
                    "system",
                    bool(block.get("text")),
                    _block_tokens(block, raw) + (3 if i == 0 else 0),
                    marker=block.get("cache_control"),
                ),
                raw,
            )
    for m, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        role = message.get("role")
        # Where a turn starts matters to the prompt: the role goes into its first block.
        start = b"\x01" + str(role).encode()
        if isinstance(content, str):
            add(
                _Block(
                    ("messages", m, 0),
                    "messages",
                    bool(content),
                    4 + _text_tokens(content),
                    role=role,
                ),
                start + content.encode("utf-8", "surrogatepass"),
            )
            continue
        for b, block in enumerate(content or []):
            kind = block.get("type")
            raw = _block_bytes(block)
            markable = kind in _MARKABLE and not (kind == "text" and not block.get("text"))
            add(
                _Block(
                    ("messages", m, b),
                    "messages",
                    markable and kind not in _UNMARKABLE,
                    _block_tokens(block, raw) + (4 if b == 0 else 0),
                    marker=block.get("cache_control"),
                    role=role,
                ),
                start + raw if b == 0 else raw,
            )
    h = xxhash.xxh3_64_intdigest(model_key.encode())
    cum = 0
    for block, raw in zip(blocks, raws, strict=True):
        h = xxhash.xxh3_64_intdigest(raw, seed=h)
        cum += block.tokens
        block.cum = cum
        block.fp = h
    return blocks, raws


# --------------------------------------------------------------------------- stats


@dataclass
class _Record:
    kind: str
    count: int = 0
    last: float = 0.0
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=32))


_SLOT_LOG = 256  # sightings remembered per slot


class _Sightings:
    """The recent sightings in one slot, each with the gap to its prefix's next sighting.

    :meth:`rates` estimates the share of sightings whose prefix comes back within 5 minutes
    and within an hour — what a fixed marker with that TTL would read (every other sighting
    it would write). A sighting whose prefix has not come back yet counts for as long as it
    has waited (a censored observation, Kaplan–Meier), so "asked about 20 minutes ago and not
    since" is evidence from the start, and the first hour does not have to pass before a 1 h
    TTL can be chosen; past the longest wait seen, the rate of return seen so far continues
    the estimate.
    """

    __slots__ = ("_log", "_open")

    def __init__(self) -> None:
        self._log: deque[list[Any]] = deque(maxlen=_SLOT_LOG)  # [when, next gap or None, fp]
        self._open: dict[int, list[Any]] = {}

    def add(self, fp: int, now: float) -> None:
        previous = self._open.get(fp)
        if previous is not None and previous[1] is None:
            previous[1] = max(0.0, now - previous[0])
        if len(self._log) == self._log.maxlen:
            oldest = self._log[0]
            if self._open.get(oldest[2]) is oldest:
                del self._open[oldest[2]]
        entry = [now, None, fp, previous is None]
        self._log.append(entry)
        self._open[fp] = entry

    def rates(
        self, prior: Mapping[str, float], weight: float, now: float, *, first: bool = False
    ) -> dict[str, float]:
        """Shares back within 5 m and 1 h, shrunk toward ``prior`` (worth ``weight``); with
        ``first``, of first sightings only (how often a prefix new to the slot comes back).

        The 1-hour share is estimated in two steps: back within 5 minutes, then back within
        the hour *given* not back within 5 minutes. The second is learned only from
        sightings that have waited past 5 minutes, so a young history full of quick returns
        (the first minutes of a popular document) leaves returns after 5 minutes to the
        prior rather than to an extrapolation of the quick ones.
        """
        log = [e for e in self._log if e[3]] if first else self._log
        n = len(log)
        if n == 0:
            return dict(prior)
        # At equal durations a return comes before a censored wait (the Kaplan–Meier rule).
        events = sorted(
            (e[1], False) if e[1] is not None else (max(0.0, now - e[0]), True) for e in log
        )
        horizon = events[-1][0]
        survive, at_risk = 1.0, n
        at: dict[str, float] = {}
        for duration, censored in events:
            for ttl, seconds in TTL_SECONDS.items():
                if ttl not in at and duration > seconds:
                    at[ttl] = survive
            if not censored:
                survive *= 1.0 - 1.0 / at_risk
            at_risk -= 1
        five, hour = TTL_SECONDS["5m"], TTL_SECONDS["1h"]
        if "5m" in at:
            s5 = at["5m"]
        elif horizon <= 0.0 or survive <= 0.0:
            s5 = survive
        else:  # nobody has waited 5 minutes yet: continue at the rate seen so far
            s5 = survive ** (five / horizon)
        q5 = (n * (1.0 - s5) + weight * prior["5m"]) / (n + weight)
        # Back within the hour, given not within 5 minutes: from the sightings that waited.
        later_prior = (prior["1h"] - prior["5m"]) / max(1e-9, 1.0 - prior["5m"])
        later_prior = min(1.0, max(0.0, later_prior))
        waited = sum(1 for duration, _ in events if duration > five)
        if waited == 0 or s5 <= 0.0:
            later_seen = later_prior
        elif "1h" in at:
            later_seen = 1.0 - at["1h"] / s5
        else:  # nobody has waited an hour: continue the rate of return seen after 5 minutes
            later_seen = 1.0 - (survive / s5) ** ((hour - five) / (horizon - five))
        later = (waited * later_seen + weight * later_prior) / (waited + weight)
        return {"5m": q5, "1h": q5 + (1.0 - q5) * later}


@dataclass
class _Family:
    """What has been seen of one kind of boundary across many prefixes."""

    prior_recur: float
    prior_gap: float  # seconds, the typical reuse gap before anything is known
    # Share of sightings repeated within each TTL, before anything is known (shared kinds).
    prior_hits: Mapping[str, float] = field(default_factory=lambda: {"5m": 0.5, "1h": 0.8})
    recurred: int = 0  # prefixes (or tails) that were used again
    lapsed: int = 0  # prefixes (or tails) not used again within the longest TTL
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    sightings: _Sightings = field(default_factory=_Sightings)

    def recur_rate(self) -> float:
        # Only settled cases count: a prefix seen a moment ago has not had its chance to
        # recur yet (many conversations in flight at once would otherwise look like none
        # continues). Smoothed toward the prior, worth 3 observations.
        return (self.recurred + 3 * self.prior_recur) / (self.recurred + self.lapsed + 3)


# Beyond the longest TTL nothing can be read again, so a prefix unused for that long has
# settled as "did not recur". A conversation not continued within 10 minutes is taken as
# ended: tails are read within seconds in agent loops and within minutes in chats.
_HORIZON = TTL_SECONDS["1h"]
_TAIL_HORIZON = 600.0
_TAIL_FIRST_HORIZON = 180.0


class PrefixStats:
    """How often, and how far apart, prefixes recur. Thread-safe; bounded in memory.

    One instance can be shared by several planners (and engines) in a process so they learn
    together.
    """

    def __init__(self, *, max_prefixes: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._max = max_prefixes
        self._prefixes: OrderedDict[int, _Record] = OrderedDict()
        self._tails: OrderedDict[int, tuple[float, str]] = OrderedDict()
        # Tails settled as ended, kept a while: a conversation that continues after all was
        # counted as ended too early, and the count is corrected.
        self._ended: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._alive: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._first_seen: deque[tuple[float, int]] = deque()
        self._slots: OrderedDict[int, _Sightings] = OrderedDict()
        self._families = {
            # Applications keep one tool set, but a tool set differs from call to call in
            # others (tools picked per request): the first sighting gets a 5 m entry.
            "tools": _Family(prior_recur=0.8, prior_gap=60.0, prior_hits={"5m": 0.4, "1h": 0.6}),
            "system": _Family(prior_recur=0.8, prior_gap=60.0),
            # A long document may well be asked about once, and rarely again within 5
            # minutes. One that has not come back within 5 minutes is taken to come back
            # within the hour half the time until sightings say otherwise: while nothing is
            # known, a 1-hour write risks 0.75× the prefix (if 5 minutes would have done) and
            # a 5-minute one 1.25× (written again when it lapses, if an hour was needed); the
            # smaller risk is taken.
            "context": _Family(prior_recur=0.5, prior_gap=600.0, prior_hits={"5m": 0.2, "1h": 0.6}),
            # A conversation's first request, and a request that continues one.
            "tail_first": _Family(prior_recur=0.5, prior_gap=5.0),
            "tail": _Family(prior_recur=0.8, prior_gap=5.0),
        }

    def _settle(self, now: float) -> None:
        # First sightings settle, in arrival order, once the longest TTL has passed; the
        # records themselves stay (their gaps are the history that chooses the TTL).
        cutoff = now - _HORIZON
        pending = self._first_seen
        while pending and pending[0][0] < cutoff:
            _, fp = pending.popleft()
            record = self._prefixes.get(fp)
            if record is not None and record.count == 1:
                self._families[record.kind].lapsed += 1
        tails = self._tails
        while tails:
            fp, (when, kind) = next(iter(tails.items()))
            if when >= now - self._tail_horizon(kind):
                break
            del tails[fp]
            self._families[kind].lapsed += 1
            self._ended[fp] = (when, kind)
        ended = self._ended
        while ended:
            fp, (when, _) = next(iter(ended.items()))
            if when >= now - _HORIZON and len(ended) <= self._max:
                break
            del ended[fp]

    def _tail_horizon(self, kind: str) -> float:
        # A conversation is taken as ended once it has been quiet for three times the longest
        # recent continuation (at least a minute, at most ten): agent loops continue within
        # seconds, chats within minutes, and one-shot requests should be learned as such fast.
        gaps = self._families[kind].gaps
        if not gaps:
            return _TAIL_FIRST_HORIZON
        return min(_TAIL_HORIZON, max(60.0, 3.0 * max(gaps)))

    # -- observations -----------------------------------------------------------------

    def sight(self, kind: str, fp: int, now: float, slot: int | None = None) -> _Record:
        """Record that a shared prefix (tools, system, context) was seen at ``now``, in the
        slot ``slot`` (a position of an application's prompt, see :meth:`hit_rates`)."""
        with self._lock:
            self._settle(now)
            record = self._prefixes.get(fp)
            family = self._families[kind]
            family.sightings.add(fp, now)
            if slot is not None:
                seen = self._slots.get(slot)
                if seen is None:
                    seen = self._slots[slot] = _Sightings()
                    if len(self._slots) > self._max:
                        self._slots.popitem(last=False)
                else:
                    self._slots.move_to_end(slot)
                seen.add(fp, now)
            if record is None:
                record = self._prefixes[fp] = _Record(kind)
                self._first_seen.append((now, fp))
                if len(self._prefixes) > self._max:
                    self._prefixes.popitem(last=False)
            else:
                self._prefixes.move_to_end(fp)
                gap = max(0.0, now - record.last)
                record.gaps.append(gap)
                family.gaps.append(gap)
                if record.count == 1:
                    family.recurred += 1
            record.count += 1
            record.last = now
            return record

    def find_extended_tail(self, fps: Sequence[int], now: float) -> int | None:
        """If an earlier request's tail is a prefix of this one, learn from it; its index."""
        with self._lock:
            self._settle(now)
            for index in range(len(fps) - 1, -1, -1):
                if self._extend(fps[index], now):
                    return index
            return None

    def _extend(self, fp: int, now: float) -> bool:
        seen = self._tails.pop(fp, None)
        if seen is None:
            seen = self._ended.pop(fp, None)
            if seen is None:
                return False
            self._families[seen[1]].lapsed -= 1
        when, kind = seen
        family = self._families[kind]
        family.recurred += 1
        family.gaps.append(max(0.0, now - when))
        return True

    def add_tail(self, fp: int, now: float, kind: str = "tail") -> None:
        """Remember a request's tail, to learn whether (and how soon) a later one extends it."""
        with self._lock:
            self._tails[fp] = (now, kind)
            self._tails.move_to_end(fp)
            if len(self._tails) > self._max:
                self._tails.popitem(last=False)

    def mark_alive(self, fp: int, until: float, ttl: str) -> None:
        with self._lock:
            self._alive[fp] = (until, ttl)
            self._alive.move_to_end(fp)
            if len(self._alive) > self._max:
                self._alive.popitem(last=False)

    def sync(self) -> None:
        """Take in what other processes observed (nothing to do for one process)."""

    def flush(self) -> None:
        """Hand this process's new observations to the others (nothing to do here)."""

    # -- questions --------------------------------------------------------------------

    def alive(self, fp: int, now: float) -> str | None:
        """The TTL of a live cache entry for this prefix, as far as this process knows."""
        with self._lock:
            entry = self._alive.get(fp)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._alive[fp]
                return None
            return entry[1]

    def last_alive(self, fps: Sequence[int], before: int, now: float) -> int | None:
        """The highest index below ``before`` whose prefix has a live cache entry."""
        with self._lock:
            alive = self._alive
            for index in range(before - 1, -1, -1):
                entry = alive.get(fps[index])
                if entry is not None and entry[0] > now:
                    return index
            return None

    def record(self, fp: int) -> _Record | None:
        with self._lock:
            return self._prefixes.get(fp)

    def hit_rates(
        self, kind: str, slot: int | None, now: float, *, first: bool = False
    ) -> dict[str, float]:
        """The share of sightings whose prefix comes back within 5 m and within 1 h.

        A *slot* is one position of one application's prompt — "the system block after these
        tools", "the document that opens the first user turn" — whatever prefix fills it. A
        new document in a slot where documents come back within the hour is written with a
        1 h TTL from its first sighting; one in a slot of one-off documents is not written
        at all. A slot with little history leans on its kind, and a kind on its prior.
        With ``first``, the share among first sightings only (what a prefix new to the slot
        can expect), leaning on the share among all sightings.
        """
        with self._lock:
            family = self._families[kind]
            rates = family.sightings.rates(family.prior_hits, _PSEUDO, now)
            seen = self._slots.get(slot) if slot is not None else None
            if seen is not None:
                rates = seen.rates(rates, _PSEUDO, now)
            if first:
                rates = family.sightings.rates(rates, _PSEUDO, now, first=True)
                if seen is not None:
                    rates = seen.rates(rates, _PSEUDO, now, first=True)
            return rates

    def family(self, kind: str) -> tuple[float, list[float], float]:
        """(recurrence rate, recent gaps, prior gap) of a kind of boundary."""
        with self._lock:
            family = self._families[kind]
            return family.recur_rate(), list(family.gaps), family.prior_gap


class LogStore(Protocol):
    """A store that keeps shared append-only logs (``MemoryStore``, ``DiskStore``,
    ``RedisStore``)."""

    def append_log(self, name: str, records: Sequence[bytes]) -> None: ...

    def read_log(self, name: str, cursor: str | None) -> tuple[list[bytes], str]: ...


class SharedPrefixStats(PrefixStats):
    """:class:`PrefixStats` shared by every planner that points at the same store: the
    processes of one machine through a ``DiskStore``, many machines through a ``RedisStore``.

    Every observation (a prefix sighted, a conversation tail left or continued, an entry
    known to be cached) is applied here and appended to the store's log ``planner:<name>``;
    each plan first replays what the other processes appended since, so eight workers behind
    a load balancer learn each prefix and slot as one planner would, instead of each paying
    to learn it. A store that fails is skipped: planning goes on with what is known here.

    Args:
        store: where the log lives.
        name: the log's name; planners that should learn together share it.
        max_prefixes: as for :class:`PrefixStats`.
    """

    def __init__(self, store: LogStore, *, name: str = "default", max_prefixes: int = 100_000):
        super().__init__(max_prefixes=max_prefixes)
        self._store = store
        self._log = f"planner:{name}"
        self._origin = uuid.uuid4().hex[:16]
        self._outbox: list[bytes] = []
        self._cursor: str | None = None
        self._sync_lock = threading.Lock()

    def _publish(self, *event: Any) -> None:
        record = json.dumps([self._origin, *event], separators=(",", ":")).encode()
        with self._sync_lock:
            self._outbox.append(record)

    def sight(self, kind: str, fp: int, now: float, slot: int | None = None) -> _Record:
        record = super().sight(kind, fp, now, slot)
        self._publish("s", kind, fp, now, slot)
        return record

    def find_extended_tail(self, fps: Sequence[int], now: float) -> int | None:
        index = super().find_extended_tail(fps, now)
        if index is not None:
            self._publish("x", fps[index], now)
        return index

    def add_tail(self, fp: int, now: float, kind: str = "tail") -> None:
        super().add_tail(fp, now, kind)
        self._publish("t", fp, now, kind)

    def mark_alive(self, fp: int, until: float, ttl: str) -> None:
        super().mark_alive(fp, until, ttl)
        self._publish("a", fp, until, ttl)

    def flush(self) -> None:
        with self._sync_lock:
            out, self._outbox = self._outbox, []
        if out:
            self._store.append_log(self._log, out)

    def sync(self) -> None:
        self.flush()
        with self._sync_lock:
            records, self._cursor = self._store.read_log(self._log, self._cursor)
        for raw in records:
            try:
                origin, op, *args = json.loads(raw)
                if origin == self._origin:
                    continue
                if op == "s":
                    PrefixStats.sight(self, args[0], int(args[1]), float(args[2]), args[3])
                elif op == "x":
                    with self._lock:
                        self._settle(float(args[1]))
                        self._extend(int(args[0]), float(args[1]))
                elif op == "t":
                    PrefixStats.add_tail(self, int(args[0]), float(args[1]), str(args[2]))
                elif op == "a":
                    PrefixStats.mark_alive(self, int(args[0]), float(args[1]), str(args[2]))
            except (ValueError, TypeError, IndexError, KeyError):
                logger.debug("haikucache: skipped a malformed planner record %r", raw[:80])


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Breakpoint:
    """One ``cache_control`` marker of a plan.

    Attributes:
        path: where it sits, e.g. ``"system.0"``, ``"tools.13"``, ``"messages.4.content.1"``.
        kind: ``"tools"``, ``"system"``, ``"context"``, ``"bridge"``, ``"tail"``, or
            ``"caller"`` for a marker the caller placed (``"auto"`` for a top-level one).
        ttl: ``"5m"`` or ``"1h"``.
        prefix_tokens: estimated tokens of the prefix up to and including the block.
        reason: why it is there.
        added: ``False`` for the caller's own markers.
    """

    path: str
    kind: str
    ttl: str
    prefix_tokens: int
    reason: str
    added: bool = True


@dataclass
class Plan:
    """The result of planning one request.

    Attributes:
        body: the request to send (a new dict; the caller's is never modified).
        breakpoints: every marker in prefix order, the caller's and the planner's.
        skipped: candidate boundaries left unmarked, with the reason.
        policy: the policy that made the plan.
        model: the request's model.
        min_tokens: the model's minimum cacheable prefix.
        estimated_tokens: the estimated input tokens of the whole request.
    """

    body: dict[str, Any]
    breakpoints: list[Breakpoint]
    skipped: list[tuple[str, str]]
    policy: str
    model: str
    min_tokens: int
    estimated_tokens: int
    _fps: dict[str, int] = field(default_factory=dict, repr=False)
    _tail_fp: int | None = field(default=None, repr=False)

    @property
    def fingerprints(self) -> Mapping[str, int]:
        """The fingerprint of the prefix up to each breakpoint, by its path."""
        return self._fps

    @property
    def added(self) -> list[Breakpoint]:
        """The markers the planner added."""
        return [b for b in self.breakpoints if b.added]

    def expected_cost_multiplier(self) -> float:
        """A rough upper bound of this request's input cost relative to no caching (1.0)."""
        if not self.estimated_tokens or not self.breakpoints:
            return 1.0
        last = max(b.prefix_tokens for b in self.breakpoints)
        ttls = {b.ttl for b in self.breakpoints}
        write = CACHE_WRITE_1H_MULTIPLIER if ttls == {"1h"} else CACHE_WRITE_5M_MULTIPLIER
        covered = min(last, self.estimated_tokens) / self.estimated_tokens
        return covered * write + (1 - covered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "model": self.model,
            "min_tokens": self.min_tokens,
            "estimated_tokens": self.estimated_tokens,
            "breakpoints": [b.__dict__.copy() for b in self.breakpoints],
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
        }

    def explain(self) -> str:
        """A human explanation: which breakpoints, why, the estimates."""
        lines = [
            f"policy {self.policy}, model {self.model}: ~{self.estimated_tokens:,} input tokens "
            f"(estimate); prefixes under {self.min_tokens:,} tokens are not cached",
        ]
        if not self.breakpoints:
            lines.append("no breakpoints")
        for b in self.breakpoints:
            who = "added" if b.added else "kept"
            lines.append(
                f"  {who:5} {b.ttl:>2} at {b.path:<24} prefix ~{b.prefix_tokens:>7,} tokens  "
                f"[{b.kind}] {b.reason}"
            )
        for where, reason in self.skipped:
            lines.append(f"  skip     at {where:<24} {reason}")
        return "\n".join(lines)


@dataclass
class _Candidate:
    block: _Block
    kind: str
    value: float = 0.0
    ttl: str | None = None
    reason: str = ""
    live: bool = False  # the prefix is already cached: marking it reads, it writes nothing
    eligible: bool = False  # long enough to be cached at all
    slot: int | None = None  # the position it fills in the application's prompt
    covered: bool = False  # read through a live entry deeper in the request


_PSEUDO = 3.0  # weight of the prior, in observations
_MIN_GAIN = 0.15  # expected saving per token a paid cache write must promise


def _p_within(gaps: Sequence[float], seconds: float, prior: float) -> float:
    """P(next reuse comes within ``seconds``): the observed share, shrunk toward ``prior``.

    A handful of gaps is noisy, and a wrong 1-hour write costs four times a wrong 5-minute
    one, so small samples lean on what is known of the whole family.
    """
    hits = sum(1 for g in gaps if g <= seconds)
    return (hits + _PSEUDO * prior) / (len(gaps) + _PSEUDO)


def _slot(blocks: list[_Block], c: _Candidate) -> int:
    """The slot a candidate fills: its kind and position (section, index, role) after the
    prefix before it — "the system block after these tools", "the document opening the
    first user turn after this system prompt" — whatever text fills it today."""
    i = blocks.index(c.block)
    before = blocks[i - 1].fp if i else 0
    shape = f"{c.kind}:{c.block.section}:{c.block.path[1:]}:{c.block.role}"
    return xxhash.xxh3_64_intdigest(shape.encode(), seed=before)


class Planner:
    """Places prompt-cache breakpoints; see the module documentation.

    Args:
        policy: ``"adaptive"`` (default), ``"always"`` or ``"off"``.
        clock: time source for recurrence statistics.
        stats: observations to learn from; share one :class:`PrefixStats` between planners
            to learn together.
        count_tokens: optional exact counter, called with a ``count_tokens`` body for a
            prefix whose estimate is near the model minimum; its answer is cached per prefix.
    """

    def __init__(
        self,
        policy: PlannerPolicy | str = "adaptive",
        *,
        clock: Clock | None = None,
        stats: PrefixStats | None = None,
        count_tokens: Callable[[dict[str, Any]], int] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigurationError(
                f"planner policy must be one of {', '.join(POLICIES)}, got {policy!r}"
            )
        self.policy = str(policy)
        self.clock: Clock = clock or SystemClock()
        self.stats = stats or PrefixStats()
        self._count_tokens = count_tokens
        self._exact: OrderedDict[int, int] = OrderedDict()
        self._exact_lock = threading.Lock()
        self._buster = _BustDetector()

    def __repr__(self) -> str:
        return f"Planner(policy={self.policy!r})"

    # -- planning ---------------------------------------------------------------------

    def plan(self, body: Mapping[str, Any], *, now: float | None = None) -> Plan:
        """Plan the breakpoints of a (validated) Messages request."""
        model = str(body.get("model", ""))
        info = lookup_model(model)
        min_tokens = info.min_cacheable_tokens if info else UNKNOWN_MODEL_MIN_TOKENS
        if self.policy == "off":
            return Plan(
                dict(body),
                self._caller_breakpoints(list(iter_cache_markers(body)), []),
                [],
                "off",
                model,
                min_tokens,
                0,
            )
        now = self.clock.now() if now is None else now
        blocks, raws = _flatten(body, info.name if info else model)
        if not blocks:
            return Plan(dict(body), [], [], self.policy, model, min_tokens, 0)
        self.stats.sync()
        self._buster.see(blocks, raws)
        total = blocks[-1].cum

        caller = [b for b in blocks if b.marker is not None]
        existing = list(iter_cache_markers(body))
        # Markers inside a tool_result's last block are lifted to the block (count them).
        lifted = sum(1 for path, _ in existing if path.count(".content.") == 2)
        auto = "cache_control" in body
        slots = MAX_BREAKPOINTS - len(caller) - lifted - (1 if auto else 0)
        skipped: list[tuple[str, str]] = []
        tail = _last_markable(blocks)
        fps = [b.fp for b in blocks]
        extended = self.stats.find_extended_tail(fps, now)
        if extended is not None and tail is not None and extended >= blocks.index(tail):
            extended = None  # the same request again is not a continuation of itself
        continuing = extended is not None or any(b.role == "assistant" for b in blocks)
        tail_kind = "tail" if continuing else "tail_first"
        candidates = self._candidates(blocks, auto, extended, tail_kind, now, skipped)
        # A shared prefix before a live entry is read through it (a conversation continued
        # while its prefix is cached), whether or not the conversation's last tail is still
        # remembered: it is not being reused on its own, and its statistics describe only
        # independent arrivals.
        live = self.stats.last_alive(fps, len(blocks), now)
        shared = [c for c in candidates if c.kind in ("tools", "system", "context")]
        for c in shared:
            c.slot = _slot(blocks, c)
            c.covered = live is not None and live > blocks.index(c.block)
        # Price from the tail backwards: a marker whose tokens a later marker writes anyway
        # costs no write premium of its own — at 1 h if any later marker writes 1 h (the API
        # bills everything up to the last 1 h breakpoint at the 1 h rate, and a 5 m marker
        # may not come before it).
        later_write: str | None = None
        for c in sorted(candidates, key=lambda c: c.block.cum, reverse=True):
            self._price(c, body, min_tokens, now, skipped, later_write)
            if c.ttl is not None and not c.live:
                later_write = "1h" if "1h" in (c.ttl, later_write) else "5m"
        chosen = self._choose(candidates, slots, caller, skipped)
        # Learn from this request only after pricing it, so it does not count as its own
        # evidence; and only from prefixes long enough to be cached at all — how often a
        # short prefix recurs says nothing about the ones that matter.
        for c in shared:
            if c.eligible and not c.covered:
                self.stats.sight(c.kind, c.block.fp, now, c.slot)
        if tail is not None and tail.cum >= min_tokens * _MARK_FROM:
            self.stats.add_tail(tail.fp, now, tail_kind)
        self.stats.flush()

        plan_body = self._apply(body, chosen)
        plan = Plan(
            plan_body,
            self._caller_breakpoints(existing, blocks),
            skipped,
            self.policy,
            model,
            min_tokens,
            total,
        )
        plan.breakpoints.extend(
            Breakpoint(
                _public_path(c.block.path),
                "tail" if c.kind == "tail_first" else c.kind,
                c.ttl or "5m",
                c.block.cum,
                c.reason,
            )
            for c in chosen
        )
        plan.breakpoints.sort(key=lambda b: _order_key(b.path))
        plan._fps = {_public_path(c.block.path): c.block.fp for c in chosen}
        for b in caller:
            plan._fps[_public_path(b.path)] = b.fp
        plan._tail_fp = tail.fp if tail is not None else None
        return plan

    def _candidates(
        self,
        blocks: list[_Block],
        auto: bool,
        extended: int | None,
        tail_kind: str,
        now: float,
        skipped: list[tuple[str, str]],
    ) -> list[_Candidate]:
        stats = self.stats
        tail = _last_markable(blocks)
        out: list[_Candidate] = []
        last_tool = max(
            (b for b in blocks if b.section == "tools"), key=lambda b: b.cum, default=None
        )
        last_system = max(
            (b for b in blocks if b.section == "system" and b.markable),
            key=lambda b: b.cum,
            default=None,
        )
        if last_tool is not None and last_tool is not tail:
            out.append(_Candidate(last_tool, "tools"))
        if last_system is not None and last_system is not tail:
            # A stable system prompt followed by per-call system text (a date, retrieved
            # context: LlamaIndex's chat engines send both as system blocks) is cached only if
            # the large block before the last one is a candidate of its own.
            stable = next(
                (
                    b
                    for b in blocks
                    if b.section == "system"
                    and b.markable
                    and b is not last_system
                    and b.tokens >= LARGE_BLOCK_TOKENS
                ),
                None,
            )
            if stable is not None:
                out.append(_Candidate(stable, "system"))
            # A system block after the first is as likely per-call context (a document, a
            # date, retrieved passages) as more of the prompt: it starts with the
            # expectations of context and learns its own.
            first = next(b for b in blocks if b.section == "system")
            out.append(_Candidate(last_system, "system" if last_system is first else "context"))
        # The last large block before the tail: a document or retrieved context.
        context = None
        for b in blocks:
            if (
                b.section == "messages"
                and b.markable
                and b is not tail
                and b.tokens >= LARGE_BLOCK_TOKENS
            ):
                context = b
        if context is not None:
            out.append(_Candidate(context, "context"))

        if tail is not None:
            if auto:
                skipped.append(
                    (_public_path(tail.path), "the top-level cache_control covers the tail")
                )
            else:
                out.append(_Candidate(tail, tail_kind))
        # Bridge: the last prefix known to be cached, when the tail cannot see it (lookback).
        if tail is not None:
            tail_index = blocks.index(tail)
            known = extended
            if known is None:
                known = stats.last_alive([b.fp for b in blocks], tail_index, now)
            if (
                known is not None
                and tail_index - known > LOOKBACK_BLOCKS - 1
                and blocks[known].markable
            ) and not any(c.block is blocks[known] for c in out):
                out.append(_Candidate(blocks[known], "bridge"))
        return out

    def _price(
        self,
        c: _Candidate,
        body: Mapping[str, Any],
        min_tokens: int,
        now: float,
        skipped: list[tuple[str, str]],
        later_write: str | None = None,
    ) -> None:
        """Decide a candidate's TTL (or no marker) from what reuse has been observed.

        A marker's gain per token is ``expected reads × 0.9 − write premium``. A shared
        prefix (tools, system, context) that keeps recurring is read again and again while
        its entry lives (each read refreshes it): with a chance ``q`` that the next use falls
        within the TTL, ``q / (1 − q)`` reads. A tail is read once, by the next turn, with the
        chance that the conversation continues within the TTL. The premium is 0.25 (5 m) or
        1.0 (1 h) — less when a later marker in the same request writes these tokens anyway.
        """
        where = _public_path(c.block.path)
        if not self._clears_minimum(c.block, min_tokens, body):
            c.reason = f"prefix ~{c.block.cum:,} tokens is under the {min_tokens:,}-token minimum"
            skipped.append((where, c.reason))
            return
        c.eligible = True
        live = self.stats.alive(c.block.fp, now)
        if c.kind == "bridge" or live is not None:
            c.ttl = live or "5m"
            c.live = True
            c.value = c.block.cum * READ_SAVING
            c.reason = "reads a prefix already cached" + (
                " beyond the 20-block lookback of the tail" if c.kind == "bridge" else ""
            )
            return
        if self.policy == "always":
            c.ttl, c.value, c.reason = "5m", float(c.block.cum), "stable boundary (policy always)"
            return
        seen = 0
        single_use = c.kind in ("tail", "tail_first")
        if single_use:
            p, fam_gaps, prior_gap = self.stats.family(c.kind)

            def within(seconds: float) -> float:
                exponential = 1 - math.exp(-seconds / max(prior_gap, 1e-9))
                return _p_within(fam_gaps, seconds, exponential)

        else:
            # The gaps between this prefix's sightings (this arrival's too, unless it only
            # continues a cached conversation).
            record = self.stats.record(c.block.fp)
            p = 1.0
            gaps: list[float] = []
            if record is not None:
                seen = record.count
                gaps = list(record.gaps)
                if not c.covered:
                    gaps.append(max(0.0, now - record.last))

            # A prefix with a history of its own comes back at its own rate, uncertain after
            # a few returns: a Poisson rate with a Gamma prior (shape 1, its mean set by how
            # often a prefix new to this slot comes back within the hour), updated by the
            # returns seen and the time they took. A new prefix has only its slot: the share
            # of *first* sightings there that came back (a popular document's many quick
            # returns say little about a document seen for the first time).
            fresh = self.stats.hit_rates(c.kind, c.slot, now, first=True)
            p_new = min(0.999, max(1e-3, fresh["1h"]))
            prior_time = TTL_SECONDS["1h"] * (1.0 - p_new) / p_new

            def within(seconds: float) -> float:
                if not gaps:
                    return fresh["5m" if seconds <= TTL_SECONDS["5m"] else "1h"]
                exposure = prior_time + sum(gaps)
                return 1.0 - (exposure / (exposure + seconds)) ** (1 + len(gaps))

        premium = dict(WRITE_PREMIUM)
        if later_write == "5m":
            premium = {"5m": 0.0, "1h": WRITE_PREMIUM["1h"] - WRITE_PREMIUM["5m"]}
        elif later_write == "1h":
            premium = {"1h": 0.0}  # a 5m marker may not come before a 1h one
        best: tuple[float, float, str | None] = (0.0, 0.0, None)
        for option, cost in premium.items():
            q = p * within(TTL_SECONDS[option])
            # A shared prefix is read at every sighting its entry survives to (each read
            # refreshes it): q / (1 − q) reads per write. A tail is read once, by the turn
            # that continues it.
            reads = q if single_use else min(q / max(1e-9, 1 - q), 50.0)
            gain = reads * READ_SAVING - cost
            # TTLs are compared by what a marker with each saves per sighting (a longer one
            # writes less often), the way a fixed placement would be judged afterwards.
            per_sighting = gain if single_use else gain * (1 - min(q, 1 - 1 / 51))
            # A write that only breaks even in expectation loses as often as it wins: demand
            # a margin before paying a premium (a free marker needs none).
            if per_sighting > best[0] + 1e-12 and (cost == 0.0 or gain >= _MIN_GAIN):
                best = (per_sighting, gain, option)
        _, gain, ttl = best
        if ttl is None:
            c.reason = (
                "not expected to recur soon enough to pay for a cache write"
                if single_use is False
                else "conversations here rarely continue soon enough to pay for a cache write"
            )
            skipped.append((where, c.reason))
            return
        c.ttl = ttl
        c.value = max(gain, 1e-6) * c.block.cum
        reads = (gain + premium[ttl]) / READ_SAVING
        if single_use:
            c.reason = (
                f"conversation tail: conversations continue ~{p:.0%} of the time, "
                f"in time for a {ttl} entry"
            )
        else:
            first = "first sighting" if not seen else f"seen {seen}× before"
            free = " (written anyway by a later marker)" if premium[ttl] == 0.0 else ""
            c.reason = f"{first}; a {ttl} entry is expected to be read ~{reads:.1f}×{free}"

    def _clears_minimum(self, block: _Block, min_tokens: int, body: Mapping[str, Any]) -> bool:
        estimate = block.cum
        if self._count_tokens is None:
            return estimate >= min_tokens * _MARK_FROM
        if estimate >= min_tokens * _CONFIRM_ABOVE:
            return True
        if estimate < min_tokens * _CONFIRM_BELOW:
            return False
        with self._exact_lock:
            exact = self._exact.get(block.fp)
        if exact is None:
            # Counted outside the lock (it is an HTTP call); two threads may both ask once.
            exact = self._count_tokens(_prefix_body(body, block.path))
            with self._exact_lock:
                self._exact[block.fp] = exact
                if len(self._exact) > 10_000:
                    self._exact.popitem(last=False)
        return exact >= min_tokens

    def _choose(
        self,
        candidates: list[_Candidate],
        slots: int,
        caller: list[_Block],
        skipped: list[tuple[str, str]],
    ) -> list[_Candidate]:
        ready = []
        for c in candidates:
            if c.ttl is None:
                continue
            if c.block.marker is not None:
                # The caller's own marker is already there: it is never overwritten, moved
                # or downgraded (a 1h marker replaced by a 5m one was billed as a 5m write).
                skipped.append((_public_path(c.block.path), "the caller's own marker is here"))
                continue
            ready.append(c)
        ready.sort(key=lambda c: c.value, reverse=True)
        chosen = ready[: max(0, slots)]
        for c in ready[max(0, slots) :]:
            skipped.append((_public_path(c.block.path), "no breakpoint slot left (4 at most)"))
        chosen.sort(key=lambda c: c.block.cum)
        # A marker that adds nothing after a chosen one at the same prefix length is dropped.
        unique: list[_Candidate] = []
        for c in chosen:
            if unique and unique[-1].block is c.block:
                continue
            unique.append(c)
        # 1 h before 5 m, counting the caller's markers; a 5 m marker may not precede a
        # caller's 1 h marker at all.
        caller_ttls = sorted((b.cum, str((b.marker or {}).get("ttl", "5m"))) for b in caller)
        out: list[_Candidate] = []
        for c in unique:
            later_1h = any(cum > c.block.cum and ttl == "1h" for cum, ttl in caller_ttls)
            if later_1h and c.ttl != "1h":
                skipped.append((_public_path(c.block.path), "a caller's 1h marker comes later"))
                continue
            out.append(c)
        seen_5m = False
        merged = sorted(
            [(c.block.cum, c) for c in out] + [(cum, ttl) for cum, ttl in caller_ttls],
            key=lambda item: item[0],
        )
        for _, item in merged:
            ttl = item.ttl if isinstance(item, _Candidate) else item
            if ttl == "1h" and seen_5m and isinstance(item, _Candidate):
                item.ttl = "5m"
                item.reason += " (5m: a 5m marker comes earlier)"
            seen_5m = seen_5m or (item.ttl if isinstance(item, _Candidate) else item) == "5m"
        return out

    @staticmethod
    def _caller_breakpoints(
        existing: list[tuple[str, Any]], blocks: list[_Block]
    ) -> list[Breakpoint]:
        if not existing:
            return []
        cums = {_public_path(b.path): b.cum for b in blocks}
        out = []
        for path, marker in existing:
            where = path.removesuffix(".cache_control")
            ttl = str(marker.get("ttl", "5m")) if isinstance(marker, Mapping) else "5m"
            kind = "auto" if where == "cache_control" else "caller"
            out.append(
                Breakpoint(
                    where, kind, ttl, cums.get(where, 0), "placed by the caller", added=False
                )
            )
        return out

    @staticmethod
    def _apply(body: Mapping[str, Any], chosen: list[_Candidate]) -> dict[str, Any]:
        out = dict(body)
        if not chosen:
            return out
        copied: set[str] = set()
        for c in chosen:
            marker: dict[str, Any] = {"type": "ephemeral"}
            if c.ttl == "1h":
                marker["ttl"] = "1h"
            path = c.block.path
            section = path[0]
            if section not in copied:
                out[section] = (
                    copy.copy(out[section]) if not isinstance(out[section], str) else out[section]
                )
                copied.add(section)
            if section == "tools":
                out["tools"][path[1]] = {**out["tools"][path[1]], "cache_control": marker}
            elif section == "system":
                system = out["system"]
                if isinstance(system, str):
                    out["system"] = [{"type": "text", "text": system, "cache_control": marker}]
                else:
                    system[path[1]] = {**system[path[1]], "cache_control": marker}
            else:
                messages = out["messages"]
                message = dict(messages[path[1]])
                content = message["content"]
                if isinstance(content, str):
                    message["content"] = [
                        {"type": "text", "text": content, "cache_control": marker}
                    ]
                else:
                    content = list(content)
                    content[path[2]] = {**content[path[2]], "cache_control": marker}
                    message["content"] = content
                messages[path[1]] = message
        return out

    # -- feedback ---------------------------------------------------------------------

    def observe(
        self, plan: Plan, usage: Mapping[str, Any] | None, *, now: float | None = None
    ) -> None:
        """Learn from the API's answer to a planned request (its ``usage``)."""
        if self.policy == "off" or not usage:
            return
        now = self.clock.now() if now is None else now
        read = int(usage.get("cache_read_input_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        if read + written == 0:
            return  # nothing was cached: too short, or the API did not cache it
        for b in plan.breakpoints:
            fp = plan._fps.get(b.path)
            if fp is not None and b.prefix_tokens >= plan.min_tokens * _CONFIRM_BELOW:
                self.stats.mark_alive(fp, now + TTL_SECONDS[b.ttl], b.ttl)
        self.stats.flush()
        self._buster.feedback(plan, read, written)


def _last_markable(blocks: list[_Block]) -> _Block | None:
    for block in reversed(blocks):
        if block.markable:
            return block
    return None


def _public_path(path: tuple[Any, ...]) -> str:
    if path[0] == "messages":
        return f"messages.{path[1]}.content.{path[2]}"
    return f"{path[0]}.{path[1]}"


def _order_key(path: str) -> tuple[int, ...]:
    parts = path.split(".")
    section = {"tools": 0, "system": 1, "messages": 2, "cache_control": 3}[parts[0]]
    return (section, *(int(p) for p in parts[1:] if p.isdigit()))


def _prefix_body(body: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """A ``count_tokens`` body holding the prefix of ``body`` up to and including ``path``."""
    out: dict[str, Any] = {"model": body["model"]}
    section = path[0]
    if body.get("tools"):
        out["tools"] = list(body["tools"][: path[1] + 1] if section == "tools" else body["tools"])
    if section != "tools" and body.get("system"):
        system = body["system"]
        out["system"] = (
            system if isinstance(system, str) or section != "system" else system[: path[1] + 1]
        )
    if section == "messages":
        messages = [dict(m) for m in body["messages"][: path[1] + 1]]
        last = messages[-1]
        if isinstance(last.get("content"), list):
            last["content"] = last["content"][: path[2] + 1]
        out["messages"] = messages
    else:
        # count_tokens needs a message; a one-token one adds a few tokens of overhead.
        out["messages"] = [{"role": "user", "content": "."}]
    return out


class _BustDetector:
    """Notices a prefix that keeps changing just before where it would be read.

    A timestamp in the system prompt, tools sent in a different order, or any text that
    changes before a breakpoint makes every request write its prefix again (1.25×) instead of
    reading it (0.1×). Each request is compared with the recent request it shares the longest
    prefix with — its own conversation's previous turn when conversations interleave — and
    diverges from it at a block. After three requests among the last 16 that diverge at the
    same block, with a similar (not unrelated) block there and a cache write in the answer,
    it logs one warning naming the block and the first differing character. In the messages, the
    blocks after the change must be those of the earlier request (the same conversation sent
    again with an earlier turn rewritten); a new conversation whose opening turn merely
    resembles another's is not a rewrite.
    """

    _REPEATS = 3
    _RECENT = 16  # requests compared with, most recent first

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[tuple[list[_Block], list[bytes]]] = deque(maxlen=self._RECENT)
        self._pending: tuple[str, str] | None = None
        self._seq = 0  # requests seen
        self._rewrites: dict[str, deque[int]] = {}  # path -> recent requests rewriting it
        self._warned: set[str] = set()

    def see(self, blocks: list[_Block], raws: list[bytes]) -> None:
        with self._lock:
            recent = list(self._recent)
            self._recent.appendleft((blocks, raws))
            self._pending = None
            self._seq += 1
            diverging: list[tuple[int, list[_Block], list[bytes]]] = []
            for prev_blocks, prev_raws in recent:
                at = next(
                    (
                        i
                        for i, (a, b) in enumerate(zip(prev_blocks, blocks, strict=False))
                        if a.fp != b.fp
                    ),
                    None,
                )
                if at is None:
                    return  # it repeats or extends a recent request: nothing rewritten
                diverging.append((at, prev_blocks, prev_raws))
            if not diverging:
                return
            d = max(at for at, _, _ in diverging)
            if d == len(blocks) - 1:
                # A new last block is a new question, not a changing prefix: nothing cached
                # after it is lost.
                return
            for at, prev_blocks, prev_raws in diverging:  # most recent first
                if at == d:
                    pending = self._rewrite(prev_blocks, prev_raws, blocks, raws, d)
                    if pending is not None:
                        self._pending = pending
                        return

    @staticmethod
    def _rewrite(
        prev_blocks: list[_Block],
        prev_raws: list[bytes],
        blocks: list[_Block],
        raws: list[bytes],
        d: int,
    ) -> tuple[str, str] | None:
        """Where and how block ``d`` was rewritten, if the request is the earlier one sent
        again with that block changed; ``None`` if it is another request."""
        if prev_blocks[d].path != blocks[d].path:
            return None
        if blocks[d].section == "messages":
            after = min(len(prev_raws), len(raws))
            if d + 1 >= after or prev_raws[d + 1 : after] != raws[d + 1 : after]:
                return None  # another conversation, not this one rewritten
        # Only now, on a divergence, are the readable paths worth building.
        paths = [_public_path(b.path) for b in blocks]
        prev_paths = [_public_path(b.path) for b in prev_blocks]
        old, new = prev_raws[d], raws[d]
        if paths[d].startswith("tools."):
            tools_old = [
                r for p, r in zip(prev_paths, prev_raws, strict=True) if p.startswith("tools.")
            ]
            tools_new = [r for p, r in zip(paths, raws, strict=True) if p.startswith("tools.")]
            if sorted(tools_old) == sorted(tools_new):
                return (paths[d], "the same tools arrive in a different order")
        head = _common_prefix(old, new)
        tail = _common_prefix(old[::-1], new[::-1])
        if head + tail < 0.8 * max(len(old), len(new)):
            return None  # a different prompt, not a changing one
        snippet_old = old[head : head + 24].decode("utf-8", "replace")
        snippet_new = new[head : head + 24].decode("utf-8", "replace")
        return (
            paths[d],
            f"first difference at character {head}: {snippet_old!r} became {snippet_new!r}",
        )

    def feedback(self, plan: Plan, read: int, written: int) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                return
            path, detail = pending
            if written == 0:
                self._rewrites.pop(path, None)  # rewritten, but nothing was lost
                return
            # Rewrites of one block among the last requests (other conversations may come
            # in between).
            if len(self._rewrites) > 1_000:
                self._rewrites.clear()
            seqs = self._rewrites.setdefault(path, deque(maxlen=self._REPEATS))
            seqs.append(self._seq)
            if (
                len(seqs) < self._REPEATS
                or seqs[-1] - seqs[0] >= self._RECENT
                or path in self._warned
            ):
                return
            self._warned.add(path)
        logger.warning(
            "haikucache: prompt cache busting at %s: it changes between requests that repeat "
            "everything before it (%s), so everything after it is written again at 1.25× "
            "instead of read at 0.1×. "
            "Keep it stable, or move what changes after the last cached block.",
            path,
            detail,
        )


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
