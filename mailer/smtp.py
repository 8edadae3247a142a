"""One SMTP connection (aiosmtplib), kept open for many letters, and what its errors mean.

aiosmtplib serialises everything on one `SMTP` object, so parallel sending takes one
`Connection` per worker. Each letter is sent as MAIL, RCPT..., DATA by hand rather than with
`sendmail`, because the outcome depends on *when* a failure happens: before DATA the server
certainly does not have the letter (safe to retry); during or after DATA it may (``unknown``).
MAIL and RCPT go through `execute_command` with the addresses we validated: aiosmtplib's
`mail`/`rcpt` re-parse them with `email.utils.parseaddr` (slow, and see CVE-2023-27043).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

from .errors import AuthError, ConfigError, ServerUnreachable, TLSError
from .message import Letter
from .outcome import Status
from .settings import Settings, is_loopback


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one try at one letter."""

    status: Status
    code: int | None = None
    reply: str = ""
    # True when another try could succeed (4xx, timeout, dropped connection before DATA).
    retry: bool = False


def check_security(settings: Settings) -> None:
    """Refuse to send a password in clear text to another machine (unless allowed)."""
    if (settings.smtp_username and settings.security == "none"
            and not is_loopback(settings.smtp_host) and not settings.allow_insecure_auth):
        raise ConfigError(
            f"refusing to send the password for {settings.smtp_username} to "
            f"{settings.smtp_host} without TLS; set MAILER_SMTP_SECURITY=starttls or tls "
            "(or MAILER_ALLOW_INSECURE_AUTH=true if you really mean it)")
    if bool(settings.smtp_username) != bool(settings.smtp_password):
        raise ConfigError("set both MAILER_SMTP_USERNAME and MAILER_SMTP_PASSWORD, or neither")


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A verifying TLS context, trusting `smtp_ca_file` instead of the system store if set."""
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"setting MAILER_SMTP_CA_FILE: cannot load {cafile}: {error}") from None


class Connection:
    """A long-lived, self-reconnecting SMTP session to the configured server."""

    def __init__(self, settings: Settings, context: ssl.SSLContext) -> None:
        self.settings = settings
        self._context = context
        self._smtp: aiosmtplib.SMTP | None = None

    @property
    def server(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    async def open(self) -> None:
        """Connect, secure and log in; raise a fatal SendError if that cannot work."""
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        smtp = aiosmtplib.SMTP(
            hostname=settings.smtp_host, port=settings.smtp_port, timeout=settings.timeout,
            use_tls=settings.security == "tls", start_tls=settings.security == "starttls",
            tls_context=self._context if settings.security != "none" else None,
            local_hostname="localhost" if is_loopback(settings.smtp_host) else None)
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            if settings.smtp_username and password is not None:
                await smtp.login(settings.smtp_username, password)
        except aiosmtplib.SMTPAuthenticationError as error:
            smtp.close()
            raise AuthError(f"{self.server} rejected the login for {settings.smtp_username}: "
                            f"{error.code} {error.message}; check MAILER_SMTP_USERNAME and "
                            "MAILER_SMTP_PASSWORD", code=error.code) from None
        except ssl.SSLError as error:
            smtp.close()
            detail = getattr(error, "verify_message", None)
            reason = f"{error.reason}: {detail}" if detail else (error.reason or str(error))
            raise TLSError(f"TLS with {self.server} failed: {reason}; the "
                           "certificate must be valid for the host (or set "
                           "MAILER_SMTP_CA_FILE to trust a private CA)") from None
        except (aiosmtplib.SMTPConnectError, OSError) as error:
            smtp.close()
            raise ServerUnreachable(f"cannot connect to {self.server}: "
                                    f"{getattr(error, 'message', None) or error}; is the server "
                                    "running? check MAILER_SMTP_HOST and MAILER_SMTP_PORT"
                                    ) from None
        except aiosmtplib.SMTPException as error:
            smtp.close()
            message = getattr(error, "message", str(error))
            if "STARTTLS" in str(message).upper() or "TLS" in type(error).__name__.upper():
                raise TLSError(f"{self.server}: {message}; the server offers no STARTTLS: "
                               "check MAILER_SMTP_PORT and MAILER_SMTP_SECURITY") from None
            raise ServerUnreachable(f"cannot talk to {self.server}: {message}") from None
        self._smtp = smtp

    def close(self) -> None:
        """Drop the connection (a later `send` reconnects)."""
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    async def quit(self) -> None:
        """End the session politely."""
        if self._smtp is not None and self._smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await self._smtp.quit()
        self.close()

    async def send(self, letter: Letter,
                   before_data: Callable[[Letter], Awaitable[None]]) -> Attempt:
        """One try at one letter; `before_data` is awaited just before DATA (the letter
        goes no further if it raises).

        Fatal errors (login, TLS, the log's) raise; everything else is classified into an
        Attempt.
        """
        if self._smtp is None or not self._smtp.is_connected:
            self.close()
            try:
                await self.open()
            except ServerUnreachable as error:
                return Attempt(Status.DEFERRED, reply=str(error), retry=True)
        smtp = self._smtp
        assert smtp is not None
        in_data = False
        try:
            reply = await smtp.execute_command(b"MAIL", b"FROM:<%s>" % letter.sender.encode())
            if reply.code != 250:
                await _reset(smtp)
                return _reply(reply.code, reply.message)
            refused = []
            for address in letter.envelope:
                reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % address.encode())
                if reply.code not in (250, 251):
                    refused.append((address, reply))
            if len(refused) == len(letter.envelope):
                await _reset(smtp)
                return _reply(refused[0][1].code, refused[0][1].message)
            try:
                await before_data(letter)
            except BaseException:
                self.close()  # mid-transaction: not to be reused
                raise
            in_data = True
            response = await smtp.data(letter.data)
        except aiosmtplib.SMTPResponseException as error:
            if error.code == 421 or not smtp.is_connected:
                self.close()
            return _reply(error.code, error.message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                ConnectionError, TimeoutError) as error:
            self.close()
            reason = f"{type(error).__name__}: {error}"
            if in_data:
                return Attempt(Status.UNKNOWN, reply=f"{reason} during DATA: the server may "
                               "have the letter")
            return Attempt(Status.DEFERRED, reply=reason, retry=True)
        note = "".join(f"; {address} refused: {r.code} {r.message}" for address, r in refused)
        return Attempt(Status.SENT, response.code, response.message + note)
def _reply(code: int, message: str) -> Attempt:
    if 400 <= code < 500:
        return Attempt(Status.DEFERRED, code, message, retry=True)
    return Attempt(Status.FAILED, code, message)


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.rset()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()
