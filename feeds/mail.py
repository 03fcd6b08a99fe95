"""The digest as an e-mail: plain text and HTML with an inline chart, and CSV attachments.

Structure, so that every mail client shows it::

    multipart/mixed
      multipart/alternative
        text/plain
        multipart/related
          text/html              (the chart as <img src="cid:...">)
          image/png              (Content-Disposition: inline)
      text/csv  x4               (Content-Disposition: attachment; filename=...)
      (or one application/zip of the four, when they would make the message too large:
      see :mod:`feeds.attachments`)
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import html
import secrets
import textwrap
from dataclasses import dataclass
from email.message import EmailMessage

from feeds.attachments import (
    SOURCE_CSV_HEADER,
    URL_CSV_HEADER,
    CsvTable,
    FittedAttachments,
    fit_attachments,
)
from feeds.chart import messages_per_day_png
from feeds.digest import Digest, DirectionFigures, Ranked, Totals

TLP_MEANING = {
    "clear": "TLP:CLEAR - recipients may share this without restriction.",
    "green": "TLP:GREEN - recipients may share this within their community, not publicly.",
    "amber": "TLP:AMBER - recipients may share this on a need-to-know basis within their "
    "organisation and with its clients.",
    "amber+strict": "TLP:AMBER+STRICT - recipients may share this on a need-to-know basis "
    "within their organisation only.",
    "red": "TLP:RED - for the named recipients only; do not share.",
}
FIGURES = (
    ("messages", "Messages"),
    ("recipients", "Potential recipients"),
    ("unique_ips", "Unique source IPs"),
    ("unique_asns", "Source ASNs"),
    ("unique_urls", "URLs"),
)
SLUGS = {"originating": "from-your-networks", "returning": "to-your-networks"}
MEANING = {
    "originating": "Spam the SpamPots sensors caught from addresses in your networks (your "
    "economy by the enrichment, plus the ASNs and prefixes listed for you). Ports and requests: "
    "the connections from those addresses.",
    "returning": "Spam aimed at your networks: at mail servers in them or under your domains, or "
    "at recipients under your domains. Sources are the spammers' addresses. Ports and requests: "
    "the connections that asked for a host under your domains.",
}


def subject(digest: Digest) -> str:
    return (
        f"[TLP:{digest.partner.tlp.upper()}] SpamPots weekly digest for "
        f"{digest.partner.name}, {digest.week.label} ({digest.report_id})"
    )


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def change(now: int, before: int) -> str:
    if before == 0:
        return "new" if now else "-"
    return f"{(now - before) / before:+.1%}"


def csv_tables(digest: Digest) -> list[CsvTable]:
    """Per direction, one CSV row per source IP and one per URL, most messages first."""
    stamp = iso(digest.week.start)
    tables: list[CsvTable] = []
    base = f"{digest.partner.id}-{digest.week.label}"
    for direction, figures in digest.directions.items():
        slug = SLUGS[direction]
        tables.append(CsvTable(f"{base}-{slug}-ips.csv", SOURCE_CSV_HEADER, stamp, figures.sources))
        tables.append(CsvTable(f"{base}-{slug}-urls.csv", URL_CSV_HEADER, stamp, figures.urls))
    return tables


def csv_attachments(digest: Digest) -> dict[str, bytes]:
    """File name -> the complete CSV (every row), as staff keep it or ask for it."""
    return {table.name: table.render() for table in csv_tables(digest)}


def zip_name(digest: Digest) -> str:
    return f"{digest.partner.id}-{digest.week.label}-csv.zip"


def megabytes(size: int) -> str:
    return f"{size / 1e6:g} MB"


def attachment_note(digest: Digest, fitted: FittedAttachments | None) -> list[str]:
    """What is attached, in paragraphs: zipped or not, and the rows left out to fit."""
    about = (
        "per direction, one CSV row per source IP and one per URL, most messages first; "
        "times in UTC, 'timestamp' is the start of the week."
    )
    if fitted is None or fitted.zip_name is None:
        return [f"Attached: {about}"]
    paragraphs = [
        f"Attached, zipped as {fitted.zip_name} to keep this message under "
        f"{megabytes(fitted.max_bytes)}: {about}"
    ]
    if fitted.left_out:
        counts = "; ".join(
            f"{cut.name}: {cut.rows_left_out:,} of {cut.total:,} rows left out"
            for cut in fitted.left_out
        )
        paragraphs.append(
            f"Rows left out: even zipped, the complete CSVs would make this message larger than "
            f"{megabytes(fitted.max_bytes)}, so they keep only the rows with the most messages "
            f"({counts}). The complete CSVs are kept by {digest.producer_name}: reply to this "
            f"message or write to {digest.producer_contact} quoting {digest.report_id} to get "
            "them."
        )
    return paragraphs


def chart_png(digest: Digest) -> bytes:
    return messages_per_day_png(
        digest.week.days,
        {direction: figures.per_day for direction, figures in digest.directions.items()},
    )


def _poll_lines(digest: Digest) -> list[str]:
    lines = []
    for poll in digest.polls:
        when = iso(poll.last_poll) if poll.last_poll else "never"
        lines.append(f"{poll.collection} ({poll.collection_id}): last polled {when}")
    return lines


def poll_warning(digest: Digest) -> str:
    """Empty when the partner read every collection since the week began."""
    if not digest.polls:
        return ""
    if digest.partner.taxii is None:
        return f"WARNING: {digest.partner.name} has no TAXII account: nobody polls its feeds."
    missing = digest.not_polled_this_week
    if not missing:
        return ""
    names = ", ".join(poll.collection for poll in missing)
    if len(missing) == len(digest.polls) and not any(p.last_poll for p in missing):
        return (
            f"WARNING: {digest.partner.name} has never polled its TAXII collections ({names}): "
            "the data below was published but not collected."
        )
    return (
        f"WARNING: {digest.partner.name} did not poll {names} during {digest.week.label} "
        "or since: data published there has not been collected."
    )


def _ranked_lines(title: str, items: list[Ranked], unit: str) -> list[str]:
    if not items:
        return [f"{title}: none"]
    lines = [f"{title}:"]
    for item in items:
        label = f"  {item.label}" if item.label else ""
        lines.append(f"  {item.key:<40} {item.count:>12,} {unit}{label}")
    return lines


def _totals_rows(totals: Totals, previous: Totals) -> list[tuple[str, int, int, str]]:
    return [
        (
            label,
            getattr(totals, name),
            getattr(previous, name),
            change(getattr(totals, name), getattr(previous, name)),
        )
        for name, label in FIGURES
    ]


def _request_rows(figures: DirectionFigures) -> list[tuple[str, dict[str, int]]]:
    return sorted(figures.requests.items())


def render_text(digest: Digest, fitted: FittedAttachments | None = None) -> str:
    p = digest.partner
    lines = [
        f"SpamPots weekly digest for {p.name} ({p.economy})",
        f"Week {digest.week.label}: {iso(digest.week.start)} to {iso(digest.week.end)} (UTC)",
        f"Report id: {digest.report_id}",
        TLP_MEANING[p.tlp],
        "",
    ]
    warning = poll_warning(digest)
    if warning:
        lines += [warning, ""]
    if not digest.has_data:
        lines += [
            f"No spam from or to the networks of {p.name} reached the SpamPots sensors "
            f"during {digest.week.label}.",
            "",
        ]
    for figures in digest.directions.values():
        lines += [
            f"== {figures.title.capitalize()} ==",
            *textwrap.wrap(MEANING[figures.direction], 96),
            "",
        ]
        lines.append(f"{'':<24}{'this week':>14}{'week before':>14}{'change':>10}")
        for label, now, before, delta in _totals_rows(figures.totals, figures.previous):
            lines.append(f"{label:<24}{now:>14,}{before:>14,}{delta:>10}")
        lines.append("")
        lines.append(
            "Messages per day: "
            + ", ".join(
                f"{day[5:]} {count:,}"
                for day, count in zip(digest.week.days, figures.per_day, strict=True)
            )
        )
        lines += _ranked_lines("Top source ASNs", figures.top_asns, "messages")
        lines += _ranked_lines("Top source IPs", figures.top_ips, "messages")
        lines += _ranked_lines("Top URL domains", figures.top_url_domains, "messages")
        lines += _ranked_lines("Ports abused", figures.ports, "connections")
        if figures.requests:
            lines.append("Requests by type:")
            for module, kinds in _request_rows(figures):
                lines.append(
                    f"  {module:<6} connect to 25/TCP {kinds['connect_25']:,}, "
                    f"connect to other ports {kinds['connect_other']:,}, get {kinds['get']:,}, "
                    f"errors {kinds['errors']:,}, total {kinds['total']:,}"
                )
        else:
            lines.append("Requests by type: none")
        lines.append("")
    lines.append("Batches published to you this week:")
    if digest.batches:
        for batch in digest.batches:
            lines.append(
                f"  {iso(batch.published_at)} {batch.collection} batch {batch.batch_id}: "
                f"{batch.objects:,} objects, signed with key {batch.kid}"
            )
    else:
        lines.append("  none")
    lines.append("Your TAXII collections:")
    lines += [f"  {line}" for line in _poll_lines(digest)] or ["  none"]
    lines.append("")
    for paragraph in attachment_note(digest, fitted):
        lines += [*textwrap.wrap(paragraph, 96, break_on_hyphens=False), ""]
    lines += [
        f"Questions: reply to this message or write to {digest.producer_contact} "
        f"quoting {digest.report_id}.",
        f"-- {digest.producer_name}",
    ]
    return "\n".join(lines) + "\n"


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table border="1" cellpadding="4" cellspacing="0"><tr>{cells}</tr>{body}</table>'


def render_html(digest: Digest, chart_cid: str, fitted: FittedAttachments | None = None) -> str:
    p = digest.partner
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(subject(digest))}</title></head><body style='font-family:sans-serif'>",
        f"<h1>SpamPots weekly digest for {e(p.name)} ({e(p.economy)})</h1>",
        f"<p>Week <b>{e(digest.week.label)}</b>: {e(iso(digest.week.start))} to "
        f"{e(iso(digest.week.end))} (UTC)<br>Report id: <b>{e(digest.report_id)}</b><br>"
        f"<b>{e(TLP_MEANING[p.tlp])}</b></p>",
    ]
    warning = poll_warning(digest)
    if warning:
        parts.append(f"<p style='color:#b00;font-weight:bold'>{e(warning)}</p>")
    if not digest.has_data:
        parts.append(
            f"<p><b>No spam from or to the networks of {e(p.name)} reached the SpamPots "
            f"sensors during {e(digest.week.label)}.</b></p>"
        )
    parts.append(
        f'<p><img src="cid:{e(chart_cid)}" alt="Messages per day" width="640" height="280"></p>'
    )
    for figures in digest.directions.values():
        parts.append(f"<h2>{e(figures.title.capitalize())}</h2>")
        parts.append(f"<p>{e(MEANING[figures.direction])}</p>")
        parts.append(
            _table(
                ["", "this week", "week before", "change"],
                [
                    [label, f"{now:,}", f"{before:,}", delta]
                    for label, now, before, delta in _totals_rows(figures.totals, figures.previous)
                ],
            )
        )
        for title, items in (
            ("Top source ASNs", figures.top_asns),
            ("Top source IPs", figures.top_ips),
            ("Top URL domains", figures.top_url_domains),
        ):
            parts.append(f"<h3>{e(title)}</h3>")
            parts.append(
                _table(["", "", "messages"], [[i.key, i.label, f"{i.count:,}"] for i in items])
                if items
                else "<p>none</p>"
            )
        parts.append("<h3>Ports abused</h3>")
        parts.append(
            _table(["port", "connections"], [[i.key, f"{i.count:,}"] for i in figures.ports])
            if figures.ports
            else "<p>none</p>"
        )
        parts.append("<h3>Requests by type</h3>")
        parts.append(
            _table(
                ["module", "connect to 25/TCP", "connect to other ports", "get", "errors", "total"],
                [
                    [module]
                    + [
                        f"{kinds[k]:,}"
                        for k in ("connect_25", "connect_other", "get", "errors", "total")
                    ]
                    for module, kinds in _request_rows(figures)
                ],
            )
            if figures.requests
            else "<p>none</p>"
        )
    parts.append("<h2>Batches published to you this week</h2>")
    parts.append(
        _table(
            ["published", "collection", "batch", "objects", "signing key"],
            [
                [iso(b.published_at), b.collection, b.batch_id, f"{b.objects:,}", b.kid]
                for b in digest.batches
            ],
        )
        if digest.batches
        else "<p>none</p>"
    )
    parts.append("<h2>Your TAXII collections</h2>")
    parts.append(
        _table(
            ["collection", "id", "last polled"],
            [
                [
                    poll.collection,
                    poll.collection_id,
                    iso(poll.last_poll) if poll.last_poll else "never",
                ]
                for poll in digest.polls
            ],
        )
    )
    parts += [f"<p>{e(paragraph)}</p>" for paragraph in attachment_note(digest, fitted)]
    parts.append(
        f"<p>Questions: reply to this message or write to {e(digest.producer_contact)} "
        f"quoting {e(digest.report_id)}.</p><p>-- {e(digest.producer_name)}</p></body></html>"
    )
    return "".join(parts)


@dataclass(frozen=True)
class Composed:
    message: EmailMessage
    attachments: FittedAttachments

    @property
    def rows_left_out(self) -> bool:
        """Some CSV rows are not in the message: keep the complete CSVs (see csv_attachments)."""
        return bool(self.attachments.left_out)


# Room kept for the note on zipped or cut CSVs, added to both parts after the sizes are known.
NOTE_ROOM = 4_000
DEFAULT_MAX_BYTES = 10_000_000


def compose(
    digest: Digest,
    *,
    mail_from: str,
    reply_to: str,
    to: list[str],
    message_id: str,
    date: dt.datetime | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Composed:
    """The digest as one message of at most ``max_bytes`` as sent (see feeds.attachments)."""
    headers = {
        "Subject": subject(digest),
        "From": mail_from,
        "Reply-To": reply_to,
        "To": ", ".join(to) if to else "undisclosed-recipients:;",
        "Date": email.utils.format_datetime(date or dt.datetime.now(dt.UTC)),
        "Message-ID": message_id,
        "X-SpamPots-Report-ID": digest.report_id,
        "X-SpamPots-TLP": digest.partner.tlp.upper(),
    }
    chart = chart_png(digest)
    bare = len(_without_attachments(digest, headers, chart, None).as_bytes())
    start = digest.week.start
    fitted = fit_attachments(
        csv_tables(digest),
        zip_name(digest),
        (start.year, start.month, start.day, 0, 0, 0),
        max_bytes - bare - NOTE_ROOM,
        max_bytes,
    )
    message = _without_attachments(digest, headers, chart, fitted)
    for attachment in fitted.attachments:
        message.add_attachment(
            attachment.content,
            maintype=attachment.maintype,
            subtype=attachment.subtype,
            filename=attachment.filename,
        )
    return Composed(message, fitted)


def _without_attachments(
    digest: Digest, headers: dict[str, str], chart: bytes, fitted: FittedAttachments | None
) -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    for name, value in headers.items():
        message[name] = value
    chart_cid = f"chart.{digest.report_id}@spampots"
    message.set_content(render_text(digest, fitted), cte="quoted-printable")
    message.add_alternative(
        render_html(digest, chart_cid, fitted), subtype="html", cte="quoted-printable"
    )
    html_part = next(part for part in message.iter_parts() if part.get_content_subtype() == "html")
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(
        chart,
        maintype="image",
        subtype="png",
        cid=f"<{chart_cid}>",
        disposition="inline",
        filename="messages-per-day.png",
    )
    return message


def new_message_id(report_id: str, domain: str) -> str:
    """Unique per message, short enough that the header is never folded."""
    return f"<{report_id}.{secrets.token_hex(6)}@{domain}>"
