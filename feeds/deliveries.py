"""Sending each partner's weekly digest exactly once per address, and recording it.

One row per (partner, week, address) in ``digest_deliveries``:

- ``pending``: about to be tried; ``failed``: not accepted (down, 4xx or 5xx): tried again by
  the next run;
- ``sending``: written (and committed) after the server accepted the recipient and before the
  message itself is sent. A row left in ``sending`` means the process died, or the connection
  broke, while the server took the message: it may have been accepted, so it is **not** sent
  again on its own (staff check the mail log for the Message-ID and use ``--resend``);
- ``sent``: the server accepted it; its reply and the Message-ID are kept.

A run sends to the addresses not yet ``sent`` (and not ``sending``); ``--resend`` sends to all
of them again, under a new Message-ID.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from feeds.digest import Digest, Week, build_digest, last_complete_week, parse_week, report_id
from feeds.errors import SpampotsError, UsageError
from feeds.mail import compose, csv_attachments, new_message_id
from feeds.partners import Partner, PartnersConfig
from feeds.settings import Settings
from feeds.smtp import (
    SmtpError,
    SmtpRefusedError,
    SmtpSession,
    SmtpTemporaryError,
    SmtpUncertainError,
    parse_smtp_url,
    smtp_session,
)
from feeds.store import metadata, write_transaction

log = logging.getLogger("spampots.digest")
MAX_BACKOFF = 900.0

deliveries = sa.Table(
    "digest_deliveries",
    metadata,
    sa.Column("partner_id", sa.String(40), primary_key=True),
    sa.Column("week", sa.String(8), primary_key=True),
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("report_id", sa.String(80), nullable=False),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("sends", sa.Integer, nullable=False),
    sa.Column("intent_at", sa.DateTime(timezone=True)),
    sa.Column("accepted_at", sa.DateTime(timezone=True)),
    sa.Column("server_reply", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name="status"),
)


class DigestNotSent(SpampotsError):
    """Some addresses did not get the digest; the others did (see :attr:`outcomes`)."""

    def __init__(self, message: str, *, hint: str, outcomes: list[Outcome]) -> None:
        super().__init__(message, hint=hint)
        self.outcomes = outcomes


@dataclass(frozen=True)
class Outcome:
    address: str
    status: str  # sent, already-sent, uncertain, failed
    message_id: str
    detail: str

    def line(self) -> str:
        return f"{self.status}: {self.address} {self.message_id} {self.detail}".rstrip()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _mail_domain(mail_from: str) -> str:
    address = parseaddr(mail_from)[1]
    return address.rpartition("@")[2] or "localhost"


def _update(engine: Engine, partner_id: str, week: Week, address: str, **values: object) -> None:
    d = deliveries.c
    with write_transaction(engine) as connection:
        connection.execute(
            deliveries.update()
            .where(d.partner_id == partner_id, d.week == week.label, d.address == address)
            .values(**values)
        )


def _prepare(
    engine: Engine,
    partner: Partner,
    week: Week,
    addresses: tuple[str, ...],
    resend: bool,
    domain: str,
) -> tuple[dict[str, str], list[Outcome]]:
    """Rows for the addresses to send now (address -> Message-ID), and outcomes of the rest."""
    d = deliveries.c
    todo: dict[str, str] = {}
    skipped: list[Outcome] = []
    fresh_id = new_message_id(report_id(partner.id, week), domain)
    with write_transaction(engine) as connection:
        rows = {
            row.address: row
            for row in connection.execute(
                sa.select(deliveries).where(d.partner_id == partner.id, d.week == week.label)
            )
        }
        reusable = next((r.message_id for r in rows.values() if not resend), fresh_id)
        for address in addresses:
            row = rows.get(address)
            if row is not None and not resend and row.status == "sent":
                skipped.append(
                    Outcome(
                        address, "already-sent", row.message_id, f"accepted at {row.accepted_at}"
                    )
                )
                continue
            if row is not None and not resend and row.status == "sending":
                skipped.append(
                    Outcome(
                        address,
                        "uncertain",
                        row.message_id,
                        f"handed over at {row.intent_at} but no acceptance was recorded: check the "
                        "mail server's log for this Message-ID; send again with --resend",
                    )
                )
                continue
            message_id = fresh_id if resend else (row.message_id if row else reusable)
            todo[address] = message_id
            values = {
                "report_id": report_id(partner.id, week),
                "message_id": message_id,
                "status": "pending",
            }
            if row is None:
                connection.execute(
                    deliveries.insert().values(
                        partner_id=partner.id,
                        week=week.label,
                        address=address,
                        attempts=0,
                        sends=1,
                        **values,
                    )
                )
            else:
                connection.execute(
                    deliveries.update()
                    .where(d.partner_id == partner.id, d.week == week.label, d.address == address)
                    .values(sends=row.sends + (1 if resend else 0), **values)
                )
    return todo, skipped


def send_digest(
    engine: Engine,
    settings: Settings,
    config: PartnersConfig,
    partner_id: str,
    week: Week,
    *,
    resend: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Outcome]:
    """Send the partner's digest for ``week`` to every address in its ``digest.to``.

    Raises :class:`DigestNotSent` (after recording everything) when an address failed.
    """
    partner = config.partners.get(partner_id)
    if partner is None:
        raise UsageError(
            f"no partner {partner_id!r} in {config.path}",
            hint="partners are: " + ", ".join(sorted(config.partners)),
        )
    if partner.digest is None or not partner.digest.to:
        raise UsageError(
            f"partner {partner_id!r} has no digest addresses",
            hint=f"add 'digest: {{to: [...]}}' to it in {config.path}",
        )
    parse_smtp_url(settings.smtp_url)  # a configuration mistake stops here, before any record
    domain = _mail_domain(settings.mail_from)
    todo, outcomes = _prepare(engine, partner, week, partner.digest.to, resend, domain)
    if todo:
        _deliver(engine, settings, config, partner, week, todo, outcomes, sleep)
    failed = [o for o in outcomes if o.status in ("failed", "uncertain")]
    if failed:
        raise DigestNotSent(
            f"the {week.label} digest for {partner_id} did not reach "
            + ", ".join(f"{o.address} ({o.status}: {o.detail})" for o in failed),
            hint="a later run retries the failed addresses; 'uncertain' ones need --resend",
            outcomes=outcomes,
        )
    return outcomes


def _deliver(
    engine: Engine,
    settings: Settings,
    config: PartnersConfig,
    partner: Partner,
    week: Week,
    todo: dict[str, str],
    outcomes: list[Outcome],
    sleep: Callable[[float], None],
) -> None:
    """Hand the message to the server for each address in ``todo``, retrying with backoff."""
    assert partner.digest is not None
    partner_id = partner.id
    digest = build_digest(engine, config, partner_id, week)
    reply_to = settings.reply_to or config.producer.contact
    sender = parseaddr(settings.mail_from)[1]
    payloads: dict[str, bytes] = {}
    for message_id in set(todo.values()):
        composed = compose(
            digest,
            mail_from=settings.mail_from,
            reply_to=reply_to,
            to=list(partner.digest.to),
            message_id=message_id,
            max_bytes=settings.digest_max_bytes,
        )
        if composed.rows_left_out:
            keep_complete_csvs(settings, digest)
        payloads[message_id] = composed.message.as_bytes()
    remaining = dict(todo)
    last_error: dict[str, str] = {}
    for attempt in range(1, settings.smtp_retries + 1):
        try:
            with smtp_session(settings) as session:
                for address, message_id in list(remaining.items()):
                    record = _Recorder(engine, partner_id, week, address)
                    try:
                        outcome = _send_one(session, sender, payloads[message_id], record)
                    except SmtpTemporaryError as error:
                        last_error[address] = str(error)
                        continue
                    outcomes.append(Outcome(address, outcome[0], message_id, outcome[1]))
                    del remaining[address]
        except SmtpError as error:  # could not connect, greet or log in: nothing was sent
            for address in remaining:
                last_error[address] = str(error)
                _Recorder(engine, partner_id, week, address)(status="failed", last_error=str(error))
        if not remaining:
            break
        if attempt < settings.smtp_retries:
            delay = min(settings.smtp_backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            log.warning(
                "digest %s for %s: attempt %d of %d failed (%s); next in %.1f s",
                week.label,
                partner_id,
                attempt,
                settings.smtp_retries,
                "; ".join(sorted(set(last_error.values()))),
                delay,
            )
            sleep(delay)
    for address, message_id in remaining.items():
        outcomes.append(
            Outcome(address, "failed", message_id, last_error.get(address, "not accepted"))
        )


class _Recorder:
    """Updates one address's delivery row, each change in its own committed transaction."""

    def __init__(self, engine: Engine, partner_id: str, week: Week, address: str) -> None:
        self.engine, self.partner_id, self.week, self.address = engine, partner_id, week, address

    def __call__(self, **values: object) -> None:
        _update(self.engine, self.partner_id, self.week, self.address, **values)


def _send_one(session: SmtpSession, sender: str, data: bytes, record: _Recorder) -> tuple[str, str]:
    """(status, detail) once the outcome is known; raises SmtpTemporaryError to retry later."""
    d = deliveries.c
    record(attempts=d.attempts + 1)
    try:
        reply = session.send(
            sender,
            record.address,
            data,
            before_data=lambda: record(status="sending", intent_at=_now()),
        )
    except SmtpTemporaryError as error:
        record(status="failed", last_error=str(error))
        raise
    except SmtpRefusedError as error:
        record(status="failed", last_error=str(error))
        return "failed", str(error)
    except SmtpUncertainError as error:
        record(last_error=str(error))  # stays "sending": it may have been accepted
        return "uncertain", str(error)
    record(status="sent", accepted_at=_now(), server_reply=reply, last_error=None)
    return "sent", reply


def weekly_digest(
    engine: Engine,
    settings: Settings,
    config: PartnersConfig,
    partner_id: str,
    now: dt.datetime | None = None,
) -> list[str]:
    """What the worker's weekly job for a partner runs: the last complete week's digest, sent
    once (or written to the outbox when no SMTP server is configured). Lines for the log."""
    week = last_complete_week(now)
    if not settings.smtp_url:
        return [f"written to {write_to_outbox(engine, settings, config, partner_id, week)}"]
    return [outcome.line() for outcome in send_digest(engine, settings, config, partner_id, week)]


def retry_unsent(engine: Engine, settings: Settings, config: PartnersConfig) -> list[str]:
    """Send again every digest some address did not get (down or refusing server earlier):
    what the worker runs between the weekly runs, so a digest goes out when the server is back.
    Addresses left uncertain are not touched: they need a person and ``--resend``."""
    d = deliveries.c
    with engine.connect() as connection:
        due = connection.execute(
            sa.select(d.partner_id, d.week)
            .where(d.status.in_(("pending", "failed")))
            .group_by(d.partner_id, d.week)
            .order_by(d.week, d.partner_id)
        ).all()
    lines: list[str] = []
    for partner_id, week_label in due:
        if partner_id not in config.partners:
            continue  # removed from partners.yaml: nothing more goes to it
        try:
            outcomes = send_digest(engine, settings, config, partner_id, parse_week(week_label))
        except DigestNotSent as error:
            lines += [outcome.line() for outcome in error.outcomes]
            continue
        except SpampotsError as error:  # e.g. a configuration mistake: the others still go
            lines.append(f"failed: {partner_id} {week_label}: {error}")
            continue
        lines += [outcome.line() for outcome in outcomes]
    return lines


def write_to_outbox(
    engine: Engine, settings: Settings, config: PartnersConfig, partner_id: str, week: Week
) -> Path:
    """Build the digest and write it as ``<report id>.eml`` in the outbox; nothing is sent."""
    digest = build_digest(engine, config, partner_id, week)
    partner = digest.partner
    composed = compose(
        digest,
        mail_from=settings.mail_from,
        reply_to=settings.reply_to or config.producer.contact,
        to=list(partner.digest.to) if partner.digest else [],
        message_id=new_message_id(digest.report_id, _mail_domain(settings.mail_from)),
        max_bytes=settings.digest_max_bytes,
    )
    if composed.rows_left_out:
        keep_complete_csvs(settings, digest)
    path = Path(settings.outbox_dir) / f"{digest.report_id}.eml"
    _write_atomically(path, composed.message.as_bytes())
    return path


def keep_complete_csvs(settings: Settings, digest: Digest) -> Path:
    """The complete CSVs of a digest whose message left rows out, in ``outbox/<report id>/``:
    what staff send a partner that asks for them (the message says so)."""
    folder = Path(settings.outbox_dir) / digest.report_id
    write_csvs(digest, folder)
    log.info("digest %s left CSV rows out; the complete CSVs are in %s", digest.report_id, folder)
    return folder


def write_csvs(digest: Digest, folder: Path) -> list[Path]:
    """Every CSV of the digest, complete, into ``folder`` (spampots digest --csv-dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in csv_attachments(digest).items():
        paths.append(folder / name)
        _write_atomically(folder / name, content)
    return paths


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    temporary.replace(path)
