"""Pass "rotate_residual": QuaRot's R1, a random Hadamard rotation of the whole residual
stream folded into the weights, zero cost at run time (Ashkboos et al., "QuaRot", NeurIPS
2024, section 4; the computational invariance of SliceGPT, ICLR 2024).

For a pre-norm residual stream h found by passes/residual_stream.py (no per-architecture
table: Llama, OPT, GPT-2, ViT alike) and an orthogonal Q (Q Q^T = I), in the row-vector
convention y = x W:
- every writer writes h Q: linear writers (attention's output projection, the FFN's down
  projection) `W <- W Q`, `b <- b Q`; embedding tables `E <- E Q`; the constant terms of
  the first value (position embeddings, a class token) likewise;
- every norm reading the stream is an RMSNorm with one scale value, which commutes with
  Q: RMSNorm(h Q) = RMSNorm(h) Q, because |h Q| = |h|;
- every linear reading the stream, through such a norm (q/k/v, up/gate, the head) or
  directly, takes `W <- Q^T W`, so it computes what it did.
Exact in float. Q = diag(s) H_d / sqrt(d), a random-signed Hadamard matrix of the stream's
width (`seed`), or, for widths without one, a random orthogonal factor (x) a Hadamard
(passes/channel_transforms.py `rotation_transform`, named in the stats).

Prerequisites are passes of their own, each exact: `fold_norm_affine` (the norms' gamma
and beta into the linears that read them) and, for LayerNorm models, `layernorm_to_rmsnorm`.
With `explicit_ends` (default), the two places that run once per model and cannot absorb
Q get one explicit product instead: a first value written by something else (ViT's patch
convolution: `MatMul(h_0, Q)`) and a reader of the last value that cannot take Q^T (ViT's
final LayerNorm whose output is the graph's: it reads `MatMul(h, Q^T)`).

Refused, per stream, before anything changes, with the op named (stats `refused:<key>`,
the sentence in `refusal`; `strict=True` raises instead):
- `post_norm`: BERT-style post-norm streams pass through LayerNorms with gamma, which
  commute with no rotation: only per-linear online rotations apply (rotate_online);
- `reader` / `writer`: something inside the stream reads or writes it and cannot absorb
  the rotation (a non-linear reader, a branch not ending in a linear);
- `norm`: a norm on the stream that does not commute (a LayerNorm not converted, an
  RMSNorm with per-channel gamma not folded).

Stats: `streams_rotated`, `writers_rotated`, `readers_rotated`, `explicit_products`,
`refused`, `refused:<key>`, `refusal`; `graph.meta["rotate_residual"]` lists {stream,
transform, writers, readers, explicit} per rotated stream.
"""

from __future__ import annotations

import logging

from requant.errors import RequantError
from requant.ir.graph import Graph
from requant.passes.channel_transforms import rotation_transform
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.fold_common import count_refusal, migrate_stream_transform, stream_transform_refusal
from requant.passes.manager import PassResult, graph_pass
from requant.passes.residual_stream import ResidualStream, find_residual_streams

__all__ = ["rotate_residual", "refusal_key"]

logger = logging.getLogger(__name__)

PASS = "rotate_residual"


def refusal_key(stream: ResidualStream, sentence: str) -> str:
    """The stats key of a refusal sentence of `stream_transform_refusal`."""
    if stream.position != "pre-norm":
        return "post_norm"
    if "run layernorm_to_rmsnorm" in sentence or "run fold_norm_affine" in sentence:
        return "norm"
    if any(b.reason in sentence and b.role == "writer" for b in stream.blocks):
        return "writer"
    return "reader"


@graph_pass(PASS, "QuaRot R1: a random Hadamard rotation of every pre-norm residual stream folded into its "
                  "writers (W Q) and readers (Q^T W) (exact)", requires=(CANONICAL_LINEARS,))
def rotate_residual(graph: Graph, seed: int = 0, explicit_ends: bool = True, strict: bool = False) -> PassResult:
    """See the module docstring. `seed`: the random signs of the Hadamard rotation."""
    stats: dict[str, int | float | str] = {"streams_rotated": 0, "writers_rotated": 0, "readers_rotated": 0,
                                           "explicit_products": 0, "refused": 0}
    report: list[dict] = []
    for stream in find_residual_streams(graph):
        if stream.width is None:
            continue
        transform = rotation_transform(stream.width, seed)
        sentence = stream_transform_refusal(graph, stream, transform, explicit_ends=explicit_ends)
        if sentence is not None:
            if strict:
                raise RequantError(f"{PASS}: cannot rotate the {stream.describe()}: {sentence}")
            count_refusal(stats, PASS, stream.adds[0], refusal_key(stream, sentence))
            stats["refusal"] = "; ".join(filter(None, [str(stats.get("refusal", "")), sentence]))
            logger.info("%s: %s not rotated: %s", PASS, stream.describe(), sentence)
            continue
        done = migrate_stream_transform(graph, stream, transform, created_by=PASS, explicit_ends=explicit_ends)
        stats["streams_rotated"] += 1
        stats["writers_rotated"] += done.writers
        stats["readers_rotated"] += done.readers
        stats["explicit_products"] += len(done.explicit)
        report.append({"stream": stream.describe(), "transform": transform.describe(), "writers": done.writers,
                       "readers": done.readers, "explicit": done.explicit})
    if report:
        graph.meta.setdefault(PASS, []).extend(report)
    return PassResult(graph, stats["streams_rotated"] > 0, stats)
