"""Validate a Messages request and flatten it into the blocks prompt caching works on.

One pass does both, because the real API's cache is defined on the same structure it
validates (reference §1.11): tools → system blocks → message content blocks, each with its
token count, a cumulative prefix key and its ``cache_control`` marker. Messages name the
offending field with a dotted path, in the style of the real API
(``messages.2.content.0.cache_control.ttl: Input should be '5m' or '1h'``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import xxhash

from haikucache._catalog import ModelInfo, known_models, lookup_model
from haikucache.testing._tokenizer import Tokenizer

__all__ = [
    "API_MODELS",
    "ASSISTANT_PRIMER_TOKENS",
    "MESSAGE_OVERHEAD_TOKENS",
    "REQUEST_OVERHEAD_TOKENS",
    "SYSTEM_OVERHEAD_TOKENS",
    "TOOL_CHOICE_FORCED_TOKENS",
    "TOOL_CHOICE_FREE_TOKENS",
    "TOOL_OVERHEAD_TOKENS",
    "APIError",
    "Flat",
    "ParsedRequest",
    "parse_request",
]

# Fixed costs of the prompt template around the content. Chosen so the reference's
# example (system "Be brief", user "Hi") counts 14 tokens, like the real API (§6).
REQUEST_OVERHEAD_TOKENS = 3
SYSTEM_OVERHEAD_TOKENS = 3
MESSAGE_OVERHEAD_TOKENS = 4
ASSISTANT_PRIMER_TOKENS = 1
TOOL_OVERHEAD_TOKENS = 4
# The hidden tool-use system prompt of Claude Haiku 4.5 (reference §2, pricing 2026-03).
TOOL_CHOICE_FREE_TOKENS = 346  # tool_choice auto / none
TOOL_CHOICE_FORCED_TOKENS = 313  # tool_choice any / tool

API_VERSIONS = ("2023-06-01", "2026-10-21")

# The model ids the real API answers: every catalogue model by alias and dated id, plus the
# other Sonnet and Opus models the reference names (§1.5: Sonnet 4, Opus 4, Sonnet 4.6).
# Anything else gets the API's 404 ``model: <id>``; Bedrock and Vertex spellings included,
# since the first-party API does not take them either.
API_MODELS = frozenset(
    {
        *(m.name for m in known_models()),
        *(m.dated_id for m in known_models()),
        "claude-3-5-haiku-latest",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
        "claude-opus-4-0",
        "claude-opus-4-20250514",
        "claude-sonnet-4-6",
    }
)
MAX_BREAKPOINTS = 4

_MESSAGES_FIELDS = frozenset(
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
_COUNT_FIELDS = frozenset(
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
_SAMPLING = ("temperature", "top_p", "top_k")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_USER_BLOCKS = ("text", "image", "document", "tool_result", "search_result")
_ASSISTANT_BLOCKS = (
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
)
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


class APIError(Exception):
    """An error answer: HTTP status, ``error.type`` and message."""

    def __init__(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}


def invalid(message: str) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, "invalid_request_error", message)


@dataclass
class Flat:
    """One block of the flattened prompt.

    Attributes:
        path: where it came from, e.g. ``messages.3.content.1``.
        tokens: its tokens, including template overhead attached to it.
        material: the bytes its prefix key hashes (never includes ``cache_control``).
        ttl: the TTL of its explicit ``cache_control`` marker, or ``None``.
        eligible: whether automatic caching may put its breakpoint here.
        level: 0 tools, 1 system, 2 messages.
        prefix_tokens: tokens up to and including this block (set after flattening).
        key: the cumulative prefix hash (set after flattening).
    """

    path: str
    tokens: int
    material: bytes
    ttl: str | None
    eligible: bool
    level: int
    prefix_tokens: int = 0
    key: bytes = b""


@dataclass
class ParsedRequest:
    """A validated request, ready to be counted, cached and answered."""

    body: dict[str, Any]
    model: str
    info: ModelInfo | None
    max_tokens: int
    stream: bool
    blocks: list[Flat]
    total_tokens: int
    breakpoints: list[tuple[int, str]]
    answer_key: int
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"
    tool_choice_name: str | None = None
    last_turn_is_plain_user: bool = True
    last_user_text: str = ""
    stop_sequences: list[str] = field(default_factory=list)
    thinking_budget: int | None = None
    thinking_display: str = "summarized"
    prefill: str = ""


class _Parser:
    def __init__(self, body: Any, version: str, endpoint: str, tokenizer: Tokenizer) -> None:
        self.body = body
        self.version = version
        self.endpoint = endpoint  # "messages", "count_tokens" or "batch"
        self.tok = tokenizer
        self.raw: list[Flat] = []
        self.has_images = False

    # ----------------------------------------------------------------- entry point

    def parse(self) -> ParsedRequest:
        body = self.body
        if not isinstance(body, dict):
            raise invalid("Request body must be a JSON object")
        allowed = _COUNT_FIELDS if self.endpoint == "count_tokens" else _MESSAGES_FIELDS
        new_api = self.version == "2026-10-21"
        for key in body:
            if new_api and key in _SAMPLING and self.endpoint != "count_tokens":
                raise invalid(
                    f"{key}: Extra inputs are not permitted (`{key}` was removed in API "
                    f"version 2026-10-21; send anthropic-version 2023-06-01 to keep using it)"
                )
            if key not in allowed:
                raise invalid(f"{key}: Extra inputs are not permitted")

        model = body.get("model")
        if model is None:
            raise invalid("model: Field required")
        if not isinstance(model, str) or not model:
            raise invalid("model: Input should be a valid string")
        info = lookup_model(model)

        max_tokens = 0
        if self.endpoint != "count_tokens":
            raw_max = body.get("max_tokens")
            if raw_max is None:
                raise invalid("max_tokens: Field required")
            if not isinstance(raw_max, int) or isinstance(raw_max, bool):
                raise invalid("max_tokens: Input should be a valid integer")
            if raw_max < 1:
                raise invalid("max_tokens: Input should be greater than or equal to 1")
            if info is not None and raw_max > info.max_output_tokens:
                raise invalid(
                    f"max_tokens: {raw_max} > {info.max_output_tokens}, which is the maximum "
                    f"allowed number of output tokens for {model}"
                )
            max_tokens = raw_max

        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise invalid("stream: Input should be a valid boolean")
        if stream and self.endpoint == "batch":
            raise invalid("stream: Streaming is not supported in the Message Batches API")

        self._check_sampling(body)
        stop_sequences = self._stop_sequences(body.get("stop_sequences"))
        self._check_metadata(body)
        tier = body.get("service_tier")
        if tier is not None and tier not in ("auto", "standard_only"):
            raise invalid("service_tier: Input should be 'auto' or 'standard_only'")

        tools = body.get("tools")
        custom_tools = self._tools(tools)
        choice, choice_name = self._tool_choice(body.get("tool_choice"), tools, custom_tools)
        thinking_budget, display = self._thinking(body.get("thinking"), max_tokens, choice)

        system = body.get("system")
        system_blocks = self._system(system)
        messages = body.get("messages")
        msg_info = self._messages(messages)

        auto_ttl = None
        if "cache_control" in body and body["cache_control"] is not None:
            auto_ttl = self._cache_control(body["cache_control"], "cache_control")

        # ---- assemble the flat list with template overhead and prefix keys
        tools_prompt = 0
        if tools:
            tools_prompt = (
                TOOL_CHOICE_FORCED_TOKENS if choice in ("any", "tool") else TOOL_CHOICE_FREE_TOKENS
            )
        system_level_overhead = tools_prompt + (SYSTEM_OVERHEAD_TOKENS if system_blocks else 0)
        blocks = self.raw
        # The first block at system level or beyond carries the hidden system prompt.
        trailer = ASSISTANT_PRIMER_TOKENS + msg_info.orphan_overhead
        if system_level_overhead:
            first = next((b for b in blocks if b.level >= 1), None)
            if first is None:
                trailer += system_level_overhead
            else:
                first.tokens += system_level_overhead

        model_key = (info.name if info is not None else model).encode()
        h = xxhash.xxh3_128_digest(b"haikucache-emulator\0" + model_key)
        # What changes the system-level cache without being a block (reference §1.6):
        # tool_choice, thinking parameters, and whether any image is present.
        raw_choice = body.get("tool_choice") or {}
        parallel = bool(raw_choice.get("disable_parallel_tool_use"))
        raw_thinking = body.get("thinking") or {}
        thinking = (
            [raw_thinking.get("type"), raw_thinking.get("budget_tokens"), display]
            if thinking_budget is not None
            else None
        )
        system_context = json.dumps(
            [choice, choice_name, parallel, thinking, self.has_images]
        ).encode()
        cumulative = REQUEST_OVERHEAD_TOKENS
        level = 0
        for block in blocks:
            if block.level != level:
                if level == 0:
                    h = xxhash.xxh3_128_digest(h + b"\x01" + system_context)
                level = block.level
                h = xxhash.xxh3_128_digest(h + bytes([0x10 + level]))
            h = xxhash.xxh3_128_digest(h + block.material)
            cumulative += block.tokens
            block.prefix_tokens = cumulative
            block.key = h
        total = cumulative + trailer

        if info is not None and total > info.context_window:
            raise invalid(f"prompt is too long: {total} tokens > {info.context_window} maximum")

        breakpoints = self._breakpoints(blocks, auto_ttl)

        sampling = json.dumps([body.get(k) for k in _SAMPLING]).encode()
        answer_key = xxhash.xxh3_64_intdigest(
            h
            + b"\x02"
            + system_context
            + sampling
            + str(len(body["messages"])).encode()
            + msg_info.prefill.encode()
        )
        return ParsedRequest(
            body=body,
            model=model,
            info=info,
            max_tokens=max_tokens,
            stream=stream,
            blocks=blocks,
            total_tokens=total,
            breakpoints=breakpoints,
            answer_key=answer_key,
            tools=custom_tools,
            tool_choice=choice,
            tool_choice_name=choice_name,
            last_turn_is_plain_user=msg_info.last_plain_user,
            last_user_text=msg_info.last_user_text,
            stop_sequences=stop_sequences,
            thinking_budget=thinking_budget,
            thinking_display=display,
            prefill=msg_info.prefill,
        )

    # ----------------------------------------------------------------- top-level fields

    def _check_sampling(self, body: dict[str, Any]) -> None:
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise invalid(f"{key}: Input should be a valid number")
            if not 0 <= value <= 1:
                raise invalid(f"{key}: Input should be between 0 and 1 (got {value})")
        top_k = body.get("top_k")
        if top_k is not None and (
            not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0
        ):
            raise invalid("top_k: Input should be a non-negative integer")

    @staticmethod
    def _stop_sequences(value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise invalid("stop_sequences: Input should be a valid list of strings")
        for s in value:
            if not s.strip():
                raise invalid(
                    "stop_sequences: each stop sequence must contain non-whitespace characters"
                )
        return list(value)

    @staticmethod
    def _check_metadata(body: dict[str, Any]) -> None:
        metadata = body.get("metadata")
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            raise invalid("metadata: Input should be a valid dictionary")
        for key in metadata:
            if key != "user_id":
                raise invalid(f"metadata.{key}: Extra inputs are not permitted")
        user_id = metadata.get("user_id")
        if user_id is not None:
            if not isinstance(user_id, str):
                raise invalid("metadata.user_id: Input should be a valid string")
            if len(user_id) > 256:
                raise invalid("metadata.user_id: String should have at most 256 characters")

    def _tools(self, tools: Any) -> list[dict[str, Any]]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise invalid("tools: Input should be a valid list")
        custom: list[dict[str, Any]] = []
        names: set[str] = set()
        for i, tool in enumerate(tools):
            path = f"tools.{i}"
            if not isinstance(tool, dict):
                raise invalid(f"{path}: Input should be a valid dictionary")
            kind = tool.get("type")
            name = tool.get("name")
            ttl = self._marker(tool, path)
            if kind in (None, "custom"):
                path = f"{path}.custom"
                if name is None:
                    raise invalid(f"{path}.name: Field required")
                if not isinstance(name, str) or not _TOOL_NAME.match(name):
                    raise invalid(
                        f"{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                    )
                schema = tool.get("input_schema")
                if schema is None:
                    raise invalid(f"{path}.input_schema: Field required")
                if not isinstance(schema, dict):
                    raise invalid(f"{path}.input_schema: Input should be a valid dictionary")
                if schema.get("type") != "object":
                    raise invalid(f"{path}.input_schema.type: Input should be 'object'")
                if any(k in schema for k in ("oneOf", "anyOf", "allOf")):
                    raise invalid(
                        f"{path}.input_schema: input_schema does not support oneOf, "
                        "allOf, or anyOf at the top level"
                    )
                description = tool.get("description", "")
                if description is not None and not isinstance(description, str):
                    raise invalid(f"{path}.description: Input should be a valid string")
                schema_json = json.dumps(schema, ensure_ascii=False)
                tokens = (
                    TOOL_OVERHEAD_TOKENS
                    + self.tok.count(name)
                    + self.tok.count(description or "")
                    + self.tok.count(schema_json)
                )
                custom.append(tool)
            else:
                if not isinstance(kind, str):
                    raise invalid(f"{path}.type: Input should be a valid string")
                if not isinstance(name, str) or not name:
                    raise invalid(f"{path}.name: Field required")
                tokens = TOOL_OVERHEAD_TOKENS + self.tok.count(_dump_without_marker(tool))
            if name in names:
                raise invalid("tools: Tool names must be unique.")
            names.add(name)
            material = b"tool\0" + _dump_without_marker(tool).encode()
            self.raw.append(
                Flat(
                    path=f"tools.{i}",
                    tokens=tokens,
                    material=material,
                    ttl=ttl,
                    eligible=True,
                    level=0,
                )
            )
        return custom

    @staticmethod
    def _tool_choice(
        value: Any, tools: Any, custom: list[dict[str, Any]]
    ) -> tuple[str, str | None]:
        if value is None:
            return "auto", None
        if not isinstance(value, dict):
            raise invalid("tool_choice: Input should be a valid dictionary")
        kind = value.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            raise invalid(
                f"tool_choice: Input tag {kind!r} found using 'type' does not match any of the "
                "expected tags: 'auto', 'any', 'tool', 'none'"
            )
        parallel = value.get("disable_parallel_tool_use")
        if parallel is not None and not isinstance(parallel, bool):
            raise invalid(
                f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean"
            )
        if kind in ("any", "tool") and not tools:
            raise invalid("tool_choice: tool_choice may only be specified while providing tools")
        name = None
        if kind == "tool":
            name = value.get("name")
            if not isinstance(name, str):
                raise invalid("tool_choice.tool.name: Field required")
            known = {t.get("name") for t in (tools or []) if isinstance(t, dict)}
            if name not in known:
                raise invalid(f"tool_choice.tool.name: Tool '{name}' not found in provided tools")
        return kind, name

    def _thinking(self, value: Any, max_tokens: int, choice: str) -> tuple[int | None, str]:
        if value is None:
            return None, "summarized"
        if not isinstance(value, dict):
            raise invalid("thinking: Input should be a valid dictionary")
        kind = value.get("type")
        display = value.get("display", "summarized")
        if display not in ("summarized", "omitted", None):
            raise invalid(f"thinking.{kind}.display: Input should be 'summarized' or 'omitted'")
        display = display or "summarized"
        if kind == "disabled":
            return None, display
        if kind not in ("enabled", "adaptive"):
            raise invalid(
                f"thinking: Input tag {kind!r} found using 'type' does not match any of the "
                "expected tags: 'enabled', 'disabled', 'adaptive'"
            )
        if choice in ("any", "tool"):
            raise invalid("Thinking may not be enabled when tool_choice forces tool use.")
        temperature = self.body.get("temperature")
        if temperature is not None and temperature != 1:
            raise invalid(
                "temperature: `temperature` may only be set to 1 when thinking is enabled."
            )
        if self.body.get("top_k") is not None:
            raise invalid("top_k: `top_k` must be unset when thinking is enabled.")
        if kind == "adaptive":
            # The model decides how much to think; the emulator spends half the budget.
            return max(1, max_tokens // 2), display
        budget = value.get("budget_tokens")
        if budget is None:
            raise invalid("thinking.enabled.budget_tokens: Field required")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise invalid("thinking.enabled.budget_tokens: Input should be a valid integer")
        if budget < 1024:
            raise invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if self.endpoint != "count_tokens" and budget >= max_tokens:
            raise invalid(
                f"max_tokens: `max_tokens` must be greater than `thinking.budget_tokens` "
                f"(got max_tokens={max_tokens}, budget_tokens={budget})"
            )
        return budget, display

    # ----------------------------------------------------------------- system

    def _system(self, system: Any) -> int:
        if system is None:
            return 0
        if isinstance(system, str):
            if not system:
                return 0
            self.raw.append(
                Flat(
                    path="system",
                    tokens=self.tok.count(system),
                    material=b"sys\0" + system.encode(),
                    ttl=None,
                    eligible=True,
                    level=1,
                )
            )
            return 1
        if not isinstance(system, list):
            raise invalid("system: Input should be a valid string or a list of text blocks")
        for i, block in enumerate(system):
            path = f"system.{i}"
            if not isinstance(block, dict):
                raise invalid(f"{path}: Input should be a valid dictionary")
            if block.get("type") != "text":
                raise invalid(f"{path}.type: Input should be 'text'")
            text = block.get("text")
            if not isinstance(text, str):
                raise invalid(f"{path}.text: Field required")
            ttl = self._marker(block, path)
            if ttl is not None and not text:
                raise invalid(f"{path}: cache_control cannot be set for empty text blocks")
            if not text:
                raise invalid("system: text content blocks must be non-empty")
            self.raw.append(
                Flat(
                    path=path,
                    tokens=self.tok.count(text),
                    material=b"sys\0" + text.encode(),
                    ttl=ttl,
                    eligible=True,
                    level=1,
                )
            )
        return len(system)

    # ----------------------------------------------------------------- messages

    def _messages(self, messages: Any) -> _MessagesInfo:
        if messages is None:
            raise invalid("messages: Field required")
        if not isinstance(messages, list):
            raise invalid("messages: Input should be a valid list")
        if not messages:
            raise invalid("messages: at least one message is required")
        if len(messages) > 100_000:
            raise invalid("messages: List should have at most 100000 items")
        info = _MessagesInfo()
        turns: list[tuple[str, list[tuple[int, int, dict[str, Any]]]]] = []
        last = len(messages) - 1
        for i, message in enumerate(messages):
            path = f"messages.{i}"
            if not isinstance(message, dict):
                raise invalid(f"{path}: Input should be a valid dictionary")
            role = message.get("role")
            if role not in ("user", "assistant"):
                raise invalid(f"{path}.role: Input should be 'user' or 'assistant'")
            if i == 0 and role != "user":
                raise invalid('messages: first message must use the "user" role')
            if "content" not in message:
                raise invalid(f"{path}.content: Field required")
            content = message["content"]
            is_final_assistant = i == last and role == "assistant"
            first_flat = len(self.raw)
            blocks_here: list[tuple[int, int, dict[str, Any]]] = []
            if isinstance(content, str):
                if not content and not is_final_assistant:
                    raise invalid(
                        f"{path}: all messages must have non-empty content except for the "
                        "optional final assistant message"
                    )
                if content:
                    self.raw.append(
                        Flat(
                            path=f"{path}.content",
                            tokens=self.tok.count(content),
                            material=_role_material(role, b"text\0" + content.encode()),
                            ttl=None,
                            eligible=True,
                            level=2,
                        )
                    )
                    blocks_here.append((i, 0, {"type": "text", "text": content}))
                text_of_message = content
            elif isinstance(content, list):
                if not content and not is_final_assistant:
                    raise invalid(
                        f"{path}: all messages must have non-empty content except for the "
                        "optional final assistant message"
                    )
                texts = []
                for j, block in enumerate(content):
                    self._content_block(block, f"{path}.content.{j}", role, j == 0)
                    blocks_here.append((i, j, block))
                    if block.get("type") == "text":
                        texts.append(block["text"])
                text_of_message = "".join(texts)
            else:
                raise invalid(
                    f"{path}.content: Input should be a valid string or a list of content blocks"
                )
            if len(self.raw) > first_flat:
                self.raw[first_flat].tokens += MESSAGE_OVERHEAD_TOKENS
            else:
                info.orphan_overhead += MESSAGE_OVERHEAD_TOKENS
            if is_final_assistant:
                if text_of_message != text_of_message.rstrip():
                    raise invalid(
                        "messages: final assistant content cannot end with trailing whitespace"
                    )
                info.prefill = text_of_message
            if turns and turns[-1][0] == role:
                turns[-1][1].extend(blocks_here)
            else:
                turns.append((role, blocks_here))
            if role == "user":
                info.last_user_text = text_of_message or info.last_user_text
        self._check_tool_pairing(turns)
        last_user = next((t for t in reversed(turns) if t[0] == "user"), None)
        info.last_plain_user = turns[-1][0] == "user" and not any(
            b.get("type") == "tool_result" for _, _, b in (last_user[1] if last_user else [])
        )
        return info

    def _content_block(self, block: Any, path: str, role: str, first: bool) -> None:
        if not isinstance(block, dict):
            raise invalid(f"{path}: Input should be a valid dictionary")
        kind = block.get("type")
        allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
        if kind not in allowed:
            expected = ", ".join(repr(k) for k in allowed)
            if kind in _USER_BLOCKS or kind in _ASSISTANT_BLOCKS:
                raise invalid(
                    f"{path}.type: {kind} blocks are not allowed in {role} messages "
                    f"(expected one of {expected})"
                )
            raise invalid(
                f"{path}: Input tag {kind!r} found using 'type' does not match any of "
                f"the expected tags: {expected}"
            )
        if kind in ("thinking", "redacted_thinking"):
            if block.get("cache_control") is not None:
                raise invalid(
                    f"{path}.{kind}.cache_control: Extra inputs are not permitted "
                    "(thinking blocks cannot carry cache_control; mark a later block)"
                )
            if kind == "thinking":
                thinking = block.get("thinking")
                if not isinstance(thinking, str):
                    raise invalid(f"{path}.thinking.thinking: Field required")
                if not isinstance(block.get("signature"), str):
                    raise invalid(f"{path}.thinking.signature: Field required")
                tokens = self.tok.count(thinking)
            else:
                data = block.get("data")
                if not isinstance(data, str):
                    raise invalid(f"{path}.redacted_thinking.data: Field required")
                tokens = max(1, len(data) // 4)
            self.raw.append(
                Flat(
                    path=path,
                    tokens=tokens,
                    material=_role_material(role, _dump_without_marker(block).encode(), first),
                    ttl=None,
                    eligible=False,
                    level=2,
                )
            )
            return
        ttl = self._marker(block, path)
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise invalid(f"{path}.text: Field required")
            if ttl is not None and not text:
                raise invalid(f"{path}: cache_control cannot be set for empty text blocks")
            if not text:
                raise invalid("messages: text content blocks must be non-empty")
            citations = block.get("citations")
            if citations and role == "user" and self.version == "2026-10-21":
                raise invalid(
                    f"{path}.citations: citations on user text blocks are not "
                    "accepted in API version 2026-10-21"
                )
            tokens = self.tok.count(text)
            material = b"text\0" + text.encode()
        elif kind == "image":
            tokens = self._image(block, path)
            self.has_images = True
            material = _dump_without_marker(block).encode()
        elif kind == "document":
            if role == "assistant" and self.version == "2026-10-21":
                raise invalid(
                    f"{path}: document blocks are not accepted in assistant messages "
                    "in API version 2026-10-21"
                )
            tokens = self._document(block, path)
            material = _dump_without_marker(block, deep=True).encode()
        elif kind == "tool_use":
            tool_id = block.get("id")
            name = block.get("name")
            tool_input = block.get("input")
            if not isinstance(tool_id, str):
                raise invalid(f"{path}.tool_use.id: Field required")
            if not isinstance(name, str):
                raise invalid(f"{path}.tool_use.name: Field required")
            if not isinstance(tool_input, dict):
                raise invalid(f"{path}.tool_use.input: Input should be a valid dictionary")
            # Key order as sent: an unstable order breaks the cache, as on the real API.
            rendered = json.dumps(tool_input, ensure_ascii=False)
            tokens = 3 + self.tok.count(name) + self.tok.count(rendered)
            material = (
                b"tool_use\0" + tool_id.encode() + b"\0" + name.encode() + b"\0" + rendered.encode()
            )
        elif kind == "tool_result":
            tokens, ttl = self._tool_result(block, path, ttl)
            material = _dump_without_marker(block, deep=True).encode()
        else:
            # search_result and server-side tool blocks: counted from their JSON.
            rendered = _dump_without_marker(block)
            tokens = self.tok.count(rendered)
            material = rendered.encode()
        self.raw.append(
            Flat(
                path=path,
                tokens=tokens,
                material=_role_material(role, material, first),
                ttl=ttl,
                eligible=True,
                level=2,
            )
        )

    def _tool_result(
        self, block: dict[str, Any], path: str, ttl: str | None
    ) -> tuple[int, str | None]:
        if not isinstance(block.get("tool_use_id"), str):
            raise invalid(f"{path}.tool_result.tool_use_id: Field required")
        is_error = block.get("is_error")
        if is_error is not None and not isinstance(is_error, bool):
            raise invalid(f"{path}.tool_result.is_error: Input should be a valid boolean")
        content = block.get("content")
        tokens = 3
        if content is None or isinstance(content, str):
            tokens += self.tok.count(content or "")
            return tokens, ttl
        if not isinstance(content, list):
            raise invalid(f"{path}.tool_result.content: Input should be a valid string or list")
        last = len(content) - 1
        for k, inner in enumerate(content):
            inner_path = f"{path}.content.{k}"
            if not isinstance(inner, dict):
                raise invalid(f"{inner_path}: Input should be a valid dictionary")
            inner_ttl = (
                self._cache_control(inner["cache_control"], f"{inner_path}.cache_control")
                if inner.get("cache_control") is not None
                else None
            )
            if inner_ttl is not None:
                # Since 2025-05-01 the marker belongs on the tool_result itself; one on the
                # last inner block is lifted to it, anywhere else it is an error (§1.2).
                if k != last:
                    raise invalid(
                        f"{inner_path}.cache_control: cache_control inside tool_result "
                        "content is only allowed on the last block; put it on the "
                        "tool_result block itself"
                    )
                if ttl is None:
                    ttl = inner_ttl
            kind = inner.get("type")
            if kind == "text":
                text = inner.get("text")
                if not isinstance(text, str):
                    raise invalid(f"{inner_path}.text: Field required")
                if not text:
                    raise invalid("messages: text content blocks must be non-empty")
                tokens += self.tok.count(text)
            elif kind == "image":
                tokens += self._image(inner, inner_path)
                self.has_images = True
            elif kind == "document":
                tokens += self._document(inner, inner_path)
            elif kind in ("search_result", "tool_reference"):
                tokens += self.tok.count(_dump_without_marker(inner))
            else:
                raise invalid(
                    f"{inner_path}: Input tag {kind!r} found using 'type' does not match "
                    "any of the expected tags: 'text', 'image', 'document', 'search_result'"
                )
        return tokens, ttl

    def _image(self, block: dict[str, Any], path: str) -> int:
        source = block.get("source")
        if not isinstance(source, dict):
            raise invalid(f"{path}.source: Field required")
        kind = source.get("type")
        if kind == "base64":
            media = source.get("media_type")
            if media not in _IMAGE_TYPES:
                raise invalid(
                    f"{path}.source.base64.media_type: Input should be 'image/jpeg', "
                    "'image/png', 'image/gif' or 'image/webp'"
                )
            data = source.get("data")
            if not isinstance(data, str) or not data:
                raise invalid(f"{path}.source.base64.data: Field required")
            return _image_tokens(data)
        if kind == "url":
            if not isinstance(source.get("url"), str):
                raise invalid(f"{path}.source.url.url: Field required")
            return 1_000
        if kind == "file":
            if not isinstance(source.get("file_id"), str):
                raise invalid(f"{path}.source.file.file_id: Field required")
            return 1_000
        raise invalid(
            f"{path}.source: Input tag {kind!r} found using 'type' does not match any of "
            "the expected tags: 'base64', 'url', 'file'"
        )

    def _document(self, block: dict[str, Any], path: str) -> int:
        source = block.get("source")
        if not isinstance(source, dict):
            raise invalid(f"{path}.source: Field required")
        kind = source.get("type")
        extra = (
            8
            + self.tok.count(str(block.get("title") or ""))
            + self.tok.count(str(block.get("context") or ""))
        )
        if kind == "text":
            if source.get("media_type", "text/plain") != "text/plain":
                raise invalid(f"{path}.source.text.media_type: Input should be 'text/plain'")
            data = source.get("data")
            if not isinstance(data, str):
                raise invalid(f"{path}.source.text.data: Field required")
            return extra + self.tok.count(data)
        if kind == "base64":
            if source.get("media_type") != "application/pdf":
                raise invalid(f"{path}.source.base64.media_type: Input should be 'application/pdf'")
            data = source.get("data")
            if not isinstance(data, str) or not data:
                raise invalid(f"{path}.source.base64.data: Field required")
            try:
                raw = base64.b64decode(data, validate=False)
            except (binascii.Error, ValueError):
                raise invalid(f"{path}.source.base64.data: invalid base64 data") from None
            # Each PDF page costs its text plus its image; ~1,500 tokens a page.
            pages = max(1, len(_PDF_PAGE.findall(raw)))
            return extra + 1_500 * pages
        if kind == "content":
            content = source.get("content")
            if isinstance(content, str):
                return extra + self.tok.count(content)
            if not isinstance(content, list):
                raise invalid(f"{path}.source.content.content: Field required")
            tokens = extra
            for k, inner in enumerate(content):
                if (
                    isinstance(inner, dict)
                    and inner.get("cache_control") is not None
                    and k != len(content) - 1
                ):
                    raise invalid(
                        f"{path}.source.content.{k}.cache_control: cache_control inside "
                        "document content is only allowed on the last block"
                    )
                if (
                    isinstance(inner, dict)
                    and inner.get("type") == "text"
                    and isinstance(inner.get("text"), str)
                ):
                    tokens += self.tok.count(inner["text"])
                elif isinstance(inner, dict) and inner.get("type") == "image":
                    tokens += self._image(inner, f"{path}.source.content.{k}")
                else:
                    raise invalid(
                        f"{path}.source.content.{k}: Input should be a text or image block"
                    )
            return tokens
        if kind in ("url", "file"):
            return extra + 1_500
        raise invalid(
            f"{path}.source: Input tag {kind!r} found using 'type' does not match any of "
            "the expected tags: 'base64', 'text', 'content', 'url', 'file'"
        )

    @staticmethod
    def _check_tool_pairing(turns: list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]) -> None:
        for t, (role, blocks) in enumerate(turns):
            if role == "assistant":
                ids = [b.get("id") for _, _, b in blocks if b.get("type") == "tool_use"]
                if not ids or t + 1 >= len(turns):
                    continue
                answered = {
                    b.get("tool_use_id")
                    for _, _, b in turns[t + 1][1]
                    if b.get("type") == "tool_result"
                }
                missing = [i for i in ids if i not in answered]
                if missing:
                    raise invalid(
                        f"messages.{blocks[0][0]}: `tool_use` ids were found without `tool_result` "
                        f"blocks immediately after: {', '.join(map(str, missing))}. Each `tool_use` "
                        "block must have a corresponding `tool_result` block in the next message."
                    )
            else:
                previous = turns[t - 1][1] if t > 0 else []
                ids_before = {b.get("id") for _, _, b in previous if b.get("type") == "tool_use"}
                for i, j, b in blocks:
                    if b.get("type") == "tool_result" and b.get("tool_use_id") not in ids_before:
                        raise invalid(
                            f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                            f"`tool_result` blocks: {b.get('tool_use_id')}. Each `tool_result` "
                            "block must have a corresponding `tool_use` block in the previous message."
                        )

    # ----------------------------------------------------------------- cache_control

    def _marker(self, block: dict[str, Any], path: str) -> str | None:
        value = block.get("cache_control")
        if value is None:
            return None
        return self._cache_control(value, f"{path}.cache_control")

    @staticmethod
    def _cache_control(value: Any, path: str) -> str:
        if not isinstance(value, dict):
            raise invalid(f"{path}: Input should be a valid dictionary")
        for key in value:
            if key not in ("type", "ttl"):
                raise invalid(f"{path}.{key}: Extra inputs are not permitted")
        if value.get("type") != "ephemeral":
            raise invalid(f"{path}.type: Input should be 'ephemeral'")
        ttl = value.get("ttl", "5m")
        if ttl is None:
            ttl = "5m"
        if ttl not in ("5m", "1h"):
            raise invalid(f"{path}.ttl: Input should be '5m' or '1h'")
        return str(ttl)

    @staticmethod
    def _breakpoints(blocks: list[Flat], auto_ttl: str | None) -> list[tuple[int, str]]:
        points = [(i, b.ttl) for i, b in enumerate(blocks) if b.ttl is not None]
        found = len(points) + (1 if auto_ttl is not None else 0)
        if found > MAX_BREAKPOINTS:
            raise invalid(
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {found}."
            )
        if auto_ttl is not None:
            # Automatic caching: the last block that can carry a marker (§1.7 edge cases).
            target = next((i for i in range(len(blocks) - 1, -1, -1) if blocks[i].eligible), None)
            if target is not None:
                existing = blocks[target].ttl
                if existing is None:
                    points.append((target, auto_ttl))
                    points.sort()
                elif existing != auto_ttl:
                    raise invalid(
                        f"cache_control: the top-level cache_control (ttl='{auto_ttl}') conflicts "
                        f"with the cache_control (ttl='{existing}') already on the last cacheable "
                        f"block ({blocks[target].path})"
                    )
        seen_5m = False
        for _, ttl in points:
            if ttl == "5m":
                seen_5m = True
            elif seen_5m:
                raise invalid(
                    "A `ttl='1h'` cache_control block must not come after a `ttl='5m'` cache_control block"
                )
        return [(i, str(ttl)) for i, ttl in points]


@dataclass
class _MessagesInfo:
    orphan_overhead: int = 0
    prefill: str = ""
    last_user_text: str = ""
    last_plain_user: bool = True


def _role_material(role: str, material: bytes, first: bool = True) -> bytes:
    # The role and the message boundary are part of the prefix: the same text said by the
    # user or by the assistant, or in one message or two, is a different prompt.
    return (b"\x00U" if role == "user" else b"\x00A") + (b"^" if first else b"") + material


def _dump_without_marker(block: dict[str, Any], *, deep: bool = False) -> str:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) if deep else v for k, v in value.items() if k != "cache_control"}
        if isinstance(value, list) and deep:
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(block), ensure_ascii=False, separators=(",", ":"))


def _image_tokens(data: str) -> int:
    """Tokens of a base64 image: ``width × height / 750`` after the API's downscaling."""
    head = data[:87_384]  # ~64 kB decoded is enough to find the header of the usual formats
    head = head[: len(head) - len(head) % 4]
    try:
        raw = base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    size = _image_size(raw)
    if size is None:
        # Unknown layout: estimate from the compressed size (~1 token per 200 bytes).
        return max(85, min(1_600, (len(data) * 3 // 4) // 200))
    width, height = size
    # Long edge at most 1568 px and about 1.15 megapixels (reference: vision docs).
    scale = min(1.0, 1568 / max(width, height, 1), math.sqrt(1_150_000 / max(width * height, 1)))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    return max(1, math.ceil(w * h / 750))


def _image_size(raw: bytes) -> tuple[int, int] | None:
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        w, h = struct.unpack(">II", raw[16:24])
        return int(w), int(h)
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        w, h = struct.unpack("<HH", raw[6:10])
        return int(w), int(h)
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP" and len(raw) >= 30:
        chunk = raw[12:16]
        if chunk == b"VP8X":
            w = 1 + int.from_bytes(raw[24:27], "little")
            h = 1 + int.from_bytes(raw[27:30], "little")
            return w, h
        if chunk == b"VP8 " and len(raw) >= 30:
            w, h = struct.unpack("<HH", raw[26:30])
            return int(w) & 0x3FFF, int(h) & 0x3FFF
        if chunk == b"VP8L" and len(raw) >= 25:
            bits = int.from_bytes(raw[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if raw[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(raw):
            if raw[i] != 0xFF:
                i += 1
                continue
            marker = raw[i + 1]
            if marker in (
                0xC0,
                0xC1,
                0xC2,
                0xC3,
                0xC5,
                0xC6,
                0xC7,
                0xC9,
                0xCA,
                0xCB,
                0xCD,
                0xCE,
                0xCF,
            ):
                h, w = struct.unpack(">HH", raw[i + 5 : i + 9])
                return int(w), int(h)
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", raw[i + 2 : i + 4])[0]
            i += 2 + length
    return None


def parse_request(body: Any, *, version: str, endpoint: str, tokenizer: Tokenizer) -> ParsedRequest:
    """Validate ``body`` for ``endpoint`` (``messages``, ``count_tokens`` or ``batch``).

    Raises:
        APIError: with the 400 the real API would give.
    """
    return _Parser(body, version, endpoint, tokenizer).parse()
