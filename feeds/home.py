"""The data folder and the store behind it: what ``spampots init`` sets up, idempotently."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from feeds.errors import StoreError
from feeds.keys import SigningKey, ensure_active_key
from feeds.settings import Settings
from feeds.store import connect, migrate
from feeds.store.engine import is_current


@dataclass
class InitReport:
    created_folders: list[Path] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)
    key: SigningKey | None = None
    new_key: bool = False

    def lines(self) -> list[str]:
        lines = [f"created {folder}" for folder in self.created_folders]
        if self.migrations:
            lines.append(f"migrated the store to {', '.join(self.migrations)}")
        if self.key is not None and self.new_key:
            lines.append(f"created signing key {self.key.kid}")
        if not lines:
            active = f"; signing key {self.key.kid} active" if self.key else ""
            lines.append(f"nothing to do: the data folder and store are up to date{active}")
        return lines


def data_folders(settings: Settings) -> list[Path]:
    spool = Path(settings.spool)
    return [
        Path(settings.home),
        spool / "incoming",
        spool / "raw",
        settings.raw_dir,
        settings.outbox_dir,
        Path(settings.keys_dir),
    ]


def init_home(settings: Settings) -> InitReport:
    report = InitReport()
    for folder in data_folders(settings):
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            report.created_folders.append(folder)
    Path(settings.keys_dir).chmod(0o700)
    engine = engine_for(settings.database_url)
    report.migrations = migrate(engine)
    report.key, report.new_key = ensure_active_key(engine, Path(settings.keys_dir))
    return report


@functools.cache
def engine_for(url: str) -> Engine:
    """One engine (and pool) per store URL for the life of the process."""
    return connect(url)


def open_store(settings: Settings) -> Engine:
    """The store, checked to be migrated: stages call this rather than migrating on their own."""
    engine = engine_for(settings.database_url)
    try:
        current = is_current(engine)
    except Exception as error:  # the driver's own error types differ per database
        raise StoreError(
            f"cannot reach the store: {error}",
            hint="check SPAMPOTS_DATABASE_URL and that the database runs",
        ) from None
    if not current:
        raise StoreError(
            "the store is not initialised or not migrated to this version",
            hint="run 'spampots init'",
        )
    return engine
