"""window reads: the captures keep only the indexes their readers use

Every stage reads captures by a window of message ids (publish and the digest rollups) or of
time (stats, retention), and finds them through the primary keys and ``ix_messages_ts``. The
indexes on the selection's keys (country with time, AS, address and host keys) answered
"which messages of this window came from TW" by reading all of TW's history since the store
began and dropping what lay outside the window: on SQLite the planner took them for every
partner, a cost that grew with the store, as ``ix_message_domains_domain_rev`` did (0009).
``ix_messages_raw_sha256`` and the URL tables' ``url_id`` and ``domain`` indexes had no reader.

Each of these indexes is keyed by addresses, digests or domains, so every ingested message
wrote a random page of each of them: at a million messages that was most of what ingest wrote
to the disk.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = (
    ("messages", "ix_messages_src_cc_ts", ["src_cc", "ts"]),
    ("messages", "ix_messages_dst_cc_ts", ["dst_cc", "ts"]),
    ("messages", "ix_messages_src_asn", ["src_asn"]),
    ("messages", "ix_messages_dst_asn", ["dst_asn"]),
    ("messages", "ix_messages_src_ip_key", ["src_ip_key"]),
    ("messages", "ix_messages_dst_ip_key", ["dst_ip_key"]),
    ("messages", "ix_messages_dst_host_rev", ["dst_host_rev"]),
    ("messages", "ix_messages_raw_sha256", ["raw_sha256"]),
    ("urls", "ix_urls_domain", ["domain"]),
    ("message_urls", "ix_message_urls_url_id", ["url_id"]),
    ("message_urls", "ix_message_urls_domain", ["domain"]),
)


def upgrade() -> None:
    for table, name, _columns in DROPPED:
        op.drop_index(name, table_name=table)


def downgrade() -> None:
    for table, name, columns in DROPPED:
        op.create_index(name, table, columns)
