"""The vision zoo: small, self-contained torch modules in the style of seven vision
architectures, written here because torchvision's and timm's compiled ops do not load
on this machine. Each builder takes a `scale` ("tiny" for tests: a few blocks at 32 x 32
pixels; "bench": the published layout at 224 x 224) and returns a `VisionCase` with the
module in eval mode, an example batch and a seed for more batches.

- `resnet`: ResNet-18-style (7x7 stem, max pool, BasicBlocks with residual Adds and 1x1
  downsampling convs, global average pool, linear head);
- `mobilenet_v3`: MobileNetV3-Small-style (inverted residuals with depthwise convs,
  squeeze-and-excite with Hardsigmoid, HardSwish / ReLU activations);
- `efficientnet`: EfficientNet-B0-style (MBConv blocks, depthwise 3x3 / 5x5 convs,
  SiLU, squeeze-and-excite with Sigmoid);
- `convnext`: ConvNeXt-style (patchify stem, depthwise 7x7 conv, channels-last LayerNorm,
  inverted MLP with GELU, layer scale, LayerNorm2d downsampling, pooled LayerNorm head);
- `swin`: Swin-style (patch embedding, window attention with relative position bias,
  shifted windows whose mask is built by slice assignment, patch merging);
- `mobilevit`: MobileViT-style (MobileNetV2 blocks with SiLU, MobileViT blocks that
  unfold patches into a transformer and fold them back; a feature map whose side is not
  a multiple of the patch is resized bilinearly first, as timm's MobileViT does);
- `vit`: ViT-style (16 x 16 patch embedding, a class token and learned position
  embeddings: 197 tokens at 224 x 224; pre-norm encoder layers with GELU MLPs; the head
  reads the class token), ViT-B/16 at bench scale.

Weights are random (torch's default initialisation) with BatchNorm statistics settled
on random images (`settle_batchnorm`: running statistics of the activations the
model actually produces, as after training, so the networks neither explode nor
vanish) and BatchNorm / LayerNorm affines perturbed off 1 and 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "VisionCase",
    "VISION_MODELS",
    "CNN_MODELS",
    "resnet",
    "mobilenet_v3",
    "efficientnet",
    "convnext",
    "swin",
    "mobilevit",
    "vit",
    "build",
    "images",
    "settle_batchnorm",
]

SCALES = ("tiny", "bench")


@dataclass
class VisionCase:
    name: str
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    image_shape: tuple[int, int, int, int]  # [batch, 3, H, W]


def images(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded standard-normal images (what a normalised input pipeline produces)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


def settle_batchnorm(model: nn.Module, shape: tuple[int, ...], batches: int = 4, seed: int = 1000) -> None:
    """BatchNorm running statistics measured on the model's own activations over random
    images (cumulative averages), then every norm's affine perturbed off 1 and 0."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(batches):
            model(images(shape, seed + i))
        gen = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.7, 1.3, generator=gen))
                m.bias.copy_(torch.empty_like(m.bias).uniform_(-0.2, 0.2, generator=gen))
    model.eval()


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# -- ResNet --------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2 = _conv_bn(c_out, c_out, 3, act=None)
        self.down = _conv_bn(c_in, c_out, 1, stride, act=None) if stride != 1 or c_in != c_out else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return self.relu(self.conv2(self.conv1(x)) + skip)


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        layers, c = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(c, w, 2 if j == 0 and i > 0 else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- MobileNetV3 / EfficientNet ---------------------------------------------------------------


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeezed: int, act: type, gate: type) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, squeezed, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeezed, c, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise kxk -> [squeeze-excite] -> project 1x1 (+ input)."""

    def __init__(self, c_in: int, c_exp: int, c_out: int, k: int, stride: int, act: type,
                 se: int | None, se_act: type = nn.ReLU, se_gate: type = nn.Hardsigmoid) -> None:
        super().__init__()
        self.expand = _conv_bn(c_in, c_exp, 1, act=act) if c_exp != c_in else None
        self.depthwise = _conv_bn(c_exp, c_exp, k, stride, groups=c_exp, act=act)
        self.se = SqueezeExcite(c_exp, se, se_act, se_gate) if se else None
        self.project = _conv_bn(c_exp, c_out, 1, act=None)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


def _make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class MobileNetV3(nn.Module):
    # (kernel, expanded, out, squeeze-excite, activation, stride) per block: MobileNetV3-Small
    SMALL = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
             (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
             (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
             (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]

    def __init__(self, blocks: list[tuple], head: int, classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2, act=nn.Hardswish)
        layers, c = [], 16
        for k, exp, out, se, act, stride in blocks:
            act_t = nn.ReLU if act == "RE" else nn.Hardswish
            layers.append(InvertedResidual(c, exp, out, k, stride, act_t, _make_divisible(exp / 4) if se else None))
            c = out
        self.layers = nn.Sequential(*layers)
        self.last = _conv_bn(c, 6 * c, 1, act=nn.Hardswish)
        self.head = nn.Sequential(nn.Linear(6 * c, head), nn.Hardswish(), nn.Linear(head, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.layers(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class EfficientNet(nn.Module):
    # (expand ratio, kernel, stride, out, repeats) per stage: EfficientNet-B0
    B0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]

    def __init__(self, stages: list[tuple], stem: int, head: int, classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, stem, 3, 2, act=nn.SiLU)
        layers, c = [], stem
        for ratio, k, stride, out, repeats in stages:
            for i in range(repeats):
                layers.append(InvertedResidual(c, c * ratio, out, k, stride if i == 0 else 1, nn.SiLU,
                                               max(1, c // 4), nn.SiLU, nn.Sigmoid))
                c = out
        self.layers = nn.Sequential(*layers)
        self.last = _conv_bn(c, head, 1, act=nn.SiLU)
        self.classifier = nn.Linear(head, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.layers(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- ConvNeXt ----------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (torchvision's form: permute around it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1 = nn.Linear(c, 4 * c)
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, 4), LayerNorm2d(widths[0], eps=1e-6))
        stages: list[nn.Module] = []
        for i, (w, d) in enumerate(zip(widths, depths)):
            if i > 0:
                stages += [LayerNorm2d(widths[i - 1], eps=1e-6), nn.Conv2d(widths[i - 1], w, 2, 2)]
            stages += [ConvNeXtBlock(w) for _ in range(d)]
        self.stages = nn.Sequential(*stages)
        self.head_norm = LayerNorm2d(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1)  # torchvision: avgpool, LayerNorm2d, flatten
        return self.head(torch.flatten(self.head_norm(x), 1))


# -- Swin -------------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    def __init__(self, c: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten(), persistent=False)

    def _shift_mask(self, h: int, w: int) -> torch.Tensor:
        """Which window-token pairs come from different regions after the cyclic shift
        (torchvision's construction: regions numbered by slice assignment)."""
        ws, s = self.window, self.shift
        region = torch.zeros((h, w))
        count = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                region[hs, wsl] = count
                count += 1
        region = region.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
        diff = region[:, None, :] - region[:, :, None]
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, C]
        b, h, w, c = x.shape
        ws, heads = self.window, self.heads
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
        t = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        q, k, v = self.qkv(t).reshape(t.shape[0], ws * ws, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.bias_table[self.bias_index].view(ws * ws, ws * ws, heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if self.shift:
            windows = (h // ws) * (w // ws)
            mask = self._shift_mask(h, w).to(attn.dtype)
            attn = attn.view(b, windows, heads, ws * ws, ws * ws) + mask[None, :, None]
            attn = attn.view(-1, heads, ws * ws, ws * ws)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, ws * ws, c)
        y = self.proj(y).view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        return y


class SwinBlock(nn.Module):
    def __init__(self, c: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.attn = WindowAttention(c, heads, window, shift)
        self.norm2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * c)
        self.reduction = nn.Linear(4 * c, 2 * c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    def __init__(self, c: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int, classes: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, 4)
        self.patch_norm = nn.LayerNorm(c)
        stages: list[nn.Module] = []
        for i, (d, h) in enumerate(zip(depths, heads)):
            if i > 0:
                stages.append(PatchMerging(c))
                c *= 2
            stages += [SwinBlock(c, h, window, 0 if j % 2 == 0 else window // 2) for j in range(d)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_norm(self.patch(x).permute(0, 2, 3, 1))
        x = self.norm(self.stages(x))
        return self.head(x.mean((1, 2)))


# -- MobileViT --------------------------------------------------------------------------------


class TransformerLayer(nn.Module):
    """Pre-norm encoder layer: x + attention(LN(x)), then x + MLP(LN(x)); MobileViT's by
    default (MLP 2c wide, SiLU), ViT's with `mlp=4c`, GELU and LayerNorm eps 1e-6."""

    def __init__(self, c: int, heads: int, mlp: int | None = None, act: type = nn.SiLU, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = mlp or 2 * c
        self.norm1 = nn.LayerNorm(c, eps=eps)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(c, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), act(), nn.Linear(hidden, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    def __init__(self, c: int, d: int, layers: int, heads: int, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.local = nn.Sequential(_conv_bn(c, c, 3, act=nn.SiLU), nn.Conv2d(c, d, 1, bias=False))
        self.transformer = nn.Sequential(*[TransformerLayer(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.proj = _conv_bn(d, c, 1, act=nn.SiLU)
        self.fuse = _conv_bn(2 * c, c, 3, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        b, d, h, w = y.shape
        p = self.patch
        nh, nw = math.ceil(h / p) * p, math.ceil(w / p) * p
        resized = (nh, nw) != (h, w)
        if resized:  # timm's MobileViT: a side that is not a multiple of the patch
            y = F.interpolate(y, size=(nh, nw), mode="bilinear", align_corners=False)
        # unfold: [B, d, nh, nw] -> [B * p * p, patches, d]
        t = y.reshape(b, d, nh // p, p, nw // p, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, -1, d)
        t = self.norm(self.transformer(t))
        y = t.reshape(b, p, p, nh // p, nw // p, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, nh, nw)
        if resized:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.proj(y)], 1))


class MobileViT(nn.Module):
    def __init__(self, widths: tuple[int, ...], dims: tuple[int, ...], layers: tuple[int, ...], classes: int) -> None:
        super().__init__()
        c0, c1, c2, c3, c4, c5 = widths
        self.stem = _conv_bn(3, c0, 3, 2, act=nn.SiLU)
        mv2 = lambda a, b, s: InvertedResidual(a, 2 * a, b, 3, s, nn.SiLU, None)  # noqa: E731
        self.body = nn.Sequential(
            mv2(c0, c1, 1),
            mv2(c1, c2, 2), mv2(c2, c2, 1),
            mv2(c2, c3, 2), MobileViTBlock(c3, dims[0], layers[0], 2),
            mv2(c3, c4, 2), MobileViTBlock(c4, dims[1], layers[1], 2),
            mv2(c4, c5, 2), MobileViTBlock(c5, dims[2], layers[2], 2),
        )
        self.last = _conv_bn(c5, 4 * c5, 1, act=nn.SiLU)
        self.head = nn.Linear(4 * c5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.body(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# -- ViT --------------------------------------------------------------------------------------


class ViT(nn.Module):
    def __init__(self, side: int, patch: int, d: int, layers: int, heads: int, classes: int) -> None:
        super().__init__()
        tokens = (side // patch) ** 2 + 1
        self.embed = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        self.layers = nn.Sequential(*[TransformerLayer(d, heads, 4 * d, nn.GELU, 1e-6) for _ in range(layers)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.layers(t))[:, 0])


# -- builders ---------------------------------------------------------------------------------


def _finish(name: str, module: nn.Module, shape: tuple[int, int, int, int]) -> VisionCase:
    settle_batchnorm(module, shape)
    return VisionCase(name, module, (images(shape, 0),), shape)


def _shape(scale: str, batch: int, tiny: int = 32) -> tuple[int, int, int, int]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    side = tiny if scale == "tiny" else 224
    return (batch, 3, side, side)


def resnet(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    if scale == "tiny":
        module = ResNet((8, 16, 32), (1, 1, 1), 10)
    else:
        module = ResNet((64, 128, 256, 512), (2, 2, 2, 2), 1000)  # ResNet-18
    return _finish("resnet", module, _shape(scale, batch))


def mobilenet_v3(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    if scale == "tiny":
        blocks = [(3, 16, 16, True, "RE", 2), (3, 32, 16, False, "RE", 1), (5, 48, 24, True, "HS", 2)]
        module = MobileNetV3(blocks, 64, 10)
    else:
        module = MobileNetV3(MobileNetV3.SMALL, 1024, 1000)
    return _finish("mobilenet_v3", module, _shape(scale, batch))


def efficientnet(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    if scale == "tiny":
        module = EfficientNet([(1, 3, 1, 8, 1), (4, 3, 2, 16, 2), (4, 5, 2, 24, 1)], 8, 64, 10)
    else:
        module = EfficientNet(EfficientNet.B0, 32, 1280, 1000)
    return _finish("efficientnet", module, _shape(scale, batch))


def convnext(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    if scale == "tiny":
        module = ConvNeXt((16, 32), (1, 1), 10)
    else:
        module = ConvNeXt((40, 80, 160, 320), (2, 2, 6, 2), 1000)  # ConvNeXt-Atto
    return _finish("convnext", module, _shape(scale, batch))


def swin(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    if scale == "tiny":
        module = Swin(16, (2, 2), (2, 4), 4, 10)
    else:
        module = Swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 1000)  # Swin-T
    return _finish("swin", module, _shape(scale, batch))


def mobilevit(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    if scale == "tiny":
        # 48 pixels: the last stage is 3 x 3, which is resized to the patch grid (4 x 4)
        module = MobileViT((8, 8, 16, 16, 24, 32), (16, 24, 32), (1, 1, 1), 10)
        shape = _shape(scale, batch, tiny=48)
    else:
        module = MobileViT((16, 16, 24, 48, 64, 80), (64, 80, 96), (2, 4, 3), 1000)  # MobileViT-XXS
        shape = _shape(scale, batch)
    return _finish("mobilevit", module, shape)


def vit(scale: str = "tiny", batch: int = 2) -> VisionCase:
    torch.manual_seed(0)
    shape = _shape(scale, batch)
    if scale == "tiny":
        module = ViT(shape[-1], 8, 32, 2, 2, 10)  # 16 patches + the class token
    else:
        module = ViT(shape[-1], 16, 768, 12, 12, 1000)  # ViT-B/16: 197 tokens
    return _finish("vit", module, shape)


VISION_MODELS: dict[str, Any] = {
    "resnet": resnet,
    "mobilenet_v3": mobilenet_v3,
    "efficientnet": efficientnet,
    "convnext": convnext,
    "swin": swin,
    "mobilevit": mobilevit,
    "vit": vit,
}
CNN_MODELS = ("resnet", "mobilenet_v3", "efficientnet")  # all convolution: the int8-faster-than-float goal


def build(name: str, scale: str = "tiny", batch: int = 2) -> VisionCase:
    if name not in VISION_MODELS:
        raise KeyError(f"no vision model {name!r}; models: {', '.join(VISION_MODELS)}")
    return VISION_MODELS[name](scale, batch)
