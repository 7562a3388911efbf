"""Graph runners: what runs a requant `Graph` on numpy inputs when a pass needs the
graph's values (calibration statistics, activation samples) or the compiler needs the
float model's outputs (the accuracy report). One mechanism for all of them.

A runner is `make(graph) -> run`, with `run(feeds: {input name: array}) -> [array per
graph output]` and a `name` attribute. requant's interpreter is built in
("interpreter"); a backend offers a faster one through the entry-point group
`requant.runners` in its package metadata (pyproject.toml: ONNX Runtime's is
`onnxruntime = "requant.backends.onnx.runtime:OnnxRuntimeRunner"`), so neither the IR
nor the passes ever import a backend. `make_runner(graph, "auto")` tries the backends'
runners in `PREFERENCE` order and falls back to the interpreter, with a warning, when
none is installed or none takes the graph (an op it cannot export, a runtime error).
A graph whose constants exceed `IN_PLACE_BYTES` goes to the interpreter under "auto":
it computes on the graph's own arrays, where a runtime session would hold the weights
a second time (and pack them), which on a model of several GB decides whether the
compile fits in memory; the runs passes and the accuracy report make are few.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Protocol

import numpy as np

from requant.errors import RequantError

__all__ = ["GraphRunner", "PREFERENCE", "INTERPRETER", "IN_PLACE_BYTES", "runner_names", "make_runner"]

logger = logging.getLogger(__name__)

INTERPRETER = "interpreter"
PREFERENCE: tuple[str, ...] = ("onnxruntime",)
"""The runners "auto" tries first, in order, before the interpreter."""

ENTRY_POINT_GROUP = "requant.runners"

IN_PLACE_BYTES = 1 << 31
"""Above this many bytes of constants "auto" runs a graph in the interpreter (module docstring)."""


class GraphRunner(Protocol):
    name: str

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class InterpreterRunner:
    """requant's reference interpreter (`requant.ir.run`): slow, runs every op."""

    name = INTERPRETER

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        from requant.ir.interpreter import run

        return run(self.graph, dict(feeds))


@cache
def _plugins() -> dict[str, str]:
    """{runner name: "module:attribute"} declared by installed packages."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def runner_names() -> tuple[str, ...]:
    """Every runner `make_runner` knows, and "auto"."""
    return (*sorted(_plugins()), INTERPRETER, "auto")


def _factory(name: str) -> Callable[[Any], GraphRunner]:
    if name == INTERPRETER:
        return InterpreterRunner
    target = _plugins().get(name)
    if target is None:
        raise RequantError(f"unknown graph runner '{name}'; known: {', '.join(runner_names())}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_runner(graph: Any, name: str = "auto") -> GraphRunner:
    """A runner of `graph` (module docstring). A named runner that cannot take the graph
    raises; "auto" falls back to the interpreter instead."""
    if name != "auto":
        return _factory(name)(graph)
    held = sum(int(v.const.nbytes) for v in graph.constants if isinstance(v.const, np.ndarray))
    if held > IN_PLACE_BYTES:
        logger.info("graph '%s' holds %.1f GB of constants: the interpreter runs it on them in place",
                    getattr(graph, "name", "?"), held / 1e9)
        return InterpreterRunner(graph)
    for candidate in PREFERENCE:
        if candidate not in _plugins():
            continue
        try:
            return _factory(candidate)(graph)
        except (RequantError, ImportError) as exc:
            logger.warning("%s cannot run graph '%s' (%s); using the interpreter", candidate,
                           getattr(graph, "name", "?"), exc)
            return InterpreterRunner(graph)
    _warn_no_backend_runner()
    return InterpreterRunner(graph)


@cache
def _warn_no_backend_runner() -> None:
    logger.warning("no backend graph runner is installed (entry points '%s'; pip install 'requant[onnx]'): "
                   "graphs run in the interpreter", ENTRY_POINT_GROUP)
