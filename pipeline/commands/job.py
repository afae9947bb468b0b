"""`pipeline validate`, `plan` and `history`: what a run would do, and what runs did."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa

from pipeline import preflight
from pipeline.config import Job, format_bytes, plural
from pipeline.dtypes import type_name
from pipeline.errors import ConfigError, PipelineError
from pipeline.input.plan import build_plan
from pipeline.run import check_finalize, check_stages, stage_check
from pipeline.stages import check_python_spec


def validate(job: Job) -> int:
    """Everything `run` checks before it writes: the data, the stages on sampled rows, the output."""
    plan = build_plan(job)
    if not plan.files:
        young = f", {len(plan.young)} younger than input.min_age" if plan.young else ""
        print(f"{job.config_path}: OK (no input file to check yet{young})")
        return 0
    checked = stage_check(job, plan)
    final = check_finalize(job, checked.schema)
    _check_python_stages(job)
    schema = preflight.target_schema(job, checked, job.output.mode, contract=job.finalize is None)
    if job.finalize is not None:
        schema = final
    print(f"{job.config_path}: OK")
    print(f"  job       {job.name}")
    print(f"  input     {plural(len(plan.files), 'file')}, {format_bytes(plan.total_bytes)}, "
          f"{plural(len(plan.chunks), 'chunk')}")
    print(f"  stages    {len(job.stages)}: {', '.join(s.name for s in job.stages) or '(none)'}"
          + (f" (tried on the first {checked.sample_rows} rows)" if job.stages and checked.sample_rows else ""))
    if checked.rows_rejected:
        stage, reason = checked.rejected[0]
        print(f"  rejects   {checked.rows_rejected} of the first {checked.sample_rows} rows ({stage}: {reason})")
    shown = dataclasses.replace(checked, schema=schema) if schema is not None else checked
    print(f"  output    {job.output.path} ({_MODE_WORDS[job.output.mode]}); columns "
          f"{preflight.describe_columns(shown)}")
    return 0


# output.mode as validate shows it: what a run does when the output already holds data
_MODE_WORDS = {
    "overwrite": "mode overwrite: a run replaces what is there",
    "append": "mode append: a run adds its files to what is there",
    "error": "mode error: a run refuses to replace an existing output",
}


def _check_python_stages(job: Job) -> None:
    for s in job.stages:
        if s.name == "python":
            try:
                check_python_spec(s.spec, job.base_dir, tuple(job.run.python_modules))
            except PipelineError as exc:
                raise ConfigError(exc.message, file=str(job.config_path), line=s.line, key=s.key) from exc


def show_plan(job: Job, workers: int | None = None) -> int:
    plan = build_plan(job, workers=workers)
    schema = check_finalize(job, check_stages(job, plan)) if plan.files else None
    print(f"plan for {job.name} ({job.config_path})")
    print(f"  {plural(len(plan.files), 'file')}, {format_bytes(plan.total_bytes)}, "
          f"{plural(len(plan.chunks), 'chunk')}, "
          f"{plural(plan.workers, 'worker')} (start method {job.run.start_method})")
    print()
    print(f"  {'file':<48} {'format':<8} {'size':>10} {'chunks':>7}")
    per_file: dict[str, int] = {}
    for c in plan.chunks:
        per_file[c.file.path] = per_file.get(c.file.path, 0) + 1
    for f in plan.files:
        fmt = f.format + (f"+{f.compression}" if f.compression else "")
        print(f"  {_short(f.path):<48} {fmt:<8} {format_bytes(f.size):>10} {per_file.get(f.path, 0):>7}")
    print()
    print("  input schema:")
    for fld in plan.read.schema:
        print(f"    {fld.name:<24} {type_name(fld.type):<20} {plan.inferred.get(fld.name, '')}")
    print("  output schema:")
    if schema is None:
        print("    (decided by a python stage at run time)")
    else:
        for fld in schema:
            known = "not yet known (null in every sampled row)" if pa.types.is_null(fld.type) else type_name(fld.type)
            print(f"    {fld.name:<24} {known}")
    part = f", partitioned by {', '.join(job.output.partition_by)}" if job.output.partition_by else ""
    print(f"  output: {job.output.path} (mode {job.output.mode}, {job.output.compression}{part})")
    return 0


def _short(path: str) -> str:
    if "://" in path:
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    return rel if len(rel) < len(path) else path


def history(job: Job, limit: int = 20, status: str | None = None, as_json: bool = False,
            params: frozenset[str] | set[str] = frozenset()) -> int:
    """Past runs of the job, newest first, from its state store.

    ``params`` names the ``--param`` values given on the command line: only runs made with those
    values are shown.
    """
    import time

    from pipeline.run import state_dir
    from pipeline.state.store import StateStore

    directory = state_dir(job)
    runs: list[dict] = []
    if os.path.exists(os.path.join(directory, "state.db")):
        with StateStore(directory) as store:
            wanted = {k: v for k, v in job.params.items() if k in params}
            runs = store.history(job.name, limit, status=status, params=wanted)
    if as_json:
        for r in runs:
            print(json.dumps(_run_record(r), sort_keys=False))
        return 0
    if not runs:
        which = f"{status} " if status else ""
        print(f"{job.name}: no {which}runs recorded yet (state store {directory})")
        return 0
    print(f"{'started':<20} {'status':<11} {'exit':>4} {'seconds':>8} {'read':>11} {'written':>11} "
          f"{'rejected':>9}  {'run':<24} {'params':<16} error")
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
        secs = f"{r['finished'] - r['started']:.1f}" if r["finished"] else "-"
        code = "-" if r["exit_code"] is None else str(r["exit_code"])

        def n(v):
            return "-" if v is None else f"{v:,}"

        given = " ".join(f"{k}={v}" for k, v in json.loads(r["params"] or "{}").items())
        print(f"{when:<20} {r['status']:<11} {code:>4} {secs:>8} {n(r['rows_read']):>11} "
              f"{n(r['rows_written']):>11} {n(r['rows_rejected']):>9}  {r['run_id']:<24} {given or '-':<16} "
              f"{first_line(r['error'])}".rstrip())
    return 0


def first_line(error: str | None, width: int = 120) -> str:
    """The first line of a failure, cut to ``width`` characters."""
    if not error:
        return ""
    line = error.strip().splitlines()[0] if error.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def _run_record(r: dict) -> dict:
    """A state-store row as the JSON ``history --json`` prints (times in ISO 8601 UTC)."""
    import time

    def iso(t):
        return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return {
        "run_id": r["run_id"], "status": r["status"], "exit_code": r["exit_code"],
        "started": iso(r["started"]), "finished": iso(r["finished"]),
        "seconds": None if r["finished"] is None else round(r["finished"] - r["started"], 3),
        "rows_read": r["rows_read"], "rows_written": r["rows_written"], "rows_filtered": r["rows_filtered"],
        "rows_rejected": r["rows_rejected"], "files_processed": r["files_processed"],
        "params": json.loads(r["params"] or "{}"), "error": r["error"],
    }
