"""The namespace package installs beside llama-index-core without shadowing it."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import llama_index.core

import llama_index.llms.haikucache as integration


def test_namespace_package_coexists_with_llama_index_core() -> None:
    assert integration.__version__ == metadata.version("llama-index-llms-haikucache")
    # PEP 420: the distribution ships no llama_index/__init__.py of its own.
    package_root = Path(integration.__file__).resolve().parents[2]
    assert not (package_root / "__init__.py").exists()
    assert not (package_root / "llms" / "__init__.py").exists()
    assert llama_index.core.__version__
