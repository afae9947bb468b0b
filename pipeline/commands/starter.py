"""`pipeline init [DIR] --from GLOB`: a starter job for the files it is pointed at.

It writes ``DIR/NAME.yaml`` (the input, the column types as inferred from a sample, written as
comments, a ``select`` of every column, the output and run settings) and ``DIR/NAME.mk``, a
Makefile snippet with targets to run, preview and report the job. The job is planned and checked
exactly as ``pipeline validate`` does before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

from pipeline.dtypes import type_name
from pipeline.errors import EX_USAGE, ConfigError
from pipeline.input.storage import is_url

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def init(directory: str | None, sources: list[str], name: str | None = None, force: bool = False) -> int:
    directory = directory or "."
    name = name or _name_from(sources)
    job_path = os.path.join(directory, f"{name}.yaml")
    make_path = os.path.join(directory, f"{name}.mk")
    existing = [p for p in (job_path, make_path) if os.path.exists(p)]
    if existing and not force:
        print(f"pipeline: error: {existing[0]} exists; pass --force to replace it", file=sys.stderr)
        return EX_USAGE
    os.makedirs(directory, exist_ok=True)
    # a path given relative stays relative (to the job file's folder now); an absolute one stays absolute
    paths = [s if is_url(s) or os.path.isabs(s) else os.path.relpath(os.path.abspath(s), os.path.abspath(directory))
             for s in sources]
    draft = _render(name, paths, None, {}, None)
    _job, plan = _plan(directory, draft)
    fmt = {f.format for f in plan.files}
    text = _render(name, paths, plan.read.schema, plan.inferred, fmt.pop() if len(fmt) == 1 else None,
                   len(plan.files))
    _plan(directory, text)          # the job as written validates, or nothing is written
    _write(job_path, text)
    _write(make_path, _makefile(name))
    print(f"wrote {job_path}: job {name!r}, {len(plan.files)} input file{'s' if len(plan.files) != 1 else ''}, "
          f"{len(plan.read.schema)} columns")
    print(f"wrote {make_path}: make targets {name}, {name}-preview, {name}-report "
          f"(add `include {make_path}` to a Makefile)")
    print("next:")
    for command in ("preview", "validate", "run"):
        print(f"  pipeline {command} {job_path}")
    return 0


def _name_from(sources: list[str]) -> str:
    stem = os.path.basename(sources[0].rstrip("/")) if sources else "job"
    stem = re.split(r"[.*?\[]", stem, maxsplit=1)[0]
    stem = re.sub(r"[-_ ]*\d[\d\-_]*$", "", stem)            # sales-2026-11-01 -> sales
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")
    return stem if stem and stem[0].isalnum() else "job"


def _plan(directory: str, text: str):
    """Load and plan a job text as if it were a file in ``directory`` (where its relative paths start)."""
    from pipeline.config import load_config
    from pipeline.input.plan import build_plan
    from pipeline.run import check_stages
    from pipeline.stages import STAGES

    fd, tmp = tempfile.mkstemp(prefix=".init-", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            job = load_config(tmp, stages=STAGES)
            plan = build_plan(job)
            check_stages(job, plan)
        except ConfigError as exc:
            exc.context.pop("file", None)
            exc.context.pop("line", None)
            raise
    finally:
        os.unlink(tmp)
    return job, plan


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _q(value: str) -> str:
    """A YAML scalar: plain when safe, else a JSON (double-quoted YAML) string."""
    return value if _PLAIN_KEY.match(value) else json.dumps(value, ensure_ascii=False)


def _render(name: str, paths: list[str], schema, inferred: dict, fmt: str | None, n_files: int = 0) -> str:
    lines = [
        f"# {name}: a starter job written by `pipeline init` for {', '.join(paths)}"
        + (f" ({n_files} file{'s' if n_files != 1 else ''})." if n_files else "."),
        "# Relative paths are relative to this file's folder.",
        "#",
        f"#   pipeline preview {name}.yaml     # the first rows after the stages; writes nothing",
        f"#   pipeline run {name}.yaml         # write the output",
        "",
        f"name: {name}",
        "",
        "input:",
        f"  paths: [{', '.join(json.dumps(p, ensure_ascii=False) for p in paths)}]",
        f"  format: {fmt or 'auto'}",
    ]
    if schema is not None:
        width = max(len(_q(f.name)) for f in schema) if len(schema) else 0
        lines += [
            "  # The column types inferred from a sample of the files. Every chunk is read with them;",
            "  # a value that does not fit is a bad row. Uncomment `schema:` and a line to pin a type.",
            "  # schema:",
        ]
        lines += [f"  #   {_q(f.name) + ':':<{width + 1}} {type_name(f.type):<16} # {inferred.get(f.name, '')}".rstrip()
                  for f in schema]
    lines += ["", "stages:"]
    if schema is not None and len(schema):
        lines += ["  # Add stages here (filter, derive, cast, validate, ...); see docs/stages.md.",
                  "  # The output columns, in this order: delete the ones you do not need.",
                  f"  - select: [{', '.join(_q(f.name) for f in schema)}]"]
    else:
        lines[-1] = "stages: []"
    lines += [
        "",
        "output:",
        f"  path: {json.dumps(os.path.join('out', name))}",
        "  mode: overwrite                   # overwrite | append | error",
        "  compression: zstd",
        "",
        "run:",
        "  workers: auto",
        "  on_bad_rows: quarantine           # bad rows go to the output's _rejects/ with file, line and reason",
        "  max_bad_rows: 100                 # more than this fails the run (exit 65)",
        "",
    ]
    return "\n".join(lines)


def _makefile(name: str) -> str:
    var = re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
    return f"""# Make targets for the job {name}. Use them from a Makefile with:  include {name}.mk
# (this file finds the job file beside itself, from whatever folder make runs in)
PIPELINE ?= pipeline
{var}_JOB := $(dir $(lastword $(MAKEFILE_LIST))){name}.yaml

.PHONY: {name} {name}-preview {name}-report

{name}: ## Run the job {name}
\t$(PIPELINE) run $({var}_JOB)

{name}-preview: ## Show the first rows of {name} after its stages; writes nothing
\t$(PIPELINE) preview $({var}_JOB)

{name}-report: ## Write {name}-report.html about the job's last run and history
\t$(PIPELINE) report $({var}_JOB) -o {name}-report.html
"""
