"""GPTQ: weight quantization that corrects each quantized weight row's error on the rows
not yet quantized, using second-order statistics of the layer's inputs (Frantar et al.,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
ICLR 2023, arXiv 2210.17323; reference code IST-DASLab/gptq `gptq.py`). The "quantize"
pass runs it for `weight_method="gptq"`; nothing here is a pass.

For a linear y = x W (W [K, N], x's rows the calibration rows of its input), quantizing W
to minimise |X W - X Q(W)|^2 column by column has the Hessian H = 2 X^T X / n (K x K),
the same for all N outputs. With U the upper Cholesky factor of H^-1, rows of W are
quantized in order k = 0..K-1 (all N outputs at once):
    q_k = Q(W_k),   e_k = (W_k - q_k) / U_kk,   W_j <- W_j - U_kj e_k  for j > k,
so each row's rounding error lands on the rows still to be quantized, weighted by how the
inputs correlate. Done in blocks of `block_size` rows: inside a block row by row, then
the block's errors update the rest at once (the same result, fewer passes over W; blocks
hold whole groups when group scales come from the updated rows).
- damping: H <- H + damp x mean(diag H) x I (damp = 0.01), so H stays invertible;
  inputs that are always 0 (diag H = 0) get H_kk = 1 and W_k = 0;
- activation order (`act_order`): rows in decreasing diag(H) (the inputs with the most
  energy first, while there are still rows left to take their error);
- scales: per output channel from the original W's ranges (the scheme's rounding and
  zero point rules, `requant.ir.quant_formats.choose_qparams`); per group of G rows
  along K: from the group's current (already error-updated) rows when the group's first
  row is reached, or, with activation order, from the original rows of the group (the
  reference's `static_groups`), so groups stay contiguous blocks along K that
  DequantizeLinear and MatMulNBits read. The range is the rows' min/max
  (`clip="minmax"`), or (`clip="mse"`, the default) that range shrunk by the factor
  p in {1, 0.99, ..., 0.20} which, for each scale on its own, minimises the rounding
  error of its rows weighted by the inputs' energy, sum_k H_kk (w_k - Q_p(w_k))^2: at
  4 bits the extreme weights of a column cost the other weights more resolution than
  they gain themselves (QuaRot's GPTQ searches the same shrink, unweighted, with its
  `mse` option).
The result is the codes, scales and zero points in the scheme's layout: quantize stores
them as it stores round-to-nearest codes. Integer schemes (int8/uint8/int4/uint4, per
tensor, channel or group), and NVFP4 / MXFP4 weights (E2M1 in blocks of 16 / 32 along
K): the block (and NVFP4's tensor) scales come from the original W as round to nearest's
would, and stay fixed while rows are rounded to E2M1 on them (Egiazarian et al. 2025,
"Bridging the Gap Between Promise and Performance for Microscaling FP4 Quantization", run
GPTQ on these grids the same way); the FP4 formats are simulated, so the result there is
the dequantized weight.

`gptq_weight_codes` does it for a list of MatMul weights of one graph (a weight read by
several MatMuls takes the sum of their inputs' Hessians). `collect_hessians` runs the float graph over calibration batches on a graph runner
(`requant.ir.runners`, ONNX Runtime by default) and accumulates X^T X per requested
activation, in float64, over every row of every batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.graph import Graph, Node
from requant.ir.ops.cast import cast_to
from requant.ir.quant_formats import (
    QuantScheme,
    choose_qparams,
    dequantize_blocks,
    dequantize_linear,
    e8m0_decode,
    quantize_blocks,
    quantize_linear,
    tensor_ranges,
)
from requant.passes.calibration import observed_batches

__all__ = ["GptqResult", "gptq_quantize", "gptq_weight_codes", "collect_hessians", "DEFAULT_DAMP", "DEFAULT_BLOCK",
           "CLIPS"]

logger = logging.getLogger(__name__)

DEFAULT_DAMP = 0.01
DEFAULT_BLOCK = 128
CLIPS = ("mse", "minmax")
_SHRINKS = np.round(np.arange(1.0, 0.195, -0.01), 2)


@dataclass
class GptqResult:
    """Codes [K, N] in the scheme's storage, scale and zero point in its layout (scalar,
    [N] per channel, [K/G, N] per group), and the Hessian-weighted error
    trace((W - Wq)^T H (W - Wq)) before and after the error correction (RTN vs GPTQ) on
    the damped H."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    rtn_error: float
    error: float
    values: np.ndarray | None = None  # NVFP4 / MXFP4: the dequantized float32 weights


def _check_scheme(scheme: QuantScheme) -> None:
    if scheme.is_block_format:
        if scheme.axis not in (0, -2):
            raise RequantError(f"gptq: {scheme.granularity.upper()}FP4 weight blocks run along K (axis 0 of W [K, N]), "
                               f"got axis {scheme.axis}")
        return
    if not scheme.dtype.is_integer or scheme.granularity not in ("tensor", "channel", "group"):
        raise RequantError(f"gptq: weights take integer per-tensor / per-channel / per-group schemes, NVFP4 or MXFP4, not "
                           f"{scheme.describe()}")
    if scheme.granularity == "channel" and scheme.axis not in (1, -1):
        raise RequantError(f"gptq: a per-channel weight scheme needs axis 1 (output columns of W [K, N]), got "
                           f"{scheme.axis}")
    if scheme.granularity == "group" and scheme.axis not in (0, -2):
        raise RequantError(f"gptq: a per-group weight scheme needs axis 0 (groups along K of W [K, N]), got "
                           f"{scheme.axis}")


def _row_params(scale: np.ndarray, zp: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A scale (and zero point) broadcast to one weight row [N]."""
    s = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,)) if np.size(scale) in (1, n) else scale
    z = None if zp is None else np.broadcast_to(np.asarray(zp).reshape(-1), (n,))
    return np.asarray(s, np.float32), z


def _quantize_rows(rows: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, scheme: QuantScheme
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(codes, dequantized float64) of rows [r, N] with one scale per column."""
    codes = quantize_linear(rows, scale, zp, axis=1, dtype=scheme.dtype)
    return codes, dequantize_linear(codes, scale, zp, axis=1).astype(np.float64)


def _group_params(w: np.ndarray, scheme: QuantScheme, energy: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale and zero point of rows `w` [r, N] in the scheme's layout: from their min/max,
    or with `energy` (diag H of the rows, [r]) the shrink of that range with the least
    energy-weighted rounding error per scale (module docstring)."""
    lo, hi = tensor_ranges(w.astype(np.float32), scheme)
    if energy is None:
        return choose_qparams(scheme, lo, hi)
    best_scale = best_zp = best_err = None
    for p in _SHRINKS:
        scale, zp = choose_qparams(scheme, lo * np.float32(p), hi * np.float32(p))
        err = _slot_errors(w, scheme, scale, zp, energy)
        if best_err is None:
            best_scale, best_zp, best_err = np.array(scale), None if zp is None else np.array(zp), err
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        if zp is not None:
            best_zp = np.where(better, zp, best_zp)
    return best_scale.astype(np.float32), best_zp


def _slot_errors(w: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zp: np.ndarray | None,
                 energy: np.ndarray) -> np.ndarray:
    """sum_k energy_k (w_k - Q(w_k))^2 per scale of the layout (scalar, [N], [r/G, N])."""
    k, n = w.shape
    if scheme.granularity == "group":
        g = scheme.group_size
        deq = np.concatenate([_quantize_rows(w[i:i + g], *_row_params(scale[i // g], None if zp is None else zp[i // g],
                                                                      n), scheme)[1] for i in range(0, k, g)])
        weighted = energy[:, None] * (w - deq) ** 2
        return weighted.reshape(k // g, g, n).sum(axis=1)
    s_row, z_row = _row_params(scale, zp, n)
    weighted = energy[:, None] * (w - _quantize_rows(w, s_row, z_row, scheme)[1]) ** 2
    return weighted.sum() if scheme.granularity == "tensor" else weighted.sum(axis=0)


def _weighted_error(d: np.ndarray, h: np.ndarray) -> float:
    return float(np.sum(d * (h @ d)))


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, scheme: QuantScheme, *, damp: float = DEFAULT_DAMP,
                  act_order: bool = True, block_size: int = DEFAULT_BLOCK, clip: str = "mse") -> GptqResult:
    """GPTQ of W [K, N] with the input Hessian [K, K] (module docstring)."""
    _check_scheme(scheme)
    if clip not in CLIPS:
        raise RequantError(f"gptq: clip must be one of {', '.join(CLIPS)}, got {clip!r}")
    w0 = np.asarray(weight, np.float64)
    k, n = w0.shape
    h = np.array(hessian, np.float64, copy=True)
    if h.shape != (k, k):
        raise RequantError(f"gptq: the Hessian is {h.shape}, the weight {w0.shape} needs ({k}, {k})")
    if not 0.0 <= damp < 1.0:
        raise RequantError(f"gptq: damp must be in [0, 1), got {damp}")
    w = w0.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    energy = np.diag(h).copy() if clip == "mse" else None
    h += damp * float(np.mean(np.diag(h))) * np.eye(k)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    if scheme.is_block_format:
        return _gptq_fp4_blocks(w0, w, h, perm, scheme, block_size)
    group = scheme.group_size if scheme.granularity == "group" else 0
    if scheme.granularity == "group":
        if k % group:
            raise RequantError(f"gptq: K = {k} is not a multiple of the group size {group}")
        scale = np.zeros((k // group, n), np.float32)
        zp = None if scheme.symmetric and scheme.dtype.kind == "int" else np.zeros((k // group, n), scheme.dtype.np)
        static = act_order
        if static:
            scale, zp_all = _group_params(w, scheme, energy)
            zp = zp_all if zp is not None else None
    else:
        scale, zp_all = _group_params(w, scheme, energy)
        zp = zp_all if not (scheme.symmetric and scheme.dtype.kind == "int") else None
        static = True
    if group and not static:
        # whole groups per block: a group's scale then comes from rows that have every
        # earlier row's update, as in the unblocked algorithm
        block_size = max(1, block_size // group) * group

    def quantize_row(wp: np.ndarray, i: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        if group and not static and row % group == 0:
            g = row // group
            scale[g], zg = _group_params(wp[i:i + group], scheme, None if energy is None else energy[row:row + group])
            if zp is not None:
                zp[g] = zg
        g = row // group if group else 0
        s_row, z_row = _row_params(scale[g] if group else scale, None if zp is None else (zp[g] if group else zp), n)
        c, q = _quantize_rows(wp[i:i + 1], s_row, z_row, scheme)
        return c[0], q[0]

    codes, deq = _error_feedback(w, h, perm, block_size, quantize_row, scheme.dtype.np)
    rtn = _rtn(w0, scheme, scale, zp, group)
    result = GptqResult(codes, scale if scheme.granularity != "tensor" else np.asarray(scale).reshape(()),
                        zp if zp is None or scheme.granularity != "tensor" else np.asarray(zp).reshape(()),
                        _weighted_error(w0 - rtn, h), _weighted_error(w0 - deq, h))
    logger.debug("gptq: %s, Hessian-weighted error %.4g -> %.4g (RTN -> GPTQ)", scheme.describe(), result.rtn_error,
                 result.error)
    return result


def _error_feedback(w: np.ndarray, h: np.ndarray, perm: np.ndarray, block_size: int,
                    quantize_row: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]],
                    storage: Any) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's loop (module docstring): rows in `perm` order, each quantized by
    `quantize_row(permuted W, position, original row)` -> (codes, dequantized), its error
    spread over the rows after it; (codes, dequantized float64) in the original order."""
    k, n = w.shape
    w, hp = w[perm], h[np.ix_(perm, perm)]
    u = np.linalg.cholesky(np.linalg.inv(hp)).T  # upper: H^-1 = U^T U
    codes = np.zeros((k, n), storage)
    deq = np.zeros((k, n), np.float64)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        errors = np.zeros((i2 - i1, n))
        for i in range(i1, i2):
            row = perm[i]
            codes[row], deq[row] = quantize_row(w, i, row)
            err = (w[i] - deq[row]) / u[i, i]
            w[i + 1:i2] -= np.outer(u[i, i + 1:i2], err)
            errors[i - i1] = err
        w[i2:] -= u[i1:i2, i2:].T @ errors
    return codes, deq


def _gptq_fp4_blocks(w0: np.ndarray, w: np.ndarray, h: np.ndarray, perm: np.ndarray, scheme: QuantScheme,
                     block_size: int) -> GptqResult:
    """NVFP4 / MXFP4 weights (blocks of 16 / 32 along K): the scales round to nearest
    would take (`requant.ir.quant_formats.quantize_blocks`: NVFP4's tensor scale and E4M3
    block scales, MXFP4's E8M0 ones) from the original W, fixed while GPTQ rounds rows to
    E2M1 on them. Result: E2M1 codes, the block scales [K/block, N] in their storage, no
    zero point, and `values`: the dequantized float32 weights, which the simulated graph
    reads."""
    blocks = quantize_blocks(w0.astype(np.float32), scheme)
    g = int(scheme.group_size)
    if scheme.granularity == "mx":  # powers of two: the division is exact in float64, as quantize_blocks does it
        divisor = e8m0_decode(blocks.scales).astype(np.float64)
        work = np.float64
    else:
        divisor = (blocks.scales.astype(np.float32) * np.float32(blocks.tensor_scale)).astype(np.float32)
        work = np.float32

    def quantize_row(wp: np.ndarray, i: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        d = divisor[row // g]
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(d == 0, work(0), wp[i].astype(work) / np.where(d == 0, work(1), d))
        c = cast_to(v.astype(work), dtypes.fp4_e2m1)
        return c, (c.astype(work) * d).astype(np.float32).astype(np.float64)

    codes, deq = _error_feedback(w, h, perm, block_size, quantize_row, dtypes.fp4_e2m1.np)
    rtn = dequantize_blocks(blocks, scheme).astype(np.float64)
    return GptqResult(codes, blocks.scales, None, _weighted_error(w0 - rtn, h), _weighted_error(w0 - deq, h),
                      values=deq.astype(np.float32))


def _rtn(w: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zp: np.ndarray | None, group: int) -> np.ndarray:
    """Round-to-nearest of the original W with the same scales (the baseline GPTQ improves)."""
    if not group:
        s_row, z_row = _row_params(scale, zp, w.shape[1])
        return _quantize_rows(w, s_row, z_row, scheme)[1]
    out = np.empty_like(w)
    for g in range(w.shape[0] // group):
        rows = slice(g * group, (g + 1) * group)
        out[rows] = _quantize_rows(w[rows], scale[g], None if zp is None else zp[g], scheme)[1]
    return out


def collect_hessians(graph: Graph, batches: Iterable[Any], names: Sequence[str], *, runner: str = "auto"
                     ) -> dict[str, tuple[np.ndarray, int]]:
    """{activation name: (2 X^T X / n [K, K] float64, n)} over every row of every batch,
    X the activation flattened to [rows, K] over its last axis (module docstring)."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    for outs in observed_batches(graph, batches, names, runner):
        for name in names:
            x = np.asarray(outs[name], np.float64)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0.0) + x.T @ x
            counts[name] += x.shape[0]
    return {name: (2.0 * sums[name] / max(counts[name], 1), counts[name]) for name in names}


def gptq_weight_codes(graph: Graph, weights: Sequence[tuple[Node, int, QuantScheme]], batches: Iterable[Any], *,
                      runner: str = "auto", damp: float = DEFAULT_DAMP, act_order: bool = True,
                      block_size: int = DEFAULT_BLOCK, clip: str = "mse") -> tuple[dict[tuple[int, QuantScheme], tuple], float]:
    """({(id(weight value), scheme): (codes, scale, zero point), or for NVFP4 the
    dequantized float32 weight}, the mean ratio of GPTQ's Hessian-weighted error to
    round-to-nearest's) for MatMul weights given as (node, input index 1, scheme); the
    Hessians come from the MatMuls' first inputs over `batches`."""
    readers: dict[tuple[int, QuantScheme], list[Node]] = {}
    values = {}
    for node, index, scheme in weights:
        if node.op != "MatMul" or index != 1 or node.inputs[1] is None or node.inputs[1].const is None:
            raise RequantError(f"gptq: {node.label}: only constant MatMul weights (input 1) are quantized by GPTQ")
        key = (id(node.inputs[1]), scheme)
        readers.setdefault(key, []).append(node)
        values[key] = node.inputs[1]
    if not readers:
        return {}, 1.0
    names = sorted({n.inputs[0].name for nodes in readers.values() for n in nodes})
    hessians = collect_hessians(graph, batches, names, runner=runner)
    found: dict[tuple[int, QuantScheme], tuple] = {}
    ratios = []
    for key, nodes in readers.items():
        w = np.asarray(values[key].const, np.float64)
        h = sum(hessians[n.inputs[0].name][0] for n in nodes)
        result = gptq_quantize(w, h, key[1], damp=damp, act_order=act_order, block_size=block_size, clip=clip)
        found[key] = result.values if result.values is not None else (result.codes, result.scale, result.zero_point)
        ratios.append(result.error / result.rtn_error if result.rtn_error > 0 else 1.0)
        logger.debug("gptq: %%%s (%s): Hessian-weighted error x%.3f of round-to-nearest's", values[key].name,
                     key[1].describe(), ratios[-1])
    return found, float(np.mean(ratios))
