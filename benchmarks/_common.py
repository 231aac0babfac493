"""What every benchmark script writes: the ``--json`` report and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import haikucache

__all__ = ["load_average", "machine", "write_report"]


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
