"""The typed, frozen models of a job file (``Job`` and its sections), its hash and its dump."""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from pipeline.config.document import JOB_NAME_PATTERN
from pipeline.config.issues import show
from pipeline.config.substitute import params_as_text
from pipeline.config.values import (
    PARAMS_SCHEMA,
    WORKERS_SCHEMA,
    ByteSize,
    Duration,
    EmptyIsDefault,
    NonNegativeInt,
    PositiveInt,
    StrTuple,
    TypeName,
    auto_workers,
    format_bytes,
    parse_workers,
    resolve_path,
)
from pipeline.dtypes import parse_type
from pipeline.errors import ConfigError
from pipeline.memory import ROW_GROUP_ROWS, MemoryPlan, memory_plan


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True
    )


class CsvOptions(_Model):
    """How CSV and TSV files are read."""

    delimiter: str = Field(",", description=(
        'One character; write "\\t" for a tab. The default for `format: tsv` is a tab.'))
    header: bool = Field(True, description=(
        "The first record (after `skip_rows`) holds the column names. With `false`, the columns are named by "
        "`column_names`, or else `column0`, `column1`, ... as DuckDB names them."))
    column_names: StrTuple | None = Field(None, description=(
        "The column names, in order, when `header: false`; ignored when `header: true`."))
    quote: str | None = Field('"', description=(
        "The quote character, special only at the start of a field (as in Arrow, Python's csv and DuckDB): "
        "a quoted field may hold the delimiter, doubled quotes and newlines; elsewhere a quote is text. "
        "null turns quoting off."))
    null_values: StrTuple = Field(("", "NA", "NULL", "null"), description="Field values read as null.")
    encoding: str = Field("utf-8", description=(
        "The text encoding: a Python codec name that keeps ASCII bytes as they are (`latin-1`, `cp1252`, ...; "
        "not UTF-16). Text invalid in it makes bad rows."))
    comment: str | None = Field(None, description=(
        "A prefix such as `#`: a line that starts a record with it is skipped whole and counted apart "
        "(`lines_skipped` in the manifest's counts)."))
    skip_rows: int = Field(0, ge=0, description=(
        "Records to skip before the header (or before the data when `header: false`); a quoted field over "
        "two lines is one record, blank and comment lines do not count."))
    rename_duplicates: bool = Field(False, description=(
        "Read a header with empty or repeated names, named as DuckDB does (`a,a,,b` reads as "
        "`a, a_1, column2, b`). Otherwise such a header is refused (exit 65)."))

    @field_validator("delimiter", mode="before")
    @classmethod
    def _delimiter(cls, value: Any) -> Any:
        if value == "\\t":  # '\t' in single quotes
            return "\t"
        if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
            raise ValueError(f'expected exactly one character (use "\\t" for a tab), got {show(value)}')
        if not value.isascii():
            raise ValueError(f"expected an ASCII character (the CSV parser splits on one byte), got {show(value)}")
        return value

    @field_validator("quote", mode="before")
    @classmethod
    def _quote(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or len(value) != 1 or value in "\r\n"):
            raise ValueError(f"expected one character, or null for no quoting, got {show(value)}")
        if value is not None and not value.isascii():
            raise ValueError(f"expected an ASCII character (the CSV parser reads it as one byte), got {show(value)}")
        return value

    @field_validator("comment")
    @classmethod
    def _comment(cls, value: str | None) -> str | None:
        if value is not None and (not value or "\n" in value or "\r" in value):
            raise ValueError(f"expected a non-empty prefix on one line, such as '#', got {show(value)}")
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
        sample = ',;|\t"\'\r\n#abc'
        try:
            compatible = sample.encode(value) == sample.encode("ascii")
        except (UnicodeError, LookupError):
            compatible = False
        if not compatible:
            raise ValueError(f"encoding {show(value)} does not keep ASCII bytes as they are (records are found "
                             f"byte by byte); convert the files to UTF-8 first")
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
        if self.quote is not None and self.quote == self.delimiter:
            raise ValueError(f"quote and delimiter must differ, both are {show(self.quote)}")
        return self


def _check_unique(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"column {show(name)} is listed twice")
        seen.add(name)


def tab_for_tsv(data: Any) -> Any:
    """``format: tsv`` without a csv delimiter means a tab."""
    if isinstance(data, Mapping) and data.get("format") == "tsv":
        csv = data.get("csv")
        if csv is None:
            data = {**data, "csv": {"delimiter": "\t"}}
        elif isinstance(csv, Mapping) and "delimiter" not in csv:
            data = {**data, "csv": {**csv, "delimiter": "\t"}}
    return data


class InputConfig(_Model):
    """Where the input files are and how they are read (see docs/data.md)."""

    paths: StrTuple = Field(description=(
        "One glob or a list of globs (`**` matches folders recursively), relative to the job file's "
        "folder, or URLs. The matches are sorted; duplicates, folders and names starting with `_` or `.` "
        "are skipped. A glob that matches nothing is an error (exit 78)."))
    format: Literal["csv", "tsv", "jsonl", "json", "parquet", "auto"] = Field("auto", description=(
        "`auto` tells the format by the extension (`.csv`; `.tsv`/`.tab`; `.jsonl`/`.ndjson`; `.json`; "
        "`.parquet`/`.pq`) after stripping `.gz`/`.gzip`/`.zst`/`.zstd`/`.bz2`. Compression is always told "
        "by the extension. `json` (and a `.json` file whose first non-blank byte is `[`) is one JSON array "
        "of objects, read whole (at most 512 MiB); any other `.json` file is JSON Lines."))
    csv: Annotated[CsvOptions, EmptyIsDefault] = Field(default_factory=CsvOptions, description=(
        "How CSV and TSV files are read."))
    schema_: Annotated[dict[str, TypeName], EmptyIsDefault] = Field(default_factory=dict, alias="schema", description=(
        'Column types to use instead of inference: `{ts: "timestamp[s]", price: "decimal(10,2)"}`. Other '
        "columns of text files get a type inferred from a sample; Parquet files keep their own. A column "
        "named here that is in no input file is an error."))
    chunk_bytes: ByteSize | None = Field(None, description=(
        "Target size of a chunk, the unit of work of a worker (and of a streamed block of a compressed "
        "file). By default 4 MiB, or less when run.memory_limit is tight (a small input is not cut finer than "
        "4 MiB); with the Dask executor about four chunks per worker, between 4 MiB and 32 MiB."))
    sample_bytes: ByteSize = Field(1024**2, description="How much of each text file is read to infer column types.")
    max_record_bytes: ByteSize = Field(16 * 1024**2, description=(
        "A longer record is a bad row. (A quote that is never closed is a bad row whatever its length.)"))
    max_decompressed_bytes: ByteSize | None = Field(None, description=(
        "Fail the run (exit 65) when a compressed file inflates past this size: a guard against "
        "decompression bombs. None: no limit."))
    follow_symlinks: bool = Field(False, description=(
        "Input files that are symbolic links are refused (exit 65) unless this is true."))
    allow_missing_columns: bool = Field(False, description=(
        "Let CSV, TSV and Parquet files have different columns: the schema is the union and a missing "
        "column reads as nulls. Otherwise different columns stop the run (exit 65)."))
    hive_partitioning: bool = Field(True, description=(
        "`key=value` folders below the wildcards of a glob become columns (`key`) of the rows of the files "
        "under them, as pyarrow and DuckDB read hive-partitioned data."))
    incremental: bool = Field(False, description=(
        "Read only the files that are new since the job's last successful run, and append their rows to "
        "the output; `run --full-refresh` rebuilds from every file (see docs/cron.md). An empty landing "
        "folder is `up to date` (exit 0). Changed files: see `on_changed_file`."))
    on_changed_file: Literal["fail", "skip", "reprocess"] = Field("fail", description=(
        "Incremental runs: a file an earlier run processed that has changed since. `fail`: exit 65, "
        "nothing written; `skip`: it stays as it was processed; `reprocess`: its earlier rows (and "
        "rejects) are replaced by its rows now (see docs/output-schema.md)."))
    min_age: Duration | None = Field(None, description=(
        "Leave files modified more recently than this (e.g. `5m`) for the next run: they may still be "
        "being written. None: take every file."))

    @model_validator(mode="before")
    @classmethod
    def _tsv_delimiter(cls, data: Any) -> Any:
        return tab_for_tsv(data)

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
    """Where and how the Parquet dataset is written (see docs/data.md)."""

    path: str = Field(description=(
        "The output directory (the dataset), relative to the job file's folder, or a URL. It is published "
        "atomically: nothing of a run is visible there until the run succeeds."))
    mode: Literal["overwrite", "append", "error"] = Field("error", description=(
        "When the path already holds an output: `overwrite` replaces it, `append` keeps its files and adds "
        "this run's (its schema must match the output's, see `on_schema_change`), `error` fails "
        "the run (exit 74). A non-empty folder that this tool did not write is always refused (exit 74)."))
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = Field("zstd", description=(
        "The Parquet compression codec."))
    compression_level: int | None = Field(None, description=(
        "The codec's level, checked against the codec's range; not for `snappy` or `none`. None: the "
        "codec's default."))
    partition_by: StrTuple = Field((), description=(
        "Columns for a hive layout (`country=DE/part-....parquet`). They must be output columns, and "
        "not all of them. Values are URL-escaped in folder names; null and empty values become "
        "`__HIVE_DEFAULT_PARTITION__`."))
    file_bytes: ByteSize = Field(512 * 1024**2, description=(
        "A part file is closed, and the next one started, once it passes this size."))
    row_group_rows: PositiveInt = Field(ROW_GROUP_ROWS, description=(
        "Rows per Parquet row group (the default is 262,144, as Polars writes them; DuckDB writes 122,880). "
        "The writer holds up to one row group per output partition before it writes it. Near the end of a "
        "run (when little input is left to hand out to the workers), the rows of the last chunks are written "
        "in smaller row groups (from an eighth of this), so that little is left to encode when the last "
        "chunk arrives."))
    on_schema_change: Literal["fail", "add_columns"] = Field("fail", description=(
        "Append (and incremental) runs whose columns differ from the output's. `fail`: exit 65 before "
        "anything is written, the output untouched. `add_columns`: new columns are added and every part "
        "file is given the whole schema, with nulls where a run had no value, so plain readers "
        "(pyarrow, pandas, DuckDB) see every column. A changed type always fails (see docs/output-schema.md)."))

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


_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_TABLES = ("chunk", "data")   # the tables sql stages and finalize see besides the lookups


class LookupConfig(_Model):
    """A small reference table visible to sql stages and finalize by its name (see docs/sql.md)."""

    path: str = Field(description=(
        "The lookup's file, relative to the job file's folder (or a URL): one file, not a glob."))
    format: Literal["csv", "tsv", "jsonl", "parquet", "auto"] = Field("auto", description=(
        "The file's format; `auto` tells it by the extension (`.gz`, `.zst`, `.bz2` too), as for `input`."))
    csv: Annotated[CsvOptions, EmptyIsDefault] = Field(default_factory=CsvOptions, description=(
        "How a CSV or TSV lookup is read, as `input.csv`."))
    schema_: Annotated[dict[str, TypeName], EmptyIsDefault] = Field(default_factory=dict, alias="schema",
                                                                    description=(
        "Column types, as `input.schema`; other columns are inferred."))
    max_bytes: ByteSize = Field(64 * 1024**2, description=(
        "The largest the file, and the table it gives in memory, may be (every worker holds a copy); "
        "past it the run stops with exit 78."))

    @model_validator(mode="before")
    @classmethod
    def _tsv_delimiter(cls, data: Any) -> Any:
        return tab_for_tsv(data)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("expected the path of a file, got an empty string")
        if any(c in value for c in "*?["):
            raise ValueError(f"a lookup is one file, not a glob: {show(value)}")
        return resolve_path(value, info)

    def as_input(self) -> InputConfig:
        """The lookup file as an input section, so that it is read as the job's inputs are."""
        return InputConfig.model_validate({"paths": (self.path,), "format": self.format, "csv": self.csv,
                                           "schema": dict(self.schema_),
                                           "max_decompressed_bytes": self.max_bytes})


def _check_lookups(value: dict) -> dict:
    for name in value:
        if not re.match(_IDENTIFIER, str(name)) or str(name).startswith("__"):
            raise ValueError(f"lookup name {show(name)} must be a plain SQL name (letters, digits, _; "
                             f"not starting with __)")
        if str(name).lower() in RESERVED_TABLES:
            raise ValueError(f"lookup name {show(name)} is taken: sql stages see the chunk as 'chunk' and "
                             f"finalize sees the output as 'data'")
    return value


class DedupeConfig(_Model):
    """finalize's shorthand for one row per key."""

    keys: StrTuple = Field(description="One row is kept for each distinct combination of these columns.")
    keep_latest_by: str | None = Field(None, description=(
        "The row kept is the one with the greatest value in this column (nulls last). None: any one."))

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("expected at least one key column")
        _check_unique(value)
        return value


class FinalizeConfig(_Model):
    """A step over the whole run's output before the publish (see docs/sql.md)."""

    dedupe: DedupeConfig | None = Field(None, description=(
        "`{keys: [id], keep_latest_by: ts}`: the table `data` holds one row per key."))
    sql: str | None = Field(None, description=(
        "One DuckDB SELECT over the table `data` (and the lookups); its result is the output. "
        "None: `SELECT * FROM data`."))
    sort_by: StrTuple = Field((), description="Columns the result is sorted by (ascending, nulls last).")
    scope: Literal["run", "dataset"] = Field("run", description=(
        "`run`: `data` is this run's rows. `dataset`: when the run appends (mode append, or an incremental "
        "run), `data` is also every row of the output so far, and the whole output is rewritten."))

    @model_validator(mode="after")
    def _something(self) -> FinalizeConfig:
        if self.dedupe is None and self.sql is None and not self.sort_by:
            raise ValueError("expected sql, dedupe or sort_by (or remove finalize)")
        if self.sql is not None and not self.sql.strip():
            raise ValueError("sql: expected a SELECT query over the table data, got an empty string")
        _check_unique(self.sort_by)
        return self


class DaskConfig(_Model):
    """The Dask cluster of `run.executor: dask` (see docs/cluster.md)."""

    address: str | None = Field(None, description=(
        "The scheduler, e.g. `tcp://host:8786`; else the `DASK_SCHEDULER_ADDRESS` environment variable; "
        "else a LocalCluster of `run.workers` processes is started for the run."))
    connect_timeout: Duration = Field(30.0, description=(
        "An unreachable scheduler fails the run (exit 1, naming the address) after this long."))


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
    """How the job runs: workers, bad rows, retries, state and metrics."""

    workers: Annotated[int, BeforeValidator(parse_workers), WithJsonSchema(WORKERS_SCHEMA)] = Field(
        default_factory=auto_workers, json_schema_extra={"default": "auto"}, description=(
            "Worker processes; `auto` is the number of CPUs this process may use. A run never starts more "
            "workers than it has chunks. `--workers N` overrides it."))
    on_bad_rows: Literal["fail", "skip", "quarantine"] = Field("fail", description=(
        "What a bad row does: `fail` stops the run at the first one (exit 65, nothing published); `skip` "
        "counts and leaves them out; `quarantine` also writes each to `_rejects/` in the output with "
        "file, line, offset, stage, reason and the raw record."))
    max_bad_rows: NonNegativeInt | None = Field(None, description=(
        "With `skip` or `quarantine`: more bad rows than this fail the run (exit 65, nothing published). "
        "None: no limit."))
    retries: NonNegativeInt = Field(2, description=(
        "How often a chunk is retried after its worker died or timed out. An exception raised by a "
        "`python` stage is not retried."))
    chunk_timeout: Duration | None = Field(None, description=(
        "A chunk running longer has its worker killed, and counts as a failed attempt. None: no limit. "
        "Local executor only: with `executor: dask` the job is refused (exit 78)."))
    start_method: Literal["fork", "spawn", "forkserver"] = Field("fork", description=(
        "The multiprocessing start method of the workers."))
    executor: Literal["local", "dask"] = Field("local", description=(
        "`local`: a process pool on this machine; `dask`: a Dask cluster (needs the `dask` extra; see "
        "docs/cluster.md)."))
    dask: Annotated[DaskConfig, EmptyIsDefault] = Field(default_factory=DaskConfig, description=(
        "The Dask cluster of `executor: dask`."))
    progress_interval: Duration = Field(10.0, description=(
        "Without a progress bar (no terminal, or `--no-progress`), the least time between `progress:` log lines."))
    checkpoint_interval: Duration = Field(60.0, description=(
        "How often the chunks finished so far are made durable (the writer closes and fsyncs its part "
        "files; with `executor: dask` the driver journals the files of the chunks it has taken), so that "
        "a killed run resumes from there. Each checkpoint closes the writer's open part files, so a short "
        "interval makes more, smaller files."))
    state_dir: str | None = Field(None, description=(
        "The folder of the state store (`state.db`: every run, and the input files of successful runs), "
        "relative to the job file's folder. None: `.pipeline-state/` beside the job file. Jobs that share "
        "it are kept apart by `name`."))
    metrics_file: str | None = Field(None, description=(
        "After every run, write its figures to this file in the Prometheus text format (for "
        "node_exporter's textfile collector), relative to the job file's folder. None: no metrics."))
    python_modules: StrTuple = Field(
        (), description=(
            "Installed modules that `python` stages may import (`[numpy, mypackage]`); listing a package "
            "allows its submodules. Modules beside the job file need no listing."))
    memory_limit: ByteSize = Field(1024**3, description=(
        "The most memory the run's processes (parent, writer, workers; summed PSS) should use, e.g. 1GiB. "
        "The local executor sizes from it the chunks (when input.chunk_bytes is not set), the results in "
        "flight to the writer and the writer's row-group buffer: about 48 MiB for each process, 24x the "
        "chunk for each worker, a quarter of the rest (at most 256 MiB) for the writer; chunks between 1 MiB "
        "and 4 MiB (see pipeline/memory.py). Left unset, it is 1 GiB, raised to what run.workers need. "
        "DuckDB has it too: `sql` stages share it between the workers (at least 64 MiB each); finalize "
        "has all of it and spills to disk past it."))

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, value: int, info: ValidationInfo) -> int:
        try:
            memory_plan(value, info.data.get("workers") or 1)
        except ValueError as exc:   # too little for the workers
            raise ValueError(f"{format_bytes(value)} is {exc}") from None
        return value

    @property
    def memory_budget(self) -> int | None:
        """``memory_limit`` when the job sets it; None: the default, sized for the workers."""
        return self.memory_limit if "memory_limit" in self.model_fields_set else None

    @field_validator("state_dir", "metrics_file")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str, info: ValidationInfo) -> str:
        missing = dask_missing() if value == "dask" else None
        if missing:
            raise ValueError(missing)
        if value == "dask" and info.data.get("chunk_timeout") is not None:
            # Dask has no per-task time limit to kill a task by; refused rather than ignored
            raise ValueError("run.chunk_timeout works with the local executor only; the dask executor cannot "
                             "stop a task that runs too long: remove run.chunk_timeout or use run.executor: local")
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
    """A job file."""

    name: Annotated[str, Field(pattern=JOB_NAME_PATTERN)] = Field(description=(
        "The job's name: letters, digits, `_`, `.`, `-`, starting with a letter or digit. It names the "
        "job in log lines, the lock message, process titles, the manifest and the state store."))
    input: InputConfig = Field(description="Where the input files are and how they are read.")
    lookups: Annotated[dict[str, LookupConfig], AfterValidator(_check_lookups), EmptyIsDefault] = Field(
        default_factory=dict, description=(
            "Small reference tables, `{countries: {path: ref/countries.csv}}`, visible to `sql` stages and "
            "finalize by name (see docs/sql.md)."))
    stages: tuple[StageSpec, ...] = Field((), description=(
        "The stages, run in order on every chunk: each item is a mapping with one key, the stage name "
        "(see docs/stages.md)."))
    finalize: FinalizeConfig | None = Field(None, description=(
        "One DuckDB query over the whole run's output, after every chunk and before the publish: "
        "dedupe, aggregates, sort order (see docs/sql.md)."))
    output: OutputConfig = Field(description="Where and how the Parquet dataset is written.")
    run: Annotated[RunConfig, EmptyIsDefault] = Field(default_factory=RunConfig, description=(
        "How the job runs: workers, bad rows, retries, state and metrics."))
    params: Annotated[dict[str, str], BeforeValidator(params_as_text), EmptyIsDefault,
                      WithJsonSchema(PARAMS_SCHEMA)] = Field(
        default_factory=dict, description=(
            "Job parameters and their defaults, `{date: yesterday}`: strings (`7` becomes `\"7\"`). "
            "`--param NAME=VALUE` sets one; `${params.NAME}` or `${params.NAME:%Y/%m/%d}` in any string "
            "value uses it. `today`, `yesterday`, `tomorrow`, optionally `+N`/`-N` days, become an ISO "
            "date. The values are recorded in the manifest and the state store (see docs/cron.md)."))
    # set by load_config, not from YAML:
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

    def memory(self, workers: int) -> MemoryPlan:
        """The sizes for ``workers`` local workers within ``run.memory_limit``. A ConfigError naming the
        key when it is too little for them: ``--workers`` can ask for more than the job was checked with."""
        try:
            return memory_plan(self.run.memory_budget, workers)
        except ValueError as exc:
            raise ConfigError(f"{format_bytes(self.run.memory_budget or 0)} is {exc} (or --workers)",
                              key="run.memory_limit", line=self.line_of("run.memory_limit")) from None


MODEL_AT: dict[str, type[BaseModel]] = {
    "": Job,
    "input": InputConfig,
    "input.csv": CsvOptions,
    "output": OutputConfig,
    "run": RunConfig,
    "run.dask": DaskConfig,
    "finalize": FinalizeConfig,
    "finalize.dedupe": DedupeConfig,
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
    except Exception:  # noqa: BLE001 - a spec object without a plain-data form
        return to_jsonable_python(stage.raw, fallback=str)


def _config_hash(job: Job) -> str:
    data = job.model_dump(mode="json", by_alias=True, include={"name", "input", "output", "params"})
    if job.lookups:   # only when present, so that the hash of a job without them stays what it was
        data["lookups"] = {k: v.model_dump(mode="json", by_alias=True) for k, v in sorted(job.lookups.items())}
    if job.finalize is not None:
        data["finalize"] = job.finalize.model_dump(mode="json", by_alias=True)
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
    order = ["name", "input", "lookups", "stages", "finalize", "output", "run", "params", "config_path",
             "config_hash"]
    return {k: data[k] for k in order}
