"""A faithful local emulator of the Anthropic Messages API, for tests, benchmarks and demos.

It is an upstream, not a mock: the official ``anthropic`` SDK, LangChain's
``ChatAnthropic`` and ``curl`` talk to it over HTTP. It implements ``/v1/messages`` (JSON and
SSE), ``/v1/messages/count_tokens`` and the Message Batches endpoints with the prompt-cache
rules of the real API, on an injectable clock, and keeps a bill of what the calls would cost.

Example::

    from haikucache.testing import Emulator, ManualClock
    import anthropic

    emu = Emulator(clock=ManualClock())
    client = anthropic.Anthropic(
        api_key="test", base_url="http://emulator.local",
        http_client=anthropic.DefaultHttpxClient(transport=emu.httpx2_transport()),
    )
    client.messages.create(model="claude-haiku-4-5", max_tokens=64,
                           messages=[{"role": "user", "content": "Hi"}])
    print(emu.bill.total_usd)

    with emu.serve() as base_url:      # or a loopback server, for anything that speaks HTTP
        ...
"""

from haikucache._clock import ManualClock
from haikucache.testing._bill import Bill, BillEntry
from haikucache.testing._emulator import ConnectionCut, Emulator, EmulatorResponse, LogRecord
from haikucache.testing._faults import Fault
from haikucache.testing._redis import RedisServer, start_redis_server
from haikucache.testing._server import EmulatorServer, run_server
from haikucache.testing._transports import EmulatorTransport

__all__ = [
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
