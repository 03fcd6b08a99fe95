"""Which worker is active: one runs the jobs, a standby waits and takes over when it goes.

On PostgreSQL the active worker holds a session advisory lock on a connection of its own: if
the worker dies, its connection closes and the lock is free at once. On SQLite it holds a lease
row that it renews; a standby takes the row over once the lease has expired.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feeds.store import as_utc_or_none, metadata, write_transaction

log = logging.getLogger(__name__)

worker_leases = sa.Table(
    "worker_leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(200)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
)

LEASE_NAME = "worker"


class Leadership:
    def __init__(self, engine: Engine, holder: str, lease: dt.timedelta) -> None:
        self.engine = engine
        self.holder = holder
        self.lease = lease
        self._lock_connection: Connection | None = None
        # Advisory locks are per database; the schema in the key keeps deployments that share
        # a database (one schema each) apart.
        self._key = f"spampots:{LEASE_NAME}"

    @property
    def uses_advisory_lock(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def try_acquire(self) -> bool:
        """Become the active worker if no other is; True when this worker is active."""
        if self.uses_advisory_lock:
            return self._try_advisory_lock()
        return self._try_lease()

    def still_held(self) -> bool:
        """Renew what makes this worker active; False when it has lost it."""
        if self.uses_advisory_lock:
            if self._lock_connection is None:
                return False
            try:
                self._lock_connection.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.DBAPIError:
                log.warning("lost the database connection that holds the worker lock")
                self._drop_lock_connection()
                return False
        return self._try_lease()

    def release(self) -> None:
        if self.uses_advisory_lock:
            if self._lock_connection is not None:
                with contextlib.suppress(sa.exc.DBAPIError):
                    self._lock_connection.execute(
                        sa.text("SELECT pg_advisory_unlock(hashtext(current_schema() || :key))"),
                        {"key": self._key},
                    )
                self._drop_lock_connection()
            return
        with write_transaction(self.engine) as connection:
            connection.execute(
                worker_leases.update()
                .where(worker_leases.c.name == LEASE_NAME, worker_leases.c.holder == self.holder)
                .values(holder=None, expires_at=None)
            )

    def current_holder(self) -> str | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(worker_leases.c.holder, worker_leases.c.expires_at).where(
                    worker_leases.c.name == LEASE_NAME
                )
            ).first()
        if row is None or row.holder is None:
            return None
        expires = as_utc_or_none(row.expires_at)
        return row.holder if expires and expires > dt.datetime.now(dt.UTC) else None

    def _try_advisory_lock(self) -> bool:
        if self._lock_connection is not None:
            return self.still_held()
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(hashtext(current_schema() || :key))"),
                {"key": self._key},
            ).scalar()
        except sa.exc.DBAPIError:
            connection.close()
            raise
        if got:
            self._lock_connection = connection
            return True
        connection.close()
        return False

    def _drop_lock_connection(self) -> None:
        if self._lock_connection is not None:
            try:
                self._lock_connection.invalidate()
                self._lock_connection.close()
            except sa.exc.DBAPIError:
                pass
            self._lock_connection = None

    def _try_lease(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        expires = now + self.lease
        with write_transaction(self.engine) as connection:
            row = connection.execute(
                sa.select(worker_leases.c.holder, worker_leases.c.expires_at).where(
                    worker_leases.c.name == LEASE_NAME
                )
            ).first()
            if row is None:
                connection.execute(
                    worker_leases.insert().values(
                        name=LEASE_NAME, holder=self.holder, expires_at=expires
                    )
                )
                return True
            held_until = as_utc_or_none(row.expires_at)
            free = row.holder is None or held_until is None or held_until <= now
            if row.holder == self.holder or free:
                connection.execute(
                    worker_leases.update()
                    .where(worker_leases.c.name == LEASE_NAME)
                    .values(holder=self.holder, expires_at=expires)
                )
                return True
        return False
