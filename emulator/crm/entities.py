"""The CRM entity types as data: fields, names on the wire, events, the modification-time field.

Adding an entity kind means adding an `EntityType` here; tables, queries, REST methods, events and
ground truth are all driven by it. Field lists follow the docs' ``crm.<entity>.fields`` samples
(facts §4.5); crm.item names follow ``crm.item.fields`` (``DATE_MODIFY`` is ``updatedTime`` there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emulator.crm.fields import Field

ADD, UPDATE, DELETE = "add", "update", "delete"
OPERATIONS = (ADD, UPDATE, DELETE)

# Multiple-value "communication" fields of leads, contacts and companies (facts §4.3).
MULTIFIELD_TYPES = ("PHONE", "EMAIL", "WEB", "IM")


@dataclass(frozen=True)
class EntityType:
    key: str  # "deal", "activity", "item:128"
    title: str
    fields: tuple[Field, ...]
    event_prefix: str  # ONCRMDEAL -> ONCRMDEALADD / ONCRMDEALUPDATE / ONCRMDEALDELETE
    created_field: str
    modified_field: str
    author_field: str
    editor_field: str
    entity_type_id: int | None = None  # crm.item entityTypeId; None: no crm.item access (activities)
    legacy_name: str | None = None  # crm.<legacy_name>.*; None: crm.item only (smart processes)
    uf_entity_id: str | None = None  # CRM_DEAL ... ; None: no user fields (activities)
    uf_name_prefix: str = "UF_CRM_"
    explicit_fields: tuple[Field, ...] = ()  # only returned when selected by name (PHONE, COMMUNICATIONS)
    has_multifields: bool = False
    default_order: tuple[tuple[str, bool], ...] = (("ID", False),)  # (field, descending)
    dynamic_type_id: int | None = None  # smart processes: the type's own id (crm.type.list "id")
    defaults: dict[str, Any] = field(default_factory=dict)  # stored values of a new row left unset

    @property
    def is_dynamic(self) -> bool:
        return self.dynamic_type_id is not None

    def event_names(self, operation: str) -> tuple[str, ...]:
        name = f"{self.event_prefix}{operation.upper()}"
        if self.is_dynamic:
            # Smart-process items fire the all-types event and the per-type one (facts §3).
            return name, f"{name}_{self.entity_type_id}"
        return (name,)

    def event_data(self, entity_id: int) -> dict[str, Any]:
        if self.is_dynamic:
            return {"FIELDS": {"ID": entity_id, "ENTITY_TYPE_ID": self.entity_type_id}}
        return {"FIELDS": {"ID": entity_id}}

    def all_event_names(self) -> list[str]:
        return [name for operation in OPERATIONS for name in self.event_names(operation)]


def _f(name: str, type_: str, title: str, **options: Any) -> Field:
    return Field(name, type_, title, **options)


def _ro(name: str, type_: str, title: str, **options: Any) -> Field:
    return Field(name, type_, title, read_only=True, **options)


def _status(name: str, status_type: str, title: str, **options: Any) -> Field:
    return Field(name, "crm_status", title, status_type=status_type, **options)


_UTM = tuple(
    _f(f"UTM_{part}", "string", f"UTM {part.lower()}")
    for part in ("SOURCE", "MEDIUM", "CAMPAIGN", "CONTENT", "TERM")
)

_AUDIT = (
    _f("ASSIGNED_BY_ID", "user", "Responsible"),
    _ro("CREATED_BY_ID", "user", "Created by", camel="createdBy"),
    _ro("MODIFY_BY_ID", "user", "Modified by", camel="updatedBy"),
    _ro("DATE_CREATE", "datetime", "Created on", camel="createdTime"),
    _ro("DATE_MODIFY", "datetime", "Modified on", camel="updatedTime"),
)

_LAST_ACTIVITY = (
    _ro("LAST_ACTIVITY_TIME", "datetime", "Last activity"),
    _ro("LAST_ACTIVITY_BY", "user", "Last activity by"),
)

_MULTIFIELDS = tuple(Field(name, "crm_multifield", name.title(), multiple=True) for name in MULTIFIELD_TYPES)

_NO_COMMUNICATIONS = {"HAS_PHONE": "N", "HAS_EMAIL": "N", "HAS_IMOL": "N"}

_PERSON_FLAGS = (
    _ro("HAS_PHONE", "char", "Has phone"),
    _ro("HAS_EMAIL", "char", "Has email"),
    _ro("HAS_IMOL", "char", "Has Open Channel"),
)

DEAL = EntityType(
    key="deal",
    title="Deal",
    entity_type_id=2,
    legacy_name="deal",
    uf_entity_id="CRM_DEAL",
    event_prefix="ONCRMDEAL",
    created_field="DATE_CREATE",
    modified_field="DATE_MODIFY",
    author_field="CREATED_BY_ID",
    editor_field="MODIFY_BY_ID",
    defaults={
        "TYPE_ID": "SALE", "CATEGORY_ID": "0", "STAGE_ID": "NEW", "IS_NEW": "Y", "IS_RECURRING": "N",
        "IS_RETURN_CUSTOMER": "N", "IS_REPEATED_APPROACH": "N", "CURRENCY_ID": "USD", "OPPORTUNITY": "0.00",
        "IS_MANUAL_OPPORTUNITY": "N", "TAX_VALUE": "0.00", "OPENED": "Y", "CLOSED": "N",
    },
    fields=(
        _ro("ID", "integer", "ID"),
        _f("TITLE", "string", "Name"),
        _status("TYPE_ID", "DEAL_TYPE", "Type"),
        _f("CATEGORY_ID", "crm_category", "Pipeline", immutable=True),
        _status("STAGE_ID", "DEAL_STAGE", "Deal stage"),
        _ro("STAGE_SEMANTIC_ID", "string", "Stage group"),
        _ro("IS_NEW", "char", "New deal"),
        _f("IS_RECURRING", "char", "Recurring deal"),
        _ro("IS_RETURN_CUSTOMER", "char", "Repeat deal"),
        _ro("IS_REPEATED_APPROACH", "char", "Repeat inquiry"),
        _f("PROBABILITY", "integer", "Probability"),
        _f("CURRENCY_ID", "crm_currency", "Currency"),
        _f("OPPORTUNITY", "double", "Amount"),
        _f("IS_MANUAL_OPPORTUNITY", "char", "Manual amount"),
        _f("TAX_VALUE", "double", "Tax rate"),
        _f("COMPANY_ID", "crm_company", "Company"),
        _f("CONTACT_ID", "crm_contact", "Contact"),
        _f("QUOTE_ID", "crm_quote", "Quote"),
        _f("BEGINDATE", "date", "Start date"),
        _f("CLOSEDATE", "date", "End date"),
        _f("OPENED", "char", "Available to everyone"),
        _f("CLOSED", "char", "Closed"),
        _f("COMMENTS", "string", "Comment"),
        *_AUDIT,
        _ro("MOVED_BY_ID", "user", "Stage changed by", camel="movedBy"),
        _ro("MOVED_TIME", "datetime", "Stage changed on"),
        _status("SOURCE_ID", "SOURCE", "Source"),
        _f("SOURCE_DESCRIPTION", "string", "Source information"),
        _ro("LEAD_ID", "crm_lead", "Lead"),
        _f("ADDITIONAL_INFO", "string", "Additional information"),
        _f("LOCATION_ID", "location", "Location"),
        _f("ORIGINATOR_ID", "string", "External source"),
        _f("ORIGIN_ID", "string", "Item ID in data source"),
        *_UTM,
        *_LAST_ACTIVITY,
    ),
)

CONTACT = EntityType(
    key="contact",
    title="Contact",
    entity_type_id=3,
    legacy_name="contact",
    uf_entity_id="CRM_CONTACT",
    event_prefix="ONCRMCONTACT",
    created_field="DATE_CREATE",
    modified_field="DATE_MODIFY",
    author_field="CREATED_BY_ID",
    editor_field="MODIFY_BY_ID",
    has_multifields=True,
    explicit_fields=_MULTIFIELDS,
    defaults={"TYPE_ID": "CLIENT", "SOURCE_ID": "SELF", "OPENED": "Y", "EXPORT": "Y", **_NO_COMMUNICATIONS},
    fields=(
        _ro("ID", "integer", "ID"),
        _status("HONORIFIC", "HONORIFIC", "Salutation"),
        _f("NAME", "string", "First name"),
        _f("SECOND_NAME", "string", "Second name"),
        _f("LAST_NAME", "string", "Last name"),
        _f("BIRTHDATE", "date", "Date of birth"),
        _status("TYPE_ID", "CONTACT_TYPE", "Contact type"),
        _status("SOURCE_ID", "SOURCE", "Source"),
        _f("SOURCE_DESCRIPTION", "string", "Source information"),
        _f("POST", "string", "Position"),
        _f("COMMENTS", "string", "Comment"),
        _f("OPENED", "char", "Available to everyone"),
        _f("EXPORT", "char", "Included in export"),
        *_PERSON_FLAGS,
        *_AUDIT,
        _f("COMPANY_ID", "crm_company", "Company"),
        _ro("LEAD_ID", "crm_lead", "Lead"),
        _f("ORIGINATOR_ID", "string", "External source"),
        _f("ORIGIN_ID", "string", "Item ID in data source"),
        _f("ORIGIN_VERSION", "string", "Original version"),
        *_UTM,
        *_LAST_ACTIVITY,
    ),
)

COMPANY = EntityType(
    key="company",
    title="Company",
    entity_type_id=4,
    legacy_name="company",
    uf_entity_id="CRM_COMPANY",
    event_prefix="ONCRMCOMPANY",
    created_field="DATE_CREATE",
    modified_field="DATE_MODIFY",
    author_field="CREATED_BY_ID",
    editor_field="MODIFY_BY_ID",
    has_multifields=True,
    explicit_fields=_MULTIFIELDS,
    defaults={
        "COMPANY_TYPE": "CUSTOMER", "CURRENCY_ID": "USD", "REVENUE": "0.00", "OPENED": "Y",
        "IS_MY_COMPANY": "N", **_NO_COMMUNICATIONS,
    },
    fields=(
        _ro("ID", "integer", "ID"),
        _f("TITLE", "string", "Company name"),
        _status("COMPANY_TYPE", "COMPANY_TYPE", "Company type", camel="typeId"),
        _ro("LEAD_ID", "crm_lead", "Lead"),
        *_PERSON_FLAGS,
        *_AUDIT,
        _f("BANKING_DETAILS", "string", "Payment details"),
        _status("INDUSTRY", "INDUSTRY", "Industry"),
        _f("REVENUE", "double", "Annual revenue"),
        _f("CURRENCY_ID", "crm_currency", "Currency"),
        _status("EMPLOYEES", "EMPLOYEES", "Employees"),
        _f("COMMENTS", "string", "Comment"),
        _f("OPENED", "char", "Available to everyone"),
        _f("IS_MY_COMPANY", "char", "My company"),
        _f("ORIGINATOR_ID", "string", "External source"),
        _f("ORIGIN_ID", "string", "Item ID in data source"),
        _f("ORIGIN_VERSION", "string", "Original version"),
        *_UTM,
        *_LAST_ACTIVITY,
    ),
)

LEAD = EntityType(
    key="lead",
    title="Lead",
    entity_type_id=1,
    legacy_name="lead",
    uf_entity_id="CRM_LEAD",
    event_prefix="ONCRMLEAD",
    created_field="DATE_CREATE",
    modified_field="DATE_MODIFY",
    author_field="CREATED_BY_ID",
    editor_field="MODIFY_BY_ID",
    has_multifields=True,
    explicit_fields=_MULTIFIELDS,
    defaults={
        "STATUS_ID": "NEW", "CURRENCY_ID": "USD", "OPPORTUNITY": "0.00", "IS_MANUAL_OPPORTUNITY": "N",
        "OPENED": "Y", "IS_RETURN_CUSTOMER": "N", **_NO_COMMUNICATIONS,
    },
    fields=(
        _ro("ID", "integer", "ID"),
        _f("TITLE", "string", "Lead name"),
        _status("HONORIFIC", "HONORIFIC", "Salutation"),
        _f("NAME", "string", "First name"),
        _f("SECOND_NAME", "string", "Second name"),
        _f("LAST_NAME", "string", "Last name"),
        _f("BIRTHDATE", "date", "Date of birth"),
        _f("COMPANY_TITLE", "string", "Company name"),
        _status("SOURCE_ID", "SOURCE", "Source"),
        _f("SOURCE_DESCRIPTION", "string", "Source information"),
        _status("STATUS_ID", "STATUS", "Status", camel="stageId"),
        _f("STATUS_DESCRIPTION", "string", "Status information"),
        _ro("STATUS_SEMANTIC_ID", "string", "Status details", camel="stageSemanticId"),
        _f("POST", "string", "Position"),
        _f("CURRENCY_ID", "crm_currency", "Currency"),
        _f("OPPORTUNITY", "double", "Amount"),
        _f("IS_MANUAL_OPPORTUNITY", "char", "Manual amount"),
        _f("OPENED", "char", "Available to everyone"),
        _f("COMMENTS", "string", "Comment"),
        *_PERSON_FLAGS,
        *_AUDIT,
        _ro("MOVED_BY_ID", "user", "Status changed by", camel="movedBy"),
        _ro("MOVED_TIME", "datetime", "Status changed on"),
        _f("COMPANY_ID", "crm_company", "Company"),
        _f("CONTACT_ID", "crm_contact", "Contact"),
        _ro("IS_RETURN_CUSTOMER", "char", "Repeat lead"),
        _ro("DATE_CLOSED", "datetime", "Completion time"),
        _f("ORIGINATOR_ID", "string", "External source"),
        _f("ORIGIN_ID", "string", "Item ID in data source"),
        *_UTM,
        *_LAST_ACTIVITY,
    ),
)

ACTIVITY = EntityType(
    key="activity",
    title="Activity",
    legacy_name="activity",
    event_prefix="ONCRMACTIVITY",
    created_field="CREATED",
    modified_field="LAST_UPDATED",
    author_field="AUTHOR_ID",
    editor_field="EDITOR_ID",
    # crm.activity.list sorts by START_TIME unless told otherwise (facts §4.6).
    default_order=(("START_TIME", False),),
    defaults={
        "TYPE_ID": "2", "COMPLETED": "N", "STATUS": "1", "PRIORITY": "2", "NOTIFY_TYPE": "0",
        "NOTIFY_VALUE": "0", "DESCRIPTION_TYPE": "1", "DIRECTION": "0", "IS_INCOMING_CHANNEL": "N",
    },
    explicit_fields=(
        Field("COMMUNICATIONS", "crm_communication", "Communications", multiple=True),
        Field("FILES", "diskfile", "Files", multiple=True),
    ),
    fields=(
        _ro("ID", "integer", "ID"),
        _f("OWNER_ID", "integer", "Owner ID", required=True, immutable=True),
        _f("OWNER_TYPE_ID", "crm_enum_ownertype", "Owner type", required=True, immutable=True),
        _f("TYPE_ID", "crm_enum_activitytype", "Type", required=True, immutable=True),
        _f("PROVIDER_ID", "string", "Provider ID"),
        _f("PROVIDER_TYPE_ID", "string", "Provider type ID"),
        _f("PROVIDER_GROUP_ID", "string", "Provider group ID"),
        _f("ASSOCIATED_ENTITY_ID", "integer", "Associated entity ID"),
        _f("SUBJECT", "string", "Subject", required=True),
        _ro("CREATED", "datetime", "Created on"),
        _ro("LAST_UPDATED", "datetime", "Updated on"),
        _f("START_TIME", "datetime", "Start time"),
        _f("END_TIME", "datetime", "End time"),
        _f("DEADLINE", "datetime", "Deadline"),
        _f("COMPLETED", "char", "Completed"),
        _f("STATUS", "crm_enum_activitystatus", "Status"),
        _f("RESPONSIBLE_ID", "user", "Responsible person", required=True),
        _f("PRIORITY", "crm_enum_activitypriority", "Importance"),
        _f("NOTIFY_TYPE", "crm_enum_activitynotifytype", "Notification type"),
        _f("NOTIFY_VALUE", "integer", "Notification interval"),
        _f("DESCRIPTION", "string", "Description"),
        _f("DESCRIPTION_TYPE", "crm_enum_contenttype", "Description type"),
        _f("DIRECTION", "crm_enum_activitydirection", "Direction"),
        _f("LOCATION", "string", "Location"),
        _ro("AUTHOR_ID", "user", "Created by"),
        _ro("EDITOR_ID", "user", "Modified by"),
        _f("ORIGINATOR_ID", "string", "Data source"),
        _f("ORIGIN_ID", "string", "Item ID in data source"),
        _f("RESULT_MARK", "integer", "Result mark"),
        _f("RESULT_VALUE", "double", "Result value"),
        _f("RESULT_SUM", "double", "Result sum"),
        _f("RESULT_CURRENCY_ID", "crm_currency", "Result currency"),
        _f("RESULT_STATUS", "integer", "Result status"),
        _f("RESULT_STREAM", "integer", "Result stream"),
        _f("RESULT_SOURCE_ID", "string", "Result source"),
        _f("AUTOCOMPLETE_RULE", "integer", "Autocomplete rule"),
        _ro("IS_INCOMING_CHANNEL", "char", "Incoming channel"),
    ),
)

LEGACY_TYPES: tuple[EntityType, ...] = (DEAL, CONTACT, COMPANY, LEAD, ACTIVITY)


def smart_process_type(type_id: int, entity_type_id: int, title: str) -> EntityType:
    """A smart process: items are reached through crm.item.* only, with their own stored names."""
    category_id = smart_process_category(type_id)
    return EntityType(
        key=f"item:{entity_type_id}",
        title=title,
        entity_type_id=entity_type_id,
        dynamic_type_id=type_id,
        uf_entity_id=f"CRM_{type_id}",
        uf_name_prefix=f"UF_CRM_{type_id}_",
        event_prefix="ONCRMDYNAMICITEM",
        created_field="CREATED_TIME",
        modified_field="UPDATED_TIME",
        author_field="CREATED_BY",
        editor_field="UPDATED_BY",
        defaults={
            "CATEGORY_ID": str(category_id), "STAGE_ID": f"DT{entity_type_id}_{category_id}:NEW",
            "OPENED": "Y", "CURRENCY_ID": "USD", "OPPORTUNITY": "0.00", "IS_MANUAL_OPPORTUNITY": "N",
            "TAX_VALUE": "0.00", "CONTACT_IDS": [], "OBSERVERS": [],
        },
        fields=(
            _ro("ID", "integer", "ID"),
            _f("XML_ID", "string", "External ID"),
            _f("TITLE", "string", "Name"),
            _ro("CREATED_BY", "user", "Created by"),
            _ro("UPDATED_BY", "user", "Updated by"),
            _ro("MOVED_BY", "user", "Moved by"),
            _ro("CREATED_TIME", "datetime", "Created on"),
            _ro("UPDATED_TIME", "datetime", "Updated on"),
            _ro("MOVED_TIME", "datetime", "Moved on"),
            _f("CATEGORY_ID", "crm_category", "Pipeline"),
            _f("OPENED", "char", "Available to everyone"),
            _f("STAGE_ID", "crm_status", "Stage"),
            _ro("PREVIOUS_STAGE_ID", "crm_status", "Previous stage"),
            _f("BEGINDATE", "date", "Start date"),
            _f("CLOSEDATE", "date", "End date"),
            _f("COMPANY_ID", "crm_company", "Company"),
            _f("CONTACT_ID", "crm_contact", "Contact"),
            _f("OPPORTUNITY", "double", "Amount"),
            _f("IS_MANUAL_OPPORTUNITY", "char", "Manual amount"),
            _f("TAX_VALUE", "double", "Tax"),
            _f("CURRENCY_ID", "crm_currency", "Currency"),
            _f("MYCOMPANY_ID", "crm_company", "Your company details"),
            _status("SOURCE_ID", "SOURCE", "Source"),
            _f("SOURCE_DESCRIPTION", "string", "Source information"),
            _f("ASSIGNED_BY_ID", "user", "Responsible person"),
            *_LAST_ACTIVITY,
            _f("CONTACT_IDS", "crm_contact", "Contacts", multiple=True),
            _f("OBSERVERS", "user", "Observers", multiple=True),
        ),
    )


def smart_process_category(type_id: int) -> int:
    """The default pipeline of a smart process (category ids are portal-wide, hence offset)."""
    return 10 + type_id
