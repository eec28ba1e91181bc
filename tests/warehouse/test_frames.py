"""Conforming entity frames to the warehouse's Arrow types (`connectors.warehouse.frames`): the frame
contract of `connectors.tables` is enforced before anything reaches a database, and the few loose
inputs it allows (floats for money, objects for JSON) land in the right type; text is made storable for
PostgreSQL (no NUL) without touching anything else."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from connectors.tables import ColumnSpec, ColumnType, TableSchema
from connectors.warehouse import FrameContractError
from connectors.warehouse.frames import DECIMAL, TIMESTAMP, stage, without_nul

AT = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def frame(**columns: list) -> pd.DataFrame:
    count = len(next(iter(columns.values()))) if columns else 1
    base = {"id": list(range(1, count + 1)), "_source_modified_at": [AT] * count, "_raw": ["{}"] * count}
    return pd.DataFrame(base | columns)


def schema(*columns: tuple[str, ColumnType]) -> TableSchema:
    return TableSchema("deals", tuple(ColumnSpec(name, kind, name.upper()) for name, kind in columns))


def test_money_given_as_floats_is_rounded_half_up_to_cents() -> None:
    staged = stage(schema(("opportunity", ColumnType.DECIMAL)), frame(opportunity=[10.125, 19.994, None]))

    assert staged.table.schema.field("opportunity").type == DECIMAL
    assert [str(v) if v is not None else None for v in staged.table.column("opportunity").to_pylist()] == [
        "10.13", "19.99", None]


def test_multifields_given_as_objects_become_json_text() -> None:
    phones = [[{"VALUE": "+49 30 1234", "VALUE_TYPE": "WORK"}], None]
    staged = stage(schema(("phone", ColumnType.JSON)), frame(phone=phones))

    assert staged.table.column("phone").to_pylist() == ['[{"VALUE":"+49 30 1234","VALUE_TYPE":"WORK"}]', None]


def test_timestamps_in_other_zones_are_normalized_to_utc_microseconds() -> None:
    moscow = pd.Series([pd.Timestamp("2024-05-01 12:00:00.123456789", tz="Europe/Moscow")])
    staged = stage(schema(("date_modify", ColumnType.TIMESTAMP)), frame(date_modify=list(moscow)))

    assert staged.table.schema.field("date_modify").type == TIMESTAMP
    assert staged.table.column("date_modify")[0].as_py() == datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)


def test_an_integer_column_with_fractions_is_refused() -> None:
    with pytest.raises(FrameContractError, match="assigned_by_id"):
        stage(schema(("assigned_by_id", ColumnType.INTEGER)), frame(assigned_by_id=[1.5]))


def test_a_null_id_is_refused() -> None:
    rows = frame()
    rows["id"] = pd.Series([None], dtype="Int64")

    with pytest.raises(FrameContractError, match="null in column 'id'"):
        stage(schema(), rows)


def test_of_two_rows_with_equal_id_and_time_the_later_one_wins() -> None:
    rows = pd.DataFrame({"id": [7, 7], "_source_modified_at": [AT, AT], "_raw": ['{"v":1}', '{"v":2}']})

    staged = stage(schema(), rows)

    assert staged.table.column("_raw").to_pylist() == ['{"v":2}']
    assert staged.duplicates == 1


def test_columns_with_type_conflicts_are_left_out() -> None:
    staged = stage(schema(("title", ColumnType.TEXT), ("budget", ColumnType.INTEGER)),
                   frame(title=["a"], budget=["no longer a number"]), null_columns=frozenset({"budget"}))

    assert staged.columns == ("title",)
    assert staged.table.column_names == ["id", "_source_modified_at", "_raw", "title"]


def test_anything_but_a_frame_table_or_path_is_refused() -> None:
    with pytest.raises(FrameContractError, match="expected a DataFrame"):
        stage(schema(), [{"id": 1}])  # type: ignore[arg-type]


def test_an_arrow_table_is_taken_as_it_is() -> None:
    table = pa.table({"id": pa.array([1], pa.int64()), "_source_modified_at": pa.array([AT], TIMESTAMP),
                      "_raw": ["{}"]})

    assert stage(schema(), table).table.equals(table)


def test_nul_leaves_text_and_json_for_postgres_and_nothing_else_changes() -> None:
    document = {"TITLE\x00": "Invoice\x00 #1", "NOTE": "a literal \\u0000 stays", "N": [1, None, "x\x00"]}
    table = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "_raw": pa.array([orjson.dumps(document).decode(), '{"TITLE":"plain"}', None]),
        "title": pa.array(["Invoice\x00 #1", "plain", None]),
        "tags": pa.array(['["a\\u0000b"]', '["\\\\u0000"]', None]),
    })
    cleaned = without_nul(table, {"_raw", "tags"})
    assert orjson.loads(cleaned.column("_raw")[0].as_py()) == {
        "TITLE": "Invoice #1", "NOTE": "a literal \\u0000 stays", "N": [1, None, "x"]}
    assert cleaned.column("_raw").to_pylist()[1:] == ['{"TITLE":"plain"}', None]
    assert cleaned.column("title").to_pylist() == ["Invoice #1", "plain", None]
    # A backslash before "u0000" is text, not the NUL escape: that document is kept as it was.
    assert cleaned.column("tags").to_pylist() == ['["ab"]', '["\\\\u0000"]', None]
    assert cleaned.column("id") == table.column("id")


def test_a_table_without_nul_is_returned_as_it_is() -> None:
    table = pa.table({"_raw": pa.array(['{"a":"b"}']), "title": pa.array(["x"])})
    assert without_nul(table, {"_raw"}) is table
