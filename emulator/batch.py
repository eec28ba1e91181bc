"""The ``batch`` method: up to 50 sub-calls in one HTTP request (facts §5).

Each command is ``"method?php_bracket_query"``. Sub-calls run in order with the caller's auth (and
``auth_connector`` unless the sub-query names its own). A parameter value may refer to earlier
results with ``$result[key][path…]`` (also ``$next``, ``$total``, ``$time``, ``$error``): a value that
is nothing but a reference takes the referenced value raw (lists included), a reference inside a
longer string is replaced by its text. Results come back as PHP arrays keyed like ``cmd``: empty maps
are ``[]``, and a map whose keys are exactly 0..n-1 in order is a JSON list — ``result_error`` as
much as ``result`` — whether ``cmd`` was a list or an object with keys ``"0"``, ``"1"``, … (PHP turns
such string keys into integers).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from emulator.crm.phpish import array_key
from emulator.dispatch import execute
from emulator.errors import RestError
from emulator.params import decode_query
from emulator.registry import CallContext, param, rest_method

MAX_COMMANDS = 50
AUTH_PARAMS = ("auth", "access_token")

_REFERENCE = re.compile(r"\$(result|next|total|time|error)\[([^\]]+)\]((?:\[[^\]]*\])*)")
_PATH_KEY = re.compile(r"\[([^\]]*)\]")


class BatchLengthExceeded(RestError):
    code = "ERROR_BATCH_LENGTH_EXCEEDED"

    def __init__(self) -> None:
        super().__init__("Max batch length exceeded")


CommandKey = int | str


class _Results:
    """The five result maps, in the order the commands ran."""

    def __init__(self) -> None:
        self.maps: dict[str, dict[CommandKey, Any]] = {
            "result": {}, "result_error": {}, "result_total": {}, "result_next": {}, "result_time": {},
        }

    def lookup(self, kind: str, key: str) -> tuple[bool, Any]:
        entries = self.maps["result" if kind == "result" else f"result_{kind}"]
        for candidate in (key, int(key) if key.lstrip("-").isdigit() else None):
            if candidate is not None and candidate in entries:
                return True, entries[candidate]
        return False, None

    def as_php(self) -> dict[str, Any]:
        return {name: _php_array(entries) for name, entries in self.maps.items()}


def _php_array(entries: dict[CommandKey, Any]) -> list | dict:
    # json_encode of a PHP array: [] when empty, a list for keys 0..n-1 in order, else an object.
    if all(key == position for position, key in enumerate(entries)):
        return list(entries.values())
    return {str(key): value for key, value in entries.items()}


def _walk(value: Any, path: str) -> Any:
    """Follow ``[a][0][ID]``; an unresolvable step stops at the deepest value found (facts §5)."""
    for step in _PATH_KEY.findall(path):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            break
    return value


def _php_string(value: Any) -> str:
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, list | dict):
        return "Array"
    return str(value)


def _substitute(value: Any, results: _Results) -> Any:
    if isinstance(value, str):
        if "$" not in value:
            return value
        whole = _REFERENCE.fullmatch(value)
        if whole is not None:
            found, target = results.lookup(whole.group(1), whole.group(2))
            return _walk(target, whole.group(3)) if found else value

        def replace_one(match: re.Match[str]) -> str:
            found, target = results.lookup(match.group(1), match.group(2))
            return _php_string(_walk(target, match.group(3))) if found else match.group(0)

        return _REFERENCE.sub(replace_one, value)
    if isinstance(value, dict):
        return {key: _substitute(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, results) for item in value]
    return value


def _commands(cmd: Any) -> list[tuple[CommandKey, Any]]:
    if isinstance(cmd, dict):
        return [(array_key(key), command) for key, command in cmd.items()]
    if isinstance(cmd, list):
        return list(enumerate(cmd))
    return []


def _halts(value: Any) -> bool:
    return value not in (None, False, 0, "", "0", "N", "n", "false")


@rest_method("batch", scope="basic")
async def batch(ctx: CallContext, params: dict) -> dict[str, Any]:
    results = _Results()
    halt = _halts(param(params, "halt", 0))
    executed = 0
    for key, command in _commands(param(params, "cmd")):
        # Non-string commands are skipped silently (facts §5).
        if not isinstance(command, str):
            continue
        if executed >= MAX_COMMANDS:
            results.maps["result_error"][key] = BatchLengthExceeded().body()
            continue
        executed += 1
        method, _, query = command.partition("?")
        method = method.strip().lower().removesuffix(".json")
        sub_params = decode_query(query)
        if "$" in query or "%24" in query:
            sub_params = _substitute(sub_params, results)
        for name in AUTH_PARAMS:
            sub_params.pop(name, None)
        caller = ctx.caller
        connector = sub_params.get("auth_connector")
        if isinstance(connector, str) and connector != caller.auth_connector:
            caller = replace(caller, auth_connector=connector)
        outcome = await execute(ctx.portal, caller, method, sub_params, in_batch=True)
        if outcome.error is not None:
            results.maps["result_error"][key] = outcome.error.body()
            if halt:
                break
            continue
        results.maps["result"][key] = outcome.result
        if outcome.total is not None:
            results.maps["result_total"][key] = outcome.total
        if outcome.next is not None:
            results.maps["result_next"][key] = outcome.next
        results.maps["result_time"][key] = outcome.time
    return results.as_php()
