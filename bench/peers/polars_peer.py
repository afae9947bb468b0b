"""Polars: W1 as ``scan_csv(...).sink_parquet``; W2 as ``map_batches`` calling the Python function."""

from __future__ import annotations

import os

import polars as pl

from bench.peers import W1_COLUMNS, parse_args


def w1(src: str, out: str) -> None:
    (pl.scan_csv(src, try_parse_dates=True)
     .filter((pl.col("status") == "ok") & (pl.col("qty") > 0))
     .with_columns(total=pl.col("price") * pl.col("qty") * (1 - pl.col("discount").fill_null(0)))
     .select(W1_COLUMNS)
     .sink_parquet(os.path.join(out, "part-0.parquet"), compression="zstd"))


def w2(src: str, out: str, salt: str) -> None:
    from bench.udf import NEW_COLUMNS, enrich

    def batch(df: pl.DataFrame) -> pl.DataFrame:
        return pl.from_pandas(enrich(df.to_pandas(), salt=salt))

    lf = pl.scan_csv(src, try_parse_dates=True)
    schema = dict(lf.collect_schema())
    schema.update(dict.fromkeys(NEW_COLUMNS, pl.String()))
    (lf.map_batches(batch, schema=schema, streamable=True)
     .sink_parquet(os.path.join(out, "part-0.parquet"), compression="zstd"))


def main() -> None:
    args = parse_args("polars_peer", ("w1", "w2"))
    if args.workload == "w1":
        w1(args.input, args.output)
    else:
        w2(args.input, args.output, args.salt)


if __name__ == "__main__":
    main()
