"""On-demand feature transformations: numexpr expressions over features and request fields.

One function computes them everywhere: ``Transform.apply`` is what builds a historical training table and what
answers an online request for one key, so the two cannot drift apart. Each output is an element-wise numexpr
expression (no reductions), so a row's value depends on that row alone and is bit-identical whatever batch it
arrives in.

Missing values: a null input (and, for float64 inputs, a NaN, so a value that went through a store or a JSON
body that cannot keep the difference reads the same) makes every output that uses it null for that row. A
float64 output that evaluates to NaN is null too. An int64 output whose expression gives a float is truncated
toward zero; a non-finite or out-of-range result is null.

Definitions are checked when the view is defined (``validate_transform``): the expression must parse, name only
declared inputs and allowed functions, have no attribute access, indexing, dunder names or reductions, compile
in numexpr (with its sanitizer on) for the inputs' types, give a result that fits the output's dtype, and use
no integer operation that can stop the process (``INT64_MIN // -1`` and ``0 ** -1`` raise SIGFPE in numexpr).

Imports ``numexpr``, ``numpy`` and ``pyarrow`` (the ``features`` extra).
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numexpr as ne  # type: ignore[import-untyped]
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from falaj.core.features.arrow import arrow_type
from falaj.core.plugin.interfaces import FEATURE_DTYPES, RESERVED_COLUMNS

__all__ = ["OUTPUT_DTYPES", "Transform", "TransformOutput", "validate_transform"]

OUTPUT_DTYPES: tuple[str, ...] = ("float64", "int64", "bool")
#: Input dtypes an expression can read (numexpr has no timestamps, and strings only for comparison).
EXPRESSION_DTYPES: tuple[str, ...] = ("int64", "float64", "bool")

_NUMEXPR_TYPES: dict[str, type] = {"int64": np.int64, "float64": np.float64, "bool": bool}
_CONTEXT: dict[str, Any] = {"optimization": "aggressive", "truediv": True}

#: Element-wise, real-valued functions; intersected with what the installed numexpr offers.
_WANTED_FUNCTIONS = frozenset(
    {
        "abs", "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2", "arctanh", "ceil", "copysign",
        "cos", "cosh", "exp", "expm1", "floor", "fmod", "hypot", "isfinite", "isinf", "isnan", "log", "log10",
        "log1p", "log2", "maximum", "minimum", "nextafter", "round", "sign", "signbit", "sin", "sinh", "sqrt",
        "tan", "tanh", "trunc", "where",
    }
)  # fmt: skip
FUNCTIONS: frozenset[str] = _WANTED_FUNCTIONS & frozenset(ne.expressions.functions)
#: numexpr functions that reduce over the batch: a row's value would depend on its neighbours.
_REDUCTIONS = frozenset({"sum", "prod", "min", "max"})
#: Integer opcodes that divide in C: INT64_MIN // -1, INT64_MIN % -1 and 0 ** -1 raise SIGFPE.
_TRAPPING_OP = re.compile(rb"^(div|floordiv|mod|pow)_(iii|lll)$")
_RESULT_KINDS = {"b": "bool", "i": "int32", "l": "int64", "f": "float32", "d": "float64", "c": "complex", "s": "bytes"}

_BINOPS: dict[type, str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
    ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
}  # fmt: skip
_UNARY = (ast.UAdd, ast.USub, ast.Invert)
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_OPERATOR_NODES = (ast.operator, ast.unaryop, ast.cmpop, ast.expr_context)


class _OutputModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    dtype: Literal["float64", "int64", "bool"] = "float64"
    expr: str = Field(min_length=1, max_length=2000)


class _Refused(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Compiled:
    program: Any  # numexpr.NumExpr
    arg_names: tuple[str, ...]  # the order the program takes its inputs in
    kind: str  # the result's numexpr typecode
    uses_vml: bool


@dataclass(frozen=True, slots=True)
class TransformOutput:
    """One output column: ``uses`` are the inputs its expression reads (null in any makes the row null)."""

    name: str
    dtype: str
    expr: str
    uses: tuple[str, ...]
    compiled: _Compiled = field(repr=False, compare=False)

    @property
    def result_kind(self) -> str:
        """What the expression gives before it is cast to ``dtype``: bool, int32, int64, float32 or float64."""
        return _RESULT_KINDS[self.compiled.kind]


@functools.lru_cache(maxsize=1024)
def _compile(expr: str, signature: tuple[tuple[str, str], ...]) -> _Compiled:
    """The numexpr program for ``expr`` over inputs of these dtypes; cached, so a definition read back from the
    database for every online request compiles once per process."""
    program = ne.NumExpr(expr, [(n, _NUMEXPR_TYPES[d]) for n, d in signature], sanitize=True, **_CONTEXT)
    _, uses_vml = ne.necompiler.getExprNames(expr, dict(_CONTEXT), sanitize=True)
    return _Compiled(program, tuple(program.input_names), chr(program.fullsig[0]), bool(uses_vml))


def _short(expr: str) -> str:
    return repr(expr) if len(expr) <= 80 else repr(expr[:77] + "...")


def _is_dunder(name: str) -> bool:
    return name.startswith("__")


def _used_names(expr: str, inputs: Mapping[str, str]) -> tuple[str, ...]:
    """The inputs ``expr`` reads, sorted; raises ``_Refused`` with the reason it is not allowed."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise _Refused(f"syntax error{where} in {_short(expr)}: {exc.msg}") from None
    nodes = list(ast.walk(tree))
    for node in nodes:  # the ways out of an expression first, so they are what the error names
        if isinstance(node, ast.Name) and _is_dunder(node.id):
            raise _Refused(f"dunder name {node.id!r} is not allowed")
    for node in nodes:
        if isinstance(node, ast.Attribute):
            raise _Refused(f"attribute access ('.{node.attr}') is not allowed")
    called: set[int] = set()
    used: set[str] = set()
    for node in nodes:
        if isinstance(node, (ast.Expression, *_OPERATOR_NODES)):
            continue
        if isinstance(node, ast.Subscript):
            raise _Refused("indexing ('[...]') is not allowed")
        if isinstance(node, ast.BoolOp):
            raise _Refused("'and'/'or' are not allowed: use & and | (with parentheses around comparisons)")
        if isinstance(node, ast.IfExp):
            raise _Refused("'x if c else y' is not allowed: use where(c, x, y)")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise _Refused(f"operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                raise _Refused("'not' is not allowed: use ~")
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise _Refused("chained comparisons are not allowed: write (a < b) & (b < c)")
            if not isinstance(node.ops[0], _COMPARE):
                raise _Refused(f"comparison {type(node.ops[0]).__name__} is not allowed (only == != < <= > >=)")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise _Refused("only named functions can be called")
            fname = node.func.id
            if fname in _REDUCTIONS:
                raise _Refused(
                    f"{fname}() reduces over the batch, so a row's value would depend on the rows beside it "
                    "(training and serving would differ); only element-wise functions are allowed"
                )
            if fname not in FUNCTIONS:
                raise _Refused(f"unknown function {fname!r}; allowed: {', '.join(sorted(FUNCTIONS))}")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise _Refused(f"{fname}() takes positional arguments only")
            called.add(id(node.func))
        elif isinstance(node, ast.Name):
            if id(node) in called:
                continue
            if node.id not in inputs:
                if node.id in FUNCTIONS:
                    raise _Refused(f"{node.id!r} is a function: call it, e.g. {node.id}(x)")
                raise _Refused(f"unknown name {node.id!r}; the inputs are: {', '.join(sorted(inputs)) or 'none'}")
            if node.id in ne.expressions.functions:
                raise _Refused(f"input {node.id!r} has the name of a numexpr function and cannot be read")
            if inputs[node.id] not in EXPRESSION_DTYPES:
                raise _Refused(
                    f"input {node.id!r} is {inputs[node.id]}; expressions read {', '.join(EXPRESSION_DTYPES)} inputs"
                )
            used.add(node.id)
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool | float):
                continue
            if isinstance(value, int):
                if not -(2**63) <= value < 2**63:
                    raise _Refused(f"integer constant {value} does not fit in int64")
                continue
            raise _Refused(f"constant {value!r} is not allowed (numbers and True/False only)")
        else:
            raise _Refused(f"{type(node).__name__} is not allowed in an expression")
    return tuple(sorted(used))


def _check_output(spec: _OutputModel, inputs: Mapping[str, str]) -> TransformOutput:
    uses = _used_names(spec.expr, inputs)
    signature = tuple((n, inputs[n]) for n in uses)
    try:
        compiled = _compile(spec.expr.strip(), signature)
    except Exception as exc:  # numexpr raises several types (ValueError, TypeError, KeyError, NotImplementedError...)
        raise _Refused(f"numexpr refused {_short(spec.expr)}: {type(exc).__name__}: {str(exc)[:300]}") from None
    trapping = sorted({op[0].decode() for op in ne.disassemble(compiled.program) if _TRAPPING_OP.match(op[0])})
    if trapping:
        raise _Refused(
            "integer //, % and ** (with a variable exponent) are not allowed: INT64_MIN // -1 and 0 ** -1 stop "
            f"the process ({', '.join(trapping)}); convert to float first, e.g. (a * 1.0) // b"
        )
    kind = compiled.kind
    if kind not in "bilfd":
        raise _Refused(f"the expression gives {_RESULT_KINDS.get(kind, kind)}; outputs are {', '.join(OUTPUT_DTYPES)}")
    if spec.dtype == "bool" and kind != "b":
        raise _Refused(
            f"the expression gives {_RESULT_KINDS[kind]}, not bool: "
            f"a bool output needs a comparison, e.g. ({spec.expr}) != 0"
        )
    return TransformOutput(spec.name, spec.dtype, spec.expr, uses, compiled)


def _pydantic_reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
        for e in exc.errors(include_url=False)
    )


def validate_transform(inputs: Mapping[str, str], outputs: Sequence[Mapping[str, Any]]) -> Transform:
    """A checked, compiled transform, or ``ValueError`` naming the first bad output and the reason.

    ``inputs`` maps each name an expression may read (features of the source views, request fields) to its
    dtype; ``outputs`` are ``{"name", "dtype" (float64 | int64 | bool, default float64), "expr"}``.
    """
    if not isinstance(inputs, Mapping):
        raise ValueError("inputs must map each input name to its dtype")
    for name, dtype in inputs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"input name {name!r} must be a non-empty string")
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"input {name!r}: dtype {dtype!r} is not one of {', '.join(FEATURE_DTYPES)}")
    if isinstance(outputs, str | bytes) or not isinstance(outputs, Sequence) or not outputs:
        raise ValueError("outputs must be a non-empty list of {name, dtype, expr} objects")
    checked: list[TransformOutput] = []
    seen: set[str] = set()
    for i, raw in enumerate(outputs):
        label = f"output {i}"
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
            label = f"output {raw['name']!r}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{label}: must be an object with name, dtype and expr, got {type(raw).__name__}")
        try:
            spec = _OutputModel.model_validate(dict(raw))
        except ValidationError as exc:
            raise ValueError(f"{label}: {_pydantic_reason(exc)}") from None
        if spec.name in inputs:
            raise ValueError(f"{label}: the name collides with an input of the same name; rename the output")
        if spec.name in RESERVED_COLUMNS:
            raise ValueError(f"{label}: {spec.name!r} is reserved ({', '.join(RESERVED_COLUMNS)})")
        if spec.name in seen:
            raise ValueError(f"{label}: defined more than once")
        seen.add(spec.name)
        try:
            checked.append(_check_output(spec, inputs))
        except _Refused as exc:
            raise ValueError(f"{label}: {exc}") from None
    return Transform(dict(inputs), tuple(checked))


# -- applying ----------------------------------------------------------------------------------------------


def _to_arrow(name: str, data: Any) -> pa.Array:
    if isinstance(data, pa.ChunkedArray):
        return data.combine_chunks()
    if isinstance(data, pa.Array):
        return data
    if isinstance(data, np.ma.MaskedArray):
        return pa.array(np.ma.getdata(data), mask=np.ma.getmaskarray(data))
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            raise ValueError(f"input {name!r}: expected a one-dimensional column, got shape {data.shape}")
        return pa.array(data)
    if isinstance(data, list | tuple):
        return pa.array(data)
    raise ValueError(f"input {name!r}: expected a pyarrow or numpy array (or a list), got {type(data).__name__}")


def _read(name: str, dtype: str, data: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    """The values numexpr reads (missing ones filled) and which rows are present (None: all of them)."""
    try:
        arr = _to_arrow(name, data)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"input {name!r}: cannot read the values as {dtype}: {exc}") from None
    target = arrow_type(dtype)
    if arr.type != target:
        try:
            arr = arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ValueError(f"input {name!r}: cannot read {arr.type} as {dtype}: {exc}") from None
    if dtype == "float64":
        values = arr.fill_null(math.nan).to_numpy(zero_copy_only=False)
        missing = np.isnan(values)
    else:
        fill = False if dtype == "bool" else 0
        values = (
            arr.fill_null(fill).to_numpy(zero_copy_only=False) if arr.null_count else arr.to_numpy(zero_copy_only=False)
        )
        missing = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    if missing is None or not missing.any():
        return values, None
    return values, ~missing


def _and(masks: Sequence[np.ndarray[Any, Any] | None]) -> np.ndarray[Any, Any] | None:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0].copy()
    for m in present[1:]:
        out &= m
    return out


_KIND_DTYPES = {"b": np.bool_, "i": np.int32, "l": np.int64, "f": np.float32, "d": np.float64}


class Transform:
    """A validated set of on-demand outputs; build one with :func:`validate_transform`."""

    __slots__ = ("inputs", "outputs")

    def __init__(self, inputs: dict[str, str], outputs: tuple[TransformOutput, ...]) -> None:
        self.inputs = inputs
        self.outputs = outputs

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """The inputs the outputs read, sorted: what ``apply`` must be given."""
        return tuple(sorted({n for o in self.outputs for n in o.uses}))

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(o.name, arrow_type(o.dtype)) for o in self.outputs])

    def definition(self) -> dict[str, Any]:
        """The JSON form: ``validate_transform(**t.definition())`` rebuilds it."""
        return {
            "inputs": dict(self.inputs),
            "outputs": [{"name": o.name, "dtype": o.dtype, "expr": o.expr} for o in self.outputs],
        }

    def apply(self, columns: Mapping[str, Any], *, num_rows: int | None = None) -> pa.Table:
        """The outputs for each row of ``columns`` (name -> pyarrow array, chunked array, numpy array or list).

        The same call serves a whole historical table and an online batch of one key: a row's outputs depend on
        that row's inputs alone. Columns not read are ignored. ``num_rows`` is needed only when no output reads
        an input and ``columns`` is empty.
        """
        read: dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]] = {}
        rows = num_rows
        for name in self.required_inputs:
            if name not in columns:
                raise ValueError(
                    f"input column {name!r} is missing; this transform reads {', '.join(self.required_inputs)}"
                )
            read[name] = _read(name, self.inputs[name], columns[name])
            length = len(read[name][0])
            if rows is None:
                rows = length
            elif length != rows:
                raise ValueError(f"input column {name!r} has {length} rows, the others {rows}")
        if rows is None:
            lengths = {len(v) for v in columns.values()}
            if len(lengths) != 1:
                raise ValueError("give num_rows (or at least one column) for outputs that read no input")
            rows = lengths.pop()
        arrays = [self._one(out, read, rows) for out in self.outputs]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    @staticmethod
    def _one(
        out: TransformOutput,
        read: Mapping[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]],
        rows: int,
    ) -> pa.Array:
        c = out.compiled
        raw: np.ndarray[Any, Any]
        if rows == 0:
            raw = np.empty(0, dtype=_KIND_DTYPES[c.kind])
        else:
            args = [read[n][0] for n in c.arg_names]
            raw = c.program(*args, order="K", casting="safe", ex_uses_vml=c.uses_vml)
            raw = np.broadcast_to(raw, (rows,))  # an expression of constants gives one value
        valid = _and([read[n][1] for n in out.uses])
        if out.dtype == "float64":
            values = raw.astype(np.float64)
            nan = np.isnan(values)
            if nan.any():
                valid = ~nan if valid is None else valid & ~nan
        elif out.dtype == "int64" and c.kind in "fd":
            as_float = raw.astype(np.float64)
            fits = np.isfinite(as_float) & (as_float >= -(2.0**63)) & (as_float < 2.0**63)
            values = np.zeros(rows, dtype=np.int64)
            values[fits] = np.trunc(as_float[fits]).astype(np.int64)
            if not fits.all():
                valid = fits if valid is None else valid & fits
        else:
            values = raw.astype(np.int64 if out.dtype == "int64" else np.bool_)
        if valid is None or valid.all():
            return pa.array(values, type=arrow_type(out.dtype))
        values[~valid] = 0  # null slots hold zero, so equal outputs are equal byte for byte
        return pa.array(values, type=arrow_type(out.dtype), mask=~valid)
