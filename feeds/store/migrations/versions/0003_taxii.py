"""taxii: collection objects, collection state, status resources, poll audit

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "taxii_objects",
        sa.Column("row_id", RowId, autoincrement=True),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("object_id", sa.String(300), nullable=False),
        sa.Column("object_type", sa.String(250), nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("version_us", sa.BigInteger, nullable=False),
        sa.Column("date_added_us", sa.BigInteger, nullable=False),
        sa.Column("is_last", sa.Boolean, nullable=False),
        sa.Column("is_first", sa.Boolean, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("row_id", name="pk_taxii_objects"),
        sa.UniqueConstraint(
            "collection_id", "date_added_us", name="uq_taxii_objects_collection_id_date_added_us"
        ),
        sa.UniqueConstraint(
            "collection_id",
            "object_id",
            "version_us",
            name="uq_taxii_objects_collection_id_object_id_version_us",
        ),
    )
    op.create_index(
        "ix_taxii_objects_last", "taxii_objects", ["collection_id", "is_last", "date_added_us"]
    )
    op.create_index(
        "ix_taxii_objects_type", "taxii_objects", ["collection_id", "object_type", "date_added_us"]
    )
    op.create_table(
        "taxii_collection_state",
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("last_added_us", sa.BigInteger, nullable=False),
        sa.Column("object_count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("collection_id", name="pk_taxii_collection_state"),
    )
    op.create_table(
        "taxii_status",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_taxii_status"),
    )
    op.create_index("ix_taxii_status_created_us", "taxii_status", ["created_us"])
    op.create_table(
        "taxii_polls",
        sa.Column("id", RowId, autoincrement=True),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("objects_returned", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_taxii_polls"),
    )
    op.create_index(
        "ix_taxii_polls_collection_id_username_polled_at",
        "taxii_polls",
        ["collection_id", "username", "polled_at"],
    )
    op.create_index("ix_taxii_polls_polled_at", "taxii_polls", ["polled_at"])


def downgrade() -> None:
    op.drop_table("taxii_polls")
    op.drop_table("taxii_status")
    op.drop_table("taxii_collection_state")
    op.drop_index("ix_taxii_objects_type", table_name="taxii_objects")
    op.drop_index("ix_taxii_objects_last", table_name="taxii_objects")
    op.drop_table("taxii_objects")
