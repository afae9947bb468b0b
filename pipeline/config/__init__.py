"""The job file: YAML with line numbers -> typed, frozen models.

``load_config(path, overrides, env, params, stages=...)`` reads the YAML job file, applies
``--set`` overrides, replaces ``${VAR}`` / ``${VAR:-default}`` from the environment and
``${params.NAME}``, and validates the result into a frozen :class:`Job`.

- ``values``: byte sizes, durations and the other value types of the models;
- ``models``: ``Job`` and its sections, the config hash and the manifest dump;
- ``yaml_lines``: the safe YAML loader that records the line of every key;
- ``substitute``: ``--set`` overrides, ``${VAR}``, ``${params.NAME}``;
- ``load``: validation and ``load_config``;
- ``issues``: a problem at a key path, and how values appear in messages.
"""

from pipeline.config.load import StageType, load_config
from pipeline.config.models import (
    CsvOptions,
    DaskConfig,
    DedupeConfig,
    FinalizeConfig,
    InputConfig,
    Job,
    LookupConfig,
    OutputConfig,
    RunConfig,
    StageSpec,
    dask_missing,
    dump_config,
)
from pipeline.config.substitute import resolve_param_value
from pipeline.config.values import ByteSize, Duration, format_bytes, parse_byte_size, parse_duration, plural

__all__ = [
    "ByteSize",
    "CsvOptions",
    "DaskConfig",
    "DedupeConfig",
    "Duration",
    "FinalizeConfig",
    "InputConfig",
    "Job",
    "LookupConfig",
    "OutputConfig",
    "RunConfig",
    "StageSpec",
    "StageType",
    "dask_missing",
    "dump_config",
    "format_bytes",
    "load_config",
    "parse_byte_size",
    "parse_duration",
    "plural",
    "resolve_param_value",
]
