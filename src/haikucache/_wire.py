"""A typed view of Messages API requests, and local validation of what the API would reject.

The request types are ``TypedDict``s over the wire JSON (what the engine actually works on),
so a plain dict written by hand, by the ``anthropic`` SDK or by LangChain type-checks as is.

:func:`validate_request` raises :class:`RequestValidationError` — with the dotted path of the
offending field — for anything the real API answers with a 400, before any money is spent.
It checks only rules the API documents or is observed to enforce (reference §1.2–1.7, §4.2,
§4.4, §4.10); fields it does not know are passed through, because the API adds fields and
gateways accept their own.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeGuard, Union

if sys.version_info >= (3, 11):
    from typing import NotRequired, Required
else:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired, Required

from ._catalog import lookup_model
from ._exceptions import RequestValidationError

__all__ = [
    "API_VERSIONS",
    "CacheControlParam",
    "ContentBlockParam",
    "DocumentBlockParam",
    "ImageBlockParam",
    "MessageCreateParams",
    "MessageParam",
    "TextBlockParam",
    "ThinkingConfigParam",
    "ToolChoiceParam",
    "ToolParam",
    "ToolResultBlockParam",
    "ToolUseBlockParam",
    "iter_cache_markers",
    "validate_request",
]

#: The ``anthropic-version`` values the API accepts (reference §4.10).
API_VERSIONS = ("2023-06-01", "2026-10-21")
_SAMPLING_REMOVED_IN = "2026-10-21"


class CacheControlParam(TypedDict, total=False):
    """``{"type": "ephemeral", "ttl": "5m" | "1h"}``; ``ttl`` defaults to ``"5m"``."""

    type: Required[Literal["ephemeral"]]
    ttl: Literal["5m", "1h"]


class TextBlockParam(TypedDict):
    type: Literal["text"]
    text: str
    cache_control: NotRequired[CacheControlParam]
    citations: NotRequired[list[dict[str, Any]]]


class ImageBlockParam(TypedDict):
    type: Literal["image"]
    source: dict[str, Any]
    cache_control: NotRequired[CacheControlParam]


class DocumentBlockParam(TypedDict):
    type: Literal["document"]
    source: dict[str, Any]
    title: NotRequired[str]
    context: NotRequired[str]
    citations: NotRequired[dict[str, Any]]
    cache_control: NotRequired[CacheControlParam]


class ToolUseBlockParam(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: NotRequired[CacheControlParam]


class ToolResultBlockParam(TypedDict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: NotRequired[str | list[dict[str, Any]]]
    is_error: NotRequired[bool]
    cache_control: NotRequired[CacheControlParam]


ContentBlockParam = Union[  # noqa: UP007 - a runtime alias must work on Python 3.10
    TextBlockParam,
    ImageBlockParam,
    DocumentBlockParam,
    ToolUseBlockParam,
    ToolResultBlockParam,
    dict[str, Any],
]


class MessageParam(TypedDict):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]


class ToolParam(TypedDict, total=False):
    """A client tool (``input_schema``) or a server tool (``type`` such as ``web_search_20250305``)."""

    name: Required[str]
    description: str
    input_schema: dict[str, Any]
    type: str
    cache_control: CacheControlParam


class ToolChoiceParam(TypedDict, total=False):
    type: Required[Literal["auto", "any", "tool", "none"]]
    name: str
    disable_parallel_tool_use: bool


class ThinkingConfigParam(TypedDict, total=False):
    type: Required[Literal["enabled", "disabled", "adaptive"]]
    budget_tokens: int


class MessageCreateParams(TypedDict, total=False):
    """The body of ``POST /v1/messages``."""

    model: Required[str]
    max_tokens: Required[int]
    messages: Required[list[MessageParam]]
    system: str | list[TextBlockParam]
    tools: list[ToolParam]
    tool_choice: ToolChoiceParam
    temperature: float
    top_p: float
    top_k: int
    stop_sequences: list[str]
    stream: bool
    metadata: dict[str, Any]
    thinking: ThinkingConfigParam
    service_tier: Literal["auto", "standard_only"]
    cache_control: CacheControlParam
    output_config: dict[str, Any]


# --------------------------------------------------------------------------- validation

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_UNMARKABLE = ("thinking", "redacted_thinking")
_USER_ONLY = ("image", "document", "tool_result")


def _fail(param: str, message: str) -> RequestValidationError:
    return RequestValidationError(message, param=param)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def iter_cache_markers(body: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Yield ``(path, cache_control)`` for every marker in prefix order tools → system → messages.

    The top-level (automatic) ``cache_control`` is yielded last under the path ``cache_control``,
    because the API places it on the last cacheable block.
    """
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if isinstance(tool, Mapping) and "cache_control" in tool:
                yield f"tools.{i}.cache_control", tool["cache_control"]
    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            if isinstance(block, Mapping) and "cache_control" in block:
                yield f"system.{i}.cache_control", block["cache_control"]
    messages = body.get("messages")
    if isinstance(messages, list):
        for m, message in enumerate(messages):
            content = message.get("content") if isinstance(message, Mapping) else None
            if not isinstance(content, list):
                continue
            for b, block in enumerate(content):
                if not isinstance(block, Mapping):
                    continue
                if "cache_control" in block:
                    yield f"messages.{m}.content.{b}.cache_control", block["cache_control"]
                elif block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                    # A marker on the last inner block is lifted to the tool_result (§1.2).
                    inner = block["content"]
                    last = inner[-1] if inner else None
                    if isinstance(last, Mapping) and "cache_control" in last:
                        path = f"messages.{m}.content.{b}.content.{len(inner) - 1}.cache_control"
                        yield path, last["cache_control"]
    if "cache_control" in body:
        yield "cache_control", body["cache_control"]


def validate_request(
    body: Mapping[str, Any],
    *,
    api_version: str = "2023-06-01",
    count_tokens: bool = False,
) -> None:
    """Raise :class:`RequestValidationError` if the API would reject ``body``.

    Args:
        body: the JSON body of ``POST /v1/messages`` (or of ``count_tokens`` when
            ``count_tokens`` is true, where ``max_tokens`` is not required).
        api_version: the ``anthropic-version`` the request will be sent with; under
            ``2026-10-21`` the sampling parameters are rejected (reference §4.10).
        count_tokens: validate a ``/v1/messages/count_tokens`` body.
    """
    if not isinstance(body, Mapping):
        raise _fail("body", f"expected a JSON object, got {type(body).__name__}")
    if api_version not in API_VERSIONS:
        raise _fail(
            "anthropic-version",
            f"unknown API version {api_version!r}; expected one of {', '.join(API_VERSIONS)}",
        )

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "Field required (a non-empty string such as 'claude-haiku-4-5')")
    info = lookup_model(model)

    if not count_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _fail("max_tokens", "Field required")
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _fail("max_tokens", f"must be an integer >= 1, got {max_tokens!r}")
        if info is not None and max_tokens > info.max_output_tokens:
            raise _fail(
                "max_tokens",
                f"{max_tokens} > {info.max_output_tokens}, which is the maximum allowed number "
                f"of output tokens for {model}",
            )
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _fail("stream", "must be a boolean")

    _validate_messages(body.get("messages"))
    _validate_system(body.get("system"))
    tool_names = _validate_tools(body.get("tools"))
    _validate_tool_choice(body.get("tool_choice"), tool_names)
    _validate_sampling(body, api_version)
    _validate_thinking(body.get("thinking"), body.get("max_tokens"), count_tokens)
    _validate_cache_markers(body)

    stop = body.get("stop_sequences")
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)
    ):
        raise _fail("stop_sequences", "must be a list of non-empty strings")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _fail("metadata", "must be an object")


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise _fail("messages", "Field required")
    if not isinstance(messages, list):
        raise _fail("messages", "must be a list of {role, content} objects")
    if not messages:
        raise _fail("messages", "at least one message is required")
    for m, message in enumerate(messages):
        where = f"messages.{m}"
        if not isinstance(message, Mapping):
            raise _fail(where, "must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in _ROLES:
            raise _fail(f"{where}.role", f"must be 'user' or 'assistant', got {role!r}")
        if m == 0 and role != "user":
            raise _fail(f"{where}.role", "the first message must use the 'user' role")
        if "content" not in message:
            raise _fail(f"{where}.content", "Field required")
        content = message["content"]
        if not isinstance(content, (str, list)):
            raise _fail(f"{where}.content", "must be a string or a list of content blocks")
        if not content and not (m == len(messages) - 1 and role == "assistant"):
            raise _fail(
                f"{where}.content",
                "must not be empty (only a final assistant message, a prefill, may be)",
            )
        if isinstance(content, str):
            continue
        for b, block in enumerate(content):
            _validate_block(block, f"{where}.content.{b}", role)


def _validate_block(block: Any, where: str, role: str | None) -> None:
    if not isinstance(block, Mapping):
        raise _fail(where, "a content block must be an object with a 'type'")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _fail(f"{where}.type", "Field required")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise _fail(f"{where}.text", "Field required (a string)")
        if not text:
            raise _fail(f"{where}.text", "text content blocks must be non-empty")
    elif kind == "image":
        _validate_source(block.get("source"), f"{where}.source", ("base64", "url", "file"))
    elif kind == "document":
        _validate_source(
            block.get("source"), f"{where}.source", ("base64", "text", "content", "url", "file")
        )
    elif kind == "tool_use":
        for field in ("id", "name"):
            if not isinstance(block.get(field), str) or not block.get(field):
                raise _fail(f"{where}.{field}", "Field required (a non-empty string)")
        if not isinstance(block.get("input"), Mapping):
            raise _fail(f"{where}.input", "must be an object")
        if role == "user":
            raise _fail(where, "tool_use blocks may only appear in assistant messages")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str) or not block.get("tool_use_id"):
            raise _fail(f"{where}.tool_use_id", "Field required (a non-empty string)")
        content = block.get("content")
        if isinstance(content, list):
            for i, inner in enumerate(content):
                _validate_block(inner, f"{where}.content.{i}", None)
        elif content is not None and not isinstance(content, str):
            raise _fail(f"{where}.content", "must be a string or a list of content blocks")
    if role == "assistant" and kind in _USER_ONLY:
        raise _fail(where, f"{kind} blocks may only appear in user messages")


def _validate_source(source: Any, where: str, kinds: Sequence[str]) -> None:
    if not isinstance(source, Mapping):
        raise _fail(where, "Field required (an object with a 'type')")
    if source.get("type") not in kinds:
        raise _fail(f"{where}.type", f"must be one of {', '.join(kinds)}")


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _fail("system", "must be a string or a list of text blocks")
    for i, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise _fail(f"system.{i}", "system blocks must be text blocks")
        _validate_block(block, f"system.{i}", None)


def _validate_tools(tools: Any) -> set[str]:
    names: set[str] = set()
    if tools is None:
        return names
    if not isinstance(tools, list):
        raise _fail("tools", "must be a list of tool definitions")
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, Mapping):
            raise _fail(where, "a tool must be an object")
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _fail(
                f"{where}.name", f"String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$': {name!r}"
            )
        if name in names:
            raise _fail(f"{where}.name", f"tool names must be unique; {name!r} appears twice")
        names.add(name)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            continue  # a server tool (web search, bash …): its shape is the API's business
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise _fail(f"{where}.input_schema", "Field required (a JSON Schema object)")
        if schema.get("type") != "object":
            raise _fail(f"{where}.input_schema.type", "must be 'object'")
        props = schema.get("properties")
        if props is not None and not isinstance(props, Mapping):
            raise _fail(f"{where}.input_schema.properties", "must be an object")
        required = schema.get("required")
        if required is not None and (
            not isinstance(required, list) or not all(isinstance(r, str) for r in required)
        ):
            raise _fail(f"{where}.input_schema.required", "must be a list of property names")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise _fail(f"{where}.description", "must be a string")
    return names


def _validate_tool_choice(choice: Any, tool_names: set[str]) -> None:
    if choice is None:
        return
    if not isinstance(choice, Mapping) or choice.get("type") not in _TOOL_CHOICES:
        raise _fail("tool_choice.type", f"must be one of {', '.join(_TOOL_CHOICES)}")
    kind = choice["type"]
    if kind in ("any", "tool") and not tool_names:
        raise _fail("tool_choice", f"tool_choice {kind!r} needs at least one tool in 'tools'")
    if kind == "tool":
        name = choice.get("name")
        if name not in tool_names:
            raise _fail("tool_choice.name", f"no tool named {name!r} in 'tools'")


def _validate_sampling(body: Mapping[str, Any], api_version: str) -> None:
    present = [p for p in ("temperature", "top_p", "top_k") if p in body]
    if api_version == _SAMPLING_REMOVED_IN and present:
        raise _fail(
            present[0],
            f"not supported under anthropic-version {api_version}; remove it or send "
            "anthropic-version 2023-06-01",
        )
    for name in ("temperature", "top_p"):
        if name in body and (not _is_number(body[name]) or not 0.0 <= body[name] <= 1.0):
            raise _fail(name, f"must be a number between 0 and 1, got {body[name]!r}")
    if "top_k" in body and (not _is_int(body["top_k"]) or body["top_k"] < 0):
        raise _fail("top_k", f"must be a non-negative integer, got {body['top_k']!r}")


def _validate_thinking(thinking: Any, max_tokens: Any, count_tokens: bool) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, Mapping) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        raise _fail("thinking.type", "must be 'enabled', 'disabled' or 'adaptive'")
    if thinking["type"] != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < 1024:
        raise _fail("thinking.budget_tokens", "must be an integer >= 1024")
    if not count_tokens and _is_int(max_tokens) and budget >= max_tokens:
        raise _fail("thinking.budget_tokens", "must be less than max_tokens")


def _validate_cache_markers(body: Mapping[str, Any]) -> None:
    markers = list(iter_cache_markers(body))
    for path, marker in markers:
        if not isinstance(marker, Mapping) or marker.get("type") != "ephemeral":
            raise _fail(path, "must be {'type': 'ephemeral'} with an optional 'ttl'")
        if marker.get("ttl", "5m") not in ("5m", "1h"):
            raise _fail(f"{path}.ttl", f"must be '5m' or '1h', got {marker.get('ttl')!r}")
    if len(markers) > 4:
        raise _fail(
            "cache_control",
            f"A maximum of 4 blocks with cache_control may be provided. Found {len(markers)}.",
        )
    seen_5m = False
    for path, marker in markers:
        ttl = marker.get("ttl", "5m")
        if ttl == "1h" and seen_5m:
            raise _fail(
                path,
                "A `ttl='1h'` cache_control block must not come after a `ttl='5m'` "
                "cache_control block",
            )
        seen_5m = seen_5m or ttl == "5m"
    _check_marked_blocks(body)


def _check_marked_blocks(body: Mapping[str, Any]) -> None:
    # Empty text blocks are already rejected; thinking blocks cannot carry a marker at all.
    messages = body.get("messages") or []
    for m, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for b, block in enumerate(content):
            if block.get("type") in _UNMARKABLE and "cache_control" in block:
                raise _fail(
                    f"messages.{m}.content.{b}.cache_control",
                    "thinking blocks cannot be marked with cache_control directly",
                )
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                inner = block["content"]
                for i, sub in enumerate(inner[:-1]):
                    # The API lifts a marker on the last inner block to the parent; anywhere
                    # else it is an error (reference §1.2, release note 2025-05-01).
                    if isinstance(sub, Mapping) and "cache_control" in sub:
                        raise _fail(
                            f"messages.{m}.content.{b}.content.{i}.cache_control",
                            "put cache_control on the tool_result block, not on its content",
                        )
