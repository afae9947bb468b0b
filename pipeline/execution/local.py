"""Running the chunks: a multiprocessing Pool fed with ``imap_unordered``, and one writer process.

What the stdlib does not give, this module adds:
- a killed worker (SIGKILL, segfault, OOM killer, ``os._exit``) makes ``Pool`` wait for ever for its
  task (CPython gh-66587). Each worker announces the chunk it starts; the parent watches the pool's
  worker pids, and when one vanishes, re-runs its chunk on a fresh worker (``run.retries``). The
  writer keeps the first complete copy of a chunk, so a retry never doubles rows.
- ``run.chunk_timeout``: a chunk running longer is killed and retried the same way.
- the run is complete when the writer has acknowledged every chunk, not when workers returned.
- workers send to the writer over a ``channel.Channel``, which shares no lock between processes:
  a worker killed while sending cannot leave the others (or the parent) waiting on one.
- clean finish: all chunks acknowledged -> pool closed and joined (or terminated, if a task was
  lost, which is safe because nothing is in flight) -> ``("done", n)`` to the writer.
- on any failure or signal: the pool is terminated, the writer killed; the caller discards staging.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.pool
import os
import queue as queue_mod
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InputError, OutputError, PipelineError
from pipeline.execution.channel import Channel, Sender
from pipeline.execution.executor import Committed, OnResult, TaskSettings, group_small
from pipeline.execution.worker import WorkerSettings, init, process_chunks
from pipeline.input import boundaries
from pipeline.input.chunks import Chunk
from pipeline.input.feed import ChunkFeed
from pipeline.input.read import BadRow, raw_records
from pipeline.input.storage import is_url
from pipeline.memory import reuse_freed_memory
from pipeline.output import lock as lock_mod
from pipeline.output.publish import REJECTS
from pipeline.output.records import ChunkResult, end_message, rejects_table, spool
from pipeline.output.write import WriterSettings, writer_main

log = logging.getLogger("pipeline")

POLL_SECONDS = 0.1
# The writer hears that the end is near (it then writes the row group it holds, and smaller ones after)
# once the input left to hand out is at most this many times what may wait between the pool and the
# writer's commit: the workers still have the last chunks to read while the writer encodes what it
# held. Measured on the W1 benchmark (2 workers): the writer went on alone for 107 ms (median of 6)
# after the last worker finished when told only once every chunk was handed out, 80 ms with 3.
NEAR_END = 3
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


def _worker_init(queue, events, spec: WorkerSettings, title: str, parent: int | None, states, slots) -> None:
    set_parent_death_signal()
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the run died before this process got going
    reuse_freed_memory()
    lock_mod.close_inherited()
    boundaries.use_table(boundaries.StateTable(states, slots))
    init(queue, events, spec, title)


def _writer_entry(queue, events, spec: WriterSettings, parent: int | None) -> None:
    set_parent_death_signal()
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    reuse_freed_memory()
    lock_mod.close_inherited()
    writer_main(queue, events, spec)


class LocalExecutor:
    """N worker processes and one writer process on this machine."""

    name = "local"
    writes_urls = False    # the writer process writes into a local directory

    def __init__(self, workers: int, start_method: str = "fork", *, retries: int = 2,
                 chunk_timeout: float | None = None, in_flight: int | None = None):
        self.in_flight = in_flight or max(4, 4 * workers)   # chunks waiting for the writer, at most
        self.workers = workers
        self.start_method = start_method
        self.retries = retries
        self.chunk_timeout = chunk_timeout
        self.on_result: OnResult | None = None
        self.quarantine = False

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, chunks: Sequence[Chunk], task: TaskSettings, on_result: OnResult) -> Committed:
        """Run the chunks; their rows are in the writer's part files under ``task.parts.root``."""
        if is_url(task.parts.root):
            raise ValueError("the local executor writes into a local directory, not a URL")
        self.on_result = on_result
        self.quarantine = task.worker.on_bad_rows == "quarantine"
        ex = self._execute(chunks, task.worker, task.parts)
        files = [dict(f) for f in ex.writer["files"]]
        written = sum(f["rows"] for f in files if not f["path"].startswith(REJECTS + "/"))
        if written != sum(ex.acked_rows.values()):
            raise RuntimeError(f"the writer's files hold {written} rows, but it acknowledged "
                               f"{sum(ex.acked_rows.values())}; nothing was published")
        return Committed(ex.results, files, ex.writer.get("schema"))

    def _execute(self, chunks: Sequence[Chunk], worker_spec: WorkerSettings,
                 writer_spec: WriterSettings) -> Execution:
        ctx: Any = mp.get_context(self.start_method)  # a fork, spawn or forkserver context
        # No slots and no lock (see channel): the chunks handed out but not yet committed are bounded
        # by the parent instead (see new_pool); the parent's own messages go through a sender thread.
        data_q = Channel(ctx, worker_spec.spool)
        to_writer = Sender(data_q)
        events = ctx.Queue()
        # workers' "start" messages: synchronous (see worker.process_chunk); one queue per pool, as a
        # worker killed while writing one keeps the queue's lock for ever
        starts = ctx.SimpleQueue()
        ex = Execution()
        # under forkserver the parent of our processes is the fork server, which dies with us
        me = None if self.start_method == "forkserver" else os.getpid()
        feed = chunks if isinstance(chunks, ChunkFeed) else ChunkFeed(chunks)   # a list is a feed already cut
        state = _State(feed)
        self._worker_spec = worker_spec
        writer = ctx.Process(target=_writer_entry, args=(data_q, events, writer_spec, me),
                             name=f"pipeline: {writer_spec.job_name} writer", daemon=True)
        title = f"pipeline: {worker_spec.job_name} worker"
        # the quote state at each cut of a cut file, shared by the workers (see input.boundaries)
        n_slots, slots = boundaries.shared_slots(feed.planned(), feed.later_cuts)
        states = ctx.RawArray("b", [boundaries.UNKNOWN] * max(n_slots, 1))

        # input bytes handed out and not yet committed: chunks queued for the writer, or being read
        limit = (self.in_flight + self.workers) * worker_spec.read.block_bytes

        def new_pool():
            """A pool for every chunk not yet committed, fed as the plan cuts them (see input.feed)."""
            nonlocal starts
            if state.generation:
                starts.close()
                starts = ctx.SimpleQueue()
            with state.cond:
                state.generation += 1
                generation = state.generation
                state.outstanding.clear()   # handed out again by this pool
                state.outstanding_bytes = 0
                state.cond.notify_all()
            pool = _Pool(min(self.workers, max(len(feed), 1)) if feed.done else self.workers,
                         initializer=_worker_init,
                         initargs=(data_q, starts, worker_spec, title, me, states, slots), context=ctx)
            # Pool replaces and forgets dead workers on its own thread; remember every one it starts,
            # so that a worker born and killed between two polls is still seen with its exit code.
            pool._pool = _Recorded(pool._pool, state.procs)

            def tasks():   # runs on the pool's task thread
                seen = 0   # input bytes of the chunks taken from the feed (handed out, or committed already)
                told = False

                def todo():
                    nonlocal seen
                    for c in feed.follow(GROUP_WAIT):
                        if c is not None:
                            seen += c.nbytes
                            if c.id in state.acked or c.id in state.poisoned:
                                continue
                        yield c

                for group in group_small(todo(), worker_spec.read.block_bytes):
                    if not told and feed.done and feed.cut_bytes - seen <= NEAR_END * limit:
                        # the end is near: the writer writes what it holds and smaller row groups from
                        # now on, while the workers still have the last chunks to read (see ending)
                        to_writer.put(("last",))
                        told = True
                    size = sum(c.nbytes for c in group)
                    with state.cond:
                        # at most ``limit`` bytes of input between the pool and the writer's commit:
                        # the rows waiting for the writer stay bounded (run.memory_limit)
                        while state.generation == generation and state.outstanding \
                                and state.outstanding_bytes + size > limit:
                            state.cond.wait(POLL_SECONDS)
                        if state.generation != generation:
                            return   # this pool was replaced
                        for chunk in group:
                            state.add(chunk)
                            state.tries[chunk.id] += 1
                            if chunk.id not in state.outstanding:
                                state.outstanding[chunk.id] = chunk.nbytes
                                state.outstanding_bytes += chunk.nbytes
                    yield tuple((chunk, state.tries[chunk.id]) for chunk in group)
                if not told:   # every chunk is handed out
                    to_writer.put(("last",))

            return pool, pool.imap_unordered(process_chunks, tasks(), chunksize=1)

        pool = None
        try:
            writer.start()
            pool, results = new_pool()
            broken = False
            while not state.finished():
                if results is not None:
                    try:
                        for result in results.next(timeout=POLL_SECONDS):
                            self._take(result, state)
                    except mp.TimeoutError:
                        pass
                    except StopIteration:
                        results = None
                else:
                    # every result is in: wait for the writer's acknowledgements, waking on each
                    try:
                        self._event(events.get(timeout=POLL_SECONDS), state, ex)
                    except queue_mod.Empty:
                        pass
                self._drain_events(events, state, ex)
                while not starts.empty():
                    self._event(starts.get(), state, ex)
                to_writer.check()
                if not writer.is_alive():
                    self._drain_events(events, state, ex)
                    if not state.finished():
                        raise OutputError(f"the writer process died (exit code {writer.exitcode}); "
                                          f"nothing was published")
                deaths = self._deaths(pool, state)
                while deaths and not starts.empty():   # the chunk a worker started just before it died
                    self._event(starts.get(), state, ex)
                if deaths and not state.finished():
                    # A dead worker may have held the pool's task-queue lock, which would wedge the
                    # pool for good (and Pool.terminate with it): start a fresh pool for the rest.
                    self._blame(deaths, state, ex, to_writer)
                    _kill_pool(pool)
                    broken = True
                    state.running.clear()
                    state.result_pid.clear()
                    state.procs.clear()  # the old pool's processes were killed on purpose
                    pool, results = new_pool()
            if pool is not None:
                if broken:
                    _kill_pool(pool)  # every chunk is committed: nothing is in flight
                else:
                    pool.close()
                    pool.join()
            pool = None
            to_writer.put(("done", len(feed)))
            ex.writer = self._wait_writer(writer, events, state, ex, to_writer)
            writer.join(WRITER_EXIT_SECONDS)
            return ex
        except BaseException:
            if pool is not None:
                _kill_pool(pool)
            if writer.is_alive():
                writer.kill()
                writer.join(WRITER_EXIT_SECONDS)
            events.cancel_join_thread()
            raise
        finally:
            with state.cond:   # a pool's task thread still waiting to hand out work stops
                state.generation += 1
                state.cond.notify_all()
            to_writer.close()
            data_q.close()
            events.close()
            starts.close()

    # -- results and events

    def _take(self, result: ChunkResult, state: _State) -> None:
        """A worker returned: its chunk's messages are sent or on their way to the writer."""
        if result.chunk_id not in state.acked:
            state.result_pid[result.chunk_id] = result.pid
        state.running.pop(result.chunk_id, None)

    def _commit(self, result: ChunkResult, state: _State, ex: Execution) -> None:
        """The writer committed a chunk: from now on it counts, exactly once."""
        if result.chunk_id in state.acked:
            return
        state.acked.add(result.chunk_id)
        with state.cond:
            state.outstanding_bytes -= state.outstanding.pop(result.chunk_id, 0)
            state.cond.notify_all()
        ex.results[result.chunk_id] = result
        state.running.pop(result.chunk_id, None)
        state.result_pid.pop(result.chunk_id, None)
        if self.on_result:
            self.on_result(result)

    def _drain_events(self, events, state: _State, ex: Execution) -> bool:
        got = False
        while True:
            try:
                msg = events.get_nowait()
            except queue_mod.Empty:
                return got
            got = True
            self._event(msg, state, ex)

    def _event(self, msg, state: _State, ex: Execution):
        kind = msg[0]
        if kind == "start":
            _, chunk_id, attempt, pid, _started = msg
            if chunk_id not in state.acked and attempt == state.tries.get(chunk_id):
                # the chunk this worker ran before is read; its rows wait to go with the rest of its task
                for other, (p, _, _) in list(state.running.items()):
                    if p == pid:
                        del state.running[other]
                        state.result_pid[other] = pid
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

    # -- dead workers, timeouts

    def _deaths(self, pool, state: _State) -> list[tuple[int, str]]:
        """(pid, what happened) for every worker of this pool that is gone, or was killed for time."""
        deaths = []
        for pid, proc in list(state.procs.items()):
            if proc.exitcode is not None and pid not in state.dead:
                state.dead.add(pid)
                deaths.append((pid, _death(proc, pid)))
        if self.chunk_timeout:
            now = time.monotonic()
            for _chunk_id, (pid, _attempt, started) in list(state.running.items()):
                if now - started > self.chunk_timeout and pid not in state.dead:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    state.dead.add(pid)
                    deaths.append((pid, f"timed out after {self.chunk_timeout:g} s (run.chunk_timeout)"))
        return deaths

    def _blame(self, deaths, state: _State, ex: Execution, to_writer: Sender) -> None:
        """Count a failure against each chunk a dead worker was running; poison the hopeless ones."""
        blamed = False
        for pid, why in deaths:
            running = [cid for cid, (p, _, _) in state.running.items() if p == pid and cid not in state.acked]
            held = [cid for cid, p in state.result_pid.items()
                    if p == pid and cid not in running and cid not in state.acked]
            if running:
                # the chunk it was on is to blame; those it had finished go again, at no cost to them
                for chunk_id in held:
                    blamed = True
                    log.warning("%s: the worker %s before sending its rows; retrying", state.by_id[chunk_id].describe(),
                                why)
                    ex.retried.append((chunk_id, why))
            for chunk_id in running or held:
                blamed = True
                chunk = state.by_id[chunk_id]
                state.failures[chunk_id] += 1
                tries = state.failures[chunk_id]
                if tries > self.retries:
                    self._poison(chunk, why, tries, state, ex, to_writer)
                else:
                    log.warning("%s: the worker %s; retrying (attempt %d of %d)", chunk.describe(), why,
                                tries + 1, self.retries + 1)
                    ex.retried.append((chunk_id, why))
        if not blamed:
            state.unattributed += 1
            log.warning("a worker %s while idle; restarting the pool", deaths[0][1])
            if state.unattributed > self.retries + 2:
                raise RuntimeError(f"worker processes keep dying ({deaths[0][1]}); giving up")

    def _poison(self, chunk: Chunk, why: str, tries: int, state: _State, ex: Execution, to_writer: Sender) -> None:
        log.error("%s: the worker %s, on every one of %d attempts", chunk.describe(), why, tries)
        # an attempt number of its own, so these messages never mix with a worker's attempt
        state.tries[chunk.id] += 1
        poisoned = (quarantine_chunk(chunk, self._worker_spec, f"the worker {why}, on every one of {tries} attempts",
                                     state.tries[chunk.id]) if self.quarantine else None)
        if poisoned is None:
            raise InputError(f"{chunk.describe()}: the worker {why}, on every one of {tries} attempts; "
                             f"this chunk cannot be processed", file=chunk.file.path, chunk=chunk.id)
        ex.poisoned.append((chunk, why))
        state.poisoned.add(chunk.id)
        for msg in poisoned:
            to_writer.put(msg)  # its whole-chunk rejects and its end: acked like any chunk

    def _wait_writer(self, writer, events, state: _State, ex: Execution, to_writer: Sender) -> dict:
        while True:
            try:
                msg = events.get(timeout=POLL_SECONDS)
            except queue_mod.Empty:
                to_writer.check()
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


GROUP_WAIT = 0.02    # seconds a task waits for the plan to cut one more chunk before it goes as it is


def quarantine_chunk(chunk: Chunk, spec: WorkerSettings, reason: str, attempt: int) -> list[tuple]:
    """The queue messages that record every record of a chunk in _rejects, and end the chunk."""
    records = list(raw_records(chunk, spec.read))
    bad = [BadRow(chunk.file.path, line, offset, "worker", reason, raw) for line, offset, raw in records]
    table = rejects_table(bad, chunk)
    path = spool(table, os.path.join(spec.spool, f"{chunk.id}.{attempt}.0.arrow"))
    result = ChunkResult(chunk.id, attempt, os.getpid(), rows_read=len(bad), rows_rejected=len(bad),
                         messages=1, bytes_read=chunk.nbytes)
    result.add_samples(bad[:1])
    return [("rejects", chunk.id, attempt, path, len(bad)), end_message(chunk.id, attempt, 1, result)]


class _Pool(mp.pool.Pool):
    """A process pool whose worker-handler thread wakes when a worker exits or the pool changes
    (closed, its last task done), as a thread pool's does. The standard one also wakes when the
    result pipe has data, and so spins while a result waits for the result thread: about 50 wakeups
    per result, each polling every worker, a tenth of a core taken from the workers (W1: 5,287
    wakeups for 102 chunks)."""

    _pool: list                # the standard Pool's own attributes, which typeshed leaves out
    _change_notifier: Any

    def _get_sentinels(self):
        return [self._change_notifier._reader]


class _Recorded(list):
    """The pool's list of worker processes, also recording each one into ``seen`` by pid."""

    def __init__(self, procs, seen: dict):
        super().__init__(procs)
        self.seen = seen
        for proc in procs:
            seen[proc.pid] = proc

    def append(self, proc) -> None:
        super().append(proc)
        self.seen[proc.pid] = proc


class _State:
    def __init__(self, chunks: ChunkFeed):
        self.chunks = chunks
        self.by_id: dict[str, Chunk] = {}
        self.tries: dict[str, int] = {}                # submissions so far: the attempt number of the latest
        self.failures: dict[str, int] = {}             # attempts that killed their worker
        self.generation = 0                            # pools started
        self.outstanding: dict[str, int] = {}          # handed to the current pool, not yet committed: bytes
        self.outstanding_bytes = 0
        self.cond = threading.Condition()              # guards both, between the pool's task thread and us
        self.running: dict[str, tuple[int, int, float]] = {}
        self.result_pid: dict[str, int] = {}
        self.acked: set[str] = set()
        self.poisoned: set[str] = set()
        self.procs: dict = {}
        self.dead: set[int] = set()
        self.unattributed = 0

    def add(self, chunk: Chunk) -> None:
        if chunk.id not in self.by_id:
            self.by_id[chunk.id] = chunk
            self.tries[chunk.id] = -1
            self.failures[chunk.id] = 0

    def finished(self) -> bool:
        return self.chunks.done and len(self.acked) == len(self.chunks)


def _kill_pool(pool) -> None:
    """Stop a pool without Pool.terminate(), which can wait for ever on a lock a dead worker held.

    Its finaliser is cancelled for the same reason; its helper threads are daemons, left blocked.
    """
    from multiprocessing import pool as pool_mod

    pool._terminate.cancel()
    pool._state = pool_mod.TERMINATE
    pool._worker_handler._state = pool_mod.TERMINATE
    pool._task_handler._state = pool_mod.TERMINATE
    pool._change_notifier.put(None)
    procs = list(pool._pool)
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
    for proc in procs:
        proc.join(WRITER_EXIT_SECONDS)


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
