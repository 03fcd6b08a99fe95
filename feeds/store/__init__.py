"""The store: one SQLAlchemy schema for SQLite (the embedded default) and PostgreSQL.

Tables are defined with SQLAlchemy Core on :data:`metadata`, each in the module of its subject;
the schema is created and changed only by the Alembic migrations in ``migrations/``.
"""

from feeds.store.engine import (
    bulk_insert,
    bulk_insert_values,
    connect,
    driver_mark,
    metadata,
    migrate,
    restart_long_log,
    store_unavailable,
    write_transaction,
)
from feeds.store.times import as_utc, as_utc_or_none

__all__ = [
    "as_utc",
    "as_utc_or_none",
    "bulk_insert",
    "bulk_insert_values",
    "connect",
    "driver_mark",
    "metadata",
    "migrate",
    "restart_long_log",
    "store_unavailable",
    "write_transaction",
]
