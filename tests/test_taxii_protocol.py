"""The TAXII 2.1 protocol where medallion gets it wrong: Accept, errors as TAXII JSON, bad
parameters as 400, 413/415 on POST, status resources; discovery and ``spampots serve``."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
import requests
from loopback import free_port, spampots_serve
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages
from taxii_helpers import (
    PASSWORDS,
    RunningServer,
    as_stored,
    indicator,
    partners_yaml,
    start_taxii,
)

from feeds.partners import COLLECTION_NAMESPACE
from feeds.store import write_transaction
from taxii_server.objects import add_objects

TAXII = "application/taxii+json;version=2.1"
TW_ORIGINATING = str(uuid.uuid5(COLLECTION_NAMESPACE, "twcert/originating"))
AUTH = ("twcert", PASSWORDS["twcert"])
PUBLISHER = ("certbr-publisher", PASSWORDS["certbr-publisher"])


def test_discovery_and_api_root(taxii: RunningServer) -> None:
    server = Server(taxii.discovery, user="twcert", password=PASSWORDS["twcert"])
    assert server.title and server.contact == "cert@example.org"
    assert [root.url for root in server.api_roots] == [taxii.api_root]
    assert server.default.url == taxii.api_root
    root = ApiRoot(taxii.api_root, user="twcert", password=PASSWORDS["twcert"])
    assert root.versions == [TAXII]
    assert root.max_content_length == taxii.settings.max_request_bytes
    response = requests.get(taxii.url + "/nope/", auth=AUTH, headers={"Accept": TAXII}, timeout=30)
    assert response.status_code == 404 and response.json()["http_status"] == "404"


ACCEPTABLE = [
    "application/taxii+json",
    "*/*",
    "application/*",
    "text/html, application/taxii+json;q=0.5",
    None,
]
UNACCEPTABLE = ["application/taxii+json;version=2.0", "text/html", "application/taxii+json;q=0"]
MALFORMED = [
    "added_after=garbage",
    "added_after=2026-13-01T00:00:00Z",
    "limit=0",
    "limit=-5",
    "limit=ten",
    "next=not-a-token",
    "match[version]=yesterday",
    "match[type]=Bad!Type",
    "match[id]=nonsense",
    "match[spec_version]=latest",
    "match[colour]=red",
    "match[type]=",
]


def test_unversioned_and_wildcard_accept_are_taxii_2_1(taxii: RunningServer) -> None:
    for accept in ACCEPTABLE:
        session = requests.Session()
        if accept is None:
            del session.headers["Accept"]
        else:
            session.headers["Accept"] = accept
        for url in (taxii.discovery, taxii.collection_url(TW_ORIGINATING) + "objects/"):
            response = session.get(url, auth=AUTH, timeout=30)
            assert response.status_code == 200, (accept, response.text)
            assert response.headers["Content-Type"] == TAXII


def test_unacceptable_accept_is_406_json(taxii: RunningServer) -> None:
    for accept in UNACCEPTABLE:
        response = requests.get(taxii.discovery, auth=AUTH, headers={"Accept": accept}, timeout=30)
        assert response.status_code == 406, accept
        assert response.headers["Content-Type"] == TAXII
        assert response.json()["http_status"] == "406"


def test_malformed_parameters_are_400_taxii_json(taxii: RunningServer) -> None:
    base = taxii.collection_url(TW_ORIGINATING)
    for query in MALFORMED:
        for endpoint in ("objects/", "manifest/"):
            response = requests.get(
                f"{base}{endpoint}?{query}", auth=AUTH, headers={"Accept": TAXII}, timeout=30
            )
            assert response.status_code == 400, (endpoint, query, response.text)
            assert response.headers["Content-Type"] == TAXII
            body = response.json()
            assert body["http_status"] == "400" and body["description"]


def test_errors_are_never_html(taxii: RunningServer) -> None:
    base = taxii.collection_url(TW_ORIGINATING)
    wrong_method = requests.put(base + "objects/", auth=AUTH, timeout=30)
    assert wrong_method.status_code == 405
    assert "GET" in wrong_method.headers["Allow"]
    for response in (wrong_method, requests.get(taxii.url + "/a/b/c", auth=AUTH, timeout=30)):
        assert response.headers["Content-Type"] == TAXII
        assert orjson.loads(response.content)["http_status"] == str(response.status_code)
    for response in (wrong_method, requests.get(taxii.discovery, timeout=30)):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


def test_post_with_status_then_read_and_delete(taxii: RunningServer) -> None:
    publisher = Collection(
        taxii.collection_url(TW_ORIGINATING), user=PUBLISHER[0], password=PUBLISHER[1]
    )
    bad = {"type": "indicator", "id": "indicator--not-a-uuid"}
    status = publisher.add_objects({"objects": [indicator(1), indicator(2), bad]})
    assert status.status == "complete"
    assert (status.total_count, status.success_count, status.failure_count) == (3, 2, 1)
    assert {s["id"] for s in status.successes} == {indicator(1)["id"], indicator(2)["id"]}
    assert "not a STIX identifier" in status.failures[0]["message"]
    status.refresh()  # from the store, through the status endpoint
    assert status.success_count == 2
    partner = Collection(taxii.collection_url(TW_ORIGINATING), user=AUTH[0], password=AUTH[1])
    assert [o["id"] for o in partner.get_objects()["objects"]] == [
        indicator(1)["id"],
        indicator(2)["id"],
    ]
    publisher.delete_object(indicator(1)["id"])
    assert [o["id"] for o in partner.get_objects()["objects"]] == [indicator(2)["id"]]


def test_post_size_and_content_type(
    taxii: RunningServer, tmp_path: Path, environ: dict[str, str]
) -> None:
    url = taxii.collection_url(TW_ORIGINATING) + "objects/"
    wrong_type = requests.post(
        url,
        data=b'{"objects": []}',
        auth=PUBLISHER,
        timeout=30,
        headers={"Accept": TAXII, "Content-Type": "application/json"},
    )
    assert wrong_type.status_code == 415 and wrong_type.json()["http_status"] == "415"
    not_json = requests.post(
        url,
        data=b"{objects",
        auth=PUBLISHER,
        timeout=30,
        headers={"Accept": TAXII, "Content-Type": TAXII},
    )
    assert not_json.status_code == 400 and not_json.json()["http_status"] == "400"
    small = tmp_path / "small"
    small.mkdir()
    with start_taxii(small, environ, max_request_bytes="4096") as limited:
        big = orjson.dumps({"objects": [indicator(n) for n in range(20)]})
        for data in (big, iter([big])):  # with Content-Length, and chunked without it
            response = requests.post(
                limited.collection_url(TW_ORIGINATING) + "objects/",
                data=data,
                auth=PUBLISHER,
                timeout=30,
                headers={"Accept": TAXII, "Content-Type": TAXII},
            )
            assert response.status_code == 413
            assert response.json()["http_status"] == "413"


def test_healthz_and_jwks_answer_without_credentials(taxii: RunningServer) -> None:
    health = requests.get(taxii.url + "/healthz", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    keys = requests.get(taxii.url + "/.well-known/jwks.json", timeout=30).json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519"


def twcert_successes(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "spampots_taxii_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels == {"partner": "twcert", "status": "200"}
    )


def test_spampots_serve_pages_statelessly_across_workers(
    tmp_path: Path, environ: dict[str, str], database_url: str
) -> None:
    from taxii_helpers import taxii_settings

    from feeds.home import engine_for, init_home

    partners = tmp_path / "partners.yaml"
    partners.write_text(partners_yaml())
    settings = taxii_settings(environ, partners)
    init_home(settings)
    with write_transaction(engine_for(database_url)) as connection:
        add_objects(connection, TW_ORIGINATING, as_stored([indicator(n) for n in range(450)]))
    env = {**environ, "SPAMPOTS_PARTNERS": str(partners)}
    with spampots_serve(env, "--workers", "2") as server:
        url = server.url
        collection = Collection(
            f"{url}/feeds/collections/{TW_ORIGINATING}/", user=AUTH[0], password=AUTH[1]
        )
        seen = []
        for envelope in as_pages(collection.get_objects, per_request=40):
            seen.extend(o["id"] for o in envelope["objects"])
        assert len(seen) == len(set(seen)) == 450
        # /metrics adds up every worker's samples, whichever worker answers it
        before = twcert_successes(url)
        for _ in range(20):
            requests.get(
                f"{url}/feeds/collections/{TW_ORIGINATING}/objects/?limit=1",
                auth=AUTH,
                headers={"Accept": TAXII},
                timeout=30,
            )
        assert [twcert_successes(url) - before for _ in range(4)] == [20] * 4
    output = server.output
    assert "Booting worker" in output


def test_spampots_serve_says_what_is_missing(run_cli: object, tmp_path: Path) -> None:
    code, _, err = run_cli("serve", "--port", str(free_port()))  # type: ignore[operator]
    assert code != 0
    assert "spampots init" in err


def test_metrics_count_taxii_requests_per_partner_and_status(
    taxii: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    # this process's own samples, whatever other tests set up for many processes
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    def counts() -> dict[tuple[str, str], float]:
        text = requests.get(taxii.url + "/metrics", timeout=30).text
        return {
            (s.labels["partner"], s.labels["status"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "spampots_taxii_requests"
            for s in family.samples
            if s.name.endswith("_total")
        }

    before = counts()
    objects = taxii.collection_url(TW_ORIGINATING) + "objects/"
    for _ in range(2):
        requests.get(objects, auth=AUTH, headers={"Accept": TAXII}, timeout=30)
    requests.get(objects + "?limit=0", auth=AUTH, headers={"Accept": TAXII}, timeout=30)
    requests.get(objects, auth=PUBLISHER, headers={"Accept": TAXII}, timeout=30)
    requests.get(objects, headers={"Accept": TAXII}, timeout=30)
    requests.get(taxii.url + "/healthz", timeout=30)
    after = counts()
    gained = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert gained == {
        ("twcert", "200"): 2,
        ("twcert", "400"): 1,
        ("publisher", "200"): 1,
        ("unauthenticated", "401"): 1,
    }
