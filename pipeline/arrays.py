"""Arrow arrays and scalars from Python values, without pyarrow importing pandas.

``pa.array`` and ``pa.scalar`` on Python values (and the compute functions given Python
literals) first ask whether the value is a pandas object, and that question imports pandas: about
a quarter of a second, paid by every worker of a job that never uses pandas. The functions here
build the common cases (null, bool, integers, floats, text, bytes; Python lists or numpy arrays)
from buffers, which never asks; anything else goes to pyarrow as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

_NUMERIC: dict[pa.DataType, Any] = {
    pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
    pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
    pa.float32(): np.float32, pa.float64(): np.float64,
}
_TEXT = {pa.string(): np.int32, pa.binary(): np.int32, pa.large_string(): np.int64, pa.large_binary(): np.int64}


def _inferred(values: Sequence) -> pa.DataType | None:
    """The type pyarrow would infer for these Python values, for the kinds handled here."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.null()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float} and float in kinds:
        return pa.float64()
    if kinds == {str}:
        return pa.string()
    if kinds == {bytes}:
        return pa.binary()
    return None


def _validity(mask: np.ndarray | None) -> pa.Buffer | None:
    """A validity bitmap from a boolean "is null" mask (None when nothing is null)."""
    if mask is None or not mask.any():
        return None
    return pa.py_buffer(np.packbits(~mask, bitorder="little"))


def _from_numpy(values: np.ndarray, type: pa.DataType, mask: np.ndarray | None) -> pa.Array:
    n = len(values)
    if pa.types.is_boolean(type):
        bits = pa.py_buffer(np.packbits(values.astype(bool, copy=False), bitorder="little"))
        return pa.Array.from_buffers(type, n, [_validity(mask), bits])
    data = np.ascontiguousarray(values, dtype=_NUMERIC[type])
    return pa.Array.from_buffers(type, n, [_validity(mask), pa.py_buffer(data)])


def _text(values: Sequence, type: pa.DataType) -> pa.Array:
    encoded = [b"" if v is None else (v.encode() if isinstance(v, str) else bytes(v)) for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=_TEXT[type])
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    return pa.Array.from_buffers(type, len(encoded),
                                 [_validity(mask), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def array(values: Any, type: pa.DataType | None = None) -> pa.Array:
    """``pa.array(values, type)`` for a list of Python values or a 1-d numpy array."""
    if isinstance(values, np.ndarray):
        if values.ndim == 1 and type is None:
            try:
                type = pa.from_numpy_dtype(values.dtype)
            except (pa.ArrowException, NotImplementedError, TypeError):
                type = None
        if values.ndim == 1 and type is not None and (type in _NUMERIC or pa.types.is_boolean(type)) \
                and values.dtype.kind in "biuf":
            return _from_numpy(values, type, None)
        return pa.array(values, type)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if type is None or values.type == type else values.cast(type)
    values = list(values)
    target = _inferred(values) if type is None else type
    if target is not None:
        if pa.types.is_null(target):
            if all(v is None for v in values):
                return pa.nulls(len(values), target)
        elif target in _TEXT:
            if all(v is None or isinstance(v, (str, bytes)) for v in values):
                return _text(values, target)
        elif target in _NUMERIC or pa.types.is_boolean(target):
            kinds = (bool,) if pa.types.is_boolean(target) else (
                (int, float) if pa.types.is_floating(target) else (int,))
            ok = all(v is None or (isinstance(v, kinds) and (pa.types.is_boolean(target) or not isinstance(v, bool)))
                     for v in values)
            if ok and _fits(values, target):
                mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
                filled = [0 if v is None else v for v in values]
                return _from_numpy(np.array(filled, dtype=_NUMERIC.get(target, bool)), target, mask)
    return pa.array(values, type)


def _fits(values: Sequence, type: pa.DataType) -> bool:
    """Integers within the range of an integer type, or exactly representable as a float (pyarrow
    raises for the others)."""
    if pa.types.is_floating(type):
        limit = 2**24 if type == pa.float32() else 2**53
        return all(not isinstance(v, int) or -limit <= v <= limit for v in values)
    if not pa.types.is_integer(type):
        return True
    info = np.iinfo(_NUMERIC[type])
    return all(v is None or info.min <= v <= info.max for v in values)


def scalar(value: Any, type: pa.DataType | None = None) -> pa.Scalar:
    """``pa.scalar(value, type)`` for a Python value."""
    if isinstance(value, pa.Scalar):
        return value if type is None or value.type == type else value.cast(type)
    return array([value], type)[0]


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of an integer, float or boolean array without nulls as a numpy array.

    (``Array.to_numpy`` imports pandas, even for a zero-copy view.)
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.nulls(0, values.type)
    if values.null_count:
        raise ValueError("to_numpy: the array has nulls")
    if pa.types.is_boolean(values.type):
        bits = np.frombuffer(values.buffers()[1], dtype=np.uint8) if len(values) else np.zeros(0, np.uint8)
        return np.unpackbits(bits, bitorder="little", count=values.offset + len(values))[values.offset:].astype(bool)
    dtype = np.dtype(_NUMERIC[values.type])
    if not len(values):
        return np.zeros(0, dtype)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)
