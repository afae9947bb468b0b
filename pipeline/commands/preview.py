"""`pipeline preview CONFIG`: the first rows after the stages, and what the stages took out.

The rows go through the very code a run uses (``chunk_tables``), in this process, and nothing is
written: no output, no state, no lock. Bad rows are shown whatever ``run.on_bad_rows`` says.
"""

from __future__ import annotations

import dataclasses
import os

import pyarrow as pa

from pipeline.config import Job
from pipeline.dtypes import type_name
from pipeline.execution.worker import chunk_tables
from pipeline.input.plan import build_plan
from pipeline.output.records import ChunkResult

SHOWN = 10          # output rows shown when --rows is not given
SHOWN_OUT = 5       # filtered and rejected rows shown
CELL = 24           # characters a table cell is cut to


def preview(job: Job, rows: int | None = None) -> int:
    from pipeline.run import stage_output_schema, worker_settings

    plan = build_plan(job, workers=1)
    schema = stage_output_schema(job, plan)
    spec = dataclasses.replace(worker_settings(job, plan), on_bad_rows="quarantine", trace_filtered=True)
    want = rows or 0
    data: list[pa.Table] = []
    rejected: list[pa.Table] = []
    filtered: list[pa.Table] = []
    result = ChunkResult("preview", 0, os.getpid())
    used = []
    for chunk in plan.chunks:
        used.append(chunk)
        for kind, table in chunk_tables(chunk, spec, result):
            {"data": data, "rejects": rejected, "filtered": filtered}[kind].append(table)
        if result.rows_read >= want:
            break
    out = _concat(data, schema)
    print(f"preview of {job.name} ({job.config_path}); nothing is written")
    where = used[0].describe() if len(used) == 1 else f"the first {len(used)} chunks of {len(plan.chunks)}"
    print(f"  read      {where}")
    print(f"  rows      {result.rows_read:,} read, {result.rows_written:,} after the stages, "
          f"{result.rows_filtered:,} filtered, {result.rows_rejected:,} rejected"
          + (f", {result.rows_added:,} added by stages" if result.rows_added else ""))
    print()
    _schema("input schema", plan.read.schema, plan.inferred)
    _schema("output schema", out.schema if schema is None else schema, {})
    shown = min(rows or SHOWN, out.num_rows)
    print()
    print(f"first {shown:,} of {out.num_rows:,} rows after the stages:" if shown else "no rows after the stages")
    if shown:
        print(_table(out.slice(0, shown)))
    _bad("filtered", filtered, result.rows_filtered)
    _bad("rejected", rejected, result.rows_rejected)
    return 0


def _concat(tables: list[pa.Table], schema: pa.Schema | None) -> pa.Table:
    tables = [t for t in tables if t.num_rows] or tables[:1]
    if not tables:
        return pa.Table.from_batches([], schema=schema or pa.schema([]))
    return pa.concat_tables(tables, promote_options="permissive")


def _schema(title: str, schema: pa.Schema, notes: dict) -> None:
    print(f"{title} ({len(schema)} column{'s' if len(schema) != 1 else ''}):")
    width = max([len(f.name) for f in schema] + [8])
    for f in schema:
        print(f"  {f.name:<{width}}  {type_name(f.type):<16} {notes.get(f.name, '')}".rstrip())


def _cell(value) -> str:
    text = "null" if value is None else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= CELL else text[:CELL - 1] + "…"


def _table(table: pa.Table) -> str:
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]

    def line(cells):
        return "  " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(names), "  " + "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _bad(title: str, tables: list[pa.Table], total: int) -> None:
    if not total:
        return
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    rows.sort(key=lambda r: (r["file"], r["line"] is None, r["line"] or 0))
    print()
    shown = rows[:SHOWN_OUT]
    print(f"{title}: {total:,} row{'s' if total != 1 else ''}"
          + (f", the first {len(shown)}" if len(shown) < total else "")
          + ("" if rows else " (a python stage changed the number of rows, so they cannot be shown)"))
    for r in shown:
        where = f"{os.path.basename(r['file'])} line {r['line']}" if r["line"] else os.path.basename(r["file"])
        reason = r["stage"] if r["reason"] == "filtered out" else f"{r['stage']}: {r['reason']}"
        print(f"  {where}  {reason}")
        if r["raw"] is not None:
            print(f"      {_cell_long(r['raw'])}")


def _cell_long(raw: str) -> str:
    text = raw.rstrip("\r\n").replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= 160 else text[:159] + "…"
