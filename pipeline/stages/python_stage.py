"""The ``python`` stage: a user function ``module:function`` applied to each chunk.

The module is a file ``<module>.py`` in the job file's folder (``pkg.mod`` is ``pkg/mod.py``),
loaded by path. An installed module is used only when the job allows it by name
(``StageContext.allowed_modules``); the name is checked before anything is imported.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import ExprError, Interrupted, StageError
from pipeline.stages.registry import StageContext, register

_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")


class PythonSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    function: str
    api: Literal["pandas", "arrow"] = "pandas"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("function")
    @classmethod
    def _reference(cls, value: str) -> str:
        if not _REF.match(value):
            raise ValueError(f"expected 'module:function' such as 'transforms:enrich', got {value!r}")
        return value


_MODULES: dict[tuple[str, int, int], ModuleType] = {}
_LOCK = threading.Lock()


def _load_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    stat = resolved.stat()
    cache_key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        module = _MODULES.get(cache_key)
        if module is not None:
            return module
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
        name = f"_pipeline_user_{digest}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise ExprError(f"python stage: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        previous = sys.modules.get(name)
        sys.modules[name] = module   # classes and dataclasses in the module need this
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
            raise ExprError(f"python stage: importing {path.name} failed: {type(e).__name__}: {e}") from e
        _MODULES[cache_key] = module
        return module


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def load_function(reference: str, base_dir: Path, allowed_modules: tuple[str, ...] = ()) -> Callable:
    """The callable named by ``module:function``; ExprError when it cannot be used."""
    m = _REF.match(reference)
    if not m:
        raise ExprError(f"python stage: expected 'module:function' such as 'transforms:enrich', "
                        f"got {reference!r}")
    module_name, attr = m.group(1), m.group(2)
    relative = Path(*module_name.split(".")).with_suffix(".py")
    path = Path(base_dir) / relative
    if path.is_file():
        module = _load_file(path)
    elif _allowed(module_name, tuple(allowed_modules)):
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise ExprError(f"python stage: cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    else:
        raise ExprError(
            f"python stage: module {module_name!r} not found: there is no {relative.as_posix()} in "
            f"the job file's folder ({base_dir}). Put the function in a file there, or, to use an "
            f"installed module, add {module_name.split('.')[0]!r} to run.python_modules")
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ExprError(f"python stage: {module_name!r} has no function {attr!r}{hint}")
    if not callable(fn):
        raise ExprError(f"python stage: {reference} is a {type(fn).__name__}, not a function")
    return fn


def check_python_spec(spec: PythonSpec | dict, base_dir: Path, allowed_modules: tuple[str, ...] = ()) -> None:
    """At validate time: the module can be found (and may be imported) and the function exists."""
    if not isinstance(spec, PythonSpec):
        spec = PythonSpec.model_validate(spec)
    load_function(spec.function, Path(base_dir), tuple(allowed_modules))


def user_traceback(exc: BaseException, fn: Callable, base_dir: Path) -> str:
    """The traceback of an exception a user function raised, with the job's own frames only.

    A frame is the user's when it is in the function's own folder, or in the job file's folder
    but neither in this program nor in an installed package.
    """
    module_file = (getattr(sys.modules.get(getattr(fn, "__module__", None) or ""), "__file__", None)
                   or getattr(getattr(fn, "__code__", None), "co_filename", None))
    job_dir = os.path.realpath(base_dir)
    ours = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    installed = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    own = os.path.realpath(module_file) if module_file else None
    if own and os.path.dirname(own) not in installed:
        own = os.path.dirname(own)     # a package or the folder of the user's file, not all of site-packages

    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

    def users(filename: str) -> bool:
        path = os.path.realpath(filename)
        if inside(path, ours):
            return False
        if own and inside(path, own) and any(inside(own, d) for d in installed):
            return True     # an installed module the job allows by name
        return ((own is not None and inside(path, own)) or inside(path, job_dir)) and \
            not any(inside(path, d) for d in installed)

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if users(f.filename)]
    lines = ["Traceback (most recent call last; the job's own code only):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")


@functools.lru_cache(maxsize=1)
def _nullable() -> dict:
    import pandas as pd  # only jobs with a pandas stage pay for importing pandas

    return {
        pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype(),
    }


def _to_pandas(table: pa.Table):
    # Integers and booleans become pandas' nullable types, so a null does not turn them into floats.
    # No threads of pyarrow's: each worker process has its core, and threads here only compete with
    # the other workers (about twice the conversion's CPU on a busy machine); the same on the way back.
    return table.to_pandas(types_mapper=_nullable().get, use_threads=False)


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary columns (a pandas Categorical, an Arrow dictionary array) as their values, as
    Parquet inputs are read: each chunk's dictionary and index type differ, and the output's
    columns have one type."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


def _restore_types(result: pa.Table, source: pa.Schema) -> pa.Table:
    """Undo representation changes of the pandas round trip.

    pandas text comes back as large_string and an empty object column as null: such columns get
    the input column's type again, and new text columns become plain string. A Categorical is its
    values.
    """
    result = _decode_dictionaries(result)
    for i, field in enumerate(result.schema):
        j = source.get_field_index(field.name)
        want = source.field(j).type if j >= 0 else None
        if want is not None and field.type == want:
            continue
        if want is None:
            if not pa.types.is_large_string(field.type):
                continue
            want = pa.string()
        same_kind = (
            pa.types.is_null(field.type)
            or (pa.types.is_large_string(field.type) and pa.types.is_string(want))
            or (pa.types.is_large_binary(field.type) and pa.types.is_binary(want))
        )
        if same_kind:
            try:
                result = result.set_column(i, field.name, result.column(i).cast(want))
            except (pa.ArrowException, ValueError):
                pass
    return result.replace_schema_metadata(None)


def _check(spec: PythonSpec, ctx: StageContext) -> None:
    check_python_spec(spec, ctx.base_dir, ctx.allowed_modules)


@register("python", example="python: {function: \"transforms:enrich\", api: pandas, params: {salt: x}}",
          check=_check)
def python(table: pa.Table, spec: PythonSpec, ctx: StageContext) -> pa.Table:
    """Call a user function on each chunk (a pandas DataFrame or an Arrow table) with params."""
    fn = load_function(spec.function, ctx.base_dir, ctx.allowed_modules)
    where = ctx.stage or "python"
    on = f" on {ctx.chunk}" if ctx.chunk else ""
    context = {"stage": where, "chunk": ctx.chunk or None, "function": spec.function}
    data = _to_pandas(table) if spec.api == "pandas" else table
    try:
        result = fn(data, **spec.params)
    except Interrupted:     # SIGTERM or SIGINT while the function ran: not the function's failure
        raise
    except Exception as e:
        raise StageError(f"{where}: {spec.function} raised {type(e).__name__}: {e}{on}",
                         traceback=user_traceback(e, fn, ctx.base_dir), **context) from e
    if spec.api == "pandas":
        import pandas as pd

        if not isinstance(result, pd.DataFrame):
            raise StageError(f"{where}: {spec.function} returned {type(result).__name__}, "
                             f"expected a pandas DataFrame (api: pandas){on}", **context)
        try:
            out = pa.Table.from_pandas(result, preserve_index=False, nthreads=1)
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise StageError(f"{where}: the DataFrame returned by {spec.function} cannot be converted "
                             f"to Arrow: {e}{on}", **context) from e
        return _restore_types(out, table.schema)
    if isinstance(result, pa.RecordBatch):
        result = pa.Table.from_batches([result])
    if not isinstance(result, pa.Table):
        raise StageError(f"{where}: {spec.function} returned {type(result).__name__}, "
                         f"expected a pyarrow Table (api: arrow){on}", **context)
    return _decode_dictionaries(result)
