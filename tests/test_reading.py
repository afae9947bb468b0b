"""Reading delimited text: no silent truncation, one quoting rule at every chunk size, header
options, comments and skipped rows. Each case is compared with a reference reader."""

from __future__ import annotations

import csv
import io

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job


def _run(tmp_path, job, capsys, *extra):
    return run_cli("run", write_job(tmp_path, job), "--no-progress", *extra, capsys=capsys)


def _python_csv(data: bytes) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(data.decode(), newline="")) if r]


def _strings(header) -> dict:
    return {"csv": {"null_values": []}, "schema": dict.fromkeys(header, "string")}


# ------------------------------------------------------------------ no silent truncation (cases 1, 2)


def test_unterminated_quote_in_a_long_file_is_a_bad_row_never_success(tmp_path, capsys, workers):
    lines = ["id,name"] + [f"{i},name {i}" for i in range(1, 1001)]
    lines[3] = '2,"broken'
    data = ("\n".join(lines) + "\n").encode()
    (tmp_path / "in.csv").write_bytes(data)
    reference = _python_csv(data)[1:]   # Python's csv (not strict) joins the rest into one field
    job = basic_job("in.csv", run={"workers": workers, "on_bad_rows": "fail"})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 65 and "in.csv line 4" in err and "unterminated quote" in err
    job["run"]["on_bad_rows"] = "quarantine"
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    counts = manifest_of(tmp_path / "out")["counts"]
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert counts["rows_read"] == len(reference) == counts["rows_written"] + counts["rows_rejected"]
    assert [r["line"] for r in rejects] == [4]
    assert rejects[0]["raw"].startswith('2,"broken\n4,name 4') and rejects[0]["raw"].endswith("1000,name 1000")


@pytest.mark.parametrize("data, line", [
    (b'a,b\n1,2\n3,"x', 3),                   # a small unterminated field at the very end
    (b'a,b\n1,2\n3,"x\n', 3),
    (b'a,b\n1,"x\n2,3\n', 2),
])
@pytest.mark.parametrize("chunk_bytes", ["4KiB", None])
def test_small_unterminated_field_is_a_bad_row(tmp_path, capsys, data, line, chunk_bytes):
    (tmp_path / "in.csv").write_bytes(data)
    job = basic_job("in.csv", input={"chunk_bytes": chunk_bytes} if chunk_bytes else {})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 65 and f"in.csv line {line}: unterminated quote" in err


def test_unterminated_quote_in_a_gzip_stream(tmp_path, capsys):
    import gzip
    (tmp_path / "in.csv.gz").write_bytes(gzip.compress(b'a,b\n1,2\n3,"x\n4,5\n'))
    code, _out, err = _run(tmp_path, basic_job("in.csv.gz"), capsys)
    assert code == 65 and "line 3: unterminated quote" in err


# ------------------------------------------------------------------ one quoting rule (case 15)


def _disk_file() -> bytes:
    # the shape of the reproduction; this padding put a 4 KiB cut inside the quoted field
    rows = ["id,note"] + [f'{i},a {i}" disk' + "x" * 28 for i in range(99)] + ['500,"two\nlines"']
    rows += [f"{i},b {i}" + "y" * 28 for i in range(600, 700)]
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("chunk_bytes", ["4KiB", "64KiB", None])
def test_quotes_inside_unquoted_fields_give_the_same_rows_at_every_chunk_size(tmp_path, capsys, chunk_bytes,
                                                                               workers):
    data = _disk_file()
    (tmp_path / "in.csv").write_bytes(data)
    reference = pacsv.read_csv(pa.py_buffer(data), parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert reference.num_rows == 200
    job = basic_job("in.csv", input={"chunk_bytes": chunk_bytes} if chunk_bytes else {}, run={"workers": workers})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out").sort_by("id")
    assert got.to_pylist() == reference.sort_by("id").to_pylist()
    assert manifest_of(tmp_path / "out")["counts"]["rows_rejected"] == 0


def test_a_bad_row_takes_no_neighbour_with_it(tmp_path, capsys):
    data = b'id,note\n1,a 5" disk\n2,b\n3,c 7" disk\n4,d,extra\n5,e\n'
    (tmp_path / "in.csv").write_bytes(data)
    reference = [r for r in _python_csv(data)[1:] if len(r) == 2]
    job = basic_job("in.csv", input=_strings(["id", "note"]), run={"on_bad_rows": "quarantine"})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    assert [[r["id"], r["note"]] for r in read_output(tmp_path / "out").to_pylist()] == reference
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert [(r["line"], r["raw"]) for r in rejects] == [(5, "4,d,extra")]
    assert "expected 2 columns, got 3" in rejects[0]["reason"]


def test_quote_in_the_header_name(tmp_path, capsys):
    data = b'id,name"\n1,a\n2,b"\n3,c\n'
    (tmp_path / "in.csv").write_bytes(data)
    code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    assert code == 0, err
    expected = pacsv.read_csv(pa.py_buffer(data))
    assert read_output(tmp_path / "out").to_pylist() == expected.to_pylist()


# ------------------------------------------------------------------ headers (cases 16, 17)


def test_a_header_longer_than_the_csv_module_field_limit_is_read(tmp_path, capsys):
    names = [f"c{i}_" + "x" * 20 for i in range(7000)]   # about 170,000 characters
    data = (",".join(names) + "\n" + ",".join("1" for _ in names) + "\n").encode()
    (tmp_path / "in.csv").write_bytes(data)
    code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").column_names == pacsv.read_csv(pa.py_buffer(data)).column_names


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_header_that_never_ends_is_exit_65_with_a_message(tmp_path, capsys, command):
    (tmp_path / "open.csv").write_bytes(b'id,"name\n1,a\n2,b\n')
    (tmp_path / "huge.csv").write_bytes(b"x" * (3 << 20))
    for name, words in (("open.csv", "opens a quote that is never closed"), ("huge.csv", "does not end within")):
        path = write_job(tmp_path, basic_job(name))
        code, _out, err = run_cli(command, path, *(["--no-progress"] if command == "run" else []), capsys=capsys)
        assert code == 65, (name, err)
        assert f"{name} line 1: the header {words}" in err and "Traceback" not in err


def _duckdb(path, **options) -> list[str]:
    opts = "".join(f", {k}={v}" for k, v in options.items())
    return duckdb.sql(f"select * from read_csv('{path}'{opts})").columns


@pytest.mark.parametrize("data", [b"a,b,\n1,2,3\n", b"a,a,b\n1,2,3\n", b"a,a,a_1,,\n1,2,3,4,5\n"])
def test_empty_and_duplicate_names_are_refused_unless_renamed_as_duckdb_does(tmp_path, capsys, data):
    (tmp_path / "in.csv").write_bytes(data)
    code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    assert code == 65 and "in.csv line 1: the header has" in err and "csv.rename_duplicates" in err
    code, _out, err = _run(tmp_path, basic_job("in.csv", input={"csv": {"rename_duplicates": True}}), capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out")
    assert got.column_names == _duckdb(tmp_path / "in.csv")
    assert got.num_rows == 1


@pytest.mark.parametrize("columns", [3, 12])
def test_headerless_file_gets_duckdb_column_names(tmp_path, capsys, columns):
    row = ",".join("7" for _ in range(columns))
    data = f"{row}\n{row}\n".encode()   # the first row repeats values: no header
    (tmp_path / "in.csv").write_bytes(data)
    code, _out, err = _run(tmp_path, basic_job("in.csv", input={"csv": {"header": False}}), capsys)
    assert code == 0, err
    got = read_output(tmp_path / "out")
    assert got.column_names == _duckdb(tmp_path / "in.csv", header="false")
    assert got.num_rows == 2


# ------------------------------------------------------------------ comments and skipped rows (case 13)


def test_comment_lines_are_skipped_and_counted(tmp_path, capsys, workers):
    body = "".join(f"{i},v{i}\n" + ("# note, with \"a quote\n" if i % 3 == 0 else "") for i in range(200))
    data = f'# exported 2026-01-01\n#  by: tool\nid,val\n{body}'.encode()
    (tmp_path / "in.csv").write_bytes(data)
    job = basic_job("in.csv", input={"csv": {"comment": "#"}, "chunk_bytes": "4KiB"}, run={"workers": workers})
    code, out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    expected = pd.read_csv(io.BytesIO(data), comment="#")
    got = read_output(tmp_path / "out").to_pandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    comments = sum(1 for line in data.split(b"\n") if line.startswith(b"#"))
    assert manifest_of(tmp_path / "out")["counts"]["lines_skipped"] == comments
    assert f"{comments} comment lines skipped" in out


def test_skip_rows_before_the_header(tmp_path, capsys):
    data = b'exported by tool\n"a junk line\nspanning two",x\nid,val\n1,a\n2,b\n'
    (tmp_path / "in.csv").write_bytes(data)
    job = basic_job("in.csv", input={"csv": {"skip_rows": 2}})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    expected = pd.read_csv(io.BytesIO(data), skiprows=2)
    pd.testing.assert_frame_equal(read_output(tmp_path / "out").to_pandas(), expected, check_dtype=False)
    code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    assert code == 65   # without the option the junk line is the header and rows are ragged
