"""One entity type's rows, kept the way list methods want to read them.

Rows are dicts in the stored legacy style, built once and replaced (never mutated) on change, so a
list can hand out the very dict objects and serialization can run after the lock is released. The
ids are also kept in a sorted list: ``>ID`` keyset pages are a bisect, ``@ID`` filters a dict lookup.
Deleted ids are remembered with their deletion time, for ground truth, and their rows are kept in a
recycle bin so an object can be restored with the same id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from emulator.crm.entities import EntityType
from emulator.crm.fields import Field, upper_item_name
from emulator.crm.userfields import UserField


class EntityTable:
    def __init__(self, entity_type: EntityType) -> None:
        self.type = entity_type
        self.rows: dict[int, dict[str, Any]] = {}
        self.ids: list[int] = []  # ascending; ids are handed out increasing, so adds append
        self.extras: dict[int, dict[str, Any]] = {}  # explicit-only fields (PHONE, COMMUNICATIONS ...)
        self.deleted: dict[int, int] = {}  # id -> deletion time (epoch seconds)
        # Deleted rows as they were, so an object can be restored with its id (the recycle bin).
        self.recycle_bin: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        self.user_fields: dict[str, UserField] = {}
        self.last_id = 0
        # Bumped on every schema change so cached per-schema views (crm.item converters) refresh.
        self.schema_version = 0
        self._fields_by_name: dict[str, Field] = {}
        self._fields_by_camel: dict[str, Field] = {}
        self._fields_by_upper: dict[str, Field] = {}
        self._reindex_fields()

    # --- schema ---------------------------------------------------------------------------------

    @property
    def row_fields(self) -> list[Field]:
        """The fields every stored row dict carries, in wire order: standard, then user fields."""
        return [*self.type.fields, *self.user_fields.values()]

    @property
    def all_fields(self) -> list[Field]:
        return [*self.row_fields, *self.type.explicit_fields]

    def field(self, name: str) -> Field | None:
        return self._fields_by_name.get(name)

    def field_by_camel(self, camel: str) -> Field | None:
        return self._fields_by_camel.get(camel)

    def field_by_upper(self, upper: str) -> Field | None:
        """By the crm.item UPPER_CASE name (``UPDATED_TIME``, ``STAGE_ID``), see `upper_item_name`."""
        return self._fields_by_upper.get(upper)

    def add_user_field(self, user_field: UserField) -> None:
        self.user_fields[user_field.name] = user_field
        empty: Any = [] if user_field.multiple else None
        self._rebuild_rows(lambda row: {**row, user_field.name: empty})

    def remove_user_field(self, name: str) -> UserField:
        user_field = self.user_fields.pop(name)
        self._rebuild_rows(lambda row: {key: value for key, value in row.items() if key != name})
        return user_field

    def redefine_user_field(self, user_field: UserField) -> None:
        """A changed definition (label, list items) of an existing field; stored values stay."""
        self.user_fields[user_field.name] = user_field
        self.schema_version += 1
        self._reindex_fields()

    def _rebuild_rows(self, rebuild: Any) -> None:
        # New dicts rather than in-place edits: a list result being serialized keeps its snapshot.
        self.rows = {entity_id: rebuild(row) for entity_id, row in self.rows.items()}
        self.schema_version += 1
        self._reindex_fields()

    def _reindex_fields(self) -> None:
        fields = self.all_fields
        self._fields_by_name = {spec.name: spec for spec in fields}
        self._fields_by_camel = {spec.camel: spec for spec in fields}
        self._fields_by_upper = {upper_item_name(spec.camel): spec for spec in fields}

    # --- rows -------------------------------------------------------------------------------------

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def insert(self, entity_id: int, row: dict[str, Any], extras: dict[str, Any] | None = None) -> None:
        self.rows[entity_id] = row
        if not self.ids or entity_id > self.ids[-1]:
            self.ids.append(entity_id)
        else:
            self.ids.insert(bisect_left(self.ids, entity_id), entity_id)
        if extras:
            self.extras[entity_id] = extras
        self.last_id = max(self.last_id, entity_id)

    def bulk_load(self, rows: Iterable[tuple[int, dict[str, Any], dict[str, Any] | None]]) -> None:
        """Seeding: rows arrive in ascending id order."""
        for entity_id, row, extras in rows:
            self.rows[entity_id] = row
            self.ids.append(entity_id)
            if extras:
                self.extras[entity_id] = extras
        if self.ids:
            self.last_id = max(self.last_id, self.ids[-1])

    def replace(self, entity_id: int, row: dict[str, Any], extras: dict[str, Any] | None) -> None:
        self.rows[entity_id] = row
        if extras:
            self.extras[entity_id] = extras
        else:
            self.extras.pop(entity_id, None)

    def remove(self, entity_id: int, when: int) -> None:
        row = self.rows.pop(entity_id)
        self.recycle_bin[entity_id] = (row, self.extras.pop(entity_id, None))
        del self.ids[bisect_left(self.ids, entity_id)]
        self.deleted[entity_id] = when

    def take_from_recycle_bin(self, entity_id: int) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """The deleted row and its extras, no longer counted as deleted; None if never deleted here."""
        recycled = self.recycle_bin.pop(entity_id, None)
        if recycled is not None:
            del self.deleted[entity_id]
        return recycled

    def full_row(self, entity_id: int) -> dict[str, Any]:
        """The row as ``*.get`` shows it: stored fields plus the non-empty explicit-only fields."""
        row = self.rows[entity_id]
        extras = self.extras.get(entity_id)
        if not extras:
            return row
        return {**row, **{name: value for name, value in extras.items() if value}}
