"""Type names as users write them in the job file (``int64``, ``timestamp[s]``, ``decimal(10,2)``), and
which types may be cast to which when chunks or runs of one output meet (``widens``)."""

from __future__ import annotations

import re

import pyarrow as pa

_SIMPLE = {
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "int": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "float": pa.float64(),
    "double": pa.float64(),
    "string": pa.string(),
    "str": pa.string(),
    "utf8": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "date32": pa.date32(),
    "date64": pa.date64(),
    "time32[s]": pa.time32("s"),
    "time32[ms]": pa.time32("ms"),
    "time64[us]": pa.time64("us"),
    "time64[ns]": pa.time64("ns"),
    "timestamp": pa.timestamp("us"),
}
# Arrow's own names that type_name prints, accepted back but not listed in messages
_ARROW_NAMES = {"date32[day]": pa.date32(), "date64[ms]": pa.date64()}
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:\s*,\s*(?:tz\s*=\s*)?([A-Za-z0-9_/+\-:]+))?\]$")
_DECIMAL = re.compile(r"^decimal(?:128)?\(\s*(\d+)\s*,\s*(\d+)\s*\)$")

TYPE_NAMES = sorted(_SIMPLE) + ["timestamp[s|ms|us|ns]", "timestamp[us, UTC]", "decimal(P,S)"]


def parse_type(name: str) -> pa.DataType:
    """Return the Arrow type for a user-facing type name; ValueError names the accepted forms."""
    text = str(name).strip().lower() if not str(name).strip().startswith("timestamp") else str(name).strip()
    if text in _SIMPLE:
        return _SIMPLE[text]
    if text in _ARROW_NAMES:
        return _ARROW_NAMES[text]
    m = _TIMESTAMP.match(text)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    m = _DECIMAL.match(text)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2))
        if not 1 <= precision <= 38 or scale > precision:
            raise ValueError(f"decimal precision must be 1..38 and scale <= precision, got {name!r}")
        return pa.decimal128(precision, scale)
    raise ValueError(f"unknown type {name!r}; expected one of: {', '.join(TYPE_NAMES)}")


def type_name(dtype: pa.DataType) -> str:
    """The name users write for an Arrow type: ``parse_type(type_name(t)) == t`` for every type
    parse_type returns (Arrow's "float" is float32, the job file's "float" is float64)."""
    if pa.types.is_float16(dtype):
        return "float16"
    if pa.types.is_float32(dtype):
        return "float32"
    if pa.types.is_timestamp(dtype):
        return f"timestamp[{dtype.unit}, {dtype.tz}]" if dtype.tz else f"timestamp[{dtype.unit}]"
    if pa.types.is_decimal(dtype):
        return f"decimal({dtype.precision},{dtype.scale})"
    if pa.types.is_boolean(dtype):
        return "bool"
    return str(dtype)


# ------------------------------------------------------------------------------------ types that meet


def widens(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether values of ``src`` may be cast to ``dst`` (checked value by value, ``safe=True``).

    Null to anything; integers to wider integers or floats; floats to floats; string, binary and
    their large forms; timestamps across units; decimals; a dictionary to its value type.
    Anything else (text to numbers, floats to integers) is a change of type, not a widening.
    """
    t = pa.types
    if src == dst or t.is_null(src):
        return True
    if t.is_dictionary(src):
        return widens(src.value_type, dst)
    if t.is_integer(src):
        return t.is_integer(dst) or t.is_floating(dst) or t.is_decimal(dst)
    if t.is_floating(src):
        return t.is_floating(dst)
    if (t.is_string(src) or t.is_large_string(src)) and (t.is_string(dst) or t.is_large_string(dst)):
        return True
    if (t.is_binary(src) or t.is_large_binary(src)) and (t.is_binary(dst) or t.is_large_binary(dst)):
        return True
    if t.is_timestamp(src) and t.is_timestamp(dst):
        return src.tz == dst.tz
    if t.is_decimal(src) and t.is_decimal(dst):
        return True
    return bool(t.is_date(src) and t.is_date(dst))
