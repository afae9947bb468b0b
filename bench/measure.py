"""Run one command as a subprocess and measure it: wall, CPU and peak memory of its process tree.

- wall: ``perf_counter`` from just before ``Popen`` to the return of ``wait()``.
- CPU: user + system seconds of the whole tree. ``getrusage(RUSAGE_CHILDREN)`` around the run
  counts every descendant that was waited for (a Pool's workers, a writer); a sampler also keeps
  the last CPU times it saw of each process of the tree, which covers descendants nobody waited
  for. The larger of the two is reported.
- peak memory (unless ``memory=False``): a sampler thread sums the PSS and the RSS of every process
  of the tree every ``interval`` seconds and keeps the largest sums. PSS (proportional set size, from
  ``/proc/PID/smaps_rollup``) divides each shared page among the processes mapping it, so the sum
  over the tree is what the run really costs the machine; the RSS sum counts a page that forked
  processes share once per process. The PSS of each process at the moment of the PSS peak is kept
  too (by process title: parent, writer, workers).
- processes that are not the command's descendants but work for it (a running Dask cluster's
  scheduler and workers) can be given as ``extra_pids``: their CPU seconds during the run and their
  memory are added to the run's figures.
"""

from __future__ import annotations

import os
import re
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
    peak_pss: int = 0          # bytes, summed over the tree
    pss_at_peak: dict = field(default_factory=dict)    # process title -> [PSS bytes, processes] at the PSS peak
    processes: list = field(default_factory=list)      # the title of every process sampled
    timed_out: bool = False
    samples: int = 0
    extra: dict = field(default_factory=dict)


def _title(p: psutil.Process) -> str:
    """The process's title (``pipeline: JOB worker``, ``dask worker``) or its command, shortened."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return str(p.pid)
    if not cmd:
        return p.name()
    text = " ".join(cmd).strip()   # setproctitle pads a title with spaces
    if text.startswith(("pipeline: ", "dask ")):
        return re.sub(r"\s*\[[^]]*\]", "", text)   # "dask worker [tcp://...]": one name for all workers
    args = [os.path.basename(cmd[0])] + [a for a in cmd[1:4] if not a.startswith("/")]
    return " ".join(args)


def _complete(title: str) -> bool:
    """A title the process keeps: a Dask process's, or ``pipeline: JOB worker|writer``. A title read while
    the process writes it can be cut short (``pipeline: bench``): it is read again at the next sample."""
    return title.startswith("dask ") or (title.startswith("pipeline: ") and title.endswith((" worker", " writer")))


class _Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float, extra_pids: tuple[int, ...] = ()):
        super().__init__(daemon=True, name="bench-sampler")
        self.pid = pid
        self.interval = interval
        self.extra_pids = tuple(extra_pids)
        self.stop = threading.Event()
        self.peak = 0
        self.peak_pss = 0
        self._at_peak: dict[tuple[int, float], tuple[str, int]] = {}   # process -> (title then, PSS)
        self._seen: dict[tuple[int, float], str] = {}                     # every process sampled -> its title
        self.max_procs = 0
        self.samples = 0
        self.cpu_seen: dict[tuple[int, float], float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._titles: dict[tuple[int, float], str] = {}

    def _proc(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = psutil.Process(pid)
        return p

    def _tree(self) -> list[tuple[psutil.Process, bool]]:
        """(process, whether it is one of the command's own) for every process to sample."""
        found = []
        for pid in (self.pid, *self.extra_pids):
            try:
                root = self._proc(pid)
                found += [(p, pid == self.pid) for p in [root] + root.children(recursive=True)]
            except psutil.Error:
                continue
        # keep the Process objects, so create_time is read once per process
        return [(self._procs.setdefault(p.pid, p), own) for p, own in found]

    def sample(self) -> None:
        total = total_pss = 0
        count = 0
        seen: dict[tuple[int, float], tuple[str, int]] = {}
        for p, own in self._tree():
            try:
                with p.oneshot():
                    key = (p.pid, p.create_time())
                    mem = p.memory_full_info()
                    times = p.cpu_times()
                title = self._titles.get(key)
                if title is None:  # a worker sets its title just after it starts: look again next time
                    title = _title(p)
                    if _complete(title):
                        self._titles[key] = title
            except psutil.Error:
                continue
            if mem.rss == 0:   # exited, not yet reaped: it holds no memory and is no longer running
                continue
            total += mem.rss
            pss = getattr(mem, "pss", mem.rss)
            total_pss += pss
            seen[key] = (title, pss)
            self._seen[key] = title
            count += 1
            if own:
                self.cpu_seen[key] = times.user + times.system
        self.samples += 1
        self.peak = max(self.peak, total)
        if total_pss > self.peak_pss:
            self.peak_pss = total_pss
            self._at_peak = seen
        self.max_procs = max(self.max_procs, count)

    @property
    def processes(self) -> list[str]:
        """The title of every process sampled during the run (each under the title it had last)."""
        return sorted(self._titles.get(key, title) for key, title in self._seen.items())

    @property
    def pss_at_peak(self) -> dict[str, list[int]]:
        """Title -> [PSS bytes, processes] at the PSS peak, each process under the title it had last: a
        process sampled in the moment between its fork and setting its title is named by its role."""
        by_title: dict[str, list[int]] = {}
        for key, (title, pss) in self._at_peak.items():
            entry = by_title.setdefault(self._titles.get(key, title), [0, 0])
            entry[0] += pss
            entry[1] += 1
        return by_title

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def _cpu_of(pids: tuple[int, ...]) -> float:
    """CPU seconds so far of these processes and their descendants."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root] + root.children(recursive=True):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


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
        timeout: float | None = None, interval: float = 0.02, grace: float = 5.0,
        extra_pids: tuple[int, ...] = (), memory: bool = True) -> Measurement:
    """Run ``cmd`` to its end (or ``timeout``), its output to ``log_path``; measure it (with
    ``extra_pids``, processes outside the tree that work for it).

    Without ``memory``, nothing samples the run while it goes on (no peak memory, no process count):
    reading every process's memory every 20 ms takes a third of a core on a 2-core machine, more for
    a run of many processes, and would slow the run it times."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in the finally below
    timed_out = False
    try:
        cpu0 = _children_cpu()
        extra0 = _cpu_of(extra_pids)
        t0 = time.perf_counter()
        # its own process group, so a timeout can end the whole tree
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = _Sampler(proc.pid, interval, extra_pids)
        if memory:
            sampler.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc)
            proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop.set()
        if memory:
            sampler.join()
        left_behind = _end_group(proc.pid, grace)
        cpu = _children_cpu() - cpu0
        extra_cpu = _cpu_of(extra_pids) - extra0
    finally:
        if not isinstance(log, int):
            log.close()
    # the extra processes' CPU is counted by its difference over the run
    return Measurement(cmd=cmd, returncode=proc.returncode, wall=wall,
                       cpu=max(cpu, sum(sampler.cpu_seen.values())) + extra_cpu, peak_rss=sampler.peak,
                       max_procs=sampler.max_procs, timed_out=timed_out, samples=sampler.samples,
                       peak_pss=sampler.peak_pss, pss_at_peak=sampler.pss_at_peak, processes=sampler.processes,
                       extra={"left_behind": left_behind} if left_behind else {})
