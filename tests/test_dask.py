"""The Dask executor and storage URLs: same rows and counts as the local executor, worker loss,
an S3-compatible store on loopback, an unreachable scheduler, dask not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pipeline.demo import generate
from tests.helpers import ROOT, basic_job, manifest_of, read_output, run_cli, run_subprocess, write_job

distributed = pytest.importorskip("distributed")

COUNTS = ("rows_read", "rows_written", "rows_filtered", "rows_rejected", "rows_added")


def _sorted_rows(table: pa.Table) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def _rejects(path: Path) -> list[str]:
    m = manifest_of(path)
    files = [str(path / f["path"]) for f in m["rejects"]["files"]]
    if not files:
        return []
    table = pa.concat_tables(pq.read_table(f) for f in files).drop_columns(["chunk"])
    return _sorted_rows(table)


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 worker processes for the tests that pass its address."""
    cl = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=40)
    client = distributed.Client(cl, set_as_default=False)
    try:
        yield cl, client
    finally:
        client.close()
        cl.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "configs", base / "configs")
    generate(base / "data", rows=3000, seed=7)
    return base


@pytest.mark.parametrize("config", ["example", "by_country", "events", "daily_rollup"])
def test_configs_give_the_same_rows_and_counts_on_dask(demo, cluster, config, tmp_path):
    cl, _ = cluster
    job = demo / "configs" / f"{config}.yaml"
    outs = {}
    for executor in ("local", "dask"):
        out = tmp_path / executor
        args = ["run", job, "--no-progress", "--set", f"output.path={out}", "--set", f"run.executor={executor}",
                "--set", "run.workers=2", "--set", f"run.dask.address={cl.scheduler_address}",
                "--set", f"run.state_dir={tmp_path / 'state'}"]
        if config != "by_country":
            args += ["--set", "input.chunk_bytes=8KiB"]  # several chunks per file
        code, _, err = run_cli(*args)
        assert code == 0, (executor, err)
        outs[executor] = out
    local, dask = (manifest_of(outs[k]) for k in ("local", "dask"))
    assert {k: dask["counts"][k] for k in COUNTS} == {k: local["counts"][k] for k in COUNTS}
    assert dask["chunks"] == local["chunks"] > 1
    assert dask["schema"] == local["schema"]
    if "finalize" in local:   # finalize runs on the machine that starts the run, over the staged parts
        assert dask["finalize"]["rows_in"] == local["finalize"]["rows_in"] == local["counts"]["rows_written"]
        assert dask["finalize"]["rows_out"] == local["finalize"]["rows_out"]
        assert sum(f["rows"] for f in dask["files"]) == dask["finalize"]["rows_out"]
    else:
        assert sum(f["rows"] for f in dask["files"]) == dask["counts"]["rows_written"]
    partitioning = "hive" if local["partition_by"] else None
    assert _sorted_rows(read_output(outs["dask"], partitioning)) == _sorted_rows(read_output(outs["local"], partitioning))
    assert _rejects(outs["dask"]) == _rejects(outs["local"])
    # every file in the published output is listed in its manifest, and the other way round
    listed = {f["path"] for f in dask["files"]} | {f["path"] for f in dask["rejects"]["files"]}
    on_disk = {str(p.relative_to(outs["dask"])) for p in outs["dask"].rglob("*") if p.is_file()}
    assert on_disk == listed | {"_manifest.json", "_SUCCESS"}


def test_a_local_cluster_is_started_for_the_run_without_an_address(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    rows = "".join(f"{i},{i % 7},x{i}\n" for i in range(3000))
    (tmp_path / "in.csv").write_text("id,k,s\n" + rows)
    job = basic_job("in.csv", stages=[{"filter": "k != 3"}], output={"partition_by": ["k"], "row_group_rows": 100},
                    input={"chunk_bytes": "8KiB"}, run={"workers": 2, "executor": "dask"})
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Dask dashboard http" in done.stderr and "local Dask cluster of 2 worker processes" in done.stderr
    table = read_output(tmp_path / "out", "hive")
    assert sorted(table.column("id").to_pylist()) == [i for i in range(3000) if i % 7 != 3]
    m = manifest_of(tmp_path / "out")
    assert m["counts"]["rows_filtered"] == sum(1 for i in range(3000) if i % 7 == 3)
    some = tmp_path / "out" / m["files"][0]["path"]
    assert max(pq.ParquetFile(some).metadata.row_group(i).num_rows
               for i in range(pq.ParquetFile(some).metadata.num_row_groups)) <= 100


def test_a_retried_task_replaces_its_own_files(tmp_path):
    """Two attempts at one chunk leave one copy; a dead attempt's temporary file is swept away."""
    from pipeline.config import load_config
    from pipeline.execution.dask import write_chunks
    from pipeline.execution.executor import TaskSettings
    from pipeline.input.plan import build_plan
    from pipeline.output.target import _sweep
    from pipeline.output.write import WriterSettings
    from pipeline.run import stage_output_schema, worker_settings
    from pipeline.stages import STAGES

    (tmp_path / "in.csv").write_text("id,c\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(500)))
    path = write_job(tmp_path, basic_job("in.csv", output={"partition_by": ["c"]}))
    job = load_config(path, stages=STAGES)
    plan = build_plan(job)
    staging = tmp_path / "staging"
    staging.mkdir()
    spec = TaskSettings(worker_settings(job, plan), WriterSettings(job.name, "20260101T000000Z-abcdef", str(staging),
                                                                   stage_output_schema(job, plan), ("c",)))
    first = write_chunks([plan.chunks[0]], spec)
    (staging / "c=a" / ".part-x.parquet.123.tmp").write_bytes(b"half a file")
    second = write_chunks([plan.chunks[0]], spec)
    assert [f["path"] for f in first.files] == [f["path"] for f in second.files]
    _sweep(str(staging), {f["path"] for f in second.files})
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert files == sorted(f["path"] for f in second.files)
    assert sum(pq.read_metadata(staging / f).num_rows for f in files) == 500


SLOW_STAGE = '''
import time

def pause(df):
    time.sleep(0.25)
    return df
'''


def test_a_worker_killed_mid_run_is_survived_exactly(tmp_path, cluster):
    cl, client = cluster
    n = 6000
    (tmp_path / "in.csv").write_text("id,v\n" + "".join(f"{i},{i * 3}\n" for i in range(n)))
    (tmp_path / "slow.py").write_text(SLOW_STAGE)
    job = basic_job("in.csv", input={"chunk_bytes": "4KiB"},
                    stages=[{"python": {"function": "slow:pause", "api": "pandas"}}],
                    run={"workers": 2, "executor": "dask", "dask": {"address": cl.scheduler_address}})
    before = client.run(os.getpid)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(write_job(tmp_path, job)), "--no-progress"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # mid-run: some chunks are written, many are not
            if len(list(tmp_path.glob(".out.staging-*/part-*.parquet"))) >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        victim = sorted(before.values())[0]
        os.kill(victim, signal.SIGKILL)
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    after = client.run(os.getpid)
    assert victim not in after.values()          # the worker really died (its nanny started another)
    table = read_output(tmp_path / "out")
    ids = table.column("id").to_pylist()
    assert len(ids) == n and sorted(ids) == list(range(n))       # none lost, none doubled
    m = manifest_of(tmp_path / "out")
    assert m["counts"]["rows_read"] == m["counts"]["rows_written"] == n
    assert m["chunks"] > 10
    on_disk = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert on_disk == {f["path"] for f in m["files"]} | {"_manifest.json", "_SUCCESS"}


def test_an_unreachable_scheduler_is_exit_1_naming_it(tmp_path):
    (tmp_path / "in.csv").write_text("id\n1\n")
    job = basic_job("in.csv", run={"executor": "dask", "dask": {"address": "tcp://127.0.0.1:1",
                                                                "connect_timeout": "2s"}})
    started = time.monotonic()
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in done.stderr
    assert "unexpected" not in done.stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_the_address_may_come_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "in.csv").write_text("id\n1\n")
    job = basic_job("in.csv", run={"executor": "dask", "dask": {"connect_timeout": "1s"}})
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path, timeout=60,
                          env={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1"})
    assert done.returncode == 1 and "tcp://127.0.0.1:1" in done.stderr, done.stderr


def test_without_dask_installed_the_dask_executor_is_a_config_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "in.csv").write_text("id\n1\n")
    path = write_job(tmp_path, basic_job("in.csv", run={"executor": "dask"}))
    monkeypatch.setitem(sys.modules, "distributed", None)   # `import distributed` now fails
    for command in ("run", "validate", "plan"):
        code, _, err = run_cli(command, path, capsys=capsys)
        assert code == 78, err
        assert "pip install 'pipeline[dask]'" in err and "run.executor" in err and "line" in err


# ------------------------------------------------------------------------------------ object store


def _read_remote(fs, prefix: str) -> tuple[dict, pa.Table]:
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{prefix}/_manifest.json"))
    tables = []
    for f in manifest["files"]:
        with fs.open(f"{prefix}/{f['path']}", "rb") as fh:
            tables.append(pq.read_table(fh))
    return manifest, pa.concat_tables(tables)


def test_object_store_round_trip(demo, s3, tmp_path, capsys):
    """Input read from and output published to an S3-compatible store, on both executors."""
    for f in sorted((demo / "data" / "raw").iterdir()):
        s3.put(str(f), f"lake/raw/{f.name}")
    job = demo / "configs" / "example.yaml"
    common = ["--no-progress", "--set", "run.workers=2", "--set", f"run.state_dir={tmp_path / 'state'}",
              "--set", "input.chunk_bytes=64KiB"]
    ref = tmp_path / "ref"
    code, _, err = run_cli("run", job, *common, "--set", f"output.path={ref}")
    assert code == 0, err
    expected = _sorted_rows(read_output(ref))
    counts = {k: manifest_of(ref)["counts"][k] for k in COUNTS}

    remote_in = ["--set", 'input.paths=["s3://lake/raw/sales-*.csv*"]']
    # the dask executor: tasks write their parts straight to the store
    done = run_subprocess("run", job, *common, *remote_in, "--set", "output.path=s3://lake/out/sales",
                          "--set", "run.executor=dask", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest, table = _read_remote(s3, "lake/out/sales")
    assert _sorted_rows(table) == expected
    assert {k: manifest["counts"][k] for k in COUNTS} == counts
    assert all(i["path"].startswith("s3://lake/raw/") for i in manifest["inputs"])
    assert s3.cat("lake/out/sales/_SUCCESS").decode().strip() == manifest["run_id"]
    first_parts = set(s3.find("lake/out/sales"))

    # the local executor over the same output (overwrite): the old parts go once the new manifest is in
    done = run_subprocess("run", job, *common, *remote_in, "--set", "output.path=s3://lake/out/sales",
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest2, table2 = _read_remote(s3, "lake/out/sales")
    assert _sorted_rows(table2) == expected and manifest2["run_id"] != manifest["run_id"]
    s3.invalidate_cache()
    now = {p.split("lake/out/sales/", 1)[1] for p in s3.find("lake/out/sales")}
    listed = {f["path"] for f in manifest2["files"]} | {f["path"] for f in manifest2["rejects"]["files"]}
    assert now == listed | {"_manifest.json", "_SUCCESS"}
    assert not (first_parts & {f"lake/out/sales/{p}" for p in listed})

    capsys.readouterr()
    code, out, _ = run_cli("inspect", "s3://lake/out/sales", capsys=capsys)
    assert code == 0 and "complete" in out and f"{counts['rows_written']:,} written" in out

    # pyarrow reads the published parts through s3fs as one dataset
    import pyarrow.dataset as ds

    data = ds.dataset([f"lake/out/sales/{f['path']}" for f in manifest2["files"]], filesystem=s3, format="parquet")
    assert data.count_rows() == counts["rows_written"]


def test_a_failed_run_leaves_the_published_object_store_output_as_it_was(demo, s3, tmp_path):
    (tmp_path / "in.csv").write_text("id,v\n1,2\n2,3\n")
    s3.put(str(tmp_path / "in.csv"), "lake/in/a.csv")
    job = basic_job("s3://lake/in/*.csv", out="s3://lake/out/t", input={"schema": {"v": "int64"}},
                    run={"executor": "dask", "workers": 1, "state_dir": str(tmp_path / "state")})
    path = write_job(tmp_path, job)
    first = run_subprocess("run", path, "--no-progress", "--set", "run.executor=local", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p: s3.cat(p) for p in s3.find("lake/out/t")}
    s3.pipe("lake/in/b.csv", b"id,v\n3,oops\n")        # v cannot be int64: a bad row, and on_bad_rows: fail
    s3.pipe("lake/in/a.csv", b"id,v\n1,2\n2,3\n4,5\n")
    done = run_subprocess("run", path, "--no-progress", cwd=tmp_path)
    assert done.returncode == 65, done.stderr
    s3.invalidate_cache()
    assert {p: s3.cat(p) for p in s3.find("lake/out/t")} == before


DEADLY_STAGE = '''
import os
import signal

def die_on_7(df):
    if (df["id"] == 7).any():
        os.kill(os.getpid(), signal.SIGKILL)
    return df
'''


def test_a_chunk_that_kills_every_worker_is_quarantined(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    n = 400
    (tmp_path / "in.csv").write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(n)))
    (tmp_path / "deadly.py").write_text(DEADLY_STAGE)
    job = basic_job("in.csv", input={"chunk_bytes": "1KiB"},
                    stages=[{"python": {"function": "deadly:die_on_7", "api": "pandas"}}],
                    run={"workers": 2, "executor": "dask", "retries": 0, "on_bad_rows": "quarantine",
                         "max_bad_rows": 1000})
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    m = manifest_of(tmp_path / "out")
    rejects = pa.concat_tables(pq.read_table(tmp_path / "out" / f["path"]) for f in m["rejects"]["files"])
    lost = sorted(int(r.split(",")[0]) for r in rejects.column("raw").to_pylist())
    assert 7 in lost and set(rejects.column("stage").to_pylist()) == {"worker"}
    written = read_output(tmp_path / "out").column("id").to_pylist()
    assert sorted(written + lost) == list(range(n))
    assert m["counts"]["rows_rejected"] == len(lost) and m["counts"]["rows_written"] == n - len(lost)


def test_finalize_on_an_object_store_scope_dataset(demo, s3, tmp_path):
    """finalize over parts on S3 (read through fsspec), on both executors; scope dataset replaces the
    earlier parts under the prefix once the new manifest is in place."""
    for f in sorted((demo / "data" / "raw").iterdir()):
        s3.put(str(f), f"lake/fin/raw/{f.name}")
    job = demo / "configs" / "daily_rollup.yaml"
    common = ["--no-progress", "--set", "run.workers=2", "--set", f"run.state_dir={tmp_path / 'state'}",
              "--set", "input.chunk_bytes=64KiB", "--set", "finalize.sql=SELECT * FROM data", "--set", "finalize.scope=dataset",
              "--set", "output.mode=append"]
    ref = tmp_path / "ref"
    code, _, err = run_cli("run", job, *common, "--set", f"output.path={ref}")
    assert code == 0, err
    expected = _sorted_rows(read_output(ref, "hive"))
    remote_in = ["--set", 'input.paths=["s3://lake/fin/raw/sales-*.csv*"]']
    for executor in ("dask", "local"):   # the second run appends the same rows again: dedupe keeps one of each
        done = run_subprocess("run", job, *common, *remote_in, "--set", "output.path=s3://lake/fin/out",
                              "--set", f"run.executor={executor}", cwd=tmp_path, timeout=180)
        assert done.returncode == 0, done.stderr
        manifest, _ = _read_remote(s3, "lake/fin/out")
        s3.invalidate_cache()
        now = {p.split("lake/fin/out/", 1)[1] for p in s3.find("lake/fin/out")}
        listed = {f["path"] for f in manifest["files"]} | {f["path"] for f in manifest["rejects"]["files"]}
        assert now == listed | {"_manifest.json", "_SUCCESS"}
        assert all(f["run_id"] == manifest["run_id"] for f in manifest["files"])
        files = [f"lake/fin/out/{f['path']}" for f in manifest["files"]]
        import pyarrow.dataset as ds

        table = ds.dataset(files, filesystem=s3, format="parquet", partitioning="hive",
                           partition_base_dir="lake/fin/out").to_table()
        assert _sorted_rows(table) == expected


def _small_files(folder: Path, files: int, rows: int) -> list[int]:
    """``files`` CSV files of ``rows`` rows each (ids go on from file to file); their ids."""
    folder.mkdir()
    for k in range(files):
        ids = range(k * rows, (k + 1) * rows)
        (folder / f"f{k:04d}.csv").write_text("id,v\n" + "".join(f"{i},v{i % 13}\n" for i in ids))
    return list(range(files * rows))


def test_many_small_files_are_a_few_tasks_and_part_files_with_the_local_rows(tmp_path, cluster):
    """150 small files: a task and a set of part files per group of them (as the local executor
    groups its pool tasks), not one per file; rows and counts are the local executor's and pyarrow's."""
    from pipeline.execution.executor import GROUP_CHUNKS

    cl, _ = cluster
    ids = _small_files(tmp_path / "in", 150, 20)
    outs = {}
    for executor in ("local", "dask"):
        job = basic_job("in/*.csv", out=str(tmp_path / executor), run={"workers": 2, "executor": executor,
                                         "dask": {"address": cl.scheduler_address}})
        done = run_subprocess("run", write_job(tmp_path, job, name=f"{executor}.yaml"), "--no-progress",
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[executor] = manifest_of(tmp_path / executor)
    dask, local = outs["dask"], outs["local"]
    assert len(dask["files"]) == -(-150 // GROUP_CHUNKS)      # 3 part files, not 150
    assert {k: dask["counts"][k] for k in COUNTS} == {k: local["counts"][k] for k in COUNTS}
    expected = pa.concat_tables(pcsv.read_csv(p) for p in sorted((tmp_path / "in").iterdir()))
    got = read_output(tmp_path / "dask")
    assert sorted(got.column("id").to_pylist()) == ids == sorted(expected.column("id").to_pylist())
    assert _sorted_rows(got) == _sorted_rows(read_output(tmp_path / "local"))
    assert dask["chunks"] == local["chunks"] == 150


def test_a_group_with_a_chunk_that_kills_every_worker_loses_only_that_chunk(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    ids = _small_files(tmp_path / "in", 100, 10)    # id 7 is in the first file, in the first group
    (tmp_path / "deadly.py").write_text(DEADLY_STAGE)
    job = basic_job("in/*.csv", stages=[{"python": {"function": "deadly:die_on_7", "api": "pandas"}}],
                    run={"workers": 2, "executor": "dask", "retries": 0, "on_bad_rows": "quarantine",
                         "max_bad_rows": 1000})
    done = run_subprocess("run", write_job(tmp_path, job), "--no-progress", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "running each on its own" in done.stderr
    m = manifest_of(tmp_path / "out")
    rejects = pa.concat_tables(pq.read_table(tmp_path / "out" / f["path"]) for f in m["rejects"]["files"])
    lost = sorted(int(r.split(",")[0]) for r in rejects.column("raw").to_pylist())
    # the first file's rows, whole files only, and only a few: the group of 64 files was split. (With
    # run.retries 0 a task queued on the worker that died is lost with it too, as in the test above.)
    files_lost = {i // 10 for i in lost}
    assert 0 in files_lost and len(lost) == 10 * len(files_lost) and len(files_lost) <= 4, lost
    written = read_output(tmp_path / "out").column("id").to_pylist()
    assert sorted(written + lost) == ids
    assert m["counts"]["rows_rejected"] == len(lost) and m["counts"]["rows_written"] == len(ids) - len(lost)
