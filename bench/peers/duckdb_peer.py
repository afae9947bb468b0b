"""DuckDB: W1 as one ``COPY (SELECT ...) TO``; W2 as record batches through the Python function."""

from __future__ import annotations

import os

import duckdb

from bench.peers import W2_BATCH_ROWS, parse_args


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def w1(con, src: str, out: str) -> None:
    con.execute(
        f"COPY (SELECT id, ts, user_id, country, product, "
        f"price * qty * (1 - coalesce(discount, 0)) AS total "
        f"FROM read_csv({_q(src)}) WHERE status = 'ok' AND qty > 0) "
        f"TO {_q(os.path.join(out, 'part-0.parquet'))} (FORMAT parquet, COMPRESSION zstd)")


def w2(con, src: str, out: str, salt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.udf import enrich

    reader = con.sql(f"SELECT * FROM read_csv({_q(src)})").to_arrow_reader(W2_BATCH_ROWS)
    writer = None
    try:
        for batch in reader:
            table = pa.Table.from_pandas(enrich(batch.to_pandas(), salt=salt), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(os.path.join(out, "part-0.parquet"), table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def main() -> None:
    args = parse_args("duckdb_peer", ("w1", "w2"))
    con = duckdb.connect()
    if args.workload == "w1":
        w1(con, args.input, args.output)
    else:
        w2(con, args.input, args.output, args.salt)


if __name__ == "__main__":
    main()
