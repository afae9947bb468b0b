"""The demo data generator: deterministic bytes, the promised traps, and bad rows exactly where listed."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from pipeline import demo
from tests.helpers import ROOT

ROWS = 600
SEED = 7

SALES = ("sales-2026-11-01.csv", "sales-2026-11-02.csv", "sales-2026-11-03.csv.gz")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = demo.generate(out, rows=ROWS, seed=SEED)
    return out / "raw", result


def _text(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _records(path: Path) -> list[tuple[int, list[str]]]:
    """(first physical line, fields) for every record after the header, as the csv module reads them."""
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    next(reader)
    out = []
    start = reader.line_num + 1
    for fields in reader:
        out.append((start, fields))
        start = reader.line_num + 1
    return out


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_ts(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


def _bad_reason(fields: list[str]) -> str | None:
    """Which BAD_ROWS kind a record is, or None for a good record."""
    if len(fields) > len(demo.COLUMNS):
        return "too_many_fields"
    if len(fields) < len(demo.COLUMNS):
        return "too_few_fields"
    row = dict(zip(demo.COLUMNS, fields))
    if not _is_int(row["qty"]):
        return "qty_not_int"
    if not _is_float(row["price"]):
        return "price_not_number"
    if not _is_ts(row["ts"]):
        return "ts_not_timestamp"
    assert _is_int(row["id"]) and _is_int(row["user_id"])
    assert row["discount"] in ("", "NA") or 0 <= float(row["discount"]) <= 0.5
    assert row["status"] in ("ok", "refunded", "pending")
    assert len(row["country"]) == 2
    return None


def _run_cli(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.demo", str(out), *args],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )


def test_cli_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    out_a = _run_cli(a, "--rows", str(ROWS), "--seed", str(SEED))
    _run_cli(b, "--rows", str(ROWS), "--seed", str(SEED))
    names = sorted(p.name for p in (a / "raw").iterdir())
    assert names == sorted(SALES + ("events.jsonl",))
    assert sorted(p.name for p in (b / "raw").iterdir()) == names
    for name in names:
        assert (a / "raw" / name).read_bytes() == (b / "raw" / name).read_bytes(), name
    for name in names:
        assert name in out_a.stdout
    # and the library call with the same arguments writes the same bytes again
    c = tmp_path / "c"
    demo.generate(c, rows=ROWS, seed=SEED)
    for name in names:
        assert (c / "raw" / name).read_bytes() == (a / "raw" / name).read_bytes(), name


def test_other_seed_gives_other_data(tmp_path):
    demo.generate(tmp_path / "a", rows=ROWS, seed=1)
    demo.generate(tmp_path / "b", rows=ROWS, seed=2)
    assert (tmp_path / "a/raw" / SALES[0]).read_bytes() != (tmp_path / "b/raw" / SALES[0]).read_bytes()


def test_cli_rejects_too_few_rows(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.demo", str(tmp_path), "--rows", "3"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "--rows" in proc.stderr


def test_record_counts(generated):
    raw, result = generated
    counts = {name: len(_records(raw / name)) for name in SALES}
    assert sum(counts.values()) == ROWS
    reported = {f.name: f for f in result.files}
    for name in SALES:
        assert reported[name].rows == counts[name]
    for info in result.files:
        assert info.bytes == (raw / info.name).stat().st_size


def test_bad_rows_are_where_listed_and_nothing_else_is_bad(generated):
    raw, result = generated
    listed = {(b.file, b.line): b.kind for b in result.bad_rows if b.file in SALES}
    assert len(listed) == 6
    assert sorted(listed.values()) == sorted(
        ["too_many_fields", "too_few_fields", "qty_not_int", "qty_not_int", "price_not_number", "ts_not_timestamp"]
    )
    assert {f for f, _ in listed} == set(SALES)  # spread over every CSV file
    found = {}
    for name in SALES:
        for line, fields in _records(raw / name):
            reason = _bad_reason(fields)
            if reason is not None:
                found[(name, line)] = reason
    assert found == listed


def test_bad_values_are_the_documented_ones(generated):
    raw, result = generated
    values = set()
    for bad in result.bad_rows:
        if bad.file not in SALES:
            continue
        fields = dict(_records(raw / bad.file))[bad.line]
        if bad.kind == "qty_not_int":
            values.add(fields[6])
        elif bad.kind == "price_not_number":
            values.add(fields[5])
        elif bad.kind == "ts_not_timestamp":
            values.add(fields[1])
    assert values == {"abc", "1.5", "n/a", "yesterday"}


def test_line_endings_and_traps(generated):
    raw, _ = generated
    first = (raw / SALES[0]).read_bytes()
    second = (raw / SALES[1]).read_bytes()
    third = gzip.decompress((raw / SALES[2]).read_bytes())
    assert not first.endswith(b"\n")
    assert second.endswith(b"\r\n") and third.endswith(b"\n")
    assert second.count(b"\r\n") >= ROWS // 3
    assert b"\r\n" not in third
    # the one \r\n inside quotes of an LF file
    assert first.count(b"\r\n") == 1 and b'"line one\r\nline two"' in first

    for name in SALES:
        text = _text(raw / name)
        assert text.startswith(",".join(demo.COLUMNS))
        notes = [fields[9] for _, fields in _records(raw / name) if len(fields) == len(demo.COLUMNS)]
        for note in ("red, large", "line one\nline two", 'he said "hi"', "Zürich", "東京", "🎉 birthday", "", "NA"):
            assert note in notes, (name, note)
        assert '"red, large"' in text and '"he said ""hi"""' in text
        countries = {fields[3] for _, fields in _records(raw / name)}
        assert "NO" in countries


def test_gzip_file_is_stable(generated):
    raw, _ = generated
    data = (raw / SALES[2]).read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert data[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    gzip.decompress(data).decode("utf-8")


def test_events_jsonl(generated):
    raw, result = generated
    bad = [b for b in result.bad_rows if b.file == "events.jsonl"]
    assert len(bad) == 1 and bad[0].kind == "invalid_json"
    lines = (raw / "events.jsonl").read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == next(f for f in result.files if f.name == "events.jsonl").rows
    kinds = set()
    for number, line in enumerate(lines, start=1):
        if number == bad[0].line:
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
            continue
        event = json.loads(line)
        assert all(not isinstance(v, (list, dict)) for v in event.values())
        datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S")
        kinds.add(event["kind"])
    assert kinds == {"view", "click", "buy"}


def test_default_bad_rows_constant(tmp_path):
    """BAD_ROWS documents the default data; regenerate it to check (well under a second)."""
    result = demo.generate(tmp_path)
    assert result.bad_rows == demo.BAD_ROWS
    assert [f.rows for f in result.files] == [20_000, 20_000, 20_000, 5_000]
