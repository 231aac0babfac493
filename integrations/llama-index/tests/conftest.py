"""Fixtures for the LlamaIndex integration: the emulator upstream and a wired ``HaikuCache``.

Nothing here touches the user's real cache directory or credentials, and every test leaves
LlamaIndex's global ``Settings`` as it found them.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

# Set before anything can create the process-wide ledger, so it lives in a throwaway place
# (unless the core suite's conftest, in the same session, already made one).
if not Path(os.environ.get("HAIKUCACHE_HOME", "")).name.startswith("haikucache-tests-"):
    _HOME = tempfile.mkdtemp(prefix="haikucache-tests-llama-index-")
    os.environ["HAIKUCACHE_HOME"] = _HOME
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_name, None)

import warnings  # noqa: E402

# LlamaIndex resolves embedding models through its LangChain bridge, which imports
# langchain-community when it is installed (it is, for the benchmarks); that package warns on
# import that it is being sunset. Import it once here, where that one warning is expected.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`langchain-community` is being sunset", DeprecationWarning)
    try:
        import llama_index.core.bridge.langchain  # noqa: F401
    except ImportError:  # the bridge does not fit this langchain-community; LlamaIndex copes
        pass

from llama_index.core import Settings  # noqa: E402
from llama_index.core.bridge.pydantic import Field  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events import BaseEvent  # noqa: E402

from haikucache import Engine, MemoryLedger, MemoryStore  # noqa: E402
from haikucache.testing import Emulator  # noqa: E402
from llama_index.llms.haikucache import HaikuCache  # noqa: E402


class HashedBagOfWords(BaseEmbedding):
    """A deterministic local embedding: words hashed into a fixed number of buckets.

    Texts that share words get similar vectors, which is all a retrieval test needs; no
    model is downloaded.
    """

    dim: int = 256

    @classmethod
    def class_name(cls) -> str:
        return "HashedBagOfWords"

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vector[xxhash.xxh32_intdigest(word.encode()) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


class EventLog(BaseEventHandler):
    """Collects LlamaIndex instrumentation events (attached to the root dispatcher)."""

    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventLog"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if e.class_name() == name]


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def make_llm(emulator: Emulator, ledger: MemoryLedger) -> Callable[..., HaikuCache]:
    """``make_llm(**kwargs)``: a HaikuCache on the emulator, with a memory store and ledger."""

    def make(*, store: Any = "fresh", planner: str = "adaptive", **kwargs: Any) -> HaikuCache:
        engine = Engine(
            ledger=ledger,
            store=MemoryStore() if store == "fresh" else store,
            planner=planner,
        )
        return HaikuCache(
            api_key="sk-test",
            base_url="http://emulator.test",
            transport=emulator.transport(),
            engine=engine,
            **kwargs,
        )

    return make


@pytest.fixture
def llm(make_llm: Callable[..., HaikuCache]) -> HaikuCache:
    return make_llm()


@pytest.fixture
def event_log() -> Iterator[EventLog]:
    dispatcher = get_dispatcher()
    handler = EventLog(events=[])
    dispatcher.add_event_handler(handler)
    try:
        yield handler
    finally:
        dispatcher.event_handlers.remove(handler)


@pytest.fixture
def settings() -> Iterator[Any]:
    """LlamaIndex's global ``Settings``, restored afterwards."""
    saved = {name: getattr(Settings, name) for name in ("_llm", "_embed_model")}
    try:
        yield Settings
    finally:
        for name, value in saved.items():
            setattr(Settings, name, value)


@pytest.fixture(autouse=True)
def _close_llama_index_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close the event loop LlamaIndex's sync code leaves behind.

    ``llama_index.core.async_utils.asyncio_run`` (used by the prompt helper's token estimates
    in every sync query) calls ``asyncio.get_event_loop()``, which creates a loop and never
    closes it; under ``filterwarnings=error`` its ResourceWarning would fail a later test.
    """
    yield
    if inspect.iscoroutinefunction(request.function):
        return  # pytest-asyncio owns that loop
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # none is set (and none may be created implicitly any more)
        return
    if not loop.is_running():
        loop.close()
        asyncio.set_event_loop(None)
