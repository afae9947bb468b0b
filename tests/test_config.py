"""The job file: loading, line numbers, interpolation, overrides, validation and error messages."""

from __future__ import annotations

import json
import os
import pickle
import textwrap

import pyarrow as pa
import pytest
from pydantic import TypeAdapter, ValidationError

from pipeline.config import (
    Job,
    StageSpec,
    dump_config,
    format_bytes,
    load_config,
    parse_byte_size,
    parse_duration,
)
from pipeline.config.yaml_lines import parse_yaml
from pipeline.errors import ConfigError
from pipeline.stages import STAGES

MINIMAL = """\
name: job
input:
  paths: data/*.csv
output:
  path: out
"""


# ---------------------------------------------------------------------------------------------
# a small stage registry standing in for pipeline.stages.STAGES


class FakeStage:
    def __init__(self, name):
        self.name = name

    def validate_spec(self, value):
        if self.name == "filter":
            if not isinstance(value, str) or not value.strip():
                raise ValueError("expected an expression string such as \"qty > 0\"")
            return value
        if self.name == "select":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of column names")
            return tuple(value)
        if self.name == "derive":
            return TypeAdapter(dict[str, str]).validate_python(value)
        if self.name == "python":
            if not isinstance(value, dict) or "function" not in value:
                raise ValueError("expected {function: 'module:function'}")
            return dict(value)
        raise AssertionError(self.name)


FAKE_STAGES = {name: FakeStage(name) for name in ("filter", "select", "derive", "python")}


# ---------------------------------------------------------------------------------------------
# helpers


def write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path, text, overrides=(), env=None, name="job.yaml", stages=FAKE_STAGES):
    return load_config(write(tmp_path, text, name), overrides, env={} if env is None else env, stages=stages)


def error(tmp_path, text, overrides=(), env=None, name="job.yaml", stages=FAKE_STAGES) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, overrides, env, name, stages)
    err = info.value
    assert err.exit_code == 78
    assert name in str(err)
    return err


def check(err: ConfigError, *, key, line, parts=()):
    assert err.context.get("key") == key, str(err)
    assert err.context.get("line") == line, str(err)
    text = str(err)
    if line is not None:
        assert f"line {line}: " in text
    assert f"{key}: " in text
    for part in parts:
        assert part in text, text


# ---------------------------------------------------------------------------------------------
# a valid job


def test_minimal_job_has_defaults(tmp_path):
    job = load(tmp_path, MINIMAL)
    assert isinstance(job, Job)
    assert job.name == "job"
    assert job.stages == ()
    assert job.params == {}
    assert job.input.format == "auto"
    assert job.input.chunk_bytes is None  # decided by the plan: about four chunks per worker
    assert job.input.sample_bytes == 1024**2
    assert job.input.max_record_bytes == 16 * 1024**2
    assert job.input.max_decompressed_bytes is None
    assert job.input.csv.delimiter == ","
    assert job.input.csv.null_values == ("", "NA", "NULL", "null")
    assert job.output.mode == "error"
    assert job.output.compression == "zstd"
    assert job.output.file_bytes == 512 * 1024**2
    assert job.output.row_group_rows == 262_144
    assert job.run.workers >= 1
    assert job.run.on_bad_rows == "fail"
    assert job.run.retries == 2
    assert job.run.chunk_timeout is None
    assert job.run.progress_interval == 10.0
    assert job.run.executor == "local"
    assert job.run.dask.address is None
    assert len(job.config_hash) == 64


def test_models_are_frozen(tmp_path):
    job = load(tmp_path, MINIMAL)
    with pytest.raises(ValidationError):
        job.name = "other"
    with pytest.raises(ValidationError):
        job.output.mode = "overwrite"


def test_full_example_job(tmp_path):
    job = load(
        tmp_path,
        """\
        name: sales-daily
        input:
          paths: ["data/raw/sales-*.csv"]
          format: csv
          csv: {delimiter: ",", header: true, quote: '"', null_values: ["", "NA"], encoding: utf-8}
          schema: {ts: "timestamp[s]", price: float64}
          chunk_bytes: 64MiB
        stages:
          - filter: "status == 'ok' and qty > 0"
          - derive: {total: "price * qty * (1 - fill_null(discount, 0))"}
          - select: [id, ts, user_id, country, product, total]
          - python: {function: "transforms:enrich", api: pandas, params: {salt: "x"}}
        output:
          path: data/out/sales
          mode: overwrite
          compression: zstd
          partition_by: [country]
          file_bytes: 512MiB
          row_group_rows: 1000000
        run:
          workers: auto
          on_bad_rows: fail
          max_bad_rows: 0
        """,
    )
    assert job.input.format == "csv"
    assert job.input.csv.null_values == ("", "NA")
    assert job.input.schema_ == {"ts": "timestamp[s]", "price": "float64"}
    assert job.input.types == {"ts": pa.timestamp("s"), "price": pa.float64()}
    assert [s.name for s in job.stages] == ["filter", "derive", "select", "python"]
    assert job.stages[2].spec == ("id", "ts", "user_id", "country", "product", "total")
    assert job.stages[1].key == "stages[1].derive"
    assert job.stages[1].line == 10
    assert job.output.partition_by == ("country",)
    assert job.run.max_bad_rows == 0
    assert job.run.workers == len(os.sched_getaffinity(0))


def test_line_of_records_keys_and_list_items(tmp_path):
    job = load(
        tmp_path,
        """\
        name: job
        input:
          paths:
            - a.csv
            - b.csv
        stages:
          - filter: "x > 1"
          - select: [x]
          - derive:
              y: "x + 1"
        output:
          path: out
        """,
    )
    assert job.line_of("name") == 1
    assert job.line_of("input") == 2
    assert job.line_of("input.paths") == 3
    assert job.line_of("input.paths[1]") == 5
    assert job.line_of("stages[2]") == 9
    assert job.line_of("stages[2].derive") == 9
    assert job.line_of("stages[2].derive.y") == 10
    assert job.line_of("output.path") == 12
    assert job.line_of("run") is None
    assert job.stages[0] == StageSpec(name="filter", spec="x > 1", key="stages[0].filter", line=7)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    write(
        sub,
        """\
        name: job
        input:
          paths: ["../data/*.csv", "/abs/x.csv", "s3://bucket/key/*.csv", "raw/**/*.jsonl"]
        output:
          path: out/sales
        run:
          state_dir: state
        """,
    )
    monkeypatch.chdir(tmp_path)
    job = load_config("configs/job.yaml", env={}, stages=FAKE_STAGES)
    assert job.config_path == sub / "job.yaml"
    assert job.config_path.is_absolute()
    assert job.base_dir == sub
    assert job.input.paths == (
        str(tmp_path / "data" / "*.csv"),
        "/abs/x.csv",
        "s3://bucket/key/*.csv",
        str(sub / "raw" / "**" / "*.jsonl"),
    )
    assert job.output.path == str(sub / "out" / "sales")
    assert job.run.state_dir == str(sub / "state")


def test_single_path_string_becomes_a_tuple(tmp_path):
    job = load(tmp_path, MINIMAL)
    assert job.input.paths == (str(tmp_path / "data" / "*.csv"),)


def test_url_output_path_is_kept(tmp_path):
    job = load(tmp_path, MINIMAL, overrides=["output.path=s3://bucket/out"])
    assert job.output.path == "s3://bucket/out"


def test_tsv_means_tab_delimiter_unless_set(tmp_path):
    text = """\
    name: job
    input:
      paths: a.tsv
      format: tsv
    output:
      path: out
    """
    assert load(tmp_path, text).input.csv.delimiter == "\t"
    assert load(tmp_path, text, overrides=["input.csv.header=false", "input.csv.column_names=[a]"]).input.csv.delimiter == "\t"
    assert load(tmp_path, text, overrides=["input.csv.delimiter=|"]).input.csv.delimiter == "|"


def test_tab_delimiter_written_with_single_quotes(tmp_path):
    text = 'name: job\ninput:\n  paths: a\n  csv: {delimiter: \'\\t\'}\noutput: {path: out}\n'
    assert load(tmp_path, text).input.csv.delimiter == "\t"
    text = 'name: job\ninput:\n  paths: a\n  csv: {delimiter: "\\t"}\noutput: {path: out}\n'
    assert load(tmp_path, text).input.csv.delimiter == "\t"


def test_header_false_with_column_names(tmp_path):
    job = load(tmp_path, MINIMAL, overrides=["input.csv.header=false", "input.csv.column_names=[a, b]"])
    assert job.input.csv.header is False
    assert job.input.csv.column_names == ("a", "b")


def test_quote_null_means_no_quoting(tmp_path):
    assert load(tmp_path, MINIMAL, overrides=["input.csv.quote=null"]).input.csv.quote is None


def test_on_bad_rows_fail_with_max_bad_rows_is_allowed(tmp_path):
    job = load(tmp_path, MINIMAL, overrides=["run.on_bad_rows=fail", "run.max_bad_rows=10"])
    assert job.run.max_bad_rows == 10


def test_empty_sections_mean_defaults(tmp_path):
    job = load(tmp_path, "name: job\ninput:\n  paths: a\n  csv:\n  schema:\noutput: {path: o}\nrun:\n  # workers: 4\nparams:\nstages:\n")
    assert job.input.csv.delimiter == ","
    assert job.input.schema_ == {}
    assert job.run.retries == 2
    assert job.params == {}


def test_params_are_strings(tmp_path):
    job = load(tmp_path, MINIMAL + "params: {salt: x, n: 5, flag: true, country: NO}\n")
    assert job.params == {"salt": "x", "n": "5", "flag": "true", "country": "NO"}


def test_job_pickles(tmp_path):
    job = load(tmp_path, MINIMAL + "stages:\n  - filter: 'a > 1'\n")
    again = pickle.loads(pickle.dumps(job))
    assert again == job
    assert again.config_hash == job.config_hash


# ---------------------------------------------------------------------------------------------
# YAML 1.1 surprises and refused content


def test_no_yes_on_off_stay_strings(tmp_path):
    job = load(
        tmp_path,
        """\
        name: job
        input:
          paths: a.csv
          csv:
            column_names: [NO, yes, on, off, y, n]
            header: false
            null_values: [NO, Off]
        output:
          path: out
        params:
          country: NO
          answer: yes
        """,
    )
    assert job.input.csv.column_names == ("NO", "yes", "on", "off", "y", "n")
    assert job.input.csv.null_values == ("NO", "Off")
    assert job.params == {"country": "NO", "answer": "yes"}


def test_yaml_scalars_without_1_1_surprises():
    data, _ = parse_yaml(
        "a: TRUE\nb: False\nc: 010\nd: 1:30\ne: 2024-01-01\nf: 1_000\ng: 0x10\nh: ~\ni: 1.5\nj: NO\nk: '123'\n"
    )
    assert data == {
        "a": True,
        "b": False,
        "c": 10,
        "d": "1:30",
        "e": "2024-01-01",
        "f": 1000,
        "g": 16,
        "h": None,
        "i": 1.5,
        "j": "NO",
        "k": "123",
    }


def test_python_tag_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    err = error(
        tmp_path,
        """\
        name: job
        input:
          paths: a.csv
        output:
          path: !!python/object/apply:os.system ["touch marker"]
        """,
    )
    check(err, key="output.path", line=5, parts=["!!python/object/apply:os.system", "not allowed"])
    assert not marker.exists()


def test_python_tag_in_a_list_item_is_refused(tmp_path):
    err = error(tmp_path, "name: job\ninput:\n  paths:\n    - a.csv\n    - !!python/name:os.system\noutput: {path: out}\n")
    check(err, key="input.paths[1]", line=5, parts=["!!python/name:os.system"])


@pytest.mark.parametrize(
    "value, tag",
    [("!env HOME", "!env"), ("!!binary aGVsbG8=", "!!binary"), ("!!set {a, b}", "!!set"), ("!!timestamp 2024-01-01", "!!timestamp")],
)
def test_non_standard_tags_are_refused(tmp_path, value, tag):
    err = error(tmp_path, f"name: job\ninput: {{paths: a}}\noutput:\n  path: {value}\n")
    check(err, key="output.path", line=4, parts=[tag, "not allowed"])


def test_standard_tags_are_accepted(tmp_path):
    job = load(tmp_path, "name: !!str 2024\ninput: {paths: a}\noutput: {path: out}\nrun: {retries: !!int '5'}\n")
    assert job.name == "2024"
    assert job.run.retries == 5


def test_duplicate_key_names_both_lines(tmp_path):
    err = error(tmp_path, "name: job\ninput: {paths: a}\noutput:\n  path: out\n  mode: append\n  mode: overwrite\n")
    check(err, key="output.mode", line=6, parts=["duplicate key", "line 5", "line 6"])


def test_duplicate_top_level_key(tmp_path):
    err = error(tmp_path, "name: job\ninput: {paths: a}\nname: other\noutput: {path: out}\n")
    check(err, key="name", line=3, parts=["duplicate key", "first at line 1"])


def test_merge_keys_work_and_explicit_keys_win(tmp_path):
    job = load(
        tmp_path,
        """\
        name: job
        input: {paths: a}
        output: &out
          path: out
          mode: append
        run:
          <<: {retries: 5, on_bad_rows: skip}
          retries: 1
        """,
    )
    assert job.run.retries == 1
    assert job.run.on_bad_rows == "skip"


def test_recursive_alias_is_refused(tmp_path):
    err = error(tmp_path, "name: job\ninput: {paths: a}\noutput: {path: out}\nparams: &p {a: *p}\n")
    assert "recursive alias" in str(err)
    assert err.context["line"] == 4


def test_yaml_syntax_error_has_its_line(tmp_path):
    err = error(tmp_path, "name: job\ninput:\n  paths: [a.csv\noutput:\n  path: out\n")
    assert "invalid YAML" in str(err)
    assert err.context["line"] in (4, 5)


def test_an_unquoted_substitution_in_a_flow_list_says_to_quote_it(tmp_path):
    err = error(tmp_path, "name: job\ninput:\n  paths: [${DATA}/a.csv]\noutput:\n  path: out\n", env={"DATA": "in"})
    assert "invalid YAML" in str(err) and 'must be quoted, as in paths: ["${DATA}/in.csv"]' in str(err)
    assert err.context["line"] == 3
    # quoted, it is the value the variable gives
    job = load(tmp_path, 'name: job\ninput:\n  paths: ["${DATA}/a.csv"]\noutput:\n  path: out\n', env={"DATA": "in"})
    assert job.input.paths[0].endswith("in/a.csv")


def test_yaml_syntax_error_bad_indent(tmp_path):
    err = error(tmp_path, "name: job\ninput:\n  paths: a\n bad: 1\noutput: {path: out}\n")
    assert "invalid YAML" in str(err)
    assert err.context["line"] == 4


def test_control_character_is_refused_with_its_line(tmp_path):
    err = error(tmp_path, "name: job\ninput: {paths: a}\noutput: {path: \"o\x07\"}\n")
    assert "invalid YAML" in str(err)
    assert err.context["line"] == 3


def test_two_documents_are_refused(tmp_path):
    err = error(tmp_path, MINIMAL + "---\nname: other\n")
    assert "single document" in str(err)
    assert err.context["line"] == 6


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    err = error(tmp_path, text)
    assert "empty" in str(err)
    assert err.context["line"] == 1


@pytest.mark.parametrize("text, word", [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "a number")])
def test_top_level_must_be_a_mapping(tmp_path, text, word):
    err = error(tmp_path, text)
    assert "expected a mapping" in str(err) and word in str(err)
    assert err.context["line"] == 1


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", stages=FAKE_STAGES)
    assert info.value.exit_code == 78
    assert "nope.yaml" in str(info.value)
    assert "cannot read" in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, stages=FAKE_STAGES)
    assert info.value.exit_code == 78
    assert "cannot read" in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"name: job\ninput: {paths: \xff}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, stages=FAKE_STAGES)
    assert info.value.exit_code == 78
    assert "UTF-8" in str(info.value)
    assert info.value.context["line"] == 2


# ---------------------------------------------------------------------------------------------
# validation errors: file, line, key path, plain message


@pytest.mark.parametrize(
    "text, key, line, parts",
    [
        (
            "name: job\ninput: {paths: a}\noutput:\n  path: out\n  comprssion: zstd\n",
            "output.comprssion",
            5,
            ["unknown key (did you mean 'compression'?)"],
        ),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nstagse: []\n", "stagse", 4, ["did you mean 'stages'?"]),
        (
            "name: job\ninput: {paths: a}\noutput: {path: out}\nrun:\n  dask: {adress: x}\n",
            "run.dask.adress",
            5,
            ["did you mean 'address'?"],
        ),
        ("name: job\ninput: {paths: a, csv: {delimeter: ';'}}\noutput: {path: out}\n", "input.csv.delimeter", 2, ["delimiter"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nzzz: 1\n", "zzz", 4, ["unknown key; expected one of:", "output"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nconfig_hash: abc\n", "config_hash", 4, ["unknown key"]),
        ("input: {paths: a}\noutput: {path: out}\n", "name", 1, ["required key is missing"]),
        ("name: job\ninput: {paths: a}\noutput:\n  mode: append\n", "output.path", 3, ["required key is missing"]),
        ("name: job\noutput: {path: out}\n", "input", 1, ["required key is missing"]),
        ("name: job\ninput:\n  format: csv\noutput: {path: out}\n", "input.paths", 2, ["required key is missing"]),
        ("name: ../etc\ninput: {paths: a}\noutput: {path: out}\n", "name", 1, ["letters, digits", '"../etc"']),
        (
            "name: job\ninput: {paths: a}\noutput:\n  path: out\n  mode: replace\n",
            "output.mode",
            5,
            ["expected one of overwrite, append or error", 'got "replace"'],
        ),
        (
            "name: job\ninput: {paths: a, format: xlsx}\noutput: {path: out}\n",
            "input.format",
            2,
            ["expected one of csv, tsv, jsonl, json, parquet or auto"],
        ),
        (
            "name: job\ninput: {paths: a}\noutput: {path: out}\nrun:\n  workers: many\n",
            "run.workers",
            5,
            ['expected a positive integer or "auto", got "many"'],
        ),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {workers: 0}\n", "run.workers", 4, ["got 0"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {workers: true}\n", "run.workers", 4, ["got true"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {retries: -1}\n", "run.retries", 4, ["integer >= 0", "got -1"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {max_bad_rows: 1.5}\n", "run.max_bad_rows", 4, ["got 1.5"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {on_bad_rows: ignore}\n", "run.on_bad_rows", 4, ["fail, skip or quarantine"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {chunk_timeout: soon}\n", "run.chunk_timeout", 4, ['"30s"', 'got "soon"']),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {progress_interval: 0}\n", "run.progress_interval", 4, ["duration"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {start_method: thread}\n", "run.start_method", 4, ["fork, spawn or forkserver"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nrun: {executor: ray}\n", "run.executor", 4, ["local or dask"]),
        (
            "name: job\ninput:\n  paths: a\n  chunk_bytes: 64 Mebibytes\noutput: {path: out}\n",
            "input.chunk_bytes",
            4,
            ["64MiB", 'got "64 Mebibytes"'],
        ),
        ("name: job\ninput: {paths: a, sample_bytes: 0}\noutput: {path: out}\n", "input.sample_bytes", 2, ["greater than 0"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out, file_bytes: -5}\n", "output.file_bytes", 3, ["size in bytes"]),
        ("name: job\ninput: {paths: a}\noutput: {path: out, row_group_rows: 0}\n", "output.row_group_rows", 3, ["positive integer"]),
        (
            "name: job\ninput:\n  paths: a\n  schema:\n    ts: timestampz\noutput: {path: out}\n",
            "input.schema.ts",
            5,
            ["unknown type 'timestampz'", "timestamp[s|ms|us|ns]"],
        ),
        ("name: job\ninput:\n  paths: a\n  csv:\n    delimiter: ';;'\noutput: {path: out}\n", "input.csv.delimiter", 5, ["exactly one character"]),
        ("name: job\ninput:\n  paths: a\n  csv:\n    quote: \"''\"\noutput: {path: out}\n", "input.csv.quote", 5, ["one character, or null"]),
        ("name: job\ninput:\n  paths: a\n  csv:\n    encoding: klingon\noutput: {path: out}\n", "input.csv.encoding", 5, ["unknown encoding"]),
        ("name: job\ninput:\n  paths: a\n  csv:\n    comment: ''\noutput: {path: out}\n", "input.csv.comment", 5, ["non-empty prefix"]),
        ("name: job\ninput:\n  paths: a\n  csv:\n    skip_rows: -1\noutput: {path: out}\n", "input.csv.skip_rows", 5, ["greater than or equal to 0"]),
        ("name: job\ninput:\n  paths: a\n  csv: {header: maybe}\noutput: {path: out}\n", "input.csv.header", 4, ["expected true or false"]),
        ("name: job\ninput:\n  paths: []\noutput: {path: out}\n", "input.paths", 3, ["at least one"]),
        ("name: job\ninput:\n  paths:\n    - a.csv\n    - {x: 1}\noutput: {path: out}\n", "input.paths[1]", 5, ["expected a string, got a mapping"]),
        ("name: job\ninput: data/*.csv\noutput: {path: out}\n", "input", 2, ["expected a mapping", '"data/*.csv"']),
        ("name: job\ninput: {paths: a}\noutput: {path: out, partition_by: [a, a]}\n", "output.partition_by", 3, ["twice"]),
        (
            "name: job\ninput: {paths: a}\noutput: {path: out, compression: snappy, compression_level: 3}\n",
            "output",
            3,
            ["compression_level is not used with compression: snappy"],
        ),
        (
            "name: job\ninput: {paths: a}\noutput: {path: out, compression: gzip, compression_level: 30}\n",
            "output",
            3,
            ["between 1 and 9"],
        ),
        ("name: job\ninput: {paths: a}\noutput: {path: out}\nparams: {a: [1, 2]}\n", "params.a", 4, ["expected a string, got a list"]),
    ],
)
def test_validation_errors(tmp_path, text, key, line, parts):
    check(error(tmp_path, text), key=key, line=line, parts=parts)


def test_error_message_is_plain_words(tmp_path):
    err = error(tmp_path, "name: job\ninput: {paths: a}\noutput: {path: out}\nrun:\n  workers: many\n")
    assert str(err) == 'job.yaml line 5: run.workers: expected a positive integer or "auto", got "many"'.replace(
        "job.yaml", str(tmp_path / "job.yaml")
    )
    assert "pydantic" not in str(err) and "validation error" not in str(err).lower()


def test_first_error_by_line_and_up_to_three_more(tmp_path):
    err = error(
        tmp_path,
        """\
        name: job
        input:
          paths: a
          chunk_bytes: lots
          format: xls
        output:
          path: out
          mode: nope
        run:
          workers: many
          retries: -3
        """,
    )
    check(err, key="input.chunk_bytes", line=4)
    text = str(err)
    assert "also line 5: input.format" in text
    assert "also line 8: output.mode" in text
    assert "also line 10: run.workers" in text
    assert "and 1 more" in text


# ---------------------------------------------------------------------------------------------
# stages


@pytest.mark.parametrize(
    "stage, key, parts",
    [
        ('- "qty > 0"', "stages[1]", ["exactly one key", "the stage name"]),
        ("- {filter: a > 1, select: [a]}", "stages[1]", ["exactly one key", "2 keys"]),
        ("- {}", "stages[1]", ["exactly one key"]),
        ("- fliter: a > 1", "stages[1].fliter", ["unknown stage", "did you mean 'filter'?"]),
        ("- zzzz: 1", "stages[1].zzzz", ["unknown stage", "expected one of: derive, filter, python, select"]),
        ("- filter: ''", "stages[1].filter", ["expected an expression string"]),
        ("- select: 5", "stages[1].select", ["expected a list of column names"]),
    ],
)
def test_stage_errors(tmp_path, stage, key, parts):
    err = error(tmp_path, f"name: job\ninput: {{paths: a}}\noutput: {{path: out}}\nstages:\n  - select: [a]\n  {stage}\n")
    check(err, key=key, line=6, parts=parts)


def test_stage_spec_validation_error_is_translated(tmp_path):
    err = error(
        tmp_path,
        """\
        name: job
        input: {paths: a}
        output: {path: out}
        stages:
          - derive:
              total: "a * b"
              bad: [1, 2]
        """,
    )
    check(err, key="stages[0].derive.bad", line=7, parts=["expected a string, got a list"])


def test_stages_must_be_a_list(tmp_path):
    err = error(tmp_path, "name: job\ninput: {paths: a}\noutput: {path: out}\nstages: {filter: a > 1}\n")
    check(err, key="stages", line=4, parts=["expected a list of stages"])


def test_empty_stages(tmp_path):
    assert load(tmp_path, MINIMAL + "stages:\n").stages == ()
    assert load(tmp_path, MINIMAL + "stages: []\n").stages == ()


def test_real_filter_and_select_stages(tmp_path):
    job = load(
        tmp_path,
        """\
        name: job
        input: {paths: a.csv}
        stages:
          - filter: "qty > 0"
          - select: [id, qty]
        output: {path: out}
        """,
        stages=STAGES,
    )
    assert [s.name for s in job.stages] == ["filter", "select"]
    assert [s.line for s in job.stages] == [4, 5]
    err = error(tmp_path, "name: job\ninput: {paths: a.csv}\nstages:\n  - fliter: 'qty > 0'\noutput: {path: out}\n",
                stages=STAGES)
    check(err, key="stages[0].fliter", line=4, parts=["did you mean 'filter'?"])
    err = error(tmp_path, "name: job\ninput: {paths: a.csv}\nstages:\n  - select: {a: 1}\noutput: {path: out}\n",
                stages=STAGES)
    assert err.context["key"].startswith("stages[0].select")
    assert err.context["line"] == 4


# ---------------------------------------------------------------------------------------------
# ${VAR} interpolation


ENV_JOB = """\
name: job-${ENV_NAME}
input:
  paths: "${DATA_DIR:-data}/*.csv"
output:
  path: ${OUT}
"""


def test_env_variables_and_defaults(tmp_path):
    job = load(tmp_path, ENV_JOB, env={"ENV_NAME": "prod", "OUT": "/srv/out"})
    assert job.name == "job-prod"
    assert job.input.paths == (str(tmp_path / "data" / "*.csv"),)
    assert job.output.path == "/srv/out"
    job = load(tmp_path, ENV_JOB, env={"ENV_NAME": "x", "OUT": "o", "DATA_DIR": "/in"})
    assert job.input.paths == ("/in/*.csv",)


def test_empty_variable_uses_default(tmp_path):
    job = load(tmp_path, ENV_JOB, env={"ENV_NAME": "x", "OUT": "o", "DATA_DIR": ""})
    assert job.input.paths == (str(tmp_path / "data" / "*.csv"),)


def test_environ_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("ENV_NAME", "fromenv")
    monkeypatch.setenv("OUT", "o")
    assert load_config(write(tmp_path, ENV_JOB), stages=FAKE_STAGES).name == "job-fromenv"


def test_missing_variable_is_an_error(tmp_path):
    err = error(tmp_path, ENV_JOB, env={"ENV_NAME": "prod"})
    check(err, key="output.path", line=5, parts=["OUT", "not set", "${OUT:-default}"])


def test_dollar_dollar_escapes(tmp_path):
    job = load(tmp_path, MINIMAL + "params:\n  a: $${HOME}\n  b: cost $$5 and $${X:-y} ${V}\n", env={"V": "v"})
    assert job.params == {"a": "${HOME}", "b": "cost $$5 and ${X:-y} v"}


def test_dollar_dollar_params_is_literal_text(tmp_path):
    text = MINIMAL + "params: {d: '2026-11-23'}\nstages:\n  - filter: \"a == '$${params.d}' or b == '${params.d}'\"\n"
    job = load(tmp_path, text)
    assert job.stages[0].spec == "a == '${params.d}' or b == '2026-11-23'"


def test_substituted_text_is_not_interpolated_again(tmp_path):
    job = load(tmp_path, MINIMAL + "params: {a: '${A}'}\n", env={"A": "${B}", "B": "no"})
    assert job.params == {"a": "${B}"}


def test_params_are_substituted_in_values_and_paths(tmp_path):
    text = MINIMAL + "params: {country: DE, day: '2026-11-23'}\nstages:\n  - filter: \"country == '${params.country}'\"\n"
    job = load(tmp_path, text.replace("paths: data/*.csv", "paths: 'logs/${params.day:%Y/%m/%d}/*.gz'"))
    assert job.stages[0].spec == "country == 'DE'"
    assert job.input.paths[0].endswith("logs/2026/11/23/*.gz")
    job = load_config(tmp_path / "job.yaml", params={"country": "FR", "day": "2025-01-02"}, stages=FAKE_STAGES)
    assert job.stages[0].spec == "country == 'FR'" and job.input.paths[0].endswith("logs/2025/01/02/*.gz")
    assert job.params == {"country": "FR", "day": "2025-01-02"}


def test_unknown_and_undated_params_are_config_errors(tmp_path):
    load(tmp_path, MINIMAL + "params: {day: today}\n")
    with pytest.raises(ConfigError, match="unknown parameter 'dya' \\(did you mean 'day'\\?\\)") as info:
        load_config(tmp_path / "job.yaml", params={"dya": "x"}, stages=FAKE_STAGES)
    assert info.value.exit_code == 78
    with pytest.raises(ConfigError, match="unknown parameter 'nope'"):
        load(tmp_path, MINIMAL + "stages:\n  - filter: \"x == '${params.nope}'\"\n")
    with pytest.raises(ConfigError, match="is not a date"):
        load(tmp_path, MINIMAL.replace("paths: data/*.csv", "paths: 'x/${params.day:%Y}'") + "params: {day: soon}\n")


def test_date_words_resolve_to_iso_dates():
    import datetime

    from pipeline.config import resolve_param_value

    day = datetime.date(2026, 3, 1)
    assert resolve_param_value("yesterday", day) == "2026-02-28"
    assert resolve_param_value("today-7", day) == "2026-02-22"
    assert resolve_param_value("TODAY + 1", day) == "2026-03-02"
    assert resolve_param_value("2026-01-05", day) == "2026-01-05"


def test_newline_in_a_variable_cannot_add_a_key(tmp_path):
    job = load(
        tmp_path,
        "name: job\ninput: {paths: a}\noutput:\n  path: ${OUT}\n",
        env={"OUT": "out\n  mode: overwrite"},
    )
    assert job.output.mode == "error"
    assert job.output.path.endswith("out\n  mode: overwrite")


def test_variable_into_numeric_field(tmp_path):
    job = load(tmp_path, MINIMAL + "run:\n  workers: ${W}\n  retries: ${R:-4}\n", env={"W": "3"})
    assert job.run.workers == 3
    assert job.run.retries == 4


def test_keys_are_not_interpolated(tmp_path):
    job = load(tmp_path, MINIMAL + "params: {'${K}': v}\n", env={"K": "x"})
    assert job.params == {"${K}": "v"}


# ---------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_of_several_kinds(tmp_path):
    job = load(
        tmp_path,
        MINIMAL + "stages:\n  - filter: a > 1\n",
        overrides=[
            "run.workers=2",
            "input.paths=[a.csv,b.csv]",
            "output.path=/tmp/x",
            "output.mode=overwrite",
            "run.dask.address=tcp://sched:8786",
            "stages[0].filter=b < 2",
            "params.country=NO",
            "input.schema.ts=timestamp[ms]",
            "name=other",
        ],
    )
    assert job.run.workers == 2
    assert job.input.paths == (str(tmp_path / "a.csv"), str(tmp_path / "b.csv"))
    assert job.output.path == "/tmp/x"
    assert job.output.mode == "overwrite"
    assert job.run.dask.address == "tcp://sched:8786"
    assert job.stages[0].spec == "b < 2"
    assert job.params == {"country": "NO"}
    assert job.input.types == {"ts": pa.timestamp("ms")}
    assert job.name == "other"
    assert job.line_of("output.path") is None
    assert job.line_of("name") == 1 or job.line_of("name") is None


def test_override_value_keeps_everything_after_the_first_equals(tmp_path):
    job = load(tmp_path, MINIMAL, overrides=["params.q=a=b"])
    assert job.params == {"q": "a=b"}


def test_override_appends_a_stage(tmp_path):
    job = load(tmp_path, MINIMAL + "stages:\n  - filter: a > 1\n", overrides=["stages[1]={select: [a]}"])
    assert [s.name for s in job.stages] == ["filter", "select"]


def test_override_replaces_a_missing_variable(tmp_path):
    job = load(tmp_path, ENV_JOB, overrides=["output.path=o"], env={"ENV_NAME": "x"})
    assert job.output.path == str(tmp_path / "o")


@pytest.mark.parametrize(
    "override, parts",
    [
        ("run.workers", ["KEY=VALUE"]),
        ("=2", ["KEY=VALUE"]),
        ("  =2", ["KEY=VALUE"]),
        ("run..workers=2", ["not a key path"]),
        ("stages[x].filter=a", ["not a key path"]),
        ("stages[5].filter=a", ["no item [5]"]),
        ("name.first=a", ["name is not a mapping"]),
        ("output.path=[a", ["not a valid YAML value"]),
        ("output.path=!!python/object/apply:os.system [x]", ["not allowed"]),
    ],
)
def test_malformed_overrides(tmp_path, override, parts):
    err = error(tmp_path, MINIMAL, overrides=[override])
    assert err.context["key"] == "--set"
    assert "--set: " in str(err)
    for part in parts:
        assert part in str(err)


def test_invalid_override_value_names_the_override(tmp_path):
    err = error(tmp_path, MINIMAL, overrides=["run.workers=many"])
    assert err.context["key"] == "run.workers"
    assert "line" not in err.context
    assert "(from --set run.workers=many)" in str(err)


def test_override_value_no_stays_a_string(tmp_path):
    assert load(tmp_path, MINIMAL, overrides=["params.c=NO"]).params == {"c": "NO"}


@pytest.mark.parametrize("text", ["|", ">", "@home", "a: b: c", "*x"])
def test_override_values_yaml_cannot_read_are_text(tmp_path, text):
    assert load(tmp_path, MINIMAL, overrides=[f"params.v={text}"]).params == {"v": text}


# ---------------------------------------------------------------------------------------------
# sizes, durations, formatting


@pytest.mark.parametrize(
    "text, expected",
    [
        (100, 100),
        ("100", 100),
        ("100B", 100),
        ("64MiB", 64 * 1024**2),
        ("64 MiB", 64 * 1024**2),
        ("1GB", 10**9),
        ("1Gb", 10**9),
        ("512kB", 512_000),
        ("512KB", 512_000),
        ("2KiB", 2048),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1TiB", 1024**4),
        ("2TB", 2 * 10**12),
        (1024.0, 1024),
    ],
)
def test_byte_sizes(text, expected):
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", [0, -1, "0", "0.1B", "1.5", "64 Mebibytes", "MiB", "", True, None, [1], 1.5, "1e3"])
def test_bad_byte_sizes(text):
    with pytest.raises(ValueError, match="expected a size in bytes"):
        parse_byte_size(text)


def test_byte_size_in_the_job(tmp_path):
    text = "name: job\ninput:\n  paths: a\n  chunk_bytes: 1.5GiB\n  max_decompressed_bytes: 10GB\noutput: {path: out, file_bytes: 128MiB}\n"
    job = load(tmp_path, text)
    assert job.input.chunk_bytes == 3 * 1024**3 // 2
    assert job.input.max_decompressed_bytes == 10 * 10**9
    assert job.output.file_bytes == 128 * 1024**2


@pytest.mark.parametrize(
    "text, expected",
    [(30, 30.0), (1.5, 1.5), ("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5h", 5400.0), ("2d", 172800.0)],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [0, -5, "0s", "soon", "5 parsecs", True, None, "", "inf"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_durations_in_the_job(tmp_path):
    job = load(tmp_path, MINIMAL + "run: {chunk_timeout: 5m, progress_interval: 500ms}\n")
    assert job.run.chunk_timeout == 300.0
    assert job.run.progress_interval == 0.5


@pytest.mark.parametrize(
    "n, text", [(0, "0 B"), (100, "100 B"), (1024, "1.0 KiB"), (64 * 1024**2, "64.0 MiB"), (int(1.5 * 1024**3), "1.5 GiB")]
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


# ---------------------------------------------------------------------------------------------
# hash and dump


HASH_A = """\
name: job
input:
  paths: [a.csv]
  format: csv
  schema: {a: int64, b: string}
stages:
  - filter: "a > 1"
  - derive: {c: "a + 1"}
output:
  path: out
  mode: overwrite
params: {x: "1", y: "2"}
run:
  workers: 1
"""

HASH_B = """\
run:
  workers: 7
params: {y: "2", x: "1"}
output:
  mode: overwrite
  path: out
stages:
  - filter: "a > 1"
  - derive: {c: "a + 1"}
input:
  schema: {b: string, a: int64}
  format: csv
  paths: a.csv
name: job
"""


def test_hash_is_stable_across_key_order_and_workers(tmp_path):
    a = load(tmp_path, HASH_A, name="a.yaml")
    b = load(tmp_path, HASH_B, name="b.yaml")
    assert a.run.workers != b.run.workers
    assert a.config_hash == b.config_hash
    assert a.config_hash == load(tmp_path, HASH_A, name="a.yaml").config_hash
    assert a.config_hash == load(tmp_path, HASH_A, overrides=["run.workers=3"], name="a.yaml").config_hash


def test_hash_changes_with_a_stage(tmp_path):
    a = load(tmp_path, HASH_A, name="a.yaml")
    b = load(tmp_path, HASH_A.replace("a > 1", "a > 2"), name="b.yaml")
    c = load(tmp_path, HASH_A, overrides=["stages[2]={select: [a]}"], name="a.yaml")
    assert len({a.config_hash, b.config_hash, c.config_hash}) == 3


def test_hash_changes_with_output_and_bad_row_policy(tmp_path):
    a = load(tmp_path, HASH_A, name="a.yaml")
    assert a.config_hash != load(tmp_path, HASH_A, overrides=["output.compression=gzip"], name="a.yaml").config_hash
    assert a.config_hash != load(tmp_path, HASH_A, overrides=["run.on_bad_rows=skip"], name="a.yaml").config_hash


def test_dump_config_is_plain_json(tmp_path):
    job = load(tmp_path, HASH_A)
    data = dump_config(job)
    assert json.loads(json.dumps(data)) == data
    assert data["name"] == "job"
    assert data["stages"] == [{"filter": "a > 1"}, {"derive": {"c": "a + 1"}}]
    assert data["input"]["schema"] == {"a": "int64", "b": "string"}
    assert data["input"]["paths"] == [str(tmp_path / "a.csv")]
    assert data["config_hash"] == job.config_hash
    assert data["config_path"] == str(tmp_path / "job.yaml")
    assert "lines" not in data
