"""The engine: the stages every door shares, and the state behind them.

It owns the planner, the response store, the semantic index and the ledger, and exposes each
stage as a method. It does not sequence them: :class:`haikucache.Pipeline` does, once, for
every door::

    call = engine.prepare(params, options, credential=...)   # 1 validate, 2 key
    engine.lookup(call) → engine.hit(call, entry)            # 3 lookup: exact, then by meaning
    engine.plan(call)                                        # 4 plan (only on the way upstream)
    engine.record(call, message)                             # 7 account (and teach the planner)
    engine.store_answer(call, message, info)                 # 8 store

The engine itself does no network I/O, so the sync and async doors share it unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ._catalog import DEFAULT_MODEL
from ._clock import Clock, SystemClock
from ._controls import Controls
from ._exceptions import ConfigurationError, RequestValidationError, UsageError
from ._keys import partition_key, request_key
from ._ledger import DiskLedger, Ledger, LedgerEntry, now_entry
from ._planner import Plan, Planner, PlannerPolicy
from ._semantic import SemanticConfig, SemanticIndex, SemanticMatch, last_user_text
from ._store import (
    AsyncResponseStore,
    CacheEntry,
    DiskStore,
    MemoryStore,
    ResponseStore,
    is_storable,
)
from ._telemetry import Telemetry
from ._wire import API_VERSIONS, validate_request

__all__ = ["CallInfo", "CallOptions", "Engine", "PreparedCall", "default_ledger", "namespace_for"]

logger = logging.getLogger("haikucache")

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

    @classmethod
    def of(
        cls,
        namespace: str | None = None,
        no_cache: bool = False,
        no_store: bool = False,
        ttl: float | None = None,
        tags: Sequence[str] | None = None,
    ) -> CallOptions:
        """Options from a door's keywords (``tags`` any sequence); the shared default when
        none is set, so the common call allocates nothing."""
        if namespace is None and not no_cache and not no_store and ttl is None and not tags:
            return _NO_OPTIONS
        if isinstance(tags, str):
            raise ConfigurationError("tags must be a sequence of strings, not one string")
        return cls(namespace, no_cache, no_store, ttl, tuple(tags or ()))


_NO_OPTIONS = CallOptions()


@dataclass
class PreparedCall:
    """A request that passed the engine's stages and is ready to go upstream.

    Attributes:
        body: the JSON to send (validated; haikucache's options are never in it).
        key: the exact cache key, ``hc1:<hex>``.
        model: the requested model id.
        stream: whether the caller asked for an SSE stream.
        options: the per-call options.
        namespace: the namespace (tenant label) the call is accounted and keyed under.
        scope: the hash of the credential the call reaches upstream with, part of the key
            (empty: no credential, or sharing across credentials was asked for).
        api_version: the ``anthropic-version`` it will be sent with.
        betas: ``anthropic-beta`` values (part of the key).
        plan: the prompt-cache plan that placed ``body``'s breakpoints.
        partition: the semantic partition (only when semantic lookup is on and the last
            turn is plain user text; see :func:`haikucache.partition_key`).
        text: the last user turn's text, for semantic lookup.
    """

    body: dict[str, Any]
    key: str
    model: str
    stream: bool
    options: CallOptions
    namespace: str
    scope: str = ""
    api_version: str = API_VERSIONS[0]
    betas: tuple[str, ...] = ()
    plan: Plan | None = None
    partition: str | None = None
    text: str | None = None
    # The embedding of ``text``, computed once by lookup and reused by store.
    vector: Any = field(default=None, repr=False, compare=False)
    # Under a semantic error bound: the candidate this call's upstream answer is compared
    # with once it is in (a ``PendingOutcome``), set by lookup and used by store.
    verification: Any = field(default=None, repr=False, compare=False)


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


#: The response store of an engine a door builds for itself (``Client()``,
#: ``haikucache.anthropic.wrap(client)``, LangChain ``wrap(model)``, LlamaIndex
#: ``HaikuCache()``, ``@haikucache.llm``): answers kept on disk under the cache home, private
#: to the user and shared by the user's processes. One default, chosen here for every door:
#: an exact hit can only be an answer to the same request (model, system, tools, messages,
#: sampling parameters, betas) made with the same credential, and only complete answers are
#: stored, so a repeat is answered for $0 without a wrong answer being possible. A caller
#: who wants a fresh sample for a repeated prompt passes ``no_cache=True``, or ``store=None``.
DEFAULT_STORE = "disk"


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
        semantic: turn on semantic lookup (needs a ``store``): a :class:`SemanticConfig`
            naming the embedder, threshold and guards. Off by default.
        share_across_credentials: let calls made with different API keys share stored
            answers. Off by default: every key is scoped by a hash of the credential that
            reaches upstream, so one engine or store shared by many keys never serves one
            key's answer to another. Turn it on only when every key belongs to the same
            organisation and sees the same data.
        controls: production controls every call that goes upstream passes through
            (budgets, rate limits, circuit breaker, fallback models): a
            :class:`~haikucache.Controls`. Off by default.
        telemetry: OpenTelemetry spans and metrics for every call (the GenAI semantic
            conventions): a :class:`~haikucache.Telemetry`. Off by default.
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
        semantic: SemanticConfig | None = None,
        share_across_credentials: bool = False,
        controls: Controls | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if controls is not None and not isinstance(controls, Controls):
            raise ConfigurationError(f"controls must be a haikucache.Controls, got {controls!r}")
        self.controls = controls
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise ConfigurationError(f"telemetry must be a haikucache.Telemetry, got {telemetry!r}")
        self.telemetry = telemetry
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
        # A runtime Protocol isinstance() costs tens of microseconds: checked once, here.
        self._async_store: AsyncResponseStore | None = (
            store if isinstance(store, AsyncResponseStore) else None
        )
        if cache_ttl is not None and (isinstance(cache_ttl, bool) or cache_ttl <= 0):
            raise ConfigurationError(
                f"cache_ttl must be a positive number of seconds, got {cache_ttl!r}"
            )
        self.cache_ttl = cache_ttl
        if semantic is not None and not isinstance(semantic, SemanticConfig):
            raise ConfigurationError(
                f"semantic must be a SemanticConfig or None, got {type(semantic).__name__}"
            )
        if semantic is not None and store is None:
            raise ConfigurationError("semantic lookup needs a response store (store=...)")
        self.semantic = semantic
        self._semantic_index = SemanticIndex(semantic) if semantic is not None else None
        if not isinstance(share_across_credentials, bool):
            raise ConfigurationError("share_across_credentials must be True or False")
        self.share_across_credentials = share_across_credentials

    @classmethod
    def for_credentials(cls, credential: str | None, **kwargs: Any) -> Engine:
        """The engine a door builds for itself when it is given none.

        Its namespace is a hash of ``credential`` (the key is never kept), and unless
        ``store=`` says otherwise it keeps answers in :data:`DEFAULT_STORE`: the response
        cache is on by default at every door (``store=None`` turns it off).
        """
        kwargs.setdefault("namespace", namespace_for(credential))
        kwargs.setdefault("store", DEFAULT_STORE)
        return cls(**kwargs)

    @property
    def semantic_index(self) -> SemanticIndex | None:
        """This engine's local vector indexes (``None`` when semantic lookup is off)."""
        return self._semantic_index

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
        credential: str | None,
        api_version: str = API_VERSIONS[0],
        betas: Sequence[str] = (),
        defer_plan: bool = False,
    ) -> PreparedCall:
        """Validate, key and plan a Messages request.

        The key is computed on the caller's request (markers never change a key); the body to
        send carries the planner's breakpoints. Doors do not call this directly: they go
        through :class:`haikucache.Pipeline`, which runs every stage.

        Args:
            credential: the API key or token the request will reach upstream with (``None``
                when it carries none). Its hash scopes the key and the semantic partition
                (see :meth:`scope_for`), so answers never cross credentials.
            defer_plan: leave the planning to :meth:`plan`, which the door calls only when the
                request goes upstream: a response-cache hit then costs no planning (and
                teaches the planner nothing, since no prefix reached the API). Until then
                ``call.body`` is the validated request and ``call.plan`` is ``None``.

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
        scope = self.scope_for(credential)
        # The tenant label stays readable (ledger, invalidation); the key space is the label
        # *and* the credential's hash, so two keys under one label never meet.
        key_space = f"{namespace}\x00{scope}" if scope else namespace
        key = request_key(body, namespace=key_space, betas=betas)
        plan = None if defer_plan else self.planner.plan(body)
        partition = text = None
        if self.semantic is not None:
            text = last_user_text(body)
            if text is not None and text.strip() and len(text) <= self.semantic.max_chars:
                base = partition_key(body, namespace=key_space, betas=betas)
                # The embedder is part of the partition: vectors of two models never meet.
                partition = None if base is None else f"{base}:{self.semantic.model_tag}"
            if partition is None:
                text = None
        return PreparedCall(
            body=body if plan is None else plan.body,
            key=key,
            model=body["model"],
            stream=bool(body.get("stream", False)),
            options=options,
            namespace=namespace,
            scope=scope,
            api_version=api_version,
            betas=tuple(betas),
            plan=plan,
            partition=partition,
            text=text,
        )

    def refit(self, call: PreparedCall, model: str) -> PreparedCall:
        """The same call for another model (a fallback), validated and keyed for it: an
        answer is cached and accounted under the model that gave it.

        Raises:
            UsageError: ``call`` is planned already (refit the caller's request, not the
                planned body).
            RequestValidationError: the request is not valid for ``model``.
        """
        if call.plan is not None:
            raise UsageError("refit() takes an unplanned call")
        body = {**call.body, "model": model}
        validate_request(body, api_version=call.api_version)
        key_space = f"{call.namespace}\x00{call.scope}" if call.scope else call.namespace
        return dataclasses.replace(
            call,
            body=body,
            key=request_key(body, namespace=key_space, betas=call.betas),
            model=model,
            partition=None,
            text=None,
            vector=None,
            verification=None,
        )

    def scope_for(self, credential: str | None) -> str:
        """The key scope of calls made with ``credential``: a hash, never the secret.

        Empty (shared) when there is no credential, or when the engine was built with
        ``share_across_credentials=True``.
        """
        if self.share_across_credentials or not credential:
            return ""
        return namespace_for(credential)

    def plan(self, call: PreparedCall) -> PreparedCall:
        """Place the prompt-cache breakpoints of a call prepared with ``defer_plan=True``.

        Idempotent: a call that is already planned is returned as it is.
        """
        if call.plan is None:
            plan = self.planner.plan(call.body)
            call.body = plan.body
            call.plan = plan
        return call

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
        entry = self.store.get(call.key, now=self.clock.now())
        if entry is not None or call.partition is None:
            return entry
        vector = self._embed(call)
        return None if vector is None else self._search(call, vector)

    async def alookup(self, call: PreparedCall) -> CacheEntry | None:
        """The async twin of :meth:`lookup` (real I/O only for network stores)."""
        if self.store is None or call.options.no_cache:
            return None
        if self._async_store is not None:
            entry = await self._async_store.aget(call.key, now=self.clock.now())
        else:
            entry = self.store.get(call.key, now=self.clock.now())
        if entry is not None or call.partition is None:
            return entry
        vector = await self._aembed(call)
        if vector is None:
            return None
        # The index sync and the candidates' reads are store I/O (network for Redis).
        return await asyncio.to_thread(self._search, call, vector)

    # -- semantic lookup ------------------------------------------------------------------

    def _embedding_failed(self, exc: Exception) -> None:
        assert self.semantic is not None
        if self.semantic.strict:
            raise exc
        logger.warning(
            "haikucache: the embedder failed (%s: %s); the call goes on as an exact-cache miss",
            type(exc).__name__,
            exc,
        )

    def _embed(self, call: PreparedCall) -> Any:
        if call.vector is None and self.semantic is not None and call.text is not None:
            try:
                call.vector = self.semantic.embed([call.text])[0]
            except Exception as exc:  # an embedder failure is a miss, never a failed call
                self._embedding_failed(exc)
        return call.vector

    async def _aembed(self, call: PreparedCall) -> Any:
        if call.vector is None and self.semantic is not None and call.text is not None:
            try:
                call.vector = (await self.semantic.aembed([call.text]))[0]
            except Exception as exc:
                self._embedding_failed(exc)
        return call.vector

    def _search(self, call: PreparedCall, vector: Any) -> CacheEntry | None:
        """The best stored answer of the call's partition, by meaning, that is still live."""
        index, store, partition = self._semantic_index, self.store, call.partition
        assert index is not None
        assert store is not None
        assert partition is not None
        assert call.text is not None
        now = self.clock.now()
        index.sync(store, partition, now=now, clock=time.monotonic())
        matches = index.search(partition, vector, now=now)
        while True:
            decision = index.decide(call.text, matches)
            match: SemanticMatch | None = decision.label or decision.serve
            if match is None:
                return None
            entry = store.get(match.key, now=now)
            # Read back and checked: gone, expired or (defence in depth) of another
            # partition or tenant is not served; the next candidate is tried.
            if entry is None or entry.partition != partition or entry.namespace != call.namespace:
                index.discard(partition, match.key)
                matches = [m for m in matches if m.key != match.key]
                continue
            if decision.label is not None:
                # Under an error bound, a candidate below the learned threshold, or a
                # verification sample, is a miss: the caller gets the fresh answer, and the
                # store stage compares it with this one (see :meth:`_learn`).
                call.verification = index.pending(decision, entry.response)
                return None
            return dataclasses.replace(entry, similarity=match.similarity)

    def hit(self, call: PreparedCall, entry: CacheEntry) -> tuple[dict[str, Any], CallInfo]:
        """Serve a stored answer: a copy with a fresh id, and its accounting as a hit.

        An entry found by meaning (``entry.similarity`` set) is accounted as
        ``cache="semantic"``, with its similarity in the :class:`CallInfo`.
        """
        message = dict(entry.response)
        # Every answer gets its own id, as the API gives (a replay is a new response).
        message["id"] = (
            "msg_"
            + xxhash.xxh3_128_hexdigest(f"{entry.key}:{self.clock.now()}:{id(message)}".encode())[
                :24
            ]
        )
        semantic = entry.similarity is not None
        ledger_entry = now_entry(
            self.clock,
            namespace=call.namespace,
            model=call.model,
            cache="semantic" if semantic else "hit",
            usage=entry.usage,
        )
        if self._ledger is not None:
            self._ledger.record(ledger_entry)
        info = CallInfo.from_entry(ledger_entry, call.key)
        if semantic:
            info = dataclasses.replace(info, similarity=entry.similarity)
        return message, info

    def shared_entry(
        self, call: PreparedCall, message: Mapping[str, Any], leader: CallInfo | None
    ) -> CacheEntry:
        """The answer a concurrent twin (the single-flight leader) fetched, as an entry that
        :meth:`hit` serves to a follower for $0, priced as the leader's call."""
        return CacheEntry.for_message(
            key=call.key,
            namespace=call.namespace,
            message=message,
            now=self.clock.now(),
            cost_usd=leader.cost_usd if leader is not None else 0.0,
            baseline_usd=leader.baseline_usd if leader is not None else 0.0,
        )

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
            partition=call.partition,
            text=call.text,
        )

    def _learn(self, call: PreparedCall, message: Mapping[str, Any]) -> None:
        """Report a labelled candidate's outcome, once, from a complete upstream answer
        (a truncated or failed answer says nothing about the candidate's)."""
        pending, call.verification = call.verification, None
        if self._semantic_index is not None and is_storable(message):
            self._semantic_index.learn(pending, message)

    def _semantic_entry(self, entry: CacheEntry, vector: Any) -> tuple[CacheEntry, bytes | None]:
        """The entry to store and the vector bytes beside it (none: stored for exact reuse)."""
        if entry.partition is None:
            return entry, None
        if vector is None:  # the embedder failed: the answer is still good for exact repeats
            return dataclasses.replace(entry, partition=None, text=None), None
        data: bytes = vector.astype("<f4").tobytes()
        return entry, data

    def _indexed(self, stored: bool, entry: CacheEntry, vector: Any) -> bool:
        """Add a stored entry to this process's index at once (others find it by syncing)."""
        if stored and self._semantic_index is not None and entry.partition is not None:
            assert entry.text is not None
            self._semantic_index.add(
                entry.partition, entry.key, vector, entry.text, entry.expires_at
            )
        return stored

    def store_answer(self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo) -> bool:
        """Keep a complete answer (``end_turn``, ``tool_use``, ``stop_sequence``) for reuse.

        With semantic lookup on, the last user turn's vector is stored with it; under an
        error bound, the answer first teaches the bound whether a semantic candidate of this
        call would have been right.
        """
        if call.verification is not None:
            self._learn(call, message)
        entry = self._entry_to_store(call, message, info)
        if entry is None or self.store is None:
            return False
        vector = self._embed(call) if entry.partition is not None else None
        entry, data = self._semantic_entry(entry, vector)
        return self._indexed(self.store.put(entry, vector=data), entry, vector)

    async def astore_answer(
        self, call: PreparedCall, message: Mapping[str, Any], info: CallInfo
    ) -> bool:
        """The async twin of :meth:`store_answer`."""
        if call.verification is not None:
            # Comparing answers embeds them: off the event loop.
            await asyncio.to_thread(self._learn, call, message)
        entry = self._entry_to_store(call, message, info)
        if entry is None or self.store is None:
            return False
        vector = await self._aembed(call) if entry.partition is not None else None
        entry, data = self._semantic_entry(entry, vector)
        if self._async_store is not None:
            stored = await self._async_store.aput(entry, vector=data)
        else:
            stored = self.store.put(entry, vector=data)
        return self._indexed(stored, entry, vector)

    def invalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        """Remove stored answers by exact key, tag or namespace (and their vectors).

        Returns how many entries were removed. This process's semantic indexes are reloaded
        from the store on their next lookup; other processes never serve a removed entry
        either, since every candidate is read back from the store before it is served.
        """
        if self.store is None:
            return 0
        removed = self.store.invalidate(key=key, tag=tag, namespace=namespace)
        if self._semantic_index is not None:
            self._semantic_index.reset()
        return removed

    async def ainvalidate(
        self, *, key: str | None = None, tag: str | None = None, namespace: str | None = None
    ) -> int:
        """The async twin of :meth:`invalidate`."""
        if self.store is None:
            return 0
        if self._async_store is not None:
            removed = await self._async_store.ainvalidate(key=key, tag=tag, namespace=namespace)
        else:
            removed = self.store.invalidate(key=key, tag=tag, namespace=namespace)
        if self._semantic_index is not None:
            self._semantic_index.reset()
        return removed

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
