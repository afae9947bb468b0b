"""Globs -> a sorted, de-duplicated list of input files with their format and compression."""

from __future__ import annotations

import glob
import logging
import os
import stat
import time
from dataclasses import dataclass

from pipeline.errors import ConfigError, InputError
from pipeline.input.storage import glob as glob_url
from pipeline.input.storage import is_url

log = logging.getLogger("pipeline")

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class InputFile:
    """One input file as the plan sees it. Plain data: it crosses process boundaries."""

    path: str
    format: str            # csv | tsv | jsonl | parquet
    compression: str | None  # gzip | zstd | bz2 | None
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def detect(path: str, configured: str) -> tuple[str, str | None]:
    """(format, compression) of a path: compression by extension, format by config or extension."""
    name = path.lower()
    compression = None
    for ext, comp in COMPRESSIONS.items():
        if name.endswith(ext):
            compression = comp
            name = name[: -len(ext)]
            break
    if configured != "auto":
        return configured, compression
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt, compression
    raise ConfigError(
        f"cannot tell the format of {path!r} from its extension; set input.format "
        f"(csv, tsv, jsonl, parquet)",
        key="input.format",
    )


def discover(patterns: tuple[str, ...], configured_format: str, *, follow_symlinks: bool = False,
             line_of=None, allow_empty: bool = False) -> list[InputFile]:
    """Expand every glob (sorted), keep regular files, refuse unmatched globs.

    A glob that matches nothing is a configuration error naming the pattern, unless
    ``allow_empty`` (an incremental job's landing folder may be empty tonight). Symlinks are
    refused unless ``follow_symlinks`` is set, so a planted link cannot pull in other files.
    """
    seen: set[str] = set()
    files: list[InputFile] = []
    for i, pattern in enumerate(patterns):
        key = f"input.paths[{i}]"
        line = line_of(key) if line_of else None
        if is_url(pattern):
            files.extend(_discover_url(pattern, configured_format, seen, key, line, allow_empty))
            continue
        matches = sorted(glob.glob(pattern, recursive=True))
        matches = [m for m in matches if not os.path.isdir(m)]
        if not matches and allow_empty:
            log.info("no file matches %r yet", pattern)
            continue
        if not matches:
            raise ConfigError(f"no file matches {pattern!r}", key=key, line=line)
        for match in matches:
            real = os.path.abspath(match)
            if real in seen:
                continue
            seen.add(real)
            try:
                st = os.lstat(real)
                if stat.S_ISLNK(st.st_mode):
                    if not follow_symlinks:
                        raise InputError(
                            f"{real}: is a symbolic link; set input.follow_symlinks: true to read it",
                            file=real)
                    st = os.stat(real)
            except OSError as exc:
                raise InputError(f"{real}: cannot read: {exc.strerror}", file=real) from exc
            if not stat.S_ISREG(st.st_mode):
                continue
            fmt, compression = detect(real, configured_format)
            files.append(InputFile(real, fmt, compression, st.st_size, st.st_mtime_ns))
    return files


def old_enough(files: list[InputFile], min_age: float | None, now: float | None = None
               ) -> tuple[list[InputFile], list[InputFile]]:
    """(files last modified at least ``min_age`` seconds ago, the younger ones): a file still being
    written is left for the next run."""
    if not min_age:
        return files, []
    now = time.time() if now is None else now
    cutoff = (now - min_age) * 1e9
    return [f for f in files if f.mtime_ns <= cutoff], [f for f in files if f.mtime_ns > cutoff]


def _discover_url(pattern: str, configured_format: str, seen: set[str], key: str, line,
                  allow_empty: bool = False) -> list[InputFile]:
    """The files an fsspec URL glob (s3://bucket/raw/*.csv) matches, sorted."""
    try:
        matches = glob_url(pattern)
    except ConfigError as exc:
        exc.context.setdefault("key", key)
        if line:
            exc.context.setdefault("line", line)
        raise
    if not matches:
        if allow_empty:
            log.info("no file matches %r yet", pattern)
            return []
        raise ConfigError(f"no file matches {pattern!r}", key=key, line=line)
    files = []
    for url, size, mtime_ns in matches:
        if url in seen:
            continue
        seen.add(url)
        fmt, compression = detect(url, configured_format)
        files.append(InputFile(url, fmt, compression, size, mtime_ns))
    return files
