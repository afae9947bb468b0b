"""The writer: one process that takes Arrow data from the queue and writes Parquet into staging.

Protocol on the queue (all tuples):
  ("data",    chunk_id, attempt, path, rows)   rows of a chunk, in an Arrow IPC file (the spool); or,
                                               for small chunks sent together, a records.Shared part of one
  ("rejects", chunk_id, attempt, path, rows)   quarantined rows of a chunk
  ("end",     chunk_id, attempt, n_messages, result)   the chunk is complete (result: its counts)
  ("last",)                                    the end is near (little input is left to hand out, or
                                               none): write smaller row groups from now on
  ("done",    n_chunks)                        sent by the parent after the pool is joined
  ("abort",)                                   stop now, write nothing more

A chunk's messages are held until its ``end`` arrives and only then written, so a worker that
dies half way contributes nothing and a chunk retried after its worker died is written once: the
writer keeps the first complete attempt and drops any later one. The writer stops on ``done``
once it has committed that many chunks; it reports to the parent on the ``events`` queue.
"""

from __future__ import annotations

import hashlib
import os
import queue as queue_mod
import signal
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import arrays
from pipeline.dtypes import parse_type, type_name, widens
from pipeline.errors import InputError, OutputError, PipelineError, StageError
from pipeline.input.discover import NULL_PARTITION
from pipeline.log import set_title
from pipeline.memory import ROW_GROUP_ROWS
from pipeline.output.publish import fsync_path
from pipeline.output.records import REJECTS_FILE_SCHEMA, ChunkResult, SpoolFiles
from pipeline.output.resume import append_checkpoint

BUFFER_BYTES = 256 << 20     # rows held for row groups, over all partitions, before a forced flush
REJECTS_DIR = "_rejects"
MAX_PARTITION_VALUE = 200
DONE_GRACE_SECONDS = 30.0
TAIL_FRACTION = 8            # row groups at the end of a run: at least 1/8 of row_group_rows (see ending)


@dataclass(frozen=True)
class WriterSettings:
    """Where and how part files are written: by the writer process, or by each Dask task."""

    job_name: str
    run_id: str
    root: str                         # the staging directory, or the output prefix URL (Dask tasks)
    schema: pa.Schema | None          # the output schema when the plan knows it
    partition_by: tuple[str, ...] = ()
    compression: str = "zstd"
    compression_level: int | None = None
    row_group_rows: int = ROW_GROUP_ROWS
    file_bytes: int = 512 << 20
    journal: str | None = None                # append checkpoints here, so a killed run can resume
    checkpoint_seconds: float = 60.0
    null_columns: tuple[str, ...] = ()        # output columns this run's rows lack (append, add_columns)
    buffer_bytes: int = BUFFER_BYTES          # rows held for row groups before the largest buffer is written


@dataclass
class WrittenFile:
    path: str            # relative to the dataset root
    rows: int
    bytes: int
    run_id: str
    sources: list = field(default_factory=list)   # [input file, rows] in row order (data files)


class Encoder:
    """Encodes row groups on a thread of the writer process, so that the process keeps taking chunks
    off the queue meanwhile: otherwise the queue fills while a row group is encoded, and the workers
    wait on it with the cores idle. pyarrow encodes without the GIL. One row group waits at most, so
    memory stays at about two row groups; an error is raised again by the next call. Each row group
    is flushed to disk once written (fdatasync), so closing the file waits for little."""

    def __init__(self) -> None:
        self.jobs: queue_mod.Queue = queue_mod.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def submit(self, opened: _Open, table: pa.Table, row_group_rows: int) -> None:
        self.check()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="pipeline-encoder", daemon=True)
            self.thread.start()
        self.jobs.put((opened, table, row_group_rows))

    def _run(self) -> None:
        while True:
            opened, table, row_group_rows = self.jobs.get()
            try:
                if self.error is None:
                    opened.writer.write_table(table, row_group_size=row_group_rows)
                    opened.encoded = opened.sink.tell()
                    # to disk now, on this thread, while the workers still run: the fsync when the
                    # file closes then has only its last row group left (W4's 150 MB part: 70-80 ms
                    # at the end of the run before, under 1 ms after)
                    getattr(os, "fdatasync", os.fsync)(opened.sink.fileno())   # macOS has no fdatasync
            except BaseException as exc:  # noqa: BLE001 - raised again in the writer's thread by check()
                self.error = exc
            finally:
                del opened, table   # the rows are in the file: let their memory go before the next job
                self.jobs.task_done()

    def drain(self) -> None:
        """Wait until every row group submitted is written."""
        self.jobs.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class _Open:
    path: str
    sink: pa.NativeFile
    writer: pq.ParquetWriter
    encoder: Encoder
    rows: int = 0
    encoded: int = 0     # bytes in the file so far (row groups still being encoded not counted)

    sources: list = field(default_factory=list)

    def write(self, table: pa.Table, row_group_rows: int) -> None:
        self.encoder.submit(self, table, row_group_rows)
        self.rows += table.num_rows

    def size(self) -> int:
        """The file's size so far; it can lag one row group behind (the file rolls one later)."""
        return self.encoded


@dataclass
class Partition:
    """The rows buffered for one partition directory, and its open part file (``open``)."""

    directory: str
    tables: list = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    open: Any = None     # the part file being written: has write(table, row_group_rows), size(), ``sources``
    seq: int = 0
    segments: list = field(default_factory=list)   # [input file, rows] of the buffered rows, in order


def _take_rows(segments: list, n: int) -> list:
    """Remove the first ``n`` rows' worth of ``[source, rows]`` segments from ``segments``; return them."""
    taken = []
    while n > 0 and segments:
        source, rows = segments[0]
        if rows <= n:
            taken.append(segments.pop(0))
            n -= rows
        else:
            taken.append([source, n])
            segments[0] = [source, rows - n]
            n = 0
    return taken


def _merge_segments(into: list, segments: list) -> None:
    for source, rows in segments:
        if into and into[-1][0] == source:
            into[-1][1] += rows
        else:
            into.append([source, rows])


def partition_dir(names: tuple[str, ...], values: tuple) -> str:
    """Hive directory for partition values, escaped so that no value can leave the dataset root."""
    parts = []
    for name, value in zip(names, values):
        if value is None or value == "":
            text = NULL_PARTITION
        else:
            text = urllib.parse.quote(str(value), safe="")
            if text in (".", ".."):
                text = text.replace(".", "%2E")
        if len(text) > MAX_PARTITION_VALUE:
            digest = hashlib.sha1(text.encode()).hexdigest()[:16]
            text = f"{text[:MAX_PARTITION_VALUE - 18]}~{digest}"
        parts.append(f"{urllib.parse.quote(name, safe='')}={text}")
    return os.path.join(*parts) if parts else ""


class RowGroupWriter:
    """Rows in, row groups out, per hive partition: the buffering both writers share.

    Rows wait per partition until a full row group of ``row_group_rows`` can be written (or, past
    BUFFER_BYTES over all partitions, the largest buffer is written out). A part file is closed,
    and the next one opened, once it passes ``file_bytes``. Subclasses open and close the files.

    Once the end is near (``ending``: the parent says so while the workers still have the last few
    chunks to read), the rows held are written, and from then on rows are written out as soon as an
    eighth of a row group waits: what is left to encode after the last chunk arrives is then small,
    so the run does not end with one core encoding a whole row group while the other waits.
    """

    def __init__(self, partition_by: tuple[str, ...], row_group_rows: int, file_bytes: int,
                 buffer_bytes: int = BUFFER_BYTES):
        self.buffer_bytes = buffer_bytes
        self.partition_by = tuple(partition_by)
        self.row_group_rows = row_group_rows
        self.file_bytes = file_bytes
        self.partitions: dict[str, Partition] = {}
        self.buffered = 0
        self.ending_rows: int | None = None   # set by ``ending``

    def _open(self, part: Partition, schema: pa.Schema) -> None:
        raise NotImplementedError

    def _close(self, part: Partition) -> None:
        raise NotImplementedError

    def _buffer(self, table: pa.Table, source: str = "") -> None:
        if table.num_rows == 0:
            return
        if not self.partition_by:
            self._add((), table, source)
        else:
            for values, part in _split_partitions(table, self.partition_by):
                self._add(values, part, source)
        while self.buffered > self.buffer_bytes:
            largest = max(self.partitions.values(), key=lambda p: p.nbytes)
            self._flush(largest, final=True)

    def _add(self, values: tuple, table: pa.Table, source: str = "") -> None:
        directory = partition_dir(self.partition_by, values)   # null and "" share one directory
        part = self.partitions.get(directory)
        if part is None:
            part = self.partitions[directory] = Partition(directory)
        part.tables.append(table)
        part.segments.append([source, table.num_rows])
        part.rows += table.num_rows
        part.nbytes += table.nbytes
        self.buffered += table.nbytes
        if part.rows >= self.row_group_rows:
            self._flush(part, final=False)
        elif self.ending_rows is not None and part.rows >= self.ending_rows:
            self._flush(part, final=True)

    def ending(self) -> None:
        """The end is near: from now on write rows out once an eighth of a row group waits."""
        self.ending_rows = max(1, self.row_group_rows // TAIL_FRACTION)
        for part in self.partitions.values():
            if part.rows >= self.ending_rows:
                self._flush(part, final=True)

    def _flush(self, part: Partition, final: bool) -> None:
        if not part.tables:
            return
        table = pa.concat_tables(part.tables)
        self.buffered -= part.nbytes
        part.tables, part.rows, part.nbytes = [], 0, 0
        keep = 0 if final else table.num_rows % self.row_group_rows
        if keep:
            rest = table.slice(table.num_rows - keep)
            table = table.slice(0, table.num_rows - keep)
            part.tables, part.rows, part.nbytes = [rest], rest.num_rows, rest.nbytes
            self.buffered += rest.nbytes
        if table.num_rows:
            segments = _take_rows(part.segments, table.num_rows)
            self._write_rows(part, table, table.schema, segments)  # partition columns are in the path

    def _write_rows(self, part: Partition, table: pa.Table, schema: pa.Schema, segments=None) -> None:
        """Append row groups to the partition's open file, rolling to a new file past file_bytes.

        ``segments`` ([input file, rows], in row order) say where the rows came from; each file
        records its own, so that the rows of one input file can be found again (on_changed_file).
        """
        n = self.row_group_rows
        for start in range(0, table.num_rows, n):
            if part.open is None:
                self._open(part, schema)
            piece = table.slice(start, n)
            part.open.write(piece, n)
            if segments is not None:
                _merge_segments(part.open.sources, _take_rows(segments, piece.num_rows))
            if part.open.size() >= self.file_bytes:
                self._close(part)

    def _flush_all(self) -> None:
        for part in self.partitions.values():
            self._flush(part, final=True)
            self._close(part)


class DatasetWriter(RowGroupWriter):
    """The writer process's Parquet output in the run's staging directory."""

    def __init__(self, spec: WriterSettings):
        super().__init__(spec.partition_by, spec.row_group_rows, spec.file_bytes, spec.buffer_bytes)
        self.spec = spec
        self.root = os.path.realpath(spec.root)
        self.schema = spec.schema
        self.open_columns = {f.name for f in spec.schema if pa.types.is_null(f.type)} if spec.schema else set()
        self.files: list[WrittenFile] = []
        self.rejects: Partition | None = None
        self.rejected = 0
        self._opened = False
        self.encoder = Encoder()

    # -- rows
    def write(self, table: pa.Table, where: str, source: str = "") -> None:
        self._buffer(self._conform(table, where), source)

    def _conform(self, table: pa.Table, where: str) -> pa.Table:
        if self.schema is None:
            self.schema = table.schema
            self.open_columns = set(table.column_names)
            return table
        table = add_null_columns(table, self.spec.null_columns)
        if table.num_rows == 0:
            return empty_like(self.schema)
        # a column the plan left open (a python stage's) takes the first real type, and widens to
        # a later chunk's wider type (int64 then float64), until a file is written
        undecided = [i for i, f in enumerate(self.schema)
                     if f.name in table.column_names and not pa.types.is_null(table.schema.field(f.name).type)
                     and (pa.types.is_null(f.type) or (
                         f.name in self.open_columns and table.schema.field(f.name).type != f.type
                         and widens(f.type, table.schema.field(f.name).type)))]
        if undecided and not self._opened:
            schema = self.schema
            for i in undecided:
                schema = schema.set(i, pa.field(schema.field(i).name, table.schema.field(schema.field(i).name).type))
            self.schema = schema
            for part in self.partitions.values():
                part.tables = [t.cast(schema) for t in part.tables]
        elif any(pa.types.is_null(self.schema.field(i).type) for i in undecided):
            names = [self.schema.field(i).name for i in undecided if pa.types.is_null(self.schema.field(i).type)]
            raise InputError(f"{where}: column(s) {names} were null in every row of earlier chunks and were "
                             f"written with no type; add a `cast` stage after the stage that makes them",
                             file=where, column=names[0])
        return conform_table(table, self.schema, where, "the output's schema (from the first rows, earlier "
                                                        "chunks or the output appended to)")

    def _open(self, part: Partition, schema: pa.Schema) -> None:
        directory = os.path.join(self.root, part.directory)
        os.makedirs(directory, exist_ok=True)
        name = f"part-{part.seq:05d}-{self.spec.run_id}.parquet"
        part.seq += 1
        path = os.path.join(directory, name)
        if not os.path.realpath(path).startswith(self.root + os.sep):
            raise OutputError(f"refusing to write outside the output directory: {path}")
        if part is not self.rejects:
            self._opened = True
        bad = unwritable_columns(schema)
        if bad:   # a python stage's column: its type is known only from its rows
            raise StageError(unwritable_message(bad[0]))
        sink = pa.OSFile(path, "wb")
        compression = None if self.spec.compression == "none" else self.spec.compression
        writer = pq.ParquetWriter(sink, schema, compression=compression,
                                  compression_level=self.spec.compression_level,
                                  use_dictionary=dictionary_columns(schema))
        part.open = _Open(path, sink, writer, self.encoder)

    def _close(self, part: Partition) -> None:
        opened = part.open
        if opened is None:
            return
        self.encoder.drain()
        opened.writer.close()
        opened.sink.close()
        fsync_path(opened.path)
        self.files.append(WrittenFile(os.path.relpath(opened.path, self.root), opened.rows,
                                      os.path.getsize(opened.path), self.spec.run_id,
                                      [list(s) for s in opened.sources]))
        part.open = None

    # -- rejects
    def write_rejects(self, table: pa.Table) -> None:
        if self.rejects is None:
            self.rejects = Partition(REJECTS_DIR)
        self.rejected += table.num_rows
        self._write_rows(self.rejects, table, REJECTS_FILE_SCHEMA)

    def checkpoint(self) -> list[WrittenFile]:
        """Write out every buffered row and close every open file; return the files closed since last time."""
        before = len(self.files)
        self._flush_all()
        if self.rejects is not None:
            self._close(self.rejects)
        for d in {os.path.dirname(os.path.join(self.root, f.path)) for f in self.files[before:]}:
            fsync_path(d)
        return self.files[before:]

    def close(self) -> list[WrittenFile]:
        self._flush_all()
        if self.rejects is not None:
            self._close(self.rejects)
        data = [f for f in self.files if not f.path.startswith(REJECTS_DIR + os.sep)]
        if not data and self.schema is not None and not self.spec.partition_by:
            # An empty result is still a readable dataset with the right schema.
            empty = Partition("")
            self._open(empty, self.schema)
            self._close(empty)
        for d, _, _ in os.walk(self.root):
            fsync_path(d)
        return self.files


def conform_table(table: pa.Table, schema: pa.Schema, where: str, against: str = "earlier chunks") -> pa.Table:
    """``table`` in ``schema``: the same columns, each cast where that is a safe widening.

    Otherwise InputError (exit 65) naming ``where`` (a file), the column, both types and the fix.
    """
    if table.schema.equals(schema):
        return table
    if set(table.column_names) != set(schema.names):
        missing = [n for n in schema.names if n not in table.column_names]
        extra = [n for n in table.column_names if n not in schema.names]
        parts = ([f"lacks {missing}"] if missing else []) + ([f"has extra {extra}"] if extra else [])
        raise InputError(f"{where}: the stages' result {' and '.join(parts)} compared with {against} "
                         f"(columns {schema.names}); every chunk must give the same columns", file=where)
    table = table.select(schema.names)
    columns = []
    for want, col in zip(schema, table.columns):
        if col.type == want.type:
            columns.append(col)
            continue
        if not widens(col.type, want.type):
            raise InputError(_type_change(where, want.name, col.type, want.type, against), file=where,
                             column=want.name)
        try:
            columns.append(col.cast(want.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(_type_change(where, want.name, col.type, want.type, against) + f" ({exc})",
                             file=where, column=want.name) from exc
    return pa.Table.from_arrays(columns, schema=schema)


def _type_change(where: str, column: str, found: pa.DataType, expected: pa.DataType, against: str) -> str:
    name = type_name(expected)
    try:
        castable = parse_type(name) == expected
    except ValueError:   # a nested type (list, struct, map), a dictionary, a duration: no `cast` names it
        castable = False
    fix = (f"add a `cast` stage after the stage that makes it (- cast: {{{column}: {name}}})" if castable
           else f"make the stage that makes it give one type ({name} is not a type a `cast` stage takes)")
    return f"{where}: column {column!r} is {type_name(found)} here but {name} in {against}; {fix}, " \
           f"so that every chunk gives it one type"


def add_null_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """``table`` with the named columns added as nulls where it lacks them (schema evolution on append)."""
    for name in names:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, pa.null()), pa.nulls(table.num_rows))
    return table


def empty_like(schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches([], schema=schema)


def unwritable_columns(schema: pa.Schema) -> list[pa.Field]:
    """The fields of ``schema`` whose type Parquet cannot hold (an interval, a union)."""
    bad = []
    for fld in schema:
        try:
            pq.ParquetWriter(pa.BufferOutputStream(), pa.schema([fld])).close()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            bad.append(fld)
    return bad


def unwritable_message(fld: pa.Field) -> str:
    return (f"column {fld.name!r} is {type_name(fld.type)}, which Parquet cannot hold; cast it in the stage "
            f"that makes it (for example CAST({fld.name} AS VARCHAR) in SQL, or to text in a python stage)")


def dictionary_columns(schema: pa.Schema) -> list[str] | bool:
    """Dictionary-encode text columns only: numbers and timestamps rarely repeat enough to gain,
    and trying costs the writer time (about 12 % of its CPU on the W1 benchmark) and size."""
    names = [f.name for f in schema
             if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_binary(f.type)
             or pa.types.is_dictionary(f.type)]
    return names or False


def _split_partitions(table: pa.Table, keys: tuple[str, ...]):
    """(values, rows) for each distinct combination of partition values, partition columns dropped."""
    data = table.drop_columns(list(keys))
    if len(keys) == 1:
        col = table.column(keys[0])
        encoded = pc.dictionary_encode(col).combine_chunks()
        indices = encoded.indices
        dictionary = encoded.dictionary.to_pylist()
        if indices.null_count:
            indices = pc.fill_null(indices, arrays.scalar(len(dictionary), indices.type))
            dictionary.append(None)
        for code in pc.unique(indices).to_pylist():
            yield (dictionary[code],), data.filter(pc.equal(indices, arrays.scalar(code, indices.type)))
        return
    codes, dictionaries = [], []
    for k in keys:
        encoded = pc.dictionary_encode(table.column(k)).combine_chunks()
        indices, dictionary = encoded.indices, encoded.dictionary.to_pylist()
        if indices.null_count:
            indices = pc.fill_null(indices, arrays.scalar(len(dictionary), indices.type))
            dictionary.append(None)
        codes.append(arrays.to_numpy(indices))
        dictionaries.append(dictionary)
    groups, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for g, group in enumerate(groups):
        values = tuple(d[int(c)] for d, c in zip(dictionaries, group))
        yield values, data.filter(arrays.array(inverse == g))


def writer_main(queue, events, spec: WriterSettings) -> None:
    """Entry point of the writer process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_title(f"pipeline: {spec.job_name} writer")
    try:
        events.put(("closed", run_writer(queue, events, spec)))
    except OutputError as exc:
        events.put(("error", exc))
    except OSError as exc:
        events.put(("error", OutputError(f"cannot write the output: {exc}", path=getattr(exc, "filename", None))))
    except PipelineError as exc:
        events.put(("error", exc))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run with exit 1
        events.put(("error", RuntimeError(f"writer failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")))


def run_writer(queue, events, spec: WriterSettings) -> dict:
    os.makedirs(spec.root, exist_ok=True)
    out = DatasetWriter(spec)
    pending: dict[tuple[str, int], list] = {}
    spooled = SpoolFiles()
    committed: set[str] = set()
    expected: int | None = None
    since_checkpoint: list[ChunkResult] = []
    last_checkpoint = time.monotonic()

    def checkpoint(journal: str) -> None:
        nonlocal last_checkpoint, since_checkpoint
        closed = out.checkpoint()
        append_checkpoint(journal, [f.__dict__ for f in closed], since_checkpoint)
        since_checkpoint = []
        last_checkpoint = time.monotonic()

    while expected is None or len(committed) < expected:
        try:
            msg = queue.get(timeout=DONE_GRACE_SECONDS) if expected is not None else queue.get()
        except queue_mod.Empty:
            raise RuntimeError(
                f"the writer received {len(committed)} of {expected} chunks; the rest never arrived") from None
        kind = msg[0]
        if kind in ("data", "rejects"):
            pending.setdefault((msg[1], msg[2]), []).append((kind, msg[3]))
        elif kind == "end":
            _, chunk_id, attempt, n_messages, result = msg
            pieces = pending.pop((chunk_id, attempt), [])
            if chunk_id in committed:
                for _, ref in pieces:
                    spooled.release(ref)
                continue
            if len(pieces) != n_messages:
                raise RuntimeError(f"chunk {chunk_id}: {len(pieces)} of {n_messages} messages arrived")
            written = 0
            for what, ref in pieces:
                table = spooled.read(ref)
                if what == "data":
                    out.write(table, result.source or f"chunk {chunk_id}", result.source)
                    written += table.num_rows
                else:
                    out.write_rejects(table)
                spooled.release(ref)
            committed.add(chunk_id)
            if written != result.rows_written:
                raise RuntimeError(f"chunk {chunk_id}: {written} rows arrived, the worker sent {result.rows_written}")
            if spec.journal:
                since_checkpoint.append(result)
                # a journal not begun yet: the plan is still listing files (see resume.start_journal)
                if time.monotonic() - last_checkpoint >= spec.checkpoint_seconds and os.path.exists(spec.journal):
                    checkpoint(spec.journal)
            events.put(("ack", chunk_id, attempt, written, result))
        elif kind == "last":
            out.ending()
        elif kind == "done":
            expected = msg[1]
        elif kind == "abort":
            return {"aborted": True}
    for pieces in pending.values():
        for _, ref in pieces:
            spooled.release(ref)
    files = out.close()
    return {
        "files": [f.__dict__ for f in files],
        "schema": out.schema,
        "rejected": out.rejected,
        "chunks": len(committed),
    }
