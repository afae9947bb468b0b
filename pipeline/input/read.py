"""Chunk -> blocks of Arrow data in the input schema, plus bad rows with file, line and reason.

Every format goes through the same two paths:
- the fast path hands the whole block to pyarrow's reader with the plan's column types;
- if that raises (a ragged row, a value that does not fit its type, invalid UTF-8), the slow path
  splits the block into records and bisects: halves that parse are kept, and a single record that
  does not parse is a bad row, with the parser's own reason. Bad rows cost O(k log n) parses.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipeline import arrays
from pipeline.dtypes import type_name
from pipeline.errors import InputError
from pipeline.input import boundaries, json_array
from pipeline.input.boundaries import dialect_of
from pipeline.input.chunks import Chunk, ReadSpec
from pipeline.input.split import JSON_LINES, Dialect, Scanner, count_line_ends, line_at, line_numbers, record_spans
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
    skipped: int = 0       # comment lines left out (csv.comment)


# --------------------------------------------------------------------------- parsing a block

_TEXT = re.compile(rb"[^\r\n]")
_NOT_SPACE = re.compile(rb"\S")


def _csv_parser(chunk: Chunk, spec: ReadSpec) -> Callable[[bytes], pa.Table]:
    names = list(chunk.columns)
    wanted = spec.read_schema.names
    # the columns no stage reads are split off but never converted (pyarrow's include_columns)
    included = names if spec.columns is None else [n for n in names if n in wanted]
    types = {f.name: f.type for f in spec.schema if f.name in included}
    quote = spec.quote
    read_options = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 30,
                                     encoding=spec.encoding)
    convert = pacsv.ConvertOptions(column_types=types, null_values=list(spec.null_values),
                                   strings_can_be_null=True, quoted_strings_can_be_null=True,
                                   include_columns=included)
    multiline = pacsv.ParseOptions(delimiter=chunk.delimiter, quote_char=quote or False,
                                   newlines_in_values=bool(quote), ignore_empty_lines=True)
    simple = pacsv.ParseOptions(delimiter=chunk.delimiter, quote_char=quote or False,
                                newlines_in_values=False, ignore_empty_lines=True)

    def parse(data: bytes) -> pa.Table:
        if not _TEXT.search(data):     # line ends only (found at the first byte that is not, no copy)
            return pa.table({n: pa.nulls(0, types[n]) for n in included})   # no Python values: no pandas
        # Without quote characters no value can hold a newline: the faster parser is exact.
        opts = multiline if quote and quote.encode() in data else simple
        return pacsv.read_csv(pa.py_buffer(data), read_options=read_options, parse_options=opts,
                              convert_options=convert)

    return parse


def _json_parser(spec: ReadSpec) -> Callable[[bytes], pa.Table]:
    # Keys no stage reads are skipped unconverted, as CSV columns no stage reads (a third less CPU
    # when a job reads 3 of 10 keys); reading every key, one not in the schema is a bad row.
    projected = spec.columns is not None
    parse_options = pajson.ParseOptions(explicit_schema=spec.read_schema if projected else spec.schema,
                                        unexpected_field_behavior="ignore" if projected else "error")

    def parse(data: bytes) -> pa.Table:
        if not _NOT_SPACE.search(data):
            return pa.Table.from_batches([], schema=spec.schema)
        opts = pajson.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
        return pajson.read_json(pa.py_buffer(data), read_options=opts, parse_options=parse_options)

    return parse


_CSV_COLUMN = re.compile(r"^In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\S+): (.*)$", re.S)
_CSV_PARSE = re.compile(r"^CSV parse error: (?:Row #\d+: )?(Expected \d+ columns, got \d+)", re.S)


_JSON_KIND = re.compile(r"^Column\((/[^)]*|)\) changed from (\w+) to (\w+)")
_JSON_TWICE = re.compile(r"^Column\((/[^)]*)\) was specified twice")


def _json_key(path: str) -> str:
    """pyarrow's path of a JSON value (``/a/[]/b``) as a key (``a[].b``)."""
    parts = path.strip("/").split("/")
    return parts[0] + "".join(p if p == "[]" else "." + p for p in parts[1:])


def _a(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _reason(exc: Exception, names: list[str], record: bytes = b"") -> str:
    msg = str(exc).strip()
    if msg.startswith("JSON parse error: unexpected field") and record:
        late = _unknown_keys(record, names)
        if late:
            return (f"key {late[0]!r} is not in the input schema: the type sample (input.sample_bytes of the first "
                    f"files) did not meet it; declare it under input.schema (for example {late[0]}: string) "
                    f"or raise input.sample_bytes")
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
        m = _JSON_KIND.match(text)
        if m and not m.group(1):
            return f"not a JSON object: {_a(m.group(3))}"
        if m:   # valid JSON, with a value of another kind than the column's type
            return f"key {_json_key(m.group(1))!r} holds {_a(m.group(3))}, not {_a(m.group(2))} as its column's type"
        m = _JSON_TWICE.match(text)
        if m:
            return f"key {_json_key(m.group(1))!r} appears twice in one object"
        return "invalid JSON: " + re.sub(r"\.? in row \d+$", "", text)
    return msg.split("\n")[0]


def parse_block(data: bytes, parse: Callable[[bytes], pa.Table], *, file: str, base_offset: int,
                first_line: int | Callable[[], int], dialect: Dialect, max_record: int, names: list[str],
                check_lengths: bool, to_schema: Callable[[pa.Table], pa.Table], verify: bool = True,
                record_lines: np.ndarray | None = None) -> Block:
    """Parse ``data`` (whole records) into a Block; see the module docstring for the two paths.

    The records come from the state machine of ``split`` (the parser's quoting rule): the parse
    must give exactly one row per record, else the block takes the slow path, so that a parse that
    stops early (an unterminated quote) is a bad row, never a silent shortfall. Comment lines are
    taken out before parsing and counted in ``Block.skipped``. ``first_line`` is the line number of
    the first byte, or a function that counts it: it is needed only to name the lines of bad rows.
    ``record_lines`` gives each record's line directly (a JSON array turned into JSON Lines); byte
    offsets are then not reported.
    """
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

    original = data
    skipped = 0
    to_source = None
    index: list = []

    def records():
        """The state machine's records of ``data`` (comment lines taken out of ``data`` first)."""
        nonlocal data, skipped, to_source
        if not index:
            recs = record_spans(data, dialect)
            if len(recs.comments):
                skipped = len(recs.comments)
                data, to_source = _without(data, recs.comments)
                recs = record_spans(data, replace(dialect, comment=None))
            index.append(recs)
        return index[0]

    def source(offsets: np.ndarray) -> np.ndarray:
        return to_source(offsets) if to_source is not None else offsets

    def lines_of(recs: np.ndarray) -> np.ndarray:
        if record_lines is not None:
            return record_lines[recs]
        return line_numbers(original, source(records().starts[recs]), line_base(), dialect.cr)

    def offset_of(record: int) -> int | None:
        return None if record_lines is not None else base_offset + int(source(records().starts[record:record + 1])[0])

    def raw_of(s: int, e: int) -> str:
        return data[s:e].rstrip(b"\r\n").decode("utf-8", errors="replace")

    def where(recs: np.ndarray):
        st, en = records().starts, records().ends
        return [(int(ln), offset_of(int(r)), raw_of(int(st[r]), int(en[r]))) for ln, r in zip(lines_of(recs), recs)]

    # The parse must give one row per record of the state machine, and a quote left open at the end
    # is a bad row. That check needs the record index, which costs about a parse on quoted text, so
    # it is made where a quote can be left open: data with a quote character (``check_lengths``)
    # that ends a file or stream (``verify``). A chunk that ends before that ends where the plan's
    # state machine (the same rule) found a record boundary; its index is built only if a bad row
    # needs it.
    eager = (check_lengths and verify) or dialect.comment is not None
    if eager:
        records()
    if not (eager and records().unterminated):
        try:
            table = parse(data)
            if eager and table.num_rows != len(records().starts):
                raise pa.ArrowInvalid(f"expected {len(records().starts)} records, parsed {table.num_rows}")
            if check_lengths and len(data) > max_record and _longest_value(table) > max_record:
                raise _TooLong()
            table = to_schema(table)
            rows = table.num_rows

            def locate(recs: np.ndarray):
                if len(records().starts) != rows:   # cannot happen when eager; a guard for the lazy index
                    return [(None, None, None)] * len(recs)
                return where(recs)

            return Block(table, [], rows, locate, skipped)
        except (pa.ArrowInvalid, _TooLong):
            pass

    recs = records()
    starts, ends = recs.starts, recs.ends
    open_record = len(starts) - 1 if recs.unterminated else -1
    bad: list[BadRow] = []
    good_pieces: list[tuple[int, pa.Table]] = []
    good_index: list[np.ndarray] = []
    bad_lines = lines_of(np.arange(len(starts)))

    def bad_row(i: int, reason: str) -> None:
        bad.append(BadRow(file, int(bad_lines[i]), offset_of(i), "read", reason,
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
                bad_row(i, _reason(exc, names, data[int(starts[i]):int(ends[i])]))
                return
            m = (i + j) // 2
            bisect(i, m)
            bisect(m, j)

    lengths = ends - starts
    special = {int(i): f"record of {int(lengths[i])} bytes is longer than input.max_record_bytes "
                       f"({max_record}); an unterminated quote?" for i in np.flatnonzero(lengths > max_record)}
    if open_record >= 0:
        special[open_record] = (f"unterminated quote: a quoted field opened on this line is never closed "
                                f"({int(lengths[open_record])} bytes to the end of the data)")
    prev = 0
    for i in sorted(special) + [len(starts)]:
        bisect(prev, i)
        if i < len(starts):
            bad_row(i, special[i])
        prev = i + 1
    bad.sort(key=lambda b: (b.line or 0, b.offset or 0))
    tables = [to_schema(t) for _, t in sorted(good_pieces, key=lambda p: p[0])]
    table = pa.concat_tables(tables) if tables else to_schema(parse(b""))
    kept = np.concatenate(good_index) if good_index else np.zeros(0, dtype=np.int64)
    kept.sort()
    return Block(table, bad, len(starts), lambda rows: where(kept[rows]), skipped)


def _without(data: bytes, spans: np.ndarray) -> tuple[bytes, Callable[[np.ndarray], np.ndarray]]:
    """``data`` without the byte ranges ``spans``, and a map from new offsets to offsets in ``data``."""
    keep_starts = np.concatenate(([0], spans[:, 1]))
    keep_ends = np.concatenate((spans[:, 0], [len(data)]))
    ok = keep_ends > keep_starts
    keep_starts, keep_ends = keep_starts[ok], keep_ends[ok]
    out = b"".join(data[int(a):int(b)] for a, b in zip(keep_starts, keep_ends))
    new_starts = np.concatenate(([0], np.cumsum(keep_ends - keep_starts)[:-1])) if len(keep_starts) else keep_starts

    def to_source(offsets: np.ndarray) -> np.ndarray:
        k = np.searchsorted(new_starts, offsets, side="right") - 1
        return keep_starts[k] + (offsets - new_starts[k])

    return out, to_source


def _unknown_keys(record: bytes, names: list[str]) -> list[str]:
    import json

    try:
        value = json.loads(record)
    except ValueError:
        return []
    return [k for k in value if k not in names] if isinstance(value, dict) else []


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


def with_partitions(f, schema: pa.Schema, to_schema: Callable[[pa.Table], pa.Table]) -> Callable[[pa.Table], pa.Table]:
    """``to_schema``, then the file's hive partition values (``key=value`` folders) in their columns."""
    if not f.partitions:
        return to_schema
    values = []
    for key, value in f.partitions:
        if key not in schema.names:   # a partition column no stage reads
            continue
        fld = schema.field(key)
        try:
            values.append((schema.get_field_index(key), fld, arrays.array([value], pa.string()).cast(fld.type)[0]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"{f.path}: partition folder {key}={value} does not fit the column type {fld.type}: "
                             f"{exc}", file=f.path) from exc

    def fill(table: pa.Table) -> pa.Table:
        table = to_schema(table)
        for i, fld, scalar in values:
            table = table.set_column(i, fld, pa.repeat(scalar, table.num_rows))
        return table

    return fill


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
    if f.format == "json":
        yield from _read_json_array(chunk, spec)
        return
    if f.format == "jsonl":
        parse = _json_parser(spec)
        names = spec.schema.names
    else:
        parse = _csv_parser(chunk, spec)
        names = list(chunk.columns)
    dialect = dialect_of(chunk, spec)
    to_schema = with_partitions(f, spec.read_schema, conform(spec.read_schema))

    before = [chunk.lines_skipped]   # comment lines before the header: counted with the first block

    def block(data: bytes, offset: int, line: int | Callable[[], int], quotes: int, final: bool) -> Block:
        result = parse_block(data, parse, file=f.path, base_offset=offset, first_line=line, dialect=dialect,
                             max_record=spec.max_record_bytes, names=names,
                             check_lengths=quotes != 0, to_schema=to_schema, verify=final)
        result.skipped += before.pop() if before else 0
        if f.format == "jsonl" and final and result.bad and data and not data.endswith(b"\n"):
            last = result.bad[-1]
            if last.offset == offset + data.rfind(b"\n") + 1:
                raise InputError(f"{f.path} line {last.line}: the last line is cut short (invalid JSON and no "
                                 f"final newline); the file looks truncated", file=f.path, line=last.line)
        return result

    if chunk.cut:
        at = boundaries.locate(chunk, dialect)
        if chunk.index == 0:
            first: int | Callable[[], int] = chunk.first_line
        else:
            first = functools.partial(line_at, f.path, at.start, opener=_open_binary, cr=dialect.cr)
        yield block(at.data, at.start, first, -1 if spec.quote and spec.quote.encode() in at.data else 0,
                    at.final)
        return
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
        first = chunk.first_line or (lambda: line_at(f.path, chunk.start, opener=lambda path, mode: open_input(path),
                                                     cr=dialect.cr))
        yield block(data, chunk.start, first, chunk.quotes, chunk.end == f.size)
        return

    previous = None
    for piece in stream_blocks(chunk, spec, dialect):
        if previous is not None:
            yield block(*previous, -1, False)
        previous = piece
    if previous is not None:
        yield block(*previous, -1, True)


def _open_binary(path: str, mode: str = "rb"):
    return open_input(path)


def last_boundary(data: bytes, dialect: Dialect) -> int:
    """Offset just after the last record or comment line that ends inside ``data`` (0 if none)."""
    scan = Scanner(dialect).feed(data, final=False)
    return int(scan.breaks[-1]) if len(scan.breaks) else 0


def stream_blocks(chunk: Chunk, spec: ReadSpec, dialect: Dialect) -> Iterator[tuple[bytes, int, int]]:
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
                cut = last_boundary(pending, dialect)
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
                line += count_line_ends(data, 0, len(data), dialect.cr)
            if not piece:
                return


def read_json_array_text(f, spec: ReadSpec) -> str:
    """The text of a JSON array file, refused above ``json_array.MAX_BYTES``."""
    limit = json_array.MAX_BYTES
    with open_decompressed(f.path, f.compression, spec.max_decompressed_bytes) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{f.path}: a JSON array file is read whole, and this one is larger than "
                         f"{limit >> 20} MiB; convert it to JSON Lines (one object per line)", file=f.path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{f.path} line {line}: not valid UTF-8 JSON: {exc.reason}", file=f.path, line=line) from exc


def _read_json_array(chunk: Chunk, spec: ReadSpec) -> Iterator[Block]:
    f = chunk.file
    parse = _json_parser(spec)
    to_schema = with_partitions(f, spec.read_schema, conform(spec.read_schema))
    lines: list[int] = []
    pieces: list[str] = []
    size = 0

    def block() -> Block:
        data = ("\n".join(pieces) + "\n").encode()
        return parse_block(data, parse, file=f.path, base_offset=0, first_line=1, dialect=JSON_LINES,
                           max_record=spec.max_record_bytes, names=spec.schema.names, check_lengths=False,
                           to_schema=to_schema, record_lines=np.array(lines, dtype=np.int64))

    for line, text in json_array.elements(read_json_array_text(f, spec), f.path):
        lines.append(line)
        pieces.append(text)
        size += len(text) + 1
        if size >= spec.block_bytes:
            yield block()
            lines, pieces, size = [], [], 0
    if pieces:
        yield block()


def _read_parquet(chunk: Chunk, spec: ReadSpec) -> Iterator[Block]:
    f = chunk.file
    try:
        pf = parquet_file(f.path)
        first_row = sum(pf.metadata.row_group(i).num_rows for i in range(chunk.row_groups[0]))
        present = [n for n in spec.read_schema.names if n in pf.schema_arrow.names]
        table = pf.read_row_groups(list(chunk.row_groups), columns=present, use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{f.path}: cannot read Parquet row groups {chunk.row_groups}: {exc}", file=f.path) from exc
    to_schema = with_partitions(f, spec.read_schema, conform(spec.read_schema))
    try:
        out = to_schema(table)
        good = None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out, good = _cast_rows(table, to_schema)
    bad = []
    if good is not None:
        for r in np.flatnonzero(~good):
            row = table.slice(int(r), 1)
            bad.append(BadRow(f.path, first_row + int(r) + 1, None, "read", _misfit(row, spec.read_schema),
                              str(row.to_pylist()[0])))
    kept = np.flatnonzero(good) if good is not None else None

    def locate(rows: np.ndarray):
        rs = kept[rows] if kept is not None else rows
        return [(first_row + int(r) + 1, None, str(table.slice(int(r), 1).to_pylist()[0])) for r in rs]

    yield Block(out, bad, table.num_rows, locate)


def _misfit(row: pa.Table, schema: pa.Schema) -> str:
    """Why a Parquet row does not take the run's types: the first of its columns that does not cast."""
    for fld in schema:
        if fld.name not in row.column_names or row.column(fld.name).type == fld.type:
            continue
        column = row.column(fld.name)
        try:
            column.cast(fld.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            return (f"column {fld.name!r}: cannot convert {type_name(column.type)} to {type_name(fld.type)}, "
                    f"the column's type in this run (input.schema, or the type the input files' "
                    f"columns widen to): {exc}")
    return "a value does not fit its column's type in this run"


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
    if f.format == "json":
        for line, text in json_array.elements(read_json_array_text(f, spec), f.path):
            yield line, None, text
        return
    dialect = dialect_of(chunk, spec)
    blocks: Iterable[tuple[bytes, int, int]]
    if chunk.cut:
        at = boundaries.locate(chunk, dialect)
        blocks = [(at.data, at.start, chunk.first_line if chunk.index == 0
                   else line_at(f.path, at.start, opener=_open_binary, cr=dialect.cr))]
    elif chunk.end >= 0 and not f.compression:
        with open_input(f.path) as fh:
            fh.seek(chunk.start)
            blocks = [(fh.read(chunk.end - chunk.start), chunk.start,
                       chunk.first_line or line_at(f.path, chunk.start, opener=lambda path, mode: open_input(path),
                                                   cr=dialect.cr))]
    else:
        blocks = stream_blocks(chunk, spec, dialect)
    for data, offset, line in blocks:
        recs = record_spans(data, dialect)
        lines = line_numbers(data, recs.starts, line, dialect.cr)
        for s, e, ln in zip(recs.starts, recs.ends, lines):
            yield int(ln), offset + int(s), data[int(s):int(e)].rstrip(b"\r\n").decode("utf-8", errors="replace")
