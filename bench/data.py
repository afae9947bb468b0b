"""Deterministic sales-like inputs for the workloads.

Columns ``id,ts,user_id,country,product,price,qty,discount,status,note``, about 85 bytes a row,
``discount`` empty (null) in 30% of the rows, ``note`` quoted where it holds a comma or a quote.
Every value comes from numpy generators seeded with (seed, data set, batch number), so the same
parameters always give the same bytes. A data set lives in its own folder with a ``meta.json``
holding the parameters; it is generated once and reused while the parameters match.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GENERATOR_VERSION = 1
SEED = 2026
BATCH_ROWS = 1 << 20

COLUMNS = ("id", "ts", "user_id", "country", "product", "price", "qty", "discount", "status", "note")
HEADER = (",".join(COLUMNS) + "\n").encode()

_COUNTRIES = ("DE", "FR", "GB", "US", "SE", "NO", "JP", "CH")
_COUNTRY_P = (22, 14, 14, 20, 8, 9, 7, 6)

# product -> (lowest, highest) unit price; mixed case, hyphens and accents give the W2
# normalisation something to do
_PRODUCTS = {
    "Notebook": (2.0, 9.0),
    "USB Cable": (4.0, 15.0),
    "Coffee Beans": (8.0, 26.0),
    "Water-Bottle": (6.0, 28.0),
    "Umbrella": (12.0, 35.0),
    "Desk Lamp": (18.0, 65.0),
    "Backpack": (25.0, 95.0),
    "Keyboard": (20.0, 160.0),
    "Headphones": (30.0, 240.0),
    "Monitor": (120.0, 480.0),
    "Café Crème": (3.0, 12.0),
    "Crème Brûlée Mug": (9.0, 22.0),
}

_STATUSES = ("ok", "refunded", "pending", "cancelled")
_STATUS_P = (86, 8, 4, 2)

_NOTES = (
    "gift wrap please", "deliver to the back door", "repeat customer", "call before delivery",
    "express shipping requested", "left with the neighbour", "promo code used", "second delivery attempt",
    "invoice requested by email", "pickup in store", "red, large", "blue, small, matte finish",
    'the "deluxe" edition', "Zürich, Altstadt", "customer asked for a paper receipt",
    "leave at reception desk",
)

_DISCOUNTS = np.round(np.arange(0, 51, 5) / 100, 2)
_START = np.datetime64("2026-11-01T00:00:00", "s").astype(np.int64)
_SPAN_SECONDS = 30 * 86_400

SCHEMA = pa.schema([
    ("id", pa.int64()), ("ts", pa.timestamp("s")), ("user_id", pa.int64()), ("country", pa.string()),
    ("product", pa.string()), ("price", pa.float64()), ("qty", pa.int64()), ("discount", pa.float64()),
    ("status", pa.string()), ("note", pa.string()),
])

# the column types, for readers told them explicitly (the reference fingerprints)
DUCKDB_TYPES = {
    "id": "BIGINT", "ts": "TIMESTAMP", "user_id": "BIGINT", "country": "VARCHAR", "product": "VARCHAR",
    "price": "DOUBLE", "qty": "BIGINT", "discount": "DOUBLE", "status": "VARCHAR", "note": "VARCHAR",
}


def _p(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def _strings(values: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values, pa.string()), pa.array(index))


def sales_table(first_id: int, rows: int, total_rows: int, seed: int, tag: int) -> pa.Table:
    """Rows ``first_id .. first_id + rows - 1`` of a data set of ``total_rows`` rows."""
    rng = np.random.default_rng([seed, tag, first_id])
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    ts = _START + ((ids - 1) * _SPAN_SECONDS) // max(total_rows, 1)
    products = tuple(_PRODUCTS)
    prod = rng.integers(0, len(products), rows)
    lows = np.array([_PRODUCTS[p][0] for p in products])[prod]
    highs = np.array([_PRODUCTS[p][1] for p in products])[prod]
    price = np.round(lows + rng.random(rows) * (highs - lows), 2)
    qty = rng.choice(np.array([0, -1, 1, 2, 3, 4, 5, 8, 12, 24]), rows,
                     p=_p((4, 1, 40, 20, 12, 10, 8, 2.5, 1.5, 1)))
    discount_null = rng.random(rows) < 0.30
    discount = _DISCOUNTS[rng.integers(0, len(_DISCOUNTS), rows)]
    columns = [
        pa.array(ids),
        pa.array(ts.astype("datetime64[s]")),
        pa.array(rng.integers(1000, 100_000, rows, dtype=np.int64)),
        _strings(_COUNTRIES, rng.choice(len(_COUNTRIES), rows, p=_p(_COUNTRY_P))),
        _strings(products, prod),
        pa.array(price),
        pa.array(qty.astype(np.int64)),
        pa.array(discount, mask=discount_null),
        _strings(_STATUSES, rng.choice(len(_STATUSES), rows, p=_p(_STATUS_P))),
        _strings(_NOTES, rng.integers(0, len(_NOTES), rows)),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def csv_bytes(table: pa.Table) -> bytes:
    """The rows as CSV text (no header), quoting only the values that need it."""
    fields = []
    for name in COLUMNS:
        column = table.column(name)
        if pa.types.is_string(column.type):
            needs = pc.match_substring_regex(column, '[,"\\r\\n]')
            quoted = pc.binary_join_element_wise('"', pc.replace_substring(column, '"', '""'), '"', "")
            fields.append(pc.if_else(needs, quoted, column))
        else:
            fields.append(column.cast(pa.string()))
    rows = pc.binary_join_element_wise(*fields, ",", null_handling="replace", null_replacement="")
    lines = pc.binary_join_element_wise(rows, "", "\n").combine_chunks()
    _, offsets, data = lines.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return memoryview(data)[int(bounds[0]):int(bounds[-1])].tobytes()


def write_csv(path: Path, first_id: int, rows: int, total_rows: int, seed: int, tag: int) -> int:
    """One CSV file of ``rows`` rows (from ``first_id`` of ``total_rows``) with a header line; its size."""
    with open(path, "wb") as f:
        f.write(HEADER)
        done = 0
        while done < rows:
            n = min(BATCH_ROWS, rows - done)
            f.write(csv_bytes(sales_table(first_id + done, n, total_rows, seed, tag)))
            done += n
    return path.stat().st_size


@dataclass(frozen=True)
class DataSpec:
    """A data set: ``files`` CSV files of ``rows_per_file`` rows each."""

    name: str
    files: int
    rows_per_file: int
    seed: int = SEED
    version: int = GENERATOR_VERSION

    @property
    def rows(self) -> int:
        return self.files * self.rows_per_file

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.files}x{self.rows_per_file}"

    def file_names(self) -> list[str]:
        if self.files == 1:
            return [f"{self.name}.csv"]
        width = len(str(self.files - 1))
        return [f"{self.name}-{i:0{width}d}.csv" for i in range(self.files)]


@dataclass
class DataSet:
    spec: DataSpec
    folder: Path
    paths: list[Path]
    bytes: int
    meta: dict

    @property
    def rows(self) -> int:
        return self.spec.rows

    @property
    def glob(self) -> str:
        """One path or a glob matching every file of the set."""
        if len(self.paths) == 1:
            return str(self.paths[0])
        return str(self.folder / f"{self.spec.name}-*.csv")

    def save_meta(self) -> None:
        tmp = self.folder / ".meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        os.replace(tmp, self.folder / "meta.json")


def ensure(spec: DataSpec, root: Path, log=print) -> DataSet:
    """The data set under ``root/spec.name``, generated unless it is there with the same parameters."""
    folder = root / spec.folder_name
    params = asdict(spec)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        paths = [folder / n for n in spec.file_names()]
        if meta.get("params") == params and all(p.is_file() for p in paths):
            return DataSet(spec, folder, paths, int(meta["bytes"]), meta)
    tmp = root / f".{spec.folder_name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    total = 0
    tag = sum(spec.name.encode())
    for i, name in enumerate(spec.file_names()):
        total += write_csv(tmp / name, 1 + i * spec.rows_per_file, spec.rows_per_file, spec.rows, spec.seed, tag)
    meta = {"params": params, "rows": spec.rows, "bytes": total, "expected": {}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"generated {spec.name}: {spec.files:,} file(s), {spec.rows:,} rows, {total / 1e6:,.1f} MB "
        f"({total / max(spec.rows, 1):.1f} bytes a row) in {time.perf_counter() - started:.1f} s")
    return DataSet(spec, folder, [folder / n for n in spec.file_names()], total, meta)
