"""What an append run carries over from the output it joins, into its staging directory.

Every earlier part file is hard-linked into staging unchanged, except:
- ``output.on_schema_change: add_columns``: a part that lacks a column of the new schema is
  rewritten with that column as nulls, so every part file has the whole schema and a plain read of
  the directory (pyarrow.dataset, pandas.read_parquet, DuckDB's read_parquet) shows every column;
- ``input.on_changed_file: reprocess``: the rows of a changed input file are left out (each part
  records in the manifest which input files its rows came from, in order), and so are its rejects.

The previous output is never modified: what changes is written into staging, which the publish
swaps in atomically.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import arrays
from pipeline.errors import InputError, OutputError
from pipeline.input.read import conform
from pipeline.output.publish import link_previous


def carry_previous(previous_dir: str, staging: str, manifest: dict, schema: pa.Schema | None,
                   partition_by: tuple[str, ...], replaced: set[str], compression: str = "zstd") -> dict:
    """Bring the earlier output into staging; return the manifest to build on (file entries updated).

    ``schema`` is this run's output schema (partition columns included); ``replaced`` the input
    files whose earlier rows are dropped.
    """
    manifest = dict(manifest)
    file_schema = None
    if schema is not None:
        file_schema = pa.schema([f for f in schema if f.name not in partition_by])
    done: set[str] = set()
    files = []
    for entry in manifest.get("files", []):
        entry = dict(entry)
        rel = entry["path"]
        src = os.path.join(previous_dir, rel)
        _check_part(previous_dir, rel, src, entry)
        drop = _rows_of(entry, replaced, src) if replaced else None
        needs_columns = file_schema is not None and not _has_columns(src, file_schema)
        if drop is not None and drop.all():
            done.add(rel)             # every row came from a replaced file: the part goes
            continue
        if drop is None and not needs_columns:
            files.append(entry)
            continue
        table = pq.read_table(src)
        if drop is not None:
            table = table.filter(arrays.array(~drop))
            entry["sources"] = [s for s in entry.get("sources", []) if s[0] not in replaced]
        if file_schema is not None:
            table = conform(file_schema)(table)
        dst = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        pq.write_table(table, dst, compression=None if compression == "none" else compression)
        entry["rows"], entry["bytes"] = table.num_rows, os.path.getsize(dst)
        done.add(rel)
        files.append(entry)
    manifest["files"] = files
    rejects = manifest.get("rejects", {"files": [], "rows": 0})
    if replaced:
        kept = []
        for entry in rejects.get("files", []):
            entry = dict(entry)
            src = os.path.join(previous_dir, entry["path"])
            table = pq.read_table(src)
            mask = pc.is_in(table.column("file"), arrays.array(sorted(replaced), pa.string()))
            if not pc.any(mask).as_py():
                kept.append(entry)
                continue
            done.add(entry["path"])
            table = table.filter(pc.invert(mask))
            if table.num_rows == 0:
                continue
            dst = os.path.join(staging, entry["path"])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            pq.write_table(table, dst)
            entry["rows"], entry["bytes"] = table.num_rows, os.path.getsize(dst)
            kept.append(entry)
        rejects = {"files": kept, "rows": sum(f["rows"] for f in kept)}
    manifest["rejects"] = rejects
    link_previous(previous_dir, staging, skip=done)
    return manifest


def _check_part(previous_dir: str, rel: str, src: str, entry: dict) -> None:
    """The part file the manifest lists is there, at the size it recorded: else the output was
    changed outside this program, and an append would publish a manifest that does not hold."""
    try:
        size = os.path.getsize(src)
    except OSError as exc:
        problem = f"is missing ({exc.strerror})"
    else:
        if "bytes" not in entry or size == entry["bytes"]:
            return
        problem = f"is {size:,} bytes, the manifest says {entry['bytes']:,}"
    raise OutputError(f"{previous_dir}: the part file {rel} that its manifest lists {problem}: the output was "
                      f"changed outside this program, so an append cannot keep its rows; restore it, or "
                      f"run with --full-refresh to write the output anew")


def _rows_of(entry: dict, replaced: set[str], path: str) -> np.ndarray | None:
    """A mask over the part's rows: True for rows that came from a replaced file (None: none did)."""
    sources = entry.get("sources")
    if sources is None:
        if entry.get("rows", 0) == 0:
            return None
        raise InputError(f"{path}: the output does not record which input files its rows came from (it was "
                         f"written by an earlier version); input.on_changed_file: reprocess cannot replace "
                         f"rows in it: run with --full-refresh once", file=path)
    if not any(s[0] in replaced for s in sources):
        return None
    mask = np.concatenate([np.full(int(n), src in replaced, dtype=bool) for src, n in sources]) \
        if sources else np.zeros(0, dtype=bool)
    if len(mask) != entry["rows"]:
        raise InputError(f"{path}: the manifest's record of where its rows came from does not add up "
                         f"({len(mask)} rows, the part holds {entry['rows']}); run with --full-refresh", file=path)
    return mask


def _has_columns(path: str, schema: pa.Schema) -> bool:
    names = set(pq.read_schema(path).names)
    return all(f.name in names for f in schema)
