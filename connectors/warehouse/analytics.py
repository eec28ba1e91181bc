"""The analysts' schema: views over the warehouse with names instead of ids, and nothing internal.

One view per entity table (live rows only: no tombstones, no ``_raw`` or other ``_`` bookkeeping
columns) with the labels an analyst expects joined in: stage and pipeline names, status, source and
type names, the responsible user's name and department, list-item labels of list-type user fields
(``<column>_label``) and the smart-process title. Beside them: the dimensions (users with their
department name, departments, statuses, pipelines, smart-process types, currencies, user fields and
their items), ``deal_product_rows``, the ``columns`` dictionary, ``stage_history`` with the time
spent in each stage, and ``<table>_as_of(timestamp)`` giving the rows as they were at that moment
(from ``<table>_history``). The journal, the error lane, the sync log, staging tables and marks never appear here.

DuckDB: schema ``analytics`` in the same file, so the analysts' snapshot carries it (views name
``main.<table>`` without a catalog and resolve inside whichever file is open). PostgreSQL: schema
``<warehouse schema>_analytics``. The schema is rebuilt in one transaction (`publish_analytics`), so
readers see the old or the new set of views, never a mix. Column comments carry the Bitrix24 labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from connectors.dimensions import DEAL_PRODUCT_ROWS, DIMENSIONS, STAGE_HISTORY
from connectors.tables import InvalidIdentifier, check_identifier
from connectors.warehouse.layout import HISTORY_SUFFIX, quote, quote_literal
from connectors.warehouse.reference import ensure_reference_tables, write_transaction
from connectors.warehouse.sql_warehouse import SqlWarehouse

DUCKDB_SCHEMA = "analytics"
STANDARD_TYPE_IDS = {"leads": 1, "deals": 2, "contacts": 3, "companies": 4}


def analytics_schema(wh: SqlWarehouse) -> str:
    """``analytics`` on DuckDB, ``<schema>_analytics`` on PostgreSQL."""
    namespace = wh.dialect.namespace
    return check_identifier(DUCKDB_SCHEMA if namespace is None else f"{namespace}_analytics")


@dataclass(frozen=True)
class _Label:
    """A name joined in for an id column: ``column`` of the entity table -> ``as_name`` from a dimension."""

    column: str
    as_name: str
    dimension: str
    key: str  # the dimension column the id matches
    value: str  # the dimension column shown
    where: str = ""  # extra condition on the dimension row, e.g. its dictionary
    comment: str = ""


def _labels(table: str, type_id: int | None) -> list[_Label]:
    labels: list[_Label] = []
    if type_id is not None and (type_id == 2 or type_id >= 128):
        labels += [
            _Label("stage_id", "stage_name", "crm_statuses", "status_id", "name",
                   f"entity_type_id = {type_id}", "Stage"),
            _Label("category_id", "pipeline_name", "crm_categories", "category_id", "name",
                   f"entity_type_id = {type_id}", "Pipeline"),
        ]
    if type_id == 1:
        labels.append(_Label("status_id", "status_name", "crm_statuses", "status_id", "name",
                             "entity_id = 'STATUS'", "Lead status"))
    dictionaries = {"source_id": ("source_name", "SOURCE", "Source"),
                    "industry": ("industry_name", "INDUSTRY", "Industry"),
                    "company_type": ("company_type_name", "COMPANY_TYPE", "Company type")}
    if table == "deals":
        dictionaries["type_id"] = ("type_name", "DEAL_TYPE", "Deal type")
    if table == "contacts":
        dictionaries["type_id"] = ("type_name", "CONTACT_TYPE", "Contact type")
    for column, (as_name, entity_id, comment) in dictionaries.items():
        labels.append(_Label(column, as_name, "crm_statuses", "status_id", "name", f"entity_id = '{entity_id}'",
                             comment))
    for column, as_name, comment in (("assigned_by_id", "assigned_by_name", "Responsible"),
                                     ("responsible_id", "responsible_name", "Responsible")):
        labels.append(_Label(column, as_name, "users", "user_id", "full_name", "", comment))
    currency = _Label("currency_id", "currency_name", "currencies", "currency_id", "name", "", "Currency name")
    return [*labels, currency]


def publish_analytics(wh: SqlWarehouse) -> list[str]:
    """(Re)build the analysts' schema from what the warehouse holds now, in a transaction of its own;
    returns the relations created.

    Call after a reference refresh (new user fields and list items appear here then) and after new
    entity tables were created. Raises `TransactionStateError` inside an open transaction (use
    `rebuild_analytics` there)."""
    ensure_reference_tables(wh)
    with write_transaction(wh):
        return rebuild_analytics(wh)


def rebuild_analytics(wh: SqlWarehouse) -> list[str]:
    """(Re)build the analysts' schema inside the caller's open transaction (the reference tables must
    exist: `ensure_reference_tables`); returns the relations created. Readers see the old set of
    views until that transaction commits, and keep it if it rolls back."""
    schema = analytics_schema(wh)
    statements, comments, created = _plan(wh, schema)
    wh._lock_ddl()
    wh._execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")
    wh._execute(f"CREATE SCHEMA {quote(schema)}")
    for statement in statements:
        wh._execute(statement)
    for statement in comments:
        wh._execute(statement)
    return created


def rebuild_published_analytics(wh: SqlWarehouse) -> list[str]:
    """`rebuild_analytics` in the caller's transaction if the analysts' schema was published before,
    else nothing (returns the relations created, or ``[]``).

    Called by a column type migration (`SqlWarehouse.ensure_table`): PostgreSQL drops the views that
    read a retyped column, and the ``<table>_as_of`` functions declare the old column types, so the
    schema is rebuilt in the migration's own transaction and no reader ever finds it missing."""
    published = wh.query("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %(schema)s",
                         {"schema": analytics_schema(wh)})
    if not published[0][0]:
        return []
    return rebuild_analytics(wh)


def _source(wh: SqlWarehouse, name: str) -> str:
    # DuckDB: name the schema, not the catalog, so the views also resolve in the snapshot file.
    return f"main.{quote(name)}" if wh.dialect.namespace is None else wh.dialect.qualified(name)


def _text(expression: str) -> str:
    # Joins compare as text: ids are BIGINT or VARCHAR depending on the portal's field types.
    return f"CAST({expression} AS TEXT)"


def _plan(wh: SqlWarehouse, schema: str) -> tuple[list[str], list[str], list[str]]:
    statements: list[str] = []
    comments: list[str] = []
    created: list[str] = []
    labels = _column_labels(wh)
    enums = _enumeration_columns(wh)

    def target(name: str) -> str:
        return f"{quote(schema)}.{quote(name)}"

    def comment(relation: str, column: str, text: str | None) -> None:
        if text:
            comments.append(f"COMMENT ON COLUMN {target(relation)}.{quote(column)} IS {quote_literal(text)}")

    for table in wh.entity_tables():
        stored = wh._stored_columns(table) or {}
        visible = [name for name in stored if not name.startswith("_")]
        type_id = STANDARD_TYPE_IDS.get(table)
        if type_id is None and table.startswith("items_") and table[6:].isdigit():
            type_id = int(table[6:])
        select = [f"t.{quote(name)}" for name in visible]
        joins: list[str] = []
        added: list[tuple[str, str]] = []
        taken = set(visible)
        for index, label in enumerate(_labels(table, type_id)):
            if label.column not in stored or label.as_name in taken:
                continue
            alias = f"j{index}"
            condition = f" AND {alias}.{label.where}" if label.where else ""
            matches = f"{_text(f'{alias}.{quote(label.key)}')} = {_text(f't.{quote(label.column)}')}"
            joins.append(f"LEFT JOIN {_source(wh, label.dimension)} AS {alias} ON {alias}.portal = t.portal"
                         f"{condition} AND {matches}")
            select.append(f"{alias}.{quote(label.value)} AS {quote(label.as_name)}")
            taken.add(label.as_name)
            added.append((label.as_name, label.comment))
            department = label.as_name.replace("_name", "_department")
            if label.dimension == "users" and department not in taken:
                # The responsible user's (first) department, as analysts group by it.
                joins.append(f"LEFT JOIN {_source(wh, 'departments')} AS d{index} ON d{index}.portal = t.portal "
                             f"AND d{index}.department_id = {alias}.department_id")
                select.append(f"d{index}.name AS {quote(department)}")
                taken.add(department)
                added.append((department, "Responsible's department"))
        if type_id is not None and type_id >= 128 and "smart_process" not in taken:
            joins.append(f"LEFT JOIN {_source(wh, 'crm_types')} AS jt ON jt.portal = t.portal "
                         f"AND jt.entity_type_id = {type_id}")
            select.append("jt.title AS smart_process")
            added.append(("smart_process", "Smart process"))
        for index, (column, field_name) in enumerate(enums.get(table, [])):
            try:
                as_name = check_identifier(f"{column}_label")
            except InvalidIdentifier:
                continue
            if column not in stored or as_name in taken:
                continue
            alias = f"e{index}"
            joins.append(f"LEFT JOIN {_source(wh, 'user_field_enums')} AS {alias} ON {alias}.portal = t.portal "
                         f"AND {alias}.table_name = {quote_literal(table)} "
                         f"AND {alias}.field_name = {quote_literal(field_name)} "
                         f"AND {alias}.item_id = {_text(f't.{quote(column)}')}")
            select.append(f"{alias}.value AS {quote(as_name)}")
            taken.add(as_name)
            label_text = labels.get((table, column))
            added.append((as_name, f"{label_text} (list item)" if label_text else "List item"))
        statements.append(f"CREATE VIEW {target(table)} AS SELECT {', '.join(select)} "
                          f"FROM {_source(wh, table)} AS t {' '.join(joins)} WHERE t._deleted_at IS NULL")
        created.append(table)
        for name in visible:
            comment(table, name, labels.get((table, name)))
        for name, text in added:
            comment(table, name, text)
        history = table + HISTORY_SUFFIX
        try:
            function = check_identifier(f"{table}_as_of")
        except InvalidIdentifier:
            continue
        statements.append(_as_of(wh, schema, function, history, visible))
        created.append(function)

    for dimension in (*DIMENSIONS, DEAL_PRODUCT_ROWS):
        columns = ", ".join(f"d.{quote(name)}" for name in ("portal", *dimension.column_names))
        if dimension.name == "users":
            statements.append(
                f"CREATE VIEW {target('users')} AS SELECT {columns}, dep.name AS department_name "
                f"FROM {_source(wh, 'users')} AS d LEFT JOIN {_source(wh, 'departments')} AS dep "
                f"ON dep.portal = d.portal AND dep.department_id = d.department_id")
            comment("users", "department_name", "Department")
        else:
            statements.append(f"CREATE VIEW {target(dimension.name)} AS SELECT {columns} "
                              f"FROM {_source(wh, dimension.name)} AS d")
        created.append(dimension.name)
        for column in dimension.columns:
            comment(dimension.name, column.name, column.label)

    history_columns = ", ".join(f"h.{quote(name)}" for name in ("portal", *STAGE_HISTORY.column_names))
    seconds = "EXTRACT(EPOCH FROM {b}) - EXTRACT(EPOCH FROM {a})"
    statements.append(
        f"CREATE VIEW {target('stage_history')} AS SELECT {history_columns}, s.name AS stage_name, "
        f"c.name AS pipeline_name, h.left_at, {seconds.format(a='h.created_time', b='h.left_at')} "
        f"AS seconds_in_stage FROM ("
        f"SELECT *, lead(created_time) OVER (PARTITION BY portal, entity_type_id, owner_id "
        f"ORDER BY created_time, id) AS left_at FROM {_source(wh, 'stage_history')}) AS h "
        f"LEFT JOIN {_source(wh, 'crm_statuses')} AS s ON s.portal = h.portal "
        f"AND s.entity_type_id = h.entity_type_id AND s.status_id = h.stage_id "
        f"LEFT JOIN {_source(wh, 'crm_categories')} AS c ON c.portal = h.portal "
        f"AND c.entity_type_id = h.entity_type_id AND c.category_id = h.category_id")
    created.append("stage_history")
    for column in STAGE_HISTORY.columns:
        comment("stage_history", column.name, column.label)
    comment("stage_history", "stage_name", "Stage")
    comment("stage_history", "pipeline_name", "Pipeline")
    comment("stage_history", "left_at", "Left the stage at (null: still there)")
    comment("stage_history", "seconds_in_stage", "Seconds in the stage (null: still there)")
    return statements, comments, created


def _as_of(wh: SqlWarehouse, schema: str, function: str, history: str, visible: list[str]) -> str:
    """``<table>_as_of(ts)``: each id's version valid at ``ts`` (DuckDB table macro, PostgreSQL function)."""
    columns = ", ".join(quote(name) for name in visible)
    where = "_valid_from <= as_of AND (_valid_to IS NULL OR _valid_to > as_of)"
    if wh.dialect.namespace is None:
        return (f"CREATE MACRO {quote(schema)}.{quote(function)}(as_of) AS TABLE "
                f"SELECT {columns} FROM {_source(wh, history)} WHERE {where}")
    stored = wh._stored_columns(history) or {}
    returns = ", ".join(f"{quote(name)} {stored[name]}" for name in visible if name in stored)
    columns = ", ".join(quote(name) for name in visible if name in stored)
    return (f"CREATE FUNCTION {quote(schema)}.{quote(function)}(as_of timestamptz) RETURNS TABLE ({returns}) "
            f"LANGUAGE sql STABLE AS $$ SELECT {columns} FROM {_source(wh, history)} AS h WHERE {where} $$")


def _column_labels(wh: SqlWarehouse) -> Mapping[tuple[str, str], str]:
    rows = wh.query(f"SELECT table_name, column_name, min(label) FROM {wh.dialect.qualified('columns')} "
                    "GROUP BY table_name, column_name", {})
    return {(table, column): label for table, column, label in rows if label}


def _enumeration_columns(wh: SqlWarehouse) -> Mapping[str, list[tuple[str, str]]]:
    """Single-valued list-type user fields per table: (warehouse column, UF_CRM_ name)."""
    rows = wh.query(f"SELECT DISTINCT table_name, column_name, field_name FROM {wh.dialect.qualified('user_fields')} "
                    "WHERE user_type_id = 'enumeration' AND NOT multiple ORDER BY 1, 2", {})
    found: dict[str, list[tuple[str, str]]] = {}
    for table, column, field_name in rows:
        found.setdefault(table, []).append((column, field_name))
    return found
