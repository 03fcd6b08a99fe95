"""ingest: batches, sessions, messages, recipient domains, URLs, quarantine, enrichment sources

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Ids are assigned by the (serialised) ingest writer in ingest order, so they never autoincrement.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ASN = sa.BigInteger()  # AS numbers go up to 2**32 - 1


def upgrade() -> None:
    op.create_table(
        "enrichment_sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.UniqueConstraint("kind", "name", "version"),
    )
    op.create_table(
        "ingest_batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("lines_done", sa.Integer, nullable=False),
        sa.Column("records_read", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("quarantined", sa.Integer, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('running', 'done')", name="status"),
    )
    op.create_table(
        "sessions",
        sa.Column("id", ID, primary_key=True, autoincrement=False),
        sa.Column("sensor", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("src_ip", sa.String(45), nullable=False),
        sa.Column("src_port", sa.Integer),
        sa.Column("src_cc", sa.String(2)),
        sa.Column("src_asn", ASN),
        sa.Column("service", sa.String(16), nullable=False),
        sa.Column("listen_port", sa.Integer, nullable=False),
        sa.Column("dst_host", sa.String(255)),
        sa.Column("dst_port", sa.Integer),
        sa.Column("result", sa.String(8), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("ingest_batches.id"), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.UniqueConstraint("sensor", "session_id"),
    )
    op.create_index("ix_sessions_ts", "sessions", ["ts"])
    op.create_table(
        "messages",
        sa.Column("id", ID, primary_key=True, autoincrement=False),
        sa.Column("sensor", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("src_ip", sa.String(45), nullable=False),
        sa.Column("src_ip_key", sa.String(32), nullable=False),
        sa.Column("src_cc", sa.String(2)),
        sa.Column("src_asn", ASN),
        sa.Column("src_as_name", sa.String(255)),
        sa.Column("src_cc_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
        sa.Column("src_asn_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
        sa.Column("dst_host", sa.String(255)),
        sa.Column("dst_host_rev", sa.String(256)),
        sa.Column("dst_ip", sa.String(45)),
        sa.Column("dst_ip_key", sa.String(32)),
        sa.Column("dst_cc", sa.String(2)),
        sa.Column("dst_asn", ASN),
        sa.Column("dst_as_name", sa.String(255)),
        sa.Column("dst_cc_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
        sa.Column("dst_asn_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
        sa.Column("dst_port", sa.Integer),
        sa.Column("mail_from", sa.Text, nullable=False),
        sa.Column("rcpt_count", sa.Integer, nullable=False),
        sa.Column("rcpt_to", sa.Text, nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.Column("raw_size", sa.Integer, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("header_from", sa.Text),
        sa.Column("subject", sa.Text),
        sa.Column("header_date", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("content_types", sa.Text, nullable=False),
        sa.Column("charsets", sa.Text, nullable=False),
        sa.Column("languages", sa.Text, nullable=False),
        sa.Column("defects", sa.Integer, nullable=False),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("ingest_batches.id"), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.UniqueConstraint("sensor", "session_id", "raw_sha256"),
    )
    op.create_index("ix_messages_ts", "messages", ["ts"])
    op.create_index("ix_messages_src_cc_ts", "messages", ["src_cc", "ts"])
    op.create_index("ix_messages_dst_cc_ts", "messages", ["dst_cc", "ts"])
    op.create_index("ix_messages_src_asn", "messages", ["src_asn"])
    op.create_index("ix_messages_dst_asn", "messages", ["dst_asn"])
    op.create_index("ix_messages_src_ip_key", "messages", ["src_ip_key"])
    op.create_index("ix_messages_dst_ip_key", "messages", ["dst_ip_key"])
    op.create_index("ix_messages_dst_host_rev", "messages", ["dst_host_rev"])
    op.create_index("ix_messages_raw_sha256", "messages", ["raw_sha256"])
    op.create_table(
        "message_domains",
        sa.Column("message_id", ID, sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("domain_rev", sa.String(256), nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_message_domains_domain_rev", "message_domains", ["domain_rev", "message_id"]
    )
    op.create_table(
        "urls",
        sa.Column("id", ID, primary_key=True, autoincrement=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("first_message_id", ID, nullable=False),
    )
    op.create_index("ix_urls_domain", "urls", ["domain"])
    op.create_table(
        "message_urls",
        sa.Column("message_id", ID, sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("url_id", ID, sa.ForeignKey("urls.id"), primary_key=True),
        sa.Column("domain", sa.String(255), nullable=False),
    )
    op.create_index("ix_message_urls_url_id", "message_urls", ["url_id"])
    op.create_index("ix_message_urls_domain", "message_urls", ["domain"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("ingest_batches.id"), nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("batch_id", "line"),
        sa.CheckConstraint("status IN ('held', 'released')", name="status"),
    )
    op.create_index("ix_quarantine_status", "quarantine", ["status"])


def downgrade() -> None:
    for table in (
        "quarantine",
        "message_urls",
        "urls",
        "message_domains",
        "messages",
        "sessions",
        "ingest_batches",
        "enrichment_sources",
    ):
        op.drop_table(table)
