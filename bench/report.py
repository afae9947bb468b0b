"""The summary rows as a text table and as markdown, and the scale curve (W6, W1, W4)."""

from __future__ import annotations

COLUMNS = ("workload", "engine", "wall s", "CPU s", "PSS MiB", "RSS MiB", "rows/s", "MB/s", "wall ratio",
           "PSS ratio", "check")
_RIGHT = {2, 3, 4, 5, 6, 7, 8, 9}

SCALE_WORKLOADS = ("W6", "W1", "W4")      # W1's stages on 0.2x, 1x and 4x its rows
SCALE_COLUMNS = ("engine", "rows", "wall s", "rows/s", "PSS MiB", "PSS / at W1's rows")


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


def cells(rows: list[dict]) -> list[list[str]]:
    table = []
    for r in rows:
        reference = r.get("ratio_to") == r["engine"]
        table.append([
            r["workload"], r["engine"] + (" (reference)" if reference else ""), f"{r['wall']:.2f}",
            f"{r['cpu']:.2f}", f"{r['peak_pss_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{r['rows_per_s']:,.0f}",
            f"{r['mb_per_s']:.1f}", _ratio(r.get("ratio")), _ratio(r.get("pss_ratio")),
            "ok" if r["ok"] else "FAIL",
        ])
    return table


def scale_cells(rows: list[dict]) -> list[list[str]]:
    """One line per engine and size of the scale curve, for the engines measured at every size."""
    found = {(r["workload"], r["engine"]): r for r in rows if r["workload"] in SCALE_WORKLOADS}
    engines = [e for w, e in found if w == "W1" and all((s, e) in found for s in SCALE_WORKLOADS)]
    out = []
    for engine in engines:
        base = found[("W1", engine)]["peak_pss_mib"]
        for wid in SCALE_WORKLOADS:
            r = found[(wid, engine)]
            out.append([engine, f"{r['rows']:,}", f"{r['wall']:.2f}", f"{r['rows_per_s']:,.0f}",
                        f"{r['peak_pss_mib']:.0f}", _ratio(r["peak_pss_mib"] / base if base > 0 else None)])
    return out


def _text(columns, body, right) -> str:
    widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    previous = None
    for row in body:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def text_table(rows: list[dict]) -> str:
    return _text(COLUMNS, cells(rows), _RIGHT)


def scale_curve(rows: list[dict]) -> str:
    body = scale_cells(rows)
    if not body:
        return ""
    return "scale curve (W1's stages):\n" + _text(SCALE_COLUMNS, body, {1, 2, 3, 4, 5})


def _markdown_table(columns, body, right) -> list[str]:
    out = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---:" if i in right else "---" for i in range(len(columns))) + "|"]
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]


def _notes() -> list[str]:
    return [
        "wall: median over the timed runs, from the start of the command to its exit (all of `pipeline run`,",
        "  start-up included); nothing samples a timed run while it goes on. CPU: user + system seconds of",
        "  the whole process tree in the timed runs. PSS MiB: median over more runs of each engine after the",
        "  timed ones (BENCH_MEMORY, 3 by default), each sampled every 20 ms, of the largest sum over all",
        "  processes of the run of their proportional set size (a page shared by n processes counts 1/n in",
        "  each: what the run costs the machine); RSS MiB: the same with resident set sizes (a shared page",
        "  counts once per process). pipeline-dask: the same job with",
        "  run.executor=dask on a Dask cluster (a scheduler and 2 single-threaded worker processes) started",
        "  before the run; the cluster's processes' CPU and memory during the run are included. rows/s and",
        "  MB/s: input rows and bytes over wall. wall ratio and PSS ratio: over the reference engine's, measured",
        "  in the same run (W1, W3, W4, W6: duckdb; W2: pandas). check: the output has the expected rows",
        "  (count, sum of id, a hash of the key columns, sum of total) in every run.",
    ]


def footer(info: dict) -> str:
    v = info["versions"]
    engines = ", ".join(f"{k} {v[k]}" for k in ("duckdb", "polars", "pandas", "pyarrow", "dask") if v.get(k))
    lines = [
        f"scale {info['scale']:g}, {info['repeat']} run(s) each, {info['cores']} cores; load average "
        f"{' '.join(map(str, info['load_start']))} at the start, {' '.join(map(str, info['load_end']))} at the end; "
        f"{info['seconds']:.0f} s in all",
        f"python {v['python']}, pipeline {v.get('pipeline')} ({info.get('commit') or 'no commit'}); {engines}",
    ]
    return "\n".join(lines + _notes())


def _breakdown(rows: list[dict]) -> list[str]:
    """Where the pipeline's memory is at its peak: PSS by process."""
    out = []
    for r in rows:
        if not r["engine"].startswith("pipeline") or not r.get("pss_at_peak"):
            continue
        # a process at 0 MiB had exited when it was sampled (results of older runs still hold them)
        parts = sorted(((k, v) for k, v in r["pss_at_peak"].items() if v["mib"] > 0), key=lambda kv: -kv[1]["mib"])
        shown = ", ".join(f"{name}{' x' + str(v['processes']) if v['processes'] > 1 else ''} {v['mib']:.0f}"
                          for name, v in parts)
        out.append(f"- {r['workload']} {r['engine']}: {shown}")
    return out


def markdown(rows: list[dict], info: dict, inputs: dict) -> str:
    out = [
        "# Benchmark results",
        "",
        f"`make bench` (BENCH_SCALE={info['scale']:g}, BENCH_REPEAT={info['repeat']}, "
        f"BENCH_MEMORY={info.get('memory_runs', 1)}) on {info['started']}, "
        f"{info['cores']} cores, load average {' '.join(map(str, info['load_start']))} at the start and "
        f"{' '.join(map(str, info['load_end']))} at the end.",
        "",
        *_markdown_table(COLUMNS, cells(rows), _RIGHT),
    ]
    scale = scale_cells(rows)
    if scale:
        out += ["", "Scale curve (W1's stages on 0.2x, 1x and 4x the rows):", "",
                *_markdown_table(SCALE_COLUMNS, scale, {1, 2, 3, 4, 5})]
    breakdown = _breakdown(rows)
    if breakdown:
        out += ["", "PSS at the peak, by process (MiB, the run with the median peak):", "", *breakdown]
    out += ["", "Inputs:", ""]
    for wid, i in inputs.items():
        load = i.get("load1")
        during = f"; 1-minute load average {load[0]:g} to {load[1]:g} after its runs" if load else ""
        out.append(f"- {wid}: {i['rows']:,} rows, {i['bytes'] / 1e6:,.1f} MB in {i['files']:,} file(s){during}")
    out += ["", *(line.strip() for line in _notes()), ""]
    v = info["versions"]
    out.append("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val)
               + (f"; commit {info['commit']}" if info.get("commit") else "") + ".")
    return "\n".join(out) + "\n"
