"""The benchmark of issue 4: this pipeline against DuckDB, Polars, pandas, Dask and a hand-written Pool.

    python -m bench            # or: make bench (BENCH_SCALE, BENCH_REPEAT), make bench-smoke

See bench/README.md.
"""
