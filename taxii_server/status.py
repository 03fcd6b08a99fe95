"""Status resources of POSTs: kept in the store (so any server process can answer for them)
for a week, well past the 24 hours the TAXII specification asks for."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feeds.store import metadata
from taxii_server.objects import ONE_MICROSECOND, now_us

KEEP = dt.timedelta(days=7)

taxii_status = sa.Table(
    "taxii_status",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("collection_id", sa.String(36), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False, index=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)


def save_status(
    connection: Connection, status: dict[str, Any], username: str, collection_id: str
) -> None:
    created = now_us()
    connection.execute(
        taxii_status.delete().where(taxii_status.c.created_us < created - KEEP // ONE_MICROSECOND)
    )
    connection.execute(
        taxii_status.insert().values(
            id=status["id"],
            username=username,
            collection_id=collection_id,
            created_us=created,
            body=orjson.dumps(status),
        )
    )


def load_status(connection: Connection, status_id: str, username: str) -> Any:
    """The status resource, if it exists and this account created it; else None."""
    body = connection.execute(
        sa.select(taxii_status.c.body).where(
            taxii_status.c.id == status_id, taxii_status.c.username == username
        )
    ).scalar_one_or_none()
    return orjson.loads(body) if body is not None else None
