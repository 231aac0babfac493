"""The ``haikucache`` command: ``demo``, ``emulator``, ``explain``, ``report``.

Exit codes: 0 success, 1 the upstream failed, 2 a usage error (bad arguments or options),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ._catalog import DEFAULT_MODEL
from ._engine import Engine
from ._exceptions import HaikuCacheError, UpstreamError, UsageError
from ._ledger import DiskLedger, LedgerTotals, default_cache_dir, summarize

__all__ = ["main"]

EXIT_OK, EXIT_UPSTREAM, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_COLUMNS = (
    ("calls", "calls"),
    ("hits", "response_cache_hits"),
    ("input", "input_tokens"),
    ("cache write", "cache_write"),
    ("cache read", "cache_read_tokens"),
    ("output", "output_tokens"),
    ("$ billed", "billed_usd"),
    ("$ baseline", "baseline_usd"),
    ("$ saved", "saved_usd"),
    ("saved", "saved_fraction"),
)


def _cells(totals: LedgerTotals) -> list[str]:
    values: dict[str, Any] = {
        **totals.to_dict(),
        "cache_write": totals.cache_write_5m_tokens + totals.cache_write_1h_tokens,
        "saved_fraction": totals.saved_fraction,
    }
    cells = []
    for _, name in _COLUMNS:
        value = values[name]
        if name.endswith("_usd"):
            cells.append(f"{value:.4f}")
        elif name == "saved_fraction":
            cells.append(f"{value:.1%}")
        else:
            cells.append(f"{value:,}")
    return cells


def _print_table(
    out: TextIO,
    title: str,
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    footer: int = 0,
    text_columns: int = 1,
) -> None:
    """A table with rich when it is installed, aligned plain text otherwise.

    The first ``text_columns`` columns are left-aligned labels; the rest are numbers.
    """
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        print(title, file=out)
        line = "  ".join(
            h.ljust(w) if i < text_columns else h.rjust(w)
            for i, (h, w) in enumerate(zip(head, widths, strict=True))
        )
        print(line, file=out)
        print("-" * len(line), file=out)
        for n, row in enumerate(rows):
            if footer and n == len(rows) - footer:
                print("-" * len(line), file=out)
            print(
                "  ".join(
                    c.ljust(w) if i < text_columns else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                ),
                file=out,
            )
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < text_columns else "right", no_wrap=True)
    for n, row in enumerate(rows):
        table.add_row(*row, end_section=bool(footer) and n == len(rows) - footer - 1)
    # Wide enough for every cell: rich would otherwise squeeze to 80 columns in a pipe.
    width = sum(max(len(str(r[i])) for r in [head, *rows]) + 3 for i in range(len(head))) + 1
    Console(file=out, width=max(width, len(title))).print(table)


def _progress(total: int, enabled: bool) -> tuple[Callable[[str], None], Callable[[], None]]:
    if not enabled:
        return (lambda _name: None), (lambda: None)
    try:
        from rich.progress import Progress
    except ImportError:
        done = [0]

        def tick(name: str) -> None:
            done[0] += 1
            print(f"\r  {done[0]}/{total} calls ({name})", end="", file=sys.stderr, flush=True)

        return tick, lambda: print(file=sys.stderr)
    progress = Progress(transient=True)
    task = progress.add_task("calls", total=total)
    progress.start()

    def advance(name: str) -> None:
        progress.update(task, advance=1, description=name)

    return advance, progress.stop


# --------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from ._client import Client
    from ._demo import count_calls, run_demo
    from ._store import MemoryStore

    ledger = DiskLedger(args.ledger_dir) if args.ledger_dir else DiskLedger()
    # A fresh response cache per run, so every run shows the same traffic (the ledger keeps
    # the history).
    engine = Engine(namespace="demo", ledger=ledger, store=MemoryStore())
    key = os.environ.get("ANTHROPIC_API_KEY")
    emulator = None
    if key and not args.emulator:
        client = Client(api_key=key, base_url=args.base_url, engine=engine)
        upstream = client.base_url
        intro = f"Running the demo against {upstream} (ANTHROPIC_API_KEY is set)."
    else:
        from .testing import Emulator

        emulator = Emulator()
        client = Client(
            api_key="demo-key",
            base_url="http://emulator.local",
            transport=emulator.transport(),
            engine=engine,
        )
        upstream = "emulator"
        intro = (
            "Running the demo against haikucache's built-in emulator of the Messages API "
            "(no ANTHROPIC_API_KEY set, or --emulator): no money is spent."
        )
    if not args.json:
        print(intro, file=out)
    tick, stop = _progress(count_calls(), enabled=not args.no_progress and not args.json)
    try:
        with client:
            report = run_demo(client, model=args.model, upstream=str(upstream), on_call=tick)
    finally:
        stop()

    rows = [[s.name, *_cells(s.totals)] for s in report.sections]
    total = report.total
    rows.append(["total", *_cells(total)])
    if args.json:
        json.dump(
            {
                "upstream": report.upstream,
                "sections": {s.name: s.totals.to_dict() for s in report.sections},
                "total": total.to_dict(),
                "emulator_bill_usd": emulator.bill.total_usd if emulator is not None else None,
            },
            out,
            indent=2,
        )
        print(file=out)
        return EXIT_OK
    _print_table(
        out,
        f"haikucache demo — {args.model} via {report.upstream}",
        ["traffic", *(c for c, _ in _COLUMNS)],
        rows,
        footer=1,
    )
    causes = ", ".join(f"{k.replace('_', ' ')} ${v:.4f}" for k, v in total.savings.items() if v)
    print(f"Saving by cause: {causes or 'none yet'}.", file=out)
    if emulator is not None:
        print(
            f"The emulator billed ${emulator.bill.total_usd:.4f} for "
            f"{emulator.requests['messages']} requests (its own tokenizer and price table).",
            file=out,
        )
    print(f"Recorded in the ledger at {ledger.directory}; see `haikucache report`.", file=out)
    return EXIT_OK


# --------------------------------------------------------------------------- emulator


def _cmd_emulator(args: argparse.Namespace, out: TextIO) -> int:
    from .testing import run_server

    run_server(args.host, args.port, seed=args.seed)
    return EXIT_OK


# --------------------------------------------------------------------------- explain


def _cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    from ._planner import Planner
    from ._wire import validate_request

    try:
        with open(args.request, encoding="utf-8") if args.request != "-" else sys.stdin as f:
            body = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {args.request}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"{args.request} is not valid JSON: {exc}") from exc
    validate_request(body)
    plan = Planner(args.policy).plan(body)
    if args.json:
        json.dump({"plan": plan.to_dict(), "body": plan.body}, out, indent=2)
        print(file=out)
        return EXIT_OK
    print(plan.explain(), file=out)
    multiplier = plan.expected_cost_multiplier()
    print(
        f"input cost on this first call: ~{multiplier:.2f}× of uncached; a repeat of the "
        "marked prefix is then read at 0.1×",
        file=out,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- report


def _bar(value: float, scale: float, width: int = 40) -> str:
    return "█" * (round(width * value / scale) if scale else 0)


def _cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    ledger = DiskLedger(args.ledger_dir) if args.ledger_dir else DiskLedger()
    buckets = ledger.totals()
    if args.namespace:
        buckets = [b for b in buckets if b.namespace == args.namespace]
    if args.days:
        days = sorted({b.day for b in buckets})[-args.days :]
        buckets = [b for b in buckets if b.day in days]
    if args.json:
        json.dump(
            {"buckets": [b.to_dict() for b in buckets], "total": summarize(buckets).to_dict()},
            out,
            indent=2,
        )
        print(file=out)
        return EXIT_OK
    if not buckets:
        print(
            f"The ledger at {ledger.directory} is empty: run `haikucache demo`, or make calls "
            "through haikucache first.",
            file=out,
        )
        return EXIT_OK
    rows = [[b.day, b.namespace, b.model, *_cells(b)] for b in buckets]
    rows.append(["total", "", "", *_cells(summarize(buckets))])
    _print_table(
        out,
        f"haikucache ledger ({ledger.directory})",
        ["day", "namespace", "model", *(c for c, _ in _COLUMNS)],
        rows,
        footer=1,
        text_columns=3,
    )

    by_day: dict[str, LedgerTotals] = {}
    for b in buckets:
        by_day.setdefault(b.day, LedgerTotals()).merge(b)
    scale = max(t.baseline_usd for t in by_day.values())
    print("\n$ per day: baseline ░ vs billed █", file=out)
    for day, t in sorted(by_day.items()):
        print(f"{day}  {_bar(t.billed_usd, scale):<40} ${t.billed_usd:.4f}", file=out)
        print(
            f"{'':10}  {_bar(t.baseline_usd, scale).replace('█', '░'):<40} ${t.baseline_usd:.4f}",
            file=out,
        )
    return EXIT_OK


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haikucache",
        description="Cheaper, faster Claude Haiku 4.5: prompt caching, a response cache and "
        "Message Batches, with a ledger that proves the savings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a realistic workload and print the ledger table",
        description="Run an agent loop, repeated and new questions and small jobs through "
        "haikucache. Uses the real API when ANTHROPIC_API_KEY is set, the built-in emulator "
        "otherwise.",
    )
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("--base-url", default=None, help="API base URL (real API only)")
    demo.add_argument("--emulator", action="store_true", help="use the emulator even with a key")
    demo.add_argument("--json", action="store_true", help="print the figures as JSON")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument(
        "--ledger-dir", default=None, help=f"default: {default_cache_dir() / 'ledger'}"
    )

    emulator = sub.add_parser(
        "emulator",
        help="serve the Messages API emulator on a loopback port",
        description="Serve haikucache's emulator of the Messages API (messages, SSE, "
        "count_tokens, batches) for SDKs, LangChain or curl.",
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8765)
    emulator.add_argument("--seed", type=int, default=0)

    explain = sub.add_parser(
        "explain",
        help="show where the planner would put cache breakpoints in a request, and why",
        description="Read a Messages request (JSON file, or - for stdin) and print the "
        "prompt-cache plan: breakpoints, TTLs, token estimates, and what was skipped.",
    )
    explain.add_argument("request", help="a JSON file with the request body, or -")
    explain.add_argument("--policy", choices=("adaptive", "always", "off"), default="adaptive")
    explain.add_argument("--json", action="store_true", help="print the plan and the body as JSON")

    report = sub.add_parser("report", help="print the persisted ledger")
    report.add_argument("--namespace", default=None)
    report.add_argument("--days", type=int, default=None, help="only the last N days")
    report.add_argument("--json", action="store_true")
    report.add_argument(
        "--ledger-dir", default=None, help=f"default: {default_cache_dir() / 'ledger'}"
    )
    return parser


def _version() -> str:
    from . import __version__

    return __version__


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "demo": _cmd_demo,
    "emulator": _cmd_emulator,
    "explain": _cmd_explain,
    "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    try:
        return _COMMANDS[args.command](args, out)
    except UsageError as exc:
        print(f"haikucache: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UpstreamError as exc:
        print(f"haikucache: the API failed: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    except HaikuCacheError as exc:
        print(f"haikucache: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
