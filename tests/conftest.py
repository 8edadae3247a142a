"""Shared fixtures: campaign files in tmp_path, settings, and the CLI run in-process."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from imapd import IMAPServer
from servers import Faults, RecordingHandler, ScriptedServer, start_server

from mailer.cli import main
from mailer.message import Letter
from mailer.outcome import Outcome, Status
from mailer.recorder import Recorder
from mailer.sender import Policy, Sender, SendSummary
from mailer.sendlog import Entry, Listed, Run, SendLog
from mailer.settings import Rate, Settings
from mailer.sqlitelog import SQLiteLog

pytest_plugins = ["pg"]  # tests/pg.py: a PostgreSQL server for the shared log's tests

REPO = Path(__file__).resolve().parent.parent
STARTER = REPO / "mailer" / "starter"

SIMPLE_TEMPLATE = """\
To: "{{ title }} {{ name }}" <{{ email }}>
Subject: Hello {{ name }}

Dear {{ title }} {{ name }},

Please act now.

Best regards,
{{ sender_name }}
"""

SIMPLE_CSV = """\
email,title,name,country
ada@example.org,Dr,Ada Lovelace,UK
grace@example.net,Admiral,Grace Hopper,US
"""


@dataclass
class CampaignFiles:
    """Paths of a campaign written into a test's tmp_path."""

    root: Path
    recipients: Path
    template: Path

    def write_csv(self, text: str, encoding: str = "utf-8") -> Path:
        self.recipients.write_bytes(text.encode(encoding))
        return self.recipients

    def write_template(self, text: str, html: str | None = None) -> Path:
        self.template.write_text(text, encoding="utf-8")
        if html is not None:
            self.template.with_suffix(".html").write_text(html, encoding="utf-8")
        return self.template


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CampaignFiles:
    """A campaign folder (the working directory) with a small CSV and template in it."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("MAILER_")]:
        monkeypatch.delenv(key)
    (tmp_path / "templates").mkdir()
    found = CampaignFiles(tmp_path, tmp_path / "recipients.csv",
                          tmp_path / "templates" / "letter.txt")
    found.write_csv(SIMPLE_CSV)
    found.write_template(SIMPLE_TEMPLATE)
    return found


@pytest.fixture
def settings() -> Settings:
    """Settings of a real-looking organiser, sending to a local server with no rate limit."""
    return Settings(from_address="organiser@example.org", sender_name="Olive Organiser",
                    rate=Rate(0), smtp_host="127.0.0.1")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(files: CampaignFiles, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run `mailer ARGS...` in-process in the campaign folder: exit code, stdout, stderr."""

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


# -- SMTP servers -----------------------------------------------------------------------------


@dataclass
class Server:
    """A running aiosmtpd server on 127.0.0.1 and the handler that records what it gets."""

    handler: RecordingHandler
    port: int
    host: str = "127.0.0.1"

    def settings(self, **changes: Any) -> Settings:
        """Settings that send to this server as fast as it takes letters."""
        values: dict[str, Any] = {"from_address": "organiser@example.org",
                                  "sender_name": "Olive Organiser", "smtp_host": self.host,
                                  "smtp_port": self.port, "rate": Rate(0), "timeout": 2.0,
                                  "concurrency": 2}
        return Settings(**{**values, **changes})

    def env(self) -> dict[str, str]:
        """Environment variables that point a `mailer` subprocess at this server."""
        return {"MAILER_FROM": "organiser@example.org", "MAILER_SENDER_NAME": "Olive Organiser",
                "MAILER_SMTP_HOST": self.host, "MAILER_SMTP_PORT": str(self.port),
                "MAILER_RATE": "0", "MAILER_TIMEOUT": "2"}


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A plain SMTP server on a random port; `@pytest.mark.faults(Faults(...))` makes it
    misbehave."""
    marker = request.node.get_closest_marker("faults")
    handler = RecordingHandler(faults=marker.args[0] if marker else Faults())
    controller = start_server(handler)
    yield Server(handler, controller.port)
    controller.stop()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    """A raw SMTP server that gives scripted replies (see ScriptedServer)."""
    server = ScriptedServer().start()
    yield server
    server.stop()


def scripted_settings(server: ScriptedServer, **changes: Any) -> Settings:
    return Server(RecordingHandler(), server.port).settings(**changes)


USER, PASSWORD = "organiser", "correct horse battery staple"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
          and auth_data.password == PASSWORD.encode())
    # handled=False: aiosmtpd sends the 235/535 reply itself (True would leave the client hanging).
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority, trusted only by the tests that ask for it."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Server]:
    """A server that requires STARTTLS (certificate for 127.0.0.1) and then AUTH."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    handler = RecordingHandler()
    controller = start_server(handler, tls_context=context, require_starttls=True,
                              authenticator=_authenticate, auth_required=True)
    yield Server(handler, controller.port)
    controller.stop()


@pytest.fixture
def implicit_tls_server(ca: trustme.CA) -> Iterator[Server]:
    """A server that speaks TLS from the start (as on port 465), certificate for 127.0.0.1
    by the session CA (which the client's settings do not trust unless told to)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    handler = RecordingHandler()
    controller = start_server(handler, ssl_context=context)
    yield Server(handler, controller.port)
    controller.stop()


@pytest.fixture
def imap_server(ca: trustme.CA) -> Iterator[IMAPServer]:
    """A real IMAP server (tests/imapd.py): IMAPS on 127.0.0.1, the session CA, the usual
    folders, empty."""
    with IMAPServer(ca) as server:
        yield server


def imap_env(server: IMAPServer, ca_file: Path) -> dict[str, str]:
    """Environment variables that point `mailer` at this mailbox."""
    return {"MAILER_IMAP_HOST": server.host, "MAILER_IMAP_PORT": str(server.port),
            "MAILER_IMAP_USERNAME": server.user, "MAILER_IMAP_PASSWORD": server.password,
            "MAILER_IMAP_CA_FILE": str(ca_file)}


def make_letters(count: int, domain: str = "example.org", start: int = 0) -> list[Letter]:
    """Small, distinct letters built directly (no template), for sender tests."""
    letters = []
    for number in range(start, start + count):
        email = f"person{number}@{domain}"
        data = (f"From: organiser@example.org\r\nTo: {email}\r\nSubject: letter {number}\r\n"
                f"Message-ID: <{number}@example.org>\r\n\r\nDear person {number}\r\n").encode()
        letters.append(Letter(number + 2, email, "organiser@example.org", (email,),
                              f"<{number}@example.org>", data))
    return letters


def status_of(log: SendLog, campaign: str, email: str) -> Status | None:
    """One recipient's state in a campaign (None if it was never registered)."""
    return log.statuses(campaign, [email]).get(email.casefold())


def listed(letters: list[Letter]) -> list[Listed]:
    return [Listed(letter.email, letter.line, letter.message_id) for letter in letters]


def log_with(path: Path, letters: list[Letter], store: type[SQLiteLog] = SQLiteLog,
             campaign: str = "test") -> tuple[SQLiteLog, Run]:
    """A new send log at `path` with a run of `campaign` begun and `letters` registered."""
    log = store.open(path)
    run = log.begin_run(campaign, {}, "hash")
    log.register(campaign, listed(letters), "hash")
    return log, run


@dataclass
class LoggedSend:
    """A sender run recorded in a real send log, for tests that check both ends."""

    summary: SendSummary
    log: SendLog

    def status(self, letter: Letter) -> Status | None:
        return status_of(self.log, "test", letter.email)

    def entry(self, letter: Letter) -> Entry:
        return next(e for e in self.log.entries("test", list(Status))
                    if e.address == letter.email)


FAST = Policy(backoff=0.01, max_backoff=0.05)


class SlowDisk(SQLiteLog):
    """A real log whose every commit takes 0.3 s: a busy disk."""

    def commit(self, run: Run, sending: Sequence[str], outcomes: Sequence[Outcome],
               when: float) -> None:
        time.sleep(0.3)
        super().commit(run, sending, outcomes, when)


class MovedClock:
    """A clock that moves forward when the sender sleeps on it: no test waits for a send
    window or a quota. Time starts at `now` (Unix seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float, stop: asyncio.Event) -> bool:
        if seconds > 0 and not stop.is_set():
            self.now += seconds
        await asyncio.sleep(0)
        return not stop.is_set()


async def send_all(sender: Sender, letters: list[Letter],
                   stop: asyncio.Event | None = None) -> SendSummary:
    """Run `sender` over `letters` to the end; its summary."""
    async for _ in sender.send(letters, stop or asyncio.Event()):
        pass
    return sender.summary


@pytest.fixture
def send_logged(tmp_path: Path) -> Iterator[Callable[..., LoggedSend]]:
    """Send letters with `Sender` into a fresh send log at tmp_path/log.sqlite3."""
    logs: list[SendLog] = []

    def run(settings: Settings, letters: list[Letter], policy: Policy = FAST,
            stop: asyncio.Event | None = None) -> LoggedSend:
        log = SQLiteLog.open(tmp_path / "log.sqlite3")
        logs.append(log)
        run = log.begin_run("test", settings.public(), "template-hash")
        log.register("test", listed(letters), "template-hash")

        async def main() -> SendSummary:
            async with Recorder(log, run) as recorder:
                return await send_all(Sender(settings, recorder, policy=policy), letters, stop)

        try:
            return LoggedSend(asyncio.run(main()), log)
        finally:
            log.end_run(run, "completed", {})

    yield run
    for log in logs:
        log.close()
