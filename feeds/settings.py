"""The one settings table.

Each :class:`Setting` names a value, its type, its default and its help. The table drives the
defaults, the validation of ``SPAMPOTS_*`` environment variables, ``spampots --help`` and
``spampots settings``. A secret may also be read from the file named by
``SPAMPOTS_<NAME>_FILE``; secrets are masked wherever they are shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feeds.errors import SettingError

ENV_PREFIX = "SPAMPOTS_"
MASK = "********"


def _parse_int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError
        return value

    return parse


def _parse_float(minimum: float, maximum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not minimum <= value <= maximum:
            raise ValueError
        return value

    return parse


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError


# The digests' rollups are rebuilt from the newest 70 days of captures plus a week of late ones
# (feeds.rollups.HISTORY, LATE_MARGIN): a shorter retention would leave rebuilt digests short.
MIN_RETENTION_DAYS = 77


def _parse_retention(raw: str) -> int:
    value = int(raw.strip())
    if value != 0 and not MIN_RETENTION_DAYS <= value <= 36500:
        raise ValueError
    return value


def _parse_database_url(raw: str) -> str:
    if not raw.startswith(("sqlite://", "postgresql+psycopg://")):
        raise ValueError
    return raw


def _parse_smtp_url(raw: str) -> str:
    if raw and not raw.startswith(("smtp://", "smtps://")):
        raise ValueError
    return raw


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    allowed: str = "any text"
    parse: Callable[[str], Any] = str
    secret: bool = False
    choices: tuple[str, ...] = field(default=())

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _choice(*options: str) -> dict[str, Any]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError
        return raw

    return {"parse": parse, "choices": options, "allowed": "one of " + ", ".join(options)}


# Defaults may refer to other settings as {home}; they are expanded after the environment is read.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "home",
        "./var",
        "data folder: database, spool, raw messages, keys, outbox",
        "a folder path",
        Path,
    ),
    Setting(
        "database_url",
        "sqlite:///{home}/spampots.db",
        "the store: sqlite:///PATH (embedded) or postgresql+psycopg://USER@HOST/DB",
        "a sqlite:// or postgresql+psycopg:// URL",
        _parse_database_url,
        secret=True,
    ),
    Setting(
        "partners",
        "./partners.yaml",
        "the partners file staff edit: who gets what",
        "a file path",
        Path,
    ),
    Setting(
        "spool",
        "{home}/spool",
        "where sensors drop batches (incoming/, raw/)",
        "a folder path",
        Path,
    ),
    Setting(
        "keys_dir",
        "{home}/keys",
        "private Ed25519 signing keys (files mode 0600)",
        "a folder path",
        Path,
    ),
    Setting(
        "country_mmdb",
        "",
        "country .mmdb (MaxMind or ip-location-db layout); empty: the embedded default",
        "a file path or empty",
        str,
    ),
    Setting(
        "asn_mmdb",
        "",
        "ASN .mmdb (MaxMind or ip-location-db layout); empty: the embedded default",
        "a file path or empty",
        str,
    ),
    Setting(
        "smtp_url",
        "",
        "smtp://host:port (STARTTLS when offered) or smtps://host:port; "
        "empty: digests go to the outbox only",
        "empty, smtp://HOST:PORT or smtps://HOST:PORT",
        _parse_smtp_url,
    ),
    Setting("smtp_username", "", "SMTP user name, if the server wants one"),
    Setting("smtp_password", "", "SMTP password", secret=True),
    Setting(
        "smtp_ca_file",
        "",
        "CA certificates (PEM) that sign the SMTP server's TLS certificate; empty: the system's",
        "a file path or empty",
    ),
    Setting(
        "smtp_retries",
        "5",
        "attempts to hand a digest to the SMTP server before giving up until the next run",
        "1-100",
        _parse_int(1, 100),
    ),
    Setting(
        "smtp_backoff",
        "30",
        "seconds before the second attempt; doubled for each further one (at most 15 minutes)",
        "a number of seconds, 0-3600",
        _parse_float(0, 3600),
    ),
    Setting(
        "digest_max_bytes",
        "10000000",
        "largest digest e-mail, as sent: beyond it the CSVs go zipped, then with only the rows "
        "with the most messages (the complete CSVs are kept in the outbox)",
        "200000-1000000000 bytes",
        _parse_int(200_000, 1_000_000_000),
    ),
    Setting("mail_from", "SpamPots feeds <spampots@localhost>", "From: of digests"),
    Setting("reply_to", "", "Reply-To: of digests; empty: the producer's contact"),
    Setting("taxii_host", "127.0.0.1", "address the TAXII server listens on"),
    Setting(
        "taxii_port", "6100", "port the TAXII server listens on", "1-65535", _parse_int(1, 65535)
    ),
    Setting(
        "public_url",
        "",
        "the TAXII server's URL as partners see it; empty: http://TAXII_HOST:TAXII_PORT",
    ),
    Setting(
        "auth_failure_delay",
        "0.25",
        "seconds a failed TAXII login waits, doubled with each recent failure of the same "
        "username or address",
        "0-10 seconds",
        _parse_float(0, 10),
    ),
    Setting(
        "auth_failure_delay_max",
        "8",
        "longest wait of a failed TAXII login",
        "0-60 seconds",
        _parse_float(0, 60),
    ),
    Setting(
        "trusted_proxies",
        "0",
        "proxies in front of the TAXII server whose X-Forwarded-For names the client "
        "(1 behind deploy/Caddyfile)",
        "0-5",
        _parse_int(0, 5),
    ),
    Setting(
        "max_page_size",
        "1000",
        "most objects one TAXII page returns",
        "1-100000",
        _parse_int(1, 100_000),
    ),
    Setting(
        "taxii_workers",
        "2",
        "TAXII server processes ('spampots serve'), each with a few threads",
        "1-64",
        _parse_int(1, 64),
    ),
    Setting(
        "max_request_bytes",
        "10485760",
        "largest TAXII request body accepted",
        "a number of bytes >= 1024",
        _parse_int(1024),
    ),
    Setting(
        "batch_objects",
        "10000",
        "most objects in one signed publication batch",
        "10-1000000",
        _parse_int(10, 1_000_000),
    ),
    Setting(
        "publish_commit_objects",
        "200000",
        "most objects one publishing transaction commits: whole batches, several at once when "
        "they fit (fewer, larger commits; a batch is never split between two)",
        "10-10000000",
        _parse_int(10, 10_000_000),
    ),
    Setting(
        "publish_workers",
        "2",
        "processes that publish collections side by side: each builds, hashes and signs its "
        "batches while another writes (the store takes one writer at a time)",
        "1-64",
        _parse_int(1, 64),
    ),
    Setting(
        "indicator_expiry_days",
        "30",
        "days an indicator stays valid without new sightings",
        "1-3650",
        _parse_int(1, 3650),
    ),
    Setting(
        "samples_per_publish",
        "50",
        "most distinct sanitized sample messages one publish run adds to a collection "
        "(the most frequent first; only for partners sharing samples)",
        "0-10000",
        _parse_int(0, 10_000),
    ),
    Setting(
        "publish_slice_messages",
        "500000",
        "most message ids one publishing step selects for a collection; a larger backlog is "
        "published in several steps (bounds the memory a catch-up needs)",
        "1-100000000",
        _parse_int(1, 100_000_000),
    ),
    Setting(
        "ingest_workers",
        "1",
        "processes that parse and enrich messages during ingest (one more writes the store)",
        "1-64",
        _parse_int(1, 64),
    ),
    Setting(
        "ingest_chunk_lines",
        "1000",
        "batch lines written per ingest transaction",
        "10-100000",
        _parse_int(10, 100_000),
    ),
    Setting(
        "max_message_bytes",
        "8388608",
        "bytes of one raw message parsed (the whole message is kept; the rest is not parsed)",
        "a number of bytes >= 1024",
        _parse_int(1024),
    ),
    Setting(
        "max_mime_parts",
        "1000",
        "MIME parts of one message read for content types, charsets and URLs",
        "1-1000000",
        _parse_int(1, 1_000_000),
    ),
    Setting(
        "max_mime_depth",
        "20",
        "nesting depth of multiparts read in one message",
        "1-200",
        _parse_int(1, 200),
    ),
    Setting(
        "max_part_decoded_bytes",
        "2097152",
        "decoded bytes of one MIME part searched for URLs",
        "a number of bytes >= 1024",
        _parse_int(1024),
    ),
    Setting(
        "log_level",
        "INFO",
        "how much the service logs",
        **_choice("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Setting("log_format", "text", "log lines as text or JSON", **_choice("text", "json")),
    Setting(
        "metrics_dir",
        "{home}/metrics",
        "where every process of this host writes its Prometheus samples; /metrics adds them up",
        "a folder path",
        Path,
    ),
    Setting(
        "ingest_every",
        "60",
        "seconds between the worker's runs of ingest",
        "5-86400",
        _parse_int(5, 86400),
    ),
    Setting(
        "retention_days",
        "0",
        "captures (messages, sessions) older than this many days are removed, a whole UTC week "
        "at a time, by the worker's daily retention job or 'spampots retention'; rollups, "
        "digests and published objects stay. 0: keep everything",
        f"0 or {MIN_RETENTION_DAYS}-36500",
        _parse_retention,
    ),
    Setting(
        "key_max_age_days",
        "365",
        "the worker reminds staff to rotate a signing key older than this",
        "30-3650",
        _parse_int(30, 3650),
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class Settings:
    """Effective values: defaults overridden by ``SPAMPOTS_*`` and by explicit overrides."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._sources = dict(sources)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __reduce__(self) -> tuple[type[Settings], tuple[dict[str, Any], dict[str, str]]]:
        # Sent to worker processes; without this, unpickling would ask __getattr__ for
        # attributes before _values exists.
        return Settings, (self._values, self._sources)

    def source(self, name: str) -> str:
        return self._sources[name]

    def shown(self) -> Iterator[tuple[Setting, str, str]]:
        """Each setting with its value as it may be shown (secrets masked) and its source."""
        for setting in SETTINGS:
            value = self._values[setting.name]
            text = str(value)
            if setting.secret and text:
                text = _mask_secret(setting, text)
            yield setting, text, self._sources[setting.name]

    @property
    def raw_dir(self) -> Path:
        return Path(self.home) / "raw"

    @property
    def outbox_dir(self) -> Path:
        return Path(self.home) / "outbox"

    @property
    def taxii_url(self) -> str:
        return str(self.public_url or f"http://{self.taxii_host}:{self.taxii_port}").rstrip("/")


def _mask_secret(setting: Setting, text: str) -> str:
    if setting.name == "database_url" and text.startswith("sqlite"):
        return text
    if setting.name == "database_url" and "@" in text:
        scheme, _, rest = text.partition("://")
        credentials, _, location = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:{MASK}@{location}" if ":" in credentials else text
    return MASK


def load_settings(environ: Mapping[str, str] | None = None, **overrides: str) -> Settings:
    """Read every setting: an override, else ``SPAMPOTS_NAME``, else the file named by
    ``SPAMPOTS_NAME_FILE`` (secrets), else the default. Raises :class:`SettingError`."""
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        if overrides.get(setting.name) is not None:
            raw[setting.name], sources[setting.name] = overrides[setting.name], "command line"
        elif setting.env in env:
            raw[setting.name], sources[setting.name] = env[setting.env], setting.env
        elif setting.secret and f"{setting.env}_FILE" in env:
            file_name = env[f"{setting.env}_FILE"]
            raw[setting.name] = _read_secret_file(setting, file_name)
            sources[setting.name] = f"{setting.env}_FILE"
        else:
            raw[setting.name], sources[setting.name] = setting.default, "default"
    home = str(Path(raw["home"]))
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text = raw[setting.name]
        if sources[setting.name] == "default":
            text = text.replace("{home}", home)
        try:
            values[setting.name] = setting.parse(text)
        except ValueError:
            shown = MASK if setting.secret else text
            raise SettingError(setting.env, shown, setting.allowed) from None
    return Settings(values, sources)


def _read_secret_file(setting: Setting, file_name: str) -> str:
    try:
        return Path(file_name).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise SettingError(
            f"{setting.env}_FILE", file_name, f"a readable file ({error.strerror})"
        ) from None
