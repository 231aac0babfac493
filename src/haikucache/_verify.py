"""Verification: the last check between a semantic candidate and serving its answer.

Embeddings score a question and its opposite as near-duplicates: "Is the pool open on
Sundays?" / "… closed …" (0.96 with all-MiniLM-L6-v2), "from savings to current" / "from
current to savings" (0.99), "orders under £50" / "over £50", "7am" / "7pm". A candidate above
the similarity threshold that passes the guards is therefore *verified* before it is served:
a verifier reads the two questions and either lets the answer through (``None``) or names why
not (a short reason, e.g. ``"antonym:open"``).

``Verifier``          the protocol: ``verify(query, candidate) -> str | None``.
``LexicalVerifier``   the default: offline contrast checks, a few microseconds per pair.
``HaikuJudge``        optional: asks Claude Haiku whether one question's answer answers the
                      other (a 1-5 token reply), through a haikucache client, so its cost is
                      in the ledger like any call.
``verify_all``        runs a chain of verifiers, first reason wins.

What :class:`LexicalVerifier` rejects (each check is symmetric, and biased to reject: a
rejected paraphrase costs one upstream call, a wrong answer costs trust):

* ``antonym`` — a word of one pole of a contrast group only in one question and a word of
  another pole only in the other (open/closed, include/exclude, buy/sell, withdraw/deposit,
  weekday/weekend, Monday/Tuesday, morning/evening, summer/winter, kg/lb, hours/days, Word/PDF,
  full/part, domestic/international, adult/child …; :data:`CONTRAST_GROUPS`).
* ``prefix`` — a word in one question is a word of the other with a negating prefix
  (un-, non-, in-, im-, ir-, il-, dis-, de-) or ``-less`` for ``-ful``/the bare word
  (safe/unsafe, refundable/non-refundable, harmful/harmless, wired/wireless).
* ``polarity`` — a class of words that flips the question is in one question only: negation
  (not, no, never, n't, without, non-), avoidance (avoid, stop, prevent, quit), am/pm, the
  weekend/weekday distinction (:data:`POLARITY_CLASSES`).
* ``direction`` — the same things in opposite roles: "from X to Y" / "from Y to X", "X to Y"
  / "Y to X", "convert A into B", "X than Y", "X before Y" / "X after Y" (the roles, not the
  word order: "to Y from X" is "from X to Y"). "X vs Y" and "X or Y" are symmetric and not
  checked: the answer to "Python vs Java" answers "Java vs Python".

Numbers, "not" and capitalised names are the guards' job (:func:`haikucache.check_guards`);
the verifier runs after them.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CONTRAST_GROUPS",
    "JUDGE_SYSTEM",
    "POLARITY_CLASSES",
    "HaikuJudge",
    "LexicalVerifier",
    "Verifier",
    "parse_verdict",
    "verify_all",
]

logger = logging.getLogger("haikucache")


@runtime_checkable
class Verifier(Protocol):
    """Decides whether the answer stored for ``candidate`` may be served for ``query``.

    Returns ``None`` to let it through, or a short reason to refuse (it is logged and
    counted). A verifier must be safe to call from several threads at once.
    """

    def verify(self, query: str, candidate: str) -> str | None:
        """``None`` (serve) or why not."""
        ...


def verify_all(verifiers: Iterable[Verifier], query: str, candidate: str) -> str | None:
    """The first reason any of ``verifiers`` gives, in order (``None``: all agree)."""
    for verifier in verifiers:
        reason = verifier.verify(query, candidate)
        if reason is not None:
            return reason
    return None


# --------------------------------------------------------------------------- the lexicon
# Each group lists its poles; a pole is the words (after normalisation: lower case, a plural
# "s" dropped) that mean one side. Words may sit in several groups. Written for this project.

CONTRAST_GROUPS: Mapping[str, tuple[str, ...]] = {
    # states and actions
    "open": ("open opened opening reopen", "closed close closing shut shutting"),
    "on_off": ("on", "off"),
    "in_out": (
        "inside inbound incoming indoor indoors check_in",
        "outside outbound outgoing outdoor outdoors check_out",
    ),
    "enable": (
        "enable enabled enabling activate activated activating turn_on",
        "disable disabled disabling deactivate deactivated deactivating turn_off",
    ),
    "start": (
        "start started starting begin beginning resume",
        "stop stopped stopping end ending finish pause",
    ),
    "add": (
        "add added adding insert create",
        "remove removed removing delete deleted deleting drop",
    ),
    "include": (
        "include included including inclusive incl cover covered",
        "exclude excluded excluding exclusive except excl",
    ),
    "allow": (
        "allow allowed allowing permit permitted permission ok okay",
        "ban banned forbid forbidden prohibit prohibited block blocked",
    ),
    "accept": (
        "accept accepted approve approved approval grant granted",
        "reject rejected decline declined deny denied refuse refused refusal",
    ),
    "increase": (
        "increase increased increasing raise raised rise rising grow growing gain boost higher",
        "decrease decreased decreasing lower lowered reduce reduced reducing cut drop fall falling lose",
    ),
    "up_down": ("up upward upwards upstairs", "down downward downwards downstairs"),
    "grade": ("upgrade upgrading upgraded", "downgrade downgrading downgraded"),
    "case": ("uppercase upper capital", "lowercase lower small"),
    "sort": ("ascending asc", "descending desc"),
    "pack": ("compress compressed compression zip", "decompress decompressed unzip extract"),
    "crypt": ("encrypt encrypted encryption encode", "decrypt decrypted decryption decode"),
    "visibility": ("public", "private"),
    "transfer": ("upload uploading uploaded", "download downloading downloaded"),
    "trade": ("import importing imported", "export exporting exported"),
    "send": ("send sending sent", "receive receiving received"),
    "give": ("give giving gave given", "receive receiving received"),
    "money_flow": (
        "deposit deposited depositing pay_in",
        "withdraw withdrawal withdrawing withdrew",
    ),
    "ledger": ("credit credited", "debit debited"),
    "market": ("buy buying bought purchase purchasing", "sell selling sold"),
    "loan": ("lend lending lent", "borrow borrowing borrowed"),
    "travel_leg": (
        "arrive arrival arrivals arriving arrived inbound",
        "depart departure departures departing departed outbound",
    ),
    "door": ("entry enter entering entrance", "exit exiting"),
    "login": ("login signin log_in sign_in", "logout signout log_out sign_out"),
    "lock": ("lock locked locking", "unlock unlocked unlocking"),
    "freeze": ("freeze frozen freezing", "unfreeze unfrozen thaw"),
    "subscribe": ("subscribe subscribed", "unsubscribe unsubscribed"),
    "install": ("install installed installing", "uninstall uninstalled uninstalling"),
    "connect": ("connect connected connecting", "disconnect disconnected disconnecting"),
    "return_exchange": ("return returning returned", "exchange exchanging exchanged swap"),
    # qualities
    "safe": (
        "safe safely safer safest harmless secure",
        "unsafe dangerous danger harmful risky hazardous insecure toxic",
    ),
    "good": (
        "good better best healthy beneficial benefit pro advantage",
        "bad worse worst unhealthy harmful con disadvantage drawback",
    ),
    "truth": ("true correct right accurate", "false incorrect wrong inaccurate"),
    "outcome": ("pass passed success successful succeed win won", "fail failed failure lose lost"),
    "heat": ("hot warm warmer heat heated heating", "cold colder cool cooler chilled unheated"),
    "speed": ("fast faster fastest quick quicker quickest quickly", "slow slower slowest slowly"),
    "effort": ("easy easier easiest simple", "hard harder hardest difficult"),
    "firmness": ("soft softer softest", "hard harder hardest firm"),
    "timing": ("early earlier earliest", "late later latest"),
    "order": ("first", "last final"),
    "age": (
        "new newer newest brand_new",
        "old older oldest used refurbished second_hand secondhand",
    ),
    "size": ("big bigger biggest large larger largest huge", "small smaller smallest little tiny"),
    "length": ("long longer longest", "short shorter shortest"),
    "weight": ("heavy heavier heaviest", "light lighter lightest lightweight"),
    "level": ("high higher highest", "low lower lowest"),
    "wealth": ("rich wealthy", "poor"),
    "strength": ("strong stronger strongest", "weak weaker weakest"),
    "moisture": ("wet damp", "dry"),
    "fullness": ("full", "empty"),
    "price": (
        "cheap cheaper cheapest inexpensive affordable budget",
        "expensive pricey pricier costly dear",
    ),
    "charge": ("free complimentary", "paid charged chargeable fee"),
    "rate": ("fixed", "variable floating tracker"),
    "validity": ("valid", "void invalid expired"),
    "need": ("mandatory compulsory required obligatory", "optional voluntary"),
    "busy": ("busy crowded", "quiet empty"),
    "sign": ("positive", "negative"),
    "agree": ("agree agreed like love", "disagree disagreed dislike hate"),
    "legality": ("legal lawful", "illegal unlawful"),
    "gender": (
        "male men man boy boys husband father son he him his",
        "female women woman girl girls wife mother daughter she her hers",
    ),
    "compass": ("north northern", "south southern", "east eastern", "west western"),
    "side": ("left", "right"),
    "proximity": ("near nearby nearest closest walking_distance", "far distant farthest furthest"),
    "punctuality": ("delayed delay late", "on_time punctual"),
    "vertical": ("top", "bottom"),
    "position": ("front", "back rear"),
    "with": ("with", "without"),
    "avoid": (
        "take taking eat eating drink drinking keep keeping continue allow start",
        "avoid avoiding stop stopping quit quitting prevent refrain skip skipping",
    ),
    "comparison": (
        "under below less fewer lower smaller beneath lesser younger shorter",
        "over above more greater higher larger bigger exceed exceeding exceeds older longer",
    ),
    "extreme": ("min minimum least lowest smallest", "max maximum most highest largest biggest"),
    "quantity": ("all every each entire whole", "some several few part partial"),
    "modality": ("must", "may can could might"),
    "sum": ("gross", "net"),
    "ends": ("client frontend front_end", "server backend back_end"),
    "io": ("input read reading", "output write writing"),
    "git": ("push pushing pushed", "pull pulling pulled"),
    "sync": ("synchronous sync blocking", "asynchronous async"),
    "online": ("online internet", "offline in_store instore in_person"),
    # scope
    "scope": (
        "before prior pre",
        "during within while inside",
        "after post following beyond outside",
    ),
    "time_share": ("full", "part partial"),
    "reach": ("domestic national local inland", "international overseas abroad foreign"),
    # the two sides of a relationship: what is true of one is rarely true of the other
    "lease": ("landlord owner lessor", "tenant renter lessee"),
    "sale": ("buyer purchaser", "seller vendor"),
    "employment": ("employer", "employee worker"),
    "lending": ("lender creditor", "borrower debtor"),
    "mail": ("sender", "recipient receiver addressee"),
    "hosting": ("host", "guest visitor"),
    "care": ("doctor physician nurse", "patient"),
    "family": ("parent parents", "child children kid kids"),
    "school": ("teacher professor instructor", "student pupil"),
    "insurance": ("insurer", "insured policyholder"),
    "person": (
        "adult grown",
        "child children kid kids infant baby toddler minor junior teen teenager",
    ),
    "senior": ("senior elderly pensioner retired", "student junior"),
    "party": (
        "individual personal single solo",
        "family joint group business commercial corporate company",
    ),
    "ticket": ("single one_way oneway", "return round_trip roundtrip"),
    "network": ("in_network", "out_of_network"),
    "account": ("current checking", "savings saving", "joint", "business"),
    "cabin": ("economy coach standard", "business", "first", "premium"),
    "seat": ("aisle", "window"),
    "transport": (
        "train rail railway",
        "bus coach",
        "plane flight fly flying",
        "ferry boat ship",
        "car drive driving taxi cab uber",
        "bike bicycle cycling",
        "walk walking foot",
    ),
    # times and dates
    "ampm": ("time_am morning", "time_pm afternoon evening night tonight"),
    "daypart": ("morning", "afternoon", "evening", "night overnight midnight tonight"),
    "daynight": ("day daytime", "night nighttime overnight"),
    "week": ("weekday workday weekdays", "weekend weekends"),
    "weekday": (
        "monday mon",
        "tuesday tue tues",
        "wednesday wed",
        "thursday thu thur thurs",
        "friday fri",
        "saturday sat",
        "sunday sun",
    ),
    "month": (
        "january jan",
        "february feb",
        "march mar",
        "april apr",
        "may",
        "june jun",
        "july jul",
        "august aug",
        "september sep sept",
        "october oct",
        "november nov",
        "december dec",
    ),
    "season": ("spring", "summer", "autumn fall", "winter"),
    "relday": ("today", "tomorrow", "yesterday", "tonight"),
    "tense": ("past previous last ago", "next future upcoming coming"),
    "frequency": (
        "hourly",
        "daily everyday nightly",
        "weekly",
        "fortnightly biweekly",
        "monthly",
        "quarterly",
        "annual annually yearly",
    ),
    "habit": (
        "always often frequently usually constantly",
        "sometimes occasionally",
        "rarely seldom",
        "never",
    ),
    # units
    "duration": (
        "second sec",
        "minute",
        "hour hr hrs",
        "day",
        "week wk",
        "month",
        "year yr",
    ),
    "mass": ("mg milligram", "g gram", "kg kgs kilo kilogram", "lb lbs pound", "oz ounce", "stone"),
    "distance": (
        "mm millimetre millimeter",
        "cm centimetre centimeter",
        "m metre meter",
        "km kilometre kilometer",
        "mile",
        "ft foot feet",
        "inch",
        "yard",
    ),
    "temperature": ("celsius centigrade", "fahrenheit"),
    "data": ("kb kilobyte", "mb megabyte", "gb gigabyte", "tb terabyte"),
    "volume": ("ml millilitre milliliter", "l litre liter", "cup", "pint", "gallon"),
    "currency": (
        "£ pound gbp sterling",
        "$ dollar usd buck",
        "€ euro eur",
        "yen jpy",
        "rupee inr",
        "% percent percentage",
    ),
    # things that are never interchangeable when swapped
    "file_format": (
        "word docx doc",
        "pdf",
        "excel xlsx xls spreadsheet",
        "csv",
        "json",
        "xml",
        "yaml yml",
        "html",
        "png",
        "jpg jpeg",
        "gif",
        "mp3",
        "mp4",
        "txt",
    ),
    "language": (
        "python",
        "java",
        "javascript js",
        "typescript",
        "rust",
        "ruby",
        "php",
        "kotlin",
        "swift",
        "scala",
        "perl",
        "golang",
        "cpp",
    ),
    "database": (
        "mysql",
        "postgres postgresql",
        "sqlite",
        "mongodb mongo",
        "redis",
        "oracle",
        "mssql",
    ),
    "platform": ("windows", "mac macos osx", "linux ubuntu", "ios iphone ipad", "android"),
    "drug": (
        "ibuprofen advil nurofen",
        "paracetamol acetaminophen tylenol",
        "aspirin",
        "naproxen",
        "codeine",
        "antibiotic",
    ),
    "colour": (
        "red",
        "green",
        "blue",
        "black",
        "white",
        "yellow",
        "orange",
        "purple",
        "pink",
        "grey gray",
        "brown",
    ),
    "question": ("when", "where", "who whom", "why", "how"),
}


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: Classes of words that change what a question asks whenever only one question has one.
POLARITY_CLASSES: Mapping[str, frozenset[str]] = {
    "negation": _wordset(
        "not no never none nobody nothing neither nor nowhere without cannot non lack lacking"
    ),
    "avoid": _wordset(
        "avoid avoiding avoided prevent preventing prevented stop stopping quit quitting refrain"
    ),
    "ampm": frozenset({"time_am", "time_pm"}),
    "week": _wordset("weekday weekend workday"),
}

_NEGATING_PREFIXES = ("non", "un", "in", "im", "ir", "il", "dis", "de")
# Words that start like a negating prefix on a word but do not negate it.
_NOT_PREFIXED = _wordset(
    """inform discover uniform implant impress display dispatch income input intake install
    invest discount indent deliver design detail delay define depress dispose discharge disease
    insight inside into invoice impact impair imply import improve increase index indeed inland
    invent involve unite until union unison universe dismiss distance distill disclose
    department deposit depart derive describe desk depend demand decline decide declare
    deduct default defend degree delete demo dense dental deny deserve desert destroy device
    devote interest internal internet interview intern invite inside instant instead insure
    intend intense impose important imprint impound illustrate illness dispute distinct
    district dissolve disk disc dish disco discuss display debit debt debut decade deck
    decor decay deal dear death debate incline inclined indeed inner innocent inquire insect
    insert insist inspect inspire instal institute instruct intact intake integrate intel
    intent intervene intro invade inverse unit unique universal"""
)

_MARKER_KIND = {
    "to": "to",
    "into": "to",
    "towards": "to",
    "toward": "to",
    "onto": "to",
    "than": "than",
    "before": "before",
    "after": "before",
}
_DIRECTION_MARKERS = frozenset(_MARKER_KIND)
_SPAN_STOPS = _wordset(
    """to into towards toward onto from than before after for at in on with by via and or vs
    versus of while when where if because then , ? . : ; ! ( ) how what which who why is are
    was were be been being do does did has have had can could should would will shall may
    might must"""
)
_FILLER = _wordset(
    """a an the my your our their his her its this that these those some any me i you we it
    they them us one ones very really just also please best way easiest quickest"""
)

_TOKEN_RE = re.compile(r"[a-z_]+|\d+(?:[.,]\d+)*|[£$€%]|[?,.:;!()]")
_CONTRACTIONS = (
    (re.compile(r"\bcan['’]t\b"), "can not"),
    (re.compile(r"\bwon['’]t\b"), "will not"),
    (re.compile(r"\bshan['’]t\b"), "shall not"),
    (re.compile(r"n['’]t\b"), " not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (
        re.compile(
            r"\b(is|are|was|were|do|does|did|ca|wo|should|could|would|has|have|had|must|need)nt\b"
        ),
        r"\1 not",
    ),
    (re.compile(r"'(?:s|re|ve|ll|d|m)\b"), ""),
)
# Multi-word terms read as one token before splitting on non-letters.
_COMPOUNDS = (
    (re.compile(r"\bout[- ]of[- ]network\b"), "out_of_network"),
    (re.compile(r"\bin[- ]network\b"), "in_network"),
    (re.compile(r"\bone[- ]way\b"), "one_way"),
    (re.compile(r"\bround[- ]trip\b"), "round_trip"),
    (re.compile(r"\bsecond[- ]hand\b"), "second_hand"),
    (re.compile(r"\bbrand[- ]new\b"), "brand_new"),
    (re.compile(r"\bturn(?:ed|ing|s)? on\b"), "turn_on"),
    (re.compile(r"\bturn(?:ed|ing|s)? off\b"), "turn_off"),
    (re.compile(r"\blog(?:ged|ging|s)? ?in\b"), "log_in"),
    (re.compile(r"\blog(?:ged|ging|s)? ?out\b"), "log_out"),
    (re.compile(r"\bsign(?:ed|ing|s)? ?in\b"), "sign_in"),
    (re.compile(r"\bsign(?:ed|ing|s)? ?out\b"), "sign_out"),
    (re.compile(r"\bpay(?:ing|s)? in\b"), "pay_in"),
    (re.compile(r"\bfront[- ]end\b"), "front_end"),
    (re.compile(r"\bback[- ]end\b"), "back_end"),
    (re.compile(r"\bin[- ]person\b"), "in_person"),
    (re.compile(r"(\d)\s*a\.?m\b\.?"), r"\1 time_am"),
    (re.compile(r"(\d)\s*p\.?m\b\.?"), r"\1 time_pm"),
    (re.compile(r"\bc\+\+"), "cpp"),
    (re.compile(r"\bhow come\b"), "why"),
    (re.compile(r"\bon[- ]time\b"), "on_time"),
    (re.compile(r"\bcheck(?:ed|ing|s)?[- ]in\b"), "check_in"),
    (re.compile(r"\bcheck(?:ed|ing|s)?[- ]out\b"), "check_out"),
    (re.compile(r"\bin[- ]store\b"), "in_store"),
    (re.compile(r"\bnon[- ](?=[a-z])"), "non"),
    # "is used to", "used for": a verb, not second-hand.
    (re.compile(r"\bused(?= (?:to|for|by|in|as|with|on|when)\b)"), "employed"),
    (re.compile(r"\bwalking distance\b"), "walking_distance"),
)
_TOKEN_GROUP_SPLIT = re.compile(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)")


def _norm(word: str) -> str:
    """Lower case, a plural ``s`` dropped (``weekends`` → ``weekend``; not ``ss``/``us``/``is``)."""
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")):
        if word.endswith("ies") and len(word) > 4:
            return word[:-3] + "y"
        return word[:-1]
    return word


def _index_groups() -> dict[str, list[tuple[str, int]]]:
    index: dict[str, list[tuple[str, int]]] = {}
    for group, poles in CONTRAST_GROUPS.items():
        for pole, words in enumerate(poles):
            for word in words.split():
                entry = (group, pole)
                for form in {word, _norm(word)}:
                    if entry not in index.setdefault(form, []):
                        index[form].append(entry)
    return index


_GROUP_INDEX = _index_groups()
_POLARITY_INDEX = {w: name for name, words in POLARITY_CLASSES.items() for w in words}


@dataclass(frozen=True)
class _Reading:
    """What the checks need of one question, computed once per text."""

    tokens: tuple[str, ...]
    words: frozenset[str]
    polarity: frozenset[str]
    relations: frozenset[tuple[str, str, str]]
    roles: Mapping[str, str]
    unclear: frozenset[str]


def _tokens(text: str) -> tuple[str, ...]:
    low = text.lower().replace("’", "'")
    for pattern, repl in _CONTRACTIONS:
        low = pattern.sub(repl, low)
    for pattern, repl in _COMPOUNDS:
        low = pattern.sub(repl, low)
    out: list[str] = []
    for raw in _TOKEN_RE.findall(low):
        for piece in _TOKEN_GROUP_SPLIT.split(raw):
            out.append(piece if "_" in piece else _norm(piece))
    return tuple(out)


def _span(tokens: Sequence[str], start: int, step: int, limit: int = 3) -> list[str]:
    """Up to ``limit`` content words from ``start`` going ``step`` (+1 or -1), stopping at a
    boundary word or punctuation."""
    out: list[str] = []
    i = start
    while 0 <= i < len(tokens) and len(out) < limit:
        token = tokens[i]
        if token in _SPAN_STOPS:
            break
        if token not in _FILLER and not token[0].isdigit():
            out.append(token)
        i += step
    return out


_THAN_SKIP = _wordset("in at on for with by to from during")


def _relations(tokens: Sequence[str]) -> frozenset[tuple[str, str, str]]:
    """``(kind, source, target)``: what goes from/to, compares than, or comes before what.

    Only relations of one kind are compared ("to sleep more" is not "more than sleep")."""
    pairs: set[tuple[str, str, str]] = set()
    sources = [_span(tokens, i + 1, 1) for i, t in enumerate(tokens) if t == "from"]
    has_from = any(sources)
    for i, token in enumerate(tokens):
        if token not in _DIRECTION_MARKERS:
            continue
        start = i + 1
        # "warmer in Rome than in Paris": the compared thing follows the preposition.
        if token == "than" and start < len(tokens) and tokens[start] in _THAN_SKIP:
            start += 1
        after = _span(tokens, start, 1)
        if not after:
            continue
        if token in ("to", "into", "towards", "toward", "onto") and has_from:
            left = [w for span in sources for w in span]
        else:
            left = _span(tokens, i - 1, -1)
        if token == "after":  # "X after Y": Y comes first
            left, after = after, left
        # A word on both sides of a marker ("account" in "from savings account to current
        # account") says nothing about the direction.
        shared = set(left) & set(after)
        kind = _MARKER_KIND[token]
        pairs.update(
            (kind, x, y) for x in left for y in after if x not in shared and y not in shared
        )
    return frozenset(pairs)


#: Prepositions whose object plays a role: "to Boston" is where, "from the US" whence.
_ROLE_MARKERS = _wordset("to into towards toward onto from in at via than")


_ROLE_KIND = {
    "to": "to",
    "into": "to",
    "towards": "to",
    "toward": "to",
    "onto": "to",
    "from": "from",
}


def _roles(tokens: Sequence[str]) -> tuple[dict[str, str], frozenset[str]]:
    """The marker each content word follows ("to" for "boston" in "train to Boston"), and
    the words that follow several ("account" in "from my savings account to my current
    account"), which say nothing. A word that follows none is in neither."""
    seen: dict[str, set[str]] = {}
    for i, token in enumerate(tokens):
        if token in _ROLE_MARKERS:
            for word in _span(tokens, i + 1, 1):
                seen.setdefault(word, set()).add(token)
    roles = {word: next(iter(markers)) for word, markers in seen.items() if len(markers) == 1}
    return roles, frozenset(seen.keys() - roles.keys())


def _swapped(q: _Reading, c: _Reading) -> tuple[str, str] | None:
    """Two words both questions share that trade roles ("from Canada to the US" / "from the
    US to Canada", "a train to Boston stopping in New York" / "to New York stopping in
    Boston", "a string to an int" / "an int to a string")."""
    unclear = q.unclear | c.unclear
    moved = [
        (w, q.roles.get(w, ""), c.roles.get(w, ""))
        for w in sorted(q.words & c.words)
        if w not in _FILLER
        and w not in _SPAN_STOPS
        and w not in unclear
        and q.roles.get(w, "") != c.roles.get(w, "")
    ]
    for i, (a, a_was, a_now) in enumerate(moved):
        # Whence in one, whither in the other: the direction flipped even if its partner is
        # a word the reading skips ("from the US").
        if {_ROLE_KIND.get(a_was), _ROLE_KIND.get(a_now)} == {"to", "from"}:
            return a, a
        for b, b_was, b_now in moved[i + 1 :]:
            if a_was == b_now and b_was == a_now and a_was != b_was:
                return a, b
    return None


@functools.lru_cache(maxsize=65_536)
def _read(text: str) -> _Reading:
    tokens = _tokens(text)
    words = frozenset(t for t in tokens if t[0].isalpha() or t[0] in "£$€%")
    polarity = frozenset(_POLARITY_INDEX[w] for w in words if w in _POLARITY_INDEX)
    return _Reading(tokens, words, polarity, _relations(tokens), *_roles(tokens))


def _poles(words: Iterable[str]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for word in words:
        for group, pole in _GROUP_INDEX.get(word, ()):
            found.setdefault(group, set()).add(pole)
    return found


def _prefixed(word: str, other: frozenset[str], own: frozenset[str]) -> str | None:
    """The word of ``other`` that ``word`` negates with a prefix or ``-less``, if any."""
    if word in _NOT_PREFIXED or len(word) < 5:
        return None
    for prefix in _NEGATING_PREFIXES:
        if word.startswith(prefix):
            base = word[len(prefix) :].lstrip("-_")
            if len(base) >= 4 and base not in own and (base in other or _norm(base) in other):
                return base
    if word.endswith("less") and len(word) >= 7:
        base = word[:-4]
        for candidate in other:
            if (
                candidate != word
                and candidate.startswith(base)
                and len(candidate) - len(base) <= 3
                and not candidate.endswith("less")
            ):
                return candidate
    return None


def _spelt_apart(word: str, base: str, tokens: Sequence[str]) -> bool:
    head = word[: len(word) - len(base)].rstrip("-_")
    return any(tokens[i] == head and tokens[i + 1] == base for i in range(len(tokens) - 1))


class LexicalVerifier:
    """Offline contrast checks between a question and a cached question (see the module doc).

    Args:
        checks: which checks run, any of ``"polarity"``, ``"prefix"``, ``"antonym"``,
            ``"direction"`` (default: all, in that order).
        groups: the contrast groups (default :data:`CONTRAST_GROUPS`); pass a larger
            mapping to add your own domain's contrasts (poles as space-separated words).
    """

    CHECKS: tuple[str, ...] = ("polarity", "prefix", "antonym", "direction")

    def __init__(
        self,
        checks: Sequence[str] = CHECKS,
        *,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if isinstance(checks, str):
            raise ValueError("checks must be a sequence of check names")
        unknown = [c for c in checks if c not in self.CHECKS]
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known: {', '.join(self.CHECKS)}")
        self.checks = tuple(checks)
        if groups is None:
            self._groups = _GROUP_INDEX
        else:
            self._groups = {}
            for group, poles in groups.items():
                for pole, words in enumerate(poles):
                    for word in words.split():
                        for form in {word.lower(), _norm(word.lower())}:
                            self._groups.setdefault(form, []).append((group, pole))
        self.name = "lexical"

    def __repr__(self) -> str:
        return f"LexicalVerifier(checks={self.checks!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LexicalVerifier):
            return NotImplemented
        return self.checks == other.checks and self._groups == other._groups

    def __hash__(self) -> int:
        return hash(self.checks)

    def verify(self, query: str, candidate: str) -> str | None:
        """``None`` when no contrast is found, else ``"<check>:<detail>"``."""
        if query == candidate:
            return None
        q, c = _read(query), _read(candidate)
        for check in self.checks:
            reason = getattr(self, "_" + check)(q, c)
            if reason is not None:
                return f"{check}:{reason}"
        return None

    def _polarity(self, q: _Reading, c: _Reading) -> str | None:
        differ = q.polarity ^ c.polarity
        return min(differ) if differ else None

    def _prefix(self, q: _Reading, c: _Reading) -> str | None:
        for a, b in ((q, c), (c, q)):
            for word in a.words - b.words:
                base = _prefixed(word, b.words, a.words)
                # "infront" / "in front", "non profit" / "nonprofit": one word spelt apart.
                if base is not None and not _spelt_apart(word, base, b.tokens):
                    return f"{word}/{base}"
        return None

    def _antonym(self, q: _Reading, c: _Reading) -> str | None:
        only_q = self._poles_of(q.words - c.words)
        only_c = self._poles_of(c.words - q.words)
        for group in sorted(only_q.keys() & only_c.keys()):
            if only_q[group] != only_c[group]:
                return group
        return None

    def _poles_of(self, words: Iterable[str]) -> dict[str, set[int]]:
        if self._groups is _GROUP_INDEX:
            return _poles(words)
        found: dict[str, set[int]] = {}
        for word in words:
            for group, pole in self._groups.get(word, ()):
                found.setdefault(group, set()).add(pole)
        return found

    def _direction(self, q: _Reading, c: _Reading) -> str | None:
        for kind, x, y in q.relations:
            if (
                (kind, y, x) in c.relations
                and (kind, x, y) not in c.relations
                and (kind, y, x) not in q.relations
            ):
                return f"{x}>{y}"
        swap = _swapped(q, c)
        if swap is None:
            return None
        return f"{swap[0]}:to/from" if swap[0] == swap[1] else f"{swap[0]}<>{swap[1]}"


# --------------------------------------------------------------------------- Haiku as a judge

#: The judge's instructions. The two questions go into the system prompt and the user turn is
#: always the same, so a semantic cache in front of the judge can only ever match the very
#: same pair (the pair is part of the partition), and an exact repeat is answered for $0.
JUDGE_SYSTEM = (
    "You check a cache. Q1 was asked before and answered; Q2 is asked now.\n"
    "Q1: {cached}\n"
    "Q2: {query}\n"
    "Reply yes if an answer that is correct for Q1 is also correct and complete for Q2, "
    "otherwise no. Reply with one word."
)
JUDGE_PROMPT = "Does the answer to Q1 answer Q2? yes or no"


def parse_verdict(text: str) -> bool:
    """``True`` only for a reply that starts with "yes" (anything else is a refusal)."""
    return re.match(r"\W*yes\b", text.strip().lower()) is not None


class HaikuJudge:
    """Claude Haiku as a verifier: "does the answer to Q1 answer Q2?", answered yes or no.

    Each verification is one small Messages call (about 110 input tokens, ``max_tokens``
    output tokens) through ``client``, a :class:`haikucache.Client` (or anything with its
    ``messages.create``), so it is validated, cached exactly (the same pair is judged once)
    and accounted in that client's ledger like any call. At Haiku 4.5 prices ($1 per million
    input tokens, $5 per million output tokens) a verdict costs about $0.00012 — see
    ``benchmarks/bench_semantic.py`` (``judge_usd_per_verdict``). Anything but a clear
    "yes", and any failure, refuses the candidate.

    Use it after :class:`LexicalVerifier` (``SemanticConfig(verifier=(LexicalVerifier(),
    HaikuJudge(client)))``), so only candidates that passed every offline check cost a call.

    Args:
        client: a sync haikucache ``Client`` (async doors run verification in a worker thread).
        model: the judging model.
        max_tokens: the reply budget (1-5: "yes" and "no" are one token each).

    Attributes:
        calls, approved, cost_usd: what the judge has done and billed so far.
    """

    def __init__(self, client: Any, *, model: str = "claude-haiku-4-5", max_tokens: int = 2):
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or not 1 <= max_tokens <= 5
        ):
            raise ValueError("max_tokens must be an integer from 1 to 5")
        if not callable(getattr(getattr(client, "messages", None), "create", None)):
            raise ValueError("HaikuJudge needs a client with messages.create (a haikucache Client)")
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.name = f"judge:{model}"
        self.calls = 0
        self.approved = 0
        self.cost_usd = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HaikuJudge(model={self.model!r}, max_tokens={self.max_tokens})"

    def request(self, query: str, candidate: str) -> dict[str, Any]:
        """The Messages request that judges this pair."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "system": JUDGE_SYSTEM.format(cached=candidate.strip(), query=query.strip()),
            "messages": [{"role": "user", "content": JUDGE_PROMPT}],
        }

    def verify(self, query: str, candidate: str) -> str | None:
        """``None`` when the judge says yes, ``"judge"`` otherwise (or ``"judge:error"``)."""
        try:
            message = self.client.messages.create(**self.request(query, candidate))
        except Exception as exc:  # a failed verdict is a refusal, never a failed call
            logger.warning(
                "haikucache: the judge failed (%s: %s); not served", type(exc).__name__, exc
            )
            return "judge:error"
        text = "".join(
            getattr(block, "text", "") for block in getattr(message, "content", ()) or ()
        )
        info = getattr(message, "haikucache", None)
        yes = parse_verdict(text)
        with self._lock:
            self.calls += 1
            self.approved += yes
            self.cost_usd += float(getattr(info, "cost_usd", 0.0) or 0.0)
        return None if yes else "judge"
