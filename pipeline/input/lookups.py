"""Lookup tables: small reference files read whole, with the job's input readers, once per process.

A lookup is read the way an input file is (format by extension or ``format``, the ``csv``
options, declared ``schema``, compression), must have no bad rows, and may not be larger than its
``max_bytes``, neither on disk nor as an Arrow table in memory: every worker holds a copy.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from pipeline.errors import ConfigError, InputError
from pipeline.input.plan import build_plan
from pipeline.input.read import read_chunk
from pipeline.input.storage import is_url, open_input
from pipeline.memory import memory_plan


@dataclass(frozen=True)
class Lookup:
    """One entry of ``lookups``: plain, picklable data a worker needs to read the table."""

    name: str
    config: Any              # pipeline.config.LookupConfig
    key: str                 # "lookups.countries"
    line: int | None = None
    config_file: str = ""


def _format_bytes(n: int) -> str:
    from pipeline.config import format_bytes

    return format_bytes(n)


def _error(lookup: Lookup, message: str) -> ConfigError:
    return ConfigError(message, file=lookup.config_file or None, line=lookup.line, key=lookup.key)


def _size(path: str) -> int:
    if is_url(path):
        from pipeline.input.storage import filesystem

        fs, real = filesystem(path)
        return int(fs.size(real))
    return os.path.getsize(path)


def fingerprint(lookup: Lookup) -> dict:
    """The lookup file's identity for the manifest and the transform hash: size and a hash of every byte."""
    path = lookup.config.path
    try:
        size = _size(path)
    except OSError as exc:
        raise _error(lookup, f"cannot read the lookup file {path}: {exc.strerror or exc}") from None
    if size > lookup.config.max_bytes:
        raise _too_big(lookup, f"the file is {_format_bytes(size)}")
    h = hashlib.blake2b(digest_size=16)
    with open_input(path) as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            h.update(block)
    return {"name": lookup.name, "path": path, "size": size, "fingerprint": h.hexdigest()}


def _too_big(lookup: Lookup, what: str) -> ConfigError:
    limit = _format_bytes(lookup.config.max_bytes)
    return _error(lookup, f"{lookup.config.path}: {what}, more than max_bytes ({limit}); a lookup is held whole "
                          f"by every worker. Raise {lookup.key}.max_bytes if the machine has the memory, or join "
                          f"it in finalize instead")


def read_lookup(lookup: Lookup) -> pa.Table:
    """The whole lookup file as one Arrow table; ConfigError past max_bytes, InputError on a bad row."""
    cfg = lookup.config
    try:
        size = _size(cfg.path)
    except OSError as exc:
        raise _error(lookup, f"cannot read the lookup file {cfg.path}: {exc.strerror or exc}") from None
    if size > cfg.max_bytes:
        raise _too_big(lookup, f"the file is {_format_bytes(size)}")
    job = SimpleNamespace(input=cfg.as_input(), run=SimpleNamespace(workers=1, executor="local", memory_budget=None),
                          line_of=lambda key: lookup.line, memory=lambda workers: memory_plan(None, workers))
    try:
        plan = build_plan(job, workers=1)
    except ConfigError as exc:
        raise _error(lookup, exc.message) from None
    tables = []
    held = 0
    for chunk in plan.chunks:
        for block in read_chunk(chunk, plan.read):
            if block.bad:
                bad = block.bad[0]
                where = f"{bad.file} line {bad.line}" if bad.line else bad.file
                raise InputError(f"{lookup.key}: {where}: {bad.reason} (a lookup may have no bad rows)",
                                 file=bad.file, line=bad.line)
            held += block.table.nbytes
            if held > cfg.max_bytes:
                raise _too_big(lookup, f"its table takes more than {_format_bytes(held)} in memory")
            tables.append(block.table)
    if not tables:
        return pa.Table.from_batches([], schema=plan.read.schema)
    return pa.concat_tables(tables).combine_chunks()


_TABLES: dict[tuple, pa.Table] = {}
_LOCK = threading.Lock()


def lookup_tables(lookups: tuple[Lookup, ...], key: tuple) -> Mapping[str, pa.Table]:
    """Every lookup as a table, read once per process (``key`` holds the files' fingerprints).

    A forked worker finds the tables its parent read when it checked the job, and reads nothing.
    """
    out = {}
    with _LOCK:
        for lookup, ident in zip(lookups, key):
            cache_key = (lookup.name, ident)
            table = _TABLES.get(cache_key)
            if table is None:
                table = _TABLES[cache_key] = read_lookup(lookup)
            out[lookup.name] = table
    return out


def lookups_of(job) -> tuple[Lookup, ...]:
    """The job's ``lookups`` section as Lookup records, in the order written."""
    return tuple(Lookup(name, cfg, f"lookups.{name}", job.line_of(f"lookups.{name}"), str(job.config_path))
                 for name, cfg in job.lookups.items())


_PRINTS: dict[tuple, dict] = {}


def fingerprints(lookups: tuple[Lookup, ...]) -> list[dict]:
    """``fingerprint`` of each lookup, hashed once per process while the file's size and mtime stay."""
    out = []
    for lookup in lookups:
        path = lookup.config.path
        try:
            st = None if is_url(path) else os.stat(path)
        except OSError as exc:
            raise _error(lookup, f"cannot read the lookup file {path}: {exc.strerror or exc}") from None
        cache_key = (lookup.name, path, st.st_size, st.st_mtime_ns) if st else None
        found = _PRINTS.get(cache_key) if cache_key else None
        if found is None:
            found = fingerprint(lookup)
            if cache_key:
                _PRINTS[cache_key] = found
        out.append(dict(found))
    return out


def lookups_key(lookups: tuple[Lookup, ...]) -> tuple:
    """What identifies the lookups' contents: their fingerprints, in order."""
    return tuple(f["fingerprint"] for f in fingerprints(lookups))


def job_lookup_tables(job) -> Mapping[str, pa.Table]:
    """The job's lookups as tables (read once per process); ConfigError or InputError naming the lookup."""
    lookups = lookups_of(job)
    return lookup_tables(lookups, lookups_key(lookups)) if lookups else {}
