"""A portal's reference data and its stage history: what turns stored ids into names.

Pipelines (categories) with their stages, the other status dictionaries of ``crm.status.list``
(lead statuses, sources, contact and company types, industries, ...), currencies, departments, and
the append-only stage history of leads, deals and smart-process items (facts §4.8). The CRM store
writes a stage-history row whenever an item is created or changes its stage; the seeder writes the
history of the seeded rows, so "time in stage" has data from the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Entity type ids with a stage history (facts §3 object types; smart processes are >= 128).
LEAD_TYPE_ID = 1
DEAL_TYPE_ID = 2

# TYPE_ID of a stage-history row ([D] api-reference/crm/crm-stage-history-list.md).
CREATED, MOVED, FINAL, CATEGORY_CHANGED = 1, 2, 3, 5

SEMANTICS_WORD = {"P": "process", "S": "success", "F": "failure"}
_COLORS = {"P": "#39A8EF", "S": "#7BD500", "F": "#FF5752"}


@dataclass(frozen=True)
class Stage:
    code: str  # STATUS_ID without the pipeline prefix: "NEW", "WON"
    name: str
    semantics: str  # P (in progress), S (success), F (failure)


@dataclass
class Pipeline:
    """A category of deals or of a smart process, with its stages in funnel order."""

    id: int
    entity_type_id: int
    name: str
    sort: int
    stages: list[Stage]
    is_default: bool = False

    def status_entity_id(self) -> str:
        """``ENTITY_ID`` of its stages in ``crm.status.list`` (facts §4.8)."""
        if self.entity_type_id == DEAL_TYPE_ID:
            return "DEAL_STAGE" if self.id == 0 else f"DEAL_STAGE_{self.id}"
        return f"DYNAMIC_{self.entity_type_id}_STAGE_{self.id}"

    def stage_id(self, code: str) -> str:
        """The stored ``STAGE_ID``: bare in the default deal pipeline, ``C1:NEW`` in others,
        ``DT128_11:NEW`` in smart processes."""
        if self.entity_type_id == DEAL_TYPE_ID:
            return code if self.id == 0 else f"C{self.id}:{code}"
        return f"DT{self.entity_type_id}_{self.id}:{code}"

    def stage_ids(self) -> list[str]:
        return [self.stage_id(stage.code) for stage in self.stages]


DEAL_PIPELINES: tuple[tuple[int, str, tuple[Stage, ...]], ...] = (
    (0, "Sales", (
        Stage("NEW", "New", "P"), Stage("PREPARATION", "Preparing documents", "P"),
        Stage("PREPAYMENT_INVOICE", "Invoice", "P"), Stage("EXECUTING", "In progress", "P"),
        Stage("FINAL_INVOICE", "Final invoice", "P"), Stage("WON", "Deal won", "S"),
        Stage("LOSE", "Deal lost", "F"),
    )),
    (1, "Partners", (
        Stage("NEW", "Lead from partner", "P"), Stage("NEGOTIATION", "Negotiation", "P"),
        Stage("CONTRACT", "Contract signed", "P"), Stage("WON", "Paid", "S"),
        Stage("LOSE", "Declined", "F"),
    )),
    (2, "Tenders", (
        Stage("NEW", "Tender found", "P"), Stage("BID", "Bid submitted", "P"),
        Stage("WON", "Tender won", "S"), Stage("LOSE", "Tender lost", "F"),
    )),
)
SMART_PROCESS_STAGES: tuple[Stage, ...] = (
    Stage("NEW", "New", "P"), Stage("PREPARATION", "Preparation", "P"), Stage("CLIENT", "With client", "P"),
    Stage("SUCCESS", "Success", "S"), Stage("FAIL", "Failure", "F"),
)
LEAD_STATUSES: tuple[Stage, ...] = (
    Stage("NEW", "Unprocessed", "P"), Stage("IN_PROCESS", "In progress", "P"),
    Stage("PROCESSED", "Processed", "P"), Stage("CONVERTED", "Good lead", "S"), Stage("JUNK", "Junk lead", "F"),
)
# The other dictionaries of crm.status.list: ENTITY_ID -> (STATUS_ID, NAME).
DICTIONARIES: dict[str, tuple[tuple[str, str], ...]] = {
    "SOURCE": (("CALL", "Call"), ("EMAIL", "E-mail"), ("WEB", "Website"), ("ADVERTISING", "Advertising"),
               ("PARTNER", "Existing client"), ("RECOMMENDATION", "By recommendation"),
               ("TRADE_SHOW", "Show/Exhibition"), ("OTHER", "Other")),
    "CONTACT_TYPE": (("CLIENT", "Clients"), ("SUPPLIER", "Suppliers"), ("PARTNER", "Partners"),
                     ("OTHER", "Other")),
    "COMPANY_TYPE": (("CUSTOMER", "Client"), ("SUPPLIER", "Supplier"), ("COMPETITOR", "Competitor"),
                     ("PARTNER", "Partner"), ("OTHER", "Other")),
    "INDUSTRY": (("IT", "Information Technology"), ("TELECOM", "Telecommunication"),
                 ("MANUFACTURING", "Manufacturing"), ("BANKING", "Banking services"),
                 ("CONSULTING", "Consulting"), ("FINANCE", "Finance"), ("GOVERNMENT", "Government"),
                 ("DELIVERY", "Delivery"), ("ENTERTAINMENT", "Entertainment"), ("NOTPROFIT", "Non-profit"),
                 ("OTHER", "Other")),
    "EMPLOYEES": (("EMPLOYEES_1", "less than 50"), ("EMPLOYEES_2", "50-250"), ("EMPLOYEES_3", "250-500"),
                  ("EMPLOYEES_4", "over 500")),
    "DEAL_TYPE": (("SALE", "Sales"), ("COMPLEX", "Complex sale"), ("GOODS", "Merchandise sales"),
                  ("SERVICES", "Service sales"), ("SERVICE", "After-sales service")),
}


@dataclass(frozen=True)
class Currency:
    code: str
    name: str
    amount: str  # rate against the base currency, as Bitrix prints it ("1.0000")
    sort: int
    base: bool
    format_string: str


CURRENCIES: tuple[Currency, ...] = (
    Currency("USD", "US Dollar", "1.0000", 100, True, "$#"),
    Currency("EUR", "Euro", "1.0800", 200, False, "&euro;#"),
    Currency("RUB", "Russian Ruble", "0.0110", 300, False, "# &#8381;"),
)


@dataclass(frozen=True)
class Department:
    id: int
    name: str
    sort: int
    parent: int | None
    head: int | None


DEPARTMENTS: tuple[Department, ...] = (
    Department(1, "Company", 500, None, 1),
    Department(2, "Sales", 500, 1, 4),
    Department(3, "Customer support", 500, 1, 3),
    Department(4, "Partner sales", 500, 2, 6),
    Department(5, "Tenders", 500, 2, 7),
)
# Which departments seeded users work in; users not listed join Sales.
USER_DEPARTMENTS: dict[int, tuple[int, ...]] = {1: (1,), 2: (2,), 3: (3,), 4: (2,), 6: (4,), 7: (5,), 9: (3,)}
FIRED_USERS = frozenset({8})
POSITIONS = {1: "CEO", 3: "Support lead", 4: "Head of sales"}


@dataclass
class StageHistory:
    """``crm.stagehistory.list`` rows of one entity type, ids ascending (append-only)."""

    entity_type_id: int
    rows: list[dict] = field(default_factory=list)
    last_id: int = 0

    def append(self, type_id: int, owner_id: int, created: str, category_id: int | None, stage_id: str,
               semantics: str) -> None:
        self.last_id += 1
        self.rows.append({"ID": self.last_id, "TYPE_ID": type_id, "OWNER_ID": owner_id, "CREATED_TIME": created,
                          "CATEGORY_ID": category_id, "STAGE_SEMANTIC_ID": semantics, "STAGE_ID": stage_id})


class Reference:
    """Reference data of one portal (``portal.crm.reference``)."""

    def __init__(self) -> None:
        self.pipelines: dict[int, Pipeline] = {}  # by category id (portal-wide, like Bitrix)
        self.statuses: list[dict] = []  # extra rows added at run time (crm.status.add)
        self.currencies: list[Currency] = list(CURRENCIES)
        self.departments: dict[int, Department] = {d.id: d for d in DEPARTMENTS}
        self.histories: dict[int, StageHistory] = {}
        self._last_status_id = 0
        for category_id, name, stages in DEAL_PIPELINES:
            self.pipelines[category_id] = Pipeline(category_id, DEAL_TYPE_ID, name, 100 * (category_id + 1),
                                                   list(stages), is_default=category_id == 0)

    # --- pipelines --------------------------------------------------------------------------------

    def add_smart_process(self, entity_type_id: int, category_id: int) -> None:
        self.pipelines[category_id] = Pipeline(category_id, entity_type_id, "General", 500,
                                               list(SMART_PROCESS_STAGES), is_default=True)

    def categories(self, entity_type_id: int) -> list[Pipeline]:
        return sorted((p for p in self.pipelines.values() if p.entity_type_id == entity_type_id),
                      key=lambda p: (p.sort, p.id))

    def pipeline(self, category_id: int) -> Pipeline | None:
        return self.pipelines.get(category_id)

    def add_stage(self, category_id: int, code: str, name: str, semantics: str = "P") -> str:
        """A new stage before the final ones (an admin editing the funnel); returns its STAGE_ID."""
        pipeline = self.pipelines[category_id]
        first_final = next((i for i, s in enumerate(pipeline.stages) if s.semantics != "P"), len(pipeline.stages))
        pipeline.stages.insert(first_final, Stage(code, name, semantics))
        return pipeline.stage_id(code)

    def rename_stage(self, category_id: int, code: str, name: str) -> None:
        pipeline = self.pipelines[category_id]
        pipeline.stages = [Stage(s.code, name, s.semantics) if s.code == code else s for s in pipeline.stages]

    # --- crm.status.list --------------------------------------------------------------------------

    def status_rows(self) -> list[dict]:
        """Every dictionary of ``crm.status.list`` in the legacy string style (facts §4.8)."""
        rows: list[dict] = []
        next_id = iter(range(1, 1_000_000))

        def add(entity_id: str, status_id: str, name: str, sort: int, semantics: str | None,
                category_id: int | None) -> None:
            word = SEMANTICS_WORD.get(semantics or "P", "process")
            rows.append({
                "ID": str(next(next_id)), "ENTITY_ID": entity_id, "STATUS_ID": status_id, "NAME": name,
                "NAME_INIT": name, "SORT": str(sort), "SYSTEM": "Y",
                "CATEGORY_ID": None if category_id is None else str(category_id),
                "COLOR": _COLORS.get(semantics or "P", "#39A8EF"),
                "SEMANTICS": semantics if semantics in ("S", "F") else None,
                "EXTRA": {"SEMANTICS": word, "COLOR": _COLORS.get(semantics or "P", "#39A8EF")},
            })

        for index, stage in enumerate(LEAD_STATUSES):
            add("STATUS", stage.code, stage.name, 10 * (index + 1), stage.semantics, None)
        for entity_id, entries in DICTIONARIES.items():
            for index, (status_id, name) in enumerate(entries):
                add(entity_id, status_id, name, 10 * (index + 1), None, None)
        for pipeline in sorted(self.pipelines.values(), key=lambda p: (p.entity_type_id, p.id)):
            for index, stage in enumerate(pipeline.stages):
                add(pipeline.status_entity_id(), pipeline.stage_id(stage.code), stage.name, 10 * (index + 1),
                    stage.semantics, pipeline.id)
        rows.extend(self.statuses)
        return rows

    # --- stage history ----------------------------------------------------------------------------

    def history(self, entity_type_id: int) -> StageHistory:
        found = self.histories.get(entity_type_id)
        if found is None:
            found = self.histories[entity_type_id] = StageHistory(entity_type_id)
        return found


def user_departments(user_id: int) -> tuple[int, ...]:
    return USER_DEPARTMENTS.get(user_id, (2,))
