"""Is every partner being served? What ``spampots status`` prints and ``/readyz`` checks.

Per partner: the last batch published, the last successful publish run, the last poll by the
partner, the last digest sent and its collections' sizes; warnings for a partner that has not
polled in 48 hours or whose publishing is late.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feeds.deliveries import deliveries
from feeds.partners import Partner, PartnersConfig
from feeds.publish import feed_batches
from feeds.store import as_utc_or_none
from feeds.worker import job_runs
from taxii_server.audit import last_polls
from taxii_server.objects import object_counts

POLL_WARNING = dt.timedelta(hours=48)


def _ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


@dataclass
class PartnerStatus:
    partner_id: str
    name: str
    last_batch: str | None = None
    last_batch_at: dt.datetime | None = None
    last_publish_success: dt.datetime | None = None
    last_poll: dt.datetime | None = None
    last_digest_week: str | None = None
    last_digest_at: dt.datetime | None = None
    collection_sizes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def lines(self, now: dt.datetime) -> list[str]:
        batch = (
            f"{self.last_batch} ({_ago(self.last_batch_at, now)})" if self.last_batch else "none"
        )
        digest = (
            f"{self.last_digest_week} ({_ago(self.last_digest_at, now)})"
            if self.last_digest_week
            else "none"
        )
        sizes = ", ".join(f"{alias} {count}" for alias, count in self.collection_sizes.items())
        lines = [
            f"{self.partner_id} ({self.name})",
            f"  last batch:    {batch}; last publish run {_ago(self.last_publish_success, now)}",
            f"  last poll:     {_ago(self.last_poll, now)}",
            f"  last digest:   {digest}",
            f"  collections:   {sizes or 'none'}",
        ]
        lines.extend(f"  WARNING: {warning}" for warning in self.warnings)
        return lines


def publish_successes(connection: Connection) -> dict[str, dt.datetime]:
    rows = connection.execute(
        sa.select(job_runs.c.name, job_runs.c.last_success).where(
            job_runs.c.name.like("publish:%"), job_runs.c.last_success.is_not(None)
        )
    )
    return {name.split(":", 1)[1]: as_utc_or_none(moment) for name, moment in rows}  # type: ignore[misc]


def _last_batches(connection: Connection) -> dict[str, tuple[str, dt.datetime]]:
    latest = (
        sa.select(feed_batches.c.partner_id, sa.func.max(feed_batches.c.issued).label("issued"))
        .group_by(feed_batches.c.partner_id)
        .subquery()
    )
    rows = connection.execute(
        sa.select(feed_batches.c.partner_id, feed_batches.c.batch_id, feed_batches.c.issued).join(
            latest,
            sa.and_(
                latest.c.partner_id == feed_batches.c.partner_id,
                latest.c.issued == feed_batches.c.issued,
            ),
        )
    )
    return {partner: (batch, as_utc_or_none(issued)) for partner, batch, issued in rows}  # type: ignore[misc]


def _last_digests(connection: Connection) -> dict[str, tuple[str, dt.datetime]]:
    rows = connection.execute(
        sa.select(deliveries.c.partner_id, deliveries.c.week, sa.func.max(deliveries.c.accepted_at))
        .where(deliveries.c.accepted_at.is_not(None))
        .group_by(deliveries.c.partner_id, deliveries.c.week)
        .order_by(deliveries.c.week)
    )
    found: dict[str, tuple[str, dt.datetime]] = {}
    for partner, week, accepted in rows:
        found[partner] = (week, as_utc_or_none(accepted))  # type: ignore[assignment]
    return found


def partner_statuses(
    connection: Connection, config: PartnersConfig, now: dt.datetime
) -> list[PartnerStatus]:
    successes = publish_successes(connection)
    batches = _last_batches(connection)
    digests = _last_digests(connection)
    polls = last_polls(connection)
    sizes = object_counts(connection)
    statuses = []
    for partner in config.partners.values():
        status = PartnerStatus(partner.id, partner.name)
        if partner.id in batches:
            status.last_batch, status.last_batch_at = batches[partner.id]
        status.last_publish_success = successes.get(partner.id)
        if partner.id in digests:
            status.last_digest_week, status.last_digest_at = digests[partner.id]
        username = partner.taxii.username if partner.taxii else None
        ids = {c.id for c in partner.collections}
        moments = [
            moment
            for (collection, user), moment in polls.items()
            if user == username and collection in ids
        ]
        status.last_poll = max(moments, default=None)
        status.collection_sizes = {c.alias: sizes.get(c.id, 0) for c in partner.collections}
        status.warnings = _warnings(partner, status, now)
        statuses.append(status)
    return statuses


def _warnings(partner: Partner, status: PartnerStatus, now: dt.datetime) -> list[str]:
    warnings = []
    if partner.taxii is not None:
        if status.last_poll is None:
            warnings.append("the partner has never polled its collections")
        elif now - status.last_poll > POLL_WARNING:
            warnings.append(
                f"the partner has not polled in 48 hours (last poll {_ago(status.last_poll, now)})"
            )
    late = publish_late(partner, status.last_publish_success, now)
    if late:
        warnings.append(late)
    return warnings


def publish_late(partner: Partner, last_success: dt.datetime | None, now: dt.datetime) -> str:
    """Why the partner's publishing is late (no success within twice its interval), or ''."""
    if last_success is None:
        return "no publish run has succeeded yet"
    if now - last_success > 2 * partner.publish_every:
        return (
            f"the last successful publish run was {_ago(last_success, now)}, over twice "
            f"the interval of {partner.publish_every}"
        )
    return ""


def readiness_problems(
    connection: Connection, config: PartnersConfig, now: dt.datetime
) -> list[str]:
    """What makes the service not ready; empty when it is (the store answered already)."""
    successes = publish_successes(connection)
    problems = []
    for partner in config.partners.values():
        late = publish_late(partner, successes.get(partner.id), now)
        if late:
            problems.append(f"{partner.id}: {late}")
    return problems
