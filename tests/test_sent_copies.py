"""Copies of the letters in the sender's Sent folder, against a real IMAP server: the exact
bytes sent, marked read, and never a change to a letter's fate when a copy fails."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CampaignFiles, Result, Server, imap_env
from imapd import IMAPServer
from trustme import CA

from mailer.sentcopies import saves_sent
from mailer.settings import Settings
from mailer.sink import Received

FIVE = "email,title,name,country\n" + "".join(
    f"p{n}@example.org,Dr,Person {n},UK\n" for n in range(5))


@pytest.fixture
def env(smtp_server: Server, ca_file: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Callable[[IMAPServer], None]:
    def point_at(mailbox: IMAPServer) -> None:
        for key, value in {**smtp_server.env(), **imap_env(mailbox, ca_file)}.items():
            monkeypatch.setenv(key, value)

    return point_at


def _statuses(root: Path) -> set[str]:
    with sqlite3.connect(root / "mailer-log.sqlite3") as db:
        return {status for (status,) in db.execute("SELECT status FROM letters")}


def test_each_letter_sent_is_saved_in_sent_as_sent_and_marked_read(
        imap_server: IMAPServer, env: Callable[[IMAPServer], None], smtp_server: Server,
        run: Callable[..., Result]) -> None:
    env(imap_server)
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert (f"A copy of each letter goes into the Sent folder at 127.0.0.1:{imap_server.port}."
            in result.out)
    assert "Sent folder 'Sent': 2 copies saved." in result.out
    saved = imap_server.messages("Sent")
    assert sorted(data for _, _, data in saved) == sorted(
        m.data for m in smtp_server.handler.messages)
    assert all(flags == {"\\Seen"} for _, flags, _ in saved)
    assert imap_server.messages("INBOX") == []


def test_a_copy_that_fails_is_tried_again_at_the_end_of_the_run(
        imap_server: IMAPServer, env: Callable[[IMAPServer], None], smtp_server: Server,
        run: Callable[..., Result], files: CampaignFiles) -> None:
    files.write_csv(FIVE)
    env(imap_server)

    def restart_mailbox(message: Received) -> None:
        if len(smtp_server.handler.messages) == 2:
            imap_server.cut_connections()

    smtp_server.handler.on_message = restart_mailbox
    result = run("send", "--yes", "--concurrency", "1")
    assert result.code == 0, result.err
    assert "Sent folder 'Sent': 5 copies saved." in result.out
    assert "could not be saved" not in result.out
    sent = [m.data for m in smtp_server.handler.messages]
    saved = [data for _, _, data in imap_server.messages("Sent")]
    assert sorted(saved) == sorted(sent)
    assert saved != sent  # the copy cut off went in last, at the end of the run


def test_copies_that_cannot_be_saved_are_counted_and_the_letters_stay_sent(
        imap_server: IMAPServer, env: Callable[[IMAPServer], None], smtp_server: Server,
        run: Callable[..., Result], files: CampaignFiles) -> None:
    files.write_csv(FIVE)
    env(imap_server)
    smtp_server.handler.on_message = lambda message: imap_server.stop()
    result = run("send", "--yes", "--concurrency", "1")
    assert result.code == 0, result.err
    assert "Done: 5 sent" in result.out
    lines = [line for line in result.out.splitlines() if "could not be saved" in line]
    assert len(lines) == 1
    assert lines[0].endswith("; the letters went all the same, and are recorded sent.")
    assert lines[0].startswith("5 copies could not be saved (")
    assert _statuses(files.root) == {"sent"}


def test_a_mailbox_without_a_sent_folder_stops_the_run_before_any_letter(
        ca: CA, env: Callable[[IMAPServer], None], smtp_server: Server,
        run: Callable[..., Result]) -> None:
    with IMAPServer(ca, folders={"INBOX": None}) as bare:
        env(bare)
        result = run("send", "--yes")
    assert result.code == 2
    assert result.err == (f"error: {bare.user} at 127.0.0.1:{bare.port} has no Sent folder "
                          "(none marked \\Sent, none named Sent): set MAILER_SAVE_SENT=no to "
                          "send without copies\n")
    assert smtp_server.handler.messages == []


def test_a_sent_folder_without_the_special_use_mark_is_found_by_its_name(
        ca: CA, env: Callable[[IMAPServer], None], run: Callable[..., Result]) -> None:
    with IMAPServer(ca, folders={"Sent Items": None, "Drafts": None}) as server:
        env(server)
        assert "Sent folder 'Sent Items': 2 copies saved." in run("send", "--yes").out
        assert len(server.messages("Sent Items")) == 2


@pytest.mark.parametrize(("smtp_host", "imap_host", "save_sent", "saves"), [
    ("smtp.gmail.com", "imap.gmail.com", "auto", False),  # Gmail files its own copy
    ("smtp.office365.com", "outlook.office365.com", "auto", False),
    ("smtp.gmail.com", "imap.gmail.com", "yes", True),
    ("mail.example.org", "mail.example.org", "auto", True),
    ("mail.example.org", None, "auto", False),  # no mailbox configured
    ("mail.example.org", "mail.example.org", "no", False),
])
def test_auto_saves_copies_only_where_the_provider_does_not(
        smtp_host: str, imap_host: str | None, save_sent: str, saves: bool) -> None:
    settings = Settings(smtp_host=smtp_host, imap_host=imap_host, save_sent=save_sent)
    assert saves_sent(settings) is saves
