"""`pipeline inspect PATH`: an output's schema, rows, files and counts, from its manifest; or one
Parquet file's schema, rows and row groups, from its footer."""

from __future__ import annotations

import json
import os
import sys

from pipeline.config import format_bytes, plural
from pipeline.errors import EX_USAGE, InputError
from pipeline.output.publish import MANIFEST, SUCCESS, read_manifest


def inspect_output(path: str, *, as_json: bool = False) -> int:
    from pipeline.input.storage import is_url, read_remote_manifest, remote_exists

    remote = is_url(path)
    if not remote and os.path.isfile(path):
        return inspect_parquet_file(path, as_json=as_json)
    if not remote and not os.path.isdir(path):
        print(f"pipeline: error: {path}: no such file or directory; inspect takes an output directory "
              "(the output.path of a job) or a Parquet file", file=sys.stderr)
        return EX_USAGE
    manifest = read_remote_manifest(path) if remote else read_manifest(path)
    if manifest is None:
        raise InputError(f"{path}: no {MANIFEST}; not an output of this program (or not published)")
    if as_json:
        print(json.dumps(manifest, indent=2))
        return 0
    c = manifest["counts"]
    print(f"{path}")
    print(f"  job        {manifest['job']}  (config {manifest['config_hash'][:12]})")
    complete = remote_exists(path, SUCCESS) if remote else os.path.exists(os.path.join(path, SUCCESS))
    print(f"  run        {manifest['run_id']}  ({'complete' if complete else 'NO _SUCCESS'})")
    rows = sum(f["rows"] for f in manifest["files"])
    size = sum(f["bytes"] for f in manifest["files"])
    print(f"  rows       {plural(rows, 'row')} in {plural(len(manifest['files']), 'file')}, {format_bytes(size)}")
    print(f"  last run   {c['rows_read']:,} read, {c['rows_written']:,} written, {c['rows_filtered']:,} filtered, "
          f"{c['rows_rejected']:,} rejected")
    if manifest.get("partition_by"):
        print(f"  partitions {', '.join(manifest['partition_by'])}")
    print("  schema")
    for col in manifest["schema"]:
        print(f"    {col['name']:<24} {col['type']}")
    runs = manifest.get("runs", [])
    if len(runs) > 1:
        print("  runs")
        for r in runs:
            print(f"    {r['run_id']}  {r['finished']}  {plural(r['counts']['rows_written'], 'row')} written")
    print("  files")
    for f in manifest["files"]:
        print(f"    {f['path']:<60} {plural(f['rows'], 'row'):>15} {format_bytes(f['bytes']):>10}")
    if manifest.get("rejects", {}).get("files"):
        print(f"  rejects    {plural(manifest['rejects']['rows'], 'row')} in {os.path.join(path, '_rejects')}")
    return 0


def inspect_parquet_file(path: str, *, as_json: bool = False) -> int:
    """One Parquet file (a part file of an output, or any other): schema, rows, row groups, size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.dtypes import type_name

    try:
        meta = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a Parquet file ({exc}); inspect takes an output directory "
                         "(the output.path of a job) or a Parquet file") from None
    size = os.path.getsize(path)
    codecs = sorted({meta.row_group(g).column(c).compression
                     for g in range(meta.num_row_groups) for c in range(meta.num_columns)})
    if as_json:
        print(json.dumps({
            "path": path, "rows": meta.num_rows, "bytes": size, "row_groups": meta.num_row_groups,
            "created_by": meta.created_by, "compression": codecs,
            "schema": [{"name": f.name, "type": type_name(f.type), "nullable": f.nullable} for f in schema],
        }, indent=2))
        return 0
    print(path)
    compression = f", {', '.join(codecs).lower()}" if codecs else ""
    print(f"  file       Parquet, {format_bytes(size)}, {plural(meta.num_row_groups, 'row group')}{compression}")
    print(f"  rows       {plural(meta.num_rows, 'row')}")
    print(f"  written by {meta.created_by}")
    print("  schema")
    for field in schema:
        print(f"    {field.name:<24} {type_name(field.type)}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(os.path.join(folder, MANIFEST)):
        print(f"  part of    {folder} (pipeline inspect {folder})")
    return 0
