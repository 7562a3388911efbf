"""Pass "layernorm_to_rmsnorm": the LayerNorms of a pre-norm residual stream become
RMSNorms, so that the stream can be rotated (passes/rotate_residual.py) on models with
LayerNorm (OPT, GPT-2, ViT), not only on Llama's RMSNorm (SliceGPT, Ashkboos et al.,
ICLR 2024, section 3; QuaRot uses the same step for OPT).

LayerNorm is `RMSNorm(x M)` with `M = I - 11^T / d`, the mean removal. Rewrite (exact in
float, up to rounding), for one residual stream found by passes/residual_stream.py:
- every writer of the stream writes zero-mean rows: linear writers (attention's output
  projection, the FFN's down projection) `W <- W M`, `b <- b M`; embedding tables and the
  constant terms of the stream's first value (position embeddings, a class token) have
  each row's mean subtracted; a first value written by something that cannot absorb M (a
  patch-embedding convolution) gets one explicit `MatMul(h_0, M)` (`explicit_ends`);
- the stream is then zero-mean everywhere, and LayerNorm is invariant to a shift of its
  input's mean, so every LayerNorm reading it computes what it did; those with no affine
  part left (`fold_norm_affine` moved gamma and beta into the linears that read them)
  become `RMSNormalization(x, 1)` with the same epsilon, which equals LayerNorm on a
  zero-mean input. A LayerNorm that keeps its affine part (a final norm whose output is the
  graph's) stays a LayerNorm, still exact.
Refused, per stream, recorded in the stats as `refused:<reason>`, with the sentence (the op
named) in `refusal`:
- `post_norm`: the LayerNorms sit on the stream itself (BERT); centring the branches
  would not centre what the norms put back;
- `mean_reader`: something other than a LayerNorm or the next residual Add reads the
  stream (a linear reading it directly, an RMSNorm, any other op): it would see the
  centred stream, not the original;
- `writer`: a writer inside the stream cannot absorb the mean removal.
A stream read by no LayerNorm is left alone (nothing to gain; not counted).

Stats: `streams_centred`, `writers_centred`, `norms_converted`, `explicit_products`,
`refused`, `refused:<reason>`, `refusal`; `graph.meta["layernorm_to_rmsnorm"]` lists
{stream, writers, norms_converted, explicit} per centred stream.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph, Node
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.fold_common import count_refusal, norm_affine, unused_name, write_into_stream
from requant.passes.manager import PassResult, graph_pass
from requant.passes.residual_stream import ResidualStream, find_residual_streams

__all__ = ["layernorm_to_rmsnorm", "centring_refusal", "centre_rows"]

logger = logging.getLogger(__name__)

PASS = "layernorm_to_rmsnorm"


def centre_rows(a: np.ndarray) -> np.ndarray:
    """a M with M = I - 11^T/d: each row (last axis) minus its mean."""
    a = np.asarray(a, np.float64)
    return a - a.mean(axis=-1, keepdims=True)


def centring_refusal(stream: ResidualStream, explicit_ends: bool = True) -> tuple[str, str] | None:
    """(reason key, sentence) for why `stream` cannot be centred, or None."""
    if stream.position != "pre-norm":
        return "post_norm", f"{stream.describe()}: post-norm, its LayerNorms sit on the stream"
    for b in stream.blocks:
        if b.role == "writer" and not (explicit_ends and b.where == "start"):
            return "writer", b.reason
        if b.role == "reader" and b.node is not None and b.node.op == "LayerNormalization":
            continue  # a LayerNorm sees the same normalised rows whatever the stream's mean
        if b.role in ("reader", "stream"):
            return "mean_reader", b.reason
    for r in stream.readers:
        if r.norm is None:
            return "mean_reader", f"{r.linear.matmul.label} reads the stream directly (it would see the centred stream)"
    for norm in stream.norms:
        if norm.op != "LayerNormalization":
            return "mean_reader", f"{norm.label} ({norm.op}) reads the stream and does not remove its mean"
    return None


def _converted(graph: Graph, norm: Node) -> bool:
    """LayerNorm(x, 1) -> RMSNormalization(x, 1) when it has no affine part left."""
    found = norm_affine(norm)
    if isinstance(found, str):
        return False
    gamma, beta = found
    if not np.all(gamma == 1.0) or (beta is not None and np.any(beta != 0.0)):
        return False
    attrs = {k: norm.attrs[k] for k in ("axis", "epsilon", "stash_type") if k in norm.attrs}
    out = norm.outputs[0]
    name = out.name
    graph.rename(out, unused_name(graph, f"{name}_layernorm"))
    new = graph.create_node("RMSNormalization", [norm.inputs[0], norm.inputs[1]], attrs,
                            meta={**norm.meta, "created_by": PASS}, output_types=[out.type], output_names=[name],
                            name=norm.name, before=norm).outputs[0]
    new.meta.update(out.meta)
    out.replace_all_uses_with(new)
    graph.outputs = [new if o is out else o for o in graph.outputs]
    graph.remove_node(norm)
    return True


@graph_pass(PASS, "pre-norm residual stream centred (writers W <- W (I - 11^T/d)) and its affine-free LayerNorms "
                  "-> RMSNorm (exact)", requires=(CANONICAL_LINEARS,))
def layernorm_to_rmsnorm(graph: Graph, explicit_ends: bool = True) -> PassResult:
    """See the module docstring. `explicit_ends`: a writer of the stream's first value that
    cannot absorb the mean removal gets one explicit `MatMul(h_0, M)`."""
    stats: dict[str, int | float | str] = {"streams_centred": 0, "writers_centred": 0, "norms_converted": 0,
                                           "explicit_products": 0, "refused": 0}
    report: list[dict] = []
    d_cache: dict[int, np.ndarray] = {}
    for stream in find_residual_streams(graph):
        if not any(n.op == "LayerNormalization" for n in stream.norms) or stream.width is None:
            continue
        refusal = centring_refusal(stream, explicit_ends)
        if refusal is not None:
            key, sentence = refusal
            count_refusal(stats, PASS, stream.adds[0], key)
            stats["refusal"] = "; ".join(filter(None, [str(stats.get("refusal", "")), sentence]))
            logger.info("%s: %s", PASS, sentence)
            continue
        d = stream.width
        m = d_cache.setdefault(d, np.eye(d) - np.full((d, d), 1.0 / d))
        try:
            done = write_into_stream(graph, stream, centre_rows, m, created_by=PASS, explicit_ends=explicit_ends)
        except RequantError as exc:  # centring_refusal checked the same conditions
            raise AssertionError(f"{PASS}: refusal check missed: {exc}") from exc
        converted = sum(_converted(graph, n) for n in stream.norms if n.op == "LayerNormalization")
        stats["streams_centred"] += 1
        stats["writers_centred"] += done.writers
        stats["norms_converted"] += converted
        stats["explicit_products"] += len(done.explicit)
        report.append({"stream": stream.describe(), "writers": done.writers, "norms_converted": converted,
                       "explicit": done.explicit})
    if report:
        graph.meta.setdefault(PASS, []).extend(report)
    return PassResult(graph, stats["streams_centred"] > 0, stats)
