"""LangChain integration for haikucache (distribution ``langchain-haikucache``).

The ChatAnthropic wrapper, the ``BaseCache`` and Message Batches support land here; this
release only declares the package and its supported LangChain versions.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("langchain-haikucache")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
