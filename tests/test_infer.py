import random
import re

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.input import infer
from pipeline.input.infer import infer_column, unify


@pytest.mark.parametrize("values,expected", [
    (["1", "2", None], pa.int64()),
    (["1", "2.5"], pa.float64()),
    (["true", "FALSE"], pa.bool_()),
    (["2026-11-01", "2026-11-02"], pa.date32()),
    (["2026-11-01 10:00:00", "2026-11-02"], pa.timestamp("s")),
    (["2026-11-01T10:00:00.25"], pa.timestamp("us")),
    (["2026-11-01T10:00:00Z", "2026-11-01 10:00:00+02:00"], pa.timestamp("us", tz="UTC")),
    (["1", "x"], pa.string()),
    ([None, None], pa.string()),
    (["+1"], pa.float64()),
    # integers are never floats: int64 up to its limits, then exact decimals, then text
    (["1", "9223372036854775807", "-9223372036854775808", " 12 "], pa.int64()),
    (["1", "9223372036854775808"], pa.decimal128(38, 0)),
    (["-9223372036854775809"], pa.decimal128(38, 0)),
    (["18446744073709551615"], pa.decimal128(38, 0)),
    (["9" * 38, "-" + "9" * 38], pa.decimal128(38, 0)),
    (["1" * 39], pa.string()),
    (["1" * 39, "1.5"], pa.string()),     # a float would round the integer
    # a number with a leading zero is a code: as a number it would lose its zeros
    (["007", "8"], pa.string()),
    (["00501", "12345"], pa.string()),
    (["-01", "2"], pa.string()),
    ([" 01", "2"], pa.string()),
    (["00.5", "1.5"], pa.string()),
    (["0", "10", "-0"], pa.int64()),
    (["0.5", "0e5", "10.25"], pa.float64()),
])
def test_infer_column(values, expected):
    assert infer_column(pa.array(values, pa.string())) == expected


def test_one_stray_value_in_a_hundred_does_not_make_text():
    assert infer_column(pa.array(["1"] * 99 + ["abc"])) == pa.int64()
    assert infer_column(pa.array(["1"] * 98 + ["abc", "def"])) == pa.string()
    assert infer_column(pa.array(["1"] * 20 + ["abc"])) == pa.string()


def test_one_leading_zero_makes_text_whatever_the_sample_size():
    # unlike a stray value, it would not be a bad row later: it would read as another number
    assert infer_column(pa.array(["1"] * 5000 + ["007"])) == pa.string()
    assert infer_column(pa.array(["1.5"] * 5000 + ["01.5"])) == pa.string()


def _fits(value: str, dtype: pa.DataType, pattern: str) -> bool:
    """One value against one candidate, with Python's ``re`` and ``int``."""
    if not re.search(pattern, value):
        return False
    if dtype == pa.int64():
        return -2**63 <= int(value) < 2**63
    if dtype == pa.float64():
        return not re.search(infer._LONGER_INT, value)
    return True


def _reference(values: list[str | None]) -> pa.DataType:
    """The inference rule value by value: the first candidate that all but the allowed misses fit."""
    present = [v for v in values if v is not None]
    n = len(present)
    if not n:
        return pa.string()
    allowed = max(int(n * infer.TOLERANCE), 1 if n >= 100 else 0)
    coded = any(re.search(infer._LEADING_ZERO, v) for v in present)
    for dtype, pattern in infer.CANDIDATES:
        if coded and dtype in infer.NUMBERS:
            continue
        if sum(not _fits(v, dtype, pattern) for v in present) <= allowed:
            return dtype
    return pa.string()


VALUE = st.sampled_from(["1", "-7", "12", "2.5", "1e3", "true", "False", "2026-11-01", "2026-11-01 10:00:00",
                         "2026-11-01T10:00:00.5", "2026-11-01T10:00:00Z", "x", "", " 3 ", "007", None,
                         "9223372036854775808", "1" * 40])


@settings(max_examples=300, deadline=None)
@given(common=VALUE, stray=st.lists(VALUE, max_size=4), n=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_inference_follows_its_rule_wherever_the_stray_values_are(common, stray, n, seed):
    """Counted (each distinct value once) and cut short (a candidate that misses too many among the
    first values is not tried on the rest), the result is the rule's, value by value."""
    values = [common] * n + stray
    random.Random(seed).shuffle(values)
    assert infer_column(pa.array(values, pa.string())) == _reference(values)


def test_stray_values_past_the_first_ones_are_counted():
    ints = ["1"] * 1000
    assert infer_column(pa.array(ints[:500] + ["x", "y"] + ints[500:])) == pa.string()
    assert infer_column(pa.array(["x"] + ints)) == pa.int64()
    assert infer_column(pa.array([str(i) for i in range(2000)] + ["x"] * 2 + ["1"] * 8000)) == pa.int64()
    assert infer_column(pa.array([str(i) for i in range(200)] + ["x"] * 2)) == pa.string()


def test_unify():
    assert unify(pa.int64(), pa.float64()) == pa.float64()
    assert unify(pa.date32(), pa.timestamp("s")) == pa.timestamp("s")
    assert unify(pa.timestamp("s"), pa.timestamp("us")) == pa.timestamp("us")
    assert unify(pa.int64(), pa.string()) == pa.string()
    assert unify(pa.null(), pa.bool_()) == pa.bool_()
    assert unify(pa.int64(), pa.decimal128(38, 0)) == pa.decimal128(38, 0)
    assert unify(pa.decimal128(38, 0), pa.float64()) == pa.float64()
