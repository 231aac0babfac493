"""haikucache: cheaper, faster Claude Haiku 4.5 calls, with a ledger that proves it.

The public API is what ``__all__`` lists; every other module is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._catalog import DEFAULT_MODEL, ModelInfo, known_models, lookup_model
from ._clock import Clock, ManualClock, SystemClock
from ._engine import CallInfo, CallOptions, Engine, PreparedCall, default_ledger
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchError,
    BatchItemCanceledError,
    BatchItemError,
    BatchItemErroredError,
    BatchItemExpiredError,
    BillingError,
    CacheStoreError,
    ConfigurationError,
    ConflictError,
    GatewayTimeoutError,
    HaikuCacheError,
    InternalServerError,
    MissingDependencyError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    RequestValidationError,
    UnprocessableEntityError,
    UpstreamError,
    UsageError,
)
from ._keys import KEY_VERSION, canonical_json, partition_key, request_key
from ._ledger import (
    Cost,
    DiskLedger,
    Ledger,
    LedgerEntry,
    LedgerTotals,
    MemoryLedger,
    TokenCounts,
    default_cache_dir,
    price_usage,
)
from ._wire import MessageCreateParams, MessageParam, validate_request

if TYPE_CHECKING:
    from ._client import AsyncClient, Client

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # pragma: no cover - replaced when the client lands
    if name in ("Client", "AsyncClient"):
        from . import _client

        return getattr(_client, name)
    raise AttributeError(f"module 'haikucache' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "KEY_VERSION",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "BatchItemCanceledError",
    "BatchItemError",
    "BatchItemErroredError",
    "BatchItemExpiredError",
    "BillingError",
    "CacheStoreError",
    "CallInfo",
    "CallOptions",
    "Client",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "Cost",
    "DiskLedger",
    "Engine",
    "GatewayTimeoutError",
    "HaikuCacheError",
    "InternalServerError",
    "Ledger",
    "LedgerEntry",
    "LedgerTotals",
    "ManualClock",
    "MemoryLedger",
    "MessageCreateParams",
    "MessageParam",
    "MissingDependencyError",
    "ModelInfo",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PreparedCall",
    "RateLimitError",
    "RequestTooLargeError",
    "RequestValidationError",
    "SystemClock",
    "TokenCounts",
    "UnprocessableEntityError",
    "UpstreamError",
    "UsageError",
    "__version__",
    "canonical_json",
    "default_cache_dir",
    "default_ledger",
    "known_models",
    "lookup_model",
    "partition_key",
    "price_usage",
    "request_key",
    "validate_request",
]
