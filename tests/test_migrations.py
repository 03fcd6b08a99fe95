"""The migrations build exactly the schema the code defines, as one line of revisions."""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from feeds.home import init_home
from feeds.settings import Settings
from feeds.store import metadata
from feeds.store.engine import _alembic_config

TABLE_MODULES = (
    "feeds.keys",
    "feeds.leader",
    "feeds.worker",
    "feeds.store.captures",
    "feeds.batches",
    "feeds.batch",
    "feeds.enrich",
    "feeds.publish",
    "feeds.rollups",
    "feeds.deliveries",
    "taxii_server.objects",
    "taxii_server.audit",
    "taxii_server.status",
)


def test_revisions_form_one_line_with_one_head(initialised: Settings) -> None:
    engine = sa.create_engine(initialised.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        script = ScriptDirectory.from_config(_alembic_config(connection))
    engine.dispose()
    assert len(script.get_heads()) == 1
    revisions = list(script.walk_revisions())
    assert all(len(rev._all_down_revisions) <= 1 for rev in revisions)


def test_every_table_the_code_defines_exists_with_the_same_columns(settings: Settings) -> None:
    for module in TABLE_MODULES:
        importlib.import_module(module)
    init_home(settings)
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    inspector = sa.inspect(engine)
    in_store = set(inspector.get_table_names()) - {"alembic_version"}
    assert set(metadata.tables) == in_store
    for name, table in metadata.tables.items():
        columns = {column["name"] for column in inspector.get_columns(name)}
        assert columns == {column.name for column in table.columns}, name
    engine.dispose()
