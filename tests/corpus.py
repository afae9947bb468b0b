"""Differential runs on third-party files: the tool against a reference reader, file by file.

The corpus (CSV, TSV and NDJSON files from the test suites of Spark, pandas, Polars and Arrow) lives
in ``../shared/corpus`` beside the repository; its README says where each file comes from. For each
file, ``DIALECTS`` gives the options its upstream test reads it with (delimiter, quote, comment
prefix, header) and every file is run:

- with all columns declared ``string`` and no null markers, under ``quarantine``: the rows written
  must equal the reference's records that have the header's width, value for value, and the
  rejected rows must be exactly the other records (``rows_read == written + filtered + rejected``);
- with the defaults (inferred types) under ``fail``: exit 0 with every reference record, or exit 65
  with a message that names the file and a line.

The reference for delimited text is Python's ``csv`` module with the same dialect (it reads quotes
by the parser's rule); for NDJSON it is ``pyarrow.json``. Each run is repeated at several chunk
sizes and worker counts; all must agree. ``python -m tests.corpus_table`` writes
``docs/compatibility.md`` from these results.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import yaml
import zstandard

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
CHUNKS = ("4KiB", "64KiB", None)     # None: the default chunk size
WORKERS = (1, 2)

# How each file's upstream test reads it (only what differs from the defaults).
DIALECTS: dict[str, dict] = {
    "spark/bad_after_good.csv": {"header": False},
    "spark/cars-alternative.csv": {"delimiter": "|", "quote": "'"},
    "spark/cars-blank-column-name.csv": {"rename_duplicates": True},
    "spark/cars-malformed.csv": {"comment": "~"},
    "spark/cars-with-lines-to-skip.csv": {"skip_rows": 2},
    "spark/cars-with-multiline-lines-to-skip.csv": {"skip_rows": 2},
    "spark/cars_iso-8859-1.csv": {"encoding": "iso-8859-1", "delimiter": "\u00fe"},
    "spark/comments-whitespaces.csv": {"comment": "#"},
    "spark/comments.csv": {"comment": "~", "header": False},
    "spark/decimal.csv": {"comment": "~"},
    "spark/filename19340{00-1}.csv": {"header": False},
    "spark/keep-quotes.csv": {"header": False},
    "spark/more-columns-custom-sep.csv": {"header": False},
    "spark/more-columns.csv": {"header": False},
    "spark/tab-sep-with-empty-columns.csv": {"delimiter": "\t", "header": False},
    "spark/unescaped-quotes.csv": {"header": False},
    "spark/value-malformed.csv": {"header": False},
    "pandas/bom_first_line.txt": {"delimiter": "\t"},
    "pandas/logfmt.log": {"delimiter": " ", "header": False},
    "pandas/salaries_comments.csv": {"comment": "#"},
    "pandas/salaries_comments.tsv": {"comment": "#"},
    "polars/py-polars/tests/unit/io/files/graph-data/follows.csv": {"header": False},
    "polars/py-polars/tests/unit/io/files/graph-data/user.csv": {"header": False},
}
FORMATS = {"pandas/bom_first_line.txt": "tsv", "pandas/logfmt.log": "csv"}


def available() -> bool:
    return (CORPUS / "SHA256SUMS").is_file()


def corpus_files() -> list[str]:
    """Every file of the corpus (from its SHA256SUMS), as paths relative to the corpus folder."""
    names = []
    for line in (CORPUS / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            names.append(line.split(None, 1)[1].lstrip("*"))
    return sorted(names)


def readme_notes() -> dict[str, str]:
    """What the corpus README says is odd about each file."""
    notes = {}
    for line in (CORPUS / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \|[^|]*\|[^|]*\|[^|]*\| (.*) \|$", line)
        if m:
            notes[m.group(1)] = m.group(2)
    return notes


def options(rel: str) -> dict:
    opts = {"delimiter": ",", "quote": '"', "header": True, "encoding": "utf-8", "comment": None,
            "skip_rows": 0, "rename_duplicates": False}
    if rel.endswith(".tsv"):
        opts["delimiter"] = "\t"
    opts.update(DIALECTS.get(rel, {}))
    return opts


def is_json(rel: str) -> bool:
    return rel.endswith((".ndjson", ".jsonl"))


# ------------------------------------------------------------------ the reference


@dataclass
class Reference:
    header: list[str]
    records: list[list[str]] | list[dict]


def _text(rel: str) -> bytes:
    data = (CORPUS / rel).read_bytes()
    if rel.endswith(".gz"):
        return gzip.decompress(data)
    if rel.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def reference(rel: str) -> Reference:
    data = _text(rel)
    if is_json(rel):
        table = pajson.read_json(pa.py_buffer(data))
        return Reference(table.column_names, table.to_pylist())
    o = options(rel)
    text = data.decode("utf-8-sig" if o["encoding"] == "utf-8" else o["encoding"])
    lines = io.StringIO(text, newline="")
    if o["comment"]:
        lines = (ln for ln in lines if not ln.startswith(o["comment"]))
    reader = csv.reader(lines, delimiter=o["delimiter"], quotechar=o["quote"] or '"',
                        quoting=csv.QUOTE_MINIMAL if o["quote"] else csv.QUOTE_NONE, doublequote=True, strict=False)
    records = [r for r in reader if r]
    records = records[o["skip_rows"]:]
    if o["header"]:
        header, records = (records[0], records[1:]) if records else ([], [])
    else:
        header = [f"column{i:0{len(str(len(records[0]) - 1))}d}" for i in range(len(records[0]))] if records else []
    if o["rename_duplicates"]:
        from pipeline.input.plan import rename_columns
        header = list(rename_columns(header))
    return Reference(header, records)


# ------------------------------------------------------------------ running the tool


@dataclass
class Run:
    code: int
    err: str
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def run_tool(rel: str, *, strings: bool, policy: str, chunk_bytes: str | None, workers: int,
             header: list[str] | None = None, copies: int = 1, dask: str | None = None,
             stages: list | None = None) -> Run:
    """One run on the file; with ``copies``, on that many copies of it in one folder (many small files);
    with ``dask``, on the Dask scheduler at that address; with ``stages``, through them."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        o = options(rel)
        inp: dict = {"paths": [str(CORPUS / rel)]}
        if copies > 1:
            (tmp_path / "in").mkdir()
            for i in range(copies):
                (tmp_path / "in" / f"copy{i:02d}-{Path(rel).name}").write_bytes((CORPUS / rel).read_bytes())
            inp["paths"] = [str(tmp_path / "in" / "*")]
        if rel in FORMATS:
            inp["format"] = FORMATS[rel]
        if not is_json(rel):
            inp["csv"] = {k: v for k, v in o.items() if v != options("x.csv")[k]}
            if strings:
                inp["csv"]["null_values"] = []
        if strings and header:
            inp["schema"] = dict.fromkeys(header, "string")
        if chunk_bytes:
            inp["chunk_bytes"] = chunk_bytes
        job = {"name": "corpus", "input": inp, "output": {"path": str(tmp_path / "out"), "mode": "overwrite"},
               "run": {"workers": workers, "on_bad_rows": policy}}
        if dask:
            job["run"].update(executor="dask", dask={"address": dask})
        if stages:
            job["stages"] = stages
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job, allow_unicode=True), encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", str(tmp_path / "job.yaml"), "--no-progress", "--state-dir", str(tmp_path / "state")]
                        if _has_state_dir() else ["run", str(tmp_path / "job.yaml"), "--no-progress"])
        run = Run(code, err.getvalue().replace(str(CORPUS) + "/", "").replace(str(tmp_path) + "/", ""))
        run.err = re.sub(r"in/copy\d\d-", "", run.err)
        if code == 0:
            manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
            run.counts = manifest["counts"]
            tables = [pq.read_table(tmp_path / "out" / f["path"]) for f in manifest["files"]]
            run.rows = [r for t in tables for r in t.to_pylist()]
            if (tmp_path / "out" / "_rejects").exists():
                run.rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
        return run


def _has_state_dir() -> bool:
    return False


# ------------------------------------------------------------------ judging a file


@dataclass
class Verdict:
    rel: str
    outcome: str            # what the tool does with the defaults (fail policy)
    agreed: str             # how the quarantine run compares with the reference
    problems: list[str]     # anything unacceptable (must be empty)


MATRIX = tuple((c, w) for c in CHUNKS for w in WORKERS)
QUICK_VALUES = (("4KiB", 2),)        # make test: values at small chunks in parallel,
QUICK_DEFAULTS = ((None, 1),)        # and the defaults as a user runs them


def judge(rel: str, values_at=MATRIX, defaults_at=MATRIX) -> Verdict:
    ref = reference(rel)
    problems: list[str] = []
    if is_json(rel):
        good, bad = ref.records, []
    else:
        good = [r for r in ref.records if len(r) == len(ref.header)]
        bad = [r for r in ref.records if len(r) != len(ref.header)]
    agreed = "yes"
    outcomes = set()

    def where(chunk, w) -> str:
        return f"chunk {chunk or 'default'}, {w} worker{'s' if w > 1 else ''}"

    # 1. values under quarantine: strings for delimited text (JSON keeps its types; pyarrow.json decides them)
    for chunk, w in values_at:
        run = run_tool(rel, strings=not is_json(rel), policy="quarantine", chunk_bytes=chunk, workers=w,
                       header=ref.header)
        if "Traceback" in run.err or run.code not in (0, 65, 78):
            problems.append(f"{where(chunk, w)}: values run exit {run.code}: {run.err.strip()[-300:]}")
            continue
        if run.code != 0:
            if not _names_the_problem(rel, run):
                problems.append(f"{where(chunk, w)}: exit {run.code} without the file and line or key: "
                                f"{run.err.strip()}")
            outcomes.add(_refusal(run))
            agreed = "no (refused)"
            continue
        c = run.counts
        if c["rows_read"] != c["rows_written"] + c["rows_filtered"] + c["rows_rejected"]:
            problems.append(f"{where(chunk, w)}: counts do not add up: {c}")
        # parts are written as chunks finish: compare the rows in any order
        if is_json(rel):
            got = _sorted([{k: r.get(k) for k in ref.header} for r in run.rows])
        else:
            got = _sorted([[r[n] for n in ref.header] for r in run.rows])
        if got != _sorted(good):
            problems.append(f"{where(chunk, w)}: rows differ from the reference: {len(got)} vs {len(good)}; "
                            f"first difference {_first_diff(got, _sorted(good))}")
        rejected = _sorted([r for rej in run.rejects for r in _parse_raw(rel, rej["raw"])])
        if rejected != _sorted(bad) or len(run.rejects) != len(bad):
            problems.append(f"{where(chunk, w)}: {len(run.rejects)} rejected records, the reference has "
                            f"{len(bad)} of another width; first difference {_first_diff(rejected, _sorted(bad))}")
        whom = "pyarrow.json" if is_json(rel) else "Python csv"
        agreed = (f"yes ({whom}, {len(ref.records)} records)" if not run.rejects else
                  f"yes ({whom}): {len(run.rows)} written, {len(run.rejects)} of another width rejected")
    # 2. the defaults as a user runs them: inferred types, fail on a bad row
    for chunk, w in defaults_at:
        run = run_tool(rel, strings=False, policy="fail", chunk_bytes=chunk, workers=w)
        if "Traceback" in run.err or run.code not in (0, 65, 78):
            problems.append(f"{where(chunk, w)}: default run exit {run.code}: {run.err.strip()[-300:]}")
            continue
        if run.code == 0:
            if len(run.rows) != len(ref.records):
                problems.append(f"{where(chunk, w)}: exit 0 with {len(run.rows)} rows; the reference has "
                                f"{len(ref.records)}")
            outcomes.add(f"read, {len(run.rows)} rows")
        else:
            if not _names_the_problem(rel, run):
                problems.append(f"{where(chunk, w)}: exit {run.code} without the file and line or key: "
                                f"{run.err.strip()}")
            outcomes.add(_refusal(run))
    if len(outcomes) > 1:
        problems.append(f"outcomes differ between chunk sizes or worker counts: {sorted(outcomes)}")
    return Verdict(rel, " / ".join(sorted(outcomes)), agreed, problems)


def _parse_raw(rel: str, raw: str) -> list[list[str]]:
    """A rejected record's raw text, read by the reference with the file's dialect."""
    o = options(rel)
    return [r for r in csv.reader(io.StringIO(raw, newline=""), delimiter=o["delimiter"], quotechar=o["quote"] or '"',
                                  quoting=csv.QUOTE_MINIMAL if o["quote"] else csv.QUOTE_NONE, strict=False) if r]


def _names_the_problem(rel: str, run: Run) -> bool:
    """65 names the file and a line; 78 (an option the tool cannot honour) names the config key."""
    if run.code == 78:
        return "input.csv." in run.err
    return bool(re.search(r"line \d+", run.err)) and rel.rsplit("/", 1)[-1] in run.err


def _sorted(rows: list) -> list:
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _refusal(run: Run) -> str:
    msg = run.err.strip().splitlines()[-1] if run.err.strip() else ""
    msg = re.sub(r"^pipeline: error: ", "", msg)
    msg = re.sub(r"^job\.yaml line \d+: ", "", msg)   # the line of the generated job file
    return f"exit {run.code}: {msg}"


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"record {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"
