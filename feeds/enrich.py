"""Address -> country code, AS number and AS name, and which database (and version) said so.

Databases are ``.mmdb`` files read with ``maxminddb`` in either record layout the ecosystem
uses: MaxMind's (``country.iso_code``, ``autonomous_system_number``,
``autonomous_system_organization``) and ip-location-db's (``country_code``,
``autonomous_system_number`` or ``asn``). With none configured, the embedded default is the
data the ``geoip2fast`` package ships (country and AS name from GeoLite2; it has no AS numbers).
Where partners.yaml lists an address's prefix or AS among a partner's networks, that partner's
economy wins, and the answer says so.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import maxminddb
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feeds.errors import ConfigurationError
from feeds.partners import PartnersConfig
from feeds.store import metadata

enrichment_sources = sa.Table(
    "enrichment_sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(100), nullable=False),
    sa.UniqueConstraint("kind", "name", "version"),
)


@dataclass(frozen=True, slots=True)
class Source:
    """A database that answers: ``kind`` is ``country``, ``asn`` or ``partners``."""

    kind: str
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Answer:
    cc: str | None = None
    asn: int | None = None
    as_name: str | None = None
    cc_source: Source | None = None
    asn_source: Source | None = None


NO_ANSWER = Answer()


class Database(Protocol):
    source: Source

    def lookup(self, address: str) -> tuple[str | None, int | None, str | None]: ...


class MmdbDatabase:
    """One .mmdb file; reads whichever of the known layouts its records use."""

    def __init__(self, path: Path, kind: str) -> None:
        try:
            self._reader = _open_private_copy(path)
        except (OSError, maxminddb.InvalidDatabaseError, ValueError) as error:
            raise ConfigurationError(
                f"cannot read the {kind} database {path}: {error}",
                hint=f"set SPAMPOTS_{kind.upper()}_MMDB to a readable .mmdb file, "
                "or to empty for the embedded default",
                path=str(path),
            ) from None
        meta = self._reader.metadata()
        built = dt.datetime.fromtimestamp(meta.build_epoch, dt.UTC).strftime("%Y-%m-%d")
        self.source = Source(kind, f"{meta.database_type} ({path.name})"[:200], built)

    def lookup(self, address: str) -> tuple[str | None, int | None, str | None]:
        try:
            record = self._reader.get(address)
        except ValueError:
            return None, None, None
        if not isinstance(record, dict):
            return None, None, None
        return _country_of(record), _asn_of(record), _as_name_of(record)


def _open_private_copy(path: Path) -> maxminddb.Reader:
    """A reader over a copy of the file that only this process holds.

    The fast reader maps the file into memory; a database rewritten in place meanwhile (``cp``
    over it) would pull the pages from under the mapping, and the next lookup kills the whole
    process with SIGBUS. The copy (a memfd, as large as the file) cannot change; a file
    replaced while being copied fails to open, with a clear error, instead.
    """
    if not hasattr(os, "memfd_create"):
        return maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    fd = os.memfd_create(f"spampots-{path.name}", os.MFD_CLOEXEC)
    try:
        with path.open("rb") as source, open(os.dup(fd), "wb") as copy:
            shutil.copyfileobj(source, copy)
        return maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_MMAP_EXT)
    finally:
        os.close(fd)  # the mapping keeps the copy as long as the reader lives


def _country_of(record: dict[str, Any]) -> str | None:
    for holder in ("country", "registered_country"):
        value = record.get(holder)
        if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
            return _cc(value["iso_code"])
    code = record.get("country_code")
    return _cc(code) if isinstance(code, str) else None


def _cc(code: str) -> str | None:
    code = code.strip().upper()
    return code if len(code) == 2 and code.isalpha() else None


def _asn_of(record: dict[str, Any]) -> int | None:
    for key in ("autonomous_system_number", "asn"):
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value if 0 < value < 2**32 else None
        if isinstance(value, str):
            digits = value.strip().upper().removeprefix("AS")
            if digits.isdigit() and 0 < int(digits) < 2**32:
                return int(digits)
    return None


def _as_name_of(record: dict[str, Any]) -> str | None:
    for key in ("autonomous_system_organization", "as_name", "as_organization", "org"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:255]
    return None


class EmbeddedDatabase:
    """The data shipped by the ``geoip2fast`` package: country and AS name, IPv4 and IPv6."""

    DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"

    def __init__(self) -> None:
        from geoip2fast import GeoIP2Fast  # loads ~0.5 s of data: only when it is used

        self._db = GeoIP2Fast(geoip2fast_data_file=self.DATA_FILE, verbose=False)
        info = self._db.get_database_info()
        version = str(info.get("source_info", "unknown")).removeprefix("MAXMIND:")
        self.source = Source("country", "geoip2fast (embedded)", version[:100])

    def lookup(self, address: str) -> tuple[str | None, int | None, str | None]:
        try:
            result = self._db.lookup(address)
        except Exception:  # geoip2fast raises its own errors for unparsable input
            return None, None, None
        if getattr(result, "is_private", False):
            return None, None, None
        code = getattr(result, "country_code", "")
        name = getattr(result, "asn_name", "") or None
        return _cc(code) if isinstance(code, str) else None, None, name


@dataclass(frozen=True)
class Override:
    """A partner's networks from partners.yaml: addresses here belong to its economy."""

    partner_id: str
    economy: str
    prefixes: tuple[str, ...]
    asns: frozenset[int]


@dataclass(frozen=True)
class EnrichmentConfig:
    """What a worker process needs to build its own :class:`Enricher` (picklable)."""

    country_mmdb: str = ""
    asn_mmdb: str = ""
    overrides: tuple[Override, ...] = ()
    partners_version: str = ""

    @classmethod
    def from_settings(cls, settings: Any, partners: PartnersConfig | None) -> EnrichmentConfig:
        overrides: list[Override] = []
        version = ""
        if partners is not None:
            for partner in partners.partners.values():
                networks = partner.networks
                if networks.prefixes or networks.asns:
                    overrides.append(
                        Override(
                            partner.id,
                            partner.economy,
                            tuple(str(p) for p in networks.prefixes),
                            frozenset(networks.asns),
                        )
                    )
            path = Path(settings.partners)
            if path.is_file():
                version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return cls(str(settings.country_mmdb), str(settings.asn_mmdb), tuple(overrides), version)


class Enricher:
    """Answers for addresses, remembered per address (sensors see the same abusers often)."""

    def __init__(self, config: EnrichmentConfig) -> None:
        self.country_db: Database = (
            MmdbDatabase(Path(config.country_mmdb), "country")
            if config.country_mmdb
            else EmbeddedDatabase()
        )
        self.asn_db: Database | None = (
            MmdbDatabase(Path(config.asn_mmdb), "asn") if config.asn_mmdb else None
        )
        self._overrides = [
            (
                override,
                [ipaddress.ip_network(prefix) for prefix in override.prefixes],
                Source(
                    "partners",
                    f"partners.yaml networks of {override.partner_id}",
                    config.partners_version or "unknown",
                ),
            )
            for override in config.overrides
        ]
        self.lookup = functools.lru_cache(maxsize=200_000)(self._lookup)

    def _lookup(self, address: str) -> Answer:
        cc, asn, as_name = self.country_db.lookup(address)
        cc_source = self.country_db.source if cc else None
        asn_source = self.country_db.source if (asn or as_name) else None
        if self.asn_db is not None:
            _, db_asn, db_name = self.asn_db.lookup(address)
            if db_asn or db_name:
                asn, as_name, asn_source = db_asn, db_name, self.asn_db.source
            if not cc:
                other_cc = self.asn_db.lookup(address)[0]
                if other_cc:
                    cc, cc_source = other_cc, self.asn_db.source
        if self._overrides:
            ip = ipaddress.ip_address(address)
            for override, networks, source in self._overrides:
                if (asn is not None and asn in override.asns) or any(
                    ip in network for network in networks
                ):
                    cc, cc_source = override.economy, source
                    break
        if not (cc or asn or as_name):
            return NO_ANSWER
        return Answer(cc, asn, as_name, cc_source, asn_source)


@functools.lru_cache(maxsize=100_000)
def ip_key(address: str) -> str:
    """A fixed-width sortable key of an address: IPv4 as IPv4-mapped IPv6, 32 hex digits.

    An address lies in a network when its key is within :func:`network_key_range`.
    """
    ip = ipaddress.ip_address(address)
    number = int(ip) | 0xFFFF_0000_0000 if ip.version == 4 else int(ip)
    return f"{number:032x}"


def network_key_range(
    network: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> tuple[str, str]:
    """``(low, high)`` keys, both inclusive, of the addresses of ``network``."""
    net = ipaddress.ip_network(network) if isinstance(network, str) else network
    return ip_key(str(net.network_address)), ip_key(str(net.broadcast_address))


class SourceIds:
    """Ids of :data:`enrichment_sources` rows, created on first use."""

    def __init__(self) -> None:
        self._ids: dict[Source, int] = {}

    def id_for(self, connection: Connection, source: Source | None) -> int | None:
        if source is None:
            return None
        known = self._ids.get(source)
        if known is not None:
            return known
        table = enrichment_sources
        where = sa.and_(
            table.c.kind == source.kind,
            table.c.name == source.name,
            table.c.version == source.version,
        )
        found = connection.execute(sa.select(table.c.id).where(where)).scalar()
        if found is None:
            connection.execute(
                table.insert().values(kind=source.kind, name=source.name, version=source.version)
            )
            found = connection.execute(sa.select(table.c.id).where(where)).scalar_one()
        self._ids[source] = int(found)
        return int(found)

    def forget(self) -> None:
        """After a rolled-back transaction the ids it created no longer exist."""
        self._ids.clear()
