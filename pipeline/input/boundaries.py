"""Record boundaries of a text chunk, found by the process that reads it.

The plan cuts an uncompressed text file at fixed byte offsets (``Chunk.cut``) without reading it.
A chunk's records are those that *start* in its byte range, so every record belongs to exactly one
chunk at any chunk size; its bytes run from the first record boundary at or after the range's
start to the first one at or after its end.

Where a boundary is depends on one bit at the cut: whether the cut falls inside a quoted field.
That bit is a chain: the state at the end of range k follows from the state at its start and the
quote runs in the range (see ``split``: each run is identity, flip or reset). This is the two-phase
design of parallel CSV parsers (ParPaRaw): each range's transfer is computed by the worker that
reads the range, from the bytes it reads anyway, and the small prefix over the chain is shared:

- a worker learns the state at its range's start from the :class:`StateTable` (the local executor
  shares one between its workers), computes the state at its end and publishes it at once, before
  it parses, so the next range's worker normally finds its start state waiting;
- a worker that finds no state for its start (it started before its neighbour published, or runs
  alone, or on another machine) computes the missing links itself from the nearest known one:
  never a wrong guess, at worst some ranges' quote runs scanned twice.

Only quote characters are looked at for the chain; the boundaries themselves come from the one
state machine (:class:`split.Scanner`) run over a small window at each end of the range. With
``csv.comment`` set, the chain is kept at the first line start after each cut and each link comes
from the state machine itself (see the section below). Compressed files are not cut (read as one
stream).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np

from pipeline.errors import InputError
from pipeline.input.split import CR, JSON_LINES, LF, Dialect, Scanner, _terminators, end_state
from pipeline.input.storage import is_url, open_input

OUT, IN, UNKNOWN = 0, 1, -1
Data = bytes | bytearray   # a range's bytes: this process's read buffer, or bytes read on after it
WINDOW = 64 << 10      # bytes read past a range's end to find its last record's end
# How long a worker waits for the state at its cut from the worker on the range before it (which puts
# it in the shared table as soon as it has read that range) before reading that range itself: ranges
# are handed out in order, so that worker started first. A local range is read in milliseconds; an
# object-store one takes as long as fetching it again would.
WAIT_LOCAL = 0.05
WAIT_URL = 2.0
WAIT_POLL = 0.0005


@dataclass
class StateTable:
    """The quote state (``OUT``/``IN``) at each cut of each cut file; ``UNKNOWN`` until computed.

    ``array`` is shared memory (a ``multiprocessing`` RawArray) when several processes fill it;
    ``slots`` maps ``(path, range index)`` to its position there. Without one, a dict of this
    process. Values are deterministic, so concurrent writers agree and no lock is needed.
    """

    array: Any = None
    slots: dict[tuple[str, int], int] = field(default_factory=dict)
    local: dict[tuple[str, int], int] = field(default_factory=dict)

    def get(self, path: str, i: int) -> int:
        slot = self.slots.get((path, i))
        if slot is not None and self.array is not None:
            return int(self.array[slot])
        return self.local.get((path, i), UNKNOWN)

    def shared(self, path: str, i: int) -> bool:
        """Whether another process may fill in this cut (the table is shared and has a slot for it)."""
        return self.array is not None and (path, i) in self.slots

    def wait(self, path: str, i: int, seconds: float) -> int:
        """The state at a cut, waiting up to ``seconds`` for the process working on the range before
        it to put it in; ``UNKNOWN`` if it does not come."""
        deadline = time.monotonic() + seconds
        s = self.get(path, i)
        while s == UNKNOWN and time.monotonic() < deadline:
            time.sleep(WAIT_POLL)
            s = self.get(path, i)
        return s

    def put(self, path: str, i: int, state: int) -> None:
        slot = self.slots.get((path, i))
        if slot is not None and self.array is not None:
            self.array[slot] = state
        else:
            self.local[(path, i)] = state


def ranges_of(chunk) -> int:
    """How many cut ranges the chunk's file has."""
    return max(1, math.ceil((chunk.file.size - chunk.origin) / chunk.step))


def shared_slots(chunks, later: Iterable[tuple[str, int]] = ()) -> tuple[int, dict[tuple[str, int], int]]:
    """Positions in a shared table for every cut of the files of ``chunks`` (files cut in more than one
    range), and for ``later`` files not cut yet: (path, the most ranges it can be cut into)."""
    slots: dict[tuple[str, int], int] = {}
    seen: set[str] = set()
    ranges = []
    for c in chunks:
        if c.cut and c.file.path not in seen:
            seen.add(c.file.path)
            ranges.append((c.file.path, ranges_of(c)))
    for path, n in [*ranges, *later]:
        if n > 1:
            for i in range(1, n + 1):
                slots[(path, i)] = len(slots)
    return len(slots), slots


_TABLE = StateTable()


def use_table(table: StateTable) -> None:
    """The table this process reads and fills (a worker's, shared with its siblings)."""
    global _TABLE
    _TABLE = table


def table() -> StateTable:
    return _TABLE


# --------------------------------------------------------------------------- the chain


def _skip_run(buf: Data | np.ndarray, x: int, prev: int, quote: int | None) -> tuple[int, int]:
    """Past the rest of a quote run that started before ``x``: (new x, the byte before it)."""
    if quote is None or prev != quote:
        return x, prev
    while x < len(buf) and buf[x] == quote:
        x += 1
    return x, quote


def state_after(buf: Data, lo: int, hi: int, state: int, prev: int, d: Dialect) -> int:
    """The quote state after every quote run that starts in ``buf[lo:hi]``, from ``state`` at ``lo``.

    ``prev`` is the byte before ``lo`` (LF at the start of a file). A run that starts before ``hi``
    and goes on past it counts whole: ``buf`` must hold it (the caller reads past ``hi``).
    """
    q = d.quote
    if q is None:
        return OUT
    lo, prev = _skip_run(buf, lo, prev, q)
    if lo >= hi:
        return state
    e = hi
    while e < len(buf) and buf[e - 1] == q and buf[e] == q:
        e += 1
    return IN if end_state(buf, lo, e, q, d.delimiter, bool(state), prev) else OUT


def _transfer(fh: IO[bytes], chunk, i: int, starts: tuple[int, ...], d: Dialect) -> list[int]:
    """The state at the end of range ``i`` of the chunk's file, from each state in ``starts`` at its start."""
    a, b = range_bounds(chunk, i)
    lo = max(a - 1, 0)
    fh.seek(lo)
    if d.comment:
        buf: Data = fh.read(b - lo + 4096)
        buf, pa_ = _line_start_in(fh, buf, lo, a, chunk.file, d, first=i == 0)
        buf, pb_ = _line_start_in(fh, buf, lo, b, chunk.file, d)
        return [lines_state(buf, pa_, pb_, s, d) for s in starts]
    buf = fh.read(b - lo + 4096)
    prev = buf[a - lo - 1] if a > 0 else LF
    return [state_after(buf, a - lo, b - lo, s, prev, d) for s in starts]


def range_bounds(chunk, i: int) -> tuple[int, int]:
    a = chunk.origin + i * chunk.step
    return a, min(a + chunk.step, chunk.file.size)


def start_state(chunk, fh: IO[bytes], d: Dialect, states: StateTable | None = None) -> int:
    """The quote state at the chunk's cut: from the table, else computed from the nearest known cut."""
    if chunk.index == 0:
        return OUT
    if chunk.states[0] != UNKNOWN:
        return chunk.states[0]
    states = states or _TABLE
    path = chunk.file.path
    s = states.get(path, chunk.index)
    if s == UNKNOWN and states.shared(path, chunk.index):
        s = states.wait(path, chunk.index, WAIT_URL if is_url(path) else WAIT_LOCAL)
    if s != UNKNOWN:
        return s
    j = chunk.index - 1
    while j > 0 and states.get(path, j) == UNKNOWN:
        j -= 1
    s = OUT if j == 0 else states.get(path, j)
    for i in range(j, chunk.index):
        s = _transfer(fh, chunk, i, (s,), d)[0]
        states.put(path, i + 1, s)
    return s


# --------------------------------------------------------------------------- with csv.comment
#
# A comment line changes the state machine in ways a quote run does not (its quotes are not special),
# so with ``csv.comment`` the chain is kept at line starts instead of at the cuts themselves: the
# state at the cut ``x`` of a range is the state at the first line start at or after ``x`` (``x``
# itself when a line ends just before it). A comment line ends at its line end, so there the state
# is one of two again: outside quotes (a record, a blank or a comment line starts) or inside a
# quoted value that goes on. A range's records are those that start between its two line starts.


def line_start(arr: np.ndarray, x: int, prev: int, d: Dialect, eof: bool) -> int | None:
    """The first line start at or after ``x`` in ``arr`` (``prev``: the byte before ``x``); None when
    the bytes end first and more may follow (not ``eof``)."""
    if prev == LF or (d.cr and prev == CR and x < len(arr) and arr[x] != LF):
        return x
    if d.cr and prev == CR and x >= len(arr):
        return x if eof else None
    lo = x
    while lo < len(arr):
        hi = min(len(arr), lo + WINDOW)
        ends = _terminators(arr[lo:hi], d.cr)
        if len(ends):
            end = lo + int(ends[0])
            if d.cr and end == hi and arr[hi - 1] == CR and hi < len(arr) and arr[hi] == LF:
                return hi + 1     # a CRLF cut by the window
            if end == len(arr) and arr[end - 1] == CR and not eof:
                return None       # a CR at the end of the bytes read: CRLF or a line end of its own
            return end
        lo = hi
    return len(arr) if eof else None


def _line_start_in(fh: IO[bytes], buf: Data, lo: int, x: int, f, d: Dialect, first: bool = False
                   ) -> tuple[Data, int]:
    """(``buf``, read on as needed, and the first line start at or after file offset ``x`` in it);
    ``buf`` holds the file from ``lo``. The end of the file is a line start; so is a file's data
    start (``first``)."""
    while True:
        if first or x >= f.size:
            return buf, min(x, f.size) - lo
        arr = np.frombuffer(buf, dtype=np.uint8)
        eof = lo + len(buf) >= f.size
        at = line_start(arr, x - lo, int(arr[x - lo - 1]) if x > 0 else LF, d, eof)
        if at is not None:
            return buf, at
        buf = _read_on(fh, buf, lo, f)


# The bytes of the range a worker reads, kept from one chunk to the next: a chunk's own bytes (``Located.data``)
# are copied out of it. Reading each range into new memory, then slicing it into more, took about three times
# the CPU of reading into this buffer (W1: 0.28 against 0.09 s for its 102 ranges of 4 MB).
_READ_BUFFER = [bytearray()]


def _read_buffer(n: int) -> bytearray:
    """This process's read buffer, ``n`` bytes long (a new one while a view of the last one is kept)."""
    buf = _READ_BUFFER[0]
    try:
        buf.append(0)   # a resize, refused while anything views the buffer (reading into it is not)
        if len(buf) > n:
            del buf[n:]
        elif len(buf) < n:
            buf.extend(bytes(n - len(buf)))
    except BufferError:   # something still holds a view of the last range's bytes: leave them to it
        buf = _READ_BUFFER[0] = bytearray(n)
    return buf


def _read_range(fh: IO[bytes], a: int, b: int, f) -> tuple[int, Data]:
    """(offset, bytes) of a range ``a``-``b`` of file ``f``, from the byte before it to WINDOW past it
    (never past the size the plan saw), in this process's read buffer: valid until the next call."""
    lo = max(a - 1, 0)
    fh.seek(lo)
    buf = _read_buffer(min(b - lo + WINDOW, f.size - lo))
    got = 0
    with memoryview(buf) as view:
        while got < len(buf):
            k = cast(io.BufferedIOBase, fh).readinto(view[got:])
            if not k:
                break
            got += k
    if got < len(buf):
        del buf[got:]
    if lo + len(buf) < b:
        raise InputError(f"{f.path}: file changed while reading (expected {b - lo} bytes at offset {lo}, "
                         f"got {len(buf)})", file=f.path)
    return lo, buf


def _copy(buf: Data, start: int, end: int) -> bytes:
    """``buf[start:end]`` as bytes of its own (one copy, also from a bytearray)."""
    with memoryview(buf) as view:
        return bytes(view[start:end])


def _read_on(fh: IO[bytes], buf: Data, lo: int, f) -> Data:
    """``buf`` (the file from offset ``lo``) with the bytes after it read on; InputError if the file
    ended before the size the plan saw."""
    fh.seek(lo + len(buf))
    more = fh.read(min(max(len(buf), WINDOW), f.size - lo - len(buf)))
    if not more:
        raise InputError(f"{f.path}: file changed while reading (it ended before byte {f.size})", file=f.path)
    return buf + more


def _end_boundary(fh: IO[bytes], buf: Data, lo: int, x: int, state: int, prev: int, f, d: Dialect
                  ) -> tuple[Data, int]:
    """(``buf`` read on as needed, the first record boundary at or after ``x`` in it)."""
    while True:
        e = first_boundary(buf, x, state, prev, d, lo + len(buf) >= f.size)
        if e is not None:
            return buf, e
        buf = _read_on(fh, buf, lo, f)


def lines_state(buf: Data, p: int, q: int, state: int, d: Dialect) -> int:
    """The state at line start ``q`` from ``state`` at line start ``p`` (offsets in ``buf``)."""
    if q <= p:
        return state
    scan = Scanner(d, offset=p, inside=bool(state), prev=LF).feed(buf[p:q], final=True)
    return OUT if len(scan.breaks) and int(scan.breaks[-1]) == q else IN


def _locate_lines(chunk, d: Dialect, states: StateTable) -> Located:
    """``locate`` with csv.comment: the chunk's records are those that start between the line starts
    at or after its two cuts."""
    f = chunk.file
    a, b = chunk.start, chunk.end
    try:
        with open_input(f.path) as fh:
            lo, buf = _read_range(fh, a, b, f)
            buf, p = _line_start_in(fh, buf, lo, a, f, d, first=chunk.index == 0)
            buf, q = _line_start_in(fh, buf, lo, b, f, d)
            s = start_state(chunk, fh, d, states)
            if chunk.states[1] != UNKNOWN:
                s_end = chunk.states[1]
            else:
                s_end = lines_state(buf, p, q, s, d)
                if b < f.size:
                    states.put(f.path, chunk.index + 1, s_end)
            # the end: the first record boundary at or after q (a quoted value may go on past it)
            if s_end == OUT or lo + q >= f.size:
                e = q
            else:
                buf, e = _end_boundary(fh, buf, lo, q, s_end, LF, f, d)
    except OSError as exc:
        raise InputError(f"{f.path}: cannot read: {exc.strerror or exc}", file=f.path) from exc
    first = p if s == OUT else first_boundary(buf, p, s, LF, d, True, limit=e)
    start = e if first is None else min(first, e)
    return Located(_copy(buf, start, e), lo + start, lo + e, lo + e >= f.size)


# --------------------------------------------------------------------------- boundaries


def _is_eol_before(arr: np.ndarray, x: int, prev: int, d: Dialect) -> bool:
    """A line ends just before ``x`` (a CR followed by LF ends after the LF)."""
    if prev == LF:
        return True
    return d.cr and prev == CR and (x >= len(arr) or arr[x] != LF)


def first_boundary(buf: Data, x: int, state: int, prev: int, d: Dialect, eof: bool,
                   limit: int | None = None) -> int | None:
    """The first record boundary at or after ``x`` in ``buf[:limit]``, given the quote state at ``x``
    (after the runs that start before it) and the byte before it; None if the bytes end first.

    The end (``limit``, else ``buf``'s end) is the end of the file when ``eof``: the last record ends there.
    """
    n = len(buf) if limit is None else limit
    arr = np.frombuffer(buf, dtype=np.uint8, count=n)
    x, prev = _skip_run(arr, x, prev, d.quote)
    if state == OUT and (x < n or eof) and _is_eol_before(arr, x, prev, d):
        return x
    sc = Scanner(d, offset=x, inside=bool(state), prev=prev)
    pos, size = x, WINDOW
    while True:
        end = min(n, pos + size)
        scan = sc.feed(buf[pos:end], final=eof and end == n)
        if len(scan.breaks):
            return int(scan.breaks[0])
        if end == n:
            return n if eof else None
        pos = sc.offset
        size *= 2


@dataclass
class Located:
    """A cut chunk's records: their bytes and where they start in the file."""

    data: bytes
    start: int
    end: int
    final: bool            # the data ends the file


def locate(chunk, d: Dialect, states: StateTable | None = None) -> Located:
    """Read a cut chunk's records: from the first boundary at or after its start to the first one
    at or after its end. Publishes the state at its end before returning."""
    states = states or _TABLE
    if d.comment:
        return _locate_lines(chunk, d, states)
    f = chunk.file
    a, b = chunk.start, chunk.end
    try:
        with open_input(f.path) as fh:
            lo, buf = _read_range(fh, a, b, f)
            # the state at the cut after the range is read: by then the worker on the range before has
            # usually put it in the table (else it is worked out from that range, read again)
            s = start_state(chunk, fh, d, states)
            fh.seek(lo + len(buf))
            x = a - lo
            prev = buf[x - 1] if a > 0 else LF
            if chunk.states[1] != UNKNOWN:
                s_end = chunk.states[1]
            else:
                s_end = state_after(buf, x, b - lo, s, prev, d)
                if b < f.size:
                    states.put(f.path, chunk.index + 1, s_end)
            # the end: the first boundary at or after b (reading on until one is found)
            if b >= f.size:
                e = len(buf)
            else:
                buf, e = _end_boundary(fh, buf, lo, b - lo, s_end, int(buf[b - lo - 1]), f, d)
    except OSError as exc:
        raise InputError(f"{f.path}: cannot read: {exc.strerror or exc}", file=f.path) from exc
    if chunk.index == 0:
        start = x
    else:
        first = first_boundary(buf, x, s, prev, d, True, limit=e)
        start = e if first is None else min(first, e)
    return Located(_copy(buf, start, e), lo + start, lo + e, lo + e >= f.size)


def dialect_of(chunk, spec) -> Dialect:
    """The record rule of a chunk's file: JSON Lines end at LF; delimited text by the quoting rule."""
    if chunk.file.format in ("jsonl", "json"):
        return JSON_LINES
    return Dialect.csv(chunk.delimiter, spec.quote, spec.comment, spec.encoding)


def range_transfer(item: tuple) -> tuple[int, int]:
    """Phase one for range ``i`` of a cut chunk's file: its end state from OUT and from IN."""
    chunk, i, d = item
    with open_input(chunk.file.path) as fh:
        t_out, t_in = _transfer(fh, chunk, i, (OUT, IN), d)
    return t_out, t_in


def resolve_states(chunks, spec, map_fn=None) -> list:
    """The chunks with the quote state at both cuts of every cut range filled in (``Chunk.states``),
    for workers that share no table (Dask). Phase one computes every range's transfer through
    ``map_fn(function, items)`` (in parallel on a cluster; here by default); the prefix over the
    chain is composed here."""
    from dataclasses import replace

    files: dict[str, Any] = {}
    for c in chunks:
        if c.cut and ranges_of(c) > 1:
            files.setdefault(c.file.path, c)
    items = [(c, i, dialect_of(c, spec)) for c in files.values() for i in range(ranges_of(c) - 1)]
    results = list((map_fn or (lambda fn, xs: [fn(x) for x in xs]))(range_transfer, items))
    at: dict[tuple[str, int], int] = {}
    for path in files:
        at[(path, 0)] = OUT
    for (c, i, _), (t_out, t_in) in zip(items, results):
        s = at[(c.file.path, i)]
        at[(c.file.path, i + 1)] = t_in if s == IN else t_out
    return [replace(c, states=(at.get((c.file.path, c.index), OUT), at.get((c.file.path, c.index + 1), OUT)))
            if c.cut else c for c in chunks]
