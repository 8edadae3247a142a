"""What a message in the sender's own mailbox is: a bounce, a reply to a letter, or neither.

`classify` reads one message, as IMAP or a Maildir gives its bytes, and says what it is, so
`mailer inbox` can record it against the letter it answers. It never raises: garbage, broken
MIME or a charset nobody knows gives None or the best reading of what could be read.

- A **bounce** is a delivery status notification (RFC 3464: `multipart/report;
  report-type=delivery-status`, read here field by field) or one of the common non-standard
  bounce formats, recognised by Mailman's `flufl.bounce` detectors (Exim's plain text, qmail's
  QSBMF, old Gmail and Exchange formats, and a dozen more). Bounces are recognised first: they carry
  `Auto-Submitted` and often `In-Reply-To` too (Gmail, Exchange), so they would otherwise read
  as automatic replies.
- A **reply** is a message whose `In-Reply-To` or `References` name a Message-ID; it is
  `automatic` when its headers or subject say so (RFC 3834 `Auto-Submitted`, `X-Autoreply`,
  `Precedence: auto_reply`, Outlook's "Automatic reply:", ...). An RFC 3834 auto-reply that
  names no Message-ID is still a reply (`refers_to` empty): the caller can match its sender.

The Message-IDs of the letters are found where the bounce returns them: the attached message
(`message/rfc822`) or its headers (`text/rfc822-headers`), Gmail's `X-Original-Message-ID`, the
bounce's own `In-Reply-To`/`References`, or a `Message-ID:` line quoted in the text. Each of
our letters has one per (campaign, recipient), so a Message-ID alone names the recipient even
when a bounce's addresses cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import email.header
import email.utils
import html
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from email.message import Message
from email.parser import BytesHeaderParser

import flufl.bounce


@dataclass(frozen=True, slots=True)
class Bounce:
    """A notice that letters could not be delivered (or are delayed) to these recipients."""

    recipients: tuple[str, ...]  # the failed (or delayed) recipient addresses, lower-cased
    status: str  # enhanced status, e.g. "5.1.1" ("" if none)
    diagnostic: str  # the remote server's words, one line, short
    message_ids: tuple[str, ...]  # Message-IDs found in the returned message/headers (<...>)
    delayed: bool  # Action: delayed (a warning, not a failure)


@dataclass(frozen=True, slots=True)
class Reply:
    """A message written (or sent automatically) in answer to others."""

    refers_to: tuple[str, ...]  # Message-IDs in In-Reply-To and References
    sender: str  # From address, lower-cased
    subject: str
    date: str  # ISO 8601 UTC if parseable, else ""
    automatic: bool  # an auto-reply (out of office...)


# The longest diagnostic kept: enough for any SMTP reply line, short enough for a log table.
DIAGNOSTIC_LIMIT = 300

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_HEADERS_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})

_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_ENHANCED = re.compile(r"(?<![\w.])#?([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])")
# An SMTP reply as a bounce quotes it: "550 5.1.1 <x>: ...", "550-5.1.1 ...", "452 Mailbox full".
_REPLY_CODE = re.compile(r"(?<![\w.#<-])[245]\d\d(?=[ -]\S)")
# A `Message-ID:` line of a message a bounce quotes in its text (perhaps folded once).
_QUOTED_ID = re.compile(r"(?im)^[ \t>]*message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^<>\s]+>)")
_DSN_TYPE_PREFIX = re.compile(r"^\s*[A-Za-z][\w.-]*\s*;\s*")
_TAG = re.compile(r"<[^>]*>")

# Who writes bounces: the local parts of a mail system's own addresses.
_MAIL_SYSTEM = ("mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "postmaster",
                "microsoftexchange329e71ec88ae4615bbc36ab6ce41109e")

# Subjects of automatic replies: Outlook's "Automatic reply:" in the languages of its users,
# Sieve's "Auto:" (RFC 5230), and the older forms still seen.
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto|autoreply|auto-reply|auto reply|auto response"
    r"|out of office(?: autoreply)?|abwesenheitsnotiz|automatische antwort"
    r"|automatisch antwoord|réponse automatique|respuesta automática|risposta automatica"
    r"|resposta automática|automatiskt svar|automatisk svar|autosvar|frånvaro"
    r"|odpowiedź automatyczna|automaattinen vastaus|automatická odpověď|fuori sede)\s*:"
    r"|^\s*out of (?:the )?office\b"
    r"|\bis out of (?:the )?office\b",
    re.IGNORECASE)
_AUTO_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk"})


def classify(data: bytes) -> Bounce | Reply | None:
    """What a message is: a bounce (DSN or a common non-standard one), a reply (human or
    automatic) to something, or neither. Never raises."""
    try:
        msg = email.message_from_bytes(data)
        notice = _notice_text(msg)
        entries = _dsn_entries(msg)
        if entries:
            # A delivery status notification is a bounce or a report of delivery, never a
            # reply, whatever its In-Reply-To says.
            return _dsn_bounce(msg, notice, entries)
        return _nonstandard(msg, notice) or _reply(msg)
    except Exception:
        # Whatever the parser or a detector chokes on (deep nesting, a charset that lies):
        # a message that cannot be read is no evidence of anything.
        return None


def may_be_bounce(headers: bytes) -> bool:
    """Whether a message whose headers these are may be a bounce or a read receipt, so its
    body is worth reading; every other message `classify` reads from its headers alone."""
    try:
        return _from_mail_system(BytesHeaderParser().parsebytes(headers))
    except Exception:
        return True  # headers that cannot be read: let `classify` try the whole message


# -- bounces ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One per-recipient block of a delivery status notification."""

    recipient: str
    action: str
    status: str
    diagnostic: str


def _dsn_bounce(msg: Message, notice: str, entries: list[_Entry]) -> Bounce | None:
    failed = [e for e in entries if e.action.startswith(("failed", "error"))]
    delayed = [e for e in entries if e.action.startswith("delayed")]
    chosen = failed or delayed  # a notice of both is about its failures
    if not chosen:
        return None  # delivered, relayed, expanded
    recipients = _unique(e.recipient for e in chosen if e.recipient)
    if not recipients:
        # Exim, for one, reports a local delivery by file name: its X-Failed-Recipients
        # header (read by flufl.bounce) still names the address.
        recipients = _flufl(msg, notice)[0]
    first = next((e for e in chosen if e.status or e.diagnostic), chosen[0])
    diagnostic = first.diagnostic or _text_diagnostic(notice, recipients)
    return Bounce(recipients, _refine(first.status, diagnostic), diagnostic,
                  _returned_ids(msg, notice), delayed=not failed)


def _nonstandard(msg: Message, notice: str) -> Bounce | None:
    # flufl.bounce's heuristics look for phrases ("could not be delivered") that a person can
    # write too: they are asked only about messages that come from a mail system.
    if not _from_mail_system(msg):
        return None
    recipients, delayed = _flufl(msg, notice)
    if not recipients:
        return None
    diagnostic = _text_diagnostic(notice, recipients)
    return Bounce(recipients, _refine("", diagnostic), diagnostic, _returned_ids(msg, notice),
                  delayed=delayed)


def _flufl(msg: Message, notice: str) -> tuple[tuple[str, ...], bool]:
    """flufl.bounce's reading: the addresses that failed (else those delayed) and which."""
    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception:
        return (), False
    found = {a.decode("ascii", "replace").strip().lower() for a in permanent or temporary}
    found = {a for a in found if "@" in a}  # not a file name (Exim's local deliveries)
    lowered = notice.lower()

    def first_named(address: str) -> tuple[int, str]:
        at = lowered.find(address)
        return (at if at >= 0 else len(lowered), address)

    # In the order the notice names them (flufl.bounce gives a set).
    return tuple(sorted(found, key=first_named)), not permanent


def _from_mail_system(msg: Message) -> bool:
    if "x-failed-recipients" in msg or "x-ms-exchange-message-is-ndr" in msg:
        return True
    if msg.get_content_type() == "multipart/report":
        return True
    return_path = _header(msg, "return-path").replace(" ", "")
    if return_path == "<>":
        return True
    for name in ("from", "sender", "return-path"):
        local = _address(_raw(msg, name)).partition("@")[0]
        if local.startswith(_MAIL_SYSTEM):
            return True
    return False


def _dsn_entries(msg: Message) -> list[_Entry]:
    """The per-recipient blocks of the message's delivery-status parts."""
    parts = [p for p in _walk(msg) if p.get_content_type() in _DSN_TYPES]
    entries: list[_Entry] = []
    for part in parts:
        for block in _dsn_blocks(part):
            action = _header(block, "action").lower()
            if not action:
                continue  # the per-message block (Reporting-MTA, Arrival-Date...)
            recipient = (_dsn_address(_header(block, "original-recipient"))
                         or _dsn_address(_header(block, "final-recipient")))
            status = _enhanced(_header(block, "status"))
            diagnostic = _one_line(_DSN_TYPE_PREFIX.sub("", _header(block, "diagnostic-code")))
            entries.append(_Entry(recipient, action, status, diagnostic))
    return entries


def _dsn_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if (part.get_content_type() == "message/delivery-status" and isinstance(payload, list)
            and encoding not in ("base64", "quoted-printable")):
        # The email package parses message/delivery-status into its header blocks.
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, list):
        # Encoded, or message/global-delivery-status (parsed as if it were one message): put
        # the text back together to read it.
        raw = b"\n".join(b.as_bytes() for b in payload if isinstance(b, Message))
    else:
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    raw = _decode_transfer(raw, encoding)
    parser = BytesHeaderParser()
    return [parser.parsebytes(block.lstrip(b"\r\n"))
            for block in re.split(rb"\r?\n[ \t]*\r?\n", raw) if block.strip()]


def _decode_transfer(raw: bytes, encoding: str) -> bytes:
    try:
        if encoding == "base64":
            return base64.b64decode(raw)
        if encoding == "quoted-printable":
            return quopri.decodestring(raw)
    except (binascii.Error, ValueError):
        pass
    return raw


def _dsn_address(value: str) -> str:
    """The address of a DSN recipient field: `rfc822; pm@example.org` (or `utf-8;`, RFC 6533)."""
    kind, semicolon, address = value.partition(";")
    if not semicolon:
        address = kind
    elif kind.strip().lower() not in ("rfc822", "utf-8", "unknown"):
        return ""
    address = address.strip().strip("<>").strip().lower()
    if "@" not in address or any(c.isspace() for c in address):
        return ""
    return address


def _enhanced(value: str) -> str:
    match = _ENHANCED.search(value)
    return ".".join(match.groups()) if match else ""


def _refine(status: str, diagnostic: str) -> str:
    """The status, or the remote server's more precise one where the reporting MTA gave only
    its class: Exim always writes 5.0.0 (4.0.0), Gmail often does."""
    quoted = _enhanced(diagnostic)
    if not status:
        return quoted
    if status.endswith(".0.0") and quoted[:1] == status[:1] and not quoted.endswith(".0.0"):
        return quoted
    return status


def _text_diagnostic(notice: str, recipients: Iterable[str]) -> str:
    """The remote server's words in a bounce's text: the SMTP reply quoted for the first
    recipient (with its continuation lines), else the paragraph that follows its address;
    with no recipient named, the first SMTP reply in the text."""
    lines = notice.splitlines()
    first = next(iter(recipients), "")
    for index, line in enumerate(lines if first else ()):
        at = line.lower().find(first)
        if at < 0:
            continue
        end = next((j for j in range(index + 1, len(lines)) if not lines[j].strip()),
                   len(lines))
        return (_reply_in(lines, index, end, start=at + len(first))
                or _one_line(" ".join(lines[index + 1:end])))
    return _reply_in(lines, 0, len(lines))


def _reply_in(lines: list[str], begin: int, end: int, start: int = 0) -> str:
    for index in range(begin, end):
        line = lines[index]
        match = _REPLY_CODE.search(line, start if index == begin else 0)
        if not match:
            continue
        words = [line[match.start():]]
        indent = len(line) - len(line.lstrip())
        # A reply that the bounce wrapped stays indented as deep as its first line (Exim).
        for following in lines[index + 1:end]:
            if not indent or len(following) - len(following.lstrip()) < indent:
                break
            words.append(following)
        return _one_line(" ".join(words))
    return ""


def _returned_ids(msg: Message, notice: str) -> tuple[str, ...]:
    """The Message-IDs of the letter a bounce returns, wherever the bounce put them."""
    found: list[str] = []
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype in _MESSAGE_TYPES or ctype in _HEADERS_TYPES:
            found += _ids(_header(_attached(part), "message-id"))
        elif ctype in _DSN_TYPES:
            for block in _dsn_blocks(part):
                found += _ids(_header(block, "x-original-message-id"))
    # Gmail and Exchange answer the letter: their In-Reply-To names it.
    found += _ids(_header(msg, "in-reply-to")) + _ids(_header(msg, "references"))
    found += _QUOTED_ID.findall(notice)
    own = set(_ids(_header(msg, "message-id")))
    return _unique(i for i in found if i not in own)


def _attached(part: Message) -> Message:
    """The message (or the header block) that a part holds, parsed or not by the email
    package (it parses message/* parts, but not text/rfc822-headers)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raw = part.get_payload(decode=True)
    return BytesHeaderParser().parsebytes(raw if isinstance(raw, bytes) else b"")


def _notice_text(msg: Message) -> str:
    """The human-readable text of a message, not that of any message attached to it: the
    first text/plain part, else the first text/html part without its tags."""
    texts = [p for p in _walk(msg) if p.get_content_maintype() == "text"
             and p.get_content_type() not in _HEADERS_TYPES]
    plain = next((p for p in texts if p.get_content_type() == "text/plain"), None)
    if plain is not None:
        return _decoded(plain)
    rich = next((p for p in texts if p.get_content_type() == "text/html"), None)
    return html.unescape(_TAG.sub(" ", _decoded(rich))) if rich is not None else ""


def _decoded(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, "replace")
    except (LookupError, ValueError):
        return raw.decode("utf-8", "replace")


def _walk(msg: Message) -> Iterator[Message]:
    """Every part of a message, depth first, but not the parts of a message attached to it
    (a returned letter's own text is not the bounce's) nor a delivery-status part's blocks."""
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        payload = part.get_payload()
        if isinstance(payload, list) and (part is msg or part.get_content_maintype() != "message"):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


# -- replies ------------------------------------------------------------------------------


def _reply(msg: Message) -> Reply | None:
    refers_to = [*_ids(_header(msg, "in-reply-to"), loose=True),
                 *_ids(_header(msg, "references"), loose=True)]
    automatic = False
    if msg.get_content_type() == "multipart/report":
        # A read receipt (RFC 8098) names the letter in its report.
        for part in _walk(msg):
            if part.get_content_type() == "message/disposition-notification":
                refers_to += _ids(_header(_attached(part), "original-message-id"))
                automatic = True
    refers = _unique(refers_to)
    subject = _header(msg, "subject")
    if not refers and not automatic and not _replied_automatically(msg):
        return None
    return Reply(refers, _address(_raw(msg, "from")), subject, _iso_date(_header(msg, "date")),
                 automatic=automatic or _automatic(msg, subject))


def _auto_submitted(msg: Message) -> str:
    """The keyword of `Auto-Submitted` (RFC 3834), without its comments or parameters."""
    value = _header(msg, "auto-submitted").lower()
    return re.split(r"[\s;(]", value, maxsplit=1)[0] if value else ""


def _replied_automatically(msg: Message) -> bool:
    """A message that says it answers one, even when it names none (some vacation robots)."""
    return (_auto_submitted(msg) == "auto-replied"
            or any(_says_yes(msg, name) for name in ("x-autoreply", "x-autorespond")))


def _says_yes(msg: Message, name: str) -> bool:
    return name in msg and _header(msg, name).lower() not in ("no", "false", "0")


def _automatic(msg: Message, subject: str) -> bool:
    # Not X-Auto-Response-Suppress: it asks others not to answer automatically, and people's
    # own mail carries it too.
    keyword = _auto_submitted(msg)
    if keyword and keyword != "no":
        return True  # RFC 3834: anything but "no" was not written by a person
    if _replied_automatically(msg):
        return True
    if any(_header(msg, name).lower() in _AUTO_PRECEDENCE
           for name in ("precedence", "x-precedence")):
        return True
    if "mailbox rules agent" in _header(msg, "x-ms-exchange-generated-message-source").lower():
        return True  # Exchange's out-of-office and inbox-rule replies
    return bool(_AUTO_SUBJECT.search(subject))


def _iso_date(value: str) -> str:
    if not value:
        return ""
    try:
        moment = email.utils.parsedate_to_datetime(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # "-0000": UTC, origin unknown (RFC 5322)
        return moment.astimezone(UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, IndexError, OverflowError):
        return ""


# -- headers ------------------------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    """A header's text on one line: RFC 2047 words decoded, raw 8-bit read as UTF-8."""
    value = _raw(msg, name)
    if value is None:
        return ""
    text = _unescape(value)
    # A malformed encoded word is left as it was written.
    with contextlib.suppress(Exception):
        text = str(email.header.make_header(email.header.decode_header(text)))
    return " ".join(text.split())


def _raw(msg: Message, name: str) -> str | None:
    """A header as it was written: `get` would turn raw 8-bit bytes (RFC 6532 UTF-8) into
    replacement characters."""
    name = name.lower()
    return next((str(v) for k, v in msg.raw_items() if k.lower() == name), None)


def _unescape(text: str) -> str:
    """The email package keeps undecodable header bytes as surrogates: read them as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return text.encode("utf-8", "replace").decode("utf-8", "replace")


def _address(value: str | None) -> str:
    if value is None:
        return ""
    _, address = email.utils.parseaddr(_unescape(value))
    return address.strip().lower()


def _ids(value: str, *, loose: bool = False) -> list[str]:
    """The Message-IDs in a header; `loose` also takes a bare `id@host` some clients write."""
    found = _MESSAGE_ID.findall(value)
    if not found and loose:
        found = [f"<{token.strip('<>,;')}>" for token in value.split()
                 if "@" in token and token.strip("<>,;")]
    return found


def _one_line(text: str) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= DIAGNOSTIC_LIMIT else text[:DIAGNOSTIC_LIMIT - 1] + "…"


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
