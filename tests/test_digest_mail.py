"""The digest as it arrives at a real SMTP server (aiosmtpd on loopback): parsed, checked
against the store, sent exactly once, retried while the server refuses."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import email
import email.policy
import io
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
import sqlalchemy as sa
from digest_data import Dataset, expected, make_captures, store_captures
from loopback import free_port
from PIL import Image
from smtp_sink import SmtpSink, start_smtp_sink
from sqlalchemy.engine import Engine

from feeds import deliveries
from feeds.deliveries import DigestNotSent, retry_unsent, send_digest, weekly_digest
from feeds.digest import parse_week
from feeds.home import engine_for
from feeds.partners import PartnersConfig, load_partners
from feeds.settings import Settings, load_settings

WEEK = parse_week("2026-W47")
RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def captured(initialised: Settings) -> tuple[Engine, PartnersConfig, Dataset]:
    engine = engine_for(initialised.database_url)
    dataset = Dataset()
    make_captures(
        dataset, 7, WEEK.start - dt.timedelta(days=7), WEEK.end + dt.timedelta(hours=1), 300
    )
    store_captures(engine, dataset)
    return engine, load_partners(initialised.partners), dataset


def _mail_env(sink: SmtpSink) -> dict[str, str]:
    return {
        "SPAMPOTS_SMTP_URL": sink.url,
        "SPAMPOTS_SMTP_BACKOFF": "0.05",
        "SPAMPOTS_MAIL_FROM": "CERT.br SpamPots <feeds@cert.example>",
        "SPAMPOTS_REPLY_TO": "cert@example.org",
    }


def _rows(part: EmailMessage) -> list[dict[str, str]]:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _deliveries(engine: Engine) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(deliveries.deliveries)))


def _structure(message: EmailMessage) -> tuple[str, EmailMessage, EmailMessage, EmailMessage]:
    """(text, html part, png part, ...) after checking the MIME tree."""
    assert message.get_content_type() == "multipart/mixed"
    alternative = next(message.iter_parts())
    assert isinstance(alternative, EmailMessage)
    assert alternative.get_content_type() == "multipart/alternative"
    plain, related = list(alternative.iter_parts())
    assert isinstance(plain, EmailMessage) and isinstance(related, EmailMessage)
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, png = list(related.iter_parts())
    assert isinstance(html, EmailMessage) and isinstance(png, EmailMessage)
    assert html.get_content_type() == "text/html"
    assert png.get_content_type() == "image/png"
    return plain.get_content(), html, png, alternative


def test_digest_arrives_with_parts_chart_and_csv_equal_to_the_store(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli, smtp_sink: SmtpSink
) -> None:
    engine, config, dataset = captured
    code, out, err = run_cli(
        "digest", "--partner", "twcert", "--week", WEEK.label, "--send", env=_mail_env(smtp_sink)
    )
    assert code == 0, err
    assert out.startswith("sent: twcert@example.org <")
    assert len(smtp_sink.received) == 1
    arrived = smtp_sink.received[0]
    assert arrived.rcpt_tos == ["twcert@example.org"]
    assert arrived.mail_from == "feeds@cert.example"
    message = arrived.parsed()
    assert "TWCERT/CC" in message["Subject"]
    assert WEEK.label in message["Subject"]
    assert "TLP:AMBER" in message["Subject"]
    assert message["X-SpamPots-Report-ID"] == "SPAMPOTS-TWCERT-2026-W47"
    assert message["Reply-To"] == "cert@example.org"
    assert message["To"] == "twcert@example.org"
    text, html, png, _ = _structure(message)

    # The chart: a real PNG, inline, referenced by the HTML through its Content-ID.
    cid = png["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html.get_content()
    assert "write to cert@example.org quoting SPAMPOTS-TWCERT-2026-W47" in html.get_content()
    assert "{" not in html.get_content()  # nothing left unformatted
    assert png.get_content_disposition() == "inline"
    image = Image.open(io.BytesIO(png.get_content()))
    assert image.format == "PNG" and image.size == (640, 280)

    # Four CSV attachments, shown as attachments by every client.
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attachments) == {
        f"twcert-{WEEK.label}-{side}-{kind}.csv"
        for side in ("from-your-networks", "to-your-networks")
        for kind in ("ips", "urls")
    }
    for part in attachments.values():
        assert part.get_content_type() == "text/csv"
        assert part["Content-Disposition"].startswith("attachment;")

    twcert = config.partners["twcert"]
    for side, direction in (
        ("from-your-networks", "originating"),
        ("to-your-networks", "returning"),
    ):
        want = expected(dataset, twcert, direction, WEEK.start)
        ips = _rows(attachments[f"twcert-{WEEK.label}-{side}-ips.csv"])
        assert {row["ip"] for row in ips} == set(want.ips)
        for row in ips:
            entry = want.ips[row["ip"]]
            assert row["timestamp"] == "2026-11-16T00:00:00Z"
            assert int(row["messages"]) == entry["messages"]
            assert int(row["recipients"]) == entry["recipients"]
            assert row["asn"] == (str(entry["asn"]) if entry["asn"] is not None else "")
            assert row["cc"] == (entry["cc"] or "")
            assert row["first_seen"] == entry["first"].strftime("%Y-%m-%dT%H:%M:%SZ")
            assert row["last_seen"] == entry["last"].strftime("%Y-%m-%dT%H:%M:%SZ")
            assert row["ports"] == " ".join(str(p) for p in entry["ports"])
        url_rows = _rows(attachments[f"twcert-{WEEK.label}-{side}-urls.csv"])
        assert {row["url"]: int(row["messages"]) for row in url_rows} == want.urls
        # The text's figures are the store's.
        section = text.split(f"== {side.replace('-', ' ').capitalize()} ==")[1]
        assert f"Messages{want.messages:>30,}" in section
        assert f"Potential recipients{want.recipients:>18,}" in section
        assert f"Unique source IPs{len(want.ips):>21,}" in section

    (row,) = _deliveries(engine)
    assert row.status == "sent" and row.message_id == message["Message-ID"].strip()
    assert row.server_reply.startswith("250")


def test_second_run_sends_nothing_and_resend_forces(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli, smtp_sink: SmtpSink
) -> None:
    env = _mail_env(smtp_sink)
    argv = ("digest", "--partner", "jpcert", "--week", WEEK.label)
    assert run_cli(*argv, "--send", env=env)[0] == 0
    code, out, _ = run_cli(*argv, "--send", env=env)
    assert code == 0 and out.startswith("already-sent: jpcert@example.org")
    assert len(smtp_sink.received) == 1
    code, out, _ = run_cli(*argv, "--resend", env=env)
    assert code == 0 and out.startswith("sent: jpcert@example.org")
    first, second = (r.parsed() for r in smtp_sink.received)
    assert first["Message-ID"] != second["Message-ID"]
    assert first["X-SpamPots-Report-ID"] == second["X-SpamPots-Report-ID"]
    (row,) = _deliveries(captured[0])
    assert row.sends == 2 and row.message_id == second["Message-ID"].strip()


def test_refusing_server_is_retried_with_backoff_until_it_accepts(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli, smtp_sink: SmtpSink
) -> None:
    smtp_sink.refuse_next(2, "451 4.3.0 Mailbox busy, try later")
    code, _, err = run_cli(
        "digest", "--partner", "twcert", "--week", WEEK.label, "--send", env=_mail_env(smtp_sink)
    )
    assert code == 0, err
    assert len(smtp_sink.received) == 1
    (row,) = _deliveries(captured[0])
    assert (row.status, row.attempts) == ("sent", 3)


def test_permanent_refusal_fails_and_a_later_run_sends(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli, smtp_sink: SmtpSink
) -> None:
    smtp_sink.refuse_next(1, "550 5.7.1 Message rejected")
    argv = ("digest", "--partner", "twcert", "--week", WEEK.label, "--send")
    code, out, err = run_cli(*argv, env=_mail_env(smtp_sink))
    assert code == 1
    assert "failed: twcert@example.org" in out and "550 5.7.1" in err
    assert smtp_sink.received == []
    assert _deliveries(captured[0])[0].status == "failed"
    code, out, _ = run_cli(*argv, env=_mail_env(smtp_sink))
    assert code == 0 and len(smtp_sink.received) == 1


def test_smtp_down_then_back(
    captured: tuple[Engine, PartnersConfig, Dataset], environ: dict[str, str], tmp_path: Path
) -> None:
    engine, config, _ = captured
    port = free_port()
    settings = load_settings(
        {**environ, "SPAMPOTS_SMTP_URL": f"smtp://127.0.0.1:{port}", "SPAMPOTS_SMTP_BACKOFF": "1"}
    )
    waits: list[float] = []
    with contextlib.ExitStack() as stack:
        started: list[SmtpSink] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:  # the server comes back after the second failure
                started.append(stack.enter_context(start_smtp_sink(port=port)))

        outcomes = send_digest(engine, settings, config, "twcert", WEEK, sleep=sleep)
        assert [o.status for o in outcomes] == ["sent"]
        assert len(started[0].received) == 1
    assert waits == [1.0, 2.0]


def test_crash_after_acceptance_does_not_send_again(
    captured: tuple[Engine, PartnersConfig, Dataset],
    run_cli: RunCli,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Crash(BaseException):
        pass

    real_update = deliveries._update

    def crash_when_recording_acceptance(*args: object, **values: object) -> None:
        if values.get("status") == "sent":
            raise Crash
        real_update(*args, **values)  # type: ignore[arg-type]

    env = _mail_env(smtp_sink)
    argv = ("digest", "--partner", "twcert", "--week", WEEK.label)
    monkeypatch.setattr(deliveries, "_update", crash_when_recording_acceptance)
    with pytest.raises(Crash):
        run_cli(*argv, "--send", env=env)
    monkeypatch.setattr(deliveries, "_update", real_update)
    assert len(smtp_sink.received) == 1
    (row,) = _deliveries(captured[0])
    assert row.status == "sending"
    code, out, err = run_cli(*argv, "--send", env=env)
    assert code == 1
    assert out.startswith(f"uncertain: twcert@example.org {row.message_id}")
    assert "--resend" in err
    assert len(smtp_sink.received) == 1
    assert run_cli(*argv, "--resend", env=env)[0] == 0
    assert len(smtp_sink.received) == 2


def test_without_send_the_digest_goes_to_the_outbox(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli, initialised: Settings
) -> None:
    code, out, err = run_cli("digest", "--partner", "certuy", "--week", WEEK.label)
    assert code == 0, err
    path = Path(out.strip())
    assert path.parent == initialised.outbox_dir
    assert path.name == f"SPAMPOTS-CERTUY-{WEEK.label}.eml"
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    text, html, _, _ = _structure(message)
    assert "No spam from or to the networks of CERTuy" in text
    assert "No spam from or to the networks of CERTuy" in html.get_content()
    assert _deliveries(captured[0]) == []


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_tls_and_login(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli, tmp_path: Path, mode: str
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret-for-the-test\n")
    with start_smtp_sink(tmp_path, mode=mode, login=("digest", "s3cret-for-the-test")) as sink:
        env = {
            **_mail_env(sink),
            "SPAMPOTS_SMTP_CA_FILE": sink.ca_file,
            "SPAMPOTS_SMTP_USERNAME": "digest",
            "SPAMPOTS_SMTP_PASSWORD_FILE": str(secret),
        }
        code, _, err = run_cli(
            "digest", "--partner", "twcert", "--week", WEEK.label, "--send", env=env
        )
        assert code == 0, err
        assert len(sink.received) == 1
        # A server whose certificate is not trusted gets nothing, and the error says why.
        env["SPAMPOTS_SMTP_CA_FILE"] = ""
        code, _, err = run_cli(
            "digest", "--partner", "jpcert", "--week", WEEK.label, "--send", env=env
        )
        assert code == 2 and "TLS with" in err and "SPAMPOTS_SMTP_CA_FILE" in err
        assert len(sink.received) == 1


def test_weekly_job_mails_the_last_complete_week_once(
    captured: tuple[Engine, PartnersConfig, Dataset],
    environ: dict[str, str],
    smtp_sink: SmtpSink,
) -> None:
    engine, config, _ = captured
    monday_morning = WEEK.end + dt.timedelta(hours=9)
    settings = load_settings({**environ, **_mail_env(smtp_sink)})
    assert weekly_digest(engine, settings, config, "twcert", monday_morning)[0].startswith("sent:")
    assert weekly_digest(engine, settings, config, "twcert", monday_morning)[0].startswith(
        "already-sent:"
    )
    (arrived,) = smtp_sink.received
    assert WEEK.label in arrived.parsed()["Subject"]
    # With no SMTP server configured the job writes the digest to the outbox instead.
    (line,) = weekly_digest(engine, load_settings(environ), config, "jpcert", monday_morning)
    written = Path(line.removeprefix("written to "))
    assert written.name == f"SPAMPOTS-JPCERT-{WEEK.label}.eml" and written.is_file()


def test_mistakes_on_the_command_line_are_one_line(
    captured: tuple[Engine, PartnersConfig, Dataset], run_cli: RunCli
) -> None:
    code, _, err = run_cli("digest", "--partner", "nope", "--week", WEEK.label)
    assert code == 2 and err.startswith("spampots: error: no partner 'nope'")
    assert "partners are: auscert, certpl" in err
    code, _, err = run_cli("digest", "--partner", "twcert", "--week", "2026-W60")
    assert code == 2 and "is not an ISO week" in err and "YYYY-Www" in err
    code, _, err = run_cli("digest", "--partner", "twcert", "--week", WEEK.label, "--send")
    assert code == 2 and "no SMTP server is configured" in err
    assert len(err.strip().splitlines()) == 1


def test_every_address_gets_it_once_even_when_one_is_refused(
    captured: tuple[Engine, PartnersConfig, Dataset],
    run_cli: RunCli,
    smtp_sink: SmtpSink,
    environ: dict[str, str],
    tmp_path: Path,
) -> None:
    partners = tmp_path / "two-addresses.yaml"
    shipped = Path(environ["SPAMPOTS_PARTNERS"]).read_text()
    partners.write_text(
        shipped.replace("to: [twcert@example.org]", "to: [twcert@example.org, soc@example.tw]")
    )
    env = {**_mail_env(smtp_sink), "SPAMPOTS_PARTNERS": str(partners)}
    argv = ("digest", "--partner", "twcert", "--week", WEEK.label, "--send")
    smtp_sink.refuse_next(1, "550 5.1.1 No such mailbox")  # the first address is refused
    code, out, _ = run_cli(*argv, env=env)
    assert code == 1
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["failed:", "twcert@example.org"],
        ["sent:", "soc@example.tw"],
    ]
    assert [r.rcpt_tos for r in smtp_sink.received] == [["soc@example.tw"]]
    code, out, _ = run_cli(*argv, env=env)
    assert code == 0
    assert sorted(line.split()[0] for line in out.splitlines()) == ["already-sent:", "sent:"]
    assert [r.rcpt_tos for r in smtp_sink.received] == [["soc@example.tw"], ["twcert@example.org"]]
    # Both got the same message: one Message-ID, both addresses in To:.
    first, second = (r.parsed() for r in smtp_sink.received)
    assert first["Message-ID"] == second["Message-ID"]
    assert first["To"] == "twcert@example.org, soc@example.tw"


def test_digests_not_delivered_go_out_when_the_server_is_back(
    captured: tuple[Engine, PartnersConfig, Dataset],
    environ: dict[str, str],
    smtp_sink: SmtpSink,
) -> None:
    engine, config, _ = captured
    settings = load_settings({**environ, **_mail_env(smtp_sink), "SPAMPOTS_SMTP_RETRIES": "2"})
    smtp_sink.refuse_next(2, "421 4.3.2 Service not available")
    with pytest.raises(DigestNotSent):
        send_digest(engine, settings, config, "auscert", WEEK)
    assert smtp_sink.received == []
    # Later, the worker's retry finds it and the server takes it; nothing else is sent.
    assert retry_unsent(engine, settings, config)[0].startswith("sent: auscert@example.org")
    assert len(smtp_sink.received) == 1
    assert retry_unsent(engine, settings, config) == []
