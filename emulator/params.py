"""PHP-style request parameters, decoded and encoded the way a Bitrix24 portal reads them.

Bitrix24 runs on PHP, so form bodies, query strings and the sub-queries of ``batch`` are parsed by
PHP's ``parse_str`` rules (facts §1.1, §5): ``filter[>ID]=5``, ``select[]=ID``,
``fields[PHONE][0][VALUE]=x``. JSON bodies go through ``json_decode(..., true)``, after which PHP
cannot tell ``{"0": "a", "1": "b"}`` from ``["a", "b"]``. Both decoders here therefore return the
same Python shape: a PHP array whose keys are exactly 0..n-1 in order becomes a ``list``, any other
array a ``dict`` with string keys. Form values are always strings; JSON values keep their types.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote_plus

_INDEX = re.compile(r"\[([^\]]*)\]")
# PHP turns a decimal string key without leading zeros into an integer key.
_INT_KEY = re.compile(r"-?[1-9][0-9]{0,17}|0")


class _PhpArray(dict):
    """An ordered PHP array under construction: int and str keys plus PHP's "next free index"."""

    __slots__ = ("next_index",)

    def __init__(self) -> None:
        super().__init__()
        self.next_index = 0

    def put(self, key: int | str | None, value: Any) -> None:
        if key is None:
            key = self.next_index
        if isinstance(key, int) and key >= self.next_index:
            self.next_index = key + 1
        self[key] = value


def _php_key(segment: str) -> int | str:
    return int(segment) if _INT_KEY.fullmatch(segment) else segment


def _split_name(name: str) -> list[int | str | None] | None:
    """The key path of one ``name[a][b][]`` parameter name; ``None`` for an unusable name.

    Mirrors ``php_register_variable_ex``: leading spaces are dropped, ``.`` and space in the base
    name become ``_``, an unclosed first ``[`` becomes ``_``, and parsing stops at the first
    character after a ``]`` that does not open another index.
    """
    name = name.lstrip(" ")
    bracket = name.find("[")
    if bracket == -1 or name.find("]", bracket) == -1:
        base = name.replace(".", "_").replace(" ", "_")
        if bracket != -1:
            base = base[:bracket] + "_" + name[bracket + 1:]
        return [base] if base else None
    base = name[:bracket].replace(".", "_").replace(" ", "_")
    if not base:
        return None
    path: list[int | str | None] = [base]
    position = bracket
    while position < len(name) and name[position] == "[":
        match = _INDEX.match(name, position)
        if match is None:
            break
        segment = match.group(1)
        path.append(None if segment == "" else _php_key(segment))
        position = match.end()
    return path


Path = tuple[int | str | None, ...]

# Parameter names repeat across requests and batch commands (``filter[@ID][0]`` …), so their decoded
# paths are cached by raw (still percent-encoded) name. Bounded: cleared when full.
_PATHS: dict[str, Path | None] = {}
_PATHS_MAX = 8192


def _path_of(raw_name: str) -> Path | None:
    try:
        return _PATHS[raw_name]
    except KeyError:
        pass
    if len(_PATHS) >= _PATHS_MAX:
        _PATHS.clear()
    split = _split_name(unquote_plus(raw_name))
    path = _PATHS[raw_name] = tuple(split) if split is not None else None
    return path


def _assign(root: _PhpArray, path: Path | list[int | str | None], value: str) -> None:
    # The hot loop of every form body and batch sub-query: `_PhpArray.put` is inlined here.
    node = root
    for key in path[:-1]:
        if key is None:
            child = _PhpArray()
            key = node.next_index
            node.next_index = key + 1
            node[key] = child
        else:
            child = node.get(key)
            if child.__class__ is not _PhpArray:
                child = _PhpArray()
                node.put(key, child)
        node = child
    key = path[-1]
    if key is None:
        key = node.next_index
        node.next_index = key + 1
    elif key.__class__ is int and key >= node.next_index:
        node.next_index = key + 1
    node[key] = value


def _finish(array: _PhpArray) -> list | dict:
    values = [_finish(v) if v.__class__ is _PhpArray else v for v in array.values()]
    keys = list(array)
    if keys == list(range(len(keys))):
        return values
    return {str(key): value for key, value in zip(keys, values, strict=True)}


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decoded parameters from ``(name, value)`` pairs, e.g. a parsed form body."""
    root = _PhpArray()
    for name, value in pairs:
        path = _split_name(name)
        if path is not None:
            _assign(root, path, value)
    top = _finish(root)
    # Top-level names are never integers in PHP's $_REQUEST, so the top level stays a dict.
    return top if isinstance(top, dict) else {str(i): v for i, v in enumerate(top)}


def decode_query(query: str) -> dict[str, Any]:
    """Decoded parameters of a query string or ``application/x-www-form-urlencoded`` body."""
    if not query:
        return {}
    root = _PhpArray()
    # PHP splits on "&" only and takes everything after the first "=" as the value.
    for part in query.split("&"):
        if not part:
            continue
        raw_name, _, value = part.partition("=")
        path = _path_of(raw_name)
        if path is None:
            continue
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        _assign(root, path, value)
    top = _finish(root)
    return top if isinstance(top, dict) else {str(i): v for i, v in enumerate(top)}


def normalize_json(value: Any) -> Any:
    """A decoded JSON value as PHP's ``json_decode(..., true)`` sees it (0..n-1 objects are lists)."""
    if isinstance(value, dict):
        items = {key: normalize_json(item) for key, item in value.items()}
        if items and all(key == str(position) for position, key in enumerate(items)):
            return list(items.values())
        return items
    if isinstance(value, list):
        return [normalize_json(item) for item in value]
    return value


def _scalar(value: Any) -> str:
    # http_build_query writes booleans as 1/0.
    if value is True:
        return "1"
    if value is False:
        return "0"
    return str(value)


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    elif value is not None:
        out.append((prefix, _scalar(value)))


def encode_pairs(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for nested params, like PHP's ``http_build_query`` before escaping.

    Lists are written with explicit indexes (``a[0][VALUE]``) so lists of objects survive the round
    trip; ``None`` and empty containers produce no pair, as in PHP.
    """
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        _flatten(str(key), value, out)
    return out


def encode_query(params: Mapping[str, Any]) -> str:
    """A percent-encoded query string (or form body) for nested params."""
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in encode_pairs(params))
