"""The package README's offline example runs as written, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_offline_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (example,) = [b for b in blocks if "Emulator()" in b]
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", example],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={"HAIKUCACHE_HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1] == "hit -> served locally for $0"
    assert lines[2] == "upstream calls: 2"
    assert int(lines[0].split()[0]) > 4000  # the long system prompt was read from the cache
    billed, baseline = re.findall(r"\$([0-9.]+)", lines[3])
    assert float(billed) < float(baseline)
