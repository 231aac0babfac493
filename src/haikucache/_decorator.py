"""Decorators: a Python function becomes a cached Haiku call, or any result becomes cached.

``@llm(...)`` turns a function that *returns a prompt* into a function that returns the
answer::

    @haikucache.llm(system="Answer in one sentence.", ttl=3600)
    def explain(term: str) -> str:
        return f"What is {term}?"

    explain("prompt caching")          # a str: the answer's text
    explain.message("prompt caching")  # the full haikucache.Message (cost, cache status …)

Every call goes through :class:`~haikucache.Client` (or :class:`~haikucache.AsyncClient` for
an ``async def``), so the engine's chain applies unchanged: validation, the exact key, the
response cache, single-flight of identical calls in flight, the prompt-cache planner and the
ledger. The decorator adds only the translation from "function arguments" to "Messages
request" and from "message" to "result":

* the prompt may be a string (one user turn), a list of messages, or a full request dict
  (whose fields win over the decorator's);
* the result is the text, the :class:`~haikucache.Message` (``returns="message"``), or a
  validated structured value when ``output=`` (or the function's return annotation) is a
  pydantic model or a TypedDict: the request then carries one tool whose ``input_schema`` is
  the type's JSON schema and ``tool_choice`` forces it, and the tool's input is validated.

``@memoize(...)`` keeps any function's result in a haikucache store, keyed on its arguments
(see :class:`Memoized`).

Both decorators must be called (``@llm()``, ``@memoize()``) and applied to a function; anything
else is a :class:`TypeError` at decoration time.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import difflib
import enum
import functools
import inspect
import json
import logging
import math
import operator
import re
import sys
import threading
import time
import types
import typing
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

import httpx
import xxhash

from ._catalog import DEFAULT_MODEL
from ._client import AsyncClient, Client, _resolve_credentials
from ._clock import Clock, SystemClock
from ._engine import DEFAULT_STORE, OPTION_NAMES, CallOptions, Engine
from ._exceptions import (
    APIResponseValidationError,
    ConfigurationError,
    MissingDependencyError,
    RequestValidationError,
    UsageError,
)
from ._ledger import default_cache_dir
from ._semantic import SemanticConfig, SemanticIndex
from ._singleflight import AsyncSingleFlight, SingleFlight
from ._store import AsyncResponseStore, CacheEntry, DiskStore, MemoryStore, ResponseStore
from ._types import Message, TextBlock, ToolUseBlock
from ._wire import MESSAGES_FIELDS

if TYPE_CHECKING:
    from ._batcher import AsyncBatcher, Batcher

__all__ = [
    "Args",
    "AsyncLLMFunction",
    "AsyncMemoized",
    "LLMFunction",
    "Memoized",
    "Prompt",
    "llm",
    "memoize",
]

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
S = TypeVar("S")
P2 = ParamSpec("P2")
_L = TypeVar("_L", bound="_LLMBase[Any, Any]")

#: What a decorated function returns: one user turn, a list of messages, or a full request.
Prompt = str | Sequence[Mapping[str, Any]] | Mapping[str, Any]

Returns = Literal["text", "message"]

# A tool name is ^[a-zA-Z0-9_-]{1,64}$; the output type's name is made to fit.
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_MEMO_KEY_VERSION = "hm1"
_MEMO_TYPE = "haikucache.memoized"

logger = logging.getLogger("haikucache")


# --------------------------------------------------------------------------- shared helpers


def _check_function(fn: object, decorator: str) -> Callable[..., Any]:
    """The decorated object must be a plain function (or method); say clearly when it is not."""
    if isinstance(fn, (staticmethod, classmethod)):
        raise TypeError(
            f"@{decorator}(...) must be applied to the function itself: put it below "
            f"@{type(fn).__name__}"
        )
    if inspect.isclass(fn) or not (
        inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial)
    ):
        raise TypeError(
            f"@{decorator}(...) decorates a function, got {type(fn).__name__} {fn!r:.80}"
        )
    return cast("Callable[..., Any]", fn)


def _bare_use(decorator: str, args: tuple[Any, ...]) -> TypeError:
    what = args[0] if args else None
    if callable(what):
        return TypeError(
            f"@{decorator} must be called: write @{decorator}() or @{decorator}(ttl=...), "
            f"not @{decorator}"
        )
    return TypeError(f"{decorator}() takes keyword arguments only, got positional {what!r:.80}")


def _is_async(fn: Callable[..., Any]) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target)


def _return_annotation(fn: Callable[..., Any]) -> tuple[bool, Any]:
    """``(resolved, annotation)`` of ``fn``'s return type (``None`` when it has none)."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    raw = getattr(target, "__annotations__", {}).get("return", inspect.Signature.empty)
    if raw is inspect.Signature.empty:
        return True, None
    if not isinstance(raw, str):
        return True, raw
    try:
        return True, typing.get_type_hints(target).get("return")
    except Exception:  # NameError for a name defined later (or only under TYPE_CHECKING)
        return False, raw


def _is_structured_type(tp: Any) -> bool:
    """A pydantic model class or a TypedDict: the types ``@llm`` parses answers into."""
    if not isinstance(tp, type):
        return False
    if typing.is_typeddict(tp):
        return True
    if "typing_extensions" in sys.modules:
        import typing_extensions

        if typing_extensions.is_typeddict(tp):
            return True
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and issubclass(tp, pydantic.BaseModel)


def _type_adapter(tp: Any, feature: str) -> Any:
    try:
        import pydantic
    except ImportError as exc:  # pragma: no cover - pydantic ships with anthropic
        raise MissingDependencyError("pydantic", "anthropic", feature) from exc
    return pydantic.TypeAdapter(_for_pydantic(tp))


def _for_pydantic(tp: Any) -> Any:
    """``tp`` with every ``typing.TypedDict`` rebuilt as a ``typing_extensions`` one.

    Before Python 3.12 pydantic cannot read ``typing.TypedDict`` (it lacks the information
    about required keys it needs); the rebuilt class has the same name, keys and
    requiredness, and validates to the same plain dict.
    """
    if sys.version_info >= (3, 12):
        return tp
    import typing_extensions

    make: Any = typing_extensions.TypedDict  # the functional form, with a computed name
    if isinstance(tp, type) and typing.is_typeddict(tp):
        if type(tp) is type(make("_Probe", {})):
            return tp
        hints = typing.get_type_hints(tp)
        fields = {
            name: (
                typing_extensions.Required[_for_pydantic(hint)]
                if name in getattr(tp, "__required_keys__", ())
                else typing_extensions.NotRequired[_for_pydantic(hint)]
            )
            for name, hint in hints.items()
        }
        rebuilt: Any = make(tp.__name__, fields)
        rebuilt.__doc__ = tp.__doc__
        rebuilt.__module__ = tp.__module__
        return rebuilt
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None or not args:
        return tp
    converted = tuple(_for_pydantic(a) for a in args)
    if converted == args:
        return tp
    try:
        return tp.copy_with(converted)
    except AttributeError:  # a PEP 604 union or a builtin generic alias
        return (
            functools.reduce(operator.or_, converted)
            if origin is types.UnionType
            else origin[converted]
        )


# --------------------------------------------------------------------------- structured output


class _Output:
    """A structured result type: its forced tool, and how a tool input becomes the value."""

    def __init__(self, tp: type[Any]) -> None:
        if not _is_structured_type(tp):
            raise TypeError(f"output= must be a pydantic model class or a TypedDict, got {tp!r}")
        self.type = tp
        self.adapter = _type_adapter(tp, "structured output")
        schema = self.adapter.json_schema()
        if schema.get("type") != "object":
            raise TypeError(f"output type {tp!r} must describe a JSON object")
        self.name = (_TOOL_NAME.sub("_", tp.__name__) or "result")[:64]
        # The type's docstring tells the model what to report (pydantic puts it in the schema).
        description = schema.pop("description", None) or inspect.cleandoc(tp.__doc__ or "")
        self.tool: dict[str, Any] = {
            "name": self.name,
            "description": description or f"Report the result as a {tp.__name__}.",
            "input_schema": schema,
        }

    def parse(self, message: Message) -> Any:
        """The validated value of the forced tool's input.

        Raises:
            APIResponseValidationError: the answer has no such tool call, or its input does
                not validate against the type.
        """
        for block in message.content:
            if isinstance(block, ToolUseBlock) and block.name == self.name:
                try:
                    return self.adapter.validate_python(block.input)
                except Exception as exc:  # pydantic.ValidationError
                    raise APIResponseValidationError(
                        f"the model's {self.name} input does not validate as "
                        f"{self.type.__name__}: {exc}"
                    ) from exc
        raise APIResponseValidationError(
            f"the answer has no {self.name} tool call (stop_reason={message.stop_reason!r}); "
            "raise max_tokens if it was cut off"
        )


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class _LLMConfig:
    params: Mapping[str, Any]
    options: CallOptions
    returns: Returns | None
    output: _Output | None
    client: Client | AsyncClient | None
    engine: Engine | None
    store: ResponseStore | str | _Unset | None
    semantic: SemanticConfig | None

    def replace(self, **changes: Any) -> _LLMConfig:
        return dataclasses.replace(self, **changes)


class _Unset(enum.Enum):
    """``store=`` not given: the default store (``store=None`` is no response cache)."""

    UNSET = "unset"


_UNSET = _Unset.UNSET


class _ClientSlot:
    """Lazily created clients sharing one engine: one sync client, one async per event loop.

    An :class:`httpx.AsyncClient`'s connections belong to the loop that opened them, so each
    running loop gets its own :class:`AsyncClient` (on the same engine, hence the same
    response cache and ledger).
    """

    def __init__(
        self,
        engine: Engine | None,
        store: ResponseStore | str | None,
        semantic: SemanticConfig | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._semantic = semantic
        self._lock = threading.Lock()
        self._sync: Client | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _engine_for(self, credential: str | None) -> Engine:
        if self._engine is None:
            self._engine = Engine.for_credentials(
                credential, store=self._store, semantic=self._semantic
            )
        return self._engine

    def sync(self) -> Client:
        with self._lock:
            if self._sync is None:
                api_key, token = _resolve_credentials(None, None, None)
                self._sync = Client(engine=self._engine_for(api_key or token))
            return self._sync

    def async_(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                api_key, token = _resolve_credentials(None, None, None)
                client = AsyncClient(engine=self._engine_for(api_key or token))
                self._async[loop] = client
            return client


# The client of every decorated function that names neither client=, engine= nor store=:
# credentials from the environment, answers kept on disk (the user's cache directory).
_DEFAULT_SLOT = _ClientSlot(None, DEFAULT_STORE)


def _option_kwargs(options: CallOptions) -> dict[str, Any]:
    return {
        "namespace": options.namespace,
        "no_cache": options.no_cache,
        "no_store": options.no_store,
        "ttl": options.ttl,
        "tags": options.tags,
    }


def _final_text(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


# --------------------------------------------------------------------------- batch arguments


class Args:
    """The arguments of one call, for :meth:`LLMFunction.batch`.

    A plain tuple is taken as positional arguments and any other item as the only argument;
    ``Args`` says it explicitly, with keywords::

        summarize.batch([Args(doc, words=50), Args(other, words=20)])
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    @classmethod
    def of(cls, item: Any) -> Args:
        """An item of a batch list as ``Args`` (see the class docstring for the rules)."""
        if isinstance(item, Args):
            return item
        if isinstance(item, tuple):
            return cls(*item)
        return cls(item)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Args({', '.join(parts)})"


# --------------------------------------------------------------------------- @llm: the objects


class _LLMBase(Generic[P, R_co]):
    """What the sync and async decorated objects share: building requests, reading results."""

    _fn: Callable[..., Any]
    _config: _LLMConfig
    _slot: _ClientSlot
    _bound: tuple[Any, ...]

    def __init__(
        self,
        fn: Callable[..., Any],
        config: _LLMConfig,
        slot: _ClientSlot,
        bound: tuple[Any, ...] = (),
    ) -> None:
        self._fn = fn
        self._config = config
        self._slot = slot
        self._bound = bound
        self._name: str = getattr(fn, "__name__", None) or repr(fn)
        functools.update_wrapper(cast(Any, self), fn)

    def __repr__(self) -> str:
        name = getattr(self._fn, "__qualname__", repr(self._fn))
        return f"<{type(self).__name__} {name} model={self._config.params.get('model')!r}>"

    def _bind(self, obj: Any) -> Any:
        # As a class attribute it binds like a method: ``self`` is the first argument.
        if obj is None:
            return self
        return type(self)(self._fn, self._config, self._slot, (*self._bound, obj))

    def _copy(self: _L, config: _LLMConfig) -> _L:
        return type(self)(self._fn, config, self._slot, self._bound)

    def _with(
        self: _L,
        *,
        namespace: str | None,
        no_cache: bool | None,
        no_store: bool | None,
        ttl: float | None,
        tags: Sequence[str] | None,
        client: Client | AsyncClient | None,
        params: Mapping[str, Any],
    ) -> _L:
        if isinstance(tags, str):
            raise ConfigurationError("tags must be a sequence of strings, not one string")
        old = self._config.options
        options = CallOptions(
            namespace=old.namespace if namespace is None else namespace,
            no_cache=old.no_cache if no_cache is None else no_cache,
            no_store=old.no_store if no_store is None else no_store,
            ttl=old.ttl if ttl is None else ttl,
            tags=old.tags if tags is None else tuple(tags),
        )
        unknown = set(params) & {"returns", "output", "engine", "store", "semantic"}
        if unknown:
            raise ConfigurationError(
                f"with_options() cannot change {', '.join(sorted(unknown))}: decorate again"
            )
        merged = {**self._config.params, **params}
        config = self._config.replace(options=options, params=merged)
        if client is not None:
            _check_client(client, asynchronous=isinstance(self, AsyncLLMFunction))
            config = config.replace(client=client)
        return self._copy(config)

    # -- request and result

    def _prompt_to_request(self, prompt: Any) -> dict[str, Any]:
        config = self._config
        body = {k: v for k, v in config.params.items() if v is not None}
        if isinstance(prompt, str):
            if not prompt:
                # The API rejects empty content (400), and the local validator lets it pass.
                raise RequestValidationError(
                    f"the decorated function {self._name!r} returned an empty prompt",
                    param="messages.0.content",
                )
            body["messages"] = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, Mapping):
            stray = [name for name in OPTION_NAMES if name in prompt]
            if stray:
                raise RequestValidationError(
                    f"{', '.join(stray)} are haikucache options, not request fields; pass them "
                    "to the decorator or to .with_options()",
                    param=stray[0],
                )
            if "messages" not in prompt:
                raise RequestValidationError(
                    "a request dict returned by the decorated function needs 'messages'",
                    param="messages",
                )
            body.update(prompt)
        elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
            if not all(isinstance(m, Mapping) for m in prompt):
                raise RequestValidationError(
                    "a list returned by the decorated function must hold messages "
                    '({"role": ..., "content": ...})',
                    param="messages",
                )
            body["messages"] = [dict(m) for m in prompt]
        else:
            raise RequestValidationError(
                f"the decorated function {self._name!r} must return the prompt: a string, "
                f"a list of messages or a request dict, got {type(prompt).__name__}",
                param="prompt",
            )
        output = config.output
        if output is not None:
            tools = list(body.get("tools") or ())
            if any(isinstance(t, Mapping) and t.get("name") == output.name for t in tools):
                raise RequestValidationError(
                    f"a tool named {output.name!r} is already defined; structured output "
                    "needs that name for its own tool",
                    param="tools",
                )
            body["tools"] = [*tools, output.tool]
            body["tool_choice"] = {"type": "tool", "name": output.name}
        return body

    def _result(self, message: Message, client: Client | AsyncClient) -> Any:
        config = self._config
        if config.returns == "message":
            return message
        if config.output is not None:
            try:
                return config.output.parse(message)
            except APIResponseValidationError:
                # Do not keep serving an answer that cannot be used.
                store = client.engine.store
                if message.haikucache is not None and store is not None:
                    store.delete(message.haikucache.key)
                raise
        return _final_text(message)

    def _check_streamable(self) -> None:
        if self._config.output is not None:
            raise UsageError(
                f"{self._name}.stream() yields text, but this function returns "
                f"{self._config.output.type.__name__} (structured output); call it instead"
            )

    def _key_of(self, client: Client | AsyncClient, body: Mapping[str, Any]) -> str:
        # The same preparation the client runs, so the key is the one it will use.
        return client.messages._context.prepare(body, self._config.options, None).key

    # -- batches

    def _batch_requests(self, items: Iterable[Any]) -> list[dict[str, Any]]:
        return [
            self._request_from(call.args, call.kwargs)
            for call in (Args.of(item) for item in _batch_items(items))
        ]

    def _results(
        self,
        messages: Sequence[Message | BaseException],
        client: Client | AsyncClient,
        return_exceptions: bool,
    ) -> list[Any]:
        results: list[Any] = []
        for message in messages:
            if isinstance(message, BaseException):
                results.append(message)
                continue
            try:
                results.append(self._result(message, client))
            except APIResponseValidationError as exc:
                if not return_exceptions:
                    raise
                results.append(exc)
        return results

    def _request_from(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - defined by the twins


def _check_client(client: object, *, asynchronous: bool) -> None:
    wanted = AsyncClient if asynchronous else Client
    if not isinstance(client, wanted):
        kind = "an async" if asynchronous else "a sync"
        raise ConfigurationError(
            f"{kind} function needs a haikucache.{wanted.__name__} as client=, got "
            f"{type(client).__name__}"
        )


def _batch_items(items: Iterable[Any]) -> Iterable[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"batch() takes a list with one item per call, got {type(items).__name__}")
    return items


class LLMFunction(_LLMBase[P, R_co]):
    """A function whose prompt is answered by Claude, through haikucache.

    Returned by ``@haikucache.llm(...)`` on a ``def``. Calling it runs the decorated function
    to get the prompt, sends the request through :class:`~haikucache.Client` and returns the
    result: the text, the message (``returns="message"``) or the structured value.
    ``__wrapped__`` is the original function.
    """

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> LLMFunction[P, R_co]: ...

    @overload
    def __get__(
        self: LLMFunction[Concatenate[S, P2], R_co], obj: S, objtype: type | None = None
    ) -> LLMFunction[P2, R_co]: ...

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self._bind(obj)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        client = self._client()
        message = self._create(client, self._request_from(args, kwargs), self._config.options)
        return cast("R_co", self._result(message, client))

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """The full :class:`~haikucache.Message` (``.haikucache`` tells cache status and cost)."""
        client = self._client()
        return self._create(client, self._request_from(args, kwargs), self._config.options)

    def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Call without the response cache: neither read nor written."""
        client = self._client()
        options = dataclasses.replace(self._config.options, no_cache=True, no_store=True)
        message = self._create(client, self._request_from(args, kwargs), options)
        return cast("R_co", self._result(message, client))

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[str]:
        """The answer's text deltas as they arrive (a stored answer is replayed).

        The request is built (and the prompt checked) now; it is sent when iteration starts.

        Raises:
            UsageError: the function returns structured output, which has no text to stream.
        """
        self._check_streamable()
        body = self._request_from(args, kwargs)
        client = self._client()
        options = _option_kwargs(self._config.options)

        def deltas() -> Iterator[str]:
            with client.messages.stream(**body, **options) as stream:
                yield from stream.text_stream

        return deltas()

    def request(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """The Messages request a call with these arguments sends (before cache breakpoints)."""
        return self._request_from(args, kwargs)

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The exact response-cache key of a call with these arguments (``hc1:…``)."""
        return self._key_of(self._client(), self._request_from(args, kwargs))

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Forget the stored answer of a call with these arguments; whether there was one."""
        client = self._client()
        store = client.engine.store
        if store is None:
            return False
        return store.delete(self._key_of(client, self._request_from(args, kwargs)))

    def with_options(
        self,
        *,
        ttl: float | None = None,
        namespace: str | None = None,
        no_cache: bool | None = None,
        no_store: bool | None = None,
        tags: Sequence[str] | None = None,
        client: Client | None = None,
        **params: Any,
    ) -> LLMFunction[P, R_co]:
        """A copy with some options changed: cache controls, the client, or request fields.

        Example:
            >>> fresh = explain.with_options(no_cache=True)       # doctest: +SKIP
            >>> longer = explain.with_options(max_tokens=2048)    # doctest: +SKIP
        """
        return self._with(
            namespace=namespace,
            no_cache=no_cache,
            no_store=no_store,
            ttl=ttl,
            tags=tags,
            client=client,
            params=params,
        )

    @overload
    def batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: Literal[False] = False,
        progress: bool = False,
        batcher: Batcher | None = None,
    ) -> list[R_co]: ...

    @overload
    def batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: Literal[True],
        progress: bool = False,
        batcher: Batcher | None = None,
    ) -> list[R_co | BaseException]: ...

    def batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        progress: bool = False,
        batcher: Batcher | None = None,
    ) -> list[R_co] | list[R_co | BaseException]:
        """Answer many calls through Message Batches: half the price, answers within 24 h.

        Answers already in the response cache are served at once; identical calls are sent
        once; every answer is stored, so a re-run after a crash pays nothing twice.

        Args:
            items: one item per call: a tuple of positional arguments, an :class:`Args`, or
                the single argument itself.
            return_exceptions: put a failed call's exception in its place instead of raising
                the first one.
            progress: draw a progress bar on stderr while the batch runs.
            batcher: a :class:`~haikucache.Batcher` to submit through (its own client and
                settings); default a new one on this function's client, closed at the end.

        Returns:
            The results in input order, as a call would return them.
        """
        requests = self._batch_requests(items)
        if batcher is not None:
            messages = batcher.map(
                requests,
                self._config.options,
                return_exceptions=return_exceptions,
                progress=progress,
            )
            client = batcher.client
        else:
            from ._batcher import Batcher

            client = self._client()
            with Batcher(client) as own:
                messages = own.map(
                    requests,
                    self._config.options,
                    return_exceptions=return_exceptions,
                    progress=progress,
                )
        return self._results(messages, client, return_exceptions)

    # -- internals

    def _request_from(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return self._prompt_to_request(self._fn(*self._bound, *args, **kwargs))

    def _client(self) -> Client:
        client = self._config.client
        if client is not None:
            return cast(Client, client)
        return self._slot.sync()

    @property
    def client(self) -> Client:
        """The client calls go through (the default one is created on first use)."""
        return self._client()

    def _create(self, client: Client, body: dict[str, Any], options: CallOptions) -> Message:
        return cast(Message, client.messages.create(**body, **_option_kwargs(options)))


class AsyncLLMFunction(_LLMBase[P, R_co]):
    """The async twin of :class:`LLMFunction`, for ``async def`` functions.

    Calling it returns a coroutine; :meth:`stream` returns an async iterator.
    """

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> AsyncLLMFunction[P, R_co]: ...

    @overload
    def __get__(
        self: AsyncLLMFunction[Concatenate[S, P2], R_co], obj: S, objtype: type | None = None
    ) -> AsyncLLMFunction[P2, R_co]: ...

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self._bind(obj)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        client = self._client()
        body = await self._arequest_from(args, kwargs)
        message = await self._create(client, body, self._config.options)
        return cast("R_co", self._result(message, client))

    async def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """See :meth:`LLMFunction.message`."""
        client = self._client()
        body = await self._arequest_from(args, kwargs)
        return await self._create(client, body, self._config.options)

    async def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """See :meth:`LLMFunction.bypass`."""
        client = self._client()
        options = dataclasses.replace(self._config.options, no_cache=True, no_store=True)
        message = await self._create(client, await self._arequest_from(args, kwargs), options)
        return cast("R_co", self._result(message, client))

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[str]:
        """The answer's text deltas as they arrive; ``async for delta in f.stream(...)``."""
        self._check_streamable()
        options = _option_kwargs(self._config.options)

        async def deltas() -> AsyncIterator[str]:
            client = self._client()
            body = await self._arequest_from(args, kwargs)
            async with client.messages.stream(**body, **options) as stream:
                async for text in stream.text_stream:
                    yield text

        return deltas()

    async def request(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """See :meth:`LLMFunction.request`."""
        return await self._arequest_from(args, kwargs)

    async def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """See :meth:`LLMFunction.cache_key`."""
        return self._key_of(self._client(), await self._arequest_from(args, kwargs))

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """See :meth:`LLMFunction.invalidate`."""
        client = self._client()
        store = client.engine.store
        if store is None:
            return False
        key = self._key_of(client, await self._arequest_from(args, kwargs))
        if isinstance(store, AsyncResponseStore):
            return await store.adelete(key)
        return store.delete(key)

    def with_options(
        self,
        *,
        ttl: float | None = None,
        namespace: str | None = None,
        no_cache: bool | None = None,
        no_store: bool | None = None,
        tags: Sequence[str] | None = None,
        client: AsyncClient | None = None,
        **params: Any,
    ) -> AsyncLLMFunction[P, R_co]:
        """See :meth:`LLMFunction.with_options`."""
        return self._with(
            namespace=namespace,
            no_cache=no_cache,
            no_store=no_store,
            ttl=ttl,
            tags=tags,
            client=client,
            params=params,
        )

    @overload
    async def abatch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: Literal[False] = False,
        progress: bool = False,
        batcher: AsyncBatcher | None = None,
    ) -> list[R_co]: ...

    @overload
    async def abatch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: Literal[True],
        progress: bool = False,
        batcher: AsyncBatcher | None = None,
    ) -> list[R_co | BaseException]: ...

    async def abatch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        progress: bool = False,
        batcher: AsyncBatcher | None = None,
    ) -> list[R_co] | list[R_co | BaseException]:
        """See :meth:`LLMFunction.batch`; ``batcher`` is an :class:`~haikucache.AsyncBatcher`.

        The batcher's worker thread does the I/O with a sync client on this function's
        engine, so answers land in the same response cache and ledger.
        """
        requests = [
            await self._arequest_from(call.args, call.kwargs)
            for call in (Args.of(item) for item in _batch_items(items))
        ]
        if batcher is not None:
            messages = await batcher.amap(
                requests,
                self._config.options,
                return_exceptions=return_exceptions,
                progress=progress,
            )
            return self._results(messages, batcher.batcher.client, return_exceptions)
        from ._batcher import AsyncBatcher

        client = self._sync_twin()
        own = AsyncBatcher(client)
        try:
            messages = await own.amap(
                requests,
                self._config.options,
                return_exceptions=return_exceptions,
                progress=progress,
            )
        finally:
            await own.close()
            if self._config.client is not None:  # the twin was made for this batch
                client.close()
        return self._results(messages, client, return_exceptions)

    # -- internals

    async def _arequest_from(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        prompt = await self._fn(*self._bound, *args, **kwargs)
        return self._prompt_to_request(prompt)

    def _client(self) -> AsyncClient:
        client = self._config.client
        if client is not None:
            return cast(AsyncClient, client)
        return self._slot.async_()

    def _sync_twin(self) -> Client:
        """A sync client on the same engine and upstream, for the batcher's worker thread."""
        given = self._config.client
        if given is None:
            return self._slot.sync()
        async_client = cast(AsyncClient, given)
        # The async client's transport serves sync requests too when it is sync-capable
        # (the emulator's is); otherwise the sync client opens its own connections.
        transport = getattr(async_client.http_client, "_transport", None)
        return Client(
            api_key=async_client.api_key,
            auth_token=async_client.auth_token,
            base_url=async_client.base_url,
            default_headers=dict(async_client._upstream.default_headers or {}),
            timeout=async_client.timeout,
            max_retries=async_client.max_retries,
            transport=transport if isinstance(transport, httpx.BaseTransport) else None,
            engine=async_client.engine,
        )

    @property
    def client(self) -> AsyncClient:
        """The client calls go through (the default one is per event loop: read it inside
        the loop, e.g. to ``await f.client.close()`` before the loop ends)."""
        return self._client()

    async def _create(
        self, client: AsyncClient, body: dict[str, Any], options: CallOptions
    ) -> Message:
        return cast(Message, await client.messages.create(**body, **_option_kwargs(options)))


# --------------------------------------------------------------------------- @llm: decorators


class _Decorator(Generic[R_co]):
    """What ``llm(...)`` returns: apply it to a function (sync or async)."""

    def __init__(self, config: _LLMConfig) -> None:
        self._config = config

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, Prompt]]
    ) -> AsyncLLMFunction[P, R_co]: ...

    @overload
    def __call__(self, fn: Callable[P, Prompt]) -> LLMFunction[P, R_co]: ...

    def __call__(self, fn: Callable[P, Any]) -> LLMFunction[P, R_co] | AsyncLLMFunction[P, R_co]:
        return cast("LLMFunction[P, R_co] | AsyncLLMFunction[P, R_co]", _decorate(fn, self._config))


class _AutoDecorator:
    """``llm(...)`` without ``returns=``/``output=``: text, or the return annotation's type."""

    def __init__(self, config: _LLMConfig) -> None:
        self._config = config

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, Prompt]]
    ) -> AsyncLLMFunction[P, str]: ...

    @overload
    def __call__(self, fn: Callable[P, Prompt]) -> LLMFunction[P, str]: ...

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> AsyncLLMFunction[P, T]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> LLMFunction[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> LLMFunction[P, Any] | AsyncLLMFunction[P, Any]:
        return cast("LLMFunction[P, Any] | AsyncLLMFunction[P, Any]", _decorate(fn, self._config))


def _decorate(fn: object, config: _LLMConfig) -> Any:
    function = _check_function(fn, "haikucache.llm")
    asynchronous = _is_async(function)
    if config.client is not None:
        _check_client(config.client, asynchronous=asynchronous)
    if config.returns is None and config.output is None:
        resolved, annotation = _return_annotation(function)
        if not resolved:
            raise TypeError(
                f"cannot resolve the return annotation {annotation!r} of "
                f"{getattr(function, '__qualname__', function)!r} (a name defined later, or "
                "only under TYPE_CHECKING?); pass output=<type> or returns='text'"
            )
        if _is_structured_type(annotation):
            config = config.replace(output=_Output(annotation))
    slot = (
        _DEFAULT_SLOT
        if config.engine is None and config.store is _UNSET and config.semantic is None
        else _ClientSlot(
            config.engine,
            DEFAULT_STORE if config.store is _UNSET else config.store,
            config.semantic,
        )
    )
    cls = AsyncLLMFunction if asynchronous else LLMFunction
    return cls(function, config, slot)


@overload
def llm(
    *,
    output: type[T],
    model: str = ...,
    max_tokens: int = ...,
    system: str | Sequence[Mapping[str, Any]] | None = ...,
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: Mapping[str, Any] | None = ...,
    temperature: float | None = ...,
    ttl: float | None = ...,
    namespace: str | None = ...,
    tags: Sequence[str] | None = ...,
    no_cache: bool = ...,
    no_store: bool = ...,
    semantic: SemanticConfig | None = ...,
    client: Client | AsyncClient | None = ...,
    engine: Engine | None = ...,
    store: ResponseStore | str | None = ...,
    returns: None = ...,
    **params: Any,
) -> _Decorator[T]: ...


@overload
def llm(
    *,
    returns: Literal["message"],
    output: type[Any] | None = ...,
    model: str = ...,
    max_tokens: int = ...,
    system: str | Sequence[Mapping[str, Any]] | None = ...,
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: Mapping[str, Any] | None = ...,
    temperature: float | None = ...,
    ttl: float | None = ...,
    namespace: str | None = ...,
    tags: Sequence[str] | None = ...,
    no_cache: bool = ...,
    no_store: bool = ...,
    semantic: SemanticConfig | None = ...,
    client: Client | AsyncClient | None = ...,
    engine: Engine | None = ...,
    store: ResponseStore | str | None = ...,
    **params: Any,
) -> _Decorator[Message]: ...


@overload
def llm(
    *,
    returns: Literal["text"],
    model: str = ...,
    max_tokens: int = ...,
    system: str | Sequence[Mapping[str, Any]] | None = ...,
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: Mapping[str, Any] | None = ...,
    temperature: float | None = ...,
    ttl: float | None = ...,
    namespace: str | None = ...,
    tags: Sequence[str] | None = ...,
    no_cache: bool = ...,
    no_store: bool = ...,
    semantic: SemanticConfig | None = ...,
    client: Client | AsyncClient | None = ...,
    engine: Engine | None = ...,
    store: ResponseStore | str | None = ...,
    output: None = ...,
    **params: Any,
) -> _Decorator[str]: ...


@overload
def llm(
    *,
    model: str = ...,
    max_tokens: int = ...,
    system: str | Sequence[Mapping[str, Any]] | None = ...,
    tools: Sequence[Mapping[str, Any]] | None = ...,
    tool_choice: Mapping[str, Any] | None = ...,
    temperature: float | None = ...,
    ttl: float | None = ...,
    namespace: str | None = ...,
    tags: Sequence[str] | None = ...,
    no_cache: bool = ...,
    no_store: bool = ...,
    semantic: SemanticConfig | None = ...,
    client: Client | AsyncClient | None = ...,
    engine: Engine | None = ...,
    store: ResponseStore | str | None = ...,
    returns: None = ...,
    output: None = ...,
    **params: Any,
) -> _AutoDecorator: ...


def llm(
    *args: Any,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 1024,
    system: str | Sequence[Mapping[str, Any]] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Mapping[str, Any] | None = None,
    temperature: float | None = None,
    ttl: float | None = None,
    namespace: str | None = None,
    tags: Sequence[str] | None = None,
    no_cache: bool = False,
    no_store: bool = False,
    semantic: SemanticConfig | None = None,
    client: Client | AsyncClient | None = None,
    engine: Engine | None = None,
    store: ResponseStore | str | _Unset | None = _UNSET,
    returns: Returns | None = None,
    output: type[Any] | None = None,
    **params: Any,
) -> _Decorator[Any] | _AutoDecorator:
    """Turn a function that returns a prompt into a cached Claude call.

    The decorated function returns the prompt: a string (one user turn), a list of
    messages, or a full request dict (its fields win over the decorator's). Sync and
    ``async def`` functions are both supported; the decorated object keeps the function's
    signature and ``__wrapped__``, and adds ``.message()``, ``.stream()``, ``.bypass()``,
    ``.cache_key()``, ``.invalidate()``, ``.request()``, ``.with_options()`` and ``.batch()``
    (``.abatch()`` on async functions).

    Args:
        model: the model id.
        max_tokens: the answer's token limit.
        system: the system prompt (long, shared system prompts are prompt-cached).
        tools: tool definitions sent with every call.
        tool_choice: how the model picks tools.
        temperature: sampling temperature.
        ttl: seconds a stored answer stays valid (``None``: the engine's default).
        namespace: the tenant the calls are cached and accounted under.
        tags: labels on stored answers, for invalidation by tag.
        no_cache: never answer from the response cache.
        no_store: never keep answers in the response cache.
        semantic: a :class:`~haikucache.SemanticConfig` to also answer questions that mean
            the same as a stored one (the last user turn must be plain text); it configures
            the default client's engine, so it excludes ``client`` and ``engine``.
        client: the :class:`~haikucache.Client` (or :class:`~haikucache.AsyncClient` for an
            ``async def``) to call through; default one created on first use from the
            environment (``ANTHROPIC_API_KEY``) with an on-disk response cache.
        engine: the :class:`~haikucache.Engine` for that default client (exclusive with
            ``client``).
        store: the response store for that default client (a store, ``"disk"`` or
            ``"memory"``, or ``None`` for no response cache; default
            :data:`~haikucache.DEFAULT_STORE`; exclusive with ``client`` and ``engine``).
        returns: ``"text"`` (the answer's text), ``"message"`` (the full message) or
            ``None`` (default: text, or the structured type of ``output`` or of the
            function's return annotation).
        output: a pydantic model class or TypedDict to parse the answer into, through a
            forced tool call.
        **params: any other Messages API field (``top_p``, ``stop_sequences``,
            ``thinking``, ``metadata`` …).

    Raises:
        TypeError: used without parentheses (``@llm``), or applied to something that is not
            a function, or ``output`` is not a model/TypedDict.
        ConfigurationError: conflicting or invalid options, or a keyword that is neither an
            option nor a Messages API field (the message names the closest valid one).

    Example:
        >>> @haikucache.llm(system="Answer briefly.")  # doctest: +SKIP
        ... def capital(country: str) -> str:
        ...     return f"What is the capital of {country}?"
    """
    if args:
        raise _bare_use("haikucache.llm", args)
    for name in params:
        # Anything not named above becomes a request field, so a typo would otherwise
        # surface only at the first call, as a rejected request.
        if name not in MESSAGES_FIELDS:
            named = [p for p in inspect.signature(llm).parameters if p not in ("args", "params")]
            close = difflib.get_close_matches(name, [*named, *sorted(MESSAGES_FIELDS)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"haikucache.llm() got an unknown keyword {name!r}{hint} (options: "
                f"{', '.join(named)}; or any Messages API field)"
            )
    if returns not in (None, "text", "message"):
        raise ConfigurationError(f"returns must be 'text' or 'message', got {returns!r}")
    if returns == "text" and output is not None:
        raise ConfigurationError("returns='text' and output= contradict each other")
    if client is not None and (engine is not None or store is not _UNSET):
        raise ConfigurationError("pass either client= or engine=/store=, not both")
    if engine is not None and store is not _UNSET:
        raise ConfigurationError("store= is the engine's own: pass Engine(store=...) instead")
    if client is not None and not isinstance(client, (Client, AsyncClient)):
        raise ConfigurationError(
            f"client must be a haikucache.Client or AsyncClient, got {type(client).__name__}"
        )
    if engine is not None and not isinstance(engine, Engine):
        raise ConfigurationError(f"engine must be a haikucache.Engine, got {engine!r}")
    if semantic is not None:
        if not isinstance(semantic, SemanticConfig):
            raise ConfigurationError(
                f"semantic must be a haikucache.SemanticConfig, got {type(semantic).__name__}"
            )
        if client is not None or engine is not None:
            raise ConfigurationError(
                "semantic lookup is the engine's setting: pass Engine(semantic=...) as "
                "engine= (or in the client), or semantic= without client=/engine="
            )
    if isinstance(tags, str):
        raise ConfigurationError("tags must be a sequence of strings, not one string")
    structured = _Output(output) if output is not None else None
    if structured is not None and tool_choice is not None:
        raise ConfigurationError("output= forces its own tool_choice; do not pass tool_choice")
    stray = [name for name in OPTION_NAMES if name in params]
    if stray:  # pragma: no cover - every option is a named parameter above
        raise ConfigurationError(f"unknown option(s): {', '.join(stray)}")
    config = _LLMConfig(
        params={
            "model": model,
            "max_tokens": max_tokens,
            "system": system,
            "tools": list(tools) if tools is not None else None,
            "tool_choice": tool_choice,
            "temperature": temperature,
            **params,
        },
        options=CallOptions(
            namespace=namespace,
            no_cache=no_cache,
            no_store=no_store,
            ttl=ttl,
            tags=tuple(tags or ()),
        ),
        returns=returns,
        output=structured,
        client=client,
        engine=engine,
        store=store,
        semantic=semantic,
    )
    if returns is None and output is None:
        return _AutoDecorator(config)
    return _Decorator(config)


# --------------------------------------------------------------------------- @memoize: keys


def _canonical(value: Any, path: str) -> Any:
    """A JSON-able form of an argument that is equal exactly when the arguments are equal.

    Every container is tagged with its kind, so ``(1, 2)``, ``[1, 2]`` and ``{1, 2}`` key
    differently; dict items and set members are sorted by their own canonical JSON, so
    insertion order never changes a key.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ["float", repr(value)]
    if isinstance(value, enum.Enum):
        return ["enum", _type_name(type(value)), _canonical(value.value, path)]
    if isinstance(value, (bytes, bytearray)):
        return [type(value).__name__, base64.b64encode(bytes(value)).decode()]
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return [kind, [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, Mapping):
        items = [
            (_canonical_json(_canonical(k, path)), _canonical(v, f"{path}[{k!r}]"))
            for k, v in value.items()
        ]
        return ["dict", sorted(items, key=lambda item: item[0])]
    if isinstance(value, (set, frozenset)):
        return [type(value).__name__, sorted(_canonical_json(_canonical(v, path)) for v in value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dataclass", _type_name(type(value)), _canonical(fields, path)]
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return ["model", _type_name(type(value)), _canonical(value.model_dump(mode="json"), path)]
    raise TypeError(
        f"memoize cannot key argument {path} of type {type(value).__name__}: use JSON-like "
        "values (str, int, float, bool, None, lists, tuples, dicts, sets), enums, dataclasses "
        "or pydantic models"
    )


def _type_name(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


_key_dumps = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _canonical_json(value: Any) -> str:
    return _key_dumps(value)


# --------------------------------------------------------------------------- @memoize: values


class _ValueCodec:
    """How a result becomes JSON in a store entry, and back, without changing its type.

    JSON values are stored as they are; tuples, sets, bytes, dicts with non-string keys and
    non-finite floats are tagged so they come back as what they were. A function annotated
    to return a pydantic model or a dataclass is stored through pydantic (its JSON form) and
    validated back into that type.
    """

    _TAG = "$hc"

    def __init__(self, annotation: Any) -> None:
        self._adapter: Any = None
        if isinstance(annotation, type) and (
            dataclasses.is_dataclass(annotation) or _is_structured_type(annotation)
        ):
            self._adapter = _type_adapter(annotation, "memoizing a model result")

    def encode(self, value: Any) -> Any:
        if self._adapter is not None:
            return {self._TAG: "typed", "v": self._adapter.dump_python(value, mode="json")}
        return self._encode(value, "the result")

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and data.get(self._TAG) == "typed":
            if self._adapter is None:
                raise ValueError("a typed entry for a function without a typed result")
            return self._adapter.validate_python(data["v"])
        return self._decode(data)

    def _encode(self, value: Any, path: str) -> Any:
        tag = self._TAG
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int) and type(value) in (int,):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {tag: "float", "v": repr(value)}
        if type(value) is list:
            return [self._encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if type(value) is tuple:
            return {tag: "tuple", "v": [self._encode(v, path) for v in value]}
        if type(value) in (set, frozenset):
            return {tag: type(value).__name__, "v": [self._encode(v, path) for v in value]}
        if type(value) is bytes:
            return {tag: "bytes", "v": base64.b64encode(value).decode()}
        if type(value) is dict:
            if all(isinstance(k, str) for k in value) and tag not in value:
                return {k: self._encode(v, f"{path}[{k!r}]") for k, v in value.items()}
            return {
                tag: "dict",
                "v": [[self._encode(k, path), self._encode(v, path)] for k, v in value.items()],
            }
        raise TypeError(
            f"memoize cannot store {path} of type {type(value).__name__}: return JSON-like "
            "data (str, int, float, bool, None, list, tuple, dict, set, bytes), or annotate "
            "the function's return type with a pydantic model or dataclass"
        )

    def _decode(self, data: Any) -> Any:
        tag = self._TAG
        if isinstance(data, list):
            return [self._decode(v) for v in data]
        if not isinstance(data, dict):
            return data
        kind = data.get(tag)
        if kind is None:
            return {k: self._decode(v) for k, v in data.items()}
        payload = data["v"]
        if kind == "float":
            return float(payload)
        if kind == "tuple":
            return tuple(self._decode(v) for v in payload)
        if kind == "set":
            return {self._decode(v) for v in payload}
        if kind == "frozenset":
            return frozenset(self._decode(v) for v in payload)
        if kind == "bytes":
            return base64.b64decode(payload)
        if kind == "dict":
            return {self._decode(k): self._decode(v) for k, v in payload}
        raise ValueError(f"unknown tag {kind!r}")


# --------------------------------------------------------------------------- @memoize: objects


_default_memo_store: ResponseStore | None = None
_default_memo_lock = threading.Lock()


def _default_store() -> ResponseStore:
    """The process-wide memoize store: on disk, next to (not inside) the response cache."""
    global _default_memo_store
    with _default_memo_lock:
        if _default_memo_store is None:
            _default_memo_store = DiskStore(default_cache_dir() / "memoize")
        return _default_memo_store


class _Probe:
    """One call's lookup state: its exact key, and for semantic lookup its text and vector."""

    __slots__ = ("key", "text", "vector")

    def __init__(self, key: str, text: str | None) -> None:
        self.key = key
        self.text = text
        self.vector: Any = None


class _MemoBase(Generic[P, R_co]):
    """Keys, entries, the codec and semantic lookup, shared by the sync and async twins."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        ttl: float | None,
        namespace: str,
        store: ResponseStore | str | None,
        clock: Clock,
        name: str,
        semantic: SemanticConfig | None,
    ) -> None:
        self._fn = fn
        self._ttl = ttl
        self._namespace = namespace
        self._store_option = store
        self._store: ResponseStore | None = None
        self._store_lock = threading.Lock()
        self._clock = clock
        self._name = name
        self._signature = inspect.signature(fn)
        self._codec: _ValueCodec | None = None
        self._semantic = semantic
        self._index: SemanticIndex | None = None
        self._partition: str | None = None
        if semantic is not None:
            parameters = list(self._signature.parameters.values())
            if len(parameters) != 1 or parameters[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                raise ConfigurationError(
                    f"semantic memoize needs a function of one string argument; {name} takes "
                    f"{self._signature}"
                )
            self._index = SemanticIndex(semantic)
            # Only this function's results in this namespace, by this embedder, are compared.
            scope = xxhash.xxh3_128_hexdigest(f"{namespace}\x00{name}".encode())
            self._partition = f"{_MEMO_KEY_VERSION}p:{scope}:{semantic.model_tag}"
        functools.update_wrapper(cast(Any, self), fn)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name} namespace={self._namespace!r}>"

    @property
    def store(self) -> ResponseStore:
        """The store results are kept in (created on first use)."""
        with self._store_lock:
            if self._store is None:
                option = self._store_option
                if option is None or option == "disk":
                    self._store = _default_store()
                elif option == "memory":
                    self._store = MemoryStore()
                else:
                    self._store = cast(ResponseStore, option)
            return self._store

    def _codec_for(self) -> _ValueCodec:
        if self._codec is None:
            # An ``async def``'s annotation is already the awaited value's type.
            resolved, annotation = _return_annotation(self._fn)
            self._codec = _ValueCodec(annotation if resolved else None)
        return self._codec

    def _key(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        return self._probe(args, kwargs).key

    def _probe(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Probe:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self._name}(): {exc}") from exc
        bound.apply_defaults()
        canonical = [
            [name, _canonical(value, f"{name!r}")] for name, value in bound.arguments.items()
        ]
        payload = _canonical_json([self._name, canonical]).encode("utf-8", "surrogatepass")
        digest = xxhash.xxh3_128_hexdigest(self._namespace.encode() + b"\x00" + payload)
        text = None
        if self._semantic is not None:
            (value,) = bound.arguments.values()
            if isinstance(value, str) and value.strip() and len(value) <= self._semantic.max_chars:
                text = value
        return _Probe(f"{_MEMO_KEY_VERSION}:{digest}", text)

    def _entry(self, probe: _Probe, value: Any) -> CacheEntry:
        encoded = self._codec_for().encode(value)
        semantic = probe.vector is not None
        return CacheEntry(
            key=probe.key,
            namespace=self._namespace,
            response={"type": _MEMO_TYPE, "function": self._name, "value": encoded},
            created_at=self._clock.now(),
            expires_at=None if self._ttl is None else self._clock.now() + self._ttl,
            partition=self._partition if semantic else None,
            text=probe.text if semantic else None,
        )

    def _vector_bytes(self, probe: _Probe, entry: CacheEntry) -> bytes | None:
        """The vector stored beside a semantic entry (also added to the local index)."""
        if probe.vector is None or self._index is None or self._partition is None:
            return None
        assert probe.text is not None
        self._index.add(self._partition, entry.key, probe.vector, probe.text, entry.expires_at)
        data: bytes = probe.vector.astype("<f4").tobytes()
        return data

    def _value(self, entry: CacheEntry | None) -> tuple[bool, Any]:
        if entry is None or entry.response.get("type") != _MEMO_TYPE:
            return False, None
        try:
            return True, self._codec_for().decode(entry.response.get("value"))
        except (ValueError, TypeError, KeyError):
            # An entry written by another version of the function's result type: a miss.
            return False, None

    def _embedding_failed(self, exc: Exception) -> None:
        assert self._semantic is not None
        if self._semantic.strict:
            raise exc
        logger.warning(
            "haikucache: the embedder failed (%s: %s); %s goes on as a miss",
            type(exc).__name__,
            exc,
            self._name,
        )

    def _search(self, probe: _Probe) -> tuple[bool, Any]:
        """The stored result of a call whose argument means the same (sync store I/O)."""
        index, partition, store = self._index, self._partition, self.store
        assert index is not None
        assert partition is not None
        assert probe.text is not None
        now = self._clock.now()
        index.sync(store, partition, now=now, clock=time.monotonic())
        matches = index.search(partition, probe.vector, now=now)
        while (match := index.select(probe.text, matches)) is not None:
            entry = store.get(match.key, now=now)
            if entry is not None and entry.partition == partition:
                found, value = self._value(entry)
                if found:
                    return True, value
            # Gone, expired or unreadable: try the next candidate.
            index.discard(partition, match.key)
            matches = [m for m in matches if m.key != match.key]
        return False, None


class Memoized(_MemoBase[P, R_co]):
    """A function whose results are kept in a haikucache store, keyed on its arguments.

    Returned by ``@haikucache.memoize(...)`` on a ``def``. Arguments are bound to the
    signature first (``f(1, b=2)`` and ``f(a=1, b=2)`` are one key), then serialised
    canonically; identical calls running at the same time in threads run the function once.
    With ``semantic=``, a call whose one string argument means the same as a stored call's
    gets that call's result.
    """

    def __init__(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(fn, **kwargs)
        self._flights = SingleFlight()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        probe = self._probe(args, kwargs)
        store = self.store
        found, value = self._value(store.get(probe.key, now=self._clock.now()))
        if not found and probe.text is not None:
            assert self._semantic is not None
            try:
                probe.vector = self._semantic.embed([probe.text])[0]
            except Exception as exc:  # an embedder failure is a miss, never a failed call
                self._embedding_failed(exc)
            if probe.vector is not None:
                found, value = self._search(probe)
        if found:
            return cast("R_co", value)

        def compute() -> Any:
            result = self._fn(*args, **kwargs)
            entry = self._entry(probe, result)
            store.put(entry, vector=self._vector_bytes(probe, entry))
            return result

        return cast("R_co", self._flights.run(probe.key, compute).value)

    def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Call the function itself: the store is neither read nor written."""
        return cast("R_co", self._fn(*args, **kwargs))

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key a call with these arguments is stored under (``hm1:…``)."""
        return self._key(args, kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Forget the stored result of a call with these arguments; whether there was one."""
        return self.store.delete(self._key(args, kwargs))


class AsyncMemoized(_MemoBase[P, R_co]):
    """The async twin of :class:`Memoized`; identical calls in flight run the function once."""

    def __init__(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(fn, **kwargs)
        self._flights = AsyncSingleFlight()

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        probe = self._probe(args, kwargs)
        store = self.store
        now = self._clock.now()
        if isinstance(store, AsyncResponseStore):
            entry = await store.aget(probe.key, now=now)
        else:
            entry = store.get(probe.key, now=now)
        found, value = self._value(entry)
        if not found and probe.text is not None:
            assert self._semantic is not None
            try:
                probe.vector = (await self._semantic.aembed([probe.text]))[0]
            except Exception as exc:
                self._embedding_failed(exc)
            if probe.vector is not None:
                # The index sync and the candidates' reads are store I/O (network for Redis).
                found, value = await asyncio.to_thread(self._search, probe)
        if found:
            return cast("R_co", value)

        async def compute() -> Any:
            result = await self._fn(*args, **kwargs)
            stored = self._entry(probe, result)
            vector = self._vector_bytes(probe, stored)
            if isinstance(store, AsyncResponseStore):
                await store.aput(stored, vector=vector)
            else:
                store.put(stored, vector=vector)
            return result

        return cast("R_co", (await self._flights.arun(probe.key, compute)).value)

    async def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """See :meth:`Memoized.bypass`."""
        return cast("R_co", await self._fn(*args, **kwargs))

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """See :meth:`Memoized.cache_key`."""
        return self._key(args, kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """See :meth:`Memoized.invalidate`."""
        store = self.store
        key = self._key(args, kwargs)
        if isinstance(store, AsyncResponseStore):
            return await store.adelete(key)
        return store.delete(key)


class _MemoDecorator:
    """What ``memoize(...)`` returns: apply it to a function (sync or async)."""

    def __init__(self, **options: Any) -> None:
        self._options = options

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> AsyncMemoized[P, T]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Memoized[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Memoized[P, Any] | AsyncMemoized[P, Any]:
        function = _check_function(fn, "haikucache.memoize")
        options = dict(self._options)
        if options["name"] is None:
            target = function.func if isinstance(function, functools.partial) else function
            options["name"] = f"{target.__module__}.{target.__qualname__}"
        if _is_async(function):
            return AsyncMemoized(function, **options)
        return Memoized(function, **options)


def memoize(
    *args: Any,
    ttl: float | None = None,
    namespace: str = "default",
    store: ResponseStore | str | None = None,
    clock: Clock | None = None,
    name: str | None = None,
    semantic: SemanticConfig | None = None,
) -> _MemoDecorator:
    """Keep a function's results in a haikucache store, keyed on its arguments.

    Works on sync and ``async def`` functions. Arguments must be JSON-like values (str, int,
    float, bool, None, lists, tuples, dicts, sets), enums, dataclasses or pydantic models;
    anything else is a :class:`TypeError` before the function runs. Results must be JSON-like
    too (tuples, sets and bytes come back as what they were), or the pydantic model or
    dataclass the function is annotated to return.

    Args:
        ttl: seconds a result stays valid (``None``: until invalidated or evicted).
        namespace: a separate key space (two namespaces never share results).
        store: a :class:`~haikucache.MemoryStore`, :class:`~haikucache.DiskStore` or
            :class:`~haikucache.RedisStore`, or ``"disk"`` (default: a store under the
            user's haikucache directory, shared by every memoized function) or ``"memory"``
            (one per function).
        clock: the time TTLs are measured on (tests pass a :class:`~haikucache.ManualClock`).
        name: the function's identity in keys (default ``module.qualname``); keep it when
            renaming a function to keep its results.
        semantic: a :class:`~haikucache.SemanticConfig`, for a function of one string: a
            call whose argument means the same as a stored call's (above the threshold, and
            past the guards on numbers, negation and names) gets that call's result.

    Raises:
        TypeError: used without parentheses (``@memoize``) or on something that is not a
            function.
        ConfigurationError: invalid options.
    """
    if args:
        raise _bare_use("haikucache.memoize", args)
    options = CallOptions(namespace=namespace, ttl=ttl)  # validates both
    if (
        store is not None
        and not isinstance(store, str)
        and not callable(getattr(store, "get", None))
    ):
        raise ConfigurationError(
            f"store must be a ResponseStore, 'disk' or 'memory', got {store!r}"
        )
    if isinstance(store, str) and store not in ("disk", "memory"):
        raise ConfigurationError(
            f"store must be a ResponseStore, 'disk' or 'memory', got {store!r}"
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError("name must be a non-empty string")
    if semantic is not None and not isinstance(semantic, SemanticConfig):
        raise ConfigurationError(
            f"semantic must be a haikucache.SemanticConfig, got {type(semantic).__name__}"
        )
    return _MemoDecorator(
        ttl=options.ttl,
        namespace=namespace,
        store=store,
        clock=clock or SystemClock(),
        name=name,
        semantic=semantic,
    )
