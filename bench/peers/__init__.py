"""One script per peer engine, each run as its own process by the harness:

    python -m bench.peers.NAME WORKLOAD INPUT OUTPUT_DIR [--salt S]

WORKLOAD is ``w1`` (filter, derive ``total``, select; zstd Parquet; also W3 on a glob) or ``w2``
(the ``bench.udf.enrich`` function over chunks). INPUT is a CSV path or glob; OUTPUT_DIR is an
empty folder that receives Parquet files. Kept free of heavy imports, so a peer's start-up costs
only what its own script imports.
"""

from __future__ import annotations

import argparse

W1_COLUMNS = ["id", "ts", "user_id", "country", "product", "total"]
W2_BATCH_ROWS = 250_000


def parse_args(prog: str, workloads: tuple[str, ...]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("workload", choices=workloads)
    p.add_argument("input", help="a CSV path or glob")
    p.add_argument("output", help="an empty folder for the Parquet output")
    p.add_argument("--salt", default="", help="w2: the salt passed to enrich()")
    return p.parse_args()
