"""One run of a job at a time: an flock on a file next to the output.

The kernel drops an flock when its holder dies, however it dies, so a crashed run never blocks
the next one. The lock is taken in the parent process only; workers and the writer are started
with the lock file closed in them (it is opened with O_CLOEXEC and never inherited by exec).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from typing import TYPE_CHECKING

from pipeline.config.document import JOB_NAME_PATTERN
from pipeline.errors import LockedError, OutputError

if TYPE_CHECKING:
    from pipeline.config.document import Document


class JobLock:
    def __init__(self, path: str, job_name: str, run_id: str):
        self.path = path
        self.job_name = job_name
        self.run_id = run_id
        self.fd: int | None = None

    def acquire(self) -> JobLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:  # a symbolic link planted at the lock path is not followed
            raise OutputError(f"cannot open the lock file {self.path}: {exc.strerror}"
                              + (" (it is a symbolic link)" if os.path.islink(self.path) else ""),
                              path=self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            os.close(fd)
            raise LockedError(holder_message(info, self.job_name), lock=self.path,
                              holder_pid=info.get("pid"), holder_run_id=info.get("run_id")) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "run_id": self.run_id, "job": self.job_name,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        self.fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            _HELD.discard(self.fd)
            self.fd = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: set[int] = set()


def state_lock_path(state_dir: str, job_name: str) -> str:
    """The lock file of an object-store output: ``<job>.output.lock`` in the job's state directory."""
    return os.path.join(state_dir, f"{job_name}.output.lock")


def lock_path(output_path: str) -> str:
    """The lock file of a local output: ``.<name>.lock`` in the folder the output is in."""
    path = os.path.abspath(output_path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


def lock_named_output(document: Document, run_id: str) -> JobLock | None:
    """The lock of the output a job file names, taken before the job is validated.

    A second run of the job is then refused (LockedError, exit 75) before pydantic, pyarrow or
    any input is loaded. The run checks, once validated, that this is its output's lock. A local
    output's lock is beside it; an object-store output's is in the state directory. None, and the
    run takes its lock once validated, when the folder the lock goes in does not exist yet, or when
    the job file does not give ``output.path`` (or ``name`` and ``run.state_dir`` for a URL) as a
    valid string.
    """
    path = document.output_path()
    if path is None:
        return None
    name = document.values.get("name")
    if "://" in path:
        state = document.state_dir()
        if state is None or "://" in state or not isinstance(name, str) or not re.fullmatch(JOB_NAME_PATTERN, name):
            return None
        file = state_lock_path(state, name)
    else:
        file = lock_path(path)
    if not os.path.isdir(os.path.dirname(file)):
        return None
    return JobLock(file, name if isinstance(name, str) else "", run_id).acquire()


def holder_message(info: dict, job_name: str) -> str:
    """Who holds the lock, from what the holder wrote into the lock file."""
    if not isinstance(info, dict) or not info.get("pid"):
        return f"another run holds the lock of job {job_name!r}'s output; try again later"
    return (f"job {info.get('job') or job_name!r} holds the lock on this output: pid {info.get('pid')}, "
            f"started {info.get('started', '?')}, run {info.get('run_id', '?')}; try again later")


def close_inherited() -> None:
    """In a forked child: close inherited lock descriptors, so only the parent holds the lock."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
