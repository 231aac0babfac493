"""The distribution installs, imports, and sits on the LangChain versions it declares."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

import langchain_haikucache


def test_package_imports_with_its_declared_dependencies() -> None:
    assert langchain_haikucache.__version__ == metadata.version("langchain-haikucache")
    requirements = {
        Requirement(r).name: Requirement(r) for r in metadata.requires("langchain-haikucache") or []
    }
    for name in ("haikucache", "langchain-core", "langchain-anthropic"):
        assert metadata.version(name) in requirements[name].specifier, name
