"""The job's state: an SQLite database of runs and of the input files successful runs processed.

It lives in ``run.state_dir`` (default ``.pipeline-state/`` beside the job file), created private
(0700 folder, 0600 files), in WAL mode with ``synchronous=FULL`` so a commit survives a power cut.
Files are recorded only after the output is published; if a run dies between the publish and
this record, the next run reads the output's manifest and records what it missed, so the state
and the output never disagree for long enough to matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.errors import OutputError

FINGERPRINT_BYTES = 1 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    transform_hash TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    rows_read INTEGER, rows_written INTEGER, rows_filtered INTEGER, rows_rejected INTEGER, rows_added INTEGER,
    files_processed INTEGER,
    output TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, started);
CREATE TABLE IF NOT EXISTS files (
    job TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (job, path)
);
CREATE TABLE IF NOT EXISTS chunks (
    run_id TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    seconds REAL NOT NULL,
    rows_read INTEGER, rows_written INTEGER, rows_filtered INTEGER, rows_rejected INTEGER,
    bytes_read INTEGER,
    PRIMARY KEY (run_id, chunk_id)
);
"""


def fingerprint(path: str, size: int) -> str:
    """blake2b of the size, the first and the last MiB: cheap, and changes when content is rewritten."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    from pipeline.input.storage import open_input

    with open_input(path) as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > 2 * FINGERPRINT_BYTES:
            fh.seek(size - FINGERPRINT_BYTES)
            h.update(fh.read(FINGERPRINT_BYTES))
        elif size > FINGERPRINT_BYTES:
            h.update(fh.read())
    return h.hexdigest()


FOLLOW_SECONDS = 0.05   # how often the fingerprints' thread looks for files listed since


class Fingerprints:
    """The fingerprints of a run's input files, computed on a thread of the parent while the
    workers read them (the parent is idle then): thousands of small files cost no time at the end."""

    def __init__(self, files: list, listed: Callable[[], bool] = lambda: True) -> None:
        self.files = files           # InputFiles; a streamed plan's list grows until ``listed()``
        self.listed = listed
        self.prints: dict[str, str] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._compute, name="pipeline-fingerprints", daemon=True)

    def start(self) -> None:
        """Once the workers run (a thread running while they are forked could leave them a lock held)."""
        if self.thread.ident is None:
            self.thread.start()

    def _compute(self) -> None:
        try:
            done = 0
            while True:
                listed = self.listed()
                for f in self.files[done:]:
                    self.prints[f.path] = fingerprint(f.path, f.size)
                    done += 1
                if listed and done == len(self.files):
                    return
                time.sleep(FOLLOW_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - raised again in the run's own thread by result()
            self.error = exc

    def result(self) -> dict[str, str]:
        self.start()
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.prints


@dataclass(frozen=True)
class Seen:
    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    run_id: str


class StateStore:
    def __init__(self, directory: str):
        self.directory = directory
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as exc:   # a file in its place, a folder we may not write
            raise OutputError(f"cannot create the state store folder {directory}: {exc.strerror or exc} "
                              f"(run.state_dir sets where it goes)") from exc
        self.path = os.path.join(directory, "state.db")
        old = os.umask(0o077)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise OutputError(f"cannot open the state store {self.path}: {exc}") from exc
        finally:
            os.umask(old)
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            full = os.path.join(directory, name)
            if os.path.exists(full):
                os.chmod(full, 0o600)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs
    def run_started(self, run_id: str, job: str, config_hash: str, transform_hash: str, params: dict,
                    output: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO runs (run_id, job, config_hash, transform_hash, params, started, status, output)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
            (run_id, job, config_hash, transform_hash, json.dumps(params, sort_keys=True), time.time(), output))

    def run_finished(self, run_id: str, status: str, exit_code: int, counts: dict | None,
                     files: Sequence[Seen] = (), job: str | None = None, error: str | None = None,
                     replace_files: bool = False) -> None:
        """Record the end of a run, and (for a success) its input files, in one transaction.

        ``replace_files`` (a full refresh) forgets the files of earlier runs in the same transaction.
        """
        c = counts or {}
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if replace_files and job is not None:
                self.db.execute("DELETE FROM files WHERE job=?", (job,))
            self.db.execute(
                "UPDATE runs SET finished=?, status=?, exit_code=?, rows_read=?, rows_written=?, rows_filtered=?,"
                " rows_rejected=?, rows_added=?, files_processed=?, error=? WHERE run_id=?",
                (time.time(), status, exit_code, c.get("rows_read"), c.get("rows_written"), c.get("rows_filtered"),
                 c.get("rows_rejected"), c.get("rows_added"), len(files), error, run_id))
            for f in files:
                self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                (job, f.path, f.size, f.mtime_ns, f.fingerprint, f.run_id))

    def record_chunks(self, run_id: str, results) -> None:
        """When and by which process each chunk of a run was done (``ChunkResult``s; resumed ones have no time)."""
        rows = [(run_id, r.chunk_id, r.attempt, r.pid, r.started, r.seconds, r.rows_read, r.rows_written,
                 r.rows_filtered, r.rows_rejected, r.bytes_read) for r in results if r.started]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def chunks(self, run_id: str) -> list[dict]:
        cur = self.db.execute("SELECT * FROM chunks WHERE run_id=? ORDER BY started", (run_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def mark_dead(self, job: str, current_run: str) -> int:
        """Runs left 'running' by a process that died (call with the job's lock held)."""
        cur = self.db.execute("UPDATE runs SET status='died' WHERE job=? AND status='running' AND run_id!=?",
                              (job, current_run))
        return cur.rowcount

    def forget_run(self, run_id: str) -> None:
        self.db.execute("DELETE FROM runs WHERE run_id=?", (run_id,))

    def forget_files(self, job: str) -> None:
        self.db.execute("DELETE FROM files WHERE job=?", (job,))

    def knows_run(self, run_id: str) -> bool:
        row = self.db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row is not None and row[0] == "succeeded"

    def record_published(self, manifest_run: dict, job: str, transform_hash: str | None) -> None:
        """A run the output's manifest shows as published but this database missed (it died in between)."""
        files = [Seen(i["path"], i["size"], i["mtime_ns"], i.get("fingerprint", ""), manifest_run["run_id"])
                 for i in manifest_run.get("inputs", [])]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO runs (run_id, job, config_hash, transform_hash, params, started, finished,"
                " status, exit_code, rows_read, rows_written, rows_filtered, rows_rejected, rows_added,"
                " files_processed) VALUES (?, ?, ?, ?, '{}', ?, ?, 'succeeded', 0, ?, ?, ?, ?, ?, ?)",
                (manifest_run["run_id"], job, manifest_run.get("config_hash", ""),
                 manifest_run.get("transform_hash") or transform_hash,
                 manifest_run.get("started_ts") or manifest_run.get("finished_ts") or 0.0,
                 manifest_run.get("finished_ts"),
                 *(manifest_run["counts"].get(k) for k in ("rows_read", "rows_written", "rows_filtered",
                                                            "rows_rejected", "rows_added")), len(files)))
            for f in files:
                self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                (job, f.path, f.size, f.mtime_ns, f.fingerprint, f.run_id))

    # -- queries
    def seen_files(self, job: str) -> dict[str, Seen]:
        rows = self.db.execute("SELECT path, size, mtime_ns, fingerprint, run_id FROM files WHERE job=?", (job,))
        return {r[0]: Seen(*r) for r in rows}

    def last_success(self, job: str) -> dict | None:
        row = self.db.execute(
            "SELECT run_id, transform_hash, finished FROM runs WHERE job=? AND status='succeeded'"
            " ORDER BY finished DESC LIMIT 1", (job,)).fetchone()
        return None if row is None else {"run_id": row[0], "transform_hash": row[1], "finished": row[2]}

    def history(self, job: str, limit: int = 50, status: str | None = None,
                params: dict[str, str] | None = None) -> list[dict]:
        """The job's runs, newest first; only those with ``status`` and made with ``params``, if given."""
        where, args = "job=?", [job]
        if status:
            where += " AND status=?"
            args.append(status)
        for name, value in (params or {}).items():
            where += " AND json_extract(params, ?) = ?"
            args += [f'$."{name}"', value]
        cur = self.db.execute(
            "SELECT run_id, started, finished, status, exit_code, rows_read, rows_written, rows_filtered,"
            " rows_rejected, files_processed, params, error FROM runs WHERE " + where +
            " ORDER BY started DESC LIMIT ?", (*args, limit))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def integrity(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]
