"""domains by window: message_domains is read by message id only

The returning selection asks which messages of a publishing window were aimed at a partner's
domains. With an index on (domain_rev, message_id) PostgreSQL and SQLite answered it by reading
every row of those domains since the store began, filtering the window's ids out of them, a cost
that grew with the store's history. Without it, the primary key (message_id, domain) reads the
window's rows and nothing else. Nothing else reads that index.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_message_domains_domain_rev", table_name="message_domains")


def downgrade() -> None:
    op.create_index(
        "ix_message_domains_domain_rev", "message_domains", ["domain_rev", "message_id"]
    )
