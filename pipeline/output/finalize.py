"""finalize: one DuckDB query over the run's staged output (or the whole dataset), before the publish.

The run's part files are complete and counted; the query reads them as the table ``data`` (through
a pyarrow dataset, so a URL staging area is read through fsspec and DuckDB itself needs no file
access), its result is written with the job's output settings as new part files in the same root,
and the parts it read are removed. Nothing of this is visible until the run publishes: a run killed
here leaves the previous output as it was.

``dedupe`` and ``sort_by`` are shorthands that compile to SQL: ``dedupe`` defines ``data`` as the
staged rows with one row per key; ``sql`` (default ``SELECT * FROM data``) is the query; ``sort_by``
orders its result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.errors import ConfigError, Interrupted, OutputError, StageError
from pipeline.input.storage import filesystem, is_url
from pipeline.stages.sql import arrow_reader, check_columns, check_query, duckdb_module, sandboxed, to_arrow

log = logging.getLogger("pipeline")

STAGED = "__staged"           # the staged rows, before dedupe (lookup names may not start with "__")
DATA = "data"
PART_ID = "final"             # part files are part-final-<n>-<run id>.parquet
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
BATCH_ROWS = 64 * 1024


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def data_view(cfg) -> str:
    """The SQL that defines ``data`` over the staged rows: all of them, or one per dedupe key."""
    if cfg.dedupe is None:
        return f"SELECT * FROM {STAGED}"
    keys = ", ".join(_ident(k) for k in cfg.dedupe.keys)
    order = f" ORDER BY {_ident(cfg.dedupe.keep_latest_by)} DESC NULLS LAST" if cfg.dedupe.keep_latest_by else ""
    return f"SELECT * FROM {STAGED} QUALIFY row_number() OVER (PARTITION BY {keys}{order}) = 1"


def final_query(cfg) -> str:
    query = cfg.sql or f"SELECT * FROM {DATA}"
    if cfg.sort_by:
        query = (f"SELECT * FROM ({query}) AS finalized ORDER BY "
                 + ", ".join(f"{_ident(c)} NULLS LAST" for c in cfg.sort_by))
    return query


def _error_key(cfg) -> str:
    return "finalize.sql" if cfg.sql else ("finalize.dedupe" if cfg.dedupe else "finalize.sort_by")


def _prepare(con, cfg, staged, lookups: Mapping[str, pa.Table]) -> None:
    con.register(STAGED, staged)
    for name, table in lookups.items():
        con.register(name, table)
    con.execute(f"CREATE TEMP VIEW {DATA} AS {data_view(cfg)}")


def finalize_schema(cfg, schema: pa.Schema, lookups: Mapping[str, pa.Table], *,
                    file: str | None = None, line_of=lambda key: None) -> pa.Schema:
    """The schema finalize gives for staged rows of ``schema``: the query run on an empty table.

    ConfigError (exit 78) naming the finalize key and line for a query that is not one SELECT, and
    for any error DuckDB reports (unknown column, refused file access, type error).
    """
    duckdb = duckdb_module()
    key = _error_key(cfg)
    if cfg.sql is not None:
        try:
            check_query(cfg.sql)
        except ValueError as exc:
            raise ConfigError(str(exc).replace("table chunk", "table data"), file=file,
                              line=line_of("finalize.sql") or line_of("finalize"), key="finalize.sql") from None
    con = sandboxed(threads=1, memory_bytes=64 << 20)
    try:
        _prepare(con, cfg, pa.Table.from_batches([], schema=schema), lookups)
        out = to_arrow(con.sql(final_query(cfg))).schema
        check_columns(out)
    except duckdb.Error as exc:
        raise ConfigError(str(exc), file=file, line=line_of(key) or line_of("finalize"), key=key) from None
    except StageError as exc:
        raise ConfigError(exc.message, file=file, line=line_of(key) or line_of("finalize"), key=key) from None
    finally:
        con.close()
    return out


@dataclass
class Finalized:
    files: list[dict]                       # the new data part files: path (relative), rows, bytes, run_id
    schema: pa.Schema
    rows_in: int
    rows_out: int
    seconds: float
    removed: list[str] = field(default_factory=list)


def _datasets(root: str, files: list[dict], schema: pa.Schema, partition_by: tuple[str, ...]) -> list:
    """The listed part files under ``root`` as pyarrow datasets of ``schema`` (a URL through fsspec).

    Files in hive directories get their partition columns from the path (an earlier output); files
    at the top hold every column (this run's parts are staged unpartitioned when there is finalize).
    """
    import pyarrow.dataset as ds  # imports pandas: only jobs with finalize pay for it

    fs = None
    base = root
    if is_url(root):
        fs, base = filesystem(root)
        base = base.rstrip("/")
    join = posixpath.join if fs is not None else os.path.join
    flat = [join(base, f["path"]) for f in files if "/" not in f["path"].replace(os.sep, "/")]
    nested = [join(base, f["path"]) for f in files if "/" in f["path"].replace(os.sep, "/")]
    parts = []
    if flat:
        parts.append(ds.dataset(flat, schema=schema, format="parquet", filesystem=fs))
    if nested:
        fields = pa.schema([schema.field(p) for p in partition_by if p in schema.names])
        partitioning = ds.HivePartitioning(fields, null_fallback=NULL_PARTITION, segment_encoding="uri")
        parts.append(ds.dataset(nested, schema=schema, format="parquet", filesystem=fs,
                                partitioning=partitioning, partition_base_dir=base))
    return parts


def _dataset(root: str, files: list[dict], earlier: list[tuple[str, dict]], schema: pa.Schema,
             partition_by: tuple[str, ...]):
    import pyarrow.dataset as ds

    parts = _datasets(root, files, schema, partition_by)
    for other in sorted({r for r, _ in earlier}):
        parts += _datasets(other, [f for r, f in earlier if r == other], schema, partition_by)
    if not parts:
        return pa.Table.from_batches([], schema=schema)
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def run_finalize(cfg, *, root: str, sources: list[dict], schema: pa.Schema, lookups: Mapping[str, pa.Table],
                 run_id: str, output, threads: int, memory_bytes: int, spill: str | None = None,
                 earlier: Sequence[tuple[str, dict]] = ()) -> Finalized:
    """Run finalize over ``sources`` (part files under ``root``) and ``earlier`` ((root, file) pairs, only
    read); write its result under ``root``.

    ``output`` is the job's output section (compression, partition_by, file_bytes, row_group_rows).
    The source files are removed once the result is complete; on failure the partial result is.
    """
    from pipeline.execution.dask import PartSpec, PartWriter  # the part writer for any filesystem

    duckdb = duckdb_module()
    started = time.monotonic()
    spill = spill or tempfile.mkdtemp(prefix="pipeline-finalize-")
    os.makedirs(spill, exist_ok=True)
    rows_in = sum(int(f["rows"]) for f in sources) + sum(int(f["rows"]) for _, f in earlier)
    partition_by = tuple(output.partition_by)
    log.info("finalize: %s rows from %d part files (%d threads, memory limit %d MiB)",
             f"{rows_in:,}", len(sources) + len(earlier), threads, memory_bytes >> 20)
    con = sandboxed(threads=threads, memory_bytes=memory_bytes, temp_directory=spill)
    writer = None
    noted: list[int] = []
    try:
        _prepare(con, cfg, _dataset(root, sources, list(earlier), schema, partition_by), lookups)
        try:
            with _noting_signals(noted):
                relation = con.sql(final_query(cfg))
                out_schema = None
                for batch in arrow_reader(relation, BATCH_ROWS):
                    table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
                    if writer is None:
                        out_schema = table.schema
                        check_columns(out_schema)
                        writer = PartWriter(PartSpec(run_id, root, out_schema, partition_by, output.compression,
                                                     output.compression_level, output.row_group_rows,
                                                     output.file_bytes), PART_ID)
                    writer.write(table, "finalize")
        except Exception as exc:
            if noted:   # DuckDB stops its query on a signal and reports that instead of the handler's error
                raise _interrupted(noted[0]) from None
            if isinstance(exc, duckdb.Error):
                raise StageError(f"{_error_key(cfg)}: {exc}", stage="finalize") from None
            raise
        if writer is None:   # no rows: the schema from the query itself
            out_schema = to_arrow(con.sql(f"SELECT * FROM ({final_query(cfg)}) LIMIT 0")).schema
            writer = PartWriter(PartSpec(run_id, root, out_schema, partition_by, output.compression,
                                         output.compression_level, output.row_group_rows, output.file_bytes),
                                PART_ID)
        files = writer.close()
        if not files and not partition_by:
            # an output with no rows is still a readable dataset with its schema
            from pipeline.execution.dask import _Sink

            fs = filesystem(root)[0] if is_url(root) else None
            files = [_Sink(writer.spec, fs, f"part-{PART_ID}-empty-{run_id}.parquet", out_schema).close()]
    except OSError as exc:
        if writer is not None:
            writer.abort()
            _remove(root, [f["path"] for f in writer.files])
        raise OutputError(f"finalize: cannot write its part files under {root}: {exc}") from exc
    except BaseException:
        if writer is not None:
            writer.abort()
            _remove(root, [f["path"] for f in writer.files])
        raise
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    for f in files:
        f["run_id"] = run_id
    rows_out = sum(f["rows"] for f in files)
    written = {f["path"] for f in files}
    removed = [f["path"] for f in sources if f["path"] not in written]
    _remove(root, removed)
    seconds = time.monotonic() - started
    log.info("finalize: %s rows in, %s rows out, %d part files, %.1f s", f"{rows_in:,}", f"{rows_out:,}",
             len(files), seconds)
    return Finalized(files, out_schema, rows_in, rows_out, seconds, removed)


@contextlib.contextmanager
def _noting_signals(noted: list[int]):
    """Note SIGINT and SIGTERM in ``noted`` and pass them on to the handlers in place (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        noted.append(signum)
        old = previous.get(signum)
        if callable(old):
            old(signum, frame)
        raise _interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupted(signum: int) -> Interrupted:
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    return Interrupted(f"interrupted by {name} during finalize; nothing was published", signum=signum)


def _remove(root: str, rels: list[str]) -> None:
    if not rels:
        return
    if is_url(root):
        fs, base = filesystem(root)
        fs.rm([posixpath.join(base.rstrip("/"), r) for r in rels])
        return
    for rel in rels:
        try:
            os.unlink(os.path.join(root, rel))
        except FileNotFoundError:
            pass


@dataclass
class Outcome:
    """What the run publishes after finalize."""

    files: list[dict]              # this run's files: finalize's parts, then this run's rejects
    schema: pa.Schema
    previous: dict | None          # the earlier manifest the new one extends (its files dropped for scope dataset)
    publish_mode: str              # "overwrite" when the earlier output is already part of the result
    record: dict                   # the manifest's "finalize" entry


def finalize_staged(cfg, *, files: list[dict], schema: pa.Schema, parts_root: str, output_path: str,
                    previous: dict | None, mode: str, run_id: str, output, threads: int, memory_bytes: int,
                    lookups: Mapping[str, pa.Table], spill: str | None = None) -> Outcome:
    """Run finalize over a run's committed parts (``files``, under ``parts_root``), before the publish.

    ``scope: run`` reads this run's data parts. ``scope: dataset`` with an earlier output that the run
    appends to reads that output's parts too and replaces them: in a local directory they are linked
    into staging first (so the earlier ``_rejects`` stay), on an object store they are read where
    they are and removed by the publish, which lists only the new parts.
    """
    from pipeline.output.publish import REJECTS, link_previous

    data = [f for f in files if not f["path"].startswith(REJECTS + "/")]
    rejects = [f for f in files if f["path"].startswith(REJECTS + "/")]
    staged = list(data)
    earlier: list[tuple[str, dict]] = []
    extends = previous if mode == "append" else None
    publish_mode = mode
    if cfg.scope == "dataset" and previous is not None and mode == "append":
        names = [c["name"] for c in previous.get("schema", [])]
        if names and sorted(names) != sorted(schema.names):
            raise ConfigError(f"finalize.scope dataset reads the output and this run's rows as one table, but the "
                              f"output has the columns {names} and this run's stages give {schema.names}; "
                              f"run with --full-refresh to rebuild it", key="finalize.scope")
        if is_url(output_path):
            earlier = [(output_path, f) for f in previous.get("files", [])]
        else:
            link_previous(output_path, parts_root)      # every earlier file, as hard links, into staging
            staged += previous.get("files", [])
            publish_mode = "overwrite"                  # what to keep of the earlier output is in staging now
        extends = dict(previous, files=[])
    result = run_finalize(cfg, root=parts_root, sources=staged, earlier=earlier, schema=schema, lookups=lookups,
                          run_id=run_id, output=output, threads=threads, memory_bytes=memory_bytes, spill=spill)
    record = {"scope": cfg.scope, "rows_in": result.rows_in, "rows_out": result.rows_out,
              "seconds": round(result.seconds, 3), "query": final_query(cfg), "data": data_view(cfg)}
    return Outcome(result.files + rejects, result.schema, extends, publish_mode, record)
