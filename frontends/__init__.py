"""Frontends: PyTorch (torch.export / torch.fx) and ONNX models -> requant IR.

`from_torch` and `from_onnx` are thin wrappers that import their frontend module, and
with it torch or onnx, only when called: `import requant.frontends` stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from requant.ir.graph import Graph

__all__ = ["from_torch", "from_onnx"]


def from_torch(
    model: Any,
    example_inputs: Any = None,
    *,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
    name: str | None = None,
) -> Graph:
    """A torch.nn.Module, torch.export.ExportedProgram or torch.fx.GraphModule as a
    requant IR graph; see `requant.frontends.torch_frontend.from_torch`."""
    from requant.frontends.torch_frontend import from_torch as _from_torch

    return _from_torch(model, example_inputs, dynamic_dims=dynamic_dims, name=name)


def from_onnx(path_or_proto: Any, **options: Any) -> Graph:
    """An ONNX model (a path or an onnx.ModelProto) as a requant IR graph; see
    `requant.frontends.onnx_frontend.from_onnx`."""
    from requant.frontends.onnx_frontend import from_onnx as _from_onnx

    return _from_onnx(path_or_proto, **options)
