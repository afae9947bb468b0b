"""The one module that sequences a run: ``run_job``, behind ``pipeline run``.

lock -> recover -> check the target -> staging (or resume) -> progress -> execute -> verify the
counts -> manifest -> publish -> record state and metrics -> report, written once, over two seams:

- an executor (``execution.executor.Executor``: the local process pool, or Dask) turns chunks into
  committed part files and counts;
- an output target (``output.target.OutputTarget``: a directory, or an object-store prefix) locks,
  stages, publishes, recovers and discards.

Any executor runs with any target; what a run records (manifest, state, metrics, summary) cannot
differ between them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import __version__
from pipeline.config import Job, dump_config, format_bytes, plural
from pipeline.config.document import DEFAULT_STATE_DIR
from pipeline.dtypes import parse_type, type_name
from pipeline.errors import ConfigError, ExprError, InputError, Interrupted, LockedError, OutputError
from pipeline.execution.executor import Committed, Executor, TaskSettings
from pipeline.execution.local import LocalExecutor
from pipeline.execution.worker import WorkerSettings
from pipeline.input.chunks import Chunk
from pipeline.input.feed import ChunkFeed
from pipeline.input.lookups import fingerprints as lookup_fingerprints
from pipeline.input.lookups import job_lookup_tables, lookup_tables, lookups_key, lookups_of
from pipeline.input.plan import Plan, build_plan
from pipeline.input.read import BadRow
from pipeline.input.storage import is_url
from pipeline.log import set_context
from pipeline.output.carry import carry_previous
from pipeline.output.finalize import finalize_schema, finalize_staged
from pipeline.output.lock import JobLock
from pipeline.output.publish import REJECTS, SPOOL, new_run_id
from pipeline.output.records import BAD_ROW_SAMPLES, ChunkResult
from pipeline.output.resume import has_checkpoint, start_journal
from pipeline.output.target import OutputTarget, output_target
from pipeline.output.write import WriterSettings
from pipeline.preflight import (
    StageSchema,
    append_schema,
    check_output_path,
    manifest_schema,
    stage_schema,
    target_schema,
)
from pipeline.progress import Progress
from pipeline.stages import StageContext, columns_read
from pipeline.state.incremental import Selection
from pipeline.state.metrics import write_metrics
from pipeline.state.store import Fingerprints, Seen, StateStore

log = logging.getLogger("pipeline")


@dataclass
class Counts:
    rows_read: int = 0
    rows_written: int = 0
    rows_filtered: int = 0
    rows_rejected: int = 0
    rows_added: int = 0
    lines_skipped: int = 0     # comment lines (csv.comment)

    def add(self, r: ChunkResult) -> None:
        self.rows_read += r.rows_read
        self.rows_written += r.rows_written
        self.rows_filtered += r.rows_filtered
        self.rows_rejected += r.rows_rejected
        self.rows_added += r.rows_added
        self.lines_skipped += r.lines_skipped

    def balanced(self) -> bool:
        return self.rows_read + self.rows_added == self.rows_written + self.rows_filtered + self.rows_rejected


@dataclass
class Report:
    job: str
    run_id: str
    status: str                       # succeeded | failed | dry-run
    output: str
    counts: Counts = field(default_factory=Counts)
    input_files: int = 0
    input_bytes: int = 0
    chunks: int = 0
    workers: int = 0
    output_files: int = 0
    output_bytes: int = 0
    reject_files: int = 0
    seconds: float = 0.0
    bad_samples: list[BadRow] = field(default_factory=list)
    error: str | None = None
    exit_code: int | None = None
    note: str = ""
    skip_metrics: bool = False
    chunk_results: list = field(default_factory=list)   # every committed ChunkResult, for the state store
    finalize: dict | None = None      # the manifest's finalize entry: scope, rows in and out

    def mark_succeeded(self, files: list[dict], started: float) -> Report:
        """Fill in a published run's figures from the files it wrote."""
        data_files = [f for f in files if not f["path"].startswith(REJECTS + "/")]
        self.status = "succeeded"
        self.exit_code = 0
        self.output_files = len(data_files)
        self.output_bytes = sum(f["bytes"] for f in data_files)
        self.reject_files = len(files) - len(data_files)
        self.seconds = time.monotonic() - started
        log.info("run %s succeeded: %s written", self.run_id, plural(self.counts.rows_written, "row"))
        return self

    def keep_bad_samples(self, bad: list[BadRow]) -> None:
        """Keep the first few bad rows of the input (by file and line), whatever order chunks finish in."""
        merged = sorted(self.bad_samples + list(bad), key=lambda b: (b.file, b.line or 0, b.offset or 0))
        self.bad_samples = merged[:BAD_ROW_SAMPLES]

    def summary(self) -> str:
        c = self.counts
        rate = c.rows_read / self.seconds if self.seconds > 0 else 0.0
        byte_rate = self.input_bytes / self.seconds if self.seconds > 0 else 0.0
        workers = f", {plural(self.workers, 'worker')}" if self.chunks else ""
        lines = [
            f"{self.job}: run {self.run_id} {self.status} in {self.seconds:.2f} s",
            f"  input     {plural(self.input_files, 'file')}, {format_bytes(self.input_bytes)}, "
            f"{plural(self.chunks, 'chunk')}{workers}",
            f"  rows      {c.rows_read:,} read, {c.rows_written:,} written, {c.rows_filtered:,} filtered, "
            f"{c.rows_rejected:,} rejected" + (f", {c.rows_added:,} added by stages" if c.rows_added else "")
            + (f"; {c.lines_skipped:,} comment lines skipped" if c.lines_skipped else ""),
        ]
        if self.finalize:
            f = self.finalize
            lines.append(f"  finalize  {f['rows_in']:,} rows in, {f['rows_out']:,} rows out (scope {f['scope']}, "
                         f"{f['seconds']:.2f} s)")
        if c.rows_read:
            lines.append(f"  speed     {rate:,.0f} rows/s, {format_bytes(byte_rate)}/s")
        if self.note:
            lines.append(f"  note      {self.note}")
        if self.status == "succeeded":
            where = self.output
            lines.append(f"  output    {where} ({plural(self.output_files, 'part file')}, "
                         f"{format_bytes(self.output_bytes)})")
            if self.reject_files:
                lines.append(f"  rejects   {os.path.join(where, REJECTS)} ({plural(c.rows_rejected, 'row')})")
        for bad in sorted(self.bad_samples, key=lambda b: (b.file, b.line or 0)):
            where = f"{bad.file} line {bad.line}" if bad.line else bad.file
            lines.append(f"  bad row   {where}: {bad.reason}")
        if c.rows_rejected > len(self.bad_samples) and self.bad_samples:
            lines.append(f"            ... and {c.rows_rejected - len(self.bad_samples):,} more")
        return "\n".join(lines)


def sql_memory(job: Job, workers: int | None = None) -> int:
    """DuckDB's memory limit in each worker: run.memory_limit shared by the workers."""
    return max(64 << 20, job.run.memory_limit // max(1, workers or job.run.workers))


def stage_context(job: Job, chunk: str = "") -> StageContext:
    lookups = lookups_of(job)
    key = lookups_key(lookups) if lookups else ()
    return StageContext(base_dir=job.base_dir, chunk=chunk, allowed_modules=tuple(job.run.python_modules),
                        memory_bytes=sql_memory(job), lookups_key=key,
                        load_lookups=functools.partial(lookup_tables, lookups, key))


def stage_output_schema(job: Job, plan: Plan) -> pa.Schema | None:
    """The output schema after the stages; ConfigError naming the stage for any problem."""
    return stage_check(job, plan).schema


def stage_check(job: Job, plan: Plan, sample: bool = True) -> StageSchema:
    """The output schema after the stages, from sampled rows (see ``preflight``); ConfigError naming
    the stage for any problem. ``sample`` off: python-stage columns are left to the first chunk."""
    job_lookup_tables(job)   # read now: a missing, oversized or broken lookup is named as itself
    try:
        checked = stage_schema(job, plan, stage_context(job), sample)
        schema = checked.schema
    except ExprError as exc:
        key = exc.context.get("key")
        if key and not exc.context.get("line"):
            line = job.line_of(key) or job.line_of(key.rsplit(".", 1)[0]) or _stage_line(job, key)
            exc.context["line"] = line
            exc.context.setdefault("file", str(job.config_path))
        elif not exc.context.get("file"):
            exc.context["file"] = str(job.config_path)
        raise
    if schema is not None and job.finalize is None:   # with finalize, its result is partitioned
        check_partitions(job, schema)
    return checked


def check_partitions(job: Job, schema: pa.Schema, what: str = "the output columns") -> None:
    missing = [p for p in job.output.partition_by if p not in schema.names]
    if missing:
        raise ConfigError(f"partition column {missing[0]!r} is not among {what} {schema.names}",
                          file=str(job.config_path), key="output.partition_by",
                          line=job.line_of("output.partition_by"))
    if job.output.partition_by and len(job.output.partition_by) == len(schema.names):
        raise ConfigError("every output column is a partition column; no data would be left in the files",
                          file=str(job.config_path), key="output.partition_by",
                          line=job.line_of("output.partition_by"))


def check_finalize(job: Job, schema: pa.Schema | None) -> pa.Schema | None:
    """The output schema after finalize (``schema``, the stages' output, without it); ConfigError naming
    the finalize key and line for any problem. None when the stages' output is known only at run time."""
    if job.finalize is None or schema is None:
        return schema
    out = finalize_schema(job.finalize, schema, job_lookup_tables(job), file=str(job.config_path),
                          line_of=job.line_of)
    check_partitions(job, out, "finalize's output columns")
    return out


def _stage_line(job: Job, key: str) -> int | None:
    for s in job.stages:
        if key.startswith(s.key):
            return s.line
    return None


def worker_settings(job: Job, plan: Plan, spool: str = "") -> WorkerSettings:
    return WorkerSettings(
        job_name=job.name,
        # the workers convert only the input columns the stages read
        read=plan.read.narrowed(columns_read([(s.name, s.spec) for s in job.stages], plan.read.schema,
                                             stage_context(job))),
        stages=tuple((s.name, s.spec) for s in job.stages),
        stage_keys=tuple(s.key for s in job.stages),
        base_dir=str(job.base_dir),
        on_bad_rows=job.run.on_bad_rows,
        spool=spool,
        allowed_modules=tuple(job.run.python_modules),
        memory_bytes=sql_memory(job, plan.workers),
        lookups=lookups_of(job),
        lookups_key=lookups_key(lookups_of(job)) if job.lookups else (),
    )


FINALIZE_SPILL = "_finalize_spill"   # DuckDB's spill files during finalize, inside staging


def staged_partition_by(job: Job) -> tuple[str, ...]:
    """How the chunks' parts are staged: unpartitioned when finalize will write the output."""
    return () if job.finalize is not None else tuple(job.output.partition_by)


def writer_settings(job: Job, run_id: str, root: str, schema: pa.Schema | None,
                    journal: str | None = None, null_columns: tuple[str, ...] = (),
                    buffer_bytes: int | None = None) -> WriterSettings:
    return WriterSettings(job.name, run_id, root, schema, staged_partition_by(job),
                          job.output.compression, job.output.compression_level,
                          job.output.row_group_rows, job.output.file_bytes,
                          journal=journal, checkpoint_seconds=job.run.checkpoint_interval or 0.0,
                          null_columns=null_columns, **({"buffer_bytes": buffer_bytes} if buffer_bytes else {}))


def bad_row_cap(job: Job) -> int | None:
    return job.run.max_bad_rows if job.run.on_bad_rows != "fail" else None


def count_results(job: Job, report: Report, bar: Progress):
    """The callback that counts each committed chunk, keeps a few bad rows, and enforces max_bad_rows."""
    cap = bad_row_cap(job)
    counts = report.counts

    def on_result(result: ChunkResult) -> None:
        counts.add(result)
        report.chunk_results.append(result)
        report.keep_bad_samples(result.bad_samples)
        bar.update(result)
        if cap is not None and counts.rows_rejected > cap:
            raise InputError(f"{counts.rows_rejected} bad rows so far, more than run.max_bad_rows ({cap}); "
                             f"nothing was published", rows_rejected=counts.rows_rejected)

    return on_result


def check_not_all_rejected(job: Job, report: Report) -> None:
    """A run whose every row was rejected is a failure (exit 65), unless run.max_bad_rows allows that many."""
    c = report.counts
    if c.rows_written or not c.rows_rejected or job.run.max_bad_rows is not None:
        return
    first = report.bad_samples[0] if report.bad_samples else None
    why = ""
    if first is not None:
        where = f"{first.file} line {first.line}" if first.line else first.file
        why = f" (the first: {where}: {first.reason})"
    raise InputError(f"every row was rejected: {c.rows_rejected:,} of {c.rows_read:,} read{why}; nothing was "
                     f"published. Set run.max_bad_rows to allow it", rows_rejected=c.rows_rejected)


def make_executor(job: Job, plan: Plan) -> Executor:
    """The executor ``run.executor`` names; the only place that tells them apart."""
    if job.run.executor == "dask":
        from pipeline.execution.dask import DaskExecutor, scheduler_address

        return DaskExecutor(scheduler_address(job.run.dask.address), plan.workers, retries=job.run.retries,
                            connect_timeout=job.run.dask.connect_timeout)
    return LocalExecutor(plan.workers, job.run.start_method, retries=job.run.retries,
                         chunk_timeout=job.run.chunk_timeout,
                         in_flight=job.memory(plan.workers).in_flight)


def writer_buffer(job: Job, plan: Plan) -> int:
    """The writer's row-group buffer within ``run.memory_limit``."""
    return job.memory(plan.workers).writer_buffer


def verify_counts(counts: Counts, files: list[dict], quarantine: bool) -> None:
    """The counts add up, and the part files hold the rows the counts say; else nothing is published."""
    written = sum(f["rows"] for f in files if not f["path"].startswith(REJECTS + "/"))
    rejected = sum(f["rows"] for f in files if f["path"].startswith(REJECTS + "/"))
    if written != counts.rows_written or not counts.balanced() or (quarantine and rejected != counts.rows_rejected):
        raise RuntimeError(f"row counts do not add up ({counts}; the part files hold {written} rows and "
                           f"{rejected} rejects); nothing was published")


def schema_dict(schema: pa.Schema | None) -> list[dict]:
    if schema is None:
        return []
    return [{"name": f.name, "type": type_name(f.type), "nullable": f.nullable} for f in schema]


def transform_hash(job: Job) -> str:
    """What decides the rows a job produces from a given file: its stages and how it reads values.

    Unlike the config hash it leaves out paths and params, so a dated daily job keeps its hash.
    """
    config = dump_config(job)
    data = {"schema": config["input"].get("schema"), "csv": config["input"].get("csv"),
            "format": config["input"].get("format"), "stages": config["stages"],
            "partition_by": config["output"].get("partition_by")}
    # only when present, so that the hash of a job without them stays what it was
    if job.lookups:
        data["lookups"] = [{"name": f["name"], "fingerprint": f["fingerprint"]}
                           for f in lookup_fingerprints(lookups_of(job))]
    if job.finalize is not None:
        data["finalize"] = config["finalize"]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def state_dir(job: Job) -> str:
    return job.run.state_dir or os.path.join(str(job.base_dir), DEFAULT_STATE_DIR)


def run_job(job: Job, *, workers: int | None = None, dry_run: bool = False,
            progress: bool | None = None, full_refresh: bool = False, lock: JobLock | None = None) -> Report:
    """Run a job; on failure the raised exception carries the partial Report as ``.report``.

    The job's lock is the first thing taken, before any input is listed or read: a second run of
    the job is refused at once (exit 75). ``lock``, when given, was taken before the job was
    validated (``output.lock.lock_named_output``, by the CLI); the run goes on under it, and with
    its run id, when it is the lock of this job's output, and releases it in any case. Every run
    that holds the lock is recorded in the state store, and ``run.metrics_file`` is rewritten
    after it, success or failure.
    """
    started = time.monotonic()
    run_id = lock.run_id if lock is not None and not dry_run else new_run_id()
    set_context(job=job.name, run_id=run_id)
    report = Report(job.name, run_id, "failed", job.output.path)
    target = output_target(job.output.path, state_dir(job), job.name)
    store: StateStore | None = None
    try:
        if not dry_run:
            if not is_url(target.path):
                check_output_path(target.path)   # a path under a file is exit 74, before the lock beside it
            own = target.lock(job.name, run_id)
            if lock is None or os.path.abspath(lock.path) != os.path.abspath(own.path):
                if lock is not None:
                    lock.release()
                lock = own.acquire()
            store = StateStore(state_dir(job))
            store.run_started(run_id, job.name, job.config_hash, transform_hash(job), dict(job.params),
                              job.output.path)
            if store.mark_dead(job.name, run_id):
                log.info("marked earlier runs that were killed as 'died' in the state store")
        _run(job, target, report, started, store, workers=workers, dry_run=dry_run, progress=progress,
             full_refresh=full_refresh)
        if store is not None and report.status == "up to date":
            store.run_finished(run_id, "up to date", 0, report.counts.__dict__)
        if store is not None:
            _record_chunks(store, report)
        return report
    except BaseException as exc:
        report.status = "failed"
        report.error = str(exc)
        report.seconds = time.monotonic() - started
        code = getattr(exc, "exit_code", 130 if isinstance(exc, KeyboardInterrupt) else 1)
        report.exit_code = code
        if isinstance(exc, LockedError):
            # another run of the job is going: this attempt is not a run of the job at all
            report.skip_metrics = True
        if store is not None:
            try:
                store.run_finished(run_id, "failed", code, report.counts.__dict__, error=str(exc)[:2000])
            except sqlite3.Error as db_exc:
                log.error("could not record the failed run in the state store: %s", db_exc)
            _record_chunks(store, report)
        try:
            exc.report = report  # type: ignore[attr-defined]
        except AttributeError:
            pass
        raise
    finally:
        try:
            if not dry_run and job.run.metrics_file and not report.skip_metrics:
                write_metrics(job.run.metrics_file, job.name, report, store)
            if store is not None:
                store.close()
        finally:
            if lock is not None:
                lock.release()


def _record_chunks(store: StateStore, report: Report) -> None:
    """Each chunk's worker and times, for ``pipeline report``; a failure here loses only that picture."""
    try:
        store.record_chunks(report.run_id, report.chunk_results)
    except sqlite3.Error as exc:
        log.warning("could not record the chunks' times in the state store: %s", exc)


def _run(job: Job, target: OutputTarget, report: Report, started: float, store: StateStore | None, *,
         workers: int | None, dry_run: bool, progress: bool | None, full_refresh: bool) -> None:
    """The run proper, with the lock held (when not a dry run); fills in ``report``."""
    run_id = report.run_id
    wall_started = time.time()
    thash = transform_hash(job)
    previous = target.manifest()
    mode: str = job.output.mode
    select = None
    pinned = None
    if store is not None and previous is not None:
        for past in previous.get("runs", []):
            if not store.knows_run(past["run_id"]):
                store.record_published(past, job.name, previous.get("transform_hash"))
                log.info("recorded run %s from the output's manifest (its state update was lost)", past["run_id"])
    if full_refresh:
        mode = "overwrite"
    elif job.input.incremental and previous is not None:
        if previous.get("transform_hash") != thash:
            raise ConfigError(
                f"the output at {target.path} was made by another version of this job (its stages or the way "
                f"it reads values changed); run with --full-refresh to rebuild it from all inputs",
                file=str(job.config_path), key="stages")
        seen = store.seen_files(job.name) if store is not None else {}
        select = Selection(seen, job.input.on_changed_file)
        pinned = {c["name"]: parse_type(c["type"]) for c in previous.get("input_schema", [])}
        mode = "append"
    # the files after the first few are planned while the first chunks run (not for a dry run, which
    # runs none, nor for the Dask executor, which takes a list: see build_plan)
    stream = job.run.executor == "local" and not dry_run
    plan = build_plan(job, workers=workers, select=select, pinned=pinned, stream=stream)
    replaced = select.replaced if select is not None else set()
    if not plan.files:
        report.status = "up to date"
        report.note = _nothing_to_do(job, plan, select)
        report.seconds = time.monotonic() - started
        log.info("%s", report.note)
        return
    checked = stage_check(job, plan, sample=dry_run)
    out_schema = checked.schema
    check_finalize(job, out_schema)
    if mode == "append" and previous is not None and job.finalize is None:
        out_schema = append_schema(job, out_schema, previous, target.path)
        old = manifest_schema(previous)
        if is_url(job.output.path) and (replaced or (old is not None and out_schema is not None
                                                     and out_schema.names != old.names)):
            raise ConfigError("an object-store output cannot yet have its earlier parts rewritten (a new column "
                              "under output.on_schema_change: add_columns, or input.on_changed_file: reprocess); "
                              "write to a local or mounted output.path, or rebuild with --full-refresh",
                              file=str(job.config_path), key="output.path")
    if replaced and job.finalize is not None:
        raise ConfigError("input.on_changed_file: reprocess cannot be combined with finalize yet; use fail or "
                          "skip, or rebuild with --full-refresh", file=str(job.config_path),
                          key="input.on_changed_file", line=job.line_of("input.on_changed_file"))
    null_columns = tuple(n for n in (out_schema.names if out_schema is not None else ())
                         if checked.schema is not None and n not in checked.schema.names)
    report.input_files, report.input_bytes = len(plan.files), plan.total_bytes
    report.chunks, report.workers = _chunks_cut(plan), plan.workers
    if dry_run:
        target_schema(job, checked, mode, contract=job.finalize is None)
        report.status = "dry-run"
        report.seconds = time.monotonic() - started
        return

    executor = make_executor(job, plan)
    # a plan still listing its files has its key (and its journal) once the listing ends; a killed
    # run's staging with the same config hash waits for it (see output.resume)
    resume = (job.config_hash, plan.key() if plan.listed else plan.key) if job.run.checkpoint_interval else None
    staging = target.prepare(run_id, mode, parts_on_url=executor.writes_urls, resume=resume)
    resumed = staging.resumed
    counts = report.counts
    todo: Sequence[Chunk] = plan.chunks
    if resumed is not None:
        done = {r.chunk_id for r in resumed.results}
        todo = [c for c in plan.chunks if c.id not in done]
        for r in resumed.results:
            counts.add(r)
            report.keep_bad_samples(r.bad_samples)
        log.info("resuming run %s: %d of %d chunks were finished and are kept", resumed.run_id,
                 len(done), len(plan.chunks))
    if isinstance(todo, ChunkFeed):   # still being cut: the input's size (or its estimate), and no count yet
        bar = Progress(plan.total_bytes if plan.listed else plan.expected_bytes or 0, None, enabled=progress,
                       interval=job.run.progress_interval)
    else:
        bar = Progress(sum(c.nbytes for c in todo), len(todo), enabled=progress, interval=job.run.progress_interval)
    fingerprints = Fingerprints(plan.files, lambda: plan.listed)
    journal_key = resume[1] if resume is not None and resumed is None and callable(resume[1]) else None
    try:
        cap = bad_row_cap(job)
        if cap is not None and counts.rows_rejected > cap:
            raise InputError(f"{counts.rows_rejected} bad rows, more than run.max_bad_rows ({cap})")
        spool = os.path.join(staging.directory, SPOOL)
        os.makedirs(spool, exist_ok=True)
        task = TaskSettings(worker_settings(job, plan, spool),
                            writer_settings(job, run_id, staging.parts, out_schema,
                                            journal=staging.journal if resume is not None else None,
                                            null_columns=null_columns, buffer_bytes=writer_buffer(job, plan)))
        committed = Committed()
        if todo or resumed is None:
            with executor:
                report.workers = executor.workers
                cut = (f"{plural(len(todo.planned()), 'chunk')} so far" if isinstance(todo, ChunkFeed)
                       else plural(len(todo), "chunk"))
                listed = plural(len(plan.files), "file") if plan.listed else f"{len(plan.files):,} files so far"
                log.info("run %s: %s, %s, %s", run_id, listed, cut, plural(executor.workers, "worker"))
                read = task.worker.read
                if read.columns is not None:
                    left = [n for n in read.schema.names if n not in read.columns]
                    log.info("the stages read %d of the %d input columns; not converted: %s", len(read.columns),
                             len(read.schema), ", ".join(left))
                counted = count_results(job, report, bar)

                def on_result(result: ChunkResult) -> None:
                    nonlocal journal_key
                    fingerprints.start()   # the workers are running by now
                    if journal_key is not None and plan.listed:
                        # every file is listed: the journal can name the plan, and checkpoints begin
                        start_journal(staging.directory, run_id, job.config_hash, plan.key(),
                                      parts="" if staging.parts == staging.directory else staging.parts)
                        journal_key = None
                        bar.set_total(plan.total_bytes)
                    counted(result)

                committed = executor.run(todo, task, on_result)
        bar.close()
        report.chunks = len(plan.chunks)
        report.input_files, report.input_bytes = len(plan.files), plan.total_bytes
        shutil.rmtree(spool, ignore_errors=True)
        # files kept from the killed run are this run's output now
        files = [dict(f, run_id=run_id) for f in (resumed.files if resumed else [])] + committed.files
        verify_counts(counts, files, job.run.on_bad_rows == "quarantine")
        check_not_all_rejected(job, report)
        schema = committed.schema or out_schema
        extends = staging.previous if mode == "append" else None
        publish_mode: str = mode
        finalized = None
        if job.finalize is not None and schema is not None:
            # finalize replaces the staged parts: a resume journal naming them must not outlive them, or a
            # kill between here and the publish would leave a staging the next run resumes from
            if os.path.exists(staging.journal):
                os.unlink(staging.journal)
            outcome = finalize_staged(
                job.finalize, files=files, schema=schema, parts_root=staging.parts, output_path=target.path,
                previous=staging.previous, mode=mode, run_id=run_id, output=job.output, threads=plan.workers,
                memory_bytes=job.run.memory_limit, lookups=job_lookup_tables(job),
                spill=os.path.join(staging.directory, FINALIZE_SPILL))
            files, schema, extends = outcome.files, outcome.schema, outcome.previous
            publish_mode, finalized = outcome.publish_mode, outcome.record
            report.finalize = finalized
        elif staging.previous is not None and mode == "append" and not is_url(target.path):
            # the earlier parts into staging: linked, or rewritten where this run's schema changed them
            extends = carry_previous(target.path, staging.directory, staging.previous, schema,
                                     tuple(job.output.partition_by), set(replaced), job.output.compression)
            publish_mode = "carried"
        prints = fingerprints.result()
        manifest = build_manifest(job, plan, run_id, counts, files, schema, extends, thash,
                                  fingerprints=prints, mode=mode, started=wall_started, finalize=finalized)
        target.publish(staging, manifest, publish_mode)
    except BaseException as exc:
        bar.close()
        keep = isinstance(exc, (Interrupted, KeyboardInterrupt)) and has_checkpoint(staging.journal)
        target.discard(staging, keep=keep)
        raise
    if store is not None:
        processed = [Seen(f.path, f.size, f.mtime_ns, prints[f.path], run_id) for f in plan.files]
        try:
            store.run_finished(run_id, "succeeded", 0, counts.__dict__, processed, job=job.name,
                               replace_files=full_refresh)
        except sqlite3.Error as exc:
            raise OutputError(f"the output was published, but the state store could not record it ({exc}); "
                              f"the next run records it from the output's manifest") from exc
    if resumed is not None:
        report.note = (f"resumed: {len(plan.chunks) - len(todo)} of {len(plan.chunks)} chunks came from "
                       f"run {resumed.run_id}")
    report.mark_succeeded(files, started)


def _chunks_cut(plan: Plan) -> int:
    """The plan's chunks, or those cut so far while the plan is still being cut."""
    return len(plan.chunks.planned()) if isinstance(plan.chunks, ChunkFeed) else len(plan.chunks)


def _nothing_to_do(job: Job, plan: Plan, select: Selection | None) -> str:
    """Why a run has no file to read (exit 0, the output left as it is)."""
    parts = []
    if plan.discovered:
        parts.append(f"{plural(len(plan.discovered), 'input file')} "
                     f"{'was' if len(plan.discovered) == 1 else 'were'} processed by earlier runs")
        if select is not None and select.skipped:
            parts[-1] += f" ({len(select.skipped)} changed since, skipped: input.on_changed_file is skip)"
    elif not plan.young:
        parts.append("no input file yet")
    if plan.young:
        parts.append(f"{len(plan.young)} file(s) modified less than input.min_age ago, left for the next run")
    return "nothing new: " + "; ".join(parts)


def build_manifest(job: Job, plan: Plan, run_id: str, counts: Counts, files: list[dict],
                   schema: pa.Schema | None, previous: dict | None, thash: str, *,
                   fingerprints: dict[str, str], mode: str, started: float,
                   finalize: dict | None = None) -> dict:
    """The output's ``_manifest.json``: this run's files, counts and inputs, after the previous runs' (append)."""
    data = [dict(f) for f in files if not f["path"].startswith(REJECTS + "/")]
    rejects = [dict(f) for f in files if f["path"].startswith(REJECTS + "/")]
    now = time.time()
    this_run = {
        "run_id": run_id,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "started_ts": started,
        "finished_ts": now,
        "config_hash": job.config_hash,
        "transform_hash": thash,
        "params": dict(job.params),
        "counts": counts.__dict__.copy(),
        "inputs": [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "fingerprint": fingerprints[f.path]}
                   for f in plan.files],
    }
    if finalize is not None:
        this_run["finalize"] = finalize
    runs = []
    if previous is not None:
        data = previous.get("files", []) + data
        rejects = previous.get("rejects", {}).get("files", []) + rejects
        runs = previous.get("runs", [])
    return {
        "format": "pipeline-manifest/1",
        "pipeline_version": __version__,
        "run_id": run_id,
        "job": job.name,
        "config_hash": job.config_hash,
        "transform_hash": thash,
        "config": dump_config(job),
        "mode": mode,
        "partition_by": list(job.output.partition_by),
        "schema": schema_dict(schema),
        "input_schema": schema_dict(plan.read.schema),
        "lookups": lookup_fingerprints(lookups_of(job)),
        "inputs": this_run["inputs"],
        "files": data,
        "rejects": {"files": rejects, "rows": sum(f["rows"] for f in rejects)},
        "counts": this_run["counts"],
        **({"finalize": finalize} if finalize is not None else {}),
        "chunks": len(plan.chunks),
        "runs": runs + [this_run],
    }
