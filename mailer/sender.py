"""The sender: letters in, one recorded outcome per letter out.

A producer feeds a queue, never more than about a tenth of a second of sending ahead (so
memory stays flat for any list size), holding back letters whose domain has its own limit so
they do not block the others, and has the recorder reserve them a batch at a time on the way
in; `concurrency` workers each own one long-lived connection, pace themselves on the shared
rate limiter, retry transient failures with jittered exponential backoff and hand every
outcome to the recorder.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .errors import MailerError, TooManyFailures
from .message import Letter
from .outcome import Outcome, Status
from .ratelimit import DomainLimits, RateLimiter
from .settings import Settings
from .smtp import Connection, check_security, tls_context

_T = TypeVar("_T")
# Letters on their way to the workers, each with its batch's reservation; None: no more.
_Queue = asyncio.Queue[tuple[Letter, asyncio.Future[None]] | None]


class Recorder(Protocol):
    """Where the sender reports (recorder.Recorder writes the send log)."""

    def reserve(self, letters: Sequence[Letter]) -> asyncio.Future[None]: ...

    def started(self, letter: Letter) -> None: ...

    def record(self, outcome: Outcome) -> None: ...

    async def finish(self) -> None: ...


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run a send to completion, on uvloop's event loop where it is installed (it roughly
    halves the event loop's own cost per letter; bench/send.py measures it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class NoLog:
    """A recorder that keeps nothing: for test sends (`--to`), which are not the campaign."""

    def reserve(self, letters: Sequence[Letter]) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def started(self, letter: Letter) -> None:
        return None

    def record(self, outcome: Outcome) -> None:
        return None

    async def finish(self) -> None:
        return None


@dataclass(slots=True)
class SendSummary:
    """What a run did: outcomes per state, time taken, and whether it was stopped early."""

    counts: Counter[Status] = field(default_factory=Counter)
    elapsed: float = 0.0
    interrupted: bool = False
    # Letters not sent because the list gained them after the run's check (delivery.py).
    unregistered: int = 0

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
    """Sends letters through a pool of SMTP connections to the configured server."""

    # Letters are reserved as they are queued, a batch (one commit) at a time, about this
    # many seconds of sending ahead of the workers: far enough that a batch's commit is long
    # done when its letters' turn comes, and that commits are few when letters go fast (each
    # costs CPU the sending needs); near enough that a power cut, after which every reserved
    # letter is `unknown`, leaves only about this much sending in doubt.
    AHEAD = 0.1
    MOST_AHEAD = 256

    def __init__(self, settings: Settings, recorder: Recorder, *, policy: Policy | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        check_security(settings)
        self.settings = settings
        self.recorder = recorder
        self.policy = policy or Policy(max_attempts=settings.max_attempts)
        self.on_outcome = on_outcome
        self.summary = SendSummary()
        self._rate = RateLimiter(settings.rate)
        # Shared by every connection: a domain's limit is for the run, not per connection.
        self._domains = DomainLimits(settings.domain_rates)
        self._context = tls_context(settings)
        self._failures_in_a_row = 0
        self._started = time.monotonic()
        # Set whenever a worker takes a letter: there may be room in the queue.
        self._taken = asyncio.Event()

    async def run(self, letters: Iterable[Letter], stop: asyncio.Event | None = None
                  ) -> SendSummary:
        """Send every letter (until `stop` is set); return the summary.

        Raises a SendError (login, TLS, too many failures) or LogError that stopped the run,
        after recording every letter that was in flight.
        """
        stop = stop or asyncio.Event()
        self._started = started = time.monotonic()
        queue: _Queue = asyncio.Queue()
        connections = [Connection(self.settings, self._context)
                       for _ in range(self.settings.concurrency)]
        try:
            # Fail fast (bad password, bad certificate, no server) before taking any letter.
            await connections[0].open()
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(self._work(c, queue, stop)) for c in connections]
                producer = group.create_task(self._produce(letters, queue, len(workers)))
                group.create_task(self._grace(stop, producer, workers))
        except BaseExceptionGroup as errors:
            fatal = errors.subgroup(MailerError)
            raise (fatal.exceptions[0] if fatal else errors) from None
        finally:
            for connection in connections:
                await connection.quit()
            await self.recorder.finish()
            self.summary.elapsed = time.monotonic() - started
        self.summary.interrupted = stop.is_set()
        return self.summary

    def _ahead(self) -> int:
        """How many letters to keep queued, so reserved: about AHEAD seconds of sending, at
        the rate limit or at the pace of the run so far; at least two per connection."""
        concurrency = self.settings.concurrency
        rate = self.settings.rate
        if rate.unlimited:
            elapsed = time.monotonic() - self._started
            per_second = self.summary.total / elapsed if elapsed > 0 else 0.0
        else:
            per_second = rate.per_second
        return max(2 * concurrency, min(self.MOST_AHEAD, math.ceil(per_second * self.AHEAD)))

    async def _produce(self, letters: Iterable[Letter], queue: _Queue, workers: int) -> None:
        planner = DomainLimits(self.settings.domain_rates)
        held: list[tuple[float, int, Letter]] = []
        batch: list[Letter] = []
        ahead = self._ahead()
        for number, letter in enumerate(letters):
            limiter = planner.for_address(letter.email) if planner else None
            delay = limiter.reserve() if limiter else 0.0
            if delay > 0:
                heapq.heappush(held, (time.monotonic() + delay, number, letter))
            else:
                batch.append(letter)
            while held and (held[0][0] <= time.monotonic()
                            or len(held) >= self.policy.held_back):
                await self._enqueue(batch, queue)  # not to wait behind the sleep
                await asyncio.sleep(max(0.0, held[0][0] - time.monotonic()))
                batch.append(heapq.heappop(held)[2])
            # Half of what may be queued per reservation (one commit).
            if len(batch) >= ahead // 2:
                await self._enqueue(batch, queue)
                ahead = self._ahead()
            # Rendering is CPU work: let the workers run between letters, while they have
            # letters. Were a worker short of one, letters would go one reservation each.
            if queue.qsize() >= workers:
                await asyncio.sleep(0)
        await self._enqueue(batch, queue)
        while held:
            await asyncio.sleep(max(0.0, held[0][0] - time.monotonic()))
            await self._enqueue([heapq.heappop(held)[2]], queue)
        for _ in range(workers):
            await queue.put(None)

    async def _enqueue(self, batch: list[Letter], queue: _Queue) -> None:
        """Once the queue has room, reserve `batch` (empties it) and queue its letters,
        which wait for the reservation to be on disk only when they reach DATA."""
        if not batch:
            return
        ahead = self._ahead()
        while queue.qsize() and queue.qsize() + len(batch) > ahead:
            self._taken.clear()
            await self._taken.wait()
        reserved = self.recorder.reserve(batch)
        # Letters still queued when a run stops never look at their reservation.
        reserved.add_done_callback(_quietly)
        letters = batch.copy()
        batch.clear()
        for letter in letters:
            queue.put_nowait((letter, reserved))

    async def _grace(self, stop: asyncio.Event, producer: asyncio.Task[None],
                     workers: list[asyncio.Task[None]]) -> None:
        """After a stop, take no new letter; give those in flight a bounded time."""
        stopped = asyncio.ensure_future(stop.wait())
        running: set[asyncio.Future[Any]] = set(workers)
        try:
            while running and not stop.is_set():
                # Only unfinished futures: a finished one would make every wait return at once.
                finished, _ = await asyncio.wait({stopped, *running},
                                                 return_when=asyncio.FIRST_COMPLETED)
                running -= finished
        finally:
            stopped.cancel()
        # Cancel the producer even when every worker has already stopped: it may be waiting
        # for room in a queue that nobody will read again. Queued letters stay pending.
        producer.cancel()
        if all(w.done() for w in workers):
            return
        # Only the letter each worker holds may finish.
        await asyncio.wait(workers, timeout=self.settings.timeout + 5)
        for worker in workers:
            worker.cancel()

    async def _work(self, connection: Connection, queue: _Queue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            item = await queue.get()
            self._taken.set()
            if item is None:
                return
            letter, reserved = item
            self._finish(await self._deliver(connection, letter, reserved))

    async def _deliver(self, connection: Connection, letter: Letter,
                       reserved: asyncio.Future[None]) -> Outcome:
        """Try one letter until it is sent, fails for good, or runs out of tries."""
        deadline = time.monotonic() + self.policy.retry_window
        in_data = False
        attempt_number = 0
        while True:
            attempt_number += 1
            # On disk long ago, unless the queue ran dry. Awaited before the letter takes its
            # slot of the rate: letters held up by a slow commit would go out in a burst.
            await reserved
            limiter = self._domains.for_address(letter.email) if self._domains else None
            if limiter:
                await limiter.acquire()
            await self._rate.acquire()

            def before_data() -> None:
                nonlocal in_data
                self.recorder.started(letter)
                in_data = True

            try:
                attempt = await connection.send(letter, before_data)
            except asyncio.CancelledError:
                status = Status.UNKNOWN if in_data else Status.DEFERRED
                self._finish(Outcome(letter, status, attempt_number,
                                     reply="the run was stopped while this letter was in flight"),
                             pause=False)
                raise
            in_data = False
            delay = self.policy.delay(attempt_number)
            retry = (attempt.retry and attempt_number < self.policy.max_attempts
                     and time.monotonic() + delay < deadline)
            if not retry:
                return Outcome(letter, attempt.status, attempt_number, attempt.code,
                               attempt.reply)
            await asyncio.sleep(delay)

    def _finish(self, outcome: Outcome, *, pause: bool = True) -> None:
        self.recorder.record(outcome)
        self.summary.counts[outcome.status] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)
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


def _quietly(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
