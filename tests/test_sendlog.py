"""The send log itself: a real SQLite file, its schema, its rows, its lock."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from conftest import LoggedSend, Server, make_letters

from mailer.errors import LogError, LogLocked
from mailer.message import Letter
from mailer.outcome import Status
from mailer.sendlog import SendLog
from mailer.sink import Faults

Send = Callable[..., LoggedSend]


def _query(path: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Read the log with a connection of its own, as any other program would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, parameters).fetchall()
    finally:
        db.close()


def test_a_new_log_is_sqlite_in_wal_mode_with_schema_version_1(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    SendLog.open(path).close()
    assert _query(path, "PRAGMA journal_mode") == [("wal",)]
    assert _query(path, "PRAGMA user_version") == [(1,)]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(letters)")]
    assert columns == ["campaign", "email", "address", "line", "status", "attempts",
                       "first_attempt", "last_attempt", "message_id", "reply_code",
                       "reply_text", "message_sha256", "template_sha256", "run_id"]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(runs)")]
    assert columns == ["id", "campaign", "started", "ended", "settings", "template_sha256",
                       "outcome", "counts"]


def test_a_recipient_has_one_row_per_campaign_whatever_the_case(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    shouting = Letter(9, letters[0].email.upper(), letters[0].sender, letters[0].envelope,
                      letters[0].message_id, letters[0].data)
    log = SendLog.open(path)
    try:
        assert log.register("one", letters, "hash") == 3
        assert log.register("one", [*letters, shouting], "hash") == 0
        assert log.register("two", letters, "hash") == 3
    finally:
        log.close()
    assert _query(path, "SELECT campaign, COUNT(*) FROM letters GROUP BY campaign") == \
        [("one", 3), ("two", 3)]
    assert _query(path, "SELECT address, line FROM letters WHERE email = ?",
                  "person0@example.org") == [("person0@example.org", 2)] * 2


def test_a_sent_letter_records_tries_times_message_id_reply_and_hashes(
        smtp_server: Server, send_logged: Send, tmp_path: Path) -> None:
    letter = make_letters(1)[0]
    send_logged(smtp_server.settings(), [letter])
    [row] = _query(tmp_path / "log.sqlite3",
                   "SELECT status, attempts, first_attempt, last_attempt, message_id, "
                   "reply_code, reply_text, message_sha256, template_sha256 FROM letters")
    status, attempts, first, last, message_id, code, text, message_hash, template_hash = row
    assert (status, attempts, message_id, code, text) == \
        ("sent", 1, "<0@example.org>", 250, "2.0.0 OK: queued")
    assert isinstance(first, str)
    assert isinstance(last, str)
    assert first <= last
    assert message_hash == hashlib.sha256(letter.data).hexdigest()
    assert template_hash == "template-hash"


def test_a_letter_left_sending_by_a_dead_run_becomes_unknown_on_the_next_run(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(2)
    log = SendLog.open(path)
    run_id = log.begin_run("c", {}, "hash")
    log.register("c", letters, "hash")
    recorder = log.recorder("c", run_id)

    async def mark() -> None:
        await recorder.sending(letters[0])

    asyncio.run(mark())
    log.close()  # the process dies here: no outcome is ever recorded

    assert _query(path, "SELECT status, attempts FROM letters ORDER BY line") == \
        [("sending", 1), ("pending", 0)]
    log = SendLog.open(path)
    try:
        log.begin_run("c", {}, "hash")
        assert [log.status("c", letter.email) for letter in letters] == \
            [Status.UNKNOWN, Status.PENDING]
    finally:
        log.close()


def test_a_log_written_by_a_newer_mailer_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LogError) as caught:
        SendLog.open(path)
    assert str(caught.value) == (f"{path} was written by a newer mailer (schema 2); upgrade "
                                 "mailer to read it")
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_send_log_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "recipients.csv"
    path.write_text("email\nada@example.org\n", encoding="utf-8")
    with pytest.raises(LogError) as caught:
        SendLog.open(path)
    assert str(caught.value) == (f"send log {path}: file is not a database; choose another "
                                 "file with --log PATH")
    assert path.read_text(encoding="utf-8") == "email\nada@example.org\n"


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    first, second = SendLog.open(path), SendLog.open(path)
    try:
        first.lock()
        with pytest.raises(LogLocked, match="another mailer send is using"):
            second.lock()
        first.close()
        second.lock()
    finally:
        first.close()
        second.close()


def test_a_list_with_problems_registers_nobody(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = SendLog.open(path)
    try:
        log.register("c", make_letters(3), "hash", keep=lambda: False)
    finally:
        log.close()
    assert _query(path, "SELECT COUNT(*) FROM letters") == [(0,)]


@pytest.mark.faults(Faults(rcpt={"person1@example.org": "550 5.1.1 no such user"}))
def test_every_letter_a_run_tried_names_that_run(smtp_server: Server, send_logged: Send,
                                                 tmp_path: Path) -> None:
    send_logged(smtp_server.settings(), make_letters(2))
    assert _query(tmp_path / "log.sqlite3", "SELECT email, status, run_id FROM letters "
                  "ORDER BY line") == [("person0@example.org", "sent", 1),
                                       ("person1@example.org", "failed", 1)]


@pytest.mark.parametrize(("sync", "pragma"), [("full", 2), ("normal", 1)])
def test_the_log_syncs_as_configured(tmp_path: Path, sync: Literal["full", "normal"],
                                     pragma: int) -> None:
    log = SendLog.open(tmp_path / "log.sqlite3", sync=sync)
    recorder = log.recorder("c", log.begin_run("c", {}, "hash"))
    try:
        assert recorder._db.execute("PRAGMA synchronous").fetchone()[0] == pragma
    finally:
        log.close()
