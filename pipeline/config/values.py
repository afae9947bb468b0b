"""Value types of the job file: byte sizes, durations, strict integers, worker counts, paths.

Each is a pydantic ``Annotated`` type whose validator raises ValueError with the accepted forms.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ValidationInfo, WithJsonSchema

from pipeline.config.document import resolve
from pipeline.config.issues import show
from pipeline.dtypes import parse_type

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
        raise ValueError(f"{_BYTES_EXPECTED}, got {show(value)}")
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
        raise ValueError(f"{_DURATION_EXPECTED}, got {show(value)}")
    return seconds


def _integer(minimum: int):
    """A strict integer (no booleans, no fractions); numeric strings come from ${VAR}."""

    def check(value: Any) -> int:
        n: int | None = None
        if isinstance(value, bool):
            n = None
        elif isinstance(value, int):
            n = value
        elif (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value)
        ):
            n = int(value)
        if n is None or n < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"expected {what}, got {show(value)}")
        return n

    return BeforeValidator(check)


def auto_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_workers(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_workers()
    if not isinstance(value, bool):
        if isinstance(value, int) and value >= 1:
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value) and int(value) >= 1:
            return int(value)
    raise ValueError(f'expected a positive integer or "auto", got {show(value)}')


def str_tuple(value: Any) -> Any:
    """A single string stands for a one-element list."""
    return (value,) if isinstance(value, str) else value


def _check_type_name(value: str) -> str:
    parse_type(value)  # ValueError names the accepted forms
    return value


def resolve_path(path: str, info: ValidationInfo) -> str:
    """Relative paths are relative to the config file's folder; URLs are kept as they are."""
    return resolve(path, (info.context or {}).get("base_dir"))


# JSON schemas of the value types, as `pipeline schema` shows them (the validators accept these)
BYTE_SIZE_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "integer", "minimum": 1},
    {"type": "string", "pattern": r"^\s*(\d+(\.\d*)?|\.\d+)\s*([bB]|[kKmMgGtT]([bB]|[iI][bB])?)?\s*$"},
], "description": "a size: bytes, or a number with a unit such as 512kB, 64MiB, 1.5GiB"}
DURATION_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "number", "exclusiveMinimum": 0},
    {"type": "string", "pattern": r"^\s*(\d+(\.\d*)?|\.\d+)\s*([mM][sS]|[sS]|[mM]([iI][nN])?|[hH]|[dD])?\s*$"},
], "description": "a duration: seconds, or a number with a unit such as 500ms, 30s, 5m, 1h, 1d"}
STR_LIST_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}},
], "description": "a list of strings (a single string stands for a list of one)"}
WORKERS_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}
PARAMS_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}

ByteSize = Annotated[int, BeforeValidator(parse_byte_size), WithJsonSchema(BYTE_SIZE_SCHEMA)]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]
PositiveInt = Annotated[int, _integer(1), WithJsonSchema({"type": "integer", "minimum": 1})]
NonNegativeInt = Annotated[int, _integer(0), WithJsonSchema({"type": "integer", "minimum": 0})]
TypeName = Annotated[str, AfterValidator(_check_type_name)]
StrTuple = Annotated[tuple[str, ...], BeforeValidator(str_tuple), WithJsonSchema(STR_LIST_SCHEMA)]
# an empty section (`run:` with every line commented out) means the defaults
EmptyIsDefault = BeforeValidator(lambda value: {} if value is None else value)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``plural(1, "file")`` -> ``"1 file"``; ``plural(1200, "row")`` -> ``"1,200 rows"``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def format_bytes(n: int | float) -> str:
    """A size in the unit that fits: ``100`` -> ``"100 B"``, ``582144`` -> ``"568.5 KiB"``,
    ``67108864`` -> ``"64.0 MiB"``."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")

