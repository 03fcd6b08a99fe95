"""``spampots demo`` (the README's ``make run``): the whole service on one machine, with data.

It generates a week of sensor data, ingests it, publishes for every partner, writes each
partner's digest to the outbox, writes ``demo.json`` with the URLs and the partners' demo
passwords, then runs the worker and the TAXII server until interrupted. The partners are those
of partners.yaml, with fresh passwords in a copy under the data folder; the .mmdb files are the
generator's, so every address resolves to the economy the generator meant. Run again, it keeps
its data and passwords and only starts the service.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from feeds.partners import hash_password, load_partners
from feeds.settings import Settings, load_settings

DEMO_MESSAGES = 6000
DEMO_SEED = 2009


@dataclass(frozen=True)
class DemoFiles:
    folder: Path

    @property
    def partners(self) -> Path:
        return self.folder / "partners.yaml"

    @property
    def passwords(self) -> Path:
        return self.folder / "passwords.json"

    @property
    def mmdb(self) -> Path:
        return self.folder / "mmdb"

    @property
    def generated(self) -> Path:
        return self.folder / "generated"


def _say(line: str) -> None:
    print(line, flush=True)


def demo_partners(source: Path, files: DemoFiles) -> dict[str, dict[str, str]]:
    """A copy of partners.yaml whose accounts have fresh random passwords (kept between runs)."""
    config = load_partners(source)
    if files.passwords.is_file() and files.partners.is_file():
        known: dict[str, dict[str, str]] = orjson.loads(files.passwords.read_bytes())
        if set(known) == set(config.partners):
            return known
    text = source.read_text(encoding="utf-8")
    accounts: dict[str, dict[str, str]] = {}
    for partner in config.partners.values():
        if partner.taxii is None:
            continue
        password = secrets.token_urlsafe(12)
        text = text.replace(partner.taxii.password_hash, hash_password(password))
        accounts[partner.id] = {"username": partner.taxii.username, "password": password}
    if config.publisher is not None:
        publisher_password = secrets.token_urlsafe(12)
        text = text.replace(config.publisher.password_hash, hash_password(publisher_password))
    files.folder.mkdir(parents=True, exist_ok=True)
    files.partners.write_text(text, encoding="utf-8")
    _write_private(files.passwords, orjson.dumps(accounts, option=orjson.OPT_INDENT_2))
    for partner_id, account in accounts.items():
        _write_private(files.folder / f"{partner_id}.password", account["password"].encode())
    return accounts


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _demo_settings(settings: Settings, files: DemoFiles) -> Settings:
    """The demo's settings, also put in the environment for the TAXII server it starts."""
    overrides = {
        "SPAMPOTS_HOME": str(settings.home),
        "SPAMPOTS_DATABASE_URL": settings.database_url,
        "SPAMPOTS_PARTNERS": str(files.partners),
        "SPAMPOTS_COUNTRY_MMDB": str(files.mmdb / "country-maxmind.mmdb"),
        "SPAMPOTS_ASN_MMDB": str(files.mmdb / "asn-maxmind.mmdb"),
    }
    os.environ.update(overrides)
    return load_settings()


def prepare(settings: Settings, messages: int = DEMO_MESSAGES) -> tuple[Settings, dict[str, str]]:
    """Everything but running the service: data, ingest, publish, digests, demo.json."""
    from feeds.deliveries import write_to_outbox
    from feeds.digest import last_complete_week
    from feeds.generator import generate
    from feeds.home import init_home, open_store
    from feeds.ingest import ingest_run
    from feeds.publish import publish

    files = DemoFiles(Path(settings.home) / "demo")
    accounts = demo_partners(Path(settings.partners), files)
    settings = _demo_settings(settings, files)
    for line in init_home(settings).lines():
        _say(line)
    week = last_complete_week()
    if not files.generated.exists():
        _say(f"generating {messages} messages of sensor data for {week.label} ...")
        generate(
            Path(settings.spool),
            files.mmdb,
            messages,
            seed=DEMO_SEED,
            start=week.start,
            span=dt.timedelta(days=7) - dt.timedelta(minutes=10),
        )
        files.generated.write_text(week.label)
    config = load_partners(settings.partners)
    reports = ingest_run(settings, partners=config).run()
    accepted = sum(r.accepted for r in reports)
    quarantined = sum(r.quarantined for r in reports)
    _say(f"ingested {len(reports)} batches: {accepted} records accepted, {quarantined} quarantined")
    report = publish(settings, config=config)
    _say(f"published {len(report.batches)} signed batches, {report.objects} objects")
    engine = open_store(settings)
    for partner in config.partners.values():
        if partner.digest is not None:
            path = write_to_outbox(engine, settings, config, partner.id, week)
            _say(f"digest for {partner.id}: {path}")
    urls = {
        "discovery": f"{settings.taxii_url}/taxii2/",
        "jwks": f"{settings.taxii_url}/.well-known/jwks.json",
    }
    demo_json = Path(settings.home) / "demo.json"
    _write_private(
        demo_json, orjson.dumps({**urls, "partners": accounts}, option=orjson.OPT_INDENT_2)
    )
    _say(f"wrote {demo_json}")
    return settings, urls


def instructions(settings: Settings, urls: dict[str, str]) -> list[str]:
    password_file = Path(settings.home) / "demo" / "twcert.password"
    spampots = ".venv/bin/spampots" if Path(".venv/bin/spampots").exists() else "spampots"
    return [
        "",
        f"TAXII 2.1 server: {urls['discovery']}   signing keys: {urls['jwks']}",
        "Poll as TWCERT/CC with taxii2-client:",
        '  .venv/bin/python -c "from taxii2client.v21 import Server; '
        f"s = Server('{urls['discovery']}', user='twcert', "
        f"password=open('{password_file}').read().strip()); "
        "c = [c for c in s.api_roots[0].collections if c.alias == 'twcert-originating'][0]; "
        "print(len(c.get_objects()['objects']), 'objects')\"",
        "Check every signature as the partner would:",
        f"  {spampots} verify --url {urls['discovery']} --collection twcert-originating "
        f"--user twcert --password-file {password_file} --jwks {urls['jwks']}",
        "Partners' passwords are in demo.json; digests in the outbox. Ctrl-C stops the service.",
        "",
    ]


def run_demo(settings: Settings, messages: int = DEMO_MESSAGES) -> int:
    from feeds.service import run_all

    settings, urls = prepare(settings, messages)
    for line in instructions(settings, urls):
        _say(line)
    return run_all(settings)
