"""``load_config``: read a job file, apply overrides and substitutions, validate it into a Job.

Every problem is an :class:`~pipeline.errors.ConfigError` naming the file, the YAML line and the
dotted key path (``stages[2].derive``, ``input.paths[0]``). Up to four problems are reported at
once, in the order of their lines.

Stage specs are validated by the stages themselves: the caller passes the stage registry
(``pipeline.stages.STAGES``) as ``stages``, so this layer does not import the stages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from pipeline.config.issues import Issue, join_key, show, suggest
from pipeline.config.models import INTERNAL_KEYS, MODEL_AT, Job, StageSpec, keys_of
from pipeline.config.substitute import apply_override, apply_params, interpolate, parse_override
from pipeline.config.yaml_lines import mark_line, parse_yaml
from pipeline.errors import ConfigError


class StageType(Protocol):
    """What validation needs of a registered stage (``pipeline.stages.StageDef`` is one)."""

    def validate_spec(self, value: Any) -> Any:
        """The typed spec of the value written; ValueError, TypeError or ConfigError if it is invalid."""
        ...


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _build_stages(
    raw: Any, lines: Mapping[str, int], registry: Mapping[str, StageType]
) -> tuple[list[StageSpec], list[Issue]]:
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [Issue("stages", f"expected a list of stages such as - filter: \"qty > 0\", got {show(raw)}")]
    specs: list[StageSpec] = []
    issues: list[Issue] = []
    for i, item in enumerate(raw):
        item_key = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            got = f"{len(item)} keys ({', '.join(map(str, item))})" if isinstance(item, dict) else show(item)
            issues.append(Issue(
                item_key,
                "expected a mapping with exactly one key, the stage name, such as "
                f"- filter: \"qty > 0\" or - select: [a, b]; got {got}",
            ))
            continue
        ((name, value),) = item.items()
        key = f"{item_key}.{name}"
        if name not in registry:
            issues.append(Issue(key, f"unknown stage {show(name)}{suggest(name, list(registry))}"))
            continue
        try:
            spec = registry[name].validate_spec(value)
        except ValidationError as e:
            issues.extend(_translate(e, prefix=key, lines=lines))
            continue
        except (ValueError, TypeError, ConfigError) as e:
            message = e.message if isinstance(e, ConfigError) else str(e)
            issues.append(Issue(key, message or f"invalid {name} stage"))
            continue
        specs.append(StageSpec(name=name, spec=spec, key=key, line=lines.get(key), raw=value))
    return specs, issues


def _type_word(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if value is True or value is False:
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _got(value: Any) -> str:
    """``a string "x"``, ``a list``: what was found instead."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return _type_word(value)
    return f"{_type_word(value)} {show(value)}"


def _plain_message(err: Mapping[str, Any], key: str) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = show(value)
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent, _, last = key.rpartition(".")
        model = MODEL_AT.get(parent)
        last = re.sub(r"\[\d+\]$", "", last)
        return "unknown key" + (suggest(last, keys_of(model)) if model else "")
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", "")
        return f"expected one of {expected}, got {got}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error") or err["msg"])
    if kind == "string_pattern_mismatch" and key == "name":
        return ("expected a name of letters, digits, '_', '.' and '-' that starts with a letter or digit, "
                f"got {got}")
    if kind == "string_type":
        return f"expected a string, got {_got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"expected a mapping, got {_got(value)}"
    if kind in ("tuple_type", "list_type", "iterable_type", "set_type"):
        return f"expected a list, got {_got(value)}"
    msg = str(err.get("msg", "invalid value"))
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def _translate(exc: ValidationError, prefix: str, lines: Mapping[str, int]) -> list[Issue]:
    issues = []
    for err in exc.errors(include_url=False):
        key = prefix
        for part in err["loc"]:
            if part == "[key]":
                continue
            key = join_key(key, part if isinstance(part, int) else str(part))
        issues.append(Issue(key or "(top level)", _plain_message(err, key)))
    return issues



# --------------------------------------------------------------------------------------------
# load_config
# --------------------------------------------------------------------------------------------


def _nearest_line(key: str, lines: Mapping[str, int]) -> int | None:
    while key:
        if key in lines:
            return lines[key]
        if key.endswith("]"):
            key = key[: key.rindex("[")]
        else:
            key = key.rpartition(".")[0]
    return lines.get("")


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith((prefix + ".", prefix + "["))


def load_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    *,
    stages: Mapping[str, StageType],
) -> Job:
    """Load, override, interpolate and validate a YAML job file.

    ``stages`` is the stage registry that validates each entry of ``stages:`` (``pipeline.stages.STAGES``).
    ``params`` (from ``--param name=value``) replace the defaults the job declares under
    ``params:``; ``${params.name}`` and ``${params.name:%Y/%m/%d}`` are then substituted.

    Raises ConfigError (exit code 78) naming the file, line and key path of the first problem.
    """
    file = str(path)
    env = os.environ if env is None else env
    config_path = Path(os.path.abspath(os.fspath(path)))
    base_dir = config_path.parent

    def error(issues: list[Issue], set_keys: Mapping[str, str] = {}) -> ConfigError:
        rendered = []
        for issue in issues:
            line = issue.line
            message = issue.message
            for set_key, text in set_keys.items():
                if issue.key != "--set" and _under(issue.key, set_key):
                    message += f" (from --set {text})"
                    break
            else:
                if line is None and issue.key != "--set":
                    line = _nearest_line(issue.key, lines)
            rendered.append((line, issue.key, message))
        order = sorted(range(len(rendered)), key=lambda i: (rendered[i][0] is None, rendered[i][0] or 0, i))
        first = rendered[order[0]]
        message = first[2]
        more = [rendered[i] for i in order[1:4]]
        for line, key, msg in more:
            message += f"\n  also {'line ' + str(line) + ': ' if line else ''}{key}: {msg}"
        if len(order) > 4:
            message += f"\n  and {len(order) - 4} more"
        return ConfigError(message, file=file, line=first[0], key=first[1])

    lines: dict[str, int] = {}
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError("the config file is not valid UTF-8 text", file=file, line=line) from None

    try:
        doc, lines = parse_yaml(text)
    except Issue as e:
        raise error([e]) from None
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
            f"expected a mapping (name:, input:, output:, ...) at the top level, got {_type_word(doc)}",
            file=file, line=1,
        )
    if doc:
        lines[""] = min(lines[k] for k in doc if k in lines)

    # --set overrides, on the parsed document
    set_keys: dict[str, str] = {}
    for text_ in overrides:
        try:
            canonical, parts, value = parse_override(text_)
            apply_override(doc, parts, value, text_)
        except Issue as e:
            raise error([e]) from None
        set_keys[canonical] = text_
        for k in [k for k in lines if _under(k, canonical)]:
            del lines[k]

    # ${VAR} interpolation, on the parsed values; then ${params.x}
    try:
        doc = interpolate(doc, env)
        doc = apply_params(doc, params or {})
    except Issue as e:
        raise error([e], set_keys) from None

    issues: list[Issue] = []
    for key in INTERNAL_KEYS:
        if key in doc:
            doc.pop(key)
            issues.append(Issue(key, "unknown key" + suggest(key, keys_of(Job))))
    stage_specs, stage_issues = _build_stages(doc.pop("stages", None), lines, stages)
    issues.extend(stage_issues)
    doc["stages"] = tuple(stage_specs)
    try:
        job = Job.model_validate(doc, context={"base_dir": base_dir})
    except ValidationError as e:
        issues.extend(i for i in _translate(e, "", lines) if not _under(i.key, "stages"))
        job = None
    if issues:
        raise error(issues, set_keys)
    assert job is not None
    return job.model_copy(update={"config_path": config_path, "base_dir": base_dir, "lines": dict(lines)})
