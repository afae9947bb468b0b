"""`pipeline completion bash|zsh` and `pipeline --version`."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version

import pytest

from tests.helpers import run_cli


def _script(shell: str, capsys) -> str:
    code, out, err = run_cli("completion", shell, capsys=capsys)
    assert code == 0 and err == ""
    return out


def _complete(script_path, words: list[str], cwd=None) -> list[str]:
    """What bash offers for the last of ``words`` (the function that `complete -F` registered)."""
    line = " ".join(words)
    program = (
        f"source {script_path}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}; COMP_POINT={len(line)}\n"
        "fn=$(complete -p pipeline | sed -E 's/.*-F ([^ ]+) .*/\\1/')\n"
        "$fn pipeline \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd, timeout=30)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completion_is_valid_and_completes_commands_and_options(tmp_path, capsys):
    path = tmp_path / "pipeline.bash"
    path.write_text(_script("bash", capsys))
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    from pipeline.cli import _parser

    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    assert set(_complete(path, ["pipeline", ""])) == set(commands)
    assert _complete(path, ["pipeline", "val"]) == ["validate"]
    assert set(_complete(path, ["pipeline", "run", "--log-f"])) == {"--log-format", "--log-file"}
    assert set(_complete(path, ["pipeline", "run", "x.yaml", "--log-format", ""])) == {"text", "json"}
    assert _complete(path, ["pipeline", "completion", "z"]) == ["zsh"]
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "nightly.yaml").write_text("")
    assert _complete(path, ["pipeline", "validate", "jobs/ni"], cwd=tmp_path) == ["jobs/nightly.yaml"]


def test_zsh_completion_script(tmp_path, capsys):
    script = _script("zsh", capsys)
    assert script.startswith("#compdef pipeline")
    assert "validate" in script and "--log-format" in script
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed here; the script's text was checked")
    path = tmp_path / "_pipeline"
    path.write_text(script)
    assert subprocess.run(["zsh", "-n", str(path)], capture_output=True).returncode == 0


def test_completion_needs_a_known_shell(capsys):
    code, _out, err = run_cli("completion", "fish", capsys=capsys)
    assert code == 2 and "invalid choice" in err


def test_version_is_the_installed_package_version(capsys):
    code, out, _err = run_cli("--version", capsys=capsys)
    assert code == 0 and out.strip() == f"pipeline {version('pipeline')}"
