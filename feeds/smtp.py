"""Handing a message to the SMTP server named by ``SPAMPOTS_SMTP_URL``.

``smtp://host[:port]`` (default port 25) upgrades with STARTTLS whenever the server offers it;
``smtps://host[:port]`` (default 465) speaks TLS from the start. Certificates are verified
against the system's CAs or ``SPAMPOTS_SMTP_CA_FILE``. The password (``SPAMPOTS_SMTP_PASSWORD``
or ``SPAMPOTS_SMTP_PASSWORD_FILE``) is only ever sent over TLS.

Failures are sorted by what the caller should do: :class:`SmtpTemporaryError` (the server is
down or said 4xx: try again later) and :class:`SmtpRefusedError` (5xx: retrying will not help).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

from feeds.errors import ConfigurationError, SpampotsError
from feeds.settings import Settings

TIMEOUT = 60.0


class SmtpError(SpampotsError):
    """The SMTP server could not be reached or did not accept a message."""


class SmtpTemporaryError(SmtpError):
    """Down, unreachable or a 4xx reply: the same message may be tried again."""


class SmtpRefusedError(SmtpError):
    """A 5xx reply: the server refuses this sender, recipient or message."""


class SmtpUncertainError(SmtpError):
    """The connection broke after the message was sent and before the server answered."""


@dataclass(frozen=True)
class SmtpTarget:
    tls: bool  # True: smtps, TLS from the first byte
    host: str
    port: int

    def __str__(self) -> str:
        return f"{'smtps' if self.tls else 'smtp'}://{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpTarget:
    if not url:
        raise ConfigurationError(
            "no SMTP server is configured",
            hint="set SPAMPOTS_SMTP_URL to smtp://HOST:PORT or smtps://HOST:PORT, "
            "or leave out --send to write the digest to the outbox",
        )
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname or port == -1:
        raise ConfigurationError(
            f"SPAMPOTS_SMTP_URL {url!r} is not an SMTP URL",
            hint="write smtp://HOST:PORT (STARTTLS when offered) or smtps://HOST:PORT",
        )
    tls = parts.scheme == "smtps"
    return SmtpTarget(tls, parts.hostname, port or (465 if tls else 25))


def _tls_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.smtp_ca_file or None)


def _classify(code: int, reply: bytes | str, what: str, target: SmtpTarget) -> SmtpError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"{target} answered {code} {text.strip()} to {what}"
    if 400 <= code < 500 or code < 0:
        return SmtpTemporaryError(message, hint="it will be tried again with backoff")
    return SmtpRefusedError(
        message, hint="check the address and the server's policy, then run with --resend"
    )


@contextmanager
def smtp_session(settings: Settings) -> Iterator[SmtpSession]:
    """A connected, greeted, TLS-upgraded and authenticated session."""
    target = parse_smtp_url(settings.smtp_url)
    client = _open(settings, target)
    try:
        yield SmtpSession(client, target)
    finally:
        # What was accepted stays accepted: a failing QUIT must not turn it into an error.
        with suppress(OSError, smtplib.SMTPException):
            client.quit()
        client.close()


def _open(settings: Settings, target: SmtpTarget) -> smtplib.SMTP:
    client: smtplib.SMTP | None = None
    try:
        if target.tls:
            client = smtplib.SMTP_SSL(
                target.host, target.port, timeout=TIMEOUT, context=_tls_context(settings)
            )
        else:
            client = smtplib.SMTP(target.host, target.port, timeout=TIMEOUT)
        client.ehlo()
        secure = target.tls
        if not secure and client.has_extn("starttls"):
            client.starttls(context=_tls_context(settings))
            client.ehlo()
            secure = True
        if settings.smtp_username:
            if not secure:
                raise ConfigurationError(
                    f"{target} offers no STARTTLS: the SMTP password would travel in clear",
                    hint="use smtps:// or a server that offers STARTTLS",
                )
            client.login(settings.smtp_username, settings.smtp_password)
        return client
    except BaseException as error:
        if client is not None:
            client.close()
        raise _setup_error(error, settings, target) from None


def _setup_error(error: BaseException, settings: Settings, target: SmtpTarget) -> BaseException:
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return ConfigurationError(
            f"{target} refused the login of {settings.smtp_username!r}: {error.smtp_code}",
            hint="check SPAMPOTS_SMTP_USERNAME and SPAMPOTS_SMTP_PASSWORD(_FILE)",
        )
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return ConfigurationError(
            f"{target} does not offer what is configured: {error}",
            hint="check SPAMPOTS_SMTP_URL and whether the server wants SPAMPOTS_SMTP_USERNAME",
        )
    if isinstance(error, ssl.SSLError):
        return ConfigurationError(
            f"TLS with {target} failed: {error.reason or error}",
            hint="check the server's certificate and SPAMPOTS_SMTP_CA_FILE",
        )
    if isinstance(error, smtplib.SMTPResponseException):
        return _classify(error.smtp_code, error.smtp_error, "the greeting", target)
    if isinstance(error, (OSError, smtplib.SMTPException)):
        return SmtpTemporaryError(
            f"cannot talk to {target}: {error or type(error).__name__}",
            hint="it will be tried again with backoff",
        )
    return error


class SmtpSession:
    def __init__(self, client: smtplib.SMTP, target: SmtpTarget) -> None:
        self.client = client
        self.target = target

    def send(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        before_data: Callable[[], None] = lambda: None,
    ) -> str:
        """One envelope for one recipient; returns the server's acceptance reply.

        ``before_data`` runs after the recipient is accepted and before the message is sent:
        the caller records its intent there.
        """
        client = self.client
        try:
            code, reply = client.mail(sender)
            if code != 250:
                raise _classify(code, reply, f"MAIL FROM:<{sender}>", self.target)
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                client.rset()
                raise _classify(code, reply, f"RCPT TO:<{recipient}>", self.target)
        except (OSError, smtplib.SMTPServerDisconnected) as error:
            raise SmtpTemporaryError(
                f"{self.target} went away before the message was sent: {error}",
                hint="it will be tried again with backoff",
            ) from None
        before_data()
        try:
            code, reply = client.data(data)
        except smtplib.SMTPDataError as error:  # refused before the message was sent
            raise _classify(error.smtp_code, error.smtp_error, "DATA", self.target) from None
        except (OSError, smtplib.SMTPServerDisconnected) as error:
            raise SmtpUncertainError(
                f"{self.target} went away while taking the message to {recipient}: {error}",
                hint="check the server's log for the Message-ID; run with --resend if it is "
                "not there",
            ) from None
        if code != 250:
            raise _classify(code, reply, "the message", self.target)
        return f"{code} {reply.decode('utf-8', 'replace')}"
