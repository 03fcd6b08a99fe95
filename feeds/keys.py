"""Ed25519 signing keys: private keys as files (mode 0600), their public halves in the store.

The TAXII server serves the public keys as a JWKS and never needs the private files. A key's
``kid`` is the RFC 7638 thumbprint of its public key as an OKP JWK.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection, Engine

from feeds.errors import SigningKeyError
from feeds.store import metadata, write_transaction

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("public_x", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("activated_at", sa.DateTime(timezone=True)),
    sa.Column("retired_at", sa.DateTime(timezone=True)),
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(public_x: str) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no white space."""
    canonical = orjson.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": public_x}, option=orjson.OPT_SORT_KEYS
    )
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class SigningKey:
    kid: str
    public_x: str
    status: str
    created_at: dt.datetime

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_x,
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }


def _private_path(keys_dir: Path, kid: str) -> Path:
    return keys_dir / f"{kid}.pem"


def generate_key(engine: Engine, keys_dir: Path, status: str = "active") -> SigningKey:
    """A new key pair: the private key written 0600 before its public half is recorded."""
    private = Ed25519PrivateKey.generate()
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    public_x = b64url(raw_public)
    kid = thumbprint(public_x)
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(_private_path(keys_dir, kid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    now = dt.datetime.now(dt.UTC)
    with write_transaction(engine) as connection:
        connection.execute(
            signing_keys.insert().values(
                kid=kid,
                public_x=public_x,
                status=status,
                created_at=now,
                activated_at=now if status == "active" else None,
            )
        )
    return SigningKey(kid, public_x, status, now)


def list_keys(connection: Connection) -> list[SigningKey]:
    rows = connection.execute(
        sa.select(
            signing_keys.c.kid,
            signing_keys.c.public_x,
            signing_keys.c.status,
            signing_keys.c.created_at,
        ).order_by(signing_keys.c.created_at)
    )
    return [SigningKey(*row) for row in rows]


def active_key(connection: Connection) -> SigningKey | None:
    return next((k for k in list_keys(connection) if k.status == "active"), None)


def ensure_active_key(engine: Engine, keys_dir: Path) -> tuple[SigningKey, bool]:
    """The active key, generating one if there is none; the flag says whether it is new."""
    with engine.connect() as connection:
        key = active_key(connection)
    if key is not None:
        if not _private_path(keys_dir, key.kid).exists():
            raise SigningKeyError(
                f"the active signing key {key.kid} has no private key file in {keys_dir}",
                hint="restore it from backup into SPAMPOTS_KEYS_DIR, or rotate to a new key",
                kid=key.kid,
            )
        return key, False
    return generate_key(engine, keys_dir), True


def load_private_key(keys_dir: Path, kid: str) -> Ed25519PrivateKey:
    path = _private_path(keys_dir, kid)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SigningKeyError(
            f"no private key file for {kid} in {keys_dir}",
            hint="restore it from backup into SPAMPOTS_KEYS_DIR",
            kid=kid,
        ) from None
    except ValueError:
        raise SigningKeyError(
            f"{path} is not a PEM Ed25519 private key", hint="restore the file from backup", kid=kid
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} is not an Ed25519 key", hint="restore the file from backup", kid=kid
        )
    return key


def jwks(connection: Connection) -> dict[str, list[dict[str, str]]]:
    """Every key that signed or will sign (active, next and retired); revoked keys are left out."""
    return {"keys": [k.jwk() for k in list_keys(connection) if k.status != "revoked"]}


def publish_next_key(engine: Engine, keys_dir: Path) -> SigningKey:
    """A new key published in the JWKS before it signs anything ('next'); if no key is active
    yet, it becomes the active key at once. One 'next' key at a time."""
    with engine.connect() as connection:
        keys = list_keys(connection)
    waiting = next((k for k in keys if k.status == "next"), None)
    if waiting is not None:
        raise SigningKeyError(
            f"key {waiting.kid} is already published as the next key",
            hint="run 'spampots keys rotate' to activate it first",
            kid=waiting.kid,
        )
    has_active = any(k.status == "active" for k in keys)
    return generate_key(engine, keys_dir, status="next" if has_active else "active")


def rotate_keys(engine: Engine, keys_dir: Path) -> tuple[SigningKey | None, SigningKey]:
    """The next key (generated now if none was published) becomes active; the active key
    retires and stays in the JWKS so that the batches it signed still verify."""
    with engine.connect() as connection:
        keys = list_keys(connection)
    successor = next((k for k in keys if k.status == "next"), None)
    if successor is None:
        successor = generate_key(engine, keys_dir, status="next")
    load_private_key(keys_dir, successor.kid)  # refuse to activate a key that cannot sign
    retiring = next((k for k in keys if k.status == "active"), None)
    now = dt.datetime.now(dt.UTC)
    with write_transaction(engine) as connection:
        if retiring is not None:
            connection.execute(
                signing_keys.update()
                .where(signing_keys.c.kid == retiring.kid)
                .values(status="retired", retired_at=now)
            )
        connection.execute(
            signing_keys.update()
            .where(signing_keys.c.kid == successor.kid)
            .values(status="active", activated_at=now)
        )
    activated = SigningKey(successor.kid, successor.public_x, "active", successor.created_at)
    retired = (
        SigningKey(retiring.kid, retiring.public_x, "retired", retiring.created_at)
        if retiring
        else None
    )
    return retired, activated


def revoke_key(engine: Engine, kid: str) -> SigningKey:
    """Take a compromised key out of the JWKS: batches it signed no longer verify."""
    with engine.connect() as connection:
        key = next((k for k in list_keys(connection) if k.kid == kid), None)
    if key is None:
        raise SigningKeyError(f"no signing key {kid}", hint="see 'spampots keys list'", kid=kid)
    if key.status == "active":
        raise SigningKeyError(
            f"key {kid} is the active key",
            hint="run 'spampots keys rotate' first, then revoke it",
            kid=kid,
        )
    with write_transaction(engine) as connection:
        connection.execute(
            signing_keys.update()
            .where(signing_keys.c.kid == kid)
            .values(
                status="revoked",
                retired_at=sa.func.coalesce(signing_keys.c.retired_at, dt.datetime.now(dt.UTC)),
            )
        )
    return SigningKey(key.kid, key.public_x, "revoked", key.created_at)
