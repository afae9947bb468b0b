"""Shared pytest fixtures. Helper functions live in tests/helpers.py."""

from __future__ import annotations

import socket
import urllib.request

import pytest


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def workers(request) -> int:
    """Serial and parallel runs must agree: tests taking this fixture run with both."""
    return request.param


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server (moto) on a free loopback port; credentials and endpoint in the environment."""
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its buckets per process, across servers: start from none
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"),
                           timeout=10).read()
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("lake")
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@pytest.fixture
def queues():
    """worker.init() as the pool runs it, with in-process queues; the test process keeps its signal handlers."""
    import queue as queue_mod
    import signal

    from pipeline.execution import worker

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    data, events = queue_mod.Queue(), queue_mod.Queue()

    def start(spec):
        worker.init(data, events, spec)
        return data, events

    yield start
    for s, h in handlers.items():
        signal.signal(s, h)
    worker._STATE.clear()
