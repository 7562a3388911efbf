"""Where a feature map can stay in 16-channel blocks (NCHW16c) from one convolution to
the next, in a high-level Relax function.

This module owns `find_blocked_chains(func)`: the chains

    head = conv2d(x, constant W)          (float32, NCHW / OIHW, ungrouped or depthwise,
                                           static shapes)
    v1   = elementwise(head or v_i, ...)  (operands: chain values, constants that are
                                           scalars or per-channel, computed [N, C, 1, 1]
                                           tensors such as a squeeze-and-excite gate)
    m    = mean(v_i, axis=[2, 3])         (an exit: leaves the chain as [N, C, 1, 1])
    end  = conv2d(v_k, constant W')       (ungrouped or depthwise)

(an inverted-residual block's expansion, its BatchNorm bias and SiLU / ReLU6 / hard
swish into the depthwise conv; the depthwise conv, its activation, the excite gate's
product and the mean that feeds the gate into the projection conv) in which every
value from the head up to the ends is used only by the chain's own elementwise ops,
exits and ends, and has the head's shape. `PackConstantWeights` then writes the head's
output as `[N, ceil(C/16), H, W, 16]` straight from its register tile (no transposition
back to NCHW), runs the elementwise ops on that layout (per-channel constants re-laid
out the same way; an [N, C, 1, 1] operand, already in that order, reshaped), takes the
mean on the blocks, and the end convs read the blocks as they are instead of copying
an NCHW map into them. A conv may end one chain and head the next.

When 16 does not divide C (MobileNetV3's 72, 88 and 120; at most a quarter of the
lanes padding), the last block has padding lanes, as in ONNX Runtime's NCHWc. Nothing
real is computed from them, so their values (whatever the elementwise ops make of the
head's zero-weight outputs, even NaN) never reach a result: a depthwise conv computes
each lane from the same lane, an ungrouped end conv's reduction runs over the C real
channels only, and an exit drops them after the mean. Per-channel operands are padded
to whole blocks to match.

This is the layout ONNX Runtime's NCHWc transformer carries between convs, applied
where it is exact and invisible to every other op: anything else that reads a chain
value (a residual add of a map computed elsewhere, a function output, a transpose)
keeps the whole chain NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, tirx

__all__ = ["BlockedChains", "find_blocked_chains", "ELEMENTWISE_OPS", "BLOCK", "blocked_constant", "blocks_of",
           "per_channel_constant", "per_channel_tensor", "is_spatial_mean"]

#: channels per block of the carried layout (one AVX-512 float32 vector)
BLOCK = 16

#: elementwise ops a chain may pass through: every output element depends only on the
#: same element of its tensor operands, so the layout of those operands does not matter
ELEMENTWISE_OPS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
    "relax.sigmoid", "relax.nn.relu", "relax.nn.silu", "relax.clip", "relax.tanh", "relax.exp", "relax.negative",
    "relax.isnan", "relax.where",  # requant's ReLU keeps NaN: where(isnan(x), x, max(x, 0))
})


@dataclass
class BlockedChains:
    """The bindings of one function that carry NCHW16c, as sets of the bound
    variables: heads (convs writing blocks), members (elementwise ops on blocks), ends
    (convs reading blocks; a conv may end one chain and head the next) and exits
    (spatial means of a chain value, whose [N, C, 1, 1] result leaves the chain)."""
    heads: set = field(default_factory=set)
    members: set = field(default_factory=set)
    ends: set = field(default_factory=set)
    exits: set = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.heads)


def _op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _static_shape(ty) -> tuple[int, ...] | None:
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = ty.shape.values
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _constant(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


def _plain_layout(call: relax.Call) -> bool:
    a = call.attrs
    return (a.data_layout, a.kernel_layout, a.out_layout) == ("NCHW", "OIHW", "NCHW")


def _float_conv(call: relax.Call) -> np.ndarray | None:
    """The float32 constant weight of an NCHW float32 conv2d with a static input and
    output, else None."""
    if _op_name(call) != "relax.nn.conv2d" or not _plain_layout(call):
        return None
    x_ty, out_ty = call.args[0].ty, call.ty
    if (_static_shape(x_ty) is None or _static_shape(out_ty) is None or x_ty.dtype != "float32"
            or out_ty.dtype != "float32"):
        return None
    w = _constant(call.args[1])
    if w is None or w.ndim != 4 or w.dtype != np.float32:
        return None
    return w


def _is_depthwise(call, w: np.ndarray) -> bool:
    return int(call.attrs.groups) == w.shape[0] == _static_shape(call.args[0].ty)[1]


def _is_head(call) -> bool:
    """An ungrouped or depthwise conv whose channels fill at least three quarters of
    the blocks that carry them (a squeeze-and-excite's 4 or 20 channels would make
    the depthwise work and the copies of the padding lanes outweigh the gain)."""
    w = _float_conv(call)
    if w is None:
        return False
    lanes = blocks_of(w.shape[0]) * BLOCK
    return 4 * (lanes - w.shape[0]) <= lanes and (int(call.attrs.groups) == 1 or _is_depthwise(call, w))


def _is_end(call, channels: int) -> bool:
    """An ungrouped or depthwise conv reading `channels` channels."""
    w = _float_conv(call)
    return (w is not None and _static_shape(call.args[0].ty)[1] == channels
            and (int(call.attrs.groups) == 1 or _is_depthwise(call, w)))


def is_spatial_mean(call) -> bool:
    """mean(x, axis=[2, 3], keepdims=True) of an NCHW map: a global average pool."""
    if _op_name(call) != "relax.mean" or not call.attrs.keepdims or call.attrs.axis is None:
        return False
    return sorted(int(a) % 4 for a in call.attrs.axis) == [2, 3] and call.args[0].ty.ndim == 4


def per_channel_tensor(ty, shape: tuple[int, ...]) -> bool:
    """A computed [N, C, 1, 1] or [1, C, 1, 1] float32 tensor (a squeeze-and-excite
    gate) that broadcasts against an NCHW map of `shape`: in NCHW16c the same values
    in the same order, so a reshape lays it out."""
    dims = _static_shape(ty)
    return (dims is not None and ty.dtype == "float32" and len(dims) == 4 and dims[0] in (1, shape[0])
            and dims[1] == shape[1] and dims[2:] == (1, 1))


def per_channel_constant(value: np.ndarray, shape: tuple[int, ...]) -> bool:
    """A constant that broadcasts against an NCHW map of `shape` without changing its
    shape and varies at most along channels: a scalar, or [1, C, 1, 1] / [C, 1, 1]."""
    if value.ndim > len(shape):
        return False
    dims = (1,) * (len(shape) - value.ndim) + tuple(value.shape)
    return all(d == 1 for i, d in enumerate(dims) if i != 1) and dims[1] in (1, shape[1])


def blocks_of(channels: int) -> int:
    """The 16-channel blocks that carry `channels` channels (the last one padded)."""
    return -(-channels // BLOCK)


def blocked_constant(value: np.ndarray, channels: int) -> np.ndarray:
    """A per-channel constant (`per_channel_constant`) of a `channels`-channel map in the
    carried layout: [1, ceil(C/16), 1, 1, 16], padding lanes repeating the last channel's
    value (a scalar stays a scalar)."""
    flat = value.reshape(-1)
    if flat.size == 1:
        return value
    padded = np.pad(flat, (0, blocks_of(channels) * BLOCK - channels), mode="edge")
    return np.ascontiguousarray(padded.reshape(1, blocks_of(channels), 1, 1, BLOCK))


def _uses(func: relax.Function) -> dict:
    """var -> the bound vars whose values read it; None stands for the function's
    result (a use outside any binding)."""
    uses: dict = {}

    def record(expr, user) -> None:
        for v in relax.analysis.free_vars(expr):
            uses.setdefault(v, []).append(user)

    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            record(binding.value, binding.var)
    record(body.body, None)
    return uses


def find_blocked_chains(func: relax.Function) -> BlockedChains:
    """The chains of `func` (see the module doc) that can carry NCHW16c."""
    found = BlockedChains()
    if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
        return found
    bindings = [b for block in func.body.blocks for b in block.bindings]
    uses = _uses(func)
    for start, head in enumerate(bindings):
        if not _is_head(head.value):
            continue
        shape = _static_shape(head.value.ty)
        chain, members, ends, exits = {head.var}, set(), set(), set()
        pending = set(uses.get(head.var, []))  # bindings still to read a chain value
        for binding in bindings[start + 1:]:  # in program order: operands come first
            if not pending:
                break
            if binding.var not in pending:
                continue
            pending.discard(binding.var)
            reads = [v for v in relax.analysis.free_vars(binding.value) if v in chain]
            call = binding.value
            only_input = isinstance(call, relax.Call) and len(reads) == 1 and call.args[0].same_as(reads[0])
            if only_input and _is_end(call, shape[1]):
                ends.add(binding.var)
            elif only_input and is_spatial_mean(call):
                exits.add(binding.var)
            elif _chain_elementwise(call, shape, chain):
                members.add(binding.var)
                chain.add(binding.var)
                pending |= set(uses.get(binding.var, [])) - {None}
            else:
                ends = set()
                break
        carried = all(isinstance(v, relax.DataflowVar) and None not in uses.get(v, []) for v in chain)
        if ends and carried:
            found.heads.add(head.var)
            found.members |= members
            found.ends |= ends
            found.exits |= exits
    return found


def _chain_elementwise(call, shape: tuple[int, ...], chain: set) -> bool:
    """An elementwise op whose output has the chain's shape, whose tensor operands are
    chain values, per-channel constants or computed per-channel tensors, and that reads
    at least one chain value."""
    if _op_name(call) not in ELEMENTWISE_OPS or _static_shape(call.ty) != shape:
        return False
    reads_chain = False
    for arg in call.args:
        if isinstance(arg, relax.Var) and arg in chain:
            reads_chain = True
        elif not isinstance(arg.ty, relax.TensorType):
            continue  # a clip's bounds: scalars, not tensors
        elif isinstance(arg, relax.Var):
            if not per_channel_tensor(arg.ty, shape):
                return False
        else:
            value = _constant(arg)
            if value is None or not per_channel_constant(value, shape):
                return False
    return reads_chain
