"""Tests of the `requant` command, run as a subprocess the way users run it
(`python -m requant.tools.cli`, and the installed `requant` script when present):
compile -> run -> inspect -> view on a small ONNX file, save/load round trips, the
one-line error contract for bad input (and tracebacks with --debug), and the progress
bar's hook into `requant.compile`."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import requant
from requant.tools.cli_progress import StageProgress, compile_stages, follow_compile

MODULE = (sys.executable, "-m", "requant.tools.cli")
VERBS = ("compile", "run", "inspect", "passes", "targets", "view", "demo")


def _script() -> tuple[str, ...] | None:
    """The installed console script, if this environment has one."""
    candidate = Path(sys.executable).with_name("requant")
    found = str(candidate) if candidate.exists() else shutil.which("requant")
    return (found,) if found else None


LAUNCHERS = [pytest.param(MODULE, id="python-m")]
if _script() is not None:
    LAUNCHERS.append(pytest.param(_script(), id="console-script"))


def cli(*args: str | os.PathLike, launcher: tuple[str, ...] = MODULE, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


class Block(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear: a small transformer MLP."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 32)
        self.down = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(self.norm(x))))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """model.onnx (exported by requant's own ONNX backend, batch dynamic), calib.npz
    (24 rows) and inputs.npz (5 rows)."""
    root = tmp_path_factory.mktemp("cli")
    float_model = requant.compile(Block().eval(), "cpu-fp32", example_inputs=(torch.randn(4, 8),),
                                  dynamic_dims={"x": {0: "batch"}})
    shutil.copy(float_model.save(root / "float") / "model.onnx", root / "model.onnx")
    rs = np.random.RandomState(0)
    np.savez(root / "calib.npz", x=rs.randn(24, 8).astype(np.float32))
    np.savez(root / "inputs.npz", x=rs.randn(5, 8).astype(np.float32))
    (root / "junk.onnx").write_text("this is not a model\n")
    (root / "junk.npz").write_text("this is not an npz\n")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def saved(work: Path) -> Path:
    ok(cli("compile", work / "model.onnx", "--target", "cpu-int8", "--calib", work / "calib.npz", "-o", work / "int8"))
    return work / "int8"


def inputs(work: Path) -> np.ndarray:
    with np.load(work / "inputs.npz") as data:
        return data["x"]


# ----------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str) -> None:
    result = ok(cli(verb, "--help"))
    assert result.stdout.startswith(f"usage: requant {verb}")


def test_top_level_help_lists_the_verbs() -> None:
    result = ok(cli("--help"))
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_compile_run_inspect_view(work: Path, tmp_path: Path, launcher: tuple[str, ...]) -> None:
    out = tmp_path / "int8"
    compiled = ok(cli("compile", work / "model.onnx", "-t", "cpu-int8", "--calib", work / "calib.npz",
                      "--calib-batch", "6", "-o", out, launcher=launcher))
    assert "requant report: target cpu-int8" in compiled.stdout
    assert "calibrate" in compiled.stdout and "quantize" in compiled.stdout
    assert f"saved to {out}" in compiled.stdout
    assert json.loads((out / "manifest.json").read_text())["target"] == "cpu-int8"
    ran = json.loads((out / "pipeline.json").read_text())["ran"]
    assert next(r for r in ran if r["name"] == "calibrate")["stats"]["batches"] == 3  # 4 batches of 6, 1 held back

    shown = ok(cli("run", out, "--inputs", work / "inputs.npz", launcher=launcher))
    (line,) = shown.stdout.splitlines()
    assert line.split()[:3] == ["output_0", "[5,4]", "float32"]
    assert "min" in line and "max" in line and "mean" in line

    ok(cli("run", out, "-i", work / "inputs.npz", "-o", tmp_path / "y.npz", launcher=launcher))
    with np.load(tmp_path / "y.npz") as data:
        y = data["output_0"]
    (expected,) = requant.load(out)(inputs(work))
    np.testing.assert_array_equal(y, expected)
    want = Block().eval()(torch.from_numpy(inputs(work))).detach().numpy()
    cosine = float((y * want).sum() / np.linalg.norm(y) / np.linalg.norm(want))
    assert cosine > 0.99, cosine

    report = ok(cli("inspect", out, launcher=launcher)).stdout
    for text in ("target cpu-int8", "inputs:", "x  f32[batch,8]", "output_0  f32[batch,4]", "MatMulIntegerToFloat",
                 "int8 per-channel(axis=1) sym", "uint8 per-tensor asym", "constants:", "pipeline: canonicalize"):
        assert text in report, text

    html_path = tmp_path / "graph.html"
    ok(cli("view", out, "-o", html_path, "--before", work / "model.onnx", launcher=launcher))
    page = html_path.read_text()
    assert "MatMulIntegerToFloat" in page and "before:" in page and "after:" in page


def test_inspect_an_onnx_file(work: Path) -> None:
    report = ok(cli("inspect", work / "model.onnx", "--ir")).stdout
    assert "(ONNX)" in report and "MatMul" in report and "LayerNormalization" in report
    assert "quantization: none" in report
    assert "graph " in report.splitlines()[1]


def test_view_of_an_onnx_file_alone(work: Path, tmp_path: Path) -> None:
    ok(cli("view", work / "model.onnx", "-o", tmp_path / "g.html"))
    page = (tmp_path / "g.html").read_text()
    assert "LayerNormalization" in page and "before:" not in page


def test_options_are_typed_by_the_target_schema(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = ok(cli("compile", work / "model.onnx", "-t", "cpu-int8", "--calib", work / "calib.npz", "-o", out,
                    "--option", "per_channel=false", "--option", "method=minmax", "--option", "holdout=0", "-q"))
    assert result.stdout.strip().startswith(f"saved to {out}")
    assert len(result.stdout.strip().splitlines()) == 1  # -q: no report
    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["per_channel"] is False and options["method"] == "minmax" and options["holdout"] == 0.0


def test_cli_compile_is_deterministic_and_matches_the_api(work: Path, saved: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    ok(cli("compile", work / "model.onnx", "--target", "cpu-int8", "--calib", work / "calib.npz", "-o", again, "-q"))
    for name in ("model.onnx", "pipeline.json", "manifest.json"):
        assert (again / name).read_bytes() == (saved / name).read_bytes(), name
    with np.load(work / "calib.npz") as data:
        rows = data["x"]
    cm = requant.compile(str(work / "model.onnx"), target="cpu-int8",
                         calibration=[{"x": rows[i:i + 8]} for i in range(0, len(rows), 8)])
    assert (cm.save(tmp_path / "api") / "model.onnx").read_bytes() == (saved / "model.onnx").read_bytes()


def test_load_of_save_gives_identical_outputs(work: Path, saved: Path, tmp_path: Path) -> None:
    x = inputs(work)
    loaded = requant.load(saved)
    resaved = requant.load(loaded.save(tmp_path / "resaved"))
    for a, b in zip(loaded(x), resaved(x)):
        np.testing.assert_array_equal(a, b)
    with np.load(work / "calib.npz") as data:
        rows = data["x"]
    cm = requant.compile(str(work / "model.onnx"), target="cpu-int8", calibration=[{"x": rows[:12]}, {"x": rows[12:]}])
    reloaded = requant.load(cm.save(tmp_path / "api"))
    for a, b in zip(cm(x), reloaded(x)):
        np.testing.assert_array_equal(a, b)


def test_passes_and_targets_one_line_each() -> None:
    from requant.targets import TARGETS

    targets = ok(cli("targets")).stdout.splitlines()
    assert [line.split()[0] for line in targets] == list(TARGETS)
    assert all(len(line.split(None, 1)) == 2 for line in targets)
    passes = ok(cli("passes")).stdout.splitlines()
    modules = {line.split()[0]: line.split()[1] for line in passes}
    for name in ("canonicalize", "cse", "dce", "quantize", "smoothquant", "lower_integer", "lower_quant"):
        assert name in modules
    # name, defining module, one-line summary; a pass lives in the module named after it
    assert all(len(line.split(None, 2)) == 3 for line in passes)
    assert modules["lower_quant"] == "backends.onnx.lower_quant" and modules["smoothquant"] == "passes.smoothquant"
    detail = ok(cli("targets", "cpu-int8")).stdout
    (pipeline,) = [line for line in detail.splitlines() if line.strip().startswith("pipeline:")]
    steps = pipeline.split(":", 1)[1].split(" -> ")
    steps = [step.strip() for step in steps]
    assert steps[0] == "canonicalize" and "fold_batchnorm" in steps
    assert steps.index("smoothquant") + 1 == steps.index("calibrate") == steps.index("quantize") - 1
    assert "per_channel (bool" in detail


# ----------------------------------------------------------------------------- bad input


def _bad_cases(work: Path, saved: Path, tmp: Path) -> dict[str, tuple[list, str]]:
    tampered = tmp / "tampered"
    shutil.copytree(saved, tampered)
    with open(tampered / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    np.savez(tmp / "wrong_names.npz", y=np.zeros((2, 8), np.float32))
    np.save(tmp / "calib.npy", np.zeros((8, 8), np.float32))
    (tmp / "src").mkdir()
    shutil.copy(work / "model.onnx", tmp / "src" / "model.onnx")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "model.onnx.data").write_bytes(b"the user's weights")
    bad_threads = tmp / "bad_threads"
    shutil.copytree(saved, bad_threads)
    manifest = json.loads((bad_threads / "manifest.json").read_text())
    manifest["options"]["threads"] = 100000
    (bad_threads / "manifest.json").write_text(json.dumps(manifest))
    model, calib = work / "model.onnx", work / "calib.npz"
    int8 = ["--target", "cpu-int8", "--calib", calib, "-o", tmp / "o"]
    return {
        "compile missing file": (["compile", work / "missing.onnx", *int8], "no such ONNX file"),
        "inspect missing file": (["inspect", work / "missing.onnx"], "no such file or directory"),
        "run missing directory": (["run", work / "missing", "-i", work / "inputs.npz"], "no such directory"),
        "compile non-model file": (["compile", work / "junk.onnx", *int8], "not an ONNX model"),
        "inspect non-model file": (["inspect", work / "junk.onnx"], "not an ONNX model"),
        "view non-model file": (["view", work / "junk.onnx", "-o", tmp / "g.html"], "not an ONNX model"),
        "run non-npz inputs": (["run", saved, "-i", work / "junk.npz"], "not a readable .npz"),
        "compile non-npz calibration": (["compile", model, "--target", "cpu-int8", "--calib", work / "junk.npz",
                                         "-o", tmp / "o"], "not a readable .npz"),
        "run a file, not a saved model": (["run", model, "-i", work / "inputs.npz"], "compile it first"),
        "run a directory that is not a saved model": (["run", work / "empty", "-i", work / "inputs.npz"],
                                                      "not a saved requant model"),
        "inspect a directory that is not a saved model": (["inspect", work / "empty"], "not a saved requant model"),
        "compile a directory": (["compile", work / "empty", *int8], "is a directory"),
        "run with hashes that do not match": (["run", tampered, "-i", work / "inputs.npz"], "does not match its sha256"),
        "inspect with hashes that do not match": (["inspect", tampered], "does not match its sha256"),
        "unknown target": (["compile", model, "--target", "cpu-int9", "-o", tmp / "o"], "unknown target 'cpu-int9'"),
        "unknown option": (["compile", model, *int8, "--option", "nonsense=1"], "has no option 'nonsense'"),
        "option of the wrong type": (["compile", model, *int8, "--option", "per_channel=maybe"], "must be bool"),
        "option not key=value": (["compile", model, *int8, "--option", "per_channel"], "key=value"),
        "option value not allowed": (["compile", model, *int8, "--option", "method=magic"], "must be one of"),
        "static target without calibration": (["compile", model, "--target", "cpu-int8", "-o", tmp / "o"], "--calib"),
        "inputs named wrongly": (["run", saved, "-i", tmp / "wrong_names.npz"], "unknown input"),
        "compile with an .npy as calibration": (["compile", model, "--target", "cpu-int8", "--calib", tmp / "calib.npy",
                                                 "-o", tmp / "o"], "holds a single array (.npy)"),
        "compile with absurd threads": (["compile", model, *int8, "--option", "threads=100000"],
                                        "option 'threads' must be 0 (the physical cores) or 1.."),
        "run with absurd threads in the manifest": (["run", bad_threads, "-i", work / "inputs.npz"],
                                                    "options.threads must be 0"),
        "compile into the source model's directory": (["compile", tmp / "src" / "model.onnx", "-t", "cpu-fp32",
                                                       "-o", tmp / "src", "--force"], "holds the model being compiled"),
        "compile over the user's files": (["compile", model, "-t", "cpu-fp32", "-o", tmp / "mine"],
                                          "not an earlier requant save"),
        "usage: missing -o": (["compile", model, "--target", "cpu-int8"], "the following arguments are required"),
        "usage: unknown verb": (["frobnicate"], "invalid choice"),
    }


BAD_CASES = [
    "compile missing file", "inspect missing file", "run missing directory",
    "compile non-model file", "inspect non-model file", "view non-model file", "run non-npz inputs",
    "compile non-npz calibration", "run a file, not a saved model", "run a directory that is not a saved model",
    "inspect a directory that is not a saved model", "compile a directory", "run with hashes that do not match",
    "inspect with hashes that do not match", "unknown target", "unknown option", "option of the wrong type",
    "option not key=value", "option value not allowed", "static target without calibration", "inputs named wrongly",
    "usage: missing -o", "usage: unknown verb",
]
# issue 16's cases, run in-process (main() holds the same error contract; no interpreter start-up per case)
IN_PROCESS_BAD_CASES = [
    "compile with an .npy as calibration", "compile with absurd threads", "run with absurd threads in the manifest",
    "compile into the source model's directory", "compile over the user's files",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_without_traceback(case: str, work: Path, saved: Path, tmp_path: Path) -> None:
    args, expected = _bad_cases(work, saved, tmp_path)[case]
    result = cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("requant: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", IN_PROCESS_BAD_CASES)
def test_bad_input_in_process_is_one_line(case: str, work: Path, saved: Path, tmp_path: Path, capsys) -> None:
    from requant.tools.cli import main

    args, expected = _bad_cases(work, saved, tmp_path)[case]
    assert main([str(a) for a in args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("requant: error: ") and expected in lines[0], lines
    assert (tmp_path / "src" / "model.onnx").read_bytes() == (work / "model.onnx").read_bytes()
    assert (tmp_path / "mine" / "model.onnx.data").read_bytes() == b"the user's weights"


@pytest.mark.parametrize("case", ["compile missing file", "run with hashes that do not match", "unknown target",
                                  "unknown option", "compile non-model file"])
def test_debug_shows_the_traceback(case: str, work: Path, saved: Path, tmp_path: Path) -> None:
    args, expected = _bad_cases(work, saved, tmp_path)[case]
    result = cli(*args, "--debug")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert expected in result.stderr


def test_debug_before_the_verb_works_too(work: Path) -> None:
    result = cli("--debug", "inspect", work / "missing.onnx")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_one_line_joins_multi_line_messages() -> None:
    from requant.tools.cli import one_line

    assert one_line("unknown target 'x'; targets:\n  a: one\n  b: two") == "unknown target 'x'; targets; a: one; b: two"
    assert one_line("single") == "single"


# ----------------------------------------------------------------------------- progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    with StageProgress("x", ["a", "b"], stream=quiet) as bar:
        bar.advance()
    assert quiet.getvalue() == ""
    tty = FakeTerminal()
    with StageProgress("compiling", ["a", "b", "c"], stream=tty) as bar:
        bar.finish("b")  # not the current stage: ignored
        assert "0/3 a" in bar.render()
        bar.finish("b", skip_ahead=True)
        assert "2/3 c" in bar.render()
    assert "\r" in tty.getvalue() and "0/3 a" in tty.getvalue()
    assert tty.getvalue().endswith("\r")  # the line is cleared for what comes next
    off = FakeTerminal()
    with StageProgress("x", ["a"], enabled=False, stream=off) as bar:  # -q
        bar.advance()
    assert off.getvalue() == ""


def test_progress_follows_requant_compile(work: Path) -> None:
    from requant.targets import get_target

    target = get_target("cpu-int8")
    steps = [s.name for s in target.resolve_steps(target.resolve_options({}))]
    with np.load(work / "calib.npz") as data:
        rows = data["x"]
    bar = StageProgress("compiling", compile_stages(steps), stream=FakeTerminal())
    with follow_compile(bar):
        requant.compile(str(work / "model.onnx"), target="cpu-int8", calibration=[{"x": rows[:12]}, {"x": rows[12:]}])
    assert bar.index == len(bar.stages), bar.render()  # every stage was seen to finish
    drawn = bar.stream.getvalue()
    for stage in ("calibrate", "quantize", "lower_quant"):
        assert stage in drawn


# ----------------------------------------------------------------------------- issue 16


def test_force_replaces_a_directory_of_user_files(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    ok(cli("compile", work / "model.onnx", "-t", "cpu-fp32", "-o", out, "--force", "-q"))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "pipeline.json"]


def test_calibration_batches_follow_a_fixed_batch_model(tmp_path: Path) -> None:
    fixed = requant.compile(Block().eval(), "cpu-fp32", example_inputs=(torch.randn(4, 8),))
    model = fixed.save(tmp_path / "fixed") / "model.onnx"
    rs = np.random.RandomState(1)
    np.savez(tmp_path / "calib.npz", x=rs.randn(30, 8).astype(np.float32))
    result = ok(cli("compile", model, "-t", "cpu-int8", "--calib", tmp_path / "calib.npz", "-o", tmp_path / "q", "-q"))
    assert "the last 2 of 30 rows are left out (the model takes batches of exactly 4)" in result.stderr
    ran = json.loads((tmp_path / "q" / "pipeline.json").read_text())["ran"]
    assert next(r for r in ran if r["name"] == "calibrate")["stats"]["batches"] == 6  # 7 batches of 4, 1 held back
    refused = cli("compile", model, "-t", "cpu-int8", "--calib", tmp_path / "calib.npz", "--calib-batch", "8",
                  "-o", tmp_path / "q8")
    assert refused.returncode == 1 and "takes batches of exactly 4 rows" in refused.stderr


def test_running_another_users_tvm_build_needs_trust_code(work: Path, tmp_path: Path) -> None:
    out = requant.compile(Block().eval(), "tvm-cpu-fp32", example_inputs=(torch.randn(5, 8),)).save(tmp_path / "tvm")
    other = {"REQUANT_CONFIG_DIR": str(tmp_path / "other-user")}
    refused = cli("run", out, "-i", work / "inputs.npz", env=other)
    assert refused.returncode == 1 and "native code that this user's requant did not build" in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("requant: error: ")]
    assert len(errors) == 1 and "--trust-code" in errors[0] and "Traceback" not in refused.stderr, refused.stderr
    ok(cli("inspect", out, env=other))  # reading the graph runs nothing: no trust needed
    shown = ok(cli("run", out, "-i", work / "inputs.npz", "--trust-code", env=other))
    assert shown.stdout.split()[:3] == ["output_0", "[5,4]", "float32"]
