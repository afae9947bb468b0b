"""`pipeline init` (a starter job that validates and runs), `pipeline preview` (the stages on the first
rows, nothing written) and `run --dry-run` (validate and plan together)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml

from pipeline.demo import generate
from pipeline.dtypes import parse_type
from tests.helpers import ROOT, basic_job, manifest_of, read_output, run_cli, sort_rows, write_job

CORPUS = Path(os.environ.get("PIPELINE_CORPUS", ROOT.parent / "shared" / "corpus"))


def _records(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and records of a CSV file, by Python's csv module."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [r for r in rows[1:] if r]


def test_init_on_demo_data_validates_runs_and_its_make_targets_work(tmp_path, monkeypatch, capsys):
    demo = generate(tmp_path / "data", rows=900)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("init", "jobs", "--from", "data/raw/sales-*.csv*", capsys=capsys)
    assert code == 0, err
    job_file, make_file = tmp_path / "jobs" / "sales.yaml", tmp_path / "jobs" / "sales.mk"
    assert make_file.exists()
    assert f"wrote {Path('jobs') / 'sales.yaml'}" in out
    job = yaml.safe_load(job_file.read_text())
    assert job["input"]["paths"] == ["../data/raw/sales-*.csv*"]
    sales = sorted((tmp_path / "data" / "raw").glob("sales-*"))
    header, _ = _records(sales[0])
    assert job["stages"] == [{"select": header}]
    # the inferred schema, as comments: one line a column, in the file's order, with the type `plan` shows
    text = job_file.read_text()
    commented = [line.split("#")[1].split() for line in text.splitlines() if line.startswith("  #   ")]
    assert [c[0].rstrip(":") for c in commented] == header
    code, plan_out, _ = run_cli("plan", job_file, capsys=capsys)
    planned = {line.split()[0]: line.split()[1] for line in
               plan_out.split("input schema:")[1].split("output schema:")[0].strip().splitlines()}
    assert {c[0].rstrip(":"): c[1] for c in commented} == planned

    code, out, err = run_cli("validate", job_file, capsys=capsys)
    assert code == 0, err
    code, out, err = run_cli("run", job_file, "--no-progress", capsys=capsys)
    assert code == 0, err
    table = read_output(tmp_path / "jobs" / "out" / "sales")
    assert table.column_names == header
    records = [r for f in sales for r in _records(f)[1]]
    bad = [b for b in demo.bad_rows if b.file.startswith("sales-")]
    counts = manifest_of(tmp_path / "jobs" / "out" / "sales")["counts"]
    assert counts["rows_read"] == len(records) and counts["rows_rejected"] == len(bad)
    good_ids = sorted(int(r[0]) for r in records if len(r) == len(header))
    assert len(good_ids) - table.num_rows == sum(1 for b in bad if b.kind not in ("too_many_fields", "too_few_fields"))
    assert set(table.column("id").to_pylist()) <= set(good_ids)

    # the Makefile snippet, included from another folder's Makefile
    (tmp_path / "Makefile").write_text("include jobs/sales.mk\n")
    done = subprocess.run(["make", "--no-print-directory", "sales-preview", f"PIPELINE={sys.executable} -m pipeline"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "preview of sales" in done.stdout and "nothing is written" in done.stdout


@pytest.mark.skipif(not (CORPUS / "arrow").is_dir(), reason="the third-party corpus (shared/corpus) is not here")
def test_init_on_corpus_files_runs_and_matches_pyarrow(tmp_path, capsys):
    parts = CORPUS / "arrow" / "aggregate_test_100_partitioned"
    code, _out, err = run_cli("init", tmp_path / "job", "--from", str(parts / "part*.csv"), "--name", "agg",
                             capsys=capsys)
    assert code == 0, err
    config = tmp_path / "job" / "agg.yaml"
    assert run_cli("validate", config, capsys=capsys)[0] == 0
    code, _out, err = run_cli("run", config, "--no-progress", capsys=capsys)
    assert code == 0, err
    got = read_output(tmp_path / "job" / "out" / "agg")
    schema = {c["name"]: parse_type(c["type"]) for c in manifest_of(tmp_path / "job" / "out" / "agg")["schema"]}
    expected = pa.concat_tables(
        pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(column_types=schema))
        for p in sorted(parts.glob("part*.csv")))
    assert got.num_rows == expected.num_rows == 100
    assert sort_rows(got.to_pylist()) == sort_rows(expected.select(got.column_names).to_pylist())


def test_init_refuses_to_replace_a_job_without_force(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("a,b\n1,x\n")
    assert run_cli("init", tmp_path, "--from", tmp_path / "in.csv", capsys=capsys)[0] == 0
    code, _out, err = run_cli("init", tmp_path, "--from", tmp_path / "in.csv", capsys=capsys)
    assert code == 2 and "in.yaml exists" in err and "--force" in err
    assert run_cli("init", tmp_path, "--from", tmp_path / "in.csv", "--force", capsys=capsys)[0] == 0
    code, _out, err = run_cli("init", tmp_path, "--from", tmp_path / "nothing*.csv", capsys=capsys)
    assert code == 78 and "no file matches" in err


def _preview_job(tmp_path: Path, **input_options) -> tuple[Path, list[tuple[int, list[str]]]]:
    lines = []
    for i in range(60):
        v = "x" if i % 17 == 5 else str(i % 23)
        g = "" if i % 13 == 4 else f"g{i % 3}"
        lines.append(f"{i},{v},{g}")
    (tmp_path / "in.csv").write_text("id,v,g\n" + "\n".join(lines) + "\n")
    job = basic_job("in.csv", input={"schema": {"v": "int64"}, **input_options},
                    stages=[{"filter": "v > 10"}, {"derive": {"w": "v * 2"}}, {"validate": {"not_null": ["g"]}}],
                    run={"on_bad_rows": "fail"})
    records = [(n + 2, r) for n, r in enumerate(list(csv.reader(io.StringIO("\n".join(lines)))))]
    return write_job(tmp_path, job), records


def _expected(records):
    """What each record becomes, decided with plain Python: (output rows, filtered lines, rejected (line, stage))."""
    rows, filtered, rejected = [], [], []
    for line, (i, v, g) in records:
        if not v.lstrip("-").isdigit():
            rejected.append((line, "read"))
        elif int(v) <= 10:
            filtered.append(line)
        elif g == "":
            rejected.append((line, "stages[2].validate"))
        else:
            rows.append([i, v, g, str(int(v) * 2)])
    return rows, filtered, rejected


def test_preview_shows_rows_after_the_stages_and_what_they_took_out(tmp_path, capsys):
    config, records = _preview_job(tmp_path)
    code, out, err = run_cli("preview", config, capsys=capsys)
    assert code == 0, err
    rows, filtered, rejected = _expected(records)
    assert (f"  rows      60 read, {len(rows)} after the stages, {len(filtered)} filtered, "
            f"{len(rejected)} rejected") in out
    assert "input schema (3 columns):\n  id" in out and "output schema (4 columns):" in out
    table = out.split("rows after the stages:\n")[1].split("\n\n")[0].splitlines()
    assert [c.strip() for c in table[0].split("|")] == ["id", "v", "g", "w"]
    assert [[c.strip() for c in line.split("|")] for line in table[2:]] == rows[:10]
    shown_filtered = out.split("filtered: ")[1].split("\n\n")[0].splitlines()[1::2]
    assert [line.split() for line in shown_filtered] == \
        [["in.csv", "line", str(n), "stages[0].filter"] for n in filtered[:5]]
    shown_rejected = out.split("rejected: ")[1].splitlines()[1::2]
    assert [(int(line.split()[2]), line.split()[3].rstrip(":")) for line in shown_rejected] == sorted(rejected)[:5]
    assert "cannot convert to int64: invalid value 'x'" in out and "not_null" in out
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "job.yaml"]      # nothing written


def test_preview_rows_reads_chunks_until_it_has_them(tmp_path, capsys):
    config, records = _preview_job(tmp_path, chunk_bytes=120)
    rows, _, _ = _expected(records)
    code, out, err = run_cli("preview", config, capsys=capsys)
    assert code == 0, err
    assert "read      chunk 0 of" in out
    read_one = int(out.split("  rows      ")[1].split()[0])
    assert read_one < 30
    code, out, err = run_cli("preview", config, "--rows", "40", capsys=capsys)
    assert code == 0, err
    assert "read      the first" in out
    assert int(out.split("  rows      ")[1].split()[0]) >= 40
    table = out.split("rows after the stages:\n")[1].split("\n\n")[0].splitlines()
    n = int(out.split("after the stages")[0].split(",")[-1])
    assert [[c.strip() for c in line.split("|")] for line in table[2:]] == rows[:min(40, n)]


def test_dry_run_prints_validate_and_plan(tmp_path, capsys):
    config, _ = _preview_job(tmp_path)
    quarantine = ("--set", "run.on_bad_rows=quarantine")
    code, validated, _ = run_cli("validate", config, *quarantine, capsys=capsys)
    code, planned, _ = run_cli("plan", config, *quarantine, capsys=capsys)
    code, out, err = run_cli("run", config, "--dry-run", *quarantine, capsys=capsys)
    assert code == 0, err
    assert out.startswith(validated + "\n" + planned + "\n")
    assert "dry run: the job was validated and planned" in out and "nothing was run or written" in out
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "job.yaml"]
