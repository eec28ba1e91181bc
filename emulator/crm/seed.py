"""Synthetic CRM data: realistic-looking, deterministic by seed, tens of thousands of rows a second.

Rows are built directly in the stored style (no per-row write path, no events: seeding is the
portal's history, not a change feed). Creation times grow with the id, as on a real portal, and are
anchored to a fixed date so the same seed always gives the same data. The `changes` helpers produce
plausible edits in the written style for the activity generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from emulator.crm.clock import PortalClock
from emulator.crm.entities import smart_process_category
from emulator.crm.reference import LEAD_STATUSES as LEAD_STATUS_STAGES
from emulator.crm.store import STAGE_FIELDS, CrmStore, stage_semantics
from emulator.crm.table import EntityTable

# Seeded history ends here (2025-06-01T00:00:00Z) and reaches two years back.
HISTORY_END = 1_748_736_000
HISTORY_SPAN = 2 * 365 * 24 * 3600

FIRST_NAMES = ("Anna", "Boris", "Chloe", "Dmitry", "Elena", "Farid", "Greta", "Hugo", "Irina", "Jonas",
               "Katya", "Lukas", "Maria", "Nikolai", "Olga", "Pavel", "Quentin", "Rosa", "Sergei", "Tanya")
LAST_NAMES = ("Ivanova", "Smith", "Petrov", "Muller", "Garcia", "Kowalski", "Novak", "Rossi", "Sokolov",
              "Dubois", "Jensen", "Horvat", "Popescu", "Nielsen", "Volkova", "Berg")
COMPANY_WORDS = ("Nord", "Delta", "Vector", "Orion", "Granit", "Polar", "Zenit", "Atlas", "Kvant", "Mir")
COMPANY_SUFFIXES = ("LLC", "Ltd", "Group", "Trade", "Systems", "Logistics")
DEAL_STAGE_ORDER = ("NEW", "PREPARATION", "PREPAYMENT_INVOICE", "EXECUTING", "FINAL_INVOICE", "WON", "LOSE")
DEAL_CATEGORIES = (0, 0, 0, 1, 2)  # most deals in the default pipeline (facts §4.8 categories)
DEAL_STAGES = ("NEW",) * 4 + ("PREPARATION",) * 3 + ("PREPAYMENT_INVOICE", "EXECUTING", "FINAL_INVOICE") \
    + ("WON",) * 3 + ("LOSE",) * 2
LEAD_STATUSES = ("NEW",) * 4 + ("IN_PROCESS",) * 3 + ("PROCESSED", "CONVERTED", "JUNK")
SOURCES = ("CALL", "EMAIL", "WEB", "ADVERTISING", "PARTNER", "RECOMMENDATION", "TRADE_SHOW", "OTHER")
CURRENCIES = ("USD", "USD", "USD", "EUR", "RUB")
INDUSTRIES = ("IT", "TELECOM", "MANUFACTURING", "BANKING", "CONSULTING", "FINANCE", "GOVERNMENT", "OTHER")
SPA_STAGE_CODES = ("NEW", "NEW", "PREPARATION", "CLIENT", "SUCCESS", "FAIL")
PHONE_TYPES = ("WORK", "MOBILE")
# (OWNER_TYPE_ID, owner entity) of seeded activities; deals own most of them.
ACTIVITY_OWNERS = ((2, "deal"), (2, "deal"), (3, "contact"), (1, "lead"), (4, "company"))
DAY_POOL = 20_000  # days back from HISTORY_END that date fields (birthdays included) can take

# User fields every seeded portal starts with: (entity, name suffix, USER_TYPE_ID, label, list items).
SEED_USER_FIELDS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("deal", "1700000000001", "string", "Project code", ()),
    ("deal", "1700000000002", "double", "Discount, %", ()),
    ("deal", "1700000000003", "boolean", "Key account", ()),
    ("deal", "1700000000004", "date", "Contract date", ()),
    ("deal", "1700000000005", "datetime", "Next call", ()),
    ("deal", "1700000000006", "enumeration", "Segment", ("SMB", "Mid-market", "Enterprise")),
    ("deal", "1700000000007", "money", "Budget", ()),
    ("contact", "1700000000011", "string", "Preferred channel", ()),
    ("contact", "1700000000012", "boolean", "Newsletter", ()),
    ("company", "1700000000021", "enumeration", "Tier", ("Bronze", "Silver", "Gold")),
    ("company", "1700000000022", "double", "Credit limit", ()),
    ("lead", "1700000000031", "string", "Campaign", ()),
    ("lead", "1700000000032", "datetime", "Callback at", ()),
)
SEED_ITEM_USER_FIELDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("1700000000101", "string", "Contract number", ()),
    ("1700000000102", "double", "Weight, kg", ()),
    ("1700000000103", "boolean", "Urgent", ()),
)

Fields = dict[str, Any]


class Draw:
    """Fast draws from one seeded generator (``random.choice`` costs ~1 µs; 100,000 rows need ~30 each)."""

    __slots__ = ("random",)

    def __init__(self, rng: random.Random) -> None:
        self.random = rng.random

    def pick(self, choices: tuple[Any, ...] | list[Any]) -> Any:
        return choices[int(self.random() * len(choices))]

    def below(self, limit: int) -> int:
        return int(self.random() * limit)

    def chance(self, probability: float) -> bool:
        return self.random() < probability


class Seeder:
    """Fills one portal's CRM; `changes` reuses the same vocabulary for live edits."""

    def __init__(self, store: CrmStore, seed: int, users: list[int]) -> None:
        self.store = store
        self.seed = seed
        self.users = users or [1]
        self.user_ids = [str(user) for user in self.users]
        self.clock = store.clock
        last_day = self.clock.day_of(HISTORY_END)
        self._categories = self.draw("deal-category")
        # Date fields draw from a pool of portal-format days (formatting each one is the slow part).
        self._days = [self.clock.day_iso(last_day - timedelta(days=back)) for back in range(DAY_POOL)]

    def draw(self, purpose: str) -> Draw:
        # String seeds are hashed with SHA-512 by `random`: stable across runs and machines.
        return Draw(random.Random(f"{self.seed}:{purpose}"))

    # --- schema -------------------------------------------------------------------------------------

    def create_schema(self, smart_process_types: int) -> None:
        for index in range(smart_process_types):
            self.store.add_smart_process(f"Smart process {index + 1}")
        for entity, suffix, user_type, label, items in SEED_USER_FIELDS:
            self.store.add_user_field(entity, suffix, user_type, label=label, items=items)
        for entity in self.store.entities():
            if entity.startswith("item:"):
                for suffix, user_type, label, items in SEED_ITEM_USER_FIELDS:
                    self.store.add_user_field(entity, suffix, user_type, label=label, items=items)

    # --- rows ---------------------------------------------------------------------------------------

    def fill(self, entity: str, count: int) -> None:
        table = self.store.table(entity)
        draw = self.draw(entity)
        make = self._maker(table)
        template = {spec.name: ([] if spec.multiple else None) for spec in table.row_fields}
        template.update(table.type.defaults)
        recent_days = self._days[:HISTORY_SPAN // 86400]
        uf_makers = [(name, _uf_value_maker(spec.type, spec.items, self.clock, recent_days))
                     for name, spec in table.user_fields.items()]
        entity_type = table.type
        users = self.user_ids
        has_assignee = "ASSIGNED_BY_ID" in template
        step = HISTORY_SPAN / max(count, 1)
        first_id = table.last_id + 1
        iso = self.clock.iso_uncached

        def rows() -> Any:
            for offset in range(count):
                entity_id = first_id + offset
                created = int(HISTORY_END - HISTORY_SPAN + offset * step + draw.random() * step)
                modified = created + int(draw.random() * (HISTORY_END - created))
                row = dict(template)
                fields, extras = make(draw, entity_id)
                row.update(fields)
                row["ID"] = str(entity_id)
                row[entity_type.created_field] = iso(created)
                row[entity_type.modified_field] = iso(modified)
                row[entity_type.author_field] = draw.pick(users)
                row[entity_type.editor_field] = draw.pick(users)
                if has_assignee:
                    row["ASSIGNED_BY_ID"] = draw.pick(users)
                for name, value_of in uf_makers:
                    if draw.random() < 0.8:
                        row[name] = value_of(draw)
                _seed_derived(row, extras)
                yield entity_id, row, extras

        table.bulk_load(rows())
        self._seed_stage_history(table, first_id)

    def _seed_stage_history(self, table: EntityTable, first_id: int) -> None:
        """The stage history of seeded rows: created in the first stage, then through the funnel's
        stages in order up to the current one (a lost item drops out part-way), the moves spread
        evenly between creation and the last change. No draws: the seed's data stays as it was."""
        entity_type = table.type
        stage_field = "STATUS_ID" if entity_type.entity_type_id == 1 else "STAGE_ID"
        if entity_type.entity_type_id not in (1, 2) and not entity_type.is_dynamic:
            return
        history = self.store.reference.history(entity_type.entity_type_id)
        parse = self.clock.parse
        iso = self.clock.iso_uncached
        for entity_id in table.ids:
            if entity_id < first_id:
                continue
            row = table.rows[entity_id]
            category = row.get("CATEGORY_ID")
            category_id = None if category is None else int(category)
            path = self._stage_path(entity_type.entity_type_id, category_id, row[stage_field], entity_id)
            created = parse(row[entity_type.created_field]) or HISTORY_END
            span = max((parse(row[entity_type.modified_field]) or created) - created, 0)
            for step, stage in enumerate(path):
                semantics = stage_semantics(stage)
                kind = 1 if step == 0 else 3 if semantics != "P" else 2
                history.append(kind, entity_id, iso(created + span * step // len(path)), category_id, stage,
                               semantics)

    def _stage_path(self, entity_type_id: int, category_id: int | None, stage: str, entity_id: int) -> list[str]:
        if entity_type_id == 1:
            stages = [(status.code, status.semantics) for status in LEAD_STATUS_STAGES]
        else:
            pipeline = self.store.reference.pipeline(category_id or 0)
            if pipeline is None:
                return [stage]
            stages = [(pipeline.stage_id(s.code), s.semantics) for s in pipeline.stages]
        process = [stage_id for stage_id, semantics in stages if semantics == "P"]
        if stage in process:
            return process[:process.index(stage) + 1]
        if stage_semantics(stage) == "S":
            return [*process, stage]
        return [*process[:1 + entity_id % len(process)], stage]

    def _maker(self, table: EntityTable) -> Callable[[Draw, int], tuple[Fields, Fields | None]]:
        key = table.type.key
        if key.startswith("item:"):
            return self._item_maker(table)
        return {
            "deal": self._deal,
            "contact": self._contact,
            "company": self._company,
            "lead": self._lead,
            "activity": self._activity,
        }[key]

    def _some_id(self, draw: Draw, entity: str) -> str | None:
        table = self.store.tables.get(entity)
        if table is None or not table.ids or draw.random() < 0.15:
            return None
        return str(draw.pick(table.ids))

    def _day(self, draw: Draw, days_back: int) -> str:
        return self._days[draw.below(min(days_back, DAY_POOL))]

    def _deal_stage(self, category_id: int, code: str) -> str:
        """A default-pipeline stage code mapped onto the deal's pipeline (same funnel position)."""
        pipeline = self.store.reference.pipeline(category_id)
        if pipeline is None or category_id == 0:
            return code
        semantics = stage_semantics(code)
        candidates = [stage.code for stage in pipeline.stages if stage.semantics == semantics]
        position = DEAL_STAGE_ORDER.index(code) if code in DEAL_STAGE_ORDER else 0
        return pipeline.stage_id(candidates[position % len(candidates)])

    def _deal(self, draw: Draw, entity_id: int) -> tuple[Fields, None]:
        stage = draw.pick(DEAL_STAGES)
        # Drawn from its own stream, so the rest of a deal stays what the seed always made.
        category_id = self._categories.pick(DEAL_CATEGORIES)
        return {
            "TITLE": f"Deal #{entity_id}: {draw.pick(COMPANY_WORDS)} order",
            "CATEGORY_ID": str(category_id),
            "STAGE_ID": self._deal_stage(category_id, stage),
            "PROBABILITY": str(draw.pick((10, 20, 50, 80, 100))),
            "CURRENCY_ID": draw.pick(CURRENCIES),
            "OPPORTUNITY": f"{(1_000 + draw.below(4_999_000)) / 100:.2f}",
            "IS_MANUAL_OPPORTUNITY": "Y" if draw.random() < 0.3 else "N",
            "COMPANY_ID": self._some_id(draw, "company"),
            "CONTACT_ID": self._some_id(draw, "contact"),
            "BEGINDATE": self._day(draw, 700),
            "CLOSEDATE": self._day(draw, 400),
            "SOURCE_ID": draw.pick(SOURCES),
            "IS_NEW": "N",
            "COMMENTS": None if draw.random() < 0.7 else f"Call back about order {entity_id}",
        }, None

    def _person(self, draw: Draw) -> tuple[str, str]:
        return draw.pick(FIRST_NAMES), draw.pick(LAST_NAMES)

    def _communications(self, draw: Draw, login: str) -> Fields:
        extras: Fields = {}
        if draw.random() < 0.85:
            extras["PHONE"] = [{"ID": self.store.next_multifield_id(), "VALUE_TYPE": draw.pick(PHONE_TYPES),
                                "VALUE": f"+1555{1_000_000 + draw.below(9_000_000)}", "TYPE_ID": "PHONE"}]
        if draw.random() < 0.7:
            extras["EMAIL"] = [{"ID": self.store.next_multifield_id(), "VALUE_TYPE": "WORK",
                                "VALUE": f"{login}@example.com", "TYPE_ID": "EMAIL"}]
        return extras

    def _contact(self, draw: Draw, entity_id: int) -> tuple[Fields, Fields]:
        first, last = self._person(draw)
        return {
            "NAME": first,
            "LAST_NAME": last,
            "POST": draw.pick((None, "Manager", "Director", "Engineer", "Accountant")),
            "BIRTHDATE": self._day(draw, 20_000) if draw.random() < 0.3 else None,
            "SOURCE_ID": draw.pick(SOURCES),
            "COMPANY_ID": self._some_id(draw, "company"),
        }, self._communications(draw, f"{first}.{last}{entity_id}".lower())

    def _company(self, draw: Draw, entity_id: int) -> tuple[Fields, Fields]:
        title = f"{draw.pick(COMPANY_WORDS)} {draw.pick(COMPANY_SUFFIXES)} {entity_id}"
        return {
            "TITLE": title,
            "COMPANY_TYPE": draw.pick(("CUSTOMER", "CUSTOMER", "SUPPLIER", "PARTNER")),
            "INDUSTRY": draw.pick(INDUSTRIES),
            "REVENUE": f"{10_000 + draw.below(99_990_000):.2f}",
            "CURRENCY_ID": draw.pick(CURRENCIES),
            "EMPLOYEES": draw.pick(("EMPLOYEES_1", "EMPLOYEES_2", "EMPLOYEES_3", "EMPLOYEES_4")),
        }, self._communications(draw, f"office{entity_id}")

    def _lead(self, draw: Draw, entity_id: int) -> tuple[Fields, Fields]:
        first, last = self._person(draw)
        return {
            "TITLE": f"Lead #{entity_id} from {draw.pick(SOURCES).lower()}",
            "NAME": first,
            "LAST_NAME": last,
            "STATUS_ID": draw.pick(LEAD_STATUSES),
            "SOURCE_ID": draw.pick(SOURCES),
            "OPPORTUNITY": f"{draw.below(1_000_000) / 100:.2f}",
            "CURRENCY_ID": draw.pick(CURRENCIES),
            "COMPANY_TITLE": f"{draw.pick(COMPANY_WORDS)} {draw.pick(COMPANY_SUFFIXES)}",
        }, self._communications(draw, f"lead{entity_id}")

    def _activity(self, draw: Draw, entity_id: int) -> tuple[Fields, None]:
        owner_type, owner_entity = draw.pick(ACTIVITY_OWNERS)
        owner = self._some_id(draw, owner_entity) or "1"
        activity_type = draw.pick((2, 2, 4, 1))  # call, call, email, meeting
        start = HISTORY_END - int(draw.random() * HISTORY_SPAN)
        completed = draw.random() < 0.7
        return {
            "OWNER_ID": owner,
            "OWNER_TYPE_ID": str(owner_type),
            "TYPE_ID": str(activity_type),
            "PROVIDER_ID": {2: "VOXIMPLANT_CALL", 4: "CRM_EMAIL", 1: "CRM_MEETING"}[activity_type],
            "SUBJECT": f"{('Meeting', 'Call', '', 'E-mail')[activity_type - 1]} #{entity_id}",
            "START_TIME": self.clock.iso_uncached(start),
            "END_TIME": self.clock.iso_uncached(start + 900),
            "DEADLINE": self.clock.iso_uncached(start + 900),
            "COMPLETED": "Y" if completed else "N",
            "STATUS": "2" if completed else "1",
            "RESPONSIBLE_ID": draw.pick([str(user) for user in self.users]),
            "DIRECTION": str(draw.pick((1, 2))),
        }, None

    def _item_maker(self, table: EntityTable) -> Callable[[random.Random, int], tuple[Fields, None]]:
        entity_type_id = table.type.entity_type_id
        category = smart_process_category(table.type.dynamic_type_id or 0)

        def make(draw: Draw, entity_id: int) -> tuple[Fields, None]:
            contact = self._some_id(draw, "contact")
            return {
                "TITLE": f"{table.type.title} item #{entity_id}",
                "STAGE_ID": f"DT{entity_type_id}_{category}:{draw.pick(SPA_STAGE_CODES)}",
                "OPPORTUNITY": f"{draw.below(2_000_000) / 100:.2f}",
                "CURRENCY_ID": draw.pick(CURRENCIES),
                "COMPANY_ID": self._some_id(draw, "company"),
                "CONTACT_ID": contact,
                "CONTACT_IDS": [contact] if contact else [],
                "SOURCE_ID": draw.pick(SOURCES),
            }, None

        return make

    # --- live edits -----------------------------------------------------------------------------------

    def new_fields(self, draw: Draw, entity: str) -> Fields:
        """Fields for a new entity, in the written (legacy) style, multifields without ids."""
        table = self.store.table(entity)
        fields, extras = self._maker(table)(draw, table.last_id + 1)
        for name, values in (extras or {}).items():
            fields[name] = [{"VALUE": value["VALUE"], "VALUE_TYPE": value["VALUE_TYPE"]} for value in values]
        return {name: value for name, value in fields.items() if value is not None}

    def changes(self, draw: Draw, entity: str, entity_id: int | None = None) -> Fields:
        """A plausible edit of an existing entity (a stage move, a new amount, a renamed contact);
        a deal's stage move stays in its own pipeline."""
        table = self.store.table(entity)
        key = table.type.key
        if key == "deal":
            row = table.rows.get(entity_id) if entity_id is not None else None
            category_id = int((row or {}).get("CATEGORY_ID") or 0)
            return draw.pick((
                {"STAGE_ID": self._deal_stage(category_id, draw.pick(DEAL_STAGES))},
                {"OPPORTUNITY": f"{(1_000 + draw.below(4_999_000)) / 100:.2f}"},
                {"COMMENTS": f"Updated terms v{draw.below(1000)}"},
                {"UF_CRM_1700000000002": f"{draw.below(3000) / 100:.2f}"},
            ))
        if key in ("contact", "lead"):
            first, last = self._person(draw)
            return draw.pick(({"NAME": first}, {"LAST_NAME": last}, {"POST": draw.pick(("Manager", "CEO"))}))
        if key == "company":
            return draw.pick(({"INDUSTRY": draw.pick(INDUSTRIES)},
                               {"REVENUE": f"{10_000 + draw.below(99_990_000):.2f}"}))
        if key == "activity":
            completed = draw.random() < 0.5
            return {"COMPLETED": "Y" if completed else "N", "STATUS": "2" if completed else "1"}
        category = smart_process_category(table.type.dynamic_type_id or 0)
        return draw.pick((
            {"STAGE_ID": f"DT{table.type.entity_type_id}_{category}:{draw.pick(SPA_STAGE_CODES)}"},
            {"OPPORTUNITY": f"{draw.below(2_000_000) / 100:.2f}"},
        ))


def _seed_derived(row: dict[str, Any], extras: Fields | None) -> None:
    for stage_field, semantic_field in STAGE_FIELDS:
        if stage_field in row:
            semantic = stage_semantics(row[stage_field])
            if semantic_field in row:
                row[semantic_field] = semantic
            if "CLOSED" in row:
                row["CLOSED"] = "N" if semantic == "P" else "Y"
    if extras is not None:
        if "HAS_PHONE" in row:
            row["HAS_PHONE"] = "Y" if extras.get("PHONE") else "N"
        if "HAS_EMAIL" in row:
            row["HAS_EMAIL"] = "Y" if extras.get("EMAIL") else "N"


def _uf_value_maker(user_type: str, items: tuple[tuple[int, str], ...], clock: PortalClock,
                    days: list[str]) -> Callable[[Draw], Any]:
    if user_type == "double":
        return lambda draw: f"{draw.below(5000) / 100:.2f}"
    if user_type == "boolean":
        return lambda draw: "1" if draw.random() < 0.3 else "0"
    if user_type == "date":
        return lambda draw: days[draw.below(len(days))]
    if user_type == "datetime":
        return lambda draw: clock.iso_uncached(HISTORY_END - int(draw.random() * HISTORY_SPAN))
    if user_type == "enumeration":
        ids = [str(item_id) for item_id, _ in items]
        return lambda draw: draw.pick(ids)
    if user_type == "money":
        return lambda draw: f"{(100 + draw.below(9_999_900)) / 100:.2f}|USD"
    if user_type == "integer":
        return lambda draw: str(draw.below(1000))
    return lambda draw: f"PRJ-{10_000 + draw.below(89_999)}"


def seed_portal(store: CrmStore, seed: int, counts: dict[str, int], smart_process_types: int,
                users: list[int]) -> Seeder:
    """Create the schema and fill every entity; referenced entities first so links point somewhere."""
    seeder = Seeder(store, seed, users)
    seeder.create_schema(smart_process_types)
    for entity in ("company", "contact", "lead", "deal"):
        seeder.fill(entity, counts.get(entity, 0))
    for entity in store.entities():
        if entity.startswith("item:"):
            seeder.fill(entity, counts.get("item", 0))
    seeder.fill("activity", counts.get("activity", 0))
    return seeder
