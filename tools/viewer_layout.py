"""A layered (Sugiyama-style) drawing of a requant graph, computed in plain Python for
`requant.tools.viewer`.

What this module owns: turning a `Graph` into positioned boxes and routed edges.
- vertices: graph inputs, nodes, graph outputs (constants are not drawn: they are
  listed in the hover text of the nodes that read them);
- layers: longest path from the inputs; a vertex with no drawn predecessor sits just
  above its first reader; outputs share the bottom layer; an edge that spans several
  layers goes through one dummy point per layer, so it can bend around boxes; the
  readers of one value share those points: one lane per value, drawn once, that each
  reader branches off (an attention mask read by every layer adds one lane, not six);
- order within a layer: barycentre sweeps (down, then up), each followed by swapping
  neighbours that cross less the other way round, keeping the order with the fewest
  crossings between neighbouring layers;
- x positions: each vertex pulled towards the mean of its neighbours, overlaps removed
  left to right and right to left, order kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Box", "Edge", "Layout", "layout_graph", "crossings", "CHAR_W", "BOX_H"]

CHAR_W = 7.2  # px per character of the 12px monospace label font
BOX_H = 38.0
DUMMY_W = 8.0
GAP_X = 22.0
GAP_Y = 34.0
MARGIN = 16.0
SWEEPS = 8


@dataclass
class Box:
    """A drawn vertex; `x`, `y` are the centre."""

    key: str
    kind: str  # "input" | "node" | "output" | "constant" | "dummy"
    lines: list[str] = field(default_factory=list)
    ref: Any = None  # the Node or Value it draws
    layer: int = 0
    x: float = 0.0
    y: float = 0.0
    w: float = DUMMY_W
    h: float = 0.0


@dataclass
class Edge:
    """A value flowing from `src` to `dst` (input `index` of `dst`)."""

    src: str
    dst: str
    value: Any
    index: int = 0
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Layout:
    boxes: dict[str, Box]
    edges: list[Edge]
    width: float
    height: float

    def layers(self) -> list[list[Box]]:
        rows: dict[int, list[Box]] = {}
        for b in self.boxes.values():
            rows.setdefault(b.layer, []).append(b)
        return [sorted(rows[k], key=lambda b: b.x) for k in sorted(rows)]


# ----------------------------------------------------------------------------- vertices


def _vertices(graph: Any, label: Callable[[Box], list[str]]) -> tuple[dict[str, Box], list[Edge]]:
    boxes: dict[str, Box] = {}
    edges: list[Edge] = []
    source: dict[int, str] = {}
    for v in graph.inputs:
        boxes[f"in:{v.name}"] = Box(f"in:{v.name}", "input", ref=v)
        source[id(v)] = f"in:{v.name}"
    for i, node in enumerate(graph):
        key = f"n:{i}"
        boxes[key] = Box(key, "node", ref=node)
        for out in node.outputs:
            source[id(out)] = key
        for j, v in enumerate(node.inputs):
            if v is not None and id(v) in source:
                edges.append(Edge(source[id(v)], key, v, j))
    for k, v in enumerate(graph.outputs):
        key = f"out:{k}:{v.name}"
        boxes[key] = Box(key, "output", ref=v)
        if id(v) not in source:  # a constant returned as an output: draw it
            source[id(v)] = f"const:{v.name}"
            boxes[source[id(v)]] = Box(source[id(v)], "constant", ref=v)
        edges.append(Edge(source[id(v)], key, v, 0))
    for b in boxes.values():
        b.lines = label(b)
        b.w = max(len(line) for line in b.lines) * CHAR_W + 18 if b.lines else DUMMY_W
        b.h = BOX_H if len(b.lines) > 1 else BOX_H * 0.62
    return boxes, edges


# ----------------------------------------------------------------------------- layers


def _assign_layers(boxes: dict[str, Box], edges: list[Edge]) -> None:
    preds: dict[str, list[str]] = {k: [] for k in boxes}
    succs: dict[str, list[str]] = {k: [] for k in boxes}
    for e in edges:
        preds[e.dst].append(e.src)
        succs[e.src].append(e.dst)
    order = list(boxes)  # inputs, nodes in topological order, outputs
    layer: dict[str, int] = {}
    for k in order:
        layer[k] = 1 + max((layer[p] for p in preds[k]), default=-1)
    # sources other than graph inputs (e.g. nodes reading only constants): just above
    # their first reader instead of at the top with a long edge
    for k in reversed(order):
        if not preds[k] and boxes[k].kind not in ("input",) and succs[k]:
            layer[k] = max(min(layer[s] for s in succs[k]) - 1, 0)
    bottom = max((layer[k] for k in order if boxes[k].kind != "output"), default=-1) + 1
    for k in order:
        boxes[k].layer = bottom if boxes[k].kind == "output" else layer[k]


def _add_dummies(boxes: dict[str, Box], edges: list[Edge]) -> dict[int, list[str]]:
    """Dummy boxes along edges longer than one layer; {edge index: chain}. All readers
    of one value share one chain (a bundle that readers branch off), so a value read
    all over the graph (an attention mask) adds one lane, not one per reader."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, e in enumerate(edges):
        groups.setdefault((e.src, id(e.value)), []).append(i)
    chains: dict[int, list[str]] = {}
    for (src, _), members in groups.items():
        top = boxes[src].layer
        deepest = max(boxes[edges[i].dst].layer for i in members)
        if deepest - top <= 1:
            continue
        name = edges[members[0]].value.name
        lane = []
        for layer in range(top + 1, deepest):
            key = f"d:{src}:{name}:{layer}"
            boxes[key] = Box(key, "dummy", layer=layer)
            lane.append(key)
        for i in members:
            span = boxes[edges[i].dst].layer - top - 1
            if span > 0:
                chains[i] = lane[:span]
    return chains


def _segments(edges: list[Edge], chains: dict[int, list[str]]) -> list[tuple[str, str]]:
    """The distinct layer-to-layer pieces of all edges (shared lanes counted once)."""
    out: dict[tuple[str, str], None] = {}
    for i, e in enumerate(edges):
        path = [e.src, *chains.get(i, []), e.dst]
        for piece in zip(path, path[1:]):
            out[piece] = None
    return list(out)


# ----------------------------------------------------------------------------- ordering


def crossings(upper: list[str], lower: list[str], segs: list[tuple[str, str]]) -> int:
    """Edge crossings between two neighbouring layers (inversions, Fenwick tree)."""
    pu = {k: i for i, k in enumerate(upper)}
    pl = {k: i for i, k in enumerate(lower)}
    pairs = sorted((pu[a], pl[b]) for a, b in segs if a in pu and b in pl)
    tree = [0] * (len(lower) + 1)
    count = 0
    for seen, (_, b) in enumerate(pairs):
        i, le = b + 1, 0
        while i > 0:  # how many earlier pairs end at or before b
            le += tree[i]
            i -= i & -i
        count += seen - le
        i = b + 1
        while i <= len(lower):
            tree[i] += 1
            i += i & -i
    return count


def _order(boxes: dict[str, Box], segs: list[tuple[str, str]]) -> list[list[str]]:
    n_layers = max((b.layer for b in boxes.values()), default=-1) + 1
    layers: list[list[str]] = [[] for _ in range(n_layers)]
    for k, b in boxes.items():  # insertion order: a topological first guess
        layers[b.layer].append(k)
    up: dict[str, list[str]] = {k: [] for k in boxes}
    down: dict[str, list[str]] = {k: [] for k in boxes}
    between: list[list[tuple[str, str]]] = [[] for _ in range(n_layers)]  # [i]: layer i -> i + 1
    for a, b in segs:
        down[a].append(b)
        up[b].append(a)
        between[boxes[a].layer].append((a, b))

    def total(ls: list[list[str]]) -> int:
        return sum(crossings(ls[i], ls[i + 1], between[i]) for i in range(len(ls) - 1))

    def sweep(ls: list[list[str]], downward: bool) -> list[list[str]]:
        ls = [list(row) for row in ls]
        rng = range(1, len(ls)) if downward else range(len(ls) - 2, -1, -1)
        for i in rng:
            ref = ls[i - 1] if downward else ls[i + 1]
            pos = {k: j for j, k in enumerate(ref)}
            nbrs = up if downward else down

            def bary(item: tuple[int, str]) -> float:
                j, k = item
                ps = [pos[n] for n in nbrs[k] if n in pos]
                return sum(ps) / len(ps) if ps else float(j)

            ls[i] = [k for _, k in sorted(enumerate(ls[i]), key=lambda it: (bary(it), it[0]))]
        return ls

    best, best_cost = layers, total(layers)
    current = layers
    for s in range(SWEEPS):
        current = _transpose(sweep(current, downward=(s % 2 == 0)), between)
        cost = total(current)
        if cost < best_cost:
            best, best_cost = current, cost
        if best_cost == 0:
            break
    return best


def _transpose(layers: list[list[str]], between: list[list[tuple[str, str]]]) -> list[list[str]]:
    """Swap neighbours within a layer while that removes crossings with the layers
    above and below (the classic local refinement after barycentre sweeps);
    `between[i]` are the segments from layer i to layer i + 1."""

    def local(i: int) -> int:
        above = crossings(layers[i - 1], layers[i], between[i - 1]) if i > 0 else 0
        below = crossings(layers[i], layers[i + 1], between[i]) if i + 1 < len(layers) else 0
        return above + below

    for i, row in enumerate(layers):
        if len(row) < 2:
            continue
        cost = local(i)
        improved = True
        while improved and cost:
            improved = False
            for j in range(len(row) - 1):
                row[j], row[j + 1] = row[j + 1], row[j]
                new = local(i)
                if new < cost:
                    cost, improved = new, True
                else:
                    row[j], row[j + 1] = row[j + 1], row[j]
    return layers


# ----------------------------------------------------------------------------- coordinates


def _place_row(row: list[Box], want: list[float]) -> None:
    """x centres near `want`, at least GAP_X apart, order kept."""
    n = len(row)
    if not n:
        return
    left = [0.0] * n
    right = [0.0] * n
    for i, b in enumerate(row):
        left[i] = want[i] if i == 0 else max(want[i], left[i - 1] + (row[i - 1].w + b.w) / 2 + GAP_X)
    for i in range(n - 1, -1, -1):
        b = row[i]
        right[i] = want[i] if i == n - 1 else min(want[i], right[i + 1] - (row[i + 1].w + b.w) / 2 - GAP_X)
    for i, b in enumerate(row):
        x = (left[i] + right[i]) / 2
        if i:
            x = max(x, row[i - 1].x + (row[i - 1].w + b.w) / 2 + GAP_X)
        b.x = x


def _coordinates(boxes: dict[str, Box], order: list[list[str]], segs: list[tuple[str, str]]) -> tuple[float, float]:
    up: dict[str, list[str]] = {k: [] for k in boxes}
    down: dict[str, list[str]] = {k: [] for k in boxes}
    for a, b in segs:
        down[a].append(b)
        up[b].append(a)
    rows = [[boxes[k] for k in row] for row in order]
    for row in rows:  # packed left to right
        x = 0.0
        for b in row:
            b.x = x + b.w / 2
            x += b.w + GAP_X
    for s in range(6):
        downward = s % 2 == 0
        for row in (rows[1:] if downward else rows[-2::-1]):
            nbrs = up if downward else down
            want = []
            for b in row:
                xs = [boxes[n].x for n in nbrs[b.key]]
                want.append(sum(xs) / len(xs) if xs else b.x)
            _place_row(row, want)
    min_x = min((b.x - b.w / 2 for b in boxes.values()), default=0.0)
    y = MARGIN
    for row in rows:
        height = max((b.h for b in row if b.kind != "dummy"), default=BOX_H * 0.62)
        for b in row:
            b.x += MARGIN - min_x
            b.y = y + height / 2
        y += height + GAP_Y
    width = max((b.x + b.w / 2 for b in boxes.values()), default=0.0) + MARGIN
    return width, y - GAP_Y + MARGIN


def _route(boxes: dict[str, Box], edges: list[Edge], chains: dict[int, list[str]]) -> None:
    """Edge polylines. Of the readers of one value, the deepest draws the shared lane
    from the source; the others start where they branch off it."""
    readers: dict[str, int] = {}
    deepest: dict[tuple[str, int], int] = {}
    for i, e in enumerate(edges):
        readers[e.dst] = max(readers.get(e.dst, 0), e.index + 1)
        group = (e.src, id(e.value))
        if len(chains.get(i, [])) >= len(chains.get(deepest.get(group, i), [])):
            deepest[group] = i
    for i, e in enumerate(edges):
        src, dst = boxes[e.src], boxes[e.dst]
        n_out = len(src.ref.outputs) if src.kind == "node" else 1
        out_i = e.value.index if src.kind == "node" and n_out > 1 else 0
        sx = src.x + ((out_i - (n_out - 1) / 2) * min(14.0, src.w / (n_out + 1)) if n_out > 1 else 0.0)
        n_in = readers.get(e.dst, 1)
        dx = dst.x + ((e.index - (n_in - 1) / 2) * min(14.0, dst.w / (n_in + 1)) if n_in > 1 else 0.0)
        lane = [(boxes[k].x, boxes[k].y) for k in chains.get(i, [])]
        end = (dx, dst.y - dst.h / 2)
        if lane and deepest[(e.src, id(e.value))] != i:
            e.points = [lane[-1], end]  # branches off the lane its deepest sibling draws
        else:
            e.points = [(sx, src.y + src.h / 2), *lane, end]


def layout_graph(graph: Any, label: Callable[[Box], list[str]]) -> Layout:
    """Positions for every drawn vertex and a polyline for every edge; `label(box)`
    gives a box's text lines (which set its width)."""
    boxes, edges = _vertices(graph, label)
    _assign_layers(boxes, edges)
    chains = _add_dummies(boxes, edges)
    segs = _segments(edges, chains)
    order = _order(boxes, segs)
    width, height = _coordinates(boxes, order, segs)
    _route(boxes, edges, chains)
    return Layout(boxes, edges, width, height)
