"""Fuzzing the CSV path against Python's csv module, through the real CLI."""

from __future__ import annotations

import csv
import io
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import basic_job, manifest_of, read_output, run_cli, sort_rows, write_job

FIELD = st.text(alphabet=st.sampled_from(list('ab,"\n x\u00e9;')), max_size=10)
SETTINGS = {'max_examples': int(os.environ.get("FUZZ_EXAMPLES", "40")), 'deadline': None, 'suppress_health_check': [HealthCheck.function_scoped_fixture]}


@settings(**SETTINGS)
@given(rows=st.lists(st.lists(FIELD, min_size=3, max_size=3), min_size=1, max_size=40),
       chunk_bytes=st.integers(1, 300), crlf=st.booleans())
def test_valid_csv_matches_the_csv_module(tmp_path_factory, rows, chunk_bytes, crlf):
    tmp = tmp_path_factory.mktemp("fuzz")
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n" if crlf else "\n").writerows([["a", "b", "c"]] + rows)
    data = out.getvalue().encode()
    (tmp / "in.csv").write_bytes(data)
    job = basic_job("in.csv", input={"chunk_bytes": chunk_bytes, "csv": {"null_values": []},
                                     "schema": {"a": "string", "b": "string", "c": "string"}})
    code, _, _ = run_cli("run", write_job(tmp, job), "--no-progress")
    assert code == 0
    records = list(csv.reader(io.StringIO(data.decode(), newline="")))[1:]
    assert all(len(r) == 3 for r in records)  # every written row, all-empty ones too, reads back as 3 fields
    expected = [dict(zip("abc", r, strict=True)) for r in records]
    got = read_output(tmp / "out").to_pylist()
    assert sort_rows(got) == sort_rows(expected)


@settings(**SETTINGS)
@given(data=st.binary(max_size=400), chunk_bytes=st.integers(1, 200))
def test_any_bytes_are_read_or_rejected_never_lost(tmp_path_factory, data, chunk_bytes):
    tmp = tmp_path_factory.mktemp("bytes")
    (tmp / "in.csv").write_bytes(b"a,b\n" + data)
    job = basic_job("in.csv", input={"chunk_bytes": chunk_bytes, "schema": {"a": "string", "b": "string"}},
                    run={"on_bad_rows": "quarantine", "max_bad_rows": 1000})
    code, _, _ = run_cli("run", write_job(tmp, job), "--no-progress")
    assert code == 0
    c = manifest_of(tmp / "out")["counts"]
    assert c["rows_read"] == c["rows_written"] + c["rows_rejected"]
    assert read_output(tmp / "out").num_rows == c["rows_written"]
