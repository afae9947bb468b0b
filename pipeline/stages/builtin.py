"""The built-in stages. Each works on whole columns with pyarrow.compute; none loops over rows.

The user documentation is ``docs/stages.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from pipeline import arrays
from pipeline.dtypes import parse_type, type_name
from pipeline.errors import ExprError, StageError
from pipeline.stages.expr import broadcast, compile_expr, unknown_column
from pipeline.stages.registry import STAGE_REJECTS_SCHEMA, StageContext, StageOutput, register

# --------------------------------------------------------------------------------------------
# Spec types
# --------------------------------------------------------------------------------------------


def _check_type(name: str) -> str:
    parse_type(name)
    return name


def _check_regex(pattern: str) -> str:
    try:
        pc.match_substring_regex(arrays.array([""]), pattern=pattern)
    except pa.ArrowException as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None
    return pattern


def _expression_text(value: Any) -> Any:
    """``derive: {flag: true, one: 1}``: YAML scalars are taken as the literal they spell."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return value


def _unique(names: list[str]) -> list[str]:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"column {dupes[0]!r} is listed twice")
    return names


Columns = Annotated[list[str], Field(min_length=1), AfterValidator(_unique)]
TypeName = Annotated[str, AfterValidator(_check_type)]
ExprText = Annotated[str, Field(min_length=1)]
DeriveText = Annotated[str, BeforeValidator(_expression_text), Field(min_length=1)]
Literal_ = StrictBool | StrictInt | StrictFloat | dt.datetime | dt.date | str
Bound = StrictInt | StrictFloat | dt.datetime | dt.date | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RangeRule(_Strict):
    min: Bound | None = None
    max: Bound | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both, e.g. {min: 0, max: 100}")
        return self


class ValidateSpec(_Strict):
    not_null: list[str] = Field(default_factory=list)
    range: dict[str, RangeRule] = Field(default_factory=dict)
    allowed: dict[str, Annotated[list[Literal_ | None], Field(min_length=1)]] = Field(default_factory=dict)
    regex: dict[str, Annotated[str, AfterValidator(_check_regex)]] = Field(default_factory=dict)
    expr: dict[str, ExprText] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _some_rule(self) -> ValidateSpec:
        if not (self.not_null or self.range or self.allowed or self.regex or self.expr):
            raise ValueError("give at least one rule: not_null, range, allowed, regex or expr")
        return self


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _require(table: pa.Table, names, key: Any = None) -> None:
    """ExprError naming the first of ``names`` that is not a column, with a suggestion."""
    have = table.column_names
    for name in names:
        if name not in have:
            raise ExprError(unknown_column(name, have), key=name if key is True else key)


def _evaluate(text: str, table: pa.Table, key: str | None):
    """Compile and evaluate an expression; errors carry ``key`` (the part of the spec)."""
    try:
        expr = compile_expr(text)
    except ExprError as e:
        raise ExprError(e.message, key=key) from None
    missing = [c for c in sorted(expr.columns) if c not in table.column_names]
    if missing:
        raise ExprError(f"expression {text!r}: {unknown_column(missing[0], table.column_names)}", key=key)
    try:
        return expr.evaluate(table)
    except StageError as e:
        raise StageError(e.message, key=key, expression=text) from e


def _is_boolean(t: pa.DataType) -> bool:
    return pa.types.is_boolean(t) or pa.types.is_null(t)


def _mask(value, length: int) -> pa.Array:
    """A boolean array without nulls (null counts as false)."""
    arr = broadcast(value, length)
    if pa.types.is_null(arr.type):
        arr = pc.cast(arr, pa.bool_())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else arrays.array([], pa.bool_())
    return pc.fill_null(arr, arrays.scalar(False)) if arr.null_count else arr


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    index = table.schema.get_field_index(name)
    if index >= 0:
        return table.set_column(index, name, values)
    if name in table.column_names:  # duplicated name: replace the first
        index = table.column_names.index(name)
        return table.set_column(index, name, values)
    return table.append_column(name, values)


def _render(values: pa.Array) -> pa.Array:
    """Values shown in a reject reason: 'text' quoted and cut at 60 characters, others as text."""
    try:
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            cut = pc.utf8_slice_codeunits(values, 0, 60)
            quote = arrays.scalar("'")
            shown = pc.binary_join_element_wise(quote, cut, quote, arrays.scalar(""))
        else:
            shown = pc.cast(values, pa.string())
        return pc.fill_null(pc.cast(shown, pa.string()), arrays.scalar("null"))
    except pa.ArrowException:
        return pa.repeat(arrays.scalar("(value)"), len(values))


def _with_value(prefix: str, values: pa.Array, suffix: str) -> pa.Array:
    return pc.binary_join_element_wise(arrays.scalar(prefix), _render(values), arrays.scalar(suffix),
                                       arrays.scalar(""))


def _literal_scalar(value: Any, dtype: pa.DataType, what: str, key: str) -> pa.Scalar:
    try:
        scalar = arrays.scalar(value)
        return scalar if scalar.type == dtype else pc.cast(scalar, dtype, safe=True)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise ExprError(f"{what} {value!r} does not fit the column's type {type_name(dtype)}: {e}",
                        key=key) from None


def _bound(bound: Any, dtype: pa.DataType, what: str, key: str) -> pa.Scalar:
    """A range bound as a scalar comparable with a column of ``dtype``."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        if not isinstance(bound, str):
            raise ExprError(f"the {what} {bound!r} is not text, but the column is {type_name(dtype)}", key=key)
        return arrays.scalar(bound)
    if pa.types.is_temporal(dtype) or pa.types.is_decimal(dtype):
        return _literal_scalar(bound, dtype, what, key)
    return arrays.scalar(bound)


# --------------------------------------------------------------------------------------------
# The columns each stage reads (see registry.columns_read)
# --------------------------------------------------------------------------------------------


def _also(names: Callable[[Any], Iterable[str]]) -> Callable[[Any, frozenset[str] | None], frozenset[str] | None]:
    """``reads`` of a stage that keeps every column and reads those ``names(spec)`` gives."""
    return lambda spec, after: None if after is None else after | frozenset(names(spec))


def _expression_columns(text: str) -> frozenset[str]:
    return compile_expr(text).columns


def _reads_rename(spec: dict[str, str], after: frozenset[str] | None) -> frozenset[str] | None:
    return None if after is None else (after - frozenset(spec.values())) | frozenset(spec)


def _reads_derive(spec: dict[str, str], after: frozenset[str] | None) -> frozenset[str] | None:
    if after is None:
        return None
    used = frozenset().union(*(_expression_columns(t) for t in spec.values()))
    return (after - frozenset(spec)) | used


def _reads_drop_nulls(spec, after: frozenset[str] | None) -> frozenset[str] | None:
    return None if spec in (None, "all") or after is None else after | frozenset(spec)


def _validated_columns(spec: ValidateSpec) -> frozenset[str]:
    used = set(spec.not_null) | set(spec.range) | set(spec.allowed) | set(spec.regex)
    for text in spec.expr.values():
        used |= _expression_columns(text)
    return frozenset(used)


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------


@register("select", example="select: [id, ts, total]", reads=lambda spec, after: frozenset(spec))
def select(table: pa.Table, spec: Columns, ctx: StageContext) -> pa.Table:
    """Keep these columns, in this order."""
    _require(table, spec)
    return table.select(spec)


@register("drop", example="drop: [tmp, debug]", reads=_also(lambda spec: spec))
def drop(table: pa.Table, spec: Columns, ctx: StageContext) -> pa.Table:
    """Remove these columns."""
    _require(table, spec)
    return table.drop_columns(spec)


@register("rename", example="rename: {old_name: new_name}", reads=_reads_rename)
def rename(table: pa.Table, spec: dict[str, str], ctx: StageContext) -> pa.Table:
    """Rename columns: {old: new}."""
    _require(table, spec, key=True)
    names = [spec.get(n, n) for n in table.column_names]
    for old, new in spec.items():
        if names.count(new) > 1:
            raise ExprError(f"renaming {old!r} to {new!r} gives two columns named {new!r}", key=old)
    return table.rename_columns(names)


@register("cast", example="cast: {qty: int32, ts: 'timestamp[s]'}", reads=_also(lambda spec: spec))
def cast(table: pa.Table, spec: dict[str, TypeName], ctx: StageContext) -> StageOutput:
    """Convert columns to types; rows whose value does not convert are rejected."""
    _require(table, spec, key=True)
    targets = {name: parse_type(t) for name, t in spec.items()}
    casted: dict[str, Any] = {}
    reasons: dict[int, str] = {}
    for name, dtype in targets.items():
        column = table.column(name)
        if column.type == dtype:
            continue
        try:
            casted[name] = pc.cast(column, dtype, safe=True)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise ExprError(f"cannot cast column {name!r} from {type_name(column.type)} to "
                            f"{type_name(dtype)}: {e}", key=name) from None
        except pa.ArrowInvalid as e:
            bad = _failing_rows(column, dtype)
            if not bad:
                raise StageError(f"cast of {name!r} to {type_name(dtype)} failed: {e}", key=name) from e
            flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            for row in bad:
                if row not in reasons:
                    value = flat[row].as_py()
                    shown = repr(value)
                    shown = shown if len(shown) <= 80 else shown[:77] + "..."
                    reasons[row] = f"cast to {type_name(dtype)} failed: {shown} (column {name})"
    if not reasons:
        for name, values in casted.items():
            table = _set_column(table, name, values)
        return StageOutput(table)
    keep = np.ones(table.num_rows, dtype=bool)
    rows = sorted(reasons)
    keep[rows] = False
    kept = arrays.array(keep)
    table = table.filter(kept)
    for name, dtype in targets.items():
        if table.column(name).type != dtype:
            table = _set_column(table, name, pc.cast(table.column(name), dtype, safe=True))
    rejected = pa.table({"row": arrays.array(rows, pa.int64()),
                         "reason": arrays.array([reasons[r] for r in rows], pa.string())},
                        schema=STAGE_REJECTS_SCHEMA)
    return StageOutput(table, kept=kept, rejected=rejected)


def _failing_rows(column, dtype: pa.DataType) -> list[int]:
    """Positions of the values that do not cast.

    The distinct values are cast in halves, recursing into the halves that fail, so a bad value
    that repeats costs no more than one; the rows holding a bad value are then found at once.
    """
    try:
        distinct = pc.unique(column)
    except pa.ArrowException:
        distinct = None
    if distinct is None or len(distinct) == len(column):
        return _bisect(column, dtype)
    bad = _bisect(distinct, dtype)
    if not bad:
        return []
    hits = pc.is_in(column, value_set=distinct.take(arrays.array(bad, pa.int64())))
    return pc.indices_nonzero(hits).to_pylist()


def _bisect(values, dtype: pa.DataType) -> list[int]:
    """Positions in ``values`` that fail to cast, by casting halves of failing ranges."""
    bad: list[int] = []
    offset = 0
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        todo = [(0, len(chunk))]
        while todo:
            start, length = todo.pop()
            try:
                pc.cast(chunk.slice(start, length), dtype, safe=True)
            except pa.ArrowInvalid:
                if length == 1:
                    bad.append(offset + start)
                else:
                    half = length // 2
                    todo.append((start + half, length - half))
                    todo.append((start, half))
        offset += len(chunk)
    return bad


@register("filter", example="filter: \"status == 'ok' and qty > 0\"", reads=_also(_expression_columns))
def filter_(table: pa.Table, spec: ExprText, ctx: StageContext) -> StageOutput:
    """Keep the rows where the expression is true (null counts as false)."""
    value = _evaluate(spec, table, None)
    if not _is_boolean(value.type):
        raise ExprError(f"the filter expression {spec!r} must give true/false, it gives "
                        f"{type_name(value.type)}")
    kept = _mask(value, table.num_rows)
    return StageOutput(table.filter(kept), kept=kept)


@register("derive", example="derive: {total: \"price * qty\"}", reads=_reads_derive)
def derive(table: pa.Table, spec: dict[str, DeriveText], ctx: StageContext) -> pa.Table:
    """Add or replace columns, computed by expressions in order."""
    for name, text in spec.items():
        value = _evaluate(text, table, name)
        table = _set_column(table, name, broadcast(value, table.num_rows))
    return table


@register("fill_null", example="fill_null: {discount: 0, country: unknown}", reads=_also(lambda spec: spec))
def fill_null(table: pa.Table, spec: dict[str, Literal_], ctx: StageContext) -> pa.Table:
    """Replace nulls in columns with a literal value of the column's type."""
    _require(table, spec, key=True)
    for name, value in spec.items():
        column = table.column(name)
        if pa.types.is_null(column.type):
            table = _set_column(table, name, pa.repeat(arrays.scalar(value), table.num_rows))
            continue
        scalar = _literal_scalar(value, column.type, "the fill value", name)
        table = _set_column(table, name, pc.fill_null(column, scalar))
    return table


@register("drop_nulls", example="drop_nulls: [id, ts] (or drop_nulls: all)", reads=_reads_drop_nulls)
def drop_nulls(table: pa.Table, spec: list[str] | Literal["all"] | None, ctx: StageContext) -> StageOutput:
    """Remove rows with a null in any of these columns (all columns for `all` or null)."""
    names = table.column_names if spec in (None, "all") else spec
    _require(table, names)
    keep = None
    for name in names:
        valid = table.column(name).is_valid()
        keep = valid if keep is None else pc.and_(keep, valid)
    kept = _mask(keep if keep is not None else arrays.scalar(True), table.num_rows)
    return StageOutput(table.filter(kept), kept=kept)


@register("validate", example="validate: {not_null: [id], range: {qty: {min: 0}}}",
          reads=_also(_validated_columns))
def validate(table: pa.Table, spec: ValidateSpec, ctx: StageContext) -> StageOutput:
    """Reject the rows that break a rule; each rejected row gets the reason of its first rule."""
    n = table.num_rows
    rules: list[tuple[Any, Any]] = []   # (fail mask, reason for the rows given by their indices)

    def const(text):
        return lambda idx: pa.repeat(arrays.scalar(text), len(idx))

    _require(table, spec.not_null)
    for name in spec.not_null:
        rules.append((table.column(name).is_null(), const(f"not_null: {name} is null")))

    for name, rule in spec.range.items():
        key = f"range.{name}"
        _require(table, [name], key)
        column = table.column(name)
        for bound, op, word in ((rule.min, pc.less, "below the minimum"),
                                (rule.max, pc.greater, "above the maximum")):
            if bound is None:
                continue
            scalar = _bound(bound, column.type, word.split()[-1], key)
            try:
                fails = op(column, scalar)
            except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise ExprError(f"cannot compare column {name!r} ({type_name(column.type)}) with "
                                f"{bound!r}", key=key) from None
            rules.append((fails, _reason_with_value(column, f"range: {name} = ", f" is {word} {bound}")))

    for name, values in spec.allowed.items():
        key = f"allowed.{name}"
        _require(table, [name], key)
        column = table.column(name)
        try:
            value_set = arrays.array(values)
            if value_set.type != column.type:
                value_set = pc.cast(value_set, column.type, safe=True)
            found = pc.is_in(column, value_set=value_set)
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise ExprError(f"the allowed values {values!r} do not fit column {name!r} "
                            f"({type_name(column.type)}): {e}", key=key) from None
        fails = pc.and_(pc.invert(found), column.is_valid())
        shown = repr(values) if len(repr(values)) <= 80 else repr(values)[:77] + "...]"
        rules.append((fails, _reason_with_value(column, f"allowed: {name} = ", f" is not one of {shown}")))

    for name, pattern in spec.regex.items():
        key = f"regex.{name}"
        _require(table, [name], key)
        column = table.column(name)
        text = column
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            try:
                text = pc.cast(column, pa.string())
            except pa.ArrowException:
                raise ExprError(f"regex rule needs text, column {name!r} is {type_name(column.type)}",
                                key=key) from None
        matches = pc.match_substring_regex(text, pattern=f"^(?:{pattern})$")
        fails = pc.and_(pc.invert(matches), column.is_valid())
        rules.append((fails, _reason_with_value(column, f"regex: {name} = ", f" does not match {pattern!r}")))

    for name, expression in spec.expr.items():
        key = f"expr.{name}"
        value = _evaluate(expression, table, key)
        if not _is_boolean(value.type):
            raise ExprError(f"the rule expression {expression!r} must give true/false, it gives "
                            f"{type_name(value.type)}", key=key)
        rules.append((pc.invert(_mask(value, n)), const(f"expr: {name} is not true ({expression})")))

    masks = [_mask(fails, n) for fails, _ in rules]
    any_fail = masks[0]
    for mask in masks[1:]:
        any_fail = pc.or_(any_fail, mask)
    if not pc.any(any_fail).as_py():
        return StageOutput(table)
    idx = pc.indices_nonzero(any_fail)
    reason = pa.nulls(len(idx), pa.string())
    for mask, (_, why) in reversed(list(zip(masks, rules))):
        reason = pc.if_else(pc.take(mask, idx), why(idx), reason)
    kept = pc.invert(any_fail)
    rejected = pa.table({"row": pc.cast(idx, pa.int64()), "reason": reason}, schema=STAGE_REJECTS_SCHEMA)
    return StageOutput(table.filter(kept), kept=kept, rejected=rejected)


def _reason_with_value(column, prefix: str, suffix: str):
    def why(idx):
        values = pc.take(column, idx)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return _with_value(prefix, values, suffix)
    return why
