"""Running the chunks on a Dask cluster, each task writing its own Parquet part files.

The local executor streams every chunk to one writer process; on a cluster that would funnel all
the data through one machine's network. Here each task reads its chunk, runs the stages (the same
``worker.chunk_tables`` as the local executor) and writes the result itself, as Parquet part files
straight into the run's staging area: the staging directory next to ``output.path`` on a shared
filesystem, or the output prefix itself on an object store. The task returns a small record (its
files with rows and bytes, its counts, a few bad rows); the driver takes each chunk's record once,
checks the counts, and does the one publish with the manifest.

Exactly once: a chunk's files are named after the chunk and the run,
``part-<chunk id>-<n>-<run id>.parquet`` in each partition directory and in ``_rejects/``. On a
local or shared filesystem a task writes each file under a temporary name and renames it into
place; on an object store it writes each key once, in one upload that becomes visible only when
complete. A task that Dask reruns after losing its worker therefore replaces its own files instead
of adding a second copy, and the driver, which takes one record per chunk, removes any file no
record lists (the temporary files of an attempt that died) before publishing.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError, OutputError, PipelineError
from pipeline.execution.worker import REJECT_SCHEMA, ChunkResult, WorkerSpec, chunk_tables, rejects_table
from pipeline.input.plan import Chunk
from pipeline.input.read import BadRow, raw_records
from pipeline.input.storage import filesystem, is_url
from pipeline.output.write import (
    Partition,
    RowGroupWriter,
    add_null_columns,
    conform_table,
    dictionary_columns,
    empty_like,
)

log = logging.getLogger("pipeline")

REJECTS = "_rejects"


@dataclass(frozen=True)
class PartSpec:
    """Where and how a task writes its part files."""

    run_id: str
    root: str                        # the staging directory, or the output prefix URL on an object store
    schema: pa.Schema | None         # the output schema when the plan knows it
    partition_by: tuple[str, ...] = ()
    compression: str = "zstd"
    compression_level: int | None = None
    row_group_rows: int = 1_000_000
    file_bytes: int = 512 << 20
    null_columns: tuple[str, ...] = ()    # output columns this run's rows lack (append, add_columns)


def _decided(target: pa.Schema, got: pa.Schema) -> pa.Schema:
    """A column the plan could not type (all null in the sampled rows) takes the type the rows have."""
    return pa.schema([g if pa.types.is_null(w.type) else w for w, g in zip(target, got)])


@dataclass(frozen=True)
class TaskSpec:
    worker: WorkerSpec
    parts: PartSpec


@dataclass
class ChunkWrite:
    """What a task returns: the chunk's counts and the files it wrote (paths relative to the root)."""

    result: ChunkResult
    files: list[dict] = field(default_factory=list)     # {"path", "rows", "bytes", "run_id"}
    schema: pa.Schema | None = None                      # of its data files


def _host() -> str:
    import socket

    return socket.gethostname()


def part_name(chunk_id: str, n: int, run_id: str) -> str:
    return f"part-{chunk_id}-{n}-{run_id}.parquet"


# ------------------------------------------------------------------------------------ part files


class _Sink:
    """One part file being written: a temporary file renamed into place, or one object-store upload."""

    def __init__(self, spec: PartSpec, fs, rel: str, schema: pa.Schema):
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

    def __init__(self, spec: PartSpec, chunk_id: str):
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
        self._write_rows(self.rejects, table, REJECT_SCHEMA)

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


# ------------------------------------------------------------------------------------ the task


def write_chunk(chunk: Chunk, spec: TaskSpec) -> ChunkWrite:
    """The Dask task: read a chunk, apply the stages, write its part files, return its record."""
    started = time.monotonic()
    result = ChunkResult(chunk.id, 0, os.getpid(), started=time.time())
    out = PartWriter(spec.parts, chunk.id)
    where = chunk.describe()
    try:
        for kind, table in chunk_tables(chunk, spec.worker, result):
            if kind == "rejects":
                out.write_rejects(table)
            else:
                out.write(table, where, chunk.file.path)
        files = out.close()
    except PipelineError:
        out.abort()
        raise
    except OSError as exc:
        out.abort()
        raise OutputError(f"{where}: cannot write its part files under {spec.parts.root}: {exc}",
                          path=spec.parts.root, chunk=chunk.id) from exc
    except BaseException:
        out.abort()
        raise
    result.bytes_read = chunk.nbytes
    result.seconds = time.monotonic() - started
    return ChunkWrite(result, files, out.schema)


def quarantine_write(chunk: Chunk, spec: TaskSpec, reason: str) -> ChunkWrite:
    """Every record of a chunk no worker could process, into ``_rejects/`` (run on the driver)."""
    records = list(raw_records(chunk, spec.worker.read))
    bad = [BadRow(chunk.file.path, line, offset, "worker", reason, raw) for line, offset, raw in records]
    out = PartWriter(spec.parts, chunk.id)
    if bad:
        out.write_rejects(rejects_table(bad, chunk))
    files = out.close()
    result = ChunkResult(chunk.id, 0, os.getpid(), rows_read=len(bad), rows_rejected=len(bad),
                         bad_samples=bad[:1],
                         bytes_read=chunk.nbytes)
    return ChunkWrite(result, files, None)


# ------------------------------------------------------------------------------------ the executor


def scheduler_address(configured: str | None) -> str | None:
    return configured or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


class DaskExecutor:
    """Submit one task per chunk to a Dask scheduler and take each chunk's record exactly once.

    With no scheduler address a LocalCluster of ``workers`` processes (one thread each) is started
    for the run and stopped after it. A task whose worker dies is rerun by Dask on another worker;
    after ``retries`` such losses (the scheduler's ``allowed-failures``) the chunk is given up:
    ``on_poison`` may quarantine it, else the run fails.
    """

    def __init__(self, address: str | None, workers: int, *, retries: int = 2, connect_timeout: float = 30.0,
                 on_result: Callable[[ChunkResult], None] | None = None,
                 on_poison: Callable[[Chunk, str, int], ChunkWrite | None] | None = None):
        self.address = address
        self.workers = workers
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.on_result = on_result
        self.on_poison = on_poison
        self.client: Any = None    # a distributed.Client once started
        self.cluster: Any = None   # a distributed.LocalCluster when no address is given
        self.dashboard: str | None = None
        self.cluster_workers = 0

    # -- cluster
    def start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        if self.address:
            try:
                self.client = Client(self.address, timeout=self.connect_timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise PipelineError(f"cannot reach the Dask scheduler at {self.address} "
                                    f"(gave up after {self.connect_timeout:g} s, run.dask.connect_timeout): "
                                    f"{exc}", address=self.address) from None
            what = f"Dask scheduler {self.address}"
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": self.retries}):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
            self.client = Client(self.cluster, set_as_default=False)
            what = f"a local Dask cluster of {self.workers} worker processes ({self.cluster.scheduler_address})"
        try:
            import bokeh  # noqa: F401 - the dashboard needs it

            self.dashboard = self.client.dashboard_link
        except Exception:  # noqa: BLE001 - no dashboard: the run goes on without it
            self.dashboard = None
        try:
            self.cluster_workers = len(self.client.scheduler_info().get("workers", {}))
        except Exception:  # noqa: BLE001
            self.cluster_workers = 0
        log.info("running on %s (%d workers now); dashboard: %s", what, self.cluster_workers,
                 self.dashboard or "not available (pip install bokeh)")

    def close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            try:
                client.close(timeout=10)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the Dask client: %s", exc)
        if cluster is not None:
            try:
                cluster.close(timeout=20)
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the local Dask cluster: %s", exc)

    def __enter__(self) -> DaskExecutor:
        try:
            self.start()
        except BaseException:
            self.close()  # a LocalCluster started before the failure is stopped
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running
    def run(self, chunks: Sequence[Chunk], spec: TaskSpec) -> dict[str, ChunkWrite]:
        from distributed import KilledWorker, as_completed

        by_key = {}
        keys = []
        for c in chunks:
            key = f"pipeline-chunk-{spec.parts.run_id}-{c.id}"
            by_key[key] = c
            keys.append(key)
        futures = self.client.map(write_chunk, list(chunks), spec=spec, key=keys, pure=False)
        taken: dict[str, ChunkWrite] = {}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                chunk = by_key[future.key]
                if future.status == "error":
                    exc = future.exception()
                    if isinstance(exc, KilledWorker):
                        write = self._poison(chunk, spec, exc)
                    elif isinstance(exc, BaseException):
                        raise exc
                    else:
                        raise RuntimeError(f"{chunk.describe()}: the task failed: {exc!r}")
                elif future.status == "cancelled":
                    raise RuntimeError(f"{chunk.describe()}: the Dask task was cancelled "
                                       f"(the scheduler or the connection to it was lost?)")
                else:
                    write = future.result()
                self._take(chunk, write, taken)
                future.release()
        except BaseException:
            try:
                self.client.cancel(futures, force=True)
            except Exception:  # noqa: BLE001 - the run fails anyway
                pass
            raise
        missing = [c.describe() for c in chunks if c.id not in taken]
        if missing:
            raise RuntimeError(f"{len(missing)} chunks never came back from the cluster, e.g. {missing[0]}")
        return taken

    def _take(self, chunk: Chunk, write: ChunkWrite, taken: dict[str, ChunkWrite]) -> None:
        if write.result.chunk_id != chunk.id:
            raise RuntimeError(f"{chunk.describe()}: a task returned chunk {write.result.chunk_id}")
        if chunk.id in taken:
            log.warning("%s came back twice; the second copy is ignored", chunk.describe())
            return
        taken[chunk.id] = write
        if self.on_result:
            self.on_result(write.result)

    def _poison(self, chunk: Chunk, spec: TaskSpec, exc: BaseException) -> ChunkWrite:
        tries = self.retries + 1
        why = f"was lost on every one of {tries} attempts (the worker process died: {exc})"
        log.error("%s: the task %s", chunk.describe(), why)
        write = self.on_poison(chunk, why, tries) if self.on_poison else None
        if write is None:
            raise InputError(f"{chunk.describe()}: the task {why}; this chunk cannot be processed",
                             file=chunk.file.path, chunk=chunk.id)
        return write
