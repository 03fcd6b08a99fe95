"""Raw messages in the data folder, content-addressed by SHA-256, compressed, written once.

``<raw_dir>/pack-<h>.sqlite``, one pack per first hex digit ``h`` of the digest: a SQLite table
digest -> zlib-compressed message. A file per message cost ingest more than parsing it (about a
million files and folders created a day); a pack takes a whole chunk of messages in one
transaction. Sharding by digest gives every message exactly one place (so it is kept once however
often it recurs) and lets parallel ingest workers mostly write different packs.

Data folders written before the packs hold ``<raw_dir>/ab/cd/<sha256>.eml.gz`` files;
:func:`read_raw` still finds those.
"""

from __future__ import annotations

import gzip
import re
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from feeds.errors import StoreError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARDS = "0123456789abcdef"
_LOCK_TIMEOUT = 60.0
_SCHEMA = "CREATE TABLE IF NOT EXISTS raw (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL)"


def pack_path(raw_dir: Path, sha256: str) -> Path:
    return Path(raw_dir) / f"pack-{sha256[0]}.sqlite"


def legacy_path(raw_dir: Path, sha256: str) -> Path:
    """Where data folders from before the packs kept a message."""
    return Path(raw_dir) / sha256[:2] / sha256[2:4] / f"{sha256}.eml.gz"


def _open(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    connection = sqlite3.connect(
        f"{path.absolute().as_uri()}?mode={mode}",
        uri=True,
        timeout=_LOCK_TIMEOUT,
        isolation_level=None,
    )
    _switch_to_wal(connection)
    connection.execute("PRAGMA synchronous=NORMAL")
    if create:
        connection.execute(_SCHEMA)
    return connection


def _switch_to_wal(connection: sqlite3.Connection) -> None:
    # Two ingest workers may make the same new pack at once. Switching a database to WAL takes
    # a lock that SQLite does not wait for, whatever the busy timeout ("database is locked" in
    # about one such race in twenty); the other's switch ends in moments.
    deadline = time.monotonic() + _LOCK_TIMEOUT
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class RawPacks:
    """The packs of one data folder, open for writing by one process."""

    def __init__(self, raw_dir: Path) -> None:
        self.raw_dir = Path(raw_dir)
        self._connections: dict[str, sqlite3.Connection] = {}

    def keep(self, raws: Mapping[str, bytes]) -> int:
        """Keep each ``digest -> raw`` not kept yet; returns how many this call wrote.

        Committed when it returns: rows that name these digests may be committed after it.
        """
        by_shard: dict[str, dict[bytes, bytes]] = {}
        for digest, raw in raws.items():
            by_shard.setdefault(digest[0], {})[bytes.fromhex(digest)] = raw
        written = 0
        for shard, items in by_shard.items():
            connection = self._connection(shard)
            keys = list(items)
            present: set[bytes] = set()
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                present.update(
                    row[0]
                    for row in connection.execute(
                        f"SELECT sha256 FROM raw WHERE sha256 IN ({marks})",  # noqa: S608
                        part,
                    )
                )
            # Compressed before the write lock is taken: another worker may wait on this pack.
            rows = [
                (key, zlib.compress(raw, 6)) for key, raw in items.items() if key not in present
            ]
            if not rows:
                continue
            connection.execute("BEGIN IMMEDIATE")
            try:
                before = connection.total_changes
                connection.executemany("INSERT OR IGNORE INTO raw VALUES (?, ?)", rows)
                written += connection.total_changes - before
                self._commit(connection)
            except BaseException:
                connection.rollback()
                raise
        return written

    def _commit(self, connection: sqlite3.Connection) -> None:
        connection.execute("COMMIT")  # one step of the crash tests (tests/crash_child.py)

    def _connection(self, shard: str) -> sqlite3.Connection:
        connection = self._connections.get(shard)
        if connection is None:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            connection = _open(pack_path(self.raw_dir, shard), create=True)
            self._connections[shard] = connection
        return connection

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()


def read_raw(raw_dir: Path, sha256: str) -> bytes:
    """The exact bytes of the raw message with this digest."""
    if not _SHA256.fullmatch(sha256):
        raise StoreError(f"not a SHA-256 digest: {sha256!r}", hint="give 64 lowercase hex digits")
    pack = pack_path(raw_dir, sha256)
    if pack.is_file():
        try:
            connection = _open(pack, create=False)
            try:
                row = connection.execute(
                    "SELECT data FROM raw WHERE sha256 = ?", (bytes.fromhex(sha256),)
                ).fetchone()
            finally:
                connection.close()
            if row is not None:
                return zlib.decompress(row[0])
        except (sqlite3.Error, zlib.error) as error:
            raise StoreError(
                f"raw message pack {pack} is damaged: {error}",
                hint="restore raw/ from a backup, or re-ingest the batches that carried it",
            ) from None
    path = legacy_path(raw_dir, sha256)
    try:
        return gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise StoreError(
            f"raw message {sha256} is not in {raw_dir}",
            hint="check SPAMPOTS_HOME: raw messages live in its raw/ folder",
        ) from None
    except (OSError, EOFError, zlib.error) as error:
        raise StoreError(
            f"raw message file {path} is damaged: {error}",
            hint="re-ingest the batch that carried it",
        ) from None


def kept_digests(raw_dir: Path) -> Iterator[str]:
    """The digest of every raw message kept in ``raw_dir`` (packs and older files)."""
    raw_dir = Path(raw_dir)
    for shard in _SHARDS:
        pack = pack_path(raw_dir, shard)
        if pack.is_file():
            connection = _open(pack, create=False)
            try:
                for (key,) in connection.execute("SELECT sha256 FROM raw ORDER BY sha256"):
                    yield bytes(key).hex()
            finally:
                connection.close()
    for path in sorted(raw_dir.glob("??/??/*.eml.gz")):
        yield path.name.removesuffix(".eml.gz")
