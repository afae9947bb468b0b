"""Kill runs at random moments: the published output is always exactly the old one or the new one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_subprocess, sort_rows, write_job


def _published(out) -> tuple[str, list[dict]] | None:
    if not out.exists():
        return None
    m = manifest_of(out)
    assert (out / "_SUCCESS").exists()
    listed = {f["path"] for f in m["files"]} | {f["path"] for f in m["rejects"]["files"]}
    present = {os.path.relpath(os.path.join(d, n), out) for d, _, files in os.walk(out) for n in files}
    assert present == listed | {"_manifest.json", "_SUCCESS"}
    return m["run_id"], sort_rows(read_output(out).to_pylist())


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM])
def test_random_kills_publish_old_or_new_never_a_mixture(tmp_path, kill):
    rnd = random.Random(7)
    for name, start in (("a.csv", 0), ("b.csv", 100000)):
        rows = "".join(f"{i},{i % 13},text {i}\n" for i in range(start, start + 40000))
        (tmp_path / name).write_text("id,k,s\n" + rows)
    job = basic_job("a.csv", input={"chunk_bytes": "64KiB"}, run={"workers": 2},
                    output={"partition_by": ["k"], "row_group_rows": 5000})
    config = write_job(tmp_path, job)
    assert run_subprocess("run", config, "--no-progress").returncode == 0
    seen = {}
    state = _published(tmp_path / "out")
    seen[state[0]] = state[1]
    for i in range(20):
        source = "b.csv" if i % 2 else "a.csv"
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress",
                                 "--set", f"input.paths=[{source}]"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.0, 1.5))
        proc.send_signal(kill)
        code = proc.wait(timeout=60)
        state = _published(tmp_path / "out")
        assert state is not None
        run_id, rows = state
        if run_id not in seen:
            assert code == 0 or code == -kill or code == 128 + kill
            ids = {r["id"] for r in rows}
            assert len(ids) == len(rows) == 40000  # complete, no row twice
            assert (min(ids) >= 100000) == (source == "b.csv")
            seen[run_id] = rows
        else:
            assert rows == seen[run_id]
    # whatever the kills left behind, the next run cleans it up and succeeds
    done = run_subprocess("run", config, "--no-progress")
    assert done.returncode == 0, done.stderr
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".out.") and not n.endswith(".lock")]
    assert leftovers == []
