"""publish: collection watermarks, indicator state for stable ids, signed batches

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_watermarks",
        sa.Column("collection_id", sa.String(36), primary_key=True),
        sa.Column("last_message_id", sa.BigInteger, nullable=False),
        sa.Column("pending_upto", sa.BigInteger),
        sa.Column("pending_cursor", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "feed_indicators",
        sa.Column("collection_id", sa.String(36), primary_key=True),
        sa.Column("value_sha256", sa.String(64), primary_key=True),
        sa.Column("observable_type", sa.String(32), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("indicator_id", sa.String(100), nullable=False),
        sa.Column("created", sa.String(24), nullable=False),
        sa.Column("modified", sa.String(24), nullable=False),
        sa.Column("valid_from", sa.String(24), nullable=False),
        sa.Column("valid_until", sa.String(24), nullable=False),
        sa.Column("expired", sa.Boolean, nullable=False),
    )
    op.create_index(
        "ix_feed_indicators_expiry", "feed_indicators", ["collection_id", "expired", "valid_until"]
    )
    op.create_table(
        "feed_batches",
        sa.Column("batch_id", sa.String(36), primary_key=True),
        sa.Column("collection_id", sa.String(36), nullable=False),
        sa.Column("partner_id", sa.String(40), nullable=False),
        sa.Column("feed", sa.String(16), nullable=False),
        sa.Column("report_id", sa.String(100), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("objects", sa.Integer, nullable=False),
        sa.Column("indicators", sa.Integer, nullable=False),
        sa.Column("expired", sa.Integer, nullable=False),
        sa.Column("after_message_id", sa.BigInteger, nullable=False),
        sa.Column("upto_message_id", sa.BigInteger, nullable=False),
        sa.Column("issued", sa.DateTime(timezone=True), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_feed_batches_collection_issued", "feed_batches", ["collection_id", "issued"]
    )
    op.create_table(
        "feed_object_versions",
        sa.Column("object_id", sa.String(100), primary_key=True),
        sa.Column("content_sha256", sa.String(64), primary_key=True),
        sa.Column("modified", sa.String(24), nullable=False),
    )


def downgrade() -> None:
    for table in ("feed_object_versions", "feed_batches", "feed_indicators", "feed_watermarks"):
        op.drop_table(table)
