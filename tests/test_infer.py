import pyarrow as pa
import pytest

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


def test_unify():
    assert unify(pa.int64(), pa.float64()) == pa.float64()
    assert unify(pa.date32(), pa.timestamp("s")) == pa.timestamp("s")
    assert unify(pa.timestamp("s"), pa.timestamp("us")) == pa.timestamp("us")
    assert unify(pa.int64(), pa.string()) == pa.string()
    assert unify(pa.null(), pa.bool_()) == pa.bool_()
    assert unify(pa.int64(), pa.decimal128(38, 0)) == pa.decimal128(38, 0)
    assert unify(pa.decimal128(38, 0), pa.float64()) == pa.float64()
