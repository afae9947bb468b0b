"""The plain data a plan hands to the workers: how to read (``ReadSpec``) and what (``Chunk``).

Frozen and picklable: chunks cross process boundaries (the local pool, Dask tasks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import pyarrow as pa

from pipeline.input.discover import InputFile


@dataclass(frozen=True)
class ReadSpec:
    """Everything a worker needs to turn any chunk into a table of ``schema``."""

    schema: pa.Schema
    delimiter: str = ","
    quote: str | None = '"'
    null_values: tuple[str, ...] = ("",)
    comment: str | None = None
    encoding: str = "utf-8"
    max_record_bytes: int = 16 << 20
    max_decompressed_bytes: int | None = None
    block_bytes: int = 64 << 20
    # the input columns the stages read (see stages.columns_read), in the schema's order; None: all.
    # A column nothing reads is not converted: a value in it that fits no type rejects no row.
    columns: tuple[str, ...] | None = None

    @property
    def read_schema(self) -> pa.Schema:
        """The schema of the tables read: ``schema`` narrowed to ``columns``."""
        if self.columns is None:
            return self.schema
        return pa.schema([f for f in self.schema if f.name in self.columns])

    def narrowed(self, read: frozenset[str] | None) -> ReadSpec:
        """This spec reading only ``read`` of its columns (None: all). With none of them (stages that
        make every column themselves), the first column is still read: it carries the rows."""
        if read is None or not len(self.schema):
            return replace(self, columns=None)
        keep = tuple(n for n in self.schema.names if n in read) or (self.schema.names[0],)
        return replace(self, columns=None if len(keep) == len(self.schema) else keep)


@dataclass(frozen=True)
class Chunk:
    """A unit of work: a byte range of a text file, a whole compressed file, or Parquet row groups."""

    id: str
    file: InputFile
    index: int
    start: int
    end: int                       # -1: to the end of a decompressed stream
    first_line: int = 1            # 0: not counted at plan time (see split.line_at)
    quotes: int = -1               # quote characters in the range; -1 unknown
    columns: tuple[str, ...] = ()  # the file's own column names in its order (text formats)
    row_groups: tuple[int, ...] = ()
    delimiter: str = ","
    lines_skipped: int = 0         # comment lines before the header (first chunk of a file)
    origin: int = -1               # a cut text chunk: where the file's records start (see input.boundaries)
    step: int = 0                  # a cut text chunk: the byte length of every range of its file
    states: tuple[int, int] = (-1, -1)   # quote state at both cuts, when resolved before the run (Dask)

    @property
    def cut(self) -> bool:
        """``start``-``end`` is a byte range cut without reading: the chunk's records are the ones
        that start in it, and the worker finds their boundaries (pipeline/input/boundaries.py)."""
        return self.origin >= 0

    @property
    def nbytes(self) -> int:
        """Input bytes of the chunk (a streamed file counts its compressed size)."""
        return (self.end - self.start) if self.end >= 0 else self.file.size

    def describe(self) -> str:
        if self.row_groups:
            where = f"row groups {self.row_groups[0]}-{self.row_groups[-1]}"
        elif self.end < 0:
            where = "whole file"
        else:
            where = f"bytes {self.start}-{self.end}"
        return f"chunk {self.index} of {self.file.path} ({where})"


def chunk_id(f: InputFile, start: int, end: int) -> str:
    """Stable across runs while the file and the range are the same."""
    key = f"{f.path}\0{f.size}\0{f.mtime_ns}\0{start}\0{end}".encode()
    return hashlib.sha1(key).hexdigest()[:16]
