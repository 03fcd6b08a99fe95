"""Who is asking: HTTP Basic credentials checked against the accounts in partners.yaml.

The file is re-read when it changes (a partner removed from it loses access with the next
request). Passwords are argon2id hashes; a check costs tens of milliseconds by design, so a
successful check is remembered for a few minutes, keyed by a keyed digest of the username,
password and stored hash (a changed hash invalidates it). Failed checks are never remembered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from feeds.errors import PartnersFileError
from feeds.partners import Account, Collection, PartnersConfig, load_partners

log = logging.getLogger(__name__)
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 4096


class PartnersFile:
    """The partners file as last read successfully; re-read when its stat changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._config = load_partners(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

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


class Accounts:
    def __init__(self, partners: PartnersFile) -> None:
        self._partners = partners
        self._hasher = PasswordHasher()
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()
        # Checked against unknown usernames so that they cost as much as wrong passwords.
        self._decoy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an ``Authorization: Basic`` header value, or None."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return None
        username, password = credentials
        config = self._partners.current()
        account = _find_account(config, username)
        if account is None:
            self._check(self._decoy_hash, username, password)
            return None
        if not self._check(account.password_hash, username, password):
            return None
        is_publisher = config.publisher is not None and config.publisher.username == username
        label = (
            "publisher"
            if is_publisher
            else next(p.id for p in config.partners.values() if p.taxii is account)
        )
        return Principal(
            username, is_publisher, tuple(config.readable_collections(username)), label
        )

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
    if config.publisher is not None and config.publisher.username == username:
        return config.publisher
    for partner in config.partners.values():
        if partner.taxii is not None and partner.taxii.username == username:
            return partner.taxii
    return None


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
