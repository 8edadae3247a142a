"""The sender's own mailbox over IMAP (stdlib imaplib): read without changing it, and a copy
of each letter put into its Sent folder.

Reading never changes the mailbox: folders are opened with EXAMINE (read-only) and messages
fetched with BODY.PEEK, so no flag is set and nothing is moved or deleted. The only write is
`append`, into the folder `sent_folder` names. TLS is verified as for SMTP, and the login
never goes over a connection that is not encrypted.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from types import TracebackType
from typing import Any

from .account import Login
from .errors import AuthError, ConfigError, MailboxError
from .settings import ENV_KEYS, Settings

# UIDs asked for in one FETCH: a few hundred keep each answer small and the round trips few.
BATCH = 500
# Sent folders' usual names, for servers without the \Sent attribute (RFC 6154).
_SENT_NAMES = ("sent", "sent items", "sent messages", "sent mail", "inbox.sent", "gesendet",
               "gesendete objekte", "envoyés", "éléments envoyés", "enviados", "posta inviata",
               "verzonden items", "skickat", "wysłane")
_LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?P<delimiter>NIL|"(?:\\.|[^"\\])*") '
                        rb'(?P<name>.*)$')
_UID = re.compile(rb"\bUID (\d+)")
_MODIFIED_BASE64 = re.compile(r"&([A-Za-z0-9+,]*)-")


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder as LIST names it: `name` to show and to ask for, `flags` lower-cased."""

    name: str
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message: its UID, when the server got it (Unix time), and the bytes asked for."""

    uid: int
    received: float
    data: bytes


def mailbox_context(settings: Settings) -> ssl.SSLContext:
    """A verifying TLS context, trusting the IMAP (else the SMTP) CA file if one is set."""
    field = settings.imap_field("ca_file")
    cafile = getattr(settings, field)
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"setting {ENV_KEYS[field]}: cannot load {cafile}: {error}") from None


class Mailbox:
    """One IMAP session: ``with Mailbox(settings, login, context) as mailbox: ...``."""

    def __init__(self, settings: Settings, login: Login, context: ssl.SSLContext) -> None:
        self.server = f"{settings.mailbox_host}:{settings.mailbox_port}"
        self._settings = settings
        self._login = login
        self._context = context
        self._imap: imaplib.IMAP4 | None = None

    def __enter__(self) -> Mailbox:
        settings = self._settings
        host, port = settings.mailbox_host, settings.mailbox_port
        try:
            if settings.imap_security == "tls":
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=self._context,
                                                        timeout=settings.timeout)
            else:
                imap = imaplib.IMAP4(host, port, timeout=settings.timeout)
                try:
                    imap.starttls(self._context)
                except BaseException:
                    imap.shutdown()
                    raise
        except ssl.SSLError as error:
            raise self._tls_failed(error) from None
        except (OSError, imaplib.IMAP4.error) as error:
            raise MailboxError(f"cannot connect to the mailbox at {self.server}: {error}; "
                               "check MAILER_IMAP_HOST, MAILER_IMAP_PORT and "
                               "MAILER_IMAP_SECURITY") from None
        self._imap = imap
        try:
            self._log_in(imap)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._imap is not None and kind is None:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                self._imap.logout()
        self.close()

    def close(self) -> None:
        if self._imap is not None:
            with contextlib.suppress(OSError):
                self._imap.shutdown()
            self._imap = None

    def _tls_failed(self, error: ssl.SSLError) -> MailboxError:
        detail = getattr(error, "verify_message", None) or error.reason or str(error)
        return MailboxError(f"TLS with the mailbox at {self.server} failed: {detail}; the "
                            "certificate must be valid for the host (or set "
                            "MAILER_IMAP_CA_FILE to trust a private CA), and port 993 wants "
                            "MAILER_IMAP_SECURITY=tls, 143 starttls")

    def _log_in(self, imap: imaplib.IMAP4) -> None:
        login = self._login
        try:
            if login.mechanism == "xoauth2":
                token = login.secret()
                imap.authenticate("XOAUTH2", lambda _: (
                    f"user={login.username}\x01auth=Bearer {token}\x01\x01".encode()))
            else:
                imap.login(login.username, login.secret())
        except imaplib.IMAP4.error as error:
            raise AuthError(f"the mailbox at {self.server} refused the login of "
                            f"{login.username}: {_said(error)}; check MAILER_IMAP_USERNAME "
                            "and its password (an app password, for Gmail)") from None
        except (OSError, imaplib.IMAP4.abort) as error:
            raise self._broken(error) from None

    def _broken(self, error: Exception) -> MailboxError:
        return MailboxError(f"the mailbox at {self.server} broke the connection: "
                            f"{_said(error)}; try again later")

    def _command(self, name: str, *args: Any, **options: Any) -> list[Any]:
        """Run imaplib's `name`; its untagged data, or MailboxError with the server's words."""
        assert self._imap is not None
        try:
            kind, data = getattr(self._imap, name)(*args, **options)
        except imaplib.IMAP4.abort as error:
            raise self._broken(error) from None
        except imaplib.IMAP4.error as error:
            raise MailboxError(f"the mailbox at {self.server} refused {name.upper()} "
                               f"{_args(args)}: {_said(error)}") from None
        except OSError as error:
            raise self._broken(error) from None
        if kind != "OK":
            raise MailboxError(f"the mailbox at {self.server} refused {name.upper()} "
                               f"{_args(args)}: {_said(data)}")
        return list(data)

    @property
    def account(self) -> str:
        """`olive@example.org at imap.example.org:993`: whose mailbox this is."""
        return f"{self._login.username} at {self.server}"

    @property
    def capabilities(self) -> frozenset[str]:
        assert self._imap is not None
        return frozenset(c.upper() for c in self._imap.capabilities)

    def folders(self) -> list[Folder]:
        found = []
        for item in self._command("list", '""', "*"):
            line = b"".join(item) if isinstance(item, tuple) else item
            match = _LIST_LINE.match(line) if isinstance(line, bytes) else None
            if match is None:
                continue
            raw = match["name"].decode("utf-8", "replace").strip()
            if raw.startswith('"') and raw.endswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            flags = frozenset(match["flags"].decode("ascii", "replace").lower().split())
            found.append(Folder(decode_folder(raw), flags))
        return found

    def sent_folder(self) -> Folder | None:
        """The Sent folder: the one with the \\Sent attribute, else one by its usual name."""
        folders = [f for f in self.folders() if "\\noselect" not in f.flags]
        marked = [f for f in folders if "\\sent" in f.flags]
        named = [f for f in folders if f.name.casefold() in _SENT_NAMES]
        ranked = marked or sorted(named, key=lambda f: _SENT_NAMES.index(f.name.casefold()))
        return ranked[0] if ranked else None

    def examine(self, folder: str) -> int:
        """Open `folder` read-only; its UIDVALIDITY."""
        self._command("select", quote_folder(folder), readonly=True)
        assert self._imap is not None
        _, data = self._imap.response("UIDVALIDITY")
        value = data[0] if data else None
        if not isinstance(value, bytes) or not value.strip().isdigit():
            raise MailboxError(f"the mailbox at {self.server} gave {folder} no UIDVALIDITY; "
                               "it cannot be read safely (RFC 3501 requires one)")
        return int(value)

    def search(self, since: date, after_uid: int) -> list[int]:
        """UIDs of the messages received since `since` with a UID above `after_uid`."""
        data = self._command("uid", "SEARCH", "UID", f"{after_uid + 1}:*", "SINCE",
                             f"{since.day}-{since.strftime('%b')}-{since.year}")
        found = b" ".join(d for d in data if isinstance(d, bytes)).split()
        # `n:*` always takes in the last message, even below n (RFC 3501 6.4.8).
        return sorted(uid for uid in map(int, found) if uid > after_uid)

    def fetch(self, uids: Sequence[int], part: str = "HEADER") -> Iterator[Fetched]:
        """Each message's `part` (HEADER, or "" for all of it), BATCH at a time; read with
        BODY.PEEK, so its flags stay as they were."""
        for start in range(0, len(uids), BATCH):
            batch = uids[start:start + BATCH]
            data = self._command("uid", "FETCH", _uid_set(batch),
                                 f"(UID INTERNALDATE BODY.PEEK[{part}])")
            # Each message: a tuple (head with its literal's size, literal), then b")" or,
            # from servers that give UID after the literal, b" UID 7)".
            for index, item in enumerate(data):
                if not isinstance(item, tuple):
                    continue
                head = item[0] + (data[index + 1] if index + 1 < len(data)
                                  and isinstance(data[index + 1], bytes) else b"")
                uid, when = _UID.search(head), imaplib.Internaldate2tuple(head)
                if uid is None:
                    continue
                yield Fetched(int(uid[1]), time.mktime(when) if when else time.time(), item[1])

    def append(self, folder: str, data: bytes, when: float) -> None:
        """Put a copy of `data` into `folder`, marked read (\\Seen)."""
        self._command("append", quote_folder(folder), "(\\Seen)",
                      imaplib.Time2Internaldate(when), data)


def _uid_set(uids: Iterable[int]) -> str:
    """`101:105,108`: runs of consecutive UIDs as ranges, so a command line stays short."""
    ranges: list[list[int]] = []
    for uid in sorted(uids):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges)


def _args(args: Sequence[object]) -> str:
    return " ".join(a for a in args if isinstance(a, str))[:80]


def _said(what: object) -> str:
    """A server's words as one line of text (never bytes' repr)."""
    parts = what.args if isinstance(what, Exception) else what
    items = parts if isinstance(parts, list | tuple) else [parts]
    text = " ".join(i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i)
                    for i in items if i is not None)
    return re.sub(r"\s+", " ", text).strip()[:300] or "no reason given"


def quote_folder(name: str) -> str:
    """A folder name as an IMAP command takes it: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    encoded = encode_folder(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_folder(name: str) -> str:
    out, pending = [], ""

    def flush() -> None:
        nonlocal pending
        if pending:
            raw = base64.b64encode(pending.encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + raw.replace("/", ",") + "-")
            pending = ""

    for char in name:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending += char
    flush()
    return "".join(out)


def decode_folder(raw: str) -> str:
    def decoded(match: re.Match[str]) -> str:
        text = match[1]
        if not text:
            return "&"
        padded = text.replace(",", "/") + "=" * (-len(text) % 4)
        try:
            return base64.b64decode(padded).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return match[0]

    return _MODIFIED_BASE64.sub(decoded, raw)
