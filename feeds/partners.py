"""partners.yaml: the file staff edit to say who gets what.

The file is read node by node so that every mistake is reported with its line, and all of
them in one run: :func:`check_partners_file` returns the problems, :func:`load_partners`
raises :class:`PartnersFileError` with them or returns a :class:`PartnersConfig`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
import uuid
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from feeds.errors import PartnersFileError, Problem

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FEEDS = ("originating", "returning")
SHARES = ("ips", "urls", "samples")
TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Collection ids are UUIDv5 in this namespace over "<partner id>/<feed>": stable across runs.
COLLECTION_NAMESPACE = uuid.UUID("5f1d7a9e-2c4b-5b8e-9a51-7d3c0e6f4b21")
DEFAULT_PUBLISH_EVERY = dt.timedelta(hours=1)
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,39}$")
_USERNAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_DOMAIN = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


def _economy_codes() -> frozenset[str]:
    table = resources.files("tzdata").joinpath("zoneinfo", "iso3166.tab").read_text("utf-8")
    return frozenset(
        line.split("\t", 1)[0] for line in table.splitlines() if line and not line.startswith("#")
    )


ECONOMY_CODES = _economy_codes()


@dataclass(frozen=True)
class Producer:
    name: str
    contact: str


@dataclass(frozen=True)
class Sensor:
    id: str
    addresses: tuple[str, ...]
    hostnames: tuple[str, ...]


@dataclass(frozen=True)
class Networks:
    asns: tuple[int, ...] = ()
    prefixes: tuple[IPNetwork, ...] = ()
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class DigestSchedule:
    to: tuple[str, ...]
    weekday: int  # 0 = Monday, as datetime.weekday()
    time: dt.time
    timezone: str


@dataclass(frozen=True)
class Account:
    username: str
    password_hash: str
    grants: tuple[str, ...] = ()  # aliases of other partners' collections it may also read


@dataclass(frozen=True)
class Collection:
    id: str
    alias: str
    partner_id: str
    feed: str
    title: str
    description: str


@dataclass(frozen=True)
class Partner:
    id: str
    name: str
    economy: str
    networks: Networks
    feeds: tuple[str, ...]
    share: tuple[str, ...]
    tlp: str
    digest: DigestSchedule | None
    taxii: Account | None
    publish_every: dt.timedelta = DEFAULT_PUBLISH_EVERY
    keep_own_recipients: bool = False

    @property
    def collections(self) -> tuple[Collection, ...]:
        return tuple(collection_for(self, feed) for feed in self.feeds)


@dataclass(frozen=True)
class PartnersConfig:
    path: str
    producer: Producer
    sensors: dict[str, Sensor]
    partners: dict[str, Partner]
    publisher: Account | None = None
    collections: dict[str, Collection] = field(default_factory=dict)

    def collection(self, id_or_alias: str) -> Collection | None:
        found = self.collections.get(id_or_alias)
        if found:
            return found
        return next((c for c in self.collections.values() if c.alias == id_or_alias), None)

    def readable_collections(self, username: str) -> list[Collection]:
        """What an account may read: its own collections and its grants; the publisher all."""
        if self.publisher and username == self.publisher.username:
            return list(self.collections.values())
        for partner in self.partners.values():
            if partner.taxii and partner.taxii.username == username:
                own = list(partner.collections)
                granted = [c for c in self.collections.values() if c.alias in partner.taxii.grants]
                return own + [c for c in granted if c not in own]
        return []

    def summary_lines(self) -> list[str]:
        lines = []
        for p in self.partners.values():
            networks = (
                f"{len(p.networks.asns)} ASNs, {len(p.networks.prefixes)} prefixes, "
                f"{len(p.networks.domains)} domains"
            )
            digest = f"digest to {len(p.digest.to)}" if p.digest else "no digest"
            account = f"account {p.taxii.username}" if p.taxii else "no TAXII account"
            lines.append(
                f"{p.id}: {p.name} ({p.economy}) feeds {'+'.join(p.feeds)}, "
                f"shares {'+'.join(p.share)}, TLP:{p.tlp.upper()}, {networks}, {digest}, {account}"
            )
        return lines


def collection_for(partner: Partner, feed: str) -> Collection:
    direction = (
        f"from networks in {partner.economy} and those listed for {partner.name}"
        if feed == "originating"
        else f"aimed at networks and domains of {partner.economy} and {partner.name}"
    )
    return Collection(
        id=str(uuid.uuid5(COLLECTION_NAMESPACE, f"{partner.id}/{feed}")),
        alias=f"{partner.id}-{feed}",
        partner_id=partner.id,
        feed=feed,
        title=f"SpamPots {feed} spam for {partner.name}",
        description=(
            f"Spam caught by the SpamPots honeypot sensors {direction}: "
            f"{', '.join(partner.share)} as signed STIX 2.1, TLP:{partner.tlp.upper()}."
        ),
    )


def _tag(node: Node) -> str:
    return str(node.tag or "")


class _Checker:
    """Walks the YAML node tree, converting values and collecting :class:`Problem`s."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def problem(self, node: Node, what: str, todo: str) -> None:
        self.problems.append(Problem(self.path, node.start_mark.line + 1, what, todo))

    def mapping(
        self, node: Node, where: str, required: Iterable[str], optional: Iterable[str]
    ) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.problem(
                node,
                f"{where} must be a mapping of keys to values",
                "write it as 'key: value' lines",
            )
            return None
        required, optional = list(required), list(optional)
        known = required + optional
        found: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in found:
                self.problem(key_node, f"duplicate key '{key}' in {where}", "keep one of them")
            elif key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(known)}"
                self.problem(key_node, f"unknown key '{key}' in {where}", hint)
            else:
                found[key] = value_node
        for key in required:
            if key not in found:
                self.problem(node, f"{where} has no '{key}'", f"add '{key}:'")
        return found

    def text(
        self, node: Node, where: str, pattern: re.Pattern[str] | None = None, todo: str = ""
    ) -> str | None:
        if not isinstance(node, ScalarNode) or _tag(node).endswith(":null") or node.value == "":
            self.problem(node, f"{where} must be a non-empty text", todo or "give a value")
            return None
        value = str(node.value)
        if pattern and not pattern.match(value):
            self.problem(node, f"{where} '{value}' is not valid", todo)
            return None
        return value

    def choice(self, node: Node, where: str, options: tuple[str, ...]) -> str | None:
        value = self.text(node, where)
        if value is not None and value.lower() not in options:
            self.problem(
                node, f"{where} '{value}' is not allowed", f"use one of {', '.join(options)}"
            )
            return None
        return value.lower() if value is not None else None

    def integer(self, node: Node, where: str, low: int, high: int, todo: str) -> int | None:
        value = node.value if isinstance(node, ScalarNode) else None
        if value is None or not _tag(node).endswith(":int") or not low <= int(value, 0) <= high:
            self.problem(
                node, f"{where} '{value}' is not a whole number from {low} to {high}", todo
            )
            return None
        return int(value, 0)

    def boolean(self, node: Node, where: str) -> bool | None:
        if isinstance(node, ScalarNode) and _tag(node).endswith(":bool"):
            return str(node.value).lower() in {"true", "yes", "on"}
        self.problem(
            node,
            f"{where} '{getattr(node, 'value', '')}' is not true or false",
            "write true or false",
        )
        return None

    def sequence(
        self,
        node: Node,
        where: str,
        item: Callable[[Node, str], T | None],
        allow_empty: bool = True,
    ) -> tuple[T, ...]:
        if isinstance(node, ScalarNode) and _tag(node).endswith(":null") and allow_empty:
            return ()
        if not isinstance(node, SequenceNode):
            self.problem(node, f"{where} must be a list", "write it as [a, b] or '- a' lines")
            return ()
        if not node.value and not allow_empty:
            self.problem(node, f"{where} is empty", "give at least one value")
        values = []
        for index, child in enumerate(node.value):
            value = item(child, f"{where}[{index}]")
            if value is not None:
                values.append(value)
        return tuple(values)

    def unique_choices(self, node: Node, where: str, options: tuple[str, ...]) -> tuple[str, ...]:
        values = self.sequence(
            node, where, lambda n, w: self.choice(n, w, options), allow_empty=False
        )
        return tuple(dict.fromkeys(values))

    def address(self, node: Node, where: str) -> str | None:
        value = self.text(node, where)
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.problem(
                node,
                f"{where} '{value}' is not an IP address",
                "write an IPv4 or IPv6 address such as 192.0.2.10",
            )
            return None

    def prefix(self, node: Node, where: str) -> IPNetwork | None:
        value = self.text(node, where)
        if value is None:
            return None
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as error:
            self.problem(
                node,
                f"{where} '{value}' is not a CIDR prefix ({error})",
                "write a network such as 198.51.100.0/24 with no host bits set",
            )
            return None


def _duration(checker: _Checker, node: Node, where: str) -> dt.timedelta | None:
    value = checker.text(node, where)
    match = _DURATION.match(value or "")
    if value is None:
        return None
    if not match:
        checker.problem(
            node,
            f"{where} '{value}' is not a duration",
            "write a number and a unit, such as 30m, 1h or 1d",
        )
        return None
    delta = dt.timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})
    if delta < dt.timedelta(minutes=1):
        checker.problem(node, f"{where} '{value}' is shorter than a minute", "use 1m or more")
        return None
    return delta


def _account(checker: _Checker, node: Node, where: str, grants_allowed: bool) -> Account | None:
    keys = ["grants"] if grants_allowed else []
    fields = checker.mapping(node, where, ["username"], ["password_hash", "password", *keys])
    if fields is None:
        return None
    username = (
        checker.text(
            fields["username"],
            f"{where}.username",
            _USERNAME,
            "use letters, digits, '.', '_' or '-'",
        )
        if "username" in fields
        else None
    )
    if "password" in fields:
        checker.problem(
            fields["password"],
            f"plaintext password in {where}.password",
            "replace it with password_hash: the output of 'spampots partners hash-password'",
        )
    password_hash = None
    if "password_hash" in fields:
        password_hash = checker.text(fields["password_hash"], f"{where}.password_hash")
        if password_hash is not None and not password_hash.startswith("$argon2id$"):
            checker.problem(
                fields["password_hash"],
                f"{where}.password_hash is not an argon2id hash",
                "paste the output of 'spampots partners hash-password'",
            )
            password_hash = None
    elif "password" not in fields:
        checker.problem(
            node,
            f"{where} has no 'password_hash'",
            "add password_hash: the output of 'spampots partners hash-password'",
        )
    grants: tuple[str, ...] = ()
    if "grants" in fields:
        grants = checker.sequence(
            fields["grants"], f"{where}.grants", lambda n, w: checker.text(n, w)
        )
    if username is None or password_hash is None:
        return None
    return Account(username, password_hash, grants)


def _networks(checker: _Checker, node: Node, where: str) -> Networks:
    fields = checker.mapping(node, where, [], ["asns", "prefixes", "domains"])
    if not fields:
        return Networks()
    asns = (
        checker.sequence(
            fields["asns"],
            f"{where}.asns",
            lambda n, w: checker.integer(n, w, 1, 4_294_967_295, "write an AS number such as 3462"),
        )
        if "asns" in fields
        else ()
    )
    prefixes: tuple[IPNetwork, ...] = (
        checker.sequence(fields["prefixes"], f"{where}.prefixes", checker.prefix)
        if "prefixes" in fields
        else ()
    )
    domains = (
        checker.sequence(
            fields["domains"],
            f"{where}.domains",
            lambda n, w: _lower(
                checker.text(n, w, _DOMAIN_ANY_CASE, "write a domain such as tw or example.com.tw")
            ),
        )
        if "domains" in fields
        else ()
    )
    return Networks(asns, prefixes, domains)


_DOMAIN_ANY_CASE = re.compile(_DOMAIN.pattern, re.IGNORECASE)


def _lower(value: str | None) -> str | None:
    return value.lower().strip(".") if value is not None else None


def _digest(checker: _Checker, node: Node, where: str) -> DigestSchedule | None:
    fields = checker.mapping(node, where, ["to"], ["weekday", "time", "timezone"])
    if fields is None:
        return None
    to = (
        checker.sequence(
            fields["to"],
            f"{where}.to",
            lambda n, w: checker.text(
                n, w, _EMAIL, "write an e-mail address such as cert@example.org"
            ),
            allow_empty=False,
        )
        if "to" in fields
        else ()
    )
    weekday = 0
    if "weekday" in fields:
        day = checker.choice(fields["weekday"], f"{where}.weekday", WEEKDAYS)
        weekday = WEEKDAYS.index(day) if day else 0
    at = dt.time(9, 0)
    if "time" in fields:
        text = checker.text(fields["time"], f"{where}.time")
        try:
            at = dt.time.fromisoformat(text or "")
            if len(text or "") != 5:
                raise ValueError
        except ValueError:
            if text is not None:
                checker.problem(
                    fields["time"],
                    f"{where}.time '{text}' is not a time of day",
                    'write HH:MM in 24-hour form, quoted, such as "09:00"',
                )
    timezone = "UTC"
    if "timezone" in fields:
        name = checker.text(fields["timezone"], f"{where}.timezone")
        try:
            zoneinfo.ZoneInfo(name or "")
            timezone = name or "UTC"
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            if name is not None:
                checker.problem(
                    fields["timezone"],
                    f"{where}.timezone '{name}' is not a time zone",
                    "use an IANA name such as Asia/Taipei or UTC",
                )
    return DigestSchedule(to, weekday, at, timezone) if to else None


PARTNER_KEYS_REQUIRED = ("name", "economy")
PARTNER_KEYS_OPTIONAL = (
    "networks",
    "feeds",
    "share",
    "tlp",
    "digest",
    "taxii",
    "publish",
    "keep_own_recipients",
)


def _partner(checker: _Checker, partner_id: str, key: Node, node: Node) -> Partner | None:
    where = f"partner '{partner_id}'"
    if not _PARTNER_ID.match(partner_id):
        checker.problem(
            key,
            f"partner id '{partner_id}' is not valid",
            "use lowercase letters, digits and '_' (it names collections)",
        )
    fields = checker.mapping(node, where, PARTNER_KEYS_REQUIRED, PARTNER_KEYS_OPTIONAL)
    if fields is None:
        return None
    name = checker.text(fields["name"], f"{where}.name") if "name" in fields else None
    economy = None
    if "economy" in fields:
        economy = checker.text(fields["economy"], f"{where}.economy")
        if economy is not None and economy.upper() not in ECONOMY_CODES:
            checker.problem(
                fields["economy"],
                f"{where}.economy '{economy}' is not an ISO 3166-1 alpha-2 code",
                "use two letters such as TW, JP or AU",
            )
            economy = None
    networks = (
        _networks(checker, fields["networks"], f"{where}.networks")
        if "networks" in fields
        else Networks()
    )
    problems_before = len(checker.problems)
    feeds = (
        checker.unique_choices(fields["feeds"], f"{where}.feeds", FEEDS)
        if "feeds" in fields
        else FEEDS
    )
    feeds_ok = len(checker.problems) == problems_before
    share = (
        checker.unique_choices(fields["share"], f"{where}.share", SHARES)
        if "share" in fields
        else ("ips", "urls")
    )
    tlp = checker.choice(fields["tlp"], f"{where}.tlp", TLP_LEVELS) if "tlp" in fields else "amber"
    digest = _digest(checker, fields["digest"], f"{where}.digest") if "digest" in fields else None
    taxii = (
        _account(checker, fields["taxii"], f"{where}.taxii", grants_allowed=True)
        if "taxii" in fields
        else None
    )
    publish_every = (
        _duration(checker, fields["publish"], f"{where}.publish")
        if "publish" in fields
        else DEFAULT_PUBLISH_EVERY
    )
    keep_own = (
        checker.boolean(fields["keep_own_recipients"], f"{where}.keep_own_recipients")
        if "keep_own_recipients" in fields
        else False
    )
    if name is None or economy is None or tlp is None or publish_every is None or not feeds_ok:
        return None
    return Partner(
        partner_id,
        name,
        economy.upper(),
        networks,
        feeds,
        share,
        tlp,
        digest,
        taxii,
        publish_every,
        bool(keep_own),
    )


def _sensor(checker: _Checker, sensor_id: str, node: Node) -> Sensor:
    where = f"sensor '{sensor_id}'"
    fields = checker.mapping(node, where, [], ["addresses", "hostnames"]) or {}
    addresses = (
        checker.sequence(fields["addresses"], f"{where}.addresses", checker.address)
        if "addresses" in fields
        else ()
    )
    hostnames = (
        checker.sequence(
            fields["hostnames"], f"{where}.hostnames", lambda n, w: _lower(checker.text(n, w))
        )
        if "hostnames" in fields
        else ()
    )
    return Sensor(sensor_id, addresses, hostnames)


def parse_partners(text: str, path: str) -> tuple[PartnersConfig | None, list[Problem]]:
    """Parse the file's text; returns the configuration (None if any problem) and the problems."""
    checker = _Checker(path)
    try:
        root = YAML(typ="rt").compose(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        what = (error.problem or error.context or "not valid YAML").strip()
        return None, [
            Problem(
                path,
                line,
                f"invalid YAML: {what}",
                "fix the indentation, quoting or brackets near this line",
            )
        ]
    except YAMLError as error:
        return None, [Problem(path, 1, f"invalid YAML: {error}", "fix the file's syntax")]
    if root is None:
        return None, [
            Problem(
                path,
                1,
                "the file is empty",
                "start from the partners.yaml shipped with spampots-feeds",
            )
        ]
    top = checker.mapping(root, "the file", ["producer", "partners"], ["sensors", "publisher"])
    if top is None:
        return None, checker.problems
    producer = None
    if "producer" in top:
        fields = checker.mapping(top["producer"], "producer", ["name", "contact"], [])
        if fields and "name" in fields and "contact" in fields:
            name = checker.text(fields["name"], "producer.name")
            contact = checker.text(
                fields["contact"],
                "producer.contact",
                _EMAIL,
                "write an e-mail address such as cert@example.org",
            )
            if name and contact:
                producer = Producer(name, contact)
    sensors: dict[str, Sensor] = {}
    if "sensors" in top and not (
        isinstance(top["sensors"], ScalarNode) and _tag(top["sensors"]).endswith(":null")
    ):
        for key, _, node in _entries(checker, top["sensors"], "sensors"):
            sensors[key] = _sensor(checker, key, node)
    publisher = (
        _account(checker, top["publisher"], "publisher", grants_allowed=False)
        if "publisher" in top
        else None
    )
    partners: dict[str, Partner] = {}
    partner_lines: dict[str, Node] = {}
    if "partners" in top:
        for key, key_node, node in _entries(checker, top["partners"], "partners"):
            partner_lines[key] = node
            partner = _partner(checker, key, key_node, node)
            if partner is not None:
                partners[key] = partner
    _check_across_partners(checker, partners, partner_lines, publisher)
    if checker.problems or producer is None:
        return None, checker.problems
    collections = {c.id: c for p in partners.values() for c in p.collections}
    return PartnersConfig(path, producer, sensors, partners, publisher, collections), []


def _entries(checker: _Checker, node: Node, where: str) -> list[tuple[str, Node, Node]]:
    """The (key, value) pairs of a mapping of ids, reporting duplicate ids."""
    if not isinstance(node, MappingNode):
        checker.problem(
            node,
            f"{where} must be a mapping of ids to entries",
            "write each entry as 'id:' followed by its indented keys",
        )
        return []
    seen: set[str] = set()
    entries = []
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in seen:
            checker.problem(
                key_node, f"duplicate {where[:-1]} id '{key}'", "give each entry its own id"
            )
            continue
        seen.add(key)
        entries.append((key, key_node, value_node))
    return entries


def _check_across_partners(
    checker: _Checker,
    partners: dict[str, Partner],
    nodes: dict[str, Node],
    publisher: Account | None,
) -> None:
    owners: dict[str, str] = {publisher.username: "publisher"} if publisher else {}
    # A partner with mistakes of its own still names collections: judge grants by every id.
    aliases = {
        f"{partner_id}-{feed}"
        for partner_id in nodes
        for feed in (partners[partner_id].feeds if partner_id in partners else FEEDS)
    }
    for partner_id, partner in partners.items():
        if partner.taxii is None:
            continue
        line_node = _find_key(nodes[partner_id], "taxii") or nodes[partner_id]
        username = partner.taxii.username
        if username in owners:
            checker.problem(
                line_node,
                f"username '{username}' of partner '{partner_id}' is "
                f"already used by {owners[username]}",
                "give each account its own username",
            )
        else:
            owners[username] = f"partner '{partner_id}'"
        for grant in partner.taxii.grants:
            if grant not in aliases:
                checker.problem(
                    line_node,
                    f"partner '{partner_id}' is granted '{grant}', which is no collection",
                    "use an alias such as jpcert-originating, of a partner and feed in this file",
                )


def _find_key(node: Node, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return value_node  # type: ignore[no-any-return]
    return None


def file_stamp(path: Path | str) -> tuple[int, int, int] | None:
    """What tells an edited partners file from the one read before: modification time, size
    and inode (an editor's rename). The time alone misses a second edit within the file
    system's clock tick; None when the file cannot be read."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def check_partners_file(path: Path | str) -> tuple[PartnersConfig | None, list[Problem]]:
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [
            Problem(
                shown,
                0,
                "no such file",
                "create it from the shipped partners.yaml or set SPAMPOTS_PARTNERS",
            )
        ]
    except UnicodeDecodeError as error:
        line = 1 + path.read_bytes()[: error.start].count(b"\n")
        return None, [Problem(shown, line, "not UTF-8 text", "save the file as UTF-8")]
    except OSError as error:
        return None, [
            Problem(
                shown,
                0,
                f"cannot read the file ({error.strerror})",
                "check its path and permissions",
            )
        ]
    return parse_partners(text, shown)


def load_partners(path: Path | str) -> PartnersConfig:
    config, problems = check_partners_file(path)
    if config is None:
        raise PartnersFileError(problems)
    return config


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)
