"""Shared fixtures. Nothing here touches the user's real cache directory."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before any test can create the process-wide ledger, so it lives in a throwaway place.
_HOME = tempfile.mkdtemp(prefix="haikucache-tests-")
os.environ["HAIKUCACHE_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_name, None)


# A real redis-server per test module (on a free loopback port), for the Redis tests.
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from haikucache.testing import RedisServer, start_redis_server  # noqa: E402


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the module's own; skipped where it is not installed, except in CI."""
    pytest.importorskip("redis")
    try:
        server = start_redis_server(tmp_path_factory.mktemp("redis"))
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI installs it in .ci/run")
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
