"""Reading collections with taxii2-client: paging both ways, every filter, versions, manifest.

Runs on SQLite and on PostgreSQL (the ``database_url`` fixture behind ``taxii``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
import requests
from taxii2client.v21 import Collection, as_pages
from taxii_helpers import PASSWORDS, RunningServer, as_stored, indicator, ipv4

from feeds.store import write_transaction
from taxii_server.objects import add_objects, format_us, to_us

TAXII = "application/taxii+json;version=2.1"


def _load(taxii: RunningServer, alias: str, objects: list[dict[str, Any]]) -> list[int]:
    collection = taxii.state.partners.current().collection(alias)
    assert collection is not None
    with write_transaction(taxii.state.engine) as connection:
        dates = add_objects(connection, collection.id, as_stored(objects))
    return [to_us(d) for d in dates]


def _collection(taxii: RunningServer, alias: str, user: str = "twcert") -> Collection:
    found = taxii.state.partners.current().collection(alias)
    assert found is not None
    return Collection(taxii.collection_url(found.id), user=user, password=PASSWORDS[user])


def _session(user: str = "twcert") -> requests.Session:
    session = requests.Session()
    session.auth = (user, PASSWORDS[user])
    session.headers["Accept"] = TAXII
    return session


@pytest.fixture
def walked(taxii: RunningServer) -> dict[str, Any]:
    """2,400 indicators, 300 of them with a second version, and 300 SCOs, in three batches."""
    first = [indicator(n) for n in range(2400)]
    second = [indicator(n, modified="2026-12-02T10:00:00.000Z") for n in range(0, 2400, 8)]
    scos = [ipv4(n) for n in range(300)]
    _load(taxii, "twcert-originating", first)
    _load(taxii, "twcert-originating", scos)
    _load(taxii, "twcert-originating", second)
    latest = {obj["id"]: obj for obj in first + scos + second}
    return {"latest": latest, "versions": len(first) + len(scos) + len(second)}


def test_as_pages_with_next_visits_every_latest_object_once(
    taxii: RunningServer, walked: dict[str, Any]
) -> None:
    collection = _collection(taxii, "twcert-originating")
    seen: list[dict[str, Any]] = []
    pages = 0
    for envelope in as_pages(collection.get_objects, per_request=700):
        seen.extend(envelope.get("objects", []))
        pages += 1
    assert len(seen) == len({o["id"] for o in seen}) == len(walked["latest"])
    assert {o["id"]: o for o in seen} == walked["latest"]
    assert pages == -(-len(walked["latest"]) // 700)


def test_added_after_from_date_added_last_visits_every_object_once(
    taxii: RunningServer, walked: dict[str, Any]
) -> None:
    collection = _collection(taxii, "twcert-originating")
    session = _session()
    seen: list[str] = []
    added_after = None
    while True:
        params = {"limit": "650"} | ({"added_after": added_after} if added_after else {})
        response = session.get(collection.objects_url, params=params)
        assert response.status_code == 200
        envelope = response.json()
        seen.extend(o["id"] for o in envelope.get("objects", []))
        if not envelope["more"]:
            break
        added_after = response.headers["X-TAXII-Date-Added-Last"]
        assert response.headers["X-TAXII-Date-Added-First"] <= added_after
    assert len(seen) == len(set(seen)) == len(walked["latest"])
    assert set(seen) == set(walked["latest"])


def test_walk_of_all_versions_and_of_the_manifest(
    taxii: RunningServer, walked: dict[str, Any]
) -> None:
    collection = _collection(taxii, "twcert-originating")
    versions = []
    for envelope in as_pages(collection.get_objects, per_request=1000, version="all"):
        versions.extend((o["id"], o.get("modified")) for o in envelope.get("objects", []))
    assert len(versions) == len(set(versions)) == walked["versions"]
    manifest = []
    for envelope in as_pages(collection.get_manifest, per_request=900):
        manifest.extend(envelope.get("objects", []))
    assert [m["id"] for m in manifest] == list({m["id"]: 0 for m in manifest})
    assert {m["id"] for m in manifest} == set(walked["latest"])
    dates = [m["date_added"] for m in manifest]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    assert all(m["media_type"] == "application/stix+json;version=2.1" for m in manifest)


def test_next_without_limit_pages_by_the_server_maximum(
    taxii: RunningServer, walked: dict[str, Any]
) -> None:
    session = _session()
    url = _collection(taxii, "twcert-originating").objects_url
    first = session.get(url, params={"limit": "10"}).json()
    following = session.get(url, params={"next": first["next"]})
    assert following.status_code == 200
    objects = following.json()["objects"]
    assert len(objects) == min(taxii.settings.max_page_size, len(walked["latest"]) - 10)
    assert not {o["id"] for o in objects} & {o["id"] for o in first["objects"]}


def test_pages_carry_the_exact_stored_bytes(taxii: RunningServer) -> None:
    odd = indicator(7) | {"name": "spam from caf\u00e9 \u53f0\u7063", "confidence": 85}
    exact = json.dumps(odd, indent=1, ensure_ascii=False).encode("utf-8")
    assert exact != orjson.dumps(odd)
    collection = taxii.state.partners.current().collection("twcert-originating")
    assert collection is not None
    with write_transaction(taxii.state.engine) as connection:
        add_objects(connection, collection.id, [(odd, exact)])
    response = _session().get(_collection(taxii, "twcert-originating").objects_url)
    assert exact in response.content


def test_added_after_is_strictly_after_at_microsecond_precision(taxii: RunningServer) -> None:
    dates = _load(taxii, "twcert-originating", [indicator(n) for n in range(5)])
    url = _collection(taxii, "twcert-originating").objects_url
    for index, date in enumerate(dates):
        envelope = _session().get(url, params={"added_after": format_us(date)}).json()
        assert [o["id"] for o in envelope.get("objects", [])] == [
            indicator(n)["id"] for n in range(index + 1, 5)
        ]


def test_every_match_filter(taxii: RunningServer) -> None:
    old, new = "2026-12-01T10:00:00.000Z", "2026-12-03T10:00:00.000Z"
    legacy = indicator(90) | {"spec_version": "2.0"}
    _load(taxii, "twcert-originating", [indicator(n) for n in range(6)] + [ipv4(1), legacy])
    _load(taxii, "twcert-originating", [indicator(n, modified=new) for n in (0, 1)])
    collection = _collection(taxii, "twcert-originating")

    def versions_of(**filters: Any) -> list[tuple[str, str | None]]:
        envelope = collection.get_objects(**filters)
        return sorted((o["id"], o.get("modified")) for o in envelope.get("objects", []))

    ids = [indicator(n)["id"] for n in range(6)]
    assert versions_of(id=[ids[0], ids[2]]) == [(ids[0], new), (ids[2], old)]
    assert [i for i, _ in versions_of(type="ipv4-addr")] == [ipv4(1)["id"]]
    assert len(versions_of(type=["indicator", "ipv4-addr"])) == 8
    assert versions_of(id=ids[0], version="first") == [(ids[0], old)]
    assert versions_of(id=ids[0], version="last") == [(ids[0], new)]
    assert versions_of(id=ids[0], version="all") == [(ids[0], old), (ids[0], new)]
    assert versions_of(id=ids[0], version=old) == [(ids[0], old)]
    assert versions_of(id=[ids[0], ids[3]], version=["first", new]) == [
        (ids[0], old),
        (ids[0], new),
        (ids[3], old),
    ]
    assert versions_of(spec_version="2.0") == [(legacy["id"], old)]
    assert len(versions_of(spec_version="2.1")) == 7
    manifest = collection.get_manifest(type="indicator", version="all")["objects"]
    assert len(manifest) == 9
    assert {m["version"] for m in manifest if m["id"] == ids[1]} == {old, new}


def test_object_and_versions_endpoints(taxii: RunningServer) -> None:
    stamps = [f"2026-12-0{day}T10:00:00.000Z" for day in (1, 2, 3)]
    for stamp in stamps:
        _load(taxii, "twcert-originating", [indicator(5, modified=stamp)])
    collection = _collection(taxii, "twcert-originating")
    object_id = indicator(5)["id"]
    assert [o["modified"] for o in collection.get_object(object_id)["objects"]] == stamps[-1:]
    everything = collection.get_object(object_id, version="all")["objects"]
    assert [o["modified"] for o in everything] == stamps
    versions: list[str] = []
    for envelope in as_pages(collection.object_versions, per_request=2, obj_id=object_id):
        versions.extend(envelope["versions"])
    assert versions == stamps
    session = _session()
    for url in (
        f"{collection.objects_url}{object_id}/",
        f"{collection.objects_url}{object_id}/versions/",
        collection.objects_url,
        f"{collection.url}manifest/",
    ):
        response = session.get(url)
        assert response.status_code == 200
        assert (
            response.headers["X-TAXII-Date-Added-First"]
            <= (response.headers["X-TAXII-Date-Added-Last"])
        )
    missing = f"indicator--{uuid.uuid4()}"
    for url in (
        f"{collection.objects_url}{missing}/",
        f"{collection.objects_url}{missing}/versions/",
    ):
        response = session.get(url)
        assert response.status_code == 404
        assert response.json()["http_status"] == "404"


def test_sco_added_again_is_one_object_at_its_new_date(taxii: RunningServer) -> None:
    first = _load(taxii, "twcert-originating", [ipv4(3)])
    again = _load(taxii, "twcert-originating", [ipv4(3) | {"value": "198.51.0.3"}])
    assert again[0] > first[0]
    collection = _collection(taxii, "twcert-originating")
    objects = collection.get_objects(version="all")["objects"]
    assert [o["id"] for o in objects] == [ipv4(3)["id"]]
    manifest = collection.get_manifest()["objects"]
    assert manifest[0]["date_added"] == format_us(again[0]) == manifest[0]["version"]
