"""Small deal tables and frames for the warehouse tests, shaped like the source's entity frames."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import orjson
import pandas as pd
import pyarrow as pa

from connectors.tables import ColumnSpec, ColumnType, TableSchema

PORTAL = "acme.bitrix24.test"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)

DEAL_COLUMNS = (
    ColumnSpec("title", ColumnType.TEXT, "TITLE", "Name"),
    ColumnSpec("stage_id", ColumnType.TEXT, "STAGE_ID", "Stage"),
    ColumnSpec("opportunity", ColumnType.DECIMAL, "OPPORTUNITY", "Amount"),
    ColumnSpec("probability", ColumnType.DOUBLE, "PROBABILITY"),
    ColumnSpec("assigned_by_id", ColumnType.INTEGER, "ASSIGNED_BY_ID", "Responsible"),
    ColumnSpec("closed", ColumnType.BOOLEAN, "CLOSED"),
    ColumnSpec("closedate", ColumnType.DATE, "CLOSEDATE"),
    ColumnSpec("date_modify", ColumnType.TIMESTAMP, "DATE_MODIFY"),
    ColumnSpec("contact_ids", ColumnType.JSON, "CONTACT_IDS"),
)


def deals_schema(*extra: ColumnSpec, name: str = "deals") -> TableSchema:
    return TableSchema(name, DEAL_COLUMNS + extra)


def deal_frame(ids: Sequence[int], *, stage: str = "NEW", modified: datetime = T0,
               extra: dict[str, Sequence[object]] | None = None) -> pd.DataFrame:
    """One deal per id in ``stage``, modified at ``modified``; ``extra`` adds user-field columns."""
    count = len(ids)
    records = [{"ID": str(i), "TITLE": f"Deal {i}", "STAGE_ID": stage, "OPPORTUNITY": f"{i * 10}.50",
                "DATE_MODIFY": modified.isoformat()} for i in ids]
    for name, values in (extra or {}).items():
        for record, value in zip(records, values, strict=True):
            record[name.upper()] = value
    frame = pd.DataFrame({
        "id": pd.Series(ids, dtype="int64"),
        "_source_modified_at": pd.Series([modified] * count, dtype="datetime64[ns, UTC]"),
        "_raw": pd.Series([orjson.dumps(r).decode() for r in records], dtype="string"),
        "title": pd.Series([f"Deal {i}" for i in ids], dtype="string"),
        "stage_id": pd.Series([stage] * count, dtype="string"),
        "opportunity": pd.Series(pa.array([f"{i * 10}.50" for i in ids]).cast(pa.decimal128(18, 2)),
                                 dtype=pd.ArrowDtype(pa.decimal128(18, 2))),
        "probability": pd.Series([0.25] * count, dtype="float64"),
        "assigned_by_id": pd.Series([7] * count, dtype="Int64"),
        "closed": pd.Series([stage == "WON"] * count, dtype="boolean"),
        "closedate": pd.Series(pa.array([date(2024, 6, 30)] * count, pa.date32()),
                               dtype=pd.ArrowDtype(pa.date32())),
        "date_modify": pd.Series([modified] * count, dtype="datetime64[ns, UTC]"),
        "contact_ids": pd.Series(["[1, 2]"] * count, dtype="string"),
    })
    for name, values in (extra or {}).items():
        frame[name] = list(values)
    return frame


def later(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)
