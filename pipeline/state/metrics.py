"""Run figures for monitoring, in the Prometheus text format (node_exporter's textfile collector).

Written after every run, success or failure, to a temporary file in the same folder and renamed
over ``run.metrics_file``, so the collector never reads half a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

log = logging.getLogger("pipeline")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(job: str, report, last_success: float | None) -> str:
    label = f'job="{_escape(job)}"'
    c = report.counts
    ok = report.status in ("succeeded", "up to date")
    lines = [
        "# HELP pipeline_last_run_timestamp_seconds When the last run of the job ended (Unix time).",
        "# TYPE pipeline_last_run_timestamp_seconds gauge",
        f"pipeline_last_run_timestamp_seconds{{{label}}} {time.time():.3f}",
        "# HELP pipeline_last_run_success 1 if the last run succeeded, else 0.",
        "# TYPE pipeline_last_run_success gauge",
        f"pipeline_last_run_success{{{label}}} {1 if ok else 0}",
        "# HELP pipeline_last_run_exit_code Exit code of the last run.",
        "# TYPE pipeline_last_run_exit_code gauge",
        f"pipeline_last_run_exit_code{{{label}}} "
        f"{report.exit_code if report.exit_code is not None else (0 if ok else 1)}",
        "# HELP pipeline_last_run_duration_seconds Wall time of the last run.",
        "# TYPE pipeline_last_run_duration_seconds gauge",
        f"pipeline_last_run_duration_seconds{{{label}}} {report.seconds:.3f}",
        "# HELP pipeline_last_run_rows Rows of the last run, by kind.",
        "# TYPE pipeline_last_run_rows gauge",
    ]
    for kind in ("read", "written", "filtered", "rejected", "added"):
        lines.append(f'pipeline_last_run_rows{{{label},kind="{kind}"}} {getattr(c, "rows_" + kind)}')
    lines += [
        "# HELP pipeline_last_run_input_bytes Input bytes the last run planned to read.",
        "# TYPE pipeline_last_run_input_bytes gauge",
        f"pipeline_last_run_input_bytes{{{label}}} {report.input_bytes}",
    ]
    if last_success is not None:
        lines += [
            "# HELP pipeline_last_success_timestamp_seconds When the job last succeeded (Unix time).",
            "# TYPE pipeline_last_success_timestamp_seconds gauge",
            f"pipeline_last_success_timestamp_seconds{{{label}}} {last_success:.3f}",
        ]
    return "\n".join(lines) + "\n"


def write_metrics(path: str, job: str, report, store) -> None:
    last = None
    if store is not None:
        try:
            found = store.last_success(job)
            last = found["finished"] if found else None
        except Exception as exc:  # noqa: BLE001 - metrics are written even when the state store is broken
            log.warning("metrics: could not read the last success from the state store: %s", exc)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".prom.tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render(job, report, last))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        log.error("could not write run.metrics_file %s: %s", path, exc)
