"""The input columns a run reads: only those its stages need (``stages.columns_read``).

The reference is the run over every column: the stages given only the columns ``columns_read``
names must give the same rows, the same filtered and rejected counts and the same reasons.
Through the CLI, a value that fits no type in a column no stage reads rejects no row; the same
value in a column a stage reads still does.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.input.chunks import Chunk, ReadSpec
from pipeline.input.discover import InputFile
from pipeline.input.read import read_chunk
from pipeline.stages import StageContext, apply_stages, columns_read
from tests.helpers import read_output, run_subprocess

TABLE = pa.table({
    "a": pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.int64()),
    "b": pa.array(["x", "y", None, "x", "z", "x", "y", "w"]),
    "c": pa.array([0.5, None, 2.5, 3.5, 9.0, 1.0, None, 4.0]),
    "d": pa.array([None, 1, 2, 3, None, 5, 6, 7], pa.int64()),
    "e": pa.array(["1", "2", "three", "4", None, "6", "7x", "8"]),
})

# stages over the columns above (some refer to columns an earlier stage may have removed: such a
# list fails on every column as well, and is skipped)
POOL = [
    ("select", ["a", "b"]), ("select", ["c"]), ("select", ["e", "a"]), ("select", ["f"]), ("select", ["bb", "d"]),
    ("drop", ["e"]), ("drop", ["b", "c"]),
    ("rename", {"b": "bb"}), ("rename", {"a": "d", "d": "a"}),
    ("cast", {"e": "int64"}), ("cast", {"d": "string"}),
    ("filter", "a > 2"), ("filter", "b == 'x' or c > 2"),
    ("derive", {"f": "a * 2"}), ("derive", {"a": "d + 1", "g": "a + 1"}), ("derive", {"f": "1"}),
    ("fill_null", {"d": 0}), ("fill_null", {"b": "none"}),
    ("drop_nulls", ["c"]), ("drop_nulls", "all"), ("drop_nulls", None),
    ("validate", {"not_null": ["d"]}), ("validate", {"range": {"a": {"min": 2}}}),
    ("validate", {"allowed": {"b": ["x", "y"]}, "regex": {"e": "[0-9]+"}}), ("validate", {"expr": {"big": "c < 4"}}),
    ("sql", "SELECT a, b FROM chunk WHERE a > 1"), ("sql", "SELECT * FROM chunk WHERE c > 1"),
    ("sql", "SELECT d, count(*) AS n FROM chunk GROUP BY d"), ("sql", "SELECT a, f FROM chunk JOIN lk USING (b)"),
    ("sql", "SELECT * EXCLUDE (e) FROM chunk"), ("sql", "SELECT #2 AS x, a FROM chunk"),
]

# a lookup for the sql stages above: the query plans over it as over a table (see stages.sql.query_columns)
LOOKUP = pa.table({"b": ["x", "y", "q"], "f": [10, 20, 30]})
CONTEXT = StageContext(base_dir=Path("."), lookups_key=("columns-read-test",), load_lookups=lambda: {"lk": LOOKUP})


def _run(table: pa.Table, stages) -> tuple:
    result = apply_stages(table, stages, CONTEXT)
    return (result.table.to_pylist(), result.table.schema.names, result.rows_filtered, result.rows_rejected,
            result.rejects.to_pylist())


def test_the_stages_given_only_the_columns_they_read_give_what_they_give_on_every_column():
    rng = random.Random(12)
    narrowed = compared = sql_narrowed = 0
    for _ in range(1500):
        stages = [rng.choice(POOL) for _ in range(rng.randint(1, 5))]
        try:
            want = _run(TABLE, stages)
        except PipelineError:
            continue    # the list fails on every column (a column an earlier stage removed)
        read = columns_read(stages, TABLE.schema, CONTEXT)
        names = TABLE.column_names if read is None else [n for n in TABLE.column_names if n in read]
        if read is not None and len(names) < TABLE.num_columns:
            narrowed += 1
            sql_narrowed += any(name == "sql" for name, _ in stages)
        got = _run(TABLE.select(names or ["a"]), stages)
        assert got == want, f"{stages}: read {names}"
        compared += 1
    assert compared > 200 and narrowed > 100 and sql_narrowed > 20, (compared, narrowed, sql_narrowed)


@pytest.mark.parametrize("query, read", [
    ("SELECT a, c * 2 AS c2 FROM chunk WHERE b = 'x'", {"a", "b", "c"}),
    ("SELECT count(*) AS n FROM chunk", {"a"}),                        # DuckDB counts the rows of one column
    ("SELECT a, f FROM chunk JOIN lk USING (b)", {"a", "b"}),          # the lookup's columns are not the chunk's
    ("SELECT a FROM chunk t1 JOIN chunk t2 USING (a)", {"a"}),
    ("WITH t AS (SELECT a, d FROM chunk) SELECT a FROM t WHERE d > 1", {"a", "d"}),
    ("SELECT b, sum(c) OVER (PARTITION BY d ORDER BY a) AS s FROM chunk", {"a", "b", "c", "d"}),
    ("SELECT * FROM chunk", set("abcde")),
    ("SELECT to_json(chunk) AS j FROM chunk", set("abcde")),
    ("SELECT * EXCLUDE (e) FROM chunk", None),      # needs e to be there to leave it out
    ("SELECT a FROM (SELECT a, b FROM chunk)", None),   # the planner drops b, the binder still needs it
    ("SELECT #2 AS x, b FROM chunk", None),         # a position means another column in fewer columns
    ("SELECT 1 AS one", None),                      # reads no column of the chunk
])
def test_a_sql_stage_reads_the_columns_its_query_reads(query, read):
    got = columns_read([("sql", query)], TABLE.schema, CONTEXT)
    assert got == (None if read is None else frozenset(read))
    # without the input's schema, a sql stage may read any column
    assert columns_read([("sql", query)]) is None
    want = _run(TABLE, [("sql", query)])
    assert _run(TABLE.select([n for n in TABLE.column_names if got is None or n in got]), [("sql", query)]) == want


def test_a_stage_that_may_read_any_column_reads_every_column_unless_a_select_comes_before_it():
    assert columns_read([("filter", "a > 1"), ("sql", "SELECT a FROM chunk")]) is None
    assert columns_read([("select", ["a", "b"]), ("sql", "SELECT a FROM chunk")]) == {"a", "b"}
    assert columns_read([("filter", "a > 1")]) is None   # the output keeps every column
    assert columns_read([("filter", "a > c"), ("derive", {"t": "b * 2"}), ("select", ["t", "d"])]) == {"a", "b", "c", "d"}


def _sales(path: Path, bad_note_row: int | None = None, bad_qty_row: int | None = None) -> list[list[str]]:
    rows = [["id", "qty", "price", "note", "code"]]
    for i in range(1, 41):
        note = "n/a" if i == bad_note_row else str(i * 7)
        qty = "many" if i == bad_qty_row else str(i % 5)
        rows.append([str(i), qty, f"{i * 1.5:.2f}", note, f"c{i % 3}"])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return rows


def _job(tmp: Path, paths: list[str], stages: str, schema: str = "", fmt: str = "csv") -> Path:
    job = tmp / "job.yaml"
    job.write_text(f"name: cols\ninput:\n  paths: {paths}\n  format: {fmt}\n{schema}stages:\n{stages}"
                   f"output:\n  path: {tmp / 'out'}\n  mode: overwrite\nrun:\n  workers: 2\n  on_bad_rows: quarantine\n")
    return job


def _output(tmp: Path) -> pa.Table:
    return read_output(tmp / "out").sort_by("id")


def test_a_bad_value_in_a_column_no_stage_reads_rejects_no_row(tmp_path):
    rows = _sales(tmp_path / "in.csv", bad_note_row=7)
    schema = "  schema: {note: int64}\n"
    stages = "  - filter: \"qty > 0\"\n  - derive: {total: \"price * qty\"}\n  - select: [id, total]\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.csv")], stages, schema)), "--no-progress")
    assert res.returncode == 0, res.stderr
    # the reference: Python's csv module and the same arithmetic
    want = [{"id": int(r[0]), "total": float(r[2]) * int(r[1])} for r in rows[1:] if int(r[1]) > 0]
    assert _output(tmp_path).to_pylist() == want
    assert not (tmp_path / "out" / "_rejects").exists()
    assert "the stages read 3 of the 5 input columns; not converted: note, code" in res.stderr

    # the stages read the column: the row is rejected, named by file and line
    stages = "  - filter: \"qty > 0 and note > 0\"\n  - select: [id]\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.csv")], stages, schema)), "--no-progress")
    assert res.returncode == 0, res.stderr
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert [(r["line"], r["raw"]) for r in rejects] == [(8, ",".join(rows[7]))]
    assert "note" in rejects[0]["reason"]


def test_a_record_with_too_few_fields_is_rejected_whatever_the_columns_read(tmp_path):
    (tmp_path / "in.csv").write_text("id,qty,note\n1,2,a\n2,3\n3,4,c\n")
    stages = "  - select: [id]\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.csv")], stages)), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert _output(tmp_path).column("id").to_pylist() == [1, 3]
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert [r["line"] for r in rejects] == [3]


def test_a_parquet_input_gives_only_the_columns_read_and_their_rows(tmp_path):
    rows = _sales(tmp_path / "in.csv")
    table = pacsv.read_csv(tmp_path / "in.csv")
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=7)
    stages = "  - filter: \"qty > 1\"\n  - select: [code, id]\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.parquet")], stages, fmt="parquet")), "--no-progress")
    assert res.returncode == 0, res.stderr
    want = [{"code": r[4], "id": int(r[0])} for r in rows[1:] if int(r[1]) > 1]
    assert _output(tmp_path).to_pylist() == sorted(want, key=lambda r: r["id"])

    # what the workers read: the two columns the stages read of the file's five, and every row
    f = InputFile(str(tmp_path / "in.parquet"), "parquet", None, (tmp_path / "in.parquet").stat().st_size, 0)
    spec = ReadSpec(schema=table.schema).narrowed(frozenset({"qty", "id"}))
    chunk = Chunk("c", f, 0, 0, 0, row_groups=(0, 1, 2, 3, 4, 5))
    got = pa.concat_tables(b.table for b in read_chunk(chunk, spec))
    assert got.equals(pq.read_table(tmp_path / "in.parquet", columns=["id", "qty"]))


@pytest.mark.parametrize("read", [frozenset(), frozenset({"zzz"})])
def test_with_no_column_read_the_first_column_still_carries_the_rows(tmp_path, read):
    spec = ReadSpec(schema=pa.schema([("id", pa.int64()), ("x", pa.string())])).narrowed(read)
    assert spec.read_schema.names == ["id"]
    (tmp_path / "in.csv").write_text("id,x\n1,a\n2,b\n")
    stages = "  - derive: {one: \"1\"}\n  - select: [one]\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.csv")], stages)), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert read_output(tmp_path / "out").column("one").to_pylist() == [1, 1]


@pytest.mark.parametrize("keep", [["id", "region"], ["id"]])
def test_a_hive_partition_column_is_filled_when_a_stage_reads_it_and_left_out_when_none_does(tmp_path, keep):
    want = []
    for region in ("eu", "us"):
        folder = tmp_path / "in" / f"region={region}"
        folder.mkdir(parents=True)
        rows = _sales(folder / "part.csv")
        want += [{"id": int(r[0]), "region": region} for r in rows[1:] if int(r[1]) > 2]
    stages = f"  - filter: \"qty > 2\"\n  - select: {keep}\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in" / "*" / "*.csv")], stages)), "--no-progress")
    assert res.returncode == 0, res.stderr
    got = read_output(tmp_path / "out")
    assert got.column_names == keep
    assert sorted(got.to_pylist(), key=lambda r: (r["id"], r.get("region"))) == \
        sorted(({k: r[k] for k in keep} for r in want), key=lambda r: (r["id"], r.get("region")))


def test_json_lines_keys_no_stage_reads_are_skipped_and_reject_no_row(tmp_path):
    import json

    records = [{"id": i, "qty": i % 5, "price": i * 1.5, "note": i * 7, "code": f"c{i % 3}"} for i in range(1, 41)]
    records[6]["note"] = {"not": "a number"}      # another kind of value, in a key no stage reads
    records[29]["late"] = "a key the type sample never met"
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    sample = "  sample_bytes: 1500\n"           # the first 20 or so lines
    stages = "  - filter: \"qty > 0\"\n  - derive: {total: \"price * qty\"}\n  - select: [id, total]\n"
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.jsonl")], stages, sample, fmt="jsonl")),
                         "--no-progress")
    assert res.returncode == 0, res.stderr
    # the reference: Python's json module and the same arithmetic
    lines = (tmp_path / "in.jsonl").read_text().splitlines()
    want = [{"id": r["id"], "total": r["price"] * r["qty"]} for r in map(json.loads, lines) if r["qty"] > 0]
    assert _output(tmp_path).to_pylist() == want
    assert not (tmp_path / "out" / "_rejects").exists()

    # every key read (no select): both records are bad rows, named by line and key
    res = run_subprocess("run", str(_job(tmp_path, [str(tmp_path / "in.jsonl")], "  - filter: \"qty > 0\"\n",
                                         sample, fmt="jsonl")), "--no-progress")
    assert res.returncode == 0, res.stderr
    rejects = sorted(pq.read_table(tmp_path / "out" / "_rejects").to_pylist(), key=lambda r: r["line"])
    assert [(r["line"], r["raw"]) for r in rejects] == [(7, lines[6]), (30, lines[29])]
    assert rejects[0]["reason"] == "key 'note' holds an object, not a number as its column's type"
    assert rejects[1]["reason"].startswith("key 'late' is not in the input schema")
    kept = [r["id"] for i, r in enumerate(records) if r["qty"] > 0 and i not in (6, 29)]
    assert _output(tmp_path).column("id").to_pylist() == kept
