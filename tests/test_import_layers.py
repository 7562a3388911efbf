"""The layering contract (DESIGN.md: the IR is the centre; frontends only produce it,
passes only transform it, backends only consume it), checked on every module's imports,
at module level and inside functions, and on module names handed to importlib:

- ir/ imports none of passes, backends, frontends, or the top-level compiler/targets/tools;
- passes/ import no backend and no frontend (a backend's lowering lives under it);
- backends/ import no frontend;
- frontends/ import no backend but the ONNX format's type table (backends/onnx/onnx_types.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "ir": ("requant.passes", "requant.backends", "requant.frontends", "requant.compiler", "requant.targets",
           "requant.tools"),
    "passes": ("requant.backends", "requant.frontends", "requant.compiler", "requant.tools"),
    "backends": ("requant.frontends", "requant.compiler", "requant.tools"),
    "frontends": ("requant.backends", "requant.passes", "requant.compiler", "requant.tools"),
}
ALLOWED = {"frontends": ("requant.backends.onnx.onnx_types",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement and importlib.import_module("...") call."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "requant"]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.startswith(ALLOWED.get(layer, ())):
                continue
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports(layer):
    assert violations(layer) == []


def test_the_check_sees_function_level_and_importlib_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import importlib\n\ndef f():\n    from requant.backends.onnx import to_onnx\n"
                   "    importlib.import_module('requant.frontends.torch_frontend')\n")
    modules = [m for _, m in imported_modules(src)]
    assert "requant.backends.onnx" in modules and "requant.frontends.torch_frontend" in modules
