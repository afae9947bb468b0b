"""Broken and hostile input: each is a bad row or a failed file with file, line and reason."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job


def _run(tmp_path, job, capsys, *extra):
    return run_cli("run", write_job(tmp_path, job), "--no-progress", *extra, capsys=capsys)


def test_unterminated_quote_is_a_bad_row_not_one_giant_field(tmp_path, capsys):
    body = "".join(f"{i},row {i}\n" for i in range(2, 200))
    data = f'id,note\n1,"never closed\n{body}'.encode()
    (tmp_path / "in.csv").write_bytes(data)
    job = basic_job("in.csv", input={"max_record_bytes": 1024}, run={"on_bad_rows": "quarantine", "max_bad_rows": 10})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert len(rejects) == 1 and rejects[0]["line"] == 2
    assert "unterminated quote" in rejects[0]["reason"]
    assert read_output(tmp_path / "out").num_rows == 0  # everything after the quote was swallowed by it
    job["run"]["on_bad_rows"] = "fail"
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 65 and "in.csv line 2" in err and "unterminated quote" in err


def test_invalid_utf8_is_a_bad_row_and_the_column_stays_text(tmp_path, capsys, workers):
    data = b"id,name\n1,ok\n2,caf\xe9\n3,fine\n"
    (tmp_path / "in.csv").write_bytes(data)
    job = basic_job("in.csv", run={"on_bad_rows": "quarantine", "workers": workers})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    table = read_output(tmp_path / "out")
    assert table.schema.field("name").type == pa.string()
    assert sorted(table.column("id").to_pylist()) == [1, 3]
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert [(r["line"], r["offset"]) for r in rejects] == [(3, data.index(b"2,caf"))]
    assert "UTF8" in rejects[0]["reason"] or "UTF-8" in rejects[0]["reason"]


@pytest.mark.parametrize("chunk_bytes", [40, 97, 1 << 20])
def test_non_ascii_text_is_kept_and_invalid_utf8_rejected_at_every_chunk_size(tmp_path, capsys, chunk_bytes):
    names = ["café", "Zürich, Altstadt", "東京", "🎉", "plain", "naïve \"quoted\"", "x\ny"]
    out = io.StringIO()   # every 17th row has a byte 0xff (not UTF-8) in a string column: a bad row
    csv.writer(out, lineterminator="\n").writerows(
        [["id", "name", "note"]] + [[str(i), names[i % len(names)], "n\udcff" if i % 17 == 0 else f"n{i}"]
                                    for i in range(1, 121)])
    data = out.getvalue().encode("utf-8", "surrogateescape")
    (tmp_path / "in.csv").write_bytes(data)
    # the reference: Python's csv module over the text, and its UTF-8 codec for what is valid
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    next(reader)
    expected, bad_lines, line = [], [], reader.line_num
    for record in reader:
        if any("\udc80" <= c <= "\udcff" for v in record for c in v):
            bad_lines.append(line + 1)
        else:
            expected.append({"id": int(record[0]), "name": record[1], "note": record[2]})
        line = reader.line_num
    assert len(bad_lines) == 7 and len(expected) == 113
    job = basic_job("in.csv", input={"chunk_bytes": chunk_bytes, "csv": {"null_values": []},
                                     "schema": {"id": "int64", "name": "string", "note": "string"}},
                    run={"on_bad_rows": "quarantine", "max_bad_rows": 100})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    assert sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"]) == expected
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert sorted(r["line"] for r in rejects) == bad_lines
    assert all("UTF8" in r["reason"] or "UTF-8" in r["reason"] for r in rejects)


@pytest.mark.parametrize("name, text", [
    ("in.csv", "id,name\n1,café\n2,ok\n"), ("in.tsv", "id\tname\n1\tcafé\n"), ("in.jsonl", '{"id": 1}\n{"id": 2}\n'),
    ("in.json", '[{"id": 1}]'), ("in.csv.gz", "id\n1\n"),
])
@pytest.mark.parametrize("encoding, label", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")])
def test_utf16_and_utf32_text_is_refused_with_the_conversion_to_make(tmp_path, capsys, name, text, encoding, label):
    data = ("\ufeff" + text if encoding == "utf-16-be" else text).encode(encoding)   # Python's codec writes the mark
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    code, _out, err = _run(tmp_path, basic_job(name), capsys)
    assert code == 65, err
    assert f"{tmp_path / name}: the file is {label} text" in err
    assert f"iconv -f {label} -t UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_a_header_that_is_not_text_names_the_line_and_the_encoding_key(tmp_path, capsys):
    (tmp_path / "in.csv").write_bytes(b"\xce\x01\x9a,\xff\n1,2\n")
    code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    assert code == 65, err
    assert f"{tmp_path / 'in.csv'} line 1: cannot read the header: it is not utf-8 text" in err
    assert "input.csv.encoding" in err
    # the same bytes are text in latin-1: the key named is the fix
    code, _out, err = _run(tmp_path, basic_job("in.csv", input={"csv": {"encoding": "latin-1"}}), capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").column_names == [b"\xce\x01\x9a".decode("latin-1"), "ÿ"]



@pytest.mark.parametrize("suffix,compress", [
    (".gz", lambda b: gzip.compress(b, mtime=0)),
    (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    (".bz2", bz2.compress),
])
def test_truncated_compressed_file_fails_the_run_with_no_partial_rows(tmp_path, capsys, suffix, compress):
    data = b"id,v\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(20000))
    blob = compress(data)
    (tmp_path / f"in.csv{suffix}").write_bytes(blob[: len(blob) // 2])
    job = basic_job(f"in.csv{suffix}", run={"on_bad_rows": "quarantine"})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 65
    assert f"in.csv{suffix}" in err and "cut short" in err
    assert not (tmp_path / "out").exists()


def test_truncated_last_json_line_fails_the_file(tmp_path, capsys):
    lines = "".join(json.dumps({"id": i, "v": f"x{i}"}) + "\n" for i in range(10))
    (tmp_path / "in.jsonl").write_text(lines + '{"id": 10, "v": "x1')
    code, _out, err = _run(tmp_path, basic_job("in.jsonl", run={"on_bad_rows": "quarantine"}), capsys)
    assert code == 65 and "in.jsonl line 11" in err and "truncated" in err
    assert not (tmp_path / "out").exists()
    # a bad line in the middle is an ordinary bad row
    (tmp_path / "in.jsonl").write_text(lines + "{oops}\n" + json.dumps({"id": 11, "v": "y"}) + "\n")
    code, _out, err = _run(tmp_path, basic_job("in.jsonl", run={"on_bad_rows": "quarantine"}), capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").num_rows == 11


def test_files_with_different_columns_are_refused_unless_allowed(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("id,name\n1,a\n")
    (tmp_path / "b.csv").write_text("id,name,extra\n2,b,x\n")
    code, _out, err = _run(tmp_path, basic_job(["a.csv", "b.csv"]), capsys)
    assert code == 65
    assert "b.csv has extra ['extra']" in err and "a.csv" in err and "allow_missing_columns" in err
    job = basic_job(["a.csv", "b.csv"], input={"allow_missing_columns": True})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    rows = sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "name": "a", "extra": None}, {"id": 2, "name": "b", "extra": "x"}]


def test_decompression_bomb_is_stopped_at_the_cap(tmp_path, capsys):
    raw = b"id,v\n" + b"1,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n" * 2_000_000   # 66 MB of text
    (tmp_path / "bomb.csv.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    assert (tmp_path / "bomb.csv.gz").stat().st_size < 1_000_000
    job = basic_job("bomb.csv.gz", input={"max_decompressed_bytes": "8MiB"})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 65 and "max_decompressed_bytes" in err and "bomb.csv.gz" in err


def test_symlinked_inputs_are_not_followed_unless_allowed(tmp_path, capsys):
    secret = tmp_path / "elsewhere.csv"
    secret.write_text("id\n1\n")
    (tmp_path / "in").mkdir()
    os.symlink(secret, tmp_path / "in" / "link.csv")
    code, _out, err = _run(tmp_path, basic_job("in/*.csv"), capsys)
    assert code == 65 and "symbolic link" in err and "follow_symlinks" in err
    code, _out, err = _run(tmp_path, basic_job("in/*.csv", input={"follow_symlinks": True}), capsys)
    assert code == 0, err


NASTY = ["../x", "../../escape", "a/b", "..", ".", "", None, "nul\x00byte", "x" * 400, "%2F", "ünï cødé"]


def test_partition_values_never_leave_the_output_and_round_trip(tmp_path, capsys):
    table = pa.table({"id": list(range(len(NASTY))), "p": NASTY})
    pq.write_table(table, tmp_path / "in.parquet")
    job = basic_job("in.parquet", output={"partition_by": ["p"]})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    root = os.path.realpath(tmp_path / "out")
    for dirpath, _, files in os.walk(tmp_path):
        for name in files:
            path = os.path.realpath(os.path.join(dirpath, name))
            if path.endswith(".parquet") and "in.parquet" not in path:
                assert path.startswith(root + os.sep), path
    m = manifest_of(tmp_path / "out")
    assert sum(f["rows"] for f in m["files"]) == len(NASTY)
    back = pq.read_table(tmp_path / "out", partitioning="hive").to_pylist()
    got = {r["id"]: r["p"] for r in back}
    for i, value in enumerate(NASTY):
        if value in ("", None):
            assert got[i] is None
        elif len(value) < 200:
            assert got[i] == value, (value, got[i])


def test_python_tag_in_yaml_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    (tmp_path / "job.yaml").write_text(
        f"name: x\ninput: {{paths: [a.csv]}}\noutput: {{path: out}}\n"
        f"run: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _out, err = run_cli("run", tmp_path / "job.yaml", capsys=capsys)
    assert code == 78 and "line 4" in err
    assert not marker.exists()


def test_python_stage_module_outside_the_config_folder_is_refused(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n")
    job = basic_job("in.csv", stages=[{"python": {"function": "os:system"}}])
    code, _out, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "run.python_modules" in err
    job["run"]["python_modules"] = ["json"]
    job["stages"] = [{"python": {"function": "json:nonexistent"}}]
    code, _out, err = run_cli("validate", write_job(tmp_path, job), capsys=capsys)
    assert code == 78 and "has no function 'nonexistent'" in err


def test_output_files_are_not_world_writable(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n")
    old = os.umask(0)
    try:
        code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    for dirpath, dirs, files in os.walk(tmp_path / "out"):
        for name in dirs + files:
            assert not os.stat(os.path.join(dirpath, name)).st_mode & 0o002, name
    lock = tmp_path / ".out.lock"
    assert lock.exists() and not lock.stat().st_mode & 0o022


def test_a_symlink_planted_at_the_lock_path_is_not_followed(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n")
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    os.symlink(target, tmp_path / ".out.lock")
    code, _out, err = _run(tmp_path, basic_job("in.csv"), capsys)
    assert code == 74 and "symbolic link" in err
    assert target.read_text() == "keep"
    assert not (tmp_path / "out").exists()
