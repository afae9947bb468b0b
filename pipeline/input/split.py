"""Record boundaries in delimited text: the one quoting state machine of the project.

The parser (pyarrow's CSV reader, like Python's ``csv`` module and DuckDB) treats a quote
character as special only at the start of a field. Inside a quoted field, ``""`` is a quote and
a newline is data; the quote that closes the field may be followed by more unquoted text (which
joins the value). Anywhere else a quote is an ordinary character: ``5" disk`` is a value. A line
ends at LF, CRLF or a lone CR. The splitter (record boundaries of chunks), the header reader and
the record index used to find bad rows all use :class:`Scanner`, so they agree with the parser and
with each other: the same file gives the same records at every chunk size.

Vectorised with numpy: the automaton only needs the runs of consecutive quote characters. A run
of odd length that starts a field (the byte before it is a delimiter or a line end) opens a quoted
field when outside one; inside a quoted field any odd run closes it; an odd run that does not
start a field is literal outside and closes the field inside; an even run changes nothing. So each
run is one of three functions of the "inside quotes" bit: identity, flip, or "set to outside".
The bit after every run follows from a cumulative sum of flips since the last reset, without a
Python loop over bytes or fields. The same property gives a range of bytes a transfer function
(start state -> end state and boundaries), which is what a parallel two-phase boundary finder needs.

A comment prefix (``csv.comment``) makes a line that starts a record with the prefix a comment:
the line is skipped whole, quotes in it included.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

LF = 0x0A
CR = 0x0D
READ_BLOCK = 8 << 20
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Dialect:
    """The bytes that decide where records end. JSON Lines: no quote, no delimiter, LF only."""

    delimiter: int | None = 0x2C
    quote: int | None = 0x22
    comment: bytes | None = None
    cr: bool = True  # a lone CR ends a line (CSV, as pyarrow and Python's csv read it)

    @classmethod
    def csv(cls, delimiter: str = ",", quote: str | None = '"', comment: str | None = None,
            encoding: str = "utf-8") -> Dialect:
        d = delimiter.encode(encoding)
        q = quote.encode(encoding) if quote else None
        return cls(d[0] if len(d) == 1 else None, q[0] if q and len(q) == 1 else None,
                   comment.encode(encoding) if comment else None, True)


JSON_LINES = Dialect(None, None, None, False)


def _terminators(arr: np.ndarray, cr: bool) -> np.ndarray:
    """Offsets just after every line end (LF, CRLF as one, lone CR) in ``arr``."""
    lf = np.flatnonzero(arr == LF)
    if not cr:
        return lf + 1
    crs = np.flatnonzero(arr == CR)
    if not len(crs):
        return lf + 1
    nxt = crs + 1
    lone = crs[(nxt >= len(arr)) | (arr[np.minimum(nxt, len(arr) - 1)] != LF)]
    if not len(lone):
        return lf + 1
    return np.sort(np.concatenate((lf, lone))) + 1


def _quote_runs(arr: np.ndarray, a: int, e: int, quote: int, delimiter: int | None, inside: bool,
                prev: int) -> tuple[np.ndarray, np.ndarray]:
    """(start of every quote run in ``arr[a:e]``, inside-quotes bit after it), from state ``inside``."""
    idx = np.flatnonzero(arr[a:e] == quote) + a
    if not len(idx):
        return _EMPTY, np.zeros(0, dtype=bool)
    brk = np.flatnonzero(np.diff(idx) != 1)
    run_start = idx[np.concatenate(([0], brk + 1))]
    run_end = idx[np.concatenate((brk, [len(idx) - 1]))] + 1
    odd = ((run_end - run_start) & 1).astype(bool)
    before = np.where(run_start > a, arr[np.maximum(run_start - 1, 0)], prev)
    at_field_start = (before == LF) | (before == CR)
    if delimiter is not None:
        at_field_start |= before == delimiter
    flip = odd & at_field_start
    reset = odd & ~at_field_start
    n = len(run_start)
    cum = np.cumsum(flip)
    last_reset = np.maximum.accumulate(np.where(reset, np.arange(n), -1))
    since = cum - np.where(last_reset >= 0, cum[np.maximum(last_reset, 0)], -int(inside))
    return run_start, (since & 1).astype(bool)


def end_state(buf: bytes | bytearray, a: int, e: int, quote: int, delimiter: int | None, inside: bool,
              prev: int, budget: int = 64) -> bool:
    """The inside-quotes bit after every quote run in ``buf[a:e]`` from state ``inside`` (the last value
    of :func:`_quote_runs`), found from the end backwards.

    Only the runs after the last reset (an odd run that does not start a field: the quote that closes
    a quoted value) matter: the bit is the parity of the flips after it. In most text that reset is
    a few bytes before ``e``, so this looks at the quotes near the end only, instead of every quote
    in the range. After ``budget`` runs without one, the rest is evaluated forwards by
    :func:`_quote_runs`. ``buf[a:e]`` must start and end between quote runs, as there."""
    q = bytes([quote])
    flips = 0
    pos = e
    while True:
        j = buf.rfind(q, a, pos)
        if j < 0:
            return inside ^ bool(flips & 1)
        k = j
        while k > a and buf[k - 1] == quote and budget > 0:
            k -= 1
            budget -= 1
        if budget <= 0:
            # the prefix up to the end of this run, forwards, then the flips after it
            runs, after = _quote_runs(np.frombuffer(buf, dtype=np.uint8, count=j + 1), a, j + 1, quote,
                                      delimiter, inside, prev)
            head = bool(after[-1]) if len(runs) else inside
            return head ^ bool(flips & 1)
        if (j - k + 1) & 1:
            before = buf[k - 1] if k > a else prev
            if before in (LF, CR) or (delimiter is not None and before == delimiter):
                flips += 1
            else:
                return bool(flips & 1)
        pos = k
        budget -= 1


def _segment(arr: np.ndarray, a: int, e: int, d: Dialect, inside: bool, prev: int) -> tuple[np.ndarray, bool]:
    """Record ends (offsets after a line end outside quotes) in ``arr[a:e]``, and the state at ``e``."""
    if a >= e:
        return _EMPTY, inside
    ends = _terminators(arr[a:e], d.cr) + a
    if d.quote is None:
        return ends, False
    runs, after = _quote_runs(arr, a, e, d.quote, d.delimiter, inside, prev)
    if not len(runs):
        return (_EMPTY if inside else ends), inside
    k = np.searchsorted(runs, ends - 1) - 1   # the last run before each line end
    state = np.where(k >= 0, after[np.maximum(k, 0)], inside)
    return ends[~state], bool(after[-1])


@dataclass
class Scan:
    """What one :meth:`Scanner.feed` found. Offsets are absolute (the scanner's ``offset`` base)."""

    breaks: np.ndarray                 # end of every record and comment line, in order
    comment: np.ndarray                # per break: it ends a comment line
    consumed: int                      # bytes of the buffer taken (the rest must be fed again)


@dataclass
class Scanner:
    """The quoting state machine, fed consecutive buffers of one file from a record boundary."""

    dialect: Dialect
    offset: int = 0           # absolute offset of the next byte fed
    inside: bool = False      # inside a quoted field
    prev: int = LF            # the byte before ``offset`` (a line end: a record starts there)
    in_comment: bool = False  # inside a comment line
    comments: int = 0         # comment lines met

    def feed(self, buf: bytes | bytearray, final: bool = False) -> Scan:
        d = self.dialect
        cut = len(buf)
        if not final and cut:
            # hold back what the next bytes decide: a quote run, a CR (CRLF?), a partial comment prefix
            last = buf[cut - 1]
            if d.quote is not None and last == d.quote:
                cut = len(buf.rstrip(bytes([d.quote])))
            elif d.cr and last == CR:
                cut -= 1
            if d.comment and len(d.comment) > 1:
                line_start = max(buf.rfind(b"\n", 0, cut), buf.rfind(b"\r", 0, cut) if d.cr else -1) + 1
                if cut - line_start < len(d.comment):
                    cut = line_start
        arr = np.frombuffer(buf, dtype=np.uint8, count=cut)
        base = self.offset
        breaks: list[np.ndarray] = []
        flags: list[np.ndarray] = []
        pos = search = 0
        while pos < cut:
            if self.in_comment:
                ends = _terminators(arr[pos:cut], d.cr)
                if not len(ends):
                    pos = cut
                    break
                pos = search = pos + int(ends[0])
                breaks.append(np.array([pos], dtype=np.int64))
                flags.append(np.ones(1, dtype=bool))
                self.in_comment, self.inside, self.prev = False, False, LF
                self.comments += 1
                continue
            comment_at = self._next_comment(buf, search, cut) if d.comment else -1
            stop = comment_at if comment_at >= 0 else cut
            ends, self.inside = _segment(arr, pos, stop, d, self.inside, self.prev)
            if len(ends):
                breaks.append(ends.astype(np.int64))
                flags.append(np.zeros(len(ends), dtype=bool))
            if stop > pos:
                self.prev = buf[stop - 1]
            pos = stop
            if comment_at < 0:
                break
            if not self.inside:
                # a line end outside quotes came just before: a record starts here, and it is a comment
                self.in_comment = True
            else:
                search = comment_at + 1  # a line of a quoted value that happens to start with the prefix
        self.offset = base + cut
        return Scan(np.concatenate(breaks) + base if breaks else _EMPTY,
                    np.concatenate(flags) if flags else np.zeros(0, dtype=bool), cut)

    def _next_comment(self, buf: bytes | bytearray, pos: int, cut: int) -> int:
        """The first offset >= pos in ``buf[:cut]`` where a line starts with the comment prefix."""
        prefix = self.dialect.comment
        assert prefix is not None
        i = pos
        while True:
            i = buf.find(prefix, i, cut)
            if i < 0:
                return -1
            if (i == 0 and _is_eol(self.prev)) or (i > 0 and _is_eol(buf[i - 1])):
                return i
            i += 1

    @property
    def unterminated(self) -> bool:
        """After the final feed: the last record opens a quote that never closes."""
        return self.inside


def _is_eol(byte: int) -> bool:
    return byte in (LF, CR)


@dataclass
class Records:
    """The records of a buffer that starts at a record boundary."""

    starts: np.ndarray
    ends: np.ndarray
    comments: np.ndarray          # (start, end) of every comment line, shape (k, 2)
    unterminated: bool            # the last record opens a quote that never closes


def record_spans(data: bytes, dialect: Dialect) -> Records:
    """Every record of ``data`` (blank lines and comment lines left out, as the parser sees them)."""
    sc = Scanner(dialect)
    scan = sc.feed(data, final=True)
    breaks, is_comment = scan.breaks, scan.comment
    if len(data) and (not len(breaks) or breaks[-1] != len(data)):
        breaks = np.append(breaks, len(data))
        is_comment = np.append(is_comment, sc.in_comment)
    starts = np.concatenate(([0], breaks[:-1])).astype(np.int64) if len(breaks) else _EMPTY
    ends = breaks.astype(np.int64)
    comments = (np.stack((starts[is_comment], ends[is_comment]), axis=1) if is_comment.any()
                else np.zeros((0, 2), np.int64))
    keep = ~is_comment
    starts, ends = starts[keep], ends[keep]
    if len(starts):
        arr = np.frombuffer(data, dtype=np.uint8)
        content = ends - starts
        last = arr[np.maximum(ends - 1, 0)]
        eol = (last == LF) | ((last == CR) if dialect.cr else False)
        content = content - eol
        crlf = eol & (last == LF) & (content > 0) & (arr[np.maximum(ends - 2, 0)] == CR)
        blank = (content - crlf) == 0
        starts, ends = starts[~blank], ends[~blank]
    return Records(starts, ends, comments, sc.unterminated)


def split_ranges(f: IO[bytes], start: int, end: int, chunk_bytes: int, dialect: Dialect,
                 first_line: int = 1, count_lines: bool = True) -> Iterator[tuple[int, int, int, int]]:
    """Cut ``[start, end)`` of an open binary file into pieces of about ``chunk_bytes``.

    ``start`` must be a record boundary. Yields ``(piece_start, piece_end, first_line, quotes)``:
    each piece ends at a record boundary of the state machine (or at ``end``), ``first_line`` is
    the 1-based physical line number of its first byte (0, unknown, after the first piece when
    ``count_lines`` is off: line numbers are only needed for bad rows, see ``line_at``), and
    ``quotes`` the number of quote characters in it (0 lets the reader take a faster path). The
    pieces cover the range exactly once.

    Blocks without a quote, a CR or a comment prefix take a fast path (``bytes.find``); others go
    through :class:`Scanner`.
    """
    d = dialect
    qbyte = bytes([d.quote]) if d.quote is not None else b""
    sc = Scanner(d, offset=start)
    piece_start, piece_line, piece_quotes = start, first_line, 0
    lines = first_line
    target = start + chunk_bytes
    f.seek(start)
    pos = start
    pending = b""
    while pos < end or pending:
        more = f.read(min(READ_BLOCK, end - pos)) if pos < end else b""
        pos += len(more)
        buf = pending + more
        final = pos >= end
        if not buf:
            break
        simple = (not sc.inside and not d.comment and (not qbyte or qbyte not in buf)
                  and (not d.cr or b"\r" not in buf))
        if simple:
            base = sc.offset
            cut = len(buf)
            breaks = None
        else:
            scan = sc.feed(buf, final)
            base, cut, breaks = sc.offset - scan.consumed, scan.consumed, scan.breaks
        c = 0  # bytes of buf accounted for in lines/quotes
        while True:
            rel = target - base
            if rel >= cut:
                break
            if breaks is None:
                i = buf.find(b"\n", max(rel, c), cut)
                b = base + i + 1 if i >= 0 else -1
            else:
                k = np.searchsorted(breaks, max(target, base + c), side="right")
                b = int(breaks[k]) if k < len(breaks) else -1
            if b < 0:
                break
            if count_lines:
                lines += count_line_ends(buf, c, b - base, d.cr)
            if qbyte:
                piece_quotes += buf.count(qbyte, c, b - base)
            c = b - base
            if b < end:
                yield piece_start, b, piece_line, piece_quotes
                piece_start, piece_line, piece_quotes = b, lines if count_lines else 0, 0
            target = b + chunk_bytes
        if count_lines:
            lines += count_line_ends(buf, c, cut, d.cr)
        if qbyte:
            piece_quotes += buf.count(qbyte, c, cut)
        if breaks is None:
            sc.offset = base + cut
            sc.prev = buf[cut - 1] if cut else sc.prev
        pending = buf[cut:]
        if final:
            break
    if piece_start < end:
        yield piece_start, end, piece_line, piece_quotes


def count_line_ends(buf: bytes, a: int, b: int, cr: bool = True) -> int:
    """Line ends (LF, CRLF, lone CR) in buf[a:b]."""
    n = buf.count(b"\n", a, b)
    if cr:
        n += buf.count(b"\r", a, b) - buf.count(b"\r\n", a, b)
    return n


def line_numbers(data: bytes, offsets: np.ndarray, first_line: int, cr: bool = True) -> np.ndarray:
    """1-based physical line number of each byte offset in ``data`` (LF, CRLF and lone CR end lines)."""
    ends = _terminators(np.frombuffer(data, dtype=np.uint8), cr)
    return np.searchsorted(ends, np.asarray(offsets), side="right") + first_line


def line_at(path: str, offset: int, opener=open, cr: bool = True) -> int:
    """The 1-based line number of a byte offset, by counting the line ends before it."""
    lines, done = 1, 0
    carry_cr = False
    with opener(path, "rb") as fh:
        while done < offset:
            buf = fh.read(min(READ_BLOCK, offset - done))
            if not buf:
                break
            lines += count_line_ends(buf, 0, len(buf), cr)
            if cr and carry_cr and buf.startswith(b"\n"):
                lines -= 1   # CR at the end of the last buffer and LF here: one line end, counted twice
            carry_cr = buf.endswith(b"\r")
            done += len(buf)
    return lines
