"""The executor seam: what every way of running chunks promises to the run template.

``run.run_job`` sequences a run once; an executor only turns chunks into committed results. Two
implement it: ``execution.local.LocalExecutor`` (a process pool and one writer process on this
machine) and ``execution.dask.DaskExecutor`` (one task per chunk on a Dask cluster, each writing
its own part files). Where the part files go, and how they are published, is the output
target's business (``output.target``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import pyarrow as pa

from pipeline.execution.worker import WorkerSettings
from pipeline.input.chunks import Chunk
from pipeline.output.records import ChunkResult
from pipeline.output.write import WriterSettings


@dataclass(frozen=True)
class TaskSettings:
    """What running a chunk needs: how to turn it into rows, and where and how to write them."""

    worker: WorkerSettings
    parts: WriterSettings


@dataclass
class Committed:
    """What an executor hands back once every chunk is committed."""

    results: dict[str, ChunkResult] = field(default_factory=dict)   # by chunk id, exactly one each
    files: list[dict] = field(default_factory=list)     # {"path", "rows", "bytes", "run_id"} under the root
    schema: pa.Schema | None = None                     # of the data files, when any rows were written


OnResult = Callable[[ChunkResult], None]

GROUP_CHUNKS = 64    # small chunks in one task, at most


def group_small(chunks: Iterable[Chunk | None], target: int) -> Iterator[list[Chunk]]:
    """Consecutive chunks, together up to ``target`` bytes (and GROUP_CHUNKS), as one task each:
    a thousand small files cost a few dozen round trips to the workers, not a thousand. A ``None``
    among the chunks (the plan is behind: see ChunkFeed.follow) sends the group gathered so far."""
    group: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if chunk is None:
            if group:
                yield group
                group, size = [], 0
            continue
        if group and (len(group) >= GROUP_CHUNKS or size + chunk.nbytes > target):
            yield group
            group, size = [], 0
        group.append(chunk)
        size += chunk.nbytes
    if group:
        yield group


class Executor(Protocol):
    """Runs chunks and commits their rows as part files under ``task.parts.root``.

    ``on_result`` is called once per committed chunk, in the caller's process, as chunks finish;
    it may raise to stop the run (too many bad rows). A chunk that kills its worker on every
    attempt is quarantined whole into ``_rejects/`` when ``on_bad_rows`` is quarantine, else the run
    fails. On any failure the executor stops its processes and raises; the caller discards.
    """

    name: str                 # "local" or "dask", for the log
    writes_urls: bool         # can write part files straight under an object-store prefix
    workers: int              # worker processes, for the summary (known after __enter__)

    def __enter__(self) -> Executor: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def run(self, chunks: Sequence[Chunk], task: TaskSettings, on_result: OnResult) -> Committed: ...
