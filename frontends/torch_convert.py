"""Walks the FX graph of a decomposed `torch.export.ExportedProgram` and builds the
requant IR graph: placeholders become graph inputs (named after the forward's
arguments) or constants (parameters, buffers and lifted tensors, named after their
torch FQN), each call becomes the nodes its lowering emits, and the program's user
outputs become graph outputs ("output_0", ... or the keys of a returned dict/dataclass).

Every emitted node carries `meta["source"]` (the module path from the FX node's
`nn_module_stack`, "" for the root module) and `meta["torch_op"]` (the aten op name).
After each lowering the result is checked against torch's own metadata (dtype, rank,
static extents; a mismatch is a lowering bug and raises) and unknown extents are
filled in from it, symbolic ones under the names given in `dynamic_dims`.

Ops without a lowering, and lowerings that refuse a variant, are all collected before
anything is raised: one `UnsupportedOpError` lists each op with its count and the module
paths where it appears. Nodes that read the result of such an op are still checked for
a lowering, but not lowered.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from requant.errors import RequantError, ShapeInferenceError, UnsupportedOpError
from requant.frontends import torch_aten  # noqa: F401  (fills LOWERINGS)
from requant.frontends.torch_lowering import (
    LOWERINGS,
    LazyConstant,
    LoweringContext,
    NotLowerable,
    ir_dtype,
    target_name,
)
from requant.ir.graph import Graph, Value
from requant.ir.types import TensorType

__all__ = ["convert_exported_program", "sanitize_name"]

logger = logging.getLogger(__name__)

_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.]")
_CALL_SUFFIX = re.compile(r"@\d+")


class _Poisoned:
    """Stands for the result of a node that could not be lowered."""

    def __repr__(self) -> str:
        return "<not lowered>"


_POISON = _Poisoned()


@dataclass
class _Unsupported:
    count: int = 0
    sources: Counter = field(default_factory=Counter)


def sanitize_name(name: str) -> str:
    """A value name the IR text form prints bare: letters, digits, '_' and '.'."""
    cleaned = _NAME_BAD_CHARS.sub("_", name)
    return cleaned or "_"


def module_path(node: fx.Node) -> str:
    """The path of the innermost module a node was traced in ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = ""
    for key, entry in stack.items():
        if str(key).startswith("_empty_nn_module_stack"):
            continue
        if isinstance(entry, tuple) and entry and isinstance(entry[0], str):
            path = entry[0]
    return _CALL_SUFFIX.sub("", path)


def convert_exported_program(
    ep: ExportedProgram, *, graph_name: str, input_dims: dict[str, dict[int, str]] | None = None
) -> Graph:
    """The IR graph of a (decomposed) exported program. `input_dims` names the symbolic
    extents of user inputs: {input name: {dim: symbol name}}."""
    return _Converter(ep, graph_name, input_dims or {}).run()


class _Converter:
    def __init__(self, ep: ExportedProgram, graph_name: str, input_dims: dict[str, dict[int, str]]) -> None:
        self.ep = ep
        self.graph = Graph(sanitize_name(graph_name))
        self.env: dict[fx.Node, Any] = {}
        self.cx = LoweringContext(self.graph, self.env)
        self.input_dims = input_dims
        self.specs = {s.arg.name: s for s in ep.graph_signature.input_specs if hasattr(s.arg, "name")}
        self.sym_names: dict[Any, str] = {}
        self.unsupported: dict[tuple[str, str], _Unsupported] = {}

    def run(self) -> Graph:
        output_node = None
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "get_attr":
                self._get_attr(node)
            elif node.op == "output":
                output_node = node
        if self.unsupported:
            raise self._unsupported_error()
        self._outputs(output_node)
        _remove_dead_code(self.graph)
        return self.graph

    # -- placeholders ---------------------------------------------------------------------
    def _placeholder(self, node: fx.Node) -> None:
        spec = self.specs.get(node.name)
        kind = spec.kind if spec is not None else InputKind.USER_INPUT
        if kind == InputKind.USER_INPUT:
            self._user_input(node)
            return
        tensor = self._lifted_tensor(spec)
        if not isinstance(tensor, torch.Tensor):
            self._record(f"placeholder {node.name}", "", f"a {kind.name.lower()} that is not a tensor")
            self.env[node] = _POISON
            return
        self.env[node] = LazyConstant(tensor, sanitize_name(spec.target))

    def _lifted_tensor(self, spec: Any) -> Any:
        if spec.kind == InputKind.PARAMETER:
            return self.ep.state_dict[spec.target]
        if spec.kind == InputKind.BUFFER:
            if spec.target in self.ep.state_dict:
                return self.ep.state_dict[spec.target]
            return self.ep.constants.get(spec.target)
        if spec.kind == InputKind.CONSTANT_TENSOR:
            return self.ep.constants.get(spec.target)
        return None

    def _user_input(self, node: fx.Node) -> None:
        val = node.meta.get("val")
        if isinstance(val, torch.SymInt):
            self.env[node] = self.graph.add_input(self.cx.unique_name(sanitize_name(node.name)),
                                                 TensorType((), ir_dtype(torch.int64)))
            return
        if not isinstance(val, torch.Tensor):
            self.env[node] = val  # a Python constant torch.export baked into the program
            return
        wanted = self.input_dims.get(node.name, {})
        dims: list[int | str | None] = []
        for i, d in enumerate(val.shape):
            static = LoweringContext.static_int(d)
            if static is not None:
                if i in wanted:
                    raise RequantError(
                        f"from_torch: dim {i} of input '{node.name}' was asked to be dynamic ('{wanted[i]}') but "
                        f"torch.export specialised it to {static}: the model's code depends on that size, or the "
                        f"example input has size 0 or 1 there (use an example of size >= 2)"
                    )
                dims.append(static)
                continue
            expr = d.node.expr
            name = wanted.get(i) or self.sym_names.get(expr) or str(expr)
            self.sym_names.setdefault(expr, name)
            dims.append(name)
        try:
            dtype = ir_dtype(val.dtype)
        except NotLowerable as exc:
            raise RequantError(f"from_torch: input '{node.name}': {exc}") from None
        name = self.cx.unique_name(sanitize_name(node.name))
        self.env[node] = self.graph.add_input(name, TensorType(tuple(dims), dtype))

    def _get_attr(self, node: fx.Node) -> None:
        attr = getattr(self.ep.graph_module, str(node.target), None)
        if isinstance(attr, torch.Tensor):
            self.env[node] = LazyConstant(attr, sanitize_name(str(node.target)))
            return
        self.env[node] = _POISON
        self._record(f"get_attr {node.target}", module_path(node), "a submodule (control flow such as torch.cond)")

    # -- calls --------------------------------------------------------------------------
    def _call(self, node: fx.Node) -> None:
        op = target_name(node.target)
        source = module_path(node)
        lower = LOWERINGS.get(op)
        if lower is None:
            self._record(op, source, "")
            self.env[node] = _POISON
            return
        if any(self.env.get(n) is _POISON for n in node.all_input_nodes):
            self.env[node] = _POISON  # its lowering cannot run without its inputs
            return
        self.cx.begin(node, source, op)
        try:
            result = lower(self.cx, *node.args, **node.kwargs)
        except NotLowerable as exc:
            self._record(op, source, str(exc))
            self.env[node] = _POISON
            return
        except UnsupportedOpError as exc:
            self._record(op, source, f"needs an op requant lacks ({exc})")
            self.env[node] = _POISON
            return
        except ShapeInferenceError as exc:
            # e.g. a dtype combination torch allows and the IR op does not
            self._record(op, source, f"the IR rejects the lowered form: {exc}")
            self.env[node] = _POISON
            return
        except Exception as exc:
            raise RequantError(
                f"from_torch: lowering {op} (FX node '{node.name}' in module '{source or '<root>'}') failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.env[node] = result
        self._check(node, op, result)
        self._name_result(node, result)

    def _name_result(self, node: fx.Node, result: Any) -> None:
        """Give the value a lowering produced for `node` the FX node's name."""
        if isinstance(result, Value) and any(result.producer is n for n in self.cx.created):
            self.graph.rename(result, self.cx.unique_name(sanitize_name(node.name)))

    def _record(self, op: str, source: str, reason: str) -> None:
        entry = self.unsupported.setdefault((op, reason), _Unsupported())
        entry.count += 1
        entry.sources[source] += 1

    def _unsupported_error(self) -> UnsupportedOpError:
        total = sum(e.count for e in self.unsupported.values())
        lines = [
            f"from_torch: {len(self.unsupported)} torch op(s) in '{self.graph.name}' cannot be converted "
            f"({total} use(s) in all):"
        ]
        for (op, reason), entry in sorted(self.unsupported.items(), key=lambda kv: (-kv[1].count, kv[0])):
            where = ", ".join(
                f"{src or '<root>'}" + (f" (x{n})" if n > 1 else "") for src, n in entry.sources.most_common()
            )
            why = f": {reason}" if reason else ": no lowering"
            lines.append(f"  {op} x{entry.count}{why}; at {where}")
        lines.append(
            "Add a lowering to the family module requant/frontends/torch_aten_<family>.py (listed in "
            "torch_aten.py), or change the model to avoid these ops."
        )
        err = UnsupportedOpError("\n".join(lines))
        err.ops = {op: entry.count for (op, _), entry in self.unsupported.items()}  # type: ignore[attr-defined]
        return err

    # -- checking results against torch's metadata ----------------------------------------
    def _check(self, node: fx.Node, op: str, result: Any) -> None:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            self._check_value(node, op, result, val)
        elif isinstance(val, (list, tuple)) and isinstance(result, (list, tuple)):
            for r, v in zip(result, val):
                if isinstance(r, Value) and isinstance(v, torch.Tensor):
                    self._check_value(node, op, r, v)

    def _check_value(self, node: fx.Node, op: str, v: Any, val: torch.Tensor) -> None:
        def bug(what: str) -> RequantError:
            return RequantError(
                f"from_torch: internal error lowering {op} (FX node '{node.name}'): {what}; torch says "
                f"{val.dtype} {tuple(val.shape)}"
            )

        if not isinstance(v, Value):
            raise bug(f"the lowering returned {type(v).__name__}, not a tensor value")
        if v.dtype != ir_dtype(val.dtype):
            raise bug(f"the IR value %{v.name} is {v.type}")
        want = [self._dim(d) for d in val.shape]
        have = v.shape
        if have is not None and len(have) != len(want):
            raise bug(f"the IR value %{v.name} is {v.type}")
        have = have if have is not None else (None,) * len(want)
        refined = []
        for h, w in zip(have, want):
            if isinstance(h, int) and isinstance(w, int) and h != w:
                raise bug(f"the IR value %{v.name} is {v.type}")
            refined.append(w if h is None else h)
        if tuple(refined) != tuple(have) and v.producer is not None:
            v.type = TensorType(tuple(refined), v.dtype)

    def _dim(self, d: Any) -> int | str | None:
        static = LoweringContext.static_int(d)
        if static is not None:
            return static
        return self.sym_names.get(d.node.expr)

    # -- outputs --------------------------------------------------------------------------
    def _outputs(self, output_node: fx.Node | None) -> None:
        if output_node is None:
            return
        specs = self.ep.graph_signature.output_specs
        results = list(output_node.args[0])
        user = [(s, r) for s, r in zip(specs, results) if s.kind == OutputKind.USER_OUTPUT]
        skipped = [s.kind.name for s in specs if s.kind != OutputKind.USER_OUTPUT]
        if skipped:
            logger.warning("from_torch: ignoring %d non-user outputs (%s): buffer or input mutations",
                           len(skipped), ", ".join(sorted(set(skipped))))
        names = _output_names(self.ep, len(user))
        self.cx.begin(output_node, "", "output")
        for name, (_, result) in zip(names, user):
            value = self._output_value(result)
            if value is None:
                logger.warning("from_torch: output %s is None; the graph leaves it out", name)
                continue
            self._add_output(value, sanitize_name(name))

    def _output_value(self, result: Any) -> Value | None:
        if isinstance(result, fx.Node):
            found = self.env.get(result)
            if isinstance(found, (Value, LazyConstant)):
                return self.cx.value(result)
            result = found
        if result is None:
            return None
        if isinstance(result, (bool, int, float)):
            return self.cx.const(result)
        raise RequantError(f"from_torch: an output of the model is a {type(result).__name__}, not a tensor")

    def _add_output(self, value: Value, name: str) -> None:
        is_input = any(value is i for i in self.graph.inputs)
        if value.producer is None or is_input or self.graph.is_output(value):
            value = self.cx.emit("Identity", value)
        self.graph.rename(value, self.cx.unique_name(name))
        self.graph.outputs.append(value)


def _output_names(ep: ExportedProgram, count: int) -> list[str]:
    """Output names from the program's output structure: dict keys and dataclass fields
    where the model returns them, "output_<i>" for tensors, tuples and lists."""
    default = [f"output_{i}" for i in range(count)]
    spec = getattr(ep.call_spec, "out_spec", None)
    if spec is None or spec.num_leaves != count:
        return default
    try:
        from torch.utils import _pytree as pytree

        skeleton = pytree.tree_unflatten(list(range(count)), spec)
        paths = [path for path, _ in pytree.tree_flatten_with_path(skeleton)[0]]
    except Exception:  # a container type without key paths: keep the positional names
        return default
    names = []
    for i, path in enumerate(paths):
        keys = [_key_name(k) for k in path]
        if not keys or all(k is None for k in keys):
            names.append(default[i])
        else:
            names.append("_".join(str(k) for k in keys if k is not None) or default[i])
    return names if len(set(names)) == len(names) else default


def _key_name(key: Any) -> str | None:
    """A pytree key as part of a name; None for a positional key."""
    for attr in ("key", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return None


def _remove_dead_code(graph: Graph) -> None:
    """Drop nodes and constants nothing reads (size computations only assertions used,
    weights of unused submodules)."""
    outputs = {id(v) for v in graph.outputs}
    removed = 0
    for node in graph.reversed():
        if all(not o.uses and id(o) not in outputs for o in node.outputs):
            graph.remove_node(node)
            removed += 1
    for const in list(graph.constants):
        if not const.uses and id(const) not in outputs:
            graph.remove_constant(const)
    if removed:
        logger.debug("from_torch: removed %d dead nodes", removed)
