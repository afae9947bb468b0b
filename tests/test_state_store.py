"""The state store, checked against what Python's sqlite3 reads from the database file."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from pipeline.errors import OutputError
from pipeline.state.store import FINGERPRINT_BYTES, Seen, StateStore, fingerprint

COUNTS = {"rows_read": 10, "rows_written": 7, "rows_filtered": 2, "rows_rejected": 1, "rows_added": 0}


def rows(directory, sql, *args):
    db = sqlite3.connect(os.path.join(directory, "state.db"))
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def seen(path, run_id, size=1, mtime_ns=1, fp="f"):
    return Seen(path, size, mtime_ns, fp, run_id)


@pytest.fixture
def store(tmp_path):
    with StateStore(str(tmp_path / "state")) as s:
        yield s


def test_folder_and_files_are_private(store):
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.integrity() == "ok"


@pytest.mark.parametrize("status,exit_code,files,kept", [
    ("succeeded", 0, [seen("a.csv", "r1"), seen("b.csv", "r1")], ["a.csv", "b.csv"]),
    ("failed", 65, [], []),
])
def test_a_run_is_recorded_with_its_files(store, status, exit_code, files, kept):
    store.run_started("r1", "job", "c1", "t1", {"day": "2026-11-02"}, "/out")
    assert rows(store.directory, "SELECT status FROM runs") == [("running",)]
    store.run_finished("r1", status, exit_code, COUNTS, files, job="job", error=None if exit_code == 0 else "bad")
    run = rows(store.directory, "SELECT job, config_hash, transform_hash, params, status, exit_code, rows_read,"
                                " rows_written, rows_filtered, rows_rejected, rows_added, files_processed, output"
                                " FROM runs WHERE run_id='r1'")
    assert run == [("job", "c1", "t1", '{"day": "2026-11-02"}', status, exit_code, 10, 7, 2, 1, 0, len(files), "/out")]
    assert sorted(store.seen_files("job")) == kept
    assert store.knows_run("r1") is (status == "succeeded")
    assert (store.last_success("job") is not None) is (status == "succeeded")


def test_files_of_a_later_run_replace_the_earlier_record(store):
    store.run_started("r1", "job", "c", "t", {}, "/out")
    store.run_finished("r1", "succeeded", 0, COUNTS, [seen("a.csv", "r1", size=1), seen("b.csv", "r1")], job="job")
    store.run_started("r2", "job", "c", "t", {}, "/out")
    store.run_finished("r2", "succeeded", 0, COUNTS, [seen("a.csv", "r2", size=2)], job="job")
    assert store.seen_files("job") == {"a.csv": seen("a.csv", "r2", size=2), "b.csv": seen("b.csv", "r1")}
    assert store.last_success("job")["run_id"] == "r2"


def test_full_refresh_forgets_the_files_of_earlier_runs(store):
    store.run_started("r1", "job", "c", "t", {}, "/out")
    store.run_finished("r1", "succeeded", 0, COUNTS, [seen("a.csv", "r1"), seen("b.csv", "r1")], job="job")
    store.run_started("r2", "job", "c", "t", {}, "/out")
    store.run_finished("r2", "succeeded", 0, COUNTS, [seen("c.csv", "r2")], job="job", replace_files=True)
    assert list(store.seen_files("job")) == ["c.csv"]


def test_jobs_do_not_see_each_other(store):
    for job in ("one", "two"):
        store.run_started(f"r-{job}", job, "c", "t", {}, "/out")
        store.run_finished(f"r-{job}", "succeeded", 0, COUNTS, [seen(f"{job}.csv", f"r-{job}")], job=job)
    assert list(store.seen_files("one")) == ["one.csv"]
    assert [h["run_id"] for h in store.history("two")] == ["r-two"]
    store.forget_files("one")
    assert store.seen_files("one") == {} and list(store.seen_files("two")) == ["two.csv"]


def test_runs_left_running_are_marked_dead_but_not_the_current_one(store):
    for run_id in ("old1", "old2", "now"):
        store.run_started(run_id, "job", "c", "t", {}, "/out")
    store.run_started("other", "other-job", "c", "t", {}, "/out")
    assert store.mark_dead("job", "now") == 2
    assert dict(rows(store.directory, "SELECT run_id, status FROM runs")) == {
        "old1": "died", "old2": "died", "now": "running", "other": "running"}


def test_history_is_newest_first_and_limited(store):
    for i in range(5):
        store.run_started(f"r{i}", "job", "c", "t", {}, "/out")
        time.sleep(0.002)   # runs are ordered by their start time
    assert [h["run_id"] for h in store.history("job", limit=3)] == ["r4", "r3", "r2"]
    store.forget_run("r4")
    assert [h["run_id"] for h in store.history("job", limit=1)] == ["r3"]


def test_a_published_run_the_database_missed_is_recorded_from_the_manifest(store):
    manifest_run = {
        "run_id": "r9", "config_hash": "c9", "transform_hash": "", "started_ts": 100.0, "finished_ts": 160.0,
        "counts": COUNTS,
        "inputs": [{"path": "a.csv", "size": 3, "mtime_ns": 4, "fingerprint": "fp"}, {"path": "b.csv", "size": 5,
                                                                                       "mtime_ns": 6}],
    }
    store.record_published(manifest_run, "job", "t-now")
    assert store.knows_run("r9")
    assert rows(store.directory, "SELECT transform_hash, started, finished, rows_written, files_processed FROM runs") \
        == [("t-now", 100.0, 160.0, 7, 2)]
    assert store.seen_files("job") == {"a.csv": Seen("a.csv", 3, 4, "fp", "r9"), "b.csv": Seen("b.csv", 5, 6, "", "r9")}


def test_a_database_that_is_not_sqlite_is_an_output_error(tmp_path):
    (tmp_path / "state.db").write_bytes(b"not a database" * 100)
    with pytest.raises(OutputError, match="cannot open the state store"):
        StateStore(str(tmp_path))


@pytest.mark.parametrize("size", [0, 10, FINGERPRINT_BYTES, FINGERPRINT_BYTES + 10, 3 * FINGERPRINT_BYTES])
def test_fingerprint_sees_the_first_and_last_mebibyte(tmp_path, size):
    path = tmp_path / "f.bin"
    data = bytearray(os.urandom(size))
    path.write_bytes(data)
    before = fingerprint(str(path), size)
    assert fingerprint(str(path), size) == before
    if size == 0:
        return
    for at in {0, size - 1}:      # a change at either end is seen, the size staying the same
        changed = bytearray(data)
        changed[at] ^= 0xFF
        path.write_bytes(changed)
        assert fingerprint(str(path), size) != before, at
