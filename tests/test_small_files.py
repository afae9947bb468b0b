"""Many small files: the local executor sends several small chunks to a worker as one task, and
their rows to the writer in one spool file. Each chunk still counts, fails and is retried alone,
and a worker killed in the middle of a queue write never leaves the run waiting."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.config import load_config
from pipeline.execution.executor import GROUP_CHUNKS, group_small
from pipeline.execution.worker import WorkerSettings, process_chunks
from pipeline.input.plan import build_plan
from pipeline.output.records import Shared, SpoolFiles
from pipeline.stages import STAGES
from tests.helpers import basic_job, manifest_of, read_output, run_subprocess, write_job

KILLER = '''
import os, time

def stage(df, die_on=-1, seconds=0.0):
    if (df["id"] == die_on).any():
        os.kill(os.getpid(), 9)
    time.sleep(seconds)
    return df
'''


def _write_files(folder: Path, n: int, seed: int = 7) -> None:
    """Small CSV files written by Python's csv module: quoted commas, quoted newlines, empty values."""
    rng = random.Random(seed)
    folder.mkdir(exist_ok=True)
    next_id = 0
    for k in range(n):
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["id", "name", "value"])
        for _ in range(rng.randint(0, 30)):
            name = rng.choice(["plain", "a, comma", "two\nlines", 'say "hi"', ""])
            w.writerow([next_id, name, rng.choice(["", f"{rng.random():.3f}"])])
            next_id += 1
        (folder / f"part-{k:04d}.csv").write_text(out.getvalue())


def _by_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["id"])


def _reference(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"id": pa.int64(), "name": pa.string(), "value": pa.float64()},
            strings_can_be_null=True, quoted_strings_can_be_null=True))
        rows += table.to_pylist()
    return _by_id(rows)


def _job(tmp_path: Path, n: int, **run) -> Path:
    _write_files(tmp_path / "in", n)
    (tmp_path / "killer.py").write_text(KILLER)
    params = {k: run.pop(k) for k in ("die_on", "seconds") if k in run}
    stages = [{"python": {"function": "killer:stage", "params": params}}] if params else []
    job = basic_job("in/*.csv", input={"schema": {"id": "int64", "name": "string", "value": "double"}},
                    stages=stages, run={"workers": 2, **run})
    return write_job(tmp_path, job)


def test_group_small_packs_consecutive_chunks_up_to_the_target():
    class C:
        def __init__(self, nbytes):
            self.nbytes = nbytes

    sizes = [10, 20, 30, 100, 5, 5, 90, 1, 1]
    groups = group_small([C(s) for s in sizes], 100)
    assert [[c.nbytes for c in g] for g in groups] == [[10, 20, 30], [100], [5, 5, 90], [1, 1]]
    many = group_small([C(1) for _ in range(GROUP_CHUNKS * 2 + 1)], 10**9)
    assert [len(g) for g in many] == [GROUP_CHUNKS, GROUP_CHUNKS, 1]


def test_many_small_files_give_exactly_the_rows_pyarrow_reads(tmp_path):
    config = _job(tmp_path, 300)
    proc = run_subprocess("run", config, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert _by_id(read_output(tmp_path / "out").to_pylist()) == _reference(tmp_path / "in")
    manifest = manifest_of(tmp_path / "out")
    assert manifest["chunks"] == 300 - sum(1 for p in (tmp_path / "in").glob("*.csv")
                                           if p.read_text().count("\n") == 1)
    assert not list((tmp_path / "out").rglob("*.arrow"))


def test_a_worker_killed_on_one_small_file_costs_only_that_file(tmp_path):
    # no retries: every chunk blamed for the death would be quarantined whole
    config = _job(tmp_path, 80, die_on=40, retries=0, on_bad_rows="quarantine")
    proc = run_subprocess("run", config, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    expected = _reference(tmp_path / "in")
    killer = next(p for p in sorted((tmp_path / "in").glob("*.csv"))
                  if 40 in pacsv.read_csv(p).column("id").to_pylist())
    lost = {r["id"] for r in pacsv.read_csv(killer).to_pylist()}
    written = _by_id(read_output(tmp_path / "out").to_pylist())
    assert written == [r for r in expected if r["id"] not in lost]
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert {r["file"] for r in rejects} == {str(killer)}
    assert len(rejects) == len(lost)
    assert "retrying" in proc.stderr


def test_chunk_timeout_counts_each_small_file_from_its_own_start(tmp_path):
    # 24 files of 0.15 s each in one task: the task runs far longer than the timeout, no chunk does
    config = _job(tmp_path, 24, seconds=0.15, chunk_timeout="1s", retries=0)
    proc = run_subprocess("run", config, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "timed out" not in proc.stderr
    assert _by_id(read_output(tmp_path / "out").to_pylist()) == _reference(tmp_path / "in")


def test_a_task_of_small_chunks_sends_one_spool_file_that_the_writer_reads_per_chunk(tmp_path, queues):
    config = _job(tmp_path, 12)
    job = load_config(config, stages=STAGES)
    plan = build_plan(job)
    spool = tmp_path / "spool"
    spool.mkdir()
    spec = WorkerSettings(job_name=job.name, read=plan.read, stages=(), stage_keys=(), base_dir=str(job.base_dir),
                          on_bad_rows="skip", spool=str(spool))
    data, events = queues(spec)
    results = process_chunks(tuple((c, 1) for c in plan.chunks))
    messages = []
    while not data.empty():
        messages.append(data.get_nowait())
    starts = []
    while not events.empty():
        starts.append(events.get_nowait())
    assert [s[1] for s in starts] == [c.id for c in plan.chunks]
    refs = [m[3] for m in messages if m[0] == "data"]
    assert refs and all(isinstance(r, Shared) for r in refs)
    assert len({r.path for r in refs}) == 1 and len(list(spool.iterdir())) == 1
    files = SpoolFiles()
    rows = []
    for ref in refs:
        rows += files.read(ref).to_pylist()
        files.release(ref)
    assert not list(spool.iterdir())   # deleted with the last chunk that had rows in it
    assert _by_id(rows) == _reference(tmp_path / "in")
    ends = [m for m in messages if m[0] == "end"]
    assert [m[1] for m in ends] == [c.id for c in plan.chunks]
    assert sum(r.rows_written for r in results) == len(rows)


LOCK_HOLDER = '''
import os, pathlib
from pipeline.execution import worker

def die_holding(df, marker):
    # the first worker to read row 40 dies holding the start queue's write lock, as one killed in
    # the middle of announcing a chunk would
    if (df["id"] == 40).any() and not pathlib.Path(marker).exists():
        pathlib.Path(marker).touch()
        worker._STATE["events"]._wlock.acquire()
        os.kill(os.getpid(), 9)
    return df
'''


def test_a_worker_killed_holding_the_start_queue_lock_does_not_hang_the_run(tmp_path):
    # (the channel to the writer has no lock to hold: tests/test_channel.py kills its senders mid-write)
    _write_files(tmp_path / "in", 60)
    (tmp_path / "holder.py").write_text(LOCK_HOLDER)
    job = basic_job("in/*.csv", input={"schema": {"id": "int64", "name": "string", "value": "double"},
                                       "chunk_bytes": 2000},
                    stages=[{"python": {"function": "holder:die_holding",
                                        "params": {"marker": str(tmp_path / "died")}}}],
                    run={"workers": 2, "retries": 1})
    proc = run_subprocess("run", write_job(tmp_path, job), "--no-progress", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "died").exists() and "SIGKILL" in proc.stderr
    assert _by_id(read_output(tmp_path / "out").to_pylist()) == _reference(tmp_path / "in")


def test_both_workers_read_small_files_at_the_same_time(tmp_path):
    """Two tasks of small files run side by side: the parent's bound on the work in flight counts
    input bytes, so one task of many small chunks does not hold the other back."""
    import sqlite3

    config = _job(tmp_path, 120, seconds=0.03)   # about 4 s of stage time in all, in two tasks
    proc = run_subprocess("run", config, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(tmp_path / ".pipeline-state" / "state.db")
    spans: dict[int, list[float]] = {}
    for pid, started, seconds in db.execute("SELECT pid, started, seconds FROM chunks"):
        span = spans.setdefault(pid, [started, started + seconds])
        span[0], span[1] = min(span[0], started), max(span[1], started + seconds)
    assert len(spans) == 2, spans
    (a0, a1), (b0, b1) = spans.values()
    assert min(a1, b1) - max(a0, b0) > 0.5   # they overlap by most of their length


def test_many_small_files_compressed_or_json_lines_give_the_rows_pyarrow_reads(tmp_path):
    """The streamed plan and the grouped tasks with gzip files among plain ones, and with JSON Lines."""
    import gzip
    import json

    import pyarrow.json as pajson

    _write_files(tmp_path / "in", 40, seed=11)
    for path in sorted((tmp_path / "in").glob("*.csv"))[::2]:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    job = basic_job(["in/*.csv", "in/*.csv.gz"], input={"schema": {"id": "int64", "name": "string", "value": "double"}},
                    run={"workers": 2})
    proc = run_subprocess("run", write_job(tmp_path, job), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    expected = []
    for path in sorted((tmp_path / "in").iterdir()):
        expected += pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"id": pa.int64(), "name": pa.string(), "value": pa.float64()},
            strings_can_be_null=True, quoted_strings_can_be_null=True)).to_pylist()
    assert _by_id(read_output(tmp_path / "out").to_pylist()) == _by_id(expected)

    (tmp_path / "js").mkdir()
    for k in range(30):
        rows = [{"id": k * 100 + i, "name": f"n\n{i}", "value": i / 4} for i in range(k % 5)]
        (tmp_path / "js" / f"p{k:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = basic_job("js/*.jsonl", out="out2", input={"schema": {"id": "int64", "name": "string", "value": "double"}},
                    run={"workers": 2})
    proc = run_subprocess("run", write_job(tmp_path, job, "job2.yaml"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    expected = []
    for path in sorted((tmp_path / "js").glob("*.jsonl")):
        if path.stat().st_size:
            expected += pajson.read_json(path).to_pylist()
    assert _by_id(read_output(tmp_path / "out2").to_pylist()) == _by_id(expected)
