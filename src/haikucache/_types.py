"""Typed response objects: thin, lazy views over the decoded JSON.

Every object wraps the dict the API sent and nothing else. Attribute access reads the dict;
a nested object or list of objects is wrapped in its typed class on first access and then
kept, so building a :class:`Message` costs two attribute stores whatever its size (the
engine's round trip for a small request must stay under a millisecond). Fields the API adds
later, and that no class here declares, are still readable, as plain JSON values::

    message = Message(data)
    message.content[0].text          # typed: TextBlock.text is a str
    message.usage.cache_read_input_tokens
    message["stop_reason"]           # item access works too
    message.to_dict()                # a deep, JSON-able copy (== model_dump())

Setting an attribute writes through to the wrapped dict, so nested views stay consistent.
Tagged unions (content blocks, deltas, stream events, batch results) dispatch on ``type``:
``ContentBlock({"type": "text", ...})`` returns a :class:`TextBlock`, and an unknown type
still wraps, as the base class.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

if TYPE_CHECKING:
    from ._engine import CallInfo

__all__ = [
    "APIObject",
    "CacheCreation",
    "CitationsDelta",
    "ContentBlock",
    "ContentBlockDelta",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "DeletedMessageBatch",
    "ErrorObject",
    "ErrorResponse",
    "InputJSONDelta",
    "Message",
    "MessageBatch",
    "MessageBatchCanceledResult",
    "MessageBatchErroredResult",
    "MessageBatchExpiredResult",
    "MessageBatchIndividualResponse",
    "MessageBatchRequestCounts",
    "MessageBatchResult",
    "MessageBatchSucceededResult",
    "MessageDelta",
    "MessageDeltaEvent",
    "MessageDeltaUsage",
    "MessageStartEvent",
    "MessageStopEvent",
    "MessageTokensCount",
    "RedactedThinkingBlock",
    "SignatureDelta",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingBlock",
    "ThinkingDelta",
    "ToolUseBlock",
    "Usage",
]

_T = TypeVar("_T", bound="APIObject")
_Wrapper = Callable[[dict[str, Any]], Any]
_Nested = Mapping[str, _Wrapper]


class APIObject:
    """A decoded JSON object with attribute access.

    Args:
        data: the decoded JSON object (or another API object, whose JSON is shared). It is
            wrapped, not copied: the object is a view, and :meth:`to_dict` is how to get an
            independent copy.

    Subclasses declare their fields as annotations (for type checkers and IDEs) and list in
    ``_nested`` which fields hold objects of which class. A declared field the API left out
    reads as ``None``; an undeclared one raises :class:`AttributeError`.
    """

    __slots__ = ("_data", "_wrapped")
    _data: dict[str, Any]
    _wrapped: dict[str, Any] | None

    _nested: ClassVar[_Nested] = {}
    _fields: ClassVar[frozenset[str]] = frozenset()
    _internal: ClassVar[frozenset[str]] = frozenset(__slots__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: set[str] = set()
        internal: set[str] = set()
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            internal.update((slots,) if isinstance(slots, str) else slots)
            for name, annotation in inspect.get_annotations(klass).items():
                if not str(annotation).startswith("ClassVar"):
                    fields.add(name)
        cls._internal = frozenset(internal)
        cls._fields = frozenset(fields - internal)

    def __init__(self, data: Mapping[str, Any] | APIObject) -> None:
        if type(data) is not dict:
            data = data._data if isinstance(data, APIObject) else dict(data)
        # object.__setattr__: our own __setattr__ writes into the JSON dict.
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_wrapped", None)

    # -- reading

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails, i.e. for JSON fields. Private and dunder
        # names are never fields (and copy/pickle probe for some of them).
        if name[0] == "_":
            raise AttributeError(name)
        value = self._get(name, _MISSING)
        if value is _MISSING:
            if name in self._fields:
                return None
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return value

    def _get(self, name: str, default: Any) -> Any:
        wrapped: dict[str, Any] | None = self._wrapped
        if wrapped is not None and name in wrapped:
            return wrapped[name]
        value = self._data.get(name, default)
        wrapper = self._nested.get(name)
        if wrapper is None or value is default:
            return value
        if isinstance(value, dict):
            result: Any = wrapper(value)
        elif isinstance(value, list):
            result = [wrapper(v) if isinstance(v, dict) else v for v in value]
        else:
            return value
        if wrapped is None:
            wrapped = {}
            object.__setattr__(self, "_wrapped", wrapped)
        wrapped[name] = result
        return result

    def __getitem__(self, key: str) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key`` (wrapped like an attribute), or ``default`` when absent."""
        return self._get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._data})

    # -- writing

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._internal:
            object.__setattr__(self, name, value)
            return
        self._data[name] = _unwrap(value)
        if self._wrapped is not None:
            self._wrapped.pop(name, None)

    # -- converting

    def to_dict(self, *, exclude_none: bool = False) -> dict[str, Any]:
        """A deep copy of the JSON object, safe to mutate and to ``json.dumps``.

        Args:
            exclude_none: leave out fields whose value is ``null``.
        """
        copied: dict[str, Any] = _copy_json(self._data, exclude_none)
        return copied

    def model_dump(self, *, mode: str = "python", exclude_none: bool = False) -> dict[str, Any]:
        """Alias of :meth:`to_dict`, for code written against the SDK's pydantic models.

        ``mode`` is accepted for compatibility; the data is JSON already, so both modes
        return the same.
        """
        return self.to_dict(exclude_none=exclude_none)

    def to_json(self, *, indent: int | None = None) -> str:
        """The object as a JSON string."""
        return json.dumps(self._data, indent=indent, ensure_ascii=False)

    def model_dump_json(self, *, indent: int | None = None) -> str:
        """Alias of :meth:`to_json`."""
        return self.to_json(indent=indent)

    # -- comparing and showing

    def __eq__(self, other: object) -> bool:
        if isinstance(other, APIObject):
            return self._data == other._data
        return NotImplemented

    # Mutable (attribute assignment writes through), so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={self._get(key, None)!r}" for key in self._data)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._data))


def _rebuild(cls: type[_T], data: dict[str, Any]) -> _T:
    return cls(data)


_MISSING: Any = object()


def _unwrap(value: Any) -> Any:
    if isinstance(value, APIObject):
        return value._data
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _copy_json(value: Any, exclude_none: bool = False) -> Any:
    """A deep copy of decoded JSON; much faster than :func:`copy.deepcopy`."""
    if isinstance(value, dict):
        if exclude_none:
            return {k: _copy_json(v, True) for k, v in value.items() if v is not None}
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v, exclude_none) for v in value]
    if isinstance(value, APIObject):
        return _copy_json(value._data, exclude_none)
    return value


class _TaggedUnion(APIObject):
    """Base of a family of objects told apart by their ``type`` field.

    A direct subclass without ``tag=`` starts a family; its subclasses register with
    ``class TextBlock(ContentBlock, tag="text")``. Constructing the family's base returns
    the subclass registered for the data's ``type``, or the base itself for a type this
    version does not know (the API adds block and event types over time).
    """

    __slots__ = ()
    _variants: ClassVar[dict[str, type[APIObject]]] = {}

    def __init_subclass__(cls, tag: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if tag is None:
            cls._variants = {}
        else:
            cls._variants[tag] = cls

    def __new__(cls: type[_T], data: Mapping[str, Any] | APIObject) -> _T:
        variant = cls._variants.get(data.get("type"))  # type: ignore[attr-defined]
        if variant is not None and variant is not cls and issubclass(variant, cls):
            instance: _T = object.__new__(variant)
            return instance
        return object.__new__(cls)


# --------------------------------------------------------------------------- messages


class CacheCreation(APIObject):
    """Cache-write tokens split by TTL; their sum is ``cache_creation_input_tokens``."""

    __slots__ = ()
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int


class Usage(APIObject):
    """Token counts of one message (reference §1.9).

    Total input is ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``:
    ``input_tokens`` counts only what came after the last cache breakpoint.
    """

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"cache_creation": CacheCreation, "server_tool_use": APIObject}
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    cache_creation: CacheCreation | None
    service_tier: str | None
    server_tool_use: APIObject | None


class ContentBlock(_TaggedUnion):
    """A block of a message's ``content``; constructing it dispatches on ``type``."""

    __slots__ = ()
    type: str


class TextBlock(ContentBlock, tag="text"):
    """``{"type": "text", "text": ..., "citations": [...]?}``."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"citations": APIObject}
    type: Literal["text"]
    text: str
    citations: list[APIObject] | None


class ToolUseBlock(ContentBlock, tag="tool_use"):
    """A tool call; ``input`` is a plain dict (the tool's arguments, as the model wrote them)."""

    __slots__ = ()
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(ContentBlock, tag="thinking"):
    """Extended thinking, with the ``signature`` the API needs to accept it back."""

    __slots__ = ()
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(ContentBlock, tag="redacted_thinking"):
    """Thinking the API returned encrypted."""

    __slots__ = ()
    type: Literal["redacted_thinking"]
    data: str


class Message(APIObject):
    """A response of ``POST /v1/messages`` (reference §4.3).

    Attributes:
        haikucache: what haikucache did for this call (cache status, key, cost, saving);
            set by the engine, ``None`` on a message built by hand. Not part of
            :meth:`to_dict`, nor of equality.
    """

    __slots__ = ("_request_id", "haikucache")
    _nested: ClassVar[_Nested] = {"content": ContentBlock, "usage": Usage, "container": APIObject}
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage
    haikucache: CallInfo | None
    _request_id: str | None

    def __init__(self, data: Mapping[str, Any] | APIObject) -> None:
        super().__init__(data)
        object.__setattr__(self, "haikucache", None)
        # Like the SDK's ``message._request_id``: the ``request-id`` header, when known.
        object.__setattr__(self, "_request_id", None)

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.haikucache is None:
            return text
        return f"{text[:-1]}, haikucache={self.haikucache!r})"


class MessageTokensCount(APIObject):
    """The response of ``POST /v1/messages/count_tokens``."""

    __slots__ = ()
    input_tokens: int


# --------------------------------------------------------------------------- errors


class ErrorObject(APIObject):
    """``{"type": "invalid_request_error", "message": ...}``."""

    __slots__ = ()
    type: str
    message: str


class ErrorResponse(APIObject):
    """The API's error body: ``{"type": "error", "error": {...}, "request_id": ...}``."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"error": ErrorObject}
    type: Literal["error"]
    error: ErrorObject
    request_id: str | None


# --------------------------------------------------------------------------- batches


class MessageBatchRequestCounts(APIObject):
    """How many requests of a batch are in each state; only ``processing`` moves until it ends."""

    __slots__ = ()
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatch(APIObject):
    """A Message Batch (reference §3.3). Timestamps are the API's RFC 3339 strings."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"request_counts": MessageBatchRequestCounts}
    id: str
    type: Literal["message_batch"]
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: MessageBatchRequestCounts
    created_at: str
    expires_at: str
    ended_at: str | None
    cancel_initiated_at: str | None
    archived_at: str | None
    results_url: str | None


class DeletedMessageBatch(APIObject):
    """The response of ``DELETE /v1/messages/batches/{id}``."""

    __slots__ = ()
    id: str
    type: Literal["message_batch_deleted"]


class MessageBatchResult(_TaggedUnion):
    """The outcome of one batch request; dispatches on ``type``."""

    __slots__ = ()
    type: str


class MessageBatchSucceededResult(MessageBatchResult, tag="succeeded"):
    """The request ran; ``message`` is its full Message."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"message": Message}
    type: Literal["succeeded"]
    message: Message


class MessageBatchErroredResult(MessageBatchResult, tag="errored"):
    """The request failed (not billed); ``error`` is the API's error body."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"error": ErrorResponse}
    type: Literal["errored"]
    error: ErrorResponse


class MessageBatchCanceledResult(MessageBatchResult, tag="canceled"):
    """The batch was canceled before this request was sent to the model (not billed)."""

    __slots__ = ()
    type: Literal["canceled"]


class MessageBatchExpiredResult(MessageBatchResult, tag="expired"):
    """The batch reached 24 hours before this request was sent to the model (not billed)."""

    __slots__ = ()
    type: Literal["expired"]


class MessageBatchIndividualResponse(APIObject):
    """One line of a batch's results: ``{"custom_id": ..., "result": {...}}``."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"result": MessageBatchResult}
    custom_id: str
    result: MessageBatchResult


# --------------------------------------------------------------------------- streaming


class ContentBlockDelta(_TaggedUnion):
    """The ``delta`` of a ``content_block_delta`` event; dispatches on ``type``."""

    __slots__ = ()
    type: str


class TextDelta(ContentBlockDelta, tag="text_delta"):
    """More text for a text block."""

    __slots__ = ()
    type: Literal["text_delta"]
    text: str


class InputJSONDelta(ContentBlockDelta, tag="input_json_delta"):
    """A fragment of a tool's input JSON (the first one is often ``""``)."""

    __slots__ = ()
    type: Literal["input_json_delta"]
    partial_json: str


class ThinkingDelta(ContentBlockDelta, tag="thinking_delta"):
    """More thinking text."""

    __slots__ = ()
    type: Literal["thinking_delta"]
    thinking: str


class SignatureDelta(ContentBlockDelta, tag="signature_delta"):
    """The thinking block's signature, sent just before the block stops."""

    __slots__ = ()
    type: Literal["signature_delta"]
    signature: str


class CitationsDelta(ContentBlockDelta, tag="citations_delta"):
    """One more citation for a text block."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"citation": APIObject}
    type: Literal["citations_delta"]
    citation: APIObject


class MessageDelta(APIObject):
    """The ``delta`` of a ``message_delta`` event."""

    __slots__ = ()
    stop_reason: str | None
    stop_sequence: str | None


class MessageDeltaUsage(APIObject):
    """Cumulative usage on ``message_delta``: input and cache counts only when they changed."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"server_tool_use": APIObject}
    output_tokens: int
    input_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_read_input_tokens: int | None
    server_tool_use: APIObject | None


class StreamEvent(_TaggedUnion):
    """An event of a Messages stream; dispatches on ``type`` (unknown types stay ``StreamEvent``)."""

    __slots__ = ()
    type: str


class MessageStartEvent(StreamEvent, tag="message_start"):
    """The first event: the message with empty content and the input usage."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"message": Message}
    type: Literal["message_start"]
    message: Message


class ContentBlockStartEvent(StreamEvent, tag="content_block_start"):
    """A content block begins (text empty, tool input ``{}``)."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"content_block": ContentBlock}
    type: Literal["content_block_start"]
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(StreamEvent, tag="content_block_delta"):
    """More of a content block."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"delta": ContentBlockDelta}
    type: Literal["content_block_delta"]
    index: int
    delta: ContentBlockDelta


class ContentBlockStopEvent(StreamEvent, tag="content_block_stop"):
    """A content block is complete."""

    __slots__ = ()
    type: Literal["content_block_stop"]
    index: int


class MessageDeltaEvent(StreamEvent, tag="message_delta"):
    """Stop reason and cumulative usage, near the end of the stream."""

    __slots__ = ()
    _nested: ClassVar[_Nested] = {"delta": MessageDelta, "usage": MessageDeltaUsage}
    type: Literal["message_delta"]
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(StreamEvent, tag="message_stop"):
    """The last event of a complete stream."""

    __slots__ = ()
    type: Literal["message_stop"]
