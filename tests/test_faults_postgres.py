"""PostgreSQL restarted under the service (a private server, tests/private_postgres.py): a
publish run fails in one line and the next completes it, a TAXII walk goes on with its
``next`` token, nothing is half written."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from private_postgres import PrivatePostgres
from publish_checks import collections, feed_store, generated_feeds, no_half_batch
from taxii2client.v21 import Collection
from taxii_helpers import PASSWORDS, as_stored, indicator, start_taxii

from feeds import cli
from feeds import publish as publish_module
from feeds.home import engine_for
from feeds.jobs import publish_job
from feeds.partners import load_partners
from feeds.publish import publish
from feeds.settings import load_settings
from feeds.store import write_transaction
from feeds.worker import JobSpec, interval, run_job
from taxii_server.objects import add_objects, collection_state, taxii_objects

TAXII = {"Accept": "application/taxii+json;version=2.1"}


def restart_at_batch(
    monkeypatch: pytest.MonkeyPatch, server: PrivatePostgres, batch: int
) -> Callable[[], int]:
    """PostgreSQL restarts as the publisher is about to write its ``batch``-th batch, inside
    that batch's transaction; returns how many batches it began."""
    real_store = publish_module.store_addition
    began = [0]

    def store(connection: Any, addition: Any) -> None:
        began[0] += 1
        if began[0] == batch:
            server.restart()
        real_store(connection, addition)

    monkeypatch.setattr(publish_module, "store_addition", store)
    return lambda: began[0]


def test_postgres_restarted_while_publishing_one_line_then_the_next_run_completes(
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ, generated = generated_feeds({}, tmp_path)
    clean_url = f"sqlite:///{tmp_path}/clean.db"
    clean_env, _ = feed_store(environ, tmp_path, generated.spool, clean_url, "clean")
    publish(load_settings(clean_env))
    url = private_postgres.new_database()
    env, settings = feed_store(environ, tmp_path, generated.spool, url, "restarted")
    # Published in this process, where the patched store_addition restarts the server.
    env = {**env, "SPAMPOTS_PUBLISH_WORKERS": "1"}
    settings = load_settings(env)
    for name in [n for n in os.environ if n.startswith("SPAMPOTS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # spampots publish: the run stops with one line naming the store, no traceback.
    began = restart_at_batch(monkeypatch, private_postgres, 3)
    code = cli.main(["publish"])
    _, err = capsys.readouterr()
    assert began() == 3
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("spampots: error: cannot reach the store")
    assert "internal error" not in err and "Traceback" not in err
    no_half_batch(url)

    # The worker's publish job: one log line, the job recorded as failed, the worker goes on.
    began = restart_at_batch(monkeypatch, private_postgres, 2)
    config = load_partners(settings.partners)
    engine = engine_for(url)
    spec = JobSpec(
        "publish:twcert",
        interval(dt.timedelta(minutes=1)),
        lambda: publish_job(settings, config, engine, "twcert"),
        partner="twcert",
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spampots.worker"):
        assert run_job(engine, spec) is None
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failed) == 1 and not failed[0].exc_info
    assert "publish:twcert failed: cannot reach the store" in failed[0].getMessage()
    no_half_batch(url)

    # The next runs publish what is left, once: as one clean run would have.
    monkeypatch.undo()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["publish"]) == 0
    no_half_batch(url)
    assert collections(url) == collections(clean_url)


def test_a_taxii_walk_goes_on_with_its_next_token_across_postgres_restarts(
    private_postgres: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_postgres.new_database()
    environ = {"SPAMPOTS_HOME": str(tmp_path / "var"), "SPAMPOTS_DATABASE_URL": url}
    with start_taxii(tmp_path, environ) as taxii:
        collection = load_partners(taxii.settings.partners).collection("twcert-originating")
        assert collection is not None
        engine = engine_for(url)
        with write_transaction(engine) as connection:
            add_objects(connection, collection.id, as_stored([indicator(n) for n in range(300)]))
        objects_url = taxii.collection_url(collection.id) + "objects/"
        client = Collection(
            taxii.collection_url(collection.id), user="twcert", password=PASSWORDS["twcert"]
        )
        seen: list[str] = []

        def page(**query: str) -> dict[str, Any]:
            envelope: dict[str, Any] = client.get_objects(limit=50, **query)
            seen.extend(obj["id"] for obj in envelope["objects"])
            return envelope

        envelope = page()
        envelope = page(next=envelope["next"])
        private_postgres.stop()
        with caplog.at_level(logging.INFO, logger="taxii_server.app"):
            down = requests.get(
                objects_url,
                params={"limit": "50", "next": envelope["next"]},
                auth=("twcert", PASSWORDS["twcert"]),
                headers=TAXII,
                timeout=60,
            )
        assert down.status_code == 503
        assert down.headers["Content-Type"].startswith("application/taxii+json")
        assert down.json()["http_status"] == "503" and down.headers["Retry-After"]
        logged = [r for r in caplog.records if r.name == "taxii_server.app"]
        assert len(logged) == 1 and not logged[0].exc_info
        assert "cannot reach the store" in logged[0].getMessage()
        private_postgres.start()
        envelope = page(next=envelope["next"])  # the same token, after the outage
        private_postgres.restart()  # between two pages: the pool finds its connections dead
        while envelope.get("more"):
            envelope = page(next=envelope["next"])

    t = taxii_objects.c
    with engine.connect() as connection:
        stored = list(
            connection.execute(
                sa.select(t.object_id)
                .where(t.collection_id == collection.id)
                .order_by(t.date_added_us)
            ).scalars()
        )
        count = connection.execute(
            sa.select(collection_state.c.object_count).where(
                collection_state.c.collection_id == collection.id
            )
        ).scalar_one()
    assert seen == stored and len(set(seen)) == 300 == count
