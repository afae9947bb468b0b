"""Staging and the atomic publish of an output directory.

A run writes into ``<parent>/.<name>.staging-<run_id>/``, next to ``output.path`` (so on the same
filesystem). Publishing puts ``_manifest.json`` and then ``_SUCCESS`` into staging and swaps the
staging directory with the output in one ``renameat2(RENAME_EXCHANGE)``: readers see the old
complete output or the new complete one, never a mixture. Where the filesystem cannot exchange, the
old output is first renamed aside, and a later run puts it back if the swap was interrupted.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import OutputError
from pipeline.output.lock import lock_path

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
REJECTS = "_rejects"
SPOOL = "_spool"            # inside staging: Arrow files on their way from workers to the writer
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class OutputPaths:
    path: str

    @property
    def parent(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    @property
    def name(self) -> str:
        return os.path.basename(os.path.abspath(self.path))

    def staging(self, run_id: str) -> str:
        return os.path.join(self.parent, f".{self.name}.staging-{run_id}")

    def aside(self, run_id: str) -> str:
        return os.path.join(self.parent, f".{self.name}.old-{run_id}")

    @property
    def lock(self) -> str:
        return lock_path(self.path)


def holds_data(path: str) -> bool:
    return os.path.isdir(path) and any(True for _ in os.scandir(path))


def read_manifest(path: str) -> dict | None:
    where = os.path.join(path, MANIFEST)
    try:
        with open(where, encoding="utf-8") as fh:
            return checked_manifest(where, json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{where}: unreadable manifest: {exc}") from exc


def checked_manifest(where: str, value) -> dict:
    """``value`` when it has the shape of this program's manifest; else an OutputError naming the file
    (a manifest edited by hand or written by something else must not be taken for one)."""
    shape = (isinstance(value, dict) and str(value.get("format", "")).startswith("pipeline-manifest/")
             and isinstance(value.get("files"), list) and isinstance(value.get("counts"), dict)
             and isinstance(value.get("schema"), list)
             and all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("rows"), int)
                     for f in value["files"]))
    if not shape:
        raise OutputError(f"{where}: not a manifest of this program (expected a JSON object with format "
                          f"pipeline-manifest/1, files, counts and schema); it was changed by hand or written by "
                          f"another tool: move the output aside, or restore the manifest")
    return value


def check_target(paths: OutputPaths, mode: str,
                 read: Callable[[str], dict | None] = read_manifest) -> dict | None:
    """Refuse outputs we must not touch; return the existing manifest (by ``read``), if any."""
    path = paths.path
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"output.path {path} exists and is not a directory")
    if not holds_data(path):
        return None
    return refuse_existing(path, read(path), mode)


def refuse_existing(path: str, manifest: dict | None, mode: str) -> dict | None:
    """An output that already holds data: its manifest; OutputError for mode ``error`` and for files
    this program did not write (no manifest)."""
    if mode == "error":
        raise OutputError(f"output.path {path} already holds data and output.mode is 'error'; "
                          f"use mode overwrite or append, or remove it")
    if manifest is None:
        raise OutputError(f"output.path {path} holds files that this program did not write (no {MANIFEST}); "
                          f"refusing to replace them: remove them or choose another path")
    return manifest


def recover(paths: OutputPaths, keep: str | None = None) -> list[str]:
    """Undo what dead runs left behind (call with the job's lock held). Returns what was done.

    ``keep`` is a staging directory this run resumes from; every other staging is removed.
    """
    done: list[str] = []
    parent = paths.parent
    if not os.path.isdir(parent):
        return done
    prefix_staging = f".{paths.name}.staging-"
    prefix_aside = f".{paths.name}.old-"
    for entry in sorted(os.listdir(parent)):
        full = os.path.join(parent, entry)
        if entry.startswith(prefix_aside):
            if not os.path.exists(paths.path):
                os.rename(full, paths.path)
                done.append(f"restored the previous output from {entry}")
            else:
                shutil.rmtree(full, ignore_errors=True)
                done.append(f"removed {entry}")
        elif entry.startswith(prefix_staging) and full != keep:
            shutil.rmtree(full, ignore_errors=True)
            done.append(f"removed stale staging {entry}")
    return done


def link_previous(previous: str, staging: str, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """For append: hard-link the existing parts (and rejects) into staging; return their paths.

    ``skip``: paths (relative to the output) that are not carried over as they are.
    """
    linked = []
    for root, _, files in os.walk(previous):
        for name in files:
            if name in (MANIFEST, SUCCESS):
                continue
            src = os.path.join(root, name)
            rel = os.path.relpath(src, previous)
            if rel in skip or rel.replace(os.sep, "/") in skip:
                continue
            dst = os.path.join(staging, rel)
            if os.path.exists(dst):
                raise OutputError(f"append: {rel} exists in both the old output and this run's output")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            linked.append(rel)
    return linked


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        # one dumps, not dump: dump with indent runs the encoder in Python, several times slower
        fh.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _exchange(a: str, b: str) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OutputError(f"cannot publish {b}: {os.strerror(err)}")


def fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory: so that the names in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(paths: OutputPaths, staging: str, manifest: dict, run_id: str) -> None:
    """Write the manifest and _SUCCESS into staging, then make staging the output atomically."""
    write_json(os.path.join(staging, MANIFEST), manifest)
    with open(os.path.join(staging, SUCCESS), "w") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    fsync_path(staging)
    for root, _dirs, files in os.walk(staging):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    target = paths.path
    if os.path.isdir(target):
        if _exchange(staging, target):
            shutil.rmtree(staging)
        else:
            aside = paths.aside(run_id)
            os.rename(target, aside)
            os.rename(staging, target)
            shutil.rmtree(aside)
    else:
        os.makedirs(paths.parent, exist_ok=True)
        os.rename(staging, target)
    fsync_path(paths.parent)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + os.urandom(3).hex()
