"""`pipeline schema`: the JSON Schema (draft 2020-12) of the job file, from the config models.

The schema is generated, never written by hand: the pydantic models of the job file give the
sections and keys (with their ``Field`` descriptions), and the stage registry gives one entry per
stage with the schema of its spec. A copy is committed as ``schema/job.schema.json``; editors that
read the ``# yaml-language-server: $schema=...`` line complete and check keys with it.

The schema describes the file as written, before ``${VAR}`` and ``${params.NAME}`` are replaced,
so wherever a number, a boolean or one of a list of words is expected, a string holding ``${``
is accepted too. Checks that need the data or the environment (globs, columns, expressions) are
left to ``pipeline validate``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://github.com/pipeline/pipeline/schema/job.schema.json"
_REF = "#/$defs/{model}"
# a value that is replaced from the environment or from params before validation
_INTERPOLATED = {"type": "string", "pattern": r"\$\{", "description": "replaced by ${VAR} or ${params.NAME}"}
_SCALAR_TYPES = {"integer", "number", "boolean", "null"}


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file, as a plain dict (JSON-serialisable, keys in a stable order)."""
    from pipeline.config.models import INTERNAL_KEYS, Job
    from pipeline.stages import STAGES

    schema = Job.model_json_schema(mode="validation", by_alias=True, ref_template=_REF)
    defs: dict[str, Any] = schema.pop("$defs", {})
    props: dict[str, Any] = schema["properties"]
    for key in INTERNAL_KEYS:
        props.pop(key, None)
    schema["required"] = [k for k in schema.get("required", []) if k in props]
    defs.pop("StageSpec", None)

    items = []
    for name, sdef in STAGES.items():
        spec = sdef.adapter.json_schema(mode="validation", ref_template=_REF)
        for def_name, definition in spec.pop("$defs", {}).items():
            if def_name in defs and defs[def_name] != definition:
                raise AssertionError(f"two definitions named {def_name} in the job schema")
            defs[def_name] = definition
        spec.pop("title", None)
        item: dict[str, Any] = {
            "title": name,
            "type": "object",
            "properties": {name: spec},
            "required": [name],
            "additionalProperties": False,
        }
        if sdef.doc:
            item["description"] = sdef.doc.split("\n\n")[0].replace("\n", " ")
        items.append(item)
    stages = {
        "type": "array",
        "description": props.get("stages", {}).get("description", ""),
        "items": {"oneOf": items},
        "default": [],
    }
    props["stages"] = stages

    # sections that may be left empty (`run:` with every line commented out) mean their defaults
    for path in _empty_sections():
        target = _property(schema, defs, path)
        target_copy = copy.deepcopy(target)
        description = target_copy.pop("description", None)
        default = target_copy.pop("default", None)
        target.clear()
        if description:
            target["description"] = description
        if default is not None:
            target["default"] = default
        target["anyOf"] = [target_copy, {"type": "null"}]

    out: dict[str, Any] = {"$schema": DRAFT, "$id": SCHEMA_ID}
    out.update(schema)
    out["$defs"] = dict(sorted(defs.items()))
    return _allow_interpolation(out)


def _empty_sections() -> list[str]:
    """Key paths of the sections an empty value (null) stands for the defaults of."""
    from pydantic import BaseModel

    from pipeline.config.models import Job
    from pipeline.config.values import EmptyIsDefault

    found = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = info.alias or name
            if EmptyIsDefault in info.metadata:
                found.append(prefix + key)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, prefix + key + ".")

    walk(Job, "")
    return found


def _property(schema: dict, defs: dict, path: str) -> dict:
    """The schema of ``input.csv`` (a dotted key path), following $refs into defs."""
    node = schema
    for part in path.split("."):
        node = _deref(node, defs)["properties"][part]
    return node


def _deref(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    for option in node.get("anyOf", ()):  # Optional[Model]
        if "$ref" in option or "properties" in option:
            return _deref(option, defs)
    return node


def _allow_interpolation(node: Any, value: bool = False) -> Any:
    """Where a number, boolean or fixed word is expected, also accept a string with ``${``.

    ``value`` is true for the schema of a value (a property, an item, a map value). Property
    schemas lose pydantic's automatic titles (the key is the title).
    """
    if isinstance(node, list):
        return [_allow_interpolation(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, sub in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: _allow_interpolation(v, True) for k, v in sub.items()}
        elif key == "$defs":
            out[key] = {k: _allow_interpolation(v) for k, v in sub.items()}
        elif key in ("items", "additionalProperties") and isinstance(sub, dict):
            out[key] = _allow_interpolation(sub, True)
        elif key in ("anyOf", "oneOf", "prefixItems"):
            out[key] = [_allow_interpolation(v) for v in sub]
        else:
            out[key] = sub
    if not value:
        return out
    if "title" in out and "properties" not in out:
        del out["title"]
    if _takes_text(out) or not _takes_scalar(out):
        return out
    notes = {k: out.pop(k) for k in ("description", "default", "examples") if k in out}
    options = out["anyOf"] if list(out) == ["anyOf"] else [out]
    return {**notes, "anyOf": [*options, dict(_INTERPOLATED)]}


def _takes_text(node: dict) -> bool:
    """Whether any string is valid here (so a ``${...}`` one is, too)."""
    if node.get("type") == "string" and not ({"enum", "const", "pattern", "format"} & node.keys()):
        return True
    return any(_takes_text(option) for option in node.get("anyOf", ()))


def _takes_scalar(node: dict) -> bool:
    if "enum" in node or "const" in node or node.get("type") in ("integer", "number", "boolean"):
        return True
    return any(_takes_scalar(option) for option in node.get("anyOf", ()))


def schema_text() -> str:
    """The schema as committed in schema/job.schema.json."""
    return json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"


def print_schema() -> int:
    print(schema_text(), end="")
    return 0
