"""PHP's loose parameter conversions, which decide how Bitrix reads odd input (``intval``, ``is_array``).

Parameters arrive as JSON values or PHP-bracket strings; Bitrix handlers run them through ``intval``
and ``is_array``, so ``"12abc"`` is 12, ``"N"`` is 0 and an index-keyed dict counts as an array.
"""

from __future__ import annotations

import re
from typing import Any

_LEADING_INT = re.compile(r"^\s*([+-]?\d+)")
_CANONICAL_INT = re.compile(r"^(0|-?[1-9]\d*)$")


def intval(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return int(match.group(1)) if match else 0
    if isinstance(value, list | dict):
        return 1 if value else 0
    return 0


def array_key(key: Any) -> int | str:
    """A PHP array key: a string holding a canonical decimal integer (``"7"``, not ``"07"``) becomes
    that integer, as PHP does on insertion, so ``{"0": .., "1": ..}`` is the list-like array [0, 1]."""
    if isinstance(key, str) and _CANONICAL_INT.match(key) and -2**63 <= int(key) < 2**63:
        return int(key)
    return key


def array_values(value: Any) -> list[Any] | None:
    """The elements of a PHP array (a list, or a dict decoded from ``key[0]=..``); None for a scalar."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return None


def upper_keys(params: dict[str, Any]) -> dict[str, Any]:
    """``array_change_key_case(..., CASE_UPPER)``: later duplicates win, as in PHP."""
    return {str(key).upper(): value for key, value in params.items()}


def lower_keys(params: dict[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in params.items()}
