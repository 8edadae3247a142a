"""The send log itself: a real SQLite file, its schema, its rows, its lock."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LoggedSend, Server, make_letters

from mailer import journal
from mailer.errors import LogError, LogLocked
from mailer.message import Letter
from mailer.outcome import Status
from mailer.recorder import Recorder
from mailer.sendlog import _MIGRATIONS, SendLog
from mailer.sink import Faults

Send = Callable[..., LoggedSend]


def _query(path: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Read the log with a connection of its own, as any other program would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, parameters).fetchall()
    finally:
        db.close()


def test_a_new_log_is_sqlite_in_wal_mode_with_schema_version_2(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    SendLog.open(path).close()
    assert _query(path, "PRAGMA journal_mode") == [("wal",)]
    assert _query(path, "PRAGMA user_version") == [(2,)]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(letters)")]
    assert columns == ["campaign", "email", "address", "line", "status", "attempts",
                       "first_attempt", "last_attempt", "message_id", "reply_code",
                       "reply_text", "message_sha256", "template_sha256", "run_id",
                       "prior_status"]
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


def _reserve(path: Path, letters: list[Letter], *, start: int, finish: bool,
             meanwhile: Callable[[], object] = lambda: None) -> None:
    """A run that reserves `letters`, takes the first `start` of them to DATA (calling
    `meanwhile` then), and either finishes or dies (its files closed, nothing more written)."""
    log = SendLog.open(path)
    log.lock()
    run_id = log.begin_run("c", {}, "hash")
    log.register("c", letters, "hash")
    recorder = Recorder(log, "c", run_id)

    async def run() -> None:
        await recorder.reserve(letters)
        for letter in letters[:start]:
            recorder.started(letter)
        meanwhile()
        if finish:
            await recorder.finish()

    try:
        asyncio.run(run())
    finally:
        recorder.close()
        log.close()


def _settled(path: Path, letters: list[Letter]) -> list[Status | None]:
    """The states the next run finds, once it has settled the last one."""
    log = SendLog.open(path)
    try:
        log.begin_run("c", {}, "hash")
        return [log.status("c", letter.email) for letter in letters]
    finally:
        log.close()


def test_reserved_letters_are_sending_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    _reserve(path, make_letters(3), start=1, finish=False)
    assert _query(path, "SELECT status, prior_status FROM letters") == [("sending", "pending")] * 3


def test_after_a_kill_only_letters_that_reached_data_become_unknown(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    _reserve(path, letters, start=1, finish=False)
    assert _settled(path, letters) == [Status.UNKNOWN, Status.PENDING, Status.PENDING]
    assert _query(path, "SELECT attempts FROM letters ORDER BY line") == [(1,), (0,), (0,)]
    assert not (tmp_path / "log.sqlite3.inflight").exists()


def test_after_a_restart_every_reserved_letter_becomes_unknown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    _reserve(path, letters, start=1, finish=False)
    # The journal was not fsync'd: after the machine restarts it may have lost records.
    monkeypatch.setattr(journal, "boot_id", lambda: "another-boot")
    assert _settled(path, letters) == [Status.UNKNOWN] * 3


def test_a_journal_with_a_line_that_is_not_a_record_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    _reserve(path, letters, start=1, finish=False)
    with (tmp_path / "log.sqlite3.inflight").open("a", encoding="ascii") as journal:
        journal.write("person2@example.org\n")
    assert _settled(path, letters) == [Status.UNKNOWN] * 3


def test_a_finished_run_gives_unsent_reservations_their_state_back(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    log = SendLog.open(path)
    log.register("c", letters, "hash")
    log._db.execute("UPDATE letters SET status = 'failed' WHERE email = ?", (letters[2].email,))
    log.close()
    _reserve(path, letters, start=1, finish=True)
    # The letter that went to DATA with no outcome recorded is the only one in doubt.
    assert _query(path, "SELECT status, prior_status FROM letters ORDER BY line") == \
        [("unknown", None), ("pending", None), ("failed", None)]
    assert not (tmp_path / "log.sqlite3.inflight").exists()


def test_a_log_of_schema_1_is_migrated_and_its_stale_letters_become_unknown(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_MIGRATIONS[1])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO letters (campaign, email, address, status) VALUES "
               "('c', 'ada@example.org', 'ada@example.org', 'sending')")
    db.close()
    log = SendLog.open(path)
    try:
        log.begin_run("c", {}, "hash")
        assert log.status("c", "ada@example.org") == Status.UNKNOWN
    finally:
        log.close()
    assert _query(path, "PRAGMA user_version") == [(2,)]


def test_a_log_written_by_a_newer_mailer_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LogError) as caught:
        SendLog.open(path)
    assert str(caught.value) == (f"{path} was written by a newer mailer (schema 3); upgrade "
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


def test_every_commit_of_a_run_reaches_the_disk(tmp_path: Path) -> None:
    log = SendLog.open(tmp_path / "log.sqlite3")
    recorder = Recorder(log, "c", log.begin_run("c", {}, "hash"))
    try:
        assert recorder._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        recorder.close()
        log.close()


def test_a_run_gives_back_the_switch_interval_it_shortened(tmp_path: Path) -> None:
    before = sys.getswitchinterval()
    during: list[float] = []
    _reserve(tmp_path / "log.sqlite3", make_letters(2), start=0, finish=True,
             meanwhile=lambda: during.append(sys.getswitchinterval()))
    assert during == [min(before, 0.0005)]
    assert sys.getswitchinterval() == before
