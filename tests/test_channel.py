"""The workers' channel to the writer: whole messages in each sender's order, and no process killed
while sending can stop the others (multiprocessing.Queue's shared write lock could: see channel)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import random
import signal
import threading
import time

import pytest

from pipeline.execution.channel import Channel, Sender
from pipeline.output.records import MESSAGE_BYTES

CTX = mp.get_context("fork")


def _send_forever(channel: Channel, sender: int, size: int) -> None:
    i = 0
    while True:
        channel.put(("m", sender, i, "x" * size))
        i += 1


class _Reader(threading.Thread):
    """Takes every message off the channel until ("done",), checking each is whole and in order."""

    def __init__(self, channel: Channel):
        super().__init__(daemon=True)
        self.channel = channel
        self.last: dict[int, int] = {}
        self.count = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                msg = self.channel.get()
                if msg == ("done",):
                    self.done.set()
                    return
                kind, sender, i, payload = msg
                assert kind == "m" and set(payload) <= {"x"}
                assert i == self.last.get(sender, -1) + 1, f"sender {sender}: message {i} after {self.last.get(sender)}"
                self.last[sender] = i
                self.count += 1
        except BaseException as exc:  # noqa: BLE001 - raised again by the test
            self.error = exc
            self.done.set()


def test_messages_arrive_whole_and_in_order_from_many_processes(tmp_path):
    channel = Channel(CTX, str(tmp_path))
    reader = _Reader(channel)
    reader.start()
    sizes = [10, MESSAGE_BYTES, 3 * MESSAGE_BYTES]          # the last two are spilled to files
    procs = [CTX.Process(target=_send_forever, args=(channel, n, size), daemon=True) for n, size in enumerate(sizes)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    for p in procs:
        p.kill()
        p.join()
    Sender(channel).put(("done",))
    assert reader.done.wait(10), "the parent's message never arrived"
    assert reader.error is None, reader.error
    assert set(reader.last) == {0, 1, 2} and reader.count > 100


@pytest.mark.parametrize("round_", range(3))
def test_senders_killed_while_sending_leave_the_channel_working(tmp_path, round_):
    # Four processes send as fast as they can and are SIGKILLed at random moments, most of them in
    # the middle of a put. The parent's message must still arrive, and every message that arrived
    # must be whole. (With multiprocessing.Queue the parent waits for ever, in some round, on the
    # write lock a killed sender held.)
    rng = random.Random(round_)
    channel = Channel(CTX, str(tmp_path))
    reader = _Reader(channel)
    reader.start()
    for _wave in range(5):
        procs = [CTX.Process(target=_send_forever, args=(channel, 10 * _wave + n, rng.choice([50, 2000])), daemon=True)
                 for n in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join()
    Sender(channel).put(("done",))
    assert reader.done.wait(10), "a killed sender left the channel stuck: the parent's message never arrived"
    assert reader.error is None, reader.error


def test_get_times_out_and_spill_files_are_removed(tmp_path):
    channel = Channel(CTX, str(tmp_path))
    with pytest.raises(queue_mod.Empty):
        channel.get(timeout=0.05)
    channel.put(("big", "y" * (4 * MESSAGE_BYTES)))
    assert len(os.listdir(tmp_path)) == 1
    assert channel.get(timeout=1) == ("big", "y" * (4 * MESSAGE_BYTES))
    assert os.listdir(tmp_path) == []


def test_a_send_that_fails_is_reported_by_the_sender(tmp_path):
    channel = Channel(CTX, str(tmp_path / "missing"))   # a large message cannot be spilled there
    sender = Sender(channel)
    sender.put(("big", "z" * (4 * MESSAGE_BYTES)))
    deadline = time.monotonic() + 5
    while sender.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(FileNotFoundError):
        sender.check()
