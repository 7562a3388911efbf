"""CPU (LLVM, x86 AVX-512) schedules for Relax modules: what makes an untuned
`tvm.compile` of a transformer fast without meta_schedule.

This module owns two things:

1. `PackConstantWeights`, a Relax pass that runs on the high-level module (after
   FoldConstant) and replaces every `matmul(x, W)` whose `W` is a 2-D constant by a
   `call_tir` to a packed dense kernel. The weight is re-laid out at compile time:
   float32 `W[K, N]` -> `W[ceil(N/32), K, 32]` (one contiguous K x 32 panel per column
   tile, zero-padded); int8 `W` (an int32 or int8 constant whose values fit int8, times
   uint8/int8 activations widened to int32, optionally minus a constant zero point)
   -> `W[2 ceil(N/32), K/4, 64]`, the operand layout of AVX-512 VNNI `vpdpbusd`, plus
   an int32 per-column compensation for signed activations and activation zero points.
   Tails are handled by padding, never by predicates in the inner loop: the kernel's
   accumulator covers the columns padded to whole 32-wide panels (zero weights) and
   the last row axis padded to whole register tiles, whose extra rows read the last
   real row (`min(i, m - 1)`: finite values, no predicated load, never written out); a
   trim step writes the real rows and columns. The register tile's rows
   (`dense_row_tile`) are all rows of a short axis, else the tile in 6..12 that pads
   the fewest rows, so any row count (ViT's 197 tokens, a batch of 7) runs the same
   unpredicated inner loop as a multiple of 8; a symbolic row axis uses 8.
   The kernels are ordinary PrimFuncs, so FuseOps still fuses bias, GELU, residual adds
   into them (they are marked out-elementwise-fusable).
   The same pass rewrites float32 `conv2d(x, constant W)` (NCHW / OIHW, static C, H, W,
   any batch; groups=1, or groups whose output channels come in whole 16-lane blocks;
   any stride, padding, dilation) into a packed conv kernel (`packed_conv2d_func`):
   `W[O, I, KH, KW]` -> `W[ceil(O/ob), I, KH, KW, ob]` (OIHW{ob}o, ob = 32 or 16,
   zero-padded), the input zero-padded once (right-padded so that whole column tiles
   read in bounds), the output NCHW as before. A depthwise conv (groups = input =
   output channels) becomes `packed_depthwise_conv2d_func`: `W[C, 1, KH, KW]` ->
   `W[ceil(C/16), KH, KW, 16]`, the input copied once into 16-channel blocks (padded),
   every tap one 16-channel vector load times one weight vector, whatever the stride
   and width. Groups narrower than a vector whose width divides 16 (RegNet's groups
   of 8) run in the packed conv as 16-wide groups with a block-diagonal weight
   (`densify_narrow_groups`: 16 / width times the arithmetic, at full vector speed);
   other narrow groups (a channel multiplier, a width like 3) and non-constant weights
   keep relax's own conv2d. An int8 conv, `conv2d(astype(x8, i32) [- zp], W,
   out_dtype=int32)` with W in int8 range and groups 1 (what the Conv lowering writes
   for a quantized Conv), becomes `packed_conv2d_int8_func`: W ->
   `W[2 ceil(O/32), ceil(C/4), KH, KW, 64]` (16 output x 4 input channels per tap, the
   `vpdpbusd` operand), the uint8 codes copied once into 4-channel blocks padded with
   the zero point's code, int32 accumulation, a per-channel compensation for the zero
   point (and for the +128 shift of int8 codes) applied on write-back.
   Where a conv's output goes only through elementwise ops (its folded BatchNorm
   bias, a SiLU / ReLU6 / hard swish, a squeeze-and-excite gate) and spatial means into
   further convs (`blocked_chains`: an inverted-residual block's expansion into its
   depthwise conv, the depthwise conv into the projection), they carry 16-channel
   blocks between them (the last one padded where 16 does not divide C): the conv
   writes `[N, ceil(C/16), H, W, 16]` from its register tile (`out_blocked`), the
   elementwise ops run on that layout (per-channel constants re-laid out to match),
   and the next conv reads the blocks as they are
   (`in_blocked`), instead of a transposition to NCHW on one side and back into blocks
   (depthwise) or a padded NCHW copy (ungrouped) on the other.
   A batch matmul of two computed tensors becomes the padded batch matmul kernel
   (`padded_batch_matmul_func`, float32 or int32); one of the form
   `matmul(astype(a8, i32) [- zp], astype(b_i8, i32))` (integer attention's QK^T and
   PV) the int8 one (`padded_batch_matmul_int8_func`) when the CPU has VNNI.

2. Schedule rules applied to every PrimFunc after FuseTIR (`schedule_cpu_module`):
   - `DenseTile`: the packed dense kernel + its fused epilogue: the output is tiled
     into `mr` rows x 32 columns, the padded accumulator computed at each tile into a
     local buffer (mr x 2 zmm registers, no bounds checks), reduction outermost; only
     the write-back through the epilogue checks the real extent; parallel over
     (leading rows, row block, column panel), a row block being the register tiles that
     reuse one K x 32 weight panel (about 64 rows, chosen to cover the tiles evenly).
   - `MatmulTile`: every other matmul-like block (one reduction axis, the output's last
     axis read contiguously from the right operand): batch matmul (attention QK^T and
     PV), dynamic-weight matmul: register tile 8 rows x 32 columns, rows blocked by 64,
     the accumulator tile in a local buffer (cache_write) that the fused epilogue reads
     back; parallel over (row block, column tile), the inner 16 columns vectorised.
   - `ConvTile`: the packed conv kernel + its fused epilogue (bias, ReLU, BatchNorm
     arithmetic, residual add): register tile of `owt` output columns x `ob` output
     channels (`conv_tile`: ob/16 zmm per column, <= 24 accumulators; owt divides
     ResNet widths 56/28/14/7 exactly), accumulated over input channels x kernel rows x
     kernel columns in a local buffer (one broadcast input value x one 16-lane weight
     vector per FMA), parallel over batch x channel blocks x output rows (channel
     blocks first where the weights are large: `_weight_major`); the epilogue
     runs on the tile's 16-channel vectors, into a local tile copied out transposed
     for an NCHW output, straight into a channel-blocked output (`out_blocked`).
   - `ConvVNNI`: the int8 packed conv kernel + epilogue (dequantize, bias, activation,
     the next quantize), tiled like ConvTile with int32 accumulators, each 16 x 4 step
     one `vpdpbusd` on a VNNI CPU (as MatmulVNNI), else a 16-lane vector loop.
   - `DepthwiseTile`: the packed depthwise kernel + epilogue: parallel over (batch,
     16-channel block), whose task makes its plane of the blocked input first (it then
     stays in L2), then tiles of up to 16 output columns x 16 channels in registers,
     taps outermost; the epilogue runs on the tile's 16-channel vectors and is
     copied out transposed. A blocked input (`in_blocked`) is only padded, not
     transposed, into the plane's copy.
   - `MatmulVNNI`: the int8 packed dense kernel (uint8 x int8 -> int32, exact), tiled
     as DenseTile; on a VNNI CPU every 16-column x 4-deep step is one `vpdpbusd`
     (`llvm.x86.avx512.vpdpbusd.512`, written into the TIR by `_emit_vnni`, since TVM
     0.27's Tensorize segfaults on this kernel), else a 16-lane vector loop.
   - `BatchMatmulVNNI`: the int8 batch matmul the same way, each task packing its panel
     of the right operand into the vpdpbusd layout (and summing its columns for the
     zero point) before its register tiles read it.
   - `RowReduction`: softmax, LayerNorm and similar (reductions along the last axis
     followed by elementwise blocks): parallel over rows, every block computed at the
     row, elementwise blocks vectorised (16, 8 or 4 lanes); blocks named `ROW_STAGE...`
     (a row kernel's per-row values or kept rows) are kept, not inlined into every
     element. A reduction over the row's trailing contiguous axes (a global average
     pool's H x W, a LayerNorm row) runs in vector lanes (`rfactor`: 16, 8 or 4
     partial results, then their sum), also as a lone reduction block.
   - `BlockedMapReduction`: the spatial mean of a blocked map, [N, C/16, H, W, 16] ->
     [N, C/16, 1, 1, 16]: parallel over (batch, channel block), the block's 16 channels
     one vector summed over the pixels in memory order.
   - `WindowReduction`: a float max pool (`WINDOW_BLOCK...`, one reduction over its
     window's taps): parallel over batch x channels.
   - `Injective`: elementwise/broadcast/transpose kernels: producers inlined, parallel
     outer loops, the last axis vectorised by 16, 8 or 4 lanes where they divide it,
     else as one vector when it is at most 16 long (a 14- or 7-wide feature map's
     rows); the same for the blocks after a kernel's own (a conv's broadcast epilogue).
   - then tvm's dlight CPU rules, then `ParallelOuter` (parallelise the outermost
     spatial loop of each block) so that no kernel stays single-threaded. Symbolic
     shapes go through the same rules (splits carry predicates); anything a rule cannot
     handle falls through to the next one, and a rule that raises is logged and skipped.

Why these choices: TVM's untuned default build runs these matmuls and convolutions two
orders of magnitude slower than ONNX Runtime's MLAS; the register tiles above keep every
accumulator in a zmm register (no spills) and the parallel outer loops use every core
(TVM's default pool halves the core count on x86: pipeline.py starts it with every usable
CPU). Tried and not kept for conv: input channels blocked by 16/64 with a row of
accumulators in L1, 16-channel tiles. `python -m requant.tools.bench.tvm_cpu --shapes`
measures the matmul kernels and whole models against ONNX Runtime (README, "TVM on the
CPU").
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx
from tvm.target import Target

from requant.backends.tvm.blocked_chains import BlockedChains, blocked_constant, blocks_of, find_blocked_chains

__all__ = [
    "PackConstantWeights",
    "FastMath",
    "schedule_cpu_module",
    "dense_row_tile",
    "dense_tiles_per_block",
    "packed_dense_func",
    "packed_dense_int8_func",
    "pack_weight_fp32",
    "pack_weight_int8",
    "DenseTile",
    "MatmulTile",
    "ConvTile",
    "packed_conv2d_func",
    "pack_conv_weight",
    "conv_tile",
    "conv_owt",
    "DepthwiseTile",
    "packed_depthwise_conv2d_func",
    "pack_depthwise_weight",
    "densify_narrow_groups",
    "ConvVNNI",
    "packed_conv2d_int8_func",
    "pack_conv_weight_int8",
    "depthwise_owt",
    "MatmulVNNI",
    "RowReduction",
    "Injective",
    "ParallelOuter",
    "DENSE_BLOCK",
    "DENSE_INT8_BLOCK",
    "padded_batch_matmul_func",
    "padded_batch_matmul_int8_func",
    "BatchMatmulVNNI",
    "NR",
    "MR",
    "ROW_STAGE",
    "ROW_LANES_STAGE",
    "WINDOW_BLOCK",
    "WindowReduction",
]

logger = logging.getLogger(__name__)

#: register tile: MR rows x NR columns of accumulators (NR / 16 zmm vectors per row)
MR = 8
NR = 32
#: the range `dense_row_tile` picks the rows of a register tile from (2 x MR_MAX accumulators)
MR_MIN, MR_MAX = 6, 12
#: rows per cache block (the NR-wide weight panel is reused across them)
MB = 64
#: fp32 / int32 lanes of a 512-bit vector
LANES = 16
#: what a schedule primitive raises when it does not apply
_SCHEDULE_ERRORS = (s_tir.ScheduleError, tvm.error.InternalError, RuntimeError, ValueError)
DENSE_BLOCK = "packed_dense"
DENSE_TRIM_BLOCK = "packed_dense_trim"
BMM_BLOCK = "padded_bmm"
BMM_B_PAD_BLOCK = "bmm_b_pad"
DENSE_INT8_BLOCK = "packed_dense_u8s8"
BMM_INT8_BLOCK = "padded_bmm_u8s8"
BMM_INT8_PACK_BLOCK = "bmm_s8_pack"
BMM_INT8_COMP_BLOCK = "bmm_s8_compensation"
BMM_INT8_A_PAD_BLOCK = "bmm_u8_pad"
_VNNI_N, _VNNI_K = 16, 4
_OP_PATTERN_OUT_EWISE_FUSABLE = 4
CONV_BLOCK = "packed_conv2d"
CONV_PAD_BLOCK = "conv_pad"
CONV_UNPACK_BLOCK = "conv_unpack"
#: packed conv weights above this size (and above the input's) are read channel block
#: first (`_weight_major`): ResNet-style 256/512-channel 3x3 convs, whose weights do
#: not stay in cache between calls; below it image-first measured the same or faster
CONV_WEIGHT_MAJOR_BYTES = 2 << 20
#: accumulator vectors of the conv register tile (of 32 zmm registers)
CONV_ACCUMULATORS = 24
CONV_INT8_BLOCK = "packed_conv2d_u8s8"
CONV_INT8_PAD_BLOCK = "conv_u8_pad"
DW_BLOCK = "packed_dw_conv2d"
DW_PAD_BLOCK = "dw_pad"
DW_UNPACK_BLOCK = "dw_unpack"
#: a pool written as one reduction over its window's taps (the float MaxPool lowering)
WINDOW_BLOCK = "window_pool"
#: output columns of the depthwise register tile (one 16-channel accumulator each)
DW_COLUMNS = 16
#: name prefix of a row kernel's stages that RowReduction computes once per row (per-row
#: values, or a row that several later stages read) instead of inlining into readers
ROW_STAGE = "row_stage"
ROW_LANES_STAGE = f"{ROW_STAGE}_lanes_"
#: name prefix of the Hadamard row kernel's stages (one small dense factor each)
HADAMARD_STAGE = "hadamard_stage"


# --------------------------------------------------------------------------------------
# weight packing (numpy, at compile time)
# --------------------------------------------------------------------------------------


def pack_weight_fp32(w: np.ndarray, nr: int = NR) -> np.ndarray:
    """`W[K, N]` -> `W[ceil(N/nr), K, nr]`, zero-padded columns."""
    k, n = w.shape
    tiles = -(-n // nr)
    padded = np.zeros((k, tiles * nr), dtype=w.dtype)
    padded[:, :n] = w
    return np.ascontiguousarray(padded.reshape(k, tiles, nr).transpose(1, 0, 2))


def pack_weight_int8(w: np.ndarray, nr: int = NR) -> np.ndarray:
    """int8 `W[K, N]` (K % 4 == 0) -> `W[ceil(N/nr) nr/16, K/4, 64]`: per 16-column tile
    and 4-deep k group, the 64 bytes one `vpdpbusd` reads (column-major 16 x 4); the
    columns zero-padded to whole `nr`-wide register tiles."""
    k, n = w.shape
    tiles = -(-n // nr) * (nr // _VNNI_N)
    padded = np.zeros((k, tiles * _VNNI_N), dtype=np.int8)
    padded[:, :n] = w
    packed = padded.reshape(k // _VNNI_K, _VNNI_K, tiles, _VNNI_N).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(packed).reshape(tiles, k // _VNNI_K, _VNNI_N * _VNNI_K)


# --------------------------------------------------------------------------------------
# packed dense kernels (TE)
# --------------------------------------------------------------------------------------


def _shape_of(ty) -> list:
    return list(ty.shape.values)


def _shape_name(shape: Sequence) -> str:
    return "x".join(str(int(d)) if isinstance(d, tirx.IntImm) else "n" for d in shape)


def _i64(v: int) -> tirx.IntImm:
    return tirx.IntImm("int64", v)


def _fresh_shape(shape: Sequence) -> list:
    """Symbolic dims become fresh TIR vars of the PrimFunc (bound from the argument)."""
    out = []
    for d in shape:
        if isinstance(d, (tirx.IntImm, int)):
            out.append(_i64(int(d)))
        else:
            out.append(tirx.Var(f"n{len(out)}", "int64"))
    return out


def dense_row_tile(rows: int | None) -> int:
    """Rows of the dense register tile (`mr`, 2 accumulator vectors per row) for a row
    axis of `rows` (None: symbolic): every row of a short axis (up to MR_MAX), else
    the tile in [MR_MIN, MR_MAX] that pads the axis by the fewest rows (the larger on
    ties), so that row counts that are not multiples of 8 waste almost nothing."""
    if rows is None:
        return MR
    if rows <= MR_MAX:
        return max(1, rows)
    return min(range(MR_MIN, MR_MAX + 1), key=lambda mr: (-(-rows // mr) * mr - rows, -mr))


def dense_tiles_per_block(tiles: int, mr: int) -> int:
    """Register tiles of `mr` rows per cache block (the block reuses one weight panel):
    about MB rows, chosen so that the blocks cover the `tiles` with the fewest spare."""
    most = max(1, MB // mr)
    if tiles <= most:
        return tiles
    return min(range(max(1, most // 2), most + 1), key=lambda t: (-(-tiles // t) * t - tiles, -t))


def _padded_rows(m, mr: int):
    """`m` rounded up to a multiple of `mr` (an int, or an expression of a symbolic m)."""
    if isinstance(m, tirx.IntImm):
        return _i64(-(-int(m) // mr) * mr)
    return (m + _i64(mr - 1)) // _i64(mr) * _i64(mr)


def _clamped_row(i, m):
    """Row `i` of a padded row axis read from a tensor of `m` rows: the padded rows read
    the last real row (finite values, never written out), so no load is predicated."""
    return tirx.min(i, m - _i64(1))


def packed_dense_func(x_shape: Sequence, n: int, dtype: str = "float32", nr: int = NR) -> tirx.PrimFunc:
    """`y[..., i, j] = sum_k x[..., i, k] * w[j // nr, k, j % nr]`, `w` from
    `pack_weight_fp32`, computed as

        packed_dense[..., i, j]    over rows padded to whole register tiles
                                   (`dense_row_tile`) and columns padded to whole
                                   `nr` panels, padded rows reading the last real row
        packed_dense_trim[..., i, j] = packed_dense[..., i, j]  (the real rows, columns)

    so that the scheduled accumulator tile is never predicated: only the write-back
    (with the fused epilogue) checks the bounds."""
    x_shape = _fresh_shape(x_shape)
    *lead, m, k_dim = x_shape
    k = int(k_dim)
    mr = dense_row_tile(int(m) if isinstance(m, tirx.IntImm) else None)
    x = te.placeholder(x_shape, dtype, name="x")
    w = te.placeholder((_i64(-(-n // nr)), _i64(k), _i64(nr)), dtype, name="w_packed")
    r = te.reduce_axis((_i64(0), _i64(k)), name="k")

    def body(*idx):
        *rows, i, j = idx
        return te.sum(x[(*rows, _clamped_row(i, m), r)] * w[j // nr, r, j % nr], axis=r)

    acc = te.compute((*lead, _padded_rows(m, mr), _i64(-(-n // nr) * nr)), body, name=DENSE_BLOCK)
    y = te.compute((*lead, m, _i64(n)), lambda *idx: acc(*idx), name=DENSE_TRIM_BLOCK)
    func = te.create_prim_func([x, w, y])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


def packed_dense_int8_func(x_shape: Sequence, n: int, x_dtype: str = "uint8") -> tirx.PrimFunc:
    """`y[..., j] = sum_k i32(x[..., k]) * i32(w[j//16, k//4, (j%16)*4 + k%4]) - comp[j]`
    with uint8 `x`, int8 `w` from `pack_weight_int8`, int32 `comp`; the accumulator
    `packed_dense_u8s8` covers rows padded to whole register tiles (padded rows read the
    last real row) and the padded weight columns, so that every `vpdpbusd` step is
    unpredicated; the compensation step writes the real rows and columns."""
    x_shape = _fresh_shape(x_shape)
    *lead, m, k_dim = x_shape
    k = int(k_dim)
    mr = dense_row_tile(int(m) if isinstance(m, tirx.IntImm) else None)
    tiles = -(-n // NR) * (NR // _VNNI_N)
    x = te.placeholder(x_shape, x_dtype, name="x")
    w = te.placeholder(tuple(_i64(v) for v in (tiles, k // _VNNI_K, _VNNI_N * _VNNI_K)), "int8", name="w_packed")
    comp = te.placeholder((_i64(n),), "int32", name="compensation")
    r = te.reduce_axis((_i64(0), _i64(k)), name="k")

    def dot(*idx):
        *rows, i, j = idx
        return te.sum(x[(*rows, _clamped_row(i, m), r)].astype("int32")
                      * w[j // _VNNI_N, r // _VNNI_K, j % _VNNI_N * _VNNI_K + r % _VNNI_K].astype("int32"), axis=r)

    acc = te.compute((*lead, _padded_rows(m, mr), _i64(tiles * _VNNI_N)), dot, name=DENSE_INT8_BLOCK)
    y = te.compute((*lead, m, _i64(n)), lambda *idx: acc(*idx) - comp[idx[-1]], name="compensate")
    func = te.create_prim_func([x, w, comp, y])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


def _batch_shapes(a_shape: Sequence, b_shape: Sequence) -> bool:
    """Whether [*B, M, K] @ [*B, K, N] fits the padded batch matmul kernels: equal ranks
    >= 3, the same batch dims (no broadcasting), a static K."""
    return (len(a_shape) == len(b_shape) >= 3 and isinstance(a_shape[-1], tirx.IntImm)
            and all(_same_dim(x, y) for x, y in zip(a_shape[:-2], b_shape[:-2])))


def _same_dim(x, y) -> bool:
    if isinstance(x, tirx.IntImm) and isinstance(y, tirx.IntImm):
        return int(x) == int(y)
    return x.same_as(y)


def padded_batch_matmul_func(a_shape: Sequence, b_shape: Sequence, dtype: str = "float32") -> tirx.PrimFunc:
    """`y[*B, i, j] = sum_k a[*B, i, k] * b[*B, k, j]` for computed `a` and `b` (attention),
    with the dense kernel's tail handling:

        bmm_b_pad[*B, k, j]  = b[*B, k, min(j, N - 1)]   (columns padded to whole NR panels;
                                                       each task copies its panel)
        padded_bmm[*B, i, j] = sum_k a[*B, min(i, M - 1), k] * bmm_b_pad[*B, k, j]
                               (rows padded to whole register tiles, `dense_row_tile`)
        padded_bmm_trim      = the real rows and columns

    so that the accumulator tile (BatchMatmulTile) is never predicated, whatever the
    token count."""
    a_shape, b_shape = _fresh_shape(a_shape), _fresh_shape(b_shape)
    b_shape = [*a_shape[:-2], *b_shape[-2:]]  # the same batch dims (checked by the packer)
    *lead, m, k_dim = a_shape
    n = b_shape[-1]
    mr = dense_row_tile(int(m) if isinstance(m, tirx.IntImm) else None)
    a = te.placeholder(a_shape, dtype, name="a")
    b = te.placeholder(b_shape, dtype, name="b")
    b_pad = te.compute((*lead, k_dim, _padded_rows(n, NR)), lambda *idx: b[(*idx[:-1], _clamped_row(idx[-1], n))],
                       name=BMM_B_PAD_BLOCK)
    r = te.reduce_axis((_i64(0), k_dim), name="k")

    def body(*idx):
        *rows, i, j = idx
        return te.sum(a[(*rows, _clamped_row(i, m), r)] * b_pad[(*rows, r, j)], axis=r)

    acc = te.compute((*lead, _padded_rows(m, mr), _padded_rows(n, NR)), body, name=BMM_BLOCK)
    y = te.compute((*lead, m, n), lambda *idx: acc(*idx), name="padded_bmm_trim")
    func = te.create_prim_func([a, b, y])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


def padded_batch_matmul_int8_func(a_shape: Sequence, b_shape: Sequence, pad_code: int) -> tirx.PrimFunc:
    """`y[*B, i, j] = sum_k (a[*B, i, k] - pad_code) * b[*B, k, j]` in int32 for computed
    uint8 `a` and int8 `b` (integer attention's QK^T and PV): `b` is packed by each task
    into the vpdpbusd layout of its panel (`bmm_s8_pack[*B, j/16, k/4, (j%16)*4 + k%4]`,
    zero past K and N), the accumulator `padded_bmm_u8s8` covers rows padded to whole
    register tiles (padded rows read the last real row) and K padded to whole groups of 4
    (`bmm_u8_pad`, only when K is not: the packed right operand is zero there), and
    `pad_code * sum_k b[*B, k, j]` (`bmm_s8_compensation`) is subtracted on write-back.
    Exact: the int32 sums of the int32 matmul it replaces, which wrap alike."""
    a_shape, b_shape = _fresh_shape(a_shape), _fresh_shape(b_shape)
    b_shape = [*a_shape[:-2], *b_shape[-2:]]  # the same batch dims (checked by the packer)
    *lead, m, k_dim = a_shape
    n = b_shape[-1]
    k = int(k_dim)
    groups = -(-k // _VNNI_K)
    tiles = -(-int(n) // NR) * (NR // _VNNI_N)  # N is static (checked by the packer)
    mr = dense_row_tile(int(m) if isinstance(m, tirx.IntImm) else None)
    a_in = a = te.placeholder(a_shape, "uint8", name="a")
    b = te.placeholder(b_shape, "int8", name="b")

    def packed(*idx):
        *rows, jt, kq, t = idx
        kk, jj = kq * _VNNI_K + t % _VNNI_K, jt * _VNNI_N + t // _VNNI_K
        inside = tirx.all(kk < k, jj < n)
        return tirx.Select(inside, b[(*rows, tirx.min(kk, k - 1), tirx.min(jj, n - 1))], tirx.const(0, "int8"))

    pack = te.compute((*lead, _i64(tiles), _i64(groups), _i64(_VNNI_N * _VNNI_K)), packed, name=BMM_INT8_PACK_BLOCK)
    if k % _VNNI_K:  # K padded to whole groups of 4 (times the packed zeros), so that every 4-byte read is in bounds
        a = te.compute((*lead, m, _i64(groups * _VNNI_K)), lambda *idx: a[(*idx[:-1], tirx.min(idx[-1], k - 1))],
                       name=BMM_INT8_A_PAD_BLOCK)
    r = te.reduce_axis((_i64(0), _i64(groups * _VNNI_K)), name="k")

    def dot(*idx):
        *rows, i, j = idx
        return te.sum(a[(*rows, _clamped_row(i, m), r)].astype("int32")
                      * pack[(*rows, j // _VNNI_N, r // _VNNI_K, j % _VNNI_N * _VNNI_K + r % _VNNI_K)].astype("int32"),
                      axis=r)

    acc = te.compute((*lead, _padded_rows(m, mr), _i64(tiles * _VNNI_N)), dot, name=BMM_INT8_BLOCK)
    if pad_code:
        rk = te.reduce_axis((_i64(0), _i64(k)), name="rk")
        colsum = te.compute((*lead, n), lambda *idx: te.sum(b[(*idx[:-1], rk, idx[-1])].astype("int32"), axis=rk),
                            name=BMM_INT8_COMP_BLOCK)
        y = te.compute((*lead, m, n), lambda *idx: acc(*idx) - colsum[(*idx[:-2], idx[-1])] * pad_code,
                       name="bmm_compensate")
    else:
        y = te.compute((*lead, m, n), lambda *idx: acc(*idx), name="bmm_trim")
    func = te.create_prim_func([a_in, b, y])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


# --------------------------------------------------------------------------------------
# packed conv2d (NCHW activations, constant OIHW weight) (TE)
# --------------------------------------------------------------------------------------


def pack_conv_weight(w: np.ndarray, ob: int) -> np.ndarray:
    """`W[O, I/g, KH, KW]` -> `W[ceil(O/ob), I/g, KH, KW, ob]` (OIHW{ob}o), zero-padded
    output channels: the `ob` channels one register tile computes lie together."""
    o = w.shape[0]
    blocks = -(-o // ob)
    padded = np.zeros((blocks * ob, *w.shape[1:]), dtype=w.dtype)
    padded[:o] = w
    return np.ascontiguousarray(padded.reshape(blocks, ob, *w.shape[1:]).transpose(0, 2, 3, 4, 1))


def conv_tile(out_channels_per_group: int, out_width: int) -> tuple[int, int]:
    """(ob, owt): the register tile of `packed_conv2d_func`: `ob` output channels (one or
    two 16-lane vectors) x `owt` output columns (one accumulator vector each), at most
    CONV_ACCUMULATORS vectors. `owt` is the width in [max/2, max] that wastes the fewest
    padded columns (ResNet widths 56/28/14/7 divide exactly), the larger on ties."""
    ob = 2 * LANES if out_channels_per_group % (2 * LANES) == 0 else LANES
    return ob, conv_owt(ob, out_width)


def conv_owt(ob: int, out_width: int) -> int:
    """The columns of a conv register tile of `ob` channels (see `conv_tile`)."""
    most = CONV_ACCUMULATORS // (ob // LANES)
    lo, hi = min(out_width, -(-most // 2)), min(out_width, most)
    return min(range(lo, hi + 1), key=lambda t: (-(-out_width // t) * t - out_width, -t))


def _conv_input_dims(x_shape: Sequence, in_blocked: bool, in_channels: int | None) -> tuple:
    """(n, channels, height, width) of a conv input, NCHW or NCHW16c (5-D: its real
    channels are `in_channels`, default all its lanes); all but n as Python ints."""
    if in_blocked:
        n, blocks, h, w, _ = x_shape
        c = int(blocks) * LANES if in_channels is None else in_channels
        if not 0 < c <= int(blocks) * LANES or int(blocks) != -(-c // LANES):
            raise ValueError(f"{c} channels are not carried in {int(blocks)} blocks of {LANES}")
        return n, c, int(h), int(w)
    n, c, h, w = x_shape
    return n, int(c), int(h), int(w)


def packed_conv2d_func(x_shape: Sequence, out_channels: int, kernel: Sequence[int], strides: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int], groups: int = 1,
                       dtype: str = "float32", padded_channels: int | None = None,
                       out_blocked: bool = False, in_blocked: bool = False,
                       in_channels: int | None = None) -> tirx.PrimFunc:
    """NCHW conv2d with a packed weight (`pack_conv_weight`, `ob` from `conv_tile`):

        conv_pad[n, c, i, j]          = x[n, c, i - top, j - left] (0 outside; right-padded
                                        so that whole `owt` tiles of columns can be read)
        packed_conv2d[n, b, h, w, o]  = sum_{c, r, s} conv_pad[n, g(b) I/g + c, h sh + r dh,
                                        w sw + s dw] * w_packed[b, c, r, s, o]
        conv_unpack[n, b ob + o, h, w] = packed_conv2d[n, b, h, w, o]

    `packed_conv2d` is the accumulator in output-channel-block-inner layout (columns
    padded to whole tiles), which ConvTile keeps as a register tile; the output is NCHW
    like relax.nn.conv2d's. `padding` is (top, left, bottom, right).

    `padded_channels` (narrow groups made 16 wide, `densify_narrow_groups`): the input
    is zero-padded to that many channels and the `groups` are 16 channels in and out,
    the last output group possibly partial.

    `out_blocked`: the output is NCHW16c instead, ceil(out_channels / 16) blocks,

        conv_unpack[n, k, h, w, l]     = packed_conv2d[n, (16 k + l) / ob, h, w, (16 k + l) % ob]

    which the tile writes as whole 16-channel vectors (see `blocked_chains`; padding
    lanes hold the zero-padded weights' zeros).
    `in_blocked` (groups 1): `x` is NCHW16c, `x[n, b, i, j, l]` (`x_shape` 5-D) whose
    first `in_channels` lanes are real (default all); the padded copy keeps that layout
    and the reduction reads channel c < in_channels at `[n, c / 16, i, j, c % 16]` (a
    broadcast scalar per step either way), never a padding lane."""
    if in_blocked and (groups != 1 or padded_channels):
        raise ValueError("a channel-blocked input is read by an ungrouped conv only")
    x_shape = _fresh_shape(x_shape)
    n, c, h, w = _conv_input_dims(x_shape, in_blocked, in_channels)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilation
    top, left, bottom, right = padding
    cp = padded_channels or c
    in_group, out_group = cp // groups, (LANES if padded_channels else out_channels // groups)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    ob, owt = conv_tile(out_group, ow)
    ow_pad = -(-ow // owt) * owt
    hp, wp = h + top + bottom, max(w + left + right, (ow_pad - 1) * sw + dw * (kw - 1) + 1)
    blocks = -(-out_channels // ob)
    x = te.placeholder(x_shape, dtype, name="x")
    wt = te.placeholder(tuple(_i64(v) for v in (blocks, in_group, kh, kw, ob)), dtype, name="w_packed")
    if (top, left) == (0, 0) and (hp, wp, cp) == (h, w, c):
        xp = x
    elif in_blocked:
        def pad_blocked(i0, b, i2, i3, l):
            inside = tirx.all(i2 >= top, i2 < top + h, i3 >= left, i3 < left + w)
            return tirx.if_then_else(inside, x[i0, b, i2 - top, i3 - left, l], tirx.const(0, dtype))

        xp = te.compute((n, _i64(-(-c // LANES)), _i64(hp), _i64(wp), _i64(LANES)), pad_blocked, name=CONV_PAD_BLOCK)
    else:
        def pad(i0, i1, i2, i3):
            inside = tirx.all(i1 < c, i2 >= top, i2 < top + h, i3 >= left, i3 < left + w)
            chan = i1 if cp == c else tirx.min(i1, c - 1)
            return tirx.if_then_else(inside, x[i0, chan, i2 - top, i3 - left], tirx.const(0, dtype))

        xp = te.compute((n, _i64(cp), _i64(hp), _i64(wp)), pad, name=CONV_PAD_BLOCK)
    rc = te.reduce_axis((_i64(0), _i64(in_group)), name="rc")
    ry = te.reduce_axis((_i64(0), _i64(kh)), name="ry")
    rx = te.reduce_axis((_i64(0), _i64(kw)), name="rx")
    blocks_per_group = max(1, out_group // ob)

    def body(i, b, y, z, o):
        chan = rc if groups == 1 else b // blocks_per_group * in_group + rc
        if in_blocked:
            pixel = xp[i, chan // LANES, y * sh + ry * dh, z * sw + rx * dw, chan % LANES]
        else:
            pixel = xp[i, chan, y * sh + ry * dh, z * sw + rx * dw]
        return te.sum(pixel * wt[b, rc, ry, rx, o], axis=[rc, ry, rx])

    acc = te.compute((n, _i64(blocks), _i64(oh), _i64(ow_pad), _i64(ob)), body, name=CONV_BLOCK)
    if out_blocked:
        split = ob // LANES
        out = te.compute((n, _i64(-(-out_channels // LANES)), _i64(oh), _i64(ow), _i64(LANES)),
                         lambda i, cb, y, z, c: acc[i, cb // split, y, z, cb % split * LANES + c],
                         name=CONV_UNPACK_BLOCK)
    else:
        out = te.compute((n, _i64(out_channels), _i64(oh), _i64(ow)),
                         lambda i, o, y, z: acc[i, o // ob, y, z, o % ob], name=CONV_UNPACK_BLOCK)
    func = te.create_prim_func([x, wt, out])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


def densify_narrow_groups(w: np.ndarray, groups: int) -> np.ndarray | None:
    """A grouped conv weight `W[O, I/g, KH, KW]` whose groups are narrower than a vector
    (I/g = O/g, dividing 16) as the weight of an equivalent conv whose groups are 16
    channels wide: `W'[O, 16, KH, KW]`, block-diagonal within each 16-channel block
    (`W'[o, j] = W[o, j - start of o's group in its block]` for the input channels of
    o's group, 0 for the others). The packed conv then runs it with 16-lane weight
    vectors at 16 / (I/g) times the arithmetic: far faster than TVM's own grouped conv.
    None when the groups do not fit 16-channel blocks that way."""
    out_channels, width = w.shape[0], w.shape[1]
    if groups <= 1 or out_channels // groups != width or LANES % width or width == 1:
        return None
    dense = np.zeros((out_channels, LANES, *w.shape[2:]), dtype=w.dtype)
    for o in range(out_channels):
        start = (o // width * width) % LANES  # o's group starts here in its 16-channel block
        dense[o, start:start + width] = w[o]
    return dense


def pack_depthwise_weight(w: np.ndarray) -> np.ndarray:
    """Depthwise `W[C, 1, KH, KW]` -> `W[ceil(C/16), KH, KW, 16]`: the 16 channels one
    vector computes lie together per tap, zero-padded channels."""
    c = w.shape[0]
    blocks = -(-c // LANES)
    padded = np.zeros((blocks * LANES, *w.shape[2:]), dtype=w.dtype)
    padded[:c] = w[:, 0]
    return np.ascontiguousarray(padded.reshape(blocks, LANES, *w.shape[2:]).transpose(0, 2, 3, 1))


def depthwise_owt(out_width: int) -> int:
    """The output columns of a depthwise register tile (one 16-channel accumulator
    each): the width in [DW_COLUMNS/2, DW_COLUMNS] that pads the fewest columns."""
    lo, hi = min(out_width, -(-DW_COLUMNS // 2)), min(out_width, DW_COLUMNS)
    return min(range(lo, hi + 1), key=lambda t: (-(-out_width // t) * t - out_width, -t))


def packed_depthwise_conv2d_func(x_shape: Sequence, kernel: Sequence[int], strides: Sequence[int],
                                 padding: Sequence[int], dilation: Sequence[int],
                                 dtype: str = "float32", in_blocked: bool = False,
                                 out_blocked: bool = False, in_channels: int | None = None) -> tirx.PrimFunc:
    """Depthwise NCHW conv2d (groups = input = output channels) with a packed weight
    (`pack_depthwise_weight`), vectorised across 16 channels:

        dw_pad[n, b, i, j, c]          = x[n, 16 b + c, i - top, j - left] (0 outside and
                                         for padded channels; right-padded so that whole
                                         column tiles read in bounds): the input copied
                                         once into 16-channel blocks
        packed_dw_conv2d[n, b, h, w, c] = sum_{r, s} dw_pad[n, b, h sh + r dh, w sw + s dw, c]
                                                     * w_packed[b, r, s, c]
        dw_unpack[n, 16 b + c, h, w]   = packed_dw_conv2d[n, b, h, w, c]

    Every tap is one contiguous 16-channel load times one weight vector, for any
    stride and any width (a width-vectorised kernel wastes most lanes on the 7- and
    14-wide maps of late stages and needs gathers at stride 2).

    `in_blocked`: `x` is already NCHW16c, `x[n, b, i, j, c]` (`x_shape` 5-D, its first
    `in_channels` lanes real, default all): the copy only pads it, `dw_pad[n, b, i, j,
    c] = x[n, b, i - top, j - left, c]`; each lane's output reads only that lane.
    `out_blocked`: the output is NCHW16c, the accumulator's own layout without its
    padded columns (padding lanes included)."""
    x_shape = _fresh_shape(x_shape)
    n, c, h, w = _conv_input_dims(x_shape, in_blocked, in_channels)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    owt = depthwise_owt(ow)
    ow_pad = -(-ow // owt) * owt
    hp, wp = h + top + bottom, max(w + left + right, (ow_pad - 1) * sw + dw * (kw - 1) + 1)
    blocks = -(-c // LANES)
    x = te.placeholder(x_shape, dtype, name="x")
    wt = te.placeholder(tuple(_i64(v) for v in (blocks, kh, kw, LANES)), dtype, name="w_packed")

    def pad(i0, b, i2, i3, ci):
        if in_blocked:
            inside = tirx.all(i2 >= top, i2 < top + h, i3 >= left, i3 < left + w)
            return tirx.if_then_else(inside, x[i0, b, i2 - top, i3 - left, ci], tirx.const(0, dtype))
        chan = b * LANES + ci
        inside = tirx.all(chan < c, i2 >= top, i2 < top + h, i3 >= left, i3 < left + w)
        return tirx.if_then_else(inside, x[i0, tirx.min(chan, c - 1), i2 - top, i3 - left], tirx.const(0, dtype))

    xp = te.compute((n, _i64(blocks), _i64(hp), _i64(wp), _i64(LANES)), pad, name=DW_PAD_BLOCK)
    ry = te.reduce_axis((_i64(0), _i64(kh)), name="ry")
    rx = te.reduce_axis((_i64(0), _i64(kw)), name="rx")
    acc = te.compute((n, _i64(blocks), _i64(oh), _i64(ow_pad), _i64(LANES)),
                     lambda i, b, y, z, o: te.sum(xp[i, b, y * sh + ry * dh, z * sw + rx * dw, o] * wt[b, ry, rx, o],
                                                  axis=[ry, rx]), name=DW_BLOCK)
    if out_blocked:
        out = te.compute((n, _i64(blocks), _i64(oh), _i64(ow), _i64(LANES)),
                         lambda i, b, y, z, o: acc[i, b, y, z, o], name=DW_UNPACK_BLOCK)
    else:
        out = te.compute((n, _i64(c), _i64(oh), _i64(ow)),
                         lambda i, o, y, z: acc[i, o // LANES, y, z, o % LANES], name=DW_UNPACK_BLOCK)
    func = te.create_prim_func([x, wt, out])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


def pack_conv_weight_int8(w: np.ndarray) -> np.ndarray:
    """int8 `W[O, C, KH, KW]` -> `W[ceil(O/32) 2, ceil(C/4), KH, KW, 64]`: per 16 output
    channels, 4 input channels and tap, the 64 bytes one `vpdpbusd` reads (16 channels x
    4 input channels, input channel innermost); zero-padded channels."""
    o, c, kh, kw = w.shape
    tiles, c4 = -(-o // NR) * (NR // LANES), -(-c // _VNNI_K)
    padded = np.zeros((tiles * LANES, c4 * _VNNI_K, kh, kw), dtype=np.int8)
    padded[:o, :c] = w
    # [t, lane, c4, ci, r, s] -> [t, c4, r, s, lane, ci]
    blocked = padded.reshape(tiles, LANES, c4, _VNNI_K, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return np.ascontiguousarray(blocked).reshape(tiles, c4, kh, kw, LANES * _VNNI_K)


def packed_conv2d_int8_func(x_shape: Sequence, out_channels: int, kernel: Sequence[int], strides: Sequence[int],
                            padding: Sequence[int], dilation: Sequence[int], pad_code: int = 0) -> tirx.PrimFunc:
    """int8 NCHW conv2d, uint8 codes `x` times int8 weights (`pack_conv_weight_int8`),
    int32 accumulation (exact), minus an int32 per-channel compensation:

        conv_u8_pad[n, c4, i, j, ci]     = x[n, 4 c4 + ci, i - top, j - left], `pad_code`
                                           outside and for padded channels (the code of
                                           a 0 activation, so the padding adds nothing
                                           once compensated)
        packed_conv2d_u8s8[n, t, h, w, l] = sum_{c4, r, s, ci} conv_u8_pad[n, c4, h sh + r dh,
                                           w sw + s dw, ci] * w_packed[t, c4, r, s, 4 l + ci]
        conv_u8s8_unpack[n, 16 t + l, h, w] = packed_conv2d_u8s8[n, t, h, w, l] - comp[16 t + l]

    Every 16 output channels x 4 input channels step is one `vpdpbusd` (ConvVNNI): the
    4 input channels of one pixel lie together in the blocked input."""
    x_shape = _fresh_shape(x_shape)
    n, c, h, w = x_shape
    c, h, w = int(c), int(h), int(w)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    ob, owt = conv_tile(out_channels, ow)
    ow_pad = -(-ow // owt) * owt
    hp, wp = h + top + bottom, max(w + left + right, (ow_pad - 1) * sw + dw * (kw - 1) + 1)
    tiles, c4 = -(-out_channels // NR) * (NR // LANES), -(-c // _VNNI_K)
    x = te.placeholder(x_shape, "uint8", name="x")
    wt = te.placeholder(tuple(_i64(v) for v in (tiles, c4, kh, kw, LANES * _VNNI_K)), "int8", name="w_packed")
    comp = te.placeholder((_i64(out_channels),), "int32", name="compensation")

    def pad(i0, b, i2, i3, ci):
        chan = b * _VNNI_K + ci
        inside = tirx.all(chan < c, i2 >= top, i2 < top + h, i3 >= left, i3 < left + w)
        return tirx.if_then_else(inside, x[i0, tirx.min(chan, c - 1), i2 - top, i3 - left],
                                 tirx.const(pad_code, "uint8"))

    xp = te.compute((n, _i64(c4), _i64(hp), _i64(wp), _i64(_VNNI_K)), pad, name=CONV_INT8_PAD_BLOCK)
    rb = te.reduce_axis((_i64(0), _i64(c4)), name="rb")
    ry = te.reduce_axis((_i64(0), _i64(kh)), name="ry")
    rx = te.reduce_axis((_i64(0), _i64(kw)), name="rx")
    ri = te.reduce_axis((_i64(0), _i64(_VNNI_K)), name="ri")

    def body(i, t, y, z, lane):
        return te.sum(xp[i, rb, y * sh + ry * dh, z * sw + rx * dw, ri].astype("int32")
                      * wt[t, rb, ry, rx, lane * _VNNI_K + ri].astype("int32"), axis=[rb, ry, rx, ri])

    acc = te.compute((n, _i64(tiles), _i64(oh), _i64(ow_pad), _i64(LANES)), body, name=CONV_INT8_BLOCK)
    out = te.compute((n, _i64(out_channels), _i64(oh), _i64(ow)),
                     lambda i, o, y, z: acc[i, o // LANES, y, z, o % LANES] - comp[o], name="conv_u8s8_unpack")
    func = te.create_prim_func([x, wt, comp, out])
    return func.with_attr("op_pattern", _OP_PATTERN_OUT_EWISE_FUSABLE)


# --------------------------------------------------------------------------------------
# Relax pass: matmul with a constant right operand -> packed dense call_tir
# --------------------------------------------------------------------------------------


def constant_array(expr) -> np.ndarray | None:
    """The array of a Relax constant, None for any other expression."""
    if isinstance(expr, tvm.ir.expr.Constant) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


def _mutate_relax_functions(mutator: relax.PyExprMutator, mod: tvm.IRModule,
                            before: Callable[[relax.Function], None] | None = None) -> tvm.IRModule:
    """`mod` with every Relax function rewritten by `mutator` (made on `mod`);
    `before(func)` runs before each function is visited."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            if before is not None:
                before(func)
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


@relax.expr_functor.mutator
class _WeightPacker(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, vnni: bool, conv: bool = True) -> None:
        super().__init__(mod)
        self.vnni = vnni
        self.conv = conv
        self.packed = 0
        self.blocked = 0
        self._funcs: dict[tuple, tvm.ir.GlobalVar] = {}
        self.chains = BlockedChains()
        self._binding_var = None

    def find_chains(self, func: relax.Function) -> None:
        """Decide, before `func` is visited, which of its convs carry NCHW16c."""
        self.chains = find_blocked_chains(func) if self.conv else BlockedChains()

    def visit_var_binding_(self, binding) -> None:  # noqa: D102  (tvm's visitor naming)
        self._binding_var = binding.var
        try:
            super().visit_var_binding_(binding)
        finally:
            self._binding_var = None

    def _chain_member(self, call: relax.Call) -> relax.Call:
        """An elementwise op of a blocked chain on its NCHW16c operands: per-channel
        constants re-laid out as [1, ceil(C/16), 1, 1, 16], computed per-channel tensors
        ([N, C, 1, 1]: the same values in the same order) padded to whole blocks and
        reshaped to [N, ceil(C/16), 1, 1, 16]."""
        args = [self.visit_expr(arg) for arg in call.args]
        channels = int(call.ty.shape.values[1])
        blocks = blocks_of(channels)

        def blocked(arg):
            if constant_array(arg) is not None:
                return relax.const(blocked_constant(constant_array(arg), channels))
            if isinstance(arg, relax.Var) and isinstance(arg.ty, relax.TensorType) and arg.ty.ndim == 4:
                n = arg.ty.shape.values[0]
                if blocks * LANES != channels:
                    arg = self.builder_.emit(relax.op.nn.pad(arg, [0, 0, 0, blocks * LANES - channels, 0, 0, 0, 0]))
                return self.builder_.emit(relax.op.reshape(arg, [n, blocks, 1, 1, LANES]))
            return arg

        return relax.Call(call.op, [blocked(a) for a in args], call.attrs, call.ty_args)

    def _chain_exit(self, call: relax.Call) -> relax.Expr:
        """The spatial mean of a chain value, taken on its NCHW16c form and reshaped to
        the [N, C, 1, 1] its users read (the same values in the same order, padding
        lanes dropped)."""
        x = self.visit_expr(call.args[0])
        pooled = self.builder_.emit(relax.op.mean(x, axis=[2, 3], keepdims=True))
        n, channels = call.ty.shape.values[:2]
        padded = blocks_of(int(channels)) * LANES
        if padded == int(channels):
            return relax.op.reshape(pooled, call.ty.shape)
        flat = self.builder_.emit(relax.op.reshape(pooled, [n, padded, 1, 1]))
        return relax.op.strided_slice(flat, axes=[1], begin=[0], end=[int(channels)])

    def _resolve(self, expr):
        while isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                return expr
            expr = bound
        return expr

    def _const_through_cast(self, expr) -> np.ndarray | None:
        """A constant, possibly behind `astype` (FoldConstant leaves the cast of a
        scalar zero point, e.g. astype(uint8 const, int32), in place)."""
        expr = self._resolve(expr)
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.astype":
            inner = constant_array(self._resolve(expr.args[0]))
            return None if inner is None else inner.astype(str(expr.ty.dtype))
        return constant_array(expr)

    def _kernel(self, key: tuple, make: Callable[[], tirx.PrimFunc]) -> tvm.ir.GlobalVar:
        gv = self._funcs.get(key)
        if gv is None:
            gv = self.builder_.add_func(make(), key[0])
            self._funcs[key] = gv
        return gv

    def visit_call_(self, call: relax.Call):  # noqa: N802  (tvm's visitor naming)
        # a chain's members and ends read NCHW16c operands, on which the original ops
        # would not type-check: they are rewritten from their new operands directly
        if self._binding_var in self.chains.members:
            return self._chain_member(call)
        if self._binding_var in self.chains.exits:
            return self._chain_exit(call)
        if self._binding_var in self.chains.ends or self._binding_var in self.chains.heads:
            return self._conv2d_blocked(call)
        call = super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d" and self.conv:
            return self._conv2d(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.matmul":
            return call
        x, w_expr = call.args
        w = constant_array(self._resolve(w_expr))
        x_info, out_info = x.ty, call.ty
        if w is None:
            return self._batch_matmul(call)
        if (w.ndim != 2 or not isinstance(x_info, relax.TensorType) or x_info.ndim < 2
                or not isinstance(out_info, relax.TensorType) or out_info.shape is None
                or x_info.shape is None or not isinstance(x_info.shape.values[-1], tirx.IntImm)):
            return call
        if out_info.dtype == "float32" and x_info.dtype == "float32" and w.dtype == np.float32:
            return self._fp32(call, x, w)
        if out_info.dtype == "int32" and self.vnni:
            return self._int8(call, x, w)
        return call

    def _batch_matmul(self, call):
        """float32 or int32 `matmul(a[*B, M, K], b[*B, K, N])` of two computed tensors
        with the same batch dims (attention's QK^T and PV; int32 for the integer matmuls
        of integer-only attention, which wrap as the int32 matmul does) and a static K ->
        the padded batch matmul kernel (`padded_batch_matmul_func`)."""
        a, b = call.args
        infos = (a.ty, b.ty, call.ty)
        if not all(isinstance(t, relax.TensorType) and t.shape is not None for t in infos):
            return call
        dtype = call.ty.dtype
        if dtype not in ("float32", "int32") or a.ty.dtype != dtype or b.ty.dtype != dtype:
            return call
        if dtype == "int32" and self.vnni:
            packed = self._batch_matmul_int8(call)
            if packed is not None:
                return packed
        a_shape, b_shape = _shape_of(a.ty), _shape_of(b.ty)
        if not _batch_shapes(a_shape, b_shape):
            return call
        key = (f"padded_bmm_{_shape_name(a_shape)}_{_shape_name(b_shape[-1:])}", tuple(str(d) for d in a_shape),
               tuple(str(d) for d in b_shape), dtype)
        gv = self._kernel(key, lambda: padded_batch_matmul_func(a_shape, b_shape, dtype))
        self.packed += 1
        return relax.call_tir(gv, [a, b], call.ty)

    def _batch_matmul_int8(self, call):
        """`matmul(astype(a8, i32) [- zp], astype(b_i8, i32))` of two computed tensors with
        the same batch dims, a static K and N -> the int8 batch matmul kernel (vpdpbusd);
        None when the operands are not of that form."""
        a, b = call.args
        b_inner = self._resolve(b)
        if not (isinstance(b_inner, relax.Call) and isinstance(b_inner.op, tvm.ir.Op)
                and b_inner.op.name == "relax.astype" and b_inner.args[0].ty.dtype == "int8"):
            return None
        b8 = b_inner.args[0]
        found = self._int8_activation(a, call.ty.ndim)
        if found is None:
            return None
        a8, zero_point, shift = found
        a_shape, b_shape = _shape_of(a8.ty), _shape_of(b8.ty)
        if not _batch_shapes(a_shape, b_shape) or not isinstance(b_shape[-1], tirx.IntImm):
            return None
        key = (f"padded_bmm_u8s8_{_shape_name(a_shape)}_{_shape_name(b_shape[-1:])}", tuple(str(d) for d in a_shape),
               tuple(str(d) for d in b_shape), shift + zero_point)
        gv = self._kernel(key, lambda: padded_batch_matmul_int8_func(a_shape, b_shape, shift + zero_point))
        self.packed += 1
        return relax.call_tir(gv, [a8, b8], call.ty)

    def _conv2d(self, call):
        """float32 NCHW/OIHW conv2d with a constant weight and static C, H, W ->
        packed conv `call_tir` (groups whose output channels fill whole 16-lane blocks)."""
        x, w_expr = call.args
        w = constant_array(self._resolve(w_expr))
        a = call.attrs
        x_info, out_info = x.ty, call.ty
        # an int8 conv is packed on any CPU (ConvVNNI falls back to a vector loop without
        # VNNI): relax's own int32 conv2d has no fast schedule here
        if (w is not None and w.ndim == 4 and isinstance(out_info, relax.TensorType)
                and out_info.dtype == "int32" and (a.data_layout, a.kernel_layout) == ("NCHW", "OIHW")
                and np.issubdtype(w.dtype, np.integer)):
            return self._conv2d_int8(call, w, self._geometry(call, w))
        if (w is None or w.ndim != 4 or w.dtype != np.float32 or not isinstance(x_info, relax.TensorType)
                or x_info.dtype != "float32" or x_info.shape is None or x_info.ndim != 4
                or not isinstance(out_info, relax.TensorType) or out_info.dtype != "float32"
                or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW")):
            return call
        shape = _shape_of(x_info)
        if not all(isinstance(d, tirx.IntImm) for d in shape[1:]):
            return call
        groups = int(a.groups)
        out_channels = w.shape[0]
        geometry = self._geometry(call, w)
        if groups > 1 and groups == out_channels == int(shape[1]):
            key = (f"packed_dw_conv2d_{_shape_name(shape)}", tuple(str(d) for d in shape), repr(sorted(geometry.items())))
            gv = self._kernel(key, lambda: packed_depthwise_conv2d_func(shape, **geometry))
            self.packed += 1
            return relax.call_tir(gv, [x, relax.const(pack_depthwise_weight(w))], call.ty)
        dense = densify_narrow_groups(w, groups) if groups > 1 and (out_channels // groups) % LANES else None
        if dense is not None:
            blocks = -(-out_channels // LANES)
            args = dict(geometry, groups=blocks, padded_channels=blocks * LANES)
            key = (f"packed_conv2d_{_shape_name(shape)}_{out_channels}", tuple(str(d) for d in shape), out_channels,
                   repr(sorted(args.items())))
            gv = self._kernel(key, lambda: packed_conv2d_func(shape, out_channels, **args))
            self.packed += 1
            return relax.call_tir(gv, [x, relax.const(pack_conv_weight(dense, LANES))], call.ty)
        if groups > 1 and (out_channels // groups) % LANES:
            return call  # other narrow groups (a channel multiplier, widths not dividing 16): TVM's own conv
        args = dict(geometry, groups=groups)
        ob, _ = conv_tile(out_channels // groups, int(out_info.shape.values[3]))
        key = (f"packed_conv2d_{_shape_name(shape)}_{out_channels}", tuple(str(d) for d in shape), out_channels,
               repr(sorted(args.items())))
        gv = self._kernel(key, lambda: packed_conv2d_func(shape, out_channels, **args))
        self.packed += 1
        return relax.call_tir(gv, [x, relax.const(pack_conv_weight(w, ob))], call.ty)

    @staticmethod
    def _geometry(call, w: np.ndarray) -> dict:
        a = call.attrs
        return dict(kernel=[int(v) for v in w.shape[2:]], strides=[int(v) for v in a.strides],
                    padding=[int(v) for v in a.padding], dilation=[int(v) for v in a.dilation])

    def _conv2d_blocked(self, call):
        """A conv of a blocked chain (`blocked_chains`): the packed conv or depthwise
        kernel reading [N, ceil(C/16), H, W, 16] where it ends a chain and writing it where it
        heads one."""
        var = self._binding_var
        in_blocked, out_blocked = var in self.chains.ends, var in self.chains.heads
        x = self.visit_expr(call.args[0])
        w = constant_array(self._resolve(call.args[1]))
        geometry = self._geometry(call, w)
        shape, out_shape = _shape_of(x.ty), _shape_of(call.ty)
        out_channels = w.shape[0]
        layouts = dict(in_blocked=in_blocked, out_blocked=out_blocked)
        if in_blocked:
            layouts["in_channels"] = int(call.args[0].ty.shape.values[1])
        suffix = "c" if out_blocked else ""
        if int(call.attrs.groups) > 1:  # depthwise
            key = (f"packed_dw_conv2d_{_shape_name(shape)}{suffix}", tuple(str(d) for d in shape),
                   repr(sorted(geometry.items())), repr(sorted(layouts.items())))
            gv = self._kernel(key, lambda: packed_depthwise_conv2d_func(shape, **geometry, **layouts))
            weight = pack_depthwise_weight(w)
        else:
            ob, _ = conv_tile(out_channels, int(out_shape[3]))
            args = dict(geometry, groups=1, **layouts)
            key = (f"packed_conv2d_{_shape_name(shape)}_{out_channels}{suffix}", tuple(str(d) for d in shape),
                   out_channels, repr(sorted(args.items())))
            gv = self._kernel(key, lambda: packed_conv2d_func(shape, out_channels, **args))
            weight = pack_conv_weight(w, ob)
        self.packed += 1
        self.blocked += out_blocked
        ty = call.ty
        if out_blocked:
            n, _, oh, ow = out_shape
            ty = relax.TensorType([n, blocks_of(out_channels), oh, ow, LANES], "float32")
        return relax.call_tir(gv, [x, relax.const(weight)], ty)

    def _packed_dense(self, call, x, name: str, make: Callable[[list], tirx.PrimFunc], consts: list) -> relax.Expr:
        """`call_tir` of the packed dense kernel `make(x_shape)` on `x` and the packed
        `consts`, typed as `call`. An x [*lead, m, k] whose row axis m is shorter than the
        smallest full register tile (a sequence-first [tokens, batch, k]: batch rows)
        runs with its leading dims flattened into rows (a free reshape of a contiguous
        tensor, and one back): the kernel tiles only its last-but-one axis, so it would
        run on tiles of m rows."""
        shape, ty = _shape_of(x.ty), call.ty
        flat = len(shape) > 2 and all(isinstance(d, tirx.IntImm) for d in shape) and int(shape[-2]) < MR_MIN
        if flat:
            rows = int(np.prod([int(d) for d in shape[:-1]]))
            x = self.builder_.emit(relax.op.reshape(x, [rows, int(shape[-1])]))
            shape, ty = _shape_of(x.ty), relax.TensorType([rows, int(call.ty.shape.values[-1])], call.ty.dtype)
        key = (f"{name}_{_shape_name(shape)}_{int(ty.shape.values[-1])}", tuple(str(d) for d in shape), name)
        gv = self._kernel(key, lambda: make(shape))
        self.packed += 1
        y = relax.call_tir(gv, [x, *(relax.const(c) for c in consts)], ty)
        return relax.op.reshape(self.builder_.emit(y), call.ty.shape) if flat else y

    def _fp32(self, call, x, w):
        n = w.shape[1]
        return self._packed_dense(call, x, "packed_dense", lambda shape: packed_dense_func(shape, n),
                                  [pack_weight_fp32(w)])

    def _int8_activation(self, a, ndim: int) -> tuple[relax.Expr, int, int] | None:
        """`astype(x8, i32) [- zp]` -> (uint8 codes, zero point, shift): int8 codes are
        shifted by 128 into uint8 (vpdpbusd multiplies unsigned x signed), corrected by
        the caller's compensation. None when `a` is not of that form."""
        zero_point = 0
        inner = self._resolve(a)
        if isinstance(inner, relax.Call) and isinstance(inner.op, tvm.ir.Op) and inner.op.name == "relax.subtract":
            zp = self._const_through_cast(inner.args[1])
            if zp is None or zp.size != 1:
                return None
            zero_point, inner = int(zp.reshape(())), self._resolve(inner.args[0])
        if not (isinstance(inner, relax.Call) and isinstance(inner.op, tvm.ir.Op) and inner.op.name == "relax.astype"):
            return None
        x = inner.args[0]
        if x.ty.dtype not in ("uint8", "int8") or x.ty.ndim != ndim:
            return None
        shift = 128 if x.ty.dtype == "int8" else 0
        if shift:
            x = self.builder_.emit(
                relax.op.astype(relax.op.add(relax.op.astype(x, "int16"), relax.const(128, "int16")), "uint8"))
        return x, zero_point, shift

    def _int8(self, call, a, w):
        """`matmul(astype(x8, i32) [- zp], W)` with W in int8 range -> VNNI kernel."""
        k, n = w.shape
        if k % _VNNI_K or w.min() < -128 or w.max() > 127:
            return call
        found = self._int8_activation(a, call.ty.ndim)
        if found is None:
            return call
        x, zero_point, shift = found
        w8 = w.astype(np.int8)
        comp = ((shift + zero_point) * w8.astype(np.int64).sum(axis=0)).astype(np.int32)
        return self._packed_dense(call, x, "packed_dense_u8s8", lambda shape: packed_dense_int8_func(shape, n),
                                  [pack_weight_int8(w8), comp])

    def _conv2d_int8(self, call, w: np.ndarray, geometry: dict):
        """`conv2d(astype(x8, i32) [- zp], W, out_dtype=int32)`, W in int8 range, groups
        1 -> the packed int8 conv kernel (VNNI)."""
        if w.min() < -128 or w.max() > 127 or int(call.attrs.groups) != 1:
            return call
        found = self._int8_activation(call.args[0], 4)
        if found is None:
            return call
        x, zero_point, shift = found
        shape = _shape_of(x.ty)
        if not all(isinstance(d, tirx.IntImm) for d in shape[1:]):
            return call
        w8 = w.astype(np.int8)
        out_channels = w.shape[0]
        # the kernel pads the codes with the zero point's code: the padding of x - zp is 0
        comp = ((shift + zero_point) * w8.astype(np.int64).reshape(out_channels, -1).sum(axis=1)).astype(np.int32)
        args = dict(geometry, pad_code=shift + zero_point)
        key = (f"packed_conv2d_u8s8_{_shape_name(shape)}_{out_channels}", tuple(str(d) for d in shape),
               out_channels, repr(sorted(args.items())), "u8s8")
        gv = self._kernel(key, lambda: packed_conv2d_int8_func(shape, out_channels, **args))
        self.packed += 1
        return relax.call_tir(gv, [x, relax.const(pack_conv_weight_int8(w8)), relax.const(comp)], call.ty)


@tvm.transform.module_pass(opt_level=0, name="PackConstantWeights")
class PackConstantWeights:
    """Relax pass: `matmul(x, constant W)` -> packed dense `call_tir` (see module doc)."""

    def __init__(self, vnni: bool = True, conv: bool = True) -> None:
        self.vnni = vnni
        self.conv = conv

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        packer = _WeightPacker(mod, self.vnni, self.conv)
        out = _mutate_relax_functions(packer, mod, before=packer.find_chains)
        logger.debug("PackConstantWeights: %d matmuls / convs packed, %d convs writing channel blocks",
                     packer.packed, packer.blocked)
        return relax.transform.DeadCodeElimination()(out) if packer.packed else out


@relax.expr_functor.mutator
class _TranscendentalDecomposer(relax.PyExprMutator):
    """GELU and float32 sigmoid in terms of erf / exp, which FastMathTransform then
    replaces by their polynomial forms."""

    def visit_call_(self, call: relax.Call):  # noqa: N802
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        if call.op.name == "relax.nn.gelu":
            x = call.args[0]
            dtype = x.ty.dtype
            half = relax.const(0.5, dtype)
            erf = relax.op.erf(relax.op.multiply(x, relax.const(float(1 / np.sqrt(2.0)), dtype)))
            return relax.op.multiply(relax.op.multiply(half, x), relax.op.add(relax.const(1.0, dtype), erf))
        if call.op.name == "relax.sigmoid" and call.args[0].ty.dtype == "float32":
            # 1 / (1 + exp(-x)): exp(-x) overflows to fast_exp's clamp (~2.4e38) for
            # x < -88, giving ~4e-39 where the true value is smaller still
            one = relax.const(1.0, "float32")
            return relax.op.divide(one, relax.op.add(one, relax.op.exp(relax.op.negative(call.args[0]))))
        return call


@tvm.transform.module_pass(opt_level=0, name="FastMath")
class FastMath:
    """Relax pass: GELU -> 0.5 x (1 + erf(x / sqrt 2)), float32 sigmoid -> 1 / (1 +
    exp(-x)), then TVM's FastMathTransform (erf, exp, tanh, softmax -> the vectorisable
    polynomial forms of topi.fast_*, float32 error ~1e-7 relative). libm's scalar erf
    made a fused GELU epilogue cost twice its matmul; its scalar exp did the same to the
    SiLU epilogues of EfficientNet-style convs."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return relax.transform.FastMathTransform()(_mutate_relax_functions(_TranscendentalDecomposer(mod), mod))


# --------------------------------------------------------------------------------------
# schedule helpers
# --------------------------------------------------------------------------------------


def _weight_major(sch: s_tir.Schedule, conv) -> bool:
    """Whether a conv's parallel tasks go channel block first (each weight panel read
    by consecutive tasks, the input once per panel) rather than image first: where the
    weights are larger than the padded input and than CONV_WEIGHT_MAJOR_BYTES. Image
    first, two threads on two images each stream all the weights; channel block first,
    each streams half of them."""
    reads = sch.get(conv).reads
    if len(reads) < 2:
        return False
    weights, inputs = _buffer_bytes(reads[1].source), _buffer_bytes(reads[0].source)
    return weights > max(inputs, CONV_WEIGHT_MAJOR_BYTES)


def _buffer_bytes(buf) -> int:
    size = 1
    for d in buf.shape:
        size *= int(d) if isinstance(d, tirx.IntImm) else 1
    return size * tvm.DataType(buf.dtype).bits // 8


def _static_int(expr) -> int | None:
    return int(expr) if isinstance(expr, tirx.IntImm) else None


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    return _static_int(sch.get(loop).extent)


def _iter_kinds(sch: s_tir.Schedule, block) -> str:
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(int(iv.iter_type), "O") for iv in sch.get(block).iter_vars)


def _blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_spatial(sch: s_tir.Schedule, block) -> bool:
    kinds = _iter_kinds(sch, block)
    return set(kinds) <= {"S"}


def _vectorize_inner(sch: s_tir.Schedule, loop, lanes: int = LANES) -> None:
    ext = _extent(sch, loop)
    if ext is None:
        return
    if ext <= lanes:
        if ext > 1 and lanes % ext == 0:
            sch.vectorize(loop)
        return
    if ext % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def _vectorize_any(sch: s_tir.Schedule, loop) -> None:
    """Vectorise `loop` by the widest of 16 / 8 / 4 lanes that divides its extent, else
    whole when it fits one vector (a conv tile's 7 or 14 columns: LLVM pads the odd
    vector, and the fused epilogue, e.g. a SiLU, runs in vector registers, not scalar).
    A loop longer than 16 that 16 does not divide (an attention row of 196 tokens) is
    partitioned into whole 16-lane vectors and a tail of one padded vector (4 lanes
    all along the row ran the row's exp at a quarter of the width)."""
    ext = _extent(sch, loop)
    if ext is None:
        return
    if ext > LANES and ext % LANES:
        try:
            body, tail = sch.loop_partition(loop, [ext - ext % LANES, None])
        except _SCHEDULE_ERRORS:
            pass
        else:
            _vectorize_inner(sch, body, LANES)
            if ext % LANES > 1:
                sch.vectorize(tail)  # under 16 long: one (padded) vector
            return
    for lanes in (LANES, LANES // 2, LANES // 4):
        if ext % lanes == 0:
            _vectorize_inner(sch, loop, lanes)
            return
    if 1 < ext <= LANES:
        sch.vectorize(loop)


def _inline_spatial(sch: s_tir.Schedule, keep: Sequence = ()) -> None:
    """compute_inline every spatial block but the last ones and `keep`; failures stay."""
    keep_names = {sch.get(b).name_hint for b in keep}
    for block in _blocks(sch)[:-1]:
        if sch.get(block).name_hint in keep_names or not _is_spatial(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except _SCHEDULE_ERRORS:
            pass


def _schedule_spatial_block(sch: s_tir.Schedule, block) -> None:
    """Parallel outer loops, vectorised last loop (an injective block on its own): by
    `_vectorize_any`, so that the rows of 56-, 28-, 14- and 7-wide feature maps run in
    8-lane, 4-lane or one padded vector rather than a scalar loop (a squeeze-and-excite
    gate multiplied into a 14 x 14 map was a scalar loop of 14 per task)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        sch.parallel(outer)
        _vectorize_any(sch, loops[-1])
    else:
        ext = _extent(sch, loops[0])
        if ext is not None and ext % LANES == 0 and ext > LANES:
            outer, inner = sch.split(loops[0], [None, LANES])
            sch.parallel(outer)
            sch.vectorize(inner)
        else:
            sch.parallel(loops[0])


class _Rule(s_tir.dlight.ScheduleRule):
    def apply(self, func, target, tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc) or "llvm" != target.kind.name:
            return None
        sch = s_tir.Schedule(func)
        try:
            return sch if self.schedule(sch, target) else None
        except _SCHEDULE_ERRORS as exc:  # a rule that cannot apply falls through to the next
            logger.debug("%s skipped %s: %s", type(self).__name__, func.attrs.get("global_symbol") if func.attrs else "",
                         str(exc).splitlines()[-1] if str(exc) else exc)
            return None

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# matmul-like blocks
# --------------------------------------------------------------------------------------


def _matmul_block(sch: s_tir.Schedule):
    """The one block whose iters are spatial... then one reduction (a matmul-like
    contraction), or None."""
    found = None
    for block in _blocks(sch):
        kinds = _iter_kinds(sch, block)
        if "R" not in kinds:
            continue
        if found is not None or kinds.count("R") != 1 or not kinds.endswith("R") or len(kinds) < 2:
            return None
        stmt = sch.get(block)
        if len(stmt.reads) < 2:
            return None
        found = block
    return found


def _tile_rows_cols(sch: s_tir.Schedule, block, nr: int = NR, mr: int = MR, mb: int = MB):
    """Tile [rows..., i, j, k]: i into blocks of MB and register tiles of MR, j into NR
    columns; parallel over (rows, i block, column tile), then k, MR rows, NR columns.
    Only the last row axis is tiled (no fused row index): the epilogue and write-back
    then map onto the tile by affine indices, which reverse_compute_at handles exactly
    for any extent (a fused, div/mod-mapped row index gave wrong epilogues when the
    tile did not divide the inner extent).
    Returns (the loop the accumulator tile is written back under, the k loop)."""
    loops = sch.get_loops(block)
    *rows, j, k = loops
    j_ext = _extent(sch, j)
    nr = min(nr, j_ext) if j_ext else nr
    jo, ji = sch.split(j, [None, nr])
    if not rows:
        sch.reorder(jo, k, ji)
        sch.parallel(jo)
        _vectorize_inner(sch, ji)
        return jo, k
    *outer, i = rows
    i_ext = _extent(sch, i)
    if i_ext is not None:
        mr = max(1, min(mr, i_ext))
        mb = max(mr, min(mb, -(-i_ext // mr) * mr))
    io, im, ii = sch.split(i, [None, mb // mr, mr])
    sch.reorder(*outer, io, jo, im, k, ii, ji)
    par = sch.fuse(*outer, io, jo)
    sch.parallel(par)
    sch.unroll(ii)
    if nr > LANES and nr % LANES == 0:
        jv_o, jv_i = sch.split(ji, [None, LANES])
        sch.unroll(jv_o)
        sch.vectorize(jv_i)
    else:
        _vectorize_inner(sch, ji)
    return im, k


def _epilogue_at(sch: s_tir.Schedule, block, at) -> list:
    """Accumulate in a local tile and write it back under `at`: through the fused
    epilogue when that is one elementwise block, else as a copy (returned: the blocks
    left to schedule on their own)."""
    copy = sch.cache_write(block, 0, "local")
    consumers = list(sch.get_consumers(copy))
    if len(consumers) == 1 and _is_spatial(sch, consumers[0]):
        epilogue = consumers[0]
        try:
            sch.compute_inline(copy)
            sch.reverse_compute_at(epilogue, at, preserve_unit_loops=True)
            _vectorize_inner(sch, sch.get_loops(epilogue)[-1])
            return []
        except _SCHEDULE_ERRORS:
            pass  # the epilogue stays a loop nest of its own
    sch.reverse_compute_at(copy, at, preserve_unit_loops=True)
    _vectorize_inner(sch, sch.get_loops(copy)[-1])
    return consumers


class MatmulTile(_Rule):
    """Register-tiled, parallel, vectorised matmul-like block + fused epilogue."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        block = _matmul_block(sch)
        if block is None or sch.get(block).name_hint in (DENSE_INT8_BLOCK, DENSE_BLOCK, BMM_BLOCK):
            return False
        if sch.get(block).writes[0].source.dtype not in ("float32", "int32"):
            return False
        _inline_spatial(sch, keep=[block])
        for b in sch.get_producers(block):  # producers that could not be inlined
            _schedule_spatial_block(sch, b)
        at, k = _tile_rows_cols(sch, block)
        for b in _epilogue_at(sch, block, at):
            _schedule_spatial_block(sch, b)
        init = sch.decompose_reduction(block, k)
        _vectorize_inner(sch, sch.get_loops(init)[-1])
        return True


class DenseTile(_Rule):
    """The packed dense kernel (`packed_dense_func`) + its fused epilogue: the output
    (after the epilogue) is tiled into `mr` rows x NR columns, the accumulator
    (`packed_dense`, rows and columns padded to whole tiles) is computed at each tile
    into a local buffer (registers: mr x NR/16 zmm), reduction outermost, every row and
    column of the tile unrolled or vectorised with no bounds check; the epilogue writes
    the tile back, the only place that checks the real row / column count. Parallel over
    (leading rows, row block, column panel); a row block is `dense_tiles_per_block`
    register tiles that reuse one K x NR weight panel."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        if DENSE_BLOCK not in [sch.get(b).name_hint for b in _blocks(sch)]:
            return False
        acc = sch.get_sblock(DENSE_BLOCK)
        if sch.get(acc).writes[0].source.dtype != "float32":
            return False
        return _register_tiled(sch, acc, keep=[acc]) is not None


def _register_tiled(sch: s_tir.Schedule, acc, keep: list):
    """DenseTile's schedule of a padded float accumulator `acc` and the epilogue after
    it (`_accumulator_per_register_tile`), then reduction outermost, rows unrolled and
    columns vectorised. Returns the output block, or None when the epilogue is not one
    spatial block over the accumulator's axes."""
    out = _accumulator_per_register_tile(sch, acc, keep)
    if out is None:
        return None
    *_, t_row, t_col, k = sch.get_loops(acc)
    sch.reorder(k, t_row, t_col)
    sch.unroll(t_row)
    col_o, col_i = sch.split(t_col, [None, LANES])
    sch.unroll(col_o)
    sch.vectorize(col_i)
    init = sch.decompose_reduction(acc, k)
    _vectorize_inner(sch, sch.get_loops(init)[-1])
    return out


def _accumulator_per_register_tile(sch: s_tir.Schedule, acc, keep: list):
    """The dense kernels' common step: the spatial blocks other than `keep` inlined into
    one epilogue, its output tiled by `_tile_rows_of_output`, and the accumulator `acc`
    computed per register tile in a local buffer. Returns the output block, or None when
    the epilogue is not one spatial block over the accumulator's axes."""
    _inline_spatial(sch, keep=keep)
    out = _blocks(sch)[-1]
    if not _is_spatial(sch, out) or len(sch.get_loops(out)) != len(sch.get(acc).writes[0].source.shape):
        return None
    *lead, i, j = sch.get_loops(out)
    im = _tile_rows_of_output(sch, out, lead, i, j, dense_row_tile(_extent(sch, i)), NR)
    sch.compute_at(acc, im, preserve_unit_loops=True)
    sch.set_scope(acc, 0, "local")
    return out


def _tile_rows_of_output(sch: s_tir.Schedule, out, lead: list, i, j, mr: int, nr: int):
    """Tile the output's [lead..., i, j] loops as (lead, row block, column panel) |
    register tile of the block | mr rows x nr columns, parallel outside; the columns
    vectorised where whole 16-lane vectors fit (the rows stay a loop: unrolling a long
    fused epilogue, e.g. dequantize -> GELU -> quantize, multiplies LLVM's work for
    nothing). Returns the loop the register tile is computed under."""
    i_ext = _extent(sch, i)
    tiles = -(-i_ext // mr) if i_ext is not None else None
    per_block = dense_tiles_per_block(tiles, mr) if tiles is not None else max(1, MB // mr)
    io, im, ii = sch.split(i, [None, per_block, mr])
    jo, ji = sch.split(j, [None, nr])
    sch.reorder(*lead, io, jo, im, ii, ji)
    sch.parallel(sch.fuse(*lead, io, jo))
    _vectorize_inner(sch, ji)
    return im


class BatchMatmulTile(_Rule):
    """The padded batch matmul (`padded_batch_matmul_func`) + its fused epilogue
    (attention's scale, mask, softmax input): tiled as DenseTile over the output's last
    two axes, parallel over (batch dims, row block, column panel); each task copies its
    K x NR panel of the right operand (columns padded) before its row tiles read it."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        names = [sch.get(b).name_hint for b in _blocks(sch)]
        if BMM_BLOCK not in names or BMM_B_PAD_BLOCK not in names:
            return False
        acc, b_pad = sch.get_sblock(BMM_BLOCK), sch.get_sblock(BMM_B_PAD_BLOCK)
        out = _register_tiled(sch, acc, keep=[acc, b_pad])
        if out is None:
            return False
        task = sch.get_loops(out)[0]  # the fused parallel loop
        sch.compute_at(b_pad, task, preserve_unit_loops=True)
        _vectorize_inner(sch, sch.get_loops(b_pad)[-1])
        return True


class MatmulVNNI(_Rule):
    """The int8 packed dense kernel (uint8 x int8 -> int32, exact; weights in the
    [N/16, K/4, 64] vpdpbusd layout): tiled like DenseTile (`mr` rows x 32 columns of
    int32 accumulators over the padded rows and columns), and on a VNNI target each 16-column x 4-deep step is one
    AVX-512 VNNI `vpdpbusd` (`llvm.x86.avx512.vpdpbusd.512`: 16 int32 lanes += the dot
    products of 4 uint8 activations, broadcast, with 4 int8 weights each).

    TVM 0.27's `sch.tensorize` with tensor_intrin.x86's dot_16x4_vnni segfaults on this
    kernel (inside Tensorize, uncatchable), so the 16 x 4 step is blockized and its body
    replaced in the TVMScript text of the scheduled function (`_emit_vnni`): the block
    is one this rule generated, so its printed form is known. Without VNNI the same
    tiling runs with 16 int32 lanes vectorised and the k group unrolled."""

    def __init__(self, vnni: bool | None = None) -> None:
        self.vnni = vnni  # None: whatever the target has

    def apply(self, func, target, tunable):  # noqa: D102
        sch = super().apply(func, target, tunable)
        if sch is None or not self._use_vnni(target):
            return sch
        try:
            return s_tir.Schedule(_emit_vnni(sch.mod["main"]))
        except Exception as exc:  # noqa: BLE001  (the text did not look as expected: keep the vector loop)
            logger.warning("VNNI rewrite failed, int8 kernel stays a vector loop: %s", exc)
            return type(self)(vnni=False).apply(func, target, tunable)

    def _use_vnni(self, target: Target) -> bool:
        return _has_vnni(target) if self.vnni is None else self.vnni

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        if DENSE_INT8_BLOCK not in [sch.get(b).name_hint for b in _blocks(sch)]:
            return False
        acc = sch.get_sblock(DENSE_INT8_BLOCK)
        if _accumulator_per_register_tile(sch, acc, keep=[acc]) is None:
            return False
        self._tile_vnni(sch, acc, target)
        return True

    def _tile_vnni(self, sch: s_tir.Schedule, acc, target: Target) -> None:
        """The register tile's k loop in groups of 4 under rows and 16-column vectors;
        each 16 x 4 step blockized for `_emit_vnni` (on VNNI), else vectorised."""
        *_, t_row, t_col, k = sch.get_loops(acc)
        jb, jv = sch.split(t_col, [None, _VNNI_N])
        ko, kv = sch.split(k, [None, _VNNI_K])
        sch.reorder(ko, t_row, jb, kv, jv)
        init = sch.decompose_reduction(acc, ko)
        _vectorize_inner(sch, sch.get_loops(init)[-1])
        sch.unroll(t_row)
        sch.unroll(jb)
        if self._use_vnni(target):
            sch.blockize(kv)  # the 4 x 16 step: one block, rewritten by _emit_vnni
        else:
            sch.unroll(kv)
            sch.vectorize(jv)


class BatchMatmulVNNI(MatmulVNNI):
    """The int8 batch matmul (`padded_batch_matmul_int8_func`) + its fused epilogue:
    tiled as MatmulVNNI over the output's last two axes, parallel over (batch dims, row
    block, column panel); each task packs its K x 32 panel of the right operand into the
    vpdpbusd layout and sums its columns (the zero point's compensation) before its row
    tiles read them."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        names = [sch.get(b).name_hint for b in _blocks(sch)]
        if BMM_INT8_BLOCK not in names or BMM_INT8_PACK_BLOCK not in names:
            return False
        acc, pack = sch.get_sblock(BMM_INT8_BLOCK), sch.get_sblock(BMM_INT8_PACK_BLOCK)
        comp, a_pad = (sch.get_sblock(name) if name in names else None
                       for name in (BMM_INT8_COMP_BLOCK, BMM_INT8_A_PAD_BLOCK))
        out = _accumulator_per_register_tile(sch, acc, keep=[b for b in (acc, pack, comp, a_pad) if b is not None])
        if out is None:
            return False
        task = sch.get_loops(out)[0]  # the fused parallel loop
        for block in (pack, comp, a_pad):
            if block is not None:
                sch.compute_at(block, task, preserve_unit_loops=True)
        _vectorize_inner(sch, sch.get_loops(pack)[-1])
        self._tile_vnni(sch, acc, target)
        return True


# --------------------------------------------------------------------------------------
# packed conv2d
# --------------------------------------------------------------------------------------


def _conv_kernel_blocks(sch: s_tir.Schedule, conv_name: str, pad_name: str, pad_required: bool = True):
    """(conv, pad, out) of a packed conv kernel's function: the accumulator block
    `conv_name`, its padded-input block `pad_name` (None when absent and not required),
    and the one NCHW block its fused epilogue became once the other spatial blocks are
    inlined; None when the function is not that kernel."""
    names = [sch.get(b).name_hint for b in _blocks(sch)]
    if conv_name not in names or (pad_required and pad_name not in names):
        return None
    conv = sch.get_sblock(conv_name)
    pad = sch.get_sblock(pad_name) if pad_name in names else None
    keep = [b for b in (conv, pad, _broadcast_boundary(sch, conv)) if b is not None]
    _inline_spatial(sch, keep=keep)
    consumers = list(sch.get_consumers(conv))
    if len(consumers) != 1 or len(sch.get_loops(consumers[0])) not in (4, 5):
        return None
    return conv, pad, consumers[0]


def _write_shape(sch: s_tir.Schedule, block) -> tuple:
    return tuple(str(d) for d in sch.get(block).writes[0].source.shape)


def _broadcast_boundary(sch: s_tir.Schedule, conv):
    """The last block of the conv-shaped chain after `conv` when the function ends in a
    broadcast to a larger tensor (a squeeze-excitation gate, a 1 x 1 conv + sigmoid,
    times its feature map); None when it does not. Kept as the conv's epilogue, the
    conv and its activation run once per output instead of once per pixel of the map
    (inlined into the broadcast, the tile loops were the map's)."""
    consumers = list(sch.get_consumers(conv))
    if len(consumers) != 1:
        return None
    first = sch.get(consumers[0]).name_hint
    blocks = _blocks(sch)
    chain = blocks[next(i for i, b in enumerate(blocks) if sch.get(b).name_hint == first):]
    shape = _write_shape(sch, chain[0])
    if _write_shape(sch, blocks[-1]) == shape:
        return None
    return list(itertools.takewhile(lambda b: _write_shape(sch, b) == shape, chain))[-1]


def _tile_conv_accumulator(sch: s_tir.Schedule, conv, at, reduction_loops: int) -> None:
    """Compute the accumulator `conv` under the loop `at` as a register tile: the
    reduction (`reduction_loops` loops: input channels / kernel rows / columns) outside,
    the tile's columns unrolled and its channels in 16-lane vectors inside.

    The tile keeps the default scope, as do the conv epilogue's tile, the blocked mean's
    sums and the row kernels' lane partials: TVM 0.27 allocates a "local" buffer computed
    under a parallel loop as a workspace (an allocate and a free call) on every
    iteration, a default-scope one, compacted to the iteration's region, on the stack.
    (The dense and int8 tiles keep "local": MiniLM's int8 build measured slower without.)"""
    sch.compute_at(conv, at, preserve_unit_loops=True)
    loops = sch.get_loops(conv)
    t_col, t_chan = loops[-reduction_loops - 2:-reduction_loops]
    reduction = loops[-reduction_loops:]
    sch.reorder(*reduction, t_col, t_chan)
    sch.unroll(t_col)
    if _extent(sch, t_chan) > LANES:
        chan_o, chan_i = sch.split(t_chan, [None, LANES])
        sch.unroll(chan_o)
        sch.vectorize(chan_i)
    else:
        sch.vectorize(t_chan)
    init = sch.decompose_reduction(conv, reduction[0])
    _vectorize_inner(sch, sch.get_loops(init)[-1])


def _channels_inner_epilogue(sch: s_tir.Schedule, out, block_channels: int):
    """Split the fused epilogue `out` (an NCHW block) into a computation into a local
    buffer laid out like the accumulator tile (16-channel blocks innermost) and a copy
    of it into the NCHW output (returned). The epilogue's arithmetic (a SiLU's exp and
    divide) then runs on contiguous 16-channel vectors read straight from the tile,
    and only the copy transposes (the buffer in the default scope: `_tile_conv_accumulator`)."""
    copy = sch.cache_write(out, 0, "global")
    sch.transform_layout(out, ("write", 0), lambda n, c, y, x: (n, c // block_channels, y, x, c % block_channels))
    return copy


def _tile_with_epilogue(sch: s_tir.Schedule, conv, out, writer, zo, zi, reduction_loops: int, blocked: bool) -> None:
    """The accumulator tiled under `zo` (`_tile_conv_accumulator`), the epilogue `out`
    computed at the tile when a copy (`writer`) writes it out (`_channels_inner_epilogue`),
    and an NCHW write's columns `zi` vectorised."""
    if writer is not out:
        sch.compute_at(out, zo, preserve_unit_loops=True)
        _vectorize_channels_inner(sch, out)
    _tile_conv_accumulator(sch, conv, zo, reduction_loops)
    if not blocked:
        _vectorize_any(sch, zi)


def _vectorize_channels_inner(sch: s_tir.Schedule, out) -> None:
    """Order a tile's epilogue (..., channels, row, columns) as columns then channels,
    the channels in 16-lane vectors."""
    *_, chan, _row, col = sch.get_loops(out)
    sch.reorder(col, chan)
    if _extent(sch, chan) > LANES:
        chan = sch.split(chan, [None, LANES])[1]
    sch.vectorize(chan)


class ConvTile(_Rule):
    """The packed conv2d kernel (`packed_conv2d_func`) + its fused epilogue (bias,
    activation, residual add): the output is tiled into (batch, channel block of `ob`,
    row, `owt` columns) tiles, parallel over batch x channel blocks x rows (channel
    blocks x batch x rows where `_weight_major`); per tile the `owt` x `ob`
    accumulators live in a local buffer (registers: `owt` x ob/16 zmm), the reduction
    over input channels x kernel rows x kernel columns runs outside them, each step one
    broadcast input value x one 16-lane weight vector per accumulator. The epilogue
    runs on 16-channel vectors of the tile: into a channel-blocked local tile that is
    then copied out transposed for an NCHW output (`_channels_inner_epilogue`), straight
    into the output for a channel-blocked one (`out_blocked`). The padded input is one
    parallel loop nest of its own."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        found = _conv_kernel_blocks(sch, CONV_BLOCK, CONV_PAD_BLOCK, pad_required=False)
        if found is None:
            return False
        conv, pad, out = found
        ob = int(sch.get(conv).writes[0].source.shape[4])
        blocked = len(sch.get_loops(out)) == 5
        width, channels = _extent(sch, sch.get_loops(out)[3]), _extent(sch, sch.get_loops(out)[1])
        if width is None or channels is None:
            return False
        owt = conv_owt(ob, width)
        writer = out
        if blocked:
            n, cb, y, z, c = sch.get_loops(out)
            oo, oi = sch.split(cb, [None, ob // LANES])
        else:
            if channels % ob == 0:
                writer = _channels_inner_epilogue(sch, out, ob)
            n, o, y, z = sch.get_loops(writer)
            oo, oi = sch.split(o, [None, ob])
        zo, zi = sch.split(z, [None, owt])
        if _weight_major(sch, conv):
            sch.reorder(oo, n, y, zo, oi, zi)
            sch.parallel(sch.fuse(oo, n, y))
        else:
            sch.reorder(n, oo, y, zo, oi, zi)
            sch.parallel(sch.fuse(n, oo, y))
        if blocked:
            sch.reorder(zi, oi, c)
            sch.vectorize(c)
        _tile_with_epilogue(sch, conv, out, writer, zo, zi, 3, blocked)
        if pad is not None:
            _schedule_spatial_block(sch, pad)
        for b in sch.get_consumers(writer):
            _schedule_spatial_block(sch, b)
        return True


class DepthwiseTile(_Rule):
    """The packed depthwise conv2d kernel (`packed_depthwise_conv2d_func`) + its fused
    epilogue: the NCHW output is tiled into (batch, 16-channel block, row, `owt`
    columns) tiles, parallel over batch x channel blocks (a plane each); per tile the
    `owt` 16-channel accumulators live in registers, each tap one 16-channel load of the
    blocked input per column times the tap's weight vector; the epilogue runs on the
    tile's 16-channel vectors and is copied out transposed (`_channels_inner_epilogue`).
    Each task first makes its plane of the blocked, padded input (16 channels
    vectorised), which then stays in L2 while the plane's rows read it (made by a loop
    nest of its own, the blocked copy went through memory and back)."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        found = _conv_kernel_blocks(sch, DW_BLOCK, DW_PAD_BLOCK)
        if found is None:
            return False
        conv, pad, out = found
        blocked = len(sch.get_loops(out)) == 5
        width, channels = _extent(sch, sch.get_loops(out)[3]), _extent(sch, sch.get_loops(out)[1])
        if width is None or channels is None:
            return False
        owt = depthwise_owt(width)
        if blocked:  # [N, ceil(C/16), H, W, 16]: the tile's vectors go straight out
            writer = out
            n, oo, y, z, oi = sch.get_loops(out)
            zo, zi = sch.split(z, [None, owt])
            sch.reorder(n, oo, y, zo, zi, oi)
            sch.vectorize(oi)
        else:
            writer = _channels_inner_epilogue(sch, out, LANES) if channels % LANES == 0 else out
            n, o, y, z = sch.get_loops(writer)
            oo, oi = sch.split(o, [None, LANES])
            zo, zi = sch.split(z, [None, owt])
            sch.reorder(n, oo, y, zo, oi, zi)
        plane = sch.fuse(n, oo)
        sch.parallel(plane)
        _tile_with_epilogue(sch, conv, out, writer, zo, zi, 2, blocked)
        # the plane's blocked input is made by the task that reads it: it stays in L2
        sch.compute_at(pad, plane, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(pad)[-1])
        for b in sch.get_consumers(writer):
            _schedule_spatial_block(sch, b)
        return True


class ConvVNNI(MatmulVNNI):
    """The int8 packed conv kernel (`packed_conv2d_int8_func`) + its fused epilogue
    (dequantize, bias, activation, the next quantize): tiled like ConvTile (`owt`
    columns x `ob` output channels of int32 accumulators in registers, parallel over
    batch x channel blocks x rows), reduction over (4-channel block, kernel row, kernel
    column) outside the tile, and each 16 channels x 4 input channels step one
    `vpdpbusd` on a VNNI target (the same rewrite as MatmulVNNI), else a 16-lane vector
    loop. The blocked, padded input is one parallel loop nest of its own."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        found = _conv_kernel_blocks(sch, CONV_INT8_BLOCK, CONV_INT8_PAD_BLOCK)
        if found is None:
            return False
        conv, pad, out = found
        n, o, y, z = sch.get_loops(out)
        width, channels = _extent(sch, z), _extent(sch, o)
        if width is None or channels is None:
            return False
        ob, owt = conv_tile(channels, width)
        oo, oi = sch.split(o, [None, ob])
        zo, zi = sch.split(z, [None, owt])
        sch.reorder(n, oo, y, zo, oi, zi)
        sch.parallel(sch.fuse(n, oo, y))
        sch.compute_at(conv, zo, preserve_unit_loops=True)
        sch.set_scope(conv, 0, "local")
        *_, t_tile, _, t_col, lane, rb, ry, rx, ri = sch.get_loops(conv)
        sch.reorder(rb, ry, rx, t_col, t_tile, ri, lane)
        if not self._use_vnni(target):  # (while the block still has its init: vectorize checks it)
            sch.unroll(ri)
            sch.vectorize(lane)
        init = sch.decompose_reduction(conv, rb)
        _vectorize_inner(sch, sch.get_loops(init)[-1])
        sch.unroll(t_col)
        sch.unroll(t_tile)
        if self._use_vnni(target):
            sch.blockize(ri)  # the 4 x 16 step: one block, rewritten by _emit_vnni
        _vectorize_any(sch, zi)
        *pad_outer, _ = sch.get_loops(pad)
        sch.parallel(sch.fuse(*pad_outer[:3]))
        for b in sch.get_consumers(out):
            _schedule_spatial_block(sch, b)
        return True


VNNI_INTRINSIC = "llvm.x86.avx512.vpdpbusd.512"
_VNNI_OUTER = re.compile(r'^(?P<ind> *)with T\.sblock\("(?:' + DENSE_INT8_BLOCK + "|" + CONV_INT8_BLOCK + "|" + BMM_INT8_BLOCK
                         + r')_update_o"\):\n', re.M)
_VNNI_INNER_ITERS = re.compile(r'(?P<a>\w+), (?P<b>\w+) = T\.axis\.remap\("SR", \[\w+, \w+\]\)')
_VNNI_STORE = re.compile(
    r'^ *(?P<acc>\w+)\[(?P<ai>[^\]]+)\] = (?P=acc)\[(?P=ai)\] \+ T\.Cast\("int32", (?P<x>\w+)\[(?P<xi>[^\]]+)\]\)'
    r' \* T\.Cast\("int32", (?P<w>\w+)\[(?P<wi>[^\]]+)\]\)$', re.M)


def _split_last_index(index: str) -> tuple[str, str]:
    """'a, b + c' -> ('a, ', 'b + c'): the last subscript of a printed index list (the
    earlier ones hold no top-level comma-free brackets that matter here)."""
    depth, cut = 0, -1
    for pos, ch in enumerate(index):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            cut = pos
    return (index[:cut + 2], index[cut + 2:]) if cut >= 0 else ("", index)


def _emit_vnni(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Replace the body of every blockized 16 x 4 int8 step (MatmulVNNI) by one
    `vpdpbusd`: acc[.., j:j+16] = vpdpbusd(acc, broadcast(x[.., k:k+4] as i32),
    w[.., 0:64] as i32x16). Parses the TVMScript text back."""
    from tvm.target import codegen

    # LLVM 21 retyped the VNNI intrinsics' multiplicands from <16 x i32> to <64 x i8>
    byte_operands = codegen.llvm_version_major() >= 21
    text = func.script()
    out, pos, count = [], 0, 0
    for outer in _VNNI_OUTER.finditer(text):
        indent = outer.group("ind") + "    "
        # the blockized block's own lines, then its inner loop nest
        body_start = outer.end()
        taken = []
        for line in text[body_start:].split("\n"):
            if line.strip() and not line.startswith(indent):
                break
            taken.append(line)
        end = body_start + len("\n".join(taken))
        block_text = text[body_start:end]
        loop_at = block_text.index(indent + "for ")
        iters = _VNNI_INNER_ITERS.search(block_text, loop_at)
        store = _VNNI_STORE.search(block_text, loop_at)
        if iters is None or store is None:
            raise ValueError("unexpected int8 update block")

        def at_zero(index: str) -> str:
            for name in (iters.group("a"), iters.group("b")):
                index = re.sub(rf"\b{name}\b", "T.int64(0)", index)
            return index

        acc_head, acc_last = _split_last_index(at_zero(store.group("ai")))
        x_head, x_last = _split_last_index(at_zero(store.group("xi")))
        w_head, w_last = _split_last_index(at_zero(store.group("wi")))
        acc = f'{store.group("acc")}[{acc_head}T.Ramp({acc_last}, T.int64(1), 16)]'
        x = f'{store.group("x")}[{x_head}T.Ramp({x_last}, T.int64(1), 4)]'
        w = f'{store.group("w")}[{w_head}T.Ramp({w_last}, T.int64(1), 64)]'
        x4 = f'T.Broadcast(T.reinterpret("int32", {x}), 16)'
        if byte_operands:
            operands = f'T.reinterpret("uint8x64", {x4}), {w}'
        else:
            operands = f'{x4}, T.reinterpret("int32x16", {w})'
        call = f'{acc} = T.call_llvm_pure_intrin("int32x16", "{VNNI_INTRINSIC}", {acc}, {operands})'
        out.append(text[pos:body_start])
        out.append(block_text[:loop_at] + indent + call + "\n")
        pos = end + 1
        count += 1
    if not count:
        raise ValueError("no blockized int8 step found")
    out.append(text[pos:])
    new = tvm.script.from_source("".join(out))
    return new["main"] if isinstance(new, tvm.IRModule) else new


def _has_vnni(target: Target) -> bool:
    mcpu = str(target.attrs.get("mcpu", ""))
    attrs = " ".join(str(a) for a in target.attrs.get("mattr", []))
    return "avx512vnni" in attrs or mcpu in _VNNI_CPUS


_VNNI_CPUS = {
    "cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "sapphirerapids",
    "emeraldrapids", "graniterapids", "graniterapids-d", "rocketlake", "alderlake", "znver4", "znver5",
}


# --------------------------------------------------------------------------------------
# reductions along rows (softmax, LayerNorm) and injective kernels
# --------------------------------------------------------------------------------------


def _lane_partial_reduction(sch: s_tir.Schedule, block):
    """Split a reduction block (still in its own loop nest) whose trailing reduction axes
    are the trailing axes of a buffer it reads (one contiguous run of memory per output
    value) into lane-wise partial results (`rfactor`: lane l reduces the elements l,
    l + lanes, ...) and a block that reduces the lanes into the output; returns the
    partial block, or None where the run does not divide into 16, 8 or 4 lanes twice.
    A plain loop reduces one scalar at a time, each step waiting for the previous add;
    this changes only the order of a float sum, as any vectorised reduction does."""
    if _is_spatial(sch, block):
        return None
    block_stmt = sch.get(block)
    kinds = _iter_kinds(sch, block)
    n_red = len(kinds) - len(kinds.rstrip("R"))
    if n_red == 0 or "R" in kinds[:-n_red]:
        return None
    red_vars = [iv.var for iv in block_stmt.iter_vars[-n_red:]]
    contiguous = any(
        len(region.region) >= n_red
        and all(r.min.same_as(v) and _is_one(r.extent)
                for r, v in zip(region.region[-n_red:], red_vars))
        for region in block_stmt.reads)
    loops = sch.get_loops(block)[-n_red:]
    extents = [_extent(sch, loop) for loop in loops]
    if not contiguous or extents != [_static_int(iv.dom.extent) for iv in block_stmt.iter_vars[-n_red:]]:
        return None
    if any(e is None for e in extents):
        return None
    total = math.prod(extents)
    lanes = next((n for n in (LANES, LANES // 2, LANES // 4) if total % n == 0 and total >= 2 * n), None)
    if lanes is None:
        return None
    fused = sch.fuse(*loops) if n_red > 1 else loops[0]
    _, lane = sch.split(fused, [None, lanes])
    out_ndim = len(block_stmt.writes[0].region)
    try:
        partial = sch.rfactor(lane, factor_axis=out_ndim)  # lanes contiguous: one vector
    except _SCHEDULE_ERRORS:  # a reducer rfactor does not know: the split loop stays serial
        return None
    return partial  # in the default scope: see _tile_conv_accumulator


def _is_one(expr) -> bool:
    return _static_int(expr) == 1


def _vectorize_lanes(sch: s_tir.Schedule, partial, rows) -> None:
    """The partial block of `_lane_partial_reduction`, after compute_at under `rows`:
    compute_at lays its loops out in its iter vars' order (lane, the unit spatial ones,
    the reduction); the lane loop goes innermost, vectorised, the lanes' initial values
    set before the reduction loop."""
    loops = sch.get_loops(partial)
    row_loop = sch.get(rows)
    inner = loops[[i for i, loop in enumerate(loops) if sch.get(loop).same_as(row_loop)][0] + 1:]
    lanes = int(sch.get(partial).iter_vars[0].dom.extent)
    lane, outer = inner[0], inner[-1]
    if _extent(sch, lane) != lanes or len(inner) < 2:
        raise ValueError("unexpected loop nest of a lane-partial reduction")
    sch.reorder(outer, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(partial, outer)


def _vectorize_lane_stage(sch: s_tir.Schedule, block) -> None:
    """A row kernel's per-lane partial reduction (`ROW_LANES_STAGE...`, `_row.lane_reduce`:
    [*rows, lanes] = reduce over chunk c of value(row, c * lanes + lane)), after
    compute_at under `rows`: the chunk loop outside, the lanes one vector inside (each
    step one contiguous load of the row), their initial values set first. Left as
    compute_at lays it out (lanes outer, chunks inner), each lane was a scalar chain
    reading the row at a stride of `lanes`."""
    *_, lane, chunk = sch.get_loops(block)
    sch.reorder(chunk, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(block, chunk)
    sch.vectorize(sch.get_loops(init)[-1])
    _split_last_chunk(sch, chunk)


def _split_last_chunk(sch: s_tir.Schedule, chunk) -> None:
    """A row kernel's loop over whole vectors of a row padded to them, the last vector
    apart: its reads are clamped to the row (`min(j, n - 1)`), which before it the
    simplifier drops, so every other vector is one contiguous load instead of a gather."""
    ext = _extent(sch, chunk)
    if ext is not None and ext > 1:
        try:
            sch.loop_partition(chunk, [ext - 1, None])
        except _SCHEDULE_ERRORS:
            pass


class RowReduction(_Rule):
    """Blocks that all start with the same spatial row axes, reductions over the rest,
    an elementwise last block: parallel rows, everything computed at the row, spatial
    row loops vectorised by the widest of 16 / 8 / 4 lanes that divides them, a
    reduction over the row's trailing contiguous axes in vector lanes
    (`_lane_partial_reduction`). Spatial blocks are inlined into their readers except
    those named `ROW_STAGE...` (a row kernel's per-row values: computed once per row);
    a row kernel's lane partials (`ROW_LANES_STAGE...`) run one vector per step, and its
    loops over a row padded to whole vectors keep the last vector apart
    (`_split_last_chunk`). A lone reduction block is taken where it runs in lanes."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        _inline_spatial(sch, keep=[b for b in _blocks(sch) if sch.get(b).name_hint.startswith(ROW_STAGE)])
        blocks = _blocks(sch)
        if len(blocks) == 1 and not _is_spatial(sch, blocks[0]):
            return self._lone_reduction(sch, blocks[0])
        if len(blocks) < 2 or not _is_spatial(sch, blocks[-1]):
            return False
        kinds = [_iter_kinds(sch, b) for b in blocks]
        if not any("R" in k for k in kinds):
            return False
        lead = min(len(k) - len(k.lstrip("S")) for k in kinds)
        out_ndim = len(kinds[-1])
        if lead == 0 or lead >= out_ndim:
            lead = out_ndim - 1
        if lead == 0:
            return False
        last = blocks[-1]
        loops = sch.get_loops(last)
        rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
        sch.parallel(rows)
        partials = [p for p in (_lane_partial_reduction(sch, b) for b in blocks[:-1]) if p is not None]
        for b in reversed(_blocks(sch)[:-1]):
            sch.compute_at(b, rows, preserve_unit_loops=True)
        for partial in partials:
            _vectorize_lanes(sch, partial, rows)
        for b in _blocks(sch)[:-1]:
            if sch.get(b).name_hint.startswith(ROW_LANES_STAGE):
                _vectorize_lane_stage(sch, b)
        for b in _blocks(sch):
            inner = sch.get_loops(b)[-1]
            if not _is_spatial(sch, b):
                continue
            ext = _extent(sch, inner)
            if sch.get(b).name_hint.startswith(ROW_STAGE) and ext is not None and ext > LANES and ext % LANES == 0:
                # a row padded to whole vectors (a row kernel's exponentials)
                chunk, lanes = sch.split(inner, [None, LANES])
                sch.vectorize(lanes)
                _split_last_chunk(sch, chunk)
            else:
                _vectorize_any(sch, inner)
        return True

    @staticmethod
    def _lone_reduction(sch: s_tir.Schedule, block) -> bool:
        """A reduction with no elementwise block after it (a bare ReduceSum / ReduceMax),
        taken only where it runs in lanes: parallel over its output values, each one's
        lane partials then their reduction."""
        partial = _lane_partial_reduction(sch, block)
        if partial is None:
            return False
        loops = sch.get_loops(block)[:-1]  # the write-back's output loops, then its lanes
        if not loops:
            return False
        rows = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        sch.parallel(rows)
        sch.compute_at(partial, rows, preserve_unit_loops=True)
        _vectorize_lanes(sch, partial, rows)
        return True


class HadamardRows(_Rule):
    """The Hadamard row kernel (backends/tvm/lowering/rotation.py): stages
    `HADAMARD_STAGE<t>`, each the product of the row, viewed as [A, f_t, B], with one
    f_t x f_t factor along its middle axis, then the fused epilogue (e.g. the next
    linear's activation quantizer). Parallel over rows; every stage computed at the row
    (the row stays in L1); a stage with B >= 16 runs (a, j, B/16, k, 16 lanes): the 16
    outputs one vector accumulated over k in a register, each step one contiguous load
    of the previous stage times a broadcast factor entry; the last stage (B = 1) runs
    (a, k, f lanes); the epilogue is vectorised along the row."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        names = [sch.get(b).name_hint for b in _blocks(sch)]
        stages = sorted((n for n in names if n.startswith(HADAMARD_STAGE)), key=lambda n: int(n[len(HADAMARD_STAGE):]))
        if not stages:
            return False
        blocks = [sch.get_sblock(n) for n in stages]
        _inline_spatial(sch, keep=blocks)
        last = _blocks(sch)[-1]
        epilogue = sch.get(last).name_hint not in stages
        if epilogue and not _is_spatial(sch, last):
            return False
        loops = sch.get_loops(last)
        lead = loops[:-1] if epilogue else loops[:-2]
        if not lead:
            return False
        rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        sch.parallel(rows)
        factors = [int(sch.get(b).iter_vars[-1].dom.extent) for b in blocks]
        for block in reversed(blocks[:-1] if not epilogue else blocks):
            sch.compute_at(block, rows, preserve_unit_loops=True)
        for block in blocks[:-1] if not epilogue else blocks:
            sch.set_scope(block, 0, "local")  # a row on the task's stack, not a workspace per row
        for t, block in enumerate(blocks):
            after = int(np.prod(factors[t + 1:], dtype=np.int64))
            *_, i, k = sch.get_loops(block)
            if after >= LANES and after % LANES == 0:
                a, j, c_o, c_i = sch.split(i, [None, factors[t], after // LANES, LANES])
                sch.reorder(a, j, c_o, k, c_i)
                sch.vectorize(c_i)
            elif after == 1:
                a, j = sch.split(i, [None, factors[t]])
                sch.reorder(a, k, j)
                _vectorize_any(sch, j)
            else:
                a, j, c = sch.split(i, [None, factors[t], after])
                sch.reorder(a, j, k, c)
                _vectorize_any(sch, c)
            sch.decompose_reduction(block, k)
        if epilogue:
            _vectorize_any(sch, sch.get_loops(last)[-1])
        return True


class BlockedMapReduction(_Rule):
    """A reduction over the map of an NCHW16c tensor, [N, C/16, H, W, 16] ->
    [N, C/16, 1, 1, 16] (the spatial mean of a blocked chain, `blocked_chains`), and the
    elementwise blocks after it: parallel over (batch, channel block), each block's 16
    channels one vector accumulated over the map's pixels in memory order (TVM's own
    loop order walks the whole map once per channel, 16 strided passes)."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        reductions = [b for b in _blocks(sch) if "R" in _iter_kinds(sch, b)]
        if len(reductions) != 1 or _iter_kinds(sch, reductions[0]) != "SSSSSRR":
            return False
        red = reductions[0]
        n, cb, one_h, one_w, lane, kh, kw = sch.get_loops(red)
        if _extent(sch, lane) != LANES or (_extent(sch, one_h), _extent(sch, one_w)) != (1, 1):
            return False
        _inline_spatial(sch, keep=[red])
        sch.reorder(n, cb, one_h, one_w, kh, kw, lane)
        outer = sch.fuse(n, cb)
        sch.parallel(outer)
        sch.vectorize(lane)
        sch.decompose_reduction(red, kh)
        for block in sch.get_consumers(red):  # the sums on the stack: see _tile_conv_accumulator
            sch.reverse_compute_at(block, outer, preserve_unit_loops=True)
            sch.vectorize(sch.get_loops(block)[-1])
        return True


class WindowReduction(_Rule):
    """A `WINDOW_BLOCK...` pool: one block, output axes then the window's tap axes.
    Parallel over batch x channels (every plane a task, whatever the batch), rows,
    columns and taps in order below. Tasks per output row, or taps unrolled, or taps
    outside the columns, measured slower on ResNet's stem pool."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        blocks = _blocks(sch)
        if len(blocks) != 1 or not sch.get(blocks[0]).name_hint.startswith(WINDOW_BLOCK):
            return False
        kinds = _iter_kinds(sch, blocks[0])
        spatial = len(kinds) - len(kinds.lstrip("S"))
        loops = sch.get_loops(blocks[0])
        if spatial < 2 or len(loops) != len(kinds) or set(kinds[spatial:]) != {"R"}:
            return False
        sch.parallel(sch.fuse(*loops[:2]))
        return True


class Injective(_Rule):
    """Only spatial blocks: inline producers, parallel + vectorise the last block."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        if not all(_is_spatial(sch, b) for b in _blocks(sch)):
            return False
        _inline_spatial(sch)
        for b in _blocks(sch):
            _schedule_spatial_block(sch, b)
        return True


class ParallelOuter(_Rule):
    """Last resort: the outermost loop of every block that binds only spatial iters is
    made parallel."""

    def schedule(self, sch: s_tir.Schedule, target: Target) -> bool:
        changed = False
        for b in _blocks(sch):
            loops = sch.get_loops(b)
            if not loops:
                continue
            try:
                sch.parallel(loops[0])
                changed = True
            except _SCHEDULE_ERRORS:
                continue
        return changed


def default_rules() -> list:
    from tvm.s_tir.dlight import cpu as dl_cpu

    return [MatmulVNNI(), BatchMatmulVNNI(), ConvVNNI(), ConvTile(), DepthwiseTile(), HadamardRows(), DenseTile(), BatchMatmulTile(), MatmulTile(), BlockedMapReduction(), RowReduction(), WindowReduction(), Injective(), dl_cpu.GEMV(), dl_cpu.Reduction(),
            ParallelOuter()]


@tvm.transform.module_pass(opt_level=0, name="ScheduleCPU")
class _ScheduleCPU:
    def __init__(self, target: Target, rules: Sequence | None = None) -> None:
        self.target = target
        self.rules = list(rules) if rules is not None else default_rules()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and func.attrs.get("tirx.is_scheduled")):
                continue
            for rule in self.rules:
                try:
                    sch = rule.apply(func, self.target, False)
                except Exception as exc:  # noqa: BLE001  (tvm's own rules may raise)
                    logger.debug("%s failed on %s: %s", type(rule).__name__, gv.name_hint, exc)
                    sch = None
                if sch is not None:
                    updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    logger.debug("%s: %s", gv.name_hint, type(rule).__name__)
                    break
        for gv, func in updates.items():
            mod[gv] = func
        return mod


def schedule_cpu_module(target: Target, rules: Sequence | None = None) -> tvm.transform.Pass:
    """Module pass: apply the CPU schedule rules (default_rules()) to every PrimFunc."""
    return _ScheduleCPU(target, rules)

