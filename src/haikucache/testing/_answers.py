"""Deterministic answers: plausible text, and tool inputs that validate against their schema.

Everything here is a pure function of a :class:`random.Random` seeded by the emulator from
``(seed, canonical request)``, so the same request always gets the same answer and a
different seed gives a different one.
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from haikucache.testing._tokenizer import Tokenizer

__all__ = ["generate_text_pieces", "generate_thinking", "input_from_schema"]

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "which",
    "have",
    "not",
    "but",
    "they",
    "you",
    "we",
    "can",
    "all",
    "their",
    "has",
    "more",
    "one",
    "will",
    "would",
    "there",
    "been",
    "when",
    "so",
    "other",
    "time",
    "some",
    "what",
    "about",
    "into",
    "than",
    "only",
    "also",
    "these",
    "could",
    "new",
    "two",
    "may",
    "first",
    "any",
    "well",
    "after",
    "most",
    "over",
    "such",
    "where",
    "through",
    "between",
    "both",
    "each",
    "those",
    "under",
    "while",
    "during",
    "answer",
    "question",
    "result",
    "value",
    "system",
    "model",
    "request",
    "cache",
    "token",
    "cost",
    "price",
    "batch",
    "data",
    "section",
    "summary",
    "detail",
    "point",
    "example",
    "method",
    "process",
    "record",
    "report",
    "table",
    "field",
    "list",
    "number",
    "source",
    "context",
    "prompt",
    "reply",
    "change",
    "update",
    "review",
    "check",
    "plan",
    "step",
    "order",
    "case",
    "simple",
    "clear",
    "short",
    "useful",
    "careful",
    "likely",
    "important",
    "relevant",
    "specific",
    "general",
    "main",
    "usually",
    "often",
    "typically",
    "directly",
    "roughly",
    "mostly",
    "quickly",
    "exactly",
    "probably",
    "however",
    "therefore",
    "because",
    "although",
    "unless",
    "instead",
    "meanwhile",
    "overall",
    "consider",
    "include",
    "explain",
    "describe",
    "compare",
    "provide",
    "follow",
    "suggest",
    "confirm",
    "measure",
    "reduce",
    "improve",
    "handle",
    "return",
    "document",
    "paragraph",
    "sentence",
    "reference",
    "version",
    "option",
    "feature",
    "behaviour",
    "limit",
    "window",
    "customer",
    "account",
    "invoice",
    "order",
    "shipment",
    "weather",
    "city",
    "temperature",
    "forecast",
    "schedule",
]

_NAMES = ("Alice Martin", "Bob Chen", "Carla Diaz", "David Okafor", "Eva Novak", "Farid Haddad")
_CITIES = ("Paris", "Tokyo", "Nairobi", "Lima", "Oslo", "Toronto", "Sydney", "Berlin")


def _word_costs(tokenizer: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    # The tokenizer's cost of a word does not depend on its capital or its leading space,
    # but ask it anyway (once per process) rather than assume.
    global _VOCAB
    if _VOCAB is None:
        lower = [" " + w for w in _WORDS]
        capital = [w.capitalize() for w in _WORDS]
        costs = [tokenizer.count(w) for w in lower]
        if costs != [tokenizer.count(w) for w in capital]:  # pragma: no cover - tokenizer invariant
            raise AssertionError("word cost depends on capitalisation")
        _VOCAB = (lower, capital, costs)
    return _VOCAB


_VOCAB: tuple[list[str], list[str], list[int]] | None = None


def generate_text_pieces(
    rng: random.Random, tokenizer: Tokenizer, target_tokens: int
) -> tuple[list[str], list[int]]:
    """Sentences of plausible English, ``target_tokens`` long (give or take a word).

    Returns the pieces and the tokens each costs. Pieces are words with their leading
    space, punctuation glued to the word before it, and paragraph breaks, so the token count
    of the joined text is the sum of the pieces' (the tokenizer never merges across these
    boundaries).
    """
    lower, capital, costs = _word_costs(tokenizer)
    n = len(lower)
    texts: list[str] = []
    tokens: list[int] = []
    total = 0
    sentences_left = 2 + int(rng.random() * 3)
    words_left = 6 + int(rng.random() * 11)
    start_of_sentence = True
    new_paragraph = True
    random_ = rng.random
    while total < target_tokens:
        # One draw per word: its integer part picks the word, its fraction a comma.
        r = random_() * n
        index = int(r)
        if start_of_sentence:
            texts.append(capital[index] if new_paragraph else " " + capital[index])
            start_of_sentence = new_paragraph = False
        else:
            texts.append(lower[index])
        cost = costs[index]
        tokens.append(cost)
        total += cost
        words_left -= 1
        if words_left <= 0 or total >= target_tokens:
            texts.append(".")
            tokens.append(1)
            total += 1
            start_of_sentence = True
            words_left = 6 + int(random_() * 11)
            sentences_left -= 1
            if sentences_left <= 0 and total < target_tokens:
                texts.append("\n\n")
                tokens.append(1)
                total += 1
                new_paragraph = True
                sentences_left = 2 + int(random_() * 3)
        elif r - index < 0.08:
            texts.append(",")
            tokens.append(1)
            total += 1
    return texts, tokens


def generate_thinking(rng: random.Random, tokenizer: Tokenizer, target_tokens: int) -> str:
    """A short, plausible chain of thought."""
    texts, _ = generate_text_pieces(rng, tokenizer, max(1, target_tokens - 4))
    body = "".join(texts)
    return "Let me think about this. " + body


# --------------------------------------------------------------------------- JSON schema

_MAX_DEPTH = 8


class _SchemaFaker:
    """Builds a value that validates against a JSON schema (the subset tools use)."""

    def __init__(self, rng: random.Random, root: Mapping[str, Any], topic: Sequence[str]) -> None:
        self.rng = rng
        self.root = root
        self.topic = [w for w in topic if w] or ["example"]

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if schema is True or not isinstance(schema, Mapping):
            return self.string({}, name)
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.value(merged, name, depth + 1) if depth < _MAX_DEPTH * 2 else None
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                # The first option that is not plain null, like a model filling a field.
                chosen = next((o for o in options if not _is_null_schema(o)), options[0])
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(
                    {**rest, **chosen} if isinstance(chosen, Mapping) else chosen, name, depth + 1
                )
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in all_of:
                if isinstance(part, Mapping) and "$ref" in part:
                    part = self.resolve(part["$ref"])
                if isinstance(part, Mapping):
                    merged = _merge(merged, part)
            return self.value(merged, name, depth + 1)
        kind = self.kind(schema)
        if depth > _MAX_DEPTH:
            # Recursive schemas: stop with the smallest valid value.
            return {
                "object": {},
                "array": [],
                "string": "",
                "integer": 0,
                "number": 0,
                "boolean": False,
                "null": None,
            }.get(kind)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, name, depth)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, name)

    @staticmethod
    def kind(schema: Mapping[str, Any]) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            non_null = [t for t in declared if t != "null"]
            declared = non_null[0] if non_null else "null"
        if isinstance(declared, str):
            return declared
        if "properties" in schema or "required" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if "minimum" in schema or "maximum" in schema:
            return "number"
        return "string"

    def resolve(self, ref: Any) -> Mapping[str, Any]:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                return {}
        return node if isinstance(node, Mapping) else {}

    def object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        required = schema.get("required")
        required_set = (
            {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
        )
        out: dict[str, Any] = {}
        # Properties in schema order, like a model writes them; optional ones half the time.
        for key, sub in props.items():
            if key in required_set or self.rng.random() < 0.5:
                out[key] = self.value(sub, key, depth + 1)
        for key in required_set:
            if key not in out:
                out[key] = self.value({}, key, depth + 1)
        min_props = schema.get("minProperties")
        extra = schema.get("additionalProperties")
        if isinstance(min_props, int) and len(out) < min_props:
            for key, sub in props.items():
                if len(out) >= min_props:
                    break
                out.setdefault(key, self.value(sub, key, depth + 1))
            i = 1
            while len(out) < min_props and extra is not False:
                out.setdefault(
                    f"key{i}",
                    self.value(extra if isinstance(extra, Mapping) else {}, f"key{i}", depth + 1),
                )
                i += 1
        if not props and isinstance(extra, Mapping) and not out:
            out["key1"] = self.value(extra, "key1", depth + 1)
        return out

    def array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        lo = schema.get("minItems", 1 if depth == 0 else 0)
        lo = lo if isinstance(lo, int) and lo >= 0 else 0
        hi = schema.get("maxItems")
        hi = hi if isinstance(hi, int) and hi >= lo else max(lo, 3)
        n = min(max(lo, self.rng.randint(1, 3)), hi)
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        out: list[Any] = []
        for i in range(n):
            if isinstance(prefix, list) and i < len(prefix):
                sub: Any = prefix[i]
            elif isinstance(items, list):
                sub = items[i] if i < len(items) else {}
            else:
                sub = items
            value = self.value(sub, f"{name}{i}" if i else name, depth + 1)
            if schema.get("uniqueItems") and value in out:
                value = _make_unique(value, i, out)
                if value in out:
                    break
            out.append(value)
        return out

    def integer(self, schema: Mapping[str, Any]) -> int:
        lo, hi = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        value = self.rng.randint(lo, hi)
        if isinstance(step, int) and step > 0:
            value = (value // step) * step
            if value < lo:
                value += step
        return value

    def number(self, schema: Mapping[str, Any]) -> float | int:
        lo, hi = _bounds(schema, integer=False)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            k = self.rng.randint(int(-(-lo // step)), max(int(-(-lo // step)), int(hi // step)))
            return round(k * step, 10)
        value: float = round(self.rng.uniform(lo, hi), 2)
        clamped: float = min(max(value, lo), hi)
        return clamped

    def string(self, schema: Mapping[str, Any], name: str) -> str:
        fmt = schema.get("format")
        lname = name.lower()
        rng = self.rng
        day = _dt.date(2025, 11, 1) + _dt.timedelta(days=rng.randint(0, 60))
        if fmt == "date" or (fmt is None and lname.endswith("date")):
            value = day.isoformat()
        elif fmt == "date-time":
            value = f"{day.isoformat()}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "time":
            value = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        elif fmt == "email" or "email" in lname:
            value = f"{rng.choice(_NAMES).split()[0].lower()}@example.com"
        elif fmt in ("uri", "url", "iri") or lname in ("url", "uri", "link", "href"):
            value = f"https://example.com/{rng.choice(self.topic).lower()}"
        elif fmt == "uuid":
            value = "%08x-%04x-4%03x-8%03x-%012x" % (  # noqa: UP031
                rng.getrandbits(32),
                rng.getrandbits(16),
                rng.getrandbits(12),
                rng.getrandbits(12),
                rng.getrandbits(48),
            )
        elif fmt == "ipv4":
            value = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        elif fmt == "hostname":
            value = "host.example.com"
        elif lname in ("city", "location", "place", "town"):
            value = rng.choice(_CITIES)
        elif lname in ("name", "full_name", "fullname", "author", "person", "user"):
            value = rng.choice(_NAMES)
        elif lname == "id" or lname.endswith("_id") or lname.endswith("id"):
            value = f"id_{rng.getrandbits(32):08x}"
        elif lname in ("query", "q", "search", "question", "prompt", "text", "topic"):
            start = rng.randint(0, max(0, len(self.topic) - 1))
            value = " ".join(self.topic[start : start + 6])
        else:
            value = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
        min_len = schema.get("minLength")
        max_len = schema.get("maxLength")
        if isinstance(min_len, int) and len(value) < min_len:
            value = (value + " " + "x" * min_len)[:min_len] if value else "x" * min_len
        if isinstance(max_len, int) and len(value) > max_len:
            value = value[:max_len]
        return value


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        else:
            out.setdefault(key, value)
    return out


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[Any, Any]:
    lo: Any = schema.get("minimum")
    hi: Any = schema.get("maximum")
    ex_lo = schema.get("exclusiveMinimum")
    ex_hi = schema.get("exclusiveMaximum")
    gap = 1 if integer else 0.01
    if isinstance(ex_lo, (int, float)) and not isinstance(ex_lo, bool):
        lo = ex_lo + gap if lo is None else max(lo, ex_lo + gap)
    if isinstance(ex_hi, (int, float)) and not isinstance(ex_hi, bool):
        hi = ex_hi - gap if hi is None else min(hi, ex_hi - gap)
    if lo is None and hi is None:
        lo, hi = 1, 100
    elif lo is None:
        lo = min(1, hi) if hi >= 1 else hi - 100
    elif hi is None:
        hi = lo + 100
    if integer:
        import math

        lo, hi = math.ceil(lo), math.floor(hi)
        if hi < lo:
            hi = lo
    elif hi < lo:
        hi = lo
    return lo, hi


def _make_unique(value: Any, i: int, existing: list[Any]) -> Any:
    if isinstance(value, str):
        return f"{value} {i}"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        candidate = value
        while candidate in existing:
            candidate += 1
        return candidate
    return value


_TOPIC_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]*")


def input_from_schema(
    schema: Mapping[str, Any], rng: random.Random, topic_text: str = ""
) -> dict[str, Any]:
    """A tool ``input`` object that validates against ``schema``.

    Supports what tool schemas use in practice: ``type`` (one or a list), ``properties``
    and ``required``, ``enum``, ``const``, nested objects and arrays (``items``,
    ``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems``), ``anyOf``/``oneOf`` (first
    non-null option), ``allOf`` (merged), ``$ref`` into ``$defs``/``definitions``, string
    ``format`` hints (date, date-time, email, uri, uuid …), ``minLength``/``maxLength`` and
    numeric bounds. ``topic_text`` (the user's last words) seeds free-text fields such as
    ``query``.
    """
    faker = _SchemaFaker(rng, schema, _TOPIC_WORD.findall(topic_text)[:40])
    value = faker.value({**schema, "type": "object"}, "", 0)
    return value if isinstance(value, dict) else {}
