"""``HaikuCacheLLMCache``: a LangChain ``BaseCache`` on haikucache's response stores.

It serves any LangChain model (chat or text, any provider) through ``set_llm_cache`` or a
model's ``cache=`` field. Answers are kept in a :class:`haikucache.MemoryStore`,
:class:`haikucache.DiskStore` or :class:`haikucache.RedisStore`, so they get that store's
properties: self-checking entries, logical TTLs, eviction, sharing across processes (disk)
or machines (Redis), and "a failing store is a miss".

Keys: LangChain hands the cache ``prompt`` (the serialized messages) and ``llm_string`` (the
serialized model and its call arguments: provider, model name, temperature, bound tools …).
Both go into the key, so an answer is only ever served to the same model with the same
settings. LangChain hands a cache no credential (``llm_string`` masks secrets), so every
caller of one cache shares its answers, as with LangChain's own caches: per-key isolation is
``wrap()``'s (its transport goes through haikucache's pipeline), or one ``namespace`` per
tenant here.

Semantic lookup (opt-in, ``semantic=haikucache.SemanticConfig(...)``): when the last message
is plain human text, a miss also searches answers to questions that *mean* the same thing —
but only inside a partition made of the namespace, ``llm_string`` and every earlier message,
with haikucache's calibrated threshold and guards (numbers, negation, named entities).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import xxhash
from langchain_core._api import LangChainBetaWarning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumpd, load
from langchain_core.outputs import ChatGeneration, Generation

from haikucache import (
    AsyncResponseStore,
    CacheEntry,
    ConfigurationError,
    DiskStore,
    MemoryStore,
    ResponseStore,
)

__all__ = ["KEY_PREFIX", "HaikuCacheLLMCache"]

#: Version prefix of this cache's keys (they never collide with the engine's ``hc1:`` keys).
KEY_PREFIX = "lc1:"
_KIND = "langchain_generations"


def _key(namespace: str, llm_string: str, prompt: str) -> str:
    digest = xxhash.xxh3_128_hexdigest(
        b"\x00".join((namespace.encode(), llm_string.encode(), prompt.encode()))
    )
    return KEY_PREFIX + digest


def _last_human_text(prompt: str) -> tuple[str, str] | None:
    """(text of the last message, JSON of the messages before it) when the last message is
    plain human text; ``None`` otherwise (then only exact matching applies)."""
    try:
        messages = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("id", [None])[-1] != "HumanMessage":
        return None
    content = (last.get("kwargs") or {}).get("content")
    if isinstance(content, list):
        if not all(isinstance(b, dict) and b.get("type") == "text" for b in content):
            return None
        content = "\n".join(str(b.get("text", "")) for b in content)
    if not isinstance(content, str) or not content.strip():
        return None
    return content, json.dumps(messages[:-1], sort_keys=True)


def _encode(return_val: RETURN_VAL_TYPE) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainBetaWarning)
        return {"type": _KIND, "generations": [dumpd(g) for g in return_val]}


def _decode(response: dict[str, Any]) -> list[Generation] | None:
    if response.get("type") != _KIND or not isinstance(response.get("generations"), list):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainBetaWarning)
        # "core" admits only langchain-core's own classes (generations and messages).
        generations = load(response["generations"], allowed_objects="core")
    if not all(isinstance(g, Generation) for g in generations):
        return None
    return list(generations)


class HaikuCacheLLMCache(BaseCache):
    """LangChain's LLM cache, kept in a haikucache store.

    Args:
        store: a :class:`haikucache.MemoryStore`, :class:`~haikucache.DiskStore` or
            :class:`~haikucache.RedisStore`, or ``"memory"`` (default) / ``"disk"``.
        namespace: entries are kept under it; :meth:`clear` removes only this namespace,
            so several caches (or the engine's own answers) can share one store.
        ttl: seconds an answer stays valid (``None``: until evicted or cleared).
        tags: labels on every entry, for ``store.invalidate(tag=...)``.
        clock: a callable returning the time in seconds (for tests); default ``time.time``.
        semantic: a :class:`haikucache.SemanticConfig` to also serve answers to questions
            that mean the same thing (see the module doc); ``None`` (default): exact only.

    Example:
        .. code-block:: python

            from langchain_core.globals import set_llm_cache
            from haikucache import DiskStore
            from langchain_haikucache import HaikuCacheLLMCache

            set_llm_cache(HaikuCacheLLMCache(DiskStore(), ttl=24 * 3600))
    """

    def __init__(
        self,
        store: ResponseStore | str = "memory",
        *,
        namespace: str = "langchain",
        ttl: float | None = None,
        tags: Sequence[str] = (),
        clock: Callable[[], float] | None = None,
        semantic: Any = None,
    ) -> None:
        if store == "memory":
            store = MemoryStore()
        elif store == "disk":
            store = DiskStore()
        elif isinstance(store, str) or not callable(getattr(store, "get", None)):
            raise ConfigurationError(
                f"store must be a haikucache store, 'memory' or 'disk', got {store!r}"
            )
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError("namespace must be a non-empty string")
        if ttl is not None and (isinstance(ttl, bool) or not ttl > 0):
            raise ConfigurationError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if isinstance(tags, str):
            raise ConfigurationError("tags must be a sequence of strings, not one string")
        self.store: ResponseStore = store
        self.namespace = namespace
        self.ttl = ttl
        self.tags = tuple(tags)
        self._now = clock or time.time
        self.semantic = semantic
        self._index: Any = None
        if semantic is not None:
            from haikucache._semantic import SemanticConfig, SemanticIndex

            if not isinstance(semantic, SemanticConfig):
                raise ConfigurationError(
                    f"semantic must be a haikucache SemanticConfig, got {type(semantic).__name__}"
                )
            self._index = SemanticIndex(semantic)

    def _partition(self, llm_string: str, history: str) -> str:
        digest = xxhash.xxh3_128_hexdigest(
            b"\x00".join((self.namespace.encode(), llm_string.encode(), history.encode()))
        )
        return f"{KEY_PREFIX}{digest}:{self.semantic.model_tag}"

    def _semantic_lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        question = _last_human_text(prompt)
        if self._index is None or question is None:
            return None
        text, history = question
        if len(text) > self.semantic.max_chars:
            return None
        try:
            vector = self.semantic.embed([text])[0]
        except Exception:
            if self.semantic.strict:
                raise
            return None  # a failing embedder is a miss
        partition = self._partition(llm_string, history)
        now = self._now()
        self._index.sync(self.store, partition, now=now, clock=time.monotonic())
        match = self._index.select(text, self._index.search(partition, vector, now=now))
        if match is None:
            return None
        served = self._served(self.store.get(match.key, now=now), cache="semantic")
        if served is None:
            self._index.discard(partition, match.key)
            return None
        for generation in served:
            if isinstance(generation, ChatGeneration):
                generation.message.response_metadata["haikucache"]["similarity"] = float(
                    match.similarity
                )
        return served

    def _semantic_put(self, prompt: str, llm_string: str, entry: CacheEntry) -> bool:
        question = _last_human_text(prompt)
        if self._index is None or question is None or len(question[0]) > self.semantic.max_chars:
            return self.store.put(entry)
        text, history = question
        try:
            vector = self.semantic.embed([text])[0]
        except Exception:
            if self.semantic.strict:
                raise
            return self.store.put(entry)
        partition = self._partition(llm_string, history)
        entry = dataclasses.replace(entry, partition=partition, text=text)
        stored = self.store.put(entry, vector=vector.astype("<f4").tobytes())
        if stored:
            self._index.add(partition, entry.key, vector, text, entry.expires_at)
        return stored

    def key(self, prompt: str, llm_string: str) -> str:
        """The store key of a (prompt, llm_string) pair, ``lc1:<hex>``."""
        return _key(self.namespace, llm_string, prompt)

    def _entry(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> CacheEntry:
        return CacheEntry.for_message(
            key=self.key(prompt, llm_string),
            namespace=self.namespace,
            message=_encode(return_val),
            now=self._now(),
            ttl=self.ttl,
            tags=self.tags,
        )

    def _served(self, entry: CacheEntry | None, cache: str = "hit") -> list[Generation] | None:
        if entry is None:
            return None
        generations = _decode(entry.response)
        if generations is None:
            return None
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                generation.message.response_metadata["haikucache"] = {
                    "cache": cache,
                    "key": entry.key,
                    "namespace": entry.namespace,
                }
        return generations

    # -- BaseCache ------------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The stored generations for this prompt and model settings, or ``None``."""
        found = self._served(self.store.get(self.key(prompt, llm_string), now=self._now()))
        if found is None and self._index is not None:
            found = self._semantic_lookup(prompt, llm_string)
        return found

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the generations (a store failure is logged, never raised)."""
        entry = self._entry(prompt, llm_string, return_val)
        if self._index is not None:
            self._semantic_put(prompt, llm_string, entry)
        else:
            self.store.put(entry)

    def clear(self, **kwargs: Any) -> None:
        """Remove every entry of this cache's namespace."""
        self.store.invalidate(namespace=self.namespace)
        if self._index is not None:
            self._index.reset()

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The async twin of :meth:`lookup` (real async I/O with Redis)."""
        if self._index is not None:  # embedding and the index search are CPU work
            return await asyncio.to_thread(self.lookup, prompt, llm_string)
        key = self.key(prompt, llm_string)
        if isinstance(self.store, AsyncResponseStore):
            return self._served(await self.store.aget(key, now=self._now()))
        return self._served(self.store.get(key, now=self._now()))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """The async twin of :meth:`update`."""
        if self._index is not None:
            await asyncio.to_thread(self.update, prompt, llm_string, return_val)
            return
        entry = self._entry(prompt, llm_string, return_val)
        if isinstance(self.store, AsyncResponseStore):
            await self.store.aput(entry)
        else:
            self.store.put(entry)

    async def aclear(self, **kwargs: Any) -> None:
        """The async twin of :meth:`clear`."""
        if isinstance(self.store, AsyncResponseStore):
            await self.store.ainvalidate(namespace=self.namespace)
        else:
            self.store.invalidate(namespace=self.namespace)
        if self._index is not None:
            self._index.reset()
