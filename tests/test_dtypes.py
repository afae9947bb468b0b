"""Type names of the job file against pyarrow's own aliases, and the round trip through type_name."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from pipeline.dtypes import TYPE_NAMES, parse_type, type_name

# names the job file shares with pyarrow.type_for_alias: both must mean the same type
SHARED_WITH_PYARROW = [
    "bool", "boolean", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "double", "string", "str", "utf8", "large_string", "binary",
    "date32", "date64", "time32[s]", "time32[ms]", "time64[us]", "time64[ns]",
    "timestamp[s]", "timestamp[ms]", "timestamp[us]", "timestamp[ns]",
]

# names that are the job file's own, or mean something else than in pyarrow
OWN_NAMES = [
    ("int", pa.int64()),
    ("float", pa.float64()),            # pyarrow's alias "float" is float32
    ("date", pa.date32()),
    ("timestamp", pa.timestamp("us")),
    ("INT64", pa.int64()),
    ("  String ", pa.string()),
    ("timestamp[ms, UTC]", pa.timestamp("ms", tz="UTC")),
    ("timestamp[us,tz=Europe/Paris]", pa.timestamp("us", tz="Europe/Paris")),
    ("timestamp[s, +02:00]", pa.timestamp("s", tz="+02:00")),
    ("decimal(10,2)", pa.decimal128(10, 2)),
    ("decimal128( 38 , 0 )", pa.decimal128(38, 0)),
    ("decimal(1,1)", pa.decimal128(1, 1)),
    ("date32[day]", pa.date32()),       # Arrow's name, as type_name prints it
    ("date64[ms]", pa.date64()),
]

REFUSED = [
    ("int65", "unknown type 'int65'"),
    ("", "unknown type ''"),
    ("timestamp[m]", "unknown type"),
    ("timestamp[MS]", "unknown type"),
    ("decimal(39,2)", "precision must be 1..38"),
    ("decimal(0,0)", "precision must be 1..38"),
    ("decimal(5,6)", "scale <= precision"),
    ("decimal(10)", "unknown type"),
    ("list<int64>", "unknown type"),
]


@pytest.mark.parametrize("name", SHARED_WITH_PYARROW)
def test_shared_names_mean_what_pyarrow_means(name):
    assert parse_type(name) == pa.type_for_alias(name)


@pytest.mark.parametrize("name,expected", OWN_NAMES)
def test_own_names(name, expected):
    assert parse_type(name) == expected


@pytest.mark.parametrize("name,message", REFUSED)
def test_refused_names_say_what_is_accepted(name, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_type(name)
    if "unknown type" in message:
        assert "expected one of: " in str(info.value) and "decimal(P,S)" in str(info.value)


@pytest.mark.parametrize("name", [n for n in TYPE_NAMES if "|" not in n and "P,S" not in n]
                         + [name for name, _ in OWN_NAMES])
def test_type_name_reads_back_as_the_same_type(name):
    dtype = parse_type(name)
    assert parse_type(type_name(dtype)) == dtype, type_name(dtype)


@pytest.mark.parametrize("dtype,name", [
    (pa.bool_(), "bool"),
    (pa.float64(), "double"),
    (pa.float32(), "float32"),
    (pa.timestamp("s"), "timestamp[s]"),
    (pa.timestamp("ms", tz="UTC"), "timestamp[ms, UTC]"),
    (pa.decimal128(10, 2), "decimal(10,2)"),
])
def test_type_names_printed(dtype, name):
    assert type_name(dtype) == name
