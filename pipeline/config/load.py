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
from typing import Any, Protocol

from pydantic import ValidationError

from pipeline.config.document import Document, read_document
from pipeline.config.issues import Issue, join_key, show, suggest, type_word, under
from pipeline.config.models import INTERNAL_KEYS, MODEL_AT, Job, StageSpec, keys_of
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


def _got(value: Any) -> str:
    """``a string "x"``, ``a list``: what was found instead."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return type_word(value)
    return f"{type_word(value)} {show(value)}"


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


def load_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    *,
    stages: Mapping[str, StageType],
    document: Document | None = None,
) -> Job:
    """Load, override, interpolate and validate a YAML job file.

    ``stages`` is the stage registry that validates each entry of ``stages:`` (``pipeline.stages.STAGES``).
    ``params`` (from ``--param name=value``) replace the defaults the job declares under
    ``params:``; ``${params.name}`` and ``${params.name:%Y/%m/%d}`` are then substituted.

    ``document``, when given, is the job file already read (``read_document``) with these
    overrides, environment and params.

    Raises ConfigError (exit code 78) naming the file, line and key path of the first problem.
    """
    document = read_document(path, overrides, env, params) if document is None else document
    doc, lines = document.values, document.lines
    issues: list[Issue] = []
    for key in INTERNAL_KEYS:
        if key in doc:
            doc.pop(key)
            issues.append(Issue(key, "unknown key" + suggest(key, keys_of(Job))))
    stage_specs, stage_issues = _build_stages(doc.pop("stages", None), lines, stages)
    issues.extend(stage_issues)
    doc["stages"] = tuple(stage_specs)
    try:
        job = Job.model_validate(doc, context={"base_dir": document.base_dir})
    except ValidationError as e:
        issues.extend(i for i in _translate(e, "", lines) if not under(i.key, "stages"))
        job = None
    if issues:
        raise document.error(issues)
    assert job is not None
    return job.model_copy(update={"config_path": document.config_path, "base_dir": document.base_dir,
                                  "lines": dict(lines)})
