"""A run's writes to the send log, made on a thread of their own so that the event loop never
waits for a commit.

`sending(letter)` returns once the letter's row is ``sending`` on disk; marks asked for while
a commit runs go together in the next one, which shares its fsync. `record(outcome)` queues
an outcome, committed with the next mark or within `LINGER` seconds. Every commit renews the
run's lease; while no letter goes, one is made every `HEARTBEAT` seconds to renew it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import LogError
from .message import Letter
from .outcome import Outcome
from .schedule import Clock, SystemClock
from .sendlog import Run, SendLog

_T = TypeVar("_T")


class Recorder:
    """Records one run: ``async with Recorder(log, run) as recorder: ...``."""

    LINGER = 0.05
    HEARTBEAT = 15.0

    def __init__(self, log: SendLog, run: Run, clock: Clock | None = None) -> None:
        self.log = log
        self.run = run
        self._clock = clock or SystemClock()
        # The log's one connection is used by this thread alone while the run lasts.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mailer-log")
        self._marks: list[tuple[str, asyncio.Future[None]]] = []
        self._outcomes: list[Outcome] = []
        self._due = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        # The first commit that failed: no letter may be marked after it.
        self.error: LogError | None = None

    async def __aenter__(self) -> Recorder:
        self._committer = asyncio.create_task(self._commits())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Write what is queued (one more try if a commit failed), then stop the thread."""
        self._closing = True
        self._due.set()
        try:
            if self._committer is not None:
                await self._committer
        finally:
            self._thread.shutdown(wait=True)

    async def call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a read of the log (`statuses`, say) on the log's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def sending(self, letter: Letter) -> None:
        """Mark `letter` ``sending``; return once that is on disk (LogError if it can't be).
        The letter must not reach DATA before."""
        if self.error is not None:
            raise self.error
        done = asyncio.get_running_loop().create_future()
        self._marks.append((letter.email.casefold(), done))
        self._due.set()
        await done

    def record(self, outcome: Outcome) -> None:
        """Queue a letter's outcome (never blocks)."""
        self._outcomes.append(outcome)
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.LINGER, self._due.set)

    async def _commits(self) -> None:
        while True:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), self.HEARTBEAT)
            self._due.clear()
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            marks, self._marks = self._marks, []
            outcomes, self._outcomes = self._outcomes, []
            if self._closing and not marks and not outcomes:
                return
            try:
                await self.call(self.log.commit, self.run, [key for key, _ in marks],
                                outcomes, self._clock.time())
            except Exception as error:  # whatever it is, no letter may wait on it forever
                failure = error if isinstance(error, LogError) else LogError(
                    f"send log {self.log.location}: cannot record: {error}")
                self.error = self.error or failure
                for _, done in marks:
                    if not done.done():
                        done.set_exception(failure)
                if self._closing:
                    return  # those outcomes stay `sending`: the next run makes them unknown
                self._outcomes[:0] = outcomes
            else:
                for _, done in marks:
                    if not done.done():
                        done.set_result(None)
