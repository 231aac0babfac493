"""``batch()`` / ``abatch()`` through Message Batches (50 % off), for ``use_batches=True``.

Each input becomes the exact request body ChatAnthropic would send (its own
``_get_request_payload``, so bound tools, ``tool_choice``, structured-output settings and
``stop`` carry over), the bodies go to haikucache's :class:`~haikucache._batcher.Batcher`
(response-cache lookups first, dedup, durable journal, polling, per-result policy), and
every answer comes back through ChatAnthropic's own ``_format_output`` as an ``AIMessage``,
in input order. A failed item raises, or with ``return_exceptions=True`` takes its place.

Without a ``batcher`` of its own, a model builds one (:func:`build_batcher`) that reaches the
API exactly as the model does — same key, base URL, headers and ``upstream_transport`` — and
shares its engine, so batch answers and realtime calls find each other in the cache.

Requests with ``betas`` (beta endpoints) are not batched: such a call falls back to
LangChain's default ``batch`` (concurrent realtime calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig

from haikucache import CallOptions, ConfigurationError

if TYPE_CHECKING:
    from .chat_models import _HaikuCacheMixin

__all__ = ["arun_batch", "build_batcher", "run_batch"]

_NOT_API = frozenset({"stop", "ls_structured_output_format", "structured_output_format"})


def build_batcher(model: Any) -> Any:
    """The default batcher of a model: it reaches the API as the model does (its key, base
    URL, headers, timeout and ``upstream_transport``) and shares its engine."""
    try:
        from haikucache import Client
        from haikucache._batcher import Batcher
    except ImportError as exc:  # pragma: no cover - a haikucache without the batcher
        raise ConfigurationError(
            "use_batches=True needs a haikucache with Message Batches support (haikucache._batcher)"
        ) from exc
    params = model._client_params
    options: dict[str, Any] = {}
    timeout = params.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        options["timeout"] = timeout
    client = Client(
        api_key=params["api_key"] or None,
        base_url=params["base_url"],
        max_retries=params["max_retries"],
        default_headers=dict(model.default_headers or {}),
        transport=upstream_transport(model),
        engine=model.haikucache_engine,
        **options,
    )
    return Batcher(client)


def upstream_transport(model: Any) -> httpx.BaseTransport | None:
    """The ``httpx`` transport for the batcher's client: the model's ``upstream_transport``
    (bridged when it is an ``httpx2`` one, as for anthropic >= 1), else a plain one through
    the model's ``anthropic_proxy``, else ``None`` (the client's own)."""
    inner = model.upstream_transport
    if inner is None:
        proxy = getattr(model, "anthropic_proxy", None)
        return httpx.HTTPTransport(proxy=proxy) if proxy else None
    from .chat_models import _http_module

    mod = _http_module()  # what the model's SDK client speaks, so what this transport is
    if isinstance(inner, httpx.BaseTransport) or mod is httpx:
        return inner  # type: ignore[no-any-return]
    if not callable(getattr(inner, "handle_request", None)):
        raise ConfigurationError(
            f"upstream_transport must be an {mod.__name__} transport, got {inner!r}"
        )
    return _Bridge(inner, mod)


def _httpx_error(exc: Exception, request: httpx.Request) -> Exception:
    """The ``httpx`` twin of an ``httpx2`` error (same class name), so the client maps it."""
    cls = getattr(httpx, type(exc).__name__, None)
    if not (isinstance(cls, type) and issubclass(cls, httpx.TransportError)):
        cls = httpx.TransportError
    return cls(str(exc), request=request)


class _BridgedStream(httpx.SyncByteStream):
    def __init__(self, response: Any, mod: ModuleType, request: httpx.Request) -> None:
        self._response = response
        self._mod = mod
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            # The transport-level body (what a client would read), not a client-level view.
            yield from self._response.stream
        except self._mod.TransportError as exc:
            raise _httpx_error(exc, self._request) from exc

    def close(self) -> None:
        self._response.close()


class _Bridge(httpx.BaseTransport):
    """An ``httpx`` transport that sends through an ``httpx2`` one (the two mirror each
    other's API, but their classes are distinct: a client accepts only its own)."""

    def __init__(self, inner: Any, mod: ModuleType) -> None:
        self.inner = inner
        self._mod = mod

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        theirs = self._mod.Request(
            request.method,
            str(request.url),
            headers=request.headers.raw,
            content=request.read(),
            extensions=request.extensions,
        )
        try:
            response = self.inner.handle_request(theirs)
        except self._mod.TransportError as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=_BridgedStream(response, self._mod, request),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        pass  # the inner transport is the model's; its own SDK client closes it


def _payload(model: Any, input_: LanguageModelInput, kwargs: dict[str, Any]) -> dict[str, Any]:
    messages: list[BaseMessage] = model._convert_input(input_).to_messages()
    stop = kwargs.get("stop")
    # LangChain's own tracing keywords never reach the API (BaseChatModel pops them too).
    call_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_API}
    payload = dict(model._get_request_payload(messages, stop=stop, **call_kwargs))
    payload.pop("stream", None)
    # On anthropic >= 1 ChatAnthropic moves sampling parameters into extra_body; a batch
    # request's params carry them directly.
    extra = payload.pop("extra_body", None) or {}
    payload.update(extra)
    return payload


def _message(model: Any, answer: Any) -> AIMessage:
    parsed = anthropic.types.Message.model_validate(answer.to_dict())
    result = model._format_output(parsed)
    message = result.generations[0].message
    if answer.haikucache is not None:
        message.response_metadata["haikucache"] = answer.haikucache.to_dict()
    return message  # type: ignore[no-any-return]


def _prepare(
    model: _HaikuCacheMixin,
    inputs: Sequence[LanguageModelInput],
    kwargs: dict[str, Any],
) -> tuple[list[dict[str, Any] | BaseException], CallOptions]:
    from .chat_models import _options

    options = _options(kwargs.pop("haikucache", None), model.call_options)
    payloads: list[dict[str, Any] | BaseException] = []
    for input_ in inputs:
        try:
            payloads.append(_payload(model, input_, kwargs))
        except Exception as exc:  # a bad input fails only its own item
            payloads.append(exc)
    return payloads, options


def _collect(
    model: Any, outcomes: list[Any], return_exceptions: bool
) -> list[AIMessage | BaseException]:
    out: list[AIMessage | BaseException] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            out.append(outcome)
            continue
        try:
            out.append(_message(model, outcome))
        except Exception as exc:
            out.append(exc)
    if not return_exceptions:
        for item in out:
            if isinstance(item, BaseException):
                raise item
    return out


def _submit(batcher: Any, payloads: list[Any], options: CallOptions) -> list[Any]:
    futures: list[Any] = []
    for payload in payloads:
        if isinstance(payload, BaseException):
            futures.append(payload)
            continue
        try:
            futures.append(batcher.submit(payload, options))
        except Exception as exc:
            futures.append(exc)
    return futures


def uses_betas(payloads: list[Any]) -> bool:
    return any(isinstance(p, dict) and p.get("betas") for p in payloads)


def run_batch(
    model: Any,
    inputs: list[LanguageModelInput],
    config: RunnableConfig | list[RunnableConfig] | None,
    *,
    return_exceptions: bool,
    **kwargs: Any,
) -> list[Any]:
    """The sync half: submit, flush, wait; answers in input order."""
    payloads, options = _prepare(model, inputs, dict(kwargs))
    if uses_betas(payloads):
        realtime: list[Any] = model._realtime_batch(
            inputs, config, return_exceptions=return_exceptions, **kwargs
        )
        return realtime
    batcher = model.haikucache_batcher
    futures = _submit(batcher, payloads, options)
    batcher.flush()
    outcomes: list[Any] = []
    for future in futures:
        if not isinstance(future, Future):
            outcomes.append(future)
            continue
        try:
            outcomes.append(future.result())
        except BaseException as exc:
            outcomes.append(exc)
    return _collect(model, outcomes, return_exceptions)


async def arun_batch(
    model: Any,
    inputs: list[LanguageModelInput],
    config: RunnableConfig | list[RunnableConfig] | None,
    *,
    return_exceptions: bool,
    **kwargs: Any,
) -> list[Any]:
    """The async half: the batcher's worker thread does the I/O; the loop only awaits."""
    payloads, options = _prepare(model, inputs, dict(kwargs))
    if uses_betas(payloads):
        realtime: list[Any] = await model._arealtime_batch(
            inputs, config, return_exceptions=return_exceptions, **kwargs
        )
        return realtime
    batcher = model.haikucache_batcher
    futures = _submit(batcher, payloads, options)
    await asyncio.to_thread(batcher.flush)
    waiting = [asyncio.wrap_future(f) for f in futures if isinstance(f, Future)]
    done = iter(await asyncio.gather(*waiting, return_exceptions=True))
    outcomes = [next(done) if isinstance(f, Future) else f for f in futures]
    return _collect(model, outcomes, return_exceptions)
