"""Times as the store keeps them: every moment is UTC."""

from __future__ import annotations

import datetime as dt


def as_utc(moment: dt.datetime) -> dt.datetime:
    """An aware UTC datetime (SQLite gives back naive values; everything the store holds is
    UTC, so a naive time is taken as UTC)."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def as_utc_or_none(moment: dt.datetime | None) -> dt.datetime | None:
    return None if moment is None else as_utc(moment)
