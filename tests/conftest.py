"""Session-wide test setup: every pass pipeline verifies the graph after each pass, saved
models are signed with a key of the test session's own, and the shared helpers next to
this file (e.g. `strategies`) are importable by name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["REQUANT_VERIFY"] = "1"

# Saving signs manifests with a per-user key it creates on first use (requant/trust.py):
# the suite gets its own, in a directory removed at exit, never the user's.
if "REQUANT_CONFIG_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _CONFIG_DIR = tempfile.mkdtemp(prefix="requant-test-config-")
    os.environ["REQUANT_CONFIG_DIR"] = _CONFIG_DIR
    atexit.register(shutil.rmtree, _CONFIG_DIR, True)

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
