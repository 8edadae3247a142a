"""The send log in one SQLite file, the default store; sendlog.py says what it guarantees.

WAL with ``synchronous=FULL``: a commit returns once it is on disk, and `mailer log` can read
while a run writes. The lease is a row of ``runs``, taken in an IMMEDIATE transaction
(SQLite's own write lock on the file), so every name that reaches the file, a symlink, a
hard link or another spelling of its path, meets the same lease.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from .errors import LeaseLost, LogError, LogLocked
from .outcome import Outcome, Status
from .sendlog import CampaignSummary, Entry, Holder, Listed, Run, Worker, stamp, stamp_or

SCHEMA_VERSION = 9
# Room a run needs on the log's disk: the write-ahead log's most, and each letter's outcome.
_ROOM = 8 << 20
_ROOM_PER_LETTER = 2048

_SCHEMA = (
    """CREATE TABLE letters (
        campaign TEXT NOT NULL,
        email TEXT NOT NULL,            -- casefolded: the identity of a recipient
        address TEXT NOT NULL,          -- as written in the list
        line INTEGER, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt TEXT, last_attempt TEXT, message_id TEXT, reply_code INTEGER,
        reply_text TEXT, message_sha256 TEXT, template_sha256 TEXT,
        run_id INTEGER                  -- the run that last marked or tried it
    )""",
    "CREATE UNIQUE INDEX letters_by_address ON letters (campaign, email)",
    "CREATE INDEX letters_in_flight ON letters (run_id) WHERE status = 'sending'",
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY, campaign TEXT NOT NULL, started TEXT NOT NULL,
        ended TEXT,                     -- NULL while it holds the lease (or died holding it)
        settings TEXT NOT NULL, template_sha256 TEXT, outcome TEXT, counts TEXT,
        host TEXT, pid INTEGER, heartbeat TEXT,
        account TEXT                    -- MAILER_FROM via the server: whose quota it used
    )""",
)
_STEPS = {
    # Schema 7: what became of a letter after the server took it (a bounce, a reply, read in
    # the sender's mailbox), its paper copy, and how far each mailbox folder has been read.
    7: (
        "ALTER TABLE letters ADD COLUMN bounce_status TEXT",
        "ALTER TABLE letters ADD COLUMN bounce_text TEXT",
        "ALTER TABLE letters ADD COLUMN bounced_at TEXT",
        "ALTER TABLE letters ADD COLUMN reply TEXT",  # 'replied' or 'auto-replied'
        "ALTER TABLE letters ADD COLUMN reply_at TEXT",
        "ALTER TABLE letters ADD COLUMN reply_from TEXT",
        "ALTER TABLE letters ADD COLUMN reply_subject TEXT",
        "ALTER TABLE letters ADD COLUMN paper_at TEXT",
        "ALTER TABLE letters ADD COLUMN paper_pages INTEGER",
        """CREATE TABLE mailbox (
            folder TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL,
            read_at TEXT NOT NULL
        )""",
    ),
    # Schema 8: a run records its list's hash, which the workers of a shared log compare.
    8: ("ALTER TABLE runs ADD COLUMN list_sha256 TEXT",),
    # Schema 9: reading the mailbox finds letters by Message-ID and by address (a scan of
    # the whole log for each message before: 4.4 s per 1,000 bounces in a 20,000-row log).
    9: ("CREATE INDEX letters_by_message_id ON letters (message_id)",
        "CREATE INDEX letters_by_email ON letters (email)"),
}
# Schema 6: a run names its account, for the daily limit.
_ACCOUNTS = ("""UPDATE runs SET account = json_extract(settings, '$.from_address') || ' via ' ||
    json_extract(settings, '$.smtp_host') WHERE account IS NULL""")
# An earlier schema's rows, copied into schema 5's tables (in list order).
_COPY = (
    """INSERT INTO letters SELECT campaign, email, address, line, status, attempts,
        first_attempt, last_attempt, message_id, reply_code, reply_text, message_sha256,
        template_sha256, run_id FROM old_letters ORDER BY campaign, line, email""",
    """INSERT INTO runs (id, campaign, started, ended, settings, template_sha256, outcome,
        counts) SELECT id, campaign, started, ended, settings, template_sha256, outcome,
        counts FROM old_runs""",
)

# A letter sent again (--retry-failed) after a bounce is not bounced until another comes.
_MARK = """UPDATE letters SET status = 'sending', run_id = ?1,
    first_attempt = COALESCE(first_attempt, ?2), last_attempt = ?2, bounce_status = NULL,
    bounce_text = NULL, bounced_at = NULL WHERE campaign = ?3 AND email = ?4"""
# Stored times compare as text; a mark may have come after the letter's first try.
_OUTCOME = """UPDATE letters SET status = ?1, attempts = attempts + ?2,
    first_attempt = MIN(COALESCE(first_attempt, ?3), ?3), last_attempt = ?4, reply_code = ?5,
    reply_text = ?6, message_sha256 = ?7, run_id = ?8
    WHERE campaign = ?9 AND email = ?10"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _reported(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Turn SQLite's and the system's errors into a LogError naming the log and the cure."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except LogError:
            raise
        except (sqlite3.Error, OSError) as error:
            log = args[0]
            assert isinstance(log, SQLiteLog)
            raise log_error(log.path, error) from None

    return wrapper


class SQLiteLog:
    """An open SQLite send log. `SQLiteLog.open(path)`; `close()` when done."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.location = str(path)
        self.shared = False
        self._db = connection

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> SQLiteLog:
        """Open (and create or migrate) the log; LogError with the reason if it can't."""
        if path.is_dir():
            raise LogError(f"send log {path} is a folder; give the path of a file (--log)")
        if not path.exists() and not create:
            raise LogError(f"no send log at {path}; nothing has been sent with this log yet")
        if path.exists() and path.stat().st_size == 0:
            raise LogError(f"send log {path} is an empty file, not a send log. If it held "
                           "your campaign's log, restore it from a backup (a new log would "
                           "send every letter again); if not, delete it")
        db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The connection moves to the run's recorder thread while a send runs.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA synchronous = FULL")
            log = cls(path, db)
            log._migrate()
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"database disk image is malformed ({problems[0]})")
        except (sqlite3.Error, OSError) as error:
            if db is not None:
                db.close()
            if isinstance(error, LogError):
                raise
            raise log_error(path, error) from None
        return log

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE); one inside another joins it."""
        if self._db.in_transaction:
            yield
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except LogError:
            raise
        except (sqlite3.Error, OSError) as error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise log_error(self.path, error) from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LogError(f"{self.path} was written by a newer mailer (schema {version}); "
                           "upgrade mailer to read it")
        if version == SCHEMA_VERSION:
            return
        self._db.execute("PRAGMA journal_mode = WAL")
        with self.atomic():
            if version == 5:
                self._db.execute("ALTER TABLE runs ADD COLUMN account TEXT")
            elif 0 < version < 5:
                self._upgrade(version)
            elif version == 0:
                for statement in _SCHEMA:  # schema 6's tables; the steps bring them on
                    self._db.execute(statement)
            self._db.execute(_ACCOUNTS)
            for step in range(max(version, 6) + 1, SCHEMA_VERSION + 1):
                for statement in _STEPS[step]:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for leftover in (".inflight", ".lock"):  # schema 4's files beside the log
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + leftover).unlink(missing_ok=True)

    def _upgrade(self, version: int) -> None:
        """Bring a log of an earlier release (schema 1 to 4) to schema 6's tables (the steps
        after it follow). What its runs left
        in flight becomes `unknown`, unless schema 4's in-flight journal, written since
        this machine booted, proves a reserved letter never reached DATA; runs that never
        recorded their end are ended; the rows keep their states, in list order."""
        db = self._db
        if version >= 3:
            trusted, started = _old_journal(self.path.with_name(self.path.name + ".inflight"))
            unfinished = db.execute(
                "SELECT DISTINCT r.run_id, l.campaign, l.email FROM reservations AS r "
                "JOIN runs ON runs.id = r.run_id CROSS JOIN json_each(r.emails) AS j "
                "JOIN letters AS l ON l.campaign = runs.campaign AND l.email = j.value "
                "WHERE l.run_id IS NOT r.run_id").fetchall()
            db.executemany(
                "UPDATE letters SET status = 'unknown', run_id = ?, attempts = attempts + 1 "
                "WHERE campaign = ? AND email = ?",
                [row for row in unfinished if row[0] != trusted or row[2] in started])
            db.execute("DROP TABLE reservations")
        db.execute("UPDATE letters SET status = 'unknown' WHERE status = 'sending'")
        db.execute("UPDATE runs SET ended = ?, outcome = 'died' WHERE ended IS NULL",
                   (stamp(time.time()),))
        for table in ("letters", "runs"):
            db.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
        for index in ("letters_by_address", "letters_status"):
            db.execute(f"DROP INDEX IF EXISTS {index}")
        for statement in (*_SCHEMA, *_COPY):
            db.execute(statement)
        for table in ("letters", "runs"):
            db.execute(f"DROP TABLE old_{table}")

    # -- a run ------------------------------------------------------------------------------

    @_reported
    def begin_run(self, campaign: str, settings: Mapping[str, str], template_sha256: str,
                  account: str = "", list_sha256: str = "") -> Run:
        now = time.time()
        replaced: Holder | None = None
        because = ""
        with self.atomic():
            for row in self._db.execute(
                    "SELECT id, host, pid, started, heartbeat FROM runs "
                    "WHERE ended IS NULL AND heartbeat IS NOT NULL").fetchall():
                holder = Holder(*row)
                because = holder.why_stale(now)
                if not because:
                    raise LogLocked(f"another mailer send is using {self.path}: "
                                    f"{holder.describe()}; wait for it to finish, or stop it, "
                                    "before starting another")
                self._db.execute("UPDATE runs SET ended = ?, outcome = 'died' WHERE id = ?",
                                 (stamp(now), holder.run_id))
                replaced = holder
            # Holding the lease, every `sending` row is a dead run's.
            settled = self._db.execute("UPDATE letters SET status = 'unknown', "
                                       "attempts = attempts + 1 WHERE status = 'sending'")
            cursor = self._db.execute(
                "INSERT INTO runs (campaign, started, settings, template_sha256, host, pid, "
                "heartbeat, account, list_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?2, ?7, ?8)",
                (campaign, stamp(now), json.dumps(dict(settings)), template_sha256,
                 socket.gethostname(), os.getpid(), account, list_sha256))
        assert cursor.lastrowid is not None
        return Run(cursor.lastrowid, campaign, replaced, because, settled.rowcount)

    def claim(self, run: Run, emails: Sequence[str], statuses: Collection[Status]
              ) -> set[str]:
        # The run holds the whole log: every due letter is its own.
        return {email for email, status in self.statuses(run.campaign, emails).items()
                if status in statuses}

    def workers(self, campaign: str) -> list[Worker]:
        return []  # one run at a time: `mailer log` shows no workers

    @_reported
    def ensure_room(self, letters: int) -> None:
        need = _ROOM + letters * _ROOM_PER_LETTER
        free = shutil.disk_usage(self.path.resolve().parent).free
        if free < need:
            raise LogError(f"send log {self.path}: its disk has {free / 1e6:.1f} MB free, and "
                           f"this run needs about {need / 1e6:.0f} MB to record its letters; "
                           "free some space, then run mailer send again")

    @_reported
    def register(self, campaign: str, letters: Iterable[Listed], template_sha256: str) -> int:
        with self.atomic():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO letters (campaign, email, address, line, status, "
                "message_id, template_sha256) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                ((campaign, letter.email.casefold(), letter.email, letter.line,
                  letter.message_id, template_sha256) for letter in letters))
            return self._db.total_changes - before

    @_reported
    def statuses(self, campaign: str, emails: Sequence[str]) -> dict[str, Status]:
        rows = self._db.execute(
            "SELECT email, status FROM letters WHERE campaign = ? "
            "AND email IN (SELECT value FROM json_each(?))",
            (campaign, json.dumps([email.casefold() for email in emails])))
        return {email: Status(status) for email, status in rows}

    @_reported
    def commit(self, run: Run, sending: Sequence[str], outcomes: Sequence[Outcome],
               when: float) -> None:
        now = stamp(when)
        with self.atomic():
            renewed = self._db.execute(
                "UPDATE runs SET heartbeat = ? WHERE id = ? AND ended IS NULL", (now, run.id))
            if renewed.rowcount == 0:
                raise self._lease_lost(run)
            self._db.executemany(_MARK, ((run.id, now, run.campaign, key) for key in sending))
            self._db.executemany(_OUTCOME, (
                (o.status.value, o.attempts, stamp_or(o.first_try, now),
                 stamp_or(o.last_try, now), o.code, o.reply[:1000],
                 o.sha256 or None, run.id, run.campaign, o.letter.email.casefold())
                for o in outcomes))

    def _lease_lost(self, run: Run) -> LeaseLost:
        row = self._db.execute("SELECT id, host, pid, started, heartbeat FROM runs "
                               "WHERE id > ? ORDER BY id DESC LIMIT 1", (run.id,)).fetchone()
        taker = f" by {Holder(*row).describe()}" if row else ""
        return LeaseLost(f"send log {self.path}: this run's hold on the log was taken over"
                         f"{taker}, which found this run silent for over a minute (was the "
                         "computer asleep?); this run stopped sending. Its letters in flight "
                         "are recorded as unknown")

    @_reported
    def sent_since(self, account: str, since: float) -> list[float]:
        rows = self._db.execute(
            "SELECT l.last_attempt FROM letters AS l JOIN runs AS r ON r.id = l.run_id "
            "WHERE r.account = ? AND l.status IN ('sent', 'unknown', 'sending') "
            "AND l.last_attempt >= ?", (account, stamp(since)))
        return [datetime.fromisoformat(when).timestamp() for (when,) in rows]

    @_reported
    def end_run(self, run: Run, outcome: str, counts: Mapping[str, int]) -> None:
        with self.atomic():
            self._db.execute("UPDATE runs SET ended = ?, outcome = ?, counts = ? "
                             "WHERE id = ? AND ended IS NULL",
                             (stamp(time.time()), outcome, json.dumps(dict(counts)), run.id))

    # -- after a letter went ------------------------------------------------------------------

    @_reported
    def record_paper(self, campaign: str, copies: Iterable[tuple[Listed, int]],
                     when: float) -> None:
        with self.atomic():
            for listed, pages in copies:
                self.register(campaign, [listed], "")
                self._db.execute("UPDATE letters SET paper_at = ?, paper_pages = ? "
                                 "WHERE campaign = ? AND email = ?",
                                 (stamp(when), pages, campaign, listed.email.casefold()))

    @_reported
    def find(self, message_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        rows = self._db.execute(
            "SELECT message_id, campaign, email FROM letters WHERE message_id IN "
            "(SELECT value FROM json_each(?)) AND attempts > 0", (json.dumps(list(message_ids)),))
        return {message_id: (campaign, email) for message_id, campaign, email in rows}

    @_reported
    def sent_to(self, email: str, before: float) -> list[str]:
        rows = self._db.execute(
            "SELECT campaign FROM letters WHERE email = ? AND attempts > 0 "
            "AND status IN ('sent', 'unknown', 'bounced') AND last_attempt <= ? "
            "ORDER BY last_attempt DESC", (email.casefold(), stamp(before)))
        return [campaign for (campaign,) in rows]

    @_reported
    def record_bounce(self, campaign: str, email: str, status: str, text: str,
                      when: float) -> bool:
        with self.atomic():
            changed = self._db.execute(
                "UPDATE letters SET status = 'bounced', bounce_status = ?, bounce_text = ?, "
                "bounced_at = ? WHERE campaign = ? AND email = ? "
                "AND status IN ('sent', 'unknown')",
                (status, text[:1000], stamp(when), campaign, email.casefold()))
            return changed.rowcount > 0

    @_reported
    def record_reply(self, campaign: str, email: str, automatic: bool, when: str,
                     sender: str, subject: str) -> bool:
        kind = "auto-replied" if automatic else "replied"
        with self.atomic():
            changed = self._db.execute(
                "UPDATE letters SET reply = ?1, reply_at = ?2, reply_from = ?3, "
                "reply_subject = ?4 WHERE campaign = ?5 AND email = ?6 AND (reply IS NULL "
                "OR (reply = 'auto-replied' AND ?1 = 'replied'))",
                (kind, when, sender[:300], subject[:300], campaign, email.casefold()))
            return changed.rowcount > 0

    @_reported
    def mailbox_mark(self, folder: str) -> tuple[int, int] | None:
        row = self._db.execute("SELECT uidvalidity, last_uid FROM mailbox WHERE folder = ?",
                               (folder,)).fetchone()
        return None if row is None else (row[0], row[1])

    @_reported
    def set_mailbox_mark(self, folder: str, uidvalidity: int, last_uid: int,
                         when: float) -> None:
        with self.atomic():
            self._db.execute("INSERT OR REPLACE INTO mailbox VALUES (?, ?, ?, ?)",
                             (folder, uidvalidity, last_uid, stamp(when)))

    @_reported
    def first_sent(self, campaign: str | None = None) -> str | None:
        first = self._db.execute(
            "SELECT MIN(first_attempt) FROM letters WHERE attempts > 0 AND (?1 IS NULL OR "
            "campaign = ?1)", (campaign,)).fetchone()[0]
        return None if first is None else str(first)

    # -- review -----------------------------------------------------------------------------

    @_reported
    def campaigns(self) -> list[str]:
        # From the letters: a print registers a campaign's letters without a run.
        rows = self._db.execute("SELECT campaign FROM letters GROUP BY campaign "
                                "ORDER BY MIN(rowid)")
        return [row[0] for row in rows]

    @_reported
    def summary(self, campaign: str) -> CampaignSummary:
        counts = Counter({Status(s): n for s, n in self._db.execute(
            "SELECT status, COUNT(*) FROM letters WHERE campaign = ? GROUP BY status",
            (campaign,))})
        first, last = self._db.execute(
            "SELECT MIN(last_attempt), MAX(last_attempt) FROM letters "
            "WHERE campaign = ? AND status = 'sent'", (campaign,)).fetchone()
        on_paper, replied, auto_replied = self._db.execute(
            "SELECT COUNT(paper_at), COUNT(*) FILTER (WHERE reply = 'replied'), "
            "COUNT(*) FILTER (WHERE reply = 'auto-replied') FROM letters WHERE campaign = ?",
            (campaign,)).fetchone()
        return CampaignSummary(campaign, dict(counts), first, last, on_paper, replied,
                               auto_replied)

    def entries(self, campaign: str, statuses: Iterable[Status]) -> Iterator[Entry]:
        try:
            rows = self._db.execute(
                "SELECT campaign, address, line, status, attempts, first_attempt, "
                "last_attempt, message_id, reply_code, reply_text, bounce_status, "
                "bounce_text, bounced_at, reply, reply_at, reply_from, reply_subject, "
                "paper_at, paper_pages FROM letters "
                "WHERE campaign = ? AND status IN (SELECT value FROM json_each(?)) "
                "ORDER BY line, email", (campaign, json.dumps([str(s) for s in statuses])))
            for row in rows:
                yield Entry(row[0], row[1], row[2], Status(row[3]), *row[4:])
        except sqlite3.Error as error:
            raise log_error(self.path, error) from None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _old_journal(path: Path) -> tuple[int | None, set[str]]:
    """Schema 4's in-flight journal: the run it speaks for and the addresses it took to
    DATA, if it can be trusted (whole, and written since this machine booted)."""
    try:
        header, *records = path.read_bytes().rpartition(b"\n")[0].decode("ascii").split("\n")
    except (OSError, UnicodeDecodeError, ValueError):
        return None, set()
    match = re.fullmatch(r"mailer in-flight journal 1 run=([0-9]+) boot=(\S+)", header)
    if match is None or match[2] != _boot_id():
        return None, set()
    fields = [record.split(" ") for record in records]
    if any(len(f) != 2 or not re.fullmatch(r"[0-9]+\.[0-9]+", f[1]) for f in fields):
        return None, set()
    return int(match[1]), {f[0] for f in fields}


def log_error(path: Path, error: BaseException) -> LogError:
    """A LogError saying what is wrong with the log's file or disk and what to do; never
    the advice to start another log, which would send every letter again."""
    text = str(error)
    lowered = text.lower()
    number = getattr(error, "errno", None)
    if "malformed" in lowered or "not a database" in lowered:
        return LogError(f"send log {path} is damaged ({text}); nothing was sent. Restore it "
                        f"from a backup (sqlite3 {path} .recover may rescue its rows); a new "
                        "log would send every letter again")
    if ("readonly" in lowered or "read-only" in lowered or isinstance(error, PermissionError)
            or number in (errno.EROFS, errno.EACCES, errno.EPERM)):
        hint = "the file or its folder is read-only; make it writable, then run again"
    elif "full" in lowered or number == errno.ENOSPC:
        hint = "the disk is full; free some space, then run again"
    elif "locked" in lowered or "busy" in lowered:
        hint = "another program is writing it; try again when it is done"
    elif _links(path) > 1:
        hint = ("the file has another name (a hard link), and SQLite cannot share a log "
                "between two names; use the name the log was first used by")
    # SQLite says "unable to open database file" for a read-only folder and "disk I/O error"
    # when it cannot make its shared-memory file on a full disk: look at the disk.
    elif not _writable(path):
        hint = "the file or its folder is read-only; make it writable, then run again"
    elif _nearly_full(path):
        hint = "the disk is full; free some space, then run again"
    else:
        return LogError(f"send log {path}: {text}")
    return LogError(f"send log {path}: {text}; {hint}")


def _links(path: Path) -> int:
    try:
        return path.stat().st_nlink
    except OSError:
        return 1


def _writable(path: Path) -> bool:
    try:
        return (os.access(path.parent, os.W_OK)
                and (not path.exists() or os.access(path, os.W_OK)))
    except OSError:
        return True


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False
