"""ONNX lowering of Resize (`requant.ir.ops.resize`): ONNX's own Resize. The registry
has opset 19's attributes; an older target opset gets only those it knows, so an
attribute at its default is left out there and one set otherwise is refused, naming the
opset that has it (antialias, axes and keep_aspect_ratio_policy came in 18, the
half_pixel_symmetric mode in 19). Omitted roi / scales inputs are written as empty
names, which Resize takes from opset 13.

Linear and cubic interpolation of integers round the weighted sum half to even and
saturate (requant, ONNX's reference) where ONNX Runtime's integer kernels truncate: they
are exported as float32 Resize, Round and requant's float -> integer Cast (exact for
8/16-bit integers; wider ones are interpolated in float32, which ONNX Runtime's Resize
offers as its widest float)."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, onnx_schema
from requant.backends.onnx.lowering.cast import emit_float_to_int
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__: list[str] = []

logger = logging.getLogger(__name__)

_SINCE = {"antialias": 18, "axes": 18, "keep_aspect_ratio_policy": 18}
_FLOAT_ATTRS = {"cubic_coeff_a", "extrapolation_value"}


@LOWERINGS.lowers("Resize")
def _resize(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Resize as it is, its attributes trimmed to what the target opset's Resize has."""
    schema = onnx_schema("Resize", ctx.opset)
    defaults = get_schema("Resize").attrs
    attrs = {}
    for key, value in node.attrs.items():
        if value is None:
            continue
        if schema is not None and key not in schema.attributes:
            if value == defaults.get(key):
                continue
            raise UnsupportedOpError(f"{node.label}: {key}={value!r} needs Resize from opset {_SINCE.get(key, 19)}; "
                                     f"the target opset is {ctx.opset}")
        attrs[key] = value
    mode = attrs.get("coordinate_transformation_mode")
    if mode == "half_pixel_symmetric" and ctx.opset < 19:
        raise UnsupportedOpError(f"{node.label}: coordinate_transformation_mode half_pixel_symmetric needs Resize "
                                 f"from opset 19; the target opset is {ctx.opset}")
    for key in _FLOAT_ATTRS & attrs.keys():
        attrs[key] = float(attrs[key])
    if "axes" in attrs:
        attrs["axes"] = [int(a) for a in attrs["axes"]]
    dt = node.inputs[0].dtype
    if not dt.is_integer or node.attrs.get("mode", "nearest") == "nearest":
        _emit_resize(ctx, ins, outs[0], node.name or None, attrs)
        return
    n = lambda p: ctx.sub_name(node, p)
    (xf,) = ctx.emit("Cast", [ins[0]], to=dtype_to_onnx(dtypes.float32), name=n("to_f32"))
    yf = ctx.fresh(f"{outs[0]}_f32")
    _emit_resize(ctx, [xf, *ins[1:]], yf, n("resize_f32"), attrs)
    (yr,) = ctx.emit("Round", [yf], name=n("round"))
    emit_float_to_int(ctx, node, yr, dtypes.float32, dt, outs[0])


def _emit_resize(ctx: EmitContext, ins: list, out: str, name: str | None, attrs: dict) -> None:
    """One ONNX Resize, its attributes in the node's order (reading the file back gives
    the same node)."""
    from onnx import helper

    names = list(ins)
    while names and names[-1] is None:
        names.pop()
    proto = helper.make_node("Resize", ["" if n is None else n for n in names], [out], name=name)
    proto.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    ctx.nodes.append(proto)
