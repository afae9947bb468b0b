"""Shared test helpers: write a job file, run the real CLI, read an output back with pyarrow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_job(directory: Path, job: dict, name: str = "job.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(job, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def basic_job(inputs, out="out", **sections) -> dict:
    job = {
        "name": sections.pop("name", "test-job"),
        "input": {"paths": inputs if isinstance(inputs, list) else [inputs]},
        "stages": sections.pop("stages", []),
        "output": {"path": out, "mode": "overwrite"},
        "run": {"workers": 1},
    }
    for key, value in sections.items():
        job.setdefault(key, {}).update(value)
    return job


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    if capsys is not None:
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return code, "", ""


def run_subprocess(*args: str, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_output(path: Path, partitioning: str | None = None) -> pa.Table:
    manifest = json.loads((Path(path) / "_manifest.json").read_text())
    files = [str(Path(path) / f["path"]) for f in manifest["files"]]
    dataset = ds.dataset(files, format="parquet", partitioning=partitioning,
                         partition_base_dir=str(path) if partitioning else None)
    return dataset.to_table()


def manifest_of(path: Path) -> dict:
    return json.loads((Path(path) / "_manifest.json").read_text())


def sort_rows(rows: list[dict], key=None) -> list[dict]:
    return sorted(rows, key=key or (lambda r: json.dumps(r, sort_keys=True, default=str)))
