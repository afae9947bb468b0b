"""`pipeline inspect PATH`: an output's schema, rows, files and counts, from its manifest."""

from __future__ import annotations

import json
import os
import sys

from pipeline.errors import EX_USAGE, InputError
from pipeline.output.publish import MANIFEST, SUCCESS, read_manifest


def inspect_output(path: str, *, as_json: bool = False) -> int:
    from pipeline.input.storage import is_url, read_remote_manifest, remote_exists

    remote = is_url(path)
    if not remote and not os.path.isdir(path):
        print(f"pipeline: error: {path}: no such output directory", file=sys.stderr)
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
    print(f"  rows       {rows:,} in {len(manifest['files'])} files, {size / (1 << 20):.1f} MiB")
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
            print(f"    {r['run_id']}  {r['finished']}  {r['counts']['rows_written']:,} rows written")
    print("  files")
    for f in manifest["files"]:
        print(f"    {f['path']:<60} {f['rows']:>10,} rows {f['bytes']:>12,} B")
    if manifest.get("rejects", {}).get("files"):
        print(f"  rejects    {manifest['rejects']['rows']:,} rows in {os.path.join(path, '_rejects')}")
    return 0
