"""What the pipeline-stage tests share: a client on an in-process emulator, and a question."""

from __future__ import annotations

from typing import Any

from haikucache import Client, Engine, MemoryLedger
from haikucache.testing import Emulator

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-5"
BASE_URL = "http://emulator.test"


def emulated_client(emu: Emulator, **engine: Any) -> Client:
    """A client on ``emu`` (no retries) with its own engine: a memory store and ledger unless
    ``engine`` says otherwise."""
    engine.setdefault("ledger", MemoryLedger())
    engine.setdefault("store", "memory")
    return Client(
        api_key="sk-test",
        base_url=BASE_URL,
        transport=emu.transport(),
        engine=Engine(**engine),
        max_retries=0,
    )


def ask(question: str, *, model: str = HAIKU, **params: Any) -> dict[str, Any]:
    """A Messages request with one user turn."""
    return {
        "model": model,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": question}],
        **params,
    }
