"""mailmerge's templates, unchanged: bodies with a Content-Type (HTML, Markdown, parts written
by hand), recipients from the To header, international addresses, and letters that decode to
what mailmerge itself makes of the same template."""

from __future__ import annotations

import html.parser
import re
from collections.abc import Callable
from email import message_from_string, policy
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from pathlib import Path

import pytest
from conftest import CampaignFiles, LoggedSend, Result, Server, make_letters
from mailmerge.template_message import TemplateMessage
from servers import RecordingHandler, start_server

from mailer.campaign import Campaign
from mailer.errors import Problem
from mailer.message import Letter
from mailer.outcome import Status
from mailer.settings import Settings

Run = Callable[..., Result]
Send = Callable[..., LoggedSend]


def parse(data: bytes) -> EmailMessage:
    """A letter as a mail reader reads it, failing on any defect the parser finds."""
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        assert part.defects == [], part.defects
    return message


def content(part: MIMEPart) -> str:
    """A text part's text, with the line ends a reader shows."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def letters_of(files: CampaignFiles, settings: Settings, csv: str, template: str
               ) -> list[Letter]:
    files.write_csv(csv)
    files.write_template(template)
    items = list(Campaign(settings, files.recipients, files.template).build())
    assert [item for item in items if isinstance(item, Problem)] == []
    return [item for item in items if isinstance(item, Letter)]


def structure(message: Message) -> str:
    """`multipart/related(multipart/alternative(text/plain,text/html),image/png)`."""
    if not message.is_multipart():
        return message.get_content_type()
    parts = [part for part in message.get_payload() if isinstance(part, Message)]
    return f"{message.get_content_type()}({','.join(structure(p) for p in parts)})"


ONE = "email,name\nada@example.org,Ada & <b>Co</b>\n"


def test_an_html_body_is_sent_as_html_with_its_values_escaped(
        files: CampaignFiles, settings: Settings) -> None:
    [letter] = letters_of(files, settings, ONE, "To: {{ email }}\nSubject: Hi\n"
                          "Content-Type: text/html\n\n<p>Hi, {{ name }},</p>\n")
    message = parse(letter.data)
    assert structure(message) == "text/html"
    assert content(message) == "<p>Hi, Ada &amp; &lt;b&gt;Co&lt;/b&gt;,</p>\n"


def test_parts_written_by_hand_are_sent_as_written_in_their_charset(
        files: CampaignFiles, settings: Settings) -> None:
    template = ('To: {{ email }}\nSubject: Hi\nMIME-Version: 1.0\n'
                'Content-Type: multipart/alternative; boundary="boundary"\n\n'
                "This is a MIME-encoded message.\n\n--boundary\n"
                "Content-Type: text/plain; charset=us-ascii\n\nHi, {{ name }},\n\n--boundary\n"
                "Content-Type: text/html; charset=us-ascii\n\n<p>Hi, {{ name }},</p>\n"
                "--boundary--\n")
    csv = "email,name\nada@example.org,Ada\nzoe@example.org,Zoë\n"
    ada, zoe = (parse(letter.data) for letter in letters_of(files, settings, csv, template))
    assert structure(ada) == "multipart/alternative(text/plain,text/html)"
    plain, markup = ada.iter_parts()
    assert (plain.get_content_charset(), content(plain)) == ("us-ascii", "Hi, Ada,\n")
    assert (markup.get_content_charset(), content(markup)) == \
        ("us-ascii", "<p>Hi, Ada,</p>\n")
    # A name the declared charset cannot hold: UTF-8, as mailmerge does.
    plain, _ = zoe.iter_parts()
    assert (plain.get_content_charset(), content(plain)) == ("utf-8", "Hi, Zoë,\n")


@pytest.mark.parametrize("source", ["./chart.png", "chart.png"])
def test_an_image_named_as_a_relative_path_is_its_attachment_inline(
        files: CampaignFiles, settings: Settings, source: str) -> None:
    (files.root / "templates" / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\nchart")
    [letter] = letters_of(files, settings, ONE, "To: {{ email }}\nSubject: Hi\n"
                          "Content-Type: text/markdown\nAttachment: chart.png\n\n"
                          f"![the chart]({source})\n")
    assert structure(parse(letter.data)) == \
        "multipart/related(multipart/alternative(text/plain,text/html),image/png)"


def test_markdown_goes_as_itself_and_as_html_with_an_attached_image_inline(
        files: CampaignFiles, settings: Settings) -> None:
    (files.root / "templates" / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\nchart")
    [letter] = letters_of(files, settings, ONE, "To: {{ email }}\nSubject: Hi\n"
                          "Content-Type: text/markdown\nAttachment: chart.png\n\n"
                          "Hi, **{{ name }}**,\n\n![the chart](chart.png)\n")
    message = parse(letter.data)
    assert structure(message) == \
        "multipart/related(multipart/alternative(text/plain,text/html),image/png)"
    alternative, image = message.iter_parts()
    plain, markup = alternative.iter_parts()
    assert content(plain) == "Hi, **Ada & <b>Co</b>**,\n\n![the chart](chart.png)\n"
    content_id = image["Content-ID"].strip("<>")
    # The value is text in the HTML, not markup; the image is the attachment, inline.
    assert content(markup) == (
        "<html><body><p>Hi, <strong>Ada &amp; &lt;b&gt;Co&lt;/b&gt;</strong>,</p>\n"
        f'<p><img src="cid:{content_id}" alt="the chart" /></p>\n</body></html>\n')
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == b"\x89PNG\r\n\x1a\nchart"


def test_a_harmless_content_type_and_mime_version_are_accepted(
        files: CampaignFiles, settings: Settings) -> None:
    [letter] = letters_of(files, settings, ONE, 'To: {{ email }}\nSubject: Hi\n'
                          'MIME-Version: 1.0\nContent-Type: text/plain; charset="us-ascii"\n\n'
                          "Dear reader\n")
    message = parse(letter.data)
    assert (message.get_content_type(), message.get_content_charset()) == \
        ("text/plain", "us-ascii")
    assert message.get_all("MIME-Version") == ["1.0"]


def test_a_list_without_an_email_column_sends_to_its_to_header(
        files: CampaignFiles, settings: Settings, run: Run) -> None:
    csv = "mail,name,assistant\nada@example.org,Ada,evil@example.com\n"
    [letter] = letters_of(files, settings, csv, "To: {{ name }} <{{ mail }}>\nSubject: Hi\n\n"
                          "Dear {{ name }}\n")
    assert (letter.email, letter.envelope) == ("ada@example.org", ("ada@example.org",))
    result = run("check")
    assert result.out == ("The letters go to the To header: {{ name }} <{{ mail }}> "
                          "(column 'mail').\n1 recipient, 0 problems\n")
    # A name still never adds a recipient, whatever the row's other columns hold.
    files.write_csv("mail,name,assistant\nada@example.org,"
                    '"evil@example.com, Bob",evil@example.com\n')
    assert run("check").code == 1


def test_two_rows_whose_letters_go_to_one_address_are_duplicates(
        files: CampaignFiles, run: Run) -> None:
    files.write_csv("mail,name\nada@example.org,Ada\nADA@example.org,Ada again\n")
    files.write_template("To: {{ mail }}\nSubject: Hi\n\nDear {{ name }}\n")
    result = run("check")
    assert result.code == 1
    assert result.out.startswith("The letters go to the To header: {{ mail }} (column "
                                 "'mail').\nrecipients.csv:3: this row's letter goes to "
                                 "ADA@example.org, as line 2's does; remove one of the two rows")


def test_no_subject_and_no_blank_line_are_warnings_in_check_and_the_dry_run(
        files: CampaignFiles, run: Run) -> None:
    files.write_template("To: {{ email }}\nDear {{ name }},\n")
    warnings = ("templates/letter.txt:2: warning: no blank line after the headers: the letter "
                "starts here (add a blank line above it to make that plain)\n"
                "templates/letter.txt:1: warning: no Subject header; the letters will have none "
                "(add a line 'Subject: ...' at the top)\n")
    result = run("check")
    assert (result.code, result.out) == (0, warnings + "2 recipients, 0 problems\n")
    result = run("send", "--dry-run")
    assert (result.code, result.err) == (0, warnings)


def test_an_empty_attachment_header_says_it_is_empty(files: CampaignFiles, run: Run) -> None:
    files.write_template("To: {{ email }}\nSubject: Hi\nAttachment:\n\nDear\n")
    result = run("check")
    assert "an Attachment header is empty; name a file in it, or remove it" in result.out


# -- international addresses --------------------------------------------------------------


def _international(server: Server) -> list[Letter]:
    letters = make_letters(2)
    müller = "müller@example.org"
    data = letters[0].data.replace(letters[0].email.encode(), müller.encode())
    return [Letter(2, müller, letters[0].sender, (müller,), letters[0].message_id, data,
                   smtputf8=True), letters[1]]


@pytest.mark.parametrize("offered", [True, False], ids=["SMTPUTF8 offered", "not offered"])
def test_a_letter_to_an_international_address_needs_smtputf8(offered: bool,
                                                            send_logged: Send) -> None:
    handler = RecordingHandler()
    controller = start_server(handler, enable_SMTPUTF8=offered)
    try:
        letters = _international(Server(handler, controller.port))
        result = send_logged(Server(handler, controller.port).settings(), letters)
    finally:
        controller.stop()
    müller = result.entry(letters[0])
    assert result.status(letters[1]) == Status.SENT
    if offered:
        assert müller.status == Status.SENT
        assert handler.messages[0].rcpt_tos == ("müller@example.org",)
    else:
        assert (müller.status, müller.reply_text) == (
            Status.FAILED, f"127.0.0.1:{controller.port} does not take international addresses "
                           "(it offers no SMTPUTF8), and this letter has one")
        assert [m.rcpt_tos for m in handler.messages] == [(letters[1].email,)]


def test_international_rows_are_named_by_check_and_said_before_a_send(
        files: CampaignFiles, smtp_server: Server, run: Run,
        monkeypatch: pytest.MonkeyPatch) -> None:
    files.write_csv("email,title,name,country\nmüller@example.org,Dr,Jürgen Müller,DE\n"
                    "ada@example.org,Dr,Ada,UK\n")
    assert "1 letter go to international addresses (line 2: müller@example.org): they need " \
           "a server that offers SMTPUTF8 (RFC 6531)." in run("check").out
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    result = run("send", "--yes")
    assert result.code == 0, result
    assert "1 letter to international addresses: the server offers SMTPUTF8, so they can go." \
        in result.out
    # Its headers are UTF-8 (RFC 6532): read as text, as a mail reader that takes it does.
    message = message_from_string(smtp_server.handler.messages[0].data.decode(),
                                  policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"].addresses[0].addr_spec == "müller@example.org"


# -- the same letters as mailmerge's ------------------------------------------------------


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []

    def handle_data(self, data: str) -> None:
        self.words += data.split()


def _leaves(message: Message) -> list[tuple[str, object]]:
    """What a reader sees of a message: each text as text (HTML as its visible words),
    each file as its name and bytes."""
    found: list[tuple[str, object]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if kind == "text/html":
            reader = _Text()
            reader.feed(payload.decode(part.get_content_charset() or "utf-8"))
            found.append((kind, " ".join(reader.words)))
        elif kind.startswith("text/") and part.get_filename() is None:
            text = payload.decode(part.get_content_charset() or "utf-8")
            found.append((kind, re.sub(r"\s+\n", "\n", text.replace("\r\n", "\n")).strip()))
        else:
            found.append((part.get_filename() or "", payload))
    return found


def _as_mailmerge_makes_it(template: Path, context: dict[str, str]) -> tuple[object, ...]:
    _, recipients, message = TemplateMessage(template).render(context)
    decoded = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    return (sorted(set(recipients)), [decoded[h] for h in ("To", "Subject", "From", "Reply-To")],
            _leaves(decoded))


def _as_mailer_makes_it(letter: Letter) -> tuple[object, ...]:
    decoded = parse(letter.data)
    return (sorted(letter.envelope), [decoded[h] for h in ("To", "Subject", "From", "Reply-To")],
            _leaves(decoded))


SAMPLE = """\
TO: {{email}}
SUBJECT: Testing mailmerge
FROM: My Self <myself@mydomain.com>
BCC: myself@mydomain.com

Hi, {{name}},

Your number is {{number}}.
"""
HTML_ONLY = SAMPLE.replace("BCC: myself@mydomain.com\n", "BCC: myself@mydomain.com\n"
                           "Content-Type: text/html\n").replace(
    "\nHi, {{name}},\n\nYour number is {{number}}.\n",
    "\n<html>\n<body>\n\n<p>Hi, {{name}},</p>\n\n<p>Your number is {{number}}.</p>\n\n"
    '<p>Sent by <a href="https://github.com/awdeorio/mailmerge">mailmerge</a></p>\n\n'
    "</body>\n</html>\n")
BOTH = """\
TO: {{email}}
SUBJECT: Testing mailmerge
FROM: My Self <myself@mydomain.com>
BCC: myself@mydomain.com
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="boundary"

This is a MIME-encoded message. If you are seeing this, your mail
reader is old.

--boundary
Content-Type: text/plain; charset=us-ascii

Hi, {{name}},

Your number is {{number}}.

--boundary
Content-Type: text/html; charset=us-ascii

<html>
<body>

<p>Hi, {{name}},</p>

<p>Your number is {{number}}.</p>

</body>
</html>
"""
MARKDOWN = """\
TO: {{email}}
SUBJECT: Testing mailmerge
FROM: My Self <myself@mydomain.com>
BCC: myself@mydomain.com
CONTENT-TYPE: text/markdown

You can add:

- Emphasis, aka italics, with *asterisks*.
- Strong emphasis, aka bold, with **asterisks**.
- Combined emphasis with **asterisks and _underscores_**.
- Unordered lists like this one.
- Ordered lists with numbers:
    1. Item 1
    2. Item 2
- Preformatted text with `backticks`.
- How about some [hyperlinks](http://bit.ly/eecs485-wn19-p6)?

# This is a heading.
## And another heading.

Here's an image not attached with the email:
![python logo not attached](http://pluspng.com/img-png/python-logo-png-open-2000.png)
"""
ATTACHED = """\
TO: {{email}}
SUBJECT: Testing mailmerge
FROM: My Self <myself@mydomain.com>
BCC: myself@mydomain.com
ATTACHMENT: file1.docx
ATTACHMENT: {{name}}_submission.txt

Hi, {{name}},

This email contains two attachments.
"""
INLINE = """\
TO: {{email}}
SUBJECT: Testing mailmerge
FROM: My Self <myself@mydomain.com>
BCC: myself@mydomain.com
Content-Type: text/html
ATTACHMENT: image.jpg
ATTACHMENT: second/image.jpg

<html>
<body>

<p>Hi, {{name}},</p>

<img alt="Sample image" src="image.jpg" />

The second image: <img alt="second" src="second/image.jpg">

</body>
</html>
"""


@pytest.mark.parametrize("template", [SAMPLE, HTML_ONLY, BOTH, MARKDOWN, ATTACHED, INLINE],
                         ids=["sample", "HTML only", "HTML and plain text", "Markdown",
                              "attachments", "inline images"])
def test_a_mailmerge_template_makes_the_letter_mailmerge_makes(
        template: str, files: CampaignFiles, settings: Settings) -> None:
    folder = files.root / "templates"
    (folder / "second").mkdir()
    for name, data in {"file1.docx": b"docx", "Myself_submission.txt": b"mine\n",
                       "Bob_submission.txt": b"bob's\n", "image.jpg": b"\xff\xd8jpeg",
                       "second/image.jpg": b"\xff\xd8second"}.items():
        (folder / name).write_bytes(data)
    csv = 'email,name,number\nmyself@mydomain.com,"Myself",17\nbob@bobdomain.com,"Bob",42\n'
    ours = letters_of(files, settings, csv, template)
    rows = [{"email": "myself@mydomain.com", "name": "Myself", "number": "17"},
            {"email": "bob@bobdomain.com", "name": "Bob", "number": "42"}]
    for letter, row in zip(ours, rows, strict=True):
        assert _as_mailer_makes_it(letter) == _as_mailmerge_makes_it(files.template, row)
