"""What a chunk leaves behind, shared by the executors, the writers and the resume journal.

- ``ChunkResult``: a chunk's counts and a few bad rows (its rows went to part files);
- ``REJECTS_FILE_SCHEMA`` and ``rejects_table``: the Parquet files under ``_rejects/``;
- ``spool``/``unspool``: the Arrow IPC files that carry rows from a worker to the writer process.

It sits below ``execution/`` so that the writers and the journal never import an executor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import arrays
from pipeline.input.plan import Chunk
from pipeline.input.read import BadRow

BAD_ROW_SAMPLES = 5     # bad rows kept per chunk, and per run for the summary

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

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["bad_samples"] = [b.__dict__ for b in self.bad_samples]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ChunkResult:
        data = dict(data)
        data["bad_samples"] = [BadRow(**b) for b in data.get("bad_samples", [])]
        return cls(**data)


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


def spool(table: pa.Table, path: str) -> str:
    """Write a table as an Arrow IPC file that the writer memory-maps; return the path.

    The queue carries only this path and a row count (a few hundred bytes). A worker killed while
    writing leaves at most an unreferenced file, never a half-written message in the shared pipe.
    """
    tmp = path + ".tmp"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.rename(tmp, path)
    return path


def unspool(path: str) -> pa.Table:
    # The table keeps the mapping alive; the file may be unlinked while it is in use.
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
