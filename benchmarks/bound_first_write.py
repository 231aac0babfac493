"""What any planner must pay, given how it billed the first request's shared prefix.

    python benchmarks/bound_first_write.py --costs BENCH_COST.json --json OUT [--data DIR]

The first request of a cell reaches a planner before anything has been seen. How it bills
that request's shared prefix (the tools and system prompt up to the first block that reaches
the model's minimum) is one of three choices — plain, a 5-minute write or a 1-hour write —
and, since every arrival regime of one seed starts with the same request, a planner that
decides from what it has seen makes the same choice in every regime. This script takes the
peers' bills from a ``bench_cost.py`` report (``--costs``: the same ``--quick``, seeds and
gaps are replayed), and computes, per workload, seed, regime and first choice, the oracle's
lower bound with that choice fixed (``_oracle.oracle_usd(first_write=...)``: every later
decision still optimal in hindsight).

A workload is **decided by its first write** when every combination of first choices (one
per seed) leaves at least one regime where even that bound, averaged over seeds as the
report averages haikucache, costs more than the best peer configuration there: no planner
that cannot see the future can be at or below every peer in every cell of that workload.

Figures (``{"figures": {...}}`` in OUT): ``<workload>_<gap>_bound_usd_<choice>`` (mean over
seeds), ``<workload>_<gap>_best_peer_usd``, and ``<workload>_decided_by_first_write`` (1 or
0) with, per workload, the smallest excess over the best peer a planner is forced to
(``<workload>_forced_excess_usd``, the best combination's worst regime).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import _oracle
import _workloads
import bench_cost
from haikucache.testing._tokenizer import Tokenizer

CHOICES = ("plain", "5m", "1h")


def bounds(
    workload: _workloads.Workload, gaps: list[str], seed: int, mooncake: list[float]
) -> dict[tuple[str, str], float]:
    """The oracle's bill for each (gap, first choice) of one workload and seed."""
    tok = Tokenizer()
    flats = [[_oracle.flatten(body, tok) for body in s.requests] for s in workload.sessions]
    prepared = bench_cost.prepare_workload(workload)
    output = sum(p.output_tokens for row in prepared for p in row)
    out = {}
    for gap in gaps:
        calls = [
            (when, flats[s][r])
            for when, s, r in _workloads.arrivals(workload, gap, seed=seed, mooncake=mooncake)
        ]
        for choice in CHOICES:
            out[(gap, choice)] = _oracle.oracle_usd(calls, output, first_write=choice)
    return out


def forced_excess(
    per_seed: Mapping[int, Mapping[tuple[str, str], float]],
    best_peer: Mapping[str, float],
    seeds: Sequence[int],
    gaps: Sequence[str],
) -> float:
    """The least excess over the best peer a planner is forced to: over every combination
    of first choices (one per seed, the same in every regime of that seed), the worst regime's
    bound (mean over seeds) minus the best peer there, at its smallest. Above 0, no planner
    without foresight is at or below the best peer in every regime."""
    return min(
        max(
            sum(per_seed[seed][(gap, c)] for seed, c in zip(seeds, combo, strict=True)) / len(seeds)
            - best_peer[gap]
            for gap in gaps
        )
        for combo in itertools.product(CHOICES, repeat=len(seeds))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", required=True, help="a bench_cost.py --json report")
    parser.add_argument("--json", required=True, help="where to write this report")
    parser.add_argument("--data", default=str(_workloads.default_data_dir()))
    args = parser.parse_args(argv)

    report = json.loads(Path(args.costs).read_text())
    seeds, gaps, quick = list(report["seeds"]), list(report["gaps"]), bool(report["quick"])
    cells = report["cells"]
    sizes = bench_cost.QUICK if quick else bench_cost.FULL
    suite = bench_cost.load_suite(Path(args.data), sizes, seeds, gaps)

    figures: dict[str, float] = {}
    rows = []
    for name in bench_cost.WORKLOADS:
        per_seed = {
            seed: bounds(suite.workloads[(name, seed)], gaps, seed, suite.mooncake)
            for seed in seeds
        }
        best_peer = {
            gap: min(
                sum(cells[f"{name}_{gap}_{peer}_seed{seed}"] for seed in seeds) / len(seeds)
                for peer in bench_cost.PEERS
            )
            for gap in gaps
        }
        for gap in gaps:
            figures[f"{name}_{gap}_best_peer_usd"] = best_peer[gap]
            for choice in CHOICES:
                figures[f"{name}_{gap}_bound_usd_{choice}"] = sum(
                    per_seed[seed][(gap, choice)] for seed in seeds
                ) / len(seeds)
        forced = forced_excess(per_seed, best_peer, seeds, gaps)
        figures[f"{name}_forced_excess_usd"] = forced
        figures[f"{name}_decided_by_first_write"] = float(forced > 0)
        rows.append((name, forced))

    _common.write_report(
        args.json, figures, {}, quick=quick, seeds=seeds, gaps=gaps, costs=args.costs
    )
    width = max(len(g) for g in gaps)
    for name in bench_cost.WORKLOADS:
        print(f"\n{name}: bound with the first write fixed, against the best peer (USD)")
        print(f"  {'gap':<{width}}  {'best peer':>10}  " + "  ".join(f"{c:>10}" for c in CHOICES))
        for gap in gaps:
            peer = figures[f"{name}_{gap}_best_peer_usd"]
            marks = []
            for c in CHOICES:
                bound = figures[f"{name}_{gap}_bound_usd_{c}"]
                marks.append(f"{bound:>9.4f}{'>' if bound > peer else ' '}")
            print(f"  {gap:<{width}}  {peer:>10.4f}  " + "  ".join(marks))
    print("\n('>' marks a bound above the best peer: a planner that billed the first prefix")
    print(" that way cannot be at or below every peer in that regime)\n")
    for name, forced in rows:
        verdict = (
            f"decided by the first write: every choice leaves a regime at least "
            f"${forced:.4f} above the best peer"
            if forced > 0
            else f"not decided: some choice stays within every peer (slack ${max(0.0, -forced):.4f})"
        )
        print(f"  {name:<12} {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
