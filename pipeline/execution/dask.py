"""Running the chunks on a Dask cluster, each task writing its own Parquet part files.

The local executor streams every chunk to one writer process; on a cluster that would funnel all
the data through one machine's network. Here each task reads its chunk, runs the stages (the same
``worker.chunk_tables`` as the local executor) and writes the result itself (``output.parts``),
straight into the run's staging area: the staging directory next to ``output.path`` on a shared
filesystem, or the output prefix itself on an object store. Small chunks (many small files) go
together, as in the local executor (``executor.group_small``): one task and one set of part files
for up to a chunk's size of them. The task returns a small record (its files with rows and bytes,
each chunk's counts, a few bad rows); the executor takes each chunk's record once, in the driver,
and hands the run template the files and one schema for them.

Exactly once: a task's files are named after its first chunk and the run (``output.parts.part_name``).
A task that Dask reruns after losing its worker replaces its own files instead of adding a second
copy; the output target removes any file no record lists (what an attempt that died left) before
publishing. A group whose task is lost on every attempt is split, and each of its chunks runs alone,
so that only the chunk that kills its worker is given up.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dtypes import type_name, widens
from pipeline.errors import InputError, OutputError, PipelineError
from pipeline.execution.executor import Committed, OnResult, TaskSettings, group_small
from pipeline.execution.worker import chunk_tables
from pipeline.input.boundaries import resolve_states
from pipeline.input.chunks import Chunk
from pipeline.input.read import BadRow, raw_records
from pipeline.input.storage import filesystem, is_url
from pipeline.output.parts import PartWriter, empty_part
from pipeline.output.publish import REJECTS
from pipeline.output.records import ChunkResult, rejects_table
from pipeline.output.resume import Checkpointer

log = logging.getLogger("pipeline")

@dataclass
class ChunkWrite:
    """What a task returns: its chunks' counts and the files it wrote (paths relative to the root)."""

    results: list[ChunkResult]                           # one per chunk of the task, in order
    files: list[dict] = field(default_factory=list)     # {"path", "rows", "bytes", "run_id"}
    schema: pa.Schema | None = None                      # of its data files

    @property
    def source(self) -> str:
        """The input file of its first chunk (named in type errors)."""
        return self.results[0].source if self.results else ""


# ------------------------------------------------------------------------------------ the task


def write_chunks(chunks: list[Chunk], spec: TaskSettings) -> ChunkWrite:
    """The Dask task: read chunks (one, or several small ones: ``group_small``), apply the stages,
    write their rows into one set of part files, named after the first chunk; return their records."""
    out = PartWriter(spec.parts, chunks[0].id)
    results = []
    try:
        for chunk in chunks:
            started = time.monotonic()
            result = ChunkResult(chunk.id, 0, os.getpid(), started=time.time())
            where = chunk.describe()
            for kind, table in chunk_tables(chunk, spec.worker, result):
                if kind == "rejects":
                    out.write_rejects(table)
                else:
                    out.write(table, where, chunk.file.path)
            result.bytes_read = chunk.nbytes
            result.seconds = time.monotonic() - started
            results.append(result)
        files = out.close()
    except PipelineError:
        out.abort()
        raise
    except OSError as exc:
        out.abort()
        raise OutputError(f"{chunks[0].describe()}: cannot write its part files under {spec.parts.root}: {exc}",
                          path=spec.parts.root, chunk=chunks[0].id) from exc
    except BaseException:
        out.abort()
        raise
    return ChunkWrite(results, files, out.schema)


def quarantine_write(chunk: Chunk, spec: TaskSettings, reason: str) -> ChunkWrite:
    """Every record of a chunk no worker could process, into ``_rejects/`` (run on the driver)."""
    records = list(raw_records(chunk, spec.worker.read))
    bad = [BadRow(chunk.file.path, line, offset, "worker", reason, raw) for line, offset, raw in records]
    out = PartWriter(spec.parts, chunk.id)
    if bad:
        out.write_rejects(rejects_table(bad, chunk))
    files = out.close()
    result = ChunkResult(chunk.id, 0, os.getpid(), rows_read=len(bad), rows_rejected=len(bad),
                         bytes_read=chunk.nbytes)
    result.add_samples(bad[:1])
    return ChunkWrite([result], files, None)


# ------------------------------------------------------------------------------------ the executor


def scheduler_address(configured: str | None) -> str | None:
    return configured or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


class DaskExecutor:
    """Submit one task per chunk (or per group of small chunks) to a Dask scheduler and take each
    chunk's record exactly once.

    With no scheduler address a LocalCluster of ``workers`` processes (one thread each) is started
    for the run and stopped after it. A task whose worker dies is rerun by Dask on another worker;
    after ``retries`` such losses (the scheduler's ``allowed-failures``) the chunk is given up: it is
    quarantined whole under ``on_bad_rows: quarantine``, else the run fails.
    """

    name = "dask"
    writes_urls = True     # tasks write straight under an object-store prefix

    def __init__(self, address: str | None, workers: int, *, retries: int = 2, connect_timeout: float = 30.0):
        self.address = address
        self.workers = workers
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.client: Any = None
        self.cluster: Any = None
        self.dashboard: str | None = None

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
            found = len(self.client.scheduler_info().get("workers", {}))
        except Exception:  # noqa: BLE001 - the count is for the summary only
            found = 0
        if found:
            self.workers = found
        log.info("running on %s (%d workers now); dashboard: %s", what, found,
                 self.dashboard or "not available (pip install bokeh)")
        if self.dashboard:
            print(f"pipeline: Dask dashboard {self.dashboard}", file=sys.stderr, flush=True)

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

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running
    def run(self, chunks: Sequence[Chunk], task: TaskSettings, on_result: OnResult) -> Committed:
        """Run the chunks; their rows are in part files under ``task.parts.root``."""
        checkpoints = Checkpointer(task.parts.journal, task.parts.checkpoint_seconds)
        taken = self._run(chunks, task, on_result, checkpoints)
        checkpoints.close()
        # in plan order (the manifest lists parts in input order): a task's writes are keyed by its first chunk
        writes = [taken[c.id] for c in chunks if c.id in taken]
        files = [f for w in writes for f in w.files]
        seen: set[str] = set()
        for f in files:
            if f["path"] in seen:
                raise RuntimeError(f"two tasks wrote {f['path']}; nothing was published")
            seen.add(f["path"])
        parts = task.parts
        schema = unify_parts(parts.root, writes, parts.schema, parts.partition_by)
        if not any(not f["path"].startswith(REJECTS + "/") for f in files):
            files.extend(empty_part(parts, schema))
        return Committed({r.chunk_id: r for w in writes for r in w.results}, files, schema)

    def _run(self, chunks: Sequence[Chunk], task: TaskSettings, on_result: OnResult,
             checkpoints: Checkpointer) -> dict[str, ChunkWrite]:
        """Each task's write, keyed by its first chunk's id."""
        from distributed import KilledWorker, as_completed

        run_id = task.parts.run_id
        # the quote state at every cut: each range's transfer on the cluster, composed here
        resolved = resolve_states(list(chunks), task.worker.read,
                                  lambda fn, items: self.client.gather(self.client.map(fn, items, pure=False)))
        # small chunks (many small files) go together: one task and one set of part files per group
        groups = list(group_small(resolved, task.worker.read.block_bytes))
        by_key: dict[str, list[Chunk]] = {}

        def submit(batch: list[list[Chunk]], prefix: str) -> list:
            keys = [f"{prefix}-{run_id}-{g[0].id}" for g in batch]
            by_key.update(zip(keys, batch))
            return self.client.map(write_chunks, batch, spec=task, key=keys, pure=False)

        futures = submit(groups, "pipeline-chunks")
        taken: dict[str, ChunkWrite] = {}
        done: set[str] = set()
        try:
            pending = as_completed(futures, loop=self.client.loop)
            for future in pending:
                group = by_key[future.key]
                if future.status == "error":
                    exc = future.exception()
                    if isinstance(exc, KilledWorker) and len(group) > 1:
                        # a chunk of the group kills its worker: each on its own now, so only that one is lost
                        log.warning("%s chunks from %s on lost their task on every attempt; running each "
                                    "on its own", len(group), group[0].describe())
                        singles = submit([[c] for c in group], "pipeline-chunk")
                        futures.extend(singles)
                        pending.update(singles)
                        future.release()
                        continue
                    if isinstance(exc, KilledWorker):
                        write = self._poison(group[0], task, exc)
                    elif isinstance(exc, BaseException):
                        raise exc
                    else:
                        raise RuntimeError(f"{group[0].describe()}: the task failed: {exc!r}")
                elif future.status == "cancelled":
                    raise RuntimeError(f"{group[0].describe()}: the Dask task was cancelled "
                                       f"(the scheduler or the connection to it was lost?)")
                else:
                    write = future.result()
                if self._take(group, write, taken, done):
                    for result in write.results:
                        on_result(result)
                    checkpoints.add(write.files, write.results)
                future.release()
        except BaseException:
            try:
                self.client.cancel(futures, force=True)
            except Exception:  # noqa: BLE001 - the run fails anyway
                pass
            raise
        missing = [c.describe() for c in chunks if c.id not in done]
        if missing:
            raise RuntimeError(f"{len(missing)} chunks never came back from the cluster, e.g. {missing[0]}")
        return taken

    def _take(self, group: list[Chunk], write: ChunkWrite, taken: dict[str, ChunkWrite], done: set[str]) -> bool:
        if [r.chunk_id for r in write.results] != [c.id for c in group]:
            raise RuntimeError(f"{group[0].describe()}: a task returned chunks "
                               f"{[r.chunk_id for r in write.results]}")
        if group[0].id in taken or any(c.id in done for c in group):
            log.warning("%s came back twice; the second copy is ignored", group[0].describe())
            return False
        taken[group[0].id] = write
        done.update(c.id for c in group)
        return True

    def _poison(self, chunk: Chunk, task: TaskSettings, exc: BaseException) -> ChunkWrite:
        tries = self.retries + 1
        why = f"was lost on every one of {tries} attempts (the worker process died: {exc})"
        log.error("%s: the task %s", chunk.describe(), why)
        if task.worker.on_bad_rows != "quarantine":
            raise InputError(f"{chunk.describe()}: the task {why}; this chunk cannot be processed",
                             file=chunk.file.path, chunk=chunk.id)
        return quarantine_write(chunk, task, f"the task {why}")


def unify_parts(root: str, writes, out_schema: pa.Schema | None, partition_by: tuple[str, ...]) -> pa.Schema | None:
    """One schema for the whole output; part files of a chunk whose column stayed untyped are rewritten.

    A column the plan could not type (a python stage's column that is null in every row of a
    chunk) is written as type null by that chunk; it takes the type other chunks found.
    """
    schemas = [w.schema for w in writes if w.schema is not None and any(
        not f["path"].startswith(REJECTS + "/") for f in w.files)]
    if not schemas:
        return out_schema
    first = schemas[0]
    for w in writes:
        if w.schema is not None and w.schema.names != first.names:
            raise InputError(f"{w.source}: the stages produced columns {w.schema.names}, other chunks "
                             f"{first.names}; every chunk must give the same columns", file=w.source)
    fields = []
    for i, fld in enumerate(first):
        found: dict[pa.DataType, str] = {}
        for w in writes:
            if w.schema is not None and not pa.types.is_null(w.schema.field(i).type):
                found.setdefault(w.schema.field(i).type, w.source)
        if len(found) > 1:
            # one type every chunk's values widen to, or exit 65 naming the files and both types
            wide = [t for t in found if all(widens(u, t) for u in found)]
            if not wide:
                (a, fa), (b, fb) = list(found.items())[:2]
                raise InputError(f"{fb}: column {fld.name!r} is {type_name(b)} here but {type_name(a)} in "
                                 f"{fa}; add a `cast` stage after the stage that makes it "
                                 f"(- cast: {{{fld.name}: {type_name(a)}}})", file=fb, column=fld.name)
            found = {wide[0]: ""}
        fields.append(pa.field(fld.name, next(iter(found)) if found else fld.type))
    schema = pa.schema(fields)
    in_files = pa.schema([f for f in schema if f.name not in partition_by])
    for w in writes:
        if w.schema is None or w.schema.equals(schema):
            continue
        for f in w.files:
            if not f["path"].startswith(REJECTS + "/"):
                f["bytes"] = _rewrite_cast(root, f["path"], in_files)
        w.schema = schema
    return schema


def _rewrite_cast(root: str, rel: str, schema: pa.Schema) -> int:
    if is_url(root):
        fs, base = filesystem(root)
        path = base.rstrip("/") + "/" + rel
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        table = table.cast(schema)
        with fs.open(path, "wb") as fh:
            pq.write_table(table, fh)
            return int(fh.tell())
    path = os.path.join(root, rel)
    table = pq.read_table(path).cast(schema)
    tmp = path + ".cast.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return os.path.getsize(path)
