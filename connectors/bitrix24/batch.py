"""Packing calls into ``batch`` requests and unpacking their per-command results.

A batch carries at most 50 commands, each a string ``"method?query"`` whose query uses PHP bracket
syntax (``filter[>ID]=5&select[0]=ID``), and counts as ONE request against the leaky bucket
(facts §5, §6.1) — the lever behind 2,500 rows per HTTP call. A later command may refer to an
earlier one's result with ``$result[key][...]``; when the whole value is a reference the portal
substitutes the raw value (facts §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from connectors.bitrix24.errors import ApiError, MalformedResponse, error_from_body

MAX_COMMANDS = 50


def encode_query(params: Mapping[str, Any]) -> str:
    """PHP bracket query string, as PHP's ``http_build_query`` would write it.

    Nested dicts become ``key[sub]``, lists ``key[0]``, booleans 1/0; None and empty containers
    are left out (PHP drops them too, so an empty ``@ID`` list would silently filter nothing —
    callers never send one).
    """
    pairs: list[str] = []
    for key, value in params.items():
        _encode_into(pairs, _quote_key(str(key)), value)
    return "&".join(pairs)


def _encode_into(pairs: list[str], prefix: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _encode_into(pairs, f"{prefix}[{_quote_key(str(key))}]", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _encode_into(pairs, f"{prefix}[{index}]", item)
    else:
        pairs.append(f"{prefix}={_quote_value(_scalar(value))}")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a Bitrix24 query")


def _quote_key(key: str) -> str:
    # Brackets stay literal in keys: they are the syntax. ">ID", "@ID", "!=X" are encoded.
    return quote(key, safe="")


def _quote_value(value: str) -> str:
    # "$result[cmd][49][ID]" stays readable; the portal url-decodes values before resolving it.
    return quote(value, safe="$[]")


def result_ref(key: str, *path: str | int) -> str:
    """``$result[key][p1][p2]...``: the value of an earlier command's result in this batch."""
    return "$result[" + key + "]" + "".join(f"[{part}]" for part in path)


@dataclass(frozen=True)
class Command:
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        query = encode_query(self.params)
        return f"{self.method}?{query}" if query else self.method


@dataclass
class BatchResult:
    """One executed batch: per command key, a result (and total/next) or a typed error."""

    results: dict[str, Any]
    errors: dict[str, ApiError]
    totals: dict[str, int]
    nexts: dict[str, int]
    times: dict[str, dict]

    def absorb(self, other: BatchResult) -> None:
        """Take in the outcome of further commands (a retry, or the next 50)."""
        self.results.update(other.results)
        self.errors.update(other.errors)
        self.totals.update(other.totals)
        self.nexts.update(other.nexts)
        self.times.update(other.times)

    def part(self, keys: Iterable[str]) -> BatchResult:
        """The outcome of the commands ``keys`` only (to keep a few answers of a big batch)."""
        wanted = set(keys)
        return BatchResult(*({key: value for key, value in found.items() if key in wanted}
                             for found in (self.results, self.errors, self.totals, self.nexts, self.times)))

    def ok(self, key: str) -> bool:
        return key in self.results and key not in self.errors

    def result(self, key: str) -> Any:
        """The command's result; raises its typed error if it failed."""
        if key in self.errors:
            raise self.errors[key]
        if key not in self.results:
            raise KeyError(f"command {key!r} did not run (halted batch?)")
        return self.results[key]

    @classmethod
    def parse(cls, result: Any, commands: Mapping[str, Command]) -> BatchResult:
        if not isinstance(result, Mapping):
            raise MalformedResponse("batch", 200, "result is not an object", repr(result)[:200])
        maps = {name: _as_map(result.get(name)) for name in
                ("result", "result_error", "result_total", "result_next", "result_time")}
        errors = {
            key: error_from_body(body if isinstance(body, Mapping) else {"error": str(body)},
                                 method=commands[key].method if key in commands else "")
            for key, body in maps["result_error"].items()
        }
        return cls(results=maps["result"], errors=errors,
                   totals={k: int(v) for k, v in maps["result_total"].items() if v is not None},
                   nexts={k: int(v) for k, v in maps["result_next"].items() if v is not None},
                   times=maps["result_time"])


def _as_map(value: Any) -> dict:
    # PHP serializes an empty associative array as [] (facts §5).
    if value is None or value == []:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    raise MalformedResponse("batch", 200, "result map of unexpected type", repr(value)[:200])


def chunked(commands: Mapping[str, Command], size: int = MAX_COMMANDS) -> Iterator[dict[str, Command]]:
    """Split commands into batches of at most ``size`` (order kept; references must not cross)."""
    chunk: dict[str, Command] = {}
    for key, command in commands.items():
        chunk[key] = command
        if len(chunk) == size:
            yield chunk
            chunk = {}
    if chunk:
        yield chunk


def in_groups(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    group: list[Any] = []
    for value in values:
        group.append(value)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
