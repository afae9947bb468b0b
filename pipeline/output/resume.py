"""Resuming a killed run: the journal of finished chunks kept in its staging directory.

Every ``run.checkpoint_interval`` the finished chunks are made durable: the writer process (local
executor) writes out its buffers, closes and fsyncs every part file; a Dask task's files are
complete when its record arrives. Then one line is appended to ``_journal.jsonl`` naming those
files and the chunks whose rows they hold. A run that finds the staging of a dead run of the same
job, with the same config hash, the same plan (same input files, sizes and mtimes, cut the same
way: ``Plan.key``) and the same place for its parts, keeps the files the journal names, deletes
the rest, and runs only the chunks the journal does not list. Any other stale staging is discarded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.output.publish import OutputPaths
from pipeline.output.records import ChunkResult

JOURNAL = "_journal.jsonl"
PlanKey = str | Callable[[], str]   # Plan.key(), or Plan.key itself while the plan is still listing files

log = logging.getLogger("pipeline")


@dataclass
class Resumed:
    staging: str
    run_id: str
    files: list[dict] = field(default_factory=list)
    results: list[ChunkResult] = field(default_factory=list)


def start_journal(staging: str, run_id: str, config_hash: str, plan_key: str, parts: str = "") -> str:
    """Begin the journal of a run; ``parts`` says where its part files go (a URL, or "" for staging).

    The journal appears whole (written aside, then renamed): the writer appends checkpoints only to
    a journal that exists, so a plan still listing its files postpones them until it has its key.
    """
    path = os.path.join(staging, JOURNAL)
    header = {"kind": "header", "run_id": run_id, "config_hash": config_hash, "plan": plan_key,
              "parts": parts}
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".tmp", path)
    return path


def append_checkpoint(journal: str, files: list[dict], results: list[ChunkResult]) -> None:
    """One durable journal line: these files (complete, fsynced) hold these chunks' rows."""
    line = {"kind": "checkpoint", "files": files, "chunks": [r.to_dict() for r in results]}
    with open(journal, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class Checkpointer:
    """Journal committed chunks whose files are complete, one line every ``seconds`` at most."""

    def __init__(self, journal: str | None, seconds: float):
        self.journal = journal
        self.seconds = seconds
        self.files: list[dict] = []
        self.results: list[ChunkResult] = []
        self.last = time.monotonic()

    def add(self, files: list[dict], results: list[ChunkResult]) -> None:
        """Files and the chunks whose rows they hold: journaled together, in one line."""
        if self.journal is None:
            return
        self.files.extend(files)
        self.results.extend(results)
        if time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.journal is not None and self.results:
            append_checkpoint(self.journal, self.files, self.results)
        self.files, self.results = [], []
        self.last = time.monotonic()

    def close(self) -> None:
        """At the end of a run nothing more is journaled: the run publishes now."""
        self.files, self.results = [], []


def has_checkpoint(journal: str) -> bool:
    try:
        with open(journal, encoding="utf-8") as fh:
            return sum(1 for _ in fh) > 1
    except FileNotFoundError:
        return False


def _read(path: str) -> tuple[dict | None, list[dict]]:
    header, lines = None, []
    try:
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                try:
                    item = json.loads(raw)
                except ValueError:
                    break  # a line cut short by the kill: everything before it is whole
                if item.get("kind") == "header":
                    header = item
                elif item.get("kind") == "checkpoint":
                    lines.append(item)
    except FileNotFoundError:
        return None, []
    return header, lines


def find_resumable(paths: OutputPaths, config_hash: str, plan_key: PlanKey,
                   parts: str = "") -> Resumed | None:
    """The newest dead run's staging that this run can continue, cleaned down to its journal.

    ``plan_key`` may be a function (a plan still listing its files): it is called only for a staging
    of the same config whose journal has checkpoints.

    ``parts`` is where this run's part files go ("" for staging itself, else the output's URL);
    a journal that put them elsewhere is not resumed. Parts under a URL are not checked here: the
    object-store target keeps those the manifest lists and removes the rest when it publishes.
    """
    parent = paths.parent
    if not os.path.isdir(parent):
        return None
    prefix = f".{paths.name}.staging-"
    candidates = sorted((e for e in os.listdir(parent) if e.startswith(prefix)), reverse=True)
    for entry in candidates:
        staging = os.path.join(parent, entry)
        header, checkpoints = _read(os.path.join(staging, JOURNAL))
        if header is None or header.get("config_hash") != config_hash or header.get("parts", "") != parts \
                or not checkpoints:
            continue
        if callable(plan_key):
            plan_key = plan_key()
        if header.get("plan") != plan_key:
            continue
        files = [f for c in checkpoints for f in c["files"]]
        results = [ChunkResult.from_dict(r) for c in checkpoints for r in c["chunks"]]
        keep = {JOURNAL} | ({os.path.normpath(f["path"]) for f in files} if not parts else set())
        for root, dirs, names in os.walk(staging, topdown=False):
            for name in names:
                rel = os.path.normpath(os.path.relpath(os.path.join(root, name), staging))
                if rel not in keep:
                    os.unlink(os.path.join(root, name))
            for name in dirs:
                full = os.path.join(root, name)
                if not os.listdir(full):
                    os.rmdir(full)
        missing = [] if parts else [f["path"] for f in files if not os.path.exists(os.path.join(staging, f["path"]))]
        if missing:
            log.warning("cannot resume from %s: %d journaled files are missing", entry, len(missing))
            shutil.rmtree(staging, ignore_errors=True)
            continue
        return Resumed(staging, header["run_id"], files, results)
    return None
