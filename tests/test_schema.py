"""`pipeline schema`: the JSON Schema of the job file, generated from the config models."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pipeline.config import load_config
from pipeline.config.yaml_lines import parse_yaml
from pipeline.errors import ConfigError
from pipeline.stages import STAGES
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schema" / "job.schema.json"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
HEADER = "# yaml-language-server: $schema=../schema/job.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _data(text: str):
    return parse_yaml(text)[0]


def test_schema_command_prints_the_committed_schema(capsys):
    code, out, err = run_cli("schema", capsys=capsys)
    assert code == 0 and err == ""
    schema = json.loads(out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert out == COMMITTED.read_text(), "schema/job.schema.json is out of date: run `make docs`"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_configs_start_with_the_schema_line_and_are_accepted(config, validator):
    text = config.read_text()
    assert text.splitlines()[0] == HEADER
    assert (config.parent / "../schema/job.schema.json").resolve() == COMMITTED.resolve()
    load_config(config, env={}, stages=STAGES)
    errors = list(validator.iter_errors(_data(text)))
    assert not errors, errors[0].message


BASE = """\
name: job
input:
  paths: [data/*.csv]
output:
  path: out
"""


@pytest.mark.parametrize("extra", [
    "",
    "run:\n",                                                    # an empty section means the defaults
    "run:\n  workers: auto\n  chunk_timeout: 5m\n  checkpoint_interval: 30\n",
    "run:\n  workers: ${WORKERS:-2}\n  max_bad_rows: ${MAX_BAD:-0}\n",   # replaced before validation
    "params:\n  date: yesterday\n  n: 7\n",
    "stages:\n  - filter: \"qty > 0\"\n  - drop_nulls: all\n  - validate: {range: {qty: {min: 0}}}\n",
    "stages:\n  - python: {function: 'transforms:enrich', api: arrow, params: {salt: 1}}\n",
])
def test_schema_accepts_what_the_loader_accepts(extra, validator, tmp_path):
    text = BASE + extra
    (tmp_path / "job.yaml").write_text(text)
    load_config(tmp_path / "job.yaml", env={}, stages=STAGES)
    errors = list(validator.iter_errors(_data(text)))
    assert not errors, errors[0].message


def test_single_strings_and_sizes_are_accepted(validator, tmp_path):
    text = BASE.replace("paths: [data/*.csv]", "paths: data/*.csv\n  chunk_bytes: 64MiB\n  sample_bytes: 1.5 GiB")
    (tmp_path / "job.yaml").write_text(text)
    load_config(tmp_path / "job.yaml", env={}, stages=STAGES)
    assert not list(validator.iter_errors(_data(text)))


@pytest.mark.parametrize("extra,where", [
    ("colour: red\n", []),
    ("run:\n  wrokers: 2\n", ["run"]),
    ("run:\n  dask: {adress: x}\n", ["run", "dask"]),
    ("stages:\n  - filtre: \"qty > 0\"\n", ["stages", 0]),
    ("stages:\n  - validate: {notnull: [id]}\n", ["stages", 0]),
    ("stages:\n  - python: {function: 'a:b', apii: arrow}\n", ["stages", 0]),
    ("stages:\n  - {filter: 'a > 1', derive: {b: a}}\n", ["stages", 0]),
])
def test_schema_rejects_unknown_keys_the_loader_rejects(extra, where, validator, tmp_path):
    text = BASE + extra
    (tmp_path / "job.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "job.yaml", env={}, stages=STAGES)
    assert caught.value.exit_code == 78
    error = jsonschema.exceptions.best_match(validator.iter_errors(_data(text)))
    assert error is not None and list(error.absolute_path)[: len(where)] == where


@pytest.mark.parametrize("bad", [
    "input:\n  paths: [a]\n  format: xls\n",
    "input:\n  paths: [a]\n  chunk_bytes: lots\n",
    "input:\n  paths: [a]\n  csv: {header: maybe}\n",
])
def test_schema_rejects_wrong_values(bad, validator):
    text = "name: job\noutput: {path: out}\n" + bad
    assert list(validator.iter_errors(_data(text)))


def test_every_key_has_a_description():
    from pipeline.commands.schema import job_schema

    schema = job_schema()
    missing = []
    for owner in [schema, *schema["$defs"].values()]:
        for key, prop in owner.get("properties", {}).items():
            if owner is schema or owner.get("title") in ("InputConfig", "CsvOptions", "OutputConfig",
                                                          "RunConfig", "DaskConfig"):
                refs = [o["$ref"] for o in [prop, *prop.get("anyOf", ())] if "$ref" in o]
                target = schema["$defs"][refs[0].rsplit("/", 1)[1]] if refs else {}
                if not (prop.get("description") or target.get("description")):
                    missing.append(f"{owner.get('title', 'Job')}.{key}")
    assert not missing, missing


def test_chunk_bytes_description_matches_the_planner():
    from pipeline.config import InputConfig
    from pipeline.input.plan import MAX_AUTO_CHUNK, MIN_AUTO_CHUNK

    text = InputConfig.model_fields["chunk_bytes"].description
    assert f"between {MIN_AUTO_CHUNK >> 20} MiB and {MAX_AUTO_CHUNK >> 20} MiB" in text
