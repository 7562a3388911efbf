"""The conversion of the intonly pass: a float (or Q/DQ-quantized) graph -> the same
function computed on integers, node by node, in the graph's order.

`IntegerConverter.run()` gives every float value a representation by integers
(`IntRep`: codes, scale, bias; passes/intonly_forms.py) and appends the integer nodes
that compute the codes; the float nodes are left for dead-code elimination once the
graph outputs read the new codes through one DequantizeLinear each. A value's
representation is made the first time it is needed, in one of two ways:
- `primary(v)`: what its producer naturally gives (an int32 accumulator for a matmul,
  int16 for a residual add, ...);
- `codes(v, form)`: per-tensor codes of a dtype and scale that a reader asks for
  (uint8 at the scale calibration chose for an integer matmul's input, int16 for a
  LayerNorm, ...), made by one dyadic `Requantize` from the primary, or, through data
  movement (Reshape, Transpose, Concat, Slice, Gather of rows, ...), by the same data
  movement applied to the codes of its input in that form. Memoised per (value, form),
  so readers share one requantization.

Rewrites (scales: S_x of x; per-channel vectors along the last axis):
- graph input x (float) -> `QuantizeLinear(x)` to int8 (the input quantizer, named);
  graph output y -> `DequantizeLinear(codes)` (the output dequantizer, named);
- `MatMul(x, W)` (W a constant or DQ of int8 codes, per column) -> `MatMulInteger(x_u8,
  W_i8, 128)`, scale S_x S_w[c]; `MatMul` of two activations likewise (int8 right side);
  an `Add` of a constant vector folds into the bias of the representation;
- `Conv` with kernel = stride, no padding (a patch embedding) -> patches by
  Reshape/Transpose, `MatMulInteger`, and back;
- `Add` / `Sub` of two tensors (or of a tensor and a full constant: position
  embeddings) -> `DyadicAdd` into int16 (`residual_bits`), each branch rescaled by its
  own (multiplier, shift); `Mul` / `Div` by constants and `Neg` change the scale only;
- `LayerNormalization` (last axis) -> `ILayerNorm` on int8/int16 codes, then gamma and
  beta as the scale and bias of its int32 output (folded into the next requantization);
- `Softmax` (last axis) and `ScaledDotProductAttention` -> the family's integer softmax
  on the int32 scores of `MatMulInteger(Q_u8, K^T_i8, 128)` (a bool mask as its bool
  input, causal masks as a constant, a constant float mask such as Swin's relative
  position bias and shifted-window -100s as int32 codes at the scores' scale added to
  them), probabilities in uint8 with scale 2^-8, then `MatMulInteger(P_u8, V_i8)`;
- `ReduceMean` over static axes (global average pooling) -> an int32 `ReduceSum` of the
  codes with the scale divided by the count;
- `Gelu` -> the family's integer GELU on int8 (or int16) codes;
- `Relu` -> `Relu` on the codes;
- QuantizeLinear / DequantizeLinear pairs of the quantize pass: the activation scale
  they chose becomes the scale of that reader's codes (a pair whose range equals the
  requested form's is transparent); DQ of constant codes is a weight.
Anything else computing floats runs in float between a DequantizeLinear and a
QuantizeLinear (`fallbacks`), and the check after the pass names it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.ops.intonly import INT32_MAX
from requant.passes.intonly_approx import FAMILIES, Family, gelu_plan, softmax_plan
from requant.passes.intonly_forms import Form, IntRep, annotate, quantize_constant, qmax, requantize, rescale_terms

__all__ = ["IntegerConverter", "ConvertOptions", "DATA_MOVEMENT"]

logger = logging.getLogger(__name__)

# op -> indices of its inputs that carry data (the others are shapes, indices, axes)
DATA_MOVEMENT: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,), "Transpose": (0,), "Flatten": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Identity": (0,),
    "Slice": (0,), "Gather": (0,), "GatherND": (0,), "GatherElements": (0,), "Expand": (0,), "Tile": (0,),
    "Split": (0,), "Where": (1, 2), "Concat": None,  # None: every input
}
_INT_CODES = frozenset({dtypes.int8, dtypes.uint8, dtypes.int16, dtypes.int32})
_NARROW = frozenset({dtypes.int8, dtypes.int16})
_SOFTMAX_FRAC = 8  # uint8 probabilities, scale 2^-8: the left operand of a u8 x s8 matmul


@dataclass(frozen=True)
class ConvertOptions:
    """The conversion's choices (the intonly pass's options)."""

    family: Family = FAMILIES["shift"]
    activations: str = "uint8"  # codes of integer matmul inputs: "uint8" (zero point 128) or "int8"
    residual_bits: int = 16
    layernorm_steps: int = 10
    layernorm_k0: int = 2**16


def _is_float(v: Value | None) -> bool:
    return v is not None and v.dtype.is_float


class IntegerConverter:
    """One conversion of `graph` (module docstring). `stats`: {value name: (lo, hi)}."""

    def __init__(self, graph: Graph, stats: Mapping[str, tuple[float, float]], options: ConvertOptions) -> None:
        self.graph = graph
        self.stats = stats
        self.opt = options
        self.b = Builder(graph, meta={"created_by": "intonly"})
        self._primary: dict[int, IntRep] = {}
        self._codes: dict[tuple, Value] = {}
        self.fallbacks: list[str] = []
        self.counts: dict[str, int] = {}

    # -- driving ---------------------------------------------------------------------------
    def run(self) -> None:
        """Convert every float node in order, then make the graph outputs read the codes."""
        for node in list(self.graph):
            if node.meta.get("created_by") == "intonly":
                continue
            if node.op in DATA_MOVEMENT or node.op in ("QuantizeLinear", "DequantizeLinear"):
                continue  # made on demand, in the form their readers ask for
            for out in node.outputs:
                if _is_float(out) and out.uses:
                    self.primary(out)
        for old in list(self.graph.outputs):
            if _is_float(old):
                self.graph.replace_value(old, self._output(old))

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- statistics ------------------------------------------------------------------------
    def amax(self, v: Value) -> float:
        """The largest |value| calibration saw for v (data movement: its input's)."""
        if v.const is not None:
            return float(np.max(np.abs(v.const))) if v.const.size else 0.0
        if v.name in self.stats:
            lo, hi = self.stats[v.name]
            return max(abs(float(lo)), abs(float(hi)))
        node = v.producer
        if node is not None and node.op in DATA_MOVEMENT:
            return max(self.amax(node.inputs[i]) for i in self._data_inputs(node))
        raise RequantError(f"intonly: no calibration statistics for %{v.name}; run the pass with the calibration "
                           f"batches (batches=...) or statistics of every float value (stats=...)")

    def scale_for(self, v: Value, dt: Any, zero_point: int = 0) -> float:
        a = self.amax(v)
        return (a if a > 0 else 1.0) / qmax(dt, zero_point)

    def _data_inputs(self, node: Node) -> tuple[int, ...]:
        which = DATA_MOVEMENT[node.op]
        return tuple(range(len(node.inputs))) if which is None else which

    # -- forms -----------------------------------------------------------------------------
    def act_form(self, v: Value) -> Form:
        """The form of an integer matmul's left operand: the quantize pass's scale and
        zero point when it quantized v (int8 codes moved up by 128 into uint8), else a
        symmetric range from calibration; uint8 (`activations`) or int8."""
        pair = _quantize_pair(v)
        if pair is not None and pair[2] in (dtypes.int8, dtypes.uint8):
            _, scale, dt, zp = pair
            if self.opt.activations == "uint8":
                return Form(dtypes.uint8, scale, zp + 128 if dt == dtypes.int8 else zp)
            if dt == dtypes.int8 or zp >= 128:
                return Form(dtypes.int8, scale, zp if dt == dtypes.int8 else zp - 128)
        scale = self.scale_for(v, dtypes.int8)
        if self.opt.activations == "uint8":
            return Form(dtypes.uint8, scale, 128)
        return Form(dtypes.int8, scale, 0)

    def codes(self, v: Value, form: Form) -> Value:
        """Per-tensor codes of v in `form` (module docstring)."""
        key = (id(v), form.key())
        hit = self._codes.get(key)
        if hit is not None:
            return hit
        if v.const is not None:
            out = self.b.const(quantize_constant(v.const, form), dtype=form.dtype)
            annotate(out, form.scale, form.zero_point)
        elif v.producer is None:
            out = self._input_quantizer(v, form)
        elif v.producer is not None and v.producer.op in DATA_MOVEMENT and _is_float(v):
            out = self._move(v, lambda x: self.codes(x, form), form.scale, form.zero_point)[id(v)]
        elif (pair := _quantize_pair(v)) is not None and _same_range(pair, form):
            out = self.codes(pair[0], form)  # DQ(Q(x)) at this scale and range: x's codes in the form
        else:
            out = requantize(self.b, self.primary(v), form)
        self._codes[key] = out
        return out

    def _move(self, v: Value, data, scale, zero_point) -> dict[int, Value]:
        """The data-movement node producing v, applied to `data(input)` codes; returns
        {id(old output): new output} for all its outputs (memoised by the caller for v)."""
        node = v.producer
        assert node is not None
        data_idx = self._data_inputs(node)
        ins = [data(x) if i in data_idx and x is not None else x for i, x in enumerate(node.inputs)]
        new = self.b.node(node.op, *ins, _outputs=len(node.outputs), **dict(node.attrs))
        out = {}
        for old, nv in zip(node.outputs, new.outputs):
            annotate(nv, scale, zero_point)
            out[id(old)] = nv
        return out

    # -- primary representations -------------------------------------------------------------
    def primary(self, v: Value) -> IntRep:
        hit = self._primary.get(id(v))
        if hit is not None:
            return hit
        rep = self._make_primary(v)
        self._primary[id(v)] = rep
        return rep

    def _make_primary(self, v: Value) -> IntRep:
        if v.const is not None:
            form = Form(dtypes.int16, self.scale_for(v, dtypes.int16))
            return IntRep.make(self.codes(v, form), form.scale)
        node = v.producer
        if node is None:
            form = self._input_form(v)
            return IntRep.make(self.codes(v, form), form.scale, -form.zero_point * form.scale)
        if node.op in DATA_MOVEMENT:
            return self._move_primary(v)
        convert = getattr(self, f"_convert_{node.op}", None)
        if convert is not None:
            rep = convert(node, v)
            if rep is not None:
                self._count(node.op)
                return rep
        return self._fallback(node, v)

    def _move_primary(self, v: Value) -> IntRep:
        node = v.producer
        data_idx = self._data_inputs(node)
        sources = [node.inputs[i] for i in data_idx if node.inputs[i] is not None]
        if len(sources) == 1:
            src = self.primary(sources[0])
            if src.per_tensor:
                moved = self._move(v, lambda x: src.codes, src.scale, src.zero_point() or 0)
                for old, new in zip(node.outputs, moved.values()):
                    self._primary[id(old)] = src.with_codes(new)
                return self._primary[id(v)]
        form = Form(dtypes.int16, self.scale_for(v, dtypes.int16))
        return IntRep.make(self.codes(v, form), form.scale)

    def _input_form(self, v: Value) -> Form:
        """The form of a float graph input's codes: the quantize pass's when it quantized
        the input (per tensor), else int8 symmetric over its calibrated range."""
        for user in v.users:
            params = user.inputs[1:3]
            if user.op == "QuantizeLinear" and len(params) == 2 and all(
                    p is not None and p.const is not None and p.const.size == 1 for p in params):
                scale, zp = params
                return Form(zp.dtype, float(np.float32(scale.const.reshape(-1)[0])), int(zp.const.reshape(-1)[0]))
        return Form(dtypes.int8, float(np.float32(self.scale_for(v, dtypes.int8))), 0)

    def _input_quantizer(self, v: Value, form: Form) -> Value:
        """A float graph input -> codes in `form`: an input quantizer, named after the input."""
        scale = float(np.float32(form.scale))
        name = f"{v.name}/input_quantizer" + ("" if form == self._input_form(v) else f"_{form.dtype.short}")
        q = self.b.node("QuantizeLinear", v, self.b.const(np.float32(scale)),
                        self.b.const(np.asarray(form.zero_point, form.dtype.np), dtype=form.dtype), _name=name).output
        self._count("input quantizer")
        return annotate(q, scale, form.zero_point)

    def _output(self, old: Value) -> Value:
        """The float graph output `old`, dequantized from its codes (the output dequantizer)."""
        rep = self.primary(old)
        zp = rep.zero_point()
        name = f"{old.name}/output_dequantizer"
        if rep.per_tensor and zp is not None:
            codes, scale, zpv = rep.codes, float(rep.scale), zp
        elif rep.scale.ndim == 1 and not np.any(rep.bias) and rep.codes.dtype in _INT_CODES:
            dq = self.b.node("DequantizeLinear", rep.codes, self.b.const(rep.scale.astype(np.float32)),
                             axis=-1, _name=name).output
            return self._typed_like(dq, old)
        else:
            scale = max(rep.amax_scale, self.amax(old) / INT32_MAX)
            codes, zpv = requantize(self.b, rep, Form(dtypes.int32, scale)), 0
        inputs = [codes, self.b.const(np.float32(scale))]
        if zpv:
            inputs.append(self.b.const(np.asarray(zpv, codes.dtype.np), dtype=codes.dtype))
        dq = self.b.node("DequantizeLinear", *inputs, _name=name).output
        return self._typed_like(dq, old)

    def _typed_like(self, new: Value, old: Value) -> Value:
        if new.dtype != old.dtype:
            new = self.b.Cast(new, to=old.dtype.name)
        if new.type != old.type and old.type.shape is not None:
            new.type = old.type  # keep the symbolic dims the output was declared with
        return new

    # -- fallback --------------------------------------------------------------------------
    def dequantized(self, v: Value) -> Value:
        rep = self.primary(v)
        zp = rep.zero_point()
        if rep.per_tensor and zp is not None and rep.codes.dtype in _INT_CODES:
            codes, scale = rep.codes, float(rep.scale)
        else:
            scale, zp = max(rep.amax_scale, self.amax(v) / INT32_MAX), 0
            codes = requantize(self.b, rep, Form(dtypes.int32, scale))
        ins = [codes, self.b.const(np.float32(scale))]
        if zp:
            ins.append(self.b.const(np.asarray(zp, codes.dtype.np), dtype=codes.dtype))
        return self.b.DequantizeLinear(*ins)

    def _fallback(self, node: Node, v: Value) -> IntRep:
        """Run `node` in float between DequantizeLinear and QuantizeLinear (int16)."""
        ins = [self.dequantized(x) if _is_float(x) and x.const is None else x for x in node.inputs]
        clone = self.b.node(node.op, *ins, _outputs=len(node.outputs), _name=node.name or None, **dict(node.attrs))
        self.fallbacks.append(node.label)
        logger.info("intonly: %s stays float (no integer form)", node.label)
        for old, new in zip(node.outputs, clone.outputs):
            if not _is_float(old):
                continue
            scale = self.scale_for(old, dtypes.int16)
            q = self.b.QuantizeLinear(new, self.b.const(np.float32(scale)), self.b.const(np.int16(0), dtype=dtypes.int16))
            self._primary[id(old)] = IntRep.make(annotate(q, scale), float(np.float32(scale)))
        return self._primary[id(v)]

    def _convert_DequantizeLinear(self, node: Node, v: Value) -> IntRep | None:
        """DQ(Q(x)): x's codes at the quantizer's scale; DQ of constant codes: a constant."""
        pair = _quantize_pair(v)
        if pair is not None:
            x, scale, dt, zp = pair
            return IntRep.make(self.codes(x, Form(dt, scale, zp)), scale, -zp * scale)
        codes, scale = node.inputs[0], node.inputs[1]
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if codes.const is None or scale.const is None or (zp is not None and zp.const is None):
            return None
        from requant.ir.registry import run_kernel

        real = run_kernel("DequantizeLinear", [codes.const, scale.const, None if zp is None else zp.const],
                          node.attrs, [v.type])[0]
        form = Form(dtypes.int16, (float(np.max(np.abs(real))) or 1.0) / qmax(dtypes.int16))
        out = self.b.const(quantize_constant(real, form), dtype=dtypes.int16)
        return IntRep.make(annotate(out, form.scale), form.scale)

    # -- linear layers -------------------------------------------------------------------------
    def _weight(self, w: Value) -> tuple[np.ndarray, np.ndarray] | None:
        """(int8 codes [..., K, N], scale [N] or scalar) of a constant weight, else None."""
        node = w.producer
        if node is not None and node.op == "DequantizeLinear":
            codes, scale = node.inputs[0], node.inputs[1]
            zp = node.inputs[2] if len(node.inputs) > 2 else None
            axis = int(node.attrs.get("axis", 1))
            rank = codes.type.rank or 0
            if (codes.const is not None and scale.const is not None and codes.dtype == dtypes.int8
                    and (zp is None or (zp.const is not None and not np.any(zp.const)))
                    and not node.attrs.get("block_size", 0)
                    and (scale.const.size == 1 or axis % max(rank, 1) == rank - 1)):
                return codes.const, np.asarray(scale.const, np.float64).reshape(-1 if scale.const.size > 1 else ())
            return None
        if w.const is not None and w.dtype.is_float and w.const.ndim >= 2:
            wf = np.asarray(w.const, np.float64)
            amax = np.abs(wf).max(axis=tuple(range(wf.ndim - 1)))
            scale = np.where(amax > 0, amax / 127.0, 1.0)
            return np.clip(np.round(wf / scale), -127, 127).astype(np.int8), scale
        return None

    def _matmul(self, a: Value, w: Value) -> IntRep:
        """MatMulInteger(a_u8, W_i8[, 128]) for a weight, or of two activations."""
        af = self.act_form(a)
        ac = self.codes(a, af)
        zp = self.b.const(np.asarray(af.zero_point, af.dtype.np), dtype=af.dtype) if af.zero_point else None
        weight = self._weight(w)
        if weight is not None:
            wcodes, wscale = weight
            wv = self.b.const(wcodes, dtype=dtypes.int8)
        else:
            wscale = np.asarray(self.scale_for(w, dtypes.int8))
            wv = self.codes(w, Form(dtypes.int8, float(wscale)))
        acc = self.b.MatMulInteger(ac, wv, zp)
        rep = IntRep.make(acc, af.scale * wscale)
        return rep

    def _convert_MatMul(self, node: Node, v: Value) -> IntRep | None:
        a, w = node.inputs
        if not (_is_float(a) and _is_float(w)) or (a.const is not None and w.const is not None):
            return None
        if a.const is not None:
            return None  # constant x activation: not a linear layer
        rep = self._matmul(a, w)
        annotate(rep.codes, rep.scale)
        return rep

    def _convert_Conv(self, node: Node, v: Value) -> IntRep | None:
        """A patch embedding: kernel = stride, no padding, one group, 2-D."""
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        xs = x.type.shape
        weight = _conv_weight(w)
        if weight is None or xs is None or len(xs) != 4 or not all(isinstance(d, int) for d in xs[1:]):
            return None
        wcodes, wscale = weight
        o, c, kh, kw = wcodes.shape
        a = node.attrs
        if (list(a.get("strides") or [1, 1]) != [kh, kw] or any(a.get("pads") or [0]) or a.get("group", 1) != 1
                or any(d != 1 for d in (a.get("dilations") or [1, 1])) or xs[2] % kh or xs[3] % kw
                or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            return None
        if bias is not None and bias.const is None:
            return None
        ph, pw = xs[2] // kh, xs[3] // kw
        af = self.act_form(x)
        b = self.b
        xc = self.codes(x, af)

        def dims(*rest: int) -> Value:  # [batch, *rest]: a symbolic batch is read off the codes
            if isinstance(xs[0], int):
                return b.const(np.array([xs[0], *rest], np.int64))
            return b.Concat(b.Shape(xc, end=1), b.const(np.array(rest, np.int64)), axis=0)

        patches = b.Reshape(xc, dims(c, ph, kh, pw, kw))
        patches = b.Transpose(patches, perm=[0, 2, 4, 1, 3, 5])
        patches = b.Reshape(patches, dims(ph * pw, c * kh * kw))
        wmat = np.ascontiguousarray(wcodes.reshape(o, c * kh * kw).T)
        zp = b.const(np.asarray(af.zero_point, af.dtype.np), dtype=af.dtype) if af.zero_point else None
        acc = b.MatMulInteger(patches, b.const(wmat, dtype=dtypes.int8), zp)
        rep = IntRep.make(acc, af.scale * wscale, 0.0 if bias is None else np.asarray(bias.const, np.float64))
        out_scale = max(rep.amax_scale, self.amax(v) / INT32_MAX)
        flat = requantize(b, rep, Form(dtypes.int32, out_scale), "patch")
        out = b.Transpose(b.Reshape(flat, dims(ph, pw, o)), perm=[0, 3, 1, 2])
        annotate(out, out_scale)
        return IntRep.make(out, out_scale)

    # -- elementwise --------------------------------------------------------------------------
    def _channel_const(self, c: Value, out: Value) -> np.ndarray | None:
        """A constant that varies along the last axis only (or not at all), as a vector."""
        arr = np.asarray(c.const, np.float64)
        if arr.size == 1:
            return arr.reshape(())
        shape = out.type.shape
        if shape is None or not shape or not isinstance(shape[-1], int):
            return None
        if arr.ndim >= 1 and arr.shape[-1] == shape[-1] and all(d == 1 for d in arr.shape[:-1]) \
                and arr.ndim <= len(shape):
            return arr.reshape(-1)
        return None

    def _convert_Add(self, node: Node, v: Value) -> IntRep | None:
        return self._add_sub(node, v, 1.0)

    def _convert_Sub(self, node: Node, v: Value) -> IntRep | None:
        return self._add_sub(node, v, -1.0)

    def _add_sub(self, node: Node, v: Value, sign: float) -> IntRep | None:
        x, y = node.inputs
        if not (_is_float(x) and _is_float(y)):
            return None
        if x.const is not None and y.const is not None:
            return None
        if y.const is not None and (vec := self._channel_const(y, v)) is not None:
            return self.primary(x).affine(add=sign * vec)
        if x.const is not None and (vec := self._channel_const(x, v)) is not None:
            return self.primary(y).affine(mul=sign, add=vec)
        return self._dyadic_add(self.primary(x), self.primary(y).affine(mul=sign), v)

    def _dyadic_add(self, rx: IntRep, ry: IntRep, v: Value) -> IntRep:
        dt = {16: dtypes.int16, 32: dtypes.int32, 8: dtypes.int8}[self.opt.residual_bits]
        out_scale = self.scale_for(v, dt)
        am, ash, abias = rescale_terms(rx, out_scale)
        bm, bsh, bbias = rescale_terms(ry, out_scale)
        offset = np.round(np.asarray(abias + bbias, np.float64))
        b = self.b
        p = lambda a, d: b.const(a.reshape(()) if a.size == 1 else a.reshape(-1), dtype=d)  # noqa: E731
        off = p(offset.astype(np.int64), dtypes.int64) if np.any(offset) else None
        y = b.DyadicAdd(rx.codes, p(am, dtypes.int32), p(ash, dtypes.int32), ry.codes, p(bm, dtypes.int32),
                        p(bsh, dtypes.int32), off, to=dt.name)
        annotate(y, out_scale)
        return IntRep.make(y, out_scale)

    def _scalar_or_channel(self, node: Node, v: Value) -> tuple[Value, np.ndarray] | None:
        x, c = node.inputs
        if _is_float(x) and x.const is None and c is not None and c.const is not None:
            vec = self._channel_const(c, v)
            return None if vec is None else (x, vec)
        return None

    def _convert_Mul(self, node: Node, v: Value) -> IntRep | None:
        found = self._scalar_or_channel(node, v)
        if found is None:
            x, c = node.inputs
            if c is not None and _is_float(c) and c.const is None and x is not None and x.const is not None:
                vec = self._channel_const(x, v)
                return None if vec is None else self.primary(c).affine(mul=vec)
            return None
        x, vec = found
        return self.primary(x).affine(mul=vec)

    def _convert_Div(self, node: Node, v: Value) -> IntRep | None:
        found = self._scalar_or_channel(node, v)
        if found is None or np.any(found[1] == 0):
            return None
        return self.primary(found[0]).affine(mul=1.0 / found[1])

    def _convert_Neg(self, node: Node, v: Value) -> IntRep | None:
        return self.primary(node.inputs[0]).affine(mul=-1.0)

    def _convert_Relu(self, node: Node, v: Value) -> IntRep | None:
        x = node.inputs[0]
        rep = self.primary(x)
        if not (rep.per_tensor and float(rep.bias) == 0 and float(rep.scale) > 0 and rep.codes.dtype != dtypes.uint8):
            form = Form(dtypes.int16, self.scale_for(x, dtypes.int16))
            rep = IntRep.make(self.codes(x, form), form.scale)
        y = self.b.Relu(rep.codes)
        return rep.with_codes(annotate(y, rep.scale))

    # -- normalization and nonlinearities ------------------------------------------------------
    def _convert_LayerNormalization(self, node: Node, v: Value) -> IntRep | None:
        x, gamma = node.inputs[0], node.inputs[1]
        beta = node.inputs[2] if len(node.inputs) > 2 else None
        shape = x.type.shape
        if shape is None or not shape or not isinstance(shape[-1], int) or len(node.outputs) > 1 and any(
                o.uses for o in node.outputs[1:]):
            return None
        if int(node.attrs.get("axis", -1)) % len(shape) != len(shape) - 1:
            return None
        if gamma.const is None or (beta is not None and beta.const is None):
            return None
        rep = self.primary(x)
        sign = 1.0
        if rep.per_tensor and rep.codes.dtype in _NARROW and float(rep.scale) != 0:
            codes, sign = rep.codes, float(np.sign(rep.scale))  # shift-invariant: the bias does not matter
        else:
            codes = self.codes(x, Form(dtypes.int16, self.scale_for(x, dtypes.int16)))
        y = self.b.ILayerNorm(codes, steps=self.opt.layernorm_steps, k0=self.opt.layernorm_k0)
        n = shape[-1]
        scale = sign * np.asarray(gamma.const, np.float64).reshape(-1) * math.sqrt(n) / 2.0**30
        bias = 0.0 if beta is None else np.asarray(beta.const, np.float64).reshape(-1)
        annotate(y, math.sqrt(n) / 2.0**30)
        return IntRep.make(y, scale, bias)

    def _convert_Gelu(self, node: Node, v: Value) -> IntRep | None:
        x = node.inputs[0]
        op = self.opt.family.gelu
        dt = dtypes.int16 if self.opt.family.gelu_bits == 16 else dtypes.int8
        form = Form(dt, self.scale_for(x, dt))
        plan = gelu_plan(op, form.scale)
        y = self.b.node(op, self.codes(x, form), **plan.attrs).output
        scale = form.scale * plan.scale_factor
        annotate(y, scale)
        return IntRep.make(y, scale)

    def _softmax(self, scores: IntRep, mask: Value | None) -> IntRep:
        """The family's integer softmax of per-tensor scores, uint8 probabilities 2^-8."""
        if not (scores.per_tensor and float(scores.scale) > 0):
            raise RequantError("intonly: softmax scores must have one positive scale")
        op = self.opt.family.softmax
        plan = softmax_plan(op)
        codes = requantize(self.b, scores, Form(dtypes.int32, plan.input_scale), "scores")
        inputs = [codes] if mask is None else [codes, mask]
        p = self.b.node(op, *inputs, frac_bits=_SOFTMAX_FRAC, to="uint8", **plan.attrs).output
        annotate(p, 2.0**-_SOFTMAX_FRAC)
        return IntRep.make(p, 2.0**-_SOFTMAX_FRAC)

    def _convert_Softmax(self, node: Node, v: Value) -> IntRep | None:
        x = node.inputs[0]
        shape = x.type.shape
        if shape is None or int(node.attrs.get("axis", -1)) % max(len(shape), 1) != len(shape) - 1:
            return None
        rep = self.primary(x)
        if not (rep.per_tensor and float(rep.scale) > 0 and rep.codes.dtype in _INT_CODES):
            form = Form(dtypes.int32, (self.amax(x) or 1.0) / 2**24)
            rep = IntRep.make(self.codes(x, form), form.scale)
        return self._softmax(rep, None)

    def _convert_ScaledDotProductAttention(self, node: Node, v: Value) -> IntRep | None:
        q, k, val = node.inputs[:3]
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        qs, ks = q.type.shape, k.type.shape
        if qs is None or ks is None or len(qs) != 4 or len(ks) != 4 or qs[1] != ks[1]:
            return None  # grouped-query attention and other ranks stay float
        additive = None  # a constant float mask (relative position bias, shifted windows' -100s) is added to the scores
        if mask is not None and mask.dtype != dtypes.bool_:
            if mask.const is None or not mask.dtype.is_float or not isinstance(qs[-1], int):
                return None
            additive, mask = np.asarray(mask.const, np.float64), None
        scale = float(node.attrs.get("scale", 0.0))
        if not scale:
            if not isinstance(qs[-1], int):
                return None
            scale = 1.0 / math.sqrt(qs[-1])
        if int(node.attrs.get("is_causal", 0)):
            s_len, t_len = qs[2], ks[2]
            if not (isinstance(s_len, int) and isinstance(t_len, int)):
                return None
            causal = self.b.const(np.tril(np.ones((s_len, t_len), bool)))
            mask = causal if mask is None else self.b.And(mask, causal)
        af = Form(dtypes.uint8, self.scale_for(q, dtypes.int8), 128)
        qc = self.codes(q, af)
        kc = self.codes(k, Form(dtypes.int8, self.scale_for(k, dtypes.int8)))
        vc = self.codes(val, Form(dtypes.int8, self.scale_for(val, dtypes.int8)))
        b = self.b
        scores = b.MatMulInteger(qc, b.Transpose(kc, perm=[0, 1, 3, 2]), b.const(np.uint8(128)))
        s_scale = af.scale * self.scale_for(k, dtypes.int8) * scale
        annotate(scores, s_scale)
        if additive is not None:
            scores = self._add_score_bias(scores, additive, s_scale, qs[-1])
            if scores is None:
                return None
        probs = self._softmax(IntRep.make(scores, s_scale), mask)
        out = b.MatMulInteger(probs.codes, vc)
        out_scale = float(probs.scale) * self.scale_for(val, dtypes.int8)
        annotate(out, out_scale)
        return IntRep.make(out, out_scale)

    def _add_score_bias(self, scores: Value, bias: np.ndarray, s_scale: float, depth: int) -> Value | None:
        """scores + bias / s_scale in int32: the constant's codes at the scores' scale,
        clipped to +-2^30 (a bias that low sends the exponential to its floor anyway),
        added exactly: |scores| <= depth * 128 * 128 (u8 - 128 times i8) must stay below
        2^30 so that the sum cannot wrap; None (float fallback) when the depth allows more."""
        if depth * 128 * 128 >= 2**30:
            return None
        codes = np.clip(np.round(bias / s_scale), -(2**30), 2**30).astype(np.int32)
        out = self.b.Add(scores, self.b.const(codes))
        annotate(out, s_scale)
        return out

    def _convert_ReduceMean(self, node: Node, v: Value) -> IntRep | None:
        """The mean over static axes as an int32 ReduceSum of per-tensor 8/16-bit codes
        (requantized to int16 first when x has others, e.g. an ILayerNorm's int32 output
        with gamma and beta), scale S / N (a global average pool): exact, and no wrap
        while N * 2^15 < 2^31."""
        x = node.inputs[0]
        shape = x.type.shape
        axes = node.inputs[1].const if len(node.inputs) > 1 and node.inputs[1] is not None else node.attrs.get("axes")
        if shape is None or axes is None or int(node.attrs.get("noop_with_empty_axes", 0)):
            return None
        axes = sorted({int(a) % len(shape) for a in np.asarray(axes).reshape(-1)})
        if not axes or not all(isinstance(shape[a], int) for a in axes):
            return None
        count = math.prod(shape[a] for a in axes)
        if count * 2**15 >= 2**31:
            return None
        rep = self.primary(x)
        if not (rep.per_tensor and rep.codes.dtype in (dtypes.int8, dtypes.uint8, dtypes.int16)):
            form = Form(dtypes.int16, self.scale_for(x, dtypes.int16))  # e.g. an ILayerNorm's int32 with gamma, beta
            rep = IntRep.make(self.codes(x, form), form.scale)
        b = self.b
        total = b.ReduceSum(b.Cast(rep.codes, to="int32"), b.const(np.asarray(axes, np.int64)),
                            keepdims=int(node.attrs.get("keepdims", 1)))
        annotate(total, float(rep.scale) / count)
        return IntRep.make(total, float(rep.scale) / count, rep.bias)


def _quantize_pair(v: Value) -> tuple[Value, float, Any, int] | None:
    """(x, scale, dtype, zero point) when v = DequantizeLinear(QuantizeLinear(x)) per tensor."""
    dq = v.producer
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = dq.inputs[0].producer
    if q is None or q.op != "QuantizeLinear" or q.inputs[0] is None or not _is_float(q.inputs[0]):
        return None
    s = q.inputs[1]
    if s is None or s.const is None or s.const.size != 1 or dq.inputs[1] is not s and (
            dq.inputs[1].const is None or float(dq.inputs[1].const.reshape(-1)[0]) != float(s.const.reshape(-1)[0])):
        return None
    zp = q.inputs[2] if len(q.inputs) > 2 else None
    zpv = 0 if zp is None else int(np.asarray(zp.const).reshape(-1)[0]) if zp.const is not None else None
    if zpv is None:
        return None
    return q.inputs[0], float(s.const.reshape(-1)[0]), dq.inputs[0].dtype, zpv


def _same_range(pair: tuple, form: Form) -> bool:
    """Whether Q's codes and the form's cover the same real range at the same scale."""
    _, scale, dt, zp = pair
    lo, hi = dt.int_range
    flo, fhi = form.dtype.int_range
    return float(np.float64(scale)) == form.scale and (lo - zp, hi - zp) == (flo - form.zero_point, fhi - form.zero_point)


def _conv_weight(w: Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 codes [O, C, kh, kw], scale [O]) of a constant (or DQ-of-constant) conv weight."""
    node = w.producer
    if node is not None and node.op == "DequantizeLinear":
        codes, scale = node.inputs[0], node.inputs[1]
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if (codes.const is not None and scale.const is not None and codes.dtype == dtypes.int8 and codes.const.ndim == 4
                and (zp is None or (zp.const is not None and not np.any(zp.const)))
                and (scale.const.size == 1 or int(node.attrs.get("axis", 1)) == 0)):
            s = np.asarray(scale.const, np.float64).reshape(-1)
            return codes.const, np.broadcast_to(s, (codes.const.shape[0],)).copy()
        return None
    if w.const is not None and w.dtype.is_float and w.const.ndim == 4:
        wf = np.asarray(w.const, np.float64)
        amax = np.abs(wf).reshape(wf.shape[0], -1).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0)
        return np.clip(np.round(wf / scale[:, None, None, None]), -127, 127).astype(np.int8), scale
    return None
