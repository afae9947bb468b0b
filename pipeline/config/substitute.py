"""Changes to the parsed job file before validation: ``--set`` overrides, ``${VAR}`` from the
environment, then ``${params.NAME}`` and ``${params.NAME:%Y/%m/%d}``.

``$${`` stands for a literal ``${``; it survives both substitutions.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any

import yaml

from pipeline.config.issues import Issue, did_you_mean, join_key, show
from pipeline.config.yaml_lines import parse_yaml

# --------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------

_SEGMENT_RE = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _parse_override_key(key: str) -> list[str | int] | None:
    parts: list[str | int] = []
    for segment in key.split("."):
        m = _SEGMENT_RE.fullmatch(segment.strip())
        if m is None:
            return None
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def parse_override(text: str) -> tuple[str, list[str | int], Any]:
    """``"run.workers=2"`` -> ("run.workers", ["run", "workers"], 2)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise Issue("--set", f"expected KEY=VALUE (for example output.path=/tmp/out), got {show(text)}")
    parts = _parse_override_key(key)
    if parts is None:
        raise Issue("--set", f"{show(key)} is not a key path; expected names separated by dots, "
                     "with [i] for list items (for example stages[0].filter)")
    try:
        value, _ = parse_yaml(value_text)
        if isinstance(value, str) and value_text.lstrip()[:1] in ("|", ">"):
            value = value_text.strip()  # a block scalar indicator alone: the user meant the text
    except Issue as e:
        raise Issue("--set", f"{key}: {e.message}") from None
    except yaml.YAMLError as e:
        if value_text.lstrip()[:1] in ("[", "{", '"', "'"):
            problem = getattr(e, "problem", None) or str(e)
            message = f"{key}: the value {show(value_text)} is not a valid YAML value ({problem})"
            raise Issue("--set", message) from None
        value = value_text.strip()  # text YAML cannot read plainly (`@x`, `a: b: c`) is taken as it is
    canonical = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))
    return canonical, parts, value


def apply_override(doc: dict, parts: list[str | int], value: Any, text: str) -> None:
    target: Any = doc
    walked = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(target, list):
                raise Issue("--set", f"{text}: {walked or '(top level)'} is not a list")
            if part > len(target) or (part == len(target) and not last):
                raise Issue("--set", f"{text}: {walked} has {len(target)} items, no item [{part}]")
            if last:
                if part == len(target):
                    target.append(value)
                else:
                    target[part] = value
                return
            if target[part] is None:
                target[part] = [] if isinstance(parts[i + 1], int) else {}
        else:
            if not isinstance(target, dict):
                raise Issue("--set", f"{text}: {walked or '(top level)'} is not a mapping")
            if last:
                target[part] = value
                return
            if target.get(part) is None:
                target[part] = [] if isinstance(parts[i + 1], int) else {}
        target = target[part]
        walked = join_key(walked, part)



# --------------------------------------------------------------------------------------------
# ${VAR} interpolation
# --------------------------------------------------------------------------------------------

_VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


_LITERAL = "\ue000{"   # stands for a literal "${" until ${params.x} are replaced, then becomes "${"


def _interpolate_str(text: str, env: Mapping[str, str], key: str) -> str:
    def replace(m: re.Match) -> str:
        if m.group(0) == "$${":
            return _LITERAL
        ref = _VAR_NAME.match(m.group(1))
        if ref is None:  # ${params.x} and other non-variable references stay as written
            return m.group(0)
        name, default = ref.group(1), ref.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise Issue(
                    key, f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                )
            return default
        return value

    return _VAR_RE.sub(replace, text)


def interpolate(data: Any, env: Mapping[str, str], path: str = "") -> Any:
    if isinstance(data, str):
        return _interpolate_str(data, env, path) if "$" in data else data
    if isinstance(data, dict):
        return {k: interpolate(v, env, join_key(path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, join_key(path, i)) for i, v in enumerate(data)]
    return data



# --------------------------------------------------------------------------------------------
# ${params.NAME} and ${params.NAME:%Y/%m/%d}
# --------------------------------------------------------------------------------------------

_PARAM_RE = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_DAY_WORD = re.compile(r"^(today|yesterday|tomorrow)(?:\s*([+-])\s*(\d+))?$", re.IGNORECASE)


def resolve_param_value(value: str, today: _dt.date | None = None) -> str:
    """``today``, ``yesterday``, ``today-7`` ... -> an ISO date (local time); anything else unchanged."""
    m = _DAY_WORD.match(value.strip())
    if not m:
        return value
    base = today or _dt.date.today()
    word, sign, days = m.group(1).lower(), m.group(2), int(m.group(3) or 0)
    base += _dt.timedelta(days={"today": 0, "yesterday": -1, "tomorrow": 1}[word])
    base += _dt.timedelta(days=days if sign == "+" else -days)
    return base.isoformat()


def _format_param(name: str, value: str, fmt: str, key: str) -> str:
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise Issue(key, f"parameter {name}={value!r} is not a date (YYYY-MM-DD), so it cannot be "
                          f"formatted as {fmt!r}") from None
    return when.strftime(fmt)


def _substitute_params(data: Any, values: Mapping[str, str], path: str = "") -> Any:
    if isinstance(data, str):
        if "${params." not in data:
            return data

        def replace(m: re.Match) -> str:
            name, fmt = m.group(1), m.group(2)
            if name not in values:
                known = ", ".join(sorted(values)) or "none"
                raise Issue(path, f"unknown parameter {name!r}{did_you_mean(name, list(values))}; "
                                   f"the job declares: {known}")
            return _format_param(name, values[name], fmt, path) if fmt else values[name]

        return _PARAM_RE.sub(replace, data)
    if isinstance(data, dict):
        return {k: (v if path == "" and k == "params" else _substitute_params(v, values, join_key(path, k)))
                for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_params(v, values, join_key(path, i)) for i, v in enumerate(data)]
    return data


def params_as_text(value: Any) -> Any:
    """params are strings; scalars written without quotes are turned into their text."""
    if not isinstance(value, Mapping):
        return value
    out = {}
    for k, v in value.items():
        if v is True or v is False:
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        out[k] = v
    return out


def apply_params(doc: dict, given: Mapping[str, str]) -> dict:
    declared = doc.get("params")
    if declared is None:
        declared = {}
    if not isinstance(declared, dict):
        return _unescape(doc)  # the model reports the wrong shape
    values = {str(k): v for k, v in params_as_text(declared).items()}
    if any(not isinstance(v, str) for v in values.values()):
        return _unescape(doc)  # the model reports values that are not scalars
    for name, value in given.items():
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise Issue("--param", f"unknown parameter {name!r}{did_you_mean(name, list(values))}; "
                                    f"the job declares: {known}")
        values[name] = value
    values = {k: resolve_param_value(_unescape(v)) for k, v in values.items()}
    doc = _unescape(_substitute_params(doc, values))
    if values:
        doc["params"] = values
    return doc


def _unescape(data: Any) -> Any:
    if isinstance(data, str):
        return data.replace(_LITERAL, "${") if _LITERAL in data else data
    if isinstance(data, dict):
        return {k: _unescape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_unescape(v) for v in data]
    return data

