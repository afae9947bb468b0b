"""Chunk -> blocks of Arrow data in the input schema, plus bad rows with file, line and reason.

Every format goes through the same two paths:
- the fast path hands the whole block to pyarrow's reader with the plan's column types;
- if that raises (a ragged row, a value that does not fit its type, invalid UTF-8), the slow path
  splits the block into records and bisects: halves that parse are kept, and a single record that
  does not parse is a bad row, with the parser's own reason. Bad rows cost O(k log n) parses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipeline.errors import InputError
from pipeline.input.plan import Chunk, ReadSpec
from pipeline.input.split import line_at, line_numbers, record_spans
from pipeline.input.storage import open_input, parquet_file
from pipeline.input.streams import open_decompressed

STREAM_READ = 8 << 20


@dataclass
class BadRow:
    file: str
    line: int | None
    offset: int | None
    stage: str
    reason: str
    raw: str | None


@dataclass
class Block:
    """The good rows of a piece of a chunk, and how to find any of them in the file."""

    table: pa.Table
    bad: list[BadRow]
    rows_read: int
    locate: Callable[[np.ndarray], list[tuple[int | None, int | None, str | None]]] = field(repr=False)


# --------------------------------------------------------------------------- parsing a block


def _csv_parser(chunk: Chunk, spec: ReadSpec) -> Callable[[bytes], pa.Table]:
    names = list(chunk.columns)
    types = {f.name: f.type for f in spec.schema if f.name in names}
    quote = spec.quote
    read_options = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 30,
                                     encoding=spec.encoding)
    convert = pacsv.ConvertOptions(column_types=types, null_values=list(spec.null_values),
                                   strings_can_be_null=True, quoted_strings_can_be_null=True)
    multiline = pacsv.ParseOptions(delimiter=chunk.delimiter, quote_char=quote or False,
                                   newlines_in_values=bool(quote), ignore_empty_lines=True)
    simple = pacsv.ParseOptions(delimiter=chunk.delimiter, quote_char=quote or False,
                                newlines_in_values=False, ignore_empty_lines=True)

    def parse(data: bytes) -> pa.Table:
        if not data.strip(b"\r\n"):
            return pa.table({n: pa.array([], types[n]) for n in names})
        # Without quote characters no value can hold a newline: the faster parser is exact.
        opts = multiline if quote and quote.encode() in data else simple
        return pacsv.read_csv(pa.py_buffer(data), read_options=read_options, parse_options=opts,
                              convert_options=convert)

    return parse


def _json_parser(spec: ReadSpec) -> Callable[[bytes], pa.Table]:
    parse_options = pajson.ParseOptions(explicit_schema=spec.schema, unexpected_field_behavior="error")

    def parse(data: bytes) -> pa.Table:
        if not data.strip():
            return pa.Table.from_batches([], schema=spec.schema)
        opts = pajson.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
        return pajson.read_json(pa.py_buffer(data), read_options=opts, parse_options=parse_options)

    return parse


_CSV_COLUMN = re.compile(r"^In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\S+): (.*)$", re.S)
_CSV_PARSE = re.compile(r"^CSV parse error: (?:Row #\d+: )?(Expected \d+ columns, got \d+)", re.S)


def _reason(exc: Exception, names: list[str]) -> str:
    msg = str(exc).strip()
    m = _CSV_COLUMN.match(msg)
    if m:
        i = int(m.group(1))
        col = names[i] if i < len(names) else f"#{i}"
        return f"column {col!r}: cannot convert to {m.group(2)}: {m.group(3)}"
    m = _CSV_PARSE.match(msg)
    if m:
        return m.group(1).replace("Expected", "expected")
    if msg.startswith("JSON parse error: "):
        text = msg[len("JSON parse error: "):].split("\n")[0]
        return "invalid JSON: " + re.sub(r"\.? in row \d+$", "", text)
    return msg.split("\n")[0]


def parse_block(data: bytes, parse: Callable[[bytes], pa.Table], *, file: str, base_offset: int,
                first_line: int | Callable[[], int], quote: bytes | None, max_record: int, names: list[str],
                check_lengths: bool, to_schema: Callable[[pa.Table], pa.Table]) -> Block:
    """Parse ``data`` (whole records) into a Block; see the module docstring for the two paths.

    ``first_line`` is the line number of the first byte, or a function that counts it: it is
    needed only to name the lines of bad rows.
    """
    spans: list[tuple[np.ndarray, np.ndarray]] = []
    if callable(first_line):
        counted: list[int] = []
        count = first_line

        def line_base() -> int:
            if not counted:
                counted.append(count())
            return counted[0]
    else:
        fixed = first_line

        def line_base() -> int:
            return fixed

    def all_spans() -> tuple[np.ndarray, np.ndarray]:
        if not spans:
            spans.append(record_spans(data, quote))
        return spans[0]

    def raw_of(s: int, e: int) -> str:
        return data[s:e].rstrip(b"\r\n").decode("utf-8", errors="replace")

    try:
        table = parse(data)
        if check_lengths and len(data) > max_record and _longest_value(table) > max_record:
            raise _TooLong()
        table = to_schema(table)
        starts_cache: list[np.ndarray] = []

        def locate(rows: np.ndarray):
            if not starts_cache:
                st, en = all_spans()
                starts_cache.append(st)
                starts_cache.append(en)
            st, en = starts_cache
            if len(st) != table.num_rows:
                return [(None, None, None)] * len(rows)
            lines = line_numbers(data, st[rows], line_base())
            return [(int(ln), base_offset + int(st[r]), raw_of(int(st[r]), int(en[r]))) for ln, r in zip(lines, rows)]

        return Block(table, [], table.num_rows, locate)
    except (pa.ArrowInvalid, _TooLong):
        pass

    starts, ends = all_spans()
    lines = line_numbers(data, starts, line_base())
    bad: list[BadRow] = []
    good_pieces: list[tuple[int, pa.Table]] = []
    good_index: list[np.ndarray] = []

    def bad_row(i: int, reason: str) -> None:
        bad.append(BadRow(file, int(lines[i]), base_offset + int(starts[i]), "read", reason,
                          raw_of(int(starts[i]), int(ends[i]))[:max_record]))

    def bisect(i: int, j: int) -> None:
        if i >= j:
            return
        try:
            t = parse(data[int(starts[i]):int(ends[j - 1])])
            if t.num_rows != j - i:
                raise pa.ArrowInvalid(f"expected {j - i} records, parsed {t.num_rows}")
            good_pieces.append((i, t))
            good_index.append(np.arange(i, j))
        except pa.ArrowInvalid as exc:
            if j - i == 1:
                bad_row(i, _reason(exc, names))
                return
            m = (i + j) // 2
            bisect(i, m)
            bisect(m, j)

    lengths = ends - starts
    too_long = np.flatnonzero(lengths > max_record)
    prev = 0
    for i in list(too_long) + [len(starts)]:
        bisect(prev, int(i))
        if i < len(starts):
            bad_row(int(i), f"record of {int(lengths[i])} bytes is longer than input.max_record_bytes "
                            f"({max_record}); an unterminated quote?")
        prev = int(i) + 1
    bad.sort(key=lambda b: b.offset or 0)
    tables = [to_schema(t) for _, t in sorted(good_pieces, key=lambda p: p[0])]
    table = pa.concat_tables(tables) if tables else to_schema(parse(b""))
    index = np.concatenate(good_index) if good_index else np.zeros(0, dtype=np.int64)
    index.sort()

    def locate_slow(rows: np.ndarray):
        recs = index[rows]
        return [(int(lines[r]), base_offset + int(starts[r]), raw_of(int(starts[r]), int(ends[r]))) for r in recs]

    return Block(table, bad, len(starts), locate_slow)


class _TooLong(Exception):
    pass


def _longest_value(table: pa.Table) -> int:
    import pyarrow.compute as pc

    longest = 0
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_binary(col.type):
            m = pc.max(pc.binary_length(col)).as_py()
            longest = max(longest, m or 0)
    return longest


def conform(schema: pa.Schema) -> Callable[[pa.Table], pa.Table]:
    """A function that orders a parsed table's columns as the schema, adding missing ones as nulls."""
    names = schema.names

    def to_schema(table: pa.Table) -> pa.Table:
        if table.column_names == names and table.schema == schema:
            return table
        cols = []
        for fld in schema:
            if fld.name in table.column_names:
                col = table.column(fld.name)
                cols.append(col if col.type == fld.type else col.cast(fld.type))
            else:
                cols.append(pa.nulls(table.num_rows, fld.type))
        return pa.Table.from_arrays(cols, schema=schema)

    return to_schema


# --------------------------------------------------------------------------- chunks -> blocks


def read_chunk(chunk: Chunk, spec: ReadSpec) -> Iterator[Block]:
    """The blocks of a chunk, in order. Uncompressed text: one block; streams: bounded blocks."""
    f = chunk.file
    if f.format == "parquet":
        yield from _read_parquet(chunk, spec)
        return
    if f.format == "jsonl":
        parse = _json_parser(spec)
        quote = None
        names = spec.schema.names
    else:
        parse = _csv_parser(chunk, spec)
        quote = spec.quote.encode() if spec.quote else None
        names = list(chunk.columns)
    to_schema = conform(spec.schema)

    def block(data: bytes, offset: int, line: int | Callable[[], int], quotes: int, final: bool) -> Block:
        result = parse_block(data, parse, file=f.path, base_offset=offset, first_line=line, quote=quote,
                             max_record=spec.max_record_bytes, names=names,
                             check_lengths=quotes != 0, to_schema=to_schema)
        if f.format == "jsonl" and final and result.bad and data and not data.endswith(b"\n"):
            last = result.bad[-1]
            if last.offset == offset + data.rfind(b"\n") + 1:
                raise InputError(f"{f.path} line {last.line}: the last line is cut short (invalid JSON and no "
                                 f"final newline); the file looks truncated", file=f.path, line=last.line)
        return result

    if chunk.end >= 0 and not f.compression:
        try:
            with open_input(f.path) as fh:
                fh.seek(chunk.start)
                data = fh.read(chunk.end - chunk.start)
        except OSError as exc:
            raise InputError(f"{f.path}: cannot read: {exc.strerror}", file=f.path) from exc
        if len(data) != chunk.end - chunk.start:
            raise InputError(f"{f.path}: file changed while reading (expected {chunk.end - chunk.start} bytes "
                             f"at offset {chunk.start}, got {len(data)})", file=f.path)
        first = chunk.first_line or (lambda: line_at(f.path, chunk.start, opener=lambda path, mode: open_input(path)))
        yield block(data, chunk.start, first, chunk.quotes, chunk.end == f.size)
        return

    previous = None
    for piece in stream_blocks(chunk, spec, quote):
        if previous is not None:
            yield block(*previous, -1, False)
        previous = piece
    if previous is not None:
        yield block(*previous, -1, True)


def last_boundary(data: bytes, quote: bytes | None) -> int:
    """Offset just after the last newline that ends a record (0 if none)."""
    if quote is None or quote not in data:
        return data.rfind(b"\n") + 1
    _starts, ends = record_spans(data, quote)
    complete = ends[(ends > 0) & (ends <= len(data))]
    for e in complete[::-1]:
        if data[int(e) - 1] == 0x0A:
            return int(e)
    return 0


def stream_blocks(chunk: Chunk, spec: ReadSpec, quote: bytes | None) -> Iterator[tuple[bytes, int, int]]:
    """Decompress a file as a stream and cut it into blocks of about ``block_bytes`` whole records.

    Never holds more than about two blocks of the decompressed file in memory.
    """
    f = chunk.file
    with open_decompressed(f.path, f.compression, spec.max_decompressed_bytes) as stream:
        skipped = stream.read(chunk.start) if chunk.start else b""
        if len(skipped) != chunk.start:
            raise InputError(f"{f.path}: ended inside its header", file=f.path)
        offset, line = chunk.start, chunk.first_line
        pending = b""
        while True:
            piece = stream.read(STREAM_READ)
            if piece:
                pending += piece
                if len(pending) < spec.block_bytes:
                    continue
                cut = last_boundary(pending, quote)
                if cut == 0:
                    if len(pending) > spec.max_record_bytes + spec.block_bytes:
                        raise InputError(
                            f"{f.path} line {line}: a record longer than input.max_record_bytes "
                            f"({spec.max_record_bytes}); an unterminated quote?", file=f.path, line=line)
                    continue
                data, pending = pending[:cut], pending[cut:]
            else:
                data, pending = pending, b""
            if data:
                yield data, offset, line
                offset += len(data)
                line += data.count(b"\n")
            if not piece:
                return


def _read_parquet(chunk: Chunk, spec: ReadSpec) -> Iterator[Block]:
    f = chunk.file
    try:
        pf = parquet_file(f.path)
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(chunk.row_groups[0]))
        present = [n for n in spec.schema.names if n in pf.schema_arrow.names]
        table = pf.read_row_groups(list(chunk.row_groups), columns=present, use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{f.path}: cannot read Parquet row groups {chunk.row_groups}: {exc}", file=f.path) from exc
    to_schema = conform(spec.schema)
    try:
        out = to_schema(table)
        good = None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out, good = _cast_rows(table, to_schema)
    bad = []
    if good is not None:
        for r in np.flatnonzero(~good):
            row = table.slice(int(r), 1).to_pylist()[0]
            bad.append(BadRow(f.path, first_row + int(r) + 1, None, "read",
                              "a value does not fit the column type in input.schema", str(row)))
    kept = np.flatnonzero(good) if good is not None else None

    def locate(rows: np.ndarray):
        rs = kept[rows] if kept is not None else rows
        return [(first_row + int(r) + 1, None, str(table.slice(int(r), 1).to_pylist()[0])) for r in rs]

    yield Block(out, bad, table.num_rows, locate)


def _cast_rows(table: pa.Table, to_schema) -> tuple[pa.Table, np.ndarray]:
    good = np.ones(table.num_rows, dtype=bool)
    pieces = []

    def bisect(i: int, j: int) -> None:
        if i >= j:
            return
        try:
            pieces.append((i, to_schema(table.slice(i, j - i))))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if j - i == 1:
                good[i] = False
                return
            m = (i + j) // 2
            bisect(i, m)
            bisect(m, j)

    bisect(0, table.num_rows)
    tables = [t for _, t in sorted(pieces, key=lambda p: p[0])]
    return (pa.concat_tables(tables) if tables else to_schema(table.slice(0, 0))), good


def raw_records(chunk: Chunk, spec: ReadSpec) -> Iterator[tuple[int | None, int | None, str]]:
    """(line, byte offset, raw text) of every record of a chunk, without parsing values.

    Used to quarantine a whole chunk that no worker could process.
    """
    f = chunk.file
    if f.format == "parquet":
        pf = parquet_file(f.path)
        first = sum(pf.metadata.row_group(i).num_rows for i in range(chunk.row_groups[0]))
        n = sum(pf.metadata.row_group(i).num_rows for i in chunk.row_groups)
        for i in range(n):
            yield first + i + 1, None, ""
        return
    quote = spec.quote.encode() if spec.quote and f.format != "jsonl" else None
    blocks: Iterable[tuple[bytes, int, int]]
    if chunk.end >= 0 and not f.compression:
        with open_input(f.path) as fh:
            fh.seek(chunk.start)
            blocks = [(fh.read(chunk.end - chunk.start), chunk.start,
                       chunk.first_line or line_at(f.path, chunk.start, opener=lambda path, mode: open_input(path)))]
    else:
        blocks = stream_blocks(chunk, spec, quote)
    for data, offset, line in blocks:
        starts, ends = record_spans(data, quote)
        lines = line_numbers(data, starts, line)
        for s, e, ln in zip(starts, ends, lines):
            yield int(ln), offset + int(s), data[int(s):int(e)].rstrip(b"\r\n").decode("utf-8", errors="replace")
