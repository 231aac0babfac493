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

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LITELLM_INJECTION_POINTS",
    "PEERS",
    "LitellmCheck",
    "anthropic_auto",
    "check_against_litellm",
    "count_markers",
    "langchain_mw",
    "litellm",
    "marker_sites",
    "none",
]

Body = dict[str, Any]
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
EPHEMERAL_5M: dict[str, str] = {"type": "ephemeral", "ttl": "5m"}
MAX_BREAKPOINTS = 4
LITELLM_INJECTION_POINTS: list[dict[str, Any]] = [
    {"location": "message", "role": "system"},
    {"location": "message", "index": -1},
]


def none(body: Mapping[str, Any]) -> Body:
    """The request as it is."""
    return dict(body)


def anthropic_auto(body: Mapping[str, Any]) -> Body:
    """Automatic caching: a top-level marker."""
    return {**body, "cache_control": dict(EPHEMERAL)}


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
    "langchain_mw": langchain_mw,
    "litellm": litellm,
}


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
