"""A problem found in a job file, and how keys and values appear in its message."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any


class Issue(Exception):
    """A problem at a key path; load_config turns it into a ConfigError with file and line."""

    def __init__(self, key: str, message: str, line: int | None = None):
        super().__init__(message)
        self.key, self.message, self.line = key, message, line


def join_key(path: str, key: str | int) -> str:
    """``("stages", 2)`` -> ``"stages[2]"``; ``("input", "paths")`` -> ``"input.paths"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def show(value: Any) -> str:
    """A value as it appears in an error message."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif value is True or value is False:
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, Mapping):
        text = "a mapping"
    elif isinstance(value, (list, tuple)):
        text = "a list"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_word(value: Any) -> str:
    """What kind of YAML value this is: ``a string``, ``a list``, ``null``."""
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


def under(key: str, prefix: str) -> bool:
    """Whether the dotted key path ``key`` is ``prefix`` or inside it."""
    return key == prefix or key.startswith((prefix + ".", prefix + "["))


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a close choice, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def suggest(word: str, choices: Sequence[str]) -> str:
    """A close choice, or the list of all choices."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {show(close[0]).replace(chr(34), chr(39))}?)"
    return f"; expected one of: {', '.join(sorted(choices))}"
