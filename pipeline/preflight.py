"""What a run checks before it writes anything. `validate` and `run --dry-run` run the same checks.

- The output schema of the stage list, from real rows, never from the types pandas gives an empty
  frame (an empty list column is float64). `validate`, `plan` and `--dry-run` run the stages on a
  sample of the first rows of the input (``sample_table``) and report the types. A run calls no
  user code before the chunks: the columns a ``python`` stage makes or changes are left open and
  the first chunk's real rows decide them (the writer widens them while no file is written).
  A column that is null in every sampled row has no type yet either.
- The output path: it can be created and written (exit 74), ``mode: error`` against existing output.
- ``mode: append``: the schema contract with the output it joins (``output.on_schema_change``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.dtypes import parse_type, type_name, widens
from pipeline.errors import ExprError, InputError, OutputError, PipelineError

log = logging.getLogger("pipeline")

SAMPLE_ROWS = 1000          # rows the stages are tried on at plan time
SAMPLE_CHUNKS = 4           # chunks looked at for them (the first ones may be empty)
SAMPLE_SECONDS = 120.0      # how long python stages may take on them (or run.chunk_timeout)


@dataclass
class StageSchema:
    """The output schema a run will write, and how sure it is of each column."""

    schema: pa.Schema | None
    sample_rows: int = 0                              # input rows the stages were tried on
    unknown: tuple[str, ...] = ()                     # columns with no type yet (null in every sampled row)
    rejected: list[tuple[str, str]] = field(default_factory=list)   # (stage, reason) of sampled rows rejected
    rows_rejected: int = 0


# ------------------------------------------------------------------------------------ sample rows


def sample_table(plan, limit: int = SAMPLE_ROWS, sample_bytes: int = 1 << 20) -> pa.Table | None:
    """Up to ``limit`` rows from the first chunks, in the input schema (None when there are no chunks).

    Reads only the head of a chunk (about ``sample_bytes``); bad rows are left out here, the run
    counts them.
    """
    from pipeline.input import boundaries
    from pipeline.input.read import dialect_of, read_chunk
    from pipeline.input.split import split_ranges
    from pipeline.input.storage import open_input

    spec = dataclasses.replace(plan.read, block_bytes=min(plan.read.block_bytes, sample_bytes))
    tables: list[pa.Table] = []
    rows = 0
    for chunk in plan.chunks[:SAMPLE_CHUNKS]:
        head = chunk
        if chunk.cut:
            # the records that start in the first sample_bytes of the range, at their exact boundaries
            at = boundaries.locate(dataclasses.replace(chunk, end=min(chunk.end, chunk.start + sample_bytes)),
                                   dialect_of(chunk, plan.read), boundaries.StateTable())
            head = dataclasses.replace(chunk, start=at.start, end=at.end, origin=-1, step=0)
        elif chunk.file.format in ("csv", "tsv", "jsonl") and chunk.end >= 0 and not chunk.file.compression \
                and chunk.end - chunk.start > sample_bytes:
            with open_input(chunk.file.path) as fh:
                _, end, _, quotes = next(split_ranges(fh, chunk.start, chunk.end, sample_bytes,
                                                      dialect_of(chunk, plan.read), chunk.first_line or 1,
                                                      count_lines=False))
            head = dataclasses.replace(chunk, end=end, quotes=quotes)
        for block in read_chunk(head, spec):
            if block.table.num_rows:
                tables.append(block.table.slice(0, limit - rows))
                rows += tables[-1].num_rows
            if rows >= limit:
                break
        if rows >= limit:
            break
    if not plan.chunks:
        return None
    if not tables:
        return pa.Table.from_batches([], schema=plan.read.schema)
    return pa.concat_tables(tables)


def _check_writable(schema: pa.Schema, source: pa.Schema, stages, context, keys) -> None:
    """A column Parquet cannot hold (a SQL interval) is the config error of the stage that makes it."""
    from pipeline.output.write import unwritable_columns, unwritable_message
    from pipeline.stages import output_schema

    bad = unwritable_columns(schema) if schema is not None else []
    if not bad:
        return
    for i in range(len(stages)):
        made = output_schema(source, stages[:i + 1], context, keys[:i + 1])
        if made is not None and bad[0].name in made.names and made.field(bad[0].name).type == bad[0].type:
            raise ExprError(unwritable_message(bad[0]), key=keys[i])
    raise ExprError(unwritable_message(bad[0]), key=keys[-1])


def stage_schema(job, plan, context, sample: bool = True) -> StageSchema:
    """The output schema: the stages run on an empty table (to check them), then on sampled rows.

    ``context`` is the StageContext to run them with. Errors name the stage (ExprError, exit 78).
    With ``sample`` off (a run), no user code runs before the chunks do: the columns a python stage
    makes or changes are left open, and the first chunk's real rows decide their types.
    """
    from pipeline.stages import output_schema

    stages = [(s.name, s.spec) for s in job.stages]
    keys = [s.key for s in job.stages]
    empty = output_schema(plan.read.schema, stages, context, keys)
    if not stages:
        return StageSchema(plan.read.schema)
    _check_writable(empty, plan.read.schema, stages, context, keys)
    has_python = any(name == "python" for name, _ in stages)
    rows = None
    if sample:
        try:
            rows = sample_table(plan, sample_bytes=job.input.sample_bytes)
        except PipelineError as exc:
            log.info("no sample rows for the stages: %s", exc)
    if rows is None or rows.num_rows == 0:
        schema = _untyped_after_python(empty, plan.read.schema, stages, context, keys) if has_python else empty
        return StageSchema(schema, 0, _null_columns(schema))
    ctx = dataclasses.replace(context, chunk=f"the first {rows.num_rows} rows of the input (validation)")
    if has_python:
        # user code on real rows runs in a child process: a function that kills its process or
        # hangs on some row must not take `validate` with it
        tried = _in_child(lambda: _try_stages(rows, stages, ctx, keys), job.run.chunk_timeout or SAMPLE_SECONDS)
        if tried is None:
            log.warning("the python stage ended its process or did not finish on the first %d rows; the types "
                        "of its columns are decided by the first chunk", rows.num_rows)
            schema = _untyped_after_python(empty, plan.read.schema, stages, context, keys)
            return StageSchema(schema, 0, _null_columns(schema))
    else:
        tried = _try_stages(rows, stages, ctx, keys)
    out_schema, out_rows, rows_rejected, rejected = tried
    if not has_python:
        # the expression stages type every column on an empty table already
        schema = empty
    elif out_rows == 0:
        schema = _untyped_after_python(empty, plan.read.schema, stages, context, keys)
    else:
        schema = out_schema
    return StageSchema(schema, rows.num_rows, _null_columns(schema), rejected, rows_rejected)


def _try_stages(sample: pa.Table, stages, ctx, keys) -> tuple[pa.Schema, int, int, list[tuple[str, str]]]:
    from pipeline.stages import apply_stages

    out = apply_stages(sample, stages, ctx, keys)
    rejected = list(zip(out.rejects.column("stage").to_pylist()[:5], out.rejects.column("reason").to_pylist()[:5]))
    return out.table.schema.remove_metadata(), out.table.num_rows, out.rows_rejected, rejected


def _in_child(fn, timeout: float):
    """``fn()`` in a forked child process: its result, its exception re-raised here, or None if the
    child died or took longer than ``timeout`` seconds. Where fork is not available, ``fn()`` runs here."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return fn()
    mp = multiprocessing.get_context("fork")
    receive, send = mp.Pipe(duplex=False)

    def child() -> None:
        try:
            value = fn()
            send.send(("ok", (value[0].serialize().to_pybytes(),) + tuple(value[1:])))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            try:
                send.send(("error", exc))
            except Exception:  # noqa: BLE001 - an exception that cannot be pickled
                send.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))

    proc = mp.Process(target=child, daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout):
            proc.kill()
            proc.join()
            return None
        kind, value = receive.recv()
    except EOFError:
        proc.join()
        return None
    finally:
        receive.close()
    proc.join()
    if kind == "error":
        raise value
    return (pa.ipc.read_schema(pa.py_buffer(value[0])),) + tuple(value[1:])


def _null_columns(schema: pa.Schema | None) -> tuple[str, ...]:
    return tuple(f.name for f in schema if pa.types.is_null(f.type)) if schema is not None else ()


def _untyped_after_python(empty: pa.Schema | None, source: pa.Schema, stages, context, keys) -> pa.Schema | None:
    """With no row to learn from, a column a python stage makes or changes has no type yet.

    The types the stages give an empty table are kept for the columns that come unchanged from
    before the first python stage; the others are left open (null) for the first real chunk.
    """
    from pipeline.stages import output_schema

    if empty is None:
        return None
    first = next(i for i, (name, _) in enumerate(stages) if name == "python")
    before = output_schema(source, stages[:first], context, keys[:first]) if first else source
    known = {(f.name, f.type) for f in before} if before is not None else set()
    return pa.schema([f if (f.name, f.type) in known else pa.field(f.name, pa.null()) for f in empty])


# ------------------------------------------------------------------------------------ the output


def check_output_path(path: str) -> None:
    """The output directory can be made and written: exit 74 with a message, never a traceback."""
    from pipeline.input.storage import is_url

    if is_url(path):
        return
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"output.path {path} exists and is not a directory", path=path)
    parent = os.path.dirname(path)
    probe = parent
    while not os.path.exists(probe):
        up = os.path.dirname(probe)
        if up == probe:
            break
        probe = up
    if not os.path.isdir(probe):
        raise OutputError(f"output.path {path} cannot be created: {probe} is a file, not a directory",
                          path=path)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"output.path {path} cannot be written: no permission to write in {probe}", path=path)


def manifest_schema(manifest: dict | None) -> pa.Schema | None:
    if not manifest or not manifest.get("schema"):
        return None
    return pa.schema([pa.field(c["name"], parse_type(c["type"])) for c in manifest["schema"]])


def append_schema(job, schema: pa.Schema | None, previous: dict | None, output: str) -> pa.Schema | None:
    """The schema appended parts are written with, under ``output.on_schema_change``.

    A column whose type widens to the output's type takes the output's type (int64 rows join a
    float64 column). ``fail`` (the default) refuses any other difference of columns or types;
    ``add_columns`` adds new columns (and keeps the output's columns the run lacks, as nulls).
    A changed type is refused either way. Raises InputError (65) before anything is written.
    """
    old = manifest_schema(previous)
    if old is None or schema is None or previous is None:
        return schema
    partition_by = set(previous.get("partition_by") or ())
    new_types = {f.name: f.type for f in schema}
    old_types = {f.name: f.type for f in old}
    changed = []
    for name, new in new_types.items():
        if name in old_types and new != old_types[name] and not widens(new, old_types[name]):
            changed.append(f"{name!r} is {type_name(old_types[name])} in the output, {type_name(new)} now")
    added = [n for n in schema.names if n not in old_types]
    dropped = [n for n in old.names if n not in new_types and n not in partition_by]
    fix_types = ("add a `cast` stage to give the column the output's type, or write to a new output "
                 "(output.mode: overwrite, or --full-refresh)")
    if changed:
        raise InputError(f"output {output}: the run's schema differs from the output's: "
                         f"{'; '.join(changed)}; {fix_types}", key="output.on_schema_change")
    policy = job.output.on_schema_change
    if (added or dropped) and policy == "fail":
        parts = []
        if added:
            parts.append(f"new column(s) {', '.join(f'{n} ({type_name(new_types[n])})' for n in added)}")
        if dropped:
            parts.append(f"column(s) {', '.join(f'{n} ({type_name(old_types[n])})' for n in dropped)} "
                         f"missing from this run")
        raise InputError(f"output {output}: the run's columns differ from the output's: {' and '.join(parts)}; "
                         f"output.on_schema_change is 'fail': set it to 'add_columns' to evolve the output's "
                         f"schema (older rows read the new columns as null), or write to a new output",
                         key="output.on_schema_change")
    fields = []
    for f in old:
        if f.name in new_types:
            fields.append(pa.field(f.name, old_types[f.name]))
        elif f.name not in partition_by:
            fields.append(pa.field(f.name, old_types[f.name]))   # add_columns: null in this run's rows
    fields += [pa.field(n, new_types[n]) for n in added]
    # partition columns stay where the run has them
    return pa.schema(fields + [f for f in schema if f.name in partition_by and f.name not in {x.name for x in fields}])


def check_output(job, mode: str) -> dict | None:
    """The checks of the output a run makes before it writes: the path, ``mode: error``, a foreign
    directory. Returns the existing output's manifest (None when there is no output yet)."""
    from pipeline.input.storage import is_url
    from pipeline.output.objectstore import check_remote_target
    from pipeline.output.publish import OutputPaths, check_target

    path = job.output.path
    if is_url(path):
        return check_remote_target(path.rstrip("/"), mode)
    check_output_path(path)
    return check_target(OutputPaths(path), mode)


def check_sample(job, checked: StageSchema) -> None:
    """For `validate` and `--dry-run`: rows of the sample that the stages reject, when the job allows none."""
    if not checked.rows_rejected:
        return
    stage, reason = checked.rejected[0]
    cap = job.run.max_bad_rows if job.run.on_bad_rows != "fail" else 0
    if job.run.on_bad_rows == "fail" or (cap is not None and checked.rows_rejected > cap):
        allowed = ("run.on_bad_rows is 'fail'" if job.run.on_bad_rows == "fail"
                   else f"more than run.max_bad_rows ({cap})")
        raise InputError(f"{stage}: {checked.rows_rejected} of the first {checked.sample_rows} input rows are "
                         f"rejected ({reason}); {allowed}, so the run would fail", stage=stage)
    log.warning("%s: %d of the first %d input rows are rejected (%s)", stage, checked.rows_rejected,
                checked.sample_rows, reason)


def describe_columns(checked: StageSchema) -> str:
    """``name: type`` for each output column; a column with no type yet says so."""
    if checked.schema is None:
        return "(decided by a python stage when the job runs)"
    cols = []
    for f in checked.schema:
        if pa.types.is_null(f.type):
            seen = f"null in all {checked.sample_rows} sampled rows" if checked.sample_rows else "no sampled rows"
            cols.append(f"{f.name}: not yet known ({seen}; the first chunk with a value decides it)")
        else:
            cols.append(f"{f.name}: {type_name(f.type)}")
    return ", ".join(cols)


def target_schema(job, checked: StageSchema, mode: str, contract: bool = True) -> pa.Schema | None:
    """`validate` and `--dry-run`: the output checks, the sampled rows, and the schema the run would
    write (the append contract applied). Raises what the run would raise before writing."""
    previous = check_output(job, mode)
    check_sample(job, checked)
    if contract and mode == "append" and previous is not None:
        return append_schema(job, checked.schema, previous, job.output.path)
    return checked.schema
