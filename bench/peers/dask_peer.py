"""Dask: a ``LocalCluster`` of one single-threaded worker process per core, ``dd.read_csv`` and
``map_partitions`` with the Python function, ``to_parquet``."""

from __future__ import annotations

import os

from bench.peers import parse_args


def main() -> None:
    args = parse_args("dask_peer", ("w2",))
    import dask.dataframe as dd
    import pandas as pd
    from dask.distributed import Client, LocalCluster

    from bench.udf import NEW_COLUMNS, enrich

    workers = os.cpu_count() or 1
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        df = dd.read_csv(args.input, parse_dates=["ts"], blocksize="64MiB")
        meta = df._meta.assign(**{name: pd.Series([], dtype=pd.StringDtype()) for name in NEW_COLUMNS})
        out = df.map_partitions(enrich, salt=args.salt, meta=meta)
        out.to_parquet(args.output, compression="zstd", write_index=False)


if __name__ == "__main__":
    main()
