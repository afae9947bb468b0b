"""`mode: append` against an output of another schema: `output.on_schema_change` (issue 11 case 3).

What plain readers of the directory see is checked with pyarrow.dataset, pandas and DuckDB."""

from __future__ import annotations

import hashlib
import os

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tests.helpers import basic_job, manifest_of, run_cli, write_job


def _tree(path) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(path):
        for n in names:
            full = os.path.join(root, n)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _two_runs(tmp_path, capsys, first_stages, second_stages, policy=None, executor="local"):
    (tmp_path / "a.csv").write_text("id,price,qty\n1,2.5,3\n2,4.0,1\n")
    (tmp_path / "b.csv").write_text("id,price,qty\n3,1.5,2\n4,3.0,5\n")
    out = tmp_path / "out"
    job = basic_job(str(tmp_path / "a.csv"), out=str(out), stages=first_stages, output={"mode": "append"},
                    run={"executor": executor})
    if executor == "dask":
        job["run"]["workers"] = 2
    assert run_cli("run", write_job(tmp_path, job), capsys=capsys)[0] == 0
    before = _tree(out)
    job["input"]["paths"] = [str(tmp_path / "b.csv")]
    job["stages"] = second_stages
    if policy:
        job["output"]["on_schema_change"] = policy
    cfg = write_job(tmp_path, job)
    return cfg, out, before


def _plain_reads(out) -> list[pd.DataFrame]:
    """The directory as pyarrow.dataset, pandas and DuckDB read it, with no help from the manifest."""
    by_pyarrow = ds.dataset(str(out), format="parquet").to_table().to_pandas()
    by_pandas = pd.read_parquet(out)
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{out}/*.parquet')").df()
    return [by_pyarrow, by_pandas, by_duckdb]


@pytest.mark.parametrize("command", ["run", "validate", "dry-run"])
def test_fail_refuses_a_new_column_and_leaves_the_output(tmp_path, capsys, command):
    cfg, out, before = _two_runs(tmp_path, capsys, [], [{"derive": {"total": "price * qty"}}])
    args = ["run", cfg, "--dry-run"] if command == "dry-run" else [command, cfg]
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 65, err
    assert "total (double)" in err and "on_schema_change" in err
    assert _tree(out) == before


def test_fail_refuses_a_dropped_column(tmp_path, capsys):
    cfg, out, before = _two_runs(tmp_path, capsys, [], [{"drop": ["qty"]}])
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 65, err
    assert "qty (int64)" in err and "missing" in err
    assert _tree(out) == before


def test_a_changed_type_is_refused_even_with_add_columns(tmp_path, capsys):
    cfg, out, before = _two_runs(tmp_path, capsys, [], [{"cast": {"price": "string"}}], policy="add_columns")
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 65, err
    assert "'price' is double in the output, string now" in err
    assert _tree(out) == before


def test_a_type_that_widens_joins_the_output(tmp_path, capsys):
    """int64 rows appended to a double column take the output's type: not a change of schema."""
    cfg, out, _ = _two_runs(tmp_path, capsys, [{"cast": {"qty": "float64"}}], [])
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    for df in _plain_reads(out):
        assert sorted(df["qty"].tolist()) == [1.0, 2.0, 3.0, 5.0]


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_add_columns_shows_every_column_to_plain_readers(tmp_path, capsys, executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    cfg, out, _ = _two_runs(tmp_path, capsys, [], [{"derive": {"total": "price * qty"}}],
                            policy="add_columns", executor=executor)
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    expected = {1: None, 2: None, 3: 3.0, 4: 15.0}
    for df in _plain_reads(out):
        assert list(df.columns) == ["id", "price", "qty", "total"]
        got = {int(i): (None if pd.isna(t) else float(t)) for i, t in zip(df["id"], df["total"])}
        assert got == expected
    manifest = manifest_of(out)
    assert [c["name"] for c in manifest["schema"]] == ["id", "price", "qty", "total"]
    assert sum(f["rows"] for f in manifest["files"]) == 4


def test_add_columns_keeps_a_dropped_column_as_nulls(tmp_path, capsys):
    cfg, out, _ = _two_runs(tmp_path, capsys, [], [{"drop": ["qty"]}], policy="add_columns")
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    for df in _plain_reads(out):
        got = {int(i): (None if pd.isna(q) else int(q)) for i, q in zip(df["id"], df["qty"])}
        assert got == {1: 3, 2: 1, 3: None, 4: None}
    schema = ds.dataset(str(out), format="parquet").schema
    assert schema.field("qty").type == pa.int64()
