"""What the `requant` command reads: models (an .onnx file or a directory saved by
`requant compile` / `CompiledModel.save`), .npz input files and `--option k=v` values.

Everything here turns bad input into a `RequantError` whose message names the file or
option and says what to do, so the command can print it as one line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from requant.errors import RequantError

__all__ = [
    "ModelSource",
    "open_model",
    "read_npz",
    "write_npz",
    "split_batches",
    "fixed_batch_size",
    "parse_options",
    "parse_option_value",
    "check_target",
]

logger = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """A model the command was pointed at: its graph and, for a saved directory, its
    manifest and pipeline.json (its runtime is not loaded)."""

    path: Path
    kind: str  # "onnx" | "saved"
    graph: Any
    manifest: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "saved":
            return f"{self.path} (saved requant model, target {self.manifest.get('target', '?')})"
        return f"{self.path} (ONNX)"


def open_model(path: str | os.PathLike) -> ModelSource:
    """An .onnx file or a saved directory (every file and field checked by
    `requant.manifest.read_saved`; its graph read back without loading its runtime, so
    nothing in the directory runs)."""
    p = Path(path)
    if not os.path.lexists(p):
        raise RequantError(f"no such file or directory: {p}")
    if p.is_dir():
        from requant.compiler import MANIFEST, read_saved_graph

        if not os.path.lexists(p / MANIFEST):
            raise RequantError(f"{p} is a directory but not a saved requant model (no {MANIFEST}); "
                               f"give an .onnx file or a directory written by `requant compile -o`")
        saved, graph = read_saved_graph(p)
        return ModelSource(p, "saved", graph, saved.manifest, saved.pipeline)
    from requant.frontends import from_onnx

    return ModelSource(p, "onnx", from_onnx(p))


# ----------------------------------------------------------------------------- npz


def read_npz(path: str | os.PathLike, what: str = "inputs") -> dict[str, np.ndarray]:
    """{name: array} from an .npz file (no pickles)."""
    p = Path(path)
    if not p.exists():
        raise RequantError(f"{what} file not found: {p}")
    if p.is_dir():
        raise RequantError(f"{what} file {p} is a directory; give an .npz file (numpy.savez(path, name=array, ...))")
    try:
        data = np.load(p, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # an .npy: one bare array, no input names
            raise RequantError(f"{what} file {p} holds a single array (.npy); give an .npz with arrays named "
                               f"by input: numpy.savez(path, name=array, ...)")
        with data:
            arrays = {name: data[name] for name in data.files}
    except RequantError:
        raise
    except Exception as exc:  # numpy and zipfile raise many types on a corrupt file; all mean "unreadable"
        raise RequantError(f"{what} file {p} is not a readable .npz ({type(exc).__name__}: {exc}); "
                           f"write it with numpy.savez(path, name=array, ...)") from exc
    if not arrays:
        raise RequantError(f"{what} file {p} holds no arrays")
    return arrays


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_name(p.name + ".npz")  # what numpy would do silently; say it
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, **dict(arrays))
    return p


def split_batches(arrays: Mapping[str, np.ndarray], rows: int, path: str | os.PathLike,
                  exact: bool = False) -> list[dict[str, np.ndarray]]:
    """Calibration batches: every array cut along its leading axis into `rows`-row
    pieces; the last may be shorter, unless `exact` (a model with a fixed batch size),
    where leftover rows are dropped with a warning."""
    if rows < 1:
        raise RequantError(f"--calib-batch must be at least 1, got {rows}")
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if any(n is None for n in lengths.values()):
        scalars = ", ".join(k for k, n in lengths.items() if n is None)
        raise RequantError(f"calibration file {path}: {scalars} is a scalar; each array needs a leading batch axis")
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise RequantError(f"calibration file {path}: arrays have different leading (batch) lengths ({shown})")
    total = next(iter(lengths.values()))
    if total == 0:
        raise RequantError(f"calibration file {path}: the arrays have no rows")
    if exact:
        if total < rows:
            raise RequantError(f"calibration file {path}: {total} row(s), but the model takes batches of exactly "
                               f"{rows}; give at least {rows} rows")
        if total % rows:
            logger.warning("calibration file %s: the last %d of %d rows are left out (the model takes batches of "
                           "exactly %d)", path, total % rows, total, rows)
        total -= total % rows
    return [{k: a[i:i + rows] for k, a in arrays.items()} for i in range(0, total, rows)]


def fixed_batch_size(model: str | os.PathLike) -> int | None:
    """The leading dim every input of an ONNX file fixes (its batch size), or None when
    an input leaves it symbolic or the inputs disagree; only the graph's signature is
    read (no weights)."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # the compile that follows reports an unreadable model properly
        return None
    init = {t.name for t in proto.graph.initializer}
    sizes = set()
    for vi in proto.graph.input:
        if vi.name in init:
            continue
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
            return None
        sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


# ----------------------------------------------------------------------------- options


def check_target(name: str) -> Any:
    """The target table entry, or an error listing the names (one line)."""
    from requant.targets import TARGETS

    if name not in TARGETS:
        raise RequantError(f"unknown target '{name}'; targets: {', '.join(TARGETS)} "
                           f"(`requant targets` describes them)")
    return TARGETS[name]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_option_value(target: str, key: str, text: str, types: type | tuple[type, ...]) -> Any:
    """`text` as the option's type: bools (true/false/yes/no/1/0), ints, floats,
    tuples (comma-separated), dicts (JSON), None (none/null) or the string itself."""
    types = types if isinstance(types, tuple) else (types,)
    low = text.strip().lower()
    if type(None) in types and low in ("none", "null"):
        return None
    for t in types:
        if t is bool and low in _TRUE | _FALSE:
            return low in _TRUE
        if t is int:
            try:
                return int(text)
            except ValueError:
                pass
        if t is float:
            try:
                return float(text)
            except ValueError:
                pass
        if t in (tuple, list):
            return tuple(item.strip() for item in text.split(",") if item.strip())
        if t is dict:
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        if t is str:
            return text
    wanted = " | ".join("None" if t is type(None) else t.__name__ for t in types)
    raise RequantError(f"target '{target}': option '{key}' must be {wanted}, got {text!r}")


def parse_options(target: Any, items: Sequence[str]) -> dict[str, Any]:
    """`--option k=v` items typed by `target`'s option schema; an unknown key or a
    malformed item is an error listing the target's options."""
    schema = target.all_options
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RequantError(f"--option takes key=value, got {item!r} (e.g. --option method=mse)")
        if key not in schema:
            raise RequantError(f"target '{target.name}' has no option '{key}'; its options: "
                               f"{', '.join(schema)} (`requant targets {target.name}` describes them)")
        options[key] = parse_option_value(target.name, key, text, schema[key].type)
    return options
