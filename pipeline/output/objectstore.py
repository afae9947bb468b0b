"""An output under an object-store prefix (``s3://bucket/sales``), read and published through fsspec.

Object stores have no rename, so an output there is published differently from a local one
(see ``publish_remote``): parts are written under the final prefix with names unique to the run,
then ``_manifest.json``, then ``_SUCCESS``; readers go by the manifest.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re

from pipeline.errors import OutputError
from pipeline.input.storage import filesystem
from pipeline.output.publish import MANIFEST, SUCCESS, checked_manifest, refuse_existing

log = logging.getLogger("pipeline")


def read_remote_manifest(url: str) -> dict | None:
    fs, root = filesystem(url)
    path = posixpath.join(root, MANIFEST)
    _fresh(fs, root)
    try:
        with fs.open(path, "rb") as fh:
            return checked_manifest(f"{url}/{MANIFEST}", json.loads(fh.read()))
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
    return refuse_existing(url, manifest, mode)


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
            log.warning("could not remove %d stale part files under %s: %s",
                                                  len(gone), url, exc)
    return gone
