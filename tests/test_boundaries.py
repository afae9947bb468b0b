"""Cut chunks: the reader of each byte range finds its records, and every record is read once.

The reference is the sequential state machine over the whole file (``split.record_spans``) and
Python's ``csv`` module; the chunks are read in shuffled order, with a shared state table (the
local executor), with none (each reader computes the chain itself), and resolved up front (Dask).
"""

from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
import time

import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.input import boundaries
from pipeline.input.chunks import Chunk, ReadSpec, chunk_id
from pipeline.input.discover import InputFile
from pipeline.input.split import JSON_LINES, Dialect, Scanner, record_spans
from tests.helpers import basic_job, read_output, write_job

CSV = Dialect.csv()
SPEC = ReadSpec(schema=None)  # type: ignore[arg-type]


def _cut(path, data: bytes, origin: int, step: int, fmt: str = "csv") -> list[Chunk]:
    f = InputFile(str(path), fmt, None, len(data), 0)
    out = []
    for i, a in enumerate(range(origin, len(data), step)):
        b = min(a + step, len(data))
        out.append(Chunk(chunk_id(f, a, b), f, i, a, b, 1 if i == 0 else 0, -1, (), origin=origin, step=step))
    return out


def _read_all(chunks, dialect, how: str, seed: int = 0, spec=SPEC):
    order = list(chunks)
    random.Random(seed).shuffle(order)
    if how == "resolved":
        resolved = {c.id: c for c in boundaries.resolve_states(chunks, spec)}
        order = [resolved[c.id] for c in order]
        table = boundaries.StateTable()
    elif how == "shared":
        n, slots = boundaries.shared_slots(chunks)
        table = boundaries.StateTable([boundaries.UNKNOWN] * max(n, 1), slots)
    else:
        table = None   # two readers that share nothing: each computes the chain links it lacks
    own = [boundaries.StateTable(), boundaries.StateTable()]
    got = {}
    for n, c in enumerate(order):
        got[c.index] = boundaries.locate(c, dialect, table or own[n % 2])
    return [got[i] for i in sorted(got)]


def _records(data: bytes) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(data.decode(), newline="")) if r]


def _check(tmp_path, data: bytes, step: int, dialect=CSV, how="shared", seed=0, spec=SPEC):
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    chunks = _cut(path, data, 0, step)
    pieces = _read_all(chunks, dialect, how, seed, spec)
    assert b"".join(p.data for p in pieces) == data                       # every byte once, in order
    # a boundary of the one-pass state machine (blank lines are records to it, left out by the parser)
    starts = set(Scanner(dialect).feed(data, final=True).breaks.tolist()) | {0, len(data)}
    for p in pieces:
        assert p.end - p.start == len(p.data)
        if p.data:
            assert p.start in starts, (step, p.start)                       # a record starts there
    return pieces


MESSY_ROWS = b"".join(
    f'{i},"multi\nline, with ""quotes"" {i}",x{i} 5" disk\r\n'.encode() + f'{i},plain,"a\rb"\n'.encode()
    + (b'"""",""\n' if i % 7 == 0 else b"") + (b"\n\n" if i % 11 == 0 else b"")
    for i in range(150))


def test_cuts_inside_quoted_fields_at_many_offsets(tmp_path):
    expected = _records(MESSY_ROWS)
    for step in list(range(1, 60, 4)) + [97, 257, 1000, 4096]:
        for how in ("shared", "alone", "resolved"):
            pieces = _check(tmp_path, MESSY_ROWS, step, how=how, seed=step)
            assert [r for p in pieces for r in _records(p.data)] == expected, (step, how)


FIELD = st.text(alphabet=st.sampled_from(list('ab,"\n\r x\u00e9')), max_size=10)
ROWS = st.lists(st.lists(FIELD, min_size=3, max_size=3), min_size=1, max_size=50)


@settings(max_examples=300, deadline=None)
@given(rows=ROWS, step=st.integers(1, 300), terminator=st.sampled_from(["\n", "\r\n"]),
       how=st.sampled_from(["shared", "alone", "resolved"]), seed=st.integers(0, 1000))
def test_every_record_once_at_any_cut(tmp_path_factory, rows, step, terminator, how, seed):
    out = io.StringIO()
    bare_cr = any("\r" in f for r in rows for f in r)
    csv.writer(out, lineterminator=terminator,
               quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL).writerows(rows)
    data = out.getvalue().encode()
    pieces = _check(tmp_path_factory.mktemp("cut"), data, step, how=how, seed=seed)
    assert [r for p in pieces for r in _records(p.data)] == _records(data)


RAW = st.text(alphabet=st.sampled_from(list('ab,"\n\r 5')), max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=RAW, step=st.integers(1, 40), how=st.sampled_from(["shared", "alone", "resolved"]))
def test_stray_quotes_give_the_records_of_one_pass(tmp_path_factory, text, step, how):
    data = text.encode()
    pieces = _check(tmp_path_factory.mktemp("raw"), data, step, how=how)
    whole = record_spans(data, CSV)
    got = [(p.start + int(s), p.start + int(e)) for p in pieces
           for s, e in zip(*(lambda r: (r.starts, r.ends))(record_spans(p.data, CSV)))]
    assert got == list(zip(whole.starts.tolist(), whole.ends.tolist()))


def test_json_lines_cut_at_lf(tmp_path):
    data = b"".join(b'{"a": "x\\"y\\r", "n": %d}\n' % i for i in range(200))
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    for step in (1, 5, 33, 100, 5000):
        pieces = _read_all(_cut(path, data, 0, step, "jsonl"), JSON_LINES, "shared")
        assert b"".join(p.data for p in pieces) == data
        assert all(p.data.endswith(b"\n") for p in pieces if p.data)


def test_quote_runs_split_by_a_cut(tmp_path):
    # a cut in the middle of "" (an escaped quote), of """ (open + escaped), and between CR and LF
    data = b'a,"x""""y",b\r\n"""q""",z\r\n' * 40
    expected = _records(data)
    for step in range(1, 40):
        for how in ("shared", "alone", "resolved"):
            pieces = _check(tmp_path, data, step, how=how)
            assert [r for p in pieces for r in _records(p.data)] == expected


def test_the_read_buffer_is_reused_and_never_overwritten_under_a_view(tmp_path):
    """A range is read into one buffer kept from chunk to chunk (no new memory to fault in each
    time); each chunk's records are copied out of it, and a buffer someone still views is replaced,
    never overwritten."""
    import numpy as np

    data = b"".join(b'%d,"x,\ny",z\n' % i for i in range(20000))   # ranges of one length: longer than a range and its window
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    chunks = _cut(path, data, 0, 4096)
    table = boundaries.StateTable()
    pieces = [boundaries.locate(c, CSV, table) for c in chunks[:2]]
    buffer = boundaries._READ_BUFFER[0]
    held = np.frombuffer(buffer, dtype=np.uint8)     # a view of the second range's bytes
    snapshot = held.tobytes()
    pieces.append(boundaries.locate(chunks[2], CSV, table))   # a range of the same length
    assert held.tobytes() == snapshot                 # the viewed buffer kept its bytes
    assert boundaries._READ_BUFFER[0] is not buffer   # ... the next range went to a new one
    del held
    reused = boundaries._READ_BUFFER[0]
    pieces += [boundaries.locate(c, CSV, table) for c in chunks[3:]]
    assert boundaries._READ_BUFFER[0] is reused       # nothing views it: the same buffer again
    assert all(isinstance(p.data, bytes) for p in pieces)
    assert [r for p in pieces for r in _records(p.data)] == _records(data)


def test_a_record_longer_than_the_range_leaves_empty_chunks(tmp_path):
    data = b'1,"' + b"long\n" * 500 + b'",x\n2,y\n'
    pieces = _check(tmp_path, data, 64)
    assert sum(1 for p in pieces if p.data) == 2
    assert [r for p in pieces for r in _records(p.data)] == _records(data)


def test_the_cli_reads_every_record_at_small_cuts(tmp_path):
    """Through `pipeline run`: 4 KiB cuts of quoted multi-line records, equal to pyarrow's whole-file read."""
    (tmp_path / "a.csv").write_bytes(b"id,note,tail\n" + b"".join(
        f'{i},"line one\nline ""two"" {i}\r\nthree",{i}" x\n'.encode() for i in range(3000)))
    job = basic_job("a.csv", input={"chunk_bytes": 4096}, run={"workers": 2})
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(write_job(tmp_path, job)), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = read_output(tmp_path / "out").sort_by("id")
    want = pacsv.read_csv(tmp_path / "a.csv", parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert got.column("note").to_pylist() == want.column("note").to_pylist()
    assert got.column("tail").to_pylist() == want.column("tail").to_pylist()


@pytest.mark.parametrize("comment", [None, "#"])
def test_planning_reads_only_the_head(tmp_path, comment):
    """The plan of a 64 MiB file reads about its head, not the file (no boundary scan), with comment
    lines too."""
    from pipeline.config import load_config
    from pipeline.input.plan import build_plan
    from pipeline.stages import STAGES

    line = b'1,"a, b",2026-01-01,3.5\n'
    with open(tmp_path / "big.csv", "wb") as fh:
        fh.write(b"# exported\nid,s,d,x\n" if comment else b"id,s,d,x\n")
        fh.write(((line * 999) + (b'# a "comment", between rows\n' if comment else line))
                 * ((64 << 20) // (len(line) * 1000)))
    options = {"chunk_bytes": 1 << 20, **({"csv": {"comment": comment}} if comment else {})}
    job = load_config(write_job(tmp_path, basic_job("big.csv", input=options)), stages=STAGES)

    def read_bytes() -> int:
        with open(f"/proc/{os.getpid()}/io") as fh:
            return int(next(v for k, v in (ln.split(": ") for ln in fh) if k == "rchar"))

    before = read_bytes()
    plan = build_plan(job)
    took = read_bytes() - before
    assert len(plan.chunks) == -(-(plan.files[0].size - plan.chunks[0].start) // (1 << 20))
    assert took < 8 << 20, took


def test_a_worker_starts_before_the_input_is_read(tmp_path):
    """On a 256 MiB file a worker process exists well before one core could have scanned the file."""
    import psutil

    line = b'1,"a, b",2026-01-01,3.5,some note text that makes the line longer\n'
    with open(tmp_path / "big.csv", "wb") as fh:
        fh.write(b"id,s,d,x,note\n")
        block = line * 100_000
        for _ in range((256 << 20) // len(block)):
            fh.write(block)
    job = basic_job("big.csv", run={"workers": 2}, name="startjob")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(write_job(tmp_path, job)),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = None
    try:
        while proc.poll() is None and seen is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "startjob worker" in " ".join(child.cmdline()):
                        seen = time.monotonic() - started
                except psutil.Error:
                    continue
            time.sleep(0.01)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert seen is not None
    # the old plan read every byte first (about 0.5 s per 256 MiB here, on top of start-up)
    assert seen < 1.5, seen


# csv.comment: a line that starts a record with the prefix is skipped whole, its quotes included, so
# the chain is kept at line starts (see input.boundaries). The reference: the one-pass state machine.
COMMENTED = st.text(alphabet=st.sampled_from(list('ab,"\n\r #/5')), max_size=120)


@settings(max_examples=400, deadline=None)
@given(text=COMMENTED, step=st.integers(1, 40), how=st.sampled_from(["shared", "alone", "resolved"]),
       prefix=st.sampled_from(["#", "//"]), seed=st.integers(0, 100))
def test_comment_lines_give_the_records_and_comments_of_one_pass(tmp_path_factory, text, step, how, prefix, seed):
    data = text.encode()
    dialect = Dialect.csv(comment=prefix)
    spec = ReadSpec(schema=None, comment=prefix)  # type: ignore[arg-type]
    pieces = _check(tmp_path_factory.mktemp("commented"), data, step, dialect, how, seed, spec)
    whole = record_spans(data, dialect)

    def spans(r, base):
        return ([(base + int(s), base + int(e)) for s, e in zip(r.starts, r.ends)],
                [(base + int(s), base + int(e)) for s, e in r.comments])

    got = [spans(record_spans(p.data, dialect), p.start) for p in pieces]
    assert [x for g in got for x in g[0]] == spans(whole, 0)[0]      # every record once, in order
    assert [x for g in got for x in g[1]] == spans(whole, 0)[1]      # every comment line once


def test_comment_lines_full_of_quotes_at_many_cuts(tmp_path):
    rows = []
    for i in range(40):
        rows.append(f'# a comment with a "quote {i}\n'.encode())
        rows.append(f'{i},"multi\n# not a comment, inside quotes {i}",x{i} 5" disk\r\n'.encode())
        rows.append(f'#"\r{i},plain,"a\rb"\n'.encode())
        rows.append(f'#c,"a quote that opens a field, were this not a comment {i}\n'.encode())
        rows.append(f'{i},"x\ny",4\n'.encode())
    data = b"".join(rows)
    dialect = Dialect.csv(comment="#")
    spec = ReadSpec(schema=None, comment="#")  # type: ignore[arg-type]
    whole = record_spans(data, dialect)
    expected = [data[s:e] for s, e in zip(whole.starts, whole.ends)]
    assert len(whole.comments) == 120 and len(expected) == 120
    for step in [3, 10, 29, 64, 97, 257, 1000, 4096]:
        for how in ("shared", "alone", "resolved"):
            pieces = _check(tmp_path, data, step, dialect, how, step, spec)
            spans = [record_spans(p.data, dialect) for p in pieces]
            got = [p.data[s:e] for p, r in zip(pieces, spans) for s, e in zip(r.starts, r.ends)]
            assert got == expected, (step, how)
            assert [p.data[s:e] for p, r in zip(pieces, spans) for s, e in r.comments] == \
                [data[s:e] for s, e in whole.comments], (step, how)
