"""Tests of `CompiledModel.save` and `requant.load`: a reload gives the same outputs,
saving is deterministic (byte-identical files, also across compiles and after a
reload), and a directory that is not a complete, untouched save is refused with an
error naming the file."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import requant
from requant.compiler import FORMAT_VERSION, MANIFEST, MODEL_FILE, PIPELINE_FILE
from requant.errors import RequantError
from requant.targets import get_target


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(32, 64)  # 8 KiB of weights: large enough for external data
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


EXAMPLE = (torch.randn(3, 32, generator=torch.Generator().manual_seed(1)),)


def compile_net() -> requant.CompiledModel:
    calib = [(torch.randn(3, 32, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    return requant.compile(Net().eval(), "cpu-fp32", example_inputs=EXAMPLE, calibration=calib)


@pytest.fixture(scope="module")
def compiled() -> requant.CompiledModel:
    return compile_net()


@pytest.fixture
def saved(compiled, tmp_path) -> Path:
    return compiled.save(tmp_path / "model")


def files_of(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def same_files(a: Path, b: Path) -> bool:
    return files_of(a) == files_of(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_of(a))


def test_save_writes_model_pipeline_and_manifest(saved: Path, compiled) -> None:
    assert files_of(saved) == [MANIFEST, MODEL_FILE, PIPELINE_FILE]
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["requant_version"] == requant.__version__
    assert manifest["target"] == "cpu-fp32" and manifest["backend"] == "onnx"
    assert set(manifest["files"]) == {MODEL_FILE, PIPELINE_FILE}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [3, 32]}]
    assert manifest["outputs"][0]["shape"] == [3, 5]
    assert manifest["options"]["holdout"] == 0.2
    pipeline = json.loads((saved / PIPELINE_FILE).read_text())
    target = get_target("cpu-fp32")
    steps = [s.name for s in target.resolve_steps(target.resolve_options({}))]  # the target table's, whatever it holds
    assert steps[0] == "canonicalize" and steps[-2:] == ["cse", "dce"]
    assert [s["name"] for s in pipeline["steps"]] == steps
    assert [r["name"] for r in pipeline["ran"]] == steps
    assert "seconds" not in pipeline["ran"][0]  # times would break determinism
    assert "saved to" in compiled.report()


def test_load_gives_the_same_outputs(saved: Path, compiled) -> None:
    loaded = requant.load(saved)
    x = torch.randn(3, 32)
    np.testing.assert_array_equal(loaded(x)[0], compiled(x)[0])
    assert loaded.target == "cpu-fp32" and loaded.input_names == ["x"]
    assert loaded.graph.op_histogram() == compiled.graph.op_histogram()
    text = loaded.report()
    assert "loaded from" in text and "canonicalize" in text


def test_same_model_saves_byte_identical_files(compiled, tmp_path) -> None:
    a = compiled.save(tmp_path / "a")
    b = compiled.save(tmp_path / "b")
    assert same_files(a, b)
    c = compile_net().save(tmp_path / "c")  # a second compile of the same model
    assert same_files(a, c)
    d = requant.load(a).save(tmp_path / "d")  # and a reload saved again
    assert same_files(a, d)


def test_saving_over_a_previous_save_replaces_it(compiled, tmp_path) -> None:
    out = compiled.save(tmp_path / "m", external_data=True)
    assert (out / "model.onnx.data").exists()
    compiled.save(out)
    assert files_of(out) == [MANIFEST, MODEL_FILE, PIPELINE_FILE]  # the stale weights file is gone
    requant.load(out)


def test_external_data_is_hashed_and_loads(compiled, tmp_path) -> None:
    out = compiled.save(tmp_path / "ext", external_data=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert "model.onnx.data" in manifest["files"] and manifest["files"]["model.onnx.data"]["bytes"] > 8192
    x = torch.randn(3, 32)
    np.testing.assert_array_equal(requant.load(out)(x)[0], compiled(x)[0])
    assert same_files(out, compiled.save(tmp_path / "ext2", external_data=True))
    data = out / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(RequantError, match=r"model\.onnx\.data does not match its sha256"):
        requant.load(out)


@pytest.mark.parametrize("name", [MODEL_FILE, PIPELINE_FILE])
def test_a_tampered_file_is_refused_by_name(saved: Path, name: str) -> None:
    path = saved / name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(RequantError, match=f"{name} does not match its sha256"):
        requant.load(saved)


@pytest.mark.parametrize("name", [MODEL_FILE, PIPELINE_FILE])
def test_a_missing_file_is_refused_by_name(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(RequantError, match=f"{name} is missing"):
        requant.load(saved)


def test_a_missing_manifest_is_refused(saved: Path) -> None:
    (saved / MANIFEST).unlink()
    with pytest.raises(RequantError, match="manifest.json is missing"):
        requant.load(saved)


def test_not_a_directory_is_refused(saved: Path, tmp_path) -> None:
    with pytest.raises(RequantError, match="not a directory"):
        requant.load(saved / MODEL_FILE)
    with pytest.raises(RequantError, match="no such directory"):
        requant.load(tmp_path / "nowhere")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, "1", None])
def test_an_unknown_format_version_is_refused(saved: Path, version) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["format_version"] = version
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RequantError, match="manifest.json has format_version"):
        requant.load(saved)


def test_a_broken_or_foreign_manifest_is_refused(saved: Path) -> None:
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(RequantError, match="manifest.json is not valid JSON"):
        requant.load(saved)
    (saved / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(RequantError, match="not a requant-compiled-model manifest"):
        requant.load(saved)


def test_manifest_entries_outside_the_directory_are_refused(saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["files"]["../escape.onnx"] = {"sha256": "0" * 64, "bytes": 1}
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RequantError, match="'../escape.onnx', which is not a file in the directory"):
        requant.load(saved)


def test_saving_onto_a_file_is_an_error(compiled, tmp_path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(RequantError, match="not a directory"):
        compiled.save(target)
