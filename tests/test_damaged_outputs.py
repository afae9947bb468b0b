"""An output or state folder changed outside the program: refused with the file and the fix, never
an unexpected failure, and the output is left as it was."""

from __future__ import annotations

import json
import os

import pyarrow.csv as pacsv
import pytest

from tests.helpers import basic_job, read_output, run_cli, write_job


def _first_run(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id,c\n1,a\n2,b\n")
    path = write_job(tmp_path, basic_job("in.csv"))
    code, _out, err = run_cli("run", path, "--no-progress", capsys=capsys)
    assert code == 0, err
    return path


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("text", ["{}", "[1, 2]", '{"format": "pipeline-manifest/1", "files": "x", "counts": {}, '
                                                    '"schema": []}', '"a string"'])
def test_a_manifest_of_another_shape_is_named_not_a_crash(tmp_path, capsys, text):
    path = _first_run(tmp_path, capsys)
    (tmp_path / "out" / "_manifest.json").write_text(text)
    before = _files(tmp_path / "out")
    for command in (["inspect", str(tmp_path / "out")], ["run", path, "--no-progress"],
                    ["run", path, "--no-progress", "--set", "output.mode=append"]):
        code, _out, err = run_cli(*command, capsys=capsys)
        assert code == 74, (command, err)
        assert "_manifest.json: not a manifest of this program" in err
    assert _files(tmp_path / "out") == before


@pytest.mark.parametrize("damage", ["remove", "truncate"])
def test_an_append_to_an_output_whose_part_file_changed_is_refused_until_a_full_refresh(tmp_path, capsys, damage):
    path = _first_run(tmp_path, capsys)
    part = next((tmp_path / "out").glob("part-*.parquet"))
    if damage == "remove":
        part.unlink()
    else:
        part.write_bytes(part.read_bytes()[:-10])
    before = _files(tmp_path / "out")
    code, _out, err = run_cli("run", path, "--no-progress", "--set", "output.mode=append", capsys=capsys)
    assert code == 74, err
    assert f"the part file {part.name} that its manifest lists" in err and "--full-refresh" in err
    assert _files(tmp_path / "out") == before
    code, _out, err = run_cli("run", path, "--no-progress", "--set", "output.mode=append", "--full-refresh",
                              capsys=capsys)
    assert code == 0, err
    assert read_output(tmp_path / "out").to_pylist() == pacsv.read_csv(tmp_path / "in.csv").to_pylist()


def test_a_file_where_the_state_folder_goes_is_named(tmp_path, capsys):
    path = _first_run(tmp_path, capsys)
    state = tmp_path / ".pipeline-state"
    assert state.is_dir()
    for name in os.listdir(state):
        os.remove(state / name)
    state.rmdir()
    state.write_text("not a folder")
    code, _out, err = run_cli("run", path, "--no-progress", capsys=capsys)
    assert code == 74, err
    assert f"cannot create the state store folder {state}" in err and "run.state_dir" in err
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["counts"]["rows_written"] == 2
