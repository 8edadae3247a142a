"""A run's writes to the send log: reservations before letters go out, outcomes after.

The sender reserves letters as it queues them, a batch at a time, so one fsync covers a batch
and is long done when the letter's turn comes; just before DATA it notes the letter in the
in-flight journal (journal.py), a record without fsync. The commits are made by a writer
process (logwriter.py), so the event loop never waits on one, and all that arrives while one
commit runs goes into the next.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import marshal
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import logwriter
from .errors import LogError
from .journal import Flown, Journal, discard_journal
from .message import Letter
from .outcome import Outcome
from .sendlog import SendLog, log_error


@dataclass(slots=True)
class _Batch:
    """What one commit writes: letters to reserve (as reservation `number`), outcomes, and
    the numbers of earlier reservations whose letters all have their outcome on disk. An
    outcome supersedes its letter's reservation if that is not written yet."""

    reserved: dict[str, None] = field(default_factory=dict)  # an ordered set of addresses
    # Each outcome as recorded, with its Unix time; `seal` makes them into `rows`.
    outcomes: list[tuple[Outcome, float]] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    # Not worth a commit of their own: they ride with the next batch.
    released: list[int] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    # Set on a run's last batch: settle the letters reserved and never sent.
    settle: Flown | None = None
    number: int = 0

    def __bool__(self) -> bool:
        return bool(self.reserved or self.outcomes or self.settle)

    def seal(self) -> None:
        """Make each outcome a row: [address, state, SHA-256 of the letter, reply code,
        reply, tries, Unix time]. Done for the whole batch at once, not as each letter
        ends: between two sends its code and data have left the CPU's caches, and that
        cost 11-13 µs a letter in place, against 6-8 for queueing and sealing now
        (bench/README.md)."""
        for outcome, when in self.outcomes:
            letter = outcome.letter
            key = letter.email.casefold()
            self.reserved.pop(key, None)
            self.rows.append([key, outcome.status.value,
                              hashlib.sha256(letter.data).hexdigest(), outcome.code,
                              outcome.reply[:1000], outcome.attempts, when])

    def frame(self) -> bytes:
        """The sealed batch as logwriter.py reads it (plain str, int and float: what marshal
        takes)."""
        reserved = json.dumps(list(self.reserved)) if self.reserved else ""
        return marshal.dumps((self.number, reserved, self.rows, self.released,
                              None if self.settle is None else tuple(self.settle)))


class Recorder:
    """Records one run of one campaign; `finish()` when the run is over, `close()` always."""

    # Outcomes ride with the next reservation, or go at most this many seconds later. A run
    # killed in between leaves those letters `sending` and in the journal, so `unknown`:
    # it can cost a resend question, never a letter.
    LINGER = 0.05

    def __init__(self, log: SendLog, campaign: str, run_id: int) -> None:
        self._path = log.path
        self._run_id = run_id
        try:
            self._journal = Journal(log.journal_path, run_id)
        except OSError as error:
            raise log_error(log.journal_path, error) from None
        try:
            self._writer = _Writer(log.path, campaign, run_id)
        except OSError as error:
            self._journal.close()
            raise LogError(f"send log {log.path}: cannot start its writer process: {error}"
                           ) from None
        self._batch = _Batch()
        # Reservations written, by number, with how many of their letters have no outcome
        # on disk yet; and each such letter's reservation.
        self._reservations = 0
        self._unfinished: dict[int, int] = {}
        self._reservation_of: dict[str, int] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._lingering: asyncio.TimerHandle | None = None
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
        try:
            self._journal.started(letter.email.casefold(), time.time())
        except OSError as error:
            raise log_error(self._journal.path, error) from None

    def record(self, outcome: Outcome) -> None:
        """Queue a letter's outcome (written with the next batch; never blocks)."""
        self._batch.outcomes.append((outcome, time.time()))
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
        """End the run's record: write every outcome, settle the letters reserved and never
        finished (those that reached DATA become `unknown`, the others keep their state),
        remove the journal."""
        # Those the journal names whose outcome is not on disk (or could not be written)
        # are in doubt, like those never answered.
        run_id, started = self._journal.flown()
        self._batch.settle = Flown(run_id, {key: when for key, when in started.items()
                                            if key in self._reservation_of})
        try:
            await self.flush()
        finally:
            self.close()
        discard_journal(self._journal.path)

    def close(self) -> None:
        """Stop the writer and close the journal (what is not written stays unsent: the next
        run settles it from the journal)."""
        self._writer.stop()
        self._journal.close()

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
                batch.seal()
                self._number(batch)
                try:
                    await self._writer.write(batch)
                except Exception as error:
                    self.error = log_error(self._path, error)
                else:
                    self._written(batch)
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

    def _number(self, batch: _Batch) -> None:
        """Give a batch's reservation its number, and count its letters as unfinished."""
        if batch.reserved:
            self._reservations += 1
            batch.number = self._reservations
            self._unfinished[batch.number] = len(batch.reserved)
            self._reservation_of.update(dict.fromkeys(batch.reserved, batch.number))

    def _written(self, batch: _Batch) -> None:
        """Its outcomes are on disk: a reservation whose letters all have theirs can go (the
        log's readers look at every one left)."""
        for key, *_ in batch.rows:
            number = self._reservation_of.pop(key, None)
            if number is not None:
                self._unfinished[number] -= 1
                if not self._unfinished[number]:
                    del self._unfinished[number]
                    self._batch.released.append(number)


class _Writer:
    """The writer process (logwriter.py) and the pipes to it: batches go down as frames,
    one answer line comes back for each, in order."""

    # How long the writer may take to finish its last commit once told to stop.
    STOP_TIMEOUT = 10.0

    def __init__(self, path: Path, campaign: str, run_id: int) -> None:
        # A session of its own: Ctrl-C in the terminal is for the sender, which stops
        # cleanly and still needs its writer. -I -S: nothing but the standard library.
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", logwriter.__file__, str(path), campaign, str(run_id),
             str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._frames = self._process.stdin
        self._answers = self._process.stdout.fileno()
        self._received = b""
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, batch: _Batch) -> asyncio.Future[None]:
        """Send a batch; the future resolves once it is committed (or raises why not)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._answers, self._on_answers)
        done = self._loop.create_future()
        frame = batch.frame()
        # A blocking write: one batch is in flight at a time, and the writer reads it whole.
        self._frames.write(len(frame).to_bytes(4) + frame)
        self._frames.flush()
        self._waiting.append(done)
        return done

    def _on_answers(self) -> None:
        self._take(os.read(self._answers, 1 << 16))

    def _take(self, data: bytes) -> None:
        """Resolve the batches `data` answers; at the end of the answers (b""), fail those
        left unanswered."""
        if data:
            *answers, self._received = (self._received + data).split(b"\n")
            for answer in answers:
                _resolve(self._waiting.popleft(),
                         sqlite3.OperationalError(answer[1:].decode()) if answer else None)
            return
        self._stop_reading()
        gone = sqlite3.OperationalError(
            f"the send log's writer process stopped (exit status {self._process.poll()})")
        while self._waiting:
            _resolve(self._waiting.popleft(), gone)

    def _stop_reading(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._answers)
        self._loop = None

    def stop(self) -> None:
        """Let the writer finish the batch it has, end it, and resolve what it answered."""
        with contextlib.suppress(OSError):  # it is gone already
            self._frames.close()
        try:
            self._process.wait(self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        assert self._process.stdout is not None
        if self._loop is not None and not self._loop.is_closed():
            self._take(self._process.stdout.read())
            self._take(b"")
        self._loop = None
        self._process.stdout.close()


def _resolve(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
