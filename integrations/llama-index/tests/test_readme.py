"""The package README's examples run as written, top to bottom, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)

# Third-party warnings a reader would see too, and nothing of ours: langchain-community
# (installed here for the benchmarks) announces its sunset when LlamaIndex probes for it, and
# llama-index-workflows touches deprecated pydantic attributes when an agent starts.
PRELUDE = """\
import warnings
import pydantic
warnings.filterwarnings("ignore", "`langchain-community` is being sunset", DeprecationWarning)
warnings.filterwarnings("ignore", category=pydantic.warnings.PydanticDeprecationWarning)
"""


def test_the_readme_shows_every_door() -> None:
    text = "".join(BLOCKS)
    for name in ("batch_complete", "wrap(", "FunctionAgent", "Settings.llm", "stream_complete"):
        assert name in text


def test_the_readme_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", PRELUDE + "\n".join(BLOCKS)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={"HAIKUCACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "hit" in lines and "miss" in lines
