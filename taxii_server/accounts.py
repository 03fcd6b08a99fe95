"""Who is asking: HTTP Basic credentials checked against the accounts in partners.yaml.

The file is re-read when it changes (a partner removed from it loses access with the next
request). Passwords are argon2id hashes; a check costs tens of milliseconds by design, so a
successful check is remembered for a few minutes, keyed by a keyed digest of the username,
password and stored hash (a changed hash invalidates it). Failed checks are never remembered.

An unknown username and a wrong password take the same path: the password is checked against
a decoy hash of the same cost, the answer is the same 401, and both count as a failure. Each
failure waits before it is answered, twice as long as the one before for the same username or
the same client address within 15 minutes (:class:`FailureThrottle`; settings
``auth_failure_delay`` and ``auth_failure_delay_max``); a correct password never waits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from argon2 import Parameters, PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from feeds.errors import PartnersFileError
from feeds.partners import Account, Collection, PartnersConfig, file_stamp, load_partners

log = logging.getLogger(__name__)
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 4096
FAILURE_WINDOW = 900.0  # seconds a failed login counts towards the next one's wait
FAILURE_ENTRIES = 10_000


class PartnersFile:
    """The partners file as last read successfully; re-read when its stat changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._config = load_partners(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        return file_stamp(self.path)

    def current(self) -> PartnersConfig:
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return self._config
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._config = load_partners(self.path)
                    log.info("reloaded %s", self.path)
                except PartnersFileError as error:
                    # A broken edit keeps the last good file in force; 'partners check' says why.
                    log.error("kept the previous partners file: %s", error)
                self._stamp = stamp
        return self._config


@dataclass(frozen=True)
class Principal:
    """An authenticated account and what it may do."""

    username: str
    is_publisher: bool
    readable: tuple[Collection, ...]
    label: str = ""  # the partner's id, or "publisher": what metrics count requests by

    def collection(self, id_or_alias: str) -> Collection | None:
        return next((c for c in self.readable if id_or_alias in (c.id, c.alias)), None)


class FailureThrottle:
    """Recent failed logins per username and per client address, and the wait they earn."""

    def __init__(
        self, base: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base, self.cap = base, cap
        self._clock = clock
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def delay(self, username: str, address: str) -> float:
        """The wait of the next failure of ``username`` from ``address``."""
        with self._lock:
            return self._delay(self._keys(username, address), self._clock())

    def failed(self, username: str, address: str) -> float:
        """Count a failure; returns how long it waits."""
        now = self._clock()
        keys = self._keys(username, address)
        with self._lock:
            wait = self._delay(keys, now)
            for key in keys:
                self._failures[key] = (self._count(key, now) + 1, now)
                self._failures.move_to_end(key)
            while len(self._failures) > FAILURE_ENTRIES:
                self._failures.popitem(last=False)
        return wait

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(("address", address), None)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[tuple[str, str], ...]:
        return ("username", username[:256]), ("address", address)

    def _count(self, key: tuple[str, str], now: float) -> int:
        count, last = self._failures.get(key, (0, 0.0))
        return count if now - last < FAILURE_WINDOW else 0

    def _delay(self, keys: tuple[tuple[str, str], ...], now: float) -> float:
        earlier = max(self._count(key, now) for key in keys)
        return min(self.cap, self.base * 2.0**earlier) if self.base > 0 else 0.0


class Accounts:
    def __init__(
        self,
        partners: PartnersFile,
        throttle: FailureThrottle | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._partners = partners
        self.throttle = throttle or FailureThrottle(0.25, 8.0)
        self._sleep = sleep
        self._hasher = PasswordHasher()
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()
        # Checked against unknown usernames so that they cost as much as wrong passwords:
        # one decoy per argon2 cost in use, made with that cost.
        self._decoys: dict[str, str] = {}  # by repr of the Parameters (unhashable)

    def authenticate(self, authorization: str | None, address: str = "") -> Principal | None:
        """The principal for an ``Authorization: Basic`` header value from client ``address``,
        or None (after the failure's wait)."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return None
        username, password = credentials
        config = self._partners.current()
        account = _find_account(config, username)
        password_hash = account.password_hash if account else self._decoy(config)
        if not self._check(password_hash, username, password) or account is None:
            self._sleep(self.throttle.failed(username, address))
            return None
        self.throttle.succeeded(address)
        is_publisher = config.publisher is not None and config.publisher.username == username
        label = (
            "publisher"
            if is_publisher
            else next(p.id for p in config.partners.values() if p.taxii is account)
        )
        return Principal(
            username, is_publisher, tuple(config.readable_collections(username)), label
        )

    def _decoy(self, config: PartnersConfig) -> str:
        """A hash of a random password with the cost of the accounts' hashes."""
        some = next((a for a in _accounts(config) if a is not None), None)
        try:
            cost = extract_parameters(some.password_hash) if some else self._hasher_parameters()
        except InvalidHashError:
            cost = self._hasher_parameters()
        with self._lock:
            decoy = self._decoys.get(repr(cost))
        if decoy is None:
            decoy = PasswordHasher.from_parameters(cost).hash(secrets.token_urlsafe(16))
            with self._lock:
                self._decoys[repr(cost)] = decoy
        return decoy

    def _hasher_parameters(self) -> Parameters:
        return extract_parameters(self._hasher.hash("cost"))

    def _check(self, password_hash: str, username: str, password: str) -> bool:
        digest = hashlib.blake2b(
            b"\0".join(
                part.encode("utf-8", "surrogatepass")
                for part in (username, password, password_hash)
            ),
            key=self._key,
            digest_size=32,
        ).digest()
        now = time.monotonic()
        with self._lock:
            expires = self._verified.get(digest)
            if expires is not None and expires > now:
                return True
        try:
            self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        with self._lock:
            self._verified[digest] = now + CACHE_SECONDS
            self._verified.move_to_end(digest)
            while len(self._verified) > CACHE_ENTRIES:
                self._verified.popitem(last=False)
        return True


def _find_account(config: PartnersConfig, username: str) -> Account | None:
    """Every account is compared, in constant time: how long it takes says nothing of which
    username matched, or whether one did."""
    wanted = username.encode("utf-8", "surrogatepass")
    found = None
    for account in _accounts(config):
        if account is not None and hmac.compare_digest(account.username.encode(), wanted):
            found = account
    return found


def _accounts(config: PartnersConfig) -> list[Account | None]:
    return [config.publisher] + [p.taxii for p in config.partners.values()]


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None
