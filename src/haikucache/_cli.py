"""The ``haikucache`` command: ``demo``, ``emulator``, ``explain``, ``report``, ``batches``,
``serve``.

Exit codes: 0 success, 1 the upstream failed, 2 a usage error (bad arguments or options),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
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
        batch = args.batch
        intro = f"Running the demo against {upstream} (ANTHROPIC_API_KEY is set)."
    else:
        from .testing import Emulator

        # Batches end after a second here (the real service takes minutes to hours).
        emulator = Emulator(batch_processing_seconds=1.0)
        batch = not args.no_batch
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
            report = run_demo(
                client, model=args.model, upstream=str(upstream), on_call=tick, batch=batch
            )
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
                "batched": batch,
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
    batched = [s for s in report.sections if s.totals.savings.get("batch_discount")]
    for section in batched:
        t = section.totals
        print(
            f"{section.name}: {t.calls} jobs in one Message Batch billed ${t.billed_usd:.6f} "
            f"instead of ${t.baseline_usd:.6f} realtime ({t.saved_fraction:.0%} saved).",
            file=out,
        )
    if emulator is not None:
        print(
            f"The emulator billed ${emulator.bill.total_usd:.4f} for "
            f"{emulator.requests['messages']} requests"
            + (
                f" and {emulator.requests['batches.create']} batch(es)"
                if emulator.requests["batches.create"]
                else ""
            )
            + " (its own tokenizer and price table).",
            file=out,
        )
    print(f"Recorded in the ledger at {ledger.directory}; see `haikucache report`.", file=out)
    return EXIT_OK


# --------------------------------------------------------------------------- emulator


#: Comma-separated keys the emulator accepts, added to ``--api-key``.
EMULATOR_KEYS_ENV = "HAIKUCACHE_EMULATOR_API_KEYS"


def _cmd_emulator(args: argparse.Namespace, out: TextIO) -> int:
    from .testing import Emulator, run_server

    env_keys = os.environ.get(EMULATOR_KEYS_ENV, "").split(",")
    keys = [k.strip() for k in [*args.api_key, *env_keys] if k.strip()]
    emulator = Emulator(
        seed=args.seed,
        batch_processing_seconds=args.batch_duration,
        api_keys=keys or None,
        extra_models=args.model,
    )
    if args.fault_rate > 0:
        emulator.inject("transient", times=None, rate=args.fault_rate)
    if args.latency > 0:
        emulator.inject("latency", times=None, endpoint="*", seconds=args.latency / 1000)
    run_server(args.host, args.port, emulator=emulator)
    return EXIT_OK


def _number_type(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` for a float in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    return parse


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


def _budget_status(path: str) -> tuple[list[Any], str | None]:
    """The budgets a ``haikucache serve`` TOML file configures, as they stand in its
    controls store; and a note when they are not shared (their state is in-process)."""
    from ._proxy import ProxyConfig, _build_controls

    config = ProxyConfig.load(path, env={})
    controls = _build_controls(config)
    budgets = controls.budgets if controls is not None else None
    if budgets is None:
        return [], f"{path} configures no budget"
    note = None
    if type(budgets.backend).__name__ == "MemoryBudgetBackend":
        note = (
            f"{path} keeps budgets in-process (no controls_store or redis:// store): their "
            "state lives in each proxy process; see its /metrics"
        )
    return budgets.status(), note


def _cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    if args.budgets:
        statuses, note = _budget_status(args.budgets)
        if args.json:
            json.dump({"budgets": [s.to_dict() for s in statuses], "note": note}, out, indent=2)
            print(file=out)
            return EXIT_OK
        if statuses:
            _print_table(
                out,
                f"haikucache budgets ({args.budgets})",
                ["budget", "period", "cap $", "spent $", "in flight $", "left $", "kind"],
                [
                    [
                        s.budget,
                        s.period_key,
                        f"{s.cap_usd:.4f}",
                        f"{s.spent_usd:.6f}",
                        f"{s.reserved_usd:.6f}",
                        f"{s.remaining_usd:.6f}",
                        "hard" if s.hard else "soft",
                    ]
                    for s in statuses
                ],
                text_columns=2,
            )
        if note:
            print(note, file=out)
        return EXIT_OK
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


# --------------------------------------------------------------------------- batches


def _journal(args: argparse.Namespace) -> Any:
    from ._batch_journal import open_journal

    return open_journal(args.journal)


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    import datetime as _dt

    moment = _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _record_row(record: Any) -> list[str]:
    counts = record.counts or {}
    done = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "-"
    return [
        record.token,
        record.batch_id or "-",
        record.state,
        f"{record.jobs:,}",
        _when(record.created_at),
        _when(record.ended_at),
        done,
    ]


_BATCH_HEAD = ["token", "batch id", "state", "jobs", "created (UTC)", "ended (UTC)", "results"]


def _cmd_batches(args: argparse.Namespace, out: TextIO) -> int:
    return {
        "list": _cmd_batches_list,
        "status": _cmd_batches_status,
        "resume": _cmd_batches_resume,
    }[args.batches_command](args, out)


def _cmd_batches_list(args: argparse.Namespace, out: TextIO) -> int:
    journal = _journal(args)
    records = journal.records()
    if args.open:
        records = [r for r in records if r.is_open]
    # Records that cannot be read are skipped (healthy batches are still listed and resumed)
    # and reported, never silently dropped.
    corrupt = list(getattr(journal, "corrupt", ()))
    if args.json:
        json.dump(
            {
                "batches": [r.to_dict() for r in records],
                "corrupt": [{"token": c.token, "error": c.error} for c in corrupt],
            },
            out,
            indent=2,
        )
        print(file=out)
        return EXIT_OK
    for bad in corrupt:
        print(
            f"warning: skipped an unreadable journal record {bad.token or '(unknown)'}: {bad.error}",
            file=out,
        )
    if not records:
        print(f"No batches in the journal {journal!r}.", file=out)
        return EXIT_OK
    _print_table(
        out,
        f"haikucache batches ({journal!r})",
        _BATCH_HEAD,
        [_record_row(r) for r in records],
        text_columns=3,
    )
    waiting = sum(1 for r in records if r.is_open)
    if waiting:
        print(
            f"{waiting} batch(es) still open: `haikucache batches resume` collects them.",
            file=out,
        )
    return EXIT_OK


def _upstream_client(args: argparse.Namespace) -> Any:
    from ._client import Client

    key = os.environ.get("ANTHROPIC_API_KEY") or None
    token = os.environ.get("ANTHROPIC_AUTH_TOKEN") or None
    return Client(api_key=key, auth_token=token, base_url=args.base_url, engine=args.engine)


def _cmd_batches_status(args: argparse.Namespace, out: TextIO) -> int:
    journal = _journal(args)
    record = journal.find(args.batch)
    upstream: dict[str, Any] | None = None
    problem = None
    batch_id = record.batch_id if record is not None else args.batch
    if batch_id and batch_id.startswith("msgbatch_") and not args.offline:
        try:
            args.engine = Engine(ledger=False)
            with _upstream_client(args) as client:
                upstream = client.messages.batches.retrieve(batch_id).to_dict()
        except HaikuCacheError as exc:
            problem = str(exc)
    if record is None and upstream is None:
        raise UsageError(
            f"no batch {args.batch!r} in the journal {journal!r}"
            + (f" (upstream: {problem})" if problem else "")
        )
    if args.json:
        json.dump(
            {
                "journal": record.to_dict() if record is not None else None,
                "upstream": upstream,
                "upstream_error": problem,
            },
            out,
            indent=2,
        )
        print(file=out)
        return EXIT_OK
    if record is not None:
        _print_table(out, "journal", _BATCH_HEAD, [_record_row(record)], text_columns=3)
        if record.error:
            print(f"note: {record.error}", file=out)
    if upstream is not None:
        counts = upstream.get("request_counts") or {}
        print(
            f"upstream {upstream.get('id')}: {upstream.get('processing_status')}; "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            + f"; expires {upstream.get('expires_at')}",
            file=out,
        )
    elif problem:
        print(f"upstream: not reachable ({problem})", file=out)
    return EXIT_OK


def _store(spec: str | None) -> Any:
    from ._store import DiskStore, RedisStore

    if spec is None or spec == "disk":
        return DiskStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    return DiskStore(spec)


def _cmd_batches_resume(args: argparse.Namespace, out: TextIO) -> int:
    from ._batcher import Batcher

    ledger = DiskLedger(args.ledger_dir) if args.ledger_dir else DiskLedger()
    store = _store(args.store)
    key = os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")
    args.engine = Engine.for_credentials(key, ledger=ledger, store=store)
    journal = _journal(args)
    with _upstream_client(args) as client:
        batcher = Batcher(
            client,
            journal=journal,
            poll_interval=args.poll_interval,
            max_poll_interval=max(args.poll_interval, args.max_poll_interval),
        )
        try:
            report = batcher.resume(
                force=args.force, progress=not args.json and not args.no_progress
            )
        finally:
            batcher.close()
    if args.json:
        json.dump(
            {
                "batches": [r.to_dict() for r in report.batches],
                "delivered": report.delivered,
                "failed": report.failed,
                "skipped": [{"token": t, "reason": r} for t, r in report.skipped],
            },
            out,
            indent=2,
        )
        print(file=out)
    else:
        if not report.batches and not report.skipped:
            print("Nothing to resume: every batch in the journal is finished.", file=out)
        if report.batches:
            _print_table(
                out,
                "resumed batches",
                _BATCH_HEAD,
                [_record_row(r) for r in report.batches],
                text_columns=3,
            )
            print(
                f"{report.delivered:,} answer(s) delivered and accounted (complete ones "
                "stored in the response cache); "
                f"{report.failed:,} job(s) without an answer.",
                file=out,
            )
        for token, reason in report.skipped:
            print(f"skipped {token}: {reason}", file=out)
    return EXIT_OK if report.failed == 0 else EXIT_UPSTREAM


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from ._proxy import run

    return run(args, out)


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
        "--batch",
        action="store_true",
        help="real API: send the small jobs as a Message Batch (can take minutes)",
    )
    demo.add_argument(
        "--no-batch", action="store_true", help="emulator: send the small jobs realtime"
    )
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
    emulator.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    emulator.add_argument(
        "--seed", type=int, default=0, help="seeds answers, ids and the injected faults"
    )
    emulator.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accept only this key (x-api-key or Bearer); repeatable, and ${EMULATOR_KEYS_ENV} "
        "(comma-separated) adds more; without any, every non-empty key is accepted",
    )
    emulator.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ID",
        help="accept this model id besides the API's (e.g. a gateway's name); repeatable",
    )
    emulator.add_argument(
        "--fault-rate",
        type=_number_type(0.0, 1.0),
        default=0.0,
        metavar="P",
        help="probability that a /v1/messages request gets a 529, 500 or 429 (default 0)",
    )
    emulator.add_argument(
        "--latency",
        type=_number_type(0.0),
        default=0.0,
        metavar="MS",
        help="milliseconds added before the first byte of every answer (default 0)",
    )
    emulator.add_argument(
        "--batch-duration",
        type=_number_type(0.0),
        default=60.0,
        metavar="SECONDS",
        help="how long a Message Batch takes to end (default 60)",
    )

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
    report.add_argument(
        "--budgets",
        default=None,
        metavar="TOML",
        help="instead: the budgets of a `haikucache serve` config, spent and in flight",
    )

    batches = sub.add_parser(
        "batches",
        help="list, inspect and resume the Message Batches haikucache submitted",
        description="The batch journal: every batch the batcher submitted, with its state. "
        "`resume` finishes batches a crashed process left open and stores their answers "
        "in the response cache.",
    )
    batches_sub = batches.add_subparsers(dest="batches_command", required=True, metavar="ACTION")
    journal_help = f"a directory or redis:// URL (default: {default_cache_dir() / 'batches'})"
    b_list = batches_sub.add_parser("list", help="the journal's batches")
    b_list.add_argument("--open", action="store_true", help="only batches still open")
    b_status = batches_sub.add_parser("status", help="one batch: journal and upstream state")
    b_status.add_argument("batch", help="a msgbatch_ id or a journal token")
    b_status.add_argument("--offline", action="store_true", help="do not ask the API")
    b_status.add_argument("--base-url", default=None)
    b_resume = batches_sub.add_parser(
        "resume", help="poll open batches and store their answers in the response cache"
    )
    b_resume.add_argument("--base-url", default=None, help="default: $ANTHROPIC_BASE_URL")
    b_resume.add_argument(
        "--store", default=None, help="response store: a directory or redis:// URL (default: disk)"
    )
    b_resume.add_argument(
        "--ledger-dir", default=None, help=f"default: {default_cache_dir() / 'ledger'}"
    )
    b_resume.add_argument("--poll-interval", type=float, default=5.0)
    b_resume.add_argument("--max-poll-interval", type=float, default=60.0)
    b_resume.add_argument(
        "--force", action="store_true", help="also batches whose submitting process still runs"
    )
    b_resume.add_argument("--no-progress", action="store_true")
    for p in (b_list, b_status, b_resume):
        p.add_argument("--journal", default=None, help=journal_help)
        p.add_argument("--json", action="store_true")

    from ._proxy import add_arguments as add_serve_arguments

    add_serve_arguments(
        sub.add_parser(
            "serve",
            help="run the Anthropic-compatible proxy (point ANTHROPIC_BASE_URL at it)",
            description="Serve the Messages API through haikucache: validation, prompt-cache "
            "breakpoints, the response cache and the ledger for any client in any language. "
            "Needs pip install 'haikucache[serve]'.",
        )
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
    "batches": _cmd_batches,
    "serve": _cmd_serve,
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
