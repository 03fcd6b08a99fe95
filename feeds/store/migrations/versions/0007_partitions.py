"""partitions: messages and sessions by week on PostgreSQL (SQLite keeps plain tables)

Each table is rebuilt as a range-partitioned one with the same columns, its rows copied into
weekly partitions (feeds/store/partitions.py), its indexes and foreign keys recreated. Its
primary and unique keys gain ``ts``, as PostgreSQL requires of a partitioned table; so nothing
can reference ``messages.id`` alone any more, and the foreign keys of ``message_domains`` and
``message_urls`` to it go (retention removes those rows with their messages).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from feeds.store.partitions import ensure_weeks, week_start

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("sessions", "messages")
CHILDREN = ("message_domains", "message_urls")  # what referenced messages.id
WEEK_STEP = "7 days"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    inspector = sa.inspect(op.get_bind())
    for child in CHILDREN:
        for key in inspector.get_foreign_keys(child):
            if key["referred_table"] == "messages":
                op.drop_constraint(key["name"], child, type_="foreignkey")
    for table in TABLES:
        _rebuild(table, partitioned=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        _rebuild(table, partitioned=False)
    for child in CHILDREN:
        op.create_foreign_key(
            f"fk_{child}_message_id_messages", child, "messages", ["message_id"], ["id"]
        )


def _rebuild(table: str, *, partitioned: bool) -> None:
    """``table`` again, partitioned on ``ts`` or not, with its rows, keys and indexes."""
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    primary = inspector.get_pk_constraint(table)
    uniques = inspector.get_unique_constraints(table)
    indexes = [i for i in inspector.get_indexes(table) if not i.get("duplicates_constraint")]
    foreign = inspector.get_foreign_keys(table)
    old = f"{table}_0007_old"
    op.rename_table(table, old)
    # Index and constraint names are the schema's, not the table's: free them for the new table.
    for name in [primary["name"], *(u["name"] for u in uniques), *(i["name"] for i in indexes)]:
        op.execute(f'ALTER INDEX "{name}" RENAME TO "{name[:50]}_0007_old"')
    tail = " PARTITION BY RANGE (ts)" if partitioned else ""
    op.execute(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS){tail}')
    if partitioned:
        span = sa.text(f'SELECT min(ts), max(ts) FROM "{old}"')  # noqa: S608
        first, last = bind.execute(span).one()
        if first is not None:
            mondays = bind.execute(
                sa.text(
                    "SELECT generate_series(CAST(:first AS timestamptz), "
                    f"CAST(:last AS timestamptz), interval '{WEEK_STEP}')"
                ),
                {"first": week_start(first), "last": last},
            ).scalars()
            ensure_weeks(bind, table, list(mondays))
    op.execute(f'INSERT INTO "{table}" SELECT * FROM "{old}"')  # noqa: S608
    op.drop_table(old)

    def keyed(columns: list[str]) -> list[str]:
        plain = [c for c in columns if c != "ts"]
        return [*plain, "ts"] if partitioned else plain

    op.create_primary_key(f"pk_{table}", table, keyed(primary["constrained_columns"]))
    for unique in uniques:
        columns = keyed(unique["column_names"])
        op.create_unique_constraint(f"uq_{table}_{'_'.join(columns)}", table, columns)
    for index in indexes:
        op.create_index(index["name"], table, index["column_names"])
    for key in foreign:
        op.create_foreign_key(
            key["name"],
            table,
            key["referred_table"],
            key["constrained_columns"],
            key["referred_columns"],
        )
