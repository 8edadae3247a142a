"""The send log: a SQLite file that records every recipient's state, durably, across runs.

One row per (campaign, address) and one per run. A letter is marked ``sending`` and committed
(fsync'd: ``synchronous=FULL``) before its SMTP DATA, and its outcome afterwards, so a run
killed at any instant leaves every in-flight letter ``sending``; the next run turns those
into ``unknown`` instead of sending them blindly again. Commits are grouped: all the marks
that arrive while one commit runs go into the next, so the cost is one fsync per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import queue
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from .errors import LogError, LogLocked
from .message import Letter
from .outcome import Outcome, Status

SCHEMA_VERSION = 1
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
}


def now() -> str:
    """The current time as stored in the log (UTC, ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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

    def __init__(self, path: Path, connection: sqlite3.Connection, sync: str = "full") -> None:
        self.path = path
        self.sync = sync
        self._db = connection
        self._lock: FileLock | None = None
        self._recorders: list[Recorder] = []

    @classmethod
    def open(cls, path: Path, *, create: bool = True,
             sync: Literal["full", "normal"] = "full") -> SendLog:
        """Open (and create or migrate) the log; raise LogError with the reason if it can't.

        `sync="full"` makes every commit reach the disk (fsync) before a letter goes out: the
        log then survives a power cut too. "normal" survives a killed process but not a
        power cut or an operating-system crash, and costs far less per letter.
        """
        if not create and not path.exists():
            raise LogError(f"no send log at {path}; nothing has been sent with this log yet")
        db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = _connect(path, sync)
            log = cls(path, db, sync)
            log._migrate()
        except LogError:
            # Already says what is wrong (a newer schema): not to be re-worded as an OSError.
            if db is not None:
                db.close()
            raise
        except (sqlite3.Error, OSError) as error:
            if db is not None:
                db.close()
            raise _log_error(path, error) from None
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

    def lock(self) -> None:
        """Hold the log for one sending process; a second one gets LogLocked."""
        lock = FileLock(f"{self.path}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise LogLocked(f"another mailer send is using {self.path}; wait for it to finish "
                            "(or stop it) before starting another") from None
        except OSError as error:
            raise _log_error(self.path, error) from None
        self._lock = lock

    def close(self) -> None:
        """Close the database (and any recorder's) and release the lock."""
        for recorder in self._recorders:
            recorder.close()
        self._db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- a run ------------------------------------------------------------------------------

    def begin_run(self, campaign: str, settings: dict[str, str], template_sha256: str) -> int:
        """Record a run's start; turn letters a dead run left `sending` into `unknown`.

        This is the first write of a run, so a read-only or full disk fails here, before
        anything is sent.
        """
        try:
            with _transaction(self._db) as db:
                db.execute("UPDATE letters SET status = ? WHERE campaign = ? AND status = ?",
                           (Status.UNKNOWN, campaign, Status.SENDING))
                cursor = db.execute(
                    "INSERT INTO runs (campaign, started, settings, template_sha256) "
                    "VALUES (?, ?, ?, ?)", (campaign, now(), json.dumps(settings),
                                            template_sha256))
        except sqlite3.Error as error:
            raise _log_error(self.path, error) from None
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
            raise _log_error(self.path, error) from None
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
            with _transaction(self._db) as db:
                db.execute("UPDATE runs SET ended = ?, outcome = ?, counts = ? WHERE id = ?",
                           (now(), outcome, json.dumps(counts), run_id))
        except sqlite3.Error as error:
            raise _log_error(self.path, error) from None

    def recorder(self, campaign: str, run_id: int) -> Recorder:
        """The object the sender hands marks and outcomes to, for this run.

        It writes through a connection of its own, in a thread of its own, so that the event
        loop never waits for a commit's fsync (nor its look-ups behind one).
        """
        try:
            writer = _connect(self.path, self.sync)
        except sqlite3.Error as error:
            raise _log_error(self.path, error) from None
        recorder = Recorder(writer, self.path, campaign, run_id)
        self._recorders.append(recorder)
        return recorder

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


_MARK = ("UPDATE letters SET status = 'sending', attempts = attempts + 1, "
         "first_attempt = COALESCE(first_attempt, ?), last_attempt = ?, message_sha256 = ?, "
         "run_id = ? WHERE campaign = ? AND email = ?")
_OUTCOME = ("UPDATE letters SET status = ?, reply_code = ?, reply_text = ?, "
            "attempts = attempts + ?, first_attempt = COALESCE(first_attempt, ?), "
            "last_attempt = ?, run_id = ? WHERE campaign = ? AND email = ?")


@dataclass(slots=True)
class _Batch:
    """Rows for one commit. Marks are written before outcomes: a letter's outcome always
    follows its marks, so this order is the order things happened in."""

    marks: list[tuple[Any, ...]] = field(default_factory=list)
    outcomes: list[tuple[Any, ...]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.marks or self.outcomes)


class Recorder:
    """Group-commits a run's marks and outcomes; `sending` resolves once its mark is durable."""

    # Outcomes need not wait for their own commit: they ride with the next `sending` mark,
    # or go at most this many seconds later. A run killed in between leaves those letters
    # `sending` (so `unknown`), never `pending`: it can cost a resend question, not a letter.
    LINGER = 0.05

    def __init__(self, db: sqlite3.Connection, path: Path, campaign: str, run_id: int) -> None:
        self._db = db
        self._path = path
        self._campaign = campaign
        self._run_id = run_id
        self._batch = _Batch()
        self._flushing: asyncio.Task[None] | None = None
        self._lingering: asyncio.TimerHandle | None = None
        self._thread: _WriterThread | None = None
        # Letters whose `sending` mark already counted one attempt (only those in flight).
        self._marked: Counter[str] = Counter()
        self.error: LogError | None = None

    def sending(self, letter: Letter) -> asyncio.Future[None]:
        """Mark `letter` as being sent; the future resolves once that is on disk."""
        stamp = now()
        self._marked[letter.email] += 1
        self._batch.marks.append((stamp, stamp, letter.sha256, self._run_id, self._campaign,
                                  letter.email.casefold()))
        waiter = asyncio.get_running_loop().create_future()
        self._batch.waiters.append(waiter)
        self._schedule()
        return waiter

    def record(self, outcome: Outcome) -> None:
        """Queue a letter's outcome (written with the next batch; never blocks)."""
        email = outcome.letter.email
        uncounted = outcome.attempts - self._marked.pop(email, 0)
        stamp = now()
        self._batch.outcomes.append((outcome.status, outcome.code, outcome.reply[:1000],
                                     uncounted, stamp, stamp, self._run_id, self._campaign,
                                     email.casefold()))
        if self._lingering is None and self._flushing is None:
            self._lingering = asyncio.get_running_loop().call_later(self.LINGER, self._schedule)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._flushing is not None or self._batch:
            if self._flushing is None:
                self._schedule()
            assert self._flushing is not None
            await asyncio.shield(self._flushing)
        if self.error is not None:
            raise self.error

    def _schedule(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._flushing is None and self._batch:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, _Batch()
                if self._thread is None:
                    self._thread = _WriterThread(self._db)
                try:
                    await self._thread.write(batch)
                except sqlite3.Error as error:
                    self.error = _log_error(self._path, error)
                for waiter in batch.waiters:
                    if waiter.done():
                        continue
                    if self.error is not None:
                        waiter.set_exception(self.error)
                    else:
                        waiter.set_result(None)
        finally:
            self._flushing = None

    def close(self) -> None:
        """Stop the writer thread and close the connection (after `flush`)."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self._db.close()


class _WriterThread(threading.Thread):
    """Commits batches one after another; a long-lived thread hands a batch over in a
    fraction of what `asyncio.to_thread` costs, which matters once per letter."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(name="mailer-send-log", daemon=True)
        self._db = db
        self._queue: queue.SimpleQueue[
            tuple[_Batch, asyncio.AbstractEventLoop, asyncio.Future[None]] | None
        ] = queue.SimpleQueue()
        self.start()

    def write(self, batch: _Batch) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((batch, loop, done))
        return done

    def stop(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch, loop, done = item
            try:
                with _transaction(self._db) as db:
                    db.executemany(_MARK, batch.marks)
                    db.executemany(_OUTCOME, batch.outcomes)
            except sqlite3.Error as error:
                loop.call_soon_threadsafe(_settle, done, error)
            else:
                loop.call_soon_threadsafe(_settle, done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute(f"PRAGMA synchronous = {'NORMAL' if sync == 'normal' else 'FULL'}")
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _log_error(path: Path, error: BaseException) -> LogError:
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
