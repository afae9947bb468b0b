"""Run one command as a subprocess and measure it: wall, CPU and peak memory of its process tree.

- wall: ``perf_counter`` from just before ``Popen`` to the return of ``wait()``.
- CPU: user + system seconds of the whole tree. ``getrusage(RUSAGE_CHILDREN)`` around the run
  counts every descendant that was waited for (a Pool's workers, a writer); a sampler also keeps
  the last CPU times it saw of each process of the tree, which covers descendants nobody waited
  for. The larger of the two is reported.
- peak memory: a sampler thread sums the RSS of every process of the tree every ``interval``
  seconds and keeps the largest sum (shared pages count once per process that maps them).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Measurement:
    cmd: list[str]
    returncode: int
    wall: float
    cpu: float
    peak_rss: int              # bytes, summed over the tree
    max_procs: int             # most processes seen at once
    timed_out: bool = False
    samples: int = 0
    extra: dict = field(default_factory=dict)


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True, name="bench-sampler")
        self.pid = pid
        self.interval = interval
        self.stop = threading.Event()
        self.peak = 0
        self.max_procs = 0
        self.samples = 0
        self.cpu_seen: dict[tuple[int, float], float] = {}
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        try:
            root = self._procs.get(self.pid) or psutil.Process(self.pid)
            self._procs[self.pid] = root
            found = [root] + root.children(recursive=True)
        except psutil.Error:
            return []
        # keep the Process objects, so create_time is read once per process
        tree = []
        for p in found:
            tree.append(self._procs.setdefault(p.pid, p))
        return tree

    def sample(self) -> None:
        total = 0
        count = 0
        for p in self._tree():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    times = p.cpu_times()
                    key = (p.pid, p.create_time())
            except psutil.Error:
                continue
            total += rss
            count += 1
            self.cpu_seen[key] = times.user + times.system
        self.samples += 1
        self.peak = max(self.peak, total)
        self.max_procs = max(self.max_procs, count)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    except psutil.Error:
        pass
    proc.kill()


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _end_group(pgid: int, grace: float) -> int:
    """Processes of the run's process group still alive ``grace`` seconds after it ended (then
    killed): 0 normally. Exiting processes (a cluster's workers shutting down) get the grace."""
    deadline = time.monotonic() + grace
    alive = _group(pgid)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = _group(pgid)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


def run(cmd: list[str], *, cwd: str | None = None, env: dict | None = None, log_path: str | None = None,
        timeout: float | None = None, interval: float = 0.02, grace: float = 5.0) -> Measurement:
    """Run ``cmd`` to its end (or ``timeout``), its output to ``log_path``; measure it."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in the finally below
    timed_out = False
    try:
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        # its own process group, so a timeout can end the whole tree
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = _Sampler(proc.pid, interval)
        sampler.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc)
            proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        left_behind = _end_group(proc.pid, grace)
        cpu = _children_cpu() - cpu0
    finally:
        if log_path:
            log.close()
    return Measurement(cmd=cmd, returncode=proc.returncode, wall=wall,
                       cpu=max(cpu, sum(sampler.cpu_seen.values())), peak_rss=sampler.peak,
                       max_procs=sampler.max_procs, timed_out=timed_out, samples=sampler.samples,
                       extra={"left_behind": left_behind} if left_behind else {})
