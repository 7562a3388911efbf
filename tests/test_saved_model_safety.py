"""Saved models as a hostile or careless user meets them (issue 16): a saved directory
cannot make `requant.load` run code this user's requant did not build, saving cannot
write through symlinks or destroy the user's files, an interrupted save leaves the
earlier one intact, and every malformed manifest field is a one-line `SavedModelError`.

One small ONNX save and one TVM (LLVM) save are built per module; each test copies
what it tampers with."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import requant
import requant.ir as ir
from requant.compiler import MANIFEST, MODEL_FILE, PIPELINE_FILE
from requant.errors import RequantError, SavedModelError, TrustError
from requant.manifest import sha256_file
from requant.trust import key_path

GRAPH = """
graph main(%x: f32[2,4]) -> (%y) {
  const %w: f32[4,4] = [[1.0,2.0,0.0,0.0],[0.0,1.0,0.0,0.0],[0.0,0.0,1.0,0.5],[0.0,0.0,0.0,1.0]]
  %t = MatMul(%x, %w)
  %y = Relu(%t)
}
"""
OTHER = GRAPH.replace("[1.0,2.0,0.0,0.0]", "[3.0,0.0,0.0,0.0]")  # same signature, other weights
X = np.array([[1.0, -2.0, 3.0, 0.5], [0.0, 1.0, -1.0, 2.0]], np.float32)


@pytest.fixture(scope="module")
def onnx_model() -> requant.CompiledModel:
    return requant.compile(ir.parse(GRAPH), "cpu-fp32")


@pytest.fixture(scope="module")
def tvm_models(tmp_path_factory) -> dict[str, Path]:
    """Two TVM saves of graphs with the same signature: 'a' and 'b'."""
    root = tmp_path_factory.mktemp("tvm")
    return {name: requant.compile(ir.parse(text), "tvm-cpu-fp32").save(root / name)
            for name, text in (("a", GRAPH), ("b", OTHER))}


def copy_of(saved: Path, where: Path) -> Path:
    return Path(shutil.copytree(saved, where))


def read(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def write(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest))


def list_file(directory: Path, manifest: dict, name: str) -> None:
    path = directory / name
    manifest["files"][name] = {"sha256": sha256_file(path, "test"), "bytes": path.stat().st_size}


@pytest.fixture
def other_user(monkeypatch, tmp_path) -> Path:
    """Switch to another user's key (a fresh config directory)."""
    config = tmp_path / "other-user-config"
    monkeypatch.setenv("REQUANT_CONFIG_DIR", str(config))
    return config


# ----------------------------------------------------------------------------- 1. code execution


def test_an_onnx_save_turned_into_tvm_with_a_copied_library_is_refused(onnx_model, tvm_models, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "fp32")
    shutil.copyfile(tvm_models["a"] / "model.so", d / "model.so")
    m = read(d)
    m.update(backend="tvm", device="llvm", target="tvm-cpu-fp32")
    write(d, m)
    with pytest.raises(SavedModelError, match=r"manifest\.json does not list model\.so, which a tvm save holds"):
        requant.load(d)
    list_file(d, m, "model.so")  # the attacker lists it with its hash too
    write(d, m)
    with pytest.raises(TrustError, match=r"model\.so is native code that this user's requant did not build "
                                         r"\(its manifest's MAC does not verify"):
        requant.load(d)


def test_a_library_inside_an_onnx_save_is_refused_even_when_trusted(onnx_model, tvm_models, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "fp32")
    shutil.copyfile(tvm_models["a"] / "model.so", d / "model.so")
    m = read(d)
    list_file(d, m, "model.so")
    write(d, m)
    with pytest.raises(SavedModelError, match=r"lists model\.so \(native code\), which a onnx/cpu save never holds"):
        requant.load(d, trust_code=True)


def test_a_library_from_another_build_is_refused(tvm_models, tmp_path) -> None:
    d = copy_of(tvm_models["a"], tmp_path / "a")
    shutil.copyfile(tvm_models["b"] / "model.so", d / "model.so")
    with pytest.raises(SavedModelError, match=r"model\.so does not match its sha256"):
        requant.load(d)
    m = read(d)
    list_file(d, m, "model.so")  # hash updated to match the swapped library
    write(d, m)
    with pytest.raises(TrustError, match="MAC does not verify"):
        requant.load(d)


def test_a_save_built_here_loads_and_runs(tvm_models) -> None:
    loaded = requant.load(tvm_models["a"])
    assert loaded.stats["built_here"] is True
    w = np.array([[1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]], np.float32)
    expected = np.maximum(X @ w, 0)
    np.testing.assert_allclose(loaded(X)[0], expected, rtol=1e-6)


def test_native_code_of_another_user_needs_trust_code(tvm_models, other_user) -> None:
    with pytest.raises(TrustError, match=r"this user has no artifact key yet.*trust_code=True"):
        requant.load(tvm_models["a"])
    assert not other_user.exists()  # checking never creates a key
    requant.compile(ir.parse(OTHER), "cpu-fp32").save(other_user.parent / "theirs")  # now the other user has one
    with pytest.raises(TrustError, match=r"signed with another user's or machine's key.*trust_code=True"):
        requant.load(tvm_models["a"])
    trusted = requant.load(tvm_models["a"], trust_code=True)
    assert trusted.stats["built_here"] is False
    np.testing.assert_array_equal(trusted(X)[0], requant.load(tvm_models["a"], trust_code=True)(X)[0])


def test_onnx_saves_are_data_and_load_for_any_user(onnx_model, tmp_path, monkeypatch) -> None:
    d = onnx_model.save(tmp_path / "fp32")
    monkeypatch.setenv("REQUANT_CONFIG_DIR", str(tmp_path / "someone-else"))
    loaded = requant.load(d)
    assert loaded.stats["built_here"] is False
    np.testing.assert_array_equal(loaded(X)[0], onnx_model(X)[0])


def test_the_mac_covers_every_manifest_field(tvm_models, tmp_path) -> None:
    for field, value in (("options", {"threads": 1}), ("outputs", [{"name": "z", "dtype": "float32", "shape": [2, 4]}]),
                         ("requant_version", "0.0.0"), ("sizes", {"constants_before": 1})):
        d = copy_of(tvm_models["a"], tmp_path / field)
        m = read(d)
        assert m[field] != value
        m[field] = value
        write(d, m)
        with pytest.raises(TrustError, match="MAC does not verify"):
            requant.load(d)


def test_the_key_is_private_and_a_shared_key_is_refused(tvm_models) -> None:
    key = key_path()
    assert key.is_file() and (key.stat().st_mode & 0o777) == 0o600
    assert (key.parent.stat().st_mode & 0o077) == 0
    for saved in tvm_models.values():
        assert not any(key.read_bytes() in p.read_bytes() for p in saved.iterdir())  # never inside an artifact
    os.chmod(key, 0o644)
    try:
        with pytest.raises(TrustError, match="readable or writable by other users"):
            requant.load(tvm_models["a"])
    finally:
        os.chmod(key, 0o600)


# ----------------------------------------------------------------------------- 3. symlinks


def test_load_refuses_symlinks_without_reading_them(onnx_model, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "fp32")
    outside = tmp_path / "outside.onnx"
    shutil.move(d / MODEL_FILE, outside)
    (d / MODEL_FILE).symlink_to(outside)
    with pytest.raises(SavedModelError, match=r"model\.onnx is a symlink"):
        requant.load(d)
    (d / MODEL_FILE).unlink()
    (d / MODEL_FILE).symlink_to("/proc/self/pagemap")  # reading it would never end
    started = time.monotonic()
    with pytest.raises(SavedModelError, match="symlink"):
        requant.load(d)
    assert time.monotonic() - started < 10


def test_load_refuses_a_fifo_without_blocking(onnx_model, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "fp32", external_data=True)
    (d / "model.onnx.data").unlink()
    os.mkfifo(d / "model.onnx.data")
    with pytest.raises(SavedModelError, match=r"model\.onnx\.data is not a regular file"):
        requant.load(d)


@pytest.mark.parametrize("name", [MODEL_FILE, PIPELINE_FILE, MANIFEST])
def test_saving_never_writes_through_a_symlink(onnx_model, tmp_path, name) -> None:
    d = onnx_model.save(tmp_path / "fp32")
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    (d / name).unlink()
    (d / name).symlink_to(victim)
    with pytest.raises(SavedModelError, match="not an earlier requant save"):
        onnx_model.save(d)
    onnx_model.save(d, overwrite=True)
    assert victim.read_text() == "the user's file\n"
    assert not (d / name).is_symlink()
    requant.load(d)


def test_saving_into_a_symlinked_directory_is_refused(onnx_model, tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SavedModelError, match="is a symlink"):
        onnx_model.save(tmp_path / "link", overwrite=True)
    assert list(real.iterdir()) == []


# ----------------------------------------------------------------------------- 4. data loss


def test_saving_over_the_source_model_is_refused_even_with_overwrite(onnx_model, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "src")
    source = d / MODEL_FILE
    before = source.read_bytes()
    cm = requant.compile(str(source), "cpu-fp32")
    for overwrite in (False, True):
        with pytest.raises(SavedModelError, match="holds the model being compiled"):
            cm.save(d, overwrite=overwrite)
    assert source.read_bytes() == before


def test_a_directory_of_user_files_is_kept_unless_forced(onnx_model, tmp_path) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "model.onnx.data").write_bytes(b"the user's weights")
    with pytest.raises(SavedModelError, match="not an earlier requant save.*overwrite=True"):
        onnx_model.save(d)
    assert (d / "model.onnx.data").read_bytes() == b"the user's weights"
    onnx_model.save(d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == [MANIFEST, MODEL_FILE, PIPELINE_FILE]


def test_an_earlier_save_and_an_empty_directory_are_replaced(onnx_model, tvm_models, tmp_path) -> None:
    d = copy_of(tvm_models["a"], tmp_path / "was-tvm")
    onnx_model.save(d)  # an earlier save of another backend: replaced whole
    assert not (d / "model.so").exists()
    (tmp_path / "empty").mkdir()
    requant.load(onnx_model.save(tmp_path / "empty"))


def test_an_interrupted_save_leaves_the_earlier_save_intact(onnx_model, tmp_path, monkeypatch) -> None:
    d = onnx_model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    other = requant.compile(ir.parse(OTHER), "cpu-fp32")
    import requant.compiler as compiler

    def interrupted(obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(compiler, "_dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        other.save(d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging directory left
    np.testing.assert_array_equal(requant.load(d)(X)[0], onnx_model(X)[0])


_SAVE_LOOP = """
import sys, requant, requant.ir as ir
models = [requant.compile(ir.parse(t), "cpu-fp32") for t in (sys.argv[2], sys.argv[3])]
print("ready", flush=True)
i = 0
while True:
    models[i % 2].save(sys.argv[1], external_data=True)
    i += 1
"""


def test_a_save_killed_at_any_moment_leaves_a_complete_save(onnx_model, tmp_path) -> None:
    d = tmp_path / "m"
    models = {name: requant.compile(ir.parse(text), "cpu-fp32") for name, text in (("a", GRAPH), ("b", OTHER))}
    models["a"].save(d, external_data=True)
    expected = [m(X)[0] for m in models.values()]
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(d), GRAPH, OTHER], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for delay in (0.05, 0.13, 0.21):
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGSTOP)  # freeze it mid-save, then check what is on disk
            y = requant.load(d)(X)[0]
            assert any(np.array_equal(y, e) for e in expected)
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        proc.kill()
        proc.wait()
    y = requant.load(d)(X)[0]  # killed outright: still one complete save
    assert any(np.array_equal(y, e) for e in expected)
    models["b"].save(d)  # the next save removes what the killed process left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ----------------------------------------------------------------------------- 5, 9. fields


def _mutations() -> dict[str, tuple[object, object, str]]:
    """(field path, value, expected message) for malformed manifests."""
    return {
        "threads huge": (("options", "threads"), 100000, "options.threads must be 0"),
        "threads negative": (("options", "threads"), -1, "options.threads must be 0"),
        "threads a string": (("options", "threads"), "8", "options.threads must be an int"),
        "inputs not a list": (("inputs",), {"x": 1}, "field inputs must be a non-empty list"),
        "unknown dtype": (("inputs", 0, "dtype"), "float33", "is not a dtype requant knows"),
        "negative dim": (("inputs", 0, "shape"), [-2, 4], "dims are ints >= 0"),
        "input name twice": (("inputs",), [{"name": "x", "dtype": "float32", "shape": [2, 4]}] * 2,
                             "field inputs names 'x' twice"),
        "file entry": (("files", MODEL_FILE), {"sha256": "xyz", "bytes": 3}, "must be {sha256"),
        "bytes negative": (("files", MODEL_FILE, "bytes"), -5, "must be {sha256"),
        "sizes": (("sizes",), {"constants_before": "big"}, "field sizes must map names"),
        "backend": (("backend",), "pickle", "names backend 'pickle'"),
        "device": (("device",), "cuda", "names device 'cuda' for backend onnx"),
        "target": (("target",), ["cpu-fp32"], "field target must be a non-empty string"),
        "simulated": (("simulated",), "yes", "field simulated must be true or false"),
        "options": (("options",), [1], "field options must be an object"),
        "format_version": (("format_version",), True, "has format_version True"),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_malformed_manifest_fields_are_refused_by_name(onnx_model, tmp_path, case) -> None:
    path, value, message = _mutations()[case]
    d = onnx_model.save(tmp_path / "m")
    m = read(d)
    node = m
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    write(d, m)
    with pytest.raises(SavedModelError) as info:
        requant.load(d)
    assert "\n" not in str(info.value) and str(d) in str(info.value)
    if message:
        assert message in str(info.value)


def test_threads_from_the_manifest_can_be_overridden(onnx_model, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "m")
    m = read(d)
    m["options"]["threads"] = 100000
    write(d, m)
    with pytest.raises(SavedModelError, match=r"requant.load\(\.\.\., threads=N\)"):
        requant.load(d)
    with pytest.raises(RequantError, match="threads must be 0"):
        requant.load(onnx_model.save(tmp_path / "ok"), threads=-3)
    np.testing.assert_array_equal(requant.load(onnx_model.save(tmp_path / "ok2"), threads=1)(X)[0], onnx_model(X)[0])


@pytest.mark.parametrize("pipeline", [[1, 2], {"ran": {"name": "x"}}, {"ran": [{"name": "dce", "nodes_before": "3"}]},
                                      {"ran": [{"name": "dce", "stats": [1]}]}, {"steps": [7]}])
def test_malformed_pipeline_json_is_refused(onnx_model, tmp_path, pipeline) -> None:
    d = onnx_model.save(tmp_path / "m")
    (d / PIPELINE_FILE).write_text(json.dumps(pipeline))
    m = read(d)
    list_file(d, m, PIPELINE_FILE)
    write(d, m)
    with pytest.raises(SavedModelError, match=r"pipeline\.json"):
        requant.load(d)


def test_a_huge_manifest_is_refused_before_parsing(onnx_model, tmp_path) -> None:
    d = onnx_model.save(tmp_path / "m")
    (d / MANIFEST).write_bytes(b"[" * (17 << 20))
    with pytest.raises(SavedModelError, match="more than the"):
        requant.load(d)
    (d / MANIFEST).write_bytes(b"[" * 100000 + b"]" * 100000)  # deep nesting: RecursionError in json
    with pytest.raises(SavedModelError, match="not valid JSON|is not a requant-compiled-model manifest"):
        requant.load(d)
