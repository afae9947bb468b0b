"""Deterministic demo input for the example jobs.

    python -m pipeline.demo DIR [--rows N] [--seed S]

writes into ``DIR/raw/``:

- ``sales-2026-11-01.csv``: LF line endings, no newline after the last record
- ``sales-2026-11-02.csv``: CRLF line endings
- ``sales-2026-11-03.csv.gz``: gzip'd, LF line endings
- ``events.jsonl``: one JSON object per line

The sales files share the header ``id,ts,user_id,country,product,price,qty,discount,status,note``
and hold ``--rows`` records between them (header lines not counted). They carry the things real
exports carry: quoted commas, quoted newlines (one of them ``\\r\\n``), doubled quotes, non-ASCII
text and emoji, empty fields and ``NA`` for nulls, the country code ``NO``, and a handful of bad
records listed, for the default arguments, in ``BAD_ROWS``. ``generate()`` returns the bad records
for any arguments.

The same arguments always give the same bytes: every value comes from ``random.Random(seed)`` and
the gzip header carries no timestamp and no file name.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
from typing import NamedTuple

DEFAULT_ROWS = 60_000
DEFAULT_SEED = 2026
MIN_ROWS = 60

COLUMNS = ("id", "ts", "user_id", "country", "product", "price", "qty", "discount", "status", "note")
HEADER = ",".join(COLUMNS)


class BadRow(NamedTuple):
    """A record that no correct reader can accept as it stands."""

    file: str  # file name inside raw/
    line: int  # 1-based physical line of the record's first line (the header is line 1)
    kind: str  # too_many_fields | too_few_fields | qty_not_int | price_not_number | ts_not_timestamp | invalid_json


class FileInfo(NamedTuple):
    name: str  # file name inside raw/
    rows: int  # records (CSV: header excluded, bad records included; JSONL: lines)
    bytes: int  # size on disk


class DemoData(NamedTuple):
    files: tuple[FileInfo, ...]
    bad_rows: tuple[BadRow, ...]


# The bad records of `python -m pipeline.demo DIR` (default --rows and --seed).
BAD_ROWS: tuple[BadRow, ...] = (
    BadRow("sales-2026-11-01.csv", 5283, "too_many_fields"),
    BadRow("sales-2026-11-01.csv", 13400, "qty_not_int"),
    BadRow("sales-2026-11-02.csv", 10189, "too_few_fields"),
    BadRow("sales-2026-11-02.csv", 17800, "price_not_number"),
    BadRow("sales-2026-11-03.csv.gz", 4384, "qty_not_int"),
    BadRow("sales-2026-11-03.csv.gz", 18980, "ts_not_timestamp"),
    BadRow("events.jsonl", 2929, "invalid_json"),
)


class _SalesFile(NamedTuple):
    name: str
    day: str
    newline: str
    final_newline: bool
    gzipped: bool
    bad_kinds: tuple[str, str]  # the first lands in the first half of the file, the second in the second
    extra_notes: tuple[str, ...]  # notes this file must contain besides _NOTES_EVERY_FILE


_SALES_FILES = (
    _SalesFile("sales-2026-11-01.csv", "2026-11-01", "\n", False, False,
               ("too_many_fields", "qty_not_int:abc"), ("line one\r\nline two",)),
    _SalesFile("sales-2026-11-02.csv", "2026-11-02", "\r\n", True, False,
               ("too_few_fields", "price_not_number"), ()),
    _SalesFile("sales-2026-11-03.csv.gz", "2026-11-03", "\n", True, True,
               ("qty_not_int:1.5", "ts_not_timestamp"), ()),
)

# Country codes; "NO" turns into the boolean false when written unquoted in YAML 1.1.
_COUNTRIES = ("DE", "FR", "NO", "SE", "GB", "US", "JP", "CH")
_COUNTRY_WEIGHTS = (22, 14, 9, 8, 14, 20, 7, 6)

# product -> (lowest, highest) unit price
_PRODUCTS = {
    "notebook": (2.0, 9.0),
    "usb cable": (4.0, 15.0),
    "coffee beans": (8.0, 26.0),
    "water bottle": (6.0, 28.0),
    "umbrella": (12.0, 35.0),
    "desk lamp": (18.0, 65.0),
    "backpack": (25.0, 95.0),
    "keyboard": (20.0, 160.0),
    "headphones": (30.0, 240.0),
    "monitor": (120.0, 480.0),
}
_PRODUCT_NAMES = tuple(_PRODUCTS)

_STATUSES = ("ok", "refunded", "pending")
_STATUS_WEIGHTS = (86, 8, 6)

_PLAIN_NOTES = (
    "gift wrap", "deliver to back door", "repeat customer", "call before delivery",
    "express shipping", "left with neighbour", "promo code used", "second attempt",
    "invoice requested", "pickup in store",
)
_COMMA_NOTES = ("red, large", "blue, small", "size 42, wide", "black, 2 pack, matte")
_NEWLINE_NOTES = ("line one\nline two", "leave at door\nring twice", "floor 3\nflat 12\nbuzz 7")
_QUOTE_NOTES = ('he said "hi"', 'the "deluxe" edition', '"urgent"', 'box marked "fragile", handle with care')
_UNICODE_NOTES = (
    "Zürich", "東京", "São Paulo", "Ålesund", "Straße 5", "naïve café", "Москва",
    "🎉 birthday", "👍", "très bien 👌", "Zürich, \"Altstadt\"\n2. Stock",
)

# Every sales file holds at least one record with each of these notes, whatever --rows is.
_NOTES_EVERY_FILE = ("red, large", "line one\nline two", 'he said "hi"', "Zürich", "東京", "🎉 birthday", "", "NA")

_EVENT_KINDS = ("view", "click", "buy")
_EVENT_KIND_WEIGHTS = (70, 22, 8)
_QUERIES = (
    "running shoes", "Zürich hotels", "東京 tower", 'size "XL"', "red, large",
    "café crème", "line one\nline two", "tab\there", "back\\slash", "🎧 headphones", "Ålesund",
)


def _note(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.12:
        return ""
    if r < 0.15:
        return "NA"
    if r < 0.70:
        return rng.choice(_PLAIN_NOTES)
    if r < 0.78:
        return rng.choice(_COMMA_NOTES)
    if r < 0.82:
        return rng.choice(_NEWLINE_NOTES)
    if r < 0.87:
        return rng.choice(_QUOTE_NOTES)
    return rng.choice(_UNICODE_NOTES)


def _quote(value: str) -> str:
    if '"' in value or "," in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _sales_fields(rng: random.Random, row_id: int, ts: str) -> list[str]:
    product = rng.choice(_PRODUCT_NAMES)
    low, high = _PRODUCTS[product]
    r = rng.random()
    if r < 0.05:
        qty = 0
    elif r < 0.97:
        qty = rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 5))
    else:
        qty = rng.randint(6, 24)
    r = rng.random()
    if r < 0.24:
        discount = ""
    elif r < 0.30:
        discount = "NA"
    else:
        discount = f"{rng.randint(0, 50) / 100:.2f}"
    return [
        str(row_id),
        ts,
        str(rng.randint(1000, 99999)),
        rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0],
        product,
        f"{rng.uniform(low, high):.2f}",
        str(qty),
        discount,
        rng.choices(_STATUSES, _STATUS_WEIGHTS)[0],
        _note(rng),
    ]


def _spoil(fields: list[str], kind: str) -> str:
    """The raw text of a bad record made from a good one (a single physical line)."""
    fields[9] = "bulk order"
    if kind == "too_many_fields":
        fields[9] = "red, large"  # the comma is not quoted: 11 fields
        return ",".join(fields)
    if kind == "too_few_fields":
        return ",".join(fields[:9])  # the note column is missing: 9 fields
    if kind.startswith("qty_not_int:"):
        fields[6] = kind.split(":", 1)[1]
    elif kind == "price_not_number":
        fields[5] = "n/a"
    elif kind == "ts_not_timestamp":
        fields[1] = "yesterday"
    else:
        raise ValueError(f"unknown bad row kind {kind!r}")
    return ",".join(fields)


def _sales_file(rng: random.Random, spec: _SalesFile, n: int, first_id: int) -> tuple[bytes, list[BadRow]]:
    bad_at = {
        rng.randrange(n // 5, n // 2): spec.bad_kinds[0],
        rng.randrange(n // 2 + 1, n - n // 10): spec.bad_kinds[1],
    }
    forced_notes = _NOTES_EVERY_FILE + spec.extra_notes
    free = [i for i in range(n) if i not in bad_at]
    note_at = dict(zip(rng.sample(free, len(forced_notes)), forced_notes))

    seconds = sorted(rng.randrange(86_400) for _ in range(n))
    day = spec.day
    records = [HEADER]
    bad_rows = []
    line = 2  # physical line where the next record starts
    for i, sec in enumerate(seconds):
        h, rest = divmod(sec, 3600)
        m, s = divmod(rest, 60)
        fields = _sales_fields(rng, first_id + i, f"{day} {h:02d}:{m:02d}:{s:02d}")
        if i in bad_at:
            kind = bad_at[i]
            records.append(_spoil(fields, kind))
            bad_rows.append(BadRow(spec.name, line, kind.split(":", 1)[0]))
            line += 1
            continue
        note = note_at.get(i, fields[9])
        fields[9] = _quote(note)
        records.append(",".join(fields))
        line += 1 + note.count("\n")
    text = spec.newline.join(records)
    if spec.final_newline:
        text += spec.newline
    data = text.encode("utf-8")
    if spec.gzipped:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return data, bad_rows


def _events_file(rng: random.Random, n: int, name: str) -> tuple[bytes, list[BadRow]]:
    bad_index = rng.randrange(n // 3, 2 * n // 3)
    seconds = sorted(rng.randrange(3 * 86_400) for _ in range(n))
    lines = []
    for i, sec in enumerate(seconds):
        d, rest = divmod(sec, 86_400)
        h, rest = divmod(rest, 3600)
        m, s = divmod(rest, 60)
        kind = rng.choices(_EVENT_KINDS, _EVENT_KIND_WEIGHTS)[0]
        event = {
            "event_id": 100_001 + i,
            "ts": f"2026-11-{1 + d:02d}T{h:02d}:{m:02d}:{s:02d}",
            "user_id": rng.randint(1000, 99999),
            "kind": kind,
            "amount": round(rng.uniform(5.0, 300.0), 2) if kind == "buy" else None,
            "query": rng.choice(_QUERIES) if rng.random() < 0.3 else None,
            "meta_country": rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0] if rng.random() < 0.95 else None,
        }
        # Most lines keep UTF-8 as is; every 25th spells non-ASCII characters as \u escapes.
        text = json.dumps(event, ensure_ascii=(i % 25 == 24), separators=(",", ":"))
        if i == bad_index:
            text = text[: len(text) // 2]  # cut off mid-object
        lines.append(text)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    return data, [BadRow(name, bad_index + 1, "invalid_json")]


def _write(path: str, data: bytes) -> None:
    # a hidden name, so that an interrupted run leaves nothing the jobs' globs would pick up
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def generate(out_dir: str | os.PathLike, rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED,
             report=None) -> DemoData:
    """Write the demo files into ``out_dir/raw/``; return what was written and where the bad records are.

    ``rows`` is the number of sales records over the three CSV files (bad records included);
    ``events.jsonl`` gets ``rows // 12`` lines (at least 20). ``report``, when given, is called
    with each FileInfo as soon as its file is written.
    """
    if rows < MIN_ROWS:
        raise ValueError(f"rows must be at least {MIN_ROWS}, got {rows}")
    raw = os.path.join(os.fspath(out_dir), "raw")
    os.makedirs(raw, exist_ok=True)
    rng = random.Random(seed)
    per_file = [rows // 3, rows // 3, rows - 2 * (rows // 3)]

    files: list[FileInfo] = []
    bad_rows: list[BadRow] = []

    def emit(name: str, n: int, data: bytes) -> None:
        _write(os.path.join(raw, name), data)
        info = FileInfo(name, n, len(data))
        files.append(info)
        if report is not None:
            report(info)

    next_id = 1
    for spec, n in zip(_SALES_FILES, per_file):
        data, bad = _sales_file(rng, spec, n, next_id)
        next_id += n
        bad_rows.extend(bad)
        emit(spec.name, n, data)

    n_events = max(20, rows // 12)
    data, bad = _events_file(rng, n_events, "events.jsonl")
    bad_rows.extend(bad)
    emit("events.jsonl", n_events, data)
    return DemoData(tuple(files), tuple(bad_rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description="Write deterministic demo input files (sales CSVs and events JSONL) into DIR/raw/.",
    )
    parser.add_argument("dir", metavar="DIR", help="target folder; the files go into DIR/raw/")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                        help=f"sales records over the three CSV files (default {DEFAULT_ROWS}, at least {MIN_ROWS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    if args.rows < MIN_ROWS:
        parser.error(f"--rows must be at least {MIN_ROWS}")

    def report(info: FileInfo) -> None:
        path = os.path.join(args.dir, "raw", info.name)
        print(f"{path}  {info.rows:,} rows  {info.bytes:,} bytes", flush=True)

    try:
        result = generate(args.dir, rows=args.rows, seed=args.seed, report=report)
    except OSError as exc:
        print(f"pipeline.demo: cannot write {exc.filename or args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 74
    print(f"{len(result.bad_rows)} bad records planted (file, line, kind):")
    for bad in result.bad_rows:
        print(f"  {bad.file}:{bad.line}  {bad.kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
