"""YAML with line numbers: a safe loader that builds plain data and records the line of every key.

``parse_yaml(text)`` returns the data and ``{"stages[2].derive": 14, ...}``; the key paths are
the ones error messages name.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from pipeline.config.issues import Issue, join_key, show

MAX_NODES = 1_000_000  # values in one document after alias expansion

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"

_INT_RE = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_RE = re.compile(r"^(?:true|false)$", re.IGNORECASE)
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class LineLoader(yaml.SafeLoader):
    """A SafeLoader that builds plain data and records the line of every key and list item.

    Only plain YAML is accepted: strings, integers, floats, ``true``/``false``, null, lists and
    mappings (with ``<<`` merges). Any other tag is refused without being constructed. Booleans
    are only ``true``/``false`` in any case, so ``NO``, ``yes``, ``on`` stay strings; dates stay
    strings; ``010`` is ten; ``1:30`` is a string. Duplicate keys in a mapping are refused.
    """

    yaml_implicit_resolvers = {}  # noqa: RUF012  (no resolvers inherited from SafeLoader; added below)

    def __init__(self, stream):
        super().__init__(stream)
        self.lines: dict[str, int] = {}
        self._count = 0

    def build(self, node: yaml.Node | None, path: str = "") -> Any:
        """The data of a composed node; lines are recorded under ``path``."""
        if node is None:
            return None
        return self._build(node, path, set())

    def _build(self, node: yaml.Node, path: str, active: set[int]) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise Issue(path, f"document too large: more than {MAX_NODES} values (alias expansion?)", _line(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in active:
            raise Issue(path, "recursive alias: a value contains itself", _line(node))
        active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    raise self._bad_tag(node, path)
                out = []
                for i, item in enumerate(node.value):
                    item_path = join_key(path, i)
                    self.lines.setdefault(item_path, _line(item))
                    out.append(self._build(item, item_path, active))
                return out
            if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
                raise self._bad_tag(node, path)
            return self._mapping(node, path, active)
        finally:
            active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str, active: set[int]) -> dict:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                continue
            key = self._key(key_node, path)
            if key in seen:
                raise Issue(
                    join_key(path, key),
                    f"duplicate key {show(key)} (first at line {seen[key]}, again at line {_line(key_node)})",
                    _line(key_node),
                )
            seen[key] = _line(key_node)
        try:
            self.flatten_mapping(node)  # resolves `<<` merges; explicit keys win
        except yaml.MarkedYAMLError as e:
            raise Issue(path, f"invalid merge: {e.problem}", mark_line(e.problem_mark)) from None
        last: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:  # merged keys first: the last occurrence wins
            last[self._key(key_node, path)] = (key_node, value_node)
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in last.items():
            key_path = join_key(path, key)
            self.lines[key_path] = _line(key_node)
            out[key] = self._build(value_node, key_path, active)
        return out

    def _key(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise Issue(path or "(top level)", "a key must be a plain string, not a list or mapping", _line(node))
        if node.tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
            raise self._bad_tag(node, path)
        return node.value

    def _scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        text, tag = node.value, node.tag
        try:
            if tag == _STR:
                return text
            if tag == _NULL and _NULL_RE.match(text):
                return None
            if tag == _BOOL and _BOOL_RE.match(text):
                return text.lower() == "true"
            if tag == _INT and _INT_RE.match(text):
                digits = text.replace("_", "")
                sign = -1 if digits.startswith("-") else 1
                digits = digits.lstrip("+-")
                base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
                return sign * int(digits[2:] if base != 10 else digits, base)
            if tag == _FLOAT and _FLOAT_RE.match(text):
                number = text.replace("_", "").lower()
                return float(number.replace(".inf", "inf").replace(".nan", "nan"))
        except ValueError:
            pass
        if tag in (_NULL, _BOOL, _INT, _FLOAT):
            raise Issue(path, f"{show(text)} is not a valid {_tag_name(tag)}", _line(node))
        raise self._bad_tag(node, path)

    def _bad_tag(self, node: yaml.Node, path: str) -> Issue:
        return Issue(
            path or "(top level)",
            f"tag {_tag_name(node.tag)} is not allowed; only plain values (strings, numbers, "
            "true/false, null), lists and mappings are accepted",
            _line(node),
        )


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def mark_line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


LineLoader.add_implicit_resolver(_BOOL, _BOOL_RE, list("tTfF"))
LineLoader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
LineLoader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
LineLoader.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])
LineLoader.add_implicit_resolver(_NULL, _NULL_RE, ["~", "n", "N", ""])


def parse_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """Parse one YAML document into plain data and ``key path -> line``.

    Raises Issue for refused content and yaml.MarkedYAMLError for syntax errors.
    """
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        return loader.build(node), loader.lines
    finally:
        loader.dispose()

