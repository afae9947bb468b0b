"""JSON arrays, late JSON Lines keys, and reading hive-partitioned folders (the tool's own output)."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.json as pajson
import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job


def _run(tmp_path, job, capsys, command="run"):
    extra = ["--no-progress"] if command == "run" else []
    return run_cli(command, write_job(tmp_path, job), *extra, capsys=capsys)


ROWS = [{"id": i, "name": f"n{i}", "score": i / 4, "tags": None if i % 3 else "x"} for i in range(50)]


@pytest.mark.parametrize("pretty", [True, False])
def test_a_json_array_file_is_read_like_the_same_rows_as_json_lines(tmp_path, capsys, pretty):
    text = json.dumps(ROWS, indent=2 if pretty else None)
    (tmp_path / "in.json").write_text("\n  " + text + "\n")
    code, out, err = _run(tmp_path, basic_job("in.json"), capsys)
    assert code == 0, err
    lines = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    expected = pajson.read_json(pa.py_buffer(lines))
    got = read_output(tmp_path / "out")
    assert got.to_pylist() == expected.select(got.column_names).to_pylist()
    code, out, err = _run(tmp_path, basic_job("in.json"), capsys, "plan")
    assert code == 0 and "score" in out


def test_json_format_and_gzip(tmp_path, capsys):
    (tmp_path / "data.txt.gz").write_bytes(gzip.compress(json.dumps(ROWS[:5]).encode()))
    job = basic_job("data.txt.gz", input={"format": "json"})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").num_rows == 5


def test_json_array_element_that_is_not_an_object_is_a_bad_row_at_its_line(tmp_path, capsys):
    (tmp_path / "in.json").write_text('[\n {"a": 1},\n 7,\n {"a": 3}\n]\n')
    code, _out, err = _run(tmp_path, basic_job("in.json", run={"on_bad_rows": "quarantine"}), capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").to_pylist() == [{"a": 1}, {"a": 3}]
    assert manifest_of(tmp_path / "out")["counts"]["rows_rejected"] == 1
    code, _out, err = _run(tmp_path, basic_job("in.json"), capsys)
    assert code == 65 and "in.json line 3" in err


def test_a_broken_json_array_names_the_line(tmp_path, capsys):
    (tmp_path / "in.json").write_text('[\n {"a": 1},\n {"a": 2}\n {"a": 3}\n]\n')
    code, _out, err = _run(tmp_path, basic_job("in.json"), capsys)
    assert code == 65 and "in.json line 4: not a valid JSON array" in err


def test_a_json_lines_key_first_seen_after_the_sample_names_the_key_and_the_fix(tmp_path, capsys):
    rows = [{"id": i} for i in range(3000)] + [{"id": 3000, "late": "x"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = basic_job("in.jsonl", input={"sample_bytes": "1KiB"})
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 65
    assert "in.jsonl line 3001: key 'late' is not in the input schema" in err
    assert "input.schema" in err and "input.sample_bytes" in err
    job["input"]["schema"] = {"late": "string"}
    code, _out, err = _run(tmp_path, job, capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").column("late").to_pylist()[-1] == "x"


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


@pytest.mark.parametrize("odd", [
    [(0, {"note": {"not": "text"}})],                       # the first line is the odd one: most lines win
    [(3, {"note": 7}), (11, {"note": [1]})],                 # a number and an array among text
    [(5, {"tags": ["x"]})],                                  # deeper: text in a list of numbers
    [(2, {"ok": 1}), (9, {"ok": "yes"})],                    # a number and text among booleans
])
def test_a_json_lines_value_of_another_kind_than_most_is_a_bad_row_not_a_failure(tmp_path, capsys, odd):
    rows = [{"id": i, "note": f"n{i}", "tags": [i, i + 1], "ok": i % 2 == 0} for i in range(20)]
    for line, change in odd:
        rows[line].update(change)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "in.jsonl").write_text(text)
    code, _out, err = _run(tmp_path, basic_job("in.jsonl", run={"on_bad_rows": "quarantine"}), capsys)
    assert code == 0, err
    # the reference: Python's json module; a line is good when each key holds what most lines hold
    parsed = [json.loads(ln) for ln in text.splitlines()]
    most = {k: max(("boolean", "number", "string", "array", "object"),
                   key=lambda kind: sum(_kind(r[k]) == kind for r in parsed)) for k in parsed[0]}
    odd_lines = {line for line, _ in odd}
    assert {i for i, r in enumerate(parsed) if any(_kind(v) != most[k] for k, v in r.items())} <= odd_lines
    good = [r for i, r in enumerate(parsed) if i not in odd_lines]
    assert read_output(tmp_path / "out").to_pylist() == good
    rejects = ds.dataset(tmp_path / "out" / "_rejects").to_table().to_pylist()
    assert sorted(r["line"] for r in rejects) == sorted(line + 1 for line in odd_lines)
    assert all(" holds a" in r["reason"] and "as its column's type" in r["reason"] for r in rejects)



def test_json_lines_that_are_not_one_object_each_are_bad_rows_saying_why(tmp_path, capsys):
    lines = ['{"a": 1, "b": "x"}', '[1, 2]', '{"a": 2, "a": 3}', '7', '{"a": 4, "b": "y"', '{"a": 5, "b": "z"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    code, _out, err = _run(tmp_path, basic_job("in.jsonl", run={"on_bad_rows": "quarantine"}), capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").to_pylist() == [json.loads(lines[0]), json.loads(lines[5])]
    rejects = sorted(ds.dataset(tmp_path / "out" / "_rejects").to_table().to_pylist(), key=lambda r: r["line"])
    assert [(r["line"], r["raw"]) for r in rejects] == [(i + 1, lines[i]) for i in (1, 2, 3, 4)]
    reasons = [r["reason"] for r in rejects]
    assert reasons[:3] == ["not a JSON object: an array", "key 'a' appears twice in one object",
                           "not a JSON object: a number"]
    assert reasons[3].startswith("invalid JSON: ")



def test_the_tool_reads_its_own_partitioned_output(tmp_path, capsys, workers):
    data = "".join(f"{i},{['north', 'south', 'east'][i % 3]},{2020 + i % 2},{i * 1.5}\n" for i in range(300))
    (tmp_path / "in.csv").write_text("id,region,year,amount\n" + data + "bad,row\n")
    first = basic_job("in.csv", out="first", run={"on_bad_rows": "quarantine"})
    first["output"]["partition_by"] = ["region", "year"]
    code, _out, err = run_cli("run", write_job(tmp_path, first, "first.yaml"), "--no-progress", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "first" / "_rejects").exists()
    second = basic_job("first/**/*.parquet", out="second", run={"workers": workers})
    code, _out, err = run_cli("run", write_job(tmp_path, second, "second.yaml"), "--no-progress", capsys=capsys)
    assert code == 0, err
    expected = ds.dataset(tmp_path / "first", format="parquet", partitioning="hive",
                          exclude_invalid_files=True, ignore_prefixes=["_", "."]).to_table()
    got = read_output(tmp_path / "second")
    assert sorted(got.column_names) == sorted(expected.column_names)
    key = ["id"]
    left = got.to_pandas().sort_values(key).reset_index(drop=True)
    right = expected.to_pandas().sort_values(key).reset_index(drop=True)[left.columns]
    pd.testing.assert_frame_equal(left, right, check_dtype=False)
    assert manifest_of(tmp_path / "second")["counts"]["rows_read"] == 300   # no _rejects rows read


def test_underscore_and_dot_files_are_skipped_below_the_glob(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "_tmp").mkdir()
    (tmp_path / "in" / "a.csv").write_text("x\n1\n")
    (tmp_path / "in" / ".b.csv").write_text("x\n2\n")
    (tmp_path / "in" / "_c.csv").write_text("x\n3\n")
    (tmp_path / "in" / "_tmp" / "d.csv").write_text("x\n4\n")
    code, _out, err = _run(tmp_path, basic_job("in/**/*.csv"), capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").column("x").to_pylist() == [1]
