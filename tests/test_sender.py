"""The sender against real aiosmtpd servers: every letter ends in exactly one outcome."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import FAST, LoggedSend, Server, make_letters

from mailer.errors import ConfigError, TooManyFailures
from mailer.message import Letter
from mailer.outcome import Status
from mailer.recorder import Recorder
from mailer.sender import NoLog, Policy, Sender
from mailer.sendlog import SendLog
from mailer.settings import Rate
from mailer.sink import Faults, Received

Send = Callable[..., LoggedSend]


def test_every_letter_arrives_exactly_once(smtp_server: Server, send_logged: Send) -> None:
    letters = make_letters(40)
    result = send_logged(smtp_server.settings(concurrency=4), letters)
    assert result.summary.counts == {Status.SENT: 40}
    assert smtp_server.handler.by_recipient() == {letter.email: 1 for letter in letters}


def test_connections_are_reused_for_many_letters(smtp_server: Server, send_logged: Send) -> None:
    send_logged(smtp_server.settings(concurrency=3), make_letters(30))
    assert smtp_server.handler.commands["EHLO"] <= 3
    assert smtp_server.handler.commands["DATA"] == 30


def test_the_server_gets_the_exact_bytes(smtp_server: Server, send_logged: Send) -> None:
    letter = make_letters(1)[0]
    send_logged(smtp_server.settings(), [letter])
    assert smtp_server.handler.messages[0].data.replace(b"\r\n", b"\n") == \
        letter.data.replace(b"\r\n", b"\n")


@pytest.mark.faults(Faults(rcpt={"person1@example.org": "451 4.3.0 try again later"},
                           rcpt_times={"person1@example.org": 2}))
def test_a_451_is_retried_until_delivered_once(smtp_server: Server, send_logged: Send) -> None:
    letters = make_letters(3)
    result = send_logged(smtp_server.settings(), letters)
    assert result.summary.counts == {Status.SENT: 3}
    assert smtp_server.handler.by_recipient()["person1@example.org"] == 1
    assert result.entry(letters[1]).attempts == 3


@pytest.mark.faults(Faults(rcpt={"person0@example.org": "550 5.1.1 no such user"}))
def test_a_550_fails_for_good_with_the_servers_reply(smtp_server: Server,
                                                     send_logged: Send) -> None:
    letters = make_letters(2)
    result = send_logged(smtp_server.settings(), letters)
    entry = result.entry(letters[0])
    assert (entry.status, entry.reply_code, entry.reply_text) == \
        (Status.FAILED, 550, "5.1.1 no such user")
    assert entry.attempts == 1
    assert result.status(letters[1]) == Status.SENT


@pytest.mark.faults(Faults(rcpt={"person0@example.org": "452 4.2.2 mailbox full"}))
def test_a_letter_out_of_attempts_is_deferred(smtp_server: Server, send_logged: Send) -> None:
    letter = make_letters(1)[0]
    result = send_logged(smtp_server.settings(), [letter], Policy(max_attempts=3, backoff=0.01))
    entry = result.entry(letter)
    assert (entry.status, entry.attempts, entry.reply_code) == (Status.DEFERRED, 3, 452)
    assert smtp_server.handler.messages == []


@pytest.mark.faults(Faults(drop_at_mail=2))
def test_a_dropped_connection_before_data_is_retried(smtp_server: Server,
                                                     send_logged: Send) -> None:
    letters = make_letters(5)
    result = send_logged(smtp_server.settings(concurrency=1), letters)
    assert result.summary.counts == {Status.SENT: 5}
    assert smtp_server.handler.by_recipient() == {letter.email: 1 for letter in letters}


@pytest.mark.faults(Faults(slow_mail=1.5, slow_mail_times=1))
def test_a_slow_reply_before_data_times_out_and_is_retried(smtp_server: Server,
                                                           send_logged: Send) -> None:
    letters = make_letters(2)
    result = send_logged(smtp_server.settings(concurrency=1, timeout=0.5), letters)
    assert result.summary.counts == {Status.SENT: 2}
    assert result.entry(letters[0]).attempts == 2
    assert smtp_server.handler.by_recipient() == {letter.email: 1 for letter in letters}


@pytest.mark.faults(Faults(slow_data=1.5, slow_data_times=1))
def test_a_timeout_after_data_is_unknown_and_not_resent(smtp_server: Server,
                                                        send_logged: Send) -> None:
    letters = make_letters(2)
    result = send_logged(smtp_server.settings(concurrency=1, timeout=0.5), letters)
    assert result.status(letters[0]) == Status.UNKNOWN
    assert result.status(letters[1]) == Status.SENT
    assert smtp_server.handler.by_recipient() == {letter.email: 1 for letter in letters}


@pytest.mark.faults(Faults(drop_after_data=1))
def test_a_connection_dropped_after_data_is_unknown(smtp_server: Server,
                                                    send_logged: Send) -> None:
    letters = make_letters(3)
    result = send_logged(smtp_server.settings(concurrency=1), letters)
    assert result.status(letters[0]) == Status.UNKNOWN
    assert result.summary.counts == {Status.UNKNOWN: 1, Status.SENT: 2}
    assert smtp_server.handler.by_recipient() == {letter.email: 1 for letter in letters}


@pytest.mark.faults(Faults(rcpt={f"person{i}@example.org": "550 5.7.1 rejected"
                                 for i in range(10)}))
def test_too_many_failures_in_a_row_pause_the_run(smtp_server: Server,
                                                  send_logged: Send) -> None:
    with pytest.raises(TooManyFailures, match="5 letters in a row were not delivered"):
        send_logged(smtp_server.settings(concurrency=1), make_letters(20),
                    Policy(failure_threshold=5, backoff=0.01))
    assert smtp_server.handler.messages == []


def test_a_letter_is_reserved_on_disk_before_its_data(smtp_server: Server, send_logged: Send,
                                                      tmp_path: Path) -> None:
    seen: list[Status | None] = []

    def read_log(message: Received) -> None:
        log = SendLog.open(tmp_path / "log.sqlite3", create=False)
        seen.append(log.status("test", message.rcpt_tos[0]))
        log.close()

    smtp_server.handler.on_message = read_log
    send_logged(smtp_server.settings(concurrency=1), make_letters(5))
    assert seen == [Status.SENDING] * 5


@pytest.mark.parametrize("rate", [
    pytest.param(Rate(20), id="at 20 letters a second"),
    pytest.param(Rate(0), id="unlimited, to a server taking 50 ms a letter",
                 marks=pytest.mark.faults(Faults(slow_mail=0.05, slow_mail_times=1000)))])
def test_a_send_reserves_only_a_tenth_of_a_second_of_letters_ahead(
        rate: Rate, smtp_server: Server, send_logged: Send, tmp_path: Path) -> None:
    # Every reserved letter is `unknown` after a power cut: at 20 letters a second, a tenth
    # of a second is two letters, and the queue holds at least two per connection.
    reserved: list[int] = []

    def count_reserved(message: Received) -> None:
        log = SendLog.open(tmp_path / "log.sqlite3", create=False)
        reserved.append(log.summary("test").counts.get(Status.SENDING, 0))
        log.close()

    smtp_server.handler.on_message = count_reserved
    send_logged(smtp_server.settings(concurrency=1, rate=rate), make_letters(12))
    assert len(reserved) == 12
    assert max(reserved) <= 4


class _CountingReservations(NoLog):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def reserve(self, letters: Sequence[Letter]) -> asyncio.Future[None]:
        self.sizes.append(len(letters))
        return super().reserve(letters)


def test_letters_are_reserved_a_batch_at_a_time_at_16_connections(smtp_server: Server) -> None:
    # Each reservation is a commit (an fsync). Topping up the queue whenever a worker might
    # be short of a letter once reserved letters one at a time: 3,000 commits for 10,000.
    recorder = _CountingReservations()
    settings = smtp_server.settings(concurrency=16)
    asyncio.run(Sender(settings, recorder, policy=FAST).run(make_letters(400)))
    assert sum(recorder.sizes) == 400
    # Half of what may be queued, two letters per connection, but for the list's end.
    assert [size for size in recorder.sizes[:-1] if size < 16] == [], recorder.sizes


def test_a_send_keeps_only_the_reservations_of_letters_without_an_outcome(
        smtp_server: Server, send_logged: Send, tmp_path: Path) -> None:
    # The log's readers look at every reservation left: they must not pile up over a run.
    rows: list[int] = []

    def count_reservations(message: Received) -> None:
        db = sqlite3.connect(tmp_path / "log.sqlite3")
        rows.append(db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0])
        db.close()

    smtp_server.handler.on_message = count_reservations
    send_logged(smtp_server.settings(concurrency=1), make_letters(300))
    assert len(rows) == 300
    assert max(rows[100:]) <= 6  # what is queued, reserved in halves, and what is in flight


def test_the_in_flight_journal_names_a_letter_before_its_data(
        smtp_server: Server, send_logged: Send, tmp_path: Path) -> None:
    journal = tmp_path / "log.sqlite3.inflight"
    seen: list[bool] = []

    def read_journal(message: Received) -> None:
        seen.append(f"\n{message.rcpt_tos[0]} " in journal.read_text(encoding="ascii"))

    smtp_server.handler.on_message = read_journal
    send_logged(smtp_server.settings(concurrency=1), make_letters(5))
    assert seen == [True] * 5
    assert not journal.exists()  # the run ended: its journal has nothing left to say


def test_a_stop_finishes_letters_in_flight_and_leaves_the_rest_pending(
        smtp_server: Server, tmp_path: Path) -> None:
    letters = make_letters(50)
    log = SendLog.open(tmp_path / "log.sqlite3")
    run_id = log.begin_run("test", {}, "hash")
    log.register("test", letters, "hash")

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def stop_at_five(message: Received) -> None:
            if len(smtp_server.handler.messages) == 5:
                loop.call_soon_threadsafe(stop.set)

        smtp_server.handler.on_message = stop_at_five
        sender = Sender(smtp_server.settings(concurrency=1), Recorder(log, "test", run_id),
                        policy=FAST)
        return (await sender.run(letters, stop)).interrupted

    assert asyncio.run(main())
    received = len(smtp_server.handler.messages)
    statuses = [log.status("test", letter.email) for letter in letters]
    log.close()
    assert 5 <= received <= 6
    assert statuses[:received] == [Status.SENT] * received
    assert set(statuses[received:]) == {Status.PENDING}


def test_a_password_is_never_sent_in_clear_to_another_machine(smtp_server: Server) -> None:
    settings = smtp_server.settings(smtp_host="mail.example.org", smtp_security="none",
                                    smtp_username="organiser", smtp_password="secret")
    with pytest.raises(ConfigError, match="refusing to send the password"):
        Sender(settings, NoLog())
