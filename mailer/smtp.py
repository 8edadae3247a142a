"""One SMTP connection (aiosmtplib), kept open for many letters, and what its replies mean.

aiosmtplib serialises everything on one `SMTP` object, so parallel sending takes one
`Connection` per worker. Each letter is sent as MAIL, RCPT..., DATA by hand rather than with
`sendmail`, because its fate depends on *when* something goes wrong: before the letter's
content is sent the server certainly does not have it (safe to retry); after it, anything
but a well-formed reply leaves it ``unknown``. After any failed exchange the transaction is
reset (RSET), and a connection in a state that is not known is dropped.

A letter is ``sent`` only if its own recipient (the row's address) and its content were
accepted; a refused Cc or Bcc is kept in the reply, not retried. MAIL and RCPT go through
`execute_command` with the addresses we validated: aiosmtplib's `mail`/`rcpt` re-parse them
with `email.utils.parseaddr` (slow, and see CVE-2023-27043).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

from .account import Login
from .errors import AuthError, ConfigError, MailerError, ServerUnreachable, TLSError
from .message import Letter
from .outcome import Status
from .replies import known
from .settings import Settings, is_loopback

# The content goes out a slice at a time, each written once the last has left (no copy of a
# large letter in the transport's buffer).
_SLICE = 1 << 16
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_PERIOD = re.compile(rb"(?m)^\.")
# A reply asking the whole client to slow down, not refusing one recipient.
# ("Try again later" is not one: greylisting says it of one recipient.)
_RATE_WORDS = re.compile(r"rate|too (many|much)|busy|slow down|limit", re.IGNORECASE)
# A reply naming an address (`<p1@example.org>: Recipient address rejected: ...`) is about it.
_NAMES_ADDRESS = re.compile(r"<[^<>@\s]+@[^<>\s]+>")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one try at one letter."""

    status: Status
    code: int | None = None
    reply: str = ""
    # True when another try could succeed (4xx, timeout, dropped connection before DATA).
    retry: bool = False
    # The server asked the whole run to slow down (421, a rate reply, too many connections).
    throttled: bool = False
    # This connection could not be opened while others are: the server allows fewer.
    extra_connection: bool = False
    # Cc or Bcc addresses the server refused while it took the letter.
    copies_refused: int = 0
    # The reply is about the account's quota (replies.KNOWN): what it means, else "".
    quota: str = ""


def reply_text(message: str) -> str:
    """A server's words as text: aiosmtplib keeps bytes that are not UTF-8 as surrogates,
    which no file or terminal takes; they become U+FFFD."""
    return message.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A verifying TLS context, trusting `smtp_ca_file` instead of the system store if set."""
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"setting MAILER_SMTP_CA_FILE: cannot load {cafile}: {error}") from None


class Connection:
    """A long-lived, self-reconnecting SMTP session to the configured server."""

    def __init__(self, settings: Settings, context: ssl.SSLContext,
                 login: Login | None = None) -> None:
        self.settings = settings
        self._context = context
        self._login = login
        self._smtp: aiosmtplib.SMTP | None = None
        # Whether the letter being tried has reached DATA: a stop that cancels `send` after
        # this may have left it with the server.
        self.reached_data = False

    @property
    def server(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    async def open(self) -> None:
        """Connect, secure and log in; raise a fatal SendError if that cannot work."""
        settings = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=settings.smtp_host, port=settings.smtp_port, timeout=settings.timeout,
            use_tls=settings.security == "tls", start_tls=settings.security == "starttls",
            tls_context=self._context if settings.security != "none" else None,
            local_hostname="localhost" if is_loopback(settings.smtp_host) else None)
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            if self._login is not None:
                await self._log_in(smtp, self._login)
        except BaseException as error:
            smtp.close()
            if isinstance(error, Exception):
                raise self._explain(error) from None
            raise
        self._smtp = smtp

    async def _log_in(self, smtp: aiosmtplib.SMTP, login: Login) -> None:
        if self.settings.security == "none" and smtp.supports_extension("starttls") \
                and not smtp.supports_extension("auth"):
            raise self._needs_starttls("logs in only after STARTTLS")
        if login.mechanism == "password":
            await smtp.login(login.username, login.secret())
            return
        if "xoauth2" not in smtp.server_auth_methods:
            raise AuthError(f"{self.server} does not offer XOAUTH2 logins (it offers "
                            f"{', '.join(smtp.server_auth_methods) or 'none'}); check "
                            "MAILER_SMTP_HOST, or set MAILER_SMTP_AUTH=password")
        # A fresh token for each login: the command may take a moment (a refresh).
        await smtp.auth_xoauth2(login.username, await asyncio.to_thread(login.secret))

    def _explain(self, error: Exception) -> Exception:
        """The fatal error a failed connection means, with what to do about it."""
        cause = error.__cause__ if isinstance(error.__cause__, ssl.SSLError) else error
        if isinstance(error, MailerError):
            return error
        if isinstance(error, aiosmtplib.SMTPAuthenticationError):
            text = reply_text(error.message)
            entry = known(error.code, text)
            if self.settings.smtp_auth == "xoauth2":  # a provider's advice is about passwords
                advice = ("the server does not take this access token: check "
                          "MAILER_SMTP_USERNAME, and that MAILER_SMTP_OAUTH2_TOKEN_COMMAND "
                          "prints a current token for that account")
            elif entry is not None:
                advice = entry.advice
            else:
                advice = "check MAILER_SMTP_USERNAME and the password"
            return AuthError(f"{self.server} rejected the login for "
                             f"{self.settings.smtp_username}: {error.code} {text}; {advice}",
                             code=error.code)
        if isinstance(cause, ssl.SSLError):
            return self._tls_failed(cause)
        if isinstance(error, aiosmtplib.SMTPConnectResponseError):
            return ServerUnreachable(
                f"{self.server} refused the connection: {error.code} "
                f"{reply_text(error.message)}; it may be busy, or allow fewer connections "
                "at once (MAILER_CONCURRENCY): try again later", code=error.code)
        if isinstance(error, aiosmtplib.SMTPConnectTimeoutError) \
                and self.settings.security != "tls" and "ready" in str(error):
            # Connected, but no greeting: the server waits for a TLS handshake first.
            return ServerUnreachable(f"{self.server} took the connection but sent no "
                                     "greeting; a port that wants TLS from the start (465 "
                                     "usually) needs MAILER_SMTP_SECURITY=tls")
        if isinstance(error, aiosmtplib.SMTPConnectError | OSError):
            text = getattr(error, "message", None) or str(error)
            return ServerUnreachable(f"cannot connect to {self.server}: {text}; is the server "
                                     "running? check MAILER_SMTP_HOST and MAILER_SMTP_PORT")
        message = reply_text(getattr(error, "message", str(error)))
        if "STARTTLS" in message.upper():
            return TLSError(f"{self.server}: {message}; the server offers no STARTTLS: "
                            "check MAILER_SMTP_PORT and MAILER_SMTP_SECURITY")
        return ServerUnreachable(f"cannot talk to {self.server}: {message}")

    def _tls_failed(self, error: ssl.SSLError) -> TLSError:
        detail = getattr(error, "verify_message", None)
        reason = f"{error.reason}: {detail}" if detail else (error.reason or str(error))
        if error.reason == "WRONG_VERSION_NUMBER":
            return TLSError(f"TLS with {self.server} failed: the server did not answer in "
                            f"TLS, so MAILER_SMTP_SECURITY={self.settings.security} does not "
                            "fit this port; port 587 usually wants starttls, 465 tls")
        return TLSError(f"TLS with {self.server} failed: {reason}; the certificate must be "
                        "valid for the host (or set MAILER_SMTP_CA_FILE to trust a private CA)")

    def _needs_starttls(self, what: str) -> TLSError:
        return TLSError(f"{self.server} {what}: it offers STARTTLS, so set "
                        "MAILER_SMTP_SECURITY=starttls")

    async def offers(self, extension: str) -> bool:
        """Whether the server offers an ESMTP `extension` (connecting if need be)."""
        if self._smtp is None or not self._smtp.is_connected:
            await self.open()
        assert self._smtp is not None
        return self._smtp.supports_extension(extension)

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
        """One try at one letter; `before_data` begins with the exchange and must be done
        before DATA (the letter goes no further if it raises).

        Fatal errors (login, TLS, the log's) raise; everything else is an Attempt.
        """
        self.reached_data = False
        if self._smtp is None or not self._smtp.is_connected:
            self.close()
            try:
                await self.open()
            except ServerUnreachable as error:
                refused = error.code is not None
                return Attempt(Status.DEFERRED, error.code, str(error), retry=True,
                               throttled=refused, extra_connection=refused)
        smtp = self._smtp
        assert smtp is not None
        limit = smtp.esmtp_extensions.get("size", "")
        if limit.isdigit() and 0 < int(limit) < len(letter.data):
            return Attempt(Status.FAILED, reply=f"the letter is {_size(len(letter.data))} and "
                           f"{self.server} takes at most {_size(int(limit))} (its SIZE); make "
                           "the attachments smaller")
        if letter.smtputf8 and not smtp.supports_extension("smtputf8"):
            return Attempt(Status.FAILED, reply=f"{self.server} does not take international "
                           "addresses (it offers no SMTPUTF8), and this letter has one")
        # The mark's commit goes on while MAIL and RCPT cross the network: it need only be on
        # disk before DATA, and at 20 ms a round trip that hides its fsync. (A letter refused
        # at RCPT was marked for nothing; its outcome replaces the mark.)
        mark = asyncio.ensure_future(before_data(letter))
        try:
            attempt = await self._exchange(smtp, letter, mark)
        except BaseException:
            # The exchange's error is the one to report (a cancelled mark's would hide it).
            if mark.done() and not mark.cancelled():
                mark.exception()
            else:
                mark.cancel()
            raise
        await mark  # its error (the log's) is fatal, whatever the exchange became
        return attempt

    async def _exchange(self, smtp: aiosmtplib.SMTP, letter: Letter,
                        mark: asyncio.Future[None]) -> Attempt:
        sent = False  # the letter's content has gone: only a good reply may settle it
        try:
            reply = await smtp.execute_command(
                b"MAIL", b"FROM:<%s>" % letter.sender.encode(),
                *([b"SMTPUTF8"] if letter.smtputf8 else []))
            if reply.code != 250:
                return await self._refused(reply, at_mail=True)
            own = next((a for a in letter.envelope if a.casefold() == letter.email.casefold()),
                       letter.envelope[0])
            others: list[str] = []
            for address in letter.envelope:
                reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % address.encode())
                if reply.code in (250, 251):
                    continue
                if address == own:
                    return await self._refused(reply)
                others.append(f"{address} refused: {reply.code} {reply_text(reply.message)}")
            try:
                await mark
            except BaseException:
                self.close()  # mid-transaction: not to be reused
                raise
            self.reached_data = True
            reply = await smtp.execute_command(b"DATA")
            if reply.code != 354:
                return await self._refused(reply)
            sent = True
            reply = await self._content(smtp, letter.data)
            if reply.code != 250:
                return await self._refused(reply)
        except MailerError:
            raise  # fatal (TLS, the log): not a dropped connection, though some subclass one
        except aiosmtplib.SMTPResponseException as error:  # a reply that is not one
            self.close()
            text = f"{error.code} {reply_text(error.message)}"
            if sent:
                return Attempt(Status.UNKNOWN, reply=f"{text} after the letter was sent: the "
                               "server may have it")
            return Attempt(Status.DEFERRED, reply=text, retry=True)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                ConnectionError, TimeoutError) as error:
            self.close()
            reason = f"{type(error).__name__}: {error}"
            if sent:
                return Attempt(Status.UNKNOWN, reply=f"{reason} after the letter was sent: "
                               "the server may have it")
            return Attempt(Status.DEFERRED, reply=reason, retry=True)
        return Attempt(Status.SENT, reply.code, "; ".join([reply_text(reply.message), *others]),
                       copies_refused=len(others))

    async def _content(self, smtp: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
        """Send a letter's content and its final dot; the server's reply."""
        protocol = smtp.protocol
        assert protocol is not None
        if _BARE_LINE_END.search(data):
            data = _LINE_END.sub(b"\r\n", data)
        if data.startswith(b".") or b"\n." in data:
            data = _PERIOD.sub(b"..", data)  # RFC 5321 4.5.2
        timeout = self.settings.timeout
        for start in range(0, len(data), _SLICE):
            protocol.write(data[start:start + _SLICE])
            # The transport's flow control, as asyncio's StreamWriter.drain() waits for it.
            await asyncio.wait_for(protocol._drain_helper(), timeout)
        protocol.write(b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n")
        return await protocol.read_response(timeout=timeout)

    async def _refused(self, reply: aiosmtplib.SMTPResponse, *,
                       at_mail: bool = False) -> Attempt:
        """End the transaction after a refusal and say what the refusal means."""
        code, text = reply.code, reply_text(reply.message)
        if code == 421:  # the server is closing the session
            self.close()
        elif self._smtp is not None:
            try:
                await self._smtp.rset()
            except (aiosmtplib.SMTPException, OSError):
                self.close()
        entry = known(code, text)
        if entry is not None and entry.meaning == "tls" and self.settings.security == "none":
            raise self._needs_starttls(f"refused to take mail without TLS ({code} {text})")
        if entry is not None and entry.meaning == "quota":
            return Attempt(Status.DEFERRED, code, text, quota=entry.advice)
        if not 400 <= code < 500:
            return Attempt(Status.FAILED, code, text)
        enhanced = _ENHANCED.match(text)
        throttled = (code == 421 or at_mail or (
            enhanced is not None and enhanced[2] == "7" and bool(_RATE_WORDS.search(text))
            and not _NAMES_ADDRESS.search(text)))
        return Attempt(Status.DEFERRED, code, text, retry=True, throttled=throttled)
