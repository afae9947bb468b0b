"""Opening input files as byte streams, decompressing on the fly with a cap on the output size."""

from __future__ import annotations

import pyarrow as pa

from pipeline.errors import InputError
from pipeline.input.storage import STREAM_READ_AHEAD, is_url, open_input


class CappedStream:
    """A read-only stream that fails once more than ``limit`` bytes came out of it.

    A small gzip can inflate to terabytes; the cap stops such a bomb with a clear error
    instead of filling memory or disk.
    """

    def __init__(self, path: str, stream, limit: int | None):
        self.path = path
        self.stream = stream
        self.limit = limit
        self.produced = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.stream.read(n) if n is not None and n >= 0 else self.stream.read()
        except OSError as exc:
            raise InputError(f"{self.path}: {exc} (the file is damaged or was cut short)", file=self.path) from exc
        self.produced += len(data)
        if self.limit is not None and self.produced > self.limit:
            raise InputError(
                f"{self.path}: decompressed size exceeds input.max_decompressed_bytes ({self.limit} bytes); "
                f"a decompression bomb, or raise the limit", file=self.path)
        return data

    def close(self) -> None:
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_decompressed(path: str, compression: str | None, limit: int | None = None) -> CappedStream:
    try:
        if is_url(path):
            raw = open_input(path, STREAM_READ_AHEAD) if compression else open_input(path)
            stream = pa.input_stream(raw, compression=compression) if compression else raw
        else:
            # the stream is returned open, inside the CappedStream the caller closes
            stream = pa.input_stream(path, compression=compression) if compression else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc}", file=path) from exc
    return CappedStream(path, stream, limit if compression else None)
