"""What real workloads cost through the emulator's bill, with haikucache and with its peers.

    python benchmarks/bench_cost.py --json OUT [--quick] [--data DIR] [--png OUT.png]
                                    [--workers N] [--litellm-python PATH]

Three workloads (``_workloads.py``): ``tau_airline`` (τ-bench airline agent transcripts, 14
tools), ``bfcl`` (BFCL v4 live_multiple + multi_turn_base) and ``rag`` (long shared documents,
Zipf popularity). Each is replayed at six arrival regimes: sessions start 30 s, 3 min, 10 min,
30 min or 2 h apart on average (exponential, fixed seed), or with the gaps of the Mooncake
conversation trace (``mooncake``, ~0.3 s). Time is simulated: one ``ManualClock`` is shared by
the emulator and the strategy and set to each call's arrival time.

Strategies, all in the same run against the same emulator code, each with a fresh
``Emulator(clock=clock)`` per workload × regime so that caches never interact:

* ``none``, ``anthropic_auto``, ``langchain_mw``, ``litellm`` — the marker placements of
  ``_strategies.py``, sent through ``haikucache.Client`` with ``planner="off"``;
* ``haikucache`` — the product path: the *unmarked* request sent through
  ``haikucache.Client(engine=Engine(ledger=False, planner=Planner(policy="adaptive",
  clock=clock)))``;
* ``oracle`` — the lower bound of ``_oracle.py`` (every input token at the cheapest rate any
  legal plan could reach, knowing the whole trace); asserted to be ≤ every other strategy in
  every cell.

Dollars are ``emu.bill.total_usd`` of each emulator, never an estimate. The run also checks
that every strategy got the same output tokens for every call (the emulator's answer must
not depend on ``cache_control``).

Figures (``{"figures": {...}}`` in OUT): ``<workload>_<gap>_usd_<strategy>`` for every
cell, ``total_usd_<strategy>``, and per cell ``<workload>_<gap>_ratio_best_peer``
(haikucache ÷ the cheapest of none / anthropic_auto / langchain_mw / litellm) and
``<workload>_<gap>_ratio_oracle`` (haikucache ÷ oracle), plus the same ratios of the totals.

Targets: haikucache ≤ the best peer in every cell; ≤ 0.85 × the best peer in the
``tau_airline`` cells at 10 m and 30 m; total ≤ 1.15 × the oracle's total.

``--quick`` replays 30 τ runs, 150 live_multiple + 30 multi-turn BFCL lines and 100
questions over 12 documents (under 3 minutes on 2 cores); the full run replays everything
(200 τ runs / 2,454 calls, 1,053 + 200 BFCL lines / 1,787 calls, 400 questions over 40
documents) in about 10 minutes. Cells run in parallel worker processes (``--workers``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _oracle
import _strategies
import _workloads
import haikucache
from _workloads import GAPS, Workload
from haikucache.testing import Emulator, ManualClock

PEERS = ("none", "anthropic_auto", "langchain_mw", "litellm")
STRATEGIES = (*PEERS, "haikucache")
ALL_STRATEGIES = (*STRATEGIES, "oracle")
WORKLOADS = ("tau_airline", "bfcl", "rag")
BASE_TIME = 1_763_632_800.0  # 2025-11-20T10:00:00Z, the ManualClock default
SEED = 0
TARGET_BEST_PEER = 1.0
TARGET_TAU_MID = 0.85
TAU_MID_GAPS = ("10m", "30m")
TARGET_ORACLE = 1.15
DEFAULT_LITELLM_PYTHON = Path(__file__).resolve().parents[1] / ".cache/litellm-venv/bin/python"


@dataclass(frozen=True)
class Sizes:
    """How much of each workload to replay."""

    tau_runs: int | None
    bfcl_live: int | None
    bfcl_multi: int | None
    rag_documents: int
    rag_queries: int


FULL = Sizes(None, None, None, 40, 400)
QUICK = Sizes(30, 150, 30, 12, 100)


@dataclass
class Suite:
    """Everything the cells need; built once in the parent, inherited by forked workers."""

    workloads: dict[str, Workload]
    mooncake: list[float]


_SUITE: Suite | None = None


def load_suite(data: Path, sizes: Sizes) -> Suite:
    tau = _workloads.load_tau(
        data / "tau-bench-trajectories" / "gpt-4o-airline.json", runs=sizes.tau_runs, seed=SEED
    )
    bfcl = _workloads.load_bfcl(
        data / "bfcl-function-calling", live=sizes.bfcl_live, multi=sizes.bfcl_multi, seed=SEED
    )
    rag = _workloads.make_rag(documents=sizes.rag_documents, queries=sizes.rag_queries, seed=SEED)
    mooncake = _workloads.load_mooncake_gaps(data / "mooncake-traces" / "conversation_trace.jsonl")
    return Suite({w.name: w for w in (tau, bfcl, rag)}, mooncake)


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


def _planner(clock: ManualClock) -> Any:
    from haikucache._planner import Planner as PrivatePlanner

    # ``haikucache.Planner`` once it is re-exported; the private module has it until then.
    planner_cls: type[Any] = getattr(haikucache, "Planner", PrivatePlanner)
    return planner_cls(policy="adaptive", clock=clock)


def make_client(strategy: str, emu: Emulator, clock: ManualClock) -> haikucache.Client:
    """The same HTTP path for every strategy; only haikucache's planner is on."""
    if strategy == "haikucache":
        engine = haikucache.Engine(ledger=False, clock=clock, planner=_planner(clock))
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
    return _strategies.PEERS[strategy]


def run_cell(workload: Workload, gap: str, strategy: str, mooncake: Sequence[float]) -> CellResult:
    """Replay ``workload`` at regime ``gap`` with ``strategy`` on a fresh emulator."""
    started = time.perf_counter()
    clock = ManualClock(BASE_TIME)
    emu = Emulator(clock=clock)
    client = make_client(strategy, emu, clock)
    mark = _marker(strategy)
    outputs: dict[tuple[int, int], int] = {}
    for when, s, r in _workloads.arrivals(workload, gap, seed=SEED, mooncake=mooncake):
        clock.set(BASE_TIME + when)
        body = workload.sessions[s].requests[r]
        message = client.messages.create(**mark(body))
        outputs[(s, r)] = int(message.usage.output_tokens)
        if strategy == "haikucache" and _strategies.count_markers(body) != 0:
            raise AssertionError("haikucache changed the caller's request in place")
    client.close()
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
    )


def _flatten_workload(workload: Workload) -> list[list[_oracle.Flat]]:
    from haikucache.testing._tokenizer import Tokenizer

    tok = Tokenizer()
    return [[_oracle.flatten(b, tok) for b in s.requests] for s in workload.sessions]


def _task(task: tuple[str, str, str]) -> Any:
    kind, name, arg = task
    assert _SUITE is not None
    workload = _SUITE.workloads[name]
    if kind == "flatten":
        return ("flatten", name, _flatten_workload(workload))
    return ("cell", run_cell(workload, arg, kind, _SUITE.mooncake))


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    """All cells of one run."""

    cells: dict[tuple[str, str, str], float] = field(default_factory=dict)
    results: dict[tuple[str, str, str], CellResult] = field(default_factory=dict)
    output_mismatches: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def run(suite: Suite, *, workers: int) -> Report:
    global _SUITE
    _SUITE = suite
    started = time.perf_counter()
    # Heaviest first, so two workers finish together.
    tasks: list[tuple[str, str, str]] = [("flatten", w, "") for w in WORKLOADS]
    tasks += [(s, w, g) for w in WORKLOADS for g in GAPS for s in STRATEGIES]
    tasks.sort(key=lambda t: -suite.workloads[t[1]].calls)
    flats: dict[str, list[list[_oracle.Flat]]] = {}
    report = Report()
    done = 0

    def take(item: Any) -> None:
        nonlocal done
        done += 1
        if item[0] == "flatten":
            flats[item[1]] = item[2]
            return
        cell: CellResult = item[1]
        report.results[(cell.workload, cell.gap, cell.strategy)] = cell
        report.cells[(cell.workload, cell.gap, cell.strategy)] = cell.usd
        print(
            f"  [{done:3d}/{len(tasks)}] {cell.workload:<12} {cell.gap:<9} {cell.strategy:<15}"
            f" ${cell.usd:9.4f}  {cell.calls} calls  {cell.seconds:5.1f} s",
            file=sys.stderr,
            flush=True,
        )

    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for item in pool.imap_unordered(_task, tasks):
                take(item)
    else:
        for task in tasks:
            take(_task(task))

    for w in WORKLOADS:
        workload = suite.workloads[w]
        reference = report.results[(w, "30s", "none")].outputs
        report.output_mismatches[w] = sum(
            sum(a != b for a, b in zip(reference, report.results[(w, g, s)].outputs, strict=True))
            for g in GAPS
            for s in STRATEGIES
        )
        for g in GAPS:
            calls = [
                (when, flats[w][s][r])
                for when, s, r in _workloads.arrivals(
                    workload, g, seed=SEED, mooncake=suite.mooncake
                )
            ]
            report.cells[(w, g, "oracle")] = _oracle.oracle_usd(calls, sum(reference))
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------- figures


def best_peer(report: Report, w: str, g: str) -> tuple[str, float]:
    return min(((s, report.cells[(w, g, s)]) for s in PEERS), key=lambda x: x[1])


def figures_of(report: Report) -> dict[str, float]:
    figures: dict[str, float] = {}
    totals = dict.fromkeys(ALL_STRATEGIES, 0.0)
    for w in WORKLOADS:
        for g in GAPS:
            for s in ALL_STRATEGIES:
                usd = report.cells[(w, g, s)]
                figures[f"{w}_{g}_usd_{s}"] = usd
                totals[s] += usd
            hc = report.cells[(w, g, "haikucache")]
            figures[f"{w}_{g}_ratio_best_peer"] = hc / best_peer(report, w, g)[1]
            figures[f"{w}_{g}_ratio_oracle"] = hc / report.cells[(w, g, "oracle")]
    for s in ALL_STRATEGIES:
        figures[f"total_usd_{s}"] = totals[s]
    figures["total_ratio_best_peer"] = totals["haikucache"] / min(totals[s] for s in PEERS)
    figures["total_ratio_oracle"] = totals["haikucache"] / totals["oracle"]
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


def verdicts(figures: Mapping[str, float]) -> list[Verdict]:
    out = [
        Verdict(f"{w}_{g}_ratio_best_peer", figures[f"{w}_{g}_ratio_best_peer"], TARGET_BEST_PEER)
        for w in WORKLOADS
        for g in GAPS
    ]
    out += [
        Verdict(
            f"tau_airline_{g}_ratio_best_peer",
            figures[f"tau_airline_{g}_ratio_best_peer"],
            TARGET_TAU_MID,
        )
        for g in TAU_MID_GAPS
    ]
    out.append(Verdict("total_ratio_oracle", figures["total_ratio_oracle"], TARGET_ORACLE))
    return out


def check_oracle(report: Report) -> list[str]:
    """Cells where the oracle is above some strategy (it must never be)."""
    bad = []
    for w in WORKLOADS:
        for g in GAPS:
            oracle = report.cells[(w, g, "oracle")]
            for s in STRATEGIES:
                if oracle > report.cells[(w, g, s)] * (1 + 1e-9):
                    bad.append(
                        f"{w} {g}: oracle ${oracle:.6f} > {s} ${report.cells[(w, g, s)]:.6f}"
                    )
    return bad


# --------------------------------------------------------------------------- output


def print_table(report: Report, figures: Mapping[str, float], checks: list[Verdict]) -> None:
    headers = ["workload", "gap", *ALL_STRATEGIES, "hc/best", "best peer", "hc/oracle", ""]
    rows: list[list[str]] = []
    missed = {(v.name, v.limit) for v in checks if not v.ok}
    for w in WORKLOADS:
        for g in GAPS:
            name, _ = best_peer(report, w, g)
            rows.append(
                [
                    w,
                    g,
                    *(f"{report.cells[(w, g, s)]:.4f}" for s in ALL_STRATEGIES),
                    f"{figures[f'{w}_{g}_ratio_best_peer']:.3f}",
                    name,
                    f"{figures[f'{w}_{g}_ratio_oracle']:.3f}",
                    " ".join(
                        f"MISSED(<={limit})"
                        for name, limit in sorted(missed)
                        if name == f"{w}_{g}_ratio_best_peer"
                    ),
                ]
            )
    rows.append(
        [
            "total",
            "",
            *(f"{figures[f'total_usd_{s}']:.4f}" for s in ALL_STRATEGIES),
            f"{figures['total_ratio_best_peer']:.3f}",
            "",
            f"{figures['total_ratio_oracle']:.3f}",
            "",
        ]
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(wd) for h, wd in zip(headers, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)))
    else:
        table = Table(title="USD billed by the emulator (hc = haikucache)")
        for h in headers:
            table.add_column(
                h, justify="left" if h in ("workload", "gap", "best peer") else "right"
            )
        for r in rows:
            style = "bold red" if r[-1] else ("bold" if r[0] == "total" else None)
            table.add_row(*r, style=style)
        Console(width=200).print(table)
    print()
    for v in checks:
        print(f"{'ok    ' if v.ok else 'MISSED'}  {v.name} = {v.value:.3f}  (target <= {v.limit})")


def write_png(report: Report, path: str, mooncake_mean: float) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is missing: pip install 'haikucache[bench]'", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = {g: (mooncake_mean if v is None else v) for g, v in GAPS.items()}
    order = sorted(GAPS, key=lambda g: xs[g])
    styles = {
        "none": ("grey", ":"),
        "anthropic_auto": ("tab:orange", "--"),
        "langchain_mw": ("tab:green", "--"),
        "litellm": ("tab:purple", "--"),
        "haikucache": ("tab:blue", "-"),
        "oracle": ("black", "-."),
    }
    fig, axes = plt.subplots(2, len(WORKLOADS), figsize=(6 * len(WORKLOADS), 8), sharex=True)
    for col, w in enumerate(WORKLOADS):
        top, bottom = axes[0][col], axes[1][col]
        for s in ALL_STRATEGIES:
            color, line = styles[s]
            usd = [report.cells[(w, g, s)] for g in order]
            ratio = [u / report.cells[(w, g, "oracle")] for u, g in zip(usd, order, strict=True)]
            width = 2.4 if s == "haikucache" else 1.4
            for ax, ys in ((top, usd), (bottom, ratio)):
                ax.plot(
                    [xs[g] for g in order],
                    ys,
                    line,
                    marker="o",
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
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Claude Haiku 4.5 bill per strategy against the session inter-arrival gap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="OUT", help="write {'figures': {...}} to OUT")
    parser.add_argument("--quick", action="store_true", help="a subset of each workload (< 3 min)")
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
    suite = load_suite(args.data, sizes)
    print(
        "loaded "
        + ", ".join(
            f"{w.name}: {len(w.sessions)} sessions / {w.calls} calls"
            for w in suite.workloads.values()
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
    checks = verdicts(figures)
    print_table(report, figures, checks)
    bad_oracle = check_oracle(report)
    mismatches = sum(report.output_mismatches.values())
    extra = {
        f"{w}_{g}_{st}": r.extra_bill_entries
        for (w, g, st), r in sorted(report.results.items())
        if r.extra_bill_entries
    }
    print(
        f"\noutput tokens identical across strategies: "
        f"{'yes' if mismatches == 0 else f'NO ({report.output_mismatches})'}"
    )
    print(f"oracle <= every strategy in every cell: {'yes' if not bad_oracle else 'NO'}")
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
    print(f"{'quick' if args.quick else 'full'} run: {elapsed:.1f} s on {args.workers} workers")

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
                        "output_tokens_identical": mismatches == 0,
                        "billed_responses_minus_calls": extra,
                        "litellm_matches_real_hook": litellm_ok,
                    },
                    "cells": {
                        f"{w}_{g}_{st}": {
                            "usd": r.usd,
                            **r.tokens,
                            "calls": r.calls,
                            "seconds": round(r.seconds, 2),
                        }
                        for (w, g, st), r in sorted(report.results.items())
                    },
                    "workloads": {
                        w.name: {"sessions": len(w.sessions), "calls": w.calls}
                        for w in suite.workloads.values()
                    },
                    "machine": {
                        "python": sys.version.split()[0],
                        "platform": platform.platform(),
                        "haikucache": haikucache.__version__,
                        "workers": args.workers,
                    },
                    "quick": args.quick,
                    "seconds": elapsed,
                },
                f,
                indent=2,
            )
    if args.png:
        gaps = suite.mooncake
        write_png(report, args.png, sum(gaps) / len(gaps))
    assert not bad_oracle, "the oracle must be a lower bound"
    return 0


if __name__ == "__main__":
    sys.exit(main())
