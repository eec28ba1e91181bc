"""Fleet hygiene: keep the refresh tokens of quiet portals alive.

A refresh token that goes unused for its lifetime expires, and the portal then needs an
administrator to open the app again (facts §7.2: 180 days in current docs, 28 days in older ones;
§8: "touch dormant portals before that"). A portal that changes nothing never gets a 401, so it
never refreshes on its own: this refreshes every active portal whose pair was last saved longer
ago than a threshold well below the shorter reading of the lifetime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from connectors.bitrix24.auth import OAuthApp
from connectors.bitrix24.errors import Bitrix24Error, ReauthorizationRequired
from connectors.bitrix24.redaction import redact
from connectors.state.errors import StateStoreError
from connectors.state.interface import StateStore

log = logging.getLogger(__name__)

# Below the 28 days of the older docs, with a week to notice and fix a failing refresh.
DEFAULT_QUIET_FOR = timedelta(days=21)


@dataclass
class QuietRefresh:
    """What `refresh_quiet_portals` did: portal keys, and a redacted reason per failure."""

    refreshed: list[str] = field(default_factory=list)
    reauthorization_required: dict[str, str] = field(default_factory=dict)  # the refresh token is dead
    failed: dict[str, str] = field(default_factory=dict)  # transient: try again next time


def refresh_quiet_portals(store: StateStore, app: OAuthApp, older_than: timedelta = DEFAULT_QUIET_FOR,
                          *, now: datetime | None = None) -> QuietRefresh:
    """Refresh the token pair of every active portal whose pair was saved more than ``older_than``
    before ``now`` (default: the current time), oldest first.

    Each refresh goes through the portal's OAuth session with the store's cross-process refresh lock,
    so a run refreshing the same portal at the same time is not forked: whichever comes second adopts
    the pair the first saved. One portal's failure does not stop the others: a rejected refresh token
    (``invalid_grant``) lands in ``reauthorization_required``, anything else in ``failed``; messages
    are redacted. Raises `StateStoreError` only when the store itself cannot be read.
    """
    cutoff = (now or datetime.now(UTC)) - older_than
    outcome = QuietRefresh()
    for portal in store.tokens_saved_before(cutoff):
        session = app.session(portal, store.tokens)
        try:
            # Renewing the current grant refreshes unless another process already did.
            session.renew(session.grant())
        except ReauthorizationRequired as error:
            outcome.reauthorization_required[portal] = redact(str(error))
            log.warning("portal %s: refresh token rejected; the app must be authorized again", portal)
            continue
        except (Bitrix24Error, StateStoreError) as error:
            outcome.failed[portal] = redact(f"{type(error).__name__}: {error}")
            log.warning("portal %s: quiet-portal refresh failed (%s); retried next time", portal,
                        type(error).__name__)
            continue
        outcome.refreshed.append(portal)
    return outcome
