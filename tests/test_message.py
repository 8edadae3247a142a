"""Letters as bytes: every message parses back cleanly with the stdlib, carries exactly the
headers it should, and no value from the recipient list can add a header or a recipient."""

from __future__ import annotations

import csv
import io
from email import policy
from email.header import decode_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from conftest import STARTER, CampaignFiles
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mailer.addresses import Mailbox
from mailer.campaign import Campaign
from mailer.errors import Problem
from mailer.message import Letter, LetterBuilder, address_header, message_id, unstructured_header
from mailer.recipients import Recipient
from mailer.settings import Settings
from mailer.template import LetterTemplate, RenderError

CSV = Path("recipients.csv")
TEMPLATE = Path("templates/letter.txt")
TOP_HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
               "Content-Transfer-Encoding"]
QUOTED_TO = ('To: "{{ title }} {{ name }}" <{{ email }}>\nSubject: {{ subject }}\n\n'
             "Dear {{ title }} {{ name }},\n\n{{ subject }}\n\nYours,\n{{ sender_name }}\n")


def write_csv(files: CampaignFiles, rows: list[dict[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n",
                            quoting=csv.QUOTE_ALL)  # the writer leaves a lone CR unquoted
    writer.writeheader()
    writer.writerows(rows)
    files.write_csv(out.getvalue())


def build(files: CampaignFiles, settings: Settings, rows: list[dict[str, str]], template: str,
          html: str | None = None, campaign: str | None = None
          ) -> tuple[list[Letter], list[str]]:
    """Every letter of a campaign over `rows` and `template`, and every problem."""
    write_csv(files, rows)
    files.write_template(template, html)
    items = list(Campaign(settings, CSV, TEMPLATE, name=campaign).build())
    return ([item for item in items if isinstance(item, Letter)],
            [str(item) for item in items if not isinstance(item, Letter)])


def parse(letter: Letter) -> EmailMessage:
    """Parse a letter as a mail client would, failing on any defect the parser reports."""
    message = BytesParser(policy=policy.default).parsebytes(letter.data)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        assert part.defects == [], part.defects
        for name, value in part.items():
            assert getattr(value, "defects", ()) == (), (name, value.defects)
    assert all(len(line) <= 998 for line in letter.data.split(b"\r\n"))
    head = letter.data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(len(line) <= 76 for line in head if b"=?" in line), head  # RFC 2047 section 2
    assert b"\n" not in letter.data.replace(b"\r\n", b"")
    assert b"\r" not in letter.data.replace(b"\r\n", b"")
    return message


def body_text(message: EmailMessage, kind: str = "plain") -> str:
    part = message.get_body(preferencelist=(kind,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def display_name(data: Letter | bytes, header: str) -> str:
    """The display name of a one-mailbox header, read as RFC 2047 says.

    CPython's structured-header parser keeps the whitespace between two adjacent encoded words
    of a display name (so a long name split into several comes back with spaces added at each
    split), though RFC 2047 section 6.2 says to ignore it, as mail clients do; the stdlib's own
    EmailMessage does not round-trip such names either. So encoded names are decoded here with
    `decode_header`, which follows the RFC; other names come from the policy parser.
    """
    data = data.data if isinstance(data, Letter) else data
    raw = BytesParser(policy=policy.compat32).parsebytes(data, headersonly=True)[header]
    phrase = str(raw).replace("\r\n", "").replace("\n", "").rpartition("<")[0].strip()
    if phrase.startswith("=?"):
        return "".join(part.decode(charset or "ascii") if isinstance(part, bytes) else part
                       for part, charset in decode_header(phrase))
    parsed = BytesParser(policy=policy.default).parsebytes(data, headersonly=True)
    (address,) = parsed[header].addresses
    return str(address.display_name)


ROW = {"email": "ada@example.org", "title": "Dr", "name": "Ada Lovelace",
       "subject": "Act now"}


# --- arbitrary values in header fields ---------------------------------------------------------

_NASTY_TEXT = [
    "\r", "\n", "\r\n", "\0", '"', "\\", "'", "=?", "?=", "=?utf-8?q?Bcc:_x?=", "=?utf-8?b?QQ==?=",
    ",", ";", ":", "<", ">", "@", "(", ")", "[", "]", " ", "  ", "\t", "\x0b", "\x0c", "\x1b",
    "\x7f", "\x85", "\xa0", "\u2028", "\ufeff", "é", "Zoë", "中文", "😀", "e\u0301", "\u200b",
    "Bcc: evil@example.com", "evil@example.com", "\nBcc: evil@example.com",
    "x" * 77, "y" * 200, "z" * 1200, "é" * 500, "a " * 60,
]
_NASTY = st.sampled_from(_NASTY_TEXT)
_SENDABLE = st.sampled_from([t for t in _NASTY_TEXT
                             if not any((c < " " and c != "\t") or c == "\x7f" for c in t)])
_ANY_FIELD = st.lists(st.one_of(st.text(max_size=12), _NASTY), max_size=5).map("".join)
_SENDABLE_FIELD = st.lists(
    st.one_of(_SENDABLE, st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=12)),
    min_size=1, max_size=4).map("".join).filter(str.strip)
# Mostly values that can be sent, so that most examples check a built letter.
_FIELD = st.one_of(_ANY_FIELD, _SENDABLE_FIELD, _SENDABLE_FIELD, _SENDABLE_FIELD)


def _check_letter(letter: Letter, row: dict[str, str], settings: Settings) -> EmailMessage:
    """The assertions every accepted row must satisfy under the QUOTED_TO template."""
    message = parse(letter)
    assert list(message.keys()) == TOP_HEADERS  # nothing injected, nothing lost
    assert letter.envelope == (row["email"],)
    (to,) = message["To"].addresses
    assert to.addr_spec == row["email"]
    assert display_name(letter, "To") == f"{row['title']} {row['name']}"
    (sender,) = message["From"].addresses
    assert sender.addr_spec == settings.from_address
    assert display_name(letter, "From") == settings.sender_name
    assert message["Subject"] == row["subject"].strip()
    assert body_text(message) == (f"Dear {row['title']} {row['name']},\n\n{row['subject']}\n\n"
                                  f"Yours,\n{settings.sender_name}\n")
    return message


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(title=_FIELD, name=_FIELD, subject=_FIELD)
@example(title="Dr", name='Ada "the first" \\ Lovelace', subject="=?utf-8?q?hi?= there")
@example(title="  ", name="Ada", subject="x")
@example(title="Dr", name="Ada\nBcc: evil@example.com", subject="x")
@example(title="Dr", name="Ada", subject="y" * 1200)
@example(title="Dr", name="Zoë " * 30, subject="Résumé " * 40)
@example(title="Dr.", name="Ada  Lovelace ", subject="  two  spaces  ")
def test_arbitrary_header_values_are_rejected_or_parse_back_exactly(
        files: CampaignFiles, settings: Settings, title: str, name: str, subject: str) -> None:
    row = {**ROW, "title": title, "name": name, "subject": subject}
    letters, problems = build(files, settings, [row], QUOTED_TO)
    event("rejected" if problems else "built")
    if problems:
        assert letters == []
        assert all(p.startswith("recipients.csv:2: ") for p in problems), problems
        return
    (letter,) = letters
    _check_letter(letter, row, settings)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=_FIELD)
@example(name="evil@example.com, Bob")
@example(name='Bob" <evil@example.com>, "x')
@example(name="Bob <evil@example.com>")
def test_arbitrary_name_in_a_bare_to_never_adds_a_recipient(
        files: CampaignFiles, settings: Settings, name: str) -> None:
    row = {"email": "ada@example.org", "name": name}
    letters, problems = build(files, settings, [row],
                              "To: {{ name }} <{{ email }}>\nSubject: Hi\n\nDear {{ name }}\n")
    event("rejected" if problems else "built")
    if problems:
        assert letters == []
        return
    (letter,) = letters
    message = parse(letter)
    assert list(message.keys()) == TOP_HEADERS
    assert [a.addr_spec for a in message["To"].addresses] == ["ada@example.org"]
    assert letter.envelope == ("ada@example.org",)


@pytest.mark.parametrize("header", ["To", "Cc", "Bcc", "Reply-To"])
def test_name_with_an_address_in_any_address_header_is_rejected(
        files: CampaignFiles, settings: Settings, header: str) -> None:
    # Reply-To used to be left out of the guard: a reply went to the address in the name.
    letters, problems = build(files, settings, [{"email": "ada@example.org",
                                                 "name": "evil@example.com, Bob"}],
                              f"{header}: {{{{ name }}}} <{{{{ email }}}}>\nSubject: Hi\n\n"
                              "Dear {{ name }}\n")
    assert letters == []
    assert problems == [
        f"recipients.csv:2: the {header} header names evil@example.com, which is neither this "
        "row's value nor written in the template; a value in a name field must not add a "
        "recipient (rendering templates/letter.txt)"]


def test_name_cannot_add_an_address_that_another_column_holds(
        files: CampaignFiles, settings: Settings) -> None:
    # An address equal to any whole field of the row used to pass, here the body-only
    # `assistant` column's.
    letters, problems = build(files, settings, [{"email": "ada@example.org",
                                                 "name": "evil@example.com, Bob",
                                                 "assistant": "evil@example.com"}],
                              "To: {{ name }} <{{ email }}>\nSubject: Hi\n\n"
                              "Dear {{ name }}, {{ assistant }}\n")
    assert letters == []
    assert len(problems) == 1
    assert problems[0].startswith("recipients.csv:2: the To header names evil@example.com, ")


def test_a_column_used_as_an_address_must_be_one_when_the_letter_is_built(
        files: CampaignFiles, settings: Settings) -> None:
    letters, problems = build(files, settings, [{"email": "ada@example.org", "name": "Ada",
                                                 "assistant": "Bob"}],
                              "Cc: {{ assistant }}\nSubject: Hi\n\nDear {{ name }}\n")
    assert letters == []
    assert len(problems) == 1
    assert problems[0].startswith(
        "recipients.csv:2: assistant: 'Bob' is not a valid address (An email address must have "
        "an @-sign.), but the template uses this column as an address; put one address in it")


def test_an_optional_cc_column_may_be_empty(files: CampaignFiles, settings: Settings) -> None:
    letters, problems = build(files, settings,
                              [{"email": "ada@example.org", "assistant": "aide@example.org"},
                               {"email": "grace@example.net", "assistant": ""}],
                              "Cc: {% if assistant %}{{ assistant }}{% endif %}\nSubject: Hi\n"
                              "\nDear\n")
    assert problems == []
    assert [letter.envelope for letter in letters] == [
        ("ada@example.org", "aide@example.org"), ("grace@example.net",)]


def test_reply_to_from_the_template_is_written_but_gets_no_copy(
        files: CampaignFiles, settings: Settings) -> None:
    letters, problems = build(files, settings, [ROW],
                              "Reply-To: Desk <desk@example.org>, {{ sender_email }}\n"
                              "Subject: Hi\n\nDear\n")
    assert problems == []
    (letter,) = letters
    assert [a.addr_spec for a in parse(letter)["Reply-To"].addresses] == [
        "desk@example.org", settings.from_address]
    assert letter.envelope == ("ada@example.org",)


def test_a_row_cannot_change_the_settings_variables(files: CampaignFiles,
                                                    settings: Settings) -> None:
    # Read from a CSV such columns are refused; a Recipient made by other code has them
    # rendered as the settings all the same.
    template = LetterTemplate(TEMPLATE, 'From: "{{ sender_name }}" <{{ sender_email }}>\n'
                                        "Subject: Hi\n\n{{ sender_name }}\n")
    forged = Recipient(2, "ada@example.org", {"email": "ada@example.org",
                                              "sender_name": "Mallory",
                                              "sender_email": "mallory@example.com"})
    message = parse(LetterBuilder(template, settings, "c").build(forged))
    assert [(a.display_name, a.addr_spec) for a in message["From"].addresses] == [
        (settings.shown_name, settings.from_address)]
    assert body_text(message) == settings.shown_name + "\n"


def test_name_with_an_address_and_comma_in_a_bare_to_is_rejected(
        files: CampaignFiles, settings: Settings) -> None:
    letters, problems = build(files, settings, [{"email": "ada@example.org",
                                                 "name": "evil@example.com, Bob"}],
                              "To: {{ name }} <{{ email }}>\nSubject: Hi\n\nDear {{ name }}\n")
    assert letters == []
    assert problems == [
        "recipients.csv:2: the To header names evil@example.com, which is neither this row's "
        "value nor written in the template; a value in a name field must not add a recipient "
        "(rendering templates/letter.txt)"]


def test_address_inside_a_longer_template_address_is_not_allowed(
        files: CampaignFiles, settings: Settings) -> None:
    # "ice@example.org" is a substring of the template's "office@example.org"; it used to pass.
    letters, problems = build(files, settings, [{"email": "ada@example.org",
                                                 "name": "ice@example.org, Bob"}],
                              "To: {{ name }} <{{ email }}>\nCc: office@example.org\n"
                              "Subject: Hi\n\nDear {{ name }}\n")
    assert letters == []
    assert len(problems) == 1
    assert "the To header names ice@example.org" in problems[0]


def test_cc_and_bcc_from_the_template_and_a_column_join_the_envelope(
        files: CampaignFiles, settings: Settings) -> None:
    letters, problems = build(files, settings,
                              [{"email": "ada@example.org", "name": "Ada",
                                "assistant": "aide@example.org"}],
                              "Subject: Hi\nCc: {{ assistant }}, office@example.org\n"
                              "Bcc: archive@example.org\n\nDear {{ name }}\n")
    assert problems == []
    (letter,) = letters
    message = parse(letter)
    assert letter.envelope == ("ada@example.org", "aide@example.org", "office@example.org",
                               "archive@example.org")
    assert [a.addr_spec for a in message["Cc"].addresses] == ["aide@example.org",
                                                              "office@example.org"]
    assert "Bcc" not in message
    assert b"archive@example.org" not in letter.data


# --- the stdlib as a reference -----------------------------------------------------------------


def _stdlib_letter(row: dict[str, str], settings: Settings, ours: EmailMessage) -> EmailMessage:
    """The same letter built by the stdlib with policy SMTP, parsed back."""
    reference = EmailMessage(policy=policy.SMTP)
    reference["From"] = Address(settings.shown_name, addr_spec=settings.from_address)
    reference["To"] = Address(f"{row['title']} {row['name']}", addr_spec=row["email"])
    reference["Subject"] = row["subject"].strip()
    reference["Date"] = ours["Date"]
    reference["Message-ID"] = ours["Message-ID"]
    reference.set_content(f"Dear {row['title']} {row['name']},\n\n{row['subject']}\n\n"
                          f"Yours,\n{settings.sender_name}\n")
    parsed = BytesParser(policy=policy.default).parsebytes(reference.as_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


_PRINTABLE = st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=40)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(title=_PRINTABLE.filter(str.strip), name=_PRINTABLE.filter(str.strip),
       subject=_PRINTABLE.filter(str.strip))
@example(title="Ms", name="Zoë Lefèvre", subject="Act now on human rights")
@example(title="Dr", name='O"Brien, \\ Jr', subject="a" * 100)
def test_fast_path_agrees_with_the_stdlib_email_message(
        files: CampaignFiles, settings: Settings, title: str, name: str, subject: str) -> None:
    row = {**ROW, "title": title, "name": name, "subject": subject}
    letters, problems = build(files, settings, [row], QUOTED_TO)
    assert problems == []
    ours = _check_letter(letters[0], row, settings)
    theirs = _stdlib_letter(row, settings, ours)
    for header in ("From", "To"):
        (mine,), (reference,) = ours[header].addresses, theirs[header].addresses
        assert mine.addr_spec == reference.addr_spec
        # Equal but for the spaces CPython adds between encoded words (see display_name); the
        # exact name is checked by _check_letter.
        assert "".join(mine.display_name.split()) == "".join(reference.display_name.split())
    assert ours["Subject"] == theirs["Subject"]
    assert body_text(ours) == body_text(theirs)
    assert ours.get_content_type() == theirs.get_content_type() == "text/plain"
    assert ours.get_content_charset() == "utf-8"


# --- encodings ---------------------------------------------------------------------------------


def test_non_ascii_name_and_subject_are_rfc2047_encoded(
        files: CampaignFiles, settings: Settings) -> None:
    row = {**ROW, "name": "Zoë Lefèvre", "subject": "Menschenrechte für Hongkong"}
    letters, _ = build(files, settings, [row], QUOTED_TO)
    data = letters[0].data
    head = data.split(b"\r\n\r\n")[0]
    assert head.isascii()
    assert b"To: =?utf-8?q?Dr_Zo=C3=AB_Lef=C3=A8vre?= <ada@example.org>\r\n" in head
    assert b"Subject: =?utf-8?q?Menschenrechte_f=C3=BCr_Hongkong?=\r\n" in head
    message = _check_letter(letters[0], row, settings)
    assert message["Subject"] == "Menschenrechte für Hongkong"


def test_mostly_non_ascii_text_is_base64_encoded(files: CampaignFiles,
                                                 settings: Settings) -> None:
    row = {**ROW, "name": "李明", "subject": "香港人权"}
    letters, _ = build(files, settings, [row], QUOTED_TO)
    head = letters[0].data.split(b"\r\n\r\n")[0]
    assert b"Subject: =?utf-8?b?6aaZ5riv5Lq65p2D?=\r\n" in head
    assert b"=?utf-8?b?RHIg5p2O5piO?= <ada@example.org>" in head
    _check_letter(letters[0], row, settings)


@pytest.mark.parametrize(("name", "shown"), [
    ("Campaign for Human Rights in Hong Kong and Xinjiang", b"From: Campaign for Human Rights in "
     b"Hong Kong and Xinjiang\r\n <olive@example.org>\r\n"),
    ("The Rt. Hon. Campaign for Human Rights in Hong Kong, Xinjiang and Tibet (UK)",
     b"From: =?utf-8?q?The_Rt=2E_Hon=2E_Campaign_for_Human_Rights_in_Hong_Kong=2C?=\r\n"
     b" =?utf-8?q?_Xinjiang_and_Tibet_=28UK=29?= <olive@example.org>\r\n"),
])
def test_a_long_ascii_sender_name_is_not_base64_encoded(
        files: CampaignFiles, name: str, shown: bytes) -> None:
    # A 40+ character name used to be base64, which spam filters score in a From header.
    sender = Settings(from_address="olive@example.org", sender_name=name)
    letters, _ = build(files, sender, [ROW], QUOTED_TO)
    assert shown in letters[0].data
    parse(letters[0])
    assert display_name(letters[0], "From") == name


@pytest.mark.parametrize("char", ["\r", "\n", "\0", "\x85", "\u2028", "\u2029"])
def test_a_line_break_written_in_a_header_is_refused(char: str) -> None:
    # Values are refused when rendered; this is text the template itself puts in a header.
    with pytest.raises(RenderError, match="the Subject header contains a line break"):
        unstructured_header("Subject", f"Hong Kong{char}Xinjiang")


_HEADER_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=200),
    st.lists(st.sampled_from(["a", "é", " ", "  ", "中", "😀", "=?", "?=", "_", "=", "x" * 70,
                              '"', "\\", ",", "<", ".", "Zoë", "word"]),
             max_size=40).map("".join))
_TEXT_HEADERS = st.sampled_from(["Subject", "Comments", "X-Campaign-Reference-Number"])
_ADDRESS_HEADERS = st.sampled_from(["From", "To", "Cc", "Reply-To"])


def _header_lines(header: str) -> list[str]:
    lines = header.split("\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert all(len(line) <= 76 for line in lines if "=?" in line), lines  # RFC 2047 section 2
    assert all(line.startswith(" ") and line.strip() for line in lines[1:]), lines
    return lines


def _parse_headers(*headers: str) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(
        ("\r\n".join(headers) + "\r\n\r\n").encode("ascii"))
    assert isinstance(message, EmailMessage)
    for name, value in message.items():
        assert value.defects == (), (name, value.defects)
    return message


@settings(max_examples=300, deadline=None)
@given(name=_TEXT_HEADERS, value=_HEADER_TEXT)
@example(name="Subject", value="Ü" * 2000)
@example(name="Subject", value="Menschenrechte in Hongkong und Xinjiang: handeln Sie jetzt, bitte!")
@example(name="X-Campaign-Reference-Number", value="Résumé " * 20)
def test_every_unstructured_header_line_is_within_the_limits_and_parses_back(
        name: str, value: str) -> None:
    header = unstructured_header(name, value)
    _header_lines(header)
    assert _parse_headers(header)[name] == value.strip()


@settings(max_examples=300, deadline=None)
@given(header=_ADDRESS_HEADERS, names=st.lists(_HEADER_TEXT, min_size=1, max_size=3))
@example(header="To", names=["Dr Zoë Lefèvre-Marchand de la Tour d'Auvergne et de Bouillon"])
@example(header="Reply-To", names=["x" * 80, "Ada Lovelace", ""])
def test_every_address_header_line_is_within_the_limits_and_parses_back(
        header: str, names: list[str]) -> None:
    addresses = [f"person{i}@example.org" for i in range(len(names))]
    text = address_header(header, [Mailbox(n, a) for n, a in zip(names, addresses, strict=True)])
    _header_lines(text)
    parsed = _parse_headers(text)[header].addresses
    assert [a.addr_spec for a in parsed] == addresses
    if len(names) == 1:
        shown = display_name(text.encode() + b"\r\n\r\n", header) if names[0] else ""
        assert shown == names[0]
    # Several mailboxes: CPython adds spaces between encoded words (see display_name).
    assert ["".join(a.display_name.split()) for a in parsed] == ["".join(n.split())
                                                                 for n in names]


def test_non_ascii_body_is_utf8_quoted_printable(files: CampaignFiles,
                                                 settings: Settings) -> None:
    row = {**ROW, "name": "Zoë"}
    letters, _ = build(files, settings, [row], QUOTED_TO)
    message = _check_letter(letters[0], row, settings)
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_content_charset() == "utf-8"
    assert letters[0].data.isascii()


def test_ascii_body_with_short_lines_is_7bit(files: CampaignFiles, settings: Settings) -> None:
    letters, _ = build(files, settings, [ROW], QUOTED_TO)
    message = _check_letter(letters[0], ROW, settings)
    assert message["Content-Transfer-Encoding"] == "7bit"


def test_body_line_longer_than_998_octets_is_wrapped_and_restored(
        files: CampaignFiles, settings: Settings) -> None:
    row = {**ROW, "note": "word" * 600}
    letters, _ = build(files, settings, [row], "Subject: Hi\n\n{{ note }}\n")
    message = parse(letters[0])
    assert body_text(message) == "word" * 600 + "\n"


def test_long_subject_without_spaces_stays_within_the_line_limit(
        files: CampaignFiles, settings: Settings) -> None:
    row = {**ROW, "subject": "Ü" * 2000}
    letters, _ = build(files, settings, [row], QUOTED_TO)
    message = _check_letter(letters[0], row, settings)
    assert message["Subject"] == "Ü" * 2000


def test_idn_recipient_domain_is_written_in_ascii(files: CampaignFiles,
                                                  settings: Settings) -> None:
    # A Unicode domain used to crash the build (UnicodeEncodeError writing an ASCII header).
    letters, problems = build(files, settings, [{**ROW, "email": "jurgen@bücher.example"}],
                              QUOTED_TO)
    assert problems == []
    message = parse(letters[0])
    assert [a.addr_spec for a in message["To"].addresses] == ["jurgen@xn--bcher-kva.example"]
    assert letters[0].envelope == ("jurgen@xn--bcher-kva.example",)
    assert letters[0].email == "jurgen@xn--bcher-kva.example"


def test_idn_sender_domain_is_written_in_ascii(files: CampaignFiles) -> None:
    sender = Settings(from_address="olive@bücher.example", sender_name="Olive")
    letters, _ = build(files, sender, [ROW], QUOTED_TO)
    message = parse(letters[0])
    assert [a.addr_spec for a in message["From"].addresses] == ["olive@xn--bcher-kva.example"]
    assert message["Message-ID"].endswith("@xn--bcher-kva.example>")


def test_default_to_shows_title_and_name(files: CampaignFiles, settings: Settings) -> None:
    letters, _ = build(files, settings, [ROW], "Subject: Hi\n\nDear {{ name }}\n")
    message = parse(letters[0])
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Dr Ada Lovelace", "ada@example.org")


def test_line_break_in_a_name_shown_only_by_the_default_to_is_rejected(
        files: CampaignFiles, settings: Settings) -> None:
    letters, problems = build(files, settings, [{**ROW, "name": "Ada\nLovelace"}],
                              "Subject: Hi\n\nDear {{ name }}\n")
    assert letters == []
    assert problems == ["recipients.csv:2: name: contains a line break, but it is used in a mail "
                        "header; put it on one line"]


def test_from_header_in_the_template_replaces_the_configured_sender(
        files: CampaignFiles, settings: Settings) -> None:
    letters, _ = build(files, settings, [ROW], 'From: "Campaign Desk" <desk@example.org>\n'
                                               "Subject: Hi\n\nDear {{ name }}\n")
    message = parse(letters[0])
    assert [(a.display_name, a.addr_spec) for a in message["From"].addresses] == [
        ("Campaign Desk", "desk@example.org")]


def test_date_header_is_a_valid_date(files: CampaignFiles, settings: Settings) -> None:
    letters, _ = build(files, settings, [ROW], QUOTED_TO)
    assert parse(letters[0])["Date"].datetime is not None


# --- MIME structure ----------------------------------------------------------------------------


def test_html_sibling_makes_multipart_alternative(files: CampaignFiles,
                                                  settings: Settings) -> None:
    row = {**ROW, "name": "Ada <Lovelace> & Co"}
    letters, _ = build(files, settings, [row], QUOTED_TO,
                       html="<p>Dear {{ title }} {{ name }},</p>\n<p>{{ subject }}</p>\n")
    message = parse(letters[0])
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert body_text(message, "plain").startswith("Dear Dr Ada <Lovelace> & Co,\n")
    assert body_text(message, "html") == ("<p>Dear Dr Ada &lt;Lovelace&gt; &amp; Co,</p>\n"
                                          "<p>Act now</p>\n")


ATTACHMENTS = {
    "briefing.pdf": ("application/pdf", bytes(range(256)) * 40),
    "photo.png": ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 3),
    "notes.txt": ("text/plain", "Zoë's notes\r\nline two\n".encode()),
    "Übersicht 2024.csv": ("text/csv", b"a,b\r\n1,2\r\n"),
    "data.unknownext": ("application/octet-stream", b"\0\1\2"),
}


def test_attachments_make_multipart_mixed_with_types_names_and_exact_bytes(
        files: CampaignFiles, settings: Settings) -> None:
    (files.root / "templates" / "docs").mkdir()
    for name, (_, data) in ATTACHMENTS.items():
        (files.root / "templates" / "docs" / name).write_bytes(data)
    header = "".join(f"Attachment: docs/{name}\n" for name in ATTACHMENTS)
    letters, problems = build(files, settings, [ROW], "Subject: Hi\n" + header +
                              "\nDear {{ name }}\n", html="<p>Dear {{ name }}</p>\n")
    assert problems == []
    message = parse(letters[0])
    assert message.get_content_type() == "multipart/mixed"
    first, *attached = message.iter_parts()
    assert first.get_content_type() == "multipart/alternative"
    assert body_text(message) == "Dear Ada Lovelace\n"
    assert [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True))
            for p in attached] == [(name, kind, data)
                                   for name, (kind, data) in ATTACHMENTS.items()]
    assert all(isinstance(p, EmailMessage) and p.is_attachment() for p in attached)


def test_text_with_one_attachment_is_mixed_text_then_file(
        files: CampaignFiles, settings: Settings) -> None:
    (files.root / "templates" / "briefing.pdf").write_bytes(b"%PDF-1.4\n")
    letters, _ = build(files, settings, [ROW], "Subject: Hi\nAttachment: briefing.pdf\n\nDear\n")
    message = parse(letters[0])
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain",
                                                                    "application/pdf"]


def test_missing_attachment_is_a_problem_for_each_row(files: CampaignFiles,
                                                      settings: Settings) -> None:
    letters, problems = build(files, settings, [ROW],
                              "Subject: Hi\nAttachment: missing.pdf\n\nDear\n")
    assert letters == []
    assert problems == ["recipients.csv:2: attachment 'missing.pdf': No such file or directory "
                        "(paths are relative to templates) (rendering templates/letter.txt)"]


# --- Message-ID --------------------------------------------------------------------------------


def test_message_id_is_stable_for_a_campaign_and_recipient(files: CampaignFiles,
                                                            settings: Settings) -> None:
    first, _ = build(files, settings, [ROW], QUOTED_TO, campaign="hk-2024")
    again, _ = build(files, settings, [{**ROW, "email": "ADA@Example.org"}], QUOTED_TO,
                     campaign="hk-2024")
    assert first[0].message_id == again[0].message_id
    assert parse(first[0])["Message-ID"] == first[0].message_id
    assert first[0].message_id == message_id("hk-2024", "ada@example.org", "example.org")


def test_message_id_differs_across_campaigns_and_recipients(files: CampaignFiles,
                                                            settings: Settings) -> None:
    template = LetterTemplate(TEMPLATE, QUOTED_TO)
    fields = {"title": "Dr", "name": "Ada", "subject": "x"}
    ada = Recipient(2, "ada@example.org", {**fields, "email": "ada@example.org"})
    grace = Recipient(3, "grace@example.org", {**fields, "email": "grace@example.org"})
    one = LetterBuilder(template, settings, "campaign-one")
    two = LetterBuilder(template, settings, "campaign-two")
    ids = {one.build(ada).message_id, one.build(grace).message_id, two.build(ada).message_id}
    assert len(ids) == 3
    assert all(i.startswith("<") and i.endswith("@example.org>") for i in ids)


# --- the sample campaign in the repository -----------------------------------------------------


def test_every_letter_of_the_sample_campaign_parses_back_and_matches_its_row(
        settings: Settings) -> None:
    campaign = Campaign(settings, STARTER / "recipients.csv", STARTER / "templates" / "letter.txt")
    letters = list(campaign.letters())
    with (STARTER / "recipients.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(letters) == len(rows) > 0
    for letter, row in zip(letters, rows, strict=True):
        message = parse(letter)
        (to,) = message["To"].addresses
        assert (to.display_name, to.addr_spec) == (f"{row['title']} {row['name']}", row["email"])
        assert letter.envelope == (row["email"],)
        text = body_text(message)
        assert text.startswith(f"Dear {row['title']} {row['name']},\n")
        assert text.rstrip().endswith(f"Best Regards,\n{settings.sender_name}")
        assert message["Subject"] == "Act now on human rights in Hong Kong and Xinjiang"


@pytest.mark.parametrize("name", ["Jürgen Müller", "Liam O'Connor", "Étienne Marchand"])
def test_sample_campaign_names_survive_encoding(settings: Settings, name: str) -> None:
    campaign = Campaign(settings, STARTER / "recipients.csv", STARTER / "templates" / "letter.txt")
    letters = [parse(letter) for letter in campaign.letters()]
    names = [m["To"].addresses[0].display_name for m in letters]
    assert any(shown.endswith(" " + name) for shown in names)


def test_an_attachment_outside_the_template_folder_is_refused(files: CampaignFiles,
                                                               settings: Settings) -> None:
    files.write_csv("email,name,doc\nada@example.org,Ada,../../etc/hostname\n")
    files.write_template("Subject: s\nAttachment: {{ doc }}\n\nHello {{ name }}\n")
    campaign = Campaign(settings, files.recipients, files.template)
    [problem] = campaign.build()
    assert isinstance(problem, Problem)
    assert "is outside the template's folder" in problem.message


def test_an_attachment_in_a_home_folder_says_home_folders_are_not_read(
        files: CampaignFiles, settings: Settings) -> None:
    files.write_template("Subject: s\nAttachment: ~/letter.pdf\n\nHello {{ name }}\n")
    problem = next(iter(Campaign(settings, files.recipients, files.template).build()))
    assert isinstance(problem, Problem)
    assert "attachment '~/letter.pdf': a home folder (~) is not a place attachments are " \
           "taken from; put the file in " in problem.message
