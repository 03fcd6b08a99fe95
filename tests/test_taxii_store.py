"""add_objects as the publisher calls it: inside its transaction, all or nothing, dates unique
and increasing even with writers at the same time; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import uuid

import pytest
import requests
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from taxii_helpers import PASSWORDS, RunningServer, as_stored, indicator, ipv4

from feeds.home import engine_for
from feeds.partners import COLLECTION_NAMESPACE
from feeds.settings import Settings
from feeds.store import metadata, write_transaction
from taxii_server.errors import InvalidObject
from taxii_server.objects import (
    ALL_VERSIONS,
    LATEST,
    Query,
    VersionFilter,
    add_objects,
    delete_versions,
    format_us,
    object_counts,
    page_statement,
    taxii_objects,
    to_us,
)

TAXII = "application/taxii+json;version=2.1"
TW = str(uuid.uuid5(COLLECTION_NAMESPACE, "twcert/originating"))


def _poll(taxii: RunningServer, **params: str) -> requests.Response:
    return requests.get(
        taxii.collection_url(TW) + "objects/",
        params=params,
        timeout=30,
        auth=("twcert", PASSWORDS["twcert"]),
        headers={"Accept": TAXII},
    )


def _ids(response: requests.Response) -> list[str]:
    return [o["id"] for o in response.json().get("objects", [])]


def test_a_batch_is_invisible_until_committed(taxii: RunningServer) -> None:
    engine = taxii.state.engine
    with write_transaction(engine) as connection:
        add_objects(connection, TW, as_stored([indicator(n) for n in range(50)]))
        assert _ids(_poll(taxii)) == []
    assert len(_ids(_poll(taxii))) == 50
    with pytest.raises(RuntimeError), write_transaction(engine) as connection:
        add_objects(connection, TW, as_stored([indicator(n) for n in range(50, 80)]))
        raise RuntimeError("the publisher fails before committing its watermark")
    assert len(_ids(_poll(taxii))) == 50
    with engine.connect() as connection:
        assert object_counts(connection) == {TW: 50}


def test_dates_are_unique_increasing_utc_microseconds(taxii: RunningServer) -> None:
    engine = taxii.state.engine
    dates: list[dt.datetime] = []
    for start in (0, 300, 600):
        with write_transaction(engine) as connection:
            dates += add_objects(
                connection, TW, as_stored([indicator(n) for n in range(start, start + 300)])
            )
    assert all(d.tzinfo is not None and d.utcoffset() == dt.timedelta(0) for d in dates)
    assert all(a < b for a, b in itertools.pairwise(dates))
    manifest = requests.get(
        taxii.collection_url(TW) + "manifest/",
        timeout=30,
        auth=("twcert", PASSWORDS["twcert"]),
        headers={"Accept": TAXII},
    )
    assert [m["date_added"] for m in manifest.json()["objects"]] == [
        format_us(to_us(d)) for d in dates[:1000]
    ]


def test_concurrent_publishers_never_add_behind_a_reader(taxii: RunningServer) -> None:
    """A reader polling added_after = the last date it saw must get every object exactly once
    while two writers add batches to the same collection."""
    engine = taxii.state.engine
    done = threading.Event()
    errors: list[BaseException] = []

    def publish(offset: int) -> None:
        try:
            for batch in range(12):
                first = offset + batch * 40
                with write_transaction(engine) as connection:
                    add_objects(
                        connection, TW, as_stored([indicator(n) for n in range(first, first + 40)])
                    )
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    writers = [threading.Thread(target=publish, args=(o,)) for o in (0, 100_000)]
    for writer in writers:
        writer.start()
    seen: list[str] = []
    added_after = "1970-01-01T00:00:00Z"

    def drain() -> None:
        nonlocal added_after
        while True:
            response = _poll(taxii, added_after=added_after, limit="500")
            seen.extend(_ids(response))
            if "X-TAXII-Date-Added-Last" in response.headers:
                added_after = response.headers["X-TAXII-Date-Added-Last"]
            if not response.json()["more"]:
                return

    threading.Thread(target=lambda: [w.join() for w in writers] and done.set()).start()
    while not done.is_set():
        drain()
    drain()
    assert not errors
    assert len(seen) == len(set(seen)) == 2 * 12 * 40


def test_an_invalid_object_writes_nothing(taxii: RunningServer) -> None:
    bad = indicator(3) | {"modified": "last tuesday"}
    with (
        pytest.raises(InvalidObject, match="modified"),
        write_transaction(taxii.state.engine) as connection,
    ):
        add_objects(connection, TW, as_stored([indicator(1), bad]))
    assert _ids(_poll(taxii)) == []
    for broken in (
        {"id": "indicator--1"},
        {"type": "ipv4-addr", "id": indicator(1)["id"]},
        ["not", "a", "dict"],
    ):
        with pytest.raises(InvalidObject), write_transaction(taxii.state.engine) as connection:
            add_objects(connection, TW, [(broken, b"{}")])  # type: ignore[list-item]


def test_the_same_version_added_again_moves_and_replaces(taxii: RunningServer) -> None:
    engine = taxii.state.engine
    with write_transaction(engine) as connection:
        first = add_objects(connection, TW, as_stored([indicator(1), indicator(2)]))
        again = add_objects(connection, TW, as_stored([indicator(1) | {"name": "renamed"}]))
    assert again[0] > first[1]
    objects = _poll(taxii, **{"match[version]": "all"}).json()["objects"]
    assert [(o["id"], o["name"]) for o in objects] == [
        (indicator(2)["id"], "spam source 2"),
        (indicator(1)["id"], "renamed"),
    ]
    with engine.connect() as connection:
        assert object_counts(connection) == {TW: 2}


def test_a_middle_version_added_again_and_an_unversioned_add_keep_the_versions_right(
    taxii: RunningServer,
) -> None:
    """Adding reads only each object's first and last version from the store: a version in
    between added again still replaces its row, and the object added without a version
    replaces every versioned row it had."""
    engine = taxii.state.engine
    stamps = [f"2026-12-0{day}T10:00:00.000Z" for day in (1, 2, 3)]
    with write_transaction(engine) as connection:
        for stamp in stamps:
            add_objects(connection, TW, as_stored([indicator(7, modified=stamp)]))
    with write_transaction(engine) as connection:
        renamed = indicator(7, modified=stamps[1]) | {"name": "renamed"}
        add_objects(connection, TW, as_stored([renamed]))

    def versions(version: str) -> list[tuple[str, str]]:
        response = _poll(taxii, **{"match[version]": version})
        return [(o.get("modified", "none"), o["name"]) for o in response.json()["objects"]]

    assert versions("all") == [
        (stamps[0], "spam source 7"),
        (stamps[2], "spam source 7"),
        (stamps[1], "renamed"),
    ]
    assert versions("first") == [(stamps[0], "spam source 7")]
    assert versions("last") == [(stamps[2], "spam source 7")]
    unversioned = {k: v for k, v in indicator(7).items() if k not in ("created", "modified")}
    with write_transaction(engine) as connection:
        add_objects(connection, TW, as_stored([unversioned | {"name": "one left"}]))
        assert object_counts(connection) == {TW: 1}
    assert versions("all") == versions("first") == versions("last") == [("none", "one left")]


def test_deleting_versions_keeps_first_and_last_right(taxii: RunningServer) -> None:
    engine = taxii.state.engine
    stamps = [f"2026-12-0{day}T10:00:00.000Z" for day in (1, 2, 3)]
    with write_transaction(engine) as connection:
        for stamp in stamps:
            add_objects(connection, TW, as_stored([indicator(9, modified=stamp), ipv4(9)]))
        assert (
            delete_versions(connection, TW, indicator(9)["id"], VersionFilter(last=True), ()) == 1
        )
        assert (
            delete_versions(connection, TW, indicator(9)["id"], VersionFilter(first=True), ()) == 1
        )

    def modified(version: str) -> list[str]:
        response = _poll(taxii, **{"match[type]": "indicator", "match[version]": version})
        return [o["modified"] for o in response.json()["objects"]]

    assert modified("first") == modified("last") == modified("all") == stamps[1:2]
    with write_transaction(engine) as connection:
        assert delete_versions(connection, TW, indicator(9)["id"], ALL_VERSIONS, ()) == 1
        assert object_counts(connection) == {TW: 1}


def test_the_migration_creates_the_tables_as_defined(initialised: Settings) -> None:
    engine = engine_for(initialised.database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = [
            d
            for d in compare_metadata(context, metadata)
            if "taxii" in repr(d) and not repr(d).startswith("('remove_table'")
        ]
    assert differences == []


def page_plans(settings: Settings, ids: tuple[str, ...]) -> list[tuple[Query, list[str]]]:
    """SQLite's plan of a page for 32 combinations of the other filters."""
    engine = engine_for(settings.database_url)
    filters = itertools.product(
        (LATEST, ALL_VERSIONS, VersionFilter(first=True), VersionFilter(exact=(5,))),
        (None, 5),  # added_after, or a next token
        ((), ("indicator",)),
        ((), ("2.1",)),
    )
    plans = []
    with engine.connect() as connection:
        for versions, after, types, spec_versions in filters:
            query = Query(
                TW,
                100,
                after_us=after,
                ids=ids,
                types=types,
                versions=versions,
                spec_versions=spec_versions,
            )
            sql = page_statement(query, taxii_objects.c.body).compile(
                engine, compile_kwargs={"literal_binds": True}
            )
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            plans.append((query, [row[3] for row in plan]))
    return plans


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_objects_asked_for_by_id_are_found_through_the_id_index(initialised: Settings) -> None:
    """GET .../objects/{id}/, its versions and match[id]: SQLite keeps no statistics, and left
    to choose it walked a date index in order, reading the whole collection to find one
    object (seconds in a collection of millions)."""
    ids = ("indicator--6f1a2c3e-4b5d-4e6f-8a9b-0c1d2e3f4a5b",)
    for query, steps in page_plans(initialised, ids):
        assert any("(collection_id=? AND object_id=?" in step for step in steps), (query, steps)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pages_without_ids_walk_a_date_index_in_order(initialised: Settings) -> None:
    """A partner's poll (latest versions by default): the (collection, date) index, or the
    (collection, type, date) one for types, walked in date order; never a sort of the
    collection, which would read all of it for every page."""
    for query, steps in page_plans(initialised, ()):
        # sqlite_autoindex_taxii_objects_1: the unique (collection_id, date_added_us)
        index = "ix_taxii_objects_type" if query.types else "sqlite_autoindex_taxii_objects_1"
        assert len(steps) == 1 and f"USING INDEX {index} (collection_id=?" in steps[0], (
            query,
            steps,
        )
