"""The public facade: one pinned ``__all__``, light imports, private implementation modules."""

from __future__ import annotations

import subprocess
import sys

import haikucache
import haikucache.testing
import haikucache.types


def test_all_names_exist_and_are_public() -> None:
    for module in (haikucache, haikucache.types, haikucache.testing):
        assert sorted(module.__all__) == sorted(set(module.__all__)), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_classes_say_where_they_live() -> None:
    # Everything exported from the top level is defined in a private module of haikucache,
    # so users never need to import one.
    for name in haikucache.__all__:
        obj = getattr(haikucache, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) and module is not None:
            assert module.startswith("haikucache."), (name, module)


def test_pinned_top_level_names() -> None:
    expected = {
        "AsyncClient",
        "Client",
        "Engine",
        "Pipeline",
        "Outcome",
        "Reply",
        "StreamTap",
        "CallOptions",
        "CallInfo",
        "Message",
        "MessageStream",
        "request_key",
        "partition_key",
        "canonical_json",
        "validate_request",
        "price_usage",
        "MemoryLedger",
        "DiskLedger",
        "ManualClock",
        "HaikuCacheError",
        "UsageError",
        "RequestValidationError",
        "UpstreamError",
        "APIStatusError",
        "BatchItemError",
        "CacheStoreError",
        "SemanticConfig",
        "LexicalVerifier",
        "Controls",
        "Budget",
        "Budgets",
        "RateLimiter",
        "RateLimits",
        "CircuitBreaker",
        "BudgetExceededError",
        "RateLimitedError",
        "CircuitOpenError",
        "Telemetry",
        "HaikuJudge",
        "Verifier",
        "ErrorBound",
        "SemanticDecision",
        "types",
        "__version__",
    }
    assert expected <= set(haikucache.__all__)


def test_import_haikucache_pulls_in_no_optional_framework() -> None:
    # (rich is not checked: httpx itself imports it for its CLI when it is installed.)
    code = (
        "import sys, haikucache, haikucache.testing;"
        "heavy = [m for m in ('numpy', 'langchain_core', 'llama_index', 'anthropic', 'httpx2', 'redis', 'opentelemetry')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
