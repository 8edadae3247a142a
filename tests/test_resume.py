"""Running `mailer send` again: which letters a run sends, skips or lists, by their state."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SIMPLE_TEMPLATE, CampaignFiles, Result, Server
from servers import Faults

from mailer.campaign import Campaign
from mailer.delivery import Delivery, SendOptions
from mailer.message import Letter
from mailer.recipients import Recipient
from mailer.sink import Received
from mailer.sqlitelog import SQLiteLog

Run = Callable[..., Result]

LOG = "mailer-log.sqlite3"

MIXED_CSV = """\
email,title,name,country
refused@example.org,Ms,Refused Once,FR
busy@example.org,Mr,Busy Once,DE
lost@example.org,Dr,Lost Reply,IT
fine@example.org,Dr,All Fine,ES
"""


@pytest.fixture
def server_env(smtp_server: Server, files: CampaignFiles,
               monkeypatch: pytest.MonkeyPatch) -> Server:
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MAILER_CONCURRENCY", "1")  # list order, so faults hit known letters
    return smtp_server


def _rows(root: Path, campaign: str = "letter") -> dict[str, tuple[str, int]]:
    """address -> (status, attempts), read from the log file with a connection of its own."""
    db = sqlite3.connect(root / LOG)
    try:
        return {address: (status, attempts) for address, status, attempts in db.execute(
            "SELECT address, status, attempts FROM letters WHERE campaign = ?", (campaign,))}
    finally:
        db.close()


@pytest.fixture
def mixed(server_env: Server, files: CampaignFiles, run: Run) -> Server:
    """A first run that leaves one letter in each state: failed (550), deferred (451, one try
    only), unknown (connection dropped after DATA, the server kept it) and sent."""
    files.write_csv(MIXED_CSV)
    server_env.handler.faults = Faults(
        rcpt={"refused@example.org": "550 5.1.1 no such user",
              "busy@example.org": "451 4.3.0 try again later"},
        rcpt_times={"refused@example.org": 1, "busy@example.org": 1}, drop_after_data=1)
    result = run("send", "--yes", "--max-attempts", "1")
    assert result.code == 1, result.err
    assert _rows(files.root) == {"refused@example.org": ("failed", 1),
                                 "busy@example.org": ("deferred", 1),
                                 "lost@example.org": ("unknown", 1),
                                 "fine@example.org": ("sent", 1)}
    assert server_env.handler.by_recipient() == {"lost@example.org": 1, "fine@example.org": 1}
    return server_env


def test_the_campaign_is_named_after_the_template_file(server_env: Server, run: Run,
                                                        files: CampaignFiles) -> None:
    (files.root / "templates" / "appeal.txt").write_text(SIMPLE_TEMPLATE, encoding="utf-8")
    result = run("send", "--yes", "--template", "templates/appeal.txt")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "Campaign 'appeal': 2 letters to send."
    log = SQLiteLog.open(files.root / LOG)
    try:
        assert log.campaigns() == ["appeal"]
    finally:
        log.close()


def test_another_campaign_name_is_a_campaign_of_its_own(server_env: Server, run: Run,
                                                        files: CampaignFiles) -> None:
    run("send", "--yes")
    result = run("send", "--yes", "--campaign", "reminder")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "Campaign 'reminder': 2 letters to send."
    assert server_env.handler.by_recipient() == {"ada@example.org": 2, "grace@example.net": 2}
    assert _rows(files.root, "reminder") == {"ada@example.org": ("sent", 1),
                                             "grace@example.net": ("sent", 1)}


def test_a_typo_fixed_in_the_template_sends_nothing_again(server_env: Server, run: Run,
                                                         files: CampaignFiles) -> None:
    run("send", "--yes")
    files.write_template(SIMPLE_TEMPLATE.replace("Please act now.", "Please act now!"))
    result = run("send", "--yes")
    assert (result.code, result.out) == (0, "Campaign 'letter': 0 letters to send; skipping "
                                            "2 already sent.\nNothing to send.\n")
    assert server_env.handler.by_recipient() == {"ada@example.org": 1, "grace@example.net": 1}
    db = sqlite3.connect(files.root / LOG)
    runs = db.execute("SELECT campaign, template_sha256, ended IS NOT NULL, outcome "
                      "FROM runs ORDER BY id").fetchall()
    db.close()
    assert [(c, ended, outcome) for c, _, ended, outcome in runs] == \
        [("letter", 1, "completed"), ("letter", 1, "completed")]
    assert runs[0][1] != runs[1][1]


def test_a_rerun_sends_deferred_and_lists_failed_and_unknown(mixed: Server, run: Run,
                                                             files: CampaignFiles) -> None:
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == (
        "Campaign 'letter': 1 letter to send; skipping 1 failed (--retry-failed to retry), "
        "1 already sent, 1 unknown: the server may have them (--resend-unknown sends them "
        "again, and some may arrive twice).")
    assert mixed.handler.by_recipient() == {"busy@example.org": 1, "lost@example.org": 1,
                                            "fine@example.org": 1}
    assert _rows(files.root)["busy@example.org"] == ("sent", 2)


def _send(delivery: Delivery) -> None:
    async def main() -> None:
        async for _ in delivery.send(asyncio.Event()):
            pass

    asyncio.run(main())


def test_a_rerun_renders_only_the_letters_it_sends(mixed: Server, files: CampaignFiles,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    campaign = Campaign(mixed.settings(), files.recipients, files.template)
    built: list[str] = []
    build = campaign.builder.build

    def counted(recipient: Recipient, **options: str | None) -> Letter:
        built.append(recipient.email)
        return build(recipient, **options)

    log = SQLiteLog.open(files.root / LOG)
    with log, Delivery(campaign, log, SendOptions()) as delivery:
        assert delivery.plan.due == 1
        monkeypatch.setattr(campaign.builder, "build", counted)
        _send(delivery)
    assert built == ["busy@example.org"]
    assert mixed.handler.by_recipient()["busy@example.org"] == 1


def test_retry_failed_also_sends_the_failed_letters(mixed: Server, run: Run,
                                                    files: CampaignFiles) -> None:
    result = run("send", "--yes", "--retry-failed")
    assert result.code == 0, result.err
    assert mixed.handler.by_recipient() == {"refused@example.org": 1, "busy@example.org": 1,
                                            "lost@example.org": 1, "fine@example.org": 1}
    assert _rows(files.root)["refused@example.org"] == ("sent", 2)
    assert _rows(files.root)["lost@example.org"] == ("unknown", 1)


def test_resend_unknown_also_sends_the_unknown_letters(mixed: Server, run: Run,
                                                       files: CampaignFiles) -> None:
    result = run("send", "--yes", "--resend-unknown")
    assert result.code == 0, result.err
    # The server had kept it: a resend of an unknown letter is the one way to a duplicate.
    assert mixed.handler.by_recipient() == {"busy@example.org": 1, "lost@example.org": 2,
                                            "fine@example.org": 1}
    assert _rows(files.root)["lost@example.org"] == ("sent", 2)
    assert _rows(files.root)["refused@example.org"] == ("failed", 1)


def test_recipients_added_later_are_sent_and_removed_ones_left_alone(
        server_env: Server, run: Run, files: CampaignFiles) -> None:
    files.write_csv("email,title,name,country\n"
                    "ada@example.org,Dr,Ada Lovelace,UK\n"
                    "grace@example.net,Admiral,Grace Hopper,US\n"
                    "alan@example.com,Mr,Alan Turing,UK\n")
    run("send", "--yes", "--limit", "1")
    files.write_csv("email,title,name,country\n"
                    "ada@example.org,Dr,Ada Lovelace,UK\n"
                    "alan@example.com,Mr,Alan Turing,UK\n"
                    "mary@example.com,Dr,Mary Somerville,UK\n")
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == \
        "Campaign 'letter': 2 letters to send; skipping 1 already sent."
    assert server_env.handler.by_recipient() == {"ada@example.org": 1, "alan@example.com": 1,
                                                 "mary@example.com": 1}
    assert _rows(files.root) == {"ada@example.org": ("sent", 1),
                                 "grace@example.net": ("pending", 0),
                                 "alan@example.com": ("sent", 1),
                                 "mary@example.com": ("sent", 1)}


def test_an_address_retyped_in_capitals_is_not_sent_again(server_env: Server, run: Run,
                                                          files: CampaignFiles) -> None:
    run("send", "--yes")
    files.write_csv(files.recipients.read_text(encoding="utf-8")
                    .replace("ada@example.org", "Ada@Example.ORG"))
    result = run("send", "--yes")
    assert result.out.startswith("Campaign 'letter': 0 letters to send; skipping 2 already")
    assert len(server_env.handler.messages) == 2


def test_an_address_listed_twice_gets_one_letter_with_allow_duplicates(
        server_env: Server, run: Run, files: CampaignFiles) -> None:
    others = [f"person{n}@example.org,Dr,Person {n},UK" for n in range(40)]
    files.write_csv("\n".join(["email,title,name,country", "ada@example.org,Dr,Ada,UK",
                               "ADA@example.org,Dr,Ada Again,UK", *others,
                               "ada@example.org,Dr,Ada Once More,UK"]) + "\n")
    result = run("send", "--yes", "--allow-duplicates")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == ("Campaign 'letter': 41 letters to send; skipping 2 "
                                          "rows repeating an address (one letter per address).")
    assert server_env.handler.by_recipient()["ada@example.org"] == 1
    assert len(server_env.handler.messages) == 41
    assert b"Dear Dr Ada," in server_env.handler.messages[0].data  # the first row's letter


def test_a_second_send_on_a_leased_log_refuses_to_start(server_env: Server, run: Run,
                                                         files: CampaignFiles) -> None:
    holder = SQLiteLog.open(files.root / LOG)
    lease = holder.begin_run("other", {}, "hash")
    try:
        result = run("send", "--yes")
    finally:
        holder.end_run(lease, "completed", {})
        holder.close()
    assert result.code == 2
    assert result.err.startswith(f"error: another mailer send is using {LOG}: run 1 (pid ")
    assert result.err.endswith("); wait for it to finish, or stop it, before starting another\n")
    assert result.out == ""
    assert server_env.handler.messages == []
    assert _rows(files.root) == {}
    assert run("send", "--yes").code == 0  # the lease went with its holder


def test_a_dry_run_shows_what_a_live_run_would_skip_and_why(mixed: Server, run: Run,
                                                            files: CampaignFiles) -> None:
    result = run("send", "--dry-run")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    start = lines.index(f"Send log {LOG}: a live run now has 1 letter to send; skipping "
                        "1 failed (--retry-failed to retry), 1 already sent, 1 unknown: the "
                        "server may have them (--resend-unknown sends them again, and some may "
                        "arrive twice).")
    assert lines[start + 1:] == ["Skipped by a live run:",
                                 "  refused@example.org: failed",
                                 "  lost@example.org: unknown",
                                 "  fine@example.org: sent",
                                 "Dry run: 1 letter written to outbox/, 0 problems; nothing "
                                 "was sent."]
    assert len(mixed.handler.messages) == 2


def test_a_dry_run_with_the_resend_flags_plans_those_letters_too(mixed: Server,
                                                                  run: Run) -> None:
    result = run("send", "--dry-run", "--retry-failed", "--resend-unknown")
    assert f"Send log {LOG}: a live run now has 3 letters to send; skipping 1 already " \
           "sent.\nSkipped by a live run:\n  fine@example.org: sent\n" in result.out


def test_a_dry_run_leaves_the_log_as_it_was(mixed: Server, run: Run,
                                            files: CampaignFiles) -> None:
    db = sqlite3.connect(files.root / LOG)
    # As a run killed while sending it leaves the deferred letter: marked, unfinished.
    db.execute("UPDATE letters SET status = 'sending' WHERE address = 'busy@example.org'")
    db.commit()
    db.close()
    before = (files.root / LOG).read_bytes()
    result = run("send", "--dry-run")
    assert "  busy@example.org: sending\n" in result.out
    assert (files.root / LOG).read_bytes() == before
    assert _rows(files.root)["busy@example.org"] == ("sending", 1)


def test_a_dry_run_without_a_log_creates_none(files: CampaignFiles, run: Run) -> None:
    result = run("send", "--dry-run")
    assert result.code == 0, result.err
    assert "Send log" not in result.out
    assert not (files.root / LOG).exists()
    assert re.search(r"^Dry run: 2 letters written to outbox/", result.out, re.M)


def test_a_row_added_to_the_list_after_the_check_waits_for_the_next_run(
        smtp_server: Server, files: CampaignFiles, run: Run, server_env: Server) -> None:
    # `mailer send` asks before sending: the list may be edited while it waits.
    campaign = Campaign(smtp_server.settings(), files.recipients, files.template)
    log = SQLiteLog.open(files.root / LOG)
    with log, Delivery(campaign, log, SendOptions()) as delivery:
        assert delivery.plan.due == 2
        with files.recipients.open("a", encoding="utf-8") as csv:
            csv.write("late@example.org,Ms,Late Comer,FR\n")
        _send(delivery)
    assert "late@example.org" not in smtp_server.handler.by_recipient()
    result = run("send", "--yes")
    assert result.code == 0, result.err
    assert smtp_server.handler.by_recipient()["late@example.org"] == 1
    assert _rows(files.root)["late@example.org"] == ("sent", 1)


def test_a_list_edited_during_a_run_stops_it_and_says_what_was_not_sent(
        server_env: Server, files: CampaignFiles, run: Run) -> None:
    rows = [f"person{n}@example.org,Dr,Person {n},UK" for n in range(40)]
    files.write_csv("email,title,name,country\n" + "\n".join(rows) + "\n")

    def cut_at_five(message: Received) -> None:
        if len(server_env.handler.messages) == 5:
            files.write_csv("email,title,name,country\n" + "\n".join(rows[:20]) + "\n")

    server_env.handler.on_message = cut_at_five
    result = run("send", "--yes", "--rate", "20/s")
    sent = len(server_env.handler.messages)
    assert result.code == 1, result
    assert 5 <= sent <= 7
    assert result.out.splitlines()[-1] == (
        f"Not sent: {40 - sent} planned letters: recipients.csv changed during the run, so it "
        "stopped taking letters. Run mailer send again: it checks the list as it is now and "
        "sends what is due.")
    result = run("send", "--yes")  # the list as it is now: the 20 left
    assert result.code == 0, result
    assert server_env.handler.by_recipient() == {f"person{n}@example.org": 1 for n in range(20)}
