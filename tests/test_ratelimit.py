"""Pacing: the shared rate limit and per-domain limits, in isolation and against a server."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LoggedSend, Server, SlowDisk, log_with, make_letters, send_all
from hypothesis import given
from hypothesis import strategies as st
from servers import Faults

from mailer.ratelimit import DomainLimits, RateLimiter
from mailer.recorder import Recorder
from mailer.sender import Sender
from mailer.settings import Rate

Send = Callable[..., LoggedSend]


def _busiest_second(times: list[float]) -> int:
    """The most of `times` that fall within one second."""
    return max(sum(1 for t in times if start <= t < start + 1.0) for start in times)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_slots_are_spaced_evenly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(4), clock=clock)
    assert [limiter.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]


def test_an_idle_limiter_does_not_bank_a_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(2), clock=clock)
    limiter.reserve()
    clock.now += 60
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]


def test_a_burst_allows_that_many_at_once_then_paces() -> None:
    limiter = RateLimiter(Rate(10), burst=3, clock=FakeClock())
    assert [round(limiter.reserve(), 3) for _ in range(5)] == [0.0, 0.0, 0.0, 0.1, 0.2]


@given(st.integers(1, 50), st.integers(1, 5),
       st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=60))
def test_no_second_gets_more_than_the_rate_plus_the_burst(per_second: int, burst: int,
                                                          gaps: list[float]) -> None:
    # Callers arrive at any times (gaps between them); each starts when its slot comes.
    clock = FakeClock()
    limiter = RateLimiter(Rate(per_second), burst=burst, clock=clock)
    starts = []
    for gap in gaps:
        clock.now += gap
        starts.append(clock.now + limiter.reserve())
    assert starts == sorted(starts)
    assert _busiest_second(starts) <= per_second + burst


def test_zero_means_no_limit() -> None:
    limiter = RateLimiter(Rate.parse("0"), clock=FakeClock())
    assert {limiter.reserve() for _ in range(1000)} == {0.0}


@pytest.mark.parametrize(("text", "per_second"), [("30/min", 0.5), ("2/s", 2.0),
                                                  ("1000/h", 1000 / 3600), ("10/second", 10.0)])
def test_rates_parse(text: str, per_second: float) -> None:
    assert Rate.parse(text).per_second == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["fast", "10/fortnight", "-1/s", "/s", "5"])
def test_a_bad_rate_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="write it like 30/min, 2/s, 1000/h, or 0"):
        Rate.parse(text)


def test_a_domain_limit_covers_its_subdomains() -> None:
    limits = DomainLimits({"europa.eu": Rate(1)})
    assert limits.for_address("mep@europarl.europa.eu") is limits.for_address("x@europa.eu")
    assert limits.for_address("someone@example.org") is None


def _arrivals(server: Server) -> tuple[list[float], int]:
    """When the server got each letter, in order, and the most it got within one second."""
    times = sorted(m.at for m in server.handler.messages)
    return times, _busiest_second(times)


def test_sending_keeps_to_the_rate(smtp_server: Server, send_logged: Send) -> None:
    # 100 letters at 20/s over 4 connections: 99 intervals of 50 ms after the first.
    send_logged(smtp_server.settings(rate="20/s", concurrency=4), make_letters(100))
    times, busiest = _arrivals(smtp_server)
    elapsed = times[-1] - times[0]
    assert 4.7 <= elapsed <= 5.6  # 4.95 s, with scheduling jitter either way
    # The rate, plus one letter of burst at a window's edge, plus one whose mark's commit
    # (between its slot and its DATA) was quicker than the one before.
    assert busiest <= 22


def test_letters_held_up_by_a_slow_disk_keep_to_the_rate(smtp_server: Server,
                                                         tmp_path: Path) -> None:
    # A letter takes its slot of the rate before its mark: marks held up together go out
    # together, at most one per connection beyond the rate.
    settings = smtp_server.settings(rate="20/s", concurrency=4)
    letters = make_letters(40)
    log, run = log_with(tmp_path / "log.sqlite3", letters, SlowDisk)

    async def main() -> None:
        async with Recorder(log, run) as recorder:
            await send_all(Sender(settings, recorder), letters)

    asyncio.run(main())
    log.close()
    times, busiest = _arrivals(smtp_server)
    assert len(times) == 40
    assert busiest <= 21 + 4


def test_a_slow_domain_does_not_hold_up_the_others(smtp_server: Server,
                                                   send_logged: Send) -> None:
    slow = make_letters(4, domain="slow.example")
    fast = make_letters(30, domain="fast.example", start=10)
    settings = smtp_server.settings(domain_rates={"slow.example": Rate(4)}, concurrency=2)
    send_logged(settings, slow + fast)
    arrivals = {m.rcpt_tos[0]: m.at for m in smtp_server.handler.messages}
    slow_times = sorted(arrivals[letter.email] for letter in slow)
    last_fast = max(arrivals[letter.email] for letter in fast)
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(slow_times))
    assert last_fast < slow_times[-1]


# Both connections are busy with a fast letter for a second while both slow letters wait in
# the queue; then both connections are free at once, one for each slow letter.
@pytest.mark.faults(Faults(slow_data=1.0, slow_data_times=2))
def test_a_domain_limit_holds_across_connections(smtp_server: Server,
                                                 send_logged: Send) -> None:
    letters = make_letters(2, domain="fast.example") + make_letters(2, domain="slow.example")
    settings = smtp_server.settings(domain_rates={"slow.example": Rate(2)}, concurrency=2)
    send_logged(settings, letters)
    slow = sorted(m.at for m in smtp_server.handler.messages if "slow" in m.rcpt_tos[0])
    assert len(slow) == 2
    assert slow[1] - slow[0] >= 0.45
