"""Declarations of every op requant knows, one module per family. Importing this package
registers them all in `requant.ir.registry`."""

from __future__ import annotations

from requant.ir.ops import elementwise, linalg  # noqa: F401
