"""Tests of the HTML graph view: the layered layout's invariants, the colour key, a
page that needs nothing from the network, and the page opened in a real headless
browser (Debian's chromium): a screenshot is written and shows the drawing, and the
DOM holds the node labels."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import requant.ir as ir
from requant.tools.viewer import LEGEND, color_key, render_html, write_html
from requant.tools.viewer_layout import GAP_X, crossings, layout_graph

TEXT = """
graph block(%x: f32[batch,8]) -> (%y, %h) {
  const %w1: f32[8,16] = 0.5
  const %w2: f32[16,8] = 0.25
  const %s: f32[] = 2.0
  %a = MatMul(%x, %w1)
  %h = Relu(%a)
  %b = MatMul(%h, %w2)
  %c = Mul(%b, %s)
  %y = Add(%c, %x)
}
"""


def lines(box):
    if box.kind == "dummy":
        return []
    return [box.ref.op if box.kind == "node" else box.ref.name, "type"]


@pytest.fixture
def graph():
    return ir.parse(TEXT)


def quantized_graph():
    """A float MatMul and its int8 form: QuantizeLinear -> MatMulIntegerToFloat."""
    import requant
    from requant.ir.quant_formats import QuantScheme
    from requant.ir import dtypes

    g = ir.parse("""
graph q(%x: f32[2,8]) -> (%y) {
  const %scale: f32[] = 0.1
  const %zp: u8[] = 128
  const %w: i8[8,4] = 1
  const %ws: f32[4] = 0.01
  const %wzp: i8[4] = 0
  %xq = QuantizeLinear(%x, %scale, %zp)
  %y = com.microsoft.MatMulIntegerToFloat(%xq, %w, %scale, %ws, %zp, %wzp)
}
""")
    for v in g.values():
        if v.name == "xq":
            v.meta["quant"] = QuantScheme(dtypes.uint8, "tensor", symmetric=False).to_attrs()
        if v.name == "w":
            v.meta["quant"] = QuantScheme(dtypes.int8, "channel", axis=1).to_attrs()
    assert requant  # imported for its side effects on the op registry
    return g


# ----------------------------------------------------------------------------- layout


def test_layers_follow_the_edges_and_boxes_do_not_overlap(graph) -> None:
    layout = layout_graph(graph, lines)
    boxes = layout.boxes
    for e in layout.edges:
        assert boxes[e.src].layer < boxes[e.dst].layer, (e.src, e.dst)
        assert e.points[0][1] < e.points[-1][1]  # edges run downwards
        assert len(e.points) == boxes[e.dst].layer - boxes[e.src].layer + 1  # one bend per layer crossed
        assert all(y0 < y1 for (_, y0), (_, y1) in zip(e.points, e.points[1:]))
    for row in layout.layers():
        for left, right in zip(row, row[1:]):
            assert left.x + left.w / 2 + GAP_X - 1e-6 <= right.x - right.w / 2
    for b in boxes.values():
        assert 0 <= b.x - b.w / 2 and b.x + b.w / 2 <= layout.width
        assert 0 <= b.y - b.h / 2 and b.y + b.h / 2 <= layout.height
    outputs = [b for b in boxes.values() if b.kind == "output"]
    assert len(outputs) == 2 and len({b.layer for b in outputs}) == 1  # outputs share the bottom row
    drawn = {b.ref.op for b in boxes.values() if b.kind == "node"}
    assert drawn == {"MatMul", "Relu", "Mul", "Add"}
    assert not any(b.kind == "constant" for b in boxes.values())  # constants live in hover text


def test_readers_of_one_value_share_one_lane() -> None:
    g = ir.parse("""
graph lanes(%x: f32[4], %m: f32[4]) -> (%d) {
  %a = Relu(%x)
  %a2 = Add(%a, %m)
  %b = Relu(%a2)
  %c = Relu(%b)
  %c2 = Add(%c, %m)
  %d = Add(%c2, %m)
}
""")
    layout = layout_graph(g, lines)
    m = layout.boxes["in:m"]
    readers = [e for e in layout.edges if e.src == "in:m"]
    assert len(readers) == 3
    deepest = max(layout.boxes[e.dst].layer for e in readers)
    dummies = [b for b in layout.boxes.values() if b.kind == "dummy" and b.key.startswith("d:in:m:")]
    assert len(dummies) == deepest - m.layer - 1  # one lane, not one per reader
    full = [e for e in readers if e.points[0] == (m.x, m.y + m.h / 2)]
    assert len(full) >= 1 and max(len(e.points) for e in readers) == deepest - m.layer + 1
    for e in readers:  # the others branch off the lane: they start on one of its points
        lane_points = {(b.x, b.y) for b in dummies}
        assert e in full or e.points[0] in lane_points


def test_crossings_counts_inversions() -> None:
    segs = [("a", "d"), ("b", "c")]
    assert crossings(["a", "b"], ["c", "d"], segs) == 1
    assert crossings(["a", "b"], ["d", "c"], segs) == 0
    assert crossings(["a", "b", "c"], ["x", "y", "z"], [("a", "z"), ("b", "y"), ("c", "x")]) == 3


def test_colours_follow_dtype_and_quantization(graph) -> None:
    layout = layout_graph(quantized_graph(), lines)
    keys = {b.ref.op: color_key(b) for b in layout.boxes.values() if b.kind == "node"}
    assert keys == {"QuantizeLinear": "int8", "com.microsoft.MatMulIntegerToFloat": "kernel"}
    float_keys = {color_key(b) for b in layout_graph(graph, lines).boxes.values() if b.kind == "node"}
    assert float_keys == {"f32"}


# ----------------------------------------------------------------------------- the page


def test_page_is_self_contained(graph) -> None:
    page = render_html(graph, title="block", before=quantized_graph())
    assert not re.search(r"https?:", page), "the page must not reach the network"
    assert "<link" not in page and "@import" not in page and " src=" not in page
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {"#before-arrow", "#after-arrow"}
    assert page.count("<svg") == 2 and "before: q" in page and "after: block" in page
    for label in ("MatMul", "Relu", "QuantizeLinear", "MatMulIntegerToFloat", ">x<"):
        assert label in page, label
    assert "uint8 per-tensor asym" in page  # the scheme in the box and the hover text
    assert "%w: i8[8,4] constant, 32 bytes  [int8 per-channel(axis=1) sym]" in page  # hover: constants read
    for key in ("f32", "int8", "kernel", "io"):
        assert LEGEND[key][0] in page


MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _markup_graph() -> ir.Graph:
    g = ir.parse(TEXT)
    g.name = MARKUP
    for node in g.nodes:
        node.name = MARKUP
        node.meta["created_by"] = MARKUP
        node.meta["source"] = MARKUP
    for v in g.values():
        if not v.is_constant:
            v.meta["quant"] = {"dtype": MARKUP, "granularity": MARKUP}
    return g


def test_every_field_is_escaped() -> None:
    """Markup in each field a page shows (issue 16, item 2): pipeline records from a
    saved directory (every key, of any JSON type), the target, graph, node and source
    names, provenance and quantization metadata. The only element from the page itself
    is its one scroll script."""
    record = {key: MARKUP for key in ("name", "nodes_before", "nodes_after", "added", "removed")}
    record["stats"] = {"tensors_quantized": MARKUP, MARKUP: MARKUP}
    pipeline = {"target": MARKUP, "ran": [record, MARKUP, {"name": "x", "stats": MARKUP}]}
    page = render_html(_markup_graph(), title=MARKUP, source=MARKUP, before=_markup_graph(), before_source=MARKUP,
                       pipeline=pipeline)
    assert "alert" in page  # the text is there, escaped
    assert page.count("<script") == 1 and "<img" not in page
    assert page.count("&lt;script&gt;") > 10


def test_view_of_a_saved_model_with_markup_in_pipeline_json(tmp_path: Path) -> None:
    import json

    import requant
    from requant.manifest import sha256_file
    from requant.tools.cli import main

    saved = requant.compile(ir.parse(TEXT), "cpu-fp32").save(tmp_path / "m")
    pipeline = json.loads((saved / "pipeline.json").read_text())
    pipeline["target"] = MARKUP
    for record in pipeline["ran"]:
        record["name"] = MARKUP
        record["stats"] = {"tensors_quantized": MARKUP}
    (saved / "pipeline.json").write_text(json.dumps(pipeline))
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["pipeline.json"] = {"sha256": sha256_file(saved / "pipeline.json", "test"),
                                          "bytes": (saved / "pipeline.json").stat().st_size}
    (saved / "manifest.json").write_text(json.dumps(manifest))  # data: anyone may re-list it
    assert main(["view", str(saved), "-o", str(tmp_path / "g.html"), "-q"]) == 0
    page = (tmp_path / "g.html").read_text()
    assert page.count("<script") == 1 and "<img" not in page and "&lt;script&gt;alert" in page


# ----------------------------------------------------------------------------- browser


def read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB/RGBA/grey PNG as a (height, width, channels) uint8 array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0, header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 1:  # Sub: a running sum per channel
            row = np.cumsum(row.reshape(width, channels), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            row = (row + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            rec, up = row.tolist(), prev.tolist()
            for i in range(stride):
                a = rec[i - channels] if i >= channels else 0
                b = up[i]
                if kind == 3:
                    rec[i] = (rec[i] + (a + b) // 2) % 256
                    continue
                c = up[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                rec[i] = (rec[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
            row = np.array(rec, dtype=np.int64)
        out[y] = row
        prev = row
    return out.reshape(height, width, channels)


def _chromium() -> str | None:
    return shutil.which("chromium")


def _browse(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp / 'profile'}", *extra, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                                                ".ci/run installs it) - the HTML view is not checked in a browser")
def test_page_opens_offline_in_headless_chromium(tmp_path: Path) -> None:
    from requant.frontends import from_onnx
    from requant.backends.onnx import to_onnx

    after = quantized_graph()
    before = from_onnx(to_onnx(ir.parse(TEXT)))
    page = write_html(tmp_path / "graph.html", after, title="quantized", before=before)

    shot = tmp_path / "shot.png"
    result = _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000")
    assert shot.exists(), result.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    pixels = read_png(shot)[..., :3]
    assert pixels.shape[:2] == (1000, 1400)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"only {len(colours)} colours: a blank page?"
    background = np.all(pixels == pixels[-1, -1], axis=-1).mean()
    assert background < 0.95, "the screenshot is almost all one colour"
    for key in ("f32", "int8", "kernel"):  # the boxes are drawn in their legend colours
        fill = tuple(int(LEGEND[key][1][i:i + 2], 16) for i in (1, 3, 5))
        assert np.all(pixels == fill, axis=-1).sum() > 200, f"no {key} boxes ({LEGEND[key][1]}) on screen"

    dom = _browse(page, tmp_path, "--dump-dom").stdout
    for label in ("com.microsoft.MatMulIntegerToFloat", "QuantizeLinear", "Relu", "before: block", "after: q"):
        assert label in dom, label
    assert dom.count("<svg") == 2
