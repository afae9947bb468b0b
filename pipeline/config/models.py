"""The typed, frozen models of a job file (``Job`` and its sections), its hash and its dump."""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import to_jsonable_python

from pipeline.config.issues import show
from pipeline.config.values import (
    ByteSize,
    Duration,
    EmptyIsDefault,
    NonNegativeInt,
    PositiveInt,
    StrTuple,
    TypeName,
    auto_workers,
    params_as_text,
    parse_workers,
    resolve_path,
)
from pipeline.dtypes import parse_type
from pipeline.execution.memory import memory_plan


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True
    )


class CsvOptions(_Model):
    delimiter: str = ","
    header: bool = True
    column_names: StrTuple | None = None
    quote: str | None = '"'
    null_values: StrTuple = ("", "NA", "NULL", "null")
    encoding: str = "utf-8"

    @field_validator("delimiter", mode="before")
    @classmethod
    def _delimiter(cls, value: Any) -> Any:
        if value == "\\t":  # '\t' in single quotes
            return "\t"
        if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
            raise ValueError(f'expected exactly one character (use "\\t" for a tab), got {show(value)}')
        return value

    @field_validator("quote", mode="before")
    @classmethod
    def _quote(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or len(value) != 1 or value in "\r\n"):
            raise ValueError(f"expected one character, or null for no quoting, got {show(value)}")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {show(value)}; expected a name such as utf-8, latin-1 or cp1252"
            ) from None
        return value

    @field_validator("column_names")
    @classmethod
    def _column_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("expected at least one column name")
            _check_unique(value)
        return value

    @model_validator(mode="after")
    def _cross(self) -> CsvOptions:
        if not self.header and self.column_names is None:
            raise ValueError("header: false requires column_names (the names of the columns, in order)")
        if self.quote is not None and self.quote == self.delimiter:
            raise ValueError(f"quote and delimiter must differ, both are {show(self.quote)}")
        return self


def _check_unique(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"column {show(name)} is listed twice")
        seen.add(name)


class InputConfig(_Model):
    paths: StrTuple
    format: Literal["csv", "tsv", "jsonl", "parquet", "auto"] = "auto"
    csv: Annotated[CsvOptions, EmptyIsDefault] = Field(default_factory=CsvOptions)
    schema_: Annotated[dict[str, TypeName], EmptyIsDefault] = Field(default_factory=dict, alias="schema")
    chunk_bytes: ByteSize | None = None   # None: about total/(workers*4), at least 4 MiB, at most run.memory_limit allows
    sample_bytes: ByteSize = 1024**2
    max_record_bytes: ByteSize = 16 * 1024**2
    max_decompressed_bytes: ByteSize | None = None
    follow_symlinks: bool = False
    allow_missing_columns: bool = False
    incremental: bool = False    # process only files that are new or changed since the last successful run

    @model_validator(mode="before")
    @classmethod
    def _tsv_delimiter(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("format") == "tsv":
            csv = data.get("csv")
            if csv is None:
                data = {**data, "csv": {"delimiter": "\t"}}
            elif isinstance(csv, Mapping) and "delimiter" not in csv:
                data = {**data, "csv": {**csv, "delimiter": "\t"}}
        return data

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected at least one path or glob")
        for p in value:
            if not p.strip():
                raise ValueError("expected a path or glob, got an empty string")
        return tuple(resolve_path(p, info) for p in value)

    @property
    def types(self) -> dict[str, pa.DataType]:
        """The declared column types as Arrow types."""
        return {name: parse_type(t) for name, t in self.schema_.items()}


class OutputConfig(_Model):
    path: str
    mode: Literal["overwrite", "append", "error"] = "error"
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"
    compression_level: int | None = None
    partition_by: StrTuple = ()
    file_bytes: ByteSize = 512 * 1024**2
    row_group_rows: PositiveInt = 1_000_000

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("expected a directory path, got an empty string")
        return resolve_path(value, info)

    @field_validator("partition_by")
    @classmethod
    def _partition_by(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _check_unique(value)
        return value

    @model_validator(mode="after")
    def _level(self) -> OutputConfig:
        level, codec = self.compression_level, self.compression
        if level is None:
            return self
        if codec in ("none", "snappy"):
            raise ValueError(f"compression_level is not used with compression: {codec}; remove it")
        lo, hi = pa.Codec.minimum_compression_level(codec), pa.Codec.maximum_compression_level(codec)
        if not lo <= level <= hi:
            raise ValueError(f"compression_level for {codec} must be between {lo} and {hi}, got {level}")
        return self


class DaskConfig(_Model):
    address: str | None = None          # tcp://host:8786; else DASK_SCHEDULER_ADDRESS; else a LocalCluster
    connect_timeout: Duration = 30.0    # give up on an unreachable scheduler after this long (exit 1)


def dask_missing() -> str | None:
    """Why the dask executor cannot be used here, or None when dask.distributed is installed."""
    for name in ("dask", "distributed"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return ("the dask executor needs dask.distributed, which is not installed: "
                    "pip install 'pipeline[dask]'")
    return None


class RunConfig(_Model):
    workers: Annotated[int, BeforeValidator(parse_workers)] = Field(default_factory=auto_workers)
    on_bad_rows: Literal["fail", "skip", "quarantine"] = "fail"
    max_bad_rows: NonNegativeInt | None = None
    retries: NonNegativeInt = 2
    chunk_timeout: Duration | None = None
    start_method: Literal["fork", "spawn", "forkserver"] = "fork"
    executor: Literal["local", "dask"] = "local"
    dask: Annotated[DaskConfig, EmptyIsDefault] = Field(default_factory=DaskConfig)
    progress_interval: Duration = 10.0
    checkpoint_interval: Duration = 60.0   # how often finished chunks are made durable for resume
    state_dir: str | None = None
    metrics_file: str | None = None
    python_modules: StrTuple = ()  # installed modules python stages may import
    memory_limit: ByteSize | None = Field(None, description=(
        "The most memory the run's processes (parent, writer, workers; summed PSS) should use, e.g. 1GiB. "
        "The local executor sizes from it the chunks (when input.chunk_bytes is not set), the results in "
        "flight to the writer and the writer's row-group buffer: about 48 MiB for each process, 4x the "
        "chunk for each worker, a quarter of the rest (at most 256 MiB) for the writer; chunks between 1 MiB "
        "and 4 MiB. Default: 1 GiB, or more when run.workers need it. See pipeline/execution/memory.py."))

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None:
            memory_plan(value, info.data.get("workers") or 1)   # ValueError: too little for the workers
        return value

    @field_validator("state_dir", "metrics_file")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        missing = dask_missing() if value == "dask" else None
        if missing:
            raise ValueError(missing)
        return value


@dataclass(frozen=True)
class StageSpec:
    """One entry of ``stages``: ``- derive: {total: "price * qty"}``."""

    name: str  # the stage name, the single key of the YAML mapping
    spec: Any  # the value as validated by pipeline.stages.validate_spec
    key: str  # "stages[2].derive"
    line: int | None = None
    raw: Any = field(default=None, compare=False, repr=False)  # the value as written


INTERNAL_KEYS = ("config_path", "base_dir", "config_hash", "lines")


class Job(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    input: InputConfig
    stages: tuple[StageSpec, ...] = ()
    output: OutputConfig
    run: Annotated[RunConfig, EmptyIsDefault] = Field(default_factory=RunConfig)
    params: Annotated[dict[str, str], BeforeValidator(params_as_text), EmptyIsDefault] = Field(default_factory=dict)
    # set by load_config, not from YAML:
    config_path: Path = Path("job.yaml")
    base_dir: Path = Path(".")
    config_hash: str = ""
    lines: dict[str, int] = Field(default_factory=dict, repr=False)

    @model_validator(mode="after")
    def _hash(self) -> Job:
        if not self.config_hash:
            object.__setattr__(self, "config_hash", _config_hash(self))
        return self

    def line_of(self, key: str) -> int | None:
        """The YAML line of a dotted key path (``"stages[2]"``, ``"output.path"``), or None."""
        return self.lines.get(key)


MODEL_AT = {
    "": Job,
    "input": InputConfig,
    "input.csv": CsvOptions,
    "output": OutputConfig,
    "run": RunConfig,
    "run.dask": DaskConfig,
}


def keys_of(model: type[BaseModel]) -> list[str]:
    keys = [f.alias or name for name, f in model.model_fields.items()]
    return [k for k in keys if k not in INTERNAL_KEYS] if model is Job else keys



# --------------------------------------------------------------------------------------------
# Hash and dump
# --------------------------------------------------------------------------------------------

# run settings that change how a job runs, not what it produces
_RUN_IN_HASH = ("on_bad_rows", "max_bad_rows")


def _stage_data(stage: StageSpec) -> Any:
    try:
        return to_jsonable_python(stage.spec)
    except Exception:  # a spec object without a plain-data form
        return to_jsonable_python(stage.raw, fallback=str)


def _config_hash(job: Job) -> str:
    data = job.model_dump(mode="json", by_alias=True, include={"name", "input", "output", "params"})
    data["input"]["schema"] = dict(sorted(data["input"]["schema"].items()))
    data["params"] = dict(sorted(data["params"].items()))
    data["stages"] = [{s.name: _stage_data(s)} for s in job.stages]
    data["run"] = {k: getattr(job.run, k) for k in _RUN_IN_HASH}
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dump_config(job: Job) -> dict:
    """The validated job as plain data (JSON-serialisable), for the manifest."""
    data = job.model_dump(mode="json", by_alias=True, exclude={"lines", "base_dir", "stages"})
    data["stages"] = [{s.name: _stage_data(s)} for s in job.stages]
    order = ["name", "input", "stages", "output", "run", "params", "config_path", "config_hash"]
    return {k: data[k] for k in order}
