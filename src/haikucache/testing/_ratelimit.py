"""The emulator's rate limits: token buckets per model, as the API keeps them (reference §4.4,
§4.7, §3.5).

Each limit is a bucket that holds one minute of it and refills continuously. A request is
admitted when the requests bucket holds 1, the input-tokens bucket holds its ITPM cost and the
output-tokens bucket is not empty; its output tokens are charged once they are known (the API
does not count ``max_tokens``). The ITPM cost is ``input_tokens + cache_creation_input_tokens``,
plus ``cache_read_input_tokens`` for models whose limits are not cache-aware (Haiku 4.5 is).

This is the emulator's own code, on purpose independent of haikucache's client-side limiter:
a test of the limiter against it cannot pass by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from haikucache.testing._batches import rfc3339

__all__ = ["BATCH_LIMIT_SCOPE", "EmulatorLimits", "LimitVerdict", "RateLimitTable"]

#: The scope of the Message Batches endpoints' limit, shared by every model.
BATCH_LIMIT_SCOPE = "batch"

# Reference §1.9: "for Haiku 4.5 only input_tokens + cache_creation_input_tokens count toward
# ITPM". Other models count reads unless configured otherwise.
_CACHE_AWARE_BY_DEFAULT = frozenset({"claude-haiku-4-5", "claude-haiku-4-5-20251001"})


@dataclass(frozen=True)
class EmulatorLimits:
    """The limits of one model (``None``: not limited).

    Attributes:
        rpm: requests per minute.
        itpm: input tokens per minute.
        otpm: output tokens per minute.
        cache_aware: cache reads do not count toward ITPM.
    """

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    cache_aware: bool = False


@dataclass(frozen=True)
class LimitVerdict:
    """Whether a request may run, and the headers to send either way.

    Attributes:
        admitted: it may run (its request and input tokens have been taken).
        retry_after: whole seconds until it could be admitted (for a 429).
        limit: the limit that refused it (``"requests"``, ``"input-tokens"``,
            ``"output-tokens"``).
        headers: ``anthropic-ratelimit-*`` headers describing the buckets now.
    """

    admitted: bool
    retry_after: int = 0
    limit: str = ""
    headers: dict[str, str] | None = None


class _Bucket:
    __slots__ = ("capacity", "level", "stamp")

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60)
            self.stamp = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60 / self.capacity)

    def seconds_until_full(self) -> float:
        return self.seconds_until(self.capacity)


class RateLimitTable:
    """Buckets per model and for the batch endpoints. Not thread-safe on its own: the
    emulator calls it under its state lock."""

    def __init__(self) -> None:
        self._limits: dict[str, EmulatorLimits] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def configure(self, model: str, limits: EmulatorLimits | None) -> None:
        """Set (or with ``None`` remove) a model's limits; its buckets start full."""
        for name in ("requests", "input-tokens", "output-tokens"):
            self._buckets.pop((model, name), None)
        if limits is None or (limits.rpm, limits.itpm, limits.otpm) == (None, None, None):
            self._limits.pop(model, None)
        else:
            self._limits[model] = limits

    def limits(self, model: str) -> EmulatorLimits | None:
        return self._limits.get(model)

    @staticmethod
    def cache_aware_by_default(model: str) -> bool:
        return model in _CACHE_AWARE_BY_DEFAULT

    def _bucket(self, scope: str, name: str, capacity: int | None, now: float) -> _Bucket | None:
        if capacity is None:
            return None
        bucket = self._buckets.get((scope, name))
        if bucket is None or bucket.capacity != capacity:
            bucket = self._buckets[(scope, name)] = _Bucket(float(capacity), now)
        bucket.refill(now)
        return bucket

    def _model_buckets(self, model: str, now: float) -> dict[str, _Bucket]:
        limits = self._limits[model]
        out: dict[str, _Bucket] = {}
        for name, capacity in (
            ("requests", limits.rpm),
            ("input-tokens", limits.itpm),
            ("output-tokens", limits.otpm),
        ):
            bucket = self._bucket(model, name, capacity, now)
            if bucket is not None:
                out[name] = bucket
        return out

    def admit(self, model: str, now: float, *, input_cost: int) -> LimitVerdict | None:
        """Check and take a Messages request; ``None`` when the model has no limits.

        Args:
            model: the model as sent.
            now: the emulator's clock.
            input_cost: the request's ITPM cost (cache-aware or not, per the model).
        """
        if model not in self._limits:
            return None
        buckets = self._model_buckets(model, now)
        needs = {"requests": 1.0, "input-tokens": float(input_cost), "output-tokens": 1.0}
        waits = {
            name: bucket.seconds_until(needs[name])
            for name, bucket in buckets.items()
            if bucket.level < needs[name]
        }
        if waits:
            limit = max(waits, key=lambda n: waits[n])
            # The real API sends whole seconds; round up so a retry then is admitted.
            retry_after = max(1, math.ceil(waits[limit]))
            return LimitVerdict(False, retry_after, limit, self._headers(model, buckets, now))
        for name in ("requests", "input-tokens"):
            if name in buckets:
                buckets[name].level -= needs[name]
        return LimitVerdict(True, 0, "", self._headers(model, buckets, now))

    def charge_output(self, model: str, now: float, tokens: int) -> dict[str, str]:
        """Charge a request's output tokens (the bucket may go below 0) and return the
        headers describing the buckets after it."""
        if model not in self._limits:
            return {}
        buckets = self._model_buckets(model, now)
        if "output-tokens" in buckets:
            buckets["output-tokens"].level -= tokens
        return self._headers(model, buckets, now)

    def _headers(self, model: str, buckets: dict[str, _Bucket], now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, bucket in buckets.items():
            remaining = max(0, math.floor(bucket.level))
            if name != "requests":
                # Reference §4.7: token "remaining" values are rounded to the nearest thousand.
                remaining = max(0, round(bucket.level / 1000) * 1000)
                remaining = min(remaining, int(bucket.capacity))
            prefix = f"anthropic-ratelimit-{name}"
            headers[f"{prefix}-limit"] = str(int(bucket.capacity))
            headers[f"{prefix}-remaining"] = str(remaining)
            headers[f"{prefix}-reset"] = rfc3339(now + bucket.seconds_until_full()) or ""
        tokens = [n for n in ("input-tokens", "output-tokens") if n in buckets]
        if tokens:
            # ``tokens-*`` show the most restrictive of the token limits.
            tightest = min(tokens, key=lambda n: buckets[n].level / buckets[n].capacity)
            for part in ("limit", "remaining", "reset"):
                headers[f"anthropic-ratelimit-tokens-{part}"] = headers[
                    f"anthropic-ratelimit-{tightest}-{part}"
                ]
        return headers

    # -- the Message Batches endpoints: one requests-per-minute limit over all of them

    def admit_batch_call(self, rpm: int | None, now: float) -> LimitVerdict | None:
        """Check and take one call to a batch endpoint; ``None`` when not limited."""
        bucket = self._bucket(BATCH_LIMIT_SCOPE, "requests", rpm, now)
        if bucket is None:
            return None
        admitted = bucket.level >= 1
        retry_after = 0 if admitted else max(1, math.ceil(bucket.seconds_until(1)))
        if admitted:
            bucket.level -= 1
        headers = {
            "anthropic-ratelimit-requests-limit": str(int(bucket.capacity)),
            "anthropic-ratelimit-requests-remaining": str(max(0, math.floor(bucket.level))),
            "anthropic-ratelimit-requests-reset": rfc3339(now + bucket.seconds_until_full()) or "",
        }
        return LimitVerdict(admitted, retry_after, "" if admitted else "requests", headers)
