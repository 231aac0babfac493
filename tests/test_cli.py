"""The ``haikucache`` command: demo, emulator, report — output, persistence and exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from haikucache._cli import main
from haikucache.testing import Emulator


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


@pytest.mark.usefixtures("no_key")
def test_demo_prints_the_ledger_table_and_agrees_with_the_emulator_bill(tmp_path: Path) -> None:
    code, text = run(["demo", "--no-progress", "--ledger-dir", str(tmp_path)])
    assert code == 0
    assert "built-in emulator" in text
    for row in ("agent loop", "questions", "small jobs", "total", "$ billed", "$ baseline"):
        assert row in text

    code, raw = run(["demo", "--json", "--ledger-dir", str(tmp_path)])
    assert code == 0
    figures = json.loads(raw)
    total = figures["total"]
    assert total["calls"] == sum(s["calls"] for s in figures["sections"].values()) > 20
    # The ledger's dollars (engine's arithmetic) match the emulator's own bill.
    assert total["billed_usd"] == pytest.approx(figures["emulator_bill_usd"], rel=1e-9)
    agent = figures["sections"]["agent loop"]
    assert (
        agent["input_tokens"]
        + agent["cache_read_tokens"]
        + agent["cache_write_5m_tokens"]
        + agent["cache_write_1h_tokens"]
        > 16 * 4096
    )
    # The planner put the long policy and the growing conversation in the prompt cache.
    assert agent["cache_read_tokens"] > 10 * 4096
    assert total["savings"]["prompt_cache_read"] > 0


@pytest.mark.usefixtures("no_key")
def test_report_reads_what_earlier_processes_recorded(tmp_path: Path) -> None:
    code, raw = run(["report", "--json", "--ledger-dir", str(tmp_path)])
    assert code == 0 and json.loads(raw)["total"]["calls"] == 0
    code, text = run(["report", "--ledger-dir", str(tmp_path)])
    assert "is empty" in text

    env = {**os.environ, "HAIKUCACHE_HOME": str(tmp_path)}
    env.pop("ANTHROPIC_API_KEY", None)
    subprocess.run(
        [sys.executable, "-m", "haikucache", "demo", "--no-progress"],
        check=True,
        env=env,
        capture_output=True,
    )
    report = subprocess.run(
        [sys.executable, "-m", "haikucache", "report", "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    data = json.loads(report.stdout)
    assert data["total"]["calls"] > 20
    assert {b["namespace"] for b in data["buckets"]} == {"demo"}
    code, text = run(["report", "--ledger-dir", str(tmp_path / "ledger")])
    assert code == 0 and "demo" in text and "baseline" in text


def test_demo_uses_the_api_when_a_key_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "real API" path, pointed at a loopback emulator through ANTHROPIC_BASE_URL.
    emulator = Emulator(api_keys=["sk-demo-key"])
    with emulator.serve() as base_url:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-demo-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
        code, text = run(["demo", "--no-progress", "--ledger-dir", str(tmp_path)])
    assert code == 0, text
    assert "ANTHROPIC_API_KEY is set" in text
    assert emulator.requests["messages"] > 20
    assert "sk-demo-key" not in text


def test_upstream_failures_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    code, _ = run(
        [
            "demo",
            "--no-progress",
            "--ledger-dir",
            str(tmp_path),
            "--base-url",
            f"http://127.0.0.1:{port}",
        ]
    )
    assert code == 1
    assert "the API failed" in capsys.readouterr().err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "haikucache", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        yield proc, line.rsplit(" ", 1)[-1].strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_emulator_command_serves_until_interrupted(
    emulator_process: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base_url = emulator_process
    assert base_url.startswith("http://127.0.0.1:")
    reply = httpx.post(
        f"{base_url}/v1/messages",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert reply.status_code == 200 and reply.json()["type"] == "message"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_explain_prints_the_plan_and_rejects_bad_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "system": "Refunds go to the original form of payment. " * 700,
        "messages": [{"role": "user", "content": "Where is my refund?"}],
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    code, text = run(["explain", str(path)])
    assert code == 0
    # The TTL is the planner's call (1 h for a system prompt on first sighting, today).
    assert re.search(r"added (5m|1h) at system\.0", text) and "[tail]" in text
    code, raw = run(["explain", "--json", str(path)])
    plan = json.loads(raw)
    assert plan["body"]["system"][0]["cache_control"]["type"] == "ephemeral"
    assert [b["path"] for b in plan["plan"]["breakpoints"]] == ["system.0", "messages.0.content.0"]
    code, raw = run(["explain", "--policy", "off", "--json", str(path)])
    assert json.loads(raw)["body"] == request

    path.write_text(json.dumps({**request, "max_tokens": 100_000}))
    assert main(["explain", str(path)]) == 2
    assert "max_tokens" in capsys.readouterr().err
    path.write_text("{not json")
    assert main(["explain", str(path)]) == 2
    assert main(["explain", str(tmp_path / "missing.json")]) == 2


def test_report_budgets_reads_a_serve_configs_shared_budgets(
    tmp_path: Path, redis_url: str
) -> None:
    from haikucache._proxy import ProxyConfig, _build_controls

    config = tmp_path / "serve.toml"
    config.write_text(
        f'budget_usd = 1.0\nbudget_period = "total"\ncontrols_store = "{redis_url}"\n'
        "[keys]\n"
        '"hc-a" = { upstream_key_env = "X", namespace = "team-a", budget_usd = 0.5, '
        'budget_period = "total" }\n'
    )
    # What a proxy process spends lands in the shared store; the report reads it back.
    controls = _build_controls(ProxyConfig.load(config, env={}))
    assert controls is not None and controls.budgets is not None
    held = controls.budgets.reserve("team-a", 0.1)
    controls.budgets.settle(controls.budgets.reserve("team-a", 0.3), 0.25)
    code, out = run(["report", "--budgets", str(config), "--json"])
    assert code == 0
    report = json.loads(out)
    assert report["note"] is None
    by_name = {b["budget"]: b for b in report["budgets"]}
    assert by_name["proxy"]["spent_usd"] == pytest.approx(0.25)
    assert by_name["key:team-a"]["spent_usd"] == pytest.approx(0.25)
    assert by_name["key:team-a"]["reserved_usd"] == pytest.approx(0.1)
    controls.budgets.release(held)
    code, table = run(["report", "--budgets", str(config)])
    assert code == 0 and "key:team-a" in table and "0.250000" in table


def test_report_budgets_says_when_budgets_are_in_process(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("budget_usd = 5.0\n")
    code, out = run(["report", "--budgets", str(config)])
    assert code == 0 and "in-process" in out
