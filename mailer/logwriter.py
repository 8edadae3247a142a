"""The send log's writer: a process of its own that commits a run's batches, in order.

Why a process: sqlite3 lets go of the GIL around every statement it runs, so a writer thread
had to win the GIL back from the busy event loop for each row, and its SQL and the sender's
Python took turns on one interpreter. A process runs plain per-row statements at full speed
and leaves the event loop alone (bench/README.md has the figures).

It must never write for a sender that is gone: once a run is dead the next run settles its
reserved letters, and a reservation committed after that would stay ``sending``. So the
writer dies with its parent (Linux: PR_SET_PDEATHSIG) and, everywhere, checks that its parent
is still there before each commit.

Run as a script (``python -I -S logwriter.py LOG CAMPAIGN RUN PARENT_PID``), it imports only
the standard library, to start in milliseconds. Each frame on stdin is a 4-byte length and
a marshalled batch, the arguments of `write` after the run's; for each the
writer answers one line on stdout: empty once the batch is on disk, else ``!`` and the
error. `sendlog.py` shares its SQL: `connect`, `transaction` and `settle`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import marshal
import os
import sqlite3
import sys
import time

# Names for annotations only: typing and pathlib (with json, whose text the sender makes,
# and signal) would add half to the writer's start-up, which the first letter of every run
# waits for (its reservation is the writer's first commit).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    # A run and the addresses its in-flight journal names, each with when it went to DATA
    # (journal.Flown).
    Flown = tuple[int, Mapping[str, float]]

# A batch of reserved letters is one row: the run, the batch's number and its addresses as a
# JSON list. The letters' own rows are written once, with their outcome; until then a
# reserved letter is `sending` (see UNFINISHED) and its row keeps the state it had. Once all
# its letters have their outcome the sender releases the reservation: the table holds little
# more than the letters in flight.
_RESERVE = "INSERT INTO reservations (run_id, batch, emails) VALUES (?, ?, ?)"
_RELEASE = "DELETE FROM reservations WHERE run_id = ? AND batch = ?"
# An outcome row: address, state, SHA-256 of the letter, reply code, reply, tries, time (as
# `stamp` writes it; the sender passes Unix times, the cheapest to take).
_OUTCOME = """
    UPDATE letters SET status = ?2, message_sha256 = ?3, reply_code = ?4, reply_text = ?5,
        attempts = attempts + ?6, first_attempt = COALESCE(first_attempt, ?7),
        last_attempt = ?7, run_id = ?8
    WHERE campaign = ?9 AND email = ?1"""
# Letters reserved by a run that has no outcome from it: its run, campaign, address and the
# state the row keeps. (Only the run that reserved a letter writes its run_id.) CROSS JOIN
# keeps this order, a look-up per reserved address; left to itself SQLite scanned the whole
# campaign for every reservation.
UNFINISHED = """
    SELECT DISTINCT r.run_id, l.campaign, l.email, l.status
    FROM reservations AS r CROSS JOIN runs ON runs.id = r.run_id
        CROSS JOIN json_each(r.emails) AS j
        CROSS JOIN letters AS l ON l.campaign = runs.campaign AND l.email = j.value
    WHERE l.run_id IS NOT r.run_id"""


def stamp(when: float) -> str:
    """A Unix time as the log stores times: UTC, ISO 8601, milliseconds (as
    `datetime.isoformat(timespec="milliseconds")` writes it, in a fraction of its time)."""
    millis = round(when * 1_000_000) // 1000
    return f"{_second(millis // 1000)}.{millis % 1000:03d}+00:00"


@functools.lru_cache(maxsize=1)  # a batch's letters mostly share their second
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection to the log whose every commit reaches the disk (fsync) before it counts,
    so the log survives a power cut too."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA synchronous = FULL")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, rolled back if anything is raised."""
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def write(db: sqlite3.Connection, campaign: str, run_id: int, number: int,
          reserved: str, outcomes: Iterable[Sequence[Any]], released: Iterable[int],
          flown: Flown | None = None) -> None:
    """Commit one batch of a run: reserve letters (as reservation `number`; `reserved` is
    their addresses as a JSON list, or empty), record outcomes, release finished
    reservations, and, at the run's end (`flown` given), settle what it reserved and never
    finished."""
    with transaction(db):
        if reserved:
            db.execute(_RESERVE, (run_id, number, reserved))
        db.executemany(_OUTCOME, ((*row[:6], stamp(row[6]), run_id, campaign)
                                  for row in outcomes))
        db.executemany(_RELEASE, ((run_id, batch) for batch in released))
        if flown is not None:
            settle(db, flown)


def settle(db: sqlite3.Connection, flown: Flown | None) -> None:
    """Settle the letters that runs reserved and never finished (within a transaction):
    those the run's journal says reached DATA become `unknown` (the server may have them);
    the others were never sent and keep their state. The journal (`flown`) speaks for one
    run; a run without one to trust has every such letter become `unknown`."""
    trusted, started = flown if flown is not None else (None, {})
    db.executemany(
        """UPDATE letters SET status = 'unknown', run_id = ?1,
                attempts = attempts + (?2 IS NOT NULL), last_attempt = COALESCE(?2, last_attempt),
                first_attempt = COALESCE(first_attempt, ?2)
            WHERE campaign = ?3 AND email = ?4""",
        [(run_id, stamp(started[email]) if run_id == trusted else None, campaign, email)
         for run_id, campaign, email, _ in db.execute(UNFINISHED).fetchall()
         if run_id != trusted or email in started])
    db.execute("DELETE FROM reservations")


def _die_with(parent: int) -> bool:
    """Ask the kernel to kill this process when its parent dies (Linux); whether the parent
    is still there."""
    if sys.platform == "linux":
        # PR_SET_PDEATHSIG, SIGKILL (9 on every Linux; the signal module would import enum).
        ctypes.CDLL(None).prctl(1, 9)
    return os.getppid() == parent


def _read(size: int) -> bytes | None:
    """Exactly `size` bytes from stdin; None at its end."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(0, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _serve(path: str, campaign: str, run_id: int, parent: int) -> None:
    db: sqlite3.Connection | None = None
    try:
        while (header := _read(4)) is not None and (frame := _read(int.from_bytes(header))):
            if os.getppid() != parent:
                return  # the sender is gone: its run is the next run's to settle
            try:
                db = db or connect(path)
                # Frames come only from the sender that started this process, over its pipe.
                write(db, campaign, run_id, *marshal.loads(frame))  # noqa: S302
                answer = b"\n"
            except Exception as error:
                answer = b"!" + " ".join(str(error).split()).encode(errors="replace") + b"\n"
            os.write(1, answer)
    finally:
        if db is not None:
            db.close()


def main(argv: Sequence[str]) -> None:
    """Serve one run: ``LOG CAMPAIGN RUN PARENT_PID``."""
    path, campaign, run_id, parent = argv
    if _die_with(int(parent)):
        _serve(path, campaign, int(run_id), int(parent))


if __name__ == "__main__":
    main(sys.argv[1:])
    # All is on disk and answered, and the sender waits for this exit: skip the tear-down.
    os._exit(0)
