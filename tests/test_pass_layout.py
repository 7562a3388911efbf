"""Every registered pass lives in the module named after it and is tested in the test
file named after it (pass "fold_batchnorm": passes/fold_batchnorm.py,
tests/passes/test_fold_batchnorm.py; a backend's own pass under that backend)."""

from __future__ import annotations

from pathlib import Path

from requant.passes import available_passes
from requant.tools.cli_info import pass_module

ROOT = Path(__file__).resolve().parents[1]


def test_pass_name_module_and_test_file_share_a_stem():
    for name in available_passes():
        module = pass_module(name)  # e.g. "passes.smoothquant", "backends.onnx.lower_quant"
        if not module.startswith(("passes.", "backends.")):
            continue  # a pass other tests register for themselves
        assert module.rsplit(".", 1)[-1] == name, f"pass '{name}' is defined in {module}"
        package = module.rsplit(".", 1)[0].replace(".", "/")
        tests = ROOT / "tests" / package / f"test_{name}.py"
        assert tests.is_file(), f"pass '{name}' has no {tests.relative_to(ROOT)}"
