"""The targets of issue 4, judged on the summary rows, and the table as text and as markdown."""

from __future__ import annotations

MIB = 2**20

# workload -> (text, reference engine of the ratio column)
TARGETS = {
    "W1": "wall <= 1.3x duckdb; < polars, pandas, pool",
    "W2": "wall <= 0.55x pandas; < every peer",
    "W3": "wall <= 1.0x duckdb",
    "W4": "peak <= 1024 MiB; <= 1.1x W1 peak",
    "W5": "wall <= 1.0 s",
}

COLUMNS = ("workload", "engine", "wall s", "CPU s", "peak MiB", "rows/s", "MB/s", "ratio", "check",
           "target", "met")


def _find(rows: list[dict], wid: str, engine: str) -> dict | None:
    return next((r for r in rows if r["workload"] == wid and r["engine"] == engine), None)


def evaluate(rows: list[dict]) -> dict:
    """workload -> {target, met (True/False/None), detail}; sets W4's peak ratio on its row."""
    out = {}
    for wid, text in TARGETS.items():
        p = _find(rows, wid, "pipeline")
        if p is None:
            continue
        checks: list[tuple[str, bool]] = []
        unjudged: list[str] = []

        def wall_vs(engine: str, factor: float | None = None) -> None:
            peer = _find(rows, wid, engine)
            if peer is None:
                return
            if not peer["ok"]:
                unjudged.append(f"{engine} FAILed")
                return
            if factor is None:
                checks.append((f"{p['wall']:.2f} s < {engine} {peer['wall']:.2f} s", p["wall"] < peer["wall"]))
            else:
                ratio = p["wall"] / peer["wall"] if peer["wall"] > 0 else float("inf")
                checks.append((f"{ratio:.2f}x {engine} (<= {factor:g}x)", ratio <= factor))

        if wid == "W1":
            wall_vs("duckdb", 1.3)
            for e in ("polars", "pandas", "pool"):
                wall_vs(e)
        elif wid == "W2":
            wall_vs("pandas", 0.55)
            for e in ("polars", "duckdb", "dask", "pool"):
                wall_vs(e)
        elif wid == "W3":
            wall_vs("duckdb", 1.0)
        elif wid == "W4":
            checks.append((f"peak {p['peak_mib']:.0f} MiB (<= 1024)", p["peak_mib"] <= 1024))
            w1 = _find(rows, "W1", "pipeline")
            if w1 is not None and w1["peak_mib"] > 0:
                ratio = p["peak_mib"] / w1["peak_mib"]
                p["ratio"], p["ratio_to"] = ratio, "W1 pipeline peak"
                checks.append((f"{ratio:.2f}x W1 peak (<= 1.1x)", ratio <= 1.1))
            else:
                unjudged.append("no W1 pipeline run to compare with")
        elif wid == "W5":
            checks.append((f"{p['wall']:.2f} s (<= 1.0 s)", p["wall"] <= 1.0))

        if not p["ok"]:
            met = False
            detail = "pipeline FAILed"
        elif checks:
            met = all(ok for _, ok in checks)
            detail = "; ".join(f"{what}: {'yes' if ok else 'NO'}" for what, ok in checks)
        else:
            met = None
            detail = "not judged"
        if unjudged:
            detail += " (" + "; ".join(unjudged) + ")"
        out[wid] = {"target": text, "met": met, "detail": detail}
    return out


def _met(value) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[value]


def cells(rows: list[dict], targets: dict) -> list[list[str]]:
    table = []
    for r in rows:
        t = targets.get(r["workload"]) if r["engine"] == "pipeline" else None
        ratio = r.get("ratio")
        if t is not None:
            target, met = t["target"], _met(t["met"])
        elif r.get("ratio_to") == r["engine"]:
            target, met = "(reference)", ""
        else:
            target, met = "", ""
        table.append([
            r["workload"], r["engine"], f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{r['peak_mib']:.0f}",
            f"{r['rows_per_s']:,.0f}", f"{r['mb_per_s']:.1f}",
            "" if ratio is None else f"{ratio:.2f}x", "ok" if r["ok"] else "FAIL", target, met,
        ])
    return table


_RIGHT = {2, 3, 4, 5, 6, 7}


def text_table(rows: list[dict], targets: dict) -> str:
    body = cells(rows, targets)
    widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c) for i, c in enumerate(COLUMNS)]

    def line(values):
        return "  ".join(v.rjust(w) if i in _RIGHT else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    previous = None
    for row in body:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def _notes() -> list[str]:
    return [
        "wall: median over the runs, from the start of the command to its exit (all of `pipeline run`,",
        "  start-up included). CPU: user + system seconds of the whole process tree. peak MiB: the",
        "  largest sum of RSS over all processes of the run, sampled every 20 ms. rows/s and MB/s: input",
        "  rows and bytes over wall. ratio: wall / the reference peer's wall (W1, W3: duckdb; W2: pandas);",
        "  W4: peak / W1's pipeline peak. check: the output has the expected rows (count, sum of id, a",
        "  hash of the key columns, sum of total) in every run.",
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


def markdown(rows: list[dict], targets: dict, info: dict, inputs: dict) -> str:
    body = cells(rows, targets)
    out = [
        "# Benchmark results",
        "",
        f"`make bench` (BENCH_SCALE={info['scale']:g}, BENCH_REPEAT={info['repeat']}) on {info['started']}, "
        f"{info['cores']} cores, load average {' '.join(map(str, info['load_start']))} at the start and "
        f"{' '.join(map(str, info['load_end']))} at the end.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if i in _RIGHT else "---" for i in range(len(COLUMNS))) + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    out += ["", "Targets:", ""]
    for wid, t in targets.items():
        out.append(f"- {wid}: {t['target']}: **{_met(t['met'])}** ({t['detail']})")
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
