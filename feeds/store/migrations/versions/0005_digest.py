"""digest: weekly rollups and daily totals per partner and direction; digests sent

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _keys() -> list[sa.Column[str]]:
    return [
        sa.Column("partner_id", sa.String(40), primary_key=True),
        sa.Column("direction", sa.String(12), primary_key=True),
        sa.Column("week", sa.String(10), primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "digest_rollup_state",
        sa.Column("partner_id", sa.String(40), primary_key=True),
        sa.Column("networks", sa.String(64), nullable=False),
        sa.Column("messages_done", ID, nullable=False),
        sa.Column("sessions_done", ID, nullable=False),
        sa.Column("covers_from", sa.String(10)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "digest_day_totals",
        sa.Column("partner_id", sa.String(40), primary_key=True),
        sa.Column("direction", sa.String(12), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("messages", sa.Integer, nullable=False),
    )
    op.create_table(
        "digest_ip_weeks",
        *_keys(),
        sa.Column("src_ip", sa.String(45), primary_key=True),
        sa.Column("src_asn", sa.BigInteger),
        sa.Column("src_as_name", sa.String(255)),
        sa.Column("src_cc", sa.String(2)),
        sa.Column("messages", sa.Integer, nullable=False),
        sa.Column("recipients", sa.BigInteger, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "digest_url_weeks",
        *_keys(),
        sa.Column("url_id", ID, primary_key=True),
        sa.Column("messages", sa.Integer, nullable=False),
    )
    op.create_table(
        "digest_url_domain_weeks",
        *_keys(),
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("messages", sa.Integer, nullable=False),
    )
    op.create_table(
        "digest_session_weeks",
        *_keys(),
        sa.Column("src_ip", sa.String(45), primary_key=True),
        sa.Column("listen_port", sa.Integer, primary_key=True),
        sa.Column("service", sa.String(16), primary_key=True),
        sa.Column("request", sa.String(16), primary_key=True),
        sa.Column("sessions", sa.Integer, nullable=False),
    )
    op.create_table(
        "digest_deliveries",
        sa.Column("partner_id", sa.String(40), primary_key=True),
        sa.Column("week", sa.String(8), primary_key=True),
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("report_id", sa.String(80), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sends", sa.Integer, nullable=False),
        sa.Column("intent_at", sa.DateTime(timezone=True)),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("server_reply", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name="status"),
    )


def downgrade() -> None:
    for table in (
        "digest_deliveries",
        "digest_session_weeks",
        "digest_url_domain_weeks",
        "digest_url_weeks",
        "digest_ip_weeks",
        "digest_day_totals",
        "digest_rollup_state",
    ):
        op.drop_table(table)
