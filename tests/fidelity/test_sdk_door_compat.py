"""Fidelity: ``haikucache.anthropic.wrap`` on the oldest supported SDK (0.x, httpx) and the newest.

``anthropic<1`` cannot share a virtualenv with the newest SDK, so the scenario below runs as a
script in the separate virtualenv tests/fidelity/test_sdk.py builds (``.cache/compat``), and
with this interpreter's SDK for comparison. It prints one JSON object; the tests read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OLD_SDK = "anthropic>=0.108,<1"

SCRIPT = r"""
import asyncio, json, sys

import anthropic
import haikucache
import haikucache.anthropic as hca
from haikucache import MemoryLedger, MemoryStore
from haikucache.testing import Emulator

spec = json.loads(sys.argv[1])
uses_httpx2 = anthropic.DefaultHttpxClient.__mro__[1].__module__.startswith("httpx2")
ASK = {
    "model": "claude-haiku-4-5",
    "max_tokens": 1024,
    "system": "Answer in two sentences.",
    "messages": [{"role": "user", "content": "What is the baggage allowance?"}],
}
TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"],
    },
}


def status(obj):
    return hca.info(obj).cache


def scenario(hook, emu, make_client, make_async_client):
    out = {}
    client = hca.wrap(make_client("sk-a"), store=MemoryStore(), ledger=MemoryLedger(), hook=hook)
    out["client_type"] = type(client).__name__
    first, second = client.messages.create(**ASK), client.messages.create(**ASK)
    out["create"] = [status(first), status(second)]
    out["create_same"] = first.model_dump(exclude={"id"}) == second.model_dump(exclude={"id"})
    out["saved_equals_baseline"] = abs(hca.info(second).saved_usd - hca.info(first).baseline_usd) < 1e-12

    raw = client.messages.with_raw_response.create(**ASK)
    out["raw"] = {
        "type": type(raw).__name__,
        "cache": raw.headers.get("haikucache-cache"),
        "saved": float(raw.headers.get("haikucache-saved-usd")),
        "parsed_same": raw.parse().content == first.content,
    }

    stream_ask = {**ASK, "max_tokens": 1000}
    with client.messages.stream(**stream_ask) as s:
        live = s.get_final_message()
    with client.messages.stream(**stream_ask) as s:
        chunks = list(s.text_stream)
        replayed = s.get_final_message()
    out["stream"] = [status(live), status(replayed)]
    out["stream_same"] = live.model_dump(exclude={"id"}) == replayed.model_dump(exclude={"id"})
    out["stream_chunks"] = len(chunks)
    out["stream_usage_output"] = replayed.usage.output_tokens

    tool_ask = {**ASK, "tools": [TOOL], "tool_choice": {"type": "tool", "name": "get_weather"}}
    tool_live = client.messages.create(**tool_ask)
    with client.messages.stream(**tool_ask) as s:
        tool_hit = s.get_final_message()
    out["tool"] = [tool_live.stop_reason, status(tool_hit), tool_hit.content[-1].input == tool_live.content[-1].input]

    before = emu.requests["messages"]
    extra = client.messages.create(**ASK, extra_body={"stop_sequences": ["zebra"]})
    out["extra_body"] = {
        "cache": status(extra),
        "sent": emu.log[-1].body.get("stop_sequences"),
        "new_key": hca.info(extra).key != hca.info(first).key,
    }
    beta = client.beta.messages.create(**ASK, betas=["token-efficient-tools-2025-02-19"])
    out["beta"] = {
        "cache": status(beta),
        "new_key": hca.info(beta).key != hca.info(first).key,
        "header": emu.log[-1].headers.get("anthropic-beta"),
    }
    other = hca.wrap(make_client("sk-b"), engine=hca.engine_of(client))
    out["other_tenant"] = status(other.messages.create(**ASK))
    out["copy_other_key"] = status(client.with_options(api_key="sk-c").messages.create(**ASK))
    out["upstream_calls_for_variants"] = emu.requests["messages"] - before

    emu.inject("overloaded")
    try:
        client.messages.create(**{**ASK, "max_tokens": 512})
        out["error"] = None
    except Exception as exc:
        out["error"] = {
            "type": type(exc).__name__,
            "sdk_status_error": isinstance(exc, anthropic.APIStatusError),
            "haikucache_error": isinstance(exc, haikucache.HaikuCacheError),
        }

    before = sum(emu.requests.values())
    try:
        client.messages.create(**{**ASK, "messages": []})
        out["bad_input"] = None
    except Exception as exc:
        out["bad_input"] = {
            "haikucache": isinstance(exc, haikucache.RequestValidationError),
            "sdk": isinstance(exc, anthropic.BadRequestError),
            "param": getattr(exc, "param", None),
            "requests": sum(emu.requests.values()) - before,
        }

    out["count_tokens"] = client.messages.count_tokens(model=ASK["model"], messages=ASK["messages"]).input_tokens

    async def run_async():
        aclient = hca.wrap(make_async_client("sk-a"), store=MemoryStore(), ledger=MemoryLedger(), hook=hook)
        a1 = await aclient.messages.create(**ASK)
        a2 = await aclient.messages.create(**ASK)
        async with aclient.messages.stream(**stream_ask) as s:
            a3 = await s.get_final_message()
        async with aclient.messages.stream(**stream_ask) as s:
            a4 = await s.get_final_message()
        await aclient.close()
        return [type(aclient).__name__, status(a1), status(a2), status(a3), status(a4),
                a3.model_dump(exclude={"id"}) == a4.model_dump(exclude={"id"})]

    out["async"] = asyncio.run(run_async())
    client.close()
    return out


def main():
    result = {"sdk": anthropic.__version__, "httpx2": uses_httpx2, "hooks": {}}
    for hook in ("middleware", "transport"):
        if not spec.get("loopback"):
            emu = Emulator(batch_processing_seconds=0)
            transport = emu.httpx2_transport() if uses_httpx2 else emu.transport()

            def make_client(key):
                return anthropic.Anthropic(api_key=key, base_url="http://emulator.test", max_retries=0,
                                           http_client=anthropic.DefaultHttpxClient(transport=transport))

            def make_async_client(key):
                return anthropic.AsyncAnthropic(api_key=key, base_url="http://emulator.test", max_retries=0,
                                                http_client=anthropic.DefaultAsyncHttpxClient(transport=transport))

            result["hooks"][hook] = scenario(hook, emu, make_client, make_async_client)
        else:
            emu = Emulator(batch_processing_seconds=0)
            with emu.serve() as base_url:
                def make_client(key):
                    return anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0)

                def make_async_client(key):
                    return anthropic.AsyncAnthropic(api_key=key, base_url=base_url, max_retries=0)

                result["hooks"][hook] = scenario(hook, emu, make_client, make_async_client)
    print(json.dumps(result))


main()
"""


@pytest.fixture(scope="module")
def old_sdk_python() -> Path:
    """The ``anthropic<1`` (httpx) virtualenv of tests/fidelity/test_sdk.py, built if missing."""
    env_dir = ROOT / ".cache" / "compat" / "anthropic-0"
    python = env_dir / "bin" / "python"
    marker = env_dir / ".ready"
    if not marker.exists():
        venv.create(env_dir, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", OLD_SDK, "-e", str(ROOT)],
            check=True,
            timeout=600,
        )
        marker.write_text(OLD_SDK)
    return python


def run(python: Path | str, tmp_path: Path, **spec: Any) -> dict[str, Any]:
    script = tmp_path / "door_script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [str(python), "-W", "error::ResourceWarning", str(script), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def check(result: dict[str, Any]) -> None:
    assert set(result["hooks"]) == {"middleware", "transport"}
    for hook, out in result["hooks"].items():
        assert out["client_type"] == "Anthropic", hook
        assert out["create"] == ["miss", "hit"] and out["create_same"], hook
        assert out["saved_equals_baseline"], hook
        raw = out["raw"]
        assert raw["cache"] == "hit" and raw["saved"] > 0 and raw["parsed_same"], hook
        assert raw["type"] == ("APIResponse" if result["httpx2"] else "LegacyAPIResponse")
        assert out["stream"] == ["miss", "hit"] and out["stream_same"], hook
        assert out["stream_chunks"] > 1 and out["stream_usage_output"] > 0, hook
        assert out["tool"] == ["tool_use", "hit", True], hook
        # extra_body (merged by 0.x only after the middleware) is in the key and on the wire.
        assert out["extra_body"] == {"cache": "miss", "sent": ["zebra"], "new_key": True}, hook
        assert out["beta"] == {
            "cache": "miss",
            "new_key": True,
            "header": "token-efficient-tools-2025-02-19",
        }, hook
        assert out["other_tenant"] == "miss" and out["copy_other_key"] == "miss", hook
        assert out["upstream_calls_for_variants"] == 4, hook
        assert out["error"] == {
            "type": "OverloadedError",
            "sdk_status_error": True,
            "haikucache_error": False,
        }, hook
        assert out["bad_input"] == {
            "haikucache": True,
            "sdk": True,
            "param": "messages",
            "requests": 0,
        }, hook
        assert out["count_tokens"] > 0, hook
        assert out["async"] == ["AsyncAnthropic", "miss", "hit", "miss", "hit", True], hook


def test_newest_sdk_in_process(tmp_path: Path) -> None:
    result = run(sys.executable, tmp_path)
    assert result["httpx2"] and int(result["sdk"].split(".")[0]) >= 1
    check(result)


@pytest.mark.compat
def test_oldest_sdk_in_process_over_httpx(old_sdk_python: Path, tmp_path: Path) -> None:
    result = run(old_sdk_python, tmp_path)
    assert result["sdk"].startswith("0.") and not result["httpx2"]
    check(result)


@pytest.mark.compat
def test_oldest_sdk_over_loopback(old_sdk_python: Path, tmp_path: Path) -> None:
    result = run(old_sdk_python, tmp_path, loopback=True)
    assert result["sdk"].startswith("0.") and not result["httpx2"]
    check(result)
