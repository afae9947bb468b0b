"""How busy each process of a run is, over time: where the cores sit idle.

    python -m bench.timeline [--step 0.25] -- python -m pipeline run bench/work/jobs/W1/job.yaml --no-progress

Samples the CPU times of every process of the command's tree every 20 ms and prints, for each
time step, the share of one core each process used (100 = one core fully busy), processes named by
their title (``pipeline: JOB worker``, ``... writer``) or command line, and the machine's idle
share. At the end: each process's CPU seconds and its busy share of the time it was alive.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import psutil


def _name(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return str(p.pid)
    text = " ".join(cmd) if cmd else p.name()
    if text.startswith("pipeline: "):
        return text.split()[-1]
    return os.path.basename(cmd[0]) + " " + " ".join(cmd[1:3]) if cmd else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.timeline")
    ap.add_argument("--step", type=float, default=0.25, help="seconds per printed row")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    seen: dict[int, tuple[psutil.Process, str, float]] = {}
    last: dict[int, float] = {}
    first_seen: dict[int, float] = {}
    last_seen: dict[int, float] = {}
    buckets: dict[int, dict[int, float]] = {}
    idle_samples: dict[int, list[float]] = {}
    cpu_prev = psutil.cpu_times()
    while proc.poll() is None:
        now = time.perf_counter() - t0
        b = int(now / args.step)
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                if p.pid not in seen:
                    seen[p.pid] = (p, _name(p), now)
                    first_seen[p.pid] = now
                t = p.cpu_times()
                total = t.user + t.system
            except psutil.Error:
                continue
            used = total - last.get(p.pid, 0.0)
            last[p.pid] = total
            last_seen[p.pid] = now
            buckets.setdefault(b, {})
            buckets[b][p.pid] = buckets[b].get(p.pid, 0.0) + used
        cpu_now = psutil.cpu_times()
        spent = sum(cpu_now) - sum(cpu_prev)
        if spent > 0:
            idle_samples.setdefault(b, []).append((cpu_now.idle - cpu_prev.idle) / spent)
        cpu_prev = cpu_now
        time.sleep(0.02)
    wall = time.perf_counter() - t0

    pids = sorted(seen, key=lambda pid: first_seen[pid])
    names = {pid: seen[pid][1][:14] for pid in pids}
    print(f"{'t (s)':>6}  " + "  ".join(f"{names[pid]:>14}" for pid in pids) + "  machine idle")
    for b in sorted(buckets):
        row = buckets[b]
        idle = idle_samples.get(b) or [0.0]
        print(f"{b * args.step:6.2f}  " + "  ".join(f"{100 * row.get(pid, 0.0) / args.step:14.0f}" for pid in pids)
              + f"  {100 * sum(idle) / len(idle):10.0f}%")
    print(f"\nwall {wall:.2f} s, exit code {proc.returncode}")
    for pid in pids:
        alive = max(last_seen.get(pid, 0.0) - first_seen[pid], 1e-9)
        print(f"  {seen[pid][1][:60]:60s} pid {pid:>7}: {last.get(pid, 0.0):6.2f} s CPU, "
              f"alive {first_seen[pid]:5.2f}..{last_seen.get(pid, 0.0):5.2f} s, "
              f"busy {100 * last.get(pid, 0.0) / alive:3.0f}%")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
