"""The job file as a YAML document: read, ``--set`` applied, ``${VAR}`` and ``${params.NAME}`` substituted.

This is the part of loading a job that needs neither pydantic nor pyarrow, so that ``pipeline run``
can find the output a job names, and take its lock, before the heavy imports and the validation
(``load.load_config`` validates a :class:`Document` into a ``Job``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.issues import Issue, type_word, under
from pipeline.config.substitute import apply_override, apply_params, interpolate, parse_override
from pipeline.config.yaml_lines import mark_line, parse_yaml
from pipeline.errors import ConfigError

DEFAULT_STATE_DIR = ".pipeline-state"   # the state store's folder, beside the job file, when run.state_dir is unset
JOB_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"   # a job's name; it is part of file names (locks, state)


@dataclass
class Document:
    """A job file's values before validation, with the YAML line of each key."""

    file: str                      # the path as given, for messages
    config_path: Path              # absolute
    values: dict[str, Any]
    lines: dict[str, int]
    set_keys: dict[str, str] = field(default_factory=dict)   # key path -> the --set that gave it

    @property
    def base_dir(self) -> Path:
        """Relative paths in the job file are relative to its folder."""
        return self.config_path.parent

    def error(self, issues: Sequence[Issue]) -> ConfigError:
        """One ConfigError for up to four issues, in the order of their lines, the first one's line and key
        in its context; an issue under a ``--set`` key says so instead of giving a line."""
        rendered = []
        for issue in issues:
            line = issue.line
            message = issue.message
            for set_key, text in self.set_keys.items():
                if issue.key != "--set" and under(issue.key, set_key):
                    message += f" (from --set {text})"
                    break
            else:
                if line is None and issue.key != "--set":
                    line = _nearest_line(issue.key, self.lines)
            rendered.append((line, issue.key, message))
        order = sorted(range(len(rendered)), key=lambda i: (rendered[i][0] is None, rendered[i][0] or 0, i))
        first = rendered[order[0]]
        message = first[2]
        more = [rendered[i] for i in order[1:4]]
        for line, key, msg in more:
            message += f"\n  also {'line ' + str(line) + ': ' if line else ''}{key}: {msg}"
        if len(order) > 4:
            message += f"\n  and {len(order) - 4} more"
        return ConfigError(message, file=self.file, line=first[0], key=first[1])

    def state_dir(self) -> str | None:
        """``run.state_dir`` resolved as the validated job will have it (``.pipeline-state/`` beside
        the job file when it is not set), or None when it is not a string yet."""
        run = self.values.get("run", {})
        state = run.get("state_dir") if isinstance(run, dict) else None
        if state is None:
            return os.path.join(str(self.base_dir), DEFAULT_STATE_DIR)
        if not isinstance(state, str) or not state.strip():
            return None
        return resolve(state, self.base_dir)

    def output_path(self) -> str | None:
        """``output.path`` resolved as the validated job will have it, or None when it is not a string
        yet (validation then says what is wrong)."""
        output = self.values.get("output")
        path = output.get("path") if isinstance(output, dict) else None
        if not isinstance(path, str) or not path.strip():
            return None
        return resolve(path, self.base_dir)


def read_document(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> Document:
    """Read a job file, apply ``--set`` overrides, then ``${VAR}`` and ``${params.NAME}``.

    Raises ConfigError (exit code 78) naming the file, line and key path of the problem.
    """
    file = str(path)
    env = os.environ if env is None else env
    config_path = Path(os.path.abspath(os.fspath(path)))
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError("the config file is not valid UTF-8 text", file=file, line=line) from None

    document = Document(file, config_path, {}, {})
    try:
        doc, document.lines = parse_yaml(text)
    except Issue as e:
        raise document.error([e]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        detail = "; ".join(p for p in (e.context, e.problem) if p)
        at = mark_line(mark)
        if at and "${" in "".join(text.splitlines()[max(0, at - 2):at]):
            # [${DATA}/x.csv] reads as a list holding a mapping: the substitution must be quoted
            detail += '; a ${VAR} inside [ ] or { } must be quoted, as in paths: ["${DATA}/in.csv"]'
        raise ConfigError(f"invalid YAML: {detail}", file=file, line=at) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise ConfigError(f"invalid YAML: character {e.character!r} is not allowed", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file) from None

    if doc is None:
        raise ConfigError("the config file is empty; expected a mapping with name, input and output", file=file, line=1)
    if not isinstance(doc, dict):
        raise ConfigError(
            f"expected a mapping (name:, input:, output:, ...) at the top level, got {type_word(doc)}",
            file=file, line=1,
        )
    lines = document.lines
    if doc:
        lines[""] = min(lines[k] for k in doc if k in lines)

    # --set overrides, on the parsed document
    for text_ in overrides:
        try:
            canonical, parts, value = parse_override(text_)
            apply_override(doc, parts, value, text_)
        except Issue as e:
            raise document.error([e]) from None
        document.set_keys[canonical] = text_
        for k in [k for k in lines if under(k, canonical)]:
            del lines[k]

    # ${VAR} interpolation, on the parsed values; then ${params.x}
    try:
        doc = interpolate(doc, env)
        doc = apply_params(doc, params or {})
    except Issue as e:
        raise document.error([e]) from None
    document.values = doc
    return document


def resolve(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    """A path of the job file: relative to the file's folder (``base_dir``); a URL is kept as it is,
    a ``file://`` URL is its local path."""
    if path.startswith("file://"):
        path = path[len("file://"):]  # a local path
    elif "://" in path:
        return path
    path = os.path.expanduser(path)
    if base_dir is not None and not os.path.isabs(path):
        path = os.path.join(str(base_dir), path)
    return os.path.normpath(path) if os.path.isabs(path) else path


def _nearest_line(key: str, lines: Mapping[str, int]) -> int | None:
    while key:
        if key in lines:
            return lines[key]
        if key.endswith("]"):
            key = key[: key.rindex("[")]
        else:
            key = key.rpartition(".")[0]
    return lines.get("")
