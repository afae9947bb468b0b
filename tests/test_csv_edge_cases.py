"""CSV edge cases through the real CLI, compared with Python's csv module on the same bytes."""

from __future__ import annotations

import csv
import io

import pytest

from tests.helpers import basic_job, manifest_of, read_output, run_cli, sort_rows, write_job

CASES = {
    "quoted_delimiters": b'id,name,note\n1,"a, b","x"\n2,c,"d,e,f"\n',
    "quoted_newlines": b'id,note\n1,"line one\nline two"\n2,"three\n\nlines"\n3,plain\n',
    "quoted_crlf": b'id,note\r\n1,"a\r\nb"\r\n2,c\r\n',
    "escaped_quotes": b'id,note\n1,"he said ""hi"""\n2,""""\n3,"a""b""c"\n',
    "crlf": b"id,name\r\n1,a\r\n2,b\r\n3,c\r\n",
    "bom": b"\xef\xbb\xbfid,name\n1,a\n2,b\n",
    "no_final_newline": b"id,name\n1,a\n2,b",
    "non_ascii": "id,city\n1,Zürich\n2,東京\n3,\"São Paulo, BR\"\n4,🙂\n".encode(),
    "header_only": b"id,name\n",
    "header_only_no_newline": b"id,name",
    "blank_lines": b"id,name\n1,a\n\n2,b\n\r\n3,c\n",
    # a lone CR ends a line, as pyarrow and Python's csv read it (issue 11, case 14)
    "lone_cr": b"a,b\r1,2\r3,4\r",
    "mixed_line_ends": b"id,name\r\n1,a\r2,b\n3,c\r\n4,\"x\ry\"\r",
    # a quote is special only at the start of a field (case 15)
    "quote_in_header_and_field": b'id,name"\n1,a\n2,b"\n3,c\n',
    "quote_mid_field": b'id,note\n1,a 5" disk\n2,"x\ny"\n3,c 7" disk\n4,"z"\n',
    "text_after_closing_quote": b'id,note\n1,"a"b\n2,c\n',
}


def reference(data: bytes) -> tuple[list[str], list[dict]]:
    text = data.decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    header, body = rows[0], rows[1:]
    return header, [dict(zip(header, r)) for r in body]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_bytes", [8, 1 << 20])
def test_csv_case_matches_csv_module(tmp_path, case, chunk_bytes, workers):
    data = CASES[case]
    (tmp_path / "in.csv").write_bytes(data)
    header, expected = reference(data)
    job = basic_job("in.csv", input={"format": "csv", "chunk_bytes": chunk_bytes,
                                     "csv": {"null_values": []},
                                     "schema": dict.fromkeys(header, "string")},
                    run={"workers": workers})
    code, _out, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    table = read_output(tmp_path / "out")
    assert table.column_names == header
    assert sort_rows(table.to_pylist()) == sort_rows(expected)
    counts = manifest_of(tmp_path / "out")["counts"]
    assert counts["rows_read"] == counts["rows_written"] == len(expected)


def test_empty_file_gives_zero_rows(tmp_path):
    (tmp_path / "in.csv").write_bytes(b"")
    (tmp_path / "other.csv").write_bytes(b"id,name\n1,a\n")
    job = basic_job(["in.csv", "other.csv"], input={"allow_missing_columns": True})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    assert read_output(tmp_path / "out").to_pylist() == [{"id": 1, "name": "a"}]
    assert manifest_of(tmp_path / "out")["counts"]["rows_read"] == 1


def test_typed_columns_are_real_types(tmp_path, workers):
    data = b"id,ts,price,ok,day\n1,2026-11-01 10:00:00,1.5,true,2026-11-01\n2,2026-11-02T11:30:00,,false,2026-11-02\n"
    (tmp_path / "in.csv").write_bytes(data)
    job = basic_job("in.csv", run={"workers": workers})
    code, _, err = run_cli("run", write_job(tmp_path, job), "--no-progress")
    assert code == 0, err
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = read_output(tmp_path / "out")
    ref = pacsv.read_csv(io.BytesIO(data))
    assert pa.types.is_timestamp(table.schema.field("ts").type)  # Parquet stores seconds as ms
    assert table.schema.field("day").type == pa.date32()
    assert table.column("ts").to_pylist() == ref.column("ts").to_pylist()
    assert table.column("price").to_pylist() == ref.column("price").to_pylist()
    assert table.column("ok").to_pylist() == [True, False]
