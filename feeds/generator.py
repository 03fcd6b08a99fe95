"""Deterministic test data: spool batches, raw messages and matching .mmdb files, by seed.

The data has the seed's shapes (73% of spam from TW and 16% from CN, SOCKS 1080 and HTTP 8080
most abused, most requests CONNECTs to 25/TCP, 9.1 recipients per message), realistic hostile
MIME (multipart, HTML, odd and unknown charsets, 8-bit headers, ``Message-Id: <>``, truncated
bodies), campaigns whose messages recur byte for byte, traffic from and to each partner economy,
and optionally records that break the contract. Because the generator also writes the .mmdb
files, it knows what ingest and ``spampots stats`` must find: :class:`Expected`.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import gzip
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson

SCHEMA = "spampots-ingest/1"

# Share of spam by source economy (the seed: TW 73.43%, CN 15.80%; the rest spread out).
SOURCE_MIX = {
    "TW": 73.43,
    "CN": 15.80,
    "US": 2.6,
    "KR": 1.6,
    "JP": 1.3,
    "HK": 1.1,
    "BR": 0.9,
    "AU": 0.7,
    "PL": 0.7,
    "UY": 0.4,
    "DE": 0.5,
    "RU": 0.5,
    "IN": 0.3,
    "VN": 0.27,
}
# Economies of the mail servers the spam was aimed at.
TARGET_MIX = {
    "TW": 18,
    "JP": 14,
    "US": 14,
    "BR": 10,
    "AU": 8,
    "PL": 8,
    "HK": 8,
    "UY": 5,
    "CN": 6,
    "DE": 5,
    "RU": 4,
}
TLD = {
    "US": "com",
    "TW": "com.tw",
    "JP": "co.jp",
    "AU": "com.au",
    "UY": "com.uy",
    "PL": "pl",
    "HK": "com.hk",
    "BR": "com.br",
    "CN": "cn",
    "DE": "de",
    "RU": "ru",
    "KR": "co.kr",
    "IN": "in",
    "VN": "vn",
}
ASNS_PER_ECONOMY = {"TW": 8, "CN": 6}
# (port, weight, services): the seed's most abused ports.
PORTS = [
    (1080, 37.31, ("socks5", "socks4")),
    (8080, 34.79, ("http-connect", "http-post")),
    (80, 9.5, ("http-connect", "http-connect", "http-get")),
    (3128, 8.4, ("http-connect",)),
    (6588, 6.0, ("http-connect",)),
    (25, 4.0, ("smtp-relay",)),
]
# The partners.yaml placeholders: these networks and ASNs belong to partners' economies.
PARTNER_NETWORKS = [("198.51.100.0/26", "TW", 64500), ("198.51.100.64/26", "JP", 64501)]
CHARSET_TEXT = {
    "utf-8": "Oferta imperdível: economize 90% hoje - 限時優惠",
    "iso-8859-1": "Promoção exclusiva para você, não perca",
    "big5": "限時優惠 立即購買 最後機會",
    "gb2312": "限时优惠 立即购买 最后机会",
    "iso-2022-jp": "お得な情報 今すぐクリック",
    "koi8-r": "Скидки только сегодня",
    "windows-1251": "Лучшие цены для вас",
    "x-unknown-8bit": "Special offer",  # a charset no codec knows
}
SUBJECTS = [
    "Your account",
    "Cheap meds",
    "Replica watches",
    "Meeting",
    "Invoice",
    "Winner",
    "Re: your order",
    "Stock alert",
    "Casino bonus",
    "Loan approved",
]


@dataclass
class Expected:
    """What the store must hold after ingesting everything generated (good records only)."""

    emails: int = 0
    recipients: int = 0
    sessions: int = 0
    src_ips: set[str] = field(default_factory=set)
    by_cc: collections.Counter[str] = field(default_factory=collections.Counter)
    by_asn: collections.Counter[int] = field(default_factory=collections.Counter)
    ports: collections.Counter[int] = field(default_factory=collections.Counter)
    requests: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {"socks": collections.Counter(), "http": collections.Counter()}
    )
    quarantined: int = 0
    records: int = 0
    raw_messages: set[str] = field(default_factory=set)

    @property
    def unique_asns(self) -> int:
        return len(self.by_asn)

    @property
    def unique_ccs(self) -> int:
        return len(self.by_cc)


@dataclass
class Generated:
    spool: Path
    country_mmdb: Path
    asn_mmdb: Path
    batches: list[Path]
    expected: Expected


@dataclass(frozen=True)
class _Network:
    cidr: str
    cc: str
    asn: int
    as_name: str
    base: int  # first address as an integer (IPv4) or the /48 prefix text (IPv6)
    ipv6: bool = False


def _plan_networks() -> dict[str, list[_Network]]:
    economies = sorted(set(SOURCE_MIX) | set(TARGET_MIX))
    plan: dict[str, list[_Network]] = {}
    index = 0
    for cc in economies:
        networks = []
        for n in range(ASNS_PER_ECONOMY.get(cc, 2)):
            asn = 100_000 + index
            first, second = 20 + index // 256, index % 256
            networks.append(
                _Network(
                    f"{first}.{second}.0.0/16",
                    cc,
                    asn,
                    f"{cc}-NET-{n} Example Telecom",
                    (first << 24) | (second << 16),
                )
            )
            index += 1
        networks.append(
            _Network(
                f"2001:db8:{index:x}::/48", cc, networks[0].asn, networks[0].as_name, 0, ipv6=True
            )
        )
        index += 1
        plan[cc] = networks
    for cidr, cc, asn in PARTNER_NETWORKS:
        octets = [int(part) for part in cidr.split("/")[0].split(".")]
        base = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
        plan[cc].append(_Network(cidr, cc, asn, f"PARTNER-{cc} Example", base))
    return plan


def write_mmdbs(folder: Path, layout: str = "maxmind") -> tuple[Path, Path]:
    """Country and ASN .mmdb files for the generator's address plan.

    ``layout`` "maxmind" writes ``country.iso_code``; "ip-location-db" writes ``country_code``
    and an ASN database keyed ``asn`` instead of ``autonomous_system_number``.
    """
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    folder.mkdir(parents=True, exist_ok=True)
    country = MMDBWriter(6, "SpamPots-Test-Country", ipv4_compatible=True)
    asn_db = MMDBWriter(6, "SpamPots-Test-ASN", ipv4_compatible=True)
    for networks in _plan_networks().values():
        for network in networks:
            if layout == "maxmind":
                country.insert_network(IPSet([network.cidr]), {"country": {"iso_code": network.cc}})
                asn_db.insert_network(
                    IPSet([network.cidr]),
                    {
                        "autonomous_system_number": network.asn,
                        "autonomous_system_organization": network.as_name,
                    },
                )
            else:
                country.insert_network(IPSet([network.cidr]), {"country_code": network.cc})
                asn_db.insert_network(
                    IPSet([network.cidr]), {"asn": network.asn, "as_name": network.as_name}
                )
    paths = folder / f"country-{layout}.mmdb", folder / f"asn-{layout}.mmdb"
    country.to_db_file(str(paths[0]))
    asn_db.to_db_file(str(paths[1]))
    return paths


@dataclass
class _Campaign:
    subject: str
    sender_domain: str
    charset: str
    kind: str  # plain | html | alternative | attachment
    urls: list[str]
    static: bool  # every message of it is the same bytes


class Generator:
    def __init__(self, seed: int, *, sensors: int = 3, start: dt.datetime | None = None) -> None:
        self.random = random.Random(seed)
        self.plan = _plan_networks()
        self.sensors = [f"br-isp{n + 1}-home" for n in range(sensors)]
        self.start = start or dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
        self.hosts: dict[str, list[tuple[str, _Network]]] = {}
        self.campaigns = [self._campaign(n) for n in range(40)]
        self.static_bodies: dict[int, list[bytes]] = {}
        self.serial = 0

    # addresses ------------------------------------------------------------------------
    def _host(self, cc: str) -> tuple[str, _Network]:
        pool = self.hosts.setdefault(cc, [])
        if len(pool) < 40 * ASNS_PER_ECONOMY.get(cc, 2) or self.random.random() < 0.02:
            network = self.random.choice(self.plan[cc])
            pool.append((self._address_in(network), network))
        return self.random.choice(pool)

    def _address_in(self, network: _Network) -> str:
        if network.ipv6:
            return network.cidr.split("::")[0] + f"::{self.random.randint(1, 0xFFFF):x}"
        size = 62 if network.cidr.endswith("/26") else 65_534
        value = network.base + self.random.randint(1, size)
        return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))

    def _pick(self, mix: Mapping[str, float]) -> str:
        return self.random.choices(list(mix), weights=list(mix.values()))[0]

    # messages -------------------------------------------------------------------------
    def _campaign(self, n: int) -> _Campaign:
        rnd = self.random
        domain = f"promo{n}.example.{rnd.choice(['com', 'net', 'com.br', 'ru', 'cn'])}"
        urls = [
            f"http://{rnd.choice(['www.', 'shop.', ''])}spam{n}-{k}.example."
            f"{rnd.choice(['com', 'co.uk', 'com.tw', 'jp', 'info'])}/"
            f"{rnd.choice(['buy', 'p', 'r'])}"
            for k in range(rnd.randint(1, 3))
        ]
        return _Campaign(
            rnd.choice(SUBJECTS),
            domain,
            rnd.choice(list(CHARSET_TEXT)),
            rnd.choice(["plain", "html", "alternative", "alternative", "attachment"]),
            urls,
            static=n % 10 == 0,
        )

    def _raw(self, campaign_index: int, ts: dt.datetime, rcpt: str) -> tuple[bytes, bool]:
        campaign = self.campaigns[campaign_index]
        if campaign.static:
            variants = self.static_bodies.setdefault(campaign_index, [])
            if len(variants) < 4:
                variants.append(self._compose(campaign, ts, "", static=True))
            return self.random.choice(variants), False
        self.serial += 1
        raw = self._compose(campaign, ts, rcpt, static=False)
        if self.random.random() < 0.01:  # the sensor cut it at its size limit
            return raw[: max(200, len(raw) * 2 // 3)], True
        return raw, False

    def _compose(self, campaign: _Campaign, ts: dt.datetime, rcpt: str, static: bool) -> bytes:
        rnd = self.random
        token = f"{rnd.getrandbits(48):012x}"
        urls = [
            f"{url}?id={token}" if not static and i == 0 else url
            for i, url in enumerate(campaign.urls)
        ]
        odd = rnd.random()
        message_id = "<>" if odd < 0.01 else f"<{token}@{campaign.sender_domain}>"
        subject = f"=?utf-8?b?{base64.b64encode(campaign.subject.encode()).decode()}?="
        headers = [
            f'From: "Sales" <sales@{campaign.sender_domain}>',
            f"To: {rcpt or 'undisclosed-recipients:;'}",
            f"Subject: {subject if odd > 0.5 else campaign.subject}",
            f"Date: {format_datetime(ts)}",
            f"Message-Id: {message_id}",
            "MIME-Version: 1.0",
        ]
        head = "\r\n".join(headers).encode()
        if 0.01 <= odd < 0.02:
            head += b"\r\nX-Mailer: Sup\xe9r Mail\xff 8-bit"  # raw 8-bit header bytes
        body = self._body(campaign, urls, token, broken=0.02 <= odd < 0.03)
        return head + b"\r\n" + body

    def _body(self, campaign: _Campaign, urls: list[str], token: str, broken: bool) -> bytes:
        charset = campaign.charset
        text = CHARSET_TEXT[charset]
        codec = "utf-8" if charset == "x-unknown-8bit" else charset
        plain = f"{text}\r\n\r\n" + "\r\n".join(f"Visit {url}" for url in urls)
        plain += f"\r\n\r\nref {token}\r\n" + "Lorem ipsum dolor sit amet. " * 20
        html_body = (
            f"<html><body><p>{text}</p>"
            + "".join(f'<a href="{url}&amp;s=1">click</a> ' for url in urls)
            + "</body></html>"
        )
        if campaign.kind == "plain":
            return (
                f"Content-Type: text/plain; charset={charset}\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n"
            ).encode() + plain.encode(codec)
        if campaign.kind == "html":
            encoded = base64.encodebytes(html_body.encode(codec)).replace(b"\n", b"\r\n")
            return (
                f"Content-Type: text/html; charset={charset}\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
            ).encode() + encoded
        boundary = f"=_b{token}"
        parts = [
            f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit"
            "\r\n\r\n".encode()
            + plain.encode(codec),
            f"Content-Type: text/html; charset={charset}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n".encode()
            + base64.encodebytes(html_body.encode(codec)).replace(b"\n", b"\r\n"),
        ]
        subtype = "alternative"
        if campaign.kind == "attachment":
            subtype = "mixed"
            parts.append(
                b'Content-Type: application/zip; name="invoice.zip"\r\n'
                b"Content-Transfer-Encoding: base64\r\n\r\n"
                + base64.encodebytes(token.encode() * 8)
            )
        out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
        for part in parts:
            out += f"--{boundary}\r\n".encode() + part + b"\r\n"
        if not broken:  # a broken one never closes its boundary
            out += f"--{boundary}--\r\n".encode()
        return out

    # records --------------------------------------------------------------------------
    def write(
        self,
        spool: Path,
        messages: int,
        *,
        batch_lines: int = 500,
        gzip_every: int = 3,
        bad_every: int = 0,
        inline_every: int = 50,
        span: dt.timedelta | None = None,
    ) -> tuple[list[Path], Expected]:
        """Write batches with about ``messages`` messages; returns the batches and figures.

        ``bad_every``: every so many records, one more that breaks the contract.
        ``span``: spread the sessions over about this long from the start (a demo's week);
        by default they come 0-3 seconds apart, as at the seed's rate.
        """
        rnd = self.random
        expected = Expected()
        incoming, raw_dir = spool / "incoming", spool / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        lines: dict[str, list[bytes]] = {sensor: [] for sensor in self.sensors}
        written: list[Path] = []
        counters = collections.Counter[str]()
        ts = self.start
        session_number = 0
        made = 0
        raw_files: set[str] = set()

        def emit(sensor: str, record: dict[str, Any] | bytes) -> None:
            line = record if isinstance(record, bytes) else orjson.dumps(record)
            lines[sensor].append(line)
            if len(lines[sensor]) >= batch_lines:
                flush(sensor)

        def flush(sensor: str) -> None:
            if not lines[sensor]:
                return
            counters[sensor] += 1
            name = f"batch-{counters[sensor]:06d}.jsonl"
            data = b"\n".join(lines[sensor]) + b"\n"
            folder = incoming / sensor
            folder.mkdir(parents=True, exist_ok=True)
            if gzip_every and counters[sensor] % gzip_every == 0:
                path = folder / (name + ".gz")
                path.write_bytes(gzip.compress(data, mtime=0))
            else:
                path = folder / name
                path.write_bytes(data)
            written.append(path)
            lines[sensor] = []

        while made < messages:
            session_number += 1
            sensor = rnd.choice(self.sensors)
            if span is None:
                ts += dt.timedelta(seconds=rnd.randint(0, 3))
            else:
                sessions_per_message = session_number / made if made else 1.0
                mean = span.total_seconds() / messages / sessions_per_message
                ts += dt.timedelta(seconds=rnd.uniform(0, 2 * mean))
            src_cc = self._pick(SOURCE_MIX)
            src_ip, src_net = self._host(src_cc)
            port, _, services = rnd.choices(PORTS, weights=[p[1] for p in PORTS])[0]
            service = rnd.choice(services)
            result, dst_port = self._request(service)
            target_cc = self._pick(TARGET_MIX)
            domain = f"example{rnd.randint(1, 30)}.{TLD[target_cc]}"
            dst_host = f"mx{rnd.randint(1, 3)}.{domain}"
            session_id = f"s-{session_number:08d}"
            session: dict[str, Any] = {
                "schema": SCHEMA,
                "type": "session",
                "session_id": session_id,
                "sensor": sensor,
                "ts": _rfc3339(ts),
                "src_ip": src_ip,
                "src_port": rnd.randint(1024, 65535),
                "service": service,
                "listen_port": port,
                "result": result,
            }
            if result == "connect":
                session.update(dst_host=dst_host, dst_port=dst_port)
            elif result == "error":
                session["error"] = "malformed request"
            emit(sensor, session)
            expected.sessions += 1
            expected.records += 1
            expected.ports[port] += 1
            module = "socks" if service.startswith("socks") else "http"
            if not service.startswith("smtp"):
                key = {
                    "connect": "connect_25" if dst_port == 25 else "connect_other",
                    "get": "get",
                    "error": "errors",
                }[result]
                expected.requests[module][key] += 1
            if result != "connect" or dst_port != 25:
                continue
            dst_net = rnd.choice(self.plan[target_cc])
            dst_ip = self._address_in(dst_net)
            seen_raw: set[str] = set()
            for _ in range(rnd.choice([1, 1, 2, 3])):
                count = max(1, min(60, round(rnd.gauss(9.1, 4))))
                rcpt = [
                    f"user{rnd.randint(1, 99999)}@"
                    + (
                        domain
                        if rnd.random() < 0.8
                        else f"example{rnd.randint(1, 30)}.{TLD[self._pick(TARGET_MIX)]}"
                    )
                    for _ in range(count)
                ]
                campaign = rnd.randrange(len(self.campaigns))
                msg_ts = ts + dt.timedelta(seconds=rnd.randint(1, 30))
                raw, truncated = self._raw(campaign, msg_ts, rcpt[0])
                digest = hashlib.sha256(raw).hexdigest()
                if digest in seen_raw:
                    continue
                seen_raw.add(digest)
                message: dict[str, Any] = {
                    "schema": SCHEMA,
                    "type": "message",
                    "session_id": session_id,
                    "sensor": sensor,
                    "ts": _rfc3339(msg_ts),
                    "src_ip": src_ip,
                    "dst_host": dst_host,
                    "dst_ip": dst_ip,
                    "dst_port": 25,
                    "mail_from": ""
                    if rnd.random() < 0.03
                    else f"bounce{rnd.randint(1, 999)}@{self.campaigns[campaign].sender_domain}",
                    "rcpt_to": rcpt,
                    "raw_sha256": digest,
                    "raw_size": len(raw),
                }
                if truncated:
                    message["truncated"] = True
                if inline_every and made % inline_every == inline_every - 1:
                    message["raw_b64"] = base64.b64encode(raw).decode()
                else:
                    if digest not in raw_files:
                        (raw_dir / f"{digest}.eml").write_bytes(raw)
                        raw_files.add(digest)
                emit(sensor, message)
                made += 1
                expected.records += 1
                expected.emails += 1
                expected.recipients += count
                expected.src_ips.add(src_ip)
                expected.by_cc[src_net.cc] += 1
                expected.by_asn[src_net.asn] += 1
                expected.raw_messages.add(digest)
                if bad_every and made % bad_every == 0:
                    emit(sensor, self._bad_record(made // bad_every, message))
                    expected.records += 1
                    expected.quarantined += 1
        for sensor in self.sensors:
            flush(sensor)
        return written, expected

    def _request(self, service: str) -> tuple[str, int]:
        rnd = self.random
        if service == "smtp-relay":
            return "connect", 25
        if service == "http-get":
            return ("get", 80) if rnd.random() < 0.9 else ("error", 0)
        share_25 = 0.8731 if service.startswith("socks") else 0.9762
        roll = rnd.random()
        if roll < share_25:
            return "connect", 25
        if roll < share_25 + (1 - share_25) * 0.5:
            return "connect", rnd.choice([80, 443, 6667, 110])
        if service.startswith("http") and roll < share_25 + (1 - share_25) * 0.7:
            return "get", 80
        return "error", 0

    def _bad_record(self, n: int, message: dict[str, Any]) -> bytes:
        kind = n % 5
        if kind == 0:
            return b'{"schema": "spampots-ingest/1", "type": "message", "sensor": '  # cut off
        bad = dict(message, session_id=f"bad-{n}")
        bad.pop("raw_b64", None)
        if kind == 1:
            bad["schema"] = "spampots-ingest/0"
        elif kind == 2:
            bad["src_ip"] = "300.1.2.3"
        elif kind == 3:
            bad["raw_sha256"] = hashlib.sha256(f"missing {n}".encode()).hexdigest()
        else:
            bad["rcpt_to"] = []
        return orjson.dumps(bad)


def _rfc3339(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(
    spool: Path,
    mmdb_folder: Path,
    messages: int,
    *,
    seed: int = 1,
    layout: str = "maxmind",
    **options: Any,
) -> Generated:
    """Spool batches, raw messages and .mmdb files; the figures ingest must reproduce."""
    country, asn = write_mmdbs(mmdb_folder, layout)
    generator = Generator(seed, sensors=options.pop("sensors", 3), start=options.pop("start", None))
    batches, expected = generator.write(spool, messages, **options)
    return Generated(spool, country, asn, batches, expected)
