"""`pipeline report`: one self-contained HTML page, its figures checked against the state store,
the manifest and DuckDB over ``_rejects/``, and the page checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest

from tests.helpers import basic_job, manifest_of, run_cli, write_job

CHROMIUM = "/usr/bin/chromium"


def _job(tmp_path: Path) -> Path:
    lines = []
    for i in range(3000):
        if i % 500 == 7:
            lines.append(f"{i},oops,{i % 5}")          # not an int: a read reject
        elif i % 400 == 3:
            lines.append(f"{i},{i * 2},")              # empty group: a validate reject
        else:
            lines.append(f"{i},{i * 3},{i % 5}")
    (tmp_path / "in.csv").write_text("id,v,g\n" + "\n".join(lines) + "\n")
    job = basic_job("in.csv", name="reported", input={"chunk_bytes": 4000, "schema": {"v": "int64"}},
                    stages=[{"filter": "v % 2 == 0"}, {"validate": {"not_null": ["g"]}}],
                    run={"workers": 2, "on_bad_rows": "quarantine", "max_bad_rows": 1000})
    return write_job(tmp_path, job)


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _parse(path: Path) -> _Elements:
    page = _Elements()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _runs(tmp_path: Path) -> list[dict]:
    db = sqlite3.connect(tmp_path / ".pipeline-state" / "state.db")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started DESC")]
    db.close()
    return rows


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A job run three times (a success, a failure, a success), and its report."""
    tmp_path = tmp_path_factory.mktemp("report")
    config = _job(tmp_path)
    assert run_cli("run", config, "--no-progress")[0] == 0
    assert run_cli("run", config, "--no-progress", "--set", "run.max_bad_rows=1")[0] == 65
    assert run_cli("run", config, "--no-progress")[0] == 0
    page = tmp_path / "page.html"
    assert run_cli("report", config, "-o", page)[0] == 0
    return tmp_path, config, page


def test_report_figures_match_the_state_store_manifest_and_rejects(reported):
    tmp_path, _config, page_path = reported
    page = _parse(page_path)
    runs = _runs(tmp_path)
    last = runs[0]
    manifest = manifest_of(tmp_path / "out")
    assert manifest["run_id"] == last["run_id"]

    html = page_path.read_text(encoding="utf-8")
    rows_svg = re.search(r'<svg[^>]*id="chart-rows".*?</svg>', html, re.S).group(0)
    shown = {m.group(1): int(m.group(2)) for m in re.finditer(r'data-label="(\w+)" data-value="(\d+)"', rows_svg)}
    assert shown == {k: last[f"rows_{k}"] for k in ("read", "written", "filtered", "rejected")}
    assert shown == {k: manifest["counts"][f"rows_{k}"] for k in shown}
    assert shown["rejected"] > 0 and shown["filtered"] > 0

    # one bar a chunk, on the worker processes that did them
    chunks = page.find("rect", "chunk")
    assert len(chunks) == manifest["chunks"] > 2
    assert {c["data-chunk"] for c in chunks} == set(_chunk_ids(tmp_path, last["run_id"]))
    assert len({c["data-pid"] for c in chunks}) == 2
    assert all(float(c["data-value"]) > 0 and float(c["width"]) > 0 for c in chunks)

    # rejects by stage and reason, against DuckDB over the _rejects files
    files = [str(tmp_path / "out" / f["path"]) for f in manifest["rejects"]["files"]]
    expected = duckdb.sql(f"SELECT stage, reason, count(*) FROM read_parquet({files}) GROUP BY ALL").fetchall()
    groups = page.find("tr", "reject-group")
    assert sorted((g["data-stage"], int(g["data-value"])) for g in groups) == sorted((s, n) for s, _, n in expected)
    assert {s for s, _, _ in expected} == {"read", "stages[1].validate"}
    for _, reason, _ in expected:
        assert reason in "".join(page.text)
    raw = duckdb.sql(f"SELECT raw FROM read_parquet({files}) LIMIT 1").fetchall()[0][0]
    assert raw in "".join(page.text)

    # the output schema, as the manifest has it
    columns = [t for t, a in page.tags if t == "tr" and a.get("class") == "column"]
    assert len(columns) == len(manifest["schema"])
    for col in manifest["schema"]:
        assert f"<code>{col['name']}</code></td><td>{col['type']}</td>" in html

    # the history: every run, the failure marked
    for chart in ("chart-history-duration", "chart-history-rows"):
        svg = re.search(rf'<svg[^>]*id="{chart}".*?</svg>', html, re.S).group(0)
        shown_runs = re.findall(r'data-run="([^"]+)" data-status="([^"]+)"', svg)
        assert shown_runs == [(r["run_id"], r["status"]) for r in reversed(runs)]
        assert svg.count('class="failed"') == 1
    read = re.findall(r'data-status="[^"]+" data-value="(\d+)"',
                      re.search(r'<svg[^>]*id="chart-history-rows".*?</svg>', html, re.S).group(0))
    assert [int(n) for n in read] == [r["rows_read"] or 0 for r in reversed(runs)]
    failed = runs[1]
    assert failed["status"] == "failed" and failed["error"].splitlines()[0] in html.replace("&#x27;", "'")

    # self-contained: nothing to fetch, no script
    assert "<script" not in html and "<link" not in html and "src=" not in html
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {"http://www.w3.org/2000/svg"}


def _chunk_ids(tmp_path: Path, run_id: str) -> set[str]:
    db = sqlite3.connect(tmp_path / ".pipeline-state" / "state.db")
    ids = {r[0] for r in db.execute("SELECT chunk_id FROM chunks WHERE run_id=?", (run_id,))}
    db.close()
    return ids


def test_report_of_the_output_directory_is_the_same_page(reported, capsys):
    tmp_path, _config, page_path = reported
    other = tmp_path / "from-output.html"
    code, out, err = run_cli("report", tmp_path / "out", "-o", other, capsys=capsys)
    assert code == 0, err
    assert str(other) in out
    strip = re.compile(r"report made [^<]*")

    def body(path):
        return strip.sub("", path.read_text(encoding="utf-8").replace(str(tmp_path / "out"), "OUT")
                         .replace("out</code>", "OUT</code>"))
    assert body(other) == body(page_path)


def test_report_errors(tmp_path, capsys):
    code, _out, err = run_cli("report", tmp_path / "nothing-here", capsys=capsys)
    assert code == 78 and "neither a job file nor an output directory" in err
    config = _job(tmp_path)
    code, _out, err = run_cli("report", config, capsys=capsys)
    assert code == 65 and "nothing to report" in err


MEASURE = """
<script>
window.addEventListener("load", () => {
  const charts = [...document.querySelectorAll("svg.chart")].map(svg => {
    const shapes = [...svg.querySelectorAll("rect, polyline")].filter(el => {
      const box = el.getBBox(); return box.width > 0 && box.height > 0; });
    const box = svg.getBoundingClientRect();
    return {id: svg.id, shapes: shapes.length, width: box.width, height: box.height};
  });
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(charts);
  document.body.appendChild(out);
});
</script>
"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Chromium is not installed (apt-get install chromium); the page is not checked in a browser")
def test_report_renders_in_headless_chromium(reported, tmp_path):
    _, _, page_path = reported
    html = page_path.read_text(encoding="utf-8")
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    done = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", measured_page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    charts = {c["id"]: c for c in json.loads(found.group(1).replace("&quot;", '"'))}
    assert set(charts) == {"chart-rows", "chart-timeline", "chart-throughput", "chart-rejects",
                           "chart-history-duration", "chart-history-rows"}
    for c in charts.values():
        assert c["width"] > 100 and c["height"] > 20 and c["shapes"] > 0, c
    assert charts["chart-rows"]["shapes"] == 4
    assert charts["chart-history-duration"]["shapes"] == 3
    assert charts["chart-timeline"]["shapes"] == html.count('class="chunk"')

    shot = tmp_path / "report.png"
    done = _chromium(tmp_path, "--window-size=900,1800", f"--screenshot={shot}", page_path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.rmtree(tmp_path / "profile-0", ignore_errors=True)
