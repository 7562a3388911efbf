"""tools/bench/tvm_cuda_gpu.py without a GPU: the two stages' arguments, the bundle's
manifest check (sizes, sha256, format), the table, that the module imports neither tvm
nor torch, and (where TVM is installed) the `run` stage end to end on a tiny CPU (LLVM)
bundle: child process per row, interpreter check, exit status. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from requant.tools.bench import tvm_cuda_gpu as gpu

BATCH, SEQ, WIDTH = 4, 8, 6


def test_stage_arguments_and_defaults() -> None:
    prep = gpu._parser().parse_args(["prepare"])
    assert (prep.stage, prep.out, prep.batch, prep.seq, prep.target) == ("prepare", ".gpu", 32, 64, "cuda-int8")
    assert prep.variants.split(",") == list(gpu.VARIANTS)
    assert prep.python == "3.12" and prep.max_mib < 64 - 8
    run = gpu._parser().parse_args(["run", "--bundle", "b", "--repeat", "7", "--no-torch"])
    assert (run.stage, run.bundle, run.repeat, run.no_torch, run.report) == ("run", "b", 7, True, None)
    with pytest.raises(SystemExit):
        gpu._parser().parse_args([])  # a stage is required
    with pytest.raises(SystemExit):
        gpu._parser().parse_args(["prepare", "--target", "cpu-int8"])


def _fake_bundle(root: Path, *, artifact: bytes = b"library") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", input_ids=np.ones((BATCH, SEQ), np.int64),
             attention_mask=np.ones((BATCH, SEQ), np.int64),
             torch_fp32_embeddings=rng.normal(size=(BATCH, WIDTH)).astype(np.float32))
    (root / "cuda-int8.tar.gz").write_bytes(artifact)
    manifest = {"format": gpu.BUNDLE_FORMAT, "batch": BATCH, "seq": SEQ, "model_config": {"hidden_size": WIDTH},
                "data": "data.npz", "files": gpu._bundle_files(root),
                "artifacts": [{"name": "cuda-int8", "file": "cuda-int8.tar.gz", "device": "cuda",
                               "options": {"smooth_alpha": 0.7}, "compile_s": 1.0}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_read_bundle_accepts_a_bundle_that_matches_its_manifest(tmp_path) -> None:
    manifest = gpu.read_bundle(_fake_bundle(tmp_path / "b"))
    assert [a["name"] for a in manifest["artifacts"]] == ["cuda-int8"]
    assert set(manifest["files"]) == {"data.npz", "cuda-int8.tar.gz"}


def test_read_bundle_names_a_changed_or_missing_file(tmp_path) -> None:
    root = _fake_bundle(tmp_path / "b")
    (root / "cuda-int8.tar.gz").write_bytes(b"LIBRARY")  # same size, other bytes
    with pytest.raises(gpu.BundleError, match=r"cuda-int8\.tar\.gz: sha256"):
        gpu.read_bundle(root)
    gpu.read_bundle(root, verify=False)  # sizes only
    (root / "data.npz").unlink()
    with pytest.raises(gpu.BundleError, match=r"data\.npz: missing"):
        gpu.read_bundle(root, verify=False)


def test_read_bundle_refuses_no_manifest_or_another_format(tmp_path) -> None:
    with pytest.raises(gpu.BundleError, match="prepare"):
        gpu.read_bundle(tmp_path)
    root = _fake_bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(gpu.BundleError, match="format"):
        gpu.read_bundle(root)


def test_table_has_the_check_the_ratio_and_the_rows_that_did_not_run(tmp_path) -> None:
    manifest = gpu.read_bundle(_fake_bundle(tmp_path / "b"))
    rows = [gpu.Row("cuda-int8", gpu._label("cuda-int8"), 2.0, 1.9, 3e-6, 0.99, 0.95, 1.0),
            gpu.Row("cuda-int8-no-smooth", gpu._label("cuda-int8-no-smooth"), 2.0, 1.9, 5e-2, 0.9, 0.8, 0.5),
            gpu.Row("torch-fp32", gpu._label("torch-fp32"), error="RuntimeError: torch sees no CUDA GPU\nmore"),
            gpu.Row("torch-fp16", gpu._label("torch-fp16"), 3.0, 2.9)]
    table = gpu.format_table(manifest, "Some GPU", rows, repeat=9)
    assert table.startswith(f"all-MiniLM-L6-v2, batch {BATCH} x {SEQ} tokens, Some GPU")
    assert "requant cuda-int8 no-smooth" in table
    lines = {line.split("  ")[0]: line for line in table.splitlines()}
    assert "3.0e-06 PASS" in lines["requant cuda-int8"] and "1.50x" in lines["requant cuda-int8"]
    assert "5.0e-02 FAIL" in lines["requant cuda-int8 no-smooth"]
    assert lines["torch fp32 (random w.)"].endswith("not run: RuntimeError: torch sees no CUDA GPU")
    assert [r.passed for r in rows] == [True, False, None, None]


def test_the_module_imports_neither_tvm_nor_torch() -> None:
    code = ("import sys, requant.tools.bench.tvm_cuda_gpu\n"
            "print(sorted(m for m in ('tvm', 'tvm_ffi', 'torch', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _tiny_cpu_bundle(root: Path) -> np.ndarray:
    """A bundle whose one LLVM artifact maps (ids, mask) to [b, s, WIDTH] float32, with
    its interpreter output: what `prepare --target tvm-cpu-int8` writes, minus MiniLM."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    scale = np.arange(1, WIDTH + 1, dtype=np.float32)
    bb = relax.BlockBuilder()
    ids = relax.Var("input_ids", relax.TensorType((BATCH, SEQ), "int64"))
    mask = relax.Var("attention_mask", relax.TensorType((BATCH, SEQ), "int64"))
    with bb.function("main", [ids, mask]):
        with bb.dataflow():
            x = relax.op.expand_dims(relax.op.astype(relax.op.add(ids, mask), "float32"), [2])
            out = bb.emit_output(relax.op.multiply(x, relax.const(scale)))
        bb.emit_func_output(out)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (BATCH, SEQ)), "attention_mask": np.ones((BATCH, SEQ), np.int64)}
    expected = ((feeds["input_ids"] + 1).astype(np.float32)[..., None] * scale).astype(np.float32)
    work = root / "work"
    work.mkdir(parents=True)
    tvm.compile(bb.get(), "llvm").export_library(str(work / "model.so"))
    np.save(work / "interpreter.npy", expected)
    with tarfile.open(root / "tvm-cpu-int8.tar.gz", "w:gz") as tar:
        for name in ("model.so", "interpreter.npy"):
            tar.add(work / name, arcname=name)
    np.savez(root / "data.npz", **feeds,
             torch_fp32_embeddings=expected.mean(axis=1) + rng.normal(0, 0.01, (BATCH, WIDTH)).astype(np.float32))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    manifest = {"format": gpu.BUNDLE_FORMAT, "batch": BATCH, "seq": SEQ, "model_config": {}, "data": "data.npz",
                "files": gpu._bundle_files(root),
                "artifacts": [{"name": "tvm-cpu-int8", "file": "tvm-cpu-int8.tar.gz", "device": "llvm"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return expected


def test_run_stage_end_to_end_on_a_tiny_cpu_bundle(tmp_path) -> None:
    _tiny_cpu_bundle(tmp_path / "b")
    report = tmp_path / "table.txt"
    proc = subprocess.run([sys.executable, "-m", "requant.tools.bench.tvm_cuda_gpu", "run", "--bundle",
                           str(tmp_path / "b"), "--repeat", "2", "--no-torch", "--report", str(report)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = report.read_text()
    row = next(line for line in table.splitlines() if line.startswith("requant tvm-cpu-int8"))
    assert "PASS" in row and "not run" not in row
