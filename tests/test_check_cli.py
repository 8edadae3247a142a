"""`mailer check` and `mailer send --dry-run`, run in-process in a campaign folder: exit codes
and the exact text a person reads."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from conftest import CampaignFiles, Result

Run = Callable[..., Result]

PLACEHOLDER_WARNING = (
    "No sender address is configured: letters show the placeholder Campaign Organiser "
    "(placeholder) <organiser@campaign.example>. Set MAILER_FROM and MAILER_SENDER_NAME in "
    ".env before a live send.\n\n")


def parse_file(path: Path) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    return message


# --- check -------------------------------------------------------------------------------------


def test_check_of_a_clean_campaign_prints_the_count_and_exits_0(run: Run) -> None:
    result = run("check")
    assert (result.code, result.out, result.err) == (0, "2 recipients, 0 problems\n", "")


def test_check_prints_every_problem_and_exits_1(files: CampaignFiles, run: Run) -> None:
    files.write_csv("email,title,name,country\n"
                    "ada@example.org,Dr,Ada Lovelace,UK\n"
                    "grace@example,Admiral,Grace Hopper,US\n"
                    "carol@example.com,Ms,,FR\n"
                    "ADA@example.org,Dr,Ada again,UK\n")
    result = run("check")
    assert result.code == 1
    assert result.err == ""
    assert result.out.splitlines() == [
        "recipients.csv:3: email: 'grace@example' is not a valid address: The part after the "
        "@-sign is not valid. It should have a period.",
        "recipients.csv:4: name: is empty, but the template uses it; fill it in",
        "recipients.csv:5: email: ADA@example.org is already on line 2; remove one of the two "
        "rows (or pass --allow-duplicates to keep both: the address gets one letter)",
        "4 recipients, 3 problems"]


def test_check_allows_duplicates_when_asked(files: CampaignFiles, run: Run) -> None:
    files.write_csv("email,title,name\nada@example.org,Dr,Ada\nAda@Example.org,Dr,Ada\n")
    assert run("check").code == 1
    result = run("check", "--allow-duplicates")
    assert (result.code, result.out) == (0, "2 recipients, 0 problems\n")


def test_check_reports_a_header_injection_attempt_as_a_problem(files: CampaignFiles,
                                                               run: Run) -> None:
    files.write_csv('email,title,name\nada@example.org,Dr,"Ada\nBcc: evil@example.com"\n')
    result = run("check")
    assert result.code == 1
    assert result.out == ("recipients.csv:2: name: contains a line break, but it is used in a mail "
                          "header; put it on one line\n1 recipient, 1 problem\n")


def test_check_reports_a_render_problem_with_the_row(files: CampaignFiles, run: Run) -> None:
    files.write_template("Subject: Hi\nTo: {{ name }} <{{ email }}>\n\nDear {{ name }}\n")
    files.write_csv("email,name\nada@example.org,\"evil@example.com, Ada\"\n")
    result = run("check")
    assert result.code == 1
    assert result.out == (
        "recipients.csv:2: the To header names evil@example.com, which is neither this row's "
        "value nor written in the template; a value in a name field must not add a recipient "
        "(rendering templates/letter.txt)\n1 recipient, 1 problem\n")


def test_check_with_a_missing_recipient_file_exits_2(run: Run) -> None:
    result = run("check", "--recipients", "nope.csv")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: nope.csv: cannot read the recipient list: No such file or "
                          "directory\n")


def test_check_with_a_missing_template_exits_2(run: Run) -> None:
    result = run("check", "--template", "templates/nope.txt")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: templates/nope.txt: cannot read the template: No such file or "
                          "directory\n")


def test_check_with_a_bad_setting_in_env_file_exits_2(files: CampaignFiles, run: Run) -> None:
    (files.root / ".env").write_text("MAILER_RATE=fast\n", encoding="utf-8")
    result = run("check")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: setting MAILER_RATE: 'fast' is not a rate; write it like "
                          "30/min, 2/s, 1000/h, or 0 for no limit (got 'fast'); fix it in .env or "
                          "the environment\n")


def test_check_with_a_bad_sender_in_the_environment_exits_2(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_FROM", "olive-at-example.org")
    result = run("check")
    assert result.code == 2
    assert result.err.startswith("error: setting MAILER_FROM: 'olive-at-example.org' is not an "
                                 "email address: ")
    assert result.err.endswith("(got 'olive-at-example.org'); fix it in .env or the environment\n")
    assert "Traceback" not in result.err


def test_check_with_an_international_sender_says_its_letters_need_smtputf8(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_FROM", "jürgen@example.org")
    result = run("check")
    assert result.code == 0, result.err
    assert result.out == ("2 letters go to international addresses (line 2: ada@example.org, "
                          "line 3: grace@example.net): they need a server that offers SMTPUTF8 "
                          "(RFC 6531).\n2 recipients, 0 problems\n")


def test_check_with_a_control_character_in_the_sender_name_exits_2(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SENDER_NAME", "Olive\x1b[31m")
    result = run("check")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: setting MAILER_SENDER_NAME: must not contain control "
                          "characters (got 'Olive\\x1b[31m'); fix it in .env or the environment\n")


def test_check_without_an_email_column_names_what_the_template_lacks(
        files: CampaignFiles, run: Run) -> None:
    files.write_csv("address,title,name\nada@example.org,Dr,Ada\n")
    result = run("check")
    assert (result.code, result.out) == (1, "")
    assert result.err == ("error: templates/letter.txt:1: uses {{ email }}, but the recipient "
                          "list has no column 'email'; add the column or change the template\n")


def test_check_of_a_non_utf8_list_names_the_line(files: CampaignFiles, run: Run) -> None:
    files.write_csv("email,title,name,country\nzoe@example.org,Ms,Zoë,FR\n", "latin-1")
    result = run("check")
    assert result.code == 1
    assert result.err == ("error: recipients.csv:2: is not UTF-8 (byte 0xeb at column 22); save "
                          "the file as UTF-8 CSV\n")


def test_check_of_a_template_syntax_error_names_the_line(files: CampaignFiles, run: Run) -> None:
    files.write_template("Subject: Hi\n\nDear {{ name }},\n{% if title %}\n")
    result = run("check")
    assert result.code == 1
    assert result.err.startswith("error: templates/letter.txt:4: template syntax: Unexpected end "
                                 "of template.")
    assert "Traceback" not in result.err


def test_check_of_a_template_that_fails_to_render_is_a_problem_not_a_crash(
        files: CampaignFiles, run: Run) -> None:
    files.write_template("Subject: Hi\n\n{{ name.__class__.__mro__ }}\n")
    result = run("check")
    assert result.code == 1
    assert result.out.splitlines() == [
        "recipients.csv:2: template: access to attribute '__class__' of 'str' object is unsafe. "
        "(rendering templates/letter.txt)",
        "recipients.csv:3: template: access to attribute '__class__' of 'str' object is unsafe. "
        "(rendering templates/letter.txt)",
        "2 recipients, 2 problems"]


# --- send --dry-run ----------------------------------------------------------------------------


def test_dry_run_writes_one_eml_per_recipient_named_for_the_address(
        files: CampaignFiles, run: Run) -> None:
    result = run("send", "--dry-run")
    assert result.code == 0
    written = sorted(p.name for p in (files.root / "outbox").iterdir())
    assert written == ["00001-ada@example.org.eml", "00002-grace@example.net.eml"]
    for name, address in zip(written, ["ada@example.org", "grace@example.net"], strict=True):
        message = parse_file(files.root / "outbox" / name)
        assert [a.addr_spec for a in message["To"].addresses] == [address]


def test_dry_run_prints_the_first_letter_and_a_summary(run: Run) -> None:
    result = run("send", "--dry-run")
    assert result.code == 0
    assert result.err == ""
    out = result.out.removeprefix(PLACEHOLDER_WARNING)
    lines = out.splitlines()
    assert lines[0] == "--- outbox/00001-ada@example.org.eml ---"
    assert lines[1:4] == [
        'From: "Campaign Organiser (placeholder)" <organiser@campaign.example>',
        "To: Dr Ada Lovelace <ada@example.org>",
        "Subject: Hello Ada Lovelace"]
    assert lines[4].startswith("Date: ")
    assert lines[5].startswith("Message-ID: <")
    assert lines[5].endswith("@campaign.example>")
    assert "\n".join(lines[6:]) == (
        "\nDear Dr Ada Lovelace,\n\nPlease act now.\n\nBest regards,\n"
        "Campaign Organiser (placeholder)\n\n"
        "Dry run: 2 letters written to outbox/, 0 problems; nothing was sent.")
    assert "grace@example.net" not in out  # only the first letter is shown


def test_dry_run_warns_about_the_placeholder_sender(run: Run) -> None:
    result = run("send", "--dry-run")
    assert result.out.startswith(PLACEHOLDER_WARNING)


def test_dry_run_with_a_configured_sender_has_no_warning(files: CampaignFiles, run: Run) -> None:
    (files.root / ".env").write_text("MAILER_FROM=olive@example.org\n"
                                     "MAILER_SENDER_NAME=Olive Organiser\n", encoding="utf-8")
    result = run("send", "--dry-run")
    assert result.code == 0
    assert "placeholder" not in result.out
    message = parse_file(files.root / "outbox" / "00001-ada@example.org.eml")
    assert [(a.display_name, a.addr_spec) for a in message["From"].addresses] == [
        ("Olive Organiser", "olive@example.org")]
    body = message.get_body(("plain",))
    assert body is not None
    assert str(body.get_content()).rstrip().endswith("Best regards,\r\nOlive Organiser")


def test_dry_run_limit_writes_only_the_first_letters(files: CampaignFiles, run: Run) -> None:
    result = run("send", "--dry-run", "--limit", "1")
    assert result.code == 0
    assert [p.name for p in (files.root / "outbox").iterdir()] == ["00001-ada@example.org.eml"]
    assert result.out.endswith("Dry run: 1 letter written to outbox/, 0 problems; "
                               "nothing was sent.\n")


def test_dry_run_replaces_letters_of_an_earlier_run(files: CampaignFiles, run: Run) -> None:
    assert run("send", "--dry-run").code == 0
    files.write_csv("email,title,name\ncarol@example.com,Ms,Carol\n")
    assert run("send", "--dry-run", "--outbox", "outbox").code == 0
    assert [p.name for p in (files.root / "outbox").iterdir()] == ["00001-carol@example.com.eml"]


def test_dry_run_writes_the_good_letters_and_reports_the_bad_rows(
        files: CampaignFiles, run: Run) -> None:
    files.write_csv("email,title,name\nada@example.org,Dr,Ada\nbad,Mr,Bob\n"
                    "grace@example.net,Adm,Grace\n")
    result = run("send", "--dry-run")
    assert result.code == 1
    assert result.err == ("recipients.csv:3: email: 'bad' is not a valid address: An email "
                          "address must have an @-sign.\n")
    assert result.out.endswith("Dry run: 2 letters written to outbox/, 1 problem; "
                               "nothing was sent.\n")
    assert len(list((files.root / "outbox").glob("*.eml"))) == 2


_connections: list[tuple[str, Any]] | None = None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _connections is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _connections.append((event, args[1] if event == "socket.connect" else args[0]))


@pytest.fixture
def connections() -> Iterator[list[tuple[str, Any]]]:
    """Every socket connect and name look-up the process makes while the test runs."""
    global _connections, _hooked
    if not _hooked:
        sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle outside
        _hooked = True
    _connections = []
    try:
        yield _connections
    finally:
        _connections = None


def test_dry_run_opens_no_network_connection(files: CampaignFiles, run: Run,
                                             connections: list[tuple[str, Any]]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        (files.root / ".env").write_text(f"MAILER_FROM=olive@example.org\nMAILER_SMTP_HOST="
                                         f"127.0.0.1\nMAILER_SMTP_PORT={port}\n", encoding="utf-8")
        result = run("send", "--dry-run")
        assert result.code == 0
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected to the configured server
    assert connections == []
    assert len(list((files.root / "outbox").glob("*.eml"))) == 2


def test_connections_fixture_sees_a_connection(connections: list[tuple[str, Any]]) -> None:
    # The hook above really observes connections, so an empty list means none were made.
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client.connect(listener.getsockname())
    assert [event for event, _ in connections] == ["socket.connect"]
