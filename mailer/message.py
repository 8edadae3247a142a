"""Rendered letters to RFC 5322 / MIME bytes, written directly rather than with `EmailMessage`.

The stdlib's policy machinery costs more than everything else in a dry run, and a letter needs
only a small, fixed part of MIME: folded or RFC 2047-encoded headers, a UTF-8 text part (7bit
or quoted-printable), an optional HTML alternative and attachments. Attachments are the same
in every letter, so each is encoded once. Property tests parse every shape this writes back
with `email.parser.BytesParser(policy=email.policy.default)` and compare.

Header lines are at most 76 characters, the RFC 2047 limit for a line with an encoded word
(only a header name longer than 50 characters, or an address too long for a line, makes a
longer one), and never more than 998. Encoded words are Q-encoded when that is shorter or most
of the text's bytes are ASCII (readable, and not scored by spam filters as base64 names are),
base64 otherwise.

Every address in To, Cc, Bcc and Reply-To is checked against the row and the template (see
`mailer.template` for the rule); To, Cc and Bcc make the envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import posixpath
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path

from .addresses import InvalidAddress, Mailbox, needs_smtputf8, parse_address_list
from .recipients import Recipient, column_address
from .settings import Settings
from .template import (
    ADDRESS_HEADERS,
    GUARDED_HEADERS,
    LINE_BREAK,
    SETTINGS_VARIABLES,
    Body,
    LetterTemplate,
    Multipart,
    Part,
    Rendered,
    RenderError,
)

_MAX_LINE = 998
# RFC 2047 section 2: 76 characters on a line holding an encoded word, which itself is at most
# 75 (so it fits after a continuation line's space). One limit for every header line keeps
# folding simple (RFC 5322 asks for 78).
_HEADER_LINE = 76
_WORD = _HEADER_LINE - 1
_WORD_FRAME = len("=?utf-8?q??=")
# RFC 2047 section 5(3): the only characters a Q-encoded word may show as themselves in a
# display name; using them in a Subject too gives one encoding for both.
_Q_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
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
    # An address in its envelope or headers is international (RFC 6531).
    smtputf8: bool = False
    # The row's time zone (its `timezone` column), for its send window; "" for none.
    zone: str = ""
    # The language version it was built from ("" for the template itself).
    version: str = ""


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
        self._from = address_header("From", [Mailbox(settings.shown_name,
                                                     settings.from_address)])
        self._extra = {"sender_name": settings.shown_name,
                       "sender_email": settings.from_address}
        self._date = ("", -1)

    def build(self, recipient: Recipient, *, redirect_to: str | None = None) -> Letter:
        """Render and encode one letter; raise RenderError naming what is wrong with it.

        `redirect_to` sends the letter, unchanged, to that address instead (a test send).
        """
        return self.encode(recipient, self.render(recipient), redirect_to=redirect_to)

    def render(self, recipient: Recipient) -> Rendered:
        """The template rendered for one row (RenderError if it cannot be)."""
        # The settings win: a column named like one must not change the sender (the list
        # refuses such columns; this holds for rows made by other code too).
        return self.template.render({**recipient.fields, **self._extra})

    def encode(self, recipient: Recipient, rendered: Rendered, *,
               redirect_to: str | None = None) -> Letter:
        """Encode an already rendered letter (see `build`)."""
        lines: list[str] = []
        envelope: list[str] = []
        allowed = _Allowed(recipient, self.template, self.settings.from_address)
        for name in ADDRESS_HEADERS:
            mailboxes = [m for value in rendered.get(name) for m in _mailboxes(name, value)]
            if name == "To" and not mailboxes:
                if not recipient.email:
                    raise RenderError("the To header names nobody, and the list has no email "
                                      "column to send the letter to")
                mailboxes = [Mailbox(default_name(recipient.fields), recipient.email)]
            if name == "From" and not mailboxes:
                lines.append(self._from)
                continue
            if name in GUARDED_HEADERS:
                for box in mailboxes:
                    if box.address.casefold() not in allowed:
                        raise RenderError(f"the {name} header names {box.address}, which is "
                                          "neither this row's value nor written in the template;"
                                          " a value in a name field must not add a recipient")
                    address = box.address
                    # A reply address gets no copy of the letter.
                    if name != "Reply-To" and address.casefold() not in {
                            a.casefold() for a in envelope}:
                        envelope.append(address)
            if mailboxes and name != "Bcc":
                lines.append(address_header(name, mailboxes))
        for name, value in rendered.headers:
            if name not in ADDRESS_HEADERS and name != "Attachment":
                lines.append(unstructured_header(name, value))
        # Without an email column, a letter is known by the first address it goes to.
        identity = recipient.email or envelope[0]
        # A test send has a Message-ID of its own: a receiver that drops a repeated one
        # must not drop the real letter later.
        msgid = (f"<{secrets.token_hex(16)}.test@{self._domain}>" if redirect_to
                 else message_id(self.campaign, identity, self._domain))
        lines += [f"Date: {self._now()}", f"Message-ID: {msgid}", "MIME-Version: 1.0"]
        attachments = [self._attachment(value) for value in rendered.get("Attachment")]
        cid_suffix = f"{msgid[1:-1].partition('@')[0]}@{self._domain}"
        # UTF-8 only where an address is international (RFC 6532); names and text are
        # RFC 2047-encoded.
        head = "\r\n".join(lines).encode("utf-8")
        data = b"".join([head, b"\r\n", *mime_body(rendered.body, attachments, cid_suffix)])
        targets = (redirect_to,) if redirect_to else tuple(envelope)
        sender = self.settings.from_address
        return Letter(recipient.line, identity, sender, targets, msgid, data,
                      smtputf8=not head.isascii() or any(
                          needs_smtputf8(a) for a in (sender, *targets)),
                      zone=recipient.fields.get("timezone", "").strip(),
                      version=self.template.language)

    def _now(self) -> str:
        second = int(time.time())
        if self._date[1] != second:
            self._date = (formatdate(second, localtime=True), second)
        return self._date[0]

    def _attachment(self, value: str) -> Attachment:
        if not value.strip():
            raise RenderError("an Attachment header is empty; name a file in it, or remove it")
        folder = self.template.path.parent.resolve()
        path = (folder / value.strip()).resolve()
        if value.strip().startswith("~") and "/" in value:  # ~/x, ~olive/x
            raise RenderError(f"attachment {value.strip()!r}: a home folder (~) is not a place "
                              f"attachments are taken from; put the file in {folder} and "
                              "name it relative to it")
        if not path.is_relative_to(folder):
            # A path from the recipient list must not be able to attach ~/.ssh/id_rsa.
            raise RenderError(f"attachment {value.strip()!r} is outside the template's folder "
                              f"{folder}; put the file there and name it relative to it")
        try:
            return attachment(path, value.strip())
        except OSError as error:
            raise RenderError(f"attachment {value.strip()!r}: {error.strerror or error} "
                              f"(paths are relative to {self.template.path.parent})") from None


def _mailboxes(header: str, value: str) -> list[Mailbox]:
    try:
        return parse_address_list(value)
    except InvalidAddress as error:
        raise RenderError(f"the {header} header {value!r} is not a valid address list: "
                          f"{error}") from None


def default_name(fields: dict[str, str]) -> str:
    """The name a letter's To shows when the template gives none: title and name."""
    return " ".join(p for p in (fields.get("title", ""), fields.get("name", "")) if p).strip()


class _Allowed:
    """Addresses (casefolded) a letter may name in To, Cc, Bcc and Reply-To: the row's email,
    the value of each column the template uses whole as an address (raising RenderError for the
    column if it holds something else), the sender's address where the template uses
    `{{ sender_email }}` so, and addresses written in the template's own address headers.

    A value shown in a display name is none of these: ``evil@x.example, Bob`` rendered into
    `To: {{ name }} <{{ email }}>` would otherwise add a recipient nobody listed.
    """

    def __init__(self, recipient: Recipient, template: LetterTemplate, sender: str) -> None:
        self._known = {recipient.email.casefold()}
        for name in template.address_variables():
            if name == "sender_email":
                self._known.add(sender.casefold())  # a setting, validated when it was loaded
            elif name in recipient.fields and name not in SETTINGS_VARIABLES:
                try:
                    self._known.add(column_address(recipient.fields[name]).casefold())
                except ValueError as error:  # the list was read without the template's rules
                    raise RenderError(str(error), name) from None
        self._template = template

    def __contains__(self, address: object) -> bool:
        if address in self._known:
            return True
        assert isinstance(address, str)
        # Whole, not part of a longer address ("ice@example.org" is not in "office@...").
        written = re.compile(rf"(?<![\w.@!#$%&'*+/=?^`{{|}}~-]){re.escape(address)}(?![\w.-])")
        return any(written.search(value.casefold()) for name, value, _ in self._template.headers
                   if name in ADDRESS_HEADERS)


def address_header(name: str, mailboxes: Iterable[Mailbox]) -> str:
    """`Name: a, b` with each mailbox's name plain, quoted or encoded, folded between words."""
    prefix = f"{name}: "
    words: list[str] = []
    for mailbox in mailboxes:
        if words:
            words[-1] += ","
        # The first mailbox starts on the header's own line; any other may start a new one.
        words += _mailbox_words(mailbox, _HEADER_LINE - len(prefix) if not words else _WORD)
    return _fold(prefix, words)


def _mailbox_words(mailbox: Mailbox, room: int) -> list[str]:
    """One mailbox as header words, the first within `room` characters: a plain or quoted name
    or RFC 2047 encoded words, then `<address>` (addresses are ASCII already:
    `normalize_address` writes international domains in IDNA)."""
    name = mailbox.name
    if not name:
        return [mailbox.address]
    address = f"<{mailbox.address}>"
    if name.isascii() and name.isprintable() and "=?" not in name:
        words = name.split(" ")
        # Atoms split by single spaces fold between them and unfold to the same name.
        if set(name) <= _ATEXT and "" not in words and max(map(len, words)) <= room:
            return [*words, address]
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= room:
            return [quoted, address]
    return [*encode_words(name, room), address]


@lru_cache(maxsize=1024)
def unstructured_header(name: str, value: str) -> str:
    """A header such as Subject: plain and folded if it can be, else RFC 2047 encoded words."""
    if LINE_BREAK.search(value) or "\0" in value:
        raise RenderError(f"the {name} header contains a line break")
    value = value.strip()
    prefix = f"{name}: "
    # A run of spaces stays with the word after it, so no continuation line is only spaces.
    words = _SPACE.split(value)
    plain = (value.isascii() and value.isprintable() and "=?" not in value
             and max(map(len, words)) <= _HEADER_LINE - len(prefix))
    return _fold(prefix, words if plain else encode_words(value, _HEADER_LINE - len(prefix)))


_SPACE = re.compile(r"(?<! ) ")


def encode_words(text: str, first: int = _WORD) -> list[str]:
    """RFC 2047 encoded words for `text`, each of whole characters: the first within `first`
    characters (it shares a line with what comes before it), the others within 75.

    Q encoding when it is shorter or most of the UTF-8 bytes are ASCII, base64 otherwise.
    """
    q = [_q_encoded(char) for char in text]
    raw = text.encode()
    use_q = sum(map(len, q)) <= -(-len(raw) // 3) * 4 or 2 * sum(b < 0x80 for b in raw) > len(raw)
    words: list[str] = []
    chunk: list[str] = []
    size, room = 0, first - _WORD_FRAME
    for char, coded in zip(text, q, strict=True):
        cost = len(coded) if use_q else len(char.encode())
        # Base64 spends 4 characters on each 3 bytes or part of them.
        if chunk and (size + cost if use_q else -(-(size + cost) // 3) * 4) > room:
            words.append(_encoded_word(chunk, use_q))
            chunk, size, room = [], 0, _WORD - _WORD_FRAME
        chunk.append(coded if use_q else char)
        size += cost
    words.append(_encoded_word(chunk, use_q))
    return words


def _q_encoded(char: str) -> str:
    if char == " ":
        return "_"
    return "".join(chr(byte) if byte in _Q_PLAIN else f"={byte:02X}" for byte in char.encode())


def _encoded_word(chunk: list[str], use_q: bool) -> str:
    if use_q:
        return f"=?utf-8?q?{''.join(chunk)}?="
    return f"=?utf-8?b?{base64.b64encode(''.join(chunk).encode()).decode()}?="


def _fold(prefix: str, words: list[str]) -> str:
    """`prefix` and the words one space apart, a line broken before a word that would take it
    past 76 characters: the space starts the next line, so unfolding restores the text."""
    lines = [prefix + words[0] if words else prefix.rstrip()]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > _HEADER_LINE:
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return "\r\n".join(lines)


def text_part(text: str, subtype: str, charset: str | None = None) -> bytes:
    """A text part in `charset` if it can hold the text, else UTF-8 (as mailmerge does with a
    template's `charset=us-ascii` and a name like Zoë): 7bit when it is short-lined ASCII,
    quoted-printable otherwise."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    try:
        raw = text.encode(charset or "utf-8")
    except (LookupError, UnicodeEncodeError):
        charset, raw = "utf-8", text.encode("utf-8")
    head = (f"Content-Type: text/{subtype}; charset=\"{charset or 'utf-8'}\"\r\n"
            "Content-Transfer-Encoding: ")
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


# 1,024 lines of base64 (57 bytes each).
_BASE64_BLOCK = 57 * 1024


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to letters: as the template names it, its type, and its content in
    base64 (encoded once: every letter shares it)."""

    name: str
    filename: str
    kind: str
    encoded: bytes

    def part(self, content_id: str | None = None) -> list[bytes]:
        """The attachment as a MIME part; with `content_id`, shown inline (an image the
        letter's HTML refers to as `cid:`)."""
        name = self.filename
        if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
            parameter = f'filename="{name}"'
        else:
            quoted = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else
                             "".join(f"%{b:02X}" for b in c.encode()) for c in name)
            parameter = f"filename*=utf-8''{quoted}"
        disposition = "attachment" if content_id is None else "inline"
        head = (f"Content-Type: {self.kind}\r\nContent-Disposition: {disposition}; "
                f"{parameter}\r\n" + ("" if content_id is None else
                                       f"Content-ID: <{content_id}>\r\n")
                + "Content-Transfer-Encoding: base64\r\n\r\n")
        return [head.encode(), self.encoded]


@lru_cache(maxsize=64)
def attachment(path: Path, name: str) -> Attachment:
    """The file at `path`, named `name` in the template; cached, since every letter carries
    the same one."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    pieces = []
    with path.open("rb") as file:
        # A block at a time: never the whole file, its encoding and a copy at once.
        while block := file.read(_BASE64_BLOCK):
            pieces.append(base64.encodebytes(block).replace(b"\n", b"\r\n"))
    return Attachment(name, path.name, kind, b"".join(pieces))


# `<img ... src="NAME"`: an image the HTML shows.
_IMAGE_SOURCE = re.compile(r"""(<img\b[^>]*?\bsrc\s*=\s*)(["'])(.*?)\2""", re.I | re.S)


def mime_body(body: Body, attachments: list[Attachment], cid_suffix: str) -> list[bytes]:
    """The MIME entity after the top-level headers, as pieces to join once (an attachment
    is a piece every letter shares, not copied into each step). An attachment the HTML
    shows as an image (`<img src="chart.png">`, named as in the Attachment header) goes
    inline, referred to by a `cid:` that ends with `cid_suffix`."""
    shown: dict[str, str] = {}

    def refer(match: re.Match[str]) -> str:
        source = posixpath.normpath(match[3])  # "./chart.png" is "chart.png"
        found = next((a for a in attachments
                      if source in (posixpath.normpath(a.name), a.filename)), None)
        if found is None:
            return match[0]
        content_id = shown.setdefault(found.name, f"{len(shown) + 1}.{cid_suffix}")
        return f"{match[1]}{match[2]}cid:{content_id}{match[2]}"

    pieces = _entity(_with_images(body, refer))
    if shown:
        inline = [a.part(shown[a.name]) for a in attachments if a.name in shown]
        pieces = multipart("related", [pieces, *inline])
    others = [a.part() for a in attachments if a.name not in shown]
    if others:
        pieces = multipart("mixed", [pieces, *others])
    return pieces


def _with_images(body: Body, refer: Callable[[re.Match[str]], str]) -> Body:
    if isinstance(body, Multipart):
        return Multipart(body.subtype, tuple(_with_images(part, refer) for part in body.parts))
    if body.subtype != "html":
        return body
    return Part(body.subtype, _IMAGE_SOURCE.sub(refer, body.text), body.charset)


def _entity(body: Body) -> list[bytes]:
    if isinstance(body, Part):
        return [text_part(body.text, body.subtype, body.charset)]
    return multipart(body.subtype, [_entity(part) for part in body.parts])


def multipart(subtype: str, parts: list[list[bytes]]) -> list[bytes]:
    """A multipart entity with a boundary that occurs in none of its parts."""
    while True:
        boundary = f"=_mailer_{secrets.token_hex(12)}"
        marker = boundary.encode()
        if not any(marker in piece for part in parts for piece in part):
            break
    pieces = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()]
    for part in parts:
        pieces += [b"--" + marker + b"\r\n", *part, b"\r\n"]
    return [*pieces, b"--" + marker + b"--\r\n"]
