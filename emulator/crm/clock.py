"""The portal's wall clock and the one timestamp format Bitrix24 shows on the wire.

Bitrix24 stores times per server time zone and prints them as ISO 8601 with that zone's offset at
second resolution, e.g. ``2024-08-30T14:29:00+02:00`` (facts §4.7). Because every stored timestamp of
a portal carries the same offset, stored strings sort chronologically, which the list filters use.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

DEFAULT_UTC_OFFSET = timedelta(hours=3)


class PortalClock:
    """Seconds since the epoch in, portal-local ISO 8601 strings out (and back)."""

    def __init__(self, utc_offset: timedelta = DEFAULT_UTC_OFFSET) -> None:
        self.tz = timezone(utc_offset)
        self._last_second = -1
        self._last_text = ""

    def now(self) -> int:
        return int(time.time())

    def now_iso(self) -> str:
        return self.iso(self.now())

    def iso(self, epoch_seconds: int) -> str:
        # Writes come in bursts within one second; formatting once per second keeps them cheap.
        if epoch_seconds != self._last_second:
            self._last_text = datetime.fromtimestamp(epoch_seconds, self.tz).isoformat()
            self._last_second = epoch_seconds
        return self._last_text

    def iso_uncached(self, epoch_seconds: int) -> str:
        return datetime.fromtimestamp(epoch_seconds, self.tz).isoformat()

    def day_of(self, epoch_seconds: int) -> date:
        """The portal-local calendar day of a moment (never the host machine's zone)."""
        return datetime.fromtimestamp(epoch_seconds, self.tz).date()

    def day_iso(self, day: date) -> str:
        """A date field as Bitrix prints it: local midnight with the portal offset."""
        return datetime(day.year, day.month, day.day, tzinfo=self.tz).isoformat()

    def parse(self, value: object) -> int | None:
        """Epoch seconds of an ISO 8601 date or date-time; a value without offset is portal-local."""
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, str) and value.strip():
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return None
        else:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.tz)
        return int(moment.timestamp())

    def normalize(self, value: object) -> str | None:
        """Any accepted date-time spelling, re-printed in the portal's own format."""
        seconds = self.parse(value)
        return None if seconds is None else self.iso_uncached(seconds)

    def normalize_day(self, value: object) -> str | None:
        seconds = self.parse(value)
        if seconds is None:
            return None
        return self.day_iso(datetime.fromtimestamp(seconds, self.tz).date())
