"""The workers' channel to the writer: many processes put, one process gets, and no lock is shared.

``multiprocessing.Queue`` sends through a feeder thread that holds a lock shared by every process
while it writes to the pipe. A worker killed by the kernel (out of memory, SIGKILL, a crash in a
stage's C code) while its feeder holds that lock keeps it for ever, and every later ``put`` of any
process waits on it: the run hangs with the writer waiting for a ``done`` that never comes.

Here each message is pickled and written with one ``write(2)`` of at most ``PIPE_BUF`` bytes, which
POSIX makes atomic on a pipe: all of it reaches the reader or none does, and writes of several
processes never interleave. A sender killed at any moment has sent whole messages or none, and
holds nothing another process waits on. Queue messages are small (paths and counts; the
rows travel in spool files, see ``output.records``); one that is larger goes into a file in
``spill``, and the pipe carries its path.

``put`` writes in the calling thread and blocks while the pipe is full (the writer is behind): that
is the back-pressure a worker should feel. The parent, which must never wait on a writer that may
have died, sends through ``Sender``, a thread of its own.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import tempfile
import threading
import uuid
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

from pipeline.output.records import MESSAGE_BYTES  # a pipe's atomic write, less the length prefix


@dataclass(frozen=True)
class _Spilled:
    path: str


class Channel:
    """One pipe, written by any number of processes, read by one (see the module's docstring)."""

    def __init__(self, ctx: Any, spill: str):
        self._receiving, self._sending = ctx.Pipe(duplex=False)
        self.spill = spill or tempfile.gettempdir()

    def put(self, message: object) -> None:
        data = bytes(reduction.ForkingPickler.dumps(message))
        if len(data) > MESSAGE_BYTES:
            path = os.path.join(self.spill, f"message.{os.getpid()}.{uuid.uuid4().hex}")
            with open(path, "wb") as f:
                f.write(data)
            data = bytes(reduction.ForkingPickler.dumps(_Spilled(path)))
        # one write: Connection.send_bytes joins its length prefix and a payload of this size
        self._sending.send_bytes(data)

    def get(self, timeout: float | None = None) -> Any:
        """The next message; ``queue.Empty`` if none comes within ``timeout`` seconds."""
        if timeout is not None and not self._receiving.poll(timeout):
            raise queue_mod.Empty
        message = pickle.loads(self._receiving.recv_bytes())
        if isinstance(message, _Spilled):
            path = message.path
            with open(path, "rb") as f:
                message = pickle.loads(f.read())
            os.unlink(path)
        return message

    def close(self) -> None:
        self._receiving.close()
        self._sending.close()


class Sender:
    """The parent's side of a channel: ``put`` never blocks; a daemon thread writes the messages in
    order. If the reader has died, the thread waits on the full pipe while the parent, seeing the
    death, fails the run and closes the channel, which ends the wait. A failure to send while the
    channel is open is kept in ``error`` for the parent to raise (``check``)."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.error: OSError | None = None
        self._closing = False
        self._queue: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pipeline-sender", daemon=True)
        self._thread.start()

    def put(self, message: object) -> None:
        self._queue.put(message)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is _STOP:
                return
            try:
                self.channel.put(message)
            except OSError as exc:
                if not self._closing:
                    self.error = exc
                return

    def close(self) -> None:
        """Stop the thread once what was put is written, without waiting for it (the pipe may be full)."""
        self._closing = True
        self._queue.put(_STOP)


_STOP = object()
