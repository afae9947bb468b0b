"""A small version of `make bench`: the harness runs, every engine it starts agrees with DuckDB's
expected rows, the local and the Dask executor included, and the table reports PSS and the scale curve."""

import json
import os
import statistics
import subprocess
import sys

import psutil

from tests.helpers import ROOT


def test_bench_smoke(tmp_path):
    env = dict(os.environ, BENCH_SCALE="0.002", BENCH_REPEAT="1", BENCH_MEMORY="2", BENCH_ENGINES="pipeline,pipeline-dask,duckdb",
               BENCH_WORKDIR=str(tmp_path / "work"), BENCH_RESULTS=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "bench"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6"):
        assert f"| {workload} | pipeline |" in table
    assert "| W1 | pipeline-dask |" in table
    assert "FAIL" not in table
    assert "target" not in table.lower() and "met" not in table.split("|")
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["workload"], r["engine"]): r for r in results["table"]}
    for key in [("W1", "pipeline"), ("W1", "pipeline-dask"), ("W1", "duckdb")]:
        assert rows[key]["ok"] and 0 < rows[key]["peak_pss_mib"] <= rows[key]["peak_mib"]
    # the pipeline's child processes are sampled with the parent: the writer, alive from the first chunk
    # to the publish, is seen beside the parent, and the peak counts more than the parent. A worker is not
    # required: at this size its whole life (one chunk) can fall between two samples on a busy machine,
    # where a sample saw only the parent and the writer at once. The Dask run counts the cluster's
    # processes too
    memory_run = results["runs"]["W1"]["pipeline"][-1]
    sampled = memory_run["processes"]
    assert any(name.endswith(" writer") for name in sampled) and memory_run["procs"] >= 2, memory_run
    local = rows[("W1", "pipeline")]["pss_at_peak"]
    assert sum(v["processes"] for v in local.values()) >= 2, local
    assert any(name.endswith((" worker", " writer")) for name in local), local
    assert "dask worker" in rows[("W1", "pipeline-dask")]["pss_at_peak"]
    # a timed run is not sampled (the sampler would slow it); BENCH_MEMORY more runs of each engine are,
    # and the memory figures are the median of their peaks
    for engine in ("pipeline", "pipeline-dask", "duckdb"):
        runs = results["runs"]["W1"][engine]
        assert [r["memory"] for r in runs] == [False, True, True]
        assert runs[0]["peak_pss"] == 0 and all(r["peak_pss"] > 0 for r in runs[1:])
        assert rows[("W1", engine)]["wall"] == runs[0]["wall"]
        assert rows[("W1", engine)]["peak_pss_mib"] == statistics.median(r["peak_pss"] for r in runs[1:]) / 2**20
    assert "Scale curve" in table
    # the cluster was stopped: no dask process of this test is left
    left = [p for p in psutil.process_iter(["cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left


def test_a_title_read_while_the_process_writes_it_is_read_again():
    """A process title caught half written (``pipeline: bench``) is not kept as the process's name."""
    from bench.measure import _complete

    assert _complete("pipeline: bench-w1 worker") and _complete("pipeline: bench-w1 writer")
    assert _complete("dask worker")
    assert not _complete("pipeline: bench")
    assert not _complete("python -m pipeline run")


def test_the_inputs_are_read_once_before_a_workload_is_timed(tmp_path):
    """Every byte of every input file is read before the first engine runs, so that none of them
    reads its input from disk while the others find it in the page cache."""
    from bench.harness import warm_page_cache

    sizes = [0, 1, (8 << 20) + 3]
    paths = []
    for i, n in enumerate(sizes):
        (tmp_path / f"f{i}").write_bytes(os.urandom(n))
        paths.append(tmp_path / f"f{i}")
    assert warm_page_cache(paths) == sum(sizes)


def test_an_exited_child_not_yet_reaped_is_not_counted(tmp_path):
    """A child that has exited but is not reaped yet (a zombie) holds no memory: the sampler leaves it out
    of the processes at the peak, and the report leaves out a process recorded at 0 MiB."""
    from bench.measure import _Sampler
    from bench.report import _breakdown

    code = "import os, time\nif os.fork() == 0:\n    os._exit(0)\nprint('forked', flush=True)\ntime.sleep(30)\n"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "forked"
        children = psutil.Process(parent.pid).children()
        assert len(children) == 1 and children[0].status() == psutil.STATUS_ZOMBIE
        sampler = _Sampler(parent.pid, 0.02)
        sampler.sample()
        assert sum(n for _, n in sampler.pss_at_peak.values()) == 1    # the parent alone
        assert sampler.max_procs == 1
    finally:
        parent.kill()
        parent.wait()
    row = {"workload": "W5", "engine": "pipeline",
           "pss_at_peak": {"python -m pipeline run": {"mib": 60.0, "processes": 1}, "123": {"mib": 0.0, "processes": 1}}}
    assert _breakdown([row]) == ["- W5 pipeline: python -m pipeline run 60"]
