"""LlamaIndex integration for haikucache (distribution ``llama-index-llms-haikucache``).

``HaikuCache`` is Claude Haiku 4.5 as a LlamaIndex LLM (``Settings.llm = HaikuCache()``),
through haikucache's engine: prompt-cache breakpoints, a local response cache, Message
Batches and a ledger. ``wrap(llm)`` puts the response cache in front of any other LlamaIndex
LLM.
"""

from __future__ import annotations

from importlib import metadata

from .base import HaikuCache
from .wrap import CachedFunctionCallingLLM, CachedLLM, wrap

try:
    __version__ = metadata.version("llama-index-llms-haikucache")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["CachedFunctionCallingLLM", "CachedLLM", "HaikuCache", "__version__", "wrap"]
