"""Message Batches state: envelope validation, lifecycle on the clock, JSON shapes (§3)."""

from __future__ import annotations

import datetime as _dt
import re
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from haikucache.testing._request import invalid

__all__ = [
    "BATCH_TTL_SECONDS",
    "MAX_BATCH_REQUESTS",
    "BatchFailures",
    "BatchRecord",
    "rfc3339",
    "validate_envelope",
]

BATCH_TTL_SECONDS = 24 * 3600.0
MAX_BATCH_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def rfc3339(when: float | None) -> str | None:
    """``2025-11-20T10:00:00.000000Z``: RFC 3339 with microseconds, in UTC."""
    if when is None:
        return None
    moment = _dt.datetime.fromtimestamp(when, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate_envelope(body: Any) -> list[tuple[str, dict[str, Any]]]:
    """Check the batch envelope only; each ``params`` is checked when the batch runs (§3.2)."""
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object")
    for key in body:
        if key != "requests":
            raise invalid(f"{key}: Extra inputs are not permitted")
    requests = body.get("requests")
    if requests is None:
        raise invalid("requests: Field required")
    if not isinstance(requests, list):
        raise invalid("requests: Input should be a valid list")
    if not requests:
        raise invalid("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > MAX_BATCH_REQUESTS:
        raise invalid(
            f"requests: List should have at most {MAX_BATCH_REQUESTS} items after validation, "
            f"not {len(requests)}"
        )
    seen: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(requests):
        path = f"requests.{i}"
        if not isinstance(item, dict):
            raise invalid(f"{path}: Input should be a valid dictionary")
        for key in item:
            if key not in ("custom_id", "params"):
                raise invalid(f"{path}.{key}: Extra inputs are not permitted")
        custom_id = item.get("custom_id")
        if custom_id is None:
            raise invalid(f"{path}.custom_id: Field required")
        if not isinstance(custom_id, str):
            raise invalid(f"{path}.custom_id: Input should be a valid string")
        if not custom_id:
            raise invalid(f"{path}.custom_id: String should have at least 1 character")
        if len(custom_id) > 64:
            raise invalid(f"{path}.custom_id: String should have at most 64 characters")
        if not _CUSTOM_ID.match(custom_id):
            raise invalid(
                f"{path}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        if custom_id in seen:
            raise invalid(
                f"{path}.custom_id: Duplicate custom_id {custom_id!r}; each request in a batch "
                "must have a unique custom_id"
            )
        seen.add(custom_id)
        params = item.get("params")
        if params is None:
            raise invalid(f"{path}.params: Field required")
        if not isinstance(params, dict):
            raise invalid(f"{path}.params: Input should be a valid dictionary")
        out.append((custom_id, params))
    return out


@dataclass
class BatchRecord:
    """One batch: its requests, its lifecycle timestamps and, once ended, its results.

    Requests are processed in a seeded random order; request ``k`` of ``n`` completes at
    ``created_at + processing_seconds * (k + 1) / n``, so a cancel or the 24-hour expiry
    lands between requests the way it does on the real service.
    """

    id: str
    seq: int
    created_at: float
    processing_seconds: float
    version: str
    requests: list[tuple[str, dict[str, Any]]]
    order: list[int]
    status: str = "in_progress"
    cancel_initiated_at: float | None = None
    ended_at: float | None = None
    deleted: bool = False
    results: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        return self.created_at + BATCH_TTL_SECONDS

    def completion_time(self, position: int) -> float:
        """When the request at ``position`` in processing order finishes."""
        return self.created_at + self.processing_seconds * (position + 1) / len(self.requests)

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The ``message_batch`` object; ``results_url`` points at the emulator serving it."""
        ended = self.status == "ended"
        counts = (
            self.counts
            if ended
            else {
                "processing": len(self.requests),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            }
        )
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": dict(counts),
            "ended_at": rfc3339(self.ended_at),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.cancel_initiated_at),
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }


_ERROR_MESSAGES = {
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "rate_limit_error": "This request would exceed your organization's rate limit.",
    "timeout_error": "Request timed out",
    "invalid_request_error": "Invalid request",
}


@dataclass
class BatchFailures:
    """Partial failures of batch requests: which requests end ``errored``, and how.

    A request fails when its ``custom_id`` is listed, or with probability ``rate`` (decided
    by a hash of the seed and the ``custom_id``, so runs repeat). ``times`` bounds how many
    results fail in total (``None``: no bound), so a retried request can succeed.
    """

    rate: float = 0.0
    custom_ids: frozenset[str] = frozenset()
    error_type: str = "api_error"
    times: int | None = None
    hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, custom_id: str, seed: int) -> str | None:
        """The error type for this request's result, or ``None`` to run it normally."""
        import xxhash

        chosen = custom_id in self.custom_ids
        if not chosen and self.rate > 0:
            draw = xxhash.xxh3_64_intdigest(f"{seed}:{custom_id}".encode()) / 2**64
            chosen = draw < self.rate
        if not chosen:
            return None
        with self._lock:
            if self.times is not None and self.hits >= self.times:
                return None
            self.hits += 1
        return self.error_type

    @staticmethod
    def message(error_type: str) -> str:
        return _ERROR_MESSAGES.get(error_type, "Injected batch error")


def failures(
    rate: float, custom_ids: Collection[str], error_type: str, times: int | None
) -> BatchFailures:
    if not 0 <= rate <= 1:
        raise ValueError("rate must be between 0 and 1")
    if times is not None and times < 1:
        raise ValueError("times must be >= 1 or None")
    return BatchFailures(
        rate=rate, custom_ids=frozenset(custom_ids), error_type=error_type, times=times
    )
