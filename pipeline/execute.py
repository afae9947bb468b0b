"""Running the chunks: a multiprocessing Pool fed with ``imap_unordered``, and one writer process.

What the stdlib does not give, this module adds:
- a killed worker (SIGKILL, segfault, OOM killer, ``os._exit``) makes ``Pool`` wait for ever for its
  task (CPython gh-66587). Each worker announces the chunk it starts; the parent watches the pool's
  worker pids, and when one vanishes, re-runs its chunk on a fresh worker (``run.retries``). The
  writer keeps the first complete copy of a chunk, so a retry never doubles rows.
- ``run.chunk_timeout``: a chunk running longer is killed and retried the same way.
- the run is complete when the writer has acknowledged every chunk, not when workers returned:
  a worker's ``Queue.put`` returns before its feeder thread has sent the message.
- clean finish: all chunks acknowledged -> pool closed and joined (or terminated, if a task was
  lost, which is safe because nothing is in flight) -> ``("done", n)`` to the writer.
- on any failure or signal: the pool is terminated, the writer killed; the caller discards staging.
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
from pipeline.errors import InputError, OutputError, PipelineError
from pipeline.plan import Chunk
from pipeline.worker import ChunkResult, WorkerSpec, init, process_chunk
from pipeline.write import WriterSpec, writer_main

log = logging.getLogger("pipeline")

POLL_SECONDS = 0.1
WRITER_EXIT_SECONDS = 10.0


@dataclass
class Execution:
    results: dict[str, ChunkResult] = field(default_factory=dict)
    acked_rows: dict[str, int] = field(default_factory=dict)
    writer: dict = field(default_factory=dict)
    retried: list[tuple[str, str]] = field(default_factory=list)     # (chunk id, why)
    poisoned: list[tuple[Chunk, str]] = field(default_factory=list)


def set_parent_death_signal() -> None:
    """Linux: die with the parent, so a SIGKILLed run leaves no worker or writer behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _worker_init(queue, events, spec: WorkerSpec, title: str, parent: int) -> None:
    set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)
    lock_mod.close_inherited()
    init(queue, events, spec, title)


def _writer_entry(queue, events, spec: WriterSpec, parent: int) -> None:
    set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)
    lock_mod.close_inherited()
    writer_main(queue, events, spec)


class LocalExecutor:
    """N worker processes and one writer process on this machine."""

    def __init__(self, workers: int, start_method: str = "fork", *, retries: int = 2,
                 chunk_timeout: float | None = None,
                 on_result: Callable[[ChunkResult], None] | None = None,
                 on_poison: Callable[[Chunk, str], tuple | None] | None = None):
        self.workers = workers
        self.start_method = start_method
        self.retries = retries
        self.chunk_timeout = chunk_timeout
        self.on_result = on_result
        self.on_poison = on_poison

    def run(self, chunks: Sequence[Chunk], worker_spec: WorkerSpec, writer_spec: WriterSpec) -> Execution:
        ctx = mp.get_context(self.start_method)
        data_q = ctx.Queue(maxsize=max(4, 4 * self.workers))
        events = ctx.Queue()
        ex = Execution()
        me = os.getpid()
        writer = ctx.Process(target=_writer_entry, args=(data_q, events, writer_spec, me),
                             name=f"pipeline: {writer_spec.job_name} writer", daemon=True)
        pool = None
        try:
            writer.start()
            title = f"pipeline: {worker_spec.job_name} worker"
            pool = ctx.Pool(self.workers, initializer=_worker_init,
                            initargs=(data_q, events, worker_spec, title, me))
            state = _State(chunks)
            results = pool.imap_unordered(process_chunk, ((c, 0) for c in chunks), chunksize=1)
            retries: list = []
            imap_left = len(chunks)
            while not state.finished():
                progressed = False
                if imap_left:
                    try:
                        result = results.next(timeout=POLL_SECONDS)
                        imap_left -= 1
                        self._take(result, state, ex)
                        progressed = True
                    except mp.TimeoutError:
                        pass
                    except StopIteration:
                        imap_left = 0
                else:
                    time.sleep(POLL_SECONDS)
                for handle in list(retries):
                    if handle.ready():
                        retries.remove(handle)
                        self._take(handle.get(), state, ex)
                progressed |= self._drain_events(events, state, ex)
                if not writer.is_alive():
                    self._drain_events(events, state, ex)
                    if not state.finished():
                        raise OutputError(f"the writer process died (exit code {writer.exitcode}); "
                                          f"nothing was published")
                for chunk_id, why in self._lost(pool, state):
                    self._retry(chunk_id, why, state, ex, pool, retries, data_q)
            if state.lost_tasks:
                pool.terminate()
            else:
                pool.close()
            pool.join()
            pool = None
            data_q.put(("done", len(chunks)))
            ex.writer = self._wait_writer(writer, events, state, ex)
            writer.join(WRITER_EXIT_SECONDS)
            return ex
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
            data_q.close()
            events.close()

    # -- results and events

    def _take(self, result: ChunkResult, state: "_State", ex: Execution) -> None:
        """A worker returned: its chunk's messages are sent or on their way to the writer."""
        if result.chunk_id not in state.acked:
            state.result_pid[result.chunk_id] = result.pid
        state.running.pop(result.chunk_id, None)

    def _commit(self, result: ChunkResult, state: "_State", ex: Execution) -> None:
        """The writer committed a chunk: from now on it counts, exactly once."""
        if result.chunk_id in state.acked:
            return
        state.acked.add(result.chunk_id)
        ex.results[result.chunk_id] = result
        state.running.pop(result.chunk_id, None)
        state.result_pid.pop(result.chunk_id, None)
        if self.on_result:
            self.on_result(result)

    def _drain_events(self, events, state: "_State", ex: Execution) -> bool:
        got = False
        while True:
            try:
                msg = events.get_nowait()
            except queue_mod.Empty:
                return got
            got = True
            self._event(msg, state, ex)

    def _event(self, msg, state: "_State", ex: Execution):
        kind = msg[0]
        if kind == "start":
            _, chunk_id, attempt, pid, started = msg
            if chunk_id not in state.acked and attempt == state.attempts.get(chunk_id, 0):
                state.running[chunk_id] = (pid, attempt, time.monotonic())
        elif kind == "ack":
            ex.acked_rows[msg[1]] = msg[3]
            self._commit(msg[4], state, ex)
        elif kind == "error":
            err = msg[1]
            if isinstance(err, PipelineError):
                raise err
            raise RuntimeError(str(err))
        elif kind == "closed":
            return msg[1]
        return None

    # -- lost chunks: dead workers, timeouts, end messages that never came

    def _lost(self, pool, state: "_State") -> list[tuple[str, str]]:
        procs = {p.pid: p for p in list(pool._pool)}
        for pid, proc in procs.items():
            state.procs.setdefault(pid, proc)
        alive = {pid for pid, p in procs.items() if p.exitcode is None}
        lost = []
        now = time.monotonic()
        for chunk_id, (pid, attempt, started) in list(state.running.items()):
            if chunk_id in state.acked:
                continue
            if pid not in alive and (pid not in procs or procs[pid].exitcode is not None):
                lost.append((chunk_id, _death(state.procs.get(pid), pid)))
            elif self.chunk_timeout and now - started > self.chunk_timeout:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                lost.append((chunk_id, f"timed out after {self.chunk_timeout:g} s (run.chunk_timeout)"))
        for chunk_id, pid in list(state.result_pid.items()):
            if chunk_id not in state.acked and pid not in alive:
                # its worker returned, then died before its last message reached the writer
                lost.append((chunk_id, _death(state.procs.get(pid), pid)))
        return lost

    def _retry(self, chunk_id: str, why: str, state: "_State", ex: Execution, pool, handles, data_q) -> None:
        state.running.pop(chunk_id, None)
        state.lost_tasks = True
        chunk = state.by_id[chunk_id]
        attempt = state.attempts[chunk_id] + 1
        state.result_pid.pop(chunk_id, None)
        if attempt > self.retries:
            log.error("%s: %s on every one of %d attempts", chunk.describe(), why, attempt)
            poisoned = self.on_poison(chunk, why, attempt) if self.on_poison else None
            if poisoned is None:
                raise InputError(f"{chunk.describe()}: the worker {why}, on every one of {attempt} attempts; "
                                 f"this chunk cannot be processed", file=chunk.file.path, chunk=chunk.id)
            ex.poisoned.append((chunk, why))
            state.attempts[chunk_id] = attempt
            for msg in poisoned:
                data_q.put(msg)  # its whole-chunk rejects and its end: the writer acks it like any chunk
            return
        log.warning("%s: the worker %s; retrying (attempt %d of %d)", chunk.describe(), why, attempt + 1,
                    self.retries + 1)
        ex.retried.append((chunk_id, why))
        state.attempts[chunk_id] = attempt
        state.result_pid.pop(chunk_id, None)
        handles.append(pool.apply_async(process_chunk, ((chunk, attempt),)))

    def _wait_writer(self, writer, events, state: "_State", ex: Execution) -> dict:
        while True:
            try:
                msg = events.get(timeout=POLL_SECONDS)
            except queue_mod.Empty:
                if writer.is_alive():
                    continue
                try:
                    msg = events.get(timeout=1.0)
                except queue_mod.Empty:
                    raise OutputError(f"the writer process died (exit code {writer.exitcode}); "
                                      f"nothing was published") from None
            info = self._event(msg, state, ex)
            if info is not None:
                return info


class _State:
    def __init__(self, chunks: Sequence[Chunk]):
        self.by_id = {c.id: c for c in chunks}
        self.attempts = {c.id: 0 for c in chunks}
        self.running: dict[str, tuple[int, int, float]] = {}
        self.result_pid: dict[str, int] = {}
        self.acked: set[str] = set()
        self.procs: dict = {}
        self.lost_tasks = False

    def finished(self) -> bool:
        return len(self.acked) == len(self.by_id)


def _death(proc, pid: int) -> str:
    code = getattr(proc, "exitcode", None)
    if code is None:
        return f"process {pid} died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"process {pid} was killed by {name}"
    return f"process {pid} exited with code {code}"
