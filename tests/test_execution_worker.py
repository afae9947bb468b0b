"""worker.process_chunk on its own: the messages it puts on the writer queue and the counts it
reports, against the same file read with Python's csv module."""

from __future__ import annotations

import csv
import io
import queue as queue_mod

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.execution import worker
from pipeline.execution.worker import WorkerSettings, process_chunk
from pipeline.input.plan import build_plan
from pipeline.output.records import BAD_ROW_SAMPLES, REJECTS_FILE_SCHEMA, unspool
from pipeline.stages import STAGES
from tests.helpers import basic_job, write_job

ROWS = 300
BAD = {17, 150, 299}   # rows whose qty is not an integer


def _csv_text() -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "qty", "name"])
    for i in range(ROWS):
        w.writerow([i, "n/a" if i in BAD else i % 7, f"name, {i}"])
    return out.getvalue()


def _expected(stages: bool) -> list[dict]:
    """The good rows as Python's csv module reads them, filtered as ``qty > 2`` would."""
    rows = list(csv.DictReader(io.StringIO(_csv_text())))
    good = [{"id": int(r["id"]), "qty": int(r["qty"]), "name": r["name"]} for r in rows if r["qty"] != "n/a"]
    return [r for r in good if r["qty"] > 2] if stages else good


def _job(tmp_path, on_bad_rows: str, stages: bool):
    (tmp_path / "in.csv").write_text(_csv_text())
    job = basic_job("in.csv", input={"chunk_bytes": 1500, "schema": {"id": "int64", "qty": "int64"}},
                    stages=[{"filter": "qty > 2"}] if stages else [], run={"on_bad_rows": on_bad_rows})
    job = load_config(write_job(tmp_path, job), stages=STAGES)
    plan = build_plan(job)
    spool = tmp_path / "spool"
    spool.mkdir()
    spec = WorkerSettings(job_name=job.name, read=plan.read, stages=tuple((s.name, s.spec) for s in job.stages),
                      stage_keys=tuple(s.key for s in job.stages), base_dir=str(job.base_dir),
                      on_bad_rows=on_bad_rows, spool=str(spool))
    return plan, spec


def _drain(q: queue_mod.Queue) -> list[tuple]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


@pytest.mark.parametrize("on_bad_rows,stages", [("skip", False), ("skip", True), ("quarantine", False),
                                                ("quarantine", True)])
def test_chunks_give_the_rows_and_counts_of_the_file(tmp_path, queues, on_bad_rows, stages):
    plan, spec = _job(tmp_path, on_bad_rows, stages)
    assert len(plan.chunks) > 3
    data_q, events = queues(spec)
    got, rejects, results = [], [], []
    for chunk in plan.chunks:
        result = process_chunk((chunk, 3))
        messages = _drain(data_q)
        *parts, end = messages
        assert end == ("end", chunk.id, 3, len(parts), result)
        for kind, chunk_id, attempt, path, n in parts:
            assert (chunk_id, attempt) == (chunk.id, 3)
            table = unspool(path)
            assert table.num_rows == n
            (got if kind == "data" else rejects).append(table)
        assert [e[:3] for e in _drain(events)] == [("start", chunk.id, 3)]
        results.append(result)
    rows = pa.concat_tables(got).to_pylist()
    assert sorted(rows, key=lambda r: r["id"]) == _expected(stages)
    assert sum(r.rows_read for r in results) == ROWS
    assert sum(r.rows_written for r in results) == len(rows)
    assert sum(r.rows_rejected for r in results) == len(BAD)
    assert sum(r.rows_filtered for r in results) == (len(_expected(False)) - len(_expected(True)) if stages else 0)
    assert sum(r.bytes_read for r in results) == sum(c.nbytes for c in plan.chunks)
    samples = [b for r in results for b in r.bad_samples]
    assert sorted(b.line for b in samples) == sorted(i + 2 for i in BAD)     # header is line 1
    if on_bad_rows == "quarantine":
        table = pa.concat_tables(rejects)
        assert table.schema == REJECTS_FILE_SCHEMA
        assert sorted(table.column("line").to_pylist()) == sorted(i + 2 for i in BAD)
        assert all(raw.split(",")[1] == "n/a" for raw in table.column("raw").to_pylist())
    else:
        assert rejects == []


def test_bad_rows_fail_the_chunk_under_fail(tmp_path, queues):
    plan, spec = _job(tmp_path, "fail", False)
    queues(spec)
    chunk = next(c for c in plan.chunks if c.start <= _csv_text().index("\n150,") < c.end)
    with pytest.raises(InputError, match=r"in\.csv line 152: column 'qty'"):
        process_chunk((chunk, 1))


def test_samples_are_capped_per_chunk(tmp_path, queues):
    (tmp_path / "in.csv").write_text("id\n" + "x\n" * 20)
    job = load_config(write_job(tmp_path, basic_job("in.csv", input={"schema": {"id": "int64"}},
                                                    run={"on_bad_rows": "skip"})), stages=STAGES)
    plan = build_plan(job)
    spec = WorkerSettings(job_name=job.name, read=plan.read, stages=(), stage_keys=(), base_dir=str(tmp_path),
                      on_bad_rows="skip", spool=str(tmp_path))
    queues(spec)
    result = process_chunk((plan.chunks[0], 1))
    assert result.rows_rejected == 20 and len(result.bad_samples) == BAD_ROW_SAMPLES


def test_large_results_go_in_several_spool_files(tmp_path, queues, monkeypatch):
    monkeypatch.setattr(worker, "SPOOL_BYTES", 512)
    plan, spec = _job(tmp_path, "skip", False)
    data_q, _ = queues(spec)
    result = process_chunk((plan.chunks[0], 1))
    *parts, _end = _drain(data_q)
    assert len(parts) > 1 and result.messages == len(parts)
    assert sum(p[4] for p in parts) == result.rows_written


@pytest.mark.parametrize("text", [
    # five bad rows of 40,000 bytes each (not an integer), and a quote left open before 200,000 bytes
    "id\n" + "".join(f"{'x' * 40_000}{i}\n" for i in range(8)) + "1\n",
    'id\n1\n"' + "y" * 200_000 + "\n2\n",
])
def test_the_end_message_is_one_atomic_pipe_write_whatever_the_bad_rows(tmp_path, queues, text):
    """A worker killed while writing a message to the writer's pipe must not leave half of it there
    (the writer would read the next message as the rest). Writes of up to PIPE_BUF bytes are atomic,
    so the message that commits a chunk stays under it, however long its bad rows are."""
    import pickle
    import select

    from pipeline.output.records import MESSAGE_BYTES

    folder = tmp_path / ("a-long-folder-name-" * 8)
    folder.mkdir()
    (folder / "in.csv").write_text(text)
    job = load_config(write_job(tmp_path, basic_job(f"{folder.name}/in.csv", input={"schema": {"id": "int64"}},
                                                    run={"on_bad_rows": "quarantine"})), stages=STAGES)
    plan = build_plan(job)
    spec = WorkerSettings(job_name=job.name, read=plan.read, stages=(), stage_keys=(), base_dir=str(tmp_path),
                          on_bad_rows="quarantine", spool=str(tmp_path))
    data_q, _ = queues(spec)
    result = process_chunk((plan.chunks[0], 1))
    *_, end = _drain(data_q)
    assert end[0] == "end" and result.rows_rejected >= 1 and result.bad_samples
    assert len(pickle.dumps(end)) + 4 <= min(MESSAGE_BYTES + 4, select.PIPE_BUF)
    assert all(b.file.endswith("in.csv") and b.line for b in result.bad_samples)
