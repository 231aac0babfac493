"""The public surface of haikucache.testing is pinned."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

import haikucache.testing
from haikucache._clock import ManualClock as CoreManualClock
from haikucache.testing import Emulator


def test_all_is_pinned() -> None:
    assert sorted(haikucache.testing.__all__) == [
        "Bill",
        "BillEntry",
        "ConnectionCut",
        "Emulator",
        "EmulatorResponse",
        "EmulatorServer",
        "EmulatorTransport",
        "Fault",
        "LogRecord",
        "ManualClock",
        "RedisServer",
        "run_server",
        "start_redis_server",
    ]
    for name in haikucache.testing.__all__:
        assert getattr(haikucache.testing, name) is not None
    assert haikucache.testing.ManualClock is CoreManualClock


def test_transports_are_both_sync_and_async() -> None:
    transport = Emulator().transport()
    assert isinstance(transport, httpx.BaseTransport)
    assert isinstance(transport, httpx.AsyncBaseTransport)
    httpx2 = __import__("httpx2")
    transport2 = Emulator().httpx2_transport()
    assert isinstance(transport2, httpx2.BaseTransport)
    assert isinstance(transport2, httpx2.AsyncBaseTransport)
    assert type(transport2) is type(Emulator().httpx2_transport())


def test_importing_the_package_does_not_import_httpx2_or_anthropic() -> None:
    import subprocess
    import sys

    code = (
        "import sys, haikucache.testing; print('httpx2' in sys.modules, 'anthropic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


def test_start_redis_server_gives_a_working_server(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = pytest.importorskip("redis")
    with haikucache.testing.start_redis_server(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        client.close()
    assert server.process.poll() is not None  # stopped on exit
