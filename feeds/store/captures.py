"""What ingest keeps of the sensors' captures, and how later stages select from it.

``messages.id`` grows in ingest order and is never reused: it is the watermark a stage keeps
("everything ingested after id N"), and every stage reads captures by such a window (or, for
stats and retention, by ``ts``), through the primary keys: the selection's own columns carry
no index, which would only lead readers to all of history and cost ingest a random page write
each (migration 0010). The ``*_ip_key`` and ``*_rev`` columns make "address in this network"
and "domain at or under this one" plain range comparisons (see :func:`in_network` and
:func:`under_domain`).

On PostgreSQL ``sessions`` and ``messages`` are partitioned by week of ``ts``, their keys
include ``ts`` and nothing can hold a foreign key to ``messages.id`` (see
:mod:`feeds.store.partitions`); SQLite keeps the keys as declared here.
"""

from __future__ import annotations

import ipaddress

import sqlalchemy as sa

from feeds.enrich import network_key_range
from feeds.messages import domain_key_range
from feeds.store import metadata

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=False),
    sa.Column("sensor", sa.String(64), nullable=False),
    sa.Column("session_id", sa.String(200), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("src_ip", sa.String(45), nullable=False),
    sa.Column("src_port", sa.Integer),
    sa.Column("src_cc", sa.String(2)),
    sa.Column("src_asn", sa.BigInteger),
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

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=False),
    sa.Column("sensor", sa.String(64), nullable=False),
    sa.Column("session_id", sa.String(200), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("src_ip", sa.String(45), nullable=False),
    sa.Column("src_ip_key", sa.String(32), nullable=False),
    sa.Column("src_cc", sa.String(2)),
    sa.Column("src_asn", sa.BigInteger),
    sa.Column("src_as_name", sa.String(255)),
    sa.Column("src_cc_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
    sa.Column("src_asn_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
    sa.Column("dst_host", sa.String(255)),
    sa.Column("dst_host_rev", sa.String(256)),
    sa.Column("dst_ip", sa.String(45)),
    sa.Column("dst_ip_key", sa.String(32)),
    sa.Column("dst_cc", sa.String(2)),
    sa.Column("dst_asn", sa.BigInteger),
    sa.Column("dst_as_name", sa.String(255)),
    sa.Column("dst_cc_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
    sa.Column("dst_asn_source", sa.Integer, sa.ForeignKey("enrichment_sources.id")),
    sa.Column("dst_port", sa.Integer),
    sa.Column("mail_from", sa.Text, nullable=False),
    sa.Column("rcpt_count", sa.Integer, nullable=False),
    sa.Column("rcpt_to", sa.Text, nullable=False),  # JSON list, as the sensor gave it
    sa.Column("raw_sha256", sa.String(64), nullable=False),
    sa.Column("raw_size", sa.Integer, nullable=False),
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Column("header_from", sa.Text),
    sa.Column("subject", sa.Text),
    sa.Column("header_date", sa.Text),
    sa.Column("message_id", sa.Text),
    sa.Column("content_types", sa.Text, nullable=False),  # comma-separated
    sa.Column("charsets", sa.Text, nullable=False),
    sa.Column("languages", sa.Text, nullable=False),
    sa.Column("defects", sa.Integer, nullable=False),
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("ingest_batches.id"), nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.UniqueConstraint("sensor", "session_id", "raw_sha256"),
)

message_domains = sa.Table(
    "message_domains",
    metadata,
    sa.Column("message_id", ID, primary_key=True),  # messages.id (see above: no foreign key)
    sa.Column("domain", sa.String(255), primary_key=True),
    sa.Column("domain_rev", sa.String(256), nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),
)

urls = sa.Table(
    "urls",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("domain", sa.String(255), nullable=False),
    sa.Column("first_message_id", ID, nullable=False),
)

message_urls = sa.Table(
    "message_urls",
    metadata,
    sa.Column("message_id", ID, primary_key=True),  # messages.id (see above: no foreign key)
    sa.Column("url_id", ID, sa.ForeignKey("urls.id"), primary_key=True),
    sa.Column("domain", sa.String(255), nullable=False),
)


def in_network(
    key_column: sa.ColumnElement[str],
    network: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> sa.ColumnElement[bool]:
    """``messages.src_ip_key`` / ``dst_ip_key`` lies in ``network``."""
    low, high = network_key_range(network)
    return sa.and_(key_column >= low, key_column <= high)


def under_domain(rev_column: sa.ColumnElement[str], domain: str) -> sa.ColumnElement[bool]:
    """``message_domains.domain_rev`` / ``messages.dst_host_rev`` is ``domain`` or below it."""
    low, high = domain_key_range(domain)
    return sa.and_(rev_column >= low, rev_column < high)
