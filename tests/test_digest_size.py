"""A digest too large for mail servers, as a real SMTP server (aiosmtpd) receives it: CSVs
zipped when plain ones would not fit SPAMPOTS_DIGEST_MAX_BYTES, and only the rows with the most
messages when even the zip would not, with a note saying what was left out and the complete
CSVs kept in the outbox."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from digest_data import Capture, Connection, Dataset, Expected, expected, store_captures
from smtp_sink import SmtpSink

from feeds.attachments import attached_size
from feeds.digest import build_digest, parse_week
from feeds.home import engine_for
from feeds.mail import csv_attachments
from feeds.partners import load_partners
from feeds.settings import Settings

WEEK = parse_week("2026-W47")
NAME = f"twcert-{WEEK.label}"
SIDES = {"from-your-networks": "originating", "to-your-networks": "returning"}
CSV_NAMES = {f"{NAME}-{side}-{kind}.csv" for side in SIDES for kind in ("ips", "urls")}
RunCli = Callable[..., tuple[int, str, str]]


def _many_sources(count: int) -> Dataset:
    """``count`` messages from TW addresses, most of them distinct, through the week."""
    rng = random.Random(5)
    dataset = Dataset()
    for number in range(count):
        ts = WEEK.start + dt.timedelta(seconds=rng.randrange(7 * 86400 - 1), milliseconds=7)
        host = rng.randrange(count * 3 // 4)  # some addresses send more than once
        asn = 60000 + rng.randrange(400)
        src = (f"10.{host >> 16}.{(host >> 8) & 255}.{host & 255}", "TW", asn, f"AS-TW-{asn}")
        target = ("mx.example.tw", "100.70.0.1", "TW", 3462)
        port, service = rng.choice([(1080, "socks5"), (8080, "http-connect"), (3128, "http-get")])
        session = Connection(number + 1, ts, src, port, service, target[0], 25, "connect")
        recipients = [f"user{i}@example.tw" for i in range(rng.randint(1, 9))]
        urls = sorted(rng.sample(range(1, 5), rng.randint(0, 2)))
        dataset.connections.append(session)
        dataset.captures.append(Capture(number + 1, ts, src, target, recipients, urls, number + 1))
    dataset.next_message = dataset.next_session = count + 1
    return dataset


@dataclass(frozen=True)
class BigWeek:
    settings: Settings
    want: dict[str, Expected]  # per side
    complete: dict[str, bytes]  # the four CSVs with every row

    @property
    def plain_size(self) -> int:
        """What the complete CSVs add to a message as plain attachments."""
        return sum(attached_size(name, len(content)) for name, content in self.complete.items())


@pytest.fixture
def big_week(initialised: Settings) -> BigWeek:
    """A week whose twcert CSVs run to about 1 MB."""
    engine = engine_for(initialised.database_url)
    dataset = _many_sources(12_000)
    store_captures(engine, dataset)
    config = load_partners(initialised.partners)
    twcert = config.partners["twcert"]
    want = {side: expected(dataset, twcert, d, WEEK.start) for side, d in SIDES.items()}
    complete = csv_attachments(build_digest(engine, config, "twcert", WEEK))
    _check_complete(complete, want)
    return BigWeek(initialised, want, complete)


def _send(run_cli: RunCli, sink: SmtpSink, max_bytes: int, *extra: str) -> EmailMessage:
    env = {
        "SPAMPOTS_SMTP_URL": sink.url,
        "SPAMPOTS_SMTP_BACKOFF": "0.05",
        "SPAMPOTS_DIGEST_MAX_BYTES": str(max_bytes),
    }
    code, out, err = run_cli(
        "digest", "--partner", "twcert", "--week", WEEK.label, "--send", *extra, env=env
    )
    assert code == 0, err
    assert "sent: twcert@example.org" in out
    (arrived,) = sink.received
    assert len(arrived.data) <= max_bytes
    return arrived.parsed()


def _csv_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode("utf-8"))))


def _bodies(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


def _plain_csvs(message: EmailMessage) -> dict[str, bytes]:
    found = {}
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        assert part["Content-Disposition"].startswith("attachment;")
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        found[part.get_filename() or ""] = content
    return found


def _check_complete(files: dict[str, bytes], want: dict[str, Expected]) -> None:
    assert set(files) == CSV_NAMES
    for side, figures in want.items():
        ips = _csv_rows(files[f"{NAME}-{side}-ips.csv"])
        assert {row["ip"]: int(row["messages"]) for row in ips} == {
            ip: entry["messages"] for ip, entry in figures.ips.items()
        }
        urls = _csv_rows(files[f"{NAME}-{side}-urls.csv"])
        assert {row["url"]: int(row["messages"]) for row in urls} == figures.urls


def _zip_of(message: EmailMessage) -> dict[str, bytes]:
    (part,) = list(message.iter_attachments())
    assert isinstance(part, EmailMessage)
    assert part.get_content_type() == "application/zip"
    assert part["Content-Disposition"].startswith("attachment;")
    assert part.get_filename() == f"{NAME}-csv.zip"
    content = part.get_content()
    assert isinstance(content, bytes)
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_csvs_that_fit_go_plain(big_week: BigWeek, run_cli: RunCli, smtp_sink: SmtpSink) -> None:
    message = _send(run_cli, smtp_sink, big_week.plain_size + 200_000)
    files = _plain_csvs(message)
    assert all(p.get_content_type() == "text/csv" for p in message.iter_attachments())
    assert files == big_week.complete
    text, html = _bodies(message)
    assert "zipped" not in text and "zipped" not in html and "left out" not in text


def test_csvs_too_large_go_zipped_with_every_row(
    big_week: BigWeek, run_cli: RunCli, smtp_sink: SmtpSink
) -> None:
    assert big_week.plain_size > 400_000  # so the limit below is a real one
    message = _send(run_cli, smtp_sink, big_week.plain_size)  # the rest of the message too
    assert _zip_of(message) == big_week.complete
    text, html = _bodies(message)
    for body in (text, html):
        assert f"zipped as {NAME}-csv.zip" in " ".join(body.split())
        assert "left out" not in body


def test_csvs_too_large_even_zipped_keep_the_busiest_rows_and_say_so(
    big_week: BigWeek, run_cli: RunCli, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, content in big_week.complete.items():
            archive.writestr(name, content)
    limit = 200_000
    assert len(whole.getvalue()) > limit  # the premise: even zipped they would not fit
    message = _send(run_cli, smtp_sink, limit, "--csv-dir", str(tmp_path / "asked"))
    files = _zip_of(message)
    assert set(files) == CSV_NAMES
    text, html = _bodies(message)
    text, html = " ".join(text.split()), " ".join(html.split())
    left_out = 0
    for side, figures in big_week.want.items():
        ips = _csv_rows(files[f"{NAME}-{side}-ips.csv"])
        busiest = sorted((e["messages"] for e in figures.ips.values()), reverse=True)
        # The rows kept are those with the most messages, in that order.
        assert [int(row["messages"]) for row in ips] == busiest[: len(ips)]
        assert all(figures.ips[row["ip"]]["messages"] == int(row["messages"]) for row in ips)
        if len(ips) < len(figures.ips):
            note = (
                f"{NAME}-{side}-ips.csv: {len(figures.ips) - len(ips):,} of "
                f"{len(figures.ips):,} rows left out"
            )
            assert note in text and note in html
            left_out += len(figures.ips) - len(ips)
    assert left_out > 0
    for body in (text, html):
        assert "complete CSVs are kept by CERT.br" in body
        assert "quoting SPAMPOTS-TWCERT-2026-W47" in body
    # Staff have the complete CSVs, next to where the outbox keeps digests, and where asked.
    for folder in (big_week.settings.outbox_dir / "SPAMPOTS-TWCERT-2026-W47", tmp_path / "asked"):
        assert {path.name: path.read_bytes() for path in folder.iterdir()} == big_week.complete
