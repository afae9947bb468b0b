"""Faults through real processes: killed workers, signals, the lock, process titles, a full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import basic_job, manifest_of, read_output, sort_rows, write_job

# unique per test process: the tests find their processes by title, and other test runs may share the machine
NAME = f"faults-{os.getpid()}-job"

SLOW_STAGE = '''
import os, time, pathlib

def slow(df, seconds, die_on=None, mode="kill", marker_dir=None):
    if marker_dir:
        pathlib.Path(marker_dir, f"busy-{os.getpid()}").touch()
    if die_on is not None and (df["id"] == die_on).any():
        if mode == "kill":
            os.kill(os.getpid(), 9)
        elif mode == "exit":
            os._exit(3)
        elif mode == "hang":
            time.sleep(3600)
    time.sleep(seconds)
    return df
'''


def _job_dir(tmp_path: Path, rows: int = 400, chunk_bytes: int = 600, **python) -> Path:
    lines = "".join(f"{i},name {i},{i * 0.5}\n" for i in range(rows))
    (tmp_path / "in.csv").write_text("id,name,value\n" + lines)
    (tmp_path / "slow.py").write_text(SLOW_STAGE)
    params = {"seconds": python.pop("seconds", 0.05)}
    params.update(python)
    job = basic_job("in.csv", name=NAME, input={"chunk_bytes": chunk_bytes},
                    stages=[{"python": {"function": "slow:slow", "params": params}}],
                    run={"workers": 2, "retries": 2})
    return write_job(tmp_path, job)


_SESSIONS: set[int] = set()   # the sessions of the runs these tests started


def _start(config: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _SESSIONS.add(proc.pid)
    return proc


def _pids_titled(text: str) -> list[int]:
    """Processes of the runs started here (by session, which outlives a dead parent) with this title.

    Other test runs on the machine may run jobs of the same name: their processes never count.
    """
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        pid, sid, args = line.split(None, 2)
        if text in args and int(sid) in _SESSIONS:
            found.append(int(pid))
    return found


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _expected_rows(tmp_path: Path) -> list[dict]:
    import pyarrow.csv as pacsv

    return sort_rows(pacsv.read_csv(tmp_path / "in.csv").to_pylist())


def test_process_titles_name_job_and_role(tmp_path):
    config = _job_dir(tmp_path, seconds=0.3)
    proc = _start(config)
    try:
        workers = _wait_for(lambda: len(_pids_titled(f"pipeline: {NAME} worker")) == 2
                            and _pids_titled(f"pipeline: {NAME} worker"))
        writers = _wait_for(lambda: _pids_titled(f"pipeline: {NAME} writer"))
        assert len(workers) == 2 and len(writers) == 1
    finally:
        proc.kill()
        proc.wait()


def test_worker_killed_mid_run_gives_the_same_output_as_a_clean_run(tmp_path):
    config = _job_dir(tmp_path, seconds=0.3, marker_dir=str(tmp_path))
    proc = _start(config)
    # the stage also runs once in the parent (on an empty table, to learn its schema)
    busy = _wait_for(lambda: [p for p in tmp_path.glob("busy-*") if p.name != f"busy-{proc.pid}"])
    os.kill(int(busy[0].name.split("-")[1]), signal.SIGKILL)  # a worker in the middle of a chunk
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "retrying" in err and "SIGKILL" in err
    assert sort_rows(read_output(tmp_path / "out").to_pylist()) == _expected_rows(tmp_path)
    counts = manifest_of(tmp_path / "out")["counts"]
    assert counts["rows_read"] == counts["rows_written"] == 400


@pytest.mark.parametrize("mode", ["kill", "exit"])
def test_chunk_that_kills_every_worker_fails_with_65_naming_the_range(tmp_path, mode):
    config = _job_dir(tmp_path, seconds=0.0, die_on=123, mode=mode)
    proc = _start(config)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 65, err
    assert "in.csv (bytes " in err and "on every one of 3 attempts" in err
    assert not (tmp_path / "out").exists()


def test_poison_chunk_is_quarantined_whole_under_quarantine(tmp_path):
    config = _job_dir(tmp_path, seconds=0.0, die_on=123)
    proc = _start(config, "--set", "run.on_bad_rows=quarantine")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    written = read_output(tmp_path / "out").column("id").to_pylist()
    assert 123 not in written
    assert any(r["raw"].startswith("123,") for r in rejects)
    assert all(r["stage"] == "worker" for r in rejects)
    counts = manifest_of(tmp_path / "out")["counts"]
    assert counts["rows_read"] == 400 == counts["rows_written"] + counts["rows_rejected"]
    assert counts["rows_rejected"] == len(rejects)


def test_chunk_timeout_kills_and_reports(tmp_path):
    config = _job_dir(tmp_path, seconds=0.0, die_on=123, mode="hang")
    proc = _start(config, "--set", "run.chunk_timeout=1s", "--set", "run.retries=1")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 65, err
    assert "timed out after 1 s" in err


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_run_cleanly(tmp_path, signum, code):
    config = _job_dir(tmp_path, seconds=0.5)
    proc = _start(config)
    _wait_for(lambda: _pids_titled(f"pipeline: {NAME} worker"))
    time.sleep(0.5)
    started = time.monotonic()
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)   # Ctrl-C reaches the whole process group
    else:
        proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.count("interrupted") == 1
    assert not (tmp_path / "out").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.staging")] == []
    time.sleep(0.5)
    assert _pids_titled(f"pipeline: {NAME}") == []


def test_parent_sigkill_leaves_no_process_and_next_run_succeeds(tmp_path):
    config = _job_dir(tmp_path, seconds=0.5)
    proc = _start(config)
    _wait_for(lambda: _pids_titled(f"pipeline: {NAME} writer"))
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    _wait_for(lambda: _pids_titled(f"pipeline: {NAME}") == [], timeout=10)
    config2 = _job_dir(tmp_path, seconds=0.0)
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config2), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed stale staging" in done.stderr
    assert sort_rows(read_output(tmp_path / "out").to_pylist()) == _expected_rows(tmp_path)


def test_second_run_of_the_same_job_exits_75_naming_the_holder(tmp_path):
    config = _job_dir(tmp_path, seconds=0.5)
    first = _start(config)
    _wait_for(lambda: _pids_titled(f"pipeline: {NAME} worker"))
    second = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 75
    assert f"pid {first.pid}" in second.stderr
    first.kill()
    first.wait()


def test_full_disk_exits_74_and_keeps_the_previous_output(tmp_path):
    config = _job_dir(tmp_path, rows=20000, chunk_bytes=100_000, seconds=0.0)
    assert subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                          capture_output=True, timeout=120).returncode == 0
    before = manifest_of(tmp_path / "out")
    # RLIMIT_FSIZE makes every write past 128 KiB fail with EFBIG in the run and all its children
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (131072, 131072)); "
              "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "run", str(config), "--no-progress",
                           "--set", "output.compression=none"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 74, done.stderr
    assert "File too large" in done.stderr and "state store" not in done.stderr
    assert manifest_of(tmp_path / "out") == before
    assert sort_rows(read_output(tmp_path / "out").to_pylist()) == _expected_rows(tmp_path)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.staging")] == []


def test_a_spool_file_that_cannot_be_written_exits_74_naming_the_staging_area(tmp_path):
    """A worker's spool file (its rows on their way to the writer) past the file size limit: the
    run fails as an output problem (exit 74, not a stage error), and leaves no staging behind."""
    (tmp_path / "in.csv").write_text("id,name,v\n" + "".join(f"{i},name {i},{i * 0.5}\n" for i in range(60000)))
    config = write_job(tmp_path, basic_job("in.csv", input={"chunk_bytes": "1MiB"}, output={"compression": "none"}))
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (131072, 131072)); "
              "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "run", str(config), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 74, done.stderr
    assert "cannot write to the output's staging area" in done.stderr and "File too large" in done.stderr
    assert not (tmp_path / "out").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.staging")] == []


RAISING_STAGE = '''
import pandas as pd

def boom(df):
    if (df["id"] == 123).any():
        raise ValueError("no good at 123")
    return df

def unpicklable(df):
    df = df.copy()
    df["f"] = [lambda: 1] * len(df)
    return df
'''


@pytest.mark.parametrize("function,words", [("boom", "ValueError: no good at 123"), ("unpicklable", "f")])
def test_stage_that_raises_or_returns_junk_is_reported_not_hung(tmp_path, function, words):
    lines = "".join(f"{i},name {i}\n" for i in range(400))
    (tmp_path / "in.csv").write_text("id,name\n" + lines)
    (tmp_path / "bad.py").write_text(RAISING_STAGE)
    job = basic_job("in.csv", name=NAME, input={"chunk_bytes": 600},
                    stages=[{"python": {"function": f"bad:{function}"}}], run={"workers": 2})
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(write_job(tmp_path, job)), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "stages[0].python" in done.stderr and "in.csv" in done.stderr and words in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_writer_killed_mid_run_fails_74_and_publishes_nothing(tmp_path):
    config = _job_dir(tmp_path, seconds=0.2)
    proc = _start(config)
    writer = _wait_for(lambda: _pids_titled(f"pipeline: {NAME} writer"))[0]
    time.sleep(0.3)
    os.kill(writer, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 74, err
    assert "writer process died" in err
    assert not (tmp_path / "out").exists()
    time.sleep(0.5)
    assert _pids_titled(f"pipeline: {NAME}") == []


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods_give_identical_output(tmp_path, method):
    config = _job_dir(tmp_path, seconds=0.0)
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress",
                           "--set", f"run.start_method={method}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sort_rows(read_output(tmp_path / "out").to_pylist()) == _expected_rows(tmp_path)
    assert manifest_of(tmp_path / "out")["counts"]["rows_written"] == 400
