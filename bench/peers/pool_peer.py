"""The script a user writes from the multiprocessing tutorial: the parent reads the CSV in pandas
chunks, ``Pool.imap_unordered`` transforms them in one process per core, and the parent writes
each result with one ``ParquetWriter``."""

from __future__ import annotations

import functools
import os
from multiprocessing import Pool

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.peers import W1_COLUMNS, W2_BATCH_ROWS, parse_args

CHUNK_ROWS = W2_BATCH_ROWS


def w1_transform(df: pd.DataFrame) -> pd.DataFrame:
    df = df[(df["status"] == "ok") & (df["qty"] > 0)]
    df = df.assign(total=df["price"] * df["qty"] * (1 - df["discount"].fillna(0)))
    return df[W1_COLUMNS]


def w2_transform(df: pd.DataFrame, salt: str) -> pd.DataFrame:
    from bench.udf import enrich

    return enrich(df, salt=salt)


def main() -> None:
    args = parse_args("pool_peer", ("w1", "w2"))
    transform = w1_transform if args.workload == "w1" else functools.partial(w2_transform, salt=args.salt)
    reader = pd.read_csv(args.input, parse_dates=["ts"], chunksize=CHUNK_ROWS)
    writer = None
    with Pool(os.cpu_count()) as pool:
        try:
            for df in pool.imap_unordered(transform, reader):
                table = pa.Table.from_pandas(df, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(os.path.join(args.output, "part-0.parquet"), table.schema,
                                              compression="zstd")
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()


if __name__ == "__main__":
    main()
