"""The README's 'make run': the demo prepares a working service a partner can poll at once."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from argon2 import PasswordHasher
from taxii2client.v21 import Server
from taxii_helpers import running_server

from feeds.demo import prepare
from feeds.partners import load_partners
from feeds.settings import load_settings


@pytest.fixture
def demo_environ(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The demo writes its settings into the environment (for the server it starts)."""
    for name in [n for n in os.environ if n.startswith("SPAMPOTS_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return environ


def test_demo_prepares_data_digests_and_accounts_a_partner_can_use(
    demo_environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, urls = prepare(load_settings(), messages=400)
    home = Path(settings.home)
    demo = orjson.loads((home / "demo.json").read_bytes())
    assert demo["discovery"] == urls["discovery"] == f"{settings.taxii_url}/taxii2/"
    assert demo["jwks"].endswith("/.well-known/jwks.json")
    config = load_partners(settings.partners)
    assert (
        set(demo["partners"])
        == set(config.partners)
        == {"twcert", "jpcert", "auscert", "certuy", "certpl", "hkcert"}
    )
    for partner_id, account in demo["partners"].items():
        stored = config.partners[partner_id].taxii
        assert stored is not None and stored.username == account["username"]
        assert PasswordHasher().verify(stored.password_hash, account["password"])
    outbox = sorted(p.name for p in (home / "outbox").glob("*.eml"))
    assert len(outbox) == 6
    out = capsys.readouterr().out
    assert "published" in out and "ingested" in out

    with running_server(settings) as taxii:
        account = demo["partners"]["twcert"]
        server = Server(taxii.discovery, user=account["username"], password=account["password"])
        collections = {c.alias: c for c in server.api_roots[0].collections}
        assert set(collections) == {"twcert-originating", "twcert-returning"}
        assert collections["twcert-originating"].get_objects()["objects"]

    prepare(load_settings(), messages=400)
    assert orjson.loads((home / "demo.json").read_bytes())["partners"] == demo["partners"]
    assert "generating" not in capsys.readouterr().out
