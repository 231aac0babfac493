"""Where the peers put ``cache_control`` markers, applied to an unmarked Messages request.

Each function takes a request body and returns a marked copy (the caller's body is never
modified); nothing else in the request changes (the emulator's answer depends only on content, so every strategy gets the
same replies and output tokens).

* ``none`` — no markers.
* ``anthropic_auto`` — Anthropic's automatic caching: one top-level
  ``"cache_control": {"type": "ephemeral"}``; the API puts the breakpoint on the last
  cacheable block, so it moves forward as the conversation grows (reference §1.7).
* ``langchain_mw`` — LangChain's ``AnthropicPromptCachingMiddleware`` with its defaults
  (``ttl="5m"``, ``min_messages_to_cache=0``): ``_apply_caching`` tags the last block of the
  system message and the last tool, and sets ``model_settings["cache_control"]``, which
  ``ChatAnthropic`` sends as the top-level ``cache_control`` — up to three breakpoints, all
  ``{"type": "ephemeral", "ttl": "5m"}`` (integrations.md §1.3–1.4; peers.md §3).
* ``anthropic_auto_1h``, ``langchain_mw_1h``, ``litellm_1h`` — the same peers at their best
  documented setting: the top-level marker with ``"ttl": "1h"``; the middleware's
  ``ttl="1h"`` (tools, system and tail all 1 h); LiteLLM's system injection point with
  ``"control": {"type": "ephemeral", "ttl": "1h"}`` and the last message left at 5 m (a 1 h
  tail would cost 2× on every turn of a conversation).
* ``static_*`` — a family of fixed placements an expert could configure by hand: a marker on
  each of four *sites* — the last tool (``tools``), the last system block (``system``), the
  last long (≥ 1,024-token) message block before the tail (``documents``: a retrieved
  document, a long tool output) and the last cacheable block (``tail``) — each left off, 5 m
  or 1 h, 1 h ones before 5 m ones (48 placements). ``bench_cost`` replays all of them and
  reports the cheapest per cell as ``static_best``: a choice made in hindsight.
* ``litellm`` — LiteLLM's ``cache_control_injection_points`` hook
  (``litellm/integrations/anthropic_cache_control_hook.py``) configured the way its Anthropic
  prompt-caching docs recommend: ``[{"location": "message", "role": "system"},
  {"location": "message", "index": -1}]``, i.e. the system message and the last message.
  The hook works on OpenAI-format messages: a string content gets a message-level marker
  and a list content a marker on its last block, which LiteLLM's Anthropic transformation
  turns into a marker on the corresponding block — the last system text block and the last
  content block of the last message. It never overwrites a message that already carries a
  marker, stops at 4 breakpoints, and leaves tools alone (``tool_config`` points exist only
  for Bedrock). This module reproduces that placement directly on the Anthropic body, so the
  benchmark does not need the (heavy) ``litellm`` package; :class:`LitellmCheck`
  runs the real hook and LiteLLM's Anthropic transformation in a separate interpreter (e.g.
  ``.cache/litellm-venv``, where ``litellm`` 1.109 is installed with ``--no-deps`` plus its
  dependencies, because its ``certifi>=2026.10.19`` pin is not on the index) and checks that
  both put the markers on the same blocks.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haikucache.testing._bill import price_usage
from haikucache.testing._prompt_cache import PromptCache
from haikucache.testing._request import parse_request
from haikucache.testing._tokenizer import Tokenizer

__all__ = [
    "LITELLM_1H_INJECTION_POINTS",
    "LITELLM_INJECTION_POINTS",
    "PEERS",
    "SITES",
    "STATIC_PLACEMENTS",
    "LitellmCheck",
    "Replay",
    "anthropic_auto",
    "anthropic_auto_1h",
    "check_against_litellm",
    "count_markers",
    "langchain_mw",
    "langchain_mw_1h",
    "litellm",
    "litellm_1h",
    "mark_static",
    "marker_sites",
    "none",
    "prepare",
    "sites_of",
    "static_name",
]

Body = dict[str, Any]
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
EPHEMERAL_5M: dict[str, str] = {"type": "ephemeral", "ttl": "5m"}
MAX_BREAKPOINTS = 4
LITELLM_INJECTION_POINTS: list[dict[str, Any]] = [
    {"location": "message", "role": "system"},
    {"location": "message", "index": -1},
]
LITELLM_1H_INJECTION_POINTS: list[dict[str, Any]] = [
    {"location": "message", "role": "system", "control": {"type": "ephemeral", "ttl": "1h"}},
    {"location": "message", "index": -1},
]


def none(body: Mapping[str, Any]) -> Body:
    """The request as it is."""
    return dict(body)


def anthropic_auto(body: Mapping[str, Any]) -> Body:
    """Automatic caching: a top-level marker."""
    return {**body, "cache_control": dict(EPHEMERAL)}


def anthropic_auto_1h(body: Mapping[str, Any]) -> Body:
    """Automatic caching with a 1-hour TTL."""
    return {**body, "cache_control": {"type": "ephemeral", "ttl": "1h"}}


# The helpers below copy only the containers on the path to the block they mark (the
# benchmark replays thousands of ~40 kB requests; a deep copy of each would dominate), so
# the caller's request is never modified.


def _mark_system(body: Body, marker: Mapping[str, Any]) -> bool:
    system = body.get("system")
    if not system:
        return False
    if isinstance(system, str):
        body["system"] = [{"type": "text", "text": system, "cache_control": dict(marker)}]
        return True
    if system[-1].get("cache_control") is not None:
        return False
    body["system"] = [*system[:-1], {**system[-1], "cache_control": dict(marker)}]
    return True


def _mark_last_block(messages: list[dict[str, Any]], i: int, marker: Mapping[str, Any]) -> bool:
    message = messages[i]
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return False
        block = {"type": "text", "text": content, "cache_control": dict(marker)}
        messages[i] = {**message, "content": [block]}
        return True
    if content and isinstance(content[-1], dict):
        last = {**content[-1], "cache_control": dict(marker)}
        messages[i] = {**message, "content": [*content[:-1], last]}
        return True
    return False


def langchain_mw(body: Mapping[str, Any], *, ttl: str = "5m") -> Body:
    """``AnthropicPromptCachingMiddleware``: last system block + last tool + top level."""
    marker = {"type": "ephemeral", "ttl": ttl}
    out = dict(body)
    _mark_system(out, marker)
    tools = out.get("tools")
    if tools and tools[-1].get("cache_control") is None:
        out["tools"] = [*tools[:-1], {**tools[-1], "cache_control": dict(marker)}]
    out["cache_control"] = dict(marker)
    return out


def langchain_mw_1h(body: Mapping[str, Any]) -> Body:
    """``AnthropicPromptCachingMiddleware(ttl="1h")``."""
    return langchain_mw(body, ttl="1h")


def _message_has_marker(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("cache_control") is not None for b in content
    )


def litellm(
    body: Mapping[str, Any],
    *,
    points: list[dict[str, Any]] = LITELLM_INJECTION_POINTS,
) -> Body:
    """LiteLLM's ``cache_control_injection_points`` (system message + last message)."""
    out = dict(body)
    used = count_markers(out)
    messages = list(out["messages"])
    out["messages"] = messages
    for point in points:
        if used >= MAX_BREAKPOINTS or point.get("location") != "message":
            continue
        control = point.get("control") or EPHEMERAL
        if point.get("role") == "system":
            system = out.get("system")
            already = isinstance(system, list) and any(
                b.get("cache_control") is not None for b in system
            )
            if not already and _mark_system(out, control):
                used += 1
            continue
        index = point.get("index")
        if index is None:
            # A role other than system: every message with that role, in order.
            targets = [i for i, m in enumerate(messages) if m["role"] == point.get("role")]
        else:
            i = int(index) + (len(messages) if int(index) < 0 else 0)
            targets = [i] if 0 <= i < len(messages) else []
        for i in targets:
            if used >= MAX_BREAKPOINTS:
                break
            if not _message_has_marker(messages[i]) and _mark_last_block(messages, i, control):
                used += 1
    return out


def litellm_1h(body: Mapping[str, Any]) -> Body:
    """LiteLLM with 1 h on the system message and the default 5 m on the last message."""
    return litellm(body, points=LITELLM_1H_INJECTION_POINTS)


def count_markers(body: Mapping[str, Any]) -> int:
    """Breakpoints a request asks for, the top-level one included."""
    n = 1 if body.get("cache_control") is not None else 0
    for tool in body.get("tools") or ():
        n += tool.get("cache_control") is not None
    system = body.get("system")
    if isinstance(system, list):
        n += sum(b.get("cache_control") is not None for b in system)
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if not isinstance(block, dict):
                    continue
                inner = block.get("content")
                lifted = (
                    block.get("type") == "tool_result"
                    and isinstance(inner, list)
                    and bool(inner)
                    and isinstance(inner[-1], dict)
                    and inner[-1].get("cache_control") is not None
                )
                n += block.get("cache_control") is not None or lifted
    return n


PEERS: dict[str, Callable[[Mapping[str, Any]], Body]] = {
    "none": none,
    "anthropic_auto": anthropic_auto,
    "anthropic_auto_1h": anthropic_auto_1h,
    "langchain_mw": langchain_mw,
    "langchain_mw_1h": langchain_mw_1h,
    "litellm": litellm,
    "litellm_1h": litellm_1h,
}


# --------------------------------------------------------------------------- static placements

SITES = ("tools", "system", "documents", "tail")
LONG_BLOCK_TOKENS = 1024


def _static_placements() -> list[tuple[tuple[str, str], ...]]:
    out = []
    for choice in itertools.product(("off", "1h", "5m"), repeat=len(SITES)):
        ttls = [t for t in choice if t != "off"]
        if ttls != sorted(ttls):  # "1h" < "5m": every 1 h marker before every 5 m one
            continue
        out.append(tuple((site, t) for site, t in zip(SITES, choice, strict=True) if t != "off"))
    return out


STATIC_PLACEMENTS: list[tuple[tuple[str, str], ...]] = _static_placements()


def static_name(placement: Sequence[tuple[str, str]]) -> str:
    """``static_system1h_tail5m``; ``static_off`` for no marker."""
    return "static_" + ("_".join(f"{site}{ttl}" for site, ttl in placement) or "off")


def sites_of(blocks: Sequence[Any]) -> dict[str, int]:
    """Block index of each site in the emulator's flattening of a request (absent: missing)."""
    out: dict[str, int] = {}
    tail = next((i for i in range(len(blocks) - 1, -1, -1) if blocks[i].eligible), None)
    for i, b in enumerate(blocks):
        if b.level == 0:
            out["tools"] = i
        elif b.level == 1:
            out["system"] = i
        elif tail is not None and i < tail and b.tokens >= LONG_BLOCK_TOKENS and b.eligible:
            out["documents"] = i
    if tail is not None:
        out["tail"] = tail
    return out


def _static_breakpoints(
    sites: Mapping[str, int], placement: Sequence[tuple[str, str]]
) -> list[tuple[int, str]]:
    points: dict[int, str] = {}
    for site, ttl in placement:
        i = sites.get(site)
        if i is not None:
            points.setdefault(i, ttl)  # two sites on one block: the earlier site's TTL
    return sorted(points.items())


def _mark_path(body: Body, path: str, ttl: str) -> None:
    marker = {"type": "ephemeral", "ttl": ttl}
    parts = path.split(".")
    if parts[0] == "tools":
        tools = body["tools"] = list(body["tools"])
        tools[int(parts[1])] = {**tools[int(parts[1])], "cache_control": marker}
    elif parts[0] == "system":
        system = body["system"]
        if isinstance(system, str):
            body["system"] = [{"type": "text", "text": system, "cache_control": marker}]
        else:
            system = body["system"] = list(system)
            system[int(parts[1])] = {**system[int(parts[1])], "cache_control": marker}
    else:
        messages = body["messages"] = list(body["messages"])
        m = int(parts[1])
        content = messages[m]["content"]
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content, "cache_control": marker}]
        else:
            blocks = list(content)
            blocks[int(parts[3])] = {**blocks[int(parts[3])], "cache_control": marker}
        messages[m] = {**messages[m], "content": blocks}


def mark_static(
    body: Mapping[str, Any], placement: Sequence[tuple[str, str]], blocks: Sequence[Any]
) -> Body:
    """``body`` with the markers of a static placement (``blocks``: the emulator's flattening)."""
    out = dict(body)
    for i, ttl in _static_breakpoints(sites_of(blocks), placement):
        _mark_path(out, blocks[i].path, ttl)
    return out


# --------------------------------------------------------------------------- fast replay


@dataclass(frozen=True)
class _Lite:
    key: bytes
    prefix_tokens: int


@dataclass
class Prepared:
    """One request as the emulator sees it, with where each strategy puts its breakpoints."""

    blocks: list[_Lite]
    total: int
    min_tokens: int
    output_tokens: int
    breakpoints: dict[str, list[tuple[int, str]]]


def prepare(body: Mapping[str, Any], output_tokens: int, tokenizer: Tokenizer) -> Prepared:
    """Parse ``body`` (and each peer's marked copy) with the emulator's own parser."""
    parsed = parse_request(
        dict(body), version="2023-06-01", endpoint="messages", tokenizer=tokenizer
    )
    info = parsed.info
    points: dict[str, list[tuple[int, str]]] = {}
    for name, mark in PEERS.items():
        if name == "none":
            points[name] = []
            continue
        marked = parse_request(
            mark(body), version="2023-06-01", endpoint="messages", tokenizer=tokenizer
        )
        points[name] = list(marked.breakpoints)
    sites = sites_of(parsed.blocks)
    for placement in STATIC_PLACEMENTS:
        points[static_name(placement)] = _static_breakpoints(sites, placement)
    return Prepared(
        blocks=[_Lite(b.key, b.prefix_tokens) for b in parsed.blocks],
        total=parsed.total_tokens,
        min_tokens=info.min_cacheable_tokens if info is not None else 1024,
        output_tokens=output_tokens,
        breakpoints=points,
    )


class Replay:
    """The emulator's own prompt cache (:class:`PromptCache`) and prices, without HTTP.

    Used to price the 55 fixed placements in every cell; ``bench_cost`` checks it against
    real emulator runs of the same placements.
    """

    def __init__(self, strategy: str, refresh: str, model: str = "claude-haiku-4-5") -> None:
        self.strategy = strategy
        self.cache = PromptCache(refresh)
        self.model = model
        self.tokens = dict.fromkeys(("input", "write_5m", "write_1h", "read", "output"), 0)

    def send(self, request: Prepared, now: float) -> None:
        used = self.cache.apply(
            request.blocks,  # type: ignore[arg-type]  # key and prefix_tokens suffice
            request.breakpoints[self.strategy],
            request.min_tokens,
            now,
        )
        t = self.tokens
        t["input"] += request.total - used.read - used.written
        t["write_5m"] += used.write_5m
        t["write_1h"] += used.write_1h
        t["read"] += used.read
        t["output"] += request.output_tokens

    @property
    def usd(self) -> float:
        t = self.tokens
        usage = {
            "input_tokens": t["input"],
            "cache_creation_input_tokens": t["write_5m"] + t["write_1h"],
            "cache_read_input_tokens": t["read"],
            "cache_creation": {
                "ephemeral_5m_input_tokens": t["write_5m"],
                "ephemeral_1h_input_tokens": t["write_1h"],
            },
            "output_tokens": t["output"],
        }
        return price_usage(self.model, usage, batch=False)[0]


# --------------------------------------------------------------------------- the real LiteLLM

_LITELLM_SCRIPT = r"""
import json, os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
from litellm.integrations.anthropic_cache_control_hook import AnthropicCacheControlHook
from litellm.llms.anthropic.chat.transformation import AnthropicConfig

points = json.loads(sys.argv[1])
config = AnthropicConfig()
hook = AnthropicCacheControlHook()
out = []
with open(sys.argv[2]) as f:
    samples = json.load(f)
for sample in samples:
    _, messages, _ = hook.get_chat_completion_prompt(
        model="claude-haiku-4-5", messages=sample["messages"],
        non_default_params={"cache_control_injection_points": points},
        prompt_id=None, prompt_variables=None, dynamic_callback_params={},
    )
    optional = config.map_openai_params(
        non_default_params={"tools": sample["tools"], "max_tokens": 1024},
        optional_params={}, model="claude-haiku-4-5", drop_params=False,
    )
    out.append(config.transform_request(
        model="claude-haiku-4-5", messages=messages, optional_params=optional,
        litellm_params={}, headers={},
    ))
with open(sys.argv[3], "w") as f:
    json.dump(out, f)
"""


def marker_sites(body: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Where a body's markers sit, named by content rather than by position."""
    sites: list[tuple[str, ...]] = []
    if body.get("cache_control") is not None:
        sites.append(("top-level",))
    for tool in body.get("tools") or ():
        if tool.get("cache_control") is not None:
            sites.append(("tool", str(tool.get("name"))))
    system = body.get("system")
    if isinstance(system, list):
        for block in system:
            if block.get("cache_control") is not None:
                sites.append(("system", str(block.get("text", ""))[:80]))
    for message in body.get("messages") or ():
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("cache_control") is not None:
                name = block.get("text") or block.get("tool_use_id") or block.get("id") or ""
                sites.append((message["role"], str(block.get("type")), str(name)[:80]))
    return sites


class LitellmCheck:
    """LiteLLM's own hook and Anthropic transformation, run in the interpreter ``python``
    (e.g. a separate virtualenv) on OpenAI-format ``(messages, tools, our_body)`` samples.

    The child process starts at once; :meth:`result` waits for it and counts the requests
    where LiteLLM's markers sit on the same blocks as :func:`litellm` puts them on
    ``our_body`` (the same request converted by ``_workloads``).
    """

    def __init__(
        self, python: str, samples: list[tuple[list[dict[str, Any]], list[dict[str, Any]], Body]]
    ) -> None:
        self._samples = samples
        # Files, not pipes: nothing has to feed or drain the child while it runs.
        self._dir = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
        (self._dir / "in.json").write_text(
            json.dumps([{"messages": m, "tools": t} for m, t, _ in samples])
        )
        self._process = subprocess.Popen(
            [
                python,
                "-c",
                _LITELLM_SCRIPT,
                json.dumps(LITELLM_INJECTION_POINTS),
                str(self._dir / "in.json"),
                str(self._dir / "out.json"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def result(self, timeout: float = 300) -> dict[str, int]:
        try:
            code = self._process.wait(timeout)
            if code != 0:
                raise RuntimeError(f"the litellm check exited with status {code}")
            theirs = json.loads((self._dir / "out.json").read_text())
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        agree = sum(
            marker_sites(real) == marker_sites(litellm(ours))
            for real, (_, _, ours) in zip(theirs, self._samples, strict=True)
        )
        return {"requests": len(self._samples), "agree": agree}


def check_against_litellm(
    python: str, samples: list[tuple[list[dict[str, Any]], list[dict[str, Any]], Body]]
) -> dict[str, int]:
    """:class:`LitellmCheck`, waited for."""
    return LitellmCheck(python, samples).result()
