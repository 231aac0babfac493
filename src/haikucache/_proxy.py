"""``haikucache serve``: the pipeline as an Anthropic-compatible HTTP proxy.

Anything that honours ``ANTHROPIC_BASE_URL`` (an SDK in any language, a CLI agent, curl) gets
the engine without a code change. The proxy is one more thin door: it translates HTTP into
the :class:`~haikucache.Pipeline`'s inputs and its :class:`~haikucache.Outcome` back into
HTTP, with the SDK door's own helpers, and sequences no stage itself::

    client ──▶ POST /v1/messages      Door.prepare (haikucache-* headers → options, credential)
                 │ JSON                Pipeline.aexchange(call, send)   send: the shared pool
                 │ SSE                 Pipeline.aopen_stream(call) → a hit replayed, or a
                 │                     StreamTap fed each chunk as it is forwarded
               ▶ /v1/* (count_tokens, batches, models …)   streamed through unchanged
               ▶ /healthz, /metrics (Prometheus)

Every guarantee is the pipeline's: a bad request is a 400 before anything is sent; answers
are keyed by a hash of the caller's credential, so two keys never share them; identical
requests in flight make one upstream call (across replicas that share a Redis store);
only complete answers are stored. Upstream errors come back with their own status and
body; an unreachable upstream is a 502 (504 on a timeout) in the API's error shape.

Auth: by default the caller's own key goes upstream. A ``[keys]`` table in the TOML config
issues virtual keys: a proxy-issued key mapped to an upstream key (read from an environment
variable) and a namespace. Keys are never logged, printed or stored; only their hashes
scope the cache.

Configuration comes from flags, then ``HAIKUCACHE_*`` environment variables, then the TOML
file (``--config``), then defaults (see :class:`ProxyConfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import httpx

from ._breaker import CircuitBreaker
from ._budget import Budget, Budgets, RedisBudgetBackend
from ._controls import Controls, Upstream
from ._engine import DEFAULT_STORE, CallInfo, Engine
from ._exceptions import (
    ConfigurationError,
    ControlError,
    MissingDependencyError,
    UsageError,
)
from ._limits import RateLimiter, RateLimits, RedisLimiterBackend
from ._pipeline import Outcome, Reply, StreamTap
from ._planner import Planner, SharedPrefixStats
from ._sdk_door import (
    NAMESPACE_HEADER,
    Door,
    _streaming_headers,
    error_reply,
    info_headers,
    refusal,
    refused,
)
from ._semantic import SemanticConfig
from ._store import AsyncResponseStore, DiskStore, MemoryStore, RedisStore, ResponseStore
from ._telemetry import Telemetry
from ._upstream import DEFAULT_CONNECTION_LIMITS, DEFAULT_TIMEOUT, resolve_base_url

if TYPE_CHECKING:
    import argparse

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["ProxyConfig", "ProxyServer", "VirtualKey", "add_arguments", "create_app", "serve"]

logger = logging.getLogger("haikucache.proxy")

#: Where ``--workers N`` hands the configuration to each worker process (JSON; virtual keys'
#: upstream secrets are not in it, only the names of the variables that hold them).
CONFIG_ENV = "HAIKUCACHE_SERVE_CONFIG"
#: The environment variable naming the TOML file, when ``--config`` is not given.
CONFIG_PATH_ENV = "HAIKUCACHE_CONFIG"
#: The Messages API's own limit (reference §4.6); batches may be up to 256 MB.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BATCH_BODY_BYTES = 256 * 1024 * 1024
DEFAULT_PORT = 8788
_EMULATOR_BASE = "http://emulator.local"

# Request headers that describe one hop, not the request (RFC 9110 §7.6.1), and the ones
# httpx recomputes for the body it sends.
_HOP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
# Response headers dropped on the way back: hop-by-hop ones, the length (recomputed), and
# date/server (uvicorn sends its own).
_HOP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)
_AUTH_HEADERS = ("x-api-key", "authorization")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_OUTCOMES = ("hit", "semantic", "shared", "miss", "error", "invalid", "refused")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _require(module: str, package: str) -> Any:
    """Import an optional dependency of the proxy, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, "serve", "haikucache serve") from exc


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class VirtualKey:
    """A proxy-issued key: callers present it, the proxy sends ``upstream_key_env``'s key.

    Attributes:
        upstream_key_env: the environment variable holding the upstream API key (the secret
            itself never appears in a config file).
        namespace: the tenant label its calls are accounted and keyed under.
        budget_usd: a hard cap on what its calls may spend per ``budget_period``
            (``None``: none of its own; the proxy's global budget still applies).
        budget_period: ``"day"`` (default), ``"month"`` or ``"total"``.
        rpm, itpm, otpm: its own share of the rate limits (per model), on top of the
            proxy's (``None``: no share of its own).
    """

    upstream_key_env: str
    namespace: str
    budget_usd: float | None = None
    budget_period: str = "day"
    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.upstream_key_env, str) or not self.upstream_key_env:
            raise ConfigurationError("a virtual key needs upstream_key_env = <variable name>")
        if (
            not isinstance(self.namespace, str)
            or not self.namespace
            or not self.namespace.isascii()
        ):
            raise ConfigurationError("a virtual key's namespace must be a non-empty ASCII string")
        _check_budget(self.budget_usd, self.budget_period, f"virtual key {self.namespace!r}")
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(
                    f"the {name} of virtual key {self.namespace!r} must be a positive int"
                )

    @property
    def limited(self) -> bool:
        """Whether it has rate limits of its own."""
        return any(v is not None for v in (self.rpm, self.itpm, self.otpm))


@dataclass(frozen=True)
class ProxyConfig:
    """Everything ``haikucache serve`` is configured with.

    :meth:`load` merges, highest first: flags, ``HAIKUCACHE_<NAME>`` environment variables
    (e.g. ``HAIKUCACHE_PORT``), the TOML file, and these defaults; the upstream falls back
    to ``$ANTHROPIC_BASE_URL``, then the public API.

    Attributes:
        host: the interface to bind (loopback by default).
        port: the TCP port (0 picks a free one).
        upstream: the API (or gateway) requests go to.
        emulator: answer from an in-process :class:`~haikucache.testing.Emulator` instead
            (offline; ``upstream`` is ignored).
        store: the response cache: ``"disk"`` (default, as at every door), ``"memory"``,
            ``"none"``, a ``redis://`` URL (shared by replicas) or a directory.
        max_body_bytes: larger request bodies get 413 ``request_too_large``.
        max_batch_body_bytes: the same for ``POST /v1/messages/batches``.
        workers: uvicorn worker processes, each building its own app from this config.
        graceful_shutdown: seconds in-flight requests and streams get to finish on SIGTERM.
        cache_ttl: seconds a stored answer stays valid (``None``: until evicted).
        ledger: account calls in the on-disk ledger (``haikucache report``).
        caller_keys: accept callers' own API keys (off: only virtual keys).
        keys: virtual keys, by the key callers present.
        log_level: uvicorn's and haikucache's log level.
        budget_usd: a hard cap on what every call through the proxy may spend per
            ``budget_period`` (``None``: no global budget; virtual keys may have their own).
        budget_period: ``"day"`` (default, UTC), ``"month"`` or ``"total"``.
        rpm, itpm, otpm: client-side rate limits per model (cache-aware ITPM on Haiku 4.5);
            calls wait up to ``limit_wait`` seconds for room, then get a 429.
        limit_wait: seconds a call may wait for the rate limiter.
        breaker_failures: consecutive 5xx / 529 / connection errors that open an upstream
            model's circuit (0: no circuit breaker).
        fallback: tried in order when the model asked for is overloaded or down
            (comma-separated): model names, or base URLs of other upstreams (reached with
            the caller's credential).
        controls_store: a ``redis://`` URL where budgets and rate limits live, shared by
            every replica (default: the ``store``'s Redis when it is one, else in-process).
        telemetry: record every call as OpenTelemetry spans and metrics (GenAI semantic
            conventions) through the global tracer and meter providers (``haikucache[otel]``;
            configure exporters as usual, e.g. with ``opentelemetry-instrument``).
        semantic: also answer a question that means the same as a stored one, with the
            offline local embedder, the calibrated threshold, the guards and the verifier
            (``haikucache[embed]``); always within one caller's scope and conversation.
        semantic_threshold: the least similarity served (default: the calibrated one).
        max_false_hit_rate: an error bound the threshold is learned under (see
            docs/semantic-cache.md); ``None``: the fixed threshold.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    upstream: str | None = None
    emulator: bool = False
    store: str = DEFAULT_STORE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_body_bytes: int = DEFAULT_MAX_BATCH_BODY_BYTES
    workers: int = 1
    graceful_shutdown: float = 30.0
    cache_ttl: float | None = None
    ledger: bool = True
    caller_keys: bool = True
    keys: Mapping[str, VirtualKey] = field(default_factory=dict, repr=False)
    log_level: str = "info"
    budget_usd: float | None = None
    budget_period: str = "day"
    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    limit_wait: float = 30.0
    breaker_failures: int = 0
    fallback: str = ""
    controls_store: str | None = None
    telemetry: bool = False
    semantic: bool = False
    semantic_threshold: float | None = None
    max_false_hit_rate: float | None = None

    def __post_init__(self) -> None:
        # Virtual keys may be given as the TOML table's plain dicts.
        object.__setattr__(self, "keys", _coerce("keys", self.keys))
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be between 0 and 65535, got {self.port}")
        if self.workers < 1:
            raise ConfigurationError(f"workers must be >= 1, got {self.workers}")
        for name in ("max_body_bytes", "max_batch_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be a positive number of bytes")
        if self.graceful_shutdown < 0:
            raise ConfigurationError("graceful_shutdown must be >= 0 seconds")
        if self.cache_ttl is not None and self.cache_ttl <= 0:
            raise ConfigurationError("cache_ttl must be a positive number of seconds")
        _check_store_spec(self.store)
        if self.log_level not in _LOG_LEVELS:
            raise ConfigurationError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        if not self.caller_keys and not self.keys:
            raise ConfigurationError("caller_keys = false needs at least one virtual key")
        _check_budget(self.budget_usd, self.budget_period, "the proxy")
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be a positive number per minute")
        if self.limit_wait < 0:
            raise ConfigurationError("limit_wait must be >= 0 seconds")
        if self.breaker_failures < 0:
            raise ConfigurationError("breaker_failures must be >= 0 (0: no circuit breaker)")
        if self.semantic and self.store == "none":
            raise ConfigurationError("semantic lookup needs a response cache (--store)")
        if (self.semantic_threshold is not None or self.max_false_hit_rate is not None) and not (
            self.semantic
        ):
            raise ConfigurationError("semantic_threshold and max_false_hit_rate need semantic")
        if self.controls_store is not None and not self.controls_store.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigurationError("controls_store must be a redis:// URL")
        if not self.emulator:
            upstream = urlsplit(self.upstream_url)
            if self.port and upstream.port == self.port and _is_local(upstream.hostname, self.host):
                raise ConfigurationError(
                    f"the upstream {self.upstream_url} is this proxy itself (is "
                    "ANTHROPIC_BASE_URL pointing at the proxy?); pass --upstream"
                )

    @property
    def upstream_url(self) -> str:
        """The upstream base URL as resolved (``upstream``, ``$ANTHROPIC_BASE_URL``, the API)."""
        return resolve_base_url(self.upstream)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the proxy (a wildcard host shown as loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> ProxyConfig:
        """A configuration from flags (``None`` = not given), environment and TOML.

        Raises:
            ConfigurationError: an unknown setting, a value of the wrong type, or a missing
                or unreadable TOML file.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = path or env.get(CONFIG_PATH_ENV) or None
        if path is not None:
            values.update(_read_toml(path))
        for name in _SETTINGS:
            raw = env.get(f"HAIKUCACHE_{name.upper()}")
            if raw is not None and raw != "" and name != "keys":  # keys: the TOML file only
                values[name] = raw
        unknown = set(flags) - set(_SETTINGS)
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in flags.items() if v is not None})
        if not values.get("upstream") and env.get("ANTHROPIC_BASE_URL"):
            values["upstream"] = env["ANTHROPIC_BASE_URL"]
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    def to_json(self) -> str:
        """This configuration as JSON (what each worker process rebuilds it from)."""
        data = dataclasses.asdict(self)
        data["keys"] = {k: dataclasses.asdict(v) for k, v in self.keys.items()}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ProxyConfig:
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(**{name: _coerce(name, value) for name, value in data.items()})


_SETTINGS: dict[str, type] = {
    "host": str,
    "port": int,
    "upstream": str,
    "emulator": bool,
    "store": str,
    "max_body_bytes": int,
    "max_batch_body_bytes": int,
    "workers": int,
    "graceful_shutdown": float,
    "cache_ttl": float,
    "ledger": bool,
    "caller_keys": bool,
    "keys": dict,
    "log_level": str,
    "budget_usd": float,
    "budget_period": str,
    "rpm": int,
    "itpm": int,
    "otpm": int,
    "limit_wait": float,
    "breaker_failures": int,
    "fallback": str,
    "controls_store": str,
    "telemetry": bool,
    "semantic": bool,
    "semantic_threshold": float,
    "max_false_hit_rate": float,
}
_KEY_FIELDS = (
    "upstream_key_env",
    "namespace",
    "budget_usd",
    "budget_period",
    "rpm",
    "itpm",
    "otpm",
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(name: str, value: Any) -> Any:
    kind = _SETTINGS.get(name)
    if kind is None:
        raise ConfigurationError(f"unknown setting {name!r}")
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.replace("_", ""))
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is dict and isinstance(value, Mapping):
        keys: dict[str, VirtualKey] = {}
        for key, spec in value.items():
            if isinstance(spec, VirtualKey):
                keys[str(key)] = spec
                continue
            if not isinstance(spec, Mapping) or set(spec) - set(_KEY_FIELDS):
                raise ConfigurationError(
                    "each [keys] entry is { upstream_key_env = <variable>, namespace = <name> "
                    "[, budget_usd = <cap>, budget_period = day|month|total, rpm = <n>, "
                    "itpm = <n>, otpm = <n>] }"
                )
            keys[str(key)] = VirtualKey(
                upstream_key_env=spec.get("upstream_key_env", ""),
                namespace=spec.get("namespace", ""),
                budget_usd=spec.get("budget_usd"),
                budget_period=spec.get("budget_period", "day"),
                rpm=spec.get("rpm"),
                itpm=spec.get("itpm"),
                otpm=spec.get("otpm"),
            )
        return keys
    raise ConfigurationError(f"setting {name} must be a {kind.__name__}, got {value!r}")


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = _require("tomli", "tomli")
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the config {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(data) - set(_SETTINGS)
    if unknown:
        raise ConfigurationError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return data


def _check_budget(cap: float | None, period: str, whose: str) -> None:
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap >= 0
    ):
        raise ConfigurationError(f"the budget of {whose} must be a number of dollars >= 0")
    if period not in ("day", "month", "total"):
        raise ConfigurationError(f"the budget period of {whose} must be day, month or total")


def _controls_store(config: ProxyConfig) -> str | None:
    shared = config.controls_store
    if shared is None and config.store.startswith(("redis://", "rediss://", "unix://")):
        shared = config.store
    return shared


def _key_controls(config: ProxyConfig, base: Controls | None, vk: VirtualKey) -> Controls:
    """A virtual key's controls: the proxy's, and its own share of the rate limits."""
    shared = _controls_store(config)
    own = RateLimiter(
        {"*": RateLimits(rpm=vk.rpm, itpm=vk.itpm, otpm=vk.otpm)},
        backend=RedisLimiterBackend(shared, prefix=f"hc:vk:{vk.namespace}:") if shared else None,
        learn_limits=False,
    )
    return dataclasses.replace(base or Controls(wait=config.limit_wait), tenant_limiter=own)


def _build_controls(config: ProxyConfig) -> Controls | None:
    """The controls stage ``config`` asks for (``None``: none)."""
    shared = _controls_store(config)
    budgets = [
        Budget(float(config.budget_usd), period=config.budget_period, name="proxy")  # type: ignore[arg-type]
        for _ in (0,)
        if config.budget_usd is not None
    ]
    budgets += [
        Budget(
            float(vk.budget_usd),
            period=vk.budget_period,  # type: ignore[arg-type]
            namespace=vk.namespace,
            name=f"key:{vk.namespace}",
        )
        for vk in config.keys.values()
        if vk.budget_usd is not None
    ]
    limits = RateLimits(rpm=config.rpm, itpm=config.itpm, otpm=config.otpm)
    limited = any(v is not None for v in (config.rpm, config.itpm, config.otpm))
    fallback = tuple(
        Upstream(m) if "://" in m else m
        for m in (m.strip() for m in config.fallback.split(","))
        if m
    )
    if not (budgets or limited or config.breaker_failures or fallback):
        return None
    return Controls(
        budgets=Budgets(budgets, backend=RedisBudgetBackend(shared) if shared else None)
        if budgets
        else None,
        limiter=RateLimiter({"*": limits}, backend=RedisLimiterBackend(shared) if shared else None)
        if limited
        else None,
        breaker=CircuitBreaker(failure_threshold=config.breaker_failures)
        if config.breaker_failures
        else None,
        fallback=fallback,
        wait=config.limit_wait,
    )


def _semantic(config: ProxyConfig) -> SemanticConfig | None:
    """Semantic lookup with the local embedder, if asked (built once, shared by every door)."""
    if not config.semantic:
        return None
    from ._embed_local import LocalEmbedder

    options: dict[str, Any] = {}
    if config.semantic_threshold is not None:
        options["threshold"] = config.semantic_threshold
    if config.max_false_hit_rate is not None:
        options["max_false_hit_rate"] = config.max_false_hit_rate
    return SemanticConfig(embedder=LocalEmbedder(), **options)


def _planner(config: ProxyConfig, store: ResponseStore | None) -> Planner | str:
    """Replicas (or workers) sharing a store learn prefixes together: the planner's
    statistics go through the store's log, so N processes cost what one does."""
    shared = config.workers > 1 or config.store.startswith(("redis://", "rediss://", "unix://"))
    if shared and store is not None and callable(getattr(store, "append_log", None)):
        return Planner(stats=SharedPrefixStats(store))  # type: ignore[arg-type]
    return "adaptive"


def _check_store_spec(spec: str) -> None:
    if not isinstance(spec, str) or not spec:
        raise ConfigurationError("store must be memory, disk, none, a redis:// URL or a directory")


def _build_store(spec: str) -> ResponseStore | None:
    if spec == "none":
        return None
    if spec == "memory":
        return MemoryStore()
    if spec == "disk":
        return DiskStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    return DiskStore(spec)


def _is_local(hostname: str | None, bind: str) -> bool:
    local = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}
    return hostname is not None and (hostname == bind or (hostname in local and bind in local))


def _redact(url: str) -> str:
    """A URL without its userinfo (a gateway URL may carry a password)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.hostname or "").geturl()


# --------------------------------------------------------------------------- metrics


class _Metrics:
    """The proxy's Prometheus metrics, in a registry of its own (several apps may share a
    process); with ``--workers N`` every worker writes to one multiprocess directory."""

    def __init__(self) -> None:
        prometheus = _require("prometheus_client", "prometheus-client")
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry()
        counter, registry = prometheus.Counter, self.registry
        requests = counter(
            "haikucache_proxy_requests",
            "POST /v1/messages requests, by where the answer came from",
            ["outcome"],
            registry=registry,
        )
        self._outcomes = {name: requests.labels(name) for name in _OUTCOMES}
        passthrough = counter(
            "haikucache_proxy_passthrough_requests",
            "Requests passed through unchanged, by endpoint",
            ["endpoint"],
            registry=registry,
        )
        self._passthrough = {
            name: passthrough.labels(name)
            for name in ("count_tokens", "batches", "models", "other")
        }
        self._billed = counter(
            "haikucache_proxy_billed_usd", "Dollars billed upstream", registry=registry
        )
        self._baseline = counter(
            "haikucache_proxy_baseline_usd",
            "Dollars the same calls cost without haikucache",
            registry=registry,
        )
        # A gauge: a cache write can cost more than it saves on its first call.
        self._saved = prometheus.Gauge(
            "haikucache_proxy_saved_usd",
            "Dollars saved (baseline minus billed)",
            registry=registry,
            multiprocess_mode="sum",
        )
        latency = prometheus.Histogram(
            "haikucache_proxy_upstream_latency_seconds",
            "Seconds until the upstream's response headers arrived",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._latency = {name: latency.labels(name) for name in ("messages", "passthrough")}

    def outcome(self, name: str) -> None:
        self._outcomes[name].inc()

    def passthrough(self, path: str) -> None:
        if path.startswith("/v1/messages/count_tokens"):
            endpoint = "count_tokens"
        elif path.startswith("/v1/messages/batches"):
            endpoint = "batches"
        elif path.startswith("/v1/models"):
            endpoint = "models"
        else:
            endpoint = "other"
        self._passthrough[endpoint].inc()

    def account(self, info: CallInfo | None) -> None:
        if info is None:
            return
        self._billed.inc(max(info.cost_usd, 0.0))
        self._baseline.inc(max(info.baseline_usd, 0.0))
        self._saved.inc(info.saved_usd)

    def upstream(self, endpoint: str, started: float) -> None:
        self._latency[endpoint].observe(time.perf_counter() - started)

    def watch_budgets(self, budgets: Budgets) -> None:
        """Expose ``budgets``' cap, spend and in-flight reservations, read at each scrape."""
        self._budgets = _BudgetCollector(self._prometheus, budgets)
        self.registry.register(self._budgets)

    def exposition(self) -> tuple[bytes, str]:
        prometheus = self._prometheus
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = prometheus.CollectorRegistry()
            _require("prometheus_client.multiprocess", "prometheus-client").MultiProcessCollector(
                registry
            )
            if getattr(self, "_budgets", None) is not None:
                registry.register(self._budgets)
        return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST


class _BudgetCollector:
    """Budgets as Prometheus gauges, read from their backend (Redis: shared) at scrape time."""

    def __init__(self, prometheus: Any, budgets: Budgets) -> None:
        self._family = _require("prometheus_client.core", "prometheus-client").GaugeMetricFamily
        self._budgets = budgets

    def collect(self) -> Any:
        labels = ["budget", "period"]
        cap = self._family("haikucache_budget_cap_usd", "A budget's cap", labels=labels)
        spent = self._family(
            "haikucache_budget_spent_usd", "Dollars spent in the budget's period", labels=labels
        )
        reserved = self._family(
            "haikucache_budget_reserved_usd",
            "Worst-case dollars of calls in flight",
            labels=labels,
        )
        try:
            statuses = self._budgets.status()
        except Exception:  # a scrape never fails because the shared store is down
            logger.warning("haikucache proxy: could not read the budgets", exc_info=True)
            statuses = []
        for status in statuses:
            values = [status.budget, status.period_key]
            cap.add_metric(values, status.cap_usd)
            spent.add_metric(values, status.spent_usd)
            reserved.add_metric(values, status.reserved_usd)
        return [cap, spent, reserved]


# --------------------------------------------------------------------------- the door


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Caller:
    """Who a request comes from: what scopes its cache keys and what goes upstream."""

    credential: str | None
    namespace: str | None
    auth: tuple[tuple[str, str], ...]


class _Proxy:
    """The request handlers: HTTP in, the pipeline's outcome out."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        store = _build_store(config.store)
        planner = _planner(config, store)
        telemetry = Telemetry() if config.telemetry else None
        controls = _build_controls(config)
        upstream = config.upstream_url if not config.emulator else _EMULATOR_BASE

        semantic = _semantic(config)

        def door(controls: Controls | None) -> Door:
            # Every door shares the store, planner and ledger; only the controls differ.
            engine = Engine(
                store=store,
                planner=planner,
                ledger=None if config.ledger else False,
                cache_ttl=config.cache_ttl,
                controls=controls,
                telemetry=telemetry,
                semantic=semantic,
            )
            return Door(engine, label_by_credential=True, upstream=upstream)

        self.door = door(controls)
        # A virtual key with rate limits of its own goes through a door of its own.
        self._key_doors = {
            vk.namespace: door(_key_controls(config, controls, vk))
            for vk in config.keys.values()
            if vk.limited
        }
        self.metrics = _Metrics()
        controls = self.door.engine.controls
        if controls is not None and controls.budgets is not None:
            self.metrics.watch_budgets(controls.budgets)
        self.emulator: Any = None
        self._keys = {key: (vk, _upstream_secret(vk)) for key, vk in config.keys.items()}
        self._upstream: _Upstream | _AiohttpUpstream | None = None
        self._fallbacks: dict[int, _Upstream | _AiohttpUpstream] = {}

    # -- lifespan -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.config.emulator:
            from .testing import Emulator

            self.emulator = Emulator()
            self._upstream = _Upstream(_EMULATOR_BASE, self.emulator.transport())
        else:
            # One keep-alive pool for every caller: HTTP/1.1, as the SDKs speak it.
            try:
                self._upstream = _AiohttpUpstream(
                    self.config.upstream_url, DEFAULT_CONNECTION_LIMITS, DEFAULT_TIMEOUT
                )
            except ImportError:  # an install without aiohttp: httpx's own pool
                pool = httpx.AsyncHTTPTransport(limits=DEFAULT_CONNECTION_LIMITS)
                self._upstream = _Upstream(self.config.upstream_url, pool)

    async def stop(self) -> None:
        if self._upstream is not None:
            await self._upstream.aclose()
        for fallback in self._fallbacks.values():
            with contextlib.suppress(Exception):
                await fallback.aclose()
        engine = self.door.engine
        store = engine.store
        with contextlib.suppress(Exception):
            if isinstance(store, AsyncResponseStore):
                await store.aclose()
            elif store is not None:
                store.close()
        flush = getattr(engine.ledger, "flush", None)
        if callable(flush):
            with contextlib.suppress(Exception):
                flush()

    def _route(
        self, where: Upstream | None, forward: list[tuple[str, str]]
    ) -> tuple[_Upstream | _AiohttpUpstream, list[tuple[str, str]]]:
        """Where a call goes: this proxy's upstream, or a fallback :class:`Upstream` (with
        its own key when it has one, and its extra headers)."""
        if where is None:
            return self.upstream, forward
        upstream = self._fallbacks.get(id(where))
        if upstream is None:
            if where.transport is not None:
                upstream = _Upstream(where.base_url, where.transport)
            else:
                upstream = _AiohttpUpstream(
                    where.base_url, DEFAULT_CONNECTION_LIMITS, DEFAULT_TIMEOUT
                )
            self._fallbacks[id(where)] = upstream
        headers = forward
        if where.api_key is not None:
            headers = [(k, v) for k, v in forward if k not in _AUTH_HEADERS]
            headers.append(("x-api-key", where.api_key))
        if where.headers:
            extra = {k.lower() for k in where.headers}
            headers = [(k, v) for k, v in headers if k not in extra] + list(where.headers.items())
        return upstream, headers

    @property
    def upstream(self) -> _Upstream:
        assert self._upstream is not None, "the app's lifespan has not started"
        return self._upstream  # type: ignore[return-value]

    # -- auth -----------------------------------------------------------------------------

    def caller(self, headers: Mapping[str, str]) -> _Caller | None:
        """The request's caller (``None``: a key this proxy does not accept)."""
        key = headers.get("x-api-key") or None
        bearer = False
        if key is None:
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key, bearer = auth[7:].strip() or None, True
        virtual = self._keys.get(key) if key is not None else None
        if virtual is not None:
            vk, secret = virtual
            header = ("authorization", f"Bearer {secret}") if bearer else ("x-api-key", secret)
            # The virtual key scopes the cache: two teams on one upstream key never share.
            return _Caller(key, vk.namespace, (header,))
        if not self.config.caller_keys:
            return None
        own = tuple((name, headers[name]) for name in _AUTH_HEADERS if name in headers)
        return _Caller(key, None, own)

    def forward_headers(
        self, request: Request, caller: _Caller, *, json_body: bool
    ) -> list[tuple[str, str]]:
        """The request's headers as they go upstream: no hop-by-hop, no ``haikucache-*``,
        the caller's (or the virtual key's) credential."""
        drop = _HOP_REQUEST | {"accept-encoding"} if json_body else _HOP_REQUEST
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name not in drop and name not in _AUTH_HEADERS and not name.startswith("haikucache-")
        ]
        headers.extend(caller.auth)
        return headers

    # -- POST /v1/messages ----------------------------------------------------------------

    async def messages(self, request: Request) -> Response | _Relay:
        headers = dict(request.headers.items())
        caller = self.caller(headers)
        if caller is None:
            return _unauthorized()
        try:
            raw = await _read_body(request, self.config.max_body_bytes)
        except _TooLarge:
            self.metrics.outcome("invalid")
            return _too_large(self.config.max_body_bytes)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            self.metrics.outcome("invalid")
            return _error(400, "invalid_request_error", f"haikucache: the body is not JSON ({exc})")
        if caller.namespace is not None:
            headers[NAMESPACE_HEADER] = caller.namespace
        try:
            door = self._key_doors.get(caller.namespace or "", self.door)
            call = door.prepare(body, headers, caller.credential)
        except UsageError as exc:  # the API would reject it, or a haikucache-* header is bad
            self.metrics.outcome("invalid")
            return _error(400, "invalid_request_error", f"haikucache: {exc}")
        forward = self.forward_headers(request, caller, json_body=True)
        target = _target(request)
        try:
            if call.stream:
                opened = await door.pipeline.aopen_stream(call)
                if isinstance(opened, Outcome):
                    return self._answer(opened)
                return await self._relay_stream(opened, target, forward)

            async def send(planned: dict[str, Any]) -> Reply[Any]:
                return await send_to(None, planned)

            async def send_to(where: Upstream | None, planned: dict[str, Any]) -> Reply[Any]:
                started = time.perf_counter()
                upstream, headers = self._route(where, forward)
                response = await upstream.send("POST", target, headers, _encode(planned))
                self.metrics.upstream("messages", started)
                content = await response.aread()
                if not response.is_success:
                    return error_reply((response, content), response)
                reply = Door.reply(response, content)
                return Reply(reply.message, (response, content), reply.status, reply.headers)

            return self._answer(await door.pipeline.aexchange(call, send, send_to=send_to))
        except ControlError as exc:
            self.metrics.outcome("refused")
            return _refused(exc)
        except httpx.TransportError as exc:
            self.metrics.outcome("error")
            return _unreachable(exc)

    def _answer(self, outcome: Outcome[Any]) -> Response:
        """The HTTP response of an outcome: rendered when served locally, upstream's own
        (with the outcome headers) for a miss."""
        if outcome.raw is None:
            content, rendered, info = Door.render(outcome)
            self.metrics.outcome(outcome.source)
            self.metrics.account(info)
            return _response(200, list(rendered.items()), content)
        response, content = outcome.raw
        self.metrics.outcome(outcome.source if outcome.info is not None else "error")
        self.metrics.account(outcome.info)
        extra = info_headers(outcome.info) if outcome.info is not None else {}
        headers = _response_headers(response.headers, decoded=True) + list(extra.items())
        return _response(response.status_code, headers, content)

    async def _relay_stream(
        self, tap: StreamTap, target: str, forward: list[tuple[str, str]]
    ) -> Response | _Relay:
        """Send a streamed miss upstream; forward each chunk as it arrives, and let the tap
        follow it (it stores the answer once complete)."""
        started = time.perf_counter()
        response = await self.upstream.send("POST", target, forward, _encode(tap.call.body))
        self.metrics.upstream("messages", started)
        if not response.is_success:
            refused(tap, response)
            content = await response.aread()
            await response.aclose()
            self.metrics.outcome("error")
            return _response(
                response.status_code, _response_headers(response.headers, decoded=True), content
            )
        self.metrics.outcome("miss")
        metrics = self.metrics

        async def followed() -> AsyncIterator[bytes]:
            async for chunk in response.aiter_bytes():
                if tap.feed(chunk) is not None:
                    await tap.astore()
                    metrics.account(tap.info)
                yield chunk

        headers = _response_headers(response.headers, decoded=True)
        headers.extend(_streaming_headers(tap.call).items())
        return _Relay(response, headers, followed())

    # -- everything else under /v1 --------------------------------------------------------

    async def passthrough(self, request: Request) -> Response | _Relay:
        """Any other ``/v1/*`` call, streamed both ways unchanged (batch objects get their
        ``results_url`` pointed at this proxy, so results are fetched through it too)."""
        headers = dict(request.headers.items())
        caller = self.caller(headers)
        if caller is None:
            return _unauthorized()
        path = request.url.path
        limit = (
            self.config.max_batch_body_bytes
            if request.method == "POST" and path.rstrip("/") == "/v1/messages/batches"
            else self.config.max_body_bytes
        )
        forward = self.forward_headers(request, caller, json_body=False)
        length = headers.get("content-length")
        content: bytes | AsyncIterator[bytes] | None = None
        try:
            if length is not None and length.isdigit():
                if int(length) > limit:
                    raise _TooLarge
                if int(length):  # streamed as it comes: its length is known and allowed
                    content = request.stream()
                    forward.append(("content-length", length))
            elif "transfer-encoding" in headers:  # no length: read it whole, up to the limit
                content = await _read_body(request, limit)
        except _TooLarge:
            return _too_large(limit)
        self.metrics.passthrough(path)
        started = time.perf_counter()
        try:
            response = await self.upstream.send(request.method, _target(request), forward, content)
        except httpx.TransportError as exc:
            return _unreachable(exc)
        self.metrics.upstream("passthrough", started)
        if _is_batch_object(request.method, path, response):
            content = await response.aread()
            await response.aclose()
            content = self._rewrite_results_urls(content, str(request.base_url).rstrip("/"))
            return _response(
                response.status_code, _response_headers(response.headers, decoded=True), content
            )

        kept = _response_headers(response.headers, decoded=False)
        if response.is_stream_consumed:  # an in-process transport's body, already read
            return _response(response.status_code, kept, response.content)
        return _Relay(response, kept, response.aiter_raw())

    def _rewrite_results_urls(self, content: bytes, proxy_base: str) -> bytes:
        try:
            payload = json.loads(content)
        except ValueError:
            return content
        batches = payload.get("data") if isinstance(payload, dict) else None
        changed = False
        for batch in batches if isinstance(batches, list) else [payload]:
            url = batch.get("results_url") if isinstance(batch, dict) else None
            base = self.upstream.base_url
            if isinstance(url, str) and url.startswith(base + "/"):
                batch["results_url"] = proxy_base + url[len(base) :]
                changed = True
        return _encode(payload) if changed else content

    # -- operations -----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        from . import __version__

        return _response(
            200,
            [("content-type", "application/json")],
            _encode({"status": "ok", "version": __version__}),
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        content, content_type = self.metrics.exposition()
        return _response(200, [("content-type", content_type)], content)

    async def not_found(self, request: Request) -> Response:
        return _error(404, "not_found_error", f"Not found: {request.method} {request.url.path}")

    async def failed(self, request: Request, exc: Exception) -> Response:
        logger.error(
            "haikucache proxy: %s %s failed (%s)",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,
        )
        return _error(500, "api_error", "haikucache proxy: internal error")


class _Relay:
    """An ASGI response that forwards an upstream body chunk by chunk, as each arrives.

    Lighter than Starlette's ``StreamingResponse``, which starts a task group per response
    (about 0.3 ms before the first byte): the body is sent from the request's own task, and
    a small watcher notes a client that went away, which ends the relay at its next chunk.
    The upstream response is closed whatever happens.
    """

    def __init__(
        self, upstream: httpx.Response, headers: list[tuple[str, str]], chunks: AsyncIterator[bytes]
    ) -> None:
        self._upstream = upstream
        self._headers = _encode_headers(headers)
        self._chunks = chunks

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:

        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True

        watcher = asyncio.ensure_future(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self._upstream.status_code,
                    "headers": self._headers,
                }
            )
            async for chunk in self._chunks:
                if gone:
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:
            if not gone:  # the upstream broke mid-body: the client must see a cut stream
                raise
        finally:
            watcher.cancel()
            await self._upstream.aclose()


class _Upstream:
    """The one keep-alive pool every caller's requests share, and the way to it.

    Requests go to the pool (an httpx transport) as ``httpx.Request`` objects the proxy
    builds itself: a client's auth, redirect, cookie and hook layers would cost about
    0.2 ms a call on loopback, and a proxy wants none of them (redirects and cookies are its
    caller's business). Responses are streams: read or close them.
    """

    def __init__(self, base_url: str, transport: httpx.AsyncBaseTransport) -> None:
        self.base_url = base_url.rstrip("/")
        self._transport = transport
        self._timeout = DEFAULT_TIMEOUT.as_dict()

    async def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes] | None,
    ) -> httpx.Response:
        """Send one request; its response once the headers are in (the body still to read).

        Raises:
            httpx.TransportError: the upstream could not be reached, or timed out.
        """
        request = httpx.Request(
            method,
            self.base_url + target,
            headers=headers,
            content=content,
            extensions={"timeout": self._timeout},
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class _AiohttpUpstream:
    """The network upstream on aiohttp's client: the same :meth:`send` as :class:`_Upstream`.

    On loopback an aiohttp round trip costs about 0.24 ms against httpx's 0.61 ms (its C
    parser, no per-request model objects): the upstream leg was half of a miss's added time.
    Bodies are passed on as they come (no decompression, no headers of aiohttp's own); the
    errors are httpx's, which the handlers already map to 502 and 504.
    """

    def __init__(self, base_url: str, limits: httpx.Limits, timeout: httpx.Timeout) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limits.max_connections or 0,
                keepalive_timeout=limits.keepalive_expiry or 5.0,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=timeout.connect, sock_read=timeout.read
            ),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )

    async def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes] | None,
    ) -> _AiohttpResponse:
        """Send one request; its response once the headers are in (the body still to read).

        Raises:
            httpx.TransportError: the upstream could not be reached, or timed out.
        """
        aiohttp = self._aiohttp
        try:
            response = await self._session.request(
                method,
                self.base_url + target,
                headers=headers,
                data=content,
                allow_redirects=False,
            )
        except _TIMEOUTS as exc:  # aiohttp's timeouts (asyncio's, distinct on 3.10)
            raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        await self._session.close()


class _AiohttpResponse:
    """An aiohttp response with the few ``httpx.Response`` members the handlers use."""

    is_stream_consumed = False
    content = b""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers = httpx.Headers(list(response.raw_headers))

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        try:
            return bytes(await self._response.read())
        except _TIMEOUTS as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
        except Exception as exc:  # aiohttp.ClientError: the connection broke mid-body
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _TIMEOUTS as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout") from exc
        except Exception as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    aiter_raw = aiter_bytes  # nothing is decoded on the way

    async def aclose(self) -> None:
        self._response.release()


def _upstream_secret(vk: VirtualKey) -> str:
    secret = os.environ.get(vk.upstream_key_env, "")
    if not secret:
        raise ConfigurationError(
            f"the virtual key of namespace {vk.namespace!r} reads its upstream key from "
            f"${vk.upstream_key_env}, which is not set"
        )
    return secret


# --------------------------------------------------------------------------- HTTP helpers


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _header_value(value: str) -> bytes:
    # A value from the request (the model name) must not split a header line.
    return value.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), _header_value(value)) for name, value in headers]


def _response(status: int, headers: list[tuple[str, str]], content: bytes) -> Response:
    from starlette.responses import Response

    response = Response(content, status_code=status)
    response.raw_headers = [
        *_encode_headers(headers),
        (b"content-length", str(len(content)).encode()),
    ]
    return response


def _response_headers(headers: httpx.Headers, *, decoded: bool) -> list[tuple[str, str]]:
    """Upstream response headers worth passing on (``decoded``: the body was decoded)."""
    drop = _HOP_RESPONSE | {"content-encoding"} if decoded else _HOP_RESPONSE
    return [(name, value) for name, value in headers.multi_items() if name not in drop]


def _error(status: int, kind: str, message: str) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return _response(status, [("content-type", "application/json")], _encode(body))


def _refused(exc: ControlError) -> Response:
    """A control's refusal in the API's error shape (nothing was sent upstream)."""
    status, body, headers = refusal(exc)
    return _response(status, list(headers.items()), _encode(body))


def _unauthorized() -> Response:
    return _error(401, "authentication_error", "haikucache proxy: invalid or missing API key")


def _too_large(limit: int) -> Response:
    return _error(
        413, "request_too_large", f"Request exceeds the maximum allowed number of bytes ({limit})."
    )


def _unreachable(exc: httpx.TransportError) -> Response:
    logger.warning("haikucache proxy: the upstream failed: %s", type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException):
        return _error(504, "timeout_error", "haikucache proxy: the upstream timed out")
    return _error(
        502, "api_error", f"haikucache proxy: the upstream is unreachable ({type(exc).__name__})"
    )


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _is_batch_object(method: str, path: str, response: httpx.Response) -> bool:
    """A JSON batch object or page (not the JSONL results): its ``results_url`` is upstream's."""
    return (
        path.startswith("/v1/messages/batches")
        and not path.rstrip("/").endswith("/results")
        and method != "DELETE"
        and response.headers.get("content-type", "").startswith("application/json")
    )


# --------------------------------------------------------------------------- the app


def create_app(config: ProxyConfig | None = None) -> Starlette:
    """The proxy as an ASGI app (Starlette), for uvicorn or any ASGI server.

    Raises:
        MissingDependencyError: ``haikucache[serve]`` is not installed.
        ConfigurationError: a virtual key's upstream variable is not set, or a bad store.
    """
    _require("starlette", "starlette")
    from starlette.applications import Starlette
    from starlette.routing import Route

    config = config or ProxyConfig()
    proxy = _Proxy(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await proxy.start()
        try:
            yield
        finally:
            await proxy.stop()

    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/v1/messages", proxy.messages, methods=["POST"]),
            Route("/healthz", proxy.healthz, methods=["GET"]),
            Route("/metrics", proxy.metrics_endpoint, methods=["GET"]),
            Route("/v1/{path:path}", proxy.passthrough, methods=every),
            Route("/{path:path}", proxy.not_found, methods=every),
        ],
        exception_handlers={Exception: proxy.failed},
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    return app


def app_from_env() -> Starlette:
    """The app factory each ``--workers`` process calls (the config travels in the env)."""
    text = os.environ.get(CONFIG_ENV)
    return create_app(ProxyConfig.from_json(text) if text else ProxyConfig.load())


def _uvicorn_config(config: ProxyConfig, app: Any, **extra: Any) -> Any:
    uvicorn = _require("uvicorn", "uvicorn")
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        lifespan="on",
        ws="none",
        server_header=False,
        log_level=config.log_level,
        # Uvicorn waits this long for in-flight requests (streams included) on SIGTERM.
        timeout_graceful_shutdown=config.graceful_shutdown,
        **extra,
    )


class ProxyServer:
    """A proxy served by uvicorn in a background thread (tests, benchmarks, notebooks).

    ``start()`` binds (``port=0`` picks a free port) and returns once it accepts requests;
    ``base_url`` is where to point ``ANTHROPIC_BASE_URL``; ``stop()`` drains and ends it.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._port = config.port

    @property
    def proxy(self) -> _Proxy:
        proxy: _Proxy = self.app.state.proxy
        return proxy

    @property
    def base_url(self) -> str:
        return dataclasses.replace(self.config, port=self._port).base_url

    def start(self, timeout: float = 10.0) -> ProxyServer:
        uvicorn = _require("uvicorn", "uvicorn")
        config = _uvicorn_config(self.config, self.app, log_config=None)
        sock = config.bind_socket()
        self._port = sock.getsockname()[1]
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"haikucache-proxy:{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self.config.graceful_shutdown + 5)
        self._server = self._thread = None

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: ProxyConfig, out: TextIO | None = None) -> None:
    """Run the proxy until SIGINT/SIGTERM (which drain in-flight requests first).

    The first line printed is ``haikucache proxy listening on <base URL>``.
    """
    out = out or sys.stdout
    uvicorn = _require("uvicorn", "uvicorn")
    upstream = "the built-in emulator" if config.emulator else _redact(config.upstream_url)
    if config.workers == 1:
        app = create_app(config)  # fails here, before binding, on a bad config
        server_config = _uvicorn_config(config, app)
        sock = server_config.bind_socket()
        config = dataclasses.replace(config, port=sock.getsockname()[1])
        _announce(out, config, upstream)
        uvicorn.Server(server_config).run(sockets=[sock])
        return
    if config.port == 0:
        with socket.socket() as probe:
            probe.bind((config.host, 0))
            config = dataclasses.replace(config, port=probe.getsockname()[1])
    create_app(config)  # validate in the parent: a worker that cannot start says nothing useful
    os.environ[CONFIG_ENV] = config.to_json()
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its counters here, so /metrics on any worker sums them all.
        metrics_dir = tempfile.mkdtemp(prefix="haikucache-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _announce(out, config, upstream)
    try:
        uvicorn.run(
            "haikucache._proxy:app_from_env",
            factory=True,
            workers=config.workers,
            host=config.host,
            port=config.port,
            lifespan="on",
            ws="none",
            server_header=False,
            log_level=config.log_level,
            timeout_graceful_shutdown=config.graceful_shutdown,
        )
    finally:
        if metrics_dir is not None:
            import shutil

            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _announce(out: TextIO, config: ProxyConfig, upstream: str) -> None:
    print(f"haikucache proxy listening on {config.base_url}", file=out, flush=True)
    print(f"  export ANTHROPIC_BASE_URL={config.base_url}", file=out, flush=True)
    store = _redact(config.store)
    keys = f"{len(config.keys)} virtual key(s)" if config.keys else "no virtual keys"
    callers = "callers' own keys accepted" if config.caller_keys else "only virtual keys"
    print(f"  upstream: {upstream}; store: {store}; {keys}, {callers}", file=out, flush=True)
    if config.workers > 1:
        print(f"  workers: {config.workers}", file=out, flush=True)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``haikucache serve`` flags (each overrides its ``HAIKUCACHE_*`` variable and the
    TOML file)."""
    parser.add_argument("--config", default=None, metavar="TOML", help=f"or ${CONFIG_PATH_ENV}")
    parser.add_argument("--host", default=None, help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help=f"default {DEFAULT_PORT}; 0: any")
    parser.add_argument(
        "--upstream",
        default=None,
        metavar="URL",
        help="default $ANTHROPIC_BASE_URL, else https://api.anthropic.com",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        default=None,
        help="answer from the built-in emulator (offline, no key needed)",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="SPEC",
        help="memory | disk (default) | none | redis://… | a directory",
    )
    parser.add_argument("--max-body-bytes", type=int, default=None, metavar="N")
    parser.add_argument("--max-batch-body-bytes", type=int, default=None, metavar="N")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="default 1")
    parser.add_argument(
        "--graceful-shutdown",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time in-flight streams get to finish on SIGTERM (default 30)",
    )
    parser.add_argument("--cache-ttl", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--log-level", default=None, choices=_LOG_LEVELS)
    controls = parser.add_argument_group(
        "production controls", "budgets, rate limits, circuit breaker, fallback (docs/controls.md)"
    )
    controls.add_argument(
        "--budget-usd", type=float, default=None, metavar="USD", help="hard cap on all spend"
    )
    controls.add_argument("--budget-period", default=None, choices=("day", "month", "total"))
    for name in ("rpm", "itpm", "otpm"):
        controls.add_argument(f"--{name}", type=int, default=None, metavar="N")
    controls.add_argument(
        "--limit-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a call may wait for the rate limiter (default 30)",
    )
    controls.add_argument(
        "--breaker-failures",
        type=int,
        default=None,
        metavar="N",
        help="consecutive failures that open a circuit (default 0: no breaker)",
    )
    controls.add_argument(
        "--fallback", default=None, metavar="MODELS", help="comma-separated fallback models"
    )
    parser.add_argument(
        "--semantic",
        action="store_true",
        default=None,
        help="also serve questions that mean the same as a stored one (haikucache[embed])",
    )
    parser.add_argument("--semantic-threshold", type=float, default=None, metavar="COSINE")
    parser.add_argument("--max-false-hit-rate", type=float, default=None, metavar="DELTA")
    parser.add_argument(
        "--telemetry",
        action="store_true",
        default=None,
        help="OpenTelemetry spans and metrics for every call (haikucache[otel])",
    )
    controls.add_argument(
        "--controls-store",
        default=None,
        metavar="URL",
        help="redis:// URL for budgets and limits shared by replicas",
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    """``haikucache serve``: load the configuration and serve until interrupted."""
    flags = {name: getattr(args, name, None) for name in _SETTINGS if name != "keys"}
    serve(ProxyConfig.load(args.config, **flags), out)
    return 0
