"""ONNX lowering of the standard quantization ops (`requant.ir.ops.quant`):
QuantizeLinear / DequantizeLinear as the same ONNX op once the target opset has what the
node uses (its code type, block_size, output_dtype), DynamicQuantizeLinear, MatMulInteger
and QLinearMatMul as they are. FakeQuantize has its own module (`fake_quantize`)."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = ["QDQ_FP8_DTYPES"]

logger = logging.getLogger(__name__)

QDQ_FP8_DTYPES = (dtypes.fp8_e4m3, dtypes.fp8_e5m2)
"""The fp8 formats ONNX QuantizeLinear / DequantizeLinear take (from opset 19)."""

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers("DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul")(standard)


def _qdq_min_opset(node: Node) -> tuple[int, str]:
    """Oldest default-domain opset whose Q/DQ expresses `node`, and why."""
    quantize = node.op == "QuantizeLinear"
    code = node.outputs[0].dtype if quantize else node.inputs[0].dtype
    needs = [(13, "")]
    if code in QDQ_FP8_DTYPES:
        needs.append((19, f"{code} codes"))
    if code in (dtypes.int4, dtypes.uint4, dtypes.int16, dtypes.uint16):
        needs.append((21, f"{code} codes"))
    if code == dtypes.fp4_e2m1:
        needs.append((23, "fp4_e2m1 codes"))
    if int(node.attrs.get("block_size", 0) or 0):
        needs.append((21, "block_size"))
    if node.attrs.get("output_dtype") is not None:
        needs.append((21 if quantize else 23, "output_dtype"))
    if quantize and node.inputs[0].dtype != dtypes.float32:
        needs.append((19, f"{node.inputs[0].dtype} input"))
    return max(needs)


@LOWERINGS.lowers("QuantizeLinear", "DequantizeLinear")
def _qdq(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Q/DQ as the same ONNX op once the opset has what the node uses (`saturate` is
    dropped before opset 19, where only fp8 gives it a meaning and fp8 does not exist)."""
    need, why = _qdq_min_opset(node)
    if ctx.opset < need:
        raise UnsupportedOpError(f"{node.label}: ONNX's {node.op} has {why} only from opset {need}; "
                                 f"target opset is {ctx.opset} (use opset >= {need} or opset=None)")
    if ctx.opset < 19 and "saturate" in node.attrs:
        attrs = {k: v for k, v in node.attrs.items() if k != "saturate" and v is not None}
        ctx.emit(node.op, ins, outs, name=node.name or None, **attrs)
        return
    standard(ctx, node, ins, outs)
