"""Paths that may be URLs: local files, and object stores or remote filesystems through fsspec.

Input paths and ``output.path`` may be ``s3://``, ``gs://``, ``abfs://`` (any fsspec protocol whose
package is installed). Credentials come from the environment the way each library finds them
(``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``/instance roles for s3fs, ``AWS_ENDPOINT_URL`` for an
S3-compatible server, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs, ``AZURE_STORAGE_*`` for adlfs)
and from fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL=...``, ``~/.config/fsspec/``).
``file://`` URLs are plain local paths (the config turns them into paths when it loads).

Object stores have no rename, so an output there is published differently from a local one
(see ``publish_remote``): parts are written under the final prefix with names unique to the run,
then ``_manifest.json``, then ``_SUCCESS``; readers go by the manifest.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import IO

from pipeline.errors import ConfigError, InputError, OutputError

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"

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


def open_input(path: str) -> IO[bytes]:
    """A seekable binary file for reading, local or remote."""
    if not is_url(path):
        return open(path, "rb")
    fs, p = filesystem(path)
    return fs.open(p, "rb")


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


# ---------------------------------------------------------------------------------------- output


def read_remote_manifest(url: str) -> dict | None:
    fs, root = filesystem(url)
    path = posixpath.join(root, MANIFEST)
    _fresh(fs, root)
    try:
        with fs.open(path, "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{url}/{MANIFEST}: unreadable manifest: {exc}") from exc


def remote_exists(url: str, name: str) -> bool:
    fs, root = filesystem(url)
    _fresh(fs, root)
    return fs.exists(posixpath.join(root.rstrip("/"), name))


def list_remote(url: str) -> list[str]:
    """Every file under an output prefix, relative to it."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    _fresh(fs, root)
    try:
        found = fs.find(root, withdirs=False)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OutputError(f"{url}: cannot list the output: {exc}") from exc
    return sorted(p[len(root) + 1:] for p in found if p.startswith(root + "/"))


def _fresh(fs, root: str) -> None:
    """Forget fsspec's cached listings under ``root``: other processes write there."""
    try:
        fs.invalidate_cache(root)
    except Exception:  # noqa: BLE001 - a filesystem without a listings cache
        pass


def check_remote_target(url: str, mode: str) -> dict | None:
    """As publish.check_target for a URL: refuse outputs we must not touch; return the manifest."""
    files = list_remote(url)
    if not files:
        return None
    manifest = read_remote_manifest(url)
    if manifest is None and all(_ours(f) for f in files):
        return None  # only parts of runs that never published: nothing to keep
    if mode == "error":
        raise OutputError(f"output.path {url} already holds data and output.mode is 'error'; "
                          f"use mode overwrite or append, or remove it")
    if manifest is None:
        raise OutputError(f"output.path {url} holds files that this program did not write (no {MANIFEST}); "
                          f"refusing to replace them: remove them or choose another path")
    return manifest


_PART = re.compile(r"(^|/)part-[0-9A-Za-z]+(-[0-9]+)?-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}\.parquet$")


def _ours(rel: str) -> bool:
    """A part file name this program makes (the run id at its end)."""
    return bool(_PART.search(rel))


def _write_bytes(fs, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as fh:
        fh.write(data)


def publish_remote(url: str, manifest: dict, run_id: str, keep: set[str]) -> list[str]:
    """Make a run's parts, already under the prefix, the output. Returns the files removed.

    Order: drop the old ``_SUCCESS``; put ``_manifest.json`` (one PUT: readers see the old manifest
    or the new one, whole); put ``_SUCCESS`` (it holds the run id); only then remove what the new
    manifest does not list: the previous run's parts (overwrite) and parts of runs that died.
    ``keep`` is every relative path the new manifest lists.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    try:
        try:
            fs.rm(posixpath.join(root, SUCCESS))
        except FileNotFoundError:
            pass
        _write_bytes(fs, posixpath.join(root, MANIFEST),
                     (json.dumps(manifest, indent=2, default=str) + "\n").encode())
        _write_bytes(fs, posixpath.join(root, SUCCESS), (run_id + "\n").encode())
    except OSError as exc:
        raise OutputError(f"cannot publish {url}: {exc}") from exc
    return remove_unlisted(url, keep)


def remove_unlisted(url: str, keep: set[str]) -> list[str]:
    """Remove the part files under the prefix that ``keep`` does not list (only names this program makes)."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    gone = [rel for rel in list_remote(url) if rel not in keep and _ours(rel)]
    if gone:
        try:
            fs.rm([posixpath.join(root, rel) for rel in gone])
        except FileNotFoundError:
            pass
        except OSError as exc:  # the new output is published; stale parts are only clutter
            import logging

            logging.getLogger("pipeline").warning("could not remove %d stale part files under %s: %s",
                                                  len(gone), url, exc)
    return gone
