"""Secrets never leak: the private signing key, the partners' and publisher's passwords, the
SMTP password and the database password appear nowhere the service writes: not in its logs
(DEBUG level), stdout or stderr, error messages, the metrics exposition, `spampots settings`,
the mail it sends, nor any file of the data folder but the key file itself.

One run of the service's pieces: init, settings, ingest, publish, serve (gunicorn) polled with
good and wrong passwords, a digest sent with SMTP AUTH (--debug), and failing twice (a refused
SMTP login, an unknown partner)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import generate_home
from loopback import spampots_serve
from smtp_sink import start_smtp_sink
from taxii_helpers import CHEAP

from conftest import REPO
from feeds.home import engine_for

RunCli = Callable[..., tuple[int, str, str]]
TW_PASSWORD = "tw-partner-pass-5b1f0e"
PUBLISHER_PASSWORD = "publisher-pass-91c2d7"
WRONG_PASSWORD = "wrong-guess-pass-4e8a"
SMTP_PASSWORD = "smtp-pass-7d3c22"
DB_PASSWORD = "db-pass-c0ffee42"


@pytest.fixture
def secret_database_url(database_url: str) -> Iterator[str]:
    """The PostgreSQL URL with a password (trust authentication accepts any)."""
    url = database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    assert DB_PASSWORD in url
    yield url
    engine_for(url).dispose()


def _partners_file(path: Path) -> None:
    text = (REPO / "partners.yaml").read_text()
    hashes = {"twcert": CHEAP.hash(TW_PASSWORD), "certbr-publisher": CHEAP.hash(PUBLISHER_PASSWORD)}
    for username, new_hash in hashes.items():
        text, count = re.subn(
            rf'(username: {username}, password_hash: )"[^"]+"', rf'\g<1>"{new_hash}"', text
        )
        assert count == 1
    path.write_text(text)


def _key_forms(keys_dir: Path) -> list[str]:
    """The private key as it could leak: PEM lines, raw bytes in hex, base64, base64url."""
    (pem_path,) = keys_dir.glob("*.pem")
    pem = pem_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    body = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return [
        *body,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


SAMPLE_SOURCE = "198.51.100.5"  # in twcert's prefixes: its "originating" feed, samples shared
SENSOR_TRACES = [
    "192.0.2.10",
    "proxy1.example.net",
    "2001:db8::30",
    "relay3.example.net",
    "br-isp1-home",
    "br-isp3-business",
]


def _spool_sample_naming_the_sensors(spool: Path) -> None:
    """A message whose headers and body name the sensors it came through (partners.yaml)."""
    raw = (
        b"Received: from spammer (198.51.100.5) by proxy1.example.net (192.0.2.10)\r\n"
        b"Received: from relay3.example.net ([2001:db8::30]) by mx.example.org\r\n"
        b"From: a@example.com\r\nTo: victim@example.org\r\nSubject: cheap pills\r\n\r\n"
        b"relayed by br-isp1-home via 192.0.2.10; see http://pills.example.net/buy\r\n"
    )
    record = {
        "schema": "spampots-ingest/1",
        "type": "message",
        "session_id": "leak-1",
        "sensor": "br-isp1-home",
        "ts": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "src_ip": SAMPLE_SOURCE,
        "dst_host": "mx.example.org",
        "mail_from": "a@example.com",
        "rcpt_to": ["victim@example.org"],
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_b64": base64.b64encode(raw).decode(),
    }
    folder = spool / "incoming" / "br-isp1-home"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zz-leak.jsonl").write_bytes(orjson.dumps(record) + b"\n")


def _all_objects(url: str, user: str, password: str) -> str:
    """Every object of every collection ``user`` reads: the JSON text served, then each
    artifact's decoded payload (a sample is base64 in the JSON)."""
    taxii = {"Accept": "application/taxii+json;version=2.1"}
    listing = requests.get(
        url + "/feeds/collections/", auth=(user, password), headers=taxii, timeout=30
    ).json()
    pages = []
    for collection in listing["collections"]:
        params: dict[str, str] = {}
        while True:
            page = requests.get(
                f"{url}/feeds/collections/{collection['id']}/objects/",
                auth=(user, password),
                headers=taxii,
                params=params,
                timeout=30,
            )
            assert page.status_code == 200, page.text
            pages.append(page.text)
            body = page.json()
            pages.extend(
                base64.b64decode(obj["payload_bin"]).decode("utf-8", "replace")
                for obj in body.get("objects", [])
                if obj["type"] == "artifact" and "payload_bin" in obj
            )
            if not body.get("more"):
                break
            params = {"next": body["next"]}
    return "\n".join(pages)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_no_secret_appears_in_anything_the_service_writes(
    environ: dict[str, str], secret_database_url: str, tmp_path: Path, run_cli: RunCli
) -> None:
    partners = tmp_path / "partners.yaml"
    _partners_file(partners)
    smtp_password_file = tmp_path / "smtp-password"
    smtp_password_file.write_text(SMTP_PASSWORD + "\n")
    written: list[str] = []  # every stdout, stderr, response, exposition and mail

    with start_smtp_sink(tmp_path, mode="smtps", login=("digest", SMTP_PASSWORD)) as sink:
        env = {
            **environ,
            "SPAMPOTS_DATABASE_URL": secret_database_url,
            "SPAMPOTS_PARTNERS": str(partners),
            "SPAMPOTS_LOG_LEVEL": "DEBUG",
            "SPAMPOTS_SMTP_URL": sink.url,
            "SPAMPOTS_SMTP_CA_FILE": sink.ca_file,
            "SPAMPOTS_SMTP_USERNAME": "digest",
            "SPAMPOTS_SMTP_PASSWORD_FILE": str(smtp_password_file),
            "SPAMPOTS_SMTP_BACKOFF": "0.05",
            "SPAMPOTS_MAIL_FROM": "SpamPots <feeds@cert.example>",
        }

        def run(*argv: str, expect: int = 0, **extra: str) -> None:
            code, out, err = run_cli(*argv, env={**env, **extra})
            written.extend([out, err])
            assert code == expect, (argv, out, err)

        run("init")
        run("settings")
        assert "digest" in written[-2] and DB_PASSWORD not in written[-2]
        generated = generate_home(env, tmp_path, 60, seed=3)
        env = generated.environ
        _spool_sample_naming_the_sensors(Path(generated.settings.spool))
        run("--debug", "ingest")
        run("--debug", "publish")
        run("--debug", "digest", "--partner", "twcert", "--send")
        assert len(sink.received) == 1
        written.extend(r.data.decode("utf-8", "replace") for r in sink.received)
        wrong_smtp = tmp_path / "wrong-smtp"
        wrong_smtp.write_text("not-" + SMTP_PASSWORD)
        run(
            "digest",
            "--partner",
            "jpcert",
            "--send",
            expect=2,
            SPAMPOTS_SMTP_PASSWORD_FILE=str(wrong_smtp),
        )
        assert "refused the login" in written[-1]
        run("digest", "--partner", "nobody", "--send", expect=2)

    with spampots_serve(env) as server:
        url = server.url
        accept = {"Accept": "application/taxii+json;version=2.1"}
        for user, password, status in [
            ("twcert", TW_PASSWORD, 200),
            ("twcert", WRONG_PASSWORD, 401),
            ("nobody", WRONG_PASSWORD, 401),
            ("certbr-publisher", PUBLISHER_PASSWORD, 200),
        ]:
            response = requests.get(
                url + "/feeds/collections/", auth=(user, password), headers=accept, timeout=30
            )
            assert response.status_code == status, response.text
            written.append(response.text)
        shared = _all_objects(url, "twcert", TW_PASSWORD)
        written.append(shared)
        assert "http://pills.example.net/buy" in shared and "cheap pills" in shared  # shared
        for leak in SENSOR_TRACES:  # ... but nothing that points at a sensor
            assert leak not in shared, leak
        metrics = requests.get(url + "/metrics", timeout=30)
        assert metrics.status_code == 200 and "taxii_requests" in metrics.text
        written.append(metrics.text)
    written.append(server.output)
    assert "Booting worker" in written[-1]

    home = Path(env["SPAMPOTS_HOME"])
    keys_dir = home / "keys"
    secrets = [TW_PASSWORD, PUBLISHER_PASSWORD, WRONG_PASSWORD, SMTP_PASSWORD, DB_PASSWORD]
    secrets += [
        base64.b64encode(f"{user}:{password}".encode()).decode()
        for user, password in [("twcert", TW_PASSWORD), ("twcert", WRONG_PASSWORD)]
    ]
    secrets += _key_forms(keys_dir)
    files = [p for p in home.rglob("*") if p.is_file() and keys_dir not in p.parents]
    assert len(files) > 10  # raw messages, outbox, metrics, ...
    everything = "\n".join(written)
    assert "missing or wrong credentials" in everything  # the 401s are in there
    for secret in secrets:
        assert secret not in everything, secret
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path)
