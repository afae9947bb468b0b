"""The ``sql`` stage: a DuckDB query over each chunk (the table ``chunk``) and the job's lookups.

DuckDB is an optional dependency (``pip install 'pipeline[sql]'``). Every connection this module
makes is sandboxed: no file, network or extension access, and its configuration is locked, so a
query cannot reopen what was closed. A query is one SELECT statement (``WITH``, ``FROM``,
``VALUES``, ``QUALIFY`` ... are SELECTs too); anything else is refused before it runs.

Each worker process keeps one connection (one thread, its share of ``run.memory_limit``) with the
lookup tables registered once; a chunk is registered as ``chunk`` for the query and unregistered.
"""

from __future__ import annotations

import functools
import json
import logging
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
PLANNING_MEMORY = 64 << 20    # DuckDB's memory limit while it plans a query over empty tables

log = logging.getLogger("pipeline")


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
        duckdb_module()
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    problem = _query_problem(query)
    if problem:
        raise ValueError(problem)
    return query


@functools.lru_cache(maxsize=256)
def _query_problem(query: str) -> str:
    """What is wrong with ``query`` as a stage's query ("" if nothing). Kept: the spec is validated
    wherever a stage runs (each chunk), and a DuckDB connection costs about 20 ms to make."""
    duckdb = duckdb_module()
    con = duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        return f"DuckDB cannot parse the query: {exc}"
    finally:
        con.close()
    if len(statements) != 1:
        return f"expected one SELECT statement, got {len(statements)} statements"
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        return (f"expected a SELECT query, got a {kind} statement; a query may only read the "
                f"table {CHUNK_TABLE} and the lookups (no files, no settings, no extensions)")
    return ""


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


# --------------------------------------------------------------------------------------------
# The columns a query reads
# --------------------------------------------------------------------------------------------


def query_columns(query: str, schema: pa.Schema, lookups: Mapping[str, pa.Table]) -> frozenset[str] | None:
    """The columns of ``chunk`` (a table of ``schema``) that ``query`` reads; None: every column.
    See ``_query_columns``; the answer depends only on the query and the schemas, and is kept."""
    return _query_columns(query, schema, tuple((name, table.schema) for name, table in lookups.items()))


@functools.lru_cache(maxsize=256)
def _query_columns(query: str, schema: pa.Schema, lookups: tuple[tuple[str, pa.Schema], ...]
                   ) -> frozenset[str] | None:
    """The columns of ``chunk`` (a table of ``schema``) that ``query`` reads; None: every column.

    DuckDB plans the query over empty tables, the lookups made native tables so that the plan's only
    Arrow scans are those of ``chunk``; the columns are those the scans project (``EXPLAIN``). The
    answer is checked: over ``chunk`` with only those columns the query must plan to the same scans
    and give the same columns and types. A query that names columns by position (``#2``, whose
    meaning changes with the columns present), one that reads no column of ``chunk``, and anything
    the planner does not say plainly give None, as does any DuckDB error: reading every column is
    always right, only slower.
    """
    duckdb = duckdb_module()
    con = sandboxed(threads=1, memory_bytes=PLANNING_MEMORY)
    try:
        tree = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
        if not tree or '"POSITIONAL_REFERENCE"' in str(tree[0][0]):
            return None
        for name, lookup_schema in lookups:
            con.register("pipeline_lookup", lookup_schema.empty_table())
            con.execute(f"CREATE TEMP TABLE {_quoted(name)} AS SELECT * FROM pipeline_lookup")
            con.unregister("pipeline_lookup")
        full = _planned(con, query, schema.empty_table())
        if full is None:
            return None
        scans = full[0]
        read = set().union(*scans) if scans else set()
        if not read or not read <= set(schema.names):
            return None
        narrowed = schema.empty_table().select([n for n in schema.names if n in read])
        try:
            same = _planned(con, query, narrowed) == full
        except duckdb.Error as exc:   # it names a column it does not read (``EXCLUDE (b)``)
            log.debug("every column is read for the sql stage: its query needs more than the columns it "
                      "reads (%s): %s", ", ".join(sorted(read)), exc)
            return None
        return frozenset(read) if same else None
    except duckdb.Error as exc:
        log.debug("every column is read for the sql stage: DuckDB could not plan it over empty tables: %s", exc)
        return None
    finally:
        con.close()


def _planned(con, query: str, chunk: pa.Table) -> tuple[list[tuple[str, ...]], list[tuple[str, str]]] | None:
    """(the columns each Arrow scan projects, the result's names and types) of ``query`` over ``chunk``;
    None when a scan does not say which columns it projects."""
    con.register(CHUNK_TABLE, chunk)
    try:
        plan = json.loads(con.execute(f"EXPLAIN (FORMAT JSON) {query}").fetchall()[0][1])
        result = con.sql(query)
        columns = list(zip(result.columns, map(str, result.types)))
    finally:
        con.unregister(CHUNK_TABLE)
    scans: list[tuple[str, ...]] = []
    stack = list(plan) if isinstance(plan, list) else [plan]
    while stack:
        node = stack.pop()
        stack.extend(node.get("children", []))
        if "ARROW_SCAN" not in str(node.get("name", "")):
            continue
        projected = node.get("extra_info", {}).get("Projections")
        if not projected:
            return None
        scans.append(tuple(sorted([projected] if isinstance(projected, str) else projected)))
    return sorted(scans), columns


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _reads(spec: str, schema: pa.Schema, ctx: StageContext) -> frozenset[str] | None:
    return query_columns(spec, schema, ctx.load_lookups() if ctx.load_lookups else {})


@register("sql", example="sql: \"SELECT id, price * qty AS total FROM chunk WHERE status = 'ok'\"", reads_in=_reads)
def sql(table: pa.Table, spec: SqlQuery, ctx: StageContext) -> pa.Table:
    """A DuckDB SELECT over the chunk (the table `chunk`) and the job's lookups, without file or network access."""
    con = worker_connection(ctx.memory_bytes, ctx.lookups_key, ctx.load_lookups)
    return run_query(con, spec, {CHUNK_TABLE: table})
