"""Incremental runs: files that change after a run took them, files still being written, an empty
landing folder (issue 11 cases 4 and 5); a run that rejects every row (case 7)."""

from __future__ import annotations

import os
import time

import duckdb
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job


def _lines(n: int, start: int = 0) -> str:
    return "".join(f"{i},name{i},{i * 1.5}\n" for i in range(start, n))


def _incremental(tmp_path, **input_opts):
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    job = basic_job(str(landing / "*.csv"), out=str(tmp_path / "out"), input={"incremental": True, **input_opts},
                    output={"mode": "append"})
    return write_job(tmp_path, job), landing


def _grow(path, total: int) -> None:
    """The file as its writer finishes it: the same first lines, more after them, a later mtime."""
    path.write_text("id,name,score\n" + _lines(total))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _ids(out) -> list[int]:
    return sorted(read_output(out).column("id").to_pylist())


def test_a_changed_file_fails_by_default_and_writes_nothing(tmp_path, capsys):
    """Issue 11 case 4: the first 200 rows were appended again with only a WARNING."""
    cfg, landing = _incremental(tmp_path)
    feed = landing / "feed.csv"
    feed.write_text("id,name,score\n" + _lines(200))
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    before = manifest_of(tmp_path / "out")
    _grow(feed, 1000)
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 65, err
    assert str(feed) in err and "on_changed_file" in err
    assert manifest_of(tmp_path / "out") == before
    assert _ids(tmp_path / "out") == list(range(200))


def test_reprocess_replaces_the_rows_of_a_changed_file(tmp_path, capsys, workers):
    cfg, landing = _incremental(tmp_path, on_changed_file="reprocess")
    feed, other = landing / "feed.csv", landing / "other.csv"
    feed.write_text("id,name,score\n" + _lines(200))
    other.write_text("id,name,score\n" + _lines(5000, 4000))
    assert run_cli("run", cfg, "--workers", workers, capsys=capsys)[0] == 0
    _grow(feed, 1000)
    later = landing / "later.csv"
    later.write_text("id,name,score\n" + _lines(6000, 5000))
    code, _, err = run_cli("run", cfg, "--workers", workers, capsys=capsys)
    assert code == 0, err
    out = tmp_path / "out"
    expected = sorted(pacsv.read_csv(feed).column("id").to_pylist() + pacsv.read_csv(other).column("id").to_pylist()
                      + pacsv.read_csv(later).column("id").to_pylist())
    assert _ids(out) == expected
    # plain readers of the directory agree: no part outside the manifest still holds the old rows
    assert sorted(ds.dataset(str(out), format="parquet").to_table().column("id").to_pylist()) == expected
    assert sorted(r[0] for r in duckdb.sql(f"SELECT id FROM read_parquet('{out}/*.parquet')").fetchall()) == expected
    # a third run with nothing new is up to date
    code, text, _ = run_cli("run", cfg, capsys=capsys)
    assert code == 0 and "nothing new" in text


def test_reprocess_replaces_the_rows_in_parts_shared_with_other_files(tmp_path, capsys):
    """One part file holds the rows of several input files: only the changed file's rows go."""
    cfg, landing = _incremental(tmp_path, on_changed_file="reprocess")
    files = [landing / f"f{i}.csv" for i in range(3)]
    for i, f in enumerate(files):
        f.write_text("id,name,score\n" + _lines(i * 100 + 50, i * 100))
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    parts = manifest_of(tmp_path / "out")["files"]
    assert len(parts) == 1 and len(parts[0]["sources"]) == 3
    files[1].write_text("id,name,score\n" + _lines(180, 100))
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    expected = sorted(i for f in files for i in pacsv.read_csv(f).column("id").to_pylist())
    assert _ids(tmp_path / "out") == expected
    assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == expected


def test_skip_leaves_a_changed_file_as_it_was_processed(tmp_path, capsys):
    cfg, landing = _incremental(tmp_path, on_changed_file="skip")
    feed = landing / "feed.csv"
    feed.write_text("id,name,score\n" + _lines(200))
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    _grow(feed, 1000)
    code, text, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    assert "skipped" in text
    assert _ids(tmp_path / "out") == list(range(200))


def test_min_age_leaves_a_file_being_written_for_the_next_run(tmp_path, capsys):
    cfg, landing = _incremental(tmp_path, min_age="5m")
    old, fresh = landing / "old.csv", landing / "fresh.csv"
    old.write_text("id,name,score\n" + _lines(10))
    fresh.write_text("id,name,score\n" + _lines(30, 20))
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    assert _ids(tmp_path / "out") == list(range(10))
    os.utime(fresh, (hour_ago, hour_ago))
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    assert _ids(tmp_path / "out") == list(range(10)) + list(range(20, 30))


def test_an_empty_landing_folder_is_up_to_date(tmp_path, capsys):
    """Issue 11 case 5: exit 78 'no file matches', recorded as a failure."""
    cfg, landing = _incremental(tmp_path)
    code, text, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    assert "nothing new" in text and "no input file yet" in text
    assert run_cli("validate", cfg, capsys=capsys)[0] == 0
    code, text, _ = run_cli("history", cfg, capsys=capsys)
    assert "up to date" in text and "failed" not in text
    (landing / "first.csv").write_text("id,name,score\n" + _lines(3))
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    assert _ids(tmp_path / "out") == [0, 1, 2]


# ------------------------------------------------------------------------------------ every row rejected


def _all_rejected_job(tmp_path, executor="local", **run):
    data = tmp_path / "in.csv"
    data.write_text("id,when\n1,monday\n2,tuesday\n3,friday\n")
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"cast": {"when": "date32"}}],
                    run={"on_bad_rows": "quarantine", "executor": executor, **run})
    return write_job(tmp_path, job)


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_every_row_rejected_is_exit_65(tmp_path, capsys, executor):
    """Issue 11 case 7: a wrong cast under quarantine reported success with 0 rows."""
    if executor == "dask":
        pytest.importorskip("distributed")
    code, _, err = run_cli("run", _all_rejected_job(tmp_path, executor), capsys=capsys)
    assert code == 65, err
    assert "every row was rejected" in err and "max_bad_rows" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_every_row_rejected_within_max_bad_rows_publishes_the_schema(tmp_path, capsys, executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    code, _, err = run_cli("run", _all_rejected_job(tmp_path, executor, max_bad_rows=10), capsys=capsys)
    assert code == 0, err
    out = tmp_path / "out"
    # readers see the schema, with no rows
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.names == ["id", "when"]
    assert str(table.schema.field("when").type) == "date32[day]"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchall()[0][0] == 0
    assert pq.read_table(out / "_rejects").num_rows == 3


def test_reprocess_on_the_dask_executor(tmp_path, capsys):
    pytest.importorskip("distributed")
    cfg, landing = _incremental(tmp_path, on_changed_file="reprocess", chunk_bytes="1KiB")
    job = yaml.safe_load(cfg.read_text())
    job["run"].update({"executor": "dask", "workers": 2})
    cfg = write_job(tmp_path, job)
    feed, other = landing / "feed.csv", landing / "other.csv"
    feed.write_text("id,name,score\n" + _lines(200))
    other.write_text("id,name,score\n" + _lines(300, 250))
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    _grow(feed, 400)
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    expected = sorted(list(range(400)) + list(range(250, 300)))
    assert _ids(tmp_path / "out") == expected
    assert sorted(pq.read_table(tmp_path / "out").column("id").to_pylist()) == expected
