"""What a run decides and checks before it writes: python-stage types from real rows, type changes
between chunks, the output path, and `validate` / `--dry-run` checking what `run` checks."""

from __future__ import annotations

import random
import textwrap

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, run_subprocess, write_job

TAG = textwrap.dedent("""
    def tag(df):
        df["tag"] = [f"{s}-{i}" for s, i in zip(df["species"], df["island"])]
        return df
""")


def penguins(path, rows=344, seed=1):
    """A file shaped like palmerpenguins: text, floats, integers and NA."""
    rnd = random.Random(seed)
    with open(path, "w") as fh:
        fh.write("id,species,island,bill_length_mm,body_mass_g,sex\n")
        for i in range(rows):
            fh.write(f"{i},{rnd.choice(['Adelie', 'Chinstrap', 'Gentoo'])},{rnd.choice(['Dream', 'Biscoe'])},"
                     f"{rnd.uniform(30, 60):.1f},{rnd.randint(2700, 6300)},{rnd.choice(['male', 'female', 'NA'])}\n")
    return path


def reference_tag(path) -> list[dict]:
    table = pacsv.read_csv(path)
    df = table.to_pandas()
    df["tag"] = [f"{s}-{i}" for s, i in zip(df["species"], df["island"])]
    return sorted(zip(df["id"], df["tag"]))


@pytest.mark.parametrize("chunk_bytes", [None, "2KiB"], ids=["one-chunk", "many-chunks"])
def test_python_stage_adding_a_string_column_runs(tmp_path, capsys, workers, chunk_bytes):
    """Issue 11 case 2: `df["tag"] = [f"..." ...]` failed with 'Failed to parse string as double'."""
    data = penguins(tmp_path / "penguins.csv")
    (tmp_path / "transforms.py").write_text(TAG)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"python": {"function": "transforms:tag"}}],
                    run={"workers": workers})
    if chunk_bytes:
        job["input"]["chunk_bytes"] = chunk_bytes
    cfg = write_job(tmp_path, job)
    code, out, _ = run_cli("validate", cfg, capsys=capsys)
    assert code == 0
    assert "tag: string" in out
    code, out, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    if chunk_bytes:
        assert manifest_of(tmp_path / "out")["chunks"] > 1
    table = read_output(tmp_path / "out")
    assert table.schema.field("tag").type == pa.string()
    assert sorted(zip(table.column("id").to_pylist(), table.column("tag").to_pylist())) == reference_tag(data)
    # a plain reader of the directory agrees
    assert pq.read_table(tmp_path / "out").num_rows == 344


def _typed_by_chunk(tmp_path, first, later):
    """A python stage whose column ``v`` is ``first`` in the first chunk and ``later`` after it."""
    (tmp_path / "varying.py").write_text(textwrap.dedent(f"""
        def make(df):
            if int(df["id"].iloc[0]) == 0:
                df["v"] = {first}
            else:
                df["v"] = {later}
            return df
    """))
    data = penguins(tmp_path / "penguins.csv", rows=3000)
    job = basic_job(str(data), out=str(tmp_path / "out"), stages=[{"python": {"function": "varying:make"}}])
    job["input"]["chunk_bytes"] = "16KiB"
    return write_job(tmp_path, job), data


def test_a_later_chunk_with_a_wider_type_is_cast(tmp_path, capsys):
    cfg, data = _typed_by_chunk(tmp_path, 'df["body_mass_g"].astype("float64") / 2', 'df["body_mass_g"]')
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    table = read_output(tmp_path / "out")
    assert table.schema.field("v").type == pa.float64()
    ref = pacsv.read_csv(data).to_pandas()
    got = dict(zip(table.column("id").to_pylist(), table.column("v").to_pylist()))
    first_chunk = [i for i in got if got[i] != float(ref["body_mass_g"][i])]
    assert first_chunk and all(got[i] == ref["body_mass_g"][i] / 2 for i in first_chunk)


def test_an_open_column_widens_to_a_later_chunks_type(tmp_path, capsys, workers):
    """int64 in the first chunk, float64 later (pandas turns an int column with a NaN into floats)."""
    cfg, data = _typed_by_chunk(tmp_path, 'df["body_mass_g"]', 'df["body_mass_g"] / 2')
    code, _, err = run_cli("run", cfg, "--workers", workers, capsys=capsys)
    assert code == 0, err
    table = read_output(tmp_path / "out")
    assert table.schema.field("v").type == pa.float64()
    ref = pacsv.read_csv(data).to_pandas().set_index("id")["body_mass_g"]
    got = dict(zip(table.column("id").to_pylist(), table.column("v").to_pylist()))
    assert all(v in (ref[i], ref[i] / 2) for i, v in got.items()) and len(got) == 3000


CATEGORIES = textwrap.dedent("""
    import pyarrow as pa
    import pyarrow.compute as pc

    def categorize(df):
        # the first chunk has 3 categories (int8 codes), later ones hundreds (int16 codes)
        first = int(df["id"].iloc[0]) == 0
        df["kind"] = (df["species"] if first else df["species"] + "-" + df["id"].astype(str)).astype("category")
        return df

    def encode(table):
        return table.set_column(table.schema.get_field_index("island"), "island",
                                pc.dictionary_encode(table.column("island")))
""")


def test_categorical_and_dictionary_columns_of_python_stages_are_written_as_their_values(tmp_path, capsys, workers):
    """pandas Categoricals (and Arrow dictionary arrays) differ from chunk to chunk in their
    categories and code types; the output column has one type, the values'."""
    (tmp_path / "cats.py").write_text(CATEGORIES)
    data = penguins(tmp_path / "penguins.csv", rows=3000)
    job = basic_job(str(data), out=str(tmp_path / "out"), run={"workers": workers},
                    stages=[{"python": {"function": "cats:categorize"}},
                            {"python": {"function": "cats:encode", "api": "arrow"}}])
    job["input"]["chunk_bytes"] = "16KiB"
    code, _, err = run_cli("run", write_job(tmp_path, job), capsys=capsys)
    assert code == 0, err
    assert manifest_of(tmp_path / "out")["chunks"] > 2
    table = read_output(tmp_path / "out").sort_by("id")
    assert table.schema.field("kind").type == pa.string() and table.schema.field("island").type == pa.string()
    # the reference: pandas on the whole file; the rows of the run's first chunk keep the bare species
    ref = pacsv.read_csv(data).to_pandas()
    first_rows = {i for i, k in zip(table.column("id").to_pylist(), table.column("kind").to_pylist()) if "-" not in k}
    assert 0 in first_rows and len(first_rows) < 3000
    want = [s if i in first_rows else f"{s}-{i}" for i, s in zip(ref["id"], ref["species"])]
    assert table.column("kind").to_pylist() == want
    assert table.column("island").to_pylist() == list(ref["island"])


@pytest.mark.parametrize("first, later, cast", [
    ('df["body_mass_g"]', 'df["species"]', "- cast: {v: int64}"),
    # a list column: no `cast` stage names its type, so none is suggested
    ('[[1]] * len(df)', '[["a"]] * len(df)', None),
])
def test_a_later_chunk_with_another_type_names_the_fix_a_stage_can_make(tmp_path, capsys, first, later, cast):
    cfg, data = _typed_by_chunk(tmp_path, first, later)
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 65, err
    assert str(data) in err and "column 'v' is" in err
    if cast:
        assert cast in err
    else:
        assert "- cast:" not in err and "make the stage that makes it give one type (list<item: int64> is not a " \
            "type a `cast` stage takes)" in err, err
    assert not (tmp_path / "out").exists()


def test_a_later_chunk_with_another_type_is_exit_65_naming_file_column_types(tmp_path, capsys):
    cfg, data = _typed_by_chunk(tmp_path, 'df["body_mass_g"]', 'df["species"]')
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 65, err
    assert str(data) in err and "'v'" in err
    assert "string" in err and "int64" in err and "cast" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_validate_says_when_a_column_type_is_not_yet_known(tmp_path, capsys):
    """A python column null in every sampled row takes its type from the first chunk with a value."""
    (tmp_path / "late.py").write_text(textwrap.dedent("""
        def late(df):
            df["note"] = [None if i < 2000 else f"n{i}" for i in df["id"]]
            return df
    """))
    data = penguins(tmp_path / "penguins.csv", rows=2500)
    cfg = write_job(tmp_path, basic_job(str(data), out=str(tmp_path / "out"),
                                        stages=[{"python": {"function": "late:late"}}]))
    code, out, _ = run_cli("validate", cfg, capsys=capsys)
    assert code == 0
    assert "note: not yet known" in out
    code, _, err = run_cli("run", cfg, capsys=capsys)
    assert code == 0, err
    table = read_output(tmp_path / "out")
    assert table.schema.field("note").type == pa.string()
    assert table.column("note").null_count == 2000


# ------------------------------------------------------------------------------------ the output path


@pytest.mark.parametrize("command", ["run", "validate", "dry-run"])
def test_output_path_under_a_file_is_exit_74(tmp_path, capsys, command):
    """Issue 11 case 10: a FileExistsError traceback with exit 1."""
    data = penguins(tmp_path / "in.csv", rows=10)
    (tmp_path / "afile").write_text("x")
    cfg = write_job(tmp_path, basic_job(str(data), out=str(tmp_path / "afile" / "out")))
    args = ["run", cfg, "--dry-run"] if command == "dry-run" else [command, cfg]
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 74, err
    assert "afile" in err and "not a directory" in err
    assert "Traceback" not in err


def test_unwritable_output_parent_is_exit_74(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    data = penguins(tmp_path / "in.csv", rows=10)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cfg = write_job(tmp_path, basic_job(str(data), out=str(locked / "out")))
        code, _, err = run_cli("run", cfg, capsys=capsys)
        assert code == 74, err
        assert "permission" in err
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("command", ["validate", "dry-run"])
def test_validate_and_dry_run_refuse_mode_error_on_existing_output(tmp_path, capsys, command):
    """Issue 11 case 12: validate passed a job that run then refused."""
    data = penguins(tmp_path / "in.csv", rows=10)
    job = basic_job(str(data), out=str(tmp_path / "out"))
    cfg = write_job(tmp_path, job)
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    job["output"]["mode"] = "error"
    cfg = write_job(tmp_path, job)
    run_code = run_cli("run", cfg, capsys=capsys)[0]
    args = ["run", cfg, "--dry-run"] if command == "dry-run" else [command, cfg]
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == run_code == 74
    assert "already holds data" in err


@pytest.mark.parametrize("command", ["validate", "dry-run"])
def test_validate_and_dry_run_try_a_cast_on_the_first_rows(tmp_path, capsys, command):
    data = tmp_path / "in.csv"
    data.write_text("id,when\n1,2024-01-02\n2,yesterday\n")
    cfg = write_job(tmp_path, basic_job(str(data), out=str(tmp_path / "out"),
                                        stages=[{"cast": {"id": "int64", "when": "date32"}}]))
    run_code, _, run_err = run_cli("run", cfg, capsys=capsys)
    assert run_code == 65, run_err
    args = ["run", cfg, "--dry-run"] if command == "dry-run" else [command, cfg]
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 65, err
    assert "stages[0].cast" in err and "1 of the first 2" in err


def test_validate_reads_every_column_type_with_a_reference(tmp_path, capsys):
    data = penguins(tmp_path / "in.csv", rows=50)
    cfg = write_job(tmp_path, basic_job(str(data), out=str(tmp_path / "out"),
                                        stages=[{"derive": {"heavy": "body_mass_g > 4000"}}]))
    code, out, _ = run_cli("validate", cfg, capsys=capsys)
    assert code == 0
    assert run_cli("run", cfg, capsys=capsys)[0] == 0
    written = ds.dataset(str(tmp_path / "out"), format="parquet").schema
    for f in written:
        assert f"{f.name}: " in out
    assert "heavy: bool" in out


def test_ctrl_c_while_the_stages_are_checked_is_130_not_a_config_error(tmp_path):
    (tmp_path / "stop.py").write_text(textwrap.dedent("""
        import os, signal

        def stop(df):
            if len(df) == 0:          # the check on an empty table, before any chunk
                os.kill(os.getpid(), signal.SIGINT)
            return df
    """))
    data = penguins(tmp_path / "in.csv", rows=10)
    cfg = write_job(tmp_path, basic_job(str(data), out=str(tmp_path / "out"),
                                        stages=[{"python": {"function": "stop:stop"}}]))
    done = run_subprocess("run", cfg, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert "interrupted by SIGINT" in done.stderr and "Traceback" not in done.stderr
