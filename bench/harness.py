"""``python -m bench``: generate the inputs, run every engine of every workload, check, report.

Environment variables:

    BENCH_SCALE    sizes relative to the defaults (1.0: W1 5,000,000 rows; W3 2,000 files) [1.0]
    BENCH_REPEAT   timed runs of each engine on each workload (medians)                   [3]
    BENCH_MEMORY   more runs of each engine, sampled for memory (median peak)  [3, at most BENCH_REPEAT]
    BENCH_ONLY     workloads to run, e.g. "W1,W5"                                         [all]
    BENCH_ENGINES  engines to run, e.g. "pipeline,duckdb"                                 [all]
    BENCH_TIMEOUT  seconds one run may take before it is killed and marked FAIL           [1800]
    BENCH_WORKDIR  inputs, job files, outputs and logs                                    [bench/work]
    BENCH_RESULTS  folder receiving results.md and results.json                          [bench]

Exit code 0 when every run finished and wrote the expected rows, 1 otherwise. The table shows
measurements and ratios to a peer measured in the same run; it judges nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import check, data, measure, report
from bench.cluster import Cluster

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SALT = "bench"

W1_ROWS = 5_000_000
W3_FILES = 2_000
W3_ROWS_PER_FILE = 1_000
W4_FACTOR = 4          # the scale curve: W6, W1, W4 at 0.2x, 1x and 4x W1's rows
W6_FACTOR = 0.2
W5_ROWS = 10
W5_MIN_REPEAT = 5      # start-up is short and noisy: at least this many runs (unless BENCH_REPEAT=1)

W1_STAGES = """\
  - filter: "status == 'ok' and qty > 0"
  - derive: {total: "price * qty * (1 - fill_null(discount, 0))"}
  - select: [id, ts, user_id, country, product, total]
"""
W2_STAGES = f"""\
  - python: {{function: "bench_udf:enrich", api: pandas, params: {{salt: "{SALT}"}}}}
"""

JOB = """\
# written by python -m bench: {title}
name: bench-{wid}
input:
  paths: ["{input}"]
  format: csv
  schema: {{ts: "timestamp[s]"}}
stages:
{stages}output:
  path: "{output}"
  mode: overwrite
  compression: zstd
"""


@dataclass
class Engine:
    name: str
    command: Callable[[Path], list[str]]   # output folder -> argv
    cluster: bool = False                  # runs on the benchmark's running Dask cluster


@dataclass
class Workload:
    wid: str
    title: str
    dataset: data.DataSet
    kind: str                              # the fingerprint: "w1" or "w2"
    engines: list[Engine]
    reference: str | None = None           # the engine the ratio column divides by
    runs: dict[str, list[dict]] = field(default_factory=dict)


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    return float(text) if text else default


def _env_list(name: str) -> set[str] | None:
    text = os.environ.get(name, "").strip()
    return {t.strip().lower() for t in text.split(",") if t.strip()} or None


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _shown(path: Path) -> str:
    """The path as printed: relative to the current folder when it is inside it."""
    rel = os.path.relpath(path, Path.cwd())
    return str(path) if rel.startswith("..") else rel


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def pipeline_engine(wid: str, title: str, dataset: data.DataSet, stages: str, jobs: Path,
                    out: Path) -> Engine:
    """Write the job file for the workload; the engine runs ``python -m pipeline run`` on it."""
    folder = jobs / wid
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    target = out / wid / "pipeline"
    _write_if_changed(job, JOB.format(title=title, wid=wid.lower(), input=_rel(Path(dataset.glob), folder),
                                      stages=stages, output=_rel(target, folder)))
    if "bench_udf:" in stages:
        _write_if_changed(folder / "bench_udf.py", (BENCH_DIR / "udf.py").read_text())
    return Engine("pipeline", lambda _out: [sys.executable, "-m", "pipeline", "run", str(job), "--no-progress"])


def pipeline_dask_engine(local: Engine, cluster: dict) -> Engine:
    """The same job on the running Dask cluster (``cluster["address"]``), into its own folder."""
    def command(out: Path) -> list[str]:
        return local.command(out) + ["--set", "run.executor=dask", "--set", f"run.dask.address={cluster['address']}",
                                     "--set", f"output.path={out}"]
    return Engine("pipeline-dask", command, cluster=True)


def peer(name: str, kind: str, dataset: data.DataSet) -> Engine:
    module = f"bench.peers.{name}_peer"
    return Engine(name, lambda out: [sys.executable, "-m", module, kind, dataset.glob, str(out), "--salt", SALT])


def expected(ds: data.DataSet, kind: str) -> dict:
    """The expected fingerprint of the workload's output, cached in the data set's meta.json."""
    udf_digest = hashlib.sha1((BENCH_DIR / "udf.py").read_bytes()).hexdigest()[:12]
    key = kind if kind == "w1" else f"{kind}:{SALT}:{udf_digest}"
    cached = ds.meta.setdefault("expected", {}).get(key)
    if cached:
        return cached
    fp = check.expected_w1(ds.glob) if kind == "w1" else check.expected_w2(ds.glob, SALT)
    ds.meta["expected"][key] = fp
    ds.save_meta()
    return fp


def versions() -> dict:
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("pipeline", "duckdb", "polars", "pandas", "pyarrow", "dask", "distributed", "psutil"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def warm_page_cache(paths) -> int:
    """Read every input file once, untimed, and return the bytes read: the first engine of a
    workload must not be the one that reads the input from disk after the machine paged it out (a
    W4 run once took 19 s against 6 s for the next four)."""
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(8 << 20):
                total += len(block)
    return total


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("      " + line for line in text[-lines:])


def run_one(w: Workload, engine: Engine, rep: int, out_root: Path, logs: Path, env: dict,
            timeout: float, cluster_pids: tuple[int, ...] = (), memory: bool = False) -> dict:
    """One run of an engine, checked. A timed run is not sampled while it goes on; a ``memory`` run
    is (every process's PSS and RSS every 20 ms), for the peak memory only."""
    out = out_root / w.wid / engine.name
    shutil.rmtree(out, ignore_errors=True)
    if not engine.name.startswith("pipeline"):
        out.mkdir(parents=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    log = logs / f"{w.wid}-{engine.name}-{rep + 1}{'-memory' if memory else ''}.log"
    m = measure.run(engine.command(out), cwd=str(ROOT), env=env, log_path=str(log), timeout=timeout,
                    extra_pids=cluster_pids if engine.cluster else (), memory=memory)
    problem = None
    if m.timed_out:
        problem = f"timed out after {timeout:g} s"
    elif m.returncode != 0:
        problem = f"exit code {m.returncode}"
    else:
        try:
            got = check.output_fingerprint(out, w.kind)
            problem = check.compare(got, expected(w.dataset, w.kind))
        except Exception as exc:  # noqa: BLE001 - an unreadable output is a wrong output
            problem = f"output unreadable: {type(exc).__name__}: {exc}"
    if m.extra.get("left_behind"):
        problem = (problem + "; " if problem else "") + f"{m.extra['left_behind']} process(es) left behind"
    result = {
        "rep": rep + 1, "memory": memory, "wall": m.wall, "cpu": m.cpu, "peak_rss": m.peak_rss, "peak_pss": m.peak_pss,
        "pss_at_peak": {k: {"mib": round(v[0] / 2**20, 1), "processes": v[1]} for k, v in m.pss_at_peak.items()},
        "procs": m.max_procs, "processes": m.processes,
        "returncode": m.returncode, "ok": problem is None, "problem": problem, "log": _rel(log, ROOT),
        "load1": _load()[0],
    }
    status = "ok" if problem is None else f"FAIL: {problem}"
    sampled = (f"{m.peak_pss / 2**20:6.0f} MiB PSS {m.peak_rss / 2**20:6.0f} MiB RSS {m.max_procs:3d} procs"
               if memory else "(timed, not sampled)")
    print(f"  {w.wid} {'memory' if memory else f'run {rep + 1:<2}'} {engine.name:<9} "
          f"{m.wall:8.2f} s wall {m.cpu:8.2f} s cpu {sampled}  {status}", flush=True)
    if problem and m.returncode != 0:
        print(_tail(log), flush=True)
    return result


def summarise(w: Workload) -> list[dict]:
    rows = []
    for engine in w.engines:
        runs = w.runs.get(engine.name, [])
        if not runs:
            continue
        good = [r for r in runs if r["ok"]] or runs
        # time from the timed runs, memory from the sampled ones (results of older versions: all runs)
        timed = [r for r in good if not r.get("memory")] or good
        sampled = [r for r in good if r.get("memory", True)] or good
        wall = statistics.median(r["wall"] for r in timed)
        by_pss = sorted(sampled, key=lambda r: r["peak_pss"])
        rows.append({
            "workload": w.wid, "engine": engine.name, "runs": len(runs), "rows": w.dataset.rows,
            "wall": wall, "cpu": statistics.median(r["cpu"] for r in timed),
            "peak_pss_mib": statistics.median(r["peak_pss"] for r in sampled) / 2**20,
            "peak_mib": statistics.median(r["peak_rss"] for r in sampled) / 2**20,
            "pss_at_peak": by_pss[len(by_pss) // 2]["pss_at_peak"],    # of the run with the median peak
            "rows_per_s": w.dataset.rows / wall if wall > 0 else 0.0,
            "mb_per_s": w.dataset.bytes / 1e6 / wall if wall > 0 else 0.0,
            "ok": all(r["ok"] for r in runs),
            "problems": sorted({r["problem"] for r in runs if r["problem"]}),
        })
    if w.reference:
        ref = next((r for r in rows if r["engine"] == w.reference), None)
        for r in rows:
            r["ratio"] = r["wall"] / ref["wall"] if ref and ref["wall"] > 0 else None
            r["pss_ratio"] = r["peak_pss_mib"] / ref["peak_pss_mib"] if ref and ref["peak_pss_mib"] > 0 else None
            r["ratio_to"] = w.reference
    return rows


def build(scale: float, work: Path, only: set[str] | None = None) -> list[Workload]:
    """The workloads (those in ``only``, when given), their inputs generated where missing."""
    data_root, jobs, out = work / "data", work / "jobs", work / "out"
    rows = max(1_000, round(W1_ROWS * scale))
    specs = {
        "sales": data.DataSpec("sales", 1, rows),
        "sales4x": data.DataSpec("sales4x", 1, rows * W4_FACTOR),
        "sales02x": data.DataSpec("sales02x", 1, max(1_000, round(rows * W6_FACTOR))),
        "small": data.DataSpec("small", max(2, round(W3_FILES * scale)), W3_ROWS_PER_FILE),
        "tiny": data.DataSpec("tiny", 1, W5_ROWS),
    }
    plans = [
        ("W1", "vectorised: filter, derive, select, zstd", "sales", "w1", W1_STAGES,
         ["duckdb", "polars", "pandas", "pool"], "duckdb"),
        ("W2", "python stage: blake2b + string normalisation per row", "sales", "w2", W2_STAGES,
         ["pandas", "polars", "duckdb", "dask", "pool"], "pandas"),
        ("W3", "many small files, W1's stages", "small", "w1", W1_STAGES, ["duckdb", "polars"], "duckdb"),
        ("W4", "scale curve: W1 on 4x the rows", "sales4x", "w1", W1_STAGES, ["duckdb"], "duckdb"),
        ("W5", "start-up: W1 on a 10-row file", "tiny", "w1", W1_STAGES, [], None),
        ("W6", "scale curve: W1 on 0.2x the rows", "sales02x", "w1", W1_STAGES, ["duckdb"], "duckdb"),
    ]
    workloads = []
    for wid, title, key, kind, stages, peers, reference in plans:
        if only and wid.lower() not in only:
            continue
        ds = data.ensure(specs[key], data_root)
        local = pipeline_engine(wid, title, ds, stages, jobs, out)
        engines = [local]
        if wid == "W1":  # beside the local executor: the Dask executor on a running 2-worker cluster
            engines.append(pipeline_dask_engine(local, CLUSTER))
        engines += [peer(p, kind, ds) for p in peers]
        workloads.append(Workload(wid, title, ds, kind, engines, reference))
    return workloads


CLUSTER: dict = {"address": None}    # the running cluster's address, while there is one


def main() -> int:
    scale = _env_float("BENCH_SCALE", 1.0)
    repeat = max(1, int(_env_float("BENCH_REPEAT", 3)))
    # a run's peak depends on which processes' highs coincide at one sample: one run is not enough
    sampled = max(1, int(_env_float("BENCH_MEMORY", min(3, repeat))))
    timeout = _env_float("BENCH_TIMEOUT", 1800.0)
    only, engines_only = _env_list("BENCH_ONLY"), _env_list("BENCH_ENGINES")
    work = Path(os.environ.get("BENCH_WORKDIR") or BENCH_DIR / "work").resolve()
    results_dir = Path(os.environ.get("BENCH_RESULTS") or BENCH_DIR).resolve()
    if scale <= 0:
        print("bench: BENCH_SCALE must be positive", file=sys.stderr)
        return 2
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    started = time.time()
    load_start = _load()
    info = {
        "scale": scale, "repeat": repeat, "memory_runs": sampled, "cores": os.cpu_count(), "commit": _commit(),
        "platform": platform.platform(), "versions": versions(), "load_start": load_start,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
    }
    print(f"bench: scale {scale:g}, {repeat} timed and {sampled} sampled run(s) per engine, {info['cores']} cores, "
          f"load {' '.join(map(str, load_start))}", flush=True)

    workloads = build(scale, work, only)
    for w in workloads:
        if engines_only:
            w.engines = [e for e in w.engines if e.name in engines_only]
        expected(w.dataset, w.kind)

    env = dict(os.environ)
    # as on a user's machine: bytecode is cached, not compiled again at every start
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])

    for w in workloads:
        if not w.engines:
            continue
        print(f"{w.wid}: {w.title} ({w.dataset.rows:,} rows, {w.dataset.bytes / 1e6:,.1f} MB, "
              f"{len(w.dataset.paths):,} file(s))", flush=True)
        with contextlib.ExitStack() as stack:
            pids: tuple[int, ...] = ()
            if any(e.cluster for e in w.engines):
                cluster = stack.enter_context(Cluster(work / "cluster", env))
                CLUSTER["address"], pids = cluster.address, cluster.pids
                print(f"  a Dask cluster of {cluster.workers} single-threaded workers at {cluster.address}",
                      flush=True)
                stack.callback(CLUSTER.update, address=None)
            warm_page_cache(w.dataset.paths)
            runs = max(repeat, W5_MIN_REPEAT) if w.wid == "W5" and repeat > 1 else repeat
            for rep in range(runs + sampled):
                # every engine once per repetition, the order rotated from one repetition to the next;
                # the last repetitions sample memory, the others are timed
                k = rep % len(w.engines)
                for engine in w.engines[k:] + w.engines[:k]:
                    w.runs.setdefault(engine.name, []).append(
                        run_one(w, engine, rep, work / "out", logs, env, timeout, pids, memory=rep >= runs))

    if not any(w.runs for w in workloads):
        print("bench: nothing to run (see BENCH_ONLY and BENCH_ENGINES)", file=sys.stderr)
        return 2
    rows = [r for w in workloads for r in summarise(w)]
    info["load_end"] = _load()
    info["seconds"] = round(time.time() - started, 1)
    inputs = {}
    for w in workloads:
        loads = [r["load1"] for runs in w.runs.values() for r in runs]
        inputs[w.wid] = {"rows": w.dataset.rows, "bytes": w.dataset.bytes, "files": len(w.dataset.paths),
                         "load1": [min(loads), max(loads)] if loads else None}
    table = report.text_table(rows)
    print()
    print(table)
    curve = report.scale_curve(rows)
    if curve:
        print()
        print(curve)
    print()
    print(report.footer(info))

    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.md").write_text(report.markdown(rows, info, inputs))
    raw = {w.wid: w.runs for w in workloads}
    (results_dir / "results.json").write_text(json.dumps(
        {"info": info, "inputs": inputs, "table": rows, "runs": raw}, indent=2, default=str)
        + "\n")
    print(f"wrote {_shown(results_dir / 'results.md')} and {_shown(results_dir / 'results.json')}")
    failed = [f"{r['workload']} {r['engine']}" for r in rows if not r["ok"]]
    if failed:
        print(f"bench: FAIL: {', '.join(failed)} (see the logs in {_shown(logs)})", file=sys.stderr)
        return 1
    return 0
