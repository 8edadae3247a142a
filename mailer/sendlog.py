"""The send log: a SQLite file that records every recipient's state, durably, across runs.

One row per (campaign, address) and one per run. Before a letter can reach SMTP DATA it is
reserved: marked ``sending`` (its previous state kept) in a commit that reaches the disk
(``synchronous=FULL``); its outcome is written afterwards. `Recorder` (recorder.py) does that
during a run. A run killed at any instant leaves its reserved letters ``sending``; the next
run settles them with the run's in-flight journal (journal.py): those that may have reached
the server become ``unknown`` and are not sent blindly again, the rest get their state back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import LogError, LogLocked
from .journal import Flown, discard_journal, read_journal
from .message import Letter
from .outcome import Status

SCHEMA_VERSION = 2
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
}


def now() -> str:
    """The current time as stored in the log (UTC, ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# `now()`'s format, for SQLite's strftime() (the writer passes Unix times: cheaper to take).
STAMP = "%Y-%m-%dT%H:%M:%f+00:00"


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
            db = _connect(path)
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

    def connect(self) -> sqlite3.Connection:
        """Another connection to the log, for a writer thread (usable from any thread)."""
        try:
            return _connect(self.path)
        except sqlite3.Error as error:
            raise log_error(self.path, error) from None

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
        rows = self._db.execute(
            "SELECT email, status FROM letters WHERE campaign = ? AND email IN "
            "(SELECT value FROM json_each(?))",
            (campaign, json.dumps([email.casefold() for email in emails])))
        return {email: Status(status) for email, status in rows}

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
        counts = {Status(s): n for s, n in self._db.execute(
            "SELECT status, COUNT(*) FROM letters WHERE campaign = ? GROUP BY status",
            (campaign,))}
        first, last = self._db.execute(
            "SELECT MIN(last_attempt), MAX(last_attempt) FROM letters "
            "WHERE campaign = ? AND status = ?", (campaign, Status.SENT)).fetchone()
        return CampaignSummary(campaign, counts, first, last)

    def entries(self, campaign: str, statuses: Iterable[Status]) -> Iterator[Entry]:
        """Rows of a campaign in these states, in list order."""
        rows = self._db.execute(
            "SELECT campaign, address, line, status, attempts, first_attempt, last_attempt, "
            "message_id, reply_code, reply_text FROM letters WHERE campaign = ? AND status IN "
            "(SELECT value FROM json_each(?)) ORDER BY line, email",
            (campaign, json.dumps([str(s) for s in statuses])))
        for row in rows:
            yield Entry(row[0], row[1], row[2], Status(row[3]), *row[4:])


def settle(db: sqlite3.Connection, flown: Flown | None) -> None:
    """Settle letters left `sending` (within a transaction): those the run's journal says
    reached DATA become `unknown` (the server may have them); the others it reserved go back
    to their state before; with no journal to trust, every one becomes `unknown`."""
    if flown is not None:
        # The journal names every letter the run took to DATA, a whole campaign's worth after
        # a long run; only the few still reserved need looking at.
        reserved = db.execute("SELECT email FROM letters WHERE status = 'sending' AND run_id = ?",
                              (flown.run_id,))
        started = {email: flown.started[email] for (email,) in reserved
                   if email in flown.started}
        db.execute(
            """WITH j(key, at) AS MATERIALIZED (
                    SELECT key, strftime(:format, value, 'unixepoch') FROM json_each(:started))
                UPDATE letters SET (status, prior_status, attempts, first_attempt, last_attempt)
                    = (SELECT 'unknown', NULL, letters.attempts + 1,
                              COALESCE(letters.first_attempt, at), at FROM j WHERE key = email)
                WHERE status = 'sending' AND run_id = :run AND email IN (SELECT key FROM j)""",
            {"started": json.dumps(started), "run": flown.run_id, "format": STAMP})
        db.execute("UPDATE letters SET status = prior_status, prior_status = NULL "
                   "WHERE status = 'sending' AND run_id = ? AND prior_status IS NOT NULL",
                   (flown.run_id,))
    db.execute("UPDATE letters SET status = 'unknown', prior_status = NULL "
               "WHERE status = 'sending'")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA synchronous = FULL")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


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
