"""The `requant` command: argument parsing, dispatch and error reporting.

    requant compile MODEL.onnx --target cpu-int8 --calib DATA.npz -o OUT/
    requant run OUT/ --inputs DATA.npz [-o outputs.npz]
    requant inspect MODEL.onnx|OUT/
    requant passes | requant targets [NAME]
    requant view MODEL.onnx|OUT/ -o graph.html [--before MODEL2]
    requant demo

This module owns the parser (every verb has --help; -q/--quiet and --debug are accepted
before or after the verb) and the error contract: a `RequantError`, an OS error (missing
or unreadable file) or a usage error prints ONE line `requant: error: ...` on stderr and
exits non-zero (1; 2 for usage errors); `--debug` lets the traceback through instead.
The verbs live in `cli_compile` (compile, run), `cli_info` (inspect, passes, targets,
view) and `requant.tools.demo`; reading models and .npz files in `cli_models`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from requant.errors import RequantError

__all__ = ["main", "build_parser", "one_line", "CliUsageError"]

PROG = "requant"
_EXAMPLES = """examples:
  requant targets                                  what each target does
  requant compile model.onnx --target cpu-int8 --calib calib.npz -o out/
  requant run out/ --inputs inputs.npz             outputs' shapes and statistics
  requant inspect out/                             ops, constants, quantization schemes
  requant view out/ -o graph.html --before model.onnx
  requant demo                                     all-MiniLM-L6-v2: requant vs ONNX Runtime
`requant VERB --help` describes each verb."""
EXIT_ERROR = 1
EXIT_USAGE = 2


class CliUsageError(Exception):
    """A command-line usage error (unknown flag, missing argument)."""


def one_line(message: str) -> str:
    """A possibly multi-line message as one line: later lines joined with '; '."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return head.rstrip(":;") + "; " + "; ".join(rest)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage + exiting, so usage errors are
    one line like every other error."""

    def error(self, message: str) -> NoReturn:
        raise CliUsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bars and only essential output")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show tracebacks and debug logs on errors")


def _verb(sub: argparse._SubParsersAction, name: str, help_text: str, fn: Callable[..., int]) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    _common(p, argparse.SUPPRESS)  # SUPPRESS: do not overwrite a flag given before the verb
    p.set_defaults(func=fn)
    return p


def _add_compile(sub: argparse._SubParsersAction) -> None:
    from requant.tools.cli_compile import cmd_compile

    p = _verb(sub, "compile", "compile an ONNX model for a target and save it", cmd_compile)
    p.add_argument("model", metavar="MODEL.onnx", help="the float ONNX model")
    p.add_argument("-t", "--target", required=True, help="target name (`requant targets` lists them)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="directory to save the compiled model in")
    p.add_argument("--calib", metavar="DATA.npz",
                   help="calibration inputs: arrays named by model input; the leading axis is split into batches")
    p.add_argument("--calib-batch", type=int, default=None, metavar="N",
                   help="rows per calibration batch (default: the model's fixed batch size, else 8)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a target option (repeatable; `requant targets NAME` lists them)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT even when it holds files that are not an earlier requant save")


def _add_run(sub: argparse._SubParsersAction) -> None:
    from requant.tools.cli_compile import cmd_run

    p = _verb(sub, "run", "run a saved compiled model on inputs from an .npz file", cmd_run)
    p.add_argument("model", metavar="OUT", help="a directory written by `requant compile -o`")
    p.add_argument("-i", "--inputs", required=True, metavar="DATA.npz", help="arrays named by model input")
    p.add_argument("-o", "--output", metavar="OUTPUTS.npz",
                   help="write the outputs here (default: print name, shape, dtype, min/max/mean)")
    p.add_argument("--trust-code", action="store_true",
                   help="run a TVM/CUDA library that this user's requant did not build (it is native code: "
                        "only for a model whose origin you trust)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="runtime threads (default: as saved; 0: the physical cores)")


def _add_info(sub: argparse._SubParsersAction) -> None:
    from requant.tools.cli_info import cmd_inspect, cmd_passes, cmd_targets, cmd_view

    p = _verb(sub, "inspect", "op histogram, constants, quantization schemes, inputs and outputs", cmd_inspect)
    p.add_argument("model", metavar="MODEL", help="an .onnx file or a saved model directory")
    p.add_argument("--all", action="store_true", help="list every constant and quantized tensor")
    p.add_argument("--ir", action="store_true", help="also print the IR text (constants elided)")
    _verb(sub, "passes", "list the registered passes, one line each", cmd_passes)
    p = _verb(sub, "targets", "list the compilation targets, one line each", cmd_targets)
    p.add_argument("name", nargs="?", metavar="NAME", help="describe one target: pipeline and options")
    p = _verb(sub, "view", "write a self-contained HTML picture of a graph", cmd_view)
    p.add_argument("model", metavar="MODEL", help="an .onnx file or a saved model directory")
    p.add_argument("-o", "--output", required=True, metavar="GRAPH.html", help="the HTML file to write")
    p.add_argument("--before", metavar="MODEL2", help="draw this model side by side, as the 'before' graph")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from requant.tools.demo import add_arguments, cmd_demo

    p = _verb(sub, "demo", "all-MiniLM-L6-v2 compiled for cpu-int8 vs float and ONNX Runtime's quantizers", cmd_demo)
    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="requant: compile, run, inspect and view low-bit models.",
                     epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, False)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for add in (_add_compile, _add_run, _add_info, _add_demo):
        add(sub)
    return parser


def _configure_logging(debug: bool) -> None:
    from requant.tools.cli_progress import BarAwareHandler

    root = logging.getLogger("requant")
    for old in [h for h in root.handlers if isinstance(h, BarAwareHandler)]:
        root.removeHandler(old)  # main() called again in the same process
    handler = BarAwareHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if debug else logging.WARNING)
    if not debug:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except CliUsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.verb is None:
        build_parser().print_help()
        return EXIT_USAGE
    debug = bool(args.debug)
    _configure_logging(debug)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `requant targets | head`: the reader left; say nothing, and keep Python's exit
        # flush from raising again on the closed stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (RequantError, OSError) as exc:
        if debug:
            raise
        return _fail(str(exc) if isinstance(exc, RequantError) else f"{exc}", EXIT_ERROR)
    except Exception as exc:  # noqa: BLE001  (a bug: still one line, the traceback with --debug)
        if debug:
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", EXIT_ERROR)


if __name__ == "__main__":
    raise SystemExit(main())
