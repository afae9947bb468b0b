"""Part files written by one chunk's task, straight into staging or under an object-store prefix.

The Dask executor's tasks write their own output (see ``execution.dask``). ``PartWriter`` buffers
row groups and partitions exactly as the writer process does (``RowGroupWriter``), and names each
file after its chunk and the run, ``part-<chunk id>-<n>-<run id>.parquet``: a task rerun after its
worker died replaces its own files. On a local or shared filesystem a file is written under a
temporary name and renamed into place; on an object store it is one upload, visible only whole.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputError
from pipeline.input.storage import filesystem, is_url
from pipeline.output.publish import REJECTS
from pipeline.output.records import REJECTS_FILE_SCHEMA
from pipeline.output.write import (
    Partition,
    RowGroupWriter,
    WriterSettings,
    add_null_columns,
    conform_table,
    dictionary_columns,
    empty_like,
)


def _decided(target: pa.Schema, got: pa.Schema) -> pa.Schema:
    """A column the plan could not type (all null in the sampled rows) takes the type the rows have."""
    return pa.schema([g if pa.types.is_null(w.type) else w for w, g in zip(target, got)])


def _host() -> str:
    import socket

    return socket.gethostname()


def part_name(chunk_id: str, n: int, run_id: str) -> str:
    return f"part-{chunk_id}-{n}-{run_id}.parquet"


class _Sink:
    """One part file being written: a temporary file renamed into place, or one object-store upload."""

    def __init__(self, spec: WriterSettings, fs, rel: str, schema: pa.Schema):
        self.rel = rel
        self.fs = fs
        self.rows = 0
        self.sources: list = []          # [input file, rows] in row order
        compression = None if spec.compression == "none" else spec.compression
        if fs is None:
            self.final = os.path.join(spec.root, rel)
            directory = os.path.dirname(self.final)
            if not os.path.isdir(spec.root):
                raise OutputError(
                    f"the run's staging directory {spec.root} is not there on worker host {_host()}: with a "
                    f"cluster of several machines, output.path must be on a filesystem every worker mounts at "
                    f"the same path, or an object-store URL (or the run was stopped)", path=spec.root)
            os.makedirs(directory, exist_ok=True)
            base = os.path.basename(self.final)
            self.tmp: str | None = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
            self.handle = pa.OSFile(self.tmp, "wb")
        else:
            _, root = filesystem(spec.root)
            self.final = posixpath.join(root.rstrip("/"), rel)
            self.tmp = None
            self.handle = fs.open(self.final, "wb")
        self.writer = pq.ParquetWriter(self.handle, schema, compression=compression,
                                       compression_level=spec.compression_level,
                                       use_dictionary=dictionary_columns(schema))

    def write(self, table: pa.Table, row_group_rows: int) -> None:
        self.writer.write_table(table, row_group_size=row_group_rows)
        self.rows += table.num_rows

    def size(self) -> int:
        return self.handle.tell()

    def close(self) -> dict:
        self.writer.close()
        if self.tmp is not None:   # a local file, renamed into place
            self.handle.close()
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            size = os.path.getsize(self.tmp)
            os.replace(self.tmp, self.final)
        else:
            size = self.handle.tell()
            self.handle.close()  # the upload completes here, and only here
        info = {"path": self.rel, "rows": self.rows, "bytes": size}
        if self.sources:
            info["sources"] = [list(s) for s in self.sources]
        return info

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - best effort on the way out of a failure
            pass
        try:
            if self.fs is None:
                self.handle.close()
            elif hasattr(self.handle, "discard"):
                self.handle.discard()  # abandon the upload: no object appears
        except Exception:  # noqa: BLE001 - best effort on the way out of a failure
            pass
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


class PartWriter(RowGroupWriter):
    """The part files of one chunk: the local writer's row groups and partitions, on any filesystem."""

    def __init__(self, spec: WriterSettings, chunk_id: str):
        super().__init__(spec.partition_by, spec.row_group_rows, spec.file_bytes)
        self.spec = spec
        self.chunk_id = chunk_id
        self.fs = filesystem(spec.root)[0] if is_url(spec.root) else None
        self.schema: pa.Schema | None = None
        self.rejects = Partition(REJECTS)
        self.files: list[dict] = []

    def write(self, table: pa.Table, where: str, source: str = "") -> None:
        self._buffer(self._conform(table, where), source)

    def write_rejects(self, table: pa.Table) -> None:
        self._write_rows(self.rejects, table, REJECTS_FILE_SCHEMA)

    def close(self) -> list[dict]:
        self._flush_all()
        self._close(self.rejects)
        return self.files

    def abort(self) -> None:
        for part in list(self.partitions.values()) + [self.rejects]:
            if part.open is not None:
                part.open.abort()
                part.open = None

    def _conform(self, table: pa.Table, where: str) -> pa.Table:
        """Every table of the chunk in one schema: the plan's, where it knows a column's type."""
        target = self.schema or self.spec.schema
        if target is None:
            self.schema = table.schema
            return table
        table = add_null_columns(table, self.spec.null_columns)
        if table.num_rows == 0:
            return empty_like(self.schema or target)
        if set(table.column_names) != set(target.names):
            return conform_table(table, target, where, "the output's schema")   # raises, naming the columns
        schema = _decided(target, table.select(target.names).schema)
        if self.schema is not None and not schema.equals(self.schema):
            written = self.files or any(p.open for p in self.partitions.values())
            if written:
                schema = self.schema  # the conform below fails if a typed column meets an untyped one
            else:
                for part in self.partitions.values():
                    part.tables = [t.cast(schema) for t in part.tables]
        self.schema = schema
        return conform_table(table, schema, where, "the output's schema (from the first rows or the output "
                                                   "appended to)")

    def _open(self, part: Partition, schema: pa.Schema) -> None:
        name = part_name(self.chunk_id, part.seq, self.spec.run_id)
        rel = posixpath.join(part.directory.replace(os.sep, "/"), name) if part.directory else name
        part.seq += 1
        part.open = _Sink(self.spec, self.fs, rel, schema)

    def _close(self, part: Partition) -> None:
        if part.open is not None:
            info = part.open.close()
            info["run_id"] = self.spec.run_id
            self.files.append(info)
            part.open = None


def empty_part(settings: WriterSettings, schema: pa.Schema | None) -> list[dict]:
    """An output with no rows is still a readable dataset with its schema (as the writer process makes)."""
    if schema is None or settings.partition_by:
        return []
    fs = filesystem(settings.root)[0] if is_url(settings.root) else None
    info = _Sink(settings, fs, f"part-empty-0-{settings.run_id}.parquet", schema).close()
    info["run_id"] = settings.run_id
    return [info]
