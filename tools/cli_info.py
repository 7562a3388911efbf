"""`requant inspect`, `requant passes`, `requant targets` and `requant view`: what a
model holds, what requant can do, and a picture of a graph."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from requant.errors import RequantError
from requant.tools.cli_models import ModelSource, check_target, open_model

__all__ = ["cmd_inspect", "cmd_passes", "cmd_targets", "cmd_view", "inspect_lines", "quant_scheme_text", "value_bytes"]

_SHOWN = 20  # rows per section before "... N more (--all)"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() for r in rows]


def _limited(rows: list[list[str]], show_all: bool) -> list[str]:
    if show_all or len(rows) <= _SHOWN:
        return _table(rows)
    return _table(rows[:_SHOWN]) + [f"  ... {len(rows) - _SHOWN} more (--all shows every one)"]


def quant_scheme_text(attrs: dict[str, Any]) -> str:
    """`Value.meta["quant"]` (a `QuantScheme.to_attrs()` dict) as a short description."""
    try:
        from requant.ir.quant_formats import QuantScheme

        text = QuantScheme.from_attrs(attrs).describe()
    except Exception:  # a scheme this requant cannot rebuild: show it raw
        text = ", ".join(f"{k}={v}" for k, v in attrs.items() if k != "dynamic")
    return text + (" dynamic" if attrs.get("dynamic") else "")


def value_bytes(v: Any) -> int:
    """Bytes of a constant at its element width (int4 counts half a byte), as
    `requant.report.constant_bytes` counts them."""
    return (int(np.asarray(v.const).size) * v.dtype.bits + 7) // 8


def _signature_lines(values: list[Any]) -> list[str]:
    return _table([[v.name, str(v.type)] for v in values])


def inspect_lines(source: ModelSource, show_all: bool = False) -> list[str]:
    """The text `requant inspect` prints."""
    from requant.report import constant_bytes, format_bytes

    g = source.graph
    lines = [f"model: {source.label}", f"graph '{g.name}': {len(g)} nodes, {len(g.constants)} constants"]
    if source.kind == "saved":
        m = source.manifest
        opts = ", ".join(f"{k}={v}" for k, v in sorted(m.get("options", {}).items()) if v not in (None, [], {}))
        lines.append(f"saved by requant {m.get('requant_version', '?')}; options: {opts}")
        ran = source.pipeline.get("ran", [])
        if ran:
            lines.append("pipeline: " + " -> ".join(f"{r['name']}({r['nodes_before']}->{r['nodes_after']})" for r in ran))
    lines += ["inputs:", *_signature_lines(g.inputs), "outputs:", *_signature_lines(g.outputs)]
    hist = g.op_histogram()
    lines.append(f"ops ({len(hist)} kinds, {len(g)} nodes):")
    lines += _table([[op, str(n)] for op, n in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))])
    consts = sorted(g.constants, key=lambda v: (-value_bytes(v), v.name))
    by_dtype = Counter()
    for v in consts:
        by_dtype[v.dtype.name] += value_bytes(v)
    split = ", ".join(f"{k} {format_bytes(n)}" for k, n in by_dtype.most_common())
    lines.append(f"constants: {len(consts)}, {format_bytes(constant_bytes(g))}" + (f" ({split})" if split else ""))
    lines += _limited([[v.name, str(v.type), format_bytes(value_bytes(v))] for v in consts], show_all)
    lines += _quant_lines(g, show_all)
    return lines


def _quant_lines(g: Any, show_all: bool) -> list[str]:
    quantized = [v for v in g.values() if isinstance(v.meta.get("quant"), dict)]
    if not quantized:
        return ["quantization: none (no tensor carries a quantization scheme)"]
    schemes = Counter(quant_scheme_text(v.meta["quant"]) for v in quantized)
    summary = "; ".join(f"{n} x {s}" for s, n in schemes.most_common())
    rows = []
    for v in quantized:
        where = "constant" if v.is_constant else (f"from {v.producer.op}" if v.producer is not None else "input")
        rows.append([v.name, str(v.type), quant_scheme_text(v.meta["quant"]), where])
    return [f"quantization: {len(quantized)} tensors ({summary})", *_limited(rows, show_all)]


def cmd_inspect(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    source = open_model(args.model)
    for line in inspect_lines(source, show_all=args.all):
        print(line, file=out)
    if args.ir:
        print(source.graph.to_text(elide_constants=True), file=out)
    return 0


def pass_module(name: str) -> str:
    """The module that defines the registered pass `name`, without the "requant." prefix."""
    from requant.passes.manager import get_pass

    p = get_pass(name)
    return (getattr(p, "fn", None) or type(p)).__module__.removeprefix("requant.")


def cmd_passes(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from requant.passes import available_passes

    passes = available_passes()
    modules = {name: pass_module(name) for name in passes}
    width = max(map(len, passes), default=0)
    mod_width = max(map(len, modules.values()), default=0)
    for name, description in passes.items():
        print(f"{name.ljust(width)}  {modules[name].ljust(mod_width)}  {description}", file=out)
    return 0


def cmd_targets(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.name:
        target = check_target(args.name)
        print(f"{target.name}: {target.summary()}", file=out)
        for reason in target.missing():
            print(f"  missing: {reason}", file=out)
        print(f"  backend: {target.backend} ({target.device})", file=out)
        print("  pipeline: " + " -> ".join(s.name for s in target.steps), file=out)
        print("  options (--option key=value):", file=out)
        for key, spec in target.all_options.items():
            print(f"    {spec.describe(key)}", file=out)
        return 0
    import requant

    table = requant.targets()
    width = max(map(len, table), default=0)
    for name, description in table.items():
        print(f"{name.ljust(width)}  {description}", file=out)
    return 0


def cmd_view(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from requant.tools.viewer import write_html

    path = Path(args.output)
    if path.is_dir():
        raise RequantError(f"-o {path} is a directory; give an .html file name")
    after = open_model(args.model)
    before = open_model(args.before) if args.before else None
    write_html(path, after.graph, title=str(after.path), source=after.label,
               before=None if before is None else before.graph,
               before_source=None if before is None else before.label,
               pipeline=after.pipeline if after.kind == "saved" else None)
    if not args.quiet:
        print(f"wrote {path} (open it in a browser; it needs no network)", file=out)
    return 0
