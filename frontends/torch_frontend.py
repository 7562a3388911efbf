"""`from_torch`: capture a PyTorch model with torch.export and convert it to requant IR.

What this module owns: accepting the model forms (nn.Module, ExportedProgram,
fx.GraphModule), checking the example inputs against what the model expects, turning
`dynamic_dims` into torch.export dynamic shapes, exporting, and decomposing to core ATen
with a table that keeps a few high-level ops whole. The FX walk is
`torch_convert.py`; the per-op lowerings are the `torch_aten_*.py` family modules
(listed in `torch_aten.py`).

Decisions:
- Every form goes through `torch.export` (strict=False). A symbolically traced
  `fx.GraphModule` is exported too: its call_module / call_method / call_function nodes
  then reach the IR through the same aten table as any module (one table, one set of
  semantics), and torch carries their `nn_module_stack` over, so source paths survive.
- Decomposition: torch's core-ATen table minus `KEPT_OPS` (linear, matmul, layer_norm,
  group_norm, rms_norm, softmax, log_softmax, silu, scaled_dot_product_attention, the
  upsample ops), so the IR gets one LayerNormalization / Softmax / Gelu / MatMul per
  layer instead of their decomposed arithmetic, attention as one
  ScaledDotProductAttention node and an interpolation as one Resize. linear
  becomes Transpose(W) + MatMul (+ Add): weights keep torch's layout and FQN names.
- `dynamic_dims={"input_ids": {0: "batch", 1: "seq"}}` exports those dims with
  `Dim.AUTO` (torch infers their ranges and relations) and names them in the IR; a dim
  torch had to specialise is an error, not a silent static shape.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from requant.errors import RequantError
from requant.ir.graph import Graph

__all__ = ["from_torch", "KEPT_OPS", "decomposition_table"]

logger = logging.getLogger(__name__)

# aten ops kept whole by `run_decompositions` (their lowerings are in the torch_aten_*.py families)
KEPT_OPS: tuple[str, ...] = (
    "linear.default",
    "matmul.default",
    "layer_norm.default",
    "group_norm.default",
    "rms_norm.default",
    "softmax.int",
    "log_softmax.int",
    "silu.default",
    "scaled_dot_product_attention.default",
    # interpolation: one Resize each (torch_aten_resize), not gathers and arithmetic
    "upsample_nearest1d.vec", "upsample_nearest1d.default", "upsample_nearest2d.default",
    "upsample_nearest3d.vec", "upsample_nearest3d.default",
    "_upsample_nearest_exact1d.vec", "_upsample_nearest_exact1d.default",
    "_upsample_nearest_exact2d.vec", "_upsample_nearest_exact2d.default",
    "_upsample_nearest_exact3d.vec", "_upsample_nearest_exact3d.default",
    "upsample_linear1d.vec", "upsample_linear1d.default", "upsample_trilinear3d.vec",
    "upsample_bicubic2d.vec", "_upsample_bilinear2d_aa.vec", "_upsample_bicubic2d_aa.vec",
)

DynamicDims = Mapping[str, Mapping[int, str]]


def from_torch(
    model: Any,
    example_inputs: Any = None,
    *,
    dynamic_dims: DynamicDims | None = None,
    name: str | None = None,
) -> Graph:
    """Convert a PyTorch model to a requant IR graph.

    `model`: a `torch.nn.Module` (exported with `torch.export.export(strict=False)`), a
    `torch.export.ExportedProgram`, or a `torch.fx.GraphModule`. `example_inputs`: a
    tuple of positional inputs, a dict of keyword inputs, or one tensor (optional for an
    ExportedProgram, which carries its own). `dynamic_dims`: symbolic dims per input,
    `{"input_ids": {0: "batch", 1: "seq"}}`. `name`: the graph's name (default: the
    model's class name).

    Graph inputs are named after the forward's arguments, constants after the torch
    FQNs of the parameters/buffers, outputs "output_0", ... (or the keys of a returned
    dict). Raises `UnsupportedOpError` listing every op that cannot be converted, and
    `RequantError` for example inputs that do not fit the model.
    """
    import torch

    from requant.frontends.torch_convert import convert_exported_program

    args, kwargs = _split_inputs(example_inputs)
    dims = _normalise_dynamic_dims(dynamic_dims)
    started = time.perf_counter()
    if isinstance(model, torch.export.ExportedProgram):
        _check_against_program(model, args, kwargs)
        _check_dynamic_dims_names(dims, [n.name for n in _user_placeholders(model)])
        ep = model
        graph_name = name or "exported_program"
    elif isinstance(model, torch.fx.GraphModule):
        _check_against_graph_module(model, args, kwargs)
        ep = _export(model, args, kwargs, dims)
        graph_name = name or type(model).__name__
    elif isinstance(model, torch.nn.Module):
        ep = _export(model, args, kwargs, dims)
        graph_name = name or type(model).__name__
    else:
        raise RequantError(
            f"from_torch takes a torch.nn.Module, torch.export.ExportedProgram or torch.fx.GraphModule, "
            f"got {type(model).__name__}"
        )
    exported = time.perf_counter()
    ep = _decompose(ep)
    decomposed = time.perf_counter()
    graph = convert_exported_program(ep, graph_name=graph_name, input_dims=dims)
    graph.verify()
    logger.info(
        "from_torch(%s): export %.2fs, decompose %.2fs, convert %.2fs -> %d nodes, %d constants",
        graph_name, exported - started, decomposed - exported, time.perf_counter() - decomposed,
        len(graph), len(graph.constants),
    )
    return graph


def decomposition_table() -> dict:
    """torch's core-ATen decomposition table without the ops in `KEPT_OPS`."""
    import torch

    table = torch.export.default_decompositions()
    for qualified in KEPT_OPS:
        packet, overload = qualified.split(".")
        op = getattr(getattr(torch.ops.aten, packet), overload)
        table.pop(op, None)
    return table


# -- example inputs --------------------------------------------------------------------------


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    import torch

    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise RequantError(
        f"example_inputs must be a tuple of positional inputs, a dict of keyword inputs or a tensor, "
        f"got {type(example_inputs).__name__}"
    )


def _normalise_dynamic_dims(dynamic_dims: DynamicDims | None) -> dict[str, dict[int, str]]:
    if not dynamic_dims:
        return {}
    if not isinstance(dynamic_dims, Mapping):
        raise RequantError('dynamic_dims must map input names to {dim: symbol}, e.g. {"x": {0: "batch"}}')
    out: dict[str, dict[int, str]] = {}
    for input_name, dims in dynamic_dims.items():
        if not isinstance(dims, Mapping) or not all(isinstance(d, int) and isinstance(s, str) for d, s in dims.items()):
            raise RequantError(f"dynamic_dims['{input_name}'] must map dim indices to symbol names, got {dims!r}")
        out[str(input_name)] = dict(dims)
    return out


def _describe(x: Any) -> str:
    import torch

    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}"
    return type(x).__name__


def _bind(model: Any, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    sig = inspect.signature(model.forward)
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as exc:
        given = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
        raise RequantError(
            f"example inputs ({given or 'none'}) do not fit {type(model).__name__}.forward{sig}: {exc}"
        ) from exc


def _export(model: Any, args: tuple, kwargs: dict, dims: dict[str, dict[int, str]]) -> Any:
    import torch

    bound = _bind(model, args, kwargs)
    dynamic_shapes = _dynamic_shapes(model, bound, dims)
    try:
        with _quiet(_TRACEBACK_LOGGERS):
            return torch.export.export(model, args, kwargs=kwargs or None, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        given = ", ".join(f"{k}: {_describe(v)}" for k, v in bound.arguments.items())
        raise RequantError(
            f"torch.export could not trace {type(model).__name__} with the example inputs ({given}): "
            f"{_first_lines(exc)}"
        ) from exc


# torch logs the full traceback of a failed shape check here before raising; the
# RequantError carries the message and chains the exception instead
_TRACEBACK_LOGGERS = ("torch._subclasses.fake_tensor",)


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_lines(exc: BaseException, n: int = 6) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def _dynamic_shapes(model: Any, bound: inspect.BoundArguments, dims: dict[str, dict[int, str]]) -> dict | None:
    """torch.export's `dynamic_shapes` for `dims`, keyed like the forward's parameters."""
    import torch

    if not dims:
        return None
    params = inspect.signature(model.forward).parameters
    tensors: dict[str, Any] = {}
    for pname, value in bound.arguments.items():
        if params[pname].kind == inspect.Parameter.VAR_KEYWORD:
            tensors.update(value)
        elif params[pname].kind != inspect.Parameter.VAR_POSITIONAL:
            tensors[pname] = value
    _check_dynamic_dims_names(dims, list(tensors))

    def spec_for(input_name: str, value: Any) -> Any:
        wanted = dims.get(input_name)
        if wanted is None:
            return None
        if not isinstance(value, torch.Tensor):
            raise RequantError(f"dynamic_dims['{input_name}']: that input is a {type(value).__name__}, not a tensor")
        rank = value.dim()
        spec = {}
        for d, symbol in list(wanted.items()):
            if not -rank <= d < rank:
                raise RequantError(
                    f"dynamic_dims['{input_name}'] names dim {d}, but the example input is {_describe(value)} "
                    f"(rank {rank})"
                )
            spec[d % rank] = torch.export.Dim.AUTO
            if d < 0:
                del wanted[d]
                wanted[d % rank] = symbol
        return spec

    shapes: dict[str, Any] = {}
    for pname, value in bound.arguments.items():
        kind = params[pname].kind
        if kind == inspect.Parameter.VAR_KEYWORD:
            shapes[pname] = {k: spec_for(k, v) for k, v in value.items()}
        elif kind == inspect.Parameter.VAR_POSITIONAL:
            shapes[pname] = tuple(None for _ in value)
        else:
            shapes[pname] = spec_for(pname, value)
    return shapes


def _check_dynamic_dims_names(dims: dict[str, dict[int, str]], inputs: Sequence[str]) -> None:
    unknown = sorted(set(dims) - set(inputs))
    if unknown:
        raise RequantError(
            f"dynamic_dims names input(s) {', '.join(unknown)}, but the inputs are {', '.join(inputs) or 'none'}"
        )


def _user_placeholders(ep: Any) -> list[Any]:
    from torch.export.graph_signature import InputKind

    user = {s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT}
    return [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]


def _check_against_program(ep: Any, args: tuple, kwargs: dict) -> None:
    """Example inputs given with an ExportedProgram must match what it was traced with."""
    import torch

    if not args and not kwargs:
        return
    nodes = _user_placeholders(ep)
    tensor_nodes = [n for n in nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    if len(args) + len(kwargs) != len(nodes):
        expected = ", ".join(f"{n.name}: {_describe_meta(n.meta.get('val'))}" for n in nodes)
        raise RequantError(
            f"the ExportedProgram takes {len(nodes)} input(s) ({expected}), got {len(args) + len(kwargs)}"
        )
    by_name = {n.name: n for n in nodes}
    pairs = list(zip(nodes, args))
    for key, value in kwargs.items():
        if key not in by_name:
            raise RequantError(f"the ExportedProgram has no input '{key}'; its inputs are {', '.join(by_name)}")
        pairs.append((by_name[key], value))
    for node, value in pairs:
        if node in tensor_nodes:
            _check_tensor(node.name, node.meta["val"], value, "the ExportedProgram", check_extents=True)


def _check_against_graph_module(gm: Any, args: tuple, kwargs: dict) -> None:
    """A GraphModule whose placeholders carry shape metadata (ShapeProp's tensor_meta or
    a FakeTensor `val`) must get inputs of the same dtype and rank."""
    _bind(gm, args, kwargs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    given = dict(zip([n.target for n in placeholders], args))
    given.update(kwargs)
    for node in placeholders:
        recorded = node.meta.get("val", node.meta.get("tensor_meta"))
        if recorded is None or node.target not in given:
            continue
        if hasattr(recorded, "shape") and hasattr(recorded, "dtype"):
            _check_tensor(str(node.target), recorded, given[node.target], "the GraphModule", check_extents=False)


def _describe_meta(meta: Any) -> str:
    if meta is None:
        return "?"
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        dims = ", ".join(str(d) for d in meta.shape)
        return f"{str(meta.dtype).removeprefix('torch.')}[{dims}]"
    return type(meta).__name__


def _check_tensor(name: str, recorded: Any, value: Any, owner: str, *, check_extents: bool) -> None:
    import torch

    expected = _describe_meta(recorded)
    if not isinstance(value, torch.Tensor):
        raise RequantError(f"input '{name}' of {owner}: expected a tensor {expected}, got {type(value).__name__}")
    problem = None
    if value.dtype != recorded.dtype:
        problem = "dtype"
    elif value.dim() != len(recorded.shape):
        problem = "rank"
    elif check_extents:
        for got, want in zip(value.shape, recorded.shape):
            if isinstance(want, int) and got != want:
                problem = "shape"
                break
    if problem:
        raise RequantError(f"input '{name}' of {owner}: expected {expected}, got {_describe(value)} (wrong {problem})")


def _decompose(ep: Any) -> Any:
    try:
        return ep.run_decompositions(decomposition_table())
    except Exception as exc:
        raise RequantError(f"torch could not decompose the exported program to core ATen: {_first_lines(exc)}") from exc
