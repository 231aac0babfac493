"""LangChain integration for haikucache (distribution ``langchain-haikucache``).

- :class:`ChatAnthropicHaikuCache` / :func:`wrap`: ``ChatAnthropic`` with every request run
  through haikucache's engine (prompt-cache breakpoints, a local response cache including
  stream replay, Message Batches for ``batch()``, and a cost ledger).
- :class:`HaikuCacheLLMCache`: a LangChain ``BaseCache`` on haikucache's stores, for
  ``set_llm_cache`` with any LangChain model.
"""

from __future__ import annotations

from importlib import metadata

from langchain_haikucache.caches import HaikuCacheLLMCache
from langchain_haikucache.chat_models import ChatAnthropicHaikuCache, haikucache_class, wrap

try:
    __version__ = metadata.version("langchain-haikucache")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ChatAnthropicHaikuCache",
    "HaikuCacheLLMCache",
    "__version__",
    "haikucache_class",
    "wrap",
]
