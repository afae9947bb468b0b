"""Record boundaries: every record lands in exactly one chunk, whatever the content and chunk size."""

import csv
import io
import itertools
import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.input.split import JSON_LINES, Dialect, end_state, line_numbers, record_spans, split_ranges

CSV = Dialect.csv()
NO_QUOTES = Dialect.csv(quote=None)

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
    pieces = list(split_ranges(io.BytesIO(data), 0, len(data), chunk_bytes, CSV))
    assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
    for (_, b, _, _), (c, _, _, _) in itertools.pairwise(pieces):
        assert b == c  # contiguous, no gap, no overlap
    got = []
    for a, b, line, quotes in pieces:
        assert line == len(re.findall(rb"\r\n|\r|\n", data[:a])) + 1  # physical lines, as Python's csv counts
        assert quotes == data.count(b'"', a, b)
        got += _parse(data[a:b])
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(rows=ROWS, terminator=st.sampled_from(["\n", "\r\n"]))
def test_record_spans_match_the_csv_module(rows, terminator):
    data = _csv_bytes(rows, terminator)
    r = record_spans(data, CSV)
    starts, ends = r.starts, r.ends
    records = [r for r in _parse(data) if r]
    blank_lines = [r for r in _parse(data) if not r]
    assert len(starts) == len(records) or blank_lines
    for s, e, row in zip(starts, ends, records):
        assert _parse(data[s:e]) == [row]


def test_record_spans_skip_blank_lines_and_keep_last_record_without_newline():
    data = b"a,b\n\n\r\nc,d"
    r = record_spans(data, CSV)
    starts, ends = r.starts, r.ends
    assert [data[s:e] for s, e in zip(starts, ends)] == [b"a,b\n", b"c,d"]


def test_unterminated_quote_runs_to_the_end():
    data = b'1,"open\n2,x\n3,y\n'
    r = record_spans(data, CSV)
    starts, ends = r.starts, r.ends
    assert len(starts) == 1 and ends[0] == len(data)


def test_line_numbers():
    data = b'a\n"b\nc"\nd\n'
    starts = record_spans(data, CSV).starts
    assert list(line_numbers(data, starts, 10)) == [10, 11, 13]
    assert isinstance(line_numbers(data, np.array([0]), 1)[0], np.integer)


def test_split_without_quoting_cuts_at_any_newline():
    data = b'1,"a\n2,b\n3,c\n'
    pieces = list(split_ranges(io.BytesIO(data), 0, len(data), 1, NO_QUOTES))
    assert [data[a:b] for a, b, _, _ in pieces] == [b'1,"a\n', b"2,b\n", b"3,c\n"]


# Raw text, not written by a csv writer: quotes anywhere (in the middle of unquoted fields too),
# LF, CRLF and lone CR mixed. Python's csv module reads quotes by the parser's rule (special only
# at the start of a field), so every cut of the splitter must give its records.
RAW = st.text(alphabet=st.sampled_from(list('ab,"\n\r 5')), max_size=80)


def _records(data: bytes) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(data.decode(), newline="")) if r]


@settings(max_examples=400, deadline=None)
@given(text=RAW, chunk_bytes=st.integers(1, 40))
def test_raw_text_with_stray_quotes_gives_the_same_records_at_every_chunk_size(text, chunk_bytes):
    data = text.encode()
    if data.count(b'"') and not _balanced(data):
        return  # an unterminated quote: Python's csv joins the rest; checked separately below
    pieces = list(split_ranges(io.BytesIO(data), 0, len(data), chunk_bytes, CSV))
    got = [r for a, b, _, _ in pieces for r in _records(data[a:b])]
    assert got == _records(data)
    spans = record_spans(data, CSV)
    assert [_records(data[s:e]) for s, e in zip(spans.starts, spans.ends)] == [[r] for r in _records(data)]


def _balanced(data: bytes) -> bool:
    return not record_spans(data, CSV).unterminated


def test_cuts_inside_quoted_fields_at_many_offsets():
    rows = []
    for i in range(300):
        rows.append(f'{i},"multi\nline, with ""quotes"" {i}",x{i} 5" disk\r\n'.encode())
        rows.append(f'{i},plain,"a\rb"\n'.encode())
    data = b"".join(rows)
    expected = _records(data)
    for chunk_bytes in range(1, 200, 7):
        pieces = list(split_ranges(io.BytesIO(data), 0, len(data), chunk_bytes, CSV))
        assert [r for a, b, _, _ in pieces for r in _records(data[a:b])] == expected, chunk_bytes
    # and from every start offset the state machine is resumable: cutting the scan at any byte
    for cut in range(0, 600, 13):
        from pipeline.input.split import Scanner
        sc = Scanner(CSV)
        first = sc.feed(data[:cut])
        second = sc.feed(data[first.consumed:], final=True)
        whole = Scanner(CSV).feed(data, final=True)
        assert list(first.breaks) + list(second.breaks) == list(whole.breaks)


def test_unterminated_quote_is_flagged():
    r = record_spans(b'a,b\n1,2\n2,"broken\n3,4\n', CSV)
    assert r.unterminated and len(r.starts) == 3


def test_comment_lines_are_skipped_whole_but_not_inside_quoted_values():
    data = b'#c "a\n#x,"q\nh1,h2\n1,"#z\n#y"\n#end\n2,3'
    r = record_spans(data, Dialect.csv(comment="#"))
    assert [data[s:e] for s, e in zip(r.starts, r.ends)] == [b"h1,h2\n", b'1,"#z\n#y"\n', b"2,3"]
    assert [data[s:e] for s, e in r.comments] == [b'#c "a\n', b'#x,"q\n', b"#end\n"]


def test_json_lines_end_at_lf_only():
    data = b'{"a": "x\ry"}\n{"a": 1}\n'
    r = record_spans(data, JSON_LINES)
    assert len(r.starts) == 2


def _inside_after(data: bytes, a: int, e: int, inside: bool, prev: int, delimiter: int | None) -> bool:
    """The textbook field automaton, one byte at a time: inside a quoted value after ``data[a:e]``."""
    ends = {0x0A, 0x0D} | ({delimiter} if delimiter is not None else set())
    state = "in" if inside else ("start" if prev in ends else "unquoted")
    for b in data[a:e]:
        if state == "in":
            state = "quote?" if b == 0x22 else "in"
        elif state in ("start", "quote?"):   # after a quote inside a value, "" is a quote, else it closed it
            state = "in" if b == 0x22 else ("start" if b in ends else "unquoted")
        else:
            state = "start" if b in ends else "unquoted"
    return state == "in"


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=80).map(lambda b: bytes(b'""",a\n\r'[x % 7] for x in b)),
       cut=st.tuples(st.integers(0, 80), st.integers(0, 80)), inside=st.booleans(),
       delimiter=st.sampled_from([0x2C, None]), budget=st.sampled_from([0, 1, 2, 5, 64]))
def test_the_state_at_a_range_end_found_backwards_is_the_automatons(data, cut, inside, delimiter, budget):
    """``end_state`` looks at the quotes near the range's end only (and forwards past its budget); it
    must agree with the byte-by-byte automaton whatever the bytes, the cut and the start state."""
    a, e = sorted(min(c, len(data)) for c in cut)
    prev = data[a - 1] if a else 0x0A
    while 0 < a < len(data) and prev == 0x22 and data[a] == 0x22:   # a range starts between quote runs
        a += 1
    e = max(a, e)
    while a < e < len(data) and data[e - 1] == 0x22 and data[e] == 0x22:   # ... and ends after one
        e += 1
    want = _inside_after(data, a, e, inside, prev, delimiter)
    assert end_state(data, a, e, 0x22, delimiter, inside, prev, budget=budget) == want
    assert end_state(bytearray(data), a, e, 0x22, delimiter, inside, prev, budget=budget) == want
