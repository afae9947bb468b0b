"""The job file: YAML with line numbers -> typed, frozen models.

``load_config(path, overrides, env, params, stages=...)`` reads the YAML job file, applies
``--set`` overrides, replaces ``${VAR}`` / ``${VAR:-default}`` from the environment and
``${params.NAME}``, and validates the result into a frozen :class:`Job`.

- ``values``: byte sizes, durations and the other value types of the models;
- ``models``: ``Job`` and its sections, the config hash and the manifest dump;
- ``yaml_lines``: the safe YAML loader that records the line of every key;
- ``substitute``: ``--set`` overrides, ``${VAR}``, ``${params.NAME}``;
- ``load``: validation and ``load_config``;
- ``document``: the job file read, overridden and substituted, before validation (it needs neither
  pydantic nor pyarrow, so ``pipeline run`` takes the job's lock before they load);
- ``issues``: a problem at a key path, and how values appear in messages.

The names below are imported from their modules when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULE_OF = {
    "ByteSize": "pipeline.config.values",
    "CsvOptions": "pipeline.config.models",
    "DaskConfig": "pipeline.config.models",
    "DedupeConfig": "pipeline.config.models",
    "Duration": "pipeline.config.values",
    "FinalizeConfig": "pipeline.config.models",
    "InputConfig": "pipeline.config.models",
    "Job": "pipeline.config.models",
    "LookupConfig": "pipeline.config.models",
    "OutputConfig": "pipeline.config.models",
    "RunConfig": "pipeline.config.models",
    "StageSpec": "pipeline.config.models",
    "StageType": "pipeline.config.load",
    "dask_missing": "pipeline.config.models",
    "dump_config": "pipeline.config.models",
    "format_bytes": "pipeline.config.values",
    "load_config": "pipeline.config.load",
    "parse_byte_size": "pipeline.config.values",
    "parse_duration": "pipeline.config.values",
    "plural": "pipeline.config.values",
    "resolve_param_value": "pipeline.config.substitute",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
