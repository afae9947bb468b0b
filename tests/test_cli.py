"""The command line: exit codes, config errors with file/line/key, validate, plan, inspect, logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.demo import generate
from tests.helpers import ROOT, basic_job, manifest_of, read_output, run_cli, run_subprocess, write_job

SALES = "id,price,qty,status\n1,2.5,2,ok\n2,1.0,0,ok\n3,4.0,1,refunded\n"


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "in.csv").write_text(SALES)
    return tmp_path


def test_every_config_in_configs_runs(tmp_path):
    """The shipped job files run on the demo data, as `make run` does."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    generate(tmp_path / "data", rows=3000, seed=2026)
    configs = sorted((tmp_path / "configs").glob("*.yaml"))
    assert configs
    for config in configs:
        done = run_subprocess("run", config, "--no-progress", cwd=tmp_path)
        assert done.returncode == 0, (config.name, done.stderr)
        assert "succeeded" in done.stdout and "rows/s" in done.stdout
    manifests = sorted((tmp_path / "data" / "out").rglob("_manifest.json"))
    assert len(manifests) == len(configs)
    for manifest in manifests:
        m = manifest_of(manifest.parent)
        c = m["counts"]
        assert c["rows_read"] + c["rows_added"] == c["rows_written"] + c["rows_filtered"] + c["rows_rejected"]
        if "finalize" in m:   # the counts are the map's; finalize records its own rows in and out
            assert m["finalize"]["rows_in"] == c["rows_written"]
            assert sum(f["rows"] for f in m["files"]) == m["finalize"]["rows_out"]
        else:
            assert sum(f["rows"] for f in m["files"]) == c["rows_written"]


@pytest.mark.parametrize("yaml_text,line,key,words", [
    ("name: x\ninput: {paths: [in.csv]}\noutput: {path: out, comprssion: zstd}\n", 3, "output.comprssion",
     "did you mean 'compression'"),
    ("name: x\ninput:\n  paths: [in.csv]\nrun:\n  workers: many\noutput: {path: out}\n", 5, "run.workers",
     "positive integer"),
    ("name: x\ninput: {paths: [in.csv]}\nstages:\n  - filtr: \"price > 1\"\noutput: {path: out}\n", 4,
     "stages[0]", "did you mean 'filter'"),
    ("name: x\ninput: {paths: [in.csv]}\nstages:\n  - filter: \"price >\"\noutput: {path: out}\n", 4,
     "stages[0].filter", "price >"),
    ("name: x\ninput: {paths: [in.csv]}\noutput: {path: \"${NOPE_NOT_SET}\"}\n", 3, "output.path", "NOPE_NOT_SET"),
    ("name: x\nname: y\ninput: {paths: [in.csv]}\noutput: {path: out}\n", 2, "name", "duplicate"),
])
def test_config_errors_name_file_line_key_and_exit_78(job_dir, capsys, yaml_text, line, key, words):
    path = job_dir / "job.yaml"
    path.write_text(yaml_text)
    for command in ("run", "validate", "plan"):
        code, _out, err = run_cli(command, path, capsys=capsys)
        assert code == 78, (command, err)
        assert str(path) in err and f"line {line}" in err and key in err and words in err, err


def test_validate_checks_columns_against_the_data_with_suggestions(job_dir, capsys):
    job = basic_job("in.csv", stages=[{"derive": {"total": "price * qty"}}, {"filter": "totl > 1"}])
    code, _out, err = run_cli("validate", write_job(job_dir, job), capsys=capsys)
    assert code == 78
    assert "stages[1].filter" in err and "unknown column 'totl'" in err and "did you mean 'total'" in err
    assert "line 8" in err  # the line of that stage in the written YAML


def test_validate_unmatched_glob_and_ok(job_dir, capsys):
    code, out, err = run_cli("validate", write_job(job_dir, basic_job("nothing-*.csv")), capsys=capsys)
    assert code == 78 and "no file matches" in err and "input.paths[0]" in err
    code, out, err = run_cli("validate", write_job(job_dir, basic_job("in.csv")), capsys=capsys)
    assert code == 0 and "OK" in out


def test_plan_shows_files_chunks_and_schema_without_writing(job_dir, capsys):
    code, out, err = run_cli("plan", write_job(job_dir, basic_job("in.csv")), "--workers", "2", capsys=capsys)
    assert code == 0, err
    assert "1 file, " in out and "1 chunk, " in out and "price" in out and "double" in out
    assert not (job_dir / "out").exists() and not list(job_dir.glob(".out*"))


def test_set_and_workers_override(job_dir, capsys):
    path = write_job(job_dir, basic_job("in.csv"))
    code, _out, err = run_cli("run", path, "--set", "output.path=elsewhere", "--workers", "2", "--no-progress",
                             capsys=capsys)
    assert code == 0, err
    assert read_output(job_dir / "elsewhere").num_rows == 3


def test_bad_command_line_exits_2(capsys):
    assert run_cli("frobnicate", capsys=capsys)[0] == 2
    assert run_cli("run", capsys=capsys)[0] == 2
    assert run_cli("run", "x.yaml", "--workers", "0", capsys=capsys)[0] == 2


def test_inspect_shows_the_manifest(job_dir, capsys):
    run_cli("run", write_job(job_dir, basic_job("in.csv")), "--no-progress", capsys=capsys)
    code, out, err = run_cli("inspect", job_dir / "out", capsys=capsys)
    assert code == 0, err
    assert "3 rows in 1 file, " in out and "test-job" in out and "price" in out
    code, out, err = run_cli("inspect", job_dir / "out", "--json", capsys=capsys)
    assert json.loads(out)["counts"]["rows_written"] == 3
    assert run_cli("inspect", job_dir / "missing", capsys=capsys)[0] == 2


def test_no_terminal_means_no_progress_bar_and_json_logs_carry_the_run_id(job_dir):
    path = write_job(job_dir, basic_job("in.csv"))
    done = run_subprocess("run", path, "--log-format", "json", "--log-file", job_dir / "run.log")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    run_id = manifest_of(job_dir / "out")["run_id"]
    assert lines and all(line["run_id"] == run_id for line in lines)
    logged = [json.loads(line) for line in (job_dir / "run.log").read_text().splitlines()]
    assert logged == lines


def test_progress_bar_when_asked(job_dir):
    done = run_subprocess("run", write_job(job_dir, basic_job("in.csv")), "--progress")
    assert done.returncode == 0
    assert "\r" in done.stderr or "pipeline" in done.stderr


def test_python_m_pipeline_is_the_same_program():
    done = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "pipeline" in done.stdout


# --------------------------------------------------------------------------------------------
# What the summaries say: plurals, sizes in the unit that fits, validate's mode wording
# --------------------------------------------------------------------------------------------


def test_summary_speaks_of_one_file_chunk_worker_and_row_and_sizes_that_fit(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id,v\n1,a\n2,b\n")
    job = basic_job("in.csv", stages=[{"validate": {"allowed": {"v": ["a"]}}}], run={"on_bad_rows": "quarantine"})
    code, out, err = run_cli("run", write_job(tmp_path, job), "--no-progress", capsys=capsys)
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines()[1:] if not line.startswith("    "))
    size = (tmp_path / "in.csv").stat().st_size
    assert lines["input"] == f"1 file, {size} B, 1 chunk, 1 worker"
    written = sum(p.stat().st_size for p in (tmp_path / "out").glob("part-*.parquet"))
    assert written < 1024 and lines["output"].endswith(f"(1 part file, {written} B)")
    assert lines["rejects"].endswith("(1 row)")
    assert "MiB" not in out
    assert "1 file, 1 chunk, 1 worker" in err and "succeeded: 1 row written" in err


@pytest.mark.parametrize("size,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (582_144, "568.5 KiB"),
                                       (3 << 20, "3.0 MiB"), (5 << 30, "5.0 GiB")])
def test_format_bytes_picks_the_unit_that_fits(size, text):
    from pipeline.config import format_bytes

    assert format_bytes(size) == text


@pytest.mark.parametrize("mode", ["error", "overwrite", "append"])
def test_validate_says_what_the_output_mode_does(job_dir, mode, capsys):
    job = basic_job("in.csv", output={"mode": mode})
    code, out, err = run_cli("validate", write_job(job_dir, job), capsys=capsys)
    assert code == 0, err
    assert "1 file, " in out and "1 chunk" in out
    (output_line,) = [line for line in out.splitlines() if line.lstrip().startswith("output")]
    assert f"(mode {mode}: a run " in output_line and f"({mode})" not in output_line


def test_inspect_a_parquet_file(job_dir, capsys):
    import pyarrow.parquet as pq

    run_cli("run", write_job(job_dir, basic_job("in.csv")), "--no-progress", capsys=capsys)
    (part,) = (job_dir / "out").glob("part-*.parquet")
    code, out, err = run_cli("inspect", part, capsys=capsys)
    assert code == 0, err
    meta = pq.read_metadata(part)
    assert f"rows       {meta.num_rows} rows" in out
    assert f"{meta.num_row_groups} row group" in out
    for field in pq.read_schema(part):
        assert field.name in out
    assert f"pipeline inspect {job_dir / 'out'}" in out
    code, out, err = run_cli("inspect", part, "--json", capsys=capsys)
    described = json.loads(out)
    assert described["rows"] == meta.num_rows and described["bytes"] == part.stat().st_size
    code, out, err = run_cli("inspect", job_dir / "in.csv", capsys=capsys)
    assert code == 65 and "not a Parquet file" in err and "output directory" in err
    code, out, err = run_cli("inspect", job_dir / "missing", capsys=capsys)
    assert code == 2 and "no such file or directory" in err


def test_help_texts_for_log_format_and_inspect_path(capsys):
    code, out, _err = run_cli("run", "--help", capsys=capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "--log-format {text,json} log lines on stderr as text" in text
    code, out, _err = run_cli("inspect", "--help", capsys=capsys)
    assert "an output directory" in " ".join(out.split())


def test_log_file_in_a_missing_folder_is_a_command_line_error(job_dir, capsys):
    config = write_job(job_dir, basic_job("in.csv"))
    code, _out, err = run_cli("run", config, "--log-file", job_dir / "logs" / "job.log", "--no-progress", capsys=capsys)
    assert code == 2 and f"--log-file {job_dir / 'logs' / 'job.log'}: No such file or directory" in err
    assert "Traceback" not in err and not (job_dir / "out").exists()


TEARDOWN_PROBE = """
import atexit, sys
atexit.register(print, "teardown ran", flush=True)
sys.argv = ["pipeline", *sys.argv[1:]]
from pipeline.cli import entry
entry()
"""


@pytest.mark.parametrize("args, code, says", [(["--version"], 0, "pipeline "),
                                               (["run", "missing.yaml"], 78, "cannot read the config file")])
def test_the_command_leaves_without_the_interpreters_teardown(tmp_path, args, code, says):
    """``pipeline`` and ``python -m pipeline`` both end in ``entry``: main's exit code, its output
    flushed, and no teardown (an exit handler registered before it never runs)."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="pipeline")
    assert script.value == "pipeline.cli:entry"
    assert (ROOT / "pipeline" / "__main__.py").read_text().strip().endswith("entry()")
    done = subprocess.run([sys.executable, "-c", TEARDOWN_PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == code, done.stderr
    assert says in done.stdout + done.stderr
    assert "teardown ran" not in done.stdout
    installed = shutil.which("pipeline", path=str(Path(sys.executable).parent))
    assert installed is not None
    done = subprocess.run([installed, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == code and says in done.stdout + done.stderr, done.stderr
