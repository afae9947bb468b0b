"""The code that runs inside each worker process: read a chunk, apply the stages, send Arrow data.

``process_chunk`` is a module-level function taking plain, picklable arguments. The writer queue
and the job's settings arrive once per process through ``init`` (the pool initializer).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import InputError, OutputError, PipelineError, StageError
from pipeline.input.chunks import Chunk, ReadSpec
from pipeline.input.lookups import lookup_tables
from pipeline.input.read import BadRow, read_chunk
from pipeline.log import set_title
from pipeline.output.records import ChunkResult, Shared, end_message, rejects_table, spool, spool_together
from pipeline.stages import StageContext, apply_stages

SPOOL_BYTES = 16 << 20      # Arrow data of one spool file (one queue message) stays under about this size


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker turns a chunk into rows: the read settings, the stages, the bad-row policy."""

    job_name: str
    read: ReadSpec
    stages: tuple[tuple[str, object], ...]
    stage_keys: tuple[str, ...]
    base_dir: str
    on_bad_rows: str
    spool: str = ""                    # directory for the Arrow files the queue messages point to
    allowed_modules: tuple[str, ...] = ()
    trace_filtered: bool = False       # also yield the filtered rows (``pipeline preview``)
    memory_bytes: int = 256 << 20       # DuckDB's memory limit for the sql stages of one worker
    lookups: tuple = ()                 # pipeline.input.lookups.Lookup records
    lookups_key: tuple = ()             # their fingerprints: a changed file is read again


_STATE: dict = {}


def init(queue, events, spec: WorkerSettings, title: str | None = None) -> None:
    """Pool initializer: keep the queues and settings; leave Ctrl-C to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE["queue"] = queue
    _STATE["events"] = events
    _STATE["spec"] = spec
    if title:
        set_title(title)


def _pieces(table: pa.Table) -> list[pa.Table]:
    if table.num_rows == 0:
        return []
    per = max(1, int(table.num_rows * SPOOL_BYTES / max(table.nbytes, 1)))
    return [table.slice(i, per) for i in range(0, table.num_rows, per)]


def _stage_rejects(block, rejects: pa.Table, file: str) -> list[BadRow]:
    if rejects.num_rows == 0:
        return []
    rows = rejects.column("row").to_pylist()
    stages = rejects.column("stage").to_pylist()
    reasons = rejects.column("reason").to_pylist()
    known = np.array([r is not None for r in rows], dtype=bool)
    located: list = [(None, None, None)] * len(rows)
    if known.any():
        idx = np.array([r for r in rows if r is not None], dtype=np.int64)
        for i, loc in zip(np.flatnonzero(known), block.locate(idx)):
            located[i] = loc
    return [BadRow(file, loc[0], loc[1], st, reason, loc[2]) for loc, st, reason in zip(located, stages, reasons)]


def chunk_tables(chunk: Chunk, spec: WorkerSettings, result: ChunkResult) -> Iterator[tuple[str, pa.Table]]:
    """Read one chunk and run the stages: yields ``("data", rows)`` and ``("rejects", rows)``
    (and ``("filtered", rows)``, in the rejects' layout, when ``spec.trace_filtered``).

    The one path from a chunk to its output rows, whichever executor runs it; the counts and
    bad-row samples go into ``result``. Bad rows beyond the job's policy raise InputError.
    """
    ctx = StageContext(base_dir=Path(spec.base_dir), chunk=chunk.describe(),
                       allowed_modules=spec.allowed_modules, memory_bytes=spec.memory_bytes,
                       lookups_key=spec.lookups_key,
                       load_lookups=functools.partial(lookup_tables, spec.lookups, spec.lookups_key))
    stage_list = [(name, s) for name, s in spec.stages]
    result.source = chunk.file.path
    try:
        for block in read_chunk(chunk, spec.read):
            result.rows_read += block.rows_read
            result.lines_skipped += block.skipped
            bad = list(block.bad)
            if spec.stages:
                out = apply_stages(block.table, stage_list, ctx, trace_filtered=spec.trace_filtered)
                bad += _stage_rejects(block, out.rejects, chunk.file.path)
                if out.filtered is not None and out.filtered.num_rows:
                    yield "filtered", rejects_table(_stage_rejects(block, out.filtered, chunk.file.path), chunk)
                result.rows_filtered += out.rows_filtered
                result.rows_added += out.rows_added
                table = out.table
            else:
                table = block.table
            rejects = None
            if bad:
                if spec.on_bad_rows == "fail":
                    first = min(bad, key=lambda b: (b.line is None, b.line or 0))
                    where = f"{first.file} line {first.line}" if first.line else first.file
                    stage = "" if first.stage == "read" else f" ({first.stage})"
                    raise InputError(f"{where}{stage}: {first.reason}", file=first.file, line=first.line,
                                     chunk=chunk.id)
                result.rows_rejected += len(bad)
                result.add_samples(bad)
                if spec.on_bad_rows == "quarantine":
                    rejects = rejects_table(bad, chunk)
            result.rows_written += table.num_rows
            if rejects is not None:
                yield "rejects", rejects
            yield "data", table
    except PipelineError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError) as exc:
        raise StageError(f"{chunk.describe()}: {type(exc).__name__}: {exc}", chunk=chunk.id,
                         file=chunk.file.path) from exc


def _to_staging(write, *args):
    """A spool write; a failure names the staging area (a full disk is exit 74, not a stage error)."""
    try:
        return write(*args)
    except OSError as exc:
        raise OutputError(f"cannot write to the output's staging area: {exc}", path=args[-1]) from exc


def _announce(chunk: Chunk, attempt: int) -> None:
    # written straight into the pipe (not by a feeder thread), so the parent knows which chunk this
    # process holds even if the chunk kills it a moment later
    _STATE["events"].put(("start", chunk.id, attempt, os.getpid(), time.time()))


def process_chunk(task: tuple[Chunk, int]) -> ChunkResult:
    """Read one chunk, run the stages, stream the result to the writer, report the counts.

    The writer commits a chunk only when it has the ``end`` message, so a worker that dies half way
    leaves nothing behind, and a retried chunk is never written twice.
    """
    chunk, attempt = task
    spec: WorkerSettings = _STATE["spec"]
    queue = _STATE["queue"]
    _announce(chunk, attempt)
    started = time.monotonic()
    result = ChunkResult(chunk.id, attempt, os.getpid(), started=time.time())
    messages = 0

    def send(kind: str, table: pa.Table) -> None:
        nonlocal messages
        path = os.path.join(spec.spool, f"{chunk.id}.{attempt}.{messages}.arrow")
        _to_staging(spool, table, path)
        queue.put((kind, chunk.id, attempt, path, table.num_rows))
        messages += 1

    for kind, table in chunk_tables(chunk, spec, result):
        if kind == "rejects":
            send("rejects", table)
        else:
            for piece in _pieces(table):
                send("data", piece)
    result.messages = messages
    result.bytes_read = chunk.nbytes
    result.seconds = time.monotonic() - started
    queue.put(end_message(chunk.id, attempt, messages, result))
    return result


def process_chunks(tasks: tuple[tuple[Chunk, int], ...]) -> list[ChunkResult]:
    """Several small chunks as one pool task (many small files; see ``execution.executor.group_small``).

    Each chunk is still announced as it starts, and committed on its own by the writer; their rows
    travel together, in one spool file per output schema, sent once the last chunk is read. A
    worker that dies on one of them leaves nothing of any, and only the chunk it was running is
    blamed."""
    if len(tasks) == 1:
        return [process_chunk(tasks[0])]
    spec: WorkerSettings = _STATE["spec"]
    queue = _STATE["queue"]
    done: list[tuple[Chunk, int, ChunkResult, list[pa.Table], pa.Table | None]] = []
    for chunk, attempt in tasks:
        _announce(chunk, attempt)
        started = time.monotonic()
        result = ChunkResult(chunk.id, attempt, os.getpid(), started=time.time())
        data: list[pa.Table] = []
        rejects: list[pa.Table] = []
        for kind, table in chunk_tables(chunk, spec, result):
            (rejects if kind == "rejects" else data).append(table)
        result.bytes_read = chunk.nbytes
        result.seconds = time.monotonic() - started
        rows = [t for t in data if t.num_rows]
        done.append((chunk, attempt, result, rows, pa.concat_tables(rejects) if rejects else None))
    # one spool file for the rows of each output schema (a python stage may vary it by chunk)
    by_schema: dict[pa.Schema, list[tuple[int, int]]] = {}
    for i, (_, _, _, rows, _) in enumerate(done):
        for j, table in enumerate(rows):
            by_schema.setdefault(table.schema, []).append((i, j))
    refs: dict[tuple[int, int], Shared] = {}
    first_chunk, first_attempt = tasks[0]
    for n, places in enumerate(by_schema.values()):
        path = os.path.join(spec.spool, f"{first_chunk.id}.{first_attempt}.group{n}.arrow")
        refs.update(zip(places, _to_staging(spool_together, [done[i][3][j] for i, j in places], path)))
    for i, (chunk, attempt, result, rows, bad) in enumerate(done):
        messages = 0
        if bad is not None:
            path = os.path.join(spec.spool, f"{chunk.id}.{attempt}.rejects.arrow")
            _to_staging(spool, bad, path)
            queue.put(("rejects", chunk.id, attempt, path, bad.num_rows))
            messages += 1
        for j, table in enumerate(rows):
            queue.put(("data", chunk.id, attempt, refs[(i, j)], table.num_rows))
            messages += 1
        result.messages = messages
        queue.put(end_message(chunk.id, attempt, messages, result))
    return [result for _, _, result, _, _ in done]
