"""PHP bracket parameters: the decoder must read what Bitrix24's PHP reads, and the encoder must write
what it can read back (facts §1.1, §5). Batch sub-queries and every form body go through these."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from emulator.params import decode_query, encode_query, normalize_json


def test_plain_keys_decode_to_strings():
    assert decode_query("a=1&b=&c=x%20y") == {"a": "1", "b": "", "c": "x y"}


def test_nested_filter_keys_keep_their_operator_prefix():
    assert decode_query("filter%5B%3EID%5D=5&filter[%3C%3DDATE_MODIFY]=2024-01-01&filter[!@ID][]=7") == {
        "filter": {">ID": "5", "<=DATE_MODIFY": "2024-01-01", "!@ID": ["7"]}}


def test_an_unencoded_equals_sign_in_a_key_splits_there_as_in_php():
    assert decode_query("filter[<=ID]=5") == {"filter_<": "ID]=5"}


def test_empty_brackets_append_to_a_list():
    assert decode_query("select[]=ID&select[]=TITLE") == {"select": ["ID", "TITLE"]}


def test_indexed_lists_of_objects_decode_to_lists():
    query = "fields[PHONE][0][VALUE]=1&fields[PHONE][0][VALUE_TYPE]=WORK&fields[PHONE][1][VALUE]=2"
    phones = [{"VALUE": "1", "VALUE_TYPE": "WORK"}, {"VALUE": "2"}]
    assert decode_query(query) == {"fields": {"PHONE": phones}}


def test_mixed_keys_make_an_object_with_php_next_index():
    # PHP: a[x]=1, a[]=2 -> [x=>1, 0=>2]; a[5]=3, a[]=4 -> 5=>3, 6=>4
    assert decode_query("a[x]=1&a[]=2&b[5]=3&b[]=4") == {"a": {"x": "1", "0": "2"}, "b": {"5": "3", "6": "4"}}


def test_out_of_order_indexes_stay_an_object():
    assert decode_query("a[1]=x&a[0]=y") == {"a": {"1": "x", "0": "y"}}


def test_leading_zero_keys_are_strings_not_indexes():
    assert decode_query("a[0]=x&a[01]=y") == {"a": {"0": "x", "01": "y"}}


def test_later_values_override_earlier_ones_and_arrays_replace_scalars():
    assert decode_query("a=1&a=2&b=1&b[c]=2") == {"a": "2", "b": {"c": "2"}}


def test_php_name_mangling_of_dots_spaces_and_unclosed_brackets():
    assert decode_query("a.b=1&c d=2&e[f=3&g[h]x=4") == {"a_b": "1", "c_d": "2", "e_f": "3", "g": {"h": "4"}}


def test_brackets_inside_an_index_are_part_of_the_key():
    assert decode_query("a[b[c]=1") == {"a": {"b[c": "1"}}


def test_reference_values_survive_decoding_unencoded_or_encoded():
    raw = "filter[>ID]=$result[c0][49][ID]"
    encoded = "filter%5B%3EID%5D=" + quote("$result[c0][49][ID]", safe="")
    assert decode_query(raw) == decode_query(encoded) == {"filter": {">ID": "$result[c0][49][ID]"}}


def test_json_objects_keyed_zero_to_n_become_lists_like_php_json_decode():
    assert normalize_json({"cmd": {"0": "a", "1": "b"}, "o": {"1": "x"}, "l": [{"0": 1}]}) == {
        "cmd": ["a", "b"], "o": {"1": "x"}, "l": [[1]]}


@pytest.mark.parametrize("params", [
    {"filter": {"@ID": ["1", "2", "3"], ">DATE_MODIFY": "2024-01-01T00:00:00+03:00"}, "start": "-1"},
    {"fields": {"TITLE": "a&b=c [x]", "PHONE": [{"VALUE": "+1 555", "VALUE_TYPE": "WORK"}]}},
    {"cmd": {"d0": "crm.deal.list?filter[>ID]=0&start=-1", "d1": "crm.deal.get?id=$result[d0][0][ID]"}},
    {"a": {"b": {"c": {"d": ["x", "y", {"e": "z"}]}}}, "unicode": "Сделка №1"},
    {"mixed": {"x": "1", "0": "2"}},
])
def test_encode_then_decode_round_trips(params):
    assert decode_query(encode_query(params)) == params


def test_encoder_writes_scalars_the_php_way_and_skips_none():
    assert decode_query(encode_query({"t": True, "f": False, "n": None, "i": 5, "x": 1.5})) == {
        "t": "1", "f": "0", "i": "5", "x": "1.5"}
