"""LlamaIndex chat messages ↔ Messages API JSON, and tools ↔ API tool definitions.

Conversions keep the prompt's structure, because prompt caching depends on it:

* every system message becomes its own ``system`` text block (a :class:`CachePoint` after a
  system block marks it), instead of being joined into one string — so a long, stable
  system prompt can end in a breakpoint even when a later system message (retrieved context)
  changes on every call;
* images and documents stay content blocks;
* tool calls and tool results become ``tool_use`` / ``tool_result`` blocks with their ids,
  and thinking blocks keep their signatures, so an agent's history can be sent back as is.

Anything the API cannot take (audio, video, a tool result without its call id …) raises
:class:`haikucache.RequestValidationError` before any request is made.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    CitableBlock,
    CitationBlock,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)

from haikucache import RequestValidationError

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "from_api_message",
    "to_api_messages",
    "to_api_tool",
    "tool_choice_param",
]

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_SYSTEM_ROLES = frozenset({MessageRole.SYSTEM, MessageRole.DEVELOPER})
_ASSISTANT_ROLES = frozenset({MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL})
_TOOL_ROLES = frozenset({MessageRole.TOOL, MessageRole.FUNCTION})


def _fail(param: str, message: str) -> RequestValidationError:
    return RequestValidationError(message, param=param)


def _cache_control(point: CachePoint) -> dict[str, Any]:
    control: dict[str, Any] = {"type": point.cache_control.type}
    if point.cache_control.ttl:
        control["ttl"] = point.cache_control.ttl
    return control


def _mark_last(blocks: list[dict[str, Any]], control: Mapping[str, Any], param: str) -> None:
    if not blocks:
        raise _fail(param, "a CachePoint must follow a content block it can mark")
    blocks[-1]["cache_control"] = dict(control)


def _image(block: ImageBlock, param: str) -> dict[str, Any]:
    # A URL is passed as a URL: the API fetches it, and nothing is downloaded here.
    if block.url is not None and block.image is None and block.path is None:
        return {"type": "image", "source": {"type": "url", "url": str(block.url)}}
    media_type = block.image_mimetype
    data = block.resolve_image(as_base64=True).read()
    if media_type is None:
        block._guess_mimetype(base64.b64decode(data))
        media_type = block.image_mimetype
    if media_type not in IMAGE_MEDIA_TYPES:
        raise _fail(
            param,
            f"image type {media_type!r} is not supported; use one of "
            f"{', '.join(sorted(IMAGE_MEDIA_TYPES))}",
        )
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": data.decode("ascii")},
    }


def _document(block: DocumentBlock, param: str) -> dict[str, Any]:
    source: dict[str, Any]
    if block.url is not None and block.data is None and block.path is None:
        source = {"type": "url", "url": str(block.url)}
    else:
        raw = block.resolve_document().read()  # decoded bytes, whatever the source
        media_type = block.document_mimetype or "application/pdf"
        if media_type == "application/pdf":
            data = base64.b64encode(raw).decode("ascii")
            source = {"type": "base64", "media_type": media_type, "data": data}
        elif media_type.startswith("text/"):
            source = {"type": "text", "media_type": "text/plain", "data": raw.decode("utf-8")}
        else:
            raise _fail(
                param, f"document type {media_type!r} is not supported; use a PDF or plain text"
            )
    out: dict[str, Any] = {"type": "document", "source": source}
    if block.title and block.title != "input_document":
        out["title"] = block.title
    return out


def _tool_result_content(message: ChatMessage, param: str) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for i, block in enumerate(message.blocks):
        where = f"{param}.blocks.{i}"
        if isinstance(block, TextBlock):
            if block.text:
                content.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            content.append(_image(block, where))
        elif isinstance(block, DocumentBlock):
            content.append(_document(block, where))
        elif isinstance(block, CachePoint):
            _mark_last(content, _cache_control(block), where)
        else:
            raise _fail(where, f"a tool result cannot carry a {block.block_type!r} block")
    return content


def _thinking(block: ThinkingBlock) -> dict[str, Any] | None:
    info = block.additional_information or {}
    if info.get("redacted_data"):
        return {"type": "redacted_thinking", "data": info["redacted_data"]}
    signature = info.get("signature")
    if not signature:
        # Without its signature the API rejects a thinking block; it is only context anyway.
        return None
    return {"type": "thinking", "thinking": block.content or "", "signature": signature}


def _tool_use(block: ToolCallBlock, param: str) -> dict[str, Any]:
    if not block.tool_call_id:
        raise _fail(param, f"tool call {block.tool_name!r} has no tool_call_id")
    arguments: Any = block.tool_kwargs
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise _fail(param, f"tool call arguments are not JSON: {arguments[:200]!r}") from exc
    if not isinstance(arguments, Mapping):
        raise _fail(param, "tool call arguments must be a JSON object")
    return {
        "type": "tool_use",
        "id": block.tool_call_id,
        "name": block.tool_name,
        "input": dict(arguments),
    }


def _content(message: ChatMessage, role: str, param: str) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for i, block in enumerate(message.blocks):
        where = f"{param}.blocks.{i}"
        if isinstance(block, TextBlock):
            # The API rejects empty text blocks; an empty string carries nothing.
            if block.text:
                content.append({"type": "text", "text": block.text})
        elif isinstance(block, CachePoint):
            _mark_last(content, _cache_control(block), where)
        elif isinstance(block, ImageBlock):
            if role != "user":
                raise _fail(where, "only user messages (and tool results) can carry images")
            content.append(_image(block, where))
        elif isinstance(block, DocumentBlock):
            if role != "user":
                raise _fail(where, "only user messages (and tool results) can carry documents")
            content.append(_document(block, where))
        elif isinstance(block, ToolCallBlock):
            if role != "assistant":
                raise _fail(where, "only assistant messages can carry tool calls")
            content.append(_tool_use(block, where))
        elif isinstance(block, ThinkingBlock):
            if role == "assistant":
                thinking = _thinking(block)
                if thinking is not None:
                    content.append(thinking)
        elif isinstance(block, (CitableBlock, CitationBlock)):
            text = "".join(b.text for b in block.nested_blocks if isinstance(b, TextBlock))
            if text:
                content.append({"type": "text", "text": text})
        elif isinstance(block, (AudioBlock, VideoBlock)):
            raise _fail(where, f"Claude does not take {block.block_type} input")
        else:  # pragma: no cover - a block type added by a later llama-index-core
            raise _fail(where, f"unsupported content block {type(block).__name__}")
    # Tool calls stored the pre-0.13 way, in additional_kwargs.
    if role == "assistant" and not any(b["type"] == "tool_use" for b in content):
        for j, call in enumerate(message.additional_kwargs.get("tool_calls") or ()):
            if isinstance(call, Mapping) and call.get("type", "tool_use") == "tool_use":
                content.append(
                    _tool_use(
                        ToolCallBlock(
                            tool_call_id=call.get("id"),
                            tool_name=str(call.get("name", "")),
                            tool_kwargs=call.get("input") or {},
                        ),
                        f"{param}.additional_kwargs.tool_calls.{j}",
                    )
                )
    marker = message.additional_kwargs.get("cache_control")
    if isinstance(marker, Mapping) and content:
        content[-1]["cache_control"] = dict(marker)
    return content


def to_api_messages(
    messages: Sequence[ChatMessage],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system, messages)`` for a Messages request.

    System messages (wherever they are) become ``system`` text blocks, one per text block,
    in order; tool messages become ``tool_result`` blocks in a user turn; consecutive turns of
    the same role are merged, as the API expects alternating turns.

    Raises:
        RequestValidationError: a message the API cannot take.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for m, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise _fail(f"messages.{m}", f"expected a ChatMessage, got {type(message).__name__}")
        param = f"messages.{m}"
        role = MessageRole(message.role)
        if role in _SYSTEM_ROLES:
            for i, block in enumerate(message.blocks):
                if isinstance(block, TextBlock):
                    if block.text:
                        system.append({"type": "text", "text": block.text})
                elif isinstance(block, CachePoint):
                    _mark_last(system, _cache_control(block), f"{param}.blocks.{i}")
                else:
                    raise _fail(
                        f"{param}.blocks.{i}",
                        f"a system message can only carry text, not {block.block_type!r}",
                    )
            marker = message.additional_kwargs.get("cache_control")
            if isinstance(marker, Mapping) and system:
                system[-1]["cache_control"] = dict(marker)
            continue
        if role in _TOOL_ROLES:
            call_id = message.additional_kwargs.get(
                "tool_call_id"
            ) or message.additional_kwargs.get("tool_use_id")
            if not call_id:
                raise _fail(
                    f"{param}.additional_kwargs.tool_call_id",
                    "a tool message needs the id of the tool call it answers",
                )
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(call_id),
                "content": _tool_result_content(message, param),
            }
            if message.additional_kwargs.get("is_error"):
                result["is_error"] = True
            api_role, content = "user", [result]
        else:
            api_role = "assistant" if role in _ASSISTANT_ROLES else "user"
            content = _content(message, api_role, param)
            if not content:
                continue  # an empty turn carries nothing, and the API rejects it
        if turns and turns[-1]["role"] == api_role:
            turns[-1]["content"].extend(content)
        else:
            turns.append({"role": api_role, "content": content})
    return system, turns


def from_api_message(message: Mapping[str, Any]) -> ChatMessage:
    """The assistant :class:`ChatMessage` for a Messages API answer.

    Text becomes :class:`TextBlock`, ``tool_use`` :class:`ToolCallBlock` (id, name, input),
    ``thinking`` :class:`ThinkingBlock` with its signature in ``additional_information``.
    """
    blocks: list[Any] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            blocks.append(TextBlock(text=block.get("text", "")))
        elif kind == "tool_use":
            blocks.append(
                ToolCallBlock(
                    tool_call_id=block.get("id"),
                    tool_name=block.get("name", ""),
                    tool_kwargs=dict(block.get("input") or {}),
                )
            )
        elif kind == "thinking":
            blocks.append(
                ThinkingBlock(
                    content=block.get("thinking", ""),
                    additional_information={"signature": block.get("signature", "")},
                )
            )
        elif kind == "redacted_thinking":
            blocks.append(
                ThinkingBlock(additional_information={"redacted_data": block.get("data")})
            )
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)


def to_api_tool(tool: BaseTool) -> dict[str, Any]:
    """The Messages API definition of a LlamaIndex tool."""
    meta = tool.metadata
    schema = meta.get_parameters_dict()
    return {
        "name": meta.get_name(),
        "description": meta.description,
        "input_schema": schema,
    }


def tool_choice_param(
    choice: str | Mapping[str, Any] | None,
    *,
    tool_required: bool,
    allow_parallel_tool_calls: bool,
    tool_names: Sequence[str],
) -> dict[str, Any]:
    """``tool_choice`` from LlamaIndex's conventions.

    ``None`` is ``auto`` (``any`` when ``tool_required``); ``"auto"``, ``"any"``,
    ``"required"`` (= ``any``) and ``"none"`` are modes; any other string names a tool; a
    mapping is sent as it is.
    """
    if isinstance(choice, Mapping):
        return dict(choice)
    if choice is None:
        out: dict[str, Any] = {"type": "any" if tool_required else "auto"}
    elif choice in ("auto", "any", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, str):
        if choice not in tool_names:
            raise _fail("tool_choice", f"no tool named {choice!r} among {list(tool_names)}")
        out = {"type": "tool", "name": choice}
    else:
        raise _fail("tool_choice", f"expected a string or a mapping, got {type(choice).__name__}")
    if not allow_parallel_tool_calls and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out
