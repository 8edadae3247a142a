"""Every reply, every byte: each letter's fate against servers that refuse, throttle, or
answer what is not a reply, and the transaction state a refusal leaves behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import pytest
from conftest import FAST, LoggedSend, Server, make_letters, scripted_settings
from servers import Faults, RecordingHandler, ScriptedServer, start_server

from mailer.message import Letter
from mailer.outcome import Status

Send = Callable[..., LoggedSend]


def _with_cc(letter: Letter, cc: str = "office@campaign.example") -> Letter:
    return replace(letter, envelope=(*letter.envelope, cc))


@pytest.mark.parametrize("command", ["DATA", "DOT"])
def test_a_refused_data_is_reset_so_its_retry_and_the_next_letter_go_through(
        command: str, scripted: ScriptedServer, send_logged: Send) -> None:
    # Postfix keeps the transaction open after a 4xx to DATA or its end: without RSET the
    # next MAIL on that connection gets "503 nested MAIL command", and the letter fails.
    scripted.script[command] = [b"450 4.3.2 Service currently unavailable\r\n"]
    letters = make_letters(2)
    result = send_logged(scripted_settings(scripted, concurrency=1), letters)
    assert result.summary.counts == {Status.SENT: 2}
    assert result.entry(letters[0]).attempts == 2
    assert "RSET" in scripted.commands
    assert scripted.by_recipient() == {letter.email: 1 for letter in letters}


@pytest.mark.faults(Faults(rcpt={"person0@example.org": "550 5.1.1 no such user"}))
def test_a_letter_whose_own_recipient_is_refused_fails_though_its_cc_was_accepted(
        smtp_server: Server, send_logged: Send) -> None:
    letter = _with_cc(make_letters(1)[0])
    result = send_logged(smtp_server.settings(), [letter])
    entry = result.entry(letter)
    assert (entry.status, entry.reply_code, entry.reply_text) == \
        (Status.FAILED, 550, "5.1.1 no such user")
    assert smtp_server.handler.messages == []  # not sent to the Cc alone either


@pytest.mark.faults(Faults(rcpt={"person0@example.org": "451 4.3.0 try later"},
                           rcpt_times={"person0@example.org": 1}))
def test_a_temporary_refusal_of_the_own_recipient_defers_and_retries(
        smtp_server: Server, send_logged: Send) -> None:
    letter = _with_cc(make_letters(1)[0])
    result = send_logged(smtp_server.settings(), [letter])
    assert result.entry(letter).status == Status.SENT
    assert result.entry(letter).attempts == 2
    assert smtp_server.handler.by_recipient() == {"person0@example.org": 1,
                                                  "office@campaign.example": 1}


@pytest.mark.faults(Faults(rcpt={"office@campaign.example": "550 5.7.1 relay denied"}))
def test_a_refused_cc_is_kept_in_the_reply_and_not_retried(smtp_server: Server,
                                                          send_logged: Send) -> None:
    letter = _with_cc(make_letters(1)[0])
    result = send_logged(smtp_server.settings(), [letter])
    entry = result.entry(letter)
    assert (entry.status, entry.attempts) == (Status.SENT, 1)
    assert entry.reply_text == ("2.0.0 OK: queued; office@campaign.example refused: "
                                "550 5.7.1 relay denied")
    assert result.summary.copies_refused == 1
    assert smtp_server.handler.commands["RCPT"] == 2


def test_a_malformed_reply_after_the_letter_is_unknown_and_the_connection_dropped(
        scripted: ScriptedServer, send_logged: Send) -> None:
    scripted.script["DOT"] = [b"hello there\r\n"]
    letters = make_letters(3)
    result = send_logged(scripted_settings(scripted, concurrency=1), letters)
    assert [result.status(letter) for letter in letters] == \
        [Status.UNKNOWN, Status.SENT, Status.SENT]
    assert "after the letter was sent: the server may have it" in \
        str(result.entry(letters[0]).reply_text)
    assert scripted.commands.count("EHLO") == 2  # a new connection for the next letters
    assert scripted.by_recipient() == {letter.email: 1 for letter in letters}


def test_garbage_instead_of_354_is_a_failed_try_on_a_dropped_connection(
        scripted: ScriptedServer, send_logged: Send) -> None:
    scripted.script["DATA"] = [b"\x00\x01 garbage\r\n"]
    letters = make_letters(2)
    result = send_logged(scripted_settings(scripted, concurrency=1), letters)
    assert result.summary.counts == {Status.SENT: 2}
    assert result.entry(letters[0]).attempts == 2
    assert scripted.commands.count("EHLO") == 2
    assert scripted.by_recipient() == {letter.email: 1 for letter in letters}


def test_a_reply_that_is_not_utf8_is_kept_readable_and_stops_nothing(
        scripted: ScriptedServer, send_logged: Send) -> None:
    scripted.script["DOT"] = [b"250 2.0.0 Ok: Gr\xfc\xdfe aus Berlin\r\n"]
    letters = make_letters(10)
    result = send_logged(scripted_settings(scripted, concurrency=2), letters)
    assert result.summary.counts == {Status.SENT: 10}
    replies = {result.entry(letter).reply_text for letter in letters}
    assert "2.0.0 Ok: Gr\ufffd\ufffde aus Berlin" in replies


def test_a_rate_reply_pauses_every_connection_and_the_run_keeps_fewer(
        scripted: ScriptedServer, send_logged: Send) -> None:
    scripted.script["MAIL"] = [b"450 4.7.1 Error: too much mail from 127.0.0.1\r\n"]
    letters = make_letters(40)
    started = time.monotonic()
    result = send_logged(scripted_settings(scripted, concurrency=4), letters)
    assert result.summary.counts == {Status.SENT: 40}
    assert result.summary.connections == 3
    assert result.summary.throttled == "4.7.1 Error: too much mail from 127.0.0.1"
    assert time.monotonic() - started >= 0.9  # everyone waited the first pause
    assert scripted.by_recipient() == {letter.email: 1 for letter in letters}


def test_a_connection_refused_as_one_too_many_hands_its_letter_to_the_others(
        send_logged: Send) -> None:
    server = ScriptedServer(max_connections=2).start()
    try:
        letters = make_letters(30)
        result = send_logged(scripted_settings(server, concurrency=4), letters)
    finally:
        server.stop()
    assert result.summary.counts == {Status.SENT: 30}
    assert result.summary.connections <= 2
    assert result.summary.throttled.startswith("127.0.0.1:")
    assert "421 4.7.0 scripted: too many connections" in result.summary.throttled
    assert server.by_recipient() == {letter.email: 1 for letter in letters}


@pytest.mark.faults(Faults(rcpt={"person1@example.org": "450 4.7.1 <person1@example.org>: "
                                 "Recipient address rejected: Message deferred, try again later"}))
def test_a_recipients_greylisting_defers_that_letter_and_slows_nobody(
        smtp_server: Server, send_logged: Send) -> None:
    letters = make_letters(10)
    result = send_logged(smtp_server.settings(concurrency=2), letters)
    assert result.summary.counts == {Status.SENT: 9, Status.DEFERRED: 1}
    assert result.summary.throttled == ""
    assert result.summary.connections == 2
    assert result.entry(letters[1]).attempts == FAST.max_attempts


@pytest.mark.faults(Faults(rcpt={"person0@example.org": "451 4.3.0 try again later"},
                           rcpt_times={"person0@example.org": 1}))
def test_first_attempt_is_the_first_try_not_the_first_result(smtp_server: Server,
                                                             send_logged: Send) -> None:
    letter = make_letters(1)[0]
    entry = send_logged(smtp_server.settings(), [letter]).entry(letter)
    assert entry.first_attempt is not None
    assert entry.last_attempt is not None
    first = datetime.fromisoformat(entry.first_attempt)
    last = datetime.fromisoformat(entry.last_attempt)
    assert (last - first).total_seconds() >= 0.005  # the backoff between the two tries


def test_a_letter_larger_than_the_servers_size_fails_without_being_sent(
        send_logged: Send) -> None:
    handler = RecordingHandler()
    controller = start_server(handler, data_size_limit=1000)
    try:
        big = make_letters(1)[0]
        big = replace(big, data=big.data + b"x" * 2000 + b"\r\n")
        result = send_logged(Server(handler, controller.port).settings(), [big])
    finally:
        controller.stop()
    entry = result.entry(big)
    assert (entry.status, entry.attempts) == (Status.FAILED, 1)
    assert entry.reply_text == (f"the letter is {len(big.data) / 1e3:.1f} kB and "
                                f"127.0.0.1:{controller.port} takes at most 1.0 kB (its SIZE); "
                                "make the attachments smaller")
    assert handler.commands["DATA"] == 0
