"""A real SMTP server (aiosmtpd) on a loopback port that keeps what it accepts.

It can refuse (any code, for the next N messages), offer STARTTLS or speak TLS from the start
with a certificate made for the test, and demand a login.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loopback import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class SmtpSink:
    """What the server accepted, and replies to give instead of accepting."""

    host: str = "127.0.0.1"
    port: int = 0
    scheme: str = "smtp"
    received: list[Received] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # e.g. "451 4.3.0 try later"
    ca_file: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def refuse_next(self, count: int, reply: str = "451 4.3.0 Try again later") -> None:
        self.refusals.extend([reply] * count)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refusals:
            return self.refusals.pop(0)
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        return "250 2.0.0 Ok: queued as test"


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def start_smtp_sink(
    folder: Path | None = None,
    *,
    mode: str = "plain",
    login: tuple[str, str] | None = None,
    port: int | None = None,
) -> Iterator[SmtpSink]:
    """mode: plain (no TLS), starttls (offers STARTTLS) or smtps (TLS from the start)."""
    sink = SmtpSink(port=port or free_port(), scheme="smtps" if mode == "smtps" else "smtp")
    options: dict[str, Any] = {}
    if mode != "plain":
        assert folder is not None
        cert, key = make_certificate(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        sink.ca_file = str(cert)
        options["ssl_context" if mode == "smtps" else "tls_context"] = context
    if login is not None:

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and (data.login.decode(), data.password.decode()) == login
            )
            return AuthResult(success=ok, handled=False)

        options["authenticator"] = authenticate
        # aiosmtpd counts only STARTTLS as TLS; an smtps session is TLS from the first byte.
        options["auth_require_tls"] = mode != "smtps"
    controller = Controller(sink, hostname=sink.host, port=sink.port, **options)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
