"""Shared setup: nothing touches the user's cache directory or reaches beyond loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before any test can create the process-wide ledger, so it lives in a throwaway place.
_HOME = tempfile.mkdtemp(prefix="langchain-haikucache-tests-")
os.environ["HAIKUCACHE_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _name in (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_URL",
    "ANTHROPIC_PROXY",
):
    os.environ.pop(_name, None)
