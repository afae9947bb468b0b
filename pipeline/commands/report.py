"""`pipeline report OUTPUT_OR_CONFIG`: one self-contained HTML page about a job's runs.

The page holds everything it shows: the charts are inline SVG drawn here, there is no script and
nothing is fetched, so it opens the same offline, from a mail attachment or from a CI artefact.
Every chart element carries its figure in a ``data-value`` attribute, which is what the tests read.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import time
from dataclasses import dataclass, field

from pipeline.config import format_bytes
from pipeline.config.document import DEFAULT_STATE_DIR
from pipeline.errors import ConfigError, InputError
from pipeline.output.publish import MANIFEST, REJECTS, read_manifest

HISTORY_RUNS = 50      # runs shown in the history charts
REJECT_SAMPLES = 8     # raw bad records shown
COLORS = {"read": "#4c78a8", "written": "#54a24b", "filtered": "#eeca3b", "rejected": "#e45756",
          "added": "#72b7b2", "failed": "#e45756", "succeeded": "#54a24b", "other": "#9d9da0"}


@dataclass
class Sources:
    """What a report is drawn from: the output's manifest and the job's state store."""

    job: str
    output: str
    manifest: dict | None
    state_dir: str | None
    runs: list[dict] = field(default_factory=list)      # newest first
    chunks: list[dict] = field(default_factory=list)    # of the last run


def report(target: str, out_file: str | None = None, *, overrides=(), params=None) -> int:
    sources = _sources(target, list(overrides), dict(params or {}))
    page = render(sources)
    path = out_file or f"{sources.job}-report.html"
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.replace(tmp, path)
    except OSError as exc:
        from pipeline.errors import OutputError

        raise OutputError(f"cannot write the report to {path}: {exc.strerror or exc}", path=path) from exc
    print(f"{sources.job}: report written to {path} ({format_bytes(len(page.encode()))})")
    return 0


# ------------------------------------------------------------------------------ where the figures come from

def _sources(target: str, overrides: list[str], params: dict) -> Sources:
    if os.path.isdir(target):
        manifest = read_manifest(target)
        if manifest is None:
            raise InputError(f"{target}: no {MANIFEST}; not an output of this program (or not published)")
        config = manifest.get("config") or {}
        state = (config.get("run") or {}).get("state_dir")
        base = os.path.dirname(config.get("config_path") or "") or "."
        state = os.path.join(base, state) if state else os.path.join(base, DEFAULT_STATE_DIR)
        sources = Sources(manifest["job"], target, manifest, state)
    elif os.path.isfile(target):
        from pipeline.config import load_config
        from pipeline.input.storage import is_url
        from pipeline.output.objectstore import read_remote_manifest
        from pipeline.run import state_dir
        from pipeline.stages import STAGES

        job = load_config(target, overrides, params=params, stages=STAGES)
        output = job.output.path
        if is_url(output):
            manifest = read_remote_manifest(output)
        else:
            manifest = read_manifest(output) if os.path.isdir(output) else None
        sources = Sources(job.name, output, manifest, state_dir(job))
    else:
        raise ConfigError(f"{target}: neither a job file nor an output directory")
    _read_state(sources)
    if sources.manifest is None and not sources.runs:
        raise InputError(f"{sources.job}: nothing to report: no published output at {sources.output} "
                         f"and no runs in the state store {sources.state_dir}")
    return sources


def _read_state(sources: Sources) -> None:
    if not sources.state_dir or not os.path.exists(os.path.join(sources.state_dir, "state.db")):
        return
    from pipeline.state.store import StateStore

    with StateStore(sources.state_dir) as store:
        sources.runs = [r for r in store.history(sources.job, HISTORY_RUNS) if r["status"] != "running"]
        if sources.runs:
            sources.chunks = store.chunks(sources.runs[0]["run_id"])


def _last_run(sources: Sources) -> dict:
    """The newest finished run: from the state store, else the manifest's own record."""
    if sources.runs:
        return dict(sources.runs[0])
    m = sources.manifest or {}
    run = (m.get("runs") or [{}])[-1]
    return {"run_id": m.get("run_id"), "status": "succeeded", "exit_code": 0,
            "started": run.get("started_ts"), "finished": run.get("finished_ts"),
            "error": None, **dict((m.get("counts") or {}).items())}


def _rejects(sources: Sources) -> tuple[list[tuple[str, str, int]], list[dict], int]:
    """(stage, reason, rows) most frequent first, a few raw records, and the total."""
    m = sources.manifest
    if not m or not m.get("rejects", {}).get("files") or not os.path.isdir(sources.output):
        return [], [], 0
    import pyarrow.parquet as pq

    files = [os.path.join(sources.output, f["path"]) for f in m["rejects"]["files"]]
    table = pq.ParquetDataset(files).read(columns=["file", "line", "stage", "reason", "raw"])
    groups = table.group_by(["stage", "reason"]).aggregate([([], "count_all")])
    rows = sorted(zip(groups.column("stage").to_pylist(), groups.column("reason").to_pylist(),
                      groups.column("count_all").to_pylist()), key=lambda g: (-g[2], g[0] or "", g[1] or ""))
    sample = table.slice(0, REJECT_SAMPLES).to_pylist()
    return rows, sample, table.num_rows


# ------------------------------------------------------------------------------ the page

def render(sources: Sources) -> str:
    last = _last_run(sources)
    groups, sample, reject_rows = _rejects(sources)
    parts = [
        _section("Last run", _last_run_html(last, sources)),
        _section("Chunks by worker", _timeline(sources.chunks)),
        _section("Throughput", _throughput(last, sources)),
        _section("Rejected rows", _rejects_html(groups, sample, reject_rows)),
        _section("Output schema", _schema_html(sources.manifest)),
        _section("History", _history(sources.runs)),
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    from pipeline.commands.job import _short

    return PAGE.format(title=_e(f"{sources.job}: run report"), job=_e(sources.job), output=_e(_short(sources.output)),
                       generated=_e(generated), body="\n".join(parts))


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _section(title: str, body: str) -> str:
    slug = title.lower().replace(" ", "-")
    return f'<section id="{slug}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _n(v) -> str:
    return "-" if v is None else f"{v:,}"


def _last_run_html(last: dict, sources: Sources) -> str:
    secs = (last["finished"] - last["started"]) if last.get("finished") and last.get("started") else None
    status = last.get("status") or "?"
    facts = [("run", last.get("run_id")), ("status", status), ("started", _when(last.get("started"))),
             ("duration", "-" if secs is None else f"{secs:.2f} s")]
    if last.get("error"):
        facts.append(("error", last["error"].strip().splitlines()[0]))
    dl = "".join(f"<dt>{_e(k)}</dt><dd class=\"{_e(k)}\">{_e(v)}</dd>" for k, v in facts)
    counts = [(k, last.get(f"rows_{k}")) for k in ("read", "written", "filtered", "rejected", "added")]
    bars = [(k, int(v)) for k, v in counts if v is not None and (k != "added" or v)]
    chart = _hbars("rows", bars) if bars else "<p>No row counts were recorded.</p>"
    return f'<dl class="facts status-{_e(status.replace(" ", "-"))}">{dl}</dl>\n{chart}'


def _hbars(name: str, bars: list[tuple[str, int]], color: str | None = None) -> str:
    """Horizontal bars, one a row, labelled with their value."""
    width, label_w, row_h = 640, 90, 26
    top = max([v for _, v in bars] + [1])
    h = row_h * len(bars) + 8
    out = [f'<svg class="chart" id="chart-{name}" role="img" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value) in enumerate(bars):
        y = 4 + i * row_h
        w = max((width - label_w - 110) * value / top, 1 if value else 0)
        out.append(f'<g class="bar" data-label="{_e(label)}" data-value="{value}">'
                   f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_e(label)}</text>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                   f'fill="{color or COLORS.get(label, COLORS["other"])}"><title>{_e(label)}: {value:,}</title></rect>'
                   f'<text x="{label_w + w + 6:.1f}" y="{y + 17}">{value:,}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _timeline(chunks: list[dict]) -> str:
    """One lane per worker process; a chunk is a bar from its start to its end."""
    if not chunks:
        return "<p>No chunk times were recorded for this run.</p>"
    t0 = min(c["started"] for c in chunks)
    t1 = max(c["started"] + c["seconds"] for c in chunks)
    span = max(t1 - t0, 1e-3)
    pids = sorted({c["pid"] for c in chunks}, key=lambda p: min(c["started"] for c in chunks if c["pid"] == p))
    width, label_w, lane_h, axis_h = 760, 110, 26, 26
    plot_w = width - label_w - 20
    h = lane_h * len(pids) + axis_h + 6
    out = [f'<svg class="chart" id="chart-timeline" role="img" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" xmlns="http://www.w3.org/2000/svg">']
    for lane, pid in enumerate(pids):
        y = 4 + lane * lane_h
        out.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">pid {pid}</text>'
                   f'<line x1="{label_w}" x2="{width - 20}" y1="{y + lane_h - 2}" y2="{y + lane_h - 2}" '
                   f'stroke="#e5e5e5"/>')
        for c in (c for c in chunks if c["pid"] == pid):
            x = label_w + plot_w * (c["started"] - t0) / span
            w = max(plot_w * c["seconds"] / span, 2)
            fill = COLORS["rejected"] if c["rows_rejected"] else COLORS["read"]
            tip = (f"{c['chunk_id']} (attempt {c['attempt']}): {c['seconds']:.3f} s, {c['rows_read']:,} read, "
                   f"{c['rows_written']:,} written, {c['rows_rejected']:,} rejected")
            out.append(f'<rect class="chunk" data-chunk="{_e(c["chunk_id"])}" data-pid="{pid}" '
                       f'data-value="{c["seconds"]:.6f}" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" '
                       f'height="{lane_h - 9}" rx="2" fill="{fill}" stroke="#fff" stroke-width="0.5">'
                       f'<title>{_e(tip)}</title></rect>')
    y = 4 + len(pids) * lane_h
    out.append(f'<line x1="{label_w}" x2="{width - 20}" y1="{y}" y2="{y}" stroke="#888"/>')
    for i in range(5):
        x = label_w + plot_w * i / 4
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 4}" stroke="#888"/>'
                   f'<text x="{x:.1f}" y="{y + 17}" text-anchor="middle">{span * i / 4:.2f} s</text>')
    out.append("</svg>")
    workers = len(pids)
    busy = sum(c["seconds"] for c in chunks)
    return (f'<p>{len(chunks):,} chunk{"s" if len(chunks) != 1 else ""} on {workers} worker '
            f'process{"es" if workers != 1 else ""}; the workers were busy {100 * busy / (span * workers):.0f} % '
            f'of the {span:.2f} s between the first chunk\'s start and the last one\'s end. '
            f'Red chunks had rejected rows.</p>\n' + "".join(out))


def _throughput(last: dict, sources: Sources) -> str:
    secs = (last["finished"] - last["started"]) if last.get("finished") and last.get("started") else None
    read = last.get("rows_read") or 0
    nbytes = sum(c["bytes_read"] or 0 for c in sources.chunks)
    facts = []
    if secs:
        facts.append(("rows per second", f"{read / secs:,.0f}"))
        if nbytes:
            facts.append(("input per second", f"{format_bytes(nbytes / secs)}"))
    if sources.chunks:
        rates = [c["rows_read"] / c["seconds"] for c in sources.chunks if c["seconds"] > 0]
        if rates:
            rates.sort()
            facts.append(("per chunk (median)", f"{rates[len(rates) // 2]:,.0f} rows/s"))
    if not facts:
        return "<p>No timing was recorded.</p>"
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    chart = _cumulative(sources.chunks) if sources.chunks else ""
    return f'<dl class="facts">{dl}</dl>\n{chart}'


def _cumulative(chunks: list[dict]) -> str:
    """Rows read so far against time: the slope is the throughput."""
    t0 = min(c["started"] for c in chunks)
    ends = sorted((c["started"] + c["seconds"] - t0, c["rows_read"]) for c in chunks)
    total = sum(r for _, r in ends) or 1
    span = max(ends[-1][0], 1e-3)
    width, height, left, bottom = 640, 180, 70, 24
    pw, ph = width - left - 20, height - bottom - 10
    points, so_far = [(left, 10 + ph)], 0
    for t, rows in ends:
        so_far += rows
        points.append((left + pw * t / span, 10 + ph - ph * so_far / total))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (f'<svg class="chart" id="chart-throughput" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'<polyline class="line" data-value="{total}" points="{path}" fill="none" stroke="{COLORS["read"]}" '
            f'stroke-width="2"/>'
            f'<line x1="{left}" x2="{left + pw}" y1="{10 + ph}" y2="{10 + ph}" stroke="#888"/>'
            f'<line x1="{left}" x2="{left}" y1="10" y2="{10 + ph}" stroke="#888"/>'
            f'<text x="{left - 6}" y="16" text-anchor="end">{total:,}</text>'
            f'<text x="{left - 6}" y="{10 + ph}" text-anchor="end">0</text>'
            f'<text x="{left + pw}" y="{height - 6}" text-anchor="end">{span:.2f} s</text>'
            f'<text x="{left + 4}" y="{height - 6}">rows read so far, by the end of each chunk</text></svg>')


def _rejects_html(groups: list[tuple[str, str, int]], sample: list[dict], total: int) -> str:
    if not total:
        return "<p>The published output holds no rejected rows.</p>"
    rows = "".join(f'<tr class="reject-group" data-stage="{_e(s)}" data-value="{n}"><td>{_e(s)}</td>'
                   f'<td>{_e(r)}</td><td class="num">{n:,}</td></tr>' for s, r, n in groups)
    by_stage: dict[str, int] = {}
    for s, _, n in groups:
        by_stage[s] = by_stage.get(s, 0) + n
    chart = _hbars("rejects", sorted(by_stage.items(), key=lambda kv: -kv[1]), COLORS["rejected"])
    raw = "".join(f'<tr><td>{_e(os.path.basename(r["file"] or ""))}</td><td class="num">{_n(r["line"])}</td>'
                  f'<td>{_e(r["stage"])}</td><td>{_e(r["reason"])}</td><td><code>{_e(r["raw"])}</code></td></tr>'
                  for r in sample)
    return (f'<p>{total:,} rejected row{"s" if total != 1 else ""} in <code>{REJECTS}/</code>, by stage:</p>{chart}'
            f'<table><thead><tr><th>stage</th><th>reason</th><th>rows</th></tr></thead><tbody>{rows}</tbody></table>'
            f'<h3>The first {len(sample)} records, as read</h3>'
            f'<table class="raw"><thead><tr><th>file</th><th>line</th><th>stage</th><th>reason</th><th>record</th>'
            f'</tr></thead><tbody>{raw}</tbody></table>')


def _schema_html(manifest: dict | None) -> str:
    if not manifest:
        return "<p>No published output.</p>"
    files = list(manifest.get("files", []))
    rows = sum(f["rows"] for f in files)
    size = sum(f["bytes"] for f in files)
    body = "".join(f'<tr class="column"><td><code>{_e(c["name"])}</code></td><td>{_e(c["type"])}</td>'
                   f'<td>{"yes" if c.get("nullable", True) else "no"}</td></tr>' for c in manifest.get("schema", []))
    return (f'<p>{rows:,} row{"s" if rows != 1 else ""} in {len(files)} file{"s" if len(files) != 1 else ""} '
            f'({format_bytes(size)}), published by run {_e(manifest.get("run_id"))}.</p>'
            f'<table><thead><tr><th>column</th><th>type</th><th>nullable</th></tr></thead><tbody>{body}</tbody></table>')


def _history(runs: list[dict]) -> str:
    if not runs:
        return "<p>No runs are recorded in the job's state store.</p>"
    ordered = list(reversed(runs))      # oldest first, left to right
    durations = [((r["finished"] or r["started"]) - r["started"]) for r in ordered]
    read = [r["rows_read"] or 0 for r in ordered]
    charts = (_columns("history-duration", "duration (s)", ordered, durations, lambda v: f"{v:.2f} s")
              + _columns("history-rows", "rows read", ordered, read, lambda v: f"{v:,}"))
    failed = sum(1 for r in runs if r["status"] in ("failed", "died"))
    from pipeline.commands.job import first_line

    rows = "".join(
        f'<tr class="run status-{_e(r["status"].replace(" ", "-"))}"><td>{_e(_when(r["started"]))}</td>'
        f'<td>{_e(r["status"])}</td><td class="num">{_e(r["exit_code"])}</td>'
        f'<td class="num">{((r["finished"] or r["started"]) - r["started"]):.2f}</td>'
        f'<td class="num">{_n(r["rows_read"])}</td><td class="num">{_n(r["rows_written"])}</td>'
        f'<td class="num">{_n(r["rows_rejected"])}</td><td>{_e(first_line(r["error"]))}</td></tr>' for r in runs)
    marked = f"{failed} failed (red, marked ✕)" if failed else "none failed"
    return (f'<p>The last {len(runs)} run{"s" if len(runs) != 1 else ""}, oldest on the left; {marked}.</p>{charts}'
            f'<table><thead><tr><th>started</th><th>status</th><th>exit</th><th>seconds</th><th>read</th>'
            f'<th>written</th><th>rejected</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>')


def _columns(name: str, title: str, runs: list[dict], values: list[float], fmt) -> str:
    """One column a run; failed runs red and marked."""
    width, height, left, bottom = 760, 170, 70, 34
    pw, ph = width - left - 20, height - bottom - 24
    top = max(values + [1e-9])
    step = pw / max(len(values), 1)
    bw = max(min(step * 0.7, 40), 2)
    out = [f'<svg class="chart" id="chart-{name}" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
           f'<text x="{left}" y="14">{_e(title)}</text>'
           f'<text x="{left - 6}" y="{24 + 4}" text-anchor="end">{_e(fmt(top))}</text>'
           f'<line x1="{left}" x2="{left + pw}" y1="{24 + ph}" y2="{24 + ph}" stroke="#888"/>']
    for i, (run, value) in enumerate(zip(runs, values)):
        x = left + i * step + (step - bw) / 2
        hgt = max(ph * value / top, 1)
        bad = run["status"] in ("failed", "died")
        fill = COLORS["failed"] if bad else COLORS["succeeded"] if run["status"] == "succeeded" else COLORS["other"]
        tip = f"{_when(run['started'])} {run['status']}: {fmt(value)}"
        out.append(f'<g class="run" data-run="{_e(run["run_id"])}" data-status="{_e(run["status"])}" '
                   f'data-value="{value}"><rect x="{x:.1f}" y="{24 + ph - hgt:.1f}" width="{bw:.1f}" '
                   f'height="{hgt:.1f}" fill="{fill}"><title>{_e(tip)}</title></rect>'
                   + (f'<text class="failed" x="{x + bw / 2:.1f}" y="{24 + ph - hgt - 3:.1f}" text-anchor="middle" '
                      f'fill="{COLORS["failed"]}">✕</text>' if bad else "") + "</g>")
    if runs:
        first, last = _day(runs[0]["started"]), _day(runs[-1]["started"])
        out.append(f'<text x="{left}" y="{height - 8}">{_e(first)}</text>'
                   f'<text x="{left + pw}" y="{height - 8}" text-anchor="end">{_e(last)}</text>')
    out.append("</svg>")
    return "".join(out)


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto;
       max-width: 820px; padding: 16px 24px 48px; }}
h1 {{ font-size: 22px; margin: 8px 0 2px; }}
h2 {{ font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
h3 {{ font-size: 14px; margin: 16px 0 6px; }}
.sub {{ color: #666; margin: 0; }}
dl.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0 10px; }}
dl.facts dt {{ color: #666; }}
dl.facts dd {{ margin: 0; }}
dd.status {{ font-weight: 600; }}
.status-failed dd.status, .status-died dd.status {{ color: #c0392b; }}
.status-succeeded dd.status {{ color: #2e7d32; }}
svg.chart {{ display: block; max-width: 100%; height: auto; margin: 6px 0; font-size: 12px; }}
svg text {{ fill: #333; }}
svg text.failed {{ fill: #c0392b; font-weight: 700; }}
table {{ border-collapse: collapse; margin: 6px 0; font-size: 13px; }}
th, td {{ text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #eee; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.status-failed td, tr.status-died td {{ color: #c0392b; }}
table.raw code {{ white-space: pre-wrap; word-break: break-all; }}
</style>
</head>
<body>
<h1>{job}</h1>
<p class="sub">Output <code>{output}</code>; report made {generated}.</p>
{body}
</body>
</html>
"""
