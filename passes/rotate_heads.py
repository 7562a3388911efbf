"""Pass "rotate_heads": QuaRot's R2, a Hadamard rotation of every attention head's values
folded into the value projection's output columns and the output projection's input rows,
zero cost at run time (Ashkboos et al., "QuaRot", NeurIPS 2024, section 4, "exact
per-head Hadamard on v_proj / o_proj").

Attention is linear in V per head: with P_h the softmax probabilities of head h,
out_h = P_h V_h, so for any orthogonal R (D x D, D the head size)
    out_h R = P_h (V_h R).
Rewrite (exact in float), for each `ScaledDotProductAttention` whose V input is
`Transpose(Reshape(v, [B, S, Hkv, D]), [0, 2, 1, 3])` with v a canonical linear's output
read only there, or one part of a Split of it along the channels (GPT-2's fused q/k/v
projection: then only v's columns change), and whose output is merged back by
`Reshape(Transpose(out, [0, 2, 1, 3]), [B, S, H*D])` read only by canonical linears:
- the value projection `W_v <- W_v (I_Hkv (x) R)`, `b_v <- b_v (I_Hkv (x) R)`;
- every linear reading the merged heads `W_o <- (I_H (x) R)^T W_o`.
One R for every head (grouped-query attention shares a value head among H / Hkv query
heads, so all must use the same R); R = diag(s) H_D / sqrt(D), a random-signed Hadamard
(`seed`), or `rotation_transform`'s fallback for head sizes without one.

The merged heads then hold `ctx (I_H (x) R)`; the rest of QuaRot's rotation of the output
projection's input, a Hadamard across heads, runs online (passes/rotate_online.py,
`heads`), since the heads are only merged at run time.

Not matched (counted in the stats as `skipped:<why>`): V made otherwise (a shared or
biased reshape, a rotary encoding on V), merged heads read by something other than a
linear, a head size or a projection the pattern cannot see.

Stats: `attentions_rotated`, `skipped`, `skipped:<why>`; each rotated attention node gets
`meta["head_rotation"] = {"heads": H, "size": D}`, which rotate_online reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.passes.channel_transforms import BlockDiagonalTransform, rotation_transform
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.fold_common import Linear, linear_readers, mark_folded, producing_linear, replace_constant_input
from requant.passes.manager import PassResult, graph_pass

__all__ = ["rotate_heads", "HeadPattern", "match_heads"]

logger = logging.getLogger(__name__)

PASS = "rotate_heads"
_HEADS_FIRST = [0, 2, 1, 3]


@dataclass
class HeadPattern:
    """One attention's value projection (its output columns lo:hi are V), its merged
    output and their head layout."""

    sdpa: Node
    value: Linear  # the value projection
    columns: tuple[int, int]
    merged: Value  # [B, S, H * D], what the output projection reads
    readers: list[Linear]
    heads: int
    kv_heads: int
    size: int


def _split_heads(v: Value) -> Value | str:
    """The [B, S, Hkv * D] value split by Transpose(Reshape(., [B, S, Hkv, D]), heads first)."""
    t = v.producer
    if t is None or t.op != "Transpose" or list(t.attrs.get("perm") or []) != _HEADS_FIRST:
        return "V is not Transpose([0, 2, 1, 3]) of the projection"
    r = t.inputs[0].producer
    if r is None or r.op != "Reshape" or len(r.inputs[0].users) != 1 or len(t.inputs[0].users) != 1:
        return "V is not a Reshape of the projection read only by attention"
    src, split = r.inputs[0].type.shape, r.outputs[0].type.shape
    if not src or not split or len(split) != 4 or split[-1] * split[-2] != src[-1]:
        return "V's Reshape does not split the channels into [heads, size]"
    return r.inputs[0]


def _merged(out: Value) -> Value | str:
    """The [B, S, H * D] merge Reshape(Transpose(out, heads first)) of attention's output."""
    users = out.users
    if len(users) != 1 or users[0].op != "Transpose" or list(users[0].attrs.get("perm") or []) != _HEADS_FIRST:
        return "the attention output is not Transpose([0, 2, 1, 3])"
    t_out = users[0].outputs[0]
    if len(t_out.users) != 1 or t_out.users[0].op != "Reshape":
        return "the attention output is not merged by one Reshape"
    merged = t_out.users[0].outputs[0]
    shape = merged.type.shape
    if not shape or shape[-1] != out.type.shape[1] * out.type.shape[3]:
        return "the merge Reshape does not give [B, S, H * D]"
    return merged


def match_heads(sdpa: Node) -> HeadPattern | str:
    """The head pattern around one ScaledDotProductAttention, or why it does not match."""
    q, v = sdpa.inputs[0], sdpa.inputs[2]
    if q is None or v is None or q.type.shape is None or v.type.shape is None or len(v.type.shape) != 4:
        return "unknown ranks"
    heads, kv_heads, size = q.type.shape[1], v.type.shape[1], v.type.shape[3]
    if not all(isinstance(d, int) for d in (heads, kv_heads, size)) or q.type.shape[3] != size:
        return "head counts or the head size are not static"
    projected = _split_heads(v)
    if isinstance(projected, str):
        return projected
    found = _value_columns(projected)
    if isinstance(found, str):
        return found
    lin, columns = found
    merged = _merged(sdpa.outputs[0])
    if isinstance(merged, str):
        return merged
    readers, others = linear_readers(merged)
    if others or not readers:
        return f"the merged heads are read by something other than a linear: {others[0] if others else 'nothing'}"
    return HeadPattern(sdpa, lin, columns, merged, readers, heads, kv_heads, size)


def _value_columns(v: Value) -> tuple[Linear, tuple[int, int]] | str:
    """The linear whose output columns lo:hi are `v`: the linear writing v, or the one a
    Split along the channels takes v from."""
    lin = producing_linear(v)
    if lin is not None:
        return lin, (0, int(v.type.shape[-1]))
    split = v.producer
    if split is None or split.op != "Split":
        return "V is not a canonical linear's output (nor a Split of one)"
    src = split.inputs[0]
    rank = src.type.rank
    lin = producing_linear(src)
    if lin is None or not rank or int(split.attrs.get("axis", 0)) % rank != rank - 1:
        return "V is a Split of something other than a linear's channels"
    if any(len(o.users) != 1 for o in split.outputs if o is v) or len(src.users) != 1:
        return "V's projection is read by something other than its Split"
    widths = [o.type.shape[-1] for o in split.outputs]
    if not all(isinstance(w, int) for w in widths):
        return "V's Split has symbolic widths"
    k = next(i for i, o in enumerate(split.outputs) if o is v)
    lo = sum(widths[:k])
    return lin, (lo, lo + widths[k])


def _rotate_value_columns(graph: Graph, lin: Linear, columns: tuple[int, int], transform: BlockDiagonalTransform) -> None:
    """W[:, lo:hi] <- W[:, lo:hi] M and b[lo:hi] <- b[lo:hi] M."""
    lo, hi = columns
    w = np.asarray(lin.weight.const, np.float64).copy()
    w[:, lo:hi] = transform.right(w[:, lo:hi])
    replace_constant_input(graph, lin.matmul, 1, w, PASS)
    mark_folded(lin.matmul, PASS)
    if lin.add is not None and lin.bias is not None:
        b = np.asarray(lin.bias.const, np.float64).copy()
        b[lo:hi] = transform.right(b[lo:hi])
        replace_constant_input(graph, lin.add, lin.bias_index, b, PASS)
        mark_folded(lin.add, PASS)


@graph_pass(PASS, "QuaRot R2: a Hadamard rotation of each attention head folded into the value projection "
                  "(W_v (I (x) R)) and the output projection ((I (x) R)^T W_o) (exact)",
            requires=(CANONICAL_LINEARS,))
def rotate_heads(graph: Graph, seed: int = 0) -> PassResult:
    """See the module docstring. `seed`: the random signs of the per-head Hadamard."""
    stats: dict[str, int | float | str] = {"attentions_rotated": 0, "skipped": 0}
    for sdpa in [n for n in graph if n.op == "ScaledDotProductAttention"]:
        found = match_heads(sdpa)
        if isinstance(found, str):
            stats["skipped"] += 1
            key = f"skipped:{found}"
            stats[key] = int(stats.get(key, 0)) + 1
            logger.debug("%s: %s not rotated: %s", PASS, sdpa.label, found)
            continue
        r = rotation_transform(found.size, seed)
        _rotate_value_columns(graph, found.value, found.columns, BlockDiagonalTransform((r,) * found.kv_heads))
        per_head = BlockDiagonalTransform((r,) * found.heads)
        for lin in found.readers:
            lin.weight = replace_constant_input(graph, lin.matmul, 1, per_head.inverse_left(lin.weight.const), PASS)
            mark_folded(lin.matmul, PASS)
        sdpa.meta["head_rotation"] = {"heads": found.heads, "size": found.size}
        stats["attentions_rotated"] += 1
    return PassResult(graph, stats["attentions_rotated"] > 0, stats)
