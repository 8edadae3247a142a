"""The sender: letters in, one outcome per letter out.

`concurrency` workers each own one long-lived SMTP connection and take the next letter only
when they are free, so a letter is built just before a connection can send it. Each worker
paces itself on the shared rate limit and the per-domain limits, marks the letter in the send
log just before its DATA (`Recorder.sending`), and retries transient failures with jittered
exponential backoff. A letter whose domain has used its limit waits aside while the others
go. When the server asks the run to slow down (421, a rate reply, a connection too many),
every connection pauses and the run goes on with one connection fewer. Setting `stop` ends
the run: no new letter starts, waits end at once, and the letters in the middle of an SMTP
exchange finish it (bounded by the timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from .errors import MailerError, TooManyFailures
from .message import Letter
from .outcome import Outcome, Status
from .ratelimit import DomainLimits, RateLimiter
from .recorder import Recorder
from .settings import Settings
from .smtp import Attempt, Connection, check_security, tls_context


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

    @property
    def total(self) -> int:
        return sum(self.counts.values())


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
                 policy: Policy | None = None) -> None:
        check_security(settings)
        self.settings = settings
        self.recorder = recorder
        self.policy = policy or Policy(max_attempts=settings.max_attempts)
        self.summary = SendSummary()
        self._rate = RateLimiter(settings.rate)
        # Shared by every connection: a domain's limit is for the run, not per connection.
        self._domains = DomainLimits(settings.domain_rates)
        self._context = tls_context(settings)
        self._throttle = _Throttle(settings.concurrency)
        self._failures_in_a_row = 0
        self._outcomes: asyncio.Queue[Outcome | None] = asyncio.Queue()

    async def send(self, letters: AsyncIterator[Letter] | Iterable[Letter],
                   stop: asyncio.Event) -> AsyncIterator[Outcome]:
        """Send every letter (until `stop` is set), yielding each outcome as it comes.

        Ends by raising the SendError (login, TLS, too many failures) or LogError that
        stopped the run, once every outcome before it has been yielded.
        """
        run = asyncio.create_task(self._run(_aiter(letters), stop))
        try:
            while (outcome := await self._outcomes.get()) is not None:
                yield outcome
        except asyncio.CancelledError:
            run.cancel()  # a hard stop: letters in the middle of DATA become unknown
            raise
        finally:
            if not run.done():
                stop.set()  # the caller stopped listening
            await run

    async def _run(self, letters: AsyncIterator[Letter], stop: asyncio.Event) -> None:
        started = time.monotonic()
        connections = [Connection(self.settings, self._context)
                       for _ in range(self._throttle.connections)]
        feed = _Feed(letters, DomainLimits(self.settings.domain_rates), self.policy.held_back)
        try:
            # Fail fast (bad password, bad certificate, no server) before taking any letter.
            await connections[0].open()
            async with asyncio.TaskGroup() as group:
                for index, connection in enumerate(connections):
                    group.create_task(self._work(index, connection, feed, stop))
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
            self.summary.elapsed = time.monotonic() - started
            self.summary.interrupted = stop.is_set()
            self.summary.connections = self._throttle.connections
            self._outcomes.put_nowait(None)

    async def _work(self, index: int, connection: Connection, feed: _Feed,
                    stop: asyncio.Event) -> None:
        # Connections beyond what the server lets the run keep stop, after their letter.
        while index < self._throttle.connections and (letter := await feed.next(stop)):
            outcome = await self._deliver(index, connection, feed, letter, stop)
            letter = None  # not to keep a large letter alive while the next is built
            if outcome is not None:
                self._finish(outcome)
        connection.close()

    async def _deliver(self, index: int, connection: Connection, feed: _Feed, letter: Letter,
                       stop: asyncio.Event) -> Outcome | None:
        """Try one letter until it is sent, fails for good, runs out of tries or the run
        stops; None if it was never tried (it keeps its state, or went back to the feed)."""
        deadline = time.monotonic() + self.policy.retry_window
        first_try: float | None = None
        attempt: Attempt | None = None
        tries = 0
        while await self._paced(letter, stop):
            tries += 1
            now = time.time()
            first_try = first_try or now
            marked = False

            async def mark(letter: Letter) -> None:
                nonlocal marked
                if self.recorder is not None:
                    await self.recorder.sending(letter)
                marked = True

            try:
                attempt = await connection.send(letter, mark)
            except asyncio.CancelledError:
                if marked:  # a hard stop in the middle of DATA
                    self._finish(Outcome.of(letter, Status.UNKNOWN, tries, reply="the run was "
                                            "stopped while this letter was in flight",
                                            first_try=first_try, last_try=now), pause=False)
                raise
            delay = self.policy.delay(tries)
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
            if not (attempt.retry and tries < self.policy.max_attempts
                    and time.monotonic() + delay < deadline and await _pause(delay, stop)):
                break
        if attempt is None:
            return None
        return Outcome.of(letter, attempt.status, max(tries, 1), code=attempt.code,
                          reply=attempt.reply, first_try=first_try, last_try=time.time(),
                          copies_refused=attempt.copies_refused)

    async def _paced(self, letter: Letter, stop: asyncio.Event) -> bool:
        """Wait for the letter's turn: the server's pause, the domain's limit and the run's
        rate; False if the run stopped first."""
        limiter = self._domains.for_address(letter.email)
        return (await _pause(self._throttle.wait(), stop)
                and (limiter is None or await _pause(limiter.reserve(), stop))
                and await _pause(self._rate.reserve(), stop))

    def _finish(self, outcome: Outcome, *, pause: bool = True) -> None:
        if self.recorder is not None:
            self.recorder.record(outcome)
        self.summary.counts[outcome.status] += 1
        self.summary.copies_refused += outcome.copies_refused > 0
        self._outcomes.put_nowait(outcome)
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


class _Throttle:
    """The server's requests to slow down: each makes every connection pause (1 s, then
    twice as long each time it asks again, up to 5 minutes; a letter that goes through
    starts the count again) and leaves the run one connection fewer, down to one. Refusals
    that arrive during a pause answer tries made before it: they count as the same one."""

    FIRST = 1.0
    LONGEST = 300.0

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self._until = 0.0
        self._strikes = 0

    def hit(self) -> None:
        if time.monotonic() < self._until:
            return  # another connection's answer to the same request: it was counted
        self._strikes += 1
        pause = min(self.LONGEST, self.FIRST * 2.0 ** (self._strikes - 1))
        self._until = max(self._until, time.monotonic() + pause)
        self.connections = max(1, self.connections - 1)

    def eased(self) -> None:
        self._strikes = 0

    def wait(self) -> float:
        """Seconds until the connections may send again."""
        return max(0.0, self._until - time.monotonic())


class _Feed:
    """The letters, handed to the workers one at a time: in list order, except that a letter
    whose domain has used its limit waits aside (up to `most_held` of them) while the others
    go, so that a slow domain does not hold up every connection."""

    def __init__(self, letters: AsyncIterator[Letter], planner: DomainLimits,
                 most_held: int) -> None:
        self._letters = letters
        self._planner = planner
        self._most_held = most_held
        self._held: list[tuple[float, int, Letter]] = []
        self._order = itertools.count()
        self._ended = False
        self._lock = asyncio.Lock()

    def give_back(self, letter: Letter) -> None:
        """Take back a letter that was never tried; it goes first."""
        heapq.heappush(self._held, (0.0, next(self._order), letter))

    async def next(self, stop: asyncio.Event) -> Letter | None:
        """The next letter to send; None when there are no more or the run stopped."""
        async with self._lock:
            while not stop.is_set():
                now = time.monotonic()
                held = self._held
                if held and (held[0][0] <= now or self._ended or len(held) >= self._most_held):
                    return heapq.heappop(held)[2] if await _pause(held[0][0] - now, stop) \
                        else None
                if self._ended:
                    return None
                try:
                    letter = await anext(self._letters)
                except StopAsyncIteration:
                    self._ended = True
                    continue
                limiter = self._planner.for_address(letter.email)
                delay = limiter.reserve() if limiter is not None else 0.0
                if delay <= 0:
                    return letter
                heapq.heappush(held, (now + delay, next(self._order), letter))
            return None


async def _pause(seconds: float, stop: asyncio.Event) -> bool:
    """Wait `seconds` unless `stop` is set first; whether the run may go on."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return not stop.is_set()


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
