"""A volunteer's own mailbox: choosing one's officials, language versions, logins (password
commands, XOAUTH2, providers' refusals explained), daily quotas across runs, a provider's
quota reply, send windows, and waiting for them on a clock that the tests move."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult
from conftest import FAST, CampaignFiles, MovedClock, Result, Server
from servers import OAuthHandler, RecordingHandler, ScriptedServer, start_server

from mailer.account import login, mailbox_login
from mailer.campaign import Campaign
from mailer.delivery import Delivery, SendOptions
from mailer.errors import AuthError, ConfigError
from mailer.outcome import Outcome, Status
from mailer.schedule import DAY, Window
from mailer.sender import Sender, SendSummary, Waiting
from mailer.settings import Rate, Settings, load_settings
from mailer.sqlitelog import SQLiteLog

Run = Callable[..., Result]

OFFICIALS = """\
email,title,name,country,role
pm@cabinet.example.org,Prime Minister,Alexander Grant,United Kingdom,Head of government
chancellor@chancellery.example,Chancellor,Katrin Vogel,Germany,Head of government
president@elysee.example,President,Étienne Marchand,France,Head of state
pm@matignon.example,Prime Minister,Élise Moreau,France,Head of government
"""


@pytest.fixture
def officials(files: CampaignFiles) -> CampaignFiles:
    files.write_csv(OFFICIALS)
    return files


@pytest.fixture
def server_env(smtp_server: Server, files: CampaignFiles,
               monkeypatch: pytest.MonkeyPatch) -> Server:
    for key, value in {**smtp_server.env(), "MAILER_CONCURRENCY": "1"}.items():
        monkeypatch.setenv(key, value)
    return smtp_server


# -- choosing one's officials -------------------------------------------------------------


def test_where_matches_any_case_and_accents_and_alternatives_of_a_column(
        officials: CampaignFiles, run: Run) -> None:
    result = run("send", "--dry-run", "--where", "country=FRANCE", "--where",
                 "country=germany", "--where", "role=head of GOVERNMENT")
    assert result.code == 0, result.err
    assert result.out.endswith("Dry run: 2 letters written to outbox/, 0 problems; nothing "
                               "was sent.\n")
    assert sorted(p.name for p in Path("outbox").iterdir()) == [
        "00001-chancellor@chancellery.example.eml", "00002-pm@matignon.example.eml"]
    assert "2 recipients, 0 problems" in run("check", "--where", "country=Francé").out


def test_where_names_the_columns_there_are_and_refuses_a_match_of_nothing(
        officials: CampaignFiles, run: Run) -> None:
    result = run("check", "--where", "contry=France")
    assert (result.code, result.err) == (1, "error: recipients.csv:1: --where contry=...: "
                                            "there is no column 'contry'; the columns are "
                                            "email, title, name, country, role\n")
    result = run("check", "--where", "country=Frnace")
    assert result.code == 1
    assert result.out.startswith("recipients.csv: no row matches --where country=Frnace "
                                 "(country holds ")
    assert "'France'" in result.out


def test_a_row_outside_the_where_cannot_stop_the_send_of_the_others(
        officials: CampaignFiles, run: Run) -> None:
    with officials.recipients.open("a", encoding="utf-8") as csv:
        csv.write("not-an-address,Dr,Bad Row,Italy,Head of government\n")
    assert run("check").code == 1
    assert run("check", "--where", "country=France").out.endswith("2 recipients, 0 problems\n")


def test_a_language_column_picks_that_version_of_the_letter(files: CampaignFiles,
                                                             run: Run) -> None:
    files.write_csv("email,title,name,country,language\nada@example.org,Dr,Ada,UK,\n"
                    "zoe@example.org,Mme,Zoë,FR,fr\nhans@example.org,Herr,Hans,DE,DE\n")
    folder = files.root / "templates"
    (folder / "letter.fr.txt").write_text("Subject: Agissez\n\nMadame, Monsieur {{ name }},\n",
                                          encoding="utf-8")
    (folder / "letter.de.txt").write_text("Subject: Handeln\n\nSehr geehrte {{ name }},\n",
                                          encoding="utf-8")
    (folder / "letter.it.txt").write_text("Subject: Agite\n\nGentile {{ name }},\n",
                                          encoding="utf-8")
    result = run("check")
    assert result.code == 0, result
    assert result.out == (
        "templates/letter.it.txt: warning: no row of recipients.csv has language 'it'\n"
        "Versions: letter.txt 1 letter, letter.de.txt 1 letter, letter.fr.txt 1 letter, "
        "letter.it.txt 0 letters.\n3 recipients, 0 problems\n")
    result = run("send", "--dry-run")
    assert result.out.count("\n--- outbox/") + result.out.startswith("--- outbox/") == 3
    assert "Dear Dr Ada," in result.out
    assert "Madame, Monsieur Zoë," in result.out
    assert "Sehr geehrte Hans," in result.out


# -- logins -------------------------------------------------------------------------------


def test_from_may_carry_the_name_and_a_name_is_needed_only_to_sign(
        files: CampaignFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_FROM", "Olive Organiser <olive@example.org>")
    settings = load_settings()
    assert (settings.from_address, settings.sender_name) == \
        ("olive@example.org", "Olive Organiser")
    settings = Settings(from_address="olive@example.org")
    settings.require_sender()
    with pytest.raises(ConfigError, match=r"the template signs with \{\{ sender_name \}\}"):
        settings.require_sender(name=True)


def test_a_password_command_that_fails_stops_everything_before_the_question(
        server_env: Server, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SMTP_USERNAME", "organiser")
    monkeypatch.setenv("MAILER_SMTP_PASSWORD_COMMAND", "echo locked >&2; exit 3")
    result = run("send")
    assert (result.code, result.out) == (2, "")
    assert result.err == ("error: MAILER_SMTP_PASSWORD_COMMAND failed (exit status 3): locked; "
                          "run it yourself to see why\n")
    assert server_env.handler.messages == []


def test_a_password_command_runs_once_for_the_check_the_send_and_the_sent_copies(
        tmp_path: Path) -> None:
    # Each run may ask the user (pinentry, a fingerprint): once is enough.
    runs = tmp_path / "runs"
    settings = Settings(smtp_host="mail.example.org", smtp_security="starttls",
                        smtp_username="olive", imap_host="mail.example.org",
                        smtp_password_command=f"echo x >> {runs}; echo s3cret")
    logins = [login(settings), login(settings), mailbox_login(settings)]
    assert [found.secret() for found in logins if found] == ["s3cret"] * 3
    assert runs.read_text() == "x\n"


def _oauth_send(tmp_path: Path, handler: OAuthHandler, command: str,
                letters: int = 4) -> SendSummary:
    from conftest import make_letters, send_all

    controller = start_server(handler, auth_require_tls=False)
    try:
        settings = Server(handler, controller.port).settings(
            smtp_username="organiser@example.org", smtp_auth="xoauth2",
            smtp_oauth2_token_command=command, concurrency=2)
        return asyncio.run(send_all(Sender(settings, policy=FAST), make_letters(letters)))
    finally:
        controller.stop()


def test_xoauth2_gets_a_fresh_token_for_each_login(tmp_path: Path) -> None:
    # Each token is good for one login, as an expired one would not be taken again.
    counter = tmp_path / "n"
    command = f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; " \
              "echo token-$n"
    handler = OAuthHandler("organiser@example.org", {"token-1", "token-2", "token-3"})
    summary = _oauth_send(tmp_path, handler, command)
    assert summary.counts == {Status.SENT: 4}
    assert handler.logins == ["token-1", "token-2"]  # two connections, two logins


def test_a_refused_xoauth2_token_is_a_clear_error_after_its_challenge(tmp_path: Path) -> None:
    handler = OAuthHandler("organiser@example.org", {"good"})
    with pytest.raises(AuthError) as caught:
        _oauth_send(tmp_path, handler, "echo stale")
    assert str(caught.value).endswith(
        "rejected the login for organiser@example.org: 535 5.7.8 Username and Password not "
        "accepted; the server does not take this access token: check MAILER_SMTP_USERNAME, "
        "and that MAILER_SMTP_OAUTH2_TOKEN_COMMAND prints a current token for that account")
    assert handler.messages == []


@pytest.mark.parametrize(("reply", "advice"), [
    ("535 5.7.139 Authentication unsuccessful, basic authentication is disabled",
     "Microsoft no longer takes a password for this account: set MAILER_SMTP_AUTH=xoauth2"),
    ("534 5.7.9 Application-specific password required",
     "Gmail wants an app password for this account"),
])
def test_a_providers_login_refusal_names_the_setting_to_change(reply: str, advice: str,
                                                               send_logged: Callable[..., object]
                                                               ) -> None:
    from conftest import make_letters

    def refuse(*_: object) -> AuthResult:
        return AuthResult(success=False, message=reply, handled=False)

    handler = RecordingHandler()
    controller = start_server(handler, authenticator=refuse, auth_require_tls=False)
    try:
        settings = Server(handler, controller.port).settings(smtp_username="me",
                                                             smtp_password="secret")
        with pytest.raises(AuthError) as caught:
            send_logged(settings, make_letters(1))
    finally:
        controller.stop()
    assert f": {reply}; {advice}" in str(caught.value)


# -- quotas, windows and waiting ----------------------------------------------------------


FRIDAY_EVENING = datetime(2026, 12, 4, 16, 59, 57, tzinfo=UTC).timestamp()
MONDAY_MORNING = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()


def _deliver(files: CampaignFiles, settings: Settings, clock: MovedClock,
             options: SendOptions | None = None) -> tuple[list[Outcome | Waiting], Delivery]:
    campaign = Campaign(settings, files.recipients, files.template)
    options = options or SendOptions()

    async def collect(delivery: Delivery) -> list[Outcome | Waiting]:
        return [event async for event in delivery.send(asyncio.Event())]

    with SQLiteLog.open(files.root / "log.sqlite3") as log, \
            Delivery(campaign, log, options, policy=FAST, clock=clock) as delivery:
        return asyncio.run(collect(delivery)), delivery


def test_a_daily_limit_holds_across_runs_and_frees_up_as_the_day_goes_by(
        officials: CampaignFiles, smtp_server: Server) -> None:
    clock = MovedClock(FRIDAY_EVENING)
    settings = smtp_server.settings(daily_limit=3, concurrency=1)
    events, delivery = _deliver(officials, settings, clock)
    first = clock.now
    assert [e.status for e in events if isinstance(e, Outcome)] == [Status.SENT] * 3
    assert delivery.summary.paused == "the account's daily limit of 3 letters is used up"
    assert delivery.summary.resume_at == pytest.approx(FRIDAY_EVENING + DAY, abs=1)
    clock.now = first + 3600  # an hour later: still no room
    events, delivery = _deliver(officials, settings, clock)
    assert [e for e in events if isinstance(e, Outcome)] == []
    assert delivery.summary.paused
    clock.now = first + DAY + 1
    events, _ = _deliver(officials, settings, clock)
    assert [e.status for e in events if isinstance(e, Outcome)] == [Status.SENT]
    assert len(smtp_server.handler.messages) == 4


def test_a_daily_limit_stops_a_cli_run_with_exit_75_and_when_to_come_back(
        officials: CampaignFiles, server_env: Server, run: Run) -> None:
    result = run("send", "--yes", "--daily-limit", "2")
    assert result.code == 75, result
    assert "\nStopped for now: the account's daily limit of 2 letters is used up. The next " \
           "letter may go at " in result.out
    assert result.out.endswith(": run mailer send again then (or with --wait, to wait for "
                               "it).\n")
    assert len(server_env.handler.messages) == 2


def test_a_daily_limit_is_used_up_by_letters_that_went_not_by_letters_waiting_their_turn(
        files: CampaignFiles, server_env: Server, run: Run) -> None:
    files.write_csv("email,title,name,country\n" + "".join(
        f"p{n}@example.org,Dr,P {n},UK\n" for n in range(14)))
    result = run("send", "--yes", "--daily-limit", "5", "--concurrency", "4", "--rate", "20/s")
    assert result.code == 75, result
    assert len(server_env.handler.messages) == 5


def test_a_providers_quota_reply_stops_the_run_and_fails_nobody(
        officials: CampaignFiles, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [f"person{n}@example.org,Dr,Person {n},UK,x" for n in range(30)]
    officials.write_csv("email,title,name,country,role\n" + "\n".join(rows) + "\n")
    server = ScriptedServer().start()
    try:
        server.script["MAIL"] = [b""] * 6 + [b"550 5.4.5 Daily user sending limit exceeded. "
                                             b"For more information, visit Gmail help\r\n"] * 30
        for key, value in Server(RecordingHandler(), server.port).env().items():
            monkeypatch.setenv(key, value)
        result = run("send", "--yes", "--concurrency", "4")
        assert result.code == 75, result
        assert "Stopped for now: 550 5.4.5 Daily user sending limit exceeded. For more " \
               "information, visit Gmail help: the account's daily sending limit is used up." \
               in result.out
        listed = run("log", "--format", "csv")
        assert "failed" not in listed.out
        assert 1 <= listed.out.count(",deferred,") <= 4  # those in flight: none other touched
        assert len(server.messages) == 6
        server.script.clear()
        assert run("send", "--yes").code == 0  # the next day, say: the rest go, once each
        assert server.by_recipient() == {f"person{n}@example.org": 1 for n in range(30)}
    finally:
        server.stop()


def test_wait_carries_a_run_over_the_weekend_to_the_windows_opening(
        officials: CampaignFiles, smtp_server: Server) -> None:
    clock = MovedClock(FRIDAY_EVENING)
    settings = smtp_server.settings(rate=Rate(1), concurrency=1, window_tz="UTC",
                                    window=Window.parse("Mon-Fri 09:00-17:00"))
    events, delivery = _deliver(officials, settings, clock, SendOptions(wait=True))
    sent = [e.last_try for e in events if isinstance(e, Outcome)]
    waits = [e for e in events if isinstance(e, Waiting)]
    assert [e.status for e in events if isinstance(e, Outcome)] == [Status.SENT] * 4
    assert waits == [Waiting(MONDAY_MORNING, "the send window")]
    friday_evening = datetime(2026, 12, 4, 17, 0, tzinfo=UTC).timestamp()
    assert all(t is not None and (t < friday_evening or t >= MONDAY_MORNING) for t in sent)
    assert any(t is not None and t >= MONDAY_MORNING for t in sent)
    assert delivery.summary.outside_window == 0


def test_without_wait_letters_outside_their_window_stay_due_and_the_others_go(
        files: CampaignFiles, smtp_server: Server) -> None:
    files.write_csv("email,title,name,country,timezone\n"
                    "tokyo@example.org,Mr,Tanaka,JP,Asia/Tokyo\n"
                    "paris@example.org,M.,Moreau,FR,Europe/Paris\n")
    tuesday_noon_paris = datetime(2026, 12, 1, 11, 0, tzinfo=UTC).timestamp()  # 20:00 Tokyo
    settings = smtp_server.settings(window=Window.parse("Mon-Fri 09:00-17:00"))
    events, delivery = _deliver(files, settings, MovedClock(tuesday_noon_paris))
    assert [e.letter.email for e in events if isinstance(e, Outcome)] == ["paris@example.org"]
    assert delivery.summary.outside_window == 1
    tokyo_morning = datetime(2026, 12, 2, 0, 0, tzinfo=UTC).timestamp()  # 09:00 in Tokyo
    assert delivery.summary.window_opens == tokyo_morning


def test_a_timezone_that_is_not_one_is_named_by_check(files: CampaignFiles, run: Run) -> None:
    files.write_csv("email,title,name,country,timezone\nada@example.org,Dr,Ada,UK,Europe/Londn\n")
    result = run("check")
    assert result.code == 1
    assert result.out.startswith("recipients.csv:2: timezone: 'Europe/Londn' is not a time "
                                 "zone; write an IANA name such as Europe/Paris")


def test_a_window_that_is_not_one_says_how_to_write_it(files: CampaignFiles,
                                                         run: Run) -> None:
    result = run("send", "--dry-run", "--window", "weekdays 9-5")
    assert result.code == 2
    assert result.err.startswith("error: setting MAILER_WINDOW: 'weekdays 9-5' is not a send "
                                 "window; write it like Mon-Fri 09:00-17:00")

