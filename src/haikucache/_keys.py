"""Exact keys and semantic partitions: visible, versioned, stable.

The exact key is ``hc1:`` + the xxh3-128 hex digest of the *canonical JSON* of everything in a
Messages request that changes the answer, prefixed by the namespace (tenant). Fields that do not
change the answer are left out:

* ``stream`` — a stream and a JSON answer are the same message;
* ``metadata`` — ``user_id`` is for abuse tracking only;
* every ``cache_control`` marker (top level, tools, system, message blocks, and the inner
  block of a ``tool_result``) — markers change the bill, never the answer.

Headers, retry counters and haikucache's own per-call options never reach the body.

Canonicalisation builds a *new* structure: it never mutates the request, never reorders list
items (blocks, messages, tools — their order is part of the prompt) and sorts only object keys.
A string ``content`` or ``system`` is the same prompt as a single text block, so both spell
the same key.

Changing what goes into a key changes :data:`KEY_VERSION`, so stored entries written under
an older rule are never misread.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

__all__ = [
    "IGNORED_FIELDS",
    "KEY_VERSION",
    "canonical_json",
    "partition_key",
    "request_key",
]

#: Version prefix of every key; bumped whenever the canonical form changes.
KEY_VERSION = "hc1"

#: Top-level request fields that never change the answer.
IGNORED_FIELDS: frozenset[str] = frozenset({"stream", "metadata", "cache_control"})

_dumps = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _without_marker(block: Any) -> Any:
    if type(block) is dict and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    if type(block) is not dict and isinstance(block, Mapping) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _canonical_block(block: Any) -> Any:
    block = _without_marker(block)
    if (
        type(block) is dict
        and block.get("type") == "tool_result"
        and isinstance(block.get("content"), list)
    ):
        block = dict(block)
        block["content"] = [_without_marker(b) for b in block["content"]]
    return block


def _canonical_content(content: Any) -> Any:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [_canonical_block(b) for b in content]
    return content


def _canonical_body(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in IGNORED_FIELDS:
            continue
        if name == "messages" and isinstance(value, list):
            value = [
                {**m, "content": _canonical_content(m["content"])}
                if isinstance(m, Mapping) and "content" in m
                else m
                for m in value
            ]
        elif name == "system":
            value = _canonical_content(value)
        elif name == "tools" and isinstance(value, list):
            value = [_without_marker(t) for t in value]
        out[name] = value
    return out


def canonical_json(body: Mapping[str, Any], *, betas: Sequence[str] = ()) -> str:
    """The canonical JSON text of the answer-relevant part of ``body``.

    Args:
        body: a Messages request body.
        betas: ``anthropic-beta`` values; a beta can change behaviour, so it is part of the key
            (order-insensitive).
    """
    canonical = _canonical_body(body)
    if betas:
        canonical["__betas__"] = sorted(set(betas))
    return _dumps(canonical)


# The key hashes a framed serialisation of the same canonical structure that canonical_json()
# prints, streamed straight from the request: building the JSON text of a 200 KB request costs
# 2–3 ms in the stdlib (escaping scans every character). Here every string is written raw after
# a '"' tag and its length goes to a side list hashed after the text, so nothing needs escaping
# and the encoding still parses back unambiguously (no two structures collide).


def _framed(body: Mapping[str, Any], betas: Sequence[str]) -> tuple[list[str], list[int]]:
    out: list[str] = []
    lens: list[int] = []
    put = out.append
    put_len = lens.append

    def value(v: Any) -> None:
        kind = type(v)
        if kind is str:
            put('"')
            put(v)
            put_len(len(v))
        elif kind is dict:
            put("{")
            for k in sorted(v):
                put('"')
                put(k)
                put_len(len(k))
                item = v[k]
                if type(item) is str:
                    put('"')
                    put(item)
                    put_len(len(item))
                else:
                    value(item)
            put("}")
        elif kind is list:
            put("[")
            for item in v:
                value(item)
            put("]")
        elif v is None:
            put("N")
        elif v is True:
            put("T")
        elif v is False:
            put("F")
        elif kind is int:
            put(f"i{v};")
        elif kind is float:
            # 1 and 1.0 are the same JSON number to the API.
            put(f"i{int(v)};" if v.is_integer() and abs(v) < 2**53 else f"f{v!r};")
        elif isinstance(v, Mapping):
            value({str(k): x for k, x in v.items()})
        elif isinstance(v, (list, tuple)):
            value(list(v))
        elif isinstance(v, str):
            value(str(v))
        elif isinstance(v, int):  # int subclasses such as IntEnum
            value(int(v))
        else:
            raise TypeError(f"a request must be JSON data; got {type(v).__name__}")

    def content(c: Any) -> None:
        if type(c) is str:
            # The framed form of [{"text": c, "type": "text"}].
            put('[{"text')
            value(c)
            put('"type"text}]')
            lens[len(lens) - 1 :] = [4, len(c), 4, 4]
        elif type(c) is list:
            put("[")
            for block in c:
                if (
                    type(block) is dict
                    and block.get("type") == "text"
                    and len(block) - ("cache_control" in block) == 2
                    and type(block.get("text")) is str
                ):
                    # The common case, a plain text block, written without building a copy.
                    text = block["text"]
                    put('{"text"')
                    put(text)
                    put('"type"text}')
                    put_len(4)
                    put_len(len(text))
                    put_len(4)
                    put_len(4)
                else:
                    value(_canonical_block(block))
            put("]")
        else:
            value(c)

    names = sorted(k for k in body if k not in IGNORED_FIELDS)
    if betas:
        names = sorted([*names, "__betas__"])
    put("{")
    for name in names:
        put('"')
        put(name)
        put_len(len(name))
        if name == "__betas__":
            value(sorted(set(betas)))
            continue
        field = body[name]
        if name == "messages" and type(field) is list:
            put("[")
            for message in field:
                if type(message) is dict and "content" in message:
                    put("{")
                    for k in sorted(message):
                        put('"')
                        put(k)
                        put_len(len(k))
                        if k == "content":
                            content(message[k])
                        else:
                            value(message[k])
                    put("}")
                else:
                    value(message)
            put("]")
        elif name == "system":
            content(field)
        elif name == "tools" and type(field) is list:
            value([_without_marker(t) for t in field])
        else:
            value(field)
    put("}")
    return out, lens


def _digest(namespace: str, framed: tuple[list[str], list[int]]) -> str:
    out, lens = framed
    hasher = xxhash.xxh3_128()
    hasher.update(namespace.encode("utf-8", "surrogatepass"))
    hasher.update(b"\x00")
    hasher.update("".join(out).encode("utf-8", "surrogatepass"))
    hasher.update(b"\x00")
    hasher.update(array("q", lens).tobytes())
    return hasher.hexdigest()


def request_key(body: Mapping[str, Any], *, namespace: str = "", betas: Sequence[str] = ()) -> str:
    """The exact key of a request, e.g. ``hc1:5d41…`` (32 hex digits).

    Two requests get the same key exactly when they would get the same answer from the same
    tenant: same namespace, and equal canonical JSON.
    """
    return f"{KEY_VERSION}:{_digest(namespace, _framed(body, betas))}"


def partition_key(
    body: Mapping[str, Any], *, namespace: str = "", betas: Sequence[str] = ()
) -> str | None:
    """The semantic partition of a request: its key with the last user turn's text left out.

    Only requests in the same partition are ever compared by meaning, so an answer given under
    another system prompt, tool set, history, model or sampling setting can never be served.
    Returns ``None`` when the last turn is not plain user text (tool results, images,
    documents, or an assistant prefill): such requests are matched exactly or not at all.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return None
    content = _canonical_content(last.get("content"))
    if not isinstance(content, list) or not content:
        return None
    if not all(isinstance(b, Mapping) and b.get("type") == "text" for b in content):
        return None
    masked = dict(body)
    masked["messages"] = [*messages[:-1], {"role": "user", "content": "\x00semantic-slot\x00"}]
    return f"{KEY_VERSION}p:{_digest(namespace, _framed(masked, betas))}"
