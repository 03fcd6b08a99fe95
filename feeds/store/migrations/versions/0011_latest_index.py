"""latest index: only each object's newest version is in the index that default pages read

TAXII's default ``match[version]=last`` pages through a collection's newest versions in date
order. The index on (collection, is_last, date_added) also held every earlier version, so that
each new version of an indicator moved the previous one from one part of the index to
another: two random page writes where one does. Now it holds the newest versions only; an
object's new version takes the previous one out of it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_taxii_objects_last", table_name="taxii_objects")
    op.create_index(
        "ix_taxii_objects_last",
        "taxii_objects",
        ["collection_id", "date_added_us"],
        sqlite_where=sa.text("is_last = 1"),
        postgresql_where=sa.text("is_last"),
    )


def downgrade() -> None:
    op.drop_index("ix_taxii_objects_last", table_name="taxii_objects")
    op.create_index(
        "ix_taxii_objects_last", "taxii_objects", ["collection_id", "is_last", "date_added_us"]
    )
