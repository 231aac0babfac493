"""What real workloads cost through the emulator's bill, with haikucache and with its peers.

    python benchmarks/bench_cost.py --json OUT [--quick] [--seed N] [--seeds K]
                                    [--gaps 30s,3m,...] [--data DIR] [--png OUT.png]
                                    [--workers N] [--litellm-python PATH]

Five workloads (``_workloads.py``): ``tau_airline`` (τ-bench airline agent transcripts, 14
tools), ``bfcl`` (BFCL v4 live_multiple + multi_turn_base), ``rag_user`` (long shared
documents in the user turn, Zipf popularity), ``rag_system`` (the same documents and questions
with the document in the system prompt) and ``code_agent`` (a coding agent whose tool results
— files, grep hits, test logs — run to thousands of tokens). Each is replayed at arrival
regimes: sessions start 30 s, 3 min, 10 min, 30 min or 2 h apart on average (exponential,
seeded), or in a ``burst`` (session starts packed by the Mooncake trace's request-to-request
deltas, ~0.3 s: everything at once). ``--gaps`` picks other regimes (``7m,20m,45m,90m``).
Inside a session an agent step follows a tool result after 2–10 s, a human turn comes
8–150 s (log-uniform) after the answer. Time is simulated: a ``ManualClock`` is set to each
call's arrival time.

Both readings of an undocumented rule are measured: a cache read refreshes only the entry it
read (``deepest``, the emulator's default) or every entry on the request's path (``path``);
``Emulator(refresh=...)``.

Strategies:

* peers at their defaults and at their best documented setting (``_strategies.py``):
  ``none``, ``anthropic_auto`` / ``anthropic_auto_1h``, ``langchain_mw`` /
  ``langchain_mw_1h``, ``litellm`` / ``litellm_1h`` (system 1 h + last message 5 m);
* ``static_best`` — the cheapest, per cell and seed, of 48 fixed placements (markers on tools /
  system / documents / tail, each 5 m or 1 h): what an expert who knew the workload would
  configure, chosen in hindsight;
* ``haikucache`` — the product path: the *unmarked* request sent through
  ``haikucache.Client(engine=Engine(ledger=False, planner=Planner(policy="adaptive",
  clock=clock)))`` to a fresh ``Emulator(clock=clock, refresh=rule)`` per cell;
* ``oracle`` — the lower bound of ``_oracle.py``, asserted ≤ every other strategy.

haikucache's dollars are the emulator's bill. The peers and the 48 placements are replayed on
the emulator's own prompt cache and price function without the HTTP round trip
(``_strategies.Replay``); every peer and the winning placement of the first seed's first gap
are also run through the real emulator under both rules, and the two bills must agree (a
check in the output). Every call's output tokens come from the emulator.

Figures (``{"figures": {...}}`` in OUT), the mean over seeds: ``<workload>_<gap>_usd_<strategy>``
for every strategy and ``total_usd_<strategy>`` under ``deepest``; the same prefixed with
``refresh_path_`` under ``path``; per cell ``..._ratio_best_peer`` (haikucache ÷ the cheapest
peer configuration, ``none`` included), ``..._ratio_static_best`` and ``..._ratio_oracle``.

Targets, under both rules: haikucache ≤ every peer configuration in every cell, ≤ 1.02 ×
``static_best`` in every cell, total ≤ 1.05 × the oracle's total; and 8 sharing planners
within 1 % of one.

``--quick`` replays 30 τ runs, 150 + 30 BFCL lines, 100 questions over 12 documents per RAG
layout and 25 agent runs, one seed; the full run replays everything (200 τ runs, 1,053 + 200
BFCL lines, 400 questions over 40 documents, 100 agent runs) for three seeds (``--seeds``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _oracle
import _strategies
import _workloads
import haikucache
from _workloads import DEFAULT_GAPS, Workload
from haikucache.testing import Emulator, ManualClock
from haikucache.testing._request import parse_request
from haikucache.testing._tokenizer import Tokenizer

PEERS = tuple(_strategies.PEERS)
STRATEGIES = (*PEERS, "haikucache")  # what run_cell runs (besides ``static_*`` placements)
REPORTED = (*PEERS, "static_best", "haikucache")
ALL_STRATEGIES = (*REPORTED, "oracle")
WORKLOADS = ("tau_airline", "bfcl", "rag_user", "rag_system", "code_agent")
RULES = ("deepest", "path")
PREFIX = {"deepest": "", "path": "refresh_path_"}
BASE_TIME = 1_763_632_800.0  # 2025-11-20T10:00:00Z, the ManualClock default
SEED = 0
TARGET_BEST_PEER = 1.0
TARGET_STATIC_BEST = 1.02
TARGET_ORACLE = 1.05
FLEET = 8  # planners behind a load balancer, in the fleet cells
TARGET_FLEET = 0.01  # 8 planners sharing statistics cost within 1 % of one
DEFAULT_LITELLM_PYTHON = Path(__file__).resolve().parents[1] / ".cache/litellm-venv/bin/python"


@dataclass(frozen=True)
class Sizes:
    """How much of each workload to replay, and over how many seeds."""

    tau_runs: int | None
    bfcl_live: int | None
    bfcl_multi: int | None
    rag_documents: int
    rag_queries: int
    agent_sessions: int
    seeds: int


FULL = Sizes(None, None, None, 40, 400, 100, 3)
QUICK = Sizes(30, 150, 30, 12, 100, 25, 1)


@dataclass
class Suite:
    """Everything the cells need; built once in the parent, inherited by forked workers."""

    workloads: dict[tuple[str, int], Workload]  # by (name, seed)
    mooncake: list[float]
    seeds: tuple[int, ...]
    gaps: tuple[str, ...]
    prepared: dict[tuple[str, int], list[list[_strategies.Prepared]]] = field(default_factory=dict)


_SUITE: Suite | None = None


def load_suite(data: Path, sizes: Sizes, seeds: Sequence[int], gaps: Sequence[str]) -> Suite:
    mooncake = _workloads.load_mooncake_gaps(data / "mooncake-traces" / "conversation_trace.jsonl")
    workloads: dict[tuple[str, int], Workload] = {}
    for seed in seeds:
        built = [
            _workloads.load_tau(
                data / "tau-bench-trajectories" / "gpt-4o-airline.json",
                runs=sizes.tau_runs,
                seed=seed,
            ),
            _workloads.load_bfcl(
                data / "bfcl-function-calling",
                live=sizes.bfcl_live,
                multi=sizes.bfcl_multi,
                seed=seed,
            ),
            *(
                _workloads.make_rag(
                    documents=sizes.rag_documents,
                    queries=sizes.rag_queries,
                    seed=seed,
                    layout=layout,
                )
                for layout in _workloads.RAG_LAYOUTS
            ),
            _workloads.make_code_agent(sessions=sizes.agent_sessions, seed=seed),
        ]
        for w in built:
            workloads[(w.name, seed)] = w
    return Suite(workloads, mooncake, tuple(seeds), tuple(gaps))


# --------------------------------------------------------------------------- one cell


@dataclass
class CellResult:
    """What one strategy paid for one workload at one arrival regime."""

    workload: str
    gap: str
    strategy: str
    usd: float
    tokens: dict[str, int]
    outputs: list[int]  # output tokens per call, in (session, request) order
    calls: int
    seconds: float
    extra_bill_entries: int = 0
    seed: int = SEED
    refresh: str = "deepest"


def _planner(clock: ManualClock) -> Any:
    from haikucache._planner import Planner as PrivatePlanner

    # ``haikucache.Planner`` once it is re-exported; the private module has it until then.
    planner_cls: type[Any] = getattr(haikucache, "Planner", PrivatePlanner)
    return planner_cls(policy="adaptive", clock=clock)


def make_client(
    strategy: str, emu: Emulator, clock: ManualClock, planner: Any = None
) -> haikucache.Client:
    """The same HTTP path for every strategy; only haikucache's planner is on."""
    if strategy == "haikucache":
        chosen = planner if planner is not None else _planner(clock)
        engine = haikucache.Engine(ledger=False, clock=clock, planner=chosen)
    else:
        engine = haikucache.Engine(ledger=False, clock=clock, planner="off")
    return haikucache.Client(
        api_key="bench",
        base_url="http://emulator.bench",
        transport=emu.transport(),
        engine=engine,
        max_retries=0,
    )


def _marker(strategy: str) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    if strategy == "haikucache":
        return lambda body: body  # the product path gets the request unmarked
    if strategy.startswith("static_"):
        placement = next(
            p for p in _strategies.STATIC_PLACEMENTS if _strategies.static_name(p) == strategy
        )
        tok = Tokenizer()

        def mark(body: Mapping[str, Any]) -> Mapping[str, Any]:
            parsed = parse_request(
                dict(body), version="2023-06-01", endpoint="messages", tokenizer=tok
            )
            return _strategies.mark_static(body, placement, parsed.blocks)

        return mark
    return _strategies.PEERS[strategy]


def _result(
    workload: Workload,
    gap: str,
    strategy: str,
    emu: Emulator,
    outputs: Mapping[tuple[int, int], int],
    started: float,
    seed: int,
    refresh: str,
) -> CellResult:
    """What the emulator billed for one replayed cell."""
    return CellResult(
        workload=workload.name,
        gap=gap,
        strategy=strategy,
        usd=emu.bill.total_usd,
        tokens=emu.bill.tokens(),
        outputs=[outputs[k] for k in sorted(outputs)],
        calls=len(outputs),
        seconds=time.perf_counter() - started,
        extra_bill_entries=len(emu.bill) - len(outputs),
        seed=seed,
        refresh=refresh,
    )


def run_cell(
    workload: Workload,
    gap: str,
    strategy: str,
    mooncake: Sequence[float],
    *,
    seed: int = SEED,
    refresh: str = "deepest",
) -> CellResult:
    """Replay ``workload`` at regime ``gap`` with ``strategy`` on a fresh emulator."""
    started = time.perf_counter()
    clock = ManualClock(BASE_TIME)
    emu = Emulator(clock=clock, refresh=refresh)
    client = make_client(strategy, emu, clock)
    mark = _marker(strategy)
    outputs: dict[tuple[int, int], int] = {}
    for when, s, r in _workloads.arrivals(workload, gap, seed=seed, mooncake=mooncake):
        clock.set(BASE_TIME + when)
        body = workload.sessions[s].requests[r]
        message = client.messages.create(**mark(body))
        outputs[(s, r)] = int(message.usage.output_tokens)
        if strategy == "haikucache" and _strategies.count_markers(body) != 0:
            raise AssertionError("haikucache changed the caller's request in place")
    client.close()
    return _result(workload, gap, strategy, emu, outputs, started, seed, refresh)


def run_fleet_cell(
    workload: Workload,
    gap: str,
    mooncake: Sequence[float],
    *,
    seed: int = SEED,
    refresh: str = "deepest",
    planners: int = FLEET,
    shared: bool = True,
) -> CellResult:
    """haikucache behind a load balancer: ``planners`` engines, each with its own planner,
    take the calls round-robin; with ``shared`` their statistics meet in one ``DiskStore``."""
    from haikucache._planner import Planner, PrefixStats, SharedPrefixStats

    started = time.perf_counter()
    clock = ManualClock(BASE_TIME)
    emu = Emulator(clock=clock, refresh=refresh)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory:
        store = haikucache.DiskStore(directory) if shared else None
        clients = []
        for _ in range(planners):
            stats = SharedPrefixStats(store) if store is not None else PrefixStats()
            planner = Planner(policy="adaptive", clock=clock, stats=stats)
            clients.append(make_client("haikucache", emu, clock, planner))
        outputs: dict[tuple[int, int], int] = {}
        calls = _workloads.arrivals(workload, gap, seed=seed, mooncake=mooncake)
        for i, (when, s, r) in enumerate(calls):
            clock.set(BASE_TIME + when)
            message = clients[i % planners].messages.create(**workload.sessions[s].requests[r])
            outputs[(s, r)] = int(message.usage.output_tokens)
        for client in clients:
            client.close()
        if store is not None:
            store.close()
    strategy = f"haikucache_{planners}_{'shared' if shared else 'alone'}"
    return _result(workload, gap, strategy, emu, outputs, started, seed, refresh)


def prepare_workload(workload: Workload) -> list[list[_strategies.Prepared]]:
    """Every request parsed once, with every fixed placement's breakpoints, and its output
    tokens from an emulator (they depend only on the content, never on markers or time)."""
    tok = Tokenizer()
    clock = ManualClock(BASE_TIME)
    client = make_client("none", Emulator(clock=clock), clock)
    out = []
    for session in workload.sessions:
        row = []
        for body in session.requests:
            output = int(client.messages.create(**body).usage.output_tokens)
            row.append(_strategies.prepare(body, output, tok))
        out.append(row)
    client.close()
    return out


def replay_cell(
    workload: Workload,
    prepared: list[list[_strategies.Prepared]],
    gap: str,
    seed: int,
    mooncake: Sequence[float],
    refresh: str,
) -> tuple[dict[str, float], float]:
    """Every peer and fixed placement on the emulator's prompt cache; and the oracle."""
    calls = _workloads.arrivals(workload, gap, seed=seed, mooncake=mooncake)
    usd = {}
    for name in prepared[0][0].breakpoints:
        replay = _strategies.Replay(name, refresh)
        for when, s, r in calls:
            replay.send(prepared[s][r], BASE_TIME + when)
        usd[name] = replay.usd
    flats = [
        (
            when,
            _oracle.Flat(
                keys=tuple(b.key for b in prepared[s][r].blocks),
                prefix=tuple(b.prefix_tokens for b in prepared[s][r].blocks),
                total=prepared[s][r].total,
                min_tokens=prepared[s][r].min_tokens,
            ),
        )
        for when, s, r in calls
    ]
    outputs = sum(p.output_tokens for row in prepared for p in row)
    return usd, _oracle.oracle_usd(flats, outputs)


Task = tuple[str, str, int, str, str]  # (kind, workload, seed, gap, rule or strategy@rule)


def _task(task: Task) -> Any:
    kind, name, seed, gap, arg = task
    suite = _SUITE
    assert suite is not None
    workload = suite.workloads[(name, seed)]
    if kind == "prepare":
        return (task, prepare_workload(workload))
    if kind == "haikucache":
        return (task, run_cell(workload, gap, kind, suite.mooncake, seed=seed, refresh=arg))
    if kind == "replay":
        prepared = suite.prepared[(name, seed)]
        return (task, replay_cell(workload, prepared, gap, seed, suite.mooncake, arg))
    if kind == "check":
        strategy, rule = arg.split("@")
        return (task, run_cell(workload, gap, strategy, suite.mooncake, seed=seed, refresh=rule))
    if kind == "fleet":
        shared = arg == "shared"
        return (task, run_fleet_cell(workload, gap, suite.mooncake, seed=seed, shared=shared))
    raise ValueError(kind)


def _pool_map(tasks: list[Task], workers: int, take: Callable[[Any], None]) -> None:
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for item in pool.imap_unordered(_task, tasks):
                take(item)
    else:
        for task in tasks:
            take(_task(task))


# --------------------------------------------------------------------------- the run

Cell = tuple[str, str, str, str, int]  # (rule, workload, gap, strategy, seed)


@dataclass
class Report:
    """All cells of one run, per seed."""

    seeds: tuple[int, ...]
    gaps: tuple[str, ...]
    usd: dict[Cell, float] = field(default_factory=dict)
    static_choice: dict[tuple[str, str, str, int], str] = field(default_factory=dict)
    results: dict[Cell, CellResult] = field(default_factory=dict)
    replay_mismatches: dict[str, float] = field(default_factory=dict)
    output_mismatches: int = 0
    seconds: float = 0.0
    fleet: dict[tuple[str, str], float] = field(default_factory=dict)
    fleet_gap: str = ""

    def mean(self, rule: str, w: str, g: str, s: str) -> float:
        return sum(self.usd[(rule, w, g, s, seed)] for seed in self.seeds) / len(self.seeds)


def _log(done: int, total: int, text: str) -> None:
    print(f"  [{done:4d}/{total}] {text}", file=sys.stderr, flush=True)


def run(suite: Suite, *, workers: int) -> Report:
    global _SUITE
    _SUITE = suite
    started = time.perf_counter()
    report = Report(suite.seeds, suite.gaps)
    keys = [(w, seed) for seed in suite.seeds for w in WORKLOADS]
    weight = {k: suite.workloads[k].calls for k in keys}

    # 1. Every request parsed once; haikucache through the real emulator in every cell.
    tasks: list[Task] = [("prepare", w, seed, "", "") for w, seed in keys]
    tasks += [
        ("haikucache", w, seed, g, rule) for w, seed in keys for g in suite.gaps for rule in RULES
    ]
    tasks.sort(key=lambda t: -weight[(t[1], t[2])] * (3 if t[0] == "prepare" else 1))
    done, total = 0, len(tasks)

    def take(item: Any) -> None:
        nonlocal done
        done += 1
        (kind, w, seed, g, _), value = item
        if kind == "prepare":
            suite.prepared[(w, seed)] = value
            _log(done, total, f"{w:<12} seed {seed}: parsed")
            return
        cell: CellResult = value
        rule = cell.refresh
        report.results[(rule, w, g, cell.strategy, seed)] = cell
        if kind == "haikucache":
            report.usd[(rule, w, g, "haikucache", seed)] = cell.usd
        _log(
            done,
            total,
            f"{w:<12} seed {seed} {g:<6} {cell.strategy:<26} {rule:<8}"
            f" ${cell.usd:9.4f}  {cell.calls} calls  {cell.seconds:5.1f} s",
        )

    _pool_map(tasks, workers, take)

    # 2. Peers and the fixed placements, replayed (workers fork with the parsed requests).
    tasks = [("replay", w, seed, g, rule) for w, seed in keys for g in suite.gaps for rule in RULES]
    done, total = 0, len(tasks)

    def take_replay(item: Any) -> None:
        nonlocal done
        done += 1
        (_, w, seed, g, rule), (usd, oracle) = item
        for name in PEERS:
            report.usd[(rule, w, g, name, seed)] = usd[name]
        statics = {k: v for k, v in usd.items() if k.startswith("static_")}
        best = min(statics, key=lambda k: statics[k])
        report.usd[(rule, w, g, "static_best", seed)] = statics[best]
        report.static_choice[(rule, w, g, seed)] = best
        report.usd[(rule, w, g, "oracle", seed)] = oracle
        _log(done, total, f"{w:<12} seed {seed} {g:<6} {rule:<8} replayed (best {best})")

    _pool_map(tasks, workers, take_replay)

    # 3. The replay against the real emulator: every peer and the best placement, first
    # seed, first gap, both rules.
    seed, g = suite.seeds[0], suite.gaps[0]
    tasks = [
        ("check", w, seed, g, f"{s}@{rule}")
        for w in WORKLOADS
        for rule in RULES
        for s in (*PEERS, report.static_choice[(rule, w, g, seed)])
    ]
    # 4. A fleet: 8 planners fed round-robin, sharing their statistics or not, at the
    # first seed and the 10-minute regime (or the first one), rule ``deepest``.
    fleet_gap = "10m" if "10m" in suite.gaps else g
    report.fleet_gap = fleet_gap
    tasks += [("fleet", w, seed, fleet_gap, how) for w in WORKLOADS for how in ("shared", "alone")]
    done, total = 0, len(tasks)
    _pool_map(tasks, workers, take)
    for (rule, w, gap, s, sd), cell in report.results.items():
        if s.startswith("haikucache_"):
            report.fleet[(w, s)] = cell.usd
        elif s != "haikucache":
            replayed = report.usd[
                (rule, w, gap, "static_best" if s.startswith("static_") else s, sd)
            ]
            report.replay_mismatches[f"{rule}_{w}_{gap}_{s}"] = abs(cell.usd - replayed)
        reference = [p.output_tokens for row in suite.prepared[(w, sd)] for p in row]
        report.output_mismatches += sum(
            a != b for a, b in zip(reference, cell.outputs, strict=True)
        )
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------- figures


def best_peer(report: Report, rule: str, w: str, g: str) -> tuple[str, float]:
    return min(((s, report.mean(rule, w, g, s)) for s in PEERS), key=lambda x: x[1])


def figures_of(report: Report) -> dict[str, float]:
    figures: dict[str, float] = {}
    for rule in RULES:
        pre = PREFIX[rule]
        totals = dict.fromkeys(ALL_STRATEGIES, 0.0)
        for w in WORKLOADS:
            for g in report.gaps:
                for s in ALL_STRATEGIES:
                    usd = report.mean(rule, w, g, s)
                    figures[f"{pre}{w}_{g}_usd_{s}"] = usd
                    totals[s] += usd
                hc = report.mean(rule, w, g, "haikucache")
                figures[f"{pre}{w}_{g}_ratio_best_peer"] = hc / best_peer(report, rule, w, g)[1]
                figures[f"{pre}{w}_{g}_ratio_static_best"] = hc / report.mean(
                    rule, w, g, "static_best"
                )
                figures[f"{pre}{w}_{g}_ratio_oracle"] = hc / report.mean(rule, w, g, "oracle")
        for s in ALL_STRATEGIES:
            figures[f"{pre}total_usd_{s}"] = totals[s]
        best_total = min(totals[s] for s in PEERS)
        figures[f"{pre}total_ratio_best_peer"] = totals["haikucache"] / best_total
        figures[f"{pre}total_ratio_static_best"] = totals["haikucache"] / totals["static_best"]
        figures[f"{pre}total_ratio_oracle"] = totals["haikucache"] / totals["oracle"]
    g, seed = report.fleet_gap, report.seeds[0]
    for (w, s), usd in report.fleet.items():
        one = report.usd[("deepest", w, g, "haikucache", seed)]
        figures[f"{w}_{g}_usd_{s}"] = usd
        figures[f"{w}_{g}_ratio_{s}"] = usd / one
    return figures


@dataclass(frozen=True)
class Verdict:
    """One target: ``value <= limit``."""

    name: str
    value: float
    limit: float

    @property
    def ok(self) -> bool:
        return self.value <= self.limit + 1e-12


def verdicts(figures: Mapping[str, float], gaps: Iterable[str] = DEFAULT_GAPS) -> list[Verdict]:
    out = []
    for rule in RULES:
        pre = PREFIX[rule]
        for w in WORKLOADS:
            for g in gaps:
                for ratio, limit in (
                    ("best_peer", TARGET_BEST_PEER),
                    ("static_best", TARGET_STATIC_BEST),
                ):
                    name = f"{pre}{w}_{g}_ratio_{ratio}"
                    out.append(Verdict(name, figures[name], limit))
        name = f"{pre}total_ratio_oracle"
        out.append(Verdict(name, figures[name], TARGET_ORACLE))
    for name in sorted(figures):
        if name.endswith(f"_ratio_haikucache_{FLEET}_shared"):
            out.append(Verdict(name, abs(figures[name] - 1.0), TARGET_FLEET))
    return out


def check_oracle(report: Report) -> list[str]:
    """Cells where the oracle is above some strategy (it must never be)."""
    bad = []
    for (rule, w, g, s, seed), usd in report.usd.items():
        oracle = report.usd[(rule, w, g, "oracle", seed)]
        if oracle > usd * (1 + 1e-9):
            bad.append(f"{rule} {w} {g} seed {seed}: oracle ${oracle:.6f} > {s} ${usd:.6f}")
    return bad


# --------------------------------------------------------------------------- output

SHORT = {
    "none": "none",
    "anthropic_auto": "auto",
    "anthropic_auto_1h": "auto1h",
    "langchain_mw": "lc",
    "langchain_mw_1h": "lc1h",
    "litellm": "llm",
    "litellm_1h": "llm1h",
    "static_best": "static",
    "haikucache": "hc",
    "oracle": "oracle",
}


def print_table(report: Report, figures: Mapping[str, float], checks: list[Verdict]) -> None:
    missed = {v.name for v in checks if not v.ok}
    for rule in RULES:
        pre = PREFIX[rule]
        headers = ["workload", "gap", *(SHORT[s] for s in ALL_STRATEGIES)]
        headers += ["hc/peer", "hc/static", "hc/oracle", "static placement", ""]
        rows: list[list[str]] = []
        for w in WORKLOADS:
            for g in report.gaps:
                flags = [
                    r for r in ("best_peer", "static_best") if f"{pre}{w}_{g}_ratio_{r}" in missed
                ]
                rows.append(
                    [
                        w,
                        g,
                        *(f"{figures[f'{pre}{w}_{g}_usd_{s}']:.4f}" for s in ALL_STRATEGIES),
                        f"{figures[f'{pre}{w}_{g}_ratio_best_peer']:.3f}",
                        f"{figures[f'{pre}{w}_{g}_ratio_static_best']:.3f}",
                        f"{figures[f'{pre}{w}_{g}_ratio_oracle']:.3f}",
                        report.static_choice[(rule, w, g, report.seeds[0])].removeprefix("static_"),
                        " ".join(f"MISSED {f}" for f in flags),
                    ]
                )
        rows.append(
            [
                "total",
                "",
                *(f"{figures[f'{pre}total_usd_{s}']:.4f}" for s in ALL_STRATEGIES),
                f"{figures[f'{pre}total_ratio_best_peer']:.3f}",
                f"{figures[f'{pre}total_ratio_static_best']:.3f}",
                f"{figures[f'{pre}total_ratio_oracle']:.3f}",
                "",
                "",
            ]
        )
        print(f"\nUSD billed, refresh rule '{rule}', mean of seeds {list(report.seeds)}")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(
            "  ".join(
                h.rjust(wd) if i > 1 else h.ljust(wd)
                for i, (h, wd) in enumerate(zip(headers, widths, strict=True))
            )
        )
        for r in rows:
            print(
                "  ".join(
                    c.rjust(wd) if 1 < i < len(r) - 2 else c.ljust(wd)
                    for i, (c, wd) in enumerate(zip(r, widths, strict=True))
                )
            )
    if report.fleet:
        print(
            f"\n{FLEET} planners fed round-robin, {report.fleet_gap}, rule 'deepest', seed "
            f"{report.seeds[0]} (÷ one planner):"
        )
        for w in WORKLOADS:
            one = report.usd[("deepest", w, report.fleet_gap, "haikucache", report.seeds[0])]
            shared = report.fleet.get((w, f"haikucache_{FLEET}_shared"), float("nan"))
            alone = report.fleet.get((w, f"haikucache_{FLEET}_alone"), float("nan"))
            print(
                f"  {w:<12} one ${one:.4f}   shared ${shared:.4f} ({shared / one:.4f})   "
                f"not shared ${alone:.4f} ({alone / one:.4f})"
            )
    print()
    bad = [v for v in checks if not v.ok]
    print(f"targets: {len(checks) - len(bad)} of {len(checks)} met")
    for v in bad:
        print(f"MISSED  {v.name} = {v.value:.4f}  (target <= {v.limit})")
    for v in checks:
        if v.name.endswith("total_ratio_oracle") and v.ok:
            print(f"ok      {v.name} = {v.value:.4f}  (target <= {v.limit})")


STYLES = {
    "none": ("grey", ":"),
    "anthropic_auto": ("tab:orange", "--"),
    "anthropic_auto_1h": ("tab:orange", ":"),
    "langchain_mw": ("tab:green", "--"),
    "langchain_mw_1h": ("tab:green", ":"),
    "litellm": ("tab:purple", "--"),
    "litellm_1h": ("tab:purple", ":"),
    "static_best": ("tab:red", "-."),
    "haikucache": ("tab:blue", "-"),
    "oracle": ("black", "-."),
}


def write_png(report: Report, figures: Mapping[str, float], path: str, burst_mean: float) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is missing: pip install 'haikucache[bench]'", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = {g: _workloads.gap_seconds(g) or burst_mean for g in report.gaps}
    order = sorted(report.gaps, key=lambda g: xs[g])
    fig, axes = plt.subplots(
        2, len(WORKLOADS), figsize=(5 * len(WORKLOADS), 8), sharex=True, squeeze=False
    )
    for col, w in enumerate(WORKLOADS):
        top, bottom = axes[0][col], axes[1][col]
        for s in ALL_STRATEGIES:
            color, line = STYLES[s]
            usd = [figures[f"{w}_{g}_usd_{s}"] for g in order]
            ratio = [u / figures[f"{w}_{g}_usd_oracle"] for u, g in zip(usd, order, strict=True)]
            width = 2.4 if s == "haikucache" else 1.2
            for ax, ys in ((top, usd), (bottom, ratio)):
                ax.plot(
                    [xs[g] for g in order],
                    ys,
                    line,
                    marker="o",
                    markersize=3,
                    color=color,
                    label=s,
                    linewidth=width,
                )
        top.set_title(w)
        top.set_ylabel("USD (emulator bill)")
        top.set_ylim(bottom=0)
        bottom.set_ylabel("÷ oracle (lower bound)")
        bottom.set_ylim(0.95, 2.0)
        bottom.set_xscale("log")
        bottom.set_xticks([xs[g] for g in order])
        bottom.set_xticklabels(order)
        bottom.set_xlabel("mean gap between sessions")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Claude Haiku 4.5 bill per strategy against the session inter-arrival gap "
        f"(refresh rule 'deepest', mean of seeds {list(report.seeds)})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="a subset of each workload, one seed")
    parser.add_argument("--seed", type=int, default=SEED, help="the first seed (default 0)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="how many seeds from --seed (quick 1, full 3)"
    )
    parser.add_argument(
        "--gaps",
        type=_workloads.parse_gaps,
        default=DEFAULT_GAPS,
        help="comma-separated regimes: 'burst' or a mean gap such as 30s, 7m, 2h "
        f"(default {','.join(DEFAULT_GAPS)})",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=_workloads.default_data_dir(),
        help="the shared data directory (default ../shared/data)",
    )
    parser.add_argument("--png", metavar="OUT.png", help="write a chart of the bills")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: CPUs)"
    )
    parser.add_argument(
        "--litellm-python",
        type=Path,
        default=DEFAULT_LITELLM_PYTHON,
        help="an interpreter with `litellm` installed, to check the litellm placement against "
        "the real hook (skipped if missing)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    seeds = tuple(range(args.seed, args.seed + (args.seeds or sizes.seeds)))
    suite = load_suite(args.data, sizes, seeds, args.gaps)
    print(
        "loaded "
        + ", ".join(
            f"{w.name}/{seed}: {len(w.sessions)} sessions / {w.calls} calls"
            for (_, seed), w in suite.workloads.items()
        )
        + f" in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    # The real LiteLLM (in its own interpreter) checks our reproduction of its placement
    # while the cells run.
    litellm_check = None
    if args.litellm_python and args.litellm_python.exists():
        litellm_check = _strategies.LitellmCheck(
            str(args.litellm_python),
            _workloads.tau_openai_samples(
                args.data / "tau-bench-trajectories" / "gpt-4o-airline.json"
            ),
        )
    report = run(suite, workers=max(1, args.workers))
    litellm_result = litellm_check.result() if litellm_check is not None else None
    litellm_ok = (
        None if litellm_result is None else litellm_result["agree"] == litellm_result["requests"]
    )
    figures = figures_of(report)
    checks = verdicts(figures, report.gaps)
    print_table(report, figures, checks)
    bad_oracle = check_oracle(report)
    worst_replay = max(report.replay_mismatches.values(), default=0.0)
    extra = {
        f"{rule}_{w}_{g}_{st}_{sd}": r.extra_bill_entries
        for (rule, w, g, st, sd), r in sorted(report.results.items())
        if r.extra_bill_entries
    }
    print(
        f"\noutput tokens identical across strategies: "
        f"{'yes' if report.output_mismatches == 0 else f'NO ({report.output_mismatches})'}"
    )
    print(f"oracle <= every strategy in every cell: {'yes' if not bad_oracle else 'NO'}")
    print(
        f"replayed bills = real emulator bills ({len(report.replay_mismatches)} runs): "
        f"{'yes' if worst_replay < 1e-9 else f'NO (worst ${worst_replay:.6f})'}"
    )
    print(f"one billed response per call for every strategy: {extra or 'yes'}")
    if litellm_result is None:
        print("litellm placement vs the real hook: not checked (no --litellm-python)")
    else:
        print(
            f"litellm placement vs the real hook (LiteLLM's own transformation of "
            f"{litellm_result['requests']} τ requests): {litellm_result['agree']} agree"
        )
    for line in bad_oracle:
        print("  " + line)
    elapsed = time.perf_counter() - started
    print(
        f"{'quick' if args.quick else 'full'} run, seeds {list(seeds)}, gaps "
        f"{','.join(report.gaps)}: {elapsed:.1f} s on {args.workers} workers"
    )

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "figures": figures,
                    "targets": [
                        {
                            "name": v.name,
                            "op": "<=",
                            "value": v.limit,
                            "actual": v.value,
                            "ok": v.ok,
                        }
                        for v in checks
                    ],
                    "checks": {
                        "oracle_below_every_strategy": not bad_oracle,
                        "output_tokens_identical": report.output_mismatches == 0,
                        "replay_matches_emulator": worst_replay < 1e-9,
                        "billed_responses_minus_calls": extra,
                        "litellm_matches_real_hook": litellm_ok,
                    },
                    "static_best": {
                        f"{PREFIX[rule]}{w}_{g}_seed{sd}": name
                        for (rule, w, g, sd), name in sorted(report.static_choice.items())
                    },
                    "cells": {
                        f"{PREFIX[rule]}{w}_{g}_{st}_seed{sd}": usd
                        for (rule, w, g, st, sd), usd in sorted(report.usd.items())
                    },
                    "workloads": {
                        f"{w.name}_seed{sd}": {"sessions": len(w.sessions), "calls": w.calls}
                        for (_, sd), w in suite.workloads.items()
                    },
                    "machine": {
                        "python": sys.version.split()[0],
                        "platform": platform.platform(),
                        "haikucache": haikucache.__version__,
                        "workers": args.workers,
                    },
                    "quick": args.quick,
                    "seeds": list(seeds),
                    "gaps": list(report.gaps),
                    "seconds": elapsed,
                },
                f,
                indent=2,
            )
    if args.png:
        gaps = suite.mooncake
        write_png(report, figures, args.png, sum(gaps) / len(gaps))
    assert not bad_oracle, "the oracle must be a lower bound"
    return 0


if __name__ == "__main__":
    sys.exit(main())
