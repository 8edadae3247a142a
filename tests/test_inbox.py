"""`mailer inbox` against a real IMAP server: bounces and replies recorded against the letters
that a real send left in the log, read without changing the mailbox, and never twice."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from conftest import CampaignFiles, Result, Server, imap_env
from imapd import IMAPServer
from trustme import CA

from mailer.account import mailbox_login
from mailer.errors import ConfigError
from mailer.outcome import Status
from mailer.sendlog import open_log
from mailer.settings import Settings

LOG = "mailer-log.sqlite3"
DATA = Path(__file__).parent / "data" / "mail"
ADA, GRACE = "ada@example.org", "grace@example.net"


def dsn(recipient: str, message_id: str, *, action: str = "failed", status: str = "5.1.1",
        words: str = "550 5.1.1 <{r}>: Recipient address rejected: User unknown") -> bytes:
    """A delivery status notification (RFC 3464) as Postfix writes one."""
    said = words.format(r=recipient)
    return f"""\
From: MAILER-DAEMON@mail.example.org (Mail Delivery System)
To: organiser@example.org
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
Message-ID: <bounce.{action}.{recipient}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered to one or more recipients.

<{recipient}>: {said}

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.org

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {said}

--B
Content-Type: text/rfc822-headers

From: organiser@example.org
To: {recipient}
Message-ID: {message_id}
Subject: a letter

--B--
""".replace("\n", "\r\n").encode()


def answer(sender: str, in_reply_to: str, *, subject: str = "Re: Hello",
           automatic: bool = False) -> bytes:
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = "organiser@example.org"
    reply["Subject"] = ("Automatic reply: " if automatic else "") + subject
    reply["Date"] = "Tue, 01 Dec 2026 12:00:00 +0000"
    reply["Message-ID"] = f"<reply.{abs(hash((sender, automatic)))}@example.net>"
    reply["In-Reply-To"] = in_reply_to
    reply["References"] = in_reply_to
    if automatic:
        reply["Auto-Submitted"] = "auto-replied"
    reply.set_content("I am out of the office." if automatic else "Thank you for writing.")
    return reply.as_bytes()


NEWSLETTER = (DATA / "unrelated-newsletter.eml").read_bytes()


@pytest.fixture
def sent(files: CampaignFiles, smtp_server: Server, imap_server: IMAPServer, ca_file: Path,
         run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Both letters of the small campaign sent for real; their Message-IDs by address."""
    for key, value in {**smtp_server.env(), **imap_env(imap_server, ca_file),
                       "MAILER_SAVE_SENT": "no"}.items():
        monkeypatch.setenv(key, value)
    assert run("send", "--yes").code == 0
    return {m.rcpt_tos[0]: str(BytesHeaderParser().parsebytes(m.data)["Message-ID"])
            for m in smtp_server.handler.messages}


def _rows(root: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(root / LOG) as db:
        return {email: (status, reply) for email, status, reply in
                db.execute("SELECT email, status, reply FROM letters")}


def test_a_bounce_and_a_reply_are_recorded_against_their_letters(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        files: CampaignFiles) -> None:
    imap_server.add("INBOX", dsn(ADA, sent[ADA]))
    imap_server.add("INBOX", answer(GRACE, sent[GRACE]))
    imap_server.add("INBOX", NEWSLETTER)
    result = run("inbox")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == [
        "Read 3 messages in INBOX: 1 reply from a person, 0 automatic replies, 1 bounce.",
        f"  bounced: {ADA} (letter): 5.1.1 550 5.1.1 <{ADA}>: Recipient address rejected: "
        "User unknown",
        "  1 message not about these campaigns",
        "mailer log --status bounced lists the bounced letters; fix their addresses in the "
        "list (a new address gets its letter), or send them again with mailer send "
        "--retry-failed."]
    assert result.out.startswith(f"Reading {imap_server.user} at 127.0.0.1:{imap_server.port}")
    assert _rows(files.root) == {ADA: ("bounced", None), GRACE: ("sent", "replied")}


def test_reading_changes_nothing_in_the_mailbox(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result]) -> None:
    for data in (dsn(ADA, sent[ADA]), answer(GRACE, sent[GRACE]), NEWSLETTER):
        imap_server.add("INBOX", data)
    before = {folder: imap_server.messages(folder) for folder in imap_server.folders()}
    assert run("inbox").code == 0
    assert {folder: imap_server.messages(folder) for folder in imap_server.folders()} == before
    assert all(not flags for _, flags, _ in before["INBOX"])  # none was marked read


def test_a_second_read_records_nothing_twice_and_reads_only_what_is_new(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        files: CampaignFiles) -> None:
    imap_server.add("INBOX", answer(GRACE, sent[GRACE], automatic=True))
    assert "0 replies from a person, 1 automatic reply, 0 bounces" in run("inbox").out
    again = run("inbox")
    assert "Read 0 messages in INBOX" in again.out
    imap_server.add("INBOX", answer(GRACE, sent[GRACE]))  # then the office answers
    later = run("inbox")
    assert "Read 1 message in INBOX: 1 reply from a person, 0 automatic replies" in later.out
    assert _rows(files.root)[GRACE] == ("sent", "replied")  # a person's reply outranks
    today = datetime.now(UTC).date() - timedelta(days=1)
    reread = run("inbox", "--since", today.isoformat())
    assert "Read 2 messages in INBOX: 0 replies from a person, 0 automatic replies" in reread.out
    assert "  2 messages recorded by an earlier read" in reread.out


def test_a_rebuilt_folder_is_read_again_from_the_first_send(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        files: CampaignFiles) -> None:
    imap_server.add("INBOX", answer(GRACE, sent[GRACE]))
    assert run("inbox").code == 0
    with sqlite3.connect(files.root / LOG) as db:  # as if the server had a new UIDVALIDITY
        db.execute("UPDATE mailbox SET uidvalidity = uidvalidity + 1")
    assert "Read 1 message in INBOX" in run("inbox").out


def test_a_bounce_that_returns_no_message_id_is_matched_by_its_failed_address(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        files: CampaignFiles) -> None:
    imap_server.add("INBOX", dsn(GRACE, "<not-ours@elsewhere.example>"))
    assert f"  bounced: {GRACE} (letter): 5.1.1" in run("inbox").out
    assert _rows(files.root)[GRACE] == ("bounced", None)


def test_a_delay_notice_and_a_bounced_copy_change_no_letter(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        files: CampaignFiles) -> None:
    imap_server.add("INBOX", dsn(ADA, sent[ADA], action="delayed", status="4.4.1",
                                 words="451 4.4.1 host not reachable"))
    imap_server.add("INBOX", dsn("press@example.com", sent[GRACE]))  # its Cc bounced
    result = run("inbox")
    assert "0 bounces." in result.out
    assert "  1 delay notice: a server is still trying; nothing changes" in result.out
    assert "  1 bounce of a Cc or Bcc copy: the letter itself went" in result.out
    assert {status for status, _ in _rows(files.root).values()} == {"sent"}


def test_other_folders_and_other_campaigns_are_read_as_asked(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result]) -> None:
    imap_server.add("Archive", answer(GRACE, sent[GRACE]))
    assert "Read 0 messages in INBOX" in run("inbox").out
    both = run("inbox", "--folder", "INBOX", "--folder", "Archive")
    assert "Read 1 message in INBOX, Archive: 1 reply from a person" in both.out
    missing = run("inbox", "--campaign", "other")
    assert missing.code == 2
    assert missing.err == (f"error: no campaign 'other' in {LOG}; it has: 'letter'\n")


def test_the_log_shows_bounces_and_replies_and_filters_on_them(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result]) -> None:
    imap_server.add("INBOX", dsn(ADA, sent[ADA]))
    imap_server.add("INBOX", answer(GRACE, sent[GRACE], subject="Re: your letter"))
    run("inbox")
    table = run("log")
    assert "Campaign 'letter': 0 pending, 1 sent, 0 deferred, 0 failed, 0 unknown, 1 bounced" \
        in table.out
    assert "  1 reply from a person (50% of the letters that went), 0 automatic" in table.out
    assert ADA in table.out
    assert GRACE not in table.out
    replied = run("log", "--replied", "--format", "json")
    [entry] = json.loads(replied.out)
    assert (entry["address"], entry["reply"], entry["reply_from"], entry["reply_subject"]) == (
        GRACE, "replied", GRACE, "Re: your letter")
    assert entry["reply_at"] == "2026-12-01T12:00:00+00:00"
    unanswered = run("log", "--no-reply", "--format", "csv").out.splitlines()
    assert unanswered[0].split(",")[:4] == ["campaign", "address", "line", "status"]
    assert "bounce_status" in unanswered[0]
    assert len(unanswered) == 2
    assert f"letter,{ADA},2,bounced," in unanswered[1]
    assert "5.1.1" in unanswered[1]
    assert run("log", "--status", "bounced", "--replied").out.endswith(
        "No recipients are bounced, with a reply.\n")


def test_a_bounced_letter_is_sent_again_only_with_retry_failed(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        smtp_server: Server, files: CampaignFiles) -> None:
    imap_server.add("INBOX", dsn(ADA, sent[ADA]))
    run("inbox")
    again = run("send", "--yes")
    assert "skipping 1 bounced (--retry-failed to send again), 1 already sent" in again.out
    assert len(smtp_server.handler.messages) == 2
    assert run("send", "--yes", "--retry-failed").code == 0
    assert [m.rcpt_tos[0] for m in smtp_server.handler.messages][2:] == [ADA]
    assert _rows(files.root)[ADA] == ("sent", None)
    with open_log(files.root / LOG) as log:
        entry = next(e for e in log.entries("letter", list(Status)) if e.address == ADA)
    assert entry.bounce_status is None  # the new letter has not bounced


def test_a_refused_mailbox_login_is_a_clear_error_without_the_password(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_IMAP_PASSWORD", "wrong-secret-123")
    result = run("inbox")
    assert result.code == 1
    assert result.err.startswith(f"error: the mailbox at 127.0.0.1:{imap_server.port} refused "
                                 f"the login of {imap_server.user}: ")
    assert "wrong-secret-123" not in result.err + result.out
    assert "Traceback" not in result.err


def test_a_mailbox_whose_certificate_is_not_trusted_is_refused(
        sent: dict[str, str], run: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILER_IMAP_CA_FILE")
    result = run("inbox")
    assert result.code == 2
    assert result.err.startswith("error: TLS with the mailbox at 127.0.0.1:")
    assert "unable to get local issuer certificate" in result.err
    assert "MAILER_IMAP_CA_FILE" in result.err


def test_nothing_sent_yet_means_nothing_to_look_for(
        files: CampaignFiles, run: Callable[..., Result]) -> None:
    open_log(files.root / LOG).close()
    result = run("inbox")
    assert (result.code, result.out) == (
        0, "No letter has been sent yet: there is nothing to look for.\n")


def test_the_mailbox_login_is_the_smtp_one_unless_set_apart() -> None:
    shared = Settings(smtp_username="olive", smtp_password="s3cret-smtp")
    login = mailbox_login(shared)
    assert (login.username, login.secret()) == ("olive", "s3cret-smtp")
    own = Settings(smtp_username="olive", smtp_password="s3cret-smtp",
                   imap_username="olive@example.org", imap_password="s3cret-imap")
    assert mailbox_login(own).secret() == "s3cret-imap"
    assert "s3cret" not in repr(mailbox_login(own)) + repr(own)
    with pytest.raises(ConfigError, match="reading the mailbox needs a login"):
        mailbox_login(Settings())
    with pytest.raises(ConfigError, match="set both MAILER_IMAP_USERNAME and "
                                          r"MAILER_IMAP_PASSWORD \(or"):
        mailbox_login(Settings(imap_username="olive"))


def test_the_report_carries_what_the_mailbox_said(
        sent: dict[str, str], imap_server: IMAPServer, run: Callable[..., Result],
        files: CampaignFiles) -> None:
    imap_server.add("INBOX", dsn(ADA, sent[ADA]))
    imap_server.add("INBOX", answer(GRACE, sent[GRACE], subject="Re: <b>your</b> letter"))
    run("inbox")
    result = run("report")
    assert result.out == "Wrote the report of campaign 'letter' to report.html.\n"
    page = (files.root / "report.html").read_text(encoding="utf-8")
    assert "Campaign report: letter" in page
    assert "Re: &lt;b&gt;your&lt;/b&gt; letter" in page
    assert "550 5.1.1" in page
    assert "<script" not in page
    run("send", "--yes", "--campaign", "second")
    several = run("report", "-o", "x.html")
    assert several.code == 2
    assert several.err == ("error: mailer-log.sqlite3 has 2 campaigns ('letter', 'second'): "
                           "choose one with --campaign\n")


def test_a_mailbox_on_starttls_is_read_after_tls_is_up(
        sent: dict[str, str], ca: CA, ca_file: Path, run: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with IMAPServer(ca, security="starttls") as server:  # it refuses a login before TLS
        server.add("INBOX", answer(GRACE, sent[GRACE]))
        for key, value in {**imap_env(server, ca_file), "MAILER_IMAP_SECURITY": "starttls"
                           }.items():
            monkeypatch.setenv(key, value)
        assert "1 reply from a person" in run("inbox").out
