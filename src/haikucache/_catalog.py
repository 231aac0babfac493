"""What haikucache knows about each model: limits and prices.

Figures from ``reference/anthropic-api.md`` §1.5 (minimum cacheable prefix), §2 (prices,
USD per million tokens) and §4.4 (limits). Cache multipliers are fixed by the API: a 5-minute
write costs 1.25× base input, a 1-hour write 2×, a read 0.1×; the Batch API halves
everything, and the two discounts stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BATCH_DISCOUNT",
    "CACHE_READ_MULTIPLIER",
    "CACHE_WRITE_1H_MULTIPLIER",
    "CACHE_WRITE_5M_MULTIPLIER",
    "DEFAULT_MODEL",
    "ModelInfo",
    "known_models",
    "lookup_model",
]

DEFAULT_MODEL = "claude-haiku-4-5"

CACHE_WRITE_5M_MULTIPLIER = 1.25
CACHE_WRITE_1H_MULTIPLIER = 2.0
CACHE_READ_MULTIPLIER = 0.1
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class ModelInfo:
    """Limits and list prices of one model.

    Attributes:
        name: the canonical alias, e.g. ``"claude-haiku-4-5"``.
        dated_id: the dated API id the alias points at.
        input_usd_per_mtok: base input price per million tokens.
        output_usd_per_mtok: output price per million tokens.
        max_output_tokens: the largest ``max_tokens`` the API accepts.
        context_window: input + output token limit.
        min_cacheable_tokens: a prefix shorter than this is silently not cached.
    """

    name: str
    dated_id: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    max_output_tokens: int
    context_window: int
    min_cacheable_tokens: int

    @property
    def cache_write_5m_usd_per_mtok(self) -> float:
        return self.input_usd_per_mtok * CACHE_WRITE_5M_MULTIPLIER

    @property
    def cache_write_1h_usd_per_mtok(self) -> float:
        return self.input_usd_per_mtok * CACHE_WRITE_1H_MULTIPLIER

    @property
    def cache_read_usd_per_mtok(self) -> float:
        return self.input_usd_per_mtok * CACHE_READ_MULTIPLIER


_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("claude-haiku-4-5", "claude-haiku-4-5-20251001", 1.00, 5.00, 64_000, 200_000, 4096),
    ModelInfo(
        "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", 3.00, 15.00, 64_000, 200_000, 1024
    ),
    ModelInfo("claude-opus-4-5", "claude-opus-4-5-20251101", 5.00, 25.00, 64_000, 200_000, 4096),
    ModelInfo("claude-opus-4-1", "claude-opus-4-1-20250805", 15.00, 75.00, 32_000, 200_000, 1024),
    ModelInfo("claude-3-5-haiku", "claude-3-5-haiku-20241022", 0.80, 4.00, 8_192, 200_000, 2048),
)

_BY_NAME: dict[str, ModelInfo] = {}
for _m in _MODELS:
    _BY_NAME[_m.name] = _m
    _BY_NAME[_m.dated_id] = _m
_BY_NAME["claude-3-5-haiku-latest"] = _BY_NAME["claude-3-5-haiku"]

# Bedrock (``anthropic.claude-haiku-4-5-20251001-v1:0``, ``us.anthropic.…``) and Vertex
# (``claude-haiku-4-5@20251001``) spell the same models differently.
_PROVIDER_FORM = re.compile(r"(?:^|\.)(claude-[a-z0-9-]+?)(?:-v\d+(?::\d+)?)?(?:@(\d{8}))?$")


def lookup_model(model: str) -> ModelInfo | None:
    """The :class:`ModelInfo` for an API, Bedrock or Vertex model id, or ``None`` if unknown."""
    info = _BY_NAME.get(model)
    if info is not None:
        return info
    match = _PROVIDER_FORM.search(model)
    if match is None:
        return None
    base, date = match.group(1), match.group(2)
    return _BY_NAME.get(f"{base}-{date}" if date else base)


def known_models() -> tuple[ModelInfo, ...]:
    """Every model in the catalogue."""
    return _MODELS
