"""Codes written with leading zeros (zip codes, product codes, months) keep their zeros through a run.

The reference is DuckDB's CSV reader, which infers such a column as text, and the values Python's
``csv`` module reads from the file.
"""

from __future__ import annotations

import csv

import pyarrow as pa
import pytest

from tests.helpers import basic_job, read_output, run_cli, write_job

duckdb = pytest.importorskip("duckdb")


def test_codes_with_leading_zeros_stay_text_as_duckdb_reads_them(tmp_path, capsys):
    rows = [["zip", "sku", "qty", "price"]] + [
        [f"{(i * 7919) % 100000:05d}", f"{i % 120:03d}", str(i % 9), f"{i % 50}.{i % 10}5"] for i in range(2000)]
    path = tmp_path / "in.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    code, _out, err = run_cli("run", write_job(tmp_path, basic_job("in.csv")), "--no-progress", capsys=capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out")
    reference = duckdb.sql(f"select * from read_csv('{path}')")
    duck_types = dict(zip(reference.columns, [str(t) for t in reference.types]))
    assert duck_types["zip"] == duck_types["sku"] == "VARCHAR"
    assert got.schema.field("zip").type == got.schema.field("sku").type == pa.string()
    assert got.schema.field("qty").type == pa.int64() and got.schema.field("price").type == pa.float64()
    with open(path, newline="") as fh:
        records = list(csv.DictReader(fh))
    assert got.column("zip").to_pylist() == [r["zip"] for r in records]
    assert got.column("sku").to_pylist() == [r["sku"] for r in records]
    assert got.column("zip").to_pylist() == [r[0] for r in reference.select("zip").fetchall()]


def test_hive_partition_values_with_leading_zeros_stay_text(tmp_path, capsys):
    for month in ("01", "02", "11"):
        folder = tmp_path / "in" / "year=2026" / f"month={month}"
        folder.mkdir(parents=True)
        (folder / "part.csv").write_text("id\n1\n2\n")
    code, _out, err = run_cli("run", write_job(tmp_path, basic_job("in/*/*/*.csv")), "--no-progress",
                              capsys=capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out")
    reference = duckdb.sql(f"select id, year, month from read_csv('{tmp_path}/in/*/*/*.csv', hive_partitioning=true) "
                           f"order by month, id")
    assert [str(t) for t in reference.types] == ["BIGINT", "BIGINT", "VARCHAR"]
    assert got.schema.field("month").type == pa.string() and got.schema.field("year").type == pa.int64()
    rows = sorted(zip(*(got.column(c).to_pylist() for c in ("id", "year", "month"))), key=lambda r: (r[2], r[0]))
    assert rows == reference.fetchall()
