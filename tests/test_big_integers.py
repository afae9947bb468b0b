"""Integers are never rounded: 19-digit IDs, unsigned 64-bit hashes and longer integers come out
exactly as Python's csv and json modules read them (a float64 would round anything past 2**53)."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job

IDS = ["0", "9223372036854775807", "-9223372036854775808", "1234567890123456789", "9007199254740993"]
HASHES = ["18446744073709551615", "9223372036854775808", "-" + "9" * 38, "12345678901234567890", "1"]
LONG = ["1" * 39, "-" + "2" * 45, "3", "4" * 60, "5"]


def _run(tmp_path, name: str, **input_section) -> pa.Table:
    job = basic_job(name, input=input_section)
    code, _, err = run_cli("run", str(write_job(tmp_path, job)), "--no-progress")
    assert code == 0, err
    return read_output(tmp_path / "out")


def _check(table: pa.Table, ids: list[int], hashes: list[int], longs: list[str]) -> None:
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("hash").type == pa.decimal128(38, 0)
    assert table.schema.field("long").type == pa.string()
    rows = sorted(table.to_pylist(), key=lambda r: r["n"])
    assert [r["id"] for r in rows] == ids
    assert [int(r["hash"]) for r in rows] == hashes and all(isinstance(r["hash"], Decimal) for r in rows)
    assert [r["long"] for r in rows] == longs


def test_csv_integers_come_out_exactly(tmp_path):
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["n", "id", "hash", "long"])
    w.writerows(zip(range(len(IDS)), IDS, HASHES, LONG))
    (tmp_path / "in.csv").write_text(text.getvalue())
    expected = list(csv.DictReader(io.StringIO(text.getvalue())))   # the reference: Python's csv, then int()
    table = _run(tmp_path, "in.csv")
    _check(table, [int(r["id"]) for r in expected], [int(r["hash"]) for r in expected],
           [r["long"] for r in expected])


def test_json_lines_integers_come_out_exactly(tmp_path):
    lines = [json.dumps({"n": i, "id": int(a), "hash": int(b), "long": c})
             for i, (a, b, c) in enumerate(zip(IDS, HASHES, LONG))]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    expected = [json.loads(line) for line in lines]    # the reference: Python's json (exact integers)
    table = _run(tmp_path, "in.jsonl")
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("hash").type == pa.decimal128(38, 0)
    rows = sorted(table.to_pylist(), key=lambda r: r["n"])
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert [int(r["hash"]) for r in rows] == [e["hash"] for e in expected]


def test_files_with_int64_and_larger_integers_widen_to_exact_decimals(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("n,v\n0,1\n1,9223372036854775807\n")
    (tmp_path / "in" / "b.csv").write_text("n,v\n2,18446744073709551615\n3,-5\n")
    table = _run(tmp_path, "in/*.csv")
    assert table.schema.field("v").type == pa.decimal128(38, 0)
    got = [int(r["v"]) for r in sorted(table.to_pylist(), key=lambda r: r["n"])]
    assert got == [1, 9223372036854775807, 18446744073709551615, -5]


@pytest.mark.parametrize("value", ["9223372036854775808", "-9223372036854775809"])
def test_an_integer_past_int64_in_an_int64_column_is_a_bad_row_naming_the_column(tmp_path, value):
    """The sample (the first rows) says int64; a later value past its range is rejected, not rounded."""
    rows = [str(i) for i in range(300)] + [value] + ["7"]
    (tmp_path / "in.csv").write_text("v\n" + "\n".join(rows) + "\n")
    job = basic_job("in.csv", input={"sample_bytes": "1KiB"}, run={"on_bad_rows": "quarantine"})
    code, _, err = run_cli("run", str(write_job(tmp_path, job)), "--no-progress")
    assert code == 0, err
    m = manifest_of(tmp_path / "out")
    assert m["counts"]["rows_rejected"] == 1 and m["counts"]["rows_written"] == 301
    rejects = pq.read_table(tmp_path / "out" / m["rejects"]["files"][0]["path"]).to_pylist()
    assert rejects[0]["raw"] == value and "'v'" in rejects[0]["reason"] and rejects[0]["line"] == 302
    assert read_output(tmp_path / "out").column("v").type == pa.int64()
