"""The decorators' types, checked by mypy --strict on files that are never executed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
MYPY = Path(sys.executable).with_name("mypy")
_REPORTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def run_mypy(path: Path) -> tuple[int, str]:
    if not MYPY.exists():  # pragma: no cover - the dev extra installs it
        pytest.skip("mypy is not installed next to this Python")
    proc = subprocess.run(
        [str(MYPY), "--strict", "--no-error-summary", "--show-error-codes", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def expected_errors(path: Path) -> set[tuple[int, str]]:
    expected = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        marker = line.partition("# E: ")[2]
        for code in filter(None, (c.strip() for c in marker.split(","))):
            expected.add((number, code))
    return expected


def test_the_decorated_functions_keep_their_types() -> None:
    code, output = run_mypy(HERE / "decorator_types.py")
    assert code == 0, output


def test_mistakes_are_reported_where_they_are() -> None:
    path = HERE / "decorator_errors.py"
    code, output = run_mypy(path)
    assert code == 1, output
    reported = {
        (int(m["line"]), m["code"])
        for m in map(_REPORTED.match, output.splitlines())
        if m is not None and Path(m["file"]).name == path.name
    }
    expected = expected_errors(path)
    assert len(expected) >= 10
    assert reported == expected, output
