"""Paths that may be URLs: local files, and object stores or remote filesystems through fsspec.

Input paths and ``output.path`` may be ``s3://``, ``gs://``, ``abfs://`` (any fsspec protocol whose
package is installed). Credentials come from the environment the way each library finds them
(``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``/instance roles for s3fs, ``AWS_ENDPOINT_URL`` for an
S3-compatible server, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs, ``AZURE_STORAGE_*`` for adlfs)
and from fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL=...``, ``~/.config/fsspec/``).
``file://`` URLs are plain local paths (the config turns them into paths when it loads).

Writing and publishing an output under a URL is ``output.objectstore``'s business.
"""

from __future__ import annotations

import posixpath
from typing import IO

from pipeline.errors import ConfigError, InputError

# what each protocol needs installed, for the error message when it is missing
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "abfss": "adlfs",
            "az": "adlfs", "adl": "adlfs"}
EXTRAS = {"s3fs": "s3"}


def is_url(path: str) -> bool:
    return "://" in str(path)


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str):
    """(fsspec filesystem, path without the protocol) for a URL; ConfigError when its package is missing."""
    try:
        import fsspec.core
    except ImportError:
        raise ConfigError(f"{url}: URLs need fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = PACKAGES.get(protocol(url), f"the fsspec package for {protocol(url)}://")
        extra = EXTRAS.get(package)
        how = f"pip install 'pipeline[{extra}]' (or {package})" if extra else f"pip install {package}"
        raise ConfigError(f"{url}: {protocol(url)}:// paths need {package}, which is not installed: {how}") from exc
    except ValueError as exc:  # an unknown protocol
        raise ConfigError(f"{url}: {exc}") from exc


def full_url(fs, path: str) -> str:
    """The URL of a path a filesystem returned (fsspec strips the protocol)."""
    return fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    parts = tuple(p for p in parts if p)
    if is_url(base):
        return posixpath.join(base.rstrip("/"), *parts)
    import os

    return os.path.join(base, *parts)


# What a read of an object-store file fetches beyond what it asks for. fsspec's S3 files read 50 MiB
# ahead by default: a 4 KiB header probe fetched the first 50 MiB of the object, and every chunk 50 MiB
# past its end. Planning reads the head (a header, the type sample); a worker reads its own byte range.
READ_AHEAD = 256 << 10
STREAM_READ_AHEAD = 16 << 20    # a compressed file is read from start to end: fewer, larger requests


def open_input(path: str, read_ahead: int = READ_AHEAD) -> IO[bytes]:
    """A seekable binary file for reading, local or remote (fetching ``read_ahead`` bytes past each read)."""
    if not is_url(path):
        return open(path, "rb")
    fs, p = filesystem(path)
    return fs.open(p, "rb", block_size=read_ahead, cache_type="readahead")


def parquet_file(path: str):
    """A ``pyarrow.parquet.ParquetFile`` for a local path or a URL (closed with the ParquetFile)."""
    import pyarrow.parquet as pq

    if not is_url(path):
        return pq.ParquetFile(path)
    fs, p = filesystem(path)
    return pq.ParquetFile(p, filesystem=arrow_filesystem(fs))


def arrow_filesystem(fs):
    """An fsspec filesystem wrapped for pyarrow."""
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def mtime_ns(fs, path: str, info: dict) -> int:
    """A file's modification time in ns, or 0 when the store does not say."""
    try:
        when = fs.modified(path)
        return int(when.timestamp() * 1_000_000_000)
    except (NotImplementedError, AttributeError, OSError, ValueError, TypeError):
        pass
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(value, (int, float)):
        return int(value * 1_000_000_000)
    if value is not None and hasattr(value, "timestamp"):
        return int(value.timestamp() * 1_000_000_000)
    return 0


def glob(pattern: str) -> list[tuple[str, int, int]]:
    """(URL, size, mtime_ns) of every file a URL glob matches, sorted by URL."""
    fs, p = filesystem(pattern)
    try:
        if any(ch in p for ch in "*?["):
            found = fs.glob(p, detail=True)
        else:
            found = {p: fs.info(p)} if fs.exists(p) else {}
    except FileNotFoundError:
        found = {}
    except OSError as exc:
        raise InputError(f"{pattern}: cannot list: {exc}", file=pattern) from exc
    out = []
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        out.append((full_url(fs, path), int(info.get("size") or 0), mtime_ns(fs, path, info)))
    return out
