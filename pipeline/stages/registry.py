"""The stage registry, the stage contract, and the runner that applies a list of stages.

A stage is one function registered with :func:`register`::

    @register("filter", example='filter: "qty > 0"')
    def filter_(table: pa.Table, spec: str, ctx: StageContext) -> StageOutput | pa.Table: ...

The annotation of ``spec`` is the stage's config schema (validated with pydantic). A stage
returns a table whose rows map 1:1 to its input rows, or a :class:`StageOutput` saying which
input rows went on (``kept``) and which were rejected, with a reason.

Errors a stage raises carry in ``context["key"]`` the part of its spec they are about (a column
name, ``range.qty``); the runner turns that into the full key, e.g. ``stages[2].derive.total``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import TypeAdapter, ValidationError

from pipeline import arrays
from pipeline.errors import ConfigError, ExprError, Interrupted, PipelineError, StageError

# the rows one stage rejects: their positions in the table it was given, and why
STAGE_REJECTS_SCHEMA = pa.schema([("row", pa.int64()), ("reason", pa.string())])
# the rows a list of stages rejects: positions in the block it was given, the stage's key, and why
# (the reader turns these into file, line and raw record; see output.records.REJECTS_FILE_SCHEMA)
REJECTED_POSITIONS_SCHEMA = pa.schema([("row", pa.int64()), ("stage", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class StageContext:
    base_dir: Path                 # the job file's folder (python stages load modules from here)
    chunk: str = ""                # what is being processed, e.g. "chunk 3 of data/a.csv (bytes 0-67108864)"
    allowed_modules: tuple[str, ...] = ()  # installed modules a python stage may import
    stage: str = ""                # the key of the stage being run, e.g. "stages[3].python"
    memory_bytes: int = 256 << 20  # DuckDB's memory limit for this process's sql stages
    lookups_key: tuple = ()        # identifies the job's lookup tables (names and file fingerprints)
    load_lookups: Callable[[], Any] | None = None  # reads them: {name: Arrow table}, once per process


@dataclass
class StageOutput:
    table: pa.Table
    kept: pa.Array | None = None        # boolean mask over the INPUT rows: rows that went on
    rejected: pa.Table | None = None    # columns row (int64, position in the input) and reason


@dataclass
class StagesResult:
    table: pa.Table
    rows_filtered: int      # rows removed on purpose (filter, drop_nulls, a python stage)
    rows_rejected: int      # rows failing validate or cast
    rows_added: int         # rows a python stage added
    rejects: pa.Table       # row (int64 position in the original table, null if unknown), stage, reason
    filtered: pa.Table | None = None   # like rejects, for the filtered rows (with trace_filtered only)


@dataclass(frozen=True)
class StageDef:
    name: str
    fn: Callable[..., StageOutput | pa.Table]
    spec_type: Any
    doc: str
    example: str = ""
    # run at validate time on the typed spec, before the stage runs on an empty table
    # (the python stage checks that its function can be loaded)
    check: Callable[[Any, StageContext], None] | None = None
    # the columns of its input the stage reads, given those read after it (None: every column);
    # without it, the stage may read any column (see columns_read)
    reads: Callable[[Any, frozenset[str] | None], frozenset[str] | None] | None = None
    # the columns it reads, found from its input's schema (a query's, by DuckDB's planner): for a stage
    # whose spec alone cannot say, and whose output does not depend on what the stages after it read
    reads_in: Callable[[Any, pa.Schema, StageContext], frozenset[str] | None] | None = None

    @property
    def adapter(self) -> TypeAdapter:
        return _adapter(self)

    def validate_spec(self, value: Any) -> Any:
        """The typed spec of ``value`` as written in the job file; ValueError in plain words if invalid."""
        try:
            return self.adapter.validate_python(value)
        except ValidationError as e:
            raise ValueError(_plain(e, self, value)) from None


STAGES: dict[str, StageDef] = {}
_ADAPTERS: dict[str, TypeAdapter] = {}


def _adapter(sdef: StageDef) -> TypeAdapter:
    if sdef.name not in _ADAPTERS:
        _ADAPTERS[sdef.name] = TypeAdapter(sdef.spec_type)
    return _ADAPTERS[sdef.name]


def register(
    name: str, *, example: str = "", check: Callable[[Any, StageContext], None] | None = None,
    reads: Callable[[Any, frozenset[str] | None], frozenset[str] | None] | None = None,
    reads_in: Callable[[Any, pa.Schema, StageContext], frozenset[str] | None] | None = None,
) -> Callable:
    """Register a stage function; its ``spec`` parameter's annotation is the config schema.

    ``check(spec, ctx)``, if given, is run by :func:`output_schema` before the stage runs on an
    empty table; it raises ExprError for a spec that cannot work (a function that cannot be loaded).
    ``reads(spec, after)``, if given, says which columns of its input the stage needs when the
    stages after it need ``after`` (None: all); it lets a run leave the other input columns unread.
    ``reads_in(spec, schema, ctx)``, if given, says the same from the stage's input schema instead.
    """

    def decorate(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn, include_extras=True)
        if "spec" not in hints:
            raise TypeError(f"stage {name!r}: the function needs an annotated 'spec' parameter")
        doc = (fn.__doc__ or "").strip()
        STAGES[name] = StageDef(name=name, fn=fn, spec_type=hints["spec"], doc=doc, example=example, check=check,
                                reads=reads, reads_in=reads_in)
        _ADAPTERS.pop(name, None)
        return fn

    return decorate


# --------------------------------------------------------------------------------------------
# Spec validation
# --------------------------------------------------------------------------------------------


def validate_spec(name: str, value: Any) -> Any:
    """Validate a stage's spec as written in the job file; return the typed spec.

    Unknown stage name: KeyError. Invalid spec: ValueError with a plain-words message.
    """
    if name not in STAGES:
        close = difflib.get_close_matches(name, list(STAGES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; the stages are: {', '.join(sorted(STAGES))}"
        raise KeyError(f"unknown stage {name!r}{hint}")
    return STAGES[name].validate_spec(value)


def _plain(err: ValidationError, sdef: StageDef, value: Any = None) -> str:
    items = err.errors(include_url=False)
    per_place: dict[str, int] = {}
    for item in items:
        place = _location(item["loc"], value)
        per_place[place] = per_place.get(place, 0) + 1
    seen: list[str] = []
    for item in items:
        loc = _location(item["loc"], value)
        kind = item["type"]
        msg = item["msg"]
        if kind == "extra_forbidden":
            text = f"unknown key {loc.rsplit('.', 1)[-1]!r}"
            loc = loc.rpartition(".")[0]
        elif kind == "missing":
            text = f"required key {loc.rsplit('.', 1)[-1]!r} is missing"
            loc = loc.rpartition(".")[0]
        elif kind in ("value_error", "assertion_error"):
            text = str((item.get("ctx") or {}).get("error") or msg)
        elif per_place[loc] > 1:
            # several alternatives (a union) all refused the value
            text = f"{_show(item.get('input'))} is not an accepted value"
        else:
            text = f"{msg[:1].lower()}{msg[1:]}, got {_show(item.get('input'))}"
        line = f"{loc}: {text}" if loc else text
        if line not in seen:
            seen.append(line)
    shown = "; ".join(seen[:3]) + (f" (and {len(seen) - 3} more)" if len(seen) > 3 else "")
    example = f"; for example {sdef.example}" if sdef.example else ""
    return f"invalid {sdef.name} stage: {shown}{example}"


def _location(loc: Sequence[Any], value: Any) -> str:
    """The path of an error inside the spec, as keys and [indexes] of the value written.

    Pydantic locations also name union members and validators ("list[str]", "function-after");
    walking the value tells those apart from the user's keys.
    """
    parts: list[str] = []
    for part in loc:
        if isinstance(value, dict) and part in value:
            parts.append(("." if parts else "") + str(part))
            value = value[part]
        elif isinstance(value, (list, tuple)) and isinstance(part, int) and 0 <= part < len(value):
            parts.append(f"[{part}]")
            value = value[part]
        elif hasattr(value, "__dict__") and isinstance(part, str) and part in vars(value):
            parts.append(("." if parts else "") + part)
            value = vars(value)[part]
        elif isinstance(part, str) and isinstance(value, dict) and not _is_type_tag(part):
            parts.append(("." if parts else "") + part)   # a missing or unknown key
            value = None
    return "".join(parts)


def _is_type_tag(part: str) -> bool:
    tags = ("str", "int", "float", "bool", "none", "list", "dict", "date", "datetime", "[key]")
    return part in tags or any(c in part for c in "[(") or part.startswith(("function-", "literal"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def columns_read(stages: Sequence[tuple[str, Any]], schema: pa.Schema | None = None,
                 ctx: StageContext | None = None) -> frozenset[str] | None:
    """The input columns a list of ``(name, typed spec)`` stages reads; None: all of them.

    Walked from the last stage back: the output keeps every column that reaches it, a stage that
    names the columns it keeps (``select``) narrows what the stages before it must give, and a stage
    that may read any column (``python``) needs them all. A stage still reads every column
    it names (a ``cast`` whose result is dropped still rejects the rows that do not convert).
    With the input ``schema`` and a ``ctx`` to run stages in, a stage that can say what it reads only
    from its input's schema (``sql``: the columns its query reads) says so; without them it reads all.
    """
    after: frozenset[str] | None = None
    for i in range(len(stages) - 1, -1, -1):
        name, spec = stages[i]
        sdef = STAGES[name]
        typed = sdef.adapter.validate_python(spec)
        if sdef.reads_in is not None:
            after = None
            if schema is not None and ctx is not None:
                given = output_schema(schema, stages[:i], ctx)   # None: a python stage before it is unknown
                after = None if given is None else sdef.reads_in(typed, given, ctx)
        else:
            after = None if sdef.reads is None else sdef.reads(typed, after)
    return after


# --------------------------------------------------------------------------------------------
# Running stages
# --------------------------------------------------------------------------------------------


def _stage_key(index: int, name: str, keys: Sequence[str]) -> str:
    return keys[index] if index < len(keys) and keys[index] else f"stages[{index}].{name}"


def _join_key(stage_key: str, sub: Any) -> str:
    if not sub:
        return stage_key
    sub = str(sub)
    return stage_key + ("" if sub.startswith("[") else ".") + sub


def _run_one(name: str, table: pa.Table, spec: Any, ctx: StageContext) -> StageOutput:
    sdef = STAGES.get(name)
    if sdef is None:
        close = difflib.get_close_matches(name, list(STAGES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ExprError(f"unknown stage {name!r}{hint}")
    try:
        spec = sdef.adapter.validate_python(spec)
    except ValidationError as e:
        raise ExprError(_plain(e, sdef, spec)) from None
    out = sdef.fn(table, spec, ctx)
    if isinstance(out, pa.Table):
        out = StageOutput(out)
    if not isinstance(out, StageOutput):
        raise TypeError(f"stage {name!r} returned {type(out).__name__}, not a table")
    if out.kept is None and out.rejected is not None and out.rejected.num_rows:
        # Rejected rows without a mask: every other row went on.
        keep = np.ones(table.num_rows, dtype=bool)
        keep[arrays.to_numpy(out.rejected.column("row"))] = False
        out.kept = arrays.array(keep)
    if out.kept is not None:
        kept = out.kept
        if isinstance(kept, pa.ChunkedArray):
            kept = kept.combine_chunks() if kept.num_chunks else arrays.array([], pa.bool_())
        out.kept = pc.fill_null(kept, arrays.scalar(False)) if kept.null_count else kept
        if len(out.kept) != table.num_rows:
            raise RuntimeError(f"stage {name!r}: kept mask has {len(out.kept)} rows, input has {table.num_rows}")
    return out


def apply_stages(
    table: pa.Table,
    stages: Sequence[tuple[str, Any]],
    ctx: StageContext,
    keys: Sequence[str] = (),
    trace_filtered: bool = False,
) -> StagesResult:
    """Run ``stages`` (``(name, spec)`` pairs) over ``table``.

    Keeps each row's position in ``table`` through the stages so that rejected rows can be
    traced to the input; after a ``python`` stage that changes the number of rows the positions
    are unknown (null). ``rows_in == rows_out + rows_filtered + rows_rejected - rows_added``.
    With ``trace_filtered`` the result also says which rows each stage filtered out (where the
    positions are known), for ``pipeline preview``.
    """
    positions: pa.Array = arrays.array(np.arange(table.num_rows, dtype=np.int64))
    filtered = rejected = added = 0
    rejects: list[pa.Table] = []
    dropped: list[pa.Table] = []
    for i, (name, spec) in enumerate(stages):
        key = _stage_key(i, name, keys)
        sctx = dataclasses.replace(ctx, stage=key)
        n_in = table.num_rows
        try:
            out = _run_one(name, table, spec, sctx)
        except StageError as e:
            if e.context.get("stage"):
                raise
            raise _runtime_error(StageError, e, key, ctx) from e
        except ConfigError as e:
            raise _runtime_error(type(e), e, key, ctx) from e
        except PipelineError:
            raise
        except Exception as e:
            raise StageError(f"{key}: {type(e).__name__}: {e}{_on(ctx)}", stage=key, chunk=ctx.chunk or None) from e
        n_rej = 0
        if out.rejected is not None and out.rejected.num_rows:
            n_rej = out.rejected.num_rows
            rows = out.rejected.column("row")
            origin = pc.take(positions, rows) if len(positions) else pa.nulls(n_rej, pa.int64())
            rejects.append(pa.table({
                "row": pc.cast(origin, pa.int64()),
                "stage": pa.repeat(arrays.scalar(key, pa.string()), n_rej),
                "reason": pc.cast(out.rejected.column("reason"), pa.string()),
            }, schema=REJECTED_POSITIONS_SCHEMA))
        rejected += n_rej
        n_out = out.table.num_rows
        if out.kept is not None and trace_filtered and len(positions):
            gone = ~arrays.to_numpy(out.kept)
            if n_rej and out.rejected is not None:
                gone[arrays.to_numpy(out.rejected.column("row"))] = False
            if gone.any():
                origin = positions.filter(arrays.array(gone))
                dropped.append(pa.table({
                    "row": pc.cast(origin, pa.int64()),
                    "stage": pa.repeat(arrays.scalar(key, pa.string()), len(origin)),
                    "reason": pa.repeat(arrays.scalar("filtered out", pa.string()), len(origin)),
                }, schema=REJECTED_POSITIONS_SCHEMA))
        if out.kept is not None:
            positions = positions.filter(out.kept)
            removed = n_in - len(positions) - n_rej
            if removed < 0 or len(positions) != n_out:
                raise StageError(f"{key}: the stage's row counts do not add up{_on(ctx)}", stage=key)
            filtered += removed
        elif n_out != n_in:
            if n_out > n_in:
                added += n_out - n_in
            else:
                filtered += n_in - n_out
            positions = pa.nulls(n_out, pa.int64())
        table = out.table
    if rejects:
        all_rejects = pa.concat_tables(rejects)
    else:
        all_rejects = empty_table(REJECTED_POSITIONS_SCHEMA)
    traced = None
    if trace_filtered:
        traced = pa.concat_tables(dropped) if dropped else empty_table(REJECTED_POSITIONS_SCHEMA)
    return StagesResult(table=table, rows_filtered=filtered, rows_rejected=rejected,
                        rows_added=added, rejects=all_rejects, filtered=traced)


def _on(ctx: StageContext) -> str:
    return f" (on {ctx.chunk})" if ctx.chunk else ""


def _runtime_error(cls: type, e: PipelineError, key: str, ctx: StageContext) -> PipelineError:
    full = _join_key(key, e.context.get("key"))
    context = {k: v for k, v in e.context.items() if k != "key"}
    context["chunk"] = ctx.chunk or None
    if cls is StageError:
        context["stage"] = full
        return StageError(f"{full}: {e.message}{_on(ctx)}", **context)
    return cls(f"{e.message}{_on(ctx)}", key=full, **context)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with no rows (``Schema.empty_table`` would import pandas, a quarter second)."""
    return pa.Table.from_batches([], schema=schema)


def output_schema(
    schema: pa.Schema,
    stages: Sequence[tuple[str, Any]],
    ctx: StageContext,
    keys: Sequence[str] = (),
) -> pa.Schema | None:
    """The schema after ``stages``, found by running them on an empty table of ``schema``.

    Raises ExprError, with the key of the stage (and of the column or rule inside it), for an
    unknown column, an expression that does not compile or has a type error, an impossible cast.
    Returns None when a ``python`` stage fails on an empty table: the schema from there on is
    unknown, and the stages after it are checked only when the job runs.
    """
    table = empty_table(schema)
    for i, (name, spec) in enumerate(stages):
        key = _stage_key(i, name, keys)
        sctx = dataclasses.replace(ctx, stage=key, chunk=ctx.chunk or "an empty table (validation)")
        try:
            sdef = STAGES.get(name)
            if sdef is not None and sdef.check is not None:
                sdef.check(sdef.adapter.validate_python(spec), sctx)
            out = _run_one(name, table, spec, sctx)
        except ExprError as e:
            raise ExprError(e.message, key=_join_key(key, e.context.get("key"))) from None
        except ValidationError as e:
            raise ExprError(_plain(e, STAGES[name], spec), key=key) from None
        except StageError as e:
            if name == "python":
                return None
            raise ExprError(e.message, key=_join_key(key, e.context.get("key"))) from None
        except Interrupted:
            raise        # Ctrl-C or SIGTERM while the stages are checked: not a configuration error
        except PipelineError as e:
            raise ExprError(e.message, key=_join_key(key, e.context.get("key"))) from None
        except Exception as e:
            raise ExprError(f"{type(e).__name__}: {e}", key=key) from e
        table = out.table
    return table.schema
