"""Cron and make: parameters, incremental runs, resume after a kill, history, metrics, the state store."""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import basic_job, manifest_of, read_output, run_cli, run_subprocess, sort_rows, write_job


def _csv(path: Path, start: int, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id,v,s\n" + "".join(f"{i},{i % 7},text {i}\n" for i in range(start, start + n)))


def _ids(out: Path) -> list[int]:
    return sorted(read_output(out).column("id").to_pylist())


def test_incremental_runs_pick_up_only_new_files(tmp_path, capsys):
    _csv(tmp_path / "in" / "day1.csv", 0, 100)
    job = basic_job("in/*.csv", input={"incremental": True}, output={"mode": "append"})
    config = write_job(tmp_path, job)
    assert run_cli("run", config, "--no-progress", capsys=capsys)[0] == 0
    assert _ids(tmp_path / "out") == list(range(100))
    _csv(tmp_path / "in" / "day2.csv", 100, 50)
    _csv(tmp_path / "in" / "day3.csv", 150, 25)
    code, out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 0, err
    assert "2 files" in out and "75 read" in out
    assert _ids(tmp_path / "out") == list(range(175))
    m = manifest_of(tmp_path / "out")
    assert len(m["runs"]) == 2 and {f["run_id"] for f in m["files"]} == {r["run_id"] for r in m["runs"]}
    code, out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 0 and "up to date" in out and "nothing new" in out
    assert manifest_of(tmp_path / "out")["run_id"] == m["run_id"]
    code, out, err = run_cli("history", config, capsys=capsys)
    assert code == 0
    statuses = [line.split()[2] for line in out.splitlines()[1:]]
    assert statuses == ["up", "succeeded", "succeeded"]


def test_changed_stages_are_refused_until_full_refresh(tmp_path, capsys):
    _csv(tmp_path / "in" / "a.csv", 0, 30)
    job = basic_job("in/*.csv", input={"incremental": True})
    config = write_job(tmp_path, job)
    assert run_cli("run", config, "--no-progress", capsys=capsys)[0] == 0
    job["stages"] = [{"filter": "v > 2"}]
    write_job(tmp_path, job)
    _csv(tmp_path / "in" / "b.csv", 30, 30)
    code, out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 78 and "another version of this job" in err and "--full-refresh" in err
    assert _ids(tmp_path / "out") == list(range(30))
    code, out, err = run_cli("run", config, "--no-progress", "--full-refresh", capsys=capsys)
    assert code == 0, err
    assert _ids(tmp_path / "out") == [i for i in range(60) if i % 7 > 2]
    _csv(tmp_path / "in" / "c.csv", 60, 10)
    code, out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 0 and "10 read" in out


def test_params_in_paths_and_the_date_helpers(tmp_path, capsys):
    _csv(tmp_path / "logs" / "2026" / "11" / "23" / "a.csv", 0, 10)
    _csv(tmp_path / "logs" / "2026" / "11" / "24" / "a.csv", 100, 5)
    job = basic_job("logs/${params.day:%Y/%m/%d}/*.csv", out="out/${params.day}")
    job["params"] = {"day": "yesterday"}
    config = write_job(tmp_path, job)
    code, _out, err = run_cli("run", config, "--param", "day=2026-11-23", "--no-progress", capsys=capsys)
    assert code == 0, err
    assert _ids(tmp_path / "out" / "2026-11-23") == list(range(10))
    assert manifest_of(tmp_path / "out" / "2026-11-23")["runs"][-1]["params"] == {"day": "2026-11-23"}
    code, _out, err = run_cli("run", config, "--param", "day=2026-11-24", "--no-progress", capsys=capsys)
    assert _ids(tmp_path / "out" / "2026-11-24") == list(range(100, 105))
    code, _out, err = run_cli("run", config, "--param", "dy=2026-11-24", capsys=capsys)
    assert code == 78 and "did you mean 'day'" in err


def test_metrics_file_after_success_and_failure(tmp_path, capsys):
    _csv(tmp_path / "in.csv", 0, 20)
    job = basic_job("in.csv", run={"metrics_file": "metrics/job.prom"}, stages=[{"filter": "v < 5"}])
    config = write_job(tmp_path, job)
    assert run_cli("run", config, "--no-progress", capsys=capsys)[0] == 0

    def metrics():
        text = (tmp_path / "metrics" / "job.prom").read_text()
        return {(s.name, s.labels.get("kind")): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    ok = metrics()
    expected_written = len([i for i in range(20) if i % 7 < 5])
    assert ok[("pipeline_last_run_success", None)] == 1 and ok[("pipeline_last_run_exit_code", None)] == 0
    assert ok[("pipeline_last_run_rows", "read")] == 20
    assert ok[("pipeline_last_run_rows", "written")] == expected_written
    assert ok[("pipeline_last_run_rows", "filtered")] == 20 - expected_written
    success_time = ok[("pipeline_last_success_timestamp_seconds", None)]
    assert abs(success_time - time.time()) < 60
    (tmp_path / "in.csv").write_text("id,v,s\n1,x,y\n")  # v no longer an integer: the filter breaks
    code, _, _ = run_cli("run", config, "--no-progress", "--set", "input.schema.v=int64", capsys=capsys)
    assert code == 65
    failed = metrics()
    assert failed[("pipeline_last_run_success", None)] == 0 and failed[("pipeline_last_run_exit_code", None)] == 65
    assert failed[("pipeline_last_success_timestamp_seconds", None)] == success_time
    assert not list((tmp_path / "metrics").glob(".metrics-*"))


SLOW = '''
import time
def slow(df, seconds):
    time.sleep(seconds)
    return df
'''


def _slow_job(tmp_path: Path, checkpoint="1ms"):
    _csv(tmp_path / "in.csv", 0, 3000)
    (tmp_path / "slow.py").write_text(SLOW)
    job = basic_job("in.csv", name="resumable", input={"chunk_bytes": 2000},
                    stages=[{"python": {"function": "slow:slow", "params": {"seconds": 0.15}}}],
                    run={"workers": 2, "checkpoint_interval": checkpoint},
                    output={"partition_by": ["v"]})
    return write_job(tmp_path, job)


def _journal_checkpoints(tmp_path: Path) -> int:
    total = 0
    for journal in tmp_path.glob(".out.staging-*/_journal.jsonl"):
        total += sum(1 for line in journal.read_text().splitlines() if '"checkpoint"' in line)
    return total


def test_killed_run_resumes_without_redoing_finished_chunks(tmp_path):
    config = _slow_job(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _journal_checkpoints(tmp_path) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    kept = _journal_checkpoints(tmp_path)
    assert kept >= 6 and not (tmp_path / "out").exists()
    done = run_subprocess("run", config, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "resuming run" in done.stderr and "came from run" in done.stdout
    resumed_ids = _ids(tmp_path / "out")
    m = manifest_of(tmp_path / "out")
    assert resumed_ids == list(range(3000))          # every row once
    assert m["counts"]["rows_read"] == m["counts"]["rows_written"] == 3000
    chunks_total = m["chunks"]
    found = re.search(r"run \S+: \d+ files?, (\d+) chunks?, ", done.stderr)
    redone = int(found.group(1)) if found else None
    assert redone is not None and redone < chunks_total
    # a clean run of the same job gives the same rows
    clean = run_subprocess("run", config, "--no-progress", "--set", "output.path=clean")
    assert clean.returncode == 0
    assert sort_rows(read_output(tmp_path / "out").to_pylist()) == sort_rows(read_output(tmp_path / "clean").to_pylist())


def test_journal_of_another_config_is_discarded(tmp_path):
    config = _slow_job(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _journal_checkpoints(tmp_path) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = run_subprocess("run", config, "--no-progress", "--set", "output.compression=snappy")
    assert done.returncode == 0, done.stderr
    assert "resuming" not in done.stderr and "removed stale staging" in done.stderr
    assert _ids(tmp_path / "out") == list(range(3000))


@pytest.mark.slow
def test_state_database_survives_kills_during_updates(tmp_path):
    rnd = random.Random(3)
    _csv(tmp_path / "in" / "a.csv", 0, 2000)
    config = write_job(tmp_path, basic_job("in/*.csv", input={"incremental": True}))
    assert run_subprocess("run", config, "--no-progress").returncode == 0
    n = 2000
    for i in range(12):
        _csv(tmp_path / "in" / f"new{i}.csv", n, 100)
        n += 100
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.2, 0.9))
        proc.kill()
        proc.wait()
        db = sqlite3.connect(tmp_path / ".pipeline-state" / "state.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    done = run_subprocess("run", config, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert _ids(tmp_path / "out") == list(range(n))   # nothing lost, nothing twice


def test_nothing_new_is_up_to_date_for_a_job_with_a_schema_and_stages(tmp_path, capsys):
    _csv(tmp_path / "in" / "day1.csv", 0, 20)
    job = basic_job("in/*.csv", input={"incremental": True, "schema": {"v": "int32"}},
                    stages=[{"filter": "v > 2"}, {"derive": {"w": "v * 2"}}, {"select": ["id", "w", "s"]}])
    config = write_job(tmp_path, job)
    assert run_cli("run", config, "--no-progress", capsys=capsys)[0] == 0
    code, out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 0, err
    assert "up to date" in out and "nothing new: 1 input file was processed by earlier runs" in out
