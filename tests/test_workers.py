"""Several `mailer send` processes sharing one campaign through a send log on a real
PostgreSQL server: each letter sent once, by one worker, whatever happens to the others."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FAST, CampaignFiles, MovedClock, Result, Server
from pg import query

from mailer.campaign import Campaign
from mailer.delivery import Delivery, SendOptions, list_hash, template_hash
from mailer.message import Letter
from mailer.outcome import Outcome, Status
from mailer.pglog import PostgresLog
from mailer.sendlog import Run
from mailer.settings import Rate, Settings
from mailer.sink import Received

LETTERS = 300
LIST = "email,title,name,country\n" + "".join(
    f"member{n}@parl{n % 7}.example,MEP,Member {n},Country {n % 5}\n" for n in range(LETTERS))


@pytest.fixture
def campaign(files: CampaignFiles, smtp_server: Server, pg_url: str,
             monkeypatch: pytest.MonkeyPatch) -> str:
    """The list of 300 officials, the server, and the shared log's URL in the environment."""
    files.write_csv(LIST)
    for key, value in {**smtp_server.env(), "MAILER_LOG": pg_url}.items():
        monkeypatch.setenv(key, value)
    return pg_url


def _worker(root: Path, rate: str = "40/s", **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mailer", "send", "--yes"], cwd=root,
                            env={**os.environ, "MAILER_RATE": rate, "MAILER_CONCURRENCY": "2",
                                 **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _entries(run: Callable[..., Result], status: str) -> list[dict[str, object]]:
    result = run("log", "--status", status, "--format", "json")
    assert result.code == 0, result.err
    return list(json.loads(result.out))


def test_a_campaign_on_postgresql_sends_and_reviews_as_on_sqlite(
        campaign: str, smtp_server: Server, run: Callable[..., Result]) -> None:
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert "Log: postgresql://mailer@127.0.0.1:" in result.out
    assert smtp_server.handler.by_recipient() == {
        f"member{n}@parl{n % 7}.example": 1 for n in range(LETTERS)}
    again = run("send", "--yes")
    assert f"0 letters to send; skipping {LETTERS} already sent" in again.out
    review = run("log")
    assert f"Campaign 'letter': 0 pending, {LETTERS} sent," in review.out
    assert "  2 workers:" in review.out  # the run that sent, and the one that found nothing
    assert f"): {LETTERS} sent; ended " in review.out  # the worker that sent them
    assert review.out.endswith("No recipient needs attention: every letter went.\n")
    assert len(_entries(run, "sent")) == LETTERS
    assert run("report").code == 0
    page = (Path.cwd() / "report.html").read_text(encoding="utf-8")
    assert "<h2>Workers</h2>" in page
    assert f"<td>{LETTERS:,} sent</td>" in page


def test_workers_with_another_list_are_refused_saying_so(
        campaign: str, files: CampaignFiles, smtp_server: Server,
        run: Callable[..., Result]) -> None:
    first = _worker(files.root, rate="20/s")
    try:
        deadline = time.monotonic() + 20
        while not smtp_server.handler.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        other = files.root / "other.csv"
        other.write_text(LIST.replace("Member 1,", "Member One,"), encoding="utf-8")
        refused = run("send", "--yes", "--recipients", "other.csv")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert refused.code == 2
    assert refused.err.startswith("error: the recipient list differs from the one run ")
    assert "give every worker the same" in refused.err


def test_three_workers_share_a_campaign_and_a_killed_one_loses_and_repeats_nothing(
        campaign: str, files: CampaignFiles, smtp_server: Server,
        run: Callable[..., Result]) -> None:
    handler = smtp_server.handler
    workers = [_worker(files.root) for _ in range(3)]
    victim = workers[1]

    def kill_mid_run(message: Received) -> None:
        if len(handler.messages) == LETTERS // 3:
            os.kill(victim.pid, signal.SIGKILL)

    handler.on_message = kill_mid_run
    try:
        victim.wait(timeout=60)
        # The minute after which the others take its letters passes at once (the lease's
        # expiry on its own is checked in test_pglog).
        query(campaign, "UPDATE runs SET heartbeat = heartbeat - interval '2 minutes' "
                        "WHERE pid = %s", victim.pid)
        outputs = [worker.communicate(timeout=60) for worker in workers]
    finally:
        handler.on_message = None
    assert victim.returncode == -signal.SIGKILL
    for worker, (out, err) in zip(workers, outputs, strict=True):
        if worker is not victim:
            assert worker.returncode == 0, (out, err)
    counts = handler.by_recipient()
    assert max(counts.values()) == 1  # no letter twice
    unknown = {str(e["address"]) for e in _entries(run, "unknown")}
    sent = {str(e["address"]) for e in _entries(run, "sent")}
    # The dead worker's letters in flight are unknown (it may or may not have sent them);
    # every other letter went, by one of the live workers.
    assert 1 <= len(unknown) <= 2
    assert len(sent) + len(unknown) == LETTERS
    assert sent <= set(counts)
    review = run("log")
    assert "  3 workers:" in review.out
    assert "(died)" in review.out
    listed = run("log", "--status", "unknown")
    assert all(address in listed.out for address in unknown)


def test_a_log_url_shows_and_records_no_password() -> None:
    settings = Settings(log="postgresql://olive:s3cr%40t@db.example:5432/campaign"
                            "?sslmode=require&sslpassword=k3y")
    assert settings.shown_log == "postgresql://olive@db.example:5432/campaign?sslmode=require"
    assert "s3cr" not in json.dumps(settings.public())
    assert "k3y" not in json.dumps(settings.public())


def _co_worker(url: str, campaign: Campaign, claims: list[str]) -> tuple[PostgresLog, Run]:
    """Another worker of the campaign, driven by the test through the log, holding `claims`."""
    log = PostgresLog.open(url)
    run = log.begin_run(campaign.name, {}, template_hash(campaign), "x", list_hash(campaign))
    assert log.claim(run, claims, [Status.PENDING]) == set(claims)
    return log, run


def _send(delivery: Delivery) -> None:
    async def drain() -> None:
        async for _ in delivery.send(asyncio.Event()):
            pass

    asyncio.run(drain())


def _officials(files: CampaignFiles, count: int) -> list[str]:
    emails = [f"p{n}@example.org" for n in range(count)]
    files.write_csv("email,title,name\n" + "".join(f"{e},Dr,P\n" for e in emails))
    return emails


def test_a_dead_workers_letters_go_out_though_the_campaign_ran_long_before_it_died(
        files: CampaignFiles, smtp_server: Server, pg_url: str) -> None:
    # 100 letters at 1/s on a moved clock: the co-worker holding the first 8 is found dead
    # early, and its letters are free to take once the survivor's own are done, 92 s in:
    # past the minute and a half it would look for them if it counted from its start.
    emails = _officials(files, 100)
    campaign = Campaign(smtp_server.settings(rate=Rate(1), concurrency=1), files.recipients,
                        files.template)
    handler = smtp_server.handler
    with PostgresLog.open(pg_url) as log, Delivery(campaign, log, SendOptions(), policy=FAST,
                                                   clock=MovedClock(1_800_000_000.0)) as alive:
        other, dead = _co_worker(pg_url, campaign, emails[:8])
        other.close()

        def dies(message: Received) -> None:
            if len(handler.messages) == 5:
                query(pg_url, "UPDATE runs SET heartbeat = heartbeat - interval '2 minutes' "
                              "WHERE id = %s", dead.id)

        handler.on_message = dies
        _send(alive)
    assert handler.by_recipient() == dict.fromkeys(emails, 1)


def test_a_letter_a_co_worker_sent_during_this_run_is_not_resent_by_resend_unknown(
        files: CampaignFiles, smtp_server: Server, pg_url: str) -> None:
    # The co-worker holds p0; its content goes, its reply is lost (unknown), and it ends.
    # --resend-unknown means the letters unknown before this run, not this one.
    emails = _officials(files, 20)
    campaign = Campaign(smtp_server.settings(concurrency=1), files.recipients, files.template)
    handler = smtp_server.handler
    with PostgresLog.open(pg_url) as log, Delivery(campaign, log,
                                                   SendOptions(resend_unknown=True),
                                                   policy=FAST) as alive:
        other, run = _co_worker(pg_url, campaign, emails[:1])
        other.commit(run, emails[:1], [], 0.0)
        lost = Outcome.of(Letter(2, emails[0], "o@example.org", (emails[0],), "<m@x>", b"x"),
                          Status.UNKNOWN, 1, reply="timed out after the letter was sent")

        def reply_lost(message: Received) -> None:
            if len(handler.messages) == 1:
                other.commit(run, [], [lost], 1.0)
                other.end_run(run, "completed", {})

        handler.on_message = reply_lost
        _send(alive)
        other.close()
    assert emails[0] not in handler.by_recipient()
    assert len(handler.messages) == 19
    assert query(pg_url, "SELECT status, run_id FROM letters WHERE email = %s",
                 emails[0]) == [("unknown", run.id)]
