"""Unpacking batch answers whose result maps PHP encoded as JSON lists, over loopback.

PHP's ``json_encode`` writes a map keyed exactly 0..n-1 as a list (facts §5), so a batch whose
commands are keyed ``"0"``, ``"1"``, … gets ``result``, ``result_error``, ``result_time`` and the rest
back as lists; `BatchResult.parse` must give the same per-key view as for an object answer.
"""

from __future__ import annotations

from connectors.bitrix24 import Command
from connectors.bitrix24.errors import InvalidArgument


def test_list_shaped_results_and_times_are_read_per_command_key(emu, oauth_client) -> None:
    client = oauth_client(emu)
    outcome = client.batch({"0": Command("crm.deal.list", {"select": ["ID"], "filter": {"<=ID": 3}}),
                            "1": Command("feature.get", {"CODE": "rest_offline_extended"})})
    assert outcome.errors == {}
    assert [row["ID"] for row in outcome.result("0")] == ["1", "2", "3"]
    assert outcome.result("1") == {"value": "Y"}
    assert outcome.totals == {"0": 3}
    assert set(outcome.times) == {"0", "1"} and outcome.times["1"]["processing"] >= 0


def test_list_shaped_result_error_gives_a_typed_error_per_command_key(emu, oauth_client) -> None:
    client = oauth_client(emu)
    outcome = client.batch({"0": Command("feature.get"), "1": Command("feature.get")})
    assert outcome.results == {} and outcome.times == {}
    assert set(outcome.errors) == {"0", "1"}
    assert all(isinstance(error, InvalidArgument) for error in outcome.errors.values())
    assert not outcome.ok("0")
