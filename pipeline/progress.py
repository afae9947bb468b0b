"""Progress for people and for logs: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from pipeline.output.records import ChunkResult

log = logging.getLogger("pipeline")


class Progress:
    def __init__(self, total_bytes: int, total_chunks: int | None, *, enabled: bool | None, interval: float):
        """``total_chunks`` None: not known yet (the plan is still being cut)."""
        self.total_bytes = total_bytes
        self.total_chunks = total_chunks
        self.interval = interval
        self.done_chunks = 0
        self.done_bytes = 0
        self.rows = 0
        self.started = time.monotonic()
        self.last_log = self.started
        use_bar = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="pipeline", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, result: ChunkResult) -> None:
        self.done_chunks += 1
        self.done_bytes += result.bytes_read
        self.rows += result.rows_read
        if self.bar is not None:
            self.bar.update(result.bytes_read)
            self.bar.set_postfix_str(f"{self._chunks()} chunks, {self.rows:,} rows", refresh=False)
            return
        now = time.monotonic()
        if now - self.last_log >= self.interval:
            self.last_log = now
            pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
            log.info("progress: %s chunks, %.0f%% of input, %s rows read, %.1f s",
                     self._chunks(), pct, f"{self.rows:,}", now - self.started)

    def set_total(self, total_bytes: int) -> None:
        """The input's size once a streamed plan has listed every file (it was an estimate)."""
        self.total_bytes = total_bytes
        if self.bar is not None:
            self.bar.total = total_bytes
            self.bar.refresh()

    def _chunks(self) -> str:
        return f"{self.done_chunks}/{self.total_chunks}" if self.total_chunks is not None else str(self.done_chunks)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
