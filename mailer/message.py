"""Rendered letters to RFC 5322 / MIME bytes, written directly rather than with `EmailMessage`.

The stdlib's policy machinery costs more than everything else in a dry run, and a letter needs
only a small, fixed part of MIME: folded or RFC 2047-encoded headers, a UTF-8 text part (7bit
or quoted-printable), an optional HTML alternative and attachments. Attachments are the same
in every letter, so each is encoded once. Property tests parse every shape this writes back
with `email.parser.BytesParser(policy=email.policy.default)` and compare.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path

from .addresses import InvalidAddress, Mailbox, parse_address_list
from .recipients import Recipient
from .settings import Settings
from .template import ADDRESS_HEADERS, LetterTemplate, Rendered, RenderError

_MAX_LINE = 998
_FOLD_AT = 78
# Bytes of UTF-8 per encoded word, so that `=?utf-8?b?...?=` stays within 75 characters.
_WORD_BYTES = 45
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "!#$%&'*+-/=?^_`{|}~ ")


@dataclass(frozen=True, slots=True)
class Letter:
    """A letter ready for SMTP: who it is for, the envelope, and the exact bytes to send."""

    line: int
    email: str
    sender: str
    envelope: tuple[str, ...]
    message_id: str
    data: bytes


def message_id(campaign: str, email: str, domain: str) -> str:
    """A Message-ID stable for one (campaign, recipient), so a resent letter is recognisable."""
    digest = hashlib.sha256(f"{campaign}\0{email.casefold()}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


class LetterBuilder:
    """Turns recipients into `Letter`s through a template; one builder per campaign."""

    def __init__(self, template: LetterTemplate, settings: Settings, campaign: str) -> None:
        self.template = template
        self.settings = settings
        self.campaign = campaign
        self._domain = settings.from_address.rpartition("@")[2]
        self._from = address_header("From", [Mailbox(settings.sender_name,
                                                     settings.from_address)])
        self._extra = {"sender_name": settings.sender_name,
                       "sender_email": settings.from_address}
        self._date = ("", -1)

    def build(self, recipient: Recipient, *, redirect_to: str | None = None) -> Letter:
        """Render and encode one letter; raise RenderError naming what is wrong with it.

        `redirect_to` sends the letter, unchanged, to that address instead (a test send).
        """
        rendered = self.template.render({**self._extra, **recipient.fields})
        return self.encode(recipient, rendered, redirect_to=redirect_to)

    def encode(self, recipient: Recipient, rendered: Rendered, *,
               redirect_to: str | None = None) -> Letter:
        """Encode an already rendered letter (see `build`)."""
        lines: list[str] = []
        envelope: list[str] = []
        allowed = _Allowed(recipient, self.template)
        for name in ADDRESS_HEADERS:
            mailboxes = [m for value in rendered.get(name) for m in _mailboxes(name, value)]
            if name == "To" and not mailboxes:
                mailboxes = [Mailbox(_default_name(recipient.fields), recipient.email)]
            if name == "From" and not mailboxes:
                lines.append(self._from)
                continue
            if name in ("To", "Cc", "Bcc"):
                for box in mailboxes:
                    if box.address.casefold() not in allowed:
                        raise RenderError(f"the {name} header names {box.address}, which is "
                                          "neither this row's value nor written in the template;"
                                          " a value in a name field must not add a recipient")
                    address = box.address
                    if address.casefold() not in {a.casefold() for a in envelope}:
                        envelope.append(address)
            if mailboxes and name != "Bcc":
                lines.append(address_header(name, mailboxes))
        for name, value in rendered.headers:
            if name not in ADDRESS_HEADERS and name != "Attachment":
                lines.append(unstructured_header(name, value))
        msgid = message_id(self.campaign, recipient.email, self._domain)
        lines += [f"Date: {self._now()}", f"Message-ID: {msgid}", "MIME-Version: 1.0"]
        attachments = [self._attachment(value) for value in rendered.get("Attachment")]
        head = "\r\n".join(lines).encode("ascii")
        data = head + b"\r\n" + mime_body(rendered.text, rendered.html, attachments)
        targets = (redirect_to,) if redirect_to else tuple(envelope)
        return Letter(recipient.line, recipient.email, self.settings.from_address, targets,
                      msgid, data)

    def _now(self) -> str:
        second = int(time.time())
        if self._date[1] != second:
            self._date = (formatdate(second, localtime=True), second)
        return self._date[0]

    def _attachment(self, value: str) -> bytes:
        folder = self.template.path.parent.resolve()
        path = (folder / value.strip()).resolve()
        if not path.is_relative_to(folder):
            # A path from the recipient list must not be able to attach ~/.ssh/id_rsa.
            raise RenderError(f"attachment {value.strip()!r} is outside the template's folder "
                              f"{folder}; put the file there and name it relative to it")
        try:
            return attachment_part(path)
        except OSError as error:
            raise RenderError(f"attachment {value.strip()!r}: {error.strerror or error} "
                              f"(paths are relative to {self.template.path.parent})") from None


def _mailboxes(header: str, value: str) -> list[Mailbox]:
    try:
        return parse_address_list(value)
    except InvalidAddress as error:
        raise RenderError(f"the {header} header {value!r} is not a valid address list: "
                          f"{error}") from None


def _default_name(fields: dict[str, str]) -> str:
    return " ".join(p for p in (fields.get("title", ""), fields.get("name", "")) if p).strip()


class _Allowed:
    """Addresses a letter may go to: a whole field of its row, or text written in the template.

    A name like ``evil@x.example, Bob`` rendered into a bare `To: {{ name }} <...>` would
    otherwise add a recipient nobody listed.
    """

    def __init__(self, recipient: Recipient, template: LetterTemplate) -> None:
        self._fields = recipient.fields
        self._email = recipient.email.casefold()
        self._template = template

    def __contains__(self, address: object) -> bool:
        if address == self._email:
            return True
        assert isinstance(address, str)
        if any(value.strip().casefold() == address for value in self._fields.values()):
            return True
        # Whole, not part of a longer address ("ice@example.org" is not in "office@...").
        written = re.compile(rf"(?<![\w.@!#$%&'*+/=?^`{{|}}~-]){re.escape(address)}(?![\w.-])")
        return any(written.search(value.casefold()) for _, value, _ in self._template.headers)


def address_header(name: str, mailboxes: Iterable[Mailbox]) -> str:
    """`Name: a, b` with each mailbox encoded, folded between mailboxes."""
    return _fold(f"{name}: ", [format_mailbox(m) for m in mailboxes], ", ")


def format_mailbox(mailbox: Mailbox) -> str:
    """One mailbox as header text: quoted or RFC 2047-encoded name, then `<address>`
    (addresses are ASCII already: `normalize_address` writes international domains in IDNA)."""
    name = mailbox.name
    if not name:
        return mailbox.address
    if not name.isascii() or any(c < " " or c == "\x7f" for c in name) or "=?" in name:
        shown = encode_words(name)
    elif len(name) > _FOLD_AT // 2:
        shown = encode_words(name)  # a long name must still fold within the line limit
    elif set(name) <= _ATEXT and name == name.strip() and "  " not in name:
        shown = name
    else:
        shown = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{shown} <{mailbox.address}>"


@lru_cache(maxsize=1024)
def unstructured_header(name: str, value: str) -> str:
    """A header such as Subject: plain and folded if it can be, else RFC 2047 encoded words."""
    if any(c in value for c in "\r\n\0"):
        raise RenderError(f"the {name} header contains a line break")
    value = value.strip()
    words = value.split(" ")
    plain = (value.isascii() and value.isprintable() and "=?" not in value
             and max(map(len, words), default=0) <= _FOLD_AT - len(name) - 2)
    if plain:
        return _fold(f"{name}: ", words, " ")
    return f"{name}: {encode_words(value)}"


def encode_words(text: str) -> str:
    """RFC 2047 base64 encoded words, each within 75 characters, folded between them."""
    raw = text.encode("utf-8")
    if len(raw) <= _WORD_BYTES:  # most names and subjects: one word
        return f"=?utf-8?b?{base64.b64encode(raw).decode()}?="
    chunks: list[str] = []
    current: list[bytes] = []
    size = 0
    for char in text:
        encoded = char.encode("utf-8")
        if size + len(encoded) > _WORD_BYTES:
            chunks.append(b"".join(current).decode())
            current, size = [], 0
        current.append(encoded)
        size += len(encoded)
    if current or not chunks:
        chunks.append(b"".join(current).decode())
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(c.encode()).decode()}?=" for c in chunks)


def _fold(prefix: str, items: list[str], separator: str) -> str:
    """Join items, breaking lines before an item that would pass 78 characters."""
    lines = [prefix + items[0] if items else prefix.rstrip()]
    for item in items[1:]:
        if len(lines[-1]) + len(separator) + len(item) > _FOLD_AT:
            # The separator's trailing space stays before the break, so unfolding is exact.
            lines[-1] += separator.rstrip()
            lines.append(" " + item)
        else:
            lines[-1] += separator + item
    return "\r\n".join(lines)


def text_part(text: str, subtype: str) -> bytes:
    """A UTF-8 text part: 7bit when it is short-lined ASCII, quoted-printable otherwise."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    raw = text.encode("utf-8")
    head = f"Content-Type: text/{subtype}; charset=\"utf-8\"\r\nContent-Transfer-Encoding: "
    if raw.isascii() and _short_lines(raw) and b"\0" not in raw:
        return (head + "7bit\r\n\r\n").encode() + raw.replace(b"\n", b"\r\n")
    body = b"\r\n".join(map(_quoted_printable_line, raw.split(b"\n")))
    return (head + "quoted-printable\r\n\r\n").encode() + body


@lru_cache(maxsize=4096)
def _quoted_printable_line(line: bytes) -> bytes:
    # Line by line, because most lines of a letter are the same in every copy: each is
    # encoded once. (Soft breaks may fall differently than in whole-text encoding; both
    # decode to the same text.)
    return binascii.b2a_qp(line, istext=True).replace(b"\n", b"\r\n")


def _short_lines(raw: bytes) -> bool:
    return len(raw) <= _MAX_LINE or all(len(line) <= _MAX_LINE for line in raw.split(b"\n"))


@lru_cache(maxsize=64)
def attachment_part(path: Path) -> bytes:
    """A base64 attachment part for a file; cached, since every letter carries the same one."""
    data = path.read_bytes()
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    name = path.name
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        disposition = f'attachment; filename="{name}"'
    else:
        quoted = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else
                         "".join(f"%{b:02X}" for b in c.encode()) for c in name)
        disposition = f"attachment; filename*=utf-8''{quoted}"
    head = (f"Content-Type: {kind}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n")
    return head.encode() + base64.encodebytes(data).replace(b"\n", b"\r\n")


def mime_body(text: str, html: str | None, attachments: list[bytes]) -> bytes:
    """The MIME entity after the top-level headers: starts with its own Content-Type."""
    body = text_part(text, "plain")
    if html is not None:
        body = multipart("alternative", [body, text_part(html, "html")])
    if attachments:
        body = multipart("mixed", [body, *attachments])
    return body


def multipart(subtype: str, parts: list[bytes]) -> bytes:
    """A multipart entity with a boundary that occurs in none of its parts."""
    while True:
        boundary = f"=_mailer_{secrets.token_hex(12)}"
        marker = boundary.encode()
        if not any(marker in part for part in parts):
            break
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    separator = b"\r\n--" + marker + b"\r\n"
    return head + b"--" + marker + b"\r\n" + separator.join(parts) + b"\r\n--" + marker + b"--\r\n"
