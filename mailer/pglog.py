"""The send log in a PostgreSQL database, shared by several workers that send one campaign
together; sendlog.py says what every store guarantees, and this one adds:

1. Any number of runs may be live at once (each a row of ``runs`` with its host, pid and
   heartbeat). Runs of one campaign must send the same list and template: `begin_run`
   refuses a worker whose list or template differs from that of the campaign's live runs.
2. A run sends only the letters it holds: `claim` takes due letters no other live run
   holds, with ``SKIP LOCKED``, so two workers never take the same letter nor wait on each
   other. The schema itself refuses a ``sending`` mark by a run that does not hold the
   letter (``in_flight_is_held``).
3. A claim is given up in the transaction that ends its run, whether the run ended itself
   (`end_run`) or was found dead by another (a heartbeat over `STALE` old, or a pid gone on
   this host): then its ``sending`` letters become ``unknown`` and the rest are free.
   Every commit of every worker looks for dead co-workers, so a killed worker's letters are
   settled about a minute after it died while the others carry on.
4. Every claim and commit of a run renews its heartbeat first, in the same transaction,
   holding that row's lock until it commits, so that no one can end the run meanwhile. A
   run found ended can claim, mark or record nothing more (LeaseLost).

A run's times (started, heartbeat, ended) are the database server's clock, the one clock
every worker shares, so that a machine whose clock is off cannot find its co-workers silent.
A letter's times are the sending machine's, as the log's text (`sendlog.stamp`), so that
`mailer log` shows what it shows for SQLite. Commits are synchronous (on the server's disk
before they return). A commit or claim is one round trip to the server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from .errors import ConfigError, LeaseLost, LogError
from .outcome import Outcome, Status
from .sendlog import (
    STALE,
    CampaignSummary,
    Entry,
    Holder,
    Listed,
    Run,
    Worker,
    pace,
    stamp,
    stamp_or,
)
from .settings import hide_password

# This store's own numbering: 1 is SQLite's schema 7 plus claims and list hashes.
SCHEMA_VERSION = 1
# The key space of this log's advisory locks (any 32-bit number other programs don't use).
_LOCKS = 0x6D61696C
# Defaults a log URL may override: a server that vanishes from the network stops the run
# with a LogError within about a minute, rather than when TCP gives up, hours later.
_CONNECTION = {"connect_timeout": "10", "application_name": "mailer", "keepalives_idle": "20",
               "keepalives_interval": "5", "keepalives_count": "4",
               "tcp_user_timeout": "40000"}

# The constraint that keeps a run from marking a letter it does not hold.
_HELD = "in_flight_is_held"
_SCHEMA = (
    "CREATE TABLE mailer_schema (version integer NOT NULL)",
    """CREATE TABLE letters (
        campaign text NOT NULL,
        email text NOT NULL,            -- casefolded: the identity of a recipient
        address text NOT NULL,          -- as written in the list
        line integer, status text NOT NULL, attempts integer NOT NULL DEFAULT 0,
        first_attempt text, last_attempt text, message_id text, reply_code integer,
        reply_text text, message_sha256 text, template_sha256 text,
        run_id bigint,                  -- the run that last marked or tried it
        bounce_status text, bounce_text text, bounced_at text, reply text, reply_at text,
        reply_from text, reply_subject text, paper_at text, paper_pages integer,
        claimed_by bigint,              -- the live run that holds it, if any
        registered bigint GENERATED ALWAYS AS IDENTITY,  -- SQLite's rowid: list order
        CONSTRAINT letters_by_address PRIMARY KEY (campaign, email),
        CONSTRAINT """ + _HELD + """ CHECK (status <> 'sending'
                                            OR (claimed_by IS NOT NULL AND claimed_by = run_id))
    )""",
    "CREATE INDEX letters_held ON letters (claimed_by) WHERE claimed_by IS NOT NULL",
    # For reading the mailbox: a bounce or reply names its letter or its recipient.
    "CREATE INDEX letters_by_message_id ON letters (message_id)",
    "CREATE INDEX letters_by_email ON letters (email)",
    """CREATE TABLE runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, campaign text NOT NULL,
        started timestamptz NOT NULL,
        ended timestamptz,              -- NULL while it is live (or died unnoticed)
        settings jsonb NOT NULL, template_sha256 text, outcome text, counts jsonb,
        host text, pid integer, heartbeat timestamptz NOT NULL,
        account text,                   -- MAILER_FROM via the server: whose quota it used
        list_sha256 text
    )""",
    "CREATE INDEX runs_live ON runs (heartbeat) WHERE ended IS NULL",
    """CREATE TABLE mailbox (
        folder text PRIMARY KEY, uidvalidity bigint NOT NULL, last_uid bigint NOT NULL,
        read_at text NOT NULL
    )""",
)

_RENEW = "UPDATE runs SET heartbeat = clock_timestamp() WHERE id = %s AND ended IS NULL"
# The letters of the runs in `ended` (a CTE): those in flight are in doubt, the rest free.
_GIVE_BACK = """
    settled AS (UPDATE letters SET status = 'unknown', attempts = attempts + 1,
        claimed_by = NULL WHERE claimed_by IN (SELECT id FROM ended) AND status = 'sending'
        RETURNING 1),
    released AS (UPDATE letters SET claimed_by = NULL
        WHERE claimed_by IN (SELECT id FROM ended) AND status <> 'sending')
    SELECT array(SELECT id FROM ended ORDER BY id), (SELECT count(*) FROM settled)"""
# Ends the runs found dead: silent too long, or `gone` (a pid that no longer exists). One a
# co-worker is committing for (its row is locked) is alive, and one being ended is skipped.
_BURY = """WITH dead AS (SELECT id FROM runs WHERE ended IS NULL
        AND (heartbeat < clock_timestamp() - %(stale)s OR id = ANY(%(gone)s))
        FOR UPDATE SKIP LOCKED),
    ended AS (UPDATE runs SET ended = clock_timestamp(), outcome = 'died'
        WHERE id IN (SELECT id FROM dead) RETURNING id),""" + _GIVE_BACK  # noqa: S608 (constants)
_END = """WITH ended AS (UPDATE runs SET ended = clock_timestamp(), outcome = %(outcome)s,
        counts = %(counts)s WHERE id = %(run)s AND ended IS NULL RETURNING id),""" + _GIVE_BACK  # noqa: S608
# A letter sent again (--retry-failed) after a bounce is not bounced until another comes.
_MARK = """UPDATE letters SET status = 'sending', run_id = %(run)s,
    first_attempt = COALESCE(first_attempt, %(now)s), last_attempt = %(now)s,
    bounce_status = NULL, bounce_text = NULL, bounced_at = NULL
    WHERE campaign = %(campaign)s AND email = ANY(%(emails)s)"""
# Stored times compare as text (LEAST skips NULLs); a mark may have come after the first try.
_OUTCOME = """UPDATE letters SET status = %(status)s, attempts = attempts + %(attempts)s,
    first_attempt = LEAST(first_attempt, %(first)s), last_attempt = %(last)s,
    reply_code = %(code)s, reply_text = %(reply)s, message_sha256 = %(sha256)s,
    run_id = %(run)s
    WHERE campaign = %(campaign)s AND email = %(email)s AND claimed_by = %(run)s"""
# A letter another run may have sent (unknown, failed, bounced) is due again only as it was
# before this run began (--resend-unknown, --retry-failed): not if a co-worker tried it since.
_CLAIM = """UPDATE letters SET claimed_by = %(run)s WHERE (campaign, email) IN (
        SELECT campaign, email FROM letters WHERE campaign = %(campaign)s
        AND email = ANY(%(emails)s) AND status = ANY(%(statuses)s)
        AND (claimed_by IS NULL OR claimed_by = %(run)s)
        AND (status IN ('pending', 'deferred') OR run_id IS NULL OR run_id IN (
            SELECT id FROM runs WHERE ended < (SELECT started FROM runs WHERE id = %(run)s)))
        AND EXISTS (SELECT FROM runs WHERE id = %(run)s AND ended IS NULL)
        FOR UPDATE SKIP LOCKED)
    RETURNING email"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _reported(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Turn psycopg's errors into a LogError saying what to do (never the password)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except psycopg.Error as error:
            log = args[0]
            assert isinstance(log, PostgresLog)
            raise log._error(error) from None

    return wrapper


class PostgresLog:
    """An open PostgreSQL send log (one connection, used by one thread at a time).
    `PostgresLog.open(url)`; `close()` when done."""

    shared = True  # the workers of a campaign send it together

    def __init__(self, location: str, secrets: Sequence[str],
                 connection: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.location = location
        self._secrets = secrets
        self._db = connection

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> PostgresLog:
        """Connect to the log at `url` (``postgresql://user:password@host:port/database``)
        and create its tables in that database if it has none; LogError if it can't."""
        location, secrets = hide_password(url)
        if url.partition("://")[0] not in ("postgresql", "postgres"):
            raise ConfigError(f"{location} is not a PostgreSQL URL: write it as "
                              "postgresql://user:password@host:port/database")
        try:
            params = {**_CONNECTION, **conninfo_to_dict(url)}
        except psycopg.Error:  # its message quotes the URL, password and all
            raise ConfigError(f"{location} is not a PostgreSQL URL: write it as "
                              "postgresql://user:password@host:port/database (with %xx for "
                              "special characters in the password)") from None
        try:
            db = psycopg.connect(make_conninfo("", **params), autocommit=True)
        except psycopg.Error as error:
            raise _connect_error(location, secrets, params, error) from None
        log = cls(location, secrets, db)
        try:
            db.execute("SET synchronous_commit = on")
            log._prepare(create)
        except psycopg.Error as error:
            failure = log._error(error)
            db.close()
            raise failure from None
        except BaseException:
            db.close()
            raise
        return log

    def _prepare(self, create: bool) -> None:
        with self._db.transaction():
            # One opener at a time makes the tables: two workers may start together.
            self._db.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCKS,))
            if self._one("SELECT to_regclass('mailer_schema')") is None:
                if not create:
                    raise LogError(f"no send log in {self.location}; nothing has been sent "
                                   "with this log yet")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO mailer_schema VALUES (%s)", (SCHEMA_VERSION,))
            version = self._one("SELECT version FROM mailer_schema")
        if version != SCHEMA_VERSION:
            raise LogError(f"{self.location} was written by a newer mailer (schema {version}); "
                           "upgrade mailer to read it")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A transaction; one inside another is a savepoint of it."""
        try:
            with self._db.transaction():
                yield
        except psycopg.Error as error:
            raise self._error(error) from None

    @contextlib.contextmanager
    def _one_trip(self) -> Iterator[None]:
        """A transaction (or a part of the caller's) sent in one round trip: its statements'
        results are read after it ends (psycopg's own transaction() waits for the server at
        BEGIN and COMMIT too)."""
        own = self._db.info.transaction_status == TransactionStatus.IDLE
        try:
            with self._db.pipeline():
                if own:
                    self._db.execute("BEGIN")
                yield
                if own:
                    self._db.execute("COMMIT")
        except BaseException:
            if own and not self._db.closed \
                    and self._db.info.transaction_status != TransactionStatus.IDLE:
                self._db.execute("ROLLBACK")
            raise

    def _row(self, query: str, parameters: Sequence[object] | Mapping[str, object]
             ) -> tuple[Any, ...]:
        row = self._db.execute(query, parameters).fetchone()
        assert row is not None, "a query that gives one row"
        return row

    def _one(self, query: str, *parameters: object) -> Any:
        return self._row(query, parameters)[0]

    # -- a run ------------------------------------------------------------------------------

    @_reported
    def begin_run(self, campaign: str, settings: Mapping[str, str], template_sha256: str,
                  account: str = "", list_sha256: str = "") -> Run:
        """Start a worker's run of `campaign`, alongside the live runs of any campaign.
        ConfigError if a live run of the campaign sends another list or template (the first
        run's rule); runs found dead are ended and what they held given back."""
        with self.atomic():
            # One starter at a time per campaign, so two firsts cannot differ unseen.
            self._db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                             (_LOCKS, campaign))
            now = float(self._one("SELECT extract(epoch FROM clock_timestamp())"))
            dead: dict[int, tuple[Holder, str]] = {}
            for row in self._db.execute(
                    "SELECT id, host, pid, started, heartbeat, campaign, list_sha256, "
                    "template_sha256 FROM runs WHERE ended IS NULL ORDER BY id").fetchall():
                holder = Holder(row[0], row[1], row[2], _text(row[3]), _text(row[4]))
                because = holder.why_stale(now)
                if because:
                    dead[holder.run_id] = (holder, because)
                elif row[5] == campaign:
                    _same_letters(campaign, holder, (list_sha256, template_sha256), row[6:])
            # Silence is judged again by the statement (a run may renew meanwhile).
            gone = [run_id for run_id, (holder, _) in dead.items() if holder.process_gone()]
            ended, settled = self._row(_BURY, {"stale": timedelta(seconds=STALE),
                                               "gone": gone})
            run_id = self._one(
                "INSERT INTO runs (campaign, started, heartbeat, settings, template_sha256, "
                "host, pid, account, list_sha256) VALUES (%s, clock_timestamp(), "
                "clock_timestamp(), %s, %s, %s, %s, %s, %s) RETURNING id",
                campaign, Jsonb(dict(settings)), template_sha256, socket.gethostname(),
                os.getpid(), account, list_sha256)
        last = max((i for i in ended if i in dead), default=None)
        replaced: tuple[Holder | None, str] = (None, "") if last is None else dead[last]
        return Run(run_id, campaign, *replaced, settled)

    @_reported
    def claim(self, run: Run, emails: Sequence[str], statuses: Collection[Status]) -> set[str]:
        """Of these recipients of the run's campaign, the ones this run now holds: those in
        one of `statuses` that no other live run holds (one another run is claiming just
        now is left to it), once the co-workers found dead are ended. LeaseLost if this run
        was found dead."""
        with self._one_trip():
            renewed = self._db.execute(_RENEW, (run.id,))
            # A worker with nothing left looks again: that is when a dead one's letters free.
            self._db.execute(_BURY, {"stale": timedelta(seconds=STALE), "gone": []})
            claimed = self._db.execute(_CLAIM, {
                "run": run.id, "campaign": run.campaign,
                "emails": [email.casefold() for email in emails],
                "statuses": [str(status) for status in statuses]})
        if renewed.rowcount == 0:
            raise self._lease_lost(run)
        return {email for (email,) in claimed.fetchall()}

    def ensure_room(self, letters: int) -> None:
        """Nothing to check: the server's disk cannot be seen from here, and a full one
        fails the commit that meets it (LogError), before its letter goes."""

    @_reported
    def register(self, campaign: str, letters: Iterable[Listed], template_sha256: str) -> int:
        listed = list(letters)
        return self._db.execute(
            "INSERT INTO letters (campaign, email, address, line, status, message_id, "
            "template_sha256) SELECT %s, email, address, line, 'pending', message_id, %s "
            "FROM unnest(%s::text[], %s::text[], %s::integer[], %s::text[]) "
            "AS l (email, address, line, message_id) ON CONFLICT DO NOTHING",
            (campaign, template_sha256, [letter.email.casefold() for letter in listed],
             [letter.email for letter in listed], [letter.line for letter in listed],
             [letter.message_id for letter in listed])).rowcount

    @_reported
    def statuses(self, campaign: str, emails: Sequence[str]) -> dict[str, Status]:
        rows = self._db.execute(
            "SELECT email, status FROM letters WHERE campaign = %s AND email = ANY(%s)",
            (campaign, [email.casefold() for email in emails]))
        return {email: Status(status) for email, status in rows}

    @_reported
    def commit(self, run: Run, sending: Sequence[str], outcomes: Sequence[Outcome],
               when: float) -> None:
        """In one transaction, at Unix time `when`: renew the run's heartbeat (LeaseLost if
        the run was found dead), end the co-workers found dead, mark these addresses
        ``sending`` (LeaseLost unless this run holds each), record the outcomes of letters
        it holds."""
        now = stamp(when)
        try:
            with self._one_trip():
                renewed = self._db.execute(_RENEW, (run.id,))
                self._db.execute(_BURY, {"stale": timedelta(seconds=STALE), "gone": []})
                if sending:
                    self._db.execute(_MARK, {"run": run.id, "now": now, "campaign": run.campaign,
                                             "emails": [key.casefold() for key in sending]})
                self._db.cursor().executemany(_OUTCOME, [
                    {"status": o.status.value, "attempts": o.attempts,
                     "first": stamp_or(o.first_try, now), "last": stamp_or(o.last_try, now),
                     "code": o.code, "reply": o.reply[:1000], "sha256": o.sha256 or None,
                     "run": run.id, "campaign": run.campaign,
                     "email": o.letter.email.casefold()} for o in outcomes])
        except psycopg.errors.CheckViolation as error:
            if error.diag.constraint_name != _HELD:
                raise
            if self._one("SELECT ended FROM runs WHERE id = %s", run.id) is not None:
                raise self._lease_lost(run) from None
            raise LeaseLost(f"send log {self.location}: run {run.id} was about to send a "
                            "letter it had not claimed, and stopped (a fault in mailer: "
                            "please report it)") from None
        if renewed.rowcount == 0:
            raise self._lease_lost(run)

    def _lease_lost(self, run: Run) -> LeaseLost:
        return LeaseLost(f"send log {self.location}: this run (run {run.id}) was found "
                         "silent for over a minute and ended by another (was the computer "
                         "asleep, or the network down?); it stopped sending. Its letters in "
                         "flight are recorded as unknown, and the others are left to the "
                         "other workers")

    @_reported
    def sent_since(self, account: str, since: float) -> list[float]:
        rows = self._db.execute(
            "SELECT l.last_attempt FROM letters AS l JOIN runs AS r ON r.id = l.run_id "
            "WHERE r.account = %s AND l.status IN ('sent', 'unknown', 'sending') "
            "AND l.last_attempt >= %s", (account, stamp(since)))
        return [datetime.fromisoformat(when).timestamp() for (when,) in rows]

    @_reported
    def end_run(self, run: Run, outcome: str, counts: Mapping[str, int]) -> None:
        """Record how the run ended and give back what it holds (what it left in flight
        becomes unknown)."""
        self._db.execute(_END, {"run": run.id, "outcome": outcome, "counts": Jsonb(dict(counts))})

    @_reported
    def workers(self, campaign: str) -> list[Worker]:
        """The runs of `campaign`, the first first, each with the letters it last tried (by
        their state now)."""
        counts: dict[int, dict[Status, int]] = {}
        rates: dict[int, float | None] = {}
        for run_id, status, count, first, last in self._db.execute(
                "SELECT run_id, status, count(*), min(last_attempt), max(last_attempt) "
                "FROM letters WHERE campaign = %s AND run_id IS NOT NULL "
                "GROUP BY run_id, status", (campaign,)):
            counts.setdefault(run_id, {})[Status(status)] = count
            if status == Status.SENT:
                rates[run_id] = pace(count, first, last)
        return [Worker(run_id, host, pid, account or "", _text(started), _text(heartbeat),
                       None if ended is None else _text(ended), outcome,
                       counts.get(run_id, {}), rates.get(run_id))
                for run_id, host, pid, account, started, heartbeat, ended, outcome
                in self._db.execute("SELECT id, host, pid, account, started, heartbeat, "
                                    "ended, outcome FROM runs WHERE campaign = %s ORDER BY id",
                                    (campaign,))]

    # -- after a letter went ------------------------------------------------------------------

    @_reported
    def record_paper(self, campaign: str, copies: Iterable[tuple[Listed, int]],
                     when: float) -> None:
        made = list(copies)
        with self.atomic():
            self.register(campaign, [listed for listed, _ in made], "")
            self._db.execute(
                "UPDATE letters SET paper_at = %s, paper_pages = c.pages "
                "FROM unnest(%s::text[], %s::integer[]) AS c (email, pages) "
                "WHERE campaign = %s AND letters.email = c.email",
                (stamp(when), [listed.email.casefold() for listed, _ in made],
                 [pages for _, pages in made], campaign))

    @_reported
    def find(self, message_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        rows = self._db.execute(
            "SELECT message_id, campaign, email FROM letters WHERE message_id = ANY(%s) "
            "AND attempts > 0", (list(message_ids),))
        return {message_id: (campaign, email) for message_id, campaign, email in rows}

    @_reported
    def sent_to(self, email: str, before: float) -> list[str]:
        rows = self._db.execute(
            "SELECT campaign FROM letters WHERE email = %s AND attempts > 0 "
            "AND status IN ('sent', 'unknown', 'bounced') AND last_attempt <= %s "
            "ORDER BY last_attempt DESC", (email.casefold(), stamp(before)))
        return [campaign for (campaign,) in rows]

    @_reported
    def record_bounce(self, campaign: str, email: str, status: str, text: str,
                      when: float) -> bool:
        return self._db.execute(
            "UPDATE letters SET status = 'bounced', bounce_status = %s, bounce_text = %s, "
            "bounced_at = %s WHERE campaign = %s AND email = %s "
            "AND status IN ('sent', 'unknown')",
            (status, text[:1000], stamp(when), campaign, email.casefold())).rowcount > 0

    @_reported
    def record_reply(self, campaign: str, email: str, automatic: bool, when: str,
                     sender: str, subject: str) -> bool:
        return self._db.execute(
            "UPDATE letters SET reply = %(kind)s, reply_at = %(when)s, reply_from = %(sender)s, "
            "reply_subject = %(subject)s WHERE campaign = %(campaign)s AND email = %(email)s "
            "AND (reply IS NULL OR (reply = 'auto-replied' AND %(kind)s = 'replied'))",
            {"kind": "auto-replied" if automatic else "replied", "when": when,
             "sender": sender[:300], "subject": subject[:300], "campaign": campaign,
             "email": email.casefold()}).rowcount > 0

    @_reported
    def mailbox_mark(self, folder: str) -> tuple[int, int] | None:
        row = self._db.execute("SELECT uidvalidity, last_uid FROM mailbox WHERE folder = %s",
                               (folder,)).fetchone()
        return None if row is None else (row[0], row[1])

    @_reported
    def set_mailbox_mark(self, folder: str, uidvalidity: int, last_uid: int,
                         when: float) -> None:
        self._db.execute(
            "INSERT INTO mailbox VALUES (%s, %s, %s, %s) ON CONFLICT (folder) DO UPDATE SET "
            "uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid, "
            "read_at = excluded.read_at", (folder, uidvalidity, last_uid, stamp(when)))

    @_reported
    def first_sent(self, campaign: str | None = None) -> str | None:
        first: str | None = self._one(
            "SELECT min(first_attempt) FROM letters WHERE attempts > 0 "
            "AND (%s::text IS NULL OR campaign = %s)", campaign, campaign)
        return first

    # -- review -----------------------------------------------------------------------------

    @_reported
    def campaigns(self) -> list[str]:
        # From the letters: a print registers a campaign's letters without a run.
        rows = self._db.execute("SELECT campaign FROM letters GROUP BY campaign "
                                "ORDER BY min(registered)")
        return [row[0] for row in rows]

    @_reported
    def summary(self, campaign: str) -> CampaignSummary:
        counts = {Status(s): n for s, n in self._db.execute(
            "SELECT status, count(*) FROM letters WHERE campaign = %s GROUP BY status",
            (campaign,))}
        first, last, on_paper, replied, auto_replied = self._row(
            "SELECT min(last_attempt) FILTER (WHERE status = 'sent'), "
            "max(last_attempt) FILTER (WHERE status = 'sent'), count(paper_at), "
            "count(*) FILTER (WHERE reply = 'replied'), "
            "count(*) FILTER (WHERE reply = 'auto-replied') FROM letters WHERE campaign = %s",
            (campaign,))
        return CampaignSummary(campaign, counts, first, last, on_paper, replied, auto_replied)

    @_reported
    def entries(self, campaign: str, statuses: Iterable[Status]) -> Iterator[Entry]:
        # Read whole before the first is yielded: the caller may query the log meanwhile.
        rows = self._db.execute(
            "SELECT campaign, address, line, status, attempts, first_attempt, "
            "last_attempt, message_id, reply_code, reply_text, bounce_status, "
            "bounce_text, bounced_at, reply, reply_at, reply_from, reply_subject, "
            "paper_at, paper_pages FROM letters WHERE campaign = %s AND status = ANY(%s) "
            "ORDER BY line, email", (campaign, [str(s) for s in statuses])).fetchall()
        return (Entry(row[0], row[1], row[2], Status(row[3]), *row[4:]) for row in rows)

    # -- errors -----------------------------------------------------------------------------

    def _error(self, error: psycopg.Error) -> LogError:
        """What an error of the server or the connection means to the user, and the cure."""
        text = _scrub(_first_line(error), self._secrets)
        state = error.sqlstate or ""
        if self._db.closed or state.startswith(("08", "57P")):
            return LogError(f"lost the connection to the send log at {self.location} ({text}); "
                            "check that the server is up and reachable, then run mailer send "
                            "again: it carries on where this run stopped")
        if state == "42501":  # insufficient_privilege
            user = self._db.info.user
            return LogError(f"send log {self.location}: the user {user!r} lacks a permission "
                            f"there ({text}); ask the database's owner to grant it (a new log "
                            f"needs GRANT CREATE ON SCHEMA public TO {user})")
        if state == "53100":  # disk_full
            return LogError(f"send log {self.location}: the database server's disk is full; "
                            "ask its administrator to free some space, then run again")
        if state == "42P07":  # duplicate_table: a table of the log's name, not the log's
            return LogError(f"{self.location} holds tables of another program ({text}); give "
                            "the send log a database of its own")
        if state == "25006":  # read_only_sql_transaction
            return LogError(f"send log {self.location} is a read-only copy of the database "
                            "(a standby); give the URL of the primary server")
        return LogError(f"send log {self.location}: {text}")


def _same_letters(campaign: str, holder: Holder, mine: tuple[str, str],
                  theirs: Sequence[str]) -> None:
    """ConfigError unless this worker's list and template are those `holder` is sending."""
    names = ("recipient list", "template")
    differ = [name for name, a, b in zip(names, mine, theirs, strict=True) if a != b]
    if differ:
        what = " and the ".join(differ)
        raise ConfigError(
            f"the {what} {'differ from the ones' if len(differ) > 1 else 'differs from the one'}"
            f" {holder.describe()} is sending for campaign {campaign!r}: give every worker "
            f"the same {' and '.join(differ)}")


def _text(moment: datetime) -> str:
    return stamp(moment.timestamp())


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n")[0]


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _connect_error(location: str, secrets: Sequence[str], params: Mapping[str, object],
                   error: psycopg.Error) -> LogError:
    """Why the log's server would not let us in, in words that say what to change. libpq
    gives no SQLSTATE for a failed connection, so its words are read."""
    text = _scrub(_first_line(error), secrets)
    reason = text.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
    lowered = reason.lower()
    if "password" in lowered or "authentication" in lowered or "role" in lowered:
        return LogError(f"the PostgreSQL server of the send log {location} refused its user "
                        f"({reason}); check the user name and password in the log's URL")
    if "pg_hba.conf" in lowered:
        return LogError(f"the PostgreSQL server of the send log {location} does not let this "
                        f"user in from this machine ({reason}); ask its administrator to allow "
                        "it (in pg_hba.conf)")
    if "database" in lowered and "does not exist" in lowered:
        name = str(params.get("dbname", ""))
        return LogError(f"the PostgreSQL server of the send log {location} has no database "
                        f"{name!r}; create it (createdb {name}), or correct the log's URL")
    return LogError(f"cannot reach the PostgreSQL server of the send log {location} "
                    f"({reason}); check that it is running and that the host and port in "
                    "the log's URL are right")
