"""A live send of a campaign, and the dry run's preview of one.

    with Delivery(campaign, log, options) as delivery:    # leased, checked, registered
        print(delivery.plan.explain())
        async for outcome in delivery.send(stop):
            ...

Entering takes the log's lease (what a dead run left in flight becomes ``unknown``), builds
every letter and registers each ``pending`` in one transaction (a single problem registers
nothing and sends nothing), and plans which letters are due. `send` builds the due letters
again, one at a time as a connection is free, claiming them a few at a time (on a shared
log the workers of a campaign each send only what they claimed), and sends them. Leaving
records how the run ended and gives the lease (and any claim left) up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .campaign import Campaign, CheckReport, plural
from .errors import InputError, LogError, Problem
from .message import Letter
from .outcome import Outcome, Status
from .recipients import Recipient
from .recorder import Recorder
from .schedule import DAY, Clock, DailyLimit, SystemClock
from .sender import Policy, Schedule, Sender, SendSummary, Waiting
from .sendlog import STALE, Listed, Run, SendLog
from .sentcopies import SentCopies, saves_sent

# Letters whose states are looked up at once: one query each, little held in memory.
_CHUNK = 256
# Letters claimed at once: few, so that workers sharing a log take turns along the list.
_CLAIM = 8
# Seconds between looks at letters another worker holds, once this one has none left: soon
# (they are most likely in flight, done in a moment), then less often (it may have died).
_LOOK_AGAIN = (0.25, 5.0)
_NOT_GONE = (Status.PENDING, Status.DEFERRED)
_SHOWN_SKIPS = 20


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Which letters a run sends, and whether it waits for a quota or a send window (rather
    than stop, leaving the rest for a later run)."""

    limit: int | None = None
    retry_failed: bool = False
    resend_unknown: bool = False
    wait: bool = False

    def due(self, status: Status) -> bool:
        """Whether a recipient in this state gets the letter in this run."""
        return (status in (Status.PENDING, Status.DEFERRED)
                or (status in (Status.FAILED, Status.BOUNCED) and self.retry_failed)
                or (status == Status.UNKNOWN and self.resend_unknown))


@dataclass(slots=True)
class Plan:
    """Which letters a run sends, and how many it skips, by their state."""

    options: SendOptions = field(default_factory=SendOptions)
    letters: int = 0
    skipped: Counter[Status] = field(default_factory=Counter)
    # Rows whose address an earlier row already has (--allow-duplicates): one letter each.
    repeated: int = 0
    # The due letters' casefolded addresses, and how many of them are international.
    keys: set[str] = field(default_factory=set)
    international: int = 0
    examples: list[tuple[str, Status]] = field(default_factory=list)

    @property
    def due(self) -> int:
        return len(self.keys)

    def admit(self, email: str, status: Status) -> bool:
        """Count one letter in; whether it is due in this run."""
        self.letters += 1
        key = email.casefold()
        if not self.options.due(status):
            self.skipped[status] += 1
            if len(self.examples) < _SHOWN_SKIPS:
                self.examples.append((email, status))
            return False
        if key in self.keys:
            self.repeated += 1
            return False
        if self.options.limit is not None and self.due >= self.options.limit:
            return False
        self.keys.add(key)
        return True

    def explain(self) -> str:
        """`12 letters to send; skipping 2 already sent, 1 unknown (--resend-unknown ...)`."""
        text = f"{plural(self.due, 'letter')} to send"
        if not self.skipped and not self.repeated:
            return text
        hints = {Status.SENT: "already sent", Status.FAILED: "failed (--retry-failed to retry)",
                 Status.BOUNCED: "bounced (--retry-failed to send again)",
                 Status.UNKNOWN: "unknown: the server may have them (--resend-unknown sends "
                                 "them again, and some may arrive twice)",
                 Status.SENDING: "in flight in a run that is sending now or stopped (the next "
                                 "live run lists those of a stopped run as unknown)"}
        parts = [f"{n} {hints.get(s, str(s))}" for s, n in sorted(self.skipped.items())]
        if self.repeated:
            parts.append(f"{plural(self.repeated, 'row')} repeating an address (one letter per "
                         "address)")
        return f"{text}; skipping {', '.join(parts)}"


def list_hash(campaign: Campaign) -> str:
    """SHA-256 of the recipient list file, which every worker of a campaign must share."""
    with campaign.recipients_path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def template_hash(campaign: Campaign) -> str:
    """SHA-256 of the template file(s), stored with each run and letter."""
    digest = hashlib.sha256()
    for template in campaign.templates:
        digest.update(template.path.read_bytes())
        if template.html_path is not None:
            digest.update(template.html_path.read_bytes())
    return digest.hexdigest()


def _looked_up(items: Iterable[Recipient | Problem], log: SendLog | None,
               campaign: str) -> Iterator[tuple[Recipient | Problem, Status]]:
    """Each row with its recipient's state in the log (pending if it has none), looked up a
    chunk at a time."""
    rows = iter(items)
    while chunk := list(itertools.islice(rows, _CHUNK)):
        emails = [row.email for row in chunk if isinstance(row, Recipient)]
        found = log.statuses(campaign, emails) if log is not None and emails else {}
        for row in chunk:
            yield row, (found.get(row.email.casefold(), Status.PENDING)
                        if isinstance(row, Recipient) else Status.PENDING)


def _planned(campaign: Campaign, log: SendLog | None, plan: Plan,
             report: CheckReport) -> Iterator[tuple[Letter, bool]]:
    """Every letter the list makes, each with whether `plan` admits it; the problems of the
    rows that make none go into `report`."""
    recipients = campaign.recipients()
    for item, status in _looked_up(recipients, log, campaign.name):
        built = item if isinstance(item, Problem) else campaign.build_one(item)
        if isinstance(built, Problem):
            report.add(built)
            continue
        report.letters += 1
        due = plan.admit(built.email, status)
        plan.international += due and built.smtputf8
        yield built, due
    report.rows = recipients.rows


class Preview:
    """The dry run: every letter built, the due ones yielded by `letters()`; then `plan`
    says what a live run would do and `report` holds the problems found."""

    def __init__(self, campaign: Campaign, log: SendLog | None, options: SendOptions) -> None:
        self.campaign = campaign
        self.log = log
        self.plan = Plan(options)
        self.report = CheckReport()

    def letters(self) -> Iterator[Letter]:
        return (letter for letter, due in _planned(self.campaign, self.log, self.plan,
                                                   self.report) if due)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is written, replaced by another, or removed (None)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


class Delivery:
    """A logged live send of one campaign (see the module's docstring)."""

    def __init__(self, campaign: Campaign, log: SendLog, options: SendOptions,
                 policy: Policy | None = None, clock: Clock | None = None) -> None:
        self.campaign = campaign
        self.log = log
        self.options = options
        self.policy = policy
        self.clock = clock or SystemClock()
        self.plan = Plan(options)
        self.run: Run | None = None
        self.summary = SendSummary()
        # Due letters the send did not take, because the list changed during the run.
        self.missing = 0
        # Due letters another worker (of a shared log) held when this run ended.
        self.elsewhere = 0
        self.changed = False
        self._fingerprint: tuple[int, int, int] | None = None
        self._outcome = "stopped before sending"
        # The copies in the Sent folder, once a run has made them.
        self.copies: SentCopies | None = None

    def __enter__(self) -> Delivery:
        campaign = self.campaign
        settings = campaign.settings
        settings.require_sender(name="sender_name" in campaign.template.variables())
        digest = template_hash(campaign)  # once: the run's and its letters' must agree
        self.run = self.log.begin_run(campaign.name, settings.public(), digest,
                                      settings.account, list_hash(campaign))
        try:
            self._prepare(digest)
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        if self.plan.due == 0:
            self._outcome = "completed"
        return self

    def _prepare(self, digest: str) -> None:
        """One pass over the list: build every letter, register it (with the templates'
        `digest`), plan it."""
        campaign, log, report = self.campaign, self.log, CheckReport()
        self._fingerprint = _fingerprint(campaign.recipients_path)
        listed: list[Listed] = []
        with log.atomic():
            for letter, _ in _planned(campaign, log, self.plan, report):
                listed.append(Listed(letter.email, letter.line, letter.message_id))
                if len(listed) == _CHUNK:
                    log.register(campaign.name, listed, digest)
                    listed.clear()
            log.register(campaign.name, listed, digest)
            if not report.ok:
                self._outcome = "refused: the list or template has problems"
                raise InputError(report.problems, f"{report.summary()}; nothing was sent")
        log.ensure_room(self.plan.due)

    async def _due_letters(self, recorder: Recorder, stop: asyncio.Event
                           ) -> AsyncIterator[Letter]:
        """The planned letters this run claims, built again one at a time as the sender
        takes them, while the list is the one that was checked (a list edited during the run
        stops it). Letters another worker held go to this one if that worker dies: out of
        letters, it looks again until their leases would have expired, and a look that finds
        some starts that wait again."""
        wanted = self.plan.keys.copy()
        deadline: float | None = None
        pause = _LOOK_AGAIN[0]
        while True:
            elsewhere: set[str] = set()
            claimed = 0
            async for letter in self._claimed(recorder, wanted, elsewhere):
                claimed += 1
                yield letter
            if self.changed:
                break
            found = await recorder.call(self.log.statuses, self.campaign.name, sorted(elsewhere))
            # Worth waiting for: letters a co-worker holds that have not gone. One it may have
            # sent meanwhile (unknown, failed) is not due again in this run, whatever the flags.
            wanted = {key for key, status in found.items()
                      if status in _NOT_GONE and self.options.due(status)}
            self.elsewhere = len(wanted)
            if claimed or deadline is None:
                deadline = self.clock.monotonic() + STALE + Recorder.HEARTBEAT * 2
                pause = _LOOK_AGAIN[0]
            if not wanted or self.clock.monotonic() > deadline \
                    or not await self.clock.sleep(pause, stop):
                break
            pause = min(pause * 2, _LOOK_AGAIN[1])
        self.missing = len(wanted) if self.changed else 0

    async def _claimed(self, recorder: Recorder, wanted: set[str],
                       elsewhere: set[str]) -> AsyncIterator[Letter]:
        """One pass over the list: each letter of `wanted` this run can claim (taken out
        of `wanted`); into `elsewhere` those it could not, another worker's or gone."""
        assert self.run is not None
        path = self.campaign.recipients_path
        states = [status for status in Status if self.options.due(status)]
        rows = (item for item in self.campaign.recipients()
                if not isinstance(item, Recipient) or item.email.casefold() in wanted)
        while chunk := list(itertools.islice(rows, _CLAIM)):
            keys = {item.email.casefold() for item in chunk if isinstance(item, Recipient)}
            held = await recorder.call(self.log.claim, self.run, sorted(keys), states)
            elsewhere |= keys - held
            wanted -= keys - held
            for item in chunk:
                key = item.email.casefold() if isinstance(item, Recipient) else None
                if key is not None and (key not in held or key not in wanted):
                    continue  # not this run's, or a repeated address's letter already went
                if _fingerprint(path) != self._fingerprint:
                    self.changed = True
                    return
                built = item if isinstance(item, Problem) else self.campaign.build_one(item)
                if isinstance(built, Problem):
                    raise InputError([built], f"{path} changed since it was checked; run "
                                     "mailer send again to check it")
                wanted.discard(built.email.casefold())
                yield built
                del built  # not to keep a large letter alive while the next is built

    def keep_alive(self) -> None:
        """Renew the run's lease while it waits before sending (for the user's answer, say):
        a run silent for a minute is taken for dead (LeaseLost if it already was)."""
        assert self.run is not None, "use Delivery as a context manager"
        self.log.commit(self.run, [], [], self.clock.time())

    def schedule(self) -> Schedule:
        """When this run may send: the window, and what is left of the account's daily
        limit (counted in the log, across runs and campaigns)."""
        settings = self.campaign.settings
        daily = None
        if settings.daily_limit is not None:
            sent = self.log.sent_since(settings.account, self.clock.time() - DAY)
            daily = DailyLimit(settings.daily_limit, sent)
        return Schedule(settings.window, settings.zone, daily, self.options.wait)

    async def send(self, stop: asyncio.Event) -> AsyncIterator[Outcome | Waiting]:
        """Send the due letters, yielding each outcome and each wait; setting `stop` ends
        the run cleanly (letters in flight finish)."""
        assert self.run is not None, "use Delivery as a context manager"
        self._outcome = "failed"
        settings = self.campaign.settings
        async with contextlib.AsyncExitStack() as stack:
            recorder = await stack.enter_async_context(Recorder(self.log, self.run, self.clock))
            if saves_sent(settings):
                self.copies = await stack.enter_async_context(SentCopies(settings))
            sender = Sender(settings, recorder, policy=self.policy, schedule=self.schedule(),
                            clock=self.clock, copies=self.copies)
            self.summary = sender.summary
            async for event in sender.send(self._due_letters(recorder, stop), stop):
                yield event
        self._outcome = ("interrupted" if self.summary.interrupted
                         else f"paused: {self.summary.paused}" if self.summary.paused
                         else "completed")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        outcome = self._outcome if error is None or self._outcome != "failed" \
            else f"failed: {error}"
        counts = {str(s): n for s, n in self.summary.counts.items()}
        # An error on the way out says more than failing to record it would.
        with contextlib.suppress(*(() if error is None else (LogError,))):
            self.log.end_run(run, outcome, counts)
