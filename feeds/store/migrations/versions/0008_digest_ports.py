"""digest ports: ports per source IP and connections per request type, kept as rollups

The digest grouped every (IP, port, service, request) row of ``digest_session_weeks`` twice,
for the ports of each IP and for the ports abused and request types: on PostgreSQL that
grouping, with the sort of a week's IPs by messages, was most of twcert's digest. Those two
answers are now rollups of their own, filled here from ``digest_session_weeks`` (which has no
reader left and goes), and an index lists a week's IPs busiest first.

Downgrading cannot rebuild the per-IP connection rows: it empties the rollups, which the next
refresh rebuilds over the newest 70 days (feeds/rollups.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence
from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 10_000


def _keys() -> list[sa.Column[str]]:
    return [
        sa.Column("partner_id", sa.String(40), primary_key=True),
        sa.Column("direction", sa.String(12), primary_key=True),
        sa.Column("week", sa.String(10), primary_key=True),
    ]


def _session_weeks() -> list[sa.Column[object]]:
    return [
        *_keys(),
        sa.Column("src_ip", sa.String(45), primary_key=True),
        sa.Column("listen_port", sa.Integer, primary_key=True),
        sa.Column("service", sa.String(16), primary_key=True),
        sa.Column("request", sa.String(16), primary_key=True),
        sa.Column("sessions", sa.Integer, nullable=False),
    ]


def upgrade() -> None:
    ip_ports = op.create_table(
        "digest_ip_ports",
        *_keys(),
        sa.Column("src_ip", sa.String(45), primary_key=True),
        sa.Column("ports", sa.Text, nullable=False),
    )
    op.create_table(
        "digest_request_weeks",
        *_keys(),
        sa.Column("listen_port", sa.Integer, primary_key=True),
        sa.Column("service", sa.String(16), primary_key=True),
        sa.Column("request", sa.String(16), primary_key=True),
        sa.Column("sessions", sa.Integer, nullable=False),
    )
    op.execute(
        "INSERT INTO digest_request_weeks "
        "(partner_id, direction, week, listen_port, service, request, sessions) "
        "SELECT partner_id, direction, week, listen_port, service, request, SUM(sessions) "
        "FROM digest_session_weeks "
        "GROUP BY partner_id, direction, week, listen_port, service, request"
    )
    _fill_ip_ports(ip_ports)
    op.drop_table("digest_session_weeks")
    op.create_index(
        "ix_digest_ip_weeks_busiest",
        "digest_ip_weeks",
        ["partner_id", "direction", "week", sa.text("messages DESC"), "src_ip"],
    )


def _fill_ip_ports(ip_ports: sa.Table) -> None:
    """Each (partner, direction, week, IP)'s distinct ports, ascending, space-separated."""
    bind = op.get_bind()
    pairs = bind.execute(
        sa.text(
            "SELECT DISTINCT partner_id, direction, week, src_ip, listen_port "
            "FROM digest_session_weeks "
            "ORDER BY partner_id, direction, week, src_ip, listen_port"
        )
    ).all()
    rows = [
        {
            "partner_id": key[0],
            "direction": key[1],
            "week": key[2],
            "src_ip": key[3],
            "ports": " ".join(str(pair[4]) for pair in group),
        }
        for key, group in groupby(pairs, key=lambda pair: tuple(pair[:4]))
    ]
    for start in range(0, len(rows), BATCH):
        bind.execute(ip_ports.insert(), rows[start : start + BATCH])


def downgrade() -> None:
    op.drop_index("ix_digest_ip_weeks_busiest", "digest_ip_weeks")
    op.create_table("digest_session_weeks", *_session_weeks())
    op.drop_table("digest_request_weeks")
    op.drop_table("digest_ip_ports")
    for table in (
        "digest_day_totals",
        "digest_ip_weeks",
        "digest_url_weeks",
        "digest_url_domain_weeks",
        "digest_rollup_state",
    ):
        op.execute(sa.table(table).delete())
