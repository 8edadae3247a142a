"""`mailer send` live, through the CLI, against a real server: what users see and get."""

from __future__ import annotations

import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
from conftest import CampaignFiles, Result, Server
from servers import Faults

from mailer.cli import _report
from mailer.message import message_id
from mailer.outcome import Status
from mailer.sender import SendSummary

Run = Callable[..., Result]


@pytest.fixture
def server_env(smtp_server: Server, files: CampaignFiles,
               monkeypatch: pytest.MonkeyPatch) -> Server:
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    return smtp_server


def test_a_live_send_delivers_and_summarises(server_env: Server, run: Run) -> None:
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "Campaign 'letter': 2 letters to send."
    assert re.search(r"^Done: 2 sent in \d+\.\ds \(\d+\.\d letters/s\)\.$", result.out, re.M)
    assert server_env.handler.by_recipient() == {"ada@example.org": 1, "grace@example.net": 1}


def test_without_a_terminal_or_yes_nothing_is_sent(server_env: Server, run: Run) -> None:
    result = run("send")
    assert result.code == 2
    assert result.err == ("error: not sending: there is no terminal to confirm on; add --yes "
                          "to send without asking\n")
    assert server_env.handler.messages == []


def test_a_live_send_needs_a_real_sender(server_env: Server, run: Run,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILER_FROM")
    result = run("send", "--yes")
    assert result.code == 2
    assert result.err == ("error: no sender is configured: set MAILER_FROM (your address, or "
                          "'Your Name <you@example.org>') in .env before a live send\n")
    assert server_env.handler.messages == []


def test_a_second_run_sends_nothing_again(server_env: Server, run: Run) -> None:
    run("send", "--yes")
    result = run("send", "--yes")
    assert result.code == 0
    assert result.out == ("Campaign 'letter': 0 letters to send; skipping 2 already sent.\n"
                          "Nothing to send.\n")
    assert len(server_env.handler.messages) == 2


def test_limit_sends_the_first_letters_and_the_rest_later(server_env: Server, run: Run) -> None:
    run("send", "--yes", "--limit", "1")
    assert server_env.handler.by_recipient() == {"ada@example.org": 1}
    run("send", "--yes")
    assert server_env.handler.by_recipient() == {"ada@example.org": 1, "grace@example.net": 1}


def test_a_test_send_goes_only_to_the_given_address(server_env: Server, run: Run,
                                                    files: CampaignFiles) -> None:
    result = run("send", "--yes", "--to", "me@example.com")
    assert result.code == 0, result.err
    assert [m.rcpt_tos for m in server_env.handler.messages] == [("me@example.com",)]
    assert "sent     me@example.com  250 2.0.0 OK: queued\n" in result.out
    assert "ada@example.org" not in result.out
    data = server_env.handler.messages[0].data
    assert b"Dear Dr Ada Lovelace" in data
    # Its own Message-ID: a receiver that drops repeats must not drop the real letter later.
    real = message_id("letter", "ada@example.org", "example.org")
    assert real.encode() not in data
    assert b".test@example.org>" in data
    assert not (files.root / "mailer-log.sqlite3").exists()


@pytest.mark.faults(Faults(rcpt={"grace@example.net": "550 5.1.1 no such user"}))
def test_a_refused_letter_makes_the_exit_code_1(server_env: Server, run: Run) -> None:
    result = run("send", "--yes")
    assert result.code == 1
    assert "failed   grace@example.net  550 5.1.1 no such user" in result.out


@pytest.mark.faults(Faults(rcpt={"ada@example.org": "550 5.1.1 no such user",
                                 "grace@example.net": "550 5.1.1 no such user"}))
def test_a_run_that_sent_nothing_gives_no_pace(server_env: Server, run: Run) -> None:
    result = run("send", "--yes")
    assert re.search(r"^Done: 2 failed in \d+\.\ds\.$", result.out, re.M), result.out


@pytest.mark.parametrize(("sent", "seconds", "line"), [
    (40, 4.0, "Done: 40 sent in 4.0s (10.0 letters/s)."),
    (1, 63.2, "Done: 1 sent in 63.2s (0.9 letters/min)."),  # it waited for a window
])
def test_the_pace_of_a_run_reads_as_letters_a_second_or_a_minute(
        sent: int, seconds: float, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _report(SendSummary(Counter({Status.SENT: sent}), seconds)) == 0
    assert capsys.readouterr().out == line + "\n"


def test_a_bad_setting_names_the_key(server_env: Server, run: Run,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_RATE", "fast")
    result = run("send", "--yes")
    assert result.code == 2
    assert result.err.startswith("error: setting MAILER_RATE: 'fast' is not a rate; write it "
                                 "like 30/min, 2/s, 1000/h, or 0 for no limit")
    assert "Traceback" not in result.err


def test_no_server_is_a_clear_error(files: CampaignFiles, run: Run,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_FROM", "organiser@example.org")
    monkeypatch.setenv("MAILER_SENDER_NAME", "Olive Organiser")
    monkeypatch.setenv("MAILER_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("MAILER_SMTP_PORT", "9")
    result = run("send", "--yes")
    assert result.code == 1
    assert result.err.startswith("error: cannot connect to 127.0.0.1:9: ")
    assert "is the server running? check MAILER_SMTP_HOST and MAILER_SMTP_PORT" in result.err


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("MAILER_SMTP_CA_FILE", "missing-ca.pem", "error: setting MAILER_SMTP_CA_FILE: cannot load "
                                              "missing-ca.pem: "),
    ("MAILER_SMTP_HOST", "mail.example.org", "error: refusing to send the password for "
                                             "organiser to mail.example.org without TLS"),
])
def test_a_refusal_that_depends_on_the_settings_comes_before_the_question(
        setting: str, value: str, message: str, server_env: Server, run: Run,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SMTP_USERNAME", "organiser")
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", "secret")
    monkeypatch.setenv("MAILER_SMTP_SECURITY", "none")
    monkeypatch.setenv(setting, value)
    result = run("send")  # no --yes and no terminal: the question would refuse too
    assert result.code == 2
    assert result.err.startswith(message), result.err
    assert result.out == ""


def test_a_run_waiting_for_its_answer_keeps_its_hold_on_the_log(
        server_env: Server, files: CampaignFiles) -> None:
    # A real terminal (a pty): while the question waits, the run's lease is renewed, so a
    # co-worker or a second run does not take a thinking user's run for dead after a minute.
    terminal, child_end = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "mailer", "send"], cwd=files.root,
                             stdin=child_end, stdout=child_end, stderr=child_end)
    os.close(child_end)
    try:
        shown = b""
        while b"letters? [y/N]" not in shown:
            assert select.select([terminal], [], [], 20)[0], shown
            shown += os.read(terminal, 4096)

        def heartbeat() -> str:
            with sqlite3.connect(files.root / "mailer-log.sqlite3") as db:
                return str(db.execute("SELECT heartbeat FROM runs").fetchone()[0])

        asked = heartbeat()
        time.sleep(6)
        assert heartbeat() > asked
        os.write(terminal, b"n\n")
        assert child.wait(timeout=20) == 130  # "Aborted.", as with Ctrl-C
    finally:
        child.kill()
        os.close(terminal)
    assert server_env.handler.messages == []
