"""Which version of an entity wins, and how history and tombstones record it (SQL for both engines).

Rules, applied per (portal, id) against the stored row:

* no stored row -> ``insert``;
* the stored row is tombstoned and the incoming ``_source_modified_at`` is not newer than its
  ``_deleted_at`` -> ``tombstoned``: ignored. Bitrix24 never reuses an id, so such a version is an
  older state arriving out of order (a late update of a deleted entity);
* the incoming ``_source_modified_at`` is older than the stored one -> ``stale``: ignored;
* the stored row is tombstoned and the incoming version is newer than the deletion -> ``revive``:
  the portal returns the object again with a later modification time, i.e. it was restored from the
  recycle bin with its id (the restore fires ``ONCRM*ADD``, facts §3), so the portal's current state
  wins: the row is written, ``_deleted_at``/``_deleted_reason`` are cleared and history gets a new
  version (the deleted one stays closed at the deletion time);
* the same content (hash of ``_raw``) and modification time -> ``unchanged``: nothing is written, so
  re-applying a batch leaves tables and history exactly as they were;
* otherwise -> ``update``. An equal modification time with new content is applied: Bitrix24 times
  have one-second resolution, and the later fetch is the later state.

Reconciliation may ask for ``overwrite``: the staleness rule is then off, so the portal's version
replaces a live row the warehouse holds newer than the portal (see `upsert`).

Every applied version appends a history row and closes the previous one (``_valid_to``). The same
rule guards the ``ON CONFLICT ... DO UPDATE ... WHERE`` clause, so the database enforces it even when
the classification was computed from an older snapshot.

Parameters are written ``%(name)s``; ``source`` is the SQL of the staged rows, aliased ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.warehouse.layout import Dialect, TableNames, quote

INSERT = "insert"
UPDATE = "update"
UNCHANGED = "unchanged"
STALE = "stale"
TOMBSTONED = "tombstoned"
REVIVE = "revive"
APPLIED = (INSERT, UPDATE, REVIVE)  # the actions that write a row and a history version


def _newer_than_deletion(incoming: str, stored: str) -> str:
    return f"COALESCE({incoming}._source_modified_at > {stored}._deleted_at, FALSE)"


def action(incoming: str, stored: str, *, overwrite: bool = False) -> str:
    """SQL for the action of each incoming row; with ``overwrite`` the staleness rule is off (see `upsert`)."""
    stale = "" if overwrite else (
        f"WHEN {incoming}._source_modified_at < {stored}._source_modified_at THEN '{STALE}'")
    return f"""CASE
        WHEN {stored}.id IS NULL THEN '{INSERT}'
        WHEN {stored}._deleted_at IS NOT NULL AND NOT {_newer_than_deletion(incoming, stored)}
            THEN '{TOMBSTONED}'
        {stale}
        WHEN {stored}._deleted_at IS NOT NULL THEN '{REVIVE}'
        WHEN {_same_version(incoming, stored)} THEN '{UNCHANGED}'
        ELSE '{UPDATE}' END"""


def _same_version(incoming: str, stored: str) -> str:
    # The time as well as the hash: a row whose time was changed behind our back (reconciliation's
    # stale and ahead rows) must be rewritten even though its ``_raw`` is the portal's.
    return (f"{incoming}._content_hash = {stored}._content_hash"
            f" AND {incoming}._source_modified_at IS NOT DISTINCT FROM {stored}._source_modified_at")


def guard(incoming: str, stored: str, *, overwrite: bool = False) -> str:
    not_older = "" if overwrite else (
        f"NOT COALESCE({incoming}._source_modified_at < {stored}._source_modified_at, FALSE) AND ")
    return (f"{not_older}CASE WHEN {stored}._deleted_at IS NULL"
            f" THEN NOT COALESCE({_same_version(incoming, stored)}, FALSE)"
            f" ELSE {_newer_than_deletion(incoming, stored)} END")


def version_start(overwrite: bool, incoming: str = "s") -> str:
    """When a written version starts in history: its modification time; a correction (``overwrite``)
    starts when it is made, since the version it replaces may claim a later time."""
    return "now()" if overwrite else f"COALESCE({incoming}._source_modified_at, now())"


def upsert(d: Dialect, table: str, columns: Sequence[str], null_columns: Sequence[str], source: str,
           *, on_conflict: bool = True, overwrite: bool = False) -> str:
    """Write staged rows into the entity table; ``columns`` are the staged schema columns.

    ``overwrite``: the incoming version replaces a live row even when it is older (reconciliation's
    repair of a row the warehouse holds newer than the portal: the portal is the source of truth).
    Tombstones still give way only to a version newer than the deletion."""
    target = ["portal", "id", *columns, "_raw", "_source_modified_at", "_content_hash", "_synced_at"]
    values = ["%(portal)s::text", "s.id", *(f"s.{quote(c)}" for c in columns), f"CAST(s._raw AS {d.raw})",
              "s._source_modified_at", "s._content_hash", "now()"]
    statement = (f"INSERT INTO {d.qualified(TableNames.of(table).table)} AS t "
                 f"({', '.join(quote(c) for c in target)}) SELECT {', '.join(values)} FROM {source}")
    if not on_conflict:
        return statement
    assignments = [f"{quote(c)} = excluded.{quote(c)}" for c in target[2:]]
    assignments += [f"{quote(c)} = NULL" for c in (*null_columns, "_deleted_at", "_deleted_reason")]
    return (f"{statement} ON CONFLICT (portal, id) DO UPDATE SET {', '.join(assignments)} "
            f"WHERE {guard('excluded', 't', overwrite=overwrite)}")


def update_rows(d: Dialect, table: str, columns: Sequence[str], null_columns: Sequence[str],
                source: str) -> str:
    """Overwrite stored rows with staged versions already classified as ``update`` or ``revive``.

    For an engine whose only writer classified the rows in the same transaction (DuckDB), so the
    rule of `guard` needs no second check. A plain ``UPDATE`` touches the changed columns in place;
    DuckDB's ``ON CONFLICT DO UPDATE`` also rewrites the primary-key index entries, which it keeps
    in memory it cannot spill until the next checkpoint."""
    written = [*columns, "_raw", "_source_modified_at", "_content_hash"]
    assignments = [f"{quote(c)} = s.{quote(c)}" for c in written]
    assignments[len(columns)] = f"_raw = CAST(s._raw AS {d.raw})"
    assignments += ["_synced_at = now()"]
    assignments += [f"{quote(c)} = NULL" for c in (*null_columns, "_deleted_at", "_deleted_reason")]
    return (f"UPDATE {d.qualified(TableNames.of(table).table)} AS t SET {', '.join(assignments)} "
            f"FROM {source} WHERE t.portal = %(portal)s::text AND t.id = s.id")


def close_versions(d: Dialect, table: str, source: str, *, overwrite: bool = False) -> str:
    """End the open history row of every entity in ``source`` where the new version starts."""
    return (f"UPDATE {d.qualified(TableNames.of(table).history)} AS h "
            f"SET _valid_to = {version_start(overwrite)} FROM {source} "
            f"WHERE h.portal = %(portal)s::text AND h.id = s.id AND h._valid_to IS NULL")


def add_versions(d: Dialect, table: str, columns: Sequence[str], source: str, *,
                 overwrite: bool = False) -> str:
    target = ["portal", "id", *columns, "_source_modified_at", "_content_hash", "_valid_from", "_synced_at"]
    values = ["%(portal)s::text", "s.id", *(f"s.{quote(c)}" for c in columns), "s._source_modified_at",
              "s._content_hash", version_start(overwrite), "now()"]
    return (f"INSERT INTO {d.qualified(TableNames.of(table).history)} "
            f"({', '.join(quote(c) for c in target)}) SELECT {', '.join(values)} FROM {source}")


def close_deleted_versions(d: Dialect, table: str) -> str:
    """End the open history row of live entities about to be tombstoned (run before `tombstone`)."""
    names = TableNames.of(table)
    return (f"UPDATE {d.qualified(names.history)} AS h SET _valid_to = %(deleted_at)s::timestamptz "
            f"FROM {d.qualified(names.table)} AS t "
            f"WHERE t.portal = %(portal)s::text AND t.id IN (SELECT unnest(%(ids)s::bigint[])) "
            f"AND t._deleted_at IS NULL AND h.portal = t.portal AND h.id = t.id AND h._valid_to IS NULL")


def tombstone(d: Dialect, table: str) -> str:
    """Soft-delete ids; an id never seen gets a stub row, so a late update older than the deletion
    cannot bring it back (only a version newer than ``deleted_at`` does, see `action`)."""
    return (f"INSERT INTO {d.qualified(TableNames.of(table).table)} AS t "
            f"(portal, id, _deleted_at, _deleted_reason, _synced_at) "
            f"SELECT %(portal)s::text, u.id, %(deleted_at)s::timestamptz, %(reason)s::text, now() "
            f"FROM (SELECT DISTINCT unnest(%(ids)s::bigint[]) AS id) AS u "
            f"ON CONFLICT (portal, id) DO UPDATE SET _deleted_at = excluded._deleted_at, "
            f"_deleted_reason = excluded._deleted_reason, _synced_at = excluded._synced_at "
            f"WHERE t._deleted_at IS NULL")


def row_versions(d: Dialect, table: str) -> str:
    return (f"SELECT id, _source_modified_at, _deleted_at FROM {d.qualified(TableNames.of(table).table)} "
            f"WHERE portal = %(portal)s::text ORDER BY id")
