"""The TVM targets through the public API (requant.compile / save / load) on a small
torch model: tvm-cpu-* run and match float, cuda-* produce a library and CUDA source
without a GPU, builds are specialised to the example inputs' sizes (with a clear error
for other sizes, and static_shapes=False / dims= to choose), and a machine without
nvcc gets an error saying how to fix it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

import requant  # noqa: E402
from requant.backends.tvm import cuda as tcuda  # noqa: E402
from requant.errors import RequantError  # noqa: E402

nn = torch.nn


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.norm, self.fc2 = nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(torch.nn.functional.gelu(self.fc1(x))))


def _batches(n: int, rows: int = 4) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(rows, 64, generator=gen),) for _ in range(n)]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


# fp32: float32 rounding only; int8: a floor well under what W8A8 gives on this model
@pytest.mark.parametrize("target, min_cosine", [("tvm-cpu-fp32", 0.999999), ("tvm-cpu-int8", 0.999)])
def test_cpu_targets_run_match_float_and_reload(target: str, min_cosine: float, tmp_path) -> None:
    model = Mlp().eval()
    calib = _batches(4)
    cm = requant.compile(model, target, example_inputs=calib[0], calibration=calib)
    x = calib[-1][0]
    y, ref = cm(x)[0], model(x).detach().numpy()
    assert _cosine(y, ref) >= min_cosine
    if target == "tvm-cpu-fp32":
        assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    report = cm.report()
    assert "backend tvm" in report and "TVM library (LLVM)" in report
    saved = cm.save(tmp_path / target)
    assert {"model.so", "model.onnx", "manifest.json", "pipeline.json"} == {p.name for p in saved.iterdir()}
    loaded = requant.load(saved)
    np.testing.assert_array_equal(loaded(x)[0], y)
    assert loaded.graph.op_histogram() == cm.graph.op_histogram()
    with pytest.raises(RequantError, match="runs on the tvm backend"):
        cm.onnx_model  # noqa: B018


def _copy_at(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of `x` whose data starts `offset` bytes past a 64-byte boundary."""
    buf = np.empty(x.size + 32, x.dtype)
    start = (-buf.ctypes.data // x.itemsize) % (64 // x.itemsize) + offset // x.itemsize
    out = buf[start:start + x.size].reshape(x.shape)
    out[...] = x
    assert out.ctypes.data % 64 == offset
    return out


def test_cpu_build_reads_any_numpy_input_and_leaves_it_unchanged(monkeypatch) -> None:
    """Aligned arrays go to TVM without a copy; misaligned and read-only ones are copied
    once (TVM refuses them), strided ones made contiguous: the same outputs either way,
    and the input is not written."""
    import tvm

    model = Mlp().eval()
    x = _batches(1)[0][0].numpy()
    cm = requant.compile(model, "tvm-cpu-fp32", example_inputs=(torch.from_numpy(x),))
    copies = []
    copy = tvm.runtime.tensor
    monkeypatch.setattr(tvm.runtime, "tensor", lambda *a, **k: copies.append(1) or copy(*a, **k))
    aligned = _copy_at(x, 0)
    want = cm(aligned)[0]
    assert copies == []
    np.testing.assert_array_equal(aligned, x)
    read_only = x.copy()
    read_only.flags.writeable = False
    for variant in (_copy_at(x, 4), read_only):
        copies.clear()
        np.testing.assert_array_equal(cm(variant)[0], want)
        assert copies == [1]
        np.testing.assert_array_equal(variant, x)
    # strided: numpy's contiguous copy goes as it is when it happens to be 64-byte aligned
    np.testing.assert_array_equal(cm(np.repeat(x, 2, axis=1)[:, ::2])[0], want)
    assert np.abs(want - model(torch.from_numpy(x)).detach().numpy()).max() <= 1e-5


def test_builds_are_specialised_to_the_example_inputs_unless_asked_otherwise() -> None:
    model = Mlp().eval()
    x4, x3 = torch.randn(4, 64), torch.randn(3, 64)
    dims = {"x": {0: "batch"}}
    cm = requant.compile(model, "tvm-cpu-fp32", example_inputs=(x4,), dynamic_dims=dims)
    assert cm.inputs[0]["shape"] == [4, 64]
    with pytest.raises(RequantError, match=r"must have shape \[4,64\], got \[3, 64\] \(this build is specialised "
                                           r"to batch=4: compile with dims="):
        cm(x3)
    bigger = requant.compile(model, "tvm-cpu-fp32", example_inputs=(x4,), dynamic_dims=dims, dims={"batch": 3})
    np.testing.assert_allclose(bigger(x3)[0], model(x3).detach().numpy(), rtol=1e-5, atol=1e-5)
    symbolic = requant.compile(model, "tvm-cpu-fp32", example_inputs=(x4,), dynamic_dims=dims, static_shapes=False)
    assert symbolic.inputs[0]["shape"] == ["batch", 64]
    for x in (x3, x4):
        np.testing.assert_allclose(symbolic(x)[0], model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


needs_nvcc = pytest.mark.skipif(tcuda.nvcc_status() is not None, reason="nvcc (CUDA toolkit) not installed")


@needs_nvcc
@pytest.mark.parametrize("target", ["cuda-int8", "cuda-fp8", "cuda-fp4"])
def test_cuda_targets_build_a_library_and_source_without_a_gpu(target: str, tmp_path) -> None:
    model = Mlp().eval()
    calib = _batches(3)
    cm = requant.compile(model, target, example_inputs=calib[0], calibration=calib)
    saved = cm.save(tmp_path / target)
    assert {"model.so", "model.cu", "model.fatbin"} <= {p.name for p in saved.iterdir()}
    source = (saved / "model.cu").read_text()
    assert "__global__" in source
    assert ("__dp4a(" in source) == (target == "cuda-int8")
    assert "TVM library (CUDA)" in cm.report()
    if not tcuda.gpu_present():
        assert cm.stats["accuracy"] == {"not_measured": cm._runtime.cannot_run()}
        with pytest.raises(RequantError, match="no CUDA GPU is present"):
            cm(calib[0][0])


def test_cuda_target_without_nvcc_says_how_to_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for var in ("TVM_NVCC", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tcuda, "_nvcc_candidates", lambda: [("PATH", str(tmp_path / "nvcc"))])
    assert tcuda.nvcc_status() is not None
    with pytest.raises(RequantError, match="target 'cuda-int8' is not available yet.*nvcc") as info:
        requant.compile(Mlp().eval(), "cuda-int8", example_inputs=_batches(1)[0], calibration=_batches(2))
    assert "PATH" in str(info.value) or "CUDA_HOME" in str(info.value)
