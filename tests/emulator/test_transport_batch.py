"""`batch` as Bitrix24 runs it (facts §5): up to 50 sub-calls, `halt`, `$result[...]` references, the
five result maps (empty ones as `[]`), and one HTTP request for the rate limit however many commands.

The connector packs every reserve, fetch and ack into batches, so these shapes are its bread and butter.
"""

from __future__ import annotations

from emulator.errors import RestError
from emulator.params import encode_query
from emulator.registry import Page, rest_method

ROWS = [{"ID": str(i), "TITLE": f"Deal {i}", "TAGS": ["a", "b"]} for i in range(1, 8)]


@rest_method("test.batch.list", scope="crm")
def _list(ctx, params):
    """Keyset list over ROWS: filter[>ID], three per page, like start=-1 paging."""
    after = int(params.get("filter", {}).get(">ID", 0) or 0)
    rows = [row for row in ROWS if int(row["ID"]) > after][:3]
    return Page(items=rows, total=len(ROWS), next=3 if after == 0 else None)


@rest_method("test.batch.echo", scope="crm")
def _echo(ctx, params):
    return params


@rest_method("test.batch.fail", scope="crm")
def _fail(ctx, params):
    raise RestError("Not found", code="")


def _batch(http, emu, cmd, **extra):
    response = http.post(emu.webhook_url + "batch", json={"cmd": cmd, **extra})
    assert response.status_code == 200
    return response.json()


def test_batch_returns_the_five_maps_keyed_like_cmd(http, emu):
    cmd = {"first": "test.batch.list", "echo": "test.batch.echo?x=1", "bad": "test.batch.fail"}
    body = _batch(http, emu, cmd)
    result = body["result"]
    assert result["result"]["first"] == ROWS[:3] and result["result"]["echo"] == {"x": "1"}
    assert result["result_error"] == {"bad": {"error": "", "error_description": "Not found"}}
    assert result["result_total"] == {"first": 7} and result["result_next"] == {"first": 3}
    assert set(result["result_time"]) == {"first", "echo"}
    assert {"start", "finish", "duration", "processing", "date_start", "date_finish"} <= set(
        result["result_time"]["first"])
    assert "time" in body


def test_empty_result_maps_are_serialized_as_empty_json_arrays(http, emu):
    result = _batch(http, emu, {"e": "test.batch.echo?x=1"})["result"]
    assert result["result_error"] == [] and result["result_total"] == [] and result["result_next"] == []


def test_a_cmd_list_gives_lists_while_every_key_is_present(http, emu):
    result = _batch(http, emu, ["test.batch.echo?n=0", "test.batch.echo?n=1"])["result"]
    assert result["result"] == [{"n": "0"}, {"n": "1"}]
    gapped = _batch(http, emu, ["test.batch.echo?n=0", "test.batch.fail", "test.batch.echo?n=2"])["result"]
    assert gapped["result"] == {"0": {"n": "0"}, "2": {"n": "2"}}
    assert set(gapped["result_error"]) == {"1"}


def test_result_error_keyed_exactly_0_to_n_minus_1_is_a_json_list_like_phps_json_encode(http, emu):
    failing = _batch(http, emu, ["test.batch.fail", "test.batch.fail"])["result"]
    not_found = {"error": "", "error_description": "Not found"}
    assert failing["result_error"] == [not_found, not_found]
    assert failing["result"] == [] and failing["result_time"] == []
    # An object cmd with keys "0", "1" is the same PHP array (numeric string keys become integers).
    as_object = _batch(http, emu, {"0": "test.batch.fail", "1": "test.batch.fail"})["result"]
    assert as_object["result_error"] == [not_found, not_found]
    mixed = _batch(http, emu, {"0": "test.batch.echo?n=0", "1": "test.batch.echo?n=1", "01": "test.batch.fail"})
    assert mixed["result"]["result"] == [{"n": "0"}, {"n": "1"}]
    assert mixed["result"]["result_error"] == {"01": not_found}


def test_batch_as_a_form_body_with_encoded_subqueries(http, emu):
    form = encode_query({"cmd": {"a": "test.batch.echo?" + encode_query({"filter": {">ID": 5}})}, "halt": 0})
    response = http.post(emu.webhook_url + "batch.json", content=form,
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.json()["result"]["result"]["a"] == {"filter": {">ID": "5"}}


def test_batch_of_51_commands_runs_50_and_refuses_the_rest_with_error_batch_length_exceeded(http, emu):
    cmd = {f"c{i}": f"test.batch.echo?i={i}" for i in range(52)}
    result = _batch(http, emu, cmd)["result"]
    assert len(result["result"]) == 50 and "c49" in result["result"]
    assert result["result_error"] == {
        key: {"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}
        for key in ("c50", "c51")}


def test_nested_batch_is_refused_with_error_batch_method_not_allowed(http, emu):
    result = _batch(http, emu, {"inner": "batch?cmd[x]=test.batch.echo", "ok": "test.batch.echo"})["result"]
    assert result["result_error"]["inner"] == {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED",
                                               "error_description": "Method is not allowed for batch usage"}
    assert "ok" in result["result"]


def test_halt_stops_after_the_first_failing_command(http, emu):
    cmd = {"a": "test.batch.echo", "b": "test.batch.fail", "c": "test.batch.echo"}
    result = _batch(http, emu, cmd, halt=1)["result"]
    assert list(result["result"]) == ["a"] and list(result["result_error"]) == ["b"]
    assert "c" not in result["result_time"]
    assert set(_batch(http, emu, cmd, halt=0)["result"]["result"]) == {"a", "c"}


def test_batch_result_reference_chains_a_keyset_scan(http, emu):
    cmd = {"p0": "test.batch.list?filter[>ID]=0",
           "p1": "test.batch.list?filter[>ID]=$result[p0][2][ID]",
           "p2": "test.batch.list?filter[%3EID]=$result[p1][2][ID]"}
    result = _batch(http, emu, cmd)["result"]
    assert [row["ID"] for key in ("p0", "p1", "p2") for row in result["result"][key]] == [
        str(i) for i in range(1, 8)]


def test_batch_result_reference_to_a_whole_value_substitutes_the_raw_array(http, emu):
    cmd = {"rows": "test.batch.list",
           "whole": "test.batch.echo?tags=$result[rows][0][TAGS]&row=$result[rows][1]"}
    echoed = _batch(http, emu, cmd)["result"]["result"]["whole"]
    assert echoed == {"tags": ["a", "b"], "row": ROWS[1]}


def test_batch_result_reference_inside_a_string_is_replaced_by_text(http, emu):
    cmd = {"rows": "test.batch.list", "s": "test.batch.echo?title=id-$result[rows][0][ID]-of-$total[rows]"}
    assert _batch(http, emu, cmd)["result"]["result"]["s"] == {"title": "id-1-of-7"}


def test_batch_next_total_time_and_error_references(http, emu):
    cmd = {"rows": "test.batch.list", "bad": "test.batch.fail",
           "refs": "test.batch.echo?next=$next[rows]&total=$total[rows]&err=$error[bad][error_description]"
                   "&took=$time[rows][duration]"}
    echoed = _batch(http, emu, cmd)["result"]["result"]["refs"]
    assert echoed["next"] == 3 and echoed["total"] == 7 and echoed["err"] == "Not found"
    assert isinstance(echoed["took"], float)


def test_an_unresolvable_reference_path_stops_at_the_deepest_value_found(http, emu):
    cmd = {"rows": "test.batch.list",
           "deep": "test.batch.echo?v=$result[rows][0][NOPE]&w=$result[missing][0]"}
    echoed = _batch(http, emu, cmd)["result"]["result"]["deep"]
    assert echoed == {"v": ROWS[0], "w": "$result[missing][0]"}


def test_sub_calls_run_with_the_callers_auth(http, emu, tokens):
    response = http.post(f"{emu.url}/rest/batch", json={
        "auth": tokens["access_token"], "cmd": {"who": "profile", "app": "app.info"}})
    result = response.json()["result"]["result"]
    assert result["who"]["ID"] == 1 and result["app"]["CODE"] == emu.client_id


def test_a_batch_is_one_http_request_and_every_sub_call_is_counted(http, emu):
    emu.reset_stats()
    _batch(http, emu, {f"c{i}": "test.batch.echo" for i in range(20)} | {"bad": "test.batch.fail"})
    stats = emu.stats()
    assert stats["http_requests"] == 1 and stats["status"] == {"200": 1}
    assert stats["methods"]["batch"]["calls"] == 1
    assert stats["methods"]["test.batch.echo"]["calls"] == 20
    assert stats["methods"]["test.batch.fail"] == {"calls": 1, "errors": 1, "status_503": 0, "status_429": 0,
                                                   "operating_s": 0.0}
    assert stats["bytes_out"] > 0


def test_sub_calls_inherit_the_batch_auth_connector_so_own_writes_are_not_queued(http, emu, tokens):
    token = tokens["access_token"]
    bound = http.post(f"{emu.url}/rest/event.bind", json={
        "auth": token, "event": "ONCRMDEALUPDATE", "event_type": "offline", "auth_connector": "etl"})
    assert bound.json()["result"] is True
    first, second = (row["id"] for row in emu.truth("deal")[:2])
    update = "crm.deal.update?id={}&fields[TITLE]=renamed"
    http.post(f"{emu.url}/rest/batch", json={"auth": token, "auth_connector": "etl",
                                             "cmd": {"own": update.format(first)}})
    http.post(f"{emu.url}/rest/batch", json={"auth": token, "cmd": {"other": update.format(second)}})
    queued = {row["EVENT_DATA"]["FIELDS"]["ID"] for row in emu.queue() if row["CONNECTOR_ID"] == "etl"}
    assert queued == {second}
