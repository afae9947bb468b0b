"""The chunks of a plan as they are cut: the files after the first few are planned on a thread
while the workers already run (see ``plan.build_plan(stream=True)``).

``ChunkFeed`` is a sequence of chunks that may still be growing. Iterating it follows the plan as it
goes; ``len``, indexing and ``wait`` block until the whole plan is cut. An error met while planning
a later file (a header that differs from the first file's, an unreadable file) is raised to whoever
reads past the point where it happened, so the run fails as it would have before any chunk ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from pipeline.input.chunks import Chunk


class ChunkFeed(Sequence["Chunk"]):
    def __init__(self, first: Iterable[Chunk], rest: Iterator[list[Chunk]] | None = None,
                 later_cuts: Sequence[tuple[str, int]] = ()):
        self._chunks: list[Chunk] = list(first)
        self.cut_bytes = sum(c.nbytes for c in self._chunks)   # the input bytes of the chunks cut so far
        self.later_cuts = tuple(later_cuts)   # (path, most ranges) of the files not cut yet: input.boundaries
        self._done = rest is None
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._rest = rest
        self._thread: threading.Thread | None = None

    def start(self) -> ChunkFeed:
        """Begin planning the rest (once), on the first ``follow`` or ``wait``: the local executor's
        pool follows the feed from its task thread, after its workers are forked."""
        with self._cond:
            if self._thread is None and not self._done:
                self._thread = threading.Thread(target=self._plan_rest, name="pipeline-plan", daemon=True)
                self._thread.start()
        return self

    def _plan_rest(self) -> None:
        assert self._rest is not None
        try:
            for chunks in self._rest:
                with self._cond:
                    self._chunks.extend(chunks)
                    self.cut_bytes += sum(c.nbytes for c in chunks)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised again to the reader (see the module docstring)
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self._done

    def planned(self) -> list[Chunk]:
        """The chunks cut so far (without waiting)."""
        with self._cond:
            return list(self._chunks)

    def wait(self) -> list[Chunk]:
        """Every chunk, once the whole plan is cut; the planning error, if there was one."""
        self.start()
        with self._cond:
            while not self._done:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return self._chunks

    def follow(self, idle: float | None = None) -> Iterator[Chunk | None]:
        """The chunks in order, as they are cut. With ``idle``, also ``None`` each time no new chunk
        came for that many seconds (a reader can then act on what it has)."""
        self.start()
        i = 0
        while True:
            with self._cond:
                deadline = None if idle is None else time.monotonic() + idle
                while i >= len(self._chunks) and not self._done:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
                if i < len(self._chunks):
                    ready = self._chunks[i:]
                elif self._done:
                    if self._error is not None:
                        raise self._error
                    return
                else:
                    ready = []
            if not ready:
                yield None
            yield from ready
            i += len(ready)

    def __iter__(self) -> Iterator[Chunk]:
        for chunk in self.follow():
            assert chunk is not None
            yield chunk

    def __len__(self) -> int:
        return len(self.wait())

    def __bool__(self) -> bool:
        # without starting the plan's thread when the first files gave chunks: a thread running while
        # the executor forks its workers could leave them a lock held for ever
        with self._cond:
            if self._chunks:
                return True
        return bool(self.wait())

    @overload
    def __getitem__(self, index: int) -> Chunk: ...

    @overload
    def __getitem__(self, index: slice) -> list[Chunk]: ...

    def __getitem__(self, index):
        return self.wait()[index]
