"""Running the chunks: a multiprocessing Pool fed with ``imap_unordered``, and one writer process.

Order of a clean finish matters (a worker's ``Queue.put`` returns before its feeder thread has
flushed the data): all results in -> ``pool.close()`` + ``pool.join()`` (workers exit only after
flushing) -> ``("done", n)`` to the writer -> the writer commits n chunks and reports back.
On any failure the pool is terminated and the writer killed; the caller discards staging.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipeline import lock as lock_mod
from pipeline.errors import Interrupted, OutputError, PipelineError
from pipeline.plan import Chunk
from pipeline.worker import ChunkResult, WorkerSpec, init, process_chunk
from pipeline.write import WriterSpec, writer_main

log = logging.getLogger("pipeline")

POLL_SECONDS = 0.2
WRITER_EXIT_SECONDS = 10.0


@dataclass
class Execution:
    results: list[ChunkResult] = field(default_factory=list)
    writer: dict = field(default_factory=dict)
    acked_rows: dict[str, int] = field(default_factory=dict)


def _worker_init(queue, spec: WorkerSpec, title: str) -> None:
    lock_mod.close_inherited()
    init(queue, spec, title)


def _writer_entry(queue, events, spec: WriterSpec) -> None:
    lock_mod.close_inherited()
    writer_main(queue, events, spec)


class LocalExecutor:
    """N worker processes and one writer process on this machine."""

    def __init__(self, workers: int, start_method: str = "fork",
                 on_result: Callable[[ChunkResult], None] | None = None):
        self.workers = workers
        self.start_method = start_method
        self.on_result = on_result

    def run(self, chunks: Sequence[Chunk], worker_spec: WorkerSpec, writer_spec: WriterSpec) -> Execution:
        ctx = mp.get_context(self.start_method)
        data_q = ctx.Queue(maxsize=max(4, 4 * self.workers))
        events = ctx.Queue()
        execution = Execution()
        writer = ctx.Process(target=_writer_entry, args=(data_q, events, writer_spec),
                             name=f"pipeline: {writer_spec.job_name} writer", daemon=True)
        pool = None
        previous = _install_signal_handlers()
        try:
            writer.start()
            title = f"pipeline: {worker_spec.job_name} worker"
            pool = ctx.Pool(self.workers, initializer=_worker_init, initargs=(data_q, worker_spec, title))
            results = pool.imap_unordered(process_chunk, ((c, 0) for c in chunks), chunksize=1)
            remaining = len(chunks)
            while remaining:
                try:
                    result = results.next(timeout=POLL_SECONDS)
                except mp.TimeoutError:
                    self._check_writer(writer, events, execution)
                    continue
                remaining -= 1
                execution.results.append(result)
                if self.on_result:
                    self.on_result(result)
                self._drain_events(events, execution)
            pool.close()
            pool.join()
            pool = None
            data_q.put(("done", len(chunks)))
            execution.writer = self._wait_writer(writer, events, execution)
            writer.join(WRITER_EXIT_SECONDS)
            return execution
        except BaseException:
            if pool is not None:
                pool.terminate()
                pool.join()
            if writer.is_alive():
                writer.kill()
                writer.join(WRITER_EXIT_SECONDS)
            data_q.cancel_join_thread()
            raise
        finally:
            _restore_signal_handlers(previous)
            data_q.close()
            events.close()

    def _drain_events(self, events, execution: Execution) -> None:
        while True:
            try:
                msg = events.get_nowait()
            except queue_mod.Empty:
                return
            self._event(msg, execution)

    def _event(self, msg, execution: Execution):
        kind = msg[0]
        if kind == "ack":
            execution.acked_rows[msg[1]] = msg[3]
        elif kind == "error":
            err = msg[1]
            if isinstance(err, PipelineError):
                raise err
            raise RuntimeError(str(err))
        elif kind == "closed":
            return msg[1]
        return None

    def _check_writer(self, writer, events, execution: Execution) -> None:
        self._drain_events(events, execution)
        if not writer.is_alive():
            self._drain_events(events, execution)
            raise OutputError(f"the writer process died (exit code {writer.exitcode}); nothing was published")

    def _wait_writer(self, writer, events, execution: Execution) -> dict:
        while True:
            try:
                msg = events.get(timeout=POLL_SECONDS)
            except queue_mod.Empty:
                if not writer.is_alive():
                    try:
                        msg = events.get(timeout=1.0)
                    except queue_mod.Empty:
                        raise OutputError(f"the writer process died (exit code {writer.exitcode}); "
                                          f"nothing was published") from None
                else:
                    continue
            info = self._event(msg, execution)
            if info is not None:
                return info


def _raise_interrupted(signum, frame):
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    raise Interrupted(f"interrupted by {name}; nothing was published", signum=signum)


def _install_signal_handlers():
    if os.getpid() != _main_pid():
        return None
    try:
        return (signal.signal(signal.SIGTERM, _raise_interrupted), signal.signal(signal.SIGINT, _raise_interrupted))
    except ValueError:  # not the main thread
        return None


def _restore_signal_handlers(previous) -> None:
    if previous:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _main_pid() -> int:
    return os.getpid()
