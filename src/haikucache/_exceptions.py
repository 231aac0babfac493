"""The one exception tree of haikucache.

Every error haikucache raises is a :class:`HaikuCacheError`. Third-party exceptions
(httpx, diskcache, redis …) are translated in one place each, with ``raise … from exc``.

::

    HaikuCacheError
    ├── UsageError (ValueError)            a developer mistake, raised before any money is spent
    │   ├── RequestValidationError         a request the API would reject (``.param`` names the field)
    │   ├── ConfigurationError             bad options for a client, engine or store
    │   └── MissingDependencyError (ImportError)   an optional extra is not installed
    ├── UpstreamError                      the API, or the way to it, failed
    │   ├── APIConnectionError             no usable HTTP response (refused, reset, dropped)
    │   │   └── APITimeoutError
    │   ├── APIResponseValidationError     the API answered something that cannot be parsed
    │   └── APIStatusError                 an error status, or an ``error`` event inside a 200 stream
    │       ├── BadRequestError            400 invalid_request_error
    │       ├── AuthenticationError        401 authentication_error
    │       ├── BillingError               402 billing_error
    │       ├── PermissionDeniedError      403 permission_error
    │       ├── NotFoundError              404 not_found_error
    │       ├── ConflictError              409 conflict_error
    │       ├── RequestTooLargeError       413 request_too_large
    │       ├── UnprocessableEntityError   422
    │       ├── RateLimitError             429 rate_limit_error
    │       └── InternalServerError        >= 500 api_error
    │           ├── GatewayTimeoutError    504 timeout_error
    │           └── OverloadedError        529 overloaded_error
    ├── BatchError                         a Message Batch, or one of its jobs, did not succeed
    │   └── BatchItemError                 one job's result (``.custom_id``, ``.result_type``)
    │       ├── BatchItemErroredError      ``errored`` (``.error`` holds the API error)
    │       ├── BatchItemCanceledError     ``canceled``
    │       └── BatchItemExpiredError      ``expired`` (24 h passed before it ran)
    ├── CacheStoreError                    a cache store failed (raised only in strict mode;
    │                                      otherwise a failing store is a miss)
    └── ControlError                       a production control refused the call before it was
        │                                  sent: nothing reached the API, nothing was spent
        ├── RateLimitedError               the client-side rate limiter could not admit it in time
        ├── BudgetExceededError            a hard budget would be exceeded
        ├── CircuitOpenError               the upstream's circuit breaker is open
        └── ControlStoreError              the shared state of a control (Redis) failed
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchError",
    "BatchItemCanceledError",
    "BatchItemError",
    "BatchItemErroredError",
    "BatchItemExpiredError",
    "BillingError",
    "BudgetExceededError",
    "CacheStoreError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConflictError",
    "ControlError",
    "ControlStoreError",
    "GatewayTimeoutError",
    "HaikuCacheError",
    "InternalServerError",
    "MissingDependencyError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RateLimitedError",
    "RequestTooLargeError",
    "RequestValidationError",
    "UnprocessableEntityError",
    "UpstreamError",
    "UsageError",
    "status_error_class",
]


class HaikuCacheError(Exception):
    """Base class of every error raised by haikucache."""


# --------------------------------------------------------------------------- usage


class UsageError(HaikuCacheError, ValueError):
    """A developer mistake: caught locally, before any HTTP request is made."""


class RequestValidationError(UsageError):
    """A Messages request the API would reject.

    Attributes:
        param: dotted path of the offending field, e.g. ``messages.2.content.0.cache_control``.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.param = param
        super().__init__(f"{param}: {message}" if param else message)


class ConfigurationError(UsageError):
    """Invalid options given to a client, engine, store or CLI command."""


class MissingDependencyError(UsageError, ImportError):
    """An optional extra is needed; the message names the exact ``pip install`` command."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the {package!r} package: pip install 'haikucache[{extra}]'"
        )


# --------------------------------------------------------------------------- upstream


class UpstreamError(HaikuCacheError):
    """The Anthropic API (or the network path to it) failed."""


class APIConnectionError(UpstreamError):
    """No usable HTTP response: connection refused, reset or dropped mid-response."""

    def __init__(self, message: str = "Connection error.") -> None:
        super().__init__(message)


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, message: str = "Request timed out.") -> None:
        super().__init__(message)


class APIResponseValidationError(UpstreamError):
    """The API answered with a body that is not what the Messages API sends."""


class APIStatusError(UpstreamError):
    """The API answered with an error status, or sent an ``error`` event inside a stream.

    Attributes:
        status_code: HTTP status (for an in-stream error, the status its type implies).
        error_type: the API's ``error.type``, e.g. ``"overloaded_error"``.
        request_id: the ``request-id`` header or body field, when present.
        body: the decoded error body (``{"type": "error", "error": {...}}``) or ``None``.
        headers: the response headers (lower-cased names).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        request_id: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_type = error_type
        self.request_id = request_id
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        prefix = f"Error code: {status_code}"
        if error_type:
            prefix += f" ({error_type})"
        super().__init__(f"{prefix} - {message}")
        self.message = message


class BadRequestError(APIStatusError):
    """400 ``invalid_request_error``."""


class AuthenticationError(APIStatusError):
    """401 ``authentication_error``."""


class BillingError(APIStatusError):
    """402 ``billing_error``."""


class PermissionDeniedError(APIStatusError):
    """403 ``permission_error``."""


class NotFoundError(APIStatusError):
    """404 ``not_found_error``."""


class ConflictError(APIStatusError):
    """409 ``conflict_error``."""


class RequestTooLargeError(APIStatusError):
    """413 ``request_too_large`` (32 MB for Messages, 256 MB for batches)."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429 ``rate_limit_error``."""


class InternalServerError(APIStatusError):
    """Any status >= 500 (``api_error``)."""


class GatewayTimeoutError(InternalServerError):
    """504 ``timeout_error``."""


class OverloadedError(InternalServerError):
    """529 ``overloaded_error``."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    504: GatewayTimeoutError,
    529: OverloadedError,
}

# An ``error`` event inside a 200 stream carries only a type; this is the status it implies.
STATUS_BY_ERROR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    cls = _BY_STATUS.get(status_code)
    if cls is not None:
        return cls
    if status_code >= 500:
        return InternalServerError
    return APIStatusError


# --------------------------------------------------------------------------- batches


class BatchError(HaikuCacheError):
    """A Message Batch, or one of its jobs, did not succeed."""


class BatchItemError(BatchError):
    """One job of a batch ended without a message.

    Attributes:
        custom_id: the job's ``custom_id`` in its batch.
        batch_id: the ``msgbatch_…`` id, when known.
        result_type: ``"errored"``, ``"canceled"`` or ``"expired"``.
    """

    result_type: str = ""

    def __init__(self, message: str, *, custom_id: str, batch_id: str | None = None) -> None:
        self.custom_id = custom_id
        self.batch_id = batch_id
        super().__init__(message)


class BatchItemErroredError(BatchItemError):
    """The job's result is ``errored``; ``.error`` holds the API's error object."""

    result_type = "errored"

    def __init__(
        self,
        message: str,
        *,
        custom_id: str,
        batch_id: str | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> None:
        self.error: dict[str, Any] = dict(error or {})
        super().__init__(message, custom_id=custom_id, batch_id=batch_id)

    @property
    def error_type(self) -> str | None:
        """The API error type, e.g. ``"invalid_request_error"``."""
        inner = self.error.get("error")
        if isinstance(inner, Mapping):
            value = inner.get("type")
            return value if isinstance(value, str) else None
        return None


class BatchItemCanceledError(BatchItemError):
    """The job was canceled before it ran."""

    result_type = "canceled"


class BatchItemExpiredError(BatchItemError):
    """The job did not run within the batch's 24 hours."""

    result_type = "expired"


# --------------------------------------------------------------------------- stores


class CacheStoreError(HaikuCacheError):
    """A cache store failed. Raised only when the store is strict; otherwise it is a miss."""


# --------------------------------------------------------------------------- controls


class ControlError(HaikuCacheError):
    """A production control (rate limiter, budget, circuit breaker) refused a call.

    Always raised *before* the request is sent: nothing reached the API and nothing was
    billed, so the call can be retried later, routed elsewhere, or given up.
    """


class RateLimitedError(ControlError):
    """The client-side rate limiter could not admit the call within its deadline.

    Unlike :class:`RateLimitError` (a 429 the API sent), this one is haikucache's own: the
    request was never sent.

    Attributes:
        model: the model (or ``"batch"`` for the Message Batches endpoints) whose limit binds.
        limit: which limit: ``"requests"``, ``"input_tokens"``, ``"output_tokens"``,
            ``"batch_requests"`` or ``"batch_queue"``.
        retry_after: seconds after which the call could be admitted, or ``None`` when that
            is unknown (a full batch queue) or never (a call larger than the limit itself).
    """

    def __init__(
        self, message: str, *, model: str, limit: str, retry_after: float | None = None
    ) -> None:
        self.model = model
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)


class BudgetExceededError(ControlError):
    """A hard budget would be exceeded by the call's worst-case cost; nothing was spent.

    Attributes:
        namespace: the namespace the call was made in.
        budget: the name of the budget that refused it (e.g. ``"global/day"``).
        period: the budget's current period (``"2025-11-20"``, ``"2025-11"`` or ``"total"``).
        cap_usd: the budget's cap.
        spent_usd: settled spend in the period.
        reserved_usd: worst-case cost of the calls in flight.
        requested_usd: the worst-case cost this call asked to reserve.
    """

    def __init__(
        self,
        message: str,
        *,
        namespace: str,
        budget: str,
        period: str,
        cap_usd: float,
        spent_usd: float,
        reserved_usd: float,
        requested_usd: float,
    ) -> None:
        self.namespace = namespace
        self.budget = budget
        self.period = period
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.requested_usd = requested_usd
        super().__init__(message)


class CircuitOpenError(ControlError):
    """The circuit breaker of an upstream is open: the call fails fast without being sent.

    Attributes:
        key: the upstream key (base URL + model).
        retry_after: seconds until the breaker lets a probe through.
    """

    def __init__(self, message: str, *, key: str, retry_after: float) -> None:
        self.key = key
        self.retry_after = retry_after
        super().__init__(message)


class ControlStoreError(ControlError):
    """The shared state of a control (Redis) could not be read or written.

    Budgets raise it by default (fail closed: money is not spent blind); the rate limiter
    logs and admits the call unless told to fail closed.
    """
