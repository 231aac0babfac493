"""LlamaIndex integration for haikucache (distribution ``llama-index-llms-haikucache``).

``HaikuCache`` (an LLM for ``Settings.llm``) and ``wrap(llm)`` land here; this release only
declares the namespace package and its supported ``llama-index-core`` versions.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("llama-index-llms-haikucache")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
