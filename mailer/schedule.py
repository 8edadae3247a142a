"""When letters may go: send windows in a recipient's time zone, an account's daily quota, and
the clock they are read on.

The library takes its clock as a parameter: `SystemClock` is the real one, and a test's clock
moves forward when it is asked to sleep, so no test waits for a window or a quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as daytime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY = 24 * 3600.0
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"(?:(\w{3})(?:-(\w{3}))?\s+)?(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")


class Clock(Protocol):
    """Time as the sender reads and waits on it."""

    def time(self) -> float:
        """Unix time, in seconds."""
        ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float, stop: asyncio.Event) -> bool:
        """Wait `seconds` unless `stop` is set first; whether the run may go on."""
        ...


class SystemClock:
    """The machine's clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, stop: asyncio.Event) -> bool:
        if seconds > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
        return not stop.is_set()


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (ValueError saying how to write one). Kept: ZoneInfo keeps
    only its last 8 strongly, and a list of officials spans more zones than that (each miss
    reads a file: 42 us a row)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone; write an IANA name such as "
                         "Europe/Paris, America/New_York or UTC") from None


def local_zone() -> ZoneInfo:
    """This machine's time zone (TZ, else /etc/localtime), UTC if neither says."""
    with contextlib.suppress(ValueError):
        if os.environ.get("TZ"):
            return zone(os.environ["TZ"].lstrip(":"))
    with contextlib.suppress(OSError, ValueError):
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            return zone(target.split("zoneinfo/", 1)[1])
    return ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Window:
    """When letters may go, on a recipient's clock: `Mon-Fri 09:00-17:00`, several spans
    separated by commas (`Mon-Fri 09:00-12:00, Sat 10:00-12:00`), days left out for every
    day."""

    text: str
    spans: tuple[tuple[frozenset[int], daytime, daytime], ...]

    @classmethod
    def parse(cls, text: str) -> Window:
        spans = []
        for part in text.split(","):
            match = _SPAN.fullmatch(part.strip())
            days = _days(match[1], match[2]) if match else None
            times = _times(match) if match else None
            if days is None or times is None:
                raise ValueError(f"{part.strip()!r} is not a send window; write it like "
                                 "Mon-Fri 09:00-17:00 (days, then the hours, the end after "
                                 "the start; several spans separated by commas)")
            spans.append((days, *times))
        return cls(text.strip(), tuple(spans))

    def __str__(self) -> str:
        return self.text

    def opens(self, moment: datetime) -> datetime:
        """`moment` if the window is open then, else when it next opens (in its zone)."""
        for offset in range(8):
            day = (moment + timedelta(days=offset)).date()
            starts = []
            for days, start, end in self.spans:
                if day.weekday() not in days:
                    continue
                opening = datetime.combine(day, start, moment.tzinfo)
                closing = (datetime.combine(day, end, moment.tzinfo) if end != daytime.max
                           else datetime.combine(day + timedelta(days=1), daytime(),
                                                 moment.tzinfo))
                if opening <= moment < closing:
                    return moment
                if moment < opening:
                    starts.append(opening)
            if starts:
                return min(starts)
        raise AssertionError("a window opens within a week")  # every span has a day


def _days(first: str | None, last: str | None) -> frozenset[int] | None:
    if first is None:
        return frozenset(range(7))
    if first.lower() not in _DAYS or (last is not None and last.lower() not in _DAYS):
        return None
    start = _DAYS.index(first.lower())
    stop = _DAYS.index(last.lower()) if last else start
    return frozenset((start + i) % 7 for i in range((stop - start) % 7 + 1))


def _times(match: re.Match[str]) -> tuple[daytime, daytime] | None:
    hours, minutes, end_hours, end_minutes = (int(match[i]) for i in range(3, 7))
    if hours > 23 or minutes > 59 or end_minutes > 59 or end_hours > 24 or (
            end_hours == 24 and end_minutes):
        return None
    start = daytime(hours, minutes)
    end = daytime.max if end_hours == 24 else daytime(end_hours, end_minutes)
    return (start, end) if end > start else None


class DailyLimit:
    """At most `count` letters in any 24 hours: when each of the last day's went, and so
    when the next may go."""

    def __init__(self, count: int, sent: Iterable[float]) -> None:
        self.count = count
        self._times = list(sent)
        heapq.heapify(self._times)

    def next_slot(self, now: float) -> float:
        """`now` if a letter may go now, else when one may."""
        while self._times and self._times[0] <= now - DAY:
            heapq.heappop(self._times)
        over = len(self._times) - self.count
        return now if over < 0 else heapq.nsmallest(over + 1, self._times)[-1] + DAY

    def take(self, now: float) -> None:
        """A letter goes now."""
        heapq.heappush(self._times, now)

    def give_back(self, taken: float) -> None:
        """A letter that took its place at `taken` did not go after all."""
        if taken in self._times:
            self._times.remove(taken)
            heapq.heapify(self._times)
