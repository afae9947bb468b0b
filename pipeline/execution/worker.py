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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import arrays
from pipeline.errors import InputError, OutputError, PipelineError, StageError
from pipeline.input.lookups import lookup_tables
from pipeline.input.plan import Chunk, ReadSpec
from pipeline.input.read import BadRow, read_chunk
from pipeline.stages import StageContext, apply_stages

SPOOL_BYTES = 16 << 20      # Arrow data of one spool file (one queue message) stays under about this size
BAD_ROW_SAMPLES = 5         # bad rows a chunk reports back to the parent for the summary

REJECT_SCHEMA = pa.schema([
    ("file", pa.string()), ("line", pa.int64()), ("offset", pa.int64()), ("stage", pa.string()),
    ("reason", pa.string()), ("raw", pa.string()), ("chunk", pa.string()),
])


@dataclass(frozen=True)
class WorkerSpec:
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


@dataclass
class ChunkResult:
    """What a worker reports for one chunk; the rows themselves went to the writer."""

    chunk_id: str
    attempt: int
    pid: int
    rows_read: int = 0
    rows_written: int = 0
    rows_filtered: int = 0
    rows_rejected: int = 0
    rows_added: int = 0
    lines_skipped: int = 0      # comment lines (csv.comment): not rows, counted apart
    bytes_read: int = 0
    messages: int = 0
    started: float = 0.0               # wall-clock time (epoch seconds) the worker began the chunk
    seconds: float = 0.0
    bad_samples: list[BadRow] = field(default_factory=list)
    source: str = ""                   # the input file the chunk is part of (named in type errors)


_STATE: dict = {}


def init(queue, events, spec: WorkerSpec, title: str | None = None) -> None:
    """Pool initializer: keep the queues and settings; leave Ctrl-C to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE["queue"] = queue
    _STATE["events"] = events
    _STATE["spec"] = spec
    if title:
        set_title(title)


def set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:  # optional at run time; the job works without it
        pass


def spool(table: pa.Table, path: str) -> str:
    """Write a table as an Arrow IPC file that the writer memory-maps; return the path.

    The queue carries only this path and a row count (a few hundred bytes). A worker killed while
    writing leaves at most an unreferenced file, never a half-written message in the shared pipe.
    """
    tmp = path + ".tmp"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.rename(tmp, path)
    return path


def unspool(path: str) -> pa.Table:
    # The table keeps the mapping alive; the file may be unlinked while it is in use.
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


def _pieces(table: pa.Table) -> list[pa.Table]:
    if table.num_rows == 0:
        return []
    per = max(1, int(table.num_rows * SPOOL_BYTES / max(table.nbytes, 1)))
    return [table.slice(i, per) for i in range(0, table.num_rows, per)]


def rejects_table(bad: list[BadRow], chunk: Chunk) -> pa.Table:
    columns = {
        "file": [b.file for b in bad],
        "line": [b.line for b in bad],
        "offset": [b.offset for b in bad],
        "stage": [b.stage for b in bad],
        "reason": [b.reason for b in bad],
        "raw": [b.raw for b in bad],
        "chunk": [chunk.id] * len(bad),
    }
    return pa.Table.from_arrays([arrays.array(columns[f.name], f.type) for f in REJECT_SCHEMA],
                                schema=REJECT_SCHEMA)


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


def chunk_tables(chunk: Chunk, spec: WorkerSpec, result: ChunkResult) -> Iterator[tuple[str, pa.Table]]:
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
                room = BAD_ROW_SAMPLES - len(result.bad_samples)
                result.bad_samples.extend(bad[:max(room, 0)])
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


def process_chunk(task: tuple[Chunk, int]) -> ChunkResult:
    """Read one chunk, run the stages, stream the result to the writer, report the counts.

    The writer commits a chunk only when it has the ``end`` message, so a worker that dies half way
    leaves nothing behind, and a retried chunk is never written twice.
    """
    chunk, attempt = task
    spec: WorkerSpec = _STATE["spec"]
    queue = _STATE["queue"]
    # written straight into the pipe (not by a feeder thread), so the parent knows which chunk this
    # process holds even if the chunk kills it a moment later
    _STATE["events"].put(("start", chunk.id, attempt, os.getpid(), time.time()))
    started = time.monotonic()
    result = ChunkResult(chunk.id, attempt, os.getpid(), started=time.time())
    messages = 0

    def send(kind: str, table: pa.Table) -> None:
        nonlocal messages
        path = os.path.join(spec.spool, f"{chunk.id}.{attempt}.{messages}.arrow")
        try:
            spool(table, path)
        except OSError as exc:
            raise OutputError(f"cannot write to the output's staging area: {exc}", path=path) from exc
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
    queue.put(("end", chunk.id, attempt, messages, result))
    return result
