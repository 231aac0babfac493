"""The ``anthropic`` SDK door: ``haikucache.anthropic.wrap(client)``.

::

    import anthropic, haikucache.anthropic

    client = haikucache.anthropic.wrap(anthropic.Anthropic())
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=256,
                                     messages=[{"role": "user", "content": "Hi"}])
    haikucache.anthropic.info(message).saved_usd

``wrap`` returns a client of the same class (``Anthropic``, ``AsyncAnthropic``, and the
Bedrock and Vertex clients) whose every ``POST /v1/messages`` runs through the engine:
validated locally, keyed, given prompt-cache breakpoints, answered from the response cache
when it can be (as a real JSON or SSE HTTP response, so ``with_raw_response``,
``messages.stream()`` and ``get_final_message()`` behave as upstream), accounted in the
ledger and stored when complete. ``count_tokens``, batches and every other endpoint pass
through untouched.

It is built on the SDK's own middleware hook (``anthropic>=0.108``); haikucache's middleware
is appended last, so it is the innermost one and sees the exact wire body. SDKs without the
hook get an ``httpx``/``httpx2`` transport instead (``hook="transport"`` forces it).

Per-call options travel as headers (:func:`call_headers`); what haikucache did comes back as
response headers (``haikucache-cache: hit|miss|semantic``, ``haikucache-saved-usd`` …) and
from :func:`info`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Literal, TypeVar

from ._engine import DEFAULT_STORE, CallInfo, Engine, PreparedCall
from ._exceptions import (
    ConfigurationError,
    ControlError,
    MissingDependencyError,
    RequestValidationError,
    UsageError,
)
from ._ledger import Ledger
from ._pipeline import Outcome, Reply, StreamTap
from ._planner import Planner, PlannerPolicy
from ._sdk_door import (
    CACHE_HEADER,
    INFO_HEADERS,
    REGISTRY,
    Door,
    SSETee,
    _Box,
    clean_headers,
    credential_in,
    error_reply,
    http_library,
    info_from_headers,
    info_headers,
    is_messages_call,
    lookup_info,
    option_headers,
    passthrough_headers,
    refusal,
    refused,
    tee_async,
    tee_sync,
)
from ._store import ResponseStore

try:
    import anthropic as _anthropic
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise MissingDependencyError("anthropic", "anthropic", "haikucache.anthropic") from exc

__all__ = [
    "CACHE_HEADER",
    "INFO_HEADERS",
    "HaikuMiddleware",
    "SDKRequestValidationError",
    "call_headers",
    "engine_of",
    "info",
    "wrap",
]

ClientT = TypeVar("ClientT")
Hook = Literal["auto", "middleware", "transport"]

_DEFAULT_STORE: Any = object()
_HAS_MIDDLEWARE = hasattr(_anthropic, "Middleware")


def call_headers(
    *,
    namespace: str | None = None,
    no_cache: bool = False,
    no_store: bool = False,
    ttl: float | None = None,
    tags: Sequence[str] | None = None,
) -> dict[str, str]:
    """Per-call options for a wrapped client, as ``extra_headers`` (never sent to the API).

    Args:
        namespace: the tenant this call is cached and accounted under.
        no_cache: do not answer this call from the response cache.
        no_store: do not keep this call's answer.
        ttl: seconds the stored answer stays valid.
        tags: labels for invalidating stored answers later (ASCII, no commas).

    Raises:
        ConfigurationError: an option is invalid.

    Example:
        >>> client.messages.create(..., extra_headers=call_headers(no_cache=True))  # doctest: +SKIP
    """
    return option_headers(
        namespace=namespace, no_cache=no_cache, no_store=no_store, ttl=ttl, tags=tags
    )


def _credential_of(client: Any) -> str | None:
    """What identifies the account a client pays with (only ever hashed into a namespace)."""
    for name in ("api_key", "auth_token"):
        value = getattr(client, name, None)
        if isinstance(value, str) and value:
            return value
    # Bedrock and Vertex: the account and place, not a secret.
    parts = [
        f"{name}={value}"
        for name in ("aws_access_key", "aws_profile", "aws_region", "project_id", "region")
        if isinstance(value := getattr(client, name, None), str) and value
    ]
    return f"{type(client).__name__}:{','.join(parts)}" if parts else None


@functools.cache
def _library() -> ModuleType:
    """``httpx`` for SDKs before 1.0, ``httpx2`` since: responses must be of the SDK's kind."""
    return http_library(_anthropic.DefaultHttpxClient)


class SDKRequestValidationError(RequestValidationError, _anthropic.BadRequestError):
    """A request the API would reject, caught locally: nothing was sent, nothing billed.

    It is both haikucache's :class:`~haikucache.RequestValidationError` (``.param`` names
    the field) and the SDK's own ``anthropic.BadRequestError`` (status 400, an
    ``invalid_request_error`` body), so code written for either catches it.
    """

    def __init__(self, error: UsageError, request: Any) -> None:
        RequestValidationError.__init__(self, str(error))
        self.param = getattr(error, "param", None)
        body = {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"haikucache: {error}"},
        }
        response = _library().Response(400, json=body, request=request)
        _anthropic.BadRequestError.__init__(self, str(error), response=response, body=body)


# --------------------------------------------------------------------------- middleware


if _HAS_MIDDLEWARE:
    _MiddlewareBase: Any = _anthropic.Middleware
else:  # pragma: no cover - anthropic < 0.108; wrap() uses the transport there
    _MiddlewareBase = object


class HaikuMiddleware(_MiddlewareBase):  # type: ignore[misc]
    """The SDK middleware that runs ``POST /v1/messages`` through the engine.

    Installed by :func:`wrap`, which binds it to the client it serves (a hit is a real
    ``APIResponse`` and needs its client). Requests other than ``POST /v1/messages`` go
    straight to the next middleware.
    """

    def __init__(self, door: Door) -> None:
        self._door = door
        self._client: Any = None
        self._credential: str | None = None
        self._sse = True

    @property
    def engine(self) -> Engine:
        """The engine every call goes through."""
        return self._door.engine

    def _bind(self, client: Any) -> HaikuMiddleware:
        self._client = client
        self._credential = _credential_of(client)
        # Bedrock streams AWS event-stream frames, not SSE: those calls are planned and
        # sent, but neither replayed nor stored.
        self._sse = not any(c.__name__ == "BaseBedrockClient" for c in type(client).__mro__)
        return self

    def _rebound(self) -> HaikuMiddleware:
        return HaikuMiddleware(self._door)

    # -- shared steps ---------------------------------------------------------------------

    def _prepare(self, request: Any) -> Any:
        body = dict(request.json or {})
        extra = getattr(request.options, "extra_json", None)
        if extra:  # older SDKs merge extra_body only after the middleware; the key needs it
            body.update(extra)
        headers = clean_headers(getattr(self._client, "default_headers", None) or {})
        headers.update(clean_headers(request.headers))
        try:
            return self._door.prepare_attempt(
                getattr(request.options, "idempotency_key", None),
                request.retries_taken,
                lambda: self._door.prepare(body, headers, self._credential),
            )
        except UsageError as exc:  # a request the API would reject, or a bad option header
            raise SDKRequestValidationError(exc, self._http_request()) from exc

    def _http_request(self) -> Any:
        url = str(getattr(self._client, "base_url", "http://localhost")).rstrip("/")
        return _library().Request("POST", url + "/v1/messages")

    def _upstream_request(self, request: Any, body: dict[str, Any]) -> Any:
        headers = request.options.headers
        upstream = request.copy(body=body)
        if getattr(upstream.options, "extra_json", None):
            upstream.options.extra_json = None  # already merged into the planned body
        if isinstance(headers, Mapping) and any(
            n.lower().startswith("haikucache-") for n in headers
        ):
            upstream = upstream.copy(
                headers={
                    k: v for k, v in headers.items() if not k.lower().startswith("haikucache-")
                }
            )
        return upstream

    def _response(self, request: Any, raw: Any, cls: Any) -> Any:
        return cls(
            raw=raw,
            cast_to=request.cast_to,
            client=self._client,
            stream=request.stream,
            stream_cls=request.stream_cls,
            options=request.options,
            retries_taken=request.retries_taken,
        )

    def _local(self, request: Any, answer: tuple[bytes, dict[str, str], CallInfo], cls: Any) -> Any:
        """An answer served without the API (a hit, or a concurrent twin's answer)."""
        content, headers, call_info = answer
        raw = _library().Response(
            200, headers=headers, content=content, request=self._http_request()
        )
        REGISTRY.add_response(raw, _Box(call_info))
        return self._response(request, raw, cls)

    def _tee(self, request: Any, tap: StreamTap, response: Any, tee: Any) -> Any:
        box = _Box()
        raw = response.http_response
        teed = tee(_library(), raw, raw.request, SSETee(tap, box))
        REGISTRY.add_response(teed, box)
        return self._response(request, teed, type(response))

    def _answer(self, request: Any, outcome: Outcome[Any], cls: Any) -> Any:
        """The SDK response for an outcome: upstream's own for a miss, rendered otherwise."""
        if outcome.raw is None:
            return self._local(request, Door.render(outcome), cls)
        info = Door.kept(outcome)
        if info is not None:
            outcome.raw.http_response.headers.update(info_headers(info))
            REGISTRY.add_response(outcome.raw.http_response, _Box(info))
        return outcome.raw

    # -- sync -----------------------------------------------------------------------------

    def handle(self, request: Any, call_next: Any) -> Any:
        """Serve ``POST /v1/messages`` from the cache, or send the planned body and keep it."""
        if not is_messages_call(request.method, request.url):
            return call_next(request)
        call = self._prepare(request)
        pipeline = self._door.pipeline
        if call.stream:
            # Bedrock streams AWS event-stream frames: planned and sent, never replayed.
            opened = pipeline.open_stream(call, looked_up=not self._sse)
            if isinstance(opened, Outcome):
                return self._answer(request, opened, _anthropic.APIResponse)
            response = call_next(self._upstream_request(request, call.body))
            if not self._sse or not response.http_response.is_success:
                refused(opened, response.http_response)
                return response
            return self._tee(request, opened, response, tee_sync)

        def send(body: dict[str, Any]) -> Reply[Any]:
            response = call_next(self._upstream_request(request, body))
            if not response.http_response.is_success:
                return error_reply(response, response.http_response)  # the SDK raises it
            return Door.reply(response, response.http_response.read())

        return self._answer(request, pipeline.exchange(call, send), _anthropic.APIResponse)

    # -- async ----------------------------------------------------------------------------

    async def handle_async(self, request: Any, call_next: Any) -> Any:
        """The async twin of :meth:`handle`."""
        if not is_messages_call(request.method, request.url):
            return await call_next(request)
        call = self._prepare(request)
        pipeline = self._door.pipeline
        if call.stream:
            opened = await pipeline.aopen_stream(call, looked_up=not self._sse)
            if isinstance(opened, Outcome):
                return self._answer(request, opened, _anthropic.AsyncAPIResponse)
            response = await call_next(self._upstream_request(request, call.body))
            if not self._sse or not response.http_response.is_success:
                refused(opened, response.http_response)
                return response
            return self._tee(request, opened, response, tee_async)

        async def send(body: dict[str, Any]) -> Reply[Any]:
            response = await call_next(self._upstream_request(request, body))
            if not response.http_response.is_success:
                return error_reply(response, response.http_response)
            return Door.reply(response, await response.http_response.aread())

        outcome = await pipeline.aexchange(call, send)
        return self._answer(request, outcome, _anthropic.AsyncAPIResponse)

    def __repr__(self) -> str:
        return f"HaikuMiddleware(engine={self._door.engine!r})"


# --------------------------------------------------------------------------- transport


def _transport_classes(lib: ModuleType) -> tuple[type, type]:
    sync_base: Any = lib.BaseTransport
    async_base: Any = lib.AsyncBaseTransport

    def begin(door: Door, request: Any) -> PreparedCall:
        headers = clean_headers(dict(request.headers))
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            body = None
        try:
            return door.prepare(body, headers, credential_in(headers))
        except UsageError as exc:
            raise SDKRequestValidationError(exc, request) from exc

    def refuse(request: Any, exc: ControlError) -> Any:
        """A control's refusal as an API error response: the SDK raises its own error for
        it, and does not retry it (the limiter already waited; the budget is spent)."""
        status, body, headers = refusal(exc, retry=False)
        return lib.Response(status, headers=headers, json=body, request=request)

    def upstream_request(request: Any, body: dict[str, Any]) -> Any:
        """The request as it goes upstream: the planned body, no ``haikucache-*`` header."""
        upstream_headers = [
            (k, v)
            for k, v in request.headers.items()
            if not k.lower().startswith("haikucache-") and k.lower() != "content-length"
        ]
        return lib.Request(
            request.method,
            request.url,
            headers=upstream_headers,
            content=json.dumps(body, ensure_ascii=False).encode(),
            extensions=request.extensions,
        )

    def answer(request: Any, outcome: Outcome[Any]) -> Any:
        """The response for an outcome: upstream's own (decoded) for a miss, else rendered."""
        if outcome.raw is None:
            rendered, rendered_headers, call_info = Door.render(outcome)
            raw = lib.Response(200, headers=rendered_headers, content=rendered, request=request)
            REGISTRY.add_response(raw, _Box(call_info))
            return raw
        response, content = outcome.raw
        info = Door.kept(outcome)
        if info is None and content is None:
            return response
        out = lib.Response(
            response.status_code,
            headers=passthrough_headers(response.headers, info_headers(info) if info else {}),
            content=content,
            request=request,
            extensions=response.extensions,
        )
        REGISTRY.add_response(out, _Box(info))
        return out

    def teed(request: Any, response: Any, tap: StreamTap, tee: Any) -> Any:
        box = _Box()
        out = tee(lib, response, request, SSETee(tap, box))
        REGISTRY.add_response(out, box)
        return out

    class SyncTransport(sync_base):  # type: ignore[misc]
        def __init__(self, door: Door, inner: Any) -> None:
            self.door = door
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            if not is_messages_call(request.method, request.url.path):
                return self.inner.handle_request(request)
            request.read()
            call = begin(self.door, request)
            try:
                return self._exchange(request, call)
            except ControlError as exc:  # refused before sending: the SDK raises its error
                return refuse(request, exc)

        def _exchange(self, request: Any, call: PreparedCall) -> Any:
            pipeline = self.door.pipeline
            if call.stream:
                opened = pipeline.open_stream(call)
                if isinstance(opened, Outcome):
                    return answer(request, opened)
                response = self.inner.handle_request(upstream_request(request, call.body))
                if not 200 <= response.status_code < 300:
                    refused(opened, response)
                    return response
                return teed(request, response, opened, tee_sync)

            def send(body: dict[str, Any]) -> Reply[Any]:
                response = self.inner.handle_request(upstream_request(request, body))
                if not 200 <= response.status_code < 300:
                    return error_reply((response, None), response)
                content = response.read()
                response.close()
                reply = Door.reply(response, content)
                return Reply(reply.message, (response, content), reply.status, reply.headers)

            return answer(request, pipeline.exchange(call, send))

        def close(self) -> None:
            self.inner.close()

    class AsyncTransport(async_base):  # type: ignore[misc]
        def __init__(self, door: Door, inner: Any) -> None:
            self.door = door
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            if not is_messages_call(request.method, request.url.path):
                return await self.inner.handle_async_request(request)
            await request.aread()
            call = begin(self.door, request)
            try:
                return await self._aexchange(request, call)
            except ControlError as exc:
                return refuse(request, exc)

        async def _aexchange(self, request: Any, call: PreparedCall) -> Any:
            pipeline = self.door.pipeline
            if call.stream:
                opened = await pipeline.aopen_stream(call)
                if isinstance(opened, Outcome):
                    return answer(request, opened)
                response = await self.inner.handle_async_request(
                    upstream_request(request, call.body)
                )
                if not 200 <= response.status_code < 300:
                    refused(opened, response)
                    return response
                return teed(request, response, opened, tee_async)

            async def send(body: dict[str, Any]) -> Reply[Any]:
                response = await self.inner.handle_async_request(upstream_request(request, body))
                if not 200 <= response.status_code < 300:
                    return error_reply((response, None), response)
                content = await response.aread()
                await response.aclose()
                reply = Door.reply(response, content)
                return Reply(reply.message, (response, content), reply.status, reply.headers)

            return answer(request, await pipeline.aexchange(call, send))

        async def aclose(self) -> None:
            await self.inner.aclose()

    SyncTransport.__name__ = SyncTransport.__qualname__ = "HaikuTransport"
    AsyncTransport.__name__ = AsyncTransport.__qualname__ = "AsyncHaikuTransport"
    return SyncTransport, AsyncTransport


_TRANSPORTS: dict[str, tuple[type, type]] = {}


def _transports(lib: ModuleType) -> tuple[type, type]:
    if lib.__name__ not in _TRANSPORTS:
        _TRANSPORTS[lib.__name__] = _transport_classes(lib)
    return _TRANSPORTS[lib.__name__]


# --------------------------------------------------------------------------- wrap


def _is_async_client(client: Any) -> bool:
    return isinstance(client, _anthropic.AsyncAnthropic) or (
        hasattr(_anthropic, "_base_client")
        and isinstance(client, _anthropic._base_client.AsyncAPIClient)
    )


def _ours(middleware: Sequence[Any]) -> list[HaikuMiddleware]:
    return [m for m in middleware if isinstance(m, HaikuMiddleware)]


def engine_of(client: Any) -> Engine | None:
    """The engine of a client returned by :func:`wrap` (``None`` for an unwrapped client)."""
    for mw in _ours(getattr(client, "middleware", ()) or ()):
        return mw.engine
    transport = getattr(getattr(client, "_client", None), "_transport", None)
    door = getattr(transport, "door", None)
    return door.engine if isinstance(door, Door) else None


def _install_copy_hook(client: Any) -> None:
    """Derived clients (``copy``/``with_options``/``with_middleware``) get their own binding.

    The SDK hands the same middleware objects to a copy; ours must answer for the copy's
    credential (another key is another tenant) and build its hits with the copy.
    """
    cls = type(client)

    def copy(**kwargs: Any) -> Any:
        middleware = kwargs.pop("middleware", None)
        if middleware is None or not hasattr(middleware, "__iter__"):  # None or NOT_GIVEN
            middleware = client.middleware
        fresh = [m._rebound() if isinstance(m, HaikuMiddleware) else m for m in middleware]
        derived = cls.copy(client, middleware=fresh, **kwargs)
        for mw in _ours(fresh):
            mw._bind(derived)
        _install_copy_hook(derived)
        return derived

    client.copy = copy
    client.with_options = copy


def wrap(
    client: ClientT,
    *,
    engine: Engine | None = None,
    store: ResponseStore | str | None = _DEFAULT_STORE,
    ledger: Ledger | bool | None = None,
    planner: Planner | PlannerPolicy | str | None = None,
    cache_ttl: float | None = None,
    namespace: str | None = None,
    hook: Hook = "auto",
) -> ClientT:
    """A copy of an ``anthropic`` client whose Messages calls go through haikucache.

    The original client is left as it was; the copy shares its connection pool and keeps
    every setting (retries, timeouts, headers, other middleware).

    Args:
        client: an ``anthropic.Anthropic`` or ``AsyncAnthropic`` (or a Bedrock/Vertex client).
        engine: the engine to use (its store, ledger and planner); by default one built
            from the arguments below. Do not combine with them.
        store: the response cache: ``"disk"`` (default, the user's cache directory),
            ``"memory"``, a store object, or ``None`` for no response cache.
        ledger: where calls are accounted (default: the on-disk ledger; ``False``: none).
        planner: prompt-cache breakpoints: ``"adaptive"`` (default), ``"always"``, ``"off"``
            or a :class:`~haikucache.Planner`.
        cache_ttl: seconds a stored answer stays valid (default: until evicted).
        namespace: the tenant every call is keyed and accounted under. Default: a hash
            of the credential each call is made with (API key or token; the AWS access key
            id and region on Bedrock; project and region on Vertex), so two keys never
            share answers unless you say so here — a copy of the wrapped client made with
            another key (``with_options(api_key=...)``) is another tenant.
        hook: ``"middleware"`` (the SDK's hook, anthropic >= 0.108), ``"transport"`` (an
            httpx/httpx2 transport around the client's own) or ``"auto"``.

    Returns:
        A client of the same class.

    Raises:
        ConfigurationError: the client is already wrapped, is not an anthropic client, or
            ``engine`` is combined with engine options.
    """
    if not isinstance(client, _anthropic._base_client.BaseClient):
        raise ConfigurationError(
            f"wrap() expects an anthropic client (Anthropic, AsyncAnthropic, …), got "
            f"{type(client).__name__}"
        )
    if engine_of(client) is not None:
        raise ConfigurationError(
            "this client is already wrapped by haikucache; wrap the original client once "
            "(haikucache.anthropic.engine_of(client) returns its engine)"
        )
    if hook not in ("auto", "middleware", "transport"):
        raise ConfigurationError(f"hook must be 'auto', 'middleware' or 'transport', got {hook!r}")
    credential = _credential_of(client)
    engine_options = {
        "store": store is not _DEFAULT_STORE,
        "ledger": ledger is not None,
        "planner": planner is not None,
        "cache_ttl": cache_ttl is not None,
    }
    if engine is not None:
        given = [name for name, set_ in engine_options.items() if set_]
        if given:
            raise ConfigurationError(
                f"pass either engine= or {', '.join(given)}=, not both (they configure an engine)"
            )
        if not isinstance(engine, Engine):
            raise ConfigurationError(f"engine must be a haikucache.Engine, got {engine!r}")
        door = Door(engine, namespace=namespace)
    else:
        built = Engine.for_credentials(
            credential,
            store=DEFAULT_STORE if store is _DEFAULT_STORE else store,
            ledger=ledger,
            planner=planner if planner is not None else "adaptive",
            cache_ttl=cache_ttl,
        )
        door = Door(built, namespace=namespace, label_by_credential=True)

    use_middleware = hook == "middleware" or (hook == "auto" and _HAS_MIDDLEWARE)
    if use_middleware:
        if not _HAS_MIDDLEWARE or not hasattr(client, "with_middleware"):
            raise ConfigurationError(
                "this anthropic SDK has no middleware hook (it arrived in 0.108); "
                "use hook='transport'"
            )
        mw = HaikuMiddleware(door)
        wrapped: Any = type(client).copy(client, middleware=[*client.middleware, mw])  # type: ignore[attr-defined]
        mw._bind(wrapped)
        _install_copy_hook(wrapped)
        return wrapped  # type: ignore[no-any-return]

    lib = _library()
    sync_cls, async_cls = _transports(lib)
    http = getattr(client, "_client", None)
    inner = getattr(http, "_transport", None)
    if inner is None:
        raise ConfigurationError("cannot find the client's HTTP transport to wrap")
    http_client: Any
    if _is_async_client(client):
        http_client = _anthropic.DefaultAsyncHttpxClient(transport=async_cls(door, inner))
    else:
        http_client = _anthropic.DefaultHttpxClient(transport=sync_cls(door, inner))
    return type(client).copy(client, http_client=http_client)  # type: ignore[attr-defined,no-any-return]


# --------------------------------------------------------------------------- info


def _headers_of(obj: Any) -> Any:
    for name in ("http_response", "response"):
        candidate = getattr(obj, name, None)
        if candidate is not None and hasattr(candidate, "headers"):
            return candidate
    if hasattr(obj, "headers") and hasattr(obj, "status_code"):
        return obj
    return None


def info(obj: Any) -> CallInfo | None:
    """What haikucache did for a call made through a wrapped client.

    Accepts what the SDK hands back: a ``Message`` (or ``BetaMessage``), the raw response of
    ``with_raw_response``/``with_streaming_response``, a ``Stream``/``MessageStream`` (after
    it has been read to the end), an ``httpx``/``httpx2`` response, a message dict, or a
    :class:`haikucache.Message` (its ``.haikucache``).

    Returns:
        The :class:`~haikucache.CallInfo` (cache status, key, namespace, dollars billed,
        baseline and saved), or ``None`` when the object did not go through haikucache in
        this process and carries no haikucache headers (or a stream is not finished yet).

    Raises:
        UsageError: ``obj`` is none of the above.
    """
    if obj is None:
        raise UsageError("info() needs a message or a response, got None")
    attached = getattr(obj, "haikucache", None)
    if isinstance(attached, CallInfo):
        return attached
    if isinstance(obj, Mapping):
        message_id = obj.get("id")
        return lookup_info(message_id=message_id) if isinstance(message_id, str) else None
    response = _headers_of(obj)
    message_id = getattr(obj, "id", None)
    if not isinstance(message_id, str):
        snapshot = getattr(obj, "current_message_snapshot", None)
        message_id = getattr(snapshot, "id", None)
    if response is None and not isinstance(message_id, str):
        raise UsageError(
            f"info() expects a message or a response from a wrapped client, got "
            f"{type(obj).__name__}"
        )
    found = lookup_info(
        message_id=message_id if isinstance(message_id, str) else None, response=response
    )
    if found is None and response is not None:
        found = info_from_headers(response.headers)
    return found
