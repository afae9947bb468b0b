"""The README and docs/ stay true: their job files validate, their commands run, the crontab line
works as cron runs it, the generated reference and schema are current, and links resolve.

Fenced blocks are told apart by their info string:
- ```` ```yaml ````: a whole job file; ```` ```yaml fragment ````: part of one (merged into a minimal
  job); ```` ```yaml stages ````: one stage or a list of stages. All must load and validate.
- ```` ```sh ````: commands that run on the demo data, from the top of a checkout; run here in a
  scratch copy. ```` ```sh no-run ````: commands that install or take long (make, pipx, bench).
- ```` ```crontab ````: the crontab recipe; its command is run as cron would.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.config import load_config
from pipeline.config.yaml_lines import parse_yaml
from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
MINIMAL_JOB = {"name": "doc-example", "input": {"paths": ["data/*.csv"]}, "output": {"path": "out"}}


def _blocks(kind: str) -> list[tuple[str, str, str]]:
    """(doc:line, info string, text) of every fenced block whose info string starts with ``kind``."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            info = m.group(1).strip()
            if info.split(" ")[0] == kind:
                line = text[: m.start()].count("\n") + 1
                found.append((f"{doc.relative_to(ROOT)}:{line}", info, m.group(2)))
    return found


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _job_text(info: str, text: str) -> str:
    """The block as a whole job file."""
    words = info.split()[1:]
    if not words:
        return text
    data = yaml.safe_load(text)
    if "stages" in words:
        stages = data if isinstance(data, list) else [data]
        return yaml.safe_dump({**MINIMAL_JOB, "stages": stages}, sort_keys=False)
    if "fragment" in words:
        return yaml.safe_dump(_merge(MINIMAL_JOB, data or {}), sort_keys=False)
    raise AssertionError(f"unknown yaml block kind {info!r}")


YAML_BLOCKS = _blocks("yaml")


def test_the_docs_have_yaml_blocks_of_every_kind():
    kinds = {tuple(info.split()[1:]) for _, info, _ in YAML_BLOCKS}
    assert kinds == {(), ("fragment",), ("stages",)}


@pytest.fixture(scope="module")
def job_validator():
    schema = json.loads((ROOT / "schema" / "job.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("where,info,text", YAML_BLOCKS, ids=[b[0] for b in YAML_BLOCKS])
def test_yaml_blocks_load_and_validate(where, info, text, tmp_path, job_validator):
    config = tmp_path / "configs" / "job.yaml"
    config.parent.mkdir()
    config.write_text(_job_text(info, text), encoding="utf-8")
    job = load_config(config, env={}, stages=STAGES)  # raises ConfigError naming the line and key
    assert job.name
    data, _ = parse_yaml(config.read_text(encoding="utf-8"))
    errors = sorted(job_validator.iter_errors(data), key=str)
    assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"


# --------------------------------------------------------------------------------------------
# Commands, in a scratch checkout with the demo data
# --------------------------------------------------------------------------------------------


def _scratch_checkout(path: Path) -> Path:
    """configs/, schema/ and the demo data, and a .venv/bin with this interpreter's `pipeline`."""
    path.mkdir(parents=True)
    shutil.copytree(ROOT / "configs", path / "configs", ignore=shutil.ignore_patterns(".pipeline-state"))
    shutil.copytree(ROOT / "schema", path / "schema")
    venv_bin = path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = Path(sys.executable).parent / "pipeline"
    assert script.exists(), "the pipeline command is not installed beside this interpreter"
    (venv_bin / "pipeline").symlink_to(script)
    (venv_bin / "python").symlink_to(sys.executable)
    subprocess.run([sys.executable, "-m", "pipeline.demo", "data"], cwd=path, check=True,
                   capture_output=True, timeout=300)
    return path


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return _scratch_checkout(tmp_path_factory.mktemp("home") / "pipeline")


SH_BLOCKS = [b for b in _blocks("sh") if "no-run" not in b[1].split()]


def test_the_docs_have_commands_to_run():
    assert len(SH_BLOCKS) >= 2


@pytest.mark.parametrize("where,info,text", SH_BLOCKS, ids=[b[0] for b in SH_BLOCKS])
def test_sh_blocks_run_on_the_demo_data(where, info, text, checkout):
    done = subprocess.run(["bash", "-e", "-c", text], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


def _crontab_command() -> str:
    ((where, _, text),) = _blocks("crontab")
    entries = [line for line in text.splitlines() if line.strip() and not line.startswith("#")
               and not re.match(r"^[A-Z_]+=", line)]
    assert len(entries) == 1, f"{where}: expected one crontab entry"
    return entries[0].split(None, 5)[5]


def _as_cron(command: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """As cron runs a command: /bin/sh, an empty environment but HOME, LOGNAME, SHELL and PATH."""
    return subprocess.run(
        ["env", "-i", f"HOME={home}", "LOGNAME=cron", "SHELL=/bin/sh", "PATH=/usr/bin:/bin",
         "/bin/sh", "-c", command],
        cwd=cwd, capture_output=True, text=True, timeout=300)


def test_crontab_recipe_runs_as_cron_would(tmp_path):
    home = tmp_path / "home"
    repo = _scratch_checkout(home / "pipeline")
    assert not (repo / "logs").exists()
    # the recipe runs for yesterday: the day's file has arrived (a copy of a demo day)
    yesterday = subprocess.run(["env", "-i", "/bin/date", "-d", "yesterday", "+%Y-%m-%d"],
                               capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(repo / "data" / "raw" / "sales-2026-11-01.csv", repo / "data" / "raw" / f"sales-{yesterday}.csv")
    command = _crontab_command()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    done = _as_cron(command, home, elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr == "", "a good night must print nothing (cron mails any output)"
    day = dt.date.fromisoformat(yesterday)
    out = repo / "data" / "out" / "daily" / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
    assert (out / "_SUCCESS").exists()
    log_lines = [json.loads(line) for line in (repo / "logs" / "sales-by-day.log").read_text().splitlines()]
    assert log_lines and all(entry["job"] == "sales-by-day" for entry in log_lines)
    assert "succeeded" in (repo / "logs" / "sales-by-day.out").read_text()

    # a night whose file has not arrived: one line, which cron mails
    (repo / "data" / "raw" / f"sales-{yesterday}.csv").unlink()
    done = _as_cron(command, home, elsewhere)
    assert done.returncode == 0
    assert done.stdout == "sales-by-day failed with exit 78; see logs/sales-by-day.out\n"
    assert "no file matches" in (repo / "logs" / "sales-by-day.out").read_text()


# --------------------------------------------------------------------------------------------
# Generated and copied content is current; the README stays a map
# --------------------------------------------------------------------------------------------


def test_configuration_reference_is_current():
    from pipeline.commands.reference import reference_text

    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == reference_text(), "docs/configuration.md is out of date: run `make docs`"


def test_configuration_reference_describes_every_key():
    from pipeline.commands.schema import job_schema

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    schema = job_schema()
    missing = []

    def walk(node: dict, prefix: str) -> None:
        for key, prop in node.get("properties", {}).items():
            full = prefix + key
            if f"| `{full}` |" not in text:
                missing.append(full)
            options = [prop, *prop.get("anyOf", ())]
            refs = [o["$ref"] for o in options if "$ref" in o]
            named = [o["additionalProperties"]["$ref"] for o in options
                     if isinstance(o.get("additionalProperties"), dict) and "$ref" in o["additionalProperties"]]
            for ref, below in [(r, full + ".") for r in refs] + [(r, full + ".<name>.") for r in named]:
                target = schema["$defs"][ref.rsplit("/", 1)[1]]
                if "properties" in target:
                    walk(target, below)

    walk(schema, "")
    assert not missing, missing


def test_performance_table_is_the_last_bench_run():
    """docs/performance.md and the README show the first table of bench/results.md, less any target columns."""

    def table(text: str) -> list[list[str]]:
        lines = text.split("\n\n| ", 1)[1].split("\n\n", 1)[0]
        rows = [[c.strip() for c in ("| " + line if i == 0 else line).split("|")[1:-1]]
                for i, line in enumerate(lines.splitlines())]
        keep = [i for i, name in enumerate(rows[0]) if name not in ("target", "met")]
        return [[row[i] for i in keep] for row in rows if not set("".join(row)) <= set("-: ")]

    bench = table((ROOT / "bench" / "results.md").read_text())
    docs = table((ROOT / "docs" / "performance.md").read_text())
    assert len(bench) > 1 and docs == bench, "copy the table of bench/results.md into docs/performance.md"
    readme = table((ROOT / "README.md").read_text().split("\n## Performance\n", 1)[1])
    assert readme == bench, "copy the table of bench/results.md into the README's Performance section"


def test_readme_is_a_short_map():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350
    text = "\n".join(lines)
    from pipeline.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"pipeline {name}" in text, f"the README's commands do not show `pipeline {name}`"
    from pipeline import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EX_") and isinstance(v, int)}
    table = re.findall(r"^\| (\d+)(?: / (\d+))? \|", text, re.MULTILINE)
    shown = {int(c) for pair in table for c in pair if c}
    assert codes <= shown, f"exit codes missing from the README table: {sorted(codes - shown)}"


def test_stages_doc_has_a_section_for_every_stage():
    from pipeline.stages import STAGES

    text = (ROOT / "docs" / "stages.md").read_text(encoding="utf-8")
    missing = [name for name in STAGES if f"\n## {name}\n" not in text]
    assert not missing, f"docs/stages.md has no section for: {missing}"


def _anchors(path: Path) -> set[str]:
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6} (.*)", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(title.replace(" ", "-"))
    return out


def test_links_between_the_docs_resolve():
    broken = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_make_run_date_says_the_tools_exit_code(tmp_path):
    """make exits 2 when a command fails; the target prints the tool's own code (78: no file that day)."""
    repo = _scratch_checkout(tmp_path / "pipeline")
    shutil.copy(ROOT / "Makefile", repo / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / ".venv" / ".installed").touch()      # the venv is there, newer than pyproject.toml
    (repo / "data" / ".demo-data").touch()       # and so is the demo data
    done = subprocess.run(["make", "--no-print-directory", "run-date", "DATE=2026-11-09"], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "no file matches" in done.stderr and "pipeline exited with 78" in done.stderr
    done = subprocess.run(["make", "--no-print-directory", "run-date", "DATE=2026-11-02"], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pipeline exited" not in done.stderr and "succeeded" in done.stdout


def test_the_manifest_fields_in_the_docs_are_those_written(tmp_path):
    from tests.helpers import basic_job, manifest_of, run_cli, write_job

    (tmp_path / "in.csv").write_text("id,v\n1,a\n2,b\n")
    job = basic_job("in.csv", run={"on_bad_rows": "quarantine"})
    assert run_cli("run", write_job(tmp_path, job), "--no-progress")[0] == 0
    manifest = manifest_of(tmp_path / "out")
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    section = text[text.index("- **`_manifest.json`**"): text.index("- **`_SUCCESS`**")]
    named = set(re.findall(r"`\{?([a-z_]+)", section)) | {
        word for group in re.findall(r"`\{([^}`]*)\}`", section) for word in re.findall(r"[a-z_]+", group)}
    expected = set(manifest) | set(manifest["runs"][0]) | set(manifest["inputs"][0]) | set(manifest["files"][0])
    expected |= set(manifest["counts"]) | set(manifest["rejects"]) | {k for c in manifest["schema"] for k in c}
    assert expected <= named, f"docs/data.md does not describe: {sorted(expected - named)}"
