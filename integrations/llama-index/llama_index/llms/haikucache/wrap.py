"""``wrap(llm)``: haikucache's response cache in front of any LlamaIndex LLM.

For users on other providers (OpenAI, Gemini, a local model …): exact repeats are answered
from a haikucache store (:class:`haikucache.MemoryStore`, :class:`haikucache.DiskStore`,
:class:`haikucache.RedisStore`) instead of calling the model again. Prompt-cache breakpoints,
batching and dollar accounting are Anthropic features and belong to
:class:`~llama_index.llms.haikucache.HaikuCache`; the wrapper only caches answers.

The key is exact: the wrapped LLM's class and configuration (``to_dict()``, so model, sampling
settings and credentials — hashed, never stored), its metadata, the namespace, and the full
request (every message with all its blocks, and every keyword such as tools). A request that
cannot be keyed stably (an argument without a stable JSON form) is not cached at all.

Composition: the wrapper is the outer layer. ``chat`` and ``stream_chat`` share entries
(a stored answer is replayed as a stream), as do ``complete`` and ``stream_complete``. A miss
fires the wrapped LLM's own instrumentation events inside the wrapper's.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection

from haikucache import (
    AsyncResponseStore,
    CacheEntry,
    Clock,
    ConfigurationError,
    DiskStore,
    MemoryStore,
    ResponseStore,
    SystemClock,
)

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["KEY_PREFIX", "CachedFunctionCallingLLM", "CachedLLM", "wrap"]

logger = logging.getLogger("haikucache")
_T = TypeVar("_T")

#: Version prefix of the wrapper's keys (distinct from the Messages API's ``hc1:`` keys).
KEY_PREFIX = "hcli1"

_dumps = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode
_PIECES = re.compile(r"\S+\s*|\s+")


class _Unkeyable(Exception):
    """An argument has no stable JSON form: the call is not cached."""


def _jsonable(value: Any) -> Any:
    """A stable JSON form of ``value``, or :class:`_Unkeyable`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=_dumps)
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if callable(getattr(value, "get_secret_value", None)):
        # A credential (pydantic SecretStr): keys differ per credential, and hold only a hash.
        return {"$secret": xxhash.xxh3_64_hexdigest(str(value.get_secret_value()).encode())}
    metadata: Any = getattr(value, "metadata", None)
    if callable(getattr(value, "call", None)) and hasattr(metadata, "get_parameters_dict"):
        # A LlamaIndex tool: what the model sees of it.
        return {
            "$tool": metadata.get_name(),
            "description": metadata.description,
            "parameters": _jsonable(metadata.get_parameters_dict()),
        }
    if isinstance(value, BaseModel):
        try:
            return {"$model": type(value).__qualname__, **value.model_dump(mode="json")}
        except Exception as exc:  # a model holding arbitrary objects
            raise _Unkeyable(type(value).__qualname__) from exc
    if callable(value):
        module = getattr(value, "__module__", None)
        name = getattr(value, "__qualname__", None)
        if module and name and "<lambda>" not in name and "<locals>" not in name:
            return {"$callable": f"{module}.{name}"}
        raise _Unkeyable(repr(value))
    raise _Unkeyable(type(value).__qualname__)


_warned: set[tuple[str, str]] = set()


def _warn_unkeyable(llm: str, what: str) -> None:
    if (llm, what) not in _warned:
        _warned.add((llm, what))
        logger.warning(
            "haikucache: %s calls are not cached: %s has no stable form to key on "
            "(use a module-level function or plain values)",
            llm,
            what,
        )


def _json_or_none(value: Any) -> Any:
    """``value`` when it survives a JSON round trip unchanged in meaning, else ``None``."""
    try:
        return json.loads(_dumps(value))
    except (TypeError, ValueError):
        return None


def _resolve_store(store: ResponseStore | str | None) -> ResponseStore:
    if store is None or store == "memory":
        return MemoryStore()
    if store == "disk":
        return DiskStore()
    if isinstance(store, str) or not callable(getattr(store, "get", None)):
        raise ConfigurationError(
            f"store must be a ResponseStore, 'disk' or 'memory', got {store!r}"
        )
    return store


class CachedLLM(LLM):
    """A LlamaIndex LLM answered from haikucache's response cache when it can be.

    Build it with :func:`wrap`. Every ``chat``/``complete`` (sync, async, streaming) is looked
    up by its exact key first; a hit is served locally (a stream is replayed) and marked
    ``additional_kwargs["haikucache"] = {"cache": "hit", "key": ...}``; a miss goes to the
    wrapped LLM and its complete answer is stored. Anything else (metadata, prompts, tools)
    is the wrapped LLM's.
    """

    llm: LLM = Field(description="The wrapped LLM.")
    namespace: str = Field(default="default", description="Tenant: part of every key.")
    ttl: float | None = Field(default=None, gt=0, description="Seconds an answer stays valid.")
    tags: tuple[str, ...] = Field(default=(), description="Labels for invalidation.")

    _store: ResponseStore = PrivateAttr()
    _clock: Clock = PrivateAttr()

    def __init__(
        self,
        llm: LLM,
        *,
        store: ResponseStore | str | None = None,
        namespace: str = "default",
        ttl: float | None = None,
        tags: Sequence[str] = (),
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError("namespace must be a non-empty string")
        if isinstance(tags, str):
            raise ConfigurationError("tags must be a sequence of strings, not one string")
        super().__init__(  # type: ignore[call-arg]  # pydantic fields of this class
            llm=llm,
            namespace=namespace,
            ttl=ttl,
            tags=tuple(tags),
            callback_manager=llm.callback_manager,
            system_prompt=llm.system_prompt,
            messages_to_prompt=llm.messages_to_prompt,
            completion_to_prompt=llm.completion_to_prompt,
            output_parser=llm.output_parser,
            pydantic_program_mode=llm.pydantic_program_mode,
            query_wrapper_prompt=llm.query_wrapper_prompt,
        )
        self._store = _resolve_store(store)
        self._clock = clock or SystemClock()

    @classmethod
    def class_name(cls) -> str:
        return "HaikuCache_CachedLLM"

    @property
    def metadata(self) -> LLMMetadata:
        """The wrapped LLM's metadata."""
        return self.llm.metadata

    @property
    def store(self) -> ResponseStore:
        """Where answers are kept."""
        return self._store

    # -- keys and entries -----------------------------------------------------------------

    def cache_key(self, kind: str, request: Mapping[str, Any]) -> str | None:
        """The exact key of a request (``kind`` is ``"chat"`` or ``"completion"``).

        ``None`` when some argument has no stable JSON form (such a call is not cached).
        """
        try:
            document = {
                "kind": kind,
                "llm": {
                    "type": f"{type(self.llm).__module__}.{type(self.llm).__qualname__}",
                    "config": _jsonable(self.llm.to_dict()),
                    # Excluded from to_dict(), yet they shape what the model is sent.
                    "prompts": _jsonable(
                        [self.llm.messages_to_prompt, self.llm.completion_to_prompt]
                    ),
                    "metadata": _jsonable(self.llm.metadata.model_dump(mode="json")),
                },
                "request": _jsonable(request),
            }
        except _Unkeyable as exc:
            _warn_unkeyable(type(self.llm).__name__, str(exc))
            return None
        framed = self.namespace.encode() + b"\x00" + _dumps(document).encode()
        return f"{KEY_PREFIX}:{xxhash.xxh3_128_hexdigest(framed)}"

    def _chat_key(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> str | None:
        return self.cache_key("chat", {"messages": list(messages), "kwargs": dict(kwargs)})

    def _completion_key(
        self, prompt: str, formatted: bool, kwargs: Mapping[str, Any]
    ) -> str | None:
        return self.cache_key(
            "completion", {"prompt": prompt, "formatted": formatted, "kwargs": dict(kwargs)}
        )

    def _entry(self, key: str, payload: dict[str, Any]) -> CacheEntry:
        now = self._clock.now()
        return CacheEntry(
            key=key,
            namespace=self.namespace,
            response=payload,
            model=self.llm.metadata.model_name,
            created_at=now,
            expires_at=None if self.ttl is None else now + self.ttl,
            tags=self.tags,
        )

    def _get(self, key: str | None) -> dict[str, Any] | None:
        if key is None:
            return None
        entry = self._store.get(key, now=self._clock.now())
        return entry.response if entry is not None else None

    async def _aget(self, key: str | None) -> dict[str, Any] | None:
        if key is None:
            return None
        if isinstance(self._store, AsyncResponseStore):
            entry = await self._store.aget(key, now=self._clock.now())
        else:
            entry = self._store.get(key, now=self._clock.now())
        return entry.response if entry is not None else None

    def _put(self, key: str | None, payload: dict[str, Any] | None) -> None:
        if key is not None and payload is not None:
            self._store.put(self._entry(key, payload))

    async def _aput(self, key: str | None, payload: dict[str, Any] | None) -> None:
        if key is None or payload is None:
            return
        if isinstance(self._store, AsyncResponseStore):
            await self._store.aput(self._entry(key, payload))
        else:
            self._store.put(self._entry(key, payload))

    @staticmethod
    def _mark(extra: Mapping[str, Any], cache: str, key: str | None) -> dict[str, Any]:
        return {**extra, "haikucache": {"cache": cache, "key": key}}

    # -- chat payloads --------------------------------------------------------------------

    @staticmethod
    def _chat_payload(response: ChatResponse) -> dict[str, Any] | None:
        message = _json_or_none(response.message.model_dump(mode="json"))
        if message is None:
            return None
        extra = {k: v for k, v in response.additional_kwargs.items() if k != "haikucache"}
        return {
            "message": message,
            "additional_kwargs": _json_or_none(extra) or {},
            "raw": _json_or_none(response.raw),
        }

    def _chat_hit(
        self, payload: Mapping[str, Any], key: str, delta: str | None = None
    ) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage.model_validate(payload["message"]),
            raw=payload.get("raw"),
            delta=delta,
            additional_kwargs=self._mark(payload.get("additional_kwargs") or {}, "hit", key),
        )

    def _chat_replay(self, payload: Mapping[str, Any], key: str) -> ChatResponseGen:
        final = self._chat_hit(payload, key, delta="")
        role = final.message.role
        text = ""
        for piece in _PIECES.findall(final.message.content or ""):
            text += piece
            yield ChatResponse(
                message=ChatMessage(role=role, content=text),
                delta=piece,
                additional_kwargs=final.additional_kwargs,
            )
        yield final

    def _chat_miss(self, response: ChatResponse, key: str | None) -> ChatResponse:
        self._put(key, self._chat_payload(response))
        return response.model_copy(
            update={
                "additional_kwargs": self._mark(
                    response.additional_kwargs, "miss" if key else "bypass", key
                )
            }
        )

    # -- completion payloads --------------------------------------------------------------

    @staticmethod
    def _completion_payload(response: CompletionResponse) -> dict[str, Any] | None:
        extra = {k: v for k, v in response.additional_kwargs.items() if k != "haikucache"}
        return {
            "text": response.text,
            "additional_kwargs": _json_or_none(extra) or {},
            "raw": _json_or_none(response.raw),
        }

    def _completion_hit(
        self,
        payload: Mapping[str, Any],
        key: str,
        text: str | None = None,
        delta: str | None = None,
    ) -> CompletionResponse:
        return CompletionResponse(
            text=payload["text"] if text is None else text,
            raw=payload.get("raw"),
            delta=delta,
            additional_kwargs=self._mark(payload.get("additional_kwargs") or {}, "hit", key),
        )

    def _completion_replay(self, payload: Mapping[str, Any], key: str) -> CompletionResponseGen:
        text = ""
        for piece in _PIECES.findall(payload["text"]):
            text += piece
            yield self._completion_hit(payload, key, text=text, delta=piece)

    def _completion_miss(self, response: CompletionResponse, key: str | None) -> CompletionResponse:
        self._put(key, self._completion_payload(response))
        return response.model_copy(
            update={
                "additional_kwargs": self._mark(
                    response.additional_kwargs, "miss" if key else "bypass", key
                )
            }
        )

    # -- sync -----------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """The wrapped LLM's ``chat``, answered from the cache on an exact repeat."""
        key = self._chat_key(messages, kwargs)
        payload = self._get(key)
        if payload is not None and key is not None:
            return self._chat_hit(payload, key)
        return self._chat_miss(self.llm.chat(messages, **kwargs), key)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The wrapped LLM's ``complete``, answered from the cache on an exact repeat."""
        key = self._completion_key(prompt, formatted, kwargs)
        payload = self._get(key)
        if payload is not None and key is not None:
            return self._completion_hit(payload, key)
        response = self.llm.complete(prompt, formatted=formatted, **kwargs)
        return self._completion_miss(response, key)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """The wrapped LLM's ``stream_chat``; a stored answer is replayed word by word."""
        key = self._chat_key(messages, kwargs)
        payload = self._get(key)
        if payload is not None and key is not None:
            return self._chat_replay(payload, key)
        inner = self.llm.stream_chat(messages, **kwargs)

        def gen() -> ChatResponseGen:
            last = None
            for last in inner:
                yield last
            # Stored only once the stream completed: its last chunk holds the whole message.
            if last is not None:
                self._put(key, self._chat_payload(last))

        return gen()

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """The wrapped LLM's ``stream_complete``; a stored answer is replayed word by word."""
        key = self._completion_key(prompt, formatted, kwargs)
        payload = self._get(key)
        if payload is not None and key is not None:
            return self._completion_replay(payload, key)
        inner = self.llm.stream_complete(prompt, formatted=formatted, **kwargs)

        def gen() -> CompletionResponseGen:
            last = None
            for last in inner:
                yield last
            if last is not None:
                self._put(key, self._completion_payload(last))

        return gen()

    # -- async ----------------------------------------------------------------------------

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`."""
        key = self._chat_key(messages, kwargs)
        payload = await self._aget(key)
        if payload is not None and key is not None:
            return self._chat_hit(payload, key)
        response = await self.llm.achat(messages, **kwargs)
        await self._aput(key, self._chat_payload(response))
        return response.model_copy(
            update={
                "additional_kwargs": self._mark(
                    response.additional_kwargs, "miss" if key else "bypass", key
                )
            }
        )

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`."""
        key = self._completion_key(prompt, formatted, kwargs)
        payload = await self._aget(key)
        if payload is not None and key is not None:
            return self._completion_hit(payload, key)
        response = await self.llm.acomplete(prompt, formatted=formatted, **kwargs)
        await self._aput(key, self._completion_payload(response))
        return response.model_copy(
            update={
                "additional_kwargs": self._mark(
                    response.additional_kwargs, "miss" if key else "bypass", key
                )
            }
        )

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`."""
        key = self._chat_key(messages, kwargs)
        payload = await self._aget(key)
        if payload is not None and key is not None:
            return _aiter(self._chat_replay(payload, key))
        inner = await self.llm.astream_chat(messages, **kwargs)

        async def gen() -> ChatResponseAsyncGen:
            last = None
            async for last in inner:
                yield last
            if last is not None:
                await self._aput(key, self._chat_payload(last))

        return gen()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        key = self._completion_key(prompt, formatted, kwargs)
        payload = await self._aget(key)
        if payload is not None and key is not None:
            return _aiter(self._completion_replay(payload, key))
        inner = await self.llm.astream_complete(prompt, formatted=formatted, **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            last = None
            async for last in inner:
                yield last
            if last is not None:
                await self._aput(key, self._completion_payload(last))

        return gen()


async def _aiter(items: Iterable[_T]) -> AsyncGenerator[_T, None]:
    for item in items:
        yield item


class CachedFunctionCallingLLM(CachedLLM, FunctionCallingLLM):
    """:class:`CachedLLM` for a function-calling LLM: tool calling is the wrapped LLM's.

    ``chat_with_tools`` builds the wrapped LLM's own tool request and sends it through the
    cached ``chat``, so a repeated tool-calling turn is answered locally too.
    """

    llm: FunctionCallingLLM = Field(description="The wrapped function-calling LLM.")

    @classmethod
    def class_name(cls) -> str:
        return "HaikuCache_CachedFunctionCallingLLM"

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The wrapped LLM's tool request."""
        return self.llm._prepare_chat_with_tools_compat(
            tools,
            user_msg=user_msg,
            chat_history=chat_history,
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            tool_required=tool_required,
            **kwargs,
        )

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """The wrapped LLM's validation."""
        return self.llm._validate_chat_with_tools_response(
            response, tools, allow_parallel_tool_calls=allow_parallel_tool_calls, **kwargs
        )

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The wrapped LLM's reading of tool calls."""
        return self.llm.get_tool_calls_from_response(
            response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
        )


def wrap(
    llm: LLM,
    *,
    store: ResponseStore | str | None = None,
    namespace: str = "default",
    ttl: float | None = None,
    tags: Sequence[str] = (),
    clock: Clock | None = None,
) -> CachedLLM:
    """Put haikucache's response cache in front of any LlamaIndex LLM.

    Args:
        llm: the LLM to wrap (OpenAI, Gemini, a local model, ``MockLLM`` …).
        store: a haikucache store, ``"disk"`` (the user's cache directory) or ``"memory"``
            (default).
        namespace: tenant; answers are never shared across namespaces.
        ttl: seconds a stored answer stays valid (default: until evicted or invalidated).
        tags: labels on every stored answer, for ``store.invalidate(tag=...)``.
        clock: the time source for TTLs (tests pass a :class:`haikucache.ManualClock`).

    Returns:
        A :class:`CachedFunctionCallingLLM` when ``llm`` is a function-calling LLM (tools
        keep working), else a :class:`CachedLLM`.

    Raises:
        ConfigurationError: ``llm`` is already wrapped, or is a ``HaikuCache`` (which has
            the response cache built in: pass it ``store=``), or not an LLM.

    Example:
        >>> from llama_index.core import Settings
        >>> Settings.llm = wrap(OpenAI(model="gpt-4o-mini"), store="disk")  # doctest: +SKIP
    """
    from .base import HaikuCache

    if isinstance(llm, CachedLLM):
        raise ConfigurationError("this LLM is already wrapped by haikucache")
    if isinstance(llm, HaikuCache):
        raise ConfigurationError(
            "HaikuCache has haikucache's response cache built in; pass it store= instead"
        )
    if not isinstance(llm, LLM):
        raise ConfigurationError(f"expected a LlamaIndex LLM, got {type(llm).__name__}")
    cls: Callable[..., CachedLLM] = (
        CachedFunctionCallingLLM if isinstance(llm, FunctionCallingLLM) else CachedLLM
    )
    return cls(llm, store=store, namespace=namespace, ttl=ttl, tags=tags, clock=clock)
