"""``ChatAnthropicHaikuCache``: ``ChatAnthropic`` whose requests run through haikucache's engine.

It *is* a ``ChatAnthropic`` (a subclass), so every feature keeps working unchanged —
``bind_tools``, ``with_structured_output`` (tool calling and ``json_schema``), ``invoke``,
``stream``, ``batch`` and their async twins, ``usage_metadata`` with cache read and creation
details, top-level ``cache_control`` and ``AnthropicPromptCachingMiddleware``. The only thing
it changes is the HTTP client under the SDK: its transport (:mod:`._transport`) sends every
``POST /v1/messages`` through the engine's stages (breakpoints, response cache, ledger).

What haikucache did is in ``response_metadata["haikucache"]`` (a
:meth:`haikucache.CallInfo.to_dict`): ``cache`` (``"miss"``/``"hit"``), ``cost_usd``,
``baseline_usd``, ``saved_usd`` and the saving by cause.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from functools import cached_property, lru_cache
from types import ModuleType
from typing import Any

import anthropic
from anthropic.types import Message
from anthropic.types.beta import BetaMessage
from langchain_anthropic import ChatAnthropic
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field

from haikucache import (
    DEFAULT_STORE,
    CallOptions,
    ConfigurationError,
    Engine,
    Outcome,
    Pipeline,
    PreparedCall,
    UsageError,
)

from ._transport import CallSlot, reset_slot, transport_classes, use_slot

__all__ = ["ChatAnthropicHaikuCache", "aclose_shared_transports", "haikucache_class", "wrap"]

#: The per-call keyword (``model.invoke(x, haikucache={"no_cache": True})``).
OPTIONS_KWARG = "haikucache"

# The SDK's own connection-pool defaults (anthropic._constants.DEFAULT_CONNECTION_LIMITS).
_MAX_CONNECTIONS = 1000
_MAX_KEEPALIVE = 100


def _http_module() -> ModuleType:
    """``httpx2`` for anthropic >= 1, ``httpx`` before: whatever the installed SDK is built on."""
    for base in anthropic.DefaultHttpxClient.__mro__:
        if base.__module__.split(".")[0] == "httpx2":
            import httpx2

            return httpx2
    import httpx

    return httpx


_POOLS: dict[tuple[str, bool, str | None], Any] = {}


@lru_cache
def _shared_transport(mod: ModuleType, asynchronous: bool, proxy: str | None) -> Any:
    """One pooled transport per kind and proxy for the process, as langchain-anthropic
    shares its HTTP clients: connections are reused across model instances, never leaked."""
    limits = mod.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_KEEPALIVE)
    cls = mod.AsyncHTTPTransport if asynchronous else mod.HTTPTransport
    transport = cls(limits=limits, proxy=proxy)
    _POOLS[(mod.__name__, asynchronous, proxy)] = transport
    return transport


async def aclose_shared_transports() -> None:
    """Close the pooled connections of the default transports, sync and async.

    Async connections belong to the event loop that opened them: call this before that
    loop ends (e.g. at the end of a test module that runs its own loop). The next call
    opens a fresh pool.
    """
    transports = list(_POOLS.values())
    _POOLS.clear()
    _shared_transport.cache_clear()
    for transport in transports:
        if hasattr(transport, "aclose"):
            await transport.aclose()
        else:
            transport.close()


def _options(value: Any, default: CallOptions | None) -> CallOptions:
    if value is None:
        return default or CallOptions.of()
    if isinstance(value, CallOptions):
        return value
    if isinstance(value, Mapping):
        base = default or CallOptions()
        fields: dict[str, Any] = {
            "namespace": base.namespace,
            "no_cache": base.no_cache,
            "no_store": base.no_store,
            "ttl": base.ttl,
            "tags": base.tags,
        }
        unknown = set(value) - set(fields)
        if unknown:
            raise ConfigurationError(
                f"unknown haikucache option(s) {sorted(unknown)}; expected {sorted(fields)}"
            )
        fields.update(value)
        fields["tags"] = tuple(fields["tags"] or ())
        return CallOptions(**fields)
    raise ConfigurationError(
        f"{OPTIONS_KWARG}= takes a haikucache.CallOptions or a dict, got {type(value).__name__}"
    )


class _HaikuCacheMixin:
    """The overrides that route a ``ChatAnthropic`` through haikucache (see the module doc)."""

    # Declared on the concrete classes as pydantic fields.
    engine: Engine | None
    upstream_transport: Any
    use_batches: bool
    batcher: Any
    call_options: CallOptions | None

    # -- the engine and the SDK clients ---------------------------------------------------

    @cached_property
    def haikucache_batcher(self) -> Any:
        """The Message Batches batcher ``batch()`` uses: ``batcher`` if given, else one
        that reaches the API as this model does (API key, base URL, headers,
        ``upstream_transport``) and shares its engine."""
        if self.batcher is not None:
            return self.batcher
        from ._batch import build_batcher

        return build_batcher(self)

    @cached_property
    def haikucache_engine(self) -> Engine:
        """The engine in use: ``engine`` if given, else one keyed by a hash of the API key."""
        if self.engine is not None:
            return self.engine
        return Engine.for_credentials(self._haikucache_credential)

    @property
    def _haikucache_credential(self) -> str | None:
        key: str = self.anthropic_api_key.get_secret_value()  # type: ignore[attr-defined]
        return key or None

    @cached_property
    def haikucache_pipeline(self) -> Pipeline:
        """The pipeline every call of this model goes through (shared by both transports)."""
        return Pipeline(self.haikucache_engine)

    def _http_client(self, *, asynchronous: bool) -> Any:
        mod = _http_module()
        sync_cls, async_cls = transport_classes(mod)
        inner = self.upstream_transport
        if inner is None:
            inner = _shared_transport(mod, asynchronous, self.anthropic_proxy)  # type: ignore[attr-defined]
        params = self._client_params  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = {"base_url": params["base_url"]}
        if "timeout" in params:
            kwargs["timeout"] = params["timeout"]
        if asynchronous:
            return anthropic.DefaultAsyncHttpxClient(
                transport=async_cls(self.haikucache_pipeline, inner), **kwargs
            )
        return anthropic.DefaultHttpxClient(
            transport=sync_cls(self.haikucache_pipeline, inner), **kwargs
        )

    @cached_property
    def _client(self) -> anthropic.Client:
        return anthropic.Client(
            **self._client_params,  # type: ignore[attr-defined]
            http_client=self._http_client(asynchronous=False),
        )

    @cached_property
    def _async_client(self) -> anthropic.AsyncClient:
        return anthropic.AsyncClient(
            **self._client_params,  # type: ignore[attr-defined]
            http_client=self._http_client(asynchronous=True),
        )

    # -- calls ----------------------------------------------------------------------------

    def _slot(self, kwargs: dict[str, Any]) -> CallSlot:
        return CallSlot(options=_options(kwargs.pop(OPTIONS_KWARG, None), self.call_options))

    @staticmethod
    def _annotate(result: ChatResult, slot: CallSlot) -> ChatResult:
        if slot.info is not None:
            for generation in result.generations:
                generation.message.response_metadata["haikucache"] = slot.info.to_dict()
        return result

    @staticmethod
    def _raise(slot: CallSlot, exc: BaseException) -> None:
        # A request haikucache refused (RequestValidationError) surfaces as itself, with
        # the SDK's 400 as its cause, rather than as an API error that was never sent.
        if slot.error is not None:
            raise slot.error from exc

    def _hit_call(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        slot: CallSlot,
    ) -> tuple[PreparedCall, bool] | None:
        """The call as the transport will prepare it, to look it up before any SDK work.

        A hit is then answered without building an HTTP request, which is most of the cost of
        a hit. It goes through the same pipeline as the transport (validated, keyed under
        the same credential); anything unexpected here just skips the shortcut.
        """
        pipeline = self.haikucache_pipeline
        if pipeline.engine.store is None or slot.options.no_cache:
            return None
        try:
            # LangChain validated these messages already: handed over as a prompt value,
            # ChatAnthropic does not validate them again (a list would be).
            prompt = ChatPromptValue.model_construct(messages=messages)
            params = self._get_request_payload(prompt, stop=stop, **kwargs)  # type: ignore[attr-defined]
            betas = tuple(params.pop("betas", None) or ())
            params.update(params.pop("extra_body", None) or {})
            if any(name.startswith("extra_") for name in params) or params.get("stream"):
                return None
            call = pipeline.prepare(
                params, slot.options, credential=self._haikucache_credential, betas=betas
            )
        except Exception:
            return None
        return call, bool(betas)

    def _hit_result(
        self, outcome: Outcome[Any], beta: bool, slot: CallSlot, kwargs: dict[str, Any]
    ) -> ChatResult:
        slot.info = outcome.info
        parsed = (BetaMessage if beta else Message).model_validate(outcome.message)
        return self._annotate(self._format_output(parsed, **kwargs), slot)  # type: ignore[attr-defined]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        slot = self._slot(kwargs)
        shortcut = self._hit_call(messages, stop, kwargs, slot)
        if shortcut is not None:
            call, beta = shortcut
            hit = self.haikucache_pipeline.lookup(call)
            if hit is not None:
                return self._hit_result(hit, beta, slot, kwargs)
            slot.looked_up = call.key
        token = use_slot(slot)
        try:
            result = super()._generate(messages, stop, run_manager, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            self._raise(slot, exc)
            raise
        finally:
            reset_slot(token)
        return self._annotate(result, slot)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        slot = self._slot(kwargs)
        shortcut = self._hit_call(messages, stop, kwargs, slot)
        if shortcut is not None:
            call, beta = shortcut
            hit = await self.haikucache_pipeline.alookup(call)
            if hit is not None:
                return self._hit_result(hit, beta, slot, kwargs)
            slot.looked_up = call.key
        token = use_slot(slot)
        try:
            result = await super()._agenerate(messages, stop, run_manager, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            self._raise(slot, exc)
            raise
        finally:
            reset_slot(token)
        return self._annotate(result, slot)

    @staticmethod
    def _with_info(chunk: ChatGenerationChunk | None, slot: CallSlot) -> ChatGenerationChunk | None:
        """The stream's last chunk carrying ``response_metadata["haikucache"]``."""
        if slot.info is None:
            return chunk
        if chunk is None:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=""))
        chunk.message.response_metadata["haikucache"] = slot.info.to_dict()
        return chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        slot = self._slot(kwargs)
        inner = super()._stream(messages, stop, run_manager, **kwargs)  # type: ignore[misc]
        last: ChatGenerationChunk | None = None
        first = True
        while True:
            # The slot is current only while the inner generator runs (the request is sent
            # on its first step), never across our own yields, so contexts stay balanced.
            token = use_slot(slot) if first else None
            try:
                chunk = next(inner, None)
            except Exception as exc:
                self._raise(slot, exc)
                raise
            finally:
                if token is not None:
                    reset_slot(token)
            first = False
            if chunk is None:
                break
            # ChatAnthropic marks the message_delta chunk "last"; the call is accounted a
            # moment later (message_stop), so that chunk waits for the accounting.
            if getattr(chunk.message, "chunk_position", None) == "last":
                last = chunk
                continue
            yield chunk
        final = self._with_info(last, slot)
        if final is not None:
            yield final

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        slot = self._slot(kwargs)
        inner = super()._astream(messages, stop, run_manager, **kwargs)  # type: ignore[misc]
        last: ChatGenerationChunk | None = None
        first = True
        try:
            while True:
                token = use_slot(slot) if first else None
                try:
                    chunk = await inner.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    self._raise(slot, exc)
                    raise
                finally:
                    if token is not None:
                        reset_slot(token)
                first = False
                if getattr(chunk.message, "chunk_position", None) == "last":
                    last = chunk
                    continue
                yield chunk
        finally:
            await inner.aclose()
        final = self._with_info(last, slot)
        if final is not None:
            yield final

    # -- batches --------------------------------------------------------------------------

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """``invoke`` on each input; through Message Batches when ``use_batches`` is on."""
        if self.use_batches and inputs:
            from ._batch import run_batch

            return run_batch(self, inputs, config, return_exceptions=return_exceptions, **kwargs)
        return self._realtime_batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _realtime_batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return super().batch(  # type: ignore[misc,no-any-return]
            inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """The async twin of :meth:`batch`."""
        if self.use_batches and inputs:
            from ._batch import arun_batch

            return await arun_batch(
                self, inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        return await self._arealtime_batch(
            inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    async def _arealtime_batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return await super().abatch(  # type: ignore[misc,no-any-return]
            inputs, config, return_exceptions=return_exceptions, **kwargs
        )


# LangChain inspects ``_generate``'s signature on every call (does it take run_manager?): about
# 15 µs of its own ~80 µs per call, which a hit pays too. A precomputed one is read instead.
_method: Any
for _method in (_HaikuCacheMixin._generate, _HaikuCacheMixin._agenerate):
    _method.__signature__ = inspect.signature(_method)
del _method


class ChatAnthropicHaikuCache(_HaikuCacheMixin, ChatAnthropic):
    """``ChatAnthropic`` with haikucache under it: breakpoints, a response cache, a ledger.

    Takes every ``ChatAnthropic`` argument, plus:

    Args:
        engine: the :class:`haikucache.Engine` (its store is the response cache, its planner
            places breakpoints, its ledger accounts). Default: one whose namespace is a hash
            of the API key, with the process-wide ledger and no response cache.
        upstream_transport: the ``httpx2`` (``httpx`` for anthropic < 1) transport that
            reaches the API, e.g. ``haikucache.testing.Emulator().httpx2_transport()``.
            Default: a pooled HTTP transport (honouring ``anthropic_proxy``).
        use_batches: send ``batch()``/``abatch()`` through Message Batches (50 % off; waits
            for the batch to end).
        batcher: the ``haikucache`` ``Batcher`` to use for that (its journal, polling and
            flush settings); default: one that reaches the API as this model does (key,
            base URL, ``upstream_transport``) and shares its engine.
        call_options: default per-call options (namespace, ``no_cache``, ``no_store``,
            ``ttl``, ``tags``); override per call with ``invoke(..., haikucache={...})``.

    Example:
        .. code-block:: python

            from haikucache import Engine, DiskStore
            from langchain_haikucache import ChatAnthropicHaikuCache

            model = ChatAnthropicHaikuCache(
                model="claude-haiku-4-5", engine=Engine(store=DiskStore())
            )
            reply = model.invoke("Hello")
            reply.response_metadata["haikucache"]["cache"]   # "miss", then "hit"
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Engine | None = Field(default=None, exclude=True)
    upstream_transport: Any = Field(default=None, exclude=True)
    use_batches: bool = False
    batcher: Any = Field(default=None, exclude=True)
    call_options: CallOptions | None = Field(default=None, exclude=True)

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``["langchain_haikucache", "chat_models"]``."""
        return ["langchain_haikucache", "chat_models"]


_classes: dict[type[ChatAnthropic], type[ChatAnthropic]] = {ChatAnthropic: ChatAnthropicHaikuCache}


def haikucache_class(base: type[ChatAnthropic]) -> type[ChatAnthropic]:
    """The haikucache variant of a ``ChatAnthropic`` subclass (built once per class)."""
    if not (isinstance(base, type) and issubclass(base, ChatAnthropic)):
        raise ConfigurationError(f"expected a ChatAnthropic class, got {base!r}")
    if issubclass(base, _HaikuCacheMixin):
        return base
    cls = _classes.get(base)
    if cls is None:
        cls = type(
            "HaikuCache" + base.__name__,
            (_HaikuCacheMixin, base),
            {
                "__module__": __name__,
                "__annotations__": {
                    "engine": Engine | None,
                    "upstream_transport": Any,
                    "use_batches": bool,
                    "batcher": Any,
                    "call_options": CallOptions | None,
                },
                "model_config": ConfigDict(arbitrary_types_allowed=True),
                "engine": Field(default=None, exclude=True),
                "upstream_transport": Field(default=None, exclude=True),
                "use_batches": False,
                "batcher": Field(default=None, exclude=True),
                "call_options": Field(default=None, exclude=True),
            },
        )
        _classes[base] = cls
    return cls


def wrap(
    model: ChatAnthropic,
    *,
    engine: Engine | None = None,
    store: Any = DEFAULT_STORE,
    upstream_transport: Any = None,
    use_batches: bool = False,
    batcher: Any = None,
    namespace: str | None = None,
    ttl: float | None = None,
    tags: Sequence[str] = (),
) -> ChatAnthropic:
    """A copy of ``model`` whose requests run through haikucache.

    The copy is a ``ChatAnthropic`` (a subclass of ``type(model)``) with the same settings,
    so it is a drop-in replacement anywhere the original was used, including agents.

    Args:
        model: a ``ChatAnthropic`` (or subclass) instance. Wrap the model itself, before
            ``bind_tools`` or ``with_structured_output``.
        engine: the engine to use; default: one keyed by a hash of the model's API key.
        store: the default engine's response store (``haikucache.DiskStore()``,
            ``MemoryStore()``, ``RedisStore(...)``, ``"disk"`` or ``"memory"``); the default
            ``"disk"`` is the same at every haikucache door; ``None`` keeps no answers. Not
            together with ``engine``.
        upstream_transport: see :class:`ChatAnthropicHaikuCache`.
        use_batches: send ``batch()``/``abatch()`` through Message Batches.
        batcher: the batcher for that (see :class:`ChatAnthropicHaikuCache`).
        namespace: the namespace calls are cached and accounted under.
        ttl: seconds a stored answer stays valid.
        tags: labels on stored answers, for invalidation.

    Raises:
        ConfigurationError: ``model`` is not a ``ChatAnthropic`` (use
            :class:`~langchain_haikucache.HaikuCacheLLMCache` for other models), it is
            already wrapped, or both ``engine`` and ``store`` were given.
    """
    if isinstance(model, _HaikuCacheMixin):
        raise UsageError("this model is already wrapped by haikucache; wrap the original once")
    if not isinstance(model, ChatAnthropic):
        hint = (
            "; wrap the model before bind_tools()/with_structured_output()"
            if hasattr(model, "bound")
            else "; for other LangChain models use langchain_haikucache.HaikuCacheLLMCache"
        )
        raise ConfigurationError(f"wrap() takes a ChatAnthropic, got {type(model).__name__}{hint}")
    if engine is not None and store != DEFAULT_STORE:
        raise ConfigurationError("pass either engine= or store=, not both")
    if engine is None and store != DEFAULT_STORE:
        key = model.anthropic_api_key.get_secret_value()
        engine = Engine.for_credentials(key or None, store=store)
    options = None
    if namespace is not None or ttl is not None or tags:
        options = CallOptions(namespace=namespace, ttl=ttl, tags=tuple(tags))
    cls: Any = haikucache_class(type(model))
    fields = {name: getattr(model, name) for name in model.model_fields_set}
    wrapped: ChatAnthropic = cls(
        **fields,
        engine=engine,
        upstream_transport=upstream_transport,
        use_batches=use_batches or batcher is not None,
        batcher=batcher,
        call_options=options,
    )
    return wrapped
