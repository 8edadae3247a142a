"""A run's writes to the send log: reservations before letters go out, outcomes after.

The sender reserves letters as it queues them, a batch at a time, so one fsync covers a batch
and is long done when the letter's turn comes; just before DATA it notes the letter in the
in-flight journal (journal.py), a write without fsync. Everything else is written by one
thread with a connection of its own, so the event loop never waits on a commit, and all that
arrives while one commit runs goes into the next.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LogError
from .journal import Flown, Journal, discard_journal
from .message import Letter
from .outcome import Outcome
from .sendlog import STAMP, SendLog, log_error, settle, transaction

# One statement per commit, its rows passed as JSON. sqlite3 lets go of the GIL around each
# statement it runs, and each time it takes it back it may wait for the busy event loop:
# `executemany`, a statement per row, measured a dozen context switches per letter.
# A letter is reserved (state `sending`: the row keeps the state it had, as prior_status,
# and its last reply) or has an outcome. The look-ups go by PRIMARY KEY (SQLite plans
# UPDATE ... FROM as a scan of the campaign instead).
_WRITE = """
    WITH w(key, state, digest, code, reply, tries, at) AS MATERIALIZED (
        SELECT value, 'sending', NULL, NULL, NULL, 0, NULL FROM json_each(:reserved)
        UNION ALL
        SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
               strftime(:format, value ->> 6, 'unixepoch') FROM json_each(:outcomes))
    UPDATE letters SET (prior_status, status, message_sha256, reply_code, reply_text, attempts,
                        first_attempt, last_attempt, run_id) = (
        SELECT CASE state WHEN 'sending' THEN letters.status END, state,
               COALESCE(digest, letters.message_sha256),
               CASE state WHEN 'sending' THEN letters.reply_code ELSE code END,
               CASE state WHEN 'sending' THEN letters.reply_text ELSE reply END,
               letters.attempts + tries, COALESCE(letters.first_attempt, at),
               COALESCE(at, letters.last_attempt), :run
        FROM w WHERE key = letters.email)
    WHERE campaign = :campaign AND email IN (SELECT key FROM w)"""


@dataclass(slots=True)
class _Batch:
    """What one commit writes: letters to reserve, and outcomes, each [address, state,
    SHA-256 of the letter, reply code, reply, tries, Unix time]. An outcome supersedes its
    letter's reservation if that is not written yet: the row goes straight to its end."""

    reserved: dict[str, None] = field(default_factory=dict)  # an ordered set of addresses
    outcomes: list[list[Any]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    # Set on a run's last batch: settle the letters reserved and never sent.
    settle: Flown | None = None

    def __bool__(self) -> bool:
        return bool(self.reserved or self.outcomes or self.settle)


class Recorder:
    """Records one run of one campaign; `finish()` when the run is over, `close()` always."""

    # Outcomes ride with the next reservation, or go at most this many seconds later. A run
    # killed in between leaves those letters `sending` and in the journal, so `unknown`:
    # it can cost a resend question, never a letter.
    LINGER = 0.05

    def __init__(self, log: SendLog, campaign: str, run_id: int) -> None:
        self._path = log.path
        self._campaign = campaign
        self._run_id = run_id
        self._db = log.connect()
        try:
            self._journal = Journal(log.journal_path, run_id)
        except OSError as error:
            self._db.close()
            raise log_error(log.journal_path, error) from None
        self._batch = _Batch()
        self._flushing: asyncio.Task[None] | None = None
        self._lingering: asyncio.TimerHandle | None = None
        self._thread: _WriterThread | None = None
        # Letters that went to DATA and have no outcome yet, with when.
        self._in_flight: dict[str, float] = {}
        self.error: LogError | None = None

    def reserve(self, letters: Sequence[Letter]) -> asyncio.Future[None]:
        """Mark these letters `sending`, keeping the state they had; the future resolves
        once that is on disk. None of them may reach DATA before."""
        self._batch.reserved.update((letter.email.casefold(), None) for letter in letters)
        waiter = asyncio.get_running_loop().create_future()
        self._batch.waiters.append(waiter)
        self._schedule()
        return waiter

    def started(self, letter: Letter) -> None:
        """Note, just before its DATA, that `letter` may reach the server from now on.

        Raises LogError if the journal cannot be written: the letter must not go then.
        """
        stamp = time.time()
        email = letter.email.casefold()
        try:
            self._journal.started(email, stamp)
        except OSError as error:
            raise log_error(self._journal.path, error) from None
        self._in_flight[email] = stamp

    def record(self, outcome: Outcome) -> None:
        """Queue a letter's outcome (written with the next batch; never blocks)."""
        letter = outcome.letter
        key = letter.email.casefold()
        self._in_flight.pop(key, None)
        self._batch.reserved.pop(key, None)
        # Hashed here, not in the writer: hashlib lets go of the GIL for a letter's size,
        # and taking it back from the busy event loop costs more than the hash.
        digest = hashlib.sha256(letter.data).hexdigest()
        self._batch.outcomes.append([key, outcome.status, digest, outcome.code,
                                     outcome.reply[:1000], outcome.attempts, time.time()])
        if self._flushing is None:
            self._linger()

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._flushing is not None or self._batch:
            if self._flushing is None:
                self._schedule()
            assert self._flushing is not None
            await asyncio.shield(self._flushing)
        if self.error is not None:
            raise self.error

    async def finish(self) -> None:
        """End the run's record: write every outcome, give letters reserved but never sent
        their state back (those still in flight become `unknown`), remove the journal."""
        self._batch.settle = Flown(self._run_id, dict(self._in_flight))
        try:
            await self.flush()
        finally:
            self.close()
        discard_journal(self._journal.path)

    def close(self) -> None:
        """Stop the writer thread and close the files (what is not written stays unsent:
        the next run settles it from the journal)."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self._journal.close()
        self._db.close()

    def _linger(self) -> None:
        if self._lingering is None:
            self._lingering = asyncio.get_running_loop().call_later(self.LINGER, self._schedule)

    def _schedule(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._flushing is None and self._batch:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while True:
                batch, self._batch = self._batch, _Batch()
                if self._thread is None:
                    self._thread = _WriterThread(self._db, self._campaign, self._run_id)
                try:
                    await self._thread.write(batch)
                except Exception as error:
                    self.error = log_error(self._path, error)
                for waiter in batch.waiters:
                    if waiter.done():
                        continue
                    if self.error is not None:
                        waiter.set_exception(self.error)
                    else:
                        waiter.set_result(None)
                # Only a reservation (or the end) is worth the next commit at once.
                if not (self._batch.waiters or self._batch.settle):
                    break
        finally:
            self._flushing = None
            if self._batch:
                self._linger()


class _WriterThread(threading.Thread):
    """Commits batches one after another; a long-lived thread hands a batch over in a
    fraction of what `asyncio.to_thread` costs.

    While it runs, Python's switch interval is cut to half a millisecond: the thread needs
    the GIL a few times per commit, and with the default 5 ms it waited up to that long for
    the busy event loop each time, until reservations fell behind the senders (measured at
    4 connections: 29 waits for a reservation, 0.75 s in all, against 9 and 0.02 s).
    """

    SWITCH_INTERVAL = 0.0005

    def __init__(self, db: sqlite3.Connection, campaign: str, run_id: int) -> None:
        super().__init__(name="mailer-send-log", daemon=True)
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, self.SWITCH_INTERVAL))
        self._db = db
        self._where = {"campaign": campaign, "run": run_id, "format": STAMP}
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
        sys.setswitchinterval(self._switch_interval)

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch, loop, done = item
            try:  # anything raised goes to the waiting loop; this thread must not die
                rows = {**self._where, "reserved": json.dumps(list(batch.reserved)),
                        "outcomes": json.dumps(batch.outcomes)}
                if batch.settle is None:
                    self._db.execute(_WRITE, rows)  # one statement: its own transaction
                else:
                    with transaction(self._db) as db:
                        db.execute(_WRITE, rows)
                        settle(db, batch.settle)
            except Exception as error:
                loop.call_soon_threadsafe(_resolve, done, error)
            else:
                loop.call_soon_threadsafe(_resolve, done, None)


def _resolve(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
