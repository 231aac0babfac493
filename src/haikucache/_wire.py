"""A typed view of Messages API requests, and local validation of what the API would reject.

The request types are ``TypedDict``s over the wire JSON (what the engine actually works on),
so a plain dict written by hand, by the ``anthropic`` SDK or by LangChain type-checks as is.

:func:`validate_request` raises :class:`RequestValidationError` — with the dotted path of the
offending field — for anything the real API answers with a 400, before any money is spent.
It checks only rules the API documents or is observed to enforce (reference §1.2–1.7, §4.2,
§4.4, §4.6, §4.10), and whatever the body holds it raises nothing else: one iterative pass
first proves the whole body is JSON the API can parse (no NaN, no lone surrogate, no set or
bytes, no absurd nesting), so the structural checks that follow work on plain JSON data.
Top-level fields are checked against :data:`MESSAGES_FIELDS` (generally available and beta
fields); a prompt is checked against the model's context window only when a cheap lower
bound on its tokens is already over it, so a request that fits is never rejected.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeGuard, Union

if sys.version_info >= (3, 11):
    from typing import NotRequired, Required
else:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired, Required

from ._catalog import lookup_model
from ._exceptions import RequestValidationError

__all__ = [
    "API_VERSIONS",
    "COUNT_TOKENS_FIELDS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MESSAGES_FIELDS",
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

#: Top-level fields of ``POST /v1/messages``: generally available (reference §4.2) and beta
#: (those the emulator accepts too). Anything else is rejected, as the API does.
MESSAGES_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "metadata",
        "thinking",
        "service_tier",
        "cache_control",
        "output_config",
        "output_format",
        "inference_geo",
        "container",
        "context_management",
        "mcp_servers",
        "speed",
        "diagnostics",
        "user_profile_id",
        "workspace_id",
    }
)
#: Top-level fields of ``POST /v1/messages/count_tokens`` (reference §4.8): no ``max_tokens``,
#: ``stream``, sampling, ``stop_sequences``, ``metadata`` or ``service_tier``.
COUNT_TOKENS_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "output_format",
        "context_management",
        "mcp_servers",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)

# Nesting a JSON parser accepts without trouble; real requests stay far below (a tool schema
# nested 20 objects deep is about 45 levels), and every recursive step after validation (the
# request key, the planner, ``json.dumps``) stays far from Python's recursion limit.
MAX_DEPTH = 128
# The API (its proxy) answers 413 above 32 MB (reference §4.6). A string of n characters is at
# least n bytes of JSON, so the characters of the body's strings are a lower bound.
MAX_BODY_BYTES = 32 * 1024 * 1024
# JSON numbers are doubles to most parsers; an integer beyond a double's range is rejected by
# them (and past 4,300 digits Python cannot even print it).
_MAX_INT_BITS = 1024
# Prompt length. Nothing that passes for text averages more than ~7 characters a token (a
# common six-letter word with its space); prose runs ~4 and code ~3, which is what the
# planner's estimator assumes (3.4). Counting 8 characters a token, with runs of whitespace
# counted once, gives a lower bound: a prompt is rejected only when it is surely too long.
_MAX_CHARS_PER_TOKEN = 8
_MAX_MESSAGES = 100_000
_MAX_USER_ID_CHARS = 256

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_THINKING_DISPLAYS = ("summarized", "omitted")
_SERVICE_TIERS = ("auto", "standard_only")
_TTLS = ("5m", "1h")
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})
# Content blocks each role may send (reference §1.2; the API's content block unions).
_USER_BLOCKS = frozenset(
    {"text", "image", "document", "tool_result", "search_result", "container_upload"}
)
_ASSISTANT_BLOCKS = frozenset(
    {
        "text",
        "tool_use",
        "document",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
_TOOL_RESULT_BLOCKS = ("text", "image", "document", "search_result", "tool_reference")
_IMAGE_SOURCES = ("base64", "url", "file")
_IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_DOCUMENT_SOURCES = ("base64", "text", "content", "url", "file")


def _fail(param: str, message: str) -> RequestValidationError:
    return RequestValidationError(message, param=param)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _show(value: Any) -> str:
    """``repr`` of a value from the request, cut short: it may be a whole document."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}…({len(text) - 50} more)"


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

    Whatever ``body`` holds, nothing else is raised: values that are not JSON, NaN,
    lone surrogates and absurd nesting are validation errors too.

    Args:
        body: the JSON body of ``POST /v1/messages`` (or of ``count_tokens`` when
            ``count_tokens`` is true, where ``max_tokens`` is not required).
        api_version: the ``anthropic-version`` the request will be sent with; under
            ``2026-10-21`` the sampling parameters are rejected (reference §4.10).
        count_tokens: validate a ``/v1/messages/count_tokens`` body.

    Raises:
        RequestValidationError: ``.param`` names the offending field (a dotted path).
    """
    if not isinstance(body, Mapping):
        raise _fail("body", f"expected a JSON object, got {type(body).__name__}")
    if api_version not in API_VERSIONS:
        raise _fail(
            "anthropic-version",
            f"unknown API version {_show(api_version)}; expected one of {', '.join(API_VERSIONS)}",
        )
    chars = _check_json(body)
    if chars > MAX_BODY_BYTES:
        raise _fail(
            "body",
            f"the request is over the API's size limit of {MAX_BODY_BYTES:,} bytes "
            f"(its strings alone hold {chars:,} characters)",
        )
    _check_fields(body, COUNT_TOKENS_FIELDS if count_tokens else MESSAGES_FIELDS)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _fail("model", "Field required (a non-empty string such as 'claude-haiku-4-5')")
    info = lookup_model(model)

    if not count_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _fail("max_tokens", "Field required")
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _fail("max_tokens", f"must be an integer >= 1, got {_show(max_tokens)}")
        if info is not None and max_tokens > info.max_output_tokens:
            raise _fail(
                "max_tokens",
                f"{max_tokens} > {info.max_output_tokens}, which is the maximum allowed number "
                f"of output tokens for {model}",
            )
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _fail("stream", "must be a boolean")

    _validate_messages(body.get("messages"), api_version)
    _validate_system(body.get("system"))
    tool_names = _validate_tools(body.get("tools"))
    _validate_tool_choice(body.get("tool_choice"), tool_names)
    _validate_sampling(body, api_version)
    _validate_thinking(body, count_tokens)
    _validate_cache_markers(body)
    _validate_stop_sequences(body.get("stop_sequences"))
    _validate_metadata(body.get("metadata"))
    tier = body.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise _fail("service_tier", f"must be 'auto' or 'standard_only', got {_show(tier)}")
    for name in ("output_config", "output_format"):
        _validate_output_format(body, name)
    # Counting tokens is how a caller finds out how far over the window a prompt is.
    window = None if info is None or count_tokens else info.context_window
    if window is not None and chars > window * _MAX_CHARS_PER_TOKEN:
        _validate_prompt_length(body, model, window)


# --------------------------------------------------------------------------- JSON


def _check_json(body: Mapping[str, Any]) -> int:
    """Check in one iterative pass that the whole body is JSON the API can parse.

    Rejects what ``json.dumps`` would choke on or send as something the API cannot read:
    values of other types, keys that are not strings, NaN and infinities, strings with
    lone surrogates (not encodable as UTF-8) and nesting beyond :data:`MAX_DEPTH`. A loop
    with its own stack, not recursion, so no depth can raise ``RecursionError``.

    Returns:
        the number of characters in the body's strings.
    """
    chars = 0
    # (container, its depth, where it is): ``where`` is (parent's where, key), turned into a
    # dotted path only when something is wrong.
    stack: list[tuple[Any, int, Any]] = [(body, 1, None)]
    while stack:
        node, depth, where = stack.pop()
        pairs: Iterable[tuple[Any, Any]]
        if type(node) is dict or isinstance(node, Mapping):
            for key in node:
                if type(key) is not str or not key.isascii():
                    _check_key(key, where)
            pairs = node.items()
        else:
            pairs = enumerate(node)
        for key, value in pairs:
            kind = type(value)
            if kind is str:
                if not value.isascii():
                    _check_text(value, where, key)
                chars += len(value)
            elif kind is dict or kind is list:
                if depth >= MAX_DEPTH:
                    raise _fail(_path(where, key), f"nested more than {MAX_DEPTH} levels deep")
                stack.append((value, depth + 1, (where, key)))
            elif kind is int:
                if value.bit_length() > _MAX_INT_BITS:
                    raise _fail(_path(where, key), "integer too large for a JSON number")
            elif kind is float:
                if not math.isfinite(value):
                    raise _fail(
                        _path(where, key),
                        f"{value!r} is not a JSON number (NaN and Infinity cannot be sent)",
                    )
            elif value is not None and kind is not bool:
                chars += _check_other(value, depth, where, key, stack)
    return chars


def _check_other(value: Any, depth: int, where: Any, key: Any, stack: list[Any]) -> int:
    """Subclasses of the JSON types (``IntEnum``, ``OrderedDict``, tuples …) pass; else reject."""
    if isinstance(value, str):
        _check_text(value, where, key)
        return len(value)
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise _fail(_path(where, key), "integer too large for a JSON number")
        return 0
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(_path(where, key), f"{value!r} is not a JSON number")
        return 0
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_DEPTH:
            raise _fail(_path(where, key), f"nested more than {MAX_DEPTH} levels deep")
        stack.append((value, depth + 1, (where, key)))
        return 0
    raise _fail(
        _path(where, key),
        f"not JSON: got a value of type {type(value).__name__}; use objects (dict), arrays "
        "(list), strings, finite numbers, booleans or null",
    )


def _check_key(key: Any, where: Any) -> None:
    if not isinstance(key, str):
        raise _fail(_path(where), f"object keys must be strings, got a {type(key).__name__}")
    _check_text(key, where, None)


def _check_text(text: str, where: Any, key: Any) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise _fail(
            _path(where, key) if key is not None else _path(where),
            f"contains a lone surrogate (U+{code:04X} at index {exc.start}), which cannot be "
            "encoded as UTF-8 JSON",
        ) from None


def _path(where: Any, key: Any = None) -> str:
    parts = [] if key is None else [key]
    while where is not None:
        where, part = where
        parts.append(part)
    parts.reverse()
    if len(parts) > 16:  # absurdly deep: where it starts is enough
        parts = [*parts[:8], f"…({len(parts) - 8} more)"]
    return ".".join(p if isinstance(p, str) else repr(p) for p in parts) or "body"


def _check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _fail(
                name or "''", f"Extra inputs are not permitted (unknown field {_show(name)}{hint})"
            )


# --------------------------------------------------------------------------- messages


def _validate_messages(messages: Any, api_version: str) -> None:
    if messages is None:
        raise _fail("messages", "Field required")
    if not isinstance(messages, list):
        raise _fail("messages", "must be a list of {role, content} objects")
    if not messages:
        raise _fail("messages", "at least one message is required")
    if len(messages) > _MAX_MESSAGES:
        raise _fail("messages", f"at most {_MAX_MESSAGES:,} messages, got {len(messages):,}")
    last = len(messages) - 1
    for m, message in enumerate(messages):
        where = f"messages.{m}"
        if not isinstance(message, Mapping):
            raise _fail(where, "must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in _ROLES:
            raise _fail(f"{where}.role", f"must be 'user' or 'assistant', got {_show(role)}")
        if m == 0 and role != "user":
            raise _fail(f"{where}.role", "the first message must use the 'user' role")
        if "content" not in message:
            raise _fail(f"{where}.content", "Field required")
        content = message["content"]
        if not isinstance(content, (str, list)):
            raise _fail(f"{where}.content", "must be a string or a list of content blocks")
        if not content and not (m == last and role == "assistant"):
            raise _fail(
                f"{where}.content",
                "must not be empty (only a final assistant message, a prefill, may be)",
            )
        if isinstance(content, list):
            for b, block in enumerate(content):
                _validate_block(block, f"{where}.content.{b}", role, api_version)
    final = messages[last]
    if final["role"] == "assistant":
        content = final["content"]
        text = (
            content
            if isinstance(content, str)
            else "".join(b["text"] for b in content if b["type"] == "text")
        )
        if text != text.rstrip():
            raise _fail(
                f"messages.{last}.content",
                "final assistant content cannot end with trailing whitespace",
            )
    _check_tool_pairing(messages)


def _validate_block(block: Any, where: str, role: str, api_version: str) -> None:
    if not isinstance(block, Mapping):
        raise _fail(where, "a content block must be an object with a 'type'")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _fail(f"{where}.type", "Field required (a string such as 'text')")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed:
        if kind in _USER_BLOCKS or kind in _ASSISTANT_BLOCKS:
            other = "assistant" if role == "user" else "user"
            raise _fail(where, f"{kind} blocks may only appear in {other} messages")
        raise _fail(
            f"{where}.type",
            f"unknown content block type {_show(kind)}; {role} messages may hold "
            f"{', '.join(sorted(allowed))}",
        )
    if kind == "text":
        _validate_text(block, where)
        if block["text"].isspace():
            raise _fail(f"{where}.text", "text content blocks must contain non-whitespace text")
        if role == "user" and block.get("citations") and api_version == _SAMPLING_REMOVED_IN:
            raise _fail(
                f"{where}.citations",
                f"citations on user text blocks are not accepted under anthropic-version "
                f"{api_version}",
            )
    elif kind == "image":
        _validate_image(block, where)
    elif kind == "document":
        if role == "assistant" and api_version == _SAMPLING_REMOVED_IN:
            raise _fail(
                where,
                f"document blocks may only appear in user messages under anthropic-version "
                f"{api_version}",
            )
        _validate_document(block, where)
    elif kind == "tool_use":
        for field in ("id", "name"):
            if not _is_text(block.get(field)):
                raise _fail(f"{where}.{field}", "Field required (a non-empty string)")
        if not isinstance(block.get("input"), Mapping):
            raise _fail(f"{where}.input", "must be an object")
    elif kind == "tool_result":
        _validate_tool_result(block, where)
    elif kind in _UNMARKABLE:
        if block.get("cache_control") is not None:
            raise _fail(
                f"{where}.cache_control",
                "thinking blocks cannot be marked with cache_control directly; mark a later block",
            )
        fields = ("thinking", "signature") if kind == "thinking" else ("data",)
        for field in fields:
            if not isinstance(block.get(field), str):
                raise _fail(f"{where}.{field}", "Field required (a string)")


def _validate_text(block: Mapping[str, Any], where: str) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise _fail(f"{where}.text", "Field required (a string)")
    if not text:
        raise _fail(f"{where}.text", "text content blocks must be non-empty")


def _validate_image(block: Mapping[str, Any], where: str) -> None:
    source = _source(block, where, _IMAGE_SOURCES)
    kind = source["type"]
    if kind == "base64":
        if source.get("media_type") not in _IMAGE_MEDIA_TYPES:
            raise _fail(
                f"{where}.source.media_type", f"must be one of {', '.join(_IMAGE_MEDIA_TYPES)}"
            )
        if not _is_text(source.get("data")):
            raise _fail(f"{where}.source.data", "Field required (base64 image data)")
    else:
        _source_reference(source, where)


def _validate_document(block: Mapping[str, Any], where: str) -> None:
    source = _source(block, where, _DOCUMENT_SOURCES)
    kind = source["type"]
    if kind == "text":
        if source.get("media_type", "text/plain") != "text/plain":
            raise _fail(f"{where}.source.media_type", "must be 'text/plain'")
        if not isinstance(source.get("data"), str):
            raise _fail(f"{where}.source.data", "Field required (a string)")
    elif kind == "base64":
        if source.get("media_type") != "application/pdf":
            raise _fail(f"{where}.source.media_type", "must be 'application/pdf'")
        if not _is_text(source.get("data")):
            raise _fail(f"{where}.source.data", "Field required (base64 PDF data)")
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return
        if not isinstance(content, list):
            raise _fail(f"{where}.source.content", "Field required (a string or a list of blocks)")
        for i, inner in enumerate(content):
            path = f"{where}.source.content.{i}"
            kind = inner.get("type") if isinstance(inner, Mapping) else None
            if kind == "text":
                _validate_text(inner, path)
            elif kind == "image":
                _validate_image(inner, path)
            else:
                raise _fail(path, "must be a text or image block")
            if i < len(content) - 1 and inner.get("cache_control") is not None:
                raise _fail(
                    f"{path}.cache_control",
                    "put cache_control on the document block, not on its content",
                )
    else:
        _source_reference(source, where)


def _source(block: Mapping[str, Any], where: str, kinds: Sequence[str]) -> Mapping[str, Any]:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _fail(f"{where}.source", "Field required (an object with a 'type')")
    if source.get("type") not in kinds:
        raise _fail(f"{where}.source.type", f"must be one of {', '.join(kinds)}")
    return source


def _source_reference(source: Mapping[str, Any], where: str) -> None:
    field = "url" if source["type"] == "url" else "file_id"
    if not _is_text(source.get(field)):
        raise _fail(f"{where}.source.{field}", "Field required (a non-empty string)")


def _validate_tool_result(block: Mapping[str, Any], where: str) -> None:
    if not _is_text(block.get("tool_use_id")):
        raise _fail(f"{where}.tool_use_id", "Field required (a non-empty string)")
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise _fail(f"{where}.is_error", "must be a boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _fail(f"{where}.content", "must be a string or a list of content blocks")
    for i, inner in enumerate(content):
        path = f"{where}.content.{i}"
        if not isinstance(inner, Mapping):
            raise _fail(path, "a content block must be an object with a 'type'")
        kind = inner.get("type")
        if kind == "text":
            _validate_text(inner, path)
        elif kind == "image":
            _validate_image(inner, path)
        elif kind == "document":
            _validate_document(inner, path)
        elif kind not in _TOOL_RESULT_BLOCKS:
            raise _fail(
                f"{path}.type",
                f"a tool_result may hold {', '.join(_TOOL_RESULT_BLOCKS)} blocks, got {_show(kind)}",
            )


def _check_tool_pairing(messages: list[Any]) -> None:
    # Consecutive turns of one role are merged into one turn by the API (reference §4.2).
    turns: list[tuple[str, list[tuple[str, Mapping[str, Any]]]]] = []
    for m, message in enumerate(messages):
        content = message["content"]
        blocks = (
            [(f"messages.{m}.content.{b}", block) for b, block in enumerate(content)]
            if isinstance(content, list)
            else []
        )
        if turns and turns[-1][0] == message["role"]:
            turns[-1][1].extend(blocks)
        else:
            turns.append((message["role"], blocks))
    asked: dict[str, str] = {}  # tool_use id -> where, of the previous assistant turn
    for role, blocks in turns:
        if role == "assistant":
            asked = {b["id"]: path for path, b in blocks if b["type"] == "tool_use"}
            continue
        answered = {b["tool_use_id"] for _, b in blocks if b["type"] == "tool_result"}
        for path, b in blocks:
            if b["type"] == "tool_result" and b["tool_use_id"] not in asked:
                raise _fail(
                    f"{path}.tool_use_id",
                    f"no tool_use block with id {_show(b['tool_use_id'])} in the previous "
                    "assistant message; each tool_result must answer a tool_use of the turn "
                    "just before it",
                )
        missing = [i for i in asked if i not in answered]
        if missing:
            raise _fail(
                asked[missing[0]],
                f"tool_use ids were found without tool_result blocks immediately after: "
                f"{', '.join(missing)}; each tool_use needs a tool_result in the next message",
            )
        asked = {}


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _fail("system", "must be a string or a list of text blocks")
    for i, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise _fail(f"system.{i}", "system blocks must be text blocks")
        _validate_text(block, f"system.{i}")


# --------------------------------------------------------------------------- tools


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
                f"{where}.name",
                f"String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$': {_show(name)}",
            )
        if name in names:
            raise _fail(f"{where}.name", f"tool names must be unique; {_show(name)} appears twice")
        names.add(name)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            if not isinstance(kind, str):
                raise _fail(f"{where}.type", "must be a string such as 'web_search_20250305'")
            continue  # a server tool (web search, bash …): its shape is the API's business
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise _fail(f"{where}.input_schema", "Field required (a JSON Schema object)")
        if schema.get("type") != "object":
            raise _fail(f"{where}.input_schema.type", "must be 'object'")
        for combinator in ("oneOf", "anyOf", "allOf"):
            if combinator in schema:
                raise _fail(
                    f"{where}.input_schema.{combinator}",
                    "input_schema does not support oneOf, allOf, or anyOf at the top level",
                )
        props = schema.get("properties")
        if props is not None:
            if not isinstance(props, Mapping):
                raise _fail(f"{where}.input_schema.properties", "must be an object")
            for prop, sub in props.items():
                if not isinstance(sub, (Mapping, bool)):
                    raise _fail(
                        f"{where}.input_schema.properties.{prop}",
                        "must be a JSON Schema (an object or a boolean)",
                    )
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
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail(
            "tool_choice.disable_parallel_tool_use", f"must be a boolean, got {_show(parallel)}"
        )
    if kind in ("any", "tool") and not tool_names:
        raise _fail("tool_choice", f"tool_choice {_show(kind)} needs at least one tool in 'tools'")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or name not in tool_names:
            raise _fail("tool_choice.name", f"no tool named {_show(name)} in 'tools'")


# --------------------------------------------------------------------------- parameters


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
            raise _fail(name, f"must be a number between 0 and 1, got {_show(body[name])}")
    if "top_k" in body and (not _is_int(body["top_k"]) or body["top_k"] < 0):
        raise _fail("top_k", f"must be a non-negative integer, got {_show(body['top_k'])}")


def _validate_thinking(body: Mapping[str, Any], count_tokens: bool) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, Mapping) or thinking.get("type") not in _THINKING_TYPES:
        raise _fail("thinking.type", "must be 'enabled', 'disabled' or 'adaptive'")
    display = thinking.get("display")
    if display is not None and display not in _THINKING_DISPLAYS:
        raise _fail("thinking.display", f"must be 'summarized' or 'omitted', got {_show(display)}")
    kind = thinking["type"]
    if kind == "disabled":
        return
    # Extended thinking works only with default sampling and free tool choice.
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in ("any", "tool"):
        raise _fail("thinking", "thinking may not be enabled when tool_choice forces tool use")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _fail("temperature", "may only be set to 1 when thinking is enabled")
    if body.get("top_k") is not None:
        raise _fail("top_k", "must be unset when thinking is enabled")
    top_p = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise _fail("top_p", "must be between 0.95 and 1 when thinking is enabled")
    if kind == "adaptive":
        return
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < 1024:
        raise _fail("thinking.budget_tokens", "must be an integer >= 1024")
    max_tokens = body.get("max_tokens")
    if not count_tokens and _is_int(max_tokens) and budget >= max_tokens:
        raise _fail("thinking.budget_tokens", "must be less than max_tokens")


def _validate_stop_sequences(stop: Any) -> None:
    if stop is None:
        return
    if not isinstance(stop, list):
        raise _fail("stop_sequences", "must be a list of strings")
    for i, sequence in enumerate(stop):
        if not isinstance(sequence, str) or not sequence.strip():
            raise _fail(
                f"stop_sequences.{i}",
                f"each stop sequence must be a string with non-whitespace characters, "
                f"got {_show(sequence)}",
            )


def _validate_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise _fail("metadata", "must be an object")
    for key in metadata:
        if key != "user_id":
            raise _fail(f"metadata.{key}", "Extra inputs are not permitted (only 'user_id')")
    user_id = metadata.get("user_id")
    if user_id is None:
        return
    if not isinstance(user_id, str):
        raise _fail("metadata.user_id", f"must be a string, got {type(user_id).__name__}")
    if len(user_id) > _MAX_USER_ID_CHARS:
        raise _fail(
            "metadata.user_id",
            f"String should have at most {_MAX_USER_ID_CHARS} characters, got {len(user_id)}",
        )


def _validate_output_format(body: Mapping[str, Any], name: str) -> None:
    """``output_config.format`` (and the older beta ``output_format``): a format object."""
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise _fail(name, "must be an object")
    where = name
    if name == "output_config":
        where, value = f"{name}.format", value.get("format")
        if value is None:
            return
        if not isinstance(value, Mapping):
            raise _fail(where, "must be an object such as {'type': 'json_schema', 'schema': {...}}")
    if "schema" in value and not isinstance(value["schema"], Mapping):
        raise _fail(f"{where}.schema", "must be a JSON Schema object")


# --------------------------------------------------------------------------- prompt caching


def _validate_cache_markers(body: Mapping[str, Any]) -> None:
    markers = list(iter_cache_markers(body))
    for path, marker in markers:
        _check_marker(path, marker)
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
    auto = body.get("cache_control")
    if auto is not None:
        # Automatic caching marks the last block that can carry a marker; one already
        # there must agree with it.
        path, marker = _last_marker(body)
        if marker is not None and marker.get("ttl", "5m") != auto.get("ttl", "5m"):
            raise _fail(
                "cache_control",
                f"the top-level cache_control (ttl={auto.get('ttl', '5m')!r}) conflicts with "
                f"the one on the last cacheable block {path} (ttl={marker.get('ttl', '5m')!r})",
            )
    _check_inner_markers(body)


def _check_marker(path: str, marker: Any) -> None:
    if not isinstance(marker, Mapping) or marker.get("type") != "ephemeral":
        raise _fail(path, "must be {'type': 'ephemeral'} with an optional 'ttl'")
    if marker.get("ttl", "5m") not in _TTLS:
        raise _fail(f"{path}.ttl", f"must be '5m' or '1h', got {_show(marker.get('ttl'))}")
    for key in marker:
        if key not in ("type", "ttl"):
            raise _fail(f"{path}.{key}", "Extra inputs are not permitted")


def _last_marker(body: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    """The last block that can carry a marker (thinking blocks cannot), and its marker.

    Always a message block: the first message is a non-empty user turn.
    """
    messages = body["messages"]
    for m in range(len(messages) - 1, -1, -1):
        content = messages[m]["content"]
        if isinstance(content, str):
            if content:
                return f"messages.{m}.content", None
            continue
        for b in range(len(content) - 1, -1, -1):
            block = content[b]
            if block["type"] in _UNMARKABLE:
                continue
            marker = block.get("cache_control")
            inner = block.get("content")
            if marker is None and block["type"] == "tool_result" and isinstance(inner, list):
                marker = inner[-1].get("cache_control") if inner else None  # lifted (§1.2)
            return f"messages.{m}.content.{b}", marker
    return "messages", None


def _check_inner_markers(body: Mapping[str, Any]) -> None:
    for m, message in enumerate(body["messages"]):
        content = message["content"]
        if not isinstance(content, list):
            continue
        for b, block in enumerate(content):
            inner = block.get("content")
            if block["type"] != "tool_result" or not isinstance(inner, list) or not inner:
                continue
            where = f"messages.{m}.content.{b}.content"
            for i, sub in enumerate(inner[:-1]):
                # The API lifts a marker on the last inner block to the parent; anywhere
                # else it is an error (reference §1.2, release note 2025-05-01).
                if "cache_control" in sub:
                    raise _fail(
                        f"{where}.{i}.cache_control",
                        "put cache_control on the tool_result block, not on its content",
                    )
            if "cache_control" in inner[-1] and "cache_control" in block:
                _check_marker(f"{where}.{len(inner) - 1}.cache_control", inner[-1]["cache_control"])


# --------------------------------------------------------------------------- prompt length


def _validate_prompt_length(body: Mapping[str, Any], model: str, window: int) -> None:
    """Reject a prompt that is surely longer than the model's context window.

    Called only for bodies with more than ``window × 8`` characters of strings. Counts only
    text the model reads as text (not image or PDF data, not earlier thinking), with runs of
    whitespace counted once, at :data:`_MAX_CHARS_PER_TOKEN` characters a token.
    """
    chars = sum(len(" ".join(text.split())) for text in _prompt_texts(body))
    tokens = chars // _MAX_CHARS_PER_TOKEN
    if tokens > window:
        raise _fail(
            "messages",
            f"prompt is too long: at least {tokens:,} tokens > {window:,} maximum for {model} "
            "(estimated locally)",
        )


def _prompt_texts(body: Mapping[str, Any]) -> Iterator[str]:
    for tool in body.get("tools") or ():
        description = tool.get("description")
        if isinstance(description, str):
            yield description
    system = body.get("system")
    if isinstance(system, str):
        yield system
    elif isinstance(system, list):
        for block in system:
            yield block["text"]
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            yield content
            continue
        for block in content:
            yield from _block_texts(block)


def _block_texts(block: Mapping[str, Any]) -> Iterator[str]:
    kind = block["type"]
    if kind == "text":
        yield block["text"]
    elif kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for inner in content:
                yield from _block_texts(inner)
    elif kind == "document":
        source = block["source"]
        if source["type"] == "text":
            yield source["data"]
        elif source["type"] == "content":
            content = source["content"]
            if isinstance(content, str):
                yield content
            else:
                yield from (inner["text"] for inner in content if inner["type"] == "text")
