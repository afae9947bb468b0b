"""run.memory_limit: the chunk size, the chunks in flight and the writer's buffer follow from it,
and a run stays within it (summed PSS of its processes)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipeline.memory import CHUNK_FACTOR, MAX_CHUNK, MIB, PROCESS_BYTES, memory_plan, minimum
from tests.helpers import ROOT, basic_job, read_output, run_cli, write_job

STAGES = [{"filter": "status == 'ok' and qty > 0"}, {"derive": {"total": "price * qty"}},
          {"select": ["id", "country", "total"]}]


def _csv(path, rows: int) -> int:
    rng = np.random.default_rng(7)
    table = pa.table({
        "id": np.arange(rows), "country": pa.array(rng.choice(["DE", "FR", "US"], rows)),
        "price": np.round(rng.random(rows) * 100, 2), "qty": rng.integers(-1, 5, rows),
        "status": pa.array(rng.choice(["ok", "ok", "ok", "refunded"], rows)),
        "note": pa.array(rng.choice(["plain", "with, comma", 'a "quoted" word'], rows)),
    })
    pacsv.write_csv(table, path)
    return path.stat().st_size


def _chunks(out: str) -> int:
    return int(re.search(r"(\d+) chunks?, (\d+) workers?", out).group(1))


def test_the_sizes_follow_the_budget():
    default = memory_plan(None, 2)
    assert default.limit == 1 << 30 and default.chunk_bytes == MAX_CHUNK and default.in_flight == 8
    small = memory_plan(minimum(2), 2)
    assert small.chunk_bytes == MIB and small.in_flight == 2 and small.writer_buffer == 16 * MIB
    for limit in (320 * MIB, 400 * MIB, 600 * MIB, 2 << 30):
        plan = memory_plan(limit, 2)
        # what the formula promises fits in the budget
        used = PROCESS_BYTES * 4 + plan.writer_buffer + 2 * CHUNK_FACTOR * plan.chunk_bytes
        assert used <= limit
        assert plan.chunk_bytes >= memory_plan(limit - 50 * MIB, 2).chunk_bytes   # more memory, never smaller
    with pytest.raises(ValueError, match="at least"):
        memory_plan(minimum(4) - 1, 4)


def test_memory_limit_sets_the_chunk_size(tmp_path, capsys):
    size = _csv(tmp_path / "in.csv", 120_000)
    assert size > 4 * MIB
    counts = {}
    for limit in (None, "256MiB"):
        run = {"workers": 2} if limit is None else {"workers": 2, "memory_limit": limit}
        job = basic_job("in.csv", out=f"out-{limit}", run=run, stages=STAGES)
        code, out, err = run_cli("run", write_job(tmp_path, job, f"{limit}.yaml"), "--no-progress", capsys=capsys)
        assert code == 0, err
        counts[limit] = _chunks(out)
        got = read_output(tmp_path / f"out-{limit}")
        ref = duckdb.sql(f"select count(*), sum(price * qty) from read_csv('{tmp_path}/in.csv') "
                         f"where status = 'ok' and qty > 0").fetchall()[0]
        assert (got.num_rows, pytest.approx(sum(got.column("total").to_pylist()))) == ref
    # the default: chunks of at least 4 MiB (a small input is not cut finer); 256 MiB: 1 MiB chunks
    assert counts[None] <= math.ceil(size / (4 * MIB)) + 1
    assert counts["256MiB"] >= size // MIB


def test_too_small_a_memory_limit_is_a_config_error(tmp_path, capsys):
    _csv(tmp_path / "in.csv", 100)
    job = basic_job("in.csv", run={"workers": 2, "memory_limit": "100MiB"})
    path = write_job(tmp_path, job)
    code, _, err = run_cli("run", path, "--no-progress", capsys=capsys)
    assert code == 78
    assert "run.memory_limit: 100.0 MiB is too little for 2 worker(s)" in err and "at least 256 MiB" in err
    # a limit that rounds to no MiB at all is named in its own unit
    for written, shown in (("1KiB", "1.0 KiB"), ("500", "500 B"), ("0.1GiB", "102.4 MiB")):
        job["run"]["memory_limit"] = written
        code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
        assert code == 78 and f"run.memory_limit: {shown} is too little" in err, err


@pytest.mark.parametrize("chunk_bytes", [None, "64KiB"])
def test_a_memory_limit_too_small_for_the_workers_of_the_command_line_is_a_config_error(tmp_path, capsys,
                                                                                          chunk_bytes):
    _csv(tmp_path / "in.csv", 100 if chunk_bytes is None else 60_000)
    job = basic_job("in.csv", run={"workers": 2, "memory_limit": "300MiB"},
                    input={} if chunk_bytes is None else {"chunk_bytes": chunk_bytes})
    path = write_job(tmp_path, job)
    code, _, err = run_cli("run", path, "--no-progress", "--workers", "16", capsys=capsys)
    assert code == 78, err
    assert "run.memory_limit: 300.0 MiB is too little for 16 worker(s)" in err and "--workers" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_run_stays_within_its_memory_limit(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench import measure

    _csv(tmp_path / "in.csv", 1_500_000)
    limit = 320 * MIB
    job = basic_job("in.csv", run={"workers": 2, "memory_limit": "320MiB"}, stages=STAGES)
    path = write_job(tmp_path, job)
    m = measure.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"], cwd=str(tmp_path),
                    log_path=str(tmp_path / "log"), interval=0.01)
    assert m.returncode == 0, (tmp_path / "log").read_text()[-2000:]
    assert 0 < m.peak_pss <= limit, {k: v[0] // MIB for k, v in m.pss_at_peak.items()}


REUSE_PROBE = """
import resource, sys
from pipeline.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(60):
    # each block a little larger than the last freed one, as chunk texts are: glibc's own moving
    # threshold maps every one afresh and hands it back when it is freed
    block = bytearray((4 << 20) + i * 65536)
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    """Workers and the writer reuse the large blocks they free (memory.reuse_freed_memory): 60 blocks
    of 4 MiB cost a few thousand page faults instead of one per page of each block (61,000)."""
    faults = {}
    for mode in ("default", "reuse"):
        done = subprocess.run([sys.executable, "-c", REUSE_PROBE, mode], capture_output=True, text=True, check=True)
        applied, faults[mode] = done.stdout.split()
        faults[mode] = int(faults[mode])
    assert applied == "True"
    assert faults["default"] > 50 * 1024 and faults["reuse"] < faults["default"] / 5, faults
