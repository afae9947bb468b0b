"""finalize: dedupe, group-by and sort over the whole run against DuckDB on the same files,
with partition_by; scope dataset across incremental runs; kills during finalize; validate errors."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job
from tests.test_sql import assert_balanced, duck, rows_of, write_countries, write_sales

duckdb = pytest.importorskip("duckdb")


def two_days(tmp_path: Path, rows: int = 1500) -> tuple[Path, list[Path]]:
    """Two daily exports whose order ids overlap: the second day re-delivers 500 orders, later."""
    folder = tmp_path / "in"
    folder.mkdir()
    a = write_sales(folder / "sales-1.csv", rows, seed=1, first_id=1, day="2026-11-01")
    b = write_sales(folder / "sales-2.csv", rows, seed=2, first_id=rows - 499, day="2026-11-02")
    return folder, [a, b]


def sources(files: list[Path]) -> str:
    return "read_csv([" + ", ".join(f"'{f}'" for f in files) + "], types={'ts': 'TIMESTAMP_S'})"


def run_job(tmp_path: Path, job: dict, *args: str) -> None:
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress", *args)
    assert code == 0, err


DEDUPE = "SELECT * FROM {src} QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts DESC) = 1"


@pytest.mark.parametrize("partition_by", [[], ["country"]])
def test_finalize_dedupe_equals_duckdb(tmp_path, workers, partition_by):
    folder, files = two_days(tmp_path)
    job = basic_job(str(folder / "*.csv"), out=str(tmp_path / "out"),
                    input={"chunk_bytes": "8KiB", "schema": {"ts": "timestamp[s]"}},
                    output={"partition_by": partition_by, "row_group_rows": 100, "file_bytes": "16KiB"},
                    run={"workers": workers})
    job["finalize"] = {"dedupe": {"keys": ["id"], "keep_latest_by": "ts"}}
    run_job(tmp_path, job)
    got = read_output(tmp_path / "out", partitioning="hive" if partition_by else None)
    want = duck(DEDUPE.format(src=sources(files)))
    assert got.num_rows == want.num_rows == 2500
    assert rows_of(got.select(want.schema.names)) == rows_of(want)
    m = manifest_of(tmp_path / "out")
    assert_balanced(m)
    assert m["counts"]["rows_written"] == 3000              # the map's counts, as without finalize
    assert m["finalize"]["rows_in"] == 3000 and m["finalize"]["rows_out"] == 2500
    assert sum(f["rows"] for f in m["files"]) == 2500
    on_disk = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.parquet")}
    assert on_disk == {f["path"] for f in m["files"]}       # the staged parts were replaced
    if partition_by:
        assert all(f["path"].startswith("country=") for f in m["files"])
    else:
        assert len(m["files"]) > 1                            # file_bytes rolls files as without finalize


GROUP = ("SELECT country, status, count(*) AS orders, sum(qty) AS items, max(price) AS top "
         "FROM {src} WHERE qty > 0 GROUP BY country, status")


@pytest.mark.parametrize("partition_by", [[], ["country"]])
def test_finalize_group_by_equals_duckdb(tmp_path, partition_by):
    folder, files = two_days(tmp_path)
    job = basic_job(str(folder / "*.csv"), out=str(tmp_path / "out"), input={"chunk_bytes": "8KiB"},
                    output={"partition_by": partition_by}, run={"workers": 2})
    job["finalize"] = {"sql": GROUP.format(src="data"), "sort_by": ["country", "status"]}
    run_job(tmp_path, job)
    got = read_output(tmp_path / "out", partitioning="hive" if partition_by else None)
    want = duck(GROUP.format(src=sources(files)))
    assert rows_of(got.select(want.schema.names)) == rows_of(want)
    if not partition_by:
        keys = list(zip(got.column("country").to_pylist(), got.column("status").to_pylist()))
        assert keys == sorted(keys)                           # sort_by
    m = manifest_of(tmp_path / "out")
    assert m["finalize"]["rows_out"] == want.num_rows
    assert [c["name"] for c in m["schema"]] == want.schema.names


def test_finalize_joins_a_lookup(tmp_path):
    folder, files = two_days(tmp_path, rows=300)
    write_countries(tmp_path / "countries.csv")
    query = "SELECT c.region, count(*) AS n FROM {src} s JOIN {lk} c USING (country) GROUP BY c.region"
    job = basic_job(str(folder / "*.csv"), out=str(tmp_path / "out"))
    job["lookups"] = {"countries": {"path": "countries.csv"}}
    job["finalize"] = {"sql": query.format(src="data", lk="countries")}
    run_job(tmp_path, job)
    want = duck(query.format(src=sources(files), lk=f"read_csv('{tmp_path / 'countries.csv'}')"))
    assert rows_of(read_output(tmp_path / "out")) == rows_of(want)


def test_scope_dataset_leaves_one_row_per_key_after_incremental_runs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    a = write_sales(folder / "sales-1.csv", 1000, seed=1, first_id=1, day="2026-11-01")
    job = basic_job(str(folder / "*.csv"), out=str(tmp_path / "out"), input={"incremental": True},
                    output={"partition_by": ["country"]}, run={"state_dir": str(tmp_path / "state")})
    job["input"]["schema"] = {"ts": "timestamp[s]"}
    job["finalize"] = {"dedupe": {"keys": ["id"], "keep_latest_by": "ts"}, "scope": "dataset"}
    run_job(tmp_path, job)
    first = manifest_of(tmp_path / "out")
    b = write_sales(folder / "sales-2.csv", 1000, seed=2, first_id=501, day="2026-11-02")
    run_job(tmp_path, job)
    m = manifest_of(tmp_path / "out")
    got = read_output(tmp_path / "out", partitioning="hive")
    ids = got.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 1500
    want = duck(DEDUPE.format(src=sources([a, b])))
    assert rows_of(got.select(want.schema.names)) == rows_of(want)
    # the first run's parts were rewritten, not kept beside the new ones
    assert not {f["path"] for f in first["files"]} & {f["path"] for f in m["files"]}
    on_disk = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.parquet")}
    assert on_disk == {f["path"] for f in m["files"]}
    assert [r["run_id"] for r in m["runs"]] == [first["run_id"], m["run_id"]]
    assert m["finalize"]["scope"] == "dataset"
    assert m["finalize"]["rows_in"] == 2000 and m["finalize"]["rows_out"] == 1500
    assert m["counts"]["rows_read"] == 1000                 # this run's map read only the new file


def test_scope_run_keeps_earlier_appends(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_sales(folder / "sales-1.csv", 200, seed=1, first_id=1)
    job = basic_job(str(folder / "*.csv"), out=str(tmp_path / "out"), input={"incremental": True},
                    run={"state_dir": str(tmp_path / "state")})
    job["finalize"] = {"dedupe": {"keys": ["id"]}}
    run_job(tmp_path, job)
    write_sales(folder / "sales-2.csv", 200, seed=2, first_id=101)
    run_job(tmp_path, job)
    ids = read_output(tmp_path / "out").column("id").to_pylist()
    assert len(ids) == 400 and len(set(ids)) == 300          # each run deduped on its own rows only


def test_validate_reports_a_finalize_sql_error_with_key_and_line(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    path = tmp_path / "job.yaml"
    path.write_text(f"""name: t
input:
  paths: ["{data}"]
output: {{path: out, mode: overwrite}}
finalize:
  sql: "SELECT contry, count(*) FROM data GROUP BY ALL"
""")
    code, _, err = run_cli("validate", path, capsys=capsys)
    assert code == 78
    assert f"{path} line 6: finalize.sql" in err and "contry" in err


@pytest.mark.parametrize("finalize, words", [
    ({"sql": "SELECT * FROM read_parquet('/etc/*')"}, "disabled by configuration"),
    ({"sql": "COPY data TO 'x.csv'"}, "expected a SELECT query"),
    ({"dedupe": {"keys": ["nope"]}}, "nope"),
    ({"sort_by": ["nope"]}, "nope"),
    ({}, "expected sql, dedupe or sort_by"),
])
def test_finalize_config_errors(tmp_path, capsys, finalize, words):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"))
    job["finalize"] = finalize
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "finalize" in err and words in err, err


def test_partition_column_must_come_out_of_finalize(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), output={"partition_by": ["country"]})
    job["finalize"] = {"sql": "SELECT status, count(*) AS n FROM data GROUP BY status"}
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "output.partition_by" in err and "finalize" in err


def test_partition_column_may_be_made_by_finalize(tmp_path):
    data = write_sales(tmp_path / "sales.csv", 300)
    job = basic_job(str(data), out=str(tmp_path / "out"), output={"partition_by": ["day"]},
                    input={"schema": {"ts": "timestamp[s]"}})
    query = "SELECT CAST(ts AS DATE) AS day, count(*) AS n FROM {src} GROUP BY ALL"
    job["finalize"] = {"sql": query.format(src="data")}
    run_job(tmp_path, job)
    got = read_output(tmp_path / "out", partitioning="hive")
    want = duck(query.format(src=sources([data])))
    assert sorted(got.column("n").to_pylist()) == sorted(want.column("n").to_pylist())


def test_finalize_with_no_rows_writes_an_empty_readable_output(tmp_path):
    data = write_sales(tmp_path / "sales.csv", 50)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"filter": "qty > 1000"}])
    job["finalize"] = {"sql": "SELECT country, count(*) AS n FROM data GROUP BY country"}
    run_job(tmp_path, job)
    got = read_output(tmp_path / "out")
    assert got.num_rows == 0 and got.schema.names == ["country", "n"]


# ------------------------------------------------------------------------------ kills during finalize

# billions of hashes for each row (and none on validate's empty table)
SLOW = ("SELECT d.*, s.h FROM data d, LATERAL (SELECT sum(hash(i)) AS h FROM range(d.id * 0 + 3000000000) t(i)) s")


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_kill_during_finalize_leaves_the_previous_output(tmp_path, signum):
    data = write_sales(tmp_path / "sales.csv", 500)
    job = basic_job(str(data), out=str(tmp_path / "out"), run={"workers": 2})
    job["finalize"] = {"dedupe": {"keys": ["id"]}}
    path = write_job(tmp_path, job)
    run_job(tmp_path, job)
    before = tree(tmp_path / "out")
    job["finalize"] = {"sql": SLOW}
    write_job(tmp_path, job)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        seen.append(line)
        if "finalize:" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    else:
        pytest.fail("the run ended before finalize: " + "".join(seen))
    time.sleep(1.0)            # well inside the query
    os.kill(proc.pid, signum)
    try:
        rest = proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if signum == signal.SIGTERM:
        assert proc.returncode == 143, rest
        assert "nothing was published" in rest
    else:
        assert proc.returncode == -signal.SIGKILL
    assert tree(tmp_path / "out") == before
    # no process of the run is left
    out = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert out.stdout.strip() == ""
    # the next run cleans up what the killed one left, and succeeds
    job["finalize"] = {"dedupe": {"keys": ["id"]}}
    write_job(tmp_path, job)
    run_job(tmp_path, job)
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    assert read_output(tmp_path / "out").num_rows == 500


def test_daily_rollup_equals_duckdb_over_its_map(tmp_path):
    """The shipped example: its finalize equals DuckDB's dedupe and group-by over the same job's map output."""
    import shutil

    import yaml

    from pipeline.demo import generate
    from tests.helpers import ROOT

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    generate(tmp_path / "data", rows=3000, seed=7)
    config = tmp_path / "configs" / "daily_rollup.yaml"
    job = yaml.safe_load(config.read_text())
    finalize = job.pop("finalize")
    job["output"] = {"path": str(tmp_path / "map"), "mode": "overwrite"}
    write_job(tmp_path / "configs", job, name="map_only.yaml")
    for path in (config, tmp_path / "configs" / "map_only.yaml"):
        code, _, err = run_cli("run", path, "--no-progress", "--set", "input.chunk_bytes=16KiB")
        assert code == 0, err
    out = tmp_path / "data" / "out" / "daily_rollup"
    got = read_output(out, partitioning="hive")
    m = manifest_of(out)
    staged = [str(tmp_path / "map" / f["path"]) for f in manifest_of(tmp_path / "map")["files"]]
    con = duckdb.connect()
    con.execute("CREATE VIEW data AS SELECT * FROM read_parquet(" + repr(staged) + ") "
                "QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts DESC) = 1")
    rel = con.sql(finalize["sql"])
    want = (getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table)()
    assert got.num_rows == want.num_rows > 3
    assert rows_of(got.select(want.schema.names).cast(want.schema)) == rows_of(want)
    assert m["finalize"]["rows_in"] == m["counts"]["rows_written"] == manifest_of(tmp_path / "map")["counts"]["rows_written"]
    assert {e["name"] for e in m["lookups"]} == {"countries"}


def test_finalize_writes_with_the_output_settings(tmp_path):
    import pyarrow.parquet as pq

    data = write_sales(tmp_path / "sales.csv", 2000)
    job = basic_job(str(data), out=str(tmp_path / "out"),
                    output={"compression": "gzip", "row_group_rows": 300, "file_bytes": "20KiB"})
    job["finalize"] = {"sort_by": ["id"]}
    run_job(tmp_path, job)
    m = manifest_of(tmp_path / "out")
    assert len(m["files"]) > 1
    ids = []
    for f in m["files"]:
        meta = pq.ParquetFile(tmp_path / "out" / f["path"]).metadata
        assert all(meta.row_group(i).num_rows <= 300 for i in range(meta.num_row_groups))
        assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"GZIP"}
        ids += pq.read_table(tmp_path / "out" / f["path"]).column("id").to_pylist()
    assert ids == sorted(ids) == list(range(1, 2001))   # sort_by, across the rolled files in manifest order
