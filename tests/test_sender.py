"""The sender against real aiosmtpd servers: every letter ends in exactly one outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import (
    FAST,
    LoggedSend,
    Server,
    SlowDisk,
    listed,
    log_with,
    make_letters,
    send_all,
    status_of,
)
from servers import Faults

from mailer.errors import ConfigError, TooManyFailures
from mailer.message import Letter
from mailer.outcome import Outcome, Status
from mailer.recorder import Recorder
from mailer.sender import Policy, Sender
from mailer.sendlog import Run
from mailer.settings import Settings
from mailer.sink import Received
from mailer.sqlitelog import SQLiteLog

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


def test_a_letter_is_sending_on_disk_before_its_data(smtp_server: Server, send_logged: Send,
                                                    tmp_path: Path) -> None:
    seen: list[Status | None] = []

    def read_log(message: Received) -> None:
        log = SQLiteLog.open(tmp_path / "log.sqlite3", create=False)
        seen.append(status_of(log, "test", message.rcpt_tos[0]))
        log.close()

    smtp_server.handler.on_message = read_log
    send_logged(smtp_server.settings(concurrency=1), make_letters(5))
    assert seen == [Status.SENDING] * 5


class _CountedLog(SQLiteLog):
    """A real log that counts its commits, and what each marks."""

    marks: list[int]

    def commit(self, run: Run, sending: Sequence[str], outcomes: Sequence[Outcome],
               when: float) -> None:
        self.marks.append(len(sending))
        super().commit(run, sending, outcomes, when)


def _counted_send(tmp_path: Path, settings: Settings, letters: list[Letter]) -> list[int]:
    log = _CountedLog.open(tmp_path / "log.sqlite3")
    assert isinstance(log, _CountedLog)
    log.marks = []
    run = log.begin_run("test", {}, "hash")
    log.register("test", listed(letters), "hash")

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            await send_all(Sender(settings, recorder, policy=FAST), letters)

    asyncio.run(main())
    log.close()
    return log.marks


def test_marks_asked_for_during_a_commit_share_the_next_one(smtp_server: Server,
                                                            tmp_path: Path) -> None:
    marks = _counted_send(tmp_path, smtp_server.settings(concurrency=16), make_letters(400))
    assert sum(marks) == 400
    assert len(marks) < 400  # each commit is an fsync: 16 connections need not pay 16


def test_an_outcome_is_on_disk_soon_after_its_reply_with_no_mark_to_carry_it(
        smtp_server: Server, tmp_path: Path) -> None:
    letters = make_letters(1)
    log, run = log_with(tmp_path / "log.sqlite3", letters)
    other = SQLiteLog.open(tmp_path / "log.sqlite3")

    async def main() -> float:
        async with Recorder(log, run) as recorder:
            sender = Sender(smtp_server.settings(), recorder, policy=FAST)
            async for _ in sender.send(letters, asyncio.Event()):
                replied = time.monotonic()
                while status_of(other, "test", letters[0].email) != Status.SENT:
                    await asyncio.sleep(0.005)
                return time.monotonic() - replied
        raise AssertionError("no outcome")

    waited = asyncio.run(main())
    log.close()
    other.close()
    assert waited < Recorder.LINGER + 0.1


def test_a_stop_finishes_letters_in_flight_and_leaves_the_rest_pending(
        smtp_server: Server, tmp_path: Path) -> None:
    letters = make_letters(50)
    log, run = log_with(tmp_path / "log.sqlite3", letters)

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def stop_at_five(message: Received) -> None:
            if len(smtp_server.handler.messages) == 5:
                loop.call_soon_threadsafe(stop.set)

        smtp_server.handler.on_message = stop_at_five
        async with Recorder(log, run) as recorder:
            sender = Sender(smtp_server.settings(concurrency=1), recorder, policy=FAST)
            return (await send_all(sender, letters, stop)).interrupted

    assert asyncio.run(main())
    received = len(smtp_server.handler.messages)
    statuses = [status_of(log, "test", letter.email) for letter in letters]
    log.close()
    assert 5 <= received <= 6
    assert statuses[:received] == [Status.SENT] * received
    assert set(statuses[received:]) == {Status.PENDING}


def test_a_hard_stop_while_a_mark_commits_leaves_the_letter_due_not_unknown(
        smtp_server: Server, tmp_path: Path) -> None:
    # The mark's commit goes on while MAIL and RCPT cross the network; cancelled before it
    # is done, the row still becomes `sending`: the letter's outcome must say it did not go.
    letters = make_letters(1)
    log, run = log_with(tmp_path / "log.sqlite3", letters, SlowDisk)

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            sender = Sender(smtp_server.settings(concurrency=1), recorder, policy=FAST)
            task = asyncio.ensure_future(send_all(sender, letters))
            await asyncio.sleep(0.15)  # RCPT answered, the commit still on its way to disk
            task.cancel()  # a second Ctrl-C
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert smtp_server.handler.messages == []
    assert status_of(log, "test", letters[0].email) == Status.DEFERRED
    log.close()


def test_a_password_is_never_sent_in_clear_to_another_machine(smtp_server: Server) -> None:
    settings = smtp_server.settings(smtp_host="mail.example.org", smtp_security="none",
                                    smtp_username="organiser", smtp_password="secret")
    with pytest.raises(ConfigError, match="refusing to send the password"):
        Sender(settings)
