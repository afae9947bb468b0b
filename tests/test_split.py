"""Record boundaries: every record lands in exactly one chunk, whatever the content and chunk size."""

import csv
import io
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.input.split import line_numbers, record_spans, split_ranges

FIELD = st.text(alphabet=st.sampled_from(list('ab,"\n\r x\u00e9\u6771')), max_size=12)
ROWS = st.lists(st.lists(FIELD, min_size=3, max_size=3), min_size=1, max_size=60)


def _csv_bytes(rows, terminator):
    out = io.StringIO()
    # A bare CR is a line break to readers; fields holding one must be quoted (as RFC 4180 asks).
    bare_cr = any("\r" in f for r in rows for f in r)
    csv.writer(out, lineterminator=terminator, quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL).writerows(rows)
    return out.getvalue().encode()


def _parse(data: bytes):
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


@settings(max_examples=300, deadline=None)
@given(rows=ROWS, chunk_bytes=st.integers(1, 400), terminator=st.sampled_from(["\n", "\r\n"]),
       final_newline=st.booleans())
def test_pieces_cover_every_record_exactly_once(rows, chunk_bytes, terminator, final_newline):
    data = _csv_bytes(rows, terminator)
    if not final_newline:
        data = data[: -len(terminator)]
    expected = _parse(data)
    pieces = list(split_ranges(io.BytesIO(data), 0, len(data), chunk_bytes, b'"'))
    assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
    for (_, b, _, _), (c, _, _, _) in itertools.pairwise(pieces):
        assert b == c  # contiguous, no gap, no overlap
    got = []
    for a, b, line, quotes in pieces:
        assert line == data.count(b"\n", 0, a) + 1
        assert quotes == data.count(b'"', a, b)
        got += _parse(data[a:b])
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(rows=ROWS, terminator=st.sampled_from(["\n", "\r\n"]))
def test_record_spans_match_the_csv_module(rows, terminator):
    data = _csv_bytes(rows, terminator)
    starts, ends = record_spans(data, b'"')
    records = [r for r in _parse(data) if r]
    blank_lines = [r for r in _parse(data) if not r]
    assert len(starts) == len(records) or blank_lines
    for s, e, row in zip(starts, ends, records):
        assert _parse(data[s:e]) == [row]


def test_record_spans_skip_blank_lines_and_keep_last_record_without_newline():
    data = b"a,b\n\n\r\nc,d"
    starts, ends = record_spans(data, b'"')
    assert [data[s:e] for s, e in zip(starts, ends)] == [b"a,b\n", b"c,d"]


def test_unterminated_quote_runs_to_the_end():
    data = b'1,"open\n2,x\n3,y\n'
    starts, ends = record_spans(data, b'"')
    assert len(starts) == 1 and ends[0] == len(data)


def test_line_numbers():
    data = b'a\n"b\nc"\nd\n'
    starts, _ = record_spans(data, b'"')
    assert list(line_numbers(data, starts, 10)) == [10, 11, 13]
    assert isinstance(line_numbers(data, np.array([0]), 1)[0], np.integer)


def test_split_without_quoting_cuts_at_any_newline():
    data = b'1,"a\n2,b\n3,c\n'
    pieces = list(split_ranges(io.BytesIO(data), 0, len(data), 1, None))
    assert [data[a:b] for a, b, _, _ in pieces] == [b'1,"a\n', b"2,b\n", b"3,c\n"]
