"""run.build_manifest as a pure function: what one run adds, and how an append run extends the
manifest it replaces."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline import __version__
from pipeline.config import dump_config, load_config
from pipeline.input.plan import build_plan
from pipeline.run import Counts, build_manifest
from pipeline.stages import STAGES
from tests.helpers import basic_job, write_job

SCHEMA = pa.schema([("id", pa.int64()), ("total", pa.float64()), ("ts", pa.timestamp("s", tz="UTC"))])
FILES = [
    {"path": "country=DE/part-00000-r2.parquet", "rows": 5, "bytes": 900, "run_id": "r2"},
    {"path": "_rejects/part-00000-r2.parquet", "rows": 2, "bytes": 300, "run_id": "r2"},
    {"path": "country=FR/part-00000-r2.parquet", "rows": 3, "bytes": 700, "run_id": "r2"},
]


@pytest.fixture
def job_and_plan(tmp_path):
    (tmp_path / "a.csv").write_text("id,total\n1,2.5\n")
    (tmp_path / "b.csv").write_text("id,total\n2,3.5\n3,1\n")
    job = load_config(write_job(tmp_path, basic_job("*.csv", params={"day": "2026-11-02"},
                                                    output={"partition_by": ["country"], "mode": "append"})),
                      stages=STAGES)
    return job, build_plan(job)


def _manifest(job, plan, previous=None, mode="append", started=1000.0):
    counts = Counts(rows_read=12, rows_written=8, rows_filtered=2, rows_rejected=2, rows_added=0)
    return build_manifest(job, plan, "r2", counts, [dict(f) for f in FILES], SCHEMA, previous, "t2",
                          fingerprints={f.path: f"fp-{i}" for i, f in enumerate(plan.files)}, mode=mode,
                          started=started)


def test_a_first_run(job_and_plan):
    job, plan = job_and_plan
    m = _manifest(job, plan, started=1000.0)
    json.dumps(m)                                                      # plain data all through
    assert (m["format"], m["pipeline_version"], m["run_id"], m["job"]) == ("pipeline-manifest/1", __version__,
                                                                         "r2", job.name)
    assert (m["config_hash"], m["transform_hash"]) == (job.config_hash, "t2")
    assert m["config"] == dump_config(job)
    assert m["mode"] == "append" and m["partition_by"] == ["country"]
    assert m["schema"] == [{"name": "id", "type": "int64", "nullable": True},
                           {"name": "total", "type": "double", "nullable": True},
                           {"name": "ts", "type": "timestamp[s, UTC]", "nullable": True}]
    assert [f["name"] for f in m["input_schema"]] == plan.read.schema.names
    assert m["files"] == [FILES[0], FILES[2]]                          # the rejects are listed apart
    assert m["rejects"] == {"files": [FILES[1]], "rows": 2}
    assert m["chunks"] == len(plan.chunks)
    assert m["counts"] == {"rows_read": 12, "rows_written": 8, "rows_filtered": 2, "rows_rejected": 2,
                           "rows_added": 0, "lines_skipped": 0}
    assert m["inputs"] == [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns, "fingerprint": f"fp-{i}"}
                           for i, f in enumerate(plan.files)]
    (run,) = m["runs"]
    assert run["run_id"] == "r2" and run["params"] == {"day": "2026-11-02"}
    assert run["inputs"] == m["inputs"] and run["counts"] == m["counts"]
    assert run["started_ts"] == 1000.0 and run["finished_ts"] >= run["started_ts"]
    assert (run["config_hash"], run["transform_hash"]) == (job.config_hash, "t2")


def test_an_append_run_keeps_what_the_previous_manifest_lists(job_and_plan):
    job, plan = job_and_plan
    first = _manifest(job, plan)
    earlier = {"files": [{"path": "country=DE/part-00000-r1.parquet", "rows": 4, "bytes": 800, "run_id": "r1"}],
               "rejects": {"files": [{"path": "_rejects/part-00000-r1.parquet", "rows": 1, "bytes": 100,
                                      "run_id": "r1"}], "rows": 1},
               "runs": [dict(first["runs"][0], run_id="r1")]}
    m = _manifest(job, plan, previous=earlier)
    assert m["files"] == earlier["files"] + [FILES[0], FILES[2]]
    assert m["rejects"] == {"files": earlier["rejects"]["files"] + [FILES[1]], "rows": 3}
    assert [r["run_id"] for r in m["runs"]] == ["r1", "r2"]
    assert m["counts"] == m["runs"][-1]["counts"]                      # the top-level counts are this run's


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_mode_is_what_the_run_did(job_and_plan, mode):
    """The run decides (an incremental run appends, --full-refresh overwrites); the manifest says so."""
    job, plan = job_and_plan
    assert _manifest(job, plan, mode=mode)["mode"] == mode


def test_a_run_that_wrote_nothing(job_and_plan):
    job, plan = job_and_plan
    m = build_manifest(job, plan, "r3", Counts(), [], None, None, "t3",
                       fingerprints={f.path: "" for f in plan.files}, mode="overwrite", started=1000.0)
    assert m["schema"] == [] and m["files"] == [] and m["rejects"] == {"files": [], "rows": 0}
    assert m["counts"] == {"rows_read": 0, "rows_written": 0, "rows_filtered": 0, "rows_rejected": 0,
                           "rows_added": 0, "lines_skipped": 0}


def test_a_run_parses_the_output_manifest_once_while_its_file_is_unchanged(tmp_path, monkeypatch):
    """A large output's manifest (tens of MB for 100,000 inputs) is read before the run plans and again
    after dead runs are undone: parsed once while the file stays the same, again when it changed."""
    from pipeline.output import publish as publish_mod
    from pipeline.output import target as target_mod
    from pipeline.output.target import DirectoryTarget
    from tests.helpers import run_cli

    (tmp_path / "a.csv").write_text("id,total\n1,2.5\n")
    job = write_job(tmp_path, basic_job("a.csv"))
    assert run_cli("run", job, "--no-progress")[0] == 0
    reads = []
    real = publish_mod.read_manifest
    for module in (publish_mod, target_mod):
        monkeypatch.setattr(module, "read_manifest", lambda path: reads.append(path) or real(path))
    out = DirectoryTarget(str(tmp_path / "out"))
    first = out.manifest()
    staging = out.prepare("r9", "overwrite", parts_on_url=False, resume=None)
    assert staging.previous == first and len(reads) == 1
    # a whole run parses it once; then its new manifest is parsed again
    assert run_cli("run", job, "--no-progress")[0] == 0
    assert len(reads) == 2
    assert out.manifest()["run_id"] != first["run_id"] and len(reads) == 3
