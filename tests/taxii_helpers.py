"""Shared by the TAXII tests: a partners file with real (cheap) argon2id hashes, and the real
server on a loopback port in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from argon2 import PasswordHasher
from flask import Flask
from werkzeug.serving import make_server

from feeds.settings import Settings, load_settings
from taxii_server.app import EXTENSION, TaxiiServer, create_app

# Low cost keeps the tests quick; verification is still argon2id's own code path.
CHEAP = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
PASSWORDS = {
    "certbr-publisher": "publisher-secret-1",
    "twcert": "twcert-secret-12",
    "jpcert": "jpcert-secret-12",
    "certpl": "certpl-secret-12",
}


def partners_yaml(
    usernames: tuple[str, ...] = ("twcert", "jpcert", "certpl"),
    grants: dict[str, list[str]] | None = None,
) -> str:
    grants = grants or {}
    lines = [
        "producer: {name: CERT.br, contact: cert@example.org}",
        f"publisher: {{username: certbr-publisher, password_hash: "
        f'"{CHEAP.hash(PASSWORDS["certbr-publisher"])}"}}',
        "partners:",
    ]
    economies = {"twcert": "TW", "jpcert": "JP", "certpl": "PL"}
    for name in usernames:
        granted = f", grants: [{', '.join(grants[name])}]" if name in grants else ""
        lines += [
            f"  {name}:",
            f"    name: {name.upper()}",
            f"    economy: {economies[name]}",
            f"    taxii: {{username: {name}, password_hash: "
            f'"{CHEAP.hash(PASSWORDS[name])}"{granted}}}',
        ]
    return "\n".join(lines) + "\n"


@dataclass
class RunningServer:
    url: str
    app: Flask
    settings: Settings

    @property
    def state(self) -> TaxiiServer:
        server: TaxiiServer = self.app.extensions[EXTENSION]
        return server

    @property
    def discovery(self) -> str:
        return f"{self.url}/taxii2/"

    @property
    def api_root(self) -> str:
        return f"{self.url}/feeds/"

    def collection_url(self, collection_id: str) -> str:
        return f"{self.url}/feeds/collections/{collection_id}/"


@contextlib.contextmanager
def running_server(settings: Settings) -> Iterator[RunningServer]:
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningServer(f"http://127.0.0.1:{server.server_port}", app, settings)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        app.extensions[EXTENSION].audit.close()


def taxii_settings(environ: dict[str, str], partners: Path, **overrides: str) -> Settings:
    # Wrong passwords sent on purpose do not wait here; test_security.py tests the waits.
    overrides = {"auth_failure_delay": "0", **overrides}
    return load_settings({**environ, "SPAMPOTS_PARTNERS": str(partners)}, **overrides)


def indicator(
    number: int, modified: str = "2026-12-01T10:00:00.000Z", identifier: str | None = None
) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": identifier or f"indicator--{uuid.UUID(int=number)}",
        "created": "2026-12-01T10:00:00.000Z",
        "modified": modified,
        "name": f"spam source {number}",
        "pattern_type": "stix",
        "pattern": f"[ipv4-addr:value = '198.51.100.{number % 256}']",
        "valid_from": "2026-12-01T10:00:00Z",
        "indicator_types": ["malicious-activity"],
    }


def ipv4(number: int) -> dict[str, Any]:
    return {
        "type": "ipv4-addr",
        "spec_version": "2.1",
        "id": f"ipv4-addr--{uuid.UUID(int=number)}",
        "value": f"198.51.{number // 256 % 256}.{number % 256}",
    }


def as_stored(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bytes]]:
    return [(obj, orjson.dumps(obj)) for obj in objects]


@contextlib.contextmanager
def start_taxii(
    tmp_path: Path, environ: dict[str, str], **overrides: str
) -> Iterator[RunningServer]:
    """Partners file, initialised store and the server running over them."""
    from feeds.home import init_home

    partners = tmp_path / "partners.yaml"
    partners.write_text(partners_yaml(grants={"jpcert": ["twcert-originating"]}))
    settings = taxii_settings(environ, partners, **overrides)
    init_home(settings)
    with running_server(settings) as running:
        yield running
