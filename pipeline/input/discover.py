"""Globs -> a sorted, de-duplicated list of input files with their format and compression."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import stat
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from pipeline.errors import ConfigError, InputError
from pipeline.input.storage import glob as glob_url
from pipeline.input.storage import is_url

log = logging.getLogger("pipeline")

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
SNIFF_BYTES = 64 << 10
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"   # the folder of a null partition value (Hive, Spark, pyarrow)


@dataclass(frozen=True)
class InputFile:
    """One input file as the plan sees it. Plain data: it crosses process boundaries."""

    path: str
    format: str            # csv | tsv | jsonl | json (one JSON array) | parquet
    compression: str | None  # gzip | zstd | bz2 | None
    size: int
    mtime_ns: int
    partitions: tuple[tuple[str, str | None], ...] = ()   # hive key=value folders below the glob's root


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
        f"(csv, tsv, jsonl, json, parquet)",
        key="input.format",
    )


class Name(NamedTuple):
    """A local path a glob matched, before its size and kind are read (see ``Listing``)."""

    path: str                # absolute
    format: str              # by extension or input.format; "json" until the file is sniffed
    compression: str | None
    partitions: tuple[tuple[str, str | None], ...]
    pattern: int             # which of input.paths matched it
    entry: os.DirEntry | None = None   # from a folder listing: its stat comes without another path lookup


class Listing:
    """The input files, in order, in two steps.

    The names come first, for every glob: one folder is read and sorted where only the file name has
    wildcards, ``glob`` otherwise; formats, compressions and hive partitions follow from the names
    alone. Each file's size, modification time and kind (a file, a folder, a link) is read only as
    the listing is iterated, so a run can plan and run the first files while the rest are taken.
    """

    def __init__(self, items: list, *, follow_symlinks: bool, patterns: tuple[str, ...] = (), line_of=None,
                 allow_empty: bool = False):
        self.items = items       # Name (local) or InputFile (object stores list sizes with names)
        self.follow_symlinks = follow_symlinks
        self.patterns = patterns
        self.line_of = line_of
        self.allow_empty = allow_empty
        self.taken = 0           # names iterated so far

    def __len__(self) -> int:
        return len(self.items)

    def formats(self) -> set[str]:
        return {"jsonl" if i.format == "json" else i.format for i in self.items}

    def partitions(self) -> list[tuple[tuple[str, str | None], ...]]:
        return [i.partitions for i in self.items]

    def __iter__(self) -> Iterator[InputFile]:
        found: set[int] = set()
        for item in self.items:
            f = item if isinstance(item, InputFile) else self._take(item)
            self.taken += 1
            if f is not None:
                if isinstance(item, Name):
                    found.add(item.pattern)
                yield f
        if self.allow_empty:   # an incremental job's landing folder may hold no file tonight
            return
        # a glob whose every match with a data file's name turned out to be a folder
        for i in sorted({i.pattern for i in self.items if isinstance(i, Name)} - found):
            key = f"input.paths[{i}]"
            raise ConfigError(f"no file matches {self.patterns[i]!r}", key=key,
                              line=self.line_of(key) if self.line_of else None)

    def _take(self, name: Name) -> InputFile | None:
        """The input file behind a name; None for anything but a regular file (a folder, a fifo)."""
        real = name.path
        try:
            st = name.entry.stat(follow_symlinks=False) if name.entry is not None else os.lstat(real)
            if stat.S_ISLNK(st.st_mode):
                if os.path.isdir(real):
                    return None
                if not self.follow_symlinks:
                    raise InputError(f"{real}: is a symbolic link; set input.follow_symlinks: true to read it",
                                     file=real)
                st = os.stat(real)
        except OSError as exc:
            raise InputError(f"{real}: cannot read: {exc.strerror}", file=real) from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        fmt = json_kind(real, name.compression) if name.format == "json" else name.format
        return InputFile(real, fmt, name.compression, st.st_size, st.st_mtime_ns, name.partitions)


def list_inputs(patterns: tuple[str, ...], configured_format: str, *, follow_symlinks: bool = False,
                line_of=None, hive: bool = True, allow_empty: bool = False) -> Listing:
    """Expand every glob (sorted) into a ``Listing``; refuse unmatched globs.

    Below the part of a glob without wildcards, files and folders whose names start with ``_`` or
    ``.`` are left out (``_rejects/``, ``_manifest.json``, editor and staging files), as Spark,
    pyarrow and DuckDB do, and ``key=value`` folders are hive partitions: columns of every row of
    the files below them (``hive``).

    A glob that matches nothing is a configuration error naming the pattern, unless
    ``allow_empty`` (an incremental job's landing folder may be empty tonight). Symlinks are
    refused unless ``follow_symlinks`` is set, so a planted link cannot pull in other files.
    """
    seen: set[str] = set()
    items: list = []
    for i, pattern in enumerate(patterns):
        key = f"input.paths[{i}]"
        line = line_of(key) if line_of else None
        if is_url(pattern):
            items.extend(_discover_url(pattern, configured_format, seen, key, line, hive, allow_empty))
            continue
        flat = _match_folder(pattern)
        matches = _match_glob(pattern) if flat is None else []
        if not (flat[1] if flat is not None else matches):
            if allow_empty:
                log.info("no file matches %r yet", pattern)
                continue
            raise ConfigError(f"no file matches {pattern!r}", key=key, line=line)
        if flat is not None:
            # the names of one folder: nothing between it and the file, so no partition folder
            folder, entries = flat
            prefix = folder if folder.endswith(os.sep) else folder + os.sep
            for entry in entries:
                name = entry.name
                real = prefix + name
                if name.startswith(("_", ".")) or real in seen:
                    continue
                seen.add(real)
                fmt, compression = detect_name(name, real, configured_format)
                items.append(Name(real, fmt, compression, (), i, entry))
            continue
        base = os.path.abspath(literal_root(pattern, os.sep) or ".")
        before = len(items)
        # what a match's folder gives (its absolute path, whether it is hidden below the glob's root,
        # its partitions), worked out once per folder: thousands of files share a few folders
        folders: dict[str, tuple[str, bool, tuple]] = {}
        for match in matches:
            folder, name = os.path.split(match)
            known = folders.get(folder)
            if known is None:
                # the folder's path with a separator at its end ("/" for the root, not "//")
                real_folder = os.path.abspath(folder or os.curdir).rstrip(os.sep) + os.sep
                # the folders below the glob's root, then a file name (whichever file: only folders count)
                below = _below_local(base, real_folder + "f")
                known = folders[folder] = (real_folder, hidden(below[:-1]),
                                           hive_partitions(below) if hive else ())
            real_folder, folder_hidden, partitions = known
            real = real_folder + name if name not in ("", ".", "..") else os.path.abspath(match)
            if folder_hidden or name.startswith(("_", ".")) or real in seen:
                continue
            try:
                fmt, compression = detect_name(name or os.path.basename(real), real, configured_format)
            except ConfigError:
                if os.path.isdir(real):   # a folder the glob matched: only a name without a data file's
                    continue              # extension is looked up here; the others when they are taken
                raise
            seen.add(real)
            items.append(Name(real, fmt, compression, partitions, i))
        if len(items) == before and all(os.path.isdir(m) for m in matches) and not allow_empty:
            raise ConfigError(f"no file matches {pattern!r}", key=key, line=line)
    return Listing(items, follow_symlinks=follow_symlinks, patterns=tuple(patterns), line_of=line_of,
                   allow_empty=allow_empty)


def detect_name(name: str, path: str, configured: str) -> tuple[str, str | None]:
    """``detect`` for a file name, remembered by its last two extensions (thousands of files share them)."""
    lower = name.lower()
    last = lower.rfind(".")
    before = lower.rfind(".", 0, last) if last > 0 else -1
    found = _detect_suffix(lower[before if before >= 0 else max(last, 0):], configured)
    return found if found is not None else detect(path, configured)


@lru_cache(maxsize=64)
def _detect_suffix(suffix: str, configured: str) -> tuple[str, str | None] | None:
    try:
        return detect(suffix, configured)
    except ConfigError:
        return None   # raised again by ``detect`` with the file's own path


def discover(patterns: tuple[str, ...], configured_format: str, *, follow_symlinks: bool = False,
             line_of=None, hive: bool = True, allow_empty: bool = False) -> list[InputFile]:
    """Every input file the globs match, in order (``list_inputs``, taken whole)."""
    return list(list_inputs(patterns, configured_format, follow_symlinks=follow_symlinks, line_of=line_of,
                            hive=hive, allow_empty=allow_empty))


def _match_folder(pattern: str) -> tuple[str, list[os.DirEntry]] | None:
    """Where only the file name of a local glob has wildcards: its folder (absolute) and the entries
    other than folders that match, sorted; None for any other glob (see ``_match_glob``).

    The folder is read once with ``os.scandir``, whose entries tell folders from files without a
    lookup each, and the names are matched with ``fnmatch`` as ``glob`` itself does for that part
    (hidden names are left out by the caller). The order is ``sorted(glob.glob(pattern))``'s.
    """
    folder, name = os.path.split(pattern)
    if not glob.has_magic(name) or glob.has_magic(folder) or name == "**":
        return None
    try:
        with os.scandir(folder or os.curdir) as it:
            entries = {e.name: e for e in it}
    except OSError:
        return os.path.abspath(folder or os.curdir), []
    names = sorted(fnmatch.filter(entries, name))
    try:
        kept = [entries[n] for n in names if not entries[n].is_dir()]   # follows a link, as os.path.isdir
    except OSError:   # a link that cannot be followed: one at a time
        kept = [entries[n] for n in names if not _is_dir(entries[n])]
    return os.path.abspath(folder or os.curdir), kept


def _match_glob(pattern: str) -> list[str]:
    """The paths a local glob matches, sorted (folders among them are left out by the caller)."""
    return sorted(glob.glob(pattern, recursive=True))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()     # follows a link, as os.path.isdir does
    except OSError:
        return False


def old_enough(files: list[InputFile], min_age: float | None, now: float | None = None
               ) -> tuple[list[InputFile], list[InputFile]]:
    """(files last modified at least ``min_age`` seconds ago, the younger ones): a file still being
    written is left for the next run."""
    if not min_age:
        return files, []
    now = time.time() if now is None else now
    cutoff = (now - min_age) * 1e9
    return [f for f in files if f.mtime_ns <= cutoff], [f for f in files if f.mtime_ns > cutoff]


def _discover_url(pattern: str, configured_format: str, seen: set[str], key: str, line, hive: bool,
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
    root = literal_root(pattern, "/")
    for url, size, mtime_ns in matches:
        below = _below_url(root, url)
        if url in seen or hidden(below):
            continue
        seen.add(url)
        fmt, compression = detect(url, configured_format)
        if fmt == "json":
            fmt = json_kind(url, compression)
        files.append(InputFile(url, fmt, compression, size, mtime_ns, hive_partitions(below) if hive else ()))
    return files


def json_kind(path: str, compression: str | None) -> str:
    """``json`` when the file is one JSON array (its first non-blank byte is '['), else ``jsonl``."""
    from pipeline.input.json_array import looks_like_array
    from pipeline.input.streams import open_decompressed

    with open_decompressed(path, compression) as stream:
        head = stream.read(SNIFF_BYTES)
    return "json" if looks_like_array(head) else "jsonl"


def literal_root(pattern: str, sep: str) -> str:
    """The folder part of a glob before its first wildcard (``out/**/*.parquet`` -> ``out``)."""
    parts = pattern.split(sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    else:
        fixed = parts[:-1]   # no wildcard in a folder: the file's own folder
    root = sep.join(fixed)
    return root or (sep if pattern.startswith(sep) else "")


def _below_local(base: str, real: str) -> list[str]:
    """The path components of the absolute path ``real`` below the absolute folder ``base``."""
    prefix = base if base.endswith(os.sep) else base + os.sep
    rel = real[len(prefix):] if real.startswith(prefix) else os.path.relpath(real, base)
    return [p for p in rel.split(os.sep) if p not in ("", ".")]


def _below_url(root: str, url: str) -> list[str]:
    """The path components of ``url`` below the URL folder ``root`` (folders, then the file name)."""
    if root and url.startswith(root.rstrip("/") + "/"):
        rel = url[len(root.rstrip("/")) + 1:]
    else:
        rel = url.rsplit("/", 1)[-1]
    return [p for p in rel.split("/") if p not in ("", ".")]


def hidden(parts: list[str]) -> bool:
    return any(p.startswith(("_", ".")) for p in parts)


def hive_partitions(parts: list[str]) -> tuple[tuple[str, str | None], ...]:
    """(key, value) of every ``key=value`` folder; the writer's null folder gives None."""
    out = []
    for part in parts[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            value = urllib.parse.unquote(value)
            out.append((urllib.parse.unquote(key), None if value == NULL_PARTITION else value))
    return tuple(out)
