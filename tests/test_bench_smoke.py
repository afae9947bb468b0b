"""A small version of `make bench`: the harness runs, the pipeline and DuckDB agree on every workload."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_smoke(tmp_path):
    env = dict(os.environ, BENCH_SCALE="0.002", BENCH_REPEAT="1", BENCH_ENGINES="pipeline,duckdb",
               BENCH_WORKDIR=str(tmp_path / "work"), BENCH_RESULTS=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "bench"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for workload in ("W1", "W2", "W3", "W4", "W5"):
        assert f"| {workload} | pipeline |" in table
    assert "FAIL" not in table
