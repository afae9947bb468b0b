"""A file that is one JSON array of objects, read as the JSON Lines it is equivalent to.

The file is read whole (at most ``MAX_BYTES``, decompressed): ``json`` walks the array element by
element (``raw_decode``), so an element that is not an object is a bad row at its own line, and a
broken array stops with the line of the break. Each element becomes one line of JSON Lines (a raw
newline cannot occur inside a JSON string, so line ends between tokens are replaced by spaces)
and goes through the same JSON Lines parser as every other JSON input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pipeline.errors import InputError

MAX_BYTES = 512 << 20
_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n"


def looks_like_array(head: bytes) -> bool:
    """The first non-blank byte (after a UTF-8 BOM) is '['."""
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    text = text.lstrip(b" \t\r\n")
    return text[:1] == b"["


def elements(text: str, path: str, *, partial: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line, element text on one line) of every element of the array in ``text``.

    ``partial``: ``text`` is the head of a file; stop quietly at the first element it cuts.
    """
    i = _skip(text, 1 if text.startswith("\ufeff") else 0)
    if text[i:i + 1] != "[":
        raise InputError(f"{path} line {_line(text, i)}: expected a JSON array ('['), found {text[i:i + 20]!r}",
                         file=path, line=_line(text, i))
    i = _skip(text, i + 1)
    line, seen = 1, 0
    if text[i:i + 1] == "]":
        return _rest(text, i + 1, path, partial)
    while True:
        line += text.count("\n", seen, i)
        seen = i
        try:
            _, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            if partial:
                return
            raise InputError(f"{path} line {exc.lineno}: not a valid JSON array: {exc.msg}",
                             file=path, line=exc.lineno) from exc
        yield line, text[i:end].replace("\r", " ").replace("\n", " ")
        i = _skip(text, end)
        c = text[i:i + 1]
        if c == ",":
            i = _skip(text, i + 1)
            continue
        if c == "]":
            return _rest(text, i + 1, path, partial)
        if partial and not c:
            return
        at = _line(text, i)
        raise InputError(f"{path} line {at}: not a valid JSON array: expected ',' or ']' after an element",
                         file=path, line=at)


def _rest(text: str, i: int, path: str, partial: bool) -> None:
    j = _skip(text, i)
    if j < len(text) and not partial:
        raise InputError(f"{path} line {_line(text, j)}: text after the end of the JSON array",
                         file=path, line=_line(text, j))


def _skip(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    return i


def _line(text: str, i: int) -> int:
    return text.count("\n", 0, i) + 1
