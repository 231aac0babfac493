"""The cache home: where haikucache keeps its files, and how it opens them.

Everything on disk (the response store, the ledger, the batch journal) lives under
:func:`default_cache_dir` unless told otherwise, and follows the same rules:

* **Private, without touching what exists.** Directories haikucache creates are ``0700`` and
  files it creates ``0600`` (cache files hold prompts and answers); a directory or file that
  already exists keeps its mode (it is the user's, and may be shared on purpose).
* **Nothing is unpickled.** diskcache pickles any key or value that is not ``bytes``, ``str``,
  ``int`` or ``float``, and unpickling runs code: anyone who can write to a shared cache
  directory could run theirs. The response store reads only those four types (a pickled
  value is a corrupt entry); the ledger and journal, which wrote plain tuples and dicts
  before, read them back with an unpickler that refuses every class and function.
* **An unusable home is never fatal.** :func:`open_cache` logs one warning naming the path
  and the cause, and the caller degrades (a store misses, the ledger counts in memory, the
  journal keeps batches in memory); with ``strict=True`` it raises
  :class:`~haikucache.CacheStoreError` instead (for tests).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._exceptions import CacheStoreError

__all__ = [
    "PickledDataError",
    "UnreadableKey",
    "create_private_file",
    "default_cache_dir",
    "make_private_dir",
    "open_cache",
]

logger = logging.getLogger("haikucache")


def default_cache_dir() -> Path:
    """``$HAIKUCACHE_HOME``, else ``$XDG_CACHE_HOME/haikucache``, else ``~/.cache/haikucache``."""
    home = os.environ.get("HAIKUCACHE_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "haikucache"


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and its missing parents) readable by the user only.

    Only the directories created here are made ``0700``; one that exists keeps its mode.

    Raises:
        OSError: it cannot be created (a file in the way, a read-only file system …), or it
            exists and is not a directory.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # another process made it first: theirs, with its mode
        # mkdir's mode is filtered by the umask; a 0o077-less umask could widen nothing, but
        # an odd one (0o277) could make it unusable: set exactly what is meant.
        os.chmod(directory, 0o700)
    if not path.is_dir():
        raise NotADirectoryError(f"not a directory: {path}")
    return path


def create_private_file(path: Path) -> None:
    """Create ``path`` ``0600`` if it does not exist (an existing file keeps its mode).

    SQLite creates its ``-wal`` and ``-shm`` files with the database file's mode, so a
    database created this way keeps the whole store private without touching the umask.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o600)
    os.close(fd)


class PickledDataError(ValueError):
    """diskcache returned a pickled key or value where only plain bytes/text may be."""


class UnreadableKey:
    """What iterating over a ledger's or journal's keys yields for one that cannot be read
    (a pickle naming a class or function, or garbage): the others are still read."""

    __slots__ = ("error",)

    def __init__(self, error: PickledDataError) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"UnreadableKey({self.error})"


class _PlainUnpickler(pickle.Unpickler):
    """Reads pickles of plain data only (tuples, lists, dicts, strings, numbers).

    Every class or function a pickle names goes through :meth:`find_class`; refusing them
    all leaves nothing that can run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise PickledDataError(f"refused to load {module}.{name} from a pickle")


def _load_plain(data: bytes) -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except PickledDataError:
        raise
    except Exception as exc:  # torn or garbage bytes
        raise PickledDataError(f"unreadable pickle: {exc}") from exc


_PLAIN = (bytes, str, int, float)


@functools.cache
def _disk_class(*, plain_pickles: bool) -> type:
    """A diskcache ``Disk`` that never runs a pickle.

    ``plain_pickles=False`` (the response store): only ``bytes``/``str``/``int``/``float``
    keys and values are written or read; a pickled one reads as :class:`PickledDataError`.
    ``plain_pickles=True`` (ledger, journal): tuples and dicts are still written as pickles
    (older versions did), and read back with :class:`_PlainUnpickler`.
    """
    import diskcache
    from diskcache.core import MODE_PICKLE

    class SafeDisk(diskcache.Disk):  # type: ignore[misc]
        def put(self, key: Any) -> tuple[Any, bool]:
            if not plain_pickles and type(key) not in _PLAIN:
                raise TypeError(f"a {type(key).__name__} key would be pickled")
            return super().put(key)  # type: ignore[no-any-return]

        def get(self, key: Any, raw: bool) -> Any:
            if raw:
                return super().get(key, raw)
            if not plain_pickles:
                raise PickledDataError("a pickled key")
            try:
                return _load_plain(bytes(key))
            except PickledDataError as exc:
                return UnreadableKey(exc)

        def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
            if not plain_pickles and (read or type(value) not in _PLAIN):
                raise TypeError(f"a {type(value).__name__} value would be pickled")
            return super().store(value, read, key)

        def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
            if mode != MODE_PICKLE:
                return super().fetch(mode, filename, value, read)
            if not plain_pickles:
                raise PickledDataError("a pickled value")
            if value is None:  # kept in a file beside the database
                with open(os.path.join(self._directory, str(filename)), "rb") as reader:
                    return _load_plain(reader.read())
            return _load_plain(bytes(value))

    return SafeDisk


def open_cache(
    directory: str | os.PathLike[str] | None,
    default_name: str,
    *,
    what: str,
    degraded: str,
    strict: bool,
    plain_pickles: bool = False,
    prepare: Callable[[Path], None] | None = None,
    **settings: Any,
) -> tuple[Path, Any]:
    """Open a private ``diskcache.Cache``, or say once why not.

    Args:
        directory: where (``None``: ``default_cache_dir() / default_name``).
        default_name: the sub-directory of the cache home.
        what: what it is, for the warning ("the response store" …).
        degraded: what happens instead, for the warning.
        strict: raise instead of degrading.
        plain_pickles: see :func:`_disk_class`.
        prepare: more to open in the directory (the response store's index); its failure
            counts as the directory's.
        settings: diskcache settings.

    Returns:
        The directory and the cache, or ``None`` for the cache when it cannot be used.

    Raises:
        CacheStoreError: it cannot be used and ``strict`` is set.
    """
    import diskcache

    path = Path(directory) if directory is not None else None
    try:
        if path is None:
            path = default_cache_dir() / default_name
        make_private_dir(path)
        create_private_file(path / "cache.db")
        cache = diskcache.Cache(
            str(path), disk=_disk_class(plain_pickles=plain_pickles), **settings
        )
        try:
            if prepare is not None:
                prepare(path)
        except BaseException:
            cache.close()
            raise
    except Exception as exc:  # OSError, sqlite3.DatabaseError, diskcache.Timeout, RuntimeError
        where = path if path is not None else f"<cache home>/{default_name}"
        if strict:
            raise CacheStoreError(f"cannot open {what} at {where}: {exc}") from exc
        logger.warning(
            "haikucache: cannot open %s at %s (%s: %s); %s",
            what,
            where,
            type(exc).__name__,
            exc,
            degraded,
        )
        return (path if path is not None else Path(default_name)), None
    return path, cache
