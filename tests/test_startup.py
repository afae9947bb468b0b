"""Start-up: a job without a pandas stage never imports pandas (nor dask), in any of its processes.

pyarrow imports pandas the first time it is handed Python values (``pa.array([...])``,
``pa.scalar(1)``, a compute function called with a Python literal): about a quarter of a second of
every run. ``-X importtime`` is inherited by the forked worker and writer processes, so its report
on stderr covers the whole run.
"""

from __future__ import annotations

import re

import duckdb
import pytest

from tests.helpers import basic_job, read_output, run_subprocess, write_job

CSV = """id,ts,country,product,price,qty,discount,status,note
1,2026-11-01 10:00:00,DE,Notebook,3.5,2,0.1,ok,"red, large"
2,2026-11-02 11:00:00,FR,Lamp,13.5,1,,ok,plain
3,2026-11-02 12:00:00,US,Cable,5.0,0,,refunded,
4,2026-11-03 13:00:00,,Mug,9.0,3,0.2,ok,"the ""deluxe"" one"
5,2026-11-03 14:00:00,DE,Lamp,x,1,,ok,bad price
6,2026-11-04 15:00:00,SE,Cable,2.0,-1,,pending,
"""


def _imported(stderr: str) -> set[str]:
    """Top-level names of the modules in an ``-X importtime`` report."""
    names = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", line)
        if m:
            names.add(m.group(1).split(".")[0])
    return names


def _run(tmp_path, job: dict):
    (tmp_path / "in.csv").write_text(CSV)
    path = write_job(tmp_path, job)
    done = run_subprocess("run", path, "--no-progress", env={"PYTHONPROFILEIMPORTTIME": "1"}, cwd=tmp_path)
    modules = _imported(done.stderr)
    assert "pyarrow" in modules and "pipeline" in modules, done.stderr[-2000:]  # the report is there
    return done, modules


@pytest.mark.parametrize("workers", [1, 2])
def test_builtin_stages_never_import_pandas(tmp_path, workers):
    job = basic_job("in.csv", run={"workers": workers, "on_bad_rows": "quarantine"},
                    input={"schema": {"ts": "timestamp[s]"}},
                    output={"partition_by": ["country", "day"]},
                    stages=[
                        {"cast": {"price": "float64"}},
                        {"rename": {"note": "comment"}},
                        {"fill_null": {"discount": 0, "comment": "none"}},
                        {"validate": {"not_null": ["id"], "range": {"qty": {"min": 0}},
                                      "allowed": {"status": ["ok", "refunded"]}}},
                        {"filter": "status in ['ok'] and qty > 0 and price >= 1.5"},
                        {"derive": {"total": "round(price * qty * (1 - discount), 2)",
                                    "label": "concat(upper(product), '-', substring(comment, 0, 3))",
                                    "day": "strftime(ts, '%Y-%m-%d')",
                                    "flag": "if_else(qty > 1, 'many', 'one')"}},
                        {"drop_nulls": ["total"]},
                        {"select": ["id", "country", "day", "total", "label", "flag"]},
                    ])
    done, modules = _run(tmp_path, job)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pandas" not in modules
    assert not {"dask", "distributed", "s3fs", "botocore"} & modules
    got = read_output(tmp_path / "out", partitioning="hive").to_pylist()
    ref = duckdb.sql(f"""
        select id, round(try_cast(price as double) * qty * (1 - coalesce(discount, 0)), 2) as total
        from read_csv('{tmp_path}/in.csv', types={{'price': 'VARCHAR'}})
        where try_cast(price as double) is not null and qty >= 0 and status = 'ok' and qty > 0
          and try_cast(price as double) >= 1.5 order by id""").fetchall()
    assert sorted((r["id"], r["total"]) for r in got) == ref


def test_hive_partitioned_input_never_imports_pandas(tmp_path):
    """The partition columns' types come from the folder names, and every chunk fills them in: no step
    hands pyarrow Python values."""
    for day in ("2026-11-01", "2026-11-02"):
        for region in ("eu", "us"):
            folder = tmp_path / "in" / f"day={day}" / f"region={region}"
            folder.mkdir(parents=True)
            (folder / "part.csv").write_text(CSV)
    job = basic_job("in/*/*/*.csv", run={"workers": 2, "on_bad_rows": "quarantine"},
                    stages=[{"filter": "qty > 0"}, {"select": ["id", "day", "region", "qty"]}])
    done, modules = _run(tmp_path, job)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pandas" not in modules
    got = sorted((r["id"], str(r["day"]), r["region"], r["qty"]) for r in read_output(tmp_path / "out").to_pylist())
    ref = duckdb.sql(f"""select id, cast(day as varchar), region, qty from read_csv('{tmp_path}/in/*/*/*.csv',
                         hive_partitioning = true) where qty > 0 order by all""").fetchall()
    assert got == ref


def test_a_chunk_of_blank_lines_never_imports_pandas(tmp_path):
    """A file that ends in blank lines, cut so that its last chunks hold nothing else: those chunks
    are empty tables of the schema's types, built without handing pyarrow Python values."""
    (tmp_path / "in.csv").write_text(CSV + "\n" * 20_000)
    job = basic_job("in.csv", run={"workers": 2, "on_bad_rows": "quarantine"},
                    input={"schema": {"ts": "timestamp[s]"}, "chunk_bytes": "4KiB"},
                    stages=[{"select": ["id", "ts", "qty"]}])
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", env={"PYTHONPROFILEIMPORTTIME": "1"},
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pandas" not in _imported(done.stderr)
    got = sorted((r["id"], r["ts"], r["qty"]) for r in read_output(tmp_path / "out").to_pylist())
    ref = duckdb.sql(f"select id, ts, qty from read_csv('{tmp_path}/in.csv', types={{'ts': 'TIMESTAMP'}}) "
                     f"order by id").fetchall()
    assert got == ref


def test_a_pandas_stage_still_works_after_the_change(tmp_path):
    (tmp_path / "stage_mod.py").write_text(
        "def double(df):\n    df['qty2'] = df['qty'] * 2\n    return df\n")
    job = basic_job("in.csv", run={"on_bad_rows": "skip"},
                    stages=[{"python": {"function": "stage_mod:double", "api": "pandas"}},
                            {"select": ["id", "qty2"]}])
    done, modules = _run(tmp_path, job)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pandas" in modules
    got = sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"])
    assert [r["qty2"] for r in got] == [4, 2, 0, 6, 2, -2]


def test_start_up_objects_are_frozen_before_the_workers_fork(tmp_path):
    """Modules and the config are made without collector passes and then frozen, so a worker forked
    later finds them in the permanent generation (its collections never touch, and so never copy, them)."""
    (tmp_path / "stage_mod.py").write_text(
        "import gc\n"
        "def mark(df):\n"
        "    df['frozen'] = gc.get_freeze_count()\n"
        "    return df\n")
    job = basic_job("in.csv", run={"on_bad_rows": "skip", "workers": 2},
                    stages=[{"python": {"function": "stage_mod:mark"}}, {"select": ["id", "frozen"]}])
    (tmp_path / "in.csv").write_text(CSV)
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = read_output(tmp_path / "out").column("frozen").to_pylist()
    assert len(counts) == 6 and min(counts) > 10_000, counts


@pytest.mark.parametrize("given", [None, "4"])
def test_one_blas_thread_per_process_unless_the_user_says(tmp_path, monkeypatch, given):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    (tmp_path / "stage_mod.py").write_text(
        "import os\n"
        "def mark(df):\n"
        "    df['blas'] = os.environ.get('OPENBLAS_NUM_THREADS')\n"
        "    return df\n")
    job = basic_job("in.csv", run={"on_bad_rows": "skip"},
                    stages=[{"python": {"function": "stage_mod:mark"}}, {"select": ["id", "blas"]}])
    (tmp_path / "in.csv").write_text(CSV)
    env = {} if given is None else {"OPENBLAS_NUM_THREADS": given}
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(read_output(tmp_path / "out").column("blas").to_pylist()) == {given or "1"}
