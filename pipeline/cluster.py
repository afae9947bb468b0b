"""The run's driver when the chunks run on Dask, or when the output is on an object store.

``run.executor: dask``: tasks write their part files straight into the staging area (see
``dask_executor``); the driver takes each chunk's record once, checks every count, and publishes.

``output.path`` a URL (``s3://bucket/sales``) with ``run.executor: local``: the local executor's
writer process writes into a private local directory, and the driver uploads its parts under the
output prefix before publishing (its names already carry the run id).

Publishing:
- a local (or shared) ``output.path``: the parts are in ``.<name>.staging-<run id>/`` beside it and
  ``publish.publish`` swaps that directory in atomically, as for the local executor;
- an object store: there is no rename. The parts go under the final prefix with names that carry
  the run id (nothing lists them yet), then ``_manifest.json`` replaces the old one in one upload,
  then ``_SUCCESS`` (holding the run id) is written; only then are the previous run's parts
  removed. Readers go by the manifest: the files it lists are complete and are all the output.
  A failed run removes its own parts; a run that dies leaves parts no manifest lists, which the
  next successful run removes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Job, plural
from pipeline.dtypes import type_name, widens
from pipeline.errors import InputError, OutputError
from pipeline.input.plan import Chunk, Plan
from pipeline.input.storage import (
    check_remote_target,
    filesystem,
    is_url,
    list_remote,
    publish_remote,
    read_remote_manifest,
    remove_unlisted,
)
from pipeline.output.carry import carry_previous
from pipeline.output.lock import JobLock
from pipeline.output.publish import REJECTS, SPOOL, OutputPaths, check_target, link_previous, publish, recover
from pipeline.progress import Progress

log = logging.getLogger("pipeline")


def run_distributed(job: Job, plan: Plan, report, started: float, store, thash: str, *,
                    out_schema: pa.Schema | None, mode: str, progress: bool | None,
                    full_refresh: bool, null_columns: tuple[str, ...] = (), replaced: frozenset[str] = frozenset()):
    """Run the planned chunks and publish; fills and returns ``report`` (see ``run._run``)."""
    from pipeline.input.lookups import job_lookup_tables
    from pipeline.output.finalize import finalize_staged
    from pipeline.run import FINALIZE_SPILL, build_manifest, check_not_all_rejected, count_results, state_dir
    from pipeline.state.store import Seen, fingerprint

    run_id = report.run_id
    counts = report.counts
    remote = is_url(job.output.path)
    url = job.output.path.rstrip("/") if remote else None
    paths = None if remote else OutputPaths(job.output.path)
    if remote:
        # an object store has no lock of its own: runs of this job on this machine take turns
        lock_path = os.path.join(state_dir(job), f"{job.name}.output.lock")
    else:
        os.makedirs(paths.parent, exist_ok=True)
        lock_path = paths.lock
    with JobLock(lock_path, job.name, run_id):
        if remote:
            previous = check_remote_target(url, mode)
            staging = None
        else:
            for what in recover(paths):
                log.info("recovered: %s", what)
            previous = check_target(paths, mode)
            staging = paths.staging(run_id)
            os.makedirs(staging, mode=0o755)
        log.info("run %s: %s, %s, %s", run_id, plural(len(plan.files), "file"), plural(len(plan.chunks), "chunk"),
                 "the Dask executor" if job.run.executor == "dask" else plural(plan.workers, "worker"))
        bar = Progress(sum(c.nbytes for c in plan.chunks), len(plan.chunks), enabled=progress,
                       interval=job.run.progress_interval)
        on_result = count_results(job, report, bar)

        try:
            if job.run.executor == "dask":
                files, schema = _run_dask(job, plan, run_id, staging or url, out_schema, on_result, report,
                                          null_columns)
            else:
                files, schema = _run_local_then_upload(job, plan, run_id, url, out_schema, on_result, null_columns)
            bar.close()
            _check_counts(counts, files, job.run.on_bad_rows == "quarantine")
            check_not_all_rejected(job, report)
            keep_previous = previous if mode == "append" else None
            publish_mode, finalized = mode, None
            if job.finalize is not None:
                if not remote:
                    _sweep(staging, {f["path"] for f in files})
                outcome = finalize_staged(
                    job.finalize, files=files, schema=schema, parts_root=staging or url,
                    output_path=url or paths.path, previous=previous, mode=mode, run_id=run_id,
                    output=job.output, threads=plan.workers, memory_bytes=job.run.memory_limit,
                    lookups=job_lookup_tables(job),
                    spill=os.path.join(staging, FINALIZE_SPILL) if staging else None)
                files, schema, keep_previous = outcome.files, outcome.schema, outcome.previous
                publish_mode, finalized = outcome.publish_mode, outcome.record
                report.finalize = finalized
            if not any(not f["path"].startswith(REJECTS + "/") for f in files):
                files = files + _empty_part(job, run_id, staging or url, schema)
            if not remote:
                linked = previous.get("rejects", {}).get("files", []) if publish_mode != mode and previous else []
                _sweep(staging, {f["path"] for f in files} | {f["path"] for f in linked})
                if previous is not None and publish_mode == "append":
                    if job.finalize is not None:
                        link_previous(paths.path, staging)
                    else:
                        keep_previous = carry_previous(paths.path, staging, previous, schema,
                                                       tuple(job.output.partition_by), set(replaced),
                                                       job.output.compression)
                manifest = build_manifest(job, plan, run_id, counts, files, schema, keep_previous, thash,
                                          finalize=finalized)
                publish(paths, staging, manifest, run_id)
            else:
                manifest = build_manifest(job, plan, run_id, counts, files, schema, keep_previous, thash,
                                          finalize=finalized)
                listed = {f["path"] for f in manifest["files"]} | {f["path"] for f in manifest["rejects"]["files"]}
                removed = publish_remote(url, manifest, run_id, listed)
                if removed:
                    log.info("removed %d part files no longer listed in the manifest", len(removed))
        except BaseException:
            bar.close()
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            else:
                _remove_run_parts(url, run_id)
            raise
        if store is not None:
            seen = [Seen(f.path, f.size, f.mtime_ns, fingerprint(f.path, f.size), run_id) for f in plan.files]
            store.run_finished(run_id, "succeeded", 0, counts.__dict__, seen, job=job.name,
                               replace_files=full_refresh)
    return report.succeeded(files, started)



def _check_counts(counts, files: list[dict], quarantine: bool) -> None:
    written = sum(f["rows"] for f in files if not f["path"].startswith(REJECTS + "/"))
    rejected = sum(f["rows"] for f in files if f["path"].startswith(REJECTS + "/"))
    if written != counts.rows_written or not counts.balanced() or (quarantine and rejected != counts.rows_rejected):
        raise RuntimeError(f"row counts do not add up ({counts}; the part files hold {written} rows and "
                           f"{rejected} rejects); nothing was published")


# ------------------------------------------------------------------------------------ Dask


def _run_dask(job: Job, plan: Plan, run_id: str, root: str, out_schema, on_result, report, null_columns=()):
    from pipeline.execution.dask import DaskExecutor, PartSpec, TaskSpec, quarantine_write, scheduler_address
    from pipeline.run import staged_partition_by, worker_spec

    parts = PartSpec(run_id, root, out_schema, staged_partition_by(job), job.output.compression,
                     job.output.compression_level, job.output.row_group_rows, job.output.file_bytes,
                     tuple(null_columns))
    spec = TaskSpec(worker_spec(job, plan), parts)

    def on_poison(chunk: Chunk, why: str, attempts: int):
        if job.run.on_bad_rows != "quarantine":
            return None
        return quarantine_write(chunk, spec, f"the task {why}")

    address = scheduler_address(job.run.dask.address)
    with DaskExecutor(address, plan.workers, retries=job.run.retries,
                      connect_timeout=job.run.dask.connect_timeout, on_result=on_result,
                      on_poison=on_poison) as executor:
        if executor.dashboard:
            print(f"pipeline: Dask dashboard {executor.dashboard}", file=sys.stderr, flush=True)
        if executor.cluster_workers:
            report.workers = executor.cluster_workers
        taken = executor.run(plan.chunks, spec)
    files = []
    for chunk in plan.chunks:  # in plan order: the manifest lists parts in input order
        files.extend(taken[chunk.id].files)
    seen = set()
    for f in files:
        if f["path"] in seen:
            raise RuntimeError(f"two chunks wrote {f['path']}; nothing was published")
        seen.add(f["path"])
    schema = _unify_parts(root, [taken[c.id] for c in plan.chunks], out_schema, tuple(job.output.partition_by))
    return files, schema


def _unify_parts(root: str, writes, out_schema: pa.Schema | None, partition_by: tuple[str, ...]) -> pa.Schema | None:
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
            raise InputError(f"{w.result.source}: the stages produced columns {w.schema.names}, other chunks "
                             f"{first.names}; every chunk must give the same columns", file=w.result.source)
    fields = []
    for i, fld in enumerate(first):
        found = {}
        for w in writes:
            if w.schema is not None and not pa.types.is_null(w.schema.field(i).type):
                found.setdefault(w.schema.field(i).type, w.result.source)
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
            return fh.tell()
    path = os.path.join(root, rel)
    table = pq.read_table(path).cast(schema)
    tmp = path + ".cast.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return os.path.getsize(path)


def _empty_part(job: Job, run_id: str, root: str, schema: pa.Schema | None) -> list[dict]:
    """An output with no rows is still a readable dataset with its schema (as with the local executor)."""
    if schema is None or job.output.partition_by:
        return []
    from pipeline.execution.dask import PartSpec, _Sink

    spec = PartSpec(run_id, root, schema, (), job.output.compression, job.output.compression_level)
    fs = filesystem(root)[0] if is_url(root) else None
    info = _Sink(spec, fs, f"part-empty-0-{run_id}.parquet", schema).close()
    info["run_id"] = run_id
    return [info]


def _sweep(staging: str, keep: set[str]) -> None:
    """Remove every file in staging that no taken record lists: leftovers of attempts that died."""
    for directory, _, names in os.walk(staging):
        for name in names:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, staging).replace(os.sep, "/")
            if rel not in keep:
                log.info("removing %s: left by a task attempt that did not finish", rel)
                os.unlink(full)


def _remove_run_parts(url: str, run_id: str) -> None:
    """After a failed run: remove the parts this run put under the prefix (nothing lists them).

    Unless the failure came after this run's manifest was put in place: then the parts are the output.
    """
    try:
        current = read_remote_manifest(url)
        if current is not None and current.get("run_id") == run_id:
            log.warning("this run's manifest is in place at %s; its parts are kept", url)
            return
        mine = {rel for rel in list_remote(url) if rel.endswith(f"-{run_id}.parquet")}
        keep = set(list_remote(url)) - mine
        remove_unlisted(url, keep)
    except Exception as exc:  # noqa: BLE001 - the run has failed already; its parts are only clutter
        log.warning("could not remove this run's parts under %s: %s", url, exc)


# ------------------------------------------------------------------------------------ local + upload


def _run_local_then_upload(job: Job, plan: Plan, run_id: str, url: str, out_schema, on_result, null_columns=()):
    """The local executor into a private directory, then its parts uploaded under the prefix."""
    from pipeline.output.write import WriterSpec
    from pipeline.run import local_executor, staged_partition_by, worker_spec, writer_buffer

    local = tempfile.mkdtemp(prefix=f"pipeline-{job.name}-{run_id}-")
    try:
        spool = os.path.join(local, SPOOL)
        os.makedirs(spool)
        wspec = worker_spec(job, plan, spool)
        executor = local_executor(job, plan, wspec, on_result)
        spec = WriterSpec(job.name, run_id, local, out_schema, staged_partition_by(job),
                          job.output.compression, job.output.compression_level,
                          job.output.row_group_rows, job.output.file_bytes, null_columns=tuple(null_columns),
                          buffer_bytes=writer_buffer(job, plan))
        execution = executor.run(plan.chunks, wspec, spec)
        shutil.rmtree(spool)
        files = [dict(f) for f in execution.writer["files"]]
        written = sum(execution.acked_rows.values())
        if written != sum(f["rows"] for f in files if not f["path"].startswith(REJECTS + "/")):
            raise RuntimeError("the writer's files do not hold the rows it acknowledged; nothing was published")
        fs, root = filesystem(url)
        sources = [os.path.join(local, f["path"]) for f in files]
        targets = [root.rstrip("/") + "/" + f["path"].replace(os.sep, "/") for f in files]
        try:
            if sources:
                fs.put(sources, targets)
        except OSError as exc:
            raise OutputError(f"cannot upload the output to {url}: {exc}") from exc
        for f in files:
            f["path"] = f["path"].replace(os.sep, "/")
        return files, execution.writer.get("schema") or out_schema
    finally:
        shutil.rmtree(local, ignore_errors=True)
