"""The pieces of ingest that need no store: the contract, message parsing, URLs, enrichment."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from pathlib import Path

import orjson
import pytest

from feeds.batches import MessageRecord, RecordError, SessionRecord, decode_inline, parse_record
from feeds.enrich import Enricher, EnrichmentConfig, Override, ip_key, network_key_range
from feeds.generator import write_mmdbs
from feeds.messages import (
    domain_key,
    domain_key_range,
    extract_urls,
    parse_message,
    recipient_domain,
    registrable_domain,
)

SESSION = {
    "schema": "spampots-ingest/1",
    "type": "session",
    "session_id": "s-000001",
    "sensor": "br-isp1-home",
    "ts": "2009-06-19T12:00:00Z",
    "src_ip": "203.0.113.7",
    "src_port": 49152,
    "service": "socks5",
    "listen_port": 1080,
    "dst_host": "mx1.example.jp",
    "dst_port": 25,
    "result": "connect",
}
MESSAGE = {
    "schema": "spampots-ingest/1",
    "type": "message",
    "session_id": "s-000001",
    "sensor": "br-isp1-home",
    "ts": "2009-06-19T12:00:07+09:00",
    "src_ip": "203.0.113.7",
    "dst_host": "mx1.example.jp",
    "dst_port": 25,
    "mail_from": "promo@example.com",
    "rcpt_to": ["a@example.jp", "b@example.jp"],
    "raw_sha256": "a" * 64,
    "raw_size": 4711,
}


def line(record: dict[str, object]) -> bytes:
    return orjson.dumps(record)


def test_the_contract_example_records_are_accepted() -> None:
    session = parse_record(line(SESSION))
    assert isinstance(session, SessionRecord)
    assert session.listen_port == 1080 and session.result == "connect"
    message = parse_record(line({**MESSAGE, "future_field": {"x": 1}}))
    assert isinstance(message, MessageRecord)
    assert message.rcpt_to == ["a@example.jp", "b@example.jp"]
    assert message.ts.isoformat() == "2009-06-19T03:00:07+00:00"  # stored in UTC


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": "spampots-ingest/2"}, "schema"),
        ({"type": "connection"}, "type"),
        ({"src_ip": "300.1.2.3"}, "src_ip"),
        ({"ts": "2009-06-19 12:00"}, "ts"),
        ({"ts": "2009-06-19T12:00:00"}, "ts"),  # no offset
        ({"listen_port": 70000}, "listen_port"),
        ({"listen_port": True}, "listen_port"),
        ({"service": "telnet"}, "service"),
        ({"result": "ok"}, "result"),
        ({"session_id": ""}, "session_id"),
        ({"sensor": "x" * 65}, "sensor"),
    ],
)
def test_a_broken_session_names_its_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(RecordError, match=f"field '{field}'"):
        parse_record(line({**SESSION, **change}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rcpt_to": []}, "rcpt_to"),
        ({"rcpt_to": ["a@example.jp", 5]}, "rcpt_to"),
        ({"mail_from": None}, "mail_from"),
        ({"raw_sha256": "A" * 64}, "raw_sha256"),
        ({"raw_sha256": "abc"}, "raw_sha256"),
        ({"dst_ip": "not-an-ip"}, "dst_ip"),
        ({"truncated": "yes"}, "truncated"),
    ],
)
def test_a_broken_message_names_its_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(RecordError, match=f"field '{field}'"):
        parse_record(line({**MESSAGE, **change}))


def test_missing_required_fields_and_non_objects_are_rejected() -> None:
    without_sensor = {k: v for k, v in SESSION.items() if k != "sensor"}
    with pytest.raises(RecordError, match="field 'sensor': missing"):
        parse_record(line(without_sensor))
    with pytest.raises(RecordError, match="not a JSON object"):
        parse_record(b"[1, 2]")
    with pytest.raises(RecordError, match="not a JSON object"):
        parse_record(b'{"schema": "spampots-ingest/1", "type":')
    with pytest.raises(RecordError, match="not a JSON object"):
        parse_record(b"\xff\xfe not utf-8")


def test_inline_raw_must_be_base64_and_match_its_digest() -> None:
    raw = b"Subject: hi\r\n\r\nbody\r\n"
    good = parse_record(
        line(
            {
                **MESSAGE,
                "raw_b64": base64.b64encode(raw).decode(),
                "raw_sha256": hashlib.sha256(raw).hexdigest(),
            }
        )
    )
    assert isinstance(good, MessageRecord)
    assert decode_inline(good) == raw
    wrong = parse_record(line({**MESSAGE, "raw_b64": base64.b64encode(raw).decode()}))
    assert isinstance(wrong, MessageRecord)
    with pytest.raises(RecordError, match="has SHA-256"):
        decode_inline(wrong)
    garbage = parse_record(line({**MESSAGE, "raw_b64": "***"}))
    assert isinstance(garbage, MessageRecord)
    with pytest.raises(RecordError, match="not standard base64"):
        decode_inline(garbage)


HOSTILE = (
    b"From: =?x-no-such-charset?q?Sp=E4m?= <a@example.com>\r\n"
    b"Subject: =?utf-8?b?w6lww6lj?= \xe9t\xe9 8-bit\r\n"
    b"Message-Id: <>\r\n"
    b"Date: not a date\r\n"
    b'Content-Type: multipart/alternative; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n"
    b"visit http://www.shop.example.co.jp/buy?id=1. now\r\n"
    b"--XX\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b'<a href="https://evil.example.com/x?a=1&amp;b=2">x</a>')
    + b'--XX\r\nContent-Type: text/plain; charset="utf-8\r\n\r\nhttp://cut.example.org/'
)


def test_hostile_mime_is_read_without_raising() -> None:
    parsed = parse_message(HOSTILE)
    assert parsed.message_id == "<>"
    assert parsed.header_date == "not a date"
    assert parsed.header_from is not None and "a@example.com" in parsed.header_from
    assert parsed.subject is not None and "8-bit" in parsed.subject
    assert "\udce9" not in parsed.subject  # undecodable bytes never reach the store
    assert parsed.content_types[0] == "multipart/alternative"
    assert "text/html" in parsed.content_types
    assert "x-unknown" in parsed.charsets
    assert "http://www.shop.example.co.jp/buy?id=1" in parsed.urls
    assert "https://evil.example.com/x?a=1&b=2" in parsed.urls
    assert parsed.defects >= 1  # the last part never closes its boundary


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x01\x02",
        b"Subject: only a header",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"!!!not base64",
        b"From: x\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\nbody",
        b"Content-Type: text/plain; charset*=bogus''x\r\n\r\nhttp://[::1/ http://a.example/",
    ],
)
def test_degenerate_messages_still_parse(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.defects >= 0
    assert all(url.startswith("http") for url in parsed.urls)


def test_a_huge_message_keeps_a_bounded_number_of_urls() -> None:
    body = " ".join(f"http://host{n}.example.com/" for n in range(5000))
    parsed = parse_message(b"Subject: many\r\n\r\n" + body.encode())
    assert len(parsed.urls) == 200
    assert parsed.urls[0] == "http://host0.example.com/"


def test_urls_and_domains() -> None:
    assert extract_urls("see (http://a.example.com/x), and https://b.example.net.") == [
        "http://a.example.com/x",
        "https://b.example.net",
    ]
    assert registrable_domain("www.shop.example.co.jp") == "example.co.jp"
    assert registrable_domain("mx.example.com.tw") == "example.com.tw"
    assert registrable_domain("192.0.2.1") == "192.0.2.1"
    assert recipient_domain("<User@Example.JP>") == "example.jp"
    assert recipient_domain("no-domain") == ""


def test_domain_keys_select_a_domain_and_what_is_under_it() -> None:
    low, high = domain_key_range("example.jp")
    inside = [domain_key(d) for d in ("example.jp", "mx1.example.jp", "a.b.example.jp")]
    outside = [domain_key(d) for d in ("badexample.jp", "example.jpn", "jp", "example.com")]
    assert all(low <= key < high for key in inside)
    assert not any(low <= key < high for key in outside)


def test_ip_keys_select_a_network() -> None:
    low, high = network_key_range("198.51.100.64/26")
    assert low <= ip_key("198.51.100.64") <= high
    assert low <= ip_key("198.51.100.127") <= high
    assert not low <= ip_key("198.51.100.128") <= high
    assert not low <= ip_key("2001:db8::1") <= high
    v6_low, v6_high = network_key_range(ipaddress.ip_network("2001:db8::/32"))
    assert v6_low <= ip_key("2001:db8:ffff::1") <= v6_high


@pytest.mark.parametrize("layout", ["maxmind", "ip-location-db"])
def test_enrichment_reads_both_mmdb_layouts(layout: str, tmp_path: Path) -> None:
    country, asn = write_mmdbs(tmp_path, layout)
    enricher = Enricher(EnrichmentConfig(str(country), str(asn)))
    answer = enricher.lookup("20.0.0.9")  # the generator's first network
    assert answer.cc is not None and len(answer.cc) == 2
    assert answer.asn == 100_000
    assert answer.as_name is not None and "NET-0" in answer.as_name
    assert answer.cc_source is not None and answer.cc_source.name.startswith("SpamPots-Test")
    assert answer.asn_source is not None and answer.asn_source.kind == "asn"
    assert answer.cc_source.version  # the database's build date
    assert enricher.lookup("10.0.0.1").cc is None  # not in the databases


def test_partner_networks_win_over_the_databases(tmp_path: Path) -> None:
    country, asn = write_mmdbs(tmp_path)
    plain = Enricher(EnrichmentConfig(str(country), str(asn)))
    overrides = (
        Override("jpcert", "JP", ("20.0.0.0/24",), frozenset()),
        Override("twcert", "TW", (), frozenset({100_001})),
    )
    enricher = Enricher(EnrichmentConfig(str(country), str(asn), overrides, "v1"))
    by_prefix = enricher.lookup("20.0.0.9")
    assert plain.lookup("20.0.0.9").cc != "JP"
    assert by_prefix.cc == "JP" and by_prefix.asn == 100_000
    assert by_prefix.cc_source is not None
    assert by_prefix.cc_source.name == "partners.yaml networks of jpcert"
    by_asn = enricher.lookup("20.1.0.9")  # network of AS 100001
    assert by_asn.cc == "TW" and by_asn.cc_source is not None
    assert by_asn.cc_source.kind == "partners"


def test_the_embedded_default_needs_no_configuration() -> None:
    enricher = Enricher(EnrichmentConfig())
    answer = enricher.lookup("8.8.8.8")
    assert answer.cc == "US"
    assert answer.cc_source is not None and answer.cc_source.name == "geoip2fast (embedded)"
    assert "GeoLite2" in answer.cc_source.version
    assert enricher.lookup("192.168.1.1").cc is None
