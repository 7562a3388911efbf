"""The torch frontend on the ops vision models export that had no lowering: interpolation
(every F.interpolate mode -> one Resize, against torch's own output), slice assignment
(slice_scatter / select_scatter, Swin's shifted-window mask), and as_strided (a
channels-last ConvNeXt head's re-striding, and real windows over the storage).

Tolerances: nearest and the scatters copy values (exact); interpolation sums a few
products in float64 (requant) or float32 (torch): within 1e-5 of the output's scale."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from requant.errors import UnsupportedOpError
from requant.frontends import from_torch
from requant.frontends.torch_aten_strided import storage_gather_indices
from requant.ir import run
from torch import nn
from torch.nn import functional as F

_F32_INTERP = 1e-5  # |requant - torch| / max|torch|


class Interpolate(nn.Module):
    """F.interpolate with each of `variants` (keyword sets) on the same input: one export
    checks them all."""

    def __init__(self, *variants: dict) -> None:
        super().__init__()
        self.variants = variants

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.interpolate(x, **kw) for kw in self.variants)


def _convert_and_run(model: nn.Module, x: torch.Tensor, dynamic_dims: dict | None = None) -> tuple:
    g = from_torch(model, (x,), dynamic_dims=dynamic_dims)
    got = run(g, {g.inputs[0].name: x.numpy()})
    want = model(x)
    want = [t.detach().numpy() for t in (want if isinstance(want, tuple) else (want,))]
    return g, got if len(got) > 1 else got[0], want if len(want) > 1 else want[0]


_VARIANTS = {
    2: [{"scale_factor": 2, "mode": "nearest"}, {"size": (7, 5), "mode": "nearest"},
        {"size": (7, 3), "mode": "nearest-exact"}, {"scale_factor": 2, "mode": "bilinear"},
        {"size": (5, 11), "mode": "bilinear"}, {"size": (5, 7), "mode": "bilinear", "align_corners": True},
        {"scale_factor": 1.5, "mode": "bicubic"}, {"size": (4, 3), "mode": "bilinear", "antialias": True},
        {"size": (3, 5), "mode": "bicubic", "antialias": True}],
    1: [{"scale_factor": 2.5, "mode": "linear"}, {"size": 9, "mode": "linear", "align_corners": True},
        {"size": 5, "mode": "nearest"}],
    3: [{"scale_factor": (2, 1.5, 0.5), "mode": "trilinear"}, {"size": (3, 5, 7), "mode": "nearest-exact"}],
}
_SHAPES = {1: (2, 3, 8), 2: (2, 3, 8, 10), 3: (1, 2, 4, 6, 8)}


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_interpolate_is_one_resize_matching_torch(spatial: int) -> None:
    torch.manual_seed(0)
    variants = _VARIANTS[spatial]
    g, got, want = _convert_and_run(Interpolate(*variants), torch.randn(*_SHAPES[spatial]))
    assert g.op_histogram() == {"Resize": len(variants)}
    assert all(node.attrs["axes"] == list(range(2, 2 + spatial)) for node in g)
    for kw, a, b in zip(variants, got, want):
        assert a.shape == b.shape, kw
        if kw["mode"].startswith("nearest"):
            np.testing.assert_array_equal(a, b, err_msg=str(kw))
        else:
            assert np.max(np.abs(a - b)) <= _F32_INTERP * np.max(np.abs(b)), kw


def test_interpolate_keeps_a_symbolic_batch() -> None:
    g, got, want = _convert_and_run(Interpolate({"scale_factor": 2, "mode": "bilinear"}), torch.randn(3, 2, 4, 4),
                                    dynamic_dims={"x": {0: "batch"}})
    assert g.outputs[0].type.shape == ("batch", 2, 8, 8)
    assert np.max(np.abs(got - want)) <= _F32_INTERP * np.max(np.abs(want))


def test_antialias_with_align_corners_is_refused() -> None:
    with pytest.raises(UnsupportedOpError, match="antialiased interpolation with align_corners=True"):
        from_torch(Interpolate({"size": (3, 3), "mode": "bilinear", "antialias": True, "align_corners": True}),
                   (torch.randn(1, 1, 8, 8),))


class SwinMask(nn.Module):
    """Swin's shifted-window attention mask: nine slice assignments into zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros((1, x.shape[-2], x.shape[-1], 1))
        label = 0
        for h in (slice(0, -4), slice(-4, -2), slice(-2, None)):
            for w in (slice(0, -4), slice(-4, -2), slice(-2, None)):
                mask[:, h, w, :] = label
                label += 1
        return x + mask.permute(0, 3, 1, 2)


class StridedAssign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, :, 1::3] = x[:, :, 0:6:2] * 3
        y[:, 0] = x[:, 1] - 1
        return y


@pytest.mark.parametrize("model,shape,ops", [
    (SwinMask(), (2, 3, 8, 8), {"Concat", "Slice"}),
    (StridedAssign(), (2, 3, 9), {"ScatterND"}),
])
def test_slice_assignment_matches_torch(model: nn.Module, shape: tuple, ops: set) -> None:
    torch.manual_seed(1)
    g, got, want = _convert_and_run(model, torch.randn(*shape))
    assert ops <= set(g.op_histogram())
    np.testing.assert_array_equal(got, want)


class ChannelsLastHead(nn.Module):
    """A ConvNeXt-style head on a channels-last map: torch.export re-strides the pooled
    [B, C, 1, 1] tensor with as_strided."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 2, 3, 1) * 2).permute(0, 3, 1, 2)
        y = F.adaptive_avg_pool2d(x, 1).permute(0, 2, 3, 1)
        return F.layer_norm(y, (8,)).permute(0, 3, 1, 2).flatten(1)


def test_as_strided_restride_makes_no_node_with_a_symbolic_batch() -> None:
    x = torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    exported = torch.export.export(ChannelsLastHead(), (x,), strict=False)
    from requant.frontends.torch_frontend import decomposition_table

    ops = {str(n.target) for n in exported.run_decompositions(decomposition_table()).graph.nodes}
    assert "aten.as_strided.default" in ops  # what the lowering below is for
    g, got, want = _convert_and_run(ChannelsLastHead(), x, dynamic_dims={"x": {0: "batch"}})
    assert "Gather" not in g.op_histogram()
    assert g.inputs[0].type.shape[0] == "batch"
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


class Windows(nn.Module):
    """Overlapping windows of 4, every 2 elements, over each row of a [2, 12] tensor."""

    def __init__(self, offset: int = 0) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.as_strided((2, 5, 4), (12, 2, 1), self.offset) + 1


def test_as_strided_windows_gather_from_the_storage() -> None:
    g, got, want = _convert_and_run(Windows(), torch.randn(2, 12))
    assert g.op_histogram() == {"Reshape": 1, "Gather": 1, "Add": 1}
    np.testing.assert_array_equal(got, want)


def test_as_strided_past_the_input_is_refused() -> None:
    # the last window of the second row would end one element past the input's storage
    with pytest.raises(UnsupportedOpError, match="as_strided reading outside its input: storage position 24"):
        from_torch(Windows(offset=1), (torch.randn(2, 12),))


def test_storage_gather_indices() -> None:
    # x: a transposed 2 x 3 (strides 1, 2); the result walks the storage in order
    idx = storage_gather_indices((2, 3), (1, 2), 0, (6,), (1,), 0)
    np.testing.assert_array_equal(idx, [0, 3, 1, 4, 2, 5])
    with pytest.raises(ValueError, match="storage position 6"):
        storage_gather_indices((2, 3), (3, 1), 0, (2,), (6,), 0)
