"""Kernelized attention with relative positional encoding, and long-convolution blocks,
written the naive O(n^2) way in torch, as a user would: the models the toeplitz_fft pass
tests and the benchmark (tools/bench/toeplitz_fft.py) run.

- `KernelizedRPEAttention`: Luo et al.'s attention (NeurIPS 2021, arXiv 2106.12566),
  `z_i = sum_j phi(q_i)^T phi(k_j) c_(j-i) v_j / sum_j phi(q_i)^T phi(k_j) c_(j-i)`,
  c = exp(b) with one learned bias b per head and offset (j - i), phi Performer's
  positive random features `exp(w^T x - |x|^2 / 2) / sqrt(m)`; causal or
  bidirectional. The scores are the n x n product phi(Q) phi(K)^T, masked by the n x n
  matrix exp(b[:, j - i + max_len - 1]) (gathered with a relative-position index made
  from `arange`), the mask and normaliser computed as written in the paper's first
  equation.
- `RPEAttentionCore`: the same attention from given features phi(Q), phi(K) and values
  (the shape the benchmark sweeps: m = d = 64, 8 heads).
- `RPETransformer`: pre-norm blocks of that attention and an MLP over float inputs.
- `RelativePositionMix`: the Toeplitz product alone, `exp(b[h, j - i]) @ Y` per head.
- `LongConvBlock`: a gated depthwise long convolution along the sequence (Hyena / H3 /
  CKConv style), causal (left-padded) or centred, filter length comparable to n;
  `DepthwiseLongConv` the causal convolution alone.
Builders return `ModelCase`s (tests/models/zoo.py) with seeded weights and inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo import ModelCase

__all__ = [
    "KernelizedRPEAttention",
    "RPEAttentionCore",
    "RPETransformer",
    "RelativePositionMix",
    "LongConvBlock",
    "DepthwiseLongConv",
    "rpe_attention_core",
    "rpe_transformer",
    "long_conv_block",
]


def positive_features(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Performer's positive random features of x [..., d] with projections omega [d, m]."""
    x = x * x.shape[-1] ** -0.25
    return torch.exp(x @ omega - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(omega.shape[-1])


def rpe_kernel_attention(pq: torch.Tensor, pk: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, max_len: int,
                         causal: bool) -> torch.Tensor:
    """The quadratic form: (phi(Q) phi(K)^T * exp(b_(j-i))) V over its row sums."""
    n = pq.shape[-2]
    scores = pq @ pk.transpose(-1, -2)  # [B, H, n, n]
    pos = torch.arange(n, device=pq.device)
    rel = pos[None, :] - pos[:, None] + (max_len - 1)  # j - i, shifted into the bias table
    weights = scores * torch.exp(bias[:, rel])  # one Toeplitz c_(j-i) per head
    if causal:
        weights = weights.masked_fill(torch.ones(n, n, dtype=torch.bool, device=pq.device).triu(1), 0.0)
    return (weights @ v) / weights.sum(-1, keepdim=True)


class RPEAttentionCore(nn.Module):
    """Kernelized RPE attention from features: forward(phi_q, phi_k, v), all [B, H, n, .]."""

    def __init__(self, heads: int, max_len: int, causal: bool = False) -> None:
        super().__init__()
        self.max_len = max_len
        self.causal = causal
        self.bias = nn.Parameter(torch.randn(heads, 2 * max_len - 1) * 0.1)

    def forward(self, pq: torch.Tensor, pk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return rpe_kernel_attention(pq, pk, v, self.bias, self.max_len, self.causal)


class KernelizedRPEAttention(nn.Module):
    """Multi-head kernelized attention with relative positions over x [B, n, dim]."""

    def __init__(self, dim: int, heads: int, features: int, max_len: int, causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("omega", torch.randn(self.head_dim, features))
        self.core = RPEAttentionCore(heads, max_len, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        z = self.core(positive_features(q, self.omega), positive_features(k, self.omega), v)
        return self.out(z.transpose(1, 2).reshape(b, n, dim))


class RPETransformer(nn.Module):
    """Pre-norm blocks: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, features: int, layers: int, max_len: int, causal: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "attn": KernelizedRPEAttention(dim, heads, features, max_len, causal),
                "norm2": nn.LayerNorm(dim), "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)),
            }))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block["attn"](block["norm1"](x))
            x = x + block["mlp"](block["norm2"](x))
        return x


class RelativePositionMix(nn.Module):
    """y [B, H, n, d] -> exp(b[h, j - i + max_len - 1]) @ y: one Toeplitz product per head."""

    def __init__(self, heads: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.bias = nn.Parameter(torch.randn(heads, 2 * max_len - 1) * 0.1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[-2]
        pos = torch.arange(n, device=y.device)
        return torch.exp(self.bias[:, pos[None, :] - pos[:, None] + (self.max_len - 1)]) @ y


class DepthwiseLongConv(nn.Module):
    """x [B, C, n] -> the causal depthwise convolution with a filter of `taps`."""

    def __init__(self, channels: int, taps: int) -> None:
        super().__init__()
        self.taps = taps
        self.weight = nn.Parameter(torch.randn(channels, 1, taps) / taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv1d(nn.functional.pad(x, (self.taps - 1, 0)), self.weight, groups=x.shape[1])


class LongConvBlock(nn.Module):
    """x [B, n, C] -> x + proj(conv(x) * sigmoid(gate(x))), conv depthwise along n with
    a filter of `taps` (left-padded when causal, centred otherwise)."""

    def __init__(self, channels: int, taps: int, causal: bool = True) -> None:
        super().__init__()
        self.taps = taps
        self.causal = causal
        self.conv = nn.Conv1d(channels, channels, taps, groups=channels, padding=0 if causal else taps // 2)
        with torch.no_grad():  # a decaying filter, as long-convolution models learn
            self.conv.weight.mul_(torch.exp(-torch.linspace(0, 3, taps)).flip(0) * 4)
        self.gate = nn.Linear(channels, channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        if self.causal:
            h = nn.functional.pad(h, (self.taps - 1, 0))
        h = self.conv(h).transpose(1, 2)
        return x + self.proj(h * torch.sigmoid(self.gate(x)))


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


def rpe_attention_core(n: int, heads: int = 2, features: int = 8, head_dim: int = 8, batch: int = 2,
                       causal: bool = False, seed: int = 0) -> ModelCase:
    """RPEAttentionCore with positive features as inputs [batch, heads, n, .]."""
    gen = _seeded(seed)
    model = RPEAttentionCore(heads, max_len=n, causal=causal).eval()
    pq = torch.rand(batch, heads, n, features, generator=gen) + 0.05
    pk = torch.rand(batch, heads, n, features, generator=gen) + 0.05
    v = torch.randn(batch, heads, n, head_dim, generator=gen)
    return ModelCase(f"rpe_attention_core_{'causal' if causal else 'bidirectional'}_{n}", model, (pq, pk, v))


def rpe_transformer(n: int, dim: int = 32, heads: int = 4, features: int = 8, layers: int = 2, batch: int = 2,
                    causal: bool = False, seed: int = 0) -> ModelCase:
    gen = _seeded(seed)
    model = RPETransformer(dim, heads, features, layers, max_len=n, causal=causal).eval()
    x = torch.randn(batch, n, dim, generator=gen)
    return ModelCase(f"rpe_transformer_{'causal' if causal else 'bidirectional'}_{n}", model, (x,))


def long_conv_block(n: int, channels: int = 8, taps: int | None = None, batch: int = 2, causal: bool = True,
                    seed: int = 0) -> ModelCase:
    gen = _seeded(seed)
    taps = taps or (n if causal else n | 1)  # centred padding keeps the length for odd filters
    model = LongConvBlock(channels, taps, causal).eval()
    x = torch.randn(batch, n, channels, generator=gen)
    return ModelCase(f"long_conv_{'causal' if causal else 'centred'}_{n}", model, (x,))
