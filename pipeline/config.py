"""The job file: YAML with line numbers -> typed, frozen models.

``load_config(path, overrides, env)`` reads the YAML job file, applies ``--set`` overrides,
replaces ``${VAR}`` / ``${VAR:-default}`` from the environment and validates the result into a
frozen :class:`Job`. Every problem is a :class:`~pipeline.errors.ConfigError` naming the file,
the YAML line and the dotted key path (``stages[2].derive``, ``input.paths[0]``).
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import importlib
import json
import os
import datetime as _dt
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import pyarrow as pa
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from pipeline.dtypes import parse_type
from pipeline.errors import ConfigError

__all__ = [
    "ByteSize",
    "CsvOptions",
    "DaskConfig",
    "Duration",
    "InputConfig",
    "Job",
    "OutputConfig",
    "RunConfig",
    "StageSpec",
    "dump_config",
    "format_bytes",
    "load_config",
    "parse_byte_size",
    "parse_duration",
]

MAX_NODES = 1_000_000  # values in one document after alias expansion


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as it appears in an error message."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif value is True or value is False:
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, (list, tuple)):
        text = "a list"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_BYTES_EXPECTED = "expected a size in bytes such as 100, 512kB, 64MiB or 1.5GiB (greater than 0)"


def parse_byte_size(value: Any) -> int:
    """``64MiB``, ``64 MiB``, ``1GB``, ``512kB``, ``1.5GiB``, ``100`` -> bytes (int > 0).

    KiB/MiB/GiB/TiB are powers of 1024, kB/MB/GB/TB powers of 1000.
    """
    amount: Fraction | None = None
    if isinstance(value, bool):
        amount = None
    elif isinstance(value, int):
        amount = Fraction(value)
    elif isinstance(value, float) and value.is_integer():
        amount = Fraction(int(value))
    elif isinstance(value, str):
        m = _BYTES_RE.match(value)
        if m and m.group(2).lower() in _BYTE_UNITS:
            unit = _BYTE_UNITS[m.group(2).lower()]
            amount = Fraction(m.group(1)) * unit
            if unit == 1 and amount.denominator != 1:  # a fraction of a byte
                amount = None
    if amount is None or int(amount) <= 0:
        raise ValueError(f"{_BYTES_EXPECTED}, got {_show(value)}")
    return int(amount)


_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_DURATION_EXPECTED = 'expected a duration such as 30, "30s", "5m", "1h" or "500ms" (greater than 0)'


def parse_duration(value: Any) -> float:
    """``30``, ``"30s"``, ``"5m"``, ``"1h"``, ``"500ms"`` -> seconds (float > 0)."""
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{_DURATION_EXPECTED}, got {_show(value)}")
    return seconds


def _integer(minimum: int):
    """A strict integer (no booleans, no fractions); numeric strings come from ${VAR}."""

    def check(value: Any) -> int:
        n: int | None = None
        if isinstance(value, bool):
            n = None
        elif isinstance(value, int):
            n = value
        elif isinstance(value, float) and value.is_integer():
            n = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            n = int(value)
        if n is None or n < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"expected {what}, got {_show(value)}")
        return n

    return BeforeValidator(check)


def _auto_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _parse_workers(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return _auto_workers()
    if not isinstance(value, bool):
        if isinstance(value, int) and value >= 1:
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value) and int(value) >= 1:
            return int(value)
    raise ValueError(f'expected a positive integer or "auto", got {_show(value)}')


def _str_tuple(value: Any) -> Any:
    """A single string stands for a one-element list."""
    return (value,) if isinstance(value, str) else value


def _check_type_name(value: str) -> str:
    parse_type(value)  # ValueError names the accepted forms
    return value


def _params(value: Any) -> Any:
    """params are strings; scalars written without quotes are turned into their text."""
    if not isinstance(value, Mapping):
        return value
    out = {}
    for k, v in value.items():
        if v is True or v is False:
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        out[k] = v
    return out


def _is_url(path: str) -> bool:
    return "://" in path


def _resolve(path: str, info: ValidationInfo) -> str:
    """Relative paths are relative to the config file's folder; URLs are kept as they are."""
    if path.startswith("file://"):
        path = path[len("file://"):]  # a local path
    elif _is_url(path):
        return path
    base = (info.context or {}).get("base_dir")
    path = os.path.expanduser(path)
    if base is not None and not os.path.isabs(path):
        path = os.path.join(str(base), path)
    return os.path.normpath(path) if os.path.isabs(path) else path


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, _integer(1)]
NonNegativeInt = Annotated[int, _integer(0)]
TypeName = Annotated[str, AfterValidator(_check_type_name)]
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_str_tuple)]
# an empty section (`run:` with every line commented out) means the defaults
_EmptyIsDefault = BeforeValidator(lambda value: {} if value is None else value)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


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
            raise ValueError(f'expected exactly one character (use "\\t" for a tab), got {_show(value)}')
        return value

    @field_validator("quote", mode="before")
    @classmethod
    def _quote(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or len(value) != 1 or value in "\r\n"):
            raise ValueError(f"expected one character, or null for no quoting, got {_show(value)}")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {_show(value)}; expected a name such as utf-8, latin-1 or cp1252"
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
            raise ValueError(f"quote and delimiter must differ, both are {_show(self.quote)}")
        return self


def _check_unique(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"column {_show(name)} is listed twice")
        seen.add(name)


class InputConfig(_Model):
    paths: StrTuple
    format: Literal["csv", "tsv", "jsonl", "parquet", "auto"] = "auto"
    csv: Annotated[CsvOptions, _EmptyIsDefault] = Field(default_factory=CsvOptions)
    schema_: Annotated[dict[str, TypeName], _EmptyIsDefault] = Field(default_factory=dict, alias="schema")
    chunk_bytes: ByteSize | None = None   # None: about total/(workers*4), between 4 MiB and 64 MiB
    sample_bytes: ByteSize = 1024**2
    max_record_bytes: ByteSize = 16 * 1024**2
    max_decompressed_bytes: ByteSize | None = None
    follow_symlinks: bool = False
    allow_missing_columns: bool = False
    incremental: bool = False    # process only files that are new or changed since the last successful run
    on_changed_file: Literal["fail", "skip", "reprocess"] = Field(
        "fail", description="incremental runs: what to do with a file an earlier run processed and that has "
        "changed since: fail (exit 65, nothing written), skip it (it stays as processed), or reprocess it "
        "(its earlier rows are replaced by its rows now)")
    min_age: Duration | None = Field(
        None, description="leave files modified more recently than this (e.g. 5m) for the next run: they "
        "may still be being written")

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
        return tuple(_resolve(p, info) for p in value)

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
    on_schema_change: Literal["fail", "add_columns"] = Field(
        "fail", description="append (and incremental) runs whose columns differ from the output's: fail "
        "(exit 65, the output untouched), or add_columns (new columns are added; every part file is "
        "given the whole schema, with nulls where a run had no value). A changed type always fails")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("expected a directory path, got an empty string")
        return _resolve(value, info)

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
    import importlib.util

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
    workers: Annotated[int, BeforeValidator(_parse_workers)] = Field(default_factory=_auto_workers)
    on_bad_rows: Literal["fail", "skip", "quarantine"] = "fail"
    max_bad_rows: NonNegativeInt | None = None
    retries: NonNegativeInt = 2
    chunk_timeout: Duration | None = None
    start_method: Literal["fork", "spawn", "forkserver"] = "fork"
    executor: Literal["local", "dask"] = "local"
    dask: Annotated[DaskConfig, _EmptyIsDefault] = Field(default_factory=DaskConfig)
    progress_interval: Duration = 10.0
    checkpoint_interval: Duration = 60.0   # how often finished chunks are made durable for resume
    state_dir: str | None = None
    metrics_file: str | None = None
    python_modules: Annotated[tuple[str, ...], BeforeValidator(_str_tuple)] = ()  # installed modules python stages may import

    @field_validator("state_dir", "metrics_file")
    @classmethod
    def _paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

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


_INTERNAL = ("config_path", "base_dir", "config_hash", "lines")


class Job(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    input: InputConfig
    stages: tuple[StageSpec, ...] = ()
    output: OutputConfig
    run: Annotated[RunConfig, _EmptyIsDefault] = Field(default_factory=RunConfig)
    params: Annotated[dict[str, str], BeforeValidator(_params), _EmptyIsDefault] = Field(default_factory=dict)
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


_MODEL_AT = {
    "": Job,
    "input": InputConfig,
    "input.csv": CsvOptions,
    "output": OutputConfig,
    "run": RunConfig,
    "run.dask": DaskConfig,
}


def _keys_of(model: type[BaseModel]) -> list[str]:
    keys = [f.alias or name for name, f in model.model_fields.items()]
    return [k for k in keys if k not in _INTERNAL] if model is Job else keys


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


def format_bytes(n: int | float) -> str:
    """``67108864`` -> ``"64.0 MiB"``."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# YAML with line numbers
# --------------------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"

_INT_RE = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_RE = re.compile(r"^(?:true|false)$", re.IGNORECASE)
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")


class _Issue(Exception):
    """A problem at a key path; turned into a ConfigError with file and line by the caller."""

    def __init__(self, key: str, message: str, line: int | None = None):
        super().__init__(message)
        self.key, self.message, self.line = key, message, line


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class LineLoader(yaml.SafeLoader):
    """A SafeLoader that builds plain data and records the line of every key and list item.

    Only plain YAML is accepted: strings, integers, floats, ``true``/``false``, null, lists and
    mappings (with ``<<`` merges). Any other tag is refused without being constructed. Booleans
    are only ``true``/``false`` in any case, so ``NO``, ``yes``, ``on`` stay strings; dates stay
    strings; ``010`` is ten; ``1:30`` is a string. Duplicate keys in a mapping are refused.
    """

    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream):
        super().__init__(stream)
        self.lines: dict[str, int] = {}
        self._count = 0

    def build(self, node: yaml.Node | None, path: str = "") -> Any:
        """The data of a composed node; lines are recorded under ``path``."""
        if node is None:
            return None
        return self._build(node, path, set())

    def _build(self, node: yaml.Node, path: str, active: set[int]) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _Issue(path, f"document too large: more than {MAX_NODES} values (alias expansion?)", _line(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in active:
            raise _Issue(path, "recursive alias: a value contains itself", _line(node))
        active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    raise self._bad_tag(node, path)
                out = []
                for i, item in enumerate(node.value):
                    item_path = _join(path, i)
                    self.lines.setdefault(item_path, _line(item))
                    out.append(self._build(item, item_path, active))
                return out
            if node.tag != _MAP:
                raise self._bad_tag(node, path)
            return self._mapping(node, path, active)
        finally:
            active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str, active: set[int]) -> dict:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                continue
            key = self._key(key_node, path)
            if key in seen:
                raise _Issue(
                    _join(path, key),
                    f"duplicate key {_show(key)} (first at line {seen[key]}, again at line {_line(key_node)})",
                    _line(key_node),
                )
            seen[key] = _line(key_node)
        try:
            self.flatten_mapping(node)  # resolves `<<` merges; explicit keys win
        except yaml.MarkedYAMLError as e:
            raise _Issue(path, f"invalid merge: {e.problem}", _mark_line(e.problem_mark)) from None
        last: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:  # merged keys first: the last occurrence wins
            last[self._key(key_node, path)] = (key_node, value_node)
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in last.items():
            key_path = _join(path, key)
            self.lines[key_path] = _line(key_node)
            out[key] = self._build(value_node, key_path, active)
        return out

    def _key(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _Issue(path or "(top level)", "a key must be a plain string, not a list or mapping", _line(node))
        if node.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
            raise self._bad_tag(node, path)
        return node.value

    def _scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        text, tag = node.value, node.tag
        try:
            if tag == _STR:
                return text
            if tag == _NULL and _NULL_RE.match(text):
                return None
            if tag == _BOOL and _BOOL_RE.match(text):
                return text.lower() == "true"
            if tag == _INT and _INT_RE.match(text):
                digits = text.replace("_", "")
                sign = -1 if digits.startswith("-") else 1
                digits = digits.lstrip("+-")
                base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
                return sign * int(digits[2:] if base != 10 else digits, base)
            if tag == _FLOAT and _FLOAT_RE.match(text):
                number = text.replace("_", "").lower()
                return float(number.replace(".inf", "inf").replace(".nan", "nan"))
        except ValueError:
            pass
        if tag in (_NULL, _BOOL, _INT, _FLOAT):
            raise _Issue(path, f"{_show(text)} is not a valid {_tag_name(tag)}", _line(node))
        raise self._bad_tag(node, path)

    def _bad_tag(self, node: yaml.Node, path: str) -> _Issue:
        return _Issue(
            path or "(top level)",
            f"tag {_tag_name(node.tag)} is not allowed; only plain values (strings, numbers, "
            "true/false, null), lists and mappings are accepted",
            _line(node),
        )


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mark_line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


LineLoader.add_implicit_resolver(_BOOL, _BOOL_RE, list("tTfF"))
LineLoader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
LineLoader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
LineLoader.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])
LineLoader.add_implicit_resolver(_NULL, _NULL_RE, ["~", "n", "N", ""])


def _parse_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """Parse one YAML document into plain data and ``key path -> line``.

    Raises _Issue for refused content and yaml.MarkedYAMLError for syntax errors.
    """
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        return loader.build(node), loader.lines
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# ${params.NAME} and ${params.NAME:%Y/%m/%d}
# --------------------------------------------------------------------------------------------

_PARAM_RE = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_DAY_WORD = re.compile(r"^(today|yesterday|tomorrow)(?:\s*([+-])\s*(\d+))?$", re.IGNORECASE)


def resolve_param_value(value: str, today: _dt.date | None = None) -> str:
    """``today``, ``yesterday``, ``today-7`` ... -> an ISO date (local time); anything else unchanged."""
    m = _DAY_WORD.match(value.strip())
    if not m:
        return value
    base = today or _dt.date.today()
    word, sign, days = m.group(1).lower(), m.group(2), int(m.group(3) or 0)
    base += _dt.timedelta(days={"today": 0, "yesterday": -1, "tomorrow": 1}[word])
    base += _dt.timedelta(days=days if sign == "+" else -days)
    return base.isoformat()


def _format_param(name: str, value: str, fmt: str, key: str) -> str:
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise _Issue(key, f"parameter {name}={value!r} is not a date (YYYY-MM-DD), so it cannot be "
                          f"formatted as {fmt!r}") from None
    return when.strftime(fmt)


def _substitute_params(data: Any, values: Mapping[str, str], path: str = "") -> Any:
    if isinstance(data, str):
        if "${params." not in data:
            return data

        def replace(m: re.Match) -> str:
            name, fmt = m.group(1), m.group(2)
            if name not in values:
                known = ", ".join(sorted(values)) or "none"
                raise _Issue(path, f"unknown parameter {name!r}{_close(name, list(values))}; "
                                   f"the job declares: {known}")
            return _format_param(name, values[name], fmt, path) if fmt else values[name]

        return _PARAM_RE.sub(replace, data)
    if isinstance(data, dict):
        return {k: (v if path == "" and k == "params" else _substitute_params(v, values, _join(path, k)))
                for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_params(v, values, _join(path, i)) for i, v in enumerate(data)]
    return data


def _apply_params(doc: dict, given: Mapping[str, str]) -> dict:
    declared = doc.get("params")
    if declared is None:
        declared = {}
    if not isinstance(declared, dict):
        return _unescape(doc)  # the model reports the wrong shape
    values = {str(k): v for k, v in _params(declared).items()}
    if any(not isinstance(v, str) for v in values.values()):
        return _unescape(doc)  # the model reports values that are not scalars
    for name, value in given.items():
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise _Issue("--param", f"unknown parameter {name!r}{_close(name, list(values))}; "
                                    f"the job declares: {known}")
        values[name] = value
    values = {k: resolve_param_value(_unescape(v)) for k, v in values.items()}
    doc = _unescape(_substitute_params(doc, values))
    if values:
        doc["params"] = values
    return doc


def _unescape(data: Any) -> Any:
    if isinstance(data, str):
        return data.replace(_LITERAL, "${") if _LITERAL in data else data
    if isinstance(data, dict):
        return {k: _unescape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_unescape(v) for v in data]
    return data


# --------------------------------------------------------------------------------------------
# ${VAR} interpolation
# --------------------------------------------------------------------------------------------

_VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


_LITERAL = "\ue000{"   # stands for a literal "${" until ${params.x} are replaced, then becomes "${"


def _interpolate_str(text: str, env: Mapping[str, str], key: str) -> str:
    def replace(m: re.Match) -> str:
        if m.group(0) == "$${":
            return _LITERAL
        ref = _VAR_NAME.match(m.group(1))
        if ref is None:  # ${params.x} and other non-variable references stay as written
            return m.group(0)
        name, default = ref.group(1), ref.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise _Issue(
                    key, f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                )
            return default
        return value

    return _VAR_RE.sub(replace, text)


def _interpolate(data: Any, env: Mapping[str, str], path: str = "") -> Any:
    if isinstance(data, str):
        return _interpolate_str(data, env, path) if "$" in data else data
    if isinstance(data, dict):
        return {k: _interpolate(v, env, _join(path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolate(v, env, _join(path, i)) for i, v in enumerate(data)]
    return data


# --------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------

_SEGMENT_RE = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _parse_override_key(key: str) -> list[str | int] | None:
    parts: list[str | int] = []
    for segment in key.split("."):
        m = _SEGMENT_RE.fullmatch(segment.strip())
        if m is None:
            return None
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def _parse_override(text: str) -> tuple[str, list[str | int], Any]:
    """``"run.workers=2"`` -> ("run.workers", ["run", "workers"], 2)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _Issue("--set", f"expected KEY=VALUE (for example output.path=/tmp/out), got {_show(text)}")
    parts = _parse_override_key(key)
    if parts is None:
        raise _Issue("--set", f"{_show(key)} is not a key path; expected names separated by dots, "
                     "with [i] for list items (for example stages[0].filter)")
    try:
        value, _ = _parse_yaml(value_text)
        if isinstance(value, str) and value_text.lstrip()[:1] in ("|", ">"):
            value = value_text.strip()  # a block scalar indicator alone: the user meant the text
    except _Issue as e:
        raise _Issue("--set", f"{key}: {e.message}") from None
    except yaml.YAMLError as e:
        if value_text.lstrip()[:1] in ("[", "{", '"', "'"):
            problem = getattr(e, "problem", None) or str(e)
            message = f"{key}: the value {_show(value_text)} is not a valid YAML value ({problem})"
            raise _Issue("--set", message) from None
        value = value_text.strip()  # text YAML cannot read plainly (`@x`, `a: b: c`) is taken as it is
    canonical = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))
    return canonical, parts, value


def _apply_override(doc: dict, parts: list[str | int], value: Any, text: str) -> None:
    target: Any = doc
    walked = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(target, list):
                raise _Issue("--set", f"{text}: {walked or '(top level)'} is not a list")
            if part > len(target) or (part == len(target) and not last):
                raise _Issue("--set", f"{text}: {walked} has {len(target)} items, no item [{part}]")
            if last:
                if part == len(target):
                    target.append(value)
                else:
                    target[part] = value
                return
            if target[part] is None:
                target[part] = [] if isinstance(parts[i + 1], int) else {}
        else:
            if not isinstance(target, dict):
                raise _Issue("--set", f"{text}: {walked or '(top level)'} is not a mapping")
            if last:
                target[part] = value
                return
            if target.get(part) is None:
                target[part] = [] if isinstance(parts[i + 1], int) else {}
        target = target[part]
        walked = _join(walked, part)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _registry() -> tuple[Mapping[str, Any], Any]:
    stages = importlib.import_module("pipeline.stages")
    return stages.STAGES, stages.validate_spec


def _close(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {_show(close[0]).replace(chr(34), chr(39))}?)"
    return f"; expected one of: {', '.join(sorted(choices))}"


def _build_stages(raw: Any, lines: Mapping[str, int]) -> tuple[list[StageSpec], list[_Issue]]:
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [_Issue("stages", f"expected a list of stages such as - filter: \"qty > 0\", got {_show(raw)}")]
    registry, validate_spec = _registry()
    specs: list[StageSpec] = []
    issues: list[_Issue] = []
    for i, item in enumerate(raw):
        item_key = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            got = f"{len(item)} keys ({', '.join(map(str, item))})" if isinstance(item, dict) else _show(item)
            issues.append(_Issue(
                item_key,
                "expected a mapping with exactly one key, the stage name, such as "
                f"- filter: \"qty > 0\" or - select: [a, b]; got {got}",
            ))
            continue
        ((name, value),) = item.items()
        key = f"{item_key}.{name}"
        if name not in registry:
            issues.append(_Issue(key, f"unknown stage {_show(name)}{_suggest(name, list(registry))}"))
            continue
        try:
            spec = validate_spec(name, value)
        except ValidationError as e:
            issues.extend(_translate(e, prefix=key, lines=lines))
            continue
        except (ValueError, TypeError, ConfigError) as e:
            message = e.message if isinstance(e, ConfigError) else str(e)
            issues.append(_Issue(key, message or f"invalid {name} stage"))
            continue
        specs.append(StageSpec(name=name, spec=spec, key=key, line=lines.get(key), raw=value))
    return specs, issues


def _type_word(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if value is True or value is False:
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _got(value: Any) -> str:
    """``a string "x"``, ``a list``: what was found instead."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return _type_word(value)
    return f"{_type_word(value)} {_show(value)}"


def _plain_message(err: Mapping[str, Any], key: str) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = _show(value)
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent, _, last = key.rpartition(".")
        model = _MODEL_AT.get(parent)
        last = re.sub(r"\[\d+\]$", "", last)
        return "unknown key" + (_suggest(last, _keys_of(model)) if model else "")
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", "")
        return f"expected one of {expected}, got {got}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error") or err["msg"])
    if kind == "string_pattern_mismatch" and key == "name":
        return ("expected a name of letters, digits, '_', '.' and '-' that starts with a letter or digit, "
                f"got {got}")
    if kind == "string_type":
        return f"expected a string, got {_got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"expected a mapping, got {_got(value)}"
    if kind in ("tuple_type", "list_type", "iterable_type", "set_type"):
        return f"expected a list, got {_got(value)}"
    msg = str(err.get("msg", "invalid value"))
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def _translate(exc: ValidationError, prefix: str, lines: Mapping[str, int]) -> list[_Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        key = prefix
        for part in err["loc"]:
            if part == "[key]":
                continue
            key = _join(key, part if isinstance(part, int) else str(part))
        issues.append(_Issue(key or "(top level)", _plain_message(err, key)))
    return issues


# --------------------------------------------------------------------------------------------
# load_config
# --------------------------------------------------------------------------------------------


def _nearest_line(key: str, lines: Mapping[str, int]) -> int | None:
    while key:
        if key in lines:
            return lines[key]
        if key.endswith("]"):
            key = key[: key.rindex("[")]
        else:
            key = key.rpartition(".")[0]
    return lines.get("")


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "[")


def load_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> Job:
    """Load, override, interpolate and validate a YAML job file.

    ``params`` (from ``--param name=value``) replace the defaults the job declares under
    ``params:``; ``${params.name}`` and ``${params.name:%Y/%m/%d}`` are then substituted.

    Raises ConfigError (exit code 78) naming the file, line and key path of the first problem.
    """
    file = str(path)
    env = os.environ if env is None else env
    config_path = Path(os.path.abspath(os.fspath(path)))
    base_dir = config_path.parent

    def error(issues: list[_Issue], set_keys: Mapping[str, str] = {}) -> ConfigError:
        rendered = []
        for issue in issues:
            line = issue.line
            message = issue.message
            for set_key, text in set_keys.items():
                if issue.key != "--set" and _under(issue.key, set_key):
                    message += f" (from --set {text})"
                    break
            else:
                if line is None and issue.key != "--set":
                    line = _nearest_line(issue.key, lines)
            rendered.append((line, issue.key, message))
        order = sorted(range(len(rendered)), key=lambda i: (rendered[i][0] is None, rendered[i][0] or 0, i))
        first = rendered[order[0]]
        message = first[2]
        more = [rendered[i] for i in order[1:4]]
        for line, key, msg in more:
            message += f"\n  also {'line ' + str(line) + ': ' if line else ''}{key}: {msg}"
        if len(order) > 4:
            message += f"\n  and {len(order) - 4} more"
        return ConfigError(message, file=file, line=first[0], key=first[1])

    lines: dict[str, int] = {}
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError("the config file is not valid UTF-8 text", file=file, line=line) from None

    try:
        doc, lines = _parse_yaml(text)
    except _Issue as e:
        raise error([e]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        detail = "; ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(f"invalid YAML: {detail}", file=file, line=_mark_line(mark)) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise ConfigError(f"invalid YAML: character {e.character!r} is not allowed", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file) from None

    if doc is None:
        raise ConfigError("the config file is empty; expected a mapping with name, input and output", file=file, line=1)
    if not isinstance(doc, dict):
        raise ConfigError(
            f"expected a mapping (name:, input:, output:, ...) at the top level, got {_type_word(doc)}",
            file=file, line=1,
        )
    if doc:
        lines[""] = min(lines[k] for k in doc if k in lines)

    # --set overrides, on the parsed document
    set_keys: dict[str, str] = {}
    for text_ in overrides:
        try:
            canonical, parts, value = _parse_override(text_)
            _apply_override(doc, parts, value, text_)
        except _Issue as e:
            raise error([e]) from None
        set_keys[canonical] = text_
        for k in [k for k in lines if _under(k, canonical)]:
            del lines[k]

    # ${VAR} interpolation, on the parsed values; then ${params.x}
    try:
        doc = _interpolate(doc, env)
        doc = _apply_params(doc, params or {})
    except _Issue as e:
        raise error([e], set_keys) from None

    issues: list[_Issue] = []
    for key in _INTERNAL:
        if key in doc:
            doc.pop(key)
            issues.append(_Issue(key, "unknown key" + _suggest(key, _keys_of(Job))))
    stages, stage_issues = _build_stages(doc.pop("stages", None), lines)
    issues.extend(stage_issues)
    doc["stages"] = tuple(stages)
    try:
        job = Job.model_validate(doc, context={"base_dir": base_dir})
    except ValidationError as e:
        issues.extend(i for i in _translate(e, "", lines) if not _under(i.key, "stages"))
        job = None
    if issues:
        raise error(issues, set_keys)
    assert job is not None
    return job.model_copy(update={"config_path": config_path, "base_dir": base_dir, "lines": dict(lines)})
