"""Graphs the rotation pass tests share, in the text form."""

from __future__ import annotations

import numpy as np

__all__ = ["attention", "half_normal_text"]

_RNG = np.random.default_rng(8)


def half_normal_text(*shape: int) -> str:
    """Normal values / 2, rounded to 3 decimals, as a nested list literal."""
    return str(np.round(_RNG.standard_normal(shape) / 2, 3).tolist())


def attention(heads: int = 2, kv_heads: int = 2, size: int = 4, merged_reader: str = "MatMul(%m, %w_o)",
              causal: bool = True) -> str:
    """x [1, 3, 8] -> q/k/v projections -> heads -> (causal) attention -> merged -> o_proj."""
    d, dkv = heads * size, kv_heads * size
    return f"""
    graph main(%x: f32[1,3,8]) -> (%y) {{
      const %w_q: f32[8,{d}] = {half_normal_text(8, d)}
      const %w_k: f32[8,{dkv}] = {half_normal_text(8, dkv)}
      const %w_v: f32[8,{dkv}] = {half_normal_text(8, dkv)}
      const %b_v: f32[{dkv}] = {half_normal_text(dkv)}
      const %w_o: f32[{d},5] = {half_normal_text(d, 5)}
      const %split_q: i64[4] = [1, 3, {heads}, {size}]
      const %split_kv: i64[4] = [1, 3, {kv_heads}, {size}]
      const %merge: i64[3] = [1, 3, {d}]
      %q: f32[1,3,{d}] = MatMul(%x, %w_q)
      %k: f32[1,3,{dkv}] = MatMul(%x, %w_k)
      %vm: f32[1,3,{dkv}] = MatMul(%x, %w_v)
      %v: f32[1,3,{dkv}] = Add(%vm, %b_v)
      %qs: f32[1,3,{heads},{size}] = Reshape(%q, %split_q)
      %ks: f32[1,3,{kv_heads},{size}] = Reshape(%k, %split_kv)
      %vs: f32[1,3,{kv_heads},{size}] = Reshape(%v, %split_kv)
      %qh: f32[1,{heads},3,{size}] = Transpose(%qs) {{perm=[0, 2, 1, 3]}}
      %kh: f32[1,{kv_heads},3,{size}] = Transpose(%ks) {{perm=[0, 2, 1, 3]}}
      %vh: f32[1,{kv_heads},3,{size}] = Transpose(%vs) {{perm=[0, 2, 1, 3]}}
      %a: f32[1,{heads},3,{size}] = ScaledDotProductAttention(%qh, %kh, %vh) {{is_causal={int(causal)}}}
      %at: f32[1,3,{heads},{size}] = Transpose(%a) {{perm=[0, 2, 1, 3]}}
      %m: f32[1,3,{d}] = Reshape(%at, %merge)
      %y = {merged_reader}
    }}"""


