"""pipeline.arrays builds the same arrays and scalars as pyarrow, and never imports pandas."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import arrays

INT64 = st.integers(-2**63, 2**63 - 1)
VALUES = st.one_of(
    st.lists(st.one_of(st.none(), st.booleans())),
    st.lists(st.one_of(st.none(), INT64)),
    st.lists(st.one_of(st.none(), INT64, st.floats(allow_nan=False))),
    st.lists(st.one_of(st.none(), st.text())),
    st.lists(st.one_of(st.none(), st.binary())),
    st.lists(st.none()),
)


def _same(got: pa.Array, want: pa.Array) -> None:
    got.validate(full=True)
    assert got.type == want.type
    assert got.to_pylist() == want.to_pylist()
    assert got.null_count == want.null_count


@settings(max_examples=200, deadline=None)
@given(VALUES)
def test_inferred_types_match_pyarrow(values):
    try:
        want = pa.array(values)
    except pa.ArrowInvalid:
        with pytest.raises(pa.ArrowInvalid):
            arrays.array(values)
        return
    _same(arrays.array(values), want)


@pytest.mark.parametrize("type_, values", [
    (pa.int32(), [1, None, -5]), (pa.int8(), [127, -128]), (pa.uint16(), [0, 65535, None]),
    (pa.float32(), [1.5, None, 2]), (pa.float64(), [1, 2, None]), (pa.bool_(), [True, None, False]),
    (pa.large_string(), ["a", None, "é"]), (pa.large_binary(), [b"a", None]), (pa.string(), []),
    (pa.int64(), []), (pa.null(), [None, None]),
    (pa.timestamp("s"), [None]), (pa.date32(), [None]),   # handed to pyarrow
])
def test_given_types_match_pyarrow(type_, values):
    _same(arrays.array(values, type_), pa.array(values, type_))
    if values:
        assert arrays.scalar(values[0], type_) == pa.scalar(values[0], type_)


@pytest.mark.parametrize("values", [np.array([1, 2, 3]), np.array([True, False]), np.array([1.5, -2.0]),
                                    np.arange(10, dtype=np.int32)[::2], np.array([], dtype=np.int64)])
def test_numpy_arrays_match_pyarrow(values):
    _same(arrays.array(values), pa.array(values))


@pytest.mark.parametrize("values, type_", [(["a", 1], None), ([1, 2**64], None), ([300], pa.int8()),
                                           ([True], pa.int64()), ([2**53 + 1, 0.5], None)])
def test_what_pyarrow_refuses_is_refused(values, type_):
    with pytest.raises((pa.ArrowException, TypeError, ValueError, OverflowError)):
        pa.array(values, type_)
    with pytest.raises((pa.ArrowException, TypeError, ValueError, OverflowError)):
        arrays.array(values, type_)


def test_pandas_is_not_imported():
    code = ("import sys, numpy as np, pyarrow as pa\n"
            "from pipeline import arrays\n"
            "arrays.array([1, None]); arrays.array(['x', None]); arrays.array([1.5]); arrays.array([True])\n"
            "arrays.scalar('x'); arrays.scalar(None, pa.int64()); arrays.array(np.arange(3))\n"
            "print('pandas' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
