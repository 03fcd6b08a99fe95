"""Several ``spampots serve`` processes over one store answer alike: paging keeps no state in a
process, so a walk may go from one to another (as behind a load balancer) with the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import requests
from loopback import spampots_serve
from taxii_helpers import PASSWORDS, as_stored, indicator, ipv4, partners_yaml, taxii_settings

from feeds.home import engine_for, init_home
from feeds.partners import load_partners
from feeds.store import write_transaction
from taxii_server.objects import add_objects

TAXII = "application/taxii+json;version=2.1"


def test_a_walk_alternating_between_two_serve_processes_sees_every_object_once(
    environ: dict[str, str], tmp_path: Path
) -> None:
    partners = tmp_path / "partners.yaml"
    partners.write_text(partners_yaml())
    settings = taxii_settings(environ, partners)
    init_home(settings)
    found = load_partners(partners).collection("twcert-originating")
    assert found is not None
    collection = found.id
    objects = [indicator(n) for n in range(700)] + [ipv4(n) for n in range(150)]
    with write_transaction(engine_for(settings.database_url)) as connection:
        add_objects(connection, collection, as_stored(objects[:400]))
        add_objects(connection, collection, as_stored(objects[400:]))
    env = {**environ, "SPAMPOTS_PARTNERS": str(partners), "SPAMPOTS_AUTH_FAILURE_DELAY": "0"}
    session = requests.Session()
    session.auth = ("twcert", PASSWORDS["twcert"])
    session.headers["Accept"] = TAXII
    path = f"/feeds/collections/{collection}/objects/"

    with spampots_serve(env) as first_server, spampots_serve(env) as second_server:
        first, second = first_server.url, second_server.url
        seen: list[str] = []
        params: dict[str, str] = {"limit": "60"}
        pages = 0
        while True:
            here, there = (first, second) if pages % 2 == 0 else (second, first)
            page = session.get(here + path, params=params, timeout=30)
            assert page.status_code == 200, page.text
            # The other process answers the same request, token and all, byte for byte.
            again = session.get(there + path, params=params, timeout=30)
            assert again.content == page.content
            body = page.json()
            seen.extend(obj["id"] for obj in body.get("objects", []))
            pages += 1
            if not body.get("more"):
                break
            params = {"limit": "60", "next": body["next"]}

    assert len(seen) == len(set(seen)) == len(objects)
    assert set(seen) == {obj["id"] for obj in objects}
    assert pages == -(-len(objects) // 60)
