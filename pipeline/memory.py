"""The run's memory budget (``run.memory_limit``) turned into sizes: chunk, chunks in flight, writer buffer.

The budget is for the summed PSS of all the run's processes (parent, writer, workers). Measured on
the W1 benchmark job (CSV -> filter, derive, select -> zstd Parquet, 2 workers), a process with the
pipeline, pyarrow and numpy loaded costs about ``PROCESS_BYTES`` (forked processes share pages,
each counted in part), and a worker needs about ``CHUNK_FACTOR`` times its chunk on top: the
chunk's text, the parsed table, the stages' results and the Arrow data it sends, and what the
allocators keep for the next chunk. Measured on 1.5 M rows (tests/test_memory.py, 2 workers): a
worker peaked at about 45, 67 and 125 MiB of PSS with 1, 2 and 4 MiB chunks, the parent at 50
and the writer at 30-40; ``CHUNK_FACTOR`` is set from that slope (it was 4, which let a run with
a 320 MiB limit peak at 330-350 MiB). On 4 M rows the
run's summed PSS peaked at 238, 287, 325 and about 500 MiB with 1, 4, 8 and 32 MiB chunks, and its
CPU time (user + system, all processes; on a busy machine) was 4.0, 3.2, 3.2 and 3.4-3.6 s: below 4 MiB each chunk's
fixed cost shows, above it only memory grows. So chunks are at most ``MAX_CHUNK``, whatever the budget.

    fixed      = PROCESS_BYTES * (workers + 2)                     # parent, writer, workers
    available  = memory_limit - fixed
    writer     = min(256 MiB, available / 4)                       # rows waiting for a row group
    chunk      = (available - writer) / (workers * CHUNK_FACTOR), between 1 MiB and 4 MiB
    in flight  = (available - writer - workers * CHUNK_FACTOR * chunk) / chunk chunks,
                 between 2 and 4 per worker                        # results waiting for the writer

``input.chunk_bytes``, when set, wins over the computed chunk size.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass

MIB = 1 << 20
DEFAULT_LIMIT = 1 << 30
PROCESS_BYTES = 48 * MIB
CHUNK_FACTOR = 24
MIN_CHUNK = 1 * MIB
MAX_CHUNK = 4 * MIB
MAX_WRITER_BUFFER = 256 * MIB
MIN_WRITER_BUFFER = 16 * MIB
IN_FLIGHT_PER_WORKER = 4
# output.row_group_rows's default: the writer holds up to a row group per partition (W1's summed PSS
# peaked at 323-338 MiB with 1,000,000 rows, 275-280 MiB with this; Polars writes row groups of
# this size, DuckDB of 122,880 rows)
ROW_GROUP_ROWS = 1 << 18


@dataclass(frozen=True)
class MemoryPlan:
    limit: int
    chunk_bytes: int          # the largest chunk the budget allows
    in_flight: int            # chunks whose results wait for the writer, at most (besides those being read)
    writer_buffer: int        # rows the writer holds for row groups before it writes the largest buffer out


def minimum(workers: int) -> int:
    """The smallest budget that runs ``workers`` workers with the smallest chunks."""
    return PROCESS_BYTES * (workers + 2) + MIN_WRITER_BUFFER + workers * CHUNK_FACTOR * MIN_CHUNK


def default_limit(workers: int) -> int:
    """1 GiB, or what ``workers`` workers need at the smallest settings when that is more."""
    return max(DEFAULT_LIMIT, minimum(workers) * 2)


def memory_plan(limit: int | None, workers: int) -> MemoryPlan:
    """Sizes for ``workers`` workers within ``limit`` bytes (None: the default); ValueError when
    ``limit`` is below :func:`minimum`."""
    workers = max(1, workers)
    if limit is None:
        limit = default_limit(workers)
    if limit < minimum(workers):
        raise ValueError(f"too little for {workers} worker(s): a run needs at least "
                         f"{minimum(workers) / MIB:.0f} MiB (about {PROCESS_BYTES // MIB} MiB for each process "
                         f"and {CHUNK_FACTOR}x the chunk size for each worker); raise it or lower run.workers")
    available = limit - PROCESS_BYTES * (workers + 2)
    writer = int(min(MAX_WRITER_BUFFER, max(MIN_WRITER_BUFFER, available / 4)))
    chunk = int(min(MAX_CHUNK, max(MIN_CHUNK, (available - writer) / (workers * CHUNK_FACTOR))))
    left = available - writer - workers * CHUNK_FACTOR * chunk
    in_flight = int(min(IN_FLIGHT_PER_WORKER * workers, max(2, left // chunk)))
    return MemoryPlan(limit, chunk, in_flight, writer)


# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
REUSE_BELOW = 32 * MIB       # the largest mmap threshold glibc accepts on 64-bit systems
KEEP_FREED = 4 * MAX_CHUNK   # free memory the heap keeps: a chunk's large blocks (measured: 16 MiB is enough)


def reuse_freed_memory() -> bool:
    """Have this process reuse the memory it frees instead of handing it back to the kernel (glibc).

    A worker allocates the same large blocks for every chunk: the chunk's text (``read``), numpy's
    masks over it, Arrow's record batches. glibc serves blocks above its mmap threshold with a fresh
    ``mmap`` and unmaps them when freed; the threshold moves (128 KiB up to 32 MiB) with what the
    process happened to free before, so whether the next chunk's blocks are reused or faulted in
    again page by page, each page zeroed by the kernel, depended on the parent's history before the
    fork. Measured on the W1 benchmark: 39,000 page faults in one build, 160,000-220,000 in the next
    (0.3-0.5 s more system time) for a change in the plan's type sample alone. With the threshold
    fixed above a chunk, blocks come from the heap and are reused (38,000 faults whatever came
    before); the heap keeps up to ``KEEP_FREED`` free, and the summed PSS of a run did not grow.
    Returns whether it applied (not on other C libraries, which keep their own behaviour).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, REUSE_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED))
