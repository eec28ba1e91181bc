"""Portal installations in the state store: saved on install, found by key or member_id (stable
across domain renames, facts §8), marked uninstalled, and checked against inbound events'
application_token (facts §7.4), which never shows in a repr."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.state import InvalidPortalKey, Portal, PortalProgress, PortalStatus, StateStore

INSTALLED = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def acme(**changes: object) -> Portal:
    fields = {"key": "acme.bitrix24.de", "member_id": "a" * 32, "domain": "acme.bitrix24.de",
              "client_endpoint": "https://acme.bitrix24.de/rest/", "application_token": "app-secret-1",
              "installed_at": INSTALLED} | changes
    return Portal(**fields)  # type: ignore[arg-type]


def test_a_saved_portal_is_found_by_key_and_member_id(store: StateStore) -> None:
    store.save_portal(acme())

    assert store.portal("acme.bitrix24.de") == acme()
    assert store.portal_by_member_id("a" * 32) == acme()
    assert store.portal("other.bitrix24.de") is None


def test_a_reinstall_replaces_the_record(store: StateStore) -> None:
    store.save_portal(acme())
    store.save_portal(acme(application_token="app-secret-2", installed_at=INSTALLED + timedelta(days=1)))

    assert store.portal("acme.bitrix24.de").application_token == "app-secret-2"


def test_uninstalled_portals_leave_the_active_list(store: StateStore) -> None:
    store.save_portal(acme())
    store.save_portal(acme(key="beta.bitrix24.de", member_id="b" * 32, domain="beta.bitrix24.de"))
    store.mark_uninstalled("acme.bitrix24.de")

    assert [p.key for p in store.portals()] == ["beta.bitrix24.de"]
    assert [(p.key, p.status) for p in store.portals(None)] == [
        ("acme.bitrix24.de", PortalStatus.UNINSTALLED), ("beta.bitrix24.de", PortalStatus.ACTIVE)]


def test_member_id_lookup_prefers_the_active_installation(store: StateStore) -> None:
    # A renamed domain: same member_id, new key; the old record was uninstalled.
    store.save_portal(acme(key="old.bitrix24.de", status=PortalStatus.UNINSTALLED,
                           installed_at=INSTALLED + timedelta(days=9)))
    store.save_portal(acme())

    assert store.portal_by_member_id("a" * 32).key == "acme.bitrix24.de"


def test_the_application_token_is_verified_and_never_shown(store: StateStore) -> None:
    store.save_portal(acme())

    assert store.verify_application_token("acme.bitrix24.de", "app-secret-1")
    assert not store.verify_application_token("acme.bitrix24.de", "app-secret-2")
    assert not store.verify_application_token("unknown.bitrix24.de", "app-secret-1")
    assert "app-secret-1" not in repr(store.portal("acme.bitrix24.de"))
    assert "app-secret-1" not in repr(store)


@pytest.mark.parametrize("key", ["acme,bitrix24.de", "acme|x", "acme bitrix24", "", "-acme.de", "acme.de/rest",
                                 "x'; DROP TABLE portals; --"])
def test_portal_keys_must_be_hostname_like(key: str) -> None:
    with pytest.raises(InvalidPortalKey):
        acme(key=key)


def test_a_port_is_allowed_in_a_portal_key(store: StateStore) -> None:
    store.save_portal(acme(key="127.0.0.1:8123"))

    assert store.portal("127.0.0.1:8123").key == "127.0.0.1:8123"


def test_what_runs_report_about_a_portal_is_kept_and_a_missing_part_keeps_the_stored_one(store: StateStore) -> None:
    assert store.progress() == {}
    store.record_progress("a.bitrix24.com", parked=3)
    store.record_progress("a.bitrix24.com", resynced="2026-11-01T00:00:00+00:00")  # a full resync completed
    store.record_progress("b.bitrix24.com", parked=0)
    assert store.progress() == {
        "a.bitrix24.com": PortalProgress("a.bitrix24.com", parked=3, resynced="2026-11-01T00:00:00+00:00"),
        "b.bitrix24.com": PortalProgress("b.bitrix24.com", parked=0)}
    store.record_progress("a.bitrix24.com", parked=0)
    assert store.progress()["a.bitrix24.com"].parked == 0
    assert store.progress()["a.bitrix24.com"].resynced == "2026-11-01T00:00:00+00:00"
    with pytest.raises(InvalidPortalKey):
        store.record_progress("not a key", parked=1)
