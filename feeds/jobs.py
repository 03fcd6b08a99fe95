"""The worker's jobs: what runs when, each a thin call into its stage.

Jobs take the worker's partners configuration, the last good one, rather than re-reading the
file, so a bad edit of partners.yaml never stops the work.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging

from sqlalchemy.engine import Engine

from feeds.errors import SpampotsError
from feeds.partners import PartnersConfig
from feeds.settings import Settings
from feeds.worker import JobOutcome, JobSpec, interval, weekly

log = logging.getLogger("spampots.worker")


def jobs_for(settings: Settings, config: PartnersConfig, engine: Engine) -> list[JobSpec]:
    specs = [
        JobSpec(
            "ingest",
            interval(dt.timedelta(seconds=settings.ingest_every)),
            functools.partial(ingest_job, settings, config, engine),
        ),
        JobSpec(
            "expire",
            interval(dt.timedelta(days=1)),
            functools.partial(publish_job, settings, config, engine, None),
        ),
        JobSpec(
            "retention",
            interval(dt.timedelta(days=1)),
            functools.partial(retention_job, settings, engine),
        ),
        JobSpec(
            "keys-reminder",
            interval(dt.timedelta(days=1)),
            functools.partial(keys_reminder_job, settings, engine),
        ),
        JobSpec(
            "digest-retry",
            interval(dt.timedelta(minutes=10)),
            functools.partial(digest_retry_job, settings, config, engine),
        ),
    ]
    for partner in config.partners.values():
        specs.append(
            JobSpec(
                f"publish:{partner.id}",
                interval(partner.publish_every),
                functools.partial(publish_job, settings, config, engine, partner.id),
                partner=partner.id,
            )
        )
        if partner.digest is not None:
            schedule = weekly(partner.digest.weekday, partner.digest.time, partner.digest.timezone)
            specs.append(
                JobSpec(
                    f"digest:{partner.id}",
                    schedule,
                    functools.partial(digest_job, settings, config, engine, partner.id),
                    partner=partner.id,
                )
            )
    return specs


def ingest_job(settings: Settings, config: PartnersConfig, engine: Engine) -> JobOutcome:
    from feeds.ingest import ingest_run
    from feeds.rollups import refresh

    reports = ingest_run(settings, partners=config).run()
    failed = [r for r in reports if r.status == "failed"]
    for report in failed:
        log.error(
            "ingest of %s failed: %s",
            report.name,
            report.error,
            extra={"job": "ingest", "batch": report.name},
        )
    counts = {
        "batches": len(reports),
        "read": sum(r.read for r in reports),
        "accepted": sum(r.accepted for r in reports),
        "quarantined": sum(r.quarantined for r in reports),
        "failed": len(failed),
    }
    if counts["accepted"]:
        refresh(engine, config)  # keep the digests' weekly sums current as data arrives
    return JobOutcome(f"{len(reports)} batches ingested" if reports else "no new batches", counts)


def publish_job(
    settings: Settings, config: PartnersConfig, engine: Engine, partner_id: str | None
) -> JobOutcome:
    from feeds.publish import publish

    report = publish(settings, partner_id, engine=engine, config=config)
    for batch in report.batches:
        log.info(
            "published batch %s",
            batch.batch_id,
            extra={
                "job": f"publish:{partner_id}" if partner_id else "expire",
                "partner": partner_id or "",
                "collection": batch.collection_alias,
                "batch": batch.batch_id,
                "objects": batch.objects,
                "expired": batch.expired,
            },
        )
    counts = {
        "batches": len(report.batches),
        "objects": report.objects,
        "expired": sum(b.expired for b in report.batches),
    }
    fields = {"batch": ",".join(b.batch_id for b in report.batches)} if report.batches else {}
    message = f"{len(report.batches)} batches" if report.batches else "nothing new"
    return JobOutcome(message, counts, fields)


def digest_job(
    settings: Settings, config: PartnersConfig, engine: Engine, partner_id: str
) -> JobOutcome:
    from feeds.deliveries import weekly_digest

    lines = weekly_digest(engine, settings, config, partner_id)
    undelivered = [line for line in lines if line.startswith(("failed:", "uncertain:"))]
    if undelivered:  # recorded as a failed run (and alerted on); digest-retry tries again
        raise SpampotsError(
            f"the digest for {partner_id} did not reach every address: {'; '.join(undelivered)}",
            hint="check the SMTP server; the retry job sends it when the server takes it",
        )
    sent = sum(1 for line in lines if line.startswith("sent:"))
    return JobOutcome("; ".join(lines) or "nothing to do", {"sent": sent})


def digest_retry_job(settings: Settings, config: PartnersConfig, engine: Engine) -> JobOutcome:
    from feeds.deliveries import retry_unsent

    lines = retry_unsent(engine, settings, config)
    return JobOutcome("; ".join(lines) or "no digest waiting", {"retried": len(lines)})


def retention_job(settings: Settings, engine: Engine) -> JobOutcome:
    from feeds.retention import apply_retention

    report = apply_retention(engine, settings.retention_days, dt.datetime.now(dt.UTC))
    counts = {
        "weeks": len(report.weeks),
        "messages": report.messages,
        "sessions": report.sessions,
        "partitions_created": len(report.created),
    }
    return JobOutcome(report.line(), counts)


def keys_reminder_job(settings: Settings, engine: Engine) -> JobOutcome:
    from feeds.errors import SigningKeyError
    from feeds.keys import active_key

    with engine.connect() as connection:
        key = active_key(connection)
    if key is None:
        raise SigningKeyError("there is no active signing key", hint="run 'spampots init'")
    created = key.created_at if key.created_at.tzinfo else key.created_at.replace(tzinfo=dt.UTC)
    age = (dt.datetime.now(dt.UTC) - created).days
    if age > settings.key_max_age_days:
        raise SigningKeyError(
            f"the active signing key {key.kid} is {age} days old",
            hint="rotate it: 'spampots keys generate', tell partners the new kid, then "
            "'spampots keys rotate' (docs/runbook.md)",
        )
    return JobOutcome(f"active key {key.kid} is {age} days old", {"age_days": age})
