"""The output-target seam: where a run's part files go, and how they become the output.

``run.run_job`` sequences a run once; a target only does the output's side of it:

- ``lock``: one run of the job at a time (the first thing a run takes);
- ``manifest``: the published output's manifest, read before planning (incremental runs);
- ``prepare``: undo what dead runs left, refuse outputs it must not touch, and give the run its
  staging (or the staging of a killed run it resumes);
- ``publish``: make the staged parts, with the manifest, the output, all or nothing;
- ``discard``: remove what a failed run staged (or keep it for the next run to resume).

Two targets implement it: ``DirectoryTarget`` (a local or shared directory, published by an
atomic directory exchange) and ``ObjectStoreTarget`` (a prefix on S3, GCS, Azure, ..., published
by replacing ``_manifest.json``).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import OutputError, PipelineError
from pipeline.input.storage import filesystem
from pipeline.output.lock import JobLock, state_lock_path
from pipeline.output.objectstore import (
    check_remote_target,
    list_remote,
    publish_remote,
    read_remote_manifest,
    remove_unlisted,
)
from pipeline.output.publish import (
    MANIFEST,
    OutputPaths,
    check_target,
    link_previous,
    publish,
    read_manifest,
    recover,
)
from pipeline.output.resume import JOURNAL, PlanKey, Resumed, find_resumable, start_journal

log = logging.getLogger("pipeline")


@dataclass
class Staging:
    """Where one run puts what it writes before publishing."""

    run_id: str                  # this run's id
    directory: str               # a local directory of the run: the journal, the spool
    parts: str                   # where part files go: ``directory``, or the output's URL
    journal: str                 # the resume journal in ``directory``
    previous: dict | None        # the output's manifest when the run started (None: no output yet)
    resumed: Resumed | None = None


class OutputTarget(Protocol):
    path: str

    def lock(self, job_name: str, run_id: str) -> JobLock: ...

    def manifest(self) -> dict | None: ...

    def prepare(self, run_id: str, mode: str, *, parts_on_url: bool,
                resume: tuple[str, PlanKey] | None) -> Staging: ...

    def publish(self, staging: Staging, manifest: dict, mode: str) -> None: ...

    def discard(self, staging: Staging, *, keep: bool) -> None: ...


def _keep_or_remove(staging: Staging, keep: bool) -> None:
    if keep:
        log.info("kept the finished chunks in %s; the next run resumes from them", staging.directory)
    else:
        shutil.rmtree(staging.directory, ignore_errors=True)


class DirectoryTarget:
    """``output.path`` a directory: staging beside it, published by an atomic directory exchange."""

    def __init__(self, path: str):
        self.path = path
        self.paths = OutputPaths(path)
        self._read: tuple[tuple[int, int, int], dict | None] | None = None

    def lock(self, job_name: str, run_id: str) -> JobLock:
        return JobLock(self.paths.lock, job_name, run_id)

    def manifest(self) -> dict | None:
        try:
            return self._manifest(self.path) if os.path.isdir(self.path) else None
        except PipelineError:
            return None

    def _manifest(self, path: str) -> dict | None:
        """The output's manifest, parsed once while its file stays the same (read before the run
        plans and again once dead runs are undone; a large output's is tens of MB)."""
        try:
            st = os.stat(os.path.join(path, MANIFEST))
        except OSError:
            return read_manifest(path)   # None when missing, else the error naming it
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._read is None or self._read[0] != key:
            self._read = (key, read_manifest(path))
        return self._read[1]

    def prepare(self, run_id: str, mode: str, *, parts_on_url: bool,
                resume: tuple[str, PlanKey] | None) -> Staging:
        resumed = _recover(self.paths, resume)
        previous = check_target(self.paths, mode, self._manifest)
        directory, journal = _open_staging(self.paths, run_id, resume, resumed)
        return Staging(run_id, directory, directory, journal, previous, resumed)

    def publish(self, staging: Staging, manifest: dict, mode: str) -> None:
        """``mode`` append: the earlier output's parts are linked in; "carried": they are in staging already."""
        listed = {f["path"] for f in manifest["files"]} | {f["path"] for f in manifest["rejects"]["files"]}
        if os.path.exists(staging.journal):
            os.unlink(staging.journal)
        _sweep(staging.directory, listed)
        if staging.previous is not None and mode == "append":
            link_previous(self.path, staging.directory)
        publish(self.paths, staging.directory, manifest, staging.run_id)

    def discard(self, staging: Staging, *, keep: bool) -> None:
        _keep_or_remove(staging, keep)


def _recover(paths: OutputPaths, resume: tuple[str, PlanKey] | None, parts: str = "") -> Resumed | None:
    """Undo what dead runs left beside ``paths``, keeping the staging of one this run can resume."""
    os.makedirs(paths.parent, exist_ok=True)
    resumed = find_resumable(paths, *resume, parts=parts) if resume is not None else None
    for what in recover(paths, keep=resumed.staging if resumed else None):
        log.info("recovered: %s", what)
    return resumed


def _open_staging(paths: OutputPaths, run_id: str, resume: tuple[str, PlanKey] | None,
                  resumed: Resumed | None, parts: str = "") -> tuple[str, str]:
    """The run's staging directory and journal: the resumed run's, or new ones."""
    if resumed is not None:
        return resumed.staging, os.path.join(resumed.staging, JOURNAL)
    directory = paths.staging(run_id)
    os.makedirs(directory, mode=0o755)
    if resume is None or callable(resume[1]):   # no journal; or one begun once the plan has its key
        return directory, os.path.join(directory, JOURNAL)
    return directory, start_journal(directory, run_id, resume[0], resume[1], parts=parts)


class ObjectStoreTarget:
    """``output.path`` a URL prefix: parts under it with names carrying the run id, then the manifest.

    An object store has no lock and no rename: the lock and the run's local directory (its journal,
    and the local executor's parts before they are uploaded) are kept in the state directory, so
    runs of this job on this machine take turns.
    """

    def __init__(self, url: str, state_dir: str, job_name: str):
        self.path = url.rstrip("/")
        self.local = OutputPaths(os.path.join(state_dir, f"{job_name}.output"))
        self.lock_path = state_lock_path(state_dir, job_name)

    def lock(self, job_name: str, run_id: str) -> JobLock:
        return JobLock(self.lock_path, job_name, run_id)

    def manifest(self) -> dict | None:
        try:
            return read_remote_manifest(self.path)
        except PipelineError:
            return None

    def prepare(self, run_id: str, mode: str, *, parts_on_url: bool,
                resume: tuple[str, PlanKey] | None) -> Staging:
        parts = self.path if parts_on_url else ""
        resumed = _recover(self.local, resume, parts)
        previous = check_remote_target(self.path, mode)
        directory, journal = _open_staging(self.local, run_id, resume, resumed, parts)
        return Staging(run_id, directory, parts or directory, journal, previous, resumed)

    def publish(self, staging: Staging, manifest: dict, mode: str) -> None:
        new = [f for f in manifest["files"] + manifest["rejects"]["files"] if f["run_id"] == staging.run_id]
        if staging.parts == staging.directory:
            self._upload(staging.directory, [f["path"] for f in new])
        listed = {f["path"] for f in manifest["files"]} | {f["path"] for f in manifest["rejects"]["files"]}
        removed = publish_remote(self.path, manifest, staging.run_id, listed)
        if removed:
            log.info("removed %d part files no longer listed in the manifest", len(removed))
        shutil.rmtree(staging.directory, ignore_errors=True)

    def _upload(self, directory: str, rels: list[str]) -> None:
        fs, root = filesystem(self.path)
        sources = [os.path.join(directory, rel) for rel in rels]
        targets = [root.rstrip("/") + "/" + rel.replace(os.sep, "/") for rel in rels]
        try:
            if sources:
                fs.put(sources, targets)
        except OSError as exc:
            raise OutputError(f"cannot upload the output to {self.path}: {exc}") from exc

    def discard(self, staging: Staging, *, keep: bool) -> None:
        if not keep and staging.parts != staging.directory:
            self._remove_run_parts(staging.run_id)
        _keep_or_remove(staging, keep)

    def _remove_run_parts(self, run_id: str) -> None:
        """After a failed run: remove the parts this run put under the prefix (nothing lists them).

        Unless the failure came after this run's manifest was put in place: then the parts are the output.
        """
        try:
            current = read_remote_manifest(self.path)
            if current is not None and current.get("run_id") == run_id:
                log.warning("this run's manifest is in place at %s; its parts are kept", self.path)
                return
            everything = list_remote(self.path)
            mine = {rel for rel in everything if rel.endswith(f"-{run_id}.parquet")}
            remove_unlisted(self.path, set(everything) - mine)
        except Exception as exc:  # noqa: BLE001 - the run has failed already; its parts are only clutter
            log.warning("could not remove this run's parts under %s: %s", self.path, exc)


def _sweep(staging: str, keep: set[str]) -> None:
    """Remove every file in staging that no record lists: leftovers of attempts that died."""
    for directory, _, names in os.walk(staging):
        for name in names:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, staging).replace(os.sep, "/")
            if rel not in keep:
                log.info("removing %s: left by a task attempt that did not finish", rel)
                os.unlink(full)


def output_target(path: str, state_dir: str, job_name: str) -> OutputTarget:
    """The target for ``output.path``: a URL is an object-store prefix, anything else a directory."""
    from pipeline.input.storage import is_url

    if is_url(path):
        return ObjectStoreTarget(path, state_dir, job_name)
    return DirectoryTarget(path)
