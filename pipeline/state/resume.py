"""Resuming a killed run: the journal of finished chunks kept in its staging directory.

The writer checkpoints every ``run.checkpoint_interval``: it writes out its buffers, closes and
fsyncs every part file, then appends one line to ``_journal.jsonl`` naming those files and the
chunks whose rows they hold. A run that finds the staging of a dead run of the same job, with the
same config hash and the same chunks (same input files, sizes and mtimes), keeps the files the
journal names, deletes the rest, and runs only the chunks the journal does not list. Any other
stale staging is discarded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field

from pipeline.execution.worker import ChunkResult
from pipeline.input.read import BadRow
from pipeline.output.publish import OutputPaths

JOURNAL = "_journal.jsonl"

log = logging.getLogger("pipeline")


@dataclass
class Resumed:
    staging: str
    run_id: str
    files: list[dict] = field(default_factory=list)
    results: list[ChunkResult] = field(default_factory=list)


def start_journal(staging: str, run_id: str, config_hash: str, chunk_ids: list[str]) -> str:
    path = os.path.join(staging, JOURNAL)
    header = {"kind": "header", "run_id": run_id, "config_hash": config_hash, "chunks": chunk_ids}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


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


def _result(data: dict) -> ChunkResult:
    data = dict(data)
    data["bad_samples"] = [BadRow(**b) for b in data.get("bad_samples", [])]
    return ChunkResult(**data)


def find_resumable(paths: OutputPaths, config_hash: str, chunk_ids: list[str]) -> Resumed | None:
    """The newest dead run's staging that this run can continue, cleaned down to its journal."""
    parent = paths.parent
    if not os.path.isdir(parent):
        return None
    prefix = f".{paths.name}.staging-"
    candidates = sorted((e for e in os.listdir(parent) if e.startswith(prefix)), reverse=True)
    for entry in candidates:
        staging = os.path.join(parent, entry)
        header, checkpoints = _read(os.path.join(staging, JOURNAL))
        if header is None or header.get("config_hash") != config_hash or header.get("chunks") != chunk_ids:
            continue
        if not checkpoints:
            continue
        files = [f for c in checkpoints for f in c["files"]]
        results = [_result(r) for c in checkpoints for r in c["chunks"]]
        keep = {os.path.normpath(f["path"]) for f in files} | {JOURNAL}
        for root, dirs, names in os.walk(staging, topdown=False):
            for name in names:
                rel = os.path.normpath(os.path.relpath(os.path.join(root, name), staging))
                if rel not in keep:
                    os.unlink(os.path.join(root, name))
            for name in dirs:
                full = os.path.join(root, name)
                if not os.listdir(full):
                    os.rmdir(full)
        missing = [f["path"] for f in files if not os.path.exists(os.path.join(staging, f["path"]))]
        if missing:
            log.warning("cannot resume from %s: %d journaled files are missing", entry, len(missing))
            shutil.rmtree(staging, ignore_errors=True)
            continue
        return Resumed(staging, header["run_id"], files, results)
    return None
