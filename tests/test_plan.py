"""Planning is pure: files -> chunks and a schema, with stable chunk ids."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import load_config
from pipeline.input import boundaries
from pipeline.input.plan import build_plan
from pipeline.input.read import dialect_of
from pipeline.stages import STAGES
from tests.helpers import basic_job, write_job


def _plan(tmp_path, job):
    return build_plan(load_config(write_job(tmp_path, job), stages=STAGES))


def test_text_chunks_cover_the_file_and_ids_are_stable(tmp_path):
    body = "".join(f'{i},"note\n{i}"\n' for i in range(3000))
    (tmp_path / "a.csv").write_text("id,note\n" + body)
    job = basic_job("a.csv", input={"chunk_bytes": 4096})
    first = _plan(tmp_path, job)
    again = _plan(tmp_path, job)
    assert [c.id for c in first.chunks] == [c.id for c in again.chunks]
    assert len(first.chunks) > 5 and len({c.id for c in first.chunks}) == len(first.chunks)
    size = (tmp_path / "a.csv").stat().st_size
    assert first.chunks[0].start == len("id,note\n") and first.chunks[-1].end == size
    for a, b in zip(first.chunks, first.chunks[1:]):
        assert a.end == b.start
    assert first.chunks[0].first_line == 2
    assert all(c.cut and c.first_line == 0 for c in first.chunks[1:])
    # the records each chunk reads are the file's records, each once (boundaries found by the reader)
    data = (tmp_path / "a.csv").read_bytes()
    table = boundaries.StateTable()
    pieces = [boundaries.locate(c, dialect_of(c, first.read), table) for c in first.chunks]
    assert b"".join(p.data for p in pieces) == data[len("id,note\n"):]
    assert all(p.data.count(b'"') % 2 == 0 for p in pieces)
    from pipeline.input.split import line_at

    for p in pieces:
        assert line_at(str(tmp_path / "a.csv"), p.start) == data.count(b"\n", 0, p.start) + 1

def test_compressed_files_are_one_chunk_and_parquet_splits_by_row_groups(tmp_path):
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"id\n" + b"1\n" * 10000))
    pq.write_table(pa.table({"id": list(range(1000))}), tmp_path / "b.parquet", row_group_size=100)
    plan = _plan(tmp_path, basic_job(["a.csv.gz", "b.parquet"], input={"chunk_bytes": 1000}))
    by_format = {}
    for c in plan.chunks:
        by_format.setdefault(c.file.format, []).append(c)
    assert len(by_format["csv"]) == 1 and by_format["csv"][0].end == -1
    groups = [g for c in by_format["parquet"] for g in c.row_groups]
    assert groups == list(range(10)) and len(by_format["parquet"]) > 1


def test_schema_is_decided_once_and_user_types_win(tmp_path):
    (tmp_path / "a.csv").write_text("id,price,day\n1,2.5,2026-11-01\n")
    (tmp_path / "b.csv").write_text("id,price,day\n2,3,2026-11-02 10:00:00\n")
    plan = _plan(tmp_path, basic_job(["a.csv", "b.csv"], input={"schema": {"id": "string"}}))
    types = {f.name: f.type for f in plan.read.schema}
    assert types == {"id": pa.string(), "price": pa.float64(), "day": pa.timestamp("s")}
    assert plan.inferred["id"] == "input.schema" and plan.inferred["price"] == "inferred"


def test_workers_never_exceed_chunks(tmp_path):
    (tmp_path / "a.csv").write_text("id\n1\n")
    assert _plan(tmp_path, basic_job("a.csv", run={"workers": 8})).workers == 1


def test_default_chunk_size_gives_every_worker_several_chunks(tmp_path):
    from pipeline.input.plan import MAX_AUTO_CHUNK, MIN_AUTO_CHUNK, chunk_size

    (tmp_path / "a.csv").write_text("id\n" + "1234567\n" * 3_000_000)   # 24 MB
    job = load_config(write_job(tmp_path, basic_job("a.csv", run={"workers": 2})), stages=STAGES)
    size = chunk_size(job, build_plan(job).total_bytes, 2)
    assert MIN_AUTO_CHUNK <= size <= MAX_AUTO_CHUNK
    assert len(build_plan(job).chunks) >= 4
    pinned = load_config(write_job(tmp_path, basic_job("a.csv", input={"chunk_bytes": "1MiB"})), stages=STAGES)
    assert chunk_size(pinned, 0, 2) == 1 << 20


def test_headers_of_many_files_and_of_a_header_longer_than_the_probe(tmp_path):
    """The header is read from a short prefix of a file when it ends there, else from the whole head;
    names of a header met before are reused. The names equal pyarrow's reading of each file."""
    import pyarrow.csv as pacsv

    (tmp_path / "in").mkdir()
    wide = [f"column_with_a_long_name_{i}" for i in range(4000)]       # a header of about 110 KB
    (tmp_path / "in" / "a_wide.csv").write_text(",".join(wide) + "\n" + ",".join("1" * 4000) + "\n")
    for i in range(30):
        (tmp_path / "in" / f"b{i:02d}.csv").write_text("id,note\n" + "".join(f'{j},"x\n{j}"\n' for j in range(2000)))
    job = basic_job("in/b*.csv", input={"allow_missing_columns": True})
    plan = _plan(tmp_path, job)
    assert plan.read.schema.names == pacsv.read_csv(tmp_path / "in" / "b00.csv").column_names
    plan = _plan(tmp_path, basic_job("in/a_wide.csv"))
    assert plan.read.schema.names == wide
    # longer than the first probe (4 KiB), shorter than the second; a quoted name holds a newline
    middle = [f'"name {i}\nof row"' if i == 300 else f"name_{i:03d}" for i in range(600)]
    (tmp_path / "in" / "c_middle.csv").write_text(",".join(middle) + "\n" + (",".join("2" * 600) + "\n") * 50)
    plan = _plan(tmp_path, basic_job("in/c_middle.csv"))
    assert plan.read.schema.names == pacsv.read_csv(tmp_path / "in" / "c_middle.csv").column_names
