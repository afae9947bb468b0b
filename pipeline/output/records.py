"""What a chunk leaves behind, shared by the executors, the writers and the resume journal.

- ``ChunkResult``: a chunk's counts and a few bad rows (its rows went to part files);
- ``REJECTS_FILE_SCHEMA`` and ``rejects_table``: the Parquet files under ``_rejects/``;
- ``spool``/``unspool``: the Arrow IPC files that carry rows from a worker to the writer process.

It sits below ``execution/`` so that the writers and the journal never import an executor.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import arrays
from pipeline.input.chunks import Chunk
from pipeline.input.read import BadRow

BAD_ROW_SAMPLES = 5     # bad rows kept per chunk, and per run for the summary
SAMPLE_REASON_CHARS = 300   # of a kept bad row's reason (the whole one is in _rejects)
SAMPLE_RAW_CHARS = 80       # of its text (the summary does not show it; _rejects has it whole)
# A worker's message to the writer is one write to a pipe: up to PIPE_BUF bytes (4096 on Linux,
# the least POSIX allows is 512) a write is atomic, so a worker killed while sending one never
# leaves half a message that would corrupt the writer's pipe. 4 bytes are multiprocessing's header.
MESSAGE_BYTES = 4096 - 4

REJECTS_FILE_SCHEMA = pa.schema([
    ("file", pa.string()), ("line", pa.int64()), ("offset", pa.int64()), ("stage", pa.string()),
    ("reason", pa.string()), ("raw", pa.string()), ("chunk", pa.string()),
])


@dataclass
class ChunkResult:
    """What a worker reports for one chunk; the rows themselves went to the writer or to part files."""

    chunk_id: str
    attempt: int
    pid: int
    rows_read: int = 0
    rows_written: int = 0
    rows_filtered: int = 0
    rows_rejected: int = 0
    rows_added: int = 0
    lines_skipped: int = 0      # comment lines (csv.comment): not rows, counted apart
    bytes_read: int = 0
    messages: int = 0
    started: float = 0.0               # wall-clock time (epoch seconds) the worker began the chunk
    seconds: float = 0.0
    bad_samples: list[BadRow] = field(default_factory=list)
    source: str = ""                   # the input file the chunk is part of (named in type errors)

    def add_samples(self, bad: list[BadRow]) -> None:
        """Keep the first ``BAD_ROW_SAMPLES`` bad rows for the summary, shortened: a long raw record
        (an unterminated quote runs to the end of the chunk) must not make the chunk's message large."""
        room = BAD_ROW_SAMPLES - len(self.bad_samples)
        self.bad_samples.extend(_short(b) for b in bad[:max(room, 0)])

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["bad_samples"] = [b.__dict__ for b in self.bad_samples]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ChunkResult:
        data = dict(data)
        data["bad_samples"] = [BadRow(**b) for b in data.get("bad_samples", [])]
        return cls(**data)


def _short(b: BadRow) -> BadRow:
    reason = b.reason if len(b.reason) <= SAMPLE_REASON_CHARS else b.reason[:SAMPLE_REASON_CHARS - 1] + "\u2026"
    raw = b.raw[:SAMPLE_RAW_CHARS] if b.raw is not None else None
    return BadRow(b.file, b.line, b.offset, b.stage, reason, raw)


def end_message(chunk_id: str, attempt: int, messages: int, result: ChunkResult) -> tuple:
    """The message that commits a chunk, at most ``MESSAGE_BYTES`` pickled: samples are dropped from
    the end until it fits (the counts always do; a path longer than a page is the only way past).
    Measured pickled as the queue pickles it (the default protocol)."""
    while True:
        message = ("end", chunk_id, attempt, messages, result)
        if len(pickle.dumps(message)) <= MESSAGE_BYTES or not result.bad_samples:
            return message
        result.bad_samples = result.bad_samples[:-1]


def rejects_table(bad: list[BadRow], chunk: Chunk) -> pa.Table:
    """Bad rows as rows of a ``_rejects/`` file."""
    columns = {
        "file": [b.file for b in bad],
        "line": [b.line for b in bad],
        "offset": [b.offset for b in bad],
        "stage": [b.stage for b in bad],
        "reason": [b.reason for b in bad],
        "raw": [b.raw for b in bad],
        "chunk": [chunk.id] * len(bad),
    }
    return pa.Table.from_arrays([arrays.array(columns[f.name], f.type) for f in REJECTS_FILE_SCHEMA],
                                schema=REJECTS_FILE_SCHEMA)


SPOOL_BUFFER = 1 << 20   # the IPC format's small pieces are gathered into writes of about this size


def _spool_file(path: str) -> pa.NativeFile:
    """A spool file to write: the IPC format's small pieces (metadata, validity bitmaps) are gathered
    into few writes, its large buffers go to the file directly, without a copy of the whole file in
    memory first (W1's 4 MB chunks: 0.64 against 0.77 ms of CPU each)."""
    return pa.BufferedOutputStream(pa.OSFile(path, "wb"), buffer_size=SPOOL_BUFFER)


def spool(table: pa.Table, path: str) -> str:
    """Write a table as an Arrow IPC file that the writer memory-maps; return the path.

    The queue carries only this path and a row count (a few hundred bytes). A worker killed while
    writing leaves at most an unreferenced file, never a half-written message in the shared pipe.
    """
    # written in place: the queue names the file only once it is whole
    with _spool_file(path) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


@dataclass(frozen=True)
class Shared:
    """One chunk's rows in a spool file that ``sharers`` chunks share: record batches
    ``first`` to ``first + count`` (small chunks sent together; see ``spool_together``)."""

    path: str
    first: int
    count: int
    sharers: int


def spool_together(tables: list[pa.Table], path: str) -> list[Shared]:
    """Write tables of one schema as one Arrow IPC file; return where each one's batches are.

    Many small chunks (thousands of small files) cost one file between worker and writer per pool
    task instead of one each: creating and deleting files is what such a run would otherwise spend
    its time on."""
    tmp = path + ".tmp"
    refs = []
    at = 0
    with _spool_file(tmp) as sink, pa.ipc.new_file(sink, tables[0].schema) as writer:
        for table in tables:
            batches = table.to_batches()
            for batch in batches:
                writer.write_batch(batch)
            refs.append(Shared(path, at, len(batches), len(tables)))
            at += len(batches)
    os.rename(tmp, path)
    return refs


def unspool(path: str) -> pa.Table:
    # The table keeps the mapping alive; the file may be unlinked while it is in use.
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


class SpoolFiles:
    """The writer's side: reads a chunk's rows, and deletes a spool file once every chunk that has
    rows in it is done with it."""

    def __init__(self) -> None:
        self.left: dict[str, int] = {}
        self.open: dict[str, pa.ipc.RecordBatchFileReader] = {}

    def read(self, ref: str | Shared) -> pa.Table:
        if not isinstance(ref, Shared):
            return unspool(ref)
        reader = self.open.get(ref.path)
        if reader is None:
            reader = self.open[ref.path] = pa.ipc.open_file(pa.memory_map(ref.path, "r"))
        batches = [reader.get_batch(i) for i in range(ref.first, ref.first + ref.count)]
        return pa.Table.from_batches(batches, schema=reader.schema)

    def release(self, ref: str | Shared) -> None:
        if isinstance(ref, Shared):
            left = self.left.get(ref.path, ref.sharers) - 1
            if left > 0:
                self.left[ref.path] = left
                return
            self.left.pop(ref.path, None)
            self.open.pop(ref.path, None)
            ref = ref.path
        try:
            os.unlink(ref)
        except FileNotFoundError:
            pass
