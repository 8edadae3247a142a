"""`mailer log`: per-campaign counts, first/last send, rate, and who needs attention, why."""

from __future__ import annotations

import base64
import csv
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PASSWORD, USER, CampaignFiles, Result, Server
from servers import Faults

from mailer.display import TABLE_ROWS

Run = Callable[..., Result]

LOG = "mailer-log.sqlite3"

THREE_CSV = """\
email,title,name,country
ada@example.org,Dr,Ada Lovelace,UK
grace@example.net,Admiral,Grace Hopper,US
alan@example.com,Mr,Alan Turing,UK
"""

# Times pinned into the log after the sends, so that every character of the output is known.
PINNED = {"ada@example.org": ("2025-03-01T09:00:00.000+00:00", "2025-03-01T09:00:00.000+00:00"),
          "grace@example.net": ("2025-03-01T09:00:30.000+00:00",
                                "2025-03-01T09:01:00.000+00:00"),
          "alan@example.com": ("2025-03-01T09:01:30.000+00:00", "2025-03-01T09:02:00.000+00:00")}


@pytest.fixture
def server_env(smtp_server: Server, files: CampaignFiles,
               monkeypatch: pytest.MonkeyPatch) -> Server:
    for key, value in smtp_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MAILER_CONCURRENCY", "1")
    return smtp_server


@pytest.fixture
def sent_log(server_env: Server, files: CampaignFiles, run: Run) -> Path:
    """Campaign 'letter': Ada and Alan sent, Grace refused (550); then campaign 'reminder'
    sent to Ada only (--limit 1), leaving Grace and Alan pending."""
    files.write_csv(THREE_CSV)
    server_env.handler.faults = Faults(rcpt={"grace@example.net": "550 5.1.1 no such user"},
                                       rcpt_times={"grace@example.net": 1})
    assert run("send", "--yes").code == 1
    assert run("send", "--yes", "--campaign", "reminder", "--limit", "1").code == 0
    path = files.root / LOG
    db = sqlite3.connect(path)
    for address, (first, last) in PINNED.items():
        db.execute("UPDATE letters SET first_attempt = ?, last_attempt = ? WHERE address = ? "
                   "AND status != 'pending'",
                   (first, last, address))
    db.commit()
    db.close()
    return path


def test_log_without_a_log_file_is_a_clear_error(files: CampaignFiles, run: Run) -> None:
    result = run("log")
    assert (result.code, result.out) == (2, "")
    assert result.err == (f"error: no send log at {LOG}; nothing has been sent with this log "
                          "yet\n")
    assert not (files.root / LOG).exists()


def test_log_summarises_each_campaign_and_lists_who_needs_attention(sent_log: Path,
                                                                    run: Run) -> None:
    result = run("log")
    assert result.code == 0, result.err
    title = " " * 42 + "Recipients that need attention" + " " * 42  # centred over the table
    assert result.out == f"""\
Campaign 'letter': 0 pending, 2 sent, 0 deferred, 1 failed, 0 unknown
  first sent 2025-03-01T09:00:00.000+00:00, last 2025-03-01T09:02:00.000+00:00, 0.5 letters/min
Campaign 'reminder': 2 pending, 1 sent, 0 deferred, 0 failed, 0 unknown
  first sent 2025-03-01T09:00:00.000+00:00, last 2025-03-01T09:00:00.000+00:00
{title}
┏━━━━━━━━━━┳━━━━━━┳━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┓
┃ campaign ┃ line ┃ address           ┃ status  ┃ tries ┃ last attempt                  ┃ server reply           ┃
┡━━━━━━━━━━╇━━━━━━╇━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━┩
│ letter   │ 3    │ grace@example.net │ failed  │ 1     │ 2025-03-01T09:01:00.000+00:00 │ 550 5.1.1 no such user │
│ reminder │ 3    │ grace@example.net │ pending │ 0     │                               │                        │
│ reminder │ 4    │ alan@example.com  │ pending │ 0     │                               │                        │
└──────────┴──────┴───────────────────┴─────────┴───────┴───────────────────────────────┴────────────────────────┘
"""  # noqa: E501


def test_log_campaign_shows_only_that_campaign(sent_log: Path, run: Run) -> None:
    result = run("log", "--campaign", "letter", "--format", "csv")
    assert result.code == 0, result.err
    assert {row["campaign"] for row in csv.DictReader(io.StringIO(result.out))} == {"letter"}
    result = run("log", "--campaign", "letter")
    assert "Campaign 'reminder'" not in result.out
    assert result.out.startswith("Campaign 'letter': 0 pending, 2 sent, 0 deferred, 1 failed")


def test_log_status_lists_the_recipients_in_that_state(sent_log: Path, run: Run) -> None:
    result = run("log", "--campaign", "letter", "--status", "sent")
    assert result.code == 0, result.err
    table = result.out.split("letters/min\n", 1)[1]
    assert table == """\
┏━━━━━━┳━━━━━━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━┓
┃ line ┃ address          ┃ status ┃ tries ┃ last attempt                  ┃ server reply         ┃
┡━━━━━━╇━━━━━━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━┩
│ 2    │ ada@example.org  │ sent   │ 1     │ 2025-03-01T09:00:00.000+00:00 │ 250 2.0.0 OK: queued │
│ 4    │ alan@example.com │ sent   │ 1     │ 2025-03-01T09:02:00.000+00:00 │ 250 2.0.0 OK: queued │
└──────┴──────────────────┴────────┴───────┴───────────────────────────────┴──────────────────────┘
"""
    result = run("log", "--campaign", "letter", "--status", "deferred", "--status", "unknown")
    assert result.out.endswith("\nNo recipients are deferred or unknown.\n")


def test_log_csv_without_a_status_has_a_row_per_recipient(sent_log: Path, run: Run) -> None:
    result = run("log", "--format", "csv")
    assert result.code == 0, result.err
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [(r["campaign"], r["address"], r["line"], r["status"], r["attempts"],
             r["reply_code"], r["reply_text"]) for r in rows][:3] == [
        ("letter", "ada@example.org", "2", "sent", "1", "250", "2.0.0 OK: queued"),
        ("letter", "grace@example.net", "3", "failed", "1", "550", "5.1.1 no such user"),
        ("letter", "alan@example.com", "4", "sent", "1", "250", "2.0.0 OK: queued")]
    assert [(r["campaign"], r["status"]) for r in rows][3:] == [
        ("reminder", "sent"), ("reminder", "pending"), ("reminder", "pending")]
    rows = rows[1:]
    assert rows[0]["first_attempt"] == "2025-03-01T09:00:30.000+00:00"
    assert rows[0]["message_id"].startswith("<")


def test_log_json_describes_each_recipient(sent_log: Path, run: Run) -> None:
    result = run("log", "--status", "failed", "--format", "json")
    assert result.code == 0, result.err
    entries = json.loads(result.out)
    message_id = entries[0].pop("message_id")
    assert entries == [{"campaign": "letter", "address": "grace@example.net", "line": 3,
                        "status": "failed", "attempts": 1,
                        "first_attempt": "2025-03-01T09:00:30.000+00:00",
                        "last_attempt": "2025-03-01T09:01:00.000+00:00",
                        "reply_code": 550, "reply_text": "5.1.1 no such user",
                        "bounce_status": None, "bounce_text": None, "bounced_at": None,
                        "reply": None, "reply_at": None, "reply_from": None,
                        "reply_subject": None, "paper_at": None, "paper_pages": None}]
    db = sqlite3.connect(sent_log)
    assert db.execute("SELECT message_id FROM letters WHERE campaign = 'letter' AND "
                      "address = 'grace@example.net'").fetchone() == (message_id,)
    db.close()


def test_a_run_records_its_start_end_settings_and_counts(sent_log: Path) -> None:
    db = sqlite3.connect(sent_log)
    runs = db.execute("SELECT campaign, started, ended, settings, outcome, counts FROM runs "
                      "ORDER BY id").fetchall()
    db.close()
    assert [(r[0], r[4], json.loads(r[5])) for r in runs] == [
        ("letter", "completed", {"sent": 2, "failed": 1}),
        ("reminder", "completed", {"sent": 1})]
    for _, started, ended, *_ in runs:
        assert started < ended
    settings = json.loads(runs[0][3])
    assert (settings["smtp_host"], settings["from_address"], settings["concurrency"]) == \
        ("127.0.0.1", "organiser@example.org", "1")
    assert "smtp_password" not in settings


def test_the_password_never_reaches_the_log_or_its_output(
        tls_server: Server, ca_file: Path, files: CampaignFiles, run: Run,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**tls_server.env(), "MAILER_SMTP_SECURITY": "starttls",
                       "MAILER_SMTP_CA_FILE": str(ca_file), "MAILER_SMTP_USERNAME": USER,
                       "MAILER_SMTP_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(key, value)
    results = [run("send", "--yes")]
    assert results[0].code == 0, results[0].err
    assert len(tls_server.handler.messages) == 2
    results += [run("log", "--status", status, "--format", output)
                for status in ("sent", "pending") for output in ("table", "csv", "json")]
    assert all(r.code == 0 for r in results)
    forms = [PASSWORD.encode(), base64.b64encode(PASSWORD.encode()),
             PASSWORD.encode("utf-16-le")]
    stored = b"".join(p.read_bytes() for p in files.root.glob(f"{LOG}*"))
    assert USER.encode() in stored  # the settings are there, without the secret
    assert [form for form in forms if form in stored] == []
    assert [r for r in results if PASSWORD in r.out + r.err] == []


def test_a_log_from_a_newer_mailer_is_refused_by_log_and_send(server_env: Server, run: Run,
                                                              files: CampaignFiles) -> None:
    db = sqlite3.connect(files.root / LOG)
    db.execute("PRAGMA user_version = 99")
    db.close()
    message = f"error: {LOG} was written by a newer mailer (schema 99); upgrade mailer to read it\n"
    for command in (["log"], ["send", "--yes"], ["send", "--dry-run"]):
        result = run(*command)
        assert (result.code, result.err) == (2, message), command
        assert "Traceback" not in result.out
    assert server_env.handler.messages == []


def test_log_of_an_unknown_campaign_names_the_known_ones(sent_log: Path, run: Run) -> None:
    result = run("log", "--campaign", "leter")
    assert result.code == 2
    assert result.err == (f"error: no campaign 'leter' in {LOG}; it has: 'letter', "
                          "'reminder'\n")


HOSTILE = ("550 5.1.1 [/] no [info] such [mx.example.org] user "
           "\x1b]8;;http://evil.example\x07click\x1b]8;;\x07\x1b[2J")
SHOWN = ("550 5.1.1 [/] no [info] such [mx.example.org] user "
         "\\x1b]8;;http://evil.example\\x07click\\x1b]8;;\\x07\\x1b[2J")


@pytest.fixture
def hostile_log(server_env: Server, files: CampaignFiles, run: Run) -> Result:
    """A send whose one refusal is Rich markup and terminal control sequences."""
    files.write_csv(THREE_CSV.replace("alan@example.com", "=1+2@example.com"))
    server_env.handler.faults = Faults(rcpt={"grace@example.net": HOSTILE})
    result = run("send", "--yes")
    assert result.code == 1, result
    return result


def test_a_servers_reply_is_never_markup_nor_terminal_control(hostile_log: Result,
                                                               run: Run) -> None:
    assert f"failed   grace@example.net  {SHOWN}\n" in hostile_log.out
    result = run("log")
    assert result.code == 0, result.err
    assert "\x1b" not in result.out + result.err
    table = "".join(line.strip("│ \n") for line in result.out.splitlines())
    assert "[/] no [info] such [mx.example.org] user \\x1b]8;;http://evil.example\\x07click" \
        in table.replace("││", "").replace("  ", " ")


def test_a_csv_export_cannot_run_as_a_spreadsheet_formula(hostile_log: Result,
                                                           run: Run) -> None:
    result = run("log", "--status", "sent", "--status", "failed", "--format", "csv")
    assert result.code == 0, result.err
    rows = {r["line"]: r for r in csv.DictReader(io.StringIO(result.out))}
    assert rows["4"]["address"] == "'=1+2@example.com"
    # Not a formula, but no escape sequence either (a CSV is often read on a terminal).
    assert rows["3"]["reply_text"] == SHOWN.removeprefix("550 ")


def test_a_long_table_shows_its_first_rows_and_says_how_to_see_them_all(
        server_env: Server, files: CampaignFiles, run: Run) -> None:
    rows = [f"person{n}@example.org,Dr,Person {n},UK" for n in range(TABLE_ROWS + 6)]
    files.write_csv("email,title,name,country\n" + "\n".join(rows) + "\n")
    assert run("send", "--yes", "--limit", "1").code == 0  # the rest are registered, pending
    result = run("log")
    assert sum("@example.org" in line for line in result.out.splitlines()) == TABLE_ROWS
    assert result.out.endswith("\n... and 5 more (--format csv lists them all)\n")
    listed = run("log", "--format", "json")
    assert len(json.loads(listed.out)) == TABLE_ROWS + 6  # the one sent too


def test_a_damaged_log_is_a_one_line_error_for_log_and_send(sent_log: Path, run: Run) -> None:
    data = bytearray(sent_log.read_bytes())
    data[4096: 4096 + 64] = b"\xff" * 64
    sent_log.write_bytes(bytes(data))
    for command in (["log"], ["send", "--yes"], ["send", "--dry-run"]):
        result = run(*command)
        assert result.code == 2, command
        assert result.err.startswith(f"error: send log {LOG} is damaged ("), result.err
        assert result.err.endswith("; a new log would send every letter again\n")
        assert result.err.count("\n") == 1
