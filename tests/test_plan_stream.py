"""A run of many files plans them while its first chunks run: the schema comes from the first files,
the rest are cut on a thread of the parent (input.feed). Compared with pyarrow's reading of the files."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from pipeline.config import load_config
from pipeline.input import plan as plan_mod
from pipeline.input.feed import ChunkFeed
from pipeline.input.plan import SAMPLE_FILES, build_plan
from pipeline.stages import STAGES
from tests.helpers import basic_job, manifest_of, read_output, run_cli, write_job

MARK = '''
import pathlib

def mark(df, marker):
    pathlib.Path(marker).touch()
    return df
'''


def _files(folder: Path, n: int, header: str = "id,name,value") -> None:
    folder.mkdir(exist_ok=True)
    for k in range(n):
        rows = "".join(f'{k * 10 + i},"n {k}, {i}",{i * 0.5}\n' for i in range(10))
        (folder / f"f{k:03d}.csv").write_text(header + "\n" + rows)


def _reference(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        rows += pacsv.read_csv(path).to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def marked_job(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """A job over ``n`` small files whose python stage touches a marker file once a chunk has run."""
    _files(tmp_path / "in", n)
    marker = tmp_path / "a-chunk-ran"
    (tmp_path / "mark.py").write_text(MARK)
    job = basic_job("in/*.csv", stages=[{"python": {"function": "mark:mark", "params": {"marker": str(marker)}}}],
                    run={"workers": 2, "start_method": "fork"})
    return write_job(tmp_path, job), marker


def wait_for(marker: Path, what: str) -> None:
    """Until a worker has run a chunk: a run that did ``what`` before starting its workers would wait
    here for ever (and fail after 30 s)."""
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, f"no chunk ran before {what}"
        time.sleep(0.01)


def test_the_first_chunk_runs_before_the_last_file_is_planned(tmp_path, monkeypatch):
    config, marker = marked_job(tmp_path, 60)
    last = str(tmp_path / "in" / "f059.csv")
    plan_file = plan_mod._Planner.plan_file
    waited = []

    def slow_last(self, f):
        if f.path.endswith(last):
            wait_for(marker, "the last file was planned")
            waited.append(threading.current_thread().name)
        return plan_file(self, f)

    monkeypatch.setattr(plan_mod._Planner, "plan_file", slow_last)
    assert run_cli("run", config, "--no-progress") == (0, "", "")
    assert waited == ["pipeline-plan"]
    assert sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"]) == _reference(tmp_path / "in")
    assert manifest_of(tmp_path / "out")["chunks"] == 60


def test_a_later_file_with_other_columns_fails_the_run_naming_it(tmp_path, capsys):
    _files(tmp_path / "in", 30)
    (tmp_path / "in" / "f025.csv").write_text("id,name,value,extra\n1,a,2,3\n")
    config = write_job(tmp_path, basic_job("in/*.csv", run={"workers": 2}))
    code, _out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 65
    assert "f025.csv has extra ['extra'] compared with" in err and "f000.csv" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variant", ["bom", "crlf", "quoted newline", "other names"])
def test_files_whose_header_differs_in_its_bytes_are_read_as_themselves(tmp_path, variant):
    """The plan reuses the last header it read only for a file that starts with the same bytes."""
    _files(tmp_path / "in", 20)
    path = tmp_path / "in" / "f013.csv"
    text = path.read_text()
    if variant == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    elif variant == "crlf":
        path.write_bytes(text.replace("\n", "\r\n").encode())
    elif variant == "quoted newline":
        path.write_text('"id","name","value"\n' + text.split("\n", 1)[1])
    else:
        path.write_text("value,id,name\n" + "".join(f"{i},{1000 + i},x\n" for i in range(3)))
    job = load_config(write_job(tmp_path, basic_job("in/*.csv", run={"workers": 2})), stages=STAGES)
    plan = build_plan(job, stream=True)
    assert isinstance(plan.chunks, ChunkFeed)
    chunks = list(plan.chunks)
    mine = [c for c in chunks if c.file.path == str(path)]
    want = pacsv.read_csv(path)
    assert mine[0].columns == tuple(want.column_names)
    assert mine[0].start == len(path.read_bytes().split(b"\n", 1)[0]) + 1


def test_without_stream_or_with_few_files_the_plan_is_a_list(tmp_path):
    _files(tmp_path / "in", SAMPLE_FILES)
    job = load_config(write_job(tmp_path, basic_job("in/*.csv")), stages=STAGES)
    assert isinstance(build_plan(job, stream=True).chunks, list)
    _files(tmp_path / "in", SAMPLE_FILES + 5)
    assert isinstance(build_plan(job).chunks, list)
    streamed = build_plan(job, stream=True)
    assert [c.id for c in streamed.chunks] == [c.id for c in build_plan(job).chunks]
    assert streamed.key() == build_plan(job).key()


SLOW = '''
import time

def slow(df, seconds):
    time.sleep(seconds)
    return df
'''


def kill_and_resume(tmp_path: Path, command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """40 small files read slowly with a checkpoint after every chunk: ``command`` (a ``pipeline``
    command line without ``run JOB``) is killed after 4 checkpoints, then run again to the end."""
    _files(tmp_path / "in", 40)
    (tmp_path / "slow.py").write_text(SLOW)
    job = basic_job("in/*.csv", input={"chunk_bytes": 500},
                    stages=[{"python": {"function": "slow:slow", "params": {"seconds": 0.1}}}],
                    run={"workers": 2, "checkpoint_interval": "1ms"})
    args = [*command, "run", str(write_job(tmp_path, job)), "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def checkpoints() -> int:
        return sum(j.read_text().count('"checkpoint"') for j in tmp_path.glob(".out.staging-*/_journal.jsonl"))

    deadline = time.monotonic() + 60
    while checkpoints() < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert checkpoints() >= 4 and not (tmp_path / "out").exists()
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def test_a_killed_run_of_many_files_resumes_from_its_checkpoints(tmp_path):
    done = kill_and_resume(tmp_path, [sys.executable, "-m", "pipeline"])
    assert done.returncode == 0, done.stderr
    assert "resuming run" in done.stderr and "came from run" in done.stdout
    assert sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"]) == _reference(tmp_path / "in")
