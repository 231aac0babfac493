"""What every benchmark script writes: the ``--json`` report and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import haikucache

__all__ = ["load_average", "machine", "missed", "print_table", "verdict", "write_report"]


def load_average() -> float | None:
    """The 1-minute load average now (``None`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux or macOS
        return None


def machine(load_at_start: float | None = None) -> dict[str, Any]:
    """Where the figures come from: other work on the machine weighs on every timing."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "haikucache": haikucache.__version__,
    }
    if load_at_start is not None:
        info["load_average_1m"] = {"start": load_at_start, "end": load_average()}
    return info


def write_report(
    path: str,
    figures: Mapping[str, float],
    targets: Mapping[str, tuple[str, float]],
    *,
    quick: bool,
    load_at_start: float | None = None,
    **extra: Any,
) -> None:
    """``{"figures", "targets", "machine", "quick", **extra}`` as JSON at ``path``."""
    report: dict[str, Any] = {
        "figures": dict(figures),
        **extra,
        "targets": {name: {"op": op, "value": value} for name, (op, value) in targets.items()},
        "machine": machine(load_at_start),
        "quick": quick,
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def verdict(value: float, target: tuple[str, float] | None) -> str:
    """``"<= 1 ok"`` or ``">= 3 MISSED"`` for a figure with a target, else ``""``."""
    if target is None:
        return ""
    op, bound = target
    ok = {"<=": value <= bound, ">=": value >= bound, ">": value > bound}[op]
    return f"{op} {bound:g} {'ok' if ok else 'MISSED'}"


def missed(figures: Mapping[str, float], targets: Mapping[str, tuple[str, float]]) -> list[str]:
    """The figures that miss their target."""
    return [n for n, v in figures.items() if verdict(v, targets.get(n)).endswith("MISSED")]


def print_table(
    figures: Mapping[str, float],
    targets: Mapping[str, tuple[str, float]],
    notes: Mapping[str, str] | None = None,
) -> None:
    """Every figure with its target and verdict, then what was not measured and why."""
    width = max(len(n) for n in [*figures, "figure"])
    print(f"{'figure':<{width}}  {'value':>12}  target")
    print("-" * (width + 30))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:>12,.3f}  {verdict(value, targets.get(name))}")
    for name, note in (notes or {}).items():
        print(f"{name}: not measured — {note}")
