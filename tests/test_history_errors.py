"""`history` (error column, --json, --limit, --status, --param), a user function's traceback, the lock
holder in the lock message, and the final error as a JSON line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.output.lock import JobLock
from pipeline.output.publish import OutputPaths
from tests.helpers import basic_job, run_cli, write_job

USER_CODE = '''
import pandas as pd


def _check(value):
    if value == 7:
        raise ValueError(f"no good at {value}")


def boom(df):
    for value in df["id"]:
        _check(value)
    return df
'''


def _job(tmp_path: Path, function: str | None = None, **run) -> Path:
    (tmp_path / "in.csv").write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(10)))
    (tmp_path / "udf.py").write_text(USER_CODE)
    stages = [{"python": {"function": f"udf:{function}"}}] if function else []
    job = basic_job("in.csv", name="hist", stages=stages, run={"workers": 1, **run})
    job["params"] = {"day": "d0"}
    return write_job(tmp_path, job)


def _store_rows(tmp_path: Path) -> list[dict]:
    db = sqlite3.connect(tmp_path / ".pipeline-state" / "state.db")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started DESC")]
    db.close()
    return rows


def test_history_shows_errors_and_filters(tmp_path, capsys):
    config = _job(tmp_path)
    assert run_cli("run", config, "--no-progress", "--param", "day=d1", capsys=capsys)[0] == 0
    assert run_cli("run", config, "--no-progress", "--param", "day=d2", "--set", "stages=[{python: {function: 'udf:boom'}}]",
                   capsys=capsys)[0] == 1
    assert run_cli("run", config, "--no-progress", "--param", "day=d2", capsys=capsys)[0] == 0
    stored = _store_rows(tmp_path)
    assert [r["status"] for r in stored] == ["succeeded", "failed", "succeeded"]

    code, out, _ = run_cli("history", config, "--json", capsys=capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["run_id"] for r in records] == [r["run_id"] for r in stored]
    for rec, row in zip(records, stored):
        assert (rec["status"], rec["exit_code"], rec["rows_read"], rec["rows_written"], rec["error"]) == \
            (row["status"], row["exit_code"], row["rows_read"], row["rows_written"], row["error"])
        assert rec["params"] == json.loads(row["params"])
    failed = stored[1]
    assert "ValueError: no good at 7" in failed["error"]

    code, out, _ = run_cli("history", config, capsys=capsys)
    lines = out.splitlines()
    assert lines[0].split()[-1] == "error"
    failed_line = next(line for line in lines if failed["run_id"] in line)
    assert failed_line.endswith(failed["error"].splitlines()[0][:119]) or \
        failed["error"].splitlines()[0][:100] in failed_line
    assert "day=d2" in failed_line

    code, out, _ = run_cli("history", config, "--status", "failed", "--json", capsys=capsys)
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == [failed["run_id"]]
    code, out, _ = run_cli("history", config, "--limit", "1", "--json", capsys=capsys)
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == [stored[0]["run_id"]]
    code, out, _ = run_cli("history", config, "--param", "day=d2", "--json", capsys=capsys)
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == [r["run_id"] for r in stored[:2]]
    code, out, _ = run_cli("history", config, "--status", "died", capsys=capsys)
    assert code == 0 and "no died runs" in out


def _run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress", *args],
                          capture_output=True, text=True, timeout=120)


def test_failing_user_function_traceback_goes_to_the_log_and_with_v_to_the_terminal(tmp_path):
    config = _job(tmp_path, "boom", workers=2)
    log_file = tmp_path / "run.log"
    quiet = _run(config, "--log-file", str(log_file))
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr
    message = [line for line in quiet.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert len(message) == 1 and "udf:boom raised ValueError: no good at 7" in message[0]
    logged = log_file.read_text()
    assert "Traceback (most recent call last; the job's own code only)" in logged
    trace = logged[logged.index("Traceback"):]
    frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
    # the user's two frames, in order, and nothing from this program, pandas or the standard library
    assert [f.split(", in ")[-1] for f in frames] == ["boom", "_check"]
    assert all(str(tmp_path / "udf.py") in f for f in frames)
    assert 'raise ValueError(f"no good at {value}")' in trace
    assert trace.rstrip().endswith("ValueError: no good at 7")

    loud = _run(config, "-v")
    assert loud.returncode == 1
    assert "Traceback (most recent call last; the job's own code only)" in loud.stderr
    assert "in _check" in loud.stderr and "site-packages" not in loud.stderr
    assert [line for line in loud.stderr.splitlines() if line.startswith("pipeline: error:")] == message


def test_lock_message_names_the_holder(tmp_path, capsys):
    config = _job(tmp_path)
    lock = JobLock(OutputPaths(str(tmp_path / "out")).lock, "other-job", "20261201T000000-holder").acquire()
    try:
        code, _out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    finally:
        lock.release()
    assert code == 75
    held = json.loads(Path(OutputPaths(str(tmp_path / "out")).lock).read_text())
    assert "job 'other-job'" in err and f"pid {os.getpid()}" in err
    assert f"started {held['started']}" in err and "run 20261201T000000-holder" in err


def test_final_error_is_a_json_line_with_log_format_json(tmp_path):
    config = _job(tmp_path, "boom")
    done = _run(config, "--log-format", "json")
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines()]   # every line is JSON
    last = records[-1]
    assert last["level"] == "error" and last["exit_code"] == 1 and last["error"] == "StageError"
    assert "udf:boom raised ValueError: no good at 7" in last["message"] and "traceback" not in last
    loud = _run(config, "--log-format", "json", "-v")
    last = json.loads(loud.stderr.splitlines()[-1])
    assert "in _check" in last["traceback"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {paths: [in.csv]}\noutput: {path: out}\nstagez: []\n")
    done = _run(bad, "--log-format", "json")
    assert done.returncode == 78
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["exit_code"] == 78 and "stagez" in last["message"]


SLOW_PROBE = '''
import os, pathlib, time


def slow(df, marker):
    if len(df) == 0:                      # the run learns the stage's output schema on an empty table
        pathlib.Path(marker).touch()
        time.sleep(30)
    return df
'''


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_a_python_stage_is_planned_stops_the_run(tmp_path, signum, code):
    (tmp_path / "in.csv").write_text("id\n1\n2\n")
    (tmp_path / "probe.py").write_text(SLOW_PROBE)
    marker = tmp_path / "probing"
    job = basic_job("in.csv", name="probe-signal",
                    stages=[{"python": {"function": "probe:slow", "params": {"marker": str(marker)}}}])
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(write_job(tmp_path, job)), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "nothing was published" in err and not (tmp_path / "out").exists()
