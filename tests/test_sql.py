"""SQL: the sql stage and lookups against DuckDB reading the same files directly; the sandbox;
errors with stage key and line; DuckDB not installed."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, run_subprocess, write_job

duckdb = pytest.importorskip("duckdb")

COUNTRIES = ["DE", "FR", "NO", "SE", "GB", "US", "JP", "CH", "XX"]


def write_sales(path: Path, rows: int, seed: int = 1, first_id: int = 1, day: str = "2026-11-01") -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "ts", "country", "price", "qty", "status"])
        for i in range(first_id, first_id + rows):
            w.writerow([i, f"{day} {rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
                        rng.choice(COUNTRIES), f"{rng.uniform(1, 100):.2f}", rng.randrange(0, 5),
                        rng.choice(["ok", "ok", "ok", "refunded"])])
    return path


def write_countries(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["country", "region", "vat"])
        for code, region, vat in [("DE", "EU", 0.19), ("FR", "EU", 0.2), ("NO", "Nordics", 0.25),
                                  ("SE", "Nordics", 0.25), ("GB", "UK", 0.2), ("US", "Americas", 0.0),
                                  ("JP", "Asia", 0.1), ("CH", "Europe", 0.081)]:
            w.writerow([code, region, vat])
    return path


def rows_of(table: pa.Table) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def duck(query: str) -> pa.Table:
    con = duckdb.connect()
    rel = con.sql(query)
    return (getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table)()


def assert_balanced(manifest: dict) -> None:
    c = manifest["counts"]
    assert c["rows_read"] + c["rows_added"] == c["rows_written"] + c["rows_filtered"] + c["rows_rejected"]


STAGE_QUERY = ("SELECT id, country, round(price * qty, 2) AS total, upper(status) AS status "
               "FROM {src} WHERE status = 'ok' AND qty > 0")


@pytest.mark.parametrize("chunk_bytes", ["4KiB", "64MiB"])
def test_sql_stage_equals_duckdb_on_the_file(tmp_path, workers, chunk_bytes):
    data = write_sales(tmp_path / "sales.csv", 3000)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": STAGE_QUERY.format(src="chunk")}],
                    input={"chunk_bytes": chunk_bytes, "schema": {"ts": "timestamp[s]"}},
                    run={"workers": workers})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=None)
    assert code == 0, err
    got = read_output(tmp_path / "out")
    want = duck(STAGE_QUERY.format(src=f"read_csv('{data}')"))
    assert got.schema.names == want.schema.names
    assert rows_of(got) == rows_of(want)
    m = manifest_of(tmp_path / "out")
    assert_balanced(m)
    assert m["counts"]["rows_read"] == 3000
    assert m["counts"]["rows_filtered"] == 3000 - want.num_rows
    if chunk_bytes == "4KiB":
        assert m["chunks"] > 4


def test_sql_stage_that_adds_rows_is_counted(tmp_path):
    data = write_sales(tmp_path / "sales.csv", 200)
    query = "SELECT id, x FROM chunk, range(3) t(x) WHERE qty > 0"
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": query}], input={"chunk_bytes": "2KiB"})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    want = duck(query.replace("chunk", f"read_csv('{data}')"))
    assert rows_of(read_output(tmp_path / "out")) == rows_of(want)
    m = manifest_of(tmp_path / "out")
    assert_balanced(m)
    assert m["counts"]["rows_written"] == want.num_rows
    assert m["counts"]["rows_added"] > 0


JOIN = ("SELECT s.id, s.country, l.region, round(s.price * s.qty * (1 + l.vat), 2) AS gross "
        "FROM {src} s JOIN {lookup} l USING (country) WHERE s.status = 'ok'")


def test_lookup_join_equals_duckdb(tmp_path, workers):
    data = write_sales(tmp_path / "sales.csv", 2000)
    ref = tmp_path / "ref"
    ref.mkdir()
    write_countries(ref / "countries.csv")
    job = basic_job(str(data), out=str(tmp_path / "out"),
                    stages=[{"sql": JOIN.format(src="chunk", lookup="countries")}],
                    input={"chunk_bytes": "8KiB"}, run={"workers": workers})
    job["lookups"] = {"countries": {"path": "ref/countries.csv"}}
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    want = duck(JOIN.format(src=f"read_csv('{data}')", lookup=f"read_csv('{ref / 'countries.csv'}')"))
    assert rows_of(read_output(tmp_path / "out")) == rows_of(want)
    m = manifest_of(tmp_path / "out")
    assert_balanced(m)
    [entry] = m["lookups"]
    assert entry["name"] == "countries" and entry["size"] == (ref / "countries.csv").stat().st_size
    assert len(entry["fingerprint"]) == 32


def test_lookup_in_parquet_and_gzip(tmp_path):
    import gzip

    import pyarrow.parquet as pq

    data = write_sales(tmp_path / "sales.csv", 300)
    write_countries(tmp_path / "countries.csv")
    pq.write_table(duck(f"SELECT * FROM read_csv('{tmp_path / 'countries.csv'}')"), tmp_path / "c.parquet")
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress((tmp_path / "countries.csv").read_bytes()))
    query = "SELECT s.id, a.region AS r1, b.region AS r2 FROM chunk s JOIN pq a USING (country) JOIN gz b USING (country)"
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": query}])
    job["lookups"] = {"pq": {"path": "c.parquet"}, "gz": {"path": "c.csv.gz"}}
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    src = f"read_csv('{tmp_path / 'countries.csv'}')"
    want = duck(query.replace("chunk", f"read_csv('{data}')").replace("pq a", f"{src} a").replace("gz b", f"{src} b"))
    assert rows_of(read_output(tmp_path / "out")) == rows_of(want)


def test_a_changed_lookup_changes_the_transform_hash(tmp_path):
    data_dir = tmp_path / "in"
    data_dir.mkdir()
    write_sales(data_dir / "a.csv", 50)
    write_countries(tmp_path / "countries.csv")
    job = basic_job(str(data_dir / "*.csv"), out=str(tmp_path / "out"),
                    stages=[{"sql": "SELECT s.id, l.region FROM chunk s LEFT JOIN countries l USING (country)"}],
                    input={"incremental": True}, run={"state_dir": str(tmp_path / "state")})
    job["lookups"] = {"countries": {"path": "countries.csv"}}
    path = write_job(tmp_path, job)
    assert run_cli("run", path, "--no-progress")[0] == 0
    first = manifest_of(tmp_path / "out")["transform_hash"]
    text = (tmp_path / "countries.csv").read_text().replace("DE,EU", "DE,XX")   # same size, other content
    (tmp_path / "countries.csv").write_text(text)
    write_sales(data_dir / "b.csv", 50, first_id=1000)
    code = run_cli("run", path, "--no-progress")[0]
    assert code == 78
    assert manifest_of(tmp_path / "out")["transform_hash"] == first
    assert run_cli("run", path, "--no-progress", "--full-refresh")[0] == 0
    assert manifest_of(tmp_path / "out")["transform_hash"] != first


def test_lookup_over_max_bytes_is_a_config_error(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    write_countries(tmp_path / "countries.csv")
    job = basic_job(str(data), out=str(tmp_path / "out"),
                    stages=[{"sql": "SELECT * FROM chunk JOIN countries USING (country)"}])
    job["lookups"] = {"countries": {"path": "countries.csv", "max_bytes": 100}}
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78
    assert "lookups.countries" in err and "max_bytes" in err and "line" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_row_in_a_lookup_is_a_data_error(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    (tmp_path / "rates.csv").write_text("country,rate\nDE,0.19\nFR,0.2,extra\n")
    job = basic_job(str(data), out=str(tmp_path / "out"),
                    stages=[{"sql": "SELECT * FROM chunk JOIN rates USING (country)"}])
    job["lookups"] = {"rates": {"path": "rates.csv"}}
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 65
    assert "lookups.rates" in err and "rates.csv line 3" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_lookup_file_is_a_config_error(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": "SELECT * FROM chunk"}])
    job["lookups"] = {"rates": {"path": "nowhere.csv"}}
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "lookups.rates" in err and "nowhere.csv" in err


@pytest.mark.parametrize("name", ["chunk", "data", "bad-name"])
def test_lookup_names_are_sql_names_and_not_reserved(tmp_path, capsys, name):
    data = write_sales(tmp_path / "sales.csv", 10)
    write_countries(tmp_path / "countries.csv")
    job = basic_job(str(data), out=str(tmp_path / "out"))
    job["lookups"] = {name: {"path": "countries.csv"}}
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "lookups" in err and name in err


ESCAPES = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM 'https://example.com/x.csv'",
    "COPY chunk TO 'copied.csv'",
    "ATTACH 'other.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SELECT 1 AS one; COPY chunk TO 'copied.csv'",
]


@pytest.mark.parametrize("query", ESCAPES)
def test_file_network_and_extension_access_is_refused(tmp_path, capsys, query):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"filter": "qty >= 0"}, {"sql": query}])
    path = write_job(tmp_path, job)
    for command in ("validate", "run"):
        code, _, err = run_cli(command, path, capsys=capsys)
        assert code == 78, (command, err)
        assert "stages[1].sql" in err and "line" in err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "copied.csv").exists() and not (tmp_path / "other.db").exists()


def test_the_sandbox_holds_after_a_python_stage(tmp_path, capsys):
    """After a python stage the schema is known only at run time: the query fails there, exit 1."""
    data = write_sales(tmp_path / "sales.csv", 10)
    (tmp_path / "t.py").write_text("def same(df):\n    assert len(df)  # fails on validate's empty table\n    return df\n")
    job = basic_job(str(data), out=str(tmp_path / "out"),
                    stages=[{"python": {"function": "t:same"}}, {"sql": "SELECT * FROM read_csv('/etc/passwd')"}])
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 1
    assert "stages[1].sql" in err and "disabled by configuration" in err
    assert not (tmp_path / "out").exists()


def test_validate_reports_a_sql_error_with_stage_key_and_line(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    path = tmp_path / "job.yaml"
    path.write_text(f"""name: t
input:
  paths: ["{data}"]
stages:
  - filter: "qty > 0"
  - sql: "SELECT id, prise FROM chunk"
output: {{path: out, mode: overwrite}}
""")
    code, _, err = run_cli("validate", path, capsys=capsys)
    assert code == 78
    assert f"{path} line 6: stages[1].sql" in err
    assert "prise" in err and "Binder Error" in err   # DuckDB's own message


def test_a_sql_syntax_error_is_found_when_the_job_is_loaded(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": "SELEC id FROM chunk"}])
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78
    assert "stages[0].sql" in err and "line" in err and "syntax error" in err


def test_a_sql_error_on_the_data_fails_the_run_naming_the_stage(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": "SELECT CAST(status AS INTEGER) AS n FROM chunk"}])
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 1
    assert "stages[0].sql" in err and "Conversion Error" in err and "sales.csv" in err
    assert not (tmp_path / "out").exists()


def test_duplicate_result_columns_are_refused(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": "SELECT id, id FROM chunk"}])
    code, _, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "two columns named 'id'" in err


def test_validate_shows_duckdb_types(tmp_path, capsys):
    data = write_sales(tmp_path / "sales.csv", 10)
    from pipeline.dtypes import type_name

    query = ("SELECT id::INTEGER AS id, date_trunc('day', ts)::DATE AS day, price::DECIMAL(10,2) AS price, "
             "qty > 1 AS many, [qty] AS qtys FROM {src}")
    job = basic_job(str(data), out=str(tmp_path / "out"), input={"schema": {"ts": "timestamp[s]"}},
                    stages=[{"sql": query.format(src="chunk")}])
    code, out, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 0, err
    want = duck(query.format(src=f"read_csv('{data}')")).schema
    assert "columns " + ", ".join(f"{f.name}: {type_name(f.type)}" for f in want) in out


def test_duckdb_missing_gives_exit_78_with_the_install_command(tmp_path, capsys, monkeypatch):
    data = write_sales(tmp_path / "sales.csv", 10)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": "SELECT * FROM chunk"}])
    path = write_job(tmp_path, job)
    monkeypatch.setitem(sys.modules, "duckdb", None)   # `import duckdb` raises ImportError
    for command in ("validate", "run"):
        code, _, err = run_cli(command, path, capsys=capsys)
        assert code == 78, err
        assert "pip install 'pipeline[sql]'" in err and "stages[0].sql" in err
    monkeypatch.undo()
    assert run_cli("validate", path)[0] == 0


def test_one_connection_per_process_and_lookups_read_once(tmp_path, monkeypatch):
    from pipeline.input import lookups as lookups_mod
    from pipeline.stages import STAGES, StageContext, apply_stages
    from pipeline.stages import sql as sql_mod

    write_countries(tmp_path / "countries.csv")
    job_file = write_job(tmp_path, dict(basic_job(str(tmp_path / "countries.csv")),
                                        lookups={"countries": {"path": "countries.csv"}}))
    from pipeline.config import load_config
    from pipeline.run import stage_context

    job = load_config(job_file, stages=STAGES)
    reads = []
    real = lookups_mod.read_lookup
    monkeypatch.setattr(lookups_mod, "read_lookup", lambda lk: reads.append(lk.name) or real(lk))
    monkeypatch.setattr(sql_mod, "_CONNECTIONS", {})
    monkeypatch.setattr(lookups_mod, "_TABLES", {})
    ctx: StageContext = stage_context(job)
    chunk = pa.table({"country": ["DE", "US", "XX"]})
    stages = [("sql", "SELECT country, region FROM chunk JOIN countries USING (country) ORDER BY country")]
    for _ in range(3):
        out = apply_stages(chunk, stages, ctx)
        assert out.table.column("region").to_pylist() == ["EU", "Americas"]
    assert reads == ["countries"]
    assert len(sql_mod._CONNECTIONS) == 1


@pytest.mark.parametrize("select, column, kind", [
    ("SELECT id, INTERVAL 1 DAY AS iv FROM chunk", "iv", "month_day_nano_interval"),
    ("SELECT id, union_value(k := 1) AS u FROM chunk", "u", "sparse_union"),
])
def test_a_column_parquet_cannot_hold_is_the_config_error_of_its_stage(tmp_path, capsys, select, column, kind):
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    job = basic_job("in.csv", stages=[{"filter": "id > 0"}, {"sql": select}])
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 78, err
    assert f"stages[1].sql: column {column!r} is {kind}" in err and "which Parquet cannot hold" in err
    assert not (tmp_path / "out").exists()
    # cast to text, it is written
    job["stages"][1]["sql"] = select.replace(f" AS {column}", f"::VARCHAR AS {column}")
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").schema.field(column).type == pa.string()


def test_a_python_stage_column_parquet_cannot_hold_fails_the_run_naming_it(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    (tmp_path / "t.py").write_text("import pyarrow as pa\n"
                                   "def iv(table):\n"
                                   "    return table.append_column('iv', pa.array([pa.MonthDayNano([1, 0, 0])] * "
                                   "table.num_rows))\n")
    job = basic_job("in.csv", stages=[{"python": {"function": "t:iv", "api": "arrow"}}])
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 1, err
    assert "column 'iv' is month_day_nano_interval, which Parquet cannot hold" in err
    assert "unexpected failure" not in err
    assert not (tmp_path / "out").exists()


def test_rows_a_join_adds_are_counted_and_named_as_added_by_a_stage(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    (tmp_path / "l.csv").write_text("id,v\n1,x\n1,y\n")
    job = basic_job("in.csv", lookups={"l": {"path": "l.csv"}},
                    stages=[{"sql": "SELECT chunk.id, l.v FROM chunk LEFT JOIN l USING (id)"}])
    code, out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 0, err
    counts = manifest_of(tmp_path / "out")["counts"]
    assert (counts["rows_read"], counts["rows_added"], counts["rows_written"]) == (2, 1, 3)
    assert "2 read, 3 written, 0 filtered, 0 rejected, 1 added by stages" in out + err


def test_a_sql_stage_converts_only_the_columns_its_query_reads(tmp_path):
    """A value that fits no type in a column the query does not read rejects no row (as for every
    stage, see docs/data.md); a query that names columns by position reads them all."""
    data = write_sales(tmp_path / "sales.csv", 1500)
    lines = data.read_text().splitlines()
    fields = lines[40].split(",")
    fields[3] = "n/a"                      # price: not a number
    lines[40] = ",".join(fields)
    data.write_text("\n".join(lines) + "\n")
    ref = tmp_path / "ref"
    ref.mkdir()
    write_countries(ref / "countries.csv")
    query = ("SELECT s.id, l.region, s.qty * 2 AS double_qty FROM {src} s JOIN {lookup} l USING (country) "
             "WHERE s.status = 'ok'")
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"sql": query.format(src="chunk", lookup="countries")}],
                    input={"chunk_bytes": "8KiB", "schema": {"price": "float64"}},
                    run={"workers": 2, "on_bad_rows": "quarantine"})
    job["lookups"] = {"countries": {"path": "ref/countries.csv"}}
    res = run_subprocess("run", write_job(tmp_path, job), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "the stages read 4 of the 6 input columns; not converted: ts, price" in res.stderr
    want = duck(query.format(src=f"read_csv('{data}')", lookup=f"read_csv('{ref / 'countries.csv'}')"))
    assert rows_of(read_output(tmp_path / "out")) == rows_of(want)
    assert manifest_of(tmp_path / "out")["counts"]["rows_rejected"] == 0

    # #4 is price: the position is kept only with every column there, and the bad price is rejected
    job["stages"] = [{"sql": "SELECT id, #4 AS p FROM chunk"}]
    res = run_subprocess("run", write_job(tmp_path, job), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "not converted" not in res.stderr
    want = duck(f"SELECT id, price AS p FROM read_csv('{data}', types={{'price': 'VARCHAR'}}) "
                f"WHERE price <> 'n/a'")
    got = read_output(tmp_path / "out")
    assert rows_of(got) == rows_of(want.cast(got.schema))
    assert manifest_of(tmp_path / "out")["counts"]["rows_rejected"] == 1
