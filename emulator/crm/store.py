"""The portal's CRM (``portal.crm``): entity tables, writes that raise events, ground truth.

Every change — a REST call, the activity generator, a test's control-API "user" edit — goes through
`CrmStore.write`, which stamps the modification time and author, keeps derived fields consistent and
emits the entity's ``ONCRM*`` event with the writer's `Origin` (facts §3, §2.12).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from emulator.crm.clock import PortalClock
from emulator.crm.entities import (
    ADD,
    DELETE,
    LEGACY_TYPES,
    UPDATE,
    EntityType,
    smart_process_category,
    smart_process_type,
)
from emulator.crm.fields import Field, InvalidValue, to_stored
from emulator.crm.origin import Origin
from emulator.crm.reference import CATEGORY_CHANGED, CREATED, FINAL, MOVED, Reference
from emulator.crm.table import EntityTable
from emulator.crm.userfields import UserField, check_user_type, field_name
from emulator.crm.views import item_view

if TYPE_CHECKING:
    from emulator.portal import Portal

FIRST_SMART_PROCESS_TYPE_ID = 128  # smart processes get entityTypeId >= 128 (facts §3)
USER_FIELD_EVENT_VERBS = ("ADD", "UPDATE", "DELETE", "SETENUMVALUES")


class CrmError(Exception):
    """Base of the CRM store's own failures; REST layers translate them per API style."""


class UnknownEntity(CrmError, LookupError):
    def __init__(self, entity: str) -> None:
        super().__init__(f"unknown CRM entity {entity!r}")
        self.entity = entity


class EntityNotFound(CrmError, LookupError):
    def __init__(self, entity: str, entity_id: int) -> None:
        super().__init__(f"{entity} {entity_id} not found")
        self.entity = entity
        self.entity_id = entity_id


class InvalidFieldValue(CrmError, ValueError):
    def __init__(self, field_name: str, value: Any) -> None:
        super().__init__(f"invalid value for field {field_name}")
        self.field_name = field_name
        self.value = value


@dataclass(frozen=True)
class SmartProcess:
    """A row of ``crm.type.list``."""

    id: int
    entity_type_id: int
    title: str
    created: int  # epoch seconds


class CrmStore:
    def __init__(self, portal: Portal, clock: PortalClock | None = None) -> None:
        self.portal = portal
        self.clock = clock or PortalClock()
        self.tables: dict[str, EntityTable] = {
            entity_type.key: EntityTable(entity_type) for entity_type in LEGACY_TYPES
        }
        self.smart_processes: dict[int, SmartProcess] = {}  # by entityTypeId
        self.reference = Reference()
        self.product_rows: Any = None  # emulator.crm.product_rows.ProductRows, set by `emulator.crm.attach`
        self._last_user_field_id = 0
        self._last_type_id = 0  # types' ids are never reused, a deleted type's included
        self._last_multifield_id = 0
        # Writes received, by (entity, id, op, app client_id or "" for users/webhooks, auth_connector):
        # the ground truth that shows whose writes reached an object, and how often.
        self.writes: Counter[tuple[str, int, str, str, str]] = Counter()

    # --- lookup -----------------------------------------------------------------------------------

    def table(self, entity: str) -> EntityTable:
        try:
            return self.tables[entity]
        except KeyError:
            raise UnknownEntity(entity) from None

    def table_for_type_id(self, entity_type_id: int) -> EntityTable | None:
        for table in self.tables.values():
            if table.type.entity_type_id == entity_type_id:
                return table
        return None

    def entities(self) -> list[str]:
        """Entity keys present: deal, contact, company, lead, activity, item:<entityTypeId> ..."""
        return list(self.tables)

    def event_names(self) -> list[str]:
        """Every CRM event this portal can fire (the crm part of the ``events`` method)."""
        names = [name for table in self.tables.values() for name in table.type.all_event_names()]
        for table in self.tables.values():
            if table.type.legacy_name and table.type.uf_entity_id:
                prefix = f"ONCRM{table.type.legacy_name.upper()}USERFIELD"
                names += [prefix + verb for verb in USER_FIELD_EVENT_VERBS]
        return [*names, "ONCRMTYPEADD", "ONCRMTYPEUPDATE", "ONCRMTYPEDELETE"]

    # --- schema -----------------------------------------------------------------------------------

    def add_smart_process(self, title: str, entity_type_id: int | None = None) -> EntityTable:
        self._last_type_id += 1
        type_id = self._last_type_id
        if entity_type_id is None:
            entity_type_id = FIRST_SMART_PROCESS_TYPE_ID + 2 * (type_id - 1)
        entity_type = smart_process_type(type_id, entity_type_id, title)
        table = EntityTable(entity_type)
        self.tables[entity_type.key] = table
        self.smart_processes[entity_type_id] = SmartProcess(type_id, entity_type_id, title, self.clock.now())
        self.reference.add_smart_process(entity_type_id, smart_process_category(type_id))
        self.emit_reference("ONCRMTYPEADD", {"FIELDS": {"ID": type_id}})
        return table

    def rename_smart_process(self, entity_type_id: int, title: str) -> None:
        """An admin renames a smart process (``crm.type.update``): fires ``ONCRMTYPEUPDATE``."""
        with self.portal.lock:
            current = self.smart_processes[entity_type_id]
            self.smart_processes[entity_type_id] = SmartProcess(current.id, entity_type_id, title, current.created)
            self.tables[f"item:{entity_type_id}"].type = replace(self.tables[f"item:{entity_type_id}"].type,
                                                                  title=title)
            self.emit_reference("ONCRMTYPEUPDATE", {"FIELDS": {"ID": current.id}})

    def delete_smart_process(self, entity_type_id: int) -> None:
        """An admin deletes a smart process (``crm.type.delete``): fires ``ONCRMTYPEDELETE``.

        Bitrix24 deletes a type only when no item is left in it (the items are deleted first, each
        firing its own ``ONCRMDYNAMICITEMDELETE``); raises ValueError otherwise, like the real one
        refuses. Its items' deletion history goes with it."""
        with self.portal.lock:
            key = f"item:{entity_type_id}"
            if self.tables[key].rows:
                raise ValueError(f"smart process {entity_type_id} still has items: delete them first")
            current = self.smart_processes.pop(entity_type_id)
            del self.tables[key]
            self.reference.pipelines = {category_id: pipeline for category_id, pipeline
                                        in self.reference.pipelines.items()
                                        if pipeline.entity_type_id != entity_type_id}
            self.emit_reference("ONCRMTYPEDELETE", {"FIELDS": {"ID": current.id}})

    def emit_reference(self, event_name: str, data: dict[str, Any], origin: Origin | None = None) -> None:
        """Events of reference data (user fields, smart-process types, users): the id only (facts §3)."""
        events = self.portal.events
        if events is not None:
            events.emit(event_name, data, origin or Origin(user_id=1, client_id=None, auth_connector=""))

    def add_user_field(self, entity: str, name: str, user_type: str, *, label: str = "",
                       multiple: bool = False, mandatory: bool = False, items: tuple[str, ...] = (),
                       settings: dict[str, Any] | None = None, xml_id: str = "",
                       sort: int = 100) -> UserField:
        """A new ``UF_CRM_*`` column; existing rows get it empty (schema evolution at run time)."""
        table = self.table(entity)
        if table.type.uf_entity_id is None:
            raise UnknownEntity(f"{entity} (no user fields)")
        with self.portal.lock:
            full_name = field_name(name, table.type.uf_name_prefix)
            if table.field(full_name) is not None:
                raise ValueError(f"Field {full_name} already exists")
            self._last_user_field_id += 1
            # Enumeration item ids are portal-wide in Bitrix; derive them from the field id.
            first_item_id = self._last_user_field_id * 100 + 1
            enum_items = tuple((first_item_id + index, value) for index, value in enumerate(items))
            user_field = UserField(
                full_name, check_user_type(user_type), title=full_name, multiple=multiple, required=mandatory,
                id=self._last_user_field_id, entity_id=table.type.uf_entity_id, label=label, xml_id=xml_id,
                sort=sort, items=enum_items, settings=dict(settings or {}),
            )
            table.add_user_field(user_field)
            self._emit_user_field(table, user_field, "ADD")
            return user_field

    def set_enum_values(self, entity: str, name: str, values: tuple[str, ...]) -> UserField:
        """Replace the items of a list-type field, keeping the ids of values that stay
        (``crm.<entity>.userfield.update`` with ``LIST``); fires ``...USERFIELDSETENUMVALUES``."""
        table = self.table(entity)
        with self.portal.lock:
            current = table.user_fields[name]
            kept = {value: item_id for item_id, value in current.items}
            next_id = max([item_id for item_id, _ in current.items] + [current.id * 100])
            items = []
            for value in values:
                if value not in kept:
                    next_id += 1
                    kept[value] = next_id
                items.append((kept[value], value))
            updated = replace(current, items=tuple(items))
            table.redefine_user_field(updated)
            self._emit_user_field(table, updated, "SETENUMVALUES")
            return updated

    def relabel_user_field(self, entity: str, name: str, label: str) -> UserField:
        """An admin renames a user field; fires ``...USERFIELDUPDATE``."""
        table = self.table(entity)
        with self.portal.lock:
            updated = replace(table.user_fields[name], label=label)
            table.redefine_user_field(updated)
            self._emit_user_field(table, updated, "UPDATE")
            return updated

    def _emit_user_field(self, table: EntityTable, user_field: UserField, verb: str) -> None:
        # Only the legacy entities document user-field events ([D] crm/deals/user-defined-fields/events).
        if table.type.legacy_name:
            self.emit_reference(f"ONCRM{table.type.legacy_name.upper()}USERFIELD{verb}", {"FIELDS": {
                "ID": str(user_field.id), "ENTITY_ID": user_field.entity_id, "FIELD_NAME": user_field.name}})

    def remove_user_field(self, entity: str, name: str) -> UserField:
        table = self.table(entity)
        with self.portal.lock:
            removed = table.remove_user_field(name)
            self._emit_user_field(table, removed, "DELETE")
            return removed

    def user_field_by_id(self, user_field_id: int) -> tuple[EntityTable, UserField] | None:
        for table in self.tables.values():
            for user_field in table.user_fields.values():
                if user_field.id == user_field_id:
                    return table, user_field
        return None

    # --- writes -----------------------------------------------------------------------------------

    def write(self, entity: str, op: str, id: int | None, fields: dict[str, Any] | None,
              origin: Origin) -> int:
        """One change as a user or app makes it; returns the entity id (the new one for ``add``)."""
        if op == ADD:
            return self.add(entity, fields or {}, origin)
        if id is None:
            raise EntityNotFound(entity, 0)
        if op == UPDATE:
            self.update(entity, id, fields or {}, origin)
        elif op == DELETE:
            self.delete(entity, id, origin)
        else:
            raise ValueError(f"unknown operation {op!r}")
        return id

    def add(self, entity: str, fields: dict[str, Any], origin: Origin) -> int:
        table = self.table(entity)
        entity_type = table.type
        with self.portal.lock:
            entity_id = table.next_id()
            now = self.clock.now_iso()
            row: dict[str, Any] = {spec.name: ([] if spec.multiple else None) for spec in table.row_fields}
            row.update(entity_type.defaults)
            extras: dict[str, Any] = {}
            self._apply(table, row, extras, fields)
            row["ID"] = str(entity_id)
            if "TITLE" in row and not row["TITLE"]:
                row["TITLE"] = f"{entity_type.title} #{entity_id}"
            user = str(origin.user_id)
            row[entity_type.created_field] = now
            row[entity_type.modified_field] = now
            row[entity_type.author_field] = user
            row[entity_type.editor_field] = user
            if row.get("ASSIGNED_BY_ID") is None and "ASSIGNED_BY_ID" in row:
                row["ASSIGNED_BY_ID"] = user
            if row.get("RESPONSIBLE_ID") is None and "RESPONSIBLE_ID" in row:
                row["RESPONSIBLE_ID"] = user
            _derive(row, None, extras, user, now)
            table.insert(entity_id, row, extras or None)
            self._record_stage(entity_type, entity_id, None, row, now)
            self._emit(entity_type, ADD, entity_id, origin)
            return entity_id

    def update(self, entity: str, entity_id: int, fields: dict[str, Any], origin: Origin) -> None:
        table = self.table(entity)
        with self.portal.lock:
            before = table.rows.get(entity_id)
            if before is None:
                raise EntityNotFound(entity, entity_id)
            row = dict(before)
            extras = {name: list(values) for name, values in table.extras.get(entity_id, {}).items()}
            self._apply(table, row, extras, fields)
            now = self.clock.now_iso()
            user = str(origin.user_id)
            # Every update moves the modification time (second resolution, like Bitrix).
            row[table.type.modified_field] = now
            row[table.type.editor_field] = user
            _derive(row, before, extras, user, now)
            table.replace(entity_id, row, extras or None)
            self._record_stage(table.type, entity_id, before, row, now)
            self._emit(table.type, UPDATE, entity_id, origin)

    def delete(self, entity: str, entity_id: int, origin: Origin) -> None:
        table = self.table(entity)
        with self.portal.lock:
            if entity_id not in table.rows:
                raise EntityNotFound(entity, entity_id)
            table.remove(entity_id, self.clock.now())
            self._emit(table.type, DELETE, entity_id, origin)

    def restore(self, entity: str, entity_id: int, origin: Origin) -> None:
        """Bring a deleted object back from the recycle bin with its id, as a user restoring it does.

        Its fields are those it had when deleted; the modification time and editor become the
        restore's, and the entity's ``ONCRM*ADD`` event is emitted (the facts sheet, §3, names no
        restore event: the emulator assumes the ADD event, see README). Raises `EntityNotFound` if the
        id is not in the recycle bin."""
        table = self.table(entity)
        with self.portal.lock:
            recycled = table.take_from_recycle_bin(entity_id)
            if recycled is None:
                raise EntityNotFound(entity, entity_id)
            stored, extras = recycled
            row = {**stored, table.type.modified_field: self.clock.now_iso(),
                   table.type.editor_field: str(origin.user_id)}
            table.insert(entity_id, row, extras)
            self._emit(table.type, ADD, entity_id, origin)

    def _apply(self, table: EntityTable, row: dict[str, Any], extras: dict[str, Any],
               fields: dict[str, Any]) -> None:
        """Written fields (legacy UPPER or crm.item camelCase names) into the stored style.

        Unknown and read-only fields are ignored, as Bitrix does."""
        explicit = {spec.name for spec in table.type.explicit_fields}
        for key, value in fields.items():
            if key == "fm" and table.type.has_multifields:
                self._apply_fm(extras, value)
                continue
            spec = table.field(key) or table.field_by_camel(key) or table.field(str(key).upper())
            if spec is None or spec.read_only:
                continue
            if spec.name in explicit:
                self._apply_explicit(spec, extras, value)
                continue
            try:
                row[spec.name] = to_stored(spec, value, self.clock)
            except InvalidValue:
                raise InvalidFieldValue(spec.name, value) from None

    def _next_multifield_id(self) -> str:
        self._last_multifield_id += 1
        return str(self._last_multifield_id)

    def _apply_explicit(self, spec: Field, extras: dict[str, Any], value: Any) -> None:
        if spec.type != "crm_multifield":
            entries = value if isinstance(value, list) else [value]
            extras[spec.name] = [
                {**{str(key).upper(): item for key, item in entry.items()}, "ID": self._next_multifield_id()}
                for entry in entries if isinstance(entry, dict)
            ]
            return
        # PHP-bracket bodies (fields[PHONE][0][VALUE]=...) may decode to an index-keyed dict.
        entries = list(value.values()) if isinstance(value, dict) else value
        if not isinstance(entries, list | tuple):
            return
        for entry in entries:
            if isinstance(entry, dict):
                upper = {str(key).upper(): item for key, item in entry.items()}
                self._apply_multifield(extras, spec.name, upper)

    def _apply_fm(self, extras: dict[str, Any], value: Any) -> None:
        renamed = {"id": "ID", "typeId": "TYPE_ID", "valueType": "VALUE_TYPE", "value": "VALUE"}
        for entry in value if isinstance(value, list) else []:
            if isinstance(entry, dict) and entry.get("typeId"):
                normalized = {renamed.get(key, key): item for key, item in entry.items()}
                self._apply_multifield(extras, str(entry["typeId"]).upper(), normalized)

    def _apply_multifield(self, extras: dict[str, Any], type_id: str, entry: dict[str, Any]) -> None:
        """PHONE/EMAIL entries: with an ID they edit (empty VALUE or DELETE=Y removes), without they add."""
        values: list[dict[str, Any]] = extras.setdefault(type_id, [])
        existing_id = str(entry.get("ID") or "")
        value = entry.get("VALUE")
        if existing_id:
            for index, current in enumerate(values):
                if current["ID"] == existing_id:
                    if not value or str(entry.get("DELETE", "")).upper() == "Y":
                        del values[index]
                    else:
                        values[index] = {**current, "VALUE": str(value),
                                         "VALUE_TYPE": str(entry.get("VALUE_TYPE") or current["VALUE_TYPE"])}
                    break
            return
        if value:
            values.append({"ID": self._next_multifield_id(), "VALUE": str(value), "TYPE_ID": type_id,
                           "VALUE_TYPE": str(entry.get("VALUE_TYPE") or "WORK")})

    def next_multifield_id(self) -> str:
        """For the seeder: multifield value ids are portal-wide."""
        return self._next_multifield_id()

    def next_user_field_id(self) -> int:
        self._last_user_field_id += 1
        return self._last_user_field_id

    def _record_stage(self, entity_type: EntityType, entity_id: int, before: dict[str, Any] | None,
                      row: dict[str, Any], now: str) -> None:
        """A ``crm.stagehistory.list`` row when an item is created or its stage or pipeline changes
        (leads: STATUS_ID; deals and smart processes: STAGE_ID, facts §4.8)."""
        stage_field = "STATUS_ID" if entity_type.entity_type_id == 1 else "STAGE_ID"
        if stage_field not in row or (entity_type.entity_type_id not in (1, 2) and not entity_type.is_dynamic):
            return
        stage = row[stage_field]
        if before is not None and before.get(stage_field) == stage:
            return
        semantics = stage_semantics(stage)
        if before is None:
            type_id = CREATED
        elif before.get("CATEGORY_ID") != row.get("CATEGORY_ID"):
            type_id = CATEGORY_CHANGED
        else:
            type_id = FINAL if semantics != "P" else MOVED
        category = row.get("CATEGORY_ID")
        self.reference.history(entity_type.entity_type_id).append(
            type_id, entity_id, now, None if category is None else int(category), stage, semantics)

    def _emit(self, entity_type: EntityType, operation: str, entity_id: int, origin: Origin) -> None:
        # Every write emits, so this is where writes are counted too.
        self.writes[(entity_type.key, entity_id, operation, origin.client_id or "", origin.auth_connector)] += 1
        events = self.portal.events
        if events is None:
            return
        data = entity_type.event_data(entity_id)
        for name in entity_type.event_names(operation):
            events.emit(name, data, origin)

    # --- ground truth -----------------------------------------------------------------------------

    def write_counts(self, entity: str | None = None) -> list[dict[str, Any]]:
        """Writes received per object, operation, app and connector (``client_id`` "" = a user or a
        webhook), ordered by entity and id: who changed what, and how many times."""
        with self.portal.lock:
            items = sorted(self.writes.items())
        return [{"entity": key[0], "id": key[1], "op": key[2], "client_id": key[3], "connector": key[4],
                 "count": count} for key, count in items if entity is None or key[0] == entity]

    def ground_truth(self, entity: str) -> list[dict[str, Any]]:
        """Every id ever used: current fields as ``*.get`` shows them, or a tombstone."""
        table = self.table(entity)
        with self.portal.lock:
            render = item_view(table, None, False) if table.type.is_dynamic else table.full_row
            modified = table.type.modified_field
            truth = [
                {"id": entity_id, "deleted": False, "modified": table.rows[entity_id][modified],
                 "fields": render(entity_id)}
                for entity_id in table.ids
            ]
            truth.extend(
                {"id": entity_id, "deleted": True, "modified": self.clock.iso_uncached(when), "fields": None}
                for entity_id, when in table.deleted.items()
            )
        truth.sort(key=lambda entry: entry["id"])
        return truth


_SUCCESS_STAGES = ("WON", "SUCCESS", "CONVERTED")
_FAILURE_STAGES = ("LOSE", "FAIL", "JUNK")


def stage_semantics(stage: str | None) -> str:
    """P (in progress), S (success) or F (failure), from the stage id's suffix (``C1:WON``)."""
    code = (stage or "").rsplit(":", 1)[-1]
    if code in _SUCCESS_STAGES:
        return "S"
    if code in _FAILURE_STAGES:
        return "F"
    return "P"


STAGE_FIELDS = (("STAGE_ID", "STAGE_SEMANTIC_ID"), ("STATUS_ID", "STATUS_SEMANTIC_ID"))


def _derive(row: dict[str, Any], before: dict[str, Any] | None, extras: dict[str, Any], user: str,
            now: str) -> None:
    """Fields Bitrix computes itself: stage group, closed flag, who/when moved the stage, has-phone flags."""
    for stage_field, semantic_field in STAGE_FIELDS:
        if stage_field not in row:
            continue
        semantic = stage_semantics(row[stage_field])
        if semantic_field in row:
            row[semantic_field] = semantic
        if "CLOSED" in row:
            row["CLOSED"] = "N" if semantic == "P" else "Y"
        moved = before is None or before.get(stage_field) != row[stage_field]
        if moved:
            if "MOVED_TIME" in row:
                row["MOVED_TIME"] = now
            for moved_by in ("MOVED_BY_ID", "MOVED_BY"):
                if moved_by in row:
                    row[moved_by] = user
            if before is not None and "PREVIOUS_STAGE_ID" in row:
                row["PREVIOUS_STAGE_ID"] = before.get(stage_field)
        if "DATE_CLOSED" in row and moved and semantic != "P":
            row["DATE_CLOSED"] = now
    for flag, type_id in (("HAS_PHONE", "PHONE"), ("HAS_EMAIL", "EMAIL"), ("HAS_IMOL", "IM")):
        if flag in row:
            row[flag] = "Y" if extras.get(type_id) else "N"
