"""The send log itself: a real SQLite file, its schema, marks, settling, lease, migrations."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, LoggedSend, Server, listed, log_with, make_letters, status_of
from servers import Faults

from mailer.errors import LeaseLost, LogError, LogLocked
from mailer.outcome import Outcome, Status
from mailer.recorder import Recorder
from mailer.sendlog import Run, stamp
from mailer.sqlitelog import SCHEMA_VERSION, SQLiteLog

Send = Callable[..., LoggedSend]
DATA = REPO / "tests" / "data"


def _query(path: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Read the log with a connection of its own, as any other program would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, parameters).fetchall()
    finally:
        db.close()


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _die(log: SQLiteLog, run: Run) -> None:
    """Leave the log as a killed run does: lease held, nothing more written."""
    log.close()
    db = sqlite3.connect(log.path)
    db.execute("UPDATE runs SET pid = ? WHERE id = ?", (_dead_pid(), run.id))
    db.commit()
    db.close()


def test_a_new_log_is_sqlite_in_wal_mode_with_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = SQLiteLog.open(path)
    # Every commit reaches the disk (fsync) before it returns.
    assert log._db.execute("PRAGMA synchronous").fetchone() == (2,)
    log.close()
    assert _query(path, "PRAGMA journal_mode") == [("wal",)]
    assert _query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(letters)")]
    assert columns == ["campaign", "email", "address", "line", "status", "attempts",
                       "first_attempt", "last_attempt", "message_id", "reply_code",
                       "reply_text", "message_sha256", "template_sha256", "run_id",
                       "bounce_status", "bounce_text", "bounced_at", "reply", "reply_at",
                       "reply_from", "reply_subject", "paper_at", "paper_pages"]
    columns = [row[1] for row in _query(path, "PRAGMA table_info(runs)")]
    assert columns == ["id", "campaign", "started", "ended", "settings", "template_sha256",
                       "outcome", "counts", "host", "pid", "heartbeat", "account",
                       "list_sha256"]
    assert _query(path, "SELECT name FROM sqlite_master WHERE name = 'reservations'") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.sqlite3"]  # no lock file


def test_a_recipient_has_one_row_per_campaign_whatever_the_case(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(3)
    shouting = listed(letters)[0]._replace(email=letters[0].email.upper(), line=9)
    log = SQLiteLog.open(path)
    try:
        assert log.register("one", listed(letters), "hash") == 3
        assert log.register("one", [*listed(letters), shouting], "hash") == 0
        assert log.register("two", listed(letters), "hash") == 3
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
                   "reply_code, reply_text, message_sha256, template_sha256, run_id FROM letters")
    status, attempts, first, last, message_id, code, text, message_hash, template_hash, run = row
    assert (status, attempts, message_id, code, text, run) == \
        ("sent", 1, "<0@example.org>", 250, "2.0.0 OK: queued", 1)
    assert isinstance(first, str)
    assert isinstance(last, str)
    assert first <= last
    assert message_hash == hashlib.sha256(letter.data).hexdigest()
    assert template_hash == "template-hash"


def test_a_mark_is_committed_before_commit_returns(tmp_path: Path) -> None:
    letters = make_letters(2)
    log, run = log_with(tmp_path / "log.sqlite3", letters, campaign="c")
    log.commit(run, [letters[0].email], [], 1_800_000_000.0)
    assert _query(log.path, "SELECT email, status, run_id, first_attempt FROM letters "
                  "ORDER BY line") == [("person0@example.org", "sending", 1,
                                        "2027-01-15T08:00:00.000+00:00"),
                                       ("person1@example.org", "pending", None, None)]
    log.close()


def test_a_dead_runs_marked_letters_become_unknown_and_the_others_stay_due(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(4)
    log, run = log_with(path, letters, campaign="c")
    log.commit(run, [letters[0].email, letters[1].email],
               [Outcome(letters[1], Status.SENT, 1, 250, "2.0.0 OK")], 1_800_000_000.0)
    log.commit(run, [letters[2].email], [], 1_800_000_001.0)
    _die(log, run)

    log = SQLiteLog.open(path)
    second = log.begin_run("c", {}, "hash")
    assert (second.replaced is not None, second.replaced_because, second.settled) == \
        (True, "its process is gone", 2)
    assert [status_of(log, "c", letter.email) for letter in letters] == \
        [Status.UNKNOWN, Status.SENT, Status.UNKNOWN, Status.PENDING]
    assert _query(path, "SELECT attempts FROM letters ORDER BY line") == [(1,), (1,), (1,), (0,)]
    assert _query(path, "SELECT id, outcome, ended IS NOT NULL FROM runs") == \
        [(1, "died", 1), (2, None, 0)]
    log.close()


def test_a_live_lease_refuses_a_second_run_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    first, second = SQLiteLog.open(path), SQLiteLog.open(path)
    try:
        run = first.begin_run("c", {}, "hash")
        with pytest.raises(LogLocked) as caught:
            second.begin_run("c", {}, "hash")
        [(started,)] = _query(path, "SELECT started FROM runs")
        when = f"{str(started)[:19].replace('T', ' ')} UTC"
        assert str(caught.value) == (
            f"another mailer send is using {path}: run 1 (pid {os.getpid()} on "
            f"{socket.gethostname()}, started {when}, last heard of {when}); wait for it to "
            "finish, or stop it, before starting another")
        first.end_run(run, "completed", {})
        assert second.begin_run("c", {}, "hash").replaced is None  # released, not taken
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("spelling", ["symlink", "hard link", "relative", "dot-dot"])
def test_every_name_of_the_file_meets_the_same_lease(spelling: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "logs" / "log.sqlite3"
    first = SQLiteLog.open(path)
    first.begin_run("c", {}, "hash")
    monkeypatch.chdir(tmp_path)
    other = {"symlink": tmp_path / "link.sqlite3", "hard link": tmp_path / "hard.sqlite3",
             "relative": Path("logs/log.sqlite3"),
             "dot-dot": Path("logs/../logs/./log.sqlite3")}[spelling]
    if spelling == "symlink":
        other.symlink_to(path)
    elif spelling == "hard link":
        other.hardlink_to(path)
    try:
        if spelling == "hard link":  # SQLite itself refuses a second name for its file
            with pytest.raises(LogError, match=r"has another name \(a hard link\)"):
                SQLiteLog.open(other).begin_run("c", {}, "hash")
            return
        second = SQLiteLog.open(other)
        with pytest.raises(LogLocked, match="another mailer send is using"):
            second.begin_run("c", {}, "hash")
        second.close()
    finally:
        first.close()


def test_a_lease_silent_for_a_minute_is_taken_over_and_a_fresh_one_is_not(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = SQLiteLog.open(path)
    run = log.begin_run("c", {}, "hash")
    # Held from another machine: its process cannot be looked at, only its heartbeat.
    log._db.execute("UPDATE runs SET host = 'elsewhere', pid = 1 WHERE id = ?", (run.id,))
    with pytest.raises(LogLocked, match=r"run 1 \(pid 1 on elsewhere"):
        log.begin_run("c", {}, "hash")
    log._db.execute("UPDATE runs SET heartbeat = ?", (stamp(1_700_000_000.0),))
    second = log.begin_run("c", {}, "hash")
    assert second.replaced is not None
    assert second.replaced.host == "elsewhere"
    assert second.replaced_because.startswith("it has not been heard of for ")
    log.close()


def test_a_run_whose_lease_was_taken_over_can_mark_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(2)
    log, run = log_with(path, letters, campaign="c")
    log._db.execute("UPDATE runs SET heartbeat = ?", (stamp(1_700_000_000.0),))  # asleep
    other = SQLiteLog.open(path)
    taker = other.begin_run("c", {}, "hash")
    with pytest.raises(LeaseLost) as caught:
        log.commit(run, [letters[0].email], [], 1_800_000_000.0)
    assert f"this run's hold on the log was taken over by run {taker.id} (pid" in \
        str(caught.value)
    assert status_of(other, "c", letters[0].email) == Status.PENDING
    log.close()
    other.close()


def test_a_transaction_that_raises_registers_nobody(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = SQLiteLog.open(path)

    def register_then_fail() -> None:
        with log.atomic():
            log.register("c", listed(make_letters(3)), "hash")
            raise ValueError("a problem")

    with pytest.raises(ValueError, match="a problem"):
        register_then_fail()
    log.close()
    assert _query(path, "SELECT COUNT(*) FROM letters") == [(0,)]


@pytest.mark.faults(Faults(rcpt={"person1@example.org": "550 5.1.1 no such user"}))
def test_every_letter_a_run_tried_names_that_run(smtp_server: Server, send_logged: Send,
                                                 tmp_path: Path) -> None:
    send_logged(smtp_server.settings(), make_letters(2))
    assert _query(tmp_path / "log.sqlite3", "SELECT email, status, run_id FROM letters "
                  "ORDER BY line") == [("person0@example.org", "sent", 1),
                                       ("person1@example.org", "failed", 1)]


def test_a_letter_whose_outcome_could_not_be_written_ends_unknown(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    letters = make_letters(2)
    log, run = log_with(path, letters, campaign="c")
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER no_outcome BEFORE UPDATE OF status ON letters "
               "WHEN NEW.status = 'sent' BEGIN SELECT RAISE(FAIL, 'database or disk is full'); "
               "END")
    db.commit()
    db.close()

    async def main() -> Recorder:
        async with Recorder(log, run) as recorder:
            await recorder.sending(letters[0])
            recorder.record(Outcome(letters[0], Status.SENT, 1, 250, "2.0.0 OK: queued"))
            await asyncio.sleep(Recorder.LINGER * 2)
            with pytest.raises(LogError, match="database or disk is full"):
                await recorder.sending(letters[1])  # nothing more may go
        return recorder

    recorder = asyncio.run(main())
    assert recorder.error is not None
    _die(log, run)
    # The server has it, the log could not say so: in doubt, not due again.
    log = SQLiteLog.open(path)
    log._db.execute("DROP TRIGGER no_outcome")
    log.begin_run("c", {}, "hash")
    log.close()
    assert _query(path, "SELECT status, attempts FROM letters ORDER BY line") == \
        [("unknown", 1), ("pending", 0)]


# -- migrations -------------------------------------------------------------------------------


# The tables of the first release (schema 1), and what schemas 2 and 3 changed.
SCHEMA_1 = """
CREATE TABLE letters (
    campaign TEXT NOT NULL, email TEXT NOT NULL, address TEXT NOT NULL, line INTEGER,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, first_attempt TEXT,
    last_attempt TEXT, message_id TEXT, reply_code INTEGER, reply_text TEXT,
    message_sha256 TEXT, template_sha256 TEXT, run_id INTEGER,
    PRIMARY KEY (campaign, email)
) WITHOUT ROWID;
CREATE INDEX letters_status ON letters (campaign, status);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, campaign TEXT NOT NULL, started TEXT NOT NULL, ended TEXT,
    settings TEXT NOT NULL, template_sha256 TEXT, outcome TEXT, counts TEXT
);
"""
SCHEMA_3 = SCHEMA_1 + """
DROP INDEX letters_status;
CREATE TABLE reservations (run_id INTEGER NOT NULL REFERENCES runs (id),
    batch INTEGER NOT NULL, emails TEXT NOT NULL, PRIMARY KEY (run_id, batch));
"""


def _old_log(path: Path, schema: str, version: int, *rows: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(schema)
    db.execute(f"PRAGMA user_version = {version}")
    for row in rows:
        db.execute(row)
    db.close()


def test_a_log_of_schema_1_is_migrated_and_its_stale_letters_become_unknown(
        tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    _old_log(path, SCHEMA_1, 1, "INSERT INTO letters (campaign, email, address, status) "
             "VALUES ('c', 'ada@example.org', 'ada@example.org', 'sending')")
    log = SQLiteLog.open(path)
    assert status_of(log, "c", "ada@example.org") == Status.UNKNOWN
    log.close()
    assert _query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_a_log_of_schema_3_keeps_its_rows_in_list_order(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    _old_log(path, SCHEMA_3, 3, "INSERT INTO runs (campaign, started, settings) VALUES "
             "('c', 't0', '{}')", "INSERT INTO reservations VALUES (1, 1, '[\"zoe@example.org\"]')")
    rows = [("c", "zoe@example.org", "Zoe@example.org", 2, "sent", 1, "t1", "t2", "<1@x>", 250,
             "2.0.0 OK", "sha-zoe", "sha-t", 1),
            ("c", "ada@example.org", "ada@example.org", 3, "pending", 0, None, None, "<2@x>",
             None, None, None, "sha-t", None)]
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    SQLiteLog.open(path).close()
    # In list order; the reserved letter had its outcome (run 1's), so it stays as it is.
    assert _query(path, "SELECT campaign, email, address, line, status, attempts, "
                  "first_attempt, last_attempt, message_id, reply_code, reply_text, "
                  "message_sha256, template_sha256, run_id FROM letters ORDER BY rowid") == rows
    assert _query(path, "SELECT outcome FROM runs") == [("died",)]
    assert _query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize("version", [5, 6])
def test_a_log_of_this_releases_earlier_schemas_keeps_its_rows_and_learns_its_accounts(
        version: int, tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    shutil.copy(DATA / f"schema{version}.sqlite3", path)
    log = SQLiteLog.open(path)
    assert [status_of(log, "c", f"p{n}@example.org") for n in range(3)] == \
        [Status.SENT, Status.SENDING, Status.PENDING]
    assert log.sent_since("olive@example.org via smtp.example.org", 0) == [1.8e9, 1.8e9]
    log.begin_run("c", {}, "hash")  # the one left in flight is in doubt
    assert status_of(log, "c", "p1@example.org") == Status.UNKNOWN
    log.close()
    assert _query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def _killed_release_log(tmp_path: Path, *, trust_journal: bool) -> Path:
    """The log the previous release left when killed mid-run (tests/data/README.md)."""
    path = tmp_path / "mailer-log.sqlite3"
    shutil.copy(DATA / "schema4-killed.sqlite3", path)
    journal = (DATA / "schema4-killed.sqlite3.inflight").read_text(encoding="ascii")
    # Trusted if written since this machine booted.
    boot = (Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
            if trust_journal else "another-boot")
    journal = journal.replace(journal.split("boot=")[1].split("\n")[0], boot)
    Path(f"{path}.inflight").write_text(journal, encoding="ascii")
    Path(f"{path}.lock").touch()
    return path


def _states(path: Path) -> dict[str, list[int]]:
    states: dict[str, list[int]] = {}
    for email, status in _query(path, "SELECT email, status FROM letters ORDER BY line"):
        states.setdefault(str(status), []).append(int(str(email)[6:].split("@")[0]))
    return states


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(),
                    reason="the old journal is trusted by Linux's boot id")
def test_a_log_of_the_last_release_killed_mid_run_migrates_with_its_journal(
        tmp_path: Path) -> None:
    path = _killed_release_log(tmp_path, trust_journal=True)
    SQLiteLog.open(path).close()
    # Of the letters reserved and unfinished, only person13 had reached DATA.
    assert _states(path) == {"sent": [0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12], "failed": [3],
                             "deferred": [5], "unknown": [13],
                             "pending": list(range(14, 40))}
    assert _query(path, "SELECT id, outcome, ended IS NOT NULL FROM runs") == [(1, "died", 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailer-log.sqlite3"]


def test_a_log_of_the_last_release_without_a_journal_to_trust_loses_nothing(
        tmp_path: Path) -> None:
    path = _killed_release_log(tmp_path, trust_journal=False)
    SQLiteLog.open(path).close()
    # The journal may have lost records (another boot): every unfinished reservation is
    # in doubt; everything else keeps its state.
    assert _states(path) == {"sent": [0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12], "failed": [3],
                             "deferred": [5], "unknown": [13, 14, 15, 16, 17],
                             "pending": list(range(18, 40))}


# -- files that are not a log, or not one this mailer can read ----------------------------


def test_a_log_written_by_a_newer_mailer_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LogError) as caught:
        SQLiteLog.open(path)
    assert str(caught.value) == (f"{path} was written by a newer mailer (schema "
                                 f"{SCHEMA_VERSION + 1}); upgrade "
                                 "mailer to read it")
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_send_log_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "recipients.csv"
    path.write_text("email\nada@example.org\n", encoding="utf-8")
    with pytest.raises(LogError) as caught:
        SQLiteLog.open(path)
    assert str(caught.value) == (
        f"send log {path} is damaged (file is not a database); nothing was sent. Restore it "
        f"from a backup (sqlite3 {path} .recover may rescue its rows); a new log would send "
        "every letter again")
    assert path.read_text(encoding="utf-8") == "email\nada@example.org\n"


def test_an_empty_file_is_not_made_into_a_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    path.touch()
    with pytest.raises(LogError, match=r"is an empty file, not a send log\. If it held"):
        SQLiteLog.open(path)
    assert path.read_bytes() == b""


def test_a_folder_is_not_a_log(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="is a folder; give the path of a file"):
        SQLiteLog.open(tmp_path)


def test_a_log_with_damaged_pages_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    log = SQLiteLog.open(path)
    log.register("c", listed(make_letters(300)), "hash")
    log.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3: 4096 * 3 + 200] = b"\xff" * 200  # garbage over a page of rows
    path.write_bytes(bytes(data))
    with pytest.raises(LogError, match=r"is damaged \(database disk image is malformed"):
        SQLiteLog.open(path)


def test_a_commit_that_fails_in_an_unforeseen_way_fails_the_marks_instead_of_hanging(
        tmp_path: Path) -> None:
    letters = make_letters(1)
    log, run = log_with(tmp_path / "log.sqlite3", letters, campaign="c")
    unwritable = Outcome(letters[0], Status.SENT, 1, 250, "Gr\udcfc\udcdfe")  # lone surrogates

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            recorder.record(unwritable)
            await asyncio.sleep(Recorder.LINGER * 2)
            with pytest.raises(LogError, match="cannot record: 'utf-8' codec"):
                await asyncio.wait_for(recorder.sending(letters[0]), 5)

    asyncio.run(main())
    log.close()
