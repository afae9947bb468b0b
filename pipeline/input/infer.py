"""Column types from a sample of the input, decided once at plan time.

Every chunk is then read with the same schema, so the writer never sees a type clash and a value
that does not fit its column is a bad row, never a silent null or a silent change of type.

A column gets the narrowest type that at least 99.9 % of its sampled non-null values fit, and at
least all but one when there are 100 or more (one stray value must not turn a numeric column into
text); the values that do not fit become bad rows when the chunk is read. ``input.schema`` pins any column's type.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

TOLERANCE = 0.001

_INT = r"^\s*-?\d{1,18}\s*$"
_FLOAT = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?inf\s*$"
_BOOL = r"^(?i:true|false)$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TS = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$"
_TS_FRACTION = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$"
_TS_ZONE = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$"

CANDIDATES: list[tuple[pa.DataType, str]] = [
    (pa.int64(), _INT),
    (pa.float64(), _FLOAT),
    (pa.bool_(), _BOOL),
    (pa.date32(), _DATE),
    (pa.timestamp("s"), _TS),
    (pa.timestamp("us"), _TS_FRACTION),
    (pa.timestamp("us", tz="UTC"), _TS_ZONE),
]


def infer_column(values: pa.ChunkedArray | pa.Array) -> pa.DataType:
    """The narrowest candidate type for a column of sampled strings (string if none fits)."""
    values = values.drop_null() if hasattr(values, "drop_null") else values
    n = len(values)
    if n == 0:
        return pa.string()
    # one stray value in a hundred or more is a bad row, not a reason to make the column text
    allowed_misses = max(int(n * TOLERANCE), 1 if n >= 100 else 0)
    for dtype, pattern in CANDIDATES:
        matched = pc.sum(pc.match_substring_regex(values, pattern)).as_py() or 0
        if n - matched <= allowed_misses:
            return dtype
    return pa.string()


def unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The common type of one column inferred differently in two files."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if (pa.types.is_integer(a) and pa.types.is_floating(b)) or (pa.types.is_floating(a) and pa.types.is_integer(b)):
        return pa.float64()
    temporal = (pa.types.is_timestamp, pa.types.is_date)
    if any(t(a) for t in temporal) and any(t(b) for t in temporal):
        tz = getattr(a, "tz", None) or getattr(b, "tz", None)
        tz_differs = (getattr(a, "tz", None) is None) != (getattr(b, "tz", None) is None)
        if tz_differs and not (pa.types.is_date(a) or pa.types.is_date(b)):
            return pa.string()
        units = [t.unit for t in (a, b) if pa.types.is_timestamp(t)]
        unit = "us" if "us" in units or "ns" in units or "ms" in units else "s"
        return pa.timestamp(unit, tz=tz)
    return pa.string()


def nullable_to_string(dtype: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_null(dtype) else dtype
