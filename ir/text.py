"""The IR's text form: `print_graph(graph)` writes it, `parse_graph(text)` reads it back.

The form round-trips exactly: input and output order, value and node names, types
(symbolic dims, unknown dims `?`, unknown rank `[...]`), every dtype, attributes, node,
value and graph meta (where JSON can hold it), omitted inputs `_`, multi-output nodes,
and constant payloads bit for bit. Tests and docs write small graphs in it:

    graph main(%x: f32[batch,4], %mask: bool[batch,?]) -> (%y, %a) {
      const %w: f32[4,3] = base64"AACAPwAAAEA..."          // > 16 elements: raw bytes
      const %b: f32[3] = [0.0, -0.0, inf]                  // <= 16: readable numbers
      %t: f32[batch,3] = MatMul(%x, %w)
      %y: f32[batch,3] = Add(%t, %b) @"encoder.add" #meta {"created_by": "rule_x"}
      #meta %y {"scale": 0.5}
      %a: f32[batch,2], %c: f32[batch,2] = Split(%x, _) {axis=1, num_outputs=2}
      %z = Relu(%t)                                        // types inferred when omitted
    }

Grammar (`//` and `#` start comments, except the reserved word `#meta`):

    graph    := 'graph' NAME '(' [VALUE ':' type {',' VALUE ':' type}] ')'
                '->' ( '(' [VALUE {',' VALUE}] ')' | VALUE ) [META] '{' {stmt} '}'
    stmt     := 'const' VALUE ':' type '=' payload
              | [result {',' result} '='] OP '(' [arg {',' arg}] ')' ['@' NAME] [attrs] [META]
              | '#meta' VALUE JSON-object                     // meta of a value
    result   := VALUE [':' type]                              // all typed, or none
    arg      := VALUE | '_'                                   // '_': omitted optional input
    type     := DTYPE '[' ( '...' | [dim {',' dim}] ) ']'     // f32[], f32[batch,?,4]
    dim      := INT | IDENT | STRING | '?'
    attrs    := '{' [NAME '=' attr {',' NAME '=' attr}] '}'
    attr     := INT | FLOAT | STRING | 'true' | 'false' | 'none' | '[' [attr {',' attr}] ']'
              | 'array' '(' type ',' payload ')' | 'dtype' '(' DTYPE ')' | 'type' '(' type ')'
    payload  := scalar | nested-list | 'base64' STRING         // elements in C order
    META     := '#meta' JSON-object
    VALUE    := '%' (BARE | STRING);  NAME := BARE | STRING;  BARE := [A-Za-z0-9_.]+

Floats print as the shortest decimal that reads back to the same bits in their dtype
(`inf`, `-inf`, `nan`, `-0.0` included); an int attribute never has a `.`, a float one
always has `.`, `e`, `inf` or `nan`. A payload of more than 16 elements, or one whose
numbers cannot carry its exact bits (a NaN with a payload), is written as base64 of its
little-endian storage bytes (int4/uint4 one byte per element, as stored). A scalar
payload fills the whole shape. Meta entries JSON cannot hold are converted where
obvious (numpy scalars and arrays, dtypes, types) and left out otherwise.

Errors are `ParseError`s with the 1-based line and column of the offending token.
`parse_graph` does not verify; it does keep use lists right.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from requant.errors import ParseError, RequantError
from requant.ir import registry
from requant.ir.dtypes import DType, dtype as lookup_dtype, from_numpy
from requant.ir.graph import Graph, Node, Value
from requant.ir.types import Dim, TensorType

__all__ = ["print_graph", "parse_graph", "format_type", "INLINE_LIMIT"]

# Payloads up to this many elements are written as numbers, larger ones as base64.
INLINE_LIMIT = 16

_BARE = re.compile(r"[A-Za-z0-9_.]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_FLOAT_FORMAT = re.compile(r"ff_e\d+m\d+_b[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NUMBER = re.compile(r"[-+]?(?:(?:inf|nan)(?![A-Za-z0-9_])|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.]+")
_BAD_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.+-]*")
_SPACE_THEN_PERCENT = re.compile(r"[ \t\r\n]*%")
_STRING_RUN = re.compile(r'[^"\\\n]*')
_PUNCT = "()[]{},:=?"
_WORDS_THAT_ARE_NUMBERS = ("inf", "nan")


# ======================================================================================
# printing
# ======================================================================================
def print_graph(graph: Graph, *, elide_constants: bool = False) -> str:
    """The text form of `graph` (see the module docstring); ends with a newline. With
    `elide_constants`, payloads too big to inline print as `...` (a summary for people:
    the parser refuses it)."""
    params = ", ".join(f"{_value_ref(v)}: {format_type(v.type)}" for v in graph.inputs)
    outs = ", ".join(_value_ref(v) for v in graph.outputs)
    header = f"graph {_word(graph.name)}({params}) -> ({outs})"
    meta = _format_meta(graph.meta)
    if meta:
        header += f" #meta {meta}"
    lines = [header + " {"]
    for v in graph.inputs:
        _value_meta_line(lines, v)
    for v in graph.constants:
        if v.const is None:
            payload = "?"
        elif elide_constants and v.const.size > INLINE_LIMIT:
            payload = "..."
        else:
            payload = _format_payload(v.const, v.type.dtype)
        lines.append(f"  const {_value_ref(v)}: {format_type(v.type)} = {payload}")
        _value_meta_line(lines, v)
    for node in graph:
        lines.append("  " + _format_node(node))
        for out in node.outputs:
            _value_meta_line(lines, out)
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_type(t: TensorType) -> str:
    """`f32[batch,?,4]`; `f32[...]` for unknown rank; odd symbol names are quoted."""
    if t.shape is None:
        return f"{t.dtype.short}[...]"
    return f"{t.dtype.short}[{','.join(_format_dim(d) for d in t.shape)}]"


def _format_dim(d: Dim) -> str:
    if d is None:
        return "?"
    if isinstance(d, int):
        return str(d)
    return _word(d)


def _name(name: str) -> str:
    """A value or node name, after '%' or '@'."""
    return name if _BARE.match(name) else json.dumps(name, ensure_ascii=False)


def _word(word: str) -> str:
    """A graph or attribute name: bare when it lexes as one identifier."""
    if _IDENT.fullmatch(word) and word not in _WORDS_THAT_ARE_NUMBERS:
        return word
    return json.dumps(word, ensure_ascii=False)


def _value_ref(v: Value | None) -> str:
    return "_" if v is None else "%" + _name(v.name)


def _value_meta_line(lines: list[str], v: Value) -> None:
    meta = _format_meta(v.meta)
    if meta:
        lines.append(f"  #meta {_value_ref(v)} {meta}")


def _format_node(node: Node) -> str:
    results = ", ".join(f"{_value_ref(o)}: {format_type(o.type)}" for o in node.outputs)
    text = f"{results} = " if results else ""
    text += f"{node.op}({', '.join(_value_ref(v) for v in node.inputs)})"
    if node.name is not None:
        text += f" @{_name(node.name)}"
    if node.attrs:
        items = ", ".join(f"{_word(k)}={_format_attr(node, k, v)}" for k, v in node.attrs.items())
        text += f" {{{items}}}"
    meta = _format_meta(node.meta)
    if meta:
        text += f" #meta {meta}"
    return text


def _format_attr(node: Node, key: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _format_double(float(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_attr(node, key, x) for x in value) + "]"
    if isinstance(value, np.ndarray):
        try:
            dt = from_numpy(value.dtype)
        except ValueError:
            raise RequantError(f"node {node.label}: attribute {key} is a {value.dtype} array, which has no IR dtype") from None
        t = TensorType(tuple(value.shape), dt)
        return f"array({format_type(t)}, {_format_payload(value, dt)})"
    if isinstance(value, DType):
        return f"dtype({value.short})"
    if isinstance(value, TensorType):
        return f"type({format_type(value)})"
    raise RequantError(
        f"node {node.label}: attribute {key} holds a {type(value).__name__}, which the text form cannot write "
        "(use int, float, str, bool, None, lists of them, numpy arrays, DType or TensorType)"
    )


def _format_double(x: float) -> str:
    # repr is the shortest decimal that reads back to the same double; it has a '.',
    # an 'e', or is inf/nan, so the reader knows it is a float
    return repr(x)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, DType):
        return obj.short
    if isinstance(obj, TensorType):
        return format_type(obj)
    raise TypeError(type(obj).__name__)


def _format_meta(meta: Mapping[str, Any]) -> str:
    if not meta:
        return ""
    try:
        return json.dumps(dict(meta), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError):
        kept = {}
        for k, v in meta.items():
            try:
                json.dumps({k: v}, default=_json_default)
            except (TypeError, ValueError):
                continue  # not JSON-serialisable: the text form leaves it out
            kept[k] = v
        return json.dumps(kept, ensure_ascii=False, default=_json_default) if kept else ""


# -- payloads -----------------------------------------------------------------------------
def _format_payload(array: np.ndarray, dt: DType) -> str:
    arr = np.asarray(array)
    if arr.dtype != dt.np:
        arr = arr.astype(dt.np)
    if arr.size <= INLINE_LIMIT:
        flat = [_format_element(x, dt) for x in arr.reshape(-1)]
        if all(s is not None for s in flat):
            return _nest(flat, arr.shape)  # type: ignore[arg-type]
    data = np.ascontiguousarray(arr)
    if sys.byteorder == "big" and data.dtype.itemsize > 1:
        data = data.byteswap()
    return 'base64"' + base64.b64encode(data.tobytes()).decode("ascii") + '"'


def _nest(flat: list[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return flat[0]
    if shape[0] == 0:
        return "[]"
    step = len(flat) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def _format_element(x: Any, dt: DType) -> str | None:
    """The shortest text that reads back to exactly `x`'s bits, or None if none does."""
    want = np.asarray(x, dtype=dt.np).tobytes()
    if dt.kind == "bool":
        # a bool byte other than 0/1 would not come back from true/false
        return ("true" if x else "false") if np.asarray(bool(x), dt.np).tobytes() == want else None
    if dt.is_integer:
        lo, hi = dt.int_range  # an int4 outside -8..7 is still written exactly, as bytes
        return str(int(x)) if lo <= int(x) <= hi else None
    value = float(x)
    if math.isnan(value):
        # only the NaNs the reader makes from "nan" / "-nan"; others need base64
        for text in ("nan", "-nan"):
            if _floats_to_dtype([float(text)], dt).tobytes() == want:
                return text
        return None
    if math.isinf(value):
        return repr(value)
    for digits in range(1, 18):
        candidate = float(format(value, f".{digits}g"))
        if _floats_to_dtype([candidate], dt).tobytes() == want:
            return repr(candidate)
    return None


def _floats_to_dtype(values: Sequence[float], dt: DType) -> np.ndarray:
    """How the reader turns numbers into a float payload: via float64, one rounding."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float64).astype(dt.np)


# ======================================================================================
# lexing
# ======================================================================================
@dataclass(frozen=True)
class _Token:
    kind: str  # value, at, ident, int, float, string, punct, meta, eof
    text: str  # the source text, for messages
    value: Any  # the decoded value: name, number, string; for meta: names a value?
    pos: int


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    # -- positions and errors --------------------------------------------------------
    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def error(self, message: str, pos: int) -> ParseError:
        line = self.line_of(pos) - 1
        start = self._line_starts[line]
        end = self.text.find("\n", start)
        source = self.text[start:] if end < 0 else self.text[start:end]
        return ParseError(message, line + 1, pos - start + 1, source.rstrip("\r"))

    # -- tokens ------------------------------------------------------------------------
    def _skip_space_and_comments(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif text.startswith("//", self.pos) or (c == "#" and not self._at_meta()):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            else:
                return

    def _at_meta(self) -> bool:
        if not self.text.startswith("#meta", self.pos):
            return False
        after = self.text[self.pos + 5: self.pos + 6]
        return after == "" or after in " \t\r\n{"

    def next(self) -> _Token:
        self._skip_space_and_comments()
        text, start = self.text, self.pos
        if start >= len(text):
            return _Token("eof", "end of input", None, start)
        c = text[start]
        if c == "#":  # only '#meta' gets here
            self.pos += 5
            names_value = _SPACE_THEN_PERCENT.match(text, self.pos) is not None
            return _Token("meta", "#meta", names_value, start)
        if text.startswith("->", start) or text.startswith("...", start):
            tok = "->" if c == "-" else "..."
            self.pos += len(tok)
            return _Token("punct", tok, tok, start)
        if c == "%" or c == "@":
            return self._name_token("value" if c == "%" else "at")
        if c == '"':
            value = self._string()
            return _Token("string", text[start:self.pos], value, start)
        m = _NUMBER.match(text, start) if c in "+-0123456789.in" else None
        if m:
            return self._number(m)
        m = _FLOAT_FORMAT.match(text, start)
        if m is None or _NAME_CHARS.match(text, m.end()):
            m = _IDENT.match(text, start)  # "ff_e2m1_b1x" is a word, not a dtype
        if m:
            self.pos = m.end()
            return _Token("ident", m.group(), m.group(), start)
        if c in _PUNCT:
            self.pos += 1
            return _Token("punct", c, c, start)
        raise self.error(f"unexpected character {c!r}", start)

    def _name_token(self, kind: str) -> _Token:
        start = self.pos
        self.pos += 1
        if self.text.startswith('"', self.pos):
            name = self._string()
        else:
            m = _NAME_CHARS.match(self.text, self.pos)
            if not m:
                what = "a value" if kind == "value" else "a node"
                raise self.error(f"expected {what} name after {self.text[start]!r}", start)
            name = m.group()
            self.pos = m.end()
        return _Token(kind, self.text[start:self.pos], name, start)

    def _number(self, m: re.Match[str]) -> _Token:
        start, text = m.start(), m.group()
        tail = _BAD_NUMBER_TAIL.match(self.text, m.end())
        if tail and tail.group():
            raise self.error(f"bad number {text + tail.group()!r}", start)
        self.pos = m.end()
        if any(ch in text for ch in ".eEin"):
            return _Token("float", text, float(text), start)
        return _Token("int", text, int(text), start)

    def _string(self) -> str:
        """A JSON-style double-quoted string starting at self.pos."""
        text, start = self.text, self.pos
        i = start + 1
        while True:
            i = _STRING_RUN.match(text, i).end()  # skip plain characters in one step (base64!)
            if i >= len(text) or text[i] == "\n":
                raise self.error("unterminated string", start)
            ch = text[i]
            if ch == '"':
                break
            if ch == "\\":
                esc = text[i + 1: i + 2]
                if esc == "u":
                    if not re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2: i + 6]):
                        raise self.error("bad \\u escape: it needs four hex digits", i)
                    i += 6
                    continue
                if esc == "" or esc not in '"\\/bfnrt':
                    raise self.error(f"bad escape '\\{esc}' in string", i)
                i += 2
                continue
            i += 1
        self.pos = i + 1
        try:
            return json.loads(text[start: i + 1], strict=False)
        except json.JSONDecodeError as exc:  # e.g. a lone surrogate pair half
            raise self.error(f"bad string: {exc.msg}", start) from None

    def read_json(self) -> dict[str, Any]:
        """The JSON object that follows `#meta` (the parser asks for it in its place)."""
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1
        if not self.text.startswith("{", self.pos):
            raise self.error("expected a JSON object after #meta", self.pos)
        try:
            obj, end = json.JSONDecoder().raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise self.error(f"bad meta JSON: {exc.msg}", exc.pos) from None
        self.pos = end
        return obj


def _describe(tok: _Token) -> str:
    return "end of input" if tok.kind == "eof" else repr(tok.text)


# ======================================================================================
# parsing
# ======================================================================================
@dataclass
class _Result:
    tok: _Token
    type: TensorType | None


@dataclass
class _ConstStmt:
    tok: _Token
    type: TensorType
    payload: np.ndarray


@dataclass
class _NodeStmt:
    results: list[_Result]
    op: _Token
    args: list[_Token | None]
    name: str | None
    attrs: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class _MetaStmt:
    tok: _Token
    meta: dict[str, Any]


def parse_graph(text: str) -> Graph:
    """Read the text form back into a graph (not verified; use lists are right)."""
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.lex = _Lexer(text)
        self.tok = self.lex.next()

    # -- token helpers -------------------------------------------------------------------
    def error(self, message: str, tok: _Token | None = None) -> ParseError:
        return self.lex.error(message, (tok or self.tok).pos)

    def advance(self) -> _Token:
        tok = self.tok
        self.tok = self.lex.next()
        return tok

    def at(self, punct: str) -> bool:
        return self.tok.kind == "punct" and self.tok.value == punct

    def at_word(self, word: str) -> bool:
        return self.tok.kind == "ident" and self.tok.value == word

    def expect(self, punct: str, context: str = "") -> _Token:
        if not self.at(punct):
            where = f" {context}" if context else ""
            raise self.error(f"expected '{punct}'{where}, found {_describe(self.tok)}")
        return self.advance()

    def expect_kind(self, kind: str, what: str) -> _Token:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found {_describe(self.tok)}")
        return self.advance()

    def comma_list(self, close: str, item: Callable[[], Any]) -> list[Any]:
        items: list[Any] = []
        if self.at(close):
            self.advance()
            return items
        while True:
            items.append(item())
            if self.at(","):
                self.advance()
                continue
            self.expect(close, "or ','")
            return items

    def meta_json(self) -> dict[str, Any]:
        """Read the JSON object after the `#meta` token in `self.tok` or after the value
        token in `self.tok`; the lexer stands right behind that token."""
        obj = self.lex.read_json()
        self.tok = self.lex.next()
        return obj

    # -- graph ---------------------------------------------------------------------------
    def parse(self) -> Graph:
        if not self.at_word("graph"):
            raise self.error(f"expected 'graph', found {_describe(self.tok)}")
        self.advance()
        name = self.name("a graph name")
        self.expect("(", "after the graph name")
        params = self.comma_list(")", self.param)
        self.expect("->", "after the graph inputs")
        if self.tok.kind == "value":
            outputs = [self.advance()]
        else:
            self.expect("(", "before the graph outputs")
            outputs = self.comma_list(")", lambda: self.expect_kind("value", "a graph output %name"))
        graph_meta: dict[str, Any] = {}
        if self.tok.kind == "meta":
            if self.tok.value:
                raise self.error("value meta (#meta %v {...}) belongs inside the graph body")
            graph_meta = self.meta_json()
        open_tok = self.expect("{", "to open the graph body")
        stmts: list[Any] = []
        while not self.at("}"):
            if self.tok.kind == "eof":
                line = self.lex.line_of(open_tok.pos)
                raise self.error(f"expected '}}' to close the graph body opened on line {line}, found end of input")
            stmts.append(self.statement())
        self.advance()
        if self.tok.kind != "eof":
            raise self.error(f"unexpected {_describe(self.tok)} after the end of the graph")
        return _GraphBuilder(self, name, params, outputs, graph_meta, stmts).build()

    def name(self, what: str) -> str:
        if self.tok.kind in ("ident", "string"):
            return self.advance().value
        raise self.error(f"expected {what}, found {_describe(self.tok)}")

    def param(self) -> tuple[_Token, TensorType]:
        tok = self.expect_kind("value", "a graph input %name")
        self.expect(":", f"and a type after graph input {tok.text}")
        return tok, self.type()

    # -- types ---------------------------------------------------------------------------
    def dtype(self) -> DType:
        tok = self.tok
        if tok.kind != "ident":
            raise self.error(f"expected a dtype (f32, i8, fp8_e4m3, ...), found {_describe(tok)}")
        try:
            dt = lookup_dtype(tok.value)
        except ValueError:
            raise self.error(f"unknown dtype {tok.value!r}") from None
        self.advance()
        return dt

    def type(self) -> TensorType:
        dt = self.dtype()
        self.expect("[", "after the dtype")
        if self.at("..."):
            self.advance()
            self.expect("]", "after '...'")
            return TensorType(None, dt)
        return TensorType(tuple(self.comma_list("]", self.dim)), dt)

    def dim(self) -> Dim:
        tok = self.tok
        if tok.kind == "int":
            if tok.value < 0:
                raise self.error(f"bad dim {tok.text}: dims are >= 0, a symbol, or '?'")
            return self.advance().value
        if tok.kind in ("ident", "string"):
            return self.advance().value
        if self.at("?"):
            self.advance()
            return None
        raise self.error(f"expected a dim (an int, a symbol or '?'), found {_describe(tok)}")

    # -- statements ----------------------------------------------------------------------
    def statement(self) -> Any:
        tok = self.tok
        if tok.kind == "meta":
            if not tok.value:
                raise self.error("#meta here must name a value: #meta %v {...}")
            self.advance()
            name_tok = self.tok  # the lexer stands right behind it: read the JSON next
            return _MetaStmt(name_tok, self.meta_json())
        if self.at_word("const"):
            return self.const()
        if tok.kind in ("value", "ident"):
            return self.node()
        raise self.error(f"expected a statement (const ..., %r = Op(...), #meta %v {{...}}) or '}}', found {_describe(tok)}")

    def const(self) -> _ConstStmt:
        self.advance()
        tok = self.expect_kind("value", "a constant %name after 'const'")
        self.expect(":", f"and a type after constant {tok.text}")
        type_tok = self.tok
        t = self.type()
        if not t.is_static:
            raise self.error(f"constant {tok.text} needs a static shape, not {format_type(t)}", type_tok)
        self.expect("=", f"and a payload after the type of constant {tok.text}")
        return _ConstStmt(tok, t, self.payload(t))

    def node(self) -> _NodeStmt:
        results: list[_Result] = []
        if self.tok.kind == "value":
            while True:
                tok = self.expect_kind("value", "a result %name")
                t = None
                if self.at(":"):
                    self.advance()
                    t = self.type()
                results.append(_Result(tok, t))
                if not self.at(","):
                    break
                self.advance()
            self.expect("=", "after the results")
            typed = [r for r in results if r.type is not None]
            if typed and len(typed) != len(results):
                first_untyped = next(r for r in results if r.type is None)
                raise self.error(
                    f"wrong number of types: {len(results)} results but {len(typed)} types; "
                    "give every result a type or none",
                    first_untyped.tok,
                )
        op = self.expect_kind("ident", "an op name")
        self.expect("(", f"after op {op.text}")
        args = self.comma_list(")", self.arg)
        name = None
        if self.tok.kind == "at":
            name = self.advance().value
        attrs: dict[str, Any] = {}
        if self.at("{"):
            self.advance()
            for key, value in self.comma_list("}", self.attr_item):
                attrs[key] = value
        meta: dict[str, Any] = {}
        if self.tok.kind == "meta" and not self.tok.value:
            meta = self.meta_json()
        return _NodeStmt(results, op, args, name, attrs, meta)

    def arg(self) -> _Token | None:
        if self.at_word("_"):
            self.advance()
            return None
        return self.expect_kind("value", "an input %name or '_'")

    # -- attributes ----------------------------------------------------------------------
    def attr_item(self) -> tuple[str, Any]:
        key_tok = self.tok
        if key_tok.kind not in ("ident", "string"):
            raise self.error(f"expected an attribute name, found {_describe(key_tok)}")
        self.advance()
        self.expect("=", f"after attribute {key_tok.value}")
        return key_tok.value, self.attr_value()

    def attr_value(self) -> Any:
        tok = self.tok
        if tok.kind in ("int", "float", "string"):
            return self.advance().value
        if self.at("["):
            self.advance()
            return self.comma_list("]", self.attr_value)
        if tok.kind == "ident":
            word = tok.value
            if word in ("true", "false"):
                self.advance()
                return word == "true"
            if word == "none":
                self.advance()
                return None
            if word in ("array", "dtype", "type"):
                self.advance()
                self.expect("(", f"after '{word}'")
                if word == "dtype":
                    value: Any = self.dtype()
                elif word == "type":
                    value = self.type()
                else:
                    type_tok = self.tok
                    t = self.type()
                    if not t.is_static:
                        raise self.error(f"an array attribute needs a static shape, not {format_type(t)}", type_tok)
                    self.expect(",", "between the array's type and its payload")
                    value = np.array(self.payload(t))  # a writable copy, as attributes usually are
                self.expect(")", f"to close '{word}('")
                return value
        raise self.error(f"expected an attribute value, found {_describe(tok)}")

    # -- payloads ------------------------------------------------------------------------
    def payload(self, t: TensorType) -> np.ndarray:
        assert t.shape is not None
        shape: tuple[int, ...] = t.shape  # type: ignore[assignment]
        dt = t.dtype
        if self.at_word("base64"):
            self.advance()
            tok = self.expect_kind("string", 'a base64 string: base64"..."')
            return _array_from_base64(self, tok, shape, dt)
        start = self.tok
        tree = self.literal()
        return _array_from_literal(self, tree, start, shape, dt)

    def literal(self) -> Any:
        """A number, true/false, or a nested list of them; leaves stay tokens."""
        tok = self.tok
        if self.at("["):
            self.advance()
            return self.comma_list("]", self.literal)
        if tok.kind in ("int", "float") or (tok.kind == "ident" and tok.value in ("true", "false")):
            return self.advance()
        raise self.error(f"expected a number, true/false, '[' or base64\"...\", found {_describe(tok)}")


def _array_from_base64(p: _Parser, tok: _Token, shape: tuple[int, ...], dt: DType) -> np.ndarray:
    try:
        raw = base64.b64decode(tok.value, validate=True)
    except ValueError as exc:
        raise p.error(f"bad base64 payload: {exc}", tok) from None
    numel = int(np.prod(shape, dtype=np.int64))
    want = numel * dt.np.itemsize
    if len(raw) != want:
        raise p.error(
            f"base64 payload has {len(raw)} bytes; {dt.short}{list(shape)} needs {want} "
            f"({numel} x {dt.np.itemsize})",
            tok,
        )
    arr = np.frombuffer(raw, dtype=dt.np).copy()
    if sys.byteorder == "big" and arr.dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr.reshape(shape)


def _array_from_literal(p: _Parser, tree: Any, start: _Token, shape: tuple[int, ...], dt: DType) -> np.ndarray:
    numel = int(np.prod(shape, dtype=np.int64))
    if isinstance(tree, _Token):  # a scalar fills the shape
        return np.full(shape, _convert([tree], dt, p)[0], dtype=dt.np)
    leaves: list[_Token] = []
    nested = any(isinstance(x, list) for x in tree)
    if nested:
        _check_nesting(p, tree, start, shape, leaves)
    else:
        leaves = list(tree)
    if len(leaves) != numel:
        raise p.error(f"payload has {len(leaves)} values; {dt.short}{list(shape)} needs {numel}", start)
    return _convert(leaves, dt, p).reshape(shape)


def _check_nesting(p: _Parser, tree: Any, start: _Token, shape: tuple[int, ...], leaves: list[_Token]) -> None:
    """A nested payload must follow the shape exactly (a flat one only needs the count)."""
    if not shape:
        if isinstance(tree, list):
            raise p.error("payload nests deeper than the type's rank", start)
        leaves.append(tree)
        return
    if not isinstance(tree, list) or len(tree) != shape[0]:
        got = len(tree) if isinstance(tree, list) else "a scalar"
        raise p.error(f"payload does not match the shape: expected {shape[0]} entries here, got {got}", start)
    for sub in tree:
        _check_nesting(p, sub, start, shape[1:], leaves)


def _convert(leaves: Sequence[_Token], dt: DType, p: _Parser) -> np.ndarray:
    if dt.kind == "bool":
        for tok in leaves:
            if tok.kind != "ident":
                raise p.error(f"a bool payload holds true/false, not {tok.text}", tok)
        return np.array([tok.value == "true" for tok in leaves], dtype=dt.np)
    if dt.is_integer:
        lo, hi = dt.int_range
        values = []
        for tok in leaves:
            if tok.kind != "int":
                raise p.error(f"expected an integer for {dt.short}, found {tok.text}", tok)
            if not lo <= tok.value <= hi:
                raise p.error(f"{tok.value} is out of range for {dt.short} ({lo}..{hi})", tok)
            values.append(tok.value)
        return np.array(values, dtype=dt.np)
    floats = []
    for tok in leaves:
        if tok.kind not in ("int", "float"):
            raise p.error(f"expected a number for {dt.short}, found {tok.text}", tok)
        floats.append(float(tok.value))
    arr = _floats_to_dtype(floats, dt)
    finite_in = np.isfinite(np.asarray(floats, dtype=np.float64))
    finite_out = np.isfinite(arr.astype(np.float64))
    bad = np.flatnonzero(finite_in & ~finite_out)
    if bad.size:
        tok = leaves[int(bad[0])]
        raise p.error(f"{tok.text} does not fit {dt.short}", tok)
    return arr


# ======================================================================================
# building the graph from the statements
# ======================================================================================
_PENDING = object()  # an untyped node result: its Value exists once types are inferred


class _GraphBuilder:
    def __init__(self, parser: _Parser, name: str, params: list[tuple[_Token, TensorType]],
                 outputs: list[_Token], meta: dict[str, Any], stmts: list[Any]) -> None:
        self.p = parser
        self.graph = Graph(name)
        self.graph.meta = meta
        self.params = params
        self.outputs = outputs
        self.stmts = stmts
        self.values: dict[str, Any] = {}  # name -> Value, or _PENDING

    def define(self, tok: _Token, value: Any) -> None:
        if tok.value in self.values:
            raise self.p.error(f"value {tok.text} is defined twice", tok)
        self.values[tok.value] = value

    def build(self) -> Graph:
        g = self.graph
        for tok, t in self.params:
            self.define(tok, None)
            self.values[tok.value] = g.add_input(tok.value, t)
        # Every name first, so nodes may read values defined further down (an out-of-order
        # or cyclic graph prints that way and must read back the same).
        for stmt in self.stmts:
            if isinstance(stmt, _ConstStmt):
                self.define(stmt.tok, None)
                self.values[stmt.tok.value] = g.add_constant(stmt.payload, name=stmt.tok.value, dtype=stmt.type.dtype)
            elif isinstance(stmt, _NodeStmt):
                for r in stmt.results:
                    self.define(r.tok, _PENDING if r.type is None else Value(r.tok.value, r.type))
        for stmt in self.stmts:
            if isinstance(stmt, _NodeStmt):
                self.node(stmt)
        for stmt in self.stmts:
            if isinstance(stmt, _MetaStmt):
                self.lookup(stmt.tok, "has no definition to attach #meta to").meta.update(stmt.meta)
        g.outputs = [self.lookup(tok, "is a graph output but is never defined") for tok in self.outputs]
        return g

    def lookup(self, tok: _Token, why: str = "is used but never defined") -> Value:
        v = self.values.get(tok.value)
        if v is None:
            raise self.p.error(f"undefined value {tok.text}: it {why}", tok)
        if v is _PENDING:
            raise self.p.error(
                f"value {tok.text} is used before its definition, whose types are left to inference; "
                "give that node's results types to refer to them earlier",
                tok,
            )
        return v

    def node(self, stmt: _NodeStmt) -> None:
        inputs = [None if tok is None else self.lookup(tok) for tok in stmt.args]
        if stmt.results and stmt.results[0].type is None:
            try:
                types = registry.infer_types(stmt.op.value, inputs, stmt.attrs, len(stmt.results))
            except Exception as exc:  # any rule's failure becomes a located parse error
                raise self.p.error(
                    f"cannot infer the result types of {stmt.op.value}: {exc} (declare them: %y: f32[...] = ...)",
                    stmt.op,
                ) from None
            for r, t in zip(stmt.results, types):
                self.values[r.tok.value] = Value(r.tok.value, t)
        outputs = [self.values[r.tok.value] for r in stmt.results]
        node = Node(stmt.op.value, inputs, outputs, stmt.attrs, name=stmt.name, meta=stmt.meta)
        self.graph.append(node)
