"""Session-wide test setup: every pass pipeline verifies the graph after each pass, and
the shared helpers next to this file (e.g. `strategies`) are importable by name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["REQUANT_VERIFY"] = "1"

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
