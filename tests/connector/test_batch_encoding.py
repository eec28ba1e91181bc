"""PHP-bracket encoding of batch commands and unpacking of batch answers (pure, no HTTP).

Every batch sub-command is a query string the portal parses with PHP's ``parse_str`` (facts §5), so
the encoder must write nested filters, IN-lists and select lists exactly as PHP expects; the
emulator's PHP-faithful decoder serves as the reference parser for round trips.
"""

from __future__ import annotations

import pytest

from connectors.bitrix24.batch import BatchResult, Command, chunked, encode_query, result_ref
from connectors.bitrix24.errors import NotFound, OperationTimeLimit, WrongLicense
from emulator.params import decode_query


def test_nested_filter_and_operators_are_bracketed_and_escaped() -> None:
    query = encode_query({"filter": {">ID": 5, "=STAGE_ID": "C1:NEW"}, "start": -1})
    assert query == "filter[%3EID]=5&filter[%3DSTAGE_ID]=C1%3ANEW&start=-1"


def test_lists_get_explicit_indexes_so_lists_of_objects_survive() -> None:
    query = encode_query({"fields": {"PHONE": [{"VALUE": "+1 555", "VALUE_TYPE": "WORK"}]}})
    assert query == "fields[PHONE][0][VALUE]=%2B1%20555&fields[PHONE][0][VALUE_TYPE]=WORK"


def test_booleans_are_one_and_zero_and_none_is_left_out() -> None:
    assert encode_query({"halt": True, "clear": False, "missing": None}) == "halt=1&clear=0"


def test_result_references_stay_readable() -> None:
    reference = result_ref("page0", "items", 49, "id")
    assert reference == "$result[page0][items][49][id]"
    assert encode_query({"filter": {">id": reference}}) == "filter[%3Eid]=$result[page0][items][49][id]"


def test_values_with_separators_cannot_break_the_query() -> None:
    params = {"filter": {"%TITLE": "a&b=c d+e#f"}, "select": ["*", "UF_*", "PHONE"]}
    assert decode_query(encode_query(params)) == params


@pytest.mark.parametrize("params", [
    {"filter": {"@ID": ["1", "2", "3"]}, "select": ["*", "UF_*", "PHONE", "EMAIL"], "start": "-1"},
    {"entityTypeId": "1038", "filter": {">id": "$result[p][items][49][id]"}, "order": {"id": "ASC"}},
    {"fields": {"TITLE": "Ünïcødé €", "UF_CRM_1": ["x", "y"]}, "auth_connector": "warehouse"},
])
def test_encoded_commands_round_trip_through_a_php_parse_str(params: dict) -> None:
    assert decode_query(encode_query(params)) == params


def test_a_command_without_params_is_the_bare_method() -> None:
    assert Command("event.get").encode() == "event.get"
    assert Command("crm.deal.list", {"start": -1}).encode() == "crm.deal.list?start=-1"


def test_objects_that_php_cannot_express_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_query({"filter": {"ID": object()}})


def test_chunking_keeps_order_and_caps_at_fifty() -> None:
    commands = {f"c{i}": Command("crm.deal.list") for i in range(120)}
    chunks = list(chunked(commands))
    assert [len(chunk) for chunk in chunks] == [50, 50, 20]
    assert [key for chunk in chunks for key in chunk] == list(commands)


def test_batch_answer_with_php_empty_maps_and_typed_errors() -> None:
    commands = {"a": Command("crm.deal.list"), "b": Command("crm.deal.get"),
                "c": Command("event.offline.get"), "d": Command("crm.deal.list")}
    answer = {
        "result": {"a": [{"ID": "1"}]},
        "result_error": {
            # Legacy CRM: empty code, meaning in the text (facts §4.3).
            "b": {"error": "", "error_description": "Not found"},
            "c": {"error": "WRONG_LICENSE",
                  "error_description": "This feature is not enabled for the current license: "
                                       "extended offline events handling"},
            "d": {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked"},
        },
        "result_total": [],
        "result_next": [],
        "result_time": {"a": {"processing": 0.01}},
    }
    outcome = BatchResult.parse(answer, commands)
    assert outcome.ok("a") and outcome.result("a") == [{"ID": "1"}]
    assert isinstance(outcome.errors["b"], NotFound)
    assert isinstance(outcome.errors["c"], WrongLicense)
    assert outcome.errors["c"].feature == "extended offline events handling"
    assert isinstance(outcome.errors["d"], OperationTimeLimit)
    assert outcome.totals == {} and outcome.nexts == {}
    with pytest.raises(NotFound):
        outcome.result("b")
