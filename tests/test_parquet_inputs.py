"""Parquet inputs whose files type a column differently: every value kept, exactly, in one type.

The reference is pyarrow: each file's values as Python values. Where no type holds both files'
values (a nested value and a flat one), the run is exit 65 naming the column and both files.
"""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dtypes import type_name
from pipeline.input.infer import unify
from tests.helpers import basic_job, read_output, run_cli, write_job

D = decimal.Decimal


def _run(tmp_path, capsys):
    job = basic_job("*.parquet", run={"workers": 2, "on_bad_rows": "quarantine"})
    return run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)


def _files(tmp_path, *columns: pa.Array) -> list[pa.ChunkedArray]:
    """One file per column; each file's column as pyarrow reads it back."""
    read = []
    for i, column in enumerate(columns):
        pq.write_table(pa.table({"x": column, "i": pa.array([i] * len(column))}), tmp_path / f"{i}.parquet")
        read.append(pq.read_table(tmp_path / f"{i}.parquet").column("x"))
    return read


@pytest.mark.parametrize("a, b, want", [
    (pa.array([-5], pa.int8()), pa.array([255], pa.uint8()), pa.int16()),
    (pa.array([-2**31], pa.int32()), pa.array([2**40], pa.int64()), pa.int64()),
    (pa.array([7], pa.int32()), pa.array([2**32 - 1], pa.uint32()), pa.int64()),
    (pa.array([-1], pa.int64()), pa.array([2**64 - 1], pa.uint64()), pa.decimal128(38, 0)),
    (pa.array([D("1.25")], pa.decimal128(10, 2)), pa.array([2**40], pa.int64()), pa.decimal128(38, 2)),
    (pa.array([1], pa.timestamp("ns")), pa.array([1], pa.timestamp("s")), pa.timestamp("ns")),
    (pa.array([dt.date(2026, 1, 2)]), pa.array([1], pa.timestamp("ns")), pa.timestamp("ns")),
    (pa.array(["a", "b"]).dictionary_encode(), pa.array(["c"]).dictionary_encode(), pa.string()),
    (pa.array(["a", "b"]).dictionary_encode(), pa.nulls(2), pa.string()),
])
def test_files_typing_a_column_differently_keep_every_value_exactly(tmp_path, capsys, a, b, want):
    read = _files(tmp_path, a, b)
    code, _out, err = _run(tmp_path, capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out").sort_by("i")
    assert got.schema.field("x").type == want
    # the reference: pyarrow's own safe cast of each file's values (it refuses any that would change)
    assert got.column("x").to_pylist() == [v for column in read for v in column.cast(want).to_pylist()]
    assert not (tmp_path / "out" / "_rejects").exists()
    assert unify(a.type if not pa.types.is_dictionary(a.type) else a.type.value_type,
                 b.type if not pa.types.is_dictionary(b.type) else b.type.value_type) in (want, pa.null())


@pytest.mark.parametrize("a, b", [
    (pa.array([{"k": 1}]), pa.array([1])),
    (pa.array([[1]]), pa.array(["s"])),
    (pa.array([[1]]), pa.array([["s"]])),
])
def test_a_nested_column_and_another_type_are_refused_naming_both_files(tmp_path, capsys, a, b):
    _files(tmp_path, a, b)
    code, _out, err = _run(tmp_path, capsys)
    assert code == 65, err
    assert f"{tmp_path / '1.parquet'}: column 'x' is" in err and f"in {tmp_path / '0.parquet'}: no type holds both" in err
    assert not (tmp_path / "out").exists()


def test_one_file_of_a_dictionary_column_with_a_dictionary_per_row_group(tmp_path, capsys):
    rows = [f"v{i % 300}" for i in range(3000)]
    pq.write_table(pa.table({"x": pa.array(rows).dictionary_encode(), "i": pa.array(range(3000))}),
                   tmp_path / "0.parquet", row_group_size=700)
    code, _out, err = _run(tmp_path, capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out").sort_by("i")
    assert got.schema.field("x").type == pa.string() and got.column("x").to_pylist() == rows


@pytest.mark.parametrize("a, b", [
    # seconds and nanoseconds widen to nanoseconds, which end in 2262
    (pa.array([dt.datetime(3000, 1, 1), dt.datetime(2020, 1, 1)], pa.timestamp("s")), pa.array([1], pa.timestamp("ns"))),
    # a date before 1677 does not fit nanoseconds either
    (pa.array([dt.date(1500, 1, 2), dt.date(2026, 1, 2)]), pa.array([1], pa.timestamp("ns"))),
])
def test_a_value_the_widened_type_cannot_hold_is_a_bad_row_naming_its_column(tmp_path, capsys, a, b):
    read = _files(tmp_path, a, b)
    code, _out, err = _run(tmp_path, capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out").sort_by("i")
    want = pa.timestamp("ns")
    # the reference: pyarrow's safe cast of each value alone; those it refuses are the rejected rows
    fits = []
    for column in read:
        for v in column.to_pylist():
            try:
                fits.append(pa.array([v], column.type).cast(want).to_pylist()[0])
            except pa.ArrowInvalid:
                pass
    assert got.column("x").to_pylist() == fits and len(fits) == 2
    rejects = pq.read_table(tmp_path / "out" / "_rejects")
    assert rejects.column("file").to_pylist() == [str(tmp_path / "0.parquet")]
    assert rejects.column("line").to_pylist() == [1]
    reason = rejects.column("reason")[0].as_py()
    assert reason.startswith(f"column 'x': cannot convert {type_name(read[0].type)} to timestamp[ns], "
                             "the column's type in this run"), reason
    assert "out of bounds" in reason, reason
