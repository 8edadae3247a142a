"""Paces: one shared rate for the whole run, optional per-domain rates, and the pause a
server asks for when it throttles the run.

Pacing is GCRA (a token bucket expressed as a schedule): letter k may start at
``start + k / rate``; up to `burst` letters may run ahead of that schedule (default 1, so
letters are evenly spaced and no second holds more than the rate plus one). Each `acquire`
reserves its slot at once, so concurrent callers are served in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from .settings import Rate


class RateLimiter:
    """Spaces events `1/rate` apart; `await acquire()` returns when the caller's slot comes."""

    def __init__(self, rate: Rate, *, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._interval = 0.0 if rate.unlimited else rate.per_seconds / rate.count
        self._slack = (max(burst, 1) - 1) * self._interval
        self._clock = clock
        self._next = float("-inf")

    def reserve(self) -> float:
        """Take the next slot; return how many seconds until it (0 if it is now)."""
        if self._interval == 0:
            return 0.0
        now = self._clock()
        slot = max(self._next, now - self._slack)
        self._next = slot + self._interval
        return max(0.0, slot - now)

    async def acquire(self) -> None:
        """Wait for the next slot."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class DomainLimits:
    """Per-domain limiters; a limit for `europa.eu` also covers `europarl.europa.eu`."""

    def __init__(self, rates: Mapping[str, Rate], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limiters = {domain.lower(): RateLimiter(rate, clock=clock)
                          for domain, rate in rates.items()}

    def __bool__(self) -> bool:
        return bool(self._limiters)

    def for_address(self, address: str) -> RateLimiter | None:
        """The limiter governing mail to `address`, if any (the most specific domain wins)."""
        domain = address.rpartition("@")[2].lower()
        while domain:
            if domain in self._limiters:
                return self._limiters[domain]
            domain = domain.partition(".")[2]
        return None


class Throttle:
    """The server's requests to slow down: each makes every connection pause (1 s, then
    twice as long each time it asks again, up to 5 minutes; a letter that goes through
    starts the count again) and leaves the run one connection fewer, down to one. Refusals
    that arrive during a pause answer tries made before it: they count as the same one."""

    FIRST = 1.0
    LONGEST = 300.0

    def __init__(self, connections: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.connections = connections
        self._clock = clock
        self._until = 0.0
        self._strikes = 0

    def hit(self) -> None:
        if self._clock() < self._until:
            return  # another connection's answer to the same request: it was counted
        self._strikes += 1
        pause = min(self.LONGEST, self.FIRST * 2.0 ** (self._strikes - 1))
        self._until = max(self._until, self._clock() + pause)
        self.connections = max(1, self.connections - 1)

    def eased(self) -> None:
        self._strikes = 0

    def wait(self) -> float:
        """Seconds until the connections may send again."""
        return max(0.0, self._until - self._clock())
