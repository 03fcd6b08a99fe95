"""Who may read and write what: accounts from partners.yaml, partners kept apart, the audit."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import ApiRoot, Collection, Server
from taxii_helpers import CHEAP, PASSWORDS, RunningServer, as_stored, indicator, partners_yaml

from feeds.partners import COLLECTION_NAMESPACE
from feeds.store import write_transaction
from taxii_server import accounts as accounts_module
from taxii_server.accounts import Accounts, PartnersFile
from taxii_server.audit import last_polls, object_counts, poll_summary
from taxii_server.objects import add_objects

TAXII = "application/taxii+json;version=2.1"


def _get(
    url: str, user: str | None, password: str | None = None, **kwargs: str
) -> requests.Response:
    auth = (user, password if password is not None else PASSWORDS[user]) if user else None
    return requests.get(url, auth=auth, headers={"Accept": TAXII}, params=kwargs, timeout=30)


def _id(partner: str, feed: str) -> str:
    return str(uuid.uuid5(COLLECTION_NAMESPACE, f"{partner}/{feed}"))


def test_each_account_lists_only_what_it_was_granted(taxii: RunningServer) -> None:
    def aliases(user: str) -> set[str]:
        root = ApiRoot(taxii.api_root, user=user, password=PASSWORDS[user])
        return {c.alias for c in root.collections}

    assert aliases("twcert") == {"twcert-originating", "twcert-returning"}
    assert aliases("jpcert") == {"jpcert-originating", "jpcert-returning", "twcert-originating"}
    assert len(aliases("certbr-publisher")) == 6
    root = ApiRoot(taxii.api_root, user="twcert", password=PASSWORDS["twcert"])
    by_alias = {c.alias: c for c in root.collections}
    originating = by_alias["twcert-originating"]
    assert originating.id == _id("twcert", "originating")
    assert originating.can_read and not originating.can_write
    assert "TWCERT" in originating.title and originating.description


def test_another_partners_collection_is_404_exactly_as_if_absent(taxii: RunningServer) -> None:
    jp = taxii.collection_url(_id("jpcert", "originating"))
    absent = taxii.collection_url(str(uuid.uuid4()))
    some_object = f"indicator--{uuid.uuid4()}"
    for suffix in (
        "",
        "objects/",
        "manifest/",
        f"objects/{some_object}/",
        f"objects/{some_object}/versions/",
    ):
        granted_to_other = _get(jp + suffix, "twcert")
        nonexistent = _get(absent + suffix, "twcert")
        assert granted_to_other.status_code == nonexistent.status_code == 404
        assert granted_to_other.headers["Content-Type"] == TAXII
        assert granted_to_other.json()["title"] == nonexistent.json()["title"]
        assert set(granted_to_other.json()) == set(nonexistent.json())
    # the grant in partners.yaml lets jpcert read one of twcert's collections, not the other
    assert (
        _get(taxii.collection_url(_id("twcert", "originating")) + "objects/", "jpcert").status_code
        == 200
    )
    assert (
        _get(taxii.collection_url(_id("twcert", "returning")) + "objects/", "jpcert").status_code
        == 404
    )


def test_missing_or_wrong_credentials_are_401_taxii_json(taxii: RunningServer) -> None:
    url = taxii.collection_url(_id("twcert", "originating")) + "objects/"
    for response in (
        _get(url, None),
        _get(url, "twcert", "wrong-password"),
        _get(url, "nobody", "whatever-pass"),
        _get(taxii.discovery, None),
        requests.get(url, headers={"Authorization": "Basic !!!"}, timeout=30),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert response.headers["Content-Type"] == TAXII
        assert response.json()["http_status"] == "401"
    with pytest.raises(requests.HTTPError):
        Server(taxii.discovery, user="twcert", password="wrong-password").refresh()


def test_a_partner_removed_from_the_file_loses_access_at_once(taxii: RunningServer) -> None:
    url = taxii.collection_url(_id("jpcert", "originating")) + "objects/"
    assert _get(url, "jpcert").status_code == 200
    partners = Path(taxii.settings.partners)
    original = partners.read_text()
    partners.write_text(partners_yaml(usernames=("twcert", "certpl")))
    assert _get(url, "jpcert").status_code == 401
    assert _get(url, "certbr-publisher").status_code == 404  # its collection is gone too
    partners.write_text(original)
    assert _get(url, "jpcert").status_code == 200


def test_a_broken_edit_keeps_the_last_good_file(taxii: RunningServer) -> None:
    partners = Path(taxii.settings.partners)
    partners.write_text(partners.read_text() + "  oops: [\n")
    assert _get(taxii.discovery, "twcert").status_code == 200


def test_only_the_publisher_writes(taxii: RunningServer) -> None:
    envelope = {"objects": [indicator(1)]}
    url = taxii.collection_url(_id("twcert", "originating"))
    partner = Collection(url, user="twcert", password=PASSWORDS["twcert"])
    with pytest.raises(TAXIIServiceException):  # the client refuses: can_write is false
        partner.add_objects(envelope)
    response = requests.post(
        url + "objects/",
        json=envelope,
        auth=("twcert", PASSWORDS["twcert"]),
        headers={"Accept": TAXII, "Content-Type": TAXII},
        timeout=30,
    )
    assert response.status_code == 403
    assert response.json()["http_status"] == "403"
    response = requests.delete(
        f"{url}objects/{indicator(1)['id']}/",
        auth=("twcert", PASSWORDS["twcert"]),
        headers={"Accept": TAXII},
        timeout=30,
    )
    assert response.status_code == 403


def test_every_read_is_in_the_poll_audit(taxii: RunningServer) -> None:
    collection_id = _id("twcert", "originating")
    with write_transaction(taxii.state.engine) as connection:
        add_objects(connection, collection_id, as_stored([indicator(n) for n in range(30)]))
    url = taxii.collection_url(collection_id)
    before = dt.datetime.now(dt.UTC)
    assert _get(url + "objects/", "twcert", limit="20").status_code == 200
    assert _get(url + "manifest/", "twcert").status_code == 200
    assert _get(url + "objects/", "jpcert").status_code == 200
    assert (
        _get(taxii.collection_url(_id("jpcert", "returning")) + "objects/", "twcert").status_code
        == 404
    )
    taxii.state.audit.flush()
    with taxii.state.engine.connect() as connection:
        polls = last_polls(connection)
        summary = {(s.collection_id, s.username): s for s in poll_summary(connection, before)}
        counts = object_counts(connection)
    assert set(polls) == {(collection_id, "twcert"), (collection_id, "jpcert")}
    assert all(before <= moment <= dt.datetime.now(dt.UTC) for moment in polls.values())
    assert summary[(collection_id, "twcert")].requests == 2
    assert summary[(collection_id, "twcert")].objects_returned == 20 + 30
    assert summary[(collection_id, "jpcert")].objects_returned == 30
    assert counts == {collection_id: 30}


def test_status_belongs_to_the_account_that_posted(taxii: RunningServer) -> None:
    url = taxii.collection_url(_id("twcert", "originating"))
    publisher = Collection(url, user="certbr-publisher", password=PASSWORDS["certbr-publisher"])
    status = publisher.add_objects({"objects": [indicator(4)]})
    status_url = f"{taxii.api_root}status/{status.id}/"
    assert _get(status_url, "certbr-publisher").json()["success_count"] == 1
    assert _get(status_url, "twcert").status_code == 404


def test_a_successful_check_is_remembered_and_a_failed_one_is_not(
    taxii: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = taxii.state.accounts._hasher
    checks: list[str] = []

    class CountingHasher:
        def verify(self, password_hash: str, password: str) -> bool:
            checks.append(password)
            return bool(real.verify(password_hash, password))  # argon2id's own check

    monkeypatch.setattr(taxii.state.accounts, "_hasher", CountingHasher())
    url = taxii.collection_url(_id("twcert", "originating")) + "objects/"
    for _ in range(5):
        assert _get(url, "twcert").status_code == 200
    assert checks == [PASSWORDS["twcert"]]  # paging costs database time, not hashing time
    for _ in range(3):
        assert _get(url, "twcert", "wrong-password").status_code == 401
    assert checks == [PASSWORDS["twcert"]] + ["wrong-password"] * 3


def test_a_new_password_hash_applies_at_once(taxii: RunningServer) -> None:
    url = taxii.collection_url(_id("twcert", "originating")) + "objects/"
    assert _get(url, "twcert").status_code == 200
    partners = Path(taxii.settings.partners)
    text = partners.read_text()
    old_hash = next(line for line in text.splitlines() if "username: twcert," in line)
    new_hash = (
        old_hash.split('password_hash: "')[0]
        + 'password_hash: "'
        + (CHEAP.hash("a-new-password-99") + '"}')
    )
    partners.write_text(text.replace(old_hash, new_hash))
    assert _get(url, "twcert").status_code == 401  # the remembered check named the old hash
    assert _get(url, "twcert", "a-new-password-99").status_code == 200


def test_a_remembered_check_lasts_its_minutes_then_argon2_checks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partners = tmp_path / "partners.yaml"
    partners.write_text(partners_yaml())
    accounts = Accounts(PartnersFile(partners), sleep=lambda _: None)
    now = [1000.0]
    monkeypatch.setattr(accounts_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    real = accounts._hasher
    checks: list[str] = []

    class CountingHasher:
        def verify(self, password_hash: str, password: str) -> bool:
            checks.append(password)
            return bool(real.verify(password_hash, password))

    monkeypatch.setattr(accounts, "_hasher", CountingHasher())
    token = base64.b64encode(f"twcert:{PASSWORDS['twcert']}".encode()).decode()
    for _ in range(3):
        assert accounts.authenticate(f"Basic {token}") is not None
    now[0] += accounts_module.CACHE_SECONDS - 1
    assert accounts.authenticate(f"Basic {token}") is not None
    assert len(checks) == 1
    now[0] += 2  # past the minutes since the check: argon2 again
    assert accounts.authenticate(f"Basic {token}") is not None
    assert len(checks) == 2
