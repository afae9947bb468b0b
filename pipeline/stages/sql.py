"""The ``sql`` stage: a DuckDB query over each chunk (the table ``chunk``) and the job's lookups.

DuckDB is an optional dependency (``pip install 'pipeline[sql]'``). Every connection this module
makes is sandboxed: no file, network or extension access, and its configuration is locked, so a
query cannot reopen what was closed. A query is one SELECT statement (``WITH``, ``FROM``,
``VALUES``, ``QUALIFY`` ... are SELECTs too); anything else is refused before it runs.

Each worker process keeps one connection (one thread, its share of ``run.memory_limit``) with the
lookup tables registered once; a chunk is registered as ``chunk`` for the query and unregistered.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import pyarrow as pa
from pydantic import AfterValidator

from pipeline.errors import ConfigError, StageError
from pipeline.stages.registry import StageContext, register

INSTALL = "pip install 'pipeline[sql]'"
CHUNK_TABLE = "chunk"


def duckdb_module():
    """The duckdb module; ConfigError (exit 78) with the install command when it is missing."""
    try:
        import duckdb
    except ImportError:
        raise ConfigError(f"this job uses SQL (a sql stage, lookups or finalize), which needs DuckDB; "
                          f"it is not installed: {INSTALL}") from None
    return duckdb


def sandboxed(*, threads: int, memory_bytes: int, temp_directory: str | None = None):
    """A new in-memory DuckDB connection with no file, network or extension access, settings locked."""
    duckdb = duckdb_module()
    config: dict[str, Any] = {
        "threads": max(1, int(threads)),
        "memory_limit": f"{max(int(memory_bytes) >> 20, 16)}MiB",
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if temp_directory:
        config["temp_directory"] = temp_directory   # spilling is DuckDB's own file access, set before the lock
    else:
        config["temp_directory"] = ""               # no spill files at all
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_query(query: str) -> str:
    """One SELECT statement, or ValueError in plain words (the DuckDB parser's message for a syntax error)."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("expected a SELECT query over the table chunk, got an empty string")
    try:
        duckdb = duckdb_module()
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    con = duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise ValueError(f"DuckDB cannot parse the query: {exc}") from None
    finally:
        con.close()
    if len(statements) != 1:
        raise ValueError(f"expected one SELECT statement, got {len(statements)} statements")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise ValueError(f"expected a SELECT query, got a {kind} statement; a query may only read the "
                         f"table {CHUNK_TABLE} and the lookups (no files, no settings, no extensions)")
    return query


SqlQuery = Annotated[str, AfterValidator(check_query)]


def to_arrow(relation) -> pa.Table:
    """A relation's rows as an Arrow table (the method's name differs between DuckDB versions)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return fetch().replace_schema_metadata(None)


def arrow_reader(relation, batch_rows: int) -> pa.RecordBatchReader:
    fetch = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    return fetch(batch_rows)


def check_columns(schema: pa.Schema) -> None:
    seen: set[str] = set()
    for name in schema.names:
        if name in seen:
            raise StageError(f"the query gives two columns named {name!r}; name them apart with AS")
        seen.add(name)


# --------------------------------------------------------------------------------------------
# One connection per worker process
# --------------------------------------------------------------------------------------------

_CONNECTIONS: dict[tuple, Any] = {}
_LOCK = threading.Lock()

# Reads the job's lookup tables ({name: table}); set by the worker from its spec (a lookup needs
# the input readers, which live above the stages).
LookupLoader = Callable[[], Mapping[str, pa.Table]]


def worker_connection(memory_bytes: int, lookups_key: tuple, load_lookups: LookupLoader | None):
    """This process's connection for sql stages, made (and its lookups registered) on first use.

    Keyed by process id: a forked worker never uses the connection its parent made.
    """
    key = (os.getpid(), memory_bytes, lookups_key)
    with _LOCK:
        con = _CONNECTIONS.get(key)
        if con is None:
            con = sandboxed(threads=1, memory_bytes=memory_bytes)
            for name, table in (load_lookups() if load_lookups else {}).items():
                con.register(name, table)
            _CONNECTIONS[key] = con
        return con


def run_query(con, query: str, tables: Mapping[str, pa.Table]) -> pa.Table:
    """Run ``query`` with ``tables`` registered for its duration; StageError with DuckDB's message.

    The stage runner adds the stage's key and the chunk to the message.
    """
    duckdb = duckdb_module()
    registered = []
    try:
        for name, table in tables.items():
            con.register(name, table)
            registered.append(name)
        try:
            out = to_arrow(con.sql(query))
        except duckdb.Error as exc:
            raise StageError(str(exc)) from None
    finally:
        for name in registered:
            con.unregister(name)
    check_columns(out.schema)
    return out


@register("sql", example="sql: \"SELECT id, price * qty AS total FROM chunk WHERE status = 'ok'\"")
def sql(table: pa.Table, spec: SqlQuery, ctx: StageContext) -> pa.Table:
    """A DuckDB SELECT over the chunk (the table `chunk`) and the job's lookups, without file or network access."""
    con = worker_connection(ctx.memory_bytes, ctx.lookups_key, ctx.load_lookups)
    return run_query(con, spec, {CHUNK_TABLE: table})
