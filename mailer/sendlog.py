"""The send log: every recipient's state in every campaign, so that no letter is sent twice
and none is forgotten, whatever stops a run.

What every store (`SQLiteLog`, the default) guarantees:

1. Just before a letter's DATA, its row becomes ``sending`` in a commit that has reached the
   disk. A letter whose row never became ``sending`` never reached DATA, so it stays due.
2. After the server's reply the letter's outcome replaces ``sending``.
3. A run that finds ``sending`` rows left by a run that is no longer alive makes them
   ``unknown``: the server may have them, so they are not sent again unless asked.
4. A run holds a lease: a row in ``runs`` with its host, pid and a heartbeat. Every mark is
   committed in a transaction that first renews it, so a run whose lease was taken over
   (found dead) can send nothing more. On SQLite one run at a time holds the whole log; on
   PostgreSQL (`shared`) several runs, workers, send one campaign together.
5. A run sends only letters it has claimed (`claim`), and no letter is claimed by two live
   runs; a dead run's claims go back to the others.

Nothing outside a store writes SQL; a store is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from .errors import ConfigError
from .outcome import Outcome, Status
from .settings import is_url

# A lease not renewed for this long belongs to a run that is not sending any more.
STALE = 60.0


def stamp(when: float) -> str:
    """A Unix time as the log stores times: UTC, ISO 8601, to the millisecond."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


def stamp_or(when: float | None, default: str) -> str:
    return default if when is None else stamp(when)


class Listed(NamedTuple):
    """A letter as the log registers it, before it is sent."""

    email: str
    line: int
    message_id: str


@dataclass(frozen=True, slots=True)
class Holder:
    """A run that holds (or held) a log's lease."""

    run_id: int
    host: str
    pid: int
    started: str
    heartbeat: str

    def describe(self) -> str:
        """`run 3 (pid 812 on laptop, started 2026-12-01 09:00:05 UTC, last heard of ...)`."""
        return (f"run {self.run_id} (pid {self.pid} on {self.host}, started "
                f"{_readable(self.started)}, last heard of {_readable(self.heartbeat)})")

    def process_gone(self) -> bool:
        """Whether this run's process, on this machine, no longer exists."""
        return self.host == socket.gethostname() and not _alive(self.pid)

    def why_stale(self, now: float) -> str:
        """Why this run is not sending any more, or "" if it may be."""
        if self.process_gone():
            return "its process is gone"
        silent = now - datetime.fromisoformat(self.heartbeat).timestamp()
        if silent > STALE:
            return f"it has not been heard of for {silent / 60:.0f} minute(s)"
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process nobody has reaped yet (a zombie) still answers to its pid.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    return True


def _readable(stored: str) -> str:
    return stored[:19].replace("T", " ") + " UTC"


@dataclass(frozen=True, slots=True)
class Run:
    """A run that holds the lease; `replaced` is the dead run it took the lease from, if
    any, and `settled` how many of that run's letters it found in flight (now unknown)."""

    id: int
    campaign: str
    replaced: Holder | None = None
    replaced_because: str = ""
    settled: int = 0


@dataclass(frozen=True, slots=True)
class Worker:
    """A run of a campaign, as `mailer log` shows the workers that share it."""

    run_id: int
    host: str
    pid: int
    account: str
    started: str
    heartbeat: str | None
    ended: str | None  # None while it runs
    outcome: str | None
    counts: dict[Status, int]
    rate_per_minute: float | None  # between its first and last letter sent


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
    # After the server took it: a bounce's status and words, a reply, a paper copy.
    bounce_status: str | None = None
    bounce_text: str | None = None
    bounced_at: str | None = None
    reply: str | None = None  # "replied" or "auto-replied"
    reply_at: str | None = None
    reply_from: str | None = None
    reply_subject: str | None = None
    paper_at: str | None = None
    paper_pages: int | None = None


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    """Counts per state and the span of sending for one campaign."""

    campaign: str
    counts: dict[Status, int]
    first_sent: str | None
    last_sent: str | None
    # Letters with a paper copy, with a person's reply, with an automatic one.
    on_paper: int = 0
    replied: int = 0
    auto_replied: int = 0

    @property
    def reply_rate(self) -> float | None:
        """The share of the letters that went which a person answered."""
        went = sum(self.counts.get(s, 0) for s in (Status.SENT, Status.UNKNOWN,
                                                    Status.BOUNCED))
        return self.replied / went if went else None

    @property
    def rate_per_minute(self) -> float | None:
        return pace(self.counts.get(Status.SENT, 0), self.first_sent, self.last_sent)


def pace(sent: int, first: str | None, last: str | None) -> float | None:
    """Letters per minute of `sent` letters, the first and last sent at these stored times,
    when they are a minute or more apart (3 letters in a fifth of a second make no pace)."""
    if not first or not last or sent < 2:
        return None
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return (sent - 1) / span * 60 if span >= 60 else None


class SendLog(Protocol):
    """What the sender, `mailer log` and `mailer send --dry-run` need of a store."""

    location: str
    # Whether several runs may send one campaign at once (each holding its own lease).
    shared: bool

    def close(self) -> None: ...

    def __enter__(self) -> SendLog: ...

    def __exit__(self, *exc: object) -> None:
        """Close the log."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A transaction: the calls inside it commit together, or not at all if it raises."""
        ...

    # -- a run --------------------------------------------------------------------------

    def begin_run(self, campaign: str, settings: Mapping[str, str], template_sha256: str,
                  account: str = "", list_sha256: str = "") -> Run:
        """Take a lease (LogLocked if a live run holds the log and it is not shared;
        ConfigError if a live worker sends the campaign from another list or template),
        settle what dead runs left ``sending`` and record the run's start, from
        `account`."""
        ...

    def claim(self, run: Run, emails: Sequence[str], statuses: Collection[Status]
              ) -> set[str]:
        """Of these casefolded addresses, those this run now holds: in one of `statuses`
        and not claimed by another live run."""
        ...

    def workers(self, campaign: str) -> list[Worker]:
        """The runs of a campaign that shared it (on a shared log), the latest last."""
        ...

    def sent_since(self, account: str, since: float) -> list[float]:
        """When each letter that left from `account` since `since` (Unix times) went: the
        letters that count towards its daily limit."""
        ...

    def ensure_room(self, letters: int) -> None:
        """LogError unless the store has room to record `letters` more outcomes."""
        ...

    def register(self, campaign: str, letters: Iterable[Listed], template_sha256: str) -> int:
        """Add each letter not yet in the log as ``pending``; how many were added."""
        ...

    def statuses(self, campaign: str, emails: Sequence[str]) -> dict[str, Status]:
        """The states of these recipients, by casefolded address (the unregistered absent)."""
        ...

    def commit(self, run: Run, sending: Sequence[str], outcomes: Sequence[Outcome],
               when: float) -> None:
        """In one transaction, at Unix time `when`: renew the run's lease (LeaseLost if it
        was taken over), mark these casefolded addresses ``sending``, record outcomes."""
        ...

    def end_run(self, run: Run, outcome: str, counts: Mapping[str, int]) -> None:
        """Record how a run ended and give up its lease."""
        ...

    # -- after a letter went ----------------------------------------------------------------

    def record_paper(self, campaign: str, copies: Iterable[tuple[Listed, int]],
                     when: float) -> None:
        """Each letter (registered if need be) had a paper copy of so many pages made."""
        ...

    def find(self, message_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Our letters by Message-ID: (campaign, casefolded address) for those we sent."""
        ...

    def sent_to(self, email: str, before: float) -> list[str]:
        """The campaigns that sent `email` a letter before `before`, the latest first."""
        ...

    def record_bounce(self, campaign: str, email: str, status: str, text: str,
                      when: float) -> bool:
        """A letter that went (sent or unknown) came back: it is bounced; False if there
        is no such letter, or it was recorded bounced already."""
        ...

    def record_reply(self, campaign: str, email: str, automatic: bool, when: str,
                     sender: str, subject: str) -> bool:
        """A reply to a letter (a person's outranks an automatic one; the first of each
        is kept); False if nothing changed."""
        ...

    def mailbox_mark(self, folder: str) -> tuple[int, int] | None:
        """How far `folder` was read: its UIDVALIDITY and the last UID read."""
        ...

    def set_mailbox_mark(self, folder: str, uidvalidity: int, last_uid: int,
                         when: float) -> None: ...

    def first_sent(self, campaign: str | None = None) -> str | None:
        """When the first letter of `campaign` (None: of any) was first tried."""
        ...

    # -- review -------------------------------------------------------------------------

    def campaigns(self) -> list[str]: ...

    def summary(self, campaign: str) -> CampaignSummary: ...

    def entries(self, campaign: str, statuses: Iterable[Status]) -> Iterator[Entry]:
        """Rows of a campaign in these states, in list order."""
        ...


def open_log(location: str | Path, *, create: bool = True) -> SendLog:
    """Open (creating or migrating) the send log at `location`: a file, or a postgresql://
    URL (with the `postgresql` extra installed)."""
    if isinstance(location, str) and is_url(location):
        try:
            from .pglog import PostgresLog
        except ImportError:
            raise ConfigError("a postgresql:// send log needs psycopg: pip install "
                              "'mailer[postgresql]'") from None
        return PostgresLog.open(location, create=create)
    from .sqlitelog import SQLiteLog

    return SQLiteLog.open(Path(location), create=create)


def existing_log(location: str) -> SendLog | None:
    """The send log at `location` if there is one (a dry run creates none)."""
    if not is_url(location) and not Path(location).exists():
        return None
    return open_log(location, create=False)
