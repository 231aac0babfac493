"""One Redis connection for the production controls (rate limits, budgets), sync and async.

The controls keep their shared state in Redis and change it only through Lua scripts, so each
change is atomic however many processes and machines share it. This module owns the client
(``redis-py``, imported lazily: ``import haikucache`` must not pull it in), runs the scripts
and translates every Redis failure into :class:`~haikucache._exceptions.ControlStoreError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ._exceptions import ConfigurationError, ControlStoreError, MissingDependencyError

__all__ = ["RedisLink", "redact_url"]


def redact_url(url: str) -> str:
    """The URL without its password, for logs and reprs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


class RedisLink:
    """A Redis client (and an asyncio twin, made per event loop) that runs named Lua scripts.

    Args:
        url: a ``redis://`` or ``rediss://`` URL.
        scripts: Lua source by name; registered once per client (``EVALSHA`` with a fallback
            to ``EVAL`` is redis-py's own ``Script`` object).
        feature: what uses it, for the install hint of a missing ``redis`` package.
        socket_timeout: seconds before an operation fails.
        client: a ready ``redis.Redis`` to use instead of ``url`` (not closed by us).
        async_client: a ready ``redis.asyncio.Redis`` (not closed by us).
    """

    def __init__(
        self,
        url: str,
        scripts: Mapping[str, str],
        *,
        feature: str,
        socket_timeout: float = 1.0,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis", feature) from exc
        self.url = url
        self._sources = dict(scripts)
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        self._owns_client = client is None
        try:
            self._client: Any = (
                client if client is not None else redis.Redis.from_url(url, **self._options)
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from exc
        self._scripts = {name: self._client.register_script(src) for name, src in scripts.items()}
        self._owns_aclient = async_client is None
        self._aclient: Any = async_client
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._ascripts: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RedisLink({redact_url(self.url)!r})"

    @property
    def client(self) -> Any:
        """The sync ``redis.Redis`` client."""
        return self._client

    def run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script atomically.

        Raises:
            ControlStoreError: Redis failed (the cause is chained).
        """
        try:
            return self._scripts[script](keys=list(keys), args=list(args))
        except Exception as exc:
            raise ControlStoreError(
                f"Redis at {redact_url(self.url)} failed running {script}: {exc!r}"
            ) from exc

    async def arun(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Coroutine twin of :meth:`run`."""
        try:
            scripts = self._async_scripts()
            return await scripts[script](keys=list(keys), args=list(args))
        except ControlStoreError:
            raise
        except Exception as exc:
            raise ControlStoreError(
                f"Redis at {redact_url(self.url)} failed running {script}: {exc!r}"
            ) from exc

    def _async_scripts(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._aclient is None or (self._owns_aclient and self._aloop is not loop):
            import redis.asyncio

            # A client's connections belong to the loop that opened them; a new loop gets a
            # new client (close the old one with aclose() before its loop ends).
            self._aclient = redis.asyncio.Redis.from_url(self.url, **self._options)
            self._aloop = loop
            self._ascripts = None
        if self._ascripts is None:
            self._ascripts = {
                name: self._aclient.register_script(src) for name, src in self._sources.items()
            }
        return self._ascripts

    def close(self) -> None:
        """Close the sync client's connections (the async client needs :meth:`aclose`)."""
        if self._owns_client:
            self._client.close()

    async def aclose(self) -> None:
        """Close the async client, if this link made it."""
        if self._owns_aclient and self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
            self._ascripts = None


class RedisScripted:
    """A backend whose state lives in Redis behind Lua scripts (the budgets', the rate
    limiter's): the link, the key prefix, and closing.

    Args:
        url: a ``redis://`` or ``rediss://`` URL.
        prefix: prepended to every key.
        socket_timeout: seconds before an operation fails.
        client: a ready ``redis.Redis`` (not closed by us).
        async_client: a ready ``redis.asyncio.Redis`` (not closed by us).

    Raises:
        MissingDependencyError: the ``redis`` package is not installed.
    """

    #: The Lua scripts by name, and what uses them (for the install hint).
    SCRIPTS: ClassVar[Mapping[str, str]] = {}
    FEATURE = "A Redis backend"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "hc:",
        socket_timeout: float = 1.0,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        self.prefix = prefix
        self._link = RedisLink(
            url,
            self.SCRIPTS,
            feature=self.FEATURE,
            socket_timeout=socket_timeout,
            client=client,
            async_client=async_client,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._link!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the sync client (if this backend made it)."""
        self._link.close()

    async def aclose(self) -> None:
        """Close the async client (if this backend made it)."""
        await self._link.aclose()
