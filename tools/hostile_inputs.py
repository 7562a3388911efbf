"""Hostile and careless inputs to requant, as cases that say how requant answered: the
campaign `python -m requant.tools.bench.fuzz` runs and tests/test_fuzz_inputs.py draws
from with hypothesis.

Each case is one kind (`KINDS`) of input, built from a `Draw` (the source of every
choice: a seeded numpy RNG for the benchmark, hypothesis's data for the test, so the
test shrinks a failure to its smallest case):

- "onnx": a small valid ONNX model (MatMul, Add, Relu, a Constant, Softmax) with one to
  three mutations: byte flips, insertions, deletions and truncation of the serialized
  model; dims, element types and data of tensors; names (duplicates, empties, dangling
  references); opset imports; attributes; op types and domains; external-data
  locations (absolute, `..`, missing, NUL); sparse initializers; graph inputs and
  outputs. Compiled for cpu-fp32 from a file, then run, saved and loaded.
- "manifest": a saved directory (ONNX, ONNX with external data, or TVM) whose manifest
  fields get drawn JSON values, deleted or added keys, or whose raw text is damaged; its
  pipeline.json likewise; or whose files are truncated, extended, swapped with another
  save's, replaced by symlinks (to a file outside, to /proc/self/pagemap, dangling), a
  directory or a FIFO, or joined by an unlisted file; hashes are sometimes re-listed to
  match (an attacker who edits the manifest too). Loaded without and with trust_code,
  then run.
- "call": a compiled model called with drawn inputs (dtypes, ranks, sizes, ragged
  lists, strings, None, dicts with missing or extra names, NaN/Inf, torch tensors).
- "calibration": a static target compiled with a drawn calibration set (bare arrays and
  dicts, empty lists, batches of wrong dtypes/shapes/structures, constant or
  non-finite data, generators, non-iterables) and drawn options.
- "cli": `requant` run in-process on drawn arguments (verbs, flags, options, the paths
  of good and bad models, saved directories and .npz files).
- "interrupt": a save over an earlier save interrupted (KeyboardInterrupt) at a drawn
  file write or fsync.

Outcomes (`Outcome.kind`):
- "clear error": a `RequantError` with a message (the CLI: exit status 1 or 2 and one
  line `requant: error: ...`; the API's UnsupportedOpError lists the unknown ops one
  per line, which the command joins into one), and nothing outside the case's output
  directory changed;
- "correct": it worked and the result is right: outputs equal to the interpreter's on
  the same graph (float32 tolerance), a load that verifies, an earlier save intact;
- "anything else": another exception type, an error without a message, a wrong result, a CLI "internal error", a file outside the output directory changed, a load
  that ran native code it should have refused. (A crash or a hang is counted by the
  benchmark, which runs cases in a child process.)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from requant.errors import RequantError

__all__ = ["Draw", "RandomDraw", "Outcome", "Campaign", "KINDS", "CLEAR", "CORRECT", "OTHER"]

logger = logging.getLogger(__name__)

CLEAR, CORRECT, OTHER = "clear error", "correct", "anything else"
KINDS = ("onnx", "manifest", "call", "calibration", "cli", "interrupt")


class Draw(Protocol):
    """The source of every choice a case makes."""

    def integer(self, lo: int, hi: int) -> int: ...  # inclusive

    def choice(self, items: Sequence[Any]) -> Any: ...


class RandomDraw:
    """A `Draw` on a seeded numpy RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed % (2**32))

    def integer(self, lo: int, hi: int) -> int:
        return int(lo + self.rng.randint(0, hi - lo + 1)) if hi - lo < 2**31 else int(self.rng.choice([lo, hi]))

    def choice(self, items: Sequence[Any]) -> Any:
        return items[self.integer(0, len(items) - 1)]


@dataclass
class Outcome:
    kind: str  # CLEAR | CORRECT | OTHER
    detail: str


# ----------------------------------------------------------------------------- values

_EDGE_INTS = [-(2**63), -(2**31), -5, -1, 0, 1, 2, 3, 4, 7, 255, 2**31, 2**62, 10**30]
_EDGE_STRINGS = ["", "x", "model.onnx", "../escape", "/etc/passwd", "a\x00b", "<script>alert(1)</script>",
                 "\u202e\u00e9\u4e2d", "float33", "tvm", "cuda", "llvm", "onnx", "cpu", "y" * 5000, "NaN"]


def json_value(draw: Draw, depth: int = 0) -> Any:
    """A JSON value with the edge cases that break parsers of manifests."""
    kind = draw.choice(["null", "bool", "int", "float", "str", "list", "dict"] if depth < 3 else
                       ["null", "bool", "int", "str"])
    if kind == "null":
        return None
    if kind == "bool":
        return draw.choice([True, False])
    if kind == "int":
        return draw.choice(_EDGE_INTS)
    if kind == "float":
        return draw.choice([0.0, -0.5, 1e308, 2.5, 1e-300])
    if kind == "str":
        return draw.choice(_EDGE_STRINGS)
    if kind == "list":
        return [json_value(draw, depth + 1) for _ in range(draw.integer(0, 3))]
    return {draw.choice(_EDGE_STRINGS[:8] + ["name", "dtype", "shape", "sha256", "bytes"]): json_value(draw, depth + 1)
            for _ in range(draw.integer(0, 3))}


# ----------------------------------------------------------------------------- the base model


def base_onnx() -> Any:
    """x[2,4] -> MatMul(w) -> Add(b) -> Relu -> Mul(Constant) -> Softmax -> y[2,3]."""
    import onnx
    from onnx import helper, numpy_helper

    rs = np.random.RandomState(0)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    w = numpy_helper.from_array(rs.randn(4, 3).astype(np.float32), "w")
    b = numpy_helper.from_array(rs.randn(3).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["t"], name="mm"),
        helper.make_node("Add", ["t", "b"], ["u"], name="add"),
        helper.make_node("Relu", ["u"], ["r"], name="relu"),
        helper.make_node("Constant", [], ["c"], name="const",
                         value=numpy_helper.from_array(np.array(0.5, np.float32), "cval")),
        helper.make_node("Mul", ["r", "c"], ["m"], name="mul"),
        helper.make_node("Softmax", ["m"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "fuzz", [x], [y], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tensors(model: Any) -> list[Any]:
    out = list(model.graph.initializer)
    out += [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    return out


def _value_infos(model: Any) -> list[Any]:
    return list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)


def _mutate_bytes(data: bytes, draw: Draw) -> bytes:
    buf = bytearray(data)
    for _ in range(draw.integer(1, 4)):
        if not buf:
            break
        at = draw.integer(0, len(buf) - 1)
        how = draw.choice(["flip", "set", "delete", "insert", "truncate"])
        if how == "flip":
            buf[at] ^= 1 << draw.integer(0, 7)
        elif how == "set":
            buf[at] = draw.choice([0, 1, 0x7F, 0x80, 0xFF, 0x08, 0x12, 0x1A])
        elif how == "delete":
            del buf[at:at + draw.integer(1, 16)]
        elif how == "insert":
            buf[at:at] = bytes(draw.choice([0, 0xFF, 0x0A, 0x12]) for _ in range(draw.integer(1, 8)))
        else:
            del buf[at:]
    return bytes(buf)


def _mutate_onnx_structure(model: Any, draw: Draw) -> None:
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    what = draw.choice(["dims", "dtype", "data", "names", "opset", "attrs", "op", "external", "sparse", "io",
                        "value_dims"])
    needs = {"dims": _tensors(model), "dtype": _tensors(model) + _value_infos(model), "data": _tensors(model),
             "names": list(g.node), "attrs": list(g.node), "op": list(g.node), "external": list(g.initializer),
             "value_dims": _value_infos(model), "opset": list(model.opset_import)}
    if what in needs and not needs[what]:
        return  # an earlier mutation removed what this one edits
    if what == "dims":
        t = draw.choice(_tensors(model))
        if t.dims and draw.choice([True, False]):
            t.dims[draw.integer(0, len(t.dims) - 1)] = draw.choice(_EDGE_INTS[1:-1])
        elif draw.choice([True, False]):
            t.dims.append(draw.choice([0, 1, 2, -1]))
        else:
            del t.dims[:]
    elif what == "dtype":
        target = draw.choice(_tensors(model) + _value_infos(model))
        code = draw.integer(-1, 30)
        if hasattr(target, "data_type"):
            target.data_type = code
        else:
            target.type.tensor_type.elem_type = code
    elif what == "data":
        t = draw.choice(_tensors(model))
        how = draw.choice(["cut", "grow", "floats", "both", "clear"])
        if how == "cut":
            t.raw_data = t.raw_data[:draw.integer(0, max(0, len(t.raw_data) - 1))]
        elif how == "grow":
            t.raw_data = t.raw_data + b"\x00" * draw.integer(1, 64)
        elif how == "floats":
            t.ClearField("raw_data")
            t.float_data[:] = [draw.choice([0.0, 1.0, float("nan"), float("inf")])] * draw.integer(0, 20)
        elif how == "both":
            t.float_data[:] = [1.0] * draw.integer(1, 20)
        else:
            t.ClearField("raw_data")
    elif what == "names":
        node = draw.choice(list(g.node))
        names = ["x", "w", "b", "t", "u", "r", "c", "m", "y", "", "nowhere", "x\x00"]
        if draw.choice([True, False]) and node.input:
            node.input[draw.integer(0, len(node.input) - 1)] = draw.choice(names)
        elif node.output:
            node.output[0] = draw.choice(names)
        if draw.integer(0, 3) == 0:
            g.node.append(draw.choice(list(g.node)))  # a node twice
    elif what == "opset":
        imp = model.opset_import[0]
        how = draw.choice(["version", "domain", "twice", "none"])
        if how == "version":
            imp.version = draw.choice([-1, 0, 1, 7, 12, 13, 17, 21, 99, 2**31])
        elif how == "domain":
            imp.domain = draw.choice(["ai.onnx", "com.microsoft", "x", "requant"])
        elif how == "twice":
            model.opset_import.append(helper.make_opsetid("", draw.choice([13, 18])))
        else:
            del model.opset_import[:]
    elif what == "attrs":
        node = draw.choice(list(g.node))
        how = draw.choice(["axis", "unknown", "kind", "clear"])
        if how == "axis":
            node.attribute.append(helper.make_attribute("axis", draw.choice(_EDGE_INTS[2:-1])))
        elif how == "unknown":
            node.attribute.append(helper.make_attribute("frobnicate", draw.choice([1, 0.5, "s", [1, 2]])))
        elif how == "kind" and node.attribute:
            node.attribute[0].type = draw.integer(0, 14)
        else:
            del node.attribute[:]
    elif what == "op":
        node = draw.choice(list(g.node))
        node.op_type = draw.choice(["Frobnicate", "Conv", "If", "Loop", "Scan", "MatMul", "Add", "Gemm", "Identity",
                                    "QuantizeLinear", "Attention", "Softmax", ""])
        if draw.integer(0, 3) == 0:
            node.domain = draw.choice(["com.microsoft", "requant", "x.y", "ai.onnx.ml"])
    elif what == "external":
        t = draw.choice(list(g.initializer))
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        entry = t.external_data.add()
        entry.key, entry.value = "location", draw.choice(["../x.bin", "/etc/passwd", "w.bin", "", "a/../../b",
                                                          "sub/../w.bin", "notes.txt", "/proc/self/pagemap"])
        if draw.choice([True, False]):
            extra = t.external_data.add()
            extra.key, extra.value = draw.choice(["offset", "length"]), str(draw.choice(_EDGE_INTS))
    elif what == "sparse":
        sparse = onnx.SparseTensorProto()
        n = draw.integer(0, 3)
        sparse.values.CopyFrom(numpy_helper.from_array(np.ones(n, np.float32), draw.choice(["s", "w", "x"])))
        sparse.indices.CopyFrom(numpy_helper.from_array(
            np.array([draw.choice([0, 1, 5, -1, 2**40]) for _ in range(n)], np.int64), "s_idx"))
        sparse.dims[:] = [draw.choice([0, 2, 4, 2**20, -3]) for _ in range(draw.integer(0, 3))]
        g.sparse_initializer.append(sparse)
    elif what == "io":
        how = draw.choice(["drop_output", "dup_input", "untyped_input", "bad_output", "no_inputs"])
        if how == "drop_output":
            del g.output[:]
        elif how == "dup_input" and g.input:
            g.input.append(g.input[0])
        elif how == "untyped_input" and g.input:
            g.input[0].ClearField("type")
        elif how == "bad_output" and g.output:
            g.output[0].name = draw.choice(["t", "nowhere", "x", ""])
        else:
            del g.input[:]
    else:
        vi = draw.choice(_value_infos(model))
        dims = vi.type.tensor_type.shape.dim
        if dims:
            d = dims[draw.integer(0, len(dims) - 1)]
            if draw.choice([True, False]):
                d.dim_value = draw.choice(_EDGE_INTS[1:-1])
            else:
                d.dim_param = draw.choice(["batch", "", "n m", "\x00"])


# ----------------------------------------------------------------------------- the sandbox


def _fingerprint(root: Path, skip: Sequence[Path] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry under `root` (not following links) but those under `skip`: kind,
    size, content."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if any(here == s or s in here.parents for s in skip):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            if p in skip:
                continue
            info = os.lstat(p)
            if stat.S_ISLNK(info.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISREG(info.st_mode):
                out[str(p)] = ("file", info.st_size, p.read_bytes() if info.st_size < 1 << 20 else info.st_mtime_ns)
            elif stat.S_ISDIR(info.st_mode):
                out[str(p)] = ("dir",)
            else:
                out[str(p)] = ("other", stat.S_IFMT(info.st_mode))
    return out


def _outputs_match(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> bool:
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if np.issubdtype(b.dtype, np.floating):
            nan = np.isnan(b)
            if not np.array_equal(np.isnan(a), nan):
                return False
            if not np.allclose(a[~nan], b[~nan], rtol=1e-4, atol=1e-5):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def _feeds_for(cm: Any) -> dict[str, np.ndarray]:
    """Inputs that fit `cm`'s signature (symbolic dims: 2)."""
    from requant.ir import dtypes

    feeds = {}
    for sig in cm.inputs:
        shape = [d if isinstance(d, int) else 2 for d in (sig["shape"] or [2])]
        dt = dtypes.dtype(sig["dtype"])
        rs = np.random.RandomState(len(feeds))
        feeds[sig["name"]] = (rs.randn(*shape) * 3).astype(dt.np) if dt.is_float else \
            rs.randint(0, 2, size=shape).astype(dt.np)
    return feeds


def _interpreter_agrees(cm: Any, feeds: dict[str, np.ndarray]) -> bool:
    import requant.ir as ir

    got = cm(**feeds)
    want = ir.run(cm.graph, feeds)
    return _outputs_match(got, want)


def classify(action: Callable[[], bool], *, sandbox: Path, outputs: Sequence[Path] = ()) -> Outcome:
    """Run `action` (True: a correct result, False: a wrong one) and judge it (module
    docstring); files under `sandbox` but outside `outputs` must not change."""
    before = _fingerprint(sandbox, outputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = action()
        outcome = Outcome(CORRECT, "") if ok else Outcome(OTHER, "wrong result")
    except RequantError as exc:
        text = str(exc).strip()
        outcome = Outcome(CLEAR, text) if text else Outcome(OTHER, f"{type(exc).__name__} without a message")
    except _CliVerdict as verdict:
        outcome = verdict.outcome
    except Exception as exc:  # noqa: BLE001 (what the campaign exists to find)
        outcome = Outcome(OTHER, f"{type(exc).__name__}: {str(exc)[:300]}")
    after = _fingerprint(sandbox, outputs)
    if before != after:
        changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
        outcome = Outcome(OTHER, f"changed outside the output directory: {changed[:3]} ({outcome.kind})")
    return outcome


class _CliVerdict(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


# ----------------------------------------------------------------------------- the campaign


class Campaign:
    """The base artifacts every case starts from, built once in `workdir`."""

    def __init__(self, workdir: str | os.PathLike, *, tvm: bool = True) -> None:
        import requant

        self.root = Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.model = base_onnx()
        self.model_bytes = self.model.SerializeToString()
        base = self.root / "base"
        base.mkdir(exist_ok=True)
        (base / "model.onnx").write_bytes(self.model_bytes)
        self.float_model = requant.compile(str(base / "model.onnx"), "cpu-fp32")
        self.saves = {"onnx": self.float_model.save(base / "onnx", overwrite=True),
                      "onnx-external": self.float_model.save(base / "onnx-external", external_data=True,
                                                             overwrite=True)}
        if tvm:
            try:
                self.saves["tvm"] = requant.compile(str(base / "model.onnx"), "tvm-cpu-fp32").save(base / "tvm",
                                                                                                   overwrite=True)
            except RequantError as exc:  # no TVM in this environment: the campaign says so
                logger.warning("fuzz: no TVM save (%s)", exc)
        self.expected = self.float_model(**_feeds_for(self.float_model))
        rs = np.random.RandomState(7)
        np.savez(base / "calib.npz", x=rs.randn(16, 4).astype(np.float32))
        np.savez(base / "inputs.npz", x=rs.randn(2, 4).astype(np.float32))
        np.save(base / "array.npy", np.zeros((2, 4), np.float32))
        (base / "junk.onnx").write_bytes(b"not a model")
        self._count = 0

    def _sandbox(self) -> Path:
        self._count += 1
        box = self.root / f"case{self._count}"
        if box.exists():
            shutil.rmtree(box)
        box.mkdir()
        (box / "notes.txt").write_text("the user's file\n")
        return box

    def run(self, kind: str, draw: Draw) -> Outcome:
        """One case of `kind`, its choices from `draw`; the sandbox is removed after."""
        box = self._sandbox()
        try:
            return getattr(self, f"_case_{kind}")(box, draw)
        finally:
            _make_removable(box)
            shutil.rmtree(box, ignore_errors=True)

    # -- onnx ------------------------------------------------------------------------
    def _case_onnx(self, box: Path, draw: Draw) -> Outcome:
        import onnx

        import requant

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        data = None
        for _ in range(draw.integer(1, 3)):
            if draw.integer(0, 4) == 0:
                data = _mutate_bytes(data if data is not None else model.SerializeToString(), draw)
            elif data is None:
                _mutate_onnx_structure(model, draw)
        path = box / "src" / "model.onnx"
        path.parent.mkdir()
        path.write_bytes(data if data is not None else model.SerializeToString())
        out = box / "out"

        def action() -> bool:
            cm = requant.compile(str(path), "cpu-fp32")
            feeds = _feeds_for(cm)
            if not _interpreter_agrees(cm, feeds):
                return False
            loaded = requant.load(cm.save(out))
            return _outputs_match(loaded(**feeds), cm(**feeds))

        return classify(action, sandbox=box, outputs=[out])

    # -- manifest --------------------------------------------------------------------
    def _case_manifest(self, box: Path, draw: Draw) -> Outcome:
        import requant
        from requant.manifest import sha256_file

        name = draw.choice(sorted(self.saves))
        d = Path(shutil.copytree(self.saves[name], box / "saved"))
        for _ in range(draw.integer(1, 3)):
            _mutate_saved(d, draw, self.saves)
        if draw.integer(0, 2) == 0 and _regular(d / "manifest.json"):  # the attacker re-lists what they changed
            try:
                manifest = json.loads((d / "manifest.json").read_text())
                for f in list(manifest.get("files", {})) + [e.name for e in d.iterdir()]:
                    p = d / f
                    if f != "manifest.json" and _regular(p):
                        manifest.setdefault("files", {})[f] = {"sha256": sha256_file(p, "fuzz"),
                                                               "bytes": p.stat().st_size}
                (d / "manifest.json").write_text(json.dumps(manifest))
            except (ValueError, OSError, AttributeError, TypeError, RequantError):
                pass
        trust = draw.choice([False, False, True])

        def action() -> bool:
            cm = requant.load(d, trust_code=trust)
            if cm._runtime.kind == "tvm" and not trust and not cm.stats.get("built_here"):
                return False  # native code of unknown origin loaded without trust_code
            return _interpreter_agrees(cm, _feeds_for(cm))

        return classify(action, sandbox=box)

    # -- call inputs -----------------------------------------------------------------
    def _case_call(self, box: Path, draw: Draw) -> Outcome:
        cm = self.float_model
        value = _call_value(draw)
        by_name = draw.choice(["positional", "name", "dict", "extra"])

        def action() -> bool:
            if by_name == "positional":
                out = cm(value)
                feeds = {"x": np.asarray(value)}
            elif by_name == "name":
                out = cm(x=value)
                feeds = {"x": np.asarray(value)}
            elif by_name == "dict":
                out = cm({"x": value})
                feeds = {"x": np.asarray(value)}
            else:
                out = cm(value, z=value)
                feeds = {"x": np.asarray(value)}
            import requant.ir as ir

            return _outputs_match(out, ir.run(cm.graph, feeds))

        return classify(action, sandbox=box)

    # -- calibration -----------------------------------------------------------------
    def _case_calibration(self, box: Path, draw: Draw) -> Outcome:
        import requant

        calibration = _calibration_value(draw)
        options = draw.choice([{}, {}, {"holdout": draw.choice([0.0, 0.5, 0.99, -1.0, 1.0, 2])},
                               {"method": draw.choice(["minmax", "mse", "percentile", "entropy", "magic", 3])},
                               {"threads": draw.choice([0, 1, -1, 10**6, "2"])}, {"frobnicate": 1}])
        target = draw.choice(["cpu-int8", "cpu-int8", "cpu-fp8", "cpu-int4"])

        def action() -> bool:
            cm = requant.compile(str(self.root / "base" / "model.onnx"), target, calibration=calibration, **options)
            feeds = _feeds_for(cm)
            return _interpreter_agrees(cm, feeds)

        return classify(action, sandbox=box)

    # -- cli -------------------------------------------------------------------------
    def _case_cli(self, box: Path, draw: Draw) -> Outcome:
        from requant.tools.cli import main

        base = self.root / "base"
        for name in ("model.onnx", "junk.onnx", "calib.npz", "inputs.npz", "array.npy"):
            shutil.copyfile(base / name, box / name)
        shutil.copytree(self.saves["onnx"], box / "saved")
        paths = [box / name for name in ("model.onnx", "junk.onnx", "calib.npz", "inputs.npz", "array.npy", "saved",
                                         "missing", "notes.txt", "out")] + [box]
        argv = _cli_argv(draw, [str(p) for p in paths])
        named = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("-o", "--output")]
        outputs = named + [p.with_name(p.name + ".npz") for p in named]  # `run -o` adds the suffix it needs

        def action() -> bool:
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as exc:  # --help exits 0 through argparse
                    rc = exc.code if isinstance(exc.code, int) else 1
            lines = [line for line in err.getvalue().splitlines() if line.startswith("requant: error: ")]
            if rc == 0:
                return True
            if rc in (1, 2) and len(lines) == 1 and "internal error" not in lines[0]:
                raise _CliVerdict(Outcome(CLEAR, lines[0]))
            raise _CliVerdict(Outcome(OTHER, f"rc {rc}: {err.getvalue()[-300:]!r} for {argv}"))

        return classify(action, sandbox=box, outputs=outputs)

    # -- interrupt -------------------------------------------------------------------
    def _case_interrupt(self, box: Path, draw: Draw) -> Outcome:
        import requant
        import requant.atomic_save as atomic_save

        d = Path(shutil.copytree(self.saves[draw.choice(["onnx", "onnx-external"])], box / "saved"))
        before = _fingerprint(d)
        where = draw.choice(["write_new_file", "_fsync_path", "_install"])
        after_calls = draw.integer(0, 3)
        original = getattr(atomic_save, where)
        calls = {"n": 0}

        def interrupting(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > after_calls:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        def action() -> bool:
            setattr(atomic_save, where, interrupting)
            try:
                self.float_model.save(d, external_data=draw.choice([True, False, None]))
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
            finally:
                setattr(atomic_save, where, original)
            leftovers = [p.name for p in box.iterdir() if p.name not in ("saved", "notes.txt")]
            if leftovers:
                return False
            if interrupted and _fingerprint(d) != before:
                return False
            return _outputs_match(requant.load(d)(**_feeds_for(self.float_model)), self.expected)

        return classify(action, sandbox=box, outputs=[d])


_TARGETS = ["cpu-fp32", "cpu-int8", "cpu-int4", "tvm-cpu-fp32", "cpu-int9", ""]
_OPTIONS = ["threads=100000", "threads=-1", "threads=1", "holdout=2", "holdout=0.5", "method=mse", "method=magic",
            "x=1", "", "=", "per_channel=maybe", "opset=99", "opset=13", "exclude=*", "verify=true"]
_NUMBERS = ["-1", "0", "1", "4", "100000", "x", "2.5"]
_VERBS: dict[str, tuple[list[str], dict[str, list[str] | None]]] = {
    "compile": (["path"], {"-t": _TARGETS, "-o": ["path"], "--calib": ["path"], "--calib-batch": _NUMBERS,
                           "--option": _OPTIONS, "--force": None, "-q": None}),
    "run": (["path"], {"-i": ["path"], "-o": ["path"], "--trust-code": None, "--threads": _NUMBERS, "-q": None}),
    "inspect": (["path"], {"--all": None, "--ir": None}),
    "view": (["path"], {"-o": ["path"], "--before": ["path"], "-q": None}),
    "targets": (["target"], {}),
    "passes": ([], {}),
}


def _cli_argv(draw: Draw, paths: list[str]) -> list[str]:
    """Arguments that mostly parse: a verb, its positionals, a drawn subset of its flags
    with good and bad values; now and then a stray flag or a missing value."""
    verb = draw.choice(sorted(_VERBS) + ["frobnicate", "--help"])
    if verb not in _VERBS:
        return [verb]
    positionals, flags = _VERBS[verb]
    argv = [verb]
    for kind in positionals:
        if draw.integer(0, 9):
            argv.append(draw.choice(paths) if kind == "path" else draw.choice(_TARGETS))
    for flag, values in flags.items():
        if draw.integer(0, 2) == 0:
            continue
        argv.append(flag)
        if values is not None and draw.integer(0, 19):
            argv.append(draw.choice(paths) if values == ["path"] else draw.choice(values))
    if draw.integer(0, 9) == 0:
        argv.append(draw.choice(["--frobnicate", "-z", "--debug", "--trust-code", "extra"]))
    return argv


def _call_value(draw: Draw) -> Any:
    kind = draw.choice(["good", "dtype", "shape", "rank", "ragged", "string", "none", "nan", "torch", "scalar",
                        "list", "object", "empty"])
    rs = np.random.RandomState(draw.integer(0, 1000))
    good = rs.randn(2, 4).astype(np.float32)
    if kind == "good":
        return good
    if kind == "dtype":
        return good.astype(draw.choice([np.float64, np.float16, np.int32, np.int8, np.bool_, np.complex64]))
    if kind == "shape":
        return rs.randn(draw.integer(0, 5), draw.integer(0, 5)).astype(np.float32)
    if kind == "rank":
        return np.asarray(rs.randn(*([2] * draw.integer(0, 4))), dtype=np.float32)
    if kind == "ragged":
        return [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]
    if kind == "string":
        return draw.choice(["x", ["a", "b"], b"bytes"])
    if kind == "none":
        return None
    if kind == "nan":
        good[draw.integer(0, 1), draw.integer(0, 3)] = draw.choice([np.nan, np.inf, -np.inf])
        return good
    if kind == "torch":
        import torch

        return torch.from_numpy(good).to(draw.choice([torch.float32, torch.float64, torch.bfloat16]))
    if kind == "scalar":
        return draw.choice([0, 1.5, np.float32(2.0), True])
    if kind == "list":
        return good.tolist()
    if kind == "object":
        return np.array([object(), object()], dtype=object)
    return np.zeros((0, 4), np.float32)


def _calibration_value(draw: Draw) -> Any:
    rs = np.random.RandomState(draw.integer(0, 1000))

    def batch() -> Any:
        kind = draw.choice(["good", "good", "tuple", "dict", "zeros", "ones", "nan", "dtype", "shape", "extra",
                            "missing", "none", "string", "nested"])
        x = rs.randn(2, 4).astype(np.float32)
        return {"good": lambda: x, "tuple": lambda: (x,), "dict": lambda: {"x": x},
                "zeros": lambda: np.zeros_like(x), "ones": lambda: (np.ones_like(x),),
                "nan": lambda: np.where(rs.rand(2, 4) < 0.3, np.nan, x).astype(np.float32),
                "dtype": lambda: x.astype(np.float64), "shape": lambda: rs.randn(3, 5).astype(np.float32),
                "extra": lambda: {"x": x, "z": x}, "missing": lambda: {}, "none": lambda: None,
                "string": lambda: "x", "nested": lambda: [[x]]}[kind]()

    shape = draw.choice(["good", "good", "good", "list", "list", "tuple", "generator", "bare array", "bare dict",
                         "empty", "int", "string"])
    if shape == "good":  # well-formed batches, sometimes degenerate: the warnings' cases
        fill = draw.choice(["random", "random", "zeros", "ones", "nan"])
        out = []
        for _ in range(draw.integer(1, 5)):
            x = rs.randn(2, 4).astype(np.float32)
            x = {"random": x, "zeros": np.zeros_like(x), "ones": np.ones_like(x),
                 "nan": np.where(rs.rand(2, 4) < 0.2, np.nan, x).astype(np.float32)}[fill]
            out.append((x,))
        return out
    n = draw.integer(1, 4)
    if shape == "list":
        return [batch() for _ in range(n)]
    if shape == "tuple":
        return tuple(batch() for _ in range(n))
    if shape == "generator":
        items = [batch() for _ in range(n)]
        return (b for b in items)
    if shape == "bare array":
        return rs.randn(8, 4).astype(np.float32)
    if shape == "bare dict":
        return {"x": rs.randn(8, 4).astype(np.float32)}
    if shape == "empty":
        return []
    if shape == "int":
        return 42
    return "calib.npz"


def _mutate_saved(d: Path, draw: Draw, saves: dict[str, Path]) -> None:
    """One mutation of the saved directory `d` (module docstring, "manifest")."""
    what = draw.choice(["field", "field", "raw", "pipeline", "truncate", "extend", "swap", "symlink", "dir", "fifo",
                        "unlisted", "library"])
    manifest_path = d / "manifest.json"
    if what in ("field", "pipeline"):
        path = manifest_path if what == "field" else d / "pipeline.json"
        if not _regular(path):
            return
        try:
            doc = json.loads(path.read_text())
        except (ValueError, OSError, UnicodeDecodeError):
            return
        node, key = _walk(doc, draw)
        if node is None:
            return
        how = draw.choice(["set", "set", "delete", "add"])
        if how == "set" or (how == "delete" and isinstance(node, list)):
            node[key] = json_value(draw)
        elif how == "delete":
            node.pop(key, None)
        elif isinstance(node, dict):
            node[draw.choice(_EDGE_STRINGS[:8])] = json_value(draw)
        path.write_text(json.dumps(doc))
        return
    files = sorted(p for p in d.iterdir() if _regular(p))
    if not files:
        return
    victim = draw.choice(files)
    if what == "raw":
        if _regular(manifest_path):
            manifest_path.write_bytes(_mutate_bytes(manifest_path.read_bytes(), draw))
    elif what == "truncate":
        victim.write_bytes(victim.read_bytes()[:draw.integer(0, max(0, victim.stat().st_size - 1))])
    elif what == "extend":
        with open(victim, "ab") as fh:
            fh.write(b"\x00" * draw.integer(1, 100))
    elif what == "swap":
        other = saves[draw.choice(sorted(saves))]
        candidates = sorted(p for p in other.iterdir() if p.is_file())
        source = draw.choice(candidates)
        if _regular(d / source.name) or not os.path.lexists(d / source.name):
            shutil.copyfile(source, d / source.name)
    elif what == "symlink":
        victim.unlink()
        victim.symlink_to(draw.choice(["/proc/self/pagemap", "../notes.txt", "/nonexistent", "/dev/zero",
                                       str(d / "manifest.json")]))
    elif what == "dir":
        victim.unlink()
        victim.mkdir()
    elif what == "fifo":
        victim.unlink()
        os.mkfifo(victim)
    elif what == "unlisted":
        extra = d / draw.choice(["extra.bin", "model.so", ".hidden", "model.cu"])
        if _regular(extra) or not os.path.lexists(extra):
            extra.write_bytes(b"\x7fELF" + b"\x00" * 60)
    elif "tvm" in saves and (_regular(d / "model.so") or not os.path.lexists(d / "model.so")):
        shutil.copyfile(saves["tvm"] / "model.so", d / "model.so")  # another build's library dropped in


def _regular(path: Path) -> bool:
    """A regular file, not a link (a FIFO would block whoever reads it)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _walk(doc: Any, draw: Draw) -> tuple[Any, Any]:
    """A (container, key) inside a JSON document, chosen by a random descent."""
    node, key = None, None
    current = doc
    for _ in range(draw.integer(1, 4)):
        if isinstance(current, dict) and current:
            node, key = current, draw.choice(sorted(current, key=str))
        elif isinstance(current, list) and current:
            node, key = current, draw.integer(0, len(current) - 1)
        else:
            break
        current = node[key]
    return node, key


def _make_removable(box: Path) -> None:
    """FIFOs and read-only entries a case left: make them removable."""
    for dirpath, dirnames, filenames in os.walk(box, followlinks=False):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(Path(dirpath) / name, 0o700)


def new_campaign(workdir: str | os.PathLike | None = None, *, tvm: bool = True) -> Campaign:
    """A campaign in `workdir` (default: a fresh temporary directory)."""
    return Campaign(workdir or tempfile.mkdtemp(prefix="requant-fuzz-"), tvm=tvm)
