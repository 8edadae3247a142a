"""Several `mailer send` processes sharing one campaign through a send log on a real
PostgreSQL server: each letter sent once, by one worker, whatever happens to the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CampaignFiles, Result, Server
from pg import query

from mailer.settings import Settings
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
    assert f": {LETTERS} sent, " in review.out
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
