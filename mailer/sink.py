"""A local capture SMTP server (aiosmtpd): `mailer sink`, and the tests' and benchmarks' server.

`RecordingHandler` keeps every message it accepts (in memory, and in a Maildir if given) and
can be told to misbehave (`Faults`): temporary or permanent refusals per address, slow replies,
dropped connections. The same handler backs `mailer sink` and the test suite.
"""

from __future__ import annotations

import asyncio
import mailbox
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message: envelope and bytes as the server got them."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    at: float = 0.0  # time.monotonic() on arrival

    @property
    def subject(self) -> str:
        return str(BytesHeaderParser(policy=default).parsebytes(self.data).get("Subject", ""))


@dataclass(slots=True)
class Faults:
    """Misbehaviour to inject. Counts say how many times a fault fires before it stops.

    - `rcpt`: address -> reply (e.g. "451 4.3.0 busy" or "550 5.1.1 no such user") for its
      next `rcpt_times[address]` RCPTs (default: always).
    - `drop_at_mail`: drop the connection at the next N MAIL commands (before DATA).
    - `slow_mail`: seconds to wait before answering the next `slow_mail_times` MAIL commands.
    - `slow_data`: seconds to wait before answering the next `slow_data_times` DATA
      commands; the message *is* kept, as a real server would (so the client cannot know).
    - `drop_after_data`: for the next N messages, keep the message but drop the connection
      instead of replying.
    """

    rcpt: dict[str, str] = field(default_factory=dict)
    rcpt_times: dict[str, int] = field(default_factory=dict)
    drop_at_mail: int = 0
    slow_mail: float = 0.0
    slow_mail_times: int = 0
    slow_data: float = 0.0
    slow_data_times: int = 0
    drop_after_data: int = 0


class RecordingHandler:
    """aiosmtpd handler that records (and optionally stores) what it receives."""

    def __init__(self, maildir: Path | None = None, faults: Faults | None = None,
                 on_message: Callable[[Received], None] | None = None) -> None:
        self.faults = faults or Faults()
        self.messages: list[Received] = []
        self.commands: Counter[str] = Counter()
        self._maildir = mailbox.Maildir(maildir, create=True) if maildir else None
        self.on_message = on_message
        self._lock = threading.Lock()

    def by_recipient(self) -> Counter[str]:
        """How many messages each envelope recipient received."""
        with self._lock:
            return Counter(rcpt.lower() for m in self.messages for rcpt in m.rcpt_tos)

    async def handle_EHLO(self, server: SMTPServer, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.commands["EHLO"] += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        self.commands["MAIL"] += 1
        if self._fire("drop_at_mail"):
            return _drop(server)
        if self._fire("slow_mail_times"):
            await asyncio.sleep(self.faults.slow_mail)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.commands["RCPT"] += 1
        reply = self.faults.rcpt.get(address.lower())
        if reply is not None:
            left = self.faults.rcpt_times.get(address.lower())
            if left is None or left > 0:
                if left is not None:
                    self.faults.rcpt_times[address.lower()] = left - 1
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        self.commands["DATA"] += 1
        content = envelope.original_content or envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode()
        message = Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), data,
                           time.monotonic())
        with self._lock:
            self.messages.append(message)
        if self._maildir is not None:
            self._maildir.add(data)
        if self.on_message is not None:
            self.on_message(message)
        if self._fire("drop_after_data"):
            return _drop(server)
        if self._fire("slow_data_times"):
            await asyncio.sleep(self.faults.slow_data)
        return "250 2.0.0 OK: queued"

    def _fire(self, counter: str) -> bool:
        """Use up one firing of a counted fault; False once it has none left."""
        left: int = getattr(self.faults, counter)
        if left > 0:
            setattr(self.faults, counter, left - 1)
        return left > 0


def _drop(server: SMTPServer) -> str:
    """Cut the connection without a reply (the returned one never reaches the client)."""
    if isinstance(server.transport, asyncio.Transport):
        server.transport.abort()
    return "421 4.4.2 connection dropped by fault injection"


class SinkController(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (it reports the port it was given)."""

    def _run(self, ready_event: threading.Event) -> None:
        try:
            super()._run(ready_event)
        finally:
            # aiosmtpd leaves start() waiting out its whole timeout when binding fails.
            ready_event.set()

    def _trigger_server(self) -> None:
        if self._thread_exception is not None:
            raise self._thread_exception
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


def start_sink(handler: RecordingHandler, host: str = "127.0.0.1", port: int = 0,
               **smtp_options: Any) -> SinkController:
    """Start a server in a background thread; `.port` is its port, `.stop()` ends it."""
    options = {"server_hostname": "mailer-sink", "ident": "mailer sink", **smtp_options}
    controller = SinkController(handler, hostname=host, port=port, **options)
    controller.start()
    return controller
