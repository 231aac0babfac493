"""Semantic lookup: questions that mean the same thing, answered from the response cache.

Opt-in, and only ever inside a *partition* (:func:`haikucache.partition_key`): the same model,
system prompt, tools, sampling parameters, earlier turns and namespace, with only the last user
turn's text free. Within a partition the last user turn is embedded and compared by cosine
similarity with the stored questions; a candidate is served only when

1. its similarity is at least the threshold (calibrated on labelled data, see
   ``benchmarks/bench_semantic.py`` and :func:`calibrate_threshold`), and
2. it passes every *guard*: cheap offline checks that reject paraphrase-looking questions
   whose numbers, negation or named entities differ ("… in 2019" vs "… in 2020", "why is X
   safe" vs "why is X not safe", "capital of France" vs "capital of Spain"). Embeddings
   score such pairs high; the answer to one is wrong for the other;
3. it passes the *verifiers* (``haikucache._verify``): by default offline lexical contrast
   checks (antonyms, negating prefixes, negation, comparatives, direction, times, units,
   scope), optionally Claude Haiku as a judge; and
4. under a user-set error bound (``max_false_hit_rate=δ``), its similarity reaches the
   threshold that :class:`ErrorBound` learns online from verified outcomes.

The pieces:

``Embedder``           the protocol: ``embed(texts) -> (n, d) array`` (and optionally
                       ``async aembed(texts)``). :func:`as_embedder` adapts a LangChain
                       ``Embeddings``, a LlamaIndex ``BaseEmbedding`` or any callable.
``SemanticConfig``     the opt-in: embedder, threshold, guards, index kind.
``SemanticIndex``      the per-partition vector indexes of one engine, kept in sync with the
                       store (vectors live in the store; each process keeps a local index).
``check_guards``       the guards, usable alone.
``ErrorBound``         the online threshold learner behind ``max_false_hit_rate``.

The engine's part under an error bound (every door, through the pipeline): lookup asks
:meth:`SemanticIndex.decide` for a :class:`SemanticDecision`; when it has a ``label`` (a
candidate under the learned threshold, or a sampled would-be hit) the call is a miss and goes
upstream, keeping :meth:`SemanticIndex.pending` on the call; the store stage, once the complete
answer is accounted, hands it to :meth:`SemanticIndex.learn`, which compares it with the
candidate's stored answer (:meth:`SemanticConfig.answers_agree`) and reports the outcome
(:meth:`SemanticIndex.record_outcome`). A failed comparison never fails the call.

numpy is needed (``pip install 'haikucache[semantic]'``); ``usearch`` optionally
(``haikucache[ann]``) for an approximate index on very large partitions.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import random
import re
import statistics
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import xxhash

from ._exceptions import ConfigurationError, MissingDependencyError
from ._verify import LexicalVerifier, Verifier

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ._store import PartitionMember, ResponseStore

    FloatArray = npt.NDArray[np.float32]

__all__ = [
    "DEFAULT_ANSWER_AGREEMENT",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_THRESHOLD",
    "GUARDS",
    "AsyncEmbedder",
    "CallableEmbedder",
    "Embedder",
    "ErrorBound",
    "LangChainEmbedder",
    "LlamaIndexEmbedder",
    "PendingOutcome",
    "SemanticConfig",
    "SemanticDecision",
    "SemanticIndex",
    "SemanticMatch",
    "answer_text",
    "as_embedder",
    "calibrate_threshold",
    "check_guards",
    "last_user_text",
]

logger = logging.getLogger("haikucache")

#: The default similarity threshold, calibrated for the local embedder
#: (:class:`haikucache.LocalEmbedder`, all-MiniLM-L6-v2) with every guard on, on a dev split
#: of the QQP pairs: see ``benchmarks/bench_semantic.py``. Other embedders need their own.
DEFAULT_THRESHOLD = 0.95

#: The guards, in the order they are checked.
GUARDS: tuple[str, ...] = ("numbers", "negation", "entities")

#: With an error bound, the share of would-be semantic hits that also go upstream to be checked.
DEFAULT_SAMPLE_RATE = 0.05
#: Two answers agree when their embeddings' cosine reaches this (or their texts are equal).
DEFAULT_ANSWER_AGREEMENT = 0.9


def default_verifiers() -> tuple[Verifier, ...]:
    """The verification stage used unless told otherwise: the offline lexical checks."""
    return (LexicalVerifier(),)


def _verifiers_of(value: Any) -> tuple[Verifier, ...]:
    if value is None or value is False:
        return ()
    if callable(getattr(value, "verify", None)):
        return (value,)
    if isinstance(value, (list, tuple)):
        for item in value:
            if not callable(getattr(item, "verify", None)):
                raise ConfigurationError(f"{item!r} is not a verifier (it has no verify method)")
        return tuple(value)
    raise ConfigurationError(
        "verifier must be a Verifier (with verify(query, candidate)), a sequence of them or "
        f"None, got {value!r}"
    )


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependencyError("numpy", "semantic", "Semantic lookup") from exc
    return numpy


# --------------------------------------------------------------------------- embedders


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors: one row per text, any consistent dimension.

    Rows need not be normalised (haikucache normalises them). The same embedder must be used
    for stored and looked-up questions; vectors of another embedder are never compared (the
    embedder's :attr:`name` is part of the partition).
    """

    def embed(self, texts: Sequence[str]) -> Any:
        """An ``(len(texts), dim)`` array-like of floats."""
        ...


@runtime_checkable
class AsyncEmbedder(Protocol):
    """An embedder with a coroutine twin, used by async doors."""

    async def aembed(self, texts: Sequence[str]) -> Any:
        """Coroutine twin of :meth:`Embedder.embed`."""
        ...


class LangChainEmbedder:
    """Adapts a LangChain ``Embeddings`` (``embed_documents`` / ``aembed_documents``).

    Stored and looked-up questions both go through ``embed_documents`` (``query=False``) or
    both through ``embed_query`` (``query=True``), so the comparison is symmetric.
    """

    def __init__(self, embeddings: Any, *, query: bool = False) -> None:
        if not callable(getattr(embeddings, "embed_documents", None)):
            raise ConfigurationError("a LangChain Embeddings needs an embed_documents method")
        self.embeddings = embeddings
        self.query = query
        self.name = "langchain:" + _describe(embeddings)

    def embed(self, texts: Sequence[str]) -> Any:
        """Embed with the wrapped model."""
        if self.query:
            return [self.embeddings.embed_query(t) for t in texts]
        return self.embeddings.embed_documents(list(texts))

    async def aembed(self, texts: Sequence[str]) -> Any:
        """Embed with the wrapped model's async methods."""
        if self.query:
            return [await self.embeddings.aembed_query(t) for t in texts]
        return await self.embeddings.aembed_documents(list(texts))


class LlamaIndexEmbedder:
    """Adapts a LlamaIndex ``BaseEmbedding`` (``get_text_embedding_batch`` and its twin)."""

    def __init__(self, model: Any) -> None:
        if not callable(getattr(model, "get_text_embedding_batch", None)):
            raise ConfigurationError(
                "a LlamaIndex BaseEmbedding needs a get_text_embedding_batch method"
            )
        self.model = model
        self.name = "llama-index:" + _describe(model)

    def embed(self, texts: Sequence[str]) -> Any:
        """Embed with the wrapped model."""
        return self.model.get_text_embedding_batch(list(texts))

    async def aembed(self, texts: Sequence[str]) -> Any:
        """Embed with the wrapped model's async method."""
        return await self.model.aget_text_embedding_batch(list(texts))


class CallableEmbedder:
    """Adapts a function.

    Args:
        fn: ``fn(list_of_texts) -> (n, d) array`` (``batched=True``), or ``fn(text) ->
            vector`` (``batched=False``). A coroutine function is awaited by async doors
            and run to completion by sync ones.
        batched: whether ``fn`` takes a list of texts.
        name: what identifies the model (default: the function's qualified name). Vectors
            stored under one name are never compared with another's.
    """

    def __init__(self, fn: Callable[..., Any], *, batched: bool = True, name: str | None = None):
        if not callable(fn):
            raise ConfigurationError(f"an embedder function must be callable, got {fn!r}")
        self.fn = fn
        self.batched = batched
        self.name = name or "callable:" + _describe(fn)
        self._is_async = inspect.iscoroutinefunction(fn)

    def embed(self, texts: Sequence[str]) -> Any:
        """Call the function (a coroutine function is run in a fresh event loop)."""
        if self._is_async:
            return _run_sync(self.aembed(texts))
        if self.batched:
            return self.fn(list(texts))
        return [self.fn(t) for t in texts]

    async def aembed(self, texts: Sequence[str]) -> Any:
        """Await the function (a plain function is called in a worker thread)."""
        if not self._is_async:
            return await asyncio.to_thread(self.embed, texts)
        if self.batched:
            return await self.fn(list(texts))
        return [await self.fn(t) for t in texts]


def _run_sync(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise ConfigurationError(
        "an async embedder cannot be called from a sync door inside a running event loop; "
        "use the async client"
    )


def _describe(obj: Any) -> str:
    for attr in ("model_name", "model", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return f"{type(obj).__qualname__}:{value}"
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


def as_embedder(obj: Any) -> Embedder:
    """Adapt ``obj`` into an :class:`Embedder`.

    Accepts an object that already has ``embed(texts)``, a LangChain ``Embeddings`` (has
    ``embed_documents``), a LlamaIndex ``BaseEmbedding`` (has ``get_text_embedding_batch``)
    or a callable taking a list of texts. Neither LangChain nor LlamaIndex is imported.

    Raises:
        ConfigurationError: ``obj`` is none of these.
    """
    if isinstance(obj, (LangChainEmbedder, LlamaIndexEmbedder, CallableEmbedder)):
        return obj
    if callable(getattr(obj, "get_text_embedding_batch", None)):
        return LlamaIndexEmbedder(obj)
    if callable(getattr(obj, "embed_documents", None)):
        return LangChainEmbedder(obj)
    if callable(getattr(obj, "embed", None)):
        return obj  # type: ignore[no-any-return]
    if callable(obj):
        return CallableEmbedder(obj)
    raise ConfigurationError(
        f"cannot use {obj!r} as an embedder: pass a LangChain Embeddings, a LlamaIndex "
        "BaseEmbedding, an object with embed(texts), or a function of a list of texts"
    )


def embedder_name(embedder: Any) -> str:
    """What identifies an embedder's vectors (its ``name``, else its class)."""
    name = getattr(embedder, "name", None)
    return name if isinstance(name, str) and name else _describe(embedder)


def unit_rows(raw: Any, count: int) -> FloatArray:
    """``raw`` as a C-contiguous float32 matrix of ``count`` unit rows.

    Raises:
        ValueError: wrong shape, non-finite values or a zero vector.
    """
    np = _numpy()
    try:
        matrix = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the embedder returned something that is not numbers: {exc}") from exc
    if matrix.ndim == 1 and count == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise ValueError(
            f"the embedder returned shape {matrix.shape} for {count} text(s); "
            "expected (texts, dimension)"
        )
    if not np.isfinite(matrix).all():
        raise ValueError("the embedder returned NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("the embedder returned a zero vector")
    out: FloatArray = np.ascontiguousarray(matrix / norms, dtype=np.float32)
    return out


# --------------------------------------------------------------------------- guards

_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_QUOTED_RE = re.compile(r"\"([^\"]{2,})\"|“([^”]{2,})”|`([^`]{2,})`")
_SENTENCE_START_RE = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)[\"'“(]*([A-Za-z][\w'’.\-&]*)")

# "one" and "second" are left out: "which one", "a second opinion" are not numbers.
_NUMBER_WORDS = {
    "zero": "0",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "trillion": "1000000000000",
    "first": "1st",
    "third": "3rd",
    "fourth": "4th",
    "fifth": "5th",
    "tenth": "10th",
    "half": "0.5",
    "twice": "x2",
    "double": "x2",
    "triple": "x3",
}
_ORDINAL_RE = re.compile(r"^(\d+)(?:st|nd|rd|th)$")

_NEGATIONS = frozenset(
    {
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "nowhere",
        "without",
        "cannot",
        "cant",
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "wont",
        "wouldnt",
        "shouldnt",
        "couldnt",
        "hasnt",
        "havent",
        "hadnt",
        "mustnt",
        "neednt",
    }
)

# Capitalised words that are not names: sentence openers, pronouns, question words.
_NOT_NAMES = frozenset(
    [
        "a",
        "about",
        "after",
        "all",
        "also",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "before",
        "best",
        "but",
        "by",
        "can",
        "could",
        "dear",
        "did",
        "do",
        "does",
        "for",
        "from",
        "get",
        "give",
        "good",
        "had",
        "has",
        "have",
        "he",
        "her",
        "hello",
        "hey",
        "hi",
        "his",
        "how",
        "i",
        "i'd",
        "i'll",
        "i'm",
        "i've",
        "if",
        "in",
        "is",
        "it",
        "its",
        "just",
        "let",
        "like",
        "list",
        "make",
        "me",
        "my",
        "no",
        "not",
        "now",
        "of",
        "ok",
        "okay",
        "on",
        "one",
        "or",
        "our",
        "please",
        "she",
        "should",
        "so",
        "some",
        "tell",
        "than",
        "thank",
        "thanks",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "under",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "would",
        "yes",
        "you",
        "your",
    ]
)


@dataclass(frozen=True)
class _Features:
    numbers: frozenset[str]
    negated: bool
    entities: tuple[tuple[str, ...], ...]
    words: frozenset[str]


def _stem(word: str) -> str:
    word = word.lower().replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


def _pieces(text: str) -> tuple[str, ...]:
    words = (_stem(w) for w in _WORD_RE.findall(text))
    return tuple(p for w in words for p in re.findall(r"[a-z0-9]+", w))


@functools.lru_cache(maxsize=65_536)
def _features(text: str) -> _Features:
    numbers: set[str] = set()
    for raw in _NUMBER_RE.findall(text):
        numbers.add(
            raw.replace(",", "").rstrip("0").rstrip(".") if "." in raw else raw.replace(",", "")
        )
    words = _WORD_RE.findall(text)
    lowered = [w.lower().replace("’", "'") for w in words]
    negated = False
    for word in lowered:
        plain = word.replace("'", "")
        if plain in _NEGATIONS or word.endswith("n't"):
            negated = True
        if plain in _NUMBER_WORDS:
            numbers.add(_NUMBER_WORDS[plain])
        match = _ORDINAL_RE.match(plain)
        if match:
            numbers.discard(match.group(1))
            numbers.add(plain)
    entities: list[tuple[str, ...]] = []
    for groups in _QUOTED_RE.findall(text):
        quoted = next(g for g in groups if g)
        pieces = _pieces(quoted)
        if pieces:
            entities.append(pieces)
    alpha = [w for w in words if w[0].isalpha() and len(w) > 1]
    content = [w for w in alpha if w.lower().replace("’", "'") not in _NOT_NAMES]
    all_caps = [w for w in alpha if w.isupper()]
    # A title-cased or shouted text says nothing through its capitals ("What Is The Best
    # Way To Learn Guitar?"); "Is Java harder than Python?" is not title case.
    title_case = len(content) >= 3 and sum(w[0].islower() for w in content) <= len(content) // 5
    shouting = len(alpha) >= 3 and len(all_caps) >= 0.6 * len(alpha)
    starts = {m.start(1) for m in _SENTENCE_START_RE.finditer(text)}
    for match in _WORD_RE.finditer(text):
        word = match.group(0)
        if not word[0].isalpha() or len(word) < 2:
            continue
        acronym = word.isupper() and not shouting
        name = (
            not title_case
            and word[0].isupper()
            and match.start() not in starts
            and word.lower().replace("’", "'") not in _NOT_NAMES
        )
        # Mixed case inside a word (iPhone, GitHub, McDonald) marks a name anywhere.
        inner = any(c.isupper() for c in word[1:]) and not word.isupper() and not title_case
        if (acronym and word.lower() not in _NOT_NAMES) or name or inner:
            entities.append(_pieces(word))
    stems = {_stem(w) for w in lowered}
    stems.update(w.replace("'", "") for w in lowered)
    return _Features(frozenset(numbers), negated, tuple(entities), frozenset(stems))


def _covered(piece: str, words: frozenset[str]) -> bool:
    if piece in words:
        return True
    # A name and its adjective ("India" / "indian", "Canada" / "canadian"): one is a prefix
    # of the other, with a short ending. "Java" / "javascript" differ too much to pass.
    return len(piece) >= 4 and any(
        len(w) >= 4
        and abs(len(w) - len(piece)) <= 3
        and (w.startswith(piece) or piece.startswith(w))
        for w in words
    )


def _entities_covered(a: _Features, b: _Features) -> bool:
    return all(all(_covered(p, b.words) for p in pieces) for pieces in a.entities)


def check_guards(query: str, candidate: str, guards: Iterable[str] = GUARDS) -> str | None:
    """The first guard that rejects serving ``candidate``'s answer to ``query``, or ``None``.

    * ``numbers``: both mention the same numbers (digits, number words, ordinals).
    * ``negation``: both are negated, or neither is.
    * ``entities``: every name in one (a capitalised word that does not open a sentence,
      an acronym, a mixed-case word, a quoted string) occurs, in any case, in the other.

    They are heuristics: fast (microseconds, cached), offline, English-centric, and biased to
    reject (a rejected paraphrase costs one upstream call; a wrong answer costs trust).
    """
    q = _features(query)
    c = _features(candidate)
    for guard in guards:
        if guard == "numbers":
            if q.numbers != c.numbers:
                return "numbers"
        elif guard == "negation":
            if q.negated != c.negated:
                return "negation"
        elif guard == "entities":
            if not (_entities_covered(q, c) and _entities_covered(c, q)):
                return "entities"
        else:
            raise ConfigurationError(f"unknown guard {guard!r}; known: {', '.join(GUARDS)}")
    return None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SemanticConfig:
    """Turns semantic lookup on for an :class:`~haikucache.Engine`.

    Attributes:
        embedder: an :class:`Embedder`, a LangChain ``Embeddings``, a LlamaIndex
            ``BaseEmbedding`` or a function of a list of texts (see :func:`as_embedder`).
        threshold: the least cosine similarity served. The default is calibrated for the
            local embedder; calibrate another embedder's with :func:`calibrate_threshold`.
        guards: the guards checked after the threshold (any of :data:`GUARDS`).
        index: ``"numpy"`` (the default: exact up to 4,096 entries per partition, then a
            sign-bit pre-selection of 256 rows scored exactly), ``"exact"`` (numpy, every row
            scored on every lookup) or ``"usearch"`` (an approximate HNSW graph;
            ``haikucache[ann]``).
        candidates: how many nearest neighbours are checked (the best one that passes the
            threshold and every guard is served).
        max_chars: a last user turn longer than this is matched exactly only (long inputs
            differ in details embeddings average away).
        sync_interval: seconds between looks for entries other processes stored in a
            partition (``0``: before every lookup).
        name: what identifies the embedder's vectors (default: derived from the embedder).
        strict: raise embedder failures instead of treating them as misses (for tests).
        verifier: what checks a candidate that passed the threshold and the guards before
            it is served: a :class:`~haikucache._verify.Verifier` (``verify(query,
            candidate) -> reason | None``), a sequence of them (run in order), or ``None``
            to serve on threshold and guards alone. Default: :class:`LexicalVerifier`
            (offline contrast checks: antonyms, negating prefixes, negation, comparatives,
            direction, times, units, scope).
        max_false_hit_rate: a user-set error bound δ (as in vCache): the share of semantic
            hits that may be wrong. With it, each candidate is also held to a threshold
            learned online from verified outcomes (:class:`ErrorBound`); until enough
            outcomes are in, candidates go upstream and are labelled instead of served.
            ``None`` (the default): the fixed ``threshold`` alone.
        sample_rate: with ``max_false_hit_rate``, the share of would-be hits that also go
            upstream so their answers can be compared (the verification samples).
        answer_agreement: two answers agree (a sampled hit was right) when their texts are
            equal or their embeddings' cosine is at least this.
        bound_scope: ``"index"`` (outcomes pooled over every partition of the engine) or
            ``"partition"`` (each partition learns its own threshold).
        seed: seeds the sampling, so a replay is deterministic.
    """

    embedder: Any
    threshold: float = DEFAULT_THRESHOLD
    guards: tuple[str, ...] = GUARDS
    index: str = "numpy"
    candidates: int = 4
    max_chars: int = 2_000
    sync_interval: float = 0.25
    name: str | None = None
    strict: bool = False
    verifier: Any = field(default_factory=default_verifiers)
    max_false_hit_rate: float | None = None
    sample_rate: float = DEFAULT_SAMPLE_RATE
    answer_agreement: float = DEFAULT_ANSWER_AGREEMENT
    bound_scope: str = "index"
    seed: int = 0
    _embedder: Embedder = field(init=False, repr=False, compare=False)
    _verifiers: tuple[Verifier, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _numpy()
        object.__setattr__(self, "_embedder", as_embedder(self.embedder))
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not -1.0 <= self.threshold <= 1.0
        ):
            raise ConfigurationError(
                f"threshold must be a number in [-1, 1], got {self.threshold!r}"
            )
        if isinstance(self.guards, str):
            raise ConfigurationError("guards must be a sequence of guard names")
        object.__setattr__(self, "guards", tuple(self.guards))
        unknown = [g for g in self.guards if g not in GUARDS]
        if unknown:
            raise ConfigurationError(f"unknown guard(s) {unknown}; known: {', '.join(GUARDS)}")
        if self.index not in ("numpy", "exact", "usearch"):
            raise ConfigurationError(
                f"index must be 'numpy', 'exact' or 'usearch', got {self.index!r}"
            )
        if self.index == "usearch":
            try:
                import usearch.index  # noqa: F401
            except ImportError as exc:
                raise MissingDependencyError("usearch", "ann", "The usearch index") from exc
        for name in ("candidates", "max_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.sync_interval, bool)
            or not isinstance(self.sync_interval, (int, float))
            or self.sync_interval < 0
        ):
            raise ConfigurationError("sync_interval must be a number of seconds >= 0")
        object.__setattr__(self, "_verifiers", _verifiers_of(self.verifier))
        delta = self.max_false_hit_rate
        if delta is not None and (
            isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1
        ):
            raise ConfigurationError(f"max_false_hit_rate must be a share in (0, 1), got {delta!r}")
        for name in ("sample_rate", "answer_agreement"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigurationError(f"{name} must be a number in (0, 1], got {value!r}")
        if self.bound_scope not in ("index", "partition"):
            raise ConfigurationError(
                f"bound_scope must be 'index' or 'partition', got {self.bound_scope!r}"
            )

    @property
    def verifiers(self) -> tuple[Verifier, ...]:
        """The verifiers a candidate passes before it is served, in order."""
        return self._verifiers

    def verify(self, query: str, candidate: str) -> str | None:
        """Why ``candidate``'s answer must not be served for ``query`` (``None``: it may).

        A verifier that raises refuses the candidate (logged; raised with ``strict``).
        """
        for verifier in self._verifiers:
            try:
                reason = verifier.verify(query, candidate)
            except Exception as exc:
                if self.strict:
                    raise
                logger.warning(
                    "haikucache: verifier %r failed (%s: %s); not served",
                    verifier,
                    type(exc).__name__,
                    exc,
                )
                return "error"
            if reason is not None:
                return reason
        return None

    def answers_agree(self, cached: str, fresh: str) -> bool:
        """Whether a cached answer and a fresh upstream answer to the same question agree.

        Equal texts (whitespace aside) agree; otherwise the cosine of their embeddings must
        reach ``answer_agreement`` (0.9 by default: answers sampled at temperature > 0 differ
        in wording, not in substance). An embedder failure counts as disagreement.
        """
        if " ".join(cached.split()) == " ".join(fresh.split()):
            return True
        try:
            a, b = self.embed([cached, fresh])
        except Exception as exc:
            logger.warning("haikucache: could not compare answers (%s); counted as wrong", exc)
            return False
        return float(a @ b) >= self.answer_agreement

    @property
    def model_tag(self) -> str:
        """A short hash of the embedder's name, appended to every partition."""
        name = self.name or embedder_name(self._embedder)
        return xxhash.xxh3_64_hexdigest(name.encode())

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Unit vectors of ``texts`` (raises what the embedder raises, or ValueError)."""
        return unit_rows(self._embedder.embed(texts), len(texts))

    async def aembed(self, texts: Sequence[str]) -> FloatArray:
        """Coroutine twin of :meth:`embed` (a sync-only embedder runs in a worker thread)."""
        if isinstance(self._embedder, AsyncEmbedder):
            raw = await self._embedder.aembed(texts)
        else:
            raw = await asyncio.to_thread(self._embedder.embed, texts)
        return unit_rows(raw, len(texts))


def last_user_text(body: Mapping[str, Any]) -> str | None:
    """The text of the last user turn when it is plain text (else ``None``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for block in content:
        if not isinstance(block, Mapping) or block.get("type") != "text":
            return None
        text = block.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


# --------------------------------------------------------------------------- indexes


@dataclass(frozen=True)
class SemanticMatch:
    """A candidate found by meaning.

    Attributes:
        key: the stored entry's exact key.
        similarity: cosine similarity with the query.
        text: the stored question.
    """

    key: str
    similarity: float
    text: str


#: From this many entries a numpy partition first narrows the search by sign bits.
PREFILTER_MIN = 4096
#: How many rows the sign-bit pass keeps for exact re-scoring.
PREFILTER_KEEP = 256
_BLAS_ROWS = 2048


class _NumpyPartition:
    """Cosine search on unit float32 rows.

    Up to :data:`PREFILTER_MIN` entries (or always, with ``exact``) one matrix-vector product
    scores every row. Above it, reading every float32 row costs 10-20 ms per 100k entries
    (memory bandwidth), so each row also keeps its 384 sign bits (48 bytes): the Hamming
    distance to the query's bits picks the :data:`PREFILTER_KEEP` nearest rows, which are
    then scored exactly. A near-duplicate (cosine >= 0.9) differs in about 14 % of its
    bits, an unrelated text in 35–50 %, so it is kept; what could be lost is a
    candidate that the threshold would refuse anyway.
    """

    def __init__(self, dim: int, *, exact: bool = False) -> None:
        np = _numpy()
        self.dim = dim
        self._np = np
        self._matrix = np.empty((16, dim), dtype=np.float32)
        # Sign bits in 64-bit words, one contiguous array per word (a row is a column), so
        # the Hamming pass streams memory; only used when numpy has bitwise_count (>= 2.0).
        self._prefilter = not exact and hasattr(np, "bitwise_count")
        self._words = (dim + 63) // 64
        self._bits = np.zeros((self._words, 16), dtype=np.uint64)
        self._keys: list[str] = []
        self._texts: list[str] = []
        self._expires: list[float] = []
        self._row: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, vector: FloatArray, text: str, expires_at: float | None) -> None:
        row = self._row.get(key)
        if row is None:
            row = len(self._keys)
            if row == self._matrix.shape[0]:
                grown = self._np.empty((row * 2, self.dim), dtype=self._np.float32)
                grown[:row] = self._matrix
                self._matrix = grown
                bits = self._np.zeros((self._words, row * 2), dtype=self._np.uint64)
                bits[:, :row] = self._bits
                self._bits = bits
            self._keys.append(key)
            self._texts.append(text)
            self._expires.append(math.inf if expires_at is None else expires_at)
            self._row[key] = row
        else:
            self._texts[row] = text
            self._expires[row] = math.inf if expires_at is None else expires_at
        self._matrix[row] = vector
        self._bits[:, row] = self._signs(vector)

    def _signs(self, vector: FloatArray) -> Any:
        packed = self._np.packbits(vector > 0)
        out = self._np.zeros(self._words * 8, dtype=self._np.uint8)
        out[: packed.shape[0]] = packed
        return out.view(self._np.uint64)

    def remove(self, key: str) -> None:
        row = self._row.pop(key, None)
        if row is None:
            return
        last = len(self._keys) - 1
        if row != last:
            moved = self._keys[last]
            self._matrix[row] = self._matrix[last]
            self._bits[:, row] = self._bits[:, last]
            self._keys[row] = moved
            self._texts[row] = self._texts[last]
            self._expires[row] = self._expires[last]
            self._row[moved] = row
        self._keys.pop()
        self._texts.pop()
        self._expires.pop()

    def purge(self, now: float) -> None:
        """Drop expired rows."""
        for key in [k for k, e in zip(self._keys, self._expires, strict=True) if e <= now]:
            self.remove(key)

    def search(self, vector: FloatArray, k: int, now: float) -> list[SemanticMatch]:
        n = len(self._keys)
        if n == 0:
            return []
        np = self._np
        if self._prefilter and n >= PREFILTER_MIN:
            query = self._signs(vector)
            distance = np.bitwise_count(self._bits[0, :n] ^ query[0]).astype(np.int32)
            for word in range(1, self._words):
                distance += np.bitwise_count(self._bits[word, :n] ^ query[word])
            rows = np.argpartition(distance, PREFILTER_KEEP)[:PREFILTER_KEEP]
            scores = self._matrix[rows] @ vector
        else:
            rows = None
            # Past a few thousand rows BLAS runs a matrix-vector product on several threads,
            # which on a busy machine wait for each other for whole scheduler ticks (8-24 ms
            # measured for 10k rows, against 2 ms on one thread): einsum stays on one.
            if n <= _BLAS_ROWS:
                scores = self._matrix[:n] @ vector
            else:
                scores = np.einsum("ij,j->i", self._matrix[:n], vector)
        m = scores.shape[0]
        want = min(m, k * 2)
        top = np.argpartition(scores, m - want)[m - want :] if want < m else np.arange(m)
        top = top[np.argsort(-scores[top], kind="stable")]
        out = []
        for i in top.tolist():
            row = i if rows is None else int(rows[i])
            if self._expires[row] <= now:
                continue
            out.append(SemanticMatch(self._keys[row], float(scores[i]), self._texts[row]))
            if len(out) == k:
                break
        return out


class _UsearchPartition:
    """Approximate search with a usearch HNSW index (inner product on unit vectors)."""

    def __init__(self, dim: int) -> None:
        from usearch.index import Index

        self.dim = dim
        self._index = Index(ndim=dim, metric="ip", dtype="f32")
        self._ids: dict[str, int] = {}
        self._keys: dict[int, tuple[str, str, float]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key: str, vector: FloatArray, text: str, expires_at: float | None) -> None:
        self.remove(key)
        ident = self._next
        self._next += 1
        self._index.add(ident, vector)
        self._ids[key] = ident
        self._keys[ident] = (key, text, math.inf if expires_at is None else expires_at)

    def remove(self, key: str) -> None:
        ident = self._ids.pop(key, None)
        if ident is not None:
            self._keys.pop(ident, None)
            self._index.remove(ident)

    def purge(self, now: float) -> None:
        """Drop expired entries."""
        for key in [v[0] for v in self._keys.values() if v[2] <= now]:
            self.remove(key)

    def search(self, vector: FloatArray, k: int, now: float) -> list[SemanticMatch]:
        if not self._ids:
            return []
        found = self._index.search(vector, min(len(self._ids), k * 2))
        out = []
        for ident, distance in zip(found.keys.tolist(), found.distances.tolist(), strict=True):
            item = self._keys.get(int(ident))
            if item is None or item[2] <= now:
                continue
            out.append(SemanticMatch(item[0], 1.0 - float(distance), item[1]))
            if len(out) == k:
                break
        return out


#: Seconds (on the engine's clock) between sweeps of expired entries out of a local index.
PURGE_INTERVAL = 60.0


# --------------------------------------------------------------------------- error bound


@dataclass(frozen=True)
class SemanticDecision:
    """What :meth:`SemanticIndex.decide` made of one lookup's candidates.

    Attributes:
        serve: the candidate whose stored answer is served (``None``: a miss).
        label: a candidate whose outcome is wanted: after the call went upstream, compare
            the fresh answer with this candidate's stored answer
            (:meth:`SemanticConfig.answers_agree`) and report it with
            :meth:`SemanticIndex.record_outcome`. Set only under an error bound.
        sampled: ``serve`` is a verification sample: send the call upstream anyway, answer
            with the fresh answer, and report the comparison (``label`` is ``serve``).
    """

    serve: SemanticMatch | None = None
    label: SemanticMatch | None = None
    sampled: bool = False


@dataclass(frozen=True)
class PendingOutcome:
    """A verification waiting for its call's upstream answer (see :meth:`SemanticIndex.learn`).

    Attributes:
        match: the labelled candidate.
        answer: the candidate's stored answer, as text.
        sampled: the candidate was a would-be hit checked by sampling.
    """

    match: SemanticMatch
    answer: str
    sampled: bool


def answer_text(message: Mapping[str, Any]) -> str:
    """The text of a Messages answer, for comparing two answers: its text blocks, and each
    tool call as its name and canonical JSON input (thinking is left out)."""
    parts: list[str] = []
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "tool_use":
            parts.append(
                f"{block.get('name')}: "
                + json.dumps(block.get("input"), sort_keys=True, separators=(",", ":"))
            )
    return "\n".join(parts)


class ErrorBound:
    """Learns, online, the least similarity whose semantic hits are wrong at most ``delta``.

    The user-set error bound of vCache (Schroeder et al., "vCache: Verified Semantic Prompt
    Caching", 2025), re-implemented from the idea: every verified outcome (the similarity of a
    candidate that passed the guards and verifiers, and whether its stored answer agreed with
    a fresh upstream answer) is kept, and the served threshold is the lowest similarity ``t``
    such that, among outcomes at or above ``t``, the upper confidence bound (Wilson,
    one-sided ``confidence``) of the wrong share is at most ``delta``. With no such ``t``
    (at the start) nothing is served: every candidate goes upstream and is labelled, for free,
    since that call was a miss anyway.

    Outcomes come at two rates: a candidate under the learned threshold is labelled every time
    (``decide`` says ``"label"``), a would-be hit only when sampled (``"sample"``, at
    ``sample_rate``). Each outcome is weighted by the inverse of its chance of being labelled,
    so the estimate is that of the hits actually served, and the confidence bound uses the
    weights' effective sample size. Similarities are kept in bins of 0.001 (a threshold is a
    bin's lower edge) and the last ``window`` outcomes per scope count, so the threshold
    follows drift. Pure logic, deterministic for a ``seed``: no I/O, no clock.

    Args:
        delta: the largest share of wrong answers among semantic hits (``0 < delta < 1``).
        sample_rate: the share of would-be hits also sent upstream to be checked.
        confidence: how sure the bound must be (one-sided).
        window: outcomes kept per scope.
        seed: seeds the sampling.
    """

    #: Bins per unit of similarity (similarities run from -1 to 1).
    RESOLUTION = 1000

    def __init__(
        self,
        delta: float,
        *,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        confidence: float = 0.99,
        window: int = 20_000,
        seed: int = 0,
    ) -> None:
        if not 0 < delta < 1:
            raise ConfigurationError("delta must be a share in (0, 1)")
        if not 0 < sample_rate <= 1:
            raise ConfigurationError("sample_rate must be in (0, 1]")
        if not 0.5 <= confidence < 1:
            raise ConfigurationError("confidence must be in [0.5, 1)")
        self.delta = float(delta)
        self.sample_rate = float(sample_rate)
        self.confidence = float(confidence)
        self.window = int(window)
        self._np = _numpy()
        self._z = statistics.NormalDist().inv_cdf(confidence)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # Per scope: (weighted wrong, weighted total, squared weights) per bin, the outcomes
        # in arrival order (for the window), and the threshold (absent: to be recomputed).
        self._bins: dict[str, Any] = {}
        self._order: dict[str, deque[tuple[int, float, bool]]] = {}
        self._threshold: dict[str, float] = {}

    def _bin(self, similarity: float) -> int:
        top = 2 * self.RESOLUTION
        return min(max(math.floor((similarity + 1.0) * self.RESOLUTION + 1e-9), 0), top)

    def threshold(self, scope: str = "") -> float:
        """The least similarity served now (``inf`` while the evidence is too thin)."""
        with self._lock:
            return self._threshold_locked(scope)

    def _threshold_locked(self, scope: str) -> float:
        cached = self._threshold.get(scope)
        if cached is not None:
            return cached
        best = math.inf
        bins = self._bins.get(scope)
        if bins is not None:
            np = self._np
            # Cumulative from the top bin down: what a threshold at each bin's edge serves.
            wrong, total, squares = (np.cumsum(bins[i][::-1]) for i in range(3))
            with np.errstate(divide="ignore", invalid="ignore"):
                n_eff = np.where(squares > 0, total * total / squares, 0.0)
                p = np.where(total > 0, wrong / total, 1.0)
                z2 = self._z * self._z
                upper = (
                    p
                    + z2 / (2 * n_eff)
                    + self._z * np.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff * n_eff))
                ) / (1 + z2 / n_eff)
            # Cut only at a bin that holds outcomes (below it nothing changes but the edge).
            occupied = bins[1][::-1] > 0
            ok = occupied & (upper <= self.delta) & np.isfinite(upper)
            hits = np.flatnonzero(ok)
            if hits.size:
                lowest = len(total) - 1 - int(hits[-1])
                best = lowest / self.RESOLUTION - 1.0
        self._threshold[scope] = best
        return best

    def decide(self, similarity: float, scope: str = "") -> str:
        """``"serve"``, ``"sample"`` (serve-worthy, but check it upstream) or ``"label"``
        (under the learned threshold: a miss whose upstream answer labels the candidate)."""
        with self._lock:
            if similarity < self._threshold_locked(scope):
                return "label"
            return "sample" if self._rng.random() < self.sample_rate else "serve"

    def record(self, similarity: float, correct: bool, *, sampled: bool, scope: str = "") -> None:
        """One verified outcome. ``sampled``: it was a would-be hit checked by sampling."""
        weight = 1.0 / self.sample_rate if sampled else 1.0
        with self._lock:
            bins = self._bins.get(scope)
            if bins is None:
                bins = self._bins[scope] = self._np.zeros((3, 2 * self.RESOLUTION + 1))
            order = self._order.setdefault(scope, deque())
            item = (self._bin(similarity), weight, not correct)
            order.append(item)
            self._add(bins, item, 1.0)
            if len(order) > self.window:
                self._add(bins, order.popleft(), -1.0)
            self._threshold.pop(scope, None)

    @staticmethod
    def _add(bins: Any, item: tuple[int, float, bool], sign: float) -> None:
        index, weight, wrong = item
        bins[0, index] += sign * weight * wrong
        bins[1, index] += sign * weight
        bins[2, index] += sign * weight * weight

    def stats(self, scope: str = "") -> dict[str, float]:
        """Outcomes kept, the weighted wrong share above the threshold, the threshold."""
        with self._lock:
            threshold = self._threshold_locked(scope)
            bins = self._bins.get(scope)
            outcomes = len(self._order.get(scope, ()))
            share = 0.0
            if bins is not None and math.isfinite(threshold):
                start = self._bin(threshold)
                total = float(bins[1, start:].sum())
                share = float(bins[0, start:].sum()) / total if total else 0.0
            return {
                "outcomes": float(outcomes),
                "threshold": threshold,
                "wrong_share_served": share,
            }


@dataclass
class _Partition:
    index: _NumpyPartition | _UsearchPartition | None = None
    cursor: str | None = None
    synced_at: float = -math.inf
    purged_at: float = -math.inf
    lock: threading.Lock = field(default_factory=threading.Lock)


class SemanticIndex:
    """The local vector indexes of one engine, one per partition, fed from the store.

    Vectors live in the store (``put(entry, vector=...)``), so every process sharing a store
    sees every answer: a partition's index is loaded on its first lookup and then tails the
    store's per-partition log of new entries (:meth:`ResponseStore.partition_since`), at most
    every ``sync_interval`` seconds. Removals need no log: a candidate is always read back
    from the store before it is served, and one that is gone is dropped from the index.
    """

    def __init__(self, config: SemanticConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._partitions: dict[str, _Partition] = {}
        #: Why candidates above the threshold were not served: ``{"guard:numbers": 3,
        #: "antonym": 2, ...}`` (the verifier's reason up to its first ``:``).
        self.rejections: Counter[str] = Counter()
        #: The error bound's learner (``None`` without ``max_false_hit_rate``).
        self.bound: ErrorBound | None = None
        if config.max_false_hit_rate is not None:
            self.bound = ErrorBound(
                config.max_false_hit_rate, sample_rate=config.sample_rate, seed=config.seed
            )
        # Which partition each entry is in (for a per-partition bound).
        self._owner: dict[str, str] = {}
        #: Verified outcomes learned from upstream answers: ``{"right": n, "wrong": m,
        #: "sampled": k}`` (``k`` of them were would-be hits checked by sampling).
        self.outcomes: Counter[str] = Counter()

    def _partition(self, name: str) -> _Partition:
        with self._lock:
            part = self._partitions.get(name)
            if part is None:
                part = self._partitions[name] = _Partition()
            return part

    def _new_index(self, dim: int) -> _NumpyPartition | _UsearchPartition:
        if self.config.index == "usearch":
            return _UsearchPartition(dim)
        return _NumpyPartition(dim, exact=self.config.index == "exact")

    def _add(self, name: str, part: _Partition, member: PartitionMember) -> None:
        if member.vector is None or member.text is None:
            return
        np = _numpy()
        vector = np.frombuffer(member.vector, dtype="<f4")
        if part.index is None:
            part.index = self._new_index(vector.shape[0])
        if vector.shape[0] != part.index.dim:
            return  # written by another embedder under the same name: never compared
        part.index.add(member.key, vector, member.text, member.expires_at)
        if self.bound is not None:
            self._owner[member.key] = name

    def sync(self, store: ResponseStore, partition: str, *, now: float, clock: float) -> None:
        """Bring the local index of ``partition`` up to date with ``store``.

        Args:
            now: the engine's clock (for expiry).
            clock: a monotonic time, to space out syncs by ``sync_interval``.
        """
        part = self._partition(partition)
        with part.lock:
            if part.cursor is not None and clock - part.synced_at < self.config.sync_interval:
                return
            since = getattr(store, "partition_since", None)
            if since is None:
                if part.cursor is None:
                    for member in store.iter_partition(partition, now=now):
                        self._add(partition, part, member)
                    part.cursor = ""
            else:
                members, cursor = since(partition, part.cursor, now=now)
                for member in members:
                    self._add(partition, part, member)
                part.cursor = cursor
            part.synced_at = clock
            # Expired rows are never served, but would still be scanned and kept in memory.
            if part.index is not None and now - part.purged_at >= PURGE_INTERVAL:
                part.index.purge(now)
                part.purged_at = now

    def add(
        self,
        partition: str,
        key: str,
        vector: FloatArray,
        text: str,
        expires_at: float | None,
    ) -> None:
        """Add an entry this process just stored (no need to wait for the next sync)."""
        part = self._partition(partition)
        with part.lock:
            if part.index is None:
                part.index = self._new_index(vector.shape[0])
            if vector.shape[0] == part.index.dim:
                part.index.add(key, vector, text, expires_at)
                if self.bound is not None:
                    self._owner[key] = partition

    def search(self, partition: str, vector: FloatArray, *, now: float) -> list[SemanticMatch]:
        """The nearest stored questions of ``partition``, best first (no threshold)."""
        part = self._partition(partition)
        with part.lock:
            if part.index is None or vector.shape[0] != part.index.dim:
                return []
            return part.index.search(vector, self.config.candidates, now)

    def discard(self, partition: str, key: str) -> None:
        """Drop one entry (it is gone from the store)."""
        with self._lock:
            part = self._partitions.get(partition)
        if part is not None:
            with part.lock:
                if part.index is not None:
                    part.index.remove(key)

    def reset(self) -> None:
        """Forget every partition; each is reloaded from the store on its next lookup."""
        with self._lock:
            self._partitions.clear()

    def __len__(self) -> int:
        with self._lock:
            parts = list(self._partitions.values())
        return sum(len(p.index) for p in parts if p.index is not None)

    def select(self, query: str, matches: Sequence[SemanticMatch]) -> SemanticMatch | None:
        """The best match above the threshold that passes every guard and verifier (and,
        under an error bound, the learned threshold): what :meth:`decide` serves, except a
        verification sample (which must go upstream)."""
        decision = self.decide(query, matches)
        return None if decision.sampled else decision.serve

    def decide(self, query: str, matches: Sequence[SemanticMatch]) -> SemanticDecision:
        """Which candidate to serve, if any, and (under an error bound) which to check.

        Candidates are tried best first: below ``threshold`` the search stops; one that a
        guard or a verifier rejects is skipped (counted in :attr:`rejections`). Without an
        error bound the first survivor is served. With one, the first survivor is served when
        its similarity reaches the learned threshold (now and then as a verification sample),
        else it is a miss whose upstream answer should label it.
        """
        config = self.config
        for match in matches:
            if match.similarity < config.threshold:
                break
            guard = check_guards(query, match.text, config.guards)
            reason = f"guard:{guard}" if guard is not None else config.verify(query, match.text)
            if reason is not None:
                with self._lock:
                    self.rejections[reason if guard is not None else reason.split(":")[0]] += 1
                continue
            if self.bound is None:
                return SemanticDecision(serve=match)
            action = self.bound.decide(match.similarity, self._scope(match.key))
            if action == "serve":
                return SemanticDecision(serve=match)
            if action == "sample":
                return SemanticDecision(serve=match, label=match, sampled=True)
            return SemanticDecision(label=match)
        return SemanticDecision()

    def should_sample(self, decision: SemanticDecision) -> bool:
        """Whether the call must go upstream although ``decision`` serves a stored answer."""
        return decision.sampled

    def record_outcome(self, match: SemanticMatch, correct: bool, *, sampled: bool) -> None:
        """Report whether ``match``'s stored answer agreed with the fresh upstream answer.

        Call it for :attr:`SemanticDecision.label` once the upstream answer is in
        (``sampled`` = :attr:`SemanticDecision.sampled`). Without an error bound it does
        nothing.
        """
        if self.bound is not None:
            self.bound.record(
                match.similarity, correct, sampled=sampled, scope=self._scope(match.key)
            )

    def pending(self, decision: SemanticDecision, cached: Mapping[str, Any]) -> PendingOutcome:
        """What to check once the upstream answer of a call that ``decision`` labelled is in.

        Args:
            decision: a decision with a :attr:`~SemanticDecision.label`.
            cached: the labelled candidate's stored answer (a Messages response).
        """
        assert decision.label is not None
        return PendingOutcome(decision.label, answer_text(cached), decision.sampled)

    def learn(self, pending: PendingOutcome, fresh: Mapping[str, Any]) -> bool | None:
        """Compare a fresh upstream answer with the labelled candidate's stored answer and
        report the outcome (:meth:`record_outcome`).

        Returns whether they agreed, or ``None`` when nothing could be learned. Never
        raises (not even with ``strict``): a failed verification is logged, and the call it
        belongs to, which already has its fresh answer, goes on.
        """
        try:
            ok = self.config.answers_agree(pending.answer, answer_text(fresh))
            self.record_outcome(pending.match, ok, sampled=pending.sampled)
        except Exception as exc:
            logger.warning(
                "haikucache: could not verify a semantic candidate (%s: %s); nothing learned",
                type(exc).__name__,
                exc,
            )
            return None
        with self._lock:
            self.outcomes["right" if ok else "wrong"] += 1
            if pending.sampled:
                self.outcomes["sampled"] += 1
        return ok

    def learned_threshold(self, partition: str | None = None) -> float:
        """The error bound's current threshold (``config.threshold`` without a bound)."""
        if self.bound is None:
            return self.config.threshold
        scope = partition if partition and self.config.bound_scope == "partition" else ""
        return max(self.bound.threshold(scope), self.config.threshold)

    def _scope(self, key: str) -> str:
        if self.config.bound_scope == "partition":
            return self._owner.get(key, "")
        return ""


# --------------------------------------------------------------------------- calibration


def calibrate_threshold(
    similarities: Sequence[float] | Any,
    labels: Sequence[bool] | Any,
    *,
    max_false_hit_rate: float = 0.015,
) -> tuple[float, float, float]:
    """The lowest threshold (most hits) whose false-hit rate on labelled pairs is in budget.

    Each pair is a stored question and a new one; a hit on a non-duplicate pair is a wrong
    answer served. The false-hit rate is the share of non-duplicate pairs that would be
    served (wrong hits / non-duplicates); it only falls as the threshold rises.

    Args:
        similarities: each pair's score (with guards: a pair a guard rejects scores ``-inf``).
        labels: whether each pair is a true duplicate (its answer may be served).
        max_false_hit_rate: the most non-duplicates that may be served, as a share.

    Returns:
        ``(threshold, false_hit_rate, hit_rate)``: hit rate is the share of true duplicates
        served. With no threshold in budget, ``(1.0, 0.0, 0.0)`` (the threshold is above every
        score, so in practice nothing but identical texts is served).
    """
    np = _numpy()
    scores = np.asarray(similarities, dtype=np.float64)
    truth = np.asarray(labels, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ConfigurationError("similarities and labels must be sequences of equal length")
    if (
        isinstance(max_false_hit_rate, bool)
        or not isinstance(max_false_hit_rate, (int, float))
        or not 0 <= max_false_hit_rate < 1
    ):
        raise ConfigurationError("max_false_hit_rate must be a share in [0, 1)")
    positives = max(int(truth.sum()), 1)
    negatives = max(int((~truth).sum()), 1)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    wrong = np.cumsum(~truth[order])
    right = np.cumsum(truth[order])
    best = (1.0, 0.0, 0.0)
    for i in range(len(ranked)):
        if not math.isfinite(ranked[i]):
            break
        # A threshold serves every pair at or above it: cut only between distinct scores.
        if i + 1 < len(ranked) and ranked[i + 1] == ranked[i]:
            continue
        rate = wrong[i] / negatives
        if rate > max_false_hit_rate:
            break
        best = (float(ranked[i]), float(rate), float(right[i] / positives))
    return best
