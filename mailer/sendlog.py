"""The send log: a SQLite file that records every recipient's state, durably, across runs.

One row per (campaign, address) and one per run. Before a letter can reach SMTP DATA it is
reserved, in a commit that reaches the disk (``synchronous=FULL``): a row per batch names the
run and its letters, which are ``sending`` from then until their outcome is written to their
own row. `Recorder` (recorder.py) does that during a run, through a writer process
(logwriter.py). A run killed at any instant leaves letters reserved and unfinished; the next
run settles them with the run's in-flight journal (journal.py): those that may have reached
the server become ``unknown`` and are not sent blindly again, the rest keep their state.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import LogError, LogLocked
from .journal import discard_journal, read_journal
from .logwriter import UNFINISHED, connect, settle, stamp, transaction
from .message import Letter
from .outcome import Status

SCHEMA_VERSION = 4
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE letters (
        campaign TEXT NOT NULL,
        email TEXT NOT NULL,            -- casefolded: the identity of a recipient
        address TEXT NOT NULL,          -- as written in the list
        line INTEGER,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt TEXT,
        last_attempt TEXT,
        message_id TEXT,
        reply_code INTEGER,
        reply_text TEXT,
        message_sha256 TEXT,
        template_sha256 TEXT,
        run_id INTEGER,
        PRIMARY KEY (campaign, email)
    ) WITHOUT ROWID;
    CREATE INDEX letters_status ON letters (campaign, status);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        campaign TEXT NOT NULL,
        started TEXT NOT NULL,
        ended TEXT,
        settings TEXT NOT NULL,
        template_sha256 TEXT,
        outcome TEXT,
        counts TEXT
    );
    """,
    # The state a reserved (`sending`) letter goes back to if it never reached DATA. The
    # status index cost a third of each letter's write; `mailer log` reads little enough.
    2: "ALTER TABLE letters ADD COLUMN prior_status TEXT; DROP INDEX letters_status",
    # A reservation is one row per batch instead of a write to each letter's row, which is
    # then written once, with its outcome. A letter a schema 2 run left `sending` may have
    # reached the server.
    3: """
    CREATE TABLE reservations (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        batch INTEGER NOT NULL,
        emails TEXT NOT NULL,           -- a JSON list of casefolded addresses
        PRIMARY KEY (run_id, batch)
    );
    UPDATE letters SET status = 'unknown' WHERE status = 'sending';
    ALTER TABLE letters DROP COLUMN prior_status;
    """,
    # Rows in list order (a rowid table) instead of address order: a run sends in list order,
    # so a batch's outcomes land on a few neighbouring pages instead of a page each: in a
    # 20,000-letter send the writer's CPU per letter went from 29 µs to 17.
    4: """
    CREATE TABLE letters_in_order (
        campaign TEXT NOT NULL, email TEXT NOT NULL, address TEXT NOT NULL, line INTEGER,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, first_attempt TEXT,
        last_attempt TEXT, message_id TEXT, reply_code INTEGER, reply_text TEXT,
        message_sha256 TEXT, template_sha256 TEXT, run_id INTEGER
    );
    INSERT INTO letters_in_order SELECT * FROM letters ORDER BY campaign, line, email;
    DROP TABLE letters;
    ALTER TABLE letters_in_order RENAME TO letters;
    CREATE UNIQUE INDEX letters_by_address ON letters (campaign, email);
    """,
}


def now() -> str:
    """The current time as stored in the log (UTC, ISO 8601, milliseconds)."""
    return stamp(time.time())


# Status(value) costs a microsecond, and a run looks up every letter's.
_STATUSES = {status.value: status for status in Status}


@dataclass(frozen=True, slots=True)
class Entry:
    """One recipient's row, as `mailer log` shows it."""

    campaign: str
    address: str
    line: int | None
    status: Status
    attempts: int
    first_attempt: str | None
    last_attempt: str | None
    message_id: str | None
    reply_code: int | None
    reply_text: str | None


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    """Counts per state and the span of sending for one campaign."""

    campaign: str
    counts: dict[Status, int]
    first_sent: str | None
    last_sent: str | None

    @property
    def rate_per_minute(self) -> float | None:
        """Average letters per minute between the first and last send."""
        sent = self.counts.get(Status.SENT, 0)
        if not self.first_sent or not self.last_sent or sent < 2:
            return None
        span = (datetime.fromisoformat(self.last_sent)
                - datetime.fromisoformat(self.first_sent)).total_seconds()
        return sent / span * 60 if span > 0 else None


class SendLog:
    """An open send log. `SendLog.open(path)` for reading; `lock()` before sending."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock: FileLock | None = None

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> SendLog:
        """Open (and create or migrate) the log; raise LogError with the reason if it can't.

        Every commit reaches the disk (fsync) before it counts, so the log survives a power
        cut too.
        """
        if not create and not path.exists():
            raise LogError(f"no send log at {path}; nothing has been sent with this log yet")
        db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = connect(path)
            log = cls(path, db)
            log._migrate()
        except LogError:
            # Already says what is wrong (a newer schema): not to be re-worded as an OSError.
            if db is not None:
                db.close()
            raise
        except (sqlite3.Error, OSError) as error:
            if db is not None:
                db.close()
            raise log_error(path, error) from None
        return log

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LogError(f"{self.path} was written by a newer mailer (schema {version}); "
                           "upgrade mailer to read it")
        if version < SCHEMA_VERSION:
            self._db.execute("PRAGMA journal_mode = WAL")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                self._db.executescript(f"BEGIN IMMEDIATE; {_MIGRATIONS[target]}; "
                                       f"PRAGMA user_version = {target}; COMMIT;")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @property
    def journal_path(self) -> Path:
        """Where a run's in-flight journal lives: beside the log."""
        return self.path.with_name(f"{self.path.name}.inflight")

    def lock(self) -> None:
        """Hold the log for one sending process; a second one gets LogLocked."""
        lock = FileLock(f"{self.path}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise LogLocked(f"another mailer send is using {self.path}; wait for it to finish "
                            "(or stop it) before starting another") from None
        except OSError as error:
            raise log_error(self.path, error) from None
        self._lock = lock

    def close(self) -> None:
        """Close the database and release the lock."""
        self._db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- a run ------------------------------------------------------------------------------

    def begin_run(self, campaign: str, settings: dict[str, str], template_sha256: str) -> int:
        """Record a run's start, after settling what a dead run left `sending` (see
        `settle`). Call it holding the lock.

        This is the first write of a run, so a read-only or full disk fails here, before
        anything is sent.
        """
        flown = read_journal(self.journal_path)
        try:
            with transaction(self._db) as db:
                settle(db, flown)
                cursor = db.execute(
                    "INSERT INTO runs (campaign, started, settings, template_sha256) "
                    "VALUES (?, ?, ?, ?)", (campaign, now(), json.dumps(settings),
                                            template_sha256))
        except sqlite3.Error as error:
            raise log_error(self.path, error) from None
        # Settled: the journal has said all it can. (Were the process to die before this, the
        # next run would read it again and find nothing left to settle.)
        discard_journal(self.journal_path)
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def register(self, campaign: str, letters: Iterable[Letter], template_sha256: str, *,
                 keep: Callable[[], bool] = lambda: True) -> int:
        """Add every letter not yet in the log as `pending`, in one transaction; count them.

        If `keep()` is false once the letters are consumed (a problem turned up on the way),
        nothing is added.
        """
        rows = ((campaign, letter.email.casefold(), letter.email, letter.line, Status.PENDING,
                 letter.message_id, template_sha256) for letter in letters)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO letters (campaign, email, address, line, status, "
                    "message_id, template_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                added = self._db.total_changes - before
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT" if keep() else "ROLLBACK")
        except sqlite3.Error as error:
            raise log_error(self.path, error) from None
        return added

    def status(self, campaign: str, email: str) -> Status | None:
        """A recipient's state in a campaign (None if never registered)."""
        return self.statuses(campaign, [email]).get(email.casefold())

    def statuses(self, campaign: str, emails: list[str]) -> dict[str, Status]:
        """The states of these recipients, by casefolded address (the unregistered absent)."""
        # prepare() and a dry run look up every letter: one look-up per address, in order.
        rows = self._db.execute(
            "SELECT l.email, l.status, l.run_id FROM json_each(?) AS j CROSS JOIN letters AS l "
            "ON l.campaign = ? AND l.email = j.value",
            (json.dumps([email.casefold() for email in emails]), campaign))
        # UNFINISHED's test, in Python: reserved by a run, with no outcome from that run.
        reserved = self._reserved_by(campaign)
        return {email: Status.SENDING if reserved.get(email, run_id) != run_id
                else _STATUSES[status] for email, status, run_id in rows}

    def _reserved_by(self, campaign: str) -> dict[str, int]:
        """Every address of `campaign` in a reservation, with the run that made it."""
        rows = self._db.execute(
            "SELECT r.run_id, r.emails FROM reservations AS r JOIN runs ON runs.id = r.run_id "
            "WHERE runs.campaign = ?", (campaign,))
        return {email: run_id for run_id, emails in rows for email in json.loads(emails)}

    def _reserved(self, campaign: str) -> dict[str, Status]:
        """The letters of `campaign` that a run reserved and has not finished (`sending`),
        each with the state its row keeps."""
        return {email: Status(status) for _, name, email, status in self._db.execute(UNFINISHED)
                if name == campaign}

    def end_run(self, run_id: int, outcome: str, counts: dict[str, int]) -> None:
        """Record how a run ended."""
        try:
            with transaction(self._db) as db:
                db.execute("UPDATE runs SET ended = ?, outcome = ?, counts = ? WHERE id = ?",
                           (now(), outcome, json.dumps(counts), run_id))
        except sqlite3.Error as error:
            raise log_error(self.path, error) from None

    # -- review -----------------------------------------------------------------------------

    def campaigns(self) -> list[str]:
        """Every campaign in the log, in the order they were first seen."""
        rows = self._db.execute("SELECT campaign FROM runs GROUP BY campaign ORDER BY MIN(id)")
        return [row[0] for row in rows]

    def summary(self, campaign: str) -> CampaignSummary:
        """Counts per state and first/last send time of a campaign."""
        counts = Counter({Status(s): n for s, n in self._db.execute(
            "SELECT status, COUNT(*) FROM letters WHERE campaign = ? GROUP BY status",
            (campaign,))})
        reserved = Counter(self._reserved(campaign).values())
        counts = counts - reserved + Counter({Status.SENDING: reserved.total()})
        first, last = self._db.execute(
            "SELECT MIN(last_attempt), MAX(last_attempt) FROM letters "
            "WHERE campaign = ? AND status = ?", (campaign, Status.SENT)).fetchone()
        return CampaignSummary(campaign, counts, first, last)

    def entries(self, campaign: str, statuses: Iterable[Status]) -> Iterator[Entry]:
        """Rows of a campaign in these states, in list order."""
        wanted = set(statuses)
        reserved = self._reserved(campaign)
        rows = self._db.execute(
            "SELECT email, campaign, address, line, status, attempts, first_attempt, "
            "last_attempt, message_id, reply_code, reply_text FROM letters WHERE campaign = ? "
            "AND status IN (SELECT value FROM json_each(?)) ORDER BY line, email",
            (campaign, json.dumps([str(s) for s in wanted | set(reserved.values())])))
        for email, *row in rows:
            status = Status.SENDING if email in reserved else Status(row[3])
            if status in wanted:
                yield Entry(row[0], row[1], row[2], status, *row[4:])


def log_error(path: Path, error: BaseException) -> LogError:
    text = str(error)
    lowered = text.lower()
    number = getattr(error, "errno", None)
    read_only = "the file or its folder is read-only; make it writable or choose --log PATH"
    full = "the disk is full; free some space or choose --log PATH on another disk"
    if ("readonly" in lowered or "read-only" in lowered or isinstance(error, PermissionError)
            or number in (errno.EROFS, errno.EACCES, errno.EPERM)):
        hint = read_only
    elif "full" in lowered or number == errno.ENOSPC:
        hint = full
    elif "locked" in lowered:
        hint = "another program holds the database; close it and try again"
    # SQLite reports a read-only folder as "unable to open database file" and a full disk as
    # "disk I/O error" when its shared-memory file cannot be made: look at the disk.
    elif not _writable(path):
        hint = read_only
    elif _nearly_full(path):
        hint = full
    else:
        hint = "choose another file with --log PATH"
    return LogError(f"send log {path}: {text}; {hint}")


def _writable(path: Path) -> bool:
    """Whether the log (if it exists) and its folder can be written (True if unsure)."""
    folder = path.parent
    try:
        return (os.access(folder, os.W_OK)
                and (not path.exists() or os.access(path, os.W_OK)))
    except OSError:
        return True  # no better explanation than SQLite's own


def _nearly_full(path: Path) -> bool:
    """Whether the log's disk has (almost) no room left: less than 1 MiB free."""
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False
