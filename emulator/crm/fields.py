"""What a CRM field is, and how one stored value looks in each of the two API styles.

Rows are stored in the legacy style that ``crm.deal.get`` prints: scalars as strings (ids, numbers,
``"Y"``/``"N"``), empty values as ``None`` (facts §4.3). ``crm.item.*`` shows the same data camelCased
with native JSON numbers (§4.4). The converters here normalise written values into the stored style
and render stored values natively; both styles are produced from one stored row.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulator.crm.clock import PortalClock


class Kind(enum.Enum):
    """How a value is stored and rendered; derived from the Bitrix field type."""

    INT = "int"
    FLOAT = "float"
    FLAG = "flag"  # standard "char" fields: "Y"/"N" in both styles
    UF_FLAG = "uf_flag"  # boolean user fields: "1"/"0" in legacy, "Y"/"N" in crm.item
    TEXT = "text"
    DATETIME = "datetime"
    DATE = "date"


TYPE_KINDS: dict[str, Kind] = {
    "integer": Kind.INT,
    "user": Kind.INT,
    "crm_company": Kind.INT,
    "crm_contact": Kind.INT,
    "crm_lead": Kind.INT,
    "crm_deal": Kind.INT,
    "crm_quote": Kind.INT,
    "crm_category": Kind.INT,
    "crm_enum_ownertype": Kind.INT,
    "crm_enum_activitytype": Kind.INT,
    "crm_enum_activitystatus": Kind.INT,
    "crm_enum_activitypriority": Kind.INT,
    "crm_enum_activitynotifytype": Kind.INT,
    "crm_enum_activitydirection": Kind.INT,
    "crm_enum_contenttype": Kind.INT,
    "enumeration": Kind.INT,  # user field list: the stored value is the list item's ID
    "double": Kind.FLOAT,
    "char": Kind.FLAG,
    "boolean": Kind.UF_FLAG,
    "date": Kind.DATE,
    "datetime": Kind.DATETIME,
}


@dataclass(frozen=True)
class Field:
    """One field of an entity as ``*.fields`` describes it."""

    name: str  # legacy spelling: STAGE_ID, UF_CRM_1700000000001
    type: str  # Bitrix type name: integer, double, char, crm_status, enumeration ...
    title: str = ""
    camel: str = ""  # crm.item spelling; derived from `name` when empty
    read_only: bool = False
    required: bool = False
    multiple: bool = False
    immutable: bool = False
    status_type: str | None = None  # crm_status fields name their reference list
    kind: Kind = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TYPE_KINDS.get(self.type, Kind.TEXT))
        if not self.camel:
            object.__setattr__(self, "camel", camel_name(self.name))

    def describe(self) -> dict[str, Any]:
        """The legacy ``*.fields`` entry (facts §4.5)."""
        entry: dict[str, Any] = {
            "type": self.type,
            "isRequired": self.required,
            "isReadOnly": self.read_only,
            "isImmutable": self.immutable,
            "isMultiple": self.multiple,
            "isDynamic": False,
            "title": self.title or self.name,
        }
        if self.status_type:
            entry["statusType"] = self.status_type
        return entry


_WORD = re.compile(r"_([a-z])")


def camel_name(upper_name: str) -> str:
    """STAGE_ID -> stageId; UF_CRM_1720019876534 -> ufCrm_1720019876534 (Bitrix keeps ``_`` before digits,
    see the crm.item.get sample in the docs)."""
    return _WORD.sub(lambda match: match.group(1).upper(), upper_name.lower())


_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def upper_item_name(camel: str) -> str:
    """stageId -> STAGE_ID; ufCrm_1Warehouse -> UF_CRM_1_WAREHOUSE: the ``upperName`` crm.item.fields
    shows, which crm.item.list also accepts in ``filter`` and ``order`` (facts §4.4)."""
    return _HUMP.sub(r"_\1", camel).upper()


class InvalidValue(ValueError):
    """A written value that cannot be stored in the field (e.g. text in a number field)."""


def _stored_int(value: Any, clock: PortalClock) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value))
    text = str(value).strip()
    try:
        return str(int(float(text)))
    except ValueError as exc:
        raise InvalidValue(text) from exc


def _stored_float(value: Any, clock: PortalClock) -> str | None:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidValue(str(value)) from exc
    # Money-like doubles come back with two decimals from legacy methods ("19999.99", "5000.00").
    return f"{number:.2f}"


_TRUE_WORDS = frozenset({"y", "1", "true", "yes", "on"})


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return str(value).strip().lower() in _TRUE_WORDS


def _stored_flag(value: Any, clock: PortalClock) -> str:
    return "Y" if _truthy(value) else "N"


def _stored_uf_flag(value: Any, clock: PortalClock) -> str:
    return "1" if _truthy(value) else "0"


def _stored_text(value: Any, clock: PortalClock) -> str | None:
    return str(value)


def _stored_datetime(value: Any, clock: PortalClock) -> str | None:
    text = clock.normalize(value)
    if text is None:
        raise InvalidValue(str(value))
    return text


def _stored_date(value: Any, clock: PortalClock) -> str | None:
    text = clock.normalize_day(value)
    if text is None:
        raise InvalidValue(str(value))
    return text


_TO_STORED: dict[Kind, Callable[[Any, PortalClock], Any]] = {
    Kind.INT: _stored_int,
    Kind.FLOAT: _stored_float,
    Kind.FLAG: _stored_flag,
    Kind.UF_FLAG: _stored_uf_flag,
    Kind.TEXT: _stored_text,
    Kind.DATETIME: _stored_datetime,
    Kind.DATE: _stored_date,
}


def to_stored(spec: Field, value: Any, clock: PortalClock) -> Any:
    """A written value (legacy strings or native JSON) in the stored legacy style."""
    convert = _TO_STORED[spec.kind]
    if spec.multiple:
        values = value if isinstance(value, list | tuple) else [value]
        return [convert(item, clock) for item in values if item is not None and item != ""]
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return None
    if isinstance(value, list | tuple):
        value = value[0]
    return convert(value, clock)


def _native_int(stored: str) -> int:
    return int(stored)


def _native_float(stored: str) -> int | float:
    number = float(stored)
    # The docs' crm.item samples print whole amounts without a fraction ("opportunity": 19000).
    return int(number) if number.is_integer() else number


def _native_uf_flag(stored: str) -> str:
    return "Y" if stored == "1" else "N"


def _same(stored: Any) -> Any:
    return stored


_TO_NATIVE: dict[Kind, Callable[[Any], Any]] = {
    Kind.INT: _native_int,
    Kind.FLOAT: _native_float,
    Kind.FLAG: _same,
    Kind.UF_FLAG: _native_uf_flag,
    Kind.TEXT: _same,
    Kind.DATETIME: _same,
    Kind.DATE: _same,
}


def native_converter(spec: Field) -> Callable[[Any], Any]:
    """A function rendering a stored value of `spec` in the crm.item style."""
    convert = _TO_NATIVE[spec.kind]
    if convert is _same:
        return _same
    if spec.multiple:
        return lambda stored: [] if stored is None else [convert(item) for item in stored]
    return lambda stored: None if stored is None else convert(stored)
