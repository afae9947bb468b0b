"""A running Dask cluster for the benchmark: one scheduler and two single-threaded workers, each its
own process on the loopback interface, started before the runs that use it and stopped after them.

The pipeline then runs with ``--set run.executor=dask --set run.dask.address=ADDRESS``, as against
a cluster that was already up: the cluster's start-up is not part of the measured run, while its
processes' CPU time and memory during the run are (see ``measure.run(extra_pids=...)``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKERS = 2
START_SECONDS = 60.0


class Cluster:
    def __init__(self, folder: Path, env: dict, workers: int = WORKERS):
        self.folder = folder
        self.env = env
        self.workers = workers
        self.procs: list[subprocess.Popen] = []
        self.address: str | None = None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.procs)

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.folder / log, "wb")  # noqa: SIM115 - closed below, once the child has it
        try:
            proc = subprocess.Popen([sys.executable, "-m", *args], env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Cluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "scheduler.json"
        info.unlink(missing_ok=True)
        try:
            self._start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info)],
                        "scheduler.log")
            self.address = self._wait_for_file(info)["address"]
            for i in range(self.workers):
                self._start(["distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny",
                             "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                             "--name", f"bench-{i}", "--local-directory", str(self.folder / f"worker-{i}")],
                            f"worker-{i}.log")
            self._wait_for_workers()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_for_file(self, path: Path) -> dict:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            self._check_alive()
            if path.is_file():
                try:
                    return json.loads(path.read_text())
                except ValueError:
                    pass  # being written
            time.sleep(0.1)
        raise RuntimeError(f"the Dask scheduler did not start within {START_SECONDS:g} s "
                           f"(see {self.folder / 'scheduler.log'})")

    def _wait_for_workers(self) -> None:
        from distributed import Client

        with Client(self.address, timeout=START_SECONDS, set_as_default=False) as client:
            client.wait_for_workers(self.workers, timeout=START_SECONDS)

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"a Dask cluster process exited with code {p.returncode} "
                                   f"(see the logs in {self.folder})")

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []
