"""Stages: the registry, the runner and the built-in stages (see docs/stages.md)."""

from pipeline.stages import (
    builtin,  # noqa: F401  (registers the built-in stages)
    sql,  # noqa: F401  (registers the sql stage; DuckDB is imported when used)
)
from pipeline.stages.python_stage import PythonSpec, check_python_spec, load_function
from pipeline.stages.registry import (
    REJECTED_POSITIONS_SCHEMA,
    STAGES,
    StageContext,
    StageDef,
    StageOutput,
    StagesResult,
    apply_stages,
    columns_read,
    output_schema,
    register,
    validate_spec,
)

__all__ = [
    "REJECTED_POSITIONS_SCHEMA", "STAGES", "PythonSpec", "StageContext", "StageDef", "StageOutput",
    "StagesResult", "apply_stages", "check_python_spec", "columns_read", "load_function", "output_schema",
    "register", "validate_spec",
]
