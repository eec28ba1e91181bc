"""The reference-data contract between the source and the warehouses: dimension tables and stage history.

Dimensions (users, departments, statuses and stages, pipelines, smart-process types, currencies,
user fields and their list items, the column dictionary) are small and replaced whole per portal on
every refresh; their frames carry exactly the columns below (values as Python scalars or None; the
warehouse adds ``portal``). Stage history grows: its rows are appended by id and never change
(facts §4.8). Names follow the entity-table rule (`connectors.tables.check_identifier`).
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.tables import ColumnType, check_identifier

INTEGER, TEXT, BOOLEAN = ColumnType.INTEGER, ColumnType.TEXT, ColumnType.BOOLEAN
DOUBLE, TIMESTAMP, JSON = ColumnType.DOUBLE, ColumnType.TIMESTAMP, ColumnType.JSON
DECIMAL = ColumnType.DECIMAL


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    label: str  # for analysts: column comment and the `columns` dictionary


@dataclass(frozen=True)
class DimensionSchema:
    name: str
    key: tuple[str, ...]  # natural key within a portal
    columns: tuple[Column, ...]
    title: str  # one sentence for the table comment

    def __post_init__(self) -> None:
        check_identifier(self.name)
        names = [column.name for column in self.columns]
        for name in names:
            check_identifier(name)
        if not set(self.key) <= set(names):
            raise ValueError(f"{self.name}: key {self.key} is not among its columns")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


def _c(name: str, type_: ColumnType, label: str) -> Column:
    return Column(name, type_, label)


USERS = DimensionSchema("users", ("user_id",), (
    _c("user_id", INTEGER, "User ID"),
    _c("active", BOOLEAN, "Active (false: fired)"),
    _c("name", TEXT, "First name"),
    _c("last_name", TEXT, "Last name"),
    _c("full_name", TEXT, "Name"),
    _c("email", TEXT, "E-mail"),
    _c("work_position", TEXT, "Position"),
    _c("department_id", INTEGER, "Department (first of UF_DEPARTMENT)"),
    _c("department_ids", JSON, "Departments (UF_DEPARTMENT)"),
), "Portal users, active and fired (user.get).")

DEPARTMENTS = DimensionSchema("departments", ("department_id",), (
    _c("department_id", INTEGER, "Department ID"),
    _c("name", TEXT, "Department"),
    _c("sort", INTEGER, "Sort"),
    _c("parent_id", INTEGER, "Parent department"),
    _c("head_user_id", INTEGER, "Head of department"),
), "Company structure (department.get).")

CRM_STATUSES = DimensionSchema("crm_statuses", ("entity_id", "status_id"), (
    _c("entity_id", TEXT, "Dictionary (ENTITY_ID)"),
    _c("status_id", TEXT, "Status or stage ID"),
    _c("name", TEXT, "Name"),
    _c("sort", INTEGER, "Sort"),
    _c("semantics", TEXT, "Stage group (P in progress, S success, F failure)"),
    _c("entity_type_id", INTEGER, "CRM type whose stages these are (1 lead, 2 deal, >=128 smart process)"),
    _c("category_id", INTEGER, "Pipeline"),
    _c("color", TEXT, "Colour"),
), "Every crm.status.list dictionary: deal and smart-process stages per pipeline, lead statuses, "
   "sources, contact and company types, industries, ...")

CRM_CATEGORIES = DimensionSchema("crm_categories", ("entity_type_id", "category_id"), (
    _c("entity_type_id", INTEGER, "CRM type (2 deal, >=128 smart process)"),
    _c("category_id", INTEGER, "Pipeline ID"),
    _c("name", TEXT, "Pipeline"),
    _c("sort", INTEGER, "Sort"),
    _c("is_default", BOOLEAN, "Default pipeline"),
), "Pipelines of deals and smart processes (crm.category.list).")

CRM_TYPES = DimensionSchema("crm_types", ("entity_type_id",), (
    _c("entity_type_id", INTEGER, "CRM type ID (entityTypeId)"),
    _c("type_id", INTEGER, "Smart process ID"),
    _c("title", TEXT, "Smart process"),
    _c("table_name", TEXT, "Warehouse table"),
), "Smart-process types (crm.type.list).")

CURRENCIES = DimensionSchema("currencies", ("currency_id",), (
    _c("currency_id", TEXT, "Currency"),
    _c("name", TEXT, "Currency name"),
    _c("rate", DOUBLE, "Rate to the base currency (a rate, not money: more than two decimals)"),
    _c("rate_count", INTEGER, "Units the rate is for"),
    _c("is_base", BOOLEAN, "Base currency"),
    _c("sort", INTEGER, "Sort"),
), "Currencies of the portal (crm.currency.list).")

USER_FIELDS = DimensionSchema("user_fields", ("table_name", "field_name"), (
    _c("table_name", TEXT, "Warehouse table"),
    _c("column_name", TEXT, "Warehouse column"),
    _c("field_name", TEXT, "Bitrix24 field (UF_CRM_...)"),
    _c("user_field_id", INTEGER, "User field ID"),
    _c("entity_id", TEXT, "User-field entity (CRM_DEAL, CRM_1, ...)"),
    _c("user_type_id", TEXT, "Field type"),
    _c("label", TEXT, "Label"),
    _c("multiple", BOOLEAN, "Multiple"),
    _c("mandatory", BOOLEAN, "Required"),
), "User-field definitions (crm.<entity>.userfield.list, crm.item.fields).")

USER_FIELD_ENUMS = DimensionSchema("user_field_enums", ("table_name", "field_name", "item_id"), (
    _c("table_name", TEXT, "Warehouse table"),
    _c("field_name", TEXT, "Bitrix24 field (UF_CRM_...)"),
    _c("item_id", TEXT, "List item ID (the stored value)"),
    _c("value", TEXT, "List item"),
    _c("sort", INTEGER, "Sort"),
    _c("is_default", BOOLEAN, "Default item"),
), "Items of list-type (enumeration) user fields.")

COLUMNS = DimensionSchema("columns", ("table_name", "column_name"), (
    _c("table_name", TEXT, "Warehouse table"),
    _c("column_name", TEXT, "Warehouse column"),
    _c("label", TEXT, "Bitrix24 label"),
    _c("type", TEXT, "Column type"),
    _c("source_name", TEXT, "Bitrix24 field"),
    _c("is_user_field", BOOLEAN, "User field"),
    _c("enumeration", JSON, "List items (item ID -> value) of a list-type field"),
), "Every column of every entity table with its Bitrix24 label (*.fields titles, user-field labels).")

DIMENSIONS: tuple[DimensionSchema, ...] = (
    USERS, DEPARTMENTS, CRM_STATUSES, CRM_CATEGORIES, CRM_TYPES, CURRENCIES, USER_FIELDS, USER_FIELD_ENUMS,
    COLUMNS,
)

STAGE_HISTORY = DimensionSchema("stage_history", ("entity_type_id", "id"), (
    _c("entity_type_id", INTEGER, "CRM type (1 lead, 2 deal, >=128 smart process)"),
    _c("id", INTEGER, "History row ID"),
    _c("type_id", INTEGER, "Kind (1 created, 2 moved, 3 to a final stage, 5 pipeline changed)"),
    _c("owner_id", INTEGER, "Item ID"),
    _c("created_time", TIMESTAMP, "Moved at"),
    _c("category_id", INTEGER, "Pipeline"),
    _c("stage_id", TEXT, "Stage (STATUS_ID for leads)"),
    _c("stage_semantic_id", TEXT, "Stage group (P, S, F)"),
), "Stage moves of leads, deals and smart-process items (crm.stagehistory.list), append-only.")

DEAL_PRODUCT_ROWS = DimensionSchema("deal_product_rows", ("id",), (
    _c("id", INTEGER, "Product row ID"),
    _c("owner_id", INTEGER, "Deal"),
    _c("product_id", INTEGER, "Product"),
    _c("product_name", TEXT, "Product name"),
    _c("price", DECIMAL, "Price"),
    _c("quantity", DOUBLE, "Quantity"),
    _c("discount_sum", DECIMAL, "Discount"),
    _c("tax_rate", DOUBLE, "Tax rate, %"),
    _c("measure_name", TEXT, "Unit"),
    _c("sort", INTEGER, "Sort"),
), "Product rows of deals (crm.item.productrow.list), re-read when their deal changes.")
