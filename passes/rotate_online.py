"""Pass "rotate_online": Hadamard rotations computed at run time, for the activations no
offline rotation reaches (Ashkboos et al., "QuaRot", NeurIPS 2024, section 4: the online
Hadamard before the FFN's down projection (R4), across heads before the output projection,
and on queries and keys after the position encoding (R3); Liu et al., "SpinQuant", 2024,
R3 / R4).

For an activation x read by canonical linears `x W_k` and H = H_n / sqrt(n) (orthogonal,
requant.ir.hadamard), `x W_k = (x H)(H^T W_k)`: rewrite (exact in float)
    x -> W_k  into  Hadamard(x) -> (H^T W_k)
with requant's `Hadamard` op on the branch to the linears only (passes/fold_common.py
`migrate_transform`; other readers still see x; a linear writer of x read only by the
linears absorbs H offline instead). x H has no outlier channel: each output channel is a
+-1/sqrt(n) mix of all of them, so per-tensor quantization of x H loses far less. An
activation width without a Hadamard matrix gets a dense orthogonal product
(passes/channel_transforms.py `rotation_transform`, named in the stats).

Which activations (`scope`):
- "all": every float activation read by a canonical linear: the per-linear online
  rotation for any model, the only one post-norm models (BERT, MiniLM) admit;
- "writers": the inputs of the linears that write into a residual stream (the FFN's
  down projection, attention's output projection): QuaRot's online pieces once the stream
  itself is rotated offline (rotate_residual);
- "norms": the outputs of LayerNorm / RMSNorm read by linears.
Activations whose every linear reader already reads a rotated input (`meta["rotated_input"]`
on its MatMul: the stream readers after rotate_residual, or what this pass rotated before)
are skipped (`skipped:rotated_offline`).

Attention output after rotate_heads (`heads`, default on): the merged heads already hold
ctx (I_H (x) R); the rest of a full rotation is a Hadamard across heads: the merged
output viewed as [..., H, D], `Hadamard(., axis=-2)`, merged again (H multiply-adds per
element instead of H x D), with (H_H (x) I_D)^T folded into the output projection.

`block` b > 0: each activation of n channels gets the block-diagonal I_(n/b') (x) H_b' /
sqrt(b') instead (b' the largest Hadamard order <= b dividing n; the whole width when
n <= b, or when b' < 4: an odd width's only order is 1, no rotation at all): b'
multiply-adds per element instead of n, each outlier channel spread over b' channels.
That is enough for a per-tensor int8 quantizer, whose range the outliers set; a
4-bit grid wants every channel mixed (the rotate benchmark measures both). The attention
output needs no Hadamard across heads then when b <= the head size: rotate_heads' per-head
rotation already mixes each run of head-size channels (`skipped:heads_within_block`).

`qk` (R3, off by default): `Hadamard(., axis=-1)` on the queries and keys of every
attention, after the position encoding: (Q H)(K H)^T = Q K^T, exact; it only pays for a
quantized KV cache, which requant does not make yet.

Stats: `activations_rotated`, `linears_updated`, `across_heads`, `qk_rotated`, `dense`,
`blocked` (of those rotated, how many block-diagonally), `absorbed:linear`,
`skipped:rotated_offline`, `skipped:<why>`.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph, Node, Value
from requant.ir.hadamard import block_option_problem, hadamard_unsupported, normalized_hadamard
from requant.passes.channel_transforms import ChannelTransform, HadamardTransform, OrthogonalTransform, \
    rotation_transform
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.fold_common import (
    NORM_OPS,
    linear_readers,
    mark_folded,
    migrate_transform,
    replace_constant_input,
    splice_after,
)
from requant.passes.manager import PassResult, graph_pass
from requant.passes.residual_stream import find_residual_streams

__all__ = ["rotate_online", "SCOPES", "online_candidates", "block_order"]

logger = logging.getLogger(__name__)

PASS = "rotate_online"
SCOPES = ("all", "writers", "norms")
_HEADS_FIRST = [0, 2, 1, 3]


def _bump(stats: dict, key: str, n: int = 1) -> None:
    stats[key] = int(stats.get(key, 0)) + n


def online_candidates(graph: Graph, scope: str = "all") -> list[Value]:
    """The activations `rotate_online` would rotate with `scope` (module docstring), in
    graph order, before the offline-rotated ones are skipped."""
    if scope not in SCOPES:
        raise RequantError(f"{PASS}: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    writer_inputs: set[int] = set()
    if scope == "writers":
        for stream in find_residual_streams(graph):
            writer_inputs |= {id(w.linear.matmul.inputs[0]) for w in stream.writers if w.linear is not None}
    found = []
    for v in [*graph.inputs, *(o for n in graph for o in n.outputs)]:
        if not v.dtype.is_float or v.const is not None or not v.type.shape or not isinstance(v.type.shape[-1], int):
            continue
        if scope == "writers" and id(v) not in writer_inputs:
            continue
        if scope == "norms" and (v.producer is None or v.producer.op not in NORM_OPS):
            continue
        linears, _ = linear_readers(v)
        if linears:
            found.append(v)
    return found


def _rotated_offline(v: Value) -> bool:
    """Whether every linear reading `v` already reads a rotated input (`meta["rotated_input"]`,
    set by the stream rotation and by this pass)."""
    linears, _ = linear_readers(v)
    return all(lin.matmul.meta.get("rotated_input") for lin in linears)


def _rotated_heads(v: Value) -> Node | None:
    """The attention node whose heads rotate_heads rotated, when `v` is its merged output
    Reshape(Transpose(out, [0, 2, 1, 3]))."""
    r = v.producer
    t = r.inputs[0].producer if r is not None and r.op == "Reshape" else None
    if t is None or t.op != "Transpose" or list(t.attrs.get("perm") or []) != _HEADS_FIRST:
        return None
    sdpa = t.inputs[0].producer
    return sdpa if sdpa is not None and "head_rotation" in sdpa.meta else None


def _across_heads(graph: Graph, v: Value, sdpa: Node, stats: dict) -> None:
    """A Hadamard across the heads of the merged attention output `v` [..., H * D]:
    Reshape [..., H, D] -> Hadamard(axis=-2) -> Reshape back, on the branch to v's linear
    readers, which take (H_H (x) I_D)^T. The merge itself stays as it was (ONNX Runtime's
    QAttention fusion matches attention up to that Reshape)."""
    heads, size = sdpa.meta["head_rotation"]["heads"], sdpa.meta["head_rotation"]["size"]
    transform = OrthogonalTransform(np.kron(normalized_hadamard(heads), np.eye(size)), "hadamard across heads")
    linears, _ = linear_readers(v)
    for lin in linears:
        lin.weight = replace_constant_input(graph, lin.matmul, 1, transform.inverse_left(lin.weight.const), PASS)
        mark_folded(lin.matmul, PASS)
        lin.matmul.meta["rotated_input"] = PASS
    lead = [0] * (v.type.rank - 1)  # Reshape's 0: keep that dim
    split = graph.add_constant(np.asarray(lead + [heads, size], np.int64), base=f"{v.name}_heads")
    merge = graph.add_constant(np.asarray(lead + [heads * size], np.int64), base=f"{v.name}_merged")
    uses = [(lin.matmul, 0) for lin in linears]
    heads_view = splice_after(graph, v, uses, "Reshape", [split], created_by=PASS, suffix="heads")
    rotated = splice_after(graph, heads_view, list(heads_view.uses), "Hadamard", [], {"axis": -2}, created_by=PASS,
                           suffix="across_heads")
    splice_after(graph, rotated, list(rotated.uses), "Reshape", [merge], created_by=PASS, suffix="merged")
    _bump(stats, "activations_rotated")
    _bump(stats, "across_heads")
    _bump(stats, "linears_updated", len(linears))


def _rotate_queries_and_keys(graph: Graph, stats: dict) -> None:
    for sdpa in [n for n in graph if n.op == "ScaledDotProductAttention"]:
        q, k = sdpa.inputs[0], sdpa.inputs[1]
        size = q.type.shape[-1] if q.type.shape else None
        if not isinstance(size, int) or hadamard_unsupported(size) is not None or q is k:
            _bump(stats, "skipped:qk_size")
            continue
        for i, x in ((0, q), (1, k)):
            splice_after(graph, x, [(sdpa, i)], "Hadamard", [], {"axis": -1}, created_by=PASS, suffix="qk_rotated")
        _bump(stats, "qk_rotated")


def block_order(n: int, block: int) -> int:
    """The order of the diagonal Hadamard blocks for n channels and the `block` option: n
    for block 0 or n <= block, else the largest Hadamard order <= block dividing n, or n
    again when that is below 4 (blocks of 1 or 2 would hardly mix anything)."""
    if block == 0 or n <= block:
        return n
    b = max(d for d in range(1, block + 1) if n % d == 0 and hadamard_unsupported(d) is None)
    return b if b >= 4 else n


def _transform(n: int, block: int) -> ChannelTransform:
    b = block_order(n, block)
    if b < n:
        return HadamardTransform(n, block=b)
    return HadamardTransform(n) if hadamard_unsupported(n) is None else rotation_transform(n, None)


@graph_pass(PASS, "online Hadamard on linear inputs (QuaRot R4, per-linear for any model), across heads after "
                  "rotate_heads, on Q/K (R3); H^T folded into the readers (exact)", requires=(CANONICAL_LINEARS,))
def rotate_online(graph: Graph, scope: str = "all", heads: bool = True, qk: bool = False, block: int = 0
                  ) -> PassResult:
    """See the module docstring."""
    problem = block_option_problem(block)
    if problem:
        raise RequantError(f"{PASS}: block {problem}, got {block!r}")
    stats: dict[str, int | float | str] = {"activations_rotated": 0, "linears_updated": 0, "across_heads": 0,
                                           "qk_rotated": 0, "dense": 0}
    for v in online_candidates(graph, scope):
        if _rotated_offline(v):
            _bump(stats, "skipped:rotated_offline")
            continue
        sdpa = _rotated_heads(v) if heads else None
        if sdpa is not None and block and block <= sdpa.meta["head_rotation"]["size"]:
            _bump(stats, "skipped:heads_within_block")
            continue
        if sdpa is not None and hadamard_unsupported(sdpa.meta["head_rotation"]["heads"]) is None:
            _across_heads(graph, v, sdpa, stats)
            continue
        transform = _transform(int(v.type.shape[-1]), block)
        if isinstance(transform, HadamardTransform) and transform.block:
            _bump(stats, "blocked")
        found = migrate_transform(graph, v, transform, created_by=PASS)
        for lin in found.linears:
            lin.matmul.meta["rotated_input"] = PASS
        _bump(stats, "activations_rotated")
        _bump(stats, "linears_updated", len(found.linears))
        if found.how == "matmul":
            _bump(stats, "dense")
        elif found.how != "hadamard":
            _bump(stats, f"absorbed:{found.how}")
    if qk:
        _rotate_queries_and_keys(graph, stats)
    changed = stats["activations_rotated"] > 0 or stats["qk_rotated"] > 0
    return PassResult(graph, changed, stats)
