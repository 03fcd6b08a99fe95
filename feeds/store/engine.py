"""Engines, transactions and migrations for the store."""

from __future__ import annotations

import contextlib
import datetime as dt
import operator
import sqlite3
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from feeds.errors import StoreError
from feeds.store.partitions import PARTITIONED, ensure_weeks

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class StoreUnavailable(StoreError):
    """The database server could not be reached, or went away during the work (restarted,
    stopped): what was not committed is rolled back, a later run does it again."""


def store_unavailable(
    error: sa.exc.OperationalError, url: str | sa.URL | None = None
) -> StoreError:
    """One clear error, without the driver's traceback, for a store that failed under the work:
    a server that does not answer, or an SQLite file that cannot be written."""
    where = f" at {sa.make_url(url).render_as_string(hide_password=True)}" if url else ""
    reason = " ".join(str(error.orig or error).split())
    if isinstance(error.orig, sqlite3.Error):  # a file, not a server: full disk, locked, schema
        return StoreError(
            f"the store{where} could not do its work: {reason}",
            hint="check the data folder's free space and permissions and that `spampots init` "
            "has brought the store to the newest schema; nothing half written is kept, run again",
        )
    return StoreUnavailable(
        f"cannot reach the store{where}: {reason}",
        hint="check SPAMPOTS_DATABASE_URL and that the database server runs; nothing half "
        "written is kept, run again when it answers",
    )


# How long a connection waits for another's lock (the sqlite3 module's timeout).
_BUSY_TIMEOUT_MS = 60_000
# restart_long_log waits for other connections only once the log is this many times too long.
_IMPATIENT_UP_TO = 4


def connect(url: str, **engine_options: Any) -> Engine:
    """An engine for the store at ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000}, **engine_options
        )
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, **engine_options)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Checkpoint every ~80 MB of log instead of SQLite's 4 MB, which a chunk of ingest fills:
    # one checkpoint (and its two fsyncs) per ten chunks instead of one per chunk, and a page
    # that several chunks touch is copied into the database once. Ingest into a store of a
    # million messages: 16.6 s -> 14.3 s for the next 48,000 (bench/README.md).
    cursor.execute("PRAGMA wal_autocheckpoint=20000")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # A writer that begins deferred and upgrades its lock later can fail at once with
    # "database is locked" instead of waiting; writers begin IMMEDIATE to queue up instead.
    mode = "IMMEDIATE" if connection.get_execution_options().get("write") else "DEFERRED"
    connection.exec_driver_sql(f"BEGIN {mode}")


@contextlib.contextmanager
def write_transaction(engine: Engine, *, page_cache_mib: int = 0) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock when it begins.

    ``page_cache_mib``: on SQLite, the connection's page cache for this transaction (a large
    write touches more index pages than the default 2 MB holds, and spills them to the log
    over and over); its usual size comes back afterwards."""
    with engine.connect().execution_options(write=True) as connection:
        # On the driver's connection: through SQLAlchemy, the pragma would begin a transaction.
        cursor = connection.connection.cursor() if connection.dialect.name == "sqlite" else None
        if cursor is not None and page_cache_mib:
            before = cursor.execute("PRAGMA cache_size").fetchone()[0]
            cursor.execute(f"PRAGMA cache_size=-{int(page_cache_mib) * 1024}")
        try:
            with connection.begin():
                yield connection
        finally:
            if cursor is not None:
                if page_cache_mib:
                    cursor.execute(f"PRAGMA cache_size={int(before)}")
                cursor.close()


def restart_long_log(engine: Engine, most_bytes: int) -> None:
    """On SQLite, once the write-ahead log's file has grown past ``most_bytes``: copy the log
    into the database and have the next write start it over from its beginning. If another
    connection is writing or reading the log, it is left for the next call, unless the file
    is several times too long: only then does it wait (up to the busy timeout) for them to
    finish. Waiting idled a publishing process while the other wrote a whole commit group;
    not waiting, a seed-week's log peaked at ~4 GB and the run took 2% less time
    (bench/README.md). The file keeps its length (writing over pages already in the
    system's cache is cheaper than growing a truncated file again), at most ``most_bytes``
    once a connection with that ``journal_size_limit`` starts it over. (Copying the log from
    the publishers' parent instead measured no faster: bench/README.md.)

    Processes that take turns reading and writing (the publishing processes) can keep some
    reader on the log at every moment; the passive checkpoints SQLite makes on its own then
    never reach the log's end, and the log grows without bound (24 GB in a seed-week's
    publishing, bench/README.md), slowing every read."""
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return
    try:
        size = Path(f"{engine.url.database}-wal").stat().st_size
    except FileNotFoundError:
        return
    if size > most_bytes:
        with engine.connect() as connection:
            # On the driver's connection: through SQLAlchemy, the pragma would begin a
            # transaction, whose snapshot would itself hold the log.
            cursor = connection.connection.cursor()
            patient = size > _IMPATIENT_UP_TO * most_bytes
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS if patient else 0}")
            try:
                cursor.execute("PRAGMA wal_checkpoint(RESTART)")
            finally:
                cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                cursor.close()


def bulk_insert(
    connection: Connection, table: sa.Table, rows: list[dict[str, Any]], *, ignore: bool = False
) -> None:
    """executemany straight to the driver: at ingest volumes SQLAlchemy's per-row parameter
    processing costs as much as SQLite's own work. On PostgreSQL the weeks of partitioned
    tables' rows get their partitions first. Values are converted as SQLAlchemy would
    store them (SQLite: UTC timestamps as text; booleans the driver stores as 0 and 1)."""
    if not rows:
        return
    columns = list(rows[0])
    if connection.dialect.name == "sqlite":
        convert = [c for c in columns if isinstance(table.c[c].type, sa.DateTime)]
        if convert:
            rows = [{**row, **{c: sqlite_value(row[c]) for c in convert}} for row in rows]
    elif table.name in PARTITIONED:
        ensure_weeks(connection, table.name, {row["ts"] for row in rows})
    as_tuple = operator.itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    bulk_insert_values(connection, table, columns, list(map(as_tuple, rows)), ignore=ignore)


def bulk_insert_values(
    connection: Connection,
    table: sa.Table,
    columns: Sequence[str],
    values: list[tuple[Any, ...]],
    *,
    ignore: bool = False,
) -> None:
    """:func:`bulk_insert` of rows already as tuples in the order of ``columns``, with values
    the driver takes as they are (no timestamps on SQLite), into a table without partitions."""
    if not values:
        return
    names = ", ".join(columns)
    marks = ", ".join([driver_mark(connection)] * len(columns))
    if connection.dialect.name == "sqlite":
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        sql = f"{verb} INTO {table.name} ({names}) VALUES ({marks})"
    else:
        tail = " ON CONFLICT DO NOTHING" if ignore else ""
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks}){tail}"  # noqa: S608
    connection.exec_driver_sql(sql, values)


def driver_mark(connection: Connection) -> str:
    """The driver's parameter mark, for SQL sent straight to it (exec_driver_sql)."""
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def sqlite_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("feeds.store").joinpath("migrations"))
    )
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> list[str]:
    """Bring the schema to the newest revision; returns the revisions applied."""
    try:
        with engine.connect().execution_options(write=True) as connection:
            before = set(MigrationContext.configure(connection).get_current_heads())
            connection.commit()
            command.upgrade(_alembic_config(connection), "heads")
            connection.commit()
            after = set(MigrationContext.configure(connection).get_current_heads())
    except sa.exc.OperationalError as error:
        raise store_unavailable(error, engine.url) from None
    return sorted(after - before)


def is_current(engine: Engine) -> bool:
    """Whether the store is at the newest revision of every migration branch."""
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
        heads = set(ScriptDirectory.from_config(_alembic_config(connection)).get_heads())
    return current == heads
