"""The window geometry Conv, ConvTranspose and the pools share: whether the TVM backend
can lower a windowed node (known rank, 1 to 3 spatial axes, static spatial dims for
SAME auto_pad), and ONNX's pads resolved from pads / auto_pad.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from requant.backends.tvm.lowering._common import static_int
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__ = ["static_spatial", "window_pads"]

logger = logging.getLogger(__name__)


def static_spatial(node: Node) -> str | None:
    """Why the TVM backend cannot lower windowed `node` (a check for `requires`), or None."""
    t = node.inputs[0].type
    if t.shape is None:
        return "needs an input of known rank in the TVM backend"
    if t.rank - 2 not in (1, 2, 3):
        return f"has {t.rank - 2} spatial axes; the TVM backend lowers 1-D, 2-D and 3-D windows"
    if node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and not all(
        isinstance(d, int) for d in t.shape[2:]
    ):
        return "auto_pad SAME needs static spatial dims in the TVM backend (use explicit pads)"
    return None


def window_pads(node: Node, x_shape: Sequence[Any], kernel: list[int]) -> list[int]:
    """ONNX pads [b1.., e1..] resolved from pads / auto_pad."""
    from requant.ir.shapes import resolve_pads

    a = get_schema(node.op).fill_attrs(node.attrs)
    n = len(kernel)
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    spatial = tuple(static_int(d) if static_int(d) is not None else "S" for d in x_shape[2:])
    pads = resolve_pads(spatial, kernel, strides, dilations, a.get("pads"), a["auto_pad"])
    return [int(p[0]) for p in pads] + [int(p[1]) for p in pads]
