"""Column types from a sample of the input, decided once at plan time.

Every chunk is then read with the same schema, so the writer never sees a type clash and a value
that does not fit its column is a bad row, never a silent null or a silent change of type.

A column gets the narrowest type that at least 99.9 % of its sampled non-null values fit, and at
least all but one when there are 100 or more (one stray value must not turn a numeric column into
text); the values that do not fit become bad rows when the chunk is read. ``input.schema`` pins any column's type.

A number written with a leading zero (``007``, ``00501``, ``-01``, ``00.5``) makes its column text, with no
tolerance: as a number it would lose its zeros without a bad row to tell.

Integers are never read as floats, which would round them past 2**53: a column of integers that fit
int64 (up to 19 digits) is int64; one with larger integers, up to 38 digits, is ``decimal128(38, 0)``,
exact (as Spark infers them); beyond that, text.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import arrays

TOLERANCE = 0.001

_INT = r"^\s*-?\d{1,19}\s*$"           # and within int64's range: see _fits_int64
_BIG_INT = r"^\s*-?\d{1,38}\s*$"
_LONGER_INT = r"^\s*[+-]?\d{39,}\s*$"
_NINETEEN_DIGITS = r"\d{19}"
INT64_MAX = "9223372036854775807"
BIG_INT = pa.decimal128(38, 0)
_FLOAT = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?inf\s*$"
_LEADING_ZERO = r"^\s*[+-]?0\d"      # 007, 00501, -01, 00.5: a code, whose zeros a number would drop
_BOOL = r"^(?i:true|false)$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TS = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$"
_TS_FRACTION = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$"
_TS_ZONE = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$"

CANDIDATES: list[tuple[pa.DataType, str]] = [
    (pa.int64(), _INT),
    (BIG_INT, _BIG_INT),
    (pa.float64(), _FLOAT),
    (pa.bool_(), _BOOL),
    (pa.date32(), _DATE),
    (pa.timestamp("s"), _TS),
    (pa.timestamp("us"), _TS_FRACTION),
    (pa.timestamp("us", tz="UTC"), _TS_ZONE),
]

NUMBERS = (pa.int64(), BIG_INT, pa.float64())


def infer_column(values: pa.ChunkedArray | pa.Array, counts: pa.Array | None = None) -> pa.DataType:
    """The narrowest candidate type for a column of sampled strings (string if none fits).

    ``counts``: how many times each of ``values`` (then distinct, without nulls) occurs. Without
    them, the column's first values rule out the candidates that miss too many there already (most
    text columns end here), and the values are counted only when they repeat: a sample's columns
    mostly repeat a few values (a country, a status), and each candidate's pattern then runs over
    those few, where a column of ids is matched as it is."""
    if counts is None:
        values = values.drop_null() if hasattr(values, "drop_null") else values
        n = len(values)
        allowed = _allowed_misses(n)
        head = values.slice(0, _HEAD)
        # each of the first values counted once: a candidate that misses more than allowed there
        # misses more than allowed in all
        alive = [(dtype, pattern) for dtype, pattern in CANDIDATES
                 if n and _misses(head, None, dtype, pattern) <= allowed]
        if not alive:
            return pa.string()
        if pc.count_distinct(head).as_py() * 2 <= len(head):
            tally = pc.value_counts(values)
            values, counts = tally.field(0), tally.field(1)
        return _first_fit(values, counts, n, alive)
    n = pc.sum(counts).as_py() or 0
    if n == 0:
        return pa.string()
    # a candidate that misses more than allowed among the first values misses more than allowed in all
    head, head_counts = values.slice(0, _HEAD), counts.slice(0, _HEAD)
    alive = [(dtype, pattern) for dtype, pattern in CANDIDATES
             if _misses(head, head_counts, dtype, pattern) <= _allowed_misses(n)]
    return _first_fit(values, counts, n, alive)


_HEAD = 64


def _allowed_misses(n: int) -> int:
    """One stray value in a hundred or more is a bad row, not a reason to make the column text."""
    return max(int(n * TOLERANCE), 1 if n >= 100 else 0)


def _first_fit(values: pa.Array, counts: pa.Array | None, n: int,
               candidates: list[tuple[pa.DataType, str]]) -> pa.DataType:
    """The first of ``candidates`` that all of ``values`` but the allowed misses fit (each value
    occurring ``counts[i]`` times, or once), or string."""
    allowed = _allowed_misses(n)
    # a number written with a leading zero would read as a number without it, and no bad row would
    # tell: one such value makes the column text (as DuckDB infers it)
    coded = any(dtype in NUMBERS for dtype, _ in candidates) and \
        pc.any(pc.match_substring_regex(values, _LEADING_ZERO)).as_py()
    for dtype, pattern in candidates:
        if coded and dtype in NUMBERS:
            continue
        if _misses(values, counts, dtype, pattern) <= allowed:
            return dtype
    return pa.string()


def _misses(values: pa.Array, counts: pa.Array | None, dtype: pa.DataType, pattern: str) -> int:
    """How many of the sampled values (each ``values[i]`` occurring ``counts[i]`` times, or once
    without ``counts``) do not fit."""
    fits = pc.match_substring_regex(values, pattern)
    if dtype == pa.int64() and pc.any(pc.match_substring_regex(values, _NINETEEN_DIGITS)).as_py():
        fits = pc.and_(fits, _fits_int64(values))   # up to 18 digits, any integer fits
    elif dtype == pa.float64():   # an integer past 38 digits is text: a float would round it
        fits = pc.and_(fits, pc.invert(pc.match_substring_regex(values, _LONGER_INT)))
    if counts is None:
        return len(values) - (pc.sum(fits).as_py() or 0)
    return pc.sum(pc.if_else(fits, arrays.scalar(0, counts.type), counts)).as_py() or 0


def _fits_int64(values) -> pa.Array:
    """Per value: whether an integer of up to 19 digits is within int64's range (by its digits: two
    digit strings of one length compare as their numbers do)."""
    text = pc.utf8_trim_whitespace(values)
    negative = pc.starts_with(text, "-")
    digits = pc.if_else(negative, pc.utf8_slice_codeunits(text, 1), text)
    limit = pc.if_else(negative, arrays.scalar(INT64_MAX[:-1] + "8", pa.string()),
                       arrays.scalar(INT64_MAX, pa.string()))
    shorter = pc.less(pc.utf8_length(digits), arrays.scalar(len(INT64_MAX), pa.int32()))
    return pc.or_(shorter, pc.less_equal(digits, limit))


def exact_integers(dtype: pa.DataType, read_as: Callable[[pa.DataType], pa.ChunkedArray | None]) -> pa.DataType:
    """A JSON column that pyarrow typed double although its numbers are integers beyond int64
    (pyarrow reads them as doubles, rounded): ``BIG_INT`` when the sample reads exactly as one.
    ``read_as(type)`` is the column's sample read as that type, None if it does not read so."""
    if not pa.types.is_floating(dtype):
        return dtype
    column = read_as(BIG_INT)
    if column is None:
        return dtype
    try:
        pc.cast(column, pa.int64())   # every value fits int64: a float column of whole numbers
    except pa.ArrowInvalid:
        return BIG_INT
    return dtype


def unify(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The common type of one column inferred differently in two files."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return _common_integer(a, b)
    numeric = (pa.types.is_integer, pa.types.is_decimal, pa.types.is_floating)
    if any(t(a) for t in numeric) and any(t(b) for t in numeric):
        # integers and decimals stay exact (a decimal's digits after the point kept); with floats in
        # either file, the column is float64
        if pa.types.is_floating(a) or pa.types.is_floating(b):
            return pa.float64()
        decimals = [t for t in (a, b) if pa.types.is_decimal(t)]
        scale = max(t.scale for t in decimals)
        if any(t.precision > 38 for t in decimals):
            return pa.decimal256(76, scale)
        return pa.decimal128(38, scale)
    temporal = (pa.types.is_timestamp, pa.types.is_date)
    if any(t(a) for t in temporal) and any(t(b) for t in temporal):
        tz = getattr(a, "tz", None) or getattr(b, "tz", None)
        tz_differs = (getattr(a, "tz", None) is None) != (getattr(b, "tz", None) is None)
        if tz_differs and not (pa.types.is_date(a) or pa.types.is_date(b)):
            return pa.string()
        units = [t.unit for t in (a, b) if pa.types.is_timestamp(t)]
        unit = max(units, key=_UNITS.index)     # the finer unit holds the coarser one's values exactly
        return pa.timestamp(unit, tz=tz)
    return pa.string()


_UNITS = ["s", "ms", "us", "ns"]


def _common_integer(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The narrowest integer type that holds every value of both (int32 and int64: int64; uint32 and
    int32: int64), or ``BIG_INT`` where no integer type does (uint64 and any signed type)."""
    signed = [t.bit_width for t in (a, b) if pa.types.is_signed_integer(t)]
    unsigned = [t.bit_width for t in (a, b) if pa.types.is_unsigned_integer(t)]
    if not signed:
        return pa.from_numpy_dtype(f"uint{max(unsigned)}")
    need = max(signed + [2 * u for u in unsigned])   # an unsigned value needs a signed type twice as wide
    return pa.from_numpy_dtype(f"int{need}") if need <= 64 else BIG_INT


def decoded(dtype: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column's value type (a pandas categorical written to Parquet reads back
    as one): each row group has its own dictionary, which one Arrow column cannot hold, and the
    values are what the rows hold."""
    return dtype.value_type if pa.types.is_dictionary(dtype) else dtype


def has_text_form(dtype: pa.DataType) -> bool:
    """Whether values of ``dtype`` can be cast to text: nested ones (struct, list, map) cannot."""
    try:
        pa.nulls(0, dtype).cast(pa.string())     # no Python values: pyarrow would import pandas for them
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return False
    return True


def nullable_to_string(dtype: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_null(dtype) else dtype
