"""The sender: letters in, one outcome per letter out.

`concurrency` workers each own one long-lived SMTP connection and take the next letter only
when they are free, so a letter is built just before a connection can send it. Each worker
paces itself on the shared rate limit and the per-domain limits, marks the letter in the send
log just before its DATA (`Recorder.sending`), and retries transient failures with jittered
exponential backoff. A letter whose domain has used its limit, or whose send window is
closed, waits aside while the others go. When the server asks the run to slow down (421, a
rate reply, a connection too many), every connection pauses and the run goes on with one
connection fewer.

A run stops early, its letters left as they are, when the account's daily limit is used up
or the provider answers with a quota reply (replies.py); letters outside their window are
left for a later run. With `Schedule.wait` it waits instead, for days if need be, and says
so (`Waiting`). Setting `stop` ends the run: no new letter starts, waits end at once, and the
letters in the middle of an SMTP exchange finish it (bounded by the timeout).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from .account import login
from .errors import MailerError, TooManyFailures
from .message import Letter
from .outcome import Outcome, Status
from .ratelimit import DomainLimits, RateLimiter, Throttle
from .recorder import Recorder
from .schedule import Clock, DailyLimit, SystemClock, Window, zone
from .sentcopies import SentCopies
from .settings import Settings
from .smtp import Attempt, Connection, tls_context

HOUR = 3600.0


@dataclass(slots=True)
class SendSummary:
    """What a run did: outcomes per state, time taken, and whether it was stopped early."""

    counts: Counter[Status] = field(default_factory=Counter)
    elapsed: float = 0.0
    interrupted: bool = False
    # The server's last request to slow down, and the connections the run went on with.
    throttled: str = ""
    connections: int = 0
    # Letters sent without a Cc or Bcc copy the server refused.
    copies_refused: int = 0
    # Why the run stopped before its letters were sent, and when the next may go (Unix time).
    paused: str = ""
    resume_at: float | None = None
    # Letters left for a later run because their send window was closed, and when it opens.
    outside_window: int = 0
    window_opens: float | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Waiting:
    """The run waits (`Schedule.wait`) until `until` (Unix time), for `reason`."""

    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """When the run may send: the send window (in each letter's time zone, else `zone`), the
    account's daily limit, and whether to wait for them rather than stop."""

    window: Window | None = None
    zone: tzinfo = UTC
    daily: DailyLimit | None = None
    wait: bool = False

    def opens(self, letter: Letter, now: float) -> float:
        """`now` if the letter's window is open, else when it opens."""
        if self.window is None:
            return now
        where = zone(letter.zone) if letter.zone else self.zone
        return self.window.opens(datetime.fromtimestamp(now, where)).timestamp()


@dataclass(frozen=True, slots=True)
class Policy:
    """How hard to try: attempts and time per letter, backoff, when to give up on a run."""

    max_attempts: int = 5
    retry_window: float = 600.0
    backoff: float = 1.0
    max_backoff: float = 60.0
    failure_threshold: int = 20
    held_back: int = 1000

    def delay(self, attempt: int) -> float:
        """Seconds before try `attempt + 1`: exponential, with full jitter above half."""
        base: float = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


class Sender:
    """Sends letters through a pool of SMTP connections to the configured server, recording
    them with `recorder` (None for test sends, which are not the campaign's)."""

    def __init__(self, settings: Settings, recorder: Recorder | None = None, *,
                 policy: Policy | None = None, schedule: Schedule | None = None,
                 clock: Clock | None = None, copies: SentCopies | None = None) -> None:
        self._login = login(settings)  # refuses what is unsafe; runs a password command
        self.settings = settings
        self.recorder = recorder
        self.copies = copies
        self.policy = policy or Policy(max_attempts=settings.max_attempts)
        self.schedule = schedule or Schedule()
        self.clock = clock or SystemClock()
        self.summary = SendSummary()
        self._rate = RateLimiter(settings.rate, clock=self.clock.monotonic)
        # Shared by every connection: a domain's limit is for the run, not per connection.
        self._domains = DomainLimits(settings.domain_rates, clock=self.clock.monotonic)
        self._context = tls_context(settings)
        self._throttle = Throttle(settings.concurrency, self.clock.monotonic)
        self._quota_pauses = 0
        self._paused_until = 0.0
        self._failures_in_a_row = 0
        self._events: asyncio.Queue[Outcome | Waiting | None] = asyncio.Queue()
        self._stop = asyncio.Event()

    async def send(self, letters: AsyncIterator[Letter] | Iterable[Letter],
                   stop: asyncio.Event) -> AsyncIterator[Outcome | Waiting]:
        """Send every letter (until `stop` is set), yielding each outcome as it comes, and
        each wait.

        Ends by raising the SendError (login, TLS, too many failures) or LogError that
        stopped the run, once every outcome before it has been yielded.
        """
        run = asyncio.create_task(self._run(_aiter(letters), stop))
        try:
            while (event := await self._events.get()) is not None:
                yield event
        except asyncio.CancelledError:
            run.cancel()  # a hard stop: letters in the middle of DATA become unknown
            raise
        finally:
            if not run.done():
                stop.set()  # the caller stopped listening
            await run

    async def _run(self, letters: AsyncIterator[Letter], stop: asyncio.Event) -> None:
        started = self.clock.monotonic()
        watcher = asyncio.create_task(_relay(stop, self._stop))
        connections = [Connection(self.settings, self._context, self._login)
                       for _ in range(self._throttle.connections)]
        feed = _Feed(letters, self)
        try:
            # Fail fast (bad password, bad certificate, no server) before taking any letter.
            await connections[0].open()
            async with asyncio.TaskGroup() as group:
                for index, connection in enumerate(connections):
                    group.create_task(self._work(index, connection, feed))
        except BaseException as error:
            for connection in connections:
                connection.close()  # a session cut off mid-exchange is not to be ended politely
            if isinstance(error, BaseExceptionGroup):
                fatal = error.subgroup(MailerError)
                raise (fatal.exceptions[0] if fatal else error) from None
            raise
        else:
            for connection in connections:
                await connection.quit()
        finally:
            watcher.cancel()
            summary = self.summary
            summary.elapsed = self.clock.monotonic() - started
            summary.interrupted = stop.is_set()
            summary.connections = self._throttle.connections
            self._events.put_nowait(None)

    def _halt(self, reason: str, resume_at: float) -> None:
        """Stop taking letters until later (the letters in flight finish)."""
        if not self.summary.paused:
            self.summary.paused, self.summary.resume_at = reason, resume_at
        self._stop.set()

    async def _wait_until(self, until: float, reason: str) -> bool:
        """Wait (and say so) until `until`, Unix time; False if the run stopped first."""
        self._events.put_nowait(Waiting(until, reason))
        return await self.clock.sleep(until - self.clock.time(), self._stop)

    async def _work(self, index: int, connection: Connection, feed: _Feed) -> None:
        # Connections beyond what the server lets the run keep stop, after their letter.
        while index < self._throttle.connections and (letter := await feed.next()):
            outcome = await self._deliver(index, connection, feed, letter)
            if outcome is not None:
                self._finish(outcome)
                if self.copies is not None and outcome.status == Status.SENT:
                    await self.copies.save(letter.data, outcome.last_try or self.clock.time())
            letter = None  # not to keep a large letter alive while the next is built
        connection.close()

    async def _deliver(self, index: int, connection: Connection, feed: _Feed,
                       letter: Letter) -> Outcome | None:
        """Try one letter until it is sent, fails for good, runs out of tries or the run
        stops; None if it was never tried (it keeps its state, or went back to the feed)."""
        clock = self.clock
        deadline = clock.monotonic() + self.policy.retry_window
        first_try: float | None = None
        attempt: Attempt | None = None
        tries = 0
        # Its place in the daily limit, taken once its turn has come: a place taken while
        # it waited for the rate would make another connection stop the run for a limit that
        # letters which have not gone are holding.
        slot: float | None = None
        reached_data = False  # the letter went: it used its place in the daily limit
        while await self._paced(letter):
            if slot is None and (slot := await self._daily_slot()) is None:
                break
            tries += 1
            now = clock.time()
            first_try = first_try or now
            marked = False  # its mark was asked for: committed, or to be, even if cancelled

            async def mark(letter: Letter) -> None:
                nonlocal marked
                marked = True
                if self.recorder is not None:
                    await self.recorder.sending(letter)

            try:
                attempt = await connection.send(letter, mark)
            except asyncio.CancelledError:  # a hard stop
                if connection.reached_data:
                    self._finish(Outcome.of(letter, Status.UNKNOWN, tries, reply="the run was "
                                            "stopped while this letter was in flight",
                                            first_try=first_try, last_try=now), pause=False)
                elif marked:  # its mark is (or will be) on disk, but the letter did not go
                    self._finish(Outcome.of(letter, Status.DEFERRED, tries, reply="the run was "
                                            "stopped before this letter went",
                                            first_try=first_try, last_try=now), pause=False)
                raise
            reached_data = reached_data or attempt.status in (Status.SENT, Status.UNKNOWN)
            delay = self.policy.delay(tries)
            if attempt.quota:
                tries -= 1  # the account's, not this letter's: it costs time, not tries
                if not self.schedule.wait:
                    self._halt(f"{attempt.code} {attempt.reply}: {attempt.quota}",
                               clock.time() + HOUR)
                    break
                if await self._quota_pause(attempt):
                    continue
                break
            if attempt.throttled:
                self._throttle.hit()
                self.summary.throttled = attempt.reply
                if attempt.extra_connection and index >= self._throttle.connections:
                    feed.give_back(letter)  # to a connection the server lets the run keep
                    return None
                tries -= 1  # the server's pace, not this letter's: it costs time, not tries
                delay = max(delay, self._throttle.wait())
            elif attempt.status == Status.SENT:
                self._throttle.eased()
                self._quota_pauses = 0
            if not (attempt.retry and tries < self.policy.max_attempts
                    and clock.monotonic() + delay < deadline
                    and await clock.sleep(delay, self._stop)):
                break
        if slot is not None and not reached_data and self.schedule.daily is not None:
            self.schedule.daily.give_back(slot)  # it did not go: the quota is not used
        if attempt is None:
            return None
        return Outcome.of(letter, attempt.status, max(tries, 1), code=attempt.code,
                          reply=attempt.reply, first_try=first_try, last_try=clock.time(),
                          copies_refused=attempt.copies_refused)

    async def _daily_slot(self) -> float | None:
        """Take a letter's place in the account's daily limit (waiting for one with
        `wait`); its time, or None if the run stops for the limit instead."""
        daily = self.schedule.daily
        now = self.clock.time()
        if daily is None:
            return now
        while (slot := daily.next_slot(now)) > now:
            reason = f"the account's daily limit of {daily.count} letters is used up"
            if not self.schedule.wait:
                self._halt(reason, slot)
                return None
            if not await self._wait_until(slot, reason):
                return None
            now = self.clock.time()
        daily.take(now)
        return now

    async def _quota_pause(self, attempt: Attempt) -> bool:
        """With `wait`, pause every connection after a quota reply: an hour, then twice as
        long each time, up to a day; False if the run stopped meanwhile."""
        now = self.clock.time()
        if now >= self._paused_until:
            self._quota_pauses += 1
            self._paused_until = now + min(24 * HOUR, HOUR * 2 ** (self._quota_pauses - 1))
            self.summary.paused = f"{attempt.code} {attempt.reply}: {attempt.quota}"
            return await self._wait_until(self._paused_until, attempt.quota)
        return await self.clock.sleep(self._paused_until - now, self._stop)

    async def _paced(self, letter: Letter) -> bool:
        """Wait for the letter's turn: a quota's pause, the server's pause, the domain's
        limit, the run's rate and, last, the letter's send window; False if the run stopped
        first, or the window is closed and the run does not wait."""
        clock, stop = self.clock, self._stop
        limiter = self._domains.for_address(letter.email)
        if not (await clock.sleep(self._paused_until - clock.time(), stop)
                and await clock.sleep(self._throttle.wait(), stop)
                and (limiter is None or await clock.sleep(limiter.reserve(), stop))
                and await clock.sleep(self._rate.reserve(), stop)):
            return False
        opens = self.schedule.opens(letter, clock.time())
        if opens <= clock.time():
            return True
        if self.schedule.wait:
            return await self._wait_until(opens, "the send window")
        self.left_for_later(opens)
        return False

    def left_for_later(self, opens: float) -> None:
        """A letter's window is closed: it stays due, for a run after `opens`."""
        summary = self.summary
        summary.outside_window += 1
        summary.window_opens = min(opens, summary.window_opens or opens)

    def _finish(self, outcome: Outcome, *, pause: bool = True) -> None:
        if self.recorder is not None:
            self.recorder.record(outcome)
        self.summary.counts[outcome.status] += 1
        self.summary.copies_refused += outcome.copies_refused > 0
        self._events.put_nowait(outcome)
        if outcome.status == Status.SENT:
            self._failures_in_a_row = 0
            return
        self._failures_in_a_row += 1
        if pause and self._failures_in_a_row >= self.policy.failure_threshold:
            raise TooManyFailures(
                f"{self._failures_in_a_row} letters in a row were not delivered (the last: "
                f"{outcome.letter.email}: {outcome.describe()}); the run paused itself. Every "
                "result is in the send log: fix the cause, then run mailer send again to "
                "continue", code=outcome.code, recipient=outcome.letter.email)


class _Feed:
    """The letters, handed to the workers one at a time: in list order, except that a letter
    whose domain has used its limit, or whose send window is closed, waits aside (up to
    `held_back` of them) while the others go. Without `wait`, a letter outside its window
    is left for a later run instead."""

    def __init__(self, letters: AsyncIterator[Letter], sender: Sender) -> None:
        self._letters = letters
        self._sender = sender
        self._planner = DomainLimits(sender.settings.domain_rates, clock=sender.clock.time)
        # Letters waiting aside: when each may go, in list order, and why it waits.
        self._held: list[tuple[float, int, Letter, str]] = []
        self._order = itertools.count()
        self._ended = False
        self._lock = asyncio.Lock()

    def give_back(self, letter: Letter) -> None:
        """Take back a letter that was never tried; it goes first."""
        heapq.heappush(self._held, (0.0, next(self._order), letter, ""))

    async def next(self) -> Letter | None:
        """The next letter to send; None when there are no more or the run stopped."""
        sender = self._sender
        clock, schedule, stop = sender.clock, sender.schedule, sender._stop
        async with self._lock:
            while not stop.is_set():
                now = clock.time()
                held = self._held
                if held and (held[0][0] <= now or self._ended
                             or len(held) >= sender.policy.held_back):
                    due, _, _, reason = held[0]
                    # A wait long enough to notice is said, with its reason.
                    waited = (await sender._wait_until(due, reason) if due - now > 5
                              else await clock.sleep(due - now, stop))
                    return heapq.heappop(held)[2] if waited else None
                if self._ended:
                    return None
                try:
                    letter = await anext(self._letters)
                except StopAsyncIteration:
                    self._ended = True
                    continue
                opens = schedule.opens(letter, now)
                if opens > now and not schedule.wait:
                    sender.left_for_later(opens)
                    continue
                limiter = self._planner.for_address(letter.email)
                paced = now + (limiter.reserve() if limiter is not None else 0.0)
                if max(opens, paced) <= now:
                    return letter
                reason = "the send window" if opens > paced else \
                    f"the limit for {letter.email.rpartition('@')[2]}"
                heapq.heappush(held, (max(opens, paced), next(self._order), letter, reason))
            return None


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _aiter(letters: AsyncIterator[Letter] | Iterable[Letter]) -> AsyncIterator[Letter]:
    if isinstance(letters, AsyncIterator):
        async for letter in letters:
            yield letter
        return
    # Not `for letter in letters`: its variable would keep each letter alive while the
    # next one is built.
    remaining = iter(letters)
    while True:
        try:
            yield next(remaining)
        except StopIteration:
            return

