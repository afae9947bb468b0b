"""pandas in one process: W1 as ``read_csv`` + ``to_parquet``; W2 as ``read_csv(chunksize=...)``
with the Python function on each chunk and a ``ParquetWriter``."""

from __future__ import annotations

import os

import pandas as pd

from bench.peers import W1_COLUMNS, W2_BATCH_ROWS, parse_args


def w1(src: str, out: str) -> None:
    df = pd.read_csv(src, parse_dates=["ts"])
    df = df[(df["status"] == "ok") & (df["qty"] > 0)]
    df = df.assign(total=df["price"] * df["qty"] * (1 - df["discount"].fillna(0)))
    df[W1_COLUMNS].to_parquet(os.path.join(out, "part-0.parquet"), compression="zstd", index=False)


def w2(src: str, out: str, salt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.udf import enrich

    writer = None
    try:
        for chunk in pd.read_csv(src, parse_dates=["ts"], chunksize=W2_BATCH_ROWS):
            table = pa.Table.from_pandas(enrich(chunk, salt=salt), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(os.path.join(out, "part-0.parquet"), table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def main() -> None:
    args = parse_args("pandas_peer", ("w1", "w2"))
    if args.workload == "w1":
        w1(args.input, args.output)
    else:
        w2(args.input, args.output, args.salt)


if __name__ == "__main__":
    main()
