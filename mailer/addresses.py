"""Email addresses: validation (email-validator's rules, with a fast path for the common case)
and strict parsing of rendered address headers.

email-validator spends most of its time on the domain (IDNA and Unicode checks), and a campaign's
addresses share few domains. So an address whose local part is a plain ASCII dot-atom is checked
with a regex and its domain with email-validator once per domain; anything else goes through
email-validator whole. Property tests check that both paths agree on every input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

# RFC 5322 atext, dot-separated: the only local parts whose validity cannot depend on anything
# but their length.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_LOCAL = 64
_MAX_ADDRESS = 254


class InvalidAddress(ValueError):
    """The text is not a deliverable-looking email address; the message says why."""


def normalize_address(text: str) -> str:
    """Return the normalized address (domain lower-cased, international domains as
    punycode, a local part that is not ASCII in Unicode's NFC) or raise InvalidAddress.

    No DNS look-up is made. Raises for anything email-validator would reject.
    """
    local, at, domain = text.rpartition("@")
    if (at and len(text) <= _MAX_ADDRESS and len(local) <= _MAX_LOCAL
            and _DOT_ATOM.fullmatch(local) and domain.isascii()
            and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES):  # those are lower-cased
        normal_domain = _domain(domain)
        if normal_domain is not None:
            return f"{local}@{normal_domain}"
    return _full(text)


@lru_cache(maxsize=4096)
def _domain(domain: str) -> str | None:
    """The normalized domain if an address at it is valid, None to take the slow path."""
    try:
        result = validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    if result.ascii_domain != result.domain:
        return None  # IDNA: email-validator limits the decoded address's length too
    return _ascii(result).rpartition("@")[2]


def _full(text: str) -> str:
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as error:
        raise InvalidAddress(str(error)) from None
    return _ascii(result)


def _ascii(result: ValidatedEmail) -> str:
    # An international domain goes as punycode; a local part that is not ASCII stays as it
    # is, and its letter needs a server that offers SMTPUTF8 (RFC 6531).
    return result.ascii_email or f"{result.local_part}@{result.ascii_domain}"


def needs_smtputf8(address: str) -> bool:
    """Whether mail to or from `address` needs SMTPUTF8 (its local part is not ASCII)."""
    return not address.isascii()


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A display name (may be empty) and a normalized address."""

    name: str
    address: str


def parse_address_list(text: str) -> list[Mailbox]:
    """Parse a rendered address header (`Name <a@b>, "Last, First" <c@d>, e@f`) strictly.

    Only the plain forms are accepted (no groups, no comments, no routes), every address is
    validated, and anything ambiguous raises InvalidAddress: this decides who gets a letter,
    so it never guesses (unlike `email.utils.getaddresses`, see CVE-2023-27043).
    """
    mailboxes = []
    for words, angle in mailbox_parts(text):
        if angle is None:
            if len(words) != 1:
                raise InvalidAddress(f"{' '.join(words)!r} is not an address; write a name "
                                     "as \"Name\" <address>")
            mailboxes.append(Mailbox("", normalize_address(words[0])))
        else:
            mailboxes.append(Mailbox(" ".join(words), normalize_address(angle)))
    return mailboxes


def mailbox_parts(text: str) -> Iterator[tuple[list[str], str | None]]:
    """Yield (phrase words, angle address or None) for each comma-separated mailbox, validating
    nothing but the syntax (quotes, angle brackets, no comments): `parse_address_list`'s reading,
    which the template also uses to find where its variables stand."""
    words: list[str] = []
    angle: str | None = None
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t":
            i += 1
        elif char == ",":
            if words or angle is not None:
                yield words, angle
            words, angle = [], None
            i += 1
        elif angle is not None:
            raise InvalidAddress(f"unexpected {text[i:i + 20]!r} after <{angle}>; separate "
                                 "addresses with commas")
        elif char == '"':
            word, i = _quoted(text, i + 1)
            words.append(word)
        elif char == "<":
            end = text.find(">", i)
            if end < 0:
                raise InvalidAddress(f"'<' without '>' in {text!r}")
            angle = text[i + 1:end].strip()
            i = end + 1
        elif char in "()>":
            raise InvalidAddress(f"unexpected {char!r} in {text!r}; comments and stray angle "
                                 "brackets are not allowed in addresses")
        else:
            match = _WORD.match(text, i)
            assert match is not None  # any other char starts a word
            words.append(match[0])
            i = match.end()
    if words or angle is not None:
        yield words, angle


# Only space and tab separate words (as in the loop above); other whitespace is part of a word.
_WORD = re.compile(r'[^ \t",<>()]+')


_QUOTED = re.compile(r'((?:[^"\\]|\\.)*)"', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def _quoted(text: str, i: int) -> tuple[str, int]:
    """The content of the quoted string starting at `i` (after its quote), unescaped."""
    match = _QUOTED.match(text, i)
    if match:
        return _QUOTED_PAIR.sub(r"\1", match[1]), match.end()
    raise InvalidAddress(f"a quote is not closed in {text!r}")
