"""The send log itself: a real SQLite file, its schema, its rows, its lock."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import marshal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import LoggedSend, Server, make_letters
from hypothesis import given
from hypothesis import strategies as st

from mailer import journal, logwriter
from mailer.errors import LogError, LogLocked
from mailer.message import Letter
from mailer.outcome import Outcome, Status
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


def test_a_new_log_is_sqlite_in_wal_mode_with_schema_version_4(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    SendLog.open(path).close()
    assert _query(path, "PRAGMA journal_mode") == [("wal",)]
    assert _query(path, "PRAGMA user_version") == [(4,)]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(letters)")]
    assert columns == ["campaign", "email", "address", "line", "status", "attempts",
                       "first_attempt", "last_attempt", "message_id", "reply_code",
                       "reply_text", "message_sha256", "template_sha256", "run_id"]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(runs)")]
    assert columns == ["id", "campaign", "started", "ended", "settings", "template_sha256",
                       "outcome", "counts"]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(reservations)")]
    assert columns == ["run_id", "batch", "emails"]


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**6))  # to 2100, in µs
def test_times_are_stored_as_datetime_writes_them(microseconds: int) -> None:
    when = microseconds / 10**6
    assert logwriter.stamp(when) == \
        datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


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


def test_reserved_letters_are_sending_on_disk_and_their_rows_keep_their_state(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    _reserve(path, letters, start=1, finish=False)
    assert _query(path, "SELECT run_id, emails FROM reservations") == \
        [(1, '["person0@example.org", "person1@example.org", "person2@example.org"]')]
    assert _query(path, "SELECT status FROM letters") == [("pending",)] * 3
    log = SendLog.open(path, create=False)
    try:
        assert [log.status("c", letter.email) for letter in letters] == [Status.SENDING] * 3
        assert log.summary("c").counts == {Status.SENDING: 3}
        assert [entry.status for entry in log.entries("c", [Status.SENDING])] == \
            [Status.SENDING] * 3
        assert list(log.entries("c", [Status.PENDING])) == []
    finally:
        log.close()


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


def _write_after_the_records(journal: Path, data: bytes) -> None:
    """Write `data` where the journal's next record would go (over its unwritten NULs)."""
    with journal.open("r+b") as file:
        file.seek(journal.read_bytes().rindex(b"\n") + 1)
        file.write(data)


def test_a_journal_with_a_line_that_is_not_a_record_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    _reserve(path, letters, start=1, finish=False)
    _write_after_the_records(tmp_path / "log.sqlite3.inflight", b"person2@example.org\n")
    assert _settled(path, letters) == [Status.UNKNOWN] * 3


def test_a_journal_record_cut_short_by_a_kill_is_ignored_and_the_rest_trusted(
        tmp_path: Path) -> None:
    # Killed while copying a record into the map: it has no line break, and its letter
    # had not gone to DATA.
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    _reserve(path, letters, start=1, finish=False)
    _write_after_the_records(tmp_path / "log.sqlite3.inflight", b"person1@exam")
    assert _settled(path, letters) == [Status.UNKNOWN, Status.PENDING, Status.PENDING]


def test_a_journal_grows_as_it_needs_and_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "log.inflight"
    record = journal.Journal(path, 7)
    # About 40 bytes a record: several times the first 64 KiB.
    started = {f"person{n}@example.org": 1_700_000_000 + n / 8 for n in range(5000)}
    for key, when in started.items():
        record.started(key, when)
    record.close()
    assert path.stat().st_size > 3 * 65536
    assert journal.read_journal(path) == journal.Flown(7, started)


def test_a_finished_run_leaves_unsent_reserved_letters_in_their_state(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    log = SendLog.open(path)
    log.register("c", letters, "hash")
    log._db.execute("UPDATE letters SET status = 'failed' WHERE email = ?", (letters[2].email,))
    log.close()
    _reserve(path, letters, start=1, finish=True)
    # The letter that went to DATA with no outcome recorded is the only one in doubt.
    assert _query(path, "SELECT status FROM letters ORDER BY line") == \
        [("unknown",), ("pending",), ("failed",)]
    assert _query(path, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert not (tmp_path / "log.sqlite3.inflight").exists()


def test_reserved_letters_are_looked_up_by_address_not_by_scanning_the_campaign(
        tmp_path: Path) -> None:
    # The log is read while a run reserves: a scan per reservation made that quadratic.
    path = tmp_path / "log.sqlite3"
    SendLog.open(path).close()
    plan = " / ".join(str(row[3]) for row in
                      _query(path, "EXPLAIN QUERY PLAN " + logwriter.UNFINISHED))
    assert "SEARCH l USING INDEX letters_by_address (campaign=? AND email=?)" in plan, plan


def test_a_letter_whose_outcome_could_not_be_written_ends_unknown(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(2)
    log = SendLog.open(path)
    log.lock()
    run_id = log.begin_run("c", {}, "hash")
    log.register("c", letters, "hash")
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER no_outcome BEFORE UPDATE OF status ON letters "
               "WHEN NEW.status = 'sent' BEGIN SELECT RAISE(FAIL, 'database or disk is full'); "
               "END")
    db.commit()
    db.close()
    recorder = Recorder(log, "c", run_id)

    async def run() -> None:
        await recorder.reserve(letters)
        recorder.started(letters[0])
        recorder.record(Outcome(letters[0], Status.SENT, 1, 250, "2.0.0 OK: queued"))
        with pytest.raises(LogError, match="database or disk is full"):
            await recorder.flush()
        with pytest.raises(LogError, match="database or disk is full"):
            await recorder.finish()  # the run's end is written all the same

    try:
        asyncio.run(run())
    finally:
        recorder.close()
        log.close()
    # The server has it, the log could not say so: in doubt, not due again.
    assert _query(path, "SELECT status, attempts FROM letters ORDER BY line") == \
        [("unknown", 1), ("pending", 0)]


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
    assert _query(path, "PRAGMA user_version") == [(4,)]


def test_a_log_of_schema_2_is_migrated_and_its_reserved_letters_become_unknown(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_MIGRATIONS[1] + _MIGRATIONS[2])
    db.execute("PRAGMA user_version = 2")
    # As a schema 2 run left its reservations: `sending`, with the state each had.
    db.execute("INSERT INTO letters (campaign, email, address, status, prior_status) VALUES "
               "('c', 'ada@example.org', 'ada@example.org', 'sending', 'pending'), "
               "('c', 'bob@example.org', 'bob@example.org', 'sent', NULL)")
    db.close()
    SendLog.open(path).close()
    assert _query(path, "SELECT email, status FROM letters ORDER BY email") == \
        [("ada@example.org", "unknown"), ("bob@example.org", "sent")]
    assert _query(path, "PRAGMA user_version") == [(4,)]


def test_a_log_of_schema_3_is_migrated_to_keep_its_letters_in_list_order(
        tmp_path: Path) -> None:
    # A run sends in list order: rows stored in that order share pages, and so commits.
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(";".join(_MIGRATIONS[version] for version in (1, 2, 3)))
    db.execute("PRAGMA user_version = 3")
    rows = [("c", "zoe@example.org", "Zoe@example.org", 2, "sent", 1, "t1", "t2", "<1@x>", 250,
             "2.0.0 OK", "sha-zoe", "sha-t", 1),
            ("c", "ada@example.org", "ada@example.org", 3, "pending", 0, None, None, "<2@x>",
             None, None, None, "sha-t", None)]
    db.executemany("INSERT INTO letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()
    SendLog.open(path).close()
    assert _query(path, "SELECT * FROM letters ORDER BY rowid") == rows
    assert _query(path, "PRAGMA user_version") == [(4,)]


def test_a_log_written_by_a_newer_mailer_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LogError) as caught:
        SendLog.open(path)
    assert str(caught.value) == (f"{path} was written by a newer mailer (schema 5); upgrade "
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


def test_every_commit_to_the_log_reaches_the_disk(tmp_path: Path) -> None:
    db = logwriter.connect(tmp_path / "log.sqlite3")
    try:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        db.close()


def _children(pid: int) -> list[int]:
    """The processes `pid` started that are still running (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command may hold spaces and parentheses: the fields follow its last ')'.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_log_writer_dies_with_a_killed_sender(tmp_path: Path) -> None:
    script = (f"import asyncio, time\nfrom pathlib import Path\n"
              f"from mailer.recorder import Recorder\nfrom mailer.sendlog import SendLog\n"
              f"log = SendLog.open(Path({str(tmp_path / 'log.sqlite3')!r}))\n"
              f"recorder = Recorder(log, 'c', log.begin_run('c', {{}}, 'hash'))\n"
              f"asyncio.run(recorder.flush())\nprint('ready', flush=True)\ntime.sleep(60)\n")
    sender = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None
    assert sender.stdout.readline() == "ready\n"
    [writer] = _children(sender.pid)
    sender.kill()
    sender.wait()
    sender.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{writer}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not Path(f"/proc/{writer}").exists()


def test_a_log_writer_whose_sender_is_gone_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(1)
    log = SendLog.open(path)
    log.register("c", letters, "hash")
    log.close()
    frame = marshal.dumps((1, json.dumps([letters[0].email]), [], [], None))
    # Told that its sender is process 1, which did not start it: it has lost its sender.
    writer = subprocess.run([sys.executable, "-I", "-S", logwriter.__file__, str(path), "c", "1",
                             "1"], input=len(frame).to_bytes(4) + frame, capture_output=True,
                            check=True, timeout=30)
    assert writer.stdout == b""
    assert _query(path, "SELECT status FROM letters") == [("pending",)]


def test_the_log_writer_starts_without_the_slow_imports(tmp_path: Path) -> None:
    # Every run's first letter waits for the writer's first commit: typing, pathlib and
    # json (re, enum) would add half to its start-up.
    writer = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", logwriter.__file__,
                             str(tmp_path / "log.sqlite3"), "c", "1", "1"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True,
                            timeout=30)
    imported = {line.rpartition("|")[2].strip() for line in writer.stderr.splitlines()}
    assert "sqlite3" in imported
    assert not imported & {"typing", "pathlib", "json", "re", "enum"}
