"""tests/imapd.py: the in-process IMAP server answers a stdlib imaplib client as a provider's
server does (TLS, login, RFC 6154 folders, read-only EXAMINE, SEARCH, FETCH, APPEND), and shows
the test what a client left in it."""

from __future__ import annotations

import contextlib
import imaplib
import re
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from imapd import IMAPServer

from mailer.bounces import classify

MAIL = Path(__file__).parent / "data" / "mail"

LETTER = b"""\
From: Campaign Desk <campaign@example.org>\r
To: "Minister Jonas Berg" <minister@parliament.example.net>\r
Subject: Act now on human rights in Hong Kong and Xinjiang\r
Date: Tue, 01 Dec 2026 23:41:05 +0000\r
Message-ID: <9a0db1b53bb58b7396d40fff98a87f2b@example.org>\r
MIME-Version: 1.0\r
Content-Type: text/plain; charset=utf-8\r
\r
Dear Minister Jonas Berg,\r
\r
Please act now.\r
"""


def reply(number: int, *, day: datetime) -> bytes:
    return (f"From: Office {number} <office{number}@gov.example>\r\n"
            f"To: campaign@example.org\r\nSubject: Re: Act now\r\n"
            f"Date: {day:%a, %d %b %Y %H:%M:%S +0000}\r\n"
            f"Message-ID: <reply{number}@gov.example>\r\n"
            f"In-Reply-To: <{number:032x}@example.org>\r\n\r\nThank you.\r\n").encode()


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(day: datetime) -> str:
    """A date as IMAP SEARCH takes it (RFC 3501 date: English month, whatever the locale)."""
    return f"{day.day:02d}-{MONTHS[day.month - 1]}-{day.year}"


@pytest.fixture
def imap(ca: trustme.CA) -> Iterator[IMAPServer]:
    with IMAPServer(ca) as server:
        yield server


@pytest.fixture
def client(imap: IMAPServer) -> Iterator[imaplib.IMAP4_SSL]:
    connection = imaplib.IMAP4_SSL(imap.host, imap.port, ssl_context=imap.client_context(),
                                   timeout=10)
    connection.login(imap.user, imap.password)
    yield connection
    with contextlib.suppress(imaplib.IMAP4.error, OSError):  # closed by the test
        connection.logout()


def uids(data: list[bytes | None]) -> list[int]:
    return [int(uid) for uid in (data[0] or b"").split()]


# -- connecting --------------------------------------------------------------------------


def test_a_client_trusting_the_test_ca_logs_in_over_implicit_tls(imap: IMAPServer) -> None:
    with imaplib.IMAP4_SSL(imap.host, imap.port, ssl_context=imap.client_context(),
                           timeout=10) as connection:
        logged_in, _ = connection.login(imap.user, imap.password)
        assert logged_in == "OK"
        _, data = connection.capability()
        assert b"SPECIAL-USE" in (data[0] or b"").split()


def test_a_wrong_password_is_refused(imap: IMAPServer) -> None:
    with imaplib.IMAP4_SSL(imap.host, imap.port, ssl_context=imap.client_context(),
                           timeout=10) as connection, pytest.raises(imaplib.IMAP4.error):
        connection.login(imap.user, "not the password")


def test_a_client_that_does_not_trust_the_test_ca_is_refused(imap: IMAPServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(imap.host, imap.port, ssl_context=ssl.create_default_context(),
                          timeout=10)


def test_in_starttls_mode_login_is_disabled_until_starttls(ca: trustme.CA) -> None:
    with IMAPServer(ca, security="starttls") as server, \
            imaplib.IMAP4(server.host, server.port, timeout=10) as connection:
        assert {"STARTTLS", "LOGINDISABLED"} <= set(connection.capabilities)
        with pytest.raises(imaplib.IMAP4.error):
            connection.login(server.user, server.password)
        connection.starttls(ssl_context=server.client_context())
        assert "LOGINDISABLED" not in connection.capabilities
        typ, _ = connection.login(server.user, server.password)
        assert typ == "OK"


def test_stop_ends_open_connections(ca: trustme.CA) -> None:
    server = IMAPServer(ca).start()
    connection = imaplib.IMAP4_SSL(server.host, server.port, ssl_context=server.client_context(),
                                   timeout=10)
    try:
        connection.login(server.user, server.password)
        server.stop()
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            connection.noop()
    finally:
        with contextlib.suppress(OSError):
            connection.shutdown()


# -- folders ----------------------------------------------------------------------------


def test_list_names_each_folder_with_its_special_use_attribute(
        client: imaplib.IMAP4_SSL) -> None:
    typ, data = client.list()
    assert typ == "OK"
    listed = {line.rsplit(b" ", 1)[1].decode(): line.split(b")")[0].lstrip(b"(").split()
              for line in data if isinstance(line, bytes)}
    assert set(listed) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert b"\\Sent" in listed["Sent"]
    assert b"\\Junk" in listed["Junk"]
    assert not {b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"} & set(
        listed["INBOX"])


def test_list_extended_special_use_selection_lists_only_special_use_folders(
        client: imaplib.IMAP4_SSL) -> None:
    # RFC 6154 section 3's example: LIST (SPECIAL-USE) "" "*"
    typ, data = client.list('(SPECIAL-USE) ""', '"*"')
    assert typ == "OK"
    names = {line.rsplit(b" ", 1)[1] for line in data if isinstance(line, bytes)}
    assert names == {b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"}
    typ, data = client.list('""', '"Sent" RETURN (SPECIAL-USE)')
    assert typ == "OK"
    assert data == [b'(\\HasNoChildren \\Sent) "/" Sent']


def test_folders_other_than_the_defaults_can_be_asked_for(ca: trustme.CA) -> None:
    folders = {"Sent Items": "\\Sent", "Campaigns/2026": None}
    with IMAPServer(ca, folders=folders) as server, imaplib.IMAP4_SSL(
            server.host, server.port, ssl_context=server.client_context(),
            timeout=10) as connection:
        connection.login(server.user, server.password)
        typ, data = connection.list()
        assert typ == "OK"
        assert b'(\\HasNoChildren \\Sent) "/" "Sent Items"' in data
        assert b'(\\HasNoChildren) "/" Campaigns/2026' in data
        assert server.folders() == {"INBOX": None, **folders}


# -- reading ------------------------------------------------------------------------------


def test_examine_is_read_only_and_fetching_a_body_there_sets_no_flag(
        imap: IMAPServer, client: imaplib.IMAP4_SSL) -> None:
    uid = imap.add("INBOX", LETTER)
    before = imap.messages("INBOX")
    typ, data = client.select("INBOX", readonly=True)  # EXAMINE
    assert (typ, data) == ("OK", [b"1"])
    assert "READ-ONLY" in client.untagged_responses  # the [READ-ONLY] response code
    typ, data = client.uid("FETCH", str(uid), "(BODY[])")  # not .PEEK: sets \Seen if writable
    assert typ == "OK"
    assert imap.messages("INBOX") == before == [(uid, set(), LETTER)]


def test_search_since_finds_messages_by_the_date_they_were_given(
        imap: IMAPServer, client: imaplib.IMAP4_SSL) -> None:
    day = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    old = imap.add("INBOX", reply(1, day=day - timedelta(days=3)), date=day - timedelta(days=3))
    new = [imap.add("INBOX", reply(n, day=day + timedelta(hours=n)),
                    date=day + timedelta(hours=n)) for n in (2, 3)]
    client.select("INBOX", readonly=True)
    typ, data = client.uid("SEARCH", "SINCE", imap_date(day))
    assert typ == "OK"
    assert uids(data) == new
    assert old not in uids(data)
    assert imap.stored("INBOX")[0].date == day - timedelta(days=3)


def test_uid_fetch_body_peek_header_gives_the_headers_alone(
        imap: IMAPServer, client: imaplib.IMAP4_SSL) -> None:
    uid = imap.add("INBOX", LETTER, flags=["\\Flagged"])
    client.select("INBOX", readonly=True)
    typ, data = client.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[HEADER])")
    assert typ == "OK"
    head, literal = data[0] if isinstance(data[0], tuple) else (b"", b"")
    rest = b"".join(part for part in data[1:] if isinstance(part, bytes))
    assert b"FLAGS (\\Flagged)" in head
    assert f"UID {uid})".encode() in head + rest
    assert literal == LETTER.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"


# -- writing --------------------------------------------------------------------------------


def test_append_to_sent_with_seen_is_stored_as_sent_with_its_uid(
        imap: IMAPServer, client: imaplib.IMAP4_SSL) -> None:
    when = datetime(2026, 12, 1, 23, 41, 5, tzinfo=UTC)
    typ, data = client.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(when), LETTER)
    assert typ == "OK"
    match = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
    assert match is not None
    assert int(match.group(1)) == imap.uidvalidity("Sent")
    stored = imap.stored("Sent")
    assert [(m.uid, m.flags, m.data, m.date) for m in stored] == [
        (int(match.group(2)), frozenset({"\\Seen"}), LETTER, when)]


def test_uidvalidity_stays_the_same_across_connections_and_uids_only_rise(
        imap: IMAPServer) -> None:
    seen = []
    for number in range(3):
        with imaplib.IMAP4_SSL(imap.host, imap.port, ssl_context=imap.client_context(),
                               timeout=10) as connection:
            connection.login(imap.user, imap.password)
            typ, data = connection.status("INBOX", "(UIDVALIDITY UIDNEXT)")
            assert typ == "OK"
            match = re.search(rb"UIDVALIDITY (\d+) UIDNEXT (\d+)", data[0] or b"")
            assert match is not None
            seen.append((int(match.group(1)), int(match.group(2))))
            imap.add("INBOX", reply(number, day=datetime.now(UTC)))
    assert {validity for validity, _ in seen} == {imap.uidvalidity("INBOX")}
    assert [following for _, following in seen] == [101, 102, 103]


def test_messages_show_what_a_writing_client_changed(
        imap: IMAPServer, client: imaplib.IMAP4_SSL) -> None:
    # The check a read-only client is held to must see a change when there is one.
    first = imap.add("INBOX", LETTER)
    second = imap.add("INBOX", reply(1, day=datetime.now(UTC)), flags=["\\Seen"])
    client.select("INBOX")
    client.uid("STORE", str(first), "+FLAGS", "(\\Answered)")
    client.uid("MOVE", str(second), "Trash")
    assert imap.messages("INBOX") == [(first, {"\\Answered"}, LETTER)]
    assert [flags for _, flags, _ in imap.messages("Trash")] == [{"\\Seen"}]


def test_the_mail_fixtures_served_read_the_same_as_the_files(
        imap: IMAPServer, client: imaplib.IMAP4_SSL) -> None:
    files = sorted(MAIL.glob("*.eml"))
    added = imap.add_many("INBOX", [(path.read_bytes(), None, ()) for path in files])
    client.select("INBOX", readonly=True)
    for path, uid in zip(files, added, strict=True):
        typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK"
        served = data[0][1] if isinstance(data[0], tuple) else b""
        assert served == path.read_bytes()
        assert classify(served) == classify(path.read_bytes())


def test_ten_thousand_messages_are_added_and_searched_quickly(
        imap: IMAPServer, client: imaplib.IMAP4_SSL, capsys: pytest.CaptureFixture[str]) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    days = [start + timedelta(hours=n) for n in range(10_000)]  # to 16 February 2027
    began = time.perf_counter()
    added = imap.add_many("INBOX", [(reply(n, day=day), day, ()) for n, day in enumerate(days)])
    adding = time.perf_counter() - began
    client.select("INBOX", readonly=True)
    since = datetime(2026, 12, 1, tzinfo=UTC)
    began = time.perf_counter()
    typ, data = client.uid("SEARCH", "SINCE", imap_date(since))
    searching = time.perf_counter() - began
    assert typ == "OK"
    assert uids(data) == [uid for uid, day in zip(added, days, strict=True) if day >= since]
    with capsys.disabled():
        print(f"\n10,000 messages: added in {adding:.2f} s, "
              f"UID SEARCH SINCE in {searching:.3f} s ({len(uids(data))} found)")
    # Bounds for a busy 2-core machine, ten times what an idle one takes.
    assert adding < 30
    assert searching < 3
