"""The listing of input files: names first (in glob's order), each file's size and kind as it is
taken; a run's first chunk goes to a worker before the last file of a long listing is taken."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import pytest

from pipeline.input import discover as discover_mod
from pipeline.input import plan as plan_mod
from pipeline.input.discover import discover, hidden, list_inputs
from tests.helpers import ROOT, basic_job, manifest_of, read_output, run_cli, write_job
from tests.test_plan_stream import _files, _reference, kill_and_resume, marked_job, wait_for

NAMES = ["a.csv", "a-b.csv", "a.b.csv", "A.csv", "a0.csv", "b.csv", "b.CSV", "_x.csv", ".y.csv", "é.csv",
         "z z.csv", "c.tsv", "[x].csv", "d.csv.gz", "e.jsonl"]


def _tree(root: Path) -> None:
    root.mkdir()
    for name in NAMES:
        (root / name).write_text("id\n1\n")
    (root / "dir.csv").mkdir()                       # a folder whose name matches: never an input
    (root / "sub").mkdir()
    (root / "sub" / "s.csv").write_text("id\n2\n")
    os.symlink(root / "sub", root / "linked.csv")    # a link to a folder: left out, as os.path.isdir says


@pytest.mark.parametrize("pattern", ["*.csv", "*", "a*.csv", "?.csv", "[ab].csv", "*.csv*", "[[]x].csv",
                                     "*.[ct]sv", "sub/*.csv", "**/*.csv", "*/*.csv"])
def test_the_files_a_glob_lists_are_globs_own_in_its_order(tmp_path, monkeypatch, pattern):
    """Compared with ``sorted(glob.glob(...))`` less folders and hidden names (the listing's rule)."""
    _tree(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    for where in (f"in/{pattern}", str(tmp_path / "in" / pattern)):
        base = os.path.abspath(discover_mod.literal_root(where, os.sep) or ".")
        want = [os.path.abspath(m) for m in sorted(glob.glob(where, recursive=True))
                if not os.path.isdir(m) and not hidden(discover_mod._below_local(base, os.path.abspath(m)))]
        want = [m for m in want if m.lower().endswith((".csv", ".tsv", ".gz", ".jsonl"))]
        if not want:
            continue
        listing = list_inputs((where,), "auto")
        got = [f.path for f in listing]
        assert got == want
        assert [f.size for f in discover((where,), "auto")] == [os.path.getsize(p) for p in want]


def test_a_glob_that_matches_only_folders_is_named(tmp_path):
    (tmp_path / "only.csv").mkdir()
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="no file matches"):
        list_inputs((str(tmp_path / "*.csv"),), "auto")


def test_the_first_chunk_runs_before_the_last_file_is_listed(tmp_path, monkeypatch):
    """With more files than LIST_AHEAD, the rest are taken (stat, kind) while the workers run: the
    last one waits here until a chunk has run, which a run that listed every file first never sees."""
    monkeypatch.setattr(plan_mod, "LIST_AHEAD", 20)
    config, marker = marked_job(tmp_path, 60)
    last = str(tmp_path / "in" / "f059.csv")
    take = discover_mod.Listing._take
    waited = []

    def slow_last(self, name):
        if name.path == last:
            wait_for(marker, "the last file was listed")
            waited.append(True)
        return take(self, name)

    monkeypatch.setattr(discover_mod.Listing, "_take", slow_last)
    assert run_cli("run", config, "--no-progress") == (0, "", "")
    assert waited == [True]
    assert sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"]) == _reference(tmp_path / "in")
    manifest = manifest_of(tmp_path / "out")
    assert manifest["chunks"] == 60
    assert [i["path"] for i in manifest["inputs"]] == sorted(str(p) for p in (tmp_path / "in").glob("*.csv"))
    assert all(i["fingerprint"] for i in manifest["inputs"])


def test_a_streamed_listing_gives_the_plan_of_a_whole_one(tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.stages import STAGES

    _files(tmp_path / "in", 50)
    job = load_config(write_job(tmp_path, basic_job("in/*.csv", input={"chunk_bytes": "4MiB"})), stages=STAGES)
    whole = plan_mod.build_plan(job)
    monkeypatch.setattr(plan_mod, "LIST_AHEAD", 10)
    streamed = plan_mod.build_plan(job, stream=True)
    assert not streamed.listed
    assert [c.id for c in streamed.chunks] == [c.id for c in whole.chunks]
    assert streamed.listed and streamed.files == whole.files
    assert streamed.key() == whole.key() and streamed.read == whole.read


KILL_AND_RESUME = """
import sys
from pipeline.input import plan
plan.LIST_AHEAD = 10
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_whose_listing_streamed_resumes_from_its_checkpoints(tmp_path):
    """The journal begins once the last file is listed (it names the plan's key); checkpoints wait
    for it. A run killed after some checkpoints is resumed by the next, which lists every file first."""
    done = kill_and_resume(tmp_path, [sys.executable, "-c", KILL_AND_RESUME],
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert "resuming run" in done.stderr and "came from run" in done.stdout
    assert sorted(read_output(tmp_path / "out").to_pylist(), key=lambda r: r["id"]) == _reference(tmp_path / "in")


@pytest.mark.parametrize("pattern", ["*/*", "**/*.csv", "*"])
def test_a_glob_of_folders_only_is_named_before_anything_runs_and_one_of_data_names_when_listed(tmp_path, pattern):
    from pipeline.errors import ConfigError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.csv").mkdir()        # a folder with a data file's name
    (tmp_path / "a" / "c").mkdir()
    with pytest.raises(ConfigError, match="no file matches"):
        discover((str(tmp_path / pattern),), "auto")


@pytest.mark.parametrize("values", [
    ["1", "2", "3"] * 50,
    ["1"] * 999 + ["x"],                      # one stray value in 1,000 files: still int64
    ["1"] * 998 + ["x", "y"],                 # two: text
    ["2026-01-01", "2026-01-02", None] * 40,
    ["1.5", "2"] * 30 + ["abc"] * 3,
    ["true", "false", "TRUE"],
])
def test_partition_types_from_distinct_values_weighed_by_files_are_those_of_every_value(values):
    import pyarrow as pa

    from pipeline.input.infer import infer_column

    partitions = [(("k", v),) for v in values]
    assert plan_mod._partition_types(partitions) == {"k": infer_column(pa.array(values, pa.string()))}


def test_an_incremental_jobs_glob_of_folders_only_is_no_input_yet(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.csv").mkdir()
    assert discover((str(tmp_path / "**/*.csv"),), "auto", allow_empty=True) == []
