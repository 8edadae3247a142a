"""mailer.bounces.classify: what a message in the sender's mailbox is.

The fixtures in tests/data/mail/ are bounces and replies as Postfix, Exim, qmail, Exchange,
Microsoft 365, Gmail, Outlook and Sieve write them (see the README there for each one's
source); the rest of the messages are built here to isolate one rule each.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.bounces import DIAGNOSTIC_LIMIT, Bounce, Reply, classify

MAIL = Path(__file__).parent / "data" / "mail"


def fixture(name: str) -> bytes:
    return (MAIL / name).read_bytes()


def message(headers: str, body: str = "Thank you for your letter.\n") -> bytes:
    """A message with these header lines (one per line, no trailing blank line)."""
    return (headers.strip("\n") + "\n\n" + body).encode("utf-8")


OURS = "<9a0db1b53bb58b7396d40fff98a87f2b@example.org>"
REPLY_HEADERS = f"""\
From: Jonas Berg <Minister@Parliament.example.net>
To: Campaign Desk <campaign@example.org>
Subject: Re: Act now on human rights in Hong Kong and Xinjiang
Date: Wed, 02 Dec 2026 10:15:00 +0100
Message-ID: <reply-1@parliament.example.net>
In-Reply-To: {OURS}
"""


def reply_with(extra: str = "", subject: str | None = None) -> Bounce | Reply | None:
    headers = REPLY_HEADERS + extra
    if subject is not None:
        headers = headers.replace(
            "Subject: Re: Act now on human rights in Hong Kong and Xinjiang", f"Subject: {subject}")
    return classify(message(headers))


# -- the fixtures -----------------------------------------------------------------------------

BOUNCES = {
    # Real: Postfix 3.7 refusing at RCPT (the mta tool's bounce.example MX).
    "postfix-failed.eml": Bounce(
        ("pm@bounce.example",), "5.1.1",
        "550 5.1.1 <pm@bounce.example>: Recipient address rejected: User unknown in virtual "
        "mailbox table",
        ("<fa9bc30e4cff6b8eb03715456691a87c@example.org>",), delayed=False),
    "postfix-failed-two-recipients.eml": Bounce(
        ("minister@bounce.example", "office@bounce.example"), "5.1.1",
        "550 5.1.1 <minister@bounce.example>: Recipient address rejected: User unknown in "
        "virtual mailbox table",
        ("<0c2d6a1be7f94d30a1d5c3e8b7a69f12@example.org>",), delayed=False),
    "postfix-delayed.eml": Bounce(
        ("speaker@parliament.example.net",), "4.2.2",
        "452 4.2.2 <speaker@parliament.example.net>: Mailbox full, try again later",
        ("<700ac455f9015cefeafb549965b056b3@example.org>",), delayed=True),
    # Exim writes Status: 5.0.0 (4.0.0) whatever the remote server said: its code is kept.
    "exim-failed.eml": Bounce(
        ("minister@parliament.example.net",), "5.1.1",
        "550 5.1.1 <minister@parliament.example.net>: Recipient address rejected: User "
        "unknown in local recipient table",
        ("<9a0db1b53bb58b7396d40fff98a87f2b@example.org>",), delayed=False),
    "exim-delayed.eml": Bounce(
        ("chancellor@bund.example.de",), "4.7.1",
        "451 4.7.1 <chancellor@bund.example.de>: Recipient address rejected: Greylisted, try "
        "again later",
        ("<3ee602bc172140cb8971d5472580cd41@example.org>",), delayed=True),
    # Not DSNs: found by flufl.bounce, the words read from the text.
    "exim-plain-failed.eml": Bounce(
        ("senator@senate.example.org",), "5.2.2",
        "552 5.2.2 <senator@senate.example.org>: Mailbox quota exceeded",
        ("<8155b2889d43678a944c6cdacce0ccb8@example.org>",), delayed=False),
    "qmail-failed.eml": Bounce(
        ("deputy@assemblee.example.fr",), "5.1.1",
        "Sorry, no mailbox here by that name. (#5.1.1)",
        ("<cc980e4931427c9d88039f940f8b3993@example.org>",), delayed=False),
    "exchange-ndr.eml": Bounce(
        ("secretary@state.example.gov",), "5.1.1",
        "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        ("<bb128414a566944fea2d840c94101a0f@example.org>",), delayed=False),
    "microsoft365-ndr.eml": Bounce(
        ("mp@commons.example.uk",), "5.1.10",
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient mp@commons.example.uk not found "
        "by SMTP address lookup",
        ("<35249da64dd2c264739ca1663dde7a3b@example.org>",), delayed=False),
    "gmail-failed.eml": Bounce(
        ("member@europarl.example.eu",), "5.1.1",
        "550 5.1.1 <member@europarl.example.eu>: Recipient address rejected: User unknown in "
        "relay recipient table",
        ("<d889585b7a0e5bcda58c338094cedcaa@example.org>",), delayed=False),
}

REPLIES = {
    # Real: injected by `mta reply`, delivered by Postfix.
    "reply-human.eml": Reply(
        ("<fa9bc30e4cff6b8eb03715456691a87c@example.org>",), "pm@cabinet.example.org",
        "Re: Act now on human rights in Hong Kong and Xinjiang", "2026-12-01T23:22:29+00:00",
        automatic=False),
    "reply-auto-rfc3834.eml": Reply(
        ("<0c2d6a1be7f94d30a1d5c3e8b7a69f12@example.org>",), "minister@cabinet.example.org",
        "Automatic reply: Act now on human rights in Hong Kong and Xinjiang",
        "2026-12-01T23:22:29+00:00", automatic=True),
    "reply-human-gmail.eml": Reply(
        ("<68ddbd246f64083389d267b9d941d640@example.org>",), "office@cabinet.example.org",
        "Re: Act now on human rights in Hong Kong and Xinjiang", "2026-12-02T09:13:47+00:00",
        automatic=False),
    "reply-outlook-automatic.eml": Reply(
        ("<7debe6700dc8c979aae83b014d3eb17b@example.org>",),
        "deputy.office@assemblee.example.fr",
        "Automatic reply: Act now on human rights in Hong Kong and Xinjiang",
        "2026-12-02T00:05:32+00:00", automatic=True),
    # Recognised by its headers alone: its subject is the user's own.
    "reply-vacation-sieve.eml": Reply(
        ("<5bea94b3a165aba576520955b781a0df@example.org>",), "envoy@mission.example.ch",
        "Abwesend bis zum 4. Januar / away until 4 January", "2026-12-02T00:08:19+00:00",
        automatic=True),
}


def test_every_fixture_is_covered() -> None:
    named = {*BOUNCES, *REPLIES, "unrelated-newsletter.eml"}
    assert named == {path.name for path in MAIL.glob("*.eml")}


@pytest.mark.parametrize("name", sorted(BOUNCES))
def test_each_bounce_fixture_gives_its_recipients_status_words_and_our_message_id(
        name: str) -> None:
    assert classify(fixture(name)) == BOUNCES[name]


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_each_reply_fixture_gives_what_it_refers_to_who_when_and_whether_automatic(
        name: str) -> None:
    assert classify(fixture(name)) == REPLIES[name]


def test_a_newsletter_marked_bulk_and_auto_generated_that_answers_nothing_is_neither() -> None:
    assert classify(fixture("unrelated-newsletter.eml")) is None


@pytest.mark.parametrize("name", ["gmail-failed.eml", "exchange-ndr.eml",
                                  "microsoft365-ndr.eml"])
def test_a_bounce_with_auto_submitted_and_in_reply_to_is_a_bounce_not_an_auto_reply(
        name: str) -> None:
    data = fixture(name)
    assert b"In-Reply-To:" in data
    assert b"Auto-Submitted: auto-replied" in data
    assert isinstance(classify(data), Bounce)


# -- delivery status notifications ---------------------------------------------------------


def test_a_report_of_successful_delivery_is_neither_bounce_nor_reply() -> None:
    data = fixture("gmail-failed.eml").replace(b"Action: failed", b"Action: delivered")
    data = data.replace(b"Status: 5.0.0", b"Status: 2.0.0")
    assert classify(data) is None


def test_a_report_with_failures_and_delays_reports_the_failures() -> None:
    data = fixture("postfix-failed-two-recipients.eml").replace(
        b"Action: failed\nStatus: 5.1.1\nRemote-MTA: dns; 127.0.0.1\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <minister",
        b"Action: delayed\nStatus: 4.4.1\nRemote-MTA: dns; 127.0.0.1\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <minister", 1)
    found = classify(data)
    assert isinstance(found, Bounce)
    assert found.recipients == ("office@bounce.example",)
    assert not found.delayed


def test_the_original_recipient_is_reported_rather_than_where_it_was_forwarded() -> None:
    data = fixture("postfix-failed.eml").replace(
        b"Final-Recipient: rfc822; pm@bounce.example",
        b"Final-Recipient: rfc822; pm.private@forward.example")
    found = classify(data)
    assert isinstance(found, Bounce)
    assert found.recipients == ("pm@bounce.example",)


def test_a_class_only_status_is_not_refined_into_another_class() -> None:
    data = fixture("exim-failed.eml").replace(
        b"Diagnostic-Code: smtp; 550 5.1.1", b"Diagnostic-Code: smtp; 450 4.2.0")
    found = classify(data)
    assert isinstance(found, Bounce)
    assert found.status == "5.0.0"


def test_a_bounce_whose_addresses_cannot_be_read_still_names_the_letter() -> None:
    # Exim reports a local delivery by its file name; without X-Failed-Recipients, the
    # Message-ID is what says whose letter it was.
    data = fixture("exim-failed.eml").replace(
        b"Final-Recipient: rfc822;minister@parliament.example.net",
        b"Final-Recipient: rfc822;/var/mail/minister").replace(
        b"X-Failed-Recipients: minister@parliament.example.net\n", b"")
    found = classify(data)
    assert isinstance(found, Bounce)
    assert found.recipients == ()
    assert found.message_ids == ("<9a0db1b53bb58b7396d40fff98a87f2b@example.org>",)


def test_a_delivery_status_part_in_base64_is_read() -> None:
    report = (b"Reporting-MTA: dns; mx.example.org\n\n"
              b"Final-Recipient: rfc822; MP@Commons.example.uk\nAction: failed\n"
              b"Status: 5.2.1\nDiagnostic-Code: smtp; 550 5.2.1 Mailbox disabled\n")
    data = (b"From: MAILER-DAEMON@mx.example.org\nSubject: Returned mail\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            b"--b\nContent-Type: text/plain\n\nReturned.\n"
            b"--b\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(report) + b"--b--\n")
    assert classify(data) == Bounce(("mp@commons.example.uk",), "5.2.1",
                                    "550 5.2.1 Mailbox disabled", (), delayed=False)


def test_an_international_delivery_status_rfc_6533_is_read() -> None:
    data = ("From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nReturned.\n"
            "--b\nContent-Type: message/global-delivery-status\n\n"
            "Reporting-MTA: dns; mx.example.org\n\n"
            "Final-Recipient: utf-8; müller@bundestag.example.de\nAction: failed\n"
            "Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 unknown\n"
            "--b\nContent-Type: message/global-headers\n\n"
            f"Message-ID: {OURS}\nSubject: Act now\n"
            "--b--\n").encode()
    assert classify(data) == Bounce(("müller@bundestag.example.de",), "5.1.1",
                                    "550 5.1.1 unknown", (OURS,), delayed=False)


def test_a_diagnostic_is_one_short_line_without_control_characters() -> None:
    words = "550 5.7.1 \x1b[31mrejected\x1b[0m " + "because " * 200
    data = fixture("postfix-failed.eml").replace(
        b"Diagnostic-Code: smtp; 550 5.1.1 <pm@bounce.example>: Recipient address",
        b"Diagnostic-Code: smtp; " + words.encode())
    assert data != fixture("postfix-failed.eml")
    found = classify(data)
    assert isinstance(found, Bounce)
    assert found.diagnostic.startswith("550 5.7.1 [31mrejected")
    assert len(found.diagnostic) == DIAGNOSTIC_LIMIT
    assert found.diagnostic.isprintable()


def test_a_person_quoting_a_bounce_in_a_reply_is_a_reply() -> None:
    # flufl.bounce's heuristics would take this for a qmail bounce: only messages from a
    # mail system are put to them.
    quoted = fixture("qmail-failed.eml").split(b"\n\n", 1)[1].decode()
    found = classify(message(REPLY_HEADERS, "I got this when I wrote to her:\n\n" + quoted))
    assert isinstance(found, Reply)
    assert found.refers_to == (OURS,)
    assert not found.automatic


# -- replies ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    "Auto-Submitted: auto-replied",
    "Auto-Submitted: auto-replied (vacation)",
    'Auto-Submitted: auto-replied; owner-email="pa@parliament.example.net"',
    "Auto-Submitted: auto-generated",
    "Auto-Submitted: auto-notified",
    "X-Autoreply: yes",
    "X-Autorespond: Out of office",
    "Precedence: auto_reply",
    "Precedence: bulk",
    "Precedence: junk",
    "X-Precedence: bulk",
    "X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent",
])
def test_a_reply_with_an_automatic_reply_header_is_automatic(header: str) -> None:
    found = reply_with(header + "\n")
    assert isinstance(found, Reply)
    assert found.automatic


@pytest.mark.parametrize("subject", [
    "Automatic reply: Act now",
    "AUTOMATIC REPLY: Act now",
    "Auto: Act now",
    "Out of Office: Act now",
    "Out of Office AutoReply: Act now",
    "Abwesenheitsnotiz: Act now",
    "Automatische Antwort: Act now",
    "Réponse automatique : Act now",
    "=?utf-8?q?Respuesta_autom=C3=A1tica=3A_Act_now?=",
    "Risposta automatica: Act now",
    "Automatisch antwoord: Act now",
    "Automatiskt svar: Act now",
    "Jonas Berg is out of the office.",
])
def test_a_reply_whose_subject_says_automatic_reply_is_automatic(subject: str) -> None:
    found = reply_with(subject=subject)
    assert isinstance(found, Reply)
    assert found.automatic


@pytest.mark.parametrize(("extra", "subject"), [
    ("", "Re: Act now on human rights in Hong Kong and Xinjiang"),
    ("", "RE: Automatic reply: Act now"),
    ("", "Auto industry and human rights"),
    ("Auto-Submitted: no\n", "Re: Act now"),
    # Exchange asks others not to answer automatically; people's own mail carries it too.
    ("X-Auto-Response-Suppress: All\n", "Re: Act now"),
    ("X-Autoreply: no\n", "Re: Act now"),
    ("Precedence: list\n", "Re: Act now"),
])
def test_a_reply_written_by_a_person_is_not_automatic(extra: str, subject: str) -> None:
    found = reply_with(extra, subject)
    assert isinstance(found, Reply)
    assert not found.automatic


def test_in_reply_to_and_references_are_merged_in_order_without_repeats() -> None:
    found = reply_with("References: <thread-start@parliament.example.net>\n "
                       f"{OURS}\n")
    assert isinstance(found, Reply)
    assert found.refers_to == (OURS, "<thread-start@parliament.example.net>")


def test_a_bare_message_id_in_in_reply_to_is_read_in_angle_brackets() -> None:
    found = classify(message(REPLY_HEADERS.replace(
        f"In-Reply-To: {OURS}", "In-Reply-To: 9a0db1b53bb58b7396d40fff98a87f2b@example.org")))
    assert isinstance(found, Reply)
    assert found.refers_to == (OURS,)


def test_an_rfc_3834_auto_reply_naming_no_message_is_an_automatic_reply() -> None:
    # Some vacation robots leave out In-Reply-To: the caller can still match the sender.
    found = classify(message(REPLY_HEADERS.replace(f"In-Reply-To: {OURS}\n", "")
                             + "Auto-Submitted: auto-replied\n"))
    assert found == Reply((), "minister@parliament.example.net",
                          "Re: Act now on human rights in Hong Kong and Xinjiang",
                          "2026-12-02T09:15:00+00:00", automatic=True)


def test_a_message_naming_no_other_message_is_neither() -> None:
    assert classify(message(REPLY_HEADERS.replace(f"In-Reply-To: {OURS}\n", ""))) is None


def test_a_read_receipt_is_an_automatic_reply_to_the_letter() -> None:
    data = ("From: Jonas Berg <minister@parliament.example.net>\n"
            "Subject: Read: Act now\nDate: Wed, 02 Dec 2026 10:15:00 +0100\n"
            "Content-Type: multipart/report; report-type=disposition-notification; "
            "boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nYour message was read.\n"
            "--b\nContent-Type: message/disposition-notification\n\n"
            "Reporting-UA: parliament.example.net; Outlook\n"
            "Final-Recipient: rfc822;minister@parliament.example.net\n"
            f"Original-Message-ID: {OURS}\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\n"
            "--b--\n").encode()
    assert classify(data) == Reply((OURS,), "minister@parliament.example.net", "Read: Act now",
                                   "2026-12-02T09:15:00+00:00", automatic=True)


@pytest.mark.parametrize(("date", "iso"), [
    ("Wed, 02 Dec 2026 10:15:00 +0100", "2026-12-02T09:15:00+00:00"),
    ("Wed, 2 Dec 2026 04:15:00 -0500 (EST)", "2026-12-02T09:15:00+00:00"),
    ("2 Dec 2026 09:15:00 -0000", "2026-12-02T09:15:00+00:00"),
    ("yesterday, around lunch", ""),
    ("Wed, 02 Dec 99999 10:15:00 +0100", ""),
])
def test_the_date_is_iso_8601_utc_or_empty(date: str, iso: str) -> None:
    found = classify(message(REPLY_HEADERS.replace("Wed, 02 Dec 2026 10:15:00 +0100", date)))
    assert isinstance(found, Reply)
    assert found.date == iso


def test_sender_and_subject_are_decoded_whatever_their_encoding() -> None:
    data = (REPLY_HEADERS.replace("From: Jonas Berg <Minister@Parliament.example.net>",
                                  "From: =?utf-8?b?SsO2bmFz?= <Minister@Parliament.example.net>")
            .replace("Subject: Re: Act now on human rights in Hong Kong and Xinjiang",
                     "Subject: Re: Menschenrechte in Hongkong – jetzt handeln")
            .encode("utf-8") + b"\n\xe9t\xe9\n")
    found = classify(data)
    assert isinstance(found, Reply)
    assert found.sender == "minister@parliament.example.net"
    assert found.subject == "Re: Menschenrechte in Hongkong – jetzt handeln"


# -- never raises ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    found = classify(data)
    assert found is None or isinstance(found, Bounce | Reply)


FIXTURES = sorted(path.name for path in MAIL.glob("*.eml"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.data())
def test_damaged_fixtures_never_raise(name: str, data: st.DataObject) -> None:
    original = fixture(name)
    # A cut, a splice of noise and a few flipped bytes: broken MIME, boundaries and charsets.
    start = data.draw(st.integers(0, len(original)))
    end = data.draw(st.integers(start, min(len(original), start + 400)))
    noise = data.draw(st.binary(max_size=200))
    damaged = bytearray(original[:start] + noise + original[end:])
    for at in data.draw(st.lists(st.integers(0, max(len(damaged) - 1, 0)), max_size=8)):
        if damaged:
            damaged[at] ^= 0xFF
    found = classify(bytes(damaged))
    assert found is None or isinstance(found, Bounce | Reply)


@pytest.mark.parametrize("data", [
    b"",
    b"\xff\xfe\x00\x00garbage",
    b"Subject: =?x-unknown?q?abc?=\nIn-Reply-To: <a@b>\n\nhi",
    b"Content-Type: text/plain; charset=x-no-such-charset\nFrom: MAILER-DAEMON@x\n\n\xe9",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
    b"--b\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
    b"!!!not base64!!!\n--b--\n",
    b"Content-Type: multipart/report; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n--b--",
    b"From: \xc3\x28 <\xff@\xfe>\nIn-Reply-To: <\xe9@x>\nDate: \xff\n\n",
])
def test_malformed_messages_give_none_or_a_reading_without_raising(data: bytes) -> None:
    found = classify(data)
    assert found is None or isinstance(found, Bounce | Reply)


def test_mime_nested_deeper_than_python_recursion_does_not_raise() -> None:
    depth = sys.getrecursionlimit() + 100
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                    for i in range(depth))
    found = classify(b"From: MAILER-DAEMON@x\n" + head + b"\nend\n")
    assert found is None or isinstance(found, Bounce | Reply)
