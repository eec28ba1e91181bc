"""User fields (``UF_CRM_*``): typed, optionally multiple, added and removed while the portal runs.

Admins add user fields at any time, so a consumer's schema must evolve; the emulator lets tests do
the same (``crm.<entity>.userfield.add`` or `CrmStore.add_user_field`). In legacy methods the field
keeps its ``UF_CRM_*`` name; crm.item shows it camelCased (``ufCrm_1720019876534``) unless
``useOriginalUfNames=Y`` (facts §4.4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from emulator.crm.fields import Field

# USER_TYPE_ID values this emulator stores; "money" is kept as Bitrix prints it: "100.50|USD";
# "file" and "address" values are kept as written (objects or strings), shown as stored.
USER_TYPES: frozenset[str] = frozenset(
    {"string", "integer", "double", "boolean", "date", "datetime", "enumeration", "money", "url", "file",
     "address"}
)

_NAME = re.compile(r"^UF_CRM_[A-Z0-9_]{1,40}$")


class UserFieldError(ValueError):
    """A user-field definition Bitrix would refuse; the text is shown to the caller."""


@dataclass(frozen=True, eq=False)
class UserField(Field):
    id: int = 0
    entity_id: str = ""  # CRM_DEAL, CRM_CONTACT, ... CRM_<type id> for smart processes (facts §3)
    label: str = ""
    xml_id: str = ""
    sort: int = 100
    items: tuple[tuple[int, str], ...] = ()  # enumeration: (item ID, VALUE)
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        label = self.label or self.name
        entry: dict[str, Any] = {
            "type": self.type,
            "isRequired": self.required,
            "isReadOnly": False,
            "isImmutable": False,
            "isMultiple": self.multiple,
            "isDynamic": True,
            "title": self.name,
            "listLabel": label,
            "formLabel": label,
            "filterLabel": label,
            "settings": dict(self.settings),
        }
        if self.type == "enumeration":
            entry["items"] = [{"ID": str(item_id), "VALUE": value} for item_id, value in self.items]
        return entry

    def definition(self) -> dict[str, Any]:
        """The row ``crm.<entity>.userfield.list/get`` returns."""
        label = self.label or self.name
        row: dict[str, Any] = {
            "ID": str(self.id),
            "ENTITY_ID": self.entity_id,
            "FIELD_NAME": self.name,
            "USER_TYPE_ID": self.type,
            "XML_ID": self.xml_id or None,
            "SORT": str(self.sort),
            "MULTIPLE": "Y" if self.multiple else "N",
            "MANDATORY": "Y" if self.required else "N",
            "SHOW_FILTER": "E",
            "SHOW_IN_LIST": "Y",
            "EDIT_IN_LIST": "Y",
            "IS_SEARCHABLE": "N",
            "SETTINGS": dict(self.settings),
            "EDIT_FORM_LABEL": label,
            "LIST_COLUMN_LABEL": label,
            "LIST_FILTER_LABEL": label,
        }
        if self.type == "enumeration":
            row["LIST"] = [
                {"ID": str(item_id), "SORT": str(10 * (index + 1)), "VALUE": value, "DEF": "N", "XML_ID": ""}
                for index, (item_id, value) in enumerate(self.items)
            ]
        return row


def field_name(requested: str, name_prefix: str) -> str:
    """``MY_FIELD`` -> ``UF_CRM_MY_FIELD`` (``UF_CRM_<n>_MY_FIELD`` for smart processes)."""
    name = requested.strip().upper()
    if not name.startswith(name_prefix):
        name = name.removeprefix("UF_CRM_")
        name = name_prefix + name
    if not _NAME.fullmatch(name):
        raise UserFieldError(f"Invalid user field name: {requested!r}")
    return name


def check_user_type(user_type: str) -> str:
    if user_type not in USER_TYPES:
        raise UserFieldError(f"Unsupported USER_TYPE_ID: {user_type!r}")
    return user_type
