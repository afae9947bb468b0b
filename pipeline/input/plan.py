"""Files -> chunks, and the one input schema every chunk is read with.

Pure planning: it reads file heads (header, type sample) and, for uncompressed text, scans for
record boundaries, but writes nothing. ``pipeline plan`` prints what it returns.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipeline import arrays
from pipeline.dtypes import type_name
from pipeline.errors import ConfigError, InputError
from pipeline.input import infer, json_array
from pipeline.input.chunks import Chunk, ReadSpec, chunk_id
from pipeline.input.discover import InputFile, Listing, list_inputs, old_enough
from pipeline.input.feed import ChunkFeed
from pipeline.input.read import parse_block
from pipeline.input.split import Dialect, count_line_ends, line_numbers, record_spans
from pipeline.input.storage import parquet_file
from pipeline.input.streams import open_decompressed

BOM = b"\xef\xbb\xbf"
HEAD_LIMIT = 1 << 20
MIN_AUTO_CHUNK = 4 << 20
SAMPLE_FILES = 8
LIST_AHEAD = 1000   # files whose size and kind a streamed plan reads before the run starts
MAX_AUTO_CHUNK = 32 << 20


@dataclass
class Plan:
    files: list[InputFile]
    chunks: Sequence[Chunk]              # a list, or a ChunkFeed still being cut (build_plan's stream)
    read: ReadSpec
    workers: int
    inferred: dict[str, str] = field(default_factory=dict)   # column -> how its type was decided
    discovered: list[InputFile] = field(default_factory=list)  # every file the globs matched
    young: list[InputFile] = field(default_factory=list)   # left for the next run (input.min_age)
    listed: bool = True              # ``files`` is whole (a streamed plan's grows until its listing ends)
    expected_bytes: int | None = None   # a streamed plan's input size while ``files`` grows: an estimate

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def key(self) -> str:
        """What decides the chunks without cutting them: the files (path, size, mtime) and the chunk
        size. A killed run is resumed only by a run whose plan has the same key (output.resume).
        A streamed plan's key waits for the end of its listing."""
        if not self.listed and isinstance(self.chunks, ChunkFeed):
            self.chunks.wait()
        h = hashlib.sha256(str(self.read.block_bytes).encode())
        for f in self.files:
            h.update(f"\0{f.path}\0{f.size}\0{f.mtime_ns}".encode())
        return h.hexdigest()


def _delimiter(job, fmt: str) -> str:
    if fmt == "tsv" and job.input.csv.delimiter == ",":
        return "\t"
    return job.input.csv.delimiter


def _read_head(f: InputFile, limit: int, max_decompressed: int | None = None) -> tuple[bytes, bool]:
    """The first ``limit`` bytes (decompressed) and whether that is the whole file."""
    with open_decompressed(f.path, f.compression, max_decompressed) as stream:
        data = stream.read(limit + 1)
    return data[:limit], len(data) <= limit


def _dialect(job, delimiter: str) -> Dialect:
    opts = job.input.csv
    return Dialect.csv(delimiter, opts.quote, opts.comment, opts.encoding)


def _parse_options(job, delimiter: str) -> pacsv.ParseOptions:
    quote = job.input.csv.quote
    return pacsv.ParseOptions(delimiter=delimiter, quote_char=quote or False, newlines_in_values=bool(quote),
                              ignore_empty_lines=True)


def _header(f: InputFile, head: bytes, whole: bool, job, delimiter: str) -> tuple[tuple[str, ...], int, int, int]:
    """(column names, byte offset where records start, physical line of that offset, comment lines before it).

    The header is the first record after ``csv.skip_rows`` records (blank and comment lines do not
    count), found by the same state machine as every other record and split into names by the parser.
    """
    opts = job.input.csv
    start = len(BOM) if head.startswith(BOM) else 0
    body = head[start:]
    want = opts.skip_rows + (1 if opts.header else 0)
    recs = _leading_records(body, _dialect(job, delimiter), want)
    if len(recs.starts) < want or (want and not whole and int(recs.ends[want - 1]) == len(body)) or \
            (want and whole and recs.unterminated and want == len(recs.starts)):
        if whole and len(recs.starts) < want:
            if opts.header and len(recs.starts) == opts.skip_rows:
                return (), len(head), 1, len(recs.comments)   # no header at all: an empty file
            raise InputError(f"{f.path}: the file has {len(recs.starts)} records, fewer than csv.skip_rows "
                             f"({opts.skip_rows}) and a header", file=f.path)
        line = int(line_numbers(body, recs.starts[-1:], 1)[0]) if len(recs.starts) else 1
        why = ("opens a quote that is never closed" if whole else
               f"does not end within the first {len(body):,} bytes (an unterminated quote, or a header that long)")
        raise InputError(f"{f.path} line {line}: the header {why}", file=f.path, line=line)
    skip_end = int(recs.ends[opts.skip_rows - 1]) if opts.skip_rows else 0
    if opts.header:
        hs, he = int(recs.starts[opts.skip_rows]), int(recs.ends[opts.skip_rows])
        data_start = he
        names = _header_names(f, body[hs:he], job, delimiter, hs, body)
    else:
        data_start = skip_end
        names = tuple(opts.column_names or ()) or _generated_names(f, body, recs, opts.skip_rows, job, delimiter)
    if opts.rename_duplicates:
        names = rename_columns(names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or any(n == "" for n in names):
        what = f"duplicate column names {dupes}" if dupes else "an empty column name"
        line = count_line_ends(body, 0, data_start) if opts.header else 1
        raise InputError(f"{f.path} line {line}: the header has {what}; set csv.rename_duplicates: true to "
                         f"name them as DuckDB does (a, a_1; column2 for an empty name), or csv.header: false",
                         file=f.path, line=line)
    comments = int((recs.comments[:, 1] <= data_start).sum()) if len(recs.comments) else 0
    return names, start + data_start, 1 + count_line_ends(body, 0, data_start), comments


_WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


def _refuse_wide_text(f: InputFile, head: bytes) -> None:
    """A text file in UTF-16 or UTF-32 (told by its byte order mark) cannot be split into records
    byte by byte: every line end is two or four bytes. Refused with the fix, not read as garbage."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise InputError(f"{f.path}: the file is {name} text (it starts with a {name} byte order mark), which "
                             f"cannot be split into records; convert it to UTF-8 first "
                             f"(iconv -f {name} -t UTF-8 {os.path.basename(f.path)} > converted{_suffix(f.path)})",
                             file=f.path)


def _suffix(path: str) -> str:
    name = os.path.basename(path)
    return name[name.index("."):] if "." in name else ""


HEADER_PROBES = (4 << 10, 64 << 10)


def _leading_records(body: bytes, dialect: Dialect, want: int):
    """The records of ``body`` as far as the header needs them: from a short prefix when the first
    ``want`` records end well inside it (the state machine runs from the start, so they are final),
    else from all of ``body``. Many small files with the same header cost a prefix each, not a head."""
    for probe in HEADER_PROBES:
        if len(body) > probe:
            recs = record_spans(body[:probe], dialect)
            if len(recs.starts) > want + 1 and (not want or int(recs.ends[want - 1]) < probe - 1):
                return recs
    return record_spans(body, dialect)


def _one_record(raw: bytes) -> bytes:
    """The parser wants a line end after a record that ends the file."""
    return raw if raw.endswith((b"\n", b"\r")) else raw + b"\n"


_HEADERS: dict[tuple, tuple[str, ...]] = {}   # header bytes and how they are read -> names (many files, one header)


def _header_names(f: InputFile, raw: bytes, job, delimiter: str, at: int, body: bytes) -> tuple[str, ...]:
    key = (raw, delimiter, job.input.csv.quote, job.input.csv.encoding)
    if key in _HEADERS:
        return _HEADERS[key]
    line = 1 + count_line_ends(body, 0, at)
    raw = _one_record(raw)
    try:
        table = pacsv.read_csv(pa.py_buffer(raw), read_options=pacsv.ReadOptions(
            use_threads=False, encoding=job.input.csv.encoding), parse_options=_parse_options(job, delimiter))
        names = tuple(table.column_names)     # decoded here: a header that is not text fails here
    except UnicodeDecodeError as exc:
        raise InputError(f"{f.path} line {line}: cannot read the header: it is not {job.input.csv.encoding} text "
                         f"({exc.reason} at byte {exc.start}); set input.csv.encoding (latin-1, cp1252, ...) "
                         f"if the file is text in another encoding", file=f.path, line=line) from exc
    except pa.ArrowInvalid as exc:
        raise InputError(f"{f.path} line {line}: cannot read the header: {str(exc).splitlines()[0]}",
                         file=f.path, line=line) from exc
    if len(_HEADERS) < 1000:
        _HEADERS[key] = names
    return names


def _generated_names(f: InputFile, body: bytes, recs, skip: int, job, delimiter: str) -> tuple[str, ...]:
    """column0, column1, ... (zero-padded as DuckDB names them), as many as the first record has fields."""
    if len(recs.starts) <= skip:
        return ()
    raw = _one_record(body[int(recs.starts[skip]):int(recs.ends[skip])])
    try:
        n = pacsv.read_csv(pa.py_buffer(raw), read_options=pacsv.ReadOptions(
            use_threads=False, encoding=job.input.csv.encoding, autogenerate_column_names=True),
            parse_options=_parse_options(job, delimiter)).num_columns
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        line = 1 + count_line_ends(body, 0, int(recs.starts[skip]))
        raise InputError(f"{f.path} line {line}: cannot read the first record: {str(exc).splitlines()[0]}",
                         file=f.path, line=line) from exc
    width = len(str(n - 1))
    return tuple(f"column{i:0{width}d}" for i in range(n))


def rename_columns(names) -> tuple[str, ...]:
    """DuckDB's names for a header: an empty name is column<i>, a repeated one gets _1, _2, ..."""
    width = len(str(len(names) - 1))
    out: list[str] = []
    used: set[str] = set()
    for i, name in enumerate(names):
        name = name or f"column{i:0{width}d}"
        if name in used:
            k = 1
            while f"{name}_{k}" in used:
                k += 1
            name = f"{name}_{k}"
        used.add(name)
        out.append(name)
    return tuple(out)


def _sample_text_types(f: InputFile, head: bytes, whole: bool, names, data_start: int, job,
                       delimiter: str) -> dict[str, pa.DataType]:
    opts = job.input.csv
    sample = head[data_start:data_start + job.input.sample_bytes]
    dialect = _dialect(job, delimiter)
    if not (whole and data_start + job.input.sample_bytes >= len(head)):
        recs = record_spans(sample, dialect)
        # drop the last record: it may be cut off
        sample = sample[: int(recs.ends[-2])] if len(recs.ends) > 1 else b""
    if not names:
        return {}
    if not sample.strip():
        return {n: pa.null() for n in names}

    read_options = pacsv.ReadOptions(column_names=list(names), use_threads=False, encoding=opts.encoding)
    convert = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                   null_values=list(opts.null_values), strings_can_be_null=True)
    parse_options = _parse_options(job, delimiter)

    def parse(data: bytes) -> pa.Table:
        if not data.strip(b"\r\n"):
            return pa.table({n: arrays.array([], pa.binary()) for n in names})
        return pacsv.read_csv(pa.py_buffer(data), read_options=read_options, parse_options=parse_options,
                              convert_options=convert)

    # ragged rows in the sample are left out here; they are bad rows when the chunk is read
    table = parse_block(sample, parse, file=f.path, base_offset=0, first_line=1, dialect=dialect,
                        max_record=job.input.max_record_bytes, names=list(names), check_lengths=False,
                        to_schema=lambda t: t).table
    user = job.input.types   # a column typed under input.schema is read as that: nothing to infer
    return {n: user[n] if n in user else infer.infer_column(_valid_utf8(table.column(n))) for n in names}


def _valid_utf8(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as text, leaving out values that are not valid UTF-8 (those are bad rows later)."""
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.chunked_array([arrays.array([v for v in c.to_pylist() if v is None or _is_utf8(v)],
                                              pa.binary()).cast(pa.string()) for c in col.chunks], pa.string())


def _is_utf8(v: bytes) -> bool:
    try:
        v.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _sample_json_types(f: InputFile, head: bytes, whole: bool, job) -> dict[str, pa.DataType]:
    sample = head[: job.input.sample_bytes]
    if not whole or len(head) > job.input.sample_bytes:
        sample = sample[: sample.rfind(b"\n") + 1]
    lines = [ln for ln in sample.split(b"\n") if ln.strip()]
    if not lines:
        return {}

    def read(some: list[bytes]) -> pa.Table:
        return pajson.read_json(pa.py_buffer(b"\n".join(some) + b"\n"),
                                read_options=pajson.ReadOptions(use_threads=False, block_size=len(sample) + 1))

    try:
        table = read(lines)
    except pa.ArrowInvalid:
        found = _agreeing_sample(f, lines, read)
        if found is None:
            return {}
        table = found
    rows = pa.py_buffer(b"\n".join(lines) + b"\n")

    def read_as(name: str, dtype: pa.DataType) -> pa.ChunkedArray | None:
        try:
            return pajson.read_json(rows, read_options=pajson.ReadOptions(use_threads=False,
                                                                          block_size=len(sample) + 1),
                                    parse_options=pajson.ParseOptions(explicit_schema=pa.schema([(name, dtype)]))
                                    ).column(name)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None

    return {name: infer.exact_integers(table.schema.field(name).type, functools.partial(read_as, name))
            for name in table.column_names}


_JSON_ROW = re.compile(r" in row (\d+)$")   # pyarrow names the record an error is in
MAX_SAMPLE_CONFLICTS = 100


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _agreeing_sample(f: InputFile, lines: list[bytes], read) -> pa.Table | None:
    """The type sample's table from its JSON objects whose keys hold what most of them hold.

    A key that is text in most records and an object in one (or a number here and text there) has
    no type pyarrow can give both: the type is that of the most records, and a record holding
    another kind is a bad row when it is read, not the whole run's failure. Lines that are not JSON
    objects are left out of the sample alike. None when no line is a JSON object.
    """
    import json

    objects = []
    for ln in lines:
        try:
            value = json.loads(ln)
        except ValueError:
            continue
        if isinstance(value, dict):
            objects.append((ln, value))
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for _, value in objects:
        for key, v in value.items():
            if v is not None:
                kinds[key][_json_kind(v)] += 1
    most = {key: counts.most_common(1)[0][0] for key, counts in kinds.items()}   # ties: the first seen
    kept = [ln for ln, value in objects
            if all(v is None or _json_kind(v) == most[key] for key, v in value.items())]
    # what differs deeper (a list of numbers here, of text there), a key twice in one object: the
    # record pyarrow names goes
    for _ in range(MAX_SAMPLE_CONFLICTS):
        if not kept:
            return None
        try:
            return read(kept)
        except pa.ArrowInvalid as exc:
            m = _JSON_ROW.search(str(exc).strip())
            if m is None or int(m.group(1)) >= len(kept):
                raise InputError(f"{f.path}: no type fits the JSON type sample: {exc}; declare the types "
                                 f"under input.schema", file=f.path) from exc
            del kept[int(m.group(1))]
    raise InputError(f"{f.path}: more than {MAX_SAMPLE_CONFLICTS} records of the JSON type sample hold values "
                     f"of different kinds under the same key; declare the types under input.schema",
                     file=f.path)


def _sample_json_array_types(f: InputFile, head: bytes, whole: bool, job) -> dict[str, pa.DataType]:
    """Types from the first elements of a JSON array, read as the JSON Lines they are equivalent to."""
    text = head.decode("utf-8", errors="replace")
    lines, size = [], 0
    for _, element in json_array.elements(text, f.path, partial=not whole):
        lines.append(element)
        size += len(element) + 1
        if size >= job.input.sample_bytes:
            break
    return _sample_json_types(f, ("\n".join(lines) + "\n").encode(), True, job) if lines else {}


def chunk_size(job, total: int, workers: int) -> int:
    """``input.chunk_bytes``, or by default about four chunks per worker, at least 4 MiB, at most
    what ``run.memory_limit`` allows the local executor's workers (see pipeline/memory.py; the Dask
    executor writes a part file per chunk, and keeps chunks of up to 32 MiB).

    Fewer, larger chunks cost less per chunk; more chunks keep every worker busy to the end.
    """
    if job.input.chunk_bytes:
        return job.input.chunk_bytes
    if job.run.executor == "local":
        largest = job.memory(workers).chunk_bytes
    else:
        largest = MAX_AUTO_CHUNK
    return int(min(largest, max(MIN_AUTO_CHUNK, total / (4 * max(workers, 1)))))


def _text_chunks(f: InputFile, job, delimiter: str, names, data_start: int, first_line: int,
                 chunk_bytes: int) -> list[Chunk]:
    if f.compression:
        cid = chunk_id(f, data_start, -1)
        return [Chunk(cid, f, 0, data_start, -1, first_line, -1, tuple(names), delimiter=delimiter)]
    # cut without reading: each worker finds its chunk's record boundaries (input.boundaries)
    step = max(1, chunk_bytes)
    out: list[Chunk] = []
    if data_start >= f.size:
        return out
    for i, a in enumerate(range(data_start, max(f.size, data_start + 1), step)):
        b = min(a + step, f.size)
        out.append(Chunk(chunk_id(f, a, b), f, i, a, b, first_line if i == 0 else 0, -1, tuple(names),
                         delimiter=delimiter, origin=data_start, step=step))
    return out


def _parquet_chunks(f: InputFile, job, chunk_bytes: int) -> tuple[list[Chunk], pa.Schema]:
    try:
        meta = parquet_file(f.path).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{f.path}: not a readable Parquet file: {exc}", file=f.path) from exc
    schema = meta.schema.to_arrow_schema()
    chunks: list[Chunk] = []
    group: list[int] = []
    size = 0
    for rg in range(meta.num_row_groups):
        group.append(rg)
        size += meta.row_group(rg).total_byte_size
        if size >= chunk_bytes:
            chunks.append(Chunk(chunk_id(f, group[0], group[-1]), f, len(chunks), 0, f.size,
                                row_groups=tuple(group)))
            group, size = [], 0
    if group:
        chunks.append(Chunk(chunk_id(f, group[0], group[-1]), f, len(chunks), 0, f.size, row_groups=tuple(group)))
    return chunks, schema


class _Planner:
    """Plans one file at a time, keeping what the files planned so far decided."""

    def __init__(self, job, chunk_bytes: int):
        self.job = job
        self.chunk_bytes = chunk_bytes
        self.per_file: dict[str, dict[str, pa.DataType]] = {}
        self.file_order: dict[str, tuple[str, ...]] = {}
        self.sampled: dict[str, int] = {}      # format -> files whose values were sampled for types
        self.known: set[str] = set()           # columns met so far
        self.header: tuple[bytes, tuple] | None = None   # see _known_header

    def plan_file(self, f: InputFile) -> list[Chunk]:
        job, chunk_bytes = self.job, self.chunk_bytes
        try:
            if f.format == "parquet":
                fchunks, schema = _parquet_chunks(f, job, chunk_bytes)
                self.per_file[f.path] = {fld.name: infer.decoded(fld.type) for fld in schema}
            else:
                # Types come from the first SAMPLE_FILES files of a format (and from any file that
                # brings new columns): with thousands of small files, sampling each would dominate.
                sample = self.sampled.get(f.format, 0) < SAMPLE_FILES
                limit = (max(HEAD_LIMIT, job.input.sample_bytes + HEAD_LIMIT)
                         if sample or f.format in ("jsonl", "json") else HEAD_LIMIT)
                if f.format == "json":
                    head, whole = _read_head(f, limit, job.input.max_decompressed_bytes)
                    _refuse_wide_text(f, head)
                    self.per_file[f.path] = _sample_json_array_types(f, head, whole, job) if sample else {}
                    fchunks = [Chunk(chunk_id(f, 0, -1), f, 0, 0, -1)]
                elif f.format == "jsonl":
                    head, whole = _read_head(f, limit, job.input.max_decompressed_bytes)
                    _refuse_wide_text(f, head)
                    start = len(BOM) if head.startswith(BOM) else 0
                    self.per_file[f.path] = _sample_json_types(f, head[start:], whole, job) if sample else {}
                    fchunks = _text_chunks(f, job, "\n", (), start, 1, chunk_bytes)
                else:
                    delimiter = _delimiter(job, f.format)
                    header = None if sample else self._known_header(f)
                    if header is None:
                        head, whole = _read_head(f, limit, job.input.max_decompressed_bytes)
                        _refuse_wide_text(f, head)
                        header = _header(f, head, whole, job, delimiter)
                        self._remember_header(head, header)
                    names, start, first_line, comments = header
                    if sample or not set(names) <= self.known:
                        self.per_file[f.path] = _sample_text_types(f, head, whole, names, start, job, delimiter)
                    else:
                        self.per_file[f.path] = {n: pa.null() for n in names}
                    fchunks = _text_chunks(f, job, delimiter, names, start, first_line, chunk_bytes)
                    if comments and fchunks:
                        fchunks[0] = replace(fchunks[0], lines_skipped=comments)
                if sample:
                    self.sampled[f.format] = self.sampled.get(f.format, 0) + 1
                self.known.update(self.per_file[f.path])
        except InputError:
            raise
        except (OSError, EOFError) as exc:
            raise InputError(f"{f.path}: cannot read: {exc}", file=f.path) from exc
        self.file_order[f.path] = tuple(self.per_file[f.path])
        _check_partition_names(f, self.per_file[f.path])
        return fchunks

    def _remember_header(self, head: bytes, header: tuple) -> None:
        """The bytes a file starts with, up to its first data record, and what they were read as."""
        prefix = head[:header[1]]
        if prefix.endswith(b"\n") and len(prefix) <= HEADER_PROBES[-1]:   # a record ends there, whatever follows
            self.header = (prefix, header)

    def _known_header(self, f: InputFile) -> tuple | None:
        """The header of a file that starts with the same bytes as the last header read: the same
        state machine over the same bytes gives the same records, so it is not read again (thousands
        of small files with one header). Its names are known, so it is not sampled either."""
        if self.header is None:
            return None
        prefix, header = self.header
        if not set(header[0]) <= self.known:
            return None
        head, _ = _read_head(f, len(prefix), self.job.input.max_decompressed_bytes)
        return header if head == prefix else None


def _streams(job, listing: Listing) -> bool:
    """Whether the files after the first SAMPLE_FILES can be listed and planned while the run goes on:
    only when they cannot change the schema (one text format, the same columns in every file), so that
    the workers' read settings are final before the first chunk runs. The names tell."""
    formats = listing.formats()
    return (len(listing) > SAMPLE_FILES and len(formats) == 1 and formats <= {"csv", "tsv", "jsonl"}
            and not job.input.allow_missing_columns)


def build_plan(job, *, workers: int | None = None, select=None, pinned: dict[str, pa.DataType] | None = None,
               stream: bool = False) -> Plan:
    """List the inputs, decide the schema, cut the chunks.

    ``select`` narrows the listed files (incremental runs); ``pinned`` fixes column types decided by
    an earlier run, so that new parts match the output they join. With ``stream``, the schema is
    decided from the first files, and the rest are taken from the listing (their size and kind) and
    planned on a thread while the caller runs the first chunks: ``plan.chunks`` is then a growing
    ``ChunkFeed``, and ``plan.files`` grows with it (see ``_streams``).
    """
    listing = list_inputs(job.input.paths, job.input.format, follow_symlinks=job.input.follow_symlinks,
                          line_of=job.line_of, hive=job.input.hive_partitioning,
                          allow_empty=job.input.incremental)
    n = workers or job.run.workers
    if stream and select is None and _streams(job, listing):
        return _streamed_plan(job, listing, n, pinned)
    files, young = old_enough(list(listing), job.input.min_age)
    discovered = files
    if select is not None and files:
        files = select(files)
    if not files:  # nothing (new) to read: no schema to decide, no chunk to cut
        return Plan([], [], ReadSpec(schema=pa.schema([])), 1, {}, discovered, young)
    chunk_bytes = chunk_size(job, sum(f.size for f in files), n)
    planner = _Planner(job, chunk_bytes)
    chunks: list[Chunk] = []
    for f in files:
        chunks.extend(planner.plan_file(f))
    schema, inferred = _unify(files, planner.per_file, planner.file_order, job, pinned or {},
                              _partition_types([f.partitions for f in files]))
    return Plan(files, chunks, _read_spec(job, schema, chunk_bytes), max(1, min(n, max(len(chunks), 1))), inferred,
                discovered, young)


def _streamed_plan(job, listing: Listing, workers: int, pinned) -> Plan:
    """The plan of the first SAMPLE_FILES files, and a ChunkFeed that takes and plans the rest.

    Up to LIST_AHEAD files are taken (their size and kind read) at once, the rest on the plan's
    thread: the chunk size, the run's resume key and the table of quote states at the cuts (see
    input.boundaries) know every file of a listing that short, and a longer one starts at once.
    """
    taken = iter(listing)
    plan: Plan
    files: list[InputFile] = []    # plan.files: grows as the rest are taken
    young: list[InputFile] = []

    def take(limit: int | None):
        for f in taken:
            old, new = old_enough([f], job.input.min_age)
            young.extend(new)
            if old:
                yield f
                if limit is not None and len(ahead) + 1 >= limit:
                    return

    ahead: list[InputFile] = []
    for f in take(LIST_AHEAD):
        ahead.append(f)
    listed = listing.taken == len(listing)
    head = ahead[:SAMPLE_FILES]
    files.extend(head)
    if not head:
        return Plan([], [], ReadSpec(schema=pa.schema([])), 1, {}, files, young)
    # the chunk size from the files taken so far, as if any others were of their average size
    total = sum(f.size for f in ahead)
    estimate = total if listed else total * len(listing) // len(ahead)
    chunk_bytes = chunk_size(job, estimate, workers)
    planner = _Planner(job, chunk_bytes)
    chunks: list[Chunk] = []
    for f in head:
        chunks.extend(planner.plan_file(f))
    schema, inferred = _unify(head, planner.per_file, planner.file_order, job, pinned or {},
                              _partition_types(listing.partitions()))
    first = head[0]

    def rest():
        for f in itertools.chain(ahead[len(head):], take(None)):
            files.append(f)
            fchunks = planner.plan_file(f)
            if f.format not in ("jsonl", "json"):
                _check_same_columns(first, planner.file_order[first.path], f, planner.file_order[f.path])
            yield fchunks
        plan.listed = True

    later = [(f.path, -(-f.size // max(1, chunk_bytes))) for f in ahead[len(head):]
             if not f.compression and f.format != "json"]
    plan = Plan(files, ChunkFeed(chunks, rest(), later), _read_spec(job, schema, chunk_bytes),
                max(1, min(workers, len(listing))), inferred,
                files, young, listed=listed, expected_bytes=estimate)
    return plan


def _read_spec(job, schema: pa.Schema, chunk_bytes: int) -> ReadSpec:
    return ReadSpec(
        schema=schema,
        delimiter=job.input.csv.delimiter,
        quote=job.input.csv.quote,
        null_values=tuple(job.input.csv.null_values),
        comment=job.input.csv.comment,
        encoding=job.input.csv.encoding,
        max_record_bytes=job.input.max_record_bytes,
        max_decompressed_bytes=job.input.max_decompressed_bytes,
        block_bytes=chunk_bytes,
    )


def _check_partition_names(f: InputFile, columns) -> None:
    for key, _ in f.partitions:
        if key in columns:
            raise InputError(f"{f.path}: {key!r} is both a column of the file and a partition folder "
                             f"({key}=...); rename one, or set input.hive_partitioning: false", file=f.path)


def _check_same_columns(first: InputFile, base: tuple[str, ...], f: InputFile, cols: tuple[str, ...]) -> None:
    """A text file's columns are the first file's, unless input.allow_missing_columns."""
    if set(cols) != set(base) and cols and base:
        missing = sorted(set(base) - set(cols))
        extra = sorted(set(cols) - set(base))
        parts = []
        if missing:
            parts.append(f"lacks {missing}")
        if extra:
            parts.append(f"has extra {extra}")
        raise InputError(
            f"{f.path} {' and '.join(parts)} compared with {first.path}; "
            f"set input.allow_missing_columns: true to read missing columns as nulls",
            file=f.path)


def _partition_types(partitions) -> dict[str, pa.DataType]:
    """The type of every hive partition column, from all its folder values (each file's ``partitions``:
    the names alone, no file is read for it). Thousands of files share a few values: each distinct
    value is looked at once, weighed by its files."""
    values: dict[str, dict[str | None, int]] = {}
    for parts, files in collections.Counter(partitions).items():
        for key, value in parts:
            seen = values.setdefault(key, {})
            seen[value] = seen.get(value, 0) + files
    types = {}
    for k, counted in values.items():
        distinct = [v for v in counted if v is not None]
        types[k] = infer.infer_column(arrays.array(distinct, pa.string()),
                                      counts=arrays.array([counted[v] for v in distinct], pa.int64()))
    return types


def _unify(files, per_file, file_order, job, pinned, partitions=None) -> tuple[pa.Schema, dict[str, str]]:
    order: list[str] = []
    types: dict[str, pa.DataType] = {}
    seen_in: dict[str, str] = {}    # the file a column's type was first seen in
    for f in files:
        for name in file_order[f.path]:
            if name not in types:
                order.append(name)
                types[name] = per_file[f.path][name]
                seen_in[name] = f.path
                continue
            here = per_file[f.path][name]
            if here == types[name]:
                continue
            merged = infer.unify(types[name], here)
            if pa.types.is_string(merged) and not (infer.has_text_form(types[name]) and infer.has_text_form(here)):
                raise InputError(f"{f.path}: column {name!r} is {type_name(here)} here but {type_name(types[name])} in "
                                 f"{seen_in[name]}: no type holds both (a nested value has no text form); convert one "
                                 f"of the files, or read them in separate jobs", file=f.path)
            types[name] = merged
    for name, dtype in (partitions or {}).items():   # after the files' columns, as pyarrow and DuckDB put them
        order.append(name)
        types[name] = dtype
    text_files = [f for f in files if f.format not in ("jsonl", "json")]
    if not job.input.allow_missing_columns and len(text_files) > 1:
        first = text_files[0]
        for f in text_files[1:]:
            _check_same_columns(first, file_order[first.path], f, file_order[f.path])
    inferred = {}
    user = job.input.types
    json_only = bool(files) and all(f.format in ("jsonl", "json") for f in files)
    for name, dtype in user.items():
        if name not in types and json_only:
            # a JSON key the sample did not meet: the schema names it, so read it
            order.append(name)
            types[name] = dtype
        elif name not in types:
            hint = ""
            import difflib
            close = difflib.get_close_matches(name, order, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
            raise ConfigError(f"column {name!r} is in no input file{hint}", key=f"input.schema.{name}",
                              line=job.line_of(f"input.schema.{name}"))
    fields = []
    for name in order:
        if name in user:
            dtype = user[name]
            inferred[name] = "input.schema"
        elif name in pinned:
            dtype = pinned[name]
            inferred[name] = "earlier run"
        elif name in (partitions or {}):
            dtype = infer.nullable_to_string(types[name])
            inferred[name] = "partition folders"
        else:
            dtype = infer.nullable_to_string(types[name])
            inferred[name] = "inferred"
        fields.append(pa.field(name, dtype))
    return pa.schema(fields), inferred
