"""One run template over every executor and output target: the same manifest, summary, history and
metrics whichever executor runs the chunks; the lock before anything else; resume and the lock
under Dask; combinations that cannot work refused with exit 78."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.output.lock import JobLock
from pipeline.output.publish import OutputPaths
from tests.helpers import basic_job, manifest_of, read_output, run_cli, run_subprocess, write_job

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, as in tests/test_dask.py."""
    cl = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=40)
    try:
        yield cl
    finally:
        cl.close()


def _csv(path: Path, start: int, stop: int, bad_every: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, stop):
        v = "oops" if bad_every and i % bad_every == 0 else str(i * 3)
        rows.append(f"{i},{'abc'[i % 3]},{v}\n")
    path.write_text("id,k,v\n" + "".join(rows))
    os.utime(path, ns=(1_700_000_000_000_000_000 + start, 1_700_000_000_000_000_000 + start))  # the same each time


def _normalise(manifest: dict) -> dict:
    """A manifest with what may differ between two runs of the same job replaced.

    Run ids become their position among the manifest's runs; times go; file names give way to
    the rows each run wrote per partition directory (how rows are cut into files is the
    executor's choice); the keys that choose the executor go from the config.
    """
    m = json.loads(json.dumps(manifest))
    ids = {r["run_id"]: f"run-{i}" for i, r in enumerate(m["runs"])}
    m["run_id"] = ids[m["run_id"]]
    for r in m["runs"]:
        r["run_id"] = ids[r["run_id"]]
        for key in ("finished", "started_ts", "finished_ts"):
            assert key in r
            del r[key]

    def rows_per_dir(files: list[dict]) -> dict:
        out: dict[str, int] = {}
        for f in files:
            key = f"{os.path.dirname(f['path'])} {ids[f['run_id']]}"
            out[key] = out.get(key, 0) + f["rows"]
        return out

    m["files"] = rows_per_dir(m["files"])
    m["rejects"]["files"] = rows_per_dir(m["rejects"]["files"])
    for key in ("executor", "dask"):
        del m["config"]["run"][key]
    return m


def _normalise_summary(text: str) -> str:
    text = re.sub(r"\d{8}T\d{6}Z-[0-9a-f]{6}", "RUN", text)
    text = re.sub(r"in \d+\.\d+ s", "in S s", text)
    text = re.sub(r"  speed .*\n", "", text)
    return re.sub(r"\(\d+ part files?, [0-9.]+ (B|KiB|MiB|GiB)\)", "(PARTS)", text)


def _metrics(path: Path) -> dict:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if "timestamp" in sample.name or "duration" in sample.name:
                continue
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _history(config: Path, capsys) -> list[list[str]]:
    code, out, _ = run_cli("history", config, capsys=capsys)
    assert code == 0
    # started, status, exit, seconds, read, written, rejected, run: keep status, exit and the counts
    return [[f[2], f[3], f[5], f[6], f[7]] for f in (line.split() for line in out.splitlines()[1:])]


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_the_same_job_gives_the_same_manifest_summary_history_and_metrics_on_both_executors(
        tmp_path, cluster, capsys, incremental):
    """The whole manifest, the summary, the history and the metrics, local against Dask."""
    _csv(tmp_path / "in" / "a.csv", 0, 700, bad_every=97)
    _csv(tmp_path / "in" / "b.csv", 700, 1200)
    job = basic_job("in/*.csv", stages=[{"filter": "v % 2 == 0"}, {"derive": {"w": "v * 2"}}],
                    input={"chunk_bytes": "2KiB", "incremental": incremental, "schema": {"v": "int64"}},
                    output={"partition_by": ["k"], "mode": "overwrite"},
                    run={"workers": 2, "on_bad_rows": "quarantine", "metrics_file": "metrics.prom",
                         "dask": {"address": cluster.scheduler_address}})
    config = write_job(tmp_path, job)
    seen = {}
    for executor in ("local", "dask"):
        summaries = []
        for step in range(2):
            if step == 1:
                _csv(tmp_path / "in" / "c.csv", 1200, 1500, bad_every=50)
            code, out, err = run_cli("run", config, "--no-progress", "--set", f"run.executor={executor}",
                                     capsys=capsys)
            assert code == 0, err
            summaries.append(_normalise_summary(out))
        manifest = manifest_of(tmp_path / "out")
        seen[executor] = {"manifest": _normalise(manifest), "summaries": summaries,
                          "history": _history(config, capsys), "metrics": _metrics(tmp_path / "metrics.prom"),
                          "rows": sorted(read_output(tmp_path / "out", "hive").column("id").to_pylist())}
        # what the state store records must be there: fingerprints, the mode, real times
        last = manifest["runs"][-1]
        assert all(re.fullmatch(r"[0-9a-f]{32}", i["fingerprint"]) for i in last["inputs"])
        assert last["started_ts"] < last["finished_ts"]
        assert manifest["mode"] == ("append" if incremental else "overwrite")
        # the next executor starts from nothing
        shutil.rmtree(tmp_path / "out")
        shutil.rmtree(tmp_path / ".pipeline-state")
        (tmp_path / "in" / "c.csv").unlink()
    local, dask = seen["local"], seen["dask"]
    assert dask["manifest"] == local["manifest"]
    assert dask["summaries"] == local["summaries"]
    assert dask["history"] == local["history"]
    assert dask["metrics"] == local["metrics"]
    assert dask["rows"] == local["rows"]
    assert local["manifest"]["counts"]["rows_rejected"] > 0 and local["manifest"]["rejects"]["files"]
    assert len(local["manifest"]["runs"]) == (2 if incremental else 1)


def test_chunk_timeout_with_the_dask_executor_is_refused_with_78(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n")
    path = write_job(tmp_path, basic_job("in.csv", run={"executor": "dask", "chunk_timeout": "10s"}))
    for command in ("run", "validate"):
        code, _, err = run_cli(command, path, capsys=capsys)
        assert code == 78, err
        assert "run.chunk_timeout" in err and "dask" in err
    assert not (tmp_path / "out").exists()
    # switching an existing job to Dask on the command line is refused the same way
    path = write_job(tmp_path, basic_job("in.csv", run={"chunk_timeout": "10s"}))
    code, _, err = run_cli("run", path, "--set", "run.executor=dask", capsys=capsys)
    assert code == 78 and "run.chunk_timeout" in err


SLOW_STAGE = '''
import time

def pause(df, seconds=0.2):
    time.sleep(seconds)
    return df
'''


def _slow_job(tmp_path: Path, n: int, seconds: float = 0.2, **run) -> Path:
    (tmp_path / "in.csv").write_text("id,v\n" + "".join(f"{i},{i * 3}\n" for i in range(n)))
    (tmp_path / "slow.py").write_text(SLOW_STAGE)
    job = basic_job("in.csv", input={"chunk_bytes": "4KiB"},
                    stages=[{"python": {"function": "slow:pause", "api": "pandas", "params": {"seconds": seconds}}}],
                    run={"workers": 2, "executor": "dask", **run})
    return write_job(tmp_path, job)


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _checkpoints(tmp_path: Path) -> int:
    return sum(max(0, len(p.read_text().splitlines()) - 1) for p in tmp_path.glob(".out.staging-*/_journal.jsonl"))


def test_a_killed_dask_run_resumes_from_its_checkpoints(tmp_path, cluster):
    n = 6000
    config = _slow_job(tmp_path, n, checkpoint_interval="200ms", dask={"address": cluster.scheduler_address})
    proc = _start(config)
    try:
        _wait(lambda: _checkpoints(tmp_path) >= 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "out").exists()
    done = run_subprocess("run", config, "--no-progress", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    match = re.search(r"resuming run \S+: (\d+) of (\d+) chunks were finished and are kept", done.stderr)
    assert match, done.stderr
    kept, total = int(match.group(1)), int(match.group(2))
    assert 0 < kept < total
    assert f"resumed: {kept} of {total} chunks came from run" in done.stdout
    ids = read_output(tmp_path / "out").column("id").to_pylist()
    assert sorted(ids) == list(range(n))                      # none lost, none doubled
    m = manifest_of(tmp_path / "out")
    assert m["counts"]["rows_read"] == m["counts"]["rows_written"] == n
    on_disk = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert on_disk == {f["path"] for f in m["files"]} | {"_manifest.json", "_SUCCESS"}
    assert not list(tmp_path.glob(".out.staging-*"))


def test_a_second_dask_run_of_the_job_is_refused_with_75(tmp_path, cluster):
    config = _slow_job(tmp_path, 6000, seconds=1.0, dask={"address": cluster.scheduler_address})
    first = _start(config)
    try:
        _wait(lambda: list(tmp_path.glob(".out.staging-*/part-*.parquet")), first)
        second = run_subprocess("run", config, "--no-progress", cwd=tmp_path, timeout=60)
        assert first.poll() is None, "the first run ended before the second tried"
        assert second.returncode == 75, second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_the_lock_is_taken_before_any_input_is_read(tmp_path):
    """A second run is refused at once, before discovering or reading input, whatever its size."""
    line = "".join(f"{i},{'x' * 40},{i * 7}\n" for i in range(1000))
    big = tmp_path / "in.csv"
    with open(big, "w") as fh:
        fh.write("id,s,v\n")
        for _ in range(600):          # about 50 MB
            fh.write(line)
    (tmp_path / "slow.py").write_text(SLOW_STAGE)
    job = basic_job("in.csv", stages=[{"python": {"function": "slow:pause", "api": "pandas",
                                                  "params": {"seconds": 30}}}],
                    run={"workers": 1})
    config = write_job(tmp_path, job)
    first = _start(config)
    try:
        lock = tmp_path / ".out.lock"
        _wait(lambda: lock.exists() and str(first.pid) in lock.read_text(), first)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        second = run_subprocess("run", config, "--no-progress", cwd=tmp_path, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert second.returncode == 75, second.stderr
        # CPU time, not wall time: on a busy machine the wall clock says little about the work done
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert cpu < 1.0, cpu
        # with inputs that match nothing the refusal is the same: no input was listed
        missing = run_subprocess("run", config, "--no-progress", "--set", 'input.paths=["nothing-*.csv"]',
                                 cwd=tmp_path, timeout=60)
        assert missing.returncode == 75, missing.stderr
        assert "nothing-" not in missing.stderr
        assert first.poll() is None, "the first run ended before the others tried"
    finally:
        first.kill()
        first.wait()


REFUSED_IMPORTS = """
import sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(" ".join(sorted(m for m in ("pydantic", "pyarrow", "numpy", "pandas") if m in sys.modules)))
sys.exit(code)
"""


DOCS = Path(__file__).resolve().parents[1] / "docs"


def _lock_message_shape(line: str) -> str:
    return re.sub(r"'[^']*'|pid \d+|started \S+,|run \S+;", "_", line)


def test_the_lock_is_taken_before_the_job_is_validated(tmp_path):
    """A refused run reads the job file and takes the lock before pydantic or pyarrow load; the lock
    is the output's, wherever the job file, --set or ${VAR} put it."""
    _csv(tmp_path / "in.csv", 0, 50)
    config = write_job(tmp_path, basic_job("in.csv", out="${OUT_DIR:-out}"))
    holder = JobLock(OutputPaths(str(tmp_path / "elsewhere")).lock, "other-job", "20261201T000000Z-holder").acquire()
    try:
        for args, env in ((["--set", "output.path=elsewhere"], {}), ([], {"OUT_DIR": str(tmp_path / "elsewhere")})):
            refused = subprocess.run([sys.executable, "-c", REFUSED_IMPORTS, "run", str(config), "--no-progress", *args],
                                     capture_output=True, text=True, timeout=60, env={**os.environ, **env},
                                     cwd=tmp_path)
            assert refused.returncode == 75, refused.stderr
            assert refused.stdout.strip() == "", refused.stdout      # none of the heavy modules was loaded
            assert "job 'other-job' holds the lock" in refused.stderr and "run 20261201T000000Z-holder" in refused.stderr
        # the message the docs show is this one, with another job, pid, time and run
        shape = _lock_message_shape(refused.stderr.strip())
        for doc in ("guarantees.md", "cron.md"):
            shown = [line for line in (DOCS / doc).read_text().splitlines() if "holds the lock on this output" in line]
            assert shown and all(_lock_message_shape(line) == shape for line in shown), (doc, shown, shape)
        # another output of the same job file is not held: that run goes on, under its own lock
        done = run_subprocess("run", config, "--no-progress", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert read_output(tmp_path / "out").num_rows == 50
    finally:
        holder.release()
    # the run's lock file names the run that held it: the id in its summary and history
    held = json.loads((tmp_path / ".out.lock").read_text())
    assert held["job"] == "test-job" and held["run_id"] in done.stdout


@pytest.mark.parametrize("state_dir", [None, "state"])
def test_an_output_url_is_locked_before_the_job_is_validated(tmp_path, s3, state_dir):
    """For an output URL the lock is in the state directory (run.state_dir, or .pipeline-state/
    beside the job file): a second run is refused from the job file as read, before pydantic or
    pyarrow load, and the run that goes on once it is free holds that same lock."""
    _csv(tmp_path / "in.csv", 0, 50)
    extra = {"run": {"state_dir": state_dir}} if state_dir else {}
    config = write_job(tmp_path, basic_job("in.csv", out="s3://lake/out/t", **extra))
    state = tmp_path / (state_dir or ".pipeline-state")
    state.mkdir()
    lock = state / "test-job.output.lock"
    holder = JobLock(str(lock), "other-job", "20261201T000000Z-holder").acquire()
    try:
        refused = subprocess.run([sys.executable, "-c", REFUSED_IMPORTS, "run", str(config), "--no-progress"],
                                 capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert refused.returncode == 75, refused.stderr
        assert refused.stdout.strip() == "", refused.stdout      # none of the heavy modules was loaded
        assert "job 'other-job' holds the lock" in refused.stderr and "run 20261201T000000Z-holder" in refused.stderr
    finally:
        holder.release()
    done = run_subprocess("run", config, "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    s3.invalidate_cache()
    assert json.loads(s3.cat("lake/out/t/_manifest.json"))["counts"]["rows_written"] == 50
    held = json.loads(lock.read_text())
    assert held["job"] == "test-job" and held["run_id"] in done.stdout


def test_a_job_that_fails_validation_leaves_its_lock_free(tmp_path, capsys):
    _csv(tmp_path / "in.csv", 0, 10)
    config = write_job(tmp_path, basic_job("in.csv", output={"compresion": "zstd"}))
    lock = OutputPaths(str(tmp_path / "out")).lock
    holder = JobLock(lock, "other-job", "20261201T000000Z-holder").acquire()
    try:
        code, _out, err = run_cli("run", config, "--no-progress", capsys=capsys)
        assert code == 75, err           # the lock comes first, even before the job's own problems
    finally:
        holder.release()
    code, _out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 78 and "output.compresion: unknown key" in err, err
    # in this same process: the failed run released the lock it took before validating
    JobLock(lock, "test-job", "20261201T000001Z-after").acquire().release()


def _use_store(env: dict) -> None:
    import s3fs

    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_a_killed_run_to_an_object_store_resumes(tmp_path, s3, cluster, executor):
    """Resume with an output URL: the journal is in the state directory, the parts where they were put."""
    n = 6000
    if executor == "dask":  # the cluster's workers started before the store's credentials were set
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
            client.run(_use_store, env)
    config = _slow_job(tmp_path, n, checkpoint_interval="200ms", executor=executor,
                       dask={"address": cluster.scheduler_address}, state_dir="state")
    text = config.read_text().replace("path: out", "path: s3://lake/out/t")
    config.write_text(text)
    proc = _start(config)
    state = tmp_path / "state"
    try:
        _wait(lambda: sum(max(0, len(p.read_text().splitlines()) - 1)
                          for p in state.glob(".test-job.output.staging-*/_journal.jsonl")) >= 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = run_subprocess("run", config, "--no-progress", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.search(r"resuming run \S+: \d+ of \d+ chunks were finished and are kept", done.stderr), done.stderr
    s3.invalidate_cache()
    manifest = json.loads(s3.cat("lake/out/t/_manifest.json"))
    ids = []
    for f in manifest["files"]:
        with s3.open(f"lake/out/t/{f['path']}", "rb") as fh:
            ids += pq.read_table(fh).column("id").to_pylist()
    assert sorted(ids) == list(range(n))                      # none lost, none doubled
    assert manifest["counts"]["rows_read"] == manifest["counts"]["rows_written"] == n
    under = {p.split("lake/out/t/", 1)[1] for p in s3.find("lake/out/t")}
    assert under == {f["path"] for f in manifest["files"]} | {"_manifest.json", "_SUCCESS"}
    assert not list(state.glob(".test-job.output.staging-*"))
