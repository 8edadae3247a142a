"""The one exception family of mailer.

Every error a user can cause or meet carries the message they should read; the CLI prints
``str(error)`` and exits with ``error.exit_code``, never a traceback::

    MailerError                     exit 2: nothing was attempted, or the run had to stop
    ├── ConfigError (ValueError)    a setting, flag or file path is wrong
    ├── InputError                  exit 1: the list or template has problems, all listed
    ├── MailboxError (ConnectionError)  the sender's mailbox (IMAP) cannot be read or written
    ├── SendError                   exit 1: the server stopped the run (code, recipient)
    │   ├── AuthError (PermissionError)  (a mailbox's refused login too)
    │   ├── TLSError (ConnectionError)
    │   ├── ServerUnreachable (ConnectionError)
    │   └── TooManyFailures
    └── LogError (OSError)          the send log cannot be opened or written
        ├── LogLocked               another run holds the log's lease
        └── LeaseLost               another run took this run's lease over
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, located as an editor shows it (lines count from 1)."""

    file: str
    line: int | None
    message: str
    column: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.column}: {self.message}" if self.column else self.message
        return f"{where}: {what}"


class MailerError(Exception):
    """Base of every error mailer raises on purpose; its text is meant for the user."""

    exit_code = 2


class ConfigError(MailerError, ValueError):
    """A setting, flag or file path is wrong; nothing was attempted."""


class InputError(MailerError):
    """The recipient list or the template has problems; all of them are listed."""

    exit_code = 1

    def __init__(self, problems: list[Problem], summary: str = "") -> None:
        self.problems = problems
        lines = [str(p) for p in problems]
        if summary:
            lines.append(summary)
        super().__init__("\n".join(lines))


class MailboxError(MailerError, ConnectionError):
    """The sender's mailbox cannot be reached, or refused what was asked of it."""


class SendError(MailerError):
    """The SMTP server refused or broke the session in a way that stops the whole run."""

    exit_code = 1

    def __init__(self, message: str, *, code: int | None = None, recipient: str | None = None):
        self.code = code
        self.recipient = recipient
        super().__init__(message)


class AuthError(SendError, PermissionError):
    """The server rejected the login."""


class TLSError(SendError, ConnectionError):
    """TLS could not be set up or the certificate did not verify."""


class ServerUnreachable(SendError, ConnectionError):
    """No connection to the SMTP server could be made."""


class TooManyFailures(SendError):
    """Consecutive failures crossed the threshold, so the run paused itself."""


class LogError(MailerError, OSError):
    """The send log cannot be opened or written."""


class LogLocked(LogError):
    """Another ``mailer send`` holds the send log's lease."""


class LeaseLost(LogError):
    """Another run found this one silent and took the log's lease over: stop sending."""
