"""The engine: one pipeline behind every door.

A door (the client, the SDK middleware, the LangChain and LlamaIndex adapters, the decorator,
the proxy) turns its input into a Messages request and calls the stages in order::

    call = engine.prepare(params, options)     # 1 validate, 2 key, 4 plan
    entry = engine.lookup(call)                # 3 lookup: a stored answer → engine.hit(call, entry)
    ...the door sends call.body upstream...    # 5 route, 6 upstream: the door's own I/O
    info = engine.record(call, message)        # 7 account (and teach the planner), 8 store

The engine itself does no network I/O, so the sync and async doors share it unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ._catalog import DEFAULT_MODEL
from ._clock import Clock, SystemClock
from ._exceptions import ConfigurationError, RequestValidationError
from ._keys import request_key
from ._ledger import DiskLedger, Ledger, LedgerEntry, now_entry
from ._planner import Plan, Planner, PlannerPolicy
from ._store import (
    AsyncResponseStore,
    CacheEntry,
    DiskStore,
    MemoryStore,
    ResponseStore,
    is_storable,
)
from ._wire import API_VERSIONS, validate_request

__all__ = ["CallInfo", "CallOptions", "Engine", "PreparedCall", "default_ledger", "namespace_for"]

# Keys of ``create()`` that belong to haikucache, never to the API.
OPTION_NAMES = ("namespace", "no_cache", "no_store", "ttl", "tags")


@dataclass(frozen=True)
class CallOptions:
    """Per-call controls, the same keywords at every door.

    Attributes:
        namespace: the tenant the call belongs to (default: the engine's, which is derived
            from a hash of the API key). Part of every cache key.
        no_cache: do not read the response cache for this call.
        no_store: do not write this call's answer into the response cache.
        ttl: seconds the stored answer stays valid (``None``: the store's default).
        tags: labels for invalidation.
    """

    namespace: str | None = None
    no_cache: bool = False
    no_store: bool = False
    ttl: float | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.namespace is not None and (
            not isinstance(self.namespace, str) or not self.namespace
        ):
            raise ConfigurationError("namespace must be a non-empty string")
        if self.ttl is not None and (
            isinstance(self.ttl, bool) or not isinstance(self.ttl, (int, float)) or self.ttl <= 0
        ):
            raise ConfigurationError(f"ttl must be a positive number of seconds, got {self.ttl!r}")
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise ConfigurationError("tags must be a sequence of strings")


@dataclass
class PreparedCall:
    """A request that passed the engine's stages and is ready to go upstream.

    Attributes:
        body: the JSON to send (validated; haikucache's options are never in it).
        key: the exact cache key, ``hc1:<hex>``.
        model: the requested model id.
        stream: whether the caller asked for an SSE stream.
        options: the per-call options.
        namespace: the namespace the call is accounted and keyed under.
        api_version: the ``anthropic-version`` it will be sent with.
        betas: ``anthropic-beta`` values (part of the key).
        plan: the prompt-cache plan that placed ``body``'s breakpoints.
    """

    body: dict[str, Any]
    key: str
    model: str
    stream: bool
    options: CallOptions
    namespace: str
    api_version: str = API_VERSIONS[0]
    betas: tuple[str, ...] = ()
    plan: Plan | None = None


@dataclass(frozen=True)
class CallInfo:
    """What haikucache did for one call; attached to each response as ``.haikucache``.

    Attributes:
        cache: ``"miss"`` (answered upstream), ``"hit"`` (exact local hit), ``"semantic"``
            (a local hit by meaning) or ``"bypass"`` (the cache was not consulted).
        key: the exact cache key.
        namespace: the namespace it was accounted under.
        model: the model id.
        cost_usd: dollars billed for this call.
        baseline_usd: what the same call costs without haikucache.
        saved_usd: ``baseline_usd - cost_usd``.
        savings: the saving split by cause (see :mod:`haikucache._ledger`).
        priced: ``False`` when the model has no known price.
        batch: the answer came from a Message Batch.
        similarity: the score of a semantic hit.
    """

    cache: str
    key: str
    namespace: str
    model: str
    cost_usd: float
    baseline_usd: float
    saved_usd: float
    savings: dict[str, float] = field(default_factory=dict)
    priced: bool = True
    batch: bool = False
    similarity: float | None = None

    @classmethod
    def from_entry(cls, entry: LedgerEntry, key: str) -> CallInfo:
        return cls(
            cache=entry.cache,
            key=key,
            namespace=entry.namespace,
            model=entry.model,
            cost_usd=entry.cost.billed_usd,
            baseline_usd=entry.cost.baseline_usd,
            saved_usd=entry.cost.saved_usd,
            savings=dict(entry.cost.savings),
            priced=entry.cost.priced,
            batch=entry.batch,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict, e.g. for ``response_metadata`` or a response header."""
        return {
            "cache": self.cache,
            "key": self.key,
            "namespace": self.namespace,
            "model": self.model,
            "cost_usd": self.cost_usd,
            "baseline_usd": self.baseline_usd,
            "saved_usd": self.saved_usd,
            "savings": dict(self.savings),
            "priced": self.priced,
            "batch": self.batch,
            "similarity": self.similarity,
        }


_default_ledger: Ledger | None = None
_default_ledger_lock = threading.Lock()


def default_ledger() -> Ledger:
    """The process-wide ledger: on disk under :func:`haikucache.default_cache_dir`.

    It is created on first use, so importing haikucache touches no file.
    """
    global _default_ledger
    with _default_ledger_lock:
        if _default_ledger is None:
            _default_ledger = DiskLedger()
        return _default_ledger


def namespace_for(credential: str | None) -> str:
    """A namespace derived from a credential: a hash, never the key itself."""
    if not credential:
        return "default"
    return "key-" + xxhash.xxh3_64_hexdigest(b"haikucache-namespace\x00" + credential.encode())


class Engine:
    """The stages every door shares.

    Args:
        namespace: the default namespace (tenant) of every call. Use
            :meth:`for_credentials` to derive it from an API key.
        ledger: where calls are accounted; ``None`` uses the process-wide on-disk ledger
            (:func:`default_ledger`); pass :class:`MemoryLedger` for tests, or ``False`` to
            account nothing.
        clock: the time source (ledger days, planner statistics, later TTLs).
        default_model: model used by doors that do not name one.
        planner: where prompt-cache breakpoints go: a :class:`Planner`, or a policy name —
            ``"adaptive"`` (default), ``"always"`` or ``"off"``.
        store: the response cache: a store (:class:`DiskStore`, :class:`RedisStore`,
            :class:`MemoryStore`), ``"disk"`` (the user's cache directory) or ``"memory"``;
            ``None`` (default) keeps no answers.
        cache_ttl: seconds a stored answer stays valid unless a call says otherwise
            (``None``: until evicted or invalidated).
    """

    def __init__(
        self,
        *,
        namespace: str = "default",
        ledger: Ledger | bool | None = None,
        clock: Clock | None = None,
        default_model: str = DEFAULT_MODEL,
        planner: Planner | PlannerPolicy | str = "adaptive",
        store: ResponseStore | str | None = None,
        cache_ttl: float | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError("namespace must be a non-empty string")
        self.namespace = namespace
        if ledger is True:
            ledger = None
        self._ledger: Ledger | None = (
            default_ledger() if ledger is None else (None if ledger is False else ledger)
        )
        if self._ledger is not None and not callable(getattr(self._ledger, "record", None)):
            raise ConfigurationError("ledger must have a record(entry) method")
        self.clock: Clock = clock or SystemClock()
        self.default_model = default_model
        if isinstance(planner, Planner):
            self.planner = planner
        elif isinstance(planner, str):
            self.planner = Planner(planner, clock=self.clock)
        else:
            raise ConfigurationError(f"planner must be a Planner or a policy name, got {planner!r}")
        if store == "disk":
            store = DiskStore()
        elif store == "memory":
            store = MemoryStore()
        elif isinstance(store, str) or (
            store is not None and not callable(getattr(store, "get", None))
        ):
            raise ConfigurationError(
                f"store must be a ResponseStore, 'disk', 'memory' or None, got {store!r}"
            )
        self.store: ResponseStore | None = store
        if cache_ttl is not None and (isinstance(cache_ttl, bool) or cache_ttl <= 0):
            raise ConfigurationError(
                f"cache_ttl must be a positive number of seconds, got {cache_ttl!r}"
            )
        self.cache_ttl = cache_ttl

    @classmethod
    def for_credentials(cls, credential: str | None, **kwargs: Any) -> Engine:
        """An engine whose namespace is a hash of ``credential`` (the key is never kept)."""
        kwargs.setdefault("namespace", namespace_for(credential))
        return cls(**kwargs)

    @property
    def ledger(self) -> Ledger | None:
        """The ledger calls are recorded in (``None`` when accounting is off)."""
        return self._ledger

    # -- stages ---------------------------------------------------------------------------

    def prepare(
        self,
        params: Mapping[str, Any],
        options: CallOptions | None = None,
        *,
        api_version: str = API_VERSIONS[0],
        betas: Sequence[str] = (),
    ) -> PreparedCall:
        """Validate, key and plan a Messages request.

        The key is computed on the caller's request (markers never change a key); the body to
        send carries the planner's breakpoints.

        Raises:
            RequestValidationError: the API would reject it (nothing was sent).
        """
        if not isinstance(params, Mapping):
            raise RequestValidationError(
                f"expected the request as a mapping, got {type(params).__name__}", param="body"
            )
        options = options or CallOptions()
        stray = [name for name in OPTION_NAMES if name in params]
        if stray:
            raise RequestValidationError(
                f"{', '.join(stray)} are haikucache options, not API fields; pass them as "
                "CallOptions",
                param=stray[0],
            )
        # ``None`` means "not given", as in the SDK; the API rejects explicit nulls.
        body = {k: v for k, v in params.items() if v is not None}
        validate_request(body, api_version=api_version)
        namespace = options.namespace or self.namespace
        key = request_key(body, namespace=namespace, betas=betas)
        plan = self.planner.plan(body)
        return PreparedCall(
            body=plan.body,
            key=key,
            model=body["model"],
            stream=bool(body.get("stream", False)),
            options=options,
            namespace=namespace,
            api_version=api_version,
            betas=tuple(betas),
            plan=plan,
        )

    def validate_count_tokens(
        self, params: Mapping[str, Any], *, api_version: str = API_VERSIONS[0]
    ) -> dict[str, Any]:
        """Validate a ``count_tokens`` body; returns it without ``None`` values."""
        if not isinstance(params, Mapping):
            raise RequestValidationError("expected the request as a mapping", param="body")
        body = {k: v for k, v in params.items() if v is not None}
        validate_request(body, api_version=api_version, count_tokens=True)
        return body

    def lookup(self, call: PreparedCall) -> CacheEntry | None:
        """The stored answer for this exact request, if the response cache has one.

        A failing store is a miss (it logs); ``no_cache`` skips the lookup.
        """
        if self.store is None or call.options.no_cache:
            return None
        return self.store.get(call.key, now=self.clock.now())

    async def alookup(self, call: PreparedCall) -> CacheEntry | None:
        """The async twin of :meth:`lookup` (real I/O only for network stores)."""
        if self.store is None or call.options.no_cache:
            return None
        if isinstance(self.store, AsyncResponseStore):
            return await self.store.aget(call.key, now=self.clock.now())
        return self.store.get(call.key, now=self.clock.now())

    def hit(self, call: PreparedCall, entry: CacheEntry) -> tuple[dict[str, Any], CallInfo]:
        """Serve a stored answer: a copy with a fresh id, and its accounting as a hit."""
        message = dict(entry.response)
        # Every answer gets its own id, as the API gives (a replay is a new response).
        message["id"] = (
            "msg_"
            + xxhash.xxh3_128_hexdigest(f"{entry.key}:{self.clock.now()}:{id(message)}".encode())[
                :24
            ]
        )
        ledger_entry = now_entry(
            self.clock,
            namespace=call.namespace,
            model=call.model,
            cache="hit",
            usage=entry.usage,
        )
        if self._ledger is not None:
            self._ledger.record(ledger_entry)
        return message, CallInfo.from_entry(ledger_entry, call.key)

    def _entry_to_store(
        self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo
    ) -> CacheEntry | None:
        if self.store is None or call.options.no_store or not is_storable(message):
            return None
        ttl = call.options.ttl if call.options.ttl is not None else self.cache_ttl
        return CacheEntry.for_message(
            key=call.key,
            namespace=call.namespace,
            message=message,
            now=self.clock.now(),
            ttl=ttl,
            cost_usd=info.cost_usd,
            baseline_usd=info.baseline_usd,
            tags=call.options.tags,
        )

    def store_answer(self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo) -> bool:
        """Keep a complete answer (``end_turn``, ``tool_use``, ``stop_sequence``) for reuse."""
        entry = self._entry_to_store(call, message, info)
        return bool(entry is not None and self.store is not None and self.store.put(entry))

    async def astore_answer(
        self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo
    ) -> bool:
        """The async twin of :meth:`store_answer`."""
        entry = self._entry_to_store(call, message, info)
        if entry is None or self.store is None:
            return False
        if isinstance(self.store, AsyncResponseStore):
            return await self.store.aput(entry)
        return self.store.put(entry)

    def record(
        self,
        call: PreparedCall,
        message: Mapping[str, Any],
        *,
        cache: str = "miss",
        batch: bool = False,
    ) -> CallInfo:
        """Account a finished call and return what haikucache did for it."""
        usage = message.get("usage") if isinstance(message, Mapping) else None
        entry = now_entry(
            self.clock,
            namespace=call.namespace,
            model=call.model,
            cache=cache,
            usage=usage if isinstance(usage, Mapping) else None,
            batch=batch,
        )
        if self._ledger is not None:
            self._ledger.record(entry)
        if call.plan is not None and isinstance(usage, Mapping):
            self.planner.observe(call.plan, usage)
        return CallInfo.from_entry(entry, call.key)
