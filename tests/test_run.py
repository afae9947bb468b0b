"""End to end through the CLI: formats, output modes, partitioning, bad-row policies, the manifest."""

from __future__ import annotations

import gzip
import io
import json
import os

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tests.helpers import basic_job, manifest_of, read_output, run_cli, sort_rows, write_job

SALES = b"""id,country,price,qty,status
1,DE,10.5,2,ok
2,FR,3.25,1,ok
3,DE,7.0,0,refunded
4,NO,1.0,5,ok
5,,2.5,3,ok
6,FR,8.75,2,pending
"""


def _rows_by_id(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_filter_derive_select_matches_duckdb(tmp_path, workers, capsys):
    (tmp_path / "sales.csv").write_bytes(SALES)
    job = basic_job("sales.csv", run={"workers": workers}, stages=[
        {"filter": "status == 'ok' and qty > 0"},
        {"derive": {"total": "price * qty"}},
        {"select": ["id", "country", "total"]},
    ])
    code, out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 0, err
    got = _rows_by_id(read_output(tmp_path / "out"))
    ref = duckdb.sql(f"select id, country, price * qty as total from read_csv('{tmp_path}/sales.csv') "
                     f"where status = 'ok' and qty > 0 order by id").fetchall()
    assert [(r["id"], r["country"], r["total"]) for r in got] == ref
    m = manifest_of(tmp_path / "out")
    assert m["counts"] == {"rows_read": 6, "rows_written": len(ref), "rows_filtered": 6 - len(ref),
                           "rows_rejected": 0, "rows_added": 0, "lines_skipped": 0}
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert f"6 read, {len(ref)} written, {6 - len(ref)} filtered, 0 rejected" in out


def test_partitioned_output_reads_back_in_pyarrow_and_duckdb(tmp_path, workers):
    (tmp_path / "sales.csv").write_bytes(SALES)
    job = basic_job("sales.csv", run={"workers": workers}, output={"partition_by": ["country"]})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    dirs = sorted(d for d in os.listdir(tmp_path / "out") if not d.startswith("_"))
    assert dirs == ["country=DE", "country=FR", "country=NO", "country=__HIVE_DEFAULT_PARTITION__"]
    table = pq.read_table(tmp_path / "out", partitioning="hive")
    ref = pacsv.read_csv(io.BytesIO(SALES))
    assert sorted(table.column("id").to_pylist()) == ref.column("id").to_pylist()
    by_id = {r["id"]: r["country"] for r in table.to_pylist()}
    assert by_id[4] == "NO" and by_id[5] is None
    got = duckdb.sql(f"select country, count(*) from read_parquet('{tmp_path}/out/*/*.parquet', "
                     f"hive_partitioning=true) group by 1 order by 1").fetchall()
    assert got == [("DE", 2), ("FR", 2), ("NO", 1), (None, 1)]


def test_jsonl_gzip_and_parquet_inputs(tmp_path, workers):
    lines = [{"id": i, "name": f"n{i}", "ts": f"2026-11-0{1 + i % 3}T10:00:00", "amount": i * 1.5 if i % 4 else None}
             for i in range(50)]
    text = "".join(json.dumps(r) + "\n" for r in lines).encode()
    (tmp_path / "a.jsonl").write_bytes(text)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as fh:
        fh.write(text)
    pq.write_table(pa.Table.from_pylist(lines), tmp_path / "c.parquet", row_group_size=7)
    for name in ["a.jsonl", "b.jsonl.gz", "c.parquet"]:
        job = basic_job(name, out=f"out-{name}", run={"workers": workers}, input={"chunk_bytes": 300})
        if name.endswith(".parquet"):  # Parquet has its own types: ts is a string there unless pinned
            job["input"]["schema"] = {"ts": "timestamp[s]"}
        code, _, err = run_cli("run", write_job(tmp_path, job, f"{name}.yaml"), "--no-progress")
        assert code == 0, (name, err)
        table = read_output(tmp_path / f"out-{name}")
        assert table.num_rows == 50
        got = sorted(table.to_pylist(), key=lambda r: r["id"])
        assert [r["amount"] for r in got] == [r["amount"] for r in lines]
        assert pa.types.is_timestamp(table.schema.field("ts").type), name


def test_gzip_csv_streams_in_blocks(tmp_path, workers):
    rows = "".join(f"{i},\"note {i}\nsecond line\",{i * 0.5}\n" for i in range(5000))
    data = ("id,note,value\n" + rows).encode()
    with gzip.open(tmp_path / "big.csv.gz", "wb") as fh:
        fh.write(data)
    job = basic_job("big.csv.gz", run={"workers": workers}, input={"chunk_bytes": 4096})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    table = read_output(tmp_path / "out")
    ref = pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert sort_rows(table.to_pylist()) == sort_rows(ref.to_pylist())


BAD = b"""id,qty,note
1,5,ok
2,abc,bad value
3,7,"quoted, fine"
4,8,too,many
5,9,fine
"""


def test_bad_rows_fail_names_file_and_line(tmp_path, capsys):
    (tmp_path / "in.csv").write_bytes(BAD)
    job = basic_job("in.csv", input={"schema": {"qty": "int64"}})
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 65
    assert f"{tmp_path / 'in.csv'} line 3" in err and "qty" in err and "abc" in err
    assert not (tmp_path / "out").exists()


def test_bad_rows_quarantine_records_every_rejected_row(tmp_path, workers):
    (tmp_path / "in.csv").write_bytes(BAD)
    job = basic_job("in.csv", input={"schema": {"qty": "int64"}, "chunk_bytes": 16},
                    run={"on_bad_rows": "quarantine", "workers": workers})
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    assert sorted(read_output(tmp_path / "out").column("id").to_pylist()) == [1, 3, 5]
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    rejects.sort(key=lambda r: r["line"])
    assert [(r["line"], r["offset"], r["stage"]) for r in rejects] == [
        (3, BAD.index(b"2,abc"), "read"), (5, BAD.index(b"4,8"), "read")]
    assert rejects[0]["raw"] == "2,abc,bad value" and "abc" in rejects[0]["reason"]
    assert "expected 3 columns, got 4" in rejects[1]["reason"]
    m = manifest_of(tmp_path / "out")
    assert m["counts"]["rows_rejected"] == 2 and m["rejects"]["rows"] == 2
    assert m["counts"]["rows_read"] == 5


def test_bad_rows_skip_and_max_bad_rows(tmp_path):
    (tmp_path / "in.csv").write_bytes(BAD)
    job = basic_job("in.csv", input={"schema": {"qty": "int64"}}, run={"on_bad_rows": "skip", "max_bad_rows": 2})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    assert not (tmp_path / "out" / "_rejects").exists()
    assert manifest_of(tmp_path / "out")["counts"]["rows_rejected"] == 2
    job["run"]["max_bad_rows"] = 1
    job["output"]["path"] = "out2"
    code, _, _ = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 65
    assert not (tmp_path / "out2").exists()


def test_output_modes(tmp_path):
    (tmp_path / "in.csv").write_bytes(SALES)
    job = basic_job("in.csv")
    path = write_job(tmp_path, job)
    assert run_cli("run", path, "--no-progress")[0] == 0
    first = manifest_of(tmp_path / "out")
    assert run_cli("run", path, "--no-progress", "--set", "output.mode=append")[0] == 0
    appended = manifest_of(tmp_path / "out")
    assert len(appended["files"]) == 2 and len(appended["runs"]) == 2
    assert read_output(tmp_path / "out").num_rows == 12
    assert run_cli("run", path, "--no-progress", "--set", "output.mode=error")[0] == 74
    assert run_cli("run", path, "--no-progress")[0] == 0
    again = manifest_of(tmp_path / "out")
    assert read_output(tmp_path / "out").num_rows == 6 and again["run_id"] != first["run_id"]
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".out.staging")]
    assert leftovers == []


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "in.csv").write_bytes(SALES)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    code, _, _ = run_cli("run", write_job(tmp_path, basic_job("in.csv")), "--no-progress")
    assert code == 74
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_file_bytes_and_row_groups(tmp_path):
    rows = "".join(f"{i},{i * 7 % 1000},text number {i}\n" for i in range(20000))
    (tmp_path / "in.csv").write_text("id,v,s\n" + rows)
    job = basic_job("in.csv", output={"row_group_rows": 1000, "file_bytes": 50000, "compression": "none"})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    m = manifest_of(tmp_path / "out")
    assert len(m["files"]) > 1
    assert sum(f["rows"] for f in m["files"]) == 20000
    for f in m["files"]:
        meta = pq.ParquetFile(tmp_path / "out" / f["path"]).metadata
        assert meta.num_rows == f["rows"]
        assert all(meta.row_group(i).num_rows <= 1000 for i in range(meta.num_row_groups))


def _row_group_sizes(tmp_path, n: int) -> tuple[list[int], int]:
    """Run n rows in 64 KiB chunks with 40,000-row row groups on two workers; return the output's row
    group sizes and the rows of a chunk. The rows written are the input's, compared with pyarrow's reader."""
    rows = "".join(f"{i},{i * 7 % 1000},text number {i}\n" for i in range(n))
    (tmp_path / "in.csv").write_text("id,v,s\n" + rows)
    job = basic_job("in.csv", input={"chunk_bytes": "64KiB"}, output={"row_group_rows": 40_000},
                    run={"workers": 2})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    m = manifest_of(tmp_path / "out")
    meta = pq.ParquetFile(tmp_path / "out" / m["files"][0]["path"]).metadata
    got = read_output(tmp_path / "out").sort_by("id")
    assert got.equals(pacsv.read_csv(tmp_path / "in.csv").select(got.column_names))
    line = f"{n - 1},999,text number {n - 1}\n"
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)], 64 * 1024 // len(line) + 1


def test_the_row_groups_written_at_the_end_of_the_input_are_small(tmp_path):
    """The run's tail: near the end of the input the writer writes an eighth of a row group at a
    time, so the last row group is small (a whole row group would be encoded after the last chunk,
    one core busy and the other idle)."""
    sizes, chunk_rows = _row_group_sizes(tmp_path, 100_000)
    assert sizes[-1] <= 40_000 // 8 + chunk_rows, sizes


def test_the_writer_hears_the_end_is_near_before_the_last_chunks_are_handed_out(tmp_path):
    """``NEAR_END``: the writer switches to small row groups while the workers still have about
    NEAR_END times the input that may wait for it left to read, not only once every chunk is handed
    out, so what it holds is encoded while the workers read the last chunks. Told only at the last
    chunk, the small row groups could hold at most the input in flight then (``in_flight + workers``
    chunks) plus one small buffer; the assertion asks for twice that."""
    from pipeline.execution.local import NEAR_END
    from pipeline.memory import memory_plan

    sizes, chunk_rows = _row_group_sizes(tmp_path, 300_000)
    in_flight_rows = (memory_plan(None, 2).in_flight + 2) * chunk_rows
    small = 0
    for n in reversed(sizes):   # the trailing row groups written after the writer heard the end was near
        if n > 40_000 // 8 + chunk_rows:
            break
        small += n
    assert NEAR_END >= 3 and small >= 2 * in_flight_rows, (sizes, in_flight_rows)


def test_dry_run_writes_nothing(tmp_path):
    (tmp_path / "in.csv").write_bytes(SALES)
    code, _out, _ = run_cli("run", write_job(tmp_path, basic_job("in.csv")), "--dry-run")
    assert code == 0
    assert not (tmp_path / "out").exists()


def test_an_empty_result_keeps_its_schema(tmp_path, capsys):
    """Not partitioned: one part file with the schema and no rows; partitioned: no part file."""
    import pyarrow.parquet as pq

    (tmp_path / "in.csv").write_text("id,v,ts\n1,2,2026-01-01 00:00:00\n")
    job = basic_job("in.csv", input={"schema": {"ts": "timestamp[s]"}}, stages=[{"filter": "v > 100"}])
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 0, err
    (part,) = (tmp_path / "out").glob("part-*.parquet")
    table = pq.read_table(part)
    assert table.num_rows == 0 and table.column_names == ["id", "v", "ts"]
    assert [str(t) for t in table.schema.types] == ["int64", "int64", "timestamp[ms]"]  # Parquet has no seconds
    assert [c["type"] for c in manifest_of(tmp_path / "out")["schema"]] == ["int64", "int64", "timestamp[s]"]
    job["output"].update(path="parted", partition_by=["v"])
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 0, err
    assert not list((tmp_path / "parted").rglob("*.parquet"))
    schema = manifest_of(tmp_path / "parted")["schema"]
    assert sorted(c["name"] for c in schema) == ["id", "ts", "v"]
