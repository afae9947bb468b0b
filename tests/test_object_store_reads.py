"""What planning and reading an object-store input fetch: the bytes requested from the store, counted
where s3fs asks for a byte range, against the size of the file and the type sample."""

from __future__ import annotations

import pytest

from pipeline.input.plan import HEAD_LIMIT
from pipeline.input.storage import READ_AHEAD
from tests.helpers import basic_job, manifest_of, run_cli, write_job

MIB = 1 << 20


@pytest.fixture
def fetched(monkeypatch, tmp_path):
    """Every byte range the S3 filesystem requests, in this process and in the workers forked from it
    (each request is a line appended to a file), summed when read."""
    s3fs = pytest.importorskip("s3fs")
    log = tmp_path / "fetches.log"
    log.touch()
    real = s3fs.core.S3File._fetch_range

    def counting(self, start, end):
        with open(log, "a") as fh:
            fh.write(f"{max(0, end - start)}\n")
        return real(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)

    def total() -> dict:
        sizes = [int(line) for line in log.read_text().split()]
        return {"bytes": sum(sizes), "requests": len(sizes)}

    return total


def _big_csv(rows: int) -> bytes:
    return ("id,country,price,note\n" + "".join(
        f'{i},{"DEFRUS"[i % 3 * 2:i % 3 * 2 + 2]},{i % 997 / 10},"note, {i}"\n' for i in range(rows))).encode()


def test_planning_an_object_store_csv_fetches_only_its_head(s3, fetched, tmp_path):
    data = _big_csv(1_200_000)
    assert len(data) > 30 * MIB
    s3.pipe("lake/raw/big.csv", data)
    job = basic_job("s3://lake/raw/big.csv", input={"sample_bytes": "1MiB"})
    code, _, err = run_cli("plan", str(write_job(tmp_path, job)))
    assert code == 0, err
    # what planning asks for (the type sample and room for the header) and one read-ahead: not the file
    assert fetched()["bytes"] <= 1 * MIB + HEAD_LIMIT + READ_AHEAD + 1, fetched()


def test_a_run_on_an_object_store_csv_fetches_each_byte_about_once(s3, fetched, tmp_path):
    """Each worker fetches its own byte range with a small read-ahead, not fsspec's default 50 MiB past
    every read, and takes the quote state at its cut from the worker on the range before it instead of
    fetching that range again (input/boundaries.py). Measured: 1.2x the file, the plan's head and each
    chunk's read-ahead included; 7.5x before."""
    data = _big_csv(1_200_000)
    s3.pipe("lake/raw/big.csv", data)
    job = basic_job("s3://lake/raw/big.csv", input={"chunk_bytes": "4MiB"}, run={"workers": 2})
    code, _, err = run_cli("run", str(write_job(tmp_path, job)), "--no-progress")
    assert code == 0, err
    m = manifest_of(tmp_path / "out")
    assert m["counts"]["rows_read"] == 1_200_000 and m["chunks"] >= 8
    got = fetched()
    assert got["bytes"] <= 1.5 * len(data), (got, len(data))
