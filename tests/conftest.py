"""Shared fixtures. Nothing here touches the user's real cache directory."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before any test can create the process-wide ledger, so it lives in a throwaway place.
_HOME = tempfile.mkdtemp(prefix="haikucache-tests-")
os.environ["HAIKUCACHE_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_name, None)
