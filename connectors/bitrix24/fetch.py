"""Reading entities: current state by id, and the keyset full scan.

Both use the kind's list method with ``start=-1`` (no count query, facts §4.1) and pack 50 list
commands into one batch, so one HTTP request carries up to 2,500 entities (facts §5). Fetching by
id uses an ``@ID`` filter of 50 ids per command instead of one ``*.get`` per id: an id that does not
come back was deleted or is no longer visible, which is an answer (tombstone), not an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from connectors.bitrix24.batch import MAX_COMMANDS, BatchResult, Command, chunked, in_groups, result_ref
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.entities import EntityKind
from connectors.bitrix24.errors import MalformedResponse
from connectors.bitrix24.planning import ChangePlan

PAGE_SIZE = 50  # fixed by the portal (facts §4.1)


@dataclass(frozen=True)
class FetchResult:
    records: list[dict]  # in ascending id order
    not_found: tuple[int, ...]  # asked for, not returned: deleted or invisible


def fetch_by_ids(client: Bitrix24Client, kind: EntityKind, ids: Iterable[int]) -> FetchResult:
    """Current state of ``ids``: 50 ids per ``@ID`` list command, 50 commands per request."""
    return _fetch(client, [(kind, ids)])[0]


def fetch_changes(client: Bitrix24Client, plan: ChangePlan) -> dict[str, FetchResult]:
    """The ids to fetch of every kind in ``plan``, by kind key.

    The kinds' commands share batches, so a mix of deals, contacts and companies still travels
    2,500 ids per request instead of a partly empty request per kind.
    """
    kinds = list(plan.kinds.values())
    results = _fetch(client, [(kind_plan.kind, kind_plan.fetch_ids) for kind_plan in kinds])
    return {kind_plan.kind.key: result for kind_plan, result in zip(kinds, results, strict=True)}


def _fetch(client: Bitrix24Client, wanted: Sequence[tuple[EntityKind, Iterable[int]]]) -> list[FetchResult]:
    asked = [sorted({int(entity_id) for entity_id in ids}) for _, ids in wanted]
    owner: dict[str, int] = {}  # command key -> position in ``wanted``
    commands: dict[str, Command] = {}
    for position, ((kind, _), ids) in enumerate(zip(wanted, asked, strict=True)):
        for group_index, group in enumerate(in_groups(ids, PAGE_SIZE)):
            key = f"k{position}g{group_index}"
            owner[key] = position
            commands[key] = Command(kind.list_method, _list_params(kind, {f"@{kind.id_field}": group}))
    found: list[dict[int, dict]] = [{} for _ in wanted]
    for chunk in chunked(commands):
        outcome = client.batch(chunk)
        for key in chunk:
            position = owner[key]
            kind = wanted[position][0]
            for row in rows_of(kind, outcome.result(key), kind.list_method):
                found[position][int(row[kind.id_field])] = row
    results = []
    for ids, rows in zip(asked, found, strict=True):
        wanted_ids = set(ids)
        returned = sorted(i for i in rows if i in wanted_ids)
        results.append(FetchResult([rows[i] for i in returned], tuple(i for i in ids if i not in rows)))
    return results


def scan(client: Bitrix24Client, kind: EntityKind, *, after_id: int = 0,
         select: Sequence[str] | None = None) -> Iterator[list[dict]]:
    """Every entity of ``kind`` in id order, one chunk (up to 2,500 rows) per HTTP request.

    Keyset pagination (``order ID ASC``, ``>ID``, ``start=-1``; facts §4.1): inside a batch each
    command's lower bound is the previous command's 50th id, via ``$result[...]``. A short page
    ends the scan; commands after it ran on an unresolvable reference and are ignored. ``select``
    narrows the columns (e.g. id and modification time for reconciliation).
    """
    last_id = after_id
    id_path = ("items",) if kind.value_style == "item" else ()
    while True:
        commands: dict[str, Command] = {}
        for index in range(MAX_COMMANDS):
            lower = last_id if index == 0 else result_ref(f"page{index - 1}", *id_path, PAGE_SIZE - 1,
                                                          kind.id_field)
            params = _list_params(kind, {f">{kind.id_field}": lower}, select)
            params["order"] = {kind.id_field: "ASC"}
            commands[f"page{index}"] = Command(kind.list_method, params)
        outcome = client.batch(commands)
        chunk: list[dict] = []
        finished = False
        for key in commands:
            rows = rows_of(kind, outcome.result(key), kind.list_method)
            for row in rows:
                entity_id = int(row[kind.id_field])
                if entity_id <= last_id:
                    # A reference that did not resolve would otherwise loop over the same rows.
                    raise MalformedResponse(kind.list_method, 200,
                                            f"keyset scan did not advance past id {last_id}")
                last_id = entity_id
            chunk.extend(rows)
            if len(rows) < PAGE_SIZE:
                finished = True
                break
        if chunk:
            yield chunk
        if finished:
            return


def rows_of(kind: EntityKind, result: Any, method: str) -> list[dict]:
    """The rows of a list result: a plain array (legacy) or ``{"items": [...]}`` (crm.item.list)."""
    rows = result.get("items") if kind.value_style == "item" and isinstance(result, Mapping) else result
    if rows in (None, []):
        return []
    if not isinstance(rows, list) or not all(isinstance(row, dict) and kind.id_field in row for row in rows):
        raise MalformedResponse(method, 200, "list result is not an array of records", repr(result)[:200])
    return rows


def _list_params(kind: EntityKind, filter_: dict, select: Sequence[str] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"filter": filter_, "select": list(select or kind.select), "start": -1}
    if kind.entity_type_id is not None and kind.value_style == "item":
        params["entityTypeId"] = kind.entity_type_id
    return params


@dataclass
class _Chain:
    """One kind's keyset scan inside `scan_kinds`."""

    kind: EntityKind
    first: str  # the command key of its counted first page
    last_id: int = 0
    pages_left: int | None = None  # planned from the first page's ``total``; None = until a short page
    done: bool = False


# Kinds found from a lead's answer, and the lead commands they need before their count.
MoreKinds = Callable[[], tuple[Sequence[EntityKind], Mapping[str, Command]]]


def scan_kinds(client: Bitrix24Client, kinds: Sequence[EntityKind], *,
               lead: Mapping[str, Command] | None = None,
               more: MoreKinds | None = None) -> Iterator[tuple[str | None, Any]]:
    """Every entity of every kind in ``kinds``, the kinds packed into shared requests.

    The first request(s) carry the ``lead`` commands (e.g. ``event.bind``: a batch runs its commands
    in order, so they take effect before any page is read) and the first page of each kind with
    ``start=0``, whose ``total`` plans the rest. Then each request holds 50 pages of whichever kinds
    still have some: a kind's pages chain through ``$result[...]`` (keyset ``>ID``, facts §4.1, §5),
    so a full load of N entities takes about ceil(N / 2,500) requests however they spread over kinds.
    A kind whose planned pages are all full is finished: rows created after its count come in through
    the offline queue, bound before the count (DESIGN §3). A short page ends a kind early.

    ``more`` is called once, after the lead's outcome has been yielded (so the caller has taken it),
    for kinds known only from that answer (smart-process types from a ``crm.type.list`` in the lead)
    and a lead of their own: the next request(s) carry that lead, then those kinds' counted first
    pages, and fill the room left with pages of the kinds under way. Kinds found late cost their
    commands, not a request of their own.

    Yields ``(None, BatchResult)`` once per non-empty lead (``lead``'s, then ``more``'s, each before
    any rows of its kinds) with the outcome of its commands, then ``(kind.key, rows)`` per kind and
    request, rows in ascending id order (at most 2,500). Raises `MalformedResponse` if a scan does
    not advance.
    """
    chains = [_Chain(kind, f"first{index}") for index, kind in enumerate(kinds)]
    outcome = BatchResult({}, {}, {}, {}, {})
    for part in chunked({**(lead or {}), **_first_pages(chains)}):
        outcome.absorb(client.batch(part))
    if lead:
        yield None, outcome.part(lead)
    later_kinds, later_lead = more() if more is not None else ((), {})
    starting = [_Chain(kind, f"first{len(chains) + index}") for index, kind in enumerate(later_kinds)]
    # Sent ahead of any page, in this order: the later lead, then the later kinds' counts.
    pending = {**later_lead, **_first_pages(starting)}
    lead_left, later_outcome = set(later_lead), BatchResult({}, {}, {}, {}, {})
    yield from _started(chains, outcome)
    while pending or any(not chain.done for chain in chains):
        batch_commands = dict(islice(pending.items(), MAX_COMMANDS))
        for key in batch_commands:
            del pending[key]
        planned: dict[str, tuple[_Chain, int]] = {}  # command key -> (chain, position in its run)
        room = MAX_COMMANDS - len(batch_commands)
        for number, chain in enumerate([chain for chain in chains if not chain.done]):
            if room == 0:
                break
            pages = room if chain.pages_left is None else min(room, chain.pages_left)
            id_path = ("items",) if chain.kind.value_style == "item" else ()
            for position in range(pages):
                key = f"c{number}p{position}"
                lower = chain.last_id if position == 0 else result_ref(
                    f"c{number}p{position - 1}", *id_path, PAGE_SIZE - 1, chain.kind.id_field)
                params = _list_params(chain.kind, {f">{chain.kind.id_field}": lower})
                params["order"] = {chain.kind.id_field: "ASC"}
                batch_commands[key] = Command(chain.kind.list_method, params)
                planned[key] = (chain, position)
            room -= pages
        outcome = client.batch(batch_commands)
        if lead_left:
            later_outcome.absorb(outcome.part(lead_left))
            lead_left -= batch_commands.keys()
            if not lead_left:
                yield None, later_outcome
        started = [chain for chain in starting if chain.first in batch_commands]
        yield from _started(started, outcome)
        chunks: dict[str, list[dict]] = {}
        for key, (chain, _position) in planned.items():
            if chain.done:
                continue  # after a short page the chain's references did not resolve
            rows = _advance(chain, outcome.result(key))
            if chain.pages_left is not None:
                chain.pages_left -= 1
                chain.done = chain.done or chain.pages_left == 0
            chunks.setdefault(chain.kind.key, []).extend(rows)
        chains.extend(started)
        for key, rows in chunks.items():
            if rows:
                yield key, rows
        # Let this request's parsed answer go before the next one arrives, so only one is alive at a
        # time (a 2,500-deal answer is ~25 MB of Python objects).
        outcome, chunks, rows = BatchResult({}, {}, {}, {}, {}), {}, []


def _first_pages(chains: Sequence[_Chain]) -> dict[str, Command]:
    """Each chain's first page, counted (``start=0``): the answer's ``total`` plans its pages."""
    commands: dict[str, Command] = {}
    for chain in chains:
        params = _list_params(chain.kind, {f">{chain.kind.id_field}": 0})
        params["order"] = {chain.kind.id_field: "ASC"}
        params["start"] = 0
        commands[chain.first] = Command(chain.kind.list_method, params)
    return commands


def _started(chains: Sequence[_Chain], outcome: BatchResult) -> Iterator[tuple[str, list[dict]]]:
    """Each chain's first page from ``outcome``: its rows, and its remaining pages planned."""
    for chain in chains:
        rows = _advance(chain, outcome.result(chain.first))
        total = outcome.totals.get(chain.first)
        if not chain.done and total is not None:
            chain.pages_left = max(0, -(-(total - PAGE_SIZE) // PAGE_SIZE))
            chain.done = chain.pages_left == 0
        if rows:
            yield chain.kind.key, rows


def _advance(chain: _Chain, result: Any) -> list[dict]:
    """The page's rows; moves the chain's lower bound, and ends it on a short page."""
    kind = chain.kind
    rows = rows_of(kind, result, kind.list_method)
    for row in rows:
        entity_id = int(row[kind.id_field])
        if entity_id <= chain.last_id:
            # A reference that did not resolve would otherwise loop over the same rows.
            raise MalformedResponse(kind.list_method, 200, f"keyset scan did not advance past id {chain.last_id}")
        chain.last_id = entity_id
    if len(rows) < PAGE_SIZE:
        chain.done = True
    return rows
