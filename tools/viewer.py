"""`requant view`: a self-contained HTML picture of a graph, or of two side by side.

What this module owns: the colour key (by dtype and quantization), box labels and hover
text, the SVG for one `viewer_layout.Layout`, and the page around it (header, legend,
op-count comparison, the pipeline that produced a saved model). The page has no
script, stylesheet, font or image from anywhere else: it opens offline, from a file.

Colours: a node takes the colour of its output's quantization scheme
(`Value.meta["quant"]`) or dtype; a float-output node that reads quantized or low-bit
tensors (an integer kernel such as MatMulIntegerToFloat, a DequantizeLinear) gets its
own colour, so the places where the model leaves or enters integers stand out. Hover
any box or edge for names, types, schemes, attributes and the constants a node reads.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from requant.tools.cli_info import quant_scheme_text, value_bytes
from requant.tools.viewer_layout import Box, Layout, layout_graph

__all__ = ["render_html", "write_html", "color_key", "LEGEND", "svg_for_graph"]

# key -> (legend text, fill, stroke)
LEGEND: dict[str, tuple[str, str, str]] = {
    "f32": ("float32", "#d0e4ff", "#4a7fc1"),
    "f16": ("float16 / bfloat16", "#c5f0f0", "#2f9a9a"),
    "int8": ("int8 / uint8 (quantized)", "#ffd8a8", "#d9822b"),
    "int4": ("int4 / uint4", "#ffc9c9", "#c92a2a"),
    "fp8": ("fp8 (e4m3 / e5m2)", "#e5dbff", "#7048e8"),
    "fp4": ("fp4 / MX / NV blocks", "#fcc2d7", "#c2255c"),
    "kernel": ("reads quantized, writes float (integer kernel, dequantize)", "#b2f2bb", "#2b8a3e"),
    "int": ("int32 / int64 (indices, shapes, accumulators)", "#e9ecef", "#868e96"),
    "bool": ("bool", "#fff3bf", "#e0a800"),
    "io": ("graph input / output", "#ffffff", "#212529"),
    "other": ("other", "#f1f3f5", "#adb5bd"),
}
_LOW_BIT = ("int8", "int4", "fp8", "fp4")
_MAX_LINE = 34


def _dtype_key(dt: Any) -> str:
    name = getattr(dt, "name", str(dt))
    if name.startswith("fp4") or name.startswith("ff_"):
        return "fp4" if name.startswith("fp4") else "fp8"
    if name.startswith("fp8"):
        return "fp8"
    if name in ("float32", "float64"):
        return "f32"
    if name in ("float16", "bfloat16"):
        return "f16"
    if name in ("int8", "uint8"):
        return "int8"
    if name in ("int4", "uint4"):
        return "int4"
    if name == "bool":
        return "bool"
    if name.startswith(("int", "uint")):
        return "int"
    return "other"


def _scheme_key(attrs: Mapping[str, Any]) -> str:
    from requant.ir import dtypes

    if attrs.get("granularity") in ("mx", "nv"):
        return "fp4"
    try:
        return _dtype_key(dtypes.dtype(attrs.get("dtype", "")))
    except Exception:  # an unknown dtype name in old metadata
        return "other"


def value_key(v: Any) -> str:
    """The colour key of a value: its quantization scheme, else its dtype."""
    q = v.meta.get("quant")
    return _scheme_key(q) if isinstance(q, Mapping) else _dtype_key(v.dtype)


def color_key(box: Box) -> str:
    """The colour key of a drawn box (see the module docstring)."""
    if box.kind in ("input", "output"):
        return "io"
    if box.kind == "constant":
        return value_key(box.ref)
    node = box.ref
    keys = [value_key(o) for o in node.outputs] or ["other"]
    quantized = [k for k in keys if k in _LOW_BIT]
    if quantized:
        return quantized[0]
    reads_low_bit = any(v is not None and value_key(v) in _LOW_BIT for v in node.inputs)
    if reads_low_bit and keys[0] in ("f32", "f16"):
        return "kernel"
    return keys[0]


# ----------------------------------------------------------------------------- text


def _short(text: str, n: int = _MAX_LINE) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _scheme_text(v: Any) -> str:
    q = v.meta.get("quant")
    return quant_scheme_text(dict(q)) if isinstance(q, Mapping) else ""


def box_lines(box: Box) -> list[str]:
    """Two lines: what it is, and its (first) output's type or scheme."""
    if box.kind == "dummy":
        return []
    if box.kind in ("input", "output", "constant"):
        v = box.ref
        return [_short(v.name), _short(str(v.type))]
    node = box.ref
    out = node.outputs[0] if node.outputs else None
    second = "" if out is None else (_scheme_text(out) or str(out.type))
    return [_short(node.op), _short(second)] if second else [_short(node.op)]


def _attr_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype}{list(value.shape)}" if value.size > 8 else np.array2string(value, separator=",")
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _value_line(v: Any) -> str:
    scheme = _scheme_text(v)
    const = f" constant, {value_bytes(v):,} bytes" if v.is_constant else ""
    return f"  %{v.name}: {v.type}{const}" + (f"  [{scheme}]" if scheme else "")


def hover_text(box: Box) -> str:
    """The tooltip of a box: names, types, schemes, attributes, where it came from."""
    if box.kind in ("input", "output", "constant"):
        what = {"input": "graph input", "output": "graph output", "constant": "constant"}[box.kind]
        return f"{what}\n{_value_line(box.ref).strip()}"
    node = box.ref
    lines = [f"{node.op}" + (f"  '{node.name}'" if node.name else "")]
    lines.append("inputs:")
    lines += ["  (omitted)" if v is None else _value_line(v) for v in node.inputs]
    lines.append("outputs:")
    lines += [_value_line(v) for v in node.outputs]
    if node.attrs:
        lines.append("attrs:")
        lines += [f"  {k} = {_attr_text(v)}" for k, v in sorted(node.attrs.items())]
    for key in ("created_by", "source"):
        if node.meta.get(key):
            lines.append(f"{key.replace('_', ' ')}: {node.meta[key]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- SVG


def _path(points: list[tuple[float, float]]) -> str:
    (x0, y0), rest = points[0], points[1:]
    d = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        my = (y0 + y1) / 2
        d.append(f"C{x0:.1f},{my:.1f} {x1:.1f},{my:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(d)


def _svg_box(box: Box) -> str:
    key = color_key(box)
    x, y = box.x - box.w / 2, box.y - box.h / 2
    rx = box.h / 2 if box.kind in ("input", "output") else 5
    texts = []
    for i, line in enumerate(box.lines):
        ty = box.y + (i - (len(box.lines) - 1) / 2) * 15 + 4
        cls = "op" if i == 0 else "ty"
        texts.append(f'<text class="{cls}" x="{box.x:.1f}" y="{ty:.1f}">{html.escape(line)}</text>')
    return (f'<g class="box {box.kind} k-{key}" data-key="{html.escape(box.key)}"><title>{html.escape(hover_text(box))}'
            f'</title><rect x="{x:.1f}" y="{y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="{rx:.1f}"/>'
            + "".join(texts) + "</g>")


def _svg_edge(edge: Any, uid: str) -> str:
    key = value_key(edge.value)
    scheme = _scheme_text(edge.value)
    title = html.escape(f"%{edge.value.name}: {edge.value.type}" + (f"  [{scheme}]" if scheme else ""))
    return (f'<path class="edge e-{key}" d="{_path(edge.points)}" marker-end="url(#{uid}-arrow)">'
            f"<title>{title}</title></path>")


def svg_for_graph(graph: Any, uid: str = "g") -> tuple[str, Layout]:
    """An inline <svg> drawing of `graph` and its layout (`uid` prefixes its ids)."""
    layout = layout_graph(graph, box_lines)
    parts = [f'<svg class="graph" width="{layout.width:.0f}" height="{layout.height:.0f}" '
             f'viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" role="img" '
             f'aria-label="{html.escape(graph.name)}">',
             f'<defs><marker id="{uid}-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#868e96"/></marker></defs>']
    parts += [_svg_edge(e, uid) for e in layout.edges]
    parts += [_svg_box(b) for b in layout.boxes.values() if b.kind != "dummy"]
    parts.append("</svg>")
    return "\n".join(parts), layout


# ----------------------------------------------------------------------------- page


def _css() -> str:
    colours = "\n".join(
        f".k-{k} rect {{ fill: {fill}; stroke: {stroke}; }} .sw-{k} {{ background: {fill}; border-color: {stroke}; }}"
        f" .e-{k} {{ stroke: {stroke}; }}" for k, (_, fill, stroke) in LEGEND.items())
    return """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #212529; background: #f8f9fa; }
header { padding: 12px 20px 4px; background: #fff; border-bottom: 1px solid #dee2e6; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 6px 0; }
.meta { color: #495057; margin: 2px 0; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; padding: 8px 20px; background: #fff; border-bottom: 1px solid #dee2e6; }
.legend span.sw { display: inline-block; width: 14px; height: 14px; border: 2px solid; border-radius: 3px; vertical-align: -3px; margin-right: 5px; }
.tables { display: flex; flex-wrap: wrap; gap: 24px; padding: 8px 20px; align-items: flex-start; }
.tables > div { max-height: 240px; overflow: auto; }
#fit { margin: 0 4px 0 20px; vertical-align: -2px; } .fit { color: #495057; }
#fit:checked ~ main svg.graph { max-width: 100%; height: auto; }
table { border-collapse: collapse; font: 12px monospace; background: #fff; }
th, td { border: 1px solid #dee2e6; padding: 2px 8px; text-align: right; } th:first-child, td:first-child { text-align: left; }
td.up { color: #c92a2a; } td.down { color: #2b8a3e; }
.panes { display: flex; gap: 12px; padding: 8px 12px 20px; align-items: flex-start; }
.pane { flex: 1 1 0; min-width: 0; background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: 6px 10px; }
.scroll { overflow: auto; max-height: 88vh; }
svg.graph { display: block; }
svg text { font: 12px monospace; text-anchor: middle; fill: #212529; pointer-events: none; }
svg text.op { font-weight: bold; } svg text.ty { fill: #495057; font-size: 11px; }
rect { stroke-width: 1.5; }
.box.input rect, .box.output rect { stroke-width: 2.5; }
.box:hover rect { stroke-width: 3.5; }
.edge { fill: none; stroke-width: 1.4; opacity: 0.75; }
.edge:hover { stroke-width: 4; opacity: 1; }
""" + colours


def _legend(keys: set[str]) -> str:
    items = [f'<span><span class="sw sw-{k}"></span>{html.escape(text)}</span>'
             for k, (text, _, _) in LEGEND.items() if k in keys or k == "io"]
    return '<section class="legend" aria-label="legend"><strong>colour:</strong> ' + "".join(items) + "</section>"


def _op_table(after: Any, before: Any | None) -> str:
    a = after.op_histogram()
    if before is None:
        rows = "".join(f"<tr>{_cell(op)}{_cell(n)}</tr>" for op, n in
                       sorted(a.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"<table><tr><th>op</th><th>count</th></tr>{rows}</table>"
    b = before.op_histogram()
    ops = sorted(set(a) | set(b), key=lambda op: (-(a.get(op, 0) + b.get(op, 0)), op))
    rows = []
    for op in ops:
        d = a.get(op, 0) - b.get(op, 0)
        cls = "up" if d > 0 else "down" if d < 0 else ""
        rows.append(f'<tr>{_cell(op)}{_cell(b.get(op, 0))}{_cell(a.get(op, 0))}'
                    f'<td class="{cls}">{d:+d}</td></tr>')
    return "<table><tr><th>op</th><th>before</th><th>after</th><th>change</th></tr>" + "".join(rows) + "</table>"


def _cell(value: Any) -> str:
    """One table cell's text: every value from a saved directory is data, never markup."""
    return f"<td>{html.escape(str(value))}</td>"


def _pipeline_table(pipeline: Mapping[str, Any] | None) -> str:
    ran = (pipeline or {}).get("ran") or []
    if not isinstance(ran, list) or not ran:
        return ""
    rows = []
    for r in ran:
        r = r if isinstance(r, Mapping) else {"name": r}
        stats = r.get("stats") if isinstance(r.get("stats"), Mapping) else {}
        cells = [r.get("name"), r.get("nodes_before"), r.get("nodes_after"), r.get("added", 0), r.get("removed", 0),
                 stats.get("tensors_quantized", "")]
        rows.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    rows = "".join(rows)
    target = html.escape(str((pipeline or {}).get("target", "")))
    return (f"<table><caption>pipeline ({target})</caption><tr><th>step</th><th>nodes before</th>"
            f"<th>nodes after</th><th>added</th><th>removed</th><th>quantized</th></tr>{rows}</table>")


def _summary(graph: Any) -> str:
    from requant.report import constant_bytes, format_bytes

    nbytes = constant_bytes(graph)
    ins = ", ".join(f"{v.name}: {v.type}" for v in graph.inputs)
    outs = ", ".join(f"{v.name}: {v.type}" for v in graph.outputs)
    return (f"{len(graph)} nodes, {len(graph.constants)} constants ({format_bytes(nbytes)}); "
            f"inputs {ins}; outputs {outs}")


def _pane(heading: str, graph: Any, uid: str) -> tuple[str, set[str]]:
    svg, layout = svg_for_graph(graph, uid)
    keys = {color_key(b) for b in layout.boxes.values() if b.kind != "dummy"}
    keys |= {value_key(e.value) for e in layout.edges}
    return (f'<div class="pane"><h2>{html.escape(heading)}</h2><p class="meta">{html.escape(_summary(graph))}</p>'
            f'<div class="scroll">{svg}</div></div>'), keys


# Progressive enhancement (the page is complete without it): start each wide graph
# scrolled so that its first graph input is in view.
_SCROLL_TO_INPUTS = """
for (const pane of document.querySelectorAll(".scroll")) {
  const first = pane.querySelector("g.box.input rect");
  if (!first) continue;
  const x = first.x.baseVal.value + first.width.baseVal.value / 2;
  pane.scrollLeft = Math.max(0, x - pane.clientWidth / 2);
}
"""


def render_html(graph: Any, *, title: str = "", source: str = "", before: Any | None = None,
                before_source: str | None = None, pipeline: Mapping[str, Any] | None = None) -> str:
    """The page: `graph` alone, or `before` and `graph` side by side; `pipeline` (a
    saved model's pipeline.json) adds the table of steps that turned one into the other."""
    panes, keys = [], set()
    if before is not None:
        pane, k = _pane(f"before: {before_source or before.name}", before, "before")
        panes.append(pane)
        keys |= k
    pane, k = _pane(f"{'after: ' if before is not None else ''}{source or graph.name}", graph, "after" if before is not None else "graph")
    panes.append(pane)
    keys |= k
    tables = f"<div>{_op_table(graph, before)}</div>"
    steps = _pipeline_table(pipeline)
    if steps:
        tables += f"<div>{steps}</div>"
    heading = html.escape(title or graph.name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>requant view: {heading}</title>
<style>{_css()}</style></head>
<body>
<header><h1>requant view: {heading}</h1>
<p class="meta">hover a box or an edge for names, types, quantization schemes and attributes; constants are listed in the nodes that read them</p></header>
{_legend(keys)}
<section class="tables">{tables}</section>
<input type="checkbox" id="fit"><label class="fit" for="fit">fit graphs to the page width</label>
<main class="panes">{''.join(panes)}</main>
<script>{_SCROLL_TO_INPUTS}</script>
</body></html>
"""


def write_html(path: str | os.PathLike, graph: Any, **kwargs: Any) -> Path:
    """`render_html(graph, **kwargs)` written to `path` (UTF-8)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(graph, **kwargs), encoding="utf-8")
    return p
