"""Fidelity: the official anthropic SDK — old (httpx) and new (httpx2) — talks to the emulator.

The newest SDK runs in this environment. ``anthropic<1`` cannot share a virtualenv with it, so
it gets its own, built once under ``.cache/compat`` from the package index (CI has it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haikucache.testing import Emulator

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("sdk_script.py")
OLD_SDK = "anthropic>=0.108,<1"


def _text_of_tokens(emulator: Emulator, tokens: int) -> str:
    """Text the emulator's tokenizer counts at ``tokens`` or a few dozen more."""
    vocab = "fare rules apply to every passenger who changes a booking before departure".split()
    words: list[str] = []
    while True:
        words.extend(vocab[(len(words) + j) % len(vocab)] for j in range(40))
        text = " ".join(words)
        if emulator.count_tokens_of(text) >= tokens:
            return text


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    emulator = Emulator()
    return {
        "long_system": _text_of_tokens(emulator, 5000),
        "short_system": _text_of_tokens(emulator, 3000),
    }


@pytest.fixture(scope="module")
def old_sdk_python() -> Path:
    """A virtualenv with ``anthropic<1`` (httpx) and haikucache, reused between runs."""
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


def run_script(python: Path | str, spec: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [str(python), str(SCRIPT), str(spec_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(batch_processing_seconds=0)
    with emulator.serve() as base_url:
        yield emulator, base_url


def check(result: dict[str, Any], served: tuple[Emulator, str] | None = None) -> None:
    long_first, long_second = result["long"]
    # A 5,000-token system prompt with a marker writes on call 1 and reads on call 2 …
    assert long_first["write"] >= 5000 and long_first["read"] == 0
    assert long_first["write_5m"] == long_first["write"] and long_first["write_1h"] == 0
    assert long_second["read"] == long_first["write"] and long_second["write"] == 0
    assert long_second["input"] == long_first["input"]
    # … and a 3,000-token one caches nothing on Haiku 4.5 (minimum 4,096), without an error.
    for usage in result["short"]:
        assert usage["write"] == 0 and usage["read"] == 0
    assert result["text_type"] == "text"
    assert result["stop_reason"] in ("end_turn", "max_tokens")

    tool = result["tool"]
    assert tool["stop_reason"] == "tool_use" and tool["type"] == "tool_use"
    assert tool["name"] == "get_weather"
    assert isinstance(tool["input"]["city"], str) and tool["input"]["unit"] in ("c", "f")

    stream = result["stream"]
    assert stream["chunks"] > 1
    assert stream["text"] == stream["final_text"]
    # The streamed call reuses the prefix the JSON calls cached: full usage reaches the SDK.
    assert stream["usage"]["read"] == long_first["write"]
    assert stream["usage"]["output"] > 0

    assert result["count_tokens"] > 0
    batch = result["batch"]
    assert batch["created_status"] == "in_progress"
    assert batch["status"] == "ended"
    assert batch["results"] == {
        "job-0": "succeeded",
        "job-1": "succeeded",
        "job-2": "succeeded",
        "bad": "errored",
    }
    assert batch["counts"]["succeeded"] == 3 and batch["counts"]["errored"] == 1
    if served is not None:
        emulator, base_url = served
        assert batch["results_url"].startswith(base_url)
        assert emulator.requests["messages"] == 6


def test_newest_sdk_over_loopback(
    served: tuple[Emulator, str], texts: dict[str, str], tmp_path: Path
) -> None:
    result = run_script(sys.executable, {"base_url": served[1], **texts}, tmp_path)
    assert int(result["sdk"].split(".")[0]) >= 1
    check(result, served)


def test_newest_sdk_in_process_over_httpx2(texts: dict[str, str], tmp_path: Path) -> None:
    result = run_script(sys.executable, {"in_process": True, **texts}, tmp_path)
    check(result)


@pytest.mark.compat
def test_old_sdk_over_loopback(
    old_sdk_python: Path, served: tuple[Emulator, str], texts: dict[str, str], tmp_path: Path
) -> None:
    result = run_script(old_sdk_python, {"base_url": served[1], **texts}, tmp_path)
    assert result["sdk"].startswith("0.")
    check(result, served)


@pytest.mark.compat
def test_old_sdk_in_process_over_httpx(
    old_sdk_python: Path, texts: dict[str, str], tmp_path: Path
) -> None:
    result = run_script(old_sdk_python, {"in_process": True, **texts}, tmp_path)
    assert result["sdk"].startswith("0.")
    check(result)
