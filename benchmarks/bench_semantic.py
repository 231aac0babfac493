"""Semantic lookup on labelled question pairs: how often it serves, how often it is wrong.

    python benchmarks/bench_semantic.py --json OUT [--quick] [--data DIR]

Data: ``gptcache-qqp`` (read its README): 80,854 Quora Question Pairs labelled duplicate or
not, and ``mock_data.json`` (999 machine paraphrases). It is read in place, never copied.

Protocol (``pairwise``, the one the data's README suggests): the cache holds ``text_a`` with its
answer and the user asks ``text_b``; serving ``a``'s answer is right for a duplicate pair and
wrong otherwise. The pairs are split 50/50 into dev and test with a fixed seed, grouped by
``text_a`` so no question is in both. The threshold is calibrated on dev only: the lowest
threshold (most hits) whose dev false-hit rate is <= 0.015, leaving room for test to stay
<= 0.02.

* false-hit rate = wrong hits / non-duplicate lookups: how often a question that must go
  upstream is answered from the cache instead (a wrong answer served). It does not depend on
  how many lookups are repeats. hit rate = right hits / duplicate lookups: how often a
  question that could be served is served. ``precision`` = right hits / all hits is reported
  too; on QQP it is bounded by label noise (many pairs labelled non-duplicate are
  paraphrases, e.g. "What could be done to …" / "What can be done to …").

Figures (``{"figures": {...}}`` in OUT, and a table on stdout):

* ``qqp_threshold`` (the shipped default), ``qqp_test_false_hit_rate``, ``qqp_test_hit_rate``
  — at the default threshold, every guard on, the local embedder (all-MiniLM-L6-v2 int8);
  ``qqp_dev_calibrated_threshold`` and ``qqp_test_*_calibrated``: this run's own calibration.
* ``qqp_guard_<name>_*`` — each guard alone, and ``qqp_no_guards_*`` — the threshold alone
  recalibrated on dev, so each guard's contribution is measured at the same false-hit budget.
* the precision/recall curve (printed; in OUT under ``curve``).
* Retrieval protocol (GPTCache's own benchmark method): every test ``text_a`` is put into one
  cache, each ``text_b`` is looked up, and a hit is right only if it returns a question known to
  be a duplicate. ``qqp_retrieval_test_false_hit_rate`` / ``_hit_rate`` for haikucache (its
  vector index and guards), and ``gptcache_qqp_test_hit_rate_at_same_fhr``: GPTCache 0.1.44's
  own pipeline (``gptcache.adapter.api`` put/get, SQLite + faiss, ``SearchDistanceEvaluation``)
  with the same embedder, its threshold swept to the highest hit rate whose false-hit rate is
  at most haikucache's.
* ``mock_data_recall``: all 999 origins in one cache, each paraphrase looked up: the share
  served with its own origin (``mock_data_false_hits``: served with another).
* The verification stage (``SemanticConfig(verifier=...)``, default the lexical contrast checks
  of ``haikucache._verify``): every QQP figure above is for the shipped default (guards *and*
  verifier); ``qqp_guards_only_test_*`` are the same threshold without the verifier (what
  haikucache did before it), and ``verify_p50_ms`` is the verifier's time per candidate
  (median over QQP test and trap pairs, its per-text cache cleared: a cold pair).
* The trap set (``benchmarks/data/traps.jsonl``, written for this project, Apache-2.0; see its
  README): pairs that fool embeddings (antonyms, negating prefixes, negation, direction,
  comparatives, times, units, scope) and paraphrases that must hit, split into ``dev`` (used
  to write the verifier) and ``heldout`` (never tuned on). ``trap_false_hit_rate_<split>`` =
  traps served / traps (a trap served is a wrong answer), ``trap_paraphrase_hit_rate_<split>``
  = paraphrases served / paraphrases, with the default config; ``..._guards_only`` without
  the verifier, per category under ``traps`` in OUT.
* The error bound (``SemanticConfig(max_false_hit_rate=δ)``): ``bound_<δ>_*`` replays the QQP
  test pairs as one stream (fixed-seed order; the cache holds ``text_a``, ``text_b`` is asked)
  through ``SemanticIndex.decide`` with the threshold floor at ``BOUND_FLOOR``; a labelled or
  sampled outcome is the pair's QQP label (standing in for the comparison of the cached
  answer with the fresh one). ``served_wrong_share`` (wrong hits / hits: what δ bounds),
  ``false_hit_rate``, ``hit_rate``, ``precision``, the learned threshold at the end, and the
  upstream calls spent on sampled hits.
* ``qqp_rerank_test_*_at_dev_hit_0.20``: a second-stage score (cosine and lexical features of
  the pair, a logistic regression fitted on dev) cut where its dev hit rate is 0.20, measured
  on test; ``qqp_cosine_test_*`` the cosine alone, cut the same way.
* ``judge_usd_per_verdict``: what one ``HaikuJudge`` verdict costs at Haiku 4.5 prices, from
  the emulator's bill over trap pairs (the emulator's replies are not judgements: cost only).
* ``embed_ms_per_question`` (one short question per call) and ``semantic_lookup_p50_ms_100k``
  (index search only, no embedding: 100k random unit 384-d vectors in one partition, numpy
  exact; ``..._usearch`` with the ANN index, full runs only). :func:`semantic_lookup_p50_ms`
  can be called from other benchmarks.

``--quick`` uses 2,500 dev and 2,500 test pairs and finishes in a few minutes once the
embeddings are cached (embedding them takes about 6 minutes on a busy 2-core machine; a full
run embeds 160k questions). ``--sample N`` picks another size.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import random
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from haikucache._embed_local import LocalEmbedder
from haikucache._semantic import (
    DEFAULT_THRESHOLD,
    GUARDS,
    SemanticConfig,
    SemanticIndex,
    SemanticMatch,
    calibrate_threshold,
    check_guards,
)
from haikucache._verify import HaikuJudge, LexicalVerifier, _read

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gptcache-qqp"
TRAPS = Path(__file__).resolve().parent / "data" / "traps.jsonl"
SEED = 20260422
DEV_BUDGET = 0.01
BOUND_DELTAS = (0.05, 0.1, 0.15)
BOUND_FLOOR = 0.8
VERIFIER = LexicalVerifier()


# --------------------------------------------------------------------------- data


def load_pairs(data: Path) -> list[tuple[str, str, int]]:
    raw = json.loads((data / "similiar_qqp_full.json").read_text(encoding="utf-8"))
    return [(p["text_a"], p["text_b"], int(p["label"])) for p in raw]


def split(
    pairs: list[tuple[str, str, int]], *, sample: int | None
) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """Dev and test, 50/50 by ``text_a`` group, fixed seed; ``sample`` pairs of each."""
    groups: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for pair in pairs:
        groups[pair[0]].append(pair)
    names = sorted(groups)
    rng = random.Random(SEED)
    rng.shuffle(names)
    half = len(names) // 2
    dev = [p for n in names[:half] for p in groups[n]]
    test = [p for n in names[half:] for p in groups[n]]
    if sample is not None:
        dev = rng.sample(dev, min(sample, len(dev)))
        test = rng.sample(test, min(sample, len(test)))
    return dev, test


class Vectors:
    """Embeddings of every text needed, computed once (batched).

    With ``cache_dir`` they are kept in a file named by a hash of the texts and the model, so
    a re-run does not embed again (outside the repository: the data is never copied in).
    """

    def __init__(
        self, embedder: LocalEmbedder, texts: set[str], cache_dir: Path | None = None
    ) -> None:
        ordered = sorted(texts)
        digest = hashlib.sha256(
            "\x00".join([embedder.name, *ordered]).encode("utf-8", "surrogatepass")
        ).hexdigest()[:16]
        path = None if cache_dir is None else cache_dir / f"bench-semantic-{digest}.npy"
        started = time.perf_counter()
        if path is not None and path.is_file():
            matrix = np.load(path)
        else:
            matrix = embedder.embed(ordered)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, matrix)
        self.seconds = time.perf_counter() - started
        self.row = {t: i for i, t in enumerate(ordered)}
        self.matrix = np.asarray(matrix, dtype=np.float32)

    def __getitem__(self, text: str) -> np.ndarray:
        return self.matrix[self.row[text]]

    def sims(self, pairs: list[tuple[str, str, int]]) -> np.ndarray:
        a = self.matrix[[self.row[p[0]] for p in pairs]]
        b = self.matrix[[self.row[p[1]] for p in pairs]]
        return np.einsum("ij,ij->i", a, b)


# --------------------------------------------------------------------------- pairwise


def guarded(
    pairs: list[tuple[str, str, int]],
    sims: np.ndarray,
    guards: tuple[str, ...],
    *,
    verify: bool = True,
) -> np.ndarray:
    """Scores with pairs a guard (or, with ``verify``, the verifier) rejects at -inf."""
    out = sims.astype(np.float64).copy()
    for i, (a, b, _) in enumerate(pairs):
        refused = guards and check_guards(b, a, guards) is not None
        if refused or (verify and VERIFIER.verify(b, a) is not None):
            out[i] = -math.inf
    return out


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    served = scores >= threshold
    right = int((served & labels).sum())
    wrong = int((served & ~labels).sum())
    hits = right + wrong
    return {
        "false_hit_rate": wrong / max(int((~labels).sum()), 1),
        "hit_rate": right / max(int(labels.sum()), 1),
        "precision": right / hits if hits else 1.0,
        "hits": hits,
    }


def curve(scores: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    points = []
    for t in [0.70, 0.75, 0.80, 0.83, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98]:
        r = rates(scores, labels, t)
        points.append(
            {
                "threshold": t,
                "precision": r["precision"],
                "recall": r["hit_rate"],
                "false_hit_rate": r["false_hit_rate"],
            }
        )
    return points


# --------------------------------------------------------------------------- a lexical rerank
# Does a second-stage score beat the cosine on QQP? Lexical features of a candidate pair that
# passed the threshold floor, the guards and the verifier, combined with the cosine by a
# logistic regression fitted on dev; the cut is chosen on dev (the score whose dev hit rate is
# RERANK_HIT_RATE) and measured on test, beside the cosine alone cut the same way.

RERANK_FLOOR = 0.9
RERANK_HIT_RATE = 0.20
_FUNCTION_WORDS = frozenset(
    re.findall(
        r"\w+",
        "a an the of to in on at for from by with about into over after before under between "
        "is are was were be been being am do does did can could will would shall should may "
        "might must have has had i me my we us our you your he him his she her it its they "
        "them their this that these those there here what which who whom whose when where why "
        "how and or but if then so than as not no any some all each every one just very "
        "really also too more most much many such own get got make made way thing",
    )
)


def _content(text: str) -> list[str]:
    words = (
        w[:-1] if len(w) > 3 and w.endswith("s") else w
        for w in re.findall(r"[a-z0-9]+", text.lower())
    )
    return [w for w in words if w not in _FUNCTION_WORDS]


def rerank_features(a: str, b: str, cosine: float) -> list[float]:
    """Cosine, content-word overlap, unmatched content words, lengths, character similarity."""
    ca, cb = _content(a), _content(b)
    sa, sb = set(ca), set(cb)
    only_a, only_b = len(sa - sb), len(sb - sa)
    union = len(sa | sb) or 1
    return [
        cosine,
        len(sa & sb) / union,
        float(only_a + only_b),
        float(max(only_a, only_b)),
        (only_a + only_b) / union,
        float(abs(a.count("?") - b.count("?"))),
        difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio(),
        float(min(len(sa), len(sb))),
        float(abs(len(a.split()) - len(b.split()))),
    ]


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Newton's method on an L2-penalised logistic loss (standardised features + bias)."""
    z = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = l2 * len(x) * np.r_[np.ones(z.shape[1] - 1), 0.0]
    for _ in range(30):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        w -= np.linalg.solve(hessian, gradient)
    return w


def rerank_figures(
    dev: list[tuple[str, str, int]],
    dev_scores: np.ndarray,
    test: list[tuple[str, str, int]],
    test_scores: np.ndarray,
) -> dict[str, float]:
    """Test precision and false-hit rate of the rerank and of the cosine, both cut on dev."""

    def table(pairs: list[tuple[str, str, int]], scores: np.ndarray) -> tuple[Any, Any, Any]:
        rows = np.flatnonzero(scores >= RERANK_FLOOR)
        x = np.array([rerank_features(pairs[i][0], pairs[i][1], scores[i]) for i in rows])
        y = np.array([pairs[i][2] for i in rows], dtype=float)
        return x, y, sum(p[2] for p in pairs)

    x_dev, y_dev, pos_dev = table(dev, dev_scores)
    x_test, y_test, pos_test = table(test, test_scores)
    mean, std = x_dev.mean(0), x_dev.std(0) + 1e-9
    w = _fit_logistic((x_dev - mean) / std, y_dev)
    out: dict[str, float] = {}
    for name, score_dev, score_test in (
        ("rerank", ((x_dev - mean) / std) @ w[:-1], ((x_test - mean) / std) @ w[:-1]),
        ("cosine", x_dev[:, 0], x_test[:, 0]),
    ):
        order = np.argsort(-score_dev)
        k = int(np.searchsorted(np.cumsum(y_dev[order]), RERANK_HIT_RATE * pos_dev))
        cut = score_dev[order][min(k, len(order) - 1)]
        served = score_test >= cut
        right, wrong = float(y_test[served].sum()), float((1 - y_test[served]).sum())
        out[f"qqp_{name}_test_precision_at_dev_hit_0.20"] = right / max(right + wrong, 1)
        out[f"qqp_{name}_test_hit_rate_at_dev_hit_0.20"] = right / max(pos_test, 1)
        out[f"qqp_{name}_test_false_hit_rate_at_dev_hit_0.20"] = wrong / max(
            len(test) - pos_test, 1
        )
    return out


# --------------------------------------------------------------------------- retrieval


def known_duplicates(pairs: list[tuple[str, str, int]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b, label in pairs if label == 1} | {
        (b, a) for a, b, label in pairs if label == 1
    }


def retrieval_ours(
    cached: list[str],
    queries: list[tuple[str, str]],
    vectors: Vectors,
    duplicates: set[tuple[str, str]],
    threshold: float,
    guards: tuple[str, ...],
) -> dict[str, float]:
    """haikucache's index and guards, one partition holding every cached question."""
    config = SemanticConfig(embedder=lambda texts: [], threshold=threshold, guards=guards)
    index = SemanticIndex(config)
    for text in cached:
        index.add("p", text, vectors[text], text, None)
    right = wrong = 0
    for query, _ in queries:
        match = index.select(query, index.search("p", vectors[query], now=0.0))
        if match is None:
            continue
        if match.key == query or (match.key, query) in duplicates:
            right += 1
        else:
            wrong += 1
    servable = sum(1 for q, own in queries if own == q or (own, q) in duplicates)
    return {
        "false_hit_rate": wrong / max(len(queries) - servable, 1),
        "hit_rate": right / max(servable, 1),
        "right": right,
        "wrong": wrong,
    }


def retrieval_gptcache(
    cached: list[str],
    queries: list[tuple[str, str]],
    vectors: Vectors,
    duplicates: set[tuple[str, str]],
    max_false_hit_rate: float,
    confirm: int = 500,
) -> dict[str, float]:
    """GPTCache's own pipeline with the same embedder; threshold swept to the FHR budget.

    One pass at threshold 0 records the score GPTCache's ``SearchDistanceEvaluation`` gives
    each candidate (the pipeline serves the best-scored candidate at or above the threshold,
    so every threshold's outcome follows); at the chosen threshold the first ``confirm``
    lookups are re-run through ``get`` to check that the derived outcomes are the real ones.
    """
    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    class Recording(SearchDistanceEvaluation):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.best = -math.inf

        def evaluation(self, src_dict: Any, cache_dict: Any, **kw: Any) -> float:
            score = float(super().evaluation(src_dict, cache_dict, **kw))
            self.best = max(self.best, score)
            return score

    # GPTCache commits to SQLite on every read (hit counts): keep it off the disk.
    shm = Path("/dev/shm")
    workdir = tempfile.mkdtemp(prefix="bench-gptcache-", dir=shm if shm.is_dir() else None)
    evaluation = Recording()
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda text, **_: vectors[text],
        data_manager=get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{workdir}/cache.db"),
            # GPTCache's default vector store (its usearch store is broken on usearch 2.x).
            VectorBase(
                "faiss",
                index_path=f"{workdir}/faiss.index",
                dimension=int(vectors.matrix.shape[1]),
                top_k=5,
            ),
            # Its default keeps 1,000 entries (LRU): every cached question must stay.
            max_size=2 * len(cached) + 1_000,
        ),
        similarity_evaluation=evaluation,
        config=Config(similarity_threshold=0.0),
    )
    for text in cached:
        put(text, text, cache_obj=cache)
    served: list[tuple[float, str | None]] = []
    for query, _ in queries:
        evaluation.best = -math.inf
        # top_k=1: with SearchDistanceEvaluation the nearest candidate always scores best,
        # so GPTCache's default of 5 changes nothing but the time (each is a SQLite read).
        answer = get(query, cache_obj=cache, top_k=1)
        served.append((evaluation.best, answer))
    servable = sum(1 for q, own in queries if own == q or (own, q) in duplicates)
    outcomes = sorted(
        (
            (score, answer == query or (answer, query) in duplicates)
            for (score, answer), (query, _) in zip(served, queries, strict=True)
            if answer is not None
        ),
        key=lambda x: -x[0],
    )
    best = {"threshold": 1.0, "false_hit_rate": 0.0, "hit_rate": 0.0}
    right = wrong = 0
    for i, (score, ok) in enumerate(outcomes):
        right += ok
        wrong += not ok
        if i + 1 < len(outcomes) and outcomes[i + 1][0] == score:
            continue
        fhr = wrong / max(len(queries) - servable, 1)
        if fhr <= max_false_hit_rate and right / max(servable, 1) > best["hit_rate"]:
            best = {
                "threshold": score / 4.0,  # GPTCache scales its threshold by the score range
                "false_hit_rate": fhr,
                "hit_rate": right / max(servable, 1),
            }
    # Confirm with the real pipeline at the chosen threshold (its default top_k of 5) that
    # every outcome is the one derived from the recorded scores.
    cache.config.similarity_threshold = best["threshold"]
    mismatches = 0
    for (score, answer), (query, _) in list(zip(served, queries, strict=True))[:confirm]:
        expected = answer if score >= 4.0 * best["threshold"] else None
        mismatches += get(query, cache_obj=cache) != expected
    best["confirmed_lookups"] = min(confirm, len(queries))
    best["confirmed_mismatches"] = mismatches
    return best


# --------------------------------------------------------------------------- traps


def load_traps(path: Path = TRAPS) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def trap_figures(
    traps: list[dict[str, str]], vectors: Vectors, threshold: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """Served shares of traps and paraphrases, per split, with and without the verifier."""
    figures: dict[str, float] = {}
    detail: dict[str, Any] = {}
    for split_name in ("dev", "heldout"):
        rows = [r for r in traps if r["split"] == split_name]
        for variant, verify in (("", True), ("_guards_only", False)):
            served: dict[str, list[bool]] = defaultdict(list)
            for r in rows:
                similarity = float(vectors[r["a"]] @ vectors[r["b"]])
                ok = similarity >= threshold and check_guards(r["b"], r["a"]) is None
                if ok and verify:
                    ok = VERIFIER.verify(r["b"], r["a"]) is None
                served[r["category"]].append(ok)
            trap_rows = [x for c, xs in served.items() if c != "paraphrase" for x in xs]
            paraphrases = served.get("paraphrase", [])
            figures[f"trap_false_hit_rate_{split_name}{variant}"] = float(np.mean(trap_rows))
            figures[f"trap_paraphrase_hit_rate_{split_name}{variant}"] = float(np.mean(paraphrases))
            detail[f"{split_name}{variant}"] = {
                c: {"pairs": len(xs), "served": float(np.mean(xs))}
                for c, xs in sorted(served.items())
            }
        figures[f"trap_pairs_{split_name}"] = sum(r["label"] == "different" for r in rows)
        figures[f"trap_paraphrases_{split_name}"] = sum(r["label"] == "same" for r in rows)
    return figures, detail


def verify_p50_ms(pairs: list[tuple[str, str]]) -> float:
    """Median time of one verification, each pair seen for the first time (cold cache)."""
    times = []
    for a, b in pairs:
        _read.cache_clear()
        started = time.perf_counter()
        VERIFIER.verify(b, a)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# --------------------------------------------------------------------------- error bound


def bound_replay(
    pairs: list[tuple[str, str, int]], sims: np.ndarray, delta: float, *, sample_rate: float = 0.05
) -> dict[str, float]:
    """The QQP pairs as one stream through ``SemanticIndex.decide`` under an error bound.

    Each pair is one lookup with one candidate (its ``text_a``); what the pipeline would do
    with the decision is simulated: a served hit is right or wrong by the pair's label, a
    labelled or sampled candidate reports that label as its outcome.
    """
    config = SemanticConfig(
        embedder=lambda texts: [],
        threshold=BOUND_FLOOR,
        max_false_hit_rate=delta,
        sample_rate=sample_rate,
        seed=SEED,
    )
    index = SemanticIndex(config)
    order = list(range(len(pairs)))
    random.Random(SEED).shuffle(order)
    served = wrong = sampled = labelled = 0
    for i in order:
        a, b, label = pairs[i]
        decision = index.decide(b, [SemanticMatch(a, float(sims[i]), a)])
        if decision.serve is not None and not decision.sampled:
            served += 1
            wrong += label == 0
        if decision.label is not None:
            sampled += decision.sampled
            labelled += not decision.sampled
            index.record_outcome(decision.label, label == 1, sampled=decision.sampled)
    positives = sum(p[2] for p in pairs)
    negatives = len(pairs) - positives
    return {
        "served": served,
        "served_wrong_share": wrong / served if served else 0.0,
        "precision": 1 - wrong / served if served else 1.0,
        "false_hit_rate": wrong / max(negatives, 1),
        "hit_rate": (served - wrong) / max(positives, 1),
        "sampled_upstream_calls": sampled,
        "labelled_misses": labelled,
        "final_threshold": index.learned_threshold(),
    }


# --------------------------------------------------------------------------- judge


def judge_cost(traps: list[dict[str, str]], n: int = 40) -> dict[str, float]:
    """What ``HaikuJudge`` verdicts cost, billed by the emulator at Haiku 4.5 prices."""
    from haikucache import Client, Engine, MemoryLedger
    from haikucache.testing import Emulator

    emulator = Emulator()
    ledger = MemoryLedger()
    engine = Engine(store=None, ledger=ledger)
    with Client(
        api_key="sk-bench",
        base_url="http://emulator.local",
        transport=emulator.transport(),
        engine=engine,
    ) as client:
        judge = HaikuJudge(client)
        for r in traps[:n]:
            judge.verify(r["b"], r["a"])
    inputs = [e.tokens.input for e in ledger.entries]
    return {
        "judge_usd_per_verdict": judge.cost_usd / max(judge.calls, 1),
        "judge_input_tokens_per_verdict": float(np.mean(inputs)) if inputs else 0.0,
        "judge_max_tokens": float(judge.max_tokens),
    }


# --------------------------------------------------------------------------- latency


def semantic_lookup_p50_ms(
    n: int = 100_000, dim: int = 384, *, index: str = "numpy", repeats: int = 200, seed: int = 7
) -> float:
    """p50 of one index search in a partition of ``n`` random unit vectors (no embedding)."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    config = SemanticConfig(embedder=lambda texts: [], index=index)
    semantic = SemanticIndex(config)
    for i in range(n):
        semantic.add("p", f"k{i}", matrix[i], "q", None)
    times = []
    for r in range(repeats):
        query = matrix[(r * 7919) % n] + 0.05 * rng.standard_normal(dim, dtype=np.float32)
        query /= np.linalg.norm(query)
        started = time.perf_counter()
        semantic.search("p", query.astype(np.float32), now=0.0)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def embed_ms(embedder: LocalEmbedder, questions: list[str]) -> float:
    for q in questions[:5]:
        embedder.embed([q])
    times = []
    for q in questions:
        started = time.perf_counter()
        embedder.embed([q])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# --------------------------------------------------------------------------- main


def run(
    data: Path, *, quick: bool, sample: int | None = None, cache_dir: Path | None = None
) -> dict[str, Any]:
    embedder = LocalEmbedder()
    pairs = load_pairs(data)
    dev, test = split(pairs, sample=sample if sample is not None else (2_500 if quick else None))
    mock = json.loads((data / "mock_data.json").read_text(encoding="utf-8"))
    traps = load_traps()
    texts = (
        {t for p in dev + test for t in p[:2]}
        | {m["origin"] for m in mock}
        | {m["similar"] for m in mock}
    )
    print(f"embedding {len(texts):,} texts …", file=sys.stderr)
    vectors = Vectors(embedder, texts, cache_dir)
    print(f"  {vectors.seconds:.0f} s", file=sys.stderr)
    figures: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    dev_labels = np.array([p[2] == 1 for p in dev])
    test_labels = np.array([p[2] == 1 for p in test])
    dev_sims, test_sims = vectors.sims(dev), vectors.sims(test)

    # name -> (guards, verifier on)
    variants: dict[str, tuple[tuple[str, ...], bool]] = {
        "all_guards": (GUARDS, True),
        "guards_only": (GUARDS, False),
        "verifier_only": ((), True),
        "no_guards": ((), False),
    }
    variants.update({f"guard_{g}": ((g,), False) for g in GUARDS})
    variants.update({f"all_but_{g}": (tuple(x for x in GUARDS if x != g), True) for g in GUARDS})
    results: dict[str, dict[str, float]] = {}
    for name, (guards, verify) in variants.items():
        dev_scores = guarded(dev, dev_sims, guards, verify=verify)
        threshold, _, _ = calibrate_threshold(
            dev_scores.tolist(), dev_labels.tolist(), max_false_hit_rate=DEV_BUDGET
        )
        test_scores = guarded(test, test_sims, guards, verify=verify)
        r = rates(test_scores, test_labels, threshold)
        rejected = float(np.mean(np.isinf(test_scores)))
        results[name] = {"threshold": threshold, **r, "rejected_by_guards": rejected}
        if name == "all_guards":
            extra["curve_dev"] = curve(dev_scores, dev_labels)
            extra["curve_test"] = curve(test_scores, test_labels)
            # Guards alone, at the all-guards threshold: what each one removes.
            for g in GUARDS:
                alone = guarded(test, test_sims, tuple(x for x in GUARDS if x != g))
                r2 = rates(alone, test_labels, threshold)
                figures[f"qqp_without_{g}_false_hit_rate_same_threshold"] = r2["false_hit_rate"]
                figures[f"qqp_without_{g}_hit_rate_same_threshold"] = r2["hit_rate"]
    calibrated = results["all_guards"]
    figures["qqp_dev_calibrated_threshold"] = calibrated["threshold"]
    figures["qqp_test_false_hit_rate_calibrated"] = calibrated["false_hit_rate"]
    figures["qqp_test_hit_rate_calibrated"] = calibrated["hit_rate"]
    figures["qqp_test_precision_calibrated"] = calibrated["precision"]
    # The headline: what users get, at the shipped default threshold (guards and verifier).
    default = rates(guarded(test, test_sims, GUARDS), test_labels, DEFAULT_THRESHOLD)
    before = rates(guarded(test, test_sims, GUARDS, verify=False), test_labels, DEFAULT_THRESHOLD)
    best = {"threshold": DEFAULT_THRESHOLD, **default}
    figures["qqp_threshold"] = DEFAULT_THRESHOLD
    figures["qqp_test_false_hit_rate"] = default["false_hit_rate"]
    figures["qqp_test_precision"] = default["precision"]
    figures["qqp_test_hit_rate"] = default["hit_rate"]
    figures["qqp_guards_only_test_false_hit_rate"] = before["false_hit_rate"]
    figures["qqp_guards_only_test_precision"] = before["precision"]
    figures["qqp_guards_only_test_hit_rate"] = before["hit_rate"]
    dev_default = rates(guarded(dev, dev_sims, GUARDS), dev_labels, DEFAULT_THRESHOLD)
    figures["qqp_dev_false_hit_rate"] = dev_default["false_hit_rate"]
    figures["qqp_dev_precision"] = dev_default["precision"]
    figures["qqp_dev_hit_rate"] = dev_default["hit_rate"]
    for name, r in results.items():
        if name == "all_guards":
            continue
        figures[f"qqp_{name}_threshold"] = r["threshold"]
        figures[f"qqp_{name}_false_hit_rate"] = r["false_hit_rate"]
        figures[f"qqp_{name}_hit_rate"] = r["hit_rate"]
        figures[f"qqp_{name}_precision"] = r["precision"]
    figures.update(
        rerank_figures(dev, guarded(dev, dev_sims, GUARDS), test, guarded(test, test_sims, GUARDS))
    )
    figures["qqp_dev_pairs"] = len(dev)
    figures["qqp_test_pairs"] = len(test)

    # The trap set, at the default threshold.
    trap_vectors = Vectors(embedder, {t for r in traps for t in (r["a"], r["b"])}, cache_dir)
    trap_numbers, extra["traps"] = trap_figures(traps, trap_vectors, DEFAULT_THRESHOLD)
    figures.update(trap_numbers)
    figures["verify_p50_ms"] = verify_p50_ms(
        [(a, b) for a, b, _ in test[:2_000]] + [(r["a"], r["b"]) for r in traps]
    )

    # The error bound, replayed over the test pairs.
    extra["bound"] = {}
    for delta in BOUND_DELTAS:
        replay = bound_replay(test, test_sims, delta)
        extra["bound"][str(delta)] = replay
        for key in ("served_wrong_share", "false_hit_rate", "hit_rate", "precision"):
            figures[f"bound_{delta}_{key}"] = replay[key]
        figures[f"bound_{delta}_final_threshold"] = replay["final_threshold"]
        figures[f"bound_{delta}_sampled_upstream_calls"] = replay["sampled_upstream_calls"]
    figures.update(judge_cost([r for r in traps if r["split"] == "dev"]))

    print(
        f"pairwise: threshold {best['threshold']:.4f}, test false-hit rate "
        f"{best['false_hit_rate']:.4f}, hit rate {best['hit_rate']:.4f}",
        file=sys.stderr,
    )
    # Retrieval protocol on test, ours and GPTCache's pipeline.
    duplicates = known_duplicates(pairs)
    cached = sorted({a for a, _, _ in test})
    queries = [(b, a) for a, b, _ in test]
    ours = retrieval_ours(cached, queries, vectors, duplicates, best["threshold"], GUARDS)
    figures["qqp_retrieval_test_false_hit_rate"] = ours["false_hit_rate"]
    figures["qqp_retrieval_test_hit_rate"] = ours["hit_rate"]
    theirs = retrieval_gptcache(cached, queries, vectors, duplicates, ours["false_hit_rate"])
    figures["gptcache_qqp_test_hit_rate_at_same_fhr"] = theirs["hit_rate"]
    figures["gptcache_qqp_test_false_hit_rate"] = theirs["false_hit_rate"]
    figures["gptcache_qqp_test_threshold"] = theirs["threshold"]
    figures["gptcache_pipeline_confirmed_lookups"] = theirs["confirmed_lookups"]
    figures["gptcache_pipeline_confirmed_mismatches"] = theirs["confirmed_mismatches"]

    origins = [m["origin"] for m in mock]
    mock_queries = [(m["similar"], m["origin"]) for m in mock]
    mock_dups = {(m["origin"], m["similar"]) for m in mock}
    mock_result = retrieval_ours(
        origins, mock_queries, vectors, mock_dups, best["threshold"], GUARDS
    )
    figures["mock_data_recall"] = mock_result["right"] / len(mock)
    figures["mock_data_false_hits"] = mock_result["wrong"]

    questions = [b for _, b, _ in test[:200]]
    figures["embed_ms_per_question"] = embed_ms(embedder, questions)
    figures["semantic_lookup_p50_ms_100k"] = semantic_lookup_p50_ms(100_000)
    figures["semantic_lookup_p50_ms_10k"] = semantic_lookup_p50_ms(10_000)
    if not quick:
        figures["semantic_lookup_p50_ms_100k_usearch"] = semantic_lookup_p50_ms(
            100_000, index="usearch"
        )
    return {"figures": figures, "curve": extra, "variants": results}


def show(result: dict[str, Any]) -> None:
    figures = result["figures"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for k, v in figures.items():
            print(f"{k:55s} {v}")
        return
    console = Console()
    table = Table(title="QQP test, all guards: precision, recall (hit rate), false-hit rate")
    for col in ("threshold", "precision", "hit rate (recall)", "false-hit rate"):
        table.add_column(col, justify="right")
    for p in result["curve"]["curve_test"]:
        table.add_row(
            f"{p['threshold']:.2f}",
            f"{p['precision']:.3f}",
            f"{p['recall']:.3f}",
            f"{p['false_hit_rate']:.3f}",
        )
    console.print(table)
    table = Table(title="Guards and verifier: each calibrated on dev to the same false-hit budget")
    for col in (
        "variant",
        "threshold",
        "test false-hit rate",
        "test precision",
        "test hit rate",
        "rejected",
    ):
        table.add_column(col, justify="right")
    for name, r in result["variants"].items():
        table.add_row(
            name,
            f"{r['threshold']:.4f}",
            f"{r['false_hit_rate']:.4f}",
            f"{r['precision']:.4f}",
            f"{r['hit_rate']:.4f}",
            f"{r['rejected_by_guards']:.3f}",
        )
    console.print(table)
    table = Table(
        title=f"Trap set at the default threshold {figures['qqp_threshold']}: share served"
    )
    for col in ("category", "dev", "dev, guards only", "held out", "held out, guards only"):
        table.add_column(col, justify="right")
    traps = result["curve"]["traps"]
    for category in traps["dev"]:
        table.add_row(
            category,
            *(
                f"{traps[k][category]['served']:.3f}" if category in traps[k] else "-"
                for k in ("dev", "dev_guards_only", "heldout", "heldout_guards_only")
            ),
        )
    console.print(table)
    table = Table(title="Error bound: QQP test replayed as one stream (floor 0.8, 5 % sampled)")
    for col in (
        "δ",
        "wrong share of hits",
        "false-hit rate",
        "precision",
        "hit rate",
        "final threshold",
        "sampled upstream calls",
    ):
        table.add_column(col, justify="right")
    for delta, r in result["curve"]["bound"].items():
        table.add_row(
            delta,
            f"{r['served_wrong_share']:.4f}",
            f"{r['false_hit_rate']:.4f}",
            f"{r['precision']:.4f}",
            f"{r['hit_rate']:.4f}",
            f"{r['final_threshold']:.3f}",
            str(r["sampled_upstream_calls"]),
        )
    console.print(table)
    table = Table(title="Figures")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="a subsample: a few minutes")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the gptcache-qqp folder")
    parser.add_argument(
        "--embed-cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "haikucache-bench",
        help="where embeddings are kept between runs (default: the system temp dir)",
    )
    parser.add_argument("--no-embed-cache", action="store_true", help="always embed afresh")
    parser.add_argument(
        "--sample", type=int, metavar="N", help="N dev and N test pairs (default: all; 2,500 quick)"
    )
    args = parser.parse_args(argv)
    if not (args.data / "similiar_qqp_full.json").is_file():
        parser.error(f"no similiar_qqp_full.json in {args.data} (see --data)")
    result = run(
        args.data,
        quick=args.quick,
        sample=args.sample,
        cache_dir=None if args.no_embed_cache else args.embed_cache,
    )
    show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
