"""The expression language of the ``filter``, ``derive`` and ``validate`` stages.

An expression is parsed with :func:`ast.parse` (never ``eval``), checked against a small set of
allowed syntax, and compiled once into a tree of closures. Evaluating it runs ``pyarrow.compute``
kernels over whole columns of a ``pa.Table``; there is no per-row Python work.

    compile_expr("price * qty > 100 and country in ['DE', 'FR']").evaluate(table)

The user documentation is ``docs/expressions.md``; the function list there follows ``FUNCTIONS``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import arrays
from pipeline.dtypes import parse_type, type_name
from pipeline.errors import ExprError, StageError

Value: TypeAlias = pa.Array | pa.ChunkedArray | pa.Scalar
Node = Callable[[pa.Table], Any]

__all__ = [
    "FUNCTIONS",
    "Expr",
    "Function",
    "Value",
    "broadcast",
    "compile_expr",
    "unknown_column",
]

_MAX_INT = 2**63 - 1
_NULL_NAMES = {"null", "None"}
_TRUE_NAMES = {"true", "True"}
_FALSE_NAMES = {"false", "False"}


# --------------------------------------------------------------------------------------------
# Failures while evaluating
# --------------------------------------------------------------------------------------------


class _Fail(Exception):
    """An evaluation step failed; the message says which operator or function and why."""


def _describe(value: Any) -> str:
    if isinstance(value, pa.Scalar):
        return "null" if pa.types.is_null(value.type) else type_name(value.type)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return type_name(value.type)
    return repr(value)


def _apply(label: str, func: Callable, args: Sequence[Any], hint: str = "", **options) -> Any:
    """Call a compute function; turn Arrow's errors into a message naming ``label``."""
    try:
        return func(*args, **options)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as e:
        types = ", ".join(_describe(a) for a in args if isinstance(a, (pa.Scalar, pa.Array, pa.ChunkedArray)))
        raise _Fail(f"{label} does not accept ({types}){hint}") from e
    except (pa.ArrowException, ValueError, ArithmeticError) as e:
        raise _Fail(f"{label}: {_arrow_message(e)}") from e


def _arrow_message(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # Arrow sometimes prefixes the C++ source location ("/arrow/cpp/src/...cc:123  message").
    return re.sub(r"^\S+\.(?:cc|h):\d+\s+", "", text)


# --------------------------------------------------------------------------------------------
# Type helpers
# --------------------------------------------------------------------------------------------


def _is_null_type(v: Any) -> bool:
    return pa.types.is_null(v.type)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t)


def _is_integer(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_bool(v: Any) -> bool:
    return pa.types.is_boolean(v.type) or pa.types.is_null(v.type)


def _as_bool(v: Any) -> Any:
    return pc.cast(v, pa.bool_()) if _is_null_type(v) else v


def _cast(v: Any, t: pa.DataType) -> Any:
    return pc.cast(v, t) if v.type != t else v


def _unify_nulls(a: Any, b: Any) -> tuple[Any, Any]:
    """Give a null literal the type of the other side, so kernels find a match."""
    if _is_null_type(a) and not _is_null_type(b):
        a = pc.cast(a, b.type)
    elif _is_null_type(b) and not _is_null_type(a):
        b = pc.cast(b, a.type)
    return a, b


def _coerce_literal(a: Any, b: Any) -> tuple[Any, Any]:
    """A string literal compared with a date/time column is read as a value of that type."""
    for x, y, swap in ((a, b, False), (b, a, True)):
        if isinstance(y, pa.Scalar) and _is_string(y.type) and _is_temporal(x.type) and y.is_valid:
            try:
                y = pc.cast(y, x.type)
            except (pa.ArrowException, ValueError) as e:
                raise _Fail(f"{y.as_py()!r} is not a valid {type_name(x.type)}: {_arrow_message(e)}") from e
            return (y, x) if swap else (x, y)
    return a, b


def _require_bool(v: Any, what: str, hint: str = "") -> Any:
    if not _is_bool(v):
        raise _Fail(f"{what} needs true/false values, got {_describe(v)}{hint}")
    return _as_bool(v)


def _null_of(t: pa.DataType) -> pa.Scalar:
    return arrays.scalar(None, type=t)


def broadcast(value: Value, length: int) -> pa.Array | pa.ChunkedArray:
    """An array of ``length`` rows: a scalar result repeated, an array result unchanged."""
    if isinstance(value, pa.Scalar):
        return pa.repeat(value, length)
    return value


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------

_PLUS_HINT = "; to join text with other values use concat(a, b) or str(x)"
_BITWISE_HINT = ("; note that '&' and '|' bind tighter than comparisons: write (a > 1) & (b < 2), "
                 "or use 'and' / 'or'")


def _op_add(a, b):
    a, b = _unify_nulls(a, b)
    if _is_string(a.type) and _is_string(b.type):
        return _apply("operator '+'", pc.binary_join_element_wise, [a, b, ""])
    hint = _PLUS_HINT if _is_string(a.type) or _is_string(b.type) else ""
    return _apply("operator '+'", pc.add_checked, [a, b], hint)


def _op_sub(a, b):
    return _apply("operator '-'", pc.subtract_checked, list(_unify_nulls(a, b)))


def _op_mul(a, b):
    return _apply("operator '*'", pc.multiply_checked, list(_unify_nulls(a, b)))


def _to_float(v):
    if _is_integer(v.type) or _is_null_type(v):
        return pc.cast(v, pa.float64(), safe=False)  # like Python, big ints round to the nearest float
    return v


def _truediv(a, b):
    return pc.divide_checked(_to_float(a), _to_float(b))


def _op_truediv(a, b):
    return _apply("operator '/'", _truediv, [a, b])


def _floordiv(a, b):
    if _is_integer(a.type) and _is_integer(b.type):
        # Exact for integers: a - a mod b is a multiple of b.
        return pc.divide_checked(pc.subtract_checked(a, pc.modulo_checked(a, b)), b)
    a, b = _to_float(a), _to_float(b)
    # As Python computes float floor division: (a - a mod b) / b is (nearly) a whole number.
    return pc.round(pc.divide_checked(pc.subtract_checked(a, pc.modulo_checked(a, b)), b))


def _op_floordiv(a, b):
    return _apply("operator '//'", _floordiv, list(_unify_nulls(a, b)))


def _op_mod(a, b):
    return _apply("operator '%'", pc.modulo_checked, list(_unify_nulls(a, b)))


def _op_pow(a, b):
    return _apply("operator '**'", pc.power_checked, list(_unify_nulls(a, b)))


def _op_and(a, b, sym="and"):
    hint = _BITWISE_HINT if sym == "&" else ""
    a = _require_bool(a, f"'{sym}'", hint)
    b = _require_bool(b, f"'{sym}'", hint)
    return _apply(f"'{sym}'", pc.and_kleene, [a, b])


def _op_or(a, b, sym="or"):
    hint = _BITWISE_HINT if sym == "|" else ""
    a = _require_bool(a, f"'{sym}'", hint)
    b = _require_bool(b, f"'{sym}'", hint)
    return _apply(f"'{sym}'", pc.or_kleene, [a, b])


def _op_not(a, sym="not"):
    return _apply(f"'{sym}'", pc.invert, [_require_bool(a, f"'{sym}'")])


def _op_neg(a):
    if _is_null_type(a):
        return a
    return _apply("unary '-'", pc.negate_checked, [a])


def _op_pos(a):
    if not (pa.types.is_integer(a.type) or pa.types.is_floating(a.type)
            or pa.types.is_decimal(a.type) or _is_null_type(a)):
        raise _Fail(f"unary '+' does not accept ({_describe(a)})")
    return a


_COMPARE = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
            ">": pc.greater, ">=": pc.greater_equal}


def _op_compare(sym, a, b):
    a, b = _unify_nulls(*_coerce_literal(a, b))
    return _apply(f"operator '{sym}'", _COMPARE[sym], [a, b])


def _op_in(x, values: list, negate: bool):
    sym = "not in" if negate else "in"
    if _is_null_type(x):
        return _null_of(pa.bool_())
    value_set = _value_set(x.type, values, sym)
    if pa.types.is_floating(value_set.type) and not pa.types.is_floating(x.type):
        x = pc.cast(x, pa.float64())
    found = _apply(f"'{sym}'", pc.is_in, [x], value_set=value_set)
    # Like the comparisons, a null on the left gives null (not false).
    found = pc.if_else(pc.is_valid(x), found, _null_of(pa.bool_()))
    return pc.invert(found) if negate else found


def _value_set(t: pa.DataType, values: list, sym: str) -> pa.Array:
    if not values:
        return arrays.array([], type=t)
    try:
        arr = arrays.array(values)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise _Fail(f"the list after '{sym}' mixes types: {values!r}") from e
    if arr.type == t:
        return arr
    numeric = pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal
    ok = ((_is_string(arr.type) and (_is_temporal(t) or _is_string(t)))
          or (any(f(arr.type) for f in numeric) and any(f(t) for f in numeric))
          or (pa.types.is_boolean(arr.type) and pa.types.is_boolean(t)))
    if not ok:
        raise _Fail(f"'{sym}' compares {type_name(t)} with a list of {type_name(arr.type)}")
    if pa.types.is_floating(arr.type) and pa.types.is_integer(t):
        return arr  # 1.5 in an int column: compared as numbers, never equal
    try:
        return pc.cast(arr, t)
    except (pa.ArrowException, ValueError) as e:
        raise _Fail(f"the list after '{sym}' does not fit {type_name(t)}: {_arrow_message(e)}") from e


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------


class Function(NamedTuple):
    """One entry of :data:`FUNCTIONS`.

    ``impl`` receives the evaluated arguments (Arrow arrays or scalars) and, for the positions in
    ``literals``, the plain Python value written in the expression (after the converter ran).
    """

    impl: Callable[..., Any]
    min_args: int
    max_args: int | None          # None: any number
    params: str                   # as shown in the docs: "x, ndigits=0"
    doc: str                      # one line
    literals: dict[int, Callable[[Any], Any]] = {}  # noqa: RUF012 - position -> converter (raises ValueError); never mutated

    def signature(self, name: str) -> str:
        return f"{name}({self.params})"

    def param_names(self) -> list[str]:
        return [p.split("=")[0].strip() for p in self.params.split(",") if p.strip() and "..." not in p]


def _lit_str(v):
    if not isinstance(v, str):
        raise ValueError(f"must be a string literal such as 'abc', got {v!r}")
    return v


def _lit_nonempty(v):
    if not _lit_str(v):
        raise ValueError("must not be empty")
    return v


def _lit_int(v):
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"must be an integer literal, got {v!r}")
    return v


def _lit_index(v):
    if _lit_int(v) < 0:
        raise ValueError(f"must be 0 or more, got {v}")
    return v


def _lit_type(v):
    return parse_type(_lit_str(v))


def _lit_unit(v):
    if v not in ("s", "ms", "us", "ns"):
        raise ValueError(f"must be one of 's', 'ms', 'us', 'ns', got {v!r}")
    return v


def _lit_regex(v):
    _lit_str(v)
    try:
        pc.match_substring_regex(arrays.array([""]), pattern=v)
    except pa.ArrowException as e:
        raise ValueError(f"is not a valid regular expression: {_arrow_message(e)}") from None
    return v


def _strings(label: str, *values):
    for v in values:
        if not (_is_string(v.type) or _is_null_type(v)):
            raise _Fail(f"{label} needs text, got {_describe(v)}")
    return [_cast(v, pa.string()) if _is_null_type(v) else v for v in values]


def _fn_fill_null(x, v):
    return pc.coalesce(*_unify_nulls(x, v))


def _fn_coalesce(*args):
    known = [a for a in args if not _is_null_type(a)]
    if not known:
        return args[0]
    return pc.coalesce(*[_cast(a, known[0].type) if _is_null_type(a) else a for a in args])


def _fn_if_else(cond, a, b):
    cond = _require_bool(cond, "if_else() condition")
    a, b = _unify_nulls(a, b)
    return pc.if_else(cond, a, b)


def _fn_nullif(x, v):
    x, v = _unify_nulls(*_coerce_literal(x, v))
    return pc.if_else(pc.equal(x, v), _null_of(x.type), x)


def _fn_strip(s, chars=None):
    (s,) = _strings("strip()", s)
    return pc.utf8_trim_whitespace(s) if chars is None else pc.utf8_trim(s, characters=chars)


def _fn_lstrip(s, chars=None):
    (s,) = _strings("lstrip()", s)
    return pc.utf8_ltrim_whitespace(s) if chars is None else pc.utf8_ltrim(s, characters=chars)


def _fn_rstrip(s, chars=None):
    (s,) = _strings("rstrip()", s)
    return pc.utf8_rtrim_whitespace(s) if chars is None else pc.utf8_rtrim(s, characters=chars)


def _fn_substring(s, start, length=None):
    (s,) = _strings("substring()", s)
    if length is not None and length < 0:
        raise _Fail(f"substring() length must be 0 or more, got {length}")
    if length is None:
        return pc.utf8_slice_codeunits(s, start)
    if start >= 0:
        return pc.utf8_slice_codeunits(s, start, start + length)
    # A negative start counts from the end (clamped to the first character), as s[start:][:length].
    return pc.utf8_slice_codeunits(pc.utf8_slice_codeunits(s, start), 0, length)


def _fn_concat(*args):
    parts = [a if _is_string(a.type) else pc.cast(a, pa.string()) for a in args]
    return pc.binary_join_element_wise(*parts, arrays.scalar(""), null_handling="replace", null_replacement="")


def _fn_split_part(s, sep, index):
    (s,) = _strings("split_part()", s)
    pieces = pc.split_pattern(s, pattern=sep)
    one = pc.list_slice(pieces, index, index + 1, return_fixed_size_list=True)
    return pc.list_element(one, arrays.scalar(0))


def _fn_date(x):
    return pc.cast(x, pa.date32())


def _fn_to_timestamp(s, fmt, unit="us"):
    (s,) = _strings("to_timestamp()", s)
    return pc.strptime(s, format=fmt, unit=unit, error_is_null=False)


def _fn_to_date(s, fmt):
    (s,) = _strings("to_date()", s)
    return pc.cast(pc.strptime(s, format=fmt, unit="s", error_is_null=False), pa.date32())


def _fn_round(x, ndigits=0):
    return pc.round(x, ndigits=ndigits, round_mode="half_to_even")


def _fn_floor(x):
    return x if _is_integer(x.type) else pc.floor(x)


def _fn_ceil(x):
    return x if _is_integer(x.type) else pc.ceil(x)


def _fn_log(x, base=None):
    x = _to_float(x)
    return pc.ln(x) if base is None else pc.logb(x, _to_float(base))


def _fn_minmax(kernel):
    def impl(*args):
        known = [a for a in args if not _is_null_type(a)]
        if not known:
            return args[0]
        return kernel(*known)
    return impl


def _fn_cast(x, dtype):
    return pc.cast(x, dtype, safe=True)


def _fn_int(x):
    if pa.types.is_floating(x.type) or pa.types.is_decimal(x.type):
        x = pc.trunc(x)  # like Python's int(): toward zero
    return pc.cast(x, pa.int64(), safe=True)


def _fn_float(x):
    return pc.cast(x, pa.float64(), safe=True)


def _fn_str(x):
    return pc.cast(x, pa.string(), safe=True)


def _unary(kernel, strings: bool = False, label: str = ""):
    def impl(x):
        if strings:
            (x,) = _strings(f"{label}()", x)
        return kernel(x)
    return impl


def _string_match(kernel, label):
    def impl(s, pattern):
        (s,) = _strings(f"{label}()", s)
        return kernel(s, pattern=pattern)
    return impl


def _fn_replace(s, old, new):
    (s,) = _strings("replace()", s)
    return pc.replace_substring(s, pattern=old, replacement=new)


def _fn_regex_replace(s, pattern, repl):
    (s,) = _strings("regex_replace()", s)
    return pc.replace_substring_regex(s, pattern=pattern, replacement=repl)


def _fn_strftime(x, fmt):
    if pa.types.is_timestamp(x.type) and x.type.unit != "s":
        # Arrow's %S would print the fraction of a second; like Python, print whole seconds.
        x = pc.cast(x, pa.timestamp("s", x.type.tz), safe=False)
    return pc.strftime(x, format=fmt)


_S = {1: _lit_str}

FUNCTIONS: dict[str, Function] = {
    # null handling
    "fill_null": Function(_fn_fill_null, 2, 2, "x, value",
                          "x, with nulls replaced by value"),
    "coalesce": Function(_fn_coalesce, 1, None, "a, b, ...",
                         "the first argument that is not null, row by row"),
    "is_null": Function(pc.is_null, 1, 1, "x",
                        "true where x is null (NaN is not null)"),
    "is_not_null": Function(pc.is_valid, 1, 1, "x",
                            "true where x is not null"),
    "if_else": Function(_fn_if_else, 3, 3, "cond, a, b",
                        "a where cond is true, b where it is false, null where cond is null"),
    "nullif": Function(_fn_nullif, 2, 2, "x, value",
                       "null where x equals value, else x (a / nullif(b, 0) avoids division by zero)"),
    # strings
    "lower": Function(_unary(pc.utf8_lower, True, "lower"), 1, 1, "s", "s in lower case"),
    "upper": Function(_unary(pc.utf8_upper, True, "upper"), 1, 1, "s", "s in upper case"),
    "strip": Function(_fn_strip, 1, 2, "s, chars=whitespace",
                      "s without leading and trailing whitespace (or the given characters)",
                      {1: _lit_str}),
    "lstrip": Function(_fn_lstrip, 1, 2, "s, chars=whitespace",
                       "s without leading whitespace (or the given characters)", {1: _lit_str}),
    "rstrip": Function(_fn_rstrip, 1, 2, "s, chars=whitespace",
                       "s without trailing whitespace (or the given characters)", {1: _lit_str}),
    "length": Function(_unary(pc.utf8_length, True, "length"), 1, 1, "s",
                       "the number of characters in s"),
    "contains": Function(_string_match(pc.match_substring, "contains"), 2, 2, "s, sub",
                         "true where s contains the text sub", _S),
    "starts_with": Function(_string_match(pc.starts_with, "starts_with"), 2, 2, "s, prefix",
                            "true where s starts with prefix", _S),
    "ends_with": Function(_string_match(pc.ends_with, "ends_with"), 2, 2, "s, suffix",
                          "true where s ends with suffix", _S),
    "replace": Function(_fn_replace, 3, 3, "s, old, new",
                        "s with every occurrence of the text old replaced by new",
                        {1: _lit_nonempty, 2: _lit_str}),
    "regex_replace": Function(_fn_regex_replace, 3, 3, "s, pattern, replacement",
                              "s with every match of the regular expression replaced "
                              "(\\1 refers to a group)", {1: _lit_regex, 2: _lit_str}),
    "regex_match": Function(_string_match(pc.match_substring_regex, "regex_match"), 2, 2,
                            "s, pattern",
                            "true where the regular expression matches anywhere in s "
                            "(anchor it with ^ and $)", {1: _lit_regex}),
    "substring": Function(_fn_substring, 2, 3, "s, start, length=to the end",
                          "length characters of s from start (0-based; a negative start counts "
                          "from the end)", {1: _lit_int, 2: _lit_int}),
    "concat": Function(_fn_concat, 1, None, "a, b, ...",
                       "the arguments joined as text; nulls count as empty text"),
    "split_part": Function(_fn_split_part, 3, 3, "s, sep, index",
                           "the index-th piece (0-based) of s split at sep; null if there are "
                           "fewer pieces", {1: _lit_nonempty, 2: _lit_index}),
    # dates and times
    "year": Function(pc.year, 1, 1, "t", "the year of a date or timestamp"),
    "month": Function(pc.month, 1, 1, "t", "the month, 1-12"),
    "day": Function(pc.day, 1, 1, "t", "the day of the month, 1-31"),
    "hour": Function(pc.hour, 1, 1, "t", "the hour, 0-23"),
    "minute": Function(pc.minute, 1, 1, "t", "the minute, 0-59"),
    "second": Function(pc.second, 1, 1, "t", "the whole seconds, 0-59"),
    "day_of_week": Function(pc.day_of_week, 1, 1, "t", "the weekday, Monday=0 ... Sunday=6"),
    "day_of_year": Function(pc.day_of_year, 1, 1, "t", "the day of the year, 1-366"),
    "week": Function(pc.iso_week, 1, 1, "t", "the ISO 8601 week number, 1-53"),
    "date": Function(_fn_date, 1, 1, "t", "the date of a timestamp (or of a 'YYYY-MM-DD' string)"),
    "to_timestamp": Function(_fn_to_timestamp, 2, 3, "s, format, unit='us'",
                             "s parsed with a strptime format such as '%Y-%m-%d %H:%M:%S'; "
                             "a value that does not parse is an error",
                             {1: _lit_str, 2: _lit_unit}),
    "to_date": Function(_fn_to_date, 2, 2, "s, format",
                        "s parsed as a date with a strptime format such as '%d.%m.%Y'", _S),
    "strftime": Function(_fn_strftime, 2, 2, "t, format",
                         "t formatted as text with a strftime format such as '%Y-%m-%d %H:%M:%S'",
                         _S),
    # math
    "round": Function(_fn_round, 1, 2, "x, ndigits=0",
                      "x rounded to ndigits decimals, halves to even (2.5 -> 2)", {1: _lit_int}),
    "abs": Function(pc.abs_checked, 1, 1, "x", "the absolute value"),
    "floor": Function(_fn_floor, 1, 1, "x", "the largest whole number <= x"),
    "ceil": Function(_fn_ceil, 1, 1, "x", "the smallest whole number >= x"),
    "sqrt": Function(pc.sqrt, 1, 1, "x", "the square root (NaN for negative x)"),
    "log": Function(_fn_log, 1, 2, "x, base=e",
                    "the logarithm, natural unless base is given (NaN for negative x)"),
    "exp": Function(pc.exp, 1, 1, "x", "e to the power x"),
    "min": Function(_fn_minmax(pc.min_element_wise), 1, None, "a, b, ...",
                    "the smallest argument, row by row, ignoring nulls"),
    "max": Function(_fn_minmax(pc.max_element_wise), 1, None, "a, b, ...",
                    "the largest argument, row by row, ignoring nulls"),
    # types
    "cast": Function(_fn_cast, 2, 2, "x, type",
                     "x converted to a type such as 'int32', 'float64', 'string', "
                     "'timestamp[ms]', 'decimal(10,2)'; a value that does not fit is an error",
                     {1: _lit_type}),
    "int": Function(_fn_int, 1, 1, "x", "x as int64 (numbers are cut toward zero, like Python)"),
    "float": Function(_fn_float, 1, 1, "x", "x as float64"),
    "str": Function(_fn_str, 1, 1, "x", "x as text"),
}


# --------------------------------------------------------------------------------------------
# Backquoted names and positions
# --------------------------------------------------------------------------------------------


class _Source:
    """The text handed to ``ast.parse`` and the map from its characters back to the original."""

    def __init__(self, text: str):
        self.text = text
        self.names: dict[str, str] = {}      # placeholder identifier -> column name
        prefix = "_bq"
        while prefix in text:
            prefix += "_"
        out: list[str] = []
        pos: list[int] = []
        by_name: dict[str, str] = {}

        def emit(s: str, at: int, same: bool = False) -> None:
            out.append(s)
            pos.extend([at] * len(s) if same else range(at, at + len(s)))

        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c in "'\"":
                quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else c
                j = i + len(quote)
                while j < n and not text.startswith(quote, j):
                    j += 2 if text[j] == "\\" else 1
                j = min(j + len(quote), n)
                emit(text[i:j], i)
                i = j
            elif c == "`":
                j = text.find("`", i + 1)
                if j < 0:
                    raise self.error("unterminated backquoted column name", i)
                name = text[i + 1:j]
                if not name:
                    raise self.error("empty backquoted column name ``", i)
                if name not in by_name:
                    by_name[name] = f"{prefix}{len(by_name)}"
                    self.names[by_name[name]] = name
                emit(f" {by_name[name]} ", i, same=True)
                i = j + 1
            elif c == "#":
                j = text.find("\n", i)
                i = n if j < 0 else j  # a comment runs to the end of its line
            elif c in "\r\n\t":
                emit(" ", i)
                i += 1
            else:
                emit(c, i)
                i += 1
        parsed = "".join(out)
        lead = len(parsed) - len(parsed.lstrip())
        self.parsed = parsed[lead:].rstrip()
        self.pos = pos[lead:lead + len(self.parsed)]

    def where(self, index: int | None) -> str:
        """' at column N' for a character index of the original text ('' for None)."""
        if index is None:
            return ""
        if index >= len(self.text.rstrip()):
            return " at the end"
        line = self.text.count("\n", 0, index) + 1
        col = index - (self.text.rfind("\n", 0, index) + 1) + 1
        return f" at line {line}, column {col}" if "\n" in self.text.strip() else f" at column {col}"

    def original(self, parsed_index: int) -> int:
        if parsed_index < len(self.pos):
            return self.pos[parsed_index]
        return len(self.text)

    def node_index(self, node: ast.AST) -> int | None:
        offset = getattr(node, "col_offset", None)
        if offset is None:
            return None
        chars = len(self.parsed.encode("utf-8")[:offset].decode("utf-8", errors="ignore"))
        return self.original(chars)

    def error(self, message: str, index: int | None = None) -> ExprError:
        return ExprError(f"expression {self.text!r}: {message}{self.where(index)}")

    def node_error(self, message: str, index: int | None) -> ExprError:
        """An error about a part of the expression; its position is given unless it starts it."""
        if index is None or index <= len(self.text) - len(self.text.lstrip()):
            return ExprError(f"expression {self.text!r}: {message}")
        return ExprError(f"expression {self.text!r}: {message} ({self.where(index).strip()})")


# --------------------------------------------------------------------------------------------
# The compiler
# --------------------------------------------------------------------------------------------

_BINOPS: dict[type, tuple[str, Callable]] = {
    ast.Add: ("+", _op_add),
    ast.Sub: ("-", _op_sub),
    ast.Mult: ("*", _op_mul),
    ast.Div: ("/", _op_truediv),
    ast.FloorDiv: ("//", _op_floordiv),
    ast.Mod: ("%", _op_mod),
    ast.Pow: ("**", _op_pow),
    ast.BitAnd: ("&", lambda a, b: _op_and(a, b, "&")),
    ast.BitOr: ("|", lambda a, b: _op_or(a, b, "|")),
}
_UNSUPPORTED_BINOPS = {ast.BitXor: ("^", "; use ** for powers"), ast.LShift: ("<<", ""),
                       ast.RShift: (">>", ""), ast.MatMult: ("@", "")}
_CMPOPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_DISALLOWED = {
    ast.Attribute: "attribute access is not allowed; call functions by name, e.g. lower(x) "
                   "instead of x.lower()",
    ast.Subscript: "indexing with [...] is not allowed; use substring() or split_part()",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed; use concat()",
    ast.FormattedValue: "f-strings are not allowed; use concat()",
    ast.NamedExpr: "assignment with ':=' is not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Dict: "a mapping {...} is not allowed",
    ast.Set: "a set {...} is not allowed; write a list [...] after 'in'",
    ast.Tuple: "a tuple is not allowed; write a list [...] after 'in'",
    ast.List: "a list is only allowed after 'in' or 'not in'",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Slice: "slices are not allowed; use substring()",
}


class _Compiler:
    def __init__(self, source: _Source):
        self.src = source
        self.columns: set[str] = set()

    def fail(self, message: str, node: ast.AST | None = None) -> ExprError:
        return self.src.node_error(message, self.src.node_index(node) if node is not None else None)

    # literals -------------------------------------------------------------------------------

    def literal(self, node: ast.AST) -> tuple[bool, Any]:
        """(True, value) if ``node`` is a literal (a constant, true/false/null, a signed number)."""
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, (bytes, complex)) or v is Ellipsis:
                what = {bytes: "bytes", complex: "complex number"}.get(type(v), "'...'")
                raise self.fail(f"{what} literals are not supported", node)
            return True, v
        if isinstance(node, ast.Name) and node.id not in self.src.names:
            if node.id in _NULL_NAMES:
                return True, None
            if node.id in _TRUE_NAMES:
                return True, True
            if node.id in _FALSE_NAMES:
                return True, False
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            ok, v = self.literal(node.operand)
            if ok and isinstance(v, (int, float)) and not isinstance(v, bool):
                return True, -v if isinstance(node.op, ast.USub) else v
        return False, None

    def scalar(self, value: Any, node: ast.AST) -> pa.Scalar:
        if value is None:
            return arrays.scalar(None)
        if isinstance(value, bool):
            return arrays.scalar(value, pa.bool_())
        if isinstance(value, int):
            if not -_MAX_INT - 1 <= value <= _MAX_INT:
                raise self.fail(f"integer {value} does not fit in int64", node)
            return arrays.scalar(value, pa.int64())
        if isinstance(value, float):
            return arrays.scalar(value, pa.float64())
        if isinstance(value, str):
            return arrays.scalar(value, pa.string())
        raise self.fail(f"unsupported literal {value!r}", node)

    # nodes ----------------------------------------------------------------------------------

    def compile(self, node: ast.AST) -> Node:
        ok, value = self.literal(node)
        if ok:
            sc = self.scalar(value, node)
            return lambda table: sc
        method = getattr(self, f"c_{type(node).__name__}", None)
        if method is not None:
            return method(node)
        if type(node) in _DISALLOWED:
            raise self.fail(_DISALLOWED[type(node)], node)
        raise self.fail(f"{type(node).__name__} syntax is not allowed", node)

    def c_Name(self, node: ast.Name) -> Node:
        name = self.src.names.get(node.id, node.id)
        self.columns.add(name)

        def column(table: pa.Table):
            try:
                return table.column(name)
            except KeyError:
                raise _Fail(unknown_column(name, table.column_names)) from None
        return column

    def c_BinOp(self, node: ast.BinOp) -> Node:
        if type(node.op) in _UNSUPPORTED_BINOPS:
            sym, hint = _UNSUPPORTED_BINOPS[type(node.op)]
            raise self.fail(f"operator '{sym}' is not supported{hint}", node)
        _, op = _BINOPS[type(node.op)]
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda table: op(left(table), right(table))

    def c_UnaryOp(self, node: ast.UnaryOp) -> Node:
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda table: _op_not(operand(table))
        if isinstance(node.op, ast.Invert):
            return lambda table: _op_not(operand(table), "~")
        if isinstance(node.op, ast.USub):
            return lambda table: _op_neg(operand(table))
        return lambda table: _op_pos(operand(table))

    def c_BoolOp(self, node: ast.BoolOp) -> Node:
        parts = [self.compile(v) for v in node.values]
        op = _op_and if isinstance(node.op, ast.And) else _op_or

        def run(table):
            result = parts[0](table)
            for part in parts[1:]:
                result = op(result, part(table))
            return result
        return run

    def c_IfExp(self, node: ast.IfExp) -> Node:
        cond, a, b = self.compile(node.test), self.compile(node.body), self.compile(node.orelse)
        return lambda table: _fn_if_else_checked(cond(table), a(table), b(table))

    def c_Compare(self, node: ast.Compare) -> Node:
        special = [op for op in node.ops if isinstance(op, (ast.In, ast.NotIn, ast.Is, ast.IsNot))]
        if special and len(node.ops) > 1:
            raise self.fail("'in' and 'is' cannot be chained with other comparisons; "
                            "combine them with 'and'", node)
        if special:
            return self.compare_special(node, node.ops[0], node.comparators[0])
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            for side, other in ((left, right), (right, left)):
                ok, value = self.literal(side)
                if ok and value is None and isinstance(op, (ast.Eq, ast.NotEq)):
                    target = ast.get_source_segment(self.src.parsed, other) or "x"
                    target = self.restore(target)
                    fn = "is_null" if isinstance(op, ast.Eq) else "is_not_null"
                    word = "is null" if isinstance(op, ast.Eq) else "is not null"
                    raise self.fail(f"comparing with null gives null, never true; "
                                    f"use {fn}({target}) or {target} {word}", node)
        nodes = [self.compile(o) for o in operands]
        syms = [_CMPOPS[type(op)] for op in node.ops]

        def run(table):
            values = [n(table) for n in nodes]
            result = None
            for sym, a, b in zip(syms, values, values[1:]):
                step = _op_compare(sym, a, b)
                result = step if result is None else _apply("'and'", pc.and_kleene, [result, step])
            return result
        return run

    def restore(self, text: str) -> str:
        for placeholder, name in self.src.names.items():
            text = text.replace(placeholder, f"`{name}`")
        return text

    def compare_special(self, node: ast.Compare, op: ast.cmpop, right: ast.AST) -> Node:
        left = self.compile(node.left)
        if isinstance(op, (ast.Is, ast.IsNot)):
            ok, value = self.literal(right)
            if not ok or value is not None:
                raise self.fail("'is' is only allowed as 'x is null' or 'x is not null'; "
                                "use == to compare values", node)
            fn = pc.is_null if isinstance(op, ast.Is) else pc.is_valid
            return lambda table: fn(left(table))
        negate = isinstance(op, ast.NotIn)
        sym = "not in" if negate else "in"
        if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(f"'{sym}' needs a list of literal values, e.g. x {sym} ['a', 'b']", node)
        values = []
        for element in right.elts:
            ok, value = self.literal(element)
            if not ok:
                raise self.fail(f"the list after '{sym}' may only hold literal values "
                                "(numbers, strings, true/false)", element)
            if value is None:
                raise self.fail(f"null in the list after '{sym}' never matches; "
                                f"use is_null(x) or (x {sym} [...])", element)
            values.append(value)
        try:
            arrays.array(values)
        except (pa.ArrowException, ValueError, TypeError):
            raise self.fail(f"the values in the list after '{sym}' must all be of one type", right) from None
        return lambda table: _op_in(left(table), values, negate)

    def c_Call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name) or node.func.id in self.src.names:
            if isinstance(node.func, ast.Attribute):
                raise self.fail(f"methods such as .{node.func.attr}() are not allowed; call functions "
                                f"by name, e.g. lower(x) instead of x.lower()", node)
            raise self.fail("only the listed functions can be called, by name, e.g. lower(x)", node)
        name = node.func.id
        fn = FUNCTIONS.get(name)
        if fn is None:
            close = difflib.get_close_matches(name, list(FUNCTIONS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}()?)" if close else "; see docs/expressions.md for the list"
            raise self.fail(f"unknown function {name}(){hint}", node)
        args: list[ast.AST] = list(node.args)
        if node.keywords:
            names = fn.param_names()
            slots: dict[int, ast.AST] = dict(enumerate(args))
            for kw in node.keywords:
                if kw.arg is None:
                    raise self.fail("'**' unpacking is not allowed", node)
                if kw.arg not in names:
                    raise self.fail(f"{name}() has no argument {kw.arg!r}; it takes {fn.signature(name)}", node)
                index = names.index(kw.arg)
                if index in slots:
                    raise self.fail(f"{name}() got argument {kw.arg!r} twice", node)
                slots[index] = kw.value
            if sorted(slots) != list(range(len(slots))):
                missing = [names[i] for i in range(max(slots)) if i not in slots]
                raise self.fail(f"{name}() is missing argument {', '.join(missing)}; "
                                f"it takes {fn.signature(name)}", node)
            args = [slots[i] for i in range(len(slots))]
        count = len(args)
        if count < fn.min_args or (fn.max_args is not None and count > fn.max_args):
            if fn.max_args is None:
                want = f"at least {fn.min_args}"
            elif fn.min_args == fn.max_args:
                want = str(fn.min_args)
            else:
                want = f"{fn.min_args} to {fn.max_args}"
            plural = "" if want == "1" else "s"
            raise self.fail(f"{name}() takes {want} argument{plural} ({fn.signature(name)}), "
                            f"got {count}", node)
        parts: list[tuple[bool, Any]] = []
        for i, arg in enumerate(args):
            if i in fn.literals:
                ok, value = self.literal(arg)
                label = fn.param_names()[i] if i < len(fn.param_names()) else f"argument {i + 1}"
                if not ok:
                    raise self.fail(f"{name}(): {label} must be a literal value, not an expression", arg)
                try:
                    parts.append((True, fn.literals[i](value)))
                except ValueError as e:
                    msg = str(e)
                    text = f"{label} {msg}" if msg.startswith(("must ", "is ")) else msg
                    raise self.fail(f"{name}(): {text}", arg) from None
            else:
                parts.append((False, self.compile(arg)))
        label = f"{name}()"
        hint = f"; expected {fn.signature(name)}: {fn.doc}"

        def call(table):
            values = [p if is_lit else p(table) for is_lit, p in parts]
            return _apply(label, fn.impl, values, hint)
        return call


def _fn_if_else_checked(cond, a, b):
    return _apply("'if ... else'", _fn_if_else, [cond, a, b])


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def unknown_column(name: str, names: Sequence[str]) -> str:
    """``unknown column 'prcie' (did you mean 'price'?)``."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    if close:
        return f"unknown column {name!r} (did you mean {close[0]!r}?)"
    shown = ", ".join(repr(n) for n in list(names)[:20])
    more = ", ..." if len(names) > 20 else ""
    return f"unknown column {name!r}; the columns are: {shown}{more}" if names else \
        f"unknown column {name!r}; there are no columns"


@dataclass(frozen=True, eq=False)
class Expr:
    """A compiled expression. Build with :func:`compile_expr`."""

    text: str
    columns: frozenset[str]
    _run: Node = field(repr=False)

    def evaluate(self, table: pa.Table) -> Value:
        """The result over ``table``: an array of its length, or a scalar (see :func:`broadcast`).

        Raises StageError naming the expression when a value makes Arrow fail (an overflow, a
        division by zero, a string that does not parse).
        """
        try:
            return self._run(table)
        except _Fail as e:
            raise StageError(f"expression {self.text!r} failed: {e}", expression=self.text) from e.__cause__
        except (pa.ArrowException, ArithmeticError, TypeError, ValueError) as e:
            raise StageError(f"expression {self.text!r} failed: {_arrow_message(e)}",
                             expression=self.text) from e

    def check(self, schema: pa.Schema) -> pa.DataType:
        """Check the expression against ``schema`` and return its result type.

        Raises ExprError for an unknown column (with a suggestion) or a type error.
        """
        for name in sorted(self.columns):
            if name not in schema.names:
                raise ExprError(f"expression {self.text!r}: {unknown_column(name, schema.names)}")
        try:
            result = self._run(pa.Table.from_batches([], schema=schema))
        except _Fail as e:
            raise ExprError(f"expression {self.text!r}: {e}") from None
        except (pa.ArrowException, ArithmeticError, TypeError, ValueError) as e:
            raise ExprError(f"expression {self.text!r}: {_arrow_message(e)}") from None
        return result.type

    def __reduce__(self):
        return (compile_expr, (self.text,))


def compile_expr(text: str) -> Expr:
    """Parse and compile an expression; raises ExprError quoting it when it is not valid."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, got {text!r}")
    return _compile(text)


@functools.lru_cache(maxsize=1024)
def _compile(text: str) -> Expr:
    source = _Source(text)
    if not source.parsed:
        raise ExprError("empty expression")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences in string literals
            tree = ast.parse(source.parsed, mode="eval")
    except SyntaxError as e:
        index = None
        if e.lineno in (None, 1):
            index = source.original(e.offset - 1) if e.offset and e.offset > 0 else len(text)
        message = re.sub(r"\s*\(<unknown>, line \d+\)$", "", e.msg or "invalid syntax")
        message = re.sub(r"\s*\(detected at line \d+\)", "", message)
        hint = ""
        if index is not None and index < len(text) and text[index] == "=" \
                and text[index:index + 2] != "==" and text[index - 1:index] not in ("<", ">", "!", "="):
            hint = " (use == to compare)"
        raise ExprError(f"expression {text!r}: {message}{source.where(index)}{hint}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise source.error(f"cannot be parsed ({type(e).__name__})") from None
    compiler = _Compiler(source)
    try:
        run = compiler.compile(tree.body)
    except RecursionError:
        raise source.error("is nested too deeply") from None
    return Expr(text=text, columns=frozenset(compiler.columns), _run=run)
