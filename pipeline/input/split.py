"""Record boundaries in delimited text, for files too large to read as one piece.

Cutting a CSV at an arbitrary newline is wrong when a quoted field contains one (dask's
``read_csv`` documents that it breaks here). With RFC 4180 quoting, a newline ends a record
exactly when the number of quote characters before it, counted from a record boundary, is even
(an escaped quote ``""`` adds two). Both functions below use that invariant; counting is done by
``bytes.count`` / numpy, never per byte in Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np

NL = 0x0A
READ_BLOCK = 8 << 20


def split_ranges(f: IO[bytes], start: int, end: int, chunk_bytes: int, quote: bytes | None,
                 first_line: int = 1, count_lines: bool = True) -> Iterator[tuple[int, int, int, int]]:
    """Cut ``[start, end)`` of an open binary file into pieces of about ``chunk_bytes``.

    ``start`` must be a record boundary. Yields ``(piece_start, piece_end, first_line, quotes)``:
    each piece ends just after a newline that ends a record (or at ``end``), ``first_line`` is the
    1-based physical line number of its first byte (0, unknown, after the first piece when
    ``count_lines`` is off: counting newlines is half the cost of the scan, and line numbers are
    only needed for bad rows, see ``line_at``), and ``quotes`` the number of quote characters in it
    (0 lets the reader take a faster path). The pieces cover the range exactly once.
    """
    q = quote or b""
    pos = start
    piece_start, piece_line, piece_quotes = start, first_line, 0
    lines = first_line
    parity = 0
    target = start + chunk_bytes
    searching = False
    f.seek(start)
    while pos < end:
        buf = f.read(min(READ_BLOCK, end - pos))
        if not buf:
            break
        n = len(buf)
        c = 0

        def advance(to: int) -> None:
            nonlocal c, lines, parity, piece_quotes
            if count_lines:
                lines += buf.count(b"\n", c, to)
            if q:
                k = buf.count(q, c, to)
                piece_quotes += k
                parity ^= k & 1
            c = to

        while c < n:
            if not searching:
                if target >= pos + n:
                    advance(n)
                    break
                advance(max(target - pos, c))
                searching = True
            i = buf.find(b"\n", c)
            if i < 0:
                advance(n)
                break
            advance(i + 1)
            if parity == 0:
                boundary = pos + c
                if boundary < end:
                    yield piece_start, boundary, piece_line, piece_quotes
                    piece_start, piece_line, piece_quotes = boundary, lines if count_lines else 0, 0
                target = boundary + chunk_bytes
                searching = False
        pos += n
    if piece_start < end:
        yield piece_start, end, piece_line, piece_quotes


def record_spans(data: bytes, quote: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of every record in ``data`` (which starts at a record boundary).

    A record ends after a newline with an even number of quotes before it; a final record without
    a newline ends at ``len(data)``. Empty lines (``\\n`` or ``\\r\\n`` alone) are left out, as the
    CSV parser skips them too.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == NL)
    if quote:
        quotes = np.flatnonzero(arr == quote[0])
        if len(quotes):
            before = np.searchsorted(quotes, newlines)
            newlines = newlines[(before & 1) == 0]
    ends = newlines + 1
    if len(data) and (not len(ends) or ends[-1] != len(data)):
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1])) if len(ends) else ends
    length = ends - starts
    blank = (length == 1) & (arr[starts.clip(max=max(len(data) - 1, 0))] == NL) if len(data) else length == 0
    crlf = (length == 2) & (arr[starts.clip(max=max(len(data) - 1, 0))] == 0x0D) if len(data) else length == 0
    keep = ~(blank | crlf)
    return starts[keep].astype(np.int64), ends[keep].astype(np.int64)


def line_numbers(data: bytes, offsets: np.ndarray, first_line: int) -> np.ndarray:
    """1-based physical line number of each byte offset in ``data``."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == NL)
    return np.searchsorted(newlines, offsets) + first_line


def line_at(path: str, offset: int, opener=open) -> int:
    """The 1-based line number of a byte offset, by counting the newlines before it."""
    lines, done = 1, 0
    with opener(path, "rb") as fh:
        while done < offset:
            buf = fh.read(min(READ_BLOCK, offset - done))
            if not buf:
                break
            lines += buf.count(b"\n")
            done += len(buf)
    return lines
