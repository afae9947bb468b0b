"""Did an engine write the right rows? Fingerprints of outputs and of the expected result.

A fingerprint is the row count, the sum of ``id``, the sum of a hash over the key columns of
each row (order-free, and unlike a xor it sees a doubled row), and, where the workload computes
one, the sum of ``total`` (compared with a relative tolerance: engines may add in another order).
The expected fingerprints are computed by DuckDB from the input CSV with the column types given
explicitly; W2's expected values come from applying ``bench.udf`` to each distinct
(user_id, product) pair, which is all its new columns depend on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import duckdb
import pandas as pd

from bench import udf
from bench.data import DUCKDB_TYPES

W1_KEY = "hash(id::BIGINT, user_id::BIGINT, country::VARCHAR, product::VARCHAR, epoch(ts)::BIGINT)"
W2_KEY = "hash(id::BIGINT, user_id::BIGINT, user_product_hash::VARCHAR, product_norm::VARCHAR)"

KINDS = {"w1": (W1_KEY, True), "w2": (W2_KEY, False)}


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    return con


def _quote(path: str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _read_csv(glob: str) -> str:
    columns = "{" + ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in DUCKDB_TYPES.items()) + "}"
    return (f"read_csv({_quote(glob)}, header = true, columns = {columns}, "
            f"nullstr = '', quote = '\"', escape = '\"')")


def _fingerprint(con, relation_sql: str, kind: str) -> dict:
    key, has_total = KINDS[kind]
    total = ", sum(total::DOUBLE)" if has_total else ", NULL"
    sql = (f"SELECT count(*), sum(id::BIGINT)::VARCHAR, sum(({key}) >> 16)::VARCHAR{total} "
           f"FROM {relation_sql}")
    rows, sum_id, sum_key, sum_total = con.execute(sql).fetchone()
    return {"rows": int(rows), "sum_id": sum_id or "0", "sum_key": sum_key or "0",
            "sum_total": None if sum_total is None else float(sum_total)}


def parquet_files(folder: Path) -> list[str]:
    """The Parquet files of an output folder; names starting with ``_`` or ``.`` are not data."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.endswith(".parquet") and not f.startswith(("_", "."))]
    return found


def output_fingerprint(folder: Path, kind: str) -> dict:
    files = parquet_files(folder)
    if not files:
        return {"rows": 0, "sum_id": "0", "sum_key": "0", "sum_total": None, "files": 0}
    listing = "[" + ", ".join(_quote(f) for f in files) + "]"
    con = _connect()
    try:
        fp = _fingerprint(con, f"read_parquet({listing}, union_by_name = true)", kind)
    finally:
        con.close()
    fp["files"] = len(files)
    return fp


W1_SQL = ("(SELECT id, ts, user_id, country, product, price * qty * (1 - coalesce(discount, 0)) AS total "
          "FROM {src} WHERE status = 'ok' AND qty > 0)")


def expected_w1(glob: str) -> dict:
    con = _connect()
    try:
        return _fingerprint(con, W1_SQL.format(src=_read_csv(glob)), "w1")
    finally:
        con.close()


def expected_w2(glob: str, salt: str) -> dict:
    con = _connect()
    try:
        pairs = con.execute(f"SELECT DISTINCT user_id, product FROM {_read_csv(glob)}").df()
        done = udf.enrich(pd.DataFrame({"user_id": pairs["user_id"].astype("int64").tolist(),
                                        "product": pairs["product"].astype(object).tolist()}), salt=salt)
        con.register("w2_pairs", done)
        return _fingerprint(con, f"(SELECT * FROM {_read_csv(glob)} JOIN w2_pairs USING (user_id, product))",
                            "w2")
    finally:
        con.close()


def compare(got: dict, want: dict) -> str | None:
    """None when they match, else what differs."""
    problems = []
    for key in ("rows", "sum_id", "sum_key"):
        if str(got.get(key)) != str(want.get(key)):
            problems.append(f"{key} {got.get(key)} != expected {want.get(key)}")
    a, b = got.get("sum_total"), want.get("sum_total")
    if b is not None and (a is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)):
        problems.append(f"sum_total {a} != expected {b}")
    return "; ".join(problems) or None
