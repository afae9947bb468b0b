"""The stage registry, each built-in stage, the python stage, apply_stages and output_schema."""

from __future__ import annotations

import datetime as dt
import pickle
import re
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.errors import ExprError, StageError
from pipeline.stages import (
    STAGES,
    StageContext,
    StageOutput,
    apply_stages,
    builtin,
    check_python_spec,
    output_schema,
    register,
    validate_spec,
)
from pipeline.stages.registry import REJECTED_POSITIONS_SCHEMA


@pytest.fixture
def ctx(tmp_path) -> StageContext:
    return StageContext(base_dir=tmp_path, chunk="chunk 1 of test.csv (bytes 0-100)")


@pytest.fixture
def sales() -> pa.Table:
    return pa.table({
        "id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        "status": ["ok", "ok", "void", "ok", None, "ok"],
        "qty": pa.array([2, 0, 5, None, 1, 3], pa.int64()),
        "price": [10.0, 5.0, 1.0, 2.0, None, 4.0],
        "country": ["DE", "FR", "DE", "US", "DE", "XX"],
    })


def one(table, name, spec, ctx) -> StageOutput:
    out = STAGES[name].fn(table, validate_spec(name, spec), ctx)
    return out if isinstance(out, StageOutput) else StageOutput(out)


def balanced(table: pa.Table, result) -> bool:
    rows_out = result.table.num_rows
    return table.num_rows == rows_out + result.rows_filtered + result.rows_rejected - result.rows_added


# --------------------------------------------------------------------------------------------
# Registry and specs
# --------------------------------------------------------------------------------------------


def test_builtin_stages_are_registered():
    assert {"select", "drop", "rename", "cast", "filter", "derive", "fill_null", "drop_nulls",
            "validate", "python"} <= set(STAGES)
    for sdef in STAGES.values():
        assert sdef.doc and sdef.example.startswith(sdef.name + ":")


def test_adding_a_stage_is_one_function(ctx):
    @register("test_double")
    def double(table: pa.Table, spec: list[str], ctx: StageContext) -> pa.Table:
        """Double columns."""
        for name in spec:
            table = table.set_column(table.column_names.index(name), name, pc.multiply(table[name], 2))
        return table

    try:
        assert validate_spec("test_double", ["a"]) == ["a"]
        result = apply_stages(pa.table({"a": [1, 2]}), [("test_double", ["a"])], ctx)
        assert result.table.column("a").to_pylist() == [2, 4]
    finally:
        STAGES.pop("test_double")


def test_validate_spec_errors_are_plain_words():
    with pytest.raises(KeyError, match="did you mean 'filter'"):
        validate_spec("filtre", "x > 1")
    cases = [
        ("select", "a", "valid list"),
        ("select", [], "at least 1"),
        ("select", ["a", "a"], "listed twice"),
        ("cast", {"a": "int65"}, "unknown type 'int65'"),
        ("validate", {"rnage": {}}, "unknown key 'rnage'"),
        ("validate", {}, "at least one rule"),
        ("validate", {"range": {"a": {}}}, "range.a: a range needs min, max or both"),
        ("validate", {"regex": {"a": "("}}, "regex.a: invalid regular expression"),
        ("python", {"function": "nocolon"}, "module:function"),
        ("python", {"function": "m:f", "api": "polars"}, "api"),
        ("drop_nulls", 3, "3 is not an accepted value"),
        ("fill_null", {"a": [1]}, "a: [1] is not an accepted value"),
        ("cast", {"date": "int65"}, "date: unknown type"),
        ("filter", 3, "valid string"),
        ("derive", {"a": [1]}, "a: input should be a valid string"),
    ]
    for name, value, hint in cases:
        with pytest.raises(ValueError, match=re.escape(hint)) as info:
            validate_spec(name, value)
        message = str(info.value)
        assert "pydantic" not in message and "errors.pydantic.dev" not in message
        assert "for example" in message


def test_validate_spec_returns_typed_values():
    assert validate_spec("derive", {"one": 1, "flag": True, "f": 1.5}) == {"one": "1", "flag": "true", "f": "1.5"}
    assert validate_spec("drop_nulls", None) is None
    assert validate_spec("drop_nulls", "all") == "all"
    spec = validate_spec("python", {"function": "m:f"})
    assert spec.api == "pandas" and spec.params == {}
    rules = validate_spec("validate", {"range": {"d": {"min": dt.date(2024, 1, 1)}}})
    assert rules.range["d"].min == dt.date(2024, 1, 1)


# --------------------------------------------------------------------------------------------
# Column stages
# --------------------------------------------------------------------------------------------


def test_select_drop_rename(sales, ctx):
    assert one(sales, "select", ["price", "id"], ctx).table.column_names == ["price", "id"]
    assert one(sales, "drop", ["status", "qty"], ctx).table.column_names == ["id", "price", "country"]
    renamed = one(sales, "rename", {"qty": "quantity", "id": "key"}, ctx).table
    assert renamed.column_names == ["key", "status", "quantity", "price", "country"]
    with pytest.raises(ExprError, match="did you mean 'price'"):
        one(sales, "select", ["prcie"], ctx)
    with pytest.raises(ExprError, match="did you mean 'status'"):
        one(sales, "drop", ["stauts"], ctx)
    with pytest.raises(ExprError, match="unknown column 'qtty'") as info:
        one(sales, "rename", {"qtty": "q"}, ctx)
    assert info.value.context["key"] == "qtty"
    with pytest.raises(ExprError, match="two columns named 'price'"):
        one(sales, "rename", {"qty": "price"}, ctx)
    # swapping two names is fine
    swapped = one(sales, "rename", {"qty": "price", "price": "qty"}, ctx).table
    assert swapped.column_names == ["id", "status", "price", "qty", "country"]


def test_derive_in_order_with_broadcast_and_replace(sales, ctx):
    out = one(sales, "derive", {"total": "price * qty", "big": "total > 10", "one": 1,
                                "qty": "fill_null(qty, 0)"}, ctx).table
    assert out.column("total").to_pylist() == [20.0, 0.0, 5.0, None, None, 12.0]
    assert out.column("big").to_pylist() == [True, False, False, None, None, True]
    assert out.column("one").to_pylist() == [1] * 6
    assert out.column("qty").to_pylist() == [2, 0, 5, 0, 1, 3]
    assert out.column_names == ["id", "status", "qty", "price", "country", "total", "big", "one"]


def test_filter_null_counts_as_false(sales, ctx):
    out = one(sales, "filter", "status == 'ok' and qty > 0", ctx)
    assert out.table.column("id").to_pylist() == [1, 6]
    assert out.kept.to_pylist() == [True, False, False, False, False, True]
    everything = one(sales, "filter", "true", ctx)
    assert everything.table.num_rows == 6
    nothing = one(sales, "filter", "null", ctx)
    assert nothing.table.num_rows == 0
    with pytest.raises(ExprError, match="must give true/false"):
        one(sales, "filter", "qty + 1", ctx)


def test_fill_null(sales, ctx):
    out = one(sales, "fill_null", {"qty": 0, "price": 1, "status": "unknown"}, ctx).table
    assert out.column("qty").to_pylist() == [2, 0, 5, 0, 1, 3]
    assert out.column("price").type == pa.float64() and out.column("price").to_pylist()[4] == 1.0
    assert out.column("status").to_pylist()[4] == "unknown"
    with pytest.raises(ExprError, match="the fill value 'abc' does not fit"):
        one(sales, "fill_null", {"qty": "abc"}, ctx)
    with pytest.raises(ExprError, match=re.escape("the fill value 1.5 does not fit")):
        one(sales, "fill_null", {"qty": 1.5}, ctx)
    dates = pa.table({"d": pa.array([None, dt.date(2024, 1, 2)], pa.date32())})
    assert one(dates, "fill_null", {"d": "2024-01-01"}, ctx).table.column("d").to_pylist() == [
        dt.date(2024, 1, 1), dt.date(2024, 1, 2)]


def test_drop_nulls(sales, ctx):
    out = one(sales, "drop_nulls", ["qty"], ctx)
    assert out.table.column("id").to_pylist() == [1, 2, 3, 5, 6]
    for spec in ("all", None):
        assert one(sales, "drop_nulls", spec, ctx).table.column("id").to_pylist() == [1, 2, 3, 6]
    with pytest.raises(ExprError, match="did you mean 'qty'"):
        one(sales, "drop_nulls", ["qtty"], ctx)


# --------------------------------------------------------------------------------------------
# cast
# --------------------------------------------------------------------------------------------


def test_cast_clean_column_maps_rows_one_to_one(ctx):
    table = pa.table({"n": ["1", "2", None], "t": ["2024-01-01 10:00:00", None, "2024-01-02 00:00:00"]})
    out = one(table, "cast", {"n": "int32", "t": "timestamp[s]"}, ctx)
    assert out.kept is None and out.rejected is None
    assert out.table.schema.field("n").type == pa.int32()
    assert out.table.column("t").to_pylist()[0] == dt.datetime(2024, 1, 1, 10)


def test_cast_rejects_the_failing_rows_found_by_bisection(ctx, monkeypatch):
    values = [str(i) for i in range(1000)]
    bad_at = {3: "abc", 500: "1.5", 999: "x"}
    for i, v in bad_at.items():
        values[i] = v
    chunks = pa.chunked_array([values[:400], values[400:]])
    table = pa.table({"n": chunks, "f": pa.array([float(i) for i in range(999)] + [0.5])})

    calls = []
    real = pc.cast

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(builtin.pc, "cast", counting)
    out = one(table, "cast", {"n": "int64", "f": "int64"}, ctx)
    monkeypatch.setattr(builtin.pc, "cast", real)
    assert out.rejected.column("row").to_pylist() == [3, 500, 999]
    reasons = out.rejected.column("reason").to_pylist()
    assert reasons[0] == "cast to int64 failed: 'abc' (column n)"
    assert reasons[1] == "cast to int64 failed: '1.5' (column n)"
    assert reasons[2] == "cast to int64 failed: 'x' (column n)"   # first failing rule wins over f
    assert out.table.num_rows == 997 and out.table.schema.field("n").type == pa.int64()
    assert out.kept.to_pylist().count(False) == 3
    # bisection: logarithmic, far fewer casts than one per row
    assert len(calls) < 120


def test_cast_repeated_bad_values_are_found_cheaply(ctx, monkeypatch):
    values = pa.array(["N/A" if i % 3 == 0 else str(i) for i in range(30_000)])
    calls = []
    real = pc.cast

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(builtin.pc, "cast", counting)
    out = one(pa.table({"n": values}), "cast", {"n": "int32"}, ctx)
    monkeypatch.setattr(builtin.pc, "cast", real)
    assert out.rejected.num_rows == 10_000
    assert out.rejected.column("row").to_pylist() == list(range(0, 30_000, 3))
    assert out.table.column("n").to_pylist()[:2] == [1, 2]
    assert len(calls) < 80


def test_cast_rejects_float_truncation_and_reports_once(ctx):
    table = pa.table({"x": [1.0, 2.5, None]})
    out = one(table, "cast", {"x": "int64"}, ctx)
    assert out.rejected.to_pylist() == [{"row": 1, "reason": "cast to int64 failed: 2.5 (column x)"}]
    assert out.table.column("x").to_pylist() == [1, None]


def test_cast_impossible_type_is_a_config_error(ctx):
    table = pa.table({"x": pa.array([1], pa.int64())})
    with pytest.raises(ExprError, match="cannot cast column 'x' from int64 to date32") as info:
        one(table, "cast", {"x": "date32"}, ctx)
    assert info.value.context["key"] == "x"
    with pytest.raises(ExprError, match="did you mean 'x'"):
        one(table, "cast", {"xx": "int32"}, ctx)


# --------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------


def test_validate_rules_and_first_reason(sales, ctx):
    spec = {
        "not_null": ["status"],
        "range": {"qty": {"min": 1, "max": 4}, "price": {"max": 9.5}},
        "allowed": {"country": ["DE", "FR", "US"]},
        "regex": {"status": "[a-z]+"},
        "expr": {"positive total": "price * qty > 0"},
    }
    out = one(sales, "validate", spec, ctx)
    rejected = {r["row"]: r["reason"] for r in out.rejected.to_pylist()}
    assert rejected == {
        0: "range: price = 10 is above the maximum 9.5",
        1: "range: qty = 0 is below the minimum 1",
        2: "range: qty = 5 is above the maximum 4",
        3: "expr: positive total is not true (price * qty > 0)",
        4: "not_null: status is null",
        5: "allowed: country = 'XX' is not one of ['DE', 'FR', 'US']",
    }
    assert out.table.num_rows == 0
    assert out.kept.to_pylist() == [False] * 6


def test_validate_nulls_pass_range_allowed_and_regex(ctx):
    table = pa.table({"n": pa.array([None, 5], pa.int64()), "s": [None, "abc"]})
    out = one(table, "validate", {"range": {"n": {"min": 0}}, "allowed": {"s": ["abc"]},
                                  "regex": {"s": "a.c"}}, ctx)
    assert out.rejected is None and out.table.num_rows == 2


def test_validate_regex_is_a_full_match(ctx):
    table = pa.table({"s": ["abc", "xabc", "abcx", "ab"]})
    out = one(table, "validate", {"regex": {"s": "ab|abc"}}, ctx)
    assert out.table.column("s").to_pylist() == ["abc", "ab"]
    assert out.rejected.column("row").to_pylist() == [1, 2]
    assert out.rejected.column("reason").to_pylist()[0] == "regex: s = 'xabc' does not match 'ab|abc'"


def test_validate_dates_and_errors(ctx):
    table = pa.table({"d": pa.array([dt.date(2023, 12, 31), dt.date(2024, 6, 1)], pa.date32()),
                      "n": [1, 2], "s": ["a", "b"]})
    out = one(table, "validate", {"range": {"d": {"min": "2024-01-01"}}}, ctx)
    assert out.rejected.column("row").to_pylist() == [0]
    out = one(table, "validate", {"range": {"d": {"max": dt.date(2024, 1, 1)}}}, ctx)
    assert out.rejected.column("row").to_pylist() == [1]
    with pytest.raises(ExprError, match="is not text") as info:
        one(table, "validate", {"range": {"s": {"min": 1}}}, ctx)
    assert info.value.context["key"] == "range.s"
    with pytest.raises(ExprError, match="did you mean 'n'") as info:
        one(table, "validate", {"allowed": {"nn": [1]}}, ctx)
    assert info.value.context["key"] == "allowed.nn"
    with pytest.raises(ExprError, match="do not fit column 'n'"):
        one(table, "validate", {"allowed": {"n": ["x"]}}, ctx)
    with pytest.raises(ExprError, match="must give true/false") as info:
        one(table, "validate", {"expr": {"r": "n + 1"}}, ctx)
    assert info.value.context["key"] == "expr.r"


# --------------------------------------------------------------------------------------------
# apply_stages: counts and row positions
# --------------------------------------------------------------------------------------------


def test_apply_stages_tracks_original_positions(ctx):
    table = pa.table({"id": list(range(10)), "v": ["1", "2", "x", "4", "5", "6", "y", "8", "9", "10"]})
    stages = [
        ("filter", "id % 2 == 0 or id == 3"),                  # keeps 0 2 3 4 6 8
        ("cast", {"v": "int64"}),                              # rejects id 2 ('x') and 6 ('y')
        ("derive", {"w": "v * 10"}),
        ("validate", {"range": {"w": {"max": 55}}}),           # rejects id 8 (w=90)
        ("drop_nulls", ["w"]),
    ]
    result = apply_stages(table, stages, ctx)
    assert result.table.column("id").to_pylist() == [0, 3, 4]
    assert result.rows_filtered == 4 and result.rows_rejected == 3 and result.rows_added == 0
    assert balanced(table, result)
    assert result.rejects.schema == REJECTED_POSITIONS_SCHEMA
    assert result.rejects.to_pylist() == [
        {"row": 2, "stage": "stages[1].cast", "reason": "cast to int64 failed: 'x' (column v)"},
        {"row": 6, "stage": "stages[1].cast", "reason": "cast to int64 failed: 'y' (column v)"},
        {"row": 8, "stage": "stages[3].validate", "reason": "range: w = 90 is above the maximum 55"},
    ]


def test_apply_stages_without_stages_and_on_empty_tables(ctx):
    table = pa.table({"a": [1, 2]})
    result = apply_stages(table, [], ctx)
    assert result.table is table and result.rejects.num_rows == 0
    empty = apply_stages(table.slice(0, 0), [("filter", "a > 1"), ("validate", {"not_null": ["a"]})], ctx)
    assert empty.table.num_rows == 0 and empty.rows_filtered == 0


def test_apply_stages_accepts_keys(ctx):
    table = pa.table({"a": [1, None]})
    result = apply_stages(table, [("validate", {"not_null": ["a"]})], ctx, keys=["stages[7].validate"])
    assert result.rejects.column("stage").to_pylist() == ["stages[7].validate"]


def test_runtime_errors_name_stage_and_chunk(ctx):
    table = pa.table({"a": pa.array([2**62], pa.int64())})
    with pytest.raises(StageError) as info:
        apply_stages(table, [("select", ["a"]), ("derive", {"b": "a * 4"})], ctx)
    message = str(info.value)
    assert "stages[1].derive.b" in message and "'a * 4'" in message and "overflow" in message
    assert "chunk 1 of test.csv" in message
    with pytest.raises(ExprError) as info:
        apply_stages(table, [("select", ["b"])], ctx)
    assert info.value.context["key"] == "stages[0].select" and "chunk 1 of test.csv" in str(info.value)


def test_stage_errors_survive_pickling(ctx):
    table = pa.table({"a": pa.array([2**62], pa.int64())})
    with pytest.raises(StageError) as info:
        apply_stages(table, [("derive", {"b": "a * 4"})], ctx)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.context["stage"] == "stages[0].derive.b"


# --------------------------------------------------------------------------------------------
# output_schema
# --------------------------------------------------------------------------------------------


def test_output_schema(sales, ctx):
    stages = [("filter", "qty > 0"), ("derive", {"total": "price * qty", "day": "'x'"}),
              ("cast", {"qty": "int32"}), ("rename", {"country": "cc"}),
              ("select", ["id", "total", "qty", "cc", "day"])]
    schema = output_schema(sales.schema, stages, ctx)
    assert schema == pa.schema([("id", pa.int64()), ("total", pa.float64()), ("qty", pa.int32()),
                                ("cc", pa.string()), ("day", pa.string())])


@pytest.mark.parametrize("stages,key,hint", [
    ([("select", ["prcie"])], "stages[0].select", "unknown column 'prcie' (did you mean 'price'?)"),
    ([("derive", {"ok": "1", "total": "prcie * qty"})], "stages[0].derive.total", "did you mean 'price'"),
    ([("derive", {"total": "price *"})], "stages[0].derive.total", "invalid syntax"),
    ([("derive", {"t": "lower(qty)"})], "stages[0].derive.t", "lower() needs text, got int64"),
    ([("filter", "qty + 1")], "stages[0].filter", "must give true/false"),
    ([("filter", "'abc' * 2")], "stages[0].filter", "operator '*' does not accept (string, int64)"),
    ([("drop", ["id"]), ("select", ["id"])], "stages[1].select", "unknown column 'id'"),
    ([("cast", {"qty": "date32"})], "stages[0].cast.qty", "cannot cast column 'qty'"),
    ([("fill_null", {"qty": "many"})], "stages[0].fill_null.qty", "does not fit"),
    ([("validate", {"range": {"status": {"min": 0}}})], "stages[0].validate.range.status", "not text"),
    ([("validate", {"expr": {"r": "qtty > 0"}})], "stages[0].validate.expr.r", "did you mean 'qty'"),
    ([("select", "id")], "stages[0].select", "valid list"),
    ([("nope", [])], "stages[0].nope", "unknown stage"),
])
def test_output_schema_errors_carry_the_key(sales, ctx, stages, key, hint):
    with pytest.raises(ExprError) as info:
        output_schema(sales.schema, stages, ctx)
    assert info.value.context["key"] == key
    assert hint in str(info.value)
    assert info.value.exit_code == 78


def test_output_schema_uses_given_keys(sales, ctx):
    with pytest.raises(ExprError) as info:
        output_schema(sales.schema, [("select", ["id"]), ("derive", {"total": "x"})], ctx,
                      keys=["stages[4].select", "stages[5].derive"])
    assert info.value.context["key"] == "stages[5].derive.total"


# --------------------------------------------------------------------------------------------
# python stage
# --------------------------------------------------------------------------------------------


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


TRANSFORMS = """
    import pyarrow as pa
    import pyarrow.compute as pc

    def enrich(df, salt="", factor=1):
        df = df.copy()
        df["tag"] = df["name"] + salt
        df["qty"] = df["qty"] * factor
        return df

    def only_big(table, limit):
        return table.filter(pc.greater(table["qty"], limit))

    def explode(df):
        import pandas as pd
        return pd.concat([df, df], ignore_index=True)

    def broken(df):
        raise KeyError("no such thing")

    def needs_rows(df):
        return df.assign(first=df["name"].iloc[0])

    def not_a_frame(df):
        return [1, 2]

    CONSTANT = 3
"""


@pytest.fixture
def job(tmp_path) -> StageContext:
    write(tmp_path / "transforms.py", TRANSFORMS)
    return StageContext(base_dir=tmp_path, chunk="chunk 2 of in.csv (bytes 10-20)")


@pytest.fixture
def people() -> pa.Table:
    return pa.table({"name": ["a", "b", None], "qty": pa.array([1, None, 3], pa.int64())})


def test_python_pandas_api_with_params_keeps_types(job, people):
    spec = {"function": "transforms:enrich", "params": {"salt": "!", "factor": 10}}
    result = apply_stages(people, [("python", spec)], job)
    assert result.table.column("tag").to_pylist() == ["a!", "b!", None]
    assert result.table.column("qty").to_pylist() == [10, None, 30]
    assert result.table.schema.field("qty").type == pa.int64()       # not float because of the null
    assert result.table.schema.field("name").type == pa.string()
    assert result.table.schema.metadata is None


def test_python_arrow_api_filters_rows(job, people):
    spec = {"function": "transforms:only_big", "api": "arrow", "params": {"limit": 2}}
    result = apply_stages(people, [("python", spec)], job)
    assert result.table.column("name").to_pylist() == [None]
    assert result.rows_filtered == 2 and balanced(people, result)


def test_python_stage_that_adds_rows_makes_positions_unknown(job, people):
    stages = [("python", {"function": "transforms:explode"}), ("validate", {"not_null": ["name"]})]
    result = apply_stages(people, stages, job)
    assert result.rows_added == 3 and result.rows_rejected == 2
    assert result.rejects.column("row").to_pylist() == [None, None]
    assert balanced(people, result)


def test_python_exception_names_stage_chunk_and_function(job, people):
    with pytest.raises(StageError) as info:
        apply_stages(people, [("select", ["name"]), ("python", {"function": "transforms:broken"})], job)
    message = str(info.value)
    assert "stages[1].python" in message
    assert "chunk 2 of in.csv (bytes 10-20)" in message
    assert "transforms:broken" in message
    assert "KeyError" in message and "no such thing" in message
    assert isinstance(info.value.__cause__, KeyError)


def test_python_wrong_return_type(job, people):
    with pytest.raises(StageError, match="returned list, expected a pandas DataFrame"):
        apply_stages(people, [("python", {"function": "transforms:not_a_frame"})], job)


def test_python_module_outside_base_dir_is_refused(tmp_path, people, monkeypatch):
    marker = tmp_path / "imported"
    write(tmp_path / "site" / "outside_mod.py", f"""
        open({str(marker)!r}, "w").close()
        def f(df):
            return df
    """)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    ctx = StageContext(base_dir=job_dir)
    for reference in ["outside_mod:f", "os:getcwd"]:
        with pytest.raises(ExprError, match=re.escape("run.python_modules")) as info:
            check_python_spec({"function": reference}, job_dir, ())
        assert "not found" in str(info.value)
        with pytest.raises(ExprError):
            apply_stages(people, [("python", {"function": reference})], ctx)
    assert not marker.exists() and "outside_mod" not in sys.modules
    # allowed by name: imported and used
    allowed = StageContext(base_dir=job_dir, allowed_modules=("outside_mod",))
    result = apply_stages(people, [("python", {"function": "outside_mod:f", "api": "arrow"})], allowed)
    assert result.table.equals(people) and marker.exists()
    sys.modules.pop("outside_mod", None)


def test_check_python_spec(job):
    check_python_spec({"function": "transforms:enrich"}, job.base_dir)
    with pytest.raises(ExprError, match="no function 'enrch' \\(did you mean 'enrich'\\?\\)"):
        check_python_spec({"function": "transforms:enrch"}, job.base_dir)
    with pytest.raises(ExprError, match="not a function"):
        check_python_spec({"function": "transforms:CONSTANT"}, job.base_dir)
    write(job.base_dir / "pkg" / "mod.py", "def f(df):\n    return df\n")
    check_python_spec({"function": "pkg.mod:f"}, job.base_dir)
    write(job.base_dir / "bad.py", "def f(:\n")
    with pytest.raises(ExprError, match=re.escape("importing bad.py failed: SyntaxError")):
        check_python_spec({"function": "bad:f"}, job.base_dir)


def test_python_stage_in_output_schema(job, people):
    schema = output_schema(people.schema, [("python", {"function": "transforms:enrich"}),
                                           ("select", ["tag", "qty"])], job)
    assert schema == pa.schema([("tag", pa.string()), ("qty", pa.int64())])
    # a function that fails on an empty table: the schema is unknown from there on
    assert output_schema(people.schema, [("python", {"function": "transforms:needs_rows"}),
                                         ("select", ["whatever"])], job) is None
    with pytest.raises(ExprError) as info:
        output_schema(people.schema, [("python", {"function": "transforms:missing"})], job)
    assert info.value.context["key"] == "stages[0].python"


def test_python_module_is_loaded_once_per_file(job, people):
    from pipeline.stages import load_function
    first = load_function("transforms:enrich", job.base_dir)
    assert load_function("transforms:enrich", job.base_dir) is first


def test_the_pandas_round_trip_starts_no_threads_of_its_own(job, monkeypatch):
    """Each worker process already has a core: pyarrow's threads for converting a large frame to and
    from pandas would only compete with the other workers (about twice the conversion's CPU)."""
    import concurrent.futures

    def refuse(*args, **kwargs):
        raise AssertionError("a thread pool was started")

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", refuse)
    n = 50_000    # pyarrow uses threads from 100 rows per column up
    big = pa.table({"name": pa.array([f"n{i}" for i in range(n)]), "qty": pa.array(range(n), pa.int64())})
    before = _thread_count()
    result = apply_stages(big, [("python", {"function": "transforms:enrich", "params": {"salt": "!"}})], job)
    assert result.table.num_rows == n
    assert _thread_count() == before


def _thread_count() -> int:
    import os
    return len(os.listdir("/proc/self/task"))
