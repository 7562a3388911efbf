"""The pass infrastructure: what a pass is, the registry of named passes, and the
pass manager that runs a pipeline of them.

- `PassResult(graph, changed, stats)`: what every pass returns.
- `Pass`: base class with `name`, `description`, `in_place` and `run(graph)`; calling a
  pass runs it and checks its contract (an in-place pass returns the graph it was given;
  a functional pass leaves its input untouched, checked by fingerprint when verifying).
- `graph_pass(name, description)`: turns `def fn(graph, **options) -> PassResult` into
  a registered `PassFactory`; `factory(**options)` makes the pass, options validated.
- `register_pass`, `get_pass(name, **options)`, `get_factory(name)`,
  `available_passes()`: the registry.
- `Condition(name, check, hint)`: a named property of a graph. A pass declares the
  conditions it `requires` and those it `ensures` (`graph_pass(..., requires=...,
  ensures=...)`; the conditions themselves live in passes/conditions.py). Calling a pass
  first checks that each required condition holds: a pass that ensures it already ran
  on this graph, or its `check` finds nothing wrong; else a `PassError` names the pass,
  the condition, the reason and the way out. After the pass, what it ensures is recorded
  on the graph (`ensured_conditions(graph)`), for this graph object only: the record is
  neither written by the text form nor exported to ONNX.
- Pipeline inputs: `graph_pass(..., pipeline_inputs=("stats",))` declares the options a
  pipeline fills with values it holds when it runs the pass without explicit options
  (`PIPELINE_INPUTS`: "stats", the calibration statistics; "batches", the calibration
  batches); `factory.pipeline_inputs` reads the declaration.
- `PassManager(passes, verify=None, fixed_point=False, max_iterations=10)`: runs the
  pipeline, verifies after each pass when asked (env `REQUANT_VERIFY=1` turns it on),
  records per-pass time, stats and node counts, and wraps any failure in a `PassError`
  naming the failing pass, its position and the passes that ran before it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from requant.errors import PassError, RequantError, RewriteLimitError
from requant.ir.graph import Graph

__all__ = [
    "Condition",
    "ConditionsDeclaration",
    "ensured_conditions",
    "ENSURED_META_KEY",
    "PIPELINE_INPUTS",
    "PassResult",
    "Pass",
    "FunctionPass",
    "PassFactory",
    "graph_pass",
    "register_pass",
    "get_pass",
    "get_factory",
    "available_passes",
    "verify_enabled",
    "graph_fingerprint",
    "PassRecord",
    "PipelineResult",
    "PassManager",
]

logger = logging.getLogger(__name__)

Stats = dict[str, int | float | str]

# What a pipeline can hand a pass that declares it (`graph_pass(..., pipeline_inputs=)`).
PIPELINE_INPUTS: dict[str, str] = {
    "stats": "the calibration statistics the pipeline collected",
    "batches": "the calibration batches the pipeline was given",
}

# graph.meta key of the conditions ensured on a graph (see `ensured_conditions`).
ENSURED_META_KEY = "ensured_conditions"


# -- conditions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A named property of a graph that passes require or ensure. `check(graph)` returns
    None when the property holds, else the reason it does not ("2 Gemm nodes remain");
    `hint` is the way out ("run 'canonicalize' first"). Conditions are told apart by name."""

    name: str
    check: Callable[[Graph], str | None] = field(compare=False)
    hint: str = field(compare=False)

    def __repr__(self) -> str:
        return f"<Condition {self.name!r}>"


# The conditions a pass declares: a sequence, or a function of the pass's options that
# returns one (for a pass whose guarantee depends on how it is configured).
ConditionsDeclaration = Sequence[Condition] | Callable[..., Sequence[Condition]]


class _EnsuredConditions(frozenset):
    """The names of the conditions ensured on a graph. A frozenset on purpose: neither
    the text form nor the ONNX exporter can write one, so the record stays with the
    graph object it was made on (a graph read back from text or ONNX has to show its
    conditions by their checks)."""


def ensured_conditions(graph: Graph) -> frozenset[str]:
    """Names of the conditions that passes which ran on `graph` ensured."""
    return frozenset(graph.meta.get(ENSURED_META_KEY, ()))


def _record_ensured(graph: Graph, conditions: Sequence[Condition]) -> None:
    if conditions:
        names = ensured_conditions(graph) | {c.name for c in conditions}
        graph.meta[ENSURED_META_KEY] = _EnsuredConditions(names)


def _unmet_requirement(pass_name: str, conditions: Sequence[Condition], graph: Graph) -> str | None:
    """The error sentence for the first required condition that does not hold, or None."""
    ensured = ensured_conditions(graph)
    for condition in conditions:
        if condition.name in ensured:
            continue
        reason = condition.check(graph)
        if reason is not None:
            return f"pass '{pass_name}' requires {condition.name} ({reason}): {condition.hint}"
    return None


@dataclass
class PassResult:
    """What a pass returns: the graph after it, whether it changed anything, and
    pass-specific counters (e.g. `nodes_removed`)."""

    graph: Graph
    changed: bool
    stats: Stats = field(default_factory=dict)


def verify_enabled(verify: bool | None = None) -> bool:
    """`verify` when given, else whether the environment asks for verification
    (`REQUANT_VERIFY=1`)."""
    if verify is not None:
        return verify
    return os.environ.get("REQUANT_VERIFY", "") == "1"


class Pass:
    """A graph transformation. Subclasses set `name` and `description` (one line) and
    implement `run`. An in-place pass (the default) mutates and returns the graph it is
    given; a functional pass (`in_place = False`) returns a new graph and must leave its
    input as it was. `requires` / `ensures`: the conditions it needs and leaves."""

    name: str = ""
    description: str = ""
    in_place: bool = True
    requires: tuple[Condition, ...] = ()
    ensures: tuple[Condition, ...] = ()
    pipeline_inputs: tuple[str, ...] = ()  # read by register_pass (see PIPELINE_INPUTS)

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError(f"pass '{self.name}' does not implement run()")

    def __call__(self, graph: Graph, *, verify: bool | None = None) -> PassResult:
        """Check the conditions the pass requires, run it, check its contract and record
        the conditions it ensures. With verification on, a functional pass is also
        checked not to have mutated its input."""
        unmet = _unmet_requirement(self.name, self.requires, graph)
        if unmet is not None:
            raise PassError(unmet)
        checking = verify_enabled(verify)
        before = graph_fingerprint(graph) if checking and not self.in_place else None
        result = self.run(graph)
        if not isinstance(result, PassResult):
            raise PassError(f"pass '{self.name}' returned {type(result).__name__}, not a PassResult")
        if self.in_place and result.graph is not graph:
            raise PassError(
                f"pass '{self.name}' is in-place but returned a different graph object; "
                f"return the graph it was given, or set in_place = False"
            )
        if not self.in_place:
            if result.graph is graph:
                raise PassError(
                    f"pass '{self.name}' is functional (in_place = False) but returned its input graph; "
                    f"return a new graph, or set in_place = True"
                )
            if before is not None and graph_fingerprint(graph) != before:
                raise PassError(f"pass '{self.name}' is functional (in_place = False) but mutated its input graph")
        _record_ensured(result.graph, self.ensures)
        return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


def graph_fingerprint(graph: Graph) -> tuple[int, str]:
    """Node count and a digest of the graph's structure (object identities, names,
    types, attributes), cheap enough to take around every pass when verifying."""
    h = hashlib.blake2b(digest_size=16)

    def values(vs) -> str:
        return ",".join(f"{id(v)}:{v.name}:{v.type}:{id(v.const)}" for v in vs)

    h.update(f"in[{values(graph.inputs)}]const[{values(graph.constants)}]".encode())
    for node in graph:
        ins = ",".join("_" if v is None else str(id(v)) for v in node.inputs)
        attrs = repr(sorted(node.attrs.items()))
        h.update(f"|{id(node)}:{node.op}({ins})->[{values(node.outputs)}]{attrs}".encode())
    h.update(f"out[{values(graph.outputs)}]".encode())
    return len(graph), h.hexdigest()


# -- function passes and the registry ----------------------------------------------------


class FunctionPass(Pass):
    """A pass made from a function `fn(graph, **options) -> PassResult`."""

    def __init__(
        self,
        fn: Callable[..., PassResult],
        name: str,
        description: str,
        options: dict[str, Any] | None = None,
        in_place: bool = True,
        requires: Sequence[Condition] = (),
        ensures: Sequence[Condition] = (),
    ) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        self.options = dict(options or {})
        self.in_place = in_place
        self.requires = tuple(requires)
        self.ensures = tuple(ensures)

    def run(self, graph: Graph) -> PassResult:
        return self.fn(graph, **self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"<FunctionPass '{self.name}'{' ' + opts if opts else ''}>"


class PassFactory:
    """Makes configured instances of one named pass: `factory(**options) -> Pass`.
    `factory.apply(graph, **options)` runs a fresh instance directly.

    It carries the pass's declarations: `requires` / `ensures` (the conditions of an
    instance made with the default options; each instance gets those of its own
    options) and `pipeline_inputs` (the options a pipeline fills, see PIPELINE_INPUTS)."""

    def __init__(
        self,
        name: str,
        description: str,
        make: Callable[..., Pass],
        options: dict[str, Any],
        fn: Callable[..., PassResult] | None = None,
        *,
        requires: ConditionsDeclaration = (),
        ensures: ConditionsDeclaration = (),
        pipeline_inputs: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.description = description
        self._make = make
        self.options = dict(options)  # option name -> default
        self.fn = fn  # the plain function of a `graph_pass`, for direct calls
        self.__doc__ = getattr(fn or make, "__doc__", None)
        self._requires = _checked_declaration(name, "requires", requires)
        self._ensures = _checked_declaration(name, "ensures", ensures)
        self.pipeline_inputs = _checked_pipeline_inputs(name, pipeline_inputs, self.options)

    @property
    def requires(self) -> tuple[Condition, ...]:
        """The conditions an instance made with the default options requires."""
        return self._conditions(self._requires, {}, "requires")

    @property
    def ensures(self) -> tuple[Condition, ...]:
        """The conditions an instance made with the default options ensures."""
        return self._conditions(self._ensures, {}, "ensures")

    def __call__(self, **options: Any) -> Pass:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise RequantError(f"pass '{self.name}': unknown option(s) {', '.join(unknown)}; valid options: {valid}")
        p = self._make(**options)
        p.requires = self._conditions(self._requires, options, "requires")
        p.ensures = self._conditions(self._ensures, options, "ensures")
        return p

    def apply(self, graph: Graph, **options: Any) -> PassResult:
        return self(**options)(graph)

    def _conditions(self, declared: ConditionsDeclaration, options: dict[str, Any], what: str) -> tuple[Condition, ...]:
        if not callable(declared):
            return tuple(declared)
        conditions = tuple(declared(**{**self.options, **options}))
        return _checked_declaration(self.name, what, conditions)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<PassFactory '{self.name}'>"


def _checked_declaration(pass_name: str, what: str, declared: ConditionsDeclaration) -> ConditionsDeclaration:
    """`declared` as stored: a function as it is, a sequence as a tuple of Conditions."""
    if callable(declared):
        return declared
    if isinstance(declared, (str, Condition)):
        raise TypeError(f"pass '{pass_name}': {what}= takes a sequence of Conditions, e.g. ({declared!r},)")
    conditions = tuple(declared)
    for c in conditions:
        if not isinstance(c, Condition):
            raise TypeError(f"pass '{pass_name}': {what}= holds {c!r}, which is not a Condition")
    return conditions


def _checked_pipeline_inputs(pass_name: str, declared: Sequence[str], options: dict[str, Any]) -> tuple[str, ...]:
    if isinstance(declared, str):
        raise TypeError(f"pass '{pass_name}': pipeline_inputs= takes a sequence of names, e.g. ({declared!r},)")
    names = tuple(declared)
    for name in names:
        if name not in PIPELINE_INPUTS:
            known = ", ".join(f"'{k}' ({v})" for k, v in PIPELINE_INPUTS.items())
            raise RequantError(f"pass '{pass_name}': unknown pipeline input '{name}'; a pipeline holds {known}")
        if name not in options:
            raise RequantError(f"pass '{pass_name}': pipeline input '{name}' is not one of its options "
                               f"({', '.join(options) or 'none'}); the pipeline passes it as the option of that name")
    return names


def _option_defaults(fn: Callable[..., Any], skip: int) -> dict[str, Any]:
    """Keyword options a callable takes after its first `skip` positional parameters."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    options: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise RequantError(f"{fn.__qualname__}: pass options must be named keyword parameters, not *args/**kwargs")
        options[p.name] = None if p.default is p.empty else p.default
    return options


_REGISTRY: dict[str, PassFactory] = {}


def register_pass(
    pass_or_factory: PassFactory | type[Pass],
    *,
    replace: bool = False,
    requires: ConditionsDeclaration | None = None,
    ensures: ConditionsDeclaration | None = None,
    pipeline_inputs: Sequence[str] | None = None,
) -> PassFactory:
    """Add a pass to the registry under its name: a `PassFactory` (what `graph_pass`
    makes) or a `Pass` subclass whose `__init__` keyword parameters are its options.
    `requires` / `ensures` / `pipeline_inputs`, when given, replace the declarations of
    the factory (or the class attributes of the same names)."""
    if isinstance(pass_or_factory, PassFactory):
        factory = pass_or_factory
        if requires is not None:
            factory._requires = _checked_declaration(factory.name, "requires", requires)
        if ensures is not None:
            factory._ensures = _checked_declaration(factory.name, "ensures", ensures)
        if pipeline_inputs is not None:
            factory.pipeline_inputs = _checked_pipeline_inputs(factory.name, pipeline_inputs, factory.options)
    elif isinstance(pass_or_factory, type) and issubclass(pass_or_factory, Pass):
        cls = pass_or_factory
        init = cls.__init__
        options = {} if init is object.__init__ else _option_defaults(init, 1)
        factory = PassFactory(
            cls.name, cls.description, cls, options,
            requires=cls.requires if requires is None else requires,
            ensures=cls.ensures if ensures is None else ensures,
            pipeline_inputs=cls.pipeline_inputs if pipeline_inputs is None else pipeline_inputs,
        )
    else:
        raise TypeError(f"register_pass takes a PassFactory or a Pass subclass, not {pass_or_factory!r}")
    if not factory.name or not factory.description:
        raise RequantError(f"{pass_or_factory!r}: a registered pass needs a name and a one-line description")
    if factory.name in _REGISTRY and not replace and _REGISTRY[factory.name] is not factory:
        raise RequantError(f"pass '{factory.name}' is already registered (pass replace=True to override it)")
    _REGISTRY[factory.name] = factory
    return factory


def graph_pass(
    name: str,
    description: str,
    *,
    in_place: bool = True,
    requires: ConditionsDeclaration = (),
    ensures: ConditionsDeclaration = (),
    pipeline_inputs: Sequence[str] = (),
) -> Callable[[Callable[..., PassResult]], PassFactory]:
    """Decorator: `def fn(graph, **options) -> PassResult` becomes a registered
    `PassFactory` called `name`; the keyword parameters after `graph` are its options.
    `requires` / `ensures`: the conditions the pass needs and leaves (Conditions, or a
    function of the pass's options returning them); `pipeline_inputs`: the options a
    pipeline fills with what it holds (PIPELINE_INPUTS) when it gives no options."""

    def wrap(fn: Callable[..., PassResult]) -> PassFactory:
        defaults = _option_defaults(fn, 1)

        def make(**options: Any) -> FunctionPass:
            return FunctionPass(fn, name, description, options, in_place=in_place)

        factory = PassFactory(name, description, make, defaults, fn=fn, requires=requires, ensures=ensures,
                              pipeline_inputs=pipeline_inputs)
        return register_pass(factory)

    return wrap


# Passes that live outside requant.passes (a backend's own lowering: a pass never imports
# a backend) are declared in package metadata, entry-point group "requant.passes" ({pass
# name: module}); their module registers them when first asked for.
PLUGIN_GROUP = "requant.passes"


@cache
def _plugin_modules() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}


def _load_plugin(name: str) -> None:
    module = _plugin_modules().get(name)
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module)


def get_factory(name: str) -> PassFactory:
    """The registered factory of pass `name` (its options and declarations)."""
    _load_plugin(name)
    factory = _REGISTRY.get(name)
    if factory is None:
        known = ", ".join(sorted(set(_REGISTRY) | set(_plugin_modules()))) or "none"
        raise RequantError(f"unknown pass '{name}'; known passes: {known}")
    return factory


def get_pass(name: str, **options: Any) -> Pass:
    """A configured instance of the registered pass `name`."""
    return get_factory(name)(**options)


def available_passes() -> dict[str, str]:
    """Every registered pass name with its one-line description, sorted by name (the
    passes declared by other packages included, when their module imports)."""
    for name in _plugin_modules():
        try:
            _load_plugin(name)
        except ImportError as exc:  # e.g. the backend's runtime is not installed
            logger.info("pass '%s' is not available: %s", name, exc)
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


# -- the pass manager ----------------------------------------------------------------------


@dataclass
class PassRecord:
    """One pass run inside a pipeline (`iteration` counts fixed-point sweeps from 1)."""

    name: str
    changed: bool
    stats: Stats
    seconds: float
    nodes_before: int
    nodes_after: int
    iteration: int = 1


@dataclass
class PipelineResult:
    """What `PassManager.run` returns: the final graph, whether any pass changed it, and
    one record per pass run, in order."""

    graph: Graph
    changed: bool
    records: list[PassRecord]

    def table(self) -> str:
        """A plain-text table of the passes run, for reports (stats that are zero are
        left out)."""
        multi = any(r.iteration > 1 for r in self.records)
        header = (["iter"] if multi else []) + ["pass", "changed", "nodes", "time ms", "stats"]
        rows = []
        for r in self.records:
            # Zero counters are the common case; listing them would hide the ones that fired.
            stats = ", ".join(f"{k}={_fmt_stat(v)}" for k, v in r.stats.items() if not _is_zero(v))
            row = [r.name, "yes" if r.changed else "no", f"{r.nodes_before}->{r.nodes_after}", f"{r.seconds * 1e3:.2f}", stats]
            rows.append(([str(r.iteration)] if multi else []) + row)
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        out = [line(header), line(["-" * w for w in widths])]
        out += [line(row) for row in rows]
        total = sum(r.seconds for r in self.records)
        out.append(f"{len(self.records)} pass runs, {total * 1e3:.2f} ms, changed: {'yes' if self.changed else 'no'}")
        return "\n".join(out)


def _is_zero(v: int | float | str) -> bool:
    return not isinstance(v, str) and v == 0


def _fmt_stat(v: int | float | str) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class PassManager:
    """Runs a pipeline of passes (registered names or `Pass` objects) over a graph.

    `verify=None` reads `REQUANT_VERIFY` ("1" = on). With `fixed_point`, the whole list
    is repeated until a sweep changes nothing, at most `max_iterations` sweeps."""

    def __init__(
        self,
        passes: Sequence[str | Pass],
        verify: bool | None = None,
        fixed_point: bool = False,
        max_iterations: int = 10,
    ) -> None:
        if isinstance(passes, (str, Pass)):
            raise TypeError("PassManager takes a sequence of passes, e.g. ['dce'], not a single pass")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.passes: list[Pass] = [get_pass(p) if isinstance(p, str) else p for p in passes]
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"PassManager: {p!r} is neither a pass name nor a Pass")
        self.verify = verify_enabled(verify)
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations

    def run(self, graph: Graph) -> PipelineResult:
        if self.verify:
            self._verify_input(graph)
        records: list[PassRecord] = []
        changed_any = False
        sweeps = self.max_iterations if self.fixed_point else 1
        for iteration in range(1, sweeps + 1):
            changing: list[str] = []
            for position, p in enumerate(self.passes, start=1):
                graph, record = self._run_one(p, graph, position, iteration, records)
                records.append(record)
                if record.changed:
                    changing.append(p.name)
            changed_any = changed_any or bool(changing)
            if not self.fixed_point or not changing:
                return PipelineResult(graph, changed_any, records)
        names = ", ".join(dict.fromkeys(changing))
        raise RewriteLimitError(
            f"pass pipeline did not reach a fixed point in {self.max_iterations} iterations; "
            f"still changing in the last one: {names} (raise max_iterations, or fix a pass that undoes another)"
        )

    def _verify_input(self, graph: Graph) -> None:
        try:
            graph.verify()
        except RequantError as exc:
            raise PassError(f"the input graph is invalid before any pass ran: {exc}") from exc

    def _run_one(
        self, p: Pass, graph: Graph, position: int, iteration: int, history: list[PassRecord]
    ) -> tuple[Graph, PassRecord]:
        nodes_before = len(graph)
        start = time.perf_counter()
        try:
            result = p(graph, verify=self.verify)
        except Exception as exc:
            raise PassError(f"{self._where(p, position, iteration, history)} failed: {exc}") from exc
        seconds = time.perf_counter() - start
        if self.verify:
            try:
                result.graph.verify()
            except Exception as exc:
                raise PassError(
                    f"{self._where(p, position, iteration, history)} left an invalid graph: {exc}"
                ) from exc
        record = PassRecord(p.name, bool(result.changed), dict(result.stats), seconds, nodes_before, len(result.graph), iteration)
        logger.debug("pass %s: changed=%s nodes %d->%d %.2f ms %s", p.name, record.changed,
                     nodes_before, record.nodes_after, seconds * 1e3, record.stats)
        return result.graph, record

    def _where(self, p: Pass, position: int, iteration: int, history: list[PassRecord]) -> str:
        """How an error names a pass: "pass 'cse' (2 of 3, after: dce)"."""
        ran = [r.name for r in history]
        # Long fixed-point histories would drown the message; keep the most recent runs.
        if len(ran) > 12:
            ran = [f"... {len(ran) - 12} earlier"] + ran[-12:]
        after = ", ".join(ran) if ran else "none"
        sweep = f", iteration {iteration}" if self.fixed_point else ""
        return f"pass '{p.name}' ({position} of {len(self.passes)}{sweep}, after: {after})"

    def __repr__(self) -> str:
        return f"<PassManager [{', '.join(p.name for p in self.passes)}]>"
