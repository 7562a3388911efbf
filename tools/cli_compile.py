"""`requant compile` and `requant run`: an ONNX file (+ calibration .npz) to a saved
compiled model, and a saved model run on inputs from an .npz file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from requant.errors import RequantError
from requant.tools.cli_models import check_target, fixed_batch_size, parse_options, read_npz, split_batches, write_npz
from requant.tools.cli_progress import StageProgress, compile_stages, follow_compile, quiet_library_bars

__all__ = ["cmd_compile", "cmd_run", "describe_outputs", "DEFAULT_CALIB_ROWS"]

DEFAULT_CALIB_ROWS = 8
"""Rows per calibration batch when the model does not fix its batch size."""


def _step_names(target: Any, options: dict[str, Any]) -> list[str]:
    """The pipeline's step names (for the progress bar); empty if options are bad,
    which `requant.compile` then reports."""
    try:
        return [s.name for s in target.resolve_steps(target.resolve_options(options))]
    except RequantError:
        return []


def cmd_compile(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import requant

    target = check_target(args.target)
    options = parse_options(target, args.option or [])
    model = Path(args.model)
    if not model.exists():
        raise RequantError(f"no such ONNX file: {model}")
    calibration = None
    if args.calib is not None:
        calibration = split_batches(read_npz(args.calib, "calibration"), *_calib_rows(model, args.calib_batch),
                                    args.calib)
    elif target.static:
        raise RequantError(f"target '{target.name}' calibrates activation ranges: give --calib DATA.npz "
                           f"(arrays named by model input, leading axis = samples)")
    if args.quiet:
        quiet_library_bars()
    stages = compile_stages(_step_names(target, options))
    with follow_compile(StageProgress(f"compiling for {target.name}", stages, enabled=not args.quiet)):
        cm = requant.compile(str(model), target=target.name, calibration=calibration, **options)
    saved = cm.save(args.output, overwrite=args.force)
    if not args.quiet:
        print(cm.report(), file=out)
    print(f"saved to {saved}/ (run it: requant run {saved} --inputs DATA.npz)", file=out)
    return 0


def _calib_rows(model: Path, asked: int | None) -> tuple[int, bool]:
    """(rows per calibration batch, whether every batch must have exactly that many):
    a model exported with a fixed batch size takes only batches of that size."""
    fixed = fixed_batch_size(model)
    if fixed is None:
        return (DEFAULT_CALIB_ROWS if asked is None else asked), False
    if asked is not None and asked != fixed:
        raise RequantError(f"--calib-batch {asked}: {model} takes batches of exactly {fixed} rows "
                           f"(its inputs' leading dim); leave --calib-batch out or give {fixed}")
    return fixed, True


def describe_outputs(names: list[str], arrays: tuple[np.ndarray, ...]) -> list[str]:
    """One line per output: name, shape, dtype and min / max / mean."""
    lines = []
    width = max((len(n) for n in names), default=0)
    for name, a in zip(names, arrays):
        shape = "[" + ",".join(map(str, a.shape)) + "]"
        if a.size and (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            f = a.astype(np.float64)
            stats = f"min {f.min():.6g}  max {f.max():.6g}  mean {f.mean():.6g}"
        else:
            stats = "(empty)" if not a.size else ""
        lines.append(f"{name.ljust(width)}  {shape}  {a.dtype}  {stats}".rstrip())
    return lines


def cmd_run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import requant
    from requant.compiler import MANIFEST

    directory = Path(args.model)
    if directory.is_file():
        raise RequantError(f"{directory} is a file; `requant run` takes the directory `requant compile -o` wrote "
                           f"(compile it first: requant compile {directory} --target cpu-fp32 -o OUT/)")
    if directory.is_dir() and not (directory / MANIFEST).is_file():
        raise RequantError(f"{directory} is not a saved requant model (no {MANIFEST}); "
                           f"give a directory written by `requant compile -o`")
    cm = requant.load(directory, trust_code=args.trust_code, threads=args.threads)
    inputs = read_npz(args.inputs, "inputs")
    outputs = cm(**inputs)
    if args.output:
        path = write_npz(args.output, dict(zip(cm.output_names, outputs)))
        if not args.quiet:
            print(f"wrote {len(outputs)} output(s) to {path}", file=out)
        return 0
    for line in describe_outputs(cm.output_names, outputs):
        print(line, file=out)
    return 0
