"""A live send of a campaign: check everything, consult the send log, send what is due.

The order is what makes a send safe to interrupt and repeat:
1. every row is validated and every letter built (`Campaign.letters`); any problem stops the
   run before anything is written or sent;
2. the log is locked (one sender per log), what a dead run left ``sending`` is settled, and
   every letter is registered ``pending`` in one transaction;
3. letters whose state says they are due are reserved, sent, and their outcomes recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import signal
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from .campaign import Campaign
from .errors import InputError, LogError
from .message import Letter
from .outcome import Outcome, Status
from .recipients import Recipient
from .recorder import Recorder
from .sender import Policy, Sender, SendSummary
from .sendlog import SendLog


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Which letters a run sends."""

    limit: int | None = None
    retry_failed: bool = False
    resend_unknown: bool = False

    def due(self, status: Status | None) -> bool:
        """Whether a recipient in this state gets the letter in this run."""
        if status is None or status in (Status.PENDING, Status.DEFERRED):
            return True
        return ((status == Status.FAILED and self.retry_failed)
                or (status == Status.UNKNOWN and self.resend_unknown))


@dataclass(slots=True)
class Plan:
    """How many letters a run would send, and how many it skips, by their state."""

    letters: int = 0
    due: int = 0
    skipped: Counter[Status] = field(default_factory=Counter)
    # Rows whose address an earlier row already has (--allow-duplicates): one letter each.
    repeated: int = 0

    def explain(self) -> str:
        """`12 letters to send; skipping 2 already sent, 1 unknown (--resend-unknown ...)`."""
        text = f"{self.due} letter{'s' * (self.due != 1)} to send"
        if not self.skipped and not self.repeated:
            return text
        hints = {Status.SENT: "already sent", Status.FAILED: "failed (--retry-failed to retry)",
                 Status.UNKNOWN: "unknown: the server may have them (--resend-unknown to resend)",
                 Status.SENDING: "reserved by a run that stopped (the next live run "
                                 "sorts out which reached the server)"}
        parts = [f"{n} {hints.get(s, str(s))}" for s, n in sorted(self.skipped.items())]
        if self.repeated:
            parts.append(f"{self.repeated} row{'s' * (self.repeated != 1)} repeating an "
                         "address (one letter per address)")
        return f"{text}; skipping {', '.join(parts)}"


def template_hash(campaign: Campaign) -> str:
    """SHA-256 of the template file(s), stored with each run and letter."""
    digest = hashlib.sha256(campaign.template.path.read_bytes())
    if campaign.template.html_path is not None:
        digest.update(campaign.template.html_path.read_bytes())
    return digest.hexdigest()


class _Addressed(Protocol):
    @property
    def email(self) -> str: ...


_T = TypeVar("_T", bound=_Addressed)


def classify(items: Iterable[_T], log: SendLog | None, campaign: str, options: SendOptions,
             plan: Plan, *, once_per_address: bool = False
             ) -> Iterator[tuple[_T, Status | None, bool]]:
    """Each letter (or recipient) with its state in the log and whether it is due now;
    every one is counted into `plan` as it passes.

    `once_per_address` (for a list that may repeat an address) keeps every address after its
    first due row from being due again: the log has one row, so one letter, per address. (A
    repeat's state cannot be trusted: the first letter may or may not be recorded yet.)
    """
    due_before: set[str] = set()
    for item, status in _with_status(items, log, campaign):
        plan.letters += 1
        due = options.due(status)
        key = item.email.casefold() if once_per_address else ""
        if not due:
            assert status is not None
            plan.skipped[status] += 1
        elif once_per_address and key in due_before:
            due = False
            plan.repeated += 1
        elif options.limit is not None and plan.due >= options.limit:
            due = False
        else:
            plan.due += 1
            if once_per_address:
                due_before.add(key)
        yield item, status, due


def _with_status(items: Iterable[_T], log: SendLog | None,
                 campaign: str) -> Iterator[tuple[_T, Status | None]]:
    """Each item with its state in the log, looked up a chunk at a time (one query per
    chunk rather than per letter, and only a chunk of letters held in memory)."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == _CHUNK:
            yield from _look_up(chunk, log, campaign)
            chunk = []
    yield from _look_up(chunk, log, campaign)


_CHUNK = 256


def _look_up(chunk: list[_T], log: SendLog | None,
             campaign: str) -> Iterator[tuple[_T, Status | None]]:
    found = log.statuses(campaign, [item.email for item in chunk]) if log and chunk else {}
    return ((item, found.get(item.email.casefold())) for item in chunk)


class Delivery:
    """A live run: `prepare()` checks and plans, `send()` sends, `close()` releases the log."""

    def __init__(self, campaign: Campaign, log_path: Path, options: SendOptions,
                 policy: Policy | None = None) -> None:
        campaign.settings.require_sender()
        self.campaign = campaign
        self.options = options
        self.policy = policy
        self.log = SendLog.open(log_path)
        self.run_id: int | None = None
        self.plan = Plan()
        # Each address prepare() registered, and whether it is due (until it is sent).
        self._due: dict[str, bool] = {}
        self._planned = False
        self._ended = False

    def prepare(self) -> Plan:
        """Lock the log, check every letter and register them all, counting what is due."""
        self.log.lock()
        campaign = self.campaign
        digest = template_hash(campaign)
        self.run_id = self.log.begin_run(campaign.name, campaign.settings.public(), digest)
        recipients = campaign.recipients()
        # One pass over the list: each letter's state is looked up just before it is
        # registered (a new one has none, so it is due, as `pending` would be).
        letters = self._noted(classify(
            campaign.letters(recipients), self.log, campaign.name, self.options, self.plan,
            once_per_address=campaign.allow_duplicates))
        self.log.register(campaign.name, letters, digest,
                          keep=lambda: recipients.problem_count == 0)
        if recipients.problem_count:
            self._end("refused: the list or template has problems")
            raise InputError(recipients.problems, f"{recipients.rows} recipients, "
                             f"{recipients.problem_count} problems; nothing was sent")
        self._planned = True
        return self.plan

    def _noted(self, classified: Iterable[tuple[Letter, Status | None, bool]]
               ) -> Iterator[Letter]:
        """The letters, each address noted in `_due` on the way."""
        for letter, _, due in classified:
            key = letter.email.casefold()
            self._due[key] = self._due.get(key, False) or due
            yield letter

    def _due_now(self, recipient: Recipient, summary: SendSummary) -> bool:
        """Whether prepare() found this recipient due, each address once. One it never saw
        (the list gained it since) is counted in `summary`, not sent: its outcome would have
        no row in the log to go to. (The log is locked: nothing else changes what is due.)"""
        key = recipient.email.casefold()
        due = self._due.get(key)
        if due is None:
            summary.unregistered += 1
            return False
        self._due[key] = False
        return due

    async def send(self, *, on_outcome: Callable[[Outcome], None] | None = None,
                   stop: asyncio.Event | None = None) -> SendSummary:
        """Send the due letters; SIGINT/SIGTERM stop it cleanly (in-flight letters finish)."""
        assert self.run_id is not None, "prepare() first"
        stop = stop or asyncio.Event()
        recorder = Recorder(self.log, self.campaign.name, self.run_id)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        outcome = "failed"
        counts: Counter[Status] = Counter()
        try:
            sender = Sender(self.campaign.settings, recorder, policy=self.policy,
                            on_outcome=on_outcome)
            counts = sender.summary.counts
            # The list is read again, not held: only the addresses are kept, not the letters.
            # Only the due are rendered again: a resumed run skips the rest unbuilt.
            letters = self.campaign.letters(
                self.campaign.recipients(),
                only=functools.partial(self._due_now, summary=sender.summary))
            summary = await sender.run(letters, stop)
            outcome = "interrupted" if summary.interrupted else "completed"
            return summary
        finally:
            recorder.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            self._end(outcome, counts)

    def _end(self, outcome: str, counts: Counter[Status] | None = None) -> None:
        if self.run_id is not None:
            self._ended = True
            self.log.end_run(self.run_id, outcome, {str(k): v for k, v in (counts or {}).items()})

    def close(self) -> None:
        """Record the end of a run that never sent (nothing due, not confirmed, an error
        while preparing), then release the log (and its lock)."""
        try:
            if self.run_id is not None and not self._ended:
                with contextlib.suppress(LogError):
                    self._end("completed" if self._planned and self.plan.due == 0
                              else "stopped before sending")
        finally:
            self.log.close()
